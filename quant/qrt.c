/* Integer-only runtime (see qrt.h). qd_qrt_new turns every encoding into integer multipliers,
 * zero-point correction terms and tables; the forward then follows the simulation's dataflow
 * (qsim.h) site by site, so that each intermediate is the simulation's quantized value up to
 * the rounding of fixed-point arithmetic.
 *
 * Linear layers: with a = activation (stored int8, zero point za) and w (stored, per-row zw),
 *   sum_k (a-za)(w-zw) = sum a*w - zw*sum a - za*sum w + K*za*zw,
 * so the igemm result needs a per-row constant c_n = bias_n - za*rowsum(w_n) + K*za*zw_n and,
 * for asymmetric weights, the row sum of a. The 16-bit LM-head input is split into a signed high
 * byte and an unsigned low byte (a = 256*hi + lo), two int8 matmuls, exact. */
#include "quant/qrt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant/intops.h"

typedef struct lin_rt {
    qd_igemm_w *pw;
    int rows, cols;
    qd_qmul *m;       /* rows: s_in * s_w / s_out */
    int64_t *c;       /* rows */
    int32_t *zw;      /* rows */
    int any_zw;
    int32_t zo, lo, hi;
    int out_bits;
} lin_rt;

typedef struct layer_rt {
    lin_rt w[QD_W_PER_LAYER];
    qd_qnorm n1, n2;
    const int16_t *g1, *g2;
    qd_qrope rq, rk;          /* share qr->rope tables */
    int32_t zq, zk, zv;       /* QROPE, KROPE, V zero points */
    qd_qmul score_m;          /* s_q s_k / sqrt(hd) / s_score */
    int32_t z_score, score_lo, score_hi;
    qd_qsoftmax sm;
    int32_t z_prob;
    qd_qmul pv_m;             /* s_p s_v / s_pv */
    int32_t z_pv;
    qd_qadd res1, res2;
    int8_t silu[256];
    qd_qmul mul_m;            /* s_silu s_up / s_downin */
    int32_t z_silu, z_up, z_dn;
} layer_rt;

struct qd_qrt {
    const qd_qint *q;
    qd_qint *owned;
    qd_qrt_opts o;
    qd_isa isa;
    layer_rt *L;
    qd_qrope rope_master;     /* owns the cos/sin tables */
    qd_qmul *emb_m;           /* vocab: s_row / s_emb */
    int32_t z_emb;
    qd_qnorm nf;
    lin_rt head;              /* 16-bit input via hi/lo bytes */
    qd_igemm_w *head_pw;
    float logit_scale;
    int32_t logit_zp;
    /* scratch for chunk rows */
    int chunk;
    int16_t *x, *x2, *t16, *hf;
    int8_t *h8, *q8, *k8, *v8, *o8, *g8, *u8, *s8, *m8, *hi8, *lo8;
    int32_t *acc, *acc2;
    int16_t *score, *prob;
    int64_t *work, *pvacc;
    int32_t *pv32;
    int16_t *qc;
    int max_T;
};

struct qd_qrt_kv {
    int max_T, n_layers, kvdim;
    int8_t *k, *v; /* (n_layers, max_T, kvdim) */
};

void qd_qrt_defaults(qd_qrt_opts *o) {
    o->isa = QD_ISA_AUTO;
    o->chunk = 64;
}

static void lin_free(lin_rt *l) {
    qd_igemm_w_free(l->pw);
    free(l->m);
    free(l->c);
    free(l->zw);
    memset(l, 0, sizeof *l);
}

