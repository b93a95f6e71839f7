/*
 * libFuzzer target: everything an MC standby parses from the wire.
 *
 * One input is what a primary could send once MC runs, behind a short
 * description of the standby it talks to:
 *
 *   u8      options: bit 0 fix checksums (so that mutations get past
 *           them to the parsers behind), bit 1 sections end in footers
 *   be32    staging capacity (bounded), be32 "ram" section id,
 *   be32    "mc-block" section id
 *   u8      RAM blocks (at most 8), each: u8 name length, name, be64 size
 *   u8      disks (at most 8), each: be64 size
 *   ...     messages as on the wire: 40-byte header, payload
 *
 * The messages go through the standby's own code in the order its
 * receive loop uses it (mc-standby.c): header decoding and its bounds
 * (mc_wire_decode), the payload checksum (mc_wire_check_payload), the
 * epoch order, and the check of the checkpoint's form
 * (mc_verify_checkpoint).  What mc_verify_checkpoint accepts is then
 * loaded by a model of QEMU's loaders (the savevm section loop,
 * ram_load_precopy, mc_block_load_state: the part of their rules a
 * checkpoint may use, written here after those loaders, not after
 * mc-verify.c) into a digest of the standby's RAM and disks:
 *   - a checkpoint the check accepts must load whole: a loader error
 *     there is the half-applied checkpoint the check exists to prevent,
 *     and aborts (a finding);
 *   - a checkpoint it refuses must leave the model as it was: the last
 *     good checkpoint stays whole.
 * Crashes, hangs and leaks are the sanitizers' and libFuzzer's to find.
 *
 * Seeds: streams recorded between a real primary and standby
 * (tests/mc/mcproxy.py writes them in this format).  Built and run by
 * scripts/fuzz.sh (make check-fuzz; a fixed budget in make check).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qapi/error.h"
#include "mc-wire.h"
#include "mc-block.h"
#include "mc-verify.h"
#include "ram.h"
#include "savevm.h"
#include "libfuzzer.h"
#include <zlib.h>

#define PAGE            4096
#define MAX_BLOCKS      8
#define MAX_DISKS       8
#define MAX_CAPACITY    (4 * MiB)

typedef struct Standby {
    bool fix_csums;
    bool footers;
    uint32_t capacity;
    uint32_t ram_id, block_id;
    int nblocks;
    char names[MAX_BLOCKS][256];
    int64_t sizes[MAX_BLOCKS];
    int ndisks;
    int64_t disk_sizes[MAX_DISKS];

    /* the model of what the standby applied: a digest of every write */
    uint32_t applied_digest;
    uint64_t applied_epoch;
    int last_block;         /* the RAM loader's last block, or -1 */
} Standby;

static MCSectionKind fz_section_kind(uint32_t id, void *opaque)
{
    Standby *s = opaque;

    /* the loader's search: the first section with that number wins */
    return id == s->ram_id ? MC_SECTION_RAM :
           id == s->block_id ? MC_SECTION_BLOCK : MC_SECTION_OTHER;
}

static int fz_find_block(Standby *s, const char *name)
{
    int i;

    for (i = 0; i < s->nblocks; i++) {
        if (!strcmp(s->names[i], name)) {
            return i;
        }
    }
    return -1;
}

static int64_t fz_ram_block_size(const char *name, void *opaque)
{
    Standby *s = opaque;
    int i = fz_find_block(s, name);

    return i < 0 ? -1 : s->sizes[i];
}

static int64_t fz_disk_size(uint32_t disk, void *opaque)
{
    Standby *s = opaque;

    return disk < (uint32_t)s->ndisks ? s->disk_sizes[disk] : -1;
}

static const MCVerifyOps fz_ops = {
    .section_kind = fz_section_kind,
    .ram_block_size = fz_ram_block_size,
    .disk_size = fz_disk_size,
};

/* A reader over a byte range; any read past its end fails the load */
typedef struct Reader {
    const uint8_t *p;
    size_t len, pos;
    bool err;
} Reader;

static uint64_t rd(Reader *r, int n)
{
    uint64_t v = 0;
    int i;

    if (r->err || r->len - r->pos < (size_t)n) {
        r->err = true;
        return 0;
    }
    for (i = 0; i < n; i++) {
        v = v << 8 | r->p[r->pos++];
    }
    return v;
}

