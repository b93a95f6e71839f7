/*
 * Micro-checkpointing (MC): the link between primary and standby.
 *
 * The MC code sends and receives messages (mc-wire.h: a header, maybe a
 * payload) through an MCTransport; how the bytes travel is the business
 * of its MCTransportOps.  One transport exists today: a byte stream over
 * any two-way QIOChannel (mc-transport-socket.c: TCP, UNIX, TLS, and
 * MC's own RDMA channel, mc-rdma.c).  Writing checkpoints straight from
 * the staging buffer into the standby's (RDMA WRITE) would be a
 * transport of its own ops.
 *
 * Framing (the header, the checksums) and liveness stamps are common
 * and live in mc-transport.c: every transport carries the same bytes.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_TRANSPORT_H
#define QEMU_MIGRATION_MC_TRANSPORT_H

#include "qemu/thread.h"
#include "io/channel.h"
#include "qapi/qapi-types-mc.h"
#include "mc-wire.h"

typedef struct MCTransport MCTransport;

typedef struct MCTransportOps {
    const char *name;
    /* Once, before the first message: blocking I/O tuned for MC. */
    void (*setup)(MCTransport *t);
    /* Send all of @iov (header and payload pieces); blocking. */
    int (*writev)(MCTransport *t, const struct iovec *iov, size_t niov,
                  Error **errp);
    /*
     * Queue @len bytes without blocking past @deadline_us (realtime
     * clock); returns how many were queued.  For a last message to a
     * peer that may not be reading.
     */
    size_t (*write_by)(MCTransport *t, const void *buf, size_t len,
                       int64_t deadline_us);
    /*
     * Fill @buf with @len bytes: 1 when done, 0 on a clean end of
     * stream before the first byte (if @eof_ok), -1 with @errp.
     */
    int (*read)(MCTransport *t, void *buf, size_t len, bool eof_ok,
                Error **errp);
    /* Make every blocked and later writev, write_by and read return. */
    void (*shutdown)(MCTransport *t);
    /*
     * The last message is out: end this side's sending (the peer sees
     * the end of the stream after it), reads still work.
     */
    void (*shutdown_write)(MCTransport *t);
    /*
     * Read and drop what the peer still sends until it ends its side
     * or @deadline_us (realtime clock) passes; nobody else reads.
     */
    void (*drain_by)(MCTransport *t, int64_t deadline_us);
    /*
     * Optional: after a failed read or write, was it the link's own
     * failure, which proves nothing about the peer?  Without it every
     * failure counts as the peer's closing (a socket's reset or end).
     */
    bool (*link_failed)(MCTransport *t);
    /*
     * Optional: could a message without payload go now without waiting
     * for the peer?  A heartbeat is skipped when not: the thread that
     * sends it is the watchdog, which must never block on a peer that
     * has stopped reading.  Without it a heartbeat is always tried (a
     * socket's buffer takes it).
     */
    bool (*can_send)(MCTransport *t);
    void (*free)(MCTransport *t);
} MCTransportOps;

struct MCTransport {
    const MCTransportOps *ops;
    QIOChannel *ioc;            /* the socket transport's channel */
    /* One message at a time on the wire (send, try_send, send_by) */
    QemuMutex send_lock;
    /* Atomic: when a message last arrived whole / was last sent */
    int64_t last_rx_us;
    int64_t last_tx_us;
};

/*
 * A transport over @ioc, the migration channel.  Fails with @errp for a
 * channel no MC transport can carry (RDMA).
 */
MCTransport *mc_transport_new(QIOChannel *ioc, Error **errp);
void mc_transport_free(MCTransport *t);
void mc_transport_setup(MCTransport *t);
void mc_transport_shutdown(MCTransport *t);
void mc_transport_shutdown_write(MCTransport *t);
void mc_transport_drain_by(MCTransport *t, int64_t deadline_us);

/*
 * Why a read or write just failed, for the failover policy: the peer
 * closed the link, or the link itself failed (@ops.link_failed).
 */
MCLossReason mc_transport_loss_reason(MCTransport *t);

/* Send one message (mc_wire_send's contract): 0 or -1 with @errp. */
int mc_transport_send(MCTransport *t, MCMsgType type, uint32_t flags,
                      uint64_t epoch, const struct iovec *iov, size_t niov,
                      Error **errp);

/*
 * Send a message without payload unless another is being sent: a
 * heartbeat is not needed while other traffic flows.  0 when sent,
 * -EBUSY when another send was in progress, -EIO on failure.
 */
int mc_transport_try_send(MCTransport *t, MCMsgType type, uint32_t flags);

/*
 * Queue a message without payload, giving up at @deadline_us.  True if
 * it was queued whole.
 */
bool mc_transport_send_by(MCTransport *t, MCMsgType type, uint32_t flags,
                          int64_t deadline_us);

/*
 * Receive the next header (mc_wire_recv_header's contract): 1, 0 on a
 * clean end of stream, -1 or MC_WIRE_BAD_HEADER with @errp.
 */
int mc_transport_recv_header(MCTransport *t, uint64_t max_len,
                             MCWireHeader *h, Error **errp);

/*
 * Receive the payload announced by @h into @buf, in pieces, stamping
 * last_rx_us after each: a long checkpoint counts as traffic.  1 when
 * whole and intact, 0 when corrupt (the stream is still in step), -1
 * when the link failed; @errp says why unless 1.
 */
int mc_transport_recv_payload(MCTransport *t, const MCWireHeader *h,
                              void *buf, Error **errp);

/* The socket transport (mc-transport-socket.c) */
extern const MCTransportOps mc_transport_socket_ops;

/*
 * Use @ops for channels of QOM type @channel_type (or a subtype) instead
 * of the socket ops: MC's RDMA channel registers its own at start-up.
 */
void mc_transport_register(const char *channel_type,
                           const MCTransportOps *ops);

#endif
