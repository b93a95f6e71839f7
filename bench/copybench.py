#!/usr/bin/env python3
"""Copy cost: the same dirty set at 512 MiB, 2 GiB and 8 GiB of guest RAM,
copied into staging by 1, 2 and 4 threads.

One pair per RAM size (the Linux test guest, TCG, -machine pc, no NIC,
on the host's loopback), the guest running mc-dirty over DIRTY_MIB MiB
flat out: every checkpoint carries about the same DIRTY_MIB MiB of
pages whatever the RAM size.  In each pair mc-copy-threads is set to
1, 2 and 4 in turn (at run time, same guest, same standby) and
MEASURE_S seconds of checkpoints at mc-delay 100 are taken from the
primary's trace: mc_checkpoint_take (pause, pages),
mc_checkpoint_copy (page bytes copied, threads, copy time) and
mc_checkpoint_cost (dirty-bitmap words read).  Reported per RAM size and
thread count: median pause, median copy time and copy speed (GB/s), the
part of the pause that is not the copy, and the bitmap words.

Standalone: python3 bench/copybench.py [--sizes 512M,2G] [--threads 1,2]
(prints the table, writes docs/bench/copy.csv); make bench runs it
from bench/run.py.
"""

import argparse
import json
import math
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..'))
sys.path.insert(0, os.path.join(TOP, 'tests', 'mc'))
from mcnet import Pair  # noqa: E402
from mcvm import workdir  # noqa: E402

SIZES = ('512M', '2G', '8G')
THREADS = (1, 2, 4)
DIRTY_MIB = int(os.environ.get('MC_COPYBENCH_DIRTY_MIB', '48'))
MEASURE_S = float(os.environ.get('MC_COPYBENCH_MEASURE_S', '6'))
OUT = os.path.join(TOP, 'docs', 'bench')
CSV_HEADER = ('ram,threads,epoch,pages,pause_us,copy_bytes,copy_threads,'
              'copy_us,bitmap_words')


def parse_trace(path):
    """{epoch: [pages, pause_us, copy_bytes, copy_threads, copy_us,
    bitmap_words]}"""
    out = {}

    def entry(e):
        return out.setdefault(e, [None] * 6)

    with open(path) as f:
        for line in f:
            m = re.search(r'mc_checkpoint_cost epoch (\d+) allocations \d+ '
                          r'bitmap words (\d+)', line)
            if m:
                entry(int(m.group(1)))[5] = int(m.group(2))
                continue
            m = re.search(r'mc_checkpoint_copy epoch (\d+) copied (\d+) '
                          r'bytes of pages with (\d+) threads in (\d+) us',
                          line)
            if m:
                entry(int(m.group(1)))[2:5] = [
                    int(m.group(2)), int(m.group(3)), int(m.group(4))]
                continue
            m = re.search(r'mc_checkpoint_take epoch (\d+) pages (\d+) '
                          r'bytes \d+ pause (\d+) us', line)
            if m:
                entry(int(m.group(1)))[:2] = [int(m.group(2)),
                                              int(m.group(3))]
    return {e: v for e, v in out.items() if None not in v}


def run_size(mem, rows, threads_list):
    wd = workdir('copybench-%s' % mem)
    events = os.path.join(wd, 'events')
    trace = os.path.join(wd, 'primary.trace')
    with open(events, 'w') as f:
        f.write('mc_checkpoint_take\nmc_checkpoint_copy\n'
                'mc_checkpoint_cost\n')
    pair = Pair(None, wd, nics=(), net=False, delay=100, mem=mem,
                machine='pc', trace=(events, trace),
                app='mc.dirty=%d' % DIRTY_MIB)
    try:
        # a guest dirtying DIRTY_MIB flat out: precopy converges only if
        # it may stop the guest long enough to send them
        pair.primary.qmp.cmd('migrate-set-parameters', **{
            'downtime-limit': 10000, 'max-bandwidth': 10 << 30})
        pair.start_mc(timeout=600)
        for threads in threads_list:
            pair.primary.qmp.cmd('migrate-set-parameters',
                                 **{'mc-copy-threads': threads})
            time.sleep(1)           # the pool is replaced at the next pause
            first = pair.mc()['checkpoints'] + 2
            time.sleep(MEASURE_S)
            last = pair.mc()['checkpoints']
            got = parse_trace(trace)
            for e in range(first, last + 1):
                if e in got:
                    rows.append((mem, threads, e) + tuple(got[e]))
    finally:
        pair.close()


def med(v):
    return statistics.median(v) if v else float('nan')


