"""Output commit on a real network (issue 4; SPEC 1, 3.1, 3.3, 3.4).

A client in its own network namespace talks to the guest's mc-tcpserv
through a bridge on which the primary's and the standby's taps sit (see
mcnet.py).  The client checks every record of the numbered stream and
every echo; any gap, duplicate, broken record or reset is a failure.

The output-commit check freezes the standby (SIGSTOP): from then on no
checkpoint is acknowledged, so nothing the guest sends may reach the
client, while the guest keeps running and producing.  It is checked on
the client, on the tap's packet counter and on the primary's statistics,
and the primary's trace is checked for every packet: held with the epoch
in progress, released only after the primary saw its checkpoint
acknowledged.  test_net_check_has_teeth runs the same check with
mc-net-disable and expects it to fail.
"""

import os
import re
import shutil
import signal
import time

from mcnet import GUEST_MAC, Topology, Pair, problems, sh
from mcvm import wait_migration, workdir

FREEZE_S = 2.0
SETTLE_S = 0.5      # what was acknowledged before the freeze drains


def srv_count(evs):
    return sum(1 for e in evs if e['ev'] == 'srv')


def freeze_standby(pair, client, tap):
    """Stop the standby for FREEZE_S; what got out meanwhile."""
    topo = pair.topo
    client.wait(lambda evs: srv_count(evs) >= 20)
    os.kill(pair.standby.proc.pid, signal.SIGSTOP)
    time.sleep(SETTLE_S)
    n0, tap0 = client.count(), topo.tap_counter(tap)
    time.sleep(FREEZE_S)
    n1, tap1 = client.count(), topo.tap_counter(tap)
    mc = pair.mc()
    os.kill(pair.standby.proc.pid, signal.SIGCONT)
    print('during the freeze: %d records, %d tap packets; held %d packets'
          % (n1 - n0, tap1 - tap0, mc['net-held-packets']))
    return {'records': n1 - n0, 'tap_packets': tap1 - tap0,
            'held_packets': mc['net-held-packets'], 'mc': mc}


def check_trace(path):
    """Every held packet carries the epoch in progress and is released
    only after the MC loop saw that checkpoint acknowledged."""
    acked = barrier = 0
    holds = releases = 0
    with open(path) as f:
        for line in f:
            if 'mc_net_stop' in line:
                break           # MC ended: the rest goes out unconditionally
            m = re.search(r'mc_checkpoint_acked epoch (\d+)', line)
            if m:
                acked = int(m.group(1))
                continue
            m = re.search(r'mc_net_barrier checkpoint (\d+)', line)
            if m:
                barrier = int(m.group(1))
                continue
            m = re.search(r'mc_net_hold netdev \S+ epoch (\d+)', line)
            if m:
                holds += 1
                e = int(m.group(1))
                assert e == barrier + 1 and e > acked, (line, barrier, acked)
                continue
            m = re.search(r'mc_net_release netdev \S+ up to checkpoint (\d+)',
                          line)
            if m:
                releases += 1
                assert int(m.group(1)) <= acked, (line, acked)
    assert holds > 0 and releases > 0, (holds, releases)
    return holds, releases


def wait_announced(topo, timeout=5):
    """The standby announced the guest: the bridge learnt the guest's
    MAC on the standby's tap."""
    deadline = time.time() + timeout
    while GUEST_MAC not in sh('bridge', '-n', topo.hv, 'fdb', 'show',
                              'dev', topo.tap_name('standby')):
        assert time.time() < deadline, 'guest MAC not on standby port'
        time.sleep(0.05)


def setup(name, wd=None, **kw):
    wd = wd or workdir(name)
    topo = Topology()
    try:
        pair = Pair(topo, wd, **kw)
    except Exception:
        topo.close()
        raise
    return wd, topo, pair


def teardown(wd, topo, pair, clients=()):
    for c in clients:
        c.stop()
    pair.close()
    topo.close()
    shutil.rmtree(wd, ignore_errors=True)


def test_net_output_commit():
    wd = workdir('netcommit')
    trace = os.path.join(wd, 'primary.trace')
    events = os.path.join(wd, 'events')
    with open(events, 'w') as f:
        f.write('mc_net_*\nmc_checkpoint_acked\n')
    wd, topo, pair = setup('netcommit', wd=wd, trace=(events, trace))
    client = None
    try:
        pair.start_mc()
        assert pair.mc()['net-buffers'] == 1, pair.mc()
        client = topo.client(os.path.join(wd, 'client'))
        got = freeze_standby(pair, client, topo.tap_name('primary'))
        assert got['records'] == 0 and got['tap_packets'] == 0, got
        assert got['held_packets'] > 0, got
        # released in order once the standby acknowledges again
        before = client.count()
        client.wait(lambda evs: srv_count(evs) > before + FREEZE_S * 25)
        mc = pair.mc()
        assert mc['net-released-packets'] > 0, mc
        assert mc['net-hold-max-us'] >= FREEZE_S * 1e6, mc
        assert not problems(client.events()), problems(client.events())
        evs = client.stop()
        assert not problems(evs), problems(evs)
        pair.primary.qmp.cmd('migrate_cancel')
        time.sleep(0.5)
        print('trace: %d packets held, %d releases, all in order'
              % check_trace(trace))
    finally:
        teardown(wd, topo, pair, [client] if client else [])