static const uint8_t *rd_bytes(Reader *r, size_t n)
{
    const uint8_t *p = r->p + r->pos;

    if (r->err || r->len - r->pos < n) {
        r->err = true;
        return NULL;
    }
    r->pos += n;
    return p;
}

/*
 * The RAM loader's rules (ram_load_precopy): records until EOS; ZERO
 * and PAGE name their block unless CONTINUE; the page must start inside
 * the block; a zero page's fill byte must be 0; other flags fail.
 */
static bool model_ram(Standby *s, Reader *r, uint32_t *digest)
{
    for (;;) {
        uint64_t word = rd(r, 8), addr = word & ~(uint64_t)(PAGE - 1);
        unsigned flags = word & (PAGE - 1);
        unsigned kind = flags & ~RAM_SAVE_FLAG_CONTINUE;
        const uint8_t *data;
        char name[256];
        int b = s->last_block;

        if (r->err) {
            return false;
        }
        if (flags & (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE |
                     RAM_SAVE_FLAG_XBZRLE)) {
            if (!(flags & RAM_SAVE_FLAG_CONTINUE)) {
                uint8_t len = rd(r, 1);
                const uint8_t *n = rd_bytes(r, len);

                if (!n) {
                    return false;
                }
                memcpy(name, n, len);
                name[len] = 0;
                b = fz_find_block(s, name);
                if (b < 0) {
                    return false;
                }
                s->last_block = b;
            } else if (b < 0) {
                return false;
            }
            if (addr >= (uint64_t)s->sizes[b]) {
                return false;
            }
        }
        switch (kind) {
        case RAM_SAVE_FLAG_ZERO:
            if (rd(r, 1) != 0 || r->err) {
                return false;
            }
            *digest = crc32(*digest, (const uint8_t *)&addr, sizeof(addr));
            break;
        case RAM_SAVE_FLAG_PAGE:
            data = rd_bytes(r, PAGE);
            if (!data) {
                return false;
            }
            *digest = crc32(*digest, data, PAGE);
            break;
        case RAM_SAVE_FLAG_EOS:
            if (flags & ~(RAM_SAVE_FLAG_EOS | RAM_SAVE_FLAG_CONTINUE)) {
                return false;
            }
            return true;
        default:
            return false;
        }
    }
}

/* The disk loader's rules (mc_block_load_state, during MC) */
static bool model_block(Standby *s, Reader *r, uint32_t *digest)
{
    for (;;) {
        uint8_t type = rd(r, 1);
        uint32_t disk, len;
        int64_t offset;

        if (r->err) {
            return false;
        }
        if (type == MC_BLK_END) {
            return true;
        }
        if (type != MC_BLK_DATA && type != MC_BLK_ZERO) {
            /* SETUP would re-open the disks in the middle of MC */
            return false;
        }
        disk = rd(r, 4);
        offset = rd(r, 8);
        len = rd(r, 4);
        if (r->err || disk >= (uint32_t)s->ndisks || len > MC_BLK_CHUNK ||
            offset < 0 || offset + len > s->disk_sizes[disk]) {
            return false;
        }
        if (type == MC_BLK_DATA) {
            const uint8_t *data = rd_bytes(r, len);

            if (!data) {
                return false;
            }
            *digest = crc32(*digest, data, len);
        }
        *digest = crc32(*digest, (const uint8_t *)&offset, sizeof(offset));
    }
}

/*
 * The savevm loop over a checkpoint's sections (qemu_loadvm_state_main
 * as MC runs it), up to the end mark, then the device part kept.
 */
static bool model_load(Standby *s, const uint8_t *buf, size_t len,
                       uint64_t devices_at, uint32_t *digest)
{
    Reader r = { .p = buf, .len = devices_at };

    for (;;) {
        uint8_t type = rd(&r, 1);
        uint32_t id;
        bool ok;

        if (r.err) {
            return false;
        }
        if (type == QEMU_VM_EOF) {
            break;
        }
        if (type != QEMU_VM_SECTION_PART && type != QEMU_VM_SECTION_END) {
            /* START, FULL, COMMAND: not in a checkpoint, never applied */
            return false;
        }
        id = rd(&r, 4);
        if (r.err) {
            return false;
        }
        if (id == s->ram_id) {
            ok = model_ram(s, &r, digest);
        } else if (id == s->block_id) {
            ok = model_block(s, &r, digest);
        } else {
            return false;
        }
        if (!ok) {
            return false;
        }
        if (s->footers && (rd(&r, 1) != QEMU_VM_SECTION_FOOTER ||
                           rd(&r, 4) != id || r.err)) {
            return false;
        }
    }
    /* the device part is what follows: it must be exactly there */
    if (r.pos != devices_at) {
        return false;
    }
    *digest = crc32(*digest, buf + devices_at, len - 8 - devices_at);
    return true;
}

