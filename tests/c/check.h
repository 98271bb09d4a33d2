/*
 * tests/c/check.h: what the C tests under tests/c share, header-only (each test is one .c
 * file that includes it once; tests/c_api.rs compiles them with -Wall -Wextra -Werror):
 *
 *   - the CHECK and CHECK_RC macros and their counters g_checks / g_failures: a failed
 *     check prints FILE:LINE and the expression on stderr and the test goes on; each test
 *     ends by printing "... N checks, M failed" (tests/c_api.rs looks for ", 0 failed") and
 *     exiting 1 when anything failed;
 *   - log capture: check_log_capture(), an estuary_log_handler_t that counts Estuary's log
 *     lines and keeps them in g_log (the last one, and the text of all since the test last
 *     emptied g_log.text) for checks on why a call was refused; check_log_quiet() drops
 *     them.
 */
#ifndef ESTUARY_TESTS_C_CHECK_H
#define ESTUARY_TESTS_C_CHECK_H

#include <estuary.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int g_checks;
static int g_failures;

#define CHECK(cond)                                                            \
    do {                                                                       \
        g_checks++;                                                            \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            g_failures++;                                                      \
        }                                                                      \
    } while (0)

/* `expr` (an int call) returns `expected`. */
#define CHECK_RC(expr, expected)                                               \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        g_checks++;                                                            \
        if (rc_ != (expected)) {                                               \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %s\n",       \
                    __FILE__, __LINE__, #expr, rc_, estuary_error_name(rc_),   \
                    #expected);                                                \
            g_failures++;                                                      \
        }                                                                      \
    } while (0)

/* What check_log_capture() has seen. */
static struct {
    int count;                /* lines since the start */
    int last_level;           /* the last line's */
    char last_module[128];
    char last_message[512];
    char text[8192];          /* the messages, one a line; the test empties it: text[0] = 0 */
} g_log;

/* When set, check_log_capture() also prints each line on stderr. */
static bool g_log_echo;

/* Counts the line and keeps it in g_log; `arg`, when not NULL, is an int counted too. */
static inline void check_log_capture(estuary_log_level_t level, const char *module,
                                     const char *message, void *arg) {
    if (arg) {
        ++*(int *) arg;
    }
    g_log.count++;
    g_log.last_level = level;
    snprintf(g_log.last_module, sizeof(g_log.last_module), "%s", module);
    snprintf(g_log.last_message, sizeof(g_log.last_message), "%s", message);
    size_t used = strlen(g_log.text);
    snprintf(g_log.text + used, sizeof(g_log.text) - used, "%s\n", message);
    if (g_log_echo) {
        fprintf(stderr, "[log %d] %s: %s\n", level, module, message);
    }
}

/* Drops every line. */
static inline void check_log_quiet(estuary_log_level_t level, const char *module,
                                   const char *message, void *arg) {
    (void) level;
    (void) module;
    (void) message;
    (void) arg;
}

#endif /* ESTUARY_TESTS_C_CHECK_H */
