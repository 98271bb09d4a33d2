/*
 * 01-basic: the smallest Estuary client. Registers with one LwM2M server over plain CoAP,
 * serves Reads of the Device object, and de-registers on SIGINT/SIGTERM.
 *
 *   01-basic -e ENDPOINT [-u coap://127.0.0.1:5683] [-l LIFETIME]
 */
#include <estuary.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static estuary_t *g_estuary;

static void on_signal(int sig) {
    (void) sig;
    if (g_estuary) {
        estuary_event_loop_interrupt(g_estuary);
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
            "usage: %s -e ENDPOINT [-u SERVER_URI] [-l LIFETIME] [-h]\n"
            "  -e ENDPOINT    endpoint client name (required)\n"
            "  -u SERVER_URI  LwM2M server URI (default coap://127.0.0.1:5683)\n"
            "  -l LIFETIME    registration lifetime in seconds (default 60)\n"
            "  -h             this help\n",
            prog);
}

int main(int argc, char **argv) {
    const char *endpoint = NULL;
    const char *uri = "coap://127.0.0.1:5683";
    long lifetime = 60;
    int opt;
    while ((opt = getopt(argc, argv, "e:u:l:h")) != -1) {
        switch (opt) {
        case 'e':
            endpoint = optarg;
            break;
        case 'u':
            uri = optarg;
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
        return 1;
    }

    int result = 1;
    const estuary_security_instance_t security = {
        .ssid = 1,
        .server_uri = uri,
        .bootstrap_server = false,
        .security_mode = ESTUARY_SECURITY_NOSEC,
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
        .model_number = "01-basic",
        .serial_number = "0001",
        .firmware_version = "1.0.0",
    };
    estuary_iid_t security_iid = ESTUARY_ID_INVALID;
    estuary_iid_t server_iid = ESTUARY_ID_INVALID;
    if (estuary_security_object_install(g_estuary)
            || estuary_security_object_add_instance(g_estuary, &security,
                                                    &security_iid)
            || estuary_server_object_install(g_estuary)
            || estuary_server_object_add_instance(g_estuary, &server,
                                                  &server_iid)
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

    if (estuary_event_loop_run(g_estuary,
                               estuary_time_duration_from_scalar(
                                       1, ESTUARY_TIME_S))) {
        fprintf(stderr, "event loop failed\n");
        goto finish;
    }
    result = 0;

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
