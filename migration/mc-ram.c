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
#include "migration/misc.h"
#include "ram.h"
#include "mc.h"

/* Dirty-log words read by mc_dirty_estimate(); migration thread only */
static uint64_t mc_poll_words;

/*
 * Dirty pages among bits @off..@off + @n - 1 of a dirty-log block,
 * reading only what its summary flags (ramlist.h), clearing nothing.
 */
static uint64_t mc_count_flagged(unsigned long *block, unsigned long off,
                                 unsigned long n)
{
    unsigned long *sum = dirty_memory_summary(block);
    unsigned long *top = dirty_memory_top(block);
    unsigned long first = BIT_WORD(off), last = BIT_WORD(off + n - 1);
    unsigned long s0 = BIT_WORD(first), s1 = BIT_WORD(last), t;
    uint64_t pages = 0;

    for (t = BIT_WORD(s0); t <= BIT_WORD(s1); t++) {
        unsigned long tops = qatomic_read(&top[t]) &
                             bitmap_word_range_mask(t, s0, s1);

        mc_poll_words++;
        while (tops) {
            unsigned long sw = t * BITS_PER_LONG + ctzl(tops);
            unsigned long flagged = qatomic_read(&sum[sw]) &
                                    bitmap_word_range_mask(sw, first, last);

            tops &= tops - 1;
            mc_poll_words++;
            while (flagged) {
                unsigned long w = sw * BITS_PER_LONG + ctzl(flagged);
                unsigned long bits = qatomic_read(&block[w]);

                flagged &= flagged - 1;
                mc_poll_words++;
                if (w == first) {
                    bits &= BITMAP_FIRST_WORD_MASK(off);
                }
                if (w == last) {
                    bits &= BITMAP_LAST_WORD_MASK(off + n);
                }
                pages += ctpopl(bits);
            }
        }
    }
    return pages;
}

/*
 * Pages the guest dirtied since the last checkpoint, counted without
 * taking them out of the dirty log: checkpoints sync the log only with
 * the VM paused, so a poll costs no TLB reset and no bitmap copy while
 * the guest runs.  (Syncing here is how an upstream TCG bug showed up:
 * a sync reset the TLB only for pages new to the migration bitmap, so a
 * page dirtied again before it was sent stayed writable and its later
 * stores were missed; fixed in patches/migration-dirty-sync-tlb-reset.)
 * This reads the log, after fetching the accelerator's (KVM) into it:
 * only the words its summary flags, so the cost follows the dirty set.
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

                pages += mc_count_flagged(blocks->blocks[idx], off, n);
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

/*
 * Bytes of RAM block @name an incoming page may land in, or -1 if the
 * RAM loader would refuse the block (unknown, or not migrated).
 */
int64_t mc_ram_block_size(const char *name)
{
    RAMBlock *rb;

    RCU_READ_LOCK_GUARD();
    rb = qemu_ram_block_by_name(name);
    if (!rb || !rb->host || migrate_ram_is_ignored(rb)) {
        return -1;
    }
    return rb->used_length;
}
