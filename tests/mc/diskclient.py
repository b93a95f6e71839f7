#!/usr/bin/env python3
"""The client side of the disk tests: talks to the guest's mc-diskwriter.

Run in the client's network namespace.  Reads the writer's "ok N" lines
(record N is on the disk: its fsync returned) and checks they come in
sequence; on SIGUSR1 sends "verify" and records the writer's answer.
Every event is a JSON line on --out (flushed at once), so the test can
read it while the client runs:
  {"ev": "up", "t": T}                             connected
  {"ev": "ok", "n": N, "t": T}                     record N acknowledged
  {"ev": "bad", "why": ..., "t": T}                gap, duplicate, garbage
  {"ev": "error", "errno": E, "t": T}              the writer failed
  {"ev": "verify-sent", "t": T}
  {"ev": "verify", "records": M, "bad": B, "torn": T, "last": N, "t": T}
  {"ev": "verify-done", "t": T}
  {"ev": "closed", "why": ..., "t": T}             reset or end of stream
  {"ev": "end", "t": T}                            on SIGTERM
"""

import argparse
import json
import re
import selectors
import signal
import socket
import sys
import time

VERIFY_RE = re.compile(r'^verify records=(\d+) bad=(\d+) torn=(\d+) '
                       r'last=(\d+)$')


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--host', required=True)
    ap.add_argument('--port', type=int, default=7100)
    ap.add_argument('--out', default='/dev/stdout')
    args = ap.parse_args()

    out = open(args.out, 'a', buffering=1)

    def log(ev, **kw):
        kw['ev'] = ev
        kw.setdefault('t', time.time())
        out.write(json.dumps(kw) + '\n')

    stop = []
    verify = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGUSR1, lambda *a: verify.append(1))
    sock = connect(args.host, args.port)
    sock.setblocking(False)
    log('up')
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    buf = b''
    expect = 1
    while not stop:
        if verify:
            verify.clear()
            try:
                sock.sendall(b'verify\n')
            except BlockingIOError:
                verify.append(1)        # try again on the next turn
            except OSError as e:
                log('closed', why='send: %s' % e)
                break
            else:
                log('verify-sent')
        if not sel.select(0.05):
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
            m = VERIFY_RE.match(line)
            if line.startswith('ok ') and line[3:].isdigit():
                n = int(line[3:])
                if n != expect:
                    log('bad', why='ok %d where %d was due' % (n, expect))
                log('ok', n=n)
                expect = n + 1
            elif m:
                log('verify', records=int(m.group(1)), bad=int(m.group(2)),
                    torn=int(m.group(3)), last=int(m.group(4)))
            elif line == 'verify done':
                log('verify-done')
            elif line.startswith('error '):
                log('error', errno=line[6:])
            else:
                log('bad', why='unexpected line %r' % line[:80])
    log('end')
    out.close()


if __name__ == '__main__':
    sys.exit(main())
