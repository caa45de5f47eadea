/* Load test of the HTTP service with hostile clients among the well-behaved ones, printing
 * figures (never pass/fail). It starts the real binary (build/quantd, or $QUANTD) on
 * 127.0.0.1:0 with the default settings and a temporary data directory, and for --seconds
 * (default 60) holds --conns (default 200) connections from this one address (--set KEY=VALUE,
 * repeatable, passes a setting to the server instead of its default):
 *   - 75% API clients: keep-alive GETs of /healthz, /v1/jobs and /v1/jobs/{id} with 20-80 ms
 *     between requests, reconnecting when the server closed an idle connection and retrying a
 *     GET once when a reused connection died before answering (as curl and browsers do);
 *   - 5% event-stream followers: GET /v1/jobs/{id}/events of a running job, read 1-4 s, then
 *     drop the connection and open another;
 *   - 5% uploaders: POST /v1/blobs of 16 KiB (eight distinct bodies), one connection each;
 *   - 15% slow clients: half send their headers a byte a second, half a declared 1 MB body at
 *     16 bytes a second, reconnecting whenever the server closes them.
 * An error is a well-behaved request without a 2xx answer (after its one retry), an event
 * stream that did not open with 200, or an upload not answered 200/201. It prints errors,
 * request latency p50/p99, how often the slow clients were cut off, the server's resident
 * memory and open fds before and after, and the guard's own counts from the server's log.
 *
 * The running job for the event streams is a long MobileQuant run of the stories260K fixture
 * ($QD_FIXTURES, default ../shared/fixtures); without the fixture the streams follow a job that
 * fails at once, which the output says. Loopback only; every loop ends at the deadline. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/fs.h"
#include "base/sys.h"
#include "bench/bench_common.h"

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int port;
static double t_end;

static int connect_server(void) { return bench_connect(port, 10); /* no wait past 10 s */ }

/* Whether a kept-alive connection is still open: the server may have closed it while idle. */
static bool alive(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return true;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return false;
    char b;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) != 0;
}

/* ---- shared counters ---- */

typedef struct lat_buf {
    double *v;
    size_t n, cap;
} lat_buf;

static void lat_add(lat_buf *b, double x) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        double *nv = realloc(b->v, cap * sizeof *nv);
        if (!nv) return;
        b->v = nv, b->cap = cap;
    }
    b->v[b->n++] = x;
}

static atomic_long api_requests, api_errors, api_retries, api_reconnects;
static atomic_long sse_opened, sse_errors, uploads, upload_errors;
static atomic_long slow_cut, slow_attempts;
static atomic_long err_closed, err_other, err_status; /* API errors: no answer on a fresh connection, broken answer, non-2xx */
static char job_id[64];

typedef struct client {
    pthread_t t;
    int kind, index;
    unsigned seed;
    lat_buf lat;
} client;

enum { K_API, K_SSE, K_UPLOAD, K_SLOW_HEAD, K_SLOW_BODY };

static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* One request on the kept-alive *fd (reconnecting when it died while idle, retrying once when it
 * died under the request). Returns the status, or a value <= 0. */
static int api_request(client *c, int *fd, const char *req, size_t n, char *buf, size_t cap) {
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = *fd >= 0;
        if (*fd >= 0 && !alive(*fd)) {
            close(*fd);
            *fd = -1;
            reused = false;
        }
        if (*fd < 0) {
            *fd = connect_server();
            atomic_fetch_add(&api_reconnects, 1);
            if (*fd < 0) return -1;
        }
        int st = qd_write_all(*fd, req, n) == 0 ? bench_read_response(*fd, buf, cap, NULL, NULL) : 0;
        if (st > 0) {
            if (strcasestr(buf, "\r\nConnection: close")) {
                close(*fd);
                *fd = -1;
            }
            return st;
        }
        close(*fd);
        *fd = -1;
        if (!(st == 0 && reused)) return st;
        atomic_fetch_add(&api_retries, 1);
    }
    (void)c;
    return -1;
}

