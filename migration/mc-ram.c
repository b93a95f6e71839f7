/*
 * Micro-checkpointing (MC): what needs target-specific RAM internals.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "exec/ram_addr.h"
#include "exec/ramblock.h"
#include "exec/memory.h"
#include "ram.h"
#include "mc.h"

/* Dirty-log words read by mc_dirty_estimate(); migration thread only */
static uint64_t mc_poll_words;

/*
 * Pages the guest dirtied since the last checkpoint, counted without
 * taking them out of the dirty log: checkpoints sync the log only with
 * the VM paused, so a poll costs no TLB reset and no bitmap copy while
 * the guest runs.  (Syncing here is how an upstream TCG bug showed up:
 * a sync reset the TLB only for pages new to the migration bitmap, so a
 * page dirtied again before it was sent stayed writable and its later
 * stores were missed; fixed in patches/migration-dirty-sync-tlb-reset.)
 * This reads the log, after fetching the accelerator's (KVM) into it.
 */
uint64_t mc_dirty_estimate(void)
{
    DirtyMemoryBlocks *blocks;
    uint64_t pages = 0;
    RAMBlock *rb;

    bql_lock();
    memory_global_dirty_log_sync(false);
    bql_unlock();

    WITH_RCU_READ_LOCK_GUARD() {
        blocks = qatomic_rcu_read(
            &ram_list.dirty_memory[DIRTY_MEMORY_MIGRATION]);
        RAMBLOCK_FOREACH_NOT_IGNORED(rb) {
            uint64_t page = rb->offset >> TARGET_PAGE_BITS;
            uint64_t end = page + (rb->used_length >> TARGET_PAGE_BITS);

            while (page < end) {
                unsigned long idx = page / DIRTY_MEMORY_BLOCK_SIZE;
                unsigned long off = page % DIRTY_MEMORY_BLOCK_SIZE;
                unsigned long n = MIN(end - page,
                                      DIRTY_MEMORY_BLOCK_SIZE - off);

                pages += bitmap_count_one_with_offset(blocks->blocks[idx],
                                                      off, n);
                mc_poll_words += BITS_TO_LONGS(n);
                page += n;
            }
        }
    }
    return pages;
}

/*
 * Dirty-bitmap words read since the last call: the checkpoint's harvest
 * and search (ram.c) and the estimates of its epoch.  Migration thread.
 */
uint64_t mc_bitmap_words_take(int64_t *harvest_us)
{
    uint64_t words = ram_mc_bitmap_words_take(harvest_us) + mc_poll_words;

    mc_poll_words = 0;
    return words;
}
