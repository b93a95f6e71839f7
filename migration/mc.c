/*
 * Micro-checkpointing (MC): the checkpoint loop, the standby, failover.
 *
 * Primary (source), on the migration thread once precopy has brought the
 * standby up to date (migration_iteration_finish, state "mc"):
 *   mc_checkpoint_take()   VM paused: dirty RAM + devices -> staging buffer
 *   mc_primary_tx_thread() VM running: staging -> standby, in order, without
 *                          waiting for ACKs: up to MC_RING_SLOTS checkpoints
 *                          are in flight, each in its part of the staging
 *                          buffer until the standby acknowledges it
 * Standby (destination), on the "mc-rx" thread:
 *   mc_checkpoint_receive() whole checkpoint -> staging, verified, ACKed
 *   mc_checkpoint_apply()   staging -> guest RAM and disks, BQL held; the
 *                           device state is kept and loaded once, when
 *                           the standby leaves MC (mc_standby_load_devices)
 * Both sides run an "mc-hb" thread that sends heartbeats and declares the
 * peer lost when it goes silent; what a side then does is mc_peer_lost()
 * and the failover policy (mc-failover-policy).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qemu/coroutine.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-mc.h"
#include "qapi/qapi-commands-migration.h"
#include "qapi/qapi-events-mc.h"
#include "qobject/qdict.h"
#include "exec/target_page.h"
#include "io/channel.h"
#include "migration/global_state.h"
#include "migration/misc.h"
#include "monitor/monitor.h"
#include "monitor/hmp.h"
#include "system/cpus.h"
#include "system/cpu-throttle.h"
#include "system/cpu-timers.h"
#include "system/runstate.h"
#include "system/system.h"
#include "migration.h"
#include "migration-stats.h"
#include "options.h"
#include "qemu-file.h"
#include "savevm.h"
#include "mc.h"
#include "mc-staging.h"
#include "mc-wire.h"
#include "trace.h"

/* How many times the primary resends a checkpoint the standby refused. */
#define MC_MAX_RESENDS          3
/* How long the primary waits for the standby to load the initial state. */
#define MC_READY_TIMEOUT_MS     60000
/* How long migrate_cancel waits for the standby to be told */
#define MC_CANCEL_WAIT_MS       1000
/* Receive a checkpoint in pieces, so a long one still counts as traffic. */
#define MC_RECV_CHUNK           (1 * MiB)

/*
 * Checkpoints in flight.  The staging buffer is used as a ring: each
 * checkpoint is one contiguous part of it, in epoch order, freed when
 * the standby acknowledges it.
 */
#define MC_RING_SLOTS           8
/*
 * At most this many checkpoints on the wire beyond the last ACK.  A
 * standby that stops reading (stopped, or a broken link) must not find
 * the socket full of checkpoints: STOP has to fit behind them, or the
 * primary closes the channel and the standby, once it runs again,
 * takes the close for a dead primary (test_net_cancel_releases).
 */
#define MC_SEND_AHEAD           2

/*
 * The vCPU throttle comes down one step after this many checkpoints in
 * a row found room in the staging buffer.
 */
#define MC_THROTTLE_CALM        8
/* The longest the throttle holds the vCPUs after one checkpoint */
#define MC_THROTTLE_MAX_HOLD_US (1000 * 1000)
/* How often a primary waiting for room looks at the dirty set again */
#define MC_ROOM_POLL_US         5000

typedef struct MCSlot {
    uint64_t epoch;
    size_t offset, len;         /* in the staging buffer */
    int64_t pause_end_us;       /* for the transfer time */
    unsigned resends;
} MCSlot;

typedef struct MCSession {
    MCRole role;
    QIOChannel *ioc;
    MCStaging *staging;
    QEMUFile *sfile;            /* primary: output, standby: input */

    QemuThread rx_thread;
    QemuThread hb_thread;
    QemuThread tx_thread;       /* primary */
    bool rx_started, hb_started, tx_started;
    QemuSemaphore hb_sem;       /* posted to stop the heartbeat thread */
    QemuMutex send_lock;        /* one message at a time on the wire */

    /* Protected by lock; cond wakes the primary loop */
    QemuMutex lock;
    QemuCond cond;
    bool ready;                 /* standby loaded the initial state */
    uint64_t acked_epoch;
    /* Primary: checkpoints taken and not yet acknowledged, oldest first */
    MCSlot ring[MC_RING_SLOTS];
    unsigned ring_first, ring_count;
    uint64_t taken_epoch;       /* the newest checkpoint in the ring */
    uint64_t send_next;         /* the next one the tx thread sends */
    uint64_t resend_from;       /* 0, or go back to this one (refused) */
    bool tx_busy;               /* the tx thread is sending */
    bool tx_stop;               /* the tx thread must end */
    bool lost;                  /* the peer is gone, for loss_reason */
    MCLossReason loss_reason;   /* the first detection wins */
    bool stop_received;         /* standby: primary said leave MC */
    bool failover_requested;    /* mc-failover */
    bool cancel_requested;      /* primary: migrate_cancel */
    bool stop_told;             /* primary: STOP handed to the socket */
    bool finished;              /* standby: rx thread is done */

    int64_t last_rx_us;         /* atomic */
    int64_t last_tx_us;         /* atomic */

    /* Standby */
    int outcome;                /* MC_OUTCOME_*, once finished */
    MigrationIncomingState *mis;
    Coroutine *co;
    uint64_t applied_epoch;
    /* The device state of the last applied checkpoint, not yet loaded */
    MCStaging *devices;         /* rx thread, then the main loop once done */
    bool devices_pending;

    MCInfo stats;               /* protected by lock */
    uint64_t pause_total_us, transfer_total_us;

    /* Primary, migration thread only */
    bool room_waited;           /* this checkpoint waited for ACKs */
    bool room_short;            /* it was taken before there was room */
    int throttle_pct;           /* vCPU throttle, 0 to 99 */
    double dirty_rate;          /* bytes per us of guest run, lately */
    bool last_early;            /* the last checkpoint was taken early */
    int64_t pause_start_us;     /* of the last checkpoint */
    int64_t run_start_us;       /* when the vCPUs last went on */
    unsigned throttle_calm;     /* checkpoints in a row that found room */
    bool vcpus_held;            /* the last pause left the vCPUs stopped */
} MCSession;

static MCSession *mc_current;
static MCInfo *mc_last_stats;   /* kept for query-migrate after MC ends */

enum {
    MC_OUTCOME_NONE,
    MC_OUTCOME_FAILOVER,        /* resume the guest here */
    MC_OUTCOME_STOP,            /* stay stopped */
    MC_OUTCOME_WAIT,            /* wait for mc-failover */
};

enum {
    MC_NACK_CORRUPT = 1,
    MC_NACK_ORDER = 2,
    MC_NACK_APPLY_FAILED = 3,
};

enum {
    MC_STOP_CANCEL = 1,         /* migrate_cancel, or QEMU is quitting */
    MC_STOP_DROPPED = 2,        /* the primary runs on without the standby */
};

static int64_t mc_now_us(void)
{
    return qemu_clock_get_us(QEMU_CLOCK_REALTIME);
}

static MCSession *mc_session_new(MCRole role, QIOChannel *ioc, Error **errp)
{
    MCSession *mc;
    MCStaging *st = mc_staging_new(migrate_mc_max_buffer_size(), errp);

    if (!st) {
        return NULL;
    }
    mc = g_new0(MCSession, 1);
    mc->role = role;
    mc->ioc = ioc;
    object_ref(OBJECT(ioc));
    mc->staging = st;
    mc->sfile = role == MC_ROLE_PRIMARY ?
        qemu_file_new_output(QIO_CHANNEL(st)) :
        qemu_file_new_input(QIO_CHANNEL(st));
    qemu_sem_init(&mc->hb_sem, 0);
    qemu_mutex_init(&mc->send_lock);
    qemu_mutex_init(&mc->lock);
    qemu_cond_init(&mc->cond);
    mc->last_rx_us = mc->last_tx_us = mc_now_us();
    mc->stats.role = role;
    mc->stats.staging_size = st->capacity;
    return mc;
}

