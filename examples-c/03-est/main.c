/*
 * 03-est: Certificate mode with EST (LwM2M Security Mode 4), from the factory to a renewed
 * certificate and across restarts.
 *
 * The device starts with factory credentials only: a certificate and key for the
 * Bootstrap-Server account, and the certificate of that server. It bootstraps; the
 * Bootstrap-Server provisions a management account in mode 4; Estuary then asks the same
 * endpoint for its CA certificates (/est/crts), makes a key pair on the device, enrolls
 * (/est/sen), registers with the new certificate, and renews it (/est/sren) before it
 * expires, reconnecting with the renewed one.
 *
 * Everything the device learnt lives in one persistence file. At start the file is restored
 * (a missing file means "first boot": bootstrap with the factory credentials); it is written
 * again whenever something changed and no EST exchange is in flight (checked once a second),
 * every few minutes, and on SIGINT/SIGTERM before the client de-registers. A server's
 * Execute of Reboot (/3/0/4) ends the program the same way (exit code 0): starting it again
 * is the reboot.
 *
 *   03-est ENDPOINT_NAME [-u BOOTSTRAP_URI] [-c CREDS_DIR] [-p PERSISTENCE_FILE] [-h]
 *
 * With estuary-testserver, from one directory:
 *   estuary-testserver init --dir estuary-state --endpoint dev1
 *   (set security_mode = "est" in the [endpoints."dev1"] section of estuary-state/config.toml)
 *   estuary-testserver run --dir estuary-state --cert-validity 2m &
 *   03-est dev1
 * The defaults find the factory credentials in estuary-state/endpoints/dev1/, the server at
 * coaps://127.0.0.1:5694, and keep the state in dev1.persist (mode 0600: it holds the
 * private key).
 */
#define _XOPEN_SOURCE 700

#include <estuary.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../common/example_common.h"

#define DEFAULT_BOOTSTRAP_URI "coaps://127.0.0.1:5694"
#define DEFAULT_STATE_DIR "estuary-state"

/* How often the loop stops to look at the persistence state and the certificate. */
#define TICK_MS 1000
/* Written at least this often even when nothing seems to have changed. */
#define PERSIST_PERIOD_S 300
/* On exit, how long to let an EST exchange in flight finish before giving up on it. */
#define EXIT_GRACE_S 5

static estuary_t *volatile g_estuary;
static volatile sig_atomic_t g_stop;
static volatile sig_atomic_t g_reboot;
static struct timespec g_t0;

/* ---------------------------------------------------------------- logging */

static double elapsed_s(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double) (now.tv_sec - g_t0.tv_sec)
           + (double) (now.tv_nsec - g_t0.tv_nsec) / 1e9;
}

/* The example's own lines: "[  12.345] 03-est: ..." on stderr, next to Estuary's. */
static void say(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%8.3f] 03-est: %s\n", elapsed_s(), line);
}

static void log_handler(estuary_log_level_t level, const char *module,
                        const char *message, void *arg) {
    (void) arg;
    static const char *const names[] = { "TRACE", "DEBUG", "INFO", "WARN",
                                         "ERROR" };
    const char *name = (unsigned) level < 5 ? names[level] : "?";
    fprintf(stderr, "[%8.3f] %-5s %s: %s\n", elapsed_s(), name, module, message);
}

/* Unix seconds as "2026-11-23T11:30:26Z". */
static const char *utc(int64_t t, char buf[32]) {
    time_t tt = (time_t) t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm)) {
        snprintf(buf, 32, "%" PRId64, t);
    }
    return buf;
}

/* A span of seconds for people: "16 s", "5 min 3 s", "2 h 5 min", "24 d 3 h". */
static const char *span(int64_t s, char buf[32]) {
    const char *sign = s < 0 ? "-" : "";
    int64_t a = s < 0 ? -s : s;
    if (a < 60) {
        snprintf(buf, 32, "%s%" PRId64 " s", sign, a);
    } else if (a < 3600) {
        snprintf(buf, 32, "%s%" PRId64 " min %" PRId64 " s", sign, a / 60, a % 60);
    } else if (a < 86400) {
        snprintf(buf, 32, "%s%" PRId64 " h %" PRId64 " min", sign, a / 3600, a % 3600 / 60);
    } else {
        snprintf(buf, 32, "%s%" PRId64 " d %" PRId64 " h", sign, a / 86400, a % 86400 / 3600);
    }
    return buf;
}

