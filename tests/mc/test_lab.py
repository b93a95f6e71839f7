"""The KVM lab's smoke (tests/lab/lab.py): MC with KVM guests.

This host cannot run KVM guests, so the lab VM runs under TCG with
nested SVM and runs tests/lab/smoke.sh inside, one boot per part: with KVM's
dirty bitmap and with its dirty ring, the exactly-once UDP check across
kill -9 of the primary at mc-delay 100, 10 and 0 (it also fails on any
checkpoint that polled the main loop after its output barrier, as KVM's
register fetch and dirty-ring flush once did), and the standby's memory
against the primary's page by page; and MC over soft-RoCE (test_rdma's
memory check and kill of the primary, with KVM's bitmap).  The kills under a disk writer, a
TCP stream and mc-dirty's check mode (smoke.sh's "kills") are left to
`make check-lab`: in the lab they brought its own kernel down in 3
boots of 5 (docs/devel/mc-kvm-lab.rst).
"""

import os
import subprocess
import sys

from mcvm import ACCEL, BUILD, TOP, Skip

# run.py's time limit for this test (four parts of a few minutes)
TIMEOUT = 3000


PARTS = [(accel, part) for accel in ('kvm', 'kvm,dirty-ring-size=4096')
         for part in ('udp', 'memory')] + [('kvm', 'rdma')]


def run_part(accel, part):
    """One boot of the lab for one part of tests/lab/smoke.sh; booted
    again (at most twice) only when the lab's own kernel panicked (9
    boots of about 50 here, most likely TCG's SVM emulation: see
    docs/devel/mc-kvm-lab.rst), which lab.py says."""
    name = 'smoke-%s-%s' % (accel.replace(',', '-').replace('=', ''), part)
    r = subprocess.run([sys.executable,
                        os.path.join(TOP, 'tests', 'lab', 'lab.py'),
                        '--name', name, '--timeout', '600',
                        '--panic-retries', '2',
                        '--shell', 'bash tests/lab/smoke.sh %s %s' %
                        (accel, part)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    print(r.stdout.strip())
    if r.returncode:
        logs = os.path.join(BUILD, 'lab', 'logs')
        last = max((os.path.join(logs, f) for f in os.listdir(logs)
                    if f.startswith(name)), key=os.path.getmtime)
        with open(last, errors='replace') as f:
            lines = [line for line in f.read().splitlines()
                     if not line.startswith('[')]
        print('\n'.join(lines[-40:]))
    return r.returncode


def test_lab_smoke():
    if ACCEL != 'tcg':
        raise Skip('already inside the lab')
    lab = os.path.join(BUILD, 'lab', 'lab.cpio')
    if not os.path.exists(lab):
        raise Skip('the lab is not built (make lab)')
    failed = [(accel, part, rc) for accel, part in PARTS
              for rc in [run_part(accel, part)] if rc]
    assert not failed, 'lab smoke failed: %s' % failed
