"""Helpers for the MC fork's functional tests: start QEMU, talk QMP.

Only the Python standard library is used, so the tests run with Debian's
/usr/bin/python3 and nothing else.
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
BUILD = os.environ.get('MC_BUILD_DIR', os.path.join(TOP, 'build'))
QEMU = os.path.join(BUILD, 'qemu', 'qemu-system-x86_64')
GUEST = os.path.join(BUILD, 'guest')
# The guests' accelerator: tcg on the host (its /dev/kvm cannot run a
# guest), kvm inside the KVM lab (tests/lab/lab.py sets it); kvm's
# options may follow, e.g. "kvm,dirty-ring-size=4096".
ACCEL = os.environ.get('MC_TEST_ACCEL', 'tcg')


class Skip(Exception):
    """The test cannot run on this machine; the message says why."""


class QMPError(Exception):
    pass


class QMP:
    """A minimal QMP client over a UNIX socket."""

    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.buf = b''
        self.events = []
        greeting = self._read()
        while 'event' in greeting:      # seen once before the greeting
            self.events.append(greeting)
            greeting = self._read()
        assert 'QMP' in greeting, greeting
        self.cmd('qmp_capabilities')

    def _read(self):
        while b'\n' not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise QMPError('QMP connection closed')
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return json.loads(line)

    def cmd_raw(self, name, **args):
        msg = {'execute': name}
        if args:
            msg['arguments'] = args
        self.sock.sendall(json.dumps(msg).encode() + b'\n')
        while True:
            resp = self._read()
            if 'event' in resp:
                self.events.append(resp)
                continue
            return resp

    def cmd(self, name, **args):
        resp = self.cmd_raw(name, **args)
        if 'error' in resp:
            raise QMPError('%s: %s' % (name, resp['error']['desc']))
        return resp['return']

    def hmp(self, line):
        return self.cmd('human-monitor-command', **{'command-line': line})

    def wait_event(self, name, timeout=30):
        deadline = time.time() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev['event'] == name:
                    return self.events.pop(i)
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError('no %s event' % name)
            self.sock.settimeout(left)
            try:
                self.events.append(self._read())
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


class VM:
    """One QEMU process with a QMP socket and a serial log file."""

    def __init__(self, name, args, workdir, wrapper=(), binary=QEMU):
        self.name = name
        self.qmp_path = os.path.join(workdir, name + '.qmp')
        self.serial_path = os.path.join(workdir, name + '.serial')
        self.log_path = os.path.join(workdir, name + '.log')
        # wrapper: e.g. "ip netns exec NS", which execs: same pid
        cmd = list(wrapper) + [binary, '-name', name, '-nodefaults', '-display', 'none',
               '-qmp', 'unix:%s,server=on,wait=off' % self.qmp_path,
               '-serial', 'file:' + self.serial_path] + args
        self.log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(cmd, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        try:
            self.qmp = QMP(self.qmp_path)
        except Exception:
            self.kill()
            raise RuntimeError('%s did not start: %s' % (name, self.output()))

    def serial(self):
        try:
            with open(self.serial_path, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def wait_serial(self, text, timeout=60, start=0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            pos = self.serial().find(text, start)
            if pos >= 0:
                return pos
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise TimeoutError('%s: no %r on the serial console' % (self.name, text))

    def output(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-2000:]
        except FileNotFoundError:
            return ''

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def quit(self):
        if self.proc.poll() is None:
            try:
                self.qmp.cmd('quit')
            except Exception:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


# Printed by a test whose guest booted again (run.py, in the KVM lab,
# runs such a test once more: see docs/devel/mc-kvm-lab.rst)
GUEST_RESET_MARK = 'mc-test: the guest booted again'


TRACING = '/sys/kernel/tracing'


def kvm_trace_start():
    """Under KVM (the lab), have the kernel log each vCPU exit for a
    shutdown (a triple fault) and each exception KVM injects, from now
    on: KVM reinitialises a vCPU at a shutdown, so only its trace keeps
    where the guest died.  Returns whether it traces."""
    if not ACCEL.startswith('kvm'):
        return False
    if not os.path.exists(os.path.join(TRACING, 'events')):
        subprocess.run(['mount', '-t', 'tracefs', 'nodev', TRACING],
                       check=False, stderr=subprocess.DEVNULL)
    try:
        with open(os.path.join(TRACING, 'events/kvm/kvm_exit/filter'),
                  'w') as f:
            f.write('exit_reason==127\n')
        for ev in ('kvm_exit', 'kvm_inj_exception'):
            with open(os.path.join(TRACING, 'events/kvm', ev, 'enable'),
                      'w') as f:
                f.write('1\n')
        with open(os.path.join(TRACING, 'trace'), 'w') as f:
            f.write('')
    except OSError:
        return False
    return True


def kvm_trace():
    """What kvm_trace_start() has logged since (lines), or []."""
    try:
        with open(os.path.join(TRACING, 'trace')) as f:
            return [line for line in f if not line.startswith('#')]
    except OSError:
        return []


def kvm_guest_died(lines):
    """Why the KVM trace says a guest died, or None: a shutdown exit
    (triple fault), or a storm of page faults on kernel instruction
    fetches of pages not present (error code 0x10), which a sound guest
    kernel never takes: the lab's own kernel dies the same way (see
    docs/devel/mc-kvm-lab.rst)."""
    shutdowns = sum(1 for line in lines if 'reason shutdown' in line)
    fetch = sum(1 for line in lines if '#PF (0x10)' in line and
                'reinjected' not in line)
    if shutdowns:
        return 'a KVM guest triple-faulted (%d shutdown exits)' % shutdowns
    if fetch >= 10:
        return ('KVM injected %d page faults on kernel instruction fetches '
                'of absent pages' % fetch)
    return None


def process_stopped(pid):
    """Whether @pid is stopped (SIGSTOP: a test froze it); it would not
    answer QMP."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('T', 't')
    except (OSError, IndexError):
        return False


