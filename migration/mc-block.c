/*
 * Micro-checkpointing (MC): disk replication, the second participant.
 *
 * Every writable disk of the guest is replicated to the standby through
 * the migration stream itself, as the iterable section "mc-block":
 *
 *   precopy     setup     the disk list: the standby matches each disk
 *                         to its own by device path and size, refuses
 *                         shared images, and answers on the channel;
 *               iterate   a bulk copy of every disk, then what the
 *                         guest rewrote meanwhile (a dirty bitmap);
 *               complete  what is still dirty, with the VM stopped;
 *   MC          complete  is called again inside every checkpoint
 *                         (qemu_savevm_live_state): with the VM paused
 *                         and the block layer drained, the disk areas
 *                         written in this epoch are read back and go
 *                         into checkpoint N beside its RAM pages.
 *
 * So the standby writes epoch N's disk data only when it applies
 * checkpoint N, which it does only once all of it arrived intact: its
 * image always holds exactly the writes of the checkpoints it applied.
 * A request in flight at the checkpoint is completed by the drain
 * inside the pause; its data and its completion (the guest's RAM and
 * the device state) both belong to checkpoint N.
 *
 * In a checkpoint the drain and the reads happen first, with the vCPUs
 * stopped but before the output barrier (mc_block_drain, the "drain"
 * hook): waiting for I/O runs the main loop's bottom halves, device
 * emulation among them (a NIC's transmit), and what they do must still
 * belong to epoch N.  The areas are read into a capture buffer, and the
 * section written after the barrier only copies it out: from the
 * barrier to the end of the device state nothing polls.
 *
 * The standby writes through the disk's own BlockBackend: its guest
 * does not run before failover, so nothing else writes there.  Its
 * images are activated when the disk list arrives, which also takes
 * the image locks: a second opener of the same file is refused there.
 *
 * Locking: the disk list is built by save_setup and freed by
 * save_cleanup, both with the BQL, while the MC loop, which reads the
 * dirty counts without it, cannot run; everything else runs with the
 * BQL held.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/memalign.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "block/block.h"
#include "block/block_int.h"
#include "block/dirty-bitmap.h"
#include "system/block-backend.h"
#include "hw/qdev-core.h"
#include "io/channel.h"
#include "migration/register.h"
#include "migration/qemu-file-types.h"
#include "migration.h"
#include "options.h"
#include "qemu-file.h"
#include "mc.h"
#include "mc-block.h"
#include "trace.h"

/* Dirty tracking granularity: one guest page, the usual write unit. */
#define MC_BLK_GRANULARITY      4096
/* Bulk copy per iterate call, so that RAM gets its turn. */
#define MC_BLK_ITERATE_MAX      (16 * MiB)
#define MC_BLK_MAX_DISKS        64

/* The standby's answer to the disk list, on the reverse channel */
#define MC_BLK_REPLY_MAGIC      0x4d434252U     /* "MCBR" */
#define MC_BLK_REPLY_MAX        1024

typedef struct MCBlockDisk {
    char *key;                  /* canonical QOM path of the device */
    char *name;                 /* for messages: the qdev id, or the key */
    BlockBackend *dev_blk;      /* the device's; a reference is held */
    BlockBackend *rd_blk;       /* primary: ours, for reading */
    BdrvDirtyBitmap *bitmap;    /* primary: written since last sent */
    int64_t size;
    int64_t bulk_next;          /* primary: the bulk copy's position */
} MCBlockDisk;

/* An area read by mc_block_drain(), waiting for the section */
typedef struct MCBlockArea {
    uint8_t type;               /* MC_BLK_DATA or MC_BLK_ZERO */
    int disk;
    int64_t offset, bytes;
    size_t at;                  /* DATA: where in MCBlockState.cap */
} MCBlockArea;

