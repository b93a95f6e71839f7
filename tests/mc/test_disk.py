"""Disk write replication: what a guest wrote is on the standby's disk.

The guest appends numbered, checksummed records to a file on an ext4
disk and tells a client "ok N" only after each fsync returned (see
mcdisk.py and guest/mc-diskwriter.c).  The standby starts with an empty
image; MC copies the disk during its initial phase, then carries every
write in the checkpoint that follows it.  After kill -9 of the primary
the guest goes on on the standby with its own image: every record the
client was told about must be on that disk, in sequence, with no torn
record, and the file system must check clean.  The same run with
mc-disk-disable must fail that check (the test has teeth).  Also: the
two images are equal byte for byte once the paused primary's last
checkpoints are applied, MC refuses to start on a missing disk, a size
mismatch or a shared image, and the primary goes on alone, with its
disk intact, when the standby dies.

MC_DISK_KILLS (default 3) sets how many kills test_disk_kill_primary_records
runs (`make check-disk-long` runs 20); MC_DISK_SEED fixes its random choices.
"""

import os
import random
import re
import shutil
import signal
import time

from mcdisk import (DISK_SIZE, Disk, DiskClient, DiskPair, client_problems,
                    differing_blocks, fsck, make_empty_image, make_fs_image,
                    need_tools)
from mcnet import Pair, Topology
from mcvm import wait_migration, workdir

# (format, how QEMU opens it, bus) and mc-delay, cycled through by the
# kill test: every combination within 12 iterations
COMBOS = [('raw', 'drive', 'blk'), ('qcow2', 'blockdev', 'blk'),
          ('qcow2', 'drive', 'scsi'), ('raw', 'blockdev', 'scsi')]
DELAYS = (10, 50, 100)
OOPS = re.compile(r'(?:Kernel panic|Oops|BUG:|general protection|'
                  r'EXT4-fs error|I/O error)[^\n]*')


