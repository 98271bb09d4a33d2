/*
 * 02-custom-object: a firmware-defined object. Registers with one LwM2M server over plain
 * CoAP and exposes an IPSO Temperature object (3303) whose Sensor Value follows a
 * deterministic curve, sampled once a second; every change is announced with
 * estuary_notify_changed() so observing servers get notifications. Executing Reset Min and
 * Max Measured Values (/3303/0/5605) restarts the min/max tracking.
 *
 *   02-custom-object -e ENDPOINT [-u coap://127.0.0.1:5683] [-l LIFETIME]
 *
 * Threads: the event loop runs on the main thread, where every handler below runs too. A
 * ticker thread only calls estuary_event_loop_interrupt() once a second (the one call that
 * is safe from another thread), so the main thread can sample the sensor between runs of
 * the loop.
 */
/* nanosleep, clock_gettime under -std=c11. */
#define _POSIX_C_SOURCE 200809L

#include <estuary.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../common/example_common.h"

#define OID_TEMPERATURE 3303
#define RID_MIN_MEASURED 5601
#define RID_MAX_MEASURED 5602
#define RID_RESET_MIN_MAX 5605
#define RID_SENSOR_VALUE 5700
#define RID_SENSOR_UNITS 5701
#define RID_APPLICATION_TYPE 5750

static estuary_t *g_estuary;
static atomic_int g_stop;

/* The object's state. `def` comes first: the obj_ptr every handler receives points at it,
 * so it also points at the whole struct. */
struct temperature_object {
    const estuary_dm_object_def_t *def;
    double value;
    double min;
    double max;
    char application_type[64];
    /* Set by the Reset handler; the main loop announces the new min/max. */
    bool min_max_reset;
};

static struct temperature_object *
temperature(const estuary_dm_object_def_t *const *obj_ptr) {
    return (struct temperature_object *) (void *) obj_ptr;
}

/* A deterministic sensor: a slow sine around 21 degC plus a small drift, in 0.01 steps. */
static double sample(unsigned long tick) {
    const double pi = 3.14159265358979323846;
    double v = 21.0 + 4.0 * sin(2.0 * pi * (double) tick / 60.0) + 0.01 * (double) (tick % 100);
    return round(v * 100.0) / 100.0;
}

static int list_instances(const estuary_dm_object_def_t *const *obj_ptr,
                          estuary_dm_list_ctx_t *ctx) {
    (void) obj_ptr;
    return estuary_dm_emit(ctx, 0);
}

static int list_resources(const estuary_dm_object_def_t *const *obj_ptr,
                          estuary_iid_t iid, estuary_dm_resource_list_ctx_t *ctx) {
    (void) obj_ptr;
    (void) iid;
    const estuary_dm_resource_presence_t p = ESTUARY_DM_RES_PRESENT;
    int rc = estuary_dm_emit_res(ctx, RID_MIN_MEASURED, ESTUARY_DM_RES_R, p,
                                 ESTUARY_DM_TYPE_FLOAT);
    rc = rc ? rc : estuary_dm_emit_res(ctx, RID_MAX_MEASURED, ESTUARY_DM_RES_R, p,
                                       ESTUARY_DM_TYPE_FLOAT);
    rc = rc ? rc : estuary_dm_emit_res(ctx, RID_RESET_MIN_MAX, ESTUARY_DM_RES_E, p,
                                       ESTUARY_DM_TYPE_NONE);
    rc = rc ? rc : estuary_dm_emit_res(ctx, RID_SENSOR_VALUE, ESTUARY_DM_RES_R, p,
                                       ESTUARY_DM_TYPE_FLOAT);
    rc = rc ? rc : estuary_dm_emit_res(ctx, RID_SENSOR_UNITS, ESTUARY_DM_RES_R, p,
                                       ESTUARY_DM_TYPE_STRING);
    rc = rc ? rc : estuary_dm_emit_res(ctx, RID_APPLICATION_TYPE, ESTUARY_DM_RES_RW, p,
                                       ESTUARY_DM_TYPE_STRING);
    return rc;
}

