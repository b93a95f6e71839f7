#!/usr/bin/env python3
"""Guest disk figures: write throughput and fdatasync latency, one run.

The same guest (the Linux test guest, TCG, -machine pc, 512 MiB) with a
256 MiB ext4 disk (raw image, virtio-blk, cache=writeback) mounted at
/mnt runs guest/mc-diskbench: a sequential write of SEQ_MIB MiB (64 KiB
writes, then fsync) and RAND_S seconds of 4 KiB random writes in a
16 MiB file, each followed by fdatasync.  Measured, in this order:
  - no MC: the MC primary before migrate (its standby waits, idle);
  - MC at mc-delay 100, then at mc-delay 10 (changed at run time), in
    the same pair: the standby starts with an empty image, MC copies
    the disk during precopy and then carries each epoch's writes;
  - upstream COLO with its block replication (tests/mc/colo.py
    ColoDiskPair, docs/COLO-FT.txt), x-checkpoint-delay 100.  No
    "no COLO" figure: the baseline is the MC pair's "no MC".
Each pair first makes one untimed warm-up run (the file system's and
the images' first writes), then the measured ones.  The host triggers
each run on the guest's second serial port
(/dev/ttyS1, a UNIX socket here) once the configuration is in place,
and reads the guest's report lines and per-fdatasync marks from it:
throughput and IOPS are timed by the host's clock (the guest's stops
while the VM is paused for a checkpoint), fdatasync latency too (by
the marks around each call; the guest's own figures are in the CSV).
For the MC runs, query-migrate is sampled while the test runs: mean
pause per checkpoint over the run, disk bytes per checkpoint, the
largest disk-bytes-last and disk-pause-last-us seen.

Each configuration is repeated MC_BENCH_REPEAT times (default 3);
medians and (min..max).  Standalone: python3 bench/diskbench.py
(prints the table, writes docs/bench/disk.csv); make bench runs it from
bench/run.py.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..'))
sys.path.insert(0, os.path.join(TOP, 'tests', 'mc'))
from mcnet import Pair  # noqa: E402
from mcvm import BUILD, workdir  # noqa: E402
from colo import ColoDiskPair  # noqa: E402

REPEAT = int(os.environ.get('MC_BENCH_REPEAT', '3'))
SEQ_MIB = int(os.environ.get('MC_DISKBENCH_SEQ_MIB', '64'))
RAND_S = int(os.environ.get('MC_DISKBENCH_RAND_S', '5'))
DISK_SIZE = 256 << 20
MEM = '512M'
MOUNT = '/mnt'
CONFIGS = ('no MC', 'MC 100', 'MC 10', 'COLO')
OUT = os.path.join(TOP, 'docs', 'bench')
CSV_HEADER = ('rep,config,seq_mbps,rand_iops,fsync_p50_ms,fsync_p99_ms,'
              'fsync_max_ms,fsyncs,guest_seq_mbps,guest_rand_iops,'
              'guest_p50_ms,guest_p99_ms,guest_max_ms,coalesced_marks,'
              'checkpoints,pause_avg_ms,disk_bytes_per_checkpoint,'
              'disk_bytes_last_max,disk_pause_last_ms_avg,'
              'disk_pause_last_ms_max')
# the columns of a row, in CSV order after rep and config
FIELDS = CSV_HEADER.split(',')[2:]


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def fs_image(path):
    """A raw image of DISK_SIZE holding a fresh ext4 file system."""
    # written out, not sparse: the host file system would otherwise
    # allocate blocks under the first configuration measured only
    with open(path, 'wb') as f:
        zeros = bytes(1 << 20)
        for _ in range(DISK_SIZE >> 20):
            f.write(zeros)
    mkfs = shutil.which('mkfs.ext4', path=os.environ.get('PATH', '') +
                        ':/sbin:/usr/sbin') or 'mkfs.ext4'
    # no lazy inode table / journal init: the kernel would do it in the
    # background after the mount, during the first measurement
    subprocess.run([mkfs, '-q', '-F', '-E',
                    'lazy_itable_init=0,lazy_journal_init=0', path],
                   check=True)
    return path


def empty_image(path):
    """The MC standby's image: empty, the same size (qemu-img create)."""
    subprocess.run([os.path.join(BUILD, 'qemu', 'qemu-img'), 'create', '-q',
                    '-f', 'raw', path, str(DISK_SIZE)], check=True)
    return path


