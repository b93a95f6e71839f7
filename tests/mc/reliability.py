#!/usr/bin/env python3
"""Reliability runs with figures (issue 13): failures injected many
times, each run checked for anything lost, results as one table.

Cases (each run starts a fresh primary/standby pair of the test guest):

  primary-kill   kill -9 of the primary at a random moment, mc-delay
                 drawn from {0, 1, 10, 100}, in one of four phases
                 (below).  The guest writes checksummed records to an
                 ext4 disk (mc-diskwriter), serves a numbered TCP stream
                 through output commit, and runs mc-dirty in check mode
                 (every page stamped with its round: memory and CPU state
                 from different checkpoints show as a mismatch).  Held:
                 the standby resumes, the stream goes on with no gap,
                 duplicate or reset, every record the client was told
                 about is on the standby's disk and e2fsck is clean, the
                 memory check counts no mismatch, no kernel oops.
  standby-kill   kill -9 of the standby, half of the runs after freezing
                 it (SIGSTOP) for a while so that output is held.  Held:
                 the primary runs on, everything held reaches the client
                 in order, the held-packet counters go back to 0.
  partition-*    the migration link cut with blackhole routes (the
                 standby in its own network namespace), shorter or longer
                 than mc-heartbeat-timeout, then healed; per policy.
                 Both guests' run states are sampled every 50 ms: under
                 safe and manual two guests never run at once; under
                 auto a long cut leaves both running (as documented).
                 After a short cut MC carries on without a failover.
  kill-cut-*     the link cut, then the primary killed: under safe and
                 manual the standby must not take over on its own (it
                 reports MC_PEER_LOST and resumes on mc-failover); under
                 auto it takes over.
  management-input  MC commands and parameters at the wrong moment
                 (before migrate, on the wrong side, twice, after MC
                 ended): each a clear error that changes nothing.
  tls-kill       MC over TLS (x509, the standby verifies the primary's
                 certificate, tls-authz allows CN=primary), kill -9 of
                 the primary.
  tls-unauthorized  a primary with a valid certificate of the same CA
                 but another name: refused by the standby, both say why.
  asan-soak      soak.py: 200,000 checkpoints at mc-delay 0 under ASan
                 and LeakSanitizer (make build-asan; long form only).
  fuzz           fuzz.py: seeds recorded from a real pair, a checkpoint
                 damaged after its pages (valid checksums) refused whole
                 and the standby resuming from the one before, then the
                 libFuzzer target on what the standby parses for 30 min
                 (MC_REL_FUZZ_SECONDS; long form only).

Phases of primary-kill (chosen at random; the kill follows within the
time of one QMP round trip of seeing the condition):
  anytime      a random moment
  idle         no checkpoint in flight (in-flight = 0 on the primary)
  mid-send     a checkpoint taken and not acknowledged (in-flight > 0)
  standby-apply  just after an acknowledgement arrived: the standby sends
               it before applying the checkpoint

Usage:
  reliability.py [--long] [--cases primary-kill,...] [--runs N]
                 [--counts CASE=N,...,default=N] [--seed S] [--table FILE]
                 [--merge-from OTHER_TABLE]
Without --long each case runs a few times (the short form, in make
check through test_reliability.py); --long runs the counts of issue 13
and, with --table, writes the table (docs/reliability.md).  With
--merge-from, another run's rows (its cases) and run line are added to
--table's (a case run separately, or added after a long run).
"""

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mcdisk import (Disk, DiskClient, DiskPair, client_problems, fsck,  # noqa
                    make_empty_image, make_fs_image, need_tools)
from mcnet import (Cut, Pair, Topology, problems,  # noqa
                   sh)
from mcvm import DIRTY_LINE, MISMATCH, Skip, wait_for, workdir  # noqa

# MC_REL_DELAYS=10,100 draws from those only (the KVM lab: there mc-delay
# 0 and 1 leave a guest with a disk writer a record every few seconds)
DELAYS = tuple(int(d) for d in
               os.environ.get('MC_REL_DELAYS', '0,1,10,100').split(','))
PHASES = ('anytime', 'idle', 'mid-send', 'standby-apply')
POLICIES = ('safe', 'manual', 'auto')
HB_MS = 1000                    # heartbeat timeout in the partition cases
DIRTY = 'mc.dirty=8,2000,steady,check'
OOPS = re.compile(r'(?:Kernel panic|Oops|BUG:|general protection|'
                  r'EXT4-fs error|I/O error)[^\n]*')
BAD_EVENTS = ('BLOCK_IO_ERROR', 'GUEST_PANICKED', 'GUEST_CRASHLOADED',
              'STOP', 'SHUTDOWN')


