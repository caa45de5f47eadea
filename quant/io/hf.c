/* Hugging Face checkpoints: config.json + model.safetensors, or shards listed by
 * model.safetensors.index.json. Reads LLaMA, Mistral and Qwen2 layouts (F32/F16/BF16) into a
 * qd_model, which already uses HF's rotate-half RoPE row order, so no permutation is needed;
 * and writes a model back in the same layout (qd_save_hf), which is also how the folded FP
 * model is exported for AIMET/QNN flows. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/model.h"
#include "quant/io/common.h"
#include "quant/io/half.h"
#include "quant/io/safetensors.h"
#include "base/fs.h"
#include "base/str.h"

#define HF_MAX_CONFIG (16u << 20)
#define HF_MAX_INDEX (64u << 20)
#define HF_MAX_SHARDS 4096

typedef struct hf {
    char dir[4096];
    char cfg_path[4200];
    cJSON *cfg;
    qd_st_file *shards[HF_MAX_SHARDS];
    int n_shards;
    const char *emb_name; /* where the embeddings are stored (see qd_load_hf) */
    qd_err *err;
} hf;

/* ---- config.json ---- */

/* An integer field: 0 found, 1 absent or null (out untouched), QD_ERR otherwise. */
static int cfg_int(hf *h, const char *key, long long lo, long long hi, long long *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(h->cfg, key);
    if (!j || cJSON_IsNull(j)) return 1;
    if (cJSON_IsArray(j)) j = j->child; /* eos_token_id may be a list: the first one counts */
    if (!j || !cJSON_IsNumber(j) || !isfinite(j->valuedouble) ||
        j->valuedouble != floor(j->valuedouble))
        return qd_errf(h->err, "%s: %s is not an integer", h->cfg_path, key);
    if (j->valuedouble < (double)lo || j->valuedouble > (double)hi)
        return qd_errf(h->err, "%s: %s = %.0f out of range [%lld, %lld]", h->cfg_path, key,
                       j->valuedouble, lo, hi);
    *out = (long long)j->valuedouble;
    return 0;
}

static int cfg_req(hf *h, const char *key, long long lo, long long hi, long long *out) {
    int rc = cfg_int(h, key, lo, hi, out);
    if (rc == 1) return qd_errf(h->err, "%s: missing %s", h->cfg_path, key);
    return rc;
}

static int cfg_num(hf *h, const cJSON *obj, const char *key, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j || cJSON_IsNull(j)) return 1;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return qd_errf(h->err, "%s: %s is not a number", h->cfg_path, key);
    *out = j->valuedouble;
    return 0;
}

static const char *cfg_str(const cJSON *obj, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* A required number inside a rope_scaling object, named as config.json nests it. */
static int rope_num(hf *h, const cJSON *obj, const char *field, const char *key, int required,
                    double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j || cJSON_IsNull(j)) {
        if (required)
            return qd_errf(h->err, "%s: %s.%s missing (needed by its rope type)", h->cfg_path,
                           field, key);
        return 1;
    }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return qd_errf(h->err, "%s: %s.%s is not a number", h->cfg_path, field, key);
    *out = j->valuedouble;
    return 0;
}

/* rope_scaling (or transformers v5's rope_parameters) into c's scaling fields: default
 * (none), linear (factor) and llama3 (factor, low_freq_factor, high_freq_factor,
 * original_max_position_embeddings); any other type is refused, naming file and field. */
static int parse_rope(hf *h, const cJSON *obj, const char *field, qd_config *c) {
    if (!obj || cJSON_IsNull(obj)) return QD_OK;
    if (!cJSON_IsObject(obj)) return qd_errf(h->err, "%s: %s is not an object", h->cfg_path, field);
    const char *t = cfg_str(obj, "rope_type");
    if (!t) t = cfg_str(obj, "type");
    double f = 1.0;
    if (!t || strcmp(t, "default") == 0) {
        int rc = rope_num(h, obj, field, "factor", 0, &f);
        if (rc < 0) return QD_ERR;
        if (rc == 0 && f != 1.0)
            return qd_errf(h->err, "%s: %s factor %g without a rope_type (only linear and llama3 "
                           "scale)", h->cfg_path, field, f);
        return QD_OK;
    }
    if (strcmp(t, "linear") == 0) {
        if (rope_num(h, obj, field, "factor", 1, &f)) return QD_ERR;
        c->rope_scaling = QD_ROPE_LINEAR;
        c->rope_factor = (float)f;
    } else if (strcmp(t, "llama3") == 0) {
        double lo, hi, orig;
        if (rope_num(h, obj, field, "factor", 1, &f) ||
            rope_num(h, obj, field, "low_freq_factor", 1, &lo) ||
            rope_num(h, obj, field, "high_freq_factor", 1, &hi) ||
            rope_num(h, obj, field, "original_max_position_embeddings", 1, &orig))
            return QD_ERR;
        if (orig != floor(orig) || orig < 1 || orig > QD_MAX_CTX)
            return qd_errf(h->err, "%s: %s.original_max_position_embeddings = %g out of range "
                           "[1, %d]", h->cfg_path, field, orig, QD_MAX_CTX);
        c->rope_scaling = QD_ROPE_LLAMA3;
        c->rope_factor = (float)f;
        c->rope_low_freq_factor = (float)lo;
        c->rope_high_freq_factor = (float)hi;
        c->rope_orig_ctx = (int)orig;
    } else {
        return qd_errf(h->err, "%s: unsupported %s type '%.32s' (quantd applies default, linear "
                       "and llama3 RoPE)", h->cfg_path, field, t);
    }
    if (!(f > 0))
        return qd_errf(h->err, "%s: %s.factor = %g must be positive", h->cfg_path, field, f);
    return QD_OK;
}

