/* The numeric core gives the same bits for any thread count (base/par.h): every op of the
 * simulation on tensors that span many chunks, a whole optimizer step (embedding, forward,
 * backward, AdamW) at W8A8 and W4A8, the calibration statistics, the FP32 forward's logits and
 * an evaluation against the kept FP32 reference (nll, KL, top-1), each at 1, 2 and 3
 * threads of the default pool, compared with memcmp against the one-thread run (the
 * reference: its chunks run in order on the caller); and the ops' SIMD element loops against
 * their scalar loops. The matrix products run on OpenBLAS's threads, outside the pool, in every
 * run alike. */
#include "base/pool.h"
#include "quant/fp/eval.h"
#include "quant/fp/forward.h"
#include "quant/opt/optim.h"
#include "quant/sim/fakequant.h"
#include "quant/sim/ops.h"
#include "tests/check.h"
#include "tests/synth.h"

static const int THREADS[] = {1, 2, 3};
#define NT 3

static void set_threads(int t) {
    qd_err err = {{0}};
    CHECK(qd_pool_set_default(t, &err) == QD_OK, "%s", err.msg);
}

static void fillr(float *p, size_t n, uint64_t seed, float lo, float hi) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * 0.5f * (float)(synth_u(&s) + 1);
}

/* Results of one run: named buffers, compared between thread counts. */
#define MAXR 24
typedef struct run {
    int n;
    const char *name[MAXR];
    void *buf[MAXR];
    size_t bytes[MAXR];
} run;

static void keep(run *r, const char *name, const void *p, size_t bytes) {
    if (r->n == MAXR) return;
    r->name[r->n] = name;
    r->buf[r->n] = malloc(bytes ? bytes : 1);
    memcpy(r->buf[r->n], p, bytes);
    r->bytes[r->n++] = bytes;
}

static void run_free(run *r) {
    for (int i = 0; i < r->n; i++) free(r->buf[i]);
    r->n = 0;
}

/* Every buffer of b the same bytes as a's. */
static void same_bits(const run *a, const run *b, int threads, const char *what) {
    CHECK(a->n == b->n, "%s: %d vs %d results", what, a->n, b->n);
    for (int i = 0; i < a->n && i < b->n; i++)
        CHECK(a->bytes[i] == b->bytes[i] && !memcmp(a->buf[i], b->buf[i], a->bytes[i]),
              "%s: %s differs at %d threads from 1 thread", what, a->name[i], threads);
}

/* ---------------------------------------------------------------- ops */

