/* The integer model: what model.qint.safetensors holds, in memory. Built from an FP model (the
 * folded one: LET folded in, weights clipped) plus the final encodings (qd_qint_enc), saved and
 * loaded in the safetensors artifact, and executed by the integer runtime (qrt.h).
 *
 * Conventions (fixed here, documented in the artifact's __metadata__):
 *  - real = scale * (q - zero_point) for every tensor and activation, with q and zero_point in
 *    the STORED signed form: q_stored = q_unsigned - 2^(bits-1) for asymmetric encodings (the
 *    simulation's q in [0, 2^b-1]), q itself for symmetric ones (zero_point 0).
 *  - int8 weights: I8 (rows, cols). int4 weights: U8 (rows, ceil(cols/2)), two per byte, the
 *    element at EVEN column k in the LOW nibble of byte k/2, two's complement nibbles.
 *  - biases: I32 at scale s_in * s_w[row] (zero point 0).
 *  - rounding: half to even everywhere (intops.h).
 * Site names and the bit map are qsim.h's: per layer QD_AQ_*, globals QD_AQG_*. */
#ifndef QD_QINT_H
#define QD_QINT_H

#include <stdint.h>

#include "quant/model.h"
#include "quant/sim/fakequant.h"

#define QD_QINT_FORMAT "quantd.qint"
#define QD_QINT_VERSION 1

/* One activation encoding (stored-form zero point). */
typedef struct qd_qenc {
    float scale;
    int32_t zero_point;
    int bits;
} qd_qenc;

/* The encodings the optimizer (or RTN) settles on: every activation site, and optionally the
 * weight grids. */
typedef struct qd_qint_enc {
    int n_layers;
    qd_qenc *act;                    /* n_layers*QD_AQ_PER_LAYER + QD_AQG_COUNT, layers first */
    qd_wq_spec wspec[QD_W_PER_LAYER];/* weight grid per linear (same for every layer) */
    int head_bits;                   /* embedding / LM head, asymmetric per row */
    /* Optional explicit weight grids, [l*QD_W_PER_LAYER + w] -> (per_channel ? rows : 1)
     * entries in the simulation's convention (zero in [0, 2^b-1] for asymmetric). NULL: min/max
     * of the given weights (qd_wq_forward without clipping). Not owned. */
    const float **wscale;
    const int32_t **wzero;
} qd_qint_enc;

/* Index of an activation site in qd_qint_enc.act / qd_qint.act. */
static inline int qd_act_index(int n_layers, int layer, int site) {
    return layer < 0 ? n_layers * QD_AQ_PER_LAYER + site : layer * QD_AQ_PER_LAYER + site;
}

/* Allocates act for cfg with the bit map (abits: per class override or NULL) and the default
 * weight specs for wbits; scales 1, zero points 0. Free with qd_qint_enc_free. */
int qd_qint_enc_init(qd_qint_enc *e, const qd_config *cfg, int wbits, const int *abits,
                     qd_err *err);
void qd_qint_enc_free(qd_qint_enc *e);

/* Activation encodings from a simulation's quantizers (its trained LRL parameters):
 * scale = qd_aq_scale, zero point = rint(z) - 2^(bits-1). */
int qd_qint_enc_from_qsim(qd_qint_enc *e, const qd_qsim *q, qd_err *err);

struct qd_encodings;
/* Everything from the optimizer's final encodings (encodings.h): activation encodings, and
 * weight grids pointing into e (which must outlive the qd_qint_enc until qd_qint_build). Build
 * with e->folded as the model. */
int qd_qint_enc_from_encodings(qd_qint_enc *out, const struct qd_encodings *e, qd_err *err);

/* Min/max RTN encodings: FP statistics pass of m over n_windows windows of T tokens, then
 * ranges as qd_qsim_init_ranges sets them. */
int qd_qint_enc_rtn(qd_qint_enc *e, const qd_model *m, int wbits, const int *tokens,
                    int n_windows, int T, qd_err *err);

/* A quantized linear weight. */
typedef struct qd_qlin {
    int rows, cols, bits, sym, per_channel;
    uint8_t *q;            /* int8: rows*cols bytes (int8_t); int4: rows*ceil(cols/2) packed */
    float *scale;          /* per_channel ? rows : 1 */
    int32_t *zero_point;   /* stored form, same count */
    int32_t *bias;         /* rows, or NULL */
} qd_qlin;

/* Bytes per row of q. */
static inline size_t qd_qlin_row_bytes(const qd_qlin *w) {
    return w->bits == 4 ? (size_t)(w->cols + 1) / 2 : (size_t)w->cols;
}

/* A per-tensor quantized vector (norm weights: 16-bit asymmetric). */
typedef struct qd_qvec {
    int n;
    int16_t *q;
    float scale;
    int32_t zero_point;
} qd_qvec;

typedef struct qd_qint_layer {
    qd_qlin w[QD_W_PER_LAYER];
    qd_qvec attn_norm, ffn_norm;
    qd_qvec attn_norm_b, ffn_norm_b;  /* LayerNorm biases (16-bit per tensor); q NULL: none */
} qd_qint_layer;

typedef struct qd_qint {
    qd_config cfg;
    int wbits, head_bits;
    qd_qenc *act;          /* n_layers*QD_AQ_PER_LAYER + QD_AQG_COUNT */
    qd_qint_layer *L;
    qd_qlin emb;           /* (vocab, dim) per row */
    qd_qlin head;          /* (vocab, dim) per row; shares emb's buffers when tied */
    qd_qvec final_norm;
    qd_qvec final_norm_b;  /* q NULL: none */
    char method[32];
    char source_sha256[65];
} qd_qint;

/* Quantizes m (the folded FP model) with the encodings. NULL on failure. */
qd_qint *qd_qint_build(const qd_model *m, const qd_qint_enc *e, qd_err *err);

/* The integer model of the optimizer's final encodings: qd_qint_enc_from_encodings, then
 * qd_qint_build of e->folded. NULL on failure; the caller frees it with qd_qint_free. */
qd_qint *qd_qint_from_encodings(const struct qd_encodings *e, qd_err *err);
void qd_qint_free(qd_qint *q);

/* The dequantized weights as an FP model (what the runtime's weights mean): for tests and for
 * comparing with the simulation. */
qd_model *qd_qint_dequant(const qd_qint *q, qd_err *err);

/* Writes model.qint.safetensors (atomic). */
int qd_qint_save(const qd_qint *q, const char *path, qd_err *err);
/* Reads it back; refuses other formats and unknown versions with a clear error. */
qd_qint *qd_qint_load(const char *path, qd_err *err);

/* Total bytes of the integer tensors and encodings (the artifact's payload). */
size_t qd_qint_bytes(const qd_qint *q);
/* Number of weight parameters and the bits they take (for bits per weight). */
void qd_qint_weight_bits(const qd_qint *q, size_t *n_weights, size_t *n_bits);

#endif