def kill_run(name, fmt='raw', style='drive', bus='blk', delay=100,
             disable=False, rng=random, **kw):
    """One run: MC with the writer going, kill -9 of the primary at a
    random moment, the writer goes on on the standby, then verify and
    fsck the standby's image.  Returns (problems, summary).  @kw: more
    for the DiskPair."""
    need_tools()
    topo = Topology()
    wd = workdir(name)
    pair = client = None
    problems = []
    summary = {'delay': delay, 'disk': '%s/%s/%s' % (fmt, style, bus)}
    try:
        ext = 'img' if fmt == 'raw' else fmt
        p_img = make_fs_image(os.path.join(wd, 'primary.' + ext), fmt)
        s_img = os.path.join(wd, 'standby.' + ext)
        if disable:
            shutil.copyfile(p_img, s_img)   # mountable, never updated
        else:
            make_empty_image(s_img, fmt)
        pair = DiskPair(topo, wd, Disk(p_img, fmt, style, bus),
                        Disk(s_img, fmt, style, bus), delay=delay,
                        more_caps=('mc-disk-disable',) if disable else (),
                        **kw)
        pair.start_mc()
        stats0 = pair.disk_stats()
        if not disable and stats0.get('disk-count') != 1:
            problems.append('disk-count %s, not 1' % stats0.get('disk-count'))
        client = DiskClient(topo, os.path.join(wd, 'client'))
        client.wait(lambda evs: len(client.oks(evs)) >= 20)
        wait = rng.uniform(1.0, 4.0)
        time.sleep(wait)
        stats = pair.disk_stats()
        summary.update(kill_after_s=round(wait, 2),
                       ok_at_kill=client.last_ok(), stats=stats)
        if not disable and stats.get('disk-writes', 0) <= \
                stats0.get('disk-writes', 0):
            problems.append('disk-writes did not grow: %s -> %s' % (
                stats0.get('disk-writes'), stats.get('disk-writes')))
        if stats.get('pause-polls'):
            # disk reads after the output barrier (mc-block.c)
            problems.append('%d checkpoints polled the main loop after '
                            'their barrier' % stats['pause-polls'])
        t_kill = time.time()
        pair.primary.kill(signal.SIGKILL)
        ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=30)
        assert ev['data']['role'] == 'standby', ev
        summary['failover_ms'] = round((time.time() - t_kill) * 1000)
        ok_failover = client.last_ok()
        time.sleep(1.0)             # the writer goes on on the standby
        verdict = client.verify()
        evs = client.events()
        told = client.last_ok(evs)
        summary.update(last_ok=told, verify=verdict)
        if told <= ok_failover:
            problems.append('no record acknowledged after the failover '
                            '(last ok %d)' % told)
        problems += ['client: %s' % e for e in client_problems(evs)[:3]]
        if verdict is None:
            problems.append('no answer to verify: %s' % evs[-3:])
        else:
            if verdict['bad'] or verdict['torn']:
                problems.append('records: %d bad, %d torn' % (
                    verdict['bad'], verdict['torn']))
            if verdict['last'] < told:
                problems.append('client was told of record %d, the disk '
                                'ends at %d' % (told, verdict['last']))
            if verdict['records'] != verdict['last']:
                problems.append('%d records on disk, last number %d' % (
                    verdict['records'], verdict['last']))
        oops = OOPS.findall(pair.standby.serial())
        if oops:
            problems.append('standby guest: %s' % oops[:3])
        if problems:
            show_console(pair.standby)
            show_disk_queues(pair.standby)
        pair.standby.kill(signal.SIGKILL)
        rc, out = fsck(s_img, fmt)
        summary['fsck'] = rc
        if rc:
            problems.append('e2fsck -fn exit %d: %s' % (rc, out))
    except Exception as e:
        problems.append('%s: %s' % (type(e).__name__, e))
        show_vms(pair)
        raise
    finally:
        if client:
            client.stop()
        if pair:
            pair.close()
        topo.close()
        if problems and not disable:
            print('kept %s for inspection' % wd)
        else:
            shutil.rmtree(wd, ignore_errors=True)
    return problems, summary


def show_vms(pair):
    """The QEMU processes' exit codes and output, for a failed run."""
    for vm in (pair.vms.values() if pair else ()):
        print('%s: exit %s, output: %s' % (vm.name, vm.proc.poll(),
                                          vm.output()[-1500:]))
        show_console(vm)
        show_disk_queues(vm)


def show_console(vm):
    """The guest's console: how often it booted (a reset shows as a second
    boot, the disk writer and servers restarted) and what it printed last,
    with what came before the last boot."""
    text = vm.serial()
    boots = [m.start() for m in re.finditer(r'mc-guest: ready', text)]
    print('%s guest console: %d boots' % (vm.name, len(boots)))
    if len(boots) > 1:
        print('%s before its last boot:\n%s' % (
            vm.name, text[max(0, boots[-2] - 200):boots[-1]][-3000:]))
    print('%s guest console, last lines:\n%s' % (vm.name, text[-2000:]))


def show_disk_queues(vm):
    """The disk's virtqueues as QEMU sees them: a guest stuck on its disk
    shows whether a kick (avail ahead of last-avail), a request (in use)
    or an interrupt (used == signalled-used, guest still waiting) went
    missing."""
    try:
        for dev in vm.qmp.cmd('x-query-virtio'):
            if 'scsi' not in dev['name'] and 'blk' not in dev['name']:
                continue
            for q in range(4):
                try:
                    st = vm.qmp.cmd('x-query-virtio-queue-status',
                                    path=dev['path'], queue=q)
                except Exception:
                    break
                print('%s %s queue %d: %s' % (vm.name, dev['name'], q, {
                    k: st.get(k) for k in (
                        'last-avail-idx', 'shadow-avail-idx', 'used-idx',
                        'signalled-used', 'signalled-used-valid', 'inuse',
                        'broken')}))
    except Exception as e:
        print('%s: no virtqueue status (%s)' % (vm.name, e))
    # read after the commands above: a guest reset shows as RESET
    print('%s QMP events: %s' % (vm.name, [
        (e['event'], e.get('data')) for e in vm.qmp.events
        if e.get('event') not in (None, 'MIGRATION', 'MIGRATION_PASS',
                                  'NIC_RX_FILTER_CHANGED')]))


