"""libvirt (build/libvirt, Debian 12's 9.0 + libvirt/patches) driving our
QEMU between two namespace "hosts" (lvhost.py)."""

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


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError('timed out waiting for ' + what)
        time.sleep(0.2)


def test_libvirt_live_migration():
    """The baseline: plain live migration of the test guest from host a to
    host b through libvirt, as any libvirt user would (virsh migrate
    --live), with our QEMU as the emulator: both libvirtd understand it
    and the guest goes on on b."""
    wd = workdir('libvirt-live')
    hosts = Hosts(wd, 'a', 'b')
    a, b = hosts[0], hosts[1]
    try:
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
    except Exception:
        print(a.daemon_log()[-3000:])
        print(b.daemon_log()[-3000:])
        print(a.qemu_log('mcg')[-2000:], b.qemu_log('mcg')[-2000:])
        raise
    finally:
        hosts.close()
    rm(wd)
