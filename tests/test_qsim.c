/* The fake-quant simulation against the FP32 forward and against its own encodings:
 *  - with every switch off it is the FP32 model (same logits as qd_forward);
 *  - LET alone is function-preserving (any scales, quantizers off);
 *  - the integer grids exported as encodings reproduce the simulation's weights exactly, and
 *    the folded model with quantizers off reproduces the LET-transformed model;
 *  - quantizer round-trip error stays within the grid's bound. */
#include <math.h>

#include "quant/sim/encodings.h"
#include "quant/fp/eval.h"
#include "quant/fp/forward.h"
#include "quant/sim/fakequant.h"
#include "tests/check.h"
#include "tests/synth.h"
#include "quant/io/load.h"

static qd_model *stories(void) {
    qd_err err = {{0}};
    qd_model *m = qd_model_load(fixture("models/stories260K.gguf"), &err);
    CHECK(m != NULL, "%s", err.msg);
    return m;
}

static qd_qsim *sim(const qd_model *m, int wbits, int B, int T, int train) {
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = wbits, o.Bmax = B, o.Tmax = T, o.train = train;
    qd_err err = {{0}};
    qd_qsim *q = qd_qsim_new(m, &o, &err);
    CHECK(q != NULL, "%s", err.msg);
    return q;
}

static float max_diff(const float *a, const float *b, size_t n, float *scale) {
    float d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmaxf(d, fabsf(a[i] - b[i]));
        s = fmaxf(s, fabsf(a[i]));
    }
    if (scale) *scale = s;
    return d;
}

/* all switches off == qd_forward, on the real model and on a GQA model with q/k/v biases */
static void fp_path_matches_forward(void) {
    qd_config c = synth_config(32, 48, 2, 4, 2, 50, 64);
    c.qkv_bias = 1;
    qd_err err = {{0}};
    qd_model *ms[2] = {stories(), synth_model(&c, 3, &err)};
    for (int k = 0; k < 2; k++) {
        qd_model *m = ms[k];
        if (!m) continue;
        int B = 3, T = 40, V = m->cfg.vocab_size;
        qd_qsim *q = sim(m, 8, 2, T, 0);
        if (!q) continue;
        q->let_on = q->wq_on = q->aq_on = 0;
        int *tok = malloc(sizeof(int) * B * T);
        for (int i = 0; i < B * T; i++) tok[i] = (i * 131 + 7) % V;
        float *a = malloc(sizeof(float) * B * T * V), *b = malloc(sizeof(float) * B * T * V);
        CHECK(qd_forward(m, tok, B, T, a, &err) == 0, "%s", err.msg);
        CHECK(qd_qsim_logits(q, tok, B, T, b, &err) == 0, "%s", err.msg);
        float s, d = max_diff(a, b, (size_t)B * T * V, &s);
        /* same math, different summation order (double sums in RMSNorm, gemm blocking):
         * 1e-4 relative to the largest logit */
        CHECK(d <= 1e-4f * s, "model %d: max |qsim - forward| = %g (logit scale %g)", k, d, s);
        /* LET alone, with arbitrary positive scales, changes nothing but rounding */
        q->let_on = 1;
        uint64_t seed = 9;
        for (size_t i = q->grp_off[QD_GRP_LET]; i < q->grp_off[QD_GRP_LET + 1]; i++)
            q->p[i] = (float)(1 + 0.9 * synth_u(&seed));
        CHECK(qd_qsim_logits(q, tok, B, T, b, &err) == 0, "%s", err.msg);
        d = max_diff(a, b, (size_t)B * T * V, &s);
        CHECK(d <= 1e-4f * s, "model %d: LET changes logits by %g", k, d);
        free(tok), free(a), free(b);
        qd_qsim_free(q);
        qd_model_free(m);
    }
}

