/*
 * Micro-checkpointing (MC) output commit: "filter-mc" holds what the
 * guest sends until the standby has the state that produced it.
 *
 * Each packet is tagged with the checkpoint whose epoch produced it
 * (mc_net.epoch, moved on by mc_net_checkpoint() while the VM is
 * paused, so the barrier falls exactly between two epochs) and is
 * passed on, in order, once that checkpoint is acknowledged.  Nothing
 * is dropped: a backend that cannot take a packet makes the release
 * wait, and a NIC that holds more than max-held is paused through its
 * sent callback (NET_FILTER_QUEUED) until its packets go out.
 *
 * Only guest output is held: the filter sees packets toward the guest
 * only when created with queue=all, and passes them.  Everything here
 * runs under the BQL, except mc_net_commit(), which only schedules.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qemu/error-report.h"
#include "qemu/host-utils.h"
#include "qemu/iov.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "qom/object_interfaces.h"
#include "net/net.h"
#include "net/filter.h"
#include "net/filter-mc.h"
#include "system/runstate.h"
#include "system/runstate-action.h"
#include "trace.h"

OBJECT_DECLARE_SIMPLE_TYPE(MCNetFilter, FILTER_MC)

/* How soon a release blocked by a busy backend is tried again */
#define MC_NET_RETRY_US 1000

/*
 * Hold times, for their percentiles: four buckets per power of two of
 * microseconds (each at most a quarter of its lower end wide), exact
 * under 8 us.  Up to about an hour.
 */
#define MC_NET_HOLD_BUCKETS 128

typedef struct MCNetPacket {
    QSIMPLEQ_ENTRY(MCNetPacket) next;
    uint64_t epoch;             /* goes out once this checkpoint is acked */
    int64_t held_us;
    NetPacketSent *sent_cb;     /* set: the sender waits for it */
    unsigned flags;
    size_t size;
    uint8_t data[];
} MCNetPacket;

struct MCNetFilter {
    NetFilterState parent_obj;

    uint64_t max_held;          /* bytes, before the NIC is paused */
    bool automatic;             /* created by mc_net_start() */
    bool listed;
    QSIMPLEQ_HEAD(, MCNetPacket) packets;
    uint64_t held_packets;
    uint64_t held_bytes;
    QTAILQ_ENTRY(MCNetFilter) link;
};

static QTAILQ_HEAD(, MCNetFilter) mc_net_filters =
    QTAILQ_HEAD_INITIALIZER(mc_net_filters);

static struct {
    bool holding;               /* MC runs on this side: hold output */
    bool releasing;             /* in mc_net_release_all() */
    bool checkpoint_pause;      /* the VM is paused for a checkpoint */
    bool sealed;                /* and its barrier has passed */
    bool release_blocked;       /* release waits for the VM to run */
    uint64_t epoch;             /* what the guest sends now belongs to */
    uint64_t acked;             /* atomic: last acknowledged checkpoint */
    /*
     * QEMU quits while MC holds: output commit holds on to the end, so
     * nothing the guest sent after the last acknowledged checkpoint goes
     * out (the standby may resume from that checkpoint).
     */
    bool quitting;
    Notifier shutdown;
    unsigned auto_count;
    QEMUBH *bh;
    QEMUTimer *retry;
    VMChangeStateEntry *vmsc;
    /* statistics since the last mc_net_start() */
    uint64_t released_packets;
    uint64_t released_bytes;
    uint64_t hold_total_us;
    uint64_t hold_max_us;
    uint64_t throttled;
    uint64_t held_high_water;
    uint64_t hold_hist[MC_NET_HOLD_BUCKETS];
    /* the first packet held in each epoch is told to the MC loop */
    MCNetOutputFn *output_fn;
    void *output_opaque;
    uint64_t output_epoch;      /* the last epoch told */
} mc_net;

static int64_t mc_net_now_us(void)
{
    return qemu_clock_get_us(QEMU_CLOCK_REALTIME);
}

static unsigned mc_net_hold_bucket(uint64_t us)
{
    unsigned msb;

    if (us < 8) {
        return us;
    }
    msb = 63 - clz64(us);
    return MIN(msb * 4 + ((us >> (msb - 2)) & 3), MC_NET_HOLD_BUCKETS - 1);
}

/* The middle of bucket @b, in microseconds */
static uint64_t mc_net_hold_bucket_us(unsigned b)
{
    unsigned msb = b / 4;

    if (b < 8) {
        return b;
    }
    return ((4ULL + b % 4) << (msb - 2)) + (1ULL << (msb - 2)) / 2;
}

