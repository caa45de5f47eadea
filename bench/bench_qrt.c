/* Integer runtime against the FP32 forward, measured in the same run: evaluation tokens/s
 * (qd_eval_ppl: forward plus the NLL of every position, what `quantd eval` does) and
 * forward-only tokens/s, printed as ratios against FP32; artifact bytes against FP32 bytes.
 *   bench_qrt [--quick] [--reps N]
 * Two models: stories260K (dim 64, 5 layers, T = 256, the fixture text) and a synthetic one
 * (dim 1024, 4 layers, FFN 2816, 16 heads, vocab 32000, T = 512, random weights), both with RTN
 * encodings built as test_qrt builds them. Measurements are interleaved (fp, int, fp, int ...)
 * and the best of N rounds is kept, because the machine is shared and noisy.
 *
 * Threads: the FP32 forward uses OpenBLAS, which runs with its own thread count; it is
 * measured twice, with OpenBLAS's default threads and with 1 thread. The integer runtime is
 * measured with 1 and with 2 threads (qd_qrt_opts.threads), so every row carries its ratio
 * to both FP32 figures ("eval/fp": OpenBLAS default threads, "eval/fp1t": 1 thread). On a
 * machine shared with other work the 2-thread figures say more about the load than about the
 * code: compare rows of one run. Never fails on time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/fp/blas.h"
#include "quant/text/data.h"
#include "quant/fp/forward.h"
#include "quant/text/resolve.h"
#include "quant/rt/runtime.h"
#include "tests/synth.h"
#include "base/sys.h"
#include "quant/io/load.h"

extern void openblas_set_num_threads(int);
extern int openblas_get_num_threads(void);

static int fp_logits(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err) {
    return qd_forward(ctx, tokens, B, T, logits, err);
}

typedef struct {
    const char *name;
    qd_model *m;
    const int *ids;       /* evaluation tokens */
    size_t n;
    int T;
    const int *cal;       /* calibration tokens: n_cal windows of T */
    int n_cal;
} bench_case;

typedef struct {
    double eval_tps, fwd_tps; /* best over the rounds */
} figures;

static void keep_best(figures *f, double eval_tps, double fwd_tps) {
    if (eval_tps > f->eval_tps) f->eval_tps = eval_tps;
    if (fwd_tps > f->fwd_tps) f->fwd_tps = fwd_tps;
}

/* One round of one contender: eval tokens/s over the case's tokens and forward-only tokens/s
 * on the first min(n/T, 4) windows. */
static int measure(const bench_case *bc, qd_logits_fn fn, void *ctx, float *logits,
                   figures *f, double *ppl) {
    qd_err err;
    qd_eval_result r;
    if (qd_eval_ppl(fn, ctx, bc->m->cfg.vocab_size, bc->ids, bc->n, bc->T, &r, &err)) {
        printf("  eval failed: %s\n", err.msg);
        return -1;
    }
    int B = (int)(bc->n / bc->T);
    B = B > 4 ? 4 : B;
    double t0 = qd_now();
    if (fn(ctx, bc->ids, B, bc->T, logits, &err)) {
        printf("  forward failed: %s\n", err.msg);
        return -1;
    }
    double t = qd_now() - t0;
    keep_best(f, r.tokens / r.seconds, B * bc->T / t);
    *ppl = r.ppl;
    return 0;
}