class Run:
    """One run's outcome: problems (empty: held) and figures."""

    def __init__(self, case, i):
        self.case, self.i = case, i
        self.problems = []
        self.fig = {}
        self.lost = 0           # records or packets lost

    def check(self, cond, what):
        if not cond:
            self.problems.append(what)
        return cond

    def __str__(self):
        return '%s #%d: %s %s%s' % (
            self.case, self.i, 'held' if not self.problems else 'FAILED',
            ' '.join('%s=%s' % kv for kv in sorted(self.fig.items())),
            ' PROBLEMS: %s' % '; '.join(self.problems)
            if self.problems else '')


def srv(evs):
    return [e for e in evs if e['ev'] == 'srv']


def event_time(ev):
    ts = ev['timestamp']
    return ts['seconds'] + ts['microseconds'] / 1e6


def memory_check(run, vm, after_s, who):
    """mc-dirty's reports on @vm's serial after @after_s (a serial
    offset): at least two new ones, none with a mismatch."""
    def lines():
        return DIRTY_LINE.findall(vm.serial()[after_s:])
    wait_for(lambda: len(lines()) >= 2, 10)
    got = lines()
    bad = MISMATCH.findall(vm.serial())
    run.check(len(got) >= 2, '%s: memory check did not run on (%d '
              'reports)' % (who, len(got)))
    run.check(not bad and all(b == '0' for b in got),
              '%s: memory check: %s' % (who, bad[:2] or got[-1:]))


def oops_check(run, vm, who):
    oops = OOPS.findall(vm.serial())
    run.check(not oops, '%s guest: %s' % (who, oops[:2]))


def stream_check(run, client, n_from, more, who):
    """The client's stream goes on for @more records past @n_from with
    no gap, duplicate, garbage or reset."""
    try:
        client.wait(lambda evs: len(srv(evs)) >= n_from + more or
                    problems(evs), timeout=30)
    except TimeoutError:
        pass
    evs = client.stop()
    bad = problems(evs)
    n = len(srv(evs))
    run.check(not bad, '%s stream: %s' % (who, bad[:2]))
    run.check(n >= n_from + more, '%s stream stalled at %d records '
              '(wanted %d)' % (who, n, n_from + more))
    if bad or n < n_from + more:
        run.lost += 1
    return evs


@contextlib.contextmanager
def streaming(wd, make_pair, link=None):
    """A fresh topology (@link: the standby in its own namespace), the
    pair make_pair(topo) builds with MC started, and a client streaming
    through output commit; yields (topo, pair, clients), clients[0] being
    that stream.  Clients the caller appends are stopped too."""
    topo = Topology(link=link)
    pair, clients = None, []
    try:
        pair = make_pair(topo)
        pair.start_mc()
        clients.append(topo.client(os.path.join(wd, 'tcp'), interval=10))
        clients[0].wait(lambda evs: len(srv(evs)) >= 20)
        yield topo, pair, clients
    finally:
        for c in clients:
            c.stop()
        if pair:
            pair.close()
        topo.close()


def primary_kill(run, rng, wd):
    need_tools()
    delay = rng.choice(DELAYS)
    phase = rng.choice(PHASES)
    run.fig.update(delay=delay, phase=phase)
    p_img = make_fs_image(os.path.join(wd, 'primary.img'), 'raw')
    s_img = make_empty_image(os.path.join(wd, 'standby.img'), 'raw')
    with streaming(wd, lambda topo: DiskPair(
            topo, wd, Disk(p_img), Disk(s_img), delay=delay,
            app=DIRTY)) as (topo, pair, clients):
        tcp = clients[0]
        disk = DiskClient(topo, os.path.join(wd, 'disk'))
        clients.append(disk)
        disk.wait(lambda evs: len(disk.oks(evs)) >= 10)
        time.sleep(rng.uniform(0.2, 2.0))
        if phase == 'idle':
            wait_for(lambda: pair.mc()['in-flight'] == 0, 5, 0)
        elif phase == 'mid-send':
            wait_for(lambda: pair.mc()['in-flight'] > 0, 5, 0)
        elif phase == 'standby-apply':
            a0 = pair.mc()['acked']
            wait_for(lambda: pair.mc()['acked'] != a0, 5, 0)
        t_kill = time.time()
        pair.primary.kill(signal.SIGKILL)
        n_kill = len(srv(tcp.events()))
        ok_kill = disk.last_ok()
        serial0 = len(pair.standby.serial())
        ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=30)
        t_fo = event_time(ev)
        run.check(ev['data']['role'] == 'standby', 'event %s' % ev)
        run.fig['failover_ms'] = round((t_fo - t_kill) * 1000, 1)
        run.check(pair.standby.qmp.cmd('query-status')['status'] ==
                  'running', 'standby not running after MC_FAILOVER')
        evs = stream_check(run, tcp, n_kill, 100, 'tcp')
        after = [e['t'] for e in srv(evs) if e['t'] > t_fo]
        if after:
            run.fig['answered_ms'] = round((after[0] - t_kill) * 1000, 1)
        # the disk: everything acknowledged is there, the fs is clean
        time.sleep(0.5)
        verdict = disk.verify()
        told = disk.last_ok()
        run.check(told > ok_kill, 'no disk record acknowledged after '
                  'the failover (last ok %d)' % told)
        run.check(not client_problems(disk.events()),
                  'disk client: %s' % client_problems(disk.events())[:2])
        if run.check(verdict is not None, 'no answer to verify'):
            run.check(not verdict['bad'] and not verdict['torn'],
                      'records: %d bad, %d torn' % (verdict['bad'],
                                                   verdict['torn']))
            if not run.check(verdict['last'] >= told,
                             'told of record %d, disk ends at %d' % (
                                 told, verdict['last'])):
                run.lost += told - verdict['last']
        memory_check(run, pair.standby, serial0, 'standby')
        oops_check(run, pair.standby, 'standby')
        disk.stop()
        pair.standby.kill(signal.SIGKILL)
        rc, out = fsck(s_img, 'raw')
        run.check(rc == 0, 'e2fsck -fn exit %d: %s' % (rc, out[-3:]))


