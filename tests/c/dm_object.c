/*
 * The firmware-object API from C: estuary_register_object() and every helper refuse NULL
 * and contexts that are not live, without touching them; then, registered with a real
 * server (tests/c_api.rs plays it over UDP on 127.0.0.1), the handlers of object 9000
 * check the helpers from inside (invalid UTF-8, undersized buffers, wrong types) while the
 * server checks that each handler error code comes back as the matching CoAP code.
 *
 *   dm_object                 only the checks that need no server
 *   dm_object coap://HOST:P   also registers and serves until /9000/0/21 is executed
 *
 * Object 9000, instance 0 (and 1 while a server has created it):
 *   0   R  string   "ok"
 *   1   R  string   returns invalid UTF-8 (refused), then 0: the server gets 5.00
 *   2   R  opaque   NULL data with a size (refused), then 0: 5.00
 *   3   R  float    estuary_ret_bool on a float (refused), then 0: 5.00
 *   4   RM integer  instances 0 and 5, one refusal for a missing estuary_ret_instance()
 *   5   RW string   write: a buffer of strlen bytes gets ESTUARY_ERR_NO_SPACE, strlen + 1
 *                   is enough; longer than 63 bytes the handler returns NO_SPACE (5.00)
 *   6   W  opaque   write: a 1-byte buffer gets ESTUARY_ERR_NO_SPACE, then 16 bytes
 *   8   RWM integer  up to 8 resource instances, written with estuary_get_instance()
 *   20  E           returns the integer in argument 0 (e.g. 0='-131' -> 4.03)
 *   21  E           stops the event loop
 *   22  E           sets resource 5 to "changed"; the main loop then calls
 *                   estuary_notify_changed() for /9000/0/5
 *   100+k R integer returns -(code k) from the table in tests/c_api.rs (CODES)
 *
 * Transactions: validate refuses resource 5 = "invalid" with 4.12; begin, commit and
 * rollback are counted; instance_reset empties resource 5 before a Write-replace.
 *
 * Exits 0 when every check passed; prints "N checks, M failed".
 */
#include <estuary.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* The handler errors the server checks, in the order of resources 100, 101, ... */
static const int CODES[] = {
    ESTUARY_ERR_BAD_REQUEST,         ESTUARY_ERR_UNAUTHORIZED,
    ESTUARY_ERR_BAD_OPTION,          ESTUARY_ERR_FORBIDDEN,
    ESTUARY_ERR_NOT_FOUND,           ESTUARY_ERR_METHOD_NOT_ALLOWED,
    ESTUARY_ERR_NOT_ACCEPTABLE,      ESTUARY_ERR_PRECONDITION_FAILED,
    ESTUARY_ERR_REQUEST_ENTITY_TOO_LARGE,
    ESTUARY_ERR_UNSUPPORTED_CONTENT_FORMAT,
    ESTUARY_ERR_INTERNAL_SERVER_ERROR, ESTUARY_ERR_NOT_IMPLEMENTED,
    ESTUARY_ERR_SERVICE_UNAVAILABLE,
    /* Not CoAP codes: answered 5.00. */
    ESTUARY_ERR_INTERNAL,            ESTUARY_ERR_NO_SPACE, 7,
};
#define N_CODES (sizeof(CODES) / sizeof(CODES[0]))

static estuary_t *g_estuary;
static char g_string[64] = "initial";
static estuary_output_ctx_t *g_stale_out;
static bool g_stop;
static bool g_changed;
static bool g_instance1;
static uint16_t g_multi_ids[8];
static int64_t g_multi_values[8];
static size_t g_multi_count;
static struct {
    int begin, validate, commit, rollback, reset, create, remove;
} g_calls;

/* Firmware state next to its definition: obj_ptr leads back to it. */
struct test_object {
    const estuary_dm_object_def_t *def;
    int executed;
};

static struct test_object *container(const estuary_dm_object_def_t *const *obj_ptr) {
    return (struct test_object *) (void *) obj_ptr;
}

static int list_instances(const estuary_dm_object_def_t *const *obj_ptr,
                          estuary_dm_list_ctx_t *ctx) {
    (void) obj_ptr;
    CHECK_RC(estuary_dm_emit(ctx, ESTUARY_ID_INVALID), ESTUARY_ERR_INVALID_ARGUMENT);
    if (g_instance1) {
        int rc = estuary_dm_emit(ctx, 1);
        if (rc) {
            return rc;
        }
        CHECK_RC(estuary_dm_emit(ctx, 1), ESTUARY_ERR_ALREADY_EXISTS);
    }
    return estuary_dm_emit(ctx, 0);
}

