"""MC over RDMA: the migration channel on soft-RoCE (rdma_rxe).

With the mc capability both ends of an rdma: URI use MC's own RDMA
channel (migration/mc-rdma.c): precopy, the disk handshake and the
checkpoints go over one reliable RDMA connection.  These need the
kernel's rdma_rxe, which this host lacks: they skip here and run in the
lab (tests/lab), where the lab smoke runs them with KVM guests.

- the standby's memory equals the primary's after checkpoints;
- kill -9 of the primary under a client's TCP stream: the standby takes
  over, the stream goes on with no gap, no reset, no duplicate;
- kill -9 of the primary under the disk writer: every acknowledged
  record on the standby's disk, e2fsck clean;
- kill -9 of the standby: the primary releases what it held and runs on;
- a standby that stops reading (SIGSTOP): the primary does not wedge;
- the link set down under the safe policy: the standby waits;
- a standby that listens with upstream's RDMA (mc off when it started
  listening) refuses MC's connection, and the primary says why.
"""

import os
import shutil
import signal
import time

from mcnet import Pair, Topology, sh
from mcvm import workdir
from test_consistency import memory_after_checkpoints
from test_disk import describe, kill_run
from test_net import failover_run, problems, setup, srv_count, teardown

RUN_S = 5
MEM = 256 << 20


def test_rdma_memory():
    """Checkpoints over RDMA: the standby's RAM equals the primary's."""
    wd = workdir('rdmamem')
    topo = Topology()
    pair = client = None
    try:
        pair = Pair(topo, wd, delay=50, app='mc.dirty=16,5000', rdma=True)
        pair.start_mc()
        client = topo.client(os.path.join(wd, 'client'), interval=10)
        time.sleep(RUN_S)
        mc = pair.mc()
        print('over RDMA: %d checkpoints, %d bytes, pause avg %d us'
              % (mc['checkpoints'], mc['bytes'], mc['pause-avg-us']))
        pair.primary.qmp.cmd('stop')
        diff, applied = memory_after_checkpoints(pair, wd, MEM)
        assert applied > RUN_S * 5, applied
        assert not diff, diff
    finally:
        if client:
            client.stop()
        if pair:
            pair.close()
        topo.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_rdma_failover_kill_primary():
    """kill -9 the primary mid-stream, the link is RDMA: the client's
    TCP connection goes on with the standby as over TCP."""
    evs, n_kill, oops = failover_run('rdmafailover', True, 100, rdma=True)
    assert not oops, oops
    assert not problems(evs), problems(evs)
    assert srv_count(evs) >= n_kill + 150, srv_count(evs)


def standby_lost_run(name, stop, **kw):
    """With a client's stream running, @stop(pair) ends or freezes the
    standby: the primary declares it lost (MC_FAILOVER), releases what
    it held and runs on, the stream intact.  Returns the pair's MC
    statistics just after the event."""
    wd, topo, pair = setup(name, rdma=True, **kw)
    client = None
    try:
        pair.start_mc()
        client = topo.client(os.path.join(wd, 'client'))
        client.wait(lambda evs: srv_count(evs) >= 20)
        stop(pair)
        ev = pair.primary.qmp.wait_event('MC_FAILOVER', timeout=30)
        assert ev['data']['role'] == 'primary', ev
        mc = pair.mc()
        n0 = client.count()
        client.wait(lambda evs: srv_count(evs) >= n0 + 50)
        assert pair.mc()['net-held-packets'] == 0, pair.mc()
        evs = client.stop()
        client = None
        assert not problems(evs), problems(evs)
        return mc
    finally:
        teardown(wd, topo, pair, [client] if client else [])


def test_rdma_standby_killed():
    """kill -9 the standby: the primary sees the RDMA connection go and
    runs on unprotected, its held output released."""
    standby_lost_run('rdmastandby',
                     lambda pair: pair.standby.kill(signal.SIGKILL))


def test_rdma_upstream_listener_refuses():
    """A standby that listened before mc was on has upstream's RDMA
    listener: MC's connection is refused, with a message that says
    how to start the standby."""
    wd = workdir('rdmarefused')
    topo = Topology()
    pair = None
    try:
        pair = Pair(topo, wd, rdma=True, mc=False)
        for vm in (pair.primary, pair.standby):
            vm.qmp.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'mc', 'state': vm is pair.primary}])
        pair.standby.qmp.cmd('migrate-incoming', uri=pair.uri())
        err = None
        try:
            pair.primary.qmp.cmd('migrate', uri=pair.uri())
        except Exception as e:          # noqa: B902 QMPError
            err = str(e)
        if err is None:
            deadline = time.time() + 30
            while True:
                info = pair.primary.qmp.cmd('query-migrate')
                if info.get('status') == 'failed':
                    err = info.get('error-desc', '')
                    break
                assert time.time() < deadline, info
                time.sleep(0.1)
        print('primary: %s' % err)
        assert 'MC over RDMA' in err and 'refused' in err, err
        assert pair.primary.qmp.cmd('query-status')['status'] == 'running'
    finally:
        if pair:
            pair.close()
        topo.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_rdma_standby_stopped():
    """A standby that stops reading (SIGSTOP) posts no more receives:
    the primary's writes wait for credits, its heartbeat watchdog
    declares the standby lost, and the primary runs on, its held
    output released: nothing wedges."""
    mc = standby_lost_run(
        'rdmastopped',
        lambda pair: os.kill(pair.standby.proc.pid, signal.SIGSTOP),
        hb_timeout=2000)
    print('primary: %s after %d checkpoints' % (mc['state'],
                                                mc['checkpoints']))


def test_rdma_disk_kill_primary():
    """Disks over RDMA: kill -9 of the primary while the guest writes
    (test_disk's run): every record the client was told about is on
    the standby's disk, and its file system checks clean."""
    problems, summary = kill_run('rdmadisk', delay=50, rdma=True)
    print(describe(0, summary, problems))
    assert not problems, problems


def test_rdma_link_down():
    """The RDMA link goes down under the safe policy: neither side may
    take the link's failure for a dead peer.  The standby reports the
    loss (link-failed, or heartbeat-timeout when the link just goes
    silent) and keeps its guest stopped; the primary runs on.  Last in
    this file: in make check's lab smoke the test after it (same boot)
    once found its primary's guest not booting in 120 s."""
    wd = workdir('rdmalink')
    topo = Topology()
    pair = None
    try:
        pair = Pair(topo, wd, rdma=True, hb_timeout=2000)
        pair.start_mc()
        mode = os.environ.get('MC_RDMA_CUT', 'down')
        if mode == 'down':
            sh('ip', 'link', 'set', topo.rdma_dev, 'down')
        else:
            sh('rdma', 'link', 'delete', topo.rxe)
        ev = pair.standby.qmp.wait_event('MC_PEER_LOST', timeout=60)
        print('standby: %s; primary: %s' % (
            ev['data'], pair.mc()['state']))
        assert ev['data']['reason'] in ('link-failed', 'heartbeat-timeout'), ev
        time.sleep(3)
        st = pair.standby.qmp.cmd('query-status')['status']
        assert st != 'running', st
        assert pair.mc(pair.standby)['state'] == 'waiting', \
            pair.mc(pair.standby)
        assert pair.primary.qmp.cmd('query-status')['status'] == 'running'
    finally:
        if pair:
            pair.close()
        topo.close()
        shutil.rmtree(wd, ignore_errors=True)
