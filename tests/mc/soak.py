#!/usr/bin/env python3
"""Soak: many checkpoints at mc-delay 0 under AddressSanitizer and
LeakSanitizer (issue 13).

A protected pair runs the QEMU built by `make build-asan`; the guest
dirties memory (mc-dirty in check mode) and serves a numbered TCP stream
to a client through output commit.  Until the primary has taken N
checkpoints, the resident memory (VmRSS) of both QEMU processes is
sampled; then the traffic stops and the held-packet counters must go
back to 0; then MC is cancelled and both QEMUs quit, so that
LeakSanitizer checks their heaps at exit.

Held when: no AddressSanitizer, LeakSanitizer or UBSan report in either
process's output, the stream had no gap, duplicate or reset, the memory
check counted no mismatch, nothing stayed held, and the RSS of each
process outside its big mappings (guest RAM, TCG's translation buffer
and ASan's shadow, which fill as the guest touches new memory and runs
new code: reported, not judged) is flat.  Flat: sampled every half
second, after warm-up (the first tenth of the run), its highest value
in the second half is not above its highest value in the first half by
more than --max-growth KiB (1024: a leak of 10 bytes per checkpoint over
200,000 checkpoints).  The RSS of a QEMU under ASan goes down and up by a
few MiB over times as long as a short run, so a straight line through it
has a slope that means little there; the slope per 10,000 checkpoints
(least squares, after warm-up, with its standard error) is reported.

ASan's quarantine (freed memory kept aside to catch use after free) is
cut to 4 MiB: at its default 256 MiB it would look like growth.

Usage: soak.py [--checkpoints N] [--qemu PATH] [--max-growth KIB]
"""

import argparse
import os
import re
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mcnet import Pair, Topology, problems  # noqa: E402
from mcvm import (BUILD, MISMATCH, Skip, wait_migration,  # noqa: E402
                  workdir)

ASAN_QEMU = os.path.join(BUILD, 'qemu-asan', 'qemu-system-x86_64')
REPORTS = re.compile(r'(?:ERROR: AddressSanitizer|ERROR: LeakSanitizer|'
                     r'runtime error:|SUMMARY: \w+Sanitizer)[^\n]*')


# Mappings this large are guest RAM, TCG's translation buffer or ASan's
# shadow: they fill as the guest touches new memory and runs new code
BIG_MAPPING = 64 << 20


def rss_kib(pid):
    """Resident KiB of @pid: in all, and outside the big mappings (the
    heap, stacks, libraries, the staging buffer)."""
    total = small = 0
    big = False
    with open('/proc/%d/smaps' % pid) as f:
        for line in f:
            if re.match(r'^[0-9a-f]+-[0-9a-f]+ ', line):
                a, b = line.split()[0].split('-')
                big = int(b, 16) - int(a, 16) >= BIG_MAPPING
            elif line.startswith('Rss:'):
                kib = int(line.split()[1])
                total += kib
                small += 0 if big else kib
    return total, small


def slope(points):
    """Least-squares slope of (x, y) points and its standard error."""
    n = len(points)
    if n < 3:
        return 0.0, 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if not sxx:
        return 0.0, 0.0
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in points)
    return b, (resid / (n - 2) / sxx) ** 0.5


