#!/usr/bin/env python3
"""MC's pause with KVM guests, in the KVM lab (nested: ratios only).

Run inside the lab by make lab-bench (tests/lab/lab.py --shell
'python3 bench/labbench.py', then labbench.py --from-log LOG on the host
writes docs/bench/kvm-lab.md, which bench/run.py puts into
docs/benchmarks.md): every instruction there is emulated by
TCG, so its figures mean something only against each other, never
against the host's.  For each configuration a fresh pair of the test
guest runs MC at mc-delay 100 for SECONDS while mc-dirty writes RATE
pages/s; the pause of each checkpoint comes from the primary's trace
(mc_checkpoint_take).  The baseline is the same guest stopped and
started by QMP (stop, cont sent together; from the first command to
the second reply), the pause any plain save would need at least.

Configurations: KVM's dirty bitmap and dirty ring at 2,000 and 20,000
dirty pages/s with 256 MiB of guest RAM, and the same dirty set with
2 GiB.  Prints one table (medians and p99 in us, ratios against
stop+cont, and the median time each checkpoint spent harvesting the
dirty log).  MC_LAB_BENCH_ONLY=TEXT runs the configurations whose label
holds TEXT.
"""

import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, 'tests', 'mc'))
sys.path.insert(0, HERE)

from mctrace import harvests, takes  # noqa: E402
from mcnet import Pair, Topology  # noqa: E402
from mcvm import VM, guest_args, workdir  # noqa: E402
import mcvm  # noqa: E402

SECONDS = int(os.environ.get('MC_LAB_BENCH_SECONDS', '8'))
RING = 'kvm,dirty-ring-size=4096'
CONFIGS = [  # (label, accel, guest RAM, dirty pages/s)
    ('bitmap 256M 2000', 'kvm', '256M', 2000),
    ('ring 256M 2000', RING, '256M', 2000),
    ('bitmap 256M 20000', 'kvm', '256M', 20000),
    ('ring 256M 20000', RING, '256M', 20000),
    ('bitmap 2G 2000', 'kvm', '2G', 2000),
    ('ring 2G 2000', RING, '2G', 2000),
    ('bitmap 2G 20000', 'kvm', '2G', 20000),
    ('ring 2G 20000', RING, '2G', 20000),
]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def stop_cont(accel, mem, n=40):
    """Microseconds from sending stop+cont to cont's reply, n times."""
    mcvm.ACCEL = accel
    wd = workdir('labbench-sc')
    vm = VM('plain', guest_args('mc.dirty=16,2000', mem=mem), wd)
    out = []
    try:
        vm.wait_serial('mc-guest: ready', timeout=120)
        time.sleep(2)
        q = vm.qmp
        for _ in range(n):
            t = time.monotonic()
            q.sock.sendall(b'{"execute":"stop"}\n{"execute":"cont"}\n')
            got = 0
            while got < 2:
                if 'return' in q._read():
                    got += 1
            out.append((time.monotonic() - t) * 1e6)
            time.sleep(0.05)
    finally:
        vm.quit()
    return out


def mc_pauses(accel, mem, rate):
    mcvm.ACCEL = accel
    wd = workdir('labbench')
    trace = os.path.join(wd, 'primary.trace')
    events = os.path.join(wd, 'events')
    with open(events, 'w') as f:
        f.write('mc_checkpoint_take\nmc_checkpoint_phases\n')
    topo = Topology()
    pair = None
    try:
        pair = Pair(topo, wd, delay=100, mem=mem, trace=(events, trace),
                    app='mc.dirty=64,%d,steady' % rate)
        pair.start_mc()
        first = pair.mc()['checkpoints'] + 5
        time.sleep(SECONDS)
        last = pair.mc()['checkpoints']
        polls = pair.mc().get('pause-polls')
    finally:
        if pair:
            pair.close()
        topo.close()
    rows = takes(trace, first, last)
    return ([r[2] for r in rows], [r[0] for r in rows], polls,
            harvests(trace, first, last))


def from_log(log, out):
    """Host side (make lab-bench): the table the lab printed, from its
    console log, as docs/bench/kvm-lab.md."""
    with open(log, errors='replace') as f:
        text = f.read()
    table = [line for line in text.splitlines() if line.startswith('|')]
    # the table is printed whole at the end: keep its last copy
    head = max(i for i, line in enumerate(table)
               if line.startswith('| configuration'))
    with open(out, 'w') as f:
        f.write('## KVM, in the lab (nested: ratios only)\n\n'
                'Written by `make lab-bench` (`bench/labbench.py`) on %s. '
                'KVM guests (256 MiB or 2 GiB, mc-delay 100, mc-dirty '
                'at 2,000 or 20,000 pages/s over 64 MiB) in the lab VM, '
                'which this host runs under TCG: every figure is nested, '
                'compare it only with the others here. Pause of each '
                'checkpoint from the primary\'s trace, %d s per row; '
                'stop+cont: QMP stop and cont sent together to the same '
                'guest without MC, from the first command to the second '
                'reply (median of 40).\n\n' % (
                    time.strftime('%Y-%m-%d'), SECONDS))
        f.write('\n'.join(table[head:]) + '\n')
    print(open(out).read())
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == '--from-log':
        return from_log(sys.argv[2], os.path.join(TOP, 'docs', 'bench',
                                                  'kvm-lab.md'))
    lines = ['| configuration | checkpoints | dirty pages (median) | '
             'pause p50 us | pause p99 us | stop+cont p50 us | '
             'MC p50 / stop+cont | harvest p50 us | pause-polls |',
             '|---|---|---|---|---|---|---|---|---|']
    base = {}
    only = os.environ.get('MC_LAB_BENCH_ONLY')
    for label, accel, mem, rate in CONFIGS:
        if only and only not in label:
            continue
        key = (accel, mem)
        if key not in base:
            base[key] = statistics.median(stop_cont(accel, mem))
        pauses, pages, polls, harvest = mc_pauses(accel, mem, rate)
        if not pauses:
            lines.append('| %s | 0 | | | | | | | |' % label)
            continue
        p50 = statistics.median(pauses)
        lines.append('| %s | %d | %d | %d | %d | %d | %.2f | %s | %s |' % (
            label, len(pauses), statistics.median(pages), p50,
            pct(pauses, 99), base[key], p50 / base[key],
            int(statistics.median(harvest)) if harvest else '', polls))
        print(lines[-1], flush=True)
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
