#!/usr/bin/env python3
"""Network figures of output commit, side by side in one run.

One protected pair on the namespace network of the tests (tests/mc/
mcnet.py).  The same guest and client measure, in this order:
  - no MC (the primary alone, before migrate);
  - MC at each of --delays (100, 10, 1, 0 by default; changed at run time);
each: round-trip time of a small request/echo (p50, p99), the same with
replies that carry the guest's clock (they differ between two runs of the
guest, as a real service's do), and the TCP throughput of a bulk transfer
from the guest to the client.  Then, at
delay 10, the primary is killed while a client sends a request every 10 ms: the time
from the kill until the client is answered again (the end of its longest
silence), and whether its connection saw anything wrong.

run_colo() does the same for upstream COLO with its network proxy
(colo-compare; tests/mc/colo.py ColoNetPair).  It has no "no COLO"
figure: once the proxy is in place the primary's packets wait for the
secondary's, so the baseline is the MC pair's "no MC".

Prints a table and, with --csv FILE, writes the raw samples.
"""

import argparse
import os
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests', 'mc'))
from mcnet import Topology, Pair, problems  # noqa: E402
from mcvm import workdir  # noqa: E402
from colo import ColoNetPair  # noqa: E402

# long enough that slow start after each idle period does not decide it
BULK_BYTES = 64 << 20
# 'defaults' in --delays: the product's defaults (output-triggered
# checkpoints within the pause budget, mc-delay 100 the longest epoch)
DEFAULTS = 'defaults'
DEFAULTS_LABEL = 'MC defaults'
DEFAULT_PARAMS = {'mc-delay': 100, 'mc-output-latency': 100,
                  'mc-pause-budget': 10}
DELAYS = (DEFAULTS, 100, 10, 1, 0)
FAILOVER_DELAY = 10     # the failover figure, after the others
COLO_NODELAY = 'COLO+nodelay'   # label of COLO with TCP_NODELAY


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def client(topo, *args):
    return topo.ask(*args)


def cpu_s(pid):
    """User plus system CPU seconds of process @pid, all its threads."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def mc_counts(pair):
    """What the primary's checkpoints and both QEMUs' CPU were until
    now, or None."""
    if not pair:
        return None
    mc = pair.mc()
    return {'t': time.time(), 'checkpoints': mc['checkpoints'],
            'output': mc['output-checkpoints'],
            'pause_us': mc['pause-avg-us'] * mc['checkpoints'],
            'cpu_primary': cpu_s(pair.primary.proc.pid),
            'cpu_standby': cpu_s(pair.standby.proc.pid)}


def mc_rates(before, after):
    """Checkpoints per second, the share of them output triggered, the
    pause share and each QEMU's CPU (% of one) between two mc_counts()."""
    if not before or not after:
        return {}
    dt = after['t'] - before['t']
    n = after['checkpoints'] - before['checkpoints']
    return {'checkpoints_per_s': n / dt,
            'output_share': (after['output'] - before['output']) / max(n, 1),
            'pause_pct': 100.0 * (after['pause_us'] - before['pause_us']) /
            (dt * 1e6),
            'cpu_primary_pct': 100.0 * (after['cpu_primary'] -
                                        before['cpu_primary']) / dt,
            'cpu_standby_pct': 100.0 * (after['cpu_standby'] -
                                        before['cpu_standby']) / dt}


