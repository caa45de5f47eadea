/* libcurl plumbing for `quantd client`. One easy handle per request: the client makes a
 * handful of requests per run, so connection reuse is not worth shared state. Plain requests
 * carry a whole-request timeout; uploads, downloads and SSE streams instead abort when the
 * transfer stalls (low-speed limit), since their length is unbounded. */
#include "cli/client.h"
#include "base/fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

/* An upload or download making no progress for this long is treated as a dead connection. The
 * server sends an SSE keep-alive comment every 15 s, so a live stream never trips it. */
#define STALL_S 60L
/* A response body held in memory (JSON answers, error bodies) is bounded. */
#define MAX_BODY (64u << 20)

void qc_resp_free(qc_resp *r) {
    if (!r) return;
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

int qc_init(void) { return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1; }

const char *qc_human_size(double b, char *buf, size_t n) {
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4) {
        b /= 1000;
        i++;
    }
    if (i == 0) snprintf(buf, n, "%.0f B", b);
    else snprintf(buf, n, "%.1f %s", b, u[i]);
    return buf;
}

/* ---- memory sink ---- */

typedef struct sink {
    qc_resp *r;
    bool too_big;
} sink;

static size_t mem_write(char *p, size_t sz, size_t nm, void *ud) {
    sink *s = ud;
    size_t n = sz * nm;
    qc_resp *r = s->r;
    if (r->len + n > MAX_BODY) {
        s->too_big = true;
        return 0;
    }
    char *nb = realloc(r->body, r->len + n + 1);
    if (!nb) return 0;
    memcpy(nb + r->len, p, n);
    r->body = nb;
    r->len += n;
    r->body[r->len] = 0;
    return n;
}

/* ---- progress lines ---- */

typedef struct progress {
    const char *label;
    bool upload;
    bool tty;
    int last_step; /* non-tty: last quarter printed */
    double last_t;
    curl_off_t last_now;
} progress;

static void progress_print(progress *p, curl_off_t now, curl_off_t total, bool done) {
    char a[32], b[32];
    qc_human_size((double)now, a, sizeof a);
    qc_human_size((double)total, b, sizeof b);
    int pct = total > 0 ? (int)(100.0 * (double)now / (double)total) : 0;
    if (p->tty) {
        int width = 30, fill = total > 0 ? (int)((double)width * (double)now / (double)total) : 0;
        char bar[40];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r  %s %s [%s] %3d%% %s of %s%s", p->upload ? "upload" : "download",
                p->label, bar, pct, a, b, done ? "\n" : "");
    } else {
        fprintf(stderr, "  %s %s: %d%% (%s of %s)\n", p->upload ? "upload" : "download", p->label,
                pct, a, b);
    }
    fflush(stderr);
}

static int xferinfo(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                    curl_off_t ulnow) {
    progress *p = ud;
    curl_off_t now = p->upload ? ulnow : dlnow, total = p->upload ? ultotal : dltotal;
    if (total <= 0 || now == p->last_now) return 0;
    p->last_now = now;
    if (p->tty) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
        if (t - p->last_t < 0.1 && now < total) return 0;
        p->last_t = t;
        progress_print(p, now, total, false);
    } else {
        /* a log file gets a line per quarter, not a line per chunk */
        int step = (int)(4.0 * (double)now / (double)total);
        if (step > p->last_step && step < 4) {
            p->last_step = step;
            progress_print(p, now, total, false);
        }
    }
    return 0;
}

/* ---- common set-up ---- */

static CURL *easy_new(const qc_conn *c, const char *path, struct curl_slist **hdrs, char *errbuf) {
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    size_t n = strlen(c->url) + strlen(path) + 1;
    char *url = malloc(n);
    if (!url) {
        curl_easy_cleanup(h);
        return NULL;
    }
    snprintf(url, n, "%s%s", c->url, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    free(url); /* curl copies it */
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, c->connect_timeout_s > 0 ? c->connect_timeout_s : 10L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "quantd-client/1");
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (c->token[0]) {
        char a[600];
        snprintf(a, sizeof a, "Authorization: Bearer %s", c->token);
        *hdrs = curl_slist_append(*hdrs, a);
    }
    /* no "Expect: 100-continue" round trip: the server answers early refusals on the headers */
    *hdrs = curl_slist_append(*hdrs, "Expect:");
    return h;
}