static int in_list(const char *s, const char *const *list) {
    for (; *list; list++)
        if (strcmp(s, *list) == 0) return 1;
    return 0;
}

/* model_type and architectures[0] of each family quantd reads */
static const struct {
    const char *type, *arch;
    int family;
} HF_ARCHS[] = {
    {"llama", "LlamaForCausalLM", QD_FAMILY_LLAMA},
    {"mistral", "MistralForCausalLM", QD_FAMILY_LLAMA},
    {"qwen2", "Qwen2ForCausalLM", QD_FAMILY_LLAMA},
    {"gemma", "GemmaForCausalLM", QD_FAMILY_GEMMA},
    {"stablelm", "StableLmForCausalLM", QD_FAMILY_STABLELM},
};
#define HF_N_ARCHS (int)(sizeof HF_ARCHS / sizeof HF_ARCHS[0])
#define HF_NEED_TYPES "llama, mistral, qwen2, gemma or stablelm"
#define HF_NEED_ARCHS "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM " \
                      "or StableLmForCausalLM"

/* A boolean key that must be false (or absent) because quantd has no implementation of the
 * true case. */
static int refuse_true(hf *h, const char *key, const char *why) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(h->cfg, key);
    if (cJSON_IsTrue(j))
        return qd_errf(h->err, "%s: unsupported %s = true (%s)", h->cfg_path, key, why);
    return QD_OK;
}

/* The MLP activation of a family's config, checked against what quantd implements. */
static int hf_act(hf *h, int family) {
    const cJSON *root = h->cfg;
    const char *act = cfg_str(root, "hidden_act");
    if (family != QD_FAMILY_GEMMA) {
        if (act && strcmp(act, "silu") != 0)
            return qd_errf(h->err, "%s: unsupported hidden_act '%.32s' (need silu for SwiGLU)",
                           h->cfg_path, act);
        return QD_OK;
    }
    /* Gemma: transformers reads hidden_activation and, when it is absent, uses the tanh
     * GELU whatever hidden_act says (the first configs carried hidden_act "gelu"). */
    const char *ha = cfg_str(root, "hidden_activation");
    if (ha) {
        if (strcmp(ha, "gelu_pytorch_tanh") != 0 && strcmp(ha, "gelu_new") != 0)
            return qd_errf(h->err, "%s: unsupported hidden_activation '%.32s' (need "
                           "gelu_pytorch_tanh: the tanh GELU of GeGLU)", h->cfg_path, ha);
    } else if (act && strcmp(act, "gelu") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0) {
        return qd_errf(h->err, "%s: unsupported hidden_act '%.32s' (need gelu_pytorch_tanh)",
                       h->cfg_path, act);
    }
    return QD_OK;
}

