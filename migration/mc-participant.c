/*
 * Micro-checkpointing (MC): the checkpoint participants.
 *
 * The MC loop (mc-primary.c, mc-checkpoint.c, mc-standby.c) knows
 * participants only through MCParticipant (mc.h): output commit holds
 * guest network output per epoch, disk replication carries the disk
 * writes of each epoch.  This file lists them and calls their hooks in
 * order (and stops in reverse order).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "net/filter-mc.h"
#include "migration.h"
#include "mc.h"

/* Output commit, net/filter-mc.c */
static bool mc_net_part_start(MCOutputFn *output, void *opaque,
                              Error **errp)
{
    if (!mc_net_start(!migrate_mc_net_disable(), errp)) {
        return false;
    }
    mc_net_set_output_notify(output, opaque);
    return true;
}

static void mc_net_part_stop(void)
{
    mc_net_set_output_notify(NULL, NULL);
    mc_net_stop();
}

static void mc_net_part_switchover(uint64_t epoch)
{
    mc_net_set_output_notify(NULL, NULL);
    mc_net_switchover(epoch);
}

static void mc_net_part_pause(void)
{
    mc_net_set_checkpoint_pause(true);
}

static void mc_net_part_resume(void)
{
    mc_net_set_checkpoint_pause(false);
}

static void mc_net_part_fill_info(MCInfo *info, bool primary)
{
    if (primary) {
        mc_net_fill_info(info);
    }
}

static const MCParticipant mc_net_participant = {
    .name = "net",
    .start = mc_net_part_start,
    .pause = mc_net_part_pause,
    .checkpoint = mc_net_checkpoint,
    .resume = mc_net_part_resume,
    .commit = mc_net_commit,
    .stop = mc_net_part_stop,
    .switchover = mc_net_part_switchover,
    .fill_info = mc_net_part_fill_info,
};

static const MCParticipant *const mc_participants[] = {
    &mc_net_participant,
    &mc_block_participant,
};

#define MC_FOR_EACH(p, i) \
    for ((i) = 0; (i) < ARRAY_SIZE(mc_participants) && \
         ((p) = mc_participants[(i)]); (i)++)

bool mc_participants_start(MCOutputFn *output, void *opaque, Error **errp)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->start && !p->start(output, opaque, errp)) {
            /* undo those already started */
            while (i-- > 0) {
                if (mc_participants[i]->stop) {
                    mc_participants[i]->stop();
                }
            }
            return false;
        }
    }
    return true;
}

void mc_participants_pause(void)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->pause) {
            p->pause();
        }
    }
}

void mc_participants_drain(void)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->drain) {
            p->drain();
        }
    }
}

void mc_participants_checkpoint(uint64_t epoch)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->checkpoint) {
            p->checkpoint(epoch);
        }
    }
}

void mc_participants_resume(void)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->resume) {
            p->resume();
        }
    }
}

void mc_participants_commit(uint64_t epoch)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->commit) {
            p->commit(epoch);
        }
    }
}

void mc_participants_stop(void)
{
    size_t i = ARRAY_SIZE(mc_participants);

    while (i-- > 0) {
        if (mc_participants[i]->stop) {
            mc_participants[i]->stop();
        }
    }
}

void mc_participants_switchover(uint64_t epoch)
{
    size_t i = ARRAY_SIZE(mc_participants);

    while (i-- > 0) {
        if (mc_participants[i]->switchover) {
            mc_participants[i]->switchover(epoch);
        } else if (mc_participants[i]->stop) {
            mc_participants[i]->stop();
        }
    }
}

uint64_t mc_participants_backlog(void)
{
    const MCParticipant *p;
    uint64_t n = 0;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->backlog) {
            n += p->backlog();
        }
    }
    return n;
}

void mc_participants_fill_info(MCInfo *info, bool primary)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->fill_info) {
            p->fill_info(info, primary);
        }
    }
}

void mc_participants_failover(void)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->failover) {
            p->failover();
        }
    }
}

void mc_participants_standby_end(void)
{
    const MCParticipant *p;
    size_t i;

    MC_FOR_EACH(p, i) {
        if (p->standby_end) {
            p->standby_end();
        }
    }
}
