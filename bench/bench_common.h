/* Helpers the benchmarks share. Service (bench_server, bench_load): where the quantd binary is,
 * starting `quantd serve` on 127.0.0.1:0 and reading back its port, a loopback connection and
 * one HTTP response read from it, /proc figures of the server, and a double comparator for
 * percentiles. Compute (bench_blas, bench_optimizer): the machine's FMA peak measured by a short
 * loop, and the best sgemm GFLOP/s of a shape. Header-only: each bench is one .c file. */
#ifndef QD_BENCH_COMMON_H
#define QD_BENCH_COMMON_H

#include <arpa/inet.h>
#include <immintrin.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "base/sys.h"

/* $QUANTD, or quantd in the build folder above this benchmark (build/bench -> build/quantd).
 * 0, or -1 when neither can be found. */
static inline int bench_quantd_exe(char exe[PATH_MAX]) {
    const char *env = getenv("QUANTD");
    if (env) return snprintf(exe, PATH_MAX, "%s", env) < PATH_MAX ? 0 : -1;
    ssize_t n = readlink("/proc/self/exe", exe, PATH_MAX - 16);
    if (n < 0) return -1;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return -1;
    *slash = 0;
    slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    strcat(exe, "/quantd");
    return 0;
}

/* Starts `exe serve --listen 127.0.0.1:0 --data data`, then each of the n_sets settings as
 * `--set KEY=VALUE`; its stderr goes to errlog (NULL: /dev/null). Reads the address the server
 * prints into host (64 bytes) and *port. The child's pid, or -1. */
static inline pid_t bench_start_server(const char *exe, const char *data, const char *errlog,
                                       const char *const *sets, int n_sets, char host[64],
                                       int *port) {
    enum { MAX_ARGS = 64 };
    if (n_sets < 0 || 8 + 2 * n_sets > MAX_ARGS) return -1;
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        int e = errlog ? open(errlog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)
                       : open("/dev/null", O_WRONLY);
        if (e >= 0) dup2(e, 2);
        close(p[0]);
        close(p[1]);
        const char *av[MAX_ARGS];
        int n = 0;
        av[n++] = exe, av[n++] = "serve", av[n++] = "--listen", av[n++] = "127.0.0.1:0";
        av[n++] = "--data", av[n++] = data;
        for (int i = 0; i < n_sets; i++) av[n++] = "--set", av[n++] = sets[i];
        av[n] = NULL;
        execv(exe, (char *const *)av);
        _exit(127);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    /* the pipe stays open: the server prints its address once and nothing reads it after */
    FILE *f = fdopen(p[0], "r");
    char line[256];
    *port = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "listening on %63[^:]:%d", host, port) == 2) break;
    return *port > 0 ? pid : -1;
}

/* A connection to 127.0.0.1:port with TCP_NODELAY; reads and writes wait at most timeout_s
 * seconds (0: no bound). The fd, or -1. */
static inline int bench_connect(int port, int timeout_s) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (timeout_s > 0) {
        struct timeval tv = {timeout_s, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Reads one HTTP response with a Content-Length body (or none) into buf (cap bytes, kept
 * NUL-terminated); *body_off and *total (either may be NULL) get where the body starts and
 * the bytes read. The status, 0 when the connection closed before any byte came back, -1 on
 * other failures. */
static inline int bench_read_response(int fd, char *buf, size_t cap, size_t *body_off,
                                      size_t *total) {
    size_t have = 0;
    for (;;) {
        if (have + 1 >= cap) return -1;
        ssize_t k = read(fd, buf + have, cap - have - 1);
        if (k <= 0) return have ? -1 : 0;
        have += (size_t)k;
        buf[have] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) continue;
        size_t hlen = (size_t)(end - buf) + 4;
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        size_t blen = cl ? strtoul(cl + 17, NULL, 10) : 0;
        if (hlen + blen >= cap) return -1;
        while (have < hlen + blen) {
            k = read(fd, buf + have, hlen + blen - have);
            if (k <= 0) return -1;
            have += (size_t)k;
        }
        buf[have] = 0;
        if (body_off) *body_off = hlen;
        if (total) *total = have;
        return atoi(buf + 9);
    }
}

/* The value in kB of a /proc/PID/status line such as "VmRSS:" or "VmHWM:", or -1. */
static inline long bench_proc_kb(pid_t pid, const char *key) {
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r");
    long kb = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl)) kb = strtol(line + kl, NULL, 10);
    if (f) fclose(f);
    return kb;
}

