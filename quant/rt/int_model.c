/* The integer model: quantization of a folded FP model with given encodings, and the
 * model.qint.safetensors artifact (see qint.h for the conventions). Weight grids are computed
 * with the simulation's own weight quantizer (qd_wq_forward) and the integers with the same
 * float expression it uses, so the artifact holds exactly the simulation's grid points. */
#include "quant/rt/int_model.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "quant/sim/encodings.h"
#include "quant/rt/igemm.h"
#include "quant/io/safetensors.h"

/* ---------------------------------------------------------------- encodings */

static int site_bits(int aclass, const int *abits) {
    return abits && abits[aclass] > 0 ? abits[aclass] : qd_aclass_default_bits(aclass);
}

int qd_qint_enc_init(qd_qint_enc *e, const qd_config *cfg, int wbits, const int *abits,
                     qd_err *err) {
    memset(e, 0, sizeof *e);
    if (wbits != 8 && wbits != 4) return qd_errf(err, "%s: wbits %d (8 or 4)", __func__, wbits);
    int n = cfg->n_layers * QD_AQ_PER_LAYER + QD_AQG_COUNT;
    e->act = calloc((size_t)n, sizeof *e->act);
    if (!e->act) return qd_errf(err, "%s: out of memory", __func__);
    e->n_layers = cfg->n_layers;
    for (int l = 0; l < cfg->n_layers; l++)
        for (int s = 0; s < QD_AQ_PER_LAYER; s++) {
            qd_qenc *a = &e->act[qd_act_index(cfg->n_layers, l, s)];
            a->bits = site_bits(qd_aq_site_class(s), abits);
            a->scale = 1;
        }
    for (int g = 0; g < QD_AQG_COUNT; g++) {
        qd_qenc *a = &e->act[qd_act_index(cfg->n_layers, -1, g)];
        a->bits = site_bits(qd_aqg_class(g), abits);
        a->scale = 1;
    }
    for (int w = 0; w < QD_W_PER_LAYER; w++) {
        /* the bit map: W8 per-tensor asymmetric (down per channel), W4 per-channel symmetric */
        e->wspec[w] = (qd_wq_spec){wbits, wbits < 8, wbits < 8 || w == QD_W_DOWN};
    }
    e->head_bits = 8;
    return QD_OK;
}

void qd_qint_enc_free(qd_qint_enc *e) {
    if (!e) return;
    free(e->act);
    free(e->wscale);
    free(e->wzero);
    e->act = NULL;
    e->wscale = NULL;
    e->wzero = NULL;
}

int qd_qint_enc_from_encodings(qd_qint_enc *out, const qd_encodings *e, qd_err *err) {
    const qd_config *c = &e->folded->cfg;
    if (qd_qint_enc_init(out, c, e->wbits, NULL, err)) return QD_ERR;
    int nl = c->n_layers;
    for (int i = 0; i < e->n_a; i++) {
        const qd_aenc *a = &e->a[i];
        if (a->layer >= nl || a->site < 0 ||
            a->site >= (a->layer < 0 ? QD_AQG_COUNT : QD_AQ_PER_LAYER)) continue;
        qd_qenc *d = &out->act[qd_act_index(nl, a->layer, a->site)];
        d->bits = a->bits;
        d->scale = a->scale;
        d->zero_point = a->zero - (1 << (a->bits - 1));
    }
    out->wscale = calloc((size_t)nl * QD_W_PER_LAYER, sizeof *out->wscale);
    out->wzero = calloc((size_t)nl * QD_W_PER_LAYER, sizeof *out->wzero);
    if (!out->wscale || !out->wzero) {
        qd_qint_enc_free(out);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    for (int l = 0; l < nl; l++)
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            const qd_wenc *we = qd_enc_weight(e, l, w);
            if (!we) {
                qd_qint_enc_free(out);
                return qd_errf(err, "%s: no encoding for layer %d %s", __func__, l, qd_wsite_name(w));
            }
            out->wspec[w] = (qd_wq_spec){we->bits, we->sym, we->per_channel};
            out->wscale[l * QD_W_PER_LAYER + w] = we->scale;
            out->wzero[l * QD_W_PER_LAYER + w] = we->zero;
        }
    const qd_wenc *h = qd_enc_weight(e, -1, QD_WENC_HEAD);
    if (h) out->head_bits = h->bits;
    return QD_OK;
}

static void aenc_from_aq(qd_qenc *a, const qd_aq *q) {
    a->bits = q->bits;
    a->scale = (float)qd_aq_scale(q);
    a->zero_point = (int32_t)rint(qd_aq_zero(q)) - (1 << (q->bits - 1));
}

int qd_qint_enc_from_qsim(qd_qint_enc *e, const qd_qsim *q, qd_err *err) {
    if (!e->act || e->n_layers != q->cfg.n_layers)
        return qd_errf(err, "%s: encodings not initialised for %d layers", __func__,
                       q->cfg.n_layers);
    int nl = q->cfg.n_layers;
    for (int l = 0; l < nl; l++)
        for (int s = 0; s < QD_AQ_PER_LAYER; s++)
            aenc_from_aq(&e->act[qd_act_index(nl, l, s)], &q->L[l].aq[s]);
    for (int g = 0; g < QD_AQG_COUNT; g++) aenc_from_aq(&e->act[qd_act_index(nl, -1, g)], &q->aqg[g]);
    for (int w = 0; w < QD_W_PER_LAYER; w++) e->wspec[w] = q->L[0].wspec[w];
    e->head_bits = q->o.head_bits;
    return QD_OK;
}

