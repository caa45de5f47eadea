/* The fake-quantized model: forward and hand-written backward of every decoder layer with LET,
 * LWC and LRL (see qsim.h for the sites and the bit map). Weights are transformed and
 * fake-quantized into scratch buffers on the fly, in the forward and again in the backward,
 * rather than kept per layer: the elementwise work is small next to the matmuls and it keeps
 * the memory at one copy of the weights plus the saved activations. */
#include "quant/sim/fakequant.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "base/stop.h"
#include "base/par.h"

/* ---------------------------------------------------------------- tables */

static const int aclass_bits[QD_AC_COUNT] = {16, 8, 8, 8, 16, 16, 8, 16, 8, 8, 8, 16, 16};
static const int site_class[QD_AQ_PER_LAYER] = {
    QD_AC_NORM,   QD_AC_QKV,     QD_AC_QKV,    QD_AC_QKV,    QD_AC_QK_IN,  QD_AC_QK_IN,
    QD_AC_SCORE,  QD_AC_PROB,    QD_AC_PV,     QD_AC_OPROJ,  QD_AC_RES,    QD_AC_NORM,
    QD_AC_GATEUP, QD_AC_GATEUP,  QD_AC_SILU,   QD_AC_DOWN_IN, QD_AC_DOWN_OUT, QD_AC_RES};
static const char *const site_names[QD_AQ_PER_LAYER] = {
    "input_layernorm.output",   "self_attn.q_proj.output",  "self_attn.k_proj.output",
    "self_attn.v_proj.output",  "self_attn.q_rope.output",  "self_attn.k_rope.output",
    "self_attn.scores",         "self_attn.softmax.output", "self_attn.pv.output",
    "self_attn.o_proj.output",  "residual_attn.output",     "post_attention_layernorm.output",
    "mlp.gate_proj.output",     "mlp.up_proj.output",       "mlp.act_fn.output",
    "mlp.down_proj.input",      "mlp.down_proj.output",     "residual_mlp.output"};
static const char *const gsite_names[QD_AQG_COUNT] = {"model.embed_tokens.output",
                                                      "model.norm.output", "lm_head.output"};
static const int gsite_class[QD_AQG_COUNT] = {QD_AC_RES, QD_AC_HEAD, QD_AC_HEAD};
static const char *const wsite_names[QD_W_PER_LAYER] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

QD_API int qd_aclass_default_bits(int c) { return c >= 0 && c < QD_AC_COUNT ? aclass_bits[c] : 8; }
QD_API int qd_aq_site_class(int s) { return site_class[s]; }
QD_API int qd_aqg_class(int g) { return gsite_class[g]; }
QD_API const char *qd_aq_site_name(int s) { return site_names[s]; }
QD_API const char *qd_aqg_name(int g) { return gsite_names[g]; }
QD_API const char *qd_wsite_name(int w) { return wsite_names[w]; }

/* ---------------------------------------------------------------- private state */

struct qd_qact {
    qd_real *x, *mean1, *rstd1, *h1, *h1q, *q, *qq, *k, *kq, *v, *vq, *qr, *qrq, *kr, *krq, *S, *P;
    qd_real *o, *oq, *a, *aqq, *x2, *x2q, *mean2, *rstd2, *h2, *h2q, *g, *gq, *u, *uq, *sl, *slq;
    qd_real *m, *mq, *d, *dqq, *x3;
    qd_real *g1t, *g1h, *g2t, *g2h, *bvt;
    qd_real *b1t, *b1h, *b2t, *b2h;       /* LayerNorm biases: b / s and their 16-bit grid */
    size_t pos_aq[QD_AQ_PER_LAYER], pos_w[QD_W_PER_LAYER], pos_n1, pos_n2, pos_b1, pos_b2;
    int B, T;
};

struct qd_qsim_priv {
    void **allocs;
    size_t n_allocs, cap_allocs, bytes;
    qd_qact *acts;
    int n_acts;
    qd_real *scrA, *scrB, *scrC, *scrD;   /* weight-sized scratch */
    qd_real *tb[8];                       /* (N, max(D, F, QD)) backward temporaries */
    qd_real *nb0, *nb1, *nb2;             /* vector-sized scratch */
    qd_real *attn_scr;                    /* 2*T*T */
    qd_real *cos_t, *sin_t;
    const qd_real *tok_emb, *final_norm, *final_norm_b, *lm_head;
    qd_real *emb_hat, *head_hat;
    int hat_valid;
    qd_real *xa, *xb, *fn_h, *fn_bh, *fn_mean, *fn_rstd, *hf, *hfq;
    qd_real *lg;                          /* (N, vocab) logits in qd_real */
    size_t pos_g[QD_AQG_COUNT], pos_fn, pos_fnb;
    /* recompute (qd_qsim_opts): every layer's input (n_layers, N, D), the rounding cursor at
     * each layer's start (so that a recomputed forward takes the same slots), the recomputed
     * layer's output */
    qd_real **xin;
    size_t *cur0;
    qd_real *xc;
};

static void *palloc(struct qd_qsim_priv *P, size_t n_bytes) {
    if (P->n_allocs == P->cap_allocs) {
        size_t nc = P->cap_allocs ? 2 * P->cap_allocs : 64;
        void **na = realloc(P->allocs, nc * sizeof *na);
        if (!na) return NULL;
        P->allocs = na, P->cap_allocs = nc;
    }
    void *p = calloc(1, n_bytes ? n_bytes : 1);
    if (!p) return NULL;
    P->allocs[P->n_allocs++] = p;
    P->bytes += n_bytes;
    return p;
}

static qd_real *ralloc(struct qd_qsim_priv *P, size_t n, int *fail) {
    qd_real *p = palloc(P, n * sizeof(qd_real));
    if (!p) *fail = 1;
    return p;
}

/* Views of model weights as qd_real: the float model itself, or converted copies (double). */
static const qd_real *wview(struct qd_qsim_priv *P, const float *w, size_t n, int *fail) {
    if (!w) return NULL;
#ifdef QD_REAL_DOUBLE
    qd_real *c = ralloc(P, n, fail);
    if (c)
        for (size_t i = 0; i < n; i++) c[i] = w[i];
    return c;
#else
    (void)P, (void)n, (void)fail;
    return w;
#endif
}

static int aq_bits(const qd_qsim_opts *o, int aclass) {
    return o->abits[aclass] > 0 ? o->abits[aclass] : aclass_bits[aclass];
}

QD_API void qd_qsim_defaults(qd_qsim_opts *o) {
    memset(o, 0, sizeof *o);
    o->wbits = 8;
    o->let_vo = -1;
    o->let_ud = 1;
    o->head_bits = 8;
    o->Bmax = 1;
    o->Tmax = 256;
    o->train = 1;
}

/* ---------------------------------------------------------------- statistics */

QD_API qd_qstats *qd_qstats_new(const qd_config *c) {
    qd_qstats *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    size_t ns = (size_t)c->n_layers * QD_AQ_PER_LAYER + QD_AQG_COUNT;
    s->n_layers = c->n_layers, s->dim = c->dim, s->hidden = c->hidden_dim;
    s->qdim = c->n_heads * c->head_dim;
    s->mn = malloc(ns * sizeof(double));
    s->mx = malloc(ns * sizeof(double));
    s->ch_attn = calloc((size_t)c->n_layers * c->dim, sizeof(float));
    s->ch_ffn = calloc((size_t)c->n_layers * c->dim, sizeof(float));
    s->ch_down = calloc((size_t)c->n_layers * c->hidden_dim, sizeof(float));
    s->ch_o = calloc((size_t)c->n_layers * s->qdim, sizeof(float));
    s->sq_attn = calloc((size_t)c->n_layers * c->dim, sizeof(double));
    s->sq_ffn = calloc((size_t)c->n_layers * c->dim, sizeof(double));
    s->sq_down = calloc((size_t)c->n_layers * c->hidden_dim, sizeof(double));
    s->sq_o = calloc((size_t)c->n_layers * s->qdim, sizeof(double));
    if (!s->mn || !s->mx || !s->ch_attn || !s->ch_ffn || !s->ch_down || !s->ch_o ||
        !s->sq_attn || !s->sq_ffn || !s->sq_down || !s->sq_o) {
        qd_qstats_free(s);
        return NULL;
    }
    for (size_t i = 0; i < ns; i++) s->mn[i] = INFINITY, s->mx[i] = -INFINITY;
    return s;
}

QD_API void qd_qstats_free(qd_qstats *s) {
    if (!s) return;
    free(s->mn), free(s->mx), free(s->ch_attn), free(s->ch_ffn), free(s->ch_down), free(s->ch_o);
    free(s->sq_attn), free(s->sq_ffn), free(s->sq_down), free(s->sq_o);
    free(s);
}

/* The observers run on the pool (base/par.h): min/max per chunk, combined afterwards (the
 * same values in any order); the per-channel statistics per block of channels, each channel's
 * rows in order. */
typedef struct st_job {
    const qd_real *x;
    double *mn, *mx;   /* per chunk */
    float *ch;
    double *sq;
    size_t N, chunk;
    int C, T;
} st_job;

/* *mn, *mx = the minimum and maximum of x[0..n) and their values on entry (NaNs skipped). The
 * AVX2 version (chosen at run time, off with qd_ops_set_simd(0)) finds the same two values:
 * min and max do not depend on the order, and vminps/vmaxps return the running value when x is
 * a NaN, as the scalar comparisons skip it. */
static void minmax_scalar(const qd_real *x, size_t n, double *mn, double *mx) {
    double a = *mn, b = *mx;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < a) a = x[i];
        if (x[i] > b) b = x[i];
    }
    *mn = a, *mx = b;
}

#if defined(__x86_64__) && !defined(QD_REAL_DOUBLE)
#include <immintrin.h>
__attribute__((target("avx2"))) static void minmax_avx2(const float *x, size_t n, double *mn,
                                                        double *mx) {
    __m256 a = _mm256_set1_ps(INFINITY), b = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a = _mm256_min_ps(v, a), b = _mm256_max_ps(v, b);
    }
    float la[8], lb[8];
    _mm256_storeu_ps(la, a), _mm256_storeu_ps(lb, b);
    for (int k = 0; k < 8; k++) {
        if (la[k] < *mn) *mn = la[k];
        if (lb[k] > *mx) *mx = lb[k];
    }
    minmax_scalar(x + i, n - i, mn, mx);
}
#endif

static void minmax(const qd_real *x, size_t n, double *mn, double *mx) {
#if defined(__x86_64__) && !defined(QD_REAL_DOUBLE)
    if (n >= 8 && qd_ops_simd() && __builtin_cpu_supports("avx2")) {
        minmax_avx2(x, n, mn, mx);
        return;
    }
#endif
    minmax_scalar(x, n, mn, mx);
}

static void st_minmax_r(const void *p, size_t lo, size_t hi) {
    const st_job *J = p;
    size_t k = lo / PAR_ELEMS;
    double mn = INFINITY, mx = -INFINITY;
    minmax(J->x + lo, hi - lo, &mn, &mx);
    J->mn[k] = mn, J->mx[k] = mx;
}

/* Folds per-chunk minima and maxima into statistic idx. */
static void st_fold(qd_qstats *s, size_t idx, const double *mn, const double *mx, size_t nc) {
    for (size_t k = 0; k < nc; k++) {
        if (mn[k] < s->mn[idx]) s->mn[idx] = mn[k];
        if (mx[k] > s->mx[idx]) s->mx[idx] = mx[k];
    }
}

static void st_minmax(qd_qstats *s, size_t idx, const qd_real *x, size_t n) {
    double small[2 * 64];
    size_t nc = qd_pool_nchunks(n, PAR_ELEMS);
    double *part = par_part(n, PAR_ELEMS, 2, small, 2 * 64);
    st_job J = {.x = x, .mn = part, .mx = part + nc};
    par_for(n, PAR_ELEMS, st_minmax_r, &J);
    st_fold(s, idx, J.mn, J.mx, nc);
    par_part_free(part, small);
}

