/*
 * Persistence and the EST status from C (tests/c_api.rs runs it):
 *
 *   persist STATE_FILE WORK_DIR
 *
 * STATE_FILE holds the four parts (Security, Server, attribute storage, EST state) of an
 * enrolled client, written by the Rust side. Checked here: the file helpers (missing file,
 * restore, save with mode 0600 also over a file that was 0644), the per-part calls in the
 * seed's order over memory, file and callback streams (each reproducing the file byte for
 * byte), a flash callback that fills up mid-write, truncated and corrupted parts refused
 * with the client unchanged, the *_is_modified calls, the EST status, and NULL arguments.
 *
 * Exits 0 when every check passed; prints "N checks, M failed".
 */
#include <estuary.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"

typedef struct {
    unsigned char *data;
    size_t len;
} bytes_t;

static bytes_t read_file(const char *path) {
    bytes_t b = { NULL, 0 };
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    unsigned char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        b.data = realloc(b.data, b.len + n);
        memcpy(b.data + b.len, chunk, n);
        b.len += n;
    }
    fclose(f);
    return b;
}

static bool same(bytes_t a, const unsigned char *data, size_t len) {
    return a.len == len && memcmp(a.data, data, len) == 0;
}

static estuary_t *new_client(const char *name) {
    estuary_configuration_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.endpoint_name = name;
    cfg.prng_seed = 7;
    estuary_t *e = estuary_new(&cfg);
    if (!e) {
        fprintf(stderr, "estuary_new failed\n");
        exit(2);
    }
    return e;
}

/* The seed's persist and restore sequences. */
static int persist_all(estuary_t *e, estuary_stream_t *s) {
    int rc;
    if ((rc = estuary_security_object_persist(e, s))
            || (rc = estuary_server_object_persist(e, s))
            || (rc = estuary_attr_storage_persist(e, s))
            || (rc = estuary_est_state_persist(e, s))) {
        return rc;
    }
    return 0;
}

static int restore_all(estuary_t *e, estuary_stream_t *s) {
    int rc;
    if ((rc = estuary_security_object_restore(e, s))
            || (rc = estuary_server_object_restore(e, s))
            || (rc = estuary_attr_storage_restore(e, s))
            || (rc = estuary_est_state_restore(e, s))) {
        return rc;
    }
    return 0;
}

/* A flash region of `cap` bytes behind callbacks. */
typedef struct {
    unsigned char buf[8192];
    size_t cap;
    size_t len;
    size_t pos;
} flash_t;

static int flash_write(void *arg, const uint8_t *data, size_t size) {
    flash_t *f = (flash_t *) arg;
    size_t room = f->cap - f->len;
    size_t n = size < room ? size : room;
    memcpy(f->buf + f->len, data, n);
    f->len += n;
    return n < size ? -28 : 0;
}

static ptrdiff_t flash_read(void *arg, uint8_t *buf, size_t size) {
    flash_t *f = (flash_t *) arg;
    size_t n = f->len - f->pos;
    if (n > size) {
        n = size;
    }
    if (n > 100) {
        n = 100; /* a driver with small pages */
    }
    memcpy(buf, f->buf + f->pos, n);
    f->pos += n;
    return (ptrdiff_t) n;
}

/* What `e` holds now, as bytes (through a memory stream). */
static bytes_t snapshot(estuary_t *e) {
    estuary_stream_t *s = estuary_stream_membuf_create();
    bytes_t b = { NULL, 0 };
    if (persist_all(e, s) == 0) {
        size_t n = 0;
        const uint8_t *p = estuary_stream_membuf_data(s, &n);
        b.data = malloc(n);
        memcpy(b.data, p, n);
        b.len = n;
    }
    estuary_stream_delete(s);
    return b;
}

