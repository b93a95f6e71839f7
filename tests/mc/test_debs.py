"""The Debian packages (make debs), installed and used as an operator would.

The packages are built from the build tree (scripts/build-debs.sh), then
installed with dpkg into a scratch root: a mount namespace in which /usr,
/etc and /var are overlays whose upper layers live on a tmpfs, so dpkg
sees the host's installed packages (the dependencies: seabios, ipxe-qemu,
qemu-system-data) and the host itself is never touched.  In that root:
install an older build, upgrade to the current one, run a protected pair
with the installed emulator (no -L: the firmware comes from Debian's
packages through the configured search path), use qemu-mc-img, then
remove and purge, leaving no file behind.
"""

import os
import shutil
import subprocess
import time

from mcvm import (BUILD, TOP, VM, Skip, guest_args, free_port,
                  wait_migration, workdir)

OBJ = os.path.join(BUILD, 'qemu')
PKGS = ('qemu-mc-system-x86', 'qemu-mc-utils', 'qemu-mc-cluster')
AGENT = '/usr/lib/ocf/resource.d/qemu-mc/mc-domain'
ALERT = '/usr/share/qemu-mc/alerts/mc-protection-alert'
EMU = '/usr/bin/qemu-mc-system-x86_64'
IMG = '/usr/bin/qemu-mc-img'


