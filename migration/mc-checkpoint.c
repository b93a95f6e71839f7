/*
 * Micro-checkpointing (MC): taking one checkpoint, on the primary.
 *
 * mc_checkpoint_take(): the light pause (vCPUs and devices stopped, no
 * run-state change or event), the participants' barrier (output and
 * disk writes from here on belong to the next epoch), dirty RAM, disk
 * areas and the device state copied into the staging buffer, and the
 * guest let go.  A checkpoint that does not fit beside those in flight
 * waits for room with the guest paused (mc_primary_make_room).  A guest
 * that dirties faster than the standby takes checkpoints in is slowed
 * down (mc_primary_throttle, mc_primary_throttle_hold).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "exec/cpu-common.h"
#include "exec/target_page.h"
#include "migration/global_state.h"
#include "migration/mc-dirty-bound.h"
#include "system/cpus.h"
#include "system/cpu-timers.h"
#include "system/runstate.h"
#include "system/tcg.h"
#include "migration.h"
#include "migration-stats.h"
#include "options.h"
#include "qemu-file.h"
#include "savevm.h"
#include "mc-session.h"
#include "trace.h"

/*
 * The vCPU throttle comes down one step after this many checkpoints in
 * a row found room in the staging buffer.
 */
#define MC_THROTTLE_CALM        8
/* The longest the throttle holds the vCPUs after one checkpoint */
#define MC_THROTTLE_MAX_HOLD_US (1000 * 1000)
/*
 * Pages to copy from which the copy threads share the work: below it,
 * waking them costs about what they would save.
 */
#define MC_COPY_PARALLEL_MIN    (1 * MiB)

/*
 * A checkpoint's device state is being saved (BQL).  Its sections need
 * no file header (savevm.c); a cancel, which can come in while the pause
 * waits for the vCPUs, moves the migration state away from "mc" before
 * the checkpoint is done, so the state cannot tell.
 */
static bool mc_devices_saving;

bool mc_saving_devices(void)
{
    return mc_devices_saving;
}

/*
 * A page of guest RAM stays as it is until the end of the pause: its
 * copy into staging can wait for mc_staging_copy_pending, and be done
 * by several threads.  Anything else (QEMUFile's own buffer, reused
 * after each write) is copied at once.
 */
static bool mc_in_guest_ram(const void *buf, size_t len)
{
    ram_addr_t offset;

    RCU_READ_LOCK_GUARD();
    return qemu_ram_block_from_host((void *)buf, false, &offset) != NULL;
}

static void mc_pause_canary(void *opaque)
{
    MCSession *mc = opaque;

    mc->pause_canary_ran = true;
}

/* MC starts: defer page copies, start the copy threads, the canary. */
void mc_checkpoint_setup(MCSession *mc)
{
    mc_staging_set_defer(mc->staging, mc_in_guest_ram,
                         qemu_target_page_size());
    mc->copy_pool = mc_copy_pool_new(migrate_mc_copy_threads());
    mc->pause_canary = qemu_bh_new(mc_pause_canary, mc);
}

void mc_checkpoint_end(MCSession *mc)
{
    mc_copy_pool_free(mc->copy_pool);
    mc->copy_pool = NULL;
    g_clear_pointer(&mc->pause_canary, qemu_bh_delete);
}

/*
 * mc-copy-threads changed: new threads for the next checkpoint.
 * Migration thread, outside the pause.
 */
static void mc_checkpoint_copy_threads(MCSession *mc)
{
    unsigned want = migrate_mc_copy_threads();

    if (mc_copy_pool_threads(mc->copy_pool) != want) {
        mc_copy_pool_free(mc->copy_pool);
        mc->copy_pool = mc_copy_pool_new(want);
    }
}

/*
 * Whether the light pause tells the VM state-change handlers.  Under
 * TCG it does not: with the vCPUs stopped and the BQL held from the
 * output barrier to the end of the pause, and nothing polling the main
 * loop there (participants wait for I/O in their drain hook, before
 * the barrier), no device emulation can run, so there is nothing for
 * the handlers to stop.  Under KVM they also keep kvmclock and each
 * vCPU's TSC in step with a stop (the clock is sampled at the stop and
 * set back at the start; a saved TSC stays valid until a start): to
 * do without them MC would have to do that itself, so under KVM they
 * still run.  They come before the output barrier; those that wait
 * for a vCPU poll the main loop there, which is harmless to output
 * commit (the guest's output so far is this epoch's either way).
 */
static bool mc_pause_notifies(void)
{
    return !tcg_enabled();
}