static int resource_read(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid,
                         estuary_rid_t rid, estuary_output_ctx_t *ctx) {
    (void) iid;
    const struct temperature_object *t = temperature(obj_ptr);
    switch (rid) {
    case RID_MIN_MEASURED:
        return estuary_ret_double(ctx, t->min);
    case RID_MAX_MEASURED:
        return estuary_ret_double(ctx, t->max);
    case RID_SENSOR_VALUE:
        return estuary_ret_double(ctx, t->value);
    case RID_SENSOR_UNITS:
        return estuary_ret_string(ctx, "Cel");
    case RID_APPLICATION_TYPE:
        return estuary_ret_string(ctx, t->application_type);
    default:
        return ESTUARY_ERR_NOT_FOUND;
    }
}

static int resource_write(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid,
                          estuary_rid_t rid, estuary_input_ctx_t *ctx) {
    (void) iid;
    struct temperature_object *t = temperature(obj_ptr);
    if (rid != RID_APPLICATION_TYPE) {
        return ESTUARY_ERR_METHOD_NOT_ALLOWED;
    }
    char buf[sizeof(t->application_type)];
    int rc = estuary_get_string(ctx, buf, sizeof(buf));
    if (rc == ESTUARY_ERR_NO_SPACE) {
        return ESTUARY_ERR_REQUEST_ENTITY_TOO_LARGE;
    }
    if (rc) {
        return ESTUARY_ERR_BAD_REQUEST;
    }
    memcpy(t->application_type, buf, sizeof(buf));
    return 0;
}

static int resource_execute(const estuary_dm_object_def_t *const *obj_ptr,
                            estuary_iid_t iid, estuary_rid_t rid, const char *args,
                            size_t args_size) {
    (void) iid;
    (void) args;
    (void) args_size;
    struct temperature_object *t = temperature(obj_ptr);
    if (rid != RID_RESET_MIN_MAX) {
        return ESTUARY_ERR_METHOD_NOT_ALLOWED;
    }
    t->min = t->value;
    t->max = t->value;
    t->min_max_reset = true;
    fprintf(stderr, "min/max reset to %.2f\n", t->value);
    /* Other Estuary calls would return ESTUARY_ERR_BUSY from inside a handler: let the
     * main loop announce the change as soon as this request is answered. */
    estuary_event_loop_interrupt(g_estuary);
    return 0;
}

static const estuary_dm_object_def_t TEMPERATURE_DEF = {
    .oid = OID_TEMPERATURE,
    .version = "1.1",
    .handlers = {
        .list_instances = list_instances,
        .list_resources = list_resources,
        .resource_read = resource_read,
        .resource_write = resource_write,
        .resource_execute = resource_execute,
    },
};

static struct temperature_object g_temperature = {
    .def = &TEMPERATURE_DEF,
    .application_type = "outdoor",
};

static void on_signal(int sig) {
    (void) sig;
    atomic_store(&g_stop, 1);
    if (g_estuary) {
        estuary_event_loop_interrupt(g_estuary);
    }
}

/* Wakes the event loop once a second so the main thread can take a sample. */
static void *ticker(void *arg) {
    (void) arg;
    const struct timespec second = { .tv_sec = 1, .tv_nsec = 0 };
    while (!atomic_load(&g_stop)) {
        nanosleep(&second, NULL);
        estuary_event_loop_interrupt(g_estuary);
    }
    return NULL;
}

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* Takes the sample for `tick` and announces what changed. */
static void update_sensor(struct temperature_object *t, unsigned long tick) {
    double v = sample(tick);
    if (v != t->value) {
        t->value = v;
        estuary_notify_changed(g_estuary, OID_TEMPERATURE, 0, RID_SENSOR_VALUE);
    }
    if (v < t->min) {
        t->min = v;
        estuary_notify_changed(g_estuary, OID_TEMPERATURE, 0, RID_MIN_MEASURED);
    }
    if (v > t->max) {
        t->max = v;
        estuary_notify_changed(g_estuary, OID_TEMPERATURE, 0, RID_MAX_MEASURED);
    }
}

