/*
 * mc-diskwriter: numbered, checksummed records appended to a file, for
 * testing disk replication across a failover.
 *
 * Usage: mc-diskwriter PORT FILE [interval-ms]
 *
 * Listens on TCP PORT, one client at a time.  While a client is
 * connected it appends a RECORD_SIZE-byte record to FILE every
 * interval-ms (default 5): write(), fsync(), and only once fsync has
 * returned "ok <n>\n" goes to the client.  A client told "ok <n>" may
 * therefore expect records 1..n on the disk, whatever happens to the
 * machine underneath (a failover to a standby, for instance: the
 * process itself does not know and just goes on).
 *
 * Record n: magic, CRC32 of the whole record (the CRC field counted as
 * zero), n, a clock stamp, and a payload derived from n and the stamp
 * (so two runs write different bytes at the same offsets).
 *
 * The line "verify\n" from the client stops the appending, closes FILE,
 * syncs, drops the page cache (so the file is read back from the disk),
 * re-reads FILE and answers
 *   "verify records=<M> bad=<B> torn=<T> last=<n>\n"
 * M: whole records in the file; B: records with a wrong magic or a
 * number out of sequence (1, 2, 3, ... expected) or unreadable; T:
 * records whose CRC is wrong, plus one for a trailing partial record;
 * n: the number of the last valid record.  Then it remounts the file
 * system holding FILE read-only and sends "verify done\n".
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECORD_SIZE 512
#define RECORD_MAGIC 0x5244434dU    /* "MCDR" little-endian */

struct record {
    uint32_t magic;
    uint32_t crc;
    uint64_t seq;
    uint64_t stamp;
    uint8_t payload[RECORD_SIZE - 24];
};

static uint32_t crc_table[256];

static void crc32_init(void)
{
    uint32_t i, j, c;

    for (i = 0; i < 256; i++) {
        c = i;
        for (j = 0; j < 8; j++) {
            c = (c & 1) ? (c >> 1) ^ 0xedb88320U : c >> 1;
        }
        crc_table[i] = c;
    }
}

static uint32_t crc32_buf(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint32_t c = 0xffffffffU;

    while (len--) {
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    }
    return c ^ 0xffffffffU;
}

static uint32_t record_crc(const struct record *r)
{
    struct record copy = *r;

    copy.crc = 0;
    return crc32_buf(&copy, sizeof(copy));
}

static void record_fill(struct record *r, uint64_t seq)
{
    struct timespec ts;
    uint64_t x;
    size_t i;

    clock_gettime(CLOCK_REALTIME, &ts);
    r->magic = RECORD_MAGIC;
    r->crc = 0;
    r->seq = seq;
    r->stamp = (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
    x = (seq * 0x9e3779b97f4a7c15ULL) ^ r->stamp;
    x |= 1;
    for (i = 0; i < sizeof(r->payload); i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r->payload[i] = x >> 24;
    }
    r->crc = record_crc(r);
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

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

static int send_line(int fd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int send_line(int fd, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    int len;

    va_start(ap, fmt);
    len = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (len < 0 || len >= (int)sizeof(line)) {
        return -1;
    }
    return write_all(fd, line, len);
}

static void drop_caches(void)
{
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);

    if (fd < 0) {
        perror("mc-diskwriter: drop_caches");
        return;
    }
    if (write_all(fd, "3\n", 2) < 0) {
        perror("mc-diskwriter: drop_caches");
    }
    close(fd);
}

/* The mount point of the file system that holds @path (absolute). */
static int find_mountpoint(const char *path, char *out, size_t outlen)
{
    FILE *f = fopen("/proc/self/mounts", "r");
    char dev[256], dir[256], rest[512];
    size_t best = 0;

    if (!f) {
        return -1;
    }
    while (fscanf(f, "%255s %255s %511[^\n]", dev, dir, rest) == 3) {
        size_t len = strlen(dir);

        if (strncmp(path, dir, len) != 0) {
            continue;
        }
        if (!(len == 1 || path[len] == '/' || path[len] == 0)) {
            continue;
        }
        if (len > best && len < outlen) {
            best = len;
            strcpy(out, dir);
        }
    }
    fclose(f);
    return best ? 0 : -1;
}

struct verdict {
    unsigned long long records, bad, torn, last;
};

static void verify_file(const char *path, struct verdict *v)
{
    struct record r;
    uint64_t expect = 1;
    int fd;

    memset(v, 0, sizeof(*v));
    fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror("mc-diskwriter: verify: open");
        v->bad = 1;
        return;
    }
    for (;;) {
        size_t got = 0;

        while (got < sizeof(r)) {
            ssize_t n = read(fd, (char *)&r + got, sizeof(r) - got);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0) {
                printf("mc-diskwriter: verify: read at record %llu: %s\n",
                       v->records + 1, strerror(errno));
                v->bad++;
                goto out;
            }
            if (n == 0) {
                break;
            }
            got += n;
        }
        if (got == 0) {
            break;
        }
        if (got < sizeof(r)) {
            printf("mc-diskwriter: verify: trailing partial record "
                   "(%zu bytes)\n", got);
            v->torn++;
            break;
        }
        v->records++;
        if (r.magic != RECORD_MAGIC) {
            if (v->bad < 5) {
                printf("mc-diskwriter: verify: record %llu: bad magic "
                       "%#x\n", v->records, r.magic);
            }
            v->bad++;
        } else if (record_crc(&r) != r.crc) {
            if (v->torn < 5) {
                printf("mc-diskwriter: verify: record %llu: bad crc\n",
                       v->records);
            }
            v->torn++;
        } else {
            if (r.seq != expect) {
                if (v->bad < 5) {
                    printf("mc-diskwriter: verify: record %llu holds "
                           "number %llu\n", v->records,
                           (unsigned long long)r.seq);
                }
                v->bad++;
            }
            v->last = r.seq;
        }
        expect++;
    }
out:
    close(fd);
}

