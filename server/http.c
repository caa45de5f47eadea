/* The HTTP front end on libmicrohttpd.
 *
 * Threading: one thread per connection (MHD_USE_THREAD_PER_CONNECTION), bounded by the
 * connection limit, with small stacks. SSE streams are long-lived and wait on the job index's
 * condition variable; in a thread of their own that wait is a plain blocking call, and no
 * upload or GET ever queues behind a slow stream.
 *
 * Request life: the first access-handler call sees only the headers. Routing, auth and the
 * checks that need no body (content type, declared length, free disk) happen there, so a 401,
 * 413 or 415 goes out before the client sends its body. Upload chunks stream into the store as
 * they arrive; the final call (no more data) answers. Per-request state lives in *req_cls and
 * is freed in the completion callback, which also counts the request for /metrics and drops
 * an interrupted upload's temp file. */
#include "server/server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <microhttpd.h>

#include "api/api.h"
#include "server/auth.h"
#include "server/dashboard.h"
#include "server/intake.h"
#include "server/guard.h"
#include "server/jobs.h"
#include "server/metrics.h"
#include "server/store.h"
#include "worker/check.h"
#include "base/fs.h"
#include "base/pool.h"
#include "base/str.h"
#include "base/sys.h"

#define MAX_JSON_BODY (1u << 20)

typedef struct srv srv;
typedef struct req req;
typedef enum MHD_Result (*handler)(srv *s, struct MHD_Connection *c, req *r);

typedef struct route {
    const char *method;
    const char *path;
    const char *name; /* metrics label */
    srv_role role;
    handler fn;
    bool body; /* answers on the final call, after the body */
} route;

struct srv {
    srv_config cfg;
    char exe[PATH_MAX]; /* this binary: `quantd work --check` at the door */
    srv_store *store;
    srv_jobs *jobs;
    srv_metrics *metrics;
    srv_auth *auth;
    srv_guard *guard;
    int job_threads; /* a spec's threads when it names none (config job_threads, resolved) */
    struct MHD_Daemon *d;
    /* connections the intake has handed to libmicrohttpd whose start notification has not come
     * yet: the guard's record of each, by fd */
    pthread_mutex_t handoff_mu;
    struct handoff {
        int fd;
        srv_guard_conn *gc;
    } *handoff;
    size_t n_handoff, cap_handoff;
};

/* One file part of a multipart POST /v1/jobs: streamed into the store like POST /v1/blobs,
 * kept as an unfinished upload until the job is accepted. Several parts named "model" are the
 * files of a model directory, each at the relative path its filename gives. */
#define MP_MAX_PARTS (4 + API_MAX_MODEL_FILES)
#define MP_BUFFER (64u << 10)
/* The door's check reads headers, the tokenizer and the calibration data: seconds at most. */
#define CHECK_TIMEOUT_S 120.0
typedef struct mp_part {
    char name[64];
    char filename[API_MAX_FILE_NAME + 2]; /* one byte more: a longer name is refused, not cut */
    srv_upload *up;
    char id[72];
    bool used; /* the spec takes it */
} mp_part;

struct req {
    srv *s;
    srv_guard_conn *gc; /* the connection's record in the guard */
    double t0;
    int route;
    int status;
    char id[80]; /* a job uuid or a blob id */
    char name[512];
    bool routed;
    bool answered;
    /* POST /v1/blobs */
    srv_upload *up;
    int up_status; /* non-zero: an error to send once the body is drained */
    char up_code[40], up_msg[200], up_field[64];
    uint64_t since_disk_check; /* bytes written since free space was last looked at */
    /* JSON bodies (and the spec part of a multipart job) */
    char *body;
    size_t body_len;
    bool body_too_big;
    /* multipart POST /v1/jobs */
    struct MHD_PostProcessor *pp;
    mp_part parts[MP_MAX_PARTS];
    int n_parts;
    int mp_cur; /* the part being received: an index into parts, MP_SPEC, or MP_NONE */
    bool have_spec;
    /* a body on a route that takes none (a DELETE or GET with a body): read and dropped, and
     * the request answered once it has ended */
    bool drain;
};
enum { MP_NONE = -2, MP_SPEC = -1 };

/* ---- responses ---- */

/* Queues resp (NULL: MHD_NO) as the answer of r, recording the status for the access log and
 * metrics, and drops this function's reference to it. */
static enum MHD_Result queue_resp(struct MHD_Connection *c, req *r, int status,
                                  struct MHD_Response *resp) {
    if (!resp) return MHD_NO;
    r->status = status;
    r->answered = true;
    /* one request per connection: the next request's head must pass the intake too (intake.h) */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_buf(struct MHD_Connection *c, req *r, int status, const char *ctype,
                                char *buf, size_t len, const char *extra_h, const char *extra_v) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(buf);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (extra_h) MHD_add_response_header(resp, extra_h, extra_v);
    return queue_resp(c, r, status, resp);
}

/* A 200 of bytes that live as long as the process (compiled-in files), with a header pair
 * beside the content type (extra_h NULL: none). */
static enum MHD_Result send_static(struct MHD_Connection *c, req *r, const char *ctype,
                                   const char *data, size_t len, const char *extra_h,
                                   const char *extra_v) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (extra_h) MHD_add_response_header(resp, extra_h, extra_v);
    return queue_resp(c, r, 200, resp);
}

static enum MHD_Result send_json(struct MHD_Connection *c, req *r, int status, char *json) {
    if (!json) return MHD_NO;
    return send_buf(c, r, status, "application/json", json, strlen(json), NULL, NULL);
}

static enum MHD_Result send_err(struct MHD_Connection *c, req *r, int status, const char *code,
                                const char *msg, const char *field) {
    char *b = api_error_body(code, msg, field);
    if (status == 401)
        return send_buf(c, r, status, "application/json", b, strlen(b),
                        MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"quantd\"");
    return send_buf(c, r, status, "application/json", b, strlen(b), NULL, NULL);
}

/* ---- helpers ---- */

