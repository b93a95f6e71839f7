/*
 * Micro-checkpointing (MC): capabilities and parameters.
 *
 * Kept out of options.c so that the upstream file only gains calls.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-visit-mc.h"
#include "qapi/visitor.h"
#include "hw/qdev-properties.h"
#include "monitor/monitor.h"
#include "migration.h"
#include "options.h"
#include "migration/mc-dirty-bound.h"
#include "migration/mc-state.h"
#include "system/runstate.h"
#include "mc.h"

/* The visitor reads or writes the field, so one function serves both. */
static void mc_prop_visit_policy(Object *obj, Visitor *v, const char *name,
                                 void *opaque, Error **errp)
{
    int *ptr = object_field_prop_ptr(obj, opaque);

    visit_type_enum(v, name, ptr, &MCFailoverPolicy_lookup, errp);
}

static void mc_prop_default_policy(ObjectProperty *op, const Property *prop)
{
    object_property_set_default_str(op, MCFailoverPolicy_str(prop->defval.i));
}

const PropertyInfo mc_prop_failover_policy = {
    .type = "MCFailoverPolicy",
    .description = "manual/safe/auto",
    .enum_table = &MCFailoverPolicy_lookup,
    .get = mc_prop_visit_policy,
    .set = mc_prop_visit_policy,
    .set_default_value = mc_prop_default_policy,
};

bool migrate_mc(void)
{
    return migrate_get_current()->capabilities[MIGRATION_CAPABILITY_MC];
}

bool migration_in_mc_state(void)
{
    return qatomic_read(&migrate_get_current()->state) ==
           MIGRATION_STATUS_MC;
}

/* An MC session runs here, as primary or as standby. */
static bool mc_running(void)
{
    MigrationIncomingState *mis = migration_incoming_get_current();

    return migration_in_mc_state() ||
           (mis && qatomic_read(&mis->state) == MIGRATION_STATUS_MC);
}

bool mc_cont_check(Error **errp)
{
    MigrationIncomingState *mis = migration_incoming_get_current();

    /*
     * Upstream's cont on an incoming side only sets autostart, which MC
     * ignores: say so instead of answering success and doing nothing.
     */
    if (mis && qatomic_read(&mis->state) == MIGRATION_STATUS_MC) {
        error_setg(errp, "This QEMU is a micro-checkpointing standby: its "
                   "guest runs only on failover (mc-failover)");
        return false;
    }
    return true;
}

bool migrate_mc_net_disable(void)
{
    MigrationState *s = migrate_get_current();

    return s->capabilities[MIGRATION_CAPABILITY_MC_NET_DISABLE];
}

bool migrate_mc_disk_disable(void)
{
    MigrationState *s = migrate_get_current();

    return s->capabilities[MIGRATION_CAPABILITY_MC_DISK_DISABLE];
}

uint32_t migrate_mc_delay(void)
{
    return qatomic_read(&migrate_get_current()->parameters.mc_delay);
}

uint64_t migrate_mc_max_buffer_size(void)
{
    return migrate_get_current()->parameters.mc_max_buffer_size;
}

uint32_t migrate_mc_heartbeat_timeout(void)
{
    MigrationState *s = migrate_get_current();

    return qatomic_read(&s->parameters.mc_heartbeat_timeout);
}

uint8_t migrate_mc_copy_threads(void)
{
    return qatomic_read(&migrate_get_current()->parameters.mc_copy_threads);
}

uint32_t migrate_mc_output_latency(void)
{
    return qatomic_read(&migrate_get_current()->parameters.mc_output_latency);
}

uint8_t migrate_mc_pause_budget(void)
{
    return qatomic_read(&migrate_get_current()->parameters.mc_pause_budget);
}

MCFailoverPolicy migrate_mc_failover_policy(void)
{
    MigrationState *s = migrate_get_current();

    return qatomic_read(&s->parameters.mc_failover_policy);
}