/* Encodings reproduce the simulated weights; the folded model is the LET-transformed one. */
static void encodings_match_simulation(void) {
    qd_config c = synth_config(32, 48, 2, 4, 4, 50, 64);
    qd_err err = {{0}};
    qd_model *m = synth_checked(&c, 4);
    if (!m) return;
    for (int wbits = 8; wbits >= 4; wbits -= 4) {
        qd_qsim *q = sim(m, wbits, 1, 16, 0);
        if (!q) break;
        uint64_t seed = 77;
        for (size_t i = 0; i < q->grp_off[QD_GRP_LRL]; i++)
            q->p[i] = i < q->grp_off[QD_GRP_LWC] ? (float)(1 + 0.5 * synth_u(&seed))
                                                 : (float)(2 + 1.5 * synth_u(&seed));
        qd_encodings *e = qd_encodings_build(q, m, &err);
        CHECK(e != NULL, "%s", err.msg);
        if (!e) {
            qd_qsim_free(q);
            break;
        }
        double worst = 0;
        for (int l = 0; l < c.n_layers; l++)
            for (int w = 0; w < QD_W_PER_LAYER; w++) {
                const qd_qlayer *L = &q->L[l];
                const qd_wenc *x = qd_enc_weight(e, l, w);
                CHECK(x && x->bits == wbits && x->sym == (wbits < 8), "layer %d weight %d", l, w);
                if (!x) continue;
                CHECK(x->per_channel == (wbits < 8 || w == QD_W_DOWN), "granularity of %s",
                      x->name);
                size_t n = (size_t)x->rows * x->cols;
                float *wt = malloc(sizeof(float) * n), *wh = malloc(sizeof(float) * n);
                int32_t *iq = malloc(sizeof(int32_t) * n);
                const float *cs = NULL, *rs = NULL;
                if (w <= QD_W_V) cs = L->s_qkv;
                if (w == QD_W_V) rs = L->s_vo;
                if (w == QD_W_O) cs = L->s_vo;
                if (w >= QD_W_GATE && w <= QD_W_UP) cs = L->s_gu;
                if (w == QD_W_UP) rs = L->s_ud;
                if (w == QD_W_DOWN) cs = L->s_ud;
                qd_let_weight_forward(wt, L->w[w], x->rows, x->cols, cs, rs);
                qd_wq_forward(wh, wt, x->rows, x->cols, L->wspec[w], L->gam[w], L->bet[w], NULL,
                              NULL, NULL, 0);
                qd_wenc_quantize(x, iq);
                size_t gsz = x->per_channel ? (size_t)x->cols : n;
                for (size_t i = 0; i < n; i++) {
                    int g = (int)(i / gsz);
                    CHECK(iq[i] >= x->qmin && iq[i] <= x->qmax, "%s: int out of grid", x->name);
                    double deq = ((double)iq[i] - x->zero[g]) * x->scale[g];
                    worst = fmax(worst, fabs(deq - wh[i]) / x->scale[g]);
                }
                free(wt), free(wh), free(iq);
            }
        /* dequantized ints equal the simulation's Ŵ up to float rounding of (q-z)*s */
        CHECK(worst < 1e-3, "W%d: encodings differ from the simulated weights by %g steps", wbits,
              worst);
        const qd_aenc *a = qd_enc_act(e, 1, QD_AQ_SCORE);
        CHECK(a && a->bits == 16 && a->scale == *q->L[1].aq[QD_AQ_SCORE].s, "score encoding");
        a = qd_enc_act(e, 0, QD_AQ_Q);
        CHECK(a && a->bits == 8 && a->min < a->max, "q encoding");
        /* folding in place (the simulation's own source model) gives the same folded model
         * and encodings, bit for bit: every tensor is read whole before it is written */
        qd_model *m2 = qd_model_clone(m, &err);
        qd_qsim *q2 = m2 ? sim(m2, wbits, 1, 16, 0) : NULL;
        if (q2) {
            memcpy(q2->p, q->p, sizeof(qd_real) * q->n_params);
            qd_encodings *e2 = qd_encodings_build_into(q2, m2, &err);
            CHECK(e2 && e2->folded == m2, "%s", err.msg);
            if (e2) {
                CHECK(!memcmp(e2->folded->mem, e->folded->mem, sizeof(float) * e->folded->n_floats),
                      "W%d: the model folded in place differs from the folded copy", wbits);
                int same = e2->n_w == e->n_w && e2->n_a == e->n_a;
                for (int i = 0; same && i < e->n_w; i++)
                    same = !memcmp(e2->w[i].scale, e->w[i].scale, sizeof(float) * (size_t)e->w[i].n_ch) &&
                           !memcmp(e2->w[i].zero, e->w[i].zero, sizeof(int32_t) * (size_t)e->w[i].n_ch);
                for (int i = 0; same && i < e->n_a; i++)
                    same = e2->a[i].scale == e->a[i].scale && e2->a[i].zero == e->a[i].zero;
                CHECK(same, "W%d: in-place encodings differ", wbits);
            }
            qd_encodings_free(e2); /* frees m2 */
            qd_qsim_free(q2);
        } else {
            qd_model_free(m2);
        }
        qd_qsim_free(q);
        qd_encodings_free(e);
    }
    qd_model_free(m);
}

