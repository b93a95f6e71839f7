/*
 * Micro-checkpointing (MC): the standby.
 *
 * mc_standby_co() runs in the incoming migration coroutine once the
 * initial state is loaded and yields until MC ends.  The "mc-rx" thread
 * receives each checkpoint whole into the staging buffer
 * (mc_checkpoint_receive), verifies its checksum and its form
 * (mc_checkpoint_verify), acknowledges it and applies it
 * (mc_checkpoint_apply: RAM and disk writes now, with the BQL; the
 * device state is kept and loaded once, when the standby leaves MC, see
 * mc-failover.c).  A corrupt, malformed or out-of-order checkpoint is
 * refused and the last applied one stays.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "exec/target_page.h"
#include "qapi/error.h"
#include "qapi/qapi-events-mc.h"
#include "migration/misc.h"
#include "system/cpus.h"
#include "system/runstate.h"
#include "system/system.h"
#include "migration.h"
#include "qemu-file.h"
#include "savevm.h"
#include "mc-session.h"
#include "mc-block.h"
#include "mc-verify.h"
#include "trace.h"

/*
 * Receive checkpoint @h into staging and verify it.  Returns 1 when it is
 * whole and intact, 0 when it is corrupt (the stream is still in step), -1
 * when the link failed.
 */
static int mc_checkpoint_receive(MCSession *mc, const MCWireHeader *h,
                                 Error **errp)
{
    int ret = mc_transport_recv_payload(mc->transport, h, mc->staging->data,
                                        errp);

    if (ret >= 0) {
        mc->staging->high_water = MAX(mc->staging->high_water, h->len);
    }
    return ret;
}

static MCSectionKind mc_standby_section_kind(uint32_t section_id,
                                             void *opaque)
{
    const char *idstr = qemu_loadvm_section_idstr(section_id);

    if (!g_strcmp0(idstr, "ram")) {
        return MC_SECTION_RAM;
    }
    if (!g_strcmp0(idstr, "mc-block")) {
        return MC_SECTION_BLOCK;
    }
    return MC_SECTION_OTHER;
}

static int64_t mc_standby_ram_block_size(const char *name, void *opaque)
{
    return mc_ram_block_size(name);
}

static int64_t mc_standby_disk_size(uint32_t disk, void *opaque)
{
    return mc_block_standby_disk_size(disk);
}

static const MCVerifyOps mc_standby_verify_ops = {
    .section_kind = mc_standby_section_kind,
    .ram_block_size = mc_standby_ram_block_size,
    .disk_size = mc_standby_disk_size,
};

/*
 * Check that received checkpoint @h holds only what its loaders take,
 * before anything of it is applied or acknowledged (mc-verify.h).
 * BQL: the disk list and the section table are the main loop's.
 */
static int mc_checkpoint_verify(MCSession *mc, const MCWireHeader *h,
                                MCVerifyResult *res, Error **errp)
{
    MCVerify v = {
        .ops = &mc_standby_verify_ops,
        .page_size = qemu_target_page_size(),
        .footers = migrate_get_current()->send_section_footer,
    };

    return mc_verify_checkpoint(&v, mc->staging->data, h->len, res, errp);
}

/*
 * Apply a verified checkpoint: its RAM pages and disk writes now (BQL
 * held), its device state only kept.  Loading devices means resetting
 * them first, which costs more than the rest of an idle checkpoint, and
 * nothing reads the standby's devices before it leaves MC: they are
 * loaded once, from the last applied checkpoint, then.  Whatever fails
 * here fails after the check above, in the loaders or the disks.
 */