/* The @pct th percentile of the hold times since MC began, or 0 */
static uint64_t mc_net_hold_percentile(unsigned pct)
{
    uint64_t total = 0, seen = 0, want;
    unsigned b;

    for (b = 0; b < MC_NET_HOLD_BUCKETS; b++) {
        total += mc_net.hold_hist[b];
    }
    if (!total) {
        return 0;
    }
    want = (total * pct + 99) / 100;
    for (b = 0; b < MC_NET_HOLD_BUCKETS; b++) {
        seen += mc_net.hold_hist[b];
        if (seen >= want) {
            break;
        }
    }
    return mc_net_hold_bucket_us(MIN(b, MC_NET_HOLD_BUCKETS - 1));
}

/*
 * Pass on the packets of @s produced up to checkpoint @upto.  Unless
 * @force, stop at the first one the backend cannot take now (it would
 * only be queued there, where a full queue drops).  Returns false when
 * packets that may go are left.
 */
static bool mc_net_release(MCNetFilter *s, uint64_t upto, bool force)
{
    NetFilterState *nf = NETFILTER(s);
    uint64_t n = 0, bytes = 0;
    int64_t now = mc_net_now_us();
    bool done = true;
    MCNetPacket *p;

    while ((p = QSIMPLEQ_FIRST(&s->packets)) && p->epoch <= upto) {
        /* guest output always comes from the backend's peer (the NIC) */
        NetClientState *sender = nf->netdev ? nf->netdev->peer : NULL;
        uint64_t held;

        if (sender && !force && !qemu_can_send_packet(sender)) {
            done = false;
            break;
        }
        QSIMPLEQ_REMOVE_HEAD(&s->packets, next);
        s->held_packets--;
        s->held_bytes -= p->size;
        held = now - p->held_us;
        mc_net.hold_total_us += held;
        mc_net.hold_max_us = MAX(mc_net.hold_max_us, held);
        mc_net.hold_hist[mc_net_hold_bucket(held)]++;
        n++;
        bytes += p->size;
        if (sender) {
            struct iovec iov = { .iov_base = p->data, .iov_len = p->size };

            qemu_netfilter_pass_to_next(sender, p->flags, &iov, 1, nf);
            if (p->sent_cb) {
                /* the NIC may send again, and re-enter the filter */
                p->sent_cb(sender, p->size);
            }
        }
        g_free(p);
    }
    if (n) {
        mc_net.released_packets += n;
        mc_net.released_bytes += bytes;
        trace_mc_net_release(nf->netdev_id, upto, n, bytes);
    }
    return done;
}

/* Drop what @s still holds; returns how many packets. */
static uint64_t mc_net_drop(MCNetFilter *s)
{
    NetClientState *sender = NETFILTER(s)->netdev ?
                             NETFILTER(s)->netdev->peer : NULL;
    QSIMPLEQ_HEAD(, MCNetPacket) gone = QSIMPLEQ_HEAD_INITIALIZER(gone);
    uint64_t n = 0;
    MCNetPacket *p;

    /* detached first: a completion below may make the NIC send again */
    QSIMPLEQ_CONCAT(&gone, &s->packets);
    s->held_packets = 0;
    s->held_bytes = 0;
    while ((p = QSIMPLEQ_FIRST(&gone))) {
        QSIMPLEQ_REMOVE_HEAD(&gone, next);
        /* the guest may run on (a filter deleted while MC holds) */
        if (p->sent_cb && sender) {
            p->sent_cb(sender, p->size);
        }
        g_free(p);
        n++;
    }
    return n;
}

static void mc_net_release_all(void)
{
    uint64_t upto = mc_net.holding ? qatomic_read(&mc_net.acked) : UINT64_MAX;
    MCNetFilter *s, *tmp;
    bool blocked = false;

    if (mc_net.releasing) {
        return;     /* a sent callback re-entered: the outer loop goes on */
    }
    mc_net.releasing = true;
    QTAILQ_FOREACH(s, &mc_net_filters, link) {
        blocked |= !mc_net_release(s, upto, false);
    }
    mc_net.releasing = false;

    if (blocked && runstate_is_running()) {
        timer_mod(mc_net.retry, mc_net_now_us() + MC_NET_RETRY_US);
    }
    /*
     * A stopped VM is taken care of by mc_net_vm_state(); one paused
     * for a checkpoint (no state-change handlers) by its end.
     */
    mc_net.release_blocked = blocked && !runstate_is_running();
    if (!mc_net.holding) {
        QTAILQ_FOREACH_SAFE(s, &mc_net_filters, link, tmp) {
            if (s->automatic && QSIMPLEQ_EMPTY(&s->packets)) {
                object_unparent(OBJECT(s));
            }
        }
    }
}

