/* Variant-vs-FP32 comparison (eval.h). Log-probabilities in double, x - lz with the row's
 * log-normaliser lz from quant/fp/lse.h (vector exp, double sums): KL of two close
 * distributions is a small difference of large sums. qd_eval_ref_new and qd_eval_ref_compare run the positions of
 * a batch on the default pool with per-thread scratch and add their terms (and append the kept
 * tokens) in position order: the same results for any thread count. */
#include "quant/fp/eval.h"
#include "base/pool.h"
#include "base/stop.h"
#include "base/sys.h"
#include "quant/fp/lse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int qd_fp32_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err) {
    return qd_forward((const qd_model *)ctx, tokens, B, T, logits, err);
}

/* log-softmax of one row into lp (double) */
static void logsoftmax(const float *x, int V, double *lp) {
    double lz = qd_lse(x, V, NULL);
    for (int i = 0; i < V; i++) lp[i] = (double)x[i] - lz;
}

int qd_eval_batch(int ctx_len, int vocab) {
    int B = ctx_len >= 1024 ? 1 : 1024 / ctx_len;
    size_t most = QD_EVAL_BATCH_CELLS / ((size_t)ctx_len * (size_t)vocab);
    if ((size_t)B > most) B = most > 0 ? (int)most : 1;
    return B;
}

/* The windows of eval.h, b at a time from window w: 0 when there are none left. */
static int next_batch(size_t n, int ctx_len, int B, size_t w, int *b, int *T) {
    size_t full = n / (size_t)ctx_len, rest = n - full * (size_t)ctx_len;
    *T = ctx_len;
    if (w < full) *b = (int)(full - w < (size_t)B ? full - w : (size_t)B);
    else if (w == full && rest >= 2) *b = 1, *T = (int)rest;
    else return 0;
    return 1;
}

static int check_args(int ctx_len, size_t n, qd_err *err) {
    if (ctx_len < 2) return qd_errf(err, "eval: context length %d < 2", ctx_len);
    if (n < 2) return qd_errf(err, "eval: %zu tokens, need at least 2", n);
    return QD_OK;
}

static void finish(qd_cmp_result *res, double nll, double kl, size_t agree, size_t count,
                   double t0) {
    res->tokens = count;
    res->nll = nll / (double)count;
    res->ppl = exp(res->nll);
    res->kl = kl / (double)count;
    res->top1 = (double)agree / (double)count;
    res->seconds = qd_now() - t0;
}

int qd_eval_compare(qd_logits_fn ref, void *ref_ctx, qd_logits_fn var, void *var_ctx, int vocab,
                    const int *ids, size_t n, int ctx_len, qd_cmp_result *res, qd_err *err) {
    memset(res, 0, sizeof *res);
    if (check_args(ctx_len, n, err)) return QD_ERR;
    double t0 = qd_now();
    int same = ref == var && ref_ctx == var_ctx;
    int B = qd_eval_batch(ctx_len, vocab);
    size_t cells = (size_t)B * ctx_len * vocab;
    float *lr = qd_alloc_large(sizeof(float) * cells);
    float *lv = same ? lr : qd_alloc_large(sizeof(float) * cells);
    double *pr = malloc(sizeof(double) * (size_t)vocab), *pv = malloc(sizeof(double) * (size_t)vocab);
    int rc = QD_ERR;
    if (!lr || !lv || !pr || !pv) {
        qd_errf(err, "eval: out of memory");
        goto out;
    }
    double nll = 0, kl = 0;
    size_t agree = 0, count = 0;
    int b, T;
    for (size_t w = 0; next_batch(n, ctx_len, B, w, &b, &T); w += (size_t)b) {
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
                    agree += qd_argmax(lr + row, vocab) == qd_argmax(lv + row, vocab);
                } else {
                    agree++;
                }
                count++;
            }
    }
    finish(res, nll, kl, agree, count, t0);
    rc = QD_OK;
out:
    free(lr);
    if (!same) free(lv);
    free(pr), free(pv);
    return rc;
}

/* ---- the reference computed once ---------------------------------------------------------- */

