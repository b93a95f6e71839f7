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


def mc_pair(wd, hosts, delay=50, policy='safe'):
    """The test guest started on host a, then protected by
    virsh migrate --live --mc to host b."""
    a, b = hosts[0], hosts[1]
    xml = os.path.join(wd, 'mcg.xml')
    with open(xml, 'w') as f:
        f.write(domain_xml('mcg', wd, append='mc.dirty=16,2000'))
    a.virsh('create', xml)
    serial = os.path.join(wd, 'mcg.serial')
    wait_for(lambda: last_tick(serial) >= 2, 120, 'the guest to tick')
    a.virsh('migrate', '--live', '--mc', '--mc-delay', str(delay),
            '--mc-failover-policy', policy, 'mcg', b.uri, timeout=300)
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
    wd = workdir('libvirt-mc-kill')
    hosts = Hosts(wd, 'a', 'b')
    a, b = hosts[0], hosts[1]
    try:
        serial = mc_pair(wd, hosts)
        assert a.domstate('mcg').startswith('running'), a.domstate('mcg')
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')
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

        with open(a.root + '/run/libvirt/qemu/mcg.pid') as f:
            pid = int(f.read())
        os.kill(pid, 9)
        wait_for(lambda: b.domstate('mcg') == 'running (mc failover)', 60,
                 'the standby to take over: %s' % b.domstate('mcg'))
        before = last_tick(serial)
        wait_for(lambda: last_tick(serial) >= before + 2, 60,
                 'the guest to tick on b')
        wait_for(lambda: 'mcg' not in a.virsh('list', '--name').stdout.split(),
                 30, 'the primary to be gone on a')
        # the job ended with MC: nothing left running on b
        info = b.virsh('domjobinfo', 'mcg').stdout
        assert re.search(r'Job type:\s+None', info), info
    except Exception:
        print(a.daemon_log()[-4000:])
        print(b.daemon_log()[-4000:])
        print(a.qemu_log('mcg')[-2000:], b.qemu_log('mcg')[-2000:])
        raise
    finally:
        hosts.close()
    rm(wd)


def test_libvirt_mc_domjobabort():
    """virsh domjobabort on the primary ends MC: the domain runs on,
    unprotected, and the job is over; the standby stays paused and can be
    destroyed."""
    wd = workdir('libvirt-mc-abort')
    hosts = Hosts(wd, 'a', 'b')
    a, b = hosts[0], hosts[1]
    try:
        serial = mc_pair(wd, hosts)
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
    except Exception:
        print(a.daemon_log()[-4000:])
        print(b.daemon_log()[-4000:])
        raise
    finally:
        hosts.close()
    rm(wd)


def test_libvirt_mc_daemon_restart():
    """Both libvirtd restarted while MC runs: the pair is kept (the primary
    runs, the standby stays paused as the standby, checkpoints go on, the
    job is still there), and a failover afterwards is still seen through
    libvirt."""
    wd = workdir('libvirt-mc-restart')
    hosts = Hosts(wd, 'a', 'b')
    a, b = hosts[0], hosts[1]
    try:
        serial = mc_pair(wd, hosts)
        for h in (a, b):
            h.stop()
            h.start()
        assert a.domstate('mcg').startswith('running'), a.domstate('mcg')
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')
        info = a.virsh('domjobinfo', 'mcg').stdout
        assert re.search(r'Job type:\s+Unbounded', info), info
        first = acked(a)
        wait_for(lambda: acked(a) >= first + 3, 60, 'checkpoints')

        with open(a.root + '/run/libvirt/qemu/mcg.pid') as f:
            pid = int(f.read())
        os.kill(pid, 9)
        wait_for(lambda: b.domstate('mcg') == 'running (mc failover)', 60,
                 'the standby to take over: %s' % b.domstate('mcg'))
        before = last_tick(serial)
        wait_for(lambda: last_tick(serial) >= before + 2, 60,
                 'the guest to tick on b')
    except Exception:
        print(a.daemon_log()[-4000:])
        print(b.daemon_log()[-4000:])
        raise
    finally:
        hosts.close()
    rm(wd)


def test_libvirt_mc_failover_by_hand():
    """Policy 'manual': the standby does not act alone when the primary
    dies (it stays paused and QEMU reports MC_PEER_LOST); virsh
    mc-failover on it, the new API, makes it take over.  mc-failover on a
    domain outside an MC pair is a clear error that changes nothing."""
    wd = workdir('libvirt-mc-hand')
    hosts = Hosts(wd, 'a', 'b')
    a, b = hosts[0], hosts[1]
    try:
        serial = mc_pair(wd, hosts, policy='manual')
        r = a.virsh('mc-failover', 'nosuchdomain', check=False)
        assert r.returncode != 0
        first = acked(a)
        wait_for(lambda: acked(a) >= first + 3, 60, 'checkpoints')

        with open(a.root + '/run/libvirt/qemu/mcg.pid') as f:
            pid = int(f.read())
        os.kill(pid, 9)
        # the standby sees the connection close at once; 'manual' waits
        time.sleep(3)
        assert b.domstate('mcg') == 'paused (mc standby)', b.domstate('mcg')
        info = b.virsh('domjobinfo', 'mcg', check=False)
        assert 'Unbounded' in info.stdout or info.returncode != 0, info

        b.virsh('mc-failover', 'mcg')
        wait_for(lambda: b.domstate('mcg') == 'running (mc failover)', 60,
                 'the standby to take over: %s' % b.domstate('mcg'))
        before = last_tick(serial)
        wait_for(lambda: last_tick(serial) >= before + 2, 60,
                 'the guest to tick on b')
        # now outside MC: refused, and the domain runs on
        r = b.virsh('mc-failover', 'mcg', check=False)
        assert r.returncode != 0 and 'not part of a micro-checkpointing' \
            in r.stderr, r.stderr
        assert b.domstate('mcg') == 'running (mc failover)'
    except Exception:
        print(a.daemon_log()[-4000:])
        print(b.daemon_log()[-4000:])
        raise
    finally:
        hosts.close()
    rm(wd)