static void st_chmax_r(const void *p, size_t lo, size_t hi) {
    const st_job *J = p;
    for (size_t n = 0; n < J->N; n++)
        for (size_t c = lo; c < hi; c++) {
            double v = (double)J->x[n * J->C + c];
            float a = (float)fabs(v);
            if (a > J->ch[c]) J->ch[c] = a;
            J->sq[c] += v * v;
        }
}

/* per-channel max|x| into ch and Σx² into sq */
static void st_chmax(float *ch, double *sq, const qd_real *x, size_t N, int C) {
    st_job J = {.x = x, .ch = ch, .sq = sq, .N = N, .C = C};
    size_t cols = par_rows(N);
    par_for((size_t)C, cols < 64 ? 64 : cols, st_chmax_r, &J);
}

/* min/max over causal rows [lo, hi) of (B*nh*T) rows of T */
static void st_tri_r(const void *p, size_t lo, size_t hi) {
    const st_job *J = p;
    size_t k = lo / J->chunk, T = (size_t)J->T;
    double mn = INFINITY, mx = -INFINITY;
    for (size_t r = lo; r < hi; r++) {
        minmax(J->x + r * T, r % T + 1, &mn, &mx);
    }
    J->mn[k] = mn, J->mx[k] = mx;
}

/* min/max over the causal triangles of (B, nh, T, T) */
static void st_tri(qd_qstats *s, size_t idx, const qd_real *S, int BH, int T) {
    size_t rows = (size_t)BH * T, chunk = par_rows((size_t)(T + 1) / 2);
    size_t nc = qd_pool_nchunks(rows, chunk);
    double small[2 * 64];
    double *part = par_part(rows, chunk, 2, small, 2 * 64);
    st_job J = {.x = S, .mn = part, .mx = part + nc, .chunk = chunk, .T = T};
    par_for(rows, chunk, st_tri_r, &J);
    st_fold(s, idx, J.mn, J.mx, nc);
    par_part_free(part, small);
}

/* ---------------------------------------------------------------- construction */

static int alloc_act(struct qd_qsim_priv *P, qd_qact *A, const qd_config *c, int B, int T) {
    int f = 0;
    size_t N = (size_t)B * T, D = c->dim, F = c->hidden_dim;
    size_t QD = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    size_t TT = (size_t)B * c->n_heads * T * T;
    A->x = ralloc(P, N * D, &f), A->rstd1 = ralloc(P, N, &f), A->mean1 = ralloc(P, N, &f);
    A->h1 = ralloc(P, N * D, &f), A->h1q = ralloc(P, N * D, &f);
    A->q = ralloc(P, N * QD, &f), A->qq = ralloc(P, N * QD, &f);
    A->k = ralloc(P, N * KV, &f), A->kq = ralloc(P, N * KV, &f);
    A->v = ralloc(P, N * KV, &f), A->vq = ralloc(P, N * KV, &f);
    A->qr = ralloc(P, N * QD, &f), A->qrq = ralloc(P, N * QD, &f);
    A->kr = ralloc(P, N * KV, &f), A->krq = ralloc(P, N * KV, &f);
    A->S = ralloc(P, TT, &f), A->P = ralloc(P, TT, &f);
    A->o = ralloc(P, N * QD, &f), A->oq = ralloc(P, N * QD, &f);
    A->a = ralloc(P, N * D, &f), A->aqq = ralloc(P, N * D, &f);
    A->x2 = ralloc(P, N * D, &f), A->x2q = ralloc(P, N * D, &f), A->rstd2 = ralloc(P, N, &f);
    A->mean2 = ralloc(P, N, &f);
    A->h2 = ralloc(P, N * D, &f), A->h2q = ralloc(P, N * D, &f);
    A->g = ralloc(P, N * F, &f), A->gq = ralloc(P, N * F, &f);
    A->u = ralloc(P, N * F, &f), A->uq = ralloc(P, N * F, &f);
    A->sl = ralloc(P, N * F, &f), A->slq = ralloc(P, N * F, &f);
    A->m = ralloc(P, N * F, &f), A->mq = ralloc(P, N * F, &f);
    A->d = ralloc(P, N * D, &f), A->dqq = ralloc(P, N * D, &f), A->x3 = ralloc(P, N * D, &f);
    A->g1t = ralloc(P, D, &f), A->g1h = ralloc(P, D, &f);
    A->g2t = ralloc(P, D, &f), A->g2h = ralloc(P, D, &f), A->bvt = ralloc(P, KV, &f);
    A->b1t = ralloc(P, D, &f), A->b1h = ralloc(P, D, &f);
    A->b2t = ralloc(P, D, &f), A->b2h = ralloc(P, D, &f);
    return f ? QD_ERR : QD_OK;
}

static void init_aq(qd_aq *a, qd_real *p, qd_real *g, int bits) {
    a->s = p, a->z = p + 1, a->ds = g, a->dz = g + 1, a->bits = bits;
    qd_real Q = (qd_real)((1u << bits) - 1);
    *a->s = 2 / Q; /* the range [-1, 1] until calibration sets it */
    *a->z = 1 / *a->s;
}

QD_API qd_qsim *qd_qsim_new(const qd_model *m, const qd_qsim_opts *o, qd_err *err) {
    const qd_config *c = &m->cfg;
    if (o->wbits < 2 || o->wbits > 8 || o->Bmax < 1 || o->Tmax < 1 || o->Tmax > QD_MAX_CTX) {
        qd_errf(err, "%s: bad options (wbits %d, Bmax %d, Tmax %d)", __func__, o->wbits,
                o->Bmax, o->Tmax);
        return NULL;
    }
    if (c->n_heads % c->n_kv_heads || c->head_dim % 2) {
        qd_errf(err, "%s: n_heads %% n_kv_heads and head_dim must be even", __func__);
        return NULL;
    }
    for (int i = 0; i < QD_AC_COUNT; i++)
        if (o->abits[i] < 0 || o->abits[i] > 16) {
            qd_errf(err, "%s: activation bits for class %s must be 2..16", __func__,
                    qd_aclass_name(i));
            return NULL;
        }
    qd_qsim *q = calloc(1, sizeof *q);
    struct qd_qsim_priv *P = calloc(1, sizeof *P);
    if (!q || !P) {
        free(q), free(P);
        qd_errf(err, "%s: out of memory", __func__);
        return NULL;
    }
    q->priv = P;
    q->cfg = *c;
    q->o = *o;
    if (q->o.let_vo < 0) q->o.let_vo = c->n_kv_heads == c->n_heads;
    if (c->n_kv_heads != c->n_heads) q->o.let_vo = 0; /* v->o needs v's width == o's input */
    if (q->o.head_bits <= 0) q->o.head_bits = 8;
    q->let_on = q->wq_on = q->aq_on = q->lwc_on = 1;
    int nl = c->n_layers, D = c->dim, F = c->hidden_dim;
    int QD = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim;
    int f = 0;
    q->L = palloc(P, sizeof(qd_qlayer) * (size_t)nl);
    if (!q->L) f = 1;

    /* weight specs and parameter counts */
    size_t n_let = 0, n_lwc = 0;
    for (int l = 0; l < nl && !f; l++) {
        qd_qlayer *L = &q->L[l];
        int rows[QD_W_PER_LAYER] = {QD, KV, KV, D, F, F, D};
        int cols[QD_W_PER_LAYER] = {D, D, D, QD, D, D, F};
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            qd_wq_spec sp = {o->wbits, o->wbits < 8, o->wbits < 8 || w == QD_W_DOWN};
            if (o->wgran == QD_WGRAN_CHANNEL) sp.per_channel = 1;
            if (o->wgran == QD_WGRAN_TENSOR) sp.per_channel = 0;
            L->wspec[w] = sp;
            L->wrows[w] = rows[w], L->wcols[w] = cols[w];
            n_lwc += 2 * (size_t)(sp.per_channel ? rows[w] : 1);
        }
        n_let += 2 * (size_t)D + (q->o.let_ud ? F : 0) + (q->o.let_vo ? KV : 0);
    }
    size_t n_lrl = 2 * ((size_t)nl * QD_AQ_PER_LAYER + QD_AQG_COUNT);
    q->n_params = n_let + n_lwc + n_lrl;
    q->grp_off[0] = 0, q->grp_off[1] = n_let, q->grp_off[2] = n_let + n_lwc;
    q->grp_off[3] = q->n_params;
    q->p = ralloc(P, q->n_params, &f);
    q->g = ralloc(P, q->n_params, &f);
    if (f) goto fail;

    /* carve parameters */
    size_t off = 0;
    for (int l = 0; l < nl; l++) {
        qd_qlayer *L = &q->L[l];
        L->s_qkv = q->p + off, L->gs_qkv = q->g + off, off += D;
        L->s_gu = q->p + off, L->gs_gu = q->g + off, off += D;
        if (q->o.let_ud) L->s_ud = q->p + off, L->gs_ud = q->g + off, off += F;
        if (q->o.let_vo) L->s_vo = q->p + off, L->gs_vo = q->g + off, off += KV;
    }
    for (size_t i = 0; i < off; i++) q->p[i] = 1;
    for (int l = 0; l < nl; l++) {
        qd_qlayer *L = &q->L[l];
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            size_t n = L->wspec[w].per_channel ? (size_t)L->wrows[w] : 1;
            L->gam[w] = q->p + off, L->ggam[w] = q->g + off, off += n;
            L->bet[w] = q->p + off, L->gbet[w] = q->g + off, off += n;
        }
    }
    for (size_t i = q->grp_off[1]; i < off; i++) q->p[i] = 4;
    for (int l = 0; l < nl; l++)
        for (int s = 0; s < QD_AQ_PER_LAYER; s++, off += 2)
            init_aq(&q->L[l].aq[s], q->p + off, q->g + off, aq_bits(o, site_class[s]));
    for (int s = 0; s < QD_AQG_COUNT; s++, off += 2)
        init_aq(&q->aqg[s], q->p + off, q->g + off, aq_bits(o, gsite_class[s]));
    assert(off == q->n_params);

    /* weights */
    for (int l = 0; l < nl; l++) {
        qd_qlayer *L = &q->L[l];
        const qd_layer *ml = &m->layers[l];
        const float *src[QD_W_PER_LAYER] = {ml->wq, ml->wk, ml->wv, ml->wo,
                                            ml->w_gate, ml->w_up, ml->w_down};
        for (int w = 0; w < QD_W_PER_LAYER; w++)
            L->w[w] = wview(P, src[w], (size_t)L->wrows[w] * L->wcols[w], &f);
        L->attn_norm = wview(P, ml->attn_norm, D, &f);
        L->ffn_norm = wview(P, ml->ffn_norm, D, &f);
        L->attn_norm_b = wview(P, ml->attn_norm_b, D, &f);
        L->ffn_norm_b = wview(P, ml->ffn_norm_b, D, &f);
        L->bq = wview(P, ml->bq, QD, &f);
        L->bk = wview(P, ml->bk, KV, &f);
        L->bv = wview(P, ml->bv, KV, &f);
    }
    size_t VD = (size_t)c->vocab_size * D;
    P->tok_emb = wview(P, m->tok_emb, VD, &f);
    P->lm_head = c->tied_embeddings || m->lm_head == m->tok_emb ? P->tok_emb
                                                                : wview(P, m->lm_head, VD, &f);
    P->final_norm = wview(P, m->final_norm, D, &f);
    P->final_norm_b = wview(P, m->final_norm_b, D, &f);
    P->head_hat = ralloc(P, VD, &f);
    P->emb_hat = P->lm_head == P->tok_emb ? P->head_hat : ralloc(P, VD, &f);

    /* activations and scratch */
    int B = o->Bmax, T = o->Tmax;
    size_t N = (size_t)B * T;
    P->n_acts = o->train && !o->recompute ? nl : 1;
    P->acts = palloc(P, sizeof(qd_qact) * (size_t)P->n_acts);
    if (!P->acts) goto fail;
    for (int i = 0; i < P->n_acts; i++)
        if (alloc_act(P, &P->acts[i], c, B, T)) goto fail;
    size_t wmax = 0;
    for (int w = 0; w < QD_W_PER_LAYER; w++) {
        size_t n = (size_t)q->L[0].wrows[w] * q->L[0].wcols[w];
        if (n > wmax) wmax = n;
    }
    P->scrA = ralloc(P, wmax, &f), P->scrB = ralloc(P, wmax, &f);
    if (o->train) {
        P->scrC = ralloc(P, wmax, &f), P->scrD = ralloc(P, wmax, &f);
        size_t mw = (size_t)(D > F ? D : F);
        if ((size_t)QD > mw) mw = QD;
        for (int i = 0; i < 8; i++) P->tb[i] = ralloc(P, N * mw, &f);
        P->attn_scr = ralloc(P, 2 * (size_t)T * T, &f);
    } else {
        P->attn_scr = ralloc(P, (size_t)T * T, &f);
    }
    size_t vmax = (size_t)(D > QD ? D : QD) + (size_t)F;
    P->nb0 = ralloc(P, vmax, &f), P->nb1 = ralloc(P, vmax, &f), P->nb2 = ralloc(P, vmax, &f);
    int rot = qd_rot_dim(c);
    P->cos_t = ralloc(P, (size_t)T * rot / 2, &f);
    P->sin_t = ralloc(P, (size_t)T * rot / 2, &f);
    P->xa = ralloc(P, N * D, &f), P->xb = ralloc(P, N * D, &f);
    if (o->train && o->recompute) {
        P->xin = palloc(P, sizeof(qd_real *) * (size_t)nl);
        P->cur0 = palloc(P, sizeof(size_t) * (size_t)nl);
        if (!P->xin || !P->cur0) goto fail;
        for (int l = 0; l < nl; l++) P->xin[l] = ralloc(P, N * D, &f);
        P->xc = ralloc(P, N * D, &f);
    }
    P->fn_h = ralloc(P, D, &f), P->fn_bh = ralloc(P, D, &f), P->fn_rstd = ralloc(P, N, &f);
    P->fn_mean = ralloc(P, N, &f);
    P->hf = ralloc(P, N * D, &f), P->hfq = ralloc(P, N * D, &f);