static int hf_config(hf *h, qd_config *c, int *qwen2) {
    const cJSON *root = h->cfg;
    const char *mt = cfg_str(root, "model_type");
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const char *a0 = cJSON_IsArray(archs) && cJSON_IsString(archs->child) ? archs->child->valuestring
                                                                           : NULL;
    if (!mt && !a0)
        return qd_errf(h->err, "%s: unsupported architecture: neither model_type nor "
                       "architectures is given (need " HF_NEED_TYPES ")", h->cfg_path);
    int ai = -1;
    for (int i = 0; i < HF_N_ARCHS && ai < 0; i++)
        if (mt ? strcmp(mt, HF_ARCHS[i].type) == 0 : strcmp(a0, HF_ARCHS[i].arch) == 0) ai = i;
    if (ai < 0 && mt)
        return qd_errf(h->err, "%s: unsupported architecture: model_type '%.40s' (need "
                       HF_NEED_TYPES ")", h->cfg_path, mt);
    if (ai < 0)
        return qd_errf(h->err, "%s: unsupported architecture: architectures[0] '%.60s' (need "
                       HF_NEED_ARCHS ")", h->cfg_path, a0);
    int family = HF_ARCHS[ai].family;
    *qwen2 = strcmp(HF_ARCHS[ai].type, "qwen2") == 0;
    if (hf_act(h, family)) return QD_ERR;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "mlp_bias")))
        return qd_errf(h->err, "%s: unsupported mlp_bias = true (MLP biases)", h->cfg_path);
    if (family == QD_FAMILY_STABLELM &&
        (refuse_true(h, "qk_layernorm", "per-head LayerNorms of q and k are not implemented") ||
         refuse_true(h, "use_parallel_residual",
                     "quantd implements the sequential residual of StableLM-2")))
        return QD_ERR;
    if (family == QD_FAMILY_GEMMA &&
        refuse_true(h, "attention_bias", "Gemma's attention biases include o_proj's, which "
                    "quantd's layout has no place for"))
        return QD_ERR;
    /* StableLM's default is a quarter of each head rotated; the others rotate all of it. */
    double prf = family == QD_FAMILY_STABLELM ? 0.25 : 1.0;
    int rc = cfg_num(h, root, "partial_rotary_factor", &prf);
    if (rc < 0) return QD_ERR;
    if (family != QD_FAMILY_STABLELM && prf != 1.0)
        return qd_errf(h->err, "%s: unsupported partial_rotary_factor %g (only StableLM has "
                       "partial rotary embeddings)", h->cfg_path, prf);
    if (!(prf > 0 && prf <= 1))
        return qd_errf(h->err, "%s: partial_rotary_factor = %g must be in (0, 1]", h->cfg_path,
                       prf);
    /* torch_dtype (newer transformers: dtype) says what the weights were saved in; the
     * tensors' own dtypes are what is read, but a dtype quantd cannot read is named here. */
    static const char *const DTYPES[] = {"float32", "float16", "bfloat16", "auto", NULL};
    for (int k = 0; k < 2; k++) {
        const char *f = k ? "dtype" : "torch_dtype";
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, f);
        if (!dt || cJSON_IsNull(dt)) continue;
        if (!cJSON_IsString(dt) || !in_list(dt->valuestring, DTYPES))
            return qd_errf(h->err, "%s: unsupported %s %s%.32s%s (need float32, float16 or "
                           "bfloat16)", h->cfg_path, f, cJSON_IsString(dt) ? "'" : "",
                           cJSON_IsString(dt) ? dt->valuestring : "(not a string)",
                           cJSON_IsString(dt) ? "'" : "");
    }
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (qc && !cJSON_IsNull(qc)) {
        const char *qm = cJSON_IsObject(qc) ? cfg_str(qc, "quant_method") : NULL;
        return qd_errf(h->err, "%s: unsupported quantization_config (quant_method '%.32s'): "
                       "quantd reads unquantized F32/F16/BF16 checkpoints", h->cfg_path,
                       qm ? qm : "?");
    }
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    memset(c, 0, sizeof *c);
    if (parse_rope(h, cJSON_GetObjectItemCaseSensitive(root, "rope_scaling"), "rope_scaling", c) ||
        parse_rope(h, rp, "rope_parameters", c))
        return QD_ERR;

    qd_config_set_family(c, family);
    long long dim, ff, nl, nh, nkv, hd, vs = 0, ctx = 2048, bos = -1, eos = -1;
    if (cfg_req(h, "hidden_size", 1, QD_MAX_DIM, &dim) ||
        cfg_req(h, "intermediate_size", 1, QD_MAX_DIM, &ff) ||
        cfg_req(h, "num_hidden_layers", 1, QD_MAX_LAYERS, &nl) ||
        cfg_req(h, "num_attention_heads", 1, QD_MAX_HEADS, &nh))
        return QD_ERR;
    nkv = nh;
    hd = family == QD_FAMILY_GEMMA ? 256 : dim / nh; /* GemmaConfig's default head_dim */
    if (cfg_int(h, "num_key_value_heads", 1, QD_MAX_HEADS, &nkv) < 0 ||
        cfg_int(h, "head_dim", 1, QD_MAX_DIM, &hd) < 0 ||
        cfg_req(h, "vocab_size", 1, QD_MAX_VOCAB, &vs) ||
        cfg_int(h, "max_position_embeddings", 1, QD_MAX_CTX, &ctx) < 0 ||
        cfg_int(h, "bos_token_id", -1, QD_MAX_VOCAB, &bos) < 0 ||
        cfg_int(h, "eos_token_id", -1, QD_MAX_VOCAB, &eos) < 0)
        return QD_ERR;
    /* The forward pass has no sliding-window attention: within the window it is exact, so
     * cap the context there when the window is in force (Mistral v0.1; Qwen2 opts in). */
    long long sw;
    const cJSON *usw = cJSON_GetObjectItemCaseSensitive(root, "use_sliding_window");
    int window_on = *qwen2 ? cJSON_IsTrue(usw) : !cJSON_IsFalse(usw);
    rc = cfg_int(h, "sliding_window", 1, 1LL << 40, &sw);
    if (rc < 0) return QD_ERR;
    if (rc == 0 && window_on && sw < ctx) ctx = sw;
    double eps = family == QD_FAMILY_STABLELM ? 1e-5 : 1e-6, theta = 10000.0;
    if (cfg_num(h, root, family == QD_FAMILY_STABLELM ? "layer_norm_eps" : "rms_norm_eps",
                &eps) < 0)
        return QD_ERR;
    rc = cfg_num(h, root, "rope_theta", &theta);
    if (rc < 0 || (rc == 1 && rp && cfg_num(h, rp, "rope_theta", &theta) < 0)) return QD_ERR;
    c->dim = (int)dim;
    c->hidden_dim = (int)ff;
    c->n_layers = (int)nl;
    c->n_heads = (int)nh;
    c->n_kv_heads = (int)nkv;
    c->head_dim = (int)hd;
    c->vocab_size = (int)vs;
    c->max_seq_len = (int)ctx;
    c->norm_eps = (float)eps;
    c->rope_theta = (float)theta;
    c->bos_id = (int)bos;
    c->eos_id = (int)eos;
    /* GemmaConfig ties the head by default; the others do not. */
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    c->tied_embeddings = family == QD_FAMILY_GEMMA ? !cJSON_IsFalse(tie) : cJSON_IsTrue(tie);
    c->qkv_bias = *qwen2 || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
                                root, family == QD_FAMILY_STABLELM ? "use_qkv_bias" : "attention_bias"));
    if (family == QD_FAMILY_STABLELM) {
        /* transformers: rotary_ndims = int(head_dim * partial_rotary_factor) */
        long long rot = (long long)(hd * prf);
        if (rot < 2 || rot % 2 != 0)
            return qd_errf(h->err, "%s: partial_rotary_factor %g gives %lld rotary dims of "
                           "head_dim %lld (need an even number >= 2)", h->cfg_path, prf, rot, hd);
        c->rope_dim = rot == hd ? 0 : (int)rot;
    }
    return QD_OK;
}