def guest_resets(vm):
    """The guest resets QMP reported on @vm (RESET, from the guest: a
    triple fault or its own reboot), reading what is pending if it
    still runs."""
    if vm.proc.poll() is None and not process_stopped(vm.proc.pid):
        try:
            vm.qmp.sock.settimeout(5)
            vm.qmp.cmd('query-status')
        except Exception:       # pylint: disable=broad-except
            pass
    return sum(1 for e in vm.qmp.events if e.get('event') == 'RESET' and
               (e.get('data') or {}).get('guest'))


def report_guest_resets(vms):
    """Print GUEST_RESET_MARK for each of @vms ({role: VM}) whose guest
    booted after MC began: a primary that came up twice, a standby that
    came up at all (it only ever runs from a checkpoint of a guest that
    was up), or any whose guest QMP saw reset (a guest that resets
    again and again while it boots never reaches its console's
    "ready")."""
    for role, vm in vms.items():
        try:
            boots = vm.serial().count('mc-guest: ready')
        except OSError:
            continue
        try:
            resets = guest_resets(vm)
        except Exception:       # pylint: disable=broad-except
            resets = 0
        if boots > (1 if role == 'primary' else 0) or resets:
            print('%s (%s, %d boots on its console, %d guest resets on '
                  'QMP)' % (GUEST_RESET_MARK, role, boots, resets))


def guest_args(append='', mem='256M', extra=(), machine='q35'):
    """Command line for the Linux test guest (under ACCEL)."""
    kernel = os.path.join(GUEST, 'vmlinuz')
    initrd = os.path.join(GUEST, 'initrd.img')
    if not os.path.exists(kernel):
        raise Skip('test guest not built (make guest)')
    return ['-accel', ACCEL, '-machine', machine, '-m', mem,
            '-kernel', kernel, '-initrd', initrd,
            '-append', 'console=ttyS0 panic=-1 quiet ' + append] + list(extra)


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_migration(qmp, want, timeout=120, bad=('failed', 'cancelled'),
                   interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = qmp.cmd('query-migrate').get('status')
        if st == want:
            return
        if st in bad:
            raise AssertionError('migration went %s, wanted %s' % (st, want))
        time.sleep(interval)
    raise TimeoutError('migration not %s after %ds' % (want, timeout))


# What guest/mc-dirty prints in check mode: its reports (bad= counts
# pages found from another round) and each page that does not match
DIRTY_LINE = re.compile(r'mc-dirty: t=\d+ pages=\d+ rate=\d+ bad=(\d+)')
MISMATCH = re.compile(r'mc-dirty: MISMATCH[^\n]*')


def wait_for(cond, timeout, step=0.05):
    """Poll @cond until it returns a true value, which is returned, or
    until @timeout seconds have passed: then its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def workdir(name):
    return tempfile.mkdtemp(prefix='mc-%s-' % name)