int qd_qint_enc_rtn(qd_qint_enc *e, const qd_model *m, int wbits, const int *tokens,
                    int n_windows, int T, qd_err *err) {
    if (qd_qint_enc_init(e, &m->cfg, wbits, NULL, err)) return QD_ERR;
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = wbits;
    o.train = 0;
    o.Bmax = 1;
    o.Tmax = T;
    qd_qsim *q = qd_qsim_new(m, &o, err);
    qd_qstats *st = q ? qd_qstats_new(&m->cfg) : NULL;
    int rc = QD_ERR;
    if (q && !st) qd_errf(err, "%s: out of memory", __func__);
    if (q && st) {
        q->let_on = 0;
        if (qd_qsim_collect(q, tokens, n_windows, T, st, err) == QD_OK) {
            qd_qsim_init_ranges(q, st);
            rc = qd_qint_enc_from_qsim(e, q, err);
        }
    }
    qd_qstats_free(st);
    qd_qsim_free(q);
    if (rc) qd_qint_enc_free(e);
    return rc;
}

/* ---------------------------------------------------------------- building */

static void qlin_free(qd_qlin *w) {
    free(w->q);
    free(w->scale);
    free(w->zero_point);
    free(w->bias);
    memset(w, 0, sizeof *w);
}

static int qlin_alloc(qd_qlin *w, int rows, int cols, qd_wq_spec sp, int with_bias, qd_err *err) {
    memset(w, 0, sizeof *w);
    w->rows = rows, w->cols = cols, w->bits = sp.bits, w->sym = sp.sym,
    w->per_channel = sp.per_channel;
    if (sp.bits != 8 && sp.bits != 4)
        return qd_errf(err, "%s: %d-bit weights (the runtime takes 8 or 4)", __func__, sp.bits);
    size_t ng = sp.per_channel ? (size_t)rows : 1;
    w->q = calloc((size_t)rows, qd_qlin_row_bytes(w));
    w->scale = calloc(ng, sizeof(float));
    w->zero_point = calloc(ng, sizeof(int32_t));
    if (with_bias) w->bias = calloc((size_t)rows, sizeof(int32_t));
    if (!w->q || !w->scale || !w->zero_point || (with_bias && !w->bias)) {
        qlin_free(w);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    return QD_OK;
}

/* Quantizes W (rows, cols) onto grid (scale, zero in the simulation's convention) per group,
 * with the float expression of ops.c: t = rintf(w / s) + z, clamped. */
static int qlin_fill(qd_qlin *w, const float *W, const float *scale, const float *zero) {
    int groups = w->per_channel ? w->rows : 1;
    size_t gsz = w->per_channel ? (size_t)w->cols : (size_t)w->rows * w->cols;
    int half = 1 << (w->bits - 1);
    for (int g = 0; g < groups; g++) {
        float s = scale[g], z = w->sym ? 0 : rintf(zero[g]);
        w->scale[g] = s;
        w->zero_point[g] = w->sym ? 0 : (int32_t)z - half;
        float lo = w->sym ? (float)-half : 0, hi = w->sym ? (float)(half - 1) : (float)(2 * half - 1);
        for (size_t i = 0; i < gsz; i++) {
            size_t idx = (size_t)g * gsz + i;
            float t = rintf(W[idx] / s) + z;
            t = t < lo ? lo : t > hi ? hi : t;
            int v = (int)t - (w->sym ? 0 : half);
            int r = (int)(idx / (size_t)w->cols), c = (int)(idx % (size_t)w->cols);
            if (w->bits == 8) w->q[(size_t)r * w->cols + c] = (uint8_t)(int8_t)v;
            else qd_s4_set(w->q + (size_t)r * qd_qlin_row_bytes(w), c, v);
        }
    }
    return QD_OK;
}

/* Grid of W from its min/max (no clipping) through the simulation's quantizer. */
static int qlin_quantize(qd_qlin *w, const float *W, qd_wq_spec sp, const float *esc,
                         const int32_t *ezp, qd_err *err) {
    size_t ng = sp.per_channel ? (size_t)w->rows : 1;
    float *sc = malloc(ng * sizeof(float)), *zp = malloc(ng * sizeof(float));
    float *hat = malloc((size_t)w->rows * w->cols * sizeof(float));
    if (!sc || !zp || !hat) {
        free(sc), free(zp), free(hat);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    if (esc) {
        memcpy(sc, esc, ng * sizeof(float));
        for (size_t g = 0; g < ng; g++) zp[g] = ezp ? (float)ezp[g] : 0;
    } else {
        qd_wq_forward(hat, W, w->rows, w->cols, sp, NULL, NULL, sc, zp, NULL, 0);
    }
    qlin_fill(w, W, sc, zp);
    free(sc), free(zp), free(hat);
    return QD_OK;
}

static int qvec_quantize(qd_qvec *v, const float *x, int n, qd_err *err) {
    v->n = n;
    v->q = malloc((size_t)n * sizeof(int16_t));
    float *hat = malloc((size_t)n * sizeof(float));
    if (!v->q || !hat) {
        free(hat);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    /* norm weights: 16-bit asymmetric per tensor, as the simulation's norm_spec */
    qd_wq_spec sp = {16, 0, 0};
    float s, z;
    qd_wq_forward(hat, x, 1, n, sp, NULL, NULL, &s, &z, NULL, 0);
    free(hat);
    z = rintf(z);
    v->scale = s;
    v->zero_point = (int32_t)z - 32768;
    for (int i = 0; i < n; i++) {
        float t = rintf(x[i] / s) + z;
        t = t < 0 ? 0 : t > 65535 ? 65535 : t;
        v->q[i] = (int16_t)((int)t - 32768);
    }
    return QD_OK;
}

void qd_qint_free(qd_qint *q) {
    if (!q) return;
    if (q->L)
        for (int l = 0; l < q->cfg.n_layers; l++) {
            for (int w = 0; w < QD_W_PER_LAYER; w++) qlin_free(&q->L[l].w[w]);
            free(q->L[l].attn_norm.q);
            free(q->L[l].ffn_norm.q);
            free(q->L[l].attn_norm_b.q);
            free(q->L[l].ffn_norm_b.q);
        }
    free(q->L);
    if (q->head.q != q->emb.q) qlin_free(&q->head);
    qlin_free(&q->emb);
    free(q->final_norm.q);
    free(q->final_norm_b.q);
    free(q->act);
    free(q);
}

static qd_qint *qint_alloc(const qd_config *cfg, qd_err *err) {
    qd_qint *q = calloc(1, sizeof *q);
    if (!q) return qd_errf(err, "%s: out of memory", __func__), NULL;
    q->cfg = *cfg;
    size_t na = (size_t)cfg->n_layers * QD_AQ_PER_LAYER + QD_AQG_COUNT;
    q->act = calloc(na, sizeof *q->act);
    q->L = calloc((size_t)cfg->n_layers, sizeof *q->L);
    if (!q->act || !q->L) {
        qd_qint_free(q);
        return qd_errf(err, "%s: out of memory", __func__), NULL;
    }
    snprintf(q->method, sizeof q->method, "unknown");
    return q;
}

static void wsite_shape(const qd_config *c, int w, int *rows, int *cols) {
    int D = c->dim, F = c->hidden_dim, QD = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim;
    switch (w) {
    case QD_W_Q: *rows = QD, *cols = D; break;
    case QD_W_K: case QD_W_V: *rows = KV, *cols = D; break;
    case QD_W_O: *rows = D, *cols = QD; break;
    case QD_W_GATE: case QD_W_UP: *rows = F, *cols = D; break;
    default: *rows = D, *cols = F; break;
    }
}

static const float *layer_w(const qd_layer *L, int w) {
    const float *p[QD_W_PER_LAYER] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    return p[w];
}

qd_qint *qd_qint_build(const qd_model *m, const qd_qint_enc *e, qd_err *err) {
    const qd_config *c = &m->cfg;
    if (!e->act || e->n_layers != c->n_layers)
        return qd_errf(err, "%s: encodings are for %d layers, the model has %d", __func__,
                       e->n_layers, c->n_layers), NULL;
    qd_qint *q = qint_alloc(c, err);
    if (!q) return NULL;
    int nl = c->n_layers;
    q->wbits = e->wspec[0].bits;
    q->head_bits = e->head_bits;
    memcpy(q->act, e->act, ((size_t)nl * QD_AQ_PER_LAYER + QD_AQG_COUNT) * sizeof *q->act);
    for (int l = 0; l < nl; l++) {
        const qd_layer *ml = &m->layers[l];
        qd_qint_layer *L = &q->L[l];
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            int rows, cols;
            wsite_shape(c, w, &rows, &cols);
            const float *bias = w == QD_W_Q ? ml->bq : w == QD_W_K ? ml->bk : w == QD_W_V ? ml->bv : NULL;
            const float *esc = e->wscale ? e->wscale[l * QD_W_PER_LAYER + w] : NULL;
            const int32_t *ezp = e->wzero ? e->wzero[l * QD_W_PER_LAYER + w] : NULL;
            if (qlin_alloc(&L->w[w], rows, cols, e->wspec[w], bias != NULL, err) ||
                qlin_quantize(&L->w[w], layer_w(ml, w), e->wspec[w], esc, ezp, err))
                goto fail;
            if (bias) {
                /* int32 bias on the accumulator's scale: input scale x weight scale */
                double s_in = e->act[qd_act_index(nl, l, QD_AQ_ATTN_NORM)].scale;
                for (int r = 0; r < rows; r++) {
                    double sw = L->w[w].scale[L->w[w].per_channel ? r : 0];
                    double v = rint(bias[r] / (s_in * sw));
                    L->w[w].bias[r] = (int32_t)(v > 2147483647.0 ? 2147483647.0 : v < -2147483648.0 ? -2147483648.0 : v);
                }
            }
        }
        if (qvec_quantize(&L->attn_norm, ml->attn_norm, c->dim, err) ||
            qvec_quantize(&L->ffn_norm, ml->ffn_norm, c->dim, err) ||
            (ml->attn_norm_b && qvec_quantize(&L->attn_norm_b, ml->attn_norm_b, c->dim, err)) ||
            (ml->ffn_norm_b && qvec_quantize(&L->ffn_norm_b, ml->ffn_norm_b, c->dim, err)))
            goto fail;
    }
    qd_wq_spec hs = {e->head_bits, 0, 1};
    if (qlin_alloc(&q->emb, c->vocab_size, c->dim, hs, 0, err) ||
        qlin_quantize(&q->emb, m->tok_emb, hs, NULL, NULL, err))
        goto fail;
    if (c->tied_embeddings || m->lm_head == m->tok_emb) {
        q->head = q->emb;
    } else if (qlin_alloc(&q->head, c->vocab_size, c->dim, hs, 0, err) ||
               qlin_quantize(&q->head, m->lm_head, hs, NULL, NULL, err)) {
        goto fail;
    }
    if (qvec_quantize(&q->final_norm, m->final_norm, c->dim, err) ||
        (m->final_norm_b && qvec_quantize(&q->final_norm_b, m->final_norm_b, c->dim, err)))
        goto fail;
    return q;
fail:
    qd_qint_free(q);
    return NULL;
}

qd_qint *qd_qint_from_encodings(const qd_encodings *e, qd_err *err) {
    qd_qint_enc qe;
    if (qd_qint_enc_from_encodings(&qe, e, err) != QD_OK) return NULL;
    qd_qint *q = qd_qint_build(e->folded, &qe, err);
    qd_qint_enc_free(&qe);
    return q;
}

/* ---------------------------------------------------------------- dequantized view */

static void qlin_dequant(const qd_qlin *w, float *out) {
    for (int r = 0; r < w->rows; r++) {
        int g = w->per_channel ? r : 0;
        const uint8_t *row = w->q + (size_t)r * qd_qlin_row_bytes(w);
        for (int k = 0; k < w->cols; k++) {
            int v = w->bits == 8 ? (int8_t)row[k] : qd_s4_get(row, k);
            out[(size_t)r * w->cols + k] = w->scale[g] * (float)(v - w->zero_point[g]);
        }
    }
}

static void qvec_dequant(const qd_qvec *v, float *out) {
    for (int i = 0; i < v->n; i++) out[i] = v->scale * (float)(v->q[i] - v->zero_point);
}

qd_model *qd_qint_dequant(const qd_qint *q, qd_err *err) {
    qd_model *m = qd_model_alloc(&q->cfg, err);
    if (!m) return NULL;
    for (int l = 0; l < q->cfg.n_layers; l++) {
        qd_layer *ml = &m->layers[l];
        float *dst[QD_W_PER_LAYER] = {ml->wq, ml->wk, ml->wv, ml->wo, ml->w_gate, ml->w_up, ml->w_down};
        for (int w = 0; w < QD_W_PER_LAYER; w++) qlin_dequant(&q->L[l].w[w], dst[w]);
        qvec_dequant(&q->L[l].attn_norm, ml->attn_norm);
        qvec_dequant(&q->L[l].ffn_norm, ml->ffn_norm);
        if (ml->attn_norm_b) qvec_dequant(&q->L[l].attn_norm_b, ml->attn_norm_b);
        if (ml->ffn_norm_b) qvec_dequant(&q->L[l].ffn_norm_b, ml->ffn_norm_b);
        float *b[3] = {ml->bq, ml->bk, ml->bv};
        double s_in = q->act[qd_act_index(q->cfg.n_layers, l, QD_AQ_ATTN_NORM)].scale;
        for (int w = 0; w < 3; w++) {
            const qd_qlin *W = &q->L[l].w[w];
            if (!b[w] || !W->bias) continue;
            for (int r = 0; r < W->rows; r++)
                b[w][r] = (float)(W->bias[r] * s_in * W->scale[W->per_channel ? r : 0]);
        }
    }
    qlin_dequant(&q->emb, m->tok_emb);
    if (m->lm_head != m->tok_emb) qlin_dequant(&q->head, m->lm_head);
    qvec_dequant(&q->final_norm, m->final_norm);
    if (m->final_norm_b) qvec_dequant(&q->final_norm_b, m->final_norm_b);
    snprintf(m->format, sizeof m->format, "qint");
    return m;
}

/* ---------------------------------------------------------------- sizes */

static size_t qlin_bytes(const qd_qlin *w) {
    size_t ng = w->per_channel ? (size_t)w->rows : 1;
    return (size_t)w->rows * qd_qlin_row_bytes(w) + ng * 8 + (w->bias ? (size_t)w->rows * 4 : 0);
}

size_t qd_qint_bytes(const qd_qint *q) {
    size_t b = 0;
    for (int l = 0; l < q->cfg.n_layers; l++) {
        for (int w = 0; w < QD_W_PER_LAYER; w++) b += qlin_bytes(&q->L[l].w[w]);
        b += 2 * ((size_t)q->cfg.dim * 2 + 8);
    }
    b += qlin_bytes(&q->emb);
    if (q->head.q != q->emb.q) b += qlin_bytes(&q->head);
    b += (size_t)q->cfg.dim * 2 + 8;
    if (q->cfg.norm == QD_NORM_LAYER) /* the LayerNorm biases, 2 per layer and the final one */
        b += (2 * (size_t)q->cfg.n_layers + 1) * ((size_t)q->cfg.dim * 2 + 8);
    b += ((size_t)q->cfg.n_layers * QD_AQ_PER_LAYER + QD_AQG_COUNT) * 12;
    return b;
}

void qd_qint_weight_bits(const qd_qint *q, size_t *n_weights, size_t *n_bits) {
    size_t n = 0, bits = 0;
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            const qd_qlin *W = &q->L[l].w[w];
            n += (size_t)W->rows * W->cols;
            bits += (size_t)W->rows * W->cols * W->bits + (W->per_channel ? (size_t)W->rows : 1) * 64;
        }
    const qd_qlin *h[2] = {&q->emb, q->head.q != q->emb.q ? &q->head : NULL};
    for (int i = 0; i < 2; i++)
        if (h[i]) {
            n += (size_t)h[i]->rows * h[i]->cols;
            bits += (size_t)h[i]->rows * h[i]->cols * h[i]->bits + (size_t)h[i]->rows * 64;
        }
    *n_weights = n;
    *n_bits = bits;
}

/* ---------------------------------------------------------------- safetensors artifact */

typedef struct tlist {
    qd_st_wtensor *t;
    char **names;
    int n, cap;
} tlist;

static int tl_add(tlist *L, const char *name, qd_st_dtype dt, int ndim, int64_t d0, int64_t d1,
                  const void *data) {
    if (L->n == L->cap) {
        int nc = L->cap ? 2 * L->cap : 256;
        qd_st_wtensor *t = realloc(L->t, (size_t)nc * sizeof *t);
        if (!t) return QD_ERR;
        L->t = t;
        char **nm = realloc(L->names, (size_t)nc * sizeof *nm);
        if (!nm) return QD_ERR;
        L->names = nm;
        L->cap = nc;
    }
    char *s = strdup(name);
    if (!s) return QD_ERR;
    L->names[L->n] = s;
    qd_st_wtensor *t = &L->t[L->n++];
    memset(t, 0, sizeof *t);
    t->name = s;
    t->dtype = dt;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = data;
    return QD_OK;
}

static int tl_lin(tlist *L, const char *base, const qd_qlin *w) {
    char n[256];
    int64_t ng = w->per_channel ? w->rows : 1;
    int rc = 0;
    snprintf(n, sizeof n, "%s.weight", base);
    rc |= tl_add(L, n, w->bits == 8 ? QD_ST_I8 : QD_ST_U8, 2, w->rows, (int64_t)qd_qlin_row_bytes(w), w->q);
    snprintf(n, sizeof n, "%s.weight_scale", base);
    rc |= tl_add(L, n, QD_ST_F32, 1, ng, 0, w->scale);
    snprintf(n, sizeof n, "%s.weight_zero_point", base);
    rc |= tl_add(L, n, QD_ST_I32, 1, ng, 0, w->zero_point);
    if (w->bias) {
        snprintf(n, sizeof n, "%s.bias", base);
        rc |= tl_add(L, n, QD_ST_I32, 1, w->rows, 0, w->bias);
    }
    return rc;
}

/* A norm vector as BASE.WHAT, BASE.WHAT_scale, BASE.WHAT_zero_point (what: weight, bias). */
static int tl_vec(tlist *L, const char *base, const char *what, const qd_qvec *v) {
    char n[256];
    int rc = 0;
    snprintf(n, sizeof n, "%s.%s", base, what);
    rc |= tl_add(L, n, QD_ST_I16, 1, v->n, 0, v->q);
    snprintf(n, sizeof n, "%s.%s_scale", base, what);
    rc |= tl_add(L, n, QD_ST_F32, 1, 1, 0, &v->scale);
    snprintf(n, sizeof n, "%s.%s_zero_point", base, what);
    rc |= tl_add(L, n, QD_ST_I32, 1, 1, 0, &v->zero_point);
    return rc;
}

/* Full name of an activation site ("model.layers.3.mlp.down_proj.input", "lm_head.output"). */
static void site_fullname(char *buf, size_t n, int layer, int site) {
    if (layer < 0) snprintf(buf, n, "%s", qd_aqg_name(site));
    else snprintf(buf, n, "model.layers.%d.%s", layer, qd_aq_site_name(site));
}

static char *json_config(const qd_config *c) {
    cJSON *o = cJSON_CreateObject();
    qd_config_json_shape(o, c);
    if (c->rope_scaling != QD_ROPE_NONE) { /* absent: unscaled, as older artifacts are */
        cJSON_AddStringToObject(o, "rope_scaling", qd_rope_scaling_name(c->rope_scaling));
        cJSON_AddNumberToObject(o, "rope_factor", c->rope_factor);
        cJSON_AddNumberToObject(o, "rope_low_freq_factor", c->rope_low_freq_factor);
        cJSON_AddNumberToObject(o, "rope_high_freq_factor", c->rope_high_freq_factor);
        cJSON_AddNumberToObject(o, "rope_orig_ctx", c->rope_orig_ctx);
    }
    cJSON_AddBoolToObject(o, "tied_embeddings", c->tied_embeddings);
    cJSON_AddBoolToObject(o, "qkv_bias", c->qkv_bias);
    if (c->family != QD_FAMILY_LLAMA) { /* absent: the LLaMA family, as older artifacts are */
        cJSON_AddStringToObject(o, "family", qd_family_name(c->family));
        cJSON_AddNumberToObject(o, "rope_dim", qd_rot_dim(c));
        cJSON_AddNumberToObject(o, "emb_scale", qd_emb_scale(c));
    }
    cJSON_AddNumberToObject(o, "bos_id", c->bos_id);
    cJSON_AddNumberToObject(o, "eos_id", c->eos_id);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static char *json_qconfig(const qd_qint *q) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "wbits", q->wbits);
    cJSON_AddNumberToObject(o, "head_bits", q->head_bits);
    cJSON *ws = cJSON_AddObjectToObject(o, "weights");
    for (int w = 0; w < QD_W_PER_LAYER; w++) {
        const qd_qlin *W = &q->L[0].w[w];
        cJSON *x = cJSON_AddObjectToObject(ws, qd_wsite_name(w));
        cJSON_AddNumberToObject(x, "bits", W->bits);
        cJSON_AddBoolToObject(x, "symmetric", W->sym);
        cJSON_AddStringToObject(x, "granularity", W->per_channel ? "per_channel" : "per_tensor");
    }
    cJSON *ab = cJSON_AddObjectToObject(o, "activation_bits");
    for (int c = 0; c < QD_AC_COUNT; c++) {
        /* the bits actually used by the sites of the class */
        int bits = qd_aclass_default_bits(c);
        for (int s = 0; s < QD_AQ_PER_LAYER; s++)
            if (qd_aq_site_class(s) == c) bits = q->act[qd_act_index(q->cfg.n_layers, 0, s)].bits;
        cJSON_AddNumberToObject(ab, qd_aclass_name(c), bits);
    }
    cJSON_AddStringToObject(o, "norm_weights", "16-bit asymmetric per tensor");
    cJSON_AddStringToObject(o, "activations", "static per-tensor asymmetric");
    cJSON_AddStringToObject(o, "rounding", "half_to_even");
    cJSON_AddStringToObject(o, "zero_point", "stored signed form: real = scale * (q - zero_point), "
                                             "q_stored = q_unsigned - 2^(bits-1)");
    cJSON_AddStringToObject(o, "int4_packing", "U8, two per byte, even column in the low nibble, "
                                               "two's complement");
    cJSON_AddStringToObject(o, "bias", "I32 at scale input_scale * weight_scale");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

int qd_qint_save(const qd_qint *q, const char *path, qd_err *err) {
    const qd_config *c = &q->cfg;
    int nl = c->n_layers;
    tlist L = {0};
    int rc = 0;
    char n[256];
    /* activation encodings: one scalar triple per site, kept in arrays the writer reads */
    size_t na = (size_t)nl * QD_AQ_PER_LAYER + QD_AQG_COUNT;
    float *as = malloc(na * sizeof(float));
    int32_t *az = malloc(na * sizeof(int32_t)), *abits = malloc(na * sizeof(int32_t));
    if (!as || !az || !abits) rc = QD_ERR;
    for (size_t i = 0; !rc && i < na; i++) {
        as[i] = q->act[i].scale;
        az[i] = q->act[i].zero_point;
        abits[i] = q->act[i].bits;
    }
    for (int l = 0; !rc && l < nl; l++) {
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            snprintf(n, sizeof n, "model.layers.%d.%s", l, qd_wsite_name(w));
            rc |= tl_lin(&L, n, &q->L[l].w[w]);
        }
        snprintf(n, sizeof n, "model.layers.%d.input_layernorm", l);
        rc |= tl_vec(&L, n, "weight", &q->L[l].attn_norm);
        if (q->L[l].attn_norm_b.q) rc |= tl_vec(&L, n, "bias", &q->L[l].attn_norm_b);
        snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm", l);
        rc |= tl_vec(&L, n, "weight", &q->L[l].ffn_norm);
        if (q->L[l].ffn_norm_b.q) rc |= tl_vec(&L, n, "bias", &q->L[l].ffn_norm_b);
    }
    if (!rc) rc |= tl_lin(&L, "model.embed_tokens", &q->emb);
    if (!rc && q->head.q != q->emb.q) rc |= tl_lin(&L, "lm_head", &q->head);
    if (!rc) rc |= tl_vec(&L, "model.norm", "weight", &q->final_norm);
    if (!rc && q->final_norm_b.q) rc |= tl_vec(&L, "model.norm", "bias", &q->final_norm_b);
    for (int l = -1; !rc && l < nl; l++) {
        int ns = l < 0 ? QD_AQG_COUNT : QD_AQ_PER_LAYER;
        for (int s = 0; s < ns; s++) {
            int i = qd_act_index(nl, l, s);
            char base[200];
            site_fullname(base, sizeof base, l, s);
            snprintf(n, sizeof n, "%s.scale", base);
            rc |= tl_add(&L, n, QD_ST_F32, 1, 1, 0, &as[i]);
            snprintf(n, sizeof n, "%s.zero_point", base);
            rc |= tl_add(&L, n, QD_ST_I32, 1, 1, 0, &az[i]);
            snprintf(n, sizeof n, "%s.bits", base);
            rc |= tl_add(&L, n, QD_ST_I32, 1, 1, 0, &abits[i]);
        }
    }
    char *arch = rc ? NULL : json_config(c), *qc = rc ? NULL : json_qconfig(q);
    char ver[16];
    snprintf(ver, sizeof ver, "%d", QD_QINT_VERSION);
    if (rc || !arch || !qc) {
        rc = qd_errf(err, "%s: out of memory", __func__);
    } else {
        const char *meta[] = {"format", QD_QINT_FORMAT, "format_version", ver,
                              "quantization_config", qc, "architecture", arch,
                              "source_sha256", q->source_sha256, "method", q->method, NULL};
        rc = qd_st_write(path, L.t, L.n, meta, err);
    }
    free(arch);
    free(qc);
    for (int i = 0; i < L.n; i++) free(L.names[i]);
    free(L.names);
    free(L.t);
    free(as), free(az), free(abits);
    return rc;
}

