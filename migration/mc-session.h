/*
 * Micro-checkpointing (MC): the session both roles share, for the MC
 * files only (the rest of QEMU uses mc.h).
 *
 * Where things happen:
 *   mc.c            the session, liveness (heartbeats, peer lost), the
 *                   statistics and HMP
 *   mc-primary.c    the primary's loop: when to take a checkpoint, the
 *                   ring of checkpoints in flight, sending (mc-tx),
 *                   ACKs (mc-rx), the end of MC on the primary,
 *                   mc-switchover
 *   mc-checkpoint.c taking one checkpoint: the light pause, the copy
 *                   into staging, waiting for room, the vCPU throttle
 *   mc-copy.c       the threads that copy a checkpoint's pages
 *   mc-standby.c    receiving, verifying, acknowledging and applying
 *   mc-failover.c   what a standby does when MC ends (policy, device
 *                   load, resume) and mc-failover
 *   mc-participant.c output commit and disks: what a checkpoint holds
 *                   back and releases (filter-mc.c, mc-block.c)
 *   mc-transport.c  messages to and from the peer (framing, one sender at
 *                   a time); mc-transport-socket.c carries their bytes
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_SESSION_H
#define QEMU_MIGRATION_MC_SESSION_H

#include "qemu/thread.h"
#include "qemu/coroutine.h"
#include "io/channel.h"
#include "qapi/qapi-types-run-state.h"
#include "mc.h"
#include "mc-alloc.h"
#include "mc-staging.h"
#include "mc-transport.h"

/*
 * Checkpoints in flight.  The staging buffer is used as a ring: each
 * checkpoint is one contiguous part of it, in epoch order, freed when
 * the standby acknowledges it.
 */
#define MC_RING_SLOTS           8

typedef struct MCSlot {
    uint64_t epoch;
    size_t offset, len;         /* in the staging buffer */
    int64_t pause_end_us;       /* for the transfer time */
    unsigned resends;
} MCSlot;

/*
 * The session's state (QAPI MCState), one per side.  Events that end MC
 * race (a loss, migrate_cancel, mc-failover, STOP from the primary): the
 * first one moves the state and later ones are refused, so every path
 * out of MC starts from exactly one state.  mc_session_set_state() checks
 * each change against mc_state_next[] (mc.c) and traces it.
 *
 *   primary  setup -> active -> lost | cancelling | failover-requested
 *            | switchover (-> lost | cancelling before the standby
 *            took over); lost -> cancelling | failover-requested under
 *            manual
 *   standby  setup -> active -> lost | stopping | failover-requested
 *            -> (mc_standby_decide_bh) failover | stopped | waiting
 *            waiting -> failover (mc-failover); failover -> stopped
 *            when the devices cannot be loaded
 */
/* Why the primary takes a checkpoint now */
typedef enum MCTrigger {
    MC_TRIGGER_INTERVAL,        /* mc-delay since the last one */
    MC_TRIGGER_EARLY,           /* the dirty set nears the free staging */
    MC_TRIGGER_BOUND,           /* a vCPU waits at the dirty ring's bound */
    MC_TRIGGER_OUTPUT,          /* held output waited mc-output-latency */
    MC_TRIGGER_SWITCHOVER,      /* mc-switchover: the last one, guest stopped */
} MCTrigger;

