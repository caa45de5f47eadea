/* The integer-only runtime: executes a qd_qint (model.qint.safetensors) with integer arithmetic
 * on the per-token path: int8 x int8/int4 -> int32 matmuls (igemm.h, SIMD chosen at run time),
 * Q31 requantization, int16 residual adds, integer RMSNorm, integer softmax, SiLU table,
 * fixed-point RoPE, int8 KV cache (intops.h). Floats are used only in qd_qrt_new (tables and
 * multipliers) and to hand back logits as float at the API boundary (q_logit * scale).
 *
 * Threads: a qd_qrt runs on the process-wide pool (base/pool.h: qd_pool_default, sized by the
 * program's threads option) or, when opts.threads asks for a count, on a pool of its own made
 * with it and joined by qd_qrt_free; idle workers sleep on a condition variable. A forward splits its
 * matmuls over output channels, attention over heads and query blocks, the LM head over
 * vocabulary rows; qd_qrt_logits_fn runs whole windows on different threads. The integers are
 * the same for every thread count and ISA-independent as before. One call at a time per
 * instance: a qd_qrt owns its scratch buffers. */
#ifndef QD_QRT_H
#define QD_QRT_H

#include "quant/rt/igemm.h"
#include "quant/rt/int_model.h"

typedef struct qd_qrt qd_qrt;
typedef struct qd_qrt_kv qd_qrt_kv;

#define QD_QRT_MAX_THREADS 256

typedef struct qd_qrt_opts {
    qd_isa isa;        /* QD_ISA_AUTO: the best path the CPU supports */
    int chunk;         /* tokens processed per batch of matmuls (default 64) */
    int threads;       /* threads, the caller's included; 0 (default): the default pool's
                        * (qd_pool_default, which must outlive the runtime); 1: no pool; N:
                        * a pool of N of its own. At most QD_QRT_MAX_THREADS. Results never
                        * depend on it. */
    long par_grain;    /* an operation of fewer multiply-adds than this runs on the calling
                        * thread alone (waking the pool costs more); default 2^18, 0 splits
                        * everything (tests) */
} qd_qrt_opts;

void qd_qrt_defaults(qd_qrt_opts *o);

/* Builds the runtime for q (which must outlive it unless ownership is given with
 * qd_qrt_own). NULL on failure (e.g. an encoding whose multiplier does not fit). */
qd_qrt *qd_qrt_new(const qd_qint *q, const qd_qrt_opts *o, qd_err *err);

/* Whether an artifact with activation class aclass (enum qd_aclass) at bits can be written and
 * run: the classes on the runtime's 8-bit integer paths (norm, qkv, qk_in, pv, gateup, silu,
 * down_in) take 8 bits only, the others 8 or 16 (model.qint.safetensors stores 8- or 16-bit
 * activation encodings). On false *allowed (may be NULL) is what the class takes ("8" or
 * "8, 16"). The rule qd_qrt_new applies per site, by class, for checking a job before work. */
int qd_qrt_abits_ok(int aclass, int bits, const char **allowed);
/* Loads model.qint.safetensors and builds a runtime that owns it. */
qd_qrt *qd_qrt_load(const char *path, const qd_qrt_opts *o, qd_err *err);
void qd_qrt_free(qd_qrt *rt);

const qd_qint *qd_qrt_model(const qd_qrt *rt);
qd_isa qd_qrt_isa(const qd_qrt *rt);

/* KV cache (int8, the KROPE and V encodings) for max_T positions. */
qd_qrt_kv *qd_qrt_kv_new(const qd_qrt *rt, int max_T, qd_err *err);
void qd_qrt_kv_free(qd_qrt_kv *kv);

/* Feeds n tokens at positions pos0..pos0+n-1 (pos0 = tokens already in kv) and writes the 16-bit
 * integer logits (n, vocab) in the LOGITS encoding. Integer arithmetic only. */
int qd_qrt_forward_int(qd_qrt *rt, qd_qrt_kv *kv, const int *tokens, int n, int pos0,
                       int16_t *logits_q, qd_err *err);

/* The same with float logits (scale * (q - zero_point)) for the evaluation code. */
int qd_qrt_forward(qd_qrt *rt, qd_qrt_kv *kv, const int *tokens, int n, int pos0, float *logits,
                   qd_err *err);

/* One generation step: token at pos (== tokens fed so far), next-token logits (vocab). */
int qd_qrt_decode_step(qd_qrt *rt, qd_qrt_kv *kv, int token, int pos, float *logits,
                       qd_err *err);

/* A qd_logits_fn (forward.h): ctx is a qd_qrt*. B windows of T tokens, each from position 0. */
int qd_qrt_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err);

#endif
