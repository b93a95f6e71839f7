#!/usr/bin/env python3
"""The main job: a protected VM pair on this machine, failover shown.

A primary and a standby QEMU run the Linux test guest under TCG, each
with a tap NIC on one bridge in a network namespace (tests/mc/mcnet.py);
a client in another namespace holds a TCP connection to the guest's
record server: a numbered stream plus echoes of its own numbered
requests.  A memory-dirtying workload runs in the guest, and a writer
appends numbered, checksummed records to an ext4 disk with fsync,
telling a second client each committed number.  The standby starts on an
empty image: MC copies the disk, then carries every write in the
checkpoints.  MC runs for a while; then the primary is killed with
SIGKILL, the standby carries on, and the client's connection continues:
no reset, no gap, no duplicate; every record the writer's client was
told about is on the standby's disk, and e2fsck finds it clean.

Prints checkpoints, VM pause p50/p99, data sent, output held, the time
from the kill to MC_FAILOVER and to the next record the client got.
Needs root (namespaces, bridge, taps).
"""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'tests', 'mc'))
from mcnet import Topology, Pair, problems  # noqa: E402
from mcvm import Skip, workdir  # noqa: E402
from mcdisk import (Disk, DiskClient, MOUNT, WRITER_PORT,  # noqa: E402
                    client_problems, fsck, make_empty_image, make_fs_image,
                    need_tools)

RUN_SECONDS = float(os.environ.get('MC_DEMO_SECONDS', '15'))
DELAY_MS = int(os.environ.get('MC_DEMO_DELAY', '100'))
DIRTY = os.environ.get('MC_DEMO_DIRTY', '5000')


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1,
                      int(round(p / 100 * (len(values) - 1))))]


def main():
    wd = workdir('demo')
    trace = os.path.join(wd, 'primary-trace.log')
    events = os.path.join(wd, 'trace-events')
    with open(events, 'w') as f:
        f.write('mc_checkpoint_take\n')
    app = 'mc.dirty=16,%s' % DIRTY if DIRTY != '0' else ''
    app += ' mc.disk=%s mc.diskwriter=%d,20' % (MOUNT, WRITER_PORT)
    print('== network: client netns, bridge, taps of primary and standby')
    try:
        need_tools()
        topo = Topology()
    except Skip as e:
        print('cannot run the demo: %s' % e)
        return 1
    pair = None
    client = dclient = None
    try:
        p_img = make_fs_image(os.path.join(wd, 'primary.qcow2'), 'qcow2')
        s_img = make_empty_image(os.path.join(wd, 'standby.qcow2'), 'qcow2')
        print('== disk: the primary on an ext4 image, the standby on an '
              'empty one of the same size (qcow2)')
        print('== starting the primary and the standby (work dir %s)' % wd)
        pair = Pair(topo, wd, delay=DELAY_MS, trace=(events, trace), app=app,
                    hb_timeout=2000, role_args={
                        'primary': Disk(p_img, 'qcow2').args(),
                        'standby': Disk(s_img, 'qcow2').args()})
        print('== guest up; migrate with capability mc, mc-delay %d ms'
              % DELAY_MS)
        pair.start_mc()
        client = topo.client(os.path.join(wd, 'client'), interval=20)
        dclient = DiskClient(topo, os.path.join(wd, 'disk-client'))
        print('== protected; a client streams records and echoes for %.0f s'
              % RUN_SECONDS)
        n0, t0 = pair.mc()['checkpoints'], time.time()
        time.sleep(RUN_SECONDS)
        mc = pair.mc()
        rate = (mc['checkpoints'] - n0) / (time.time() - t0)
        print(pair.primary.qmp.hmp('info mc'), end='')

        n_kill = client.last_srv()
        d_kill = dclient.last_ok()
        print('== kill -9 the primary (the client has record %d, the disk '
              'writer\'s client was told of record %d)' % (n_kill, d_kill))
        t_kill = time.time()
        pair.primary.kill(signal.SIGKILL)
        ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=60)
        t_event = time.time()
        print('== standby: %s %s' % (ev['event'], ev['data']))
        evs = client.wait(lambda evs: any(
            e['ev'] == 'srv' and e['t'] > t_kill for e in evs), timeout=60)
        t_next = [e['t'] for e in evs if e['ev'] == 'srv' and e['t'] > t_kill][0]
        time.sleep(3)
        verdict = dclient.verify()
        d_evs = dclient.stop()
        evs = client.stop()
        srv = [e for e in evs if e['ev'] == 'srv']
        echoes = [e for e in evs if e['ev'] == 'echo']
        bad = problems(evs)

        with open(trace) as f:
            pauses = [int(x) for x in re.findall(r'pause (\d+) us', f.read())]
        print('\n== summary')
        print('checkpoints taken %d, acknowledged %d (%.1f per second), '
              'data sent %.1f MiB' % (mc['checkpoints'], mc['acked'], rate,
                                      mc['bytes'] / 2**20))
        if pauses:
            print('VM pause per checkpoint: p50 %.2f ms, p99 %.2f ms, '
                  'max %.2f ms (%d samples)' % (
                      percentile(pauses, 50) / 1000,
                      percentile(pauses, 99) / 1000, max(pauses) / 1000,
                      len(pauses)))
        print('guest output held until acknowledged: %d packets released, '
              'held %.1f ms on average' % (mc['net-released-packets'],
                                           mc['net-hold-avg-us'] / 1000))
        print('failover: kill -> MC_FAILOVER %.0f ms, kill -> next record '
              'at the client %.0f ms' % ((t_event - t_kill) * 1000,
                                         (t_next - t_kill) * 1000))
        print('client: one TCP connection, records 1..%d in order (%d after '
              'the kill), %d echoes, problems: %s' % (
                  srv[-1]['n'] if srv else 0, len(srv) - n_kill, len(echoes),
                  bad or 'none'))
        st = pair.standby.qmp.cmd('query-status')['status']
        print('standby run state: %s' % st)
        pair.standby.kill()
        rc, out = fsck(s_img, 'qcow2')
        d_bad = client_problems(d_evs)
        disk_ok = (verdict is not None and verdict['bad'] == 0 and
                   verdict['torn'] == 0 and verdict['last'] >= d_kill and
                   verdict['records'] == verdict['last'] and rc == 0 and
                   not d_bad)
        print('disk: %.1f MiB copied at start, %d writes carried in '
              'checkpoints; record %d reported before the kill; on the '
              'standby\'s disk after failover: %s; e2fsck %s; writer\'s '
              'client problems: %s' % (
                  mc['disk-initial-bytes'] / 2**20, mc['disk-writes'],
                  d_kill, '%d records, %d bad, %d torn' % (
                      verdict['records'], verdict['bad'], verdict['torn'])
                  if verdict else 'no answer', 'clean' if rc == 0 else
                  'exit %d: %s' % (rc, ' '.join(out)[-300:]), d_bad or 'none'))
        ok = st == 'running' and not bad and len(srv) > n_kill and disk_ok
        print('DEMO %s' % ('OK' if ok else 'FAILED'))
        return 0 if ok else 1
    finally:
        if dclient:
            dclient.stop()
        if client:
            client.stop()
        if pair:
            pair.close()
        topo.close()


if __name__ == '__main__':
    sys.exit(main())
