/*
 * Micro-checkpointing (MC): what the standby checks in a checkpoint
 * before it applies any of it.
 *
 * A checkpoint whose checksum matches can still be malformed: a bug in
 * the primary, two builds that disagree, or a hostile peer that holds a
 * valid certificate.  Applying goes through the ordinary loaders (RAM,
 * disks), which write as they parse, so a bad record found half-way
 * would leave the standby half old, half new: no longer a copy of any
 * checkpoint.  So the standby first walks the whole checkpoint here,
 * writing nothing, and applies it only if every record is one the
 * loaders accept and within bounds; otherwise it refuses it and the last
 * applied checkpoint stays whole.  Only what a checkpoint may hold is
 * accepted: RAM pages (zero or whole), disk writes, and the end marks.
 * The device part is not parsed here: it is kept as received and loaded
 * once, at failover.
 *
 * The walk only reads the buffer and asks @ops about the standby's RAM
 * blocks and disks, so it runs as well in a fuzzer as in QEMU.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_VERIFY_H
#define QEMU_MIGRATION_MC_VERIFY_H

typedef enum MCSectionKind {
    MC_SECTION_OTHER,       /* not allowed inside a checkpoint */
    MC_SECTION_RAM,         /* "ram" */
    MC_SECTION_BLOCK,       /* "mc-block" */
} MCSectionKind;

typedef struct MCVerifyOps {
    /* The section the primary numbered @section_id, as the loader finds it */
    MCSectionKind (*section_kind)(uint32_t section_id, void *opaque);
    /* Bytes of RAM block @name the loader may write, or -1: no such block */
    int64_t (*ram_block_size)(const char *name, void *opaque);
    /* Size of disk @disk of the replicated list, or -1: no such disk */
    int64_t (*disk_size)(uint32_t disk, void *opaque);
} MCVerifyOps;

typedef struct MCVerify {
    const MCVerifyOps *ops;
    void *opaque;
    unsigned page_size;     /* the target's page size, a power of two */
    bool footers;           /* sections end with a footer */
} MCVerify;

/* What a verified checkpoint holds */
typedef struct MCVerifyResult {
    uint64_t devices_at;    /* offset of the device part */
    uint64_t devices_len;
    uint64_t pages;         /* RAM page records */
    uint64_t disk_records;
} MCVerifyResult;

/*
 * Walk checkpoint @buf (@len bytes: sections, end of file, device part,
 * trailer).  Returns 0 and fills @res if the loaders will take all of it,
 * -1 with @errp (saying what is wrong and where) if not.
 */
int mc_verify_checkpoint(const MCVerify *v, const uint8_t *buf, uint64_t len,
                         MCVerifyResult *res, Error **errp);

#endif