/* ---------------------------------------------------------------- reading */

static const qd_st_tensor *need(const qd_st_file *f, const char *name, qd_st_dtype dt,
                                uint64_t n_elems, qd_err *err) {
    const qd_st_tensor *t = qd_st_find(f, name);
    if (!t) return qd_errf(err, "%s: tensor %s missing", f->path, name), NULL;
    if (t->dtype != dt)
        return qd_errf(err, "%s: tensor %s is %s, expected %s", f->path, name,
                       qd_st_dtype_name(t->dtype), qd_st_dtype_name(dt)), NULL;
    if (t->n_elems != n_elems)
        return qd_errf(err, "%s: tensor %s has %llu elements, expected %llu", f->path, name,
                       (unsigned long long)t->n_elems, (unsigned long long)n_elems), NULL;
    return t;
}

static int json_int(const cJSON *o, const char *k, int *out, int lo, int hi, qd_err *err,
                    const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v)) { *out = cJSON_IsTrue(v); return QD_OK; }
    if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi ||
        v->valuedouble != floor(v->valuedouble))
        return qd_errf(err, "%s: metadata field %s missing or out of range [%d, %d]", path, k, lo, hi);
    *out = (int)v->valuedouble;
    return QD_OK;
}

static int parse_arch(const char *s, qd_config *c, const char *path, qd_err *err) {
    cJSON *o = cJSON_Parse(s);
    if (!o) return qd_errf(err, "%s: metadata \"architecture\" is not JSON", path);
    memset(c, 0, sizeof *c);
    int rc = 0;
    const cJSON *fam = cJSON_GetObjectItemCaseSensitive(o, "family");
    int family = QD_FAMILY_LLAMA;
    if (fam) {
        const char *fn = cJSON_IsString(fam) ? fam->valuestring : "";
        family = strcmp(fn, "gemma") == 0 ? QD_FAMILY_GEMMA
               : strcmp(fn, "stablelm") == 0 ? QD_FAMILY_STABLELM : -1;
        if (family < 0) {
            cJSON_Delete(o);
            return qd_errf(err, "%s: metadata architecture.family '%.32s' unknown (need gemma or "
                           "stablelm; absent for llama)", path, fn);
        }
    }
    qd_config_set_family(c, family);
    rc |= json_int(o, "dim", &c->dim, 1, QD_MAX_DIM, err, path);
    rc |= json_int(o, "hidden_dim", &c->hidden_dim, 1, QD_MAX_DIM, err, path);
    rc |= json_int(o, "n_layers", &c->n_layers, 1, QD_MAX_LAYERS, err, path);
    rc |= json_int(o, "n_heads", &c->n_heads, 1, QD_MAX_HEADS, err, path);
    rc |= json_int(o, "n_kv_heads", &c->n_kv_heads, 1, QD_MAX_HEADS, err, path);
    rc |= json_int(o, "head_dim", &c->head_dim, 2, QD_MAX_DIM, err, path);
    rc |= json_int(o, "vocab_size", &c->vocab_size, 1, QD_MAX_VOCAB, err, path);
    rc |= json_int(o, "max_seq_len", &c->max_seq_len, 1, QD_MAX_CTX, err, path);
    rc |= json_int(o, "tied_embeddings", &c->tied_embeddings, 0, 1, err, path);
    rc |= json_int(o, "qkv_bias", &c->qkv_bias, 0, 1, err, path);
    rc |= json_int(o, "bos_id", &c->bos_id, -1, QD_MAX_VOCAB, err, path);
    rc |= json_int(o, "eos_id", &c->eos_id, -1, QD_MAX_VOCAB, err, path);
    if (family != QD_FAMILY_LLAMA) {
        rc |= json_int(o, "rope_dim", &c->rope_dim, 2, QD_MAX_DIM, err, path);
        if (!rc && c->rope_dim == c->head_dim) c->rope_dim = 0;
        const cJSON *es = cJSON_GetObjectItemCaseSensitive(o, "emb_scale");
        if (!cJSON_IsNumber(es))
            rc = qd_errf(err, "%s: metadata architecture.emb_scale missing", path);
        else
            c->emb_scale = es->valuedouble == 1.0 ? 0.0f : (float)es->valuedouble;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "norm_eps");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "rope_theta");
    if (!cJSON_IsNumber(e) || !cJSON_IsNumber(t))
        rc = qd_errf(err, "%s: metadata norm_eps / rope_theta missing", path);
    else
        c->norm_eps = (float)e->valuedouble, c->rope_theta = (float)t->valuedouble;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
    if (rs) {
        const char *n = cJSON_IsString(rs) ? rs->valuestring : "";
        c->rope_scaling = strcmp(n, "linear") == 0 ? QD_ROPE_LINEAR
                          : strcmp(n, "llama3") == 0 ? QD_ROPE_LLAMA3 : -1;
        if (c->rope_scaling < 0)
            rc = qd_errf(err, "%s: metadata rope_scaling '%.32s' unknown", path, n);
        const char *fk[3] = {"rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"};
        float *fv[3] = {&c->rope_factor, &c->rope_low_freq_factor, &c->rope_high_freq_factor};
        for (int i = 0; i < 3; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, fk[i]);
            if (cJSON_IsNumber(v)) *fv[i] = (float)v->valuedouble;
        }
        if (cJSON_GetObjectItemCaseSensitive(o, "rope_orig_ctx"))
            rc |= json_int(o, "rope_orig_ctx", &c->rope_orig_ctx, 0, QD_MAX_CTX, err, path);
    }
    cJSON_Delete(o);
    if (rc) return QD_ERR;
    return qd_config_validate(c, path, err);
}

