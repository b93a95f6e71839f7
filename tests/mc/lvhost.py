"""Two libvirt "hosts" on one machine, for tests of libvirt driving MC.

Each host is a network namespace (its own address on a bridge in the
root namespace) plus a mount namespace in which /etc/libvirt, /run/libvirt,
/var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are the host's
own directories under the test's work directory.  Each runs its own
libvirtd from the build tree (build/libvirt), listening on TCP without
authentication (a test network only), with its own host UUID, and
configured to run our QEMU as root without a security driver.  The
QEMU processes libvirtd starts live in its namespaces, so a migration
between the hosts crosses the bridge.

virsh runs in the root namespace: qemu+tcp://ADDRESS/system.
"""

import os
import shutil
import subprocess
import time
import uuid

from mcvm import BUILD, GUEST, QEMU, Skip

LIBVIRT = os.path.join(BUILD, 'libvirt')
RUN = os.path.join(LIBVIRT, 'run')
LIBVIRTD = os.path.join(LIBVIRT, 'src', 'libvirtd')
VIRSH = os.path.join(LIBVIRT, 'tools', 'virsh')
DIRS = ('/etc/libvirt', '/run/libvirt', '/var/lib/libvirt',
        '/var/log/libvirt', '/var/cache/libvirt')

BRIDGE = 'mclbr0'
NET = '10.78.0'


