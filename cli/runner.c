/* FP32 checkpoint or integer artifact behind one interface for eval and generate. */
#include "cli/runner.h"

#include <string.h>

#include "base/pool.h"
#include "base/str.h"
#include "quant/text/resolve.h"
#include "quant/io/load.h"

int runner_open(runner *r, const char *path, int threads, qd_err *err) {
    memset(r, 0, sizeof *r);
    if (qd_has_ext(path, ".qint.safetensors")) {
        r->kind = "int";
        qd_qrt_opts o;
        qd_qrt_defaults(&o);
        if (qd_pool_set_default(threads, err)) return QD_ERR;
        o.threads = 0; /* the default pool, of threads (0: all CPUs) */
        if (!(r->rt = qd_qrt_load(path, &o, err))) return QD_ERR;
        r->vocab_size = qd_qrt_model(r->rt)->cfg.vocab_size;
        r->ctx = qd_qrt_model(r->rt)->cfg.max_seq_len;
        return QD_OK;
    }
    r->kind = "fp32";
    if (!(r->m = qd_model_load(path, err))) return QD_ERR;
    if (!(r->ws = qd_fwd_ws_new())) {
        runner_close(r);
        return qd_errf(err, "out of memory");
    }
    r->vocab_size = r->m->cfg.vocab_size;
    r->ctx = r->m->cfg.max_seq_len;
    return QD_OK;
}

void runner_close(runner *r) {
    qd_kv_free(r->kv);
    qd_fwd_ws_free(r->ws);
    qd_model_free(r->m);
    qd_qrt_kv_free(r->qkv);
    qd_qrt_free(r->rt);
    memset(r, 0, sizeof *r);
}

qd_tokenizer *runner_tokenizer(const runner *r, const char *path, const char *tok_path,
                               qd_err *err) {
    return qd_tok_resolve(r->m ? r->m->vocab : NULL, r->vocab_size, path, tok_path, err);
}

int runner_logits(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err) {
    runner *r = ctx;
    if (r->rt) return qd_qrt_logits_fn(r->rt, tokens, B, T, logits, err);
    return qd_forward_ws(r->m, r->ws, tokens, B, T, logits, err);
}

int runner_decode_init(runner *r, int max_T, qd_err *err) {
    if (r->rt) return (r->qkv = qd_qrt_kv_new(r->rt, max_T, err)) ? QD_OK : QD_ERR;
    return (r->kv = qd_kv_new(r->m, max_T, err)) ? QD_OK : QD_ERR;
}

int runner_decode(runner *r, int token, int pos, float *logits, qd_err *err) {
    if (r->rt) return qd_qrt_decode_step(r->rt, r->qkv, token, pos, logits, err);
    return qd_decode_step(r->m, r->kv, token, pos, logits, err);
}
