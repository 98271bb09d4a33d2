/*
 * The C API contract, checked from C: every pointer argument refuses NULL with its
 * ESTUARY_ERR_* code (or NULL), invalid strings and instance structs are refused without
 * changing anything, every refusal produces a log line naming the function, and the event
 * loop starts, talks UDP, and stops on an interrupt from a signal handler or a thread. Also:
 * the configuration fields and chain/CRL helpers, the poll-style API (undersized socket
 * arrays), streams, and every persistence part fed junk, truncated and bit-flipped streams.
 *
 * Built with -Wall -Wextra -Werror and run by tests/c_api.rs. Exits 0 when every check
 * passes; prints each failed check and exits 1 otherwise.
 */
#include <estuary.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* ---- logging: check_log_capture() (check.h) keeps the lines in g_log ----- */

/* `expr` (an int call) returns `code`, and logs an ERROR line naming `fn`. */
#define CHECK_REFUSED(expr, code, fn)                                          \
    do {                                                                       \
        int before_ = g_log.count;                                             \
        CHECK_RC(expr, code);                                                  \
        CHECK(g_log.count > before_);                                          \
        CHECK(g_log.last_level == ESTUARY_LOG_ERROR);                          \
        CHECK(strstr(g_log.last_message, fn) != NULL);                         \
    } while (0)

/* `expr` (a constructor) returns NULL and logs an ERROR line naming `fn`. */
#define CHECK_NULL_LOGGED(expr, fn)                                            \
    do {                                                                       \
        int before_ = g_log.count;                                             \
        CHECK((expr) == NULL);                                                 \
        CHECK(g_log.count > before_);                                          \
        CHECK(strstr(g_log.last_message, fn) != NULL);                         \
    } while (0)

/* ---- helpers ----------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* A UDP socket on 127.0.0.1 playing the LwM2M server; its URI in `uri`. */
static int fake_server(char *uri, size_t uri_size) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd < 0 || bind(fd, (struct sockaddr *) &addr, sizeof(addr)) != 0
            || getsockname(fd, (struct sockaddr *) &addr, &len) != 0) {
        perror("fake server");
        exit(2);
    }
    snprintf(uri, uri_size, "coap://127.0.0.1:%u", ntohs(addr.sin_port));
    return fd;
}

static bool contains(const unsigned char *buf, size_t len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++) {
        if (memcmp(buf + i, needle, n) == 0) {
            return true;
        }
    }
    return false;
}

static estuary_t *g_estuary;

static void on_alarm(int sig) {
    (void) sig;
    estuary_event_loop_interrupt(g_estuary);
}

static void *interrupt_later(void *arg) {
    usleep(100 * 1000);
    estuary_event_loop_interrupt((estuary_t *) arg);
    return NULL;
}

static estuary_security_instance_t nosec_account(const char *uri,
                                                 estuary_ssid_t ssid) {
    estuary_security_instance_t s;
    memset(&s, 0, sizeof(s));
    s.ssid = ssid;
    s.server_uri = uri;
    s.security_mode = ESTUARY_SECURITY_NOSEC;
    s.client_holdoff_s = -1;
    s.bootstrap_timeout_s = -1;
    return s;
}

static estuary_server_instance_t server_account(estuary_ssid_t ssid) {
    estuary_server_instance_t s;
    memset(&s, 0, sizeof(s));
    s.ssid = ssid;
    s.lifetime = 60;
    s.default_min_period = -1;
    s.default_max_period = -1;
    s.disable_timeout = -1;
    s.binding = "U";
    return s;
}

/* ---- the checks -------------------------------------------------------- */

static void check_codes_and_time(void) {
    CHECK(ESTUARY_ERR_BAD_REQUEST == -128);
    CHECK(ESTUARY_ERR_UNAUTHORIZED == -129);
    CHECK(ESTUARY_ERR_NOT_FOUND == -132);
    CHECK(ESTUARY_ERR_METHOD_NOT_ALLOWED == -133);
    CHECK(ESTUARY_ERR_INTERNAL_SERVER_ERROR == -160);
    CHECK(ESTUARY_ERR_NULL_ARGUMENT < 0 && ESTUARY_ERR_NULL_ARGUMENT > -100);
    CHECK(ESTUARY_ERR_INTERNAL != ESTUARY_ERR_INTERNAL_SERVER_ERROR);
    CHECK(strcmp(estuary_error_name(ESTUARY_ERR_NOT_FOUND),
                 "ESTUARY_ERR_NOT_FOUND") == 0);
    CHECK(strcmp(estuary_error_name(1234), "unknown") == 0);

    estuary_time_duration_t week =
            estuary_time_duration_from_scalar(7, ESTUARY_TIME_DAY);
    CHECK(week.seconds == 604800 && week.nanoseconds == 0);
    estuary_time_duration_t minus_ms =
            estuary_time_duration_from_scalar(-1, ESTUARY_TIME_MS);
    CHECK(minus_ms.seconds == -1 && minus_ms.nanoseconds == 999000000);
    estuary_time_duration_t us = estuary_time_duration_from_scalar(1500, ESTUARY_TIME_US);
    CHECK(us.seconds == 0 && us.nanoseconds == 1500000);
    CHECK(estuary_time_duration_is_valid(ESTUARY_TIME_DURATION_ZERO));
    CHECK(!estuary_time_duration_is_valid(ESTUARY_TIME_DURATION_INVALID));
    int before = g_log.count;
    CHECK(!estuary_time_duration_is_valid(estuary_time_duration_from_scalar(1, 99)));
    CHECK(g_log.count > before);
    CHECK(!estuary_time_duration_is_valid(
            estuary_time_duration_from_scalar(INT64_MAX, ESTUARY_TIME_DAY)));

    CHECK_REFUSED(estuary_set_log_level(42), ESTUARY_ERR_INVALID_ARGUMENT,
                  "estuary_set_log_level");
    CHECK_RC(estuary_set_log_level(ESTUARY_LOG_INFO), 0);
}

