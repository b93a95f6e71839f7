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
boots of 5 (docs/devel/mc-kvm-lab.rst).  A part that fails is booted
once more (RETRIES, below, says why) and the retry is printed (RETRY);
the smoke fails when the retry fails too.
"""

import os
import subprocess
import sys

from mcvm import ACCEL, BUILD, TOP, Skip

# run.py's time limit for this test (five parts of a few minutes, each
# perhaps twice)
TIMEOUT = 3000

# Why a failed part gets one more boot: in clean-clone runs of make
# check the smoke failed 3 times in 5, each time a different part and
# for the nested lab's own reasons, none of them MC's regressions: the
# lab's kernel panicking again after its own retries, a nested guest too
# slow to fill its dirty ring, a standby's guest that went silent after
# taking over (issue 22's open case, seen over TCP and RDMA), a guest
# not reachable at all after the lab rebooted.  make check-lab has no
# such retry.
RETRIES = 1


PARTS = [(accel, part) for accel in ('kvm', 'kvm,dirty-ring-size=4096')
         for part in ('udp', 'memory')] + [('kvm', 'rdma')]


def run_part(accel, part, retry=False):
    """One boot of the lab for one part of tests/lab/smoke.sh; booted
    again (at most twice) only when the lab's own kernel panicked (9
    boots of about 50 here, most likely TCG's SVM emulation: see
    docs/devel/mc-kvm-lab.rst), which lab.py says."""
    name = 'smoke-%s-%s%s' % (accel.replace(',', '-').replace('=', ''), part,
                              '-retry' if retry else '')
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
    failed, retried = [], []
    for accel, part in PARTS:
        rc = run_part(accel, part)
        for _ in range(RETRIES if rc else 0):
            # The nested lab fails on its own now and then (see RETRIES);
            # a regression fails the fresh boot too.
            print('RETRY lab smoke %s %s: failed (above), once more in a '
                  'fresh boot' % (accel, part))
            retried.append((accel, part))
            rc = run_part(accel, part, retry=True)
            if not rc:
                break
        if rc:
            failed.append((accel, part, rc))
    print('lab smoke: %d parts, retried %s, failed %s' % (
        len(PARTS), retried or 'none', failed or 'none'))
    assert not failed, 'lab smoke failed: %s' % failed