/*
 * MC copies each checkpoint through its own staging buffer and speaks
 * its own protocol on the migration channel after the switchover, so
 * every feature that sends pages by other routes, ends the stream
 * differently, or runs its own protocol on the channel is refused.
 */
bool mc_caps_check(const bool *new_caps, Error **errp)
{
    static const MigrationCapability incompatible[] = {
        MIGRATION_CAPABILITY_POSTCOPY_RAM,
        MIGRATION_CAPABILITY_POSTCOPY_PREEMPT,
        MIGRATION_CAPABILITY_MULTIFD,
        MIGRATION_CAPABILITY_MAPPED_RAM,
        MIGRATION_CAPABILITY_BACKGROUND_SNAPSHOT,
        MIGRATION_CAPABILITY_X_COLO,
        MIGRATION_CAPABILITY_RETURN_PATH,
        MIGRATION_CAPABILITY_SWITCHOVER_ACK,
        MIGRATION_CAPABILITY_RELEASE_RAM,
        MIGRATION_CAPABILITY_XBZRLE,
        MIGRATION_CAPABILITY_ZERO_COPY_SEND,
        MIGRATION_CAPABILITY_PAUSE_BEFORE_SWITCHOVER,
        MIGRATION_CAPABILITY_RDMA_PIN_ALL,
    };
    int i;

    /*
     * Upstream refuses capability changes only while an outgoing
     * migration runs; an MC standby would take them, and the change
     * would apply to the failover of a session set up without it.
     */
    if (mc_running()) {
        error_setg(errp, "Micro-checkpointing is running: capabilities "
                   "cannot change until it ends");
        return false;
    }
    if (!new_caps[MIGRATION_CAPABILITY_MC]) {
        if (new_caps[MIGRATION_CAPABILITY_MC_NET_DISABLE]) {
            error_setg(errp, "Capability 'mc-net-disable' requires 'mc'");
            return false;
        }
        if (new_caps[MIGRATION_CAPABILITY_MC_DISK_DISABLE]) {
            error_setg(errp, "Capability 'mc-disk-disable' requires 'mc'");
            return false;
        }
        return true;
    }
    for (i = 0; i < ARRAY_SIZE(incompatible); i++) {
        if (new_caps[incompatible[i]]) {
            error_setg(errp, "Capability 'mc' is not compatible with '%s'",
                       MigrationCapability_str(incompatible[i]));
            return false;
        }
    }
    return true;
}

/*
 * MC speaks its own protocol both ways on the migration channel after
 * precopy: it needs a two-way stream.  Over rdma: it gets one of its
 * own (mc-rdma.c), without TLS, like upstream's RDMA; a file is one way.
 */
bool mc_transport_check(const MigrationAddress *addr, Error **errp)
{
    if (!migrate_mc()) {
        return true;
    }
    /* The primary's bound, told before precopy (the standby has none) */
    if (!runstate_check(RUN_STATE_INMIGRATE) &&
        !mc_dirty_bound_check(migrate_mc_max_buffer_size(), errp)) {
        return false;
    }
    switch (addr->transport) {
    case MIGRATION_ADDRESS_TYPE_RDMA:
#ifdef CONFIG_RDMA
        if (migrate_tls()) {
            error_setg(errp, "Micro-checkpointing over RDMA cannot use TLS "
                       "(tls-creds is set): use a tcp: URI for TLS");
            return false;
        }
        return true;
#else
        error_setg(errp, "Micro-checkpointing over RDMA: this QEMU was "
                   "built without RDMA");
        return false;
#endif
    case MIGRATION_ADDRESS_TYPE_FILE:
        error_setg(errp, "Micro-checkpointing needs a two-way connection "
                   "to the standby, not a file");
        return false;
    default:
        return true;
    }
}

