/* AIMET encodings export (encodings.json) for Qualcomm's converter --quantization_overrides:
 * every weight (Hugging Face names, as in fp-folded/) and every activation site of a qd_qint.
 *
 * AIMET's sign convention: real = scale * (q + offset) on an unsigned grid q in [0, 2^bw - 1],
 * so offset = -zero_point (unsigned zero point); symmetric encodings carry offset = -2^(bw-1).
 * Format 1.0.0: {"version", "activation_encodings": [{name, dtype "INT", enc_type PER_TENSOR |
 * PER_CHANNEL, is_sym, bw, scale [..], offset [..]}], "param_encodings": [...],
 * "excluded_layers": [], "quantizer_args": {...}}.
 * Format 0.6.1: the same keyed by name, each a list of {bitwidth, dtype "int", is_symmetric
 * "True"/"False", min, max, offset, scale} (one entry per channel). */
#ifndef QD_AIMET_H
#define QD_AIMET_H

#include "quant/rt/int_model.h"

/* Writes encodings.json for q in version "1.0.0" or "0.6.1" (atomically). */
int qd_aimet_write(const qd_qint *q, const char *path, const char *version, qd_err *err);

#endif
