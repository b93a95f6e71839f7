/*
 * Unit tests for the MC wire protocol and the socket transport: framing,
 * checksums, refusal of every kind of bad input a broken or hostile peer
 * can send, and a last message to a peer that does not read.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "io/channel-socket.h"
#include "../migration/mc-wire.h"
#include "../migration/mc-transport.h"

static MCTransport *make_transport(int fd)
{
    QIOChannel *ioc = QIO_CHANNEL(qio_channel_socket_new_fd(fd,
                                                            &error_abort));
    MCTransport *t = mc_transport_new(ioc, &error_abort);

    object_unref(OBJECT(ioc));      /* the transport holds it */
    mc_transport_setup(t);
    return t;
}

static void make_pair(MCTransport **a, MCTransport **b)
{
    int sv[2];

    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    *a = make_transport(sv[0]);
    *b = make_transport(sv[1]);
}

static void test_header_roundtrip(void)
{
    MCWireHeader in = {
        .type = MC_MSG_CHECKPOINT, .flags = 7,
        .epoch = 0x0102030405060708ULL, .len = 4096,
        .payload_csum = 0xdeadbeef,
    }, out;
    uint8_t buf[MC_WIRE_HDR_SIZE];

    mc_wire_encode(&in, buf);
    g_assert_cmpint(mc_wire_decode(buf, 4096, &out, &error_abort), ==, 0);
    g_assert_cmpint(out.type, ==, in.type);
    g_assert_cmpint(out.flags, ==, in.flags);
    g_assert_cmpuint(out.epoch, ==, in.epoch);
    g_assert_cmpuint(out.len, ==, in.len);
    g_assert_cmpuint(out.payload_csum, ==, in.payload_csum);
}

/* Every single-bit flip anywhere in a header must be refused. */
static void test_header_bitflips(void)
{
    MCWireHeader in = { .type = MC_MSG_CHECKPOINT, .epoch = 42, .len = 100 };
    MCWireHeader out;
    uint8_t good[MC_WIRE_HDR_SIZE], bad[MC_WIRE_HDR_SIZE];
    int byte, bit;

    mc_wire_encode(&in, good);
    for (byte = 0; byte < MC_WIRE_HDR_SIZE; byte++) {
        for (bit = 0; bit < 8; bit++) {
            Error *err = NULL;

            memcpy(bad, good, sizeof(bad));
            bad[byte] ^= 1 << bit;
            g_assert_cmpint(mc_wire_decode(bad, 1 << 20, &out, &err), ==, -1);
            g_assert_nonnull(err);
            error_free(err);
        }
    }
}

static void expect_decode_error(const MCWireHeader *h, uint64_t max,
                                const char *needle)
{
    uint8_t buf[MC_WIRE_HDR_SIZE];
    MCWireHeader out;
    Error *err = NULL;

    mc_wire_encode(h, buf);
    g_assert_cmpint(mc_wire_decode(buf, max, &out, &err), ==, -1);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(error_get_pretty(err), needle));
    error_free(err);
}

static void test_header_refusals(void)
{
    MCWireHeader h = { .type = MC_MSG_CHECKPOINT, .epoch = 1, .len = 2048 };
    MCWireHeader hb = { .type = MC_MSG_HEARTBEAT, .len = 8 };
    MCWireHeader unk = { .type = 99 };
    uint8_t buf[MC_WIRE_HDR_SIZE];
    MCWireHeader out;
    Error *err = NULL;

    expect_decode_error(&h, 1024, "staging buffer");
    expect_decode_error(&hb, 1024, "payload");
    expect_decode_error(&unk, 1024, "unknown message type");

    /* A valid header from a future protocol version */
    mc_wire_encode(&h, buf);
    buf[5] = MC_WIRE_VERSION + 1;
    /* re-seal the header checksum so only the version is wrong */
    stl_be_p(buf + 36, mc_wire_csum(0, buf, 36));
    g_assert_cmpint(mc_wire_decode(buf, 4096, &out, &err), ==, -1);
    g_assert_nonnull(strstr(error_get_pretty(err), "version"));
    error_free(err);
}

