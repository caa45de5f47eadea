/* The HTTP side of `quantd client`: requests to a quantd server over libcurl (JSON in memory,
 * uploads streamed from a file, downloads streamed to a file, SSE streams parsed into events)
 * and sha256 of local files, so that an upload the server already holds can be skipped.
 * Every request says whether an answer came back at all: the caller maps "no answer" and the
 * HTTP status onto its exit codes. */
#ifndef QD_CLIENT_H
#define QD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where the server is and how to authenticate; filled by the caller. */
typedef struct qc_conn {
    char url[512];       /* base URL without a trailing slash, e.g. http://127.0.0.1:8080 */
    char token[512];     /* bearer token, empty for none */
    long connect_timeout_s;
    long timeout_s;      /* whole-request limit for plain requests (0: none) */
    bool progress;       /* upload/download progress on stderr */
} qc_conn;

/* An answer: HTTP status and body (NUL-terminated, malloc'd, may be NULL). When no answer
 * came back (connection refused, DNS, timeout, cut off), status is 0 and error says why. */
typedef struct qc_resp {
    long status;
    char *body;
    size_t len;
    char error[256];
} qc_resp;

/* Frees the body; the struct may be reused. NULL is fine. */
void qc_resp_free(qc_resp *r);

/* Sets the process-wide curl state up; call once before any request. 0 on success. */
int qc_init(void);

/* METHOD base+path with an optional body (ctype may be NULL when body is NULL). Returns 0 when
 * an answer came back (any status), -1 otherwise. nobody: a HEAD-style request. */
int qc_request(const qc_conn *c, const char *method, const char *path, const char *ctype,
               const char *body, size_t body_len, bool nobody, qc_resp *r);

/* POSTs the file at path as a raw application/octet-stream body to base+path_url, streaming
 * it from disk; label names it in progress lines. 0 when an answer came back, -1 otherwise
 * (the file's own read errors included, with r->error saying so). */
int qc_upload_file(const qc_conn *c, const char *path_url, const char *file, uint64_t size,
                   const char *label, qc_resp *r);

/* GETs base+path_url into dest (through qd_atomic_file: a temp file beside dest, fsynced and
 * renamed over it on a 2xx answer, removed otherwise). An error
 * answer's body lands in r->body instead. 0 when an answer came back, -1 otherwise; a local
 * write failure sets r->status to -1 and r->error. */
int qc_download(const qc_conn *c, const char *path_url, const char *dest, const char *label,
                qc_resp *r);

/* One server-sent event: its id (-1 when none), type ("message" when none) and data. */
typedef struct qc_event {
    long id;
    const char *type;
    const char *data;
} qc_event;

/* Return non-zero from the callback to close the stream early. */
typedef int (*qc_event_fn)(void *ctx, const qc_event *e);

/* Follows an SSE stream at base+path_url, starting after last_id (-1: from the start), calling
 * fn per event, until the server ends it. *last_id follows the events seen. An error answer
 * (status >= 300) is returned in r with its body. deadline: a CLOCK_MONOTONIC time in seconds
 * at which to give up (0: none). 0 when the stream ended normally or was closed by fn, 1 when
 * the deadline passed, -1 when the connection failed or broke. */
int qc_events(const qc_conn *c, const char *path_url, long *last_id, qc_event_fn fn, void *ctx,
              double deadline, qc_resp *r);

/* CLOCK_MONOTONIC in seconds. */
double qc_now(void);

/* Human size: "1.2 MB" into buf. Returns buf. */
const char *qc_human_size(double bytes, char *buf, size_t n);

#endif
