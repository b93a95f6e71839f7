#!/usr/bin/env python3
"""make check-cluster: every cluster scenario (test_cluster.py) run
--runs times (10), each on a fresh three-node cluster; a table of what
held and the times to each step (median and worst), printed and, with
--table, written for docs/benchmarks.md.  Exits non-zero if any run
failed.

Usage: cluster_runs.py [--runs N] [--table FILE] [SCENARIO...]
"""

import argparse
import io
import os
import statistics
import sys
import time
import traceback
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_cluster         # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--table')
    ap.add_argument('scenarios', nargs='*',
                    default=list(test_cluster.SCENARIOS))
    args = ap.parse_args(argv)
    for s in args.scenarios:
        if s not in test_cluster.SCENARIOS:
            ap.error('no scenario %s (%s)' % (
                s, ', '.join(test_cluster.SCENARIOS)))
    start = time.time()
    rows = []
    failed = 0
    for name in args.scenarios:
        figs, bad = [], []
        for i in range(args.runs):
            out = io.StringIO()
            t = time.time()
            try:
                with redirect_stdout(out):
                    figs.append(test_cluster.run_scenario(name))
                verdict = 'held'
            except BaseException as e:     # noqa: B902 (a test's failure)
                if isinstance(e, KeyboardInterrupt):
                    raise
                bad.append(i + 1)
                verdict = 'FAILED: %s' % (str(e).splitlines() or [repr(e)])[0]
                log = '/tmp/mc-cluster-%s-run%d.log' % (name, i + 1)
                with open(log, 'w') as f:
                    f.write(out.getvalue())
                    f.write(traceback.format_exc())
                verdict += ' (log %s)' % log
            print('%s #%d: %s %.0fs' % (name, i + 1, verdict,
                                        time.time() - t), flush=True)
        failed += len(bad)
        rows.append((name, args.runs, args.runs - len(bad), figs))

    lines = ['| scenario | runs | held | ' + 'median (worst) seconds to '
             'each step |', '|---|---|---|---|']
    for name, runs, held, figs in rows:
        keys = [k for k in (figs[0] if figs else {})]
        cells = []
        for k in keys:
            vals = [f[k] for f in figs if f.get(k) is not None]
            if vals:
                cells.append('%s %.1f (%.1f)' % (k[:-2], statistics.median(
                    vals), max(vals)))
        lines.append('| %s | %d | %d | %s |' % (name, runs, held,
                                                 '; '.join(cells)))
    table = '\n'.join(lines)
    text = ('## Pacemaker cluster (`make check-cluster`)\n\nWritten by `make check-cluster` '
            '(tests/mc/cluster_runs.py); do not edit by hand.  Three '
            'Pacemaker nodes as namespaces on one machine '
            '(tests/mc/mccluster.py), the test guest (TCG) as a promotable '
            'clone of cluster/ocf/mc-domain, corosync token %d ms; every run '
            'on a fresh cluster.  A run holds when every check of its scenario '
            'passed (test_cluster.py): the client\'s TCP stream went on with '
            'no gap, reset or duplicate; the domain was protected again; with '
            'a node cut off, never two nodes ran the guest (sampled every '
            '0.3 s); after libvirtd restarts, nothing changed and no action '
            'failed.  Steps are timed from the fault (protected: from adding '
            'the resource; moved: to the guest running on the target).\n\n'
            'Run on %s, %d host CPUs, %d min in all.\n\n%s\n' % (
                __import__('mccluster').TOKEN_MS,
                time.strftime('%Y-%m-%d'), os.cpu_count(),
                round((time.time() - start) / 60), table))
    print(text)
    if args.table:
        with open(args.table, 'w') as f:
            f.write(text)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