#ifdef QD_REAL_DOUBLE
    P->lg = ralloc(P, N * c->vocab_size, &f);
#endif
    if (f) goto fail;
    {
        double *fr = malloc((size_t)(rot / 2) * sizeof *fr);
        if (!fr) goto fail;
        for (int i = 0; i < rot / 2; i++) fr[i] = qd_rope_inv_freq(c, i);
        qd_rope_table_freq(P->cos_t, P->sin_t, T, rot, fr);
        free(fr);
    }
    return q;
fail:
    qd_qsim_free(q);
    qd_errf(err, "%s: out of memory", __func__);
    return NULL;
}

QD_API void qd_qsim_free(qd_qsim *q) {
    if (!q) return;
    if (q->priv) {
        for (size_t i = 0; i < q->priv->n_allocs; i++) free(q->priv->allocs[i]);
        free(q->priv->allocs);
        free(q->priv);
    }
    free(q);
}

QD_API size_t qd_qsim_bytes(const qd_qsim *q) { return q->priv->bytes; }

QD_API void qd_qsim_zero_grad(qd_qsim *q) { memset(q->g, 0, q->n_params * sizeof(qd_real)); }

QD_API void qd_qsim_set_lwc(qd_qsim *q, float v) {
    for (size_t i = q->grp_off[QD_GRP_LWC]; i < q->grp_off[QD_GRP_LWC + 1]; i++) q->p[i] = v;
}

/* ---------------------------------------------------------------- helpers */

static qd_qact *act_of(qd_qsim *q, int l) {
    return &q->priv->acts[q->priv->n_acts > 1 ? l : 0];
}

/* LET scales of weight w: columns multiplied by c, rows divided by r. */
static void let_cr(qd_qlayer *L, int w, qd_real **c, qd_real **r, qd_real **gc, qd_real **gr) {
    *c = *r = *gc = *gr = NULL;
    switch (w) {
    case QD_W_Q: case QD_W_K: *c = L->s_qkv, *gc = L->gs_qkv; break;
    case QD_W_V: *c = L->s_qkv, *gc = L->gs_qkv, *r = L->s_vo, *gr = L->gs_vo; break;
    case QD_W_O: *c = L->s_vo, *gc = L->gs_vo; break;
    case QD_W_GATE: *c = L->s_gu, *gc = L->gs_gu; break;
    case QD_W_UP: *c = L->s_gu, *gc = L->gs_gu, *r = L->s_ud, *gr = L->gs_ud; break;
    case QD_W_DOWN: *c = L->s_ud, *gc = L->gs_ud; break;
    }
}

/* Weight w of layer l with the LET scales applied (into scratch A), or the stored weight itself
 * when LET is off or does not touch it. */
static const qd_real *let_weight(qd_qsim *q, int l, int w) {
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    qd_real *c, *r, *gc, *gr;
    let_cr(L, w, &c, &r, &gc, &gr);
    if (!q->let_on || !(c || r)) return L->w[w];
    qd_let_weight_forward(P->scrA, L->w[w], L->wrows[w], L->wcols[w], c, r);
    return P->scrA;
}

static void wfix_dequant(const qd_qlayer *L, int w, qd_real *out);

/* Ŵ of weight w (into scratch B; with the quantizer off, the LET-transformed weight or the
 * stored one). The LET transform is made inside the quantizer's passes and never stored. fwd:
 * take new rounding slots and the range of the transformed weight (forward), or reuse the
 * forward's (backward). */
static const qd_real *prep_weight(qd_qsim *q, int l, int w, int fwd) {
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    qd_qact *A = act_of(q, l);
    int rows = L->wrows[w], cols = L->wcols[w];
    if (q->wq_on && L->wfix[w]) { /* fixed integers: the LET of the source weight is not read */
        wfix_dequant(L, w, P->scrB);
        return P->scrB;
    }
    if (!q->wq_on) return let_weight(q, l, w);
    qd_real *c, *r, *gc, *gr;
    let_cr(L, w, &c, &r, &gc, &gr);
    if (!q->let_on) c = r = NULL;
    if (fwd) {
        A->pos_w[w] = qd_rctx_take(&q->rc, (size_t)rows * cols + rows);
        L->wrng[w].known = 0;
    }
    qd_wq_let_forward(P->scrB, L->w[w], rows, cols, c, r, L->wspec[w],
                      q->lwc_on ? L->gam[w] : NULL, q->lwc_on ? L->bet[w] : NULL, NULL, NULL,
                      &q->rc, A->pos_w[w], &L->wrng[w]);
    return P->scrB;
}

static void lin_fwd(qd_qsim *q, int l, int w, const qd_real *x, const qd_real *b, qd_real *y,
                    int N) {
    const qd_real *wh = prep_weight(q, l, w, 1);
    qd_linear_forward(y, x, wh, b, N, q->L[l].wcols[w], q->L[l].wrows[w]);
}

/* dX += dY Ŵ; and the gradients of LET and LWC through dŴ = dYᵀ X. */
static void lin_bwd(qd_qsim *q, int l, int w, const qd_real *x, const qd_real *dy, qd_real *dx,
                    int N) {
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    int rows = L->wrows[w], cols = L->wcols[w];
    const qd_real *wh = prep_weight(q, l, w, 0);
    if (dx) qd_linear_backward(dx, NULL, NULL, dy, x, wh, N, cols, rows);
    qd_real *c, *r, *gc, *gr;
    let_cr(L, w, &c, &r, &gc, &gr);
    int need_let = q->let_on && (c || r);
    int need_lwc = q->wq_on && q->lwc_on;
    if (q->wq_on && L->wfix[w]) return; /* fixed integers: nothing upstream of Ŵ is trained */
    if (!need_let && !need_lwc) return;
    size_t n = (size_t)rows * cols;
    par_zero(P->scrC, n * sizeof(qd_real));
    qd_linear_backward(NULL, P->scrC, NULL, dy, x, NULL, N, cols, rows);
    const qd_real *dwt = P->scrC;
    if (q->wq_on) {
        qd_wq_let_backward(P->scrD, q->lwc_on ? L->ggam[w] : NULL,
                           q->lwc_on ? L->gbet[w] : NULL, P->scrC, L->w[w], rows, cols,
                           need_let ? c : NULL, need_let ? r : NULL, L->wspec[w],
                           q->lwc_on ? L->gam[w] : NULL, q->lwc_on ? L->bet[w] : NULL, &q->rc,
                           act_of(q, l)->pos_w[w], &L->wrng[w], QD_QSIM_FAULT(q) == 1);
        dwt = P->scrD;
    }
    if (need_let) qd_let_weight_backward(gc, gr, dwt, L->w[w], rows, cols, c, r);
}

static void aqf(qd_qsim *q, int l, int site, qd_real *out, const qd_real *x, size_t n) {
    if (q->stats) st_minmax(q->stats, (size_t)l * QD_AQ_PER_LAYER + site, x, n);
    if (q->aq_on) {
        qd_qact *A = act_of(q, l);
        A->pos_aq[site] = qd_rctx_take(&q->rc, n + 1);
        qd_aq_forward(out, x, n, &q->L[l].aq[site], &q->rc, A->pos_aq[site]);
    } else if (out != x) {
        memcpy(out, x, n * sizeof(qd_real));
    }
}

/* dx = the STE backward of site's quantizer (written, not added). */
static void aqb(qd_qsim *q, int l, int site, qd_real *dx, const qd_real *dout, const qd_real *x,
                size_t n) {
    if (q->aq_on)
        qd_aq_backward(dx, dout, x, n, &q->L[l].aq[site], &q->rc, act_of(q, l)->pos_aq[site],
                       QD_QSIM_FAULT(q) == 2 ? 2 : 0);
    else
        memcpy(dx, dout, n * sizeof(qd_real));
}

static const qd_wq_spec norm_spec = {16, 0, 0};

/* Norm weight ĝ = wq16(g / s): t gets g/s, h gets ĝ. */
static void norm_w_fwd(qd_qsim *q, const qd_real *g, const qd_real *s, qd_real *t, qd_real *h,
                       size_t *pos, int D) {
    if (q->let_on && s) qd_let_div_forward(t, g, s, (size_t)D);
    else memcpy(t, g, sizeof(qd_real) * (size_t)D);
    if (q->wq_on) {
        *pos = qd_rctx_take(&q->rc, (size_t)D + 1);
        qd_wq_forward(h, t, 1, D, norm_spec, NULL, NULL, NULL, NULL, &q->rc, *pos);
    } else {
        memcpy(h, t, sizeof(qd_real) * (size_t)D);
    }
}

static void norm_w_bwd(qd_qsim *q, const qd_real *g, qd_real *s, qd_real *gs, const qd_real *t,
                       const qd_real *dh, size_t pos, int D) {
    if (!(q->let_on && s)) return;
    qd_real *dt = q->priv->nb1;
    if (q->wq_on)
        qd_wq_backward(dt, NULL, NULL, dh, t, 1, D, norm_spec, NULL, NULL, &q->rc, pos,
                       QD_QSIM_FAULT(q) == 1);
    else
        memcpy(dt, dh, sizeof(qd_real) * (size_t)D);
    if (QD_QSIM_FAULT(q) != 4) qd_let_div_backward(gs, dt, g, s, (size_t)D);
}