/* per_isa: also the W8A8 runtime once per ISA path (small models only: scalar is slow). */
static void run_case(const bench_case *bc, int reps, int blas_default, int per_isa) {
    qd_err err;
    const qd_config *c = &bc->m->cfg;
    printf("== %s: dim %d, %d layers, FFN %d, %d heads (%d kv), vocab %d, T %d, %zu eval tokens\n",
           bc->name, c->dim, c->n_layers, c->hidden_dim, c->n_heads, c->n_kv_heads,
           c->vocab_size, bc->T, bc->n);
    int B = (int)(bc->n / bc->T);
    B = B > 4 ? 4 : B;
    float *logits = malloc(sizeof(float) * (size_t)B * bc->T * c->vocab_size);
    qd_qint *qi[2] = {NULL, NULL};
    qd_qrt *rt[2][2] = {{NULL, NULL}, {NULL, NULL}}; /* [w8, w4][1 thread, nthr threads] */
    const int nthr = 2;
    for (int i = 0; i < 2; i++) {
        qd_qint_enc e;
        int wb = i ? 4 : 8;
        if (qd_qint_enc_rtn(&e, bc->m, wb, bc->cal, bc->n_cal, bc->T, &err)) {
            printf("  W%dA8 encodings: %s\n", wb, err.msg);
            continue;
        }
        qi[i] = qd_qint_build(bc->m, &e, &err);
        qd_qint_enc_free(&e);
        if (!qi[i]) {
            printf("  W%dA8 build: %s\n", wb, err.msg);
            continue;
        }
        for (int t = 0; t < 2; t++) {
            qd_qrt_opts o;
            qd_qrt_defaults(&o);
            o.threads = t ? nthr : 1;
            rt[i][t] = qd_qrt_new(qi[i], &o, &err);
            if (!rt[i][t]) printf("  W%dA8 runtime: %s\n", wb, err.msg);
        }
    }
    figures fpd = {0, 0}, fp1 = {0, 0}, in[2][2] = {{{0, 0}, {0, 0}}, {{0, 0}, {0, 0}}};
    double ppl_fp = 0, ppl_int[2] = {0, 0}, ppl;
    for (int r = 0; r < reps; r++) {
        openblas_set_num_threads(blas_default);
        if (measure(bc, fp_logits, bc->m, logits, &fpd, &ppl_fp)) break;
        openblas_set_num_threads(1);
        if (measure(bc, fp_logits, bc->m, logits, &fp1, &ppl)) break;
        for (int i = 0; i < 2; i++)
            for (int t = 0; t < 2; t++)
                if (rt[i][t]) measure(bc, qd_qrt_logits_fn, rt[i][t], logits, &in[i][t], &ppl_int[i]);
    }
    openblas_set_num_threads(blas_default);
    printf("  %-34s %10s %10s %8s %8s %8s\n", "", "eval t/s", "fwd t/s", "ppl", "eval/fp", "eval/fp1t");
    printf("  %-34s %10.0f %10.0f %8.3f %8s %8.2fx\n", "fp32 forward, OpenBLAS default thr",
           fpd.eval_tps, fpd.fwd_tps, ppl_fp, "1.00x", fpd.eval_tps / fp1.eval_tps);
    printf("  %-34s %10.0f %10.0f %8.3f %7.2fx %8s\n", "fp32 forward, OpenBLAS 1 thread",
           fp1.eval_tps, fp1.fwd_tps, ppl_fp, fp1.eval_tps / fpd.eval_tps, "1.00x");
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < 2; t++) {
            if (!rt[i][t]) continue;
            char name[64];
            snprintf(name, sizeof name, "int W%dA8 (%s), %d thread%s", i ? 4 : 8,
                     qd_isa_name(qd_qrt_isa(rt[i][t])), t ? nthr : 1, t && nthr > 1 ? "s" : "");
            printf("  %-34s %10.0f %10.0f %8.3f %7.2fx %8.2fx\n", name, in[i][t].eval_tps,
                   in[i][t].fwd_tps, ppl_int[i], in[i][t].eval_tps / fpd.eval_tps,
                   in[i][t].eval_tps / fp1.eval_tps);
        }
    for (int i = 0; i < 2; i++)
        if (rt[i][0] && rt[i][1])
            printf("  W%dA8 eval ratios: int 1t/fp32 1t %.2fx, int 1t/fp32 default %.2fx, int %dt/fp32 "
                   "default %.2fx, int %dt/fp32 1t %.2fx; int %dt/1t %.2fx\n", i ? 4 : 8,
                   in[i][0].eval_tps / fp1.eval_tps, in[i][0].eval_tps / fpd.eval_tps, nthr,
                   in[i][1].eval_tps / fpd.eval_tps, nthr, in[i][1].eval_tps / fp1.eval_tps, nthr,
                   in[i][1].eval_tps / in[i][0].eval_tps);
    printf("  forward-only ratios (B <= 4 windows): int W8A8 1t / fp32 1t %.2fx, int W8A8 %dt / fp32 "
           "default %.2fx\n", in[0][0].fwd_tps / fp1.fwd_tps, nthr, in[0][1].fwd_tps / fpd.fwd_tps);
    size_t fp_bytes = qd_model_n_params(bc->m) * 4;
    for (int i = 0; i < 2; i++) {
        if (!qi[i]) continue;
        size_t nw, nb;
        qd_qint_weight_bits(qi[i], &nw, &nb);
        printf("  W%dA8 artifact payload %zu bytes vs FP32 %zu bytes: %.3fx (%.2f bits/weight)\n",
               i ? 4 : 8, qd_qint_bytes(qi[i]), fp_bytes, (double)qd_qint_bytes(qi[i]) / fp_bytes,
               (double)nb / nw);
    }
    if (per_isa && qi[0]) { /* the W8A8 runtime on one thread per path, interleaved rounds */
        qd_qrt *ri[QD_ISA_COUNT] = {NULL};
        figures fi[QD_ISA_COUNT];
        memset(fi, 0, sizeof fi);
        for (int k = 0; k < QD_ISA_COUNT; k++) {
            if (!qd_isa_supported((qd_isa)k)) continue;
            qd_qrt_opts o;
            qd_qrt_defaults(&o);
            o.threads = 1;
            o.isa = (qd_isa)k;
            ri[k] = qd_qrt_new(qi[0], &o, &err);
        }
        for (int r = 0; r < reps; r++)
            for (int k = 0; k < QD_ISA_COUNT; k++)
                if (ri[k]) measure(bc, qd_qrt_logits_fn, ri[k], logits, &fi[k], &ppl);
        printf("  int W8A8 eval t/s per path, 1 thread (vs scalar):");
        for (int k = 0; k < QD_ISA_COUNT; k++) {
            if (ri[k]) printf(" %s %.0f (%.2fx)", qd_isa_name((qd_isa)k), fi[k].eval_tps,
                              fi[k].eval_tps / fi[QD_ISA_SCALAR].eval_tps);
            else printf(" %s unsupported", qd_isa_name((qd_isa)k));
            qd_qrt_free(ri[k]);
        }
        printf("\n");
    }
    fflush(stdout);
    for (int i = 0; i < 2; i++) {
        qd_qrt_free(rt[i][0]);
        qd_qrt_free(rt[i][1]);
        qd_qint_free(qi[i]);
    }
    free(logits);
}

