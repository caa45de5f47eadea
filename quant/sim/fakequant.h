/* Fake-quantized simulation of a qd_model following the MobileQuant bit map (DESIGN.md §3),
 * with a hand-written backward to every trained parameter:
 *   LET  per-channel equivalent-transform scales (norm->qkv, norm->gate/up, up->down, v->o),
 *   LWC  weight-clipping logits γ/β per weight tensor (per output channel or per tensor),
 *   LRL  scale and offset of every static activation quantizer.
 * All trained parameters live in one buffer (p) with a gradient buffer of the same layout (g),
 * grouped LET | LWC | LRL so the optimizer can give each group its own schedule.
 *
 * One decoder layer, with the activation quantizer sites (enum qd_aq_site) in brackets:
 *   h1 = norm(x, ĝ1, b̂1) [ATTN_NORM]; q,k,v = h1 Ŵq/k/v [Q,K,V]; rope [QROPE,KROPE];
 *   S = q kᵀ/√d [SCORE]; P = softmax [PROB]; o = P v [PV]; a = o Ŵo [O]; x2 = x + a [RES1];
 *   h2 = norm(x2, ĝ2, b̂2) [FFN_NORM]; g,u = h2 Ŵg/u [GATE,UP]; act(g) [SILU]; m = act·u
 *   [DOWN_IN]; d = m Ŵd [DOWN]; out = x2 + d [RES2].
 * The family's switches (model.h) choose norm (RMSNorm, or LayerNorm with bias b), act (SiLU,
 * or the tanh GELU: its output is the SILU site, 8-bit like SiLU's), the rotated width of RoPE
 * and the embedding scale (applied to the table's rows before the EMB quantizer).
 * Globals: embedding output [EMB], final norm output [HEAD_IN], logits [LOGITS].
 * Weights: Ŵ = wq(LET(W)) with the LWC range; norm weights ĝ = wq16(g / s) and LayerNorm
 * biases b̂ = wq16(b / s) (16-bit, per tensor); the LM head and the embedding table 8-bit per
 * row (not trained).
 *
 * The switches let_on / wq_on / aq_on / lwc_on turn each part off; with all off the simulation
 * is the FP32 model (tests compare it with qd_forward). */
#ifndef QD_QSIM_H
#define QD_QSIM_H

#include <stdint.h>

#include "base/limits.h"
#include "quant/model.h"
#include "quant/sim/ops.h"

/* Activation classes: the unit of the per-class bit override (qd_quant_opts.abits_override). */
enum qd_aclass {
    QD_AC_RES,       /* residual stream, embedding output (16) */
    QD_AC_NORM,      /* RMSNorm outputs (8) */
    QD_AC_QKV,       /* q, k, v projection outputs; v is the KV cache's V (8) */
    QD_AC_QK_IN,     /* q and k after RoPE: inputs of QKᵀ; k is the KV cache's K (8) */
    QD_AC_SCORE,     /* QKᵀ output, softmax input (16) */
    QD_AC_PROB,      /* softmax output (16) */
    QD_AC_PV,        /* PV output, o_proj input (8) */
    QD_AC_OPROJ,     /* o_proj output (16) */
    QD_AC_GATEUP,    /* gate and up outputs (8) */
    QD_AC_SILU,      /* SiLU output (8) */
    QD_AC_DOWN_IN,   /* silu·up, down_proj input (8) */
    QD_AC_DOWN_OUT,  /* down_proj output (16) */
    QD_AC_HEAD,      /* final norm output / LM head input, logits (16) */
    QD_AC_COUNT
};
/* the class names (qd_aclass_name, qd_aclass_parse) are base/limits.h's table, in this order */
_Static_assert(QD_AC_COUNT == QD_N_ACLASS, "base/limits.h names every activation class");