/* Folding the LET (no clipping) gives an FP model equal to the original. */
static void fold_is_function_preserving(void) {
    qd_model *m = stories();
    if (!m) return;
    qd_qsim *q = sim(m, 8, 1, 32, 0);
    qd_err err = {{0}};
    qd_model *f = qd_model_clone(m, &err);
    if (!q || !f) goto out;
    uint64_t seed = 5;
    for (size_t i = q->grp_off[QD_GRP_LET]; i < q->grp_off[QD_GRP_LET + 1]; i++)
        q->p[i] = (float)(1 + 0.8 * synth_u(&seed));
    q->wq_on = 0; /* no clipping */
    CHECK(qd_qsim_fold(q, f, &err) == 0, "%s", err.msg);
    int T = 32, V = m->cfg.vocab_size;
    int tok[32];
    for (int i = 0; i < T; i++) tok[i] = (i * 37 + 1) % V;
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    qd_forward(m, tok, 1, T, a, &err);
    qd_forward(f, tok, 1, T, b, &err);
    float s, d = max_diff(a, b, (size_t)T * V, &s);
    CHECK(d <= 1e-4f * s, "folded LET changes logits by %g (scale %g)", d, s);
    free(a), free(b);
out:
    qd_model_free(f);
    qd_qsim_free(q);
    qd_model_free(m);
}

/* Round trip of the quantizers: inside the range every error is at most half a step. */
static void quantizer_error_bounds(void) {
    enum { N = 4096 };
    float x[N], y[N];
    uint64_t s = 11;
    for (int i = 0; i < N; i++) x[i] = (float)(3 * synth_u(&s));
    for (int bits = 4; bits <= 16; bits += 4) {
        float sz[2];
        qd_aq a = {&sz[0], &sz[1], NULL, NULL, bits};
        float Q = (float)((1u << bits) - 1);
        sz[0] = 6.0f / Q, sz[1] = 3.0f / sz[0];
        qd_aq_forward(y, x, N, &a, NULL, 0);
        double worst = 0, se = 0;
        for (int i = 0; i < N; i++) {
            worst = fmax(worst, fabs(y[i] - x[i]));
            se += (y[i] - x[i]) * (y[i] - x[i]);
        }
        /* half a step (plus float slack); RMSE near step/sqrt(12) for uniform data */
        CHECK(worst <= 0.5 * sz[0] * 1.001 + 1e-6, "a%d: max error %g > half step %g", bits, worst,
              0.5 * sz[0]);
        double rmse = sqrt(se / N), ideal = sz[0] / sqrt(12.0);
        CHECK(rmse < 1.2 * ideal + 1e-7, "a%d: rmse %g vs %g", bits, rmse, ideal);
    }
    /* weights: symmetric 4-bit per channel, asymmetric 8-bit per tensor, no clipping */
    qd_wq_spec sp[2] = {{4, 1, 1}, {8, 0, 0}};
    for (int k = 0; k < 2; k++) {
        int R = 16, C = 64;
        float sc[16], zp[16];
        qd_wq_forward(y, x, R, C, sp[k], NULL, NULL, sc, zp, NULL, 0);
        double worst = 0;
        for (int i = 0; i < R * C; i++) {
            int g = sp[k].per_channel ? i / C : 0;
            worst = fmax(worst, fabs(y[i] - x[i]) / sc[g]);
        }
        CHECK(worst <= 0.5 + 1e-3, "w%d: error %g steps", sp[k].bits, worst);
    }
}

