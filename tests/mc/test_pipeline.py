"""Fast checkpoints: pipelined, a light pause, no event per checkpoint.

At mc-delay 0 the primary takes checkpoints back to back: several are in
flight (taken, not yet acknowledged) at once, and the guest's memory on
the standby still equals the primary's byte for byte once the primary is
paused and the last checkpoints applied.  A QMP client sees no STOP or
RESUME event per checkpoint (the light pause changes no run state), and
no MIGRATION_PASS with the events capability on.
No NIC, no namespace: needs no root.
"""

import shutil
import time

from mcnet import Pair
from mcvm import Skip, workdir
from test_consistency import memory_after_checkpoints

RUN_S = 4
MEM = 256 << 20


def test_pipeline_delay0_consistent_no_events():
    wd = workdir('pipeline')
    pair = None
    try:
        # 'events': precopy's MIGRATION_PASS per dirty-log sync must not
        # become one event per checkpoint
        pair = Pair(None, wd, nics=(), delay=0, app='mc.dirty=16,5000',
                    more_caps=('events',))
        pair.start_mc()
        pair.primary.qmp.events.clear()
        m0 = pair.mc()
        deadline = time.time() + RUN_S
        inflight = []
        while time.time() < deadline:
            inflight.append(pair.mc()['in-flight'])
            time.sleep(0.02)
        m1 = pair.mc()
        rate = (m1['acked'] - m0['acked']) / RUN_S
        names = [e['event'] for e in pair.primary.qmp.events]
        print('%.0f checkpoints/s acknowledged, pause avg %d us, in flight '
              'at most %d (sampled: max %d), refused %d; events during the '
              'run: %s' % (rate, m1['pause-avg-us'], m1['in-flight-max'],
                           max(inflight), m1['refused'],
                           sorted(set(names)) or 'none'))
        assert m1['in-flight-max'] >= 2, m1
        assert rate > 20, m1
        assert not set(names) & {'STOP', 'RESUME', 'MIGRATION_PASS'}, \
            sorted(set(names))

        pair.primary.qmp.cmd('stop')
        diff, _ = memory_after_checkpoints(pair, wd, MEM)
        assert not diff, diff
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_run_state_through_checkpoints():
    """A management client sees "running" between and inside
    checkpoints, and its "stop" and "cont" take effect whenever they
    land, a checkpoint's pause included.  Under KVM the pause runs the
    VM state-change handlers, and kvmclock's drops the BQL: the monitor
    runs inside the pause there.  Checkpoints back to back (mc-delay 0)
    so that commands often land in a pause."""
    wd = workdir('pipeline-runstate')
    pair = None
    try:
        pair = Pair(None, wd, nics=(), delay=0, app='mc.dirty=16,2000')
        pair.start_mc()
        p = pair.primary
        seen = {}
        swallowed = 0
        refused = []
        rounds = 0
        a0 = pair.mc()['acked']
        deadline = time.time() + RUN_S * 2
        while time.time() < deadline:
            rounds += 1
            for _ in range(10):
                st = p.qmp.cmd('query-status')['status']
                seen[st] = seen.get(st, 0) + 1
            p.qmp.cmd('stop')
            # a stop that a checkpoint's resume undid reads "running"
            # (or finish-migrate) again within one pause
            for _ in range(5):
                st = p.qmp.cmd('query-status')['status']
                if st != 'paused':
                    swallowed += 1
                    break
                time.sleep(0.002)
            resp = p.qmp.cmd_raw('cont')
            if 'error' in resp:
                refused.append(resp['error']['desc'])
                if p.qmp.cmd('query-status')['status'] != 'running':
                    p.qmp.cmd('cont')
        m = pair.mc()
        print('%d stop/cont rounds over %d checkpoints: statuses seen while '
              'running %s, stops not holding %d, conts refused %d %s' %
              (rounds, m['acked'] - a0, seen, swallowed, len(refused),
               sorted(set(refused))))
        assert m['acked'] - a0 > rounds, 'too few checkpoints to tell'
        assert set(seen) == {'running'}, seen
        assert not swallowed, '%d of %d stops did not hold' % (swallowed,
                                                              rounds)
        assert not refused, '%d of %d conts refused: %s' % (
            len(refused), rounds, sorted(set(refused)))
        assert m['state'] == 'active', m
        # and no checkpoint was taken with a vCPU running
        p.qmp.cmd('stop')
        diff, _ = memory_after_checkpoints(pair, wd, MEM)
        assert not diff, diff
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_steady_state_allocates_nothing():
    """SPEC 3.6: once running, a checkpoint allocates nothing on either
    side (taking, sending, acknowledging; receiving, verifying,
    applying), whoever would (MC, the migration core, device save,
    GLib): the mc statistics count every malloc of those threads."""
    wd = workdir('pipeline-alloc')
    pair = None
    try:
        pair = Pair(None, wd, nics=(), delay=10, app='mc.dirty=16,2000')
        pair.start_mc()
        time.sleep(2)           # the first checkpoints may set things up
        p0, s0 = pair.mc(), pair.mc(pair.standby)
        if 'allocations' not in p0:
            raise Skip('this build cannot count allocations (sanitizer or '
                       'another allocator)')
        time.sleep(RUN_S)
        p1, s1 = pair.mc(), pair.mc(pair.standby)
        n = p1['acked'] - p0['acked']
        print('%d checkpoints: %d allocations on the primary, %d on the '
              'standby; %d dirty-bitmap words read for the last one'
              % (n, p1['allocations'] - p0['allocations'],
                 s1['allocations'] - s0['allocations'],
                 p1['bitmap-words-last']))
        assert n >= 50, (p0, p1)
        assert p1['allocations'] == p0['allocations'], (p0, p1)
        assert s1['allocations'] == s0['allocations'], (s0, s1)
        assert p1['bitmap-words-last'] > 0, p1
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)


def bitmap_words(mem, samples=30):
    """Median of bitmap-words-last over @samples checkpoints of a pair
    whose guest has @mem of RAM and dirties 16 MiB at 2000 pages/s."""
    wd = workdir('pipeline-words')
    pair = None
    try:
        pair = Pair(None, wd, nics=(), delay=10, mem=mem,
                    app='mc.dirty=16,2000')
        pair.start_mc()
        time.sleep(1)
        words = []
        for _ in range(samples):
            words.append(pair.mc()['bitmap-words-last'])
            time.sleep(0.05)
        return sorted(words)[len(words) // 2]
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_bitmap_words_follow_dirty_set():
    """The dirty log is read where it was dirtied: the same dirty set
    costs about the same bitmap words with 8 times the guest RAM (a
    whole-bitmap pass per checkpoint would cost 8 times as many)."""
    small, large = bitmap_words('256M'), bitmap_words('2G')
    print('dirty-bitmap words per checkpoint, same dirty set: %d at '
          '256 MiB, %d at 2 GiB (%.2fx)' % (small, large, large / small))
    assert large < 2 * small, (small, large)
