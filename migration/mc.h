/*
 * Micro-checkpointing (MC): what the rest of the migration code calls.
 *
 * The MC code lives in migration/mc*.c; upstream files reach it only
 * through the functions declared here (see patches/ for the call sites).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_MIGRATION_MC_H
#define QEMU_MIGRATION_MC_H

#include "qemu/units.h"
#include "qapi/qapi-types-migration.h"
#include "qapi/qapi-types-mc.h"
#include "hw/qdev-properties.h"
#include "migration.h"

#define MC_DEFAULT_DELAY_MS             100
#define MC_MAX_DELAY_MS                 60000
#define MC_DEFAULT_MAX_BUFFER_SIZE      (128 * MiB)
#define MC_MIN_MAX_BUFFER_SIZE          (1 * MiB)
#define MC_DEFAULT_HEARTBEAT_TIMEOUT_MS 2000
#define MC_MIN_HEARTBEAT_TIMEOUT_MS     50
#define MC_MAX_HEARTBEAT_TIMEOUT_MS     600000
#define MC_DEFAULT_COPY_THREADS         2
#define MC_MAX_COPY_THREADS             64
#define MC_DEFAULT_OUTPUT_LATENCY_US    100
#define MC_MAX_OUTPUT_LATENCY_US        1000000
#define MC_DEFAULT_PAUSE_BUDGET         10

/* Properties of the migration object (-global migration.mc-delay=...) */
extern const PropertyInfo mc_prop_failover_policy;
#define DEFINE_MC_PROPERTIES                                                \
    DEFINE_PROP_MIG_CAP("x-mc", MIGRATION_CAPABILITY_MC),                   \
    DEFINE_PROP_MIG_CAP("x-mc-net-disable",                                 \
                        MIGRATION_CAPABILITY_MC_NET_DISABLE),               \
    DEFINE_PROP_MIG_CAP("x-mc-disk-disable",                                \
                        MIGRATION_CAPABILITY_MC_DISK_DISABLE),              \
    DEFINE_PROP_UINT32("mc-delay", MigrationState,                          \
                       parameters.mc_delay, MC_DEFAULT_DELAY_MS),           \
    DEFINE_PROP_SIZE("mc-max-buffer-size", MigrationState,                  \
                     parameters.mc_max_buffer_size,                         \
                     MC_DEFAULT_MAX_BUFFER_SIZE),                           \
    DEFINE_PROP_UINT32("mc-heartbeat-timeout", MigrationState,              \
                       parameters.mc_heartbeat_timeout,                     \
                       MC_DEFAULT_HEARTBEAT_TIMEOUT_MS),                    \
    DEFINE_PROP_UINT8("mc-copy-threads", MigrationState,                    \
                      parameters.mc_copy_threads, MC_DEFAULT_COPY_THREADS), \
    DEFINE_PROP_UINT32("mc-output-latency", MigrationState,                 \
                       parameters.mc_output_latency,                        \
                       MC_DEFAULT_OUTPUT_LATENCY_US),                       \
    DEFINE_PROP_UINT8("mc-pause-budget", MigrationState,                    \
                      parameters.mc_pause_budget, MC_DEFAULT_PAUSE_BUDGET), \
    DEFINE_PROP_SIGNED("mc-failover-policy", MigrationState,                \
                       parameters.mc_failover_policy,                       \
                       MC_FAILOVER_POLICY_SAFE, mc_prop_failover_policy,    \
                       MCFailoverPolicy)

/* Capabilities and parameters (mc-options.c) */
bool migrate_mc(void);
bool migrate_mc_net_disable(void);
bool migrate_mc_disk_disable(void);
uint32_t migrate_mc_delay(void);
uint64_t migrate_mc_max_buffer_size(void);
uint32_t migrate_mc_heartbeat_timeout(void);
MCFailoverPolicy migrate_mc_failover_policy(void);
uint8_t migrate_mc_copy_threads(void);
uint32_t migrate_mc_output_latency(void);
uint8_t migrate_mc_pause_budget(void);

bool mc_caps_check(const bool *new_caps, Error **errp);
bool mc_transport_check(const MigrationAddress *addr, Error **errp);
void mc_params_query(MigrationParameters *params,
                     const MigrationParameters *cur);
void mc_params_init(MigrationParameters *params);
bool mc_params_check(const MigrationParameters *params, Error **errp);
void mc_params_apply(const MigrateSetParameters *params,
                     MigrationParameters *dest);
void mc_hmp_info_params(Monitor *mon, const MigrationParameters *params);
bool mc_hmp_parse_parameter(int param, Visitor *v, MigrateSetParameters *p,
                            Error **errp);

