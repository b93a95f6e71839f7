#!/usr/bin/env python3
"""Receive mc-udpseq's numbered datagrams; log {"t": host time, "n": n}.

Usage: udprecv.py ADDRESS PORT OUT.  Runs until SIGTERM; one JSON event
per line, flushed at once (mcnet.EventLog reads it while the test runs).
"""

import json
import signal
import socket
import sys
import time


def main():
    addr, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # a burst of released output must not overflow the socket
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((addr, port))
    s.settimeout(0.05)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    with open(out, 'w') as f:
        while not stop:
            try:
                data = s.recv(256)
            except socket.timeout:
                f.flush()
                continue
            except InterruptedError:
                continue
            parts = data.split()
            if len(parts) == 2 and parts[0] == b'seq':
                f.write(json.dumps({'t': time.time(),
                                    'n': int(parts[1])}) + '\n')
                f.flush()
        f.flush()


if __name__ == '__main__':
    main()