typedef struct MCBlockState {
    MCBlockDisk *disks;
    int ndisks;
    uint8_t *buf;               /* MC_BLK_CHUNK, allocated at setup */
    bool replied;               /* primary: the standby accepted */

    /*
     * Primary: one checkpoint's areas, read before its barrier.  Both
     * buffers keep their size from one checkpoint to the next, so a
     * steady state allocates nothing here.  BQL.
     */
    MCBlockArea *areas;
    size_t nareas, areas_size;
    uint8_t *cap;               /* block-aligned, the areas' data */
    size_t cap_len, cap_size;
    bool captured;              /* for the next save_complete */
    int cap_ret;                /* a read failed: the checkpoint fails */
    uint64_t cap_written;       /* bytes the areas stand for */
    int64_t cap_us;             /* time mc_block_drain() took */

    /* Statistics, BQL */
    uint64_t initial_bytes;     /* sent before MC began */
    uint64_t writes, bytes;     /* replicated in checkpoints */
    uint64_t writes_last, bytes_last;
    uint64_t pause_last_us;     /* time of the last checkpoint's part */
} MCBlockState;

static MCBlockState mc_block_out;   /* primary */
static MCBlockState mc_block_in;    /* standby */

/* The device path a disk is matched by on both sides */
static char *mc_block_key(BlockBackend *blk)
{
    DeviceState *dev = blk_get_attached_dev(blk);

    return dev ? object_get_canonical_path(OBJECT(dev)) : NULL;
}

/* A short name for messages: the device's id, or its parent's */
static char *mc_block_name(BlockBackend *blk)
{
    DeviceState *dev = blk_get_attached_dev(blk);
    Object *parent;

    if (dev->id) {
        return g_strdup(dev->id);
    }
    parent = OBJECT(dev)->parent;
    if (parent && object_dynamic_cast(parent, TYPE_DEVICE) &&
        DEVICE(parent)->id) {
        return g_strdup(DEVICE(parent)->id);
    }
    return mc_block_key(blk);
}

/* Disks MC replicates: attached to a device, writable, not removable. */
static bool mc_block_wanted(BlockBackend *blk)
{
    return blk_get_attached_dev(blk) && blk_bs(blk) &&
           blk_is_writable(blk) && !blk_dev_has_removable_media(blk);
}

/*
 * Where the image lives, to refuse two QEMUs writing one file: the
 * host's boot id and the device and inode of the bottom file node.
 * False when the disk is not a local file (nothing to compare).
 */
static bool mc_block_identity(BlockBackend *blk, char **boot_id,
                              uint64_t *dev, uint64_t *ino)
{
    BlockDriverState *bs = blk_bs(blk), *child;
    g_autofree char *id = NULL;
    struct stat st;

    GRAPH_RDLOCK_GUARD_MAINLOOP();
    while ((child = bdrv_primary_bs(bs))) {
        bs = child;
    }
    if (!bs->drv || strcmp(bs->drv->format_name, "file") ||
        stat(bs->filename, &st) < 0 ||
        !g_file_get_contents("/proc/sys/kernel/random/boot_id", &id, NULL,
                             NULL)) {
        return false;
    }
    *boot_id = g_strdup(g_strstrip(id));
    *dev = st.st_dev;
    *ino = st.st_ino;
    return true;
}

static void mc_block_free(MCBlockState *st)
{
    int i;

    for (i = 0; i < st->ndisks; i++) {
        MCBlockDisk *d = &st->disks[i];

        if (d->bitmap) {
            bdrv_release_dirty_bitmap(d->bitmap);
        }
        if (d->rd_blk) {
            blk_unref(d->rd_blk);
        }
        blk_unref(d->dev_blk);
        g_free(d->key);
        g_free(d->name);
    }
    g_free(st->disks);
    qemu_vfree(st->buf);
    g_free(st->areas);
    qemu_vfree(st->cap);
    memset(st, 0, sizeof(*st));
}

/*
 * Primary
 */

static bool mc_block_is_active(void *opaque)
{
    return migrate_mc() && !migrate_mc_disk_disable();
}

