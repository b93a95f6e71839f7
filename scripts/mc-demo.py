#!/usr/bin/env python3
"""The main job: a protected VM pair on this machine, failover shown.

A primary and a standby QEMU run the Linux test guest under TCG, with a
memory-dirtying workload and a TCP record server in the guest.  MC runs for
a while; then the primary is killed with SIGKILL and the standby carries
on.  Prints checkpoints, VM pause p50/p99, data sent, and the time from the
kill to the guest answering again on the standby.
"""

import os
import re
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'tests', 'mc'))
from mcvm import VM, guest_args, free_port, wait_migration, workdir  # noqa

RUN_SECONDS = float(os.environ.get('MC_DEMO_SECONDS', '15'))
DELAY_MS = int(os.environ.get('MC_DEMO_DELAY', '100'))


def ask_guest(port, timeout=0.2):
    """One record from the guest's TCP server, or None."""
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b''
            while b'\n' not in data:
                chunk = s.recv(64)
                if not chunk:
                    return None
                data += chunk
            return data.split(b'\n')[0].decode()
    except OSError:
        return None


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    wd = workdir('demo')
    mig_port, p_port, s_port = free_port(), free_port(), free_port()
    app = 'mc.ip=10.0.2.15/24 mc.tcpserv=7000,50'
    if os.environ.get('MC_DEMO_DIRTY', '5000') != '0':
        # the workload: 16 MiB, dirtied at this many pages per second
        app += ' mc.dirty=16,%s' % os.environ.get('MC_DEMO_DIRTY', '5000')

    def nic(port):
        return ['-netdev', 'user,id=n0,hostfwd=tcp:127.0.0.1:%d-:7000' % port,
                '-device', 'virtio-net-pci,netdev=n0']

    trace = os.path.join(wd, 'primary-trace.log')
    print('== starting the primary and the standby (work dir %s)' % wd)
    primary = VM('primary', guest_args(app, extra=nic(p_port) + [
        '-trace', 'mc_checkpoint_take', '-D', trace]), wd)
    standby = VM('standby', guest_args(app, extra=nic(s_port) + [
        '-incoming', 'tcp:127.0.0.1:%d' % mig_port]), wd)
    try:
        primary.wait_serial('mc-guest: ready', timeout=120)
        primary.wait_serial('mc-tcpserv: listening', timeout=30)
        for vm in (primary, standby):
            vm.qmp.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'mc', 'state': True}])
            vm.qmp.cmd('migrate-set-parameters', **{'mc-delay': DELAY_MS})
        print('== guest up; answering on the primary: %s' % ask_guest(p_port, 5))
        print('== migrate with capability mc, mc-delay %d ms' % DELAY_MS)
        primary.qmp.cmd('migrate', uri='tcp:127.0.0.1:%d' % mig_port)
        wait_migration(primary.qmp, 'mc', timeout=180)
        print('== protected; running for %.0f s' % RUN_SECONDS)
        n0, t0 = primary.qmp.cmd('query-migrate')['mc']['checkpoints'], time.time()
        time.sleep(RUN_SECONDS)
        mc = primary.qmp.cmd('query-migrate')['mc']
        rate = (mc['checkpoints'] - n0) / (time.time() - t0)
        print(primary.qmp.hmp('info mc'), end='')

        print('== kill -9 the primary')
        t_kill = time.time()
        primary.kill(signal.SIGKILL)
        ev = standby.qmp.wait_event('MC_FAILOVER', timeout=60)
        t_event = time.time()
        answer = None
        while time.time() - t_kill < 60 and not answer:
            # slirp accepts at once and forwards to the guest: a short
            # timeout would only churn connections, so wait for the line
            answer = ask_guest(s_port, 1.0)
        t_answer = time.time()
        print('== standby: %s %s; guest answers: %s' % (
            ev['event'], ev['data'], answer))

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
        print('failover: kill -> MC_FAILOVER %.0f ms, kill -> guest '
              'answering on the standby %.0f ms' % (
                  (t_event - t_kill) * 1000, (t_answer - t_kill) * 1000))
        if not answer:
            print('FAILED: the guest did not answer on the standby')
            return 1
        st = standby.qmp.cmd('query-status')['status']
        print('standby run state: %s' % st)
        return 0 if st == 'running' else 1
    finally:
        primary.kill()
        standby.quit()


if __name__ == '__main__':
    sys.exit(main())
