/*
 * Micro-checkpointing (MC): the link over RDMA (librdmacm, libibverbs).
 *
 * With the mc capability on, a migration URI rdma:HOST:PORT gets this
 * channel instead of upstream's (rdma.c).  Upstream's is one-way unless
 * the return path is on, and its RAM hooks write guest pages straight
 * into the peer's RAM while precopy runs, which MC's checkpoints (copied
 * into the staging buffer first, applied only once whole and verified)
 * cannot use.  This one is a full-duplex byte stream over one reliable
 * connection (RC queue pair), so precopy, the disk handshake and MC's
 * messages travel over it exactly as over TCP: mc-transport-socket.c
 * drives it, with the same framing, checksums and heartbeats.
 *
 * The stream.  Each side registers MC_RDMA_NBUF send slots and as many
 * receive slots, MC_RDMA_BUF_SIZE bytes each, once, and posts every
 * receive slot.  A write copies into free send slots and posts one SEND
 * per slot; its immediate data hands back credits (receive slots this
 * side has read and posted again).  A SEND spends one of the peer's
 * credits and none is sent without one, so the peer's adapter always
 * finds a receive posted (no receiver-not-ready retries).  Data keeps
 * the last credit back: an empty SEND that only returns credits may
 * always go, so two sides that both wait for credits cannot lock.  A
 * reader reads the receive slots in order, in place, and posts each
 * again once read.  An empty SEND with MC_RDMA_FIN ends the stream.
 *
 * One thread per channel owns the completion queue and the connection's
 * events: it files received slots and frees send slots; an error
 * completion or the device's removal breaks the channel, the peer's
 * disconnect ends its stream (as a TCP reset would), and every blocked
 * reader and writer then returns at once.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <infiniband/verbs.h>
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/error-report.h"
#include "qemu/event_notifier.h"
#include "qemu/iov.h"
#include "qemu/main-loop.h"
#include "qemu/memalign.h"
#include "qemu/module.h"
#include "qemu/thread.h"
#include "qemu/units.h"
#include "io/channel.h"
#include "io/channel-watch.h"
#include "block/aio.h"
#include "channel.h"
#include "mc-rdma.h"
#include "mc-transport.h"
#include "trace.h"

#define MC_RDMA_BUF_SIZE        (64 * KiB)
#define MC_RDMA_NBUF            32
/* Immediate data: credits handed back, and the end of the stream */
#define MC_RDMA_CREDITS_MASK    0xffffu
#define MC_RDMA_FIN             (1u << 31)
/* wr_id: send slot i is i, receive slot i is MC_RDMA_NBUF + i */
#define MC_RDMA_WR_CTL          (2 * MC_RDMA_NBUF)
/* Each step of setting up a connection */
#define MC_RDMA_TIMEOUT_MS      5000
/* How long shutdown lets posted SENDs complete (a last NACK or STOP) */
#define MC_RDMA_LINGER_MS       50
#define MC_RDMA_MAGIC           0x4d435231      /* "MCR1" */

/* In the private data of the connection request and of its acceptance */
typedef struct MCRdmaHello {
    uint32_t magic;
    uint32_t nbuf;          /* receive slots posted */
    uint32_t buf_size;
} MCRdmaHello;

OBJECT_DECLARE_SIMPLE_TYPE(QIOChannelMCRdma, QIO_CHANNEL_MC_RDMA)

struct QIOChannelMCRdma {
    QIOChannel parent;
    /*
     * Created before the thread starts and destroyed after it ends: no
     * lock.
     */
    struct rdma_event_channel *evch;
    struct rdma_cm_id *id;
    struct ibv_pd *pd;
    struct ibv_comp_channel *compch;
    struct ibv_cq *cq;
    struct ibv_mr *mr;
    uint8_t *mem;               /* send slots, then receive slots */
    QemuThread thread;
    bool thread_running;
    EventNotifier stop;
    /* Readable while a read / a write would not block (level) */
    EventNotifier rd_ev;
    EventNotifier wr_ev;

    QemuMutex lock;
    QemuCond cond;              /* any change below */
    /* Everything below: lock */
    bool blocking;
    bool rd_ev_set;
    bool wr_ev_set;
    uint8_t rx_q[MC_RDMA_NBUF]; /* received slots, in order */
    unsigned rx_head;
    unsigned rx_count;
    size_t rx_off;              /* bytes read from the head slot */
    uint32_t rx_len[MC_RDMA_NBUF];
    bool rx_fin[MC_RDMA_NBUF];
    uint8_t tx_free[MC_RDMA_NBUF];
    unsigned tx_nfree;
    unsigned credits;           /* the peer's receives this side may use */
    unsigned ctl_inflight;      /* credit-only SENDs not yet completed */
    unsigned owed;              /* receives posted again, not yet told */
    bool eof;                   /* the peer's FIN was read */
    bool peer_gone;             /* the peer disconnected */
    bool fin_pending;
    bool fin_sent;
    bool rd_shut;
    bool wr_shut;
    bool closing;               /* errors from here on are ours */
    char *broken;               /* why the link failed, or NULL */
};

static uint8_t *mc_rdma_tx_buf(QIOChannelMCRdma *r, unsigned slot)
{
    return r->mem + (size_t)slot * MC_RDMA_BUF_SIZE;
}

