/*
 * Micro-checkpointing (MC): wire protocol between primary and standby.
 *
 * Every message is a fixed 40-byte header, optionally followed by a
 * payload.  The header carries its own checksum, so a corrupt length is
 * caught before anything is read on its account; the payload carries a
 * second checksum, so a checkpoint is applied only when all of it arrived
 * intact.  Sending and receiving: mc-transport.h.  The format:
 * docs/devel/micro-checkpointing.rst.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_WIRE_H
#define QEMU_MIGRATION_MC_WIRE_H

#define MC_WIRE_MAGIC       0x514d434bU     /* "QMCK" */
#define MC_WIRE_VERSION     2   /* 2: checkpoints end with a trailer */
#define MC_WIRE_HDR_SIZE    40

typedef enum MCMsgType {
    /* primary -> standby */
    MC_MSG_CHECKPOINT = 1,  /* payload: one checkpoint (migration stream) */
    MC_MSG_HEARTBEAT = 2,   /* no payload: "still here", between checkpoints */
    MC_MSG_STOP = 3,        /* no payload: leave MC; flags: MC_STOP_* */
    /* standby -> primary */
    MC_MSG_ACK = 16,        /* checkpoint <epoch> received intact */
    MC_MSG_NACK = 17,       /* checkpoint <epoch> refused; flags: reason */
    MC_MSG_STANDBY_HEARTBEAT = 18,
    MC_MSG_READY = 19,      /* the initial state is loaded: start MC */
    MC_MSG_SWITCHED = 20,   /* mc-switchover: the guest runs here now */
    MC_MSG__MAX,
} MCMsgType;

typedef struct MCWireHeader {
    uint16_t type;          /* MCMsgType */
    uint32_t flags;
    uint64_t epoch;         /* checkpoint number, starts at 1 */
    uint64_t len;           /* payload length in bytes */
    uint32_t payload_csum;  /* checksum of the payload (0 if len is 0) */
} MCWireHeader;

const char *mc_msg_name(unsigned type);

/* Checksum used for header and payload (CRC-32); @csum starts at 0. */
uint32_t mc_wire_csum(uint32_t csum, const void *buf, size_t len);

/* Serialise @h into @buf (big endian, header checksum last). */
void mc_wire_encode(const MCWireHeader *h, uint8_t buf[MC_WIRE_HDR_SIZE]);

/*
 * Parse and validate a header: magic, version, header checksum, known
 * type, and a payload no longer than @max_len.  Returns 0 or -1 with @errp.
 */
int mc_wire_decode(const uint8_t buf[MC_WIRE_HDR_SIZE], uint64_t max_len,
                   MCWireHeader *h, Error **errp);

/* Check a received payload against its header: -1 with @errp if corrupt. */
int mc_wire_check_payload(const MCWireHeader *h, const void *payload,
                          Error **errp);

/* mc_transport_recv_header: the header arrived whole but is invalid */
#define MC_WIRE_BAD_HEADER  (-2)

#endif