def drop_images(wd):
    """The images are big and of no use after a run: keep only the logs."""
    for name in os.listdir(wd):
        if name.endswith(('.img', '.qcow2', '.raw')):
            os.unlink(os.path.join(wd, name))


def trigger_args(path):
    """A second serial port (the guest's ttyS1) on a UNIX socket."""
    if path is None:
        return ['-chardev', 'null,id=trig', '-device',
                'isa-serial,chardev=trig']
    return ['-chardev', 'socket,id=trig,path=%s,server=on,wait=off' % path,
            '-device', 'isa-serial,chardev=trig']


def disk_args(path):
    return ['-drive', 'file=%s,if=none,id=d0,format=raw,cache=writeback'
            % path, '-device', 'virtio-blk-pci,drive=d0,id=disk0']


class Trigger:
    """The host's end of the guest's ttyS1: sends "go TAG", reads back
    the report lines and the 'S'/'E' marks, each stamped on arrival."""

    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.lines = []         # (host time, text)
        self.marks = []     # (host time, 'S'/'E', recv number, guest us)
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def _reader(self):
        try:    # stamp arrivals promptly: the QEMUs keep the CPUs busy
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -15)
        except (OSError, AttributeError):
            pass
        line, nrecv, end = b'', 0, None
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b''
            t = time.monotonic()
            if not data:
                self.closed = True
                return
            nrecv += 1
            with self.lock:
                for c in data:
                    c = bytes((c,))
                    if end is not None:     # inside "E<guest us>;"
                        if c == b';':
                            self.marks.append((end[0], 'E', end[1],
                                               int(end[2] or b'0')))
                            end = None
                        else:
                            end[2] += c
                    elif not line and c == b'S':
                        self.marks.append((t, 'S', nrecv, 0))
                    elif not line and c == b'E':
                        end = [t, nrecv, b'']
                    elif c == b'\n':
                        self.lines.append((t, line.decode(
                            errors='replace').strip()))
                        line = b''
                    elif c != b'\r':
                        line += c

    def run(self, tag, timeout=600, idle=None):
        """One run of both tests; calls idle() about every 0.1 s while
        it lasts.  Returns the figures of the run."""
        with self.lock:
            nl, nm = len(self.lines), len(self.marks)
        self.sock.sendall(b'go %s\n' % tag.encode())
        prefix = 'mc-diskbench: run=%s ' % tag
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                mine = [(t, s[len(prefix):]) for t, s in self.lines[nl:]
                        if s.startswith(prefix)]
            if any(s == 'done' for _, s in mine):
                break
            if self.closed or time.monotonic() > deadline:
                raise TimeoutError('diskbench run %s: no "done" (%s)'
                                   % (tag, mine))
            if idle:
                idle()
            time.sleep(0.1)
        with self.lock:
            marks = self.marks[nm:]
        got = {}
        for t, s in mine:
            words = s.split()
            if words[-1] == 'begin':
                got[words[0] + '_begin'] = t
            elif len(words) > 1 and '=' in words[1]:
                if any(w.startswith('error=') for w in words):
                    raise RuntimeError('diskbench run %s: %s' % (tag, s))
                got[words[0] + '_end'] = t
                got[words[0]] = dict(w.split('=', 1) for w in words[1:])
        seq, rand = got['seq'], got['rand']
        seq_s = got['seq_end'] - got['seq_begin']
        rand_s = got['rand_end'] - got['rand_begin']
        # each fdatasync: the host's time between its marks, unless both
        # came in one read (the reader was late): then the guest's, a
        # lower bound (its clock stops while the VM is paused)
        lat, coalesced, start = [], 0, None
        for t, c, n, guest_us in marks:
            if c == 'S':
                start = (t, n)
            elif start:
                host_ms = (t - start[0]) * 1000
                if n == start[1]:
                    coalesced += 1
                    host_ms = guest_us / 1000
                lat.append(max(host_ms, guest_us / 1000))
                start = None
        n = int(rand['n'])
        return {
            'seq_mbps': int(seq['mib']) * 1048576 / seq_s / 1e6,
            'rand_iops': n / rand_s,
            'fsync_p50_ms': pct(lat, 50) if lat else float('nan'),
            'fsync_p99_ms': pct(lat, 99) if lat else float('nan'),
            'fsync_max_ms': max(lat) if lat else float('nan'),
            'fsyncs': n,
            'guest_seq_mbps': float(seq['mbps']),
            'guest_rand_iops': float(rand['iops']),
            'guest_p50_ms': int(rand['p50_us']) / 1000,
            'guest_p99_ms': int(rand['p99_us']) / 1000,
            'guest_max_ms': int(rand['max_us']) / 1000,
            'coalesced_marks': coalesced,
        }

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class MCSampler:
    """query-migrate's mc object, sampled while a run lasts."""

    def __init__(self, pair):
        self.pair = pair
        self.first = pair.mc()
        self.samples = []
        self.bad = []

    def __call__(self):
        info = self.pair.primary.qmp.cmd('query-migrate')
        if info.get('status') != 'mc':
            self.bad.append(info.get('status'))
        self.samples.append(info['mc'])

    def figures(self):
        self()
        a, b = self.first, self.samples[-1]
        n = b['checkpoints'] - a['checkpoints']
        pause_sum = (b['pause-avg-us'] * b['checkpoints'] -
                     a['pause-avg-us'] * a['checkpoints'])
        if self.bad:
            raise RuntimeError('MC left state mc during the run: %s'
                               % self.bad)
        return {
            'checkpoints': n,
            'pause_avg_ms': pause_sum / n / 1000 if n else float('nan'),
            'disk_bytes_per_checkpoint':
                (b['disk-bytes'] - a['disk-bytes']) / n if n else 0,
            'disk_bytes_last_max': max(s['disk-bytes-last']
                                       for s in self.samples),
            'disk_pause_last_ms_avg': statistics.mean(
                s['disk-pause-last-us'] for s in self.samples) / 1000,
            'disk_pause_last_ms_max': max(
                s['disk-pause-last-us'] for s in self.samples) / 1000,
        }