static void mc_net_release_bh(void *opaque)
{
    mc_net_release_all();
}

static void mc_net_retry_cb(void *opaque)
{
    mc_net_release_all();
}

/*
 * QEMU quits (quit, SIGTERM: virsh destroy, a cluster stopping this
 * side) while MC holds the output.  MC ends on the way out, but the
 * guest runs until QEMU stops it, and the standby may be resuming from
 * the last acknowledged checkpoint (it was lost, or STOP does not reach
 * it): from now on nothing is released beyond that checkpoint.
 */
static void mc_net_shutdown(Notifier *n, void *opaque)
{
    if (shutdown_action == SHUTDOWN_ACTION_PAUSE || !mc_net.holding) {
        return;     /* QEMU stays (a guest's poweroff), or nothing held */
    }
    mc_net.quitting = true;
    trace_mc_net_quitting(qatomic_read(&mc_net.acked));
}

static void mc_net_vm_state(void *opaque, bool running, RunState state)
{
    if (running && mc_net.bh) {
        qemu_bh_schedule(mc_net.bh);
    }
}

/*
 * Guest output between a checkpoint's barrier and the end of its pause
 * is a bug: the state saved in the checkpoint includes the sending, the
 * packet belongs to the next epoch, and a failover to this checkpoint
 * loses it.  Only device emulation run inside the pause (a bottom half
 * polled there) can send then.  Traced (mc_net_hold's "sealed") and
 * said once.
 */
static void mc_net_check_sealed(const char *netdev)
{
    if (mc_net.sealed) {
        warn_report_once("MC: NIC of netdev '%s' sent inside a checkpoint "
                         "pause, after its barrier: that output is lost "
                         "on a failover to this checkpoint", netdev);
    }
}

static ssize_t filter_mc_receive_iov(NetFilterState *nf,
                                     NetClientState *sender,
                                     unsigned flags,
                                     const struct iovec *iov,
                                     int iovcnt,
                                     NetPacketSent *sent_cb)
{
    MCNetFilter *s = FILTER_MC(nf);
    size_t size = iov_size(iov, iovcnt);
    bool throttle;
    MCNetPacket *p;

    /*
     * Toward the guest: pass.  Outside MC, pass too, unless packets
     * from the last MC session still wait: then queue behind them.
     */
    if (sender == nf->netdev ||
        (!mc_net.holding && QSIMPLEQ_EMPTY(&s->packets))) {
        return 0;
    }

    p = g_malloc(sizeof(*p) + size);
    p->epoch = mc_net.holding ? mc_net.epoch : 0;
    p->held_us = mc_net_now_us();
    p->flags = flags;
    p->size = iov_to_buf(iov, iovcnt, 0, p->data, size);
    /*
     * Over the bound, a sender that can wait does: back-pressure.  Not
     * during a checkpoint pause, see mc_net_checkpoint().
     */
    throttle = sent_cb && !mc_net.checkpoint_pause &&
               s->held_bytes + size > s->max_held;
    p->sent_cb = throttle ? sent_cb : NULL;
    QSIMPLEQ_INSERT_TAIL(&s->packets, p, next);
    s->held_packets++;
    s->held_bytes += size;
    mc_net.held_high_water = MAX(mc_net.held_high_water, s->held_bytes);
    trace_mc_net_hold(nf->netdev_id, p->epoch, size, throttle,
                      mc_net.sealed);
    mc_net_check_sealed(nf->netdev_id);
    /* One call per epoch: the packet path stays free of locks */
    if (mc_net.holding && mc_net.output_epoch != p->epoch) {
        mc_net.output_epoch = p->epoch;
        if (mc_net.output_fn) {
            mc_net.output_fn(mc_net.output_opaque, p->epoch, p->held_us);
        }
    }

    if (!mc_net.holding) {
        mc_net_release_all();
    }
    if (throttle) {
        mc_net.throttled++;
        return NET_FILTER_QUEUED;
    }
    return size;
}

