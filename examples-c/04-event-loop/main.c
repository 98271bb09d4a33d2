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

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "../common/example_common.h"

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

int main(int argc, char **argv) {
    /* The command line (-e -u -b -l, -i -k or -C -K -S) and the credentials it names, read
     * before anything else so a bad file fails early: examples-c/common. */
    example_args_t args;
    int exit_code = example_args_parse(&args, argc, argv, EXAMPLE_WITH_SECURITY);
    if (exit_code >= 0) {
        return exit_code;
    }

    if (pipe(g_signal_pipe)) {
        perror("pipe");
        example_args_free(&args);
        return 1;
    }
    fcntl(g_signal_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(g_signal_pipe[1], F_SETFL, O_NONBLOCK);

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
    /* The objects of 01-basic: Security and Server instances from the command line. */
    const estuary_security_instance_t security = example_security_instance(&args);
    const estuary_server_instance_t server = example_server_instance(&args);
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
            || (!args.bootstrap
                && estuary_server_object_add_instance(g_estuary, &server,
                                                      &server_iid))
            || estuary_device_object_install(g_estuary, &device)) {
        fprintf(stderr, "could not install the objects\n");
        goto finish;
    }

    example_on_stop_signals(on_signal);

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
    /* The Security object keeps its own copies of the credentials; wipe ours. */
    example_args_free(&args);
    return result;
}