/* Activation quantizer sites inside one layer. */
enum qd_aq_site {
    QD_AQ_ATTN_NORM, QD_AQ_Q, QD_AQ_K, QD_AQ_V, QD_AQ_QROPE, QD_AQ_KROPE, QD_AQ_SCORE,
    QD_AQ_PROB, QD_AQ_PV, QD_AQ_O, QD_AQ_RES1, QD_AQ_FFN_NORM, QD_AQ_GATE, QD_AQ_UP,
    QD_AQ_SILU, QD_AQ_DOWN_IN, QD_AQ_DOWN, QD_AQ_RES2, QD_AQ_PER_LAYER
};
/* Global activation quantizer sites. */
enum { QD_AQG_EMB, QD_AQG_HEAD_IN, QD_AQG_LOGITS, QD_AQG_COUNT };

/* Linear weights of one layer. */
enum qd_wsite { QD_W_Q, QD_W_K, QD_W_V, QD_W_O, QD_W_GATE, QD_W_UP, QD_W_DOWN, QD_W_PER_LAYER };

/* Parameter groups, contiguous in qd_qsim.p in this order. */
enum { QD_GRP_LET, QD_GRP_LWC, QD_GRP_LRL, QD_GRP_COUNT };

/* Weight granularity choice. */
enum { QD_WGRAN_DEFAULT = 0, QD_WGRAN_CHANNEL = 1, QD_WGRAN_TENSOR = 2 };

QD_API int qd_aclass_default_bits(int aclass);        /* 8 or 16 from the bit map */
QD_API int qd_aq_site_class(int site);                /* class of a per-layer site */
QD_API int qd_aqg_class(int gsite);                   /* class of a global site */
QD_API const char *qd_aq_site_name(int site);         /* "self_attn.q_proj.output", ... */
QD_API const char *qd_aqg_name(int gsite);            /* "model.embed_tokens.output", ... */
QD_API const char *qd_wsite_name(int w);              /* "self_attn.q_proj", ... */

typedef struct qd_qsim_opts {
    int wbits;                 /* 8 (asymmetric; per tensor, down per channel) or 4 (symmetric
                                  per channel) */
    int wgran;                 /* QD_WGRAN_*: override the bit map's granularity */
    int abits[QD_AC_COUNT];    /* 0 = bit map default */
    int let_vo;                /* -1 auto: on when n_kv_heads == n_heads */
    int let_ud;                /* LET between up and down (default 1) */
    int head_bits;             /* LM head / embedding table bits (default 8) */
    int Bmax, Tmax;            /* largest batch and window the buffers hold */
    int train;                 /* keep every layer's activations for backward */
    int recompute;             /* with train: keep one layer's activations and every layer's
                                  input; qd_qsim_backward_blocks runs each layer's forward again
                                  before its backward (one more forward per step, the same
                                  gradients to the bit) */
} qd_qsim_opts;

QD_API void qd_qsim_defaults(qd_qsim_opts *o);

/* Per-quantizer statistics from an FP pass (quantizers off): min/max of every site, and the
 * per-channel max|x| of the inputs of each LET pair's consumer (SmoothQuant). */
typedef struct qd_qstats {
    int n_layers, dim, hidden, qdim;
    double *mn, *mx;      /* n_layers*QD_AQ_PER_LAYER + QD_AQG_COUNT, per-layer first */
    float *ch_attn;       /* (n_layers, dim)    attention norm output */
    float *ch_ffn;        /* (n_layers, dim)    FFN norm output */
    float *ch_down;       /* (n_layers, hidden) down_proj input */
    float *ch_o;          /* (n_layers, qdim)   o_proj input */
    /* per-channel sums of x² of the same four inputs (divide by tokens for the mean square):
     * the weights of the output-error proxy the clipping search minimises */
    double *sq_attn, *sq_ffn, *sq_down, *sq_o;
    size_t tokens;
} qd_qstats;

QD_API qd_qstats *qd_qstats_new(const qd_config *cfg);
QD_API void qd_qstats_free(qd_qstats *s);

typedef struct qd_qact qd_qact;   /* one layer's saved activations (fakequant.c) */

