/* Final quantization encodings of a trained simulation, for the integer runtime and the
 * exporters: every weight tensor's integer grid (bits, per-channel or per-tensor scale and zero
 * point) and every static activation quantizer's scale and offset, plus the FP model with the
 * LET folded in and the weights clipped to their LWC range.
 *
 * Conventions (the same the simulation uses):
 *   weights:      q = clamp(rint(w / scale) + zero, qmin, qmax), w ≈ (q - zero) * scale, with
 *                 rint = round half to even; symmetric grids have zero = 0 and
 *                 [qmin, qmax] = [-2^(b-1), 2^(b-1)-1]; asymmetric [0, 2^b - 1].
 *   activations:  q = clamp(rint(x / scale) + zero, 0, 2^b - 1), x ≈ (q - zero) * scale
 *                 (AIMET's offset is -zero).
 * Quantizing encodings.folded's weights with these grids reproduces the simulation's integers
 * (qd_wenc_quantize does it). */
#ifndef QD_ENCODINGS_H
#define QD_ENCODINGS_H

#include <stdint.h>

#include "quant/sim/fakequant.h"

/* Global weight sites (layer = -1); per-layer linear weights use enum qd_wsite and the norms
 * QD_WENC_ATTN_NORM / QD_WENC_FFN_NORM. */
enum { QD_WENC_ATTN_NORM = QD_W_PER_LAYER, QD_WENC_FFN_NORM, QD_WENC_EMB, QD_WENC_HEAD,
       QD_WENC_FINAL_NORM };

typedef struct qd_wenc {
    char name[96];          /* Hugging Face name, e.g. "model.layers.3.mlp.down_proj.weight" */
    int layer;              /* -1 for embedding, LM head, final norm */
    int site;               /* enum qd_wsite or QD_WENC_* */
    int bits, sym, per_channel;
    int rows, cols;         /* the tensor is (rows, cols) row-major; norms are (1, dim) */
    int n_ch;               /* rows when per channel, else 1 */
    int qmin, qmax;
    float *scale;           /* n_ch */
    int32_t *zero;          /* n_ch */
    const float *w;         /* the folded FP tensor these encodings quantize */
} qd_wenc;

typedef struct qd_aenc {
    char name[96];          /* e.g. "model.layers.3.self_attn.q_proj.output" */
    int layer;              /* -1 for the global sites */
    int site;               /* enum qd_aq_site, or QD_AQG_* when layer is -1 */
    int aclass, bits;
    float scale;
    int32_t zero;
    float min, max;         /* representable range: (0 - zero)*scale .. (2^b-1 - zero)*scale */
} qd_aenc;

typedef struct qd_encodings {
    qd_model *folded;       /* owned; LET folded, weights clipped */
    int n_w, n_a;
    qd_wenc *w;
    qd_aenc *a;
    int wbits;
} qd_encodings;

/* Builds the encodings of q (whose source model is src) with a folded copy of src. NULL on
 * failure with err set. */
qd_encodings *qd_encodings_build(const qd_qsim *q, const qd_model *src, qd_err *err);

/* The same, folding src itself: e->folded is src, which e now owns (freed with e, or at once
 * on failure). The simulation q reads src's weights (its views), so q must not run again
 * after this: only the F32 model is held once at the end of a run (quantize.c). */
qd_encodings *qd_encodings_build_into(const qd_qsim *q, qd_model *src, qd_err *err);
void qd_encodings_free(qd_encodings *e);

/* Lookups; NULL when absent. layer -1 for globals. */
const qd_wenc *qd_enc_weight(const qd_encodings *e, int layer, int site);
const qd_aenc *qd_enc_act(const qd_encodings *e, int layer, int site);

/* Integers of e->w on its grid into q (rows*cols). */
void qd_wenc_quantize(const qd_wenc *e, int32_t *q);

/* Bytes of the quantized model: integer weights at their widths (int4 packed), one float
 * scale and one int32 zero point per channel group, biases as int32. */
size_t qd_encodings_model_bytes(const qd_encodings *e);

#endif