def app_args():
    return 'mc.disk=%s mc.diskbench=%d,%d' % (MOUNT, SEQ_MIB, RAND_S)


def row(rep, config, fig):
    return (rep, config) + tuple(
        ('%.4g' % fig[k] if isinstance(fig.get(k), float) else fig.get(k, ''))
        for k in FIELDS)


def run_mc(rep, rows, log=print):
    """no MC, MC 100, MC 10 on one pair."""
    wd = workdir('diskbench-mc')
    image = fs_image(os.path.join(wd, 'primary.img'))
    standby = empty_image(os.path.join(wd, 'standby.img'))
    trig_path = os.path.join(wd, 'trigger.sock')
    pair = trig = None
    try:
        pair = Pair(None, wd, nics=(), delay=100, mem=MEM, machine='pc',
                    app=app_args(), role_args={
                        'primary': disk_args(image) + trigger_args(trig_path),
                        'standby': disk_args(standby) + trigger_args(None)})
        pair.primary.wait_serial('mc-diskbench: ready', timeout=120)
        trig = Trigger(trig_path)
        trig.run('warm-%d' % rep)
        fig = trig.run('nomc-%d' % rep)
        rows.append(row(rep, 'no MC', fig))
        log_run(log, 'no MC', fig)
        pair.start_mc(timeout=300)
        for delay in (100, 10):
            pair.primary.qmp.cmd('migrate-set-parameters',
                                 **{'mc-delay': delay})
            time.sleep(1)
            sampler = MCSampler(pair)
            fig = trig.run('mc%d-%d' % (delay, rep), idle=sampler)
            fig.update(sampler.figures())
            rows.append(row(rep, 'MC %d' % delay, fig))
            log_run(log, 'MC %d' % delay, fig)
    finally:
        if trig:
            trig.close()
        if pair:
            pair.close()
        drop_images(wd)


