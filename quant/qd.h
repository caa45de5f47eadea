/* Shared basics of the quant library: the error record every fallible function fills, and a
 * few helpers for reading whole files and bounded arithmetic. Library code never exits: it
 * returns a status and writes why into a qd_err. */
#ifndef QD_H
#define QD_H

#include <stddef.h>
#include <stdint.h>

#define QD_OK 0
#define QD_ERR (-1)

typedef struct qd_err {
    char msg[512];
} qd_err;

/* Writes a formatted message into err (err may be NULL). Always returns QD_ERR. */
int qd_errf(qd_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads a whole file into a malloc'd buffer (NUL appended, not counted in *len); caller frees.
 * Refuses files larger than max_bytes. NULL on failure with err set (names the file). */
void *qd_read_file(const char *path, size_t max_bytes, size_t *len, qd_err *err);

/* Writes all n bytes to fd, retrying short writes and EINTR. 0, or -1 with errno set. */
int qd_write_all(int fd, const void *data, size_t n);

/* Wall-clock seconds from a monotonic clock. */
double qd_now(void);

/* Peak resident set size of this process in bytes (from getrusage). */
size_t qd_peak_rss(void);

/* a*b into *out; returns 0, or -1 when it would overflow size_t. */
static inline int qd_mul_ok(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

#endif