def standby_kill(run, rng, wd):
    delay = rng.choice(DELAYS)
    freeze = rng.random() < 0.5
    run.fig.update(delay=delay, frozen=freeze)
    with streaming(wd, lambda topo: Pair(topo, wd, delay=delay, app=DIRTY)
                   ) as (topo, pair, clients):
        tcp = clients[0]
        # from here on (precopy's own STOP is over) every event counts
        pair.primary.qmp.events.clear()
        time.sleep(rng.uniform(0.2, 2.0))
        if freeze:
            os.kill(pair.standby.proc.pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.2, 1.0))
            run.fig['held'] = pair.mc()['net-held-packets']
        n_kill = len(srv(tcp.events()))
        serial0 = len(pair.primary.serial())
        pair.standby.kill(signal.SIGKILL)
        ev = pair.primary.qmp.wait_event('MC_FAILOVER', timeout=30)
        run.check(ev['data']['role'] == 'primary', 'event %s' % ev)
        run.check(pair.primary.qmp.cmd('query-status')['status'] ==
                  'running', 'primary not running')
        stream_check(run, tcp, n_kill, 100, 'tcp')
        mc = pair.mc()
        run.check(mc['net-held-packets'] == 0 and mc['net-buffers'] == 0,
                  'held-packet counters not back to 0: %s' % {
                      k: mc[k] for k in ('net-held-packets', 'net-buffers')})
        # nothing beyond the event: no other MC event, no I/O error
        others = [e['event'] for e in pair.primary.qmp.events
                  if e['event'] in BAD_EVENTS or
                  (e['event'].startswith('MC_') and
                   e['event'] != 'MC_FAILOVER')]
        run.check(not others, 'more events: %s' % others)
        memory_check(run, pair.primary, serial0, 'primary')
        oops_check(run, pair.primary, 'primary')