/* Stop, read back from the disk, report, remount read-only. */
static int do_verify(int cfd, const char *path, int *fdp)
{
    struct verdict v;
    char mnt[256];

    if (*fdp >= 0) {
        close(*fdp);
        *fdp = -1;
    }
    sync();
    drop_caches();
    verify_file(path, &v);
    printf("mc-diskwriter: verify records=%llu bad=%llu torn=%llu "
           "last=%llu\n", v.records, v.bad, v.torn, v.last);
    fflush(stdout);
    if (send_line(cfd, "verify records=%llu bad=%llu torn=%llu last=%llu\n",
                  v.records, v.bad, v.torn, v.last) < 0) {
        return -1;
    }
    if (find_mountpoint(path, mnt, sizeof(mnt)) < 0) {
        printf("mc-diskwriter: no mount point for %s\n", path);
    } else if (mount("none", mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0) {
        printf("mc-diskwriter: remount %s read-only: %s\n", mnt,
               strerror(errno));
    } else {
        printf("mc-diskwriter: %s remounted read-only\n", mnt);
    }
    fflush(stdout);
    return send_line(cfd, "verify done\n");
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/*
 * Serve one client; the numbering goes on across clients.  Returns when
 * the client goes away.
 */
static void serve(int cfd, const char *path, int *fdp, uint64_t *seq,
                  int interval, int *stopped)
{
    char in[1024];
    size_t used = 0;
    long long next = now_ms();
    int one = 1;

    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    for (;;) {
        struct pollfd pfd = { .fd = cfd, .events = POLLIN };
        long long wait = next - now_ms();
        int r;

        if (!*stopped && wait <= 0) {
            struct record rec;

            record_fill(&rec, *seq + 1);
            if (write_all(*fdp, &rec, sizeof(rec)) < 0 || fsync(*fdp) < 0) {
                printf("mc-diskwriter: record %llu: %s\n",
                       (unsigned long long)*seq + 1, strerror(errno));
                fflush(stdout);
                send_line(cfd, "error %d\n", errno);
                *stopped = 1;
                continue;
            }
            (*seq)++;
            if (send_line(cfd, "ok %llu\n", (unsigned long long)*seq) < 0) {
                return;
            }
            next = now_ms() + interval;
            continue;
        }
        r = poll(&pfd, 1, *stopped ? -1 : (int)wait);
        if (r < 0 && errno != EINTR) {
            return;
        }
        if (r > 0) {
            ssize_t n = read(cfd, in + used, sizeof(in) - 1 - used);
            char *nl, *p = in;

            if (n <= 0) {
                return;
            }
            used += n;
            in[used] = 0;
            while ((nl = strchr(p, '\n'))) {
                *nl = 0;
                if (strcmp(p, "verify") == 0) {
                    *stopped = 1;
                    if (do_verify(cfd, path, fdp) < 0) {
                        return;
                    }
                }
                p = nl + 1;
            }
            used -= p - in;
            memmove(in, p, used);
            if (used == sizeof(in) - 1) {
                used = 0; /* a line this long is not ours: drop it */
            }
        }
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    int one = 1, s, fd, stopped = 0;
    int interval = argc > 3 ? atoi(argv[3]) : 5;
    uint64_t seq = 0;
    const char *path;

    if (argc < 3) {
        fprintf(stderr, "usage: mc-diskwriter PORT FILE [interval-ms]\n");
        return 2;
    }
    path = argv[2];
    crc32_init();
    signal(SIGPIPE, SIG_IGN);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0) {
        perror("mc-diskwriter: open");
        return 1;
    }
    s = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_port = htons(atoi(argv[1]));
    if (s < 0 ||
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(s, 4) < 0) {
        perror("mc-diskwriter");
        return 1;
    }
    printf("mc-diskwriter: listening on %s, writing %s\n", argv[1], path);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);

        if (c < 0) {
            continue;
        }
        serve(c, path, &fd, &seq, interval, &stopped);
        close(c);
    }
}