static int list_resources(const estuary_dm_object_def_t *const *obj_ptr,
                          estuary_iid_t iid, estuary_dm_resource_list_ctx_t *ctx) {
    (void) obj_ptr;
    if (iid != 0 && !(iid == 1 && g_instance1)) {
        return ESTUARY_ERR_NOT_FOUND;
    }
    const estuary_dm_resource_presence_t p = ESTUARY_DM_RES_PRESENT;
    int rc = estuary_dm_emit_res(ctx, 0, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_STRING);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 1, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_STRING);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 2, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_OPAQUE);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 3, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_FLOAT);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 4, ESTUARY_DM_RES_RM, p, ESTUARY_DM_TYPE_INTEGER);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 5, ESTUARY_DM_RES_RW, p, ESTUARY_DM_TYPE_STRING);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 6, ESTUARY_DM_RES_W, p, ESTUARY_DM_TYPE_OPAQUE);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 8, ESTUARY_DM_RES_RWM, p, ESTUARY_DM_TYPE_INTEGER);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 20, ESTUARY_DM_RES_E, p, ESTUARY_DM_TYPE_NONE);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 21, ESTUARY_DM_RES_E, p, ESTUARY_DM_TYPE_NONE);
    rc = rc ? rc : estuary_dm_emit_res(ctx, 22, ESTUARY_DM_RES_E, p, ESTUARY_DM_TYPE_NONE);
    for (unsigned k = 0; !rc && k < N_CODES; k++) {
        rc = estuary_dm_emit_res(ctx, (estuary_rid_t) (100 + k), ESTUARY_DM_RES_R, p,
                                 ESTUARY_DM_TYPE_INTEGER);
    }
    /* Refusals that leave the listing intact. */
    CHECK_RC(estuary_dm_emit_res(ctx, 0, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_STRING),
             ESTUARY_ERR_ALREADY_EXISTS);
    CHECK_RC(estuary_dm_emit_res(ctx, 7, 42, p, ESTUARY_DM_TYPE_STRING),
             ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_dm_emit_res(ctx, 7, ESTUARY_DM_RES_R, 9, ESTUARY_DM_TYPE_STRING),
             ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_dm_emit_res(ctx, 7, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_NONE),
             ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_dm_emit_res(ctx, 65535, ESTUARY_DM_RES_R, p, ESTUARY_DM_TYPE_STRING),
             ESTUARY_ERR_INVALID_ARGUMENT);
    return rc;
}

