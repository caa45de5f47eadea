/* Benchmark of the HTTP service, printing figures (never pass/fail):
 *   1. upload throughput of POST /v1/blobs for one large body (default 1 GiB) and the server's
 *      peak RSS afterwards (VmHWM: the upload must stream, so this stays far below the body);
 *   2. requests/s and latency percentiles of GET /v1/jobs/{id} from 64 concurrent clients (a
 *      connection per request: the server closes after each answer), from a small load
 *      generator in this file.
 * It starts the real binary (build/quantd, or $QUANTD) on 127.0.0.1:0 with a temporary data
 * directory. Flags: --upload-mb N, --seconds S, --conns C. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statvfs.h>

#include "quant/fp/blas.h"
#include "base/err.h"
#include "base/fs.h"
#include "base/sys.h"
#include "bench/bench_common.h"
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char host[64];
static int port;

static int connect_server(void) { return bench_connect(port, 0); }

typedef struct worker {
    pthread_t t;
    const char *req;
    size_t req_len;
    double t_end, t_measure;
    double *lat;
    size_t n, cap;
    long errors;
} worker;

/* One client: a request, its answer, and a new connection whenever the answer said
 * "Connection: close" (quantd closes after every answer: server/intake.h); the connection's
 * setup is inside the measured latency, as a client pays it. */
static void *load(void *arg) {
    worker *w = arg;
    int fd = -1;
    char *buf = malloc(1 << 16);
    for (;;) {
        double t0 = qd_now();
        if (t0 >= w->t_end) break;
        if (fd < 0) fd = connect_server();
        if (fd < 0 || qd_write_all(fd, w->req, w->req_len) != 0 ||
            bench_read_response(fd, buf, 1 << 16, NULL, NULL) != 200) {
            w->errors++;
            if (fd >= 0) close(fd);
            fd = -1;
            continue;
        }
        if (strcasestr(buf, "\r\nConnection: close")) {
            close(fd);
            fd = -1;
        }
        double t1 = qd_now();
        if (t0 >= w->t_measure) {
            if (w->n == w->cap) {
                w->cap = w->cap ? w->cap * 2 : 4096;
                w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
            }
            w->lat[w->n++] = t1 - t0;
        }
    }
    if (fd >= 0) close(fd);
    free(buf);
    return NULL;
}

/* POST /v1/blobs of the file at path; its id into id ("" when it failed, with a message). */
static void upload_file(const char *path, char id[80]) {
    size_t n = 0;
    char *data = qd_read_file(path, SIZE_MAX, &n, NULL);
    id[0] = 0;
    if (!data) {
        fprintf(stderr, "bench_server: cannot read %s (set QD_FIXTURES)\n", path);
        return;
    }
    char head[256], resp[4096];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/blobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream"
                      "\r\nContent-Length: %zu\r\n\r\n", host, n);
    int fd = connect_server();
    size_t boff = 0;
    int st = fd >= 0 && qd_write_all(fd, head, (size_t)hn) == 0 && qd_write_all(fd, data, n) == 0
                 ? bench_read_response(fd, resp, sizeof resp, &boff, NULL)
                 : -1;
    if (fd >= 0) close(fd);
    free(data);
    const char *idp = st >= 200 && st < 300 ? strstr(resp + boff, "\"id\":\"") : NULL;
    if (idp) sscanf(idp + 6, "%79[^\"]", id);
    else fprintf(stderr, "bench_server: upload of %s: status %d\n", path, st);
}