/* in/out: encodings; extra_rowsum: added to the weights' row sum for the hi/lo split */
static int lin_init(lin_rt *L, const qd_qlin *w, const qd_qenc *in, const qd_qenc *out,
                    int pack, const char *what, qd_err *err) {
    memset(L, 0, sizeof *L);
    L->rows = w->rows, L->cols = w->cols;
    if (pack) {
        L->pw = w->bits == 8 ? qd_igemm_pack_s8((const int8_t *)w->q, w->rows, w->cols, (size_t)w->cols, err)
                             : qd_igemm_pack_s4(w->q, w->rows, w->cols, qd_qlin_row_bytes(w), err);
        if (!L->pw) return QD_ERR;
    }
    L->m = malloc((size_t)w->rows * sizeof *L->m);
    L->c = malloc((size_t)w->rows * sizeof *L->c);
    L->zw = malloc((size_t)w->rows * sizeof *L->zw);
    if (!L->m || !L->c || !L->zw) return qd_errf(err, "%s: out of memory", __func__);
    L->zo = out->zero_point;
    L->lo = qd_qmin(out->bits), L->hi = qd_qmax(out->bits);
    L->out_bits = out->bits;
    int64_t za = in->zero_point, K = w->cols;
    for (int r = 0; r < w->rows; r++) {
        int g = w->per_channel ? r : 0;
        int64_t rs = 0;
        const uint8_t *row = w->q + (size_t)r * qd_qlin_row_bytes(w);
        for (int k = 0; k < w->cols; k++) rs += w->bits == 8 ? (int8_t)row[k] : qd_s4_get(row, k);
        int64_t zw = w->zero_point[g];
        L->zw[r] = (int32_t)zw;
        if (zw) L->any_zw = 1;
        L->c[r] = (w->bias ? w->bias[r] : 0) - za * rs + K * za * zw;
        if (qd_qmul_make((double)in->scale * w->scale[g] / out->scale, &L->m[r], err))
            return qd_errf(err, "%s: %s row %d: %s", __func__, what, r, err->msg);
    }
    return QD_OK;
}

/* Requantizes accumulators of M rows into out (int8 or int16 per out_bits). A is the input
 * (for the row sums when the weights are asymmetric). */
static void lin_epilogue(const lin_rt *L, int M, const int32_t *acc, const int64_t *rowsum_a,
                         void *out) {
    for (int i = 0; i < M; i++) {
        const int32_t *a = acc + (size_t)i * L->rows;
        int64_t sa = rowsum_a ? rowsum_a[i] : 0;
        for (int n = 0; n < L->rows; n++) {
            int64_t v = (int64_t)a[n] + L->c[n] - (int64_t)L->zw[n] * sa;
            int32_t y = qd_clamp32(qd_qmul64(v, L->m[n]) + L->zo, L->lo, L->hi);
            if (L->out_bits <= 8) ((int8_t *)out)[(size_t)i * L->rows + n] = (int8_t)y;
            else ((int16_t *)out)[(size_t)i * L->rows + n] = (int16_t)y;
        }
    }
}

static void lin_run(qd_qrt *rt, const lin_rt *L, int M, const int8_t *A, void *out) {
    qd_igemm(L->pw, M, A, (size_t)L->cols, rt->acc, (size_t)L->rows, rt->isa);
    int64_t *rs = NULL;
    if (L->any_zw) {
        rs = rt->work;
        for (int i = 0; i < M; i++) {
            int64_t s = 0;
            for (int k = 0; k < L->cols; k++) s += A[(size_t)i * L->cols + k];
            rs[i] = s;
        }
    }
    lin_epilogue(L, M, rt->acc, rs, out);
}

static const qd_qenc *enc(const qd_qint *q, int l, int site) {
    return &q->act[qd_act_index(q->cfg.n_layers, l, site)];
}

