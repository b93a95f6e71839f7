/*
 * Micro-checkpointing (MC): the staging buffer.
 *
 * A checkpoint is first copied into this buffer while the VM is paused
 * (a local memory copy), and sent from it after the VM has resumed.  On
 * the standby a received checkpoint lands here and is verified before it
 * is applied.  The buffer is allocated once, when MC starts, and never
 * grows: a write that does not fit asks the owner for room (the primary
 * waits for checkpoints in flight) and otherwise fails; the MC loop
 * takes checkpoints early so that it rarely comes to that.  It is a
 * QIOChannel so that the ordinary migration code (QEMUFile, RAM and
 * device savers/loaders) reads and writes checkpoints without knowing
 * about MC.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_STAGING_H
#define QEMU_MIGRATION_MC_STAGING_H

#include "io/channel.h"
#include "qom/object.h"
#include "mc-copy.h"

#define TYPE_MC_STAGING "mc-staging-channel"
OBJECT_DECLARE_SIMPLE_TYPE(MCStaging, MC_STAGING)

/*
 * Called when a write of @len bytes does not fit in [base, limit): it may
 * make room (mc_staging_move) and return true to have the write tried
 * again, or return false to fail it.
 */
typedef bool MCStagingRoomFn(MCStaging *st, size_t len, void *opaque);

/*
 * May the write of @buf (@len bytes) be copied later, at
 * mc_staging_copy_pending()?  Only for memory that stays as it is until
 * then (guest RAM while the guest is paused), never for a caller's
 * buffer that is reused after the write (QEMUFile's own).
 */
typedef bool MCStagingDeferFn(const void *buf, size_t len);

struct MCStaging {
    QIOChannel parent;
    uint8_t *data;
    size_t capacity;    /* fixed at creation */
    size_t base;        /* where the current checkpoint starts */
    size_t limit;       /* and where it must end, at the latest */
    size_t used;        /* bytes of the current checkpoint */
    size_t offset;      /* read position */
    size_t high_water;  /* most bytes ever used: memory actually touched */
    bool overflow;      /* a write did not fit since the last rewind */
    MCStagingRoomFn *room_fn;
    void *room_opaque;
    /* Deferred copies, offsets from base (primary; mc-copy.h) */
    MCStagingDeferFn *defer_fn;
    MCCopy *pending;
    size_t npending, pending_max, pending_bytes;
};

/* Allocate a staging buffer of @capacity bytes; NULL with @errp if not. */
MCStaging *mc_staging_new(size_t capacity, Error **errp);

/* Start a new checkpoint: empty the buffer, clear the overflow flag. */
void mc_staging_rewind(MCStaging *st);

/*
 * Start a new checkpoint in [@base, @limit) of the buffer (the primary
 * keeps several checkpoints in flight, each in its own part).
 */
void mc_staging_rewind_at(MCStaging *st, size_t base, size_t limit);

/*
 * Move the current checkpoint, the @used bytes written so far, to the
 * part [@base, @limit) of the buffer (its old part must be free for
 * anything else).
 */
void mc_staging_move(MCStaging *st, size_t base, size_t limit);

/* Have @fn called when a write does not fit (see MCStagingRoomFn). */
void mc_staging_set_room_fn(MCStaging *st, MCStagingRoomFn *fn, void *opaque);

/*
 * Let writes that @fn accepts be recorded and copied later, by
 * mc_staging_copy_pending; at most as many as the buffer holds pages of
 * @page_size (the list is allocated here, once).
 */
void mc_staging_set_defer(MCStaging *st, MCStagingDeferFn *fn,
                          size_t page_size);

/*
 * Do the deferred copies of the current checkpoint, with @pool's
 * threads if there are at least @parallel_min bytes (or alone, @pool
 * NULL).  Returns the number of threads that copied: 0 if nothing was
 * pending.
 */
unsigned mc_staging_copy_pending(MCStaging *st, MCCopyPool *pool,
                                 size_t parallel_min);

/* Make the first @len bytes readable from the start (after a receive). */
void mc_staging_set_readable(MCStaging *st, size_t len);

#endif
