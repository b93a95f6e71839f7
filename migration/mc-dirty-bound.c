/*
 * Micro-checkpointing (MC): KVM's dirty ring as the hard bound on what
 * the vCPUs dirty between two checkpoints.
 *
 * With KVM's dirty ring each vCPU logs the pages it dirties in a ring
 * of its own; when the ring is full the vCPU leaves KVM_RUN
 * (KVM_EXIT_DIRTY_RING_FULL) and cannot run again until QEMU has
 * collected ("reaped") it.  So what the vCPUs dirtied since the last
 * checkpoint is at most what was reaped since plus what all the rings
 * hold.  MC keeps that sum within what the staging buffer takes: a reap
 * that could let the sum pass the bound is refused, and a vCPU whose
 * ring is then full asks for a checkpoint and waits for it, which
 * reaps every ring with the vCPUs stopped.  The polls of the dirty set
 * and the vCPU throttle (mc-primary.c) only estimate; this is what
 * holds when a burst outruns them.
 *
 * Not bounded here: pages written by device emulation (DMA), which KVM
 * does not log in the rings but QEMU in its bitmap, and disk writes;
 * the polls see those.  A memory slot removed while the guest runs has
 * its rings reaped at once, whatever the count (nothing may be lost):
 * the epoch may then pass the bound by one set of rings.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/thread.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "exec/target_page.h"
#include "hw/boards.h"
#include "hw/core/cpu.h"
#include "system/cpus.h"
#include "system/kvm.h"
#include "migration/mc-dirty-bound.h"
#include "trace.h"

/*
 * Share of the staging buffer that pages the vCPUs dirtied may fill;
 * the rest is for the device state, disk writes and device DMA.
 */
#define MC_BOUND_SHARE_PCT      75
/* What a page costs in a checkpoint beyond its data (its header) */
#define MC_BOUND_PAGE_HEADER    16

/*
 * limit, ring and rings change with the BQL held and are read
 * atomically; reaped is counted with the BQL held (every reap but a
 * slot's removal is decided under it: mc_dirty_bound_may_reap);
 * generation, stalls, full and opaque under bound.lock, which the
 * waiting vCPUs wait on.
 */
static struct {
    QemuMutex lock;
    QemuCond cond;
    uint64_t limit;         /* pages; 0: no bound */
    uint64_t ring;          /* pages one ring holds at most */
    uint64_t rings;         /* pages all the rings hold at most */
    uint64_t reaped;        /* pages reaped since the last harvest */
    uint64_t generation;    /* harvests */
    uint64_t stalls;
    MCDirtyBoundFull *full;
    void *opaque;
} bound;

static void __attribute__((constructor)) mc_dirty_bound_init(void)
{
    qemu_mutex_init(&bound.lock);
    qemu_cond_init(&bound.cond);
}

/* Pages the vCPUs may dirty in an epoch with a buffer of @capacity */
static uint64_t mc_bound_limit(size_t capacity)
{
    return (uint64_t)capacity / 100 * MC_BOUND_SHARE_PCT /
           (qemu_target_page_size() + MC_BOUND_PAGE_HEADER);
}

/*
 * Every vCPU the machine may have, hot-plugged ones too: each has a
 * ring.
 */
static uint64_t mc_bound_rings(void)
{
    MachineState *ms = MACHINE(qdev_get_machine());

    return (uint64_t)kvm_dirty_ring_size() * ms->smp.max_cpus;
}

bool mc_dirty_bound_check(size_t capacity, Error **errp)
{
    uint64_t rings, limit, need;

    if (!kvm_dirty_ring_enabled()) {
        return true;
    }
    rings = mc_bound_rings();
    limit = mc_bound_limit(capacity);
    if (rings <= limit) {
        return true;
    }
    /* the smallest buffer whose share holds every ring */
    need = DIV_ROUND_UP(rings * (qemu_target_page_size() +
                                 MC_BOUND_PAGE_HEADER),
                        MC_BOUND_SHARE_PCT) * 100;
    error_setg(errp, "Micro-checkpointing: KVM's dirty rings (%u entries "
               "for each of up to %u vCPUs) can hold %" PRIu64 " MiB of "
               "dirty pages, more than mc-max-buffer-size (%zu MiB) has "
               "room for; set mc-max-buffer-size to at least %" PRIu64
               " MiB or use a smaller dirty-ring-size",
               kvm_dirty_ring_size(),
               MACHINE(qdev_get_machine())->smp.max_cpus,
               rings * qemu_target_page_size() / MiB, capacity / MiB,
               DIV_ROUND_UP(need, MiB));
    return false;
}

