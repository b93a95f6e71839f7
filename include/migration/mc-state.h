/*
 * Micro-checkpointing (MC): what the rest of QEMU may ask about MC.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_MC_STATE_H
#define MIGRATION_MC_STATE_H

/*
 * qmp_cont: false, with @errp set, on an MC standby, whose guest runs
 * only on failover.  Main thread, BQL held.
 */
bool mc_cont_check(Error **errp);

#endif
