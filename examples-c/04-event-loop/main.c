/*
 * 04-event-loop: an Estuary client driven by the firmware's own poll() loop instead of
 * estuary_event_loop_run(). Each iteration asks Estuary for its sockets
 * (estuary_get_sockets), adds the firmware's own descriptors (here a self-pipe that the
 * SIGINT/SIGTERM handler writes to), sleeps in poll() for at most
 * estuary_sched_calculate_wait_time_ms(), hands each readable Estuary socket to
 * estuary_serve(), and runs what is due with estuary_sched_run(). Same options as 01-basic:
 * registers with one LwM2M server over plain CoAP, or over DTLS with a pre-shared key or
 * certificates, serves Reads of the Device object, and de-registers on SIGINT/SIGTERM.
 *
 *   04-event-loop -e ENDPOINT [-u coap://127.0.0.1:5683] [-l LIFETIME]
 *   04-event-loop -e ENDPOINT -u coaps://127.0.0.1:5684 -i IDENTITY -k HEXKEY
 *   04-event-loop -e ENDPOINT -u coaps://127.0.0.1:5684 -C CERT -K KEY -S SERVERCERT
 */
#include <estuary.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static estuary_t *g_estuary;

/* The self-pipe: the signal handler writes one byte, the loop polls the read end. */
static int g_signal_pipe[2] = { -1, -1 };

static void on_signal(int sig) {
    (void) sig;
    int saved = errno;
    const char byte = 1;
    /* write() is async-signal-safe; a full pipe already holds a wake-up. */
    if (write(g_signal_pipe[1], &byte, 1) < 0) {
    }
    errno = saved;
}

/* At most this many Estuary sockets are polled; the loop grows nothing at run time. */
#define MAX_SOCKETS 8
/* The longest sleep even when Estuary has nothing scheduled. */
#define MAX_WAIT_MS 1000

/* The firmware's main loop: returns 0 when a signal asked it to stop, 1 on an error. */
static int run_loop(estuary_t *estuary) {
    for (;;) {
        int socks[MAX_SOCKETS];
        size_t count = MAX_SOCKETS;
        int rc = estuary_get_sockets(estuary, socks, &count);
        if (rc) {
            fprintf(stderr, "estuary_get_sockets: %s\n", estuary_error_name(rc));
            return 1;
        }
        struct pollfd fds[MAX_SOCKETS + 1];
        fds[0].fd = g_signal_pipe[0];
        fds[0].events = POLLIN;
        fds[0].revents = 0;
        for (size_t i = 0; i < count; i++) {
            fds[i + 1].fd = socks[i];
            fds[i + 1].events = POLLIN;
            fds[i + 1].revents = 0;
        }
        int64_t wait_ms = estuary_sched_calculate_wait_time_ms(estuary, MAX_WAIT_MS);
        if (wait_ms < 0) {
            fprintf(stderr, "estuary_sched_calculate_wait_time_ms: %s\n",
                    estuary_error_name((int) wait_ms));
            return 1;
        }
        int ready = poll(fds, (nfds_t) (count + 1), (int) wait_ms);
        if (ready < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        if (ready > 0 && (fds[0].revents & POLLIN)) {
            return 0;
        }
        for (size_t i = 0; ready > 0 && i < count; i++) {
            if (fds[i + 1].revents & (POLLIN | POLLERR)) {
                rc = estuary_serve(estuary, fds[i + 1].fd);
                if (rc) {
                    /* Logged by Estuary; a socket closed meanwhile is not fatal. */
                    fprintf(stderr, "estuary_serve: %s\n", estuary_error_name(rc));
                }
            }
        }
        rc = estuary_sched_run(estuary);
        if (rc) {
            fprintf(stderr, "estuary_sched_run: %s\n", estuary_error_name(rc));
            return 1;
        }
    }
}

static void log_handler(estuary_log_level_t level, const char *module,
                        const char *message, void *arg) {
    (void) arg;
    static const char *const names[] = { "TRACE", "DEBUG", "INFO", "WARN",
                                         "ERROR" };
    const char *name = (unsigned) level < 5 ? names[level] : "?";
    fprintf(stderr, "%-5s %s: %s\n", name, module, message);
}

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s -e ENDPOINT [-u SERVER_URI] [-b] [-l LIFETIME]\n"
            "          [-i PSK_IDENTITY -k PSK_HEX_KEY | -C CERT -K KEY -S SERVER_CERT] [-h]\n"
            "  -e ENDPOINT    endpoint client name (required)\n"
            "  -u SERVER_URI  LwM2M server URI (default coap://127.0.0.1:5683;\n"
            "                 coaps://... with -i/-k or -C/-K/-S)\n"
            "  -b             SERVER_URI is a Bootstrap-Server: the management account\n"
            "                 comes from it (default port 5693, coaps 5694)\n"
            "  -l LIFETIME    registration lifetime in seconds (default 60; with -b\n"
            "                 the Bootstrap-Server decides)\n"
            "  -i IDENTITY    PSK mode: the PSK identity\n"
            "  -k HEXKEY      PSK mode: the key, in hex\n"
            "  -C CERT        Certificate mode: our certificate file (PEM or DER)\n"
            "  -K KEY         Certificate mode: our private key file (PEM or DER)\n"
            "  -S SERVERCERT  Certificate mode: the server's certificate file (PEM or DER)\n"
            "  -h             this help\n",
            prog);
}

