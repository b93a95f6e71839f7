#!/usr/bin/env python3
"""Run MC's tests with KVM guests, inside the KVM lab VM.

The lab (scripts/build-lab.sh, make lab) is a Linux VM that this host
runs under TCG with AMD SVM and nested paging emulated (-cpu EPYC), so
KVM works inside it.  This script boots it, hands it a job in fw_cfg,
copies its console to a log (and, with -v, to stdout), stops it after a
time limit, and exits with the job's status.  The job is bash run in
/lab, the lab's copy of this tree; by default it runs functional tests
with KVM guests (MC_TEST_ACCEL=kvm):

  lab.py test_consistency test_udp_failover   # run.py patterns, one boot
  lab.py --each --accel kvm,dirty-ring-size=4096 test_udp test_disk
  lab.py --shell 'python3 bench/labbench.py'
  lab.py -i --shell bash                       # a shell inside

Exit status: the job's, 124 after the time limit, 125 when the lab did
not report one, 126 when the lab's own kernel panicked (9 boots of
about 50 so far, a kernel stack overrun under KVM_RUN: most likely TCG's
emulation of SVM; see docs/devel/mc-kvm-lab.rst).  Figures measured inside are nested: compare them with
each other, never with the host's.
"""

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('MC_BUILD_DIR', os.path.join(TOP, 'build'))
QEMU = os.path.join(BUILD, 'qemu', 'qemu-system-x86_64')
LAB = os.path.join(BUILD, 'lab')
LOGS = os.path.join(LAB, 'logs')
EXIT = 'mc-lab: exit '
PANIC = b'Kernel panic - not syncing'
LAB_PANICKED = 126


# In the lab every instruction is emulated: mc-delay 0 and 1 with a disk
# writer leave the guest a record every few seconds, so the tests that
# draw or list delays with a disk writer leave those out here.
LAB_ENV = 'MC_UDP_DISK_DELAYS=10 MC_REL_DELAYS=10,100'
# The lab's files go when it powers off: a failed test's whole log goes
# to the console, and so do the ends of the QEMU logs and guest consoles
# a test kept (reliability.py keeps a failed run's directory).
LAB_FAIL_ENV = 'MC_RUN_FAIL_LINES=400'
LAB_DUMP = '''rc=$?
if [ $rc != 0 ]; then
    for f in /tmp/mc-*/*.log /tmp/mc-*/*.serial; do
        [ -s "$f" ] || continue
        echo "--- end of $f ---"
        tail -n 40 "$f" | cut -c1-300
    done
fi
exit $rc'''


def job_script(args, patterns=None):
    """The bash the lab runs in /lab: --shell's, or run.py on patterns."""
    if args.shell and patterns is None:
        body = args.shell
    else:
        env = 'MC_TEST_ACCEL=%s %s' % (shlex.quote(args.accel), LAB_ENV)
        if args.test_timeout:
            env += ' MC_TEST_TIMEOUT=%d' % args.test_timeout
        body = '%s %s python3 tests/mc/run.py --suite functional %s\n%s' % (
            env, LAB_FAIL_ENV,
            ' '.join(shlex.quote(p) for p in patterns or args.patterns),
            LAB_DUMP)
    extra = ''.join('export %s\n' % shlex.quote(e) for e in args.env)
    return 'set -o pipefail\n%s%s\n' % (extra, body)


def boot_cmd(args, job, qemu):
    kernel = os.path.join(LAB, 'vmlinuz')
    root = os.path.join(LAB, 'lab.cpio')
    for f in (kernel, root):
        if not os.path.exists(f):
            raise SystemExit('lab.py: %s is missing (make lab)' % f)
    # TCG emulates SVM with nested paging on EPYC; without NPT KVM
    # loads but a guest under shadow paging hardly runs.
    return [qemu, '-name', 'mc-lab', '-nodefaults', '-display', 'none',
            '-machine', 'q35', '-accel', 'tcg,thread=multi',
            '-cpu', 'EPYC,fxsr-opt=off,misalignsse=off,osvw=off,topoext=off,'
            'nrip-save=off,xsavec=off', '-smp', str(args.cpus), '-m', args.mem,
            '-kernel', kernel, '-initrd', root,
            '-append', 'console=ttyS0 panic=-1 quiet loglevel=3',
            '-fw_cfg', 'name=opt/mc-lab/job,file=' + job,
            '-serial', 'stdio' if args.interactive else 'file:/dev/stdout',
            '-no-reboot']