static const char *header(struct MHD_Connection *c, const char *name) {
    return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

static bool ctype_is(const char *ct, const char *want) {
    if (!ct) return false;
    size_t n = strlen(want);
    return !strncasecmp(ct, want, n) && (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

/* Artifact names are relative paths of plain segments: no "..", no hidden files, no empty
 * segments, nothing but [A-Za-z0-9._-]. The resolved path is checked again after realpath. */
static bool artifact_name_ok(const char *n) {
    size_t len = strlen(n);
    if (len == 0 || len > 255) return false;
    const char *seg = n;
    for (const char *p = n;; p++) {
        if (*p == '/' || *p == 0) {
            if (p == seg || *seg == '.') return false;
            if (*p == 0) break;
            seg = p + 1;
        } else if (!(isalnum((unsigned char)*p) || *p == '.' || *p == '_' || *p == '-')) {
            return false;
        }
    }
    return true;
}

static enum MHD_Result need_job(srv *s, struct MHD_Connection *c, req *r, api_state *st) {
    if (!qd_uuid_like(r->id) || srv_jobs_state(s->jobs, r->id, st) != SRV_OK)
        return send_err(c, r, 404, "not_found", "no such job", "id");
    return MHD_YES;
}

/* A decimal number of digits only (no sign, no spaces); saturates at UINT64_MAX. Returns the
 * end of the digits, or NULL when there are none. */
static const char *parse_u64(const char *p, uint64_t *out) {
    if (*p < '0' || *p > '9') return NULL;
    uint64_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(*p - '0');
    *out = v;
    return p;
}

enum { RANGE_IGNORE, RANGE_OK, RANGE_UNSATISFIABLE };

/* RFC 9110 §14.1.2 for one byte range over a representation of size bytes: RANGE_OK with
 * [start, end]; RANGE_UNSATISFIABLE (416) for a valid range that selects nothing ("bytes=-0",
 * a first position at or past the end); RANGE_IGNORE (answer 200 with the whole file, as §14.2
 * allows) for anything invalid ("bytes=0--1", last < first, another unit) and for several
 * ranges, which this server does not combine. */
static int parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *end) {
    if (strncasecmp(h, "bytes=", 6)) return RANGE_IGNORE;
    const char *p = h + 6;
    while (*p == ' ' || *p == '\t') p++;
    uint64_t a = 0, b = 0;
    bool suffix = *p == '-';
    const char *q = parse_u64(suffix ? p + 1 : p, suffix ? &b : &a);
    if (!q) return RANGE_IGNORE;
    bool have_last = false;
    if (!suffix) {
        if (*q != '-') return RANGE_IGNORE;
        q++;
        if (*q >= '0' && *q <= '9') {
            q = parse_u64(q, &b);
            have_last = true;
        }
    }
    while (*q == ' ' || *q == '\t') q++;
    if (*q) return RANGE_IGNORE; /* trailing junk, or a second range */
    if (suffix) {
        if (b == 0 || size == 0) return RANGE_UNSATISFIABLE;
        *start = b >= size ? 0 : size - b;
        *end = size - 1;
        return RANGE_OK;
    }
    if (have_last && b < a) return RANGE_IGNORE;
    if (a >= size) return RANGE_UNSATISFIABLE;
    *start = a;
    *end = have_last && b < size ? b : size - 1;
    return RANGE_OK;
}

/* Serves a regular file with ETag / If-None-Match and a single byte Range. */
static enum MHD_Result serve_file(struct MHD_Connection *c, req *r, const char *path,
                                  const char *root, const char *ctype, bool attachment) {
    char real[PATH_MAX], realroot[PATH_MAX];
    if (!realpath(path, real) || !realpath(root, realroot))
        return send_err(c, r, 404, "not_found", "no such file", "name");
    size_t rl = strlen(realroot);
    if (strncmp(real, realroot, rl) || real[rl] != '/')
        return send_err(c, r, 404, "not_found", "no such file", "name");
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return send_err(c, r, 404, "not_found", "no such file", "name");
    }
    char etag[96];
    snprintf(etag, sizeof etag, "\"%llx-%llx-%llx\"", (unsigned long long)st.st_ino,
             (unsigned long long)st.st_size,
             (unsigned long long)st.st_mtim.tv_sec * 1000000000ULL + (unsigned long long)st.st_mtim.tv_nsec);
    const char *inm = header(c, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        close(fd);
        struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (resp) MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
        return queue_resp(c, r, 304, resp);
    }
    uint64_t size = (uint64_t)st.st_size, start = 0, end = size ? size - 1 : 0;
    int status = 200;
    const char *range = header(c, MHD_HTTP_HEADER_RANGE);
    const char *if_range = header(c, MHD_HTTP_HEADER_IF_RANGE);
    if (range && if_range && strcmp(if_range, etag)) range = NULL; /* changed: send it whole */
    int rk = range ? parse_range(range, size, &start, &end) : RANGE_IGNORE;
    if (rk == RANGE_UNSATISFIABLE) {
        close(fd);
        char cr[64];
        snprintf(cr, sizeof cr, "bytes */%llu", (unsigned long long)size);
        char *b = api_error_body("range_not_satisfiable", "the range lies past the end", NULL);
        return send_buf(c, r, 416, "application/json", b, strlen(b), MHD_HTTP_HEADER_CONTENT_RANGE, cr);
    }
    if (rk == RANGE_OK) status = 206;
    else start = 0, end = size ? size - 1 : 0;
    uint64_t len = size ? end - start + 1 : 0;
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64(len, fd, start);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
    if (status == 206) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)start,
                 (unsigned long long)end, (unsigned long long)size);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, cr);
    }
    if (attachment) {
        const char *base = strrchr(path, '/');
        char cd[320];
        snprintf(cd, sizeof cd, "attachment; filename=\"%.256s\"", base ? base + 1 : path);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_DISPOSITION, cd);
    }
    return queue_resp(c, r, status, resp);
}

static const char *content_type_for(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return "application/octet-stream";
    if (!strcmp(dot, ".json")) return "application/json";
    if (!strcmp(dot, ".jsonl")) return "application/x-ndjson";
    if (!strcmp(dot, ".txt") || !strcmp(dot, ".md") || !strcmp(dot, ".log")) return "text/plain; charset=utf-8";
    return "application/octet-stream";
}

/* ---- handlers ---- */

static enum MHD_Result h_healthz(srv *s, struct MHD_Connection *c, req *r) {
    long by[API_STATE_COUNT], q, busy, max;
    srv_jobs_counts(s->jobs, by, &q, &busy, &max);
    uint64_t fb = srv_store_free_bytes(s->store);
    bool disk_ok = fb >= s->cfg.min_free_bytes;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", disk_ok ? "ok" : "degraded");
    cJSON_AddNumberToObject(o, "queue_length", (double)q);
    cJSON_AddNumberToObject(o, "workers_busy", (double)busy);
    cJSON_AddNumberToObject(o, "workers_max", (double)max);
    cJSON_AddNumberToObject(o, "disk_free_bytes", (double)fb);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(c, r, disk_ok ? 200 : 503, t);
}

static enum MHD_Result h_metrics(srv *s, struct MHD_Connection *c, req *r) {
    long by[API_STATE_COUNT], q, busy, max;
    srv_jobs_counts(s->jobs, by, &q, &busy, &max);
    char *t = srv_metrics_render(s->metrics, by, q, busy, max);
    if (!t) return MHD_NO;
    return send_buf(c, r, 200, "text/plain; version=0.0.4; charset=utf-8", t, strlen(t), NULL, NULL);
}

static enum MHD_Result h_openapi(srv *s, struct MHD_Connection *c, req *r) {
    (void)s; /* every route handler has the same signature */
    size_t n;
    const char *t = srv_openapi_text(&n);
    return send_static(c, r, "application/yaml", t, n, NULL, NULL);
}

static enum MHD_Result h_dashboard(srv *s, struct MHD_Connection *c, req *r) {
    if (s->cfg.static_dir[0]) {
        char p[PATH_MAX + 32];
        snprintf(p, sizeof p, "%s/index.html", s->cfg.static_dir);
        if (access(p, R_OK) == 0)
            return serve_file(c, r, p, s->cfg.static_dir, "text/html; charset=utf-8", false);
    }
    size_t n;
    const char *page = srv_dashboard_html(&n);
    return send_static(c, r, "text/html; charset=utf-8", page, n, NULL, NULL);
}

static enum MHD_Result h_favicon(srv *s, struct MHD_Connection *c, req *r) {
    (void)s; /* every route handler has the same signature */
    size_t n;
    const char *icon = srv_favicon_svg(&n);
    return send_static(c, r, "image/svg+xml", icon, n, MHD_HTTP_HEADER_CACHE_CONTROL,
                       "max-age=86400");
}

/* ---- uploads: POST /v1/blobs and the file parts of a multipart POST /v1/jobs ---- */

/* Free space is looked at again every few MiB of an upload, so that a disk filled by someone
 * else while a long upload streams answers 507 before it runs out, not after. */
#define DISK_CHECK_EVERY (4u << 20)

static void mp_abort_parts(req *r) {
    srv_upload_abort(r->up);
    r->up = NULL;
    for (int i = 0; i < r->n_parts; i++) {
        srv_upload_abort(r->parts[i].up);
        r->parts[i].up = NULL;
    }
}

/* Records the error to answer once the body has been drained and drops every unfinished
 * upload of the request at once (their disk space comes back before the body ends). The first
 * error wins. */
