/*
 * mc-dirty: a guest workload that dirties memory and reports its rate.
 *
 * Usage: mc-dirty [MiB] [pages-per-second] [steady]
 * Writes one byte in every 4 KiB page of a MiB-sized buffer, round after
 * round, optionally paced to a number of pages per second (0 = flat out).
 * Paced, it catches up after the guest was held up (a steady rate over
 * time); with "steady" it sleeps a fixed time per 256 pages instead, so
 * time the guest loses (a vCPU throttle, say) is not made up.
 * Once a second prints "mc-dirty: t=<s> pages=<total> rate=<pages/s>" so a
 * host can see both that the guest runs and how fast it dirties memory.
 *
 * With "check" (after or instead of "steady") each page holds the number
 * of the round that last wrote it, and every write first checks that the
 * page holds the previous round: the loop's position lives in registers
 * and on the stack, the stamps in the pages, so a standby that resumed
 * with memory and CPU state from different checkpoints (or a page lost
 * or applied twice) shows up as "mc-dirty: MISMATCH ..." and a non-zero
 * bad= count in the periodic line.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 32;
    double pps = argc > 2 ? strtod(argv[2], NULL) : 0;
    int steady = 0, check = 0;
    size_t pages = mib * 256, i = 0;
    uint64_t round = 1, bad = 0;
    /* volatile: every store must reach memory, that is the workload */
    volatile uint8_t *buf = malloc(mib << 20);
    uint64_t total = 0, last_total = 0;
    double start = now(), last = start;

    for (int a = 3; a < argc; a++) {
        steady |= !strcmp(argv[a], "steady");
        check |= !strcmp(argv[a], "check");
    }
    if (!buf) {
        perror("mc-dirty: malloc");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (check) {
        /* every page touched once, holding round 0 */
        memset((void *)buf, 0, mib << 20);
    }
    for (;;) {
        double t;

        if (check) {
            volatile uint64_t *stamp = (volatile uint64_t *)(buf + i * 4096);

            if (*stamp != round - 1) {
                printf("mc-dirty: MISMATCH page %zu holds round %llu, "
                       "expected %llu\n", i, (unsigned long long)*stamp,
                       (unsigned long long)(round - 1));
                bad++;
            }
            *stamp = round;
        } else {
            buf[i * 4096]++;
        }
        i = (i + 1) % pages;
        round += i == 0;
        total++;
        if (total % 256) {
            continue;
        }
        t = now();
        if (pps > 0) {
            /*
             * pace: sleep until the target count for elapsed time is due,
             * or (steady) for the time 256 pages take at the rate
             */
            double due = steady ? t + 256 / pps : start + total / pps;
            if (due > t) {
                struct timespec ts = {
                    .tv_sec = (time_t)(due - t),
                    .tv_nsec = (long)((due - t - (time_t)(due - t)) * 1e9),
                };
                nanosleep(&ts, NULL);
                t = now();
            }
        }
        if (t - last >= 1.0) {
            printf("mc-dirty: t=%.0f pages=%llu rate=%.0f bad=%llu\n",
                   t - start, (unsigned long long)total,
                   (total - last_total) / (t - last),
                   (unsigned long long)bad);
            last = t;
            last_total = total;
        }
    }
}