/* The model's norm (cfg.norm) of N rows: RMSNorm with weight w, or LayerNorm with weight w and
 * bias b (mean kept for the backward). */
static void norm_fwd(const qd_qsim *q, qd_real *out, qd_real *mean, qd_real *rstd,
                     const qd_real *x, const qd_real *w, const qd_real *b, int N) {
    if (q->cfg.norm == QD_NORM_LAYER)
        qd_layernorm_forward(out, mean, rstd, x, w, b, N, q->cfg.dim, q->cfg.norm_eps);
    else
        qd_rmsnorm_forward(out, rstd, x, w, N, q->cfg.dim, q->cfg.norm_eps);
}

/* dx +=, dw +=, db += (LayerNorm only) of norm_fwd */
static void norm_bwd(const qd_qsim *q, qd_real *dx, qd_real *dw, qd_real *db,
                     const qd_real *dout, const qd_real *x, const qd_real *w,
                     const qd_real *mean, const qd_real *rstd, int N) {
    if (q->cfg.norm == QD_NORM_LAYER)
        qd_layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, q->cfg.dim);
    else
        qd_rmsnorm_backward(dx, dw, dout, x, w, rstd, N, q->cfg.dim);
}

/* ---------------------------------------------------------------- layer forward */

QD_API void qd_qsim_layer_forward(qd_qsim *q, int l, const qd_real *x, qd_real *out, int B,
                                  int T) {
    qd_qsim_layer_forward_to(q, l, x, out, B, T, -1);
}

/* The layer forward in four parts, each ending at the input of the next weight group: the
 * attention (to o's input A->oq), o and the FFN norm (to gate/up's input A->h2q, with the
 * residual A->x2q), gate/up (to down's input A->mq) and down (to out). */
static void fwd_attn(qd_qsim *q, int l, int upto) {
    const qd_config *c = &q->cfg;
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    qd_qact *A = act_of(q, l);
    int B = A->B, T = A->T, N = B * T, D = c->dim, hd = c->head_dim;
    int nh = c->n_heads, nkv = c->n_kv_heads, QD = nh * hd, KV = nkv * hd;
    qd_qstats *st = q->stats;
    size_t sbase = (size_t)l * QD_AQ_PER_LAYER;

    /* a LayerNorm's bias is divided by the same LET scale as its weight: both feed q/k/v */
    norm_w_fwd(q, L->attn_norm, L->s_qkv, A->g1t, A->g1h, &A->pos_n1, D);
    if (L->attn_norm_b) norm_w_fwd(q, L->attn_norm_b, L->s_qkv, A->b1t, A->b1h, &A->pos_b1, D);
    norm_fwd(q, A->h1, A->mean1, A->rstd1, A->x, A->g1h, A->b1h, N);
    if (st) st_chmax(st->ch_attn + (size_t)l * D, st->sq_attn + (size_t)l * D, A->h1, N, D);
    aqf(q, l, QD_AQ_ATTN_NORM, A->h1q, A->h1, (size_t)N * D);
    if (upto == QD_W_Q || upto == QD_W_K || upto == QD_W_V) return;
    lin_fwd(q, l, QD_W_Q, A->h1q, L->bq, A->q, N);
    aqf(q, l, QD_AQ_Q, A->qq, A->q, (size_t)N * QD);
    lin_fwd(q, l, QD_W_K, A->h1q, L->bk, A->k, N);
    aqf(q, l, QD_AQ_K, A->kq, A->k, (size_t)N * KV);
    const qd_real *bv = L->bv;
    if (bv && q->let_on && L->s_vo) {
        qd_let_div_forward(A->bvt, L->bv, L->s_vo, (size_t)KV);
        bv = A->bvt;
    }
    lin_fwd(q, l, QD_W_V, A->h1q, bv, A->v, N);
    aqf(q, l, QD_AQ_V, A->vq, A->v, (size_t)N * KV);
    int rot = qd_rot_dim(c);
    qd_rope_forward(A->qr, A->qq, P->cos_t, P->sin_t, B, T, nh, hd, rot);
    aqf(q, l, QD_AQ_QROPE, A->qrq, A->qr, (size_t)N * QD);
    qd_rope_forward(A->kr, A->kq, P->cos_t, P->sin_t, B, T, nkv, hd, rot);
    aqf(q, l, QD_AQ_KROPE, A->krq, A->kr, (size_t)N * KV);
    size_t TT = (size_t)B * nh * T * T;
    const qd_aq *sq = NULL, *pq = NULL;
    if (q->aq_on) {
        sq = &L->aq[QD_AQ_SCORE], pq = &L->aq[QD_AQ_PROB];
        A->pos_aq[QD_AQ_SCORE] = qd_rctx_take(&q->rc, TT + 1);
        A->pos_aq[QD_AQ_PROB] = qd_rctx_take(&q->rc, TT + 1);
    }
    qd_attn_forward(A->o, A->S, A->P, A->qrq, A->krq, A->vq, B, T, nh, nkv, hd, sq, pq, &q->rc,
                    A->pos_aq[QD_AQ_SCORE], A->pos_aq[QD_AQ_PROB], P->attn_scr);
    if (st) {
        st_tri(st, sbase + QD_AQ_SCORE, A->S, B * nh, T);
        st_tri(st, sbase + QD_AQ_PROB, A->P, B * nh, T);
        st_chmax(st->ch_o + (size_t)l * QD, st->sq_o + (size_t)l * QD, A->o, N, QD);
    }
    aqf(q, l, QD_AQ_PV, A->oq, A->o, (size_t)N * QD);
}

static void fwd_o(qd_qsim *q, int l) {
    qd_qlayer *L = &q->L[l];
    qd_qact *A = act_of(q, l);
    int N = A->B * A->T, D = q->cfg.dim;
    qd_qstats *st = q->stats;
    lin_fwd(q, l, QD_W_O, A->oq, NULL, A->a, N);
    aqf(q, l, QD_AQ_O, A->aqq, A->a, (size_t)N * D);
    qd_add_forward(A->x2, A->x, A->aqq, (size_t)N * D);
    aqf(q, l, QD_AQ_RES1, A->x2q, A->x2, (size_t)N * D);
    norm_w_fwd(q, L->ffn_norm, L->s_gu, A->g2t, A->g2h, &A->pos_n2, D);
    if (L->ffn_norm_b) norm_w_fwd(q, L->ffn_norm_b, L->s_gu, A->b2t, A->b2h, &A->pos_b2, D);
    norm_fwd(q, A->h2, A->mean2, A->rstd2, A->x2q, A->g2h, A->b2h, N);
    if (st) st_chmax(st->ch_ffn + (size_t)l * D, st->sq_ffn + (size_t)l * D, A->h2, N, D);
    aqf(q, l, QD_AQ_FFN_NORM, A->h2q, A->h2, (size_t)N * D);
}

static void fwd_gate_up(qd_qsim *q, int l) {
    const qd_config *c = &q->cfg;
    qd_qact *A = act_of(q, l);
    int N = A->B * A->T, F = c->hidden_dim;
    qd_qstats *st = q->stats;
    lin_fwd(q, l, QD_W_GATE, A->h2q, NULL, A->g, N);
    aqf(q, l, QD_AQ_GATE, A->gq, A->g, (size_t)N * F);
    lin_fwd(q, l, QD_W_UP, A->h2q, NULL, A->u, N);
    aqf(q, l, QD_AQ_UP, A->uq, A->u, (size_t)N * F);
    qd_act_forward(c->act, A->sl, A->gq, (size_t)N * F);
    aqf(q, l, QD_AQ_SILU, A->slq, A->sl, (size_t)N * F);
    qd_mul_forward(A->m, A->slq, A->uq, (size_t)N * F);
    if (st) st_chmax(st->ch_down + (size_t)l * F, st->sq_down + (size_t)l * F, A->m, N, F);
    aqf(q, l, QD_AQ_DOWN_IN, A->mq, A->m, (size_t)N * F);
}

static void fwd_down(qd_qsim *q, int l, qd_real *out) {
    qd_qact *A = act_of(q, l);
    int N = A->B * A->T, D = q->cfg.dim;
    lin_fwd(q, l, QD_W_DOWN, A->mq, NULL, A->d, N);
    aqf(q, l, QD_AQ_DOWN, A->dqq, A->d, (size_t)N * D);
    qd_add_forward(A->x3, A->x2q, A->dqq, (size_t)N * D);
    aqf(q, l, QD_AQ_RES2, out, A->x3, (size_t)N * D);
}

/* The parts from weight group from's input (-1: the layer's input in A->x) up to upto's input
 * (-1: the whole layer into out). */
static void fwd_parts(qd_qsim *q, int l, qd_real *out, int from, int upto) {
    int part = from < 0 ? 0 : from == QD_W_O ? 1 : from == QD_W_DOWN ? 3 : 2;
    int last = upto < 0 ? 4 : upto == QD_W_O ? 1 : upto == QD_W_DOWN ? 3 : upto >= QD_W_GATE ? 2 : 0;
    if (part == 0) fwd_attn(q, l, upto);
    if (last == 0 || (part <= 1 && last == 1)) return;
    if (part <= 1) fwd_o(q, l);
    if (last == 2) return;
    if (part <= 2) fwd_gate_up(q, l);
    if (last == 3) return;
    fwd_down(q, l, out);
}

QD_API void qd_qsim_layer_forward_to(qd_qsim *q, int l, const qd_real *x, qd_real *out, int B,
                                     int T, int upto) {
    assert(B <= q->o.Bmax && T <= q->o.Tmax);
    qd_qact *A = act_of(q, l);
    A->B = B, A->T = T;
    memcpy(A->x, x, sizeof(qd_real) * (size_t)B * T * q->cfg.dim);
    fwd_parts(q, l, out, -1, upto);
}

QD_API void qd_qsim_layer_resume(qd_qsim *q, int l, int from, const qd_real *in,
                                 const qd_real *res, qd_real *out, int B, int T, int upto) {
    assert(B <= q->o.Bmax && T <= q->o.Tmax && from >= 0);
    assert(!q->o.train && !q->stats && q->rc.mode == QD_ROUND_OFF);
    const qd_config *c = &q->cfg;
    qd_qact *A = act_of(q, l);
    size_t N = (size_t)B * T;
    A->B = B, A->T = T;
    qd_real *ain = from == QD_W_O ? A->oq : from == QD_W_DOWN ? A->mq : A->h2q;
    int cols = q->L[l].wcols[from];
    memcpy(ain, in, sizeof(qd_real) * N * (size_t)cols);
    memcpy(from == QD_W_O ? A->x : A->x2q, res, sizeof(qd_real) * N * (size_t)c->dim);
    fwd_parts(q, l, out, from, upto);
}

QD_API const qd_real *qd_qsim_residual(const qd_qsim *q, int l, int *n_rows) {
    const qd_qact *A = act_of((qd_qsim *)q, l);
    *n_rows = A->B * A->T;
    return A->x2q;
}

/* ---------------------------------------------------------------- layer backward */