def report(rows):
    lines = ['| guest RAM | mc-copy-threads | checkpoints | pages (median) '
             '| pause p50 (ms) | copy p50 (ms) | copy GB/s | pause less '
             'copy (ms) | threads used | bitmap words (median) |',
             '|---|---|---|---|---|---|---|---|---|---|']
    keys = []
    for r in rows:
        if (r[0], r[1]) not in keys:
            keys.append((r[0], r[1]))
    for mem, threads in keys:
        sel = [r for r in rows if r[0] == mem and r[1] == threads]
        pause = med([r[4] for r in sel]) / 1000
        copy = med([r[7] for r in sel]) / 1000
        gbps = med([r[5] / r[7] / 1000 for r in sel if r[7] > 0])
        rest = med([(r[4] - r[7]) for r in sel]) / 1000
        used = sorted(set(r[6] for r in sel))
        words = [r[8] for r in sel if len(r) > 8]
        lines.append('| %s | %d | %d | %d | %.2f | %.2f | %.2f | %.2f | %s '
                     '| %s |' % (mem, threads, len(sel),
                                 med([r[3] for r in sel]), pause, copy, gbps,
                                 rest, ','.join(str(u) for u in used),
                                 '%d' % med(words) if words else 'n/a'))
    return '\n'.join(lines) + '\n'


def notes(rows):
    """Ratios computed from the table: RAM size at one thread, and
    threads against one per RAM size."""
    def copy_med(mem, threads):
        return med([r[7] for r in rows if r[0] == mem and r[1] == threads])

    def pause_med(mem, threads):
        return med([r[4] for r in rows if r[0] == mem and r[1] == threads])

    mems = []
    for r in rows:
        if r[0] not in mems:
            mems.append(r[0])
    out = []
    if len(mems) > 1:
        out.append('Pause with the same dirty set, %s against %s of guest '
                   'RAM (1 thread): %.2fx.' % (
                       mems[-1], mems[0],
                       pause_med(mems[-1], 1) / pause_med(mems[0], 1)))
        words = {m: med([r[8] for r in rows if r[0] == m and len(r) > 8])
                 for m in (mems[0], mems[-1])}
        if not math.isnan(words[mems[0]]):     # a run from before has none
            out.append('Dirty-bitmap words read per checkpoint (harvest, '
                       'page search, dirty estimates), %s against %s: '
                       '%.2fx.' % (mems[-1], mems[0],
                                   words[mems[-1]] / words[mems[0]]))
    for mem in mems:
        ratios = ['%d threads %.2fx' % (t, copy_med(mem, t) / copy_med(mem, 1))
                  for t in sorted(set(r[1] for r in rows if r[0] == mem))
                  if t != 1]
        out.append('Copy time against 1 thread at %s: %s.' % (
            mem, ', '.join(ratios)))
    return '\n'.join(out) + '\n'


def run_all(rows, sizes=SIZES, threads=THREADS):
    """Every RAM size and thread count; rows as in copy.csv."""
    started = time.time()
    for mem in sizes:
        print('-- copy bench, guest RAM %s' % mem, flush=True)
        run_size(mem, rows, list(threads))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, 'copy.json'), 'w') as f:
        json.dump({'date': time.strftime('%Y-%m-%d'),
                   'minutes': round((time.time() - started) / 60, 1),
                   'dirty_mib': DIRTY_MIB, 'measure_s': MEASURE_S,
                   'cpus': os.cpu_count()}, f, indent=1)


def section(rows):
    """The copy table of docs/benchmarks.md."""
    try:
        with open(os.path.join(OUT, 'copy.json')) as f:
            info = json.load(f)
        when = ('measured on %s in %.1f min, %d host CPUs, mc-dirty over '
                '%d MiB flat out, %g s per setting' % (
                    info['date'], info['minutes'], info['cpus'],
                    info['dirty_mib'], info['measure_s']))
    except (OSError, ValueError, KeyError):
        when = 'not measured'
    head = '\n## Copy cost: guest RAM size and copy threads\n\n'
    if not rows:
        return head + 'No figures (%s).\n' % when
    return head + ('`bench/copybench.py`, %s; one pair per RAM size, '
                   '`mc-copy-threads` changed at run time in the same '
                   'pair; medians per checkpoint.\n\n%s\n%s' % (
                       when, report(rows), notes(rows)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', default=','.join(SIZES))
    ap.add_argument('--threads', default=','.join(str(t) for t in THREADS))
    args = ap.parse_args()
    rows = []
    run_all(rows, args.sizes.split(','),
            [int(t) for t in args.threads.split(',')])
    with open(os.path.join(OUT, 'copy.csv'), 'w') as f:
        f.write(CSV_HEADER + '\n')
        for r in rows:
            f.write(','.join(str(x) for x in r) + '\n')
    print(report(rows))


if __name__ == '__main__':
    main()