void mc_params_query(MigrationParameters *params,
                     const MigrationParameters *cur)
{
    params->has_mc_delay = true;
    params->mc_delay = cur->mc_delay;
    params->has_mc_max_buffer_size = true;
    params->mc_max_buffer_size = cur->mc_max_buffer_size;
    params->has_mc_heartbeat_timeout = true;
    params->mc_heartbeat_timeout = cur->mc_heartbeat_timeout;
    params->has_mc_failover_policy = true;
    params->mc_failover_policy = cur->mc_failover_policy;
    params->has_mc_copy_threads = true;
    params->mc_copy_threads = cur->mc_copy_threads;
    params->has_mc_output_latency = true;
    params->mc_output_latency = cur->mc_output_latency;
    params->has_mc_pause_budget = true;
    params->mc_pause_budget = cur->mc_pause_budget;
}

void mc_params_init(MigrationParameters *params)
{
    params->has_mc_delay = true;
    params->has_mc_max_buffer_size = true;
    params->has_mc_heartbeat_timeout = true;
    params->has_mc_failover_policy = true;
    params->has_mc_copy_threads = true;
    params->has_mc_output_latency = true;
    params->has_mc_pause_budget = true;
}

bool mc_params_check(const MigrationParameters *params, Error **errp)
{
    if (params->has_mc_delay && params->mc_delay > MC_MAX_DELAY_MS) {
        error_setg(errp, "Parameter 'mc-delay' must be between 0 and %d ms",
                   MC_MAX_DELAY_MS);
        return false;
    }
    if (params->has_mc_max_buffer_size &&
        params->mc_max_buffer_size < MC_MIN_MAX_BUFFER_SIZE) {
        error_setg(errp, "Parameter 'mc-max-buffer-size' must be at least "
                   "%d bytes (1 MiB)", (int)MC_MIN_MAX_BUFFER_SIZE);
        return false;
    }
    if (params->has_mc_max_buffer_size &&
        params->mc_max_buffer_size > SIZE_MAX / 2) {
        error_setg(errp, "Parameter 'mc-max-buffer-size' is too large");
        return false;
    }
    if (params->has_mc_heartbeat_timeout &&
        (params->mc_heartbeat_timeout < MC_MIN_HEARTBEAT_TIMEOUT_MS ||
         params->mc_heartbeat_timeout > MC_MAX_HEARTBEAT_TIMEOUT_MS)) {
        error_setg(errp, "Parameter 'mc-heartbeat-timeout' must be between "
                   "%d and %d ms", MC_MIN_HEARTBEAT_TIMEOUT_MS,
                   MC_MAX_HEARTBEAT_TIMEOUT_MS);
        return false;
    }
    if (params->has_mc_copy_threads &&
        (params->mc_copy_threads < 1 ||
         params->mc_copy_threads > MC_MAX_COPY_THREADS)) {
        error_setg(errp, "Parameter 'mc-copy-threads' must be between 1 "
                   "and %d", MC_MAX_COPY_THREADS);
        return false;
    }
    if (params->has_mc_output_latency &&
        params->mc_output_latency > MC_MAX_OUTPUT_LATENCY_US) {
        error_setg(errp, "Parameter 'mc-output-latency' must be between 0 "
                   "and %d us", MC_MAX_OUTPUT_LATENCY_US);
        return false;
    }
    if (params->has_mc_pause_budget &&
        (params->mc_pause_budget < 1 || params->mc_pause_budget > 100)) {
        error_setg(errp, "Parameter 'mc-pause-budget' must be between 1 "
                   "and 100 (percent)");
        return false;
    }
    return true;
}

