/*
 * Micro-checkpointing (MC): the standby's walk over a checkpoint before
 * it applies any of it (see mc-verify.h for why).
 *
 * A checkpoint, as mc_checkpoint_take() writes it:
 *
 *   sections      END (or PART) sections of "ram" and "mc-block" only,
 *                 each: type (u8), section id (be32), records, and a
 *                 footer (0x7e, the id again) when footers are on
 *   end of file   one 0 byte
 *   devices       the device state, loaded at failover, not parsed here
 *   trailer       offset of the device part (be64)
 *
 * RAM records: be64 page address | flags, then for a page of a block not
 * named yet in this checkpoint its name (u8 length, bytes), then a zero
 * page's fill byte (must be 0) or a whole page.  Disk records: see
 * mc-block.h.  The rules below are those of the loaders (ram_load and
 * mc_block_load_state), made strict where our primary never does
 * otherwise: every other section, command or flag is refused.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "ram.h"
#include "savevm.h"
#include "mc-block.h"
#include "mc-verify.h"

typedef struct MCWalk {
    const MCVerify *v;
    const uint8_t *buf;
    uint64_t pos;
    uint64_t end;           /* where the device part starts */
    MCVerifyResult *res;
    Error **errp;
} MCWalk;

static bool walk_need(MCWalk *w, uint64_t n, const char *what)
{
    if (w->end - w->pos < n) {
        error_setg(w->errp, "MC: checkpoint ends inside %s at offset %"
                   PRIu64, what, w->pos);
        return false;
    }
    return true;
}

static bool walk_u8(MCWalk *w, const char *what, uint8_t *val)
{
    if (!walk_need(w, 1, what)) {
        return false;
    }
    *val = w->buf[w->pos++];
    return true;
}

static bool walk_be32(MCWalk *w, const char *what, uint32_t *val)
{
    if (!walk_need(w, 4, what)) {
        return false;
    }
    *val = ldl_be_p(w->buf + w->pos);
    w->pos += 4;
    return true;
}

static bool walk_be64(MCWalk *w, const char *what, uint64_t *val)
{
    if (!walk_need(w, 8, what)) {
        return false;
    }
    *val = ldq_be_p(w->buf + w->pos);
    w->pos += 8;
    return true;
}

static bool walk_skip(MCWalk *w, uint64_t n, const char *what)
{
    if (!walk_need(w, n, what)) {
        return false;
    }
    w->pos += n;
    return true;
}

static bool mc_verify_ram(MCWalk *w)
{
    const MCVerify *v = w->v;
    uint64_t mask = v->page_size - 1;
    /* the block pages continue (the loader's last block, this section) */
    int64_t block_size = -1;
    char name[256];

    for (;;) {
        uint64_t at = w->pos, word, addr;
        unsigned flags;

        if (!walk_be64(w, "a RAM record", &word)) {
            return false;
        }
        flags = word & mask;
        addr = word & ~mask;
        if ((flags & ~RAM_SAVE_FLAG_CONTINUE) == RAM_SAVE_FLAG_EOS) {
            return true;
        }
        if ((flags & ~RAM_SAVE_FLAG_CONTINUE) != RAM_SAVE_FLAG_ZERO &&
            (flags & ~RAM_SAVE_FLAG_CONTINUE) != RAM_SAVE_FLAG_PAGE) {
            error_setg(w->errp, "MC: RAM record with flags 0x%x at offset %"
                       PRIu64 " (only pages belong in a checkpoint)",
                       flags, at);
            return false;
        }
        if (!(flags & RAM_SAVE_FLAG_CONTINUE)) {
            uint8_t len;

            if (!walk_u8(w, "a RAM block name", &len) ||
                !walk_need(w, len, "a RAM block name")) {
                return false;
            }
            memcpy(name, w->buf + w->pos, len);
            name[len] = 0;
            w->pos += len;
            block_size = v->ops->ram_block_size(name, v->opaque);
            if (block_size < 0) {
                error_setg(w->errp, "MC: unknown RAM block \"%s\" at offset %"
                           PRIu64, name, at);
                return false;
            }
        } else if (block_size < 0) {
            error_setg(w->errp, "MC: RAM record at offset %" PRIu64
                       " continues a block never named", at);
            return false;
        }
        if (addr >= block_size || block_size - addr < v->page_size) {
            error_setg(w->errp, "MC: RAM page 0x%" PRIx64 " at offset %"
                       PRIu64 " is beyond the end of its block (%" PRId64
                       " bytes)", addr, at, block_size);
            return false;
        }
        if ((flags & ~RAM_SAVE_FLAG_CONTINUE) == RAM_SAVE_FLAG_ZERO) {
            uint8_t fill;

            if (!walk_u8(w, "a zero page", &fill)) {
                return false;
            }
            if (fill) {
                error_setg(w->errp, "MC: zero page at offset %" PRIu64
                           " filled with %u", at, fill);
                return false;
            }
        } else if (!walk_skip(w, v->page_size, "a RAM page")) {
            return false;
        }
        w->res->pages++;
    }
}

