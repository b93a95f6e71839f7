#!/usr/bin/env python3
"""The client side of the network tests: talks to the guest's mc-tcpserv.

Run in the client's network namespace.  Modes:

  stream  read the numbered records ("srv N PAD N"), send "cli K" every
          --interval ms and expect "echo K" back in order.  Every event
          is a JSON line on --out (flushed at once), so the test can read
          it while the client runs:
            {"ev": "up"}                          connected
            {"ev": "srv", "n": N, "t": T}         record N, in sequence
            {"ev": "echo", "k": K, "rtt": S, "t": T}
            {"ev": "bad", "why": ..., "t": T}     gap, duplicate, garbage
            {"ev": "closed", "why": ..., "t": T}  reset or end of stream
            {"ev": "end", "unanswered": [K...]}   on SIGTERM
  rtt     send "cli K" one at a time and print the round-trip times
          (--nondet: "time K", answered with the guest's clock)
          (seconds) as one JSON list on stdout.
  bulk    ask for --bytes bytes and print {"bytes": B, "seconds": S}.
  load    open loop: send "cli K" at --rate requests a second for
          --seconds, whether answered or not, and print the round-trip
          times as one JSON list (plus {"unanswered": N} if any).
"""

import argparse
import json
import selectors
import signal
import socket
import sys
import threading
import time


def connect(host, port, timeout=20):
    deadline = time.time() + timeout
    while True:
        try:
            s = socket.create_connection((host, port), timeout=2)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def check_srv(line, expect):
    """Why record @line is not record @expect, or None."""
    parts = line.split(' ')
    if (len(parts) != 4 or parts[0] != 'srv' or not parts[1].isdigit() or
            parts[1] != parts[3] or not parts[2] or parts[2].strip('x')):
        return 'malformed record %r' % line[:80]
    if int(parts[1]) != expect:
        return 'record %s where %d was due' % (parts[1], expect)
    return None


def stream(args):
    out = open(args.out, 'a', buffering=1)

    def log(ev, **kw):
        kw['ev'] = ev
        kw.setdefault('t', time.time())
        out.write(json.dumps(kw) + '\n')

    sock = connect(args.host, args.port)
    sock.setblocking(False)
    log('up')
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    buf = b''
    expect_srv = 1
    next_cli = 1
    sent = {}           # K -> send time, for the unanswered ones
    tx = b''
    interval = args.interval / 1000.0
    next_send = time.time()
    while not stop:
        now = time.time()
        if interval and now >= next_send:
            sent[next_cli] = now
            tx += b'cli %d\n' % next_cli
            next_cli += 1
            next_send += interval
            if next_send < now:
                next_send = now + interval
        if tx:
            try:
                n = sock.send(tx)
                tx = tx[n:]
            except BlockingIOError:
                pass
            except OSError as e:
                log('closed', why='send: %s' % e)
                break
        wait = max(0.0, next_send - time.time()) if interval else 1.0
        if not sel.select(min(wait, 0.05)):
            continue
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError as e:
            log('closed', why='recv: %s' % e)
            break
        if not data:
            log('closed', why='end of stream')
            break
        buf += data
        while b'\n' in buf:
            raw, buf = buf.split(b'\n', 1)
            line = raw.decode(errors='replace')
            now = time.time()
            if line.startswith('srv'):
                why = check_srv(line, expect_srv)
                if why:
                    log('bad', why=why)
                    # resynchronise, so that one break is one report
                    p = line.split(' ')
                    if len(p) == 4 and p[1].isdigit():
                        expect_srv = int(p[1]) + 1
                else:
                    log('srv', n=expect_srv)
                    expect_srv += 1
            elif line.startswith('echo '):
                k = int(line[5:]) if line[5:].isdigit() else -1
                first = min(sent) if sent else None
                if k != first:
                    log('bad', why='echo %r where %s was due' % (line, first))
                if k in sent:
                    log('echo', k=k, rtt=now - sent.pop(k))
            else:
                log('bad', why='unexpected line %r' % line[:80])
    log('end', unanswered=sorted(sent))
    out.close()


def rtt(args):
    sock = connect(args.host, args.port)
    f = sock.makefile('rb')
    times = []
    # --nondet: replies carry the guest's clock (differ run to run)
    ask = b'time %d\n' if args.nondet else b'cli %d\n'
    for k in range(1, args.count + 1):
        t0 = time.perf_counter()
        sock.sendall(ask % k)
        while True:
            line = f.readline()
            if not line:
                raise SystemExit('connection closed')
            if line == b'echo %d\n' % k or (
                    args.nondet and line.startswith(b'echo %d ' % k)):
                break
        times.append(time.perf_counter() - t0)
        time.sleep(args.interval / 1000.0)
    print(json.dumps(times))


def bulk(args):
    sock = connect(args.host, args.port)
    sock.settimeout(args.timeout)
    t0 = time.perf_counter()
    sock.sendall(b'bulk %d\n' % args.bytes)
    got = 0
    tail = b''
    while True:
        data = sock.recv(1 << 20)
        if not data:
            raise SystemExit('connection closed')
        # records ("srv ...") may come between and after: count dots only
        window = tail + data
        end = window.find(b'\nbulk done\n')
        if end >= 0:
            got += data[:max(0, end + 1 - len(tail))].count(b'.')
            break
        got += data.count(b'.')
        tail = window[-16:]
    secs = time.perf_counter() - t0
    print(json.dumps({'bytes': got, 'seconds': secs}))


def load(args):
    sock = connect(args.host, args.port)
    f = sock.makefile('rb')
    sent = {}
    times = []
    count = int(args.rate * args.seconds)

    def receive():
        while len(times) < count:
            line = f.readline()
            if not line:
                return
            if line.startswith(b'echo '):
                k = int(line.split()[1])
                t0 = sent.pop(k, None)
                if t0 is not None:
                    times.append(time.perf_counter() - t0)

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    start = time.perf_counter()
    for k in range(1, count + 1):
        due = start + (k - 1) / args.rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent[k] = time.perf_counter()
        sock.sendall(b'cli %d\n' % k)
    rx.join(args.timeout)
    out = {'rtts': times, 'unanswered': count - len(times),
           'seconds': time.perf_counter() - start}
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('mode', choices=['stream', 'rtt', 'bulk', 'load'])
    ap.add_argument('--rate', type=float, default=100)
    ap.add_argument('--seconds', type=float, default=5)
    ap.add_argument('--host', required=True)
    ap.add_argument('--port', type=int, default=7000)
    ap.add_argument('--interval', type=float, default=20)
    ap.add_argument('--out', default='/dev/stdout')
    ap.add_argument('--count', type=int, default=100)
    ap.add_argument('--bytes', type=int, default=8 << 20)
    ap.add_argument('--timeout', type=float, default=60)
    ap.add_argument('--nondet', action='store_true',
                    help='rtt: ask "time K", whose answer carries the '
                    "guest's clock")
    args = ap.parse_args()
    {'stream': stream, 'rtt': rtt, 'bulk': bulk,
     'load': load}[args.mode](args)


if __name__ == '__main__':
    sys.exit(main())
