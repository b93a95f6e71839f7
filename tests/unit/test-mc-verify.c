/*
 * Unit tests for the standby's check of a checkpoint before it applies
 * it (migration/mc-verify.c): a well-formed checkpoint passes, and each
 * way a checksum-valid checkpoint can be malformed is refused with a
 * message that says where.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qapi/error.h"
#include "../migration/ram.h"
#include "../migration/savevm.h"
#include "../migration/mc-block.h"
#include "../migration/mc-verify.h"

#define PAGE        4096
#define RAM_ID      2
#define BLOCK_ID    5
#define RAM_SIZE    (16 * PAGE)
#define DISK_SIZE   (1 * MiB)

static MCSectionKind t_section_kind(uint32_t id, void *opaque)
{
    return id == RAM_ID ? MC_SECTION_RAM :
           id == BLOCK_ID ? MC_SECTION_BLOCK : MC_SECTION_OTHER;
}

static int64_t t_ram_block_size(const char *name, void *opaque)
{
    return !strcmp(name, "pc.ram") ? RAM_SIZE : -1;
}

static int64_t t_disk_size(uint32_t disk, void *opaque)
{
    return disk == 0 ? DISK_SIZE : -1;
}

static const MCVerifyOps t_ops = {
    .section_kind = t_section_kind,
    .ram_block_size = t_ram_block_size,
    .disk_size = t_disk_size,
};

static const MCVerify t_verify = {
    .ops = &t_ops, .page_size = PAGE, .footers = true,
};

/* What to get wrong in the checkpoint built by build() */
typedef enum {
    OK,
    BAD_BLOCK_NAME, PAGE_PAST_END, ZERO_FILL, XBZRLE_FLAG, MEM_SIZE_FLAG,
    CONTINUE_FIRST, OTHER_SECTION, START_SECTION, COMMAND, BAD_FOOTER,
    NO_SUCH_DISK, DISK_PAST_END, DISK_CHUNK, DISK_SETUP, TRAILER_PAST_END,
    EOF_EARLY, TRUNCATED_PAGE, NO_EOS,
} Fault;

static void put8(GByteArray *b, uint8_t v)
{
    g_byte_array_append(b, &v, 1);
}

static void put32(GByteArray *b, uint32_t v)
{
    uint8_t x[4];

    stl_be_p(x, v);
    g_byte_array_append(b, x, 4);
}

static void put64(GByteArray *b, uint64_t v)
{
    uint8_t x[8];

    stq_be_p(x, v);
    g_byte_array_append(b, x, 8);
}

static void put_section(GByteArray *b, uint32_t id, Fault f)
{
    put8(b, f == START_SECTION ? QEMU_VM_SECTION_START : QEMU_VM_SECTION_END);
    put32(b, f == OTHER_SECTION && id == RAM_ID ? 7 : id);
}

static void put_footer(GByteArray *b, uint32_t id, Fault f)
{
    put8(b, QEMU_VM_SECTION_FOOTER);
    put32(b, f == BAD_FOOTER ? id + 1 : id);
}

static GByteArray *build(Fault f)
{
    GByteArray *b = g_byte_array_new();
    g_autofree uint8_t *page = g_malloc0(PAGE);
    const char *name = f == BAD_BLOCK_NAME ? "pc.rom" : "pc.ram";
    uint64_t devices_at;

    memset(page, 0xa5, PAGE);
    if (f == COMMAND) {
        put8(b, QEMU_VM_COMMAND);
    }
    put_section(b, RAM_ID, f);
    /* a named page, then a zero page of the same block */
    put64(b, (f == PAGE_PAST_END ? RAM_SIZE : 3 * PAGE) |
          (f == CONTINUE_FIRST ? RAM_SAVE_FLAG_CONTINUE : 0) |
          (f == XBZRLE_FLAG ? RAM_SAVE_FLAG_XBZRLE : RAM_SAVE_FLAG_PAGE));
    if (f != CONTINUE_FIRST) {
        put8(b, strlen(name));
        g_byte_array_append(b, (const uint8_t *)name, strlen(name));
    }
    g_byte_array_append(b, page, f == TRUNCATED_PAGE ? PAGE / 2 : PAGE);
    put64(b, 5 * PAGE | RAM_SAVE_FLAG_CONTINUE |
          (f == MEM_SIZE_FLAG ? RAM_SAVE_FLAG_MEM_SIZE : RAM_SAVE_FLAG_ZERO));
    put8(b, f == ZERO_FILL ? 1 : 0);
    if (f != NO_EOS) {
        put64(b, RAM_SAVE_FLAG_EOS);
    }
    put_footer(b, RAM_ID, f);

    put_section(b, BLOCK_ID, f);
    if (f == DISK_SETUP) {
        put8(b, MC_BLK_SETUP);
        put32(b, 0);
    }
    put8(b, MC_BLK_DATA);
    put32(b, f == NO_SUCH_DISK ? 1 : 0);
    put64(b, f == DISK_PAST_END ? DISK_SIZE - 256 : 4096);
    put32(b, 512);
    g_byte_array_append(b, page, 512);
    put8(b, MC_BLK_ZERO);
    put32(b, 0);
    put64(b, 0);
    put32(b, f == DISK_CHUNK ? MC_BLK_CHUNK + 4096 : 4096);
    put8(b, MC_BLK_END);
    put_footer(b, BLOCK_ID, f);
    put8(b, QEMU_VM_EOF);

    devices_at = b->len;
    if (f == EOF_EARLY) {
        devices_at += 3;    /* as if three bytes followed the end mark */
    }
    g_byte_array_append(b, (const uint8_t *)"DEVICES", 7);
    put64(b, f == TRAILER_PAST_END ? b->len + 1 : devices_at);
    return b;
}