/* ---- weights ---- */

/* A shard file name from the index must be a plain name inside the directory. */
static int safe_name(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 &&
           strlen(s) < 256;
}

static int open_shard(hf *h, const char *file, const char *index_path, const char *tensor) {
    for (int i = 0; i < h->n_shards; i++) {
        const char *p = h->shards[i]->path, *b = strrchr(p, '/');
        if (strcmp(b ? b + 1 : p, file) == 0) return QD_OK;
    }
    if (h->n_shards >= HF_MAX_SHARDS)
        return qd_errf(h->err, "%s: more than %d shards", h->dir, HF_MAX_SHARDS);
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", h->dir, file);
    struct stat st;
    if (index_path && stat(p, &st) != 0)
        return qd_errf(h->err, "%s: weight_map['%.80s'] names shard %s, which is missing (%s)",
                       index_path, tensor, file, strerror(errno));
    qd_st_file *f = qd_st_open(p, h->err);
    if (!f) return QD_ERR;
    h->shards[h->n_shards++] = f;
    return QD_OK;
}

static int open_index(hf *h, const char *index_path) {
    size_t len;
    char *txt = qd_read_file(index_path, HF_MAX_INDEX, &len, h->err);
    if (!txt) return QD_ERR;
    cJSON *j = cJSON_ParseWithLength(txt, len);
    free(txt);
    int rc = QD_ERR;
    const cJSON *wm = j ? cJSON_GetObjectItemCaseSensitive(j, "weight_map") : NULL;
    if (!j) {
        qd_errf(h->err, "%s: not valid JSON", index_path);
    } else if (!cJSON_IsObject(wm) || !wm->child) {
        qd_errf(h->err, "%s: weight_map missing or empty", index_path);
    } else {
        rc = QD_OK;
        for (const cJSON *e = wm->child; e && rc == QD_OK; e = e->next) {
            if (!cJSON_IsString(e) || !safe_name(e->valuestring))
                rc = qd_errf(h->err, "%s: weight_map['%.80s'] is not a plain file name",
                             index_path, e->string);
            else
                rc = open_shard(h, e->valuestring, index_path, e->string);
        }
    }
    cJSON_Delete(j);
    return rc;
}

static const qd_st_tensor *find(hf *h, const char *name) {
    for (int i = 0; i < h->n_shards; i++) {
        const qd_st_tensor *t = qd_st_find(h->shards[i], name);
        if (t) return t;
    }
    return NULL;
}

static const char *shard_of(hf *h, const qd_st_tensor *t) {
    for (int i = 0; i < h->n_shards; i++)
        if (t >= h->shards[i]->tensors && t < h->shards[i]->tensors + h->shards[i]->n_tensors)
            return h->shards[i]->path;
    return h->dir;
}

/* Checks tensor name has shape (rows, cols) (rows == 0: a vector) and a float dtype, and when
 * dst is given converts it. */
