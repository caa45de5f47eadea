/* The one in-memory representation of a decoder model of the LLaMA, Gemma or StableLM-2 family:
 * a config plus FP32 tensors that live in a single allocation, with named views into it. Every reader (GGUF, Hugging Face
 * safetensors, llama2.c) produces this; everything downstream consumes only this.
 *
 * Conventions (fixed here, relied on everywhere):
 *  - Linear weights are row-major [out][in] (y = W x), as PyTorch and GGUF store them.
 *  - q and k rows use the Hugging Face rotate-half RoPE layout: within a head, element i pairs
 *    with i + head_dim/2. Readers of interleaved formats (GGUF, llama2.c) permute at load.
 *  - lm_head points at tok_emb when the embeddings are tied (cfg.tied_embeddings).
 *  - Norm weights are the multiplier itself. Gemma's RMSNorm multiplies by (1 + w): the HF
 *    reader adds the 1 at load (in FP32, as transformers computes it) and the HF writer
 *    subtracts it again; GGUF already stores 1 + w (llama.cpp's converter adds it).
 *  - Gemma's embedding scale is cfg.emb_scale, applied to the looked-up rows only (the tied LM
 *    head uses the unscaled matrix). */
#ifndef QD_MODEL_H
#define QD_MODEL_H

#include "base/err.h"

struct qd_vocab;

/* Bounds applied to every count read from a file before it is used. */
#define QD_MAX_LAYERS 512
#define QD_MAX_DIM (1 << 16)
#define QD_MAX_VOCAB (1 << 20)
#define QD_MAX_HEADS 1024
#define QD_MAX_CTX (1 << 20)

/* Model families (cfg.family) and the per-family switches they set (qd_config_set_family). */
enum { QD_FAMILY_LLAMA = 0, QD_FAMILY_GEMMA = 1, QD_FAMILY_STABLELM = 2 };
enum { QD_NORM_RMS = 0, QD_NORM_LAYER = 1 };     /* RMSNorm; LayerNorm with bias */
enum { QD_ACT_SILU = 0, QD_ACT_GELU_TANH = 1 };  /* SwiGLU; GeGLU with tanh GELU */

typedef struct qd_config {
    char arch[32];         /* the family's name, qd_family_name(family) */
    int family;            /* QD_FAMILY_*: llama (also Mistral, Qwen2), gemma, stablelm */
    int norm;              /* QD_NORM_*: every norm of the model */
    int act;               /* QD_ACT_*: the gated MLP's activation */
    int rope_dim;          /* rotated dims per head (even, <= head_dim; StableLM's partial
                            * rotary); 0 = all of head_dim. See qd_rot_dim. */
    float emb_scale;       /* multiplier of the embedding rows (Gemma: sqrt(dim) in the
                            * checkpoint's dtype); 0 = none. See qd_emb_scale. */
    int dim;               /* hidden size */
    int hidden_dim;        /* FFN size */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int vocab_size;
    int max_seq_len;
    float norm_eps;
    float rope_theta;
    /* RoPE frequency scaling (qd_rope_inv_freq applies it; every RoPE table is built from
     * those frequencies): QD_ROPE_NONE; QD_ROPE_LINEAR (position interpolation: every
     * frequency / rope_factor); QD_ROPE_LLAMA3 (Llama 3.1: wavelengths above
     * rope_orig_ctx / rope_low_freq_factor divided by rope_factor, below rope_orig_ctx /
     * rope_high_freq_factor kept, smoothly interpolated between). */
    int rope_scaling;
    float rope_factor;
    float rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_ctx;
    int tied_embeddings;   /* lm_head shares tok_emb */
    int qkv_bias;          /* q/k/v projections carry biases (Qwen2) */
    int bos_id, eos_id;    /* -1 when unknown */
} qd_config;

typedef struct qd_layer {
    float *attn_norm;      /* (dim) */
    float *attn_norm_b;    /* (dim) LayerNorm bias or NULL */
    float *wq;             /* (n_heads*head_dim, dim) */
    float *wk;             /* (n_kv_heads*head_dim, dim) */
    float *wv;             /* (n_kv_heads*head_dim, dim) */
    float *bq, *bk, *bv;   /* biases or NULL */
    float *wo;             /* (dim, n_heads*head_dim) */
    float *ffn_norm;       /* (dim) */
    float *ffn_norm_b;     /* (dim) LayerNorm bias or NULL */
    float *w_gate;         /* (hidden_dim, dim) */
    float *w_up;           /* (hidden_dim, dim) */
    float *w_down;         /* (dim, hidden_dim) */
} qd_layer;

/* What the source file held for one tensor (for `quantd inspect`). */
typedef struct qd_tensor_info {
    char name[96];
    char dtype[8];         /* "F32", "F16", "BF16", or a GGUF block type ("Q4_K", ...) */
    int ndim;
    int64_t shape[4];      /* outermost first, as PyTorch prints it */
    size_t bytes;          /* bytes in the source file */
} qd_tensor_info;

