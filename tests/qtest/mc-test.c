/*
 * QTest testcase for micro-checkpointing (MC).
 *
 * Uses the upstream migration test framework and its guest, which
 * increments one byte in every page of 1..100 MiB, round after round:
 * any consistent snapshot of its memory has all those bytes equal except
 * for one step where the incrementer was.  A standby that resumes from a
 * whole checkpoint must show exactly that.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <poll.h>
#include "qemu/module.h"
#include "qemu/units.h"
#include "qemu/atomic.h"
#include "qemu/sockets.h"
#include "libqtest.h"
#include "qobject/qdict.h"
#include "qobject/qlist.h"
#include "migration/framework.h"
#include "migration/migration-qmp.h"
#include "migration/migration-util.h"
#ifdef CONFIG_GNUTLS
#include "crypto/tlscredspsk.h"
#include "tests/unit/crypto-tls-psk-helpers.h"
#endif

/* The framework's guest layout (migration/framework.c) */
extern unsigned start_address;
extern unsigned end_address;

#define MC_WAIT_SECONDS 180

#define mc_refused(qts, ...) \
    qobject_unref(qtest_qmp_assert_failure_ref(qts, __VA_ARGS__))

static char *tmpfs;

typedef struct MCStart {
    const char *policy;         /* mc-failover-policy on both sides */
    int delay;                  /* mc-delay */
    bool tls;
    int proxy_port;             /* connect through the test's proxy */
} MCStart;

static QDict *mc_query(QTestState *who)
{
    return qtest_qmp_assert_success_ref(who,
                                        "{ 'execute': 'query-migrate' }");
}

static uint64_t mc_stat(QTestState *who, const char *name)
{
    QDict *rsp = mc_query(who);
    QDict *mc = qdict_get_qdict(rsp, "mc");
    uint64_t v;

    g_assert(mc);
    v = qdict_get_int(mc, name);
    qobject_unref(rsp);
    return v;
}

/* The session state of @who (MCState), kept after MC ends */
static void mc_assert_state(QTestState *who, const char *want)
{
    QDict *rsp = mc_query(who);
    QDict *mc = qdict_get_qdict(rsp, "mc");

    g_assert(mc);
    g_assert_cmpstr(qdict_get_str(mc, "state"), ==, want);
    qobject_unref(rsp);
}

static int64_t mc_param(QTestState *who, const char *name)
{
    QDict *rsp = qtest_qmp_assert_success_ref(who,
        "{ 'execute': 'query-migrate-parameters' }");
    int64_t v = qdict_get_int(rsp, name);

    qobject_unref(rsp);
    return v;
}

static char *mc_status(QTestState *who)
{
    QDict *rsp = mc_query(who);
    char *st = g_strdup(qdict_get_try_str(rsp, "status"));

    qobject_unref(rsp);
    return st;
}

static char *mc_runstate(QTestState *who)
{
    QDict *rsp = qtest_qmp_assert_success_ref(who,
                                              "{ 'execute': 'query-status' }");
    char *st = g_strdup(qdict_get_str(rsp, "status"));

    qobject_unref(rsp);
    return st;
}

static void mc_wait_status(QTestState *who, const char *want)
{
    g_autofree char *last = NULL;
    int i;

    for (i = 0; i < MC_WAIT_SECONDS * 20; i++) {
        g_free(last);
        last = mc_status(who);
        if (last && !strcmp(last, want)) {
            return;
        }
        g_usleep(50 * 1000);
    }
    g_error("migration status never became '%s' (still '%s')", want,
            last ? last : "none");
}

/*
 * Wait until @who has @n more acknowledged checkpoints than now.  The
 * status turns "mc" just before the MC session (and its statistics)
 * exists: wait for the statistics first.
 */
static void mc_wait_acked(QTestState *who, uint64_t n)
{
    uint64_t target;
    int i;

    for (i = 0; i < MC_WAIT_SECONDS * 20; i++) {
        QDict *rsp = mc_query(who);
        bool has = qdict_haskey(rsp, "mc");

        qobject_unref(rsp);
        if (has) {
            break;
        }
        g_usleep(50 * 1000);
    }
    target = mc_stat(who, "acked") + n;

    for (i = 0; i < MC_WAIT_SECONDS * 20; i++) {
        if (mc_stat(who, "acked") >= target) {
            return;
        }
        g_usleep(50 * 1000);
    }
    g_error("fewer than %" PRIu64 " checkpoints acknowledged", target);
}

/*
 * The framework boots both sides from one image file, which the guest
 * never writes: MC would refuse it as shared storage, so these tests
 * leave disk replication off (tests/mc/test_disk.py covers disks).
 */
