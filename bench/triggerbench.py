#!/usr/bin/env python3
"""Checkpoints triggered by held output (mc-output-latency) within the
pause budget (mc-pause-budget), against fixed intervals; one pair, one
run, so the ratios compare like with like.

1. Latency against offered load: an open-loop client sends requests at
   100, 1,000 and 5,000 a second (tests/mc/netclient.py load) at the
   defaults and at fixed mc-delay 100, 10 and 1 (mc-output-latency 0):
   extra round trip p50/p99 over no MC, checkpoints/s, pause share.
2. Phases at the defaults, without a pause between them: idle,
   request/response (200/s), bulk TCP, mixed (bulk with requests
   beside it): the checkpoint rate and the pause share sampled every
   200 ms, to show whether the epoch oscillates (the spread of the
   samples within a phase) and whether the budget holds.

With --sweep instead: the defaults chosen by measurement, the echo
(closed loop, a request 5 ms after each answer, deterministic and
guest-clock replies) and a bulk transfer at each mc-output-latency of
SWEEP_LATENCIES (budget 10) and each mc-pause-budget of SWEEP_BUDGETS
(latency 200), against no MC.

Prints tables; --json FILE writes the raw rows.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests', 'mc'))
from mcnet import Pair, Topology  # noqa: E402
from mcvm import workdir  # noqa: E402
from netbench import client, mc_counts, mc_rates, pct  # noqa: E402

RATES = (100, 1000, 5000)
LOAD_S = 4
DEFAULTS = {'mc-delay': 100, 'mc-output-latency': 100,
            'mc-pause-budget': 10}
CONFIGS = (('MC defaults', DEFAULTS),
           ('MC mc-delay 100', {'mc-delay': 100, 'mc-output-latency': 0}),
           ('MC mc-delay 10', {'mc-delay': 10, 'mc-output-latency': 0}),
           ('MC mc-delay 1', {'mc-delay': 1, 'mc-output-latency': 0}))
PHASE_S = 5
SWEEP_LATENCIES = (1, 50, 100, 200, 500, 1000)
SWEEP_BUDGETS = (5, 10, 20, 30)


def offered_load(topo, pair):
    rows = []
    for label, params in [('no MC', None)] + list(CONFIGS):
        if params:
            pair.primary.qmp.cmd('migrate-set-parameters', **params)
        for rate in RATES:
            c0 = mc_counts(pair) if params else None
            got = client(topo, 'load', '--rate', str(rate), '--seconds',
                         str(LOAD_S))
            row = {'config': label, 'rate': rate,
                   'p50_ms': pct(got['rtts'], 50) * 1000,
                   'p99_ms': pct(got['rtts'], 99) * 1000,
                   'unanswered': got['unanswered']}
            if params:
                row.update(mc_rates(c0, mc_counts(pair)))
            rows.append(row)
            print('%-16s %5d req/s: p50 %7.2f ms p99 %7.2f ms%s' % (
                label, rate, row['p50_ms'], row['p99_ms'],
                '; %.0f checkpoints/s (%.0f%% output), paused %.1f%%, CPU '
                'primary %.0f%% standby %.0f%%' % (
                    row['checkpoints_per_s'], 100 * row['output_share'],
                    row['pause_pct'], row['cpu_primary_pct'],
                    row['cpu_standby_pct']) if params else ''), flush=True)
        if not params:
            pair.start_mc()
    base = {r['rate']: r for r in rows if r['config'] == 'no MC'}
    for r in rows:
        r['extra_p50_ms'] = r['p50_ms'] - base[r['rate']]['p50_ms']
        r['extra_p99_ms'] = r['p99_ms'] - base[r['rate']]['p99_ms']
    return rows


def phases(topo, pair):
    """Phases back to back at the defaults, sampled every 200 ms."""
    pair.primary.qmp.cmd('migrate-set-parameters', **DEFAULTS)
    samples = []
    stop = threading.Event()
    phase = ['idle']

    def sampler():
        last = mc_counts(pair)
        while not stop.wait(0.2):
            now = mc_counts(pair)
            samples.append(dict(mc_rates(last, now), phase=phase[0]))
            last = now

    def run_phase(name, work):
        phase[0] = name
        t0 = time.time()
        work()
        left = PHASE_S - (time.time() - t0)
        if left > 0:
            time.sleep(left)

    def rr():
        client(topo, 'load', '--rate', '200', '--seconds', str(PHASE_S))

    def bulk():
        client(topo, 'bulk', '--bytes', str(48 << 20), '--timeout', '120')

    def mixed():
        t = threading.Thread(target=rr)
        t.start()
        bulk()
        t.join()

    th = threading.Thread(target=sampler)
    th.start()
    try:
        for name, work in (('idle', lambda: None), ('request/response', rr),
                           ('bulk TCP', bulk), ('mixed', mixed),
                           ('idle again', lambda: None)):
            run_phase(name, work)
    finally:
        stop.set()
        th.join()
    rows = []
    for name in dict.fromkeys(s['phase'] for s in samples):
        ss = [s for s in samples if s['phase'] == name][1:]   # settle
        if len(ss) < 2:
            continue
        cps = [s['checkpoints_per_s'] for s in ss]
        row = {'phase': name, 'samples': len(ss),
               'checkpoints_per_s': statistics.mean(cps),
               'cps_stdev': statistics.stdev(cps),
               'pause_pct_mean': statistics.mean(s['pause_pct'] for s in ss),
               'pause_pct_max': max(s['pause_pct'] for s in ss),
               'output_share': statistics.mean(s['output_share']
                                               for s in ss)}
        rows.append(row)
        print('%-17s %3d samples: %6.0f checkpoints/s (stdev %5.0f), '
              '%3.0f%% output-triggered, paused %4.1f%% (max %4.1f%% in '
              '200 ms)' % (name, row['samples'], row['checkpoints_per_s'],
                           row['cps_stdev'], 100 * row['output_share'],
                           row['pause_pct_mean'], row['pause_pct_max']),
              flush=True)
    return rows


def echo_and_bulk(topo, label, pair=None):
    c0 = mc_counts(pair) if pair else None
    det = client(topo, 'rtt', '--count', '200', '--interval', '5')
    nd = client(topo, 'rtt', '--count', '200', '--interval', '5',
                '--nondet')
    c1 = mc_counts(pair) if pair else None
    bulk = client(topo, 'bulk', '--bytes', str(32 << 20), '--timeout',
                  '120')
    c2 = mc_counts(pair) if pair else None
    row = {'config': label, 'p50_ms': pct(det, 50) * 1000,
           'p99_ms': pct(det, 99) * 1000, 'nd_p50_ms': pct(nd, 50) * 1000,
           'nd_p99_ms': pct(nd, 99) * 1000,
           'MBps': bulk['bytes'] / bulk['seconds'] / 1e6}
    if pair:
        row['echo'] = mc_rates(c0, c1)
        row['bulk'] = mc_rates(c1, c2)
    return row


def sweep(pairs=None):
    """@pairs: (latency, budget) to measure instead of the sweep."""
    wd = workdir('triggersweep')
    topo = Topology()
    pair = None
    rows = []
    try:
        pair = Pair(topo, wd, delay=100, tcpserv_ms=0)
        base = echo_and_bulk(topo, 'no MC')
        pair.start_mc()
        configs = [('latency %d us' % lat, {'mc-output-latency': lat,
                                            'mc-pause-budget': 10})
                   for lat in SWEEP_LATENCIES]
        configs += [('budget %d %%' % b, {'mc-output-latency': 200,
                                          'mc-pause-budget': b})
                    for b in SWEEP_BUDGETS]
        if pairs:
            configs = [('latency %d us, budget %d %%' % (lat, b),
                        {'mc-output-latency': lat, 'mc-pause-budget': b})
                       for lat, b in pairs]
        configs += [('fixed mc-delay 100', {'mc-output-latency': 0})]
        for label, params in configs:
            pair.primary.qmp.cmd('migrate-set-parameters', **params)
            rows.append(echo_and_bulk(topo, label, pair))
            r = rows[-1]
            print('%-20s echo extra p50 %+6.2f p99 %+6.2f ms, clock replies '
                  '%+6.2f / %+6.2f ms; bulk %5.1f%% of no MC; echo %4.0f '
                  'checkpoints/s paused %4.1f%%, bulk %4.0f/s paused %4.1f%%'
                  % (label, r['p50_ms'] - base['p50_ms'],
                     r['p99_ms'] - base['p99_ms'],
                     r['nd_p50_ms'] - base['nd_p50_ms'],
                     r['nd_p99_ms'] - base['nd_p99_ms'],
                     100 * r['MBps'] / base['MBps'],
                     r['echo']['checkpoints_per_s'],
                     r['echo']['pause_pct'],
                     r['bulk']['checkpoints_per_s'],
                     r['bulk']['pause_pct']), flush=True)
    finally:
        if pair:
            pair.close()
        topo.close()
    return {'base': base, 'sweep': rows}


def run():
    wd = workdir('triggerbench')
    topo = Topology()
    pair = None
    try:
        pair = Pair(topo, wd, delay=100, tcpserv_ms=0)
        load = offered_load(topo, pair)
        phase_rows = phases(topo, pair)
    finally:
        if pair:
            pair.close()
        topo.close()
    return {'load': load, 'phases': phase_rows}


def markdown(load, phase_rows, swept):
    """The section docs/benchmarks.md includes (docs/bench/
    output-trigger.md), from one run."""
    out = ['## Checkpoints triggered by output (bench/triggerbench.py)', '',
           'Written by `bench/triggerbench.py --all --md` on %s, one run, '
           '%d host CPUs; the client and both QEMUs share them.  Extra '
           'round trip = the configuration\'s minus no MC\'s, same '
           'guest, same run.' % (time.strftime('%Y-%m-%d'),
                                  os.cpu_count()), '']
    if swept:
        base = swept['base']
        out += ['### Choosing the defaults: closed-loop echo (a request 5 ms '
                'after each answer, 200 per row) and a 32 MiB bulk transfer',
                '',
                '| mc-output-latency, mc-pause-budget | echo extra p50 / p99 '
                '(ms) | guest-clock replies p50 / p99 (ms) | TCP throughput '
                '(% of no MC) | checkpoints/s echo / bulk | paused echo / '
                'bulk (%) | CPU primary + standby, bulk (% of a CPU) |',
                '|---|---|---|---|---|---|---|']
        for r in swept['sweep']:
            e, b = r['echo'], r['bulk']
            out.append('| %s | %+.2f / %+.2f | %+.2f / %+.2f | %.1f | %.0f '
                       '/ %.0f | %.1f / %.1f | %.0f + %.0f |' % (
                           r['config'], r['p50_ms'] - base['p50_ms'],
                           r['p99_ms'] - base['p99_ms'],
                           r['nd_p50_ms'] - base['nd_p50_ms'],
                           r['nd_p99_ms'] - base['nd_p99_ms'],
                           100 * r['MBps'] / base['MBps'],
                           e['checkpoints_per_s'], b['checkpoints_per_s'],
                           e['pause_pct'], b['pause_pct'],
                           b['cpu_primary_pct'], b['cpu_standby_pct']))
        out.append('')
    if load:
        out += ['### Latency against offered load (open loop, %d s per row)'
                % LOAD_S, '',
                '| configuration | requests/s | extra p50 / p99 (ms) | '
                'checkpoints/s | output-triggered | paused (%) | CPU '
                'primary + standby (% of a CPU) |',
                '|---|---|---|---|---|---|---|']
        for r in load:
            if r['config'] == 'no MC':
                continue
            out.append('| %s | %d | %+.2f / %+.2f | %.0f | %.0f %% | %.1f | '
                       '%.0f + %.0f |' % (
                           r['config'], r['rate'], r['extra_p50_ms'],
                           r['extra_p99_ms'], r['checkpoints_per_s'],
                           100 * r['output_share'], r['pause_pct'],
                           r['cpu_primary_pct'], r['cpu_standby_pct']))
        out.append('')
    if phase_rows:
        out += ['### Phases at the defaults, back to back (%d s each, '
                'sampled every 200 ms)' % PHASE_S, '',
                '| phase | checkpoints/s mean (stdev of the samples) | '
                'output-triggered | paused mean / highest sample (%) |',
                '|---|---|---|---|']
        for r in phase_rows:
            out.append('| %s | %.0f (%.0f) | %.0f %% | %.1f / %.1f |' % (
                r['phase'], r['checkpoints_per_s'], r['cps_stdev'],
                100 * r['output_share'], r['pause_pct_mean'],
                r['pause_pct_max']))
        out.append('')
    return '\n'.join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--json')
    ap.add_argument('--sweep', action='store_true')
    ap.add_argument('--pairs', help='with --sweep: LATENCY:BUDGET,... '
                    'instead of the sweep')
    ap.add_argument('--all', action='store_true',
                    help='the sweep, then the load and the phases')
    ap.add_argument('--md', help='write the markdown section here')
    a = ap.parse_args()
    if a.all:
        swept = sweep()
        rows = run()
        rows['sweep'] = swept
        if a.json:
            with open(a.json, 'w') as f:
                json.dump(rows, f, indent=1)
        if a.md:
            with open(a.md, 'w') as f:
                f.write(markdown(rows['load'], rows['phases'], swept))
        return
    if a.sweep:
        rows = sweep([tuple(map(int, p.split(':')))
                      for p in a.pairs.split(',')] if a.pairs else None)
        if a.json:
            with open(a.json, 'w') as f:
                json.dump(rows, f, indent=1)
        return
    rows = run()
    print('\nextra round trip over no MC (ms), p50 / p99:')
    for r in rows['load']:
        if r['config'] != 'no MC':
            print('%-16s %5d req/s  %+7.2f / %+7.2f' % (
                r['config'], r['rate'], r['extra_p50_ms'],
                r['extra_p99_ms']))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
