#!/usr/bin/env python3
"""The fuzzer on everything an MC standby parses from the wire, seeded
with streams recorded between a real primary and standby.

  1. record: a protected pair (the test guest with a disk and a memory
     check) with mcproxy.MCProxy on its migration channel; the first
     checkpoints become seeds (build/fuzz/seeds) in the target's format.
     The same run then checks the promise the fuzzer's oracle stands
     for, on real QEMUs: a checkpoint with valid checksums but a bad
     record after its RAM pages (its last section footer) is refused
     before anything of it is applied; the primary says "malformed"
     and runs on; killed, it leaves the standby to resume from the
     checkpoint before, whole (its epoch, mc-dirty's memory check).
  2. fuzz: scripts/build-fuzz.sh builds tests/mc/fuzz/mc-standby-fuzz.c
     (libFuzzer, ASan, LSan, UBSan); it runs for a fixed time on a fresh
     corpus from the seeds.  Any crash, hang (-timeout), leak or oracle
     abort fails, its input kept in build/fuzz/artifacts.

Usage: fuzz.py [--seconds N] [--record-only] [--rerecord]
(make check runs 90 s through test_fuzz.py; make check-fuzz 30 min.)
"""

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mcproxy  # noqa: E402
from mcdisk import (DISK_SIZE, Disk, DiskPair, make_empty_image,  # noqa
                    make_fs_image, need_tools)
from mcvm import (BUILD, DIRTY_LINE, MISMATCH, wait_for,  # noqa: E402
                  wait_migration, workdir)

TOP = os.path.abspath(os.path.join(HERE, '..', '..'))
FUZZ = os.path.join(BUILD, 'fuzz')
SEEDS = os.path.join(FUZZ, 'seeds')
TARGET = os.path.join(FUZZ, 'mc-standby-fuzz')
# a slow, checked dirtying: small checkpoints (small seeds)
DIRTY = 'mc.dirty=2,100,steady,check'


def expect(cond, timeout, what):
    if not wait_for(cond, timeout):
        raise AssertionError('timed out waiting for ' + what)


def damage_last_footer(epoch, payload):
    """The checkpoint with the mark of its last section footer changed:
    every RAM page and disk record before it is well formed."""
    at = mcproxy.last_footer(payload)
    assert payload[at] == 0x7e, 'no section footer where expected'
    b = bytearray(payload)
    b[at] = 0x7f
    return bytes(b)


def record(wd, seeds=SEEDS, log=print):
    """Step 1 (see above).  Returns the number of seeds written."""
    need_tools()
    p_img = make_fs_image(os.path.join(wd, 'primary.img'), 'raw')
    s_img = make_empty_image(os.path.join(wd, 'standby.img'), 'raw')
    pair = DiskPair(None, wd, Disk(p_img), Disk(s_img), writer=False,
                    app=DIRTY, delay=20, hb_timeout=10000, policy='safe')
    proxy = mcproxy.MCProxy(('127.0.0.1', pair.mig_port))
    try:
        pair.primary.qmp.cmd('migrate', uri='tcp:127.0.0.1:%d' % proxy.port)
        wait_migration(pair.primary.qmp, 'mc', timeout=180)
        expect(lambda: pair.mc()['acked'] >= 8, 60, '8 checkpoints')
        capacity = pair.standby.qmp.cmd(
            'query-migrate-parameters')['mc-max-buffer-size']
        n, blocks, disks = mcproxy.write_seeds(proxy, capacity, seeds)
        log('recorded %d checkpoints; %d seeds; RAM blocks %s; disks %s' % (
            len(proxy.checkpoints()), n, blocks, disks))
        assert 'pc.ram' in blocks, blocks
        assert disks == [DISK_SIZE], disks

        # a well-formed checkpoint with one bad record at its end
        proxy.tamper = damage_last_footer
        expect(lambda: proxy.tampered is not None, 30, 'the damage')
        bad = proxy.tampered
        expect(lambda: pair.primary.qmp.cmd('query-migrate')['status'] ==
               'failed', 30, 'the primary to give up MC')
        desc = pair.primary.qmp.cmd('query-migrate').get('error-desc', '')
        log('primary: %s' % desc)
        assert 'malformed' in desc and 'checkpoint %d' % bad in desc, desc
        assert pair.primary.qmp.cmd('query-status')['status'] == 'running'
        smc = pair.mc(pair.standby)
        assert pair.standby.qmp.cmd('query-migrate')['status'] == 'mc'
        assert smc['refused'] >= 1 and smc['applied'] == bad - 1, smc

        # the primary's host dies: the standby resumes from bad - 1
        serial0 = len(pair.standby.serial())
        pair.primary.kill(signal.SIGKILL)
        proxy.close()
        ev = pair.standby.qmp.wait_event('MC_FAILOVER', timeout=30)
        log('standby: %s' % ev['data'])
        assert ev['data']['epoch'] == bad - 1, ev
        assert pair.standby.qmp.cmd('query-status')['status'] == 'running'
        expect(lambda: len(DIRTY_LINE.findall(
            pair.standby.serial()[serial0:])) >= 2, 30,
            'two memory checks on the standby')
        reports = DIRTY_LINE.findall(pair.standby.serial()[serial0:])
        mismatches = MISMATCH.findall(pair.standby.serial())
        assert not mismatches and all(b == '0' for b in reports), \
            mismatches[:2] or reports
        out = pair.standby.output()
        assert 'bad footer' in out, out[-800:]
        log('standby resumed from checkpoint %d, memory check clean (%d '
            'reports)' % (bad - 1, len(reports)))
        return n
    finally:
        proxy.close()
        pair.close()