/* W8A8 RTN on the real model stays close to FP32 (sanity of the whole simulated path). */
static void w8a8_close_to_fp32(void) {
    qd_model *m = stories();
    if (!m) return;
    int T = 64, nw = 8, V = m->cfg.vocab_size;
    int *tok = malloc(sizeof(int) * nw * T);
    for (int i = 0; i < nw * T; i++) tok[i] = (i * 7 + i / 13) % V;
    qd_qsim *q = sim(m, 8, 4, T, 0);
    qd_err err = {{0}};
    qd_qstats *st = qd_qstats_new(&m->cfg);
    q->lwc_on = 0, q->let_on = 0;
    CHECK(qd_qsim_collect(q, tok, nw, T, st, &err) == 0, "%s", err.msg);
    qd_qsim_init_ranges(q, st);
    qd_cmp_result r;
    CHECK(qd_eval_compare(qd_fp32_logits_fn, m, qd_qsim_logits_fn, q, V, tok, (size_t)nw * T, T,
                          &r, &err) == 0, "%s", err.msg);
    /* on its own calibration tokens: KL well below 0.1 nats, top-1 mostly agreeing */
    CHECK(r.kl < 0.1 && r.top1 > 0.8, "W8A8 RTN: kl %g top1 %g", r.kl, r.top1);
    qd_qstats_free(st);
    qd_qsim_free(q);
    free(tok);
    qd_model_free(m);
}

static bool same_doubles(const double *a, const double *b, size_t n) { return !memcmp(a, b, n * sizeof *a); }
static bool same_floats(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof *a); }

/* The statistics pass through the decoder layers alone (SmoothQuant's) records every layer
 * site (and the embedding's output) bit for bit as the full pass does, over several batches;
 * it leaves the LM head's sites as it found them; a token out of range is an error. */
static void collect_layers_same_stats(void) {
    qd_model *m = stories();
    if (!m) return;
    int T = 32, nw = 5, V = m->cfg.vocab_size, L = m->cfg.n_layers;
    int *tok = malloc(sizeof(int) * nw * T);
    for (int i = 0; i < nw * T; i++) tok[i] = (i * 11 + i / 7) % V;
    qd_qsim *q = sim(m, 8, 2, T, 0); /* Bmax 2: three batches */
    qd_err err = {{0}};
    qd_qstats *a = qd_qstats_new(&m->cfg), *b = qd_qstats_new(&m->cfg), *fresh = qd_qstats_new(&m->cfg);
    CHECK(qd_qsim_collect(q, tok, nw, T, a, &err) == 0, "%s", err.msg);
    CHECK(qd_qsim_collect_layers(q, tok, nw, T, b, NULL, &err) == 0, "%s", err.msg);
    size_t ns = (size_t)L * QD_AQ_PER_LAYER, D = (size_t)m->cfg.dim, H = (size_t)m->cfg.hidden_dim;
    size_t Q = (size_t)a->qdim;
    CHECK(a->tokens == b->tokens && b->tokens == (size_t)nw * T, "tokens %zu %zu", a->tokens, b->tokens);
    CHECK(same_doubles(a->mn, b->mn, ns) && same_doubles(a->mx, b->mx, ns), "layer ranges differ");
    CHECK(same_floats(a->ch_attn, b->ch_attn, L * D) && same_floats(a->ch_ffn, b->ch_ffn, L * D) &&
              same_floats(a->ch_down, b->ch_down, L * H) && same_floats(a->ch_o, b->ch_o, L * Q),
          "channel maxima differ");
    CHECK(same_doubles(a->sq_attn, b->sq_attn, L * D) && same_doubles(a->sq_ffn, b->sq_ffn, L * D) &&
              same_doubles(a->sq_down, b->sq_down, L * H) && same_doubles(a->sq_o, b->sq_o, L * Q),
          "channel sums of squares differ");
    /* the embedding's output is a site of both; the head's input and the logits only of the full pass */
    CHECK(a->mn[ns + QD_AQG_EMB] == b->mn[ns + QD_AQG_EMB] && a->mx[ns + QD_AQG_EMB] == b->mx[ns + QD_AQG_EMB],
          "embedding range differs");
    for (int g = QD_AQG_HEAD_IN; g < QD_AQG_COUNT; g++) {
        CHECK(b->mn[ns + g] == fresh->mn[ns + g] && b->mx[ns + g] == fresh->mx[ns + g],
              "the layers-only pass touched head site %d", g);
        CHECK(a->mx[ns + g] != fresh->mx[ns + g], "the full pass did not reach head site %d", g);
    }
    tok[3 * T + 1] = V;
    CHECK(qd_qsim_collect_layers(q, tok, nw, T, b, NULL, &err) != 0 && strstr(err.msg, "out of range"), "%s", err.msg);
    qd_qstats_free(a), qd_qstats_free(b), qd_qstats_free(fresh);
    qd_qsim_free(q);
    free(tok);
    qd_model_free(m);
}