/*
 * The light pause: the vCPUs stop, the virtual clock stops with them
 * (saved timers match the saved clock), nothing else.  No run-state
 * change anyone sees: the run state is finish-migrate only while the
 * BQL is held, from the handlers to the resume (device save code
 * checks the VM is not running), and no
 * event is sent.  No block flush, and (TCG) no VM state-change
 * handlers: see mc_pause_notifies().  The block layer is drained by
 * the disk participant.
 */
/* Whether every vCPU is still stopped, under the BQL */
static bool mc_vcpus_stopped(void)
{
    CPUState *cpu;

    CPU_FOREACH(cpu) {
        if (!cpu->stopped) {
            return false;
        }
    }
    return true;
}

static bool mc_guest_pause(void)
{
    for (;;) {
        if (!runstate_is_running()) {
            return false;
        }
        cpu_disable_ticks();
        pause_all_vcpus();
        /*
         * KVM: fetch the vCPUs' registers now, before the output
         * barrier.  Saving the CPUs would do it later, each with a
         * run_on_cpu() that drops the BQL while it waits, and the main
         * loop would run there: device emulation (a NIC's transmit)
         * after the barrier.  Fetched, they stay with QEMU (vcpu_dirty)
         * until each vCPU runs again.  Under TCG this does nothing.
         */
        cpu_synchronize_all_states();
        /*
         * KVM's handlers come before the run state changes: kvmclock's
         * waits for each vCPU (run_on_cpu) with the BQL dropped, and the
         * monitor runs there.  It must still see "running": a
         * query-status would read finish-migrate, a "stop" would be
         * swallowed (do_vm_stop does nothing to a VM that is not
         * running, and the resume would undo it) and a "cont" refused.
         * With the run state still running, a stop there is a real
         * stop: it runs the handlers itself and leaves the VM paused.
         */
        if (mc_pause_notifies() && runstate_is_running()) {
            vm_state_notify(false, RUN_STATE_FINISH_MIGRATE);
        }
        /*
         * Past this point the BQL is held until mc_guest_resume()
         * (patches/tcg-dirty-sync-stopped-vcpus).  Before it, the waits
         * above dropped it: a "stop" leaves the VM stopped; a "stop"
         * then a "cont" restarted the vCPUs, so pause them again (the
         * handlers are told again, as a stop after a cont would).
         */
        if (!runstate_is_running()) {
            return false;
        }
        if (mc_vcpus_stopped()) {
            runstate_set(RUN_STATE_FINISH_MIGRATE);
            return true;
        }
        trace_mc_checkpoint_pause_again();
    }
}

/*
 * End the pause.  With @hold_vcpus the VM runs again (run state, clock,
 * devices) but its vCPUs stay stopped: the throttle lets them go later
 * (mc_primary_throttle_hold).
 */
static void mc_guest_resume(bool hold_vcpus)
{
    cpu_enable_ticks();
    runstate_set(RUN_STATE_RUNNING);
    if (mc_pause_notifies()) {
        vm_state_notify(true, RUN_STATE_RUNNING);
    }
    if (!hold_vcpus) {
        resume_all_vcpus();
    }
}

/* The throttle held the vCPUs: let them go, unless the VM was stopped. */
void mc_guest_release_vcpus(MCSession *mc)
{
    if (!mc->vcpus_held) {
        return;
    }
    bql_lock();
    /* A "stop" or a reset while they were held stays in force */
    if (runstate_is_running()) {
        resume_all_vcpus();
    }
    bql_unlock();
    mc->vcpus_held = false;
}

/*
 * The checkpoint being taken does not fit beside those in flight: keep
 * the guest paused until the standby has acknowledged all of them, then
 * move what is written so far to the start of the buffer and go on.
 * The guest pauses longer, but stays protected.  Only a checkpoint
 * larger than the whole buffer fails (and the throttle is there to
 * keep the guest from dirtying that much in one epoch).
 *
 * Called from a staging write inside the pause: migration thread, BQL
 * held.  ACKs arrive on the rx thread, which needs no BQL; a standby
 * that stops answering is declared lost by the heartbeat thread, which
 * ends the wait.  migrate_cancel and mc-failover wait for the BQL.
 */
bool mc_primary_make_room(MCStaging *st, size_t len, void *opaque)
{
    MCSession *mc = opaque;
    int64_t start = mc_now_us();
    bool empty;

    if ((st->base == 0 && st->limit == st->capacity) ||
        len > st->capacity - st->used) {
        return false;
    }
    qemu_mutex_lock(&mc->lock);
    while (mc->ring_count && !mc->tx_stop &&
           (mc->state == MC_STATE_ACTIVE ||
            mc->state == MC_STATE_SWITCHOVER)) {
        qemu_cond_wait(&mc->cond, &mc->lock);
    }
    empty = !mc->ring_count;
    if (empty) {
        mc->stats.room_waits++;
    }
    qemu_mutex_unlock(&mc->lock);
    trace_mc_primary_room_wait(st->used, len, mc_now_us() - start, empty);
    if (!empty) {
        return false;
    }
    mc_staging_move(st, 0, st->capacity);
    mc->room_waited = true;
    return true;
}

