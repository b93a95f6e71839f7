/*
 * Micro-checkpointing (MC): no allocation counts over an allocator other
 * than the system's (mc-alloc.c stands in for malloc, which would not
 * match tcmalloc's or jemalloc's free).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "mc-alloc.h"

void mc_alloc_count_into(uint64_t *counter)
{
}

bool mc_alloc_countable(void)
{
    return false;
}