/* ---------------------------------------------------------------- signals */

static void on_stop_signal(int sig) {
    (void) sig;
    g_stop = 1;
    estuary_t *e = g_estuary;
    if (e) {
        estuary_event_loop_interrupt(e);
    }
}

/* The tick: makes estuary_event_loop_run() return so main() can look around. */
static void on_alarm(int sig) {
    (void) sig;
    estuary_t *e = g_estuary;
    if (e) {
        estuary_event_loop_interrupt(e);
    }
}

static void on_reboot(void *arg) {
    (void) arg;
    /* Runs inside the event loop: only note it and leave the loop. */
    g_reboot = 1;
    estuary_event_loop_interrupt(g_estuary);
}

static int install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop_signal;
    if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL)) {
        return -1;
    }
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    return sigaction(SIGALRM, &sa, NULL);
}

static int set_tick(long ms) {
    struct itimerval it;
    memset(&it, 0, sizeof(it));
    it.it_interval.tv_sec = ms / 1000;
    it.it_interval.tv_usec = (ms % 1000) * 1000;
    it.it_value = it.it_interval;
    return setitimer(ITIMER_REAL, &it, NULL);
}

/* ---------------------------------------------------------------- files */

/* A whole file in a malloc'd buffer (examples-c/common); NULL (and a message) on failure. */
static uint8_t *read_file(const char *path, size_t *out_size) {
    const char *why = NULL;
    uint8_t *data = example_read_file(path, out_size, &why);
    if (!data) {
        say("cannot read %s: %s", path, why);
    }
    return data;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = (char *) malloc(n);
    if (p) {
        snprintf(p, n, "%s/%s", dir, name);
    }
    return p;
}

/* The factory credentials of the Bootstrap-Server account, as `estuary-testserver init`
 * writes them into CREDS_DIR. */
typedef struct {
    char *trust_anchor_path; /* for trust_store_certs */
    uint8_t *cert;
    size_t cert_size;
    uint8_t *key;
    size_t key_size;
    uint8_t *server_cert;
    size_t server_cert_size;
} factory_creds_t;

static void factory_creds_free(factory_creds_t *c) {
    if (c->key) {
        memset(c->key, 0, c->key_size); /* Estuary keeps its own copy. */
    }
    free(c->trust_anchor_path);
    free(c->cert);
    free(c->key);
    free(c->server_cert);
    memset(c, 0, sizeof(*c));
}

/* Reads the device certificate and key, and the certificate the Bootstrap-Server presents:
 * bootstrap-server-cert.pem where the state directory has one, else server-cert.pem (the
 * test server uses one DTLS certificate for both of its endpoints). */
static int factory_creds_load(const char *dir, factory_creds_t *out) {
    factory_creds_t c;
    memset(&c, 0, sizeof(c));
    char *cert_path = join(dir, "factory-cert.pem");
    char *key_path = join(dir, "factory-key.pem");
    char *bs_path = join(dir, "bootstrap-server-cert.pem");
    char *srv_path = join(dir, "server-cert.pem");
    c.trust_anchor_path = join(dir, "trust-anchor.pem");
    int result = -1;
    if (!cert_path || !key_path || !bs_path || !srv_path || !c.trust_anchor_path) {
        say("out of memory");
        goto done;
    }
    const char *server_cert_path = file_exists(bs_path) ? bs_path : srv_path;
    c.cert = read_file(cert_path, &c.cert_size);
    c.key = c.cert ? read_file(key_path, &c.key_size) : NULL;
    c.server_cert = c.key ? read_file(server_cert_path, &c.server_cert_size) : NULL;
    if (!c.server_cert) {
        goto done;
    }
    if (!file_exists(c.trust_anchor_path)) {
        say("%s missing: is %s a directory made by `estuary-testserver init`?",
            c.trust_anchor_path, dir);
        goto done;
    }
    say("factory credentials: %s, %s; Bootstrap-Server certificate %s", cert_path,
        key_path, server_cert_path);
    result = 0;
done:
    free(cert_path);
    free(key_path);
    free(bs_path);
    free(srv_path);
    if (result) {
        factory_creds_free(&c);
    } else {
        *out = c;
    }
    return result;
}