/* Sites held in int8 buffers must be 8-bit; the others fit int16. */
static int check_bits(const qd_qint *q, qd_err *err) {
    static const int must8[] = {QD_AQ_ATTN_NORM, QD_AQ_Q, QD_AQ_K, QD_AQ_V, QD_AQ_QROPE,
                                QD_AQ_KROPE, QD_AQ_PV, QD_AQ_FFN_NORM, QD_AQ_GATE, QD_AQ_UP,
                                QD_AQ_SILU, QD_AQ_DOWN_IN};
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int s = 0; s < QD_AQ_PER_LAYER; s++) {
            int b = enc(q, l, s)->bits, is8 = 0;
            for (size_t i = 0; i < sizeof must8 / sizeof must8[0]; i++) is8 |= must8[i] == s;
            if ((is8 && b != 8) || b < 2 || b > 16)
                return qd_errf(err, "%s: layer %d %s is %d-bit; the integer runtime takes %s",
                               __func__, l, qd_aq_site_name(s), b, is8 ? "8" : "2..16");
        }
    for (int g = 0; g < QD_AQG_COUNT; g++)
        if (enc(q, -1, g)->bits < 2 || enc(q, -1, g)->bits > 16)
            return qd_errf(err, "%s: %s is %d-bit (2..16)", __func__, qd_aqg_name(g),
                           enc(q, -1, g)->bits);
    return QD_OK;
}

void qd_qrt_free(qd_qrt *rt) {
    if (!rt) return;
    if (rt->L)
        for (int l = 0; l < rt->q->cfg.n_layers; l++)
            for (int w = 0; w < QD_W_PER_LAYER; w++) lin_free(&rt->L[l].w[w]);
    free(rt->L);
    qd_qrope_free(&rt->rope_master);
    free(rt->emb_m);
    lin_free(&rt->head);
    qd_igemm_w_free(rt->head_pw);
    void *bufs[] = {rt->x, rt->x2, rt->t16, rt->hf, rt->h8, rt->q8, rt->k8, rt->v8, rt->o8,
                    rt->g8, rt->u8, rt->s8, rt->m8, rt->hi8, rt->lo8, rt->acc, rt->acc2,
                    rt->score, rt->prob, rt->work, rt->pvacc, rt->pv32, rt->qc};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    qd_qint_free(rt->owned);
    free(rt);
}

