/* The cost model of a quantize run (estimate.h). Every part is the size of a buffer the
 * pipeline allocates, written with the same dimensions as the allocation it mirrors (the
 * file and function are named beside each), summed over what is alive at once in each phase.
 * The peak is the largest phase. */
#include "quant/estimate.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/limits.h"
#include "base/str.h"
#include "base/sys.h"
#include "quant/fp/eval.h"
#include "quant/fp/layers.h"
#include "quant/opt/mobilequant.h"
#include "quant/quantize.h"
#include "quant/sim/fakequant.h"

/* What the process holds before any tensor: the binary, libc, OpenBLAS's buffers, the
 * allocator's arenas; read off the RSS of quantize runs of stories260K (a 1 MB model) at the
 * start of the FP32 evaluation. Each further thread adds OpenBLAS's buffer. */
#define BASE_BYTES (16.0 * 1048576)
#define BASE_PER_THREAD (8.0 * 1048576)
/* Address space reserved but not resident: VmPeak - VmHWM of quantize runs (a dim-512 model):
 * 305 MiB on 1 thread, 316 on 2, 680 on 4 (each further thread: a malloc arena, a stack,
 * OpenBLAS's buffer). */
#define VM_EXTRA (320.0 * 1048576)
#define VM_PER_THREAD (192.0 * 1048576)

typedef struct {
    double D, F, QD, KV, V, L, T;
    double wlin;  /* the linear weights of all layers, elements */
    double wmax;  /* the largest linear weight of a layer, elements */
    double cmax;  /* the widest fan-in */
    double R;     /* sizeof(qd_real) */
} shape;

/* The simulation qd_qsim_new(train, B windows) allocates (fakequant.c): the quantized
 * embedding and head, saved activations (every layer when training, one otherwise; train 2:
 * training with recompute, one layer's, every layer's input and one more output buffer),
 * scratch, the parameters and their gradients. */
static double sim_bytes(const shape *s, const qd_config *c, double B, int train,
                        double n_params) {
    double N = B * s->T, R = s->R;
    int recompute = train == 2;
    double heads = c->n_heads;
    double act = R * (12 * N * s->D + 6 * N * s->QD + 6 * N * s->KV + 8 * N * s->F + 4 * N +
                      2 * B * heads * s->T * s->T);
    double vd = s->V * s->D * R * (c->tied_embeddings ? 1 : 2);
    double mw = fmax(fmax(s->D, s->F), s->QD);
    double scr = R * ((train ? 4 : 2) * s->wmax + (train ? 8 * N * mw + 2 * s->T * s->T
                                                         : s->T * s->T) +
                      4 * N * s->D);
    double layers = train && !recompute ? s->L : 1;
    double saved = recompute ? R * N * s->D * (s->L + 1) : 0;
    return vd + act * layers + saved + scr + 2 * R * n_params;
}

static void add(qd_est_phase *p, const char *name, double bytes) {
    if (p->n_parts < QD_EST_PARTS) p->part[p->n_parts++] = (qd_est_part){name, bytes};
    p->bytes += bytes;
}

static qd_est_phase *phase(qd_estimate *e, const char *name) {
    qd_est_phase *p = &e->ph[e->n_phases++];
    memset(p, 0, sizeof *p);
    p->phase = name;
    return p;
}

/* The learned parameters of the simulation (fakequant.c qd_qsim_new): LET scales, LWC bounds,
 * LRL ranges. */
static double sim_params(const shape *s, const qd_config *c, int wbits) {
    double rows = 0;
    /* LWC per output channel at W4 (and for down at W8), per tensor otherwise */
    double per_layer_rows[7] = {s->QD, s->KV, s->KV, s->D, s->F, s->F, s->D};
    for (int w = 0; w < 7; w++) rows += (wbits < 8 || w == 6) ? per_layer_rows[w] : 1;
    double let = 2 * s->D + s->F + (c->n_kv_heads == c->n_heads ? s->KV : 0);
    return s->L * (2 * rows + let + 2 * 16) + 2 * 8;
}

/* A short sgemm at the shape of one layer's FFN on T tokens: its GFLOP/s with the run's
 * threads (the caller set them). */
static double probe_gflops(const shape *s) {
    int M = (int)fmin(s->T, 256), K = (int)fmin(s->D, 2048), N = (int)fmin(s->F, 4096);
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)K * N);
    float *c = malloc(sizeof(float) * (size_t)M * N);
    double best = NAN;
    if (a && b && c) {
        for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)((i * 7 % 13) - 6) / 8;
        for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)((i * 5 % 11) - 5) / 8;
        double t_end = qd_now() + 0.3;
        do {
            double t0 = qd_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c,
                        N);
            double dt = qd_now() - t0, g = 2.0 * M * N * K / dt / 1e9;
            if (isnan(best) || g > best) best = g;
        } while (qd_now() < t_end);
    }
    free(a), free(b), free(c);
    return best;
}

