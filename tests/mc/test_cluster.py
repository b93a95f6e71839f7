"""Pacemaker decides failover and re-protects (cluster/ocf/mc-domain):
three cluster nodes on one machine (mccluster.py), the test guest as a
promotable clone of the agent, a client's TCP stream to it.

Each scenario prints the time to each step.  make check runs
test_cluster_primary_node_killed once; make check-cluster runs every
scenario MC_CLUSTER_RUNS times (10).
"""

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time

from mccluster import (AGENT, ALERT, CLIENT_NS, GUEST_IP, Cluster, guest_xml,
                       wait_for)
from mcnet import Client, problems
from mcvm import Skip, workdir
from test_libvirt import wait_guest_server

RSC = 'mcvm'


@contextlib.contextmanager
def cluster_up(name):
    wd = workdir(name)
    c = None
    try:
        c = Cluster(wd)
        yield wd, c
    except BaseException:
        if c:
            print(c.logs())
        raise
    finally:
        if c:
            c.close()
    shutil.rmtree(wd, ignore_errors=True)


def add_resource(c, xml, delay=50):
    c.configure(
        'primitive %s ocf:qemu-mc:mc-domain params config="%s" '
        'migrate_options="--mc-delay %d --mc-heartbeat-timeout 3000" '
        'op monitor interval=3s role=Promoted timeout=30s '
        'op monitor interval=4s role=Unpromoted timeout=30s '
        'op start timeout=60s op stop timeout=60s '
        'op promote timeout=120s op demote timeout=120s '
        'op notify timeout=60s\n'
        'clone %s-clone %s meta promotable=true promoted-max=1 '
        'promoted-node-max=1 clone-max=2 clone-node-max=1 notify=true\n'
        % (RSC, xml, delay, RSC, RSC))


def roles(c):
    """(primary, standby): the node running the domain protected, the
    node holding its standby; None where there is none."""
    primary = standby = None
    for n in c.nodes:
        st = n.domstate()
        if st.startswith('running') and n.protected():
            primary = n.name
        elif st == 'paused (mc standby)':
            standby = n.name
    return primary, standby


def wait_protected(c, timeout=240, exclude=()):
    def both():
        p, s = roles(c)
        return (p, s) if p and s and s not in exclude else None
    return wait_for(both, timeout, 'the domain protected', 0.5)


def protected_attr(node):
    """The agent's node attribute on @node (asked there): '1' the
    domain runs protected, '0' it runs unprotected, None never set."""
    r = node.run('attrd_updater', '-Q', '-n', 'mc-protected-' + RSC,
                 '-N', node.name, check=False, timeout=30)
    m = re.search(r'value="([^"]*)"', r.stdout)
    return m.group(1) if m else None


def running_nodes(c):
    return [n.name for n in c.nodes if n.domstate().startswith('running')]


def start_client(c, wd, serial):
    wait_guest_server(serial)
    client = Client(c, CLIENT_NS, os.path.join(wd, 'client'), GUEST_IP,
                    7000, 10)
    client.wait(lambda evs: client.count() >= 20)
    return client


def check_client(client, n_before, more=100, timeout=90):
    client.wait(lambda evs: client.count() >= n_before + more or
                problems(evs), timeout=timeout)
    evs = client.stop()
    assert not problems(evs), problems(evs)
    assert client.last_srv() >= n_before + more, (client.last_srv(),
                                                  n_before)


class Sampler:
    """Counts the nodes that run the guest, every 0.3 s, in a thread: two
    at once is split brain."""

    def __init__(self, c):
        self.c, self.most, self.samples = c, 0, 0
        self.seen = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop.wait(0.3):
            running = running_nodes(self.c)
            self.samples += 1
            if len(running) > self.most:
                self.most = len(running)
                self.seen = running

    def stop(self):
        self._stop.set()
        self.thread.join()
        return self.most


