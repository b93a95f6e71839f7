#!/usr/bin/env python3
"""make bench: the SPEC 5 figures, measured side by side in one run.

Everything runs on the same Linux test guest (TCG, 512 MiB) and the same
namespace network as the tests (tests/mc/mcnet.py; needs root).  Each
measurement is repeated MC_BENCH_REPEAT times (default 3); the table
gives medians and the spread (min..max), every ratio from this run.

Writes docs/benchmarks.md, docs/bench/*.csv (raw samples) and
docs/bench/*.png (gnuplot).  Peers: upstream COLO (tests/mc/colo.py:
without a NIC for the pause, rate, slowdown and memory figures; with its
colo-compare network proxy for the network and failover-seen-by-a-client
figures; with its block replication for the disk figures, bench/
diskbench.py) and a plain precopy migration of the same guest.
Over links shaped to 10 and 1 Gbit/s (the standby in its own namespace):
bench/linkbench.py.  --disk-only, --net-only, --copy-only and --link-only
measure one group of figures alone and rewrite the report with them and
the other figures of the last run.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..'))
sys.path.insert(0, os.path.join(TOP, 'tests', 'mc'))
sys.path.insert(0, HERE)
from mcnet import Topology, Pair, MIG_PORT  # noqa: E402
from mcvm import workdir, wait_migration  # noqa: E402
from colo import ColoPair  # noqa: E402
import netbench  # noqa: E402
import diskbench  # noqa: E402
import copybench  # noqa: E402
import linkbench  # noqa: E402
from mctrace import takes  # noqa: E402

REPEAT = int(os.environ.get('MC_BENCH_REPEAT', '3'))
MEM = '512M'
MACHINE = 'pc'          # upstream COLO's documented machine, for both
MEM_MIB = 512
RATES = [0, 2000, 5000, 10000, 20000]      # pages dirtied per second
MEASURE_S = float(os.environ.get('MC_BENCH_SECONDS', '8'))
# network: MC at each delay; COLO back to back (0) is not a setting
# anyone runs, and its 1 ms is already its checkpoint rate's limit
NET_DELAYS = netbench.DELAYS
COLO_NET_DELAYS = (100, 10, 1)
NET_RTTS = 150
NET_BULK = netbench.BULK_BYTES
NONDET = ' nondet'      # config suffix: replies carrying the guest's clock
OUT = os.path.join(TOP, 'docs', 'bench')


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def cpu_s(pid):
    """CPU time (user + system) a process has used, in seconds."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def rss_mib(pid):
    with open('/proc/%d/status' % pid) as f:
        m = re.search(r'VmRSS:\s+(\d+) kB', f.read())
    return int(m.group(1)) / 1024.0


def serial_pages(vm):
    """Host time and the workload's page counter, last report."""
    m = re.findall(r'mc-dirty: t=\d+ pages=(\d+)', vm.serial())
    return int(m[-1]) if m else None


def workload_rate(vm, seconds):
    """Pages the guest workload dirtied per second of host time."""
    def wait_report(after):
        deadline = time.time() + 30
        while time.time() < deadline:
            n = serial_pages(vm)
            if n is not None and n != after:
                return time.time(), n
            time.sleep(0.02)
        raise TimeoutError('no mc-dirty report')
    t0, n0 = wait_report(serial_pages(vm))
    time.sleep(seconds)
    t1, n1 = wait_report(serial_pages(vm))
    return (n1 - n0) / (t1 - t0)


PHASES = ('stop', 'harvest', 'save', 'copy', 'devices', 'resume')


def phases(trace, first, last):
    """Where each pause of checkpoints first..last went (us): stopping
    (vCPUs, participants' drain), the dirty-log harvest (ram.c's
    sync), the rest of the RAM and disk sections, the deferred page
    copy, device state, resuming (mc_checkpoint_phases, traced after the
    pause: it does not lengthen it)."""
    out = []
    with open(trace) as f:
        for line in f:
            m = re.search(r'mc_checkpoint_phases epoch (\d+) (.*)', line)
            if m and first <= int(m.group(1)) <= last:
                out.append(tuple(int(x) for x in
                                 re.findall(r'(-?\d+)', m.group(2))))
    return out


def trace_pair(topo, wd, **kw):
    events = os.path.join(wd, 'events')
    with open(events, 'w') as f:
        f.write('mc_checkpoint_take\nmc_checkpoint_phases\n')
    trace = os.path.join(wd, 'primary.trace')
    return Pair(topo, wd, mem=MEM, machine=MACHINE, trace=(events, trace),
                **kw), trace


def failover(pair, topo, wd):
    """kill -9 the primary while a client streams: ms to MC_FAILOVER and
    to the client's next record."""
    client = topo.client(os.path.join(wd, 'fo-client'), interval=0)
    client.wait(lambda evs: sum(e['ev'] == 'srv' for e in evs) >= 20)
    t_kill = time.time()
    pair.primary.kill(signal.SIGKILL)
    pair.standby.qmp.wait_event('MC_FAILOVER', timeout=60)
    t_ev = time.time()
    evs = client.wait(lambda evs: any(e['ev'] == 'srv' and e['t'] > t_kill
                                      for e in evs), timeout=60)
    t_rec = min(e['t'] for e in evs if e['ev'] == 'srv' and e['t'] > t_kill)
    client.stop()
    return (t_ev - t_kill) * 1000, (t_rec - t_kill) * 1000


