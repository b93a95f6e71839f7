"""Upstream COLO on the test guest: the peer MC is measured against.

The setup follows upstream's COLO documentation (docs/COLO-FT.txt).
ColoPair has no disk and no NIC (no colo-compare proxy: checkpoints come
from the periodic timer, x-checkpoint-delay); ColoNetPair adds the NIC
and the proxy; ColoDiskPair adds one disk with COLO's block replication
(quorum, replication driver, NBD).  Both QEMUs run the same guest; the
secondary runs it too, as COLO does, and takes over with
x-colo-lost-heartbeat.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from mcvm import BUILD, VM, guest_args, free_port, wait_migration
from mcnet import GUEST_IP, GUEST_MAC

# the primary's trace: checkpoints sent, VM stop/run, dirty pages per sync
TRACE_EVENTS = ('colo_send_message', 'colo_vm_state_change',
                'migration_bitmap_sync_end')


def trace_args(wd, events=()):
    """Trace options for the primary; its trace file's path."""
    trace = os.path.join(wd, 'colo-primary.trace')
    evfile = os.path.join(wd, 'colo-events')
    with open(evfile, 'w') as f:
        f.write('\n'.join(TRACE_EVENTS + tuple(events)) + '\n')
    return ['-trace', 'events=' + evfile, '-D', trace,
            '-msg', 'timestamp=on'], trace


def nodelay_args(nodelay):
    """COLO's migration socket with or without TCP_NODELAY (patches/
    colo-tcp-nodelay.patch; upstream has none: off is COLO as shipped)."""
    return ['-global', 'migration.x-colo-tcp-nodelay=%s'
            % ('on' if nodelay else 'off')]


class ColoPair:
    """A COLO pair without NIC.  @topo (an mcnet.Topology made with a
    link): the primary in its hypervisor namespace, the secondary in its
    standby namespace, the migration channel over the shaped link."""

    host = '127.0.0.1'      # where the secondary listens (subclasses too)

    def __init__(self, wd, delay_ms=100, mem='256M', app='', nodelay=False,
                 topo=None):
        self.port = free_port()
        self.host = topo.mig_host() if topo else '127.0.0.1'
        targs, self.trace = trace_args(wd)
        # -machine pc as in upstream's COLO-FT.txt: on q35 the secondary
        # asserts in memory_region_add_subregion() loading device state
        # over its running devices (COLO does not reset them; MC does)
        args = guest_args(app, mem=mem, machine='pc') + nodelay_args(nodelay)

        def ns(role):
            ns = topo.ns_of(role) if topo else None
            return ['ip', 'netns', 'exec', ns] if ns else ()

        self.primary = VM('colo-primary', args + targs, wd,
                          wrapper=ns('primary'))
        self.secondary = VM('colo-secondary', args + [
            '-incoming', 'tcp:%s:%d' % (self.host, self.port)], wd,
            wrapper=ns('standby'))
        self.primary.wait_serial('mc-guest: ready', timeout=120)
        self.enable(delay_ms)

    def enable(self, delay_ms):
        """x-colo on both sides, the primary's checkpoint delay."""
        self.delay = delay_ms
        for vm in (self.primary, self.secondary):
            vm.qmp.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'x-colo', 'state': True}])
        self.primary.qmp.cmd('migrate-set-parameters', **{
            'x-checkpoint-delay': delay_ms})

    def start(self, timeout=180):
        self.primary.qmp.cmd('migrate', uri='tcp:%s:%d' % (self.host,
                                                            self.port))
        wait_migration(self.primary.qmp, 'colo', timeout=timeout)

    def checkpoints(self):
        """Checkpoints the primary sent so far (its trace)."""
        with open(self.trace) as f:
            return f.read().count("'vmstate-send'")

    def pauses_us(self):
        """How long the primary's VM stayed stopped, per checkpoint."""
        return [us for _, us in self.pause_pages()]

    def pause_pages(self):
        """(dirty pages, pause in us) per checkpoint.

        The pages come from the dirty-log sync made while the VM is
        stopped.  Its trace gives a count summed over a period of at
        least 1 s, restarted after the sync that ends one: a count
        smaller than the one before is the first of a new period (a
        single sync would have to dirty more than the whole previous
        second to hide that; checkpoints here are 100 ms apart).
        """
        out, stop, pages, total = [], None, None, 0
        with open(self.trace) as f:
            for line in f:
                m = re.match(r'\d+@(\d+\.\d+):(\w+) (.*)', line)
                if not m:
                    continue
                t, ev, rest = float(m.group(1)), m.group(2), m.group(3)
                if ev == 'migration_bitmap_sync_end':
                    n = int(rest.split()[-1])
                    if stop is not None:
                        pages = n - total if n >= total else n
                    total = n
                    continue
                if ev != 'colo_vm_state_change':
                    continue
                m = re.match(r"Change '(\w+)' => '(\w+)'", rest)
                if m.group(1) == 'run' and m.group(2) == 'stop':
                    stop, pages = t, None
                elif m.group(1) == 'stop' and m.group(2) == 'run' and stop:
                    out.append((pages, (t - stop) * 1e6))
                    stop = None
        return out

    def failover_ms(self):
        """kill -9 the primary; management reacts at once with
        x-colo-lost-heartbeat: ms from the kill to COLO_EXIT."""
        t0 = time.time()
        self.primary.kill(signal.SIGKILL)
        self.secondary.qmp.cmd('x-colo-lost-heartbeat')
        self.secondary.qmp.wait_event('COLO_EXIT', timeout=30)
        return (time.time() - t0) * 1000

    def close(self):
        for vm in (self.primary, self.secondary):
            vm.kill()