static void mc_enable(QTestState *who)
{
    migrate_set_capability(who, "mc", true);
    migrate_set_capability(who, "mc-disk-disable", true);
}

static void mc_set_policy(QTestState *who, const char *policy)
{
    qtest_qmp_assert_success(who, "{ 'execute': 'migrate-set-parameters',"
                             "  'arguments': { 'mc-failover-policy': %s } }",
                             policy);
}

#ifdef CONFIG_GNUTLS
static char *mc_tls_setup(QTestState *from, QTestState *to)
{
    char *dir = g_strdup_printf("%s/mc-tls", tmpfs);
    g_autofree char *psk = g_strdup_printf("%s/%s", dir,
                                           QCRYPTO_TLS_CREDS_PSKFILE);

    g_mkdir_with_parents(dir, 0700);
    test_tls_psk_init(psk);
    qtest_qmp_assert_success(from, "{ 'execute': 'object-add', 'arguments':"
                             "  { 'qom-type': 'tls-creds-psk', 'id': 'tls0',"
                             "    'endpoint': 'client', 'dir': %s,"
                             "    'username': 'qemu' } }", dir);
    qtest_qmp_assert_success(to, "{ 'execute': 'object-add', 'arguments':"
                             "  { 'qom-type': 'tls-creds-psk', 'id': 'tls0',"
                             "    'endpoint': 'server', 'dir': %s } }", dir);
    migrate_set_parameter_str(from, "tls-creds", "tls0");
    migrate_set_parameter_str(to, "tls-creds", "tls0");
    return dir;
}

static void mc_tls_cleanup(char *dir)
{
    g_autofree char *psk = g_strdup_printf("%s/%s", dir,
                                           QCRYPTO_TLS_CREDS_PSKFILE);

    test_tls_psk_cleanup(psk);
    rmdir(dir);
    g_free(dir);
}
#endif

static int mc_dest_port(QTestState *to)
{
    QDict *rsp = mc_query(to);
    QList *addrs = qdict_get_qlist(rsp, "socket-address");
    QDict *addr = qobject_to(QDict, qlist_peek(addrs));
    int port = atoi(qdict_get_str(addr, "port"));

    qobject_unref(rsp);
    return port;
}

/* Start a primary and a standby and wait until checkpoints flow. */
static void mc_start(QTestState **from, QTestState **to, MCStart *args,
                     char **tls_dir)
{
    MigrateStart start = { .hide_stderr = true };
    g_autofree char *uri = NULL;

    g_assert_cmpint(migrate_start(from, to, "tcp:127.0.0.1:0", &start), ==, 0);
    *tls_dir = NULL;
#ifdef CONFIG_GNUTLS
    if (args->tls) {
        *tls_dir = mc_tls_setup(*from, *to);
    }
#endif
    mc_enable(*from);
    mc_enable(*to);
    migrate_set_parameter_int(*from, "mc-delay", args->delay);
    migrate_set_parameter_int(*from, "mc-heartbeat-timeout", 3000);
    migrate_set_parameter_int(*to, "mc-heartbeat-timeout", 3000);
    mc_set_policy(*from, args->policy ? args->policy : "safe");
    mc_set_policy(*to, args->policy ? args->policy : "safe");
    migrate_ensure_converge(*from);
    wait_for_serial("src_serial");

    uri = g_strdup_printf("tcp:127.0.0.1:%d", args->proxy_port ?
                          args->proxy_port : mc_dest_port(*to));
    migrate_qmp(*from, *to, uri, NULL, "{}");
    mc_wait_status(*from, "mc");
    mc_wait_status(*to, "mc");
    mc_wait_acked(*from, 2);
}

/*
 * The guest's memory is a consistent snapshot: every byte equal but for
 * one step down by one, where the incrementer was.  @who must be stopped.
 */
static void mc_check_guest_ram(QTestState *who)
{
    uint8_t first, prev, b;
    unsigned addr;
    int steps = 0;

    qtest_memread(who, start_address, &first, 1);
    prev = first;
    for (addr = start_address + 4096; addr < end_address; addr += 4096) {
        qtest_memread(who, addr, &b, 1);
        if (b != prev) {
            g_assert_cmpint(b, ==, (uint8_t)(prev - 1));
            steps++;
        }
        prev = b;
    }
    if (steps == 1) {
        g_assert_cmpint(first, ==, (uint8_t)(prev + 1));
    } else {
        g_assert_cmpint(steps, ==, 0);
    }
}