class Sampler:
    """Both guests' run states, sampled every 50 ms: how often both
    ran at once."""

    def __init__(self, pair):
        self.pair = pair
        self.samples = self.both = 0

    def running(self, vm):
        if vm.proc.poll() is not None:
            return False
        try:
            return vm.qmp.cmd('query-status')['status'] == 'running'
        except Exception:
            return False

    def sample_for(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            p = self.running(self.pair.primary)
            s = self.running(self.pair.standby)
            self.samples += 1
            self.both += p and s
            time.sleep(0.05)


def names(vm):
    return [(e['event'], e.get('data', {}).get('role'))
            for e in vm.qmp.events if e['event'].startswith('MC_')]


def partition(run, rng, wd, policy, long_cut):
    ms = HB_MS * (rng.uniform(1.5, 3.0) if long_cut else
                  rng.uniform(0.2, 0.6))
    run.fig.update(cut_ms=round(ms))
    with streaming(wd, lambda topo: Pair(
            topo, wd, delay=rng.choice((10, 100)), policy=policy,
            hb_timeout=HB_MS, app=DIRTY), link='10gbit') as (topo, pair,
                                                              clients):
        tcp = clients[0]
        sampler = Sampler(pair)
        with Cut(topo) as cut:
            cut.cut()
            sampler.sample_for(ms / 1000)
            cut.heal()
        sampler.sample_for(2.0 if long_cut else 1.0)
        run.fig['samples'] = sampler.samples
        run.fig['both_running'] = sampler.both
        pev, sev = names(pair.primary), names(pair.standby)
        if not long_cut:
            run.check(not pev and not sev, 'events after a short cut: '
                      'primary %s, standby %s' % (pev, sev))
            a0 = pair.mc()['acked']
            run.check(wait_for(lambda: pair.mc()['acked'] > a0 + 3, 10),
                      'MC did not carry on after the cut healed: %s' %
                      pair.primary.qmp.cmd('query-migrate').get('status'))
            run.check(sampler.both == 0, 'both guests ran')
            n = len(srv(tcp.events()))
            stream_check(run, tcp, n, 50, 'tcp')
            return
        if policy == 'auto':
            # documented: a broken link leaves two guests running
            run.check(('MC_FAILOVER', 'standby') in sev,
                      'auto: standby did not take over: %s' % sev)
            run.check(('MC_FAILOVER', 'primary') in pev,
                      'auto: primary did not run on: %s' % pev)
            run.check(sampler.both > 0, 'auto: two guests never ran')
            return
        run.check(sampler.both == 0, '%s: both guests ran in %d of %d '
                  'samples' % (policy, sampler.both, sampler.samples))
        run.check(('MC_FAILOVER', 'standby') not in sev,
                  '%s: standby took over: %s' % (policy, sev))
        run.check(('MC_PEER_LOST', 'standby') in sev,
                  '%s: standby did not report MC_PEER_LOST: %s' % (policy,
                                                                    sev))
        if policy == 'safe':
            run.check(('MC_FAILOVER', 'primary') in pev,
                      'safe: primary did not run on: %s' % pev)
        else:
            run.check(('MC_PEER_LOST', 'primary') in pev,
                      'manual: primary did not report MC_PEER_LOST: %s' %
                      pev)
            # management decides: the primary runs on
            pair.primary.qmp.cmd('mc-failover')
        n = len(srv(tcp.events()))
        stream_check(run, tcp, n, 50, 'tcp')


def kill_cut(run, rng, wd, policy):
    with streaming(wd, lambda topo: Pair(
            topo, wd, delay=rng.choice((10, 100)), policy=policy,
            hb_timeout=HB_MS, app=DIRTY), link='10gbit') as (topo, pair,
                                                              clients):
        tcp = clients[0]
        sampler = Sampler(pair)
        with Cut(topo) as cut:
            cut.cut()
            time.sleep(rng.uniform(0, HB_MS / 2000))
            t_kill = time.time()
            pair.primary.kill(signal.SIGKILL)
            n_kill = len(srv(tcp.events()))
            serial0 = len(pair.standby.serial())
            sampler.sample_for(3 * HB_MS / 1000)
        sev = names(pair.standby)
        if policy == 'auto':
            if run.check(('MC_FAILOVER', 'standby') in sev,
                         'auto: standby did not take over: %s' % sev):
                ev = [e for e in pair.standby.qmp.events
                      if e['event'] == 'MC_FAILOVER'][0]
                run.fig['failover_ms'] = round(
                    (event_time(ev) - t_kill) * 1000, 1)
        else:
            run.check(('MC_FAILOVER', 'standby') not in sev,
                      '%s: standby took over on a timeout: %s' % (policy,
                                                                  sev))
            run.check(('MC_PEER_LOST', 'standby') in sev,
                      '%s: no MC_PEER_LOST: %s' % (policy, sev))
            run.check(pair.standby.qmp.cmd('query-status')['status'] !=
                      'running', '%s: standby runs' % policy)
            # the operator, having fenced the primary, fails over
            pair.standby.qmp.cmd('mc-failover')
            pair.standby.qmp.wait_event('MC_FAILOVER', timeout=10)
        stream_check(run, tcp, n_kill, 100, 'tcp')
        memory_check(run, pair.standby, serial0, 'standby')
        oops_check(run, pair.standby, 'standby')


TEMPLATES = {
    'ca': 'cn = "MC test CA"\nca\ncert_signing_key\nexpiration_days = 30\n',
    'server': 'cn = "standby"\nip_address = "127.0.0.1"\n'
              'dns_name = "localhost"\ntls_www_server\nencryption_key\n'
              'signing_key\nexpiration_days = 30\n',
    'client': 'cn = "%s"\ntls_www_client\nencryption_key\nsigning_key\n'
              'expiration_days = 30\n',
}


def certtool(*args):
    sh('certtool', *args)


def make_certs(wd):
    """A CA, the standby's server certificate, and client certificates
    for "primary" (authorized) and "intruder" (same CA, not authorized),
    laid out as QEMU's tls-creds-x509 expects: one directory per side."""
    d = os.path.join(wd, 'pki')
    os.makedirs(d)

    def path(name):
        return os.path.join(d, name)

    def template(name, text):
        with open(path(name + '.tmpl'), 'w') as f:
            f.write(text)
        return path(name + '.tmpl')

    certtool('--generate-privkey', '--outfile', path('ca-key.pem'))
    certtool('--generate-self-signed', '--load-privkey', path('ca-key.pem'),
             '--template', template('ca', TEMPLATES['ca']),
             '--outfile', path('ca-cert.pem'))
    dirs = {}
    for who, kind in (('standby', 'server'), ('primary', 'client'),
                      ('intruder', 'client')):
        sub = os.path.join(d, who)
        os.makedirs(sub)
        key = os.path.join(sub, '%s-key.pem' % kind)
        certtool('--generate-privkey', '--outfile', key)
        text = TEMPLATES[kind] % who if kind == 'client' else \
            TEMPLATES[kind]
        certtool('--generate-certificate', '--load-privkey', key,
                 '--load-ca-certificate', path('ca-cert.pem'),
                 '--load-ca-privkey', path('ca-key.pem'),
                 '--template', template(who, text),
                 '--outfile', os.path.join(sub, '%s-cert.pem' % kind))
        shutil.copy(path('ca-cert.pem'), sub)
        dirs[who] = sub
    return dirs


def tls_pair(topo, wd, rng, client_who):
    """A pair whose migration channel is TLS with x509 certificates; the
    standby verifies the primary's certificate and authorizes only the
    identity CN=primary (tls-authz)."""
    dirs = make_certs(wd)
    role_args = {
        'primary': ['-object', 'tls-creds-x509,id=tls0,dir=%s,'
                    'endpoint=client' % dirs[client_who]],
        'standby': ['-object', 'tls-creds-x509,id=tls0,dir=%s,'
                    'endpoint=server,verify-peer=on' % dirs['standby'],
                    '-object', 'authz-simple,id=authz0,identity=CN=primary'],
    }
    pair = Pair(topo, wd, delay=rng.choice((10, 100)), app=DIRTY,
                role_args=role_args)
    pair.primary.qmp.cmd('migrate-set-parameters', **{
        'tls-creds': 'tls0', 'tls-hostname': 'localhost'})
    pair.standby.qmp.cmd('migrate-set-parameters', **{
        'tls-creds': 'tls0', 'tls-authz': 'authz0'})
    return pair


def tls_kill(run, rng, wd):
    """MC over TLS with an authorized primary, then kill -9 of it."""
    with streaming(wd, lambda topo: tls_pair(topo, wd, rng, 'primary')
                   ) as (topo, pair, clients):
        tcp = clients[0]
        params = pair.primary.qmp.cmd('query-migrate-parameters')
        run.check(params.get('tls-creds') == 'tls0', 'TLS not on')
        time.sleep(rng.uniform(0.2, 2.0))
        t_kill = time.time()
        pair.primary.kill(signal.SIGKILL)
        n_kill = len(srv(tcp.events()))
        serial0 = len(pair.standby.serial())
        ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=30)
        run.check(ev['data']['role'] == 'standby', 'event %s' % ev)
        run.fig['failover_ms'] = round((event_time(ev) - t_kill) * 1000, 1)
        stream_check(run, tcp, n_kill, 100, 'tcp')
        memory_check(run, pair.standby, serial0, 'standby')
        oops_check(run, pair.standby, 'standby')


