/* MobileQuant optimizer throughput on a synthetic model (dim 1024, FFN 2816, 4 layers, 16
 * heads, vocab 4096, one window of T = 512, random weights, W8A8, every parameter trained):
 * steps/s and tokens/s of a full step (embed, forward, MSE, backward, AdamW); the share of the
 * step spent in sgemm; achieved GFLOP/s of the step (matmul FLOPs / step time) against plain
 * sgemm GFLOP/s measured in the same run; peak RSS against the analytic bytes of weights +
 * trained parameters, gradients and Adam moments + saved activations. Prints figures, asserts
 * nothing about time. Threads: OPENBLAS_NUM_THREADS (printed).
 * QD_BENCH_SMALL=1 shrinks the config (quick smoke run). */
#define QD_GEMM_PROFILE
#include "quant/fp/blas.h"
#include "quant/sim/ops.c"
#include "quant/sim/fakequant.c"

#include <stdio.h>

#include "quant/opt/optim.h"
#include "tests/synth.h"

static double plain_sgemm_gflops(int M, int N, int K) {
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)N * K);
    float *c = malloc(sizeof(float) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 17) * 0.01f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 13) * 0.01f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
    int reps = 0;
    double t0 = qd_now(), t;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, a, K, b, K, 0, c, N);
        reps++;
        t = qd_now() - t0;
    } while (t < 1.0);
    free(a), free(b), free(c);
    return 2.0 * M * N * K * reps / t / 1e9;
}

int main(void) {
    qd_blas_select(NULL);
    int small = getenv("QD_BENCH_SMALL") != NULL;
    int D = small ? 256 : 1024, F = small ? 704 : 2816, L = small ? 2 : 4, H = small ? 4 : 16;
    int T = small ? 128 : 512, V = 4096, steps = small ? 3 : 2;
    const char *thr = getenv("OPENBLAS_NUM_THREADS");
    printf("bench_optimizer: dim %d ffn %d layers %d heads %d T %d vocab %d, W8A8, LET+LWC+LRL, "
           "OPENBLAS_NUM_THREADS=%s\n", D, F, L, H, T, V, thr ? thr : "(unset)");
    qd_config c = synth_config(D, F, L, H, H, V, T);
    qd_err err = {{0}};
    qd_model *m = synth_model(&c, 1, &err);
    if (!m) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = 8, o.Bmax = 1, o.Tmax = T, o.train = 1;
    qd_qsim *q = qd_qsim_new(m, &o, &err);
    if (!q) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    /* ranges from one FP pass so the quantizers see realistic grids */
    int *tok = malloc(sizeof(int) * (size_t)T);
    uint64_t s = 5;
    for (int i = 0; i < T; i++) tok[i] = (int)(synth_next(&s) % (uint64_t)V);
    qd_qstats *st = qd_qstats_new(&c);
    qd_qsim_collect(q, tok, 1, T, st, &err);
    qd_qsim_init_ranges(q, st);
    qd_qstats_free(st);
    qd_adam *a = qd_adam_new(q->n_params, q->grp_off, QD_GRP_COUNT, &err);
    a->total_steps = 100;
    a->lr_max[QD_GRP_LET] = 1e-3, a->lr_max[QD_GRP_LWC] = 1e-2, a->lr_max[QD_GRP_LRL] = 1e-6;
    a->lr_min[QD_GRP_LET] = 1e-4, a->lr_min[QD_GRP_LWC] = 1e-3, a->lr_min[QD_GRP_LRL] = 1e-7;
    size_t nd = (size_t)T * D;
    float *x0 = malloc(sizeof(float) * nd), *out = malloc(sizeof(float) * nd);
    float *tgt = calloc(nd, sizeof(float)), *dout = malloc(sizeof(float) * nd);
    double tstep = 0, gsec = 0, gflop = 0;
    for (int it = 0; it <= steps; it++) { /* step 0 warms up (page faults, BLAS buffers) */
        double g0 = qd_gemm_seconds, f0 = qd_gemm_flops, t0 = qd_now();
        qd_qsim_zero_grad(q);
        q->rc.cursor = 0;
        qd_qsim_embed(q, tok, 1, T, x0);
        qd_qsim_forward_blocks(q, x0, out, 1, T);
        double loss = 0;
        for (size_t i = 0; i < nd; i++) {
            double d = out[i] - tgt[i];
            loss += d * d;
            dout[i] = (float)(2 * d / nd);
        }
        qd_qsim_backward_blocks(q, dout);
        qd_adam_step(a, q->p, q->g);
        double dt = qd_now() - t0;
        if (it > 0) tstep += dt, gsec += qd_gemm_seconds - g0, gflop += qd_gemm_flops - f0;
        printf("  step %d: %.3f s (loss %.4g)%s\n", it, dt, loss / nd, it ? "" : " warm-up");
    }
    tstep /= steps, gsec /= steps, gflop /= steps;
    double peak = plain_sgemm_gflops(T, F, D);
    printf("optimizer: %.3f steps/s, %.0f tokens/s (%.3f s/step)\n", 1 / tstep, T / tstep, tstep);
    printf("sgemm share of step: %.1f%% (%.3f s sgemm, %.3f s the rest: quantizers, LET, "
           "norms, softmax, Adam)\n", 100 * gsec / tstep, gsec, tstep - gsec);
    printf("step matmul work: %.1f GFLOP; achieved %.1f GFLOP/s over the whole step, %.1f GFLOP/s "
           "inside sgemm; plain sgemm (%dx%dx%d) %.1f GFLOP/s -> step reaches %.0f%% of it\n",
           gflop / 1e9, gflop / tstep / 1e9, gflop / gsec / 1e9, T, F, D, peak,
           100 * gflop / tstep / 1e9 / peak);
    /* analytic bytes: weights, trained parameters x (value, grad, Adam m, v), saved activations */
    size_t N = (size_t)T, QD = (size_t)H * (D / H), KV = QD;
    size_t acts = (size_t)L * (N * D * 12 + N * QD * 6 + N * KV * 6 + N * F * 8 + 2 * N +
                               2 * (size_t)H * T * T + 4 * (size_t)D + KV) * sizeof(float);
    size_t wbytes = m->n_floats * sizeof(float);
    size_t pbytes = q->n_params * (2 * sizeof(float) + 2 * sizeof(float));
    size_t analytic = wbytes + pbytes + acts;
    size_t rss = qd_peak_rss();
    printf("memory: weights %.1f MiB + params/grads/Adam %.2f MiB + saved activations %.1f MiB = "
           "%.1f MiB analytic; qsim allocated %.1f MiB (activations + scratch); peak RSS %.1f "
           "MiB = %.2fx analytic\n", wbytes / 1048576.0, pbytes / 1048576.0, acts / 1048576.0,
           analytic / 1048576.0, qd_qsim_bytes(q) / 1048576.0, rss / 1048576.0,
           (double)rss / (double)analytic);
    free(x0), free(out), free(tgt), free(dout), free(tok);
    qd_adam_free(a);
    qd_qsim_free(q);
    qd_model_free(m);
    return 0;
}