def run_rate(rate, rep, rows):
    """One pair at one dirty rate: pauses, RSS, and (idle) checkpoints/s at
    mc-delay 0; ends with a failover."""
    wd = workdir('bench-r%d' % rate)
    topo = Topology()
    pair = None
    try:
        app = 'mc.dirty=64,%d' % rate if rate else ''
        pair, trace = trace_pair(topo, wd, delay=100, app=app, tcpserv_ms=20)
        pair.start_mc()
        time.sleep(1)
        first = pair.mc()['checkpoints'] + 1
        pids = (pair.primary.proc.pid, pair.standby.proc.pid)
        c0, t0 = [cpu_s(p) for p in pids], time.time()
        time.sleep(MEASURE_S)
        c1, t1 = [cpu_s(p) for p in pids], time.time()
        last = pair.mc()['checkpoints']
        rows['cpu'].append((rep, rate) + tuple(
            100 * (b - a) / (t1 - t0) for a, b in zip(c0, c1)))
        for pages, _, pause in takes(trace, first, last):
            rows['pause'].append((rep, rate, pages, pause))
        for ph in phases(trace, first, last):
            rows['phases'].append((rep, rate) + ph)
        rows['rss'].append((rep, rate, rss_mib(pair.primary.proc.pid),
                            rss_mib(pair.standby.proc.pid)))
        if rate == 0:
            pair.primary.qmp.cmd('migrate-set-parameters', **{'mc-delay': 0})
            time.sleep(1)
            n0, t0 = pair.mc()['acked'], time.time()
            time.sleep(MEASURE_S / 2)
            n1, t1 = pair.mc()['acked'], time.time()
            rows['rate0'].append((rep, (n1 - n0) / (t1 - t0)))
            pair.primary.qmp.cmd('migrate-set-parameters',
                                 **{'mc-delay': 100})
        ev_ms, rec_ms = failover(pair, topo, wd)
        rows['failover'].append((rep, rate, ev_ms, rec_ms))
    finally:
        if pair:
            pair.close()
        topo.close()


def run_slowdown(rep, rows):
    """The workload flat out: its rate with no MC, MC at 100 and at 10."""
    wd = workdir('bench-slow')
    topo = Topology()
    pair = None
    try:
        pair = Pair(topo, wd, mem=MEM, delay=100, app='mc.dirty=8,0',
                    machine=MACHINE)
        pair.primary.wait_serial('mc-dirty: t=', timeout=60)
        base = workload_rate(pair.primary, MEASURE_S / 2)
        pair.start_mc()
        r100 = workload_rate(pair.primary, MEASURE_S / 2)
        pair.primary.qmp.cmd('migrate-set-parameters', **{'mc-delay': 10})
        r10 = workload_rate(pair.primary, MEASURE_S / 2)
        rows['slowdown'].append((rep, base, r100, r10))
    finally:
        if pair:
            pair.close()
        topo.close()


def colo_pauses(pair, rate, rep, rows):
    """COLO's pauses (and their dirty pages) over MEASURE_S."""
    time.sleep(1)
    skip = len(pair.pause_pages())
    time.sleep(MEASURE_S)
    for pages, us in pair.pause_pages()[skip:]:
        if pages is not None:
            rows['colo_pause'].append((rep, rate, pages, us))


def colo_rate(pair):
    """Checkpoints per second COLO sends at 1 ms (with 0, no checkpoint
    was sent at all in a 2 s window)."""
    pair.primary.qmp.cmd('migrate-set-parameters',
                         **{'x-checkpoint-delay': 1})
    time.sleep(1)
    n0, t0 = pair.checkpoints(), time.time()
    time.sleep(MEASURE_S / 2)
    n1, t1 = pair.checkpoints(), time.time()
    return (n1 - n0) / (t1 - t0)


def run_colo(rep, rows):
    """Upstream COLO on the same guest, checkpoint delay matched (100 ms):
    pause per checkpoint at each dirty rate, checkpoints per second at
    delay 0, RSS, failover; then the slowdown of the flat-out
    workload."""
    for rate in RATES[1:]:
        wd = workdir('bench-colo-r%d' % rate)
        pair = ColoPair(wd, delay_ms=100, mem=MEM,
                        app='mc.dirty=64,%d' % rate)
        try:
            pair.start()
            colo_pauses(pair, rate, rep, rows)
        finally:
            pair.close()
    wd = workdir('bench-colo')
    pair = ColoPair(wd, delay_ms=100, mem=MEM)
    try:
        pair.start()
        colo_pauses(pair, 0, rep, rows)
        rows['colo_rss'].append((rep, rss_mib(pair.primary.proc.pid),
                                 rss_mib(pair.secondary.proc.pid)))
        rows['colo_rate0'].append((rep, colo_rate(pair)))
        rows['colo_failover'].append((rep, pair.failover_ms()))
    finally:
        pair.close()
    # the same with TCP_NODELAY (patches/colo-tcp-nodelay.patch)
    wd = workdir('bench-colo-nodelay')
    pair = ColoPair(wd, delay_ms=100, mem=MEM, nodelay=True)
    try:
        pair.start()
        nd = {'colo_pause': []}
        colo_pauses(pair, 0, rep, nd)
        rows['colo_nd_pause'] += nd['colo_pause']
        rows['colo_nd_rate0'].append((rep, colo_rate(pair)))
    finally:
        pair.close()
    wd = workdir('bench-colo-slow')
    pair = ColoPair(wd, delay_ms=100, mem=MEM, app='mc.dirty=8,0')
    try:
        pair.primary.wait_serial('mc-dirty: t=', timeout=60)
        base = workload_rate(pair.primary, MEASURE_S / 2)
        pair.start()
        r100 = workload_rate(pair.primary, MEASURE_S / 2)
        rows['colo_slowdown'].append((rep, base, r100))
    finally:
        pair.close()


