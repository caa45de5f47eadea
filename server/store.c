/* The data directory. Durability rule: a reader (this server after a crash, or a worker) must
 * only ever see complete files. Blobs are written under blobs/tmp and renamed to their hash;
 * job.json is replaced through a temp file, fsync and rename; a new job directory is built
 * under a temp name and renamed into jobs/. */
#include "server/store.h"
#include "base/fs.h"
#include "base/hash.h"
#include "base/str.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

struct srv_store {
    char dir[PATH_MAX];
    int lock_fd;
    unsigned long tmp_seq;
};

struct srv_upload {
    srv_store *s;
    int fd;
    char tmp[PATH_MAX + 64];
    qd_sha256_ctx *md;
    uint64_t size;
    bool sealed;
    char id[72];
};

srv_store *srv_store_open(const char *dir, qd_err *err) {
    if (qd_mkdir_p(dir, err)) return NULL;
    srv_store *s = calloc(1, sizeof *s);
    if (!s || !realpath(dir, s->dir)) {
        qd_errf(err, "%s: %s", dir, strerror(errno));
        free(s);
        return NULL;
    }
    char p[PATH_MAX + 64];
    const char *subdirs[] = {"blobs/sha256", "blobs/tmp", "jobs", "jobs/.tmp"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", s->dir, subdirs[i]);
        if (qd_mkdir_p(p, err)) {
            free(s);
            return NULL;
        }
    }
    snprintf(p, sizeof p, "%s/lock", s->dir);
    s->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        qd_errf(err, "%s: %s", p,
                errno == EWOULDBLOCK ? "another quantd server uses this data directory"
                                     : strerror(errno));
        if (s->lock_fd >= 0) close(s->lock_fd);
        free(s);
        return NULL;
    }
    /* Leftovers of a crash: half-received uploads and half-built job directories. */
    const char *scratch[] = {"blobs/tmp", "jobs/.tmp"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", s->dir, scratch[i]);
        qd_rm_rf(p);
        qd_mkdir_p(p, NULL);
    }
    return s;
}

void srv_store_close(srv_store *s) {
    if (!s) return;
    close(s->lock_fd);
    free(s);
}

const char *srv_store_dir(const srv_store *s) { return s->dir; }

