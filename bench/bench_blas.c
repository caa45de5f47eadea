/* Which sgemm to run on this machine: OpenBLAS with its own kernel choice, OpenBLAS with the
 * kernel quantd chooses from CPU features (quant/fp/blas.h), and, where their Debian runtime
 * packages are installed, oneDNN's dnnl_sgemm (libdnnl2) and BLIS (libblis4-*), side by side
 * at the same shapes, against the machine's FMA peak measured by a short loop. Nothing here
 * passes or fails on time.
 *
 * OpenBLAS fixes its kernel when it loads, so each variant runs in a child process (this binary
 * again with --child); oneDNN and BLIS are dlopen'ed there, so neither is a build dependency. */
#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "quant/fp/blas.h"
#include "base/sys.h"
#include "bench/bench_common.h"

static const int shapes[][3] = {
    {1024, 1024, 1024}, /* square */
    {512, 2816, 1024},  /* a FFN projection of the synthetic 1024/2816 model at T = 512 */
    {512, 1024, 2816},  /* its down projection */
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

/* ---------------------------------------------------------------- sgemm drivers */

static void run_openblas(int M, int N, int K, const float *A, const float *B, float *C) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
}

typedef int (*dnnl_sgemm_t)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t,
                            const float *, int64_t, float, float *, int64_t);
static dnnl_sgemm_t dnnl_sgemm_p;
static void run_dnnl(int M, int N, int K, const float *A, const float *B, float *C) {
    /* dnnl_sgemm is row-major: C = A (M,K) x B^T with B stored (N,K) */
    dnnl_sgemm_p('N', 'T', M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
}

typedef void (*bli_sgemm_t)(int, int, int64_t, int64_t, int64_t, float *, float *, int64_t,
                            int64_t, float *, int64_t, int64_t, float *, float *, int64_t, int64_t);
static bli_sgemm_t bli_sgemm_p;
static void run_blis(int M, int N, int K, const float *A, const float *B, float *C) {
    float one = 1.0f, zero = 0.0f;
    /* general strides: A (M,K) row-major; B^T as (K,N) with row stride 1, column stride K */
    bli_sgemm_p(0, 0, M, N, K, &one, (float *)A, K, 1, (float *)B, 1, K, &zero, C, N, 1);
}

/* Child: one line "R <label> <threads> <shape index> <GFLOP/s>" per measurement. */
static int child(const char *what) {
    int nproc = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (!strcmp(what, "openblas")) {
        const char *k = openblas_get_corename();
        printf("K openblas %s\n", k ? k : "?");
        for (int s = 0; s < NSHAPES; s++) {
            int th[2] = {1, nproc};
            for (int t = 0; t < (nproc > 1 ? 2 : 1); t++) {
                openblas_set_num_threads(th[t]);
                printf("R openblas %d %d %.1f\n", th[t], s,
                       bench_time_gemm(run_openblas, shapes[s][0], shapes[s][1], shapes[s][2]));
                fflush(stdout);
            }
        }
        return 0;
    }
    if (!strcmp(what, "dnnl")) {
        void *h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
        if (!h || !(dnnl_sgemm_p = (dnnl_sgemm_t)dlsym(h, "dnnl_sgemm"))) return 0;
        const char *omp = getenv("OMP_NUM_THREADS");
        int t = omp ? atoi(omp) : nproc;
        for (int s = 0; s < NSHAPES; s++)
            printf("R dnnl %d %d %.1f\n", t, s, bench_time_gemm(run_dnnl, shapes[s][0], shapes[s][1], shapes[s][2]));
        return 0;
    }
    if (!strcmp(what, "blis")) {
        void *h = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL);
        if (!h || !(bli_sgemm_p = (bli_sgemm_t)dlsym(h, "bli_sgemm"))) return 0;
        int (*qid)(void) = (int (*)(void))dlsym(h, "bli_arch_query_id");
        const char *(*astr)(int) = (const char *(*)(int))dlsym(h, "bli_arch_string");
        printf("K blis %s\n", qid && astr ? astr(qid()) : "?");
        const char *bt = getenv("BLIS_NUM_THREADS");
        int t = bt ? atoi(bt) : 1;
        for (int s = 0; s < NSHAPES; s++)
            printf("R blis %d %d %.1f\n", t, s, bench_time_gemm(run_blis, shapes[s][0], shapes[s][1], shapes[s][2]));
        return 0;
    }
    return 2;
}

/* ---------------------------------------------------------------- parent */

enum { V_DEFAULT, V_CHOSEN, V_USER, V_DNNL, V_BLIS, NV };
static const char *vnames[NV] = {"OpenBLAS default", "OpenBLAS chosen", "OpenBLAS user", "oneDNN", "BLIS"};
static double res[NV][2][NSHAPES]; /* [variant][1 thread | all threads][shape] */
static char kname[NV][32];