/*
 * Slow the guest down while it dirties memory faster than the standby
 * takes checkpoints in, with auto-converge's parameters: a checkpoint
 * taken before there was room for it (mc_primary_wait_room), that
 * waited for room in the pause, or that filled more than three quarters
 * of the whole buffer raises the throttle; MC_THROTTLE_CALM checkpoints
 * in a row that did none of these lower it.  Taking checkpoints earlier
 * (mc_primary_wait_epoch) is the answer to a fast dirtying rate, and
 * keeps them near half the buffer; one much larger was taken late (the
 * migration thread waited for a CPU or the BQL while the guest ran), and
 * a little later still it would not have fitted at all, which ends MC.
 * Migration thread, after the pause.
 */
void mc_primary_throttle(MCSession *mc, size_t bytes)
{
    int pct = mc->throttle_pct, old = pct;
    size_t cap = mc->staging->capacity;

    if (mc->room_waited || mc->room_short || bytes > cap / 4 * 3) {
        pct = pct ? MIN(pct + migrate_cpu_throttle_increment(),
                        migrate_max_cpu_throttle()) :
                    migrate_cpu_throttle_initial();
        mc->throttle_calm = 0;
    } else if (pct && ++mc->throttle_calm >= MC_THROTTLE_CALM) {
        pct = MAX(pct - migrate_cpu_throttle_increment(), 0);
        mc->throttle_calm = 0;
    }
    mc->room_waited = mc->room_short = false;
    if (pct != old) {
        trace_mc_primary_throttle(old, pct, bytes);
    }
    mc->throttle_pct = pct;
    qemu_mutex_lock(&mc->lock);
    mc->stats.throttle_percentage = pct;
    mc->stats.throttle_max_percentage =
        MAX(mc->stats.throttle_max_percentage, pct);
    qemu_mutex_unlock(&mc->lock);
}

/*
 * The throttle itself.  Upstream's (cpu-throttle.c) puts each vCPU to
 * sleep in a work item, which ends as soon as the vCPU is asked to stop:
 * under MC that is every checkpoint, so it hardly slows the guest.
 * Instead the vCPUs stay stopped after the pause (mc_guest_resume) for
 * pct / (100 - pct) of the time they ran in the epoch, while the
 * checkpoint is already on its way; then they go on, unless the VM was
 * stopped meanwhile.  When MC is to stop, they are left to the end of
 * mc_primary_run (migrate_cancel may hold the BQL until MC has told the
 * standby).  Migration thread, no BQL.
 */
void mc_primary_throttle_hold(MCSession *mc, MigrationState *s,
                              int64_t ran_us)
{
    int64_t hold_us = MIN(ran_us * mc->throttle_pct /
                          (100 - mc->throttle_pct), MC_THROTTLE_MAX_HOLD_US);
    int64_t until = mc_now_us() + hold_us;
    bool stop;

    qemu_mutex_lock(&mc->lock);
    while (!(stop = mc_primary_should_stop(mc, s)) && mc_now_us() < until) {
        qemu_cond_timedwait(&mc->cond, &mc->lock,
                            MAX((until - mc_now_us()) / 1000, 1));
    }
    qemu_mutex_unlock(&mc->lock);
    trace_mc_primary_throttle_hold(mc->throttle_pct, ran_us, hold_us);
    if (!stop) {
        mc_guest_release_vcpus(mc);
    }
}

/*
 * Take checkpoint @epoch: pause the VM, copy its dirty RAM and its device
 * state into the staging buffer, resume it.  No network I/O happens while
 * the VM is paused.  Called with the BQL (the TCG dirty-log sync needs it).
 */
