/* Encodings of a trained simulation (encodings.h). */
#include "quant/sim/encodings.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qd_encodings_free(qd_encodings *e) {
    if (!e) return;
    for (int i = 0; i < e->n_w; i++) free(e->w[i].scale), free(e->w[i].zero);
    free(e->w), free(e->a);
    qd_model_free(e->folded);
    free(e);
}

static int add_w(qd_encodings *e, int layer, int site, const char *name, const float *w,
                 int rows, int cols, qd_wq_spec sp) {
    qd_wenc *x = &e->w[e->n_w];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->layer = layer, x->site = site, x->bits = sp.bits, x->sym = sp.sym;
    x->per_channel = sp.per_channel, x->rows = rows, x->cols = cols, x->w = w;
    x->n_ch = sp.per_channel ? rows : 1;
    x->qmin = sp.sym ? -(1 << (sp.bits - 1)) : 0;
    x->qmax = sp.sym ? (1 << (sp.bits - 1)) - 1 : (int)((1u << sp.bits) - 1);
    x->scale = malloc(sizeof(float) * (size_t)x->n_ch);
    x->zero = malloc(sizeof(int32_t) * (size_t)x->n_ch);
    if (!x->scale || !x->zero) {
        free(x->scale), free(x->zero);
        return QD_ERR;
    }
    e->n_w++;
    return QD_OK;
}

/* Encodings of a plain min/max grid (norms, embedding, head) computed on the folded tensor. */
static int add_w_minmax(qd_encodings *e, int layer, int site, const char *name, const float *w,
                        int rows, int cols, qd_wq_spec sp) {
    if (add_w(e, layer, site, name, w, rows, cols, sp)) return QD_ERR;
    qd_wenc *x = &e->w[e->n_w - 1];
    size_t n = (size_t)rows * cols;
    qd_real *tmp = malloc(sizeof(qd_real) * n), *out = malloc(sizeof(qd_real) * n);
    qd_real *sc = malloc(sizeof(qd_real) * (size_t)x->n_ch), *zp = malloc(sizeof(qd_real) * (size_t)x->n_ch);
    int rc = QD_ERR;
    if (tmp && out && sc && zp) {
        for (size_t i = 0; i < n; i++) tmp[i] = w[i];
        qd_wq_forward(out, tmp, rows, cols, sp, NULL, NULL, sc, zp, NULL, 0);
        for (int g = 0; g < x->n_ch; g++) x->scale[g] = (float)sc[g], x->zero[g] = (int32_t)zp[g];
        rc = QD_OK;
    }
    free(tmp), free(out), free(sc), free(zp);
    return rc;
}

qd_encodings *qd_encodings_build(const qd_qsim *q, const qd_model *src, qd_err *err) {
    qd_model *copy = qd_model_clone(src, err);
    return copy ? qd_encodings_build_into(q, copy, err) : NULL;
}