static void run_api(client *c) {
    char reqs[3][256];
    int lens[3];
    lens[0] = snprintf(reqs[0], sizeof reqs[0], "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    lens[1] = snprintf(reqs[1], sizeof reqs[1], "GET /v1/jobs?limit=20 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    lens[2] = snprintf(reqs[2], sizeof reqs[2], "GET /v1/jobs/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", job_id);
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    int fd = -1;
    for (unsigned i = 0; qd_now() < t_end; i++) {
        int k = (int)(i % 3);
        double t0 = qd_now();
        int st = api_request(c, &fd, reqs[k], (size_t)lens[k], buf, cap);
        double t1 = qd_now();
        atomic_fetch_add(&api_requests, 1);
        if (st < 200 || st > 299) {
            atomic_fetch_add(&api_errors, 1);
            atomic_fetch_add(st == 0 ? &err_closed : st < 0 ? &err_other : &err_status, 1);
        }
        else lat_add(&c->lat, t1 - t0);
        sleep_s(0.02 + 0.06 * (rnd(&c->seed) % 1000) / 1000.0);
    }
    if (fd >= 0) close(fd);
    free(buf);
}

static void run_sse(client *c) {
    char req[256], buf[8192];
    int n = snprintf(req, sizeof req, "GET /v1/jobs/%s/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Accept: text/event-stream\r\n\r\n", job_id);
    while (qd_now() < t_end) {
        int fd = connect_server();
        bool ok = fd >= 0 && qd_write_all(fd, req, (size_t)n) == 0;
        ssize_t k = ok ? read(fd, buf, sizeof buf - 1) : -1;
        if (k > 0) buf[k] = 0;
        ok = k > 12 && !strncmp(buf, "HTTP/1.1 200", 12);
        atomic_fetch_add(ok ? &sse_opened : &sse_errors, 1);
        double stop = qd_now() + 1 + 3 * (rnd(&c->seed) % 1000) / 1000.0;
        while (ok && qd_now() < stop && qd_now() < t_end) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 200) > 0 && read(fd, buf, sizeof buf) <= 0) break;
        }
        if (fd >= 0) close(fd); /* the client goes away mid-stream */
        if (!ok) sleep_s(0.2);
    }
}

