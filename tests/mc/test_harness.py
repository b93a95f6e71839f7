"""The harness's own rules for the KVM lab: what counts as a guest that
died (run.py then runs the test once more) and a frozen QEMU that is not
asked over QMP.  Runs anywhere: no guest is booted."""

import signal
import subprocess
import time

from mcvm import guest_resets, kvm_guest_died, process_stopped

# Lines of the lab kernel's KVM trace, as seen on 2026-12-08
SHUTDOWN = (' qemu-system-x86-139 [000] ..... 25.226972: kvm_exit: vcpu 0 '
            'reason shutdown rip 0xffffffffc04540d0 info1 0x0000000000000000 '
            'info2 0x0000000000000000 intr_info 0x80000b0e error_code '
            '0x00000010\n')
FETCH_PF = (' qemu-system-x86-138 [000] ..... 80.493259: kvm_inj_exception: '
            '#PF (0x10)\n')
USER_PF = (' qemu-system-x86-139 [001] ..... 15.121442: kvm_inj_exception: '
           '#PF (0x14) [reinjected]\n')


def test_harness_guest_death_from_kvm_trace():
    """A shutdown exit, or a storm of kernel-fetch page faults KVM
    injected, is a dead guest; a user process's faults are not."""
    assert kvm_guest_died([]) is None
    assert kvm_guest_died([USER_PF] * 500) is None
    assert kvm_guest_died([FETCH_PF] * 3) is None
    assert 'triple-faulted' in kvm_guest_died([USER_PF, SHUTDOWN])
    assert 'kernel instruction fetches' in kvm_guest_died([FETCH_PF] * 40)


class FakeSocket:
    def settimeout(self, timeout):
        pass


class FakeQMP:
    def __init__(self, events):
        self.events = list(events)
        self.asked = 0
        self.sock = FakeSocket()

    def cmd(self, name, **args):
        self.asked += 1
        return {}


class FakeVM:
    def __init__(self, proc, events):
        self.proc = proc
        self.qmp = FakeQMP(events)


def test_harness_guest_resets_and_frozen_qemu():
    """QMP's RESETs from the guest are counted (not one asked for by
    management); a process frozen with SIGSTOP is not asked."""
    proc = subprocess.Popen(['sleep', '30'])
    try:
        time.sleep(0.1)
        vm = FakeVM(proc, [{'event': 'RESET',
                            'data': {'guest': True, 'reason': 'guest-reset'}},
                           {'event': 'RESET',
                            'data': {'guest': False, 'reason': 'host-qmp'}},
                           {'event': 'STOP'}])
        assert not process_stopped(proc.pid)
        assert guest_resets(vm) == 1
        assert vm.qmp.asked == 1
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        assert process_stopped(proc.pid)
        assert guest_resets(vm) == 1
        assert vm.qmp.asked == 1, 'a frozen QEMU was asked over QMP'
    finally:
        proc.kill()
        proc.wait()
