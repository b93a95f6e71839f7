"""The KVM lab's smoke (tests/lab/lab.py): MC with KVM guests.

This host cannot run KVM guests, so the lab VM runs under TCG with
nested SVM and runs these tests inside, with KVM guests, in one boot:
the exactly-once UDP check across kill -9 of the primary at mc-delay
100, 10 and 0 (it also fails on any checkpoint that polled the main
loop after its output barrier, the way KVM's register fetch once did),
and the standby's memory against the primary's, page by page.
`make check-lab` runs the whole KVM set.
"""

import os
import subprocess
import sys

from mcvm import ACCEL, Skip, TOP

SMOKE = ['test_udp_failover', 'test_consistency']


def test_lab_smoke():
    if ACCEL != 'tcg':
        raise Skip('already inside the lab')
    lab = os.path.join(TOP, 'build', 'lab', 'lab.cpio')
    if not os.path.exists(lab):
        raise Skip('the lab is not built (make lab)')
    r = subprocess.run([sys.executable,
                        os.path.join(TOP, 'tests', 'lab', 'lab.py'),
                        '--name', 'smoke', '--timeout', '900'] + SMOKE,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    print(r.stdout)
    log = os.path.join(TOP, 'build', 'lab', 'logs', 'smoke.log')
    with open(log, errors='replace') as f:
        lines = [l for l in f.read().splitlines() if not l.startswith('[')]
    print('\n'.join(lines[-60:]))
    assert r.returncode == 0, 'lab smoke: exit %d' % r.returncode