static uint8_t *mc_rdma_rx_buf(QIOChannelMCRdma *r, unsigned slot)
{
    return r->mem + (size_t)(MC_RDMA_NBUF + slot) * MC_RDMA_BUF_SIZE;
}

static void G_GNUC_PRINTF(2, 3)
mc_rdma_fail_locked(QIOChannelMCRdma *r, const char *fmt, ...)
{
    va_list ap;

    /* after the peer's disconnect, errors are its consequences */
    if (r->broken || r->closing || r->peer_gone) {
        return;
    }
    va_start(ap, fmt);
    r->broken = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    trace_mc_rdma_broken(r->broken);
    qemu_cond_broadcast(&r->cond);
}

/* May a read / a write go on without waiting? */
static bool mc_rdma_can_read_locked(QIOChannelMCRdma *r)
{
    return r->rx_count || r->eof || r->rd_shut || r->peer_gone ||
           r->broken;
}

static bool mc_rdma_can_write_locked(QIOChannelMCRdma *r)
{
    return (r->tx_nfree && r->credits >= 2) || r->wr_shut ||
           r->peer_gone || r->broken;
}

static void mc_rdma_level(EventNotifier *e, bool *set, bool want)
{
    if (want && !*set) {
        event_notifier_set(e);
    } else if (!want && *set) {
        event_notifier_test_and_clear(e);
    }
    *set = want;
}

static void mc_rdma_update_locked(QIOChannelMCRdma *r)
{
    mc_rdma_level(&r->rd_ev, &r->rd_ev_set, mc_rdma_can_read_locked(r));
    mc_rdma_level(&r->wr_ev, &r->wr_ev_set, mc_rdma_can_write_locked(r));
    qemu_cond_broadcast(&r->cond);
}

static int mc_rdma_post_recv(QIOChannelMCRdma *r, unsigned slot)
{
    struct ibv_sge sge = {
        .addr = (uintptr_t)mc_rdma_rx_buf(r, slot),
        .length = MC_RDMA_BUF_SIZE,
        .lkey = r->mr->lkey,
    };
    struct ibv_recv_wr wr = {
        .wr_id = MC_RDMA_NBUF + slot,
        .sg_list = &sge,
        .num_sge = 1,
    };
    struct ibv_recv_wr *bad;

    return ibv_post_recv(r->id->qp, &wr, &bad);
}

/* A SEND of @len bytes from send slot @slot (none if @slot < 0) */
static bool mc_rdma_post_send_locked(QIOChannelMCRdma *r, int slot,
                                     uint32_t len, uint32_t imm)
{
    struct ibv_sge sge = {
        .addr = slot >= 0 ? (uintptr_t)mc_rdma_tx_buf(r, slot) : 0,
        .length = len,
        .lkey = r->mr->lkey,
    };
    struct ibv_send_wr wr = {
        .wr_id = slot >= 0 ? slot : MC_RDMA_WR_CTL,
        .sg_list = len ? &sge : NULL,
        .num_sge = len ? 1 : 0,
        .opcode = IBV_WR_SEND_WITH_IMM,
        .send_flags = IBV_SEND_SIGNALED,
        .imm_data = cpu_to_be32(imm),
    };
    struct ibv_send_wr *bad;
    int ret;

    assert(r->credits > 0);
    r->credits--;
    ret = ibv_post_send(r->id->qp, &wr, &bad);
    if (ret) {
        mc_rdma_fail_locked(r, "posting a send failed: %s", strerror(ret));
        return false;
    }
    r->ctl_inflight += slot < 0;
    return true;
}

/*
 * Hand back what this side owes when it is half its receive slots (a
 * writer hands credits back with its data anyway), and end the stream
 * once asked to and a credit allows.  These may use the last credit.
 */
static void mc_rdma_send_control_locked(QIOChannelMCRdma *r)
{
    uint32_t imm;

    if (r->broken || r->peer_gone || r->closing || !r->credits) {
        return;
    }
    if (r->fin_pending && !r->fin_sent) {
        imm = r->owed | MC_RDMA_FIN;
        r->fin_sent = true;
    } else if (r->owed >= MC_RDMA_NBUF / 2) {
        imm = r->owed;
    } else {
        return;
    }
    r->owed = 0;
    trace_mc_rdma_control(imm & MC_RDMA_CREDITS_MASK,
                          !!(imm & MC_RDMA_FIN));
    mc_rdma_post_send_locked(r, -1, 0, imm);
}

/* A receive slot was read whole: post it again, owe the peer for it */
static void mc_rdma_recycle_locked(QIOChannelMCRdma *r, unsigned slot)
{
    int ret = mc_rdma_post_recv(r, slot);

    if (ret) {
        mc_rdma_fail_locked(r, "posting a receive failed: %s",
                            strerror(ret));
        return;
    }
    r->owed++;
}