static void test_stream_roundtrip(void)
{
    MCTransport *a, *b;
    char p1[] = "hello, ", p2[] = "standby";
    struct iovec iov[2] = {
        { .iov_base = p1, .iov_len = strlen(p1) },
        { .iov_base = p2, .iov_len = strlen(p2) },
    };
    MCWireHeader h;
    char buf[64] = "";

    make_pair(&a, &b);
    g_assert_cmpint(mc_transport_send(a, MC_MSG_CHECKPOINT, 0, 5, iov, 2,
                                      &error_abort), ==, 0);
    g_assert_cmpint(mc_transport_send(a, MC_MSG_HEARTBEAT, 0, 5, NULL, 0,
                                      &error_abort), ==, 0);
    g_assert_cmpint(mc_transport_recv_header(b, 64, &h, &error_abort), ==, 1);
    g_assert_cmpint(h.type, ==, MC_MSG_CHECKPOINT);
    g_assert_cmpuint(h.epoch, ==, 5);
    g_assert_cmpuint(h.len, ==, 14);
    g_assert_cmpint(mc_transport_recv_payload(b, &h, buf, &error_abort),
                    ==, 1);
    g_assert_cmpstr(buf, ==, "hello, standby");
    g_assert_cmpint(mc_transport_recv_header(b, 64, &h, &error_abort), ==, 1);
    g_assert_cmpint(h.type, ==, MC_MSG_HEARTBEAT);
    /* a clean close between messages is an orderly end of stream */
    mc_transport_free(a);
    g_assert_cmpint(mc_transport_recv_header(b, 64, &h, &error_abort), ==, 0);
    mc_transport_free(b);
}

/* The payload is damaged in flight: the header is fine, the data is not. */
static void test_stream_corrupt_payload(void)
{
    MCTransport *a, *b;
    uint8_t payload[1000], hdr[MC_WIRE_HDR_SIZE], buf[1000];
    MCWireHeader h = { .type = MC_MSG_CHECKPOINT, .epoch = 9,
                       .len = sizeof(payload) };
    Error *err = NULL;

    memset(payload, 0x5a, sizeof(payload));
    h.payload_csum = mc_wire_csum(0, payload, sizeof(payload));
    mc_wire_encode(&h, hdr);
    payload[500] ^= 0x10;
    make_pair(&a, &b);
    qio_channel_write_all(a->ioc, (char *)hdr, sizeof(hdr), &error_abort);
    qio_channel_write_all(a->ioc, (char *)payload, sizeof(payload),
                          &error_abort);
    g_assert_cmpint(mc_transport_recv_header(b, 4096, &h, &error_abort), ==, 1);
    /* corrupt, but the stream is still in step: 0, not -1 */
    g_assert_cmpint(mc_transport_recv_payload(b, &h, buf, &err), ==, 0);
    g_assert_nonnull(strstr(error_get_pretty(err), "corrupt"));
    error_free(err);
    mc_transport_free(a);
    mc_transport_free(b);
}

/* The peer dies mid-checkpoint: the partial data must be refused. */
static void test_stream_truncated(void)
{
    MCTransport *a, *b;
    uint8_t payload[1000], buf[1000];
    struct iovec iov = { .iov_base = payload, .iov_len = sizeof(payload) };
    uint8_t wire[MC_WIRE_HDR_SIZE + sizeof(payload)];
    MCWireHeader h;
    Error *err = NULL;
    int cut;

    memset(payload, 0xa5, sizeof(payload));
    /* capture a whole message, then replay every possible prefix of it */
    make_pair(&a, &b);
    mc_transport_send(a, MC_MSG_CHECKPOINT, 0, 3, &iov, 1, &error_abort);
    qio_channel_read_all(b->ioc, (char *)wire, sizeof(wire), &error_abort);
    mc_transport_free(a);
    mc_transport_free(b);

    for (cut = 1; cut < sizeof(wire); cut += (cut < 64 ? 1 : 97)) {
        int r;

        make_pair(&a, &b);
        qio_channel_write_all(a->ioc, (char *)wire, cut, &error_abort);
        mc_transport_free(a);
        r = mc_transport_recv_header(b, sizeof(buf), &h, &err);
        if (cut < MC_WIRE_HDR_SIZE) {
            g_assert_cmpint(r, ==, -1);
        } else {
            g_assert_cmpint(r, ==, 1);
            g_assert_cmpint(mc_transport_recv_payload(b, &h, buf, &err),
                            ==, -1);
            g_assert_nonnull(strstr(error_get_pretty(err), "truncated"));
        }
        g_assert_nonnull(err);
        error_free(err);
        err = NULL;
        mc_transport_free(b);
    }
}

