/*
 * Micro-checkpointing (MC): the session both roles share, liveness, and
 * what management sees (statistics, HMP).
 *
 * Both sides run an "mc-hb" thread that sends heartbeats and declares the
 * peer lost when it goes silent (mc_peer_lost); what a side then does is
 * the failover policy (mc-primary.c for the primary, mc-failover.c for
 * the standby).  See mc-session.h for which file does what.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-mc.h"
#include "qapi/qapi-commands-migration.h"
#include "qobject/qdict.h"
#include "monitor/monitor.h"
#include "monitor/hmp.h"
#include "migration.h"
#include "options.h"
#include "qemu-file.h"
#include "mc-session.h"
#include "trace.h"

MCSession *mc_current;
static MCInfo *mc_last_stats;   /* kept for query-migrate after MC ends */

int64_t mc_now_us(void)
{
    return qemu_clock_get_us(QEMU_CLOCK_REALTIME);
}

MCSession *mc_session_new(MCRole role, QIOChannel *ioc, Error **errp)
{
    MCSession *mc;
    MCTransport *t = mc_transport_new(ioc, errp);
    MCStaging *st;

    if (!t) {
        return NULL;
    }
    st = mc_staging_new(migrate_mc_max_buffer_size(), errp);
    if (!st) {
        mc_transport_free(t);
        return NULL;
    }
    mc = g_new0(MCSession, 1);
    mc->role = role;
    mc->transport = t;
    mc->staging = st;
    mc->sfile = role == MC_ROLE_PRIMARY ?
        qemu_file_new_output(QIO_CHANNEL(st)) :
        qemu_file_new_input(QIO_CHANNEL(st));
    qemu_sem_init(&mc->hb_sem, 0);
    qemu_mutex_init(&mc->lock);
    qemu_cond_init(&mc->cond);
    mc->state = MC_STATE_SETUP;
    mc->loss_reason = mc->end_reason = MC_LOSS_NONE;
    mc->stats.role = role;
    mc->stats.state = MC_STATE_SETUP;
    mc->stats.staging_size = st->capacity;
    mc->stats.has_allocations = mc_alloc_countable();
    mc->stats.has_allocations_last = mc->stats.has_allocations;
    return mc;
}

#define MC_STATE_BIT(s)     (1u << MC_STATE_##s)

/* Where a session may go from each state; the rest are refused. */
static const unsigned mc_state_next[MC_STATE__MAX] = {
    [MC_STATE_SETUP] = MC_STATE_BIT(ACTIVE) | MC_STATE_BIT(LOST) |
        MC_STATE_BIT(CANCELLING) | MC_STATE_BIT(FAILOVER_REQUESTED),
    [MC_STATE_ACTIVE] = MC_STATE_BIT(LOST) | MC_STATE_BIT(CANCELLING) |
        MC_STATE_BIT(FAILOVER_REQUESTED) | MC_STATE_BIT(STOPPING) |
        MC_STATE_BIT(SWITCHOVER),
    /* the standby is lost, or migrate_cancel, before it took over */
    [MC_STATE_SWITCHOVER] = MC_STATE_BIT(LOST) | MC_STATE_BIT(CANCELLING),
    /* a STOP read before the loss was noticed still counts */
    [MC_STATE_LOST] = MC_STATE_BIT(CANCELLING) |
        MC_STATE_BIT(FAILOVER_REQUESTED) | MC_STATE_BIT(STOPPING) |
        MC_STATE_BIT(WAITING) | MC_STATE_BIT(FAILOVER),
    /* a primary alive enough to say STOP wins over mc-failover */
    [MC_STATE_FAILOVER_REQUESTED] = MC_STATE_BIT(CANCELLING) |
        MC_STATE_BIT(STOPPING) | MC_STATE_BIT(FAILOVER),
    [MC_STATE_STOPPING] = MC_STATE_BIT(STOPPED),
    [MC_STATE_WAITING] = MC_STATE_BIT(FAILOVER),
    /* the devices of the last checkpoint could not be loaded */
    [MC_STATE_FAILOVER] = MC_STATE_BIT(STOPPED),
};

/* The states only one role has */
static const unsigned mc_state_primary_only = MC_STATE_BIT(CANCELLING) |
    MC_STATE_BIT(SWITCHOVER);
static const unsigned mc_state_standby_only = MC_STATE_BIT(STOPPING) |
    MC_STATE_BIT(WAITING) | MC_STATE_BIT(FAILOVER) | MC_STATE_BIT(STOPPED);