static bool parse_standby(Reader *r, Standby *s)
{
    uint8_t opts = rd(r, 1);
    int i;

    s->fix_csums = opts & 1;
    s->footers = opts & 2;
    s->capacity = rd(r, 4) % (MAX_CAPACITY + 1);
    s->ram_id = rd(r, 4);
    s->block_id = rd(r, 4);
    s->nblocks = rd(r, 1) % (MAX_BLOCKS + 1);
    for (i = 0; i < s->nblocks; i++) {
        uint8_t len = rd(r, 1);
        const uint8_t *n = rd_bytes(r, len);

        if (!n) {
            return false;
        }
        memcpy(s->names[i], n, len);
        s->names[i][len] = 0;
        /* page multiples, as RAM blocks are; at most 1 TiB */
        s->sizes[i] = rd(r, 8) & ((1ULL << 40) - 1) & ~(uint64_t)(PAGE - 1);
    }
    s->ndisks = rd(r, 1) % (MAX_DISKS + 1);
    for (i = 0; i < s->ndisks; i++) {
        s->disk_sizes[i] = rd(r, 8) & ((1ULL << 40) - 1);
    }
    s->last_block = -1;
    return !r->err;
}

/* MC_FUZZ_VERBOSE=1: say what happens to each checkpoint (seeds, crashes) */
static bool verbose;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    verbose = getenv("MC_FUZZ_VERBOSE") != NULL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Standby s = { 0 };
    Reader r = { .p = data, .len = size };
    MCVerify v = { .ops = &fz_ops, .opaque = &s, .page_size = PAGE };
    g_autofree uint8_t *staging = NULL;

    if (!parse_standby(&r, &s)) {
        return -1;      /* not a standby: keep it out of the corpus */
    }
    v.footers = s.footers;
    /* allocated once, like the standby's staging buffer */
    staging = g_malloc(s.capacity ? s.capacity : 1);

    while (size - r.pos >= MC_WIRE_HDR_SIZE) {
        uint8_t hdr[MC_WIRE_HDR_SIZE];
        MCVerifyResult res;
        MCWireHeader h;
        Error *err = NULL;
        uint32_t digest;

        memcpy(hdr, data + r.pos, MC_WIRE_HDR_SIZE);
        r.pos += MC_WIRE_HDR_SIZE;
        if (s.fix_csums) {
            stl_be_p(hdr + 36, mc_wire_csum(0, hdr, 36));
        }
        if (mc_wire_decode(hdr, s.capacity, &h, &err) < 0) {
            /* a bad header: the standby drops the link */
            if (verbose) {
                fprintf(stderr, "header: %s\n", error_get_pretty(err));
            }
            error_free(err);
            break;
        }
        if (h.type == MC_MSG_HEARTBEAT) {
            continue;
        }
        if (h.type != MC_MSG_CHECKPOINT) {
            /* STOP ends MC, anything else from a primary is an error */
            break;
        }
        if (size - r.pos < h.len) {
            break;      /* the link died mid-checkpoint: it is dropped */
        }
        /* received whole into staging, as mc_transport_recv_payload */
        memcpy(staging, data + r.pos, h.len);
        r.pos += h.len;
        if (s.fix_csums) {
            h.payload_csum = mc_wire_csum(0, staging, h.len);
        }
        if (mc_wire_check_payload(&h, staging, &err) < 0) {
            if (verbose) {
                fprintf(stderr, "payload: %s\n", error_get_pretty(err));
            }
            error_free(err);
            continue;   /* corrupt: refused, the primary resends */
        }
        if (h.epoch != s.applied_epoch + 1) {
            continue;   /* out of order: refused */
        }
        digest = s.applied_digest;
        if (mc_verify_checkpoint(&v, staging, h.len, &res, &err) < 0) {
            /* refused as malformed: nothing of it may have been applied */
            if (verbose) {
                fprintf(stderr, "checkpoint %" PRIu64 ": %s\n", h.epoch,
                        error_get_pretty(err));
            }
            error_free(err);
            assert(digest == s.applied_digest);
            continue;
        }
        assert(res.devices_at + res.devices_len + 8 == h.len);
        /* accepted: QEMU's loaders must take all of it */
        if (!model_load(&s, staging, h.len, res.devices_at, &digest)) {
            fprintf(stderr, "checkpoint %" PRIu64 " passed the check but "
                    "the loaders refuse it: it would be half applied\n",
                    h.epoch);
            abort();
        }
        s.applied_digest = digest;
        s.applied_epoch = h.epoch;
        if (verbose) {
            fprintf(stderr, "checkpoint %" PRIu64 ": applied, %" PRIu64
                    " pages, %" PRIu64 " disk records\n", h.epoch, res.pages,
                    res.disk_records);
        }
    }
    return 0;
}

