/* MobileQuant optimizer throughput on a synthetic model (dim 1024, FFN 2816, 4 layers, 16
 * heads, vocab 4096, one window of T = 512, random weights, W8A8, every parameter trained):
 * tokens/s of a full step (embed, forward, MSE, backward, AdamW) at 1 thread and at all
 * threads, and at all threads with the non-GEMM work on one thread (OpenBLAS's threads only: the
 * numeric core before base/pool ran it, the same run's baseline); per setting the time inside
 * sgemm and the rest (the non-GEMM share of the step), and the step's achieved GFLOP/s (matmul
 * FLOPs / step time) against the best plain sgemm GFLOP/s measured in the same run at the
 * step's shapes and thread count (bench_common.h's timing) and the FMA peak. Peak RSS against
 * the analytic bytes of weights + trained parameters, gradients and Adam moments + saved
 * activations. Prints figures, asserts nothing about time. QD_BENCH_SMALL=1 shrinks the config
 * (quick smoke run). */
#define QD_GEMM_PROFILE
#include "quant/fp/blas.h"
#include "quant/sim/ops.c"
#include "quant/sim/fakequant.c"

#include <stdio.h>

#include "bench/bench_common.h"
#include "quant/opt/optim.h"
#include "tests/synth.h"

static void run_sgemm(int M, int N, int K, const float *A, const float *B, float *C) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, A, K, B, K, 0, C, N);
}

/* One setting's averages over the timed steps. */
typedef struct step_fig {
    double t, gsec, gflop;
} step_fig;

/* A warm-up step then steps timed steps at blas threads for OpenBLAS and pool threads for the
 * default pool. */
static step_fig time_steps(qd_qsim *q, qd_adam *a, const int *tok, int T, int steps, int blas,
                           int pool, float *x0, float *out, float *tgt, float *dout) {
    qd_err err = {{0}};
    openblas_set_num_threads(blas);
    if (qd_pool_set_default(pool, &err)) fprintf(stderr, "%s\n", err.msg);
    size_t nd = (size_t)T * q->cfg.dim;
    step_fig f = {0, 0, 0};
    printf("OpenBLAS %d thread%s, pool %d thread%s:\n", blas, blas > 1 ? "s" : "", pool,
           pool > 1 ? "s" : "");
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
        if (it > 0) f.t += dt, f.gsec += qd_gemm_seconds - g0, f.gflop += qd_gemm_flops - f0;
        printf("  step %d: %.3f s (loss %.4g)%s\n", it, dt, loss / nd, it ? "" : " warm-up");
    }
    f.t /= steps, f.gsec /= steps, f.gflop /= steps;
    return f;
}

int main(void) {
    qd_blas_select(NULL);
    int small = getenv("QD_BENCH_SMALL") != NULL;
    int D = small ? 256 : 1024, F = small ? 704 : 2816, L = small ? 2 : 4, H = small ? 4 : 16;
    int T = small ? 128 : 512, V = 4096, steps = small ? 3 : 2;
    qd_blas_info bi;
    qd_blas_info_get(&bi);
    printf("bench_optimizer: dim %d ffn %d layers %d heads %d T %d vocab %d, W8A8, LET+LWC+LRL; "
           "%s %s, kernel %s\n", D, F, L, H, T, V, bi.library, bi.version, bi.core);
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
    int nproc = qd_pool_online_cpus();
    /* settings: everything on 1 thread; OpenBLAS on all, the rest on 1; everything on all */
    int set[3][2] = {{1, 1}, {nproc, 1}, {nproc, nproc}};
    int nset = nproc > 1 ? 3 : 1;
    step_fig fig[3];
    for (int k = 0; k < nset; k++)
        fig[k] = time_steps(q, a, tok, T, steps, set[k][0], set[k][1], x0, out, tgt, dout);
    /* the best plain sgemm at the step's projection shapes, per thread count, and the FMA peak */
    const int shp[3][3] = {{T, F, D}, {T, D, F}, {T, D, D}};
    double best[2] = {0, 0}, peak[2];
    for (int k = 0; k < (nproc > 1 ? 2 : 1); k++) {
        openblas_set_num_threads(k ? nproc : 1);
        for (int i = 0; i < 3; i++) {
            double g = bench_time_gemm(run_sgemm, shp[i][0], shp[i][1], shp[i][2]);
            if (g > best[k]) best[k] = g;
        }
        peak[k] = bench_fma_peak(k ? nproc : 1);
    }
    if (nproc == 1) best[1] = best[0], peak[1] = peak[0];
    printf("best plain sgemm (%dx%dx%d, %dx%dx%d, %dx%dx%d): %.1f GFLOP/s on 1 thread, %.1f on %d; "
           "FMA peak (%s) %.0f and %.0f\n", T, F, D, T, D, F, T, D, D, best[0], best[1], nproc,
           bench_fma_isa(), peak[0], peak[1]);
    printf("step matmul work: %.1f GFLOP\n", fig[0].gflop / 1e9);
    printf("%-22s %9s %8s %9s %11s %13s %12s %9s\n", "threads (BLAS, rest)", "tokens/s", "s/step",
           "sgemm s", "non-GEMM s", "non-GEMM %", "step GFLOP/s", "of sgemm");
    for (int k = 0; k < nset; k++) {
        step_fig f = fig[k];
        double b = set[k][0] > 1 ? best[1] : best[0];
        char lab[32];
        snprintf(lab, sizeof lab, "%d, %d", set[k][0], set[k][1]);
        printf("%-22s %9.0f %8.3f %9.3f %11.3f %12.1f%% %12.1f %8.0f%%\n", lab, T / f.t, f.t,
               f.gsec, f.t - f.gsec, 100 * (f.t - f.gsec) / f.t, f.gflop / f.t / 1e9,
               100 * f.gflop / f.t / 1e9 / b);
    }
    if (nset == 3)
        printf("all threads: %.2fx the tokens/s of 1 thread; the pool's threads on the non-GEMM "
               "work: %.2fx\n", fig[0].t / fig[2].t, fig[1].t / fig[2].t);
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
