/*
 * Micro-checkpointing (MC) output commit: the network output buffer.
 *
 * While MC runs on the primary, every packet a guest NIC sends is held
 * by a "filter-mc" netfilter on that NIC's backend and released, in
 * order, only once the standby acknowledged the checkpoint whose epoch
 * produced it.  The MC loop drives it through the "net" checkpoint
 * participant (migration/mc-participant.c) with these calls:
 *
 *   mc_net_start()       MC begins (VM stopped): buffer every NIC
 *   mc_net_checkpoint()  checkpoint N taken (VM paused): barrier N
 *   mc_net_commit()      checkpoint N acknowledged: release up to N
 *   mc_net_stop()        MC ends: release everything, unbuffer
 *
 * All but mc_net_commit() need the BQL.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_NET_FILTER_MC_H
#define QEMU_NET_FILTER_MC_H

#include "qapi/qapi-types-mc.h"

#define TYPE_FILTER_MC "filter-mc"

/* Default bound on what one NIC may hold before its transmit is paused */
#define MC_NET_DEFAULT_MAX_HELD (16 * MiB)

/*
 * Start holding guest output.  With @auto_attach, every NIC whose
 * backend has no filter-mc yet gets one (removed again by
 * mc_net_stop()); filter-mc objects the operator created are used as
 * they are.  Fails, buffering nothing, if a NIC cannot be buffered.
 */
bool mc_net_start(bool auto_attach, Error **errp);

/*
 * Checkpoint @epoch is being taken: what the guest sends next belongs
 * to the checkpoint after it.  Call with the VM paused, before its
 * devices are saved (it may complete a NIC's pending transmission).
 */
void mc_net_checkpoint(uint64_t epoch);

/*
 * The VM is paused for a checkpoint (@on) or resumed.  Where the pause
 * runs the VM state-change handlers (KVM, see mc-checkpoint.c), the net
 * layer meanwhile keeps queued packets instead of purging them as it
 * does on an ordinary stop: a packet that arrives as the VM pauses would
 * otherwise be dropped, and at hundreds of pauses a second TCP peers
 * would stall in retransmission timeouts.  Such packets are not part
 * of the checkpoint; they reach the guest after the pause.  Output the
 * guest sends after the barrier (mc_net_checkpoint) and before the
 * resume is a bug of the pause, and is reported.
 */
void mc_net_set_checkpoint_pause(bool on);
bool mc_net_checkpoint_pause(void);

/*
 * The guest sent the first packet of epoch @epoch (held since @held_us,
 * QEMU_CLOCK_REALTIME): called once per epoch, with the BQL, from the
 * packet path; it must not block.  NULL: nobody is told.
 */
typedef void MCNetOutputFn(void *opaque, uint64_t epoch, int64_t held_us);
void mc_net_set_output_notify(MCNetOutputFn *fn, void *opaque);

/* Checkpoint @epoch was acknowledged by the standby (any thread). */
void mc_net_commit(uint64_t epoch);

/* MC is over: release everything held, then remove automatic filters. */
void mc_net_stop(void);

/*
 * mc-switchover: checkpoint @epoch, taken with the VM stopped, is
 * acknowledged and the standby runs the guest from it next.  What the
 * guest sent up to it goes out now, the NIC stopped or not (the VM never
 * runs here again, and the standby does not send it again); anything
 * after it is dropped (the standby's guest sends it again, as it would
 * after a failover); then as mc_net_stop().  BQL held.
 */
void mc_net_switchover(uint64_t epoch);

/* Fill the net-* fields of the MC statistics. */
void mc_net_fill_info(MCInfo *info);

#endif