int main(int argc, char **argv) {
    /* The command line (-e -u -l): examples-c/common. */
    example_args_t args;
    int exit_code = example_args_parse(&args, argc, argv, EXAMPLE_NOSEC_ONLY);
    if (exit_code >= 0) {
        return exit_code;
    }

    estuary_set_log_handler(example_log_handler, NULL);
    estuary_set_log_level(ESTUARY_LOG_INFO);

    const estuary_configuration_t config = {
        .endpoint_name = args.endpoint,
        .in_buffer_size = 4000,
        .out_buffer_size = 4000,
        .msg_cache_size = 4000,
    };
    g_estuary = estuary_new(&config);
    if (!g_estuary) {
        fprintf(stderr, "could not create the client\n");
        return 1;
    }

    int result = 1;
    const estuary_security_instance_t security = {
        .ssid = 1,
        .server_uri = args.server_uri,
        .bootstrap_server = false,
        .security_mode = ESTUARY_SECURITY_NOSEC,
    };
    /* -l as the lifetime, the default periods, binding "U". */
    const estuary_server_instance_t server = example_server_instance(&args);
    const estuary_device_object_config_t device = {
        .manufacturer = "Estuary Labs",
        .model_number = "02-custom-object",
        .serial_number = "0002",
        .firmware_version = "1.0.0",
    };
    struct temperature_object *t = &g_temperature;
    t->value = sample(0);
    t->min = t->value;
    t->max = t->value;

    estuary_iid_t security_iid = ESTUARY_ID_INVALID;
    estuary_iid_t server_iid = ESTUARY_ID_INVALID;
    if (estuary_security_object_install(g_estuary)
            || estuary_security_object_add_instance(g_estuary, &security,
                                                    &security_iid)
            || estuary_server_object_install(g_estuary)
            || estuary_server_object_add_instance(g_estuary, &server,
                                                  &server_iid)
            || estuary_device_object_install(g_estuary, &device)
            || estuary_register_object(g_estuary, &t->def)) {
        fprintf(stderr, "could not install the objects\n");
        goto finish;
    }

    example_on_stop_signals(on_signal);

    pthread_t ticker_thread;
    if (pthread_create(&ticker_thread, NULL, ticker, NULL) != 0) {
        fprintf(stderr, "could not start the ticker thread\n");
        goto finish;
    }
    const double start = monotonic_s();
    unsigned long tick = 0;
    result = 0;
    while (!atomic_load(&g_stop)) {
        /* Returns when the ticker, a handler or a signal interrupts it. */
        if (estuary_event_loop_run(g_estuary,
                                   estuary_time_duration_from_scalar(1, ESTUARY_TIME_S))) {
            fprintf(stderr, "event loop failed\n");
            result = 1;
            break;
        }
        if (t->min_max_reset) {
            t->min_max_reset = false;
            estuary_notify_changed(g_estuary, OID_TEMPERATURE, 0, RID_MIN_MEASURED);
            estuary_notify_changed(g_estuary, OID_TEMPERATURE, 0, RID_MAX_MEASURED);
        }
        unsigned long now_tick = (unsigned long) (monotonic_s() - start);
        if (now_tick != tick) {
            tick = now_tick;
            update_sensor(t, tick);
        }
    }
    atomic_store(&g_stop, 1);
    pthread_join(ticker_thread, NULL);

finish:
    /* De-registers from the server (bounded wait) and frees everything. */
    {
        /* Clear the global first so the signal handler never sees a freed handle. */
        estuary_t *estuary = g_estuary;
        g_estuary = NULL;
        estuary_delete(estuary);
    }
    return result;
}