/*
 * A heartbeat is not queued behind another message, and a last message
 * to a peer that does not read gives up at its deadline.
 */
static void test_transport_busy_and_deadline(void)
{
    MCTransport *a, *b;
    g_autofree uint8_t *fill = g_malloc0(64 * 1024);
    int64_t start, deadline;
    MCWireHeader h;
    int n;

    make_pair(&a, &b);
    qemu_mutex_lock(&a->send_lock);
    g_assert_cmpint(mc_transport_try_send(a, MC_MSG_HEARTBEAT, 0), ==,
                    -EBUSY);
    qemu_mutex_unlock(&a->send_lock);
    g_assert_cmpint(mc_transport_try_send(a, MC_MSG_HEARTBEAT, 0), ==, 0);
    g_assert_cmpint(mc_transport_recv_header(b, 0, &h, &error_abort), ==, 1);
    g_assert_cmpint(h.type, ==, MC_MSG_HEARTBEAT);

    /* b stops reading: fill the socket buffers */
    qio_channel_set_blocking(a->ioc, false, NULL);
    for (n = 0; n < 1024; n++) {
        if (qio_channel_write(a->ioc, (char *)fill, 64 * 1024, NULL) < 0) {
            break;
        }
    }
    g_assert_cmpint(n, <, 1024);
    start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    deadline = start + 50 * 1000;
    g_assert_false(mc_transport_send_by(a, MC_MSG_STOP, 1, deadline));
    g_assert_cmpint(qemu_clock_get_us(QEMU_CLOCK_REALTIME), >=, deadline);
    mc_transport_free(a);
    mc_transport_free(b);

    /* and with a peer that reads, it is queued at once */
    make_pair(&a, &b);
    g_assert_true(mc_transport_send_by(a, MC_MSG_STOP, 2,
                                       qemu_clock_get_us(QEMU_CLOCK_REALTIME)));
    g_assert_cmpint(mc_transport_recv_header(b, 0, &h, &error_abort), ==, 1);
    g_assert_cmpint(h.type, ==, MC_MSG_STOP);
    g_assert_cmpint(h.flags, ==, 2);
    mc_transport_free(a);
    mc_transport_free(b);
}

/* After a shutdown, a blocked or later receive returns at once. */
static void test_transport_shutdown(void)
{
    MCTransport *a, *b;
    MCWireHeader h;
    Error *err = NULL;

    make_pair(&a, &b);
    mc_transport_shutdown(b);
    g_assert_cmpint(mc_transport_recv_header(b, 0, &h, &err), <=, 0);
    error_free(err);
    mc_transport_free(a);
    mc_transport_free(b);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    module_call_init(MODULE_INIT_QOM);
    g_test_add_func("/mc/wire/header-roundtrip", test_header_roundtrip);
    g_test_add_func("/mc/wire/header-bitflips", test_header_bitflips);
    g_test_add_func("/mc/wire/header-refusals", test_header_refusals);
    g_test_add_func("/mc/wire/stream-roundtrip", test_stream_roundtrip);
    g_test_add_func("/mc/wire/stream-corrupt-payload",
                    test_stream_corrupt_payload);
    g_test_add_func("/mc/wire/stream-truncated", test_stream_truncated);
    g_test_add_func("/mc/wire/transport-busy-and-deadline",
                    test_transport_busy_and_deadline);
    g_test_add_func("/mc/wire/transport-shutdown", test_transport_shutdown);
    return g_test_run();
}