/* The resumed guest runs: its memory changes, and is consistent. */
static void mc_check_resumed(QTestState *to)
{
    g_autofree char *rs = NULL;
    uint8_t a, b;
    int i;

    for (i = 0; i < MC_WAIT_SECONDS * 20; i++) {
        g_free(rs);
        rs = mc_runstate(to);
        if (!strcmp(rs, "running")) {
            break;
        }
        g_usleep(50 * 1000);
    }
    g_assert_cmpstr(rs, ==, "running");
    qtest_memread(to, start_address, &a, 1);
    for (i = 0; i < MC_WAIT_SECONDS * 100; i++) {
        qtest_memread(to, start_address, &b, 1);
        if (a != b) {
            break;
        }
        g_usleep(10 * 1000);
    }
    g_assert_cmpint(a, !=, b);
    qtest_qmp_assert_success(to, "{ 'execute': 'stop' }");
    mc_check_guest_ram(to);
}

/*
 * Kill -9 a QEMU and reap it here: libqtest counts death by a signal as a
 * test failure, so its QTestState is left alone (and leaked) afterwards.
 */
static void mc_reap_killed(QTestState *who)
{
    int status;

    kill(qtest_pid(who), SIGKILL);
    g_assert_cmpint(waitpid(qtest_pid(who), &status, 0), ==, qtest_pid(who));
    g_assert_true(WIFSIGNALED(status));
}

static void mc_cleanup(char *tls_dir)
{
    g_autofree char *a = g_strdup_printf("%s/src_serial", tmpfs);
    g_autofree char *b = g_strdup_printf("%s/dest_serial", tmpfs);

    unlink(a);
    unlink(b);
#ifdef CONFIG_GNUTLS
    if (tls_dir) {
        mc_tls_cleanup(tls_dir);
    }
#endif
}

/* Checkpoints flow, statistics add up, parameters change at run time. */
static void test_mc_basic(void)
{
    MCStart args = { .delay = 100 };
    QTestState *from, *to;
    char *tls = NULL;
    g_autofree char *hmp = NULL;
    g_autofree char *rs = NULL;
    QDict *rsp, *mc;

    mc_start(&from, &to, &args, &tls);

    rsp = mc_query(from);
    g_assert_cmpstr(qdict_get_str(rsp, "status"), ==, "mc");
    mc = qdict_get_qdict(rsp, "mc");
    g_assert_cmpstr(qdict_get_str(mc, "role"), ==, "primary");
    g_assert_cmpint(qdict_get_int(mc, "checkpoints"), >=,
                    qdict_get_int(mc, "acked"));
    g_assert_cmpint(qdict_get_int(mc, "acked"), >=, 2);
    g_assert_cmpint(qdict_get_int(mc, "pause-max-us"), >=,
                    qdict_get_int(mc, "pause-avg-us"));
    g_assert_cmpint(qdict_get_int(mc, "pause-avg-us"), >, 0);
    g_assert_cmpint(qdict_get_int(mc, "bytes"), >, 0);
    g_assert_cmpint(qdict_get_int(mc, "staging-size"), ==, 128 * MiB);
    g_assert_cmpint(qdict_get_int(mc, "staging-high-water"), <=,
                    128 * MiB);
    qobject_unref(rsp);
    g_assert_cmpstr(rs = mc_runstate(from), ==, "running");
    g_assert_cmpint(mc_stat(to, "applied"), >=, 1);
    mc_assert_state(from, "active");
    mc_assert_state(to, "active");

    /* Parameters change while MC runs: QMP and HMP. */
    migrate_set_parameter_int(from, "mc-delay", 0);
    g_assert_cmpint(mc_param(from, "mc-delay"), ==, 0);
    mc_wait_acked(from, 3);
    hmp = qtest_hmp(from, "mc-set-delay 250");
    g_assert_cmpstr(hmp, ==, "");
    g_assert_cmpint(mc_param(from, "mc-delay"), ==, 250);
    g_free(hmp);
    hmp = qtest_hmp(from, "info mc");
    g_assert_nonnull(strstr(hmp, "checkpoints:"));
    mc_wait_acked(from, 2);

    /* migrate_cancel: the guest runs on, the standby stays stopped. */
    migrate_cancel(from);
    mc_wait_status(from, "cancelled");
    g_free(rs);
    g_assert_cmpstr(rs = mc_runstate(from), ==, "running");
    mc_wait_status(to, "completed");
    g_free(rs);
    g_assert_cmpstr(rs = mc_runstate(to), ==, "paused");
    mc_assert_state(from, "cancelling");
    mc_assert_state(to, "stopped");

    qtest_quit(from);
    qtest_quit(to);
    mc_cleanup(tls);
}