void qd_quantize_estimate(const qd_quant_opts *o, const qd_config *c, double file_bytes,
                          size_t n_calib, size_t n_ev, int probe, qd_estimate *e) {
    memset(e, 0, sizeof *e);
    shape s;
    s.D = c->dim, s.F = c->hidden_dim, s.V = c->vocab_size, s.L = c->n_layers;
    s.QD = (double)c->n_heads * c->head_dim, s.KV = (double)c->n_kv_heads * c->head_dim;
    s.T = o->seq_len;
    s.R = sizeof(qd_real);
    s.wlin = s.L * (2 * s.QD * s.D + 2 * s.KV * s.D + 3 * s.F * s.D);
    s.wmax = fmax(fmax(s.QD * s.D, s.F * s.D), s.KV * s.D);
    s.cmax = fmax(fmax(s.D, s.F), s.QD);
    qd_model tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cfg = *c;
    double n_model = (double)qd_model_n_params(&tmp);
    int wbits = o->wbits;
    qd_method meth;
    qd_err err;
    if (qd_method_parse(o->method, &meth, &err)) meth = QD_METHOD_DEFAULT;
    int training = meth == QD_METHOD_MOBILEQUANT || meth == QD_METHOD_OMNIQUANT;
    int gptq = meth == QD_METHOD_MOBILEQUANT;
    int fpt = gptq && wbits < 8;
    double T = s.T, D = s.D;
    /* the windows qd_mq_run uses: the budget's samples, as overlapping windows on short data */
    double nw = fmin(o->samples, fmax(1, 1 + floor(((double)n_calib - T) / fmax(1, floor(T / 8)))));
    if (nw < 1) nw = 1;
    qd_mq_opts mqd; /* the optimizer's own defaults: the held-out fraction, the eval windows */
    qd_mq_defaults(&mqd, wbits);
    double nh = training && o->epochs > 0
                    ? fmax(1, fmin(floor(mqd.holdout * n_calib / T), fmax(1, floor(o->samples / 8.0))))
                    : 0;
    double B = o->batch > 0 ? fmin(o->batch, nw) : 1;
    double Bev = mqd.eval_batch;

    double base = BASE_BYTES + BASE_PER_THREAD * (o->threads > 2 ? o->threads - 2 : 0);
    double model = 4 * n_model;                               /* model.c: F32, one block */
    double tokens = 2 * 4.0 * (double)(n_calib + n_ev);       /* data.c ids, and a copy */
    double ref = fmin((double)QD_EVAL_REF_BYTES, (double)n_ev * s.V * 8) + 32.0 * n_ev;
    double lg_eval = 4 * (double)qd_eval_batch((int)T, c->vocab_size) * T * s.V; /* eval.c logits */
    double fwd_ws = 4 * (double)qd_eval_batch((int)T, c->vocab_size) * T *
                    (2 * D + 2 * s.QD + 2 * s.KV + 2 * s.F);      /* forward.c workspace */
    double np = sim_params(&s, c, wbits);
    int recompute = o->recompute == 1;
    e->recompute = recompute;
    double sim_t = sim_bytes(&s, c, B, recompute ? 2 : 1, np), sim_e = sim_bytes(&s, c, Bev, 0, np);
    double lg_collect = 4 * B * T * s.V;                      /* qd_qsim_collect logits */
    double trainer = 4 * (nw + nh + 4 * B) * T * D + 4 * 4 * np; /* targets, x0..dout, Adam */
    double wfix = s.wlin + 8 * s.L * (s.QD + 2 * s.KV + s.D + 2 * s.F + s.D); /* GPTQ's codes */
    /* X (and Xf), Y, and where each stage ended per window: o's or gate/up's input, the
     * residual, down's input (and the FP stream's first two) */
    double gp_x = s.R * nw * T * D * (fpt ? 2 : 1) + s.R * Bev * T * D +
                  s.R * nw * T * (fmax(s.QD, D) + D + s.F) +
                  (fpt ? s.R * nw * T * (fmax(s.QD, D) + D) : 0);
    double gp_h = 8 * s.cmax * s.cmax * (fpt ? 2 : 1) + 4 * s.cmax * s.cmax; /* H (and C), scratch */
    /* qd_gptq_round at the widest fan-in: Hp, U and the weight in double; at W4
     * qd_gptq_target's A, Z, Wd first (not at once with round's) */
    double rows_at_cmax = s.cmax == s.F ? s.D : s.F;
    double gp_round = 2 * 8 * s.cmax * s.cmax + 8 * rows_at_cmax * s.cmax +
                      3 * s.R * s.wmax * (fpt ? 2 : 1) / 1.0;
    double qint = s.wlin * wbits / 8.0 + s.V * D * (c->tied_embeddings ? 1 : 2) +
                  16.0 * s.L * (s.D + s.F);                   /* int_model.c */
    double qint_tmp = 4 * fmax(s.wmax, s.V * D);              /* int_model.c hat */
    double rt_bufs = 4 * (double)qd_eval_batch((int)T, c->vocab_size) * T * (4 * D + 2 * s.F + 2 * s.QD);

    /* what every phase after the load holds: the process, the model, the token ids and the
     * FP32 reference; each phase then adds its own parts */
    const char *model_name = "model (F32)";
#define PHASE(name)                                                                        \
    do {                                                                                   \
        p = phase(e, name);                                                                \
        add(p, "process and libraries", base);                                             \
        add(p, model_name, model);                                                         \
        add(p, "token ids", tokens);                                                       \
        add(p, "FP32 reference log-probabilities", ref);                                   \
    } while (0)
    qd_est_phase *p = phase(e, "load");
    add(p, "process and libraries", base);
    add(p, model_name, model);
    add(p, "checkpoint file, mapped while read", file_bytes);
    add(p, "token ids", tokens);

    PHASE("eval fp32");
    add(p, "logits of one eval batch", lg_eval);
    add(p, "forward workspace", fwd_ws);

    /* the baselines (RTN, SmoothQuant) before the chosen method: a calibration simulation,
     * then an evaluation one */
    PHASE("baselines");
    add(p, "evaluation simulation", sim_e);
    add(p, "calibration simulation", sim_bytes(&s, c, 1, 0, np));
    add(p, "logits of one eval batch", lg_eval);

    PHASE("calibrate");
    const char *tsim = recompute ? "training simulation (one layer's activations)"
                                 : "training simulation";
    add(p, training ? tsim : "simulation", sim_t);
    add(p, "statistics logits", lg_collect);
    /* MobileQuant keeps the first statistics pass's outputs as its end-to-end targets */
    if (meth == QD_METHOD_MOBILEQUANT && o->epochs > 0) add(p, "end-to-end targets", s.R * nw * T * D);

    if (training && o->epochs > 0) {
        PHASE("optimize");
        add(p, tsim, sim_t);
        add(p, "targets, batch buffers, optimizer state", trainer);
    }
    const char *codes = "GPTQ's final weights (a byte each)";
    if (gptq) {
        PHASE("gptq");
        add(p, "evaluation simulation", sim_e);
        add(p, codes, wfix);
        add(p, "GPTQ layer inputs", gp_x);
        add(p, "GPTQ Hessians", gp_h);
        add(p, "GPTQ factorisation of the widest weight", gp_round);
        /* at W4 the best ridge λ's integers, kept while the others run */
        add(p, "the best ridge λ's integers", fpt && nh > 0 ? wfix : 0);
        add(p, "held-out targets and buffers", training ? 4 * (nh + 2 * B) * T * D : 0);
    }
    /* the chosen method's evaluation and per-layer errors (quantize.c layer_errors: five
     * activation buffers of the evaluation batch) */
    PHASE("eval");
    add(p, "evaluation simulation", sim_e);
    add(p, codes, gptq ? wfix : 0);
    add(p, "logits of one eval batch", lg_eval);
    add(p, "per-layer error buffers", 5 * s.R * Bev * T * D);

    /* the fold writes into the model itself (encodings.h qd_encodings_build_into) */
    model_name = "model (F32), folded in place";
    PHASE("fold");
    add(p, "evaluation simulation", sim_e);
    add(p, codes, gptq ? wfix : 0);
    add(p, "logits of one eval batch", lg_eval);

    model_name = "folded model (F32)";
    PHASE("export");
    add(p, "integer model, built and read back", 2 * qint + qint_tmp);
    add(p, "integer runtime buffers and logits", rt_bufs + lg_eval);
#undef PHASE

    e->peak = 0;
    for (int i = 1; i < e->n_phases; i++)
        if (e->ph[i].bytes > e->ph[e->peak].bytes) e->peak = i;
    e->peak_bytes = e->ph[e->peak].bytes;
    e->vm_bytes = e->peak_bytes + VM_EXTRA + VM_PER_THREAD * (o->threads > 2 ? o->threads - 2 : 0);

    /* time: a forward costs 2 flops per weight per token plus attention; a training step
     * forward and backward about 3 forwards, its GEMMs at about 80% of the probed sgemm
     * (bench_optimizer: a whole step at 64% of sgemm's GFLOP/s, with the non-GEMM work in it),
     * plus the work per weight that does not depend on the tokens: every step fake-quantizes
     * every weight and runs the LWC/LET backward through it, about 15 ns per weight on one
     * core (bench_optimizer's non-GEMM 35% over its 51 M weights), on the pool's threads */
    double attn = s.L * 2 * 2 * T / 2 * s.QD; /* QKᵀ and PV, causal: per token */
    double fwd_tok = 2 * s.wlin + attn + 2 * s.V * D;
    e->steps = training ? (long)(ceil(nw / B) * o->epochs) : 0;
    /* with recompute every layer's forward runs twice: 4 forwards */
    e->step_flops = training && o->epochs > 0 ? (recompute ? 4 : 3) * (2 * s.wlin + attn) * B * T : 0;
    e->sgemm_gflops = e->step_s = e->total_s = NAN;
    if (probe) {
        e->sgemm_gflops = probe_gflops(&s);
        double rate = e->sgemm_gflops * 1e9 * 0.8;
        e->step_s = e->step_flops > 0 ? e->step_flops / rate + 15e-9 * s.wlin / o->threads : 0;
        /* the run: the FP32 reference and three variants' evaluations, calibration passes
         * (two per variant, RTN's and SmoothQuant's one), the optimizer, GPTQ (per window and
         * layer one forward, its stages resuming where the last ended; the four inputs'
         * Hessians by ssyrk, n·cols² flops; seven factorisations per layer; at W4 the FP
         * stream's forward and the cross products Xqᵀ·Xfp by sgemm, 2·n·cols², too, and all
         * of it per ridge λ), the integer evaluation at about the FP32 forward's speed */
        /* calibration: two statistics passes per variant, RTN's one, SmoothQuant's one (it
         * shares RTN's) */
        double evt = (double)n_ev * fwd_tok * 5, cal = 4 * nw * T * fwd_tok;
        double w_qkv = (s.QD + 2 * s.KV) * s.D, w_o = s.QD * s.D, w_gu = 2 * s.F * s.D, w_dn = s.F * s.D;
        double cols2 = 2 * s.D * s.D + s.QD * s.QD + s.F * s.F; /* Σ cols² of the 4 inputs */
        double gq_tok = (2 * s.L * (w_qkv + w_o + w_gu + w_dn) + attn) * (fpt ? 2 : 1) +
                        s.L * cols2 * (fpt ? 3 : 1);
        double gq = gptq ? nw * T * gq_tok * (fpt ? 6 : 1) +
                    s.L * 7 * 2 * s.cmax * s.cmax * s.cmax / 3 * (fpt ? 6 : 1) : 0;
        e->total_s = (evt + cal + gq) / rate + e->step_s * (double)e->steps;
    }
}