def soak(checkpoints, qemu, max_growth, log=sys.stdout):
    """Returns (problems, figures)."""
    if not os.path.exists(qemu):
        raise Skip('%s is not built (make build-asan)' % qemu)
    # whole stacks in leak reports (glib has no frame pointers)
    os.environ['ASAN_OPTIONS'] = ('detect_leaks=1:quarantine_size_mb=4:'
                                  'print_summary=1:fast_unwind_on_malloc=0')
    os.environ['UBSAN_OPTIONS'] = 'print_stacktrace=1'
    topo = Topology()
    wd = workdir('soak')
    pair = client = None
    bad, fig = [], {}
    t0 = time.time()
    try:
        pair = Pair(topo, wd, delay=0, binary=qemu, tcpserv_ms=10,
                    app='mc.dirty=16,20000,steady,check')
        # a small staging ring is wholly touched (RSS warmed up) early
        for vm in (pair.primary, pair.standby):
            vm.qmp.cmd('migrate-set-parameters',
                       **{'mc-max-buffer-size': 16 << 20})
        pair.start_mc(timeout=600)
        client = topo.client(os.path.join(wd, 'tcp'), interval=10)
        pids = {'primary': pair.primary.proc.pid,
                'standby': pair.standby.proc.pid}
        samples = []            # (checkpoints, rss primary, rss standby)
        last_print = 0
        while True:
            n = pair.mc()['checkpoints']
            (p_all, p_small), (s_all, s_small) = (
                rss_kib(pids['primary']), rss_kib(pids['standby']))
            samples.append((n, p_small, s_small, p_all, s_all))
            if n - last_print >= checkpoints // 10:
                print('%7d checkpoints, %4.0f s: RSS primary %d KiB (%d '
                      'outside guest RAM and TCG), standby %d KiB (%d)' % (
                          n, time.time() - t0, samples[-1][3],
                          samples[-1][1], samples[-1][4], samples[-1][2]),
                      file=log, flush=True)
                last_print = n
            if n >= checkpoints:
                break
            if pair.primary.proc.poll() is not None or \
                    pair.standby.proc.poll() is not None:
                bad.append('a QEMU exited during the soak')
                break
            time.sleep(0.5)
        fig['checkpoints'] = samples[-1][0]
        fig['minutes'] = round((time.time() - t0) / 60, 1)
        # after warm-up (the first tenth): the slope is reported; what is
        # judged is the ceiling, since the RSS under ASan goes down and up
        # again by a few MiB (its quarantine, its allocator giving memory
        # back) over times as long as a short run, and a leak raises the
        # highest values while that wobble does not
        late = [s for s in samples if s[0] >= samples[-1][0] / 10]
        first, second = late[:len(late) // 2], late[len(late) // 2:]
        for i, role in ((1, 'primary'), (2, 'standby')):
            b, se = slope([(s[0], s[i]) for s in late])
            fig['slope_%s_kib_per_10k' % role] = round(b * 10000, 1)
            fig['slope_%s_se_kib_per_10k' % role] = round(se * 10000, 1)
            fig['rss_%s_kib' % role] = '%d -> %d (%d..%d)' % (
                samples[0][i], samples[-1][i], min(s[i] for s in late),
                max(s[i] for s in late))
            # in all, for the record (guest RAM and TCG's buffer included)
            fig['slope_all_%s_kib_per_10k' % role] = round(slope(
                [(s[0], s[i + 2]) for s in late])[0] * 10000, 1)
            if not first or not second:
                bad.append('too few RSS samples')
                continue
            growth = max(s[i] for s in second) - max(s[i] for s in first)
            fig['ceiling_%s_kib' % role] = growth
            if growth > max_growth:
                bad.append('%s RSS ceiling rose %d KiB from the first half '
                           'of the run to the second' % (role, growth))
        # traffic stops: nothing may stay held
        evs = client.stop()
        client = None
        if problems(evs):
            bad.append('stream: %s' % problems(evs)[:2])
        fig['records'] = sum(1 for e in evs if e['ev'] == 'srv')
        deadline = time.time() + 10
        while pair.mc()['net-held-packets'] and time.time() < deadline:
            time.sleep(0.1)
        mc = pair.mc()
        fig['held_after'] = mc['net-held-packets']
        if mc['net-held-packets']:
            bad.append('%d packets still held after the traffic stopped'
                       % mc['net-held-packets'])
        mismatch = MISMATCH.findall(pair.primary.serial())
        if mismatch:
            bad.append('memory check: %s' % mismatch[:2])
        # a clean end, so that LeakSanitizer runs in both processes
        pair.primary.qmp.cmd('migrate_cancel')
        wait_migration(pair.primary.qmp, 'cancelled', timeout=60,
                       bad=('failed',))
        for vm in (pair.primary, pair.standby):
            try:
                vm.qmp.cmd_raw('quit')
            except OSError:
                pass
        for vm in (pair.primary, pair.standby):
            try:
                vm.proc.wait(timeout=120)
            except Exception:
                bad.append('%s did not quit' % vm.name)
            out = vm.output()
            reports = REPORTS.findall(out)
            fig['exit_%s' % vm.name] = vm.proc.poll()
            if reports:
                bad.append('%s: %s' % (vm.name, reports[:3]))
                print(out[-6000:], file=log)
    finally:
        if client:
            client.stop()
        if pair:
            for vm in pair.vms.values():
                if vm.proc.poll() is None:
                    os.kill(vm.proc.pid, signal.SIGKILL)
            pair.close()
        topo.close()
        if bad:
            print('kept %s' % wd, file=log)
        else:
            shutil.rmtree(wd, ignore_errors=True)
    return bad, fig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--checkpoints', type=int, default=200000)
    ap.add_argument('--qemu', default=ASAN_QEMU)
    ap.add_argument('--max-growth', type=int, default=1024)
    args = ap.parse_args(argv)
    try:
        bad, fig = soak(args.checkpoints, args.qemu, args.max_growth)
    except Skip as e:
        print('SKIP: %s' % e)
        return 77
    print('soak: %s %s' % ('held' if not bad else 'FAILED',
                           ' '.join('%s=%s' % kv for kv in sorted(fig.items()))))
    for b in bad:
        print('PROBLEM: %s' % b)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