/* Quitting the primary is no failure: the standby must stay stopped. */
static void test_mc_quit_primary(void)
{
    MCStart args = { .delay = 0 };
    QTestState *from, *to;
    char *tls = NULL;
    g_autofree char *rs = NULL;

    mc_start(&from, &to, &args, &tls);
    qtest_quit(from);
    mc_wait_status(to, "completed");
    rs = mc_runstate(to);
    g_assert_cmpstr(rs, ==, "paused");
    g_assert_null(qtest_qmp_event_ref(to, "MC_FAILOVER"));
    mc_assert_state(to, "stopped");
    qtest_quit(to);
    mc_cleanup(tls);
}

/* Kill -9 the primary: the standby resumes from a whole checkpoint. */
static void mc_primary_killed(MCStart *args)
{
    QTestState *from, *to;
    char *tls = NULL;
    QDict *ev;

    mc_start(&from, &to, args, &tls);
    mc_wait_acked(from, 1);
    mc_reap_killed(from);

    ev = qtest_qmp_eventwait_ref(to, "MC_FAILOVER");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "role"), ==,
                    "standby");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "reason"), ==,
                    "peer-closed");
    qobject_unref(ev);
    mc_check_resumed(to);
    qtest_quit(to);
    mc_cleanup(tls);
}

static void test_mc_kill_primary_between(void)
{
    /* long epochs: the kill lands between checkpoints */
    MCStart args = { .delay = 1000 };

    mc_primary_killed(&args);
}

static void test_mc_kill_primary_sending(void)
{
    /* back to back: the kill lands while a checkpoint is in flight */
    MCStart args = { .delay = 0 };

    mc_primary_killed(&args);
}

static void test_mc_tls(void)
{
    MCStart args = { .delay = 50, .tls = true };

    mc_primary_killed(&args);
}

/*
 * mc-switchover: the standby runs the guest from the primary's last
 * state.  A guest paused by the user moves paused, so both copies can be
 * compared page by page; then it runs on the standby.
 */
static void test_mc_switchover(void)
{
    MCStart args = { .delay = 100 };
    QTestState *from, *to;
    char *tls = NULL;
    g_autofree char *hmp = NULL;
    g_autofree char *rs = NULL;
    QDict *ev, *data;
    unsigned addr;
    uint8_t a, b;

    mc_start(&from, &to, &args, &tls);

    /* only on the primary; nothing changes */
    hmp = qtest_hmp(to, "mc-switchover");
    g_assert_nonnull(strstr(hmp, "for the primary"));
    mc_assert_state(to, "active");

    qtest_qmp_assert_success(from, "{ 'execute': 'stop' }");
    qtest_qmp_assert_success(from, "{ 'execute': 'mc-switchover' }");
    ev = qtest_qmp_eventwait_ref(to, "MC_FAILOVER");
    data = qdict_get_qdict(ev, "data");
    g_assert_cmpstr(qdict_get_str(data, "role"), ==, "standby");
    g_assert_cmpstr(qdict_get_str(data, "reason"), ==, "switchover");
    qobject_unref(ev);
    mc_wait_status(from, "completed");
    mc_assert_state(from, "switchover");
    g_assert_cmpstr(rs = mc_runstate(from), ==, "postmigrate");
    mc_wait_status(to, "completed");
    g_free(rs);
    g_assert_cmpstr(rs = mc_runstate(to), ==, "paused");
    for (addr = start_address; addr < end_address; addr += 4096) {
        qtest_memread(from, addr, &a, 1);
        qtest_memread(to, addr, &b, 1);
        g_assert_cmpint(a, ==, b);
    }
    mc_check_guest_ram(to);
    qtest_qmp_assert_success(to, "{ 'execute': 'cont' }");
    mc_check_resumed(to);

    qtest_quit(from);
    qtest_quit(to);
    mc_cleanup(tls);
}

/* Kill -9 the standby: the primary runs on and says so. */
static void test_mc_kill_standby(void)
{
    MCStart args = { .delay = 100 };
    QTestState *from, *to;
    char *tls = NULL;
    QDict *ev;
    uint8_t a, b;
    int i;

    mc_start(&from, &to, &args, &tls);
    mc_reap_killed(to);
    ev = qtest_qmp_eventwait_ref(from, "MC_FAILOVER");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "role"), ==,
                    "primary");
    qobject_unref(ev);
    mc_wait_status(from, "failed");
    qtest_memread(from, start_address, &a, 1);
    for (i = 0; i < 1000; i++) {
        qtest_memread(from, start_address, &b, 1);
        if (a != b) {
            break;
        }
        g_usleep(10 * 1000);
    }
    g_assert_cmpint(a, !=, b);
    qtest_quit(from);
    mc_cleanup(tls);
}