qd_qrt *qd_qrt_new(const qd_qint *q, const qd_qrt_opts *o, qd_err *err) {
    if (check_bits(q, err)) return NULL;
    qd_qrt *rt = calloc(1, sizeof *rt);
    if (!rt) return qd_errf(err, "%s: out of memory", __func__), NULL;
    rt->q = q;
    if (o) rt->o = *o;
    else qd_qrt_defaults(&rt->o);
    rt->isa = rt->o.isa == QD_ISA_AUTO || !qd_isa_supported(rt->o.isa) ? qd_isa_best() : rt->o.isa;
    const qd_config *c = &q->cfg;
    int nl = c->n_layers, D = c->dim, F = c->hidden_dim, hd = c->head_dim;
    int QD = c->n_heads * hd, KV = c->n_kv_heads * hd, V = c->vocab_size;
    rt->max_T = c->max_seq_len;
    rt->chunk = rt->o.chunk > 0 ? rt->o.chunk : 64;
    rt->L = calloc((size_t)nl, sizeof *rt->L);
    if (!rt->L) goto oom;
    /* RoPE tables once; per-site copies share them */
    if (qd_qrope_init(&rt->rope_master, rt->max_T, hd, c->rope_theta, 1, 0, 1, 0, err)) goto fail;
    for (int l = 0; l < nl; l++) {
        layer_rt *L = &rt->L[l];
        const qd_qint_layer *ql = &q->L[l];
        const qd_qenc *xin = l == 0 ? enc(q, -1, QD_AQG_EMB) : enc(q, l - 1, QD_AQ_RES2);
        static const int in_site[QD_W_PER_LAYER] = {QD_AQ_ATTN_NORM, QD_AQ_ATTN_NORM,
                                                     QD_AQ_ATTN_NORM, QD_AQ_PV, QD_AQ_FFN_NORM,
                                                     QD_AQ_FFN_NORM, QD_AQ_DOWN_IN};
        static const int out_site[QD_W_PER_LAYER] = {QD_AQ_Q, QD_AQ_K, QD_AQ_V, QD_AQ_O,
                                                      QD_AQ_GATE, QD_AQ_UP, QD_AQ_DOWN};
        for (int w = 0; w < QD_W_PER_LAYER; w++)
            if (lin_init(&L->w[w], &ql->w[w], enc(q, l, in_site[w]), enc(q, l, out_site[w]), 1,
                         qd_wsite_name(w), err))
                goto fail;
        const qd_qenc *e_n1 = enc(q, l, QD_AQ_ATTN_NORM), *e_r1 = enc(q, l, QD_AQ_RES1);
        const qd_qenc *e_n2 = enc(q, l, QD_AQ_FFN_NORM);
        if (qd_qnorm_init(&L->n1, D, xin->scale, xin->zero_point, ql->attn_norm.scale,
                          ql->attn_norm.zero_point, e_n1->scale, e_n1->zero_point, 8, c->norm_eps, err) ||
            qd_qnorm_init(&L->n2, D, e_r1->scale, e_r1->zero_point, ql->ffn_norm.scale,
                          ql->ffn_norm.zero_point, e_n2->scale, e_n2->zero_point, 8, c->norm_eps, err))
            goto fail;
        L->g1 = ql->attn_norm.q;
        L->g2 = ql->ffn_norm.q;
        const qd_qenc *eq = enc(q, l, QD_AQ_Q), *ek = enc(q, l, QD_AQ_K), *ev = enc(q, l, QD_AQ_V);
        const qd_qenc *eqr = enc(q, l, QD_AQ_QROPE), *ekr = enc(q, l, QD_AQ_KROPE);
        L->rq = rt->rope_master;
        L->rk = rt->rope_master;
        L->rq.zx = eq->zero_point, L->rq.zy = eqr->zero_point;
        L->rk.zx = ek->zero_point, L->rk.zy = ekr->zero_point;
        if (qd_qmul_make((double)eq->scale / eqr->scale / (1 << QD_ROPE_FRAC), &L->rq.m, err) ||
            qd_qmul_make((double)ek->scale / ekr->scale / (1 << QD_ROPE_FRAC), &L->rk.m, err))
            goto fail;
        L->zq = eqr->zero_point, L->zk = ekr->zero_point, L->zv = ev->zero_point;
        const qd_qenc *es = enc(q, l, QD_AQ_SCORE), *ep = enc(q, l, QD_AQ_PROB);
        const qd_qenc *epv = enc(q, l, QD_AQ_PV);
        if (qd_qmul_make((double)eqr->scale * ekr->scale / sqrt((double)hd) / es->scale,
                         &L->score_m, err) ||
            qd_qsoftmax_init(&L->sm, es->scale, ep->scale, ep->zero_point, ep->bits, err) ||
            qd_qmul_make((double)ep->scale * ev->scale / epv->scale, &L->pv_m, err))
            goto fail;
        L->z_score = es->zero_point;
        L->score_lo = qd_qmin(es->bits), L->score_hi = qd_qmax(es->bits);
        L->z_prob = ep->zero_point;
        L->z_pv = epv->zero_point;
        const qd_qenc *eo = enc(q, l, QD_AQ_O), *ed = enc(q, l, QD_AQ_DOWN);
        const qd_qenc *er2 = enc(q, l, QD_AQ_RES2);
        if (qd_qadd_init(&L->res1, xin->scale, xin->zero_point, eo->scale, eo->zero_point,
                         e_r1->scale, e_r1->zero_point, e_r1->bits, err) ||
            qd_qadd_init(&L->res2, e_r1->scale, e_r1->zero_point, ed->scale, ed->zero_point,
                         er2->scale, er2->zero_point, er2->bits, err))
            goto fail;
        const qd_qenc *eg = enc(q, l, QD_AQ_GATE), *eu = enc(q, l, QD_AQ_UP);
        const qd_qenc *esl = enc(q, l, QD_AQ_SILU), *edi = enc(q, l, QD_AQ_DOWN_IN);
        qd_lut8_build(L->silu, qd_silu, eg->scale, eg->zero_point, esl->scale, esl->zero_point);
        if (qd_qmul_make((double)esl->scale * eu->scale / edi->scale, &L->mul_m, err)) goto fail;
        L->z_silu = esl->zero_point, L->z_up = eu->zero_point, L->z_dn = edi->zero_point;
    }
    /* embedding rows -> EMB encoding */
    const qd_qenc *eemb = enc(q, -1, QD_AQG_EMB);
    rt->emb_m = malloc((size_t)V * sizeof *rt->emb_m);
    if (!rt->emb_m) goto oom;
    for (int v = 0; v < V; v++)
        if (qd_qmul_make((double)q->emb.scale[q->emb.per_channel ? v : 0] / eemb->scale,
                         &rt->emb_m[v], err))
            goto fail;
    rt->z_emb = eemb->zero_point;
    const qd_qenc *ex = enc(q, nl - 1, QD_AQ_RES2), *ehi = enc(q, -1, QD_AQG_HEAD_IN);
    const qd_qenc *elg = enc(q, -1, QD_AQG_LOGITS);
    if (qd_qnorm_init(&rt->nf, D, ex->scale, ex->zero_point, q->final_norm.scale,
                      q->final_norm.zero_point, ehi->scale, ehi->zero_point, 16, c->norm_eps, err))
        goto fail;
    if (q->head.bits != 8) {
        qd_errf(err, "%s: the LM head must be 8-bit (is %d)", __func__, q->head.bits);
        goto fail;
    }
    if (lin_init(&rt->head, &q->head, ehi, elg, 1, "lm_head", err)) goto fail;
    rt->logit_scale = elg->scale;
    rt->logit_zp = elg->zero_point;
    /* scratch */
    int C = rt->chunk, T = rt->max_T, Wd = F > QD ? F : QD;
    Wd = Wd > D ? Wd : D;
    int accw = V > Wd ? V : Wd;
    rt->x = malloc((size_t)C * D * 2), rt->x2 = malloc((size_t)C * D * 2);
    rt->t16 = malloc((size_t)C * D * 2), rt->hf = malloc((size_t)C * D * 2);
    rt->h8 = malloc((size_t)C * D), rt->q8 = malloc((size_t)C * QD), rt->k8 = malloc((size_t)C * KV);
    rt->v8 = malloc((size_t)C * KV), rt->o8 = malloc((size_t)C * QD);
    rt->g8 = malloc((size_t)C * F), rt->u8 = malloc((size_t)C * F), rt->s8 = malloc((size_t)C * F);
    rt->m8 = malloc((size_t)C * F), rt->hi8 = malloc((size_t)C * D), rt->lo8 = malloc((size_t)C * D);
    rt->acc = malloc((size_t)C * accw * 4), rt->acc2 = malloc((size_t)C * accw * 4);
    rt->score = malloc((size_t)T * 2), rt->prob = malloc((size_t)T * 2);
    rt->work = malloc((size_t)(T > C ? T : C) * 8);
    rt->pvacc = malloc((size_t)hd * 8), rt->pv32 = malloc((size_t)hd * 4);
    rt->qc = malloc((size_t)hd * 2);
    if (!rt->x || !rt->x2 || !rt->t16 || !rt->hf || !rt->h8 || !rt->q8 || !rt->k8 || !rt->v8 ||
        !rt->o8 || !rt->g8 || !rt->u8 || !rt->s8 || !rt->m8 || !rt->hi8 || !rt->lo8 || !rt->acc ||
        !rt->acc2 || !rt->score || !rt->prob || !rt->work || !rt->pvacc || !rt->pv32 || !rt->qc)
        goto oom;
    return rt;
oom:
    qd_errf(err, "%s: out of memory", __func__);
fail:
    qd_qrt_free(rt);
    return NULL;
}