static void mc_rdma_complete_locked(QIOChannelMCRdma *r, struct ibv_wc *wc)
{
    bool is_recv = wc->wr_id >= MC_RDMA_NBUF && wc->wr_id < MC_RDMA_WR_CTL;
    uint32_t imm;
    unsigned slot;

    if (wc->wr_id < MC_RDMA_NBUF) {
        r->tx_free[r->tx_nfree++] = wc->wr_id;
    } else if (wc->wr_id == MC_RDMA_WR_CTL) {
        r->ctl_inflight--;
    }
    if (wc->status == IBV_WC_WR_FLUSH_ERR) {
        /*
         * The queue pair went to the error state: after a disconnect
         * (the peer's, or this side's shutdown) or after the error
         * completion reported before this one.
         */
        r->peer_gone = true;
        return;
    }
    if (wc->status != IBV_WC_SUCCESS) {
        mc_rdma_fail_locked(r, "a %s failed: %s", is_recv ? "receive" :
                            "send", ibv_wc_status_str(wc->status));
        return;
    }
    if (!is_recv) {
        return;
    }
    slot = wc->wr_id - MC_RDMA_NBUF;
    imm = wc->wc_flags & IBV_WC_WITH_IMM ? be32_to_cpu(wc->imm_data) : 0;
    r->credits += imm & MC_RDMA_CREDITS_MASK;
    if (!wc->byte_len && !(imm & MC_RDMA_FIN)) {
        mc_rdma_recycle_locked(r, slot);     /* credits only */
        return;
    }
    r->rx_q[(r->rx_head + r->rx_count) % MC_RDMA_NBUF] = slot;
    r->rx_count++;
    r->rx_len[slot] = wc->byte_len;
    r->rx_fin[slot] = imm & MC_RDMA_FIN;
}

/* File every completion the queue holds now */
static void mc_rdma_drain_cq(QIOChannelMCRdma *r)
{
    struct ibv_wc wc[16];
    int n, i;

    while ((n = ibv_poll_cq(r->cq, ARRAY_SIZE(wc), wc)) != 0) {
        qemu_mutex_lock(&r->lock);
        if (n < 0) {
            mc_rdma_fail_locked(r, "polling the completion queue failed");
        }
        for (i = 0; i < n; i++) {
            mc_rdma_complete_locked(r, &wc[i]);
        }
        mc_rdma_send_control_locked(r);
        mc_rdma_update_locked(r);
        qemu_mutex_unlock(&r->lock);
        if (n < 0) {
            return;
        }
    }
}

static void mc_rdma_poll_cq(QIOChannelMCRdma *r)
{
    struct ibv_cq *cq;
    void *ctx;

    if (ibv_get_cq_event(r->compch, &cq, &ctx) == 0) {
        ibv_ack_cq_events(cq, 1);
    }
    /* Re-arm first: a completion after the last poll still wakes us */
    ibv_req_notify_cq(r->cq, 0);
    mc_rdma_drain_cq(r);
}

/*
 * The adapter's asynchronous events (the context's, shared by every
 * connection of the process): a fatal error on this queue pair or
 * completion queue, or on the device, produces no completion at all.
 */
static void mc_rdma_async_event(QIOChannelMCRdma *r)
{
    struct ibv_async_event ev;
    bool ours = false;

    if (ibv_get_async_event(r->id->verbs, &ev)) {
        return;
    }
    switch (ev.event_type) {
    case IBV_EVENT_QP_FATAL:
    case IBV_EVENT_QP_REQ_ERR:
    case IBV_EVENT_QP_ACCESS_ERR:
        ours = ev.element.qp == r->id->qp;
        break;
    case IBV_EVENT_CQ_ERR:
        ours = ev.element.cq == r->cq;
        break;
    case IBV_EVENT_DEVICE_FATAL:
        ours = true;
        break;
    default:
        break;
    }
    trace_mc_rdma_event(ibv_event_type_str(ev.event_type));
    if (ours) {
        qemu_mutex_lock(&r->lock);
        mc_rdma_fail_locked(r, "%s", ibv_event_type_str(ev.event_type));
        mc_rdma_update_locked(r);
        qemu_mutex_unlock(&r->lock);
    }
    ibv_ack_async_event(&ev);
}

static void mc_rdma_cm_event(QIOChannelMCRdma *r)
{
    struct rdma_cm_event *ev;
    enum rdma_cm_event_type type;

    if (rdma_get_cm_event(r->evch, &ev)) {
        return;
    }
    type = ev->event;
    rdma_ack_cm_event(ev);
    trace_mc_rdma_event(rdma_event_str(type));
    if (type == RDMA_CM_EVENT_DISCONNECTED) {
        /* what the peer sent before it left is read before its end */
        mc_rdma_drain_cq(r);
    }
    qemu_mutex_lock(&r->lock);
    switch (type) {
    case RDMA_CM_EVENT_DISCONNECTED:
    case RDMA_CM_EVENT_TIMEWAIT_EXIT:
        r->peer_gone = true;
        break;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
        mc_rdma_fail_locked(r, "the RDMA device was removed");
        break;
    case RDMA_CM_EVENT_ADDR_CHANGE:
        mc_rdma_fail_locked(r, "the RDMA address changed");
        break;
    default:
        break;
    }
    mc_rdma_update_locked(r);
    qemu_mutex_unlock(&r->lock);
}