static void ops_once(run *r) {
    enum { N = 96, C = 520, T = 256, NH = 2, HD = 16 };
    size_t n = (size_t)N * C;
    float *x = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
    float *y = malloc(sizeof(float) * n), *dx = calloc(n, sizeof(float));
    float *w = malloc(sizeof(float) * C), *b = malloc(sizeof(float) * C);
    float *dw = calloc(C, sizeof(float)), *db = calloc(C, sizeof(float));
    float mean[N], rstd[N];
    fillr(x, n, 1, -2, 2), fillr(d, n, 2, -1, 1);
    fillr(w, C, 3, 0.5f, 1.5f), fillr(b, C, 4, -1, 1);
    qd_rmsnorm_forward(y, rstd, x, w, N, C, 1e-5f);
    keep(r, "rmsnorm out", y, sizeof(float) * n);
    qd_rmsnorm_backward(dx, dw, d, x, w, rstd, N, C);
    keep(r, "rmsnorm dx", dx, sizeof(float) * n), keep(r, "rmsnorm dw", dw, sizeof(float) * C);
    qd_layernorm_forward(y, mean, rstd, x, w, b, N, C, 1e-5f);
    keep(r, "layernorm out", y, sizeof(float) * n);
    memset(dx, 0, sizeof(float) * n);
    qd_layernorm_backward(dx, dw, db, d, x, w, mean, rstd, N, C);
    keep(r, "layernorm dx", dx, sizeof(float) * n), keep(r, "layernorm dw", dw, sizeof(float) * C);
    keep(r, "layernorm db", db, sizeof(float) * C);
    /* linear's bias gradient (column sums) */
    memset(db, 0, sizeof(float) * C);
    qd_linear_backward(NULL, NULL, db, d, NULL, NULL, N, 1, C);
    keep(r, "linear db", db, sizeof(float) * C);
    /* elementwise: the activation and its gradient through a product */
    qd_silu_forward(y, x, n);
    qd_gelu_backward(dx, d, y, n);
    qd_mul_backward(dx, y, d, x, dx, n);
    keep(r, "silu/gelu/mul", dx, sizeof(float) * n), keep(r, "mul db", y, sizeof(float) * n);
    /* activation quantizer: output, dx, and the scale/offset sums */
    float qs = 4.0f / 255, qz = 120, gs = 0, gz = 0;
    qd_aq aq = {&qs, &qz, &gs, &gz, 8};
    qd_aq_forward(y, x, n, &aq, NULL, 0);
    memset(dx, 0, sizeof(float) * n);
    qd_aq_backward(dx, d, x, n, &aq, NULL, 0, 0);
    keep(r, "aq out", y, sizeof(float) * n), keep(r, "aq dx", dx, sizeof(float) * n);
    keep(r, "aq ds", &gs, sizeof gs), keep(r, "aq dz", &gz, sizeof gz);
    /* weight quantizer: each granularity and symmetry, with LWC gradients */
    for (int k = 0; k < 4; k++) {
        qd_wq_spec sp = {k < 2 ? 8 : 4, k % 2, k >= 2};
        float gam[N], bet[N], dg[N] = {0}, dbt[N] = {0};
        for (int i = 0; i < N; i++) gam[i] = 1.5f + 0.01f * i, bet[i] = 2.0f - 0.01f * i;
        qd_wq_forward(y, x, N, C, sp, gam, bet, NULL, NULL, NULL, 0);
        memset(dx, 0, sizeof(float) * n);
        qd_wq_backward(dx, dg, dbt, d, x, N, C, sp, gam, bet, NULL, 0, 0);
        keep(r, "wq out", y, sizeof(float) * n), keep(r, "wq dw", dx, sizeof(float) * n);
        keep(r, "wq dgam", dg, sizeof dg);
        keep(r, "wq dbet", dbt, sizeof dbt);
    }
    /* LET on a weight (rows N, cols C) */
    float *cs = malloc(sizeof(float) * C), rs[N], dcs[C], drs[N];
    fillr(cs, C, 7, 0.5f, 2), fillr(rs, N, 8, 0.5f, 2);
    memset(dcs, 0, sizeof dcs), memset(drs, 0, sizeof drs);
    qd_let_weight_forward(y, x, N, C, cs, rs);
    qd_let_weight_backward(dcs, drs, d, x, N, C, cs, rs);
    keep(r, "let out", y, sizeof(float) * n), keep(r, "let dc", dcs, sizeof dcs);
    keep(r, "let dr", drs, sizeof drs);
    memset(dcs, 0, sizeof dcs);
    qd_let_weight_backward(dcs, NULL, d, x, N, C, cs, NULL); /* column scales alone */
    keep(r, "let dc (no r)", dcs, sizeof dcs);
    /* RoPE and attention with both quantizers, T = 256 rows of each head */
    size_t na = (size_t)T * NH * HD, TT = (size_t)NH * T * T;
    float *q = malloc(sizeof(float) * na), *kk = malloc(sizeof(float) * na);
    float *v = malloc(sizeof(float) * na), *o = malloc(sizeof(float) * na);
    float *dq = calloc(na, sizeof(float)), *dk = calloc(na, sizeof(float));
    float *dv = calloc(na, sizeof(float)), *dob = malloc(sizeof(float) * na);
    float *S = malloc(sizeof(float) * TT), *P = malloc(sizeof(float) * TT);
    float *scr = malloc(sizeof(float) * 2 * T * T);
    float *ct = malloc(sizeof(float) * T * HD / 2), *st = malloc(sizeof(float) * T * HD / 2);
    fillr(q, na, 9, -1, 1), fillr(kk, na, 10, -1, 1), fillr(v, na, 11, -1, 1);
    fillr(dob, na, 12, -1, 1);
    qd_rope_table(ct, st, T, HD, 10000);
    qd_rope_forward(q, q, ct, st, 1, T, NH, HD, HD);
    qd_rope_backward(dq, dob, ct, st, 1, T, NH, HD, HD);
    keep(r, "rope out", q, sizeof(float) * na), keep(r, "rope dx", dq, sizeof(float) * na);
    memset(dq, 0, sizeof(float) * na);
    float ss = 8.0f / 255, sz = 128, pps = 1.0f / 255, pz = 0, gss = 0, gsz = 0, gps = 0, gpz = 0;
    qd_aq sq = {&ss, &sz, &gss, &gsz, 8}, pq = {&pps, &pz, &gps, &gpz, 8};
    qd_attn_forward(o, S, P, q, kk, v, 1, T, NH, NH, HD, &sq, &pq, NULL, 0, 0, scr);
    qd_attn_backward(dq, dk, dv, dob, S, P, q, kk, v, 1, T, NH, NH, HD, &sq, &pq, NULL, 0, 0,
                     scr, 0);
    keep(r, "attn out", o, sizeof(float) * na), keep(r, "attn P", P, sizeof(float) * TT);
    keep(r, "attn dq", dq, sizeof(float) * na), keep(r, "attn dk", dk, sizeof(float) * na);
    keep(r, "attn dv", dv, sizeof(float) * na);
    float qg[4] = {gss, gsz, gps, gpz};
    keep(r, "attn quantizer grads", qg, sizeof qg);
    free(x), free(d), free(y), free(dx), free(w), free(b), free(dw), free(db), free(cs);
    free(q), free(kk), free(v), free(o), free(dq), free(dk), free(dv), free(dob);
    free(S), free(P);
    free(scr), free(ct), free(st);
}

