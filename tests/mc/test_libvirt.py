"""libvirt (build/libvirt, Debian 12's 9.0 + libvirt/patches) driving our
QEMU between two namespace "hosts" (lvhost.py)."""

import contextlib
import os
import re
import time

from lvhost import Hosts, domain_xml, rm
from mcvm import workdir


def last_tick(path):
    try:
        with open(path, errors='replace') as f:
            ticks = re.findall(r'mc-guest: tick (\d+)', f.read())
    except FileNotFoundError:
        return 0
    return int(ticks[-1]) if ticks else 0


def wait_guest_server(serial, timeout=120):
    """The guest's TCP server (mc.tcpserv) says it listens."""
    def listening():
        try:
            with open(serial, errors='replace') as f:
                return 'mc-tcpserv: listening' in f.read()
        except FileNotFoundError:
            return False
    wait_for(listening, timeout, 'the guest server')


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError('timed out waiting for ' + what)
        time.sleep(0.2)


@contextlib.contextmanager
def two_hosts(name):
    """Hosts a and b in a fresh work directory: yields (wd, a, b).  Their
    daemon and QEMU logs are printed if the test fails; the hosts are
    closed either way, the work directory removed after a pass."""
    wd = workdir(name)
    hosts = Hosts(wd, 'a', 'b')
    a, b = hosts[0], hosts[1]
    try:
        yield wd, a, b
    except BaseException:
        for h in (a, b):
            print(h.daemon_log()[-4000:])
            print(h.qemu_log('mcg')[-2000:])
        raise
    finally:
        hosts.close()
    rm(wd)


def kill_primary(a):
    """kill -9 of the QEMU of domain mcg on host @a."""
    with open(a.root + '/run/libvirt/qemu/mcg.pid') as f:
        os.kill(int(f.read()), 9)


def wait_takeover(b, serial):
    """The standby on @b runs as 'mc failover' and the guest ticks on."""
    wait_for(lambda: b.domstate('mcg') == 'running (mc failover)', 60,
             'the standby to take over')
    before = last_tick(serial)
    wait_for(lambda: last_tick(serial) >= before + 2, 60,
             'the guest to tick on b')


def test_libvirt_live_migration():
    """The baseline: plain live migration of the test guest from host a to
    host b through libvirt, as any libvirt user would (virsh migrate
    --live), with our QEMU as the emulator: both libvirtd understand it
    and the guest goes on on b."""
    with two_hosts('libvirt-live') as (wd, a, b):
        xml = os.path.join(wd, 'mcg.xml')
        with open(xml, 'w') as f:
            f.write(domain_xml('mcg', wd))
        a.virsh('create', xml)
        serial = os.path.join(wd, 'mcg.serial')
        wait_for(lambda: last_tick(serial) >= 2, 120, 'the guest to tick')
        a.virsh('migrate', '--live', '--verbose', 'mcg', b.uri, timeout=300)
        assert b.domstate('mcg') == 'running (migrated)', b.domstate('mcg')
        assert 'mcg' not in a.virsh('list', '--name').stdout.split()
        before = last_tick(serial)
        wait_for(lambda: last_tick(serial) >= before + 2, 60,
                 'the guest to tick on b')


def mc_pair(wd, a, b, delay=50, policy='safe', before=None,
            extra_devices=''):
    """The test guest started on host @a, then protected by
    virsh migrate --live --mc to host @b (@before(a, b) runs first)."""
    xml = os.path.join(wd, 'mcg.xml')
    with open(xml, 'w') as f:
        f.write(domain_xml('mcg', wd, append='mc.dirty=16,2000',
                           extra_devices=extra_devices))
    a.virsh('create', xml)
    serial = os.path.join(wd, 'mcg.serial')
    wait_for(lambda: last_tick(serial) >= 2, 120, 'the guest to tick')
    if before:
        before(a, b)
    a.virsh('migrate', '--live', '--mc', '--mc-delay', str(delay),
            '--mc-failover-policy', policy, '--mc-output-latency', '500',
            '--mc-pause-budget', '20', 'mcg', b.uri, timeout=300)
    return serial


def qmp(host, dom, cmd):
    import json
    out = host.virsh('qemu-monitor-command', dom,
                     json.dumps({'execute': cmd})).stdout
    return json.loads(out)['return']


def acked(host):
    return qmp(host, 'mcg', 'query-migrate')['mc']['acked']


