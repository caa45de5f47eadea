/* Counters under one mutex: requests are counted once each, at completion, so contention is a
 * few nanoseconds per request and not worth lock-free structures. */
#include "server/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                 0.05,   0.1,   0.25,   0.5,   1,    2.5, 10};
#define N_BUCKETS ((int)(sizeof buckets / sizeof buckets[0]))
#define N_STATUS 600

struct srv_metrics {
    pthread_mutex_t mu;
    int n_routes;
    const char *const *names;
    uint64_t *by_status;   /* [n_routes + 1][N_STATUS] */
    uint64_t *hist;        /* [n_routes + 1][N_BUCKETS + 1], cumulative at render */
    double *lat_sum;       /* [n_routes + 1] */
    uint64_t upload_bytes;
    double worker_seconds;
};

srv_metrics *srv_metrics_new(int n_routes, const char *const *names) {
    srv_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    m->n_routes = n_routes;
    m->names = names;
    m->by_status = calloc((size_t)(n_routes + 1) * N_STATUS, sizeof *m->by_status);
    m->hist = calloc((size_t)(n_routes + 1) * (N_BUCKETS + 1), sizeof *m->hist);
    m->lat_sum = calloc((size_t)(n_routes + 1), sizeof *m->lat_sum);
    if (!m->by_status || !m->hist || !m->lat_sum) {
        srv_metrics_free(m);
        return NULL;
    }
    return m;
}

void srv_metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m->by_status);
    free(m->hist);
    free(m->lat_sum);
    free(m);
}

void srv_metrics_request(srv_metrics *m, int route, int status, double s) {
    if (route < 0 || route > m->n_routes) route = m->n_routes;
    if (status < 0 || status >= N_STATUS) status = 0;
    int b = 0;
    while (b < N_BUCKETS && s > buckets[b]) b++;
    pthread_mutex_lock(&m->mu);
    m->by_status[(size_t)route * N_STATUS + (size_t)status]++;
    m->hist[(size_t)route * (N_BUCKETS + 1) + (size_t)b]++;
    m->lat_sum[route] += s;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_add_upload(srv_metrics *m, uint64_t bytes) {
    pthread_mutex_lock(&m->mu);
    m->upload_bytes += bytes;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_add_worker_seconds(srv_metrics *m, double s) {
    pthread_mutex_lock(&m->mu);
    m->worker_seconds += s;
    pthread_mutex_unlock(&m->mu);
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 8192;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return;
        b->p = np;
        b->cap = cap;
    }
}

char *srv_metrics_render(srv_metrics *m, const long by_state[API_STATE_COUNT], long queue_len,
                         long busy, long max) {
    sbuf b = {0};
    sb_printf(&b, "# HELP quantd_jobs Jobs in the store by state.\n# TYPE quantd_jobs gauge\n");
    for (int s = 0; s < API_STATE_COUNT; s++)
        sb_printf(&b, "quantd_jobs{state=\"%s\"} %ld\n", api_state_name((api_state)s), by_state[s]);
    sb_printf(&b, "# HELP quantd_queue_length Jobs waiting for a worker.\n"
                  "# TYPE quantd_queue_length gauge\nquantd_queue_length %ld\n", queue_len);
    sb_printf(&b, "# HELP quantd_workers_busy Worker slots in use.\n"
                  "# TYPE quantd_workers_busy gauge\nquantd_workers_busy %ld\n", busy);
    sb_printf(&b, "# HELP quantd_workers_max Worker slots configured.\n"
                  "# TYPE quantd_workers_max gauge\nquantd_workers_max %ld\n", max);
    pthread_mutex_lock(&m->mu);
    sb_printf(&b, "# HELP quantd_worker_seconds_total Wall-clock seconds spent by workers.\n"
                  "# TYPE quantd_worker_seconds_total counter\nquantd_worker_seconds_total %.3f\n",
              m->worker_seconds);
    sb_printf(&b, "# HELP quantd_upload_bytes_total File bytes received (POST /v1/blobs, multipart POST /v1/jobs).\n"
                  "# TYPE quantd_upload_bytes_total counter\nquantd_upload_bytes_total %llu\n",
              (unsigned long long)m->upload_bytes);
    sb_printf(&b, "# HELP quantd_http_requests_total HTTP requests by route and status.\n"
                  "# TYPE quantd_http_requests_total counter\n");
    for (int r = 0; r <= m->n_routes; r++) {
        const char *name = r < m->n_routes ? m->names[r] : "unmatched";
        for (int s = 0; s < N_STATUS; s++) {
            uint64_t c = m->by_status[(size_t)r * N_STATUS + (size_t)s];
            if (c) sb_printf(&b, "quantd_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                             name, s, (unsigned long long)c);
        }
    }
    sb_printf(&b, "# HELP quantd_http_request_duration_seconds Request latency by route.\n"
                  "# TYPE quantd_http_request_duration_seconds histogram\n");
    for (int r = 0; r <= m->n_routes; r++) {
        const char *name = r < m->n_routes ? m->names[r] : "unmatched";
        const uint64_t *h = m->hist + (size_t)r * (N_BUCKETS + 1);
        uint64_t cum = 0;
        for (int i = 0; i <= N_BUCKETS; i++) cum += h[i];
        if (!cum) continue;
        cum = 0;
        for (int i = 0; i < N_BUCKETS; i++) {
            cum += h[i];
            sb_printf(&b, "quantd_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                      name, buckets[i], (unsigned long long)cum);
        }
        cum += h[N_BUCKETS];
        sb_printf(&b, "quantd_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
                  name, (unsigned long long)cum);
        sb_printf(&b, "quantd_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", name,
                  m->lat_sum[r]);
        sb_printf(&b, "quantd_http_request_duration_seconds_count{route=\"%s\"} %llu\n", name,
                  (unsigned long long)cum);
    }
    pthread_mutex_unlock(&m->mu);
    return b.p;
}