static void spawn(int v, const char *env, const char *what) {
    char exe[PATH_MAX], cmd[PATH_MAX + 512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = 0;
    snprintf(cmd, sizeof cmd, "env %s '%s' --child %s", env, exe, what);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) return;
    char line[256];
    while (fgets(line, sizeof line, p)) {
        char lab[32], k[32];
        int th, s;
        double g;
        if (sscanf(line, "K %31s %31s", lab, k) == 2) snprintf(kname[v], sizeof kname[v], "%s", k);
        else if (sscanf(line, "R %31s %d %d %lf", lab, &th, &s, &g) == 4 && s >= 0 && s < NSHAPES)
            res[v][th == 1 ? 0 : 1][s] = g;
    }
    pclose(p);
}

int main(int argc, char **argv) {
    qd_blas_select(argv);
    if (argc > 2 && !strcmp(argv[1], "--child")) return child(argv[2]);
    __builtin_cpu_init();
    int nproc = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double pk1 = bench_fma_peak(1), pkn = nproc > 1 ? bench_fma_peak(nproc) : pk1;
    printf("FMA peak (%s, short loop): %.0f GFLOP/s on 1 thread, %.0f on %d\n",
           bench_fma_isa(), pk1, pkn, nproc);

    const char *clean = "-u OPENBLAS_CORETYPE -u OPENBLAS_THREAD_TIMEOUT -u QD_BLAS_CHOSEN -u QD_BLAS_SELECT";
    char env[256];
    snprintf(env, sizeof env, "%s QD_BLAS_SELECT=0", clean);
    spawn(V_DEFAULT, env, "openblas");
    spawn(V_CHOSEN, clean, "openblas");
    qd_blas_info self;
    qd_blas_info_get(&self);
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (user && !strcmp(self.chosen_by, "user")) { /* the user's own, not this bench's choice */
        snprintf(env, sizeof env, "-u QD_BLAS_CHOSEN OPENBLAS_CORETYPE='%s'", user);
        spawn(V_USER, env, "openblas");
    }
    spawn(V_DNNL, "OMP_NUM_THREADS=1", "dnnl");
    if (nproc > 1) {
        char e[64];
        snprintf(e, sizeof e, "OMP_NUM_THREADS=%d", nproc);
        spawn(V_DNNL, e, "dnnl");
    }
    spawn(V_BLIS, "BLIS_NUM_THREADS=1", "blis");
    if (nproc > 1) {
        char e[64];
        snprintf(e, sizeof e, "BLIS_NUM_THREADS=%d", nproc);
        spawn(V_BLIS, e, "blis");
    }
    snprintf(kname[V_DNNL], sizeof kname[V_DNNL], "%s", "libdnnl2");

    printf("sgemm GFLOP/s (C = A x B^T, best of 3 rounds), %% of the FMA peak at that thread count:\n");
    printf("%-16s %-7s", "M x N x K", "threads");
    for (int v = 0; v < NV; v++) {
        if (!res[v][0][0] && !res[v][1][0]) continue;
        char h[256];
        snprintf(h, sizeof h, "%s%s%s%s", vnames[v], kname[v][0] ? " (" : "", kname[v], kname[v][0] ? ")" : "");
        printf(" | %-26s", h);
    }
    printf("\n");
    for (int s = 0; s < NSHAPES; s++)
        for (int t = 0; t < (nproc > 1 ? 2 : 1); t++) {
            char sh[32];
            snprintf(sh, sizeof sh, "%dx%dx%d", shapes[s][0], shapes[s][1], shapes[s][2]);
            printf("%-16s %-7d", sh, t ? nproc : 1);
            double pk = t ? pkn : pk1;
            for (int v = 0; v < NV; v++) {
                if (!res[v][0][0] && !res[v][1][0]) continue;
                double g = res[v][t][s];
                char c[40];
                if (g > 0) snprintf(c, sizeof c, "%.1f (%.0f%%)", g, 100 * g / pk);
                else snprintf(c, sizeof c, "-");
                printf(" | %-26s", c);
            }
            printf("\n");
        }
    if (res[V_DEFAULT][nproc > 1][0] > 0 && res[V_CHOSEN][nproc > 1][0] > 0)
        printf("chosen / default kernel at %d threads: %.2fx (square), %.2fx (FFN)\n", nproc,
               res[V_CHOSEN][nproc > 1][0] / res[V_DEFAULT][nproc > 1][0],
               res[V_CHOSEN][nproc > 1][1] / res[V_DEFAULT][nproc > 1][1]);
    char line[512];
    qd_blas_describe(line, sizeof line);
    printf("this process: %s\n", line);
    return 0;
}
