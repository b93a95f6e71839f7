/*
 * Micro-checkpointing (MC): the primary.
 *
 * On the migration thread once precopy has brought the standby up to
 * date (migration_iteration_finish, state "mc"), mc_primary_run() waits
 * for the standby to be READY, then epoch after epoch waits until a
 * checkpoint is due (mc_primary_wait_epoch) and there is room for it
 * (mc_primary_wait_room), takes it (mc-checkpoint.c) and puts it in the
 * ring.  The "mc-tx" thread sends the checkpoints in the ring, in order,
 * without waiting for ACKs: up to MC_RING_SLOTS are in flight, each in
 * its part of the staging buffer until the standby acknowledges it.
 * The "mc-rx" thread takes the ACKs: it frees the ring and releases the
 * output those checkpoints held back (mc_participants_commit).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-mc.h"
#include "qapi/qapi-events-mc.h"
#include "exec/target_page.h"
#include "migration/mc-dirty-bound.h"
#include "migration/global_state.h"
#include "migration/misc.h"
#include "system/cpu-throttle.h"
#include "system/runstate.h"
#include "migration.h"
#include "migration-stats.h"
#include "options.h"
#include "qemu-file.h"
#include "mc-session.h"
#include "trace.h"

/* How many times the primary resends a checkpoint the standby refused. */
#define MC_MAX_RESENDS          3
/* How long the primary waits for the standby to load the initial state. */
#define MC_READY_TIMEOUT_MS     60000
/* How long migrate_cancel waits for the standby to be told, at least */
#define MC_CANCEL_WAIT_MS       1000
/* How long a live standby has to read STOP before the connection goes */
#define MC_LINGER_MS            2000
/* mc-switchover: for the standby's word, beyond a heartbeat timeout */
#define MC_SWITCH_CONFIRM_MS    5000
/*
 * At most this many checkpoints on the wire beyond the last ACK.  A
 * standby that stops reading (stopped, or a broken link) must not find
 * the socket full of checkpoints: STOP has to fit behind them, or the
 * primary closes the channel and the standby, once it runs again,
 * takes the close for a dead primary (test_net_cancel_releases).
 */
#define MC_SEND_AHEAD           2
/* How often a primary waiting for room looks at the dirty set again */
#define MC_ROOM_POLL_US         5000

/*
 * The running session has told the standby STOP (or gave up trying).
 * Outside the session: migrate_cancel waits for it without the BQL,
 * while the session may be freed.  Atomic.
 */
static bool mc_primary_stop_told;

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
 * a checkpoint, found one malformed, or refused one too often.  mc->lock.
 */
