/* Files: whole-file reads, write-everything and atomic replacement. */
#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int qd_atomic_open(qd_atomic_file *a, const char *path, qd_err *err) {
    a->f = NULL;
    if (strlen(path) >= sizeof a->path) return qd_errf(err, "%s: path too long", path);
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmpXXXXXX", path);
    int fd = mkstemp(a->tmp);
    if (fd < 0) return qd_errf(err, "%s: cannot create temp file: %s", path, strerror(errno));
    fchmod(fd, 0644);
    a->f = fdopen(fd, "wb");
    if (!a->f) {
        close(fd);
        unlink(a->tmp);
        return qd_errf(err, "%s: fdopen failed: %s", path, strerror(errno));
    }
    return QD_OK;
}

void qd_atomic_abort(qd_atomic_file *a) {
    if (!a->f) return;
    fclose(a->f);
    a->f = NULL;
    unlink(a->tmp);
}

int qd_atomic_commit(qd_atomic_file *a, qd_err *err) {
    if (ferror(a->f) || fflush(a->f) != 0 || fsync(fileno(a->f)) != 0) {
        int e = errno;
        qd_atomic_abort(a);
        return qd_errf(err, "%s: write failed: %s", a->path, strerror(e));
    }
    if (fclose(a->f) != 0) {
        a->f = NULL;
        unlink(a->tmp);
        return qd_errf(err, "%s: close failed: %s", a->path, strerror(errno));
    }
    a->f = NULL;
    if (rename(a->tmp, a->path) != 0) {
        int e = errno;
        unlink(a->tmp);
        return qd_errf(err, "%s: rename failed: %s", a->path, strerror(e));
    }
    /* The rename is durable only once the directory entry is on disk. */
    char dir[sizeof a->path];
    snprintf(dir, sizeof dir, "%s", a->path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return QD_OK;
}
