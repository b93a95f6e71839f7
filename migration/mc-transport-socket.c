/*
 * Micro-checkpointing (MC): the socket transport.
 *
 * Messages as a byte stream over the migration channel itself: TCP,
 * UNIX, or TLS over either (the TLS channel wraps the socket one), or
 * MC's RDMA channel (mc-rdma.c registers these ops with its own
 * link_failed and can_send).  Checkpoints are written from the staging buffer and
 * read into it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "mc-transport.h"

/* How often a last message is retried towards a peer that is not reading */
#define MC_SOCKET_RETRY_US      5000

static void mc_socket_setup(MCTransport *t)
{
    qio_channel_set_blocking(t->ioc, true, NULL);
    /* small ACKs and heartbeats must not wait behind Nagle */
    qio_channel_set_delay(t->ioc, false);
}

static int mc_socket_writev(MCTransport *t, const struct iovec *iov,
                            size_t niov, Error **errp)
{
    return qio_channel_writev_all(t->ioc, iov, niov, errp);
}

/*
 * Non-blocking from here on: this is the last message, and a peer that
 * does not read must not hold the sender past its deadline.
 */
static size_t mc_socket_write_by(MCTransport *t, const void *buf, size_t len,
                                 int64_t deadline_us)
{
    size_t done = 0;

    qio_channel_set_blocking(t->ioc, false, NULL);
    for (;;) {
        ssize_t n = qio_channel_write(t->ioc, (const char *)buf + done,
                                      len - done, NULL);

        if (n > 0) {
            done += n;
        }
        if (done == len || (n < 0 && n != QIO_CHANNEL_ERR_BLOCK) ||
            qemu_clock_get_us(QEMU_CLOCK_REALTIME) >= deadline_us) {
            return done;
        }
        g_usleep(MC_SOCKET_RETRY_US);
    }
}

static int mc_socket_read(MCTransport *t, void *buf, size_t len, bool eof_ok,
                          Error **errp)
{
    if (eof_ok) {
        return qio_channel_read_all_eof(t->ioc, buf, len, errp);
    }
    return qio_channel_read_all(t->ioc, buf, len, errp) < 0 ? -1 : 1;
}

static void mc_socket_shutdown(MCTransport *t)
{
    qio_channel_shutdown(t->ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
}

static void mc_socket_shutdown_write(MCTransport *t)
{
    qio_channel_shutdown(t->ioc, QIO_CHANNEL_SHUTDOWN_WRITE, NULL);
}

static void mc_socket_drain_by(MCTransport *t, int64_t deadline_us)
{
    char buf[512];

    qio_channel_set_blocking(t->ioc, false, NULL);
    while (qemu_clock_get_us(QEMU_CLOCK_REALTIME) < deadline_us) {
        ssize_t n = qio_channel_read(t->ioc, buf, sizeof(buf), NULL);

        if (n == QIO_CHANNEL_ERR_BLOCK) {
            g_usleep(MC_SOCKET_RETRY_US);
        } else if (n <= 0) {
            return;     /* the peer ended its side, or the link broke */
        }
    }
}

const MCTransportOps mc_transport_socket_ops = {
    .name = "socket",
    .setup = mc_socket_setup,
    .writev = mc_socket_writev,
    .write_by = mc_socket_write_by,
    .read = mc_socket_read,
    .shutdown = mc_socket_shutdown,
    .shutdown_write = mc_socket_shutdown_write,
    .drain_by = mc_socket_drain_by,
};

