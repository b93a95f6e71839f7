#!/usr/bin/env python3
"""MC and COLO over a link of limited speed: loopback, 10 and 1 Gbit/s.

Loopback hides what MC is built for, sending a checkpoint while the
guest runs.  Here the standby runs in its own network namespace, joined
to the primary's by a veth whose two ends are shaped with tbf (tests/mc/
mcnet.py, Topology(link=...)); the same figures are taken on loopback
(both in one namespace) in the same run, as the baseline.

Per link, with the bench guest (512 MiB, -machine pc, TCG):
  - MC, idle and at RATE dirty pages/s: pause p50/p99 and checkpoints/s
    at mc-delay 100, MB per checkpoint; checkpoints/s at mc-delay 0;
  - COLO with TCP_NODELAY (the better COLO, patches/colo-tcp-nodelay),
    no NIC, the same two workloads at x-checkpoint-delay 100: pause
    p50/p99, checkpoints/s; idle, checkpoints/s at 1 ms;
  - MC's network figures (bench/netbench.py) at mc-delay 10 and 1:
    round trip p50/p99 and TCP throughput, with no MC as the baseline.

Standalone: python3 bench/linkbench.py [--links 10gbit,1gbit] (prints the
tables, writes docs/bench/link.csv and link-net.csv); make bench runs it
from bench/run.py.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..'))
sys.path.insert(0, os.path.join(TOP, 'tests', 'mc'))
sys.path.insert(0, HERE)
from mcnet import Topology, Pair  # noqa: E402
from mcvm import workdir  # noqa: E402
from colo import ColoPair  # noqa: E402
import netbench  # noqa: E402
from mctrace import takes  # noqa: E402

LINKS = ('loopback', '10gbit', '1gbit')
RATE = 20000            # dirty pages per second of the busy workload
MEM = '512M'
MACHINE = 'pc'
MEASURE_S = float(os.environ.get('MC_BENCH_SECONDS', '8'))
NET_DELAYS = (10, 1)
NET_RTTS = 150
OUT = os.path.join(TOP, 'docs', 'bench')
CSV_HEADER = ('link,system,rate_pps,delay_ms,checkpoints,pause_p50_us,'
              'pause_p99_us,per_s,mb_per_checkpoint')
NET_CSV_HEADER = 'link,config,rtt_p50_ms,rtt_p99_ms,throughput_MBps'


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))] if v else float('nan')


def topology(link):
    return Topology(link=None if link == 'loopback' else link)


def run_mc(link, rate, rows):
    wd = workdir('link-mc')
    events = os.path.join(wd, 'events')
    trace = os.path.join(wd, 'primary.trace')
    with open(events, 'w') as f:
        f.write('mc_checkpoint_take\n')
    topo = topology(link)
    pair = None
    try:
        app = 'mc.dirty=64,%d' % rate if rate else ''
        pair = Pair(topo, wd, mem=MEM, machine=MACHINE, delay=100, app=app,
                    trace=(events, trace), tcpserv_ms=20)
        pair.start_mc()
        time.sleep(1)
        first, t0 = pair.mc()['checkpoints'] + 1, time.time()
        time.sleep(MEASURE_S)
        last, t1 = pair.mc()['checkpoints'], time.time()
        tk = takes(trace, first, last)
        pauses = [p for _, _, p in tk]
        rows.append((link, 'MC', rate, 100, len(tk), pct(pauses, 50),
                     pct(pauses, 99), (last - first + 1) / (t1 - t0),
                     statistics.mean(b for _, b, _ in tk) / 1e6 if tk else 0))
        pair.primary.qmp.cmd('migrate-set-parameters', **{'mc-delay': 0})
        time.sleep(1)
        n0, t0 = pair.mc()['acked'], time.time()
        time.sleep(MEASURE_S / 2)
        n1, t1 = pair.mc()['acked'], time.time()
        rows.append((link, 'MC', rate, 0, n1 - n0, '', '',
                     (n1 - n0) / (t1 - t0), ''))
        print('%-8s MC   %5d pages/s: pause p50 %.2f ms p99 %.2f ms, %.1f/s '
              'at 100 ms, %.0f/s at 0' % (
                  link, rate, rows[-2][5] / 1000, rows[-2][6] / 1000,
                  rows[-2][7], rows[-1][7]), flush=True)
    finally:
        if pair:
            pair.close()
        topo.close()


def run_colo(link, rate, rows):
    wd = workdir('link-colo')
    topo = topology(link)
    pair = None
    try:
        app = 'mc.dirty=64,%d' % rate if rate else ''
        pair = ColoPair(wd, delay_ms=100, mem=MEM, app=app, nodelay=True,
                        topo=topo)
        pair.start()
        time.sleep(1)
        skip, n0, t0 = len(pair.pauses_us()), pair.checkpoints(), time.time()
        time.sleep(MEASURE_S)
        n1, t1 = pair.checkpoints(), time.time()
        pauses = pair.pauses_us()[skip:]
        rows.append((link, 'COLO+nodelay', rate, 100, len(pauses),
                     pct(pauses, 50), pct(pauses, 99), (n1 - n0) / (t1 - t0),
                     ''))
        line = ('%-8s COLO %5d pages/s: pause p50 %.2f ms p99 %.2f ms, '
                '%.1f/s at 100 ms' % (link, rate, rows[-1][5] / 1000,
                                      rows[-1][6] / 1000, rows[-1][7]))
        if not rate:
            pair.primary.qmp.cmd('migrate-set-parameters',
                                 **{'x-checkpoint-delay': 1})
            time.sleep(1)
            n0, t0 = pair.checkpoints(), time.time()
            time.sleep(MEASURE_S / 2)
            n1, t1 = pair.checkpoints(), time.time()
            rows.append((link, 'COLO+nodelay', rate, 1, n1 - n0, '', '',
                         (n1 - n0) / (t1 - t0), ''))
            line += ', %.0f/s at 1 ms' % rows[-1][7]
        print(line, flush=True)
    finally:
        if pair:
            pair.close()
        topo.close()


def run_net(link, net_rows):
    for r in netbench.run(rtt_count=NET_RTTS, delays=NET_DELAYS,
                          link=None if link == 'loopback' else link):
        net_rows.append((link, r['config'], r['rtt_p50_ms'],
                         r['rtt_p99_ms'], r['throughput_MBps']))


SINK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5999)); s.listen(1)
c, _ = s.accept()
n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    n += len(b)
print(n)
"""