/*
 * Move the session to @to if that is allowed from where it is; false
 * (and nothing changes) if not.  Wakes whoever waits on mc->cond.
 * mc->lock held.
 */
bool mc_session_set_state(MCSession *mc, MCState to)
{
    MCState from = mc->state;
    unsigned other_role = mc->role == MC_ROLE_PRIMARY ?
        mc_state_standby_only : mc_state_primary_only;
    bool ok = (mc_state_next[from] & (1u << to)) && !(other_role & (1u << to));

    trace_mc_state(MCRole_str(mc->role), MCState_str(from), MCState_str(to),
                   ok);
    if (ok) {
        mc->state = to;
        mc->stats.state = to;
        qemu_cond_broadcast(&mc->cond);
    }
    return ok;
}

/* For traces: MCLossReason_str() asserts on MC_LOSS_NONE */
const char *mc_loss_str(MCLossReason reason)
{
    return reason == MC_LOSS_NONE ? "none" : MCLossReason_str(reason);
}

/*
 * The peer is lost for @reason.  Only the first detection counts (see
 * mc_peer_lost); a session still in MC moves to "lost".  True if this
 * was the first.  mc->lock held.
 */
bool mc_session_lost(MCSession *mc, MCLossReason reason)
{
    if (mc->loss_reason != MC_LOSS_NONE) {
        return false;
    }
    mc->loss_reason = reason;
    if (mc->state == MC_STATE_SETUP || mc->state == MC_STATE_ACTIVE ||
        mc->state == MC_STATE_SWITCHOVER) {
        mc_session_set_state(mc, MC_STATE_LOST);
    }
    qemu_cond_broadcast(&mc->cond);
    return true;
}

/*
 * An error that ends MC: reported now, and the first one is kept for
 * query-migrate's error-desc (the primary puts it in its final error,
 * the standby sets it as the migration error).  Takes @err.
 */
void mc_session_fail_locked(MCSession *mc, Error *err)
{
    error_report_err(error_copy(err));
    if (mc->error) {
        error_free(err);
    } else {
        mc->error = err;
    }
}

void mc_session_fail(MCSession *mc, Error *err)
{
    qemu_mutex_lock(&mc->lock);
    mc_session_fail_locked(mc, err);
    qemu_mutex_unlock(&mc->lock);
}

/* Keep the statistics for query-migrate, then free the session. */
void mc_session_free(MCSession *mc)
{
    MCInfo *info = g_new(MCInfo, 1);

    qemu_mutex_lock(&mc->lock);
    *info = mc->stats;
    info->staging_high_water = mc->staging->high_water;
    qemu_mutex_unlock(&mc->lock);
    mc_participants_fill_info(info, mc->role == MC_ROLE_PRIMARY);
    g_free(mc_last_stats);
    mc_last_stats = info;

    /* the file holds a reference of its own to the staging channel */
    qemu_fclose(mc->sfile);
    object_unref(OBJECT(mc->staging));
    if (mc->devices) {
        object_unref(OBJECT(mc->devices));
    }
    mc_transport_free(mc->transport);
    error_free(mc->error);
    qemu_sem_destroy(&mc->hb_sem);
    qemu_mutex_destroy(&mc->lock);
    qemu_cond_destroy(&mc->cond);
    g_free(mc);
}

int mc_send(MCSession *mc, MCMsgType type, uint32_t flags,
            uint64_t epoch, const struct iovec *iov, size_t niov,
            Error **errp)
{
    return mc_transport_send(mc->transport, type, flags, epoch, iov, niov,
                             errp);
}

/*
 * Record that the peer is lost.  Only the first detection counts: in
 * particular a reset seen after a heartbeat timeout proves nothing about
 * the peer (the link may have healed and the peer's host answered for a
 * socket the peer had already given up), so it cannot upgrade a timeout
 * into a "peer-closed" that the safe policy would act on.  The channel
 * is shut down so that every thread blocked on it returns (but see
 * below).
 */
void mc_peer_lost(MCSession *mc, MCLossReason reason)
{
    bool first;

    qemu_mutex_lock(&mc->lock);
    first = mc_session_lost(mc, reason);
    qemu_mutex_unlock(&mc->lock);
    if (first) {
        trace_mc_peer_lost(MCRole_str(mc->role), MCLossReason_str(reason));
        /*
         * A primary that gives up on a standby which misbehaves (refuses
         * checkpoints, sends nonsense) must still tell it to stay stopped
         * (mc_primary_run does, as it leaves): a channel closed now looks
         * like a dead primary to the standby, and its safe policy would
         * take over while this side runs on.
         */
        if (mc->role != MC_ROLE_PRIMARY ||
            reason != MC_LOSS_REASON_PROTOCOL_ERROR) {
            mc_transport_shutdown(mc->transport);
        }
    }
}