/* ---------------------------------------------------------------- persistence */

typedef struct {
    const char *path;
    time_t last_saved;     /* 0: never written by this process */
    bool waiting_logged;   /* "in flight" said once per wait, not every tick */
} persistence_t;

/* Writes every part (Security, Server, attribute storage, EST state) to the file when
 * something changed, or whatever changed when `force` names a reason ("exit", "periodic");
 * but not while a bootstrap or EST exchange is in flight: the EST state cannot be written
 * then, so the file keeps the previous state and the next tick tries again.
 * Returns 0 when the file is up to date, 1 when it is not (yet), -1 on an error. */
static int persist(estuary_t *e, persistence_t *p, const char *force) {
    const bool security = estuary_security_object_is_modified(e);
    const bool server = estuary_server_object_is_modified(e);
    const bool attrs = estuary_attr_storage_is_modified(e);
    const bool est = estuary_est_state_is_modified(e);
    if (!force && !security && !server && !attrs && !est) {
        return 0;
    }
    if (!estuary_est_state_is_ready_for_persistence(e)) {
        if (!p->waiting_logged) {
            say("bootstrap or EST exchange in flight: %s stays as it is until it ends",
                p->path);
            p->waiting_logged = true;
        }
        return 1;
    }
    p->waiting_logged = false;
    int rc = estuary_persistence_save_file(e, p->path);
    if (rc) {
        say("could not write %s: %s", p->path, estuary_error_name(rc));
        return rc == ESTUARY_ERR_STATE ? 1 : -1;
    }
    p->last_saved = time(NULL);
    say("persisted to %s (%s; changed:%s%s%s%s%s)", p->path, force ? force : "a change",
        security ? " security" : "", server ? " server" : "", attrs ? " attributes" : "",
        est ? " EST state" : "", (security || server || attrs || est) ? "" : " nothing");
    return 0;
}

/* Restores every part from the file. Returns 1 when there is no file (first boot), 0 when
 * restored, -1 when the file cannot be used: it is then renamed to PATH.rejected, for a
 * look later, and the device starts over from its factory credentials. */
static int restore(estuary_t *e, const char *path) {
    int rc = estuary_persistence_restore_file(e, path);
    if (rc == 0) {
        say("restored Security, Server, attribute storage and EST state from %s", path);
        return 0;
    }
    if (rc == ESTUARY_ERR_NOT_FOUND) {
        say("no %s yet: first boot, bootstrapping with the factory credentials", path);
        return 1;
    }
    size_t n = strlen(path) + sizeof(".rejected");
    char *aside = (char *) malloc(n);
    if (aside) {
        snprintf(aside, n, "%s.rejected", path);
        if (rename(path, aside)) {
            say("rename %s: %s", path, strerror(errno));
        }
    }
    say("cannot restore from %s (%s); moved it to %s and bootstrapping again", path,
        estuary_error_name(rc), aside ? aside : "(nowhere)");
    free(aside);
    return -1;
}

/* ---------------------------------------------------------------- EST status */

/* Prints the certificate when it is new to this process: after restore, enrollment and
 * each re-enrollment. `last_serial` remembers the one printed last; it is forgotten when
 * the credential is purged (fall-back to bootstrap), so the next one counts as enrolled. */
static void report_certificate(estuary_t *e, char last_serial[64], bool *restored) {
    estuary_est_status_t st;
    if (estuary_est_status_get(e, &st)) {
        return;
    }
    if (!st.enrolled) {
        if (last_serial[0]) {
            say("EST certificate %s purged", last_serial);
            last_serial[0] = '\0';
        }
        return;
    }
    if (strcmp(st.serial, last_serial) == 0) {
        return;
    }
    char a[32], b[32], c[32], d[32];
    const char *what = last_serial[0] ? "re-enrolled"
                       : *restored    ? "restored certificate"
                                      : "enrolled";
    *restored = false; /* only the first certificate comes from the file */
    say("%s: subject %s, serial %s%s%s, valid %s .. %s", what, st.subject,
        last_serial[0] ? last_serial : "", last_serial[0] ? " -> " : "", st.serial,
        utc(st.not_before, a), utc(st.not_after, b));
    if (st.reenrollment_scheduled) {
        say("next re-enrollment at %s (in %s)", utc(st.next_reenrollment, c),
            span(st.next_reenrollment - (int64_t) time(NULL), d));
    } else {
        say("no re-enrollment scheduled");
    }
    snprintf(last_serial, 64, "%s", st.serial);
}