def run_colo(rep, rows, log=print):
    wd = workdir('diskbench-colo')
    image = fs_image(os.path.join(wd, 'primary.img'))
    trig_path = os.path.join(wd, 'trigger.sock')
    pair = trig = None
    try:
        pair = ColoDiskPair(wd, image, delay_ms=100, mem=MEM, app=app_args(),
                            extra={'primary': trigger_args(trig_path),
                                   'secondary': trigger_args(None)})
        pair.start(timeout=300)
        # the guest boots under COLO (the primary started paused)
        pair.primary.wait_serial('mc-diskbench: ready', timeout=600)
        trig = Trigger(trig_path)
        trig.run('warm-%d' % rep, timeout=900)
        n0 = pair.checkpoints()
        bad = []

        def idle():
            st = pair.primary.qmp.cmd('query-migrate')['status']
            if st != 'colo':
                bad.append(st)
        fig = trig.run('colo-%d' % rep, timeout=900, idle=idle)
        if bad:
            raise RuntimeError('COLO left state colo during the run: %s'
                               % bad)
        fig['checkpoints'] = pair.checkpoints() - n0
        rows.append(row(rep, 'COLO', fig))
        log_run(log, 'COLO', fig)
    finally:
        if trig:
            trig.close()
        if pair:
            pair.close()
        drop_images(wd)


def log_run(log, config, fig):
    extra = ''
    if 'pause_avg_ms' in fig:
        extra = ('  ckpts %d pause avg %.2f ms disk/ckpt %.0f KiB '
                 'disk pause avg %.2f ms' % (
                     fig['checkpoints'], fig['pause_avg_ms'],
                     fig['disk_bytes_per_checkpoint'] / 1024,
                     fig['disk_pause_last_ms_avg']))
    log('%-7s seq %7.2f MB/s  rand %7.1f IOPS  fdatasync p50 %6.2f p99 '
        '%7.2f max %7.2f ms%s' % (config, fig['seq_mbps'], fig['rand_iops'],
                                  fig['fsync_p50_ms'], fig['fsync_p99_ms'],
                                  fig['fsync_max_ms'], extra), flush=True)


def run(rep, rows, log=print, colo=True):
    """One repetition of every configuration; rows get the raw rows.
    A COLO failure is reported and leaves its rows out."""
    run_mc(rep, rows, log)
    if not colo:
        return
    try:
        run_colo(rep, rows, log)
    except Exception as e:      # noqa: BLE001 -- reported, not fatal
        log('COLO with block replication failed: %s' % e, flush=True)