/* Used for the trial copy that is checked and for the real one. */
void mc_params_apply(const MigrateSetParameters *params,
                     MigrationParameters *dest)
{
    if (params->has_mc_delay) {
        qatomic_set(&dest->mc_delay, params->mc_delay);
    }
    if (params->has_mc_max_buffer_size) {
        dest->mc_max_buffer_size = params->mc_max_buffer_size;
    }
    if (params->has_mc_heartbeat_timeout) {
        qatomic_set(&dest->mc_heartbeat_timeout,
                    params->mc_heartbeat_timeout);
    }
    if (params->has_mc_failover_policy) {
        qatomic_set(&dest->mc_failover_policy, params->mc_failover_policy);
    }
    if (params->has_mc_copy_threads) {
        qatomic_set(&dest->mc_copy_threads, params->mc_copy_threads);
    }
    if (params->has_mc_output_latency) {
        qatomic_set(&dest->mc_output_latency, params->mc_output_latency);
    }
    if (params->has_mc_pause_budget) {
        qatomic_set(&dest->mc_pause_budget, params->mc_pause_budget);
    }
}

void mc_hmp_info_params(Monitor *mon, const MigrationParameters *params)
{
    monitor_printf(mon, "%s: %u ms\n",
                   MigrationParameter_str(MIGRATION_PARAMETER_MC_DELAY),
                   params->mc_delay);
    monitor_printf(mon, "%s: %" PRIu64 " bytes\n",
                   MigrationParameter_str(
                       MIGRATION_PARAMETER_MC_MAX_BUFFER_SIZE),
                   params->mc_max_buffer_size);
    monitor_printf(mon, "%s: %u ms\n",
                   MigrationParameter_str(
                       MIGRATION_PARAMETER_MC_HEARTBEAT_TIMEOUT),
                   params->mc_heartbeat_timeout);
    monitor_printf(mon, "%s: %s\n",
                   MigrationParameter_str(
                       MIGRATION_PARAMETER_MC_FAILOVER_POLICY),
                   MCFailoverPolicy_str(params->mc_failover_policy));
    monitor_printf(mon, "%s: %u\n",
                   MigrationParameter_str(MIGRATION_PARAMETER_MC_COPY_THREADS),
                   params->mc_copy_threads);
    monitor_printf(mon, "%s: %u us\n",
                   MigrationParameter_str(
                       MIGRATION_PARAMETER_MC_OUTPUT_LATENCY),
                   params->mc_output_latency);
    monitor_printf(mon, "%s: %u %%\n",
                   MigrationParameter_str(MIGRATION_PARAMETER_MC_PAUSE_BUDGET),
                   params->mc_pause_budget);
}

/* Returns true if @param is an MC parameter (parsed into @p). */
bool mc_hmp_parse_parameter(int param, Visitor *v, MigrateSetParameters *p,
                            Error **errp)
{
    const char *name = MigrationParameter_str(param);

    switch (param) {
    case MIGRATION_PARAMETER_MC_DELAY:
        p->has_mc_delay = true;
        visit_type_uint32(v, name, &p->mc_delay, errp);
        return true;
    case MIGRATION_PARAMETER_MC_MAX_BUFFER_SIZE:
        p->has_mc_max_buffer_size = true;
        visit_type_size(v, name, &p->mc_max_buffer_size, errp);
        return true;
    case MIGRATION_PARAMETER_MC_HEARTBEAT_TIMEOUT:
        p->has_mc_heartbeat_timeout = true;
        visit_type_uint32(v, name, &p->mc_heartbeat_timeout, errp);
        return true;
    case MIGRATION_PARAMETER_MC_FAILOVER_POLICY:
        p->has_mc_failover_policy = true;
        visit_type_MCFailoverPolicy(v, name, &p->mc_failover_policy, errp);
        return true;
    case MIGRATION_PARAMETER_MC_COPY_THREADS:
        p->has_mc_copy_threads = true;
        visit_type_uint8(v, name, &p->mc_copy_threads, errp);
        return true;
    case MIGRATION_PARAMETER_MC_OUTPUT_LATENCY:
        p->has_mc_output_latency = true;
        visit_type_uint32(v, name, &p->mc_output_latency, errp);
        return true;
    case MIGRATION_PARAMETER_MC_PAUSE_BUDGET:
        p->has_mc_pause_budget = true;
        visit_type_uint8(v, name, &p->mc_pause_budget, errp);
        return true;
    default:
        return false;
    }
}