def build_debs(out, version=None):
    env = dict(os.environ)
    if version:
        env['MC_DEB_VERSION'] = version
    r = subprocess.run(['bash', os.path.join(TOP, 'scripts', 'build-debs.sh'),
                        OBJ, out], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    debs = sorted(os.path.join(out, f) for f in os.listdir(out)
                  if f.endswith('.deb'))
    assert len(debs) == 3, debs
    return debs


class ScratchRoot:
    """A process holding a private mount namespace with /usr, /etc and /var
    overlaid on a tmpfs; run() executes commands inside it."""

    def __init__(self, wd):
        self.top = os.path.join(wd, 'overlay')
        os.makedirs(self.top, exist_ok=True)
        script = 'set -e; mount -t tmpfs tmpfs "$1"; '
        for d in ('usr', 'etc', 'var'):
            script += ('mkdir -p "$1/{d}.up" "$1/{d}.work"; mount -t overlay '
                       'overlay -o lowerdir=/{d},upperdir="$1/{d}.up",'
                       'workdir="$1/{d}.work" /{d}; '.format(d=d))
        script += 'echo ready; exec sleep 100000'
        self.proc = subprocess.Popen(
            ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
             script, 'sh', self.top], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != 'ready':
            self.proc.kill()
            raise Skip('cannot make a scratch root (mount namespace with '
                       'overlayfs): %r' % line)
        self.wrapper = ['nsenter', '-t', str(self.proc.pid), '-m']

    def run(self, *argv, check=True):
        r = subprocess.run(self.wrapper + list(argv), capture_output=True,
                           text=True)
        if check:
            assert r.returncode == 0, (argv, r.stdout, r.stderr)
        return r

    def exists(self, path):
        return self.run('test', '-e', path, check=False).returncode == 0

    def status(self, pkg):
        r = self.run('dpkg-query', '-W', '-f', '${Status} ${Version}', pkg,
                     check=False)
        return r.stdout.strip() if r.returncode == 0 else 'unknown'

    def close(self):
        self.proc.kill()
        self.proc.wait()


def test_debs_install_run_upgrade_purge():
    if os.geteuid() != 0:
        raise Skip('needs root (mount namespace, dpkg)')
    for tool in ('unshare', 'nsenter', 'dpkg-deb', 'dpkg-shlibdeps'):
        if not shutil.which(tool):
            raise Skip('%s not installed' % tool)
    args = guest_args('mc.dirty=16,20000', extra=[
        '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0'])
    wd = workdir('debs')
    base = open(os.path.join(BUILD, 'base-version')).read().strip()
    base = base.split(':', 1)[-1]
    old = build_debs(os.path.join(wd, 'old'), version=base + '+mc0')
    new = build_debs(os.path.join(wd, 'new'))
    version = os.path.basename(new[0]).split('_')[1]
    # The default version names the base and sorts after an older build.
    assert version.startswith(base + '+mc'), version
    assert subprocess.run(['dpkg', '--compare-versions', version, 'gt',
                           base + '+mc0']).returncode == 0, version

    # Nothing we ship is a path another installed package owns.
    listing = ''.join(subprocess.run(['dpkg-deb', '-c', deb],
                                     capture_output=True, text=True,
                                     check=True).stdout for deb in new)
    for line in listing.splitlines():
        path = line.split()[5].lstrip('.').split(' ->')[0]
        if path and not path.endswith('/'):
            r = subprocess.run(['dpkg', '-S', path], capture_output=True)
            assert r.returncode != 0, (path, r.stdout)

    root = ScratchRoot(wd)
    vms = []
    try:
        root.run('dpkg', '-i', *old)
        for p in PKGS:
            assert root.status(p) == 'install ok installed %s+mc0' % base
        root.run('dpkg', '-i', *new)
        for p in PKGS:
            assert root.status(p) == 'install ok installed ' + version, \
                root.status(p)
        # the host itself did not get the packages
        assert not os.path.exists(EMU)
        r = root.run('dpkg', '--audit')
        assert r.stdout.strip() == '', r.stdout

        out = root.run(EMU, '--version').stdout
        assert '-mc' in out, out
        # the resource agent, where Pacemaker looks for ocf:qemu-mc:*
        out = root.run(AGENT, 'meta-data').stdout
        assert '<resource-agent name="mc-domain"' in out, out
        # its alert agent, run as Pacemaker would on an attribute change
        log = '/var/tmp/mc-alert.log'      # inside the scratch root
        root.run('env', 'CRM_alert_kind=attribute',
                 'CRM_alert_attribute_name=mc-protected-vm1',
                 'CRM_alert_attribute_value=0', 'CRM_alert_node=n1',
                 'CRM_alert_recipient=' + log, ALERT)
        out = root.run('cat', log).stdout
        assert 'vm1 on n1 runs UNPROTECTED' in out, out

        # A protected pair run by the installed emulator, no -L.
        port = free_port()
        primary = VM('primary', args, wd, wrapper=root.wrapper, binary=EMU)
        vms.append(primary)
        standby = VM('standby', args + ['-incoming', 'tcp:127.0.0.1:%d' %
                                        port], wd, wrapper=root.wrapper,
                     binary=EMU)
        vms.append(standby)
        primary.wait_serial('mc-guest: ready', timeout=120)
        for vm in vms:
            vm.qmp.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'mc', 'state': True}])
            vm.qmp.cmd('migrate-set-parameters', **{'mc-delay': 50})
        primary.qmp.cmd('migrate', uri='tcp:127.0.0.1:%d' % port)
        wait_migration(primary.qmp, 'mc', timeout=180)
        deadline = time.time() + 60
        while primary.qmp.cmd('query-migrate')['mc']['acked'] < 5:
            assert time.time() < deadline, primary.qmp.cmd('query-migrate')
            time.sleep(0.1)
        assert standby.qmp.cmd('query-status')['status'] == 'inmigrate'
        for vm in vms:
            vm.quit()

        img = os.path.join(wd, 'disk.qcow2')
        root.run(IMG, 'create', '-f', 'qcow2', img, '64M')
        info = root.run(IMG, 'info', img).stdout
        assert 'file format: qcow2' in info and '64 MiB' in info, info

        root.run('dpkg', '--remove', *PKGS)
        assert not root.exists(EMU) and not root.exists(IMG)
        root.run('dpkg', '--purge', *PKGS)
        for p in PKGS:
            assert root.status(p) in ('unknown', 'not-installed'), \
                root.status(p)
        for d in ('/usr/lib/qemu-mc', '/usr/share/qemu-mc',
                  '/usr/share/doc/qemu-mc-system-x86'):
            assert not root.exists(d), d
    finally:
        for vm in vms:
            vm.kill()
        root.close()
    shutil.rmtree(wd, ignore_errors=True)
