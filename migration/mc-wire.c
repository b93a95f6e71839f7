/*
 * Micro-checkpointing (MC): wire protocol between primary and standby.
 *
 * Header layout (big endian):
 *   0  u32 magic      "QMCK"
 *   4  u16 version    MC_WIRE_VERSION
 *   6  u16 type       MCMsgType
 *   8  u32 flags
 *  12  u32 reserved   0
 *  16  u64 epoch
 *  24  u64 len        payload bytes that follow the header
 *  32  u32 payload checksum
 *  36  u32 header checksum, over bytes 0..35
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "mc-wire.h"
#include <zlib.h>

static const char *const mc_msg_names[MC_MSG__MAX] = {
    [MC_MSG_CHECKPOINT] = "checkpoint",
    [MC_MSG_HEARTBEAT] = "heartbeat",
    [MC_MSG_STOP] = "stop",
    [MC_MSG_ACK] = "ack",
    [MC_MSG_NACK] = "nack",
    [MC_MSG_STANDBY_HEARTBEAT] = "standby-heartbeat",
    [MC_MSG_READY] = "ready",
    [MC_MSG_SWITCHED] = "switched",
};

const char *mc_msg_name(unsigned type)
{
    if (type < MC_MSG__MAX && mc_msg_names[type]) {
        return mc_msg_names[type];
    }
    return "unknown";
}

uint32_t mc_wire_csum(uint32_t csum, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    /* zlib's crc32 takes a uInt length: feed it in bounded pieces */
    while (len) {
        uInt n = MIN(len, 1U << 30);
        csum = crc32(csum, p, n);
        p += n;
        len -= n;
    }
    return csum;
}

void mc_wire_encode(const MCWireHeader *h, uint8_t buf[MC_WIRE_HDR_SIZE])
{
    stl_be_p(buf, MC_WIRE_MAGIC);
    stw_be_p(buf + 4, MC_WIRE_VERSION);
    stw_be_p(buf + 6, h->type);
    stl_be_p(buf + 8, h->flags);
    stl_be_p(buf + 12, 0);
    stq_be_p(buf + 16, h->epoch);
    stq_be_p(buf + 24, h->len);
    stl_be_p(buf + 32, h->payload_csum);
    stl_be_p(buf + 36, mc_wire_csum(0, buf, 36));
}

int mc_wire_decode(const uint8_t buf[MC_WIRE_HDR_SIZE], uint64_t max_len,
                   MCWireHeader *h, Error **errp)
{
    uint32_t magic = ldl_be_p(buf);
    uint16_t version = lduw_be_p(buf + 4);

    if (magic != MC_WIRE_MAGIC) {
        error_setg(errp, "MC: bad message magic 0x%08" PRIx32, magic);
        return -1;
    }
    if (ldl_be_p(buf + 36) != mc_wire_csum(0, buf, 36)) {
        error_setg(errp, "MC: message header checksum mismatch");
        return -1;
    }
    if (version != MC_WIRE_VERSION) {
        error_setg(errp, "MC: unsupported protocol version %u (this QEMU "
                   "speaks %u)", version, MC_WIRE_VERSION);
        return -1;
    }
    h->type = lduw_be_p(buf + 6);
    h->flags = ldl_be_p(buf + 8);
    h->epoch = ldq_be_p(buf + 16);
    h->len = ldq_be_p(buf + 24);
    h->payload_csum = ldl_be_p(buf + 32);
    if (!strcmp(mc_msg_name(h->type), "unknown")) {
        error_setg(errp, "MC: unknown message type %u", h->type);
        return -1;
    }
    if (h->type != MC_MSG_CHECKPOINT && h->len) {
        error_setg(errp, "MC: %s message with a %" PRIu64 "-byte payload",
                   mc_msg_name(h->type), h->len);
        return -1;
    }
    if (h->len > max_len) {
        error_setg(errp, "MC: checkpoint %" PRIu64 " is %" PRIu64 " bytes, "
                   "more than the %" PRIu64 "-byte staging buffer",
                   h->epoch, h->len, max_len);
        return -1;
    }
    return 0;
}

int mc_wire_check_payload(const MCWireHeader *h, const void *payload,
                          Error **errp)
{
    uint32_t csum = mc_wire_csum(0, payload, h->len);

    if (csum != h->payload_csum) {
        error_setg(errp, "MC: checkpoint %" PRIu64 " is corrupt (checksum "
                   "0x%08" PRIx32 ", expected 0x%08" PRIx32 ")",
                   h->epoch, csum, h->payload_csum);
        return -1;
    }
    return 0;
}
