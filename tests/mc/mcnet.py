"""A real network for the MC tests: namespaces, a bridge, tap devices.

    client netns                hypervisor netns
    vc1 10.77.0.10/24 --veth-- vc0 --+-- bridge br0
                                      +-- tap of the primary  (guest NIC)
                                      +-- tap of the standby  (same MAC)

Both QEMUs run in the hypervisor namespace (their migration channel is
on its loopback), the client in its own: nothing leaves the namespaces
created here.  Needs root; Topology() raises Skip otherwise.

Topology(link='1gbit') instead runs the standby in a third namespace,
joined to the hypervisor's by a veth whose two ends are shaped by a tbf
qdisc at that rate: the migration channel then crosses a link of that
speed (netem is not available here; tbf is).  The standby's tap is
moved to the hypervisor's bridge, so the guest network is the same.

    hypervisor netns               standby netns
    mg0 10.77.9.1/24 --veth(tbf)-- mg1 10.77.9.2/24
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from mcvm import (VM, Skip, free_port, guest_args, report_guest_resets,
                  wait_migration)

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_IP = '10.77.0.2'
CLIENT_IP = '10.77.0.10'
GUEST_MAC = '52:54:00:77:00:02'
GUEST_MAC1 = '52:54:00:77:01:02'
MIG_PORT = 4444
LINK_HV_IP = '10.77.9.1'
LINK_SB_IP = '10.77.9.2'
# soft-RoCE's address for the migration channel (Topology.rdma)
RDMA_IP = '10.77.8.1'


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True).stdout


def tbf(ns, dev, rate):
    """Shape @dev's egress to @rate (tc syntax, e.g. '1gbit').  The bucket
    holds 2 ms at that rate (at least 64 KiB: one GSO packet), and a
    packet may wait 20 ms for tokens before it is dropped."""
    bits = {'k': 1e3, 'm': 1e6, 'g': 1e9}[rate.lower().rstrip('bit')[-1]]
    bps = float(rate.lower().rstrip('bit')[:-1]) * bits
    burst = max(int(bps / 8 * 0.002), 65536)
    sh('ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'root',
       'tbf', 'rate', rate, 'burst', str(burst), 'latency', '20ms')


class Cut:
    """Blackhole routes between the two ends of the migration link."""

    def __init__(self, topo):
        self.topo = topo
        self.on = False

    def __enter__(self):
        return self

    def cut(self):
        sh('ip', '-n', self.topo.hv, 'route', 'add', 'blackhole',
           LINK_SB_IP + '/32')
        sh('ip', '-n', self.topo.sb, 'route', 'add', 'blackhole',
           LINK_HV_IP + '/32')
        self.on = True

    def heal(self):
        if self.on:
            sh('ip', '-n', self.topo.hv, 'route', 'del', 'blackhole',
               LINK_SB_IP + '/32', check=False)
            sh('ip', '-n', self.topo.sb, 'route', 'del', 'blackhole',
               LINK_HV_IP + '/32', check=False)
            self.on = False

    def __exit__(self, *exc):
        self.heal()


class Topology:
    def __init__(self, link=None):
        if os.geteuid() != 0:
            raise Skip('network tests need root (namespaces, bridge, taps)')
        if not shutil.which('ip'):
            raise Skip('iproute2 is not installed')
        if link and not shutil.which('tc'):
            raise Skip('tc (iproute2) is not installed')
        tag = '%x' % (os.getpid() & 0xffff)
        self.hv = 'mct-hv-' + tag
        self.cl = 'mct-cl-' + tag
        self.sb = 'mct-sb-' + tag if link else self.hv
        self.link = link
        self.tag = tag
        self.taps = []
        for ns in sorted({self.hv, self.cl, self.sb}):
            sh('ip', 'netns', 'add', ns)
            sh('ip', '-n', ns, 'link', 'set', 'lo', 'up')
        if link:
            sh('ip', '-n', self.hv, 'link', 'add', 'mg0', 'type', 'veth',
               'peer', 'name', 'mg1', 'netns', self.sb)
            for ns, dev, ip in ((self.hv, 'mg0', LINK_HV_IP),
                                (self.sb, 'mg1', LINK_SB_IP)):
                sh('ip', '-n', ns, 'addr', 'add', ip + '/24', 'dev', dev)
                sh('ip', '-n', ns, 'link', 'set', dev, 'up')
                tbf(ns, dev, link)
        sh('ip', '-n', self.hv, 'link', 'add', 'br0', 'type', 'bridge')
        # forward at once: a new tap must not wait out STP learning
        sh('ip', '-n', self.hv, 'link', 'set', 'br0', 'type', 'bridge',
           'forward_delay', '0', 'stp_state', '0')
        sh('ip', '-n', self.hv, 'link', 'set', 'br0', 'up')
        sh('ip', '-n', self.hv, 'link', 'add', 'vc0', 'type', 'veth',
           'peer', 'name', 'vc1', 'netns', self.cl)
        sh('ip', '-n', self.hv, 'link', 'set', 'vc0', 'master', 'br0', 'up')
        sh('ip', '-n', self.cl, 'addr', 'add', CLIENT_IP + '/24', 'dev', 'vc1')
        sh('ip', '-n', self.cl, 'link', 'set', 'vc1', 'up')

    def rdma(self):
        """soft-RoCE for the migration channel: an rxe device on a dummy
        NIC; returns its address.  In the host's own namespace, and both
        QEMUs run there (their taps still go to the hypervisor's bridge):
        the kernel's rxe (6.1) receives in that namespace only.  Skip
        where the kernel has no rdma_rxe (this host: the RDMA tests run
        in the lab, tests/lab)."""
        if self.link:
            raise Skip('RDMA runs without the shaped link')
        for mod in ('dummy', 'rdma_rxe', 'rdma_ucm', 'ib_uverbs'):
            sh('modprobe', mod, check=False)
        if not os.path.exists('/sys/module/rdma_rxe') or \
                not shutil.which('rdma'):
            raise Skip('no soft-RoCE here (rdma_rxe, iproute2\'s rdma): '
                       'the RDMA tests run in the lab')
        dev = 'mcrdma' + self.tag
        sh('ip', 'link', 'add', dev, 'type', 'dummy')
        self.rdma_dev = dev
        sh('ip', 'addr', 'add', RDMA_IP + '/24', 'dev', dev)
        sh('ip', 'link', 'set', dev, 'up')
        sh('rdma', 'link', 'add', 'mcrxe' + self.tag, 'type', 'rxe',
           'netdev', dev)
        self.rxe = 'mcrxe' + self.tag
        return RDMA_IP

    def tap_name(self, role, i=0):
        return 'mc%s%d%s' % (role[0], i, self.tag)

    def ns_of(self, role):
        """The namespace a role's QEMU runs in (None: the host's own)."""
        if getattr(self, 'rxe', None):
            return None
        return self.sb if role == 'standby' else self.hv

    def mig_host(self):
        """Where the standby listens for the migration channel."""
        return LINK_SB_IP if self.link else '127.0.0.1'

    def plug(self, tap, ns=False):
        """Put a tap QEMU created (in @ns, default the hypervisor's, None
        the host's own) on the bridge; waits for it to exist."""
        ns = self.hv if ns is False else ns
        ip = ['ip', '-n', ns] if ns else ['ip']
        deadline = time.time() + 30
        while 'state' not in sh(*ip, 'link', 'show', tap, check=False):
            if time.time() > deadline:
                raise RuntimeError('tap %s did not appear' % tap)
            time.sleep(0.05)
        if ns != self.hv:
            # QEMU keeps its file descriptor; the device changes namespace
            sh(*ip, 'link', 'set', tap, 'netns', self.hv)
        sh('ip', '-n', self.hv, 'link', 'set', tap, 'master', 'br0', 'up')
        self.taps.append(tap)

    def tap_counter(self, tap, name='rx_packets'):
        """Packets QEMU wrote to @tap (rx, as the host sees it)."""
        out = sh('ip', 'netns', 'exec', self.hv, 'cat',
                 '/sys/class/net/%s/statistics/%s' % (tap, name), check=False)
        return int(out) if out.strip().isdigit() else None

    def run_in(self, ns, argv, **kw):
        return subprocess.Popen(['ip', 'netns', 'exec', ns] + argv, **kw)

    def ask(self, *args, timeout=600):
        """netclient.py in one of its one-shot modes (rtt, bulk, load)
        from the client's namespace against the guest: its JSON."""
        out = subprocess.run(
            ['ip', 'netns', 'exec', self.cl, sys.executable,
             os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'netclient.py')] + list(args) +
            ['--host', GUEST_IP], check=True, stdout=subprocess.PIPE,
            text=True, timeout=timeout).stdout
        return json.loads(out)

    def client(self, out, host=GUEST_IP, port=7000, interval=10, ns=None):
        return Client(self, ns or self.cl, out, host, port, interval)

    def close(self):
        if getattr(self, 'rxe', None):
            sh('rdma', 'link', 'delete', self.rxe, check=False)
        if getattr(self, 'rdma_dev', None):
            sh('ip', 'link', 'del', self.rdma_dev, check=False)
        for ns in sorted({self.cl, self.hv, self.sb}):
            sh('ip', 'netns', 'del', ns, check=False)


