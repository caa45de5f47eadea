/* FP32 inference forward. The batched path runs every matmul through cblas_sgemm; the
 * reference path is plain loops over the same buffers, kept for tests. Activations are
 * row-major (tokens, features); weights are [out][in] so y = x W^T. RoPE is rotate-half over
 * the first qd_rot_dim dims of a head. The family switches of the config choose the norm
 * (RMSNorm or LayerNorm with bias), the MLP activation (SiLU or tanh GELU) and the embedding
 * scale; the three paths below share them through norm(), embed() and qd_act_real. The batched
 * path runs its row and element loops (norms, embedding, bias, RoPE, residuals, the gated
 * activation) on the default pool in fixed chunks (base/par.h): elementwise, so any thread
 * count gives the same bits. */
#include "quant/fp/forward.h"
#include "base/par.h"
#include "base/stop.h"
#include "base/sys.h"
#include "quant/fp/layers.h"
#include "quant/fp/lse.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int check_tokens(const qd_model *m, const int *tokens, size_t n, qd_err *err) {
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return qd_errf(err, "forward: token %d at index %zu outside vocabulary of %d",
                           tokens[i], i, m->cfg.vocab_size);
    return QD_OK;
}

void qd_rope_tables(const qd_config *c, int T, float *cos_t, float *sin_t) {
    int rot = qd_rot_dim(c);
    for (int i = 0; i < rot / 2; i++)
        qd_rope_column(cos_t, sin_t, T, rot, i, qd_rope_inv_freq(c, i));
}

/* The batched path's row and element loops (one job type; the fields each loop reads). */
typedef struct fw_job {
    const qd_config *c;
    const qd_model *m;
    float *out, *out2;
    const float *x, *w, *b, *u, *cs, *sn;
    const int *tokens;
    int T, cols;
} fw_job;

static void norm_r(const void *p, size_t lo, size_t hi) {
    const fw_job *J = p;
    size_t D = (size_t)J->c->dim;
    qd_norm_rows(J->c->norm, J->out + lo * D, NULL, NULL, J->x + lo * D, J->w, J->b, hi - lo,
                 J->c->dim, J->c->norm_eps);
}

/* out (N, dim) = the model's norm of x with weight w and bias b (NULL for RMSNorm) */
static void norm(const qd_config *c, float *out, const float *x, const float *w, const float *b,
                 size_t N) {
    fw_job J = {.c = c, .out = out, .x = x, .w = w, .b = b};
    par_for(N, par_rows((size_t)c->dim), norm_r, &J);
}

/* x (dim) = the embedding row of token, times the family's embedding scale */
static void embed(const qd_model *m, float *x, int token) {
    int D = m->cfg.dim;
    float s = qd_emb_scale(&m->cfg);
    const float *e = m->tok_emb + (size_t)token * D;
    for (int i = 0; i < D; i++) x[i] = e[i] * s;
}

static void embed_r(const void *p, size_t lo, size_t hi) {
    const fw_job *J = p;
    for (size_t n = lo; n < hi; n++) embed(J->m, J->out + n * J->m->cfg.dim, J->tokens[n]);
}

static void bias_r(const void *p, size_t lo, size_t hi) {
    const fw_job *J = p;
    for (size_t n = lo; n < hi; n++)
        for (int o = 0; o < J->cols; o++) J->out[n * J->cols + o] += J->b[o];
}

/* y (N, out) = x (N, in) W^T (+ b) */
static void linear(float *y, const float *x, const float *W, const float *b, int N, int out,
                   int in) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x, in, W, in, 0.0f,
                y, out);
    if (b) {
        fw_job J = {.out = y, .b = b, .cols = out};
        par_for((size_t)N, par_rows((size_t)out), bias_r, &J);
    }
}

/* out += x */
static void add_r(const void *p, size_t lo, size_t hi) {
    const fw_job *J = p;
    for (size_t i = lo; i < hi; i++) J->out[i] += J->x[i];
}

/* out = act(out) * u */
static void glu_r(const void *p, size_t lo, size_t hi) {
    const fw_job *J = p;
    int act = J->c->act;
    for (size_t i = lo; i < hi; i++) J->out[i] = qd_act_real(act, J->out[i]) * J->u[i];
}