/* Runs the transfer; fills r->status or r->error. 0 when an answer came back. */
static int easy_run(CURL *h, struct curl_slist *hdrs, const char *errbuf, qc_resp *r) {
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    int ret = 0;
    if (rc != CURLE_OK) {
        if (rc == CURLE_WRITE_ERROR && status > 0) {
            /* our own callback stopped it (sink full, local file): an answer did come */
            r->status = r->status < 0 ? r->status : status;
        } else {
            snprintf(r->error, sizeof r->error, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
            r->status = 0;
            ret = -1;
        }
    } else {
        r->status = status;
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return ret;
}

int qc_request(const qc_conn *c, const char *method, const char *path, const char *ctype,
               const char *body, size_t body_len, bool nobody, qc_resp *r) {
    memset(r, 0, sizeof *r);
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    CURL *h = easy_new(c, path, &hdrs, errbuf);
    if (!h) {
        snprintf(r->error, sizeof r->error, "cannot set up a request");
        return -1;
    }
    sink s = {r, false};
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (nobody) curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    if (c->timeout_s > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT, c->timeout_s);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, mem_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    if (ctype) {
        char ct[128];
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
        hdrs = curl_slist_append(hdrs, ct);
    }
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    int ret = easy_run(h, hdrs, errbuf, r);
    if (s.too_big) snprintf(r->error, sizeof r->error, "the answer is larger than %u bytes", MAX_BODY);
    return ret;
}

/* A file's upload or download: given up when no byte moves for STALL_S seconds, with a
 * progress line on stderr when c asks for one. */
static void long_transfer(CURL *h, const qc_conn *c, progress *p) {
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, STALL_S);
    if (c->progress) {
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, xferinfo);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, p);
    }
}

/* ---- upload ---- */

typedef struct upsrc {
    FILE *f;
    bool read_error;
} upsrc;

static size_t file_read(char *buf, size_t sz, size_t nm, void *ud) {
    upsrc *u = ud;
    size_t n = fread(buf, 1, sz * nm, u->f);
    if (n == 0 && ferror(u->f)) {
        u->read_error = true;
        return CURL_READFUNC_ABORT;
    }
    return n;
}

int qc_upload_file(const qc_conn *c, const char *path_url, const char *file, uint64_t size,
                   const char *label, qc_resp *r) {
    memset(r, 0, sizeof *r);
    upsrc u = {fopen(file, "rb"), false};
    if (!u.f) {
        snprintf(r->error, sizeof r->error, "%s: %s", file, strerror(errno));
        r->status = -1;
        return -1;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    CURL *h = easy_new(c, path_url, &hdrs, errbuf);
    if (!h) {
        fclose(u.f);
        snprintf(r->error, sizeof r->error, "cannot set up a request");
        return -1;
    }
    sink s = {r, false};
    progress p = {.label = label, .upload = true, .tty = isatty(2), .last_step = 0};
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, file_read);
    curl_easy_setopt(h, CURLOPT_READDATA, &u);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)size);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, mem_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    long_transfer(h, c, &p);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/octet-stream");
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    int ret = easy_run(h, hdrs, errbuf, r);
    fclose(u.f);
    if (u.read_error) {
        snprintf(r->error, sizeof r->error, "%s: read error", file);
        r->status = -1;
        return -1;
    }
    if (ret == 0 && c->progress && r->status / 100 == 2) progress_print(&p, (curl_off_t)size, (curl_off_t)size, true);
    return ret;
}

/* ---- download ---- */

typedef struct dlsink {
    CURL *h;
    FILE *f;
    sink mem;
    bool write_error;
} dlsink;

static size_t dl_write(char *p, size_t sz, size_t nm, void *ud) {
    dlsink *d = ud;
    long status = 0;
    curl_easy_getinfo(d->h, CURLINFO_RESPONSE_CODE, &status);
    if (status / 100 != 2) return mem_write(p, sz, nm, &d->mem); /* an error body: keep it */
    size_t n = sz * nm;
    if (fwrite(p, 1, n, d->f) != n) {
        d->write_error = true;
        return 0;
    }
    return n;
}

int qc_download(const qc_conn *c, const char *path_url, const char *dest, const char *label,
                qc_resp *r) {
    memset(r, 0, sizeof *r);
    qd_atomic_file af;
    qd_err err;
    if (qd_atomic_open(&af, dest, &err)) {
        snprintf(r->error, sizeof r->error, "%.255s", err.msg);
        r->status = -1;
        return 0;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    CURL *h = easy_new(c, path_url, &hdrs, errbuf);
    if (!h) {
        qd_atomic_abort(&af);
        snprintf(r->error, sizeof r->error, "cannot set up a request");
        return -1;
    }
    dlsink d = {h, af.f, {r, false}, false};
    progress p = {.label = label, .upload = false, .tty = isatty(2), .last_step = 0};
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, dl_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &d);
    long_transfer(h, c, &p);
    int ret = easy_run(h, hdrs, errbuf, r);
    if (d.write_error) {
        qd_atomic_abort(&af);
        snprintf(r->error, sizeof r->error, "%s: write failed", dest);
        r->status = -1;
        ret = 0;
    } else if (ret == 0 && r->status / 100 == 2) {
        if (qd_atomic_commit(&af, &err)) {
            snprintf(r->error, sizeof r->error, "%.255s", err.msg);
            r->status = -1;
        }
    } else {
        qd_atomic_abort(&af);
    }
    return ret;
}