def parse_events(line):
    """The JSON events of one log line.  Normally one; once, in the KVM
    lab, a reader found more after the first on one line (the writer
    writes and flushes one line at a time; not understood).  Every event
    that parses is taken and the rest of the line is left out: a lost
    record then shows as what it is (a gap in a sequence), not as a
    crash of the reader.  A line whose start is not JSON raises."""
    dec, out, i, line = json.JSONDecoder(), [], 0, line.strip()
    while i < len(line):
        try:
            ev, j = dec.raw_decode(line, i)
            if not isinstance(ev, dict):
                raise ValueError('not an event')
        except ValueError:
            if not out:
                raise
            print('mcnet: left out of a log line: %r' % line[i:],
                  file=sys.stderr)
            break
        out.append(ev)
        i = j
        while i < len(line) and line[i].isspace():
            i += 1
    return out


class EventLog:
    """A client process in a namespace that logs JSON events to a file
    (one per line, flushed at once), read on demand."""

    name = 'client'

    def __init__(self, topo, ns, argv, out):
        self.out = out
        self.proc = topo.run_in(ns, [sys.executable] + argv)

    def events(self):
        try:
            with open(self.out) as f:
                return [ev for line in f if line.endswith('\n')
                        for ev in parse_events(line)]
        except FileNotFoundError:
            return []

    def wait(self, what, timeout=60):
        """Wait until what(events) is true; returns the events."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            evs = self.events()
            if what(evs):
                return evs
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        evs = self.events()
        raise TimeoutError('%s: condition not met; last events %s' %
                           (self.name, evs[-5:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.events()


class Client(EventLog):
    """netclient.py in stream mode."""

    def __init__(self, topo, ns, out, host, port, interval):
        super().__init__(topo, ns, [os.path.join(HERE, 'netclient.py'),
                                    'stream', '--host', host, '--port',
                                    str(port), '--interval', str(interval),
                                    '--out', out], out)

    def count(self, ev='srv'):
        return sum(1 for e in self.events() if e['ev'] == ev)

    def last_srv(self):
        n = [e['n'] for e in self.events() if e['ev'] == 'srv']
        return n[-1] if n else 0


def problems(evs):
    """Bad records, resets: what a client must never see."""
    return [e for e in evs if e['ev'] in ('bad', 'closed')]


class Pair:
    """A primary and a standby running the test guest, tap NICs on br0.

    @nics: list of NIC specs per guest NIC: 'tap' or 'user:PORT' (slirp
    with a host forward to the guest's port 7000 on the hypervisor
    namespace's loopback).
    @role_args: {'primary': [...], 'standby': [...]}: more arguments per
    role (disks, for instance).  @more_caps: more capabilities set on
    both sides.
    @topo None: no namespaces (nics must be empty), the migration channel
    on the host's loopback at a free port; needs no root.
    @binary: the QEMU to run (default the build tree's).
    """

    def __init__(self, topo, wd, nics=('tap',), delay=100, net=True,
                 hb_timeout=10000, policy='safe', trace=None, mem='256M',
                 tcpserv_ms=20, app='', primary_extra=(), mc=True,
                 machine='q35', role_args=None, more_caps=(),
                 binary=None, rdma=False):
        self.topo = topo
        self.mig_port = MIG_PORT if topo else free_port()
        # rdma: the migration channel over soft-RoCE (Topology.rdma); the
        # standby listens only once mc is on (migrate-incoming)
        self.scheme = 'rdma' if rdma else 'tcp'
        append = 'mc.ip=%s/24 mc.tcpserv=7000,%d %s' % (GUEST_IP, tcpserv_ms,
                                                         app)
        if len(nics) > 1:
            append += ' mc.ip1=10.0.2.15/24'
        self.vms = {}
        self.mig_host = topo.mig_host() if topo else '127.0.0.1'
        if rdma:
            self.mig_host = topo.rdma()
        assert topo or not nics, 'NICs need a Topology'
        for role in ('primary', 'standby'):
            ns = topo.ns_of(role) if topo else None
            wrapper = ['ip', 'netns', 'exec', ns] if ns else []
            extra = []
            for i, kind in enumerate(nics):
                mac = GUEST_MAC if i == 0 else GUEST_MAC1
                if kind == 'tap':
                    extra += ['-netdev', 'tap,id=n%d,ifname=%s,script=no,'
                              'downscript=no' % (i, topo.tap_name(role, i))]
                else:
                    port = int(kind.split(':')[1]) + (role == 'standby')
                    extra += ['-netdev', 'user,id=n%d,net=10.0.2.0/24,'
                              'hostfwd=tcp:127.0.0.1:%d-:7000' % (i, port)]
                extra += ['-device', 'virtio-net-pci,netdev=n%d,mac=%s' %
                          (i, mac)]
            if role == 'standby':
                extra += ['-incoming', 'defer' if rdma else self.uri()]
            else:
                extra += list(primary_extra)
                if trace:
                    extra += ['-trace', 'events=' + trace[0], '-D', trace[1]]
            extra += list((role_args or {}).get(role, ()))
            self.vms[role] = VM(role, guest_args(append, mem=mem,
                                                 extra=extra,
                                                 machine=machine), wd,
                                wrapper=wrapper,
                                **({'binary': binary} if binary else {}))
            for i, kind in enumerate(nics):
                if kind == 'tap':
                    topo.plug(topo.tap_name(role, i), topo.ns_of(role))
        self.primary = self.vms['primary']
        self.standby = self.vms['standby']
        self.primary.wait_serial('mc-tcpserv: listening', timeout=120)
        for vm in (self.primary, self.standby) if mc else ():
            caps = [{'capability': 'mc', 'state': True}]
            if not net:
                caps.append({'capability': 'mc-net-disable', 'state': True})
            caps += [{'capability': c, 'state': True} for c in more_caps]
            vm.qmp.cmd('migrate-set-capabilities', capabilities=caps)
            vm.qmp.cmd('migrate-set-parameters', **{
                'mc-delay': delay, 'mc-heartbeat-timeout': hb_timeout,
                'mc-failover-policy': policy})
        if rdma and mc:
            self.standby.qmp.cmd('migrate-incoming', uri=self.uri())

    def uri(self):
        return '%s:%s:%d' % (self.scheme, self.mig_host, self.mig_port)

    def start_mc(self, timeout=180):
        self.primary.qmp.cmd('migrate', uri=self.uri())
        wait_migration(self.primary.qmp, 'mc', timeout=timeout)
        # checkpoints flowing: the standby has acknowledged a few
        deadline = time.time() + 60
        while self.mc()['acked'] < 3:
            if time.time() > deadline:
                raise TimeoutError('no checkpoints acknowledged: primary %s; '
                                   'standby %s' % (
                                       self.primary.qmp.cmd('query-migrate'),
                                       self.standby.qmp.cmd('query-migrate')))
            time.sleep(0.1)

    def mc(self, vm=None):
        return (vm or self.primary).qmp.cmd('query-migrate')['mc']

    def close(self):
        report_guest_resets(self.vms)
        for vm in self.vms.values():
            if vm.proc.poll() is None:
                try:
                    os.kill(vm.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
            vm.kill()
