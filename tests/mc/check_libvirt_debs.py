#!/usr/bin/env python3
"""The libvirt packages (make libvirt-debs), installed as an operator would.

In a scratch root (test_debs.ScratchRoot: a mount namespace with /usr,
/etc and /var overlaid on a tmpfs; the host is never touched):
  1. Debian 12's own libvirt (daemon, QEMU driver, clients) is installed
     with apt, as on an operator's host;
  2. our packages of each installed libvirt package are installed over
     it with apt: an upgrade in place, apt resolving dependencies;
  3. the installed libvirtd runs (own /run/libvirt on a tmpfs), and the
     installed virsh knows `migrate --mc` and `mc-failover`, defines and
     starts the test guest with the fork's QEMU, and refuses --mc
     without --live;
  4. going back: apt installs Debian's versions again (a downgrade),
     and virsh no longer knows --mc.
Needs root and the apt archive the host already uses (Debian's libvirt is
downloaded into the scratch root's cache).

Usage: check_libvirt_debs.py DEBDIR
"""

import glob
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lvhost import domain_xml  # noqa: E402
from mcvm import workdir  # noqa: E402
from test_debs import ScratchRoot  # noqa: E402

STOCK = ('libvirt-daemon-system', 'libvirt-clients',
         'libvirt-daemon-driver-qemu')
QEMU_CONF = ('user = "root"\ngroup = "root"\nsecurity_driver = "none"\n'
             'stdio_handler = "file"\n')   # no virtlogd in the scratch root


PIDFILE = '/run/libvirt/check-libvirtd.pid'


def stop_daemon(root):
    root.run('sh', '-c', 'test -f %s && kill $(cat %s); true' % (PIDFILE,
                                                                 PIDFILE),
             check=False)


def step(msg):
    print('check-libvirt-debs: %s' % msg, flush=True)


def libvirt_packages(root):
    """Installed packages built from the libvirt source: name -> version."""
    out = root.run('dpkg-query', '-W', '-f',
                   '${Package} ${Version} ${Source} ${Status}\\n').stdout
    pkgs = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == 'libvirt' and 'installed' in f[-1]:
            pkgs[f[0]] = f[1]
    return pkgs


def main(debdir):
    debdir = os.path.abspath(debdir)     # apt takes files by path only
    debs = {os.path.basename(d).split('_')[0]: d
            for d in glob.glob(os.path.join(debdir, '*.deb'))}
    if not debs:
        step('no packages in %s (make libvirt-debs)' % debdir)
        return 1
    ours = subprocess.run(['dpkg-deb', '-f', debs['libvirt0'], 'Version'],
                          capture_output=True, text=True,
                          check=True).stdout.strip()
    wd = workdir('lvdebs')
    root = ScratchRoot(wd)
    env = ['env', 'DEBIAN_FRONTEND=noninteractive']
    apt = env + ['apt-get', '-y', '-q', '--no-install-recommends']
    try:
        # no service starts from maintainer scripts inside the scratch root
        root.run('sh', '-c', 'printf "#!/bin/sh\\nexit 101\\n" > '
                 '/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d')
        step('installing Debian\'s libvirt (%s)' % ', '.join(STOCK))
        root.run(*apt, 'install', *STOCK)
        stock = libvirt_packages(root)
        debian_version = stock['libvirt0']
        assert '+mc' not in debian_version, stock
        step('Debian\'s libvirt %s: %d packages' % (debian_version,
                                                    len(stock)))
        missing = [p for p in stock if p not in debs]
        assert not missing, 'not built: %s' % missing
        step('upgrading to ours (%s)' % ours)
        root.run(*apt, 'install', *[debs[p] for p in stock])
        now = libvirt_packages(root)
        assert set(now) == set(stock), (now, stock)
        assert all(v == ours for v in now.values()), now
        assert root.run('dpkg', '--audit').stdout.strip() == ''

        # the installed daemon and virsh
        # its own /run/libvirt, its own network namespace (no network of
        # the host is touched; the guest has no NIC), no autostarted
        # network
        root.run('mkdir', '-p', '/run/libvirt')
        root.run('mount', '-t', 'tmpfs', 'tmpfs', '/run/libvirt')
        root.run('sh', '-c', 'rm -f /etc/libvirt/qemu/networks/autostart/*; '
                 'cat >> /etc/libvirt/qemu.conf <<EOF\n%sEOF' % QEMU_CONF)
        root.run('sh', '-c', 'echo \'log_outputs="3:file:/var/log/libvirt/'
                 'libvirtd.log"\' >> /etc/libvirt/libvirtd.conf')
        root.run('unshare', '--net', '/usr/sbin/libvirtd', '-d', '-p', PIDFILE)
        virsh = ['virsh', '-c', 'qemu:///system']
        deadline = time.time() + 30
        while True:
            # (no default emulator on this root: 'version' would fail)
            r = root.run(*virsh, 'list', '--all', check=False)
            if not r.returncode:
                break
            assert time.time() < deadline, 'libvirtd did not answer: %s; ' \
                'daemon: %s' % (r.stderr.strip(), root.run(
                    'sh', '-c', 'tail -n 20 /var/log/libvirt/libvirtd.log',
                    check=False).stdout)
            time.sleep(0.5)
        out = root.run('/usr/sbin/libvirtd', '--version').stdout.strip()
        step('the installed daemon answers (%s)' % out)
        assert '--mc' in root.run('virsh', 'help', 'migrate').stdout
        assert 'mc-failover' in root.run('virsh', 'help',
                                         'mc-failover').stdout
        xml = os.path.join(wd, 'dom.xml')
        with open(xml, 'w') as f:
            f.write(domain_xml('lvdebs', wd))
        root.run(*virsh, 'define', xml)
        root.run(*virsh, 'start', 'lvdebs')
        state = root.run(*virsh, 'domstate', 'lvdebs').stdout.strip()
        assert state == 'running', state
        # (the destination is this daemon: virsh connects there first)
        r = root.run(*virsh, 'migrate', '--mc', 'lvdebs', 'qemu:///system',
                     check=False)
        assert r.returncode and 'live' in r.stderr, (r.stdout, r.stderr)
        step('domain started with the fork\'s QEMU; --mc without --live '
             'refused: %s' % r.stderr.strip().splitlines()[-1])
        root.run(*virsh, 'destroy', 'lvdebs')
        root.run(*virsh, 'undefine', 'lvdebs')
        stop_daemon(root)

        step('back to Debian\'s (%s)' % debian_version)
        root.run(*apt, '--allow-downgrades', 'install',
                 *['%s=%s' % (p, debian_version) for p in stock])
        back = libvirt_packages(root)
        assert all(v == debian_version for v in back.values()), back
        assert '--mc' not in root.run('virsh', 'help', 'migrate').stdout
        step('OK')
        return 0
    finally:
        # a check that failed half-way leaves no guest behind
        root.run('virsh', '-c', 'qemu:///system', 'destroy', 'lvdebs',
                 check=False)
        stop_daemon(root)
        root.close()
        shutil.rmtree(wd, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else 'build/libvirt-debs'))