static void check_new(void) {
    CHECK_NULL_LOGGED(estuary_new(NULL), "estuary_new");

    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    CHECK_NULL_LOGGED(estuary_new(&cfg), "estuary_new"); /* NULL endpoint_name */
    cfg.endpoint_name = "\xff\xfe-not-utf8";
    CHECK_NULL_LOGGED(estuary_new(&cfg), "estuary_new");
    cfg.endpoint_name = "has space";
    CHECK_NULL_LOGGED(estuary_new(&cfg), "estuary_new");
    cfg.endpoint_name = "contract";
    cfg.in_buffer_size = 16; /* below the minimum */
    CHECK_NULL_LOGGED(estuary_new(&cfg), "estuary_new");
    cfg.in_buffer_size = 0;
    estuary_coap_udp_tx_params_t tx = ESTUARY_COAP_UDP_TX_PARAMS_DEFAULT;
    tx.ack_random_factor = 0.5;
    cfg.udp_tx_params = &tx;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "estuary_new");
    tx.ack_random_factor = 1.5;
    tx.ack_timeout = estuary_time_duration_from_scalar(-5, ESTUARY_TIME_S);
    CHECK_NULL_LOGGED(estuary_new(&cfg), "estuary_new");

    tx = ESTUARY_COAP_UDP_TX_PARAMS_DEFAULT;
    cfg.prng_seed = 42;
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    estuary_delete(e);
}