/* Every tensor of a linear layer is checked against the shape the architecture implies before
 * anything is allocated: the safetensors reader has already bounded each tensor by the file's
 * real size, so a file whose metadata claims huge dimensions is refused by its own tensors and
 * never costs more memory than it holds. */
static int read_lin(const qd_st_file *f, const char *base, qd_qlin *w, int rows, int cols,
                    int bias_ok, qd_err *err) {
    char n[256];
    memset(w, 0, sizeof *w);
    snprintf(n, sizeof n, "%s.weight", base);
    const qd_st_tensor *t = qd_st_find(f, n);
    if (!t) return qd_errf(err, "%s: tensor %s missing", f->path, n);
    if (t->dtype != QD_ST_I8 && t->dtype != QD_ST_U8)
        return qd_errf(err, "%s: tensor %s is %s, expected I8 (int8) or U8 (packed int4)",
                       f->path, n, qd_st_dtype_name(t->dtype));
    int bits = t->dtype == QD_ST_I8 ? 8 : 4;
    uint64_t row_bytes = bits == 4 ? ((uint64_t)cols + 1) / 2 : (uint64_t)cols;
    const qd_st_tensor *tw = need(f, n, t->dtype, (uint64_t)rows * row_bytes, err);
    if (!tw) return QD_ERR;
    snprintf(n, sizeof n, "%s.weight_scale", base);
    const qd_st_tensor *ts = qd_st_find(f, n);
    if (!ts || (ts->n_elems != 1 && ts->n_elems != (uint64_t)rows))
        return qd_errf(err, "%s: %s missing or not 1 / %d entries", f->path, n, rows);
    qd_wq_spec sp = {bits, 0, ts->n_elems != 1 || rows == 1};
    size_t ng = sp.per_channel ? (size_t)rows : 1;
    const qd_st_tensor *tsc = need(f, n, QD_ST_F32, ng, err);
    snprintf(n, sizeof n, "%s.weight_zero_point", base);
    const qd_st_tensor *tz = tsc ? need(f, n, QD_ST_I32, ng, err) : NULL;
    if (!tz) return QD_ERR;
    snprintf(n, sizeof n, "%s.bias", base);
    const qd_st_tensor *tb = qd_st_find(f, n);
    if (tb && !bias_ok) return qd_errf(err, "%s: unexpected tensor %s", f->path, n);
    if (tb && !need(f, n, QD_ST_I32, (uint64_t)rows, err)) return QD_ERR;
    if (qlin_alloc(w, rows, cols, sp, tb != NULL, err)) return QD_ERR;
    memcpy(w->q, tw->data, tw->nbytes);
    memcpy(w->scale, tsc->data, tsc->nbytes);
    memcpy(w->zero_point, tz->data, tz->nbytes);
    if (tb) memcpy(w->bias, tb->data, tb->nbytes);
    int sym = 1;
    for (size_t g = 0; g < ng; g++) {
        if (!(w->scale[g] > 0) || !isfinite(w->scale[g]))
            return qd_errf(err, "%s: %s.weight_scale[%zu] = %g is not a positive finite number",
                           f->path, base, g, w->scale[g]);
        if (w->zero_point[g] != 0) sym = 0;
    }
    w->sym = sym;
    return QD_OK;
}

