/*
 * mc-udpseq: numbered UDP datagrams, to find a packet lost at failover.
 *
 * Usage: mc-udpseq ADDRESS PORT [interval-us]
 * Sends "seq <n>\n", n = 1, 2, 3, ..., to ADDRESS:PORT, one datagram
 * every interval-us (default 1000).  UDP is not retransmitted: a packet
 * the guest sent in a checkpointed epoch that never leaves either host
 * shows as a gap at the receiver, where TCP would hide it behind a
 * retransmission (and a stall).  A failed send is retried with the same
 * number, so a gap is never the sender's doing.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct sockaddr_in to = { .sin_family = AF_INET };
    long interval_us = argc > 3 ? strtol(argv[3], NULL, 0) : 1000;
    unsigned long long n = 1;
    int fd;

    if (argc < 3 || inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "usage: mc-udpseq ADDRESS PORT [interval-us]\n");
        return 2;
    }
    to.sin_port = htons(atoi(argv[2]));
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("mc-udpseq: socket");
        return 1;
    }
    printf("mc-udpseq: sending to %s:%s every %ld us\n", argv[1], argv[2],
           interval_us);
    fflush(stdout);
    for (;;) {
        char msg[64];
        int len = snprintf(msg, sizeof(msg), "seq %llu\n", n);
        struct timespec ts = {
            .tv_sec = interval_us / 1000000,
            .tv_nsec = (interval_us % 1000000) * 1000,
        };

        if (sendto(fd, msg, len, 0, (struct sockaddr *)&to,
                   sizeof(to)) == len) {
            n++;
        }
        nanosleep(&ts, NULL);
    }
}