static void check_null_handles(void) {
    estuary_security_instance_t sec = nosec_account("coap://127.0.0.1", 1);
    estuary_server_instance_t srv = server_account(1);
    estuary_device_object_config_t dev;
    memset(&dev, 0, sizeof(dev));
    estuary_iid_t iid = ESTUARY_ID_INVALID;

    CHECK_REFUSED(estuary_security_object_install(NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_security_object_install");
    CHECK_REFUSED(estuary_security_object_add_instance(NULL, &sec, &iid),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_security_object_add_instance");
    CHECK_REFUSED(estuary_security_object_purge(NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_security_object_purge");
    CHECK_REFUSED(estuary_server_object_install(NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_server_object_install");
    CHECK_REFUSED(estuary_server_object_add_instance(NULL, &srv, &iid),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_server_object_add_instance");
    CHECK_REFUSED(estuary_server_object_purge(NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_server_object_purge");
    CHECK_REFUSED(estuary_device_object_install(NULL, &dev), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_device_object_install");
    CHECK_REFUSED(estuary_event_loop_run(NULL, ESTUARY_TIME_DURATION_ZERO),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_event_loop_run");
    CHECK_REFUSED(estuary_schedule_registration_update(NULL, ESTUARY_SSID_ANY),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_schedule_registration_update");
    CHECK_REFUSED(estuary_schedule_bootstrap_request(NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_schedule_bootstrap_request");
    CHECK(iid == ESTUARY_ID_INVALID);

    /* Async-signal-safe, so no log line. */
    int before = g_log.count;
    CHECK_RC(estuary_event_loop_interrupt(NULL), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK(g_log.count == before);

    estuary_delete(NULL); /* like free(NULL) */
    CHECK(g_log.count == before);
}

static void check_objects(estuary_t *e) {
    estuary_iid_t iid = ESTUARY_ID_INVALID;
    estuary_security_instance_t sec = nosec_account("coap://127.0.0.1:5683", 1);

    /* NULL pointers other than the handle. */
    CHECK_REFUSED(estuary_security_object_add_instance(e, NULL, &iid),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_security_object_add_instance");
    CHECK_REFUSED(estuary_security_object_add_instance(e, &sec, NULL),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_security_object_add_instance");
    CHECK_REFUSED(estuary_server_object_add_instance(e, NULL, &iid),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_server_object_add_instance");
    CHECK_REFUSED(estuary_device_object_install(e, NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_device_object_install");

    /* Not installed yet. */
    CHECK_REFUSED(estuary_security_object_add_instance(e, &sec, &iid),
                  ESTUARY_ERR_STATE, "estuary_security_object_add_instance");
    CHECK_REFUSED(estuary_security_object_purge(e), ESTUARY_ERR_STATE,
                  "estuary_security_object_purge");
    CHECK(iid == ESTUARY_ID_INVALID);

    CHECK_RC(estuary_security_object_install(e), 0);
    CHECK_RC(estuary_security_object_install(e), 0); /* idempotent */

    /* Bad Security instances: refused, nothing stored, iid untouched. */
    estuary_security_instance_t bad = sec;
    bad.server_uri = NULL;
    CHECK_REFUSED(estuary_security_object_add_instance(e, &bad, &iid),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_security_object_add_instance");
    bad.server_uri = "http://127.0.0.1:5683";
    CHECK_REFUSED(estuary_security_object_add_instance(e, &bad, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_security_object_add_instance");
    bad.server_uri = "coap://\xc3\x28";
    CHECK_REFUSED(estuary_security_object_add_instance(e, &bad, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_security_object_add_instance");
    bad = sec;
    bad.security_mode = 9;
    CHECK_REFUSED(estuary_security_object_add_instance(e, &bad, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_security_object_add_instance");
    bad = sec;
    bad.ssid = 0;
    CHECK_REFUSED(estuary_security_object_add_instance(e, &bad, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_security_object_add_instance");
    bad = sec;
    bad.public_cert_or_psk_identity_size = 4; /* with a NULL pointer */
    CHECK_REFUSED(estuary_security_object_add_instance(e, &bad, &iid),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_security_object_add_instance");
    CHECK(iid == ESTUARY_ID_INVALID);

    /* The first valid one gets the lowest free ID: nothing was stored before. */
    CHECK_RC(estuary_security_object_add_instance(e, &sec, &iid), 0);
    CHECK(iid == 0);

    /* SSID and IID clashes. */
    estuary_iid_t iid2 = ESTUARY_ID_INVALID;
    estuary_security_instance_t clash = nosec_account("coap://127.0.0.1:5700", 1);
    CHECK_REFUSED(estuary_security_object_add_instance(e, &clash, &iid2),
                  ESTUARY_ERR_ALREADY_EXISTS, "estuary_security_object_add_instance");
    clash.ssid = 2;
    iid2 = 0;
    CHECK_REFUSED(estuary_security_object_add_instance(e, &clash, &iid2),
                  ESTUARY_ERR_ALREADY_EXISTS, "estuary_security_object_add_instance");
    CHECK(iid2 == 0);

    /* A bootstrap account with key material: next free ID. */
    static const uint8_t identity[] = { 'i', 'd' };
    static const uint8_t key[] = { 1, 2, 3, 4 };
    estuary_security_instance_t bs = nosec_account("coaps://127.0.0.1:5784", 0);
    bs.bootstrap_server = true;
    bs.security_mode = ESTUARY_SECURITY_PSK;
    bs.client_holdoff_s = 0;
    bs.bootstrap_timeout_s = 0;
    bs.public_cert_or_psk_identity = identity;
    bs.public_cert_or_psk_identity_size = sizeof(identity);
    bs.private_cert_or_psk_key = key;
    bs.private_cert_or_psk_key_size = sizeof(key);
    iid2 = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_security_object_add_instance(e, &bs, &iid2), 0);
    CHECK(iid2 == 1);
    iid2 = ESTUARY_ID_INVALID;
    CHECK_REFUSED(estuary_security_object_add_instance(e, &bs, &iid2),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_security_object_add_instance");
    CHECK(iid2 == ESTUARY_ID_INVALID);

    /* Server object. */
    estuary_server_instance_t srv = server_account(1);
    iid = ESTUARY_ID_INVALID;
    CHECK_REFUSED(estuary_server_object_add_instance(e, &srv, &iid), ESTUARY_ERR_STATE,
                  "estuary_server_object_add_instance");
    CHECK_RC(estuary_server_object_install(e), 0);
    estuary_server_instance_t bad_srv = srv;
    bad_srv.lifetime = 0;
    CHECK_REFUSED(estuary_server_object_add_instance(e, &bad_srv, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_server_object_add_instance");
    bad_srv = srv;
    bad_srv.binding = "X";
    CHECK_REFUSED(estuary_server_object_add_instance(e, &bad_srv, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_server_object_add_instance");
    bad_srv.binding = "\xff";
    CHECK_REFUSED(estuary_server_object_add_instance(e, &bad_srv, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_server_object_add_instance");
    bad_srv = srv;
    bad_srv.ssid = ESTUARY_SSID_ANY;
    CHECK_REFUSED(estuary_server_object_add_instance(e, &bad_srv, &iid),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_server_object_add_instance");
    CHECK(iid == ESTUARY_ID_INVALID);
    iid = 5;
    CHECK_RC(estuary_server_object_add_instance(e, &srv, &iid), 0);
    CHECK(iid == 5);
    estuary_server_instance_t srv2 = server_account(1);
    iid = ESTUARY_ID_INVALID;
    CHECK_REFUSED(estuary_server_object_add_instance(e, &srv2, &iid),
                  ESTUARY_ERR_ALREADY_EXISTS, "estuary_server_object_add_instance");
    srv2.ssid = 2;
    srv2.binding = NULL; /* default "U" */
    CHECK_RC(estuary_server_object_add_instance(e, &srv2, &iid), 0);
    CHECK(iid == 0);

    /* Device object. */
    estuary_device_object_config_t dev;
    memset(&dev, 0, sizeof(dev));
    dev.manufacturer = "\xff";
    CHECK_REFUSED(estuary_device_object_install(e, &dev), ESTUARY_ERR_INVALID_ARGUMENT,
                  "estuary_device_object_install");
    dev.manufacturer = "Estuary Labs";
    dev.firmware_version = "1.0.0";
    CHECK_RC(estuary_device_object_install(e, &dev), 0);

    /* Triggers need a running client. */
    CHECK_REFUSED(estuary_schedule_registration_update(e, 1), ESTUARY_ERR_STATE,
                  "estuary_schedule_registration_update");
    CHECK_REFUSED(estuary_schedule_bootstrap_request(e), ESTUARY_ERR_STATE,
                  "estuary_schedule_bootstrap_request");
}

static void check_purge(void) {
    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "purge";
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    estuary_security_instance_t sec = nosec_account("coap://127.0.0.1", 3);
    estuary_server_instance_t srv = server_account(3);
    estuary_iid_t iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_security_object_install(e), 0);
    CHECK_RC(estuary_server_object_install(e), 0);
    CHECK_RC(estuary_security_object_add_instance(e, &sec, &iid), 0);
    iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_server_object_add_instance(e, &srv, &iid), 0);
    CHECK_RC(estuary_security_object_purge(e), 0);
    CHECK_RC(estuary_server_object_purge(e), 0);
    /* After a purge the SSID is free again and the IDs start over. */
    iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_security_object_add_instance(e, &sec, &iid), 0);
    CHECK(iid == 0);
    iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_server_object_add_instance(e, &srv, &iid), 0);
    CHECK(iid == 0);
    /* Without any server account the loop cannot start. */
    CHECK_RC(estuary_security_object_purge(e), 0);
    CHECK_REFUSED(estuary_event_loop_run(e, ESTUARY_TIME_DURATION_ZERO),
                  ESTUARY_ERR_CONFIG, "estuary_event_loop_run");
    estuary_delete(e);
}

static void check_event_loop(void) {
    char uri[64];
    int server = fake_server(uri, sizeof(uri));

    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "contract";
    cfg.prng_seed = 7;
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    if (!e) {
        return;
    }
    estuary_security_instance_t sec = nosec_account(uri, 1);
    estuary_server_instance_t srv = server_account(1);
    estuary_iid_t iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_security_object_install(e), 0);
    CHECK_RC(estuary_security_object_add_instance(e, &sec, &iid), 0);
    iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_server_object_install(e), 0);
    CHECK_RC(estuary_server_object_add_instance(e, &srv, &iid), 0);

    estuary_time_duration_t negative = { -1, 0 };
    CHECK_REFUSED(estuary_event_loop_run(e, negative), ESTUARY_ERR_INVALID_ARGUMENT,
                  "estuary_event_loop_run");
    CHECK_REFUSED(estuary_event_loop_run(e, ESTUARY_TIME_DURATION_INVALID),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_event_loop_run");

    /* Interrupted from a signal handler. */
    g_estuary = e;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval timer;
    memset(&timer, 0, sizeof(timer));
    timer.it_value.tv_usec = 200 * 1000;
    double t0 = now_s();
    setitimer(ITIMER_REAL, &timer, NULL);
    CHECK_RC(estuary_event_loop_run(e, estuary_time_duration_from_scalar(
                                               10, ESTUARY_TIME_S)),
             0);
    double took = now_s() - t0;
    CHECK(took >= 0.15 && took < 5.0);
    g_estuary = NULL;

    /* The loop started the client: a Register reached the server. */
    unsigned char buf[2048];
    ssize_t n = recv(server, buf, sizeof(buf), MSG_DONTWAIT);
    CHECK(n > 4);
    if (n > 4) {
        CHECK((buf[0] >> 6) == 1); /* CoAP version 1 */
        CHECK(buf[1] == 0x02);     /* POST */
        CHECK(contains(buf, (size_t) n, "ep=contract"));
        CHECK(contains(buf, (size_t) n, "lt=60"));
    }

    /* Objects are frozen once the loop runs; triggers work. */
    estuary_security_instance_t late = nosec_account("coap://127.0.0.1:5999", 9);
    iid = ESTUARY_ID_INVALID;
    CHECK_REFUSED(estuary_security_object_add_instance(e, &late, &iid),
                  ESTUARY_ERR_NOT_SUPPORTED, "estuary_security_object_add_instance");
    CHECK(iid == ESTUARY_ID_INVALID);
    CHECK_REFUSED(estuary_schedule_registration_update(e, 9), ESTUARY_ERR_INVALID_ARGUMENT,
                  "estuary_schedule_registration_update");
    CHECK_REFUSED(estuary_schedule_registration_update(e, 0), ESTUARY_ERR_INVALID_ARGUMENT,
                  "estuary_schedule_registration_update");
    CHECK_RC(estuary_schedule_registration_update(e, ESTUARY_SSID_ANY), 0);

    /* Interrupted from another thread. */
    pthread_t thread;
    t0 = now_s();
    CHECK(pthread_create(&thread, NULL, interrupt_later, e) == 0);
    CHECK_RC(estuary_event_loop_run(e, estuary_time_duration_from_scalar(
                                               50, ESTUARY_TIME_MS)),
             0);
    pthread_join(thread, NULL);
    took = now_s() - t0;
    CHECK(took >= 0.05 && took < 5.0);

    /* An interrupt while not running is kept: the next run returns at once. */
    CHECK_RC(estuary_event_loop_interrupt(e), 0);
    t0 = now_s();
    CHECK_RC(estuary_event_loop_run(e, estuary_time_duration_from_scalar(
                                               10, ESTUARY_TIME_S)),
             0);
    CHECK(now_s() - t0 < 1.0);

    /* Never registered: delete has nothing to wait for. */
    t0 = now_s();
    estuary_delete(e);
    CHECK(now_s() - t0 < 1.0);
    close(server);
}

/* ---- configuration fields (K2), chain and CRL helpers ------------------ */

/* `expr` (a chain/CRL info helper) gives the empty info and logs naming `fn`. */
#define CHECK_EMPTY_INFO(expr, fn)                                             \
    do {                                                                       \
        int before_ = g_log.count;                                             \
        estuary_certificate_chain_info_t info_ = (expr);                       \
        CHECK(info_.source == ESTUARY_CHAIN_SOURCE_EMPTY);                     \
        CHECK(info_.path == NULL && info_.data == NULL && info_.size == 0);    \
        CHECK(g_log.count > before_);                                          \
        CHECK(strstr(g_log.last_message, fn) != NULL);                         \
    } while (0)

static void check_chain_helpers(void) {
    static const char junk[] = "not a certificate";
    CHECK_EMPTY_INFO(estuary_certificate_chain_info_from_file(NULL),
                     "estuary_certificate_chain_info_from_file");
    CHECK_EMPTY_INFO(estuary_certificate_chain_info_from_path(NULL),
                     "estuary_certificate_chain_info_from_path");
    CHECK_EMPTY_INFO(estuary_certificate_chain_info_from_buffer(NULL, 3),
                     "estuary_certificate_chain_info_from_buffer");
    CHECK_EMPTY_INFO(estuary_cert_revocation_list_info_from_file(NULL),
                     "estuary_cert_revocation_list_info_from_file");
    CHECK_EMPTY_INFO(estuary_cert_revocation_list_info_from_path(NULL),
                     "estuary_cert_revocation_list_info_from_path");
    CHECK_EMPTY_INFO(estuary_cert_revocation_list_info_from_buffer(NULL, 3),
                     "estuary_cert_revocation_list_info_from_buffer");
    CHECK_EMPTY_INFO(estuary_crypto_certificate_chain_info_from_file(NULL),
                     "estuary_crypto_certificate_chain_info_from_file");
    CHECK_EMPTY_INFO(estuary_crypto_certificate_chain_info_from_path(NULL),
                     "estuary_crypto_certificate_chain_info_from_path");
    CHECK_EMPTY_INFO(estuary_crypto_certificate_chain_info_from_buffer(NULL, 3),
                     "estuary_crypto_certificate_chain_info_from_buffer");
    CHECK_EMPTY_INFO(estuary_crypto_cert_revocation_list_info_from_file(NULL),
                     "estuary_crypto_cert_revocation_list_info_from_file");
    CHECK_EMPTY_INFO(estuary_crypto_cert_revocation_list_info_from_path(NULL),
                     "estuary_crypto_cert_revocation_list_info_from_path");
    CHECK_EMPTY_INFO(estuary_crypto_cert_revocation_list_info_from_buffer(NULL, 3),
                     "estuary_crypto_cert_revocation_list_info_from_buffer");

    estuary_cert_revocation_list_info_t crl =
            estuary_cert_revocation_list_info_from_buffer(junk, sizeof(junk));
    CHECK(crl.source == ESTUARY_CHAIN_SOURCE_BUFFER && crl.size == sizeof(junk));
    crl = estuary_crypto_cert_revocation_list_info_from_file("/x.crl");
    CHECK(crl.source == ESTUARY_CHAIN_SOURCE_FILE && strcmp(crl.path, "/x.crl") == 0);
    crl = estuary_crypto_cert_revocation_list_info_from_path("/etc/ssl/crls");
    CHECK(crl.source == ESTUARY_CHAIN_SOURCE_PATH);
    /* NULL with size 0 is the empty buffer, not a refusal. */
    int before = g_log.count;
    crl = estuary_cert_revocation_list_info_from_buffer(NULL, 0);
    CHECK(crl.source == ESTUARY_CHAIN_SOURCE_BUFFER && g_log.count == before);

    /* What estuary_new() makes of them. */
    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "crl";
    cfg.trust_store_crls = estuary_cert_revocation_list_info_from_buffer(junk, sizeof(junk));
    CHECK_NULL_LOGGED(estuary_new(&cfg), "trust_store_crls");
    cfg.trust_store_crls = estuary_cert_revocation_list_info_from_file("\xff\xfe.crl");
    CHECK_NULL_LOGGED(estuary_new(&cfg), "not valid UTF-8");
    cfg.trust_store_crls =
            estuary_cert_revocation_list_info_from_file("/nonexistent/estuary.crl");
    CHECK_NULL_LOGGED(estuary_new(&cfg), "/nonexistent/estuary.crl");
    cfg.trust_store_crls = estuary_cert_revocation_list_info_from_buffer(NULL, 0);
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    estuary_delete(e);
    cfg.trust_store_crls.source = 77;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "ESTUARY_CHAIN_SOURCE_");
}

static const char *gen_address(void *arg, const void *der, size_t size) {
    (void) der;
    (void) size;
    return (const char *) arg;
}

static void check_version_and_engine_fields(void) {
    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "versions";
    estuary_lwm2m_version_config_t v = { ESTUARY_LWM2M_VERSION_1_0,
                                         ESTUARY_LWM2M_VERSION_1_1 };
    cfg.lwm2m_version_config = &v;
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    estuary_delete(e);
    v.maximum_version = ESTUARY_LWM2M_VERSION_1_2;
    e = estuary_new(&cfg);
    CHECK(e != NULL);
    estuary_delete(e);
    /* Ranges without 1.1, the version this build speaks: refused, saying so. */
    v.minimum_version = ESTUARY_LWM2M_VERSION_1_0;
    v.maximum_version = ESTUARY_LWM2M_VERSION_1_0;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "speaks LwM2M 1.1");
    v.minimum_version = ESTUARY_LWM2M_VERSION_1_2;
    v.maximum_version = ESTUARY_LWM2M_VERSION_1_2;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "speaks LwM2M 1.1");
    v.minimum_version = ESTUARY_LWM2M_VERSION_1_2;
    v.maximum_version = ESTUARY_LWM2M_VERSION_1_0;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "newer than");
    v.minimum_version = 9;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "ESTUARY_LWM2M_VERSION_");
    cfg.lwm2m_version_config = NULL;

    /* Engines are not in this build: each field alone is refused, not ignored. */
    char buf[64] = "pkcs11:object=x";
    cfg.est_engine_key_address = "pkcs11:token=T;object=EstClientKey";
    CHECK_NULL_LOGGED(estuary_new(&cfg), "engines are not in this build");
    cfg.est_engine_key_address = NULL;
    cfg.est_engine_cert_address = "pkcs11:token=T;object=EstClientCert";
    CHECK_NULL_LOGGED(estuary_new(&cfg), "est_engine_cert_address");
    cfg.est_engine_cert_address = NULL;
    cfg.est_engine_cacerts_address_gen_cb = gen_address;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "est_engine_cacerts_address_gen_cb");
    cfg.est_engine_cacerts_address_gen_cb = NULL;
    cfg.est_engine_cacerts_address_gen_cb_arg = buf;
    CHECK_NULL_LOGGED(estuary_new(&cfg), "est_engine_cacerts_address_gen_cb_arg");
}

/* ---- the poll-style API (K2) ------------------------------------------- */

static void check_poll_api(void) {
    int fds[4] = { -7, -7, -7, -7 };
    size_t count = 4;
    CHECK_REFUSED(estuary_get_sockets(NULL, fds, &count), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_get_sockets");
    CHECK(count == 4 && fds[0] == -7);
    CHECK_REFUSED(estuary_serve(NULL, 0), ESTUARY_ERR_NULL_ARGUMENT, "estuary_serve");
    CHECK_REFUSED((int) estuary_sched_calculate_wait_time_ms(NULL, 100),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_sched_calculate_wait_time_ms");
    CHECK_REFUSED(estuary_sched_run(NULL), ESTUARY_ERR_NULL_ARGUMENT, "estuary_sched_run");

    char uri[64];
    int server = fake_server(uri, sizeof(uri));
    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "poll";
    cfg.prng_seed = 3;
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    if (!e) {
        close(server);
        return;
    }
    CHECK_REFUSED(estuary_get_sockets(e, fds, NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_get_sockets");
    count = 2;
    CHECK_REFUSED(estuary_get_sockets(e, NULL, &count), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_get_sockets");
    CHECK(count == 2);
    CHECK_REFUSED((int) estuary_sched_calculate_wait_time_ms(e, -1),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_sched_calculate_wait_time_ms");
    /* No server account yet: the start fails, saying why. */
    CHECK_REFUSED(estuary_sched_run(e), ESTUARY_ERR_CONFIG, "estuary_sched_run");

    estuary_security_instance_t sec = nosec_account(uri, 1);
    estuary_server_instance_t srv = server_account(1);
    estuary_iid_t iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_security_object_install(e), 0);
    CHECK_RC(estuary_security_object_add_instance(e, &sec, &iid), 0);
    iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_server_object_install(e), 0);
    CHECK_RC(estuary_server_object_add_instance(e, &srv, &iid), 0);

    /* Before the start: no socket, and the start is due now. */
    count = 4;
    CHECK_RC(estuary_get_sockets(e, fds, &count), 0);
    CHECK(count == 0);
    CHECK(estuary_sched_calculate_wait_time_ms(e, 500) == 0);
    CHECK_REFUSED(estuary_serve(e, server), ESTUARY_ERR_INVALID_ARGUMENT, "estuary_serve");

    CHECK_RC(estuary_sched_run(e), 0);
    count = 4;
    CHECK_RC(estuary_get_sockets(e, fds, &count), 0);
    CHECK(count == 1 && fds[0] >= 0);
    /* Undersized: the needed count comes back, fds is untouched. */
    int small[1] = { -7 };
    size_t zero = 0;
    CHECK_REFUSED(estuary_get_sockets(e, small, &zero), ESTUARY_ERR_NO_SPACE,
                  "estuary_get_sockets");
    CHECK(zero == 1 && small[0] == -7);
    /* The Register is out; its retransmission is what is scheduled next. */
    int64_t wait = estuary_sched_calculate_wait_time_ms(e, 60000);
    CHECK(wait > 0 && wait <= 60000);
    CHECK(estuary_sched_calculate_wait_time_ms(e, 5) <= 5);
    CHECK(estuary_sched_calculate_wait_time_ms(e, 0) == 0);
    unsigned char buf[2048];
    ssize_t n = recv(server, buf, sizeof(buf), 0);
    CHECK(n > 4 && contains(buf, (size_t) n, "ep=poll"));
    /* Nothing arrived on the client's socket: serving it reads nothing and succeeds. */
    CHECK_RC(estuary_serve(e, fds[0]), 0);
    CHECK_REFUSED(estuary_serve(e, -1), ESTUARY_ERR_INVALID_ARGUMENT, "estuary_serve");
    CHECK_RC(estuary_sched_run(e), 0);
    /* Triggers work once the client has started through the poll API. */
    CHECK_RC(estuary_schedule_registration_update(e, ESTUARY_SSID_ANY), 0);
    CHECK_REFUSED(estuary_schedule_bootstrap_request(e), ESTUARY_ERR_CONFIG,
                  "estuary_schedule_bootstrap_request");
    estuary_delete(e);
    close(server);
}

/* ---- streams and persistence (K1) -------------------------------------- */

static ptrdiff_t no_read(void *arg, uint8_t *buf, size_t size) {
    (void) arg;
    (void) buf;
    (void) size;
    return -1;
}

static int count_writes(void *arg, const uint8_t *data, size_t size) {
    (void) data;
    *(size_t *) arg += size;
    return 0;
}

static void check_streams(void) {
    CHECK_NULL_LOGGED(estuary_stream_file_create(NULL, ESTUARY_STREAM_FILE_READ),
                      "estuary_stream_file_create");
    CHECK_NULL_LOGGED(estuary_stream_file_create("\xff\xfe", ESTUARY_STREAM_FILE_WRITE),
                      "estuary_stream_file_create");
    CHECK_NULL_LOGGED(estuary_stream_file_create("/tmp/estuary-contract", 7),
                      "estuary_stream_file_create");
    CHECK_NULL_LOGGED(estuary_stream_file_create("/nonexistent/estuary/state",
                                                 ESTUARY_STREAM_FILE_READ),
                      "estuary_stream_file_create");
    CHECK_NULL_LOGGED(estuary_stream_from_callbacks(NULL, NULL, NULL),
                      "estuary_stream_from_callbacks");

    size_t size = 99;
    CHECK_NULL_LOGGED(estuary_stream_membuf_data(NULL, &size), "estuary_stream_membuf_data");
    CHECK(size == 99);
    estuary_stream_t *mem = estuary_stream_membuf_create();
    CHECK(mem != NULL);
    CHECK_NULL_LOGGED(estuary_stream_membuf_data(mem, NULL), "estuary_stream_membuf_data");
    CHECK_REFUSED(estuary_stream_membuf_write(NULL, (const uint8_t *) "x", 1),
                  ESTUARY_ERR_NULL_ARGUMENT, "estuary_stream_membuf_write");
    CHECK_REFUSED(estuary_stream_membuf_write(mem, NULL, 3), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_stream_membuf_write");
    CHECK_RC(estuary_stream_membuf_write(mem, NULL, 0), 0);
    CHECK_RC(estuary_stream_membuf_write(mem, (const uint8_t *) "abc", 3), 0);
    const uint8_t *data = estuary_stream_membuf_data(mem, &size);
    CHECK(data != NULL && size == 3 && memcmp(data, "abc", 3) == 0);

    size_t written = 0;
    estuary_stream_t *cb = estuary_stream_from_callbacks(NULL, count_writes, &written);
    CHECK(cb != NULL);
    CHECK_NULL_LOGGED(estuary_stream_membuf_data(cb, &size), "not a memory stream");
    CHECK_REFUSED(estuary_stream_membuf_write(cb, (const uint8_t *) "x", 1),
                  ESTUARY_ERR_INVALID_ARGUMENT, "not a memory stream");

    int before = g_log.count;
    estuary_stream_delete(NULL); /* like free(NULL) */
    CHECK(g_log.count == before);
    estuary_stream_delete(cb);
    estuary_stream_delete(mem);
}

typedef int (*part_fn_t)(estuary_t *, estuary_stream_t *);

static const struct {
    const char *name;
    part_fn_t persist;
    part_fn_t restore;
    bool (*is_modified)(estuary_t *);
} PARTS[] = {
    { "security_object", estuary_security_object_persist, estuary_security_object_restore,
      estuary_security_object_is_modified },
    { "server_object", estuary_server_object_persist, estuary_server_object_restore,
      estuary_server_object_is_modified },
    { "attr_storage", estuary_attr_storage_persist, estuary_attr_storage_restore,
      estuary_attr_storage_is_modified },
    { "est_state", estuary_est_state_persist, estuary_est_state_restore,
      estuary_est_state_is_modified },
};

/* The bytes `part` persists from `e` now, in a malloc'd buffer (NULL on failure). */
static uint8_t *persisted(estuary_t *e, part_fn_t persist, size_t *out_size) {
    estuary_stream_t *s = estuary_stream_membuf_create();
    uint8_t *copy = NULL;
    size_t size = 0;
    if (s && persist(e, s) == 0) {
        const uint8_t *data = estuary_stream_membuf_data(s, &size);
        copy = (uint8_t *) malloc(size ? size : 1);
        if (copy && data) {
            memcpy(copy, data, size);
        }
    }
    estuary_stream_delete(s);
    *out_size = size;
    return copy;
}

/* Restores `len` bytes into part `i` of `e`; returns the code. */
static int restore_bytes(estuary_t *e, size_t i, const uint8_t *bytes, size_t len) {
    estuary_stream_t *s = estuary_stream_membuf_create();
    if (!s || estuary_stream_membuf_write(s, bytes, len) != 0) {
        estuary_stream_delete(s);
        return -999;
    }
    int rc = PARTS[i].restore(e, s);
    estuary_stream_delete(s);
    return rc;
}

static void check_persistence(void) {
    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "persist";
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    if (!e) {
        return;
    }
    estuary_security_instance_t sec = nosec_account("coap://127.0.0.1:5683", 1);
    estuary_server_instance_t srv = server_account(1);
    estuary_iid_t iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_security_object_install(e), 0);
    CHECK_RC(estuary_security_object_add_instance(e, &sec, &iid), 0);
    iid = ESTUARY_ID_INVALID;
    CHECK_RC(estuary_server_object_install(e), 0);
    CHECK_RC(estuary_server_object_add_instance(e, &srv, &iid), 0);
    estuary_stream_t *mem = estuary_stream_membuf_create();

    for (size_t i = 0; i < sizeof(PARTS) / sizeof(PARTS[0]); i++) {
        const char *name = PARTS[i].name;
        fprintf(stderr, "-- persistence part %s\n", name);
        CHECK_REFUSED(PARTS[i].persist(NULL, mem), ESTUARY_ERR_NULL_ARGUMENT, "persist");
        CHECK_REFUSED(PARTS[i].persist(e, NULL), ESTUARY_ERR_NULL_ARGUMENT, "persist");
        CHECK_REFUSED(PARTS[i].restore(NULL, mem), ESTUARY_ERR_NULL_ARGUMENT, "restore");
        CHECK_REFUSED(PARTS[i].restore(e, NULL), ESTUARY_ERR_NULL_ARGUMENT, "restore");
        int before = g_log.count;
        CHECK(!PARTS[i].is_modified(NULL));
        CHECK(g_log.count > before);

        size_t len = 0;
        uint8_t *good = persisted(e, PARTS[i].persist, &len);
        /* A part is an 11-byte header, a CBOR payload of at least one byte, a 4-byte CRC. */
        CHECK(good != NULL && len >= 16);
        if (!good || len < 16) {
            free(good);
            continue;
        }
        bool modified = PARTS[i].is_modified(e);

        /* Junk, a truncated part, a flipped payload bit, an empty stream: each refused
         * with its code and a log line, and the part stays as it was. */
        static const uint8_t junk[] = "this is not an Estuary persistence stream";
        CHECK_REFUSED(restore_bytes(e, i, junk, sizeof(junk)), ESTUARY_ERR_INVALID_ARGUMENT,
                      "restore");
        CHECK_REFUSED(restore_bytes(e, i, good, len - 3), ESTUARY_ERR_IO, "restore");
        CHECK_REFUSED(restore_bytes(e, i, good, 0), ESTUARY_ERR_IO, "restore");
        uint8_t *flipped = (uint8_t *) malloc(len);
        if (flipped) {
            memcpy(flipped, good, len);
            flipped[len - 5] ^= 0x10; /* the payload's last byte */
            CHECK_REFUSED(restore_bytes(e, i, flipped, len), ESTUARY_ERR_INVALID_ARGUMENT,
                          "restore");
            free(flipped);
        }
        size_t after_len = 0;
        uint8_t *after = persisted(e, PARTS[i].persist, &after_len);
        CHECK(after != NULL && after_len == len && memcmp(after, good, len) == 0);
        CHECK(PARTS[i].is_modified(e) == modified);
        free(after);

        /* The good bytes restore, and then nothing is modified. */
        CHECK_RC(restore_bytes(e, i, good, len), 0);
        CHECK(!PARTS[i].is_modified(e));
        free(good);
    }

    /* A callback stream without a read callback cannot restore. */
    size_t written = 0;
    estuary_stream_t *wo = estuary_stream_from_callbacks(NULL, count_writes, &written);
    CHECK_RC(estuary_security_object_persist(e, wo), 0);
    CHECK(written > 0);
    CHECK_REFUSED(estuary_security_object_restore(e, wo), ESTUARY_ERR_INVALID_ARGUMENT,
                  "estuary_security_object_restore");
    estuary_stream_delete(wo);
    estuary_stream_t *failing = estuary_stream_from_callbacks(no_read, NULL, NULL);
    CHECK_REFUSED(estuary_security_object_restore(e, failing), ESTUARY_ERR_IO,
                  "estuary_security_object_restore");
    CHECK_REFUSED(estuary_security_object_persist(e, failing), ESTUARY_ERR_INVALID_ARGUMENT,
                  "estuary_security_object_persist");
    estuary_stream_delete(failing);

    /* The one-file helpers. */
    char path[128];
    snprintf(path, sizeof(path), "/tmp/estuary-contract-%d.state", (int) getpid());
    CHECK_REFUSED(estuary_persistence_save_file(NULL, path), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_persistence_save_file");
    CHECK_REFUSED(estuary_persistence_save_file(e, NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_persistence_save_file");
    CHECK_REFUSED(estuary_persistence_save_file(e, "/tmp/\xff\xfe"),
                  ESTUARY_ERR_INVALID_ARGUMENT, "estuary_persistence_save_file");
    CHECK_REFUSED(estuary_persistence_restore_file(NULL, path), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_persistence_restore_file");
    CHECK_REFUSED(estuary_persistence_restore_file(e, NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_persistence_restore_file");
    /* A missing file is a first start: NOT_FOUND, said at INFO level, not as an error. */
    {
        int before_ = g_log.count;
        CHECK_RC(estuary_persistence_restore_file(e, "/nonexistent/estuary.state"),
                 ESTUARY_ERR_NOT_FOUND);
        CHECK(g_log.count > before_);
        CHECK(g_log.last_level == ESTUARY_LOG_INFO);
        CHECK(strstr(g_log.last_message, "does not exist") != NULL);
    }
    int before = g_log.count;
    CHECK(!estuary_persistence_is_modified(NULL));
    CHECK(!estuary_est_state_is_ready_for_persistence(NULL));
    CHECK(g_log.count >= before + 2);
    CHECK(estuary_est_state_is_ready_for_persistence(e));

    CHECK_RC(estuary_persistence_save_file(e, path), 0);
    CHECK(!estuary_persistence_is_modified(e));
    CHECK_RC(estuary_persistence_restore_file(e, path), 0);
    /* A corrupt file: refused, the client keeps its state. */
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 20, SEEK_SET);
        fputc(0x5a, f);
        fputc(0xa5, f);
        fclose(f);
    }
    size_t sec_len = 0;
    uint8_t *sec_before = persisted(e, estuary_security_object_persist, &sec_len);
    before = g_log.count;
    int rc = estuary_persistence_restore_file(e, path);
    CHECK(rc == ESTUARY_ERR_INVALID_ARGUMENT || rc == ESTUARY_ERR_IO);
    CHECK(g_log.count > before);
    size_t sec_len2 = 0;
    uint8_t *sec_after = persisted(e, estuary_security_object_persist, &sec_len2);
    CHECK(sec_before && sec_after && sec_len == sec_len2
          && memcmp(sec_before, sec_after, sec_len) == 0);
    free(sec_before);
    free(sec_after);
    unlink(path);

    /* EST status. */
    estuary_est_status_t st;
    memset(&st, 0xab, sizeof(st));
    CHECK_REFUSED(estuary_est_status_get(NULL, &st), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_est_status_get");
    CHECK(((unsigned char *) &st)[0] == 0xab);
    CHECK_REFUSED(estuary_est_status_get(e, NULL), ESTUARY_ERR_NULL_ARGUMENT,
                  "estuary_est_status_get");
    CHECK_RC(estuary_est_status_get(e, &st), 0);
    CHECK(!st.enrolled && !st.operation_in_progress && st.subject[0] == '\0');

    estuary_stream_delete(mem);
    estuary_delete(e);
}

int main(void) {
    int handler_calls = 0;
    g_log_echo = true;
    estuary_set_log_handler(check_log_capture, &handler_calls);

    check_codes_and_time();
    check_new();
    check_null_handles();

    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = "objects";
    estuary_t *e = estuary_new(&cfg);
    CHECK(e != NULL);
    if (e) {
        check_objects(e);
        estuary_delete(e);
    }
    check_purge();
    check_event_loop();
    check_chain_helpers();
    check_version_and_engine_fields();
    check_poll_api();
    check_streams();
    check_persistence();

    CHECK(handler_calls == g_log.count);
    /* NULL restores the default handler: no more calls to ours. */
    estuary_set_log_handler(NULL, NULL);
    int calls = handler_calls;
    CHECK(estuary_new(NULL) == NULL);
    CHECK(handler_calls == calls);

    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