def test_net_check_has_teeth():
    """With mc-net-disable the freeze check sees output escape."""
    wd, topo, pair = setup('netteeth', net=False)
    client = None
    try:
        pair.start_mc()
        assert pair.mc()['net-buffers'] == 0, pair.mc()
        client = topo.client(os.path.join(wd, 'client'))
        got = freeze_standby(pair, client, topo.tap_name('primary'))
        assert got['records'] > 0 and got['tap_packets'] > 0, got
    finally:
        teardown(wd, topo, pair, [client] if client else [])


def failover_run(name, net, delay, **kw):
    """Stream with echoes, kill -9 the primary, let the standby go on
    for 150 records; returns the client's events and the record number
    at the kill.  @kw: more for the Pair."""
    wd, topo, pair = setup(name, delay=delay, net=net, **kw)
    client = None
    try:
        pair.start_mc()
        client = topo.client(os.path.join(wd, 'client'), interval=10)
        client.wait(lambda evs: srv_count(evs) >= 100)
        n_kill = client.last_srv()
        pair.primary.kill(signal.SIGKILL)
        ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=30)
        assert ev['data']['role'] == 'standby', ev
        assert pair.standby.qmp.cmd('query-status')['status'] == 'running'
        wait_announced(topo)
        try:
            client.wait(lambda evs: srv_count(evs) >= n_kill + 150 or
                        problems(evs), timeout=30)
        except TimeoutError:
            pass        # a stalled stream: the callers see it in the count
        evs = client.stop()
        # the guest runs on from a consistent state: no kernel crash
        oops = re.findall(r'(?:Kernel panic|Oops|BUG:|general protection)'
                          r'[^\n]*', pair.standby.serial())
        return evs, n_kill, oops
    finally:
        teardown(wd, topo, pair, [client] if client else [])


def test_net_failover_kill_primary():
    """kill -9 the primary mid-stream: the client's TCP connection goes
    on with the standby, no reset, no gap, no duplicate, every echo."""
    evs, n_kill, oops = failover_run('netfailover', True, 100)
    assert not oops, oops
    srv_t = [e['t'] for e in evs if e['ev'] == 'srv']
    print('longest silence in the stream: %.0f ms' % (
        max(b - a for a, b in zip(srv_t, srv_t[1:])) * 1000))
    assert not problems(evs), problems(evs)
    assert srv_count(evs) >= n_kill + 150, srv_count(evs)
    echoes = [e for e in evs if e['ev'] == 'echo']
    end = [e for e in evs if e['ev'] == 'end'][0]
    # only the last few, sent just before the stop, may be unanswered
    assert len(end['unanswered']) <= 5, end
    assert echoes[-1]['k'] > n_kill, (echoes[-1], n_kill)


def test_net_failover_has_teeth():
    """Without output commit the same failover breaks the client's
    stream: it saw output of a state the standby never had.  (With
    mc-delay 500 the kill lands after some output of the epoch in
    progress left, unless it falls in the first few ms of an epoch.)"""
    evs, n_kill, oops = failover_run('netfailteeth', False, 500)
    stalled = srv_count(evs) < n_kill + 150
    print('without buffering the client saw: %s%s' % (
        problems(evs)[:2], ' and the stream stalled' if stalled else ''))
    assert problems(evs) or stalled, \
        'the failover went unnoticed without buffering'


def test_net_standby_killed():
    """The standby dies while output is held: all of it still arrives."""
    wd, topo, pair = setup('netstandby')
    client = None
    try:
        pair.start_mc()
        client = topo.client(os.path.join(wd, 'client'))
        client.wait(lambda evs: srv_count(evs) >= 20)
        os.kill(pair.standby.proc.pid, signal.SIGSTOP)
        time.sleep(FREEZE_S)
        held = pair.mc()['net-held-packets']
        n0 = client.count()
        assert held > 0, pair.mc()
        pair.standby.kill(signal.SIGKILL)
        ev = pair.primary.qmp.wait_event('MC_FAILOVER', timeout=30)
        assert ev['data']['role'] == 'primary', ev
        # what was held comes out, then the stream runs on unprotected
        client.wait(lambda evs: srv_count(evs) >= n0 + FREEZE_S * 25 + 50)
        mc = pair.mc()
        assert mc['net-held-packets'] == 0 and mc['net-buffers'] == 0, mc
        evs = client.stop()
        assert not problems(evs), problems(evs)
    finally:
        teardown(wd, topo, pair, [client] if client else [])