int mc_checkpoint_take(MCSession *mc, uint64_t epoch, size_t base,
                       size_t limit, Error **errp)
{
    size_t devices_at, copy_bytes;
    unsigned threads;
    int64_t copy_start, copy_us;
    bool running, polled;
    uint64_t pages = stat64_get(&mig_stats.normal_pages) +
                     stat64_get(&mig_stats.zero_pages);
    int64_t start = mc_now_us(), pause, paused_at, saved_at, devices_at_us;
    int64_t harvest_us;
    uint64_t allocs = 0, words;
    int ret;

    mc_alloc_count_into(&allocs);
    mc_checkpoint_copy_threads(mc);
    /*
     * The standby resumes the guest in the run state saved here (for a
     * switchover, before the guest was stopped for it).
     */
    if (!mc->switch_stop_us) {
        global_state_store();
    }
    mc_participants_pause();
    running = mc_guest_pause();
    /* Disks: in-flight requests complete, written areas are read back */
    mc_participants_drain();
    /*
     * What the guest does from now on belongs to the next checkpoint.
     * Nothing from here to the end of the device state may poll the
     * main loop: a bottom half run there (a NIC's transmit) would put
     * output of this checkpoint's state into the next epoch.
     */
    mc_participants_checkpoint(epoch);
    mc->pause_canary_ran = false;
    qemu_bh_schedule_idle(mc->pause_canary);
    paused_at = mc_now_us();

    mc_staging_rewind_at(mc->staging, base, limit);
    ram_mc_begin_checkpoint(mc->sfile);
    qemu_savevm_live_state(mc->sfile);
    /* The dirty rings were reaped into it, the vCPUs stopped */
    if (mc_dirty_bound_pages()) {
        mc_dirty_bound_harvested();
        qemu_mutex_lock(&mc->lock);
        mc->bound_hit = false;
        qemu_mutex_unlock(&mc->lock);
    }
    /* The page copies were only recorded: do them, still paused */
    qemu_fflush(mc->sfile);
    saved_at = copy_start = mc_now_us();
    copy_bytes = mc->staging->pending_bytes;
    threads = mc_staging_copy_pending(mc->staging, mc->copy_pool,
                                      MC_COPY_PARALLEL_MIN);
    copy_us = mc_now_us() - copy_start;
    trace_mc_checkpoint_copy(epoch, copy_bytes, threads, copy_us);
    devices_at = mc->staging->used;     /* from the checkpoint's start */
    mc_devices_saving = true;
    ret = qemu_save_device_state(mc->sfile);
    mc_devices_saving = false;
    /* The trailer: where the device state begins (see mc_checkpoint_apply) */
    qemu_put_be64(mc->sfile, devices_at);
    qemu_fflush(mc->sfile);
    /* device state is copied as written; this finds nothing, normally */
    mc_staging_copy_pending(mc->staging, NULL, 0);
    devices_at_us = mc_now_us();
    if (!ret) {
        ret = qemu_file_get_error(mc->sfile);
    }
    qemu_bh_cancel(mc->pause_canary);
    polled = mc->pause_canary_ran;
    if (polled) {
        warn_report_once("MC: checkpoint %" PRIu64 " polled the main loop "
                         "inside its pause, after its output barrier: "
                         "device emulation may have run there", epoch);
    }
    mc_participants_resume();
    mc->vcpus_held = running && mc->throttle_pct && !ret;
    mc->pause_start_us = start;
    if (running) {
        mc_guest_resume(mc->vcpus_held);
    }
    pause = mc_now_us() - start;

    pages = stat64_get(&mig_stats.normal_pages) +
            stat64_get(&mig_stats.zero_pages) - pages;
    words = mc_bitmap_words_take(&harvest_us);
    mc_alloc_count_into(NULL);
    qemu_mutex_lock(&mc->lock);
    mc->stats.allocations += allocs;
    mc->stats.allocations_last = allocs;
    mc->stats.bitmap_words_last = words;
    mc->stats.pause_polls += polled;
    mc->stats.checkpoints++;
    mc->stats.throttled_checkpoints += mc->throttle_pct > 0;
    mc->stats.pause_last_us = pause;
    mc->stats.pause_max_us = MAX(mc->stats.pause_max_us, pause);
    mc->pause_total_us += pause;
    mc->stats.pause_avg_us = mc->pause_total_us / mc->stats.checkpoints;
    mc->stats.dirty_pages_last = pages;
    mc->stats.dirty_pages_max = MAX(mc->stats.dirty_pages_max, pages);
    mc->stats.copy_last_us = copy_us;
    mc->stats.copy_threads_last = threads;
    mc->stats.copy_parallel_checkpoints += threads > 1;
    mc->stats.last_bytes = mc->staging->used;
    mc->stats.staging_high_water = mc->staging->high_water;
    qemu_mutex_unlock(&mc->lock);
    trace_mc_checkpoint_take(epoch, pages, mc->staging->used, pause);
    /* where the pause went: bench/run.py reads it */
    trace_mc_checkpoint_phases(epoch, paused_at - start, harvest_us,
                               saved_at - paused_at - harvest_us, copy_us,
                               devices_at_us - saved_at - copy_us,
                               start + pause - devices_at_us);
    trace_mc_checkpoint_cost(epoch, allocs, words);

    if (mc->staging->overflow) {
        error_setg(errp, "MC: checkpoint %" PRIu64 " does not fit in "
                   "mc-max-buffer-size (%zu bytes)", epoch,
                   mc->staging->capacity);
        return -ENOSPC;
    }
    if (ret) {
        error_setg_errno(errp, -ret, "MC: saving checkpoint %" PRIu64
                         " failed", epoch);
    }
    return ret;
}
