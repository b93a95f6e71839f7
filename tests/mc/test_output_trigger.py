"""Checkpoints triggered by held output, within the pause budget.

At the defaults a packet the guest sends waits mc-output-latency, not
the rest of its epoch, before the checkpoint that releases it begins;
mc-delay becomes the longest epoch, and mc-pause-budget bounds the share
of time such checkpoints pause the guest.  Behaviour, with wide margins
(the figures are bench/netbench.py's):
  - parameters: defaults, HMP, refused values;
  - a request/response client: replies come back in a fraction of the
    epoch, from checkpoints traced as "output"; with mc-output-latency
    0 (a fixed interval) the same client waits about half an epoch;
  - an idle guest takes at most 1000/mc-delay checkpoints a second;
  - a bulk transfer stays within a small pause budget, the controller's
    deferrals traced;
  - the output-commit invariant (test_net.check_trace) holds throughout.
"""

import os
import shutil
import time

from mcnet import Pair, Topology
from mcvm import workdir
from test_net import check_trace

DELAY = 100


def median(values):
    v = sorted(values)
    return v[len(v) // 2]


def pause_share(before, after, seconds):
    """Percent of @seconds the guest spent paused, from two MC stats."""
    paused = (after['pause-avg-us'] * after['checkpoints'] -
              before['pause-avg-us'] * before['checkpoints'])
    return 100.0 * paused / (seconds * 1e6)


def traced_pair(name, **kw):
    wd = workdir(name)
    trace = os.path.join(wd, 'primary.trace')
    events = os.path.join(wd, 'events')
    with open(events, 'w') as f:
        f.write('mc_net_*\nmc_checkpoint_acked\nmc_primary_trigger\n')
    topo = Topology()
    try:
        pair = Pair(topo, wd, delay=DELAY, trace=(events, trace), **kw)
    except Exception:
        topo.close()
        raise
    return wd, topo, pair, trace


def triggers(trace):
    """mc_primary_trigger lines of @trace: (why, deferred_us) each."""
    out = []
    with open(trace, errors='replace') as f:
        for line in f:
            if 'mc_primary_trigger' in line and ' by ' in line:
                why = line.split(' by ')[1].split()[0]
                deferred = int(line.split('us of it')[0].split(', ')[-1]
                               .strip().split()[0])
                out.append((why, deferred))
    return out


def test_output_trigger_parameters():
    """Defaults, HMP and refused values, without a guest network."""
    wd = workdir('outparams')
    pair = None
    try:
        pair = Pair(None, wd, nics=())
        qmp = pair.primary.qmp
        params = qmp.cmd('query-migrate-parameters')
        assert params['mc-output-latency'] == 100, params
        assert params['mc-pause-budget'] == 10, params
        for name, value in (('mc-output-latency', 1000001),
                            ('mc-pause-budget', 0),
                            ('mc-pause-budget', 101)):
            resp = qmp.cmd_raw('migrate-set-parameters', **{name: value})
            assert 'error' in resp, (name, value, resp)
            assert name in resp['error']['desc'], resp
        assert qmp.cmd('query-migrate-parameters') == params
        qmp.cmd('human-monitor-command', **{
            'command-line': 'migrate_set_parameter mc-output-latency 500'})
        qmp.cmd('migrate-set-parameters', **{'mc-pause-budget': 25})
        text = qmp.cmd('human-monitor-command', **{
            'command-line': 'info migrate_parameters'})
        assert 'mc-output-latency: 500 us' in text, text
        assert 'mc-pause-budget: 25 %' in text, text
    finally:
        if pair:
            pair.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_output_trigger_echo_and_idle():
    """Replies come back long before the epoch's end, from output
    checkpoints; not so at mc-output-latency 0; an idle guest takes no
    more checkpoints than mc-delay gives."""
    wd, topo, pair, trace = traced_pair('outecho', tcpserv_ms=0)
    try:
        pair.start_mc()
        time.sleep(1)
        # idle: nothing asks the guest for anything
        m0, t0 = pair.mc(), time.time()
        time.sleep(3)
        m1, t1 = pair.mc(), time.time()
        idle_rate = (m1['checkpoints'] - m0['checkpoints']) / (t1 - t0)
        idle_out = m1['output-checkpoints'] - m0['output-checkpoints']

        rtts = topo.ask('rtt', '--count', '100', '--interval', '5')
        m2 = pair.mc()
        pair.primary.qmp.cmd('migrate-set-parameters',
                             **{'mc-output-latency': 0})
        fixed = topo.ask('rtt', '--count', '30', '--interval', '5')
        m3 = pair.mc()
        print('idle %.1f checkpoints/s (%d output); echo p50 %.2f ms '
              '(%d output checkpoints, net hold p50 %d us) against %.2f ms '
              'at a fixed interval' % (
                  idle_rate, idle_out, median(rtts) * 1000,
                  m2['output-checkpoints'] - m1['output-checkpoints'],
                  m2['net-hold-p50-us'], median(fixed) * 1000))
        assert idle_rate <= 1000.0 / DELAY + 1 + idle_out / (t1 - t0), m1
        out = m2['output-checkpoints'] - m1['output-checkpoints']
        assert out >= 50, (m1, m2)
        assert m3['output-checkpoints'] == m2['output-checkpoints'], m3
        # wide margins: a fixed interval holds a reply for about half an
        # epoch (50 ms), the trigger for well under a tenth of one
        assert median(rtts) < DELAY / 4 / 1000.0, sorted(rtts)
        assert median(fixed) > DELAY / 4 / 1000.0, sorted(fixed)
        assert m2['net-hold-p50-us'] < DELAY * 1000 / 4, m2
        pair.primary.qmp.cmd('migrate_cancel')
        time.sleep(0.5)
        print('trace: %d packets held, %d releases, all in order'
              % check_trace(trace))
        whys = [w for w, _ in triggers(trace)]
        assert whys.count('output') >= out, whys.count('output')
    finally:
        pair.close()
        topo.close()
        shutil.rmtree(wd, ignore_errors=True)


def test_output_trigger_budget_bulk():
    """A bulk transfer from the guest wants a checkpoint per packet; a
    budget of 5 % keeps the pause share near it, by deferring them."""
    budget = 5
    wd, topo, pair, trace = traced_pair('outbudget', tcpserv_ms=0)
    try:
        pair.primary.qmp.cmd('migrate-set-parameters',
                             **{'mc-pause-budget': budget})
        pair.start_mc()
        m0, t0 = pair.mc(), time.time()
        got = topo.ask('bulk', '--bytes', str(16 << 20), '--timeout',
                     '120')
        m1, t1 = pair.mc(), time.time()
        share = pause_share(m0, m1, t1 - t0)
        rate = (m1['checkpoints'] - m0['checkpoints']) / (t1 - t0)
        print('bulk %.1f MB/s: %.0f checkpoints/s, %d output-triggered, '
              '%d deferred; paused %.1f%% (budget %d%%)' % (
                  got['bytes'] / got['seconds'] / 1e6, rate,
                  m1['output-checkpoints'] - m0['output-checkpoints'],
                  m1['output-deferred'] - m0['output-deferred'], share,
                  budget))
        assert got['bytes'] == 16 << 20, got
        assert m1['output-deferred'] > m0['output-deferred'], m1
        assert share <= budget + 2, (share, m0, m1)
        pair.primary.qmp.cmd('migrate_cancel')
        time.sleep(0.5)
        check_trace(trace)
        assert any(w == 'output' and d > 0 for w, d in triggers(trace))
    finally:
        pair.close()
        topo.close()
        shutil.rmtree(wd, ignore_errors=True)