/* Heartbeats both ways, and the watchdog that notices a silent peer. */
void *mc_hb_thread(void *opaque)
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
        if (now - qatomic_read(&mc->transport->last_rx_us) > timeout_us) {
            mc_peer_lost(mc, MC_LOSS_REASON_HEARTBEAT_TIMEOUT);
            break;
        }
        /* A sender busy with a checkpoint is traffic enough: don't queue. */
        if (now - qatomic_read(&mc->transport->last_tx_us) >=
            timeout_us / 4) {
            mc_transport_try_send(mc->transport, mc->role == MC_ROLE_PRIMARY ?
                                  MC_MSG_HEARTBEAT :
                                  MC_MSG_STANDBY_HEARTBEAT, 0);
        }
    }
    rcu_unregister_thread();
    return NULL;
}

void mc_threads_stop(MCSession *mc)
{
    mc_transport_shutdown(mc->transport);
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
bool mc_recv_header(MCSession *mc, uint64_t max_len, MCWireHeader *h)
{
    Error *err = NULL;
    int ret = mc_transport_recv_header(mc->transport, max_len, h, &err);

    if (ret > 0) {
        return true;
    }
    if (ret == MC_WIRE_BAD_HEADER) {
        mc_session_fail(mc, err);
        mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
    } else {
        error_free(err);
        mc_peer_lost(mc, mc_transport_loss_reason(mc->transport));
    }
    return false;
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
    monitor_printf(mon, "dirty pages last epoch: %" PRIu64 " (at most %"
                   PRIu64 "), epoch length: %" PRIu64 " ms, early: %" PRIu64
                   "\n", m->dirty_pages_last, m->dirty_pages_max, m->epoch_ms,
                   m->early_checkpoints);
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
    monitor_printf(mon, "net hold: avg %" PRIu64 " us, p50 %" PRIu64
                   " us, p99 %" PRIu64 " us, max %" PRIu64
                   " us, throttled %" PRIu64 " times\n",
                   m->net_hold_avg_us, m->net_hold_p50_us, m->net_hold_p99_us,
                   m->net_hold_max_us, m->net_throttled);
    monitor_printf(mon, "output-triggered: %" PRIu64 " checkpoints (%" PRIu64
                   " deferred by the pause budget); paused %.1f%% of the "
                   "last second\n", m->output_checkpoints,
                   m->output_deferred, m->pause_percentage);
    monitor_printf(mon, "vCPU throttle: %" PRIu64 "%% now, %" PRIu64
                   "%% at most, %" PRIu64 " checkpoints throttled; %" PRIu64
                   " waited for room\n", m->throttle_percentage,
                   m->throttle_max_percentage, m->throttled_checkpoints,
                   m->room_waits);
    monitor_printf(mon, "page copy: last %" PRIu64 " us by %" PRIu64
                   " threads; %" PRIu64 " checkpoints copied in parallel\n",
                   m->copy_last_us, m->copy_threads_last,
                   m->copy_parallel_checkpoints);
    if (m->has_allocations) {
        monitor_printf(mon, "heap allocations on the checkpoint path: %"
                       PRIu64 ", last checkpoint %" PRIu64 "\n",
                       m->allocations, m->allocations_last);
    }
    monitor_printf(mon, "dirty-bitmap words read, last checkpoint: %" PRIu64
                   "\n", m->bitmap_words_last);
    if (m->dirty_bound_pages) {
        monitor_printf(mon, "dirty ring bound: %" PRIu64 " pages an epoch; "
                       "vCPUs waited %" PRIu64 " times, %" PRIu64
                       " checkpoints taken for them\n", m->dirty_bound_pages,
                       m->dirty_bound_stalls, m->dirty_bound_checkpoints);
    }
    if (m->pause_polls) {
        monitor_printf(mon, "checkpoints that polled the main loop after "
                       "their barrier: %" PRIu64 "\n", m->pause_polls);
    }
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

void hmp_mc_switchover(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_mc_switchover(&err);
    hmp_handle_error(mon, err);
}