def measure(topo, label, rtt_count, bulk_bytes, pair=None):
    c0 = mc_counts(pair)
    rtts = client(topo, 'rtt', '--count', str(rtt_count), '--interval', '5')
    # the same with replies that differ between two runs of the guest
    nd = client(topo, 'rtt', '--count', str(rtt_count), '--interval', '5',
                '--nondet')
    c1 = mc_counts(pair)
    bulk = client(topo, 'bulk', '--bytes', str(bulk_bytes), '--timeout',
                  '120')
    c2 = mc_counts(pair)
    row = {'config': label,
           'rtt_p50_ms': pct(rtts, 50) * 1000,
           'rtt_p99_ms': pct(rtts, 99) * 1000,
           'rtt_mean_ms': statistics.mean(rtts) * 1000,
           'throughput_MBps': bulk['bytes'] / bulk['seconds'] / 1e6,
           'samples': rtts,
           'nondet_p50_ms': pct(nd, 50) * 1000,
           'nondet_p99_ms': pct(nd, 99) * 1000,
           'nondet_samples': nd}
    print('%-22s rtt p50 %7.2f ms  p99 %7.2f ms  throughput %6.2f MB/s; '
          'clock replies: rtt p50 %7.2f ms  p99 %7.2f ms'
          % (label, row['rtt_p50_ms'], row['rtt_p99_ms'],
             row['throughput_MBps'], row['nondet_p50_ms'],
             row['nondet_p99_ms']), flush=True)
    echo, bulk = mc_rates(c0, c1), mc_rates(c1, c2)
    if echo:
        row.update({'echo_' + k: v for k, v in echo.items()})
        row.update({'bulk_' + k: v for k, v in bulk.items()})
        print('%-22s echo: %.0f checkpoints/s (%.0f%% output-triggered), '
              'paused %.1f%%; bulk: %.0f/s (%.0f%%), paused %.1f%%'
              % ('', echo['checkpoints_per_s'], 100 * echo['output_share'],
                 echo['pause_pct'], bulk['checkpoints_per_s'],
                 100 * bulk['output_share'], bulk['pause_pct']), flush=True)
    return row


def failover_seen(topo, wd, label, kill):
    """Kill the primary (kill() also does what management must do) while
    a client sends a request every 10 ms.  Answers the primary released
    just before it died can still arrive after the kill, so the outage
    is the longest silence between two answers that ends after the kill:
    returns ms from the kill to the answer that ends it, the silence,
    and the client's complaints (gap, reset)."""
    client = topo.client(os.path.join(wd, 'fo-client'), interval=10)
    try:
        client.wait(lambda evs: sum(e['ev'] == 'echo' for e in evs) >= 20)
        t_kill = time.time()
        kill()
        client.wait(lambda evs: any(e['ev'] == 'echo' and
                                    e['t'] > t_kill + 0.5 for e in evs),
                    timeout=60)
        time.sleep(2)       # answers keep coming, nothing breaks
    finally:
        evs = client.stop()
    t = [e['t'] for e in evs if e['ev'] == 'echo']
    gap, end = max((b - a, b) for a, b in zip(t, t[1:]) if b > t_kill)
    bad = problems(evs)
    ms = (end - t_kill) * 1000
    print('%-22s kill -> answers again %7.1f ms (silence %.1f ms), client '
          'problems: %s' % (label, ms, gap * 1000, bad[:3] or 'none'),
          flush=True)
    return {'config': label, 'failover_ms': ms, 'silence_ms': gap * 1000,
            'problems': len(bad)}


def run(rtt_count=200, bulk_bytes=BULK_BYTES, delays=DELAYS, failover=False,
        link=None):
    """MC's figures; @link: the standby behind a link of that speed
    (mcnet.Topology)."""
    wd = workdir('netbench')
    topo = Topology(link=link)
    pair = None
    rows = []
    try:
        pair = Pair(topo, wd, delay=100, tcpserv_ms=0)
        rows.append(measure(topo, 'no MC', rtt_count, bulk_bytes))
        pair.start_mc()
        for d in delays:
            # a fixed interval: no checkpoint triggered by output
            if d == DEFAULTS:
                params, label = DEFAULT_PARAMS, DEFAULTS_LABEL
            else:
                params = {'mc-delay': d, 'mc-output-latency': 0}
                label = 'MC mc-delay %d' % d
            pair.primary.qmp.cmd('migrate-set-parameters', **params)
            rows.append(measure(topo, label, rtt_count, bulk_bytes, pair))
        mc = pair.mc()
        print('held at most %d bytes per NIC, throttled %d times'
              % (mc['net-held-high-water'], mc['net-throttled']))
        if failover:
            pair.primary.qmp.cmd('migrate-set-parameters',
                                 **{'mc-delay': FAILOVER_DELAY})
            rows.append(failover_seen(
                topo, wd, 'MC mc-delay %d' % FAILOVER_DELAY,
                lambda: pair.primary.kill(signal.SIGKILL)))
    finally:
        if pair:
            pair.close()
        topo.close()
    return rows