static bool mc_ring_refused(MCSession *mc, uint64_t epoch, uint32_t why)
{
    MCSlot *sl = mc_ring_find(mc, epoch);
    Error *err = NULL;

    mc->stats.refused++;
    if (why == MC_NACK_APPLY_FAILED) {
        error_setg(&err, "MC: the standby failed to apply checkpoint %"
                   PRIu64, epoch);
        mc_session_fail_locked(mc, err);
        return false;
    }
    if (why == MC_NACK_MALFORMED) {
        /* sending the same bytes again cannot help */
        error_setg(&err, "MC: the standby refused checkpoint %" PRIu64
                   " as malformed (do both sides run the same QEMU "
                   "build?); it keeps the checkpoint before", epoch);
        mc_session_fail_locked(mc, err);
        return false;
    }
    if (why != MC_NACK_CORRUPT || !sl) {
        return true;
    }
    if (++sl->resends > MC_MAX_RESENDS) {
        error_setg(&err, "MC: the standby refused checkpoint %" PRIu64
                   " %d times", epoch, MC_MAX_RESENDS + 1);
        mc_session_fail_locked(mc, err);
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
    uint64_t allocs = 0;

    rcu_register_thread();
    /* ACKs and the output they release (counted at the next message) */
    mc_alloc_count_into(&allocs);
    for (;;) {
        Error *err = NULL;
        MCWireHeader h;

        if (!mc_recv_header(mc, 0, &h)) {
            break;
        }
        qemu_mutex_lock(&mc->lock);
        mc->stats.allocations += allocs;
        allocs = 0;
        switch (h.type) {
        case MC_MSG_READY:
            mc_session_set_state(mc, MC_STATE_ACTIVE);
            break;
        case MC_MSG_ACK:
            if (h.epoch > mc->taken_epoch) {
                error_setg(&err, "MC: the standby acknowledged checkpoint %"
                           PRIu64 ", which was not sent", h.epoch);
                mc_session_fail_locked(mc, err);
                qemu_mutex_unlock(&mc->lock);
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
            if (h.flags == MC_NACK_SWITCH_FAILED && mc->switch_epoch) {
                /* it stays stopped: the guest runs on here */
                mc->switch_refused = true;
                break;
            }
            if (!mc_ring_refused(mc, h.epoch, h.flags)) {
                qemu_mutex_unlock(&mc->lock);
                mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
                goto out;
            }
            break;
        case MC_MSG_STANDBY_HEARTBEAT:
            break;
        case MC_MSG_SWITCHED:
            if (!mc->switch_epoch || mc->acked_epoch < mc->switch_epoch) {
                error_setg(&err, "MC: the standby took the guest over "
                           "unasked");
                mc_session_fail_locked(mc, err);
                qemu_mutex_unlock(&mc->lock);
                mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
                goto out;
            }
            /* the last word: the standby's close that follows is no loss */
            mc->switched = true;
            qemu_cond_broadcast(&mc->cond);
            qemu_mutex_unlock(&mc->lock);
            goto out;
        default:
            error_setg(&err, "MC: unexpected %s message from the standby",
                       mc_msg_name(h.type));
            mc_session_fail_locked(mc, err);
            qemu_mutex_unlock(&mc->lock);
            mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
            goto out;
        }
        qemu_cond_broadcast(&mc->cond);
        qemu_mutex_unlock(&mc->lock);
    }
out:
    mc_alloc_count_into(NULL);
    qemu_mutex_lock(&mc->lock);
    mc->rx_running = false;
    qemu_cond_broadcast(&mc->cond);
    qemu_mutex_unlock(&mc->lock);
    rcu_unregister_thread();
    return NULL;
}

/*
 * Why the loop must stop, or false to go on (a switchover takes one more
 * checkpoint).  Called with mc->lock.
 */
bool mc_primary_should_stop(MCSession *mc, MigrationState *s)
{
    return (mc->state != MC_STATE_SETUP && mc->state != MC_STATE_ACTIVE &&
            mc->state != MC_STATE_SWITCHOVER) ||
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
     * The first epoch (the rate is not known yet: a sample taken while
     * the vCPUs are just starting is far too low, and precopy's rate was
     * measured under its throttle), and while the guest dirties fast
     * enough to need early checkpoints or the throttle: its dirtying
     * comes in bursts that no average predicts.
     */
    if (!mc->stats.checkpoints || mc->dirty_rate <= 0 || mc->last_early ||
        mc->throttle_pct) {
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
 * The pause budget.  A guest that sends a packet every millisecond
 * would otherwise be paused after each one.  Credit accrues at
 * mc-pause-budget percent of the time and every pause spends its
 * length; a checkpoint that held output triggers starts only once the
 * credit covers the pause expected of it.  The credit is capped at a
 * budget's share of MC_BUDGET_WINDOW_US (a request after a quiet spell
 * goes at once) and floored at minus that (checkpoints that could not
 * wait, due to mc-delay or the buffer, are paid back).  Migration
 * thread only.
 */
#define MC_BUDGET_WINDOW_US     100000

static double mc_primary_budget_cap(MCSession *mc, double rate)
{
    /* never below the pause itself, or a checkpoint would never fit */
    return MAX(rate * MC_BUDGET_WINDOW_US, 2 * mc->pause_expect_us);
}

/* The earliest time from which the budget allows such a checkpoint */
static int64_t mc_primary_budget_ready(MCSession *mc)
{
    double rate = migrate_mc_pause_budget() / 100.0;

    if (rate >= 1.0 || mc->budget_credit_us >= mc->pause_expect_us) {
        return 0;
    }
    return mc->budget_at_us +
           (int64_t)((mc->pause_expect_us - mc->budget_credit_us) / rate) + 1;
}

/* A checkpoint paused the guest for @pause_us until @end_us */
static void mc_primary_budget_spend(MCSession *mc, int64_t end_us,
                                    int64_t pause_us)
{
    double rate = migrate_mc_pause_budget() / 100.0;
    double cap;

    mc->pause_expect_us = mc->pause_expect_us ?
        mc->pause_expect_us * 0.75 + pause_us * 0.25 : pause_us;
    cap = mc_primary_budget_cap(mc, rate);
    if (mc->budget_at_us) {
        mc->budget_credit_us += (end_us - pause_us - mc->budget_at_us) *
                                rate;
    } else {
        mc->budget_credit_us = cap;
    }
    /* accrued while paused too: the share is of all the time */
    mc->budget_credit_us = MIN(mc->budget_credit_us + pause_us * rate, cap);
    mc->budget_credit_us = MAX(mc->budget_credit_us - pause_us, -cap);
    mc->budget_at_us = end_us;

    /* the statistic: the share of the last second or so */
    mc->share_pause_us += pause_us;
    if (!mc->share_start_us) {
        mc->share_start_us = end_us - pause_us;
    }
    if (end_us - mc->share_start_us >= 1000000) {
        qemu_mutex_lock(&mc->lock);
        mc->stats.pause_percentage = 100.0 * mc->share_pause_us /
                                     (end_us - mc->share_start_us);
        qemu_mutex_unlock(&mc->lock);
        mc->share_start_us = end_us;
        mc->share_pause_us = 0;
    }
}

/*
 * The guest sent the first packet of @epoch (filter-mc's packet path,
 * BQL held): the loop may end the epoch early for it.
 */
static void mc_primary_output_held(void *opaque, uint64_t epoch,
                                   int64_t since_us)
{
    MCSession *mc = opaque;

    qemu_mutex_lock(&mc->lock);
    if (epoch > mc->output_epoch) {
        mc->output_epoch = epoch;
        mc->output_since_us = since_us;
        if (migrate_mc_output_latency()) {
            qemu_cond_broadcast(&mc->cond);
        }
    }
    qemu_mutex_unlock(&mc->lock);
}

/*
 * When the next checkpoint is due, and why: mc-delay after the start of
 * the epoch, or sooner when output the guest sent in it has waited
 * mc-output-latency and the pause budget allows.  @deferred_us: how
 * much later than that the budget made it.  mc->lock held.
 */
static int64_t mc_primary_due(MCSession *mc, int64_t epoch_start_us,
                              MCTrigger *why, int64_t *deferred_us)
{
    int64_t due = epoch_start_us + migrate_mc_delay() * 1000LL;
    uint32_t latency = migrate_mc_output_latency();
    int64_t out, ready;

    *why = MC_TRIGGER_INTERVAL;
    *deferred_us = 0;
    if (mc->state == MC_STATE_SWITCHOVER) {
        *why = MC_TRIGGER_SWITCHOVER;
        return epoch_start_us;
    }
    if (!latency || mc->output_epoch <= mc->taken_epoch) {
        return due;
    }
    out = mc->output_since_us + latency;
    ready = MAX(out, mc_primary_budget_ready(mc));
    if (ready < due) {
        *why = MC_TRIGGER_OUTPUT;
        *deferred_us = ready - out;
        return ready;
    }
    return due;
}

static const char *const mc_trigger_names[] = {
    [MC_TRIGGER_INTERVAL] = "interval",
    [MC_TRIGGER_EARLY] = "buffer",
    [MC_TRIGGER_BOUND] = "dirty-bound",
    [MC_TRIGGER_OUTPUT] = "output",
    [MC_TRIGGER_SWITCHOVER] = "switchover",
};

/*
 * Wait until the next checkpoint is due (mc_primary_due), or earlier
 * when the dirty data nears half of the free staging buffer or a vCPU
 * waits at the dirty ring's bound.  Returns false when MC must stop
 * instead; else *@trigger says why now.
 */
static bool mc_primary_wait_epoch(MCSession *mc, MigrationState *s,
                                  int64_t epoch_start_us, MCTrigger *trigger)
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
    size_t last_bytes = 0;

    *trigger = MC_TRIGGER_INTERVAL;
    for (;;) {
        int64_t now = mc_now_us();
        int64_t due, deferred, since;
        MCTrigger why;
        size_t bytes, half;
        bool stop, bound;

        qemu_mutex_lock(&mc->lock);
        due = mc_primary_due(mc, epoch_start_us, &why, &deferred);
        if (!mc_primary_should_stop(mc, s) && now < due && !mc->bound_hit) {
            int64_t wait_us = MIN(due, next_poll) - now;

            if (wait_us >= 1000) {
                /* whole milliseconds, rounded down: the rest below */
                qemu_cond_timedwait(&mc->cond, &mc->lock, wait_us / 1000);
            } else if (wait_us > 0) {     /* <= 0: a poll is due now */
                /*
                 * The condition variable waits whole milliseconds: at
                 * mc-delay 1 every epoch would last 2.  Under a
                 * millisecond, sleep without waking for ACKs (they are
                 * not needed here) or a stop (noticed right after).
                 */
                qemu_mutex_unlock(&mc->lock);
                g_usleep(wait_us);
                qemu_mutex_lock(&mc->lock);
            }
        }
        stop = mc_primary_should_stop(mc, s);
        bound = mc->bound_hit;
        /* output may have come while this waited */
        due = mc_primary_due(mc, epoch_start_us, &why, &deferred);
        since = mc->output_since_us;
        qemu_mutex_unlock(&mc->lock);
        if (stop) {
            return false;
        }
        if (bound) {
            *trigger = MC_TRIGGER_BOUND;
            return true;
        }
        now = mc_now_us();
        if (now >= due) {
            *trigger = why;
            if (why == MC_TRIGGER_OUTPUT) {
                qemu_mutex_lock(&mc->lock);
                mc->stats.output_checkpoints++;
                mc->stats.output_deferred += deferred > 0;
                qemu_mutex_unlock(&mc->lock);
            }
            trace_mc_primary_trigger(mc->taken_epoch + 1,
                                     mc_trigger_names[why],
                                     now - epoch_start_us,
                                     why == MC_TRIGGER_OUTPUT ?
                                     now - since : 0,
                                     deferred, mc->budget_credit_us);
            return true;
        }
        if (now < next_poll) {
            continue;
        }
        bytes = mc_primary_backlog();
        half = mc_primary_free(mc) / 2;
        /*
         * Early already if two more poll periods at the pace of the last
         * one would pass half: the checkpoint is taken some time after
         * this look (the pause needs the BQL and a CPU, both shared with
         * the guest), and a guest this fast fills the other half in
         * that time if it is a few milliseconds.
         */
        if (bytes > half || (bytes > last_bytes &&
                             bytes + 2 * (bytes - last_bytes) > half)) {
            *trigger = MC_TRIGGER_EARLY;
            trace_mc_primary_trigger(mc->taken_epoch + 1, "buffer",
                                     now - epoch_start_us, 0, 0,
                                     mc->budget_credit_us);
            return true;
        }
        last_bytes = bytes;
        /* within an epoch the estimate only goes up (no decay) */
        mc->dirty_rate = MAX(mc->dirty_rate,
                             (double)bytes / MAX(now - epoch_start_us, 1));
        next_poll = now + mc_primary_next_poll(mc, bytes, half, poll);
        trace_mc_primary_poll(bytes, half, next_poll - now);
    }
}

/*
 * Sends the checkpoints in the ring, in epoch order, as soon as they
 * are taken; goes back to a refused one (resend_from).  ACKs are the
 * rx thread's business: several checkpoints may be unacknowledged.
 */
static void *mc_primary_tx_thread(void *opaque)
{
    MCSession *mc = opaque;
    uint64_t allocs = 0;

    rcu_register_thread();
    mc_alloc_count_into(&allocs);
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
        if (mc->tx_stop || mc->loss_reason != MC_LOSS_NONE) {
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
        mc->stats.allocations += allocs;
        allocs = 0;
        qemu_cond_broadcast(&mc->cond);
        if (ret < 0) {
            qemu_mutex_unlock(&mc->lock);
            error_free(err);
            mc_peer_lost(mc, mc_transport_loss_reason(mc->transport));
            qemu_mutex_lock(&mc->lock);
            break;
        }
        if (mc->send_next == epoch) {
            mc->send_next = epoch + 1;
        }
    }
    qemu_mutex_unlock(&mc->lock);
    mc_alloc_count_into(NULL);
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
        mc_transport_shutdown(mc->transport);
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
    while (mc->state == MC_STATE_SETUP && !mc_primary_should_stop(mc, s) &&
           mc_now_us() < deadline) {
        qemu_cond_timedwait(&mc->cond, &mc->lock, 100);
    }
    /* else it timed out or was lost first; cancel and mc-failover go on */
    ready = mc->state != MC_STATE_SETUP && mc->state != MC_STATE_LOST;
    qemu_mutex_unlock(&mc->lock);
    return ready;
}

/*
 * The primary leaves MC and runs on: tell the standby to stay stopped.
 * When the standby is lost this is best effort and never blocks: a
 * standby that cannot be reached is either dead or, behind a broken
 * link, following the failover policy, which does not let it act on a
 * heartbeat timeout alone (safe, manual).  On migrate_cancel, and when
 * this side gave up on a standby that misbehaves (@alive), the standby
 * is alive, maybe just slow: keep trying to queue the message for up
 * to a heartbeat timeout.  Closing the connection without it
 * would look like a dead primary; once the timeout has passed, the
 * standby has noticed a silence first, which it does not act on alone.
 */
static bool mc_primary_tell_stop(MCSession *mc, uint32_t why, bool alive)
{
    int64_t deadline = mc_now_us();
    bool queued;

    if (alive) {
        deadline += migrate_mc_heartbeat_timeout() * 1000LL;
    }
    queued = mc_transport_send_by(mc->transport, MC_MSG_STOP, why, deadline);
    trace_mc_primary_tell_stop(why, queued);
    return queued;
}

/*
 * STOP is queued to a live standby: let it read STOP before the
 * connection goes.  A socket closed with data unread resets the
 * connection, and the reset can destroy STOP on its way (in the peer's
 * receive queue, or in a proxy's): the standby then takes the close for
 * a dead primary and, under the safe policy, runs the guest beside this
 * one.  So: no more heartbeats, end this side's sending, and read until
 * the standby ends its side (the receive thread does while it runs),
 * for at most MC_LINGER_MS.
 */
static void mc_primary_linger(MCSession *mc)
{
    int64_t deadline = mc_now_us() + MC_LINGER_MS * 1000LL;
    bool running;

    if (mc->hb_started) {
        qemu_sem_post(&mc->hb_sem);
        qemu_thread_join(&mc->hb_thread);
        mc->hb_started = false;
    }
    mc_transport_shutdown_write(mc->transport);
    qemu_mutex_lock(&mc->lock);
    while (mc->rx_running && mc_now_us() < deadline) {
        qemu_cond_timedwait(&mc->cond, &mc->lock, 10);
    }
    running = mc->rx_running;
    qemu_mutex_unlock(&mc->lock);
    if (!running) {
        mc_transport_drain_by(mc->transport, deadline);
    }
    trace_mc_primary_linger(running, MC_LINGER_MS -
                            (deadline - mc_now_us()) / 1000);
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
 * A vCPU's dirty ring is full at the bound (mc-dirty-bound.c) and it
 * waits: take the checkpoint now.  vCPU thread, no BQL.
 */
static void mc_primary_bound_full(void *opaque)
{
    MCSession *mc = opaque;

    qemu_mutex_lock(&mc->lock);
    mc->bound_hit = true;
    mc->stats.dirty_bound_stalls++;
    qemu_cond_broadcast(&mc->cond);
    qemu_mutex_unlock(&mc->lock);
}

/*
 * mc-switchover: the loop takes one more checkpoint, with the guest
 * stopped, then ends (mc_primary_switch_finish).  Refused unless the
 * standby is ready and checkpoints flow: a switchover is not a way out
 * of a loss or a cancel.  Monitor, BQL.
 */
void qmp_mc_switchover(Error **errp)
{
    MCSession *mc = mc_current;
    MCState from;

    if (!mc) {
        error_setg(errp, "Micro-checkpointing is not running");
        return;
    }
    if (mc->role != MC_ROLE_PRIMARY) {
        error_setg(errp, "mc-switchover is for the primary: this QEMU is "
                   "the standby");
        return;
    }
    qemu_mutex_lock(&mc->lock);
    from = mc->state;
    if (from != MC_STATE_SWITCHOVER &&
        !mc_session_set_state(mc, MC_STATE_SWITCHOVER)) {
        error_setg(errp, "Micro-checkpointing is in state %s: mc-switchover "
                   "needs it active (the standby ready, checkpoints "
                   "acknowledged)", MCState_str(from));
    }
    qemu_mutex_unlock(&mc->lock);
}

/*
 * Stop the guest for the switchover's checkpoint @epoch.  Its run state
 * is saved first, for the standby to resume it as it was (running, or
 * paused by the user).  A full stop, not the light pause: the
 * state-change handlers run before the device state is saved, as at
 * the end of a migration.  Migration thread, BQL.
 */
static void mc_primary_switch_stop(MCSession *mc, uint64_t epoch)
{
    mc->switch_old_state = runstate_get();
    mc->switch_stop_us = mc_now_us();
    global_state_store();
    vm_stop_force_state(RUN_STATE_FINISH_MIGRATE);
    qemu_mutex_lock(&mc->lock);
    mc->switch_epoch = epoch;
    qemu_mutex_unlock(&mc->lock);
    trace_mc_primary_switch_stop(epoch, RunState_str(mc->switch_old_state));
}

/* The switchover did not happen: the guest goes on here as it was. */
static void mc_primary_switch_resume(MCSession *mc)
{
    Error *err = NULL;

    bql_lock();
    /* its disks, if they were handed over already */
    if (!migration_block_activate(&err)) {
        error_report_err(err);
    }
    if (runstate_is_live(mc->switch_old_state)) {
        vm_start();
    } else {
        runstate_set(mc->switch_old_state);
    }
    bql_unlock();
}

typedef enum MCSwitchOutcome {
    MC_SWITCH_NONE,             /* no switchover */
    MC_SWITCH_DONE,             /* the standby runs the guest */
    MC_SWITCH_ABORTED,          /* it does not: the guest runs on here */
    MC_SWITCH_UNCONFIRMED,      /* it may: the guest stays stopped here */
} MCSwitchOutcome;

static const char *const mc_switch_names[] = {
    [MC_SWITCH_NONE] = "none",
    [MC_SWITCH_DONE] = "done",
    [MC_SWITCH_ABORTED] = "aborted",
    [MC_SWITCH_UNCONFIRMED] = "unconfirmed",
};

/*
 * The guest stopped for the switchover's checkpoint: wait for its ACK,
 * let out what the guest sent before it (the standby has it all now;
 * out before the standby runs the guest, so in order), tell the standby
 * to run the guest and wait for its word.  Until the ACK nothing
 * changed for the standby, so on a loss, a cancel or @err (the
 * checkpoint could not be taken) the guest runs on here; after STOP it
 * stays stopped unless the standby says it cannot run the guest.
 * Migration thread, no BQL.
 */
static MCSwitchOutcome mc_primary_switch_finish(MCSession *mc,
                                                MigrationState *s,
                                                Error *err)
{
    uint64_t last;
    int64_t deadline;
    bool acked, confirmed, refused, handed;

    qemu_mutex_lock(&mc->lock);
    last = mc->switch_epoch;
    /* the heartbeat thread ends this wait when the standby goes silent */
    while (!err && mc->state == MC_STATE_SWITCHOVER &&
           mc->acked_epoch < last &&
           qatomic_read(&s->state) == MIGRATION_STATUS_MC) {
        qemu_cond_wait(&mc->cond, &mc->lock);
    }
    acked = !err && mc->state == MC_STATE_SWITCHOVER &&
            mc->acked_epoch >= last &&
            qatomic_read(&s->state) == MIGRATION_STATUS_MC;
    qemu_mutex_unlock(&mc->lock);
    if (!acked) {
        mc_primary_switch_resume(mc);
        return MC_SWITCH_ABORTED;
    }

    /* nothing is in flight: the ring is empty */
    mc_primary_tx_stop(mc);
    bql_lock();
    mc_participants_switchover(last);
    /*
     * Hand the disks over, as a migration does before it completes: on
     * shared storage the standby cannot take their locks (nor run the
     * guest) while this side holds them.  MC's own disk copies do not
     * care.
     */
    handed = migration_block_inactivate();
    bql_unlock();
    if (!handed) {
        mc->switch_abort = "its disks could not be handed over";
        mc_primary_switch_resume(mc);
        return MC_SWITCH_ABORTED;
    }
    if (!mc_primary_tell_stop(mc, MC_STOP_SWITCHOVER, true)) {
        /* not even queued: the standby cannot have it */
        mc->switch_abort = "the standby could not be told to take over";
        mc_primary_switch_resume(mc);
        return MC_SWITCH_ABORTED;
    }
    qatomic_set(&mc_primary_stop_told, true);
    /* loading the device state is quick; the watchdog runs meanwhile */
    deadline = mc_now_us() + (migrate_mc_heartbeat_timeout() +
                              MC_SWITCH_CONFIRM_MS) * 1000LL;
    qemu_mutex_lock(&mc->lock);
    while (!mc->switched && !mc->switch_refused &&
           mc->state == MC_STATE_SWITCHOVER && mc->rx_running &&
           mc_now_us() < deadline) {
        qemu_cond_timedwait(&mc->cond, &mc->lock, 100);
    }
    confirmed = mc->switched;
    refused = mc->switch_refused && !confirmed;
    qemu_mutex_unlock(&mc->lock);
    if (refused) {
        mc->switch_abort = "the standby cannot run the guest (its device "
                           "state did not load)";
        mc_primary_switch_resume(mc);
        return MC_SWITCH_ABORTED;
    }
    return confirmed ? MC_SWITCH_DONE : MC_SWITCH_UNCONFIRMED;
}

/*
 * The standby took the guest over (@done), or may have: this side's
 * migration ends, completed or failed, with the guest stopped.  Called
 * without the BQL, returns with it held.
 */
static void mc_primary_switch_end(MCSession *mc, MigrationState *s,
                                  bool done)
{
    int64_t downtime_ms = (mc_now_us() - mc->switch_stop_us) / 1000;

    /* a standby that took over closes its side: read until it does */
    mc_primary_linger(mc);
    mc_threads_stop(mc);
    bql_lock();
    mc_current = NULL;
    mc->stats.throttle_percentage = 0;
    runstate_set(RUN_STATE_POSTMIGRATE);
    if (done) {
        /* from the stop to the standby's word that the guest runs there */
        s->downtime = downtime_ms;
    } else {
        Error *why = NULL;

        error_setg(&why, "mc-switchover: the standby acknowledged the last "
                   "checkpoint but did not confirm that it runs the guest%s%s;"
                   " it may: check it before resuming the guest here",
                   mc->error ? ": " : "",
                   mc->error ? error_get_pretty(mc->error) : "");
        migrate_set_error(s, why);
        error_report_err(why);
    }
    migrate_set_state(&s->state, MIGRATION_STATUS_MC,
                      done ? MIGRATION_STATUS_COMPLETED :
                             MIGRATION_STATUS_FAILED);
    trace_mc_primary_switch_end(done, downtime_ms);
    mc_checkpoint_end(mc);
    mc_session_free(mc);
}

/*
 * The session, output held and threads started; or NULL with @errp set
 * and the guest let go.  BQL held, the VM stopped.
 */
static MCSession *mc_primary_start(MigrationState *s, Error **errp)
{
    MCSession *mc;
    int pct;

    mc = mc_session_new(MC_ROLE_PRIMARY, qemu_file_get_ioc(s->to_dst_file),
                        errp);
    /* Hold guest output from the first instruction the guest runs in MC */
    if (mc && !mc_participants_start(mc_primary_output_held, mc, errp)) {
        mc_session_free(mc);
        mc = NULL;
    }
    if (mc && !mc_dirty_bound_start(mc->staging->capacity,
                                    mc_primary_bound_full, mc, errp)) {
        mc_participants_stop();
        mc_session_free(mc);
        mc = NULL;
    }
    if (!mc) {
        mc_guest_start(s);
        return NULL;
    }
    mc_current = mc;
    qatomic_set(&mc_primary_stop_told, false);
    mc->stats.dirty_bound_pages = mc_dirty_bound_pages();
    /*
     * MC owns the vCPU throttle from here.  A guest that precopy had to
     * throttle starts MC throttled as much (MC lowers it once its
     * checkpoints are small); auto-converge's timer, which syncs the
     * dirty log while the guest runs, ends.
     */
    pct = cpu_throttle_get_percentage();
    cpu_throttle_stop();
    mc->throttle_pct = pct;
    mc->stats.throttle_percentage = pct;
    mc->stats.throttle_max_percentage = pct;
    mc_staging_set_room_fn(mc->staging, mc_primary_make_room, mc);
    mc_checkpoint_setup(mc);
    mc_transport_setup(mc->transport);
    mc->rx_running = true;
    qemu_thread_create(&mc->rx_thread, "mc-rx", mc_primary_rx_thread,
                       mc, QEMU_THREAD_JOINABLE);
    mc->rx_started = true;
    return mc;
}

/*
 * Checkpoint after checkpoint until MC must stop.  Returns the last
 * epoch taken; @errp is set if a checkpoint could not be taken.  No BQL.
 */
static uint64_t mc_primary_loop(MCSession *mc, MigrationState *s,
                                Error **errp)
{
    int64_t start = mc_now_us();
    uint64_t epoch = 0;

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
        MCTrigger trigger;

        if (!mc_primary_wait_epoch(mc, s, start, &trigger)) {
            break;
        }
        if (!mc_primary_wait_room(mc, s, &base, &limit)) {
            break;
        }
        bql_lock();
        /* cancelled while this waited: the standby keeps the last one */
        if (!migration_in_mc_state()) {
            bql_unlock();
            break;
        }
        epoch++;
        if (trigger == MC_TRIGGER_SWITCHOVER) {
            mc_primary_switch_stop(mc, epoch);
        }
        if (mc_checkpoint_take(mc, epoch, base, limit, errp) < 0) {
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
        mc->stats.early_checkpoints += trigger == MC_TRIGGER_EARLY ||
                                       trigger == MC_TRIGGER_BOUND;
        mc->stats.dirty_bound_checkpoints += trigger == MC_TRIGGER_BOUND;
        mc->last_early = trigger == MC_TRIGGER_EARLY ||
                         trigger == MC_TRIGGER_BOUND;
        mc->stats.epoch_ms = (pause_end - start) / 1000;
        qemu_cond_broadcast(&mc->cond);
        qemu_mutex_unlock(&mc->lock);
        if (trigger == MC_TRIGGER_SWITCHOVER) {
            break;      /* the last one: mc_primary_switch_finish */
        }
        mc_primary_budget_spend(mc, pause_end, pause_end - mc->pause_start_us);
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
    return epoch;
}

/*
 * MC is over: tell the standby, stop the threads, release the output
 * and move the migration state on.  @err: why a checkpoint could not
 * be taken, or NULL.  Called without the BQL, returns with it held.
 */
static void mc_primary_end(MCSession *mc, MigrationState *s, uint64_t epoch,
                           Error *err)
{
    MCSwitchOutcome sw = MC_SWITCH_NONE;
    MCLossReason reason;
    bool lost, cancelled, requested, alive;
    MigrationStatus end_state;

    /* No vCPU waits for a checkpoint any more */
    mc_dirty_bound_stop();
    if (mc->switch_stop_us) {
        sw = mc_primary_switch_finish(mc, s, err);
        trace_mc_primary_switch(mc->switch_epoch, mc_switch_names[sw]);
        if (sw == MC_SWITCH_DONE || sw == MC_SWITCH_UNCONFIRMED) {
            mc_primary_switch_end(mc, s, sw == MC_SWITCH_DONE);
            return;
        }
        /* aborted: the guest runs on here, MC ends as on a loss */
        qemu_mutex_lock(&mc->lock);
        if (mc->state == MC_STATE_SWITCHOVER && mc->switch_abort) {
            Error *why = NULL;

            error_setg(&why, "mc-switchover: %s; the guest runs on here",
                       mc->switch_abort);
            mc_session_fail_locked(mc, why);
            mc_session_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
        }
        qemu_mutex_unlock(&mc->lock);
    }
    qemu_mutex_lock(&mc->lock);
    if (err) {
        /* a checkpoint could not be taken: the guest runs unprotected */
        mc_session_lost(mc, mc->staging->overflow ?
                        MC_LOSS_REASON_CHECKPOINT_TOO_LARGE :
                        MC_LOSS_REASON_PROTOCOL_ERROR);
    }
    cancelled = mc->state == MC_STATE_CANCELLING ||
                qatomic_read(&s->state) == MIGRATION_STATUS_CANCELLING;
    lost = mc->loss_reason != MC_LOSS_NONE;
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
        while (mc->state == MC_STATE_LOST &&
               qatomic_read(&s->state) == MIGRATION_STATUS_MC) {
            qemu_cond_wait(&mc->cond, &mc->lock);
        }
        cancelled = mc->state == MC_STATE_CANCELLING ||
                    qatomic_read(&s->state) == MIGRATION_STATUS_CANCELLING;
        qemu_mutex_unlock(&mc->lock);
    }
    qemu_mutex_lock(&mc->lock);
    requested = mc->state == MC_STATE_FAILOVER_REQUESTED;
    qemu_mutex_unlock(&mc->lock);

    /* No checkpoint is sent after STOP; the ring is dropped */
    mc_primary_tx_stop(mc);
    /*
     * The standby is alive, maybe just slow, on migrate_cancel and when
     * this side gave up on it (protocol error): make sure it hears STOP.
     */
    alive = cancelled || (lost && reason == MC_LOSS_REASON_PROTOCOL_ERROR);
    if (mc_primary_tell_stop(mc, cancelled ? MC_STOP_CANCEL : MC_STOP_DROPPED,
                             alive) && alive) {
        mc_primary_linger(mc);
    }
    qatomic_set(&mc_primary_stop_told, true);
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
        if (!lost) {
            /* mc-failover, or management moved the migration state on */
            reason = MC_LOSS_REASON_REQUEST;
        }
        end_state = requested ? MIGRATION_STATUS_COMPLETED :
                                MIGRATION_STATUS_FAILED;
        if (!requested) {
            /*
             * What ended it: the first error another thread found (a
             * take that failed after it is a consequence), or this one's.
             */
            Error *detail = mc->error ? mc->error : err;
            Error *why = NULL;

            error_setg(&why, "MC ended, the guest runs unprotected: %s%s%s",
                       MCLossReason_str(reason), detail ? ": " : "",
                       detail ? error_get_pretty(detail) : "");
            /* migration_cleanup() reports it once the thread ends */
            migrate_set_error(s, why);
            error_free(why);
        }
        migrate_set_state(&s->state, MIGRATION_STATUS_MC, end_state);
        qapi_event_send_mc_failover(MC_ROLE_PRIMARY, reason,
                                    mc->stats.last_acked_epoch);
    }
    trace_mc_primary_end(epoch, MigrationStatus_str(end_state));
    mc_checkpoint_end(mc);
    mc_session_free(mc);
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
    uint64_t epoch = 0;
    MCSession *mc;
    bool ready;

    mc = mc_primary_start(s, &err);
    if (!mc) {
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
        epoch = mc_primary_loop(mc, s, &err);
    } else {
        qemu_mutex_lock(&mc->lock);
        if (!mc_primary_should_stop(mc, s)) {
            mc_session_lost(mc, MC_LOSS_REASON_HEARTBEAT_TIMEOUT);
        }
        qemu_mutex_unlock(&mc->lock);
        error_setg(&err, "MC: the standby did not become ready");
    }
    mc_primary_end(mc, s, epoch, err);
    error_free(err);
}

/*
 * Whether precopy may end into MC although it has not converged.  A
 * guest that dirties memory faster than the link never gets under the
 * downtime limit, so MC would never start; MC does not need it to (its
 * checkpoints are bounded by the staging buffer and the throttle).  So
 * once a full pass is done and what remains is at most a quarter of the
 * staging buffer, the initial stop-and-copy sends it and MC begins: a
 * longer first downtime (in query-migrate), then checkpoints.  With
 * mc-switchover after it, this is checkpoint-mode migration.  Migration
 * thread.
 */
bool mc_precopy_may_end(uint64_t pending)
{
    bool may = migrate_mc() &&
               stat64_get(&mig_stats.dirty_sync_count) >= 2 &&
               pending <= migrate_mc_max_buffer_size() / 4;

    if (may) {
        trace_mc_primary_precopy_end(pending);
    }
    return may;
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
    mc_session_set_state(mc, MC_STATE_CANCELLING);
    qemu_mutex_unlock(&mc->lock);
    /*
     * QEMU may be quitting: let the loop tell the standby first, or it
     * would see the connection close and take the primary for dead.
     * The loop may need the BQL on its way out (a checkpoint being
     * taken, a look at the dirty log), so wait without it, as
     * migration_cleanup() does for the migration thread; and on a flag
     * outside the session, which the loop frees once it has the BQL.
     * Bound: the loop waits up to a heartbeat timeout for the sending
     * thread and again to queue STOP, then lingers (mc_primary_linger).
     */
    deadline = mc_now_us() + (2LL * migrate_mc_heartbeat_timeout() +
                              MC_CANCEL_WAIT_MS + MC_LINGER_MS) * 1000;
    bql_unlock();
    while (!qatomic_read(&mc_primary_stop_told) && mc_now_us() < deadline) {
        g_usleep(5000);
    }
    bql_lock();
    return true;
}