/*
 * A proxy between primary and standby that damages the stream once:
 * flips a byte inside a large forwarded piece (a checkpoint payload), or
 * forwards half of one and closes both connections (a truncation).
 */
typedef struct MCProxy {
    int listen_fd;
    int port;
    int dest_port;
    int mode;       /* 1 corrupt, 2 truncate, 3 partition, 4 corrupt all */
    int heal;                   /* atomic: partition over, close both */
    int armed;                  /* atomic: damage the next large piece */
    int done;                   /* atomic: damage was done */
    GThread *thread;
} MCProxy;

static gpointer mc_proxy_thread(gpointer opaque)
{
    MCProxy *p = opaque;
    struct sockaddr_in sa = { .sin_family = AF_INET };
    g_autofree char *buf = g_malloc(256 * 1024);
    int src = accept(p->listen_fd, NULL, NULL);
    int dst = socket(AF_INET, SOCK_STREAM, 0);

    g_assert_cmpint(src, >=, 0);
    sa.sin_port = htons(p->dest_port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g_assert_cmpint(connect(dst, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
    /*
     * An end of stream is passed on as one (shutdown of the write side),
     * as a network path would: the peer then reads all that came before
     * it.  Closing a socket with data unread would reset the connection.
     */
    bool ended[2] = { false, false };

    while (!ended[0] || !ended[1]) {
        struct pollfd fds[2] = {
            { .fd = ended[0] ? -1 : src, .events = POLLIN },
            { .fd = ended[1] ? -1 : dst, .events = POLLIN },
        };
        int i;

        if (p->mode == 3 && qatomic_read(&p->armed)) {
            /* a silent partition: nothing passes, nobody is told */
            qatomic_set(&p->done, 1);
            while (!qatomic_read(&p->heal)) {
                g_usleep(10 * 1000);
            }
            goto out;       /* the link heals: the peers' hosts reset it */
        }
        if (poll(fds, 2, 50) <= 0) {
            continue;
        }
        for (i = 0; i < 2; i++) {
            int from = i ? dst : src, to = i ? src : dst;
            ssize_t n;

            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            n = read(from, buf, 256 * 1024);
            if (n < 0) {
                goto out;
            }
            if (n == 0) {
                ended[i] = true;
                shutdown(to, SHUT_WR);
                continue;
            }
            if (!i && n >= 4096 && qatomic_read(&p->armed) &&
                (!qatomic_read(&p->done) || p->mode == 4)) {
                if (p->mode == 1 || p->mode == 4) {
                    buf[n / 2] ^= 0x40;
                } else {
                    n /= 2;
                }
                qatomic_set(&p->done, 1);
                if (p->mode == 2) {
                    g_assert_cmpint(write(to, buf, n), ==, n);
                    goto out;
                }
            }
            if (write(to, buf, n) != n) {
                goto out;
            }
        }
    }
out:
    close(src);
    close(dst);
    return NULL;
}

static void mc_proxy_start(MCProxy *p, int dest_port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);

    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g_assert_cmpint(bind(p->listen_fd, (struct sockaddr *)&sa, sizeof(sa)),
                    ==, 0);
    g_assert_cmpint(listen(p->listen_fd, 1), ==, 0);
    getsockname(p->listen_fd, (struct sockaddr *)&sa, &len);
    p->port = ntohs(sa.sin_port);
    p->dest_port = dest_port;
    p->thread = g_thread_new("mc-proxy", mc_proxy_thread, p);
}

/* Start a pair with the proxy in between (the standby listens first). */
static void mc_start_proxied(QTestState **from, QTestState **to,
                             MCProxy *p, const char *policy)
{
    MigrateStart start = { .hide_stderr = true };
    MCStart args = { .delay = 100, .policy = policy };
    g_autofree char *uri = NULL;

    g_assert_cmpint(migrate_start(from, to, "tcp:127.0.0.1:0", &start), ==, 0);
    mc_proxy_start(p, mc_dest_port(*to));
    mc_enable(*from);
    mc_enable(*to);
    migrate_set_parameter_int(*from, "mc-delay", args.delay);
    migrate_set_parameter_int(*from, "mc-heartbeat-timeout", 2000);
    migrate_set_parameter_int(*to, "mc-heartbeat-timeout", 2000);
    mc_set_policy(*from, policy);
    mc_set_policy(*to, policy);
    migrate_ensure_converge(*from);
    wait_for_serial("src_serial");
    uri = g_strdup_printf("tcp:127.0.0.1:%d", p->port);
    migrate_qmp(*from, *to, uri, NULL, "{}");
    mc_wait_status(*from, "mc");
    mc_wait_acked(*from, 2);
}

/* A corrupt checkpoint is refused, sent again, and MC carries on. */
static void test_mc_corrupt_checkpoint(void)
{
    MCProxy p = { .mode = 1 };
    QTestState *from, *to;
    int i;

    mc_start_proxied(&from, &to, &p, "safe");
    qatomic_set(&p.armed, 1);
    for (i = 0; i < MC_WAIT_SECONDS * 20 && !qatomic_read(&p.done); i++) {
        g_usleep(50 * 1000);
    }
    g_assert_true(qatomic_read(&p.done));
    mc_wait_acked(from, 3);
    g_assert_cmpint(mc_stat(to, "refused"), >=, 1);
    g_assert_cmpint(mc_stat(from, "refused"), >=, 1);
    {
        g_autofree char *st = mc_status(from);
        g_assert_cmpstr(st, ==, "mc");
    }

    /* and the standby still holds whole checkpoints only */
    mc_reap_killed(from);
    qobject_unref(qtest_qmp_eventwait_ref(to, "MC_FAILOVER"));
    mc_check_resumed(to);
    qtest_quit(to);
    g_thread_join(p.thread);
    close(p.listen_fd);
    mc_cleanup(NULL);
}

/*
 * Every checkpoint arrives corrupt: after the resends the primary gives
 * up, runs on unprotected and says why in query-migrate; the standby,
 * told to, stays stopped.  (The first run of this test found the
 * primary closing the channel without STOP, and the standby taking over
 * while the primary ran on.)
 */
static void test_mc_corrupt_always(void)
{
    MCProxy p = { .mode = 4 };
    QTestState *from, *to;
    QDict *ev, *rsp;
    const char *desc;

    mc_start_proxied(&from, &to, &p, "safe");
    qatomic_set(&p.armed, 1);
    ev = qtest_qmp_eventwait_ref(from, "MC_FAILOVER");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "reason"), ==,
                    "protocol-error");
    qobject_unref(ev);
    mc_wait_status(from, "failed");
    rsp = mc_query(from);
    desc = qdict_get_try_str(rsp, "error-desc");
    g_assert_nonnull(desc);
    g_test_message("error-desc: %s", desc);
    g_assert_nonnull(strstr(desc, "unprotected"));
    g_assert_nonnull(strstr(desc, "refused checkpoint"));
    qobject_unref(rsp);
    {
        g_autofree char *rs = mc_runstate(from);
        g_assert_cmpstr(rs, ==, "running");
    }
    /* told to stay stopped: no takeover while the primary runs on */
    mc_wait_status(to, "completed");
    {
        g_autofree char *rs = mc_runstate(to);
        g_assert_cmpstr(rs, ==, "paused");
    }
    g_assert_null(qtest_qmp_event_ref(to, "MC_FAILOVER"));
    qtest_quit(from);
    qtest_quit(to);
    g_thread_join(p.thread);
    close(p.listen_fd);
    mc_cleanup(NULL);
}