struct qd_eval_ref {
    int vocab, ctx_len;
    const int *ids;   /* borrowed (qd_eval_ref_new) */
    size_t n, n_pos;
    int k_cap;        /* tokens kept at most per position (from the memory budget) */
    size_t *off;      /* n_pos + 1: position p keeps tok/lp[off[p] .. off[p+1]) */
    int32_t *top;     /* n_pos: the reference's argmax */
    int32_t *tok;     /* kept token ids */
    float *lp;        /* their log-probabilities under the reference */
    double *tail;     /* n_pos: the reference's probability of every token not kept */
    size_t cap;
    double tail_sum, tail_max;
};

typedef struct {
    float v;
    int32_t id;
} kv_t;

/* min-heap on v: its root is the smallest of the k largest seen */
static void heap_down(kv_t *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l].v < h[m].v) m = l;
        if (r < n && h[r].v < h[m].v) m = r;
        if (m == i) return;
        kv_t t = h[i];
        h[i] = h[m], h[m] = t;
        i = m;
    }
}

/* One row's kept tokens (x: logits, lz = qd_lse(x), mx its max): those whose probability is at
 * least QD_EVAL_TAIL / vocab, so the rest holds at most QD_EVAL_TAIL; when they are more than
 * k_cap, the k_cap most likely (a heap). Writes them to tok/lpk (k_cap each) and returns their
 * count; *rest gets the rest's mass. h: k_cap entries; mark: vocab bytes, zero on entry and on
 * exit. */
static int select_row(const qd_eval_ref *r, const float *x, double lz, float mx, kv_t *h,
                      unsigned char *mark, int32_t *tok, float *lpk, double *rest) {
    int V = r->vocab, K = r->k_cap, n = 0;
    double floor_lp = log(QD_EVAL_TAIL) - log((double)V);
    for (int j = 0; j < V; j++) {
        if ((double)x[j] - lz < floor_lp) continue;
        float v = x[j];
        if (n < K) {
            h[n++] = (kv_t){v, j};
            if (n == K)
                for (int i = K / 2 - 1; i >= 0; i--) heap_down(h, K, i);
        } else if (v > h[0].v) {
            h[0] = (kv_t){v, j};
            heap_down(h, K, 0);
        }
    }
    for (int i = 0; i < n; i++) {
        tok[i] = h[i].id, lpk[i] = (float)((double)x[h[i].id] - lz);
        mark[h[i].id] = 1;
    }
    /* the rest's mass summed over the rest, not as 1 - kept: it may be 1e-9 */
    double s = n < V ? qd_sumexp_unmarked(x, V, mx, mark) * exp((double)mx - lz) : 0;
    for (int i = 0; i < n; i++) mark[h[i].id] = 0;
    *rest = s;
    return n;
}

/* Appends position p's kept tokens (n of them), its argmax and the rest's mass. */
static int keep_row(qd_eval_ref *r, size_t p, const int32_t *tok, const float *lpk, int n,
                    int top, double rest) {
    size_t o = r->off[p];
    if (o + (size_t)n > r->cap) {
        size_t nc = r->cap ? r->cap * 2 : (size_t)4096;
        while (nc < o + (size_t)n) nc *= 2;
        int32_t *nt = realloc(r->tok, sizeof *nt * nc);
        if (!nt) return QD_ERR;
        r->tok = nt;
        float *nl = realloc(r->lp, sizeof *nl * nc);
        if (!nl) return QD_ERR;
        r->lp = nl, r->cap = nc;
    }
    memcpy(r->tok + o, tok, sizeof *tok * (size_t)n);
    memcpy(r->lp + o, lpk, sizeof *lpk * (size_t)n);
    r->top[p] = top;
    r->tail[p] = rest;
    r->tail_sum += rest;
    if (rest > r->tail_max) r->tail_max = rest;
    r->off[p + 1] = o + (size_t)n;
    return QD_OK;
}

/* A group of positions of qd_eval_ref_new's batch on the pool: position q0 + g of the batch
 * into slot g, with the running thread's scratch; the caller appends the slots in order. */