static void *mc_rdma_thread(void *opaque)
{
    QIOChannelMCRdma *r = opaque;
    struct pollfd pfd[4] = {
        { .fd = r->compch->fd, .events = POLLIN },
        { .fd = r->evch->fd, .events = POLLIN },
        { .fd = event_notifier_get_fd(&r->stop), .events = POLLIN },
        { .fd = r->id->verbs->async_fd, .events = POLLIN },
    };

    /* shared with any other user of the device: never block on it */
    g_unix_set_fd_nonblocking(pfd[3].fd, true, NULL);
    for (;;) {
        if (poll(pfd, ARRAY_SIZE(pfd), -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            qemu_mutex_lock(&r->lock);
            mc_rdma_fail_locked(r, "poll failed: %s", strerror(errno));
            mc_rdma_update_locked(r);
            qemu_mutex_unlock(&r->lock);
            break;
        }
        if (pfd[2].revents) {
            break;
        }
        if (pfd[0].revents) {
            mc_rdma_poll_cq(r);
        }
        if (pfd[1].revents) {
            mc_rdma_cm_event(r);
        }
        if (pfd[3].revents) {
            mc_rdma_async_event(r);
        }
    }
    return NULL;
}

static ssize_t mc_rdma_readv(QIOChannel *ioc, const struct iovec *iov,
                             size_t niov, int **fds, size_t *nfds,
                             int flags, Error **errp)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(ioc);
    size_t want = iov_size(iov, niov);
    size_t done = 0;
    ssize_t ret;

    qemu_mutex_lock(&r->lock);
    while (!mc_rdma_can_read_locked(r)) {
        if (!r->blocking) {
            qemu_mutex_unlock(&r->lock);
            return QIO_CHANNEL_ERR_BLOCK;
        }
        trace_mc_rdma_wait("read", r->credits, r->tx_nfree, r->owed);
        qemu_cond_wait(&r->cond, &r->lock);
    }
    while (done < want && r->rx_count && !r->eof && !r->rd_shut) {
        unsigned slot = r->rx_q[r->rx_head];
        size_t n = MIN(want - done, r->rx_len[slot] - r->rx_off);

        iov_from_buf(iov, niov, done, mc_rdma_rx_buf(r, slot) + r->rx_off,
                     n);
        done += n;
        r->rx_off += n;
        if (r->rx_off == r->rx_len[slot]) {
            r->eof = r->rx_fin[slot];
            r->rx_head = (r->rx_head + 1) % MC_RDMA_NBUF;
            r->rx_count--;
            r->rx_off = 0;
            mc_rdma_recycle_locked(r, slot);
        }
    }
    if (done || !want || r->eof || r->rd_shut) {
        ret = done;
    } else if (r->broken) {
        error_setg(errp, "MC over RDMA: %s", r->broken);
        ret = -1;
    } else {
        ret = 0;        /* the peer disconnected: the end of its stream */
    }
    mc_rdma_send_control_locked(r);
    mc_rdma_update_locked(r);
    qemu_mutex_unlock(&r->lock);
    return ret;
}

static ssize_t mc_rdma_writev(QIOChannel *ioc, const struct iovec *iov,
                              size_t niov, int *fds, size_t nfds,
                              int flags, Error **errp)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(ioc);
    size_t total = iov_size(iov, niov);
    size_t done = 0;
    ssize_t ret = 0;

    if (!total) {
        return 0;
    }
    qemu_mutex_lock(&r->lock);
    while (done < total) {
        unsigned slot;
        size_t n;
        uint32_t imm;

        while (!mc_rdma_can_write_locked(r)) {
            if (!r->blocking) {
                goto out;
            }
            trace_mc_rdma_wait("write", r->credits, r->tx_nfree, r->owed);
            qemu_cond_wait(&r->cond, &r->lock);
        }
        if (r->broken) {
            error_setg(errp, "MC over RDMA: %s", r->broken);
            ret = -1;
            goto out;
        }
        if (r->wr_shut || r->peer_gone) {
            error_setg(errp, "MC over RDMA: %s",
                       r->wr_shut ? "the channel was shut down for writing"
                       : "the peer closed the connection");
            ret = -1;
            goto out;
        }
        slot = r->tx_free[--r->tx_nfree];
        n = MIN(total - done, MC_RDMA_BUF_SIZE);
        iov_to_buf(iov, niov, done, mc_rdma_tx_buf(r, slot), n);
        imm = r->owed;
        r->owed = 0;
        if (!mc_rdma_post_send_locked(r, slot, n, imm)) {
            r->tx_free[r->tx_nfree++] = slot;
            continue;       /* broken now: reported above */
        }
        done += n;
    }
out:
    if (ret == 0) {
        ret = done ? done : QIO_CHANNEL_ERR_BLOCK;
    }
    mc_rdma_update_locked(r);
    qemu_mutex_unlock(&r->lock);
    return ret;
}

static int mc_rdma_set_blocking(QIOChannel *ioc, bool enabled, Error **errp)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(ioc);

    qemu_mutex_lock(&r->lock);
    r->blocking = enabled;
    qemu_mutex_unlock(&r->lock);
    return 0;
}

static int mc_rdma_shutdown(QIOChannel *ioc, QIOChannelShutdown how,
                            Error **errp)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(ioc);

    qemu_mutex_lock(&r->lock);
    if (how != QIO_CHANNEL_SHUTDOWN_WRITE) {
        r->rd_shut = true;
    }
    if (how != QIO_CHANNEL_SHUTDOWN_READ && !r->wr_shut) {
        r->wr_shut = true;
        r->fin_pending = true;
        mc_rdma_send_control_locked(r);
    }
    mc_rdma_update_locked(r);
    if (how == QIO_CHANNEL_SHUTDOWN_BOTH) {
        /*
         * Disconnecting flushes SENDs not yet delivered: let a last
         * message (a NACK, STOP) go first, as a socket's would, briefly.
         */
        int64_t end = g_get_monotonic_time() + MC_RDMA_LINGER_MS * 1000;

        while ((r->tx_nfree < MC_RDMA_NBUF || r->ctl_inflight) &&
               !r->broken && !r->peer_gone && r->id &&
               g_get_monotonic_time() < end) {
            qemu_cond_timedwait(&r->cond, &r->lock, 5);
        }
        r->closing = true;
        if (r->id) {
            /* the peer sees the link end now, not at its next timeout */
            rdma_disconnect(r->id);
        }
    }
    qemu_mutex_unlock(&r->lock);
    return 0;
}

