#!/usr/bin/env python3
"""MC over RDMA against MC over TCP, in the KVM lab (soft-RoCE, nested:
ratios only).

Run inside the lab by make lab-bench-rdma (tests/lab/lab.py --shell
'python3 bench/rdmabench.py'), then rdmabench.py --from-log LOG on the
host writes docs/bench/rdma-lab.md, which bench/run.py puts into
docs/benchmarks.md.  Both links are local to the lab VM: TCP over its
loopback, RDMA over rdma_rxe on a dummy interface (soft-RoCE is a CPU
emulation of RoCE: both are CPU copies here, no adapter does any work),
so the figures say what MC's RDMA channel costs against TCP on the same
CPUs, not what RDMA hardware would give.

For each transport a fresh pair of KVM test guests (256 MiB) runs MC
for SECONDS at mc-delay 0 (as many checkpoints as the link takes) and
at mc-delay 100, while mc-dirty writes 20,000 pages/s over 64 MiB:
checkpoints/s, MB/s sent, pause and transfer (query-migrate, averages
over the run), and each QEMU's CPU (all its threads, % of one CPU) and
the primary's CPU per MB sent.  Then upstream's precopy of the same
guest (no MC) over TCP and over upstream's RDMA: total time.
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, 'tests', 'mc'))
sys.path.insert(0, HERE)

from mcnet import Pair, Topology  # noqa: E402
from mcvm import workdir  # noqa: E402
from netbench import cpu_s  # noqa: E402

SECONDS = int(os.environ.get('MC_RDMA_BENCH_SECONDS', '8'))
APP = 'mc.dirty=64,20000'
HEAD = ['| link | mc-delay | checkpoints/s | MB/s sent | pause avg us | '
        'transfer avg us | CPU primary % | CPU standby % | '
        'primary CPU ms per MB |',
        '|---|---|---|---|---|---|---|---|---|']
PRECOPY_HEAD = ['| precopy (no MC), 256 MiB guest | total ms |',
                '|---|---|']


def snap(pair):
    mc = pair.mc()
    return {'t': time.time(), 'n': mc['checkpoints'], 'bytes': mc['bytes'],
            'pause': mc['pause-avg-us'] * mc['checkpoints'],
            'xfer': mc['transfer-avg-us'] * mc['checkpoints'],
            'cp': cpu_s(pair.primary.proc.pid),
            'cs': cpu_s(pair.standby.proc.pid)}


def mc_rows(link):
    rows = []
    topo = Topology()
    pair = None
    try:
        pair = Pair(topo, workdir('rdmabench'), delay=100, app=APP,
                    rdma=link == 'rdma', tcpserv_ms=0)
        pair.start_mc()
        for delay in (0, 100):
            pair.primary.qmp.cmd('migrate-set-parameters', **{
                'mc-delay': delay, 'mc-output-latency': 0})
            time.sleep(1)
            a = snap(pair)
            time.sleep(SECONDS)
            b = snap(pair)
            dt = b['t'] - a['t']
            n = max(b['n'] - a['n'], 1)
            mb = (b['bytes'] - a['bytes']) / 1e6
            rows.append('| %s | %d | %.0f | %.1f | %.0f | %.0f | %.0f | %.0f '
                        '| %.1f |' % (
                            link, delay, n / dt, mb / dt,
                            (b['pause'] - a['pause']) / n,
                            (b['xfer'] - a['xfer']) / n,
                            100 * (b['cp'] - a['cp']) / dt,
                            100 * (b['cs'] - a['cs']) / dt,
                            1000 * (b['cp'] - a['cp']) / max(mb, 1e-9)))
            print(rows[-1], flush=True)
    finally:
        if pair:
            pair.close()
        topo.close()
    return rows


def precopy_row(link):
    topo = Topology()
    pair = None
    try:
        pair = Pair(topo, workdir('rdmabench-pre'), mc=False, app=APP,
                    rdma=link == 'rdma', tcpserv_ms=0)
        if link == 'rdma':
            pair.standby.qmp.cmd('migrate-incoming', uri=pair.uri())
        pair.primary.qmp.cmd('migrate', uri=pair.uri())
        deadline = time.time() + 300
        while True:
            info = pair.primary.qmp.cmd('query-migrate')
            if info.get('status') in ('completed', 'failed'):
                break
            assert time.time() < deadline, info
            time.sleep(0.1)
        row = '| %s (upstream%s) | %s |' % (
            link, "'s RDMA" if link == 'rdma' else '',
            info.get('total-time', info.get('status')))
        print(row, flush=True)
        return row
    finally:
        if pair:
            pair.close()
        topo.close()


def from_log(log, out):
    """Host side: the tables the lab printed, as docs/bench/rdma-lab.md."""
    with open(log, errors='replace') as f:
        lines = [line for line in f.read().splitlines()
                 if line.startswith('|')]
    # printed whole at the end: keep the last copy of each table
    a = max(i for i, line in enumerate(lines) if line == HEAD[0])
    b = max(i for i, line in enumerate(lines) if line == PRECOPY_HEAD[0])
    with open(out, 'w') as f:
        f.write('## MC over RDMA, in the lab (soft-RoCE, nested: ratios '
                'only)\n\n'
                'Written by `make lab-bench-rdma` (`bench/rdmabench.py`) '
                'on %s. KVM guests of 256 MiB with mc-dirty at 20,000 '
                'pages/s over 64 MiB, %d s per row, in the lab VM that '
                'this host runs under TCG. Both links are local to that '
                'VM: TCP over its loopback, RDMA over rdma_rxe (soft-'
                'RoCE, a CPU emulation) on a dummy interface, so the '
                'figures compare MC\'s RDMA channel with TCP on the same '
                'CPUs, not with RDMA hardware. CPU: all threads of each '
                'QEMU (the vCPU included).\n\n' % (
                    time.strftime('%Y-%m-%d'), SECONDS))
        f.write('\n'.join(lines[a:b]) + '\n\n')
        f.write('\n'.join(lines[b:]) + '\n')
    print(open(out).read())
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == '--from-log':
        return from_log(sys.argv[2], os.path.join(TOP, 'docs', 'bench',
                                                  'rdma-lab.md'))
    rows = mc_rows('tcp') + mc_rows('rdma')
    pre = [precopy_row('tcp'), precopy_row('rdma')]
    print('\n'.join(HEAD + rows))
    print('\n'.join(PRECOPY_HEAD + pre))
    return 0


if __name__ == '__main__':
    sys.exit(main())
