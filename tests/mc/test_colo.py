"""Upstream COLO keeps working, on TCG too (SPEC 3.7; the benchmark peer).

Regression test for patches/colo-hold-bql-for-ram-save.patch: without
it the COLO primary deadlocks under TCG within the first checkpoints
(the RAM save's dirty-log sync calls run_on_cpu(), which needs the BQL
the checkpoint transaction had dropped).  COLO must reach its state,
keep checkpointing, and the secondary must take over when the primary
dies.
"""

import re
import shutil
import signal
import time

from colo import ColoPair
from mcvm import workdir


def ticks(vm):
    t = re.findall(r'mc-guest: tick (\d+)', vm.serial())
    return int(t[-1]) if t else 0


def test_colo_checkpoints_and_failover():
    wd = workdir('colo')
    pair = ColoPair(wd, delay_ms=200)
    try:
        pair.start()
        n0 = pair.checkpoints()
        time.sleep(4)
        n1 = pair.checkpoints()
        st = pair.primary.qmp.cmd('query-migrate')['status']
        print('COLO: %d checkpoints in 4 s, status %s' % (n1 - n0, st))
        assert st == 'colo', st
        assert n1 - n0 >= 5, (n0, n1)      # 200 ms apart: ~20 if healthy
        pair.primary.kill(signal.SIGKILL)
        pair.secondary.qmp.cmd('x-colo-lost-heartbeat')
        ev = pair.secondary.qmp.wait_event('COLO_EXIT', timeout=30)
        assert ev['data']['mode'] == 'secondary', ev
        before = ticks(pair.secondary)
        deadline = time.time() + 20
        while ticks(pair.secondary) < before + 2 and time.time() < deadline:
            time.sleep(0.2)
        assert pair.secondary.qmp.cmd('query-status')['status'] == 'running'
        assert ticks(pair.secondary) >= before + 2, pair.secondary.serial()[-300:]
    finally:
        pair.close()
    shutil.rmtree(wd, ignore_errors=True)