qd_qrt *qd_qrt_load(const char *path, const qd_qrt_opts *o, qd_err *err) {
    qd_qint *q = qd_qint_load(path, err);
    if (!q) return NULL;
    qd_qrt *rt = qd_qrt_new(q, o, err);
    if (!rt) {
        qd_qint_free(q);
        return NULL;
    }
    rt->owned = q;
    return rt;
}

const qd_qint *qd_qrt_model(const qd_qrt *rt) { return rt->q; }
qd_isa qd_qrt_isa(const qd_qrt *rt) { return rt->isa; }

qd_qrt_kv *qd_qrt_kv_new(const qd_qrt *rt, int max_T, qd_err *err) {
    const qd_config *c = &rt->q->cfg;
    if (max_T <= 0 || max_T > c->max_seq_len)
        return qd_errf(err, "%s: cache of %d positions (model context %d)", __func__, max_T,
                       c->max_seq_len), NULL;
    qd_qrt_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return qd_errf(err, "%s: out of memory", __func__), NULL;
    kv->max_T = max_T;
    kv->n_layers = c->n_layers;
    kv->kvdim = c->n_kv_heads * c->head_dim;
    size_t n = (size_t)c->n_layers * max_T * kv->kvdim;
    kv->k = malloc(n);
    kv->v = malloc(n);
    if (!kv->k || !kv->v) {
        qd_qrt_kv_free(kv);
        return qd_errf(err, "%s: out of memory for %zu bytes", __func__, 2 * n), NULL;
    }
    return kv;
}