static bool mc_verify_block(MCWalk *w)
{
    for (;;) {
        uint64_t at = w->pos, offset;
        uint32_t disk, len;
        int64_t size;
        uint8_t type;

        if (!walk_u8(w, "a disk record", &type)) {
            return false;
        }
        if (type == MC_BLK_END) {
            return true;
        }
        if (type != MC_BLK_DATA && type != MC_BLK_ZERO) {
            error_setg(w->errp, "MC: disk record of type %u at offset %"
                       PRIu64 " (only writes belong in a checkpoint)",
                       type, at);
            return false;
        }
        if (!walk_be32(w, "a disk record", &disk) ||
            !walk_be64(w, "a disk record", &offset) ||
            !walk_be32(w, "a disk record", &len)) {
            return false;
        }
        size = w->v->ops->disk_size(disk, w->v->opaque);
        if (size < 0) {
            error_setg(w->errp, "MC: disk record at offset %" PRIu64
                       " for disk %u, which is not replicated", at, disk);
            return false;
        }
        if (len > MC_BLK_CHUNK || offset > size || len > size - offset) {
            error_setg(w->errp, "MC: disk record at offset %" PRIu64
                       " is out of range (disk %u, %u bytes at %" PRIu64
                       ", disk size %" PRId64 ")", at, disk, len, offset,
                       size);
            return false;
        }
        if (type == MC_BLK_DATA && !walk_skip(w, len, "a disk write")) {
            return false;
        }
        w->res->disk_records++;
    }
}

int mc_verify_checkpoint(const MCVerify *v, const uint8_t *buf, uint64_t len,
                         MCVerifyResult *res, Error **errp)
{
    MCWalk w = { .v = v, .buf = buf, .res = res, .errp = errp };

    memset(res, 0, sizeof(*res));
    if (len < 8) {
        error_setg(errp, "MC: checkpoint of %" PRIu64 " bytes has no "
                   "trailer", len);
        return -1;
    }
    w.end = ldq_be_p(buf + len - 8);
    if (w.end > len - 8) {
        error_setg(errp, "MC: checkpoint trailer puts its device part at "
                   "offset %" PRIu64 ", past its end (%" PRIu64 ")",
                   w.end, len - 8);
        return -1;
    }
    res->devices_at = w.end;
    res->devices_len = len - 8 - w.end;

    for (;;) {
        uint64_t at = w.pos;
        uint32_t id, footer_id;
        uint8_t type, mark;
        bool ok;

        if (!walk_u8(&w, "a section header", &type)) {
            return -1;
        }
        if (type == QEMU_VM_EOF) {
            break;
        }
        if (type != QEMU_VM_SECTION_PART && type != QEMU_VM_SECTION_END) {
            error_setg(errp, "MC: section type 0x%x at offset %" PRIu64
                       " does not belong in a checkpoint", type, at);
            return -1;
        }
        if (!walk_be32(&w, "a section header", &id)) {
            return -1;
        }
        switch (v->ops->section_kind(id, v->opaque)) {
        case MC_SECTION_RAM:
            ok = mc_verify_ram(&w);
            break;
        case MC_SECTION_BLOCK:
            ok = mc_verify_block(&w);
            break;
        default:
            error_setg(errp, "MC: section %u at offset %" PRIu64 " is "
                       "neither RAM nor disks", id, at);
            return -1;
        }
        if (!ok) {
            return -1;
        }
        if (v->footers) {
            if (!walk_u8(&w, "a section footer", &mark) ||
                !walk_be32(&w, "a section footer", &footer_id)) {
                return -1;
            }
            if (mark != QEMU_VM_SECTION_FOOTER || footer_id != id) {
                error_setg(errp, "MC: section %u at offset %" PRIu64
                           " has a bad footer", id, at);
                return -1;
            }
        }
    }
    if (w.pos != w.end) {
        error_setg(errp, "MC: checkpoint sections end at offset %" PRIu64
                   ", its trailer says %" PRIu64, w.pos, w.end);
        return -1;
    }
    return 0;
}