static void filter_mc_setup(NetFilterState *nf, Error **errp)
{
    MCNetFilter *s = FILTER_MC(nf);

    if (!s->max_held) {
        error_setg(errp, "filter-mc: max-held must be greater than 0");
        return;
    }
    QTAILQ_INSERT_TAIL(&mc_net_filters, s, link);
    s->listed = true;
}

/* Removed (object-del, netdev gone, MC done): nothing held is lost. */
static void filter_mc_cleanup(NetFilterState *nf)
{
    MCNetFilter *s = FILTER_MC(nf);

    /* only what an acknowledged checkpoint covers may go */
    mc_net_release(s, mc_net.holding ? qatomic_read(&mc_net.acked) :
                   UINT64_MAX, true);
    mc_net_drop(s);
    if (s->listed) {
        QTAILQ_REMOVE(&mc_net_filters, s, link);
        s->listed = false;
    }
}

/* status=off: this NIC is no longer buffered, so what it holds goes. */
static void filter_mc_status_changed(NetFilterState *nf, Error **errp)
{
    if (!nf->on) {
        mc_net_release(FILTER_MC(nf), UINT64_MAX, true);
    }
}

static void filter_mc_init(Object *obj)
{
    MCNetFilter *s = FILTER_MC(obj);

    s->max_held = MC_NET_DEFAULT_MAX_HELD;
    QSIMPLEQ_INIT(&s->packets);
    object_property_add_uint64_ptr(obj, "max-held", &s->max_held,
                                   OBJ_PROP_FLAG_READWRITE);
}

static void filter_mc_class_init(ObjectClass *oc, void *data)
{
    NetFilterClass *nfc = NETFILTER_CLASS(oc);

    nfc->setup = filter_mc_setup;
    nfc->cleanup = filter_mc_cleanup;
    nfc->receive_iov = filter_mc_receive_iov;
    nfc->status_changed = filter_mc_status_changed;
}

static const TypeInfo filter_mc_info = {
    .name = TYPE_FILTER_MC,
    .parent = TYPE_NETFILTER,
    .class_init = filter_mc_class_init,
    .instance_init = filter_mc_init,
    .instance_size = sizeof(MCNetFilter),
};

static void filter_mc_register_types(void)
{
    type_register_static(&filter_mc_info);
}

type_init(filter_mc_register_types);

/*
 * The interface of the MC loop
 */

static bool mc_net_has_filter(NetClientState *backend)
{
    NetFilterState *nf;

    QTAILQ_FOREACH(nf, &backend->filters, next) {
        if (object_dynamic_cast(OBJECT(nf), TYPE_FILTER_MC)) {
            return true;
        }
    }
    return false;
}

static void mc_net_remove_automatic(void)
{
    MCNetFilter *s, *tmp;

    QTAILQ_FOREACH_SAFE(s, &mc_net_filters, link, tmp) {
        if (s->automatic) {
            object_unparent(OBJECT(s));
        }
    }
}

bool mc_net_start(bool auto_attach, Error **errp)
{
    NetClientState *nc;
    MCNetFilter *s;

    if (!mc_net.bh) {
        mc_net.bh = qemu_bh_new(mc_net_release_bh, NULL);
        mc_net.retry = timer_new_us(QEMU_CLOCK_REALTIME, mc_net_retry_cb,
                                    NULL);
        mc_net.vmsc = qemu_add_vm_change_state_handler(mc_net_vm_state,
                                                       NULL);
        mc_net.shutdown.notify = mc_net_shutdown;
        qemu_register_shutdown_notifier(&mc_net.shutdown);
    }

    QTAILQ_FOREACH(nc, &net_clients, next) {
        g_autofree char *id = NULL;
        Error *err = NULL;
        Object *obj;

        if (!auto_attach || nc->info->type != NET_CLIENT_DRIVER_NIC ||
            !nc->peer || nc->queue_index || mc_net_has_filter(nc->peer)) {
            continue;
        }
        id = g_strdup_printf("mc-net%u", mc_net.auto_count++);
        obj = object_new_with_props(TYPE_FILTER_MC, object_get_objects_root(),
                                    id, &err, "netdev", nc->peer->name,
                                    "queue", "rx", NULL);
        if (!obj) {
            error_propagate_prepend(errp, err, "MC cannot hold the output "
                                    "of NIC '%s' (netdev '%s'): ", nc->name,
                                    nc->peer->name);
            mc_net_remove_automatic();
            return false;
        }
        FILTER_MC(obj)->automatic = true;
        trace_mc_net_attach(id, nc->name, nc->peer->name);
    }

    mc_net.epoch = 1;
    qatomic_set(&mc_net.acked, 0);
    mc_net.released_packets = mc_net.released_bytes = 0;
    mc_net.hold_total_us = mc_net.hold_max_us = mc_net.throttled = 0;
    mc_net.held_high_water = 0;
    memset(mc_net.hold_hist, 0, sizeof(mc_net.hold_hist));
    mc_net.output_epoch = 0;
    mc_net.holding = true;
    QTAILQ_FOREACH(s, &mc_net_filters, link) {
        trace_mc_net_start(NETFILTER(s)->netdev_id, s->automatic,
                           NETFILTER(s)->on);
    }
    return true;
}

