"""The KVM lab's smoke (tests/lab/lab.py): MC with KVM guests.

This host cannot run KVM guests, so the lab VM runs under TCG with
nested SVM and runs tests/lab/smoke.sh inside, one boot per part: with KVM's
dirty bitmap and with its dirty ring, the exactly-once UDP check across
kill -9 of the primary at mc-delay 100, 10 and 0 (it also fails on any
checkpoint that polled the main loop after its output barrier, as KVM's
register fetch and dirty-ring flush once did), the standby's memory
against the primary's page by page, and kills of the primary under a
disk writer, a TCP stream and mc-dirty's check mode.  `make check-lab`
runs the whole KVM set.
"""

import os
import subprocess
import sys

from mcvm import ACCEL, BUILD, TOP, Skip

# run.py's time limit for this test (six parts of a few minutes)
TIMEOUT = 3000
# lab.py's status when the lab's kernel panicked
LAB_PANICKED = 126


PARTS = [(accel, part) for accel in ('kvm', 'kvm,dirty-ring-size=4096')
         for part in ('udp', 'memory', 'kills')]


def run_part(accel, part):
    """One boot of the lab for one part of tests/lab/smoke.sh.  The lab's
    own kernel panicked in 3 boots of about 25 (most likely TCG's SVM
    emulation: see docs/devel/mc-kvm-lab.rst); then, and only then, the
    part runs again, at most twice, and says so."""
    for attempt in (1, 2, 3):
        name = 'smoke-%s-%s-%d' % (accel.split(',')[0] +
                                   ('-ring' if ',' in accel else ''),
                                   part, attempt)
        r = subprocess.run([sys.executable,
                            os.path.join(TOP, 'tests', 'lab', 'lab.py'),
                            '--name', name, '--timeout', '600',
                            '--shell', 'bash tests/lab/smoke.sh %s %s' %
                            (accel, part)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        print(r.stdout.strip())
        log = os.path.join(BUILD, 'lab', 'logs', name + '.log')
        with open(log, errors='replace') as f:
            lines = [line for line in f.read().splitlines()
                     if not line.startswith('[')]
        if r.returncode:
            print('\n'.join(lines[-40:]))
        if r.returncode != LAB_PANICKED:
            return r.returncode
        print('lab smoke: the lab kernel panicked (%s, %s, attempt %d)' %
              (accel, part, attempt))
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