typedef struct ref_job {
    const qd_eval_ref *r;
    const float *lg;
    const int *win;
    int T, q0;
    kv_t **h;              /* per thread: k_cap */
    unsigned char **mark;  /* per thread: V, zero */
    int32_t *tok;          /* per slot: k_cap */
    float *lpk;            /* per slot: k_cap */
    int *n, *top;          /* per slot */
    double *rest, *nll;    /* per slot */
} ref_job;

static void ref_pos(void *ctx, int g, int tid) {
    const ref_job *J = ctx;
    const qd_eval_ref *r = J->r;
    int V = r->vocab, q = J->q0 + g, i = q / (J->T - 1), t = q % (J->T - 1);
    const float *x = J->lg + ((size_t)i * J->T + t) * V;
    float mx;
    double lz = qd_lse(x, V, &mx);
    J->nll[g] = (double)x[J->win[(size_t)i * J->T + t + 1]] - lz;
    size_t k = (size_t)g * (size_t)r->k_cap;
    J->n[g] = select_row(r, x, lz, mx, J->h[tid], J->mark[tid], J->tok + k, J->lpk + k, &J->rest[g]);
    J->top[g] = qd_argmax(x, V);
}

void qd_eval_ref_free(qd_eval_ref *r) {
    if (!r) return;
    free(r->off), free(r->top), free(r->tok), free(r->lp), free(r->tail);
    free(r);
}

/* windows in all: the full ones and the remainder when it predicts anything */
static long n_windows(size_t n, int ctx_len) {
    size_t full = n / (size_t)ctx_len;
    return (long)(full + (n - full * (size_t)ctx_len >= 2));
}