def tls_unauthorized(run, rng, wd):
    """A primary with a valid certificate of the same CA but another
    identity: the standby refuses it, the primary says so and runs on,
    the standby never runs the guest."""
    topo = Topology()
    pair = None
    try:
        pair = tls_pair(topo, wd, rng, 'intruder')
        pair.primary.qmp.cmd('migrate', uri='tcp:%s:%d' % (
            pair.mig_host, pair.mig_port))
        st = wait_for(lambda: pair.primary.qmp.cmd('query-migrate')
                      if pair.primary.qmp.cmd('query-migrate')['status']
                      in ('failed', 'cancelled', 'mc', 'completed')
                      else None, 60)
        run.check(st and st['status'] == 'failed',
                  'the unauthorized primary was not refused: %s' % st)
        err = (st or {}).get('error-desc', '')
        run.check('TLS' in err, 'the primary did not say why: %r' % err)
        run.check(pair.primary.qmp.cmd('query-status')['status'] ==
                  'running', 'primary guest not running')
        alive = pair.standby.proc.poll() is None
        run.fig['standby'] = 'alive' if alive else 'exited %s' % \
            pair.standby.proc.poll()
        if alive:
            run.check(pair.standby.qmp.cmd('query-status')['status'] !=
                      'running', 'the standby runs the guest')
        out = pair.standby.output()
        run.check('authz check for CN=intruder is denied' in out,
                  'the standby did not say why: %s' % out[-300:])
    finally:
        if pair:
            pair.close()
        topo.close()


MC_PARAMS = ('mc-delay', 'mc-max-buffer-size', 'mc-heartbeat-timeout',
             'mc-failover-policy', 'mc-copy-threads', 'mc-output-latency',
             'mc-pause-budget')


def snapshot(vm):
    """What a refused command must leave as it was."""
    mig = vm.qmp.cmd('query-migrate')
    params = vm.qmp.cmd('query-migrate-parameters')
    caps = {c['capability']: c['state']
            for c in vm.qmp.cmd('query-migrate-capabilities')}
    return {'status': mig.get('status'),
            'mc-state': (mig.get('mc') or {}).get('state'),
            'run': vm.qmp.cmd('query-status')['status'],
            'params': {k: params.get(k) for k in MC_PARAMS},
            'mc-cap': caps.get('mc')}