/*
 * The link dies in the middle of a checkpoint.  The standby drops the
 * partial checkpoint; with the manual policy it waits for management,
 * which fails over to the last whole checkpoint.
 */
static void test_mc_truncated_checkpoint(void)
{
    MCProxy p = { .mode = 2 };
    QTestState *from, *to;
    QDict *ev;
    uint64_t applied;

    mc_start_proxied(&from, &to, &p, "manual");
    qatomic_set(&p.armed, 1);
    ev = qtest_qmp_eventwait_ref(to, "MC_PEER_LOST");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "reason"), ==,
                    "peer-closed");
    qobject_unref(ev);
    g_thread_join(p.thread);
    close(p.listen_fd);

    /* manual: the primary also waits, holding on; drop it for good */
    qobject_unref(qtest_qmp_eventwait_ref(from, "MC_PEER_LOST"));
    mc_assert_state(from, "lost");
    mc_reap_killed(from);
    mc_assert_state(to, "waiting");

    applied = mc_stat(to, "applied");
    {
        g_autofree char *rs = mc_runstate(to);
        g_assert_cmpstr(rs, !=, "running");
    }
    qtest_qmp_assert_success(to, "{ 'execute': 'mc-failover' }");
    ev = qtest_qmp_eventwait_ref(to, "MC_FAILOVER");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "reason"), ==,
                    "request");
    g_assert_cmpint(qdict_get_int(qdict_get_qdict(ev, "data"), "epoch"), ==,
                    applied);
    qobject_unref(ev);
    mc_check_resumed(to);
    mc_assert_state(to, "failover");
    qtest_quit(to);
    mc_cleanup(NULL);
}