typedef struct MCSession {
    /* Set up once, read by every thread */
    MCRole role;
    MCTransport *transport;     /* to the peer; does its own locking */
    MCStaging *staging;
    QEMUFile *sfile;            /* primary: output, standby: input */

    /* The thread that starts and joins them */
    QemuThread rx_thread;
    QemuThread hb_thread;
    QemuThread tx_thread;       /* primary */
    bool rx_started, hb_started, tx_started;
    bool rx_running;            /* lock: the receive thread has not ended */
    QemuSemaphore hb_sem;       /* posted to stop the heartbeat thread */

    /* Protected by lock; cond wakes whoever waits on any of them */
    QemuMutex lock;
    QemuCond cond;
    MCState state;              /* changed by mc_session_set_state only */
    MCLossReason loss_reason;   /* MC_LOSS_NONE, or the first detection */
    MCLossReason end_reason;    /* why the guest runs on without a peer */
    uint64_t acked_epoch;
    /* Primary: checkpoints taken and not yet acknowledged, oldest first */
    MCSlot ring[MC_RING_SLOTS];
    unsigned ring_first, ring_count;
    uint64_t taken_epoch;       /* the newest checkpoint in the ring */
    uint64_t send_next;         /* the next one the tx thread sends */
    uint64_t resend_from;       /* 0, or go back to this one (refused) */
    bool tx_busy;               /* the tx thread is sending */
    bool tx_stop;               /* the tx thread must end */
    Error *error;               /* the first error that ended MC */
    MCInfo stats;
    /* A vCPU waits at the dirty bound (mc-dirty-bound.c) until harvested */
    bool bound_hit;
    /* The newest epoch the guest sent output in, and when it began to */
    uint64_t output_epoch;
    int64_t output_since_us;
    uint64_t pause_total_us, transfer_total_us;     /* for the averages */
    /*
     * mc-switchover: the checkpoint taken with the guest stopped (0: none
     * yet); the standby runs the guest, or says it cannot
     */
    uint64_t switch_epoch;
    bool switched, switch_refused;

    /* Standby: rx thread while it runs, then the main loop (BQL) */
    MigrationIncomingState *mis;
    Coroutine *co;
    uint64_t applied_epoch;
    /* The device state of the last applied checkpoint, not yet loaded */
    MCStaging *devices;
    bool devices_pending;
    bool switch_requested;      /* the primary said MC_STOP_SWITCHOVER */

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
    /* mc-switchover: the run state before the guest stopped, and when */
    RunState switch_old_state;
    int64_t switch_stop_us;
    const char *switch_abort;   /* why the guest runs on here after all */
    /*
     * The pause budget (mc_primary_budget_*): microseconds of pause that
     * output-triggered checkpoints may still spend, as of budget_at_us,
     * and the pause expected of the next checkpoint.
     */
    double budget_credit_us;
    int64_t budget_at_us;
    double pause_expect_us;
    int64_t share_start_us;     /* this second's pause, for the statistic */
    int64_t share_pause_us;
    MCCopyPool *copy_pool;      /* mc-copy-threads threads (mc-copy.h) */
    /*
     * Scheduled (idle: no wakeup) at the output barrier, cancelled at
     * the end of the pause: if it ran, the main loop was polled in
     * between (mc_checkpoint_take).  Migration thread, BQL.
     */
    QEMUBH *pause_canary;
    bool pause_canary_ran;
} MCSession;

/* The running session, or NULL.  Set and cleared with the BQL held. */
extern MCSession *mc_current;

/* loss_reason before the peer is lost (not a QAPI value: see mc_loss_str) */
#define MC_LOSS_NONE            MC_LOSS_REASON__MAX

/* Why the standby refuses a checkpoint (NACK flags) */
enum {
    MC_NACK_CORRUPT = 1,
    MC_NACK_ORDER = 2,
    MC_NACK_APPLY_FAILED = 3,
    MC_NACK_MALFORMED = 4,      /* intact but not a checkpoint (mc-verify.c) */
    MC_NACK_SWITCH_FAILED = 5,  /* mc-switchover: the standby cannot run */
};

/* Why the primary tells the standby to leave MC (STOP flags) */
enum {
    MC_STOP_CANCEL = 1,         /* migrate_cancel, or QEMU is quitting */
    MC_STOP_DROPPED = 2,        /* the primary runs on without the standby */
    MC_STOP_SWITCHOVER = 3,     /* mc-switchover: run the guest (SWITCHED) */
};

/* mc.c: the session and liveness */
int64_t mc_now_us(void);
MCSession *mc_session_new(MCRole role, QIOChannel *ioc, Error **errp);
void mc_session_free(MCSession *mc);
int mc_send(MCSession *mc, MCMsgType type, uint32_t flags, uint64_t epoch,
            const struct iovec *iov, size_t niov, Error **errp);
void mc_peer_lost(MCSession *mc, MCLossReason reason);
void *mc_hb_thread(void *opaque);
void mc_threads_stop(MCSession *mc);
bool mc_recv_header(MCSession *mc, uint64_t max_len, MCWireHeader *h);
void mc_session_fail(MCSession *mc, Error *err);
bool mc_session_set_state(MCSession *mc, MCState to);
bool mc_session_lost(MCSession *mc, MCLossReason reason);
const char *mc_loss_str(MCLossReason reason);
void mc_session_fail_locked(MCSession *mc, Error *err);

/* mc-primary.c */
bool mc_primary_should_stop(MCSession *mc, MigrationState *s);

/* mc-checkpoint.c: taking one checkpoint (primary, migration thread) */
int mc_checkpoint_take(MCSession *mc, uint64_t epoch, size_t base,
                       size_t limit, Error **errp);
void mc_checkpoint_setup(MCSession *mc);
void mc_checkpoint_end(MCSession *mc);
bool mc_primary_make_room(MCStaging *st, size_t len, void *opaque);
void mc_primary_throttle(MCSession *mc, size_t bytes);
void mc_primary_throttle_hold(MCSession *mc, MigrationState *s,
                              int64_t ran_us);
void mc_guest_release_vcpus(MCSession *mc);

/* mc-failover.c: the standby's way out of MC (main loop, BQL) */
void mc_standby_decide_bh(void *opaque);

#endif