/* RoPE of rows [lo, hi) of q (out) and k (out2), in place */
static void rope_r(const void *p, size_t lo, size_t hi) {
    const fw_job *J = p;
    const qd_config *c = J->c;
    int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd, rot = qd_rot_dim(c);
    float *k = J->out2;
    for (size_t n = lo; n < hi; n++) {
        int t = (int)(n % (size_t)J->T);
        qd_rope_rotate(J->out + n * qd, J->out + n * qd, J->cs, J->sn, t, c->n_heads, hd, rot);
        qd_rope_rotate(k + n * kvd, k + n * kvd, J->cs, J->sn, t, c->n_kv_heads, hd, rot);
    }
}

/* Query rows per causal attention block in qd_forward_ws; bench/bench_forward.c counts
 * FLOPs with the same value. */
#define QD_ATTN_QBLOCK 64

struct qd_fwd_ws {
    float *mem;
    size_t cap;   /* floats */
};

qd_fwd_ws *qd_fwd_ws_new(void) { return calloc(1, sizeof(qd_fwd_ws)); }

void qd_fwd_ws_free(qd_fwd_ws *ws) {
    if (!ws) return;
    free(ws->mem);
    free(ws);
}

int qd_forward(const qd_model *m, const int *tokens, int B, int T, float *logits, qd_err *err) {
    qd_fwd_ws ws = {0};
    int rc = qd_forward_ws(m, &ws, tokens, B, T, logits, err);
    free(ws.mem);
    return rc;
}