/* qsort comparator of doubles, ascending. */
static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---------------------------------------------------------------- compute */

#define BENCH_PEAK_ITERS 20000000L

__attribute__((target("avx512f"))) static inline double bench_peak512(long iters) {
    __m512 a[16], m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    }
    float s = 0;
    for (int i = 0; i < 16; i++) s += _mm512_reduce_add_ps(a[i]);
    return s;
}

__attribute__((target("avx2,fma"))) static inline double bench_peak256(long iters) {
    __m256 a[12], m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    }
    float t[8], s = 0;
    for (int i = 0; i < 12; i++) {
        _mm256_storeu_ps(t, a[i]);
        for (int j = 0; j < 8; j++) s += t[j];
    }
    return s;
}

/* Whether the peak loop uses AVX-512 (else AVX2 + FMA). */
static inline int bench_fma_512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

static inline const char *bench_fma_isa(void) { return bench_fma_512() ? "AVX-512" : "AVX2"; }

typedef struct bench_peak_arg {
    int use512;
    double sink;
} bench_peak_arg;

static inline void *bench_peak_thread(void *arg) {
    bench_peak_arg *a = arg;
    a->sink += a->use512 ? bench_peak512(BENCH_PEAK_ITERS / 4) : bench_peak256(BENCH_PEAK_ITERS / 4);
    return NULL;
}

/* GFLOP/s of independent FMA chains on nt threads at once: the best of 5 rounds after one
 * warm-up round. One round is ~15 ms on a core that sustains two 512-bit FMAs a cycle, so a
 * single cold round (thread start, the core's AVX-512 frequency transition) reads low: on a
 * Sapphire Rapids VM it gave 68 GFLOP/s while sgemm in the same run reached 93. */
static inline double bench_fma_peak(int nt) {
    int use512 = bench_fma_512();
    double flops_per_iter = use512 ? 16.0 * 16 * 2 : 12.0 * 8 * 2;
    pthread_t th[64];
    bench_peak_arg args[64];
    if (nt > 64) nt = 64;
    double best = 0;
    for (int round = 0; round < 6; round++) {
        double t0 = qd_now();
        for (int i = 0; i < nt; i++) {
            args[i] = (bench_peak_arg){use512, 0};
            pthread_create(&th[i], NULL, bench_peak_thread, &args[i]);
        }
        for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
        double g = flops_per_iter * (BENCH_PEAK_ITERS / 4) * nt / (qd_now() - t0) / 1e9;
        if (round > 0 && g > best) best = g;
    }
    return best;
}

/* C (M,N) = A (M,K) x B^T, B stored (N,K), row-major. */
typedef void (*bench_gemm_fn)(int M, int N, int K, const float *A, const float *B, float *C);

/* Best GFLOP/s of f at M x N x K: three timed rounds of at least 0.2 s each, after a warm-up. */
static inline double bench_time_gemm(bench_gemm_fn f, int M, int N, int K) {
    float *A = malloc(sizeof(float) * (size_t)M * K), *B = malloc(sizeof(float) * (size_t)N * K);
    float *C = malloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)N * K; i++) B[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    f(M, N, K, A, B, C); /* warm-up: thread pools, packing buffers */
    double best = 0, flop = 2.0 * M * N * K;
    for (int round = 0; round < 3; round++) {
        int reps = 0;
        double t0 = qd_now(), s;
        do {
            f(M, N, K, A, B, C);
            reps++;
            s = qd_now() - t0;
        } while (s < 0.2);
        double g = flop * reps / s / 1e9;
        if (g > best) best = g;
    }
    free(A), free(B), free(C);
    return best;
}

#endif