static void req_fail(req *r, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void req_fail(req *r, int status, const char *code, const char *field, const char *fmt, ...) {
    if (!r->up_status) {
        r->up_status = status;
        snprintf(r->up_code, sizeof r->up_code, "%s", code);
        snprintf(r->up_field, sizeof r->up_field, "%s", field ? field : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->up_msg, sizeof r->up_msg, fmt, ap);
        va_end(ap);
    }
    mp_abort_parts(r);
}

static enum MHD_Result send_req_err(struct MHD_Connection *c, req *r) {
    return send_err(c, r, r->up_status, r->up_code, r->up_msg, r->up_field[0] ? r->up_field : NULL);
}

/* Header-time checks of a streamed body: its declared length against max_body (413) and the
 * free disk (507). Returns false when it has answered. */
static bool admit_body(srv *s, struct MHD_Connection *c, req *r, uint64_t max_body) {
    const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    uint64_t declared = 0;
    if (cl) {
        declared = strtoull(cl, NULL, 10);
        if (declared > max_body) {
            char m[128];
            snprintf(m, sizeof m, "the body is %llu bytes; the limit is %llu",
                     (unsigned long long)declared, (unsigned long long)max_body);
            send_err(c, r, 413, "payload_too_large", m, NULL);
            return false;
        }
    }
    uint64_t fb = srv_store_free_bytes(s->store);
    if (fb < s->cfg.min_free_bytes || declared > fb - s->cfg.min_free_bytes) {
        send_err(c, r, 507, "insufficient_storage", "not enough free disk for this upload", NULL);
        return false;
    }
    return true;
}

/* Appends a chunk to upload u (field names it in errors): the size limit (413), the free disk
 * (507) and write errors. False after req_fail. */
static bool stream_write(srv *s, req *r, srv_upload *u, const char *data, size_t n,
                         const char *field) {
    srv_metrics_add_upload(s->metrics, n);
    if (srv_upload_size(u) + n > s->cfg.max_upload_bytes) {
        req_fail(r, 413, "payload_too_large", field, "the upload exceeds the limit of %zu bytes",
                 s->cfg.max_upload_bytes);
        return false;
    }
    r->since_disk_check += n;
    if (r->since_disk_check >= DISK_CHECK_EVERY) {
        r->since_disk_check = 0;
        if (srv_store_free_bytes(s->store) < s->cfg.min_free_bytes) {
            req_fail(r, 507, "insufficient_storage", field,
                     "the disk ran short during the upload (min_free_bytes)");
            return false;
        }
    }
    int e = srv_upload_write(u, data, n);
    if (!e) return true;
    bool full = e == ENOSPC || e == EDQUOT;
    req_fail(r, full ? 507 : 500, full ? "insufficient_storage" : "internal", field,
             "writing the upload failed: %s", strerror(e));
    return false;
}

/* First call of POST /v1/blobs: everything that can be refused before the body arrives. */
static enum MHD_Result blob_begin(srv *s, struct MHD_Connection *c, req *r) {
    const char *ct = header(c, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ctype_is(ct, "application/octet-stream"))
        return send_err(c, r, 415, "unsupported_media_type",
                        "POST /v1/blobs takes a raw body with Content-Type: application/octet-stream",
                        "Content-Type");
    if (!admit_body(s, c, r, s->cfg.max_upload_bytes)) return MHD_YES;
    qd_err err;
    r->up = srv_upload_begin(s->store, &err);
    if (!r->up) return send_err(c, r, 500, "internal", err.msg, NULL);
    return MHD_YES;
}

static void blob_chunk(srv *s, req *r, const char *data, size_t n) {
    if (r->up_status) return; /* already failed: drain the rest of the body */
    stream_write(s, r, r->up, data, n, NULL);
}

static enum MHD_Result h_blob_upload(srv *s, struct MHD_Connection *c, req *r) {
    (void)s; /* every route handler has the same signature */
    if (r->up_status) return send_req_err(c, r);
    char id[72];
    uint64_t size;
    bool existed;
    qd_err err;
    srv_upload *u = r->up;
    r->up = NULL;
    if (srv_upload_finish(u, id, &size, &existed, &err) != QD_OK)
        return send_err(c, r, 500, "internal", err.msg, NULL);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddNumberToObject(o, "size", (double)size);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(c, r, existed ? 200 : 201, t);
}

/* GET and HEAD /v1/blobs/{id}: whether the server holds a blob, so that a client can skip an
 * upload whose bytes are already here. */
static enum MHD_Result h_blob_get(srv *s, struct MHD_Connection *c, req *r) {
    if (!api_blob_id_valid(r->id))
        return send_err(c, r, 400, "invalid_value", "a blob id is \"sha256:<64 hex digits>\"", "id");
    uint64_t size;
    if (!srv_blob_exists(s->store, r->id, &size))
        return send_err(c, r, 404, "not_found", "no such blob", "id");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddNumberToObject(o, "size", (double)size);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(c, r, 200, t);
}

/* ---- POST /v1/jobs ---- */

static const char *const blob_fields[] = {"model", "calibration", "eval", "tokenizer"};
#define N_BLOB_FIELDS 4

static bool part_name_ok(const char *n) {
    size_t len = strlen(n);
    if (len == 0 || len >= sizeof((mp_part *)0)->name) return false;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)n[i]) || n[i] == '.' || n[i] == '_' || n[i] == '-'))
            return false;
    return true;
}

/* The post processor's callback: called with consecutive pieces of each part (a part's first
 * call has off 0, possibly with size 0). File parts stream into uploads; the spec part is
 * buffered (at most MAX_JSON_BODY). MHD_NO stops the parsing after req_fail. */
static enum MHD_Result mp_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size) {
    (void)kind;
    (void)content_type;
    req *r = cls;
    srv *s = r->s;
    if (r->up_status) return MHD_NO;
    const char *cur = r->mp_cur == MP_SPEC ? "spec" : r->mp_cur >= 0 ? r->parts[r->mp_cur].name : NULL;
    uint64_t cur_size = r->mp_cur == MP_SPEC ? r->body_len
                        : r->mp_cur >= 0 ? srv_upload_size(r->parts[r->mp_cur].up) : 0;
    if (off == 0 && (!cur || !key || strcmp(key, cur) || cur_size > 0)) { /* a new part */
        if (!key || !part_name_ok(key)) {
            req_fail(r, 400, "invalid_multipart", "parts",
                     "every part needs a name of 1-63 characters of [A-Za-z0-9._-]");
            return MHD_NO;
        }
        if (transfer_encoding && strcasecmp(transfer_encoding, "binary") &&
            strcasecmp(transfer_encoding, "8bit") && strcasecmp(transfer_encoding, "7bit")) {
            req_fail(r, 415, "unsupported_media_type", key,
                     "part %s: Content-Transfer-Encoding %.40s is not supported; send binary",
                     key, transfer_encoding);
            return MHD_NO;
        }
        bool dup = !strcmp(key, "spec") && r->have_spec;
        for (int i = 0; i < r->n_parts; i++) /* model parts repeat: a directory's files */
            dup |= !strcmp(r->parts[i].name, key) && strcmp(key, "model");
        if (dup) {
            req_fail(r, 400, "invalid_multipart", key, "part %s appears twice", key);
            return MHD_NO;
        }
        if (!strcmp(key, "spec")) {
            r->have_spec = true;
            r->mp_cur = MP_SPEC;
        } else {
            if (r->n_parts == MP_MAX_PARTS) {
                req_fail(r, 400, "invalid_multipart", key, "at most %d file parts", MP_MAX_PARTS);
                return MHD_NO;
            }
            qd_err err;
            mp_part *p = &r->parts[r->n_parts];
            memset(p, 0, sizeof *p);
            snprintf(p->name, sizeof p->name, "%s", key);
            snprintf(p->filename, sizeof p->filename, "%s", filename ? filename : "");
            p->up = srv_upload_begin(s->store, &err);
            if (!p->up) {
                req_fail(r, 500, "internal", key, "%s", err.msg);
                return MHD_NO;
            }
            r->mp_cur = r->n_parts++;
        }
    }
    if (size == 0) return MHD_YES;
    if (r->mp_cur == MP_SPEC) {
        if (r->body_len + size > MAX_JSON_BODY) {
            req_fail(r, 413, "payload_too_large", "spec", "the spec part is at most 1 MiB");
            return MHD_NO;
        }
        char *nb = realloc(r->body, r->body_len + size + 1);
        if (!nb) {
            req_fail(r, 500, "internal", "spec", "out of memory");
            return MHD_NO;
        }
        memcpy(nb + r->body_len, data, size);
        r->body = nb;
        r->body_len += size;
        r->body[r->body_len] = 0;
        return MHD_YES;
    }
    mp_part *p = &r->parts[r->mp_cur];
    return stream_write(s, r, p->up, data, size, p->name) ? MHD_YES : MHD_NO;
}

static enum MHD_Result json_begin(srv *s, struct MHD_Connection *c, req *r) {
    const char *ct = header(c, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ctype_is(ct, "multipart/form-data")) {
        /* the files plus a 1 MiB spec, and room for the part headers */
        uint64_t max_body = (uint64_t)MP_MAX_PARTS * s->cfg.max_upload_bytes + 2 * MAX_JSON_BODY;
        if (!admit_body(s, c, r, max_body)) return MHD_YES;
        r->mp_cur = MP_NONE;
        r->pp = MHD_create_post_processor(c, MP_BUFFER, mp_iter, r);
        if (!r->pp)
            return send_err(c, r, 400, "invalid_multipart",
                            "multipart/form-data needs a boundary parameter (of at most 70 "
                            "characters) in its Content-Type", "Content-Type");
        return MHD_YES;
    }
    if (!ctype_is(ct, "application/json"))
        return send_err(c, r, 415, "unsupported_media_type",
                        "send the job spec as Content-Type: application/json, or the files and a "
                        "spec part as multipart/form-data", "Content-Type");
    const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > MAX_JSON_BODY)
        return send_err(c, r, 413, "payload_too_large", "a job spec is at most 1 MiB", NULL);
    return MHD_YES;
}