def boot(args, name, script):
    """One boot of the lab for @script; its status (see the top)."""
    os.makedirs(LOGS, exist_ok=True)
    log_path = os.path.join(LOGS, name[:80].replace('/', '_') + '.log')
    with tempfile.NamedTemporaryFile('w', suffix='.sh', delete=False) as f:
        f.write(script)
        job = f.name
    # The outer VM runs a private copy of the binary, beside it (where it
    # finds its firmware): a build may replace the original meanwhile.
    if not os.path.exists(QEMU):
        raise SystemExit('lab.py: %s is missing (make build)' % QEMU)
    qemu = '%s.lab-%d' % (QEMU, os.getpid())
    shutil.copy2(QEMU, qemu)
    try:
        cmd = boot_cmd(args, job, qemu)
    except BaseException:
        os.unlink(qemu)
        raise
    if args.interactive:
        try:
            return subprocess.call(cmd)
        finally:
            os.unlink(job)
            os.unlink(qemu)
    rc = None
    panicked = False
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    timer_expired = False
    try:
        with open(log_path, 'wb') as log:
            os.set_blocking(proc.stdout.fileno(), False)
            buf = b''
            while True:
                if time.time() - start > args.timeout:
                    timer_expired = True
                    break
                data = proc.stdout.read(65536)
                if data:
                    log.write(data)
                    log.flush()
                    if args.verbose:
                        sys.stdout.buffer.write(data)
                        sys.stdout.flush()
                    buf = (buf + data)[-4096:]
                    panicked = panicked or PANIC in buf
                    for line in buf.decode(errors='replace').splitlines():
                        if line.startswith(EXIT) and \
                                line[len(EXIT):].strip().isdigit():
                            rc = int(line[len(EXIT):])
                elif proc.poll() is not None:
                    break
                else:
                    time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.unlink(job)
        os.unlink(qemu)
    took = time.time() - start
    if panicked and rc is None:
        print('lab.py: %s: the lab\'s kernel panicked (%.0fs); console in %s'
              % (name, took, log_path))
        return LAB_PANICKED
    if timer_expired:
        print('lab.py: %s: time limit (%ds) reached; console in %s' %
              (name, args.timeout, log_path))
        return 124
    if rc is None:
        print('lab.py: %s: the lab ended without a status (%.0fs); '
              'console in %s' % (name, took, log_path))
        return 125
    print('lab.py: %s: exit %d in %.0fs; console in %s' % (name, rc, took,
                                                             log_path))
    return rc


def boot_again_on_panic(args, name, script):
    """boot(), again (at most --panic-retries times) while the lab's own
    kernel panics, never for anything else; each boot has its own log."""
    rc = boot(args, name, script)
    for i in range(args.panic_retries):
        if rc != LAB_PANICKED:
            break
        print('lab.py: %s: the lab kernel panicked: booting again (%d of '
              '%d)' % (name, i + 1, args.panic_retries), flush=True)
        rc = boot(args, '%s-again%d' % (name, i + 1), script)
    return rc


def each(args):
    """Each functional test matching the patterns in a boot of its own:
    one summary line as run.py prints it."""
    out = subprocess.run([sys.executable, os.path.join(TOP, 'tests', 'mc',
                                                       'run.py'),
                          '--list', '--suite', 'functional'] + args.patterns,
                         capture_output=True, text=True, check=True).stdout
    names = [line.split()[1] for line in out.splitlines() if line.strip()]
    tag = args.accel.replace(',', '-').replace('=', '')
    counts = {'PASS': 0, 'FAIL': 0, 'SKIP': 0}
    for test in names:
        name = '%s-%s' % (tag, test)
        rc = boot_again_on_panic(args, name, job_script(args, [test]))
        verdict = 'FAIL'
        if rc == 0:
            log = os.path.join(LOGS, name + '.log')
            with open(log, errors='replace') as f:
                skipped = '\nSKIP ' in f.read()
            verdict = 'SKIP' if skipped else 'PASS'
        counts[verdict] += 1
        print('%-4s lab %s %s' % (verdict, args.accel, test), flush=True)
    print('%d passed, %d failed, %d skipped' % (
        counts['PASS'], counts['FAIL'], counts['SKIP']))
    return 1 if counts['FAIL'] else 0


def run(args):
    if args.each:
        return each(args)
    name = args.name or ('shell' if args.shell else
                         '-'.join(args.patterns) or 'all')
    return boot_again_on_panic(args, name, job_script(args))


def main():
    # killed: the finally clauses stop the lab and remove its files
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('patterns', nargs='*', help='run.py test patterns')
    ap.add_argument('--shell', help='bash to run in /lab instead')
    ap.add_argument('--name', help='the log is build/lab/logs/NAME.log')
    ap.add_argument('--timeout', type=int, default=1800,
                    help='seconds before the lab is stopped (1800)')
    ap.add_argument('--test-timeout', type=int,
                    help='run.py time limit per test inside')
    ap.add_argument('--env', action='append', default=[],
                    help='VAR=VALUE exported for the job')
    ap.add_argument('--accel', default='kvm',
                    help='MC_TEST_ACCEL for run.py inside (kvm)')
    ap.add_argument('--each', action='store_true',
                    help='each matching test in a boot of its own')
    ap.add_argument('--panic-retries', type=int, default=0,
                    help='boot again this often when the lab kernel '
                    'panicked (0)')
    ap.add_argument('--mem', default='6G')
    ap.add_argument('--cpus', type=int, default=2)
    ap.add_argument('-v', '--verbose', action='store_true',
                    help='copy the console to stdout as well')
    ap.add_argument('-i', '--interactive', action='store_true',
                    help='console on this terminal, no time limit')
    args = ap.parse_args()
    if not args.shell and not args.patterns:
        ap.error('name run.py patterns or --shell')
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