def refused(run, vm, who, when, name, words, **args):
    """@name on @vm must fail with a message naming one of @words and
    change nothing."""
    before = snapshot(vm)
    resp = vm.qmp.cmd_raw(name, **args)
    what = '%s %s on the %s %s' % (name, args or '', who, when)
    if not run.check('error' in resp, '%s was accepted' % what):
        return
    desc = resp['error']['desc']
    run.check(any(w.lower() in desc.lower() for w in words),
              '%s: unclear error %r' % (what, desc))
    after = snapshot(vm)
    # a paused standby's acked counters move on, nothing else may
    run.check(after == before, '%s changed %s -> %s' % (what, before,
                                                        after))
    run.fig['refused'] = run.fig.get('refused', 0) + 1


BAD_PARAMS = (('mc-delay', -1, ('mc-delay', 'between')),
              ('mc-delay', 60001, ('mc-delay', 'between')),
              ('mc-max-buffer-size', 4096, ('mc-max-buffer-size',)),
              ('mc-heartbeat-timeout', 0, ('mc-heartbeat-timeout',)),
              ('mc-failover-policy', 'bogus', ('mc-failover-policy',
                                               'bogus')),
              ('mc-copy-threads', 0, ('mc-copy-threads',)),
              ('mc-output-latency', 1000001, ('mc-output-latency',)),
              ('mc-pause-budget', 0, ('mc-pause-budget',)),
              ('mc-pause-budget', 101, ('mc-pause-budget',)))


def management_input(run, rng, wd):
    """MC commands and parameters at the wrong moment: before migrate,
    on the wrong side, twice, during and after a failover, after MC
    ended.  Each gets a clear error and changes nothing."""
    pair = None
    try:
        pair = Pair(None, wd, nics=(), delay=rng.choice((10, 100)))
        p, sb = pair.primary, pair.standby
        # before migrate
        refused(run, p, 'primary', 'before migrate', 'mc-failover',
                ('not running',))
        refused(run, sb, 'standby', 'before migrate', 'mc-failover',
                ('not running',))
        for name, value, words in BAD_PARAMS:
            refused(run, p, 'primary', 'before migrate',
                    'migrate-set-parameters', words, **{name: value})
        pair.start_mc()
        # during MC, each side
        for vm, who in ((p, 'primary'), (sb, 'standby')):
            refused(run, vm, who, 'during MC', 'migrate-set-capabilities',
                    ('migration', 'progress', 'running'),
                    capabilities=[{'capability': 'mc', 'state': False}])
            for name, value, words in BAD_PARAMS:
                refused(run, vm, who, 'during MC',
                        'migrate-set-parameters', words, **{name: value})
        refused(run, p, 'primary', 'during MC', 'migrate',
                ('migration', 'progress', 'already'),
                uri='tcp:127.0.0.1:%d' % pair.mig_port)
        refused(run, p, 'primary', 'during MC', 'migrate-incoming',
                ('incoming', 'migration'), uri='tcp:127.0.0.1:1')
        refused(run, sb, 'standby', 'during MC', 'migrate',
                ('incoming', 'migration', 'progress'),
                uri='tcp:127.0.0.1:1')
        refused(run, sb, 'standby', 'during MC', 'cont',
                ('incoming', 'migration', 'mc'))
        # a valid change during MC is taken
        p.qmp.cmd('migrate-set-parameters', **{'mc-delay': 20})
        run.check(p.qmp.cmd('query-migrate-parameters')['mc-delay'] == 20,
                  'mc-delay not changed during MC')
        # the primary drops its standby; twice: the second does nothing
        p.qmp.cmd('mc-failover')
        second = p.qmp.cmd_raw('mc-failover')
        run.check('error' not in second or 'ending' in
                  second['error']['desc'] or 'not running' in
                  second['error']['desc'],
                  'second mc-failover: %s' % second)
        wait_for(lambda: p.qmp.cmd('query-migrate')['status'] != 'mc', 10)
        st = p.qmp.cmd('query-migrate')['status']
        run.check(st in ('completed', 'failed', 'cancelled'),
                  'primary after mc-failover: %s' % st)
        run.check(p.qmp.cmd('query-status')['status'] == 'running',
                  'primary guest stopped')
        # after MC ended, on both sides
        refused(run, p, 'primary', 'after MC ended', 'mc-failover',
                ('not running', 'ending'))
        time.sleep(0.5)
        if sb.proc.poll() is None:
            run.check(sb.qmp.cmd('query-status')['status'] != 'running',
                      'the standby runs after the primary left MC')
            refused(run, sb, 'standby', 'after MC ended', 'mc-failover',
                    ('not running', 'ending', 'stay stopped'))
        # cancel after the end does nothing
        p.qmp.cmd_raw('migrate_cancel')
        run.check(p.qmp.cmd('query-status')['status'] == 'running',
                  'migrate_cancel after MC stopped the guest')
    finally:
        if pair:
            pair.close()


def asan_soak(run, rng, wd):
    """The soak (soak.py) as one run of the table: 200,000 checkpoints
    under ASan/LSan (make build-asan)."""
    import soak
    bad, fig = soak.soak(int(os.environ.get('MC_SOAK_CHECKPOINTS', 200000)),
                         soak.ASAN_QEMU, 1024, log=sys.stdout)
    run.problems += bad
    run.fig.update({k: v for k, v in fig.items()
                    if k.startswith(('checkpoints', 'slope', 'minutes',
                                     'rss', 'ceiling'))})