def run_precopy(rep, rows):
    """A plain precopy migration of the same guest, idle and dirtying."""
    for rate in (0, 5000):
        wd = workdir('bench-pre')
        topo = Topology()
        pair = None
        try:
            app = 'mc.dirty=64,%d' % rate if rate else ''
            pair = Pair(topo, wd, mem=MEM, app=app, mc=False,
                        machine=MACHINE)
            time.sleep(2)
            pair.primary.qmp.cmd('migrate', uri='tcp:127.0.0.1:%d' % MIG_PORT)
            wait_migration(pair.primary.qmp, 'completed', timeout=300)
            info = pair.primary.qmp.cmd('query-migrate')
            rows['precopy'].append((rep, rate, info['total-time'],
                                    info['downtime'],
                                    rss_mib(pair.standby.proc.pid)))
        finally:
            if pair:
                pair.close()
            topo.close()


def med(values):
    return statistics.median(values) if values else float('nan')


def spread(values, fmt='%.2f'):
    if not values:
        return 'n/a'
    return (fmt + ' (' + fmt + '..' + fmt + ')') % (
        statistics.median(values), min(values), max(values))


def slope(points):
    """Least-squares pause (us) per dirty page, and the fixed cost."""
    n = len(points)
    sx = sum(p for p, _ in points)
    sy = sum(q for _, q in points)
    sxx = sum(p * p for p, _ in points)
    sxy = sum(p * q for p, q in points)
    den = n * sxx - sx * sx
    if n < 2 or den == 0:
        return float('nan'), float('nan')
    b = (n * sxy - sx * sy) / den
    return b, (sy - b * sx) / n


def write_csv(name, header, rows):
    with open(os.path.join(OUT, name), 'w') as f:
        f.write(header + '\n')
        for r in rows:
            f.write(','.join(str(x) for x in r) + '\n')


