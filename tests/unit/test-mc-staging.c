/*
 * Unit tests for the MC staging buffer: a fixed-size channel that the
 * ordinary QEMUFile code writes checkpoints into and reads them from.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/module.h"
#include "migration/qemu-file-types.h"
#include "migration/vmstate.h"
#include "../migration/qemu-file.h"
#include "../migration/mc-staging.h"
#include "../migration/mc-alloc.h"

static void fill(uint8_t *buf, size_t len, uint8_t seed)
{
    size_t i;

    for (i = 0; i < len; i++) {
        buf[i] = seed + i * 7;
    }
}

/* One output QEMUFile serves checkpoint after checkpoint, in place. */
static void test_write_rewind_reuse(void)
{
    MCStaging *st = mc_staging_new(1 << 20, &error_abort);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));
    uint8_t *data = st->data;
    g_autofree uint8_t *a = g_malloc(300000), *b = g_malloc(1000);

    fill(a, 300000, 1);
    fill(b, 1000, 2);
    qemu_put_buffer(f, a, 300000);
    g_assert_cmpint(qemu_fflush(f), ==, 0);
    g_assert_cmpuint(st->used, ==, 300000);
    g_assert_cmpmem(st->data, 300000, a, 300000);

    mc_staging_rewind(st);
    qemu_put_buffer(f, b, 1000);
    g_assert_cmpint(qemu_fflush(f), ==, 0);
    g_assert_cmpuint(st->used, ==, 1000);
    g_assert_cmpmem(st->data, 1000, b, 1000);
    g_assert_true(st->data == data);            /* never reallocated */
    g_assert_cmpuint(st->high_water, ==, 300000);
    g_assert_cmpint(qemu_file_get_error(f), ==, 0);
    qemu_fclose(f);
    object_unref(OBJECT(st));
}

/*
 * The primary keeps several checkpoints in flight, each in its own part
 * of the buffer: writes land at the part's start and stop at its end.
 */
static void test_window(void)
{
    MCStaging *st = mc_staging_new(1 << 20, &error_abort);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));
    g_autofree uint8_t *a = g_malloc(50000), *big = g_malloc0(60000);

    fill(a, 50000, 3);
    memset(st->data, 0xee, 1 << 20);
    mc_staging_rewind_at(st, 100000, 200000);
    qemu_put_buffer(f, a, 50000);
    g_assert_cmpint(qemu_fflush(f), ==, 0);
    g_assert_cmpuint(st->used, ==, 50000);
    g_assert_cmpmem(st->data + 100000, 50000, a, 50000);
    g_assert_cmpint(st->data[99999], ==, 0xee);  /* nothing before it */
    g_assert_cmpuint(st->high_water, ==, 150000);

    /* 50000 + 60000 bytes do not fit in a 100000-byte part */
    qemu_put_buffer(f, big, 60000);
    qemu_fflush(f);
    g_assert_true(st->overflow);
    g_assert_cmpint(st->data[200000], ==, 0xee); /* nothing after it */
    qemu_fclose(f);
    object_unref(OBJECT(st));
}

typedef struct RoomProbe {
    int calls;
    bool give;          /* move the checkpoint to the start, whole buffer */
} RoomProbe;

static bool room_fn(MCStaging *st, size_t len, void *opaque)
{
    RoomProbe *p = opaque;

    p->calls++;
    if (!p->give || (st->base == 0 && st->limit == st->capacity)) {
        return false;
    }
    mc_staging_move(st, 0, st->capacity);
    return true;
}

/*
 * A write that does not fit in its part asks for room first: given the
 * whole buffer, what was written moves to its start, intact, and the
 * checkpoint goes on; refused, the write fails as without the hook.
 */