/* The checkpoint loop and the standby (mc-primary.c, mc-standby.c) */
bool migration_in_mc_state(void);
bool mc_saving_devices(void);
void mc_primary_run(MigrationState *s);
bool mc_primary_cancel(MigrationStatus old_state);
bool mc_precopy_may_end(uint64_t pending);
bool coroutine_fn mc_standby_co(MigrationIncomingState *mis);
bool mc_standby_defers_cpu_put(void);
void mc_fill_info(MigrationInfo *info);

/*
 * A checkpoint participant: state outside RAM and devices that a
 * checkpoint must cover or hold back.  Output commit (net/filter-mc.c)
 * and disk replication (mc-block.c) are the two today.  The MC loop
 * calls every participant at each step, in order; a hook may be NULL.
 * A participant that carries data in the checkpoint does so as an
 * iterable migration section (register_savevm_live): its
 * save_live_complete_precopy runs inside the pause, between @checkpoint
 * and @resume, and must not poll the main loop there (@drain is where
 * waiting for I/O belongs, see mc_checkpoint_take()).
 */
/*
 * Output of epoch @epoch is held since @since_us (mc_now_us): called by
 * a participant for the first output it holds in an epoch, BQL held,
 * from the path the output takes (it must not block).
 */
typedef void MCOutputFn(void *opaque, uint64_t epoch, int64_t since_us);

typedef struct MCParticipant {
    const char *name;
    /*
     * Primary, BQL, VM stopped: MC begins.  False refuses MC.  A
     * participant that holds output the outside sees calls @output.
     */
    bool (*start)(MCOutputFn *output, void *opaque, Error **errp);
    /* Primary, BQL: the VM is about to pause for a checkpoint */
    void (*pause)(void);
    /*
     * Primary, BQL, vCPUs stopped, before @checkpoint: finish what is in
     * flight and read what the checkpoint will carry.  The only hook
     * that may wait for I/O (poll the main loop): whatever that runs
     * still belongs to the epoch that ends at @checkpoint.
     */
    void (*drain)(void);
    /*
     * Primary, BQL, VM paused: epoch @epoch ends here.  From here to
     * @resume nothing may run device emulation (no main-loop polling).
     */
    void (*checkpoint)(uint64_t epoch);
    /* Primary, BQL: the checkpoint is taken, the VM runs again */
    void (*resume)(void);
    /* Primary, no BQL: the standby acknowledged checkpoint @epoch */
    void (*commit)(uint64_t epoch);
    /* Primary, BQL: MC is over; release what is held */
    void (*stop)(void);
    /*
     * Primary, BQL, VM stopped: mc-switchover; the standby acknowledged
     * checkpoint @epoch and runs the guest from it next.  Release what
     * it covers, drop the rest; @stop follows.  Without it, @stop.
     */
    void (*switchover)(uint64_t epoch);
    /* Primary, no BQL: bytes the next checkpoint carries so far */
    uint64_t (*backlog)(void);
    /* Either side, BQL: fill this participant's statistics */
    void (*fill_info)(MCInfo *info, bool primary);
    /* Standby, BQL: the guest is about to resume here */
    void (*failover)(void);
    /* Standby, BQL: MC is over on this side */
    void (*standby_end)(void);
} MCParticipant;

/* mc-participant.c: call every participant's hook */
bool mc_participants_start(MCOutputFn *output, void *opaque, Error **errp);
void mc_participants_pause(void);
void mc_participants_drain(void);
void mc_participants_checkpoint(uint64_t epoch);
void mc_participants_resume(void);
void mc_participants_commit(uint64_t epoch);
void mc_participants_stop(void);
void mc_participants_switchover(uint64_t epoch);
uint64_t mc_participants_backlog(void);
void mc_participants_fill_info(MCInfo *info, bool primary);
void mc_participants_failover(void);
void mc_participants_standby_end(void);

/* Disk replication (mc-block.c) */
extern const MCParticipant mc_block_participant;

/* Implemented in ram.c: send the next checkpoint's pages to @f */
void ram_mc_begin_checkpoint(QEMUFile *f);
/* ...and the dirty-bitmap words it read and the time it synced since */
uint64_t ram_mc_bitmap_words_take(int64_t *sync_us);

/* Pages dirtied since the last checkpoint, the log left as it is */
uint64_t mc_dirty_estimate(void);
/*
 * Dirty-bitmap words read for the checkpoint being taken, and the time
 * its dirty-log sync took (mc-ram.c)
 */
uint64_t mc_bitmap_words_take(int64_t *harvest_us);
/* Bytes of RAM block @name incoming pages may land in, or -1 (mc-ram.c) */
int64_t mc_ram_block_size(const char *name);

#endif
