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

/*
 * Pages the guest dirtied since the last checkpoint, counted without
 * taking them out of the dirty log.  Syncing the migration bitmap while
 * the VM runs (as precopy does) would take them out, and under TCG that
 * races with a vCPU in notdirty_write(): between its "page still clean?"
 * test and tlb_set_dirty(), a sync can clear the page's dirty bit and
 * reset its TLB entry, which tlb_set_dirty() then makes writable again;
 * the page's later writes are logged nowhere and missed by every
 * checkpoint (seen as a standby whose RAM differed from the primary's in
 * a page or two after seconds of MC, and guests that crashed after
 * failover).  Checkpoints therefore sync only with the VM paused; this
 * reads the log, after fetching the accelerator's (KVM) into it.
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
                page += n;
            }
        }
    }
    return pages;
}