def link_speed(link, seconds=2.0):
    """What one TCP stream gets across the link (MB/s): the shaping is
    what it claims to be."""
    topo = topology(link)
    try:
        host = topo.mig_host()
        sink = topo.run_in(topo.ns_of('standby'),
                           [sys.executable, '-c', SINK, host],
                           stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        src = ('import socket, sys, time\n'
               's = socket.create_connection((sys.argv[1], 5999))\n'
               'buf = bytes(1 << 20); end = time.time() + %g\n'
               'while time.time() < end:\n'
               '    s.sendall(buf)\n'
               's.close()\n' % seconds)
        t0 = time.time()
        topo.run_in(topo.hv, [sys.executable, '-c', src, host]).wait()
        out, _ = sink.communicate(timeout=30)
        return int(out) / (time.time() - t0) / 1e6
    finally:
        topo.close()


def run_all(rows, net_rows, links=LINKS):
    started = time.time()
    for link in links:
        speed = link_speed(link)
        print('-- link %s: one TCP stream gets %.0f MB/s' % (link, speed),
              flush=True)
        rows.append((link, 'tcp', '', '', '', '', '', '', speed))
        for rate in (0, RATE):
            run_mc(link, rate, rows)
            run_colo(link, rate, rows)
        run_net(link, net_rows)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, 'link.json'), 'w') as f:
        json.dump({'date': time.strftime('%Y-%m-%d'),
                   'minutes': round((time.time() - started) / 60, 1),
                   'measure_s': MEASURE_S, 'cpus': os.cpu_count()}, f,
                  indent=1)


def fmt(x, f='%.2f', scale=1.0):
    return f % (x / scale) if isinstance(x, (int, float)) else 'n/a'