static void bench_stories(int reps) {
    const char *root = getenv("QD_FIXTURES");
    char mp[1024], tp[1024];
    snprintf(mp, sizeof mp, "%s/models/stories260K.gguf", root && *root ? root : "../shared/fixtures");
    snprintf(tp, sizeof tp, "%s/text/tinystories-valid-excerpt.txt", root && *root ? root : "../shared/fixtures");
    qd_err err;
    qd_model *m = qd_model_load(mp, &err);
    qd_tokenizer *tok = m ? qd_tok_for_model(m, mp, NULL, &err) : NULL;
    qd_tokens tk = {0};
    if (!tok || qd_data_load(tp, tok, m->cfg.vocab_size, &tk, &err)) {
        printf("stories260K skipped: %s\n", err.msg);
    } else {
        int T = 256;
        size_t n = tk.n - 8 * (size_t)T;
        n -= n % T;
        bench_case bc = {"stories260K", m, tk.ids + 8 * T, n, T, tk.ids, 8};
        run_case(&bc, reps, openblas_get_num_threads(), 1);
    }
    qd_tokens_free(&tk);
    qd_tok_free(tok);
    qd_model_free(m);
}

/* The synthetic model of bench_forward (same weights), with tokens whose statistics are not
 * uniform (a few frequent ids), calibration on windows disjoint from the evaluation ones. */
static void bench_synthetic(int reps, int quick) {
    qd_config c = synth_config(1024, 2816, 4, 16, 16, 32000, 512);
    qd_err err;
    qd_model *m = synth_model(&c, 42, &err);
    if (!m) {
        printf("synthetic skipped: %s\n", err.msg);
        return;
    }
    /* synth_model's embeddings are ~1: with the tied head the random logits would reach the
     * hundreds and the perplexity column would overflow; scaled down it stays a number. */
    for (size_t i = 0; i < (size_t)c.vocab_size * c.dim; i++) m->tok_emb[i] *= 0.05f;
    uint64_t s = 42;
    int T = 512, n_cal = 2, n_eval = quick ? 2 : 4;
    int *ids = malloc(sizeof(int) * (size_t)(n_cal + n_eval) * T);
    for (int i = 0; i < (n_cal + n_eval) * T; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t r = (uint32_t)(s >> 33);
        ids[i] = r % 4 ? (int)(r % 300) : (int)(r % (uint32_t)c.vocab_size);
    }
    bench_case bc = {"synthetic", m, ids + (size_t)n_cal * T, (size_t)n_eval * T, T, ids, n_cal};
    run_case(&bc, reps, openblas_get_num_threads(), 0);
    free(ids);
    qd_model_free(m);
}

int main(int argc, char **argv) {
    qd_blas_select(argv);
    int quick = 0, reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1, reps = 2;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    }
    if (reps < 1) reps = 1;
    printf("integer runtime vs FP32 forward (same run; best of %d interleaved rounds); OpenBLAS "
           "default threads %d\n", reps, openblas_get_num_threads());
    bench_stories(reps);
    bench_synthetic(reps, quick);
    return 0;
}