static int resource_read(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid,
                         estuary_rid_t rid, estuary_output_ctx_t *ctx) {
    (void) obj_ptr;
    (void) iid;
    g_stale_out = ctx;
    switch (rid) {
    case 0:
        return estuary_ret_string(ctx, "ok");
    case 1:
        CHECK_RC(estuary_ret_string(ctx, "\xc3\x28"), ESTUARY_ERR_INVALID_ARGUMENT);
        CHECK_RC(estuary_ret_string(ctx, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        return 0;
    case 2:
        CHECK_RC(estuary_ret_bytes(ctx, NULL, 3), ESTUARY_ERR_NULL_ARGUMENT);
        return 0;
    case 3:
        CHECK_RC(estuary_ret_bool(ctx, true), ESTUARY_ERR_INVALID_ARGUMENT);
        CHECK_RC(estuary_ret_objlnk(ctx, 3, 0), ESTUARY_ERR_INVALID_ARGUMENT);
        return 0;
    case 4:
        if (estuary_ret_instance(ctx, 0) || estuary_ret_i64(ctx, -1)
                || estuary_ret_instance(ctx, 5)) {
            return ESTUARY_ERR_INTERNAL_SERVER_ERROR;
        }
        return estuary_ret_u64(ctx, 5);
    case 5:
        return estuary_ret_string(ctx, g_string);
    case 8:
        for (size_t k = 0; k < g_multi_count; k++) {
            int rc = estuary_ret_instance(ctx, g_multi_ids[k]);
            rc = rc ? rc : estuary_ret_i64(ctx, g_multi_values[k]);
            if (rc) {
                return rc;
            }
        }
        return 0;
    default:
        if (rid >= 100 && rid < 100 + N_CODES) {
            return CODES[rid - 100];
        }
        return ESTUARY_ERR_NOT_FOUND;
    }
}

static int resource_write(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid,
                          estuary_rid_t rid, estuary_input_ctx_t *ctx) {
    (void) obj_ptr;
    (void) iid;
    if (rid == 5) {
        char buf[sizeof(g_string)];
        CHECK_RC(estuary_get_string(ctx, NULL, 8), ESTUARY_ERR_NULL_ARGUMENT);
        int rc = estuary_get_string(ctx, buf, sizeof(buf));
        if (rc) {
            return rc;
        }
        /* A string is no object link, and (unless it is one) no boolean. */
        estuary_oid_t o;
        estuary_iid_t i;
        CHECK_RC(estuary_get_objlnk(ctx, &o, &i), ESTUARY_ERR_BAD_REQUEST);
        /* The boundary: length + 1 bytes are needed; one less is refused untouched. */
        size_t len = strlen(buf);
        char exact[sizeof(g_string)];
        memset(exact, 'x', sizeof(exact));
        CHECK_RC(estuary_get_string(ctx, exact, len), ESTUARY_ERR_NO_SPACE);
        CHECK(len == 0 || exact[0] == 'x');
        CHECK_RC(estuary_get_string(ctx, exact, len + 1), 0);
        CHECK(strcmp(exact, buf) == 0);
        memcpy(g_string, buf, sizeof(buf));
        return 0;
    }
    if (rid == 6) {
        unsigned char small[1];
        unsigned char big[16];
        size_t n = 99;
        CHECK_RC(estuary_get_bytes(ctx, small, sizeof(small), &n), ESTUARY_ERR_NO_SPACE);
        CHECK(n == 99);
        CHECK_RC(estuary_get_bytes(ctx, big, sizeof(big), NULL), ESTUARY_ERR_NULL_ARGUMENT);
        int rc = estuary_get_bytes(ctx, big, sizeof(big), &n);
        if (rc) {
            return rc;
        }
        return n == 3 && memcmp(big, "\x01\x02\x03", 3) == 0 ? 0 : ESTUARY_ERR_BAD_REQUEST;
    }
    if (rid == 8) {
        uint16_t ids[8];
        int64_t values[8];
        size_t count = 0;
        estuary_riid_t riid;
        int rc;
        int64_t v;
        CHECK_RC(estuary_get_i64(ctx, &v), ESTUARY_ERR_STATE);
        /* NULL outputs, checked before anything else. */
        uint64_t u;
        double d;
        bool b;
        estuary_oid_t o;
        estuary_iid_t i;
        CHECK_RC(estuary_get_instance(ctx, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_i64(ctx, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_u64(ctx, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_double(ctx, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_bool(ctx, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_objlnk(ctx, NULL, &i), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_objlnk(ctx, &o, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_string(ctx, NULL, 4), ESTUARY_ERR_NULL_ARGUMENT);
        CHECK_RC(estuary_get_bytes(ctx, NULL, 4, NULL), ESTUARY_ERR_NULL_ARGUMENT);
        /* Before estuary_get_instance() there is no current value. */
        CHECK_RC(estuary_get_u64(ctx, &u), ESTUARY_ERR_STATE);
        CHECK_RC(estuary_get_double(ctx, &d), ESTUARY_ERR_STATE);
        CHECK_RC(estuary_get_bool(ctx, &b), ESTUARY_ERR_STATE);
        while ((rc = estuary_get_instance(ctx, &riid)) == 0) {
            if (count == 8) {
                return ESTUARY_ERR_REQUEST_ENTITY_TOO_LARGE;
            }
            ids[count] = riid;
            rc = estuary_get_i64(ctx, &values[count]);
            if (rc) {
                return rc;
            }
            count++;
        }
        if (rc != ESTUARY_DM_END) {
            return rc;
        }
        CHECK_RC(estuary_get_instance(ctx, &riid), ESTUARY_DM_END);
        memcpy(g_multi_ids, ids, sizeof(ids));
        memcpy(g_multi_values, values, sizeof(values));
        g_multi_count = count;
        return 0;
    }
    return ESTUARY_ERR_METHOD_NOT_ALLOWED;
}

static int instance_create(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid) {
    (void) obj_ptr;
    g_calls.create++;
    if (iid != 1) {
        return ESTUARY_ERR_FORBIDDEN;
    }
    g_instance1 = true;
    return 0;
}

static int instance_remove(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid) {
    (void) obj_ptr;
    g_calls.remove++;
    if (iid != 1) {
        return ESTUARY_ERR_METHOD_NOT_ALLOWED;
    }
    g_instance1 = false;
    return 0;
}

static int instance_reset(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid) {
    (void) obj_ptr;
    (void) iid;
    g_calls.reset++;
    g_string[0] = '\0';
    return 0;
}

static int transaction_begin(const estuary_dm_object_def_t *const *obj_ptr) {
    (void) obj_ptr;
    g_calls.begin++;
    return 0;
}

static int transaction_validate(const estuary_dm_object_def_t *const *obj_ptr) {
    (void) obj_ptr;
    g_calls.validate++;
    return strcmp(g_string, "invalid") == 0 ? ESTUARY_ERR_PRECONDITION_FAILED : 0;
}

static int transaction_commit(const estuary_dm_object_def_t *const *obj_ptr) {
    (void) obj_ptr;
    g_calls.commit++;
    return 0;
}

static int transaction_rollback(const estuary_dm_object_def_t *const *obj_ptr) {
    (void) obj_ptr;
    g_calls.rollback++;
    return 0;
}

static int resource_execute(const estuary_dm_object_def_t *const *obj_ptr, estuary_iid_t iid,
                            estuary_rid_t rid, const char *args, size_t args_size) {
    (void) iid;
    container(obj_ptr)->executed++;
    CHECK(args != NULL && args[args_size] == '\0');
    if (rid == 20) {
        /* Arguments as LwM2M writes them: 0='-131'. */
        const char *quote = strchr(args, '\'');
        return quote ? atoi(quote + 1) : 0;
    }
    if (rid == 21 || rid == 22) {
        if (rid == 21) {
            g_stop = true;
        } else {
            snprintf(g_string, sizeof(g_string), "changed");
            g_changed = true;
            /* From inside a handler other calls are refused. */
            CHECK_RC(estuary_notify_changed(g_estuary, 9000, 0, 5), ESTUARY_ERR_BUSY);
        }
        /* The only Estuary call allowed from inside a handler besides the helpers. */
        return estuary_event_loop_interrupt(g_estuary);
    }
    return ESTUARY_ERR_METHOD_NOT_ALLOWED;
}

static const estuary_dm_object_def_t OBJECT_DEF = {
    .oid = 9000,
    .version = "1.2",
    .handlers = {
        .list_instances = list_instances,
        .list_resources = list_resources,
        .resource_read = resource_read,
        .resource_write = resource_write,
        .resource_execute = resource_execute,
        .instance_create = instance_create,
        .instance_remove = instance_remove,
        .instance_reset = instance_reset,
        .transaction_begin = transaction_begin,
        .transaction_validate = transaction_validate,
        .transaction_commit = transaction_commit,
        .transaction_rollback = transaction_rollback,
    },
};

static struct test_object g_object = { .def = &OBJECT_DEF };

/* Everything that needs no handler running: NULLs and contexts that are not live. */
static void check_without_server(void) {
    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "dm-object-offline";
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    if (!e) {
        return;
    }
    const estuary_dm_object_def_t *null_def = NULL;
    estuary_dm_object_def_t reserved = OBJECT_DEF;
    reserved.oid = 3;
    const estuary_dm_object_def_t *reserved_ptr = &reserved;
    estuary_dm_object_def_t no_list = OBJECT_DEF;
    no_list.handlers.list_instances = NULL;
    const estuary_dm_object_def_t *no_list_ptr = &no_list;
    estuary_dm_object_def_t bad_version = OBJECT_DEF;
    bad_version.version = "\xff.1";
    const estuary_dm_object_def_t *bad_version_ptr = &bad_version;
    const estuary_dm_object_def_t *const *def_ptr = &g_object.def;

    CHECK_RC(estuary_register_object(NULL, def_ptr), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_register_object(e, NULL), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_register_object(e, &null_def), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_register_object(e, &no_list_ptr), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_register_object(e, &reserved_ptr), ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_register_object(e, &bad_version_ptr), ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_register_object(e, def_ptr), 0);
    CHECK_RC(estuary_register_object(e, def_ptr), ESTUARY_ERR_ALREADY_EXISTS);

    CHECK_RC(estuary_notify_changed(NULL, 9000, 0, 0), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_notify_changed(e, 9000, ESTUARY_ID_INVALID, 0),
             ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_notify_changed(e, 9001, 0, 0), ESTUARY_ERR_INVALID_ARGUMENT);
    /* Before the loop has started nobody observes anything: nothing to do. */
    CHECK_RC(estuary_notify_changed(e, 9000, 0, 0), 0);
    CHECK_RC(estuary_notify_changed(e, 9000, 0, ESTUARY_ID_INVALID), 0);

    /* NULL contexts. */
    int64_t i = 0;
    uint64_t u = 0;
    double d = 0;
    bool b = false;
    char s[8];
    size_t n = 0;
    estuary_oid_t o = 0;
    estuary_iid_t ii = 0;
    estuary_riid_t ri = 0;
    CHECK_RC(estuary_dm_emit(NULL, 0), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_dm_emit_res(NULL, 0, ESTUARY_DM_RES_R, ESTUARY_DM_RES_PRESENT,
                                 ESTUARY_DM_TYPE_STRING),
             ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_instance(NULL, 0), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_i64(NULL, 1), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_u64(NULL, 1), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_double(NULL, 1.0), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_bool(NULL, true), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_string(NULL, "x"), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_bytes(NULL, "x", 1), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_ret_objlnk(NULL, 3, 0), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_instance(NULL, &ri), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_i64(NULL, &i), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_u64(NULL, &u), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_double(NULL, &d), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_bool(NULL, &b), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_string(NULL, s, sizeof(s)), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_bytes(NULL, s, sizeof(s), &n), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_get_objlnk(NULL, &o, &ii), ESTUARY_ERR_NULL_ARGUMENT);

    /* Pointers that are not live contexts are refused without being dereferenced (a
     * one-byte object: reading it as a context would trip AddressSanitizer). */
    char *forged = malloc(1);
    CHECK(forged != NULL);
    estuary_dm_list_ctx_t *list = (estuary_dm_list_ctx_t *) (void *) forged;
    estuary_output_ctx_t *out = (estuary_output_ctx_t *) (void *) forged;
    estuary_input_ctx_t *in = (estuary_input_ctx_t *) (void *) forged;
    CHECK_RC(estuary_dm_emit(list, 0), ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_ret_i64(out, 1), ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_ret_string(out, "x"), ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_get_string(in, s, sizeof(s)), ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_get_bytes(in, s, sizeof(s), &n), ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK_RC(estuary_get_double(in, &d), ESTUARY_ERR_INVALID_ARGUMENT);
    free(forged);
    estuary_delete(e);
}

int main(int argc, char **argv) {
    check_without_server();
    if (argc > 1) {
        estuary_configuration_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.endpoint_name = "dm-object";
        g_estuary = estuary_new(&cfg);
        CHECK(g_estuary != NULL);
        const estuary_security_instance_t security = {
            .ssid = 1,
            .server_uri = argv[1],
            .security_mode = ESTUARY_SECURITY_NOSEC,
            .client_holdoff_s = -1,
            .bootstrap_timeout_s = -1,
        };
        const estuary_server_instance_t server = {
            .ssid = 1,
            .lifetime = 60,
            .default_min_period = -1,
            .default_max_period = -1,
            .disable_timeout = -1,
        };
        estuary_iid_t iid = ESTUARY_ID_INVALID;
        CHECK_RC(estuary_security_object_install(g_estuary), 0);
        CHECK_RC(estuary_security_object_add_instance(g_estuary, &security, &iid), 0);
        iid = ESTUARY_ID_INVALID;
        CHECK_RC(estuary_server_object_install(g_estuary), 0);
        CHECK_RC(estuary_server_object_add_instance(g_estuary, &server, &iid), 0);
        CHECK_RC(estuary_register_object(g_estuary, &g_object.def), 0);
        while (!g_stop) {
            CHECK_RC(estuary_event_loop_run(g_estuary, estuary_time_duration_from_scalar(
                                                               100, ESTUARY_TIME_MS)),
                     0);
            if (g_changed) {
                g_changed = false;
                CHECK_RC(estuary_notify_changed(g_estuary, 9000, 0, 5), 0);
            }
        }
        /* Contexts die with their handler call. */
        CHECK(g_stale_out != NULL);
        CHECK_RC(estuary_ret_i64(g_stale_out, 1), ESTUARY_ERR_INVALID_ARGUMENT);
        CHECK(g_object.executed >= 3);
        /* The server's script: failed writes rolled back, two creates (one refused), two
         * deletes (one refused), one Write-replace of an instance. */
        CHECK(g_calls.rollback >= 1);
        CHECK(g_calls.validate == g_calls.commit + 1);
        CHECK(g_calls.begin >= g_calls.validate);
        CHECK(g_calls.create == 2 && g_calls.remove == 2);
        CHECK(g_calls.reset >= 1);
        printf("transactions: %d begun, %d committed, %d rolled back; %d resets\n",
               g_calls.begin, g_calls.commit, g_calls.rollback, g_calls.reset);
        /* Once the loop has started, objects cannot be added. */
        CHECK_RC(estuary_register_object(g_estuary, &g_object.def), ESTUARY_ERR_NOT_SUPPORTED);
        estuary_delete(g_estuary);
    }
    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