static int mc_block_add_disk(MCBlockState *st, BlockBackend *blk,
                             Error **errp)
{
    BlockDriverState *bs = blk_bs(blk);
    MCBlockDisk *d = &st->disks[st->ndisks];
    int64_t size = blk_getlength(blk);

    d->key = mc_block_key(blk);
    d->name = mc_block_name(blk);
    if (size < 0) {
        error_setg_errno(errp, -size, "MC: disk %s: cannot get its size",
                         d->name);
        goto fail;
    }
    if (strlen(d->key) > 255) {
        error_setg(errp, "MC: disk %s: device path too long", d->name);
        goto fail;
    }
    d->size = size;
    d->dev_blk = blk;
    blk_ref(blk);
    st->ndisks++;       /* mc_block_free() cleans up from here on */

    /* Our own reader: guest throttling and request queuing do not apply */
    d->rd_blk = blk_new(bdrv_get_aio_context(bs), BLK_PERM_CONSISTENT_READ,
                        BLK_PERM_ALL);
    blk_set_allow_aio_context_change(d->rd_blk, true);
    blk_set_disable_request_queuing(d->rd_blk, true);
    if (blk_insert_bs(d->rd_blk, bs, errp) < 0) {
        return -1;
    }
    d->bitmap = bdrv_create_dirty_bitmap(bs, MC_BLK_GRANULARITY, NULL, errp);
    if (!d->bitmap) {
        return -1;
    }
    trace_mc_block_disk(d->key, size);
    return 0;

fail:
    g_free(d->key);
    g_free(d->name);
    memset(d, 0, sizeof(*d));
    return -1;
}

/* The disk list: what the standby needs to match its own disks */
static int mc_block_save_setup(QEMUFile *f, void *opaque, Error **errp)
{
    MCBlockState *st = opaque;
    BlockBackend *blk = NULL;
    int i;

    mc_block_free(st);
    st->disks = g_new0(MCBlockDisk, MC_BLK_MAX_DISKS);
    while ((blk = blk_all_next(blk))) {
        if (!mc_block_wanted(blk)) {
            continue;
        }
        if (st->ndisks == MC_BLK_MAX_DISKS) {
            error_setg(errp, "MC: more than %d disks", MC_BLK_MAX_DISKS);
            return -EINVAL;
        }
        if (mc_block_add_disk(st, blk, errp) < 0) {
            return -EINVAL;
        }
    }
    st->buf = qemu_blockalign(NULL, MC_BLK_CHUNK);

    qemu_put_byte(f, MC_BLK_SETUP);
    qemu_put_be32(f, st->ndisks);
    for (i = 0; i < st->ndisks; i++) {
        MCBlockDisk *d = &st->disks[i];
        g_autofree char *boot_id = NULL;
        uint64_t dev = 0, ino = 0;
        bool local = mc_block_identity(d->dev_blk, &boot_id, &dev, &ino);

        qemu_put_counted_string(f, d->key);
        qemu_put_counted_string(f, d->name);
        qemu_put_be64(f, d->size);
        qemu_put_byte(f, local);
        qemu_put_counted_string(f, local ? boot_id : "");
        qemu_put_be64(f, dev);
        qemu_put_be64(f, ino);
    }
    qemu_put_byte(f, MC_BLK_END);
    trace_mc_block_setup(st->ndisks);
    return 0;
}

/*
 * The standby's answer to the disk list.  Waited for before any disk
 * data is sent, so a mismatch costs no copy and the reason reaches
 * this side's query-migrate, not only the standby's log.
 */
static int mc_block_wait_reply(QEMUFile *f, MCBlockState *st)
{
    QIOChannel *ioc = qemu_file_get_ioc(f);
    uint32_t hdr[3] = { 0 }, len = 0;
    char msg[MC_BLK_REPLY_MAX + 1];
    Error *cause = NULL, *err = NULL;
    bool ok = false;

    /*
     * A refusal shows as a failed flush or as a close while the reply is
     * read, depending on when the standby's reset arrives: both mean
     * the same and get the same message.
     */
    if (qemu_fflush(f) < 0) {
        qemu_file_get_error_obj(f, &cause);
    } else if (qio_channel_read_all(ioc, (char *)hdr, sizeof(hdr),
                                    &cause) == 0) {
        len = be32_to_cpu(hdr[2]);
        ok = be32_to_cpu(hdr[0]) == MC_BLK_REPLY_MAGIC &&
             len <= MC_BLK_REPLY_MAX &&
             qio_channel_read_all(ioc, msg, len, &cause) == 0;
    }
    if (!ok) {
        /*
         * Under TLS the standby checks this side's certificate (and
         * tls-authz) after the handshake completed here: a refusal
         * arrives as this close.
         */
        error_setg(&err, "MC: the standby closed the connection before it "
                   "accepted the disk list (%s; its log says why)%s%s",
                   migrate_tls() ?
                   "did it refuse this side's TLS certificate (tls-authz)? "
                   "is it a QEMU with micro-checkpointing, started with "
                   "the same disks?" :
                   "is it a QEMU with micro-checkpointing, started with "
                   "the same disks?",
                   cause ? ": " : "", cause ? error_get_pretty(cause) : "");
        error_free(cause);
        migrate_set_error(migrate_get_current(), err);
        error_report_err(err);
        return -EIO;
    }
    msg[len] = '\0';
    if (hdr[1]) {
        error_setg(&err, "%s", msg);
        migrate_set_error(migrate_get_current(), err);
        error_report_err(err);
        return -EINVAL;
    }
    st->replied = true;
    return 0;
}