typedef struct qd_qlayer {
    /* LET scales (NULL when the pair is off) and their gradients */
    qd_real *s_qkv, *s_gu, *s_ud, *s_vo;
    qd_real *gs_qkv, *gs_gu, *gs_ud, *gs_vo;
    /* LWC logits per linear weight ((per_channel ? rows : 1) each; bet unused when sym) */
    qd_real *gam[QD_W_PER_LAYER], *bet[QD_W_PER_LAYER];
    qd_real *ggam[QD_W_PER_LAYER], *gbet[QD_W_PER_LAYER];
    qd_wq_spec wspec[QD_W_PER_LAYER];
    int wrows[QD_W_PER_LAYER], wcols[QD_W_PER_LAYER];
    /* the last forward's range of each per-tensor weight's LET-transformed values, which the
     * backward's recomputation of Ŵ and its gradient reuse (the parameters have not moved) */
    qd_wrange wrng[QD_W_PER_LAYER];
    /* activation quantizers (s, z point into p; ds, dz into g) */
    qd_aq aq[QD_AQ_PER_LAYER];
    /* fixed weights replacing the fake-quantized LET/LWC weight when set: the integers chosen
     * by error-compensating rounding (gptq.h), held as one byte each (the code, minus 128 on
     * an unsigned grid) with their groups' scale and zero point, dequantized at use exactly as
     * the rounding computed them, (q - z)·s. NULL: none. qd_qsim_get_wfix reads them. */
    int8_t *wfix[QD_W_PER_LAYER];
    int8_t *wfix_mem[QD_W_PER_LAYER]; /* wfix's buffer, kept across a NULL for reuse */
    float *wfix_sz[QD_W_PER_LAYER];   /* per group: scale, zero */
    /* source weights (float library: views of the model; double build: owned copies) */
    const qd_real *w[QD_W_PER_LAYER], *attn_norm, *ffn_norm, *bq, *bk, *bv;
    const qd_real *attn_norm_b, *ffn_norm_b;  /* LayerNorm biases (NULL for RMSNorm) */
    qd_qact *act;
} qd_qlayer;

typedef struct qd_qsim {
    qd_config cfg;
    qd_qsim_opts o;
    int let_on, wq_on, aq_on, lwc_on;   /* switches (all 1 after qd_qsim_new) */
#ifdef QD_TEST_HOOKS
    int fault;                          /* test hook: 1..4 break one backward term (ops.h) */
#endif
    qd_rctx rc;                         /* rounding mode (gradient checks) */
    size_t n_params;
    qd_real *p, *g;                     /* trained parameters and their gradients */
    size_t grp_off[QD_GRP_COUNT + 1];   /* group k is p[grp_off[k] .. grp_off[k+1]) */
    qd_qlayer *L;
    qd_aq aqg[QD_AQG_COUNT];
    qd_qstats *stats;                   /* when set, forward records statistics into it */
    /* everything else is private to fakequant.c */
    struct qd_qsim_priv *priv;
} qd_qsim;

/* The fault a test set on q (0 in builds without QD_TEST_HOOKS, see ops.h). */
#ifdef QD_TEST_HOOKS
#define QD_QSIM_FAULT(q) ((q)->fault)
#else
#define QD_QSIM_FAULT(q) ((void)(q), 0)
#endif

/* Builds the simulation of m (which must outlive it). Parameters start as identity LET,
 * LWC logits 4, activation ranges [-1, 1] (call qd_qsim_init_ranges). NULL on failure. */
QD_API qd_qsim *qd_qsim_new(const qd_model *m, const qd_qsim_opts *o, qd_err *err);
QD_API void qd_qsim_free(qd_qsim *q);

/* Bytes the simulation allocated (for the memory report). */
QD_API size_t qd_qsim_bytes(const qd_qsim *q);

/* Embedding lookup (through the 8-bit table when wq_on) and the EMB quantizer: x0 (B*T, dim). */
QD_API void qd_qsim_embed(qd_qsim *q, const int *tokens, int B, int T, qd_real *x0);

/* One layer: out (B*T, dim) from x (B*T, dim); saves activations when training. */
QD_API void qd_qsim_layer_forward(qd_qsim *q, int l, const qd_real *x, qd_real *out, int B, int T);
/* The same forward up to the input of weight upto (QD_W_*; -1: the whole layer, as above): what
 * qd_qsim_weight_input then reads is what the whole forward gives, bit for bit; out is written
 * only by a whole forward. GPTQ's stages need no more of the layer than their input. */