qd_eval_ref *qd_eval_ref_new(qd_logits_fn ref, void *ctx, int vocab, const int *ids, size_t n,
                             int ctx_len, size_t max_bytes, qd_eval_tick tick, void *tick_ctx,
                             qd_cmp_result *self, qd_err *err) {
    memset(self, 0, sizeof *self);
    if (check_args(ctx_len, n, err)) return NULL;
    double t0 = qd_now();
    qd_eval_ref *r = calloc(1, sizeof *r);
    int B = qd_eval_batch(ctx_len, vocab);
    qd_pool *pool = qd_pool_default();
    int nt = qd_pool_threads(pool), G = 0;
    float *lg = qd_alloc_large(sizeof(float) * (size_t)B * ctx_len * vocab);
    kv_t **h = calloc((size_t)nt, sizeof *h);
    unsigned char **mark = calloc((size_t)nt, sizeof *mark);
    int32_t *stok = NULL;
    float *slpk = NULL;
    int *sn = NULL, *stop = NULL;
    double *srest = NULL, *snll = NULL;
    int ok = 0;
    if (!r || !lg || !h || !mark) {
        qd_errf(err, "eval: out of memory");
        goto out;
    }
    r->vocab = vocab, r->ctx_len = ctx_len, r->ids = ids, r->n = n;
    /* every window predicts all its positions but its last */
    size_t full = n / (size_t)ctx_len, rest = n - full * (size_t)ctx_len;
    r->n_pos = full * (size_t)(ctx_len - 1) + (rest >= 2 ? rest - 1 : 0);
    size_t budget = max_bytes ? max_bytes : QD_EVAL_REF_BYTES;
    size_t per = budget / (r->n_pos ? r->n_pos : 1) / (sizeof(int32_t) + sizeof(float));
    r->k_cap = per >= (size_t)vocab ? vocab : per < QD_EVAL_MIN_KEPT ? QD_EVAL_MIN_KEPT : (int)per;
    if (r->k_cap > vocab) r->k_cap = vocab;
    r->off = calloc(r->n_pos + 1, sizeof *r->off);
    r->top = malloc(sizeof *r->top * (r->n_pos ? r->n_pos : 1));
    r->tail = malloc(sizeof *r->tail * (r->n_pos ? r->n_pos : 1));
    /* positions per group of slots: four per thread, the slots' kept tokens within 32 MiB
     * (at least one per thread) */
    G = 4 * nt;
    if ((size_t)G * (size_t)r->k_cap * 8 > ((size_t)32 << 20))
        G = (int)(((size_t)32 << 20) / ((size_t)r->k_cap * 8));
    if (G < nt) G = nt;
    stok = malloc(sizeof *stok * (size_t)G * (size_t)r->k_cap);
    slpk = malloc(sizeof *slpk * (size_t)G * (size_t)r->k_cap);
    sn = malloc(sizeof(int) * (size_t)G), stop = malloc(sizeof(int) * (size_t)G);
    srest = malloc(sizeof(double) * (size_t)G), snll = malloc(sizeof(double) * (size_t)G);
    if (!r->off || !r->top || !r->tail || !stok || !slpk || !sn || !stop || !srest || !snll) {
        qd_errf(err, "eval: out of memory");
        goto out;
    }
    for (int k = 0; k < nt; k++)
        if (!(h[k] = malloc(sizeof(kv_t) * (size_t)r->k_cap)) ||
            !(mark[k] = calloc((size_t)vocab, 1))) {
            qd_errf(err, "eval: out of memory");
            goto out;
        }
    double nll = 0;
    size_t p = 0;
    int b, T;
    for (size_t w = 0; next_batch(n, ctx_len, B, w, &b, &T); w += (size_t)b) {
        const int *win = ids + w * (size_t)ctx_len;
        if (ref(ctx, win, b, T, lg, err)) goto out;
        int nq = b * (T - 1);
        for (int q0 = 0; q0 < nq; q0 += G) {
            int ng = nq - q0 < G ? nq - q0 : G;
            ref_job J = {r, lg, win, T, q0, h, mark, stok, slpk, sn, stop, srest, snll};
            /* a group of fewer than ~2^16 logits is not worth waking the pool */
            qd_pool_run((size_t)ng * vocab >= ((size_t)1 << 16) ? pool : NULL, ng, ref_pos, &J);
            for (int g = 0; g < ng; g++, p++) {
                nll -= snll[g];
                size_t k = (size_t)g * (size_t)r->k_cap;
                if (keep_row(r, p, stok + k, slpk + k, sn[g], stop[g], srest[g])) {
                    qd_errf(err, "eval: out of memory for the reference");
                    goto out;
                }
            }
        }
        if (tick) tick(tick_ctx, (long)(w + (size_t)b), n_windows(n, ctx_len));
    }
    finish(self, nll, 0, p, p, t0);
    /* what the growth by doubling left over goes back */
    size_t used = r->off[r->n_pos];
    if (used > 0 && used < r->cap) {
        int32_t *ntk = realloc(r->tok, sizeof *ntk * used);
        if (ntk) r->tok = ntk;
        float *nl = realloc(r->lp, sizeof *nl * used);
        if (nl) r->lp = nl;
        if (ntk && nl) r->cap = used;
    }
    ok = 1;
out:
    for (int k = 0; k < nt; k++) {
        if (h) free(h[k]);
        if (mark) free(mark[k]);
    }
    free(lg), free(h), free(mark), free(stok), free(slpk);
    free(sn), free(stop), free(srest), free(snll);
    if (!ok) {
        qd_eval_ref_free(r);
        return NULL;
    }
    return r;
}

/* One batch of qd_eval_ref_compare: position q of the batch (window q / (T-1), token q % (T-1))
 * on whatever thread claims it, with that thread's scratch; its terms go to per-position slots
 * that the caller adds up in position order, so the sums are the one-thread loop's. */
typedef struct cmp_job {
    const qd_eval_ref *r;
    const float *lg;
    const int *win;
    int T;
    size_t p0;            /* the batch's first position */
    unsigned char **mark; /* per thread: V, zero */
    double *nll, *kl;     /* per position of the batch */
    unsigned char *agree;
} cmp_job;