QD_API void qd_qsim_layer_backward(qd_qsim *q, int l, const qd_real *dout, qd_real *dx) {
    assert(q->o.train);
    const qd_config *c = &q->cfg;
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    qd_qact *A = act_of(q, l);
    int B = A->B, T = A->T, N = B * T, D = c->dim, F = c->hidden_dim, hd = c->head_dim;
    int nh = c->n_heads, nkv = c->n_kv_heads, QD = nh * hd, KV = nkv * hd;
    size_t ND = (size_t)N * D, NF = (size_t)N * F, NQ = (size_t)N * QD, NK = (size_t)N * KV;
    qd_real **tb = P->tb;
    qd_real *t0 = tb[0], *t1 = tb[1], *t2 = tb[2];

    /* out = q(x3), x3 = x2q + q(d) */
    aqb(q, l, QD_AQ_RES2, t0, dout, A->x3, ND);       /* t0 = dx3 */
    memcpy(t1, t0, ND * sizeof(qd_real));             /* t1 = dx2q (residual branch) */
    aqb(q, l, QD_AQ_DOWN, t2, t0, A->d, ND);          /* t2 = dd */
    qd_real *f0 = tb[3], *f1 = tb[4], *f2 = tb[5];
    par_zero(f0, NF * sizeof(qd_real));
    lin_bwd(q, l, QD_W_DOWN, A->mq, t2, f0, N);       /* f0 = dmq */
    aqb(q, l, QD_AQ_DOWN_IN, f1, f0, A->m, NF);       /* f1 = dm */
    par_zero(f0, NF * sizeof(qd_real));
    par_zero(f2, NF * sizeof(qd_real));
    qd_mul_backward(f0, f2, f1, A->slq, A->uq, NF);   /* f0 = dslq, f2 = duq */
    aqb(q, l, QD_AQ_SILU, f1, f0, A->sl, NF);         /* f1 = dsl */
    par_zero(f0, NF * sizeof(qd_real));
    qd_act_backward(c->act, f0, f1, A->gq, NF);       /* f0 = dgq */
    aqb(q, l, QD_AQ_GATE, f1, f0, A->g, NF);          /* f1 = dg */
    aqb(q, l, QD_AQ_UP, f0, f2, A->u, NF);            /* f0 = du */
    par_zero(t2, ND * sizeof(qd_real));
    lin_bwd(q, l, QD_W_GATE, A->h2q, f1, t2, N);      /* t2 = dh2q */
    lin_bwd(q, l, QD_W_UP, A->h2q, f0, t2, N);
    aqb(q, l, QD_AQ_FFN_NORM, t0, t2, A->h2, ND);     /* t0 = dh2 */
    qd_real *dgh = P->nb0, *dbh = P->nb2;
    memset(dgh, 0, sizeof(qd_real) * (size_t)D);
    memset(dbh, 0, sizeof(qd_real) * (size_t)D);
    norm_bwd(q, t1, dgh, dbh, t0, A->x2q, A->g2h, A->mean2, A->rstd2, N);
    norm_w_bwd(q, L->ffn_norm, L->s_gu, L->gs_gu, A->g2t, dgh, A->pos_n2, D);
    if (L->ffn_norm_b) norm_w_bwd(q, L->ffn_norm_b, L->s_gu, L->gs_gu, A->b2t, dbh, A->pos_b2, D);

    /* x2q = q(x2), x2 = x + q(a) */
    aqb(q, l, QD_AQ_RES1, t0, t1, A->x2, ND);         /* t0 = dx2 */
    if (dx) qd_add_backward(dx, NULL, t0, ND);
    aqb(q, l, QD_AQ_O, t1, t0, A->a, ND);             /* t1 = da */
    qd_real *q0 = tb[3], *q1 = tb[4], *k0 = tb[5], *k1 = tb[6], *k2 = tb[7];
    par_zero(q0, NQ * sizeof(qd_real));
    lin_bwd(q, l, QD_W_O, A->oq, t1, q0, N);          /* q0 = doq */
    aqb(q, l, QD_AQ_PV, q1, q0, A->o, NQ);            /* q1 = do */
    par_zero(q0, NQ * sizeof(qd_real));
    par_zero(k0, NK * sizeof(qd_real));
    par_zero(k1, NK * sizeof(qd_real));
    const qd_aq *sq = q->aq_on ? &L->aq[QD_AQ_SCORE] : NULL;
    const qd_aq *pq = q->aq_on ? &L->aq[QD_AQ_PROB] : NULL;
    qd_attn_backward(q0, k0, k1, q1, A->S, A->P, A->qrq, A->krq, A->vq, B, T, nh, nkv, hd, sq,
                     pq, &q->rc, A->pos_aq[QD_AQ_SCORE], A->pos_aq[QD_AQ_PROB], P->attn_scr,
                     QD_QSIM_FAULT(q));                /* q0 = dqrq, k0 = dkrq, k1 = dvq */
    aqb(q, l, QD_AQ_QROPE, q1, q0, A->qr, NQ);        /* q1 = dqr */
    aqb(q, l, QD_AQ_KROPE, k2, k0, A->kr, NK);        /* k2 = dkr */
    par_zero(q0, NQ * sizeof(qd_real));
    int rot = qd_rot_dim(c);
    qd_rope_backward(q0, q1, P->cos_t, P->sin_t, B, T, nh, hd, rot);   /* q0 = dqq */
    par_zero(k0, NK * sizeof(qd_real));
    qd_rope_backward(k0, k2, P->cos_t, P->sin_t, B, T, nkv, hd, rot);  /* k0 = dkq */
    aqb(q, l, QD_AQ_Q, q1, q0, A->q, NQ);             /* q1 = dq */
    aqb(q, l, QD_AQ_K, k2, k0, A->k, NK);             /* k2 = dk */
    aqb(q, l, QD_AQ_V, k0, k1, A->v, NK);             /* k0 = dv */
    if (L->bv && q->let_on && L->s_vo) {
        qd_real *db = P->nb0;
        memset(db, 0, sizeof(qd_real) * (size_t)KV);
        qd_linear_backward(NULL, NULL, db, k0, NULL, NULL, N, D, KV);
        qd_let_div_backward(L->gs_vo, db, L->bv, L->s_vo, (size_t)KV);
    }
    par_zero(t2, ND * sizeof(qd_real));
    lin_bwd(q, l, QD_W_Q, A->h1q, q1, t2, N);         /* t2 = dh1q */
    lin_bwd(q, l, QD_W_K, A->h1q, k2, t2, N);
    lin_bwd(q, l, QD_W_V, A->h1q, k0, t2, N);
    aqb(q, l, QD_AQ_ATTN_NORM, t0, t2, A->h1, ND);    /* t0 = dh1 */
    memset(dgh, 0, sizeof(qd_real) * (size_t)D);
    memset(dbh, 0, sizeof(qd_real) * (size_t)D);
    norm_bwd(q, dx, dgh, dbh, t0, A->x, A->g1h, A->mean1, A->rstd1, N);
    norm_w_bwd(q, L->attn_norm, L->s_qkv, L->gs_qkv, A->g1t, dgh, A->pos_n1, D);
    if (L->attn_norm_b)
        norm_w_bwd(q, L->attn_norm_b, L->s_qkv, L->gs_qkv, A->b1t, dbh, A->pos_b1, D);
}

/* ---------------------------------------------------------------- whole model */

QD_API void qd_qsim_forward_blocks(qd_qsim *q, const qd_real *x0, qd_real *out, int B, int T) {
    struct qd_qsim_priv *P = q->priv;
    size_t ND = (size_t)B * T * q->cfg.dim;
    const qd_real *in = x0;
    for (int l = 0; l < q->cfg.n_layers; l++) {
        if (qd_stop_requested()) return; /* the caller polls it too: out is not used */
        qd_real *o = l == q->cfg.n_layers - 1 ? out : (l % 2 ? P->xb : P->xa);
        if (P->xin) { /* recompute: what the backward needs to run this layer again */
            memcpy(P->xin[l], in, sizeof(qd_real) * ND);
            P->cur0[l] = q->rc.cursor;
        }
        qd_qsim_layer_forward(q, l, in, o, B, T);
        in = o;
    }
}

QD_API void qd_qsim_backward_blocks(qd_qsim *q, const qd_real *dout) {
    struct qd_qsim_priv *P = q->priv;
    qd_qact *A = act_of(q, 0);
    size_t ND = (size_t)A->B * A->T * q->cfg.dim;
    const qd_real *d = dout;
    for (int l = q->cfg.n_layers - 1; l >= 0; l--) {
        if (qd_stop_requested()) return; /* the caller polls it too: no step is taken */
        qd_real *dx = NULL;
        if (l > 0) {
            dx = (l % 2) ? P->xa : P->xb; /* ping-pong, never the buffer d points to */
            par_zero(dx, ND * sizeof(qd_real));
        }
        if (P->xin && l < q->cfg.n_layers - 1) {
            /* recompute: the one activation set holds the last layer run; run layer l again
             * from its saved input, on the same rounding slots (the same values) */
            size_t end = q->rc.cursor;
            q->rc.cursor = P->cur0[l];
            qd_qsim_layer_forward(q, l, P->xin[l], P->xc, A->B, A->T);
            q->rc.cursor = end;
        }
        qd_qsim_layer_backward(q, l, d, dx);
        d = dx;
    }
}

/* Quantized copies of the embedding table / LM head (8-bit per row, not trained). */
static void ensure_hats(qd_qsim *q) {
    struct qd_qsim_priv *P = q->priv;
    if (P->hat_valid) return;
    qd_wq_spec sp = {q->o.head_bits, 0, 1};
    int V = q->cfg.vocab_size, D = q->cfg.dim;
    qd_wq_forward(P->head_hat, P->lm_head, V, D, sp, NULL, NULL, NULL, NULL, NULL, 0);
    if (P->emb_hat != P->head_hat)
        qd_wq_forward(P->emb_hat, P->tok_emb, V, D, sp, NULL, NULL, NULL, NULL, NULL, 0);
    P->hat_valid = 1;
}

typedef struct emb_job {
    qd_real *x0;
    const qd_real *tab;
    const int *tokens;
    int D;
} emb_job;

static void emb_r(const void *p, size_t lo, size_t hi) {
    const emb_job *J = p;
    for (size_t i = lo; i < hi; i++)
        memcpy(J->x0 + i * J->D, J->tab + (size_t)J->tokens[i] * J->D, sizeof(qd_real) * J->D);
}

QD_API void qd_qsim_embed(qd_qsim *q, const int *tokens, int B, int T, qd_real *x0) {
    struct qd_qsim_priv *P = q->priv;
    int D = q->cfg.dim;
    size_t N = (size_t)B * T;
    const qd_real *tab = P->tok_emb;
    if (q->wq_on) {
        ensure_hats(q);
        tab = P->emb_hat;
    }
    emb_job J = {x0, tab, tokens, D};
    par_for(N, par_rows((size_t)D), emb_r, &J);
    if (q->cfg.emb_scale != 0) qd_scale_forward(x0, x0, (qd_real)q->cfg.emb_scale, N * D);
    size_t gi = (size_t)q->cfg.n_layers * QD_AQ_PER_LAYER + QD_AQG_EMB;
    if (q->stats) st_minmax(q->stats, gi, x0, N * D);
    if (q->aq_on) {
        P->pos_g[QD_AQG_EMB] = qd_rctx_take(&q->rc, N * D + 1);
        qd_aq_forward(x0, x0, N * D, &q->aqg[QD_AQG_EMB], &q->rc, P->pos_g[QD_AQG_EMB]);
    }
}