static void mc_rdma_teardown(QIOChannelMCRdma *r)
{
    struct rdma_cm_id *id;

    qemu_mutex_lock(&r->lock);
    r->closing = true;
    r->rd_shut = r->wr_shut = true;
    mc_rdma_update_locked(r);
    if (r->id && r->id->qp) {
        rdma_disconnect(r->id);
    }
    qemu_mutex_unlock(&r->lock);
    if (r->thread_running) {
        event_notifier_set(&r->stop);
        qemu_thread_join(&r->thread);
        r->thread_running = false;
    }
    if (r->id && r->id->qp) {
        rdma_destroy_qp(r->id);
    }
    if (r->mr) {
        ibv_dereg_mr(r->mr);
        r->mr = NULL;
    }
    if (r->cq) {
        ibv_destroy_cq(r->cq);
        r->cq = NULL;
    }
    if (r->compch) {
        ibv_destroy_comp_channel(r->compch);
        r->compch = NULL;
    }
    if (r->pd) {
        ibv_dealloc_pd(r->pd);
        r->pd = NULL;
    }
    qemu_mutex_lock(&r->lock);
    id = r->id;
    r->id = NULL;       /* shutdown() after close() finds none */
    qemu_mutex_unlock(&r->lock);
    if (id) {
        rdma_destroy_id(id);
    }
    if (r->evch) {
        rdma_destroy_event_channel(r->evch);
        r->evch = NULL;
    }
    qemu_vfree(r->mem);
    r->mem = NULL;
}

static int mc_rdma_close(QIOChannel *ioc, Error **errp)
{
    mc_rdma_teardown(QIO_CHANNEL_MC_RDMA(ioc));
    return 0;
}

/*
 * Both event notifiers are eventfds kept readable while the condition
 * holds, so a wait for writing watches the write notifier for input.
 */
static GSource *mc_rdma_create_watch(QIOChannel *ioc, GIOCondition cond)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(ioc);
    EventNotifier *e = cond & G_IO_OUT ? &r->wr_ev : &r->rd_ev;

    return qio_channel_create_fd_watch(ioc, event_notifier_get_fd(e),
                                       G_IO_IN);
}

static void mc_rdma_set_aio_fd_handler(QIOChannel *ioc,
                                       AioContext *read_ctx,
                                       IOHandler *io_read,
                                       AioContext *write_ctx,
                                       IOHandler *io_write,
                                       void *opaque)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(ioc);

    if (read_ctx) {
        aio_set_fd_handler(read_ctx, event_notifier_get_fd(&r->rd_ev),
                           io_read, NULL, NULL, NULL, opaque);
    }
    if (write_ctx) {
        aio_set_fd_handler(write_ctx, event_notifier_get_fd(&r->wr_ev),
                           io_write, NULL, NULL, NULL, opaque);
    }
}

static void mc_rdma_init(Object *obj)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(obj);

    qemu_mutex_init(&r->lock);
    qemu_cond_init(&r->cond);
    event_notifier_init(&r->stop, false);
    event_notifier_init(&r->rd_ev, false);
    event_notifier_init(&r->wr_ev, false);
    r->blocking = true;
}

static void mc_rdma_finalize(Object *obj)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(obj);

    mc_rdma_teardown(r);
    event_notifier_cleanup(&r->stop);
    event_notifier_cleanup(&r->rd_ev);
    event_notifier_cleanup(&r->wr_ev);
    qemu_cond_destroy(&r->cond);
    qemu_mutex_destroy(&r->lock);
    g_free(r->broken);
}

static void mc_rdma_class_init(ObjectClass *klass, void *data)
{
    QIOChannelClass *ioc_klass = QIO_CHANNEL_CLASS(klass);

    ioc_klass->io_writev = mc_rdma_writev;
    ioc_klass->io_readv = mc_rdma_readv;
    ioc_klass->io_set_blocking = mc_rdma_set_blocking;
    ioc_klass->io_close = mc_rdma_close;
    ioc_klass->io_shutdown = mc_rdma_shutdown;
    ioc_klass->io_create_watch = mc_rdma_create_watch;
    ioc_klass->io_set_aio_fd_handler = mc_rdma_set_aio_fd_handler;
}

static const TypeInfo mc_rdma_info = {
    .parent = TYPE_QIO_CHANNEL,
    .name = TYPE_QIO_CHANNEL_MC_RDMA,
    .instance_size = sizeof(QIOChannelMCRdma),
    .instance_init = mc_rdma_init,
    .instance_finalize = mc_rdma_finalize,
    .class_init = mc_rdma_class_init,
};

/*
 * MC's messages over this channel: the socket ops, plus link_failed and
 * can_send.
 */
