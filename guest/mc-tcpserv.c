/*
 * mc-tcpserv: a TCP server for testing connections across a failover.
 *
 * Usage: mc-tcpserv [port] [interval-ms]
 * For every client (one process each):
 *  - sends "srv <n> <pad> <n>\n" every interval-ms, n = 1, 2, 3, ...
 *    (a numbered stream: a client sees any gap, duplicate or reset);
 *    <pad> is 1 to 32 'x' chosen from the clock, so a copy of the guest
 *    that runs on from an older state writes different bytes at the
 *    same stream offsets, and a client that saw output the standby
 *    never had finds a broken record;
 *  - answers each line "cli <n>\n" it receives with "echo <n>\n" (an echo
 *    for round-trip latency and loss checks on the client's side);
 *  - answers "time <n>\n" with "echo <n> <clock>\n", the guest's clock in
 *    nanoseconds: a reply that differs between two runs of the guest, as
 *    real services' do (a Date header, a random ID), which a comparing
 *    proxy such as COLO's cannot match;
 *  - answers "bulk <bytes>\n" with that many bytes of '.' and "\nbulk
 *    done\n" (a throughput test).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
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

static int bulk(int fd, unsigned long long bytes)
{
    static char buf[65536];

    memset(buf, '.', sizeof(buf));
    while (bytes) {
        size_t n = bytes < sizeof(buf) ? bytes : sizeof(buf);

        if (write_all(fd, buf, n) < 0) {
            return -1;
        }
        bytes -= n;
    }
    return write_all(fd, "\nbulk done\n", 11);
}

static void serve(int fd, int interval)
{
    char in[4096], line[128], pad[40];
    size_t used = 0;
    unsigned long long seq = 0;
    long long next = now_ms();
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        long long wait = next - now_ms();
        int r;

        if (interval > 0 && wait <= 0) {
            struct timespec ts;
            int len, padlen;

            clock_gettime(CLOCK_MONOTONIC, &ts);
            padlen = 1 + (ts.tv_nsec / 1000) % 32;
            memset(pad, 'x', padlen);
            pad[padlen] = 0;
            seq++;
            len = snprintf(line, sizeof(line), "srv %llu %s %llu\n",
                           seq, pad, seq);
            if (write_all(fd, line, len) < 0) {
                return;
            }
            next += interval;
            continue;
        }
        r = poll(&pfd, 1, interval > 0 ? (int)wait : -1);
        if (r < 0 && errno != EINTR) {
            return;
        }
        if (r > 0) {
            ssize_t n = read(fd, in + used, sizeof(in) - 1 - used);
            char *nl, *p = in;

            if (n <= 0) {
                return;
            }
            used += n;
            in[used] = 0;
            while ((nl = strchr(p, '\n'))) {
                unsigned long long c;

                *nl = 0;
                if (sscanf(p, "cli %llu", &c) == 1) {
                    int len = snprintf(line, sizeof(line), "echo %llu\n", c);
                    if (write_all(fd, line, len) < 0) {
                        return;
                    }
                } else if (sscanf(p, "time %llu", &c) == 1) {
                    struct timespec ts;
                    int len;

                    clock_gettime(CLOCK_MONOTONIC, &ts);
                    len = snprintf(line, sizeof(line), "echo %llu %lld\n", c,
                                   ts.tv_sec * 1000000000LL + ts.tv_nsec);
                    if (write_all(fd, line, len) < 0) {
                        return;
                    }
                } else if (sscanf(p, "bulk %llu", &c) == 1 && bulk(fd, c)) {
                    return;
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
    int port = argc > 1 ? atoi(argv[1]) : 7000;
    int interval = argc > 2 ? atoi(argv[2]) : 100;
    struct sockaddr_in sa = { .sin_family = AF_INET };
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);

    signal(SIGCHLD, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    sa.sin_port = htons(port);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(s, 16) < 0) {
        perror("mc-tcpserv");
        return 1;
    }
    printf("mc-tcpserv: listening on %d\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            continue;
        }
        if (fork() == 0) {
            close(s);
            serve(c, interval);
            _exit(0);
        }
        close(c);
    }
}