static void test_well_formed(void)
{
    g_autoptr(GByteArray) b = build(OK);
    MCVerifyResult res;

    g_assert_cmpint(mc_verify_checkpoint(&t_verify, b->data, b->len, &res,
                                         &error_abort), ==, 0);
    g_assert_cmpuint(res.pages, ==, 2);
    g_assert_cmpuint(res.disk_records, ==, 2);
    g_assert_cmpuint(res.devices_len, ==, 7);
    g_assert_cmpmem(b->data + res.devices_at, 7, "DEVICES", 7);
}

static const struct {
    Fault fault;
    const char *says;
} malformed[] = {
    { BAD_BLOCK_NAME, "unknown RAM block \"pc.rom\"" },
    { PAGE_PAST_END, "beyond the end of its block" },
    { ZERO_FILL, "zero page at offset" },
    { XBZRLE_FLAG, "RAM record with flags 0x40" },
    { MEM_SIZE_FLAG, "RAM record with flags 0x24" },
    { CONTINUE_FIRST, "continues a block never named" },
    { OTHER_SECTION, "section 7 at offset 0 is neither RAM nor disks" },
    { START_SECTION, "section type 0x1 at offset 0" },
    { COMMAND, "section type 0x8 at offset 0" },
    { BAD_FOOTER, "has a bad footer" },
    { NO_SUCH_DISK, "disk 1, which is not replicated" },
    { DISK_PAST_END, "out of range" },
    { DISK_CHUNK, "out of range" },
    { DISK_SETUP, "disk record of type 1" },
    { TRAILER_PAST_END, "past its end" },
    { EOF_EARLY, "its trailer says" },
    { TRUNCATED_PAGE, "ends inside a RAM page" },
    { NO_EOS, "RAM record with flags 0x0 " },
};

static void test_malformed(void)
{
    size_t i;

    for (i = 0; i < ARRAY_SIZE(malformed); i++) {
        g_autoptr(GByteArray) b = build(malformed[i].fault);
        Error *err = NULL;
        MCVerifyResult res;

        g_assert_cmpint(mc_verify_checkpoint(&t_verify, b->data, b->len,
                                             &res, &err), ==, -1);
        g_assert_nonnull(err);
        if (!strstr(error_get_pretty(err), malformed[i].says)) {
            g_test_message("case %zu: %s", i, error_get_pretty(err));
            g_assert_not_reached();
        }
        error_free(err);
    }
}

/* Every proper prefix, given a trailer, is refused and read in bounds */
static void test_every_cut(void)
{
    g_autoptr(GByteArray) b = build(OK);
    MCVerifyResult res;
    uint64_t devices_at = ldq_be_p(b->data + b->len - 8);
    uint64_t cut;

    for (cut = 0; cut < devices_at; cut++) {
        g_autofree uint8_t *c = g_malloc(cut + 8);

        memcpy(c, b->data, cut);
        stq_be_p(c + cut, cut);
        g_assert_cmpint(mc_verify_checkpoint(&t_verify, c, cut + 8, &res,
                                             NULL), ==, -1);
    }
    g_assert_cmpint(mc_verify_checkpoint(&t_verify, b->data, 7, &res, NULL),
                    ==, -1);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/mc/verify/well-formed", test_well_formed);
    g_test_add_func("/mc/verify/malformed", test_malformed);
    g_test_add_func("/mc/verify/every-cut", test_every_cut);
    return g_test_run();
}
