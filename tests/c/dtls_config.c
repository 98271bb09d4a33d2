/*
 * The DTLS parts of the C API, checked from C: trust_store_certs from the
 * estuary_certificate_chain_info_from_{file,path,buffer} helpers (read by estuary_new(),
 * a bad source refuses the configuration), udp_dtls_hs_tx_params, and the Security
 * instance's PSK / certificate fields, server_name_indication and certificate_usage. A
 * zero-initialised configuration keeps its defaults.
 *
 * Built with -Wall -Wextra -Werror and run by tests/c_api_dtls.rs with two arguments: a PEM
 * file holding one CA certificate, and the directory it is in. Exits 0 when every check
 * passes.
 */
#include <estuary.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static estuary_t *make(const estuary_configuration_t *cfg) {
    return estuary_new(cfg);
}

static char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    static char buf[16384];
    *size = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CA_PEM_FILE CA_DIR\n", argv[0]);
        return 2;
    }
    estuary_set_log_handler(check_log_quiet, NULL);

    /* Defaults: zeroed DTLS fields. */
    const estuary_configuration_t plain = { .endpoint_name = "dtls-c" };
    estuary_t *e = make(&plain);
    CHECK(e != NULL);
    estuary_delete(e);

    /* Trust store from a file, a directory and a buffer. */
    size_t pem_size = 0;
    const char *pem = slurp(argv[1], &pem_size);
    CHECK(pem != NULL && pem_size > 0);
    const estuary_certificate_chain_info_t sources[] = {
        estuary_certificate_chain_info_from_file(argv[1]),
        estuary_certificate_chain_info_from_path(argv[2]),
        estuary_certificate_chain_info_from_buffer(pem, pem_size),
    };
    for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++) {
        const estuary_configuration_t cfg = {
            .endpoint_name = "dtls-c",
            .trust_store_certs = sources[i],
        };
        e = make(&cfg);
        CHECK(e != NULL);
        estuary_delete(e);
    }
    CHECK(sources[0].source == ESTUARY_CHAIN_SOURCE_FILE);
    CHECK(sources[1].source == ESTUARY_CHAIN_SOURCE_PATH);
    CHECK(sources[2].source == ESTUARY_CHAIN_SOURCE_BUFFER);

    /* A trust store that cannot be read refuses the configuration. */
    const estuary_configuration_t missing = {
        .endpoint_name = "dtls-c",
        .trust_store_certs = estuary_certificate_chain_info_from_file(
                "/nonexistent/estuary-trust.pem"),
    };
    CHECK(make(&missing) == NULL);
    const estuary_configuration_t junk = {
        .endpoint_name = "dtls-c",
        .trust_store_certs = estuary_certificate_chain_info_from_buffer("junk", 4),
    };
    CHECK(make(&junk) == NULL);
    CHECK(estuary_certificate_chain_info_from_file(NULL).source
          == ESTUARY_CHAIN_SOURCE_EMPTY);

    /* Handshake timers: taken as given, checked. */
    const estuary_dtls_handshake_timeouts_t good = {
        .min = estuary_time_duration_from_scalar(2, ESTUARY_TIME_S),
        .max = estuary_time_duration_from_scalar(30, ESTUARY_TIME_S),
    };
    const estuary_dtls_handshake_timeouts_t inverted = {
        .min = estuary_time_duration_from_scalar(30, ESTUARY_TIME_S),
        .max = estuary_time_duration_from_scalar(2, ESTUARY_TIME_S),
    };
    const estuary_configuration_t timed = {
        .endpoint_name = "dtls-c",
        .udp_dtls_hs_tx_params = &good,
    };
    e = make(&timed);
    CHECK(e != NULL);
    const estuary_configuration_t bad_timers = {
        .endpoint_name = "dtls-c",
        .udp_dtls_hs_tx_params = &inverted,
    };
    CHECK(make(&bad_timers) == NULL);

    /* Security instances with DTLS fields. */
    CHECK(estuary_security_object_install(e) == 0);
    const uint8_t usage2 = 2, usage9 = 9;
    estuary_security_instance_t psk = {
        .ssid = 1,
        .server_uri = "coaps://127.0.0.1:5684",
        .security_mode = ESTUARY_SECURITY_PSK,
        .client_holdoff_s = -1,
        .bootstrap_timeout_s = -1,
        .public_cert_or_psk_identity = (const uint8_t *) "dtls-c",
        .public_cert_or_psk_identity_size = 6,
        .private_cert_or_psk_key = (const uint8_t *) "0123456789abcdef",
        .private_cert_or_psk_key_size = 16,
        .server_name_indication = "lwm2m.example.com",
    };
    estuary_iid_t iid = ESTUARY_ID_INVALID;
    CHECK(estuary_security_object_add_instance(e, &psk, &iid) == 0);
    CHECK(iid == 0);

    estuary_security_instance_t cert = psk;
    cert.ssid = 2;
    cert.security_mode = ESTUARY_SECURITY_CERTIFICATE;
    cert.server_public_key = (const uint8_t *) pem;
    cert.server_public_key_size = pem_size;
    cert.certificate_usage = &usage2;
    iid = ESTUARY_ID_INVALID;
    CHECK(estuary_security_object_add_instance(e, &cert, &iid) == 0);
    CHECK(iid == 1);

    estuary_security_instance_t bad_usage = cert;
    bad_usage.ssid = 3;
    bad_usage.certificate_usage = &usage9;
    iid = ESTUARY_ID_INVALID;
    CHECK(estuary_security_object_add_instance(e, &bad_usage, &iid)
          == ESTUARY_ERR_INVALID_ARGUMENT);
    CHECK(iid == ESTUARY_ID_INVALID);

    estuary_security_instance_t rpk = psk;
    rpk.ssid = 4;
    rpk.security_mode = ESTUARY_SECURITY_RPK;
    CHECK(estuary_security_object_add_instance(e, &rpk, &iid)
          == ESTUARY_ERR_NOT_SUPPORTED);
    estuary_delete(e);

    printf("%d checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
