/* What eval and generate run: the FP32 model (any checkpoint format) or the integer runtime
 * over a model.qint.safetensors artifact, behind one interface. */
#ifndef QD_RUNNER_H
#define QD_RUNNER_H

#include "quant/fp/forward.h"
#include "quant/rt/runtime.h"
#include "quant/text/tokenizer.h"

typedef struct runner {
    const char *kind;      /* "fp32" or "int" */
    int vocab_size;
    int ctx;               /* the model's context in tokens (its config's max_seq_len) */
    qd_model *m;           /* fp32 */
    qd_fwd_ws *ws;
    qd_kv *kv;
    qd_qrt *rt;            /* int */
    qd_qrt_kv *qkv;
} runner;

/* Opens path: a name ending in .qint.safetensors is an integer artifact, anything else a
 * checkpoint. threads: the integer runtime's (qd_qrt_opts.threads, 0 = all CPUs). QD_ERR with
 * err set. */
int runner_open(runner *r, const char *path, int threads, qd_err *err);
void runner_close(runner *r);

/* The tokenizer for what r runs (see qd_tok_resolve). */
qd_tokenizer *runner_tokenizer(const runner *r, const char *path, const char *tok_path,
                               qd_err *err);

/* A qd_logits_fn over r (ctx = runner*). */
int runner_logits(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err);

/* Incremental decoding: prepare a cache for max_T positions, then one token per call. */
int runner_decode_init(runner *r, int max_T, qd_err *err);
int runner_decode(runner *r, int token, int pos, float *logits, qd_err *err);

#endif