void qd_estimate_format(const qd_estimate *e, char *buf, size_t n) {
    size_t k = 0;
#define PUT(...) \
    do { \
        int w_ = snprintf(buf + k, k < n ? n - k : 0, __VA_ARGS__); \
        if (w_ > 0) k += (size_t)w_; \
    } while (0)
    char sz[32];
    PUT("%-10s %12s\n", "phase", "peak memory");
    for (int i = 0; i < e->n_phases; i++) {
        qd_format_size(e->ph[i].bytes, sz, sizeof sz);
        PUT("%-10s %12s%s\n", e->ph[i].phase, sz, i == e->peak ? "  <- peak" : "");
    }
    const qd_est_phase *p = &e->ph[e->peak];
    qd_format_size(e->vm_bytes, sz, sizeof sz);
    PUT("address space at the peak: %s (what RLIMIT_AS and --max-mem limit)\n", sz);
    if (e->recompute)
        PUT("activations: one layer's kept, each layer recomputed in the backward (--recompute)\n");
    PUT("\nat the peak (%s):\n", p->phase);
    for (int i = 0; i < p->n_parts; i++) {
        if (p->part[i].bytes <= 0) continue;
        qd_format_size(p->part[i].bytes, sz, sizeof sz);
        PUT("  %-42s %12s\n", p->part[i].name, sz);
    }
    if (!isnan(e->step_s)) {
        PUT("\nsgemm here: %.0f GFLOP/s\n", e->sgemm_gflops);
        if (e->steps > 0)
            PUT("optimizer: %ld steps, %.3g GFLOP each, about %.3g s per step%s\n", e->steps,
                e->step_flops / 1e9, e->step_s,
                e->recompute ? " (activations recomputed per layer)" : "");
        PUT("whole run: about %.0f s (%.1f h)\n", e->total_s, e->total_s / 3600);
    }
#undef PUT
}
