/*
 * The CF-EST example's configuration blocks (seeds/004, sections 10.3.3.3 and 10.3.3.4),
 * written out with only the anjay_/ANJAY_ and avs_/AVS_ prefixes changed to estuary_/ESTUARY_:
 * they must compile against include/estuary.h with -Wall -Wextra -Werror, and behave:
 *   - the software block makes a client when the trust store file exists, and fails cleanly
 *     (NULL, a log line naming the file) when it does not;
 *   - the hardware-engine block is refused with a log line saying engines are not in this
 *     build.
 * Prints "N checks, M failed" and exits 0 only if nothing failed.
 *
 *   seed_config ENDPOINT_NAME
 */
#include <estuary.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static estuary_t *g_estuary;

/* Section 10.3.3.3: the sample non-default EST configuration, in software. */
static estuary_t *new_from_seed_block(char **argv) {
    const estuary_configuration_t CONFIG = {
        .endpoint_name = argv[1],
        .in_buffer_size = 4000,
        .out_buffer_size = 4000,
        .msg_cache_size = 4000,

        .trust_store_certs = estuary_crypto_certificate_chain_info_from_file(
                "/etc/ssl/certs/ca-certificates.crt"),
        .est_reenroll_config = &(const estuary_est_reenroll_config_t) {
            .enable = true,
            .nominal_usage = 0.8,
            .max_margin = estuary_time_duration_from_scalar(7, ESTUARY_TIME_DAY)
        },
        .est_cacerts_policy = ESTUARY_EST_CACERTS_FOR_EST_SECURITY
    };

    g_estuary = estuary_new(&CONFIG);
    return g_estuary;
}

/* Section 10.3.3.4: the address generator of the hardware-engine variant. */
static const char *est_crts_address_gen(void *arg,
                                        const void *x509_der_data,
                                        size_t x509_der_data_size) {
    (void) x509_der_data;
    (void) x509_der_data_size;

    char *buf = (char *) arg;
    sprintf(buf, "pkcs11:token=MyToken;object=CaCert%d;pin-value=1234", rand());
    return buf;
}

/* Section 10.3.3.4: the same configuration with PKCS#11 engine addresses. */
static estuary_t *new_from_seed_hsm_block(char **argv) {
    char EST_CACERTS_ADDRESS_BUF[256];

    srand(time(NULL));

    const estuary_configuration_t CONFIG = {
        .endpoint_name = argv[1],
        .in_buffer_size = 4000,
        .out_buffer_size = 4000,
        .msg_cache_size = 4000,

        .trust_store_certs = estuary_crypto_certificate_chain_info_from_file(
                "/etc/ssl/certs/ca-certificates.crt"),
        .est_reenroll_config = &(const estuary_est_reenroll_config_t) {
            .enable = true,
            .nominal_usage = 0.8,
            .max_margin = estuary_time_duration_from_scalar(7, ESTUARY_TIME_DAY)
        },
        .est_cacerts_policy = ESTUARY_EST_CACERTS_FOR_EST_SECURITY,

        .est_engine_key_address =
                "pkcs11:token=MyToken;object=EstClientKey;pin-value=1234",
        .est_engine_cert_address =
                "pkcs11:token=MyToken;object=EstClientCert;pin-value=1234",
        .est_engine_cacerts_address_gen_cb = est_crts_address_gen,
        .est_engine_cacerts_address_gen_cb_arg = EST_CACERTS_ADDRESS_BUF
    };

    g_estuary = estuary_new(&CONFIG);
    return g_estuary;
}

/* The software block with a trust store file that does not exist. */
static estuary_t *new_with_missing_trust_store(char **argv) {
    const estuary_configuration_t CONFIG = {
        .endpoint_name = argv[1],
        .trust_store_certs = estuary_crypto_certificate_chain_info_from_file(
                "/nonexistent/estuary-seed/ca-certificates.crt"),
        .est_cacerts_policy = ESTUARY_EST_CACERTS_FOR_EST_SECURITY
    };
    return estuary_new(&CONFIG);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s ENDPOINT_NAME\n", argv[0]);
        return 2;
    }
    /* The log lines of the current check (g_log.text) hold the reason of a refusal. */
    estuary_set_log_handler(check_log_capture, NULL);

    /* The seed's block, as it is. */
    g_log.text[0] = '\0';
    const bool have_bundle = access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0;
    estuary_t *e = new_from_seed_block(argv);
    if (have_bundle) {
        CHECK(e != NULL);
        if (!e) {
            printf("estuary_new refused the seed's configuration:\n%s", g_log.text);
        }
    } else {
        CHECK(e == NULL);
        CHECK(strstr(g_log.text, "ca-certificates.crt") != NULL);
    }
    estuary_delete(e);
    g_estuary = NULL;

    /* A missing trust store file: NULL and a log line naming the file. */
    g_log.text[0] = '\0';
    e = new_with_missing_trust_store(argv);
    CHECK(e == NULL);
    CHECK(strstr(g_log.text, "/nonexistent/estuary-seed/ca-certificates.crt") != NULL);
    estuary_delete(e);

    /* The hardware-engine block: refused, saying why. */
    g_log.text[0] = '\0';
    e = new_from_seed_hsm_block(argv);
    CHECK(e == NULL);
    CHECK(strstr(g_log.text, "engines are not in this build") != NULL);
    CHECK(strstr(g_log.text, "est_engine_key_address") != NULL);
    estuary_delete(e);
    g_estuary = NULL;

    printf("seed_config: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
