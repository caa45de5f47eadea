/* Comparing a model variant with the FP32 reference on the same evaluation tokens: perplexity
 * of the variant, mean KL(FP32 || variant) over predicted positions, and top-1 agreement with
 * FP32's argmax. Windows follow qd_eval_ppl (forward.h): non-overlapping windows of ctx_len
 * tokens, then the remainder as one shorter window; every position with a next token counts.
 *
 * Two ways, one the reference of the other:
 *   qd_eval_compare      runs both models on every window and compares the full
 *                        distributions: exact, and the plain reference the tests hold the
 *                        other against;
 *   qd_eval_ref_new /    the pipeline's: the FP32 side is run once, window by window, and kept
 *   qd_eval_ref_compare  compactly (as llama.cpp's KL-divergence tool keeps its base model's
 *                        log-probabilities, but sparse): per position its argmax, every token
 *                        whose probability is at least QD_EVAL_TAIL / vocab with its
 *                        log-probability (so what is left out holds at most QD_EVAL_TAIL), and
 *                        the mass of the rest; every variant is then run alone. Perplexity and
 *                        top-1 are exact. KL sums the kept tokens exactly and the rest as one
 *                        token (the two distributions' remaining masses): by the log-sum
 *                        inequality a lower bound of the exact KL, short of it by about the
 *                        rest's share of the divergence, so within ~QD_EVAL_TAIL relative while
 *                        the kept tokens fit the memory budget (max_bytes, default
 *                        QD_EVAL_REF_BYTES, at 8 bytes a token). Past the budget a position
 *                        keeps only its most likely tokens (at least QD_EVAL_MIN_KEPT), and the
 *                        tail it then lumps together is reported (qd_eval_ref_stats). Only one
 *                        batch of logits (QD_EVAL_BATCH_CELLS) is ever held. */
#ifndef QD_EVAL_H
#define QD_EVAL_H

#include "quant/fp/forward.h"

#define QD_EVAL_TAIL 1e-5
#define QD_EVAL_REF_BYTES ((size_t)256 << 20)
#define QD_EVAL_MIN_KEPT 64

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

/* The reference kept once (see above). */
typedef struct qd_eval_ref qd_eval_ref;

/* Called after each batch of windows with the windows done and their total (may be NULL). */
typedef void (*qd_eval_tick)(void *ctx, long done, long total);

/* Runs ref over the windows of ids (n tokens, which must outlive the result) and keeps what
 * comparisons need within about max_bytes (0: QD_EVAL_REF_BYTES); *self gets ref's own
 * figures (its perplexity; kl 0 and top1 1 by definition, not computed). NULL with err set on
 * failure (the caller frees with qd_eval_ref_free, which accepts NULL). */
qd_eval_ref *qd_eval_ref_new(qd_logits_fn ref, void *ref_ctx, int vocab, const int *ids,
                             size_t n, int ctx_len, size_t max_bytes, qd_eval_tick tick,
                             void *tick_ctx, qd_cmp_result *self, qd_err *err);
void qd_eval_ref_free(qd_eval_ref *r);
/* var against the kept reference on the same windows. QD_ERR with err set on failure. */
int qd_eval_ref_compare(const qd_eval_ref *r, qd_logits_fn var, void *var_ctx,
                        qd_eval_tick tick, void *tick_ctx, qd_cmp_result *res, qd_err *err);
/* What the reference holds. */
typedef struct qd_eval_ref_info {
    size_t bytes;          /* its memory */
    size_t positions;      /* predicted positions */
    int kept_max;          /* tokens a position may keep (the budget's share; vocab: all) */
    double kept_mean;      /* tokens kept per position */
    double tail_max, tail_mean; /* reference probability lumped as one token, per position */
} qd_eval_ref_info;
void qd_eval_ref_stats(const qd_eval_ref *r, qd_eval_ref_info *info);

/* qd_forward as a qd_logits_fn (ctx = const qd_model*). */
int qd_fp32_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err);

/* Windows per forward call of the evaluation loops: at most 1024 tokens, and at most
 * QD_EVAL_BATCH_CELLS logits, so that a large vocabulary does not hold a large buffer (the
 * cost estimate counts the same). */
#define QD_EVAL_BATCH_CELLS ((size_t)32 << 20)
int qd_eval_batch(int ctx_len, int vocab);

#endif