static void ops_same_bits(void) {
    run ref = {0}, r = {0};
    set_threads(1);
    ops_once(&ref);
    for (int t = 1; t < NT; t++) {
        set_threads(THREADS[t]);
        ops_once(&r);
        same_bits(&ref, &r, THREADS[t], "ops");
        run_free(&r);
    }
    run_free(&ref);
}

/* The SIMD element loops against the scalar ones (ops.h): the same bits. */
static void ops_simd_same_bits(void) {
    run ref = {0}, r = {0};
    set_threads(1);
    qd_ops_set_simd(0);
    ops_once(&ref);
    qd_ops_set_simd(1);
    ops_once(&r);
    same_bits(&ref, &r, 1, "ops, SIMD vs scalar");
    run_free(&r);
    run_free(&ref);
}

/* ---------------------------------------------------------------- whole step */

/* Two optimizer steps of every parameter group on a synthetic model; keeps the output, the
 * gradients and the parameters after the steps, and (collect) the calibration statistics. */
static void step_once(const qd_model *m, int wbits, int T, run *r) {
    qd_err err = {{0}};
    const qd_config *c = &m->cfg;
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = wbits, o.Bmax = 1, o.Tmax = T, o.train = 1;
    qd_qsim *q = qd_qsim_new(m, &o, &err);
    CHECK(q, "%s", err.msg);
    if (!q) return;
    int *tok = malloc(sizeof(int) * T);
    uint64_t s = 5;
    for (int i = 0; i < T; i++) tok[i] = (int)(synth_next(&s) % (uint64_t)c->vocab_size);
    qd_qstats *st = qd_qstats_new(c);
    CHECK(qd_qsim_collect(q, tok, 1, T, st, &err) == QD_OK, "%s", err.msg);
    size_t ns = (size_t)c->n_layers * QD_AQ_PER_LAYER + QD_AQG_COUNT;
    keep(r, "stats min", st->mn, sizeof(double) * ns);
    keep(r, "stats max", st->mx, sizeof(double) * ns);
    keep(r, "stats ch_ffn", st->ch_ffn, sizeof(float) * c->n_layers * c->dim);
    keep(r, "stats sq_down", st->sq_down, sizeof(double) * c->n_layers * c->hidden_dim);
    qd_qsim_init_ranges(q, st);
    qd_qstats_free(st);
    qd_adam *a = qd_adam_new(q->n_params, q->grp_off, QD_GRP_COUNT, &err);
    CHECK(a, "%s", err.msg);
    a->total_steps = 10;
    for (int k = 0; k < QD_GRP_COUNT; k++) a->lr_max[k] = 1e-3, a->lr_min[k] = 1e-4;
    size_t nd = (size_t)T * c->dim;
    float *x0 = malloc(sizeof(float) * nd), *out = malloc(sizeof(float) * nd);
    float *dout = malloc(sizeof(float) * nd);
    for (int it = 0; it < 2; it++) {
        qd_qsim_zero_grad(q);
        q->rc.cursor = 0;
        qd_qsim_embed(q, tok, 1, T, x0);
        qd_qsim_forward_blocks(q, x0, out, 1, T);
        for (size_t i = 0; i < nd; i++) dout[i] = (out[i] - 0.1f * (float)(i % 7)) * 2 / (float)nd;
        qd_qsim_backward_blocks(q, dout);
        qd_adam_step(a, q->p, q->g);
    }
    keep(r, "step output", out, sizeof(float) * nd);
    keep(r, "step gradients", q->g, sizeof(float) * q->n_params);
    keep(r, "step parameters", q->p, sizeof(float) * q->n_params);
    free(x0), free(out), free(dout), free(tok);
    qd_adam_free(a);
    qd_qsim_free(q);
}