def test_libvirt_mc_failover_by_kill():
    """virsh migrate --live --mc: the domain runs on host a and host b
    holds its paused standby (reason 'mc standby'); libvirt keeps the
    migration job in phase MC (domjobinfo: unbounded).  kill -9 of a's
    QEMU: b's domain runs with reason 'mc failover' and the guest goes on
    from its last checkpoint."""
    with two_hosts('libvirt-mc-kill') as (wd, a, b):
        serial = mc_pair(wd, a, b)
        assert a.domstate('mcg').startswith('running'), a.domstate('mcg')
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')
        # the typed parameters reached both QEMUs
        for host in (a, b):
            p = qmp(host, 'mcg', 'query-migrate-parameters')
            assert (p['mc-output-latency'], p['mc-pause-budget']) == \
                (500, 20), p
        first = acked(a)
        wait_for(lambda: acked(a) >= first + 5, 60, 'checkpoints')
        info = a.virsh('domjobinfo', 'mcg').stdout
        assert re.search(r'Job type:\s+Unbounded', info), info
        # the MC statistics, through libvirt's job stats
        m = re.search(r'Checkpoints acked:\s+(\d+)', info)
        assert m and int(m.group(1)) >= first + 5, info
        for label in ('Checkpoints:', 'Checkpoint pause:', 'Held packets:',
                      'Transfer average:'):
            assert label in info, info

        kill_primary(a)
        wait_takeover(b, serial)
        wait_for(lambda: 'mcg' not in a.virsh('list', '--name').stdout.split(),
                 30, 'the primary to be gone on a')
        # the job ended with MC: nothing left running on b
        info = b.virsh('domjobinfo', 'mcg').stdout
        assert re.search(r'Job type:\s+None', info), info


def refusals(a, b):
    """Combinations MC cannot go with: each a clear error, and nothing
    changes (the domain runs on a, nothing appears on b)."""
    cases = [
        (['--mc'], 'needs a live migration'),
        (['--live', '--mc', '--postcopy'], 'cannot be combined with post-copy'),
        (['--live', '--mc', '--p2p', '--tunnelled'],
         'cannot be combined with tunnelled'),
        (['--live', '--mc', '--suspend'], 'cannot be combined with paused'),
        (['--live', '--mc-delay', '10'], 'mc'),
        (['--live', '--mc', '--mc-failover-policy', 'sometimes'],
         'sometimes'),
        (['--live', '--mc', '--mc-pause-budget', '0'], 'mc-pause-budget'),
        (['--live', '--mc-output-latency', '100'], 'mc'),
    ]
    for opts, msg in cases:
        r = a.virsh('migrate', *(opts + ['mcg', b.uri]), check=False)
        assert r.returncode != 0 and msg in r.stderr, (opts, r.stderr)
        assert a.domstate('mcg').startswith('running'), a.domstate('mcg')
        assert 'mcg' not in b.virsh('list', '--all', '--name').stdout.split()


def test_libvirt_mc_domjobabort():
    """Refused combinations first (refusals()); then virsh domjobabort on
    the primary ends MC: the domain runs on, unprotected, and the job is
    over; the standby stays paused and can be destroyed."""
    with two_hosts('libvirt-mc-abort') as (wd, a, b):
        serial = mc_pair(wd, a, b, before=refusals)
        first = acked(a)
        wait_for(lambda: acked(a) >= first + 3, 60, 'checkpoints')
        a.virsh('domjobabort', 'mcg')
        wait_for(lambda: re.search(r'Job type:\s+None', a.virsh(
            'domjobinfo', 'mcg').stdout) is not None, 30, 'the job to end')
        assert a.domstate('mcg').startswith('running'), a.domstate('mcg')
        assert qmp(a, 'mcg', 'query-migrate')['status'] == 'cancelled'
        before = last_tick(serial)
        wait_for(lambda: last_tick(serial) >= before + 2, 60,
                 'the guest to tick on a')
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')
        b.virsh('destroy', 'mcg')
        assert a.domstate('mcg').startswith('running'), a.domstate('mcg')


def test_libvirt_mc_daemon_restart():
    """Both libvirtd restarted while MC runs: the pair is kept (the primary
    runs, the standby stays paused as the standby, checkpoints go on, the
    job is still there), and a failover afterwards is still seen through
    libvirt."""
    with two_hosts('libvirt-mc-restart') as (wd, a, b):
        serial = mc_pair(wd, a, b)
        for h in (a, b):
            h.stop()
            h.start()
        assert a.domstate('mcg').startswith('running'), a.domstate('mcg')
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')
        info = a.virsh('domjobinfo', 'mcg').stdout
        assert re.search(r'Job type:\s+Unbounded', info), info
        first = acked(a)
        wait_for(lambda: acked(a) >= first + 3, 60, 'checkpoints')

        kill_primary(a)
        wait_takeover(b, serial)