class ColoNetPair(ColoPair):
    """COLO with a NIC on the namespace network of the MC tests.

    The network proxy of upstream's COLO-FT.txt on an mcnet.Topology.
    The primary mirrors what the client sends to the secondary
    (filter-mirror) and passes both guests' output through colo-compare,
    which releases the primary's packets when the secondary produced the
    same ones and forces a checkpoint when they differ; the secondary
    redirects its NIC to the primary's chardevs and rewrites TCP sequence
    numbers (filter-rewriter).  Both QEMUs run in the hypervisor
    namespace, so the chardevs and the migration channel use fixed ports
    on its loopback.
    Guest: mc-tcpserv on GUEST_IP, virtio-net as in the MC benchmarks,
    hence vnet_hdr_support on every filter (without it colo-compare
    cannot parse a packet and passes it on uncompared).
    """

    def __init__(self, topo, wd, delay_ms=100, mem='256M', tcpserv_ms=0,
                 app='', events=(), nodelay=False):
        self.topo = topo
        targs, self.trace = trace_args(wd, events)
        append = 'mc.ip=%s/24 mc.tcpserv=7000,%d %s' % (GUEST_IP, tcpserv_ms,
                                                         app)
        wrapper = ['ip', 'netns', 'exec', topo.hv]

        def nic(role):
            return ['-netdev', 'tap,id=hn0,vhost=off,ifname=%s,script=no,'
                    'downscript=no' % topo.tap_name(role),
                    '-device', 'virtio-net-pci,netdev=hn0,mac=' + GUEST_MAC]

        def sock(cid, port, server=False, wait=False):
            opt = 'socket,id=%s,host=127.0.0.1,port=%d' % (cid, port)
            if nodelay:
                opt += ',nodelay=on'
            if server:
                opt += ',server=on,wait=%s' % ('on' if wait else 'off')
            return ['-chardev', opt]

        # the secondary first: the primary waits for it on compare1
        sec = nic('secondary') + [
            '-chardev', 'socket,id=red0,host=127.0.0.1,port=9003,'
            'reconnect-ms=200' + (',nodelay=on' if nodelay else ''),
            '-chardev', 'socket,id=red1,host=127.0.0.1,port=9004,'
            'reconnect-ms=200' + (',nodelay=on' if nodelay else ''),
            '-object', 'filter-redirector,id=f1,netdev=hn0,queue=tx,'
            'indev=red0,vnet_hdr_support=on',
            '-object', 'filter-redirector,id=f2,netdev=hn0,queue=rx,'
            'outdev=red1,vnet_hdr_support=on',
            '-object', 'filter-rewriter,id=rew0,netdev=hn0,queue=all,'
            'vnet_hdr_support=on',
            '-incoming', 'tcp:127.0.0.1:9998'] + nodelay_args(nodelay)
        self.secondary = VM('colo-secondary', guest_args(
            append, mem=mem, machine='pc', extra=sec), wd, wrapper=wrapper)
        topo.plug(topo.tap_name('secondary'))
        pri = (nic('primary') + sock('mirror0', 9003, True) +
               sock('compare1', 9004, True, True) +
               sock('compare0', 9001, True) + sock('compare0-0', 9001) +
               sock('compare_out', 9005, True) +
               sock('compare_out0', 9005) + [
                   '-object', 'filter-mirror,id=m0,netdev=hn0,queue=tx,'
                   'outdev=mirror0,vnet_hdr_support=on',
                   '-object', 'filter-redirector,id=redire0,netdev=hn0,'
                   'queue=rx,indev=compare_out,vnet_hdr_support=on',
                   '-object', 'filter-redirector,id=redire1,netdev=hn0,'
                   'queue=rx,outdev=compare0,vnet_hdr_support=on',
                   '-object', 'iothread,id=iothread1',
                   '-object', 'colo-compare,id=comp0,primary_in=compare0-0,'
                   'secondary_in=compare1,outdev=compare_out0,'
                   'iothread=iothread1,vnet_hdr_support=on'] + targs +
               nodelay_args(nodelay))
        self.primary = VM('colo-primary', guest_args(
            append, mem=mem, machine='pc', extra=pri), wd, wrapper=wrapper)
        topo.plug(topo.tap_name('primary'))
        self.port = 9998
        self.primary.wait_serial('mc-tcpserv: listening', timeout=120)
        self.enable(delay_ms)

    def take_over(self):
        """Management's part of a secondary failover (COLO-FT.txt): end
        COLO, then drop the redirectors that point at the dead primary."""
        qmp = self.secondary.qmp
        qmp.cmd('x-colo-lost-heartbeat')
        for obj in ('f2', 'f1'):
            qmp.cmd('object-del', id=obj)
        for chr_id in ('red1', 'red0'):
            qmp.cmd('chardev-remove', id=chr_id)