/* Recomputing each layer's forward in the backward (qd_qsim_opts.recompute) gives the same
 * output and the same gradients of every trained parameter, to the bit, as keeping every
 * layer's activations, with every quantizer, LET and LWC on, at W8 and W4, on stories260K (GQA)
 * and on a 3-layer MHA model with q/k/v biases (LET v->o on); and it holds less memory. Two
 * steps, so the second starts from parameters the first moved. */
static void recompute_same_gradients(void) {
    qd_err err = {{0}};
    qd_config c = synth_config(48, 96, 3, 4, 4, 200, 64);
    c.qkv_bias = 1;
    qd_model *ms[2] = {stories(), synth_model(&c, 7, &err)};
    for (int mi = 0; mi < 2; mi++)
        for (int wb = 8; wb >= 4; wb -= 4) {
            const qd_model *m = ms[mi];
            if (!m) continue;
            int T = 32, B = 2, V = m->cfg.vocab_size, D = m->cfg.dim;
            int *tok = malloc(sizeof(int) * B * T);
            for (int i = 0; i < B * T; i++) tok[i] = (i * 7 + 5) % V;
            qd_qsim *q[2];
            for (int r = 0; r < 2; r++) {
                qd_qsim_opts o;
                qd_qsim_defaults(&o);
                o.wbits = wb, o.Bmax = B, o.Tmax = T, o.train = 1, o.recompute = r;
                q[r] = qd_qsim_new(m, &o, &err);
                CHECK(q[r] != NULL, "%s", err.msg);
            }
            if (!q[0] || !q[1]) continue;
            qd_qstats *st = qd_qstats_new(&m->cfg);
            CHECK(qd_qsim_collect(q[0], tok, B, T, st, &err) == 0, "%s", err.msg);
            for (int r = 0; r < 2; r++) {
                qd_qsim_smoothquant(q[r], st, 0.5);
                qd_qsim_init_ranges(q[r], st);
            }
            CHECK(qd_qsim_bytes(q[1]) < qd_qsim_bytes(q[0]), "recompute holds %zu bytes, not fewer than %zu",
                  qd_qsim_bytes(q[1]), qd_qsim_bytes(q[0]));
            size_t nd = (size_t)B * T * D;
            qd_real *x0 = malloc(sizeof(qd_real) * nd), *out[2], *dout = malloc(sizeof(qd_real) * nd);
            out[0] = malloc(sizeof(qd_real) * nd), out[1] = malloc(sizeof(qd_real) * nd);
            for (int step = 0; step < 2; step++) {
                for (int r = 0; r < 2; r++) {
                    qd_qsim_zero_grad(q[r]);
                    q[r]->rc.cursor = 0;
                    qd_qsim_embed(q[r], tok, B, T, x0);
                    qd_qsim_forward_blocks(q[r], x0, out[r], B, T);
                    for (size_t i = 0; i < nd; i++) dout[i] = (qd_real)(0.01 * out[r][i] + 1e-3 * (double)(i % 17));
                    qd_qsim_backward_blocks(q[r], dout);
                }
                CHECK(!memcmp(out[0], out[1], sizeof(qd_real) * nd), "model %d W%d step %d: outputs differ", mi, wb, step);
                size_t bad = 0, nz = 0;
                for (size_t i = 0; i < q[0]->n_params; i++) {
                    bad += memcmp(&q[0]->g[i], &q[1]->g[i], sizeof(qd_real)) != 0;
                    nz += q[0]->g[i] != 0;
                }
                CHECK(bad == 0 && nz * 10 > q[0]->n_params, "model %d W%d step %d: %zu of %zu gradients differ (%zu nonzero)",
                      mi, wb, step, bad, q[0]->n_params, nz);
                for (int r = 0; r < 2; r++) /* the same move for both */
                    for (size_t i = 0; i < q[r]->n_params; i++) q[r]->p[i] -= (qd_real)(1e-3 * (q[0]->g[i] > 0 ? 1 : -1)) * (q[0]->g[i] != 0);
            }
            free(x0), free(out[0]), free(out[1]), free(dout), free(tok);
            qd_qstats_free(st);
            qd_qsim_free(q[0]), qd_qsim_free(q[1]);
        }
    qd_model_free(ms[0]), qd_model_free(ms[1]);
}

/* A layer forward stopped at a weight's input gives that input bit for bit as the whole forward
 * does (quantizers on, ranges from a statistics pass), for every stop GPTQ uses; the whole
 * forward's output is untouched by the partial ones that ran before it. */