static void test_room(void)
{
    MCStaging *st = mc_staging_new(1 << 20, &error_abort);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));
    g_autofree uint8_t *a = g_malloc(80000), *b = g_malloc(300000);
    RoomProbe probe = { .give = true };

    fill(a, 80000, 5);
    fill(b, 300000, 6);
    mc_staging_set_room_fn(st, room_fn, &probe);
    mc_staging_rewind_at(st, 700000, 900000);
    qemu_put_buffer(f, a, 80000);
    g_assert_cmpint(qemu_fflush(f), ==, 0);
    g_assert_cmpint(probe.calls, ==, 0);
    g_assert_cmpuint(st->base, ==, 700000);

    /* 80000 + 300000 > 200000: moved to [0, 1 MiB) */
    qemu_put_buffer(f, b, 300000);
    g_assert_cmpint(qemu_fflush(f), ==, 0);
    g_assert_cmpint(probe.calls, ==, 1);
    g_assert_false(st->overflow);
    g_assert_cmpuint(st->base, ==, 0);
    g_assert_cmpuint(st->limit, ==, 1 << 20);
    g_assert_cmpuint(st->used, ==, 380000);
    g_assert_cmpmem(st->data, 80000, a, 80000);
    g_assert_cmpmem(st->data + 80000, 300000, b, 300000);

    /* the whole buffer is not enough: the hook says no, the write fails */
    probe.give = false;
    qemu_put_buffer(f, b, 300000);
    qemu_put_buffer(f, b, 300000);
    qemu_put_buffer(f, b, 300000);
    qemu_fflush(f);
    g_assert_cmpint(probe.calls, >=, 2);
    g_assert_true(st->overflow);
    g_assert_cmpint(qemu_file_get_error(f), !=, 0);
    g_assert_cmpuint(st->used, <=, st->capacity);
    qemu_fclose(f);
    object_unref(OBJECT(st));
}

/* A checkpoint larger than the buffer fails; the buffer does not grow. */
static void test_overflow(void)
{
    MCStaging *st = mc_staging_new(64 * 1024, &error_abort);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));
    g_autofree uint8_t *big = g_malloc0(200 * 1024);

    qemu_put_buffer(f, big, 200 * 1024);
    qemu_fflush(f);
    g_assert_true(st->overflow);
    g_assert_cmpint(qemu_file_get_error(f), !=, 0);
    g_assert_cmpuint(st->capacity, ==, 64 * 1024);
    g_assert_cmpuint(st->used, <=, st->capacity);
    mc_staging_rewind(st);
    g_assert_false(st->overflow);
    qemu_fclose(f);
    object_unref(OBJECT(st));
}

/* A received checkpoint is read back through a QEMUFile, then EOF. */
static void test_read(void)
{
    MCStaging *st = mc_staging_new(4096, &error_abort);
    QEMUFile *f;
    uint8_t src[3000], dst[3000], extra;

    fill(src, sizeof(src), 3);
    memcpy(st->data, src, sizeof(src));
    mc_staging_set_readable(st, sizeof(src));
    f = qemu_file_new_input(QIO_CHANNEL(st));
    g_assert_cmpuint(qemu_get_buffer(f, dst, sizeof(dst)), ==, sizeof(dst));
    g_assert_cmpmem(dst, sizeof(dst), src, sizeof(src));
    g_assert_cmpint(qemu_file_get_error(f), ==, 0);
    /* reading past the checkpoint is an end of file, not stale data */
    g_assert_cmpuint(qemu_get_buffer(f, &extra, 1), ==, 0);
    g_assert_cmpint(qemu_file_get_error(f), !=, 0);
    qemu_fclose(f);
    object_unref(OBJECT(st));
}

static void test_alloc_failure(void)
{
    Error *err = NULL;

    g_assert_null(mc_staging_new(SIZE_MAX / 2, &err));
    g_assert_nonnull(err);
    error_free(err);
}

/* "Guest RAM" for the deferred copies: writes from here may wait */
static uint8_t *fake_ram;
static size_t fake_ram_len;

static bool in_fake_ram(const void *buf, size_t len)
{
    const uint8_t *p = buf;

    return p >= fake_ram && p + len <= fake_ram + fake_ram_len;
}

/*
 * Pages from "RAM" are copied at mc_staging_copy_pending, as they are
 * then, each to its place among the headers, which are copied at once
 * (their buffer is reused); alone and with 1, 2 and 4 threads, also
 * after the checkpoint moved (room hook) and with more pages than the
 * list holds.
 */
