/*
 * Micro-checkpointing (MC): KVM's dirty ring as the hard bound on what
 * the vCPUs dirty between two checkpoints (migration/mc-dirty-bound.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_MC_DIRTY_BOUND_H
#define MIGRATION_MC_DIRTY_BOUND_H

/* Asks for a checkpoint; from a vCPU thread, without the BQL. */
typedef void MCDirtyBoundFull(void *opaque);

/*
 * MC's side, BQL held (stop: any thread).  Check: false, with @errp
 * set, if the rings alone could outgrow a staging buffer of @capacity
 * bytes.  Start: bound what the vCPUs dirty from now on to what fits
 * in @capacity (nothing to do without the dirty ring).  Harvested: the
 * rings were reaped with every vCPU stopped, for the checkpoint: count
 * again from zero and let waiting vCPUs go.  Stop: no bound; waiting
 * vCPUs go.
 */
bool mc_dirty_bound_check(size_t capacity, Error **errp);
bool mc_dirty_bound_start(size_t capacity, MCDirtyBoundFull *full,
                          void *opaque, Error **errp);
void mc_dirty_bound_harvested(void);
void mc_dirty_bound_stop(void);
/* The bound in pages (0: none), and how often a vCPU waited at it */
uint64_t mc_dirty_bound_pages(void);
uint64_t mc_dirty_bound_stalls(void);

/*
 * KVM's side (accel/kvm/kvm-all.c).  May reap: whether the ring of
 * @cpu (NULL: every ring) may be collected now without the epoch
 * possibly outgrowing the bound; BQL held.  Reaped: @pages were
 * collected from the rings.  Wait: @cpu's ring is full and may not be
 * reaped; it asks for a checkpoint and waits for the harvest, without
 * the BQL.  True if it must leave KVM_RUN's loop instead (a stop, a
 * kick or queued work).
 */
bool mc_dirty_bound_may_reap(CPUState *cpu);
void mc_dirty_bound_reaped(uint64_t pages);
bool mc_dirty_bound_wait(CPUState *cpu);

#endif