static int rm_rf(const char *dir) {
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

int main(int argc, char **argv) {
    qd_blas_select(argv);
    long upload_mb = 1024, conns = 64;
    double seconds = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--upload-mb")) upload_mb = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns")) conns = atol(argv[i + 1]);
    }
    if (conns < 1 || conns > 1000 || upload_mb < 1 || seconds <= 0) {
        fprintf(stderr, "usage: bench_server [--upload-mb N] [--seconds S] [--conns C]\n");
        return 2;
    }
    char exe[PATH_MAX];
    if (bench_quantd_exe(exe)) return 1;
    char data[] = "/tmp/quantd-bench-XXXXXX";
    if (!mkdtemp(data)) return 1;
    struct statvfs v;
    if (statvfs(data, &v) == 0) {
        long free_mb = (long)((double)v.f_bavail * (double)v.f_frsize / 1048576.0);
        if (upload_mb > free_mb - 512) {
            upload_mb = free_mb - 512 > 64 ? free_mb - 512 : 64;
            printf("note: disk is short; uploading %ld MB instead\n", upload_mb);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    pid_t srv = bench_start_server(exe, data, NULL, NULL, 0, host, &port);
    if (srv < 0) {
        fprintf(stderr, "bench_server: could not start %s serve\n", exe);
        rm_rf(data);
        return 1;
    }
    long rss0 = bench_proc_kb(srv, "VmHWM:");

    /* 1. one large upload, streamed from a 1 MiB buffer */
    size_t chunk = 1 << 20;
    char *buf = malloc(chunk);
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < chunk; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (char)x;
    }
    uint64_t total = (uint64_t)upload_mb << 20;
    int fd = connect_server();
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/blobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream"
                      "\r\nContent-Length: %llu\r\n\r\n", host, (unsigned long long)total);
    double t0 = qd_now();
    int ok = qd_write_all(fd, head, (size_t)hn) == 0;
    for (uint64_t sent = 0; ok && sent < total; sent += chunk) {
        buf[0] = (char)(sent >> 20); /* no two chunks alike */
        ok = qd_write_all(fd, buf, chunk) == 0;
    }
    char resp[4096];
    size_t boff = 0;
    int st = ok ? bench_read_response(fd, resp, sizeof resp, &boff, NULL) : -1;
    double up_s = qd_now() - t0;
    close(fd);
    long rss1 = bench_proc_kb(srv, "VmHWM:");
    char blob[80] = "";
    const char *idp = st >= 200 && st < 300 ? strstr(resp + boff, "\"id\":\"") : NULL;
    if (idp) sscanf(idp + 6, "%79[^\"]", blob);
    printf("upload: %llu MB in %.2f s = %.1f MB/s (status %d, sha256 + fsync included)\n",
           (unsigned long long)(total >> 20), up_s, (double)(total >> 20) / up_s, st);
    printf("server peak RSS: %.1f MB before upload, %.1f MB after a %llu MB upload\n",
           rss0 / 1024.0, rss1 / 1024.0, (unsigned long long)(total >> 20));

    /* 2. GET /v1/jobs/{id} under load: a small RTN job of the stories260K fixture (the door
     * refuses a job whose blobs are no model and text), which only has to exist */
    char body[512], req[1024], job[64] = "", mid[80] = "", cid[80] = "";
    const char *fx = getenv("QD_FIXTURES");
    char fpath[PATH_MAX];
    snprintf(fpath, sizeof fpath, "%s/models/stories260K.gguf", fx ? fx : "../shared/fixtures");
    upload_file(fpath, mid);
    snprintf(fpath, sizeof fpath, "%s/text/tinystories-valid-excerpt.txt", fx ? fx : "../shared/fixtures");
    upload_file(fpath, cid);
    int bn = snprintf(body, sizeof body,
                      "{\"model\":\"%s\",\"calibration\":\"%s\",\"method\":\"rtn\","
                      "\"budget\":{\"samples\":2,\"seq_len\":16,\"epochs\":0}}", mid, cid);
    int rn = snprintf(req, sizeof req,
                      "POST /v1/jobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n%s", host, bn, body);
    fd = connect_server();
    st = qd_write_all(fd, req, (size_t)rn) == 0 ? bench_read_response(fd, resp, sizeof resp, &boff, NULL) : -1;
    close(fd);
    idp = st == 201 ? strstr(resp + boff, "\"id\":\"") : NULL;
    if (idp) sscanf(idp + 6, "%63[^\"]", job);
    if (!job[0]) {
        fprintf(stderr, "bench_server: could not create a job (status %d)\n", st);
    } else {
        rn = snprintf(req, sizeof req, "GET /v1/jobs/%s HTTP/1.1\r\nHost: %s\r\n\r\n", job, host);
        worker *w = calloc((size_t)conns, sizeof *w);
        double start = qd_now();
        for (long i = 0; i < conns; i++) {
            w[i].req = req;
            w[i].req_len = (size_t)rn;
            w[i].t_measure = start + 0.5;
            w[i].t_end = start + 0.5 + seconds;
            pthread_create(&w[i].t, NULL, load, &w[i]);
        }
        size_t n = 0;
        long errors = 0;
        for (long i = 0; i < conns; i++) {
            pthread_join(w[i].t, NULL);
            n += w[i].n;
            errors += w[i].errors;
        }
        double *all = malloc((n + 1) * sizeof *all);
        size_t k = 0;
        for (long i = 0; i < conns; i++) {
            memcpy(all + k, w[i].lat, w[i].n * sizeof *all);
            k += w[i].n;
            free(w[i].lat);
        }
        qsort(all, n, sizeof *all, bench_cmp_double);
        if (n) {
            printf("GET /v1/jobs/{id}: %ld connections, %.1f s: %.0f requests/s, latency p50 %.2f ms, "
                   "p99 %.2f ms, max %.2f ms, %ld errors\n",
                   conns, seconds, (double)n / seconds, 1e3 * all[n / 2], 1e3 * all[(size_t)(n * 0.99)],
                   1e3 * all[n - 1], errors);
        }
        printf("server peak RSS after the load: %.1f MB\n", bench_proc_kb(srv, "VmHWM:") / 1024.0);
        free(all);
        free(w);
    }
    kill(srv, SIGTERM);
    waitpid(srv, NULL, 0);
    free(buf);
    rm_rf(data);
    return 0;
}
