/*
 * Micro-checkpointing (MC): the standby's way out of MC, and mc-failover.
 *
 * When the standby's receive thread ends (the primary was lost, or said
 * stop), mc_standby_decide_bh() applies mc-failover-policy: resume the
 * guest here (failover), stay stopped, or wait for management.  Before
 * the guest runs here, the device state of the last applied checkpoint
 * is loaded (mc_standby_load_devices).  qmp_mc_failover() is management
 * acting on a loss it detected, on either side.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-mc.h"
#include "qapi/qapi-events-mc.h"
#include "system/runstate.h"
#include "system/system.h"
#include "migration.h"
#include "options.h"
#include "qemu-file.h"
#include "savevm.h"
#include "mc-session.h"
#include "trace.h"

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
        Error *err = NULL;

        error_setg_errno(&err, -ret, "MC: loading the device state of "
                         "checkpoint %" PRIu64 " failed; this standby "
                         "cannot run the guest", mc->applied_epoch);
        mc_session_fail(mc, err);
        return false;
    }
    return true;
}

/* Before the guest may run here: its devices as of the last checkpoint */
static void mc_standby_finish_devices(MCSession *mc)
{
    if (!mc_standby_load_devices(mc)) {
        qemu_mutex_lock(&mc->lock);
        mc->outcome = MC_OUTCOME_STOP;      /* this copy cannot run */
        qemu_mutex_unlock(&mc->lock);
    }
}

/*
 * The receive thread ended: resume the guest here (failover), stay
 * stopped (the primary said so, or this copy is broken), or wait for
 * management, as mc-failover-policy says.  Main loop, BQL held.
 */
void mc_standby_decide_bh(void *opaque)
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