def plot(name, script):
    try:
        subprocess.run(['gnuplot'], input=script, text=True, check=True,
                       cwd=OUT, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        print('plot %s skipped: %s' % (name, e))


# the raw data: rows key, file in docs/bench, its header
CSVS = [
    ('pause', 'pause.csv', 'rep,rate_pps,dirty_pages,pause_us'),
    ('phases', 'pause-phases.csv',
     'rep,rate_pps,' + ','.join(p + '_us' for p in PHASES)),
    ('rss', 'rss.csv', 'rep,rate_pps,primary_mib,standby_mib'),
    ('cpu', 'cpu.csv', 'rep,rate_pps,primary_cpu_pct,standby_cpu_pct'),
    ('rate0', 'checkpoints-per-second.csv', 'rep,per_s'),
    ('failover', 'failover.csv',
     'rep,rate_pps,kill_to_event_ms,kill_to_next_record_ms'),
    ('slowdown', 'slowdown.csv', 'rep,no_mc_pps,mc100_pps,mc10_pps'),
    ('precopy', 'precopy.csv',
     'rep,rate_pps,total_ms,downtime_ms,dest_rss_mib'),
    ('colo_pause', 'colo-pause.csv', 'rep,rate_pps,dirty_pages,pause_us'),
    ('colo_rss', 'colo.csv', 'rep,primary_rss_mib,secondary_rss_mib'),
    ('colo_rate0', 'colo-checkpoints-per-second.csv', 'rep,per_s'),
    ('colo_nd_pause', 'colo-nodelay-pause.csv',
     'rep,rate_pps,dirty_pages,pause_us'),
    ('colo_nd_rate0', 'colo-nodelay-checkpoints-per-second.csv',
     'rep,per_s'),
    ('colo_failover', 'colo-failover.csv', 'rep,kill_to_colo_exit_ms'),
    ('colo_slowdown', 'colo-slowdown.csv', 'rep,no_colo_pps,colo100_pps'),
    ('net', 'net.csv', 'rep,config,sample,rtt_ms,throughput_MBps'),
    ('net_failover', 'net-failover.csv',
     'rep,config,kill_to_answers_ms,silence_ms,client_problems'),
    ('colo_net_rate', 'colo-net-checkpoints-per-second.csv',
     'rep,config,per_s'),
    ('disk', 'disk.csv', diskbench.CSV_HEADER),
    ('copy', 'copy.csv', copybench.CSV_HEADER),
    ('link', 'link.csv', linkbench.CSV_HEADER),
    ('link_net', 'link-net.csv', linkbench.NET_CSV_HEADER),
]


def load_csv(name):
    def value(x):
        for conv in (int, float):
            try:
                return conv(x)
            except ValueError:
                pass
        return x
    if (name in ('disk.csv', 'copy.csv', 'pause-phases.csv', 'cpu.csv',
                 'link.csv', 'link-net.csv',
                 'colo-nodelay-pause.csv',
                 'colo-nodelay-checkpoints-per-second.csv') and
            not os.path.exists(os.path.join(OUT, name))):
        return []       # a run from before that benchmark
    with open(os.path.join(OUT, name)) as f:
        next(f)
        return [tuple(value(x) for x in line.rstrip('\n').split(','))
                for line in f if line.strip()]


def measure_net(rep, rows):
    """The network figures of one repetition into rows (net, net_failover,
    colo_net_rate)."""
    print('-- network', flush=True)
    net_rows = netbench.run(rtt_count=NET_RTTS, bulk_bytes=NET_BULK,
                            delays=NET_DELAYS, failover=True)
    print('-- network, COLO', flush=True)
    net_rows += netbench.run_colo(rtt_count=NET_RTTS, bulk_bytes=NET_BULK,
                                  delays=COLO_NET_DELAYS, mem=MEM)
    print('-- network, COLO with TCP_NODELAY', flush=True)
    net_rows += netbench.run_colo(rtt_count=NET_RTTS, bulk_bytes=NET_BULK,
                                  delays=COLO_NET_DELAYS, mem=MEM,
                                  nodelay=True, failover=False)
    for r in net_rows:
        if 'failover_ms' in r:
            rows['net_failover'].append((rep, r['config'],
                                         r['failover_ms'],
                                         r['silence_ms'],
                                         r['problems']))
            continue
        for i, s in enumerate(r['samples']):
            rows['net'].append((rep, r['config'], i, s * 1000,
                                r['throughput_MBps']))
        for i, s in enumerate(r.get('nondet_samples', ())):
            rows['net'].append((rep, r['config'] + NONDET, i, s * 1000,
                                r['throughput_MBps']))
        if 'checkpoints_per_s' in r:
            rows['colo_net_rate'].append((rep, r['config'],
                                          r['checkpoints_per_s']))


def measure():
    """Every measurement, REPEAT times; the raw data goes to docs/bench."""
    rows = {k: [] for k, _, _ in CSVS}
    started = time.time()
    for rep in range(REPEAT):
        print('== repetition %d of %d' % (rep + 1, REPEAT), flush=True)
        for rate in RATES:
            print('-- MC, %d dirty pages/s' % rate, flush=True)
            run_rate(rate, rep, rows)
        print('-- guest slowdown', flush=True)
        run_slowdown(rep, rows)
        print('-- precopy', flush=True)
        run_precopy(rep, rows)
        print('-- COLO', flush=True)
        run_colo(rep, rows)
        measure_net(rep, rows)
        print('-- disk', flush=True)
        diskbench.run(rep, rows['disk'])
    print('-- copy cost', flush=True)
    copybench.run_all(rows['copy'])
    print('-- over shaped links', flush=True)
    linkbench.run_all(rows['link'], rows['link_net'])
    for key, name, header in CSVS:
        write_csv(name, header, rows[key])
    diskbench.write_run_info(started)
    run = {'date': time.strftime('%Y-%m-%d'), 'repetitions': REPEAT,
           'minutes': round((time.time() - started) / 60, 1),
           'measure_s': MEASURE_S, 'guest': MEM, 'cpus': os.cpu_count()}
    with open(os.path.join(OUT, 'run.json'), 'w') as f:
        json.dump(run, f, indent=1)
    return rows, run


def measure_disk():
    """--disk-only: the disk figures alone, REPEAT times."""
    rows = []
    started = time.time()
    for rep in range(REPEAT):
        print('== disk, repetition %d of %d' % (rep + 1, REPEAT), flush=True)
        diskbench.run(rep, rows)
    write_csv('disk.csv', diskbench.CSV_HEADER, rows)
    diskbench.write_run_info(started)
    return rows


def measure_copy():
    """--copy-only: the copy figures alone."""
    rows = []
    copybench.run_all(rows)
    write_csv('copy.csv', copybench.CSV_HEADER, rows)
    return rows


def disk_section(rows):
    """The disk table of docs/benchmarks.md."""
    try:
        with open(os.path.join(OUT, 'disk.json')) as f:
            when = json.load(f)
        when = 'measured on %s, %d repetitions, %.1f min' % (
            when['date'], when['repetitions'], when['minutes'])
    except (OSError, ValueError, KeyError):
        when = 'not measured in this run'
    if not rows:
        return '\n## Guest disk\n\nNo figures (%s).\n' % when
    return ('\n## Guest disk\n\n`bench/diskbench.py`, %s; medians, '
            '(min..max) over repetitions.\n\n%s\n\n%s\n' % (
                when, diskbench.table(rows), diskbench.notes(rows)))


def cpu_section(rows):
    """CPU use of both sides, by dirty rate."""
    if not rows:
        return ''
    out = ('\nCPU use at mc-delay 100 (% of one CPU, median over '
           'repetitions; the guest has one vCPU, TCG):\n\n'
           '| pages/s | primary | standby |\n|---|---|---|\n')
    for r in RATES:
        sel = [x for x in rows if x[1] == r]
        if sel:
            out += '| %d | %.0f | %.1f |\n' % (
                r, med([x[2] for x in sel]), med([x[3] for x in sel]))
    return out


def phase_section(rows):
    """Where the pause goes, by dirty rate (trace events)."""
    if not rows:
        return ''
    out = ('\nWhere the MC pause goes (us, median of each phase over all '
           'checkpoints of the pause runs above, from the '
           'mc_checkpoint_phases trace event): stop = vCPUs stopped, '
           'disk drain and read-back (no state-change handlers under TCG); '
           'harvest = dirty-log sync; '
           'save = finding the dirty pages and writing the RAM and disk '
           'sections; copy = the deferred page copy; devices = device '
           'state; resume = vCPUs back on. Medians do not add '
           'up to the pause median.\n\n| pages/s | n | ' +
           ' | '.join(PHASES) + ' |\n|---|---|' + '---|' * len(PHASES) +
           '\n')
    for r in RATES:
        sel = [x[2:] for x in rows if x[1] == r]
        if sel:
            out += '| %d | %d | %s |\n' % (r, len(sel), ' | '.join(
                '%.0f' % pct([x[i] for x in sel], 50)
                for i in range(len(PHASES))))
    return out


def report(rows, run):
    """docs/benchmarks.md and the plots, from the raw data."""
    measure_s, repeat = run['measure_s'], run['repetitions']
    # figures
    idle = [p / 1000 for _, r, _, p in rows['pause'] if r == 0]
    by_rate = {r: [p / 1000 for _, rr, _, p in rows['pause'] if rr == r]
               for r in RATES}
    b, a = slope([(pg, p) for _, _, pg, p in rows['pause']])
    ck0 = [x for _, x in rows['rate0']]
    sd100 = [100 * (1 - m / n) for _, n, m, _ in rows['slowdown']]
    sd10 = [100 * (1 - m / n) for _, n, _, m in rows['slowdown']]
    fo_ev = [e for _, _, e, _ in rows['failover']]
    fo_rec = [r for _, _, _, r in rows['failover']]
    sb_rss = [s for _, _, _, s in rows['rss']]
    pr_rss = [p for _, _, p, _ in rows['rss']]
    pre_total = [t for _, r, t, _, _ in rows['precopy'] if r == 0]
    pre_down = [d for _, r, _, d, _ in rows['precopy'] if r == 0]
    pre_total5 = [t for _, r, t, _, _ in rows['precopy'] if r == 5000]
    pre_down5 = [d for _, r, _, d, _ in rows['precopy'] if r == 5000]
    net = {}
    for rep, cfg, _, rtt, thr in rows['net']:
        net.setdefault(cfg, {}).setdefault(rep, ([], thr))[0].append(rtt)

    def net_fig(cfg, what):
        vals = []
        for rtts, thr in net.get(cfg, {}).values():
            vals.append({'p50': pct(rtts, 50), 'p99': pct(rtts, 99),
                         'thr': thr}[what])
        return vals

    base50 = net_fig('no MC', 'p50')
    nd_base50 = net_fig('no MC' + NONDET, 'p50')
    extra, extra50, thr_ratio, ndx, ndx50 = {}, {}, {}, {}, {}
    def label(fmt):
        """The row label at delay d; MC's defaults have their own."""
        return lambda d: (netbench.DEFAULTS_LABEL if fmt.startswith('MC ')
                          else '-') if d == netbench.DEFAULTS else fmt % d

    for who, fmt in (('MC', 'MC mc-delay %d'), ('COLO', 'COLO delay %d'),
                     ('ND', netbench.COLO_NODELAY + ' delay %d')):
        cfg = label(fmt)
        for d in NET_DELAYS:
            # replies carrying the guest's clock, against their own no MC
            ndx[who, d] = [m - b for m, b in
                           zip(net_fig(cfg(d) + NONDET, 'p99'), nd_base50)]
            ndx50[who, d] = [m - b for m, b in
                             zip(net_fig(cfg(d) + NONDET, 'p50'),
                                 nd_base50)]
            # each repetition against its own no-MC baseline
            extra[who, d] = [m - b for m, b in
                             zip(net_fig(cfg(d), 'p99'), base50)]
            extra50[who, d] = [m - b for m, b in
                               zip(net_fig(cfg(d), 'p50'), base50)]
            thr_ratio[who, d] = [100 * m / b for m, b in
                                 zip(net_fig(cfg(d), 'thr'),
                                     net_fig('no MC', 'thr'))]
    fo_cli = {who: [ms for _, c, ms, _, _ in rows['net_failover']
                    if c.startswith(who)] for who in ('MC', 'COLO')}
    fo_sil = {who: [ms for _, c, _, ms, _ in rows['net_failover']
                    if c.startswith(who)] for who in ('MC', 'COLO')}
    fo_bad = {who: sum(n for _, c, _, _, n in rows['net_failover']
                       if c.startswith(who)) for who in ('MC', 'COLO')}
    c_net_rate = {d: [x for _, c, x in rows['colo_net_rate']
                      if c == 'COLO delay %s' % d] for d in NET_DELAYS}
    cp = [p / 1000 for _, r, _, p in rows['colo_pause'] if r == 0]
    c_by_rate = {r: [p / 1000 for _, rr, _, p in rows['colo_pause']
                     if rr == r] for r in RATES}
    c_b, c_a = slope([(pg, p) for _, _, pg, p in rows['colo_pause']])
    c_ck0 = [x for _, x in rows['colo_rate0']]
    c_sd = [100 * (1 - m / n) for _, n, m in rows['colo_slowdown']]
    c_fo = [x for _, x in rows['colo_failover']]
    c_sec = [x for _, _, x in rows['colo_rss']]
    c_pri = [x for _, x, _ in rows['colo_rss']]

    def ratio(colo, mc, better_low=True):
        if not colo or not mc or not med(mc) or not med(colo):
            return 'n/a'
        r = med(colo) / med(mc) if better_low else med(mc) / med(colo)
        return 'MC %.1fx %s' % (r if r >= 1 else 1 / r,
                                'better' if r >= 1 else 'WORSE')

    def per_rep(samples, q):
        """The q-th percentile of each repetition's samples (ms)."""
        reps = {}
        for r, us in samples:
            reps.setdefault(r, []).append(us / 1000)
        return [pct(v, q) for _, v in sorted(reps.items())]

    idle_s = [(r, p) for r, rate, _, p in rows['pause'] if rate == 0]
    idle_p50, idle_p99 = per_rep(idle_s, 50), per_rep(idle_s, 99)
    c_idle_s = [(r, p) for r, rate, _, p in rows['colo_pause'] if rate == 0]
    colo_p50 = per_rep(c_idle_s, 50)
    colo_p99 = per_rep(c_idle_s, 99)
    nd_idle_s = [(r, p) for r, rate, _, p in rows['colo_nd_pause']
                 if rate == 0]
    nd_p50, nd_p99 = per_rep(nd_idle_s, 50), per_rep(nd_idle_s, 99)
    nd_ck0 = [x for _, x in rows['colo_nd_rate0']]

    def best(colo, nd, better_low=True):
        """The better of the two COLO columns, for the ratio."""
        if not nd or not colo:
            return colo or nd
        return min(colo, nd, key=med) if better_low else \
            max(colo, nd, key=med)

    # figure -> the COLO with TCP_NODELAY column
    nd_col = {}

    def with_max(per, pooled):
        return '%s; max %.2f' % (spread(per), max(pooled)) if pooled \
            else 'n/a'

    net_rows = []
    for what, fig, target, method in (
            ('extra latency p99', extra, {100: '<= 102 ms', 10: '<= 12 ms',
                                          1: '<= 3 ms',
                                          netbench.DEFAULTS: '<= 3 ms'},
             'request/echo every 5 ms, %d per repetition: p99 with MC or '
             'COLO - p50 of no MC (the same guest without either)'
             % NET_RTTS),
            ('extra latency p50', extra50, {netbench.DEFAULTS: '<= 1.0 ms'},
             'p50 with MC or COLO - p50 of no MC'),
            ('extra latency p99, replies with the guest clock', ndx, {},
             'the same requests answered with the guest\'s clock (they '
             'differ between two runs of the guest: colo-compare cannot '
             'match them)'),
            ('extra latency p50, replies with the guest clock', ndx50, {},
             'same'),
            ('TCP throughput', thr_ratio, {10: '>= 50 %',
                                           netbench.DEFAULTS: '>= 60 %'},
             '%d MiB guest->client, %% of no MC' % (NET_BULK >> 20))):
        for i, d in enumerate(NET_DELAYS):
            mc, colo, nd = fig['MC', d], fig['COLO', d], fig['ND', d]
            fmt = '%.1f' if fig is thr_ratio else '%.2f'
            low = fig is not thr_ratio
            cmp = ratio(best(colo, nd, low), mc, low) if colo or nd else ''
            if d in target:
                cmp += ('; ' if cmp else '') + 'target ' + target[d]
            name = '%s %s (%s)' % (
                what, 'at the defaults (output-triggered)'
                if d == netbench.DEFAULTS else 'at delay %d' % d,
                '%' if fig is thr_ratio else 'ms')
            nd_col[name] = spread(nd, fmt) if nd else 'not run'
            net_rows.append((name, spread(mc, fmt), spread(colo, fmt)
                             if colo else 'not run', cmp,
                             method if i == 0 else 'same'))

    nd_col['VM pause per checkpoint, idle, p50 (ms)'] = spread(nd_p50)
    nd_col['VM pause per checkpoint, idle, p99 (ms); max of all'] = \
        with_max(nd_p99, [p / 1000 for _, p in nd_idle_s])
    nd_col['checkpoints per second, idle, delay 0 (COLO: 1 ms)'] = \
        spread(nd_ck0, '%.0f')

    table = [
        ('VM pause per checkpoint, idle, p50 (ms)', spread(idle_p50),
         spread(colo_p50), ratio(best(colo_p50, nd_p50), idle_p50) +
         '; target <= 0.5 ms, >= 50x COLO',
         'MC: mc_checkpoint_take trace; COLO: stop->run trace; both '
         'at 100 ms, %d s x %d' % (measure_s, repeat)),
        ('VM pause per checkpoint, idle, p99 (ms); max of all',
         with_max(idle_p99, idle), with_max(colo_p99, cp),
         ratio(best(colo_p99, nd_p99), idle_p99) + '; target p99 <= 2 ms',
         'same samples'),
        ('pause growth per dirty 4 KiB page (us)', '%.3f (fixed %.2f ms)' % (
            b, a / 1000), '%.3f (fixed %.2f ms)' % (c_b, c_a / 1000),
         (ratio([c_b], [b]) if c_b > 0 else
          'COLO: no growth (its pause is its waits for the secondary)') +
         '; target <= 0.5 us',
         'least squares over all checkpoints at %s pages/s (COLO: pages '
         'from its dirty-log sync trace)' % (
             ', '.join(str(r) for r in RATES))),
        ('checkpoints per second, idle, delay 0 (COLO: 1 ms)',
         spread(ck0, '%.0f'),
         spread(c_ck0, '%.0f'), ratio(best(c_ck0, nd_ck0, False), ck0,
                                      False) +
         '; target >= 2500', 'acknowledged (MC) / sent (COLO) over %.0f s'
         % (measure_s / 2)),
        ('guest slowdown, flat-out dirtying, delay 100 (%)',
         spread(sd100, '%.1f'), spread(c_sd, '%.1f'), 'target <= 10 %',
         'mc-dirty (8 MiB, flat out) pages per host second vs none'),
        ('guest slowdown, mc-delay 10 (%)', spread(sd10, '%.1f'), '', '',
         'same'),
    ] + net_rows + [
        ('COLO checkpoints per second during the network test, delay '
         + ' / '.join(str(d) for d in COLO_NET_DELAYS), '',
         ' / '.join(spread(c_net_rate[d], '%.1f') for d in COLO_NET_DELAYS),
         '', 'sent by the COLO primary during that test: the periodic ones '
         'and those colo-compare forces on an output difference'),
        ('failover: kill -> takeover event (ms)', spread(fo_ev, '%.0f'),
         spread(c_fo, '%.0f'), ratio(c_fo, fo_ev),
         'MC: detects alone (MC_FAILOVER); COLO: management sends '
         'x-colo-lost-heartbeat at once (COLO_EXIT)'),
        ('failover: kill -> next record at the client (ms)',
         spread(fo_rec, '%.0f'), '', 'target <= 100 ms after detection',
         'MC only: client in its own namespace, records every 20 ms '
         '(COLO would force a checkpoint on each: its records differ)'),
        ('failover: kill -> the client is answered again (ms), delay 10',
         spread(fo_cli['MC'], '%.0f'), spread(fo_cli['COLO'], '%.0f'),
         ratio(fo_cli['COLO'], fo_cli['MC']) +
         '; client problems MC %d, COLO %d' % (fo_bad['MC'],
                                              fo_bad['COLO']),
         'a request every 10 ms; the end of the longest silence between '
         'answers that ends after the kill; COLO: management runs '
         'x-colo-lost-heartbeat and removes the redirectors at once '
         '(COLO-FT.txt)'),
        ('failover: that silence, as the client sees it (ms)',
         spread(fo_sil['MC'], '%.0f'), spread(fo_sil['COLO'], '%.0f'),
         ratio(fo_sil['COLO'], fo_sil['MC']), 'same'),
        ('standby RSS (MiB), guest %d MiB' % MEM_MIB, spread(sb_rss, '%.0f'),
         spread(c_sec, '%.0f'), ratio(c_sec, sb_rss) +
         '; target <= guest + buffer + 64', 'VmRSS at steady state'),
        ('primary RSS (MiB)', spread(pr_rss, '%.0f'), spread(c_pri, '%.0f'),
         ratio(c_pri, pr_rss), 'same'),
    ]
    with open(os.path.join(TOP, 'docs', 'benchmarks.md'), 'w') as f:
        f.write('# Benchmarks\n\nWritten by `make bench` (`bench/run.py`) '
                'on %s, %d repetitions, in %.0f min.\nLinux test guest, %s, '
                'TCG, on this machine (%d CPUs); medians, (min..max) over '
                'repetitions.\nRaw data: `docs/bench/*.csv`.\n\n' % (
                    run['date'], repeat, run['minutes'], run['guest'],
                    run['cpus']))
        if run.get('net_only'):
            f.write('The network rows (latency, throughput, network '
                    'failover) were measured again with `bench/run.py '
                    '--net-only` on %s.\n\n' % run['net_only'])
        f.write('| figure | MC | COLO | COLO, TCP_NODELAY | ratio (to the '
                'better COLO) / target | method |\n'
                '|---|---|---|---|---|---|\n')
        for row in table:
            f.write('| %s |\n' % ' | '.join(
                row[:3] + (nd_col.get(row[0], ''),) + row[3:]))
        f.write('\nPlain precopy migration of the same guest (peer): idle '
                'total %s ms, downtime %s ms; dirtying 5000 pages/s total '
                '%s ms, downtime %s ms.\n' % (
                    spread(pre_total, '%.0f'), spread(pre_down, '%.0f'),
                    spread(pre_total5, '%.0f'), spread(pre_down5, '%.0f')))
        f.write('\nPause by dirty rate, mc-delay / x-checkpoint-delay 100 '
                '(ms; all repetitions pooled; pages: per checkpoint, '
                'mean):\n\n'
                '| pages/s | MC pages | MC p50 | MC p99 | MC max | MC n '
                '| COLO pages | COLO p50 | COLO p99 | COLO max | COLO n |\n'
                '|---|---|---|---|---|---|---|---|---|---|---|\n')
        for r in RATES:
            v, c = by_rate[r], c_by_rate[r]
            mpg = [pg for _, rr, pg, _ in rows['pause'] if rr == r]
            cpg = [pg for _, rr, pg, _ in rows['colo_pause'] if rr == r]
            f.write('| %d | %s | %s | %s | %s |\n' % (
                r, '%.0f' % (sum(mpg) / len(mpg)) if mpg else 'n/a',
                ' | '.join('%.2f' % x for x in (
                    pct(v, 50), pct(v, 99), max(v))) + ' | %d' % len(v)
                if v else 'n/a | n/a | n/a | 0',
                '%.0f' % (sum(cpg) / len(cpg)) if cpg else 'n/a',
                ' | '.join('%.2f' % x for x in (
                    pct(c, 50), pct(c, 99), max(c))) + ' | %d' % len(c)
                if c else 'n/a | n/a | n/a | 0'))
        f.write(phase_section(rows['phases']))
        f.write(cpu_section(rows['cpu']))
        f.write(disk_section(rows['disk']))
        f.write(copybench.section(rows['copy']))
        f.write(linkbench.section(rows['link'], rows['link_net']))
        # the KVM lab's figures (make lab-bench, lab-bench-rdma), those
        # of the output trigger (bench/triggerbench.py --all) and of the
        # switchover (bench/switchbench.py), of checkpoint-mode migration
        # (bench/cpmbench.py) and of the cluster (make check-cluster),
        # kept as they were written
        for name in ('output-trigger.md', 'kvm-lab.md', 'rdma-lab.md',
                     'switchover.md', 'migration-modes.md', 'cluster.md'):
            lab = os.path.join(TOP, 'docs', 'bench', name)
            if os.path.exists(lab):
                with open(lab) as lf:
                    f.write('\n' + lf.read())
        f.write('\n![pause against dirty pages](bench/pause.png)\n'
                '![round-trip time](bench/latency.png)\n')
        f.write('\nCOLO runs with patches/colo-hold-bql-for-ram-save.patch '
                '(without it its primary deadlocks under TCG) in its '
                'documented setup (docs/COLO-FT.txt) on -machine pc, '
                'without disks (but for the guest disk figures above): '
                'without a NIC for the pause, rate, '
                'slowdown and memory figures, with the colo-compare proxy '
                '(filter-mirror, filter-redirector, filter-rewriter, '
                'vnet_hdr_support for virtio-net) for the network ones. '
                'Both run on -machine pc here. The COLO secondary runs the '
                'guest too, on the same 2 CPUs. colo-compare lets a reply '
                'of the primary out when the secondary has sent the same '
                'bytes, or when a checkpoint flushes it (it forces one on '
                'a difference); the secondary is stopped while it loads '
                'each checkpoint. MC holds a reply until the checkpoint '
                'after it is acknowledged. The "COLO" column is COLO as '
                'shipped (-global migration.x-colo-tcp-nodelay=off): '
                'Nagle plus delayed ACKs hold two small messages per '
                'checkpoint about 40 ms each. "COLO, TCP_NODELAY" is the '
                'same binary with patches/colo-tcp-nodelay.patch on '
                '(the default) and nodelay=on on the proxy chardevs; '
                'ratios compare MC with the better of the two.\n')
    plot('pause', """set terminal pngcairo size 800,500
set output 'pause.png'
set datafile separator ','
set xlabel 'dirty pages in the checkpoint'
set ylabel 'VM pause (ms)'
set logscale y
set key left top
plot 'pause.csv' every ::1 using 3:($4/1000) with points pt 7 ps 0.4 \\
  title 'MC, every checkpoint', \\
  'colo-pause.csv' every ::1 using 3:($4/1000) with points pt 5 ps 0.4 \\
  title 'COLO, every checkpoint'
""")
    # latency distributions: one CDF file per configuration
    series = []
    for cfg in net:
        rtts = sorted(x for rtts, _ in net[cfg].values() for x in rtts)
        fn = 'latency-%s.dat' % cfg.replace(' ', '-')
        with open(os.path.join(OUT, fn), 'w') as f:
            for i, x in enumerate(rtts):
                f.write('%.3f %.4f\n' % (x, (i + 1) / len(rtts)))
        series.append("'%s' using 1:2 with lines title '%s'" % (fn, cfg))
    plot('latency', """set terminal pngcairo size 800,500
set output 'latency.png'
set xlabel 'round-trip time (ms)'
set ylabel 'fraction of requests'
set logscale x
set key left top
plot %s
""" % ', '.join(series))
    print(open(os.path.join(TOP, 'docs', 'benchmarks.md')).read())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--report', action='store_true',
                    help='only rewrite docs/benchmarks.md and the plots '
                    'from the raw data of the last run (docs/bench)')
    ap.add_argument('--copy-only', action='store_true',
                    help='measure only the copy figures (bench/'
                    'copybench.py), then rewrite the report with them and '
                    'the raw data of the last run')
    ap.add_argument('--net-only', action='store_true',
                    help='measure only the network figures (bench/'
                    'netbench.py, MC and both COLOs), then rewrite the '
                    'report with them and the raw data of the last run')
    ap.add_argument('--link-only', action='store_true',
                    help='measure only the figures over shaped links '
                    '(bench/linkbench.py), then rewrite the report with '
                    'them and the raw data of the last run')
    ap.add_argument('--disk-only', action='store_true',
                    help='measure only the disk figures (bench/'
                    'diskbench.py), then rewrite the report with them and '
                    'the raw data of the last run')
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.disk_only:
        disk = measure_disk()
        print(diskbench.table(disk))
        if not os.path.exists(os.path.join(OUT, 'run.json')):
            return
    if a.link_only:
        link, link_net = [], []
        linkbench.run_all(link, link_net)
        linkbench.write(link, link_net)
        print(linkbench.report(link, link_net))
        if not os.path.exists(os.path.join(OUT, 'run.json')):
            return
    if a.copy_only:
        print(copybench.report(measure_copy()))
        if not os.path.exists(os.path.join(OUT, 'run.json')):
            return
    if a.net_only:
        net = {'net': [], 'net_failover': [], 'colo_net_rate': []}
        for rep in range(REPEAT):
            print('== repetition %d of %d' % (rep + 1, REPEAT), flush=True)
            measure_net(rep, net)
        for key, name, header in CSVS:
            if key in net:
                write_csv(name, header, net[key])
    if a.report or a.disk_only or a.copy_only or a.net_only or a.link_only:
        rows = {k: load_csv(name) for k, name, _ in CSVS}
        with open(os.path.join(OUT, 'run.json')) as f:
            run = json.load(f)
        if a.net_only:
            run['net_only'] = time.strftime('%Y-%m-%d %H:%M')
            with open(os.path.join(OUT, 'run.json'), 'w') as f:
                json.dump(run, f, indent=1)
    else:
        rows, run = measure()
    report(rows, run)


if __name__ == '__main__':
    main()