static MCTransportOps mc_rdma_transport_ops;

/*
 * Did the channel fail on its own (an error completion, the device
 * removed, its address changed) before the peer disconnected?  Then
 * the peer may well be alive.
 */
static bool mc_rdma_transport_link_failed(MCTransport *t)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(t->ioc);
    bool failed;

    qemu_mutex_lock(&r->lock);
    failed = r->broken != NULL;
    qemu_mutex_unlock(&r->lock);
    return failed;
}

/*
 * Would a small write go without waiting for credits (or fail at
 * once)?  One credit of margin: a credit-only SEND may take one between
 * this and the write.
 */
static bool mc_rdma_transport_can_send(MCTransport *t)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(t->ioc);
    bool ok;

    qemu_mutex_lock(&r->lock);
    ok = (r->tx_nfree && r->credits >= 3) || r->wr_shut || r->peer_gone ||
         r->broken;
    qemu_mutex_unlock(&r->lock);
    return ok;
}

static void mc_rdma_register_types(void)
{
    type_register_static(&mc_rdma_info);
    mc_rdma_transport_ops = mc_transport_socket_ops;
    mc_rdma_transport_ops.name = "rdma";
    mc_rdma_transport_ops.link_failed = mc_rdma_transport_link_failed;
    mc_rdma_transport_ops.can_send = mc_rdma_transport_can_send;
    mc_transport_register(TYPE_QIO_CHANNEL_MC_RDMA, &mc_rdma_transport_ops);
}

type_init(mc_rdma_register_types);

/* Setting up a connection */

static void mc_rdma_hello(MCRdmaHello *h)
{
    h->magic = cpu_to_be32(MC_RDMA_MAGIC);
    h->nbuf = cpu_to_be32(MC_RDMA_NBUF);
    h->buf_size = cpu_to_be32(MC_RDMA_BUF_SIZE);
}

/* The peer's receive slots, or 0 if @data is not MC's hello */
static unsigned mc_rdma_peer_slots(const void *data, size_t len)
{
    MCRdmaHello h;

    if (!data || len < sizeof(h)) {
        return 0;
    }
    memcpy(&h, data, sizeof(h));
    if (be32_to_cpu(h.magic) != MC_RDMA_MAGIC ||
        be32_to_cpu(h.buf_size) != MC_RDMA_BUF_SIZE) {
        return 0;
    }
    return MIN(be32_to_cpu(h.nbuf), MC_RDMA_CREDITS_MASK);
}

/* Queue pair, completion queue, registered slots; receives posted */
static bool mc_rdma_setup_verbs(QIOChannelMCRdma *r, Error **errp)
{
    size_t size = 2 * MC_RDMA_NBUF * MC_RDMA_BUF_SIZE;
    struct ibv_qp_init_attr attr = {
        .qp_type = IBV_QPT_RC,
        .cap = {
            /* data, plus a control message per credit at most */
            .max_send_wr = 2 * MC_RDMA_NBUF + 4,
            .max_recv_wr = MC_RDMA_NBUF,
            .max_send_sge = 1,
            .max_recv_sge = 1,
        },
    };
    struct ibv_context *verbs = r->id->verbs;
    unsigned i;
    int ret;

    r->pd = ibv_alloc_pd(verbs);
    r->compch = r->pd ? ibv_create_comp_channel(verbs) : NULL;
    r->cq = r->compch ? ibv_create_cq(verbs, 3 * MC_RDMA_NBUF + 8, NULL,
                                      r->compch, 0) : NULL;
    if (!r->cq) {
        error_setg_errno(errp, errno, "MC over RDMA: cannot set up %s",
                         ibv_get_device_name(verbs->device));
        return false;
    }
    ret = ibv_req_notify_cq(r->cq, 0);
    if (ret) {
        error_setg_errno(errp, ret, "MC over RDMA: cannot arm the "
                         "completion queue of %s",
                         ibv_get_device_name(verbs->device));
        return false;
    }
    attr.send_cq = attr.recv_cq = r->cq;
    if (rdma_create_qp(r->id, r->pd, &attr)) {
        error_setg_errno(errp, errno, "MC over RDMA: cannot create a queue "
                         "pair on %s", ibv_get_device_name(verbs->device));
        return false;
    }
    r->mem = qemu_memalign(qemu_real_host_page_size(), size);
    r->mr = ibv_reg_mr(r->pd, r->mem, size, IBV_ACCESS_LOCAL_WRITE);
    if (!r->mr) {
        error_setg_errno(errp, errno, "MC over RDMA: cannot register %zu "
                         "KiB with %s (is the locked-memory limit, ulimit "
                         "-l, too low?)", size / KiB,
                         ibv_get_device_name(verbs->device));
        return false;
    }
    for (i = 0; i < MC_RDMA_NBUF; i++) {
        r->tx_free[i] = i;
        ret = mc_rdma_post_recv(r, i);
        if (ret) {
            error_setg_errno(errp, ret, "MC over RDMA: cannot post a "
                             "receive");
            return false;
        }
    }
    r->tx_nfree = MC_RDMA_NBUF;
    return true;
}

