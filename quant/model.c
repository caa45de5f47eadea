/* The in-memory model: config validation, the single-allocation tensor layout, clone and free,
 * format detection for qd_model_load, and the helpers every reader shares (file mapping,
 * conversion to FP32 with the NaN/Inf check, RoPE row permutation, tensor descriptions). */
#include "quant/model.h"

#include <assert.h>
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

#include "quant/half.h"
#include "quant/model_io.h"
#include "quant/tokenizer.h"

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
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return qd_errf(err, "%s: norm_eps = %g must be in (0, 1)", path, (double)c->norm_eps);
    if (!(c->rope_theta > 0.0f && isfinite(c->rope_theta)))
        return qd_errf(err, "%s: rope_theta = %g must be positive and finite", path,
                       (double)c->rope_theta);
    return QD_OK;
}

const qd_layer_tensor qd_layer_tensors[] = {
#define LT(gguf, hf, rows, cols, field, bias) {gguf, hf, rows, cols, offsetof(qd_layer, field), bias}
    LT("attn_norm.weight", "input_layernorm.weight", QD_DIM_VEC, QD_DIM_D, attn_norm, 0),
    LT("attn_q.weight", "self_attn.q_proj.weight", QD_DIM_Q, QD_DIM_D, wq, 0),
    LT("attn_k.weight", "self_attn.k_proj.weight", QD_DIM_KV, QD_DIM_D, wk, 0),
    LT("attn_v.weight", "self_attn.v_proj.weight", QD_DIM_KV, QD_DIM_D, wv, 0),
    LT("attn_q.bias", "self_attn.q_proj.bias", QD_DIM_VEC, QD_DIM_Q, bq, 1),
    LT("attn_k.bias", "self_attn.k_proj.bias", QD_DIM_VEC, QD_DIM_KV, bk, 1),
    LT("attn_v.bias", "self_attn.v_proj.bias", QD_DIM_VEC, QD_DIM_KV, bv, 1),
    LT("attn_output.weight", "self_attn.o_proj.weight", QD_DIM_D, QD_DIM_Q, wo, 0),
    LT("ffn_norm.weight", "post_attention_layernorm.weight", QD_DIM_VEC, QD_DIM_D, ffn_norm, 0),
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
    if (c->tied_embeddings) {
        if (base) m->lm_head = m->tok_emb;
    } else {
        TENSOR(&m->lm_head, V, D);
    }
#undef TENSOR
    return overflow ? 0 : off;
}

qd_model *qd_model_alloc(const qd_config *cfg, qd_err *err) {
    if (qd_config_validate(cfg, __func__, err) != QD_OK) return NULL;
    qd_model *m = calloc(1, sizeof *m);
    if (!m) {
        qd_errf(err, "%s: out of memory", __func__);
        return NULL;
    }
    m->cfg = *cfg;
    m->cfg.arch[sizeof m->cfg.arch - 1] = 0;
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
    size_t n = V * D + (size_t)c->n_layers * per_layer + D;
    if (!c->tied_embeddings) n += V * D;
    return n;
}

/* ---- format detection ---- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

qd_model *qd_model_load(const char *path, qd_err *err) {
    if (!path || !*path) {
        qd_errf(err, "%s: empty path", __func__);
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) return qd_load_hf(path, err);
    if (ends_with(path, ".json") || ends_with(path, ".safetensors")) return qd_load_hf(path, err);
    if (ends_with(path, ".gguf")) return qd_load_gguf(path, err);
    /* No telling suffix: look at the content. */
    unsigned char head[9] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) {
        qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (got >= 4 && memcmp(head, "GGUF", 4) == 0) return qd_load_gguf(path, err);
    if (got == 9 && head[8] == '{') return qd_load_hf(path, err); /* safetensors header */
    return qd_load_llama2c(path, err);
}

/* ---- helpers shared by the readers (model_io.h) ---- */

int qd_map_open(qd_map *m, const char *path, qd_err *err) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qd_errf(err, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return QD_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return qd_errf(err, "%s: mmap failed: %s", path, strerror(errno));
    m->data = p;
    m->size = (size_t)st.st_size;
    return QD_OK;
}

void qd_map_close(qd_map *m) {
    if (m->data) munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

int qd_convert_f32(float *dst, const void *src, int src_type, size_t n, const char *path,
                   const char *tensor, qd_err *err) {
    const uint8_t *s = src;
    switch (src_type) {
    case QD_SRC_F32:
        memcpy(dst, s, n * sizeof(float));
        break;
    case QD_SRC_F16:
    case QD_SRC_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(s[2 * i] | s[2 * i + 1] << 8);
            dst[i] = src_type == QD_SRC_F16 ? qd_fp16_to_f32(h) : qd_bf16_to_f32(h);
        }
        break;
    default:
        return qd_errf(err, "%s: tensor %s: internal: unknown source type %d", path, tensor,
                       src_type);
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return qd_errf(err, "%s: tensor %s: element %zu is %s", path, tensor, i,
                           isnan(dst[i]) ? "NaN" : "Inf");
    return QD_OK;
}

int qd_permute_rope_rows(float *w, int n_heads, int head_dim, size_t cols, qd_err *err) {
    size_t head_floats = (size_t)head_dim * cols;
    float *tmp = malloc(head_floats * sizeof(float));
    if (!tmp) return qd_errf(err, "%s: out of memory", __func__);
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *W = w + (size_t)h * head_floats;
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(tmp + (size_t)(j * half + i) * cols, W + (size_t)(2 * i + j) * cols,
                       cols * sizeof(float));
        memcpy(W, tmp, head_floats * sizeof(float));
    }
    free(tmp);
    return QD_OK;
}

int qd_tinfo_add(qd_model *m, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, size_t bytes, qd_err *err) {
    /* Capacity is implicit: 16, then doubled whenever the count reaches a power of two. */
    int n = m->n_tinfo;
    if (n == 0 || (n >= 16 && (n & (n - 1)) == 0)) {
        size_t cap = n == 0 ? 16 : (size_t)n * 2;
        qd_tensor_info *t = realloc(m->tinfo, cap * sizeof *t);
        if (!t) return qd_errf(err, "%s: out of memory", __func__);
        m->tinfo = t;
    }
    qd_tensor_info *t = &m->tinfo[m->n_tinfo++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->ndim = ndim > 4 ? 4 : ndim;
    for (int i = 0; i < t->ndim; i++) t->shape[i] = shape[i];
    t->bytes = bytes;
    return QD_OK;
}
