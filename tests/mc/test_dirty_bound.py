"""KVM's dirty ring bounds a checkpoint: a guest that dirties faster than
the staging buffer takes stays protected, its vCPU waiting at the bound.

Runs only with KVM's dirty ring (MC_TEST_ACCEL=kvm,dirty-ring-size=N, in
the lab: tests/lab).  The guest dirties 128 MiB flat out against a
32 MiB mc-max-buffer-size at mc-delay 4000: without a bound each epoch
would dirty several times the buffer.  The epoch is long because the
nested lab's guest dirties slowly and unevenly: in one clean-clone run
it dirtied under 4,600 pages a second, less than a ring, so at
mc-delay 1000 no ring ever filled and the bound was never reached.  With a ring of 4096 pages the
primary's bound (three quarters of the buffer, about 6,100 pages) is
below two rings, so no reap is allowed while the guest runs: the dirty
set the epoch's polls see stays empty, and only the bound keeps the
checkpoints within the buffer.  Checked: MC still runs after the burst,
no MC_FAILOVER; the vCPU waited at the bound and checkpoints were taken
for it; no checkpoint held more pages than the bound; the guest made
progress; and with the guest paused, the standby's memory equals the
primary's.  Teeth: with mc_dirty_bound_may_reap() letting the vCPU reap
its own ring, MC ended with checkpoint-too-large (see the note of the
KVM issue).
"""

import shutil

from mcvm import ACCEL, Skip, workdir
from test_consistency import memory_after_checkpoints
from test_throttle import RUN_S, assert_guest_ran, fast_writer_run

MEM = 256 << 20
BUFFER = 32 << 20
# ms; an epoch in which even a slow guest fills its ring
DELAY = 4000


def test_dirty_ring_bounds_checkpoints():
    if 'dirty-ring-size' not in ACCEL:
        raise Skip('needs KVM with its dirty ring (the lab: tests/lab)')
    wd = workdir('dirtybound')
    pair = None
    try:
        # in the lab a nested guest sometimes dirtied almost nothing for
        # its first seconds of MC (2 pages a checkpoint): give it time
        pair, m0, m1, status, names, serial0 = fast_writer_run(
            wd, DELAY, BUFFER,
            until=lambda m0, m: (m['dirty-bound-checkpoints'] >
                                m0['dirty-bound-checkpoints']), max_s=60)
        print('status %s; bound %d pages; %d checkpoints acked in %d s or '
              'more, %d for the bound, vCPU waited %d times; pages per '
              'checkpoint at most %d; staging used up to %d of %d bytes; '
              'pause max %d '
              'us; throttle at most %d%%; events %s'
              % (status, m1['dirty-bound-pages'], m1['acked'] - m0['acked'],
                 RUN_S, m1['dirty-bound-checkpoints'],
                 m1['dirty-bound-stalls'], m1['dirty-pages-max'],
                 m1['staging-high-water'], m1['staging-size'],
                 m1['pause-max-us'], m1['throttle-max-percentage'],
                 sorted(set(names)) or 'none'))
        assert status == 'mc', pair.primary.qmp.cmd('query-migrate')
        assert 'MC_FAILOVER' not in names, names
        # first: whether the guest dirtied at all explains a bound unmet
        assert_guest_ran(pair, serial0)
        assert m1['dirty-bound-pages'] > 0, m1
        assert m1['dirty-bound-stalls'] > m0['dirty-bound-stalls'], m1
        assert m1['dirty-bound-checkpoints'] > \
            m0['dirty-bound-checkpoints'], m1
        assert m1['dirty-pages-max'] <= m1['dirty-bound-pages'], m1

        pair.primary.qmp.cmd('stop')
        pair.primary.qmp.cmd('migrate-set-parameters', **{'mc-delay': 10})
        diff, _ = memory_after_checkpoints(pair, wd, MEM)
        assert not diff, diff
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)
