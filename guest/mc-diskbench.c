/*
 * mc-diskbench: guest disk write throughput and fsync latency.
 *
 * Usage: mc-diskbench DIR SEQ_MIB RAND_SECONDS [TRIGGER]
 *
 * Two tests on files in DIR (the mounted ext4 disk):
 *  - seq: SEQ_MIB MiB written to DIR/seq (new each time) in 64 KiB
 *    write()s, then one fsync(): MB/s (1 MB = 10^6 bytes) over the
 *    writes and the fsync;
 *  - rand: for RAND_SECONDS, 4 KiB pwrite()s at random 4 KiB-aligned
 *    offsets of DIR/rand (16 MiB, written and synced once at start-up),
 *    each followed by fdatasync(): writes per second and the latency
 *    of each fdatasync() (p50, p99, max, in us).
 *
 * When to run (the trigger).  The benchmark must run while the host
 * has the configuration it wants to measure (no MC, MC at some
 * mc-delay, COLO), which a start-up delay cannot promise: boot and the
 * initial copy of RAM and disk take a variable time under TCG.  So the
 * host says when: TRIGGER is a tty (the guest init passes /dev/ttyS1, a
 * second serial port the host connects to a socket) and each line
 * "go TAG\n" read from it runs both tests once, tagged TAG.  Without
 * TRIGGER (or with "-") both tests run once at once, tagged 0.
 *
 * Output: one line per step, on stdout (the console) and on TRIGGER, so
 * the host can time the steps with its own clock as they arrive:
 *   mc-diskbench: ready
 *   mc-diskbench: run=TAG seq begin
 *   mc-diskbench: run=TAG seq mib=N us=T mbps=X
 *   mc-diskbench: run=TAG rand begin
 *   mc-diskbench: run=TAG rand n=N us=T iops=X p50_us=A p99_us=B max_us=C
 *   mc-diskbench: run=TAG done
 * Times come from CLOCK_MONOTONIC in the guest.  Under TCG the guest's
 * clock stops while the VM is stopped (an MC checkpoint's pause, for
 * instance), so a pause that falls inside a measured interval is not
 * counted in it; the host's timing of the begin/end lines is.  For the
 * same reason, with a TRIGGER each fdatasync() of the rand test is
 * bracketed by marks on TRIGGER (outside the lines above): 'S' just
 * before it and "E<us>;" just after it, <us> its latency by the guest's
 * clock, from which the host takes the latency by its own clock (or the
 * guest's figure, a lower bound, when both marks reach it at once).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define SEQ_CHUNK (64 * 1024)
#define RAND_BLOCK 4096
#define RAND_FILE_SIZE (16 * 1024 * 1024)
#define MAX_SAMPLES (1 << 20)

static int trigger_fd = -1;
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static long long now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static uint64_t next_random(void)
{
    /* xorshift64: plenty for spreading offsets */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void report(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    int len;

    va_start(ap, fmt);
    len = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (len < 0) {
        return;
    }
    if (len > (int)sizeof(line) - 2) {
        len = sizeof(line) - 2;
    }
    line[len++] = '\n';
    line[len] = 0;
    fputs("mc-diskbench: ", stdout);
    fputs(line, stdout);
    fflush(stdout);
    if (trigger_fd >= 0) {
        char out[300];
        int n = snprintf(out, sizeof(out), "mc-diskbench: %s", line);
        const char *p = out;

        while (n > 0) {
            ssize_t w = write(trigger_fd, p, n);
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w <= 0) {
                break;
            }
            p += w;
            n -= w;
        }
    }
}

/* A mark on the trigger for the host to time an event by. */
static void mark(const char *fmt, long long v)
{
    char buf[32];
    int n;

    if (trigger_fd < 0) {
        return;
    }
    n = snprintf(buf, sizeof(buf), fmt, v);
    while (write(trigger_fd, buf, n) < 0 && errno == EINTR) {
        continue;
    }
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= n;
    }
    return 0;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;

    return x < y ? -1 : x > y;
}

