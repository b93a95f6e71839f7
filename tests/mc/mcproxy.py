"""A proxy on the migration channel that follows MC's framing.

It forwards the channel both ways; from the first MC message on (the
primary's side, after precopy) it cuts the stream into messages, which
it records and can tamper with: one checkpoint is rewritten by a
function of the test's and sent on with valid checksums, as a buggy or
hostile primary would send it, and nothing from the primary passes after
it.  write_seeds() turns a recording into the fuzzer's seeds
(tests/mc/fuzz/mc-standby-fuzz.c: a description of the standby, learnt
from the start of precopy, then messages).
"""

import os
import re
import select
import socket
import struct
import sys
import threading
import zlib

HDR = 40
MAGIC = b'QMCK'
CHECKPOINT, READY = 1, 19
PRECOPY_KEEP = 1 << 20      # the sections' START records come first
FUZZ_MAX_CAPACITY = 4 << 20


def header_ok(h):
    return (len(h) == HDR and h[:4] == MAGIC and
            struct.unpack('>I', h[36:40])[0] == zlib.crc32(h[:36]))


def header(h):
    """(type, flags, epoch, len, payload checksum) of a valid header."""
    typ, flags = struct.unpack('>HI', h[6:12])
    epoch, length, csum = struct.unpack('>QQI', h[16:36])
    return typ, flags, epoch, length, csum


def make_header(h, epoch, payload):
    """@h with @epoch and @payload's length and checksum, resealed."""
    b = bytearray(h)
    b[16:36] = struct.pack('>QQI', epoch, len(payload),
                           zlib.crc32(payload) if payload else 0)
    b[36:40] = struct.pack('>I', zlib.crc32(bytes(b[:36])))
    return bytes(b)


class MCProxy:
    """Listens on 127.0.0.1 (self.port), connects to @dest on accept."""

    def __init__(self, dest):
        self.dest = dest
        self.lsock = socket.socket()
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.precopy = bytearray()
        self.messages = []          # (header, payload), primary's side
        self.tamper = None          # f(epoch, payload) -> payload or None
        self.tampered = None        # epoch rewritten
        self.stopped = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self._forward()
        except Exception as e:      # noqa: broad, said by close()
            self.error = e

    def _forward(self):
        src, _ = self.lsock.accept()
        dst = socket.create_connection(self.dest)
        self.socks = (src, dst)
        pending = b''
        back = b''          # the standby's last bytes, for a split READY
        in_mc = False
        while not self.stopped.is_set():
            r, _, _ = select.select([src, dst], [], [], 0.05)
            for s in r:
                data = s.recv(1 << 20)
                if not data:
                    return
                if s is dst:
                    if not in_mc:
                        # The standby's READY: it has loaded all of
                        # precopy, so the primary sends MC messages only
                        # from here on.
                        back += data
                        in_mc = self._find(back, READY) >= 0
                        back = back[-(HDR - 1):]
                    src.sendall(data)
                    continue
                if self.tampered is not None:
                    continue        # nothing passes after the damage
                if not in_mc:
                    dst.sendall(data)
                    self._keep_precopy(data)
                    continue
                pending = self._messages(pending + data, dst)

    def _keep_precopy(self, data):
        room = PRECOPY_KEEP - len(self.precopy)
        if room > 0:
            self.precopy += data[:room]

    @staticmethod
    def _find(buf, typ):
        """Offset of the first valid header of type @typ in @buf, or -1."""
        at = buf.find(MAGIC)
        while at >= 0:
            h = buf[at:at + HDR]
            if header_ok(h) and header(h)[0] == typ:
                return at
            at = buf.find(MAGIC, at + 1)
        return -1

    def _messages(self, buf, dst):
        """Forward the whole messages at the start of @buf; the rest."""
        while len(buf) >= HDR:
            h = buf[:HDR]
            typ, _, epoch, length, _ = header(h)
            if len(buf) < HDR + length:
                break
            payload = buf[HDR:HDR + length]
            buf = buf[HDR + length:]
            if typ == CHECKPOINT and self.tamper and self.tampered is None:
                bad = self.tamper(epoch, payload)
                if bad is not None:
                    self.tampered = epoch
                    dst.sendall(make_header(h, epoch, bad) + bad)
                    return b''
            self.messages.append((h, payload))
            dst.sendall(h + payload)
        return buf

    def checkpoints(self):
        return [(header(h)[2], p) for h, p in self.messages
                if header(h)[0] == CHECKPOINT]

    def close(self):
        """Close both connections (to the standby: as if the primary's
        host died) and stop."""
        self.stopped.set()
        for s in getattr(self, 'socks', ()):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.lsock.close()
        self.thread.join(10)
        if self.error:
            print('mcproxy: the proxy thread failed: %r' % self.error,
                  file=sys.stderr)


def devices_at(payload):
    return struct.unpack('>Q', payload[-8:])[0]


def last_footer(payload):
    """Offset of the last section footer's mark (just before the end
    mark of the sections part)."""
    return devices_at(payload) - 1 - 5