/*
 * A mutator that knows the format.  Byte-level mutations rarely hit the
 * few bytes of structure among a checkpoint's page data, so half of the
 * mutations change one field of a message, section or record (type,
 * flags, ids, offsets, lengths, fill bytes, footers, the trailer), or
 * drop or repeat a record, keeping the header's length and the trailer
 * in step so the change reaches the check instead of the framing.
 */

#define MAX_FIELDS  4096

typedef struct Field {
    size_t at;
    uint8_t len;
} Field;

typedef struct Record {
    size_t start, end;      /* in the input */
    size_t hdr;             /* its message's header */
} Record;

typedef struct Shape {
    size_t size;            /* of the input */
    Field fields[MAX_FIELDS];
    int nfields;
    Record records[MAX_FIELDS];
    int nrecords;
} Shape;

static void shape_field(Shape *sh, size_t at, uint8_t len)
{
    if (sh->nfields < MAX_FIELDS && at + len <= sh->size) {
        sh->fields[sh->nfields++] = (Field) { at, len };
    }
}

static void shape_record(Shape *sh, size_t start, size_t end, size_t hdr)
{
    if (sh->nrecords < MAX_FIELDS) {
        sh->records[sh->nrecords++] = (Record) { start, end, hdr };
    }
}

/* Fields and records of one payload at @base (lenient: stops at junk) */
static void shape_payload(Shape *sh, const Standby *s, const uint8_t *data,
                          size_t base, size_t len, size_t hdr)
{
    Reader r = { .p = data + base, .len = len >= 8 ? len - 8 : 0 };

    if (len >= 8) {
        shape_field(sh, base + len - 8, 8);             /* the trailer */
    }
    while (!r.err && r.pos < r.len) {
        size_t sec = r.pos;
        uint8_t type = rd(&r, 1);
        uint32_t id;

        shape_field(sh, base + sec, 1);
        if (type != QEMU_VM_SECTION_PART && type != QEMU_VM_SECTION_END) {
            return;
        }
        shape_field(sh, base + r.pos, 4);
        id = rd(&r, 4);
        while (!r.err) {
            size_t rec = r.pos;

            if (id == s->ram_id) {
                uint64_t word = rd(&r, 8);
                unsigned flags = word & (PAGE - 1);

                shape_field(sh, base + rec, 8);
                shape_field(sh, base + rec + 6, 2);
                if (r.err || flags & RAM_SAVE_FLAG_EOS) {
                    break;
                }
                if (!(flags & RAM_SAVE_FLAG_CONTINUE)) {
                    shape_field(sh, base + r.pos, 1);
                    rd_bytes(&r, rd(&r, 1));
                }
                if (flags & RAM_SAVE_FLAG_ZERO) {
                    shape_field(sh, base + r.pos, 1);
                    rd(&r, 1);
                } else {
                    rd_bytes(&r, PAGE);
                }
            } else if (id == s->block_id) {
                uint8_t t = rd(&r, 1);

                shape_field(sh, base + rec, 1);
                if (r.err || (t != MC_BLK_DATA && t != MC_BLK_ZERO)) {
                    break;
                }
                shape_field(sh, base + r.pos, 4);
                shape_field(sh, base + r.pos + 4, 8);
                shape_field(sh, base + r.pos + 12, 4);
                rd(&r, 8);
                rd(&r, 8);
                if (t == MC_BLK_DATA) {
                    rd_bytes(&r, ldl_be_p(data + base + r.pos - 4));
                }
            } else {
                return;
            }
            if (!r.err) {
                shape_record(sh, base + rec, base + r.pos, hdr);
            }
        }
        shape_field(sh, base + r.pos, 1);               /* footer mark */
        shape_field(sh, base + r.pos + 1, 4);
        rd(&r, 1);
        rd(&r, 4);
    }
}

