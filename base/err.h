/* The error record every fallible function in quantd fills, and bounded arithmetic. Library
 * code never exits: it returns a status (QD_OK / QD_ERR) and writes why into a qd_err. */
#ifndef QD_BASE_ERR_H
#define QD_BASE_ERR_H

#include <stddef.h>
#include <stdint.h>

#define QD_OK 0
#define QD_ERR (-1)

typedef struct qd_err {
    char msg[512];
} qd_err;

/* Writes a formatted message into err (err may be NULL). Always returns QD_ERR. */
int qd_errf(qd_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* a*b into *out; returns 0, or -1 when it would overflow size_t. */
static inline int qd_mul_ok(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

#endif