void mc_net_set_checkpoint_pause(bool on)
{
    mc_net.checkpoint_pause = on;
    if (!on) {
        mc_net.sealed = false;
        if (mc_net.release_blocked && mc_net.bh) {
            /* the release BH tried while the pause had the VM stopped */
            qemu_bh_schedule(mc_net.bh);
        }
    }
}

bool mc_net_checkpoint_pause(void)
{
    return mc_net.checkpoint_pause;
}

void mc_net_checkpoint(uint64_t epoch)
{
    MCNetFilter *s;
    MCNetPacket *p;

    if (!mc_net.holding) {
        return;
    }
    /*
     * A NIC paused by back-pressure has a transmission in flight (taken
     * from its ring, not completed), which no device state can carry:
     * the standby would wait for it forever.  Complete it: the packet
     * stays held.  The NIC may then drain its ring into this epoch.
     */
    QTAILQ_FOREACH(s, &mc_net_filters, link) {
        NetClientState *sender = NETFILTER(s)->netdev ?
                                 NETFILTER(s)->netdev->peer : NULL;

        QSIMPLEQ_FOREACH(p, &s->packets, next) {
            NetPacketSent *cb = p->sent_cb;

            if (cb) {
                p->sent_cb = NULL;
                if (sender) {
                    cb(sender, p->size);
                }
            }
        }
    }
    mc_net.epoch = epoch + 1;
    mc_net.sealed = mc_net.checkpoint_pause;
    trace_mc_net_barrier(epoch);
}

void mc_net_set_output_notify(MCNetOutputFn *fn, void *opaque)
{
    mc_net.output_fn = fn;
    mc_net.output_opaque = opaque;
}

void mc_net_commit(uint64_t epoch)
{
    trace_mc_net_commit(epoch);
    qatomic_set(&mc_net.acked, epoch);
    qemu_bh_schedule(mc_net.bh);
}

void mc_net_switchover(uint64_t epoch)
{
    uint64_t dropped = 0;
    MCNetFilter *s;

    if (!mc_net.holding) {
        return;
    }
    qatomic_set(&mc_net.acked, epoch);
    QTAILQ_FOREACH(s, &mc_net_filters, link) {
        /* the NIC is stopped, its backend is not: force */
        mc_net_release(s, epoch, true);
        dropped += mc_net_drop(s);
    }
    trace_mc_net_switchover(epoch, dropped);
    mc_net_stop();
}

void mc_net_stop(void)
{
    if (!mc_net.holding || mc_net.quitting) {
        return;
    }
    trace_mc_net_stop(qatomic_read(&mc_net.acked));
    mc_net.holding = false;
    /* what cannot go yet goes from the BH; automatic filters follow */
    mc_net_release_all();
}

void mc_net_fill_info(MCInfo *info)
{
    MCNetFilter *s;

    info->net_buffers = 0;
    info->net_held_packets = info->net_held_bytes = 0;
    QTAILQ_FOREACH(s, &mc_net_filters, link) {
        info->net_buffers += NETFILTER(s)->on;
        info->net_held_packets += s->held_packets;
        info->net_held_bytes += s->held_bytes;
    }
    info->net_held_high_water = mc_net.held_high_water;
    info->net_released_packets = mc_net.released_packets;
    info->net_released_bytes = mc_net.released_bytes;
    info->net_hold_avg_us = mc_net.released_packets ?
        mc_net.hold_total_us / mc_net.released_packets : 0;
    info->net_hold_max_us = mc_net.hold_max_us;
    info->net_throttled = mc_net.throttled;
    info->net_hold_p50_us = mc_net_hold_percentile(50);
    info->net_hold_p99_us = mc_net_hold_percentile(99);
}
