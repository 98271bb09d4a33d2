/*
 * 01-basic: the smallest Estuary client. Registers with one LwM2M server over plain CoAP,
 * or over DTLS with a pre-shared key or certificates, serves Reads of the Device object,
 * and de-registers on SIGINT/SIGTERM.
 *
 *   01-basic -e ENDPOINT [-u coap://127.0.0.1:5683] [-l LIFETIME]
 *   01-basic -e ENDPOINT -u coaps://127.0.0.1:5684 -i IDENTITY -k HEXKEY
 *   01-basic -e ENDPOINT -u coaps://127.0.0.1:5684 -C CERT -K KEY -S SERVERCERT
 */
#include <estuary.h>

#include <stdio.h>

#include "../common/example_common.h"

static estuary_t *g_estuary;

static void on_signal(int sig) {
    (void) sig;
    if (g_estuary) {
        estuary_event_loop_interrupt(g_estuary);
    }
}

int main(int argc, char **argv) {
    /* The command line (-e -u -b -l, -i -k or -C -K -S) and the credentials it names, read
     * before anything else so a bad file fails early: examples-c/common. */
    example_args_t args;
    int exit_code = example_args_parse(&args, argc, argv, EXAMPLE_WITH_SECURITY);
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
        example_args_free(&args);
        return 1;
    }

    int result = 1;
    /* SSID 1: the server of -u (a Bootstrap-Server with -b) in NoSec, PSK or Certificate
     * mode, and its Server instance with the lifetime of -l. */
    const estuary_security_instance_t security = example_security_instance(&args);
    const estuary_server_instance_t server = example_server_instance(&args);
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
            /* With -b, the Bootstrap-Server writes the Server instance. */
            || (!args.bootstrap
                && estuary_server_object_add_instance(g_estuary, &server,
                                                      &server_iid))
            || estuary_device_object_install(g_estuary, &device)) {
        fprintf(stderr, "could not install the objects\n");
        goto finish;
    }

    example_on_stop_signals(on_signal);

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
    /* The Security object keeps its own copies of the credentials; wipe ours. */
    example_args_free(&args);
    return result;
}
