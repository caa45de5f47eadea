/* Comparing a model variant with the FP32 reference on the same evaluation tokens: perplexity
 * of the variant, mean KL(FP32 || variant) over predicted positions, and top-1 agreement with
 * FP32's argmax. Windows follow qd_eval_ppl (forward.h): non-overlapping windows of ctx_len
 * tokens, then the remainder as one shorter window; every position with a next token counts. */
#ifndef QD_EVAL_H
#define QD_EVAL_H

#include "quant/fp/forward.h"

typedef struct qd_cmp_result {
    double nll, ppl;   /* of the variant */
    double kl;         /* mean KL(ref || variant), nats */
    double top1;       /* fraction of positions where argmax agrees */
    size_t tokens;     /* predicted positions */
    double seconds;
} qd_cmp_result;

/* ref and var are logits functions (qd_logits_fn); var may equal ref (then kl 0, top1 1).
 * QD_ERR with err set on failure. */
int qd_eval_compare(qd_logits_fn ref, void *ref_ctx, qd_logits_fn var, void *var_ctx, int vocab,
                    const int *ids, size_t n, int ctx_len, qd_cmp_result *res, qd_err *err);

/* qd_forward as a qd_logits_fn (ctx = const qd_model*). */
int qd_fp32_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err);

#endif