/*
 * Room for @bytes more of captured data, block-aligned for the read.
 * Grows by doubling, so only a checkpoint larger than any before
 * allocates.
 */
static uint8_t *mc_block_cap_reserve(MCBlockState *st, size_t bytes)
{
    if (st->cap_len + bytes > st->cap_size) {
        size_t size = MAX(st->cap_size * 2, st->cap_len + bytes);
        uint8_t *cap = qemu_blockalign(NULL, size);

        memcpy(cap, st->cap, st->cap_len);
        qemu_vfree(st->cap);
        st->cap = cap;
        st->cap_size = size;
    }
    if (st->nareas == st->areas_size) {
        st->areas_size = MAX(st->areas_size * 2, 64);
        st->areas = g_renew(MCBlockArea, st->areas, st->areas_size);
    }
    return st->cap + st->cap_len;
}

/* One DATA or ZERO record; @data is only written for DATA */
static void mc_block_put_record(QEMUFile *f, uint8_t type, int disk,
                                int64_t offset, int64_t bytes,
                                const uint8_t *data)
{
    qemu_put_byte(f, type);
    qemu_put_be32(f, disk);
    qemu_put_be64(f, offset);
    qemu_put_be32(f, bytes);
    if (type == MC_BLK_DATA) {
        qemu_put_buffer(f, data, bytes);
    }
}

/*
 * Send one area of disk @i: data, or a zero record if it reads as zero.
 * With @f NULL the area goes into the capture buffer instead, for the
 * checkpoint's section (mc_block_drain).
 */
static int mc_block_send_area(QEMUFile *f, MCBlockState *st, int i,
                              int64_t offset, int64_t bytes)
{
    MCBlockDisk *d = &st->disks[i];
    size_t room = ROUND_UP(bytes, MC_BLK_GRANULARITY);
    uint8_t *buf = f ? st->buf : mc_block_cap_reserve(st, room);
    int ret = blk_pread(d->rd_blk, offset, bytes, buf, 0);
    bool zero;

    if (ret < 0) {
        error_report("MC: disk %s: read of %" PRId64 " bytes at %" PRId64
                     " failed: %s", d->name, bytes, offset, strerror(-ret));
        return ret;
    }
    zero = buffer_is_zero(buf, bytes);
    if (!f) {
        st->areas[st->nareas++] = (MCBlockArea) {
            .type = zero ? MC_BLK_ZERO : MC_BLK_DATA,
            .disk = i, .offset = offset, .bytes = bytes, .at = st->cap_len,
        };
        /* block-aligned for the next read: lengths are, but at the end */
        st->cap_len += zero ? 0 : room;
        return 0;
    }
    mc_block_put_record(f, zero ? MC_BLK_ZERO : MC_BLK_DATA, i, offset,
                        bytes, buf);
    return 0;
}

/* Write what mc_block_drain() captured: no I/O, nothing polled */
static void mc_block_put_captured(QEMUFile *f, MCBlockState *st)
{
    size_t n;

    for (n = 0; n < st->nareas; n++) {
        MCBlockArea *a = &st->areas[n];

        mc_block_put_record(f, a->type, a->disk, a->offset, a->bytes,
                            st->cap + a->at);
    }
}

/*
 * Send dirty areas of every disk, at most @budget bytes (-1: all).
 * The bits are cleared before the read, so a write that completes
 * during the read marks the area again.  Returns bytes sent or -errno.
 */
static int64_t mc_block_send_dirty(QEMUFile *f, MCBlockState *st,
                                   int64_t budget, uint64_t *areas)
{
    int64_t sent = 0;
    int i;

    for (i = 0; i < st->ndisks; i++) {
        MCBlockDisk *d = &st->disks[i];
        int64_t start = 0, off, len;

        while (budget < 0 || sent < budget) {
            if (!bdrv_dirty_bitmap_next_dirty_area(d->bitmap, start, d->size,
                                                   MC_BLK_CHUNK, &off,
                                                   &len)) {
                break;
            }
            len = MIN(len, d->size - off);
            bdrv_reset_dirty_bitmap(d->bitmap, off, len);
            if (mc_block_send_area(f, st, i, off, len) < 0) {
                return -EIO;
            }
            sent += len;
            start = off + len;
            (*areas)++;
        }
    }
    return sent;
}

