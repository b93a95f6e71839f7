"""The short form of the reliability runs (reliability.py): every case
a run or two, each on a fresh pair: kill -9 of the primary (disk writer,
TCP stream, memory check) and of the standby, link partitions shorter
and longer than the heartbeat timeout under each failover policy, and a
kill while the link is cut.  `make check-reliability` runs the long
form (hundreds of runs) and writes docs/reliability.md.

MC_REL_SEED fixes the random choices (the seed is printed either way).
"""

import os
import time

import reliability


def test_reliability_short():
    seed = int(os.environ.get('MC_REL_SEED', int(time.time())))
    assert reliability.main(['--seed', str(seed)]) == 0, \
        'a reliability run failed (seed %d; see the lines above)' % seed
