/*
 * Micro-checkpointing (MC): messages over a transport.
 *
 * What every transport shares: the framing (mc-wire.c encodes and checks
 * the header and checksums), one sender at a time, and the stamps the
 * heartbeat watchdog reads.  The bytes themselves go through the ops
 * (mc-transport-socket.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "mc-transport.h"
#include "trace.h"

/* Receive a payload in pieces, so a long one still counts as traffic. */
#define MC_RECV_CHUNK           (1 * MiB)

static int64_t mc_transport_now_us(void)
{
    return qemu_clock_get_us(QEMU_CLOCK_REALTIME);
}

/* Registered at start-up (type_init), read-only after */
static struct {
    const char *type;
    const MCTransportOps *ops;
} mc_transports[4];
static int mc_transports_n;

void mc_transport_register(const char *channel_type,
                           const MCTransportOps *ops)
{
    assert(mc_transports_n < ARRAY_SIZE(mc_transports));
    mc_transports[mc_transports_n].type = channel_type;
    mc_transports[mc_transports_n].ops = ops;
    mc_transports_n++;
}

MCTransport *mc_transport_new(QIOChannel *ioc, Error **errp)
{
    MCTransport *t;
    int i;

    /*
     * Upstream's RDMA channel, when the standby listened before the mc
     * capability was set: one-way, pages by registered memory.  MC's own
     * (mc-rdma.c) is a stream the socket ops drive.
     */
    if (object_dynamic_cast(OBJECT(ioc), "qio-channel-rdma")) {
        error_setg(errp, "Micro-checkpointing over RDMA needs the mc "
                   "capability on before the standby listens "
                   "(-incoming defer, then migrate-incoming rdma:...)");
        return NULL;
    }
    t = g_new0(MCTransport, 1);
    t->ops = &mc_transport_socket_ops;
    for (i = 0; i < mc_transports_n; i++) {
        if (object_dynamic_cast(OBJECT(ioc), mc_transports[i].type)) {
            t->ops = mc_transports[i].ops;
        }
    }
    t->ioc = ioc;
    object_ref(OBJECT(ioc));
    qemu_mutex_init(&t->send_lock);
    t->last_rx_us = t->last_tx_us = mc_transport_now_us();
    trace_mc_transport_new(t->ops->name);
    return t;
}

void mc_transport_free(MCTransport *t)
{
    if (!t) {
        return;
    }
    if (t->ops->free) {
        t->ops->free(t);
    }
    object_unref(OBJECT(t->ioc));
    qemu_mutex_destroy(&t->send_lock);
    g_free(t);
}

MCLossReason mc_transport_loss_reason(MCTransport *t)
{
    if (t->ops->link_failed && t->ops->link_failed(t)) {
        return MC_LOSS_REASON_LINK_FAILED;
    }
    return MC_LOSS_REASON_PEER_CLOSED;
}

void mc_transport_setup(MCTransport *t)
{
    t->ops->setup(t);
}

void mc_transport_shutdown(MCTransport *t)
{
    t->ops->shutdown(t);
}

void mc_transport_shutdown_write(MCTransport *t)
{
    t->ops->shutdown_write(t);
}

void mc_transport_drain_by(MCTransport *t, int64_t deadline_us)
{
    t->ops->drain_by(t, deadline_us);
}

/* Send a message; the caller holds send_lock. */
static int mc_transport_send_locked(MCTransport *t, MCMsgType type,
                                    uint32_t flags, uint64_t epoch,
                                    const struct iovec *iov, size_t niov,
                                    Error **errp)
{
    MCWireHeader h = { .type = type, .flags = flags, .epoch = epoch };
    uint8_t hdr[MC_WIRE_HDR_SIZE];
    /* on the stack: no allocation per message */
    struct iovec *all = g_newa(struct iovec, niov + 1);
    size_t i;
    int ret;

    for (i = 0; i < niov; i++) {
        h.len += iov[i].iov_len;
        h.payload_csum = mc_wire_csum(h.payload_csum, iov[i].iov_base,
                                      iov[i].iov_len);
        all[i + 1] = iov[i];
    }
    mc_wire_encode(&h, hdr);
    all[0].iov_base = hdr;
    all[0].iov_len = sizeof(hdr);
    trace_mc_wire_send(mc_msg_name(type), epoch, h.len);
    ret = t->ops->writev(t, all, niov + 1, errp);
    if (ret == 0) {
        qatomic_set(&t->last_tx_us, mc_transport_now_us());
    }
    return ret;
}

int mc_transport_send(MCTransport *t, MCMsgType type, uint32_t flags,
                      uint64_t epoch, const struct iovec *iov, size_t niov,
                      Error **errp)
{
    int ret;

    qemu_mutex_lock(&t->send_lock);
    ret = mc_transport_send_locked(t, type, flags, epoch, iov, niov, errp);
    qemu_mutex_unlock(&t->send_lock);
    return ret;
}

int mc_transport_try_send(MCTransport *t, MCMsgType type, uint32_t flags)
{
    int ret;

    if (qemu_mutex_trylock(&t->send_lock)) {
        return -EBUSY;
    }
    if (t->ops->can_send && !t->ops->can_send(t)) {
        qemu_mutex_unlock(&t->send_lock);
        return -EBUSY;
    }
    ret = mc_transport_send_locked(t, type, flags, 0, NULL, 0, NULL);
    qemu_mutex_unlock(&t->send_lock);
    return ret < 0 ? -EIO : 0;
}

bool mc_transport_send_by(MCTransport *t, MCMsgType type, uint32_t flags,
                          int64_t deadline_us)
{
    MCWireHeader h = { .type = type, .flags = flags };
    uint8_t hdr[MC_WIRE_HDR_SIZE];
    size_t done;

    mc_wire_encode(&h, hdr);
    qemu_mutex_lock(&t->send_lock);
    done = t->ops->write_by(t, hdr, sizeof(hdr), deadline_us);
    qemu_mutex_unlock(&t->send_lock);
    trace_mc_wire_send(mc_msg_name(type), 0, 0);
    return done == sizeof(hdr);
}

int mc_transport_recv_header(MCTransport *t, uint64_t max_len,
                             MCWireHeader *h, Error **errp)
{
    uint8_t hdr[MC_WIRE_HDR_SIZE];
    int ret = t->ops->read(t, hdr, sizeof(hdr), true, errp);

    if (ret <= 0) {
        return ret;
    }
    if (mc_wire_decode(hdr, max_len, h, errp) < 0) {
        return MC_WIRE_BAD_HEADER;
    }
    qatomic_set(&t->last_rx_us, mc_transport_now_us());
    trace_mc_wire_recv(mc_msg_name(h->type), h->epoch, h->len);
    return 1;
}

int mc_transport_recv_payload(MCTransport *t, const MCWireHeader *h,
                              void *buf, Error **errp)
{
    uint64_t got = 0;

    while (got < h->len) {
        size_t n = MIN(h->len - got, MC_RECV_CHUNK);

        if (t->ops->read(t, (uint8_t *)buf + got, n, false, errp) < 0) {
            error_prepend(errp, "MC: checkpoint %" PRIu64 " truncated: ",
                          h->epoch);
            return -1;
        }
        got += n;
        qatomic_set(&t->last_rx_us, mc_transport_now_us());
    }
    return mc_wire_check_payload(h, buf, errp) < 0 ? 0 : 1;
}