def fuzz_case(run, rng, wd):
    """fuzz.py as one run of the table: fresh seeds from a real pair and
    its damaged-checkpoint check, then the fuzzer on what the standby
    parses for MC_REL_FUZZ_SECONDS (1800)."""
    import fuzz
    seconds = int(os.environ.get('MC_REL_FUZZ_SECONDS', 1800))

    def log(msg):
        print('  ' + msg, flush=True)
    try:
        fuzz.record(wd, log=log)
    except AssertionError as e:
        run.problems.append('damaged checkpoint: %s' % e)
        return
    fuzz.build()
    rc, stats = fuzz.fuzz(seconds, log=log)
    run.fig.update({'fuzz_' + k: v for k, v in stats.items()})
    run.check(rc == 0, 'the fuzzer found something (exit %d): see '
              'build/fuzz/artifacts' % rc)


def cases():
    c = [('primary-kill', primary_kill, 100, 2),
         ('standby-kill', standby_kill, 100, 2)]
    for policy in POLICIES:
        for long_cut in (False, True):
            c.append(('partition-%s-%s' % ('long' if long_cut else 'short',
                                           policy),
                      lambda r, g, w, p=policy, lc=long_cut:
                      partition(r, g, w, p, lc), 20, 1))
    for policy in POLICIES:
        c.append(('kill-cut-%s' % policy,
                  lambda r, g, w, p=policy: kill_cut(r, g, w, p), 20, 1))
    c += [('asan-soak', asan_soak, 1, 0),
          ('fuzz', fuzz_case, 1, 0),
          ('management-input', management_input, 5, 1),
          ('tls-kill', tls_kill, 20, 1),
          ('tls-unauthorized', tls_unauthorized, 5, 1)]
    return c


def pct(values, p):
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))
    return values[k]


def summarize(name, runs):
    held = sum(1 for r in runs if not r.problems)
    figs = []
    for key in ('failover_ms', 'answered_ms'):
        v = [r.fig[key] for r in runs if key in r.fig]
        if v:
            figs.append('%s p50 %.0f p99 %.0f max %.0f' % (
                key.replace('_ms', ' ms'), pct(v, 50), pct(v, 99), max(v)))
    both = [r.fig['both_running'] for r in runs if 'both_running' in r.fig]
    if both:
        figs.append('samples with two guests running: %d of %d' % (
            sum(both), sum(r.fig['samples'] for r in runs
                           if 'samples' in r.fig)))
    for r in runs:
        if 'checkpoints' in r.fig:
            figs.append('%d checkpoints in %s min, RSS outside guest RAM '
                        'and TCG: slope per 10,000 (after warm-up, +- '
                        'standard error) primary %s +- %s KiB, standby %s +- '
                        '%s KiB' % (
                            r.fig['checkpoints'], r.fig.get('minutes'),
                            r.fig.get('slope_primary_kib_per_10k'),
                            r.fig.get('slope_primary_se_kib_per_10k'),
                            r.fig.get('slope_standby_kib_per_10k'),
                            r.fig.get('slope_standby_se_kib_per_10k')))
            figs.append('RSS ceiling, second half against first: '
                        'primary %+d KiB, standby %+d KiB' % (
                            r.fig.get('ceiling_primary_kib', 0),
                            r.fig.get('ceiling_standby_kib', 0)))
            figs.append('RSS KiB first -> last (range after warm-up): '
                        'primary %s, standby %s; slope of all RSS '
                        '(guest RAM, TCG buffer included): primary %s, '
                        'standby %s KiB' % (
                            r.fig.get('rss_primary_kib'),
                            r.fig.get('rss_standby_kib'),
                            r.fig.get('slope_all_primary_kib_per_10k'),
                            r.fig.get('slope_all_standby_kib_per_10k')))
    for r in runs:
        if 'fuzz_executions' in r.fig:
            figs.append('%d inputs in %d min (%d/s), %s coverage edges, '
                        'corpus %d; a checkpoint damaged after its pages '
                        'refused whole, the standby resumed from the one '
                        'before' % (
                            r.fig['fuzz_executions'],
                            r.fig['fuzz_seconds'] // 60,
                            r.fig['fuzz_executions'] // r.fig['fuzz_seconds'],
                            r.fig.get('fuzz_edges'), r.fig['fuzz_corpus']))
    for key in ('phase', 'delay'):
        v = [str(r.fig[key]) for r in runs if key in r.fig]
        if v:
            figs.append('%s: %s' % (key, ', '.join(
                '%s %d' % (x, v.count(x)) for x in sorted(set(v)))))
    lost = sum(r.lost for r in runs)
    return {'case': name, 'runs': len(runs), 'held': held,
            'figures': '; '.join(figs), 'lost': lost}