/* The bulk copy: every disk once, front to back */
static int64_t mc_block_send_bulk(QEMUFile *f, MCBlockState *st,
                                  int64_t budget)
{
    int64_t sent = 0;
    int i;

    for (i = 0; i < st->ndisks; i++) {
        MCBlockDisk *d = &st->disks[i];

        while (d->bulk_next < d->size && (budget < 0 || sent < budget)) {
            int64_t len = MIN(MC_BLK_CHUNK, d->size - d->bulk_next);

            bdrv_reset_dirty_bitmap(d->bitmap, d->bulk_next, len);
            if (mc_block_send_area(f, st, i, d->bulk_next, len) < 0) {
                return -EIO;
            }
            d->bulk_next += len;
            sent += len;
            if (f && migration_rate_exceeded(f)) {
                return sent;
            }
        }
    }
    return sent;
}

static uint64_t mc_block_remaining(MCBlockState *st)
{
    uint64_t left = 0;
    int i;

    for (i = 0; i < st->ndisks; i++) {
        left += st->disks[i].size - st->disks[i].bulk_next;
        left += bdrv_get_dirty_count(st->disks[i].bitmap);
    }
    return left;
}

static int mc_block_save_iterate(QEMUFile *f, void *opaque)
{
    MCBlockState *st = opaque;
    uint64_t areas = 0;
    int64_t total = 0, sent;
    bool done;

    if (!st->replied && f == migrate_get_current()->to_dst_file) {
        int ret = mc_block_wait_reply(f, st);

        if (ret < 0) {
            return ret;
        }
    }
    /* The BQL for one chunk at a time: the guest's vCPUs need it too */
    do {
        bql_lock();
        sent = mc_block_send_bulk(f, st, MC_BLK_CHUNK);
        if (sent == 0) {
            sent = mc_block_send_dirty(f, st, MC_BLK_CHUNK, &areas);
        }
        done = mc_block_remaining(st) == 0;
        bql_unlock();
        if (sent < 0) {
            return sent;
        }
        total += sent;
    } while (sent > 0 && total < MC_BLK_ITERATE_MAX &&
             !migration_rate_exceeded(f));
    st->initial_bytes += total;
    qemu_put_byte(f, MC_BLK_END);
    return done;
}

/*
 * What is still to send, with the VM stopped: at the end of precopy,
 * and inside every checkpoint, where mc_block_drain() has read it
 * already.  BQL held.
 */
static int mc_block_save_complete(QEMUFile *f, void *opaque)
{
    MCBlockState *st = opaque;
    int64_t start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    uint64_t areas = 0;
    int64_t bulk, sent;

    if (st->captured) {
        st->captured = false;
        if (st->cap_ret < 0) {
            return st->cap_ret;
        }
        mc_block_put_captured(f, st);
        qemu_put_byte(f, MC_BLK_END);
        st->writes_last = st->nareas;
        st->bytes_last = st->cap_written;
        st->writes += st->nareas;
        st->bytes += st->cap_written;
        /* the drain and reads, and this copy */
        st->pause_last_us = st->cap_us +
                            qemu_clock_get_us(QEMU_CLOCK_REALTIME) - start;
        trace_mc_block_checkpoint(true, st->nareas, st->cap_written,
                                  st->pause_last_us);
        return 0;
    }

    /* Requests in flight finish now and are part of this checkpoint */
    bdrv_drain_all_begin();
    bulk = mc_block_send_bulk(f, st, -1);
    sent = bulk < 0 ? bulk : mc_block_send_dirty(f, st, -1, &areas);
    bdrv_drain_all_end();
    if (sent < 0) {
        return sent;
    }
    qemu_put_byte(f, MC_BLK_END);
    st->initial_bytes += bulk + sent;
    trace_mc_block_checkpoint(false, areas, bulk + sent,
                              qemu_clock_get_us(QEMU_CLOCK_REALTIME) - start);
    return 0;
}

