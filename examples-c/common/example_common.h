/*
 * examples-c/common: the plumbing the C examples share, so that each example's main.c
 * shows its Estuary calls and little else. It owns:
 *   - the log handler that prints Estuary's log lines on stderr;
 *   - installing a SIGINT/SIGTERM handler;
 *   - the command line of 01-basic and 04-event-loop (-e -u -b -l -i -k -C -K -S -h) and
 *     its NoSec subset for 02-custom-object (-e -u -l -h), with the usage text;
 *   - reading the credentials those options name: a PSK in hex, certificate and key files
 *     (PEM or DER), read whole;
 *   - the Security and Server instances (SSID 1) that the command line describes.
 * It makes no Estuary calls of its own: creating the client, installing the objects and
 * running the loop stay in each main.c.
 *
 * Each example's CMakeLists.txt compiles example_common.c with its main.c.
 */
#ifndef ESTUARY_EXAMPLE_COMMON_H
#define ESTUARY_EXAMPLE_COMMON_H

#include <estuary.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An estuary_log_handler_t: "LEVEL module: message" on stderr. */
void example_log_handler(estuary_log_level_t level, const char *module,
                         const char *message, void *arg);

/* Calls `handler` on SIGINT and SIGTERM (sigaction, no SA_RESTART). */
void example_on_stop_signals(void (*handler)(int));

/* Reads a whole file into a malloc'd buffer. NULL on failure, with the reason in `*why`
 * ("out of memory", "read error", "empty file" or the strerror of fopen). */
uint8_t *example_read_file(const char *path, size_t *out_size, const char **why);

/* Which options the command line takes. */
typedef enum {
    EXAMPLE_NOSEC_ONLY,    /* -e -u -l -h */
    EXAMPLE_WITH_SECURITY, /* also -b, -i -k (PSK mode), -C -K -S (Certificate mode) */
} example_options_t;

/* The command line, and the credentials it names (malloc'd; example_args_free()). */
typedef struct {
    const char *endpoint;   /* -e, required */
    const char *server_uri; /* -u; default coap://127.0.0.1:5683, or :5693 with -b */
    bool bootstrap;         /* -b: server_uri is a Bootstrap-Server */
    int32_t lifetime;       /* -l; default 60 */
    int32_t security_mode;  /* ESTUARY_SECURITY_NOSEC, _PSK or _CERTIFICATE */
    uint8_t *identity;      /* PSK identity (-i) or our certificate (-C) */
    size_t identity_size;
    uint8_t *secret;        /* PSK key (-k, from hex) or our private key (-K) */
    size_t secret_size;
    uint8_t *server_cert;   /* the server's certificate (-S) */
    size_t server_cert_size;
} example_args_t;

/* Parses the command line into `args` and reads the credentials, so that a bad file fails
 * before anything else. Returns -1 when main() goes on; otherwise the exit code main()
 * returns: 0 after -h, 2 for a bad command line or credential (with a message). */
int example_args_parse(example_args_t *args, int argc, char **argv,
                       example_options_t options);

/* Wipes the key and frees the credentials (the Security object keeps its own copies). */
void example_args_free(example_args_t *args);

/* The Security instance, SSID 1, for the command line's server: its URI, -b, the mode and
 * credentials; with -S the server must present exactly that certificate (usage 3). The
 * pointers are the ones in `args`. */
estuary_security_instance_t example_security_instance(const example_args_t *args);

/* The Server instance, SSID 1: -l as the lifetime, the default periods, binding "U". */
estuary_server_instance_t example_server_instance(const example_args_t *args);

#endif /* ESTUARY_EXAMPLE_COMMON_H */