static int read_vec(const qd_st_file *f, const char *base, const char *what, qd_qvec *v,
                    int n_el, qd_err *err) {
    char n[256];
    snprintf(n, sizeof n, "%s.%s", base, what);
    const qd_st_tensor *t = need(f, n, QD_ST_I16, (uint64_t)n_el, err);
    snprintf(n, sizeof n, "%s.%s_scale", base, what);
    const qd_st_tensor *ts = t ? need(f, n, QD_ST_F32, 1, err) : NULL;
    snprintf(n, sizeof n, "%s.%s_zero_point", base, what);
    const qd_st_tensor *tz = ts ? need(f, n, QD_ST_I32, 1, err) : NULL;
    if (!tz) return QD_ERR;
    v->n = n_el;
    v->q = malloc((size_t)n_el * 2);
    if (!v->q) return qd_errf(err, "%s: out of memory", __func__);
    memcpy(v->q, t->data, t->nbytes);
    memcpy(&v->scale, ts->data, 4);
    memcpy(&v->zero_point, tz->data, 4);
    if (!(v->scale > 0) || !isfinite(v->scale))
        return qd_errf(err, "%s: %s.%s_scale is not a positive finite number", f->path, base,
                       what);
    return QD_OK;
}

qd_qint *qd_qint_load(const char *path, qd_err *err) {
    qd_st_file *f = qd_st_open(path, err);
    if (!f) return NULL;
    qd_qint *q = NULL;
    const char *fmt = qd_st_meta(f, "format"), *ver = qd_st_meta(f, "format_version");
    if (!fmt || strcmp(fmt, QD_QINT_FORMAT)) {
        qd_errf(err, "%s: not a quantd integer model (metadata format is %s%s%s, expected \"%s\")",
                path, fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "", QD_QINT_FORMAT);
        goto fail;
    }
    if (!ver || strcmp(ver, "1")) {
        qd_errf(err, "%s: %s format version %s is not supported (this build reads version %d)",
                path, QD_QINT_FORMAT, ver ? ver : "(missing)", QD_QINT_VERSION);
        goto fail;
    }
    const char *arch = qd_st_meta(f, "architecture");
    qd_config c;
    if (!arch) {
        qd_errf(err, "%s: metadata \"architecture\" missing", path);
        goto fail;
    }
    if (parse_arch(arch, &c, path, err)) goto fail;
    q = qint_alloc(&c, err);
    if (!q) goto fail;
    const char *m = qd_st_meta(f, "method"), *sha = qd_st_meta(f, "source_sha256");
    snprintf(q->method, sizeof q->method, "%s", m ? m : "unknown");
    snprintf(q->source_sha256, sizeof q->source_sha256, "%s", sha ? sha : "");
    int nl = c.n_layers;
    char n[256];
    for (int l = 0; l < nl; l++) {
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            int rows, cols;
            wsite_shape(&c, w, &rows, &cols);
            snprintf(n, sizeof n, "model.layers.%d.%s", l, qd_wsite_name(w));
            if (read_lin(f, n, &q->L[l].w[w], rows, cols, w <= QD_W_V, err)) goto fail;
        }
        int lnb = c.norm == QD_NORM_LAYER;
        snprintf(n, sizeof n, "model.layers.%d.input_layernorm", l);
        if (read_vec(f, n, "weight", &q->L[l].attn_norm, c.dim, err) ||
            (lnb && read_vec(f, n, "bias", &q->L[l].attn_norm_b, c.dim, err)))
            goto fail;
        snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm", l);
        if (read_vec(f, n, "weight", &q->L[l].ffn_norm, c.dim, err) ||
            (lnb && read_vec(f, n, "bias", &q->L[l].ffn_norm_b, c.dim, err)))
            goto fail;
    }
    if (read_lin(f, "model.embed_tokens", &q->emb, c.vocab_size, c.dim, 0, err)) goto fail;
    if (c.tied_embeddings) q->head = q->emb;
    else if (read_lin(f, "lm_head", &q->head, c.vocab_size, c.dim, 0, err)) goto fail;
    if (read_vec(f, "model.norm", "weight", &q->final_norm, c.dim, err) ||
        (c.norm == QD_NORM_LAYER &&
         read_vec(f, "model.norm", "bias", &q->final_norm_b, c.dim, err)))
        goto fail;
    for (int l = -1; l < nl; l++) {
        int ns = l < 0 ? QD_AQG_COUNT : QD_AQ_PER_LAYER;
        for (int s = 0; s < ns; s++) {
            qd_qenc *a = &q->act[qd_act_index(nl, l, s)];
            char base[200];
            site_fullname(base, sizeof base, l, s);
            snprintf(n, sizeof n, "%s.scale", base);
            const qd_st_tensor *ts = need(f, n, QD_ST_F32, 1, err);
            snprintf(n, sizeof n, "%s.zero_point", base);
            const qd_st_tensor *tz = ts ? need(f, n, QD_ST_I32, 1, err) : NULL;
            snprintf(n, sizeof n, "%s.bits", base);
            const qd_st_tensor *tb = tz ? need(f, n, QD_ST_I32, 1, err) : NULL;
            if (!tb) goto fail;
            int32_t bits;
            memcpy(&a->scale, ts->data, 4);
            memcpy(&a->zero_point, tz->data, 4);
            memcpy(&bits, tb->data, 4);
            if (!(a->scale > 0) || !isfinite(a->scale) || (bits != 8 && bits != 16)) {
                qd_errf(err, "%s: activation encoding %s: scale %g, bits %d (need scale > 0, "
                        "8 or 16 bits)", path, base, a->scale, bits);
                goto fail;
            }
            a->bits = bits;
        }
    }
    q->wbits = q->L[0].w[0].bits;
    q->head_bits = q->emb.bits;
    qd_st_close(f);
    return q;
fail:
    qd_qint_free(q);
    qd_st_close(f);
    return NULL;
}