int qd_forward_ws(const qd_model *m, qd_fwd_ws *ws, const int *tokens, int B, int T,
                  float *logits, qd_err *err) {
    const qd_config *c = &m->cfg;
    if (B <= 0 || T <= 0) return qd_errf(err, "forward: empty batch");
    size_t N = (size_t)B * T;
    if (check_tokens(m, tokens, N, err)) return QD_ERR;
    int D = c->dim, hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads, F = c->hidden_dim;
    int qd = H * hd, kvd = KV * hd, group = H / KV;
    int QB = T < QD_ATTN_QBLOCK ? T : QD_ATTN_QBLOCK;
    size_t fl = N * D * 2 + N * qd * 2 + N * kvd * 2 + N * F * 2 + (size_t)QB * T +
                (size_t)T * hd;
    if (ws->cap < fl) {
        free(ws->mem);
        ws->cap = 0;
        if (!(ws->mem = malloc(fl * sizeof(float))))
            return qd_errf(err, "forward: out of memory for %zu tokens", N);
        ws->cap = fl;
    }
    float *mem = ws->mem;
    float *x = mem, *xn = x + N * D, *q = xn + N * D, *att = q + N * qd, *k = att + N * qd,
          *v = k + N * kvd, *g = v + N * kvd, *u = g + N * F, *P = u + N * F,
          *cs = P + (size_t)QB * T, *sn = cs + (size_t)T * hd / 2;
    qd_rope_tables(c, T, cs, sn);
    fw_job E = {.m = m, .out = x, .tokens = tokens};
    par_for(N, par_rows((size_t)D), embed_r, &E);
    float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < c->n_layers; l++) {
        if (qd_stop_requested()) return qd_stopped(err);
        const qd_layer *L = &m->layers[l];
        norm(c, xn, x, L->attn_norm, L->attn_norm_b, N);
        linear(q, xn, L->wq, L->bq, N, qd, D);
        linear(k, xn, L->wk, L->bk, N, kvd, D);
        linear(v, xn, L->wv, L->bv, N, kvd, D);
        fw_job R = {.c = c, .out = q, .out2 = k, .cs = cs, .sn = sn, .T = T};
        par_for(N, par_rows((size_t)(qd + kvd)), rope_r, &R);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++) {
                const float *qh = q + (size_t)b * T * qd + h * hd;
                const float *kh = k + (size_t)b * T * kvd + (h / group) * hd;
                const float *vh = v + (size_t)b * T * kvd + (h / group) * hd;
                float *oh = att + (size_t)b * T * qd + h * hd;
                /* Causal blocks: query rows [i0, i1) see keys [0, i1) only, so the
                 * scores above the diagonal block are never computed. P (i1 - i0, i1) =
                 * q_h[i0:i1] k_h[0:i1]^T; inside the diagonal block the upper triangle is
                 * computed and zeroed (one sgemm beats per-row gemv at these sizes). */
                for (int i0 = 0; i0 < T; i0 += QB) {
                    int i1 = i0 + QB < T ? i0 + QB : T, rows = i1 - i0;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, i1, hd, scale,
                                qh + (size_t)i0 * qd, qd, kh, kvd, 0.0f, P, i1);
                    for (int r = 0; r < rows; r++) {
                        float *row = P + (size_t)r * i1;
                        int len = i0 + r + 1;
                        qd_softmax_row(row, row, len);
                        for (int j = len; j < i1; j++) row[j] = 0.0f;
                    }
                    /* o_h[i0:i1] (rows, hd) = P (rows, i1) v_h[0:i1] (i1, hd) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, i1, 1.0f,
                                P, i1, vh, kvd, 0.0f, oh + (size_t)i0 * qd, qd);
                }
            }
        linear(xn, att, L->wo, NULL, N, D, qd);
        fw_job A = {.out = x, .x = xn};
        par_for(N * D, PAR_ELEMS, add_r, &A);
        norm(c, xn, x, L->ffn_norm, L->ffn_norm_b, N);
        linear(g, xn, L->w_gate, NULL, N, F, D);
        linear(u, xn, L->w_up, NULL, N, F, D);
        fw_job G = {.c = c, .out = g, .u = u};
        par_for(N * F, PAR_ELEMS, glu_r, &G);
        linear(xn, g, L->w_down, NULL, N, D, F);
        par_for(N * D, PAR_ELEMS, add_r, &A);
    }
    norm(c, xn, x, m->final_norm, m->final_norm_b, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, c->vocab_size, D, 1.0f, xn, D,
                m->lm_head, D, 0.0f, logits, c->vocab_size);
    return QD_OK;
}

/* ---- reference: plain loops, one token at a time, no BLAS ---- */

static void matvec_ref(float *y, const float *W, const float *b, const float *x, int out,
                       int in) {
    for (int o = 0; o < out; o++) {
        float s = b ? b[o] : 0.0f;
        for (int i = 0; i < in; i++) s += W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

int qd_forward_ref(const qd_model *m, const int *tokens, int B, int T, float *logits,
                   qd_err *err) {
    const qd_config *c = &m->cfg;
    if (B <= 0 || T <= 0) return qd_errf(err, "forward: empty batch");
    if (check_tokens(m, tokens, (size_t)B * T, err)) return QD_ERR;
    int D = c->dim, hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads, F = c->hidden_dim;
    int qd = H * hd, kvd = KV * hd;
    size_t L = c->n_layers;
    float *x = malloc(sizeof(float) * (D * 3 + qd * 2 + F * 2 + T));
    float *kc = malloc(sizeof(float) * L * T * kvd), *vc = malloc(sizeof(float) * L * T * kvd);
    int rot = qd_rot_dim(c);
    float *cs = malloc(sizeof(float) * T * rot / 2), *sn = malloc(sizeof(float) * T * rot / 2);
    if (!x || !kc || !vc || !cs || !sn) {
        free(x), free(kc), free(vc), free(cs), free(sn);
        return qd_errf(err, "forward_ref: out of memory");
    }
    float *xn = x + D, *tmp = xn + D, *q = tmp + D, *att = q + qd, *g = att + qd, *u = g + F,
          *p = u + F;
    qd_rope_tables(c, T, cs, sn);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            embed(m, x, tokens[b * T + t]);
            for (size_t l = 0; l < L; l++) {
                const qd_layer *Ly = &m->layers[l];
                float *kt = kc + (l * T + t) * kvd, *vt = vc + (l * T + t) * kvd;
                norm(c, xn, x, Ly->attn_norm, Ly->attn_norm_b, 1);
                matvec_ref(q, Ly->wq, Ly->bq, xn, qd, D);
                matvec_ref(kt, Ly->wk, Ly->bk, xn, kvd, D);
                matvec_ref(vt, Ly->wv, Ly->bv, xn, kvd, D);
                qd_rope_rotate(q, q, cs, sn, t, H, hd, rot);
                qd_rope_rotate(kt, kt, cs, sn, t, KV, hd, rot);
                for (int h = 0; h < H; h++) {
                    int kh = h / (H / KV);
                    for (int j = 0; j <= t; j++) {
                        const float *kj = kc + (l * T + j) * kvd + kh * hd;
                        float s = 0;
                        for (int i = 0; i < hd; i++) s += q[h * hd + i] * kj[i];
                        p[j] = s / sqrtf((float)hd);
                    }
                    qd_softmax_row(p, p, t + 1);
                    for (int i = 0; i < hd; i++) {
                        float s = 0;
                        for (int j = 0; j <= t; j++) s += p[j] * vc[(l * T + j) * kvd + kh * hd + i];
                        att[h * hd + i] = s;
                    }
                }
                matvec_ref(tmp, Ly->wo, NULL, att, D, qd);
                for (int i = 0; i < D; i++) x[i] += tmp[i];
                norm(c, xn, x, Ly->ffn_norm, Ly->ffn_norm_b, 1);
                matvec_ref(g, Ly->w_gate, NULL, xn, F, D);
                matvec_ref(u, Ly->w_up, NULL, xn, F, D);
                for (int i = 0; i < F; i++) g[i] = qd_act_real(c->act, g[i]) * u[i];
                matvec_ref(tmp, Ly->w_down, NULL, g, D, F);
                for (int i = 0; i < D; i++) x[i] += tmp[i];
            }
            norm(c, xn, x, m->final_norm, m->final_norm_b, 1);
            matvec_ref(logits + ((size_t)b * T + t) * c->vocab_size, m->lm_head, NULL, xn,
                       c->vocab_size, D);
        }
    free(x), free(kc), free(vc), free(cs), free(sn);
    return QD_OK;
}

/* ---- KV-cache decoding ---- */

struct qd_kv {
    int max_T;
    float *k, *v;          /* (n_layers, max_T, kv_dim) */
    float *cs, *sn;        /* RoPE tables for max_T positions */
    float *scratch;
};

qd_kv *qd_kv_new(const qd_model *m, int max_T, qd_err *err) {
    const qd_config *c = &m->cfg;
    if (max_T <= 0 || max_T > QD_MAX_CTX) {
        qd_errf(err, "kv cache: bad length %d", max_T);
        return NULL;
    }
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim;
    qd_kv *kv = calloc(1, sizeof *kv);
    if (kv) {
        kv->max_T = max_T;
        kv->k = malloc(sizeof(float) * c->n_layers * max_T * kvd);
        kv->v = malloc(sizeof(float) * c->n_layers * max_T * kvd);
        kv->cs = malloc(sizeof(float) * max_T * qd_rot_dim(c) / 2);
        kv->sn = malloc(sizeof(float) * max_T * qd_rot_dim(c) / 2);
        kv->scratch = malloc(sizeof(float) * (3 * c->dim + 2 * c->n_heads * c->head_dim +
                                              2 * c->hidden_dim + max_T));
    }
    if (!kv || !kv->k || !kv->v || !kv->cs || !kv->sn || !kv->scratch) {
        qd_kv_free(kv);
        qd_errf(err, "kv cache: out of memory for %d positions", max_T);
        return NULL;
    }
    qd_rope_tables(c, max_T, kv->cs, kv->sn);
    return kv;
}

void qd_kv_free(qd_kv *kv) {
    if (!kv) return;
    free(kv->k), free(kv->v), free(kv->cs), free(kv->sn), free(kv->scratch);
    free(kv);
}

static void gemv(float *y, const float *W, const float *b, const float *x, int out, int in) {
    if (b) memcpy(y, b, out * sizeof(float));
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, W, in, x, 1, b ? 1.0f : 0.0f, y, 1);
}

int qd_decode_step(const qd_model *m, qd_kv *kv, int token, int pos, float *logits,
                   qd_err *err) {
    const qd_config *c = &m->cfg;
    if (pos < 0 || pos >= kv->max_T)
        return qd_errf(err, "decode: position %d outside cache of %d", pos, kv->max_T);
    if (check_tokens(m, &token, 1, err)) return QD_ERR;
    int D = c->dim, hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads, F = c->hidden_dim;
    int qd = H * hd, kvd = KV * hd;
    float *x = kv->scratch, *xn = x + D, *tmp = xn + D, *q = tmp + D, *att = q + qd,
          *g = att + qd, *u = g + F, *p = u + F;
    embed(m, x, token);
    int rot = qd_rot_dim(c);
    float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < c->n_layers; l++) {
        const qd_layer *L = &m->layers[l];
        float *kl = kv->k + (size_t)l * kv->max_T * kvd, *vl = kv->v + (size_t)l * kv->max_T * kvd;
        norm(c, xn, x, L->attn_norm, L->attn_norm_b, 1);
        gemv(q, L->wq, L->bq, xn, qd, D);
        gemv(kl + (size_t)pos * kvd, L->wk, L->bk, xn, kvd, D);
        gemv(vl + (size_t)pos * kvd, L->wv, L->bv, xn, kvd, D);
        qd_rope_rotate(q, q, kv->cs, kv->sn, pos, H, hd, rot);
        float *kp = kl + (size_t)pos * kvd;
        qd_rope_rotate(kp, kp, kv->cs, kv->sn, pos, KV, hd, rot);
        for (int h = 0; h < H; h++) {
            int kh = h / (H / KV);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, pos + 1, hd, scale, kl + kh * hd, kvd,
                        q + h * hd, 1, 0.0f, p, 1);
            qd_softmax_row(p, p, pos + 1);
            cblas_sgemv(CblasRowMajor, CblasTrans, pos + 1, hd, 1.0f, vl + kh * hd, kvd, p, 1,
                        0.0f, att + h * hd, 1);
        }
        gemv(tmp, L->wo, NULL, att, D, qd);
        for (int i = 0; i < D; i++) x[i] += tmp[i];
        norm(c, xn, x, L->ffn_norm, L->ffn_norm_b, 1);
        gemv(g, L->w_gate, NULL, xn, F, D);
        gemv(u, L->w_up, NULL, xn, F, D);
        for (int i = 0; i < F; i++) g[i] = qd_act_real(c->act, g[i]) * u[i];
        gemv(tmp, L->w_down, NULL, g, D, F);
        for (int i = 0; i < D; i++) x[i] += tmp[i];
    }
    norm(c, xn, x, m->final_norm, m->final_norm_b, 1);
    gemv(logits, m->lm_head, NULL, xn, c->vocab_size, D);
    return QD_OK;
}

