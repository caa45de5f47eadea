/* Integer GEMM throughput per ISA path against OpenBLAS sgemm at the same shapes, in the same
 * run. Prints figures only; never fails on time.
 *   bench_igemm [--quick]
 * GOP/s counts a multiply and an add as two operations for both, so the ratio is like for like.
 * OpenBLAS runs with the threads it was built for unless OPENBLAS_NUM_THREADS says otherwise;
 * the integer kernels are single-threaded, so the "1t" sgemm figure is the fair comparison. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/data.h"
#include "quant/forward.h"
#include "quant/igemm.h"
#include "quant/loadtok.h"
#include "quant/qrt.h"

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

static int fp_logits(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err) {
    return qd_forward(ctx, tokens, B, T, logits, err);
}

/* Evaluation throughput on stories260K: the FP32 forward (OpenBLAS, 1 thread) against the
 * integer runtime (W8A8 and W4A8, RTN encodings), same tokens, same windows. */
static void bench_runtime(void) {
    const char *root = getenv("QD_FIXTURES");
    char mp[1024], tp[1024];
    snprintf(mp, sizeof mp, "%s/models/stories260K.gguf", root && *root ? root : "../shared/fixtures");
    snprintf(tp, sizeof tp, "%s/text/tinystories-valid-excerpt.txt", root && *root ? root : "../shared/fixtures");
    qd_err err;
    qd_model *m = qd_model_load(mp, &err);
    qd_tokenizer *tok = m ? qd_tok_for_model(m, mp, NULL, &err) : NULL;
    qd_tokens tk = {0};
    if (!tok || qd_data_load(tp, tok, m->cfg.vocab_size, &tk, &err)) {
        printf("runtime bench skipped: %s\n", err.msg);
        qd_tok_free(tok);
        qd_model_free(m);
        return;
    }
    int T = 256;
    size_t n = tk.n - 8 * (size_t)T;
    n -= n % T;
    openblas_set_num_threads(1);
    qd_eval_result r;
    if (qd_eval_ppl(fp_logits, m, m->cfg.vocab_size, tk.ids + 8 * T, n, T, &r, &err) == QD_OK)
        printf("eval stories260K T=%d: fp32 forward      %9.0f tok/s  ppl %.4f\n", T, r.tokens / r.seconds, r.ppl);
    double fp_tps = r.tokens / r.seconds;
    for (int wb = 8; wb >= 4; wb -= 4) {
        qd_qint_enc e;
        if (qd_qint_enc_rtn(&e, m, wb, tk.ids, 8, T, &err)) break;
        qd_qint *qi = qd_qint_build(m, &e, &err);
        qd_qrt_opts o;
        qd_qrt_defaults(&o);
        qd_qrt *rt = qi ? qd_qrt_new(qi, &o, &err) : NULL;
        if (rt && qd_eval_ppl(qd_qrt_logits_fn, rt, m->cfg.vocab_size, tk.ids + 8 * T, n, T, &r, &err) == QD_OK)
            printf("eval stories260K T=%d: int W%dA8 (%s) %9.0f tok/s  ppl %.4f  (%.2fx fp32)\n", T, wb,
                   qd_isa_name(qd_qrt_isa(rt)), r.tokens / r.seconds, r.ppl, r.tokens / r.seconds / fp_tps);
        if (qi) {
            size_t nw, nb;
            qd_qint_weight_bits(qi, &nw, &nb);
            printf("  W%dA8 artifact payload %zu bytes vs FP32 %zu bytes (%.2f bits/weight)\n", wb,
                   qd_qint_bytes(qi), qd_model_n_params(m) * 4, (double)nb / nw);
        }
        qd_qrt_free(rt);
        qd_qint_free(qi);
        qd_qint_enc_free(&e);
    }
    qd_tokens_free(&tk);
    qd_tok_free(tok);
    qd_model_free(m);
}

int main(int argc, char **argv) {
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
        }
        fflush(stdout);
        qd_igemm_w_free(p8);
        qd_igemm_w_free(p4);
        free(A); free(W); free(W4); free(C); free(Af); free(Wf); free(Cf);
    }
    bench_runtime();
    return 0;
}