/* Reads a whole file into a malloc'd buffer; NULL (and a message) on failure. */
static uint8_t *read_file(const char *path, size_t *out_size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    uint8_t *buf = NULL;
    size_t size = 0, cap = 0;
    for (;;) {
        if (size == cap) {
            cap = cap ? 2 * cap : 4096;
            uint8_t *bigger = (uint8_t *) realloc(buf, cap);
            if (!bigger) {
                free(buf);
                fclose(f);
                fprintf(stderr, "%s: out of memory\n", path);
                return NULL;
            }
            buf = bigger;
        }
        size_t n = fread(buf + size, 1, cap - size, f);
        size += n;
        if (n == 0) {
            break;
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (failed || size == 0) {
        fprintf(stderr, "%s: %s\n", path, failed ? "read error" : "empty file");
        free(buf);
        return NULL;
    }
    *out_size = size;
    return buf;
}

/* Decodes hex text into a malloc'd buffer; NULL on bad input. */
static uint8_t *parse_hex(const char *hex, size_t *out_size) {
    size_t len = strlen(hex);
    if (len == 0 || len % 2) {
        return NULL;
    }
    uint8_t *buf = (uint8_t *) malloc(len / 2);
    if (!buf) {
        return NULL;
    }
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        char pair[3] = { hex[2 * i], hex[2 * i + 1], 0 };
        char *end = NULL;
        v = (unsigned) strtoul(pair, &end, 16);
        if (!end || *end || !isxdigit((unsigned char) pair[0])
                || !isxdigit((unsigned char) pair[1])) {
            free(buf);
            return NULL;
        }
        buf[i] = (uint8_t) v;
    }
    *out_size = len / 2;
    return buf;
}

int main(int argc, char **argv) {
    const char *endpoint = NULL;
    const char *uri = NULL;
    bool bootstrap = false;
    long lifetime = 60;
    const char *psk_identity = NULL, *psk_hex = NULL;
    const char *cert_path = NULL, *key_path = NULL, *server_cert_path = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "e:u:bl:i:k:C:K:S:h")) != -1) {
        switch (opt) {
        case 'i':
            psk_identity = optarg;
            break;
        case 'k':
            psk_hex = optarg;
            break;
        case 'C':
            cert_path = optarg;
            break;
        case 'K':
            key_path = optarg;
            break;
        case 'S':
            server_cert_path = optarg;
            break;
        case 'e':
            endpoint = optarg;
            break;
        case 'u':
            uri = optarg;
            break;
        case 'b':
            bootstrap = true;
            break;
        case 'l': {
            char *end = NULL;
            lifetime = strtol(optarg, &end, 10);
            if (!end || *end || lifetime <= 0 || lifetime > 0x7fffffffL) {
                fprintf(stderr, "invalid lifetime: %s\n", optarg);
                return 2;
            }
            break;
        }
        case 'h':
            usage(argv[0]);
            return 0;
        default:
            usage(argv[0]);
            return 2;
        }
    }
    if (!endpoint) {
        usage(argv[0]);
        return 2;
    }
    if (!uri) {
        uri = bootstrap ? "coap://127.0.0.1:5693" : "coap://127.0.0.1:5683";
    }
    const bool psk_mode = psk_identity || psk_hex;
    const bool cert_mode = cert_path || key_path || server_cert_path;
    if ((psk_mode && (!psk_identity || !psk_hex))
            || (cert_mode && (!cert_path || !key_path || !server_cert_path))
            || (psk_mode && cert_mode)) {
        fprintf(stderr, "PSK mode needs both -i and -k; Certificate mode needs -C, -K and "
                        "-S; they cannot be combined\n");
        usage(argv[0]);
        return 2;
    }
    /* Credentials are read before anything else, so a bad file fails early. */
    uint8_t *identity = NULL, *secret = NULL, *server_cert = NULL;
    size_t identity_size = 0, secret_size = 0, server_cert_size = 0;
    int32_t mode = ESTUARY_SECURITY_NOSEC;
    if (psk_mode) {
        mode = ESTUARY_SECURITY_PSK;
        identity_size = strlen(psk_identity);
        identity = (uint8_t *) malloc(identity_size + 1);
        if (identity) {
            memcpy(identity, psk_identity, identity_size + 1);
        }
        secret = parse_hex(psk_hex, &secret_size);
        if (!identity || !secret) {
            fprintf(stderr, "invalid PSK key (expected hex): %s\n", psk_hex);
            free(identity);
            free(secret);
            return 2;
        }
    } else if (cert_mode) {
        mode = ESTUARY_SECURITY_CERTIFICATE;
        identity = read_file(cert_path, &identity_size);
        secret = read_file(key_path, &secret_size);
        server_cert = read_file(server_cert_path, &server_cert_size);
        if (!identity || !secret || !server_cert) {
            free(identity);
            free(secret);
            free(server_cert);
            return 2;
        }
    }

    if (pipe(g_signal_pipe)) {
        perror("pipe");
        free(identity);
        free(secret);
        free(server_cert);
        return 1;
    }
    fcntl(g_signal_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(g_signal_pipe[1], F_SETFL, O_NONBLOCK);

    estuary_set_log_handler(log_handler, NULL);
    estuary_set_log_level(ESTUARY_LOG_INFO);

    const estuary_configuration_t config = {
        .endpoint_name = endpoint,
        .in_buffer_size = 4000,
        .out_buffer_size = 4000,
        .msg_cache_size = 4000,
    };
    g_estuary = estuary_new(&config);
    if (!g_estuary) {
        fprintf(stderr, "could not create the client\n");
        free(identity);
        free(secret);
        free(server_cert);
        return 1;
    }

    int result = 1;
    const estuary_security_instance_t security = {
        .ssid = 1,
        .server_uri = uri,
        .bootstrap_server = bootstrap,
        .security_mode = mode,
        .client_holdoff_s = -1,
        .bootstrap_timeout_s = -1,
        .public_cert_or_psk_identity = identity,
        .public_cert_or_psk_identity_size = identity_size,
        .private_cert_or_psk_key = secret,
        .private_cert_or_psk_key_size = secret_size,
        .server_public_key = server_cert,
        .server_public_key_size = server_cert_size,
        /* certificate_usage NULL: 3, the server must present exactly SERVERCERT. */
    };
    const estuary_server_instance_t server = {
        .ssid = 1,
        .lifetime = (int32_t) lifetime,
        .default_min_period = -1,
        .default_max_period = -1,
        .disable_timeout = -1,
        .binding = "U",
    };
    const estuary_device_object_config_t device = {
        .manufacturer = "Estuary Labs",
        .model_number = "04-event-loop",
        .serial_number = "0001",
        .firmware_version = "1.0.0",
    };
    estuary_iid_t security_iid = ESTUARY_ID_INVALID;
    estuary_iid_t server_iid = ESTUARY_ID_INVALID;
    if (estuary_security_object_install(g_estuary)
            || estuary_security_object_add_instance(g_estuary, &security,
                                                    &security_iid)
            || estuary_server_object_install(g_estuary)
            /* With -b, the Bootstrap-Server writes the Server instance. */
            || (!bootstrap
                && estuary_server_object_add_instance(g_estuary, &server,
                                                      &server_iid))
            || estuary_device_object_install(g_estuary, &device)) {
        fprintf(stderr, "could not install the objects\n");
        goto finish;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (run_loop(g_estuary)) {
        fprintf(stderr, "event loop failed\n");
        goto finish;
    }
    result = 0;

finish:
    /* De-registers from the server (bounded wait) and frees everything. */
    estuary_delete(g_estuary);
    g_estuary = NULL;
    close(g_signal_pipe[0]);
    close(g_signal_pipe[1]);
    /* The Security object keeps its own copies; wipe ours. */
    if (secret) {
        memset(secret, 0, secret_size);
    }
    free(identity);
    free(secret);
    free(server_cert);
    return result;
}