static void head_forward(qd_qsim *q, const qd_real *x, int N, qd_real *logits) {
    struct qd_qsim_priv *P = q->priv;
    int D = q->cfg.dim, V = q->cfg.vocab_size;
    size_t gi = (size_t)q->cfg.n_layers * QD_AQ_PER_LAYER;
    if (q->wq_on) {
        P->pos_fn = qd_rctx_take(&q->rc, (size_t)D + 1);
        qd_wq_forward(P->fn_h, P->final_norm, 1, D, norm_spec, NULL, NULL, NULL, NULL, &q->rc,
                      P->pos_fn);
        if (P->final_norm_b) {
            P->pos_fnb = qd_rctx_take(&q->rc, (size_t)D + 1);
            qd_wq_forward(P->fn_bh, P->final_norm_b, 1, D, norm_spec, NULL, NULL, NULL, NULL,
                          &q->rc, P->pos_fnb);
        }
        ensure_hats(q);
    } else {
        memcpy(P->fn_h, P->final_norm, sizeof(qd_real) * (size_t)D);
        if (P->final_norm_b) memcpy(P->fn_bh, P->final_norm_b, sizeof(qd_real) * (size_t)D);
    }
    norm_fwd(q, P->hf, P->fn_mean, P->fn_rstd, x, P->fn_h, P->fn_bh, N);
    if (q->stats) st_minmax(q->stats, gi + QD_AQG_HEAD_IN, P->hf, (size_t)N * D);
    const qd_real *hin = P->hf;
    if (q->aq_on) {
        P->pos_g[QD_AQG_HEAD_IN] = qd_rctx_take(&q->rc, (size_t)N * D + 1);
        qd_aq_forward(P->hfq, P->hf, (size_t)N * D, &q->aqg[QD_AQG_HEAD_IN], &q->rc,
                      P->pos_g[QD_AQG_HEAD_IN]);
        hin = P->hfq;
    }
    qd_linear_forward(logits, hin, q->wq_on ? P->head_hat : P->lm_head, NULL, N, D, V);
    if (q->stats) st_minmax(q->stats, gi + QD_AQG_LOGITS, logits, (size_t)N * V);
    if (q->aq_on) {
        P->pos_g[QD_AQG_LOGITS] = qd_rctx_take(&q->rc, (size_t)N * V + 1);
        qd_aq_forward(logits, logits, (size_t)N * V, &q->aqg[QD_AQG_LOGITS], &q->rc,
                      P->pos_g[QD_AQG_LOGITS]);
    }
}

QD_API int qd_qsim_logits(qd_qsim *q, const int *tokens, int B, int T, float *logits,
                          qd_err *err) {
    struct qd_qsim_priv *P = q->priv;
    int V = q->cfg.vocab_size, D = q->cfg.dim;
    if (T < 1 || T > q->o.Tmax || B < 1)
        return qd_errf(err, "%s: window of %d tokens, the simulation holds %d", __func__, T,
                       q->o.Tmax);
    for (size_t i = 0; i < (size_t)B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return qd_errf(err, "%s: token id %d out of range [0, %d)", __func__, tokens[i], V);
    qd_real *x0 = P->hf; /* free until head_forward runs */
    (void)D;
    for (int b0 = 0; b0 < B; b0 += q->o.Bmax) {
        int nb = B - b0 < q->o.Bmax ? B - b0 : q->o.Bmax;
        int N = nb * T;
        q->rc.cursor = 0;
        qd_qsim_embed(q, tokens + (size_t)b0 * T, nb, T, x0);
        /* forward_blocks writes the last layer into the out buffer: use xa/xb ping-pong and a
         * copy so that x0 (hf) is free again for the head */
        const qd_real *in = x0;
        for (int l = 0; l < q->cfg.n_layers; l++) {
            if (qd_stop_requested()) return qd_stopped(err);
            qd_real *o = (l % 2) ? P->xb : P->xa;
            qd_qsim_layer_forward(q, l, in, o, nb, T);
            in = o;
        }
#ifdef QD_REAL_DOUBLE
        head_forward(q, in, N, P->lg);
        for (size_t i = 0; i < (size_t)N * V; i++)
            logits[(size_t)b0 * T * V + i] = (float)P->lg[i];
#else
        head_forward(q, in, N, logits + (size_t)b0 * T * V);
#endif
    }
    return QD_OK;
}

QD_API int qd_qsim_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits,
                             qd_err *err) {
    return qd_qsim_logits((qd_qsim *)ctx, tokens, B, T, logits, err);
}

/* The statistics pass of qd_qsim_collect (head: through the LM head) and
 * qd_qsim_collect_layers (the decoder layers only): one loop, so that both record the same
 * statistics of every site they share. */
static int collect_pass(qd_qsim *q, const int *tokens, int n_windows, int T, qd_qstats *st,
                        int head, qd_real *outs, qd_err *err) {
    int V = q->cfg.vocab_size, Bm = q->o.Bmax;
    size_t nd = (size_t)Bm * T * q->cfg.dim;
    float *lg = head ? malloc(sizeof(float) * (size_t)Bm * T * V) : NULL;
    qd_real *x0 = head ? NULL : malloc(sizeof(qd_real) * nd);
    qd_real *out = head || outs ? NULL : malloc(sizeof(qd_real) * nd); /* outs: written there */
    if (head ? !lg : !x0 || (!outs && !out)) {
        free(lg), free(x0), free(out);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    int sa = q->aq_on, sw = q->wq_on;
    q->aq_on = q->wq_on = 0;
    q->stats = st;
    int rc = QD_OK;
    for (int w = 0; w < n_windows && rc == QD_OK; w += Bm) {
        int nb = n_windows - w < Bm ? n_windows - w : Bm;
        const int *tk = tokens + (size_t)w * T;
        if (head) {
            rc = qd_qsim_logits(q, tk, nb, T, lg, err);
        } else {
            for (size_t i = 0; i < (size_t)nb * T && rc == QD_OK; i++)
                if (tk[i] < 0 || tk[i] >= V)
                    rc = qd_errf(err, "%s: token id %d out of range [0, %d)", __func__, tk[i], V);
            if (rc == QD_OK && qd_stop_requested()) rc = qd_stopped(err);
            if (rc != QD_OK) break;
            q->rc.cursor = 0;
            qd_qsim_embed(q, tk, nb, T, x0);
            qd_qsim_forward_blocks(q, x0, outs ? outs + (size_t)w * T * q->cfg.dim : out, nb, T);
        }
        if (rc == QD_OK) st->tokens += (size_t)nb * T;
    }
    q->stats = NULL;
    q->aq_on = sa, q->wq_on = sw;
    free(lg), free(x0), free(out);
    return rc;
}

QD_API int qd_qsim_collect(qd_qsim *q, const int *tokens, int n_windows, int T, qd_qstats *st,
                           qd_err *err) {
    return collect_pass(q, tokens, n_windows, T, st, 1, NULL, err);
}

QD_API int qd_qsim_collect_layers(qd_qsim *q, const int *tokens, int n_windows, int T,
                                  qd_qstats *st, qd_real *outs, qd_err *err) {
    return collect_pass(q, tokens, n_windows, T, st, 0, outs, err);
}

/* ---------------------------------------------------------------- initialisation */

static void set_range(qd_aq *a, double mn, double mx) {
    if (!(mn <= 0)) mn = 0; /* also catches NaN/unset (+inf) */
    if (!(mx >= 0)) mx = 0;
    double Q = (double)((1u << a->bits) - 1);
    double s = (mx - mn) / Q;
    if (!(s > 1e-8)) s = 1e-8;
    *a->s = (qd_real)s;
    *a->z = (qd_real)(-mn / s);
}

QD_API void qd_qsim_init_ranges(qd_qsim *q, const qd_qstats *st) {
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int s = 0; s < QD_AQ_PER_LAYER; s++) {
            size_t i = (size_t)l * QD_AQ_PER_LAYER + s;
            set_range(&q->L[l].aq[s], st->mn[i], st->mx[i]);
        }
    for (int g = 0; g < QD_AQG_COUNT; g++) {
        size_t i = (size_t)q->cfg.n_layers * QD_AQ_PER_LAYER + g;
        set_range(&q->aqg[g], st->mn[i], st->mx[i]);
    }
}

static int project_zero(qd_aq *a) {
    qd_real z = qd_aq_zero(a);
    if (*a->z == z) return 0;
    *a->z = z;
    return 1;
}

QD_API int qd_qsim_project_ranges(qd_qsim *q) {
    int moved = 0;
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int s = 0; s < QD_AQ_PER_LAYER; s++) moved += project_zero(&q->L[l].aq[s]);
    for (int g = 0; g < QD_AQG_COUNT; g++) moved += project_zero(&q->aqg[g]);
    return moved;
}

/* s_j = max|X_j|^α / max_i |W_ij|^(1-α) over the consumers' columns j. */
static void smooth(qd_real *s, const float *xmax, int C, const qd_real *const *ws,
                   const int *rows, int nw, float alpha) {
    for (int j = 0; j < C; j++) {
        double wm = 0;
        for (int k = 0; k < nw; k++)
            for (int i = 0; i < rows[k]; i++) {
                double a = fabs((double)ws[k][(size_t)i * C + j]);
                if (a > wm) wm = a;
            }
        double xm = xmax[j] > 1e-5 ? xmax[j] : 1e-5;
        if (wm < 1e-5) wm = 1e-5;
        double v = pow(xm, alpha) / pow(wm, 1 - alpha);
        s[j] = (qd_real)(v < 1e-2 ? 1e-2 : v);
    }
}

QD_API void qd_qsim_smoothquant(qd_qsim *q, const qd_qstats *st, float alpha) {
    const qd_config *c = &q->cfg;
    int D = c->dim, F = c->hidden_dim, QD = c->n_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        qd_qlayer *L = &q->L[l];
        const qd_real *wqkv[3] = {L->w[QD_W_Q], L->w[QD_W_K], L->w[QD_W_V]};
        int rqkv[3] = {L->wrows[QD_W_Q], L->wrows[QD_W_K], L->wrows[QD_W_V]};
        smooth(L->s_qkv, st->ch_attn + (size_t)l * D, D, wqkv, rqkv, 3, alpha);
        const qd_real *wgu[2] = {L->w[QD_W_GATE], L->w[QD_W_UP]};
        int rgu[2] = {F, F};
        smooth(L->s_gu, st->ch_ffn + (size_t)l * D, D, wgu, rgu, 2, alpha);
        if (L->s_ud) {
            const qd_real *wd[1] = {L->w[QD_W_DOWN]};
            int rd[1] = {D};
            smooth(L->s_ud, st->ch_down + (size_t)l * F, F, wd, rd, 1, alpha);
        }
        if (L->s_vo) {
            const qd_real *wo[1] = {L->w[QD_W_O]};
            int ro[1] = {D};
            smooth(L->s_vo, st->ch_o + (size_t)l * QD, QD, wo, ro, 1, alpha);
        }
    }
}

/* ---------------------------------------------------------------- folding */

