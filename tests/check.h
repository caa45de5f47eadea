/* A minimal test harness: each test binary runs its cases, prints "PASS name" or
 * "FAIL name: why" per case, and exits non-zero when any case failed. tests/run.sh adds the
 * lines up. Fixtures are found through $QD_FIXTURES (default ../shared/fixtures). */
#ifndef QD_CHECK_H
#define QD_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/fp/blas.h"

static int check_failed_total;
static int check_case_failed;

/* Fails the current case (and keeps going) when cond is false. */
#define CHECK(cond, ...)                                                            \
    do {                                                                            \
        if (!(cond)) {                                                              \
            check_case_failed = 1;                                                  \
            fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                    \
        }                                                                           \
    } while (0)

#define RUN(fn)                                                                     \
    do {                                                                            \
        check_case_failed = 0;                                                      \
        fn();                                                                       \
        printf("%s %s\n", check_case_failed ? "FAIL" : "PASS", #fn);                \
        fflush(stdout);                                                             \
        check_failed_total += check_case_failed;                                    \
    } while (0)

/* Every test binary runs on the BLAS kernel quantd would choose (the results must hold on any
 * kernel: a user's OPENBLAS_CORETYPE is respected as in quantd itself). Runs before main. */
__attribute__((constructor)) static void check_blas_select(void) { qd_blas_select(NULL); }

#define CHECK_DONE() (check_failed_total ? 1 : 0)

/* Path of a fixture file, in a static buffer per call site rotation of 8. */
static inline const char *fixture(const char *rel) {
    static char bufs[8][1024];
    static int k;
    const char *root = getenv("QD_FIXTURES");
    if (!root || !*root) root = "../shared/fixtures";
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", root, rel);
    return b;
}

/* Creates a fresh directory /tmp/qd_NAME_XXXXXX into dir (n bytes); exits 1 when it cannot. */
static inline void check_tmpdir(char *dir, size_t n, const char *name) {
    snprintf(dir, n, "/tmp/qd_%s_XXXXXX", name);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Path of name inside dir, in one of 8 rotating static buffers (copy it to keep it). */
static inline const char *check_path(const char *dir, const char *name) {
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

/* Writes len bytes to dir/name and returns its path (check_path); when the file cannot be
 * written the path is returned all the same, for the reader under test to fail on. */
static inline const char *check_write(const char *dir, const char *name, const void *data,
                                      size_t len) {
    const char *p = check_path(dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) return p;
    if (len) fwrite(data, 1, len, f);
    fclose(f);
    return p;
}

/* One xorshift64 step of *s (never 0): the tests' cheap deterministic random numbers. */
static inline uint64_t check_xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Removes a scratch directory made by check_tmpdir (a message when it cannot). */
static inline void check_rmtree(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

#endif
