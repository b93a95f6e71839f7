#!/usr/bin/env python3
"""Checkpoint-mode migration: a guest precopy cannot converge, moved by
each way QEMU has.

The test guest (256 MiB, TCG) rewrites WSS_MIB of its memory at
DIRTY_PPS pages/s (guest/mc-dirty: about 80 MB/s), six times what the
link between the two QEMUs carries (a veth between two namespaces
shaped by tbf to LINK, 12.5 MB/s; max-bandwidth alone would not bind
MC's checkpoints).  It is moved once by each of:
  - precopy: a plain migration (downtime-limit 300 ms), given up with
    migrate_cancel after LIMIT_S;
  - auto-converge: precopy with the auto-converge capability (QEMU's
    vCPU throttle, up to 99 %);
  - postcopy: postcopy-ram, migrate-start-postcopy once the first pass
    is done;
  - MC + switchover: a migration with the mc capability (mc-delay 100,
    defaults otherwise), which begins MC once a full pass is done and
    the remainder fits a quarter of the staging buffer (mc-primary.c,
    mc_precopy_may_end), then mc-switchover as soon as MC runs.
For each: the time from the command to the source's "completed", the
downtime the source reports (query-migrate; for MC the stop that
began it plus the switchover's), and the guest's work
during the move: pages it dirtied per second from the command to the
first report after completion (on the destination), against its rate
before the command.

Standalone: python3 bench/cpmbench.py [--repeat N] (prints the table,
writes docs/bench/migration-modes.md, which bench/run.py's report
includes).  Figures of one machine, same run; TCG.
"""

import argparse
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..'))
sys.path.insert(0, os.path.join(TOP, 'tests', 'mc'))
from mcnet import Pair, Topology  # noqa: E402
from mcvm import QMPError, wait_migration, workdir  # noqa: E402

LINK = '100mbit'
WSS_MIB = 24
DIRTY_PPS = 20000
LIMIT_S = 60
TIMEOUT_S = 300
MODES = ('precopy', 'auto-converge', 'postcopy', 'mc')
NAMES = {'precopy': 'precopy (given up after %d s)' % LIMIT_S,
         'auto-converge': 'precopy + auto-converge',
         'postcopy': 'postcopy',
         'mc': 'MC + mc-switchover'}
OUT = os.path.join(TOP, 'docs', 'bench', 'migration-modes.md')
REPORT = re.compile(r'mc-dirty: t=\d+ pages=(\d+) rate=\d+')


def next_report(vm, timeout=30):
    """Wait for a new report on @vm: (pages, the host time seen)."""
    before = len(REPORT.findall(vm.serial()))
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = REPORT.findall(vm.serial())
        if len(found) > before:
            return int(found[-1]), time.time()
        time.sleep(0.02)
    raise TimeoutError('%s: the guest reports no more work' % vm.name)


def status(vm):
    return vm.qmp.cmd('query-migrate')


def wait_status(vm, want, timeout, bad=('failed', 'cancelled')):
    """mcvm.wait_migration polling every 5 ms: True once @want, False
    after @timeout seconds."""
    try:
        wait_migration(vm.qmp, want, timeout=timeout, bad=bad,
                       interval=0.005)
    except TimeoutError:
        return False
    return True