void qd_qrt_kv_free(qd_qrt_kv *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv);
}

/* ---------------------------------------------------------------- attention */

/* One query row (all heads) at position p against cache positions 0..p. */
static void attend(qd_qrt *rt, const layer_rt *L, const int8_t *kc, const int8_t *vc,
                   const int8_t *qrow, int p, int8_t *out) {
    const qd_config *c = &rt->q->cfg;
    int hd = c->head_dim, nh = c->n_heads, grp = nh / c->n_kv_heads, KVd = c->n_kv_heads * hd;
    int16_t *qc = rt->qc;
    for (int h = 0; h < nh; h++) {
        const int8_t *qh = qrow + (size_t)h * hd;
        int kvh = h / grp;
        int32_t qsum = 0;
        for (int d = 0; d < hd; d++) {
            qc[d] = (int16_t)(qh[d] - L->zq);
            qsum += qc[d];
        }
        /* scores: sum (q-zq)(k-zk) = sum qc*k - zk*sum qc */
        for (int j = 0; j <= p; j++) {
            const int8_t *kj = kc + (size_t)j * KVd + (size_t)kvh * hd;
            int32_t s = 0;
            for (int d = 0; d < hd; d++) s += qc[d] * kj[d];
            s -= L->zk * qsum;
            rt->score[j] = (int16_t)qd_clamp32(qd_qmul32(s, L->score_m) + L->z_score, L->score_lo, L->score_hi);
        }
        qd_qsoftmax_row(&L->sm, rt->score, p + 1, rt->prob, rt->work);
        /* PV: sum_j (p_j - zp)(v_j - zv); int32 partial sums over blocks of 128 positions
         * (|p - zp| < 2^16, |v| <= 2^7: 128 terms stay below 2^31), then int64 */
        int64_t *acc = rt->pvacc;
        int32_t *a32 = rt->pv32;
        int64_t psum = 0;
        for (int d = 0; d < hd; d++) acc[d] = 0;
        for (int j0 = 0; j0 <= p; j0 += 128) {
            int j1 = j0 + 128 <= p + 1 ? j0 + 128 : p + 1;
            for (int d = 0; d < hd; d++) a32[d] = 0;
            for (int j = j0; j < j1; j++) {
                int32_t pc = rt->prob[j] - L->z_prob;
                psum += pc;
                const int8_t *vj = vc + (size_t)j * KVd + (size_t)kvh * hd;
                for (int d = 0; d < hd; d++) a32[d] += pc * vj[d];
            }
            for (int d = 0; d < hd; d++) acc[d] += a32[d];
        }
        for (int d = 0; d < hd; d++) {
            int64_t v = acc[d] - (int64_t)L->zv * psum;
            out[(size_t)h * hd + d] = (int8_t)qd_clamp32(qd_qmul64(v, L->pv_m) + L->z_pv, -128, 127);
        }
    }
}

