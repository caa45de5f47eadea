/* Error records, whole-file reads and clocks shared by the quant library. */
#include "quant/qd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int qd_errf(qd_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return QD_ERR;
}

void *qd_read_file(const char *path, size_t max_bytes, size_t *len, qd_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        qd_errf(err, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if ((size_t)st.st_size > max_bytes) {
        qd_errf(err, "%s: file is %lld bytes, limit %zu", path, (long long)st.st_size, max_bytes);
        fclose(f);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        qd_errf(err, "%s: out of memory for %zu bytes", path, n);
        fclose(f);
        return NULL;
    }
    if (fread(buf, 1, n, f) != n) {
        qd_errf(err, "%s: read failed", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int qd_write_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

double qd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t qd_peak_rss(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (size_t)ru.ru_maxrss * 1024;
}