static void mc_rdma_start(QIOChannelMCRdma *r, unsigned peer_slots,
                          const char *name)
{
    r->credits = peer_slots;
    qemu_mutex_lock(&r->lock);
    mc_rdma_update_locked(r);
    qemu_mutex_unlock(&r->lock);
    qemu_thread_create(&r->thread, "mc-rdma", mc_rdma_thread, r,
                       QEMU_THREAD_JOINABLE);
    r->thread_running = true;
    qio_channel_set_name(QIO_CHANNEL(r), name);
}

/*
 * Wait for the next event on @ch, which must be @want; the peer's slots
 * from its private data in *@slots when asked.
 */
static bool mc_rdma_expect(struct rdma_event_channel *ch,
                           enum rdma_cm_event_type want, unsigned *slots,
                           const char *what, Error **errp)
{
    struct pollfd pfd = { .fd = ch->fd, .events = POLLIN };
    struct rdma_cm_event *ev;
    bool ok;

    if (poll(&pfd, 1, MC_RDMA_TIMEOUT_MS) <= 0) {
        error_setg(errp, "MC over RDMA: %s: no answer in %d ms", what,
                   MC_RDMA_TIMEOUT_MS);
        return false;
    }
    if (rdma_get_cm_event(ch, &ev)) {
        error_setg_errno(errp, errno, "MC over RDMA: %s", what);
        return false;
    }
    ok = ev->event == want;
    if (!ok && ev->event == RDMA_CM_EVENT_REJECTED) {
        error_setg(errp, "MC over RDMA: %s: the standby refused the "
                   "connection (is it waiting for MC over RDMA: the mc "
                   "capability set before migrate-incoming rdma:...?)",
                   what);
    } else if (!ok) {
        error_setg(errp, "MC over RDMA: %s: %s (status %d)", what,
                   rdma_event_str(ev->event), ev->status);
    } else if (slots) {
        *slots = mc_rdma_peer_slots(ev->param.conn.private_data,
                                    ev->param.conn.private_data_len);
        if (!*slots) {
            error_setg(errp, "MC over RDMA: %s: the peer is not an MC "
                       "standby of this version", what);
            ok = false;
        }
    }
    rdma_ack_cm_event(ev);
    return ok;
}

static struct addrinfo *mc_rdma_lookup(InetSocketAddress *addr, bool passive,
                                       Error **errp)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = passive ? AI_PASSIVE : 0,
    };
    struct addrinfo *res;
    int ret = getaddrinfo(addr->host, addr->port, &hints, &res);

    if (ret) {
        error_setg(errp, "MC over RDMA: cannot resolve %s:%s: %s",
                   addr->host, addr->port, gai_strerror(ret));
        return NULL;
    }
    return res;
}

void mc_rdma_start_outgoing_migration(MigrationState *s,
                                      InetSocketAddress *addr,
                                      Error **errp)
{
    QIOChannelMCRdma *r = QIO_CHANNEL_MC_RDMA(
        object_new(TYPE_QIO_CHANNEL_MC_RDMA));
    struct addrinfo *res = mc_rdma_lookup(addr, false, errp);
    MCRdmaHello hello;
    struct rdma_conn_param param = {
        .private_data = &hello,
        .private_data_len = sizeof(hello),
        .retry_count = 7,
        .rnr_retry_count = 7,
    };
    unsigned slots;

    trace_mc_rdma_connect(addr->host, addr->port);
    if (!res) {
        goto fail;
    }
    r->evch = rdma_create_event_channel();
    if (!r->evch || rdma_create_id(r->evch, &r->id, r, RDMA_PS_TCP)) {
        error_setg_errno(errp, errno, "MC over RDMA: no RDMA connection "
                         "manager (are the rdma_cm and ib_uverbs modules "
                         "loaded?)");
        goto fail;
    }
    if (rdma_resolve_addr(r->id, NULL, res->ai_addr, MC_RDMA_TIMEOUT_MS)) {
        error_setg_errno(errp, errno, "MC over RDMA: cannot reach %s",
                         addr->host);
        goto fail;
    }
    if (!mc_rdma_expect(r->evch, RDMA_CM_EVENT_ADDR_RESOLVED, NULL,
                        "resolving the address (no RDMA device reaches "
                        "it?)", errp) ||
        rdma_resolve_route(r->id, MC_RDMA_TIMEOUT_MS) ||
        !mc_rdma_expect(r->evch, RDMA_CM_EVENT_ROUTE_RESOLVED, NULL,
                        "resolving the route", errp) ||
        !mc_rdma_setup_verbs(r, errp)) {
        goto fail;
    }
    mc_rdma_hello(&hello);
    if (rdma_connect(r->id, &param)) {
        error_setg_errno(errp, errno, "MC over RDMA: cannot connect to "
                         "%s:%s", addr->host, addr->port);
        goto fail;
    }
    if (!mc_rdma_expect(r->evch, RDMA_CM_EVENT_ESTABLISHED, &slots,
                        "connecting", errp)) {
        goto fail;
    }
    freeaddrinfo(res);
    mc_rdma_start(r, slots, "mc-rdma-outgoing");
    migration_channel_connect(s, QIO_CHANNEL(r), addr->host, NULL);
    object_unref(OBJECT(r));
    return;

fail:
    if (res) {
        freeaddrinfo(res);
    }
    object_unref(OBJECT(r));
}

/* The standby: one primary, then the listener goes */
typedef struct MCRdmaListener {
    struct rdma_event_channel *evch;
    struct rdma_cm_id *id;
    QIOChannelMCRdma *pending;  /* accepted, not yet established */
} MCRdmaListener;