/* Keep the statistics for query-migrate, then free the session. */
static void mc_session_free(MCSession *mc)
{
    MCInfo *info = g_new(MCInfo, 1);

    qemu_mutex_lock(&mc->lock);
    *info = mc->stats;
    info->staging_high_water = mc->staging->high_water;
    qemu_mutex_unlock(&mc->lock);
    mc_participants_fill_info(info, mc->role == MC_ROLE_PRIMARY);
    g_free(mc_last_stats);
    mc_last_stats = info;

    qemu_fclose(mc->sfile);     /* drops its reference to the staging */
    if (mc->devices) {
        object_unref(OBJECT(mc->devices));
    }
    object_unref(OBJECT(mc->ioc));
    qemu_sem_destroy(&mc->hb_sem);
    qemu_mutex_destroy(&mc->send_lock);
    qemu_mutex_destroy(&mc->lock);
    qemu_cond_destroy(&mc->cond);
    g_free(mc);
}

static int mc_send(MCSession *mc, MCMsgType type, uint32_t flags,
                   uint64_t epoch, const struct iovec *iov, size_t niov,
                   Error **errp)
{
    int ret;

    qemu_mutex_lock(&mc->send_lock);
    ret = mc_wire_send(mc->ioc, type, flags, epoch, iov, niov, errp);
    qemu_mutex_unlock(&mc->send_lock);
    if (ret == 0) {
        qatomic_set(&mc->last_tx_us, mc_now_us());
    }
    return ret;
}

/*
 * Record that the peer is lost.  Only the first detection counts: in
 * particular a reset seen after a heartbeat timeout proves nothing about
 * the peer (the link may have healed and the peer's host answered for a
 * socket the peer had already given up), so it cannot upgrade a timeout
 * into a "peer-closed" that the safe policy would act on.  The channel
 * is shut down so that every thread blocked on it returns.
 */