/*
 * Split brain: the link fails silently (both sides alive), then heals.
 * With the safe policy the primary runs on, the standby only reports the
 * loss, and the reset that arrives when the link heals does not make it
 * take over: never two guests running.
 */
static void test_mc_partition(void)
{
    MCProxy p = { .mode = 3 };
    QTestState *from, *to;
    QDict *ev;
    int i;

    mc_start_proxied(&from, &to, &p, "safe");
    qatomic_set(&p.armed, 1);

    ev = qtest_qmp_eventwait_ref(to, "MC_PEER_LOST");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "reason"), ==,
                    "heartbeat-timeout");
    qobject_unref(ev);
    ev = qtest_qmp_eventwait_ref(from, "MC_FAILOVER");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "role"), ==,
                    "primary");
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(ev, "data"), "reason"), ==,
                    "heartbeat-timeout");
    qobject_unref(ev);
    mc_wait_status(from, "failed");

    /* the link heals: resets arrive; the standby must stay put */
    qatomic_set(&p.heal, 1);
    g_thread_join(p.thread);
    close(p.listen_fd);
    for (i = 0; i < 30; i++) {
        g_autofree char *rs = mc_runstate(to);

        g_assert_cmpstr(rs, !=, "running");
        g_usleep(100 * 1000);
    }
    {
        g_autofree char *rs = mc_runstate(from);
        g_assert_cmpstr(rs, ==, "running");
    }
    g_assert_null(qtest_qmp_event_ref(to, "MC_FAILOVER"));
    mc_assert_state(to, "waiting");
    mc_assert_state(from, "lost");

    qtest_quit(from);
    qtest_quit(to);
    mc_cleanup(NULL);
}

/* Bad arguments are refused with an error and change nothing. */
static void test_mc_bad_args(void)
{
    QTestState *qts = qtest_init("-machine none");
    g_autofree char *hmp = NULL;
    QDict *rsp;

    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-delay': 60001 } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-max-buffer-size': 0 } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-heartbeat-timeout': 10 }"
                                 " }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-failover-policy': 'x' }"
                                 " }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-copy-threads': 0 } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-copy-threads': 65 } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-output-latency':"
                                 " 1000001 } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-pause-budget': 0 } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-parameters',"
                                 " 'arguments': { 'mc-pause-budget': 101 } }");
    mc_refused(qts, "{ 'execute': 'mc-failover' }");
    mc_refused(qts, "{ 'execute': 'migrate-set-capabilities',"
                                 " 'arguments': { 'capabilities': ["
                                 "  { 'capability': 'mc', 'state': true },"
                                 "  { 'capability': 'multifd', 'state': true }"
                                 " ] } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-capabilities',"
                                 " 'arguments': { 'capabilities': ["
                                 "  { 'capability': 'mc-net-disable',"
                                 "    'state': true } ] } }");
    mc_refused(qts, "{ 'execute': 'migrate-set-capabilities',"
                                 " 'arguments': { 'capabilities': ["
                                 "  { 'capability': 'mc-disk-disable',"
                                 "    'state': true } ] } }");
    hmp = qtest_hmp(qts, "mc-set-delay 70000");
    g_assert_nonnull(strstr(hmp, "between 0 and 60000"));

    /*
     * RDMA goes through MC's own channel: without TLS; here (no RDMA
     * device, or nobody listening) its own error.  A file is one way.
     */
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate-set-capabilities',"
                             " 'arguments': { 'capabilities': ["
                             "  { 'capability': 'mc', 'state': true } ] } }");
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate-set-parameters',"
                             " 'arguments': { 'tls-creds': 'tls0' } }");
    rsp = qtest_qmp(qts, "{ 'execute': 'migrate',"
                    " 'arguments': { 'uri': 'rdma:127.0.0.1:4444' } }");
    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"), "cannot use TLS"));
    qobject_unref(rsp);
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate-set-parameters',"
                             " 'arguments': { 'tls-creds': '' } }");
    rsp = qtest_qmp(qts, "{ 'execute': 'migrate',"
                    " 'arguments': { 'uri': 'rdma:127.0.0.1:4444' } }");
    g_assert_nonnull(strstr(qdict_get_str(qdict_get_qdict(rsp, "error"),
                                          "desc"), "MC over RDMA: "));
    qobject_unref(rsp);
    mc_refused(qts, "{ 'execute': 'migrate',"
                    " 'arguments': { 'uri': 'file:/dev/null' } }");
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate-set-capabilities',"
                             " 'arguments': { 'capabilities': ["
                             "  { 'capability': 'mc', 'state': false } ] } }");

    /* nothing changed: the defaults are still there */
    rsp = qtest_qmp_assert_success_ref(qts,
        "{ 'execute': 'query-migrate-parameters' }");
    g_assert_cmpint(qdict_get_int(rsp, "mc-delay"), ==, 100);
    g_assert_cmpint(qdict_get_int(rsp, "mc-max-buffer-size"), ==, 128 * MiB);
    g_assert_cmpint(qdict_get_int(rsp, "mc-heartbeat-timeout"), ==, 2000);
    g_assert_cmpstr(qdict_get_str(rsp, "mc-failover-policy"), ==, "safe");
    g_assert_cmpint(qdict_get_int(rsp, "mc-output-latency"), ==, 100);
    g_assert_cmpint(qdict_get_int(rsp, "mc-pause-budget"), ==, 10);
    qobject_unref(rsp);
    qtest_quit(qts);
}

