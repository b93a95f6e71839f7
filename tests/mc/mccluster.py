"""Three Pacemaker cluster "nodes" on one machine, for the tests of
MC's cluster integration (cluster/ocf/mc-domain, test_cluster.py).

Each node is a process tree in namespaces of its own (cluster-node.sh is
its PID 1): network (its address on the cluster bridge, for corosync,
libvirt and MC's checkpoints; and a bridge br0 whose uplink joins the
public bridge, for its guests' NICs), mount (its own /run, /dev/shm,
/etc/hosts and persistent directories; the resource agent, the test
fencing device fence_mc_test and virsh overlaid on the host's /usr),
UTS, IPC and PID.  Each runs corosync, pacemaker and libvirtd (the build
tree's).  Killing a node's PID 1 kills all of it at once: a power cut.
Cutting its cluster link isolates it.

Fencing goes through a directory the harness watches (fence_mc_test
writes a request, the harness kills the node and answers): a test
device that works when the node's links are cut, as IPMI would.

A client namespace on the public bridge talks to the guests.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid

from lvhost import LIBVIRTD, RUN, VIRSH, domain_xml
from mcvm import GUEST, Skip

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
AGENT = os.path.join(REPO, 'cluster', 'ocf', 'mc-domain')
ALERT = os.path.join(REPO, 'cluster', 'alerts', 'mc-protection-alert')
FENCE = os.path.join(HERE, 'fence_mc_test')
NODE_SH = os.path.join(HERE, 'cluster-node.sh')

CL_BRIDGE, CL_NET = 'mccbr0', '10.79.0'
PUB_BRIDGE, PUB_NET = 'mccpub0', '10.79.1'
CLIENT_NS, CLIENT_IP = 'mcc-cl', PUB_NET + '.10'
GUEST_IP, GUEST_MAC = PUB_NET + '.2', '52:54:00:79:01:02'

NODE_DIRS = ('/etc/libvirt', '/var/lib/libvirt', '/var/log/libvirt',
             '/var/cache/libvirt', '/etc/corosync', '/var/lib/corosync',
             '/var/log/corosync', '/var/lib/pacemaker', '/var/log/pacemaker')
HACLUSTER_DIRS = ('/var/lib/pacemaker', '/var/lib/pacemaker/cib',
                  '/var/lib/pacemaker/pengine',
                  '/var/lib/pacemaker/blackbox',
                  '/var/lib/pacemaker/cores', '/var/log/pacemaker')

# corosync's token timeout (ms): how long a silent node takes to be
# declared lost (plus consensus, 1.2 times this)
TOKEN_MS = 2000


def sh(*argv, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode:
        raise RuntimeError('%s: %s%s' % (' '.join(argv), r.stdout, r.stderr))
    return r


def wait_for(cond, timeout, what, interval=0.2):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError('timed out (%ds) waiting for %s' %
                                 (timeout, what))
        time.sleep(interval)


class Node:
    def __init__(self, cluster, name, index):
        self.cluster, self.name, self.index = cluster, name, index
        self.ns = 'mcc-' + name
        self.addr = '%s.%d' % (CL_NET, 10 + index)
        self.root = os.path.join(cluster.wd, 'node-' + name)
        self.cl_link, self.pub_link = 'mccc%d' % index, 'mccp%d' % index
        self.proc = None
        self.boots = 0
        self._configure()
        self._network()

    def _configure(self):
        for d in NODE_DIRS:
            os.makedirs(self.root + d, exist_ok=True)
        for d in HACLUSTER_DIRS:
            os.makedirs(self.root + d, exist_ok=True)
            shutil.chown(self.root + d, 'hacluster', 'haclient')
        c = self.cluster
        nodes = ''.join(
            '  node {\n    ring0_addr: %s.%d\n    name: %s\n'
            '    nodeid: %d\n  }\n' % (CL_NET, 10 + i, n, i)
            for i, n in enumerate(c.names, 1))
        with open(self.root + '/etc/corosync/corosync.conf', 'w') as f:
            f.write('totem {\n  version: 2\n  cluster_name: mctest\n'
                    '  transport: knet\n  crypto_cipher: none\n'
                    '  crypto_hash: none\n  token: %d\n}\n'
                    'nodelist {\n%s}\n'
                    'quorum {\n  provider: corosync_votequorum\n}\n'
                    'logging {\n  to_logfile: yes\n'
                    '  logfile: /var/log/corosync/corosync.log\n'
                    '  to_syslog: no\n  to_stderr: no\n  timestamp: on\n}\n'
                    % (TOKEN_MS, nodes))
        with open(self.root + '/hosts', 'w') as f:
            f.write('127.0.0.1 localhost\n')
            for i, n in enumerate(c.names, 1):
                f.write('%s.%d %s\n' % (CL_NET, 10 + i, n))
        with open(self.root + '/etc/libvirt/libvirtd.conf', 'w') as f:
            f.write('listen_tls = 0\nlisten_tcp = 1\n'
                    'listen_addr = "%s"\nauth_tcp = "none"\n'
                    'auth_unix_rw = "none"\nhost_uuid = "%s"\n'
                    'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
                    'log_filters = "1:qemu.qemu_migration '
                    '1:qemu.qemu_process"\n' % (self.addr, uuid.uuid4()))
        with open(self.root + '/etc/libvirt/qemu.conf', 'w') as f:
            f.write('user = "root"\ngroup = "root"\n'
                    'security_driver = "none"\ndynamic_ownership = 0\n'
                    'remember_owner = 0\ncgroup_controllers = [ ]\n'
                    'stdio_handler = "file"\n'
                    'migration_host = "%s"\nmigration_address = "%s"\n'
                    % (self.addr, self.addr))

    def _network(self):
        ns = self.ns
        sh('ip', 'netns', 'del', ns, check=False)
        for link in (self.cl_link, self.pub_link):
            sh('ip', 'link', 'del', link, check=False)
        sh('ip', 'netns', 'add', ns)
        sh('ip', 'link', 'add', self.cl_link, 'type', 'veth', 'peer',
           'name', 'eth0', 'netns', ns)
        sh('ip', 'link', 'set', self.cl_link, 'master', CL_BRIDGE, 'up')
        sh('ip', '-n', ns, 'addr', 'add', self.addr + '/24', 'dev', 'eth0')
        sh('ip', '-n', ns, 'link', 'set', 'eth0', 'up')
        sh('ip', 'link', 'add', self.pub_link, 'type', 'veth', 'peer',
           'name', 'up0', 'netns', ns)
        sh('ip', 'link', 'set', self.pub_link, 'master', PUB_BRIDGE, 'up')
        sh('ip', '-n', ns, 'link', 'add', 'br0', 'type', 'bridge',
           'forward_delay', '0', 'stp_state', '0')
        sh('ip', '-n', ns, 'link', 'set', 'up0', 'master', 'br0', 'up')
        sh('ip', '-n', ns, 'link', 'set', 'br0', 'up')
        sh('ip', '-n', ns, 'link', 'set', 'lo', 'up')

    def boot(self):
        """Start the node (its PID 1); returns at once."""
        self.boots += 1
        env = dict(os.environ, MC_NODE_DIRS=' '.join(NODE_DIRS),
                   MC_FENCE_DIR=self.cluster.fence_dir, MC_AGENT=AGENT,
                   MC_FENCE=FENCE, MC_LIBVIRT_RUN=RUN,
                   MC_LIBVIRTD=LIBVIRTD, MC_VIRSH=VIRSH)
        self.log = open(os.path.join(self.root, 'node.out'), 'a')
        self.proc = subprocess.Popen(
            ['ip', 'netns', 'exec', self.ns, 'unshare', '--pid', '--fork',
             '--kill-child', '--mount', '--uts', '--ipc', '--mount-proc',
             '--propagation', 'private', 'bash', NODE_SH, self.root,
             self.name], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.cluster.set_power(self.name, 'on')

    def pid1(self):
        """The host PID of the node's PID 1."""
        def child():
            try:
                with open('/proc/%d/task/%d/children' % (self.proc.pid,
                                                          self.proc.pid)) as f:
                    kids = f.read().split()
            except OSError:
                return None
            return int(kids[0]) if kids else None
        return wait_for(child, 10, 'PID 1 of ' + self.name, 0.05)

    def start_libvirtd(self):
        """libvirtd again in the node, after it was stopped."""
        self.run('sh', '-c', '"%s" "%s" --listen --pid-file '
                 '/run/libvirt/libvirtd.pid >> /var/log/libvirt/libvirtd.out '
                 '2>&1 < /dev/null &' % (RUN, LIBVIRTD))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """Power cut: every process of the node dies at once."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)   # --kill-child: all
            self.proc.wait()
        self.cluster.set_power(self.name, 'off')

    def run(self, *argv, check=True, timeout=120):
        """@argv inside the node (all its namespaces)."""
        r = run_bounded(['nsenter', '-t', str(self.pid1()), '-a'] +
                        list(argv), timeout)
        if check and r.returncode:
            raise RuntimeError('%s on %s: %s%s' % (' '.join(argv), self.name,
                                                   r.stdout, r.stderr))
        return r

    def virsh(self, *args, check=True, timeout=120):
        return self.run(RUN, VIRSH, '-q', '-c', 'qemu:///system', *args,
                        check=check, timeout=timeout)

    def domstate(self, dom='mcg'):
        """'running (...)', 'paused (mc standby)', ... or '' (no domain,
        or the node is down)."""
        if not self.alive():
            return ''
        try:
            r = self.virsh('domstate', '--reason', dom, check=False,
                           timeout=20)
        except (subprocess.TimeoutExpired, AssertionError):
            return '?'
        return r.stdout.strip() if r.returncode == 0 else ''

    def protected(self, dom='mcg'):
        """Whether the domain here is an MC primary (an MC job)."""
        r = self.virsh('domjobinfo', dom, check=False, timeout=20)
        return r.returncode == 0 and '\nCheckpoints:' in '\n' + r.stdout

    def cut(self):
        sh('ip', 'link', 'set', self.cl_link, 'down')

    def heal(self):
        sh('ip', 'link', 'set', self.cl_link, 'up')

    def logs(self):
        out = ''
        for p in ('/node.out', '/var/log/pacemaker/pacemaker.log',
                  '/var/log/libvirt/libvirtd.log',
                  '/var/log/libvirt/qemu/mcg.log'):
            try:
                with open(self.root + p, errors='replace') as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            keep = 6000
            if p.endswith('pacemaker.log'):
                # the agent's own lines and the results of its actions:
                # what a failed run needs first (the CIB's are many)
                text = '\n'.join(line for line in text.splitlines()
                                 if 'mc-domain(' in line or
                                 'Result of' in line or
                                 'Unexpected result' in line or
                                 'fence' in line.lower() and
                                 'Leave' not in line)
                keep = 15000
            out += '--- %s %s\n%s\n' % (self.name, p, text[-keep:])
        return out


def run_bounded(argv, timeout):
    """subprocess.run(@argv) with its output, in a session of its own:
    on a timeout the whole session is killed.  nsenter forks into the
    node's PID namespace, and killing nsenter alone (as subprocess.run
    does) would leave the command running in the node."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class Cluster:
    """Cluster(wd): three nodes n1, n2, n3 booted, quorate, with the test
    fencing device configured; a client namespace on the public bridge."""

    def __init__(self, wd, names=('n1', 'n2', 'n3')):
        if os.geteuid() != 0:
            raise Skip('needs root (namespaces)')
        for tool in ('/usr/sbin/corosync', '/usr/sbin/pacemakerd',
                     '/usr/sbin/crm_mon'):
            if not os.path.exists(tool):
                raise Skip('pacemaker and corosync are not installed '
                           '(scripts/setup-host.sh)')
        for tool in (RUN, LIBVIRTD, VIRSH):
            if not os.path.exists(tool):
                raise Skip('libvirt is not built (make libvirt)')
        if not os.path.exists(os.path.join(GUEST, 'vmlinuz')):
            raise Skip('test guest not built (make guest)')
        for d in NODE_DIRS + ('/run/mc-fence',):
            os.makedirs(d, exist_ok=True)   # mount points
        self.wd, self.names = wd, names
        self.fence_dir = os.path.join(wd, 'fence')
        os.makedirs(self.fence_dir, exist_ok=True)
        # alert agents run as hacluster, which cannot enter @wd
        self.alert_dir = tempfile.mkdtemp(prefix='mc-cluster-alerts-')
        os.chmod(self.alert_dir, 0o1777)
        self.fenced = []            # (time, node, action)
        self.procs = []             # run_in's
        self.nodes = []
        self._stop = threading.Event()
        self._bridges()
        self.fencer = threading.Thread(target=self._fence_loop, daemon=True)
        self.fencer.start()
        try:
            for i, n in enumerate(names, 1):
                self.nodes.append(Node(self, n, i))
            for node in self.nodes:
                node.boot()
            self.wait_online(names)
            self.configure_base()
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name):
        return next(n for n in self.nodes if n.name == name)

    def _bridges(self):
        for br, addr in ((CL_BRIDGE, CL_NET + '.1/24'),
                         (PUB_BRIDGE, PUB_NET + '.1/24')):
            sh('ip', 'link', 'del', br, check=False)
            sh('ip', 'link', 'add', br, 'type', 'bridge', 'forward_delay',
               '0', 'stp_state', '0')
            sh('ip', 'addr', 'add', addr, 'dev', br)
            sh('ip', 'link', 'set', br, 'up')
        sh('ip', 'netns', 'del', CLIENT_NS, check=False)
        sh('ip', 'link', 'del', 'mcccl0', check=False)
        sh('ip', 'netns', 'add', CLIENT_NS)
        sh('ip', 'link', 'add', 'mcccl0', 'type', 'veth', 'peer', 'name',
           'eth0', 'netns', CLIENT_NS)
        sh('ip', 'link', 'set', 'mcccl0', 'master', PUB_BRIDGE, 'up')
        sh('ip', '-n', CLIENT_NS, 'addr', 'add', CLIENT_IP + '/24', 'dev',
           'eth0')
        sh('ip', '-n', CLIENT_NS, 'link', 'set', 'eth0', 'up')
        sh('ip', '-n', CLIENT_NS, 'link', 'set', 'lo', 'up')

    def run_in(self, ns, argv, **kw):
        """For mcnet's clients: @argv in namespace @ns, ended by close()
        if still running (a scenario that failed before stopping its
        client left it running, holding run.py's pipe open: the test
        then ended only at run.py's 600 s limit)."""
        proc = subprocess.Popen(['ip', 'netns', 'exec', ns] + argv, **kw)
        self.procs.append(proc)
        return proc

    # --- fencing ---

    def set_power(self, name, state):
        with open(os.path.join(self.fence_dir, 'state.' + name), 'w') as f:
            f.write(state + '\n')

    def _fence_loop(self):
        while not self._stop.wait(0.1):
            for f in sorted(os.listdir(self.fence_dir)):
                if not f.startswith('req.') or f.endswith('.tmp'):
                    continue
                rid = f[4:]
                name = rid.split('.')[0]
                with open(os.path.join(self.fence_dir, f)) as fh:
                    action = fh.read().strip()
                os.unlink(os.path.join(self.fence_dir, f))
                node = next((n for n in self.nodes if n.name == name), None)
                if node and action in ('off', 'reboot'):
                    node.kill()
                    if action == 'reboot':
                        node.boot()
                elif node and action == 'on' and not node.alive():
                    node.boot()
                self.fenced.append((time.time(), name, action))
                open(os.path.join(self.fence_dir, 'done.' + rid),
                     'w').close()

    # --- pacemaker ---

    def any_node(self, exclude=()):
        return next(n for n in self.nodes
                    if n.alive() and n.name not in exclude)

    def crm(self, *args, node=None, check=True):
        return (node or self.any_node()).run('crm', *args, check=check)

    def online(self, node=None):
        """Node names crm_mon shows online, as seen from @node."""
        r = (node or self.any_node()).run('crm_mon', '-1', '--exclude=all',
                                          '--include=nodes', check=False,
                                          timeout=30)
        for line in r.stdout.splitlines():
            if line.strip().startswith('* Online:'):
                return line.split('[', 1)[1].split(']')[0].split()
        return []

    def wait_online(self, names, timeout=120):
        wait_for(lambda: sorted(self.online()) == sorted(names), timeout,
                 'nodes %s online' % ' '.join(names), 1)

    def configure(self, text):
        path = os.path.join(self.wd, 'crm-%d.txt' % time.monotonic_ns())
        with open(path, 'w') as f:
            f.write(text)
        self.crm('configure', 'load', 'update', path)

    def configure_base(self):
        self.configure(
            'property cib-bootstrap-options: stonith-enabled=true '
            'stonith-action=off no-quorum-policy=stop '
            'cluster-recheck-interval=20s\n'
            'primitive fence stonith:fence_mc_test params '
            'pcmk_host_list="%s" op monitor interval=60s\n'
            % ' '.join(self.names))

    def close(self):
        self._stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.alert_dir, ignore_errors=True)
        for node in self.nodes:
            node.kill()
        sh('ip', 'netns', 'del', CLIENT_NS, check=False)
        sh('ip', 'link', 'del', 'mcccl0', check=False)
        for node in self.nodes:
            sh('ip', 'netns', 'del', node.ns, check=False)
            for link in (node.cl_link, node.pub_link):
                sh('ip', 'link', 'del', link, check=False)
        for br in (CL_BRIDGE, PUB_BRIDGE):
            sh('ip', 'link', 'del', br, check=False)

    def logs(self):
        return ''.join(n.logs() for n in self.nodes)


def guest_xml(wd, name='mcg', mem_mib=256):
    """The test guest as a libvirt domain (lvhost.domain_xml) with a NIC
    on each node's br0, serving a TCP stream on port 7000; returns the
    XML file and the serial log."""
    nic = ("<interface type='bridge'><mac address='%s'/>"
           "<source bridge='br0'/><model type='virtio'/>"
           "<driver name='qemu'/></interface>" % GUEST_MAC)
    path = os.path.join(wd, name + '.xml')
    with open(path, 'w') as f:
        f.write(domain_xml(name, wd, mem_mib, extra_devices=nic,
                           append='mc.ip=%s/24 mc.tcpserv=7000,20' %
                           GUEST_IP))
    return path, os.path.join(wd, name + '.serial')
