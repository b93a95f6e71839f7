/*
 * Micro-checkpointing (MC): the records of the "mc-block" section (disk
 * replication, mc-block.c), shared with the standby's checks before it
 * applies a checkpoint (mc-verify.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_BLOCK_H
#define QEMU_MIGRATION_MC_BLOCK_H

#include "qemu/units.h"

/* Largest piece of a disk in one record; also the bounce buffer. */
#define MC_BLK_CHUNK            (1 * MiB)

/*
 * Record types.  DATA and ZERO are followed by disk (be32), offset
 * (be64) and length (be32); DATA then by the bytes.  SETUP (the disk
 * list) only comes before MC starts.
 */
enum {
    MC_BLK_END = 0,
    MC_BLK_SETUP = 1,       /* the disk list */
    MC_BLK_DATA = 2,        /* disk, offset, length, bytes */
    MC_BLK_ZERO = 3,        /* disk, offset, length: reads as zeroes */
};

/* Standby: the size of disk @i of the list the primary sent, or -1. */
int64_t mc_block_standby_disk_size(uint32_t i);

#endif
