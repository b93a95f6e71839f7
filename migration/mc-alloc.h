/*
 * Micro-checkpointing (MC): counting heap allocations on the checkpoint
 * path (SPEC 3.6: none per checkpoint in steady state).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_ALLOC_H
#define QEMU_MIGRATION_MC_ALLOC_H

/*
 * From now on, every heap allocation this thread makes (malloc, calloc,
 * realloc: g_malloc and friends included) adds one to *@counter; NULL
 * stops counting.  The counter belongs to the caller.
 */
void mc_alloc_count_into(uint64_t *counter);

/* false where allocations cannot be counted (sanitizer builds) */
bool mc_alloc_countable(void);

/* glibc's own allocator: exported by it, declared by none of its headers */
void *__libc_malloc(size_t size);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *ptr, size_t size);

#endif