def protect(c, wd):
    """The resource added; returns (primary, standby, seconds to
    protected, client, serial)."""
    xml, serial = guest_xml(wd)
    t = time.time()
    add_resource(c, xml)
    p, s = wait_protected(c)
    t_prot = time.time() - t
    client = start_client(c, wd, serial)
    time.sleep(1)
    return p, s, t_prot, client


def wait_running(c, name, t0, what):
    """Wait until the domain runs on node @name; seconds since @t0."""
    wait_for(lambda: c[name].domstate().startswith('running'), 120, what)
    return time.time() - t0


def fenced_after(c, name, t0):
    f = [t for t, n, _ in c.fenced if n == name and t >= t0]
    return f[0] - t0 if f else None


def alert_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def primary_node_killed(wd, c):
    # the alert agent, as an operator sets it up; Pacemaker runs it as
    # hacluster: a file it may write
    alerts = os.path.join(c.alert_dir, 'protection.log')
    c.configure('alert mc-protection %s select attributes { mc-protected-%s '
                '} to %s\n' % (ALERT, RSC, alerts))
    p, s, t_prot, client = protect(c, wd)
    wait_for(lambda: protected_attr(c[p]) == '1', 30,
             'mc-protected 1 on the primary\'s node')
    n_kill = client.last_srv()
    t0 = time.time()
    c[p].kill()
    t_promoted = wait_running(c, s, t0,
                              'the standby on %s to be promoted' % s)
    third = next(n.name for n in c.nodes if n.name not in (p, s))
    # the operator's signal: unprotected after the takeover, then 1
    seen = []

    def reprotected():
        seen.append(protected_attr(c[s]))
        p2, s2 = roles(c)
        return (p2, s2) if p2 and s2 and s2 != p else None
    p2, s2 = wait_for(reprotected, 240, 'the domain protected again', 0.3)
    t_reprot = time.time() - t0
    wait_for(lambda: protected_attr(c[s]) == '1', 30,
             'mc-protected 1 on the new primary\'s node')
    print('mc-protected on %s between the takeover and the new standby: '
          '%s' % (s, sorted(set(map(str, seen)))))
    assert '0' in seen, 'mc-protected never said unprotected: %s' % seen
    # the alert said it, in order, for the node that took over
    wait_for(lambda: [l for l in alert_lines(alerts)
                      if '%s on %s protected' % (RSC, s) in l], 30,
             'the alert saying %s is protected again' % s)
    said = [l for l in alert_lines(alerts) if ' %s on %s ' % (RSC, s) in l]
    print('alerts about %s:\n  %s' % (s, '\n  '.join(said)))
    unprot = [i for i, l in enumerate(said) if 'UNPROTECTED' in l]
    assert unprot and any('protected:' in l for l in said[unprot[0]:]), said
    check_client(client, n_kill)
    fig = {'protected s': t_prot, 'fenced s': fenced_after(c, p, t0),
           'promoted s': t_promoted, 'protected again s': t_reprot}
    print('%s -> %s; %s killed: %s; now %s -> %s; client record %d at the '
          'kill, %d at the end, no gap, reset or duplicate' % (
              p, s, p, fig, p2, s2, n_kill, client.last_srv()))
    assert fig['fenced s'] is not None, 'the dead node was never fenced'
    assert (p2, s2) == (s, third), (p2, s2)
    assert running_nodes(c) == [s], running_nodes(c)
    return fig


def standby_node_killed(wd, c):
    p, s, t_prot, client = protect(c, wd)
    n_kill = client.last_srv()
    t0 = time.time()
    c[s].kill()
    third = next(n.name for n in c.nodes if n.name not in (p, s))
    p2, s2 = wait_protected(c, exclude=(s,))
    t_reprot = time.time() - t0
    check_client(client, n_kill)
    fig = {'protected s': t_prot, 'fenced s': fenced_after(c, s, t0),
           'protected again s': t_reprot}
    print('%s -> %s; %s killed: %s; now %s -> %s; client record %d at the '
          'kill, %d at the end' % (p, s, s, fig, p2, s2, n_kill,
                                    client.last_srv()))
    assert fig['fenced s'] is not None, 'the dead node was never fenced'
    assert (p2, s2) == (p, third), (p2, s2)
    return fig