static void run_upload(client *c) {
    size_t body = 16 << 10;
    char *req = malloc(body + 256);
    char resp[4096];
    while (qd_now() < t_end) {
        int h = snprintf(req, 256, "POST /v1/blobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         "application/octet-stream\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", body);
        unsigned v = rnd(&c->seed) % 8; /* eight distinct bodies: the store deduplicates */
        memset(req + h, 'a' + (int)v, body);
        int fd = connect_server();
        int st = fd >= 0 && qd_write_all(fd, req, (size_t)h + body) == 0 ? bench_read_response(fd, resp, sizeof resp, NULL, NULL) : -1;
        if (fd >= 0) close(fd);
        atomic_fetch_add(&uploads, 1);
        if (st != 200 && st != 201) atomic_fetch_add(&upload_errors, 1);
        sleep_s(0.1 + 0.2 * (rnd(&c->seed) % 1000) / 1000.0);
    }
    free(req);
}

/* Trickles one byte of headers (or 16 bytes of body) a second until the server closes it. */
static void run_slow(client *c) {
    const char *head = c->kind == K_SLOW_HEAD
                           ? "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           : "POST /v1/blobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                             "application/octet-stream\r\nContent-Length: 1000000\r\n\r\n";
    while (qd_now() < t_end) {
        int fd = connect_server();
        atomic_fetch_add(&slow_attempts, 1);
        if (fd < 0 || qd_write_all(fd, head, strlen(head)) != 0) {
            atomic_fetch_add(&slow_cut, 1);
            if (fd >= 0) close(fd);
            sleep_s(0.5);
            continue;
        }
        bool cut = false;
        while (qd_now() < t_end && !cut) {
            sleep_s(1.0);
            if (!alive(fd)) cut = true;
            else if (c->kind == K_SLOW_HEAD) cut = send(fd, "X", 1, MSG_NOSIGNAL) != 1;
            else cut = send(fd, "0123456789abcdef", 16, MSG_NOSIGNAL) != 16;
        }
        if (cut) atomic_fetch_add(&slow_cut, 1);
        close(fd);
    }
}

static void *client_main(void *arg) {
    client *c = arg;
    switch (c->kind) {
    case K_API: run_api(c); break;
    case K_SSE: run_sse(c); break;
    case K_UPLOAD: run_upload(c); break;
    default: run_slow(c); break;
    }
    return NULL;
}

/* ---- the server ---- */

#define MAX_SETS 8
static const char *sets[MAX_SETS];
static int n_sets;

static int proc_fds(pid_t pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(p);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* POSTs body to path; copies the "id" of the answer into id. Returns the status. */
static int post(const char *path, const char *ctype, const char *body, size_t n, char *id, size_t idn) {
    char head[512], resp[1 << 16];
    int h = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n", path, ctype, n);
    int fd = connect_server();
    if (fd < 0) return -1;
    int st = qd_write_all(fd, head, (size_t)h) == 0 && qd_write_all(fd, body, n) == 0
                 ? bench_read_response(fd, resp, sizeof resp, NULL, NULL) : -1;
    close(fd);
    const char *p = st > 0 ? strstr(resp, "\"id\":\"") : NULL;
    if (p && id) {
        size_t k = 0;
        for (p += 6; *p && *p != '"' && k + 1 < idn; p++) id[k++] = *p;
        id[k] = 0;
    }
    return st;
}

int main(int argc, char **argv) {
    long conns = 200;
    double seconds = 60;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns")) conns = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--set") && n_sets < MAX_SETS) sets[n_sets++] = argv[i + 1];
    }
    if (conns < 20 || conns > 1000 || seconds <= 0 || seconds > 3600) {
        fprintf(stderr, "usage: bench_load [--seconds S (<= 3600)] [--conns C (20..1000)] [--set KEY=VALUE]...\n");
        return 2;
    }
    char exe[PATH_MAX];
    if (bench_quantd_exe(exe)) return 1;
    char data[] = "/tmp/quantd-load-XXXXXX";
    if (!mkdtemp(data)) return 1;
    char errlog[PATH_MAX + 16];
    snprintf(errlog, sizeof errlog, "%s.log", data);
    signal(SIGPIPE, SIG_IGN);
    char host[64];
    pid_t srv = bench_start_server(exe, data, errlog, sets, n_sets, host, &port);
    if (srv < 0) {
        fprintf(stderr, "bench_load: could not start %s serve\n", exe);
        return 1;
    }

    /* a running job for the event streams */
    const char *fx = getenv("QD_FIXTURES");
    char mpath[PATH_MAX], cpath[PATH_MAX];
    snprintf(mpath, sizeof mpath, "%s/models/stories260K.gguf", fx ? fx : "../shared/fixtures");
    snprintf(cpath, sizeof cpath, "%s/text/tinystories-valid-excerpt.txt", fx ? fx : "../shared/fixtures");
    size_t mn = 0, cn = 0;
    char *mb = qd_read_file(mpath, SIZE_MAX, &mn, NULL), *cb = qd_read_file(cpath, SIZE_MAX, &cn, NULL);
    char mid[80] = "", cid[80] = "";
    bool real = mb && cb;
    if (!real) {
        free(mb), free(cb);
        mb = strdup("not a model"), cb = strdup("some text");
        mn = strlen(mb), cn = strlen(cb);
    }
    post("/v1/blobs", "application/octet-stream", mb, mn, mid, sizeof mid);
    post("/v1/blobs", "application/octet-stream", cb, cn, cid, sizeof cid);
    free(mb), free(cb);
    char spec[512];
    int sn = snprintf(spec, sizeof spec, "{\"model\":\"%s\",\"calibration\":\"%s\",\"method\":\"mobilequant\","
                      "\"budget\":{\"samples\":64,\"seq_len\":64,\"epochs\":1000}}", mid, cid);
    int st = post("/v1/jobs", "application/json", spec, (size_t)sn, job_id, sizeof job_id);
    if (st != 201) {
        fprintf(stderr, "bench_load: could not submit the job (status %d)\n", st);
        kill(srv, SIGTERM);
        waitpid(srv, NULL, 0);
        return 1;
    }
    sleep_s(1.0);
    long rss0 = bench_proc_kb(srv, "VmRSS:");
    int fds0 = proc_fds(srv);

    long n_sse = conns / 20, n_up = conns / 20, n_slow = conns * 15 / 100;
    long n_api = conns - n_sse - n_up - n_slow;
    client *cl = calloc((size_t)conns, sizeof *cl);
    double t0 = qd_now();
    t_end = t0 + seconds;
    for (long i = 0; i < conns; i++) {
        cl[i].index = (int)i;
        cl[i].seed = (unsigned)(i * 2654435761u + 1);
        cl[i].kind = i < n_api ? K_API : i < n_api + n_sse ? K_SSE : i < n_api + n_sse + n_up ? K_UPLOAD
                     : (i % 2 ? K_SLOW_HEAD : K_SLOW_BODY);
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 256 << 10);
        pthread_create(&cl[i].t, &at, client_main, &cl[i]);
        pthread_attr_destroy(&at);
    }
    for (long i = 0; i < conns; i++) pthread_join(cl[i].t, NULL);
    double took = qd_now() - t0;
    sleep_s(2.0); /* closed connections and their threads wind down */
    long rss1 = bench_proc_kb(srv, "VmRSS:"), hwm = bench_proc_kb(srv, "VmHWM:");
    int fds1 = proc_fds(srv);

    size_t n = 0;
    for (long i = 0; i < conns; i++) n += cl[i].lat.n;
    double *all = malloc((n + 1) * sizeof *all);
    size_t k = 0;
    for (long i = 0; i < conns; i++) {
        if (cl[i].lat.n) memcpy(all + k, cl[i].lat.v, cl[i].lat.n * sizeof *all);
        k += cl[i].lat.n;
        free(cl[i].lat.v);
    }
    qsort(all, n, sizeof *all, bench_cmp_double);

    /* the job's cancel, then the server's own account of what its guard closed */
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", job_id);
    post(path, "application/json", "", 0, NULL, 0);
    kill(srv, SIGTERM);
    waitpid(srv, NULL, 0);
    char guard[512] = "";
    FILE *f = fopen(errlog, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "closed by the guard")) snprintf(guard, sizeof guard, "%s", line);
    if (f) fclose(f);

    char settings[256] = "default settings";
    for (int i = 0, o = 0; i < n_sets && o < (int)sizeof settings - 1; i++)
        o += snprintf(settings + o, sizeof settings - (size_t)o, "%s%s", i ? ", " : "", sets[i]);
    printf("load: %ld connections from 127.0.0.1 for %.0f s, %s: %ld API clients "
           "(keep-alive), %ld event-stream followers, %ld uploaders, %ld slow clients (%ld trickling "
           "headers, %ld trickling bodies)%s\n",
           conns, took, settings, n_api, n_sse, n_up, n_slow, n_slow - n_slow / 2, n_slow / 2,
           real ? "" : "; NOTE: no fixture model, the streams follow a job that failed");
    long req = atomic_load(&api_requests), err = atomic_load(&api_errors);
    printf("API requests: %ld (%.0f/s), errors %ld, latency p50 %.2f ms, p99 %.2f ms, max %.2f ms; "
           "%ld reconnects after the server closed an idle connection, %ld GETs retried\n",
           req, (double)req / took, err, n ? 1e3 * all[n / 2] : 0, n ? 1e3 * all[(size_t)((double)n * 0.99)] : 0,
           n ? 1e3 * all[n - 1] : 0, atomic_load(&api_reconnects) - n_api, atomic_load(&api_retries));
    if (err)
        printf("API errors: %ld closed without an answer on a fresh connection, %ld cut mid-answer "
               "or unreachable, %ld answered with an error status\n",
               atomic_load(&err_closed), atomic_load(&err_other), atomic_load(&err_status));
    printf("event streams: %ld opened, %ld errors; uploads: %ld, %ld errors\n", atomic_load(&sse_opened),
           atomic_load(&sse_errors), atomic_load(&uploads), atomic_load(&upload_errors));
    printf("slow clients: %ld connections, %ld cut off by the server\n", atomic_load(&slow_attempts),
           atomic_load(&slow_cut));
    printf("server: RSS %.1f MB before, %.1f MB after (peak %.1f MB); open fds %d before, %d after\n",
           rss0 / 1024.0, rss1 / 1024.0, hwm / 1024.0, fds0, fds1);
    if (guard[0]) printf("server log: %s", guard + (strncmp(guard, "quantd serve: ", 14) ? 0 : 14));
    free(all);
    free(cl);
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", data, errlog);
    if (system(cmd) != 0) fprintf(stderr, "bench_load: could not remove %s\n", data);
    return 0;
}