def value(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float('nan')


def by_config(rows):
    """{config: {field: [value per repetition]}}"""
    out = {}
    for r in rows:
        d = out.setdefault(r[1], {f: [] for f in FIELDS})
        for f, x in zip(FIELDS, r[2:]):
            d[f].append(value(x))
    return out


def spread(values, fmt='%.2f'):
    values = [v for v in values if v == v]
    if not values:
        return 'n/a'
    return (fmt + ' (' + fmt + '..' + fmt + ')') % (
        statistics.median(values), min(values), max(values))


def relative(rows, config, field):
    """Per repetition: @config's @field in % of that repetition's no MC."""
    base = {r[0]: value(r[2 + FIELDS.index(field)]) for r in rows
            if r[1] == 'no MC'}
    return [100 * value(r[2 + FIELDS.index(field)]) / base[r[0]]
            for r in rows if r[1] == config and base.get(r[0])]


def table(rows):
    """The disk figures as markdown: one row per figure, one column per
    configuration."""
    c = by_config(rows)

    def col(field, fmt='%.2f', scale=1.0):
        return [spread([x * scale for x in c[k][field]], fmt) if k in c
                else 'n/a' for k in CONFIGS]

    def pct_col(field):
        return [spread(relative(rows, k, field), '%.1f') if k in c
                else 'n/a' for k in CONFIGS]

    p99_ratio = []
    for k in CONFIGS:
        r = relative(rows, k, 'fsync_p99_ms') if k in c else []
        p99_ratio.append(spread([x / 100 for x in r], '%.2f') + 'x'
                         if r else 'n/a')
    lines = [
        ('guest disk seq write (MB/s)', col('seq_mbps', '%.1f'), ''),
        ('guest disk seq write (% of no MC)', pct_col('seq_mbps'),
         'MC 100 >= 70 %'),
        ('random 4K write+fdatasync IOPS', col('rand_iops', '%.0f'), ''),
        ('random 4K write+fdatasync IOPS (% of no MC)',
         pct_col('rand_iops'), 'MC 100 >= 70 %'),
        ('fdatasync p50 (ms)', col('fsync_p50_ms'), ''),
        ('fdatasync p99 (ms)', col('fsync_p99_ms'), ''),
        ('fdatasync p99 (x no MC)', p99_ratio, 'MC 100 <= 2x'),
        ('fdatasync max (ms)', col('fsync_max_ms'), ''),
        ('fdatasync p99, guest clock (ms)', col('guest_p99_ms'), ''),
        ('checkpoints during the run', col('checkpoints', '%.0f'), ''),
        ('VM pause per checkpoint, mean over the run (ms)',
         col('pause_avg_ms'), ''),
        ('disk bytes per checkpoint (KiB)',
         col('disk_bytes_per_checkpoint', '%.0f', 1 / 1024.), ''),
        ('largest disk-bytes-last seen (KiB)',
         col('disk_bytes_last_max', '%.0f', 1 / 1024.), ''),
        ('disk-pause-last-us, mean of samples (ms)',
         col('disk_pause_last_ms_avg'), ''),
        ('disk-pause-last-us, max of samples (ms)',
         col('disk_pause_last_ms_max'), ''),
    ]
    out = ['| figure | %s | target |' % ' | '.join(CONFIGS),
           '|---|%s---|' % ('---|' * len(CONFIGS))]
    for name, cols, target in lines:
        out.append('| %s | %s | %s |' % (name, ' | '.join(cols), target))
    return '\n'.join(out)


def notes(rows):
    have = {r[1] for r in rows}
    text = ('Guest disk: 256 MiB ext4 (no lazy init) on a raw image '
            '(not sparse), virtio-blk, '
            'cache=writeback, guest 512 MiB, -machine pc, TCG. '
            'guest/mc-diskbench: seq = %d MiB in 64 KiB writes + fsync; '
            'random = 4 KiB pwrite at a random offset of a 16 MiB file + '
            'fdatasync, for %d s of guest time. Throughput, IOPS and '
            'fdatasync latency by the host\'s clock (the guest reports '
            'each step and marks each fdatasync on its second serial port; '
            'the guest\'s own clock stops while the VM is paused); "no MC": '
            'the MC primary before migrate, after one warm-up run; MC 100 '
            'and MC 10 in the same pair after it; COLO (after its own '
            'warm-up run): upstream COLO with its block replication '
            '(quorum + replication + NBD, docs/COLO-FT.txt; virtio-blk '
            'instead of IDE), x-checkpoint-delay 100, its %% figures against '
            'the MC pair\'s no MC of the same repetition. MC figures from '
            'query-migrate sampled every 0.1 s during the run. Raw data: '
            '`docs/bench/disk.csv`.' % (SEQ_MIB, RAND_S))
    if 'COLO' not in have:
        text += ' COLO: no figures (its block replication failed; see the ' \
                'run\'s output).'
    return text


def write_csv(rows, path=None):
    path = path or os.path.join(OUT, 'disk.csv')
    with open(path, 'w') as f:
        f.write(CSV_HEADER + '\n')
        for r in rows:
            f.write(','.join(str(x) for x in r) + '\n')


def write_run_info(started, path=None):
    """When and how the disk figures were measured, for the report."""
    with open(path or os.path.join(OUT, 'disk.json'), 'w') as f:
        json.dump({'date': time.strftime('%Y-%m-%d'), 'repetitions': REPEAT,
                   'minutes': round((time.time() - started) / 60, 1)}, f,
                  indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--no-colo', action='store_true',
                    help='leave out upstream COLO')
    ap.add_argument('--csv', default=os.path.join(OUT, 'disk.csv'),
                    help='raw rows (default docs/bench/disk.csv)')
    a = ap.parse_args()
    if not os.path.exists(os.path.join(BUILD, 'qemu', 'qemu-img')):
        sys.exit('qemu-img not built (make build)')
    os.makedirs(os.path.dirname(os.path.abspath(a.csv)), exist_ok=True)
    rows = []
    started = time.time()
    for rep in range(REPEAT):
        print('== disk, repetition %d of %d' % (rep + 1, REPEAT), flush=True)
        run(rep, rows, colo=not a.no_colo)
    write_csv(rows, a.csv)
    write_run_info(started, os.path.join(os.path.dirname(
        os.path.abspath(a.csv)), 'disk.json'))
    print('\n%d repetitions in %.1f min\n' % (REPEAT,
                                              (time.time() - started) / 60))
    print(table(rows))
    print('\n' + notes(rows))


if __name__ == '__main__':
    main()