/* ---- perplexity ---- */

/* Adds -log softmax(row)[target] in double. */
static double nll_of(const float *row, int V, int target) {
    return qd_lse(row, V, NULL) - row[target];
}

/* The NLL of every predicting position of b windows of T tokens (logits lg) into nll, on the
 * pool: one position per item, so any thread count gives the same values. */
typedef struct nll_job {
    const float *lg;
    const int *win;
    int T, V;
    double *nll;
} nll_job;

static void nll_r(const void *p, size_t lo, size_t hi) {
    const nll_job *J = p;
    for (size_t q = lo; q < hi; q++) {
        size_t i = q / (size_t)(J->T - 1), t = q % (size_t)(J->T - 1);
        J->nll[q] = nll_of(J->lg + (i * (size_t)J->T + t) * (size_t)J->V, J->V,
                           J->win[i * (size_t)J->T + t + 1]);
    }
}

static double nll_sum(const float *lg, const int *win, int b, int T, int V, double *nll) {
    nll_job J = {lg, win, T, V, nll};
    size_t n = (size_t)b * (size_t)(T - 1);
    par_for(n, par_rows((size_t)V), nll_r, &J);
    double s = 0;
    for (size_t q = 0; q < n; q++) s += nll[q];
    return s;
}

int qd_eval_ppl(qd_logits_fn fn, void *ctx, int vocab, const int *ids, size_t n, int ctx_len,
                qd_eval_result *res, qd_err *err) {
    memset(res, 0, sizeof *res);
    if (ctx_len < 2) return qd_errf(err, "eval: context length %d < 2", ctx_len);
    if (n < 2) return qd_errf(err, "eval: %zu tokens, need at least 2", n);
    double t0 = qd_now();
    /* Several windows per call so the matmuls are wide enough to be efficient. */
    int B = ctx_len >= 2048 ? 1 : 2048 / ctx_len;
    size_t full = n / ctx_len;
    /* no more logits than the windows there are (the buffer is vocab floats per token) */
    if (full >= 1 && (size_t)B > full) B = (int)full;
    float *logits = qd_alloc_large(sizeof(float) * (size_t)B * ctx_len * vocab);
    double *nll = malloc(sizeof(double) * (size_t)B * ctx_len);
    if (!logits || !nll) {
        free(logits), free(nll);
        return qd_errf(err, "eval: out of memory");
    }
    double sum = 0;
    size_t count = 0;
    for (size_t w = 0; w < full; w += B) {
        int b = (int)(full - w < (size_t)B ? full - w : (size_t)B);
        const int *win = ids + w * ctx_len;
        if (fn(ctx, win, b, ctx_len, logits, err)) goto fail;
        sum += nll_sum(logits, win, b, ctx_len, vocab, nll);
        count += (size_t)b * (size_t)(ctx_len - 1);
    }
    size_t rest = n - full * ctx_len;
    if (rest >= 2) {
        const int *win = ids + full * ctx_len;
        if (fn(ctx, win, 1, (int)rest, logits, err)) goto fail;
        sum += nll_sum(logits, win, 1, (int)rest, vocab, nll);
        count += rest - 1;
    }
    free(logits);
    free(nll);
    res->tokens = count;
    res->nll = sum / (double)count;
    res->ppl = exp(res->nll);
    res->seconds = qd_now() - t0;
    return QD_OK;
fail:
    free(logits);
    free(nll);
    return QD_ERR;
}