static void mc_rdma_listener_free(MCRdmaListener *l)
{
    if (l->evch) {
        qemu_set_fd_handler(l->evch->fd, NULL, NULL, NULL);
    }
    if (l->pending) {
        object_unref(OBJECT(l->pending));
    }
    if (l->id) {
        rdma_destroy_id(l->id);
    }
    if (l->evch) {
        rdma_destroy_event_channel(l->evch);
    }
    g_free(l);
}

/*
 * Accept a primary's request on @id (its event acknowledged already:
 * destroying @id before that would wait for it), or refuse it with the
 * reason on stderr.
 */
static void mc_rdma_accept(MCRdmaListener *l, struct rdma_cm_id *id,
                           unsigned slots)
{
    QIOChannelMCRdma *r;
    MCRdmaHello hello;
    struct rdma_conn_param param = {
        .private_data = &hello,
        .private_data_len = sizeof(hello),
        .retry_count = 7,
        .rnr_retry_count = 7,
    };
    Error *err = NULL;

    if (l->pending || !slots) {
        error_report("MC over RDMA: refused a connection: %s",
                     l->pending ? "a primary is already connecting"
                     : "not from an MC primary (the mc capability must "
                     "be on on both sides)");
        rdma_reject(id, NULL, 0);
        rdma_destroy_id(id);
        return;
    }
    r = QIO_CHANNEL_MC_RDMA(object_new(TYPE_QIO_CHANNEL_MC_RDMA));
    r->id = id;
    r->id->context = r;
    mc_rdma_hello(&hello);
    if (!mc_rdma_setup_verbs(r, &err) || rdma_accept(r->id, &param)) {
        if (!err) {
            error_setg_errno(&err, errno, "MC over RDMA: cannot accept "
                             "the primary's connection");
        }
        error_report_err(err);
        rdma_reject(r->id, NULL, 0);
        object_unref(OBJECT(r));
        return;
    }
    r->credits = slots;
    l->pending = r;
}

static void mc_rdma_listener_event(void *opaque)
{
    MCRdmaListener *l = opaque;
    struct rdma_cm_event *ev;
    QIOChannelMCRdma *r;
    struct rdma_cm_id *id;
    unsigned slots;
    Error *err = NULL;

    if (rdma_get_cm_event(l->evch, &ev)) {
        return;
    }
    trace_mc_rdma_event(rdma_event_str(ev->event));
    switch (ev->event) {
    case RDMA_CM_EVENT_CONNECT_REQUEST:
        id = ev->id;
        slots = mc_rdma_peer_slots(ev->param.conn.private_data,
                                   ev->param.conn.private_data_len);
        rdma_ack_cm_event(ev);
        mc_rdma_accept(l, id, slots);
        return;
    case RDMA_CM_EVENT_ESTABLISHED:
        if (!l->pending || ev->id != l->pending->id) {
            break;
        }
        rdma_ack_cm_event(ev);
        r = l->pending;
        l->pending = NULL;
        /* its own events from now on, for its own thread */
        r->evch = rdma_create_event_channel();
        if (!r->evch || rdma_migrate_id(r->id, r->evch)) {
            error_setg_errno(&err, errno, "MC over RDMA: cannot take the "
                             "primary's connection");
            error_report_err(err);
            object_unref(OBJECT(r));
            return;
        }
        mc_rdma_listener_free(l);
        mc_rdma_start(r, r->credits, "mc-rdma-incoming");
        migration_channel_process_incoming(QIO_CHANNEL(r));
        object_unref(OBJECT(r));
        return;
    case RDMA_CM_EVENT_REJECTED:
    case RDMA_CM_EVENT_CONNECT_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_DISCONNECTED:
        if (l->pending && ev->id == l->pending->id) {
            error_report("MC over RDMA: the primary's connection failed: "
                         "%s", rdma_event_str(ev->event));
            r = l->pending;
            l->pending = NULL;
            rdma_ack_cm_event(ev);
            object_unref(OBJECT(r));
            return;
        }
        break;
    default:
        break;
    }
    rdma_ack_cm_event(ev);
}

void mc_rdma_start_incoming_migration(InetSocketAddress *addr,
                                      Error **errp)
{
    MCRdmaListener *l;
    struct addrinfo *res = mc_rdma_lookup(addr, true, errp);
    Error *err = NULL;

    trace_mc_rdma_listen(addr->host, addr->port);
    if (!res) {
        return;
    }
    l = g_new0(MCRdmaListener, 1);
    l->evch = rdma_create_event_channel();
    if (!l->evch || rdma_create_id(l->evch, &l->id, l, RDMA_PS_TCP)) {
        error_setg_errno(&err, errno, "MC over RDMA: no RDMA connection "
                         "manager (are the rdma_cm and ib_uverbs modules "
                         "loaded?)");
    } else if (rdma_bind_addr(l->id, res->ai_addr) ||
               rdma_listen(l->id, 1)) {
        error_setg_errno(&err, errno, "MC over RDMA: cannot listen at "
                         "%s:%s", addr->host, addr->port);
    }
    freeaddrinfo(res);
    if (err) {
        error_propagate(errp, err);
        mc_rdma_listener_free(l);
        return;
    }
    qemu_set_fd_handler(l->evch->fd, mc_rdma_listener_event, NULL, l);
}
