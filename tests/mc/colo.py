"""Upstream COLO on the test guest: the peer MC is measured against.

The setup follows upstream's COLO documentation (docs/COLO-FT.txt) minus
what this guest does not have: no disks (so no block replication) and no
NIC (so no colo-compare proxy: checkpoints come from the periodic timer,
x-checkpoint-delay).  Both QEMUs run the same guest; the secondary runs
it too, as COLO does, and takes over with x-colo-lost-heartbeat.
"""

import os
import re
import signal
import time

from mcvm import VM, guest_args, free_port, wait_migration


class ColoPair:
    def __init__(self, wd, delay_ms=100, mem='256M', app=''):
        self.port = free_port()
        self.trace = os.path.join(wd, 'colo-primary.trace')
        events = os.path.join(wd, 'colo-events')
        with open(events, 'w') as f:
            f.write('colo_send_message\ncolo_vm_state_change\n')
        # -machine pc as in upstream's COLO-FT.txt: on q35 the secondary
        # asserts in memory_region_add_subregion() loading device state
        # over its running devices (COLO does not reset them; MC does)
        args = guest_args(app, mem=mem, machine='pc')
        self.primary = VM('colo-primary', args + [
            '-trace', 'events=' + events, '-D', self.trace,
            '-msg', 'timestamp=on'], wd)
        self.secondary = VM('colo-secondary', args + [
            '-incoming', 'tcp:127.0.0.1:%d' % self.port], wd)
        self.delay = delay_ms
        self.primary.wait_serial('mc-guest: ready', timeout=120)
        for vm in (self.primary, self.secondary):
            vm.qmp.cmd('migrate-set-capabilities', capabilities=[
                {'capability': 'x-colo', 'state': True}])
        self.primary.qmp.cmd('migrate-set-parameters', **{
            'x-checkpoint-delay': delay_ms})

    def start(self, timeout=180):
        self.primary.qmp.cmd('migrate', uri='tcp:127.0.0.1:%d' % self.port)
        wait_migration(self.primary.qmp, 'colo', timeout=timeout)

    def checkpoints(self):
        """Checkpoints the primary sent so far (its trace)."""
        with open(self.trace) as f:
            return f.read().count("'vmstate-send'")

    def pauses_us(self):
        """How long the primary's VM stayed stopped, per checkpoint."""
        out, stop = [], None
        with open(self.trace) as f:
            for line in f:
                m = re.match(r'\d+@(\d+\.\d+):colo_vm_state_change '
                             r'Change \'(\w+)\' => \'(\w+)\'', line)
                if not m:
                    continue
                t = float(m.group(1))
                if m.group(2) == 'run' and m.group(3) == 'stop':
                    stop = t
                elif m.group(2) == 'stop' and m.group(3) == 'run' and stop:
                    out.append((t - stop) * 1e6)
                    stop = None
        return out

    def failover_ms(self):
        """kill -9 the primary; management reacts at once with
        x-colo-lost-heartbeat: ms from the kill to COLO_EXIT."""
        t0 = time.time()
        self.primary.kill(signal.SIGKILL)
        self.secondary.qmp.cmd('x-colo-lost-heartbeat')
        self.secondary.qmp.wait_event('COLO_EXIT', timeout=30)
        return (time.time() - t0) * 1000

    def close(self):
        for vm in (self.primary, self.secondary):
            vm.kill()
