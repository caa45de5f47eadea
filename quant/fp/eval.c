/* Variant-vs-FP32 comparison (eval.h). Log-softmax in double: KL of two close distributions is
 * a small difference of large sums. */
#include "quant/fp/eval.h"
#include "base/sys.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int qd_fp32_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err) {
    return qd_forward((const qd_model *)ctx, tokens, B, T, logits, err);
}

/* log-softmax of one row into lp (double) */
static void logsoftmax(const float *x, int V, double *lp) {
    double mx = x[0];
    for (int i = 1; i < V; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < V; i++) s += exp((double)x[i] - mx);
    double lz = mx + log(s);
    for (int i = 0; i < V; i++) lp[i] = (double)x[i] - lz;
}

static int argmax(const float *x, int V) {
    int a = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[a]) a = i;
    return a;
}

int qd_eval_compare(qd_logits_fn ref, void *ref_ctx, qd_logits_fn var, void *var_ctx, int vocab,
                    const int *ids, size_t n, int ctx_len, qd_cmp_result *res, qd_err *err) {
    memset(res, 0, sizeof *res);
    if (ctx_len < 2) return qd_errf(err, "eval: context length %d < 2", ctx_len);
    if (n < 2) return qd_errf(err, "eval: %zu tokens, need at least 2", n);
    double t0 = qd_now();
    int same = ref == var && ref_ctx == var_ctx;
    int B = ctx_len >= 1024 ? 1 : 1024 / ctx_len;
    size_t cells = (size_t)B * ctx_len * vocab;
    float *lr = malloc(sizeof(float) * cells);
    float *lv = same ? lr : malloc(sizeof(float) * cells);
    double *pr = malloc(sizeof(double) * (size_t)vocab), *pv = malloc(sizeof(double) * (size_t)vocab);
    int rc = QD_ERR;
    if (!lr || !lv || !pr || !pv) {
        qd_errf(err, "eval: out of memory");
        goto out;
    }
    double nll = 0, kl = 0;
    size_t agree = 0, count = 0;
    size_t full = n / (size_t)ctx_len, rest = n - full * (size_t)ctx_len;
    /* full windows B at a time, then the remainder (when it predicts anything) */
    for (size_t w = 0;;) {
        int b, T = ctx_len;
        if (w < full) b = (int)(full - w < (size_t)B ? full - w : (size_t)B);
        else if (w == full && rest >= 2) b = 1, T = (int)rest;
        else break;
        const int *win = ids + w * (size_t)ctx_len;
        if (ref(ref_ctx, win, b, T, lr, err)) goto out;
        if (!same && var(var_ctx, win, b, T, lv, err)) goto out;
        for (int i = 0; i < b; i++)
            for (int t = 0; t + 1 < T; t++) {
                size_t row = ((size_t)i * T + t) * vocab;
                int next = win[(size_t)i * T + t + 1];
                logsoftmax(lv + row, vocab, pv);
                nll -= pv[next];
                if (!same) {
                    logsoftmax(lr + row, vocab, pr);
                    double k = 0;
                    for (int j = 0; j < vocab; j++) k += exp(pr[j]) * (pr[j] - pv[j]);
                    kl += k > 0 ? k : 0;
                    agree += argmax(lr + row, vocab) == argmax(lv + row, vocab);
                } else {
                    agree++;
                }
                count++;
            }
        w += (size_t)b;
    }
    res->tokens = count;
    res->nll = nll / (double)count;
    res->ppl = exp(res->nll);
    res->kl = kl / (double)count;
    res->top1 = (double)agree / (double)count;
    res->seconds = qd_now() - t0;
    rc = QD_OK;
out:
    free(lr);
    if (!same) free(lv);
    free(pr), free(pv);
    return rc;
}