static int take(hf *h, const char *name, int64_t rows, int64_t cols, float *dst, int check) {
    const qd_st_tensor *t = find(h, name);
    if (!t) return qd_errf(h->err, "%s: missing tensor %s", h->dir, name);
    const char *p = shard_of(h, t);
    int src;
    switch (t->dtype) {
    case QD_ST_F32: src = QD_SRC_F32; break;
    case QD_ST_F16: src = QD_SRC_F16; break;
    case QD_ST_BF16: src = QD_SRC_BF16; break;
    default:
        return qd_errf(h->err, "%s: tensor %s: unsupported dtype %s (need F32, F16 or BF16)", p,
                       name, qd_st_dtype_name(t->dtype));
    }
    int ok = rows ? t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols
                  : t->ndim == 1 && t->shape[0] == cols;
    if (!ok) {
        char got[128];
        int k = snprintf(got, sizeof got, "[");
        for (int d = 0; d < t->ndim && k < 100; d++)
            k += snprintf(got + k, sizeof got - (size_t)k, "%s%lld", d ? ", " : "",
                          (long long)t->shape[d]);
        snprintf(got + k, sizeof got - (size_t)k, "]");
        if (rows)
            return qd_errf(h->err, "%s: tensor %s: shape %s, expected [%lld, %lld]", p, name, got,
                           (long long)rows, (long long)cols);
        return qd_errf(h->err, "%s: tensor %s: shape %s, expected [%lld]", p, name, got,
                       (long long)cols);
    }
    if (check) return QD_OK;
    return qd_convert_f32(dst, t->data, src, (size_t)t->n_elems, p, name, h->err);
}

static int hf_weights(hf *h, qd_model *m, const qd_config *c) {
    int ck = m == NULL;
    int64_t D = c->dim, V = c->vocab_size;
    char n[128];
    if (take(h, h->emb_name, V, D, m ? m->tok_emb : NULL, ck) ||
        take(h, "model.norm.weight", 0, D, m ? m->final_norm : NULL, ck) ||
        (c->norm == QD_NORM_LAYER &&
         take(h, "model.norm.bias", 0, D, m ? m->final_norm_b : NULL, ck)))
        return QD_ERR;
    if (!c->tied_embeddings && !find(h, "lm_head.weight"))
        return qd_errf(h->err, "%s: missing tensor lm_head.weight (%s has tie_word_embeddings "
                       "false or absent, so the LM head is not the embedding matrix)", h->dir,
                       h->cfg_path);
    if (!c->tied_embeddings && take(h, "lm_head.weight", V, D, m ? m->lm_head : NULL, ck))
        return QD_ERR;
    for (int l = 0; l < c->n_layers; l++) {
        qd_layer *L = m ? &m->layers[l] : NULL;
        for (int i = 0; i < qd_n_layer_tensors; i++) {
            const qd_layer_tensor *t = &qd_layer_tensors[i];
            if (!qd_layer_tensor_on(c, t)) continue;
            snprintf(n, sizeof n, "model.layers.%d.%s", l, t->hf);
            if (take(h, n, qd_layer_dim(c, t->rows), qd_layer_dim(c, t->cols),
                     L ? *qd_layer_slot(L, t) : NULL, ck))
                return QD_ERR;
        }
        if (ck) {
            /* Biases the model has no place for would be silently dropped: refuse them. */
            static const char *const EXTRA[] = {"self_attn.o_proj.bias", "mlp.gate_proj.bias",
                                                "mlp.up_proj.bias", "mlp.down_proj.bias", NULL};
            for (int e = 0; EXTRA[e]; e++) {
                snprintf(n, sizeof n, "model.layers.%d.%s", l, EXTRA[e]);
                if (find(h, n))
                    return qd_errf(h->err, "%s: unsupported tensor %s (this bias is not part of "
                                   "the %s layout)", h->dir, n, c->arch);
            }
        }
    }
    return QD_OK;
}

/* Gemma's RMSNorms multiply by (1 + w) in FP32: the model keeps the multiplier (model.h).
 * Its embedding scale is sqrt(hidden_size) as a tensor of the embeddings' dtype, so a BF16
 * checkpoint scales by bf16(sqrt(2048)) = 45.25. */
/* Gemma's embedding scale, sqrt(hidden) rounded to the embedding's dtype as transformers does:
 * part of the config, so qd_model_probe sets it too. */
static void gemma_emb_scale(hf *h, qd_model *m) {
    const qd_config *c = &m->cfg;
    float s = sqrtf((float)c->dim);
    const qd_st_tensor *e = find(h, h->emb_name);
    if (e && e->dtype == QD_ST_BF16) s = qd_bf16_to_f32(qd_f32_to_bf16(s));
    if (e && e->dtype == QD_ST_F16) s = qd_fp16_to_f32(qd_f32_to_fp16(s));
    m->cfg.emb_scale = s;
}

static void gemma_fixup(hf *h, qd_model *m) {
    const qd_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < c->dim; i++) {
            m->layers[l].attn_norm[i] += 1.0f;
            m->layers[l].ffn_norm[i] += 1.0f;
        }
    for (int i = 0; i < c->dim; i++) m->final_norm[i] += 1.0f;
    gemma_emb_scale(h, m);
}