static void mc_block_state_pending(void *opaque, uint64_t *must_precopy,
                                   uint64_t *can_postcopy)
{
    *must_precopy += mc_block_remaining(opaque);
}

static void mc_block_save_cleanup(void *opaque)
{
    mc_block_free(opaque);
}

/* Dirty disk bytes not yet in a checkpoint (MC loop, no BQL) */
static uint64_t mc_block_dirty_bytes(void)
{
    MCBlockState *st = &mc_block_out;
    uint64_t n = 0;
    int i;

    for (i = 0; i < st->ndisks; i++) {
        n += bdrv_get_dirty_count(st->disks[i].bitmap);
    }
    return n;
}

/*
 * Standby
 */

static int mc_block_reply(QEMUFile *f, bool ok, const char *msg)
{
    QIOChannel *ioc = qemu_file_get_ioc(f);
    size_t len = MIN(strlen(msg), MC_BLK_REPLY_MAX);
    uint32_t hdr[3] = {
        cpu_to_be32(MC_BLK_REPLY_MAGIC), cpu_to_be32(!ok), cpu_to_be32(len),
    };
    struct iovec iov[2] = {
        { .iov_base = hdr, .iov_len = sizeof(hdr) },
        { .iov_base = (void *)msg, .iov_len = len },
    };

    return qio_channel_writev_all(ioc, iov, 2, NULL);
}

static BlockBackend *mc_block_find(const char *key)
{
    BlockBackend *blk = NULL;

    while ((blk = blk_all_next(blk))) {
        g_autofree char *k = NULL;

        if (!blk_get_attached_dev(blk)) {
            continue;
        }
        k = mc_block_key(blk);
        if (!strcmp(k, key)) {
            return blk;
        }
    }
    return NULL;
}

/* One disk of the primary's list, as it arrived */
typedef struct MCBlockPeerDisk {
    char key[256], name[256], boot_id[256];
    int64_t size;
    bool local;
    uint64_t dev, ino;
} MCBlockPeerDisk;

/* Match one disk of the primary's list to ours; -1 with @errp if not */
static int mc_block_match_disk(const MCBlockPeerDisk *p, MCBlockDisk *d,
                               Error **errp)
{
    g_autofree char *my_boot_id = NULL;
    uint64_t my_dev, my_ino;
    BlockBackend *blk = mc_block_find(p->key);

    if (!blk) {
        error_setg(errp, "MC: the primary's disk %s (%s) is missing on the "
                   "standby: start the standby with the same disk devices "
                   "(same ids), each with its own image of the same size",
                   p->name, p->key);
        return -1;
    }
    if (!blk_bs(blk) || !blk_is_writable(blk)) {
        error_setg(errp, "MC: disk %s has no writable image on the standby",
                   p->name);
        return -1;
    }
    if (blk_getlength(blk) != p->size) {
        error_setg(errp, "MC: disk %s: size mismatch: %" PRId64 " bytes on "
                   "the primary, %" PRId64 " on the standby", p->name,
                   p->size, blk_getlength(blk));
        return -1;
    }
    if (p->local && mc_block_identity(blk, &my_boot_id, &my_dev, &my_ino) &&
        !strcmp(my_boot_id, p->boot_id) && my_dev == p->dev &&
        my_ino == p->ino) {
        error_setg(errp, "MC: disk %s: the primary and the standby opened "
                   "the same image file; shared storage is not supported "
                   "with micro-checkpointing: give the standby its own "
                   "image of the same size (it may be empty)", p->name);
        return -1;
    }
    d->key = g_strdup(p->key);
    d->name = g_strdup(p->name);
    d->size = p->size;
    d->dev_blk = blk;
    blk_ref(blk);
    return 0;
}

typedef struct MCBlockMatch {
    MCBlockState *st;
    MCBlockPeerDisk *peer;
    uint32_t n;
    Error *err;
    Coroutine *co;
} MCBlockMatch;

/*
 * Match the list and open our images for writing (which also takes the
 * image locks).  Graph changes need the main loop outside a coroutine.
 */
