/* AIMET encodings.json writer (see aimet.h for both formats and the sign convention). The
 * qd_qint keeps zero points in stored signed form; AIMET's unsigned grid is 2^(bw-1) above it,
 * so offset = -(zero_point_stored + 2^(bw-1)), which is -2^(bw-1) for symmetric grids. */
#include "quant/export/aimet.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"

typedef struct enc_view {
    const char *name;
    int bits, sym, n;
    const float *scale;
    const int32_t *zp;     /* stored form, n entries */
} enc_view;

static double aimet_offset(int32_t zp_stored, int bits) {
    return -(double)((int64_t)zp_stored + ((int64_t)1 << (bits - 1)));
}

static void add_v1(cJSON *arr, const enc_view *e) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "dtype", "INT");
    cJSON_AddStringToObject(o, "enc_type", e->n > 1 ? "PER_CHANNEL" : "PER_TENSOR");
    cJSON_AddBoolToObject(o, "is_sym", e->sym);
    cJSON_AddNumberToObject(o, "bw", e->bits);
    cJSON *s = cJSON_AddArrayToObject(o, "scale"), *f = cJSON_AddArrayToObject(o, "offset");
    for (int i = 0; i < e->n; i++) {
        cJSON_AddItemToArray(s, cJSON_CreateNumber(e->scale[i]));
        cJSON_AddItemToArray(f, cJSON_CreateNumber(aimet_offset(e->zp[i], e->bits)));
    }
    cJSON_AddItemToArray(arr, o);
}

static void add_v0(cJSON *obj, const enc_view *e) {
    cJSON *list = cJSON_AddArrayToObject(obj, e->name);
    double Q = (double)(((int64_t)1 << e->bits) - 1);
    for (int i = 0; i < e->n; i++) {
        cJSON *o = cJSON_CreateObject();
        double s = e->scale[i], off = aimet_offset(e->zp[i], e->bits);
        cJSON_AddNumberToObject(o, "bitwidth", e->bits);
        cJSON_AddStringToObject(o, "dtype", "int");
        cJSON_AddStringToObject(o, "is_symmetric", e->sym ? "True" : "False");
        cJSON_AddNumberToObject(o, "max", (Q + off) * s);
        cJSON_AddNumberToObject(o, "min", off * s);
        cJSON_AddNumberToObject(o, "offset", off);
        cJSON_AddNumberToObject(o, "scale", s);
        cJSON_AddItemToArray(list, o);
    }
}

static void add(cJSON *dst, int v1, const enc_view *e) {
    if (v1) add_v1(dst, e);
    else add_v0(dst, e);
}

static void add_lin(cJSON *dst, int v1, const char *name, const qd_qlin *w) {
    enc_view e = {name, w->bits, w->sym, w->per_channel ? w->rows : 1, w->scale, w->zero_point};
    add(dst, v1, &e);
}

static void add_vec(cJSON *dst, int v1, const char *name, const qd_qvec *v) {
    enc_view e = {name, 16, 0, 1, &v->scale, &v->zero_point};
    add(dst, v1, &e);
}

/* A norm weight under its Hugging Face name. Gemma's checkpoint stores w of (1 + w) while the
 * integer model holds the multiplier: its encoding is the 16-bit min/max grid of the
 * dequantized multiplier minus 1 (what the converter sees in that tensor). */
static void add_norm(cJSON *dst, int v1, const char *name, const qd_qvec *v, int gemma) {
    if (!gemma) {
        add_vec(dst, v1, name, v);
        return;
    }
    double lo = 0, hi = 0; /* the grid holds 0, as every asymmetric grid here */
    for (int i = 0; i < v->n; i++) {
        double w = (double)v->scale * (v->q[i] - v->zero_point) - 1.0;
        lo = w < lo ? w : lo, hi = w > hi ? w : hi;
    }
    float sc = (float)((hi - lo) / 65535.0);
    if (!(sc > 0)) sc = 1.0f;
    int32_t zp = (int32_t)rint(-lo / sc) - 32768; /* stored form */
    enc_view e = {name, 16, 0, 1, &sc, &zp};
    add(dst, v1, &e);
}