def run_case(name, fn, n, rng, log):
    runs = []
    for i in range(1, n + 1):
        run = Run(name, i)
        wd = workdir('rel-' + name)
        t0 = time.time()
        try:
            fn(run, rng, wd)
        except Skip:
            raise
        except Exception as e:
            run.problems.append('%s: %s' % (type(e).__name__, e))
        run.fig['s'] = round(time.time() - t0, 1)
        if run.problems:
            print('kept %s' % wd, file=log, flush=True)
        else:
            shutil.rmtree(wd, ignore_errors=True)
        print(run, file=log, flush=True)
        runs.append(run)
    return runs


TABLE_HEAD = '''# Reliability runs

Written by `make check-reliability` (tests/mc/reliability.py --long
--table docs/reliability.md); do not edit by hand.  Each run starts a fresh pair; what each
case injects and checks is described at the top of reliability.py.
"Lost" counts acknowledged disk records missing on the standby plus
client streams that broke (gap, duplicate, reset) or stalled.

'''


def table(summaries, meta):
    out = [TABLE_HEAD, meta, '',
           '| case | runs | held | figures | lost | reproduce |',
           '|---|---|---|---|---|---|']
    for s in summaries:
        out.append('| %s | %d | %d | %s | %d | `reliability.py --cases '
                   '%s --runs %d` |' % (s['case'], s['runs'], s['held'],
                                        s['figures'], s['lost'], s['case'],
                                        s['runs']))
    return '\n'.join(out) + '\n'


def merge_tables(mine, other, note=''):
    """@mine with @other's run lines after its own and @other's rows
    replacing or following its rows (by case); @note after the run
    lines (why the rows were merged)."""
    def parts(text):
        metas = [ln for ln in text.splitlines()
                 if ln.startswith(('Run on ', 'Note: '))]
        rows = [ln for ln in text.splitlines()
                if ln.startswith('| ') and not ln.startswith('| case ')]
        return metas, rows
    m_meta, m_rows = parts(mine)
    o_meta, o_rows = parts(other)
    o_cases = {r.split('|')[1].strip(): r for r in o_rows}
    rows = [o_cases.pop(r.split('|')[1].strip(), r) for r in m_rows]
    rows += list(o_cases.values())
    notes = ['Note: ' + note] if note else []
    out = [TABLE_HEAD, '\n\n'.join(m_meta + o_meta + notes), '',
           '| case | runs | held | figures | lost | reproduce |',
           '|---|---|---|---|---|---|'] + rows
    return '\n'.join(out) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--long', action='store_true')
    ap.add_argument('--cases', default='')
    ap.add_argument('--runs', type=int, default=0)
    ap.add_argument('--seed', type=int, default=None)
    ap.add_argument('--table', default='')
    ap.add_argument('--merge-from', default='',
                    help='add the rows and run lines of this table file '
                    '(another run\'s) to --table, replacing rows of the '
                    'same cases; runs no case unless --cases says so')
    ap.add_argument('--note', default='',
                    help='with --merge-from: a line saying why')
    ap.add_argument('--counts', default='',
                    help='runs per case, e.g. primary-kill=100,default=5')
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    want = [c for c in args.cases.split(',') if c]
    chosen = [c for c in cases() if not want or c[0] in want]
    if args.merge_from and not want:
        chosen = []
    unknown = set(want) - {c[0] for c in cases()}
    if unknown:
        ap.error('unknown case(s): %s' % ', '.join(sorted(unknown)))
    t0 = time.time()
    print('seed %d' % seed, flush=True)
    summaries = []
    counts = dict(kv.split('=') for kv in args.counts.split(',') if kv)
    for name, fn, n_long, n_short in chosen:
        n = args.runs or (n_long if args.long else n_short)
        n = int(counts.get(name, counts.get('default', n)))
        if not n:
            continue
        try:
            runs = run_case(name, fn, n, rng, sys.stdout)
        except Skip as e:
            if not want and name == 'asan-soak':
                print('%s: not run: %s' % (name, e), flush=True)
                continue
            raise
        summaries.append(summarize(name, runs))
    minutes = (time.time() - t0) / 60
    meta = ('Run on %s, %d host CPUs, seed %d, %.0f min in all; '
            'arguments: `%s`.' % (time.strftime('%Y-%m-%d'), os.cpu_count(),
                                   seed, minutes,
                                   ' '.join(argv if argv is not None
                                            else sys.argv[1:])))
    text = table(summaries, meta) if chosen else ''
    if args.merge_from:
        with open(args.merge_from) as f:
            other = f.read()
        mine = text
        if not mine and args.table and os.path.exists(args.table):
            with open(args.table) as f:
                mine = f.read()
        text = merge_tables(mine, other, args.note)
    print(text)
    if args.table:
        with open(args.table, 'w') as f:
            f.write(text)
    return 0 if all(s['held'] == s['runs'] for s in summaries) else 1


if __name__ == '__main__':
    sys.exit(main())