qd_encodings *qd_encodings_build_into(const qd_qsim *q, qd_model *src, qd_err *err) {
    const qd_config *c = &q->cfg;
    int nl = c->n_layers, D = c->dim;
    qd_real *sc = NULL, *zp = NULL;
    qd_encodings *e = calloc(1, sizeof *e);
    if (!e) {
        qd_model_free(src);
        goto oom;
    }
    e->wbits = q->o.wbits;
    e->folded = src;
    e->w = calloc((size_t)nl * (QD_W_PER_LAYER + 2) + 3, sizeof *e->w);
    e->a = calloc((size_t)nl * QD_AQ_PER_LAYER + QD_AQG_COUNT, sizeof *e->a);
    size_t nch = (size_t)(c->hidden_dim + c->dim + c->n_heads * c->head_dim);
    sc = malloc(sizeof(qd_real) * nch), zp = malloc(sizeof(qd_real) * nch);
    if (!e->w || !e->a || !sc || !zp) goto oom;
    char name[96];
    /* the linear weights' grids first: the simulation computes them from its source weights,
     * which the fold below overwrites when src is the simulation's own model */
    for (int l = 0; l < nl; l++) {
        const qd_qlayer *L = &q->L[l];
        const qd_layer *fl = &e->folded->layers[l];
        const float *fw[QD_W_PER_LAYER] = {fl->wq, fl->wk, fl->wv, fl->wo,
                                           fl->w_gate, fl->w_up, fl->w_down};
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, qd_wsite_name(w));
            if (add_w(e, l, w, name, fw[w], L->wrows[w], L->wcols[w], L->wspec[w])) goto oom;
            qd_wenc *x = &e->w[e->n_w - 1];
            qd_qsim_weight_enc(q, l, w, sc, zp);
            for (int g = 0; g < x->n_ch; g++)
                x->scale[g] = (float)sc[g], x->zero[g] = (int32_t)zp[g];
        }
    }
    /* each tensor is read whole (into the simulation's scratch) before it is written */
    if (qd_qsim_fold(q, e->folded, err)) {
        free(sc), free(zp);
        qd_encodings_free(e);
        return NULL;
    }
    const qd_wq_spec nsp = {16, 0, 0};
    for (int l = 0; l < nl; l++) {
        const qd_qlayer *L = &q->L[l];
        const qd_layer *fl = &e->folded->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if (add_w_minmax(e, l, QD_WENC_ATTN_NORM, name, fl->attn_norm, 1, D, nsp)) goto oom;
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if (add_w_minmax(e, l, QD_WENC_FFN_NORM, name, fl->ffn_norm, 1, D, nsp)) goto oom;
        for (int s = 0; s < QD_AQ_PER_LAYER; s++) {
            qd_aenc *a = &e->a[e->n_a++];
            snprintf(a->name, sizeof a->name, "model.layers.%d.%s", l, qd_aq_site_name(s));
            a->layer = l, a->site = s, a->aclass = qd_aq_site_class(s), a->bits = L->aq[s].bits;
            a->scale = (float)qd_aq_scale(&L->aq[s]);
            a->zero = (int32_t)rint((double)qd_aq_zero(&L->aq[s]));
        }
    }
    free(sc), free(zp);
    sc = zp = NULL;
    qd_wq_spec hsp = {q->o.head_bits, 0, 1};
    if (add_w_minmax(e, -1, QD_WENC_EMB, "model.embed_tokens.weight", e->folded->tok_emb,
                     c->vocab_size, D, hsp))
        goto oom;
    if (e->folded->lm_head != e->folded->tok_emb &&
        add_w_minmax(e, -1, QD_WENC_HEAD, "lm_head.weight", e->folded->lm_head, c->vocab_size, D,
                     hsp))
        goto oom;
    if (add_w_minmax(e, -1, QD_WENC_FINAL_NORM, "model.norm.weight", e->folded->final_norm, 1, D,
                     nsp))
        goto oom;
    for (int g = 0; g < QD_AQG_COUNT; g++) {
        qd_aenc *a = &e->a[e->n_a++];
        snprintf(a->name, sizeof a->name, "%s", qd_aqg_name(g));
        a->layer = -1, a->site = g, a->aclass = qd_aqg_class(g), a->bits = q->aqg[g].bits;
        a->scale = (float)qd_aq_scale(&q->aqg[g]);
        a->zero = (int32_t)rint((double)qd_aq_zero(&q->aqg[g]));
    }
    for (int i = 0; i < e->n_a; i++) {
        qd_aenc *a = &e->a[i];
        a->min = (float)((0.0 - a->zero) * a->scale);
        a->max = (float)(((double)((1u << a->bits) - 1) - a->zero) * a->scale);
    }
    return e;
oom:
    free(sc), free(zp);
    qd_encodings_free(e);
    qd_errf(err, "%s: out of memory", __func__);
    return NULL;
}

const qd_wenc *qd_enc_weight(const qd_encodings *e, int layer, int site) {
    for (int i = 0; i < e->n_w; i++)
        if (e->w[i].layer == layer && e->w[i].site == site) return &e->w[i];
    return NULL;
}

const qd_aenc *qd_enc_act(const qd_encodings *e, int layer, int site) {
    for (int i = 0; i < e->n_a; i++)
        if (e->a[i].layer == layer && e->a[i].site == site) return &e->a[i];
    return NULL;
}

void qd_wenc_quantize(const qd_wenc *e, int32_t *q) {
    size_t gsz = e->per_channel ? (size_t)e->cols : (size_t)e->rows * e->cols;
    for (int g = 0; g < e->n_ch; g++)
        for (size_t i = 0; i < gsz; i++) {
            size_t k = (size_t)g * gsz + i;
            float t = rintf(e->w[k] / e->scale[g]) + (float)e->zero[g];
            t = t < e->qmin ? (float)e->qmin : (t > e->qmax ? (float)e->qmax : t);
            q[k] = (int32_t)t;
        }
}

size_t qd_encodings_model_bytes(const qd_encodings *e) {
    size_t b = 0;
    for (int i = 0; i < e->n_w; i++) {
        const qd_wenc *x = &e->w[i];
        b += ((size_t)x->rows * x->cols * (size_t)x->bits + 7) / 8;
        b += (size_t)x->n_ch * 8;
    }
    const qd_config *c = &e->folded->cfg;
    if (c->qkv_bias) b += (size_t)c->n_layers * 4 * (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    b += (size_t)e->n_a * 8;
    return b;
}
