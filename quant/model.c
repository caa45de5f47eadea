/* The in-memory model: config validation, the layer tensor table, the single-allocation tensor
 * layout, clone and free. Readers and writers live in quant/io/. */
#include "quant/model.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/vocab.h"

/* Each tensor starts on a 64-byte boundary so SIMD kernels may use aligned loads; the padding
 * floats stay zero and are counted in n_floats. */
#define QD_TENSOR_ALIGN_FLOATS 16

int qd_config_validate(const qd_config *c, const char *path, qd_err *err) {
    if (!path) path = "config";
#define RANGE(field, lo, hi)                                                                  \
    do {                                                                                      \
        if ((long long)c->field < (long long)(lo) || (long long)c->field > (long long)(hi))   \
            return qd_errf(err, "%s: %s = %lld out of range [%lld, %lld]", path, #field,      \
                           (long long)c->field, (long long)(lo), (long long)(hi));            \
    } while (0)
    RANGE(dim, 1, QD_MAX_DIM);
    RANGE(hidden_dim, 1, QD_MAX_DIM);
    RANGE(n_layers, 1, QD_MAX_LAYERS);
    RANGE(n_heads, 1, QD_MAX_HEADS);
    RANGE(n_kv_heads, 1, c->n_heads);
    RANGE(head_dim, 2, QD_MAX_DIM);
    RANGE(vocab_size, 1, QD_MAX_VOCAB);
    RANGE(max_seq_len, 1, QD_MAX_CTX);
    RANGE(tied_embeddings, 0, 1);
    RANGE(qkv_bias, 0, 1);
    RANGE(family, QD_FAMILY_LLAMA, QD_FAMILY_STABLELM);
    RANGE(norm, QD_NORM_RMS, QD_NORM_LAYER);
    RANGE(act, QD_ACT_SILU, QD_ACT_GELU_TANH);
    RANGE(rope_dim, 0, c->head_dim);
    RANGE(bos_id, -1, c->vocab_size - 1);
    RANGE(eos_id, -1, c->vocab_size - 1);
#undef RANGE
    if (c->n_heads % c->n_kv_heads != 0)
        return qd_errf(err, "%s: n_heads = %d is not a multiple of n_kv_heads = %d", path,
                       c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return qd_errf(err, "%s: head_dim = %d must be even for RoPE", path, c->head_dim);
    if ((long long)c->n_heads * c->head_dim > QD_MAX_DIM)
        return qd_errf(err, "%s: n_heads * head_dim = %lld exceeds %d", path,
                       (long long)c->n_heads * c->head_dim, QD_MAX_DIM);
    if (qd_rot_dim(c) % 2 != 0)
        return qd_errf(err, "%s: rotary dims = %d must be even", path, qd_rot_dim(c));
    if (!(c->emb_scale >= 0.0f && isfinite(c->emb_scale)))
        return qd_errf(err, "%s: emb_scale = %g must be finite and >= 0", path,
                       (double)c->emb_scale);
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return qd_errf(err, "%s: norm_eps = %g must be in (0, 1)", path, (double)c->norm_eps);
    if (!(c->rope_theta > 0.0f && isfinite(c->rope_theta)))
        return qd_errf(err, "%s: rope_theta = %g must be positive and finite", path,
                       (double)c->rope_theta);
    if (c->rope_scaling < QD_ROPE_NONE || c->rope_scaling > QD_ROPE_LLAMA3)
        return qd_errf(err, "%s: rope_scaling = %d unknown", path, c->rope_scaling);
    if (c->rope_scaling != QD_ROPE_NONE && !(c->rope_factor > 0.0f && isfinite(c->rope_factor)))
        return qd_errf(err, "%s: rope_scaling factor = %g must be positive and finite", path,
                       (double)c->rope_factor);
    if (c->rope_scaling == QD_ROPE_LLAMA3) {
        if (!(c->rope_low_freq_factor > 0.0f && c->rope_high_freq_factor > c->rope_low_freq_factor &&
              isfinite(c->rope_high_freq_factor)))
            return qd_errf(err, "%s: rope_scaling low_freq_factor = %g and high_freq_factor = %g "
                           "need 0 < low < high", path, (double)c->rope_low_freq_factor,
                           (double)c->rope_high_freq_factor);
        if (c->rope_orig_ctx < 1 || c->rope_orig_ctx > QD_MAX_CTX)
            return qd_errf(err, "%s: rope_scaling original_max_position_embeddings = %d out of "
                           "range [1, %d]", path, c->rope_orig_ctx, QD_MAX_CTX);
    }
    return QD_OK;
}

void qd_config_set_family(qd_config *c, int family) {
    c->family = family;
    c->norm = family == QD_FAMILY_STABLELM ? QD_NORM_LAYER : QD_NORM_RMS;
    c->act = family == QD_FAMILY_GEMMA ? QD_ACT_GELU_TANH : QD_ACT_SILU;
    snprintf(c->arch, sizeof c->arch, "%s", qd_family_name(family));
}

const char *qd_family_name(int f) {
    return f == QD_FAMILY_LLAMA ? "llama" : f == QD_FAMILY_GEMMA ? "gemma"
         : f == QD_FAMILY_STABLELM ? "stablelm" : "?";
}

const char *qd_rope_scaling_name(int s) {
    return s == QD_ROPE_LINEAR ? "linear" : s == QD_ROPE_LLAMA3 ? "llama3" : "none";
}

double qd_rope_inv_freq(const qd_config *c, int i) {
    double base = pow((double)c->rope_theta, -2.0 * i / qd_rot_dim(c));
    double k = c->rope_factor;
    if (c->rope_scaling == QD_ROPE_LINEAR) return base / k;
    if (c->rope_scaling != QD_ROPE_LLAMA3) return base;
    /* as transformers' _compute_llama3_parameters: long wavelengths are slowed by the factor,
     * short ones kept, the band between blended linearly in orig_ctx / wavelength */
    double orig = c->rope_orig_ctx, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
    double wl = 2 * M_PI / base;
    if (wl > orig / lo) return base / k;
    if (wl < orig / hi) return base;
    double smooth = (orig / wl - lo) / (hi - lo);
    return (1 - smooth) * base / k + smooth * base;
}

const qd_layer_tensor qd_layer_tensors[] = {
#define LT(gguf, hf, rows, cols, field, bias) {gguf, hf, rows, cols, offsetof(qd_layer, field), bias}
    LT("attn_norm.weight", "input_layernorm.weight", QD_DIM_VEC, QD_DIM_D, attn_norm, 0),
    LT("attn_norm.bias", "input_layernorm.bias", QD_DIM_VEC, QD_DIM_D, attn_norm_b, QD_T_NORM_BIAS),
    LT("attn_q.weight", "self_attn.q_proj.weight", QD_DIM_Q, QD_DIM_D, wq, 0),
    LT("attn_k.weight", "self_attn.k_proj.weight", QD_DIM_KV, QD_DIM_D, wk, 0),
    LT("attn_v.weight", "self_attn.v_proj.weight", QD_DIM_KV, QD_DIM_D, wv, 0),
    LT("attn_q.bias", "self_attn.q_proj.bias", QD_DIM_VEC, QD_DIM_Q, bq, QD_T_QKV_BIAS),
    LT("attn_k.bias", "self_attn.k_proj.bias", QD_DIM_VEC, QD_DIM_KV, bk, QD_T_QKV_BIAS),
    LT("attn_v.bias", "self_attn.v_proj.bias", QD_DIM_VEC, QD_DIM_KV, bv, QD_T_QKV_BIAS),
    LT("attn_output.weight", "self_attn.o_proj.weight", QD_DIM_D, QD_DIM_Q, wo, 0),
    LT("ffn_norm.weight", "post_attention_layernorm.weight", QD_DIM_VEC, QD_DIM_D, ffn_norm, 0),
    LT("ffn_norm.bias", "post_attention_layernorm.bias", QD_DIM_VEC, QD_DIM_D, ffn_norm_b, QD_T_NORM_BIAS),
    LT("ffn_gate.weight", "mlp.gate_proj.weight", QD_DIM_F, QD_DIM_D, w_gate, 0),
    LT("ffn_up.weight", "mlp.up_proj.weight", QD_DIM_F, QD_DIM_D, w_up, 0),
    LT("ffn_down.weight", "mlp.down_proj.weight", QD_DIM_D, QD_DIM_F, w_down, 0),
#undef LT
};
const int qd_n_layer_tensors = (int)(sizeof qd_layer_tensors / sizeof qd_layer_tensors[0]);

int64_t qd_layer_dim(const qd_config *c, int kind) {
    switch (kind) {
    case QD_DIM_VEC: return 0;
    case QD_DIM_D: return c->dim;
    case QD_DIM_Q: return (int64_t)c->n_heads * c->head_dim;
    case QD_DIM_KV: return (int64_t)c->n_kv_heads * c->head_dim;
    case QD_DIM_F: return c->hidden_dim;
    }
    assert(!"qd_layer_dim: unknown dims kind");
    return 0;
}

/* Walks the tensors in their fixed order: counts floats (base == NULL) or points the views
 * into base. Returns the total float count, or 0 on size_t overflow. */
static size_t layout(qd_model *m, float *base) {
    const qd_config *c = &m->cfg;
    size_t off = 0, D = (size_t)c->dim, V = (size_t)c->vocab_size;
    int overflow = 0;
#define TENSOR(slot, rows, cols)                                                     \
    do {                                                                             \
        size_t n_, pad_;                                                             \
        if (qd_mul_ok((rows), (cols), &n_)) overflow = 1;                            \
        pad_ = (n_ + QD_TENSOR_ALIGN_FLOATS - 1) / QD_TENSOR_ALIGN_FLOATS * QD_TENSOR_ALIGN_FLOATS; \
        if (base) *(slot) = base + off;                                              \
        if (__builtin_add_overflow(off, pad_, &off)) overflow = 1;                   \
    } while (0)
    TENSOR(&m->tok_emb, V, D);
    for (int l = 0; l < c->n_layers; l++) {
        /* Counting passes have no layers array yet; a scratch record takes the writes. */
        qd_layer scratch, *L = base ? &m->layers[l] : &scratch;
        for (int i = 0; i < qd_n_layer_tensors; i++) {
            const qd_layer_tensor *t = &qd_layer_tensors[i];
            if (!qd_layer_tensor_on(c, t)) {
                *qd_layer_slot(L, t) = NULL;
                continue;
            }
            size_t rows = t->rows ? (size_t)qd_layer_dim(c, t->rows) : 1;
            TENSOR(qd_layer_slot(L, t), rows, (size_t)qd_layer_dim(c, t->cols));
        }
    }
    TENSOR(&m->final_norm, 1, D);
    if (c->norm == QD_NORM_LAYER) TENSOR(&m->final_norm_b, 1, D);
    else if (base) m->final_norm_b = NULL;
    if (c->tied_embeddings) {
        if (base) m->lm_head = m->tok_emb;
    } else {
        TENSOR(&m->lm_head, V, D);
    }
#undef TENSOR
    return overflow ? 0 : off;
}

qd_model *qd_model_header(const qd_config *cfg, qd_err *err) {
    if (qd_config_validate(cfg, __func__, err) != QD_OK) return NULL;
    qd_model *m = calloc(1, sizeof *m);
    if (!m) {
        qd_errf(err, "%s: out of memory", __func__);
        return NULL;
    }
    m->cfg = *cfg;
    m->cfg.arch[sizeof m->cfg.arch - 1] = 0;
    return m;
}

qd_model *qd_model_alloc(const qd_config *cfg, qd_err *err) {
    qd_model *m = qd_model_header(cfg, err);
    if (!m) return NULL;
    size_t n = layout(m, NULL);
    size_t bytes;
    if (n == 0 || qd_mul_ok(n, sizeof(float), &bytes)) {
        qd_errf(err, "%s: model size overflows", __func__);
        free(m);
        return NULL;
    }
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    if (!m->layers || posix_memalign((void **)&m->mem, 64, bytes) != 0) {
        qd_errf(err, "%s: out of memory for %zu floats (%.1f MiB)", __func__, n,
                (double)bytes / (1 << 20));
        free(m->layers);
        free(m);
        return NULL;
    }
    memset(m->mem, 0, bytes);
    m->n_floats = n;
    layout(m, m->mem);
    return m;
}

void qd_model_free(qd_model *m) {
    if (!m) return;
    free(m->mem);
    free(m->layers);
    free(m->tinfo);
    qd_vocab_free(m->vocab);
    free(m);
}

qd_model *qd_model_clone(const qd_model *src, qd_err *err) {
    if (!src) {
        qd_errf(err, "%s: NULL model", __func__);
        return NULL;
    }
    qd_model *m = qd_model_alloc(&src->cfg, err);
    if (!m) return NULL;
    /* Same config => same layout, so the whole block copies in one go. */
    memcpy(m->mem, src->mem, m->n_floats * sizeof(float));
    memcpy(m->format, src->format, sizeof m->format);
    return m;
}

size_t qd_model_n_params(const qd_model *m) {
    if (!m) return 0;
    const qd_config *c = &m->cfg;
    size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    size_t q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    size_t per_layer = 2 * D + q * D + 2 * kv * D + D * q + 3 * F * D;
    if (c->qkv_bias) per_layer += q + 2 * kv;
    if (c->norm == QD_NORM_LAYER) per_layer += 2 * D;
    size_t n = V * D + (size_t)c->n_layers * per_layer + D * (c->norm == QD_NORM_LAYER ? 2 : 1);
    if (!c->tied_embeddings) n += V * D;
    return n;
}

void qd_config_json_shape(cJSON *o, const qd_config *c) {
    cJSON_AddStringToObject(o, "arch", c->arch);
    cJSON_AddNumberToObject(o, "dim", c->dim);
    cJSON_AddNumberToObject(o, "hidden_dim", c->hidden_dim);
    cJSON_AddNumberToObject(o, "n_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "n_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "n_kv_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "max_seq_len", c->max_seq_len);
    cJSON_AddNumberToObject(o, "norm_eps", c->norm_eps);
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
}
