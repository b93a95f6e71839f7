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
#include "system/cpus.h"
#include "system/runstate.h"
#include "system/system.h"
#include "migration.h"
#include "options.h"
#include "qemu-file.h"
#include "savevm.h"
#include "mc-session.h"
#include "trace.h"

/* mc-switchover: how long the standby tries to send its answer */
#define MC_SWITCH_ANSWER_MS     1000

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
        /*
         * No checkpoint applied: the guest goes on from what precopy
         * loaded, whose vCPU state was not put then (savevm.c; under KVM
         * putting it writes guest RAM).  Put it now.
         */
        cpu_synchronize_all_post_init();
        return true;
    }
    mc->devices_pending = false;
    /* the file takes a reference of its own; mc_session_free drops ours */
    f = qemu_file_new_input(QIO_CHANNEL(mc->devices));
    qemu_system_reset(SHUTDOWN_CAUSE_NONE);
    ret = qemu_load_device_state(f);
    if (ret >= 0) {
        ret = qemu_file_get_error(f);
    }
    qemu_fclose(f);
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

/*
 * Before the guest may run here: its devices as of the last checkpoint.
 * If they cannot be loaded, this copy cannot run: it stays stopped.
 */
static void mc_standby_finish_devices(MCSession *mc)
{
    if (!mc_standby_load_devices(mc)) {
        qemu_mutex_lock(&mc->lock);
        if (mc->state == MC_STATE_FAILOVER) {
            mc_session_set_state(mc, MC_STATE_STOPPED);
        }
        qemu_mutex_unlock(&mc->lock);
    }
}

/*
 * mc-switchover: tell the primary whether the guest runs here, before it
 * does.  The primary keeps its copy stopped either way but for "cannot".
 * A short wait: the main loop must not hang on a primary gone silent.
 */
static void mc_standby_switch_answer(MCSession *mc, bool runs)
{
    bool sent = mc_transport_send_by(mc->transport,
                                     runs ? MC_MSG_SWITCHED : MC_MSG_NACK,
                                     runs ? 0 : MC_NACK_SWITCH_FAILED,
                                     mc_now_us() + MC_SWITCH_ANSWER_MS *
                                     1000LL);

    trace_mc_standby_switch(runs, sent);
}

/* The decision is made: resume the guest here or stay stopped. */
static void mc_standby_leave(MCSession *mc)
{
    mc_standby_finish_devices(mc);
    if (mc->switch_requested) {
        mc_standby_switch_answer(mc, mc->state == MC_STATE_FAILOVER);
    }
    if (mc->state == MC_STATE_FAILOVER) {
        mc_participants_failover();
    }
    aio_co_wake(mc->co);
}

/*
 * The receive thread ended: resume the guest here (failover), stay
 * stopped (the primary said so, or this copy is broken), or wait for
 * management, as mc-failover-policy says.  Main loop, BQL held; the
 * state is "stopping", "failover-requested" or "lost" (the receive
 * thread ends only after one of those).
 */
void mc_standby_decide_bh(void *opaque)
{
    MCSession *mc = opaque;
    MCFailoverPolicy policy = migrate_mc_failover_policy();
    MCState state;
    bool act;

    qemu_mutex_lock(&mc->lock);
    switch (mc->state) {
    case MC_STATE_STOPPING:
        mc_session_set_state(mc, MC_STATE_STOPPED);
        break;
    case MC_STATE_FAILOVER_REQUESTED:
        mc->end_reason = mc->switch_requested ? MC_LOSS_REASON_SWITCHOVER :
                                                MC_LOSS_REASON_REQUEST;
        mc_session_set_state(mc, MC_STATE_FAILOVER);
        break;
    case MC_STATE_LOST:
        act = policy == MC_FAILOVER_POLICY_AUTO ||
              (policy == MC_FAILOVER_POLICY_SAFE &&
               mc->loss_reason == MC_LOSS_REASON_PEER_CLOSED);
        mc->end_reason = mc->loss_reason;
        mc_session_set_state(mc, act ? MC_STATE_FAILOVER : MC_STATE_WAITING);
        break;
    default:
        g_assert_not_reached();
    }
    state = mc->state;
    qemu_mutex_unlock(&mc->lock);
    trace_mc_standby_decide(mc_loss_str(mc->loss_reason),
                            MCFailoverPolicy_str(policy),
                            MCState_str(state));
    if (state == MC_STATE_WAITING) {
        qapi_event_send_mc_peer_lost(MC_ROLE_STANDBY, mc->loss_reason);
        return;
    }
    mc_standby_leave(mc);
}

static void mc_standby_wake_bh(void *opaque)
{
    mc_standby_leave(opaque);
}

/*
 * mc-failover.  The primary drops its standby and runs on; the standby
 * stops receiving and resumes the guest from the last checkpoint it
 * applied.  Refused once MC is ending another way (migrate_cancel on the
 * primary, STOP from the primary on the standby): the first event wins.
 */
void qmp_mc_failover(Error **errp)
{
    MCSession *mc = mc_current;
    MCState from;

    if (!mc) {
        error_setg(errp, "Micro-checkpointing is not running");
        return;
    }
    qemu_mutex_lock(&mc->lock);
    from = mc->state;
    if (from == MC_STATE_FAILOVER_REQUESTED || from == MC_STATE_FAILOVER) {
        qemu_mutex_unlock(&mc->lock);
        return;                     /* already under way */
    }
    if (from == MC_STATE_WAITING) {
        /* the policy waited for management after a loss: go */
        mc->end_reason = MC_LOSS_REASON_REQUEST;
        mc_session_set_state(mc, MC_STATE_FAILOVER);
        qemu_mutex_unlock(&mc->lock);
        aio_bh_schedule_oneshot(qemu_get_aio_context(), mc_standby_wake_bh,
                                mc);
        return;
    }
    if (!mc_session_set_state(mc, MC_STATE_FAILOVER_REQUESTED)) {
        error_setg(errp, "Micro-checkpointing is ending (state %s): "
                   "mc-failover has no effect", MCState_str(from));
        qemu_mutex_unlock(&mc->lock);
        return;
    }
    qemu_mutex_unlock(&mc->lock);
    if (mc->role == MC_ROLE_STANDBY) {
        /*
         * Stop receiving; the thread ends and the decision is failover
         * (mc_standby_decide_bh), unless it was already deciding on a
         * loss: then it reads this state.
         */
        mc_transport_shutdown(mc->transport);
    }
}