int qd_aimet_write(const qd_qint *q, const char *path, const char *version, qd_err *err) {
    int v1;
    if (!strcmp(version, "1.0.0")) v1 = 1;
    else if (!strcmp(version, "0.6.1")) v1 = 0;
    else return qd_errf(err, "%s: AIMET encodings version \"%s\" (1.0.0 or 0.6.1)", __func__, version);
    const qd_config *c = &q->cfg;
    int nl = c->n_layers, gemma = c->family == QD_FAMILY_GEMMA;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", version);
    cJSON *acts = v1 ? cJSON_AddArrayToObject(root, "activation_encodings")
                     : cJSON_AddObjectToObject(root, "activation_encodings");
    cJSON *pars = v1 ? cJSON_AddArrayToObject(root, "param_encodings")
                     : cJSON_AddObjectToObject(root, "param_encodings");
    char n[256];
    for (int l = -1; l < nl; l++) {
        int ns = l < 0 ? QD_AQG_COUNT : QD_AQ_PER_LAYER;
        for (int s = 0; s < ns; s++) {
            const qd_qenc *a = &q->act[qd_act_index(nl, l, s)];
            if (l < 0) snprintf(n, sizeof n, "%s", qd_aqg_name(s));
            else snprintf(n, sizeof n, "model.layers.%d.%s", l, qd_aq_site_name(s));
            enc_view e = {n, a->bits, 0, 1, &a->scale, &a->zero_point};
            add(acts, v1, &e);
        }
    }
    for (int l = 0; l < nl; l++) {
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, qd_wsite_name(w));
            add_lin(pars, v1, n, &q->L[l].w[w]);
        }
        snprintf(n, sizeof n, "model.layers.%d.input_layernorm.weight", l);
        add_norm(pars, v1, n, &q->L[l].attn_norm, gemma);
        snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm.weight", l);
        add_norm(pars, v1, n, &q->L[l].ffn_norm, gemma);
        if (q->L[l].attn_norm_b.q) {
            snprintf(n, sizeof n, "model.layers.%d.input_layernorm.bias", l);
            add_vec(pars, v1, n, &q->L[l].attn_norm_b);
        }
        if (q->L[l].ffn_norm_b.q) {
            snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm.bias", l);
            add_vec(pars, v1, n, &q->L[l].ffn_norm_b);
        }
    }
    add_lin(pars, v1, "model.embed_tokens.weight", &q->emb);
    if (q->head.q != q->emb.q) add_lin(pars, v1, "lm_head.weight", &q->head);
    add_norm(pars, v1, "model.norm.weight", &q->final_norm, gemma);
    if (q->final_norm_b.q) add_vec(pars, v1, "model.norm.bias", &q->final_norm_b);
    if (v1) cJSON_AddArrayToObject(root, "excluded_layers");
    cJSON *qa = cJSON_AddObjectToObject(root, "quantizer_args");
    cJSON_AddNumberToObject(qa, "activation_bitwidth", 8);
    cJSON_AddStringToObject(qa, "dtype", "int");
    cJSON_AddBoolToObject(qa, "is_symmetric", q->L[0].w[0].sym);
    cJSON_AddNumberToObject(qa, "param_bitwidth", q->wbits);
    cJSON_AddBoolToObject(qa, "per_channel_quantization", q->L[0].w[0].per_channel);
    cJSON_AddStringToObject(qa, "quant_scheme", q->method);
    char *txt = cJSON_Print(root);
    cJSON_Delete(root);
    if (!txt) return qd_errf(err, "%s: out of memory", __func__);
    int rc = qd_write_text_atomic(path, txt, err);
    free(txt);
    return rc;
}