static void mc_block_match_bh(void *opaque)
{
    MCBlockMatch *m = opaque;
    uint32_t i;

    for (i = 0; i < m->n; i++) {
        if (mc_block_match_disk(&m->peer[i], &m->st->disks[i], &m->err) < 0) {
            break;
        }
        m->st->ndisks++;
    }
    if (!m->err && m->n && !migration_block_activate(&m->err)) {
        error_prepend(&m->err, "MC: cannot open the standby's disks for "
                      "writing (is the image used by another process?): ");
    }
    if (m->co) {
        aio_co_wake(m->co);
    }
}

static int mc_block_load_setup_record(QEMUFile *f, MCBlockState *st)
{
    MCBlockMatch m = { .st = st };
    g_autofree MCBlockPeerDisk *peer = NULL;
    uint32_t i;

    mc_block_free(st);
    m.n = qemu_get_be32(f);
    if (m.n > MC_BLK_MAX_DISKS) {
        error_setg(&m.err, "MC: the primary lists %u disks, at most %d are "
                   "supported", m.n, MC_BLK_MAX_DISKS);
        goto refuse;
    }
    peer = m.peer = g_new0(MCBlockPeerDisk, m.n);
    for (i = 0; i < m.n; i++) {
        MCBlockPeerDisk *p = &peer[i];

        qemu_get_counted_string(f, p->key);
        qemu_get_counted_string(f, p->name);
        p->size = qemu_get_be64(f);
        p->local = qemu_get_byte(f);
        qemu_get_counted_string(f, p->boot_id);
        p->dev = qemu_get_be64(f);
        p->ino = qemu_get_be64(f);
    }
    if (qemu_file_get_error(f)) {
        return qemu_file_get_error(f);
    }
    st->disks = g_new0(MCBlockDisk, MC_BLK_MAX_DISKS);
    if (qemu_in_coroutine()) {
        m.co = qemu_coroutine_self();
        aio_bh_schedule_oneshot(qemu_get_aio_context(), mc_block_match_bh,
                                &m);
        qemu_coroutine_yield();
    } else {
        mc_block_match_bh(&m);
    }
    if (m.err) {
        goto refuse;
    }
    st->buf = qemu_blockalign(NULL, MC_BLK_CHUNK);
    trace_mc_block_setup(m.n);
    mc_block_reply(f, true, "");
    return 0;

refuse:
    trace_mc_block_refused(error_get_pretty(m.err));
    mc_block_reply(f, false, error_get_pretty(m.err));
    error_report_err(m.err);
    mc_block_free(st);
    return -EINVAL;
}

int64_t mc_block_standby_disk_size(uint32_t i)
{
    MCBlockState *st = &mc_block_in;

    return (int64_t)i < st->ndisks && st->buf ? st->disks[i].size : -1;
}

/*
 * Records up to END.  During MC this runs only for a checkpoint that
 * arrived whole and verified (mc_checkpoint_apply), with the BQL.
 */
static int mc_block_load_state(QEMUFile *f, void *opaque, int version_id)
{
    MCBlockState *st = &mc_block_in;    /* @opaque is the primary's */
    bool checkpoint = migration_incoming_get_current()->state ==
                      MIGRATION_STATUS_MC;
    uint64_t areas = 0, bytes = 0;

    for (;;) {
        int type = qemu_get_byte(f);
        uint32_t i, len;
        int64_t offset;
        int ret;

        if (qemu_file_get_error(f)) {
            return qemu_file_get_error(f);
        }
        switch (type) {
        case MC_BLK_END:
            if (checkpoint) {
                st->writes_last = areas;
                st->bytes_last = bytes;
                st->writes += areas;
                st->bytes += bytes;
            } else {
                st->initial_bytes += bytes;
            }
            return 0;
        case MC_BLK_SETUP:
            ret = mc_block_load_setup_record(f, st);
            if (ret < 0) {
                return ret;
            }
            continue;
        case MC_BLK_DATA:
        case MC_BLK_ZERO:
            break;
        default:
            error_report("MC: unknown disk record %d", type);
            return -EINVAL;
        }

        i = qemu_get_be32(f);
        offset = qemu_get_be64(f);
        len = qemu_get_be32(f);
        if (qemu_file_get_error(f)) {
            return qemu_file_get_error(f);
        }
        if (i >= st->ndisks || !st->buf || len > MC_BLK_CHUNK ||
            offset < 0 || offset + len > st->disks[i].size) {
            error_report("MC: disk record out of range (disk %u, %u bytes "
                         "at %" PRId64 ")", i, len, offset);
            return -EINVAL;
        }
        if (type == MC_BLK_DATA) {
            if (qemu_get_buffer(f, st->buf, len) != len) {
                return -EIO;
            }
            ret = blk_pwrite(st->disks[i].dev_blk, offset, len, st->buf, 0);
        } else {
            ret = blk_pwrite_zeroes(st->disks[i].dev_blk, offset, len,
                                    BDRV_REQ_MAY_UNMAP);
        }
        if (ret < 0) {
            error_report("MC: disk %s: write of %u bytes at %" PRId64
                         " failed: %s", st->disks[i].name, len, offset,
                         strerror(-ret));
            return ret;
        }
        areas++;
        bytes += len;
    }
}

