/*
 * Micro-checkpointing (MC): the staging buffer, a fixed-size QIOChannel.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/iov.h"
#include "qemu/module.h"
#include "mc-staging.h"
#include "trace.h"

MCStaging *mc_staging_new(size_t capacity, Error **errp)
{
    MCStaging *st;
    /*
     * Large allocations come from mmap: pages are committed only when a
     * checkpoint first reaches them, so memory use follows the largest
     * checkpoint so far, bounded by @capacity.
     */
    uint8_t *data = g_try_malloc(capacity);

    if (!data) {
        error_setg(errp, "MC: cannot allocate a %zu-byte staging buffer",
                   capacity);
        return NULL;
    }
    st = MC_STAGING(object_new(TYPE_MC_STAGING));
    st->data = data;
    st->capacity = capacity;
    st->limit = capacity;
    trace_mc_staging_new(capacity);
    return st;
}

void mc_staging_rewind_at(MCStaging *st, size_t base, size_t limit)
{
    assert(base <= limit && limit <= st->capacity);
    st->base = base;
    st->limit = limit;
    st->used = 0;
    st->offset = 0;
    st->overflow = false;
    /* a checkpoint that failed half-way leaves copies nobody will do */
    st->npending = 0;
    st->pending_bytes = 0;
}

void mc_staging_move(MCStaging *st, size_t base, size_t limit)
{
    assert(base <= limit && limit <= st->capacity);
    assert(st->used <= limit - base);
    memmove(st->data + base, st->data + st->base, st->used);
    st->base = base;
    st->limit = limit;
    st->high_water = MAX(st->high_water, st->base + st->used);
}

void mc_staging_set_room_fn(MCStaging *st, MCStagingRoomFn *fn, void *opaque)
{
    st->room_fn = fn;
    st->room_opaque = opaque;
}

void mc_staging_set_defer(MCStaging *st, MCStagingDeferFn *fn,
                          size_t page_size)
{
    st->defer_fn = fn;
    st->pending_max = st->capacity / page_size;
    st->pending = g_renew(MCCopy, st->pending, st->pending_max);
    st->npending = 0;
    st->pending_bytes = 0;
}

unsigned mc_staging_copy_pending(MCStaging *st, MCCopyPool *pool,
                                 size_t parallel_min)
{
    uint8_t *dst = st->data + st->base;
    unsigned threads = 1;
    size_t i;

    if (!st->npending) {
        return 0;
    }
    if (pool && mc_copy_pool_threads(pool) > 1 &&
        st->pending_bytes >= parallel_min) {
        mc_copy_pool_run(pool, dst, st->pending, st->npending,
                         st->pending_bytes);
        threads = mc_copy_pool_threads(pool);
    } else {
        for (i = 0; i < st->npending; i++) {
            memcpy(dst + st->pending[i].dst_off, st->pending[i].src,
                   st->pending[i].len);
        }
    }
    st->npending = 0;
    st->pending_bytes = 0;
    return threads;
}

void mc_staging_rewind(MCStaging *st)
{
    mc_staging_rewind_at(st, 0, st->capacity);
}

void mc_staging_set_readable(MCStaging *st, size_t len)
{
    assert(len <= st->capacity);
    st->base = 0;
    st->limit = st->capacity;
    st->used = len;
    st->offset = 0;
    st->overflow = false;
    st->high_water = MAX(st->high_water, len);
}

static ssize_t mc_staging_writev(QIOChannel *ioc, const struct iovec *iov,
                                 size_t niov, int *fds, size_t nfds,
                                 int flags, Error **errp)
{
    MCStaging *st = MC_STAGING(ioc);
    size_t len = iov_size(iov, niov);
    size_t i;

    while (len > st->limit - st->base - st->used) {
        if (st->room_fn && st->room_fn(st, len, st->room_opaque)) {
            continue;
        }
        /* Never grow: the caller must take a smaller checkpoint instead. */
        st->overflow = true;
        trace_mc_staging_overflow(st->used, len, st->limit - st->base);
        error_setg_errno(errp, ENOSPC, "MC: checkpoint does not fit in the "
                         "%zu bytes free in the staging buffer",
                         st->limit - st->base);
        return -1;
    }
    for (i = 0; i < niov; i++) {
        size_t n = iov[i].iov_len;

        if (st->defer_fn && st->npending < st->pending_max && n &&
            st->defer_fn(iov[i].iov_base, n)) {
            /* the same place in the checkpoint, filled in later */
            st->pending[st->npending++] = (MCCopy) {
                .src = iov[i].iov_base, .dst_off = st->used, .len = n,
            };
            st->pending_bytes += n;
        } else {
            memcpy(st->data + st->base + st->used, iov[i].iov_base, n);
        }
        st->used += n;
    }
    st->high_water = MAX(st->high_water, st->base + st->used);
    return len;
}

static ssize_t mc_staging_readv(QIOChannel *ioc, const struct iovec *iov,
                                size_t niov, int **fds, size_t *nfds,
                                int flags, Error **errp)
{
    MCStaging *st = MC_STAGING(ioc);
    size_t len = MIN(iov_size(iov, niov), st->used - st->offset);

    iov_from_buf(iov, niov, 0, st->data + st->base + st->offset, len);
    st->offset += len;
    return len;     /* 0 at the end of the checkpoint: end of file */
}

static int mc_staging_set_blocking(QIOChannel *ioc, bool enabled,
                                   Error **errp)
{
    return 0;       /* memory never blocks */
}

static int mc_staging_close(QIOChannel *ioc, Error **errp)
{
    return 0;
}

static void mc_staging_finalize(Object *obj)
{
    MCStaging *st = MC_STAGING(obj);

    g_free(st->data);
    st->data = NULL;
    g_free(st->pending);
    st->pending = NULL;
}

static void mc_staging_class_init(ObjectClass *klass, void *data)
{
    QIOChannelClass *ioc_klass = QIO_CHANNEL_CLASS(klass);

    ioc_klass->io_writev = mc_staging_writev;
    ioc_klass->io_readv = mc_staging_readv;
    ioc_klass->io_set_blocking = mc_staging_set_blocking;
    ioc_klass->io_close = mc_staging_close;
}

static const TypeInfo mc_staging_info = {
    .parent = TYPE_QIO_CHANNEL,
    .name = TYPE_MC_STAGING,
    .instance_size = sizeof(MCStaging),
    .instance_finalize = mc_staging_finalize,
    .class_init = mc_staging_class_init,
};

static void mc_staging_register_types(void)
{
    type_register_static(&mc_staging_info);
}

type_init(mc_staging_register_types);