static void cmp_pos(void *ctx, int q, int tid) {
    const cmp_job *J = ctx;
    const qd_eval_ref *r = J->r;
    int V = r->vocab, i = q / (J->T - 1), t = q % (J->T - 1);
    size_t p = J->p0 + (size_t)q;
    unsigned char *mark = J->mark[tid];
    const float *x = J->lg + ((size_t)i * J->T + t) * V;
    float mx;
    double lz = qd_lse(x, V, &mx);
    J->nll[q] = (double)x[J->win[(size_t)i * J->T + t + 1]] - lz;
    J->agree[q] = qd_argmax(x, V) == r->top[p];
    /* KL over the kept tokens, and the rest as one token of the two masses */
    size_t o = r->off[p], e = r->off[p + 1];
    double k = 0;
    for (size_t j = o; j < e; j++) {
        double lpr = r->lp[j];
        k += exp(lpr) * (lpr - ((double)x[r->tok[j]] - lz));
    }
    if (r->tail[p] > 0) {
        for (size_t j = o; j < e; j++) mark[r->tok[j]] = 1;
        double qt = qd_sumexp_unmarked(x, V, mx, mark) * exp((double)mx - lz);
        for (size_t j = o; j < e; j++) mark[r->tok[j]] = 0;
        k += r->tail[p] * (log(r->tail[p]) - log(qt > 1e-300 ? qt : 1e-300));
    }
    J->kl[q] = k > 0 ? k : 0;
}

int qd_eval_ref_compare(const qd_eval_ref *r, qd_logits_fn var, void *ctx, qd_eval_tick tick,
                        void *tick_ctx, qd_cmp_result *res, qd_err *err) {
    memset(res, 0, sizeof *res);
    double t0 = qd_now();
    int V = r->vocab, B = qd_eval_batch(r->ctx_len, V);
    size_t npos = (size_t)B * (size_t)(r->ctx_len - 1);
    qd_pool *pool = qd_pool_default();
    int nt = qd_pool_threads(pool);
    float *lg = qd_alloc_large(sizeof(float) * (size_t)B * r->ctx_len * V);
    unsigned char **mark = calloc((size_t)nt, sizeof *mark);
    double *pnll = malloc(sizeof(double) * npos), *pkl = malloc(sizeof(double) * npos);
    unsigned char *pag = malloc(npos);
    int rc = QD_ERR;
    if (!lg || !mark || !pnll || !pkl || !pag) {
        qd_errf(err, "eval: out of memory");
        goto out;
    }
    for (int k = 0; k < nt; k++)
        if (!(mark[k] = calloc((size_t)V, 1))) {
            qd_errf(err, "eval: out of memory");
            goto out;
        }
    double nll = 0, kl = 0;
    size_t agree = 0, p = 0;
    int b, T;
    for (size_t w = 0; next_batch(r->n, r->ctx_len, B, w, &b, &T); w += (size_t)b) {
        const int *win = r->ids + w * (size_t)r->ctx_len;
        if (var(ctx, win, b, T, lg, err)) goto out;
        int nq = b * (T - 1);
        cmp_job J = {r, lg, win, T, p, mark, pnll, pkl, pag};
        /* a batch of fewer than ~2^16 logits is not worth waking the pool */
        qd_pool_run((size_t)nq * V >= ((size_t)1 << 16) ? pool : NULL, nq, cmp_pos, &J);
        for (int q = 0; q < nq; q++, p++) {
            nll -= pnll[q];
            agree += pag[q];
            kl += pkl[q];
        }
        if (tick) tick(tick_ctx, (long)(w + (size_t)b), n_windows(r->n, r->ctx_len));
    }
    finish(res, nll, kl, agree, p, t0);
    rc = QD_OK;
out:
    for (int k = 0; mark && k < nt; k++) free(mark[k]);
    free(lg), free(mark), free(pnll), free(pkl), free(pag);
    return rc;
}

void qd_eval_ref_stats(const qd_eval_ref *r, qd_eval_ref_info *info) {
    info->bytes = sizeof *r + (r->n_pos + 1) * sizeof *r->off +
                  r->n_pos * (sizeof *r->top + sizeof *r->tail) +
                  r->cap * (sizeof *r->tok + sizeof *r->lp);
    info->positions = r->n_pos;
    info->kept_max = r->k_cap;
    info->kept_mean = r->n_pos ? (double)r->off[r->n_pos] / (double)r->n_pos : 0;
    info->tail_max = r->tail_max;
    info->tail_mean = r->n_pos ? r->tail_sum / (double)r->n_pos : 0;
}