static void json_chunk(req *r, const char *data, size_t n) {
    if (r->body_too_big) return;
    if (r->body_len + n > MAX_JSON_BODY) {
        r->body_too_big = true;
        free(r->body);
        r->body = NULL;
        return;
    }
    char *nb = realloc(r->body, r->body_len + n + 1);
    if (!nb) {
        r->body_too_big = true;
        return;
    }
    memcpy(nb + r->body_len, data, n);
    r->body = nb;
    r->body_len += n;
    r->body[r->body_len] = 0;
}

static void mp_chunk(req *r, const char *data, size_t n) {
    if (r->up_status) return; /* failed: drain the rest */
    if (MHD_post_process(r->pp, data, n) != MHD_YES)
        req_fail(r, 400, "invalid_multipart", NULL, "the multipart/form-data body is malformed");
}

static bool pending_has(const req *r, const char *id) {
    for (int i = 0; i < r->n_parts; i++)
        if (r->parts[i].up && !strcmp(r->parts[i].id, id)) return true;
    return false;
}

/* Validates a spec object and queues the job: the one path of both forms of POST /v1/jobs.
 * Blob ids that are parts of this (multipart) request count as present; those parts are
 * stored only once the spec has passed, so that a refused job leaves no blob behind. */
static enum MHD_Result submit_spec(srv *s, struct MHD_Connection *c, req *r, const cJSON *root) {
    api_spec spec;
    api_field_err fe;
    if (api_spec_from_json(root, &spec, &fe)) return send_err(c, r, 422, fe.code, fe.message, fe.field);
    if (spec.threads == 0) spec.threads = s->job_threads; /* stored, run and reported as chosen */
    if (spec.threads > s->cfg.worker_max_threads) {
        char m[96];
        snprintf(m, sizeof m, "threads must be at most %d on this server", s->cfg.worker_max_threads);
        return send_err(c, r, 422, "out_of_range", m, "threads");
    }
    if (spec.timeout_s > s->cfg.max_timeout_s) {
        char m[96];
        snprintf(m, sizeof m, "timeout_s must be at most %d on this server", s->cfg.max_timeout_s);
        return send_err(c, r, 422, "out_of_range", m, "timeout_s");
    }
    const char *ids[] = {spec.model, spec.calibration, spec.eval, spec.tokenizer};
    for (int i = 0; i < N_BLOB_FIELDS; i++)
        if (ids[i][0] && !pending_has(r, ids[i]) && !srv_blob_exists(s->store, ids[i], NULL)) {
            char m[160];
            snprintf(m, sizeof m, "no blob %s; upload it with POST /v1/blobs first", ids[i]);
            return send_err(c, r, 422, "blob_not_found", m, blob_fields[i]);
        }
    for (int i = 0; i < spec.n_model_files; i++) {
        const api_model_file *f = &spec.model_files[i];
        if (!pending_has(r, f->blob) && !srv_blob_exists(s->store, f->blob, NULL)) {
            char m[320];
            snprintf(m, sizeof m, "model: no blob %s for file \"%s\"; upload it with POST "
                                  "/v1/blobs first", f->blob, f->name);
            return send_err(c, r, 422, "blob_not_found", m, "model");
        }
    }
    /* The door: a job that cannot run is refused now, not minutes later in its worker. The disk
     * floor first (as for uploads), then what the pipeline checks before any work, asked of a
     * short-lived child (the server runs no numeric code). */
    if (srv_store_free_bytes(s->store) < s->cfg.min_free_bytes)
        return send_err(c, r, 507, "insufficient_storage",
                        "the server's disk is below its free-space floor (min_free_bytes); no job "
                        "is accepted until space is freed", NULL);
    wk_pending pend[MP_MAX_PARTS];
    int np = 0;
    for (int i = 0; i < r->n_parts; i++)
        if (r->parts[i].up) pend[np].id = r->parts[i].id, pend[np++].path = srv_upload_path(r->parts[i].up);
    api_field_err cfe;
    qd_err err;
    size_t mem = s->cfg.worker_mem_check ? s->cfg.worker_mem_bytes : 0;
    int cr = wk_check_spec(s->exe, srv_store_dir(s->store), &spec, pend, np, mem, CHECK_TIMEOUT_S,
                           &cfe, &err);
    if (cr == 1) return send_err(c, r, 422, cfe.code, cfe.message, cfe.field[0] ? cfe.field : NULL);
    if (cr != 0) {
        fprintf(stderr, "quantd serve: POST /v1/jobs: %s\n", err.msg);
        return send_err(c, r, 500, "internal", "the job's inputs could not be checked (the server log "
                                               "says why)", NULL);
    }
    for (int i = 0; i < r->n_parts; i++) {
        mp_part *p = &r->parts[i];
        char id[72];
        uint64_t size;
        bool existed;
        srv_upload *u = p->up;
        p->up = NULL;
        if (srv_upload_finish(u, id, &size, &existed, &err) != QD_OK) {
            mp_abort_parts(r);
            return send_err(c, r, 500, "internal", err.msg, p->name);
        }
    }
    char *json = NULL;
    int rc = srv_jobs_submit(s->jobs, &spec, &json, &err);
    if (rc == SRV_QUEUE_FULL) return send_err(c, r, 429, "queue_full", err.msg, NULL);
    if (rc != SRV_OK) return send_err(c, r, 500, "internal", err.msg, NULL);
    cJSON *o = cJSON_Parse(json);
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/jobs/%s",
             cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "id")));
    cJSON_Delete(o);
    return send_buf(c, r, 201, "application/json", json, strlen(json), MHD_HTTP_HEADER_LOCATION, loc);
}

static int part_index(const req *r, const char *name) {
    for (int i = 0; i < r->n_parts; i++)
        if (!strcmp(r->parts[i].name, name)) return i;
    return -1;
}

/* The final call of a multipart job: the body must have ended cleanly; the parts are hashed,
 * the spec's blob fields are taken from the parts (a field left out takes the part of its own
 * name; a field that holds a part's name takes that part), and every part must be used. */