static int mc_checkpoint_apply(MCSession *mc, const MCVerifyResult *v)
{
    int ret;

    mc_staging_set_readable(mc->staging, v->devices_at);
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
    memcpy(mc->devices->data, mc->staging->data + v->devices_at,
           v->devices_len);
    mc_staging_set_readable(mc->devices, v->devices_len);
    mc->devices_pending = true;
    return 0;
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

static void *mc_standby_rx_thread(void *opaque)
{
    MCSession *mc = opaque;
    uint64_t allocs = 0;

    rcu_register_thread();
    /* per checkpoint, with the heartbeats received since the last one */
    mc_alloc_count_into(&allocs);
    for (;;) {
        Error *err = NULL;
        MCVerifyResult vres;
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
            if (h.flags == MC_STOP_SWITCHOVER) {
                /* it has acknowledged the checkpoint applied last */
                mc->switch_requested = true;
                mc_session_set_state(mc, MC_STATE_FAILOVER_REQUESTED);
            } else {
                mc_session_set_state(mc, MC_STATE_STOPPING);
            }
            qemu_mutex_unlock(&mc->lock);
            trace_mc_standby_stop(h.flags);
            break;
        }
        if (h.type != MC_MSG_CHECKPOINT) {
            error_setg(&err, "MC: unexpected %s message from the primary",
                       mc_msg_name(h.type));
            mc_session_fail(mc, err);
            mc_peer_lost(mc, MC_LOSS_REASON_PROTOCOL_ERROR);
            break;
        }

        ret = mc_checkpoint_receive(mc, &h, &err);
        if (ret < 0) {
            /* the partial checkpoint is dropped: the last one stays */
            error_report_err(err);
            mc_peer_lost(mc, mc_transport_loss_reason(mc->transport));
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

        bql_lock();
        ret = mc_checkpoint_verify(mc, &h, &vres, &err);
        bql_unlock();
        if (ret < 0) {
            /* nothing of it was applied: the last checkpoint stays whole */
            mc_standby_refuse(mc, h.epoch, MC_NACK_MALFORMED, err);
            continue;
        }

        /* Whole and well formed: acknowledge first, so output flows sooner */
        mc_send(mc, MC_MSG_ACK, 0, h.epoch, NULL, 0, NULL);
        bql_lock();
        ret = mc_checkpoint_apply(mc, &vres);
        bql_unlock();
        /* applying a large checkpoint is not silence */
        qatomic_set(&mc->transport->last_rx_us, mc_now_us());
        if (ret < 0) {
            /* half applied: this standby is no longer a valid copy */
            error_setg_errno(&err, -ret, "MC: applying checkpoint %" PRIu64
                             " failed; this standby stays stopped", h.epoch);
            mc_session_fail(mc, err);
            mc_send(mc, MC_MSG_NACK, MC_NACK_APPLY_FAILED, h.epoch, NULL, 0,
                    NULL);
            qemu_mutex_lock(&mc->lock);
            /* stay stopped, never resume */
            mc_session_set_state(mc, MC_STATE_STOPPING);
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
        mc->stats.allocations += allocs;
        mc->stats.allocations_last = allocs;
        allocs = 0;
        qemu_mutex_unlock(&mc->lock);
        trace_mc_checkpoint_applied(h.epoch, h.len);
    }
    mc_alloc_count_into(NULL);

    aio_bh_schedule_oneshot(qemu_get_aio_context(), mc_standby_decide_bh, mc);
    rcu_unregister_thread();
    return NULL;
}

/*
 * Whether the incoming migration being loaded is an MC standby's, which
 * does not put its vCPUs' state when precopy ends: it does so when it
 * leaves MC (mc-failover.c), or in mc_standby_co() if MC cannot start.
 * Under KVM the put writes guest RAM (the guest's wall clock), and the
 * primary would never send that page again.  Not for loadvm.
 */
bool mc_standby_defers_cpu_put(void)
{
    return migrate_mc() &&
           migration_incoming_get_current()->state == MIGRATION_STATUS_ACTIVE;
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
        cpu_synchronize_all_post_init();    /* not done after precopy */
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
    mc_transport_setup(mc->transport);
    trace_mc_standby_start(mc->staging->capacity);

    /* the initial state is loaded: this side is a valid copy from here */
    qemu_mutex_lock(&mc->lock);
    mc_session_set_state(mc, MC_STATE_ACTIVE);
    qemu_mutex_unlock(&mc->lock);
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
    failover = mc->state == MC_STATE_FAILOVER;
    migrate_set_state(&mis->state, MIGRATION_STATUS_MC,
                      MIGRATION_STATUS_ACTIVE);
    if (failover) {
        /* the guest continues from the last applied checkpoint */
        autostart = true;
        trace_mc_failover(MCRole_str(MC_ROLE_STANDBY), mc->applied_epoch);
        qapi_event_send_mc_failover(MC_ROLE_STANDBY, mc->end_reason,
                                    mc->applied_epoch);
    } else {
        runstate_set(RUN_STATE_PAUSED);
        if (mc->error) {
            /* this copy is broken: say why in query-migrate */
            migrate_set_error(s, mc->error);
        }
        migrate_set_state(&mis->state, MIGRATION_STATUS_ACTIVE,
                          mc->error ? MIGRATION_STATUS_FAILED :
                                      MIGRATION_STATUS_COMPLETED);
        migration_incoming_state_destroy();
    }
    mc_session_free(mc);
    mc_participants_standby_end();
    return failover;
}