/* ---- server-sent events ---- */

typedef struct sse {
    CURL *h;
    qc_event_fn fn;
    void *ctx;
    long *last_id;
    sink err;          /* an error answer's body */
    char *line;        /* the line being assembled */
    size_t line_len, line_cap;
    char *data;        /* the event's data lines joined by \n */
    size_t data_len, data_cap;
    char type[64];
    long id;
    bool stopped;
    double deadline;
    bool timed_out;
} sse;

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 1024;
    while (nc < need) nc *= 2;
    if (nc > MAX_BODY) return -1;
    char *nb = realloc(*buf, nc);
    if (!nb) return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* One complete line of the stream (no terminator). Returns -1 to abort. */
static int sse_line(sse *s, char *l, size_t n) {
    if (n == 0) { /* blank line: dispatch */
        if (s->data_len > 0) {
            s->data[s->data_len - 1] = 0; /* drop the last joining \n */
            if (s->id >= 0) *s->last_id = s->id;
            qc_event e = {s->id, s->type[0] ? s->type : "message", s->data};
            if (s->fn(s->ctx, &e)) {
                s->stopped = true;
                return -1;
            }
        }
        s->data_len = 0;
        s->type[0] = 0;
        s->id = -1;
        return 0;
    }
    if (l[0] == ':') return 0; /* a comment: keep-alive */
    char *colon = memchr(l, ':', n);
    size_t kn = colon ? (size_t)(colon - l) : n;
    char *v = colon ? colon + 1 : l + n;
    if (colon && *v == ' ') v++;
    size_t vn = (size_t)(l + n - v);
    if (kn == 4 && !memcmp(l, "data", 4)) {
        if (grow(&s->data, &s->data_cap, s->data_len + vn + 2)) return -1;
        memcpy(s->data + s->data_len, v, vn);
        s->data_len += vn;
        s->data[s->data_len++] = '\n';
    } else if (kn == 5 && !memcmp(l, "event", 5)) {
        snprintf(s->type, sizeof s->type, "%.*s", (int)vn, v);
    } else if (kn == 2 && !memcmp(l, "id", 2)) {
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%.*s", (int)(vn < 31 ? vn : 31), v);
        s->id = strtol(tmp, NULL, 10);
    }
    return 0;
}

static size_t sse_write(char *p, size_t sz, size_t nm, void *ud) {
    sse *s = ud;
    size_t n = sz * nm;
    long status = 0;
    curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &status);
    if (status / 100 != 2) return mem_write(p, sz, nm, &s->err);
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n' || ch == '\r') {
            /* \r\n counts once: a \n right after a \r ends nothing */
            if (ch == '\n' && s->line_len == 0 && i > 0 && p[i - 1] == '\r') continue;
            if (grow(&s->line, &s->line_cap, s->line_len + 1)) return 0;
            s->line[s->line_len] = 0;
            if (sse_line(s, s->line, s->line_len)) return 0;
            s->line_len = 0;
        } else {
            if (grow(&s->line, &s->line_cap, s->line_len + 2)) return 0;
            s->line[s->line_len++] = ch;
        }
    }
    return n;
}

double qc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Called by curl about once a second even on an idle stream: the place to notice a deadline. */
static int sse_tick(void *ud, curl_off_t dlt, curl_off_t dln, curl_off_t ult, curl_off_t uln) {
    (void)dlt, (void)dln, (void)ult, (void)uln;
    sse *s = ud;
    if (s->deadline > 0 && qc_now() >= s->deadline) {
        s->timed_out = true;
        return 1;
    }
    return 0;
}

int qc_events(const qc_conn *c, const char *path_url, long *last_id, qc_event_fn fn, void *ctx,
              double deadline, qc_resp *r) {
    memset(r, 0, sizeof *r);
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    CURL *h = easy_new(c, path_url, &hdrs, errbuf);
    if (!h) {
        snprintf(r->error, sizeof r->error, "cannot set up a request");
        return -1;
    }
    sse s = {.h = h, .fn = fn, .ctx = ctx, .last_id = last_id, .err = {r, false}, .id = -1,
             .deadline = deadline};
    if (deadline > 0) {
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, sse_tick);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &s);
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sse_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, STALL_S);
    hdrs = curl_slist_append(hdrs, "Accept: text/event-stream");
    if (*last_id >= 0) {
        char b[64];
        snprintf(b, sizeof b, "Last-Event-ID: %ld", *last_id);
        hdrs = curl_slist_append(hdrs, b);
    }
    int ret = easy_run(h, hdrs, errbuf, r);
    if (s.stopped) ret = 0, r->error[0] = 0;
    if (s.timed_out) ret = 1, r->error[0] = 0;
    free(s.line);
    free(s.data);
    return ret;
}
