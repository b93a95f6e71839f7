#!/usr/bin/env python3
"""The MC fork's test runner: every suite, one summary line.

Suites:
  fork       scripts/check-fork (overlay/patch hygiene)
  meson      our unit tests and qtests (meson tests named test-mc-*, mc-*)
  upstream   a regression subset of upstream migration-test, on TCG
  functional tests/mc/test_*.py (Linux guest, real QEMU processes)
  libvirt    libvirt's own unit tests of the areas libvirt/patches touch

Prints "N passed, N failed, N skipped" last; exits non-zero on a failure.
Usage: run.py [--suite NAME]... [--list] [PATTERN...]
MC_TEST_TIMEOUT=SECONDS changes the functional tests' timeout (600).
"""

import argparse
import glob
import importlib
import os
import re
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('MC_BUILD_DIR', os.path.join(TOP, 'build'))
OBJ = os.path.join(BUILD, 'qemu')
LOGS = os.path.join(BUILD, 'test-logs')
# Lines of a failed test's log printed with its verdict; the KVM lab,
# whose logs stay inside it, asks for more (tests/lab/lab.py)
FAIL_LINES = int(os.environ.get('MC_RUN_FAIL_LINES', '25'))
QEMU = os.path.join(OBJ, 'qemu-system-x86_64')

# Upstream migration-test cases kept green on TCG: precopy, postcopy,
# auto-converge, multifd, TLS, cancel, plus the status/capability checks.
UPSTREAM_MIGRATION = [
    ('/x86_64/migration/precopy/tcp/plain', []),
    ('/x86_64/migration/precopy/unix/plain', []),
    ('/x86_64/migration/postcopy/plain', []),
    ('/x86_64/migration/auto_converge', ['-m', 'slow']),
    ('/x86_64/migration/multifd/tcp/uri/plain/none', []),
    ('/x86_64/migration/precopy/tcp/tls/psk/match', []),
    ('/x86_64/migration/precopy/tcp/tls/x509/default-host', []),
    ('/x86_64/migration/cancel/src/after/active', []),
    ('/x86_64/migration/bad_dest', []),
]

class Case:
    def __init__(self, suite, name, argv, timeout, env=None, tap=False,
                 cwd=TOP):
        self.suite, self.name, self.argv = suite, name, argv
        self.timeout, self.env, self.tap = timeout, env or {}, tap
        self.cwd = cwd


def fork_cases():
    return [Case('fork', 'check-fork', ['bash', os.path.join(TOP, 'scripts', 'check-fork')], 120)]


def meson_cases():
    """Our unit tests and qtests: the meson tests named test-mc-* / mc-*."""
    cases = []
    intro = subprocess.run(['meson', 'introspect', '--tests', OBJ],
                           capture_output=True, text=True)
    if intro.returncode:
        return [Case('meson', 'introspect', ['sh', '-c', 'echo "%s"; exit 1' %
                                             intro.stderr.strip()], 10)]
    import json
    for t in json.loads(intro.stdout):
        if not re.search(r'(^|/)(test-mc-|mc-)', t['name']):
            continue
        env = dict(t.get('env') or {})
        # this machine's /dev/kvm is a slow software KVM: run guests on TCG
        env['QTEST_MIGRATION_ACCEL'] = 'tcg'
        cases.append(Case('meson', t['name'], t['cmd'], t.get('timeout') or 300,
                          env=env, tap=t.get('protocol') == 'tap',
                          cwd=t.get('workdir') or OBJ))
    return cases


def upstream_cases():
    binary = os.path.join(OBJ, 'tests', 'qtest', 'migration-test')
    env = {'QTEST_QEMU_BINARY': QEMU,
           'QTEST_QEMU_IMG': os.path.join(OBJ, 'qemu-img'),
           'QTEST_MIGRATION_ACCEL': 'tcg'}
    # --full: the upstream harness passes it only when KVM is usable, and
    # gates most cases on it; they run fine on TCG.
    return [Case('upstream', 'migration-test' + p.replace('/x86_64/migration', ''),
                 [binary, '--tap', '-k', '--full', '-p', p] + extra, 300,
                 env=env, tap=True)
            for p, extra in UPSTREAM_MIGRATION]


# libvirt's unit tests that cover what libvirt/patches changes (monitor
# parsing, migration parameters, status XML, virsh's command tables, the
# exported symbols and driver tables our API and event add to).
LIBVIRT_OBJ = os.path.join(BUILD, 'libvirt')
LIBVIRT_TESTS = ['qemumonitorjsontest', 'qemumigparamstest',
                 'qemustatusxml2xmltest', 'virsh-self-test',
                 'check-symfile', 'check-symsorting', 'check-drivername']


def libvirt_cases():
    if not os.path.exists(os.path.join(LIBVIRT_OBJ, 'build.ninja')):
        return [Case('libvirt', 'build', ['sh', '-c',
                     'echo "libvirt is not built (make libvirt)"; exit 1'], 10)]
    return [Case('libvirt', t, ['meson', 'test', '-C', LIBVIRT_OBJ,
                                '--no-rebuild', '--print-errorlogs', t], 600)
            for t in LIBVIRT_TESTS]


def functional_cases():
    # MC_TEST_TIMEOUT: seconds per test instead of 600 (long runs such as
    # make check-disk-long)
    timeout = int(os.environ.get('MC_TEST_TIMEOUT', '600'))
    cases = []
    for path in sorted(glob.glob(os.path.join(HERE, 'test_*.py'))):
        mod = os.path.basename(path)[:-3]
        with open(path) as f:
            text = f.read()
        funcs = re.findall(r'^def (test_\w+)\(', text, re.M)
        # a module may need longer: TIMEOUT = SECONDS in it
        own = re.search(r'^TIMEOUT = (\d+)', text, re.M)
        for fn in funcs:
            cases.append(Case('functional', '%s.%s' % (mod, fn),
                              [sys.executable, __file__, '--one', '%s:%s' % (mod, fn)],
                              max(timeout, int(own.group(1)) if own else 0)))
    return cases