static void step_same_bits_cfg(qd_config cfg, int wbits, int T, const char *what) {
    qd_model *m = synth_checked(&cfg, 11);
    if (!m) return;
    run ref = {0}, r = {0};
    set_threads(1);
    step_once(m, wbits, T, &ref);
    for (int t = 1; t < NT; t++) {
        set_threads(THREADS[t]);
        step_once(m, wbits, T, &r);
        same_bits(&ref, &r, THREADS[t], what);
        run_free(&r);
    }
    /* and with the scalar element loops instead of the SIMD ones */
    set_threads(2);
    qd_ops_set_simd(0);
    step_once(m, wbits, T, &r);
    qd_ops_set_simd(1);
    same_bits(&ref, &r, 2, what);
    run_free(&r);
    run_free(&ref);
    qd_model_free(m);
}

/* dim 256, FFN 704, 2 layers, 4 heads, T 256: every activation spans several chunks, the
 * attention rows four, the per-tensor weights four, the per-channel ones several row blocks */
static void step_w8a8_same_bits(void) {
    step_same_bits_cfg(synth_config(256, 704, 2, 4, 4, 512, 256), 8, 256, "W8A8 step");
}

static void step_w4a8_gqa_same_bits(void) {
    step_same_bits_cfg(synth_config(256, 704, 2, 4, 2, 512, 256), 4, 256, "W4A8 GQA step");
}

/* ---------------------------------------------------------------- FP32 forward, evaluation */

/* The FP32 forward's logits, and a quantized simulation compared with it through the kept
 * reference (its positions on the pool). */
static void eval_once(const qd_model *m, const int *ids, size_t n, int T, run *r) {
    qd_err err = {{0}};
    int V = m->cfg.vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)2 * T * V);
    CHECK(qd_forward(m, ids, 2, T, lg, &err) == QD_OK, "%s", err.msg);
    keep(r, "fp32 logits", lg, sizeof(float) * (size_t)2 * T * V);
    free(lg);
    qd_cmp_result self, cmp;
    qd_eval_ref *ref = qd_eval_ref_new(qd_fp32_logits_fn, (void *)m, V, ids, n, T, 0, NULL, NULL,
                                       &self, &err);
    CHECK(ref, "%s", err.msg);
    if (!ref) return;
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = 8, o.Bmax = 4, o.Tmax = T, o.train = 0;
    qd_qsim *q = qd_qsim_new(m, &o, &err);
    CHECK(q, "%s", err.msg);
    qd_qstats *st = qd_qstats_new(&m->cfg);
    CHECK(q && qd_qsim_collect(q, ids, 2, T, st, &err) == QD_OK, "%s", err.msg);
    if (q) qd_qsim_init_ranges(q, st);
    qd_qstats_free(st);
    CHECK(q && qd_eval_ref_compare(ref, qd_qsim_logits_fn, q, NULL, NULL, &cmp, &err) == QD_OK,
          "%s", err.msg);
    double figs[4] = {self.nll, cmp.nll, cmp.kl, cmp.top1};
    keep(r, "eval nll, kl, top-1", figs, sizeof figs);
    qd_qsim_free(q);
    qd_eval_ref_free(ref);
}

static void forward_eval_same_bits(void) {
    qd_config cfg = synth_config(256, 704, 2, 4, 2, 2048, 256);
    qd_model *m = synth_checked(&cfg, 13);
    if (!m) return;
    size_t n = 4 * 256 + 100;
    int *ids = malloc(sizeof(int) * n);
    uint64_t s = 9;
    for (size_t i = 0; i < n; i++) ids[i] = (int)(synth_next(&s) % 2048);
    run ref = {0}, r = {0};
    set_threads(1);
    eval_once(m, ids, n, 256, &ref);
    for (int t = 1; t < NT; t++) {
        set_threads(THREADS[t]);
        eval_once(m, ids, n, 256, &r);
        same_bits(&ref, &r, THREADS[t], "forward/eval");
        run_free(&r);
    }
    run_free(&ref);
    free(ids);
    qd_model_free(m);
}

int main(void) {
    RUN(ops_same_bits);
    RUN(ops_simd_same_bits);
    RUN(step_w8a8_same_bits);
    RUN(step_w4a8_gqa_same_bits);
    RUN(forward_eval_same_bits);
    return CHECK_DONE();
}
