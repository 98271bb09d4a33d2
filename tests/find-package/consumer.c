/* Links against an installed Estuary and checks a few calls behave as documented. */
#include <estuary.h>

#include <stdio.h>

int main(void) {
    /* No configuration: refused with NULL, never a crash. */
    if (estuary_new(NULL) != NULL) {
        fprintf(stderr, "estuary_new(NULL) should fail\n");
        return 1;
    }
    const estuary_configuration_t config = { .endpoint_name = "consumer" };
    estuary_t *estuary = estuary_new(&config);
    if (!estuary) {
        fprintf(stderr, "estuary_new failed\n");
        return 1;
    }
    int rc = estuary_security_object_install(estuary);
    estuary_delete(estuary);
    if (rc != 0) {
        fprintf(stderr, "estuary_security_object_install: %d\n", rc);
        return 1;
    }
    printf("consumer linked against the installed Estuary: OK\n");
    return 0;
}