static enum MHD_Result mp_finish(srv *s, struct MHD_Connection *c, req *r) {
    if (r->up_status) return send_req_err(c, r);
    bool clean = MHD_destroy_post_processor(r->pp) == MHD_YES;
    r->pp = NULL;
    if (!clean || (!r->have_spec && r->n_parts == 0)) {
        mp_abort_parts(r);
        return send_err(c, r, 400, "invalid_multipart",
                        clean ? "the multipart/form-data body has no parts"
                              : "the multipart/form-data body is malformed or cut short", NULL);
    }
    for (int i = 0; i < r->n_parts; i++) srv_upload_seal(r->parts[i].up, r->parts[i].id);
    cJSON *root = NULL;
    if (r->have_spec) {
        const char *endp = NULL;
        root = r->body ? cJSON_ParseWithLengthOpts(r->body, r->body_len + 1, &endp, true) : NULL;
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            mp_abort_parts(r);
            return send_err(c, r, 400, "invalid_json", "the spec part is not a JSON object", "spec");
        }
    } else {
        root = cJSON_CreateObject(); /* no spec part: every setting at its default */
    }
    int n_model = 0;
    for (int i = 0; i < r->n_parts; i++) n_model += !strcmp(r->parts[i].name, "model");
    if (n_model > 1) { /* a directory: {"filename": blob id} for the spec's own checks */
        if (cJSON_GetObjectItemCaseSensitive(root, "model")) {
            cJSON_Delete(root);
            mp_abort_parts(r);
            return send_err(c, r, 422, "invalid_value",
                            "model: the request has model parts (a directory) and the spec names "
                            "a model too; give one of them", "model");
        }
        cJSON *dir = cJSON_AddObjectToObject(root, "model");
        for (int i = 0; i < r->n_parts; i++) {
            mp_part *p = &r->parts[i];
            if (strcmp(p->name, "model")) continue;
            if (!p->filename[0]) {
                cJSON_Delete(root);
                mp_abort_parts(r);
                return send_err(c, r, 422, "invalid_value",
                                "model: with several model parts each needs a filename (its "
                                "path in the model directory)", "model");
            }
            /* a repeated filename stays two entries, so that the spec's check refuses it */
            cJSON_AddItemToObject(dir, p->filename, cJSON_CreateString(p->id));
            p->used = true;
        }
    }
    for (int f = 0; f < N_BLOB_FIELDS; f++) {
        if (n_model > 1 && f == 0) continue;
        cJSON *v = cJSON_GetObjectItemCaseSensitive(root, blob_fields[f]);
        int k = -1;
        if (!v) {
            k = part_index(r, blob_fields[f]);
        } else if (cJSON_IsString(v) && strncmp(v->valuestring, "sha256:", 7)) {
            k = part_index(r, v->valuestring);
            if (k < 0) {
                char m[200];
                snprintf(m, sizeof m, "%s is neither a blob id nor the name of a part of this "
                                      "request", blob_fields[f]);
                cJSON_Delete(root);
                mp_abort_parts(r);
                return send_err(c, r, 422, "invalid_value", m, blob_fields[f]);
            }
        }
        if (k < 0) continue;
        r->parts[k].used = true;
        cJSON_DeleteItemFromObjectCaseSensitive(root, blob_fields[f]);
        cJSON_AddStringToObject(root, blob_fields[f], r->parts[k].id);
    }
    for (int i = 0; i < r->n_parts; i++)
        if (!r->parts[i].used) {
            char m[200];
            snprintf(m, sizeof m, "part %s is not used: name a part model, calibration, eval or "
                                  "tokenizer, or name it in one of those spec fields",
                     r->parts[i].name);
            cJSON_Delete(root);
            mp_abort_parts(r);
            return send_err(c, r, 422, "unknown_field", m, r->parts[i].name);
        }
    enum MHD_Result ret = submit_spec(s, c, r, root);
    cJSON_Delete(root);
    mp_abort_parts(r); /* refused: the parts are dropped (accepted ones are already stored) */
    return ret;
}

static enum MHD_Result h_job_submit(srv *s, struct MHD_Connection *c, req *r) {
    if (r->pp) return mp_finish(s, c, r);
    if (r->body_too_big) return send_err(c, r, 413, "payload_too_large", "a job spec is at most 1 MiB", NULL);
    const char *endp = NULL;
    cJSON *root = r->body ? cJSON_ParseWithLengthOpts(r->body, r->body_len + 1, &endp, true) : NULL;
    if (!root) return send_err(c, r, 400, "invalid_json", "the body is not valid JSON", NULL);
    enum MHD_Result ret = submit_spec(s, c, r, root);
    cJSON_Delete(root);
    return ret;
}

static enum MHD_Result h_job_list(srv *s, struct MHD_Connection *c, req *r) {
    const char *state = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "state");
    const char *label = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "label");
    const char *off = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "offset");
    const char *lim = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit");
    api_state st;
    if (state && api_state_parse(state, &st))
        return send_err(c, r, 422, "invalid_value", "unknown state", "state");
    long offset = 0, limit = 50;
    char *e;
    if (off && (offset = strtol(off, &e, 10), *e || e == off || offset < 0 || offset > 100000000))
        return send_err(c, r, 422, "out_of_range", "offset must be a non-negative integer", "offset");
    if (lim && (limit = strtol(lim, &e, 10), *e || e == lim || limit < 1 || limit > 500))
        return send_err(c, r, 422, "out_of_range", "limit must be between 1 and 500", "limit");
    return send_json(c, r, 200, srv_jobs_list_json(s->jobs, state, label, (int)offset, (int)limit));
}

static enum MHD_Result h_job_get(srv *s, struct MHD_Connection *c, req *r) {
    char *t = qd_uuid_like(r->id) ? srv_jobs_get_json(s->jobs, r->id) : NULL;
    if (!t) return send_err(c, r, 404, "not_found", "no such job", "id");
    return send_json(c, r, 200, t);
}

static enum MHD_Result h_job_delete(srv *s, struct MHD_Connection *c, req *r) {
    if (!qd_uuid_like(r->id)) return send_err(c, r, 404, "not_found", "no such job", "id");
    qd_err err;
    int rc = srv_jobs_delete(s->jobs, r->id, &err);
    if (rc == SRV_NOT_FOUND) return send_err(c, r, 404, "not_found", "no such job", "id");
    if (rc == SRV_CONFLICT)
        return send_err(c, r, 409, "conflict", "the job has not finished; cancel it first", "state");
    if (rc != SRV_OK) return send_err(c, r, 500, "internal", err.msg, NULL);
    return send_buf(c, r, 204, NULL, NULL, 0, NULL, NULL);
}

static enum MHD_Result h_job_cancel(srv *s, struct MHD_Connection *c, req *r) {
    char *t = NULL;
    int rc = qd_uuid_like(r->id) ? srv_jobs_cancel(s->jobs, r->id, &t) : SRV_NOT_FOUND;
    if (rc == SRV_NOT_FOUND) return send_err(c, r, 404, "not_found", "no such job", "id");
    if (rc == SRV_CONFLICT) {
        free(t);
        return send_err(c, r, 409, "conflict", "the job has already finished", "state");
    }
    return send_json(c, r, 202, t);
}

static enum MHD_Result h_job_report(srv *s, struct MHD_Connection *c, req *r) {
    api_state st;
    if (need_job(s, c, r, &st) != MHD_YES || r->answered) return MHD_YES;
    char dir[PATH_MAX], p[PATH_MAX + 64], root[PATH_MAX + 32];
    srv_job_dir(s->store, r->id, dir, sizeof dir);
    snprintf(p, sizeof p, "%s/artifacts/report.json", dir);
    snprintf(root, sizeof root, "%s/artifacts", dir);
    if (access(p, R_OK) != 0) {
        if (!api_state_terminal(st))
            return send_err(c, r, 409, "not_ready", "the job has not finished yet", "state");
        return send_err(c, r, 404, "not_found", "this job has no report", NULL);
    }
    return serve_file(c, r, p, root, "application/json", false);
}

static enum MHD_Result h_artifact_list(srv *s, struct MHD_Connection *c, req *r) {
    api_state st;
    if (need_job(s, c, r, &st) != MHD_YES || r->answered) return MHD_YES;
    char dir[PATH_MAX], p[PATH_MAX + 32];
    srv_job_dir(s->store, r->id, dir, sizeof dir);
    snprintf(p, sizeof p, "%s/artifacts", dir);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "state", api_state_name(st));
    cJSON_AddItemToObject(o, "artifacts", srv_artifacts_json(p));
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(c, r, 200, t);
}

static enum MHD_Result h_artifact_get(srv *s, struct MHD_Connection *c, req *r) {
    api_state st;
    if (need_job(s, c, r, &st) != MHD_YES || r->answered) return MHD_YES;
    if (!artifact_name_ok(r->name))
        return send_err(c, r, 400, "invalid_value",
                        "artifact names are relative paths of [A-Za-z0-9._-] segments", "name");
    char dir[PATH_MAX], p[PATH_MAX * 2], root[PATH_MAX + 32];
    srv_job_dir(s->store, r->id, dir, sizeof dir);
    snprintf(root, sizeof root, "%s/artifacts", dir);
    snprintf(p, sizeof p, "%s/%s", root, r->name);
    return serve_file(c, r, p, root, content_type_for(r->name), true);
}

/* ---- SSE ---- */

typedef struct sse {
    srv *s;
    srv_job *job;
    int fd;
    off_t off;
    long id;   /* events consumed so far: the id of the last one sent */
    long skip; /* Last-Event-ID: events up to this id are not sent again */
    char *pend;
    size_t pend_len, pend_pos, pend_cap;
    double last_send;
    srv_job_watch w;
    bool started;
    int sock; /* the client's socket, watched for a hang-up while nothing is sent; -1: unknown */
} sse;

/* Whether the client has gone: a hang-up or error on its socket, or its end of the stream.
 * An SSE client sends nothing after its request, so readable means closed. Without this a
 * vanished client would hold its connection (and its per-address slot) until a write failed,
 * up to a keepalive interval later. */