def primary_node_isolated(wd, c):
    p, s, t_prot, client = protect(c, wd)
    sampler = Sampler(c)
    n_cut = client.last_srv()
    t0 = time.time()
    c[p].cut()
    t_promoted = wait_running(c, s, t0,
                              'the standby on %s to be promoted' % s)
    p2, s2 = wait_protected(c, exclude=(p,))
    t_reprot = time.time() - t0
    check_client(client, n_cut)
    most = sampler.stop()
    fig = {'protected s': t_prot, 'fenced s': fenced_after(c, p, t0),
           'promoted s': t_promoted, 'protected again s': t_reprot}
    print('%s -> %s; %s cut off: %s; now %s -> %s; at most %d node(s) '
          'running the guest in %d samples (%s); client record %d at the '
          'cut, %d at the end' % (p, s, p, fig, p2, s2, most,
                                  sampler.samples, sampler.seen, n_cut,
                                  client.last_srv()))
    assert most <= 1, 'two guests ran at once: %s' % sampler.seen
    assert fig['fenced s'] is not None, 'the isolated node was not fenced'
    assert not c[p].alive()
    assert p2 == s, (p2, s2)
    return fig


def planned_move(wd, c):
    p, s, t_prot, client = protect(c, wd)
    n_move = client.last_srv()
    t0 = time.time()
    c.any_node().run('crm_resource', '--move', '--promoted', '--resource',
                     RSC + '-clone', '--node', s)
    t_moved = wait_running(c, s, t0, 'the domain to run on %s' % s)
    p2, s2 = wait_protected(c)
    t_reprot = time.time() - t0
    c.any_node().run('crm_resource', '--clear', '--resource', RSC + '-clone')
    check_client(client, n_move)
    fig = {'protected s': t_prot, 'moved s': t_moved,
           'protected again s': t_reprot}
    print('%s -> %s; moved to %s: %s; now %s -> %s; client record %d at '
          'the move, %d at the end' % (p, s, s, fig, p2, s2, n_move,
                                       client.last_srv()))
    assert not c.fenced, c.fenced
    assert p2 == s, (p2, s2)
    return fig


def libvirtd_restart(wd, c):
    p, s, t_prot, client = protect(c, wd)
    n0 = client.last_srv()
    acked0 = None
    for name in (p, s):
        node = c[name]
        node.run('pkill', '-x', 'libvirtd')
        wait_for(lambda: node.run('pgrep', '-x', 'libvirtd',
                                  check=False).returncode != 0, 30,
                 'libvirtd to end on ' + name)
        time.sleep(2)
        node.start_libvirtd()
        wait_for(lambda: node.virsh('uri', check=False).returncode == 0, 60,
                 'libvirtd back on ' + name)
    time.sleep(10)

    def jobinfo():
        try:
            r = c[p].virsh('domjobinfo', 'mcg', check=False, timeout=20)
        except subprocess.TimeoutExpired:
            return None
        return r.stdout if 'Checkpoints acked' in r.stdout else None
    try:
        acked0 = wait_for(jobinfo, 90, 'domjobinfo on %s after the '
                          'restarts to show MC' % p, 2)
    except AssertionError as e:
        raise AssertionError('%s; pacemaker says:\n%s' % (
            e, c.any_node().run('crm_mon', '-1', check=False,
                                timeout=20).stdout)) from None
    check_client(client, n0)
    failures = c.any_node().run('crm_mon', '-1', '--include=failures',
                                check=False).stdout
    print('%s -> %s; libvirtd restarted on both; roles now %s; %s' % (
        p, s, roles(c), failures.split('Failed Resource Actions')[-1]
        if 'Failed Resource Actions' in failures else 'no failed action'))
    assert roles(c) == (p, s), roles(c)
    assert 'Checkpoints acked' in acked0, acked0
    assert 'Failed Resource Actions' not in failures, failures
    assert not c.fenced, c.fenced
    return {'protected s': t_prot}


