"""mc-switchover: a planned move of the guest to the standby (issue 25).

The primary stops the guest, takes a last checkpoint, and once the
standby has acknowledged it releases what the guest sent before it and
tells the standby to run the guest.  Checked with a client's numbered
TCP stream through output commit (no gap, duplicate, reset or lost
echo across the move; the guest announced on the standby's port), the
end states of both sides (primary "completed" and stopped, standby
running with MC_FAILOVER reason switchover, the downtime reported), a
guest paused by the user staying paused and its memory equal on both
sides, and the command refused where it makes no sense.
"""

import os
import time

from mcnet import problems
from mcvm import ACCEL, workdir
from test_consistency import MEM, compare_memory
from test_net import (check_trace, setup, srv_count, teardown,
                      wait_announced)


def wall_clock_only(a, b, addr):
    """Whether the page at @addr of dumps @a and @b differs only in its
    first 12 bytes: KVM's wall-clock structure (version, seconds,
    nanoseconds), which KVM writes into guest RAM whenever QEMU sets
    MSR_KVM_WALL_CLOCK_NEW, as the standby does when it loads the vCPUs
    to run the guest (any migration's destination does the same)."""
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        fa.seek(addr)
        fb.seek(addr)
        x, y = fa.read(4096), fb.read(4096)
    offs = [i for i in range(len(x)) if x[i] != y[i]]
    if offs and max(offs) < 12:
        print('  %#x: the wall clock (bytes %s), written by KVM' % (addr,
                                                                    offs))
        return True
    return False


def qmp_error(vm, name):
    """The error @vm's QMP command @name gives (it must fail)."""
    resp = vm.qmp.cmd_raw(name)
    assert 'error' in resp, resp
    return resp['error']['desc']


def switchover(pair, timeout=30):
    """mc-switchover on the primary; returns (the standby's MC_FAILOVER
    event, the primary's query-migrate once it ended, seconds taken)."""
    t0 = time.time()
    pair.primary.qmp.cmd('mc-switchover')
    ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=timeout)
    deadline = time.time() + timeout
    while True:
        info = pair.primary.qmp.cmd('query-migrate')
        if info['status'] != 'mc':
            break
        assert time.time() < deadline, info
        time.sleep(0.02)
    return ev, info, time.time() - t0


def test_switchover_tcp_stream():
    """A client's stream and echoes go on from the standby, nothing lost
    or repeated; the primary ends completed with the guest stopped.  Its
    trace: every packet released only once its checkpoint was
    acknowledged, the switchover's checkpoint included, nothing after it
    (a guest deterministic enough sends the same bytes again from the
    standby, which the client's TCP would take without a word)."""
    wd = workdir('switchover')
    trace = os.path.join(wd, 'primary.trace')
    events = os.path.join(wd, 'events')
    with open(events, 'w') as f:
        f.write('mc_net_*\nmc_checkpoint_acked\n')
    wd, topo, pair = setup('switchover', wd=wd, delay=100,
                           trace=(events, trace))
    client = None
    try:
        # fixed 100 ms epochs: the last one holds output when it begins,
        # which goes out with the NIC stopped
        pair.primary.qmp.cmd('migrate-set-parameters',
                             **{'mc-output-latency': 0})
        pair.start_mc()
        client = topo.client(os.path.join(wd, 'client'), interval=10)
        client.wait(lambda evs: srv_count(evs) >= 100)
        n_switch = client.last_srv()
        while not pair.mc()['net-held-packets']:
            time.sleep(0.005)
        ev, info, took = switchover(pair)
        assert ev['data']['role'] == 'standby', ev
        assert ev['data']['reason'] == 'switchover', ev
        assert info['status'] == 'completed', info
        assert pair.primary.qmp.cmd('query-status')['status'] == \
            'postmigrate'
        assert pair.standby.qmp.cmd('query-status')['status'] == 'running'
        wait_announced(topo)
        client.wait(lambda evs: srv_count(evs) >= n_switch + 150 or
                    problems(evs), timeout=30)
        evs = client.stop()
        client = None
        srv_t = [e['t'] for e in evs if e['ev'] == 'srv']
        print('switchover in %.0f ms; primary downtime %d ms; longest '
              'silence in the stream %.0f ms; primary mc state %s' % (
                  took * 1000, info['downtime'],
                  max(b - a for a, b in zip(srv_t, srv_t[1:])) * 1000,
                  info['mc']['state']))
        assert not problems(evs), problems(evs)
        assert srv_count(evs) >= n_switch + 150, srv_count(evs)
        end = [e for e in evs if e['ev'] == 'end'][0]
        assert len(end['unanswered']) <= 5, end
        assert info['mc']['state'] == 'switchover', info['mc']
        assert info['mc']['net-held-packets'] == 0, info['mc']
        print('trace: %d packets held, %d releases, all acknowledged first'
              % check_trace(trace))
        with open(trace) as f:
            lines = f.read().splitlines()
        sw = [i for i, line in enumerate(lines) if 'mc_net_switchover' in line]
        assert len(sw) == 1, sw
        last = lines[sw[0]]
        # what the switchover let out: releases just before its line
        out = [line for line in lines[sw[0] - 3:sw[0]]
               if 'mc_net_release' in line]
        print('%s; %s' % (last.strip(), out or 'nothing held then'))
        assert last.endswith('dropped 0 packets after it'), last
    finally:
        teardown(wd, topo, pair, [client] if client else [])


def test_switchover_paused_guest_memory():
    """A guest the user paused moves paused; both copies hold the same
    memory after the move (mc-dirty wrote all over it before), but under
    KVM the page of the guest's wall clock, which KVM rewrites when the
    standby puts its vCPUs (wall_clock_only)."""
    wd, topo, pair = setup('switchmem', delay=50, app='mc.dirty=16,5000')
    try:
        pair.start_mc()
        time.sleep(2)
        pair.primary.qmp.cmd('stop')
        ev, info, _ = switchover(pair)
        assert ev['data']['reason'] == 'switchover', ev
        assert info['status'] == 'completed', info
        status = pair.standby.qmp.cmd('query-status')['status']
        assert status == 'paused', status
        diff, p, s = compare_memory(pair, wd, MEM)
        if ACCEL.startswith('kvm'):
            diff = [d for d in diff if not wall_clock_only(p, s, int(d, 16))]
        assert not diff, diff
        # and it runs there when told
        pair.standby.qmp.cmd('cont')
        assert pair.standby.qmp.cmd('query-status')['status'] == 'running'
    finally:
        teardown(wd, topo, pair)


def test_switchover_refused():
    """Where mc-switchover makes no sense it says why and changes
    nothing: before MC, on the standby; given twice it is one."""
    wd, topo, pair = setup('switchrefused', delay=100)
    try:
        err = qmp_error(pair.primary, 'mc-switchover')
        assert 'not running' in err, err
        pair.start_mc()
        err = qmp_error(pair.standby, 'mc-switchover')
        assert 'for the primary' in err, err
        assert pair.primary.qmp.cmd('query-migrate')['status'] == 'mc'
        assert pair.standby.qmp.cmd('query-status')['status'] != 'running'
        pair.primary.qmp.cmd('mc-switchover')
        pair.primary.qmp.cmd('mc-switchover')
        ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=30)
        assert ev['data']['reason'] == 'switchover', ev
        deadline = time.time() + 30
        while pair.primary.qmp.cmd('query-migrate')['status'] == 'mc':
            assert time.time() < deadline
            time.sleep(0.05)
        err = qmp_error(pair.primary, 'mc-switchover')
        assert 'not running' in err, err
    finally:
        teardown(wd, topo, pair)