def report(rows, net_rows):
    def get(link, system, rate, delay):
        for r in rows:
            if r[:4] == (link, system, rate, delay):
                return r
        return None

    links = []
    for r in rows:
        if r[0] not in links:
            links.append(r[0])
    lines = ['| link | workload | MC pause p50 / p99 (ms) | MC checkpoints/s '
             'at 100 ms / at 0 | MB per checkpoint | COLO+nodelay pause '
             'p50 / p99 (ms) | COLO checkpoints/s at 100 ms / at 1 ms |',
             '|---|---|---|---|---|---|---|']
    speeds = ['%s %.0f MB/s' % (r[0], r[8]) for r in rows if r[1] == 'tcp']
    for link in links:
        for rate in (0, RATE):
            m, m0 = get(link, 'MC', rate, 100), get(link, 'MC', rate, 0)
            c, c1 = (get(link, 'COLO+nodelay', rate, 100),
                     get(link, 'COLO+nodelay', rate, 1))
            lines.append('| %s | %s | %s / %s | %s / %s | %s | %s / %s | '
                         '%s / %s |' % (
                             link, '%d pages/s' % rate if rate else 'idle',
                             fmt(m and m[5], scale=1000),
                             fmt(m and m[6], scale=1000),
                             fmt(m and m[7], '%.1f'),
                             fmt(m0 and m0[7], '%.0f'),
                             fmt(m and m[8], '%.1f'),
                             fmt(c and c[5], scale=1000),
                             fmt(c and c[6], scale=1000),
                             fmt(c and c[7], '%.1f'),
                             fmt(c1 and c1[7], '%.0f')))
    out = '\n'.join(lines) + '\n'
    if speeds:
        out += ('\nOne TCP stream across each link (Python, 2 s): %s.\n'
                % ', '.join(speeds))
    if net_rows:
        lines = ['', '| link | config | round trip p50 (ms) | p99 (ms) | '
                 'extra p50 / p99 over no MC (ms) | TCP throughput (MB/s) '
                 '| of no MC |', '|---|---|---|---|---|---|---|']
        for link in links:
            base = [r for r in net_rows if r[0] == link and r[1] == 'no MC']
            for r in net_rows:
                if r[0] != link:
                    continue
                extra = ('%.2f / %.2f' % (r[2] - base[0][2],
                                          r[3] - base[0][3])
                         if base and r is not base[0] else '')
                share = ('%.1f %%' % (100 * r[4] / base[0][4])
                         if base and r is not base[0] else '')
                lines.append('| %s | %s | %.2f | %.2f | %s | %.1f | %s |' % (
                    link, r[1], r[2], r[3], extra, r[4], share))
        out += '\n'.join(lines) + '\n'
    return out


def section(rows, net_rows):
    """The link table of docs/benchmarks.md."""
    try:
        with open(os.path.join(OUT, 'link.json')) as f:
            info = json.load(f)
        when = 'measured on %s in %.1f min, %d host CPUs, %g s per figure' % (
            info['date'], info['minutes'], info['cpus'], info['measure_s'])
    except (OSError, ValueError, KeyError):
        when = 'not measured'
    head = '\n## Over a link of 10 and 1 Gbit/s\n\n'
    if not rows:
        return head + 'No figures (%s).\n' % when
    return head + (
        '`bench/linkbench.py`, %s, one run. The standby in its own network '
        'namespace, joined to the primary\'s by a veth shaped with tbf at '
        'both ends (loopback: both in one namespace, as in the other '
        'tables). The busy workload dirties %d pages/s. MC at mc-delay 100 '
        'and 0; COLO with TCP_NODELAY (no NIC) at x-checkpoint-delay 100 '
        'and 1. Network: MC\'s pair with its NIC, netbench at mc-delay '
        '%s. The client\'s traffic does not cross the shaped link (client, '
        'bridge and primary share the hypervisor\'s namespace), only the '
        'checkpoints do: what the guest sends passes through its RAM '
        '(socket buffers), so a transfer of X MB/s dirties at least X MB/s '
        'that the checkpoints must carry, and at 1 Gbit/s the link, not '
        'MC, bounds the throughput.\n\n%s' % (
            when, RATE, ' and '.join(str(d) for d in NET_DELAYS),
            report(rows, net_rows)))


def write(rows, net_rows):
    os.makedirs(OUT, exist_ok=True)
    for name, header, data in (('link.csv', CSV_HEADER, rows),
                               ('link-net.csv', NET_CSV_HEADER, net_rows)):
        with open(os.path.join(OUT, name), 'w') as f:
            f.write(header + '\n')
            for r in data:
                f.write(','.join(str(x) for x in r) + '\n')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--links', default=','.join(LINKS))
    args = ap.parse_args()
    rows, net_rows = [], []
    run_all(rows, net_rows, args.links.split(','))
    write(rows, net_rows)
    print(report(rows, net_rows))


if __name__ == '__main__':
    main()