QD_API int qd_qsim_fold(const qd_qsim *qc, qd_model *out, qd_err *err) {
    qd_qsim *q = (qd_qsim *)qc; /* uses the scratch buffers; parameters are not changed */
    const qd_config *c = &q->cfg;
    if (out->cfg.dim != c->dim || out->cfg.n_layers != c->n_layers ||
        out->cfg.hidden_dim != c->hidden_dim || out->cfg.vocab_size != c->vocab_size)
        return qd_errf(err, "%s: output model has a different shape", __func__);
    struct qd_qsim_priv *P = q->priv;
    int D = c->dim, KV = c->n_kv_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        qd_qlayer *L = &q->L[l];
        qd_layer *ol = &out->layers[l];
        float *dst[QD_W_PER_LAYER] = {ol->wq, ol->wk, ol->wv, ol->wo,
                                      ol->w_gate, ol->w_up, ol->w_down};
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            int rows = L->wrows[w], cols = L->wcols[w];
            qd_wq_spec sp = L->wspec[w];
            int groups = sp.per_channel ? rows : 1;
            size_t gsz = sp.per_channel ? (size_t)cols : (size_t)rows * cols;
            qd_real *sc = P->nb0, *zp = P->nb1;
            if (q->wq_on && L->wfix[w]) {
                /* already on the grid: the encodings' rounding reproduces the integers */
                wfix_dequant(L, w, P->scrB);
                for (size_t i = 0; i < (size_t)rows * cols; i++) dst[w][i] = (float)P->scrB[i];
                continue;
            }
            const qd_real *t = let_weight(q, l, w);
            if (q->wq_on) {
                qd_wq_forward(P->scrB, t, rows, cols, sp, q->lwc_on ? L->gam[w] : NULL,
                              q->lwc_on ? L->bet[w] : NULL, sc, zp, NULL, 0);
            }
            for (int g = 0; g < groups; g++) {
                double lo = -INFINITY, hi = INFINITY;
                if (q->wq_on) {
                    if (sp.sym) {
                        double qp = (1 << (sp.bits - 1)) - 1;
                        lo = -(qp + 1) * sc[g], hi = qp * sc[g];
                    } else {
                        double Q = (1u << sp.bits) - 1;
                        lo = -(double)zp[g] * sc[g], hi = (Q - zp[g]) * sc[g];
                    }
                }
                for (size_t i = 0; i < gsz; i++) {
                    double v = t[(size_t)g * gsz + i];
                    dst[w][(size_t)g * gsz + i] = (float)(v < lo ? lo : (v > hi ? hi : v));
                }
            }
        }
        /* norm -> linear: weight and (LayerNorm) bias both divided by s; Gemma's 1 + w is the
         * multiplier the model keeps, so it is divided whole */
        const qd_real *gn[4] = {L->attn_norm, L->ffn_norm, L->attn_norm_b, L->ffn_norm_b};
        qd_real *sn[4] = {L->s_qkv, L->s_gu, L->s_qkv, L->s_gu};
        float *on[4] = {ol->attn_norm, ol->ffn_norm, ol->attn_norm_b, ol->ffn_norm_b};
        for (int k = 0; k < 4; k++)
            if (gn[k] && on[k])
                for (int i = 0; i < D; i++)
                    on[k][i] = (float)(q->let_on ? gn[k][i] / qd_let_eff(sn[k][i]) : gn[k][i]);
        if (ol->bq && L->bq)
            for (int i = 0; i < c->n_heads * c->head_dim; i++) ol->bq[i] = (float)L->bq[i];
        if (ol->bk && L->bk)
            for (int i = 0; i < KV; i++) ol->bk[i] = (float)L->bk[i];
        if (ol->bv && L->bv)
            for (int i = 0; i < KV; i++)
                ol->bv[i] = (float)(q->let_on && L->s_vo ? L->bv[i] / qd_let_eff(L->s_vo[i])
                                                         : L->bv[i]);
    }
    size_t VD = (size_t)c->vocab_size * D;
    for (size_t i = 0; i < VD; i++) out->tok_emb[i] = (float)P->tok_emb[i];
    if (out->lm_head != out->tok_emb)
        for (size_t i = 0; i < VD; i++) out->lm_head[i] = (float)P->lm_head[i];
    for (int i = 0; i < D; i++) out->final_norm[i] = (float)P->final_norm[i];
    if (out->final_norm_b && P->final_norm_b)
        for (int i = 0; i < D; i++) out->final_norm_b[i] = (float)P->final_norm_b[i];
    return QD_OK;
}

QD_API void qd_qsim_weight_enc(const qd_qsim *qc, int l, int w, qd_real *scale, qd_real *zero) {
    qd_qsim *q = (qd_qsim *)qc; /* scratch only */
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    int rows = L->wrows[w], cols = L->wcols[w];
    const qd_real *t = let_weight(q, l, w);
    qd_wq_forward(P->scrB, t, rows, cols, L->wspec[w], q->lwc_on ? L->gam[w] : NULL,
                  q->lwc_on ? L->bet[w] : NULL, scale, zero, NULL, 0);
}

QD_API void qd_qsim_weight_let(const qd_qsim *qc, int l, int w, qd_real *t) {
    qd_qlayer *L = &qc->L[l];
    int rows = L->wrows[w], cols = L->wcols[w];
    qd_real *c, *r, *gc, *gr;
    let_cr(L, w, &c, &r, &gc, &gr);
    if (qc->let_on && (c || r)) qd_let_weight_forward(t, L->w[w], rows, cols, c, r);
    else memcpy(t, L->w[w], sizeof(qd_real) * (size_t)rows * cols);
}

/* The grid of weight (l, w): its groups and the stored code's offset. */
static void wfix_grid(const qd_qlayer *L, int w, int *groups, size_t *gsz, int *off) {
    qd_wq_spec sp = L->wspec[w];
    *groups = sp.per_channel ? L->wrows[w] : 1;
    *gsz = (size_t)L->wrows[w] * L->wcols[w] / (size_t)*groups;
    *off = sp.sym ? 0 : 128;
}

/* (q - z)·s in float, as gptq.c's grid_point computes the rounded weight */
static void wfix_dequant(const qd_qlayer *L, int w, qd_real *out) {
    int groups, off;
    size_t gsz;
    wfix_grid(L, w, &groups, &gsz, &off);
    const int8_t *c = L->wfix[w];
    for (int g = 0; g < groups; g++) {
        float s = L->wfix_sz[w][2 * g], z = L->wfix_sz[w][2 * g + 1];
        for (size_t i = (size_t)g * gsz; i < (size_t)(g + 1) * gsz; i++)
            out[i] = ((float)(c[i] + off) - z) * s;
    }
}

QD_API int qd_qsim_set_wfix(qd_qsim *q, int l, int w, const qd_real *what) {
    qd_qlayer *L = &q->L[l];
    struct qd_qsim_priv *P = q->priv;
    size_t n = (size_t)L->wrows[w] * L->wcols[w];
    if (!what) {
        L->wfix[w] = NULL; /* the buffer stays, for the next set (GPTQ reruns per ridge λ) */
        return QD_OK;
    }
    int groups, off;
    size_t gsz;
    wfix_grid(L, w, &groups, &gsz, &off);
    if (L->wspec[w].bits > 8) return QD_ERR; /* one byte a code */
    if (!L->wfix_mem[w]) {
        L->wfix_mem[w] = palloc(P, n);
        L->wfix_sz[w] = palloc(P, sizeof(float) * 2 * (size_t)groups);
        if (!L->wfix_mem[w] || !L->wfix_sz[w]) return QD_ERR;
    }
    /* the grid GPTQ rounded onto (the simulation's, as qd_qsim_weight_enc gives it) */
    qd_qsim_weight_enc(q, l, w, P->nb0, P->nb1);
    float *sz = L->wfix_sz[w];
    int8_t *c = L->wfix_mem[w];
    for (int g = 0; g < groups; g++) {
        float s = (float)P->nb0[g], z = L->wspec[w].sym ? 0 : (float)P->nb1[g];
        sz[2 * g] = s, sz[2 * g + 1] = z;
        for (size_t i = (size_t)g * gsz; i < (size_t)(g + 1) * gsz; i++) {
            float t = rintf((float)what[i] / s) + z;
            c[i] = (int8_t)((int)t - off);
            /* every value lies on the grid: the code gives it back exactly */
            assert(((t - z) * s) == (float)what[i]);
        }
    }
    L->wfix[w] = c;
    return QD_OK;
}

/* Every weight's fixed codes with their grids, one after another in layer and weight order. */
QD_API size_t qd_qsim_wfix_bytes(const qd_qsim *q) {
    size_t n = 0;
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            const qd_qlayer *L = &q->L[l];
            int groups, off;
            size_t gsz;
            wfix_grid(L, w, &groups, &gsz, &off);
            n += (size_t)L->wrows[w] * L->wcols[w] + sizeof(float) * 2 * (size_t)groups;
        }
    return n;
}

QD_API int qd_qsim_wfix_save(const qd_qsim *q, void *buf) {
    unsigned char *b = buf;
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            const qd_qlayer *L = &q->L[l];
            if (!L->wfix[w]) return QD_ERR;
            int groups, off;
            size_t gsz, n = (size_t)L->wrows[w] * L->wcols[w];
            wfix_grid(L, w, &groups, &gsz, &off);
            memcpy(b, L->wfix[w], n), b += n;
            memcpy(b, L->wfix_sz[w], sizeof(float) * 2 * (size_t)groups);
            b += sizeof(float) * 2 * (size_t)groups;
        }
    return QD_OK;
}

QD_API int qd_qsim_wfix_restore(qd_qsim *q, const void *buf) {
    const unsigned char *b = buf;
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            qd_qlayer *L = &q->L[l];
            if (!L->wfix_mem[w]) return QD_ERR; /* never set: no buffer to restore into */
            int groups, off;
            size_t gsz, n = (size_t)L->wrows[w] * L->wcols[w];
            wfix_grid(L, w, &groups, &gsz, &off);
            memcpy(L->wfix_mem[w], b, n), b += n;
            memcpy(L->wfix_sz[w], b, sizeof(float) * 2 * (size_t)groups);
            b += sizeof(float) * 2 * (size_t)groups;
            L->wfix[w] = L->wfix_mem[w];
        }
    return QD_OK;
}

QD_API int qd_qsim_get_wfix(const qd_qsim *q, int l, int w, qd_real *out) {
    const qd_qlayer *L = &q->L[l];
    if (!L->wfix[w]) return 0;
    wfix_dequant(L, w, out);
    return 1;
}

QD_API const qd_real *qd_qsim_weight_input(const qd_qsim *q, int l, int w, int *n_rows) {
    const qd_qact *A = act_of((qd_qsim *)q, l);
    *n_rows = A->B * A->T;
    switch (w) {
    case QD_W_Q: case QD_W_K: case QD_W_V: return A->h1q;
    case QD_W_O: return A->oq;
    case QD_W_GATE: case QD_W_UP: return A->h2q;
    default: return A->mq;
    }
}

/* The mean square of each input channel of weight w (NULL when no statistics were taken). */
static const double *input_sq(const qd_qstats *st, int l, int w) {
    switch (w) {
    case QD_W_Q: case QD_W_K: case QD_W_V: return st->sq_attn + (size_t)l * st->dim;
    case QD_W_O: return st->sq_o + (size_t)l * st->qdim;
    case QD_W_GATE: case QD_W_UP: return st->sq_ffn + (size_t)l * st->dim;
    default: return st->sq_down + (size_t)l * st->hidden;
    }
}

/* Σ_i sq[i]·(a_i - b_i)² over one row of n (sq NULL: weights 1), in eight interleaved partial
 * sums (lane i mod 8; the tail after the last full eight into lane 0) added in a fixed tree.
 * Every error of both searches below is this sum (lwc_grid_err's vector path keeps the same
 * lanes), so they compare bit-identical numbers. */
#define LWC_LANES 8
static double lwc_lanes_sum(const double *e) {
    return ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
}

static double lwc_row_err(const qd_real *a, const qd_real *b, const double *sq, size_t n) {
    double e[LWC_LANES] = {0};
    size_t i = 0;
    for (; i + LWC_LANES <= n; i += LWC_LANES)
        for (int k = 0; k < LWC_LANES; k++) {
            double d = (double)a[i + k] - b[i + k];
            e[k] += (sq ? sq[i + k] : 1.0) * d * d;
        }
    for (; i < n; i++) {
        double d = (double)a[i] - b[i];
        e[0] += (sq ? sq[i] : 1.0) * d * d;
    }
    return lwc_lanes_sum(e);
}

/* lwc_row_err of x against its fake quantization on one grid, fused (nothing written): the
 * element formula of qd_wq_forward without rounding context, t = clamp(rint(x/s) + zr, lo, hi),
 * x̂ = (t - zr)·s (symmetric: zr = 0, which changes at most the sign of a zero x̂ and so no
 * error), in the same float operations. Scalar, and AVX2 where the CPU has it (IEEE division,
 * round-to-nearest-even, compares: the same bits). */
#ifdef QD_REAL_DOUBLE
#define LWC_RINT rint
#else
#define LWC_RINT rintf
#endif
static double lwc_grid_err_scalar(const qd_real *x, size_t n, const double *sq, qd_real s,
                                  qd_real zr, qd_real lo, qd_real hi) {
    double e[LWC_LANES] = {0};
    size_t full = n - n % LWC_LANES;
    for (size_t i = 0; i < n; i++) {
        qd_real t = LWC_RINT(x[i] / s) + zr;
        t = t < lo ? lo : (t > hi ? hi : t);
        double d = (double)x[i] - (qd_real)((t - zr) * s);
        e[i < full ? i % LWC_LANES : 0] += (sq ? sq[i] : 1.0) * d * d;
    }
    return lwc_lanes_sum(e);
}

