/* FP32 inference forward of a qd_model: batched over (B, T) windows with every matmul through
 * OpenBLAS sgemm, causal attention with GQA, RoPE (rotate-half layout), SwiGLU; and a
 * KV-cache decode path for generation. A plain scalar forward is kept beside it as the
 * reference the tests compare against. */
#ifndef QD_FORWARD_H
#define QD_FORWARD_H

#include "quant/model.h"

/* logits (B*T, vocab) for tokens (B*T) in B independent windows of length T (positions
 * 0..T-1 in each). Allocates its own scratch. QD_ERR on bad ids or out of memory. */
int qd_forward(const qd_model *m, const int *tokens, int B, int T, float *logits, qd_err *err);

/* Scratch memory kept across forward calls: repeated calls (evaluation loops) then touch
 * already-mapped pages instead of faulting in fresh ones each time. */
typedef struct qd_fwd_ws qd_fwd_ws;
qd_fwd_ws *qd_fwd_ws_new(void);
void qd_fwd_ws_free(qd_fwd_ws *ws);
/* qd_forward with a reusable workspace (grown as needed). */
int qd_forward_ws(const qd_model *m, qd_fwd_ws *ws, const int *tokens, int B, int T,
                  float *logits, qd_err *err);

/* The same computation with plain loops (no BLAS): the reference for tests. */
int qd_forward_ref(const qd_model *m, const int *tokens, int B, int T, float *logits,
                   qd_err *err);

/* RoPE cos/sin tables for positions 0..T-1, rotate-half layout: cos[t*(hd/2)+i], at the
 * frequencies of qd_rope_inv_freq (theta and rope scaling of c). */
void qd_rope_tables(const qd_config *c, int T, float *cos_t, float *sin_t);

/* Incremental decoding with a KV cache of max_T positions. */
typedef struct qd_kv qd_kv;
qd_kv *qd_kv_new(const qd_model *m, int max_T, qd_err *err);
void qd_kv_free(qd_kv *kv);
/* Feeds token at position pos (must equal the number of tokens fed so far) and writes the
 * next-token logits (vocab). */
int qd_decode_step(const qd_model *m, qd_kv *kv, int token, int pos, float *logits, qd_err *err);

/* Evaluation over non-overlapping windows of ctx tokens: mean NLL, perplexity. */
typedef struct qd_eval_result {
    double nll;        /* mean negative log-likelihood (nats/token) */
    double ppl;        /* exp(nll) */
    size_t tokens;     /* predicted tokens counted */
    double seconds;
} qd_eval_result;

/* A function computing logits for B windows of T tokens: lets eval run the FP32 forward, the
 * fake-quant simulation or the integer runtime with one loop. */
typedef int (*qd_logits_fn)(void *ctx, const int *tokens, int B, int T, float *logits,
                            qd_err *err);

int qd_eval_ppl(qd_logits_fn fn, void *ctx, int vocab, const int *ids, size_t n, int ctx_len,
                qd_eval_result *res, qd_err *err);

#endif
