/* Integer GEMM throughput per ISA path against OpenBLAS sgemm at the same shapes, in the same
 * run. Prints figures only; never fails on time.
 *   bench_igemm [--quick]
 * GOP/s counts a multiply and an add as two operations for both, so the ratio is like for like.
 * OpenBLAS runs with the threads it was built for unless OPENBLAS_NUM_THREADS says otherwise;
 * the integer kernels are single-threaded, so the "1t" sgemm figure is the fair comparison.
 * The integer runtime against the FP32 forward is bench_qrt's. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/fp/blas.h"
#include "quant/rt/igemm.h"
#include "base/sys.h"

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

/* Repeats fn until at least min_s seconds passed; returns seconds per call (best of 3). */
#define TIME_IT(min_s, out, body)                                                       \
    do {                                                                                \
        double best_ = 1e30;                                                            \
        for (int rep_ = 0; rep_ < 3; rep_++) {                                          \
            long n_ = 0;                                                                \
            double t0_ = qd_now(), t_;                                                  \
            do { body; n_++; t_ = qd_now() - t0_; } while (t_ < (min_s));               \
            if (t_ / n_ < best_) best_ = t_ / n_;                                       \
        }                                                                               \
        (out) = best_;                                                                  \
    } while (0)

extern void openblas_set_num_threads(int);

int main(int argc, char **argv) {
    qd_blas_select(argv);
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    double min_s = quick ? 0.05 : 0.3;
    /* (M tokens, N out, K in): a prompt batch through LLaMA-7B-sized and small projections,
     * decode (M=1), and the stories260K shapes */
    static const int shapes[][3] = {
        {128, 4096, 4096}, {128, 11008, 4096}, {512, 1024, 1024}, {1, 4096, 4096},
        {256, 172, 64}, {256, 512, 64},
    };
    int ns = (int)(sizeof shapes / sizeof shapes[0]);
    printf("%-18s %-12s %10s %10s\n", "shape MxNxK", "path", "GOP/s", "vs sgemm1t");
    for (int s = 0; s < ns; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        if (quick && (size_t)N * K > (size_t)4096 * 4096) continue;
        double ops = 2.0 * M * N * K;
        int8_t *A = malloc((size_t)M * K), *W = malloc((size_t)N * K);
        uint8_t *W4 = malloc((size_t)N * ((K + 1) / 2));
        int32_t *C = malloc((size_t)M * N * 4);
        float *Af = malloc((size_t)M * K * 4), *Wf = malloc((size_t)N * K * 4),
              *Cf = malloc((size_t)M * N * 4);
        for (size_t i = 0; i < (size_t)M * K; i++) { A[i] = (int8_t)rnd(); Af[i] = A[i]; }
        for (size_t i = 0; i < (size_t)N * K; i++) { W[i] = (int8_t)rnd(); Wf[i] = W[i]; }
        for (size_t i = 0; i < (size_t)N * ((K + 1) / 2); i++) W4[i] = (uint8_t)rnd();
        char shp[32];
        snprintf(shp, sizeof shp, "%dx%dx%d", M, N, K);
        double t_blas1, t_blasn;
        openblas_set_num_threads(1);
        TIME_IT(min_s, t_blas1, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K,
                                            1.0f, Af, K, Wf, K, 0.0f, Cf, N));
        openblas_set_num_threads(2);
        TIME_IT(min_s, t_blasn, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K,
                                            1.0f, Af, K, Wf, K, 0.0f, Cf, N));
        printf("%-18s %-12s %10.1f %10s\n", shp, "sgemm-1t", ops / t_blas1 * 1e-9, "1.00x");
        printf("%-18s %-12s %10.1f %9.2fx\n", shp, "sgemm-2t", ops / t_blasn * 1e-9, t_blas1 / t_blasn);
        qd_err err;
        qd_igemm_w *p8 = qd_igemm_pack_s8(W, N, K, K, &err);
        qd_igemm_w *p4 = qd_igemm_pack_s4(W4, N, K, (K + 1) / 2, &err);
        double t8s[QD_ISA_COUNT] = {0}, t4s[QD_ISA_COUNT] = {0};
        for (int i = QD_ISA_COUNT - 1; i >= 0; i--) {
            if (!qd_isa_supported((qd_isa)i)) {
                printf("%-18s %-12s %10s\n", shp, qd_isa_name((qd_isa)i), "unsupported");
                continue;
            }
            if (i == QD_ISA_SCALAR && (double)M * N * K > 3e8) continue; /* minutes otherwise */
            double t8, t4;
            TIME_IT(min_s, t8, qd_igemm(p8, M, A, K, C, N, (qd_isa)i));
            TIME_IT(min_s, t4, qd_igemm(p4, M, A, K, C, N, (qd_isa)i));
            char name[32];
            snprintf(name, sizeof name, "%s-w8", qd_isa_name((qd_isa)i));
            printf("%-18s %-12s %10.1f %9.2fx\n", shp, name, ops / t8 * 1e-9, t_blas1 / t8);
            snprintf(name, sizeof name, "%s-w4", qd_isa_name((qd_isa)i));
            printf("%-18s %-12s %10.1f %9.2fx\n", shp, name, ops / t4 * 1e-9, t_blas1 / t4);
            t8s[i] = t8;
            t4s[i] = t4;
        }
        /* the same products, same run: AMX against VNNI, VNNI against the scalar path */
        static const int pairs[][2] = {{QD_ISA_AMX_INT8, QD_ISA_AVX512_VNNI},
                                       {QD_ISA_AVX512_VNNI, QD_ISA_SCALAR},
                                       {QD_ISA_AMX_INT8, QD_ISA_SCALAR}};
        for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
            int a = pairs[k][0], b = pairs[k][1];
            if (t8s[a] > 0 && t8s[b] > 0)
                printf("%-18s %s / %s: w8 %.2fx, w4 %.2fx\n", shp, qd_isa_name((qd_isa)a),
                       qd_isa_name((qd_isa)b), t8s[b] / t8s[a], t4s[b] / t4s[a]);
        }
        fflush(stdout);
        qd_igemm_w_free(p8);
        qd_igemm_w_free(p4);
        free(A); free(W); free(W4); free(C); free(Af); free(Wf); free(Cf);
    }
    return 0;
}
