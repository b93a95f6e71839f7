"""Functional smoke test: boot the Linux guest under TCG, precopy-migrate it
between two QEMUs on localhost, check that it keeps running afterwards."""

import re
import shutil
import time

from mcvm import VM, guest_args, free_port, wait_migration, workdir


def last_tick(text):
    ticks = re.findall(r'mc-guest: tick (\d+)', text)
    return int(ticks[-1]) if ticks else 0


def test_precopy_linux_guest():
    wd = workdir('smoke')
    port = free_port()
    args = guest_args('mc.dirty=16,20000')
    src = VM('src', args, wd)
    dst = VM('dst', args + ['-incoming', 'tcp:127.0.0.1:%d' % port], wd)
    try:
        src.wait_serial('mc-guest: ready', timeout=60)
        src.wait_serial('mc-dirty: t=', timeout=30)
        src.qmp.cmd('migrate', uri='tcp:127.0.0.1:%d' % port)
        wait_migration(src.qmp, 'completed', timeout=120)
        assert dst.qmp.cmd('query-status')['status'] == 'running'
        assert src.qmp.cmd('query-status')['status'] == 'postmigrate'
        # The destination's serial log starts empty: every tick in it was
        # printed by the migrated guest, continuing the source's count.
        before = last_tick(src.serial())
        deadline = time.time() + 30
        while time.time() < deadline and last_tick(dst.serial()) < before + 2:
            time.sleep(0.2)
        after = last_tick(dst.serial())
        assert after >= before + 2, (before, after, dst.serial()[-500:])
        assert 'mc-dirty: t=' in dst.serial()
    finally:
        src.quit()
        dst.quit()
    shutil.rmtree(wd, ignore_errors=True)
