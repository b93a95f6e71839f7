/*
 * Micro-checkpointing (MC): copying a checkpoint's pages with threads.
 *
 * While the guest is paused, the pages of a checkpoint are not copied
 * into the staging buffer one write at a time: the staging buffer
 * records where each one goes (an MCCopy) and copies them all at the end
 * of the RAM part (mc_staging_copy_pending), split among the
 * mc-copy-threads threads of an MCCopyPool when there is enough to copy.
 * The guest's vCPUs are stopped then: their host CPUs are free.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_COPY_H
#define QEMU_MIGRATION_MC_COPY_H

/* One deferred copy: @len bytes from @src to @dst_off in the checkpoint */
typedef struct MCCopy {
    const void *src;
    size_t dst_off;
    size_t len;
} MCCopy;

typedef struct MCCopyPool MCCopyPool;

/* A pool that copies with @threads threads, the caller's included. */
MCCopyPool *mc_copy_pool_new(unsigned threads);
void mc_copy_pool_free(MCCopyPool *pool);
unsigned mc_copy_pool_threads(MCCopyPool *pool);

/*
 * Do the @n copies of @list into @dst (the checkpoint's start), @bytes
 * in all, split by bytes among the pool's threads; returns once all are
 * done.  Not reentrant: one caller (the migration thread).
 */
void mc_copy_pool_run(MCCopyPool *pool, uint8_t *dst, const MCCopy *list,
                      size_t n, size_t bytes);

#endif
