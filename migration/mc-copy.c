/*
 * Micro-checkpointing (MC): copying a checkpoint's pages with threads.
 *
 * The pool's workers are started once, when MC starts, and wait on a
 * semaphore each: a checkpoint pays for a wake-up per worker, never for
 * a thread creation.  Not util/thread-pool.c's ThreadPool: it allocates
 * an element per task and lets GLib retire idle threads, both inside
 * the pause here.  Each copy job is a contiguous part of the list,
 * about the same number of bytes per thread; the caller does the first
 * part itself.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/thread.h"
#include "mc-copy.h"

typedef struct MCCopyWorker {
    QemuThread thread;
    QemuSemaphore go;
    MCCopyPool *pool;
    /* Set by the caller before go is posted, read by the worker */
    size_t first, end;
} MCCopyWorker;

struct MCCopyPool {
    unsigned nworkers;          /* threads besides the caller */
    MCCopyWorker *workers;
    QemuSemaphore done;         /* one post per finished job */
    /* The current job, set before the workers are woken */
    uint8_t *dst;
    const MCCopy *list;
    bool quit;
};

static void mc_copy_range(uint8_t *dst, const MCCopy *list, size_t first,
                          size_t end)
{
    size_t i;

    for (i = first; i < end; i++) {
        memcpy(dst + list[i].dst_off, list[i].src, list[i].len);
    }
}

static void *mc_copy_worker(void *opaque)
{
    MCCopyWorker *w = opaque;
    MCCopyPool *pool = w->pool;

    for (;;) {
        qemu_sem_wait(&w->go);
        if (qatomic_read(&pool->quit)) {
            break;
        }
        mc_copy_range(pool->dst, pool->list, w->first, w->end);
        qemu_sem_post(&pool->done);
    }
    return NULL;
}

MCCopyPool *mc_copy_pool_new(unsigned threads)
{
    MCCopyPool *pool = g_new0(MCCopyPool, 1);
    unsigned i;

    pool->nworkers = threads > 1 ? threads - 1 : 0;
    pool->workers = g_new0(MCCopyWorker, pool->nworkers);
    qemu_sem_init(&pool->done, 0);
    for (i = 0; i < pool->nworkers; i++) {
        MCCopyWorker *w = &pool->workers[i];

        w->pool = pool;
        qemu_sem_init(&w->go, 0);
        qemu_thread_create(&w->thread, "mc-copy", mc_copy_worker, w,
                           QEMU_THREAD_JOINABLE);
    }
    return pool;
}

void mc_copy_pool_free(MCCopyPool *pool)
{
    unsigned i;

    if (!pool) {
        return;
    }
    qatomic_set(&pool->quit, true);
    for (i = 0; i < pool->nworkers; i++) {
        qemu_sem_post(&pool->workers[i].go);
    }
    for (i = 0; i < pool->nworkers; i++) {
        qemu_thread_join(&pool->workers[i].thread);
        qemu_sem_destroy(&pool->workers[i].go);
    }
    qemu_sem_destroy(&pool->done);
    g_free(pool->workers);
    g_free(pool);
}

unsigned mc_copy_pool_threads(MCCopyPool *pool)
{
    return pool->nworkers + 1;
}

void mc_copy_pool_run(MCCopyPool *pool, uint8_t *dst, const MCCopy *list,
                      size_t n, size_t bytes)
{
    unsigned threads = pool->nworkers + 1, t, started = 0;
    size_t share = bytes / threads + 1, i = 0, mine_end;

    pool->dst = dst;
    pool->list = list;
    /* The caller's part: the first share of bytes */
    for (size_t acc = 0; i < n && acc < share; i++) {
        acc += list[i].len;
    }
    mine_end = i;
    for (t = 0; t < pool->nworkers && i < n; t++) {
        MCCopyWorker *w = &pool->workers[t];
        size_t acc = 0;

        w->first = i;
        /* the last worker takes the rest */
        while (i < n && (acc < share || t == pool->nworkers - 1)) {
            acc += list[i++].len;
        }
        w->end = i;
        qemu_sem_post(&w->go);
        started++;
    }
    mc_copy_range(dst, list, 0, mine_end);
    while (started--) {
        qemu_sem_wait(&pool->done);
    }
}