def standby_context(precopy, capacity):
    """The fuzzer's description of the standby, from the START records
    of "ram" and "mc-block" at the beginning of precopy."""
    m = re.search(rb'\x01(.{4})\x03ram(.{4})(.{4})', precopy, re.S)
    if not m:
        raise ValueError('no START record of "ram" in the recorded precopy')
    ram_id = m.group(1)
    pos = m.end()
    total = struct.unpack('>Q', precopy[pos:pos + 8])[0] & ~0xfff
    pos += 8
    blocks = []
    while total > 0:
        n = precopy[pos]
        name = precopy[pos + 1:pos + 1 + n]
        size = struct.unpack('>Q', precopy[pos + 1 + n:pos + 9 + n])[0]
        pos += 9 + n
        blocks.append((name, size))
        total -= size
    disks = []
    block_id = b'\xff\xff\xff\xfe'
    m = re.search(rb'\x01(.{4})\x08mc-block(.{4})(.{4})\x01', precopy, re.S)
    if m:
        block_id = m.group(1)
        pos = m.end()
        ndisks = struct.unpack('>I', precopy[pos:pos + 4])[0]
        pos += 4
        for _ in range(ndisks):
            for _field in ('key', 'name'):
                pos += 1 + precopy[pos]
            size = struct.unpack('>Q', precopy[pos:pos + 8])[0]
            pos += 9
            pos += 1 + precopy[pos]         # boot id
            pos += 16                       # dev, ino
            disks.append(size)
    out = bytearray([3])                    # fix checksums, footers
    out += struct.pack('>I', min(capacity, FUZZ_MAX_CAPACITY))
    out += ram_id + block_id
    out += bytes([len(blocks)])
    for name, size in blocks:
        out += bytes([len(name)]) + name + struct.pack('>Q', size)
    out += bytes([len(disks)])
    for size in disks:
        out += struct.pack('>Q', size)
    return bytes(out), [b[0].decode() for b in blocks], disks


def trim_devices(payload, keep=256):
    """The checkpoint with its device part cut to @keep bytes (opaque to
    what the fuzzer exercises, and most of a checkpoint's size)."""
    d = devices_at(payload)
    return payload[:d] + payload[d:len(payload) - 8][:keep] + \
        struct.pack('>Q', d)


def with_disk_records(payload, block_id):
    """The checkpoint with a disk write and a zeroed area added at the
    start of its "mc-block" section (when that section comes first, as
    it does), or None.  The recorded guest does not write its disk: this
    gives the fuzzer the records' form to start from."""
    if payload[:5] != b'\x03' + block_id:
        return None
    add = (b'\x02' + struct.pack('>IQI', 0, 4096, 512) + bytes(range(256)) * 2 +
           b'\x03' + struct.pack('>IQI', 0, 8192, 4096))
    d = devices_at(payload) + len(add)
    body = payload[:5] + add + payload[5:len(payload) - 8]
    return body + struct.pack('>Q', d)


def with_zero_page(payload, ram_id, block=b'pc.ram'):
    """The checkpoint with a zero page of @block added at the start of
    its "ram" section, or None: zero pages are rare in a checkpoint."""
    at = payload.find(b'\x03' + ram_id)
    if at < 0 or at >= devices_at(payload):
        return None
    at += 5
    add = struct.pack('>Q', 0x2) + bytes([len(block)]) + block + b'\x00'
    d = devices_at(payload) + len(add)
    return payload[:at] + add + payload[at:len(payload) - 8] + \
        struct.pack('>Q', d)


def write_seeds(proxy, capacity, outdir, most=12, max_len=64 << 10):
    """Seeds from @proxy's recording: each of the first checkpoints
    alone (also with disk records and a zero page added), and the first
    messages as a stream; epochs from 1."""
    ctx, blocks, disks = standby_context(bytes(proxy.precopy), capacity)
    os.makedirs(outdir, exist_ok=True)
    written = 0
    for i, (h, payload) in enumerate(proxy.messages):
        if header(h)[0] != CHECKPOINT or written >= most:
            continue
        p = trim_devices(payload)
        if len(p) > max_len:
            continue
        with open(os.path.join(outdir, 'checkpoint-%02d' % i), 'wb') as f:
            f.write(ctx + make_header(h, 1, p) + p)
        written += 1
        variants = {'disk': with_disk_records(p, ctx[9:13]) if disks
                    else None,
                    'zero': with_zero_page(p, ctx[5:9])}
        for name, v in variants.items():
            if v:
                with open(os.path.join(outdir, 'checkpoint-%02d-%s' % (
                        i, name)), 'wb') as f:
                    f.write(ctx + make_header(h, 1, v) + v)
                written += 1
    stream, epoch = bytearray(ctx), 0
    for h, payload in proxy.messages[:16]:
        if header(h)[0] == CHECKPOINT:
            p = trim_devices(payload)
            if len(p) > max_len or len(stream) + len(p) > 4 * max_len:
                continue
            epoch += 1
            stream += make_header(h, epoch, p) + p
        else:
            stream += h
    with open(os.path.join(outdir, 'stream'), 'wb') as f:
        f.write(stream)
    return written + 1, blocks, disks