QD_API void qd_qsim_layer_forward_to(qd_qsim *q, int l, const qd_real *x, qd_real *out, int B,
                                     int T, int upto);
/* The same forward resumed at weight from's input (QD_W_O, QD_W_GATE/UP or QD_W_DOWN), up to
 * upto's input (-1: the whole layer into out): in is that input ((B*T, cols of from), what
 * qd_qsim_weight_input gave), res the residual stream there (the layer's input x for QD_W_O;
 * for the later ones the attention block's output, qd_qsim_residual). What it computes is what
 * a whole forward gives, bit for bit, when in and res are what that forward would have produced
 * with the weights as they are now. Only for simulations that keep no activations (train = 0),
 * take no statistics and record no rounding: GPTQ's stages continue where the last one ended
 * instead of rerunning the layer from its input. */
QD_API void qd_qsim_layer_resume(qd_qsim *q, int l, int from, const qd_real *in,
                                 const qd_real *res, qd_real *out, int B, int T, int upto);
/* The attention block's output (the residual stream into the FFN, (B*T, dim)) in the last
 * forward of layer l that reached gate/up's input; valid as qd_qsim_weight_input's. */
QD_API const qd_real *qd_qsim_residual(const qd_qsim *q, int l, int *n_rows);
/* Backward of the last forward of layer l: gradients += into q->g; dx += (NULL to skip). */
QD_API void qd_qsim_layer_backward(qd_qsim *q, int l, const qd_real *dout, qd_real *dx);

/* All decoder layers: out (B*T, dim), the last block's output (the training target's shape).
 * Resets the rounding cursor. */
QD_API void qd_qsim_forward_blocks(qd_qsim *q, const qd_real *x0, qd_real *out, int B, int T);
/* Backward through every layer from dL/dout; the input's gradient is not needed. */
QD_API void qd_qsim_backward_blocks(qd_qsim *q, const qd_real *dout);

/* Full model: logits (B*T, vocab) for tokens, with every quantizer the switches enable.
 * B*T may exceed the buffers: windows are processed Bmax at a time; T <= Tmax. */
QD_API int qd_qsim_logits(qd_qsim *q, const int *tokens, int B, int T, float *logits, qd_err *err);
/* The same as a qd_logits_fn (ctx = qd_qsim*). */
QD_API int qd_qsim_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err);

QD_API void qd_qsim_zero_grad(qd_qsim *q);

/* Activation ranges from statistics: s = (max-min)/(2^b-1), z = -min/s, min <= 0 <= max. */
QD_API void qd_qsim_init_ranges(qd_qsim *q, const qd_qstats *st);
/* Projects every activation quantizer's offset parameter onto [0, 2^b - 1], the set on which
 * its parametrisation (qd_aq_zero) is the identity: the optimizer calls it after every step, so
 * that an offset pushed past an end stays there, at zero on the grid, with a live gradient that
 * can move it back in. Returns the number of offsets it moved. */
QD_API int qd_qsim_project_ranges(qd_qsim *q);
/* SmoothQuant LET initialisation: s_j = max|X_j|^α / max|W_:,j|^(1-α), |s| >= 1e-2. */
QD_API void qd_qsim_smoothquant(qd_qsim *q, const qd_qstats *st, float alpha);
/* Sets every LWC logit to v (4 is the MobileQuant initialisation). */
QD_API void qd_qsim_set_lwc(qd_qsim *q, float v);
/* LWC initialisation by search: for every weight group (row or tensor) the clipping ratio r of
 * a grid of n ratios from 1 down to r_min that minimises Σ_j E[x_j²] (w_j - ŵ_j)², the weight's
 * quantization error weighted by the mean square of its input channel j (from st, measured with
 * the current LET: a proxy of the layer's output error), on the LET-transformed weight; then
 * γ = β = logit(r) (r = 1 is represented by logit 6). Returns the mean chosen ratio. Row by row,
 * each row's errors on all grids fused and vectorised (AVX2 where present), never writing a
 * fake-quantized tensor. */