class ColoDiskPair(ColoPair):
    """COLO with its block replication on one disk (COLO-FT.txt).

    @image: the guest's disk (@fmt), an ext4 file system the guest
    mounts (guest/init mc.disk=); the secondary gets a copy of it, as
    the document's "primary.qcow2 needs to be copied to all hosts", and
    empty active and hidden qcow2 images of the same size.
    Primary: a quorum (vote-threshold 1) over the image; before
    migrate, a replication child in primary mode is added with
    drive_add and x-blockdev-change, an NBD client of the secondary.
    Secondary: quorum over a replication child in secondary mode
    (active image, backed by the hidden one, backed by the copy), and an
    NBD server exporting the copy, written by the primary's child.
    The disk is a virtio-blk-pci (id disk0) as in the MC benchmarks,
    not the document's IDE one (the test guest has no ATA driver).
    As in the document the primary starts paused (-S): its disk and the
    secondary's copy must not differ before replication starts, so the
    guest boots under COLO (COLO starts the VM after the first
    checkpoint).  @extra: {'primary': [...], 'secondary': [...]}, more
    arguments per side.
    """

    def __init__(self, wd, image, fmt='raw', delay_ms=100, mem='512M',
                 app='', extra=None, nodelay=False):
        extra = extra or {}
        self.port = free_port()
        self.nbd_port = free_port()
        targs, self.trace = trace_args(wd)
        qemu_img = os.path.join(BUILD, 'qemu', 'qemu-img')
        size = os.path.getsize(image) if fmt == 'raw' else int(
            re.search(r'virtual size: .*\((\d+) bytes\)', subprocess.run(
                [qemu_img, 'info', image], check=True, text=True,
                stdout=subprocess.PIPE).stdout).group(1))
        parent = os.path.join(wd, 'colo-secondary-disk.' + fmt)
        active = os.path.join(wd, 'colo-secondary-active.qcow2')
        hidden = os.path.join(wd, 'colo-secondary-hidden.qcow2')
        shutil.copyfile(image, parent)
        for img in (active, hidden):
            subprocess.run([qemu_img, 'create', '-q', '-f', 'qcow2', img,
                            str(size)], check=True)
        quorum = 'if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,' \
                 'vote-threshold=1,'
        dev = ['-device', 'virtio-blk-pci,drive=colo-disk0,id=disk0']
        sec = ['-drive', 'if=none,id=parent0,file.filename=%s,driver=%s' % (
                   parent, fmt),
               '-drive', 'if=none,id=childs0,driver=replication,'
               'mode=secondary,file.driver=qcow2,top-id=colo-disk0,'
               'file.file.filename=%s,file.backing.driver=qcow2,'
               'file.backing.file.filename=%s,file.backing.backing=parent0'
               % (active, hidden),
               '-drive', quorum + 'children.0=childs0'] + dev + list(
                   extra.get('secondary', ())) + [
               '-incoming', 'tcp:127.0.0.1:%d' % self.port] + \
            nodelay_args(nodelay)
        pri = ['-drive', quorum + 'children.0.file.filename=%s,'
               'children.0.driver=%s' % (image, fmt)] + dev + list(
                   extra.get('primary', ())) + targs + ['-S'] + \
            nodelay_args(nodelay)
        self.secondary = VM('colo-secondary', guest_args(
            app, mem=mem, machine='pc', extra=sec), wd)
        self.primary = VM('colo-primary', guest_args(
            app, mem=mem, machine='pc', extra=pri), wd)
        try:
            sq, pq = self.secondary.qmp, self.primary.qmp
            sq.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'x-colo', 'state': True}])
            sq.cmd('nbd-server-start', addr={'type': 'inet', 'data': {
                'host': '127.0.0.1', 'port': str(self.nbd_port)}})
            sq.cmd('nbd-server-add', device='parent0', writable=True)
            out = pq.hmp('drive_add -n buddy driver=replication,mode=primary,'
                         'file.driver=nbd,file.host=127.0.0.1,file.port=%d,'
                         'file.export=parent0,node-name=replication0'
                         % self.nbd_port)
            if out.strip() and 'OK' not in out:
                raise RuntimeError('drive_add: %s' % out.strip())
            pq.cmd('x-blockdev-change', parent='colo-disk0',
                   node='replication0')
            self.enable(delay_ms)
        except BaseException:
            self.close()
            raise