static bool client_gone(int sock) {
    if (sock < 0) return false;
    struct pollfd p = {.fd = sock, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    char b;
    return recv(sock, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static void pend_add(sse *x, const char *data, size_t n) {
    if (x->pend_len + n > x->pend_cap) {
        size_t cap = x->pend_cap ? x->pend_cap : 4096;
        while (cap < x->pend_len + n) cap *= 2;
        char *np = realloc(x->pend, cap);
        if (!np) return;
        x->pend = np;
        x->pend_cap = cap;
    }
    memcpy(x->pend + x->pend_len, data, n);
    x->pend_len += n;
}

/* Turns complete new lines of events.jsonl into SSE events; returns true when any were read. */
static bool sse_read_file(sse *x) {
    char buf[65536];
    bool any = false;
    for (;;) {
        ssize_t k = pread(x->fd, buf, sizeof buf, x->off);
        if (k <= 0) return any;
        ssize_t used = 0;
        for (ssize_t i = 0; i < k; i++) {
            if (buf[i] != '\n') continue;
            size_t len = (size_t)(i - used);
            const char *line = buf + used;
            used = i + 1;
            if (len == 0) continue;
            x->id++;
            any = true;
            if (x->id <= x->skip) continue;
            char type[32] = "message";
            cJSON *o = cJSON_ParseWithLength(line, len);
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "type"));
            if (t) snprintf(type, sizeof type, "%s", t);
            cJSON_Delete(o);
            char head[96];
            int hn = snprintf(head, sizeof head, "id: %ld\nevent: %s\ndata: ", x->id, type);
            pend_add(x, head, (size_t)hn);
            pend_add(x, line, len);
            pend_add(x, "\n\n", 2);
        }
        if (used == 0) {
            if (k == (ssize_t)sizeof buf) x->off += k; /* a line longer than 64 KiB: skip it */
            return any;
        }
        x->off += used;
        if (x->pend_len > 256 * 1024) return true;
    }
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    sse *x = cls;
    if (!x->started) {
        x->started = true;
        const char *hello = "retry: 2000\n\n";
        pend_add(x, hello, strlen(hello));
    }
    for (;;) {
        if (x->pend_pos < x->pend_len) {
            size_t n = x->pend_len - x->pend_pos;
            if (n > max) n = max;
            memcpy(out, x->pend + x->pend_pos, n);
            x->pend_pos += n;
            if (x->pend_pos == x->pend_len) x->pend_pos = x->pend_len = 0;
            x->last_send = qd_now();
            return (ssize_t)n;
        }
        srv_job_watch w;
        srv_jobs_watch(x->s->jobs, x->job, &w);
        if (sse_read_file(x)) continue;
        if (w.terminal || w.gone) return MHD_CONTENT_READER_END_OF_STREAM;
        if (client_gone(x->sock)) return MHD_CONTENT_READER_END_WITH_ERROR;
        /* comments keep proxies from timing the stream out and reveal dead clients */
        if (qd_now() - x->last_send > 15) {
            pend_add(x, ": keepalive\n\n", 13);
            continue;
        }
        srv_jobs_wait(x->s->jobs, x->job, &w, 0.5);
    }
}

static void sse_free(void *cls) {
    sse *x = cls;
    if (x->fd >= 0) close(x->fd);
    free(x->pend);
    free(x);
}

static enum MHD_Result h_job_events(srv *s, struct MHD_Connection *c, req *r) {
    srv_job *job = qd_uuid_like(r->id) ? srv_jobs_find(s->jobs, r->id) : NULL;
    if (!job) return send_err(c, r, 404, "not_found", "no such job", "id");
    const char *last = header(c, "Last-Event-ID");
    if (!last || !*last) last = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "last_event_id");
    long skip = 0;
    if (last && *last) { /* an empty Last-Event-ID is no id at all (the HTML spec's reset) */
        char *e;
        skip = strtol(last, &e, 10);
        if (*e || e == last || skip < 0)
            return send_err(c, r, 400, "invalid_value", "Last-Event-ID must be an event id",
                            "Last-Event-ID");
    }
    char dir[PATH_MAX], p[PATH_MAX + 32];
    srv_job_dir(s->store, r->id, dir, sizeof dir);
    snprintf(p, sizeof p, "%s/events.jsonl", dir);
    sse *x = calloc(1, sizeof *x);
    x->s = s;
    x->job = job;
    x->skip = skip;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    x->sock = ci ? ci->connect_fd : -1;
    x->fd = open(p, O_RDONLY | O_CLOEXEC);
    x->last_send = qd_now();
    if (x->fd < 0) {
        sse_free(x);
        return send_err(c, r, 404, "not_found", "the job has no event log", NULL);
    }
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_reader, x, sse_free);
    if (!resp) {
        sse_free(x);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return queue_resp(c, r, 200, resp);
}

/* ---- routing ---- */

#define R(m, p, role, fn, body) {m, p, m " " p, role, fn, body}
static const route routes[] = {
    R("GET", "/", SRV_ROLE_NONE, h_dashboard, false),
    R("GET", "/favicon.ico", SRV_ROLE_NONE, h_favicon, false),
    R("GET", "/healthz", SRV_ROLE_NONE, h_healthz, false),
    R("GET", "/metrics", SRV_ROLE_READ, h_metrics, false),
    R("GET", "/v1/openapi.yaml", SRV_ROLE_NONE, h_openapi, false),
    R("POST", "/v1/blobs", SRV_ROLE_SUBMIT, h_blob_upload, true),
    R("GET", "/v1/blobs/{id}", SRV_ROLE_READ, h_blob_get, false),
    R("POST", "/v1/jobs", SRV_ROLE_SUBMIT, h_job_submit, true),
    R("GET", "/v1/jobs", SRV_ROLE_READ, h_job_list, false),
    R("GET", "/v1/jobs/{id}", SRV_ROLE_READ, h_job_get, false),
    R("DELETE", "/v1/jobs/{id}", SRV_ROLE_ADMIN, h_job_delete, false),
    R("POST", "/v1/jobs/{id}/cancel", SRV_ROLE_SUBMIT, h_job_cancel, false),
    R("GET", "/v1/jobs/{id}/events", SRV_ROLE_READ, h_job_events, false),
    R("GET", "/v1/jobs/{id}/report", SRV_ROLE_READ, h_job_report, false),
    R("GET", "/v1/jobs/{id}/artifacts", SRV_ROLE_READ, h_artifact_list, false),
    R("GET", "/v1/jobs/{id}/artifacts/{name}", SRV_ROLE_READ, h_artifact_get, false),
};
#undef R
#define N_ROUTES ((int)(sizeof routes / sizeof routes[0]))

int srv_route_count(void) { return N_ROUTES; }
const char *srv_route_method(int i) { return i >= 0 && i < N_ROUTES ? routes[i].method : NULL; }
const char *srv_route_path(int i) { return i >= 0 && i < N_ROUTES ? routes[i].path : NULL; }

/* Matches url against a pattern; {id} takes one segment, a final {name} the rest of the path. */
static bool match(const char *pat, const char *url, req *r) {
    const char *p = pat, *u = url;
    while (*p) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            bool last = close[1] == 0;
            bool is_name = !strncmp(p, "{name}", 6);
            const char *end = (last && is_name) ? u + strlen(u) : strchrnul(u, '/');
            size_t n = (size_t)(end - u);
            if (n == 0) return false;
            char *dst = is_name ? r->name : r->id;
            size_t cap = is_name ? sizeof r->name : sizeof r->id;
            if (n >= cap) n = cap - 1; /* too long: fails validation later */
            memcpy(dst, u, n);
            dst[n] = 0;
            if (n >= 36 && !is_name) dst[n] = 0;
            p = close + 1;
            u = end;
        } else {
            if (*p != *u) return false;
            p++;
            u++;
        }
    }
    return *u == 0;
}