SCENARIOS = {
    'primary-node-killed': primary_node_killed,
    'standby-node-killed': standby_node_killed,
    'primary-node-isolated': primary_node_isolated,
    'planned-move': planned_move,
    'libvirtd-restart': libvirtd_restart,
}


def run_scenario(name):
    with cluster_up('cluster-' + name) as (wd, c):
        return SCENARIOS[name](wd, c)


def test_cluster_primary_node_killed():
    """The primary's node loses power: Pacemaker fences it, promotes the
    standby (it takes over from the last acknowledged checkpoint: the
    client's TCP connection carries on), starts an unpromoted instance
    on the third node, and the new primary protects itself to it."""
    run_scenario('primary-node-killed')


def test_cluster_standby_node_killed():
    """The standby's node loses power: once it is fenced the primary
    drops its standby (QEMU waited: policy manual) and protects itself
    to the third node; the client's connection carries on."""
    run_scenario('standby-node-killed')


def test_cluster_primary_node_isolated():
    """The primary's node loses its cluster link: the other two fence
    it and promote the standby; never do two nodes run the guest."""
    run_scenario('primary-node-isolated')


def test_cluster_planned_move():
    """crm_resource --move --promoted to the standby's node: a
    switchover; the client's connection carries on and the domain is
    protected again, back to the old node."""
    run_scenario('planned-move')


def test_cluster_libvirtd_restart():
    """libvirtd restarted on both nodes: nothing changes, nothing fails."""
    run_scenario('libvirtd-restart')


def test_cluster_agent_ocf_tester():
    """resource-agents' ocf-tester on the agent, on a cluster node with
    the test domain: every action, repeated actions, a promotion and a
    demotion (no standby: the domain boots, then stops)."""
    with cluster_up('cluster-ocf-tester') as (wd, c):
        xml, _ = guest_xml(wd)
        r = c['n1'].run('ocf-tester', '-n', 'mctest', '-o', 'config=' + xml,
                        '/usr/lib/ocf/resource.d/qemu-mc/mc-domain',
                        check=False, timeout=600)
        print(r.stdout[-3000:], r.stderr[-3000:])
        assert r.returncode == 0 and 'passed all tests' in r.stdout, \
            r.returncode
        assert c['n1'].domstate() == '', 'the domain was left behind'


STUB_VIRSH = r'''#!/bin/sh
# libvirtd as the agent meets it: $MC_STUB_FIRST to the first domstate
# (a daemon not up yet, or no such domain), then $MC_STUB_STATE (the
# pair's standby unless told)
case "$*" in
*domstate*)
    if [ -n "$MC_STUB_FIRST" ] && [ ! -e "$MC_STUB_DIR/asked" ]; then
        : > "$MC_STUB_DIR/asked"
        echo "$MC_STUB_FIRST" >&2
        exit 1
    fi
    echo "${MC_STUB_STATE:-paused (mc standby)}" ;;
*domjobinfo*)
    [ "$MC_STUB_JOB" = fail ] && exit 1
    printf 'Job type:         Unbounded\nOperation:        %s\n' \
        "$MC_STUB_JOB" ;;
*" uri"*) echo qemu:///system ;;
*) exit 1 ;;
esac
'''