def sh(*argv, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode:
        raise RuntimeError('%s: %s%s' % (' '.join(argv), r.stdout, r.stderr))
    return r


class Host:
    """One libvirt host: a namespace pair and its libvirtd."""

    def __init__(self, net, name, index, wd):
        self.name, self.index = name, index
        self.ns = 'mcl-' + name
        self.addr = '%s.%d' % (NET, 10 + index)
        self.uri = 'qemu+tcp://%s/system' % self.addr
        self.root = os.path.join(wd, 'host-' + name)
        self.proc = None
        net.add_ns(self.ns, self.addr, 'mclv%d' % index)
        self._configure()
        self.start()

    def _configure(self):
        for d in DIRS:
            os.makedirs(self.root + d, exist_ok=True)
        with open(self.root + '/etc/libvirt/libvirtd.conf', 'w') as f:
            f.write('listen_tls = 0\nlisten_tcp = 1\n'
                    'listen_addr = "%s"\nauth_tcp = "none"\n'
                    'auth_unix_rw = "none"\nhost_uuid = "%s"\n'
                    'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
                    'log_filters = "1:qemu.qemu_migration 1:qemu.qemu_monitor_json"\n'
                    % (self.addr, uuid.uuid4()))
        with open(self.root + '/etc/libvirt/qemu.conf', 'w') as f:
            f.write('user = "root"\ngroup = "root"\n'
                    'security_driver = "none"\ndynamic_ownership = 0\n'
                    'remember_owner = 0\ncgroup_controllers = [ ]\n'
                    'stdio_handler = "file"\n'
                    'migration_host = "%s"\n'
                    'migration_address = "%s"\n' % (self.addr, self.addr))

    def start(self):
        mounts = ' '.join('mount --bind "%s%s" "%s";' % (self.root, d, d)
                          for d in DIRS)
        script = ('set -e; %s exec "%s" "%s" --listen '
                  '--pid-file /run/libvirt/libvirtd.pid' %
                  (mounts, RUN, LIBVIRTD))
        self.log = open(os.path.join(self.root, 'libvirtd.out'), 'a')
        self.proc = subprocess.Popen(
            ['ip', 'netns', 'exec', self.ns, 'unshare', '--mount',
             '--propagation', 'private', 'sh', '-c', script],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while self.virsh('uri', check=False).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError('libvirtd on %s did not start: %s' % (
                    self.name, self.daemon_log()[-2000:]))
            time.sleep(0.3)

    def stop(self, sig='TERM'):
        if self.proc and self.proc.poll() is None:
            sh('kill', '-' + sig, str(self.proc.pid), check=False)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def daemon_log(self):
        out = ''
        for p in (os.path.join(self.root, 'libvirtd.out'),
                  self.root + '/var/log/libvirt/libvirtd.log'):
            try:
                with open(p, errors='replace') as f:
                    out += f.read()
            except FileNotFoundError:
                pass
        return out

    def virsh(self, *args, check=True, timeout=300):
        r = subprocess.run([RUN, VIRSH, '-q', '-c', self.uri] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError('virsh %s on %s: %s%s' % (
                ' '.join(args), self.name, r.stdout, r.stderr))
        return r

    def event_watcher(self, event, out, dom='mcg'):
        """virsh event --loop for @event of @dom, printing to file @out."""
        return subprocess.Popen(
            [RUN, VIRSH, '-c', self.uri, 'event', '--domain', dom,
             '--event', event, '--loop'],
            stdout=open(out, 'w'), stderr=subprocess.STDOUT)

    def domstate(self, dom):
        return self.virsh('domstate', '--reason', dom).stdout.strip()

    def qemu_log(self, dom):
        try:
            with open('%s/var/log/libvirt/qemu/%s.log' % (self.root, dom),
                      errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''


class Net:
    """The bridge in the root namespace that joins the hosts."""

    def __init__(self):
        self.namespaces, self.links = [], []
        sh('ip', 'link', 'del', BRIDGE, check=False)
        sh('ip', 'link', 'add', BRIDGE, 'type', 'bridge')
        sh('ip', 'addr', 'add', NET + '.1/24', 'dev', BRIDGE)
        sh('ip', 'link', 'set', BRIDGE, 'up')

    def add_ns(self, ns, addr, veth):
        sh('ip', 'netns', 'del', ns, check=False)
        sh('ip', 'link', 'del', veth, check=False)
        sh('ip', 'netns', 'add', ns)
        self.namespaces.append(ns)
        sh('ip', 'link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0',
           'netns', ns)
        self.links.append(veth)
        sh('ip', 'link', 'set', veth, 'master', BRIDGE, 'up')
        sh('ip', 'netns', 'exec', ns, 'ip', 'addr', 'add', addr + '/24',
           'dev', 'eth0')
        sh('ip', 'netns', 'exec', ns, 'ip', 'link', 'set', 'eth0', 'up')
        sh('ip', 'netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up')

    def close(self):
        for ns in self.namespaces:
            sh('ip', 'netns', 'del', ns, check=False)
        for link in self.links:
            sh('ip', 'link', 'del', link, check=False)
        sh('ip', 'link', 'del', BRIDGE, check=False)


class Hosts:
    """Hosts('a', 'b'): the network and one libvirt host per name."""

    def __init__(self, wd, *names):
        if os.geteuid() != 0:
            raise Skip('needs root (namespaces, libvirtd)')
        for tool in (RUN, LIBVIRTD, VIRSH):
            if not os.path.exists(tool):
                raise Skip('libvirt is not built (make libvirt)')
        for d in DIRS:
            os.makedirs(d, exist_ok=True)   # mount points for the binds
        self.wd = wd
        self.net = Net()
        self.hosts = []
        try:
            for i, name in enumerate(names):
                self.hosts.append(Host(self.net, name, i + 1, wd))
        except Exception:
            self.close()
            raise

    def __getitem__(self, i):
        return self.hosts[i]

    def close(self):
        for h in self.hosts:
            # libvirtd leaves its QEMU processes running: destroy them
            try:
                for dom in h.virsh('list', '--name').stdout.split():
                    h.virsh('destroy', dom, check=False)
            except Exception:
                pass
            h.stop()
        self.net.close()


def domain_xml(name, wd, mem_mib=256, append='', extra_devices=''):
    """The Linux test guest as a libvirt domain running our QEMU (TCG)."""
    kernel = os.path.join(GUEST, 'vmlinuz')
    initrd = os.path.join(GUEST, 'initrd.img')
    if not os.path.exists(kernel):
        raise Skip('test guest not built (make guest)')
    serial = os.path.join(wd, name + '.serial')
    return """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet {append}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    <serial type='file'><source path='{serial}' append='on'/></serial>
    <memballoon model='none'/>
    {extra}
  </devices>
</domain>
""".format(name=name, mem=mem_mib, kernel=kernel, initrd=initrd,
           append=append, qemu=QEMU, serial=serial, extra=extra_devices)


def rm(path):
    shutil.rmtree(path, ignore_errors=True)