/* 0 when allowed; else the status to send (401 or 403). */
static int authorize(srv *s, struct MHD_Connection *c, srv_role need) {
    if (!s->auth || need == SRV_ROLE_NONE) return 0;
    const char *h = header(c, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return 401;
    const char *tok = h + 7;
    while (*tok == ' ') tok++;
    srv_role have = srv_auth_check(s->auth, tok);
    if (have == SRV_ROLE_NONE) return 401;
    return have >= need ? 0 : 403;
}

/* Whether the request announces a body: a Content-Length other than 0 (the intake refuses
 * Transfer-Encoding and any Content-Length that is not a decimal number; read as admit_body
 * reads it). */
static bool has_body(struct MHD_Connection *c) {
    const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return cl && strtoull(cl, NULL, 10) != 0;
}

/* Routing, auth and the checks that need no body; answers body-less routes at once. */
static enum MHD_Result route_request(srv *s, struct MHD_Connection *c, req *r, const char *url,
                                     const char *method) {
    r->routed = true;
    const char *m = strcmp(method, "HEAD") ? method : "GET";
    bool path_known = false;
    char allow[64] = "";
    for (int i = 0; i < N_ROUTES; i++) {
        if (!match(routes[i].path, url, r)) continue;
        path_known = true;
        if (!strcmp(routes[i].method, m)) {
            r->route = i;
            break;
        }
        size_t al = strlen(allow);
        snprintf(allow + al, sizeof allow - al, "%s%s", al ? ", " : "", routes[i].method);
    }
    if (r->route < 0) {
        if (!path_known) return send_err(c, r, 404, "not_found", "no such endpoint", NULL);
        char *b = api_error_body("method_not_allowed", "method not allowed here", NULL);
        return send_buf(c, r, 405, "application/json", b, strlen(b), MHD_HTTP_HEADER_ALLOW, allow);
    }
    const route *rt = &routes[r->route];
    int a = authorize(s, c, rt->role);
    if (a == 401) return send_err(c, r, 401, "unauthorized", "a valid bearer token is required", NULL);
    if (a == 403) {
        char m2[96];
        snprintf(m2, sizeof m2, "this needs the %s role", srv_role_name(rt->role));
        return send_err(c, r, 403, "forbidden", m2, NULL);
    }
    if (rt->fn == h_blob_upload) return blob_begin(s, c, r);
    if (rt->fn == h_job_submit) return json_begin(s, c, r);
    if (!rt->body && !has_body(c)) return rt->fn(s, c, r);
    return MHD_YES;
}

/* The first call of a request: its headers are in, and the intake has checked them already
 * (request line, Host, framing: head.h). */
static enum MHD_Result first_call(srv *s, struct MHD_Connection *c, req *r, const char *url,
                                  const char *method) {
    if (!srv_guard_request_begin(s->guard, r->gc, header(c, "X-Forwarded-For"))) {
        r->routed = true;
        char m[128];
        snprintf(m, sizeof m, "more than %d requests at once from this client (per_ip_connections)",
                 s->cfg.per_ip_connections);
        return send_err(c, r, 429, "too_many_requests", m, NULL);
    }
    /* A request that may carry a body is judged on its headers alone, so that a refusal
     * (401, 413, 415) goes out before the body is sent. Other requests are answered on the
     * next call, as libmicrohttpd treats an answer queued this early as a refusal of the
     * body. A GET or DELETE that does carry a body is
     * routed now too; its body is dropped and it is answered once the body has ended
     * (libmicrohttpd cannot queue an answer while a body is still arriving). */
    if (!has_body(c) && strcmp(method, "POST") && strcmp(method, "PUT") && strcmp(method, "PATCH"))
        return MHD_YES;
    enum MHD_Result ret = route_request(s, c, r, url, method);
    if (!r->answered && r->route >= 0 && !routes[r->route].body) r->drain = true;
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
    (void)version;
    srv *s = cls;
    req *r = *req_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *req_cls = r;
        r->s = s;
        r->t0 = qd_now();
        r->route = -1;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r->gc = ci ? ci->socket_context : NULL;
        enum MHD_Result ret = first_call(s, c, r, url, method);
        if (r->answered || !has_body(c)) srv_guard_body_done(s->guard, r->gc);
        return ret;
    }
    if (*upload_data_size) srv_guard_body(s->guard, r->gc, *upload_data_size);
    else srv_guard_body_done(s->guard, r->gc); /* the final call: the body has ended */
    if (!r->routed) return route_request(s, c, r, url, method);
    if (r->answered) {
        *upload_data_size = 0; /* answered early; whatever still arrives is dropped */
        return MHD_YES;
    }
    const route *rt = &routes[r->route];
    if (*upload_data_size) {
        if (r->drain) {} /* a body nobody reads */
        else if (rt->fn == h_blob_upload) blob_chunk(s, r, upload_data, *upload_data_size);
        else if (rt->fn == h_job_submit && r->pp) mp_chunk(r, upload_data, *upload_data_size);
        else if (rt->fn == h_job_submit) json_chunk(r, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    return rt->fn(s, c, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    (void)toe;
    srv *s = cls;
    req *r = *req_cls;
    if (!r) return;
    /* an upload cut off by the client or a timeout: no partial blob may stay behind */
    mp_abort_parts(r);
    MHD_destroy_post_processor(r->pp);
    free(r->body);
    srv_guard_request_end(s->guard, r->gc);
    srv_metrics_request(s->metrics, r->route, r->answered ? r->status : 499, qd_now() - r->t0);
    free(r);
    *req_cls = NULL;
}

/* ---- start and stop ---- */

static bool addr_is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) return true;
        if (IN6_IS_ADDR_V4MAPPED(a)) return a->s6_addr[12] == 127;
    }
    return false;
}

/* Binds ADDR:PORT ("[v6]:PORT" for IPv6). Returns the listening fd, or -1 with err set. */
static int bind_listen(const char *spec, bool *loopback, char *bound, size_t bn, qd_err *err) {
    char host[128], port[16];
    const char *colon = strrchr(spec, ':');
    if (!colon) return qd_errf(err, "listen address '%s' is not ADDR:PORT", spec), -1;
    size_t hl = (size_t)(colon - spec);
    if (hl >= sizeof host || strlen(colon + 1) >= sizeof port || !colon[1])
        return qd_errf(err, "listen address '%s' is not ADDR:PORT", spec), -1;
    memcpy(host, spec, hl);
    host[hl] = 0;
    snprintf(port, sizeof port, "%s", colon + 1);
    char *h = host;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h[hl - 1] = 0;
        h++;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    int rc = getaddrinfo(*h ? h : NULL, port, &hints, &ai);
    if (rc) return qd_errf(err, "listen address '%s': %s", spec, gai_strerror(rc)), -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); /* the intake accepts until EAGAIN */
    int one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 256) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return qd_errf(err, "cannot listen on %s: %s", spec, strerror(e)), -1;
    }
    *loopback = addr_is_loopback(ai->ai_addr);
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    char a[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof a);
        snprintf(bound, bn, "[%s]:%u", a, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, a, sizeof a);
        snprintf(bound, bn, "%s:%u", a, ntohs(s4->sin_port));
    }
    return fd;
}

/* The intake's hand-over: the guard's record waits in s->handoff until libmicrohttpd announces the
 * connection (on_connection). */
static bool handoff_put(srv *s, int fd, srv_guard_conn *gc) {
    pthread_mutex_lock(&s->handoff_mu);
    bool ok = true;
    if (s->n_handoff == s->cap_handoff) {
        size_t cap = s->cap_handoff ? 2 * s->cap_handoff : 16;
        struct handoff *h = realloc(s->handoff, cap * sizeof *h);
        if (h) s->handoff = h, s->cap_handoff = cap;
        else ok = false;
    }
    if (ok) s->handoff[s->n_handoff++] = (struct handoff){fd, gc};
    pthread_mutex_unlock(&s->handoff_mu);
    return ok;
}

static srv_guard_conn *handoff_take(srv *s, int fd, bool *found) {
    srv_guard_conn *gc = NULL;
    *found = false;
    pthread_mutex_lock(&s->handoff_mu);
    for (size_t i = 0; i < s->n_handoff; i++)
        if (s->handoff[i].fd == fd) {
            gc = s->handoff[i].gc;
            s->handoff[i] = s->handoff[--s->n_handoff];
            *found = true;
            break;
        }
    pthread_mutex_unlock(&s->handoff_mu);
    return gc;
}

static bool intake_hand_on(void *cls, int fd, const struct sockaddr *sa, socklen_t salen,
                         srv_guard_conn *gc) {
    srv *s = cls;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    if (di && di->num_connections >= (unsigned)s->cfg.max_connections) return false;
    if (!handoff_put(s, fd, gc)) return false;
    if (MHD_add_connection(s->d, fd, sa, salen) != MHD_YES) {
        /* the library has closed fd; the record is ours to free unless it was announced */
        bool found;
        srv_guard_conn *g = handoff_take(s, fd, &found);
        if (found) srv_guard_close(s->guard, g);
    }
    return true;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    srv *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *f = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        bool found = false;
        *socket_context = f ? handoff_take(s, f->connect_fd, &found) : NULL;
    } else {
        srv_guard_close(s->guard, *socket_context);
        *socket_context = NULL;
    }
}