def build():
    subprocess.run(['bash', os.path.join(TOP, 'scripts', 'build-fuzz.sh'),
                    BUILD], check=True)


def fuzz(seconds, seeds=SEEDS, log=print):
    """Step 2.  Returns libFuzzer's exit code (0: clean) and its figures
    (executions, seconds, corpus inputs, coverage edges)."""
    corpus = os.path.join(FUZZ, 'corpus')
    artifacts = os.path.join(FUZZ, 'artifacts') + '/'
    shutil.rmtree(corpus, ignore_errors=True)
    os.makedirs(corpus)
    os.makedirs(artifacts, exist_ok=True)
    env = dict(os.environ, ASAN_OPTIONS='detect_leaks=1',
               UBSAN_OPTIONS='print_stacktrace=1:halt_on_error=1')
    before = set(os.listdir(artifacts))
    cmd = [TARGET, '-max_total_time=%d' % seconds, '-timeout=10',
           '-rss_limit_mb=2048', '-print_final_stats=1', '-use_value_profile=1',
           '-dict=' + os.path.join(HERE, 'fuzz', 'mc-standby.dict'),
           '-artifact_prefix=' + artifacts, corpus, seeds]
    log('$ ' + ' '.join(cmd))
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors='replace')
    lines = p.stdout.splitlines()
    for line in lines:
        if re.match(r'(stat::|Done |#\d+\s+DONE|==\d+==|SUMMARY|INFO: seed'
                    r'|.*passed the check)', line):
            log(line)
    found = sorted(set(os.listdir(artifacts)) - before)
    stats = {'seconds': seconds, 'corpus': len(os.listdir(corpus))}
    for line in lines:
        m = re.match(r'stat::number_of_executed_units:\s+(\d+)', line)
        if m:
            stats['executions'] = int(m.group(1))
        m = re.match(r'#\d+\s+DONE\s+cov: (\d+)', line)
        if m:
            stats['edges'] = int(m.group(1))
    if p.returncode or found:
        log('\n'.join(lines[-60:]))
        log('fuzzer exit %d; new artifacts: %s' % (p.returncode, found))
        return p.returncode or 1, stats
    log('corpus: %d inputs' % stats['corpus'])
    return 0, stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seconds', type=int, default=90)
    ap.add_argument('--record-only', action='store_true')
    ap.add_argument('--rerecord', action='store_true',
                    help='record new seeds even if some exist')
    args = ap.parse_args(argv)
    if args.rerecord or not glob.glob(os.path.join(SEEDS, '*')) or \
            args.record_only:
        shutil.rmtree(SEEDS, ignore_errors=True)
        record(workdir('fuzz-record'))
    if args.record_only:
        return 0
    build()
    return fuzz(args.seconds)[0]


if __name__ == '__main__':
    sys.exit(main())