static void test_deferred_copy(void)
{
    const size_t page = 4096, npages = 600;
    unsigned threads[] = { 0, 1, 2, 4 };
    unsigned k;

    fake_ram_len = npages * page;
    fake_ram = g_malloc(fake_ram_len);
    for (k = 0; k < G_N_ELEMENTS(threads); k++) {
        MCStaging *st = mc_staging_new(8 << 20, &error_abort);
        QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));
        MCCopyPool *pool = threads[k] ? mc_copy_pool_new(threads[k]) : NULL;
        g_autofree uint8_t *want = g_malloc(npages * (page + 8));
        size_t i, off = 0;
        unsigned used;

        mc_staging_set_defer(st, in_fake_ram, page);
        fill(fake_ram, fake_ram_len, k);
        mc_staging_rewind_at(st, 4096, 8 << 20);
        for (i = 0; i < npages; i++) {
            uint64_t hdr = i * 3 + k;

            /* a header through QEMUFile's buffer, then the page itself */
            qemu_put_be64(f, hdr);
            stq_be_p(want + off, hdr);
            off += 8;
            qemu_put_buffer_async(f, fake_ram + i * page, page, false);
            off += page;
        }
        g_assert_cmpint(qemu_fflush(f), ==, 0);
        g_assert_cmpuint(st->used, ==, off);
        g_assert_cmpuint(st->npending, ==, npages);
        g_assert_cmpuint(st->pending_bytes, ==, npages * page);

        /* the guest "writes" before the copy: the checkpoint has it */
        fill(fake_ram, fake_ram_len, k + 100);
        off = 0;
        for (i = 0; i < npages; i++) {
            off += 8;
            memcpy(want + off, fake_ram + i * page, page);
            off += page;
        }
        /* and the checkpoint moves before its pages are copied */
        mc_staging_move(st, 0, 8 << 20);
        used = mc_staging_copy_pending(st, pool, 1 << 20);
        g_assert_cmpuint(used, ==, threads[k] ? threads[k] : 1);
        g_assert_cmpuint(st->npending, ==, 0);
        g_assert_cmpmem(st->data, off, want, off);
        g_assert_cmpuint(mc_staging_copy_pending(st, pool, 0), ==, 0);

        /* below parallel_min, the caller copies alone */
        mc_staging_rewind(st);
        qemu_put_buffer_async(f, fake_ram, page, false);
        g_assert_cmpint(qemu_fflush(f), ==, 0);
        g_assert_cmpuint(mc_staging_copy_pending(st, pool, 1 << 20), ==, 1);
        g_assert_cmpmem(st->data, page, fake_ram, page);

        mc_copy_pool_free(pool);
        qemu_fclose(f);
        object_unref(OBJECT(st));
    }

    /* a list too short: the rest is copied at once, nothing is lost */
    {
        MCStaging *st = mc_staging_new(16 * page, &error_abort);
        QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));

        mc_staging_set_defer(st, in_fake_ram, 4 * page);  /* 4 entries */
        fill(fake_ram, fake_ram_len, 7);
        for (k = 0; k < 10; k++) {
            qemu_put_buffer_async(f, fake_ram + 2 * k * page, page, false);
        }
        g_assert_cmpint(qemu_fflush(f), ==, 0);
        g_assert_cmpuint(st->npending, ==, 4);
        mc_staging_copy_pending(st, NULL, 0);
        for (k = 0; k < 10; k++) {
            g_assert_cmpmem(st->data + k * page, page,
                            fake_ram + 2 * k * page, page);
        }
        qemu_fclose(f);
        object_unref(OBJECT(st));
    }
    g_free(fake_ram);
}

/*
 * Device state written into staging is byte for byte what upstream's
 * element-by-element writes produce (patches/migration-faster-device-
 * save.patch puts byte arrays and big-endian integers as buffers, and
 * arrays of integers and of plain structs in one pass), and loads back.
 */
typedef struct DevQueue {
    uint16_t num;
    bool enabled;
    uint32_t desc[2];
    uint64_t addr;
} DevQueue;

#define DEV_PLAIN 100           /* 2000 bytes: more than one buffer */
#define DEV_HOOKED 3
#define DEV_WORDS 300

typedef struct DevState {
    uint8_t bytes[37];
    uint8_t one;
    uint16_t w;
    uint32_t l;
    uint64_t q;
    uint32_t words[DEV_WORDS];
    DevQueue plain[DEV_PLAIN];
    DevQueue hooked[DEV_HOOKED];
} DevState;