/*
 * Failover: what the applied checkpoints wrote is made durable before
 * the guest runs on this image (its earlier flushes were honoured on
 * the primary's image only).  Main loop, BQL.
 */
static void mc_block_standby_failover(void)
{
    MCBlockState *st = &mc_block_in;
    int i;

    for (i = 0; i < st->ndisks; i++) {
        int ret = blk_flush(st->disks[i].dev_blk);

        if (ret < 0) {
            warn_report("MC: disk %s: flush at failover failed: %s",
                        st->disks[i].name, strerror(-ret));
        }
    }
}

/* MC ended on the standby: drop the disk list */
static void mc_block_standby_end(void)
{
    mc_block_free(&mc_block_in);
}

static void mc_block_fill_info(MCInfo *info, bool primary)
{
    MCBlockState *st = primary ? &mc_block_out : &mc_block_in;

    info->disk_count = st->ndisks;
    info->disk_writes = st->writes;
    info->disk_bytes = st->bytes;
    info->disk_writes_last = st->writes_last;
    info->disk_bytes_last = st->bytes_last;
    info->disk_initial_bytes = st->initial_bytes;
    info->disk_pause_last_us = st->pause_last_us;
    info->disk_backlog_bytes = primary ? mc_block_dirty_bytes() : 0;
}

/*
 * Checkpoint, vCPUs stopped, before the output barrier: requests in
 * flight complete now (data and completion both in this checkpoint),
 * the block layer stays drained to the end of the pause (no iothread
 * starts a request while RAM and device state are saved: a drained
 * virtio-blk or virtio-scsi also stops taking requests from its rings),
 * and the areas written in the epoch are read into the capture buffer.
 * Everything that waits for I/O in a checkpoint is here: see the top of
 * this file.
 */
static void mc_block_drain(void)
{
    MCBlockState *st = &mc_block_out;
    int64_t start = qemu_clock_get_us(QEMU_CLOCK_REALTIME);
    uint64_t areas = 0;
    int64_t bulk, sent;

    bdrv_drain_all_begin();
    if (!mc_block_is_active(NULL)) {
        return;
    }
    st->nareas = st->cap_len = 0;
    bulk = mc_block_send_bulk(NULL, st, -1);
    sent = bulk < 0 ? bulk : mc_block_send_dirty(NULL, st, -1, &areas);
    st->cap_ret = sent < 0 ? sent : 0;
    st->cap_written = sent < 0 ? 0 : bulk + sent;
    st->captured = true;
    st->cap_us = qemu_clock_get_us(QEMU_CLOCK_REALTIME) - start;
}

static void mc_block_resume(void)
{
    bdrv_drain_all_end();
}

/* Its data rides in the "mc-block" section, saved inside the pause */
const MCParticipant mc_block_participant = {
    .name = "disk",
    .drain = mc_block_drain,
    .resume = mc_block_resume,
    .backlog = mc_block_dirty_bytes,
    .fill_info = mc_block_fill_info,
    .failover = mc_block_standby_failover,
    .standby_end = mc_block_standby_end,
};

static SaveVMHandlers mc_block_handlers = {
    .save_setup = mc_block_save_setup,
    .save_live_iterate = mc_block_save_iterate,
    .save_live_complete_precopy = mc_block_save_complete,
    .state_pending_estimate = mc_block_state_pending,
    .state_pending_exact = mc_block_state_pending,
    .save_cleanup = mc_block_save_cleanup,
    .is_active = mc_block_is_active,
    .load_state = mc_block_load_state,
};

static void mc_block_register(void)
{
    register_savevm_live("mc-block", 0, 1, &mc_block_handlers, &mc_block_out);
}

migration_init(mc_block_register);