uint64_t srv_store_free_bytes(const srv_store *s) {
    struct statvfs v;
    if (statvfs(s->dir, &v) != 0) return UINT64_MAX;
    return (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
}

int srv_blob_path(const srv_store *s, const char *id, char *out, size_t n) {
    if (!api_blob_id_valid(id)) return qd_errf(NULL, "bad id");
    int k = snprintf(out, n, "%s/blobs/sha256/%s", s->dir, id + 7);
    return k > 0 && (size_t)k < n ? QD_OK : QD_ERR;
}

bool srv_blob_exists(const srv_store *s, const char *id, uint64_t *size) {
    char p[PATH_MAX + 128];
    struct stat st;
    if (srv_blob_path(s, id, p, sizeof p) || stat(p, &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    if (size) *size = (uint64_t)st.st_size;
    return true;
}

srv_upload *srv_upload_begin(srv_store *s, qd_err *err) {
    srv_upload *u = calloc(1, sizeof *u);
    if (!u) {
        qd_errf(err, "%s: out of memory", __func__);
        return NULL;
    }
    u->s = s;
    snprintf(u->tmp, sizeof u->tmp, "%s/blobs/tmp/upload-XXXXXX", s->dir);
    u->fd = mkostemp(u->tmp, O_CLOEXEC);
    u->md = qd_sha256_new();
    if (u->fd < 0 || !u->md) {
        qd_errf(err, "%s: %s", __func__, strerror(errno));
        if (u->fd >= 0) {
            close(u->fd);
            unlink(u->tmp);
        }
        qd_sha256_free(u->md);
        free(u);
        return NULL;
    }
    return u;
}

int srv_upload_write(srv_upload *u, const void *data, size_t n) {
    if (u->sealed) return EINVAL;
    if (qd_write_all(u->fd, data, n) != 0) return errno;
    qd_sha256_update(u->md, data, n);
    u->size += n;
    return 0;
}

const char *srv_upload_path(const srv_upload *u) { return u->tmp; }

uint64_t srv_upload_size(const srv_upload *u) { return u->size; }

void srv_upload_abort(srv_upload *u) {
    if (!u) return;
    if (u->fd >= 0) close(u->fd);
    unlink(u->tmp);
    qd_sha256_free(u->md);
    free(u);
}

void srv_upload_seal(srv_upload *u, char id[72]) {
    if (!u->sealed) {
        memcpy(u->id, "sha256:", 7);
        qd_sha256_final(u->md, u->id + 7);
        u->sealed = true;
    }
    memcpy(id, u->id, 72);
}

int srv_upload_finish(srv_upload *u, char id[72], uint64_t *size, bool *existed, qd_err *err) {
    srv_upload_seal(u, id);
    *size = u->size;
    char dst[PATH_MAX + 128];
    srv_blob_path(u->s, id, dst, sizeof dst);
    struct stat st;
    *existed = stat(dst, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == u->size;
    if (*existed) {
        srv_upload_abort(u);
        return QD_OK;
    }
    if (fsync(u->fd) != 0 || fchmod(u->fd, 0444) != 0) {
        int e = errno;
        srv_upload_abort(u);
        return qd_errf(err, "%s: fsync: %s", __func__, strerror(e));
    }
    close(u->fd);
    u->fd = -1;
    if (rename(u->tmp, dst) != 0) {
        int e = errno;
        srv_upload_abort(u);
        return qd_errf(err, "%s: rename: %s", __func__, strerror(e));
    }
    char d[PATH_MAX + 64];
    snprintf(d, sizeof d, "%s/blobs/sha256", u->s->dir);
    qd_fsync_dir(d);
    qd_sha256_free(u->md);
    free(u);
    return QD_OK;
}

int srv_job_dir(const srv_store *s, const char *id, char *out, size_t n) {
    int k = snprintf(out, n, "%s/jobs/%s", s->dir, id);
    return k > 0 && (size_t)k < n ? QD_OK : QD_ERR;
}

static char *job_text(const api_job *j) {
    cJSON *o = api_job_to_json(j, -1);
    char *t = cJSON_Print(o);
    cJSON_Delete(o);
    return t;
}

int srv_store_write_job(srv_store *s, const api_job *j, qd_err *err) {
    char p[PATH_MAX + 64];
    if (snprintf(p, sizeof p, "%s/jobs/%s/job.json", s->dir, j->id) >= (int)sizeof p)
        return qd_errf(err, "%s: path too long", __func__);
    char *t = job_text(j);
    if (!t) return qd_errf(err, "%s: out of memory", __func__);
    int rc = qd_write_file_atomic(p, t, strlen(t), err);
    free(t);
    return rc;
}

int srv_store_create_job(srv_store *s, const api_job *j, const char *first_event, qd_err *err) {
    char tmpdir[PATH_MAX + 64], p[PATH_MAX + 96], dst[PATH_MAX + 64];
    snprintf(tmpdir, sizeof tmpdir, "%s/jobs/.tmp/%s", s->dir, j->id);
    snprintf(dst, sizeof dst, "%s/jobs/%s", s->dir, j->id);
    if (mkdir(tmpdir, 0755) != 0) return qd_errf(err, "%s: %s: %s", __func__, tmpdir, strerror(errno));
    char *t = job_text(j);
    snprintf(p, sizeof p, "%s/job.json", tmpdir);
    int rc = t ? qd_write_file_atomic(p, t, strlen(t), err)
               : qd_errf(err, "%s: out of memory", __func__);
    free(t);
    if (rc == QD_OK && first_event) {
        snprintf(p, sizeof p, "%s/events.jsonl", tmpdir);
        size_t n = strlen(first_event);
        char *line = malloc(n + 2);
        memcpy(line, first_event, n);
        line[n] = '\n';
        rc = qd_write_file_atomic(p, line, n + 1, err);
        free(line);
    }
    if (rc == QD_OK && rename(tmpdir, dst) != 0)
        rc = qd_errf(err, "%s: rename to %s: %s", __func__, dst, strerror(errno));
    if (rc != QD_OK) {
        qd_rm_rf(tmpdir);
        return rc;
    }
    snprintf(p, sizeof p, "%s/jobs", s->dir);
    qd_fsync_dir(p);
    return QD_OK;
}

int srv_store_append_event(srv_store *s, const char *id, const char *line, qd_err *err) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/jobs/%s/events.jsonl", s->dir, id);
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return qd_errf(err, "%s: %s: %s", __func__, p, strerror(errno));
    size_t n = strlen(line);
    char *buf = malloc(n + 1);
    memcpy(buf, line, n);
    buf[n] = '\n';
    /* One write: an appended line is never interleaved with a worker's lines. */
    int rc = qd_write_all(fd, buf, n + 1) == 0 ? QD_OK : qd_errf(err, "%s: %s", p, strerror(errno));
    free(buf);
    close(fd);
    return rc;
}

int srv_store_delete_job(srv_store *s, const char *id, qd_err *err) {
    char src[PATH_MAX + 64], dst[PATH_MAX + 64];
    snprintf(src, sizeof src, "%s/jobs/%s", s->dir, id);
    snprintf(dst, sizeof dst, "%s/jobs/.tmp/deleted-%s", s->dir, id);
    /* Rename first so that a crash half-way through the removal leaves no half job behind. */
    if (rename(src, dst) != 0) return qd_errf(err, "%s: %s: %s", __func__, src, strerror(errno));
    qd_rm_rf(dst);
    return QD_OK;
}

int srv_store_load_jobs(srv_store *s, api_job **out, int *n_out, qd_err *err) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/jobs", s->dir);
    DIR *d = opendir(p);
    if (!d) return qd_errf(err, "%s: %s", p, strerror(errno));
    int n = 0, cap = 64;
    api_job *jobs = malloc((size_t)cap * sizeof *jobs);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!qd_uuid_like(e->d_name)) continue;
        snprintf(p, sizeof p, "%s/jobs/%.36s/job.json", s->dir, e->d_name);
        qd_err e2;
        size_t len;
        char *text = qd_read_file(p, 4 << 20, &len, &e2);
        if (!text) {
            fprintf(stderr, "quantd: skipping job %s: %s\n", e->d_name, e2.msg);
            continue;
        }
        cJSON *root = cJSON_Parse(text);
        free(text);
        if (n == cap) {
            cap *= 2;
            jobs = realloc(jobs, (size_t)cap * sizeof *jobs);
        }
        if (api_job_from_json(root, &jobs[n], &e2) != 0 || strcmp(jobs[n].id, e->d_name)) {
            fprintf(stderr, "quantd: skipping job %s: %s\n", e->d_name,
                    root ? e2.msg : "job.json is not valid JSON");
            api_job_clear(&jobs[n]);
        } else {
            n++;
        }
        cJSON_Delete(root);
    }
    closedir(d);
    *out = jobs;
    *n_out = n;
    return QD_OK;
}