static const VMStateField dev_queue_fields[] = {
    VMSTATE_UINT16(num, DevQueue),
    VMSTATE_UNUSED(1),
    VMSTATE_BOOL(enabled, DevQueue),
    VMSTATE_UINT32_ARRAY(desc, DevQueue, 2),
    VMSTATE_UINT64(addr, DevQueue),
    VMSTATE_END_OF_LIST()
};

static const VMStateDescription vmstate_dev_queue = {
    .name = "mc-test-queue",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = dev_queue_fields,
};

static int dev_queue_pre_saves;

static int dev_queue_pre_save(void *opaque)
{
    dev_queue_pre_saves++;
    return 0;
}

/* a hook makes the struct not plain: each element is saved in full */
static const VMStateDescription vmstate_dev_queue_hooked = {
    .name = "mc-test-queue-hooked",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_save = dev_queue_pre_save,
    .fields = dev_queue_fields,
};

static const VMStateDescription vmstate_dev = {
    .name = "mc-test-dev",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT8_ARRAY(bytes, DevState, 37),
        VMSTATE_UINT8(one, DevState),
        VMSTATE_UINT16(w, DevState),
        VMSTATE_UINT32(l, DevState),
        VMSTATE_UINT64(q, DevState),
        VMSTATE_UINT32_ARRAY(words, DevState, DEV_WORDS),
        VMSTATE_STRUCT_ARRAY(plain, DevState, DEV_PLAIN, 1,
                             vmstate_dev_queue, DevQueue),
        VMSTATE_STRUCT_ARRAY(hooked, DevState, DEV_HOOKED, 1,
                             vmstate_dev_queue_hooked, DevQueue),
        VMSTATE_END_OF_LIST()
    },
};

static void test_device_state_bytes(void)
{
    MCStaging *st = mc_staging_new(1 << 20, &error_abort);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));
    g_autofree DevState *in = g_new0(DevState, 1);
    g_autofree DevState *out = g_new0(DevState, 1);
    size_t want_len = 37 + 1 + 2 + 4 + 8 + 4 * DEV_WORDS +
                      20 * (DEV_PLAIN + DEV_HOOKED);
    g_autofree uint8_t *want = g_malloc(want_len);
    uint8_t *p = want;
    QEMUFile *r;
    int i;

    in->one = 0xa5;
    in->w = 0x0102;
    in->l = 0x03040506;
    in->q = 0x0708090a0b0c0d0eULL;
    fill(in->bytes, sizeof(in->bytes), 9);
    for (i = 0; i < DEV_WORDS; i++) {
        in->words[i] = 0x10203000 + i;
    }
    for (i = 0; i < DEV_PLAIN + DEV_HOOKED; i++) {
        DevQueue *q = i < DEV_PLAIN ? &in->plain[i]
                                    : &in->hooked[i - DEV_PLAIN];

        *q = (DevQueue) { 0x4400 + i, i & 1, { 0xabcd0000 + i, 0x55 + i },
                          0x1122334455667700ULL + i };
    }

    memcpy(p, in->bytes, 37);
    p += 37;
    *p++ = 0xa5;
    stw_be_p(p, in->w);
    stl_be_p(p + 2, in->l);
    stq_be_p(p + 6, in->q);
    p += 14;
    for (i = 0; i < DEV_WORDS; i++, p += 4) {
        stl_be_p(p, in->words[i]);
    }
    for (i = 0; i < DEV_PLAIN + DEV_HOOKED; i++, p += 20) {
        DevQueue *q = i < DEV_PLAIN ? &in->plain[i]
                                    : &in->hooked[i - DEV_PLAIN];

        stw_be_p(p, q->num);
        p[2] = 0;               /* unused */
        p[3] = q->enabled;
        stl_be_p(p + 4, q->desc[0]);
        stl_be_p(p + 8, q->desc[1]);
        stq_be_p(p + 12, q->addr);
    }
    g_assert(p == want + want_len);

    /* a 2-byte write first: the fields straddle no alignment on purpose */
    qemu_put_be16(f, 0xbeef);
    dev_queue_pre_saves = 0;
    g_assert_cmpint(vmstate_save_state(f, &vmstate_dev, in, NULL), ==, 0);
    g_assert_cmpint(dev_queue_pre_saves, ==, DEV_HOOKED);
    /* and something after it: loading a struct peeks past its end */
    qemu_put_be16(f, 0xcafe);
    g_assert_cmpint(qemu_fflush(f), ==, 0);
    g_assert_cmpuint(st->used, ==, 2 + want_len + 2);
    g_assert_cmpuint(lduw_be_p(st->data), ==, 0xbeef);
    g_assert_cmpmem(st->data + 2, want_len, want, want_len);

    mc_staging_set_readable(st, st->used);
    r = qemu_file_new_input(QIO_CHANNEL(st));
    g_assert_cmpuint(qemu_get_be16(r), ==, 0xbeef);
    g_assert_cmpint(vmstate_load_state(r, &vmstate_dev, out, 1), ==, 0);
    g_assert_cmpmem(out, sizeof(*out), in, sizeof(*in));
    g_assert_cmpuint(qemu_get_be16(r), ==, 0xcafe);
    qemu_fclose(r);
    qemu_fclose(f);
    object_unref(OBJECT(st));
}

