/*
 * Micro-checkpointing (MC): the link over RDMA.
 *
 * With the mc capability on, a migration URI rdma:HOST:PORT connects
 * through this channel (mc-rdma.c), not upstream's (rdma.c): a
 * full-duplex byte stream over one reliable RDMA connection, which
 * carries precopy, the disk handshake and MC's messages as TCP does.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_RDMA_H
#define QEMU_MIGRATION_MC_RDMA_H

#include "qapi/qapi-types-sockets.h"

#define TYPE_QIO_CHANNEL_MC_RDMA "qio-channel-mc-rdma"

/*
 * Connect to the standby at @addr and hand the channel to the
 * migration (blocking, bounded by a few seconds); @errp if it fails.
 */
void mc_rdma_start_outgoing_migration(MigrationState *s,
                                      InetSocketAddress *addr,
                                      Error **errp);

/* Listen at @addr for one primary; its channel goes to the migration. */
void mc_rdma_start_incoming_migration(InetSocketAddress *addr,
                                      Error **errp);

#endif