static void partial_layer_forward_same_inputs(void) {
    qd_model *m = stories();
    if (!m) return;
    int T = 32, V = m->cfg.vocab_size, D = m->cfg.dim;
    int *tok = malloc(sizeof(int) * 2 * T);
    for (int i = 0; i < 2 * T; i++) tok[i] = (i * 5 + 3) % V;
    qd_qsim *q = sim(m, 8, 2, T, 0);
    qd_err err = {{0}};
    qd_qstats *st = qd_qstats_new(&m->cfg);
    CHECK(qd_qsim_collect(q, tok, 2, T, st, &err) == 0, "%s", err.msg);
    qd_qsim_init_ranges(q, st);
    size_t nd = (size_t)2 * T * D;
    qd_real *x = malloc(sizeof(qd_real) * nd), *y = malloc(sizeof(qd_real) * nd);
    qd_real *y2 = malloc(sizeof(qd_real) * nd);
    qd_real *xalt = malloc(sizeof(qd_real) * nd);
    for (int i = 0; i < 2 * T; i++) tok[i] = (i * 13 + 1) % V;
    q->rc.cursor = 0;
    qd_qsim_embed(q, tok, 2, T, xalt);
    for (int i = 0; i < 2 * T; i++) tok[i] = (i * 5 + 3) % V;
    q->rc.cursor = 0;
    qd_qsim_embed(q, tok, 2, T, x);
    const int stops[] = {QD_W_Q, QD_W_K, QD_W_V, QD_W_O, QD_W_GATE, QD_W_UP, QD_W_DOWN};
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (size_t k = 0; k < sizeof stops / sizeof *stops; k++) {
            int w = stops[k], n, n2;
            q->rc.cursor = 0;
            qd_qsim_layer_forward(q, l, x, y, 2, T);
            const qd_real *in = qd_qsim_weight_input(q, l, w, &n);
            size_t cols = (size_t)q->L[l].wcols[w];
            qd_real *full = malloc(sizeof(qd_real) * (size_t)n * cols);
            memcpy(full, in, sizeof(qd_real) * (size_t)n * cols);
            /* other values in every buffer first, so that a stale one cannot pass */
            q->rc.cursor = 0;
            qd_qsim_layer_forward(q, l, xalt, y2, 2, T);
            q->rc.cursor = 0;
            qd_qsim_layer_forward_to(q, l, x, y2, 2, T, w);
            in = qd_qsim_weight_input(q, l, w, &n2);
            CHECK(n == n2 && !memcmp(full, in, sizeof(qd_real) * (size_t)n * cols),
                  "layer %d: the input of weight %d differs after a partial forward", l, w);
            free(full);
        }
        q->rc.cursor = 0;
        qd_qsim_layer_forward(q, l, x, y2, 2, T);
        CHECK(!memcmp(y, y2, sizeof(qd_real) * nd), "layer %d: the whole forward changed", l);
        memcpy(x, y, sizeof(qd_real) * nd);
        q->rc.cursor = 0;
        qd_qsim_layer_forward(q, l, xalt, y2, 2, T);
        memcpy(xalt, y2, sizeof(qd_real) * nd);
    }
    free(x), free(xalt), free(y), free(y2), free(tok);
    qd_qstats_free(st);
    qd_qsim_free(q);
    qd_model_free(m);
}

/* A forward resumed at o's, gate/up's or down's input, from the inputs and the residual a whole
 * forward gave there, gives that forward's later inputs and its output bit for bit, on every
 * layer; the buffers hold another batch's values first, so a stale one cannot pass, and a wrong
 * residual must change the output. */