def one(mode):
    """Move the guest once by @mode: a dict of figures."""
    topo = Topology(link=LINK)
    wd = workdir('cpmbench')
    pair = None
    try:
        pair = Pair(topo, wd, delay=100, mc=mode == 'mc',
                    app='mc.dirty=%d,%d,steady' % (WSS_MIB, DIRTY_PPS))
        src, dst = pair.primary, pair.standby
        p0, t0 = next_report(src)
        for _ in range(3):
            p1, t1 = next_report(src)
        base = (p1 - p0) / (t1 - t0)
        if mode == 'auto-converge':
            src.qmp.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'auto-converge', 'state': True}])
        if mode == 'postcopy':
            for vm in (src, dst):
                vm.qmp.cmd('migrate-set-capabilities', capabilities=[
                    {'capability': 'postcopy-ram', 'state': True}])
        p0, t0 = p1, time.time()
        src.qmp.cmd('migrate', uri=pair.uri())
        extra = ''
        entry_ms = 0
        if mode == 'postcopy':
            # the first pass is done: the rest comes on demand
            deadline = time.time() + TIMEOUT_S
            while status(src).get('ram', {}).get('dirty-sync-count', 0) < 2:
                if time.time() > deadline:
                    raise TimeoutError('no first pass')
                time.sleep(0.05)
            src.qmp.cmd('migrate-start-postcopy')
        if mode == 'mc':
            # the stop that began MC (the remainder of precopy sent):
            # query-migrate says it only once the migration completed,
            # so the run state is sampled instead (every few ms)
            deadline = time.time() + TIMEOUT_S
            t_prev = time.time()
            stopped = 0.0
            while status(src).get('status') != 'mc':
                if time.time() > deadline:
                    raise TimeoutError('MC did not begin')
                running = src.qmp.cmd('query-status')['running']
                now = time.time()
                if not running:
                    stopped += now - t_prev
                t_prev = now
            entry_ms = round(stopped * 1000)
            extra = 'MC after %.1f s, its first stop %d ms' % (
                time.time() - t0, entry_ms)
            # at once, once the standby may take it (a checkpoint acked)
            deadline = time.time() + TIMEOUT_S
            while True:
                try:
                    src.qmp.cmd('mc-switchover')
                    break
                except QMPError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.01)
        done = wait_status(src, 'completed',
                           LIMIT_S if mode == 'precopy' else TIMEOUT_S)
        took = time.time() - t0
        info = status(src)
        if not done:
            src.qmp.cmd('migrate_cancel')
            wait_status(src, 'cancelled', 60, bad=('failed',))
            p1, t1 = next_report(src)
        else:
            p1, t1 = next_report(dst, timeout=60)
        return {'done': done, 'total_s': took,
                'downtime_ms': entry_ms + info.get('downtime', 0)
                if done else None,
                'work_pct': 100.0 * (p1 - p0) / (t1 - t0) / base,
                'base_pps': base, 'note': extra,
                'syncs': info.get('ram', {}).get('dirty-sync-count')}
    finally:
        if pair:
            pair.close()
        topo.close()


def cell(rows, key, fmt):
    vals = [r[key] for r in rows if r[key] is not None]
    if not vals:
        return 'n/a'
    s = fmt % statistics.median(vals)
    if len(vals) > 1:
        s += ' (%s..%s)' % (fmt % min(vals), fmt % max(vals))
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeat', type=int, default=1)
    ap.add_argument('--modes', default=','.join(MODES))
    ap.add_argument('--no-write', action='store_true',
                    help='print only (a trial run)')
    args = ap.parse_args()
    lines = ['| how | completed | to completed, s | downtime, ms | '
             'guest work during the move, % of before | notes |',
             '|---|---|---|---|---|---|']
    everything = []
    for mode in args.modes.split(','):
        rows = [one(mode) for _ in range(args.repeat)]
        everything += rows
        for r in rows:
            print('%s: %s' % (mode, r), flush=True)
        lines.append('| %s | %d of %d | %s | %s | %s | %s |' % (
            NAMES[mode], sum(r['done'] for r in rows), len(rows),
            cell([r for r in rows if r['done']], 'total_s', '%.1f'),
            cell(rows, 'downtime_ms', '%.0f'),
            cell(rows, 'work_pct', '%.0f'),
            '; '.join(r['note'] for r in rows if r['note'])))
    table = '\n'.join(lines)
    print(table)
    if args.no_write:
        return
    with open(OUT, 'w') as f:
        f.write('## Checkpoint-mode migration (`bench/cpmbench.py`)\n\n'
                'The test guest (256 MiB, TCG) rewriting %d MiB at %d '
                'pages/s (about %d MB/s) over a link shaped to %s (tbf on '
                'a veth between two namespaces): precopy cannot converge. '
                'Moved once per row by each method, %d time(s), medians '
                '(min..max). "To completed": from the command to the '
                'source\'s completed state (for MC: the migration, MC '
                'until mc-switchover, and the switchover). Downtime: '
                'query-migrate on the source; for MC the stop that began MC (its '
                'run state sampled every few ms) plus '
                'the switchover\'s (each checkpoint\'s pause in between is '
                'not counted). Guest work: the pages the '
                'guest dirtied per second from the command until its '
                'first report after completion (on the destination), '
                'against its rate before the command (about %d pages/s '
                'here; TCG). Written by bench/cpmbench.py; do not edit '
                'by hand.\n\n%s\n'
                % (WSS_MIB, DIRTY_PPS, DIRTY_PPS * 4096 // 1000000, LINK,
                   args.repeat,
                   statistics.median(r['base_pps'] for r in everything), table))


if __name__ == '__main__':
    main()