QD_API double qd_qsim_search_lwc(qd_qsim *q, const qd_qstats *st, int n, double r_min);
/* The same choice by brute force (a whole-tensor fake quantization per ratio): the reference
 * qd_qsim_search_lwc is tested against; both compute every error by the same summation, so
 * they choose the same logits bit for bit. */
QD_API double qd_qsim_search_lwc_ref(qd_qsim *q, const qd_qstats *st, int n, double r_min);
/* Test hook: 1 makes qd_qsim_search_lwc use its scalar path even where the CPU has AVX2. */
QD_API void qd_qsim_lwc_scalar(int on);

/* Runs the FP statistics pass (quantizers off, LET as set) over n windows of T tokens. */
QD_API int qd_qsim_collect(qd_qsim *q, const int *tokens, int n_windows, int T, qd_qstats *st,
                    qd_err *err);
/* The same pass through the decoder layers only: every layer site's statistics (all that
 * SmoothQuant reads) identical to qd_qsim_collect's, bit for bit; the vocabulary-sized LM head
 * and its quantizers' statistics are not computed. outs (n_windows * T * dim, or NULL) gets the
 * last block's output of every window: with LET off, the FP model's (the end-to-end loss's
 * targets, without a pass of their own). */
QD_API int qd_qsim_collect_layers(qd_qsim *q, const int *tokens, int n_windows, int T,
                                  qd_qstats *st, qd_real *outs, qd_err *err);

/* Writes into out (a model with the same config, e.g. a qd_model_clone of the source) the FP
 * model with LET folded into norms and weights, and every linear weight clipped to its LWC
 * range (the grid's end points). Embedding/LM head are copied unchanged. */
QD_API int qd_qsim_fold(const qd_qsim *q, qd_model *out, qd_err *err);

/* Final encodings of linear weight w of layer l: per group (rows when per channel, else 1)
 * the scale and the rounded zero point (0 when symmetric), from the LET-transformed weight and
 * the LWC range — exactly the grid the simulation uses. */
QD_API void qd_qsim_weight_enc(const qd_qsim *q, int l, int w, qd_real *scale, qd_real *zero);

/* The LET-transformed FP weight w of layer l (rows*cols into t): what the grid quantizes. */
QD_API void qd_qsim_weight_let(const qd_qsim *q, int l, int w, qd_real *t);

/* Fixes weight w of layer l to the dequantized grid weights what (rows*cols, copied; NULL
 * clears): forward, fold and encodings use them instead of rounding to nearest. Every value must
 * lie on the grid of qd_qsim_weight_enc. QD_OK, or QD_ERR when out of memory. */
QD_API int qd_qsim_set_wfix(qd_qsim *q, int l, int w, const qd_real *what);
/* The fixed weight (l, w) dequantized into out (rows*cols): 1, or 0 when none is set. */
QD_API int qd_qsim_get_wfix(const qd_qsim *q, int l, int w, qd_real *out);
/* Every weight's fixed codes and grids (GPTQ's result) copied out and back in: the bytes they
 * take; save (QD_ERR when a weight has none) into buf of that size; restore from it (QD_ERR when
 * a weight was never fixed) makes every weight's fixed integers those saved, bit for bit. The
 * ridge-λ search keeps its best run this way instead of rerunning GPTQ. */
QD_API size_t qd_qsim_wfix_bytes(const qd_qsim *q);
QD_API int qd_qsim_wfix_save(const qd_qsim *q, void *buf);
QD_API int qd_qsim_wfix_restore(qd_qsim *q, const void *buf);

/* The input of weight w (the quantized activation it multiplies: (rows N, cols) row-major,
 * *n_rows = B*T) in the last forward of layer l. Valid until the next layer forward of a
 * simulation that keeps one layer's activations (train = 0), or of layer l. */
QD_API const qd_real *qd_qsim_weight_input(const qd_qsim *q, int l, int w, int *n_rows);

#endif