static unsigned mode_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (unsigned) (st.st_mode & 0777) : 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s STATE_FILE WORK_DIR\n", argv[0]);
        return 2;
    }
    const char *state_file = argv[1];
    char missing[512], saved[512], streamed[512], truncated[512];
    snprintf(missing, sizeof(missing), "%s/missing.bin", argv[2]);
    snprintf(truncated, sizeof(truncated), "%s/truncated.bin", argv[2]);
    remove(missing);
    snprintf(saved, sizeof(saved), "%s/saved.bin", argv[2]);
    snprintf(streamed, sizeof(streamed), "%s/streamed.bin", argv[2]);
    bytes_t state = read_file(state_file);

    /* File helpers. */
    estuary_t *a = new_client("persist-c-a");
    CHECK_RC(estuary_persistence_restore_file(a, missing), ESTUARY_ERR_NOT_FOUND);
    CHECK(estuary_persistence_is_modified(a));
    CHECK_RC(estuary_persistence_restore_file(a, state_file), 0);
    CHECK(!estuary_persistence_is_modified(a));
    CHECK(!estuary_security_object_is_modified(a));
    CHECK(!estuary_server_object_is_modified(a));
    CHECK(!estuary_attr_storage_is_modified(a));
    CHECK(!estuary_est_state_is_modified(a));
    CHECK(estuary_est_state_is_ready_for_persistence(a));
    /* A file that was readable by everyone is 0600 after the save. */
    FILE *wide = fopen(saved, "wb");
    CHECK(wide != NULL);
    if (wide) {
        fclose(wide);
    }
    chmod(saved, 0644);
    CHECK_RC(estuary_persistence_save_file(a, saved), 0);
    CHECK(mode_of(saved) == 0600);
    bytes_t back = read_file(saved);
    CHECK(same(back, state.data, state.len));

    /* EST status. */
    estuary_est_status_t st;
    memset(&st, 0x55, sizeof(st));
    CHECK_RC(estuary_est_status_get(a, &st), 0);
    CHECK(st.enrolled);
    CHECK(strcmp(st.subject, "CN=dev1") == 0);
    CHECK(strlen(st.serial) > 0 && strlen(st.serial) < sizeof(st.serial));
    CHECK(st.not_before < st.provisioned_at && st.provisioned_at < st.not_after);
    CHECK(st.reenrollment_scheduled);
    CHECK(st.provisioned_at < st.next_reenrollment && st.next_reenrollment < st.not_after);
    CHECK(!st.operation_in_progress);

    /* Per-part calls over a memory stream reproduce the file. */
    bytes_t mem = snapshot(a);
    CHECK(same(mem, state.data, state.len));

    /* Per-part restore from a file stream into a fresh client, then a file stream out. */
    estuary_t *b = new_client("persist-c-b");
    estuary_est_status_t empty;
    CHECK_RC(estuary_est_status_get(b, &empty), 0);
    CHECK(!empty.enrolled && empty.subject[0] == '\0' && !empty.reenrollment_scheduled);
    CHECK(estuary_est_state_is_modified(b));
    estuary_stream_t *in = estuary_stream_file_create(state_file, ESTUARY_STREAM_FILE_READ);
    CHECK(in != NULL);
    CHECK_RC(restore_all(b, in), 0);
    estuary_stream_delete(in);
    CHECK(!estuary_persistence_is_modified(b));
    estuary_stream_t *out = estuary_stream_file_create(streamed, ESTUARY_STREAM_FILE_WRITE);
    CHECK(out != NULL);
    CHECK_RC(persist_all(b, out), 0);
    estuary_stream_delete(out);
    CHECK(mode_of(streamed) == 0600);
    bytes_t streamed_back = read_file(streamed);
    CHECK(same(streamed_back, state.data, state.len));

    /* Callback streams: a flash region too small fails mid-write with ESTUARY_ERR_IO. */
    static flash_t small, big;
    small.cap = state.len / 2;
    estuary_stream_t *fs = estuary_stream_from_callbacks(NULL, flash_write, &small);
    CHECK_RC(persist_all(b, fs), ESTUARY_ERR_IO);
    CHECK(small.len == small.cap);
    estuary_stream_delete(fs);
    big.cap = sizeof(big.buf);
    fs = estuary_stream_from_callbacks(flash_read, flash_write, &big);
    CHECK_RC(persist_all(b, fs), 0);
    CHECK(big.len == state.len && memcmp(big.buf, state.data, state.len) == 0);
    estuary_t *c = new_client("persist-c-c");
    CHECK_RC(restore_all(c, fs), 0);
    estuary_stream_delete(fs);
    bytes_t from_flash = snapshot(c);
    CHECK(same(from_flash, state.data, state.len));

    /* Damaged parts are refused and change nothing: a fresh client stays empty. */
    estuary_t *d = new_client("persist-c-d");
    bytes_t before = snapshot(d);
    int refused = 0;
    size_t cuts[] = { 0, 1, 10, 11, 12, state.len / 2, state.len - 1 };
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        estuary_stream_t *t = estuary_stream_membuf_create();
        estuary_stream_membuf_write(t, state.data, cuts[i]);
        int rc = restore_all(d, t);
        CHECK(rc < 0);
        refused += rc < 0;
        estuary_stream_delete(t);
    }
    for (size_t at = 0; at < state.len; at += 37) {
        unsigned char *copy = malloc(state.len);
        memcpy(copy, state.data, state.len);
        copy[at] ^= 0x20;
        estuary_stream_t *t = estuary_stream_membuf_create();
        estuary_stream_membuf_write(t, copy, state.len);
        /* Parts before the damaged one restore; the damaged one must not. */
        int rc = restore_all(d, t);
        CHECK(rc < 0);
        refused += rc < 0;
        estuary_stream_delete(t);
        free(copy);
        /* Undo what the good parts installed, for the next round. */
        estuary_stream_t *u = estuary_stream_membuf_create();
        estuary_stream_membuf_write(u, before.data, before.len);
        CHECK_RC(restore_all(d, u), 0);
        estuary_stream_delete(u);
    }
    bytes_t after = snapshot(d);
    CHECK(after.len == before.len && memcmp(after.data, before.data, before.len) == 0);
    /* All-or-nothing through the file helper: a damaged last part installs nothing. */
    FILE *bad = fopen(truncated, "wb");
    CHECK(bad != NULL);
    if (bad) {
        fwrite(state.data, 1, state.len - 1, bad);
        fclose(bad);
    }
    CHECK(estuary_persistence_restore_file(d, truncated) < 0);
    bytes_t after_file = snapshot(d);
    CHECK(after_file.len == before.len
          && memcmp(after_file.data, before.data, before.len) == 0);

    /* NULL arguments. */
    estuary_stream_t *m = estuary_stream_membuf_create();
    CHECK_RC(estuary_attr_storage_persist(NULL, m), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_attr_storage_persist(a, NULL), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_attr_storage_restore(NULL, m), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_est_state_persist(NULL, m), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_est_state_restore(a, NULL), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_persistence_save_file(a, NULL), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_persistence_save_file(NULL, saved), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_persistence_restore_file(NULL, saved), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_est_status_get(NULL, &st), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK_RC(estuary_est_status_get(a, NULL), ESTUARY_ERR_NULL_ARGUMENT);
    CHECK(!estuary_attr_storage_is_modified(NULL));
    CHECK(!estuary_est_state_is_modified(NULL));
    CHECK(!estuary_est_state_is_ready_for_persistence(NULL));
    CHECK(!estuary_persistence_is_modified(NULL));
    estuary_stream_delete(m);

    estuary_delete(a);
    estuary_delete(b);
    estuary_delete(c);
    estuary_delete(d);
    free(state.data);
    free(back.data);
    free(mem.data);
    free(streamed_back.data);
    free(from_flash.data);
    free(before.data);
    free(after.data);
    free(after_file.data);
    printf("persist: %d refused damaged streams; %d checks, %d failed\n", refused, g_checks,
           g_failures);
    return g_failures == 0 ? 0 : 1;
}
