/* Calibration and GPTQ throughput against the FP32 forward pass, same run, same model (issues 13
 * and 16: "calibration and GPTQ no slower per token than a forward pass"). A synthetic model
 * (dim 1024, FFN 2816, 4 layers, 16/4 heads, vocab 8192, random weights), nw windows of T = 256
 * tokens. Measured:
 *   forward    qd_forward (logits) over the same windows, one at a time: tokens/s;
 *   calibrate  qd_mq_run's "calibrate" phase (two statistics passes, SmoothQuant, the LWC
 *              clipping-ratio search): calibration tokens / seconds of the phase;
 *   gptq       its "gptq" phase (one GPTQ run at W8; at W4 the FP-target λ search runs GPTQ
 *              6 times, once per ridge λ): calibration tokens / seconds of the phase.
 * Each is printed with its ratio to the forward's tokens/s (>= 1: no slower per token). Prints
 * figures, asserts nothing about time. Usage: bench_calib [--w4] [--windows N] [--threads N]
 * [--tinyllama L] (the default pool's threads, 0: all CPUs; --tinyllama: TinyLlama-1.1B's
 * shapes, dim 2048, FFN 5632, 32/4 heads, vocab 32000, with L of its 22 layers;
 * QD_BENCH_SMALL=1: a small config for a smoke run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "base/sys.h"
#include "quant/fp/blas.h"
#include "quant/fp/forward.h"
#include "quant/opt/mobilequant.h"
#include "tests/synth.h"

enum { MAX_PH = 16 };
typedef struct {
    const char *name[MAX_PH];
    double t[MAX_PH];
    int n;
} phases;

static void on_progress(void *ctx, const qd_progress *p) {
    phases *ph = ctx;
    if (ph->n > 0 && !strcmp(ph->name[ph->n - 1], p->phase)) return;
    if (ph->n < MAX_PH) ph->name[ph->n] = p->phase, ph->t[ph->n++] = qd_now();
}

/* seconds from the first report of phase to the next phase's first report (or t_end) */
static double phase_seconds(const phases *ph, const char *name, double t_end) {
    double s = 0;
    for (int i = 0; i < ph->n; i++)
        if (!strcmp(ph->name[i], name)) s += (i + 1 < ph->n ? ph->t[i + 1] : t_end) - ph->t[i];
    return s;
}

int main(int argc, char **argv) {
    qd_blas_select(NULL);
    int small = getenv("QD_BENCH_SMALL") != NULL, w4 = 0;
    int nw = small ? 4 : 8, threads = 0, tl = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--w4")) w4 = 1;
        else if (!strcmp(argv[i], "--windows") && i + 1 < argc) nw = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tinyllama") && i + 1 < argc) tl = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--w4] [--windows N] [--threads N] [--tinyllama L]\n",
                    argv[0]);
            return 2;
        }
    }
    if (nw < 2) nw = 2;
    qd_err err = {{0}};
    if (qd_pool_set_default(threads, &err)) {
        fprintf(stderr, "bench_calib: %s\n", err.msg);
        return 1;
    }
    int D = small ? 256 : 1024, F = small ? 704 : 2816, L = small ? 2 : 4, H = small ? 4 : 16;
    int KV = small ? 2 : 4, T = small ? 128 : 256, V = small ? 2048 : 8192;
    if (tl > 0) D = 2048, F = 5632, L = tl, H = 32, KV = 4, V = 32000;
    const char *thr = getenv("OPENBLAS_NUM_THREADS");
    printf("bench_calib: dim %d ffn %d layers %d heads %d/%d vocab %d, %d windows of T %d, %s, "
           "OPENBLAS_NUM_THREADS=%s, pool %d threads\n", D, F, L, H, KV, V, nw, T,
           w4 ? "W4A8" : "W8A8", thr ? thr : "(unset)", qd_pool_threads(qd_pool_default()));
    qd_config c = synth_config(D, F, L, H, KV, V, T);
    qd_model *m = synth_model(&c, 1, &err);
    int *tok = malloc(sizeof(int) * (size_t)nw * T);
    float *lg = malloc(sizeof(float) * (size_t)T * V);
    qd_fwd_ws *ws = qd_fwd_ws_new();
    if (!m || !tok || !lg || !ws) {
        fprintf(stderr, "bench_calib: %s\n", m ? "out of memory" : err.msg);
        return 1;
    }
    uint64_t s = 11;
    for (size_t i = 0; i < (size_t)nw * T; i++) tok[i] = (int)(synth_next(&s) % (uint64_t)V);

    /* FP32 forward: one warm-up window, then every window once */
    if (qd_forward_ws(m, ws, tok, 1, T, lg, &err)) {
        fprintf(stderr, "bench_calib: %s\n", err.msg);
        return 1;
    }
    double t0 = qd_now();
    for (int w = 0; w < nw; w++)
        if (qd_forward_ws(m, ws, tok + (size_t)w * T, 1, T, lg, &err)) {
            fprintf(stderr, "bench_calib: %s\n", err.msg);
            return 1;
        }
    double tf = qd_now() - t0, fwd = (double)nw * T / tf;
    printf("forward:   %8.1f tokens/s (%.2f s for %d tokens)\n", fwd, tf, nw * T);

    /* the pipeline: calibrate, (W4: one epoch for the held-out λ selection), gptq */
    qd_mq_opts o;
    qd_mq_defaults(&o, w4 ? 4 : 8);
    o.samples = nw, o.seq_len = T, o.epochs = w4 ? 1 : 0, o.batch = 1;
    if (!w4) o.holdout = 0;
    phases ph = {0};
    o.progress = on_progress, o.progress_ctx = &ph;
    o.t0 = qd_now();
    qd_qsim *out = NULL;
    qd_mq_result res;
    if (qd_mq_run(m, tok, (size_t)nw * T, &o, &out, &res, &err)) {
        fprintf(stderr, "bench_calib: %s\n", err.msg);
        return 1;
    }
    double t_end = qd_now();
    int ncal = res.windows * T;
    double tc = phase_seconds(&ph, "calibrate", t_end), tg = phase_seconds(&ph, "gptq", t_end);
    double cal = ncal / tc, gq = ncal / tg;
    printf("calibrate: %8.1f tokens/s (%.2f s for %d calibration tokens, two statistics passes "
           "+ LWC search) = %.2fx the forward's tokens/s\n", cal, tc, ncal, cal / fwd);
    printf("gptq:      %8.1f tokens/s (%.2f s for %d calibration tokens, %d GPTQ run%s) = %.2fx "
           "the forward's tokens/s\n", gq, tg, ncal, res.n_lambda ? res.n_lambda : 1,
           res.n_lambda > 1 ? "s" : "", gq / fwd);
    printf("target (no slower per token than a forward): calibrate %s, gptq %s\n",
           cal >= fwd ? "met" : "NOT met", gq >= fwd ? "met" : "NOT met");
    qd_mq_result_free(&res);
    qd_qsim_free(out);
    qd_fwd_ws_free(ws);
    free(tok), free(lg);
    qd_model_free(m);
    return 0;
}
