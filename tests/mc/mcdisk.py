"""Helpers for the disk replication tests: images, drives, the writer's client.

The primary's disk is a 64 MiB ext4 image (raw, or converted to qcow2);
the standby gets an empty image of the same size and format, which MC
fills during its initial copy and then with every guest write, one
checkpoint at a time.  The guest mounts the disk at /mnt and runs
mc-diskwriter (guest/mc-diskwriter.c), which appends numbered,
checksummed records to /mnt/records and tells its client "ok N" after
each fsync; diskclient.py, in the client's network namespace, logs them.
"""

import os
import shutil
import signal
import subprocess

from mcnet import GUEST_IP, EventLog, Pair
from mcvm import BUILD, Skip

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU_IMG = os.path.join(BUILD, 'qemu', 'qemu-img')
DISK_SIZE = 64 << 20
WRITER_PORT = 7100
MOUNT = '/mnt'
DISK_ID = 'disk0'
# what query-migrate's mc object tells about disks
DISK_STATS = ('disk-count', 'disk-writes', 'disk-bytes', 'disk-writes-last',
              'disk-bytes-last', 'disk-backlog-bytes', 'disk-initial-bytes',
              'pause-polls')


def run(*cmd):
    """Run a host tool; its exit code and output."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors='replace')
    return r.returncode, r.stdout


def need_tools():
    for tool in ('mkfs.ext4', 'e2fsck'):
        if not shutil.which(tool, path=os.environ.get('PATH', '') +
                            ':/sbin:/usr/sbin'):
            raise Skip('%s is not installed (e2fsprogs)' % tool)
    if not os.path.exists(QEMU_IMG):
        raise Skip('qemu-img not built (make build)')


def tool(name):
    return shutil.which(name, path=os.environ.get('PATH', '') +
                        ':/sbin:/usr/sbin') or name


def qemu_img(*args):
    rc, out = run(QEMU_IMG, *args)
    if rc:
        raise RuntimeError('qemu-img %s: %s' % (' '.join(args), out))
    return out


def make_fs_image(path, fmt, size=DISK_SIZE):
    """A fresh ext4 file system in a @fmt image of @size bytes."""
    raw = path if fmt == 'raw' else path + '.tmp-raw'
    with open(raw, 'wb') as f:
        f.truncate(size)
    rc, out = run(tool('mkfs.ext4'), '-q', '-F', raw)
    if rc:
        raise RuntimeError('mkfs.ext4: %s' % out)
    if fmt != 'raw':
        qemu_img('convert', '-f', 'raw', '-O', fmt, raw, path)
        os.unlink(raw)
    return path


def make_empty_image(path, fmt, size=DISK_SIZE):
    qemu_img('create', '-q', '-f', fmt, path, str(size))
    return path


def to_raw(path, fmt):
    """@path as a raw file (converted beside it when it is not raw)."""
    if fmt == 'raw':
        return path
    raw = path + '.raw'
    qemu_img('convert', '-f', fmt, '-O', 'raw', path, raw)
    return raw


def fsck(path, fmt):
    """e2fsck -fn of the image: (exit code, last lines of its output)."""
    raw = to_raw(path, fmt)
    try:
        rc, out = run(tool('e2fsck'), '-fn', raw)
    finally:
        if raw != path:
            os.unlink(raw)
    return rc, out.strip().splitlines()[-12:]


def differing_blocks(a, b, block=4096):
    """Offsets of the @block-sized blocks in which two files differ."""
    out = []
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        off = 0
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if not x and not y:
                break
            if x != y:
                for i in range(0, max(len(x), len(y)), block):
                    if x[i:i + block] != y[i:i + block]:
                        out.append(off + i)
            off += max(len(x), len(y))
    return out


class Disk:
    """One guest disk: its image and how QEMU opens it.

    @style: 'drive' (-drive) or 'blockdev' (-blockdev); @bus: 'blk'
    (virtio-blk-pci, the guest's vda) or 'scsi' (virtio-scsi-pci with a
    scsi-hd, the guest's sda); @locking False: file.locking=off.
    """

    def __init__(self, path, fmt='raw', style='drive', bus='blk',
                 locking=True, dev_id=DISK_ID):
        self.path, self.fmt, self.style, self.bus = path, fmt, style, bus
        self.locking, self.dev_id = locking, dev_id

    @property
    def guest_dev(self):
        return 'sda' if self.bus == 'scsi' else 'vda'

    def args(self):
        if self.style == 'drive':
            opts = 'file=%s,if=none,id=d0,format=%s,cache=writeback' % (
                self.path, self.fmt)
            if not self.locking:
                opts += ',file.locking=off'
            a = ['-drive', opts]
        else:
            opts = 'driver=file,filename=%s,node-name=f0' % self.path
            if not self.locking:
                opts += ',locking=off'
            a = ['-blockdev', opts, '-blockdev',
                 'driver=%s,file=f0,node-name=d0,cache.direct=off' % self.fmt]
        if self.bus == 'scsi':
            a += ['-device', 'virtio-scsi-pci,id=scsi0', '-device',
                  'scsi-hd,drive=d0,id=%s,bus=scsi0.0' % self.dev_id]
        else:
            a += ['-device', 'virtio-blk-pci,drive=d0,id=%s' % self.dev_id]
        return a

    def describe(self):
        return '%s/%s/%s' % (self.fmt, self.style, self.bus)


class DiskPair(Pair):
    """A Pair whose guest mounts @primary_disk at /mnt (and runs the
    writer if @writer); the standby gets @standby_disk (None: no disk).
    @app: more guest options (see Pair).
    @topo None: no network (see Pair), for tests that need no client."""

    def __init__(self, topo, wd, primary_disk, standby_disk, writer=True,
                 writer_ms=5, app='', **kw):
        app += ' mc.disk=%s mc.diskdev=%s' % (MOUNT, primary_disk.guest_dev)
        if writer:
            app += ' mc.diskwriter=%d,%d' % (WRITER_PORT, writer_ms)
        role_args = {'primary': primary_disk.args(),
                     'standby': standby_disk.args() if standby_disk else []}
        self.vms = {}
        if not topo:
            kw['nics'] = ()
        try:
            super().__init__(topo, wd, app=app, role_args=role_args, **kw)
            self.primary.wait_serial('mc-guest: ready', timeout=120)
            serial = self.primary.serial()
            if 'mounted on %s' % MOUNT not in serial:
                raise RuntimeError('the guest did not mount its disk: %s'
                                   % serial[-1500:])
            if writer:
                self.primary.wait_serial('mc-diskwriter: listening',
                                         timeout=60)
        except BaseException:
            self.close()
            raise

    def disk_stats(self, vm=None):
        mc = self.mc(vm)
        return {k: mc[k] for k in DISK_STATS if k in mc}

    def migrate_status(self, vm=None):
        return (vm or self.primary).qmp.cmd('query-migrate')


class DiskClient(EventLog):
    """diskclient.py in the client's namespace."""

    name = 'disk client'

    def __init__(self, topo, out, host=GUEST_IP, port=WRITER_PORT, ns=None):
        super().__init__(topo, ns or topo.cl, [
            os.path.join(HERE, 'diskclient.py'), '--host', host, '--port',
            str(port), '--out', out], out)

    def oks(self, evs=None):
        return [e['n'] for e in (evs or self.events()) if e['ev'] == 'ok']

    def last_ok(self, evs=None):
        n = self.oks(evs)
        return max(n) if n else 0

    def verify(self, timeout=90):
        """Ask the writer to verify; its answer (the "verify" event) or
        None, once "verify done" came, the connection closed or time
        ran out."""
        self.proc.send_signal(signal.SIGUSR1)
        try:
            evs = self.wait(lambda evs: any(e['ev'] in ('verify-done',
                                                        'closed')
                                            for e in evs), timeout)
        except TimeoutError:
            evs = self.events()
        got = [e for e in evs if e['ev'] == 'verify']
        return got[-1] if got else None


def client_problems(evs):
    """What the client must never see: gaps, garbage, resets, errors."""
    return [e for e in evs if e['ev'] in ('bad', 'closed', 'error')]