/* ---------------------------------------------------------------- main */

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s ENDPOINT_NAME [-u BOOTSTRAP_URI] [-c CREDS_DIR] [-p PERSISTENCE_FILE] [-h]\n"
            "  ENDPOINT_NAME     the device's LwM2M Endpoint Client Name (or -e ENDPOINT_NAME)\n"
            "  -u BOOTSTRAP_URI  the Bootstrap-Server + EST-coaps server\n"
            "                    (default " DEFAULT_BOOTSTRAP_URI ")\n"
            "  -c CREDS_DIR      factory credentials: factory-cert.pem, factory-key.pem,\n"
            "                    server-cert.pem (or bootstrap-server-cert.pem), trust-anchor.pem\n"
            "                    (default " DEFAULT_STATE_DIR "/endpoints/ENDPOINT_NAME, as\n"
            "                    `estuary-testserver init --dir " DEFAULT_STATE_DIR
            " --endpoint NAME` makes)\n"
            "  -p FILE           persistence file, holds private keys: mode 0600\n"
            "                    (default ENDPOINT_NAME.persist)\n"
            "  -h                this help\n",
            prog);
}

int main(int argc, char **argv) {
    clock_gettime(CLOCK_MONOTONIC, &g_t0);
    const char *uri = DEFAULT_BOOTSTRAP_URI;
    const char *creds_dir = NULL;
    const char *persistence_path = NULL;
    const char *endpoint = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "e:u:c:p:h")) != -1) {
        switch (opt) {
        case 'e':
            endpoint = optarg;
            break;
        case 'u':
            uri = optarg;
            break;
        case 'c':
            creds_dir = optarg;
            break;
        case 'p':
            persistence_path = optarg;
            break;
        case 'h':
            usage(argv[0]);
            return 0;
        default:
            usage(argv[0]);
            return 2;
        }
    }
    /* The endpoint name comes as the one positional argument, or with -e as in the other
     * examples. */
    if (!endpoint && optind == argc - 1) {
        endpoint = argv[optind++];
    }
    if (!endpoint || optind != argc) {
        usage(argv[0]);
        return 2;
    }

    char *default_creds = NULL, *default_persistence = NULL;
    if (!creds_dir) {
        char *endpoints = join(DEFAULT_STATE_DIR, "endpoints");
        default_creds = endpoints ? join(endpoints, endpoint) : NULL;
        free(endpoints);
        creds_dir = default_creds;
    }
    if (!persistence_path) {
        size_t n = strlen(endpoint) + sizeof(".persist");
        default_persistence = (char *) malloc(n);
        if (default_persistence) {
            snprintf(default_persistence, n, "%s.persist", endpoint);
        }
        persistence_path = default_persistence;
    }
    factory_creds_t creds;
    memset(&creds, 0, sizeof(creds));
    int result = 1;
    /* From here on a SIGINT/SIGTERM ends the program cleanly, also during start-up: it is
     * noted in g_stop and the loop below then never runs. */
    if (install_handlers() || set_tick(TICK_MS)) {
        say("could not set up signals and the tick: %s", strerror(errno));
        goto free_args;
    }
    if (!creds_dir || !persistence_path || factory_creds_load(creds_dir, &creds)) {
        goto free_args;
    }

    estuary_set_log_handler(log_handler, NULL);
    estuary_set_log_level(ESTUARY_LOG_INFO);

    /* The seed's CF-EST configuration, with the test server's root CA as the trust store. */
    const estuary_configuration_t config = {
        .endpoint_name = endpoint,
        .in_buffer_size = 4000,
        .out_buffer_size = 4000,
        .msg_cache_size = 4000,

        .trust_store_certs =
                estuary_certificate_chain_info_from_file(creds.trust_anchor_path),
        .est_reenroll_config = &(const estuary_est_reenroll_config_t) {
            .enable = true,
            .nominal_usage = 0.8,
            .max_margin = estuary_time_duration_from_scalar(7, ESTUARY_TIME_DAY),
            /* A struct that is given is taken as it is: 0 would mean "never retry". */
            .sren_attempts_count = 10,
        },
        .est_cacerts_policy = ESTUARY_EST_CACERTS_FOR_EST_SECURITY,
    };
    g_estuary = estuary_new(&config);
    if (!g_estuary) {
        say("could not create the client (see the log line above)");
        goto free_creds;
    }
    estuary_t *const estuary = g_estuary;

    const estuary_device_object_config_t device = {
        .manufacturer = "Estuary Labs",
        .model_number = "03-est",
        .serial_number = endpoint,
        .firmware_version = "1.0.0",
        .reboot_cb = on_reboot,
    };
    if (estuary_device_object_install(estuary, &device)) {
        say("could not install the Device object");
        goto finish;
    }

    persistence_t persistence = { .path = persistence_path };
    const bool restored = restore(estuary, persistence_path) == 0;
    if (!restored) {
        /* Factory state: only the Bootstrap-Server account, in Certificate mode. The
         * management account (mode 4) and its Server instance come from bootstrap. */
        const estuary_security_instance_t bootstrap_account = {
            .server_uri = uri,
            .bootstrap_server = true,
            .security_mode = ESTUARY_SECURITY_CERTIFICATE,
            .client_holdoff_s = -1,
            .bootstrap_timeout_s = -1,
            .public_cert_or_psk_identity = creds.cert,
            .public_cert_or_psk_identity_size = creds.cert_size,
            .private_cert_or_psk_key = creds.key,
            .private_cert_or_psk_key_size = creds.key_size,
            .server_public_key = creds.server_cert,
            .server_public_key_size = creds.server_cert_size,
        };
        estuary_iid_t iid = ESTUARY_ID_INVALID;
        if (estuary_security_object_install(estuary)
                || estuary_security_object_add_instance(estuary, &bootstrap_account, &iid)
                || estuary_server_object_install(estuary)) {
            say("could not install the Bootstrap-Server account");
            goto finish;
        }
        say("Bootstrap-Server account /0/%u: %s, Certificate mode", (unsigned) iid, uri);
    }

    char serial[64] = "";
    bool from_file = restored;
    report_certificate(estuary, serial, &from_file);

    while (!g_stop && !g_reboot) {
        int rc = estuary_event_loop_run(estuary,
                                        estuary_time_duration_from_scalar(1, ESTUARY_TIME_S));
        if (rc) {
            say("event loop failed: %s", estuary_error_name(rc));
            goto finish;
        }
        if (g_stop || g_reboot) {
            break;
        }
        report_certificate(estuary, serial, &from_file);
        const bool due = persistence.last_saved
                         && time(NULL) - persistence.last_saved >= PERSIST_PERIOD_S;
        if (persist(estuary, &persistence, due ? "periodic" : NULL) < 0) {
            goto finish;
        }
    }

    say(g_reboot ? "reboot requested: persisting, de-registering, exiting"
                 : "stop requested: persisting, de-registering, exiting");
    /* An exchange in flight cannot be persisted; give it a few seconds to end. */
    int saved = persist(estuary, &persistence, "exit");
    for (int ticks = 0; saved == 1 && ticks < EXIT_GRACE_S * 1000 / TICK_MS; ticks++) {
        if (estuary_event_loop_run(estuary,
                                   estuary_time_duration_from_scalar(1, ESTUARY_TIME_S))) {
            break;
        }
        saved = persist(estuary, &persistence, "exit");
    }
    if (saved == 1) {
        say("still in flight after %d s: %s keeps the state from before it", EXIT_GRACE_S,
            persistence_path);
    }
    /* A stop asked for is a success, unless the state could not be written at all. */
    result = saved < 0 ? 1 : 0;

finish:
    set_tick(0);
    {
        /* Clear the global first so no signal handler sees a freed handle. */
        estuary_t *e = g_estuary;
        g_estuary = NULL;
        estuary_delete(e); /* de-registers (bounded wait) */
    }
free_creds:
    factory_creds_free(&creds);
free_args:
    set_tick(0);
    free(default_creds);
    free(default_persistence);
    return result;
}