static int lwc_scalar_only; /* qd_qsim_lwc_scalar: tests compare both paths */

QD_API void qd_qsim_lwc_scalar(int on) { lwc_scalar_only = on; }

#if defined(__x86_64__) && !defined(QD_REAL_DOUBLE)
#include <immintrin.h>
__attribute__((target("avx2"))) static double lwc_grid_err_avx2(const float *x, size_t n,
                                                                 const double *sq, float s,
                                                                 float zr, float lo, float hi) {
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(zr);
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    const __m256d one = _mm256_set1_pd(1.0);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + LWC_LANES <= n; i += LWC_LANES) {
        __m256 xv = _mm256_loadu_ps(x + i);
        __m256 t = _mm256_round_ps(_mm256_div_ps(xv, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        t = _mm256_add_ps(t, vz);
        t = _mm256_blendv_ps(t, vlo, _mm256_cmp_ps(t, vlo, _CMP_LT_OQ));
        t = _mm256_blendv_ps(t, vhi, _mm256_cmp_ps(t, vhi, _CMP_GT_OQ));
        __m256 b = _mm256_mul_ps(_mm256_sub_ps(t, vz), vs);
        __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv)),
                                   _mm256_cvtps_pd(_mm256_castps256_ps128(b)));
        __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1)),
                                   _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)));
        __m256d w0 = sq ? _mm256_loadu_pd(sq + i) : one, w1 = sq ? _mm256_loadu_pd(sq + i + 4) : one;
        a0 = _mm256_add_pd(a0, _mm256_mul_pd(_mm256_mul_pd(w0, d0), d0));
        a1 = _mm256_add_pd(a1, _mm256_mul_pd(_mm256_mul_pd(w1, d1), d1));
    }
    double e[LWC_LANES];
    _mm256_storeu_pd(e, a0);
    _mm256_storeu_pd(e + 4, a1);
    for (; i < n; i++) {
        float t = rintf(x[i] / s) + zr;
        t = t < lo ? lo : (t > hi ? hi : t);
        double d = (double)x[i] - (float)((t - zr) * s);
        e[0] += (sq ? sq[i] : 1.0) * d * d;
    }
    return lwc_lanes_sum(e);
}
#endif

static double lwc_grid_err(const qd_real *x, size_t n, const double *sq, qd_real s, qd_real zr,
                           qd_real lo, qd_real hi) {
#if defined(__x86_64__) && !defined(QD_REAL_DOUBLE)
    static int avx2 = -1; /* pool threads may ask at once: atomic, every answer the same */
    int a = __atomic_load_n(&avx2, __ATOMIC_RELAXED);
    if (a < 0) {
        a = __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&avx2, a, __ATOMIC_RELAXED);
    }
    if (a && !lwc_scalar_only) return lwc_grid_err_avx2(x, n, sq, s, zr, lo, hi);
#endif
    return lwc_grid_err_scalar(x, n, sq, s, zr, lo, hi);
}

/* the k-th logit of the search grid of n ratios from 1 (logit 6 = 0.9975) down to r_min */
static qd_real lwc_grid_logit(int k, int n, double r_min) {
    double r = 1 - (1 - r_min) * k / (n - 1);
    return (qd_real)(k == 0 ? 6 : log(r / (1 - r)));
}

/* Sets γ = β = the chosen logits of weight w and adds their ratios to *rsum. */
static void lwc_keep(qd_qlayer *L, int w, const qd_real *bl, int groups, double *rsum) {
    for (int g = 0; g < groups; g++) {
        L->gam[w][g] = bl[g];
        L->bet[w][g] = bl[g];
        *rsum += 1 / (1 + exp(-(double)bl[g]));
    }
}

/* The brute force on weight w of layer l: a whole-tensor fake quantization per grid ratio, the
 * error of every group from it; sets the chosen logits, adds their ratios to *rsum and returns
 * the number of groups (0: out of memory, logits kept). */
static long lwc_brute_weight(qd_qsim *q, int l, int w, const double *sq, int n, double r_min,
                             double *rsum) {
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    int rows = L->wrows[w], cols = L->wcols[w];
    qd_wq_spec sp = L->wspec[w];
    int groups = sp.per_channel ? rows : 1, gr = sp.per_channel ? 1 : rows;
    qd_real *lg = malloc(sizeof(qd_real) * (size_t)groups);
    double *best = malloc(sizeof(double) * (size_t)groups);
    qd_real *bl = malloc(sizeof(qd_real) * (size_t)groups);
    long rc = 0;
    if (!lg || !best || !bl) goto out;
    qd_qsim_weight_let(q, l, w, P->scrA);
    for (int g = 0; g < groups; g++) best[g] = INFINITY, bl[g] = lwc_grid_logit(0, n, r_min);
    for (int k = 0; k < n; k++) {
        qd_real v = lwc_grid_logit(k, n, r_min);
        for (int g = 0; g < groups; g++) lg[g] = v;
        qd_wq_forward(P->scrB, P->scrA, rows, cols, sp, lg, lg, NULL, NULL, NULL, 0);
        for (int g = 0; g < groups; g++) {
            double e = 0;
            for (int r = 0; r < gr; r++) {
                size_t o = ((size_t)g * gr + r) * cols;
                e += lwc_row_err(P->scrA + o, P->scrB + o, sq, (size_t)cols);
            }
            if (e < best[g]) best[g] = e, bl[g] = v;
        }
    }
    lwc_keep(L, w, bl, groups, rsum);
    rc = groups;
out:
    free(lg), free(best), free(bl);
    return rc;
}

/* Every weight of q through one search (brute force or fast): the mean chosen ratio. */
typedef long (*lwc_weight_fn)(qd_qsim *q, int l, int w, const double *sq, int n, double r_min,
                             double *rsum);

static double lwc_search_all(qd_qsim *q, const qd_qstats *st, int n, double r_min,
                             lwc_weight_fn one) {
    double rsum = 0;
    long rcnt = 0;
    if (n < 2) n = 2;
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int w = 0; w < QD_W_PER_LAYER; w++) {
            if (qd_stop_requested()) return 1; /* the caller polls it too */
            const double *sq = st && st->tokens ? input_sq(st, l, w) : NULL;
            rcnt += one(q, l, w, sq, n, r_min, &rsum);
        }
    return rcnt ? rsum / (double)rcnt : 1;
}

QD_API double qd_qsim_search_lwc_ref(qd_qsim *q, const qd_qstats *st, int n, double r_min) {
    return lwc_search_all(q, st, n, r_min, lwc_brute_weight);
}

/* The fast search of one weight works row by row, all grid ratios of a row while it is in
 * cache, fused (lwc_grid_err: no fake-quantized tensor is written). Each ratio's grid (scale,
 * rounded zero point) is qd_wq_forward's own, taken from a call on the group's two extremes
 * (max and min with 0 included, as its range sees them): the same range, so the same grid.
 * Rows run in parallel on the default pool; the choice reads the errors in a fixed order. */
typedef struct {
    const qd_real *t;     /* the LET weight (rows, cols) */
    int rows, cols, n;
    qd_wq_spec sp;
    const double *sq;
    double r_min;
    qd_real lo, hi;       /* the integer range */
    const qd_real *gs, *gz; /* per tensor: each ratio's scale and zero point; NULL per channel */
    double *err;          /* (n, rows): each ratio's error of each row */
} lwc_job;

/* the grid of ratio logit v for a group with extremes ext[2] */
static void lwc_grid(const qd_real *ext, qd_wq_spec sp, qd_real v, qd_real *s, qd_real *z) {
    qd_real o[2];
    qd_wq_forward(o, ext, 1, 2, sp, &v, &v, s, z, NULL, 0);
}

/* max and min of x with 0 included (NaN skipped): a group's range as qd_wq_forward sees it */
static void lwc_extremes(const qd_real *x, size_t n, qd_real ext[2]) {
    qd_real mx = 0, mn = 0;
    for (size_t i = 0; i < n; i++) {
        if (x[i] > mx) mx = x[i];
        if (x[i] < mn) mn = x[i];
    }
    ext[0] = mx, ext[1] = mn;
}

/* rows [r0, r1) of the lwc_job ctx (a qd_pool_chunk_fn: each row's errors are its own) */
static void lwc_rows(void *ctx, size_t r0, size_t r1, int tid) {
    const lwc_job *j = ctx;
    (void)tid;
    for (size_t r = r0; r < r1; r++) {
        const qd_real *row = j->t + (size_t)r * j->cols;
        qd_real ext[2];
        if (!j->gs) lwc_extremes(row, (size_t)j->cols, ext);
        for (int k = 0; k < j->n; k++) {
            qd_real s, z;
            if (j->gs) s = j->gs[k], z = j->gz[k];
            else lwc_grid(ext, j->sp, lwc_grid_logit(k, j->n, j->r_min), &s, &z);
            j->err[(size_t)k * j->rows + r] =
                lwc_grid_err(row, (size_t)j->cols, j->sq, s, z, j->lo, j->hi);
        }
    }
}

/* qd_qsim_search_lwc on one weight, as lwc_brute_weight (same return, same choice). */
static long lwc_fast_weight(qd_qsim *q, int l, int w, const double *sq, int n, double r_min,
                            double *rsum) {
    struct qd_qsim_priv *P = q->priv;
    qd_qlayer *L = &q->L[l];
    int rows = L->wrows[w], cols = L->wcols[w];
    qd_wq_spec sp = L->wspec[w];
    int groups = sp.per_channel ? rows : 1;
    lwc_job j = {P->scrA, rows, cols, n, sp, sq, r_min, 0, 0, NULL, NULL, NULL};
    if (sp.sym) {
        j.hi = (qd_real)((1 << (sp.bits - 1)) - 1);
        j.lo = -j.hi - 1;
    } else {
        j.lo = 0, j.hi = (qd_real)((1u << sp.bits) - 1);
    }
    j.err = malloc(sizeof(double) * (size_t)n * rows);
    qd_real *bl = malloc(sizeof(qd_real) * (size_t)groups);
    qd_real *gs = sp.per_channel ? NULL : malloc(sizeof(qd_real) * 2 * (size_t)n);
    long rc = 0;
    if (!j.err || !bl || (!sp.per_channel && !gs)) goto out;
    qd_qsim_weight_let(q, l, w, P->scrA);
    if (!sp.per_channel) {
        qd_real ext[2];
        lwc_extremes(P->scrA, (size_t)rows * cols, ext);
        for (int k = 0; k < n; k++) lwc_grid(ext, sp, lwc_grid_logit(k, n, r_min), &gs[k], &gs[n + k]);
        j.gs = gs, j.gz = gs + n;
    }
    qd_pool_chunks(qd_pool_default(), (size_t)rows, 16, lwc_rows, &j);
    for (int g = 0; g < groups; g++) {
        double best = INFINITY;
        bl[g] = lwc_grid_logit(0, n, r_min);
        for (int k = 0; k < n; k++) {
            double e = 0; /* per tensor: the rows' errors summed in row order, as the reference */
            if (sp.per_channel) e = j.err[(size_t)k * rows + g];
            else
                for (int r = 0; r < rows; r++) e += j.err[(size_t)k * rows + r];
            if (e < best) best = e, bl[g] = lwc_grid_logit(k, n, r_min);
        }
    }
    lwc_keep(L, w, bl, groups, rsum);
    rc = groups;
out:
    free(j.err), free(bl), free(gs);
    return rc;
}

QD_API double qd_qsim_search_lwc(qd_qsim *q, const qd_qstats *st, int n, double r_min) {
    return lwc_search_all(q, st, n, r_min, lwc_fast_weight);
}