def run_one(spec):
    """Child mode: run one Python test function; exit 0 pass, 77 skip."""
    sys.path.insert(0, HERE)
    mod, fn = spec.split(':')
    from mcvm import Skip
    try:
        getattr(importlib.import_module(mod), fn)()
    except Skip as e:
        print('SKIP: %s' % e)
        return 77
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def parse_tap(out):
    """(passed, failed, skipped, skip reasons) from TAP output."""
    p = f = s = 0
    reasons = []
    for line in out.splitlines():
        m = re.match(r'^(not ok|ok)\b(.*)$', line)
        if not m:
            continue
        if '# SKIP' in m.group(2):
            s += 1
            reasons.append(m.group(2).split('# SKIP', 1)[1].strip())
        elif m.group(1) == 'ok':
            p += 1
        else:
            f += 1
    return p, f, s, reasons


def run_case(c):
    """Run @c: (its output, its exit code; -1 on a timeout)."""
    try:
        r = subprocess.run(c.argv, env=dict(os.environ, **c.env),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors='replace', timeout=c.timeout,
                           stdin=subprocess.DEVNULL, cwd=c.cwd)
        return r.stdout, r.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b'')
        out = out.decode(errors='replace') if isinstance(out, bytes) else out
        return out + '\nTIMEOUT after %ds\n' % c.timeout, -1


def rerun_after_guest_reset(out, trace):
    """In the KVM lab a KVM guest dies now and then with or without MC
    (seen under plain `info registers` polling too): a triple fault and
    a reset (a second boot on its console, or QMP's RESET), or a loop of
    page faults on its kernel's code; the lab's own kernel dies of the
    same page faults.  A test that failed where that happened is run
    once more there; why is returned (None: no rerun).  Never outside
    the lab (MC_TEST_ACCEL kvm...), never twice."""
    from mcvm import GUEST_RESET_MARK, kvm_guest_died
    if not os.environ.get('MC_TEST_ACCEL', '').startswith('kvm'):
        return None
    if GUEST_RESET_MARK in out:
        return 'a guest booted again'
    return kvm_guest_died(trace)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--suite', action='append')
    ap.add_argument('--list', action='store_true')
    ap.add_argument('--one')
    ap.add_argument('patterns', nargs='*')
    a = ap.parse_args()
    if a.one:
        return run_one(a.one)

    suites = {'fork': fork_cases, 'meson': meson_cases,
              'upstream': upstream_cases, 'libvirt': libvirt_cases,
              'functional': functional_cases}
    chosen = a.suite or list(suites)
    cases = [c for s in chosen for c in suites[s]()]
    if a.patterns:
        cases = [c for c in cases if any(p in c.name for p in a.patterns)]
    if a.list:
        for c in cases:
            print('%s %s' % (c.suite, c.name))
        return 0

    from mcvm import kvm_trace, kvm_trace_start
    os.makedirs(LOGS, exist_ok=True)
    passed = failed = skipped = reruns = 0
    failures = []
    t_all = time.time()
    for c in cases:
        log = os.path.join(LOGS, re.sub(r'[^\w.-]+', '_', c.suite + '-' + c.name) + '.log')
        t0 = time.time()
        tracing = kvm_trace_start()
        out, rc = run_case(c)
        why = rc not in (0, 77) and rerun_after_guest_reset(
            out, kvm_trace() if tracing else [])
        if why:
            # the failed run's log is kept beside the rerun's
            with open(log + '.before-rerun', 'w') as f:
                f.write(out)
            print('RERUN %-10s %-55s: %s (nested KVM, seen without MC '
                  'too); log in %s.before-rerun' % (
                      c.suite, c.name, why, log), flush=True)
            reruns += 1
            kvm_trace_start()
            out, rc = run_case(c)
        with open(log, 'w') as f:
            f.write(out)
        dt = time.time() - t0
        reason = ''
        if c.tap:
            p, fl, s, reasons = parse_tap(out)
            if rc != 0 and fl == 0:
                fl = 1
            if p + fl + s == 0:
                fl = 1
                reason = 'ran no test'
            if fl:
                verdict = 'FAIL'
            elif s and not p:
                verdict, reason = 'SKIP', '; '.join(reasons)
            else:
                verdict = 'PASS'
        else:
            verdict = {0: 'PASS', 77: 'SKIP'}.get(rc, 'FAIL')
            if verdict == 'SKIP':
                m = re.search(r'^SKIP: (.*)$', out, re.M)
                reason = m.group(1) if m else ''
        if verdict == 'PASS':
            passed += 1
        elif verdict == 'SKIP':
            skipped += 1
        else:
            failed += 1
            failures.append((c, log, out))
        print('%-4s %-10s %-55s %6.1fs %s' % (verdict, c.suite, c.name, dt,
                                              reason), flush=True)
        if verdict == 'FAIL':
            print('     --- last lines of %s ---' % log)
            for line in out.splitlines()[-FAIL_LINES:]:
                print('     ' + line)
    print('total time %.0fs; logs in %s' % (time.time() - t_all, LOGS))
    print('%d passed, %d failed, %d skipped%s' % (
        passed, failed, skipped,
        ', %d rerun after a guest died' % reruns if reruns else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