/* ---------------------------------------------------------------- forward */

static int forward_chunk(qd_qrt *rt, qd_qrt_kv *kv, const int *tokens, int n, int pos0,
                         int16_t *logits_q, qd_err *err) {
    const qd_qint *q = rt->q;
    const qd_config *c = &q->cfg;
    int D = c->dim, F = c->hidden_dim, hd = c->head_dim, V = c->vocab_size;
    int QD = c->n_heads * hd, KVd = c->n_kv_heads * hd;
    /* embedding: 8-bit row -> EMB (16-bit) */
    for (int i = 0; i < n; i++) {
        int t = tokens[i];
        if (t < 0 || t >= V) return qd_errf(err, "%s: token %d outside the vocabulary", __func__, t);
        const int8_t *row = (const int8_t *)q->emb.q + (size_t)t * D;
        int32_t zr = q->emb.zero_point[q->emb.per_channel ? t : 0];
        for (int d = 0; d < D; d++)
            rt->x[(size_t)i * D + d] =
                (int16_t)qd_clamp32(qd_qmul32(row[d] - zr, rt->emb_m[t]) + rt->z_emb, -32768, 32767);
    }
    for (int l = 0; l < c->n_layers; l++) {
        layer_rt *L = &rt->L[l];
        int8_t *kc = kv->k + (size_t)l * kv->max_T * KVd, *vc = kv->v + (size_t)l * kv->max_T * KVd;
        for (int i = 0; i < n; i++) qd_qnorm_row(&L->n1, rt->x + (size_t)i * D, L->g1, rt->h8 + (size_t)i * D);
        lin_run(rt, &L->w[QD_W_Q], n, rt->h8, rt->q8);
        lin_run(rt, &L->w[QD_W_K], n, rt->h8, rt->k8);
        lin_run(rt, &L->w[QD_W_V], n, rt->h8, rt->v8);
        for (int i = 0; i < n; i++) {
            int p = pos0 + i;
            qd_qrope_apply(&L->rq, rt->q8 + (size_t)i * QD, rt->q8 + (size_t)i * QD, c->n_heads, p);
            qd_qrope_apply(&L->rk, rt->k8 + (size_t)i * KVd, kc + (size_t)p * KVd, c->n_kv_heads, p);
            memcpy(vc + (size_t)p * KVd, rt->v8 + (size_t)i * KVd, (size_t)KVd);
        }
        for (int i = 0; i < n; i++)
            attend(rt, L, kc, vc, rt->q8 + (size_t)i * QD, pos0 + i, rt->o8 + (size_t)i * QD);
        lin_run(rt, &L->w[QD_W_O], n, rt->o8, rt->t16);
        qd_qadd_i16(&L->res1, rt->x, rt->t16, rt->x2, (size_t)n * D);
        for (int i = 0; i < n; i++) qd_qnorm_row(&L->n2, rt->x2 + (size_t)i * D, L->g2, rt->h8 + (size_t)i * D);
        lin_run(rt, &L->w[QD_W_GATE], n, rt->h8, rt->g8);
        lin_run(rt, &L->w[QD_W_UP], n, rt->h8, rt->u8);
        size_t nf = (size_t)n * F;
        qd_lut8_apply(L->silu, rt->g8, rt->s8, nf);
        for (size_t i = 0; i < nf; i++) {
            int32_t v = (rt->s8[i] - L->z_silu) * (rt->u8[i] - L->z_up);
            rt->m8[i] = (int8_t)qd_clamp32(qd_qmul32(v, L->mul_m) + L->z_dn, -128, 127);
        }
        lin_run(rt, &L->w[QD_W_DOWN], n, rt->m8, rt->t16);
        qd_qadd_i16(&L->res2, rt->x2, rt->t16, rt->x, (size_t)n * D);
    }
    for (int i = 0; i < n; i++) qd_qnorm_row(&rt->nf, rt->x + (size_t)i * D, q->final_norm.q, rt->hf + (size_t)i * D);
    /* LM head on a 16-bit input: a = 256*hi + lo, hi = a >> 8 (signed), lo - 128 signed */
    for (size_t i = 0; i < (size_t)n * D; i++) {
        int32_t a = rt->hf[i];
        rt->hi8[i] = (int8_t)(a >> 8);
        rt->lo8[i] = (int8_t)((a & 255) - 128);
    }
    const lin_rt *H = &rt->head;
    qd_igemm(H->pw, n, rt->hi8, (size_t)D, rt->acc, (size_t)V, rt->isa);
    qd_igemm(H->pw, n, rt->lo8, (size_t)D, rt->acc2, (size_t)V, rt->isa);
    const int32_t *wrs = qd_igemm_w_rowsum(H->pw);
    for (int i = 0; i < n; i++) {
        int64_t sa = 0;
        for (int d = 0; d < D; d++) sa += rt->hf[(size_t)i * D + d];
        for (int v = 0; v < V; v++) {
            size_t k = (size_t)i * V + v;
            int64_t dot = 256 * (int64_t)rt->acc[k] + rt->acc2[k] + 128 * (int64_t)wrs[v];
            int64_t a = dot + H->c[v] - (int64_t)H->zw[v] * sa;
            logits_q[k] = (int16_t)qd_clamp32(qd_qmul64(a, H->m[v]) + H->zo, H->lo, H->hi);
        }
    }
    return QD_OK;
}