static void hf_close(hf *h) {
    cJSON_Delete(h->cfg);
    for (int i = 0; i < h->n_shards; i++) qd_st_close(h->shards[i]);
    free(h);
}

qd_model *qd_load_hf(const char *path, int header_only, qd_err *err) {
    hf *h = calloc(1, sizeof *h);
    if (!h) {
        qd_errf(err, "%s: out of memory", path);
        return NULL;
    }
    h->err = err;
    qd_model *m = NULL;
    struct stat st;
    if (strlen(path) >= sizeof h->dir - 64) {
        qd_errf(err, "%s: path too long", path);
        goto fail;
    }
    if (stat(path, &st) != 0) {
        qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    const char *weights = NULL; /* a specific .safetensors file named by the caller */
    snprintf(h->dir, sizeof h->dir, "%s", path);
    if (!S_ISDIR(st.st_mode)) {
        char *slash = strrchr(h->dir, '/');
        if (slash) *slash = 0;
        else snprintf(h->dir, sizeof h->dir, ".");
        if (qd_has_ext(path, ".safetensors")) weights = path;
    }
    size_t dl = strlen(h->dir);
    while (dl > 1 && h->dir[dl - 1] == '/') h->dir[--dl] = 0;
    snprintf(h->cfg_path, sizeof h->cfg_path, "%s/config.json", h->dir);
    size_t len;
    char *txt = qd_read_file(h->cfg_path, HF_MAX_CONFIG, &len, err);
    if (!txt) goto fail;
    h->cfg = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!cJSON_IsObject(h->cfg)) {
        qd_errf(err, "%s: not a valid JSON object", h->cfg_path);
        goto fail;
    }
    qd_config c;
    int qwen2 = 0;
    if (hf_config(h, &c, &qwen2)) goto fail;

    char p[4400];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", h->dir);
    if (weights) {
        qd_st_file *f = qd_st_open(weights, err);
        if (!f) goto fail;
        h->shards[h->n_shards++] = f;
    } else if (stat(p, &st) == 0) {
        if (open_index(h, p)) goto fail;
    } else {
        snprintf(p, sizeof p, "%s/model.safetensors", h->dir);
        qd_st_file *f = qd_st_open(p, err);
        if (!f) goto fail;
        h->shards[h->n_shards++] = f;
    }
    /* Tied weights are one matrix under two names, and transformers saves it under either:
     * model.embed_tokens.weight, or (when the head was the module it kept) lm_head.weight. */
    h->emb_name = "model.embed_tokens.weight";
    if (c.tied_embeddings && !find(h, h->emb_name) && find(h, "lm_head.weight"))
        h->emb_name = "lm_head.weight";
    /* A checkpoint may carry biases its config does not announce (older Qwen2 exports). */
    if (find(h, "model.layers.0.self_attn.q_proj.bias")) c.qkv_bias = 1;
    if (qd_config_validate(&c, h->cfg_path, err) || hf_weights(h, NULL, &c)) goto fail;
    if (!(m = header_only ? qd_model_header(&c, err) : qd_model_alloc(&c, err))) goto fail;
    snprintf(m->format, sizeof m->format, "safetensors");
    if (!header_only && hf_weights(h, m, &c)) goto fail;
    if (c.family == QD_FAMILY_GEMMA) {
        if (header_only) gemma_emb_scale(h, m);
        else gemma_fixup(h, m);
    }
    for (int s = 0; s < h->n_shards; s++)
        for (int i = 0; i < h->shards[s]->n_tensors; i++) {
            const qd_st_tensor *t = &h->shards[s]->tensors[i];
            if (qd_tinfo_add(m, t->name, qd_st_dtype_name(t->dtype), t->ndim, t->shape, t->nbytes,
                             err))
                goto fail;
        }
    hf_close(h);
    return m;
fail:
    qd_model_free(m);
    hf_close(h);
    return NULL;
}

/* ---- writer ---- */

/* The shortest decimal that reads back as the same float, so 1e-5f is written "1e-05". */
static void add_float(cJSON *o, const char *key, float v) {
    char b[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, (double)v);
        if ((float)strtod(b, NULL) == v) break;
    }
    cJSON_AddRawToObject(o, key, b);
}

/* Prints o into dir/name atomically, with a trailing newline; deletes o either way. */
static int write_json(const char *dir, const char *name, cJSON *o, qd_err *err) {
    char *txt = cJSON_Print(o);
    cJSON_Delete(o);
    if (!txt) return qd_errf(err, "%s: out of memory", dir);
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int rc = qd_write_text_atomic(p, txt, err);
    free(txt);
    return rc;
}