typedef struct qd_model {
    qd_config cfg;
    float *mem;            /* the single allocation holding every tensor */
    size_t n_floats;       /* floats in mem */
    float *tok_emb;        /* (vocab_size, dim) */
    qd_layer *layers;      /* n_layers */
    float *final_norm;     /* (dim) */
    float *final_norm_b;   /* (dim) LayerNorm bias or NULL */
    float *lm_head;        /* (vocab_size, dim); == tok_emb when tied */
    struct qd_vocab *vocab;/* vocabulary carried by the checkpoint (GGUF), or NULL */
    char format[16];       /* "gguf", "safetensors", "llama2c" */
    qd_tensor_info *tinfo; /* n_tinfo entries describing the source tensors */
    int n_tinfo;
} qd_model;

enum { QD_ROPE_NONE = 0, QD_ROPE_LINEAR = 1, QD_ROPE_LLAMA3 = 2 };

/* Sets c's family, arch name and the switches the family implies (norm, act). */
void qd_config_set_family(qd_config *c, int family);

/* "llama", "gemma", "stablelm" ("?" when unknown). */
const char *qd_family_name(int family);

/* Rotated dims per head (rope_dim, or head_dim when 0). */
static inline int qd_rot_dim(const qd_config *c) { return c->rope_dim ? c->rope_dim : c->head_dim; }

/* The embedding multiplier (emb_scale, or 1 when 0). */
static inline float qd_emb_scale(const qd_config *c) { return c->emb_scale != 0 ? c->emb_scale : 1.0f; }

/* Name of a rope_scaling value: "none", "linear", "llama3". */
const char *qd_rope_scaling_name(int scaling);

/* The RoPE inverse frequency of pair i (0 <= i < rot/2, rot = qd_rot_dim) of c: theta^(-2i/rot),
 * scaled as c->rope_scaling says. Pair i of a head rotates by position * qd_rope_inv_freq. */
double qd_rope_inv_freq(const qd_config *c, int i);

/* Checks a config for consistency and bounds; QD_ERR with err naming the field. */
int qd_config_validate(const qd_config *cfg, const char *path, qd_err *err);

/* Allocates a zeroed model for cfg with every tensor carved out of one allocation.
 * NULL on failure. Free with qd_model_free. */
qd_model *qd_model_alloc(const qd_config *cfg, qd_err *err);

/* Dimension kinds for qd_layer_tensors; qd_layer_dim maps one to its size for a config. */
enum { QD_DIM_VEC = 0, QD_DIM_D, QD_DIM_Q, QD_DIM_KV, QD_DIM_F };

/* One tensor of a decoder layer, the single list every reader, writer and the allocator walk:
 * GGUF and Hugging Face name suffixes (after "blk.%d." / "model.layers.%d."), shape as
 * (rows, cols) dims kinds with rows == QD_DIM_VEC for a vector of cols, the qd_layer field at
 * offset, and when the tensor exists (QD_T_*). Order is file order. */
enum { QD_T_ALWAYS = 0, QD_T_QKV_BIAS = 1, QD_T_NORM_BIAS = 2 };
typedef struct qd_layer_tensor {
    const char *gguf, *hf;
    int rows, cols;
    size_t offset; /* offsetof(qd_layer, field) */
    int when;      /* QD_T_ALWAYS; QD_T_QKV_BIAS: with cfg.qkv_bias; QD_T_NORM_BIAS: LayerNorm */
} qd_layer_tensor;

extern const qd_layer_tensor qd_layer_tensors[];
extern const int qd_n_layer_tensors;

/* The size of dims kind for c (dim, n_heads*head_dim, n_kv_heads*head_dim, hidden_dim), 0 for
 * QD_DIM_VEC. */
int64_t qd_layer_dim(const qd_config *c, int kind);

/* Whether tensor t is present in a model with config c. */
static inline int qd_layer_tensor_on(const qd_config *c, const qd_layer_tensor *t) {
    return t->when == QD_T_ALWAYS || (t->when == QD_T_QKV_BIAS && c->qkv_bias) ||
           (t->when == QD_T_NORM_BIAS && c->norm == QD_NORM_LAYER);
}

/* The qd_layer field that tensor t describes. */
static inline float **qd_layer_slot(qd_layer *L, const qd_layer_tensor *t) {
    return (float **)(void *)((char *)L + t->offset);
}
static inline const float *qd_layer_get(const qd_layer *L, const qd_layer_tensor *t) {
    return *(float *const *)(const void *)((const char *)L + t->offset);
}

/* A model with config cfg (validated) and no tensors: every weight pointer NULL, mem NULL. What
 * qd_model_probe returns. NULL on failure. Free with qd_model_free. */
qd_model *qd_model_header(const qd_config *cfg, qd_err *err);

/* Adds the config's shape to the JSON object o: arch, dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, head_dim, vocab_size, max_seq_len, norm_eps, rope_theta (the artifact's metadata
 * and `quantd inspect` name them alike). */
struct cJSON;
void qd_config_json_shape(struct cJSON *o, const qd_config *c);

/* Deep copy of config and weights into a new single allocation; vocab and tinfo are not
 * copied (NULL in the clone). NULL on failure. */
qd_model *qd_model_clone(const qd_model *m, qd_err *err);

/* Number of parameters (tied embeddings counted once). */
size_t qd_model_n_params(const qd_model *m);

/* Frees everything the model owns; NULL is a no-op. */
void qd_model_free(qd_model *m);

#endif