int qd_qrt_forward_int(qd_qrt *rt, qd_qrt_kv *kv, const int *tokens, int n, int pos0,
                       int16_t *logits_q, qd_err *err) {
    if (n <= 0 || pos0 < 0 || pos0 + n > kv->max_T)
        return qd_errf(err, "%s: positions %d..%d outside the cache of %d", __func__, pos0,
                       pos0 + n - 1, kv->max_T);
    int V = rt->q->cfg.vocab_size;
    for (int i = 0; i < n; i += rt->chunk) {
        int m = n - i < rt->chunk ? n - i : rt->chunk;
        if (forward_chunk(rt, kv, tokens + i, m, pos0 + i, logits_q + (size_t)i * V, err))
            return QD_ERR;
    }
    return QD_OK;
}

int qd_qrt_forward(qd_qrt *rt, qd_qrt_kv *kv, const int *tokens, int n, int pos0, float *logits,
                   qd_err *err) {
    int V = rt->q->cfg.vocab_size;
    int16_t *lq = malloc((size_t)rt->chunk * V * sizeof *lq);
    if (!lq) return qd_errf(err, "%s: out of memory", __func__);
    int rc = QD_OK;
    for (int i = 0; i < n && rc == QD_OK; i += rt->chunk) {
        int m = n - i < rt->chunk ? n - i : rt->chunk;
        rc = qd_qrt_forward_int(rt, kv, tokens + i, m, pos0 + i, lq, err);
        /* the API boundary: logits leave the integer model as floats */
        for (size_t k = 0; rc == QD_OK && k < (size_t)m * V; k++)
            logits[(size_t)i * V + k] = rt->logit_scale * (float)(lq[k] - rt->logit_zp);
    }
    free(lq);
    return rc;
}

int qd_qrt_decode_step(qd_qrt *rt, qd_qrt_kv *kv, int token, int pos, float *logits,
                       qd_err *err) {
    return qd_qrt_forward(rt, kv, &token, 1, pos, logits, err);
}

int qd_qrt_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err) {
    qd_qrt *rt = ctx;
    qd_qrt_kv *kv = qd_qrt_kv_new(rt, T, err);
    if (!kv) return QD_ERR;
    int rc = QD_OK;
    for (int b = 0; b < B && rc == QD_OK; b++)
        rc = qd_qrt_forward(rt, kv, tokens + (size_t)b * T, T, 0,
                            logits + (size_t)b * T * rt->q->cfg.vocab_size, err);
    qd_qrt_kv_free(kv);
    return rc;
}