static void mc_peer_lost(MCSession *mc, MCLossReason reason)
{
    bool first;

    qemu_mutex_lock(&mc->lock);
    first = !mc->lost;
    if (first) {
        mc->lost = true;
        mc->loss_reason = reason;
    }
    qemu_cond_broadcast(&mc->cond);
    qemu_mutex_unlock(&mc->lock);
    if (first) {
        trace_mc_peer_lost(MCRole_str(mc->role), MCLossReason_str(reason));
        qio_channel_shutdown(mc->ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
    }
}

/* Heartbeats both ways, and the watchdog that notices a silent peer. */
static void *mc_hb_thread(void *opaque)
{
    MCSession *mc = opaque;

    rcu_register_thread();
    for (;;) {
        int64_t timeout_us = migrate_mc_heartbeat_timeout() * 1000LL;
        int64_t now;

        if (qemu_sem_timedwait(&mc->hb_sem, MAX(timeout_us / 4000, 1)) == 0) {
            break;
        }
        now = mc_now_us();
        if (now - qatomic_read(&mc->last_rx_us) > timeout_us) {
            mc_peer_lost(mc, MC_LOSS_REASON_HEARTBEAT_TIMEOUT);
            break;
        }
        /* A sender busy with a checkpoint is traffic enough: don't queue. */
        if (now - qatomic_read(&mc->last_tx_us) >= timeout_us / 4 &&
            qemu_mutex_trylock(&mc->send_lock) == 0) {
            int ret = mc_wire_send(mc->ioc, mc->role == MC_ROLE_PRIMARY ?
                                   MC_MSG_HEARTBEAT : MC_MSG_STANDBY_HEARTBEAT,
                                   0, 0, NULL, 0, NULL);
            qemu_mutex_unlock(&mc->send_lock);
            if (ret == 0) {
                qatomic_set(&mc->last_tx_us, mc_now_us());
            }
        }
    }
    rcu_unregister_thread();
    return NULL;
}

static void mc_threads_stop(MCSession *mc)
{
    qio_channel_shutdown(mc->ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
    if (mc->tx_started) {
        qemu_mutex_lock(&mc->lock);
        mc->tx_stop = true;
        qemu_cond_broadcast(&mc->cond);
        qemu_mutex_unlock(&mc->lock);
        qemu_thread_join(&mc->tx_thread);
        mc->tx_started = false;
    }
    if (mc->hb_started) {
        qemu_sem_post(&mc->hb_sem);
        qemu_thread_join(&mc->hb_thread);
        mc->hb_started = false;
    }
    if (mc->rx_started) {
        qemu_thread_join(&mc->rx_thread);
        mc->rx_started = false;
    }
}

/*
 * Receive the next message header.  On failure the peer is declared lost
 * (a nonsense header is a protocol error; an end of stream, a reset or an
 * I/O error mean the link closed) and false is returned.
 */
static bool mc_recv_header(MCSession *mc, uint64_t max_len, MCWireHeader *h)
{
    Error *err = NULL;
    int ret = mc_wire_recv_header(mc->ioc, max_len, h, &err);

    if (ret > 0) {
        qatomic_set(&mc->last_rx_us, mc_now_us());
        return true;
    }
    if (ret == MC_WIRE_BAD_HEADER) {
        error_report_err(err);
        mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
    } else {
        error_free(err);
        mc_peer_lost(mc, MC_LOSS_REASON_PEER_CLOSED);
    }
    return false;
}

/*
 * Primary
 */

/* The slot of checkpoint @epoch, or NULL if not in flight.  mc->lock. */
static MCSlot *mc_ring_find(MCSession *mc, uint64_t epoch)
{
    unsigned i;

    for (i = 0; i < mc->ring_count; i++) {
        MCSlot *sl = &mc->ring[(mc->ring_first + i) % MC_RING_SLOTS];

        if (sl->epoch == epoch) {
            return sl;
        }
    }
    return NULL;
}

/*
 * The standby acknowledged every checkpoint up to @epoch (it applies
 * them in order): free their parts of the staging buffer.  mc->lock.
 */
static void mc_ring_acked(MCSession *mc, uint64_t epoch)
{
    int64_t now = mc_now_us();

    while (mc->ring_count && mc->ring[mc->ring_first].epoch <= epoch) {
        MCSlot *sl = &mc->ring[mc->ring_first];
        int64_t transfer = now - sl->pause_end_us;

        mc->stats.acked++;
        mc->stats.bytes += sl->len;
        mc->stats.transfer_last_us = transfer;
        mc->transfer_total_us += transfer;
        mc->stats.transfer_avg_us = mc->transfer_total_us / mc->stats.acked;
        trace_mc_checkpoint_acked(sl->epoch, transfer);
        mc->ring_first = (mc->ring_first + 1) % MC_RING_SLOTS;
        mc->ring_count--;
    }
    mc->acked_epoch = MAX(mc->acked_epoch, epoch);
    mc->stats.last_acked_epoch = mc->acked_epoch;
    mc->stats.in_flight = mc->ring_count;
}

/*
 * The standby refused checkpoint @epoch.  A corrupt one is sent again,
 * and every later one after it (go back N: the standby refuses those
 * as out of order until it has the missing one, so their refusals need
 * nothing more).  False when MC must end: the standby failed to apply
 * a checkpoint, or refused one too often.  mc->lock.
 */
static bool mc_ring_refused(MCSession *mc, uint64_t epoch, uint32_t why)
{
    MCSlot *sl = mc_ring_find(mc, epoch);

    mc->stats.refused++;
    if (why == MC_NACK_APPLY_FAILED) {
        error_report("MC: the standby failed to apply checkpoint %" PRIu64,
                     epoch);
        return false;
    }
    if (why != MC_NACK_CORRUPT || !sl) {
        return true;
    }
    if (++sl->resends > MC_MAX_RESENDS) {
        error_report("MC: the standby refused checkpoint %" PRIu64 " %d "
                     "times", epoch, MC_MAX_RESENDS + 1);
        return false;
    }
    warn_report("MC: the standby refused checkpoint %" PRIu64 " (corrupt), "
                "sending it again", epoch);
    if (!mc->resend_from || epoch < mc->resend_from) {
        mc->resend_from = epoch;
    }
    return true;
}

/*
 * The part of the staging buffer the next checkpoint may use: from the
 * end of the newest checkpoint in flight to the start of the oldest, or
 * to the end of the buffer (or from its start, if that is larger) when
 * they do not wrap around.  mc->lock.
 */
static void mc_ring_region(MCSession *mc, size_t *base, size_t *limit)
{
    size_t cap = mc->staging->capacity;
    MCSlot *first, *last;
    size_t end;

    if (!mc->ring_count) {
        *base = 0;
        *limit = cap;
        return;
    }
    if (mc->ring_count == MC_RING_SLOTS) {
        *base = *limit = 0;
        return;
    }
    first = &mc->ring[mc->ring_first];
    last = &mc->ring[(mc->ring_first + mc->ring_count - 1) % MC_RING_SLOTS];
    end = last->offset + last->len;
    if (last->offset < first->offset) {         /* wrapped */
        *base = end;
        *limit = first->offset;
    } else if (cap - end >= first->offset) {
        *base = end;
        *limit = cap;
    } else {
        *base = 0;
        *limit = first->offset;
    }
}

/* Receives ACK, NACK, READY and heartbeats from the standby. */
static void *mc_primary_rx_thread(void *opaque)
{
    MCSession *mc = opaque;

    rcu_register_thread();
    for (;;) {
        MCWireHeader h;

        if (!mc_recv_header(mc, 0, &h)) {
            break;
        }
        qemu_mutex_lock(&mc->lock);
        switch (h.type) {
        case MC_MSG_READY:
            mc->ready = true;
            break;
        case MC_MSG_ACK:
            if (h.epoch > mc->taken_epoch) {
                qemu_mutex_unlock(&mc->lock);
                error_report("MC: the standby acknowledged checkpoint %"
                             PRIu64 ", which was not sent", h.epoch);
                mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
                goto out;
            }
            mc_ring_acked(mc, h.epoch);
            qemu_cond_broadcast(&mc->cond);
            qemu_mutex_unlock(&mc->lock);
            /* output commit: what these epochs produced may now be seen */
            mc_participants_commit(h.epoch);
            continue;
        case MC_MSG_NACK:
            if (!mc_ring_refused(mc, h.epoch, h.flags)) {
                qemu_mutex_unlock(&mc->lock);
                mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
                goto out;
            }
            break;
        case MC_MSG_STANDBY_HEARTBEAT:
            break;
        default:
            qemu_mutex_unlock(&mc->lock);
            error_report("MC: unexpected %s message from the standby",
                         mc_msg_name(h.type));
            mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
            goto out;
        }
        qemu_cond_broadcast(&mc->cond);
        qemu_mutex_unlock(&mc->lock);
    }
out:
    rcu_unregister_thread();
    return NULL;
}

/* Why the loop must stop, or false to go on.  Called with mc->lock. */
static bool mc_primary_should_stop(MCSession *mc, MigrationState *s)
{
    return mc->lost || mc->failover_requested || mc->cancel_requested ||
           qatomic_read(&s->state) != MIGRATION_STATUS_MC;
}

/*
 * Bytes the next checkpoint would carry if taken now: the pages dirty
 * now and what the participants (disks) hold.  No mc->lock: it takes the
 * BQL.
 */
static size_t mc_primary_backlog(void)
{
    return mc_dirty_estimate() * qemu_target_page_size() +
           mc_participants_backlog();
}

/*
 * The guest dirtied @bytes in @us of running.  Keep the highest rate
 * seen lately, decaying by a tenth per sample: only an underestimate is
 * dangerous (the next look comes too late), and a single sample just
 * after the vCPUs went on may well be low.
 */
static void mc_primary_note_rate(MCSession *mc, size_t bytes, int64_t us)
{
    if (us > 0) {
        mc->dirty_rate = MAX((double)bytes / us, mc->dirty_rate * 0.9);
    }
}

/*
 * When to look at the dirty set again, in microseconds from now: after
 * @poll, or sooner if at the rate the guest dirtied memory lately it
 * would reach @half (half the free staging) before that: a guest that
 * dirties fast fills a small buffer in less than a poll period.  Not
 * sooner than 1 ms.  @bytes are dirty now.
 */
static int64_t mc_primary_next_poll(MCSession *mc, size_t bytes, size_t half,
                                    int64_t poll)
{
    double to_half;

    /*
     * The first epoch (the rate is not known yet), and while the guest
     * dirties fast enough to need early checkpoints or the throttle: its
     * dirtying comes in bursts that no average predicts.
     */
    if (mc->dirty_rate <= 0 || mc->last_early || mc->throttle_pct) {
        return 1000;
    }
    if (bytes >= half) {
        return poll;
    }
    /* half of the time it would take: a rate that grows is caught too */
    to_half = (half - bytes) / mc->dirty_rate / 2;
    return MAX(MIN(to_half, poll), 1000);
}

/* The free part of the staging buffer for the next checkpoint. */
static size_t mc_primary_free(MCSession *mc)
{
    size_t base, limit;

    qemu_mutex_lock(&mc->lock);
    mc_ring_region(mc, &base, &limit);
    /* the ring may empty before the checkpoint is taken */
    if (!mc->ring_count) {
        base = 0;
        limit = mc->staging->capacity;
    }
    qemu_mutex_unlock(&mc->lock);
    return limit - base;
}

/*
 * Wait until the next checkpoint is due: mc-delay after the start of the
 * last one, or earlier when the dirty data nears half of the free
 * staging buffer.  Returns false when MC must stop instead.
 */
static bool mc_primary_wait_epoch(MCSession *mc, MigrationState *s,
                                  int64_t epoch_start_us, bool *early)
{
    /*
     * Poll the dirty set a few times per epoch, every 5 to 20 ms, or
     * sooner when it grows fast (mc_primary_next_poll): a long epoch
     * must still notice a burst (disk writes arrive at the host's disk
     * speed) before it outgrows the staging.  Not more often: ACKs wake
     * this loop, and a poll syncs the dirty log under the BQL.
     */
    int64_t poll = MIN(MAX(migrate_mc_delay() * 1000LL / 8, 5000), 20000);
    int64_t next_poll = epoch_start_us +
        mc_primary_next_poll(mc, 0, mc_primary_free(mc) / 2, poll);

    *early = false;
    for (;;) {
        int64_t due = epoch_start_us + migrate_mc_delay() * 1000LL;
        int64_t now = mc_now_us();
        size_t bytes, half;
        bool stop;

        qemu_mutex_lock(&mc->lock);
        if (!mc_primary_should_stop(mc, s) && now < due) {
            qemu_cond_timedwait(&mc->cond, &mc->lock,
                                MAX((MIN(due, next_poll) - now) / 1000, 1));
        }
        stop = mc_primary_should_stop(mc, s);
        qemu_mutex_unlock(&mc->lock);
        if (stop) {
            return false;
        }
        now = mc_now_us();
        if (now >= due) {
            return true;
        }
        if (now < next_poll) {
            continue;
        }
        bytes = mc_primary_backlog();
        half = mc_primary_free(mc) / 2;
        if (bytes > half) {
            *early = true;
            return true;
        }
        mc_primary_note_rate(mc, bytes, now - epoch_start_us);
        next_poll = now + mc_primary_next_poll(mc, bytes, half, poll);
        trace_mc_primary_poll(bytes, half, next_poll - now);
    }
}

/*
 * The light pause: vm_stop() without its STOP event and its block flush.
 * Management sees nothing per checkpoint: no event, and a run state
 * (finish-migrate) that only exists while the BQL is held, but for the
 * moments the vCPUs need to stop.  The devices' state-change handlers
 * still run: they are what stops device emulation that runs in the main
 * loop, and the main loop does run inside the pause, in every aio_poll()
 * (block reads, the drain) and wherever the BQL is dropped (the TCG
 * dirty-log sync waits for the vCPUs).  Without them virtio-net's
 * transmit bottom half consumed descriptors after the output barrier:
 * checkpoint N had the descriptor consumed and the packet was tagged
 * N + 1, so a failover at N lost it (TCP stalls of seconds).  The block
 * layer stays drained for the pause (disk participant); the virtual
 * clock stops with the vCPUs, so saved timers match the saved clock.
 */
static bool mc_guest_pause(void)
{
    if (!runstate_is_running()) {
        return false;
    }
    cpu_disable_ticks();
    pause_all_vcpus();
    /*
     * It drops the BQL while it waits: a "stop" may have run meanwhile,
     * and then the VM stays stopped.  Past this point the BQL is held
     * until mc_guest_resume() (patches/tcg-dirty-sync-stopped-vcpus).
     */
    if (!runstate_is_running()) {
        return false;
    }
    runstate_set(RUN_STATE_FINISH_MIGRATE);
    vm_state_notify(false, RUN_STATE_FINISH_MIGRATE);
    return true;
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
    vm_state_notify(true, RUN_STATE_RUNNING);
    if (!hold_vcpus) {
        resume_all_vcpus();
    }
}

/* The throttle held the vCPUs: let them go, unless the VM was stopped. */
static void mc_guest_release_vcpus(MCSession *mc)
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
static bool mc_primary_make_room(MCStaging *st, size_t len, void *opaque)
{
    MCSession *mc = opaque;
    int64_t start = mc_now_us();
    bool empty;

    if ((st->base == 0 && st->limit == st->capacity) ||
        len > st->capacity - st->used) {
        return false;
    }
    qemu_mutex_lock(&mc->lock);
    while (mc->ring_count && !mc->lost && !mc->tx_stop) {
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
 * taken before there was room for it (mc_primary_wait_room) or that
 * waited for room in the pause raises the throttle; MC_THROTTLE_CALM
 * checkpoints in a row that did neither lower it.  A large checkpoint
 * alone does not: taking checkpoints earlier is the answer to a fast
 * dirtying rate (mc_primary_next_poll), the throttle to a rate the link
 * or the standby cannot keep up with.  Migration thread, after the
 * pause.
 */
static void mc_primary_throttle(MCSession *mc, size_t bytes)
{
    int pct = mc->throttle_pct, old = pct;

    if (mc->room_waited || mc->room_short) {
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
static void mc_primary_throttle_hold(MCSession *mc, MigrationState *s,
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
static int mc_checkpoint_take(MCSession *mc, uint64_t epoch, size_t base,
                              size_t limit, Error **errp)
{
    size_t devices_at;
    bool running;
    uint64_t pages = stat64_get(&mig_stats.normal_pages) +
                     stat64_get(&mig_stats.zero_pages);
    int64_t start = mc_now_us(), pause;
    int ret;

    /* The standby resumes the guest in the run state saved here. */
    global_state_store();
    mc_participants_pause();
    running = mc_guest_pause();
    /* What the guest does from now on belongs to the next checkpoint */
    mc_participants_checkpoint(epoch);

    mc_staging_rewind_at(mc->staging, base, limit);
    ram_mc_begin_checkpoint(mc->sfile);
    qemu_savevm_live_state(mc->sfile);
    /* Copies the pending iovecs that point at guest RAM: must be paused */
    qemu_fflush(mc->sfile);
    devices_at = mc->staging->used;     /* from the checkpoint's start */
    ret = qemu_save_device_state(mc->sfile);
    /* The trailer: where the device state begins (see mc_checkpoint_apply) */
    qemu_put_be64(mc->sfile, devices_at);
    qemu_fflush(mc->sfile);
    if (!ret) {
        ret = qemu_file_get_error(mc->sfile);
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
    qemu_mutex_lock(&mc->lock);
    mc->stats.checkpoints++;
    mc->stats.throttled_checkpoints += mc->throttle_pct > 0;
    mc->stats.pause_last_us = pause;
    mc->stats.pause_max_us = MAX(mc->stats.pause_max_us, pause);
    mc->pause_total_us += pause;
    mc->stats.pause_avg_us = mc->pause_total_us / mc->stats.checkpoints;
    mc->stats.dirty_pages_last = pages;
    mc->stats.last_bytes = mc->staging->used;
    mc->stats.staging_high_water = mc->staging->high_water;
    qemu_mutex_unlock(&mc->lock);
    trace_mc_checkpoint_take(epoch, pages, mc->staging->used, pause);

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

/*
 * Sends the checkpoints in the ring, in epoch order, as soon as they
 * are taken; goes back to a refused one (resend_from).  ACKs are the
 * rx thread's business: several checkpoints may be unacknowledged.
 */
static void *mc_primary_tx_thread(void *opaque)
{
    MCSession *mc = opaque;

    rcu_register_thread();
    qemu_mutex_lock(&mc->lock);
    for (;;) {
        Error *err = NULL;
        struct iovec iov;
        uint64_t epoch;
        MCSlot *sl;
        int ret;

        if (mc->resend_from) {
            mc->send_next = mc->resend_from;
            mc->resend_from = 0;
        }
        if (mc->tx_stop || mc->lost) {
            break;
        }
        if (mc->send_next > mc->taken_epoch ||
            mc->send_next > mc->acked_epoch + MC_SEND_AHEAD) {
            qemu_cond_wait(&mc->cond, &mc->lock);
            continue;
        }
        sl = mc_ring_find(mc, mc->send_next);
        if (!sl) {
            mc->send_next++;        /* acknowledged already */
            continue;
        }
        epoch = sl->epoch;
        iov.iov_base = mc->staging->data + sl->offset;
        iov.iov_len = sl->len;
        mc->tx_busy = true;
        qemu_mutex_unlock(&mc->lock);
        /* the slot stays in the ring: only its ACK frees it */
        ret = mc_send(mc, MC_MSG_CHECKPOINT, 0, epoch, &iov, 1, &err);
        qemu_mutex_lock(&mc->lock);
        mc->tx_busy = false;
        qemu_cond_broadcast(&mc->cond);
        if (ret < 0) {
            qemu_mutex_unlock(&mc->lock);
            error_free(err);
            mc_peer_lost(mc, MC_LOSS_REASON_PEER_CLOSED);
            qemu_mutex_lock(&mc->lock);
            break;
        }
        if (mc->send_next == epoch) {
            mc->send_next = epoch + 1;
        }
    }
    qemu_mutex_unlock(&mc->lock);
    rcu_unregister_thread();
    return NULL;
}

/*
 * End the tx thread.  It may be blocked sending to a standby that does
 * not read (stopped, or behind a broken link): after a heartbeat
 * timeout the channel is shut down under it.
 */
static void mc_primary_tx_stop(MCSession *mc)
{
    int64_t deadline = mc_now_us() + migrate_mc_heartbeat_timeout() * 1000LL;
    bool busy;

    if (!mc->tx_started) {
        return;
    }
    qemu_mutex_lock(&mc->lock);
    mc->tx_stop = true;
    qemu_cond_broadcast(&mc->cond);
    while (mc->tx_busy && mc_now_us() < deadline) {
        qemu_cond_timedwait(&mc->cond, &mc->lock, 50);
    }
    busy = mc->tx_busy;
    qemu_mutex_unlock(&mc->lock);
    if (busy) {
        qio_channel_shutdown(mc->ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
    }
    qemu_thread_join(&mc->tx_thread);
    mc->tx_started = false;
}

/*
 * Wait until the staging buffer has room for the next checkpoint and a
 * slot is free.  Room needed: one and a half times what is dirty now
 * plus 1 MiB, at least half the buffer (the early checkpoint keeps an
 * epoch below half of what is free when it starts), all of it (nothing
 * in flight) for a large dirty set.  The dirty set grows while this
 * waits for ACKs, so it is estimated again every few milliseconds; once
 * it reaches half the buffer the guest dirties faster than the standby
 * acknowledges, and the checkpoint is taken at once: it waits for room
 * with the guest paused (mc_primary_make_room), before the dirty set
 * outgrows the whole buffer.  Returns the part to use, or false when MC
 * must stop.
 */
static bool mc_primary_wait_room(MCSession *mc, MigrationState *s,
                                 size_t *base, size_t *limit)
{
    size_t cap = mc->staging->capacity;

    for (;;) {
        size_t need = 0, dirty = 0;
        bool stop, ok;

        /*
         * The estimate takes the BQL, which migrate_cancel holds while it
         * waits for STOP to be sent: only when something is in flight,
         * and never once MC is to stop.
         */
        qemu_mutex_lock(&mc->lock);
        stop = mc_primary_should_stop(mc, s);
        ok = stop || !mc->ring_count;
        qemu_mutex_unlock(&mc->lock);
        if (!ok) {
            dirty = mc_primary_backlog();
            need = MIN(MAX(dirty / 2 * 3 + MiB, cap / 2), cap);
        }
        qemu_mutex_lock(&mc->lock);
        stop = mc_primary_should_stop(mc, s);
        mc_ring_region(mc, base, limit);
        ok = stop || !mc->ring_count ||
             (mc->ring_count < MC_RING_SLOTS && *limit - *base >= need);
        if (!ok && dirty >= cap / 2) {
            ok = true;
            mc->room_short = true;      /* for the throttle */
        }
        if (!ok) {
            int64_t next = mc_primary_next_poll(mc, dirty, cap / 2,
                                                MC_ROOM_POLL_US);

            trace_mc_primary_poll(dirty, cap / 2, next);
            qemu_cond_timedwait(&mc->cond, &mc->lock, next / 1000);
        }
        qemu_mutex_unlock(&mc->lock);
        if (stop) {
            return false;
        }
        if (ok) {
            return true;
        }
    }
}

/*
 * Wait for READY: the standby has loaded the initial state.  Receiving it
 * refreshes last_rx_us, so the watchdog started next does not count the
 * (possibly long) initial load as silence.
 */
static bool mc_primary_wait_ready(MCSession *mc, MigrationState *s)
{
    int64_t deadline = mc_now_us() + MC_READY_TIMEOUT_MS * 1000LL;
    bool ready;

    qemu_mutex_lock(&mc->lock);
    while (!mc->ready && !mc_primary_should_stop(mc, s) &&
           mc_now_us() < deadline) {
        qemu_cond_timedwait(&mc->cond, &mc->lock, 100);
    }
    ready = mc->ready;
    qemu_mutex_unlock(&mc->lock);
    return ready;
}

/*
 * The primary leaves MC and runs on: tell the standby to stay stopped.
 * When the standby is lost this is best effort and never blocks: a
 * standby that cannot be reached is either dead or, behind a broken
 * link, following the failover policy, which does not let it act on a
 * heartbeat timeout alone (safe, manual).  On migrate_cancel the
 * standby is alive, maybe just slow: keep trying to queue the message
 * for up to a heartbeat timeout.  Closing the connection without it
 * would look like a dead primary; once the timeout has passed, the
 * standby has noticed a silence first, which it does not act on alone.
 */
static void mc_primary_tell_stop(MCSession *mc, uint32_t why)
{
    uint8_t hdr[MC_WIRE_HDR_SIZE];
    MCWireHeader h = { .type = MC_MSG_STOP, .flags = why };
    int64_t deadline = mc_now_us();
    size_t done = 0;

    if (why == MC_STOP_CANCEL) {
        deadline += migrate_mc_heartbeat_timeout() * 1000LL;
    }
    mc_wire_encode(&h, hdr);
    qio_channel_set_blocking(mc->ioc, false, NULL);
    qemu_mutex_lock(&mc->send_lock);
    for (;;) {
        ssize_t n = qio_channel_write(mc->ioc, (char *)hdr + done,
                                      sizeof(hdr) - done, NULL);

        if (n > 0) {
            done += n;
        }
        if (done == sizeof(hdr) || (n < 0 && n != QIO_CHANNEL_ERR_BLOCK) ||
            mc_now_us() >= deadline) {
            break;
        }
        g_usleep(5000);
    }
    qemu_mutex_unlock(&mc->send_lock);
    trace_mc_primary_tell_stop(why, done == sizeof(hdr));
}

/* End of the initial downtime: the guest runs from here on. */
static void mc_guest_start(MigrationState *s)
{
    if (runstate_is_live(s->vm_old_state)) {
        vm_start();
    } else if (runstate_check(RUN_STATE_FINISH_MIGRATE)) {
        runstate_set(s->vm_old_state);
    }
}

/*
 * The never-ending migration.  Called on the migration thread with the
 * BQL held, right after precopy completed into state "mc" with the VM
 * stopped; returns with the BQL held and the VM running (or as the user
 * left it), having moved the migration state on.
 */
void mc_primary_run(MigrationState *s)
{
    Error *err = NULL;
    MCSession *mc;
    QIOChannel *ioc = qemu_file_get_ioc(s->to_dst_file);
    uint64_t epoch = 0;
    MCLossReason reason;
    bool lost, cancelled, requested;
    MigrationStatus end_state;
    bool ready;
    int pct;

    mc = mc_session_new(MC_ROLE_PRIMARY, ioc, &err);
    /* Hold guest output from the first instruction the guest runs in MC */
    if (mc && !mc_participants_start(&err)) {
        mc_session_free(mc);
        mc = NULL;
    }
    if (mc) {
        mc_current = mc;
        /*
         * MC owns the vCPU throttle from here.  A guest that precopy had
         * to throttle starts MC throttled as much (MC lowers it once its
         * checkpoints are small); auto-converge's timer, which syncs the
         * dirty log while the guest runs, ends.
         */
        pct = cpu_throttle_get_percentage();
        cpu_throttle_stop();
        mc->throttle_pct = pct;
        mc->stats.throttle_percentage = pct;
        mc->stats.throttle_max_percentage = pct;
        mc_staging_set_room_fn(mc->staging, mc_primary_make_room, mc);
        qio_channel_set_blocking(ioc, true, NULL);
        /* small ACKs and heartbeats must not wait for delayed ACKs */
        qio_channel_set_delay(ioc, false);
        qemu_thread_create(&mc->rx_thread, "mc-rx", mc_primary_rx_thread,
                           mc, QEMU_THREAD_JOINABLE);
        mc->rx_started = true;
    }

    if (!mc) {
        mc_guest_start(s);
        migrate_set_error(s, err);
        error_report_err(err);
        migrate_set_state(&s->state, MIGRATION_STATUS_MC,
                          MIGRATION_STATUS_FAILED);
        return;
    }
    bql_unlock();

    trace_mc_primary_start(mc->staging->capacity);
    /*
     * The guest stays paused until the standby has loaded the initial
     * state: all it dirtied meanwhile would be in the first checkpoint,
     * which must fit in the staging buffer like any other.
     */
    ready = mc_primary_wait_ready(mc, s);
    bql_lock();
    mc_guest_start(s);
    bql_unlock();
    if (ready) {
        int64_t start = mc_now_us();

        qemu_thread_create(&mc->hb_thread, "mc-hb", mc_hb_thread, mc,
                           QEMU_THREAD_JOINABLE);
        mc->hb_started = true;
        mc->send_next = 1;
        qemu_thread_create(&mc->tx_thread, "mc-tx", mc_primary_tx_thread,
                           mc, QEMU_THREAD_JOINABLE);
        mc->tx_started = true;
        mc->run_start_us = start;
        /* The next epoch begins as soon as the pause ends */
        for (;;) {
            int64_t pause_end;
            size_t base, limit;
            bool early;

            if (!mc_primary_wait_epoch(mc, s, start, &early)) {
                break;
            }
            if (!mc_primary_wait_room(mc, s, &base, &limit)) {
                break;
            }
            epoch++;
            bql_lock();
            if (mc_checkpoint_take(mc, epoch, base, limit, &err) < 0) {
                bql_unlock();
                break;
            }
            mc_primary_throttle(mc, mc->staging->used);
            bql_unlock();
            pause_end = mc_now_us();
            qemu_mutex_lock(&mc->lock);
            mc->ring[(mc->ring_first + mc->ring_count) % MC_RING_SLOTS] =
                (MCSlot) {
                    /* the checkpoint may have moved (make_room) */
                    .epoch = epoch, .offset = mc->staging->base,
                    .len = mc->staging->used, .pause_end_us = pause_end,
                };
            mc->ring_count++;
            mc->taken_epoch = epoch;
            mc->stats.in_flight = mc->ring_count;
            mc->stats.in_flight_max = MAX(mc->stats.in_flight_max,
                                          mc->ring_count);
            mc->stats.early_checkpoints += early;
            mc->last_early = early;
            mc->stats.epoch_ms = (pause_end - start) / 1000;
            qemu_cond_broadcast(&mc->cond);
            qemu_mutex_unlock(&mc->lock);
            start = pause_end;
            mc_primary_note_rate(mc, mc->staging->used,
                                 mc->pause_start_us - mc->run_start_us);
            if (mc->vcpus_held) {
                mc_primary_throttle_hold(mc, s,
                                         mc->pause_start_us - mc->run_start_us);
                start = mc_now_us();
            }
            mc->run_start_us = start;
        }
    } else {
        qemu_mutex_lock(&mc->lock);
        if (!mc->lost && !mc_primary_should_stop(mc, s)) {
            mc->lost = true;
            mc->loss_reason = MC_LOSS_REASON_HEARTBEAT_TIMEOUT;
        }
        qemu_mutex_unlock(&mc->lock);
        error_setg(&err, "MC: the standby did not become ready");
    }

    qemu_mutex_lock(&mc->lock);
    if (err && !mc->lost) {
        /* a checkpoint could not be taken: the guest runs unprotected */
        mc->lost = true;
        mc->loss_reason = mc->staging->overflow ?
            MC_LOSS_REASON_CHECKPOINT_TOO_LARGE :
            MC_LOSS_REASON_PROTOCOL_ERROR;
    }
    cancelled = mc->cancel_requested ||
                qatomic_read(&s->state) == MIGRATION_STATUS_CANCELLING;
    lost = mc->lost;
    reason = mc->loss_reason;
    qemu_mutex_unlock(&mc->lock);
    /*
     * The guest runs on while management decides (manual policy); on
     * migrate_cancel, which may hold the BQL meanwhile, only at the end.
     */
    if (!cancelled) {
        mc_guest_release_vcpus(mc);
    }

    if (lost && !cancelled &&
        migrate_mc_failover_policy() == MC_FAILOVER_POLICY_MANUAL) {
        /* Never act alone: keep what the guest sent until told. */
        qapi_event_send_mc_peer_lost(MC_ROLE_PRIMARY, reason);
        qemu_mutex_lock(&mc->lock);
        while (!mc->failover_requested && !mc->cancel_requested &&
               qatomic_read(&s->state) == MIGRATION_STATUS_MC) {
            qemu_cond_wait(&mc->cond, &mc->lock);
        }
        cancelled = mc->cancel_requested ||
                    qatomic_read(&s->state) == MIGRATION_STATUS_CANCELLING;
        qemu_mutex_unlock(&mc->lock);
    }
    qemu_mutex_lock(&mc->lock);
    requested = mc->failover_requested;
    qemu_mutex_unlock(&mc->lock);

    /* No checkpoint is sent after STOP; the ring is dropped */
    mc_primary_tx_stop(mc);
    mc_primary_tell_stop(mc, cancelled ? MC_STOP_CANCEL : MC_STOP_DROPPED);
    qemu_mutex_lock(&mc->lock);
    mc->stop_told = true;
    qemu_cond_broadcast(&mc->cond);
    qemu_mutex_unlock(&mc->lock);
    mc_threads_stop(mc);

    mc_guest_release_vcpus(mc);
    bql_lock();
    mc_current = NULL;
    /* The guest runs at full speed again (the vCPUs are not held here) */
    mc->stats.throttle_percentage = 0;
    /* Unprotected from here on: what the guest sent may go out now */
    mc_participants_stop();
    if (cancelled) {
        /* migration_cleanup moves cancelling to cancelled */
        end_state = MIGRATION_STATUS_CANCELLING;
        migrate_set_state(&s->state, MIGRATION_STATUS_MC,
                          MIGRATION_STATUS_CANCELLING);
    } else {
        if (requested && !lost) {
            reason = MC_LOSS_REASON_REQUEST;
        }
        end_state = requested ? MIGRATION_STATUS_COMPLETED :
                                MIGRATION_STATUS_FAILED;
        if (!requested) {
            Error *why = NULL;

            error_setg(&why, "MC ended, the guest runs unprotected: %s%s%s",
                       MCLossReason_str(reason), err ? ": " : "",
                       err ? error_get_pretty(err) : "");
            migrate_set_error(s, why);
            error_report_err(why);
        }
        migrate_set_state(&s->state, MIGRATION_STATUS_MC, end_state);
        qapi_event_send_mc_failover(MC_ROLE_PRIMARY, reason,
                                    mc->stats.last_acked_epoch);
    }
    trace_mc_primary_end(epoch, MigrationStatus_str(end_state));
    error_free(err);
    mc_session_free(mc);
}

/*
 * migrate_cancel during MC: let the loop tell the standby to stay
 * stopped before the channel goes down (shutting it down at once would
 * look like a dead primary to the standby).  Returns true if MC takes
 * care of the channel.
 */
bool mc_primary_cancel(MigrationStatus old_state)
{
    MCSession *mc = mc_current;
    int64_t deadline;

    if (old_state != MIGRATION_STATUS_MC || !mc) {
        return false;
    }
    qemu_mutex_lock(&mc->lock);
    mc->cancel_requested = true;
    qemu_cond_broadcast(&mc->cond);
    /*
     * QEMU may be quitting: give the loop a moment to tell the standby,
     * or it would see the connection close and take the primary for
     * dead.  The loop needs no BQL for that, unless it is just polling
     * the dirty log; hence the bound.
     */
    deadline = mc_now_us() + MC_CANCEL_WAIT_MS * 1000;
    while (!mc->stop_told && mc_now_us() < deadline) {
        qemu_cond_timedwait(&mc->cond, &mc->lock, 50);
    }
    qemu_mutex_unlock(&mc->lock);
    return true;
}

/*
 * Standby
 */

/*
 * Receive checkpoint @h into staging and verify it.  Returns 1 when it is
 * whole and intact, 0 when it is corrupt (the stream is still in step), -1
 * when the link failed.
 */
static int mc_checkpoint_receive(MCSession *mc, const MCWireHeader *h,
                                 Error **errp)
{
    size_t got = 0;

    while (got < h->len) {
        size_t n = MIN(h->len - got, MC_RECV_CHUNK);

        if (qio_channel_read_all(mc->ioc, (char *)mc->staging->data + got, n,
                                 errp) < 0) {
            error_prepend(errp, "MC: checkpoint %" PRIu64 " truncated: ",
                          h->epoch);
            return -1;
        }
        got += n;
        qatomic_set(&mc->last_rx_us, mc_now_us());
    }
    mc->staging->high_water = MAX(mc->staging->high_water, got);
    if (mc_wire_check_payload(h, mc->staging->data, errp) < 0) {
        return 0;
    }
    return 1;
}

/*
 * Apply a verified checkpoint: its RAM pages and disk writes now (BQL
 * held), its device state only kept.  Loading devices means resetting
 * them first, which costs more than the rest of an idle checkpoint, and
 * nothing reads the standby's devices before it leaves MC: they are
 * loaded once, from the last applied checkpoint, then.  The payload
 * ends with the offset of its device part (8 bytes, big endian).
 */
static int mc_checkpoint_apply(MCSession *mc, const MCWireHeader *h)
{
    uint64_t devices_at;
    int ret;

    if (h->len < 8) {
        return -EINVAL;
    }
    devices_at = ldq_be_p(mc->staging->data + h->len - 8);
    if (devices_at > h->len - 8) {
        return -EINVAL;
    }
    mc_staging_set_readable(mc->staging, devices_at);
    ret = qemu_loadvm_state_main(mc->sfile, mc->mis);
    if (ret >= 0) {
        ret = qemu_file_get_error(mc->sfile);
    }
    if (ret < 0) {
        return ret;
    }
    /* Keep the device part; the buffer is allocated once, like staging */
    if (!mc->devices) {
        mc->devices = mc_staging_new(mc->staging->capacity, NULL);
        if (!mc->devices) {
            return -ENOMEM;
        }
    }
    memcpy(mc->devices->data, mc->staging->data + devices_at,
           h->len - 8 - devices_at);
    mc_staging_set_readable(mc->devices, h->len - 8 - devices_at);
    mc->devices_pending = true;
    return 0;
}

/*
 * The standby leaves MC (failover, or the primary said stop): load the
 * device state of the last applied checkpoint.  Devices' post_load
 * hooks expect devices fresh from reset (they map regions, start
 * timers); guest RAM is not touched by the reset.  Main loop, BQL.
 * Returns false if the devices could not be loaded: this copy of the
 * guest cannot run.
 */
static bool mc_standby_load_devices(MCSession *mc)
{
    QEMUFile *f;
    int ret;

    if (!mc->devices_pending) {
        return true;
    }
    mc->devices_pending = false;
    object_ref(OBJECT(mc->devices));
    f = qemu_file_new_input(QIO_CHANNEL(mc->devices));
    qemu_system_reset(SHUTDOWN_CAUSE_NONE);
    ret = qemu_load_device_state(f);
    if (ret >= 0) {
        ret = qemu_file_get_error(f);
    }
    qemu_fclose(f);         /* drops the reference taken above */
    trace_mc_standby_load_devices(mc->applied_epoch, ret);
    if (ret < 0) {
        error_report("MC: loading the device state of checkpoint %" PRIu64
                     " failed: %s", mc->applied_epoch, strerror(-ret));
        return false;
    }
    return true;
}

static void mc_standby_refuse(MCSession *mc, uint64_t epoch, uint32_t why,
                              Error *err)
{
    error_report_err(err);
    qemu_mutex_lock(&mc->lock);
    mc->stats.refused++;
    qemu_mutex_unlock(&mc->lock);
    trace_mc_checkpoint_refused(epoch, why);
    mc_send(mc, MC_MSG_NACK, why, epoch, NULL, 0, NULL);
}

static void mc_standby_decide_bh(void *opaque);

/* Before the guest may run here: its devices as of the last checkpoint */
static void mc_standby_finish_devices(MCSession *mc)
{
    if (!mc_standby_load_devices(mc)) {
        qemu_mutex_lock(&mc->lock);
        mc->outcome = MC_OUTCOME_STOP;      /* this copy cannot run */
        qemu_mutex_unlock(&mc->lock);
    }
}

static void *mc_standby_rx_thread(void *opaque)
{
    MCSession *mc = opaque;

    rcu_register_thread();
    for (;;) {
        Error *err = NULL;
        MCWireHeader h;
        int ret;

        if (!mc_recv_header(mc, mc->staging->capacity, &h)) {
            break;
        }
        if (h.type == MC_MSG_HEARTBEAT) {
            continue;
        }
        if (h.type == MC_MSG_STOP) {
            qemu_mutex_lock(&mc->lock);
            mc->stop_received = true;
            qemu_mutex_unlock(&mc->lock);
            trace_mc_standby_stop(h.flags);
            break;
        }
        if (h.type != MC_MSG_CHECKPOINT) {
            error_report("MC: unexpected %s message from the primary",
                         mc_msg_name(h.type));
            mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
            break;
        }

        ret = mc_checkpoint_receive(mc, &h, &err);
        if (ret < 0) {
            /* the partial checkpoint is dropped: the last one stays */
            error_report_err(err);
            mc_peer_lost(mc, MC_LOSS_REASON_PEER_CLOSED);
            break;
        }
        if (ret == 0) {
            mc_standby_refuse(mc, h.epoch, MC_NACK_CORRUPT, err);
            continue;
        }
        if (h.epoch != mc->applied_epoch + 1) {
            error_setg(&err, "MC: checkpoint %" PRIu64 " out of order "
                       "(expected %" PRIu64 ")", h.epoch,
                       mc->applied_epoch + 1);
            mc_standby_refuse(mc, h.epoch, MC_NACK_ORDER, err);
            continue;
        }

        /* Whole and intact: acknowledge first, so output flows sooner. */
        mc_send(mc, MC_MSG_ACK, 0, h.epoch, NULL, 0, NULL);
        bql_lock();
        ret = mc_checkpoint_apply(mc, &h);
        bql_unlock();
        qatomic_set(&mc->last_rx_us, mc_now_us());
        if (ret < 0) {
            /* half applied: this standby is no longer a valid copy */
            error_report("MC: applying checkpoint %" PRIu64 " failed: %s",
                         h.epoch, strerror(-ret));
            mc_send(mc, MC_MSG_NACK, MC_NACK_APPLY_FAILED, h.epoch, NULL, 0,
                    NULL);
            qemu_mutex_lock(&mc->lock);
            mc->stop_received = true;   /* stay stopped, never resume */
            qemu_mutex_unlock(&mc->lock);
            break;
        }
        mc->applied_epoch = h.epoch;
        qemu_mutex_lock(&mc->lock);
        mc->stats.checkpoints++;
        mc->stats.acked++;
        mc->stats.applied++;
        mc->stats.last_acked_epoch = h.epoch;
        mc->stats.bytes += h.len;
        mc->stats.last_bytes = h.len;
        mc->stats.staging_high_water = mc->staging->high_water;
        qemu_mutex_unlock(&mc->lock);
        trace_mc_checkpoint_applied(h.epoch, h.len);
    }

    qemu_mutex_lock(&mc->lock);
    mc->finished = true;
    qemu_mutex_unlock(&mc->lock);
    aio_bh_schedule_oneshot(qemu_get_aio_context(), mc_standby_decide_bh, mc);
    rcu_unregister_thread();
    return NULL;
}

/*
 * The receive thread ended: resume the guest here (failover), stay
 * stopped (the primary said so, or this copy is broken), or wait for
 * management, as mc-failover-policy says.  Main loop, BQL held.
 */
static void mc_standby_decide_bh(void *opaque)
{
    MCSession *mc = opaque;
    MCFailoverPolicy policy = migrate_mc_failover_policy();
    bool act;

    qemu_mutex_lock(&mc->lock);
    if (mc->stop_received) {
        mc->outcome = MC_OUTCOME_STOP;
    } else if (mc->failover_requested) {
        mc->outcome = MC_OUTCOME_FAILOVER;
    } else {
        act = policy == MC_FAILOVER_POLICY_AUTO ||
              (policy == MC_FAILOVER_POLICY_SAFE &&
               mc->loss_reason == MC_LOSS_REASON_PEER_CLOSED);
        mc->outcome = act ? MC_OUTCOME_FAILOVER : MC_OUTCOME_WAIT;
    }
    qemu_mutex_unlock(&mc->lock);
    if (mc->outcome != MC_OUTCOME_WAIT) {
        mc_standby_finish_devices(mc);
    }
    trace_mc_standby_decide(MCLossReason_str(mc->loss_reason),
                            MCFailoverPolicy_str(policy), mc->outcome);
    if (mc->outcome == MC_OUTCOME_WAIT) {
        qapi_event_send_mc_peer_lost(MC_ROLE_STANDBY, mc->loss_reason);
        return;
    }
    if (mc->outcome == MC_OUTCOME_FAILOVER) {
        mc_participants_failover();
    }
    aio_co_wake(mc->co);
}

static void mc_standby_wake_bh(void *opaque)
{
    MCSession *mc = opaque;

    mc_standby_finish_devices(mc);
    if (mc->outcome == MC_OUTCOME_FAILOVER) {
        mc_participants_failover();
    }
    aio_co_wake(mc->co);
}

/*
 * The standby.  Runs in the incoming migration coroutine (BQL held) once
 * the initial state is loaded; yields until MC ends.  Returns true when
 * the guest is to be resumed here (failover: the caller announces it and
 * starts it), false when it stays stopped.
 */
bool coroutine_fn mc_standby_co(MigrationIncomingState *mis)
{
    MigrationState *s = migrate_get_current();
    QIOChannel *ioc = qemu_file_get_ioc(mis->from_src_file);
    Error *err = NULL;
    MCSession *mc = mc_session_new(MC_ROLE_STANDBY, ioc, &err);
    bool failover;

    if (!mc) {
        /* the primary sees the link close before READY and runs on */
        migrate_set_error(s, err);
        error_report_err(err);
        qio_channel_shutdown(ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
        runstate_set(RUN_STATE_PAUSED);
        migrate_set_state(&mis->state, MIGRATION_STATUS_ACTIVE,
                          MIGRATION_STATUS_FAILED);
        migration_incoming_state_destroy();
        return false;
    }
    mc->mis = mis;
    mc->co = qemu_coroutine_self();
    mc_current = mc;
    migrate_set_state(&mis->state, MIGRATION_STATUS_ACTIVE,
                      MIGRATION_STATUS_MC);
    qio_channel_set_blocking(ioc, true, NULL);
    qio_channel_set_delay(ioc, false);
    trace_mc_standby_start(mc->staging->capacity);

    qemu_thread_create(&mc->rx_thread, "mc-rx", mc_standby_rx_thread, mc,
                       QEMU_THREAD_JOINABLE);
    mc->rx_started = true;
    qemu_thread_create(&mc->hb_thread, "mc-hb", mc_hb_thread, mc,
                       QEMU_THREAD_JOINABLE);
    mc->hb_started = true;
    mc_send(mc, MC_MSG_READY, 0, 0, NULL, 0, NULL);

    qemu_coroutine_yield();

    mc_threads_stop(mc);
    mc_current = NULL;
    failover = mc->outcome == MC_OUTCOME_FAILOVER;
    migrate_set_state(&mis->state, MIGRATION_STATUS_MC,
                      MIGRATION_STATUS_ACTIVE);
    if (failover) {
        MCLossReason reason = mc->failover_requested ?
            MC_LOSS_REASON_REQUEST : mc->loss_reason;

        /* the guest continues from the last applied checkpoint */
        autostart = true;
        trace_mc_failover(MCRole_str(MC_ROLE_STANDBY), mc->applied_epoch);
        qapi_event_send_mc_failover(MC_ROLE_STANDBY, reason,
                                    mc->applied_epoch);
    } else {
        runstate_set(RUN_STATE_PAUSED);
        migrate_set_state(&mis->state, MIGRATION_STATUS_ACTIVE,
                          MIGRATION_STATUS_COMPLETED);
        migration_incoming_state_destroy();
    }
    mc_session_free(mc);
    mc_participants_standby_end();
    return failover;
}

/*
 * Management: QMP and HMP
 */

void qmp_mc_failover(Error **errp)
{
    MCSession *mc = mc_current;

    if (!mc) {
        error_setg(errp, "Micro-checkpointing is not running");
        return;
    }
    qemu_mutex_lock(&mc->lock);
    mc->failover_requested = true;
    qemu_cond_broadcast(&mc->cond);
    if (mc->role == MC_ROLE_STANDBY && mc->finished) {
        /* waiting for management after a loss: go */
        mc->outcome = MC_OUTCOME_FAILOVER;
        qemu_mutex_unlock(&mc->lock);
        aio_bh_schedule_oneshot(qemu_get_aio_context(), mc_standby_wake_bh,
                                mc);
        return;
    }
    qemu_mutex_unlock(&mc->lock);
    if (mc->role == MC_ROLE_STANDBY) {
        /* stop receiving; the thread ends and the decision is failover */
        qio_channel_shutdown(mc->ioc, QIO_CHANNEL_SHUTDOWN_BOTH, NULL);
    }
}

void mc_fill_info(MigrationInfo *info)
{
    MCSession *mc = mc_current;

    if (mc) {
        info->mc = g_new(MCInfo, 1);
        qemu_mutex_lock(&mc->lock);
        *info->mc = mc->stats;
        qemu_mutex_unlock(&mc->lock);
        /* BQL: QMP and HMP hold it */
        mc_participants_fill_info(info->mc, mc->role == MC_ROLE_PRIMARY);
    } else if (info->has_status && info->status == MIGRATION_STATUS_MC) {
        /*
         * Precopy has completed into "mc" and the primary's session is
         * about to start: report the new session, not the last one.
         */
        info->mc = g_new0(MCInfo, 1);
        info->mc->role = MC_ROLE_PRIMARY;
        info->mc->staging_size = migrate_mc_max_buffer_size();
    } else if (mc_last_stats) {
        info->mc = g_memdup2(mc_last_stats, sizeof(MCInfo));
    }
}

void hmp_info_mc(Monitor *mon, const QDict *qdict)
{
    MigrationInfo info = { 0 };
    MCInfo *m;

    mc_fill_info(&info);
    m = info.mc;
    if (!m) {
        monitor_printf(mon, "Micro-checkpointing has not run\n");
        return;
    }
    monitor_printf(mon, "MC role: %s%s\n", MCRole_str(m->role),
                   mc_current ? "" : " (ended)");
    monitor_printf(mon, "checkpoints: %" PRIu64 " taken/received, %" PRIu64
                   " acked, %" PRIu64 " applied, %" PRIu64 " refused\n",
                   m->checkpoints, m->acked, m->applied, m->refused);
    monitor_printf(mon, "last acked epoch: %" PRIu64 "\n",
                   m->last_acked_epoch);
    monitor_printf(mon, "pause: last %" PRIu64 " us, avg %" PRIu64
                   " us, max %" PRIu64 " us\n",
                   m->pause_last_us, m->pause_avg_us, m->pause_max_us);
    monitor_printf(mon, "transfer: last %" PRIu64 " us, avg %" PRIu64
                   " us; in flight %" PRIu64 " (at most %" PRIu64 ")\n",
                   m->transfer_last_us, m->transfer_avg_us, m->in_flight,
                   m->in_flight_max);
    monitor_printf(mon, "bytes: %" PRIu64 " total, %" PRIu64 " last\n",
                   m->bytes, m->last_bytes);
    monitor_printf(mon, "dirty pages last epoch: %" PRIu64
                   ", epoch length: %" PRIu64 " ms, early: %" PRIu64 "\n",
                   m->dirty_pages_last, m->epoch_ms, m->early_checkpoints);
    monitor_printf(mon, "staging: %" PRIu64 " bytes, high water %" PRIu64
                   "\n", m->staging_size, m->staging_high_water);
    monitor_printf(mon, "net: %" PRIu64 " NICs held, %" PRIu64
                   " packets (%" PRIu64 " bytes) held now, %" PRIu64
                   " released (%" PRIu64 " bytes)\n",
                   m->net_buffers, m->net_held_packets, m->net_held_bytes,
                   m->net_released_packets, m->net_released_bytes);
    monitor_printf(mon, "disk: %" PRIu64 " disks, %" PRIu64 " writes (%"
                   PRIu64 " bytes) replicated, last checkpoint %" PRIu64
                   " writes (%" PRIu64 " bytes, %" PRIu64 " us), backlog %"
                   PRIu64 " bytes, initial copy %" PRIu64 " bytes\n",
                   m->disk_count, m->disk_writes, m->disk_bytes,
                   m->disk_writes_last, m->disk_bytes_last,
                   m->disk_pause_last_us, m->disk_backlog_bytes,
                   m->disk_initial_bytes);
    monitor_printf(mon, "net hold: avg %" PRIu64 " us, max %" PRIu64
                   " us, throttled %" PRIu64 " times\n",
                   m->net_hold_avg_us, m->net_hold_max_us, m->net_throttled);
    monitor_printf(mon, "vCPU throttle: %" PRIu64 "%% now, %" PRIu64
                   "%% at most, %" PRIu64 " checkpoints throttled; %" PRIu64
                   " waited for room\n", m->throttle_percentage,
                   m->throttle_max_percentage, m->throttled_checkpoints,
                   m->room_waits);
    g_free(m);
}

void hmp_mc_set_delay(Monitor *mon, const QDict *qdict)
{
    MigrateSetParameters p = {
        .has_mc_delay = true,
    };
    int64_t delay = qdict_get_int(qdict, "value");
    Error *err = NULL;

    if (delay < 0 || delay > MC_MAX_DELAY_MS) {
        error_setg(&err, "mc-set-delay: the delay must be between 0 and %d "
                   "ms", MC_MAX_DELAY_MS);
    } else {
        p.mc_delay = delay;
        qmp_migrate_set_parameters(&p, &err);
    }
    hmp_handle_error(mon, err);
}

void hmp_mc_failover(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_mc_failover(&err);
    hmp_handle_error(mon, err);
}