def describe(i, summary, problems):
    v = summary.get('verify') or {}
    return ('run %d: delay %d, %s, kill %.2f s in (client at ok %s), '
            'failover %s ms, last ok %s, on disk records=%s bad=%s torn=%s '
            'last=%s, fsck %s, stats %s%s' % (
                i, summary['delay'], summary['disk'],
                summary.get('kill_after_s', -1), summary.get('ok_at_kill'),
                summary.get('failover_ms'), summary.get('last_ok'),
                v.get('records'), v.get('bad'), v.get('torn'), v.get('last'),
                summary.get('fsck'), summary.get('stats'),
                ' PROBLEMS: %s' % problems if problems else ''))


def test_disk_kill_primary_records():
    """kill -9 of the primary while the guest writes: every record the
    client was told about is on the standby's disk, in order, none torn,
    and the standby's file system checks clean.  MC_DISK_KILLS runs, each
    with fresh VMs, across raw/qcow2, -drive/-blockdev, virtio-blk/scsi
    and mc-delay 10/50/100."""
    kills = int(os.environ.get('MC_DISK_KILLS', '3'))
    seed = int(os.environ.get('MC_DISK_SEED', str(int(time.time()))))
    rng = random.Random(seed)
    print('%d runs, MC_DISK_SEED=%d' % (kills, seed))
    failed = []
    for i in range(kills):
        fmt, style, bus = COMBOS[i % len(COMBOS)]
        delay = DELAYS[i % len(DELAYS)]
        problems, summary = kill_run('diskkill%d' % i, fmt, style, bus, delay,
                                     rng=rng)
        print(describe(i, summary, problems), flush=True)
        if problems:
            failed.append((i, problems))
    assert not failed, failed


def test_disk_kill_has_teeth():
    """The same run with mc-disk-disable (the standby's image a copy of
    the primary's as it was before the start) must fail the check."""
    for attempt in range(3):
        problems, summary = kill_run('diskteeth', 'raw', 'drive', 'blk', 50,
                                     disable=True)
        print(describe(attempt, summary, problems), flush=True)
        if problems:
            print('without disk replication the check fails, as it must')
            return
    raise AssertionError('3 runs without disk replication passed the check')


def test_disk_image_equal():
    """The paused primary's last checkpoints applied, the standby's image
    equals the primary's byte for byte."""
    need_tools()
    topo = Topology()
    wd = workdir('diskequal')
    pair = client = None
    try:
        p_img = make_fs_image(os.path.join(wd, 'primary.img'), 'raw')
        s_img = make_empty_image(os.path.join(wd, 'standby.img'), 'raw')
        pair = DiskPair(topo, wd, Disk(p_img), Disk(s_img), delay=50)
        pair.start_mc()
        stats0 = pair.disk_stats()
        assert stats0.get('disk-count') == 1, stats0
        client = DiskClient(topo, os.path.join(wd, 'client'))
        client.wait(lambda evs: len(client.oks(evs)) >= 20)
        time.sleep(6)
        pair.primary.qmp.cmd('stop')
        acked = pair.mc()['acked']
        deadline = time.time() + 30
        while pair.mc()['acked'] < acked + 3:
            assert time.time() < deadline, pair.mc()
            time.sleep(0.05)
        # the standby acknowledges a checkpoint, then applies it
        while True:
            smc = pair.mc(pair.standby)
            if smc['applied'] >= smc['acked']:
                break
            assert time.time() < deadline, smc
            time.sleep(0.05)
        stats = pair.disk_stats()
        print('client at ok %d; %d checkpoints applied; disk stats %s' % (
            client.last_ok(), smc['applied'], stats))
        assert stats.get('disk-writes', 0) > stats0.get('disk-writes', 0), \
            (stats0, stats)
        diff = differing_blocks(p_img, s_img)
        print('%d of %d 4 KiB blocks differ%s' % (
            len(diff), DISK_SIZE // 4096,
            ': ' + ', '.join('%#x' % o for o in diff[:16]) if diff else ''))
        assert os.path.getsize(p_img) == os.path.getsize(s_img)
        assert not diff, diff[:16]
    finally:
        if client:
            client.stop()
        if pair:
            pair.close()
        topo.close()
        shutil.rmtree(wd, ignore_errors=True)