def test_net_two_nics_user_backend():
    """Two NICs, one on a tap and one on slirp (-netdev user): both are
    held while the standby is frozen, and both streams go on intact."""
    port = 17000 + os.getpid() % 1000 * 2
    wd, topo, pair = setup('net2', nics=('tap', 'user:%d' % port))
    clients = []
    try:
        pair.start_mc()
        assert pair.mc()['net-buffers'] == 2, pair.mc()
        tap_client = topo.client(os.path.join(wd, 'client-tap'))
        user_client = topo.client(os.path.join(wd, 'client-user'),
                                  host='127.0.0.1', port=port, ns=topo.hv)
        clients = [tap_client, user_client]
        user_client.wait(lambda evs: srv_count(evs) >= 20)
        got = freeze_standby(pair, tap_client, topo.tap_name('primary'))
        assert got['records'] == 0 and got['tap_packets'] == 0, got
        # the slirp client saw nothing new during the freeze either
        n_user = user_client.count()
        time.sleep(FREEZE_S / 2)
        os.kill(pair.standby.proc.pid, signal.SIGSTOP)
        time.sleep(SETTLE_S)
        n0 = user_client.count()
        time.sleep(FREEZE_S)
        n1 = user_client.count()
        os.kill(pair.standby.proc.pid, signal.SIGCONT)
        assert n1 == n0 and n0 >= n_user, (n_user, n0, n1)
        for c in clients:
            before = c.count()
            c.wait(lambda evs: srv_count(evs) > before + 50)
            evs = c.stop()
            assert not problems(evs), problems(evs)
    finally:
        teardown(wd, topo, pair, clients)


def test_net_explicit_filter_backpressure():
    """An operator-created filter-mc holds its NIC's output even with
    mc-net-disable (which only stops the automatic ones); past max-held
    the guest's transmit queue waits instead of anything being dropped:
    a bulk transfer arrives whole."""
    max_held = 32768
    wd, topo, pair = setup('netbp', net=False, delay=50, primary_extra=[
        '-object', 'filter-mc,id=hold0,netdev=n0,queue=rx,max-held=%d'
        % max_held])
    try:
        # bad input is refused and changes nothing
        err = pair.primary.qmp.cmd_raw('object-add', **{
            'qom-type': 'filter-mc', 'id': 'bad', 'netdev': 'n0',
            'max-held': 0})
        assert 'max-held' in err['error']['desc'], err
        # epochs of mc-delay first: between checkpoints the bound holds
        pair.primary.qmp.cmd('migrate-set-parameters',
                             **{'mc-output-latency': 0})
        pair.start_mc()
        assert pair.mc()['net-buffers'] == 1, pair.mc()
        size = 4 << 20

        def bulk():
            got = topo.ask('bulk', '--bytes', str(size), timeout=300)
            mc = pair.mc()
            print('bulk %d bytes in %.2f s; throttled %d times, held at most '
                  '%d bytes' % (got['bytes'], got['seconds'],
                                mc['net-throttled'],
                                mc['net-held-high-water']))
            assert got['bytes'] == size, got
            return mc

        mc = bulk()
        assert mc['net-throttled'] > 0, mc
        # one more packet than the bound at most (the one that paused it)
        assert mc['net-held-high-water'] <= max_held + 65536, mc
        # Checkpoints triggered by the output itself: each completes the
        # paused NIC's transmission, and the NIC drains its ring into the
        # epoch (no back-pressure inside a pause): the bound is exceeded
        # by that, per checkpoint in flight (docs), and nothing is lost
        pair.primary.qmp.cmd('migrate-set-parameters',
                             **{'mc-output-latency': 100})
        throttled = mc['net-throttled']
        mc = bulk()
        assert mc['net-throttled'] > throttled, mc
    finally:
        teardown(wd, topo, pair)


def test_net_cancel_releases():
    """migrate_cancel with output held: all of it goes out, buffering is
    removed, and the standby, though it was frozen, stays stopped."""
    wd, topo, pair = setup('netcancel')
    client = None
    try:
        pair.start_mc()
        client = topo.client(os.path.join(wd, 'client'))
        client.wait(lambda evs: srv_count(evs) >= 20)
        os.kill(pair.standby.proc.pid, signal.SIGSTOP)
        time.sleep(FREEZE_S)
        assert pair.mc()['net-held-packets'] > 0, pair.mc()
        n0 = client.count()
        pair.primary.qmp.cmd('migrate_cancel')
        wait_migration(pair.primary.qmp, 'cancelled', timeout=30,
                       bad=('failed',))
        mc = pair.mc()
        assert mc['net-held-packets'] == 0 and mc['net-buffers'] == 0, mc
        client.wait(lambda evs: srv_count(evs) >= n0 + FREEZE_S * 25 + 25)
        os.kill(pair.standby.proc.pid, signal.SIGCONT)
        time.sleep(2)
        st = pair.standby.qmp.cmd('query-status')['status']
        assert st != 'running', st
        evs = client.stop()
        assert not problems(evs), problems(evs)
    finally:
        teardown(wd, topo, pair, [client] if client else [])