def test_libvirt_mc_failover_by_hand():
    """Policy 'manual': the standby does not act alone when the primary
    dies (it stays paused, and libvirt's mc-peer-lost event says so:
    role standby, reason peer-closed); virsh
    mc-failover on it, the new API, makes it take over.  mc-failover on a
    domain outside an MC pair is a clear error that changes nothing."""
    with two_hosts('libvirt-mc-hand') as (wd, a, b):
        serial = mc_pair(wd, a, b, policy='manual')
        r = a.virsh('mc-failover', 'nosuchdomain', check=False)
        assert r.returncode != 0
        first = acked(a)
        wait_for(lambda: acked(a) >= first + 3, 60, 'checkpoints')

        # libvirt's mc-peer-lost event, as a management client sees it
        events = os.path.join(wd, 'events')
        watcher = b.event_watcher('mc-peer-lost', events)
        time.sleep(1)
        kill_primary(a)

        def said():
            with open(events) as f:
                return ("event 'mc-peer-lost' for domain 'mcg': role standby,"
                        " reason peer-closed") in f.read()
        wait_for(said, 30, 'the mc-peer-lost event on b')
        watcher.kill()
        # the standby saw the connection close at once; 'manual' waits
        time.sleep(3)
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')
        info = b.virsh('domjobinfo', 'mcg', check=False)
        assert 'Unbounded' in info.stdout or info.returncode != 0, info

        b.virsh('mc-failover', 'mcg')
        wait_takeover(b, serial)
        # now outside MC: refused, and the domain runs on
        r = b.virsh('mc-failover', 'mcg', check=False)
        assert r.returncode != 0 and 'not part of a micro-checkpointing' \
            in r.stderr, r.stderr
        assert b.domstate('mcg') == 'running (mc failover)'


def link_up(host, dev):
    from lvhost import sh
    r = sh('ip', '-n', host.ns, '-o', 'link', 'show', dev, check=False)
    assert r.returncode == 0, r.stderr
    return ',UP' in r.stdout.split('>')[0]


def test_libvirt_mc_takeover_starts_devices():
    """A macvtap NIC: libvirt creates it offline on the standby (as for
    any incoming migration: it shares the guest's MAC) and brings it up
    before it starts a domain's CPUs.  A standby's QEMU starts them by
    itself when it takes over: libvirt must bring the device up then."""
    nic = ("<interface type='direct'><mac address='52:54:00:77:00:05'/>"
           "<source dev='eth0' mode='bridge'/><target dev='mclmv0'/>"
           "<model type='virtio'/></interface>")
    with two_hosts('libvirt-mc-devices') as (wd, a, b):
        serial = mc_pair(wd, a, b, extra_devices=nic)
        assert link_up(a, 'mclmv0'), 'the primary\'s macvtap is down'
        assert not link_up(b, 'mclmv0'), 'the standby\'s macvtap is up'
        kill_primary(a)
        wait_takeover(b, serial)
        wait_for(lambda: link_up(b, 'mclmv0'), 10,
                 'the macvtap to come up on the standby that took over')


def test_libvirt_mc_switchover():
    """virsh mc-switchover, the new API, on the primary of an MC pair:
    the domain runs on host b (its standby), QEMU's last checkpoint
    taken with the guest stopped; on host a libvirt stops the domain as
    after a migration (event Stopped Migrated) and, transient, forgets
    it.  On the standby or outside MC it is a clear error that changes
    nothing."""
    with two_hosts('libvirt-mc-switch') as (wd, a, b):
        serial = mc_pair(wd, a, b)
        first = acked(a)
        wait_for(lambda: acked(a) >= first + 3, 60, 'checkpoints')
        r = b.virsh('mc-switchover', 'mcg', check=False)
        assert r.returncode != 0 and 'not the primary' in r.stderr, r.stderr
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')

        events = os.path.join(wd, 'events')
        watcher = a.event_watcher('lifecycle', events)
        time.sleep(1)
        a.virsh('mc-switchover', 'mcg')
        wait_takeover(b, serial)

        def said():
            with open(events) as f:
                return "event 'lifecycle' for domain 'mcg': Stopped " \
                       "Migrated" in f.read()
        wait_for(said, 30, 'the Stopped Migrated event on a')
        watcher.kill()
        wait_for(lambda: 'mcg' not in a.virsh('list', '--all',
                                              '--name').stdout.split(),
                 30, 'the domain to leave host a')
        r = b.virsh('mc-switchover', 'mcg', check=False)
        assert r.returncode != 0 and 'not the primary' in r.stderr, r.stderr
        assert b.domstate('mcg') == 'running (mc failover)'


GUEST_IP = '10.77.0.2'
CLIENT_IP = '10.77.0.10'
GUEST_MAC = '52:54:00:77:00:02'