static void resumed_layer_forward_same_outputs(void) {
    qd_model *m = stories();
    if (!m) return;
    int T = 32, V = m->cfg.vocab_size, D = m->cfg.dim, F = m->cfg.hidden_dim;
    int *tok = malloc(sizeof(int) * 2 * T);
    qd_qsim *q = sim(m, 8, 2, T, 0);
    qd_err err = {{0}};
    qd_qstats *st = qd_qstats_new(&m->cfg);
    for (int i = 0; i < 2 * T; i++) tok[i] = (i * 5 + 3) % V;
    CHECK(qd_qsim_collect(q, tok, 2, T, st, &err) == 0, "%s", err.msg);
    qd_qsim_init_ranges(q, st);
    size_t N = (size_t)2 * T, nd = N * D;
    qd_real *x = malloc(sizeof(qd_real) * nd), *xalt = malloc(sizeof(qd_real) * nd);
    qd_real *y = malloc(sizeof(qd_real) * nd), *y2 = malloc(sizeof(qd_real) * nd);
    qd_real *oin = malloc(sizeof(qd_real) * N * m->cfg.n_heads * m->cfg.head_dim);
    qd_real *gin = malloc(sizeof(qd_real) * nd), *res = malloc(sizeof(qd_real) * nd);
    qd_real *din = malloc(sizeof(qd_real) * N * F);
    q->rc.cursor = 0;
    qd_qsim_embed(q, tok, 2, T, x);
    for (int i = 0; i < 2 * T; i++) tok[i] = (i * 13 + 1) % V;
    q->rc.cursor = 0;
    qd_qsim_embed(q, tok, 2, T, xalt);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        int n, co = q->L[l].wcols[QD_W_O];
        q->rc.cursor = 0;
        qd_qsim_layer_forward(q, l, x, y, 2, T);
        memcpy(oin, qd_qsim_weight_input(q, l, QD_W_O, &n), sizeof(qd_real) * N * co);
        memcpy(gin, qd_qsim_weight_input(q, l, QD_W_GATE, &n), sizeof(qd_real) * nd);
        memcpy(din, qd_qsim_weight_input(q, l, QD_W_DOWN, &n), sizeof(qd_real) * N * F);
        memcpy(res, qd_qsim_residual(q, l, &n), sizeof(qd_real) * nd);
        const int from[] = {QD_W_O, QD_W_O, QD_W_O, QD_W_GATE, QD_W_UP, QD_W_GATE, QD_W_DOWN};
        const int upto[] = {QD_W_GATE, QD_W_DOWN, -1, QD_W_DOWN, -1, -1, -1};
        for (int k = 0; k < 7; k++) {
            q->rc.cursor = 0;
            qd_qsim_layer_forward(q, l, xalt, y2, 2, T);
            int f = from[k];
            const qd_real *in = f == QD_W_O ? oin : f == QD_W_DOWN ? din : gin;
            qd_qsim_layer_resume(q, l, f, in, f == QD_W_O ? x : res, y2, 2, T, upto[k]);
            const qd_real *got;
            if (upto[k] == QD_W_GATE) {
                got = qd_qsim_weight_input(q, l, QD_W_GATE, &n);
                CHECK(n == (int)N && !memcmp(got, gin, sizeof(qd_real) * nd),
                      "layer %d: gate's input differs resumed at o", l);
                got = qd_qsim_residual(q, l, &n);
                CHECK(!memcmp(got, res, sizeof(qd_real) * nd),
                      "layer %d: the residual differs resumed at o", l);
            } else if (upto[k] == QD_W_DOWN) {
                got = qd_qsim_weight_input(q, l, QD_W_DOWN, &n);
                CHECK(!memcmp(got, din, sizeof(qd_real) * N * F),
                      "layer %d: down's input differs resumed at weight %d", l, f);
            } else {
                CHECK(!memcmp(y, y2, sizeof(qd_real) * nd),
                      "layer %d: the output differs resumed at weight %d", l, f);
            }
        }
        /* the residual is read: another one changes the output */
        q->rc.cursor = 0;
        qd_qsim_layer_resume(q, l, QD_W_DOWN, din, xalt, y2, 2, T, -1);
        CHECK(memcmp(y, y2, sizeof(qd_real) * nd) != 0, "layer %d: the residual is not read", l);
        memcpy(x, y, sizeof(qd_real) * nd);
        q->rc.cursor = 0;
        qd_qsim_layer_forward(q, l, xalt, y2, 2, T);
        memcpy(xalt, y2, sizeof(qd_real) * nd);
    }
    free(tok), free(x), free(xalt), free(y), free(y2), free(oin), free(gin), free(res), free(din);
    qd_qstats_free(st);
    qd_qsim_free(q);
    qd_model_free(m);
}

int main(void) {
    RUN(fp_path_matches_forward);
    RUN(recompute_same_gradients);
    RUN(partial_layer_forward_same_inputs);
    RUN(resumed_layer_forward_same_outputs);
    RUN(collect_layers_same_stats);
    RUN(encodings_match_simulation);
    RUN(fold_is_function_preserving);
    RUN(quantizer_error_bounds);
    RUN(w8a8_close_to_fp32);
    return CHECK_DONE();
}
