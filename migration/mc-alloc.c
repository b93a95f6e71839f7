/*
 * Micro-checkpointing (MC): counting heap allocations on the checkpoint
 * path.
 *
 * glibc lets a program replace its allocator's entry points.  These
 * replacements hand every call on to glibc's own allocator (so free(),
 * memalign() and malloc_usable_size() still match) and count the calls
 * a thread makes while it has asked to be counted: a thread-local
 * pointer, NULL everywhere else, so the cost outside MC is one load.
 * This is how the statistics prove that a checkpoint allocates nothing
 * whoever would do it (MC, the migration core, device save, GLib).
 *
 * Sanitizers replace the allocator themselves: there nothing is
 * replaced and nothing counted (mc_alloc_countable() says so).  With
 * tcmalloc or jemalloc, whose free() would not match, the build takes
 * mc-alloc-stub.c instead.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "mc-alloc.h"

#if defined(__GLIBC__) && !defined(QEMU_SANITIZE_ADDRESS) && \
    !defined(QEMU_SANITIZE_THREAD)

static __thread uint64_t *mc_alloc_counter;

void *malloc(size_t size)
{
    if (unlikely(mc_alloc_counter)) {
        (*mc_alloc_counter)++;
    }
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    if (unlikely(mc_alloc_counter)) {
        (*mc_alloc_counter)++;
    }
    return __libc_calloc(n, size);
}

void *realloc(void *ptr, size_t size)
{
    if (unlikely(mc_alloc_counter)) {
        (*mc_alloc_counter)++;
    }
    return __libc_realloc(ptr, size);
}

void mc_alloc_count_into(uint64_t *counter)
{
    mc_alloc_counter = counter;
}

bool mc_alloc_countable(void)
{
    return true;
}

#else

void mc_alloc_count_into(uint64_t *counter)
{
}

bool mc_alloc_countable(void)
{
    return false;
}

#endif