/*
 * KVM's dirty ring is MC's harvest when QEMU runs with one: the capability
 * is accepted (the tests with KVM guests run in the lab, tests/lab).  The
 * ring bounds a checkpoint only if the staging buffer holds what the
 * rings hold: migrate says so at once when it does not.
 */
static void test_mc_kvm_dirty_ring(void)
{
    QTestState *qts;
    QDict *rsp;
    const char *desc;

    if (!kvm_dirty_ring_supported()) {
        g_test_skip("no /dev/kvm with a dirty ring on this machine");
        return;
    }
    /* one vCPU: a ring of 4096 pages, 16 MiB */
    qts = qtest_init("-machine none -accel kvm,dirty-ring-size=4096");
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate-set-capabilities',"
                             " 'arguments': { 'capabilities': ["
                             "  { 'capability': 'mc', 'state': true } ] } }");
    qtest_qmp_assert_success(qts, "{ 'execute': 'migrate-set-parameters',"
                             " 'arguments': {"
                             "  'mc-max-buffer-size': 16777216 } }");
    rsp = qtest_qmp(qts, "{ 'execute': 'migrate',"
                    " 'arguments': { 'uri': 'tcp:127.0.0.1:1' } }");
    desc = qdict_get_str(qdict_get_qdict(rsp, "error"), "desc");
    g_assert_nonnull(strstr(desc, "dirty-ring-size"));
    g_assert_nonnull(strstr(desc, "at least 22 MiB"));
    qobject_unref(rsp);
    rsp = qtest_qmp_assert_success_ref(qts,
        "{ 'execute': 'query-migrate' }");
    g_assert_false(qdict_haskey(rsp, "status"));
    qobject_unref(rsp);
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    MigrationTestEnv *env;
    int ret;

    g_test_init(&argc, &argv, NULL);
    env = migration_get_env();
    module_call_init(MODULE_INIT_QOM);
    tmpfs = env->tmpfs;

    qtest_add_func("/mc/bad-args", test_mc_bad_args);
    qtest_add_func("/mc/kvm-dirty-ring", test_mc_kvm_dirty_ring);
    if (env->has_tcg || env->has_kvm) {
        qtest_add_func("/mc/basic", test_mc_basic);
        qtest_add_func("/mc/failover/kill-primary-between",
                       test_mc_kill_primary_between);
        qtest_add_func("/mc/failover/kill-primary-sending",
                       test_mc_kill_primary_sending);
        qtest_add_func("/mc/failover/kill-standby", test_mc_kill_standby);
        qtest_add_func("/mc/quit-primary", test_mc_quit_primary);
        qtest_add_func("/mc/switchover", test_mc_switchover);
        qtest_add_func("/mc/stream/corrupt", test_mc_corrupt_checkpoint);
        qtest_add_func("/mc/stream/truncated", test_mc_truncated_checkpoint);
        qtest_add_func("/mc/stream/corrupt-always", test_mc_corrupt_always);
        qtest_add_func("/mc/split-brain/partition", test_mc_partition);
#ifdef CONFIG_GNUTLS
        qtest_add_func("/mc/tls/kill-primary", test_mc_tls);
#endif
    }
    ret = g_test_run();
    migration_env_clean(env);
    return ret;
}