bool mc_dirty_bound_start(size_t capacity, MCDirtyBoundFull *full,
                          void *opaque, Error **errp)
{
    if (!kvm_dirty_ring_enabled()) {
        return true;
    }
    if (!mc_dirty_bound_check(capacity, errp)) {
        return false;
    }
    qemu_mutex_lock(&bound.lock);
    bound.full = full;
    bound.opaque = opaque;
    bound.stalls = 0;
    qemu_mutex_unlock(&bound.lock);
    bound.ring = kvm_dirty_ring_size();
    qatomic_set(&bound.rings, mc_bound_rings());
    qatomic_set(&bound.reaped, 0);
    qatomic_set(&bound.limit, mc_bound_limit(capacity));
    trace_mc_dirty_bound_start(bound.limit, bound.ring, bound.rings);
    return true;
}

/* Let every waiting vCPU look again; bound.lock held */
static void mc_bound_wake(void)
{
    bound.generation++;
    qemu_cond_broadcast(&bound.cond);
}

void mc_dirty_bound_harvested(void)
{
    if (!qatomic_read(&bound.limit)) {
        return;
    }
    trace_mc_dirty_bound_harvested(qatomic_read(&bound.reaped));
    qatomic_set(&bound.reaped, 0);
    qemu_mutex_lock(&bound.lock);
    mc_bound_wake();
    qemu_mutex_unlock(&bound.lock);
}

void mc_dirty_bound_stop(void)
{
    qatomic_set(&bound.limit, 0);
    qemu_mutex_lock(&bound.lock);
    bound.full = NULL;
    bound.opaque = NULL;
    mc_bound_wake();
    qemu_mutex_unlock(&bound.lock);
}

uint64_t mc_dirty_bound_pages(void)
{
    return qatomic_read(&bound.limit);
}

uint64_t mc_dirty_bound_stalls(void)
{
    return qatomic_read(&bound.stalls);
}

bool mc_dirty_bound_may_reap(CPUState *cpu)
{
    uint64_t limit = qatomic_read(&bound.limit);

    /*
     * After this reap the rings may fill again: what was reaped, plus
     * what this reap takes, plus every ring full.
     */
    return !limit ||
           qatomic_read(&bound.reaped) + (cpu ? bound.ring : bound.rings) +
           bound.rings <= limit;
}

void mc_dirty_bound_reaped(uint64_t pages)
{
    if (qatomic_read(&bound.limit)) {
        qatomic_set(&bound.reaped, qatomic_read(&bound.reaped) + pages);
    }
}

/* Whether @cpu must go back to its thread's loop (stop, kick, work) */
static bool mc_bound_must_leave(CPUState *cpu)
{
    return qatomic_read(&cpu->stop) || qatomic_read(&cpu->exit_request) ||
           !cpu_work_list_empty(cpu);
}

bool mc_dirty_bound_wait(CPUState *cpu)
{
    int64_t start = get_clock();
    uint64_t generation;
    bool leave = false;

    qemu_mutex_lock(&bound.lock);
    generation = bound.generation;
    qatomic_set(&bound.stalls, bound.stalls + 1);
    trace_mc_dirty_bound_wait(cpu->cpu_index, qatomic_read(&bound.reaped));
    /*
     * Under bound.lock: mc_dirty_bound_stop() clears the callback before
     * the session it belongs to goes away.
     */
    if (bound.full) {
        bound.full(bound.opaque);
    }
    while (qatomic_read(&bound.limit) && generation == bound.generation) {
        leave = mc_bound_must_leave(cpu);
        if (leave) {
            break;
        }
        /*
         * A stop request (the checkpoint's pause) comes as a signal and
         * cpu->stop, not through this condition: look every millisecond.
         */
        qemu_cond_timedwait(&bound.cond, &bound.lock, 1);
    }
    qemu_mutex_unlock(&bound.lock);
    trace_mc_dirty_bound_waited(cpu->cpu_index, leave,
                                (get_clock() - start) / 1000);
    return leave;
}