/*
 * The allocation counter (SPEC 3.6) counts what a thread allocates while
 * it asks to, GLib's allocations included, and nothing else.
 */
static void test_alloc_count(void)
{
    uint64_t n = 0;
    g_autofree char *a = NULL, *b = NULL, *c = NULL;

    if (!mc_alloc_countable()) {
        g_test_skip("allocations are not counted in this build");
        return;
    }
    a = g_malloc(10);
    mc_alloc_count_into(&n);
    b = g_malloc0(100);                 /* calloc */
    a = g_realloc(a, 1000);
    c = g_strdup("mc");
    g_free(g_new(int, 4));
    mc_alloc_count_into(NULL);
    g_assert_cmpuint(n, ==, 4);
    g_free(g_malloc(1));
    g_assert_cmpuint(n, ==, 4);
}

/*
 * Writing a checkpoint into staging, device state and deferred page
 * copies included, allocates nothing once the first one is written.
 */
static void test_no_alloc_steady(void)
{
    MCStaging *st = mc_staging_new(1 << 20, &error_abort);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(st));
    size_t page = 4096;
    g_autofree uint8_t *ram = g_malloc(64 * page);
    g_autofree DevState *dev = g_new0(DevState, 1);
    uint64_t n = 0;
    int round, i;

    if (!mc_alloc_countable()) {
        g_test_skip("allocations are not counted in this build");
        qemu_fclose(f);
        object_unref(OBJECT(st));
        return;
    }
    fake_ram = ram;
    fake_ram_len = 64 * page;
    mc_staging_set_defer(st, in_fake_ram, page);
    for (round = 0; round < 3; round++) {
        if (round == 1) {
            mc_alloc_count_into(&n);
        }
        mc_staging_rewind(st);
        for (i = 0; i < 64; i += 3) {
            qemu_put_be64(f, i);
            qemu_put_buffer_async(f, ram + i * page, page, false);
        }
        qemu_fflush(f);
        mc_staging_copy_pending(st, NULL, 0);
        g_assert_cmpint(vmstate_save_state(f, &vmstate_dev, dev, NULL),
                        ==, 0);
        g_assert_cmpint(qemu_fflush(f), ==, 0);
    }
    mc_alloc_count_into(NULL);
    g_assert_cmpuint(n, ==, 0);
    fake_ram = NULL;
    qemu_fclose(f);
    object_unref(OBJECT(st));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    module_call_init(MODULE_INIT_QOM);
    g_test_add_func("/mc/staging/write-rewind-reuse", test_write_rewind_reuse);
    g_test_add_func("/mc/staging/overflow", test_overflow);
    g_test_add_func("/mc/staging/window", test_window);
    g_test_add_func("/mc/staging/room", test_room);
    g_test_add_func("/mc/staging/read", test_read);
    g_test_add_func("/mc/staging/alloc-failure", test_alloc_failure);
    g_test_add_func("/mc/staging/deferred-copy", test_deferred_copy);
    g_test_add_func("/mc/alloc/count", test_alloc_count);
    g_test_add_func("/mc/alloc/none-in-steady-state", test_no_alloc_steady);
    g_test_add_func("/mc/staging/device-state-bytes",
                    test_device_state_bytes);
    return g_test_run();
}