int srv_main(const srv_config *cfg) {
    srv s;
    memset(&s, 0, sizeof s);
    s.cfg = *cfg;
    qd_err err;
    char bound[160];
    bool loopback = false;
    int lfd = bind_listen(cfg->listen, &loopback, bound, sizeof bound, &err);
    if (lfd < 0) {
        fprintf(stderr, "quantd serve: %s\n", err.msg);
        return 1;
    }
    srv_guard_opts go = {.per_ip = cfg->per_ip_connections,
                         .header_timeout_s = cfg->header_timeout_s,
                         .idle_timeout_s = cfg->conn_timeout_s,
                         .body_min_rate = (double)cfg->body_min_rate,
                         .body_grace_s = cfg->body_grace_s,
                         .trusted_proxies = cfg->trusted_proxies};
    s.guard = srv_guard_new(&go, &err);
    if (!s.guard) {
        fprintf(stderr, "quantd serve: %s\n", err.msg);
        close(lfd);
        return 1;
    }
    if (cfg->token_file[0]) {
        s.auth = srv_auth_load(cfg->token_file, &err);
        if (!s.auth) {
            fprintf(stderr, "quantd serve: token file: %s\n", err.msg);
            close(lfd);
            return 1;
        }
    } else if (!loopback) {
        fprintf(stderr, "quantd serve: refusing to listen on %s without a token file: set "
                        "token_file (--tokens FILE) or listen on a loopback address\n", bound);
        close(lfd);
        return 1;
    }
    s.store = srv_store_open(cfg->data_dir, &err);
    if (!s.store) {
        fprintf(stderr, "quantd serve: %s\n", err.msg);
        close(lfd);
        srv_auth_free(s.auth);
        return 1;
    }
    char exe[PATH_MAX];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el <= 0) {
        fprintf(stderr, "quantd serve: cannot find my own binary: %s\n", strerror(errno));
        return 1;
    }
    exe[el] = 0;
    snprintf(s.exe, sizeof s.exe, "%s", exe);
    /* job_threads 0: the CPUs this server may use shared by its local workers; a Slurm job's
     * node is unknown here, so 1 there */
    s.job_threads = cfg->job_threads;
    if (s.job_threads <= 0) {
        int n = strcmp(cfg->dispatcher, "slurm") ? qd_pool_online_cpus() / (cfg->workers > 0 ? cfg->workers : 1) : 1;
        s.job_threads = n < 1 ? 1 : n > cfg->worker_max_threads ? cfg->worker_max_threads : n;
    }
    const char *names[N_ROUTES];
    for (int i = 0; i < N_ROUTES; i++) names[i] = routes[i].name;
    s.metrics = srv_metrics_new(N_ROUTES, names);

    /* SIGINT/SIGTERM are taken by sigwait below; every thread created from here on inherits
     * the blocked mask (workers reset it in the child before exec). */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    char slurm_dir[PATH_MAX + 16];
    snprintf(slurm_dir, sizeof slurm_dir, "%s/slurm", srv_store_dir(s.store));
    wk_disp_opts dopt = {.kind = cfg->dispatcher, .exe = exe, .mem_limit = cfg->worker_mem_bytes,
                         .slurm = {.partition = cfg->slurm_partition, .account = cfg->slurm_account,
                                   .qos = cfg->slurm_qos, .sbatch_args = cfg->slurm_sbatch_args,
                                   .template_path = cfg->slurm_template,
                                   .quantd_path = cfg->slurm_quantd, .poll_s = cfg->slurm_poll_s,
                                   .pending_down_s = cfg->slurm_pending_down_s,
                                   .state_dir = slurm_dir}};
    wk_disp *disp = wk_disp_new(&dopt, &err);
    if (!disp) {
        fprintf(stderr, "quantd serve: %s\n", err.msg);
        return 1;
    }
    srv_jobs_opts jo = {.store = s.store, .metrics = s.metrics, .disp = disp, .workers = cfg->workers,
                        .worker_mem_bytes = cfg->worker_mem_bytes, .grace_s = cfg->cancel_grace_s,
                        .max_queue = cfg->max_queue, .max_attempts = cfg->max_attempts};
    s.jobs = srv_jobs_start(&jo, &err);
    if (!s.jobs) {
        fprintf(stderr, "quantd serve: %s\n", err.msg);
        wk_disp_free(disp);
        return 1;
    }
    /* Connections come from the intake (intake.h), which accepts them and checks each head before
     * handing it on; per-address limits and the header/body deadlines are the guard's (intake,
     * on_connection), not libmicrohttpd's per-IP limit. */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ITC | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG;
    pthread_mutex_init(&s.handoff_mu, NULL);
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, &s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->conn_timeout_s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, &s,
        /* a larger connection pool means larger reads per upload chunk */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(1u << 20),
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512u << 10),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, &s,
        /* the library's own strict mode too (Host on HTTP/1.1, no spaces in the target): the
         * intake refuses all of that first, in JSON, so the library never has to */
        MHD_OPTION_STRICT_FOR_CLIENT, (int)1,
        MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "quantd serve: libmicrohttpd did not start on %s\n", bound);
        srv_jobs_free(s.jobs);
        wk_disp_free(disp);
        return 1;
    }
    s.d = d;
    srv_intake_opts intake_o = {.listen_fd = lfd, .max_pending = cfg->max_connections,
                            .idle_timeout_s = cfg->conn_timeout_s, .guard = s.guard,
                            .metrics = s.metrics, .hand_on = intake_hand_on, .cls = &s};
    srv_intake *intake = srv_intake_start(&intake_o, &err);
    if (!intake) {
        fprintf(stderr, "quantd serve: %s\n", err.msg);
        MHD_stop_daemon(d);
        srv_jobs_free(s.jobs);
        wk_disp_free(disp);
        return 1;
    }
    char addrfile[PATH_MAX + 32], line[200];
    snprintf(addrfile, sizeof addrfile, "%s/server.addr", srv_store_dir(s.store));
    int ln = snprintf(line, sizeof line, "%s\n", bound);
    qd_write_file_atomic(addrfile, line, (size_t)ln, NULL);
    printf("listening on %s\n", bound);
    fflush(stdout);
    fprintf(stderr, "quantd serve: data %s, %d worker%s, auth %s\n", srv_store_dir(s.store),
            cfg->workers, cfg->workers == 1 ? "" : "s", s.auth ? "on" : "off (loopback only)");
    char where[1024 + PATH_MAX];
    wk_disp_describe(disp, where, sizeof where);
    fprintf(stderr, "quantd serve: dispatcher %s: %s\n", wk_disp_kind(disp), where);
    if (wk_disp_detached(disp))
        fprintf(stderr, "quantd serve: the data directory %s must be on a filesystem that the "
                        "compute nodes share, at the same path: workers there read job.json and the "
                        "blobs and write events.jsonl, checkpoints and artifacts into it\n",
                srv_store_dir(s.store));

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "quantd serve: %s: stopping\n", strsignal(sig));
    unlink(addrfile);
    srv_intake_stop(intake); /* no new connections; closes the listening socket */
    srv_jobs_close_watchers(s.jobs);
    MHD_stop_daemon(d);
    free(s.handoff);
    pthread_mutex_destroy(&s.handoff_mu);
    srv_guard_stats gs = srv_guard_get_stats(s.guard);
    fprintf(stderr, "quantd serve: connections closed by the guard: %llu header deadlines, %llu "
                    "slow bodies, %llu idle displaced, %llu refused; %llu requests over the "
                    "per-client limit\n",
            (unsigned long long)gs.header_timeouts, (unsigned long long)gs.body_too_slow,
            (unsigned long long)gs.evicted, (unsigned long long)gs.refused,
            (unsigned long long)gs.client_limited);
    srv_guard_free(s.guard);
    srv_jobs_free(s.jobs); /* local workers checkpoint and their jobs are requeued */
    wk_disp_free(disp);
    srv_metrics_free(s.metrics);
    srv_store_close(s.store);
    srv_auth_free(s.auth);
    return 0;
}