static int write_config(const qd_model *m, const char *dir, const char *dtype, qd_err *err) {
    const qd_config *c = &m->cfg;
    cJSON *o = cJSON_CreateObject();
    if (!o) return qd_errf(err, "%s: out of memory", dir);
    int fam = c->family;
    const char *arch = fam == QD_FAMILY_GEMMA      ? "GemmaForCausalLM"
                     : fam == QD_FAMILY_STABLELM ? "StableLmForCausalLM"
                     : c->qkv_bias               ? "Qwen2ForCausalLM"
                                                 : "LlamaForCausalLM";
    const char *type = fam == QD_FAMILY_LLAMA ? (c->qkv_bias ? "qwen2" : "llama") : c->arch;
    cJSON *a = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(arch));
    cJSON_AddStringToObject(o, "model_type", type);
    cJSON_AddNumberToObject(o, "hidden_size", c->dim);
    cJSON_AddNumberToObject(o, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_seq_len);
    add_float(o, c->norm == QD_NORM_LAYER ? "layer_norm_eps" : "rms_norm_eps", c->norm_eps);
    add_float(o, "rope_theta", c->rope_theta);
    if (fam == QD_FAMILY_STABLELM) {
        /* transformers takes int(head_dim * factor) rotary dims: the factor written must give
         * rot back exactly */
        int rot = qd_rot_dim(c);
        double f = (double)rot / c->head_dim;
        while ((long long)(c->head_dim * f) < rot) f = nextafter(f, 2.0);
        char b[40];
        snprintf(b, sizeof b, "%.17g", f);
        cJSON_AddRawToObject(o, "partial_rotary_factor", b);
        cJSON_AddBoolToObject(o, "use_qkv_bias", c->qkv_bias);
        cJSON_AddBoolToObject(o, "qk_layernorm", 0);
        cJSON_AddBoolToObject(o, "use_parallel_residual", 0);
    }
    if (c->rope_scaling == QD_ROPE_NONE) {
        cJSON_AddNullToObject(o, "rope_scaling");
    } else {
        cJSON *rs = cJSON_AddObjectToObject(o, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", qd_rope_scaling_name(c->rope_scaling));
        add_float(rs, "factor", c->rope_factor);
        if (c->rope_scaling == QD_ROPE_LLAMA3) {
            add_float(rs, "low_freq_factor", c->rope_low_freq_factor);
            add_float(rs, "high_freq_factor", c->rope_high_freq_factor);
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->rope_orig_ctx);
        }
    }
    if (c->act == QD_ACT_GELU_TANH) {
        cJSON_AddStringToObject(o, "hidden_act", "gelu_pytorch_tanh");
        cJSON_AddStringToObject(o, "hidden_activation", "gelu_pytorch_tanh");
    } else {
        cJSON_AddStringToObject(o, "hidden_act", "silu");
    }
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tied_embeddings);
    if (c->bos_id >= 0) cJSON_AddNumberToObject(o, "bos_token_id", c->bos_id);
    else cJSON_AddNullToObject(o, "bos_token_id");
    if (c->eos_id >= 0) cJSON_AddNumberToObject(o, "eos_token_id", c->eos_id);
    else cJSON_AddNullToObject(o, "eos_token_id");
    if (fam == QD_FAMILY_STABLELM) {
    } else if (!c->qkv_bias) {
        cJSON_AddBoolToObject(o, "attention_bias", 0);
    } else {
        cJSON_AddBoolToObject(o, "use_sliding_window", 0);
    }
    cJSON_AddBoolToObject(o, "mlp_bias", 0);
    cJSON_AddStringToObject(o, "torch_dtype", strcmp(dtype, "F32") == 0   ? "float32"
                                              : strcmp(dtype, "F16") == 0 ? "float16"
                                                                          : "bfloat16");
    return write_json(dir, "config.json", o, err);
}

static const float *minus_one(float *dst, const float *w, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = w[i] - 1.0f;
    return dst;
}

/* The model's tensors in HF names and order; returns the count written into t (and the
 * name storage in names, 128 bytes each). Gemma's norms are written as HF stores them, w - 1
 * (model.h), from gnorm ((2 n_layers + 1) * dim floats, filled here; NULL for other families). */