def run_colo(rtt_count=200, bulk_bytes=BULK_BYTES, delays=DELAYS,
             mem='512M', nodelay=False, failover=True):
    """Upstream COLO, same guest and client, x-checkpoint-delay matched;
    ends with a failover (the secondary's part as COLO-FT.txt has it).
    @nodelay: TCP_NODELAY on its migration socket and proxy chardevs
    (patches/colo-tcp-nodelay.patch); without, COLO as shipped."""
    wd = workdir('netbench-colo')
    topo = Topology()
    pair = None
    rows = []
    label = COLO_NODELAY if nodelay else 'COLO'
    try:
        pair = ColoNetPair(topo, wd, delay_ms=delays[0], mem=mem,
                           nodelay=nodelay)
        pair.start()
        for d in delays:
            pair.primary.qmp.cmd('migrate-set-parameters',
                                 **{'x-checkpoint-delay': d})
            n0, t0 = pair.checkpoints(), time.time()
            row = measure(topo, '%s delay %d' % (label, d), rtt_count,
                          bulk_bytes)
            row['checkpoints_per_s'] = ((pair.checkpoints() - n0) /
                                        (time.time() - t0))
            rows.append(row)

        def kill():
            pair.primary.kill(signal.SIGKILL)
            pair.take_over()
        if failover:
            pair.primary.qmp.cmd('migrate-set-parameters',
                                 **{'x-checkpoint-delay': FAILOVER_DELAY})
            rows.append(failover_seen(topo, wd, '%s delay %d'
                                      % (label, FAILOVER_DELAY), kill))
    finally:
        if pair:
            pair.close()
        topo.close()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rtt-count', type=int, default=200)
    ap.add_argument('--bulk-bytes', type=int, default=BULK_BYTES)
    ap.add_argument('--delays', default=','.join(map(str, DELAYS)),
                    help='mc-delay values in ms, in order (default %(default)s)')
    ap.add_argument('--no-failover', action='store_true')
    ap.add_argument('--csv')
    ap.add_argument('--colo', action='store_true',
                    help='also measure upstream COLO')
    a = ap.parse_args()
    delays = tuple(d if d == DEFAULTS else int(d)
                   for d in a.delays.split(','))
    rows = run(a.rtt_count, a.bulk_bytes, delays, not a.no_failover)
    if a.colo:
        colo_delays = tuple(d for d in delays if d and d != DEFAULTS)
        rows += run_colo(a.rtt_count, a.bulk_bytes, colo_delays)
        rows += run_colo(a.rtt_count, a.bulk_bytes, colo_delays,
                         nodelay=True, failover=False)
    base = rows[0]
    for r in rows[1:]:
        if 'samples' not in r:
            continue
        print('%s: extra rtt p50 %+.2f ms, p99 %+.2f ms; throughput %.1f%% '
              'of no MC' % (r['config'], r['rtt_p50_ms'] - base['rtt_p50_ms'],
                            r['rtt_p99_ms'] - base['rtt_p99_ms'],
                            100 * r['throughput_MBps'] /
                            base['throughput_MBps']))
    if a.csv:
        with open(a.csv, 'w') as f:
            f.write('config,sample,rtt_ms\n')
            for r in rows:
                for i, s in enumerate(r.get('samples', ())):
                    f.write('%s,%d,%.3f\n' % (r['config'], i, s * 1000))


if __name__ == '__main__':
    main()