static long long percentile(const long long *sorted, size_t n, int p)
{
    size_t i;

    if (!n) {
        return 0;
    }
    /* nearest rank, rounded: the same rule as the host's pct() */
    i = (size_t)((p / 100.0) * (n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static int prepare_rand(const char *dir)
{
    static char buf[SEQ_CHUNK];
    char path[512];
    int fd, i;

    snprintf(path, sizeof(path), "%s/rand", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror("mc-diskbench: open rand");
        return -1;
    }
    memset(buf, 'r', sizeof(buf));
    for (i = 0; i < RAND_FILE_SIZE / SEQ_CHUNK; i++) {
        if (write_all(fd, buf, sizeof(buf)) < 0) {
            perror("mc-diskbench: write rand");
            close(fd);
            return -1;
        }
    }
    if (fsync(fd) < 0) {
        perror("mc-diskbench: fsync rand");
    }
    close(fd);
    return 0;
}

static void run_seq(const char *dir, const char *tag, int mib)
{
    static char buf[SEQ_CHUNK];
    char path[512];
    long long t0, us;
    long i, chunks = (long)mib * (1024 * 1024 / SEQ_CHUNK);
    int fd;

    snprintf(path, sizeof(path), "%s/seq", dir);
    unlink(path);
    sync();
    report("run=%s seq begin", tag);
    t0 = now_us();
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        report("run=%s seq error=open-%d", tag, errno);
        return;
    }
    for (i = 0; i < chunks; i++) {
        /* different bytes every chunk and every run */
        memset(buf, 'a' + (i + t0) % 26, sizeof(buf));
        if (write_all(fd, buf, sizeof(buf)) < 0) {
            report("run=%s seq error=write-%d", tag, errno);
            close(fd);
            return;
        }
    }
    if (fsync(fd) < 0) {
        report("run=%s seq error=fsync-%d", tag, errno);
    }
    close(fd);
    us = now_us() - t0;
    report("run=%s seq mib=%d us=%lld mbps=%.2f", tag, mib, us,
           us > 0 ? (double)mib * 1048576.0 / us : 0.0);
    unlink(path);
}

static void run_rand(const char *dir, const char *tag, int seconds,
                     long long *lat)
{
    static char buf[RAND_BLOCK];
    char path[512];
    long long t0, end, us;
    size_t n = 0;
    int fd;

    snprintf(path, sizeof(path), "%s/rand", dir);
    fd = open(path, O_WRONLY);
    if (fd < 0) {
        report("run=%s rand error=open-%d", tag, errno);
        return;
    }
    report("run=%s rand begin", tag);
    t0 = now_us();
    end = t0 + seconds * 1000000LL;
    for (;;) {
        off_t off = (off_t)(next_random() % (RAND_FILE_SIZE / RAND_BLOCK)) *
                    RAND_BLOCK;
        long long s, t;

        t = now_us();
        if (t >= end || n == MAX_SAMPLES) {
            break;
        }
        memcpy(buf, &n, sizeof(n));
        memcpy(buf + sizeof(n), &t, sizeof(t));
        if (pwrite(fd, buf, sizeof(buf), off) != sizeof(buf)) {
            report("run=%s rand error=write-%d", tag, errno);
            break;
        }
        mark("S", 0);
        s = now_us();
        if (fdatasync(fd) < 0) {
            report("run=%s rand error=fdatasync-%d", tag, errno);
            break;
        }
        lat[n] = now_us() - s;
        mark("E%lld;", lat[n++]);
    }
    us = now_us() - t0;
    close(fd);
    qsort(lat, n, sizeof(*lat), cmp_ll);
    report("run=%s rand n=%zu us=%lld iops=%.1f p50_us=%lld p99_us=%lld "
           "max_us=%lld", tag, n, us, us > 0 ? n * 1e6 / us : 0.0,
           percentile(lat, n, 50), percentile(lat, n, 99),
           n ? lat[n - 1] : 0);
}

static int open_trigger(const char *path)
{
    struct termios t;
    int fd = open(path, O_RDWR | O_NOCTTY);

    if (fd < 0) {
        return -1;
    }
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        tcsetattr(fd, TCSANOW, &t);
    }
    return fd;
}

/* The next "go TAG" line from the trigger: 0 and TAG in @tag, or -1. */
static int wait_trigger(char *tag, size_t size)
{
    static char in[256];
    static size_t used;

    for (;;) {
        char *nl;
        ssize_t r;

        while ((nl = memchr(in, '\n', used)) ||
               (nl = memchr(in, '\r', used))) {
            size_t len = nl - in;
            int ok = 0;

            *nl = 0;
            if (len > 3 && !strncmp(in, "go ", 3)) {
                size_t n = len - 3 < size - 1 ? len - 3 : size - 1;

                memcpy(tag, in + 3, n);
                tag[n] = 0;
                ok = 1;
            }
            used -= len + 1;
            memmove(in, nl + 1, used);
            if (ok) {
                return 0;
            }
        }
        if (used == sizeof(in)) {
            used = 0;   /* not a line of ours */
        }
        r = read(trigger_fd, in + used, sizeof(in) - used);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -1;
        }
        used += r;
    }
}

int main(int argc, char **argv)
{
    const char *dir, *trigger;
    int seq_mib, rand_s;
    long long *lat;
    char tag[64];

    if (argc < 4) {
        fprintf(stderr, "usage: mc-diskbench DIR SEQ_MIB RAND_SECONDS "
                "[TRIGGER]\n");
        return 2;
    }
    dir = argv[1];
    seq_mib = atoi(argv[2]);
    rand_s = atoi(argv[3]);
    trigger = argc > 4 ? argv[4] : "-";
    lat = malloc(MAX_SAMPLES * sizeof(*lat));
    if (!lat || prepare_rand(dir) < 0) {
        return 1;
    }
    if (strcmp(trigger, "-")) {
        trigger_fd = open_trigger(trigger);
        if (trigger_fd < 0) {
            perror("mc-diskbench: trigger");
            return 1;
        }
    }
    report("ready");
    for (;;) {
        if (trigger_fd < 0) {
            snprintf(tag, sizeof(tag), "0");
        } else if (wait_trigger(tag, sizeof(tag)) < 0) {
            return 1;
        }
        run_seq(dir, tag, seq_mib);
        run_rand(dir, tag, rand_s, lat);
        report("run=%s done", tag);
        if (trigger_fd < 0) {
            return 0;
        }
    }
}