def agent_monitor(wd, first, state='', job='', promoted=False):
    """The agent's monitor on this host, without a cluster, against a
    libvirtd (virsh) that says @first to the first question, then that
    the domain is in @state (default the standby's), its job @job
    ('fail': domjobinfo fails); @promoted: this node promoted the
    instance before.  The agent's run."""
    stub = os.path.join(wd, 'bin')
    os.makedirs(stub, exist_ok=True)
    with open(os.path.join(stub, 'virsh'), 'w') as f:
        f.write(STUB_VIRSH)
    os.chmod(os.path.join(stub, 'virsh'), 0o755)
    if os.path.exists(os.path.join(wd, 'asked')):
        os.unlink(os.path.join(wd, 'asked'))
    rsc = os.path.join(wd, 'rsc')
    os.makedirs(rsc, exist_ok=True)
    mark = os.path.join(rsc, 'mc-domain-mcvm.promoted')
    if promoted:
        open(mark, 'w').close()
    elif os.path.exists(mark):
        os.unlink(mark)
    xml, _ = guest_xml(wd)
    env = dict(os.environ, PATH=stub + ':' + os.environ['PATH'],
               OCF_ROOT='/usr/lib/ocf', OCF_RESOURCE_INSTANCE='mcvm:0',
               OCF_RESKEY_config=xml, HA_RSCTMP=rsc,
               OCF_RESKEY_CRM_meta_interval='4000',
               MC_STUB_DIR=wd, MC_STUB_FIRST=first, MC_STUB_STATE=state,
               MC_STUB_JOB=job)
    return subprocess.run(['bash', AGENT, 'monitor'], env=env,
                          capture_output=True, text=True, timeout=60)


def test_cluster_agent_libvirtd_coming_back():
    """A monitor that meets libvirtd restarting (it cannot connect, then
    the daemon answers) reports what the daemon then says (the standby,
    0), never "not running" (7), which would make Pacemaker destroy the
    standby and protect the domain anew.  A domain libvirtd does not
    know is not running."""
    if not os.path.exists('/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs'):
        raise Skip('resource-agents is not installed '
                   '(scripts/setup-host.sh)')
    wd = workdir('agent-monitor')
    try:
        r = agent_monitor(wd, 'error: failed to connect to the hypervisor')
        print('libvirtd coming back: rc %d %s' % (r.returncode, r.stderr))
        assert r.returncode == 0, r.returncode
        r = agent_monitor(wd, "error: failed to get domain 'mcg'")
        print('no such domain: rc %d' % r.returncode)
        assert r.returncode == 7, r.returncode
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def test_cluster_agent_primary_paused_by_migration():
    """The primary is stopped for a moment by its own outgoing migration
    (precopy's last stop, as a protection begins MC: libvirt says
    "paused (migration)"): the monitor still reports it promoted (8).
    Taken for an unpromoted instance (0), Pacemaker promoted the new
    standby beside the running primary (three of ten standby-node-killed
    runs, a client's connection reset).  A paused domain with an incoming
    migration is not the primary (0)."""
    if not os.path.exists('/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs'):
        raise Skip('resource-agents is not installed '
                   '(scripts/setup-host.sh)')
    wd = workdir('agent-paused')
    try:
        r = agent_monitor(wd, '', 'paused (migration)', 'Outgoing migration')
        print('paused by its outgoing migration: rc %d' % r.returncode)
        assert r.returncode == 8, r.returncode
        r = agent_monitor(wd, '', 'paused (migration)', 'Incoming migration')
        print('paused, incoming: rc %d' % r.returncode)
        assert r.returncode == 0, r.returncode
        # libvirt's job does not say (domjobinfo failed, or between two
        # phases): the node that promoted the instance still holds the
        # primary (one of ten standby-node-killed runs after the fix
        # above: demoted, mc-switchover to a standby with no checkpoint)
        for job in ('fail', ''):
            r = agent_monitor(wd, '', 'paused (migration)', job,
                              promoted=True)
            print('paused, job %r, promoted here: rc %d' % (job,
                                                            r.returncode))
            assert r.returncode == 8, r.returncode
            r = agent_monitor(wd, '', 'paused (migration)', job)
            print('paused, job %r, never promoted here: rc %d' % (
                job, r.returncode))
            assert r.returncode == 0, r.returncode
        r = agent_monitor(wd, '', 'paused (migration)', 'Incoming migration',
                          promoted=True)
        print('paused, incoming, promoted here once: rc %d' % r.returncode)
        assert r.returncode == 0, r.returncode
    finally:
        shutil.rmtree(wd, ignore_errors=True)