def refused_start(name, standby_disk, words):
    """MC must refuse to start: the primary's migration fails saying why
    (@words: all of the first, one of the second, case-insensitive), and
    its guest runs on."""
    need_tools()
    wd = workdir(name)
    pair = None
    try:
        p_img = make_fs_image(os.path.join(wd, 'primary.img'), 'raw')
        sd = standby_disk(wd, p_img)
        pair = DiskPair(None, wd, Disk(p_img), sd, writer=False, delay=50)
        resp = pair.primary.qmp.cmd_raw('migrate', uri='tcp:127.0.0.1:%d'
                                        % pair.mig_port)
        if 'error' in resp:
            desc = resp['error']['desc']
        else:
            wait_migration(pair.primary.qmp, 'failed', timeout=120,
                           bad=('cancelled', 'mc', 'completed'))
            desc = pair.migrate_status().get('error-desc', '')
        time.sleep(0.5)
        standby_log = pair.standby.output().strip().splitlines()[-3:]
        print('%s: primary: %r; standby: %s' % (name, desc, standby_log))
        low = desc.lower()
        need, any_of = words
        assert all(w in low for w in need) and any(w in low for w in any_of),\
            (desc, words)
        st = pair.primary.qmp.cmd('query-status')['status']
        assert st == 'running', st
        # and the guest really runs: its console goes on
        pos = len(pair.primary.serial())
        pair.primary.wait_serial('mc-guest: tick', timeout=10, start=pos)
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_disk_refused_starts():
    """MC does not start when the standby lacks the primary's disk, when
    its image has another size, or when both open the same image file."""
    cases = [
        ('diskmissing', lambda wd, p: None, (['disk0'], ['missing'])),
        ('disksize', lambda wd, p: Disk(make_empty_image(
            os.path.join(wd, 'standby.img'), 'raw', DISK_SIZE - (1 << 20))),
         (['disk0'], ['size'])),
        ('diskshared', lambda wd, p: Disk(p, locking=False),
         (['disk0'], ['same image', 'shared'])),
    ]
    failed = []
    for name, standby_disk, words in cases:
        try:
            refused_start(name, standby_disk, words)
        except Exception as e:
            print('%s: FAILED: %r' % (name, e))
            failed.append(name)
    assert not failed, failed


