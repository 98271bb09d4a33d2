/*
 * examples-c/common: the log handler, the signal set-up, the command line and the
 * credential files the C examples share (see example_common.h for what each one owns).
 */
/* getopt, sigaction under -std=c11. */
#define _POSIX_C_SOURCE 200809L

#include "example_common.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void example_log_handler(estuary_log_level_t level, const char *module,
                         const char *message, void *arg) {
    (void) arg;
    static const char *const names[] = { "TRACE", "DEBUG", "INFO", "WARN",
                                         "ERROR" };
    const char *name = (unsigned) level < 5 ? names[level] : "?";
    fprintf(stderr, "%-5s %s: %s\n", name, module, message);
}

void example_on_stop_signals(void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

uint8_t *example_read_file(const char *path, size_t *out_size, const char **why) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *why = strerror(errno);
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
                *why = "out of memory";
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
        *why = failed ? "read error" : "empty file";
        free(buf);
        return NULL;
    }
    *out_size = size;
    return buf;
}

/* example_read_file(), saying on stderr why it failed. */
static uint8_t *read_credential(const char *path, size_t *out_size) {
    const char *why = NULL;
    uint8_t *data = example_read_file(path, out_size, &why);
    if (!data) {
        fprintf(stderr, "%s: %s\n", path, why);
    }
    return data;
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

static void usage(const char *prog, example_options_t options) {
    if (options == EXAMPLE_NOSEC_ONLY) {
        fprintf(stderr,
                "usage: %s -e ENDPOINT [-u SERVER_URI] [-l LIFETIME] [-h]\n"
                "  -e ENDPOINT    endpoint client name (required)\n"
                "  -u SERVER_URI  LwM2M server URI (default coap://127.0.0.1:5683)\n"
                "  -l LIFETIME    registration lifetime in seconds (default 60)\n"
                "  -h             this help\n",
                prog);
        return;
    }
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

/* Reads the credentials of PSK mode (-i, -k) or Certificate mode (-C, -K, -S) into `args`.
 * Returns -1 when read, 2 (with a message) when not. */
static int load_credentials(example_args_t *args, const char *psk_identity,
                            const char *psk_hex, const char *cert_path,
                            const char *key_path, const char *server_cert_path) {
    if (psk_identity) {
        args->security_mode = ESTUARY_SECURITY_PSK;
        args->identity_size = strlen(psk_identity);
        args->identity = (uint8_t *) malloc(args->identity_size + 1);
        if (args->identity) {
            memcpy(args->identity, psk_identity, args->identity_size + 1);
        }
        args->secret = parse_hex(psk_hex, &args->secret_size);
        if (!args->identity || !args->secret) {
            fprintf(stderr, "invalid PSK key (expected hex): %s\n", psk_hex);
            example_args_free(args);
            return 2;
        }
    } else if (cert_path) {
        args->security_mode = ESTUARY_SECURITY_CERTIFICATE;
        args->identity = read_credential(cert_path, &args->identity_size);
        args->secret = read_credential(key_path, &args->secret_size);
        args->server_cert = read_credential(server_cert_path, &args->server_cert_size);
        if (!args->identity || !args->secret || !args->server_cert) {
            example_args_free(args);
            return 2;
        }
    }
    return -1;
}

int example_args_parse(example_args_t *args, int argc, char **argv,
                       example_options_t options) {
    memset(args, 0, sizeof(*args));
    args->lifetime = 60;
    args->security_mode = ESTUARY_SECURITY_NOSEC;
    const char *psk_identity = NULL, *psk_hex = NULL;
    const char *cert_path = NULL, *key_path = NULL, *server_cert_path = NULL;
    const char *optstring =
            options == EXAMPLE_WITH_SECURITY ? "e:u:bl:i:k:C:K:S:h" : "e:u:l:h";
    int opt;
    while ((opt = getopt(argc, argv, optstring)) != -1) {
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
            args->endpoint = optarg;
            break;
        case 'u':
            args->server_uri = optarg;
            break;
        case 'b':
            args->bootstrap = true;
            break;
        case 'l': {
            char *end = NULL;
            long lifetime = strtol(optarg, &end, 10);
            if (!end || *end || lifetime <= 0 || lifetime > 0x7fffffffL) {
                fprintf(stderr, "invalid lifetime: %s\n", optarg);
                return 2;
            }
            args->lifetime = (int32_t) lifetime;
            break;
        }
        case 'h':
            usage(argv[0], options);
            return 0;
        default:
            usage(argv[0], options);
            return 2;
        }
    }
    if (!args->endpoint) {
        usage(argv[0], options);
        return 2;
    }
    if (!args->server_uri) {
        args->server_uri =
                args->bootstrap ? "coap://127.0.0.1:5693" : "coap://127.0.0.1:5683";
    }
    const bool psk_mode = psk_identity || psk_hex;
    const bool cert_mode = cert_path || key_path || server_cert_path;
    if ((psk_mode && (!psk_identity || !psk_hex))
            || (cert_mode && (!cert_path || !key_path || !server_cert_path))
            || (psk_mode && cert_mode)) {
        fprintf(stderr, "PSK mode needs both -i and -k; Certificate mode needs -C, -K and "
                        "-S; they cannot be combined\n");
        usage(argv[0], options);
        return 2;
    }
    return load_credentials(args, psk_identity, psk_hex, cert_path, key_path,
                            server_cert_path);
}

void example_args_free(example_args_t *args) {
    if (args->secret) {
        memset(args->secret, 0, args->secret_size);
    }
    free(args->identity);
    free(args->secret);
    free(args->server_cert);
    args->identity = args->secret = args->server_cert = NULL;
    args->identity_size = args->secret_size = args->server_cert_size = 0;
}

estuary_security_instance_t example_security_instance(const example_args_t *args) {
    const estuary_security_instance_t security = {
        .ssid = 1,
        .server_uri = args->server_uri,
        .bootstrap_server = args->bootstrap,
        .security_mode = args->security_mode,
        .client_holdoff_s = -1,
        .bootstrap_timeout_s = -1,
        .public_cert_or_psk_identity = args->identity,
        .public_cert_or_psk_identity_size = args->identity_size,
        .private_cert_or_psk_key = args->secret,
        .private_cert_or_psk_key_size = args->secret_size,
        .server_public_key = args->server_cert,
        .server_public_key_size = args->server_cert_size,
        /* certificate_usage NULL: 3, the server must present exactly SERVERCERT. */
    };
    return security;
}

estuary_server_instance_t example_server_instance(const example_args_t *args) {
    const estuary_server_instance_t server = {
        .ssid = 1,
        .lifetime = args->lifetime,
        .default_min_period = -1,
        .default_max_period = -1,
        .disable_timeout = -1,
        .binding = "U",
    };
    return server;
}
