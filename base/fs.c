/* Files: whole-file reads, write-everything, mkdir -p and atomic replacement (see fs.h). */
#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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

int qd_mkdir_p(const char *dir, qd_err *err) {
    char buf[4096];
    if (!*dir) return qd_errf(err, "%s: empty directory name", __func__);
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return qd_errf(err, "%s: path too long", dir);
    /* Each prefix ending before a '/', then the whole path. */
    for (char *p = buf + 1;; p++) {
        if (*p && *p != '/') continue;
        char c = *p;
        *p = 0;
        struct stat st;
        if (mkdir(buf, 0755) != 0) {
            if (errno != EEXIST)
                return qd_errf(err, "%s: cannot create directory: %s", buf, strerror(errno));
            if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
                return qd_errf(err, "%s: exists and is not a directory", buf);
        }
        *p = c;
        if (!c) return QD_OK;
        while (p[1] == '/') p++;
        if (!p[1]) return QD_OK;   /* a trailing slash */
    }
}

int qd_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

int qd_atomic_open(qd_atomic_file *a, const char *path, qd_err *err) {
    a->f = NULL;
    if (strlen(path) >= sizeof a->path) return qd_errf(err, "%s: path too long", path);
    snprintf(a->path, sizeof a->path, "%s", path);
    /* DIR/.NAME.tmpXXXXXX: hidden, so that directory listings (a job's artifacts, the digest
     * of a checkpoint directory) pass over a write in progress or one a crash left behind. */
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path + 1) : 0;
    snprintf(a->tmp, sizeof a->tmp, "%.*s.%s.tmpXXXXXX", dir_len, path, path + dir_len);
    /* O_CLOEXEC: the server forks workers, which must not inherit a half-written file. */
    int fd = mkostemp(a->tmp, O_CLOEXEC);
    if (fd < 0) return qd_errf(err, "%s: cannot create temp file: %s", path, strerror(errno));
    if (fchmod(fd, 0644) != 0 || !(a->f = fdopen(fd, "wb"))) {
        int e = errno;
        close(fd);
        unlink(a->tmp);
        return qd_errf(err, "%s: cannot open temp file: %s", path, strerror(e));
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
    if (!a->f) return qd_errf(err, "%s: %s without an open file", a->path, __func__);
    int e = 0;
    if (ferror(a->f))
        e = EIO; /* an earlier fwrite failed */
    else if (fflush(a->f) != 0 || fsync(fileno(a->f)) != 0)
        e = errno;
    if (e) {
        qd_atomic_abort(a);
        return qd_errf(err, "%s: write failed: %s", a->path, strerror(e));
    }
    if (fclose(a->f) != 0) {
        int e = errno;
        a->f = NULL;
        unlink(a->tmp);
        return qd_errf(err, "%s: close failed: %s", a->path, strerror(e));
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
    qd_fsync_dir(dirname(dir));
    return QD_OK;
}

int qd_write_file_atomic(const char *path, const void *data, size_t n, qd_err *err) {
    qd_atomic_file a;
    if (qd_atomic_open(&a, path, err)) return QD_ERR;
    if (n && fwrite(data, 1, n, a.f) != n) {
        int e = errno;
        qd_atomic_abort(&a);
        return qd_errf(err, "%s: write failed: %s", path, strerror(e));
    }
    return qd_atomic_commit(&a, err);
}

int qd_write_text_atomic(const char *path, const char *text, qd_err *err) {
    qd_atomic_file a;
    if (qd_atomic_open(&a, path, err)) return QD_ERR;
    size_t n = strlen(text);
    if ((n && fwrite(text, 1, n, a.f) != n) || fputc('\n', a.f) == EOF) {
        int e = errno;
        qd_atomic_abort(&a);
        return qd_errf(err, "%s: write failed: %s", path, strerror(e));
    }
    return qd_atomic_commit(&a, err);
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

int qd_rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    return nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}