def test_disk_standby_killed():
    """kill -9 of the standby while the guest writes: the primary's MC
    ends (MC_FAILOVER, status failed), the writer's acknowledgements go
    on with no gap, and its disk verifies and checks clean."""
    need_tools()
    topo = Topology()
    wd = workdir('diskstandby')
    pair = client = None
    try:
        p_img = make_fs_image(os.path.join(wd, 'primary.img'), 'raw')
        s_img = make_empty_image(os.path.join(wd, 'standby.img'), 'raw')
        pair = DiskPair(topo, wd, Disk(p_img), Disk(s_img), delay=50)
        pair.start_mc()
        client = DiskClient(topo, os.path.join(wd, 'client'))
        client.wait(lambda evs: len(client.oks(evs)) >= 20)
        time.sleep(1)
        stats = pair.disk_stats()
        pair.standby.kill(signal.SIGKILL)
        ev = pair.primary.qmp.wait_event('MC_FAILOVER', timeout=30)
        assert ev['data']['role'] == 'primary', ev
        wait_migration(pair.primary.qmp, 'failed', timeout=30,
                       bad=('cancelled',))
        n0 = client.last_ok()
        client.wait(lambda evs: client.last_ok(evs) >= n0 + 100)
        verdict = client.verify()
        evs = client.events()
        print('disk stats at the kill %s; ok %d at the failover, %d at '
              'the end; verify %s' % (stats, n0, client.last_ok(evs),
                                      verdict))
        assert not client_problems(evs), client_problems(evs)[:3]
        assert verdict, evs[-3:]
        assert verdict['bad'] == 0 and verdict['torn'] == 0, verdict
        assert verdict['last'] >= client.last_ok(evs), verdict
        assert verdict['records'] == verdict['last'], verdict
        assert pair.primary.qmp.cmd('query-status')['status'] == 'running'
        pair.primary.kill(signal.SIGKILL)
        rc, out = fsck(p_img, 'raw')
        assert rc == 0, out
    finally:
        if client:
            client.stop()
        if pair:
            pair.close()
        topo.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_disk_early_checkpoints():
    """Disk writes count against mc-max-buffer-size: a burst of writes
    larger than the staging buffer, within one long epoch, is carried by
    early checkpoints, MC goes on, and the images end up equal."""
    need_tools()
    wd = workdir('diskearly')
    pair = None
    size = 32 << 20
    try:
        p_img = os.path.join(wd, 'primary.img')
        with open(p_img, 'wb') as f:
            f.write(os.urandom(size))
        s_img = make_empty_image(os.path.join(wd, 'standby.img'), 'raw',
                                 size)
        args = {r: Disk(img).args() for r, img in (('primary', p_img),
                                                   ('standby', s_img))}
        # no file system: the writes below come from the monitor
        pair = Pair(None, wd, nics=(), delay=200, role_args=args)
        for vm in (pair.primary, pair.standby):
            vm.qmp.cmd('migrate-set-parameters',
                       **{'mc-max-buffer-size': 8 << 20})
        pair.start_mc()
        pair.primary.qmp.cmd('migrate-set-parameters', **{'mc-delay': 5000})
        time.sleep(0.5)
        early0 = pair.mc()['early-checkpoints']
        # 16 MiB in 1 MiB writes, 50 ms apart: twice the staging buffer
        # within one epoch
        for i in range(16):
            pair.primary.qmp.hmp('qemu-io d0 "write -P %d %d 1M"' %
                                 (i + 1, (i * 2 + 1) << 20))
            time.sleep(0.05)
        deadline = time.time() + 30
        while pair.mc()['disk-backlog-bytes']:
            assert time.time() < deadline, pair.mc()
            time.sleep(0.1)
        mc = pair.mc()
        status = pair.primary.qmp.cmd('query-migrate')['status']
        print('early checkpoints %d -> %d, staging high water %d of %d, '
              'disk bytes %d, status %s' % (
                  early0, mc['early-checkpoints'], mc['staging-high-water'],
                  mc['staging-size'], mc['disk-bytes'], status))
        assert status == 'mc', status
        assert mc['early-checkpoints'] >= early0 + 2, mc
        assert mc['disk-bytes'] >= 16 << 20, mc
        pair.primary.qmp.cmd('migrate-set-parameters', **{'mc-delay': 50})
        pair.primary.qmp.cmd('stop')
        acked = pair.mc()['acked']
        while pair.mc()['acked'] < acked + 2 or \
                pair.mc(pair.standby)['applied'] < acked + 2:
            assert time.time() < deadline, pair.mc()
            time.sleep(0.05)
        diff = differing_blocks(p_img, s_img)
        print('%d 4 KiB blocks differ' % len(diff))
        assert not diff, diff[:16]
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)