static void shape_input(Shape *sh, const uint8_t *data, size_t size,
                        Standby *s)
{
    Reader r = { .p = data, .len = size };

    sh->nfields = sh->nrecords = 0;
    sh->size = size;
    if (!parse_standby(&r, s)) {
        return;
    }
    while (size - r.pos >= MC_WIRE_HDR_SIZE) {
        size_t hdr = r.pos;
        uint64_t len = ldq_be_p(data + hdr + 24);

        shape_field(sh, hdr + 6, 2);        /* type */
        shape_field(sh, hdr + 16, 8);       /* epoch */
        shape_field(sh, hdr + 24, 8);       /* length */
        r.pos += MC_WIRE_HDR_SIZE;
        if (len > size - r.pos) {
            return;
        }
        shape_payload(sh, s, data, r.pos, len, hdr);
        r.pos += len;
    }
}

/*
 * Insert (@delta > 0) or remove bytes at @at, inside the sections of the
 * message whose header is at @hdr, and keep its length and trailer right.
 */
static size_t shape_splice(uint8_t *data, size_t size, size_t max_size,
                           size_t hdr, size_t at, ssize_t delta)
{
    size_t payload = hdr + MC_WIRE_HDR_SIZE;
    uint64_t len = ldq_be_p(data + hdr + 24);
    uint64_t devices_at = ldq_be_p(data + payload + len - 8);

    if (delta > 0) {
        if (size + delta > max_size) {
            return size;
        }
        memmove(data + at + delta, data + at, size - at);
    } else {
        memmove(data + at, data + at - delta, size - at + delta);
    }
    size += delta;
    len += delta;
    stq_be_p(data + hdr + 24, len);
    stq_be_p(data + payload + len - 8, devices_at + delta);
    return size;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
                               unsigned int seed)
{
    static Shape sh;
    Standby s;
    GRand *rand;
    size_t ret = size;

    if (seed % 2) {
        return LLVMFuzzerMutate(data, size, max_size);
    }
    shape_input(&sh, data, size, &s);
    if (!sh.nfields) {
        return LLVMFuzzerMutate(data, size, max_size);
    }
    rand = g_rand_new_with_seed(seed);
    if (sh.nrecords && g_rand_int_range(rand, 0, 4) == 0) {
        const Record *rec = &sh.records[g_rand_int_range(rand, 0,
                                                         sh.nrecords)];
        size_t n = rec->end - rec->start;

        if (g_rand_boolean(rand)) {
            /* drop it */
            ret = shape_splice(data, size, max_size, rec->hdr, rec->start,
                               -(ssize_t)n);
        } else {
            /* repeat it */
            ret = shape_splice(data, size, max_size, rec->hdr, rec->end, n);
            if (ret != size) {
                memcpy(data + rec->end, data + rec->start, n);
            }
        }
    } else {
        const Field *f = &sh.fields[g_rand_int_range(rand, 0, sh.nfields)];
        uint64_t v = 0;
        int i;

        for (i = 0; i < f->len; i++) {
            v = v << 8 | data[f->at + i];
        }
        switch (g_rand_int_range(rand, 0, 5)) {
        case 0:
            v = ((uint64_t)g_rand_int(rand) << 32) | g_rand_int(rand);
            break;
        case 1:
            v += g_rand_int_range(rand, -4, 5);
            break;
        case 2:
            v = g_rand_int_range(rand, 0, 17);
            break;
        case 3:
            v ^= 1ULL << g_rand_int_range(rand, 0, f->len * 8);
            break;
        default:
            /* a value from another field of the same size */
            for (i = 0; i < 8; i++) {
                const Field *o = &sh.fields[g_rand_int_range(rand, 0,
                                                             sh.nfields)];
                if (o->len == f->len) {
                    int j;

                    for (v = 0, j = 0; j < o->len; j++) {
                        v = v << 8 | data[o->at + j];
                    }
                    break;
                }
            }
        }
        for (i = f->len - 1; i >= 0; i--) {
            data[f->at + i] = v;
            v >>= 8;
        }
    }
    g_rand_free(rand);
    return ret;
}