class ClientNet:
    """A client namespace on the hosts' bridge, and the guest's taps moved
    onto that bridge (libvirt creates each tap in its host's namespace;
    QEMU keeps its file descriptor when the device changes namespace)."""

    def __init__(self):
        from lvhost import BRIDGE, sh
        self.sh, self.bridge = sh, BRIDGE
        self.ns = 'mcl-cl'
        self.links = ['mclc0']
        sh('ip', 'link', 'set', BRIDGE, 'type', 'bridge', 'forward_delay',
           '0', 'stp_state', '0')
        sh('ip', 'netns', 'del', self.ns, check=False)
        sh('ip', 'netns', 'add', self.ns)
        sh('ip', 'link', 'add', 'mclc0', 'type', 'veth', 'peer', 'name',
           'eth0', 'netns', self.ns)
        sh('ip', 'link', 'set', 'mclc0', 'master', BRIDGE, 'up')
        sh('ip', '-n', self.ns, 'addr', 'add', CLIENT_IP + '/24', 'dev',
           'eth0')
        sh('ip', '-n', self.ns, 'link', 'set', 'eth0', 'up')
        sh('ip', '-n', self.ns, 'link', 'set', 'lo', 'up')

    def plug(self, host, tap, name):
        """Move @host's @tap to the bridge as @name."""
        ns = host.ns
        wait_for(lambda: self.sh('ip', '-n', ns, 'link', 'show', tap,
                                 check=False).returncode == 0, 30,
                 'tap %s on %s' % (tap, host.name))
        self.sh('ip', '-n', ns, 'link', 'set', tap, 'down')
        self.sh('ip', '-n', ns, 'link', 'set', tap, 'name', name)
        self.sh('ip', '-n', ns, 'link', 'set', name, 'netns', '1')
        self.links.append(name)
        self.sh('ip', 'link', 'set', name, 'master', self.bridge, 'up')

    def run_in(self, ns, argv, **kw):
        import subprocess
        return subprocess.Popen(['ip', 'netns', 'exec', ns] + argv, **kw)

    def close(self):
        self.sh('ip', 'netns', 'del', self.ns, check=False)
        for link in self.links:
            self.sh('ip', 'link', 'del', link, check=False)


def test_libvirt_mc_client_survives_failover():
    """The whole job through libvirt: a domain with a NIC serving a client
    in its own namespace, protected with virsh migrate --live --mc, its
    primary QEMU killed -9.  libvirt's own lifecycle event on the standby
    host says 'Resumed MC failover', and the client's TCP connection goes
    on with no reset, gap or duplicate."""
    from mcnet import Client, problems
    with two_hosts('libvirt-mc-net') as (wd, a, b):
        net = ClientNet()
        events = client = None
        try:
            nic = ("<interface type='ethernet'><mac address='%s'/>"
                   "<target dev='mclg0'/><model type='virtio'/></interface>"
                   % GUEST_MAC)
            xml = os.path.join(wd, 'mcg.xml')
            with open(xml, 'w') as f:
                f.write(domain_xml('mcg', wd, append='mc.ip=%s/24 '
                                   'mc.tcpserv=7000,20' % GUEST_IP,
                                   extra_devices=nic))
            a.virsh('create', xml)
            net.plug(a, 'mclg0', 'mclga')
            serial = os.path.join(wd, 'mcg.serial')
            wait_guest_server(serial)
            client = Client(net, net.ns, os.path.join(wd, 'client'),
                            GUEST_IP, 7000, 10)
            client.wait(lambda evs: client.count() >= 20)

            a.virsh('migrate', '--live', '--mc', '--mc-delay', '20', 'mcg',
                    b.uri, timeout=300)
            net.plug(b, 'mclg0', 'mclgb')
            events = b.event_watcher('lifecycle', os.path.join(wd, 'events'))
            time.sleep(1)
            n = client.count()
            client.wait(lambda evs: client.count() >= n + 50)

            n_kill = client.last_srv()
            kill_primary(a)

            def said():
                with open(os.path.join(wd, 'events')) as f:
                    return "event 'lifecycle' for domain 'mcg': Resumed MC " \
                           "failover" in f.read()
            wait_for(said, 60, 'the lifecycle event on b')
            assert b.domstate('mcg') == 'running (mc failover)'
            client.wait(lambda evs: client.count() >= n_kill + 100 or
                        problems(evs), timeout=60)
            evs = client.stop()
            assert not problems(evs), problems(evs)
            assert client.last_srv() >= n_kill + 100, (client.last_srv(),
                                                       n_kill)
        finally:
            if client:
                client.stop()
            if events:
                events.kill()
            net.close()