static int hf_tensor_list(const qd_model *m, qd_st_dtype dt, qd_st_wtensor *t, char (*names)[128],
                          float *gnorm) {
    const qd_config *c = &m->cfg;
    int64_t D = c->dim, V = c->vocab_size;
    int n = 0;
#define ADD(rows, cols, ptr, ...)                                                    \
    do {                                                                             \
        snprintf(names[n], 128, __VA_ARGS__);                                        \
        t[n] = (qd_st_wtensor){.name = names[n], .dtype = dt, .f32 = (ptr)};         \
        if (rows) {                                                                  \
            t[n].ndim = 2;                                                           \
            t[n].shape[0] = (rows);                                                  \
            t[n].shape[1] = (cols);                                                  \
        } else {                                                                     \
            t[n].ndim = 1;                                                           \
            t[n].shape[0] = (cols);                                                  \
        }                                                                            \
        n++;                                                                         \
    } while (0)
    /* a norm weight as written: Gemma's minus its 1, into the next dim floats of gnorm */
#define NORM_W(w) (gnorm ? minus_one(gnorm + (size_t)(gi++) * D, (w), D) : (w))
    int gi = 0;
    ADD(V, D, m->tok_emb, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers; l++) {
        const qd_layer *L = &m->layers[l];
        for (int i = 0; i < qd_n_layer_tensors; i++) {
            const qd_layer_tensor *lt = &qd_layer_tensors[i];
            if (!qd_layer_tensor_on(c, lt)) continue;
            const float *w = qd_layer_get(L, lt);
            if (w == L->attn_norm || w == L->ffn_norm) w = NORM_W(w);
            ADD(qd_layer_dim(c, lt->rows), qd_layer_dim(c, lt->cols), w, "model.layers.%d.%s", l,
                lt->hf);
        }
    }
    ADD(0, D, NORM_W(m->final_norm), "model.norm.weight");
    if (m->final_norm_b) ADD(0, D, m->final_norm_b, "model.norm.bias");
#undef NORM_W
    if (!c->tied_embeddings) ADD(V, D, m->lm_head, "lm_head.weight");
#undef ADD
    return n;
}

static size_t wt_bytes(const qd_st_wtensor *t) {
    size_t n = qd_st_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

static int write_index(const char *dir, const qd_st_wtensor *t, int n, const int *shard_of,
                       int n_shards, size_t total, qd_err *err) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return qd_errf(err, "%s: out of memory", dir);
    cJSON *meta = cJSON_AddObjectToObject(o, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *wm = cJSON_AddObjectToObject(o, "weight_map");
    char f[64];
    for (int i = 0; i < n; i++) {
        snprintf(f, sizeof f, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, n_shards);
        cJSON_AddStringToObject(wm, t[i].name, f);
    }
    return write_json(dir, "model.safetensors.index.json", o, err);
}

int qd_save_hf_sharded(const qd_model *m, const char *dir, const char *dtype,
                       size_t max_shard_bytes, qd_err *err) {
    qd_st_dtype dt;
    if (!m || !dir || !dtype) return qd_errf(err, "%s: NULL argument", __func__);
    if (qd_st_dtype_parse(dtype, &dt) || (dt != QD_ST_F32 && dt != QD_ST_F16 && dt != QD_ST_BF16))
        return qd_errf(err, "%s: dtype '%s' unsupported (F32, F16 or BF16)", __func__, dtype);
    if (strlen(dir) > 4000) return qd_errf(err, "%s: path too long", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return qd_errf(err, "%s: cannot create directory: %s", dir, strerror(errno));
    int cap = 4 + qd_n_layer_tensors * m->cfg.n_layers;
    qd_st_wtensor *t = calloc((size_t)cap, sizeof *t);
    char (*names)[128] = calloc((size_t)cap, sizeof *names);
    int *shard = calloc((size_t)cap, sizeof *shard);
    float *gnorm = m->cfg.family == QD_FAMILY_GEMMA
                       ? malloc((2 * (size_t)m->cfg.n_layers + 1) * m->cfg.dim * sizeof(float))
                       : NULL;
    int rc = QD_ERR;
    if (!t || !names || !shard || (m->cfg.family == QD_FAMILY_GEMMA && !gnorm)) {
        qd_errf(err, "%s: out of memory", dir);
        goto out;
    }
    int n = hf_tensor_list(m, dt, t, names, gnorm);
    char p[4200];
    if (max_shard_bytes == 0) {
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        const char *meta[] = {"format", "pt", NULL};
        if (qd_st_write(p, t, n, meta, err)) goto out;
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        unlink(p); /* a stale index would shadow the new file on load */
    } else {
        /* Greedy packing in order; a tensor over the limit gets a shard of its own. */
        int ns = 0;
        size_t cur = 0, total = 0;
        for (int i = 0; i < n; i++) {
            size_t b = wt_bytes(&t[i]);
            if (i > 0 && cur + b > max_shard_bytes) {
                ns++;
                cur = 0;
            }
            shard[i] = ns;
            cur += b;
            total += b;
        }
        ns++;
        const char *meta[] = {"format", "pt", NULL};
        for (int s = 0, i = 0; s < ns; s++) {
            int j = i;
            while (j < n && shard[j] == s) j++;
            snprintf(p, sizeof p, "%s/model-%05d-of-%05d.safetensors", dir, s + 1, ns);
            if (qd_st_write(p, t + i, j - i, meta, err)) goto out;
            i = j;
        }
        if (write_index(dir, t, n, shard, ns, total, err)) goto out;
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        unlink(p); /* the index wins on load anyway; don't leave a second copy behind */
    }
    rc = write_config(m, dir, dtype, err);
out:
    free(t);
    free(names);
    free(shard);
    free(gnorm);
    return rc;
}

int qd_save_hf(const qd_model *m, const char *dir, const char *dtype, qd_err *err) {
    return qd_save_hf_sharded(m, dir, dtype, 0, err);
}
