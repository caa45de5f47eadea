/* Integer-only runtime (see qrt.h). qd_qrt_new turns every encoding into integer multipliers,
 * zero-point correction terms and tables; the forward then follows the simulation's dataflow
 * (qsim.h) site by site, so that each intermediate is the simulation's quantized value up to
 * the rounding of fixed-point arithmetic.
 *
 * Linear layers: with a = activation (stored int8, zero point za) and w (stored, per-row zw),
 *   sum_k (a-za)(w-zw) = sum a*w - zw*sum a - za*sum w + K*za*zw,
 * so the igemm result needs a per-row constant c_n = bias_n - za*rowsum(w_n) + K*za*zw_n and,
 * for asymmetric weights, the row sum of a. The 16-bit LM-head input is split into a signed high
 * byte and an unsigned low byte (a = 256*hi + lo), two int8 matmuls, exact.
 *
 * Threads: the process-wide pool (base/pool.h), or one made for the runtime when opts.threads
 * asks for a count of its own, runs jobs of independent tasks. Within a
 * forward, the linear layers and the LM head are split over output-channel panels, attention
 * over (head, block of query rows); the evaluation entry point (qd_qrt_logits_fn) runs whole
 * windows on different threads instead. A task writes only its own outputs, with the thread's
 * own scratch (qrt_ws), and computes them with the same code whatever thread runs it, so the
 * integers never depend on the thread count. */
#include "quant/rt/runtime.h"

#include <assert.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "base/stop.h"
#include "quant/rt/int_ops.h"

typedef struct lin_rt {
    qd_igemm_w *pw;
    int rows, cols;
    qd_qmul *m;       /* rows: s_in * s_w / s_out */
    int64_t *c;       /* rows */
    int32_t *zw;      /* rows */
    int any_zw;
    int32_t zo, lo, hi;
    int out_bits;
    /* fast epilogue (SIMD paths), when every row's |value * multiplier| < 2^61 and shift in
     * [1, 62]: per-row constants padded to a multiple of 8, in 64-bit lanes */
    int fast;
    int64_t *fm, *fsh, *fhm1, *fc; /* mantissa, shift, 2^(shift-1)-1, c (+ 128*rowsum: head) */
} lin_rt;

typedef struct layer_rt {
    lin_rt w[QD_W_PER_LAYER];
    qd_qnorm n1, n2;
    qd_qlnorm ln1, ln2;       /* LayerNorm families: used instead of n1, n2 */
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
    int8_t silu[256];         /* the MLP activation's table (SiLU, or Gemma's tanh GELU) */
    qd_qmul mul_m;            /* s_silu s_up / s_downin */
    int32_t z_silu, z_up, z_dn;
    /* fast attention (SIMD paths): the softmax's exp as a table, and whether the layer's
     * encodings allow it (else the reference attention runs) */
    int fast_attn;
    int32_t *exp_tab;
    int exp_len;
} layer_rt;

/* Scratch of one thread. The activations (chunk rows) belong to a thread that runs a whole
 * forward: ws[0] always, the others once windows run in parallel (allocated then); the
 * attention scratch to every thread. */
typedef struct qrt_ws {
    int has_act;
    int16_t *x, *x2, *t16, *hf, *lq;
    int8_t *h8, *q8, *k8, *v8, *o8, *g8, *u8, *s8, *m8, *hi8, *lo8;
    int32_t *acc, *acc2;      /* acc: (chunk, max(V, QD + 2 KVd, 2 F, D)), acc2: (chunk, V) */
    int64_t *rs;              /* chunk: row sums of a linear layer's input */
    /* reference attention: one row */
    int16_t *score, *prob, *qc;
    int64_t *work, *pvacc;
    int32_t *pv32;
    /* fast attention: QB query rows at a time */
    int32_t *S, *work32;      /* (QB, ldS), ldS */
    int16_t *P, *sc;          /* (QB, ldS), ldS */
    int64_t *acc64, *vsum;    /* (QB, hdp), hdp */
} qrt_ws;

struct qd_qrt {
    const qd_qint *q;
    qd_qint *owned;
    qd_qrt_opts o;
    qd_isa isa;               /* the products (qd_igemm) */
    qd_isa visa;              /* everything else: qd_isa_vector(isa) */
    int nthr;                 /* threads, the caller included */
    long grain;               /* opts.par_grain */
    qd_pool *pool;            /* NULL when nthr == 1 */
    int own_pool;             /* pool made for this runtime (opts.threads > 1), else the default */
    qrt_ws *ws;               /* nthr */
    layer_rt *L;
    qd_qrope rope_master;     /* owns the cos/sin tables */
    qd_qmul *emb_m;           /* vocab: s_row / s_emb */
    int32_t z_emb;
    qd_qnorm nf;
    qd_qlnorm lnf;
    int layernorm;            /* cfg.norm == QD_NORM_LAYER: ln1, ln2, lnf */
    lin_rt head;              /* 16-bit input via hi/lo bytes */
    qd_igemm_w *head_pw;
    float logit_scale;
    int32_t logit_zp;
    int chunk;
    int max_T;
    int ldS, hdp;
};

#define QB 16 /* query rows per attention block */

/* The cache is kept in two forms, both always written: plain rows for the reference path and
 * packed for the fast one: K as igemm weights (rows = positions, K = head_dim) per (layer, kv
 * head), V in pairs of positions (pairs, hdp, 2) int16 per (layer, kv head), hdp = head_dim
 * rounded up to 16, for vpdpwssd/vpmaddwd. */
struct qd_qrt_kv {
    int max_T, n_layers, kvdim, n_kv, hd, hdp, JP;
    int8_t *k, *v; /* (n_layers, max_T, kvdim) */
    qd_igemm_w **kp;  /* n_layers * n_kv */
    int16_t *vp;      /* (n_layers, n_kv, JP, hdp, 2), JP = ceil(max_T / 2) */
};

void qd_qrt_defaults(qd_qrt_opts *o) {
    o->isa = QD_ISA_AUTO;
    o->chunk = 64;
    o->threads = 0;
    o->par_grain = 1L << 18;
}

/* A task of the runtime: ctx, the task's index, the running thread's scratch. */
typedef void (*par_fn)(void *ctx, int task, qrt_ws *ws);

typedef struct par_call {
    qd_qrt *rt;
    par_fn fn;
    void *ctx;
} par_call;

static void par_tramp(void *ctx, int task, int tid) {
    par_call *c = ctx;
    c->fn(c->ctx, task, &c->rt->ws[tid]);
}

/* Whether an operation of this many multiply-adds (roughly) goes to the pool: par set (the
 * caller is thread 0, outside any job), a pool, and work reaching the grain. */
static int par_go(const qd_qrt *rt, int par, double work) {
    return par && rt->pool && work >= (double)rt->grain;
}

/* Parts to cut n panels into: a few per thread when going parallel (a preempted thread then
 * leaves work to the others), else one. */
static int par_parts(const qd_qrt *rt, int go, int n) {
    int want = go ? 4 * rt->nthr : 1;
    return n < want ? n : want;
}

/* Runs tasks 0..ntasks-1 on the pool when go, else in order on the calling thread with its
 * scratch ws. */
static void par_run(qd_qrt *rt, qrt_ws *ws, int go, int ntasks, par_fn fn, void *ctx) {
    if (go && ntasks > 1) {
        par_call c = {rt, fn, ctx};
        qd_pool_run(rt->pool, ntasks, par_tramp, &c);
        return;
    }
    for (int t = 0; t < ntasks; t++) fn(ctx, t, ws);
}

static void lin_free(lin_rt *l) {
    qd_igemm_w_free(l->pw);
    free(l->m);
    free(l->c);
    free(l->zw);
    free(l->fm);
    free(l->fsh);
    free(l->fhm1);
    free(l->fc);
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
    /* The fast epilogue multiplies in 64 bits: it needs |v * m| < 2^61 for every value v =
     * sum (a-za)(w-zw) + bias the row can produce, with |a - za| <= amax over the input grid,
     * and |sum a| < 2^31 (one 32-bit product). Otherwise the reference epilogue runs. */
    size_t np = ((size_t)w->rows + 7) & ~(size_t)7;
    L->fm = calloc(np, 8), L->fsh = calloc(np, 8), L->fhm1 = calloc(np, 8), L->fc = calloc(np, 8);
    if (!L->fm || !L->fsh || !L->fhm1 || !L->fc) return qd_errf(err, "%s: out of memory", __func__);
    int64_t lo_in = qd_qmin(in->bits), hi_in = qd_qmax(in->bits);
    int64_t amax = llabs(lo_in - za) > llabs(hi_in - za) ? llabs(lo_in - za) : llabs(hi_in - za);
    L->fast = K * (llabs(lo_in) > hi_in ? llabs(lo_in) : hi_in) < ((int64_t)1 << 31);
    for (int r = 0; r < w->rows; r++) {
        const uint8_t *row = w->q + (size_t)r * qd_qlin_row_bytes(w);
        int64_t wdev = 0;
        for (int k = 0; k < w->cols; k++) {
            int64_t d = llabs((int64_t)(w->bits == 8 ? (int8_t)row[k] : qd_s4_get(row, k)) - L->zw[r]);
            wdev = d > wdev ? d : wdev;
        }
        __int128 B = (__int128)K * amax * wdev + llabs(w->bias ? w->bias[r] : 0);
        if (!(B * L->m[r].m < ((__int128)1 << 61)) || L->m[r].shift < 1 || L->m[r].shift > 62)
            L->fast = 0;
        L->fm[r] = L->m[r].m;
        L->fsh[r] = L->m[r].shift;
        L->fhm1[r] = L->fsh[r] >= 1 && L->fsh[r] <= 62 ? ((int64_t)1 << (L->fsh[r] - 1)) - 1 : 0;
        L->fc[r] = L->c[r];
    }
    return QD_OK;
}

/* Requantizes accumulators of M rows, columns n0..n1-1 (rows of L->rows values), into out
 * (int8 or int16 per out_bits). rowsum_a: the input's row sums when the weights are
 * asymmetric. */
static void lin_epilogue(const lin_rt *L, int M, const int32_t *acc, const int64_t *rowsum_a,
                         void *out, int n0, int n1) {
    for (int i = 0; i < M; i++) {
        const int32_t *a = acc + (size_t)i * L->rows;
        int64_t sa = rowsum_a ? rowsum_a[i] : 0;
        for (int n = n0; n < n1; n++) {
            int64_t v = (int64_t)a[n] + L->c[n] - (int64_t)L->zw[n] * sa;
            int32_t y = qd_clamp32(qd_qmul64(v, L->m[n]) + L->zo, L->lo, L->hi);
            if (L->out_bits <= 8) ((int8_t *)out)[(size_t)i * L->rows + n] = (int8_t)y;
            else ((int16_t *)out)[(size_t)i * L->rows + n] = (int16_t)y;
        }
    }
}

/* ---------------------------------------------------------------- fast epilogue */

/* The same integers as lin_epilogue when L->fast: v fits a 64-bit product with the mantissa,
 * so round(v * M) is an int64 multiply and a rounded shift. acc2 (the LM head's low bytes):
 * v = 256*acc + acc2 + fc (fc then holds c + 128*rowsum(w)). */
static void lin_epilogue_fast_c(const lin_rt *L, int M, const int32_t *acc, const int32_t *acc2,
                                const int64_t *rowsum_a, void *out, int n0, int n1) {
    for (int i = 0; i < M; i++) {
        const int32_t *a = acc + (size_t)i * L->rows, *a2 = acc2 ? acc2 + (size_t)i * L->rows : NULL;
        int64_t sa = rowsum_a ? rowsum_a[i] : 0;
        for (int n = n0; n < n1; n++) {
            int64_t v = (a2 ? 256 * (int64_t)a[n] + a2[n] : a[n]) + L->fc[n] - (int64_t)L->zw[n] * sa;
            int32_t y = qd_clamp32(qd_rshift_rne(v * L->fm[n], (int)L->fsh[n]) + L->zo, L->lo, L->hi);
            if (L->out_bits <= 8) ((int8_t *)out)[(size_t)i * L->rows + n] = (int8_t)y;
            else ((int16_t *)out)[(size_t)i * L->rows + n] = (int16_t)y;
        }
    }
}

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* rne(x / 2^n) for |x| < 2^62, 1 <= n <= 62: floor((x + 2^(n-1) - 1 + bit_n(x)) / 2^n) */
static inline T512 __m512i rne512(__m512i x, __m512i n, __m512i hm1) {
    __m512i bit = _mm512_and_si512(_mm512_srlv_epi64(x, n), _mm512_set1_epi64(1));
    return _mm512_srav_epi64(_mm512_add_epi64(_mm512_add_epi64(x, hm1), bit), n);
}

static T512 void lin_epilogue_512(const lin_rt *L, int M, const int32_t *acc, const int32_t *acc2,
                                  const int64_t *rowsum_a, void *out, int n0, int n1) {
    const __m512i zo = _mm512_set1_epi64(L->zo), lo = _mm512_set1_epi64(L->lo),
                  hi = _mm512_set1_epi64(L->hi);
    const int N = L->rows;
    for (int i = 0; i < M; i++) {
        const int32_t *a = acc + (size_t)i * N, *a2 = acc2 ? acc2 + (size_t)i * N : NULL;
        const __m512i sa = _mm512_set1_epi64(rowsum_a ? rowsum_a[i] : 0);
        for (int n = n0; n < n1; n += 8) {
            __mmask8 k = n1 - n >= 8 ? 0xff : (__mmask8)((1u << (n1 - n)) - 1);
            __m512i v = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, a + n));
            if (a2)
                v = _mm512_add_epi64(_mm512_slli_epi64(v, 8),
                                     _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, a2 + n)));
            __m512i zw = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, L->zw + n));
            v = _mm512_sub_epi64(_mm512_add_epi64(v, _mm512_loadu_si512(L->fc + n)),
                                 _mm512_mul_epi32(zw, sa));
            /* v * m exactly mod 2^64 (|v * m| < 2^61): low half unsigned, high half signed */
            __m512i m = _mm512_loadu_si512(L->fm + n);
            __m512i x = _mm512_add_epi64(
                _mm512_mul_epu32(v, m),
                _mm512_slli_epi64(_mm512_mul_epi32(_mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0xf5), m), 32));
            __m512i y = rne512(x, _mm512_loadu_si512(L->fsh + n), _mm512_loadu_si512(L->fhm1 + n));
            y = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(y, zo), lo), hi);
            if (L->out_bits <= 8) _mm512_mask_cvtepi64_storeu_epi8((int8_t *)out + (size_t)i * N + n, k, y);
            else _mm512_mask_cvtepi64_storeu_epi16((int16_t *)out + (size_t)i * N + n, k, y);
        }
    }
}

#define T256 __attribute__((target("avx2")))

/* rne512 on 4 lanes with per-lane shifts: AVX2 has a variable logical 64-bit shift only, so
 * the arithmetic one is ((y ^ s) >> n) ^ s with s the sign mask. */
static inline T256 __m256i rne256(__m256i x, __m256i n, __m256i hm1) {
    __m256i bit = _mm256_and_si256(_mm256_srlv_epi64(x, n), _mm256_set1_epi64x(1));
    __m256i y = _mm256_add_epi64(_mm256_add_epi64(x, hm1), bit);
    __m256i s = _mm256_cmpgt_epi64(_mm256_setzero_si256(), y);
    return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(y, s), n), s);
}

/* lin_epilogue_512 with AVX2 (the AVX2 and AVX-VNNI paths), 4 channels a step; the last
 * n1 - n0 mod 4 channels, and rows whose activation sum does not fit 32 bits (the vector
 * product takes 32-bit operands), take lin_epilogue_fast_c's formula. */
static T256 void lin_epilogue_256(const lin_rt *L, int M, const int32_t *acc, const int32_t *acc2,
                                  const int64_t *rowsum_a, void *out, int n0, int n1) {
    const __m256i zo = _mm256_set1_epi64x(L->zo), lo = _mm256_set1_epi64x(L->lo),
                  hi = _mm256_set1_epi64x(L->hi);
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const int N = L->rows;
    for (int i = 0; i < M; i++) {
        const int32_t *a = acc + (size_t)i * N, *a2 = acc2 ? acc2 + (size_t)i * N : NULL;
        int64_t sa1 = rowsum_a ? rowsum_a[i] : 0;
        const __m256i sa = _mm256_set1_epi64x(sa1);
        int n = n0;
        if (sa1 == (int32_t)sa1)
            for (; n + 4 <= n1; n += 4) {
                __m256i v = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(a + n)));
                if (a2)
                    v = _mm256_add_epi64(_mm256_slli_epi64(v, 8),
                                         _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(a2 + n))));
                __m256i zw = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(L->zw + n)));
                v = _mm256_sub_epi64(_mm256_add_epi64(v, _mm256_loadu_si256((const __m256i *)(L->fc + n))),
                                     _mm256_mul_epi32(zw, sa));
                /* v * m exactly mod 2^64 (|v * m| < 2^61): low half unsigned, high half signed */
                __m256i m = _mm256_loadu_si256((const __m256i *)(L->fm + n));
                __m256i x = _mm256_add_epi64(
                    _mm256_mul_epu32(v, m),
                    _mm256_slli_epi64(_mm256_mul_epi32(_mm256_shuffle_epi32(v, 0xf5), m), 32));
                __m256i y = rne256(x, _mm256_loadu_si256((const __m256i *)(L->fsh + n)),
                                   _mm256_loadu_si256((const __m256i *)(L->fhm1 + n)));
                y = _mm256_add_epi64(y, zo);
                y = _mm256_blendv_epi8(y, lo, _mm256_cmpgt_epi64(lo, y));
                y = _mm256_blendv_epi8(y, hi, _mm256_cmpgt_epi64(y, hi));
                __m128i y32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y, pick));
                __m128i y16 = _mm_packs_epi32(y32, y32);
                if (L->out_bits <= 8) {
                    int32_t b4 = _mm_cvtsi128_si32(_mm_packs_epi16(y16, y16));
                    memcpy((int8_t *)out + (size_t)i * N + n, &b4, 4);
                } else {
                    _mm_storel_epi64((__m128i *)((int16_t *)out + (size_t)i * N + n), y16);
                }
            }
        for (; n < n1; n++) {
            int64_t v = (a2 ? 256 * (int64_t)a[n] + a2[n] : a[n]) + L->fc[n] - (int64_t)L->zw[n] * sa1;
            int32_t y = qd_clamp32(qd_rshift_rne(v * L->fm[n], (int)L->fsh[n]) + L->zo, L->lo, L->hi);
            if (L->out_bits <= 8) ((int8_t *)out)[(size_t)i * N + n] = (int8_t)y;
            else ((int16_t *)out)[(size_t)i * N + n] = (int16_t)y;
        }
    }
}

static void lin_requant(const qd_qrt *rt, const lin_rt *L, int M, const int32_t *acc,
                        const int64_t *rowsum_a, void *out, int n0, int n1) {
    if (rt->visa == QD_ISA_SCALAR || !L->fast) lin_epilogue(L, M, acc, rowsum_a, out, n0, n1);
    else if (rt->visa == QD_ISA_AVX512_VNNI) lin_epilogue_512(L, M, acc, NULL, rowsum_a, out, n0, n1);
    else if (rt->visa == QD_ISA_AVX2 || rt->visa == QD_ISA_AVX_VNNI)
        lin_epilogue_256(L, M, acc, NULL, rowsum_a, out, n0, n1);
    else lin_epilogue_fast_c(L, M, acc, NULL, rowsum_a, out, n0, n1);
}

/* ---------------------------------------------------------------- linear layers as jobs */

/* Up to 3 linear layers on one input (Q, K, V), or the SwiGLU pair (gate, up: then the SiLU
 * table and the product for the same columns follow in the same task). Each layer's output
 * channels are cut into panel ranges, one task each; accumulators per layer in acc. */
typedef struct lin_job {
    const qd_qrt *rt;
    const layer_rt *Ly;       /* swiglu: the layer (SiLU table, product encodings) */
    int M, nl, swiglu;
    const int8_t *A;
    const int64_t *rs;        /* row sums of A (asymmetric weights), or NULL */
    const lin_rt *L[3];
    void *out[3];
    int32_t *acc[3];
    int parts[3];             /* tasks per layer */
    int8_t *s8, *m8;          /* swiglu: SiLU(gate) and the product */
} lin_job;

/* Output channels of part j of parts over a layer of N rows: whole panels of 16. */
static void part_cols(int N, int j, int parts, int *n0, int *n1) {
    int np = (N + 15) / 16;
    *n0 = 16 * (int)((long)np * j / parts);
    *n1 = 16 * (int)((long)np * (j + 1) / parts);
    if (*n1 > N) *n1 = N;
}

static void lin_task(void *ctx, int t, qrt_ws *ws) {
    (void)ws; /* pool task signature; this task needs no scratch */
    const lin_job *J = ctx;
    int i = 0;
    while (t >= J->parts[i]) t -= J->parts[i++];
    int n0, n1;
    part_cols(J->L[i]->rows, t, J->parts[i], &n0, &n1);
    for (int k = 0; k < (J->swiglu ? 2 : 1); k++, i++) {
        const lin_rt *L = J->L[i];
        qd_igemm_cols(L->pw, n0, n1, J->M, J->A, (size_t)L->cols, J->acc[i], (size_t)L->rows,
                      J->rt->isa);
        lin_requant(J->rt, L, J->M, J->acc[i], L->any_zw ? J->rs : NULL, J->out[i], n0, n1);
    }
    if (!J->swiglu) return;
    const layer_rt *Ly = J->Ly;
    size_t F = (size_t)J->L[0]->rows;
    const int8_t *g8 = J->out[0], *u8 = J->out[1];
    for (int r = 0; r < J->M; r++) {
        size_t o = (size_t)r * F + n0, nf = (size_t)(n1 - n0);
        qd_lut8_apply(Ly->silu, g8 + o, J->s8 + o, nf);
        if (J->rt->visa == QD_ISA_SCALAR) {
            for (size_t k = o; k < o + nf; k++) {
                int32_t v = (J->s8[k] - Ly->z_silu) * (u8[k] - Ly->z_up);
                J->m8[k] = (int8_t)qd_clamp32(qd_qmul32(v, Ly->mul_m) + Ly->z_dn, -128, 127);
            }
        } else {
            qd_qmul_i8(J->s8 + o, Ly->z_silu, u8 + o, Ly->z_up, Ly->mul_m, Ly->z_dn, J->m8 + o, nf,
                       J->rt->visa);
        }
    }
}

/* Splits each layer of J into as many panel ranges as threads allow (a few per thread, so a
 * preempted thread leaves work to the others) and runs the job. */
static void lin_job_run(qd_qrt *rt, qrt_ws *ws, int par, lin_job *J) {
    double work = 0;
    int nt = 0;
    size_t off = 0;
    for (int i = 0; i < J->nl; i++) {
        const lin_rt *L = J->L[i];
        if (L->any_zw && !J->rs) { /* row sums of the shared input, once */
            for (int r = 0; r < J->M; r++) {
                int64_t s = 0;
                for (int k = 0; k < L->cols; k++) s += J->A[(size_t)r * L->cols + k];
                ws->rs[r] = s;
            }
            J->rs = ws->rs;
        }
        J->acc[i] = ws->acc + off;
        off += (size_t)J->M * L->rows;
        work += (double)J->M * L->rows * L->cols;
    }
    int go = par_go(rt, par, work);
    for (int i = 0; i < J->nl; i++) {
        J->parts[i] = J->swiglu && i == 1 ? 0 : par_parts(rt, go, (J->L[i]->rows + 15) / 16);
        nt += J->parts[i];
    }
    par_run(rt, ws, go, nt, lin_task, J);
}

static void lin_run(qd_qrt *rt, qrt_ws *ws, int par, const lin_rt *L, int M, const int8_t *A,
                    void *out) {
    lin_job J = {.rt = rt, .M = M, .nl = 1, .A = A, .L = {L}, .out = {out}};
    lin_job_run(rt, ws, par, &J);
}

static const qd_qenc *enc(const qd_qint *q, int l, int site) {
    return &q->act[qd_act_index(q->cfg.n_layers, l, site)];
}

/* Sites held in int8 buffers must be 8-bit; the others fit int16. */
/* The per-layer sites the runtime computes on 8-bit integer paths only. */
static int site_must8(int s) {
    static const int must8[] = {QD_AQ_ATTN_NORM, QD_AQ_Q, QD_AQ_K, QD_AQ_V, QD_AQ_QROPE,
                                QD_AQ_KROPE, QD_AQ_PV, QD_AQ_FFN_NORM, QD_AQ_GATE, QD_AQ_UP,
                                QD_AQ_SILU, QD_AQ_DOWN_IN};
    for (size_t i = 0; i < sizeof must8 / sizeof must8[0]; i++)
        if (must8[i] == s) return 1;
    return 0;
}

int qd_qrt_abits_ok(int aclass, int bits, const char **allowed) {
    int only8 = 0;
    for (int s = 0; s < QD_AQ_PER_LAYER; s++) only8 |= qd_aq_site_class(s) == aclass && site_must8(s);
    if (allowed) *allowed = only8 ? "8" : "8, 16";
    return aclass >= 0 && aclass < QD_AC_COUNT && (bits == 8 || (!only8 && bits == 16));
}

static int check_bits(const qd_qint *q, qd_err *err) {
    for (int l = 0; l < q->cfg.n_layers; l++)
        for (int s = 0; s < QD_AQ_PER_LAYER; s++) {
            int b = enc(q, l, s)->bits, is8 = site_must8(s);
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

/* max |g - zg| over a norm weight (qd_qnorm.gmax) */
static int64_t gdev(const int16_t *g, int n, int32_t zg) {
    int64_t m = 0;
    for (int i = 0; i < n; i++) m = llabs((int64_t)g[i] - zg) > m ? llabs((int64_t)g[i] - zg) : m;
    return m;
}

/* Activations for chunk rows (a thread that runs whole forwards). */
static int ws_alloc_act(const qd_qrt *rt, qrt_ws *w, qd_err *err) {
    if (w->has_act) return QD_OK;
    const qd_config *c = &rt->q->cfg;
    size_t C = (size_t)rt->chunk, D = c->dim, F = c->hidden_dim, V = c->vocab_size;
    size_t QD = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    size_t accw = V;
    accw = QD + 2 * KV > accw ? QD + 2 * KV : accw;
    accw = 2 * F > accw ? 2 * F : accw;
    accw = D > accw ? D : accw;
    w->x = malloc(C * D * 2), w->x2 = malloc(C * D * 2), w->t16 = malloc(C * D * 2);
    w->hf = malloc(C * D * 2), w->lq = malloc(C * V * 2);
    w->h8 = malloc(C * D), w->q8 = malloc(C * QD), w->k8 = malloc(C * KV), w->v8 = malloc(C * KV);
    w->o8 = malloc(C * QD), w->g8 = malloc(C * F), w->u8 = malloc(C * F), w->s8 = malloc(C * F);
    w->m8 = malloc(C * F), w->hi8 = malloc(C * D), w->lo8 = malloc(C * D);
    w->acc = malloc(C * accw * 4), w->acc2 = malloc(C * V * 4), w->rs = malloc(C * 8);
    if (!w->x || !w->x2 || !w->t16 || !w->hf || !w->lq || !w->h8 || !w->q8 || !w->k8 || !w->v8 ||
        !w->o8 || !w->g8 || !w->u8 || !w->s8 || !w->m8 || !w->hi8 || !w->lo8 || !w->acc ||
        !w->acc2 || !w->rs)
        return qd_errf(err, "%s: out of memory for a chunk of %zu rows", __func__, C);
    w->has_act = 1;
    return QD_OK;
}

/* Attention scratch (every thread). */
static int ws_alloc_attn(const qd_qrt *rt, qrt_ws *w, qd_err *err) {
    size_t T = (size_t)rt->max_T, hd = (size_t)rt->q->cfg.head_dim;
    size_t ldS = (size_t)rt->ldS, hdp = (size_t)rt->hdp;
    w->score = malloc(T * 2), w->prob = malloc(T * 2), w->qc = malloc(hd * 2);
    w->work = malloc(T * 8), w->pvacc = malloc(hd * 8), w->pv32 = malloc(hd * 4);
    w->S = malloc(QB * ldS * 4), w->work32 = malloc(ldS * 4);
    w->P = malloc(QB * ldS * 2), w->sc = malloc(ldS * 2);
    w->acc64 = malloc(QB * hdp * 8), w->vsum = malloc(hdp * 8);
    if (!w->score || !w->prob || !w->qc || !w->work || !w->pvacc || !w->pv32 || !w->S ||
        !w->work32 || !w->P || !w->sc || !w->acc64 || !w->vsum)
        return qd_errf(err, "%s: out of memory", __func__);
    return QD_OK;
}

static void ws_free(qrt_ws *w) {
    void *bufs[] = {w->x, w->x2, w->t16, w->hf, w->lq, w->h8, w->q8, w->k8, w->v8, w->o8,
                    w->g8, w->u8, w->s8, w->m8, w->hi8, w->lo8, w->acc, w->acc2, w->rs,
                    w->score, w->prob, w->qc, w->work, w->pvacc, w->pv32, w->S, w->work32,
                    w->P, w->sc, w->acc64, w->vsum};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    memset(w, 0, sizeof *w);
}

void qd_qrt_free(qd_qrt *rt) {
    if (!rt) return;
    if (rt->L)
        for (int l = 0; l < rt->q->cfg.n_layers; l++)
            for (int w = 0; w < QD_W_PER_LAYER; w++) lin_free(&rt->L[l].w[w]);
    if (rt->L)
        for (int l = 0; l < rt->q->cfg.n_layers; l++) {
            free(rt->L[l].exp_tab);
            qd_qlnorm_free(&rt->L[l].ln1);
            qd_qlnorm_free(&rt->L[l].ln2);
        }
    qd_qlnorm_free(&rt->lnf);
    free(rt->L);
    qd_qrope_free(&rt->rope_master);
    free(rt->emb_m);
    lin_free(&rt->head);
    qd_igemm_w_free(rt->head_pw);
    if (rt->own_pool) qd_pool_free(rt->pool);
    for (int t = 0; rt->ws && t < rt->nthr; t++) ws_free(&rt->ws[t]);
    free(rt->ws);
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
    rt->visa = qd_isa_vector(rt->isa);
    const qd_config *c = &q->cfg;
    int nl = c->n_layers, D = c->dim, hd = c->head_dim, V = c->vocab_size;
    rt->max_T = c->max_seq_len;
    rt->chunk = rt->o.chunk > 0 ? rt->o.chunk : 64;
    rt->grain = rt->o.par_grain >= 0 ? rt->o.par_grain : 0;
    rt->nthr = rt->o.threads;
    if (rt->nthr <= 0) { /* the default pool */
        rt->pool = qd_pool_default();
        rt->nthr = qd_pool_threads(rt->pool);
        if (rt->nthr == 1) rt->pool = NULL;
    }
    if (rt->nthr > QD_QRT_MAX_THREADS) rt->nthr = QD_QRT_MAX_THREADS;
    rt->L = calloc((size_t)nl, sizeof *rt->L);
    if (!rt->L) goto oom;
    rt->layernorm = c->norm == QD_NORM_LAYER;
    /* RoPE tables once; per-site copies share them */
    {
        int rot = qd_rot_dim(c);
        double *fr = malloc((size_t)(rot / 2) * sizeof *fr);
        if (!fr) goto oom;
        for (int i = 0; i < rot / 2; i++) fr[i] = qd_rope_inv_freq(c, i);
        int rc = qd_qrope_init_freq(&rt->rope_master, rt->max_T, hd, rot, fr, 1, 0, 1, 0, err);
        free(fr);
        if (rc) goto fail;
    }
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
        if (rt->layernorm &&
            (!ql->attn_norm_b.q || !ql->ffn_norm_b.q ||
             qd_qlnorm_init(&L->ln1, D, xin->scale, xin->zero_point, ql->attn_norm.scale,
                            ql->attn_norm.zero_point, ql->attn_norm_b.scale,
                            ql->attn_norm_b.zero_point, ql->attn_norm_b.q, e_n1->scale,
                            e_n1->zero_point, 8, c->norm_eps, err) ||
             qd_qlnorm_init(&L->ln2, D, e_r1->scale, e_r1->zero_point, ql->ffn_norm.scale,
                            ql->ffn_norm.zero_point, ql->ffn_norm_b.scale,
                            ql->ffn_norm_b.zero_point, ql->ffn_norm_b.q, e_n2->scale,
                            e_n2->zero_point, 8, c->norm_eps, err))) {
            if (!ql->attn_norm_b.q || !ql->ffn_norm_b.q)
                qd_errf(err, "%s: layer %d: LayerNorm without its bias", __func__, l);
            goto fail;
        }
        L->n1.gmax = gdev(L->g1, D, L->n1.zg);
        L->n2.gmax = gdev(L->g2, D, L->n2.zg);
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
        /* the fast attention's conditions: q - zq fits int16 as in the reference, the padding
         * value z_prob fits int16, both multipliers shift by 1..62 */
        L->fast_attn = L->zq >= -32640 && L->zq <= 32639 && L->z_prob >= -32768 &&
                       L->z_prob <= 32767 && L->score_m.shift >= 1 && L->score_m.shift <= 62 &&
                       qd_qsoftmax_fast_ok(&L->sm);
        L->exp_tab = malloc(sizeof(int32_t) << es->bits);
        if (!L->exp_tab) goto oom;
        L->exp_len = qd_qsoftmax_tab(&L->sm, es->bits, L->exp_tab);
        const qd_qenc *eo = enc(q, l, QD_AQ_O), *ed = enc(q, l, QD_AQ_DOWN);
        const qd_qenc *er2 = enc(q, l, QD_AQ_RES2);
        if (qd_qadd_init(&L->res1, xin->scale, xin->zero_point, eo->scale, eo->zero_point,
                         e_r1->scale, e_r1->zero_point, e_r1->bits, err) ||
            qd_qadd_init(&L->res2, e_r1->scale, e_r1->zero_point, ed->scale, ed->zero_point,
                         er2->scale, er2->zero_point, er2->bits, err))
            goto fail;
        const qd_qenc *eg = enc(q, l, QD_AQ_GATE), *eu = enc(q, l, QD_AQ_UP);
        const qd_qenc *esl = enc(q, l, QD_AQ_SILU), *edi = enc(q, l, QD_AQ_DOWN_IN);
        qd_lut8_build(L->silu, c->act == QD_ACT_GELU_TANH ? qd_gelu_tanh : qd_silu, eg->scale,
                      eg->zero_point, esl->scale, esl->zero_point);
        if (qd_qmul_make((double)esl->scale * eu->scale / edi->scale, &L->mul_m, err)) goto fail;
        L->z_silu = esl->zero_point, L->z_up = eu->zero_point, L->z_dn = edi->zero_point;
    }
    /* embedding rows -> EMB encoding, Gemma's embedding scale folded into the multipliers (the
     * rows stay unscaled: a tied head shares them) */
    const qd_qenc *eemb = enc(q, -1, QD_AQG_EMB);
    rt->emb_m = malloc((size_t)V * sizeof *rt->emb_m);
    if (!rt->emb_m) goto oom;
    for (int v = 0; v < V; v++)
        if (qd_qmul_make((double)q->emb.scale[q->emb.per_channel ? v : 0] *
                             (double)qd_emb_scale(c) / eemb->scale,
                         &rt->emb_m[v], err))
            goto fail;
    rt->z_emb = eemb->zero_point;
    const qd_qenc *ex = enc(q, nl - 1, QD_AQ_RES2), *ehi = enc(q, -1, QD_AQG_HEAD_IN);
    const qd_qenc *elg = enc(q, -1, QD_AQG_LOGITS);
    if (qd_qnorm_init(&rt->nf, D, ex->scale, ex->zero_point, q->final_norm.scale,
                      q->final_norm.zero_point, ehi->scale, ehi->zero_point, 16, c->norm_eps, err))
        goto fail;
    if (rt->layernorm &&
        (!q->final_norm_b.q ||
         qd_qlnorm_init(&rt->lnf, D, ex->scale, ex->zero_point, q->final_norm.scale,
                        q->final_norm.zero_point, q->final_norm_b.scale,
                        q->final_norm_b.zero_point, q->final_norm_b.q, ehi->scale,
                        ehi->zero_point, 16, c->norm_eps, err))) {
        if (!q->final_norm_b.q) qd_errf(err, "%s: final LayerNorm without its bias", __func__);
        goto fail;
    }
    if (q->head.bits != 8) {
        qd_errf(err, "%s: the LM head must be 8-bit (is %d)", __func__, q->head.bits);
        goto fail;
    }
    rt->nf.gmax = gdev(q->final_norm.q, D, rt->nf.zg);
    if (lin_init(&rt->head, &q->head, ehi, elg, 1, "lm_head", err)) goto fail;
    for (int v = 0; v < V; v++) /* the hi/lo split's +128 * rowsum folded into the constant */
        rt->head.fc[v] = rt->head.c[v] + 128 * (int64_t)qd_igemm_w_rowsum(rt->head.pw)[v];
    rt->logit_scale = elg->scale;
    rt->logit_zp = elg->zero_point;
    /* scratch: per thread; the pool last, once nothing else can fail */
    rt->ldS = (rt->max_T + 1 + 15) & ~15;
    rt->hdp = (hd + 15) & ~15;
    rt->ws = calloc((size_t)rt->nthr, sizeof *rt->ws);
    if (!rt->ws) goto oom;
    for (int t = 0; t < rt->nthr; t++)
        if (ws_alloc_attn(rt, &rt->ws[t], err)) goto fail;
    if (ws_alloc_act(rt, &rt->ws[0], err)) goto fail;
    if (rt->nthr > 1 && !rt->pool) {
        if (!(rt->pool = qd_pool_new(rt->nthr, err))) goto fail;
        rt->own_pool = 1;
    }
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
    kv->n_kv = c->n_kv_heads;
    kv->hd = c->head_dim;
    kv->hdp = (c->head_dim + 15) & ~15;
    kv->JP = (max_T + 1) / 2;
    size_t n = (size_t)c->n_layers * max_T * kv->kvdim;
    size_t nvp = (size_t)c->n_layers * kv->n_kv * kv->JP * kv->hdp * 2;
    kv->k = malloc(n);
    kv->v = malloc(n);
    kv->vp = calloc(nvp, sizeof *kv->vp); /* zero: lanes past head_dim are read, never used */
    kv->kp = calloc((size_t)c->n_layers * kv->n_kv, sizeof *kv->kp);
    if (!kv->k || !kv->v || !kv->vp || !kv->kp) {
        qd_qrt_kv_free(kv);
        return qd_errf(err, "%s: out of memory for %zu bytes", __func__, 2 * n + 2 * nvp), NULL;
    }
    for (int i = 0; i < c->n_layers * kv->n_kv; i++)
        if (!(kv->kp[i] = qd_igemm_w_new_s8(max_T, kv->hd, err))) {
            qd_qrt_kv_free(kv);
            return NULL;
        }
    return kv;
}

void qd_qrt_kv_free(qd_qrt_kv *kv) {
    if (!kv) return;
    if (kv->kp)
        for (int i = 0; i < kv->n_layers * kv->n_kv; i++) qd_igemm_w_free(kv->kp[i]);
    free(kv->kp);
    free(kv->vp);
    free(kv->k);
    free(kv->v);
    free(kv);
}

/* Positions pos0..pos0+n-1 of layer l (already in the plain cache) into the packed forms. */
static void kv_pack(qd_qrt_kv *kv, int l, int pos0, int n) {
    int KVd = kv->kvdim, hd = kv->hd, hdp = kv->hdp;
    const int8_t *kc = kv->k + (size_t)l * kv->max_T * KVd, *vc = kv->v + (size_t)l * kv->max_T * KVd;
    for (int h = 0; h < kv->n_kv; h++) {
        qd_igemm_w_set_rows(kv->kp[l * kv->n_kv + h], pos0, n, kc + (size_t)pos0 * KVd + (size_t)h * hd,
                            (size_t)KVd);
        int16_t *vp = kv->vp + ((size_t)l * kv->n_kv + h) * kv->JP * hdp * 2;
        for (int p = pos0; p < pos0 + n; p++) {
            const int8_t *v = vc + (size_t)p * KVd + (size_t)h * hd;
            int16_t *dst = vp + (size_t)(p / 2) * hdp * 2 + (p & 1);
            for (int d = 0; d < hd; d++) dst[2 * d] = v[d];
        }
    }
}

/* ---------------------------------------------------------------- attention */

/* Head h of one query row at position p against cache positions 0..p; scratch in ws. */
static void attend(const qd_qrt *rt, qrt_ws *ws, const layer_rt *L, const int8_t *kc,
                   const int8_t *vc, const int8_t *qrow, int p, int8_t *out, int h) {
    const qd_config *c = &rt->q->cfg;
    int hd = c->head_dim, nh = c->n_heads, grp = nh / c->n_kv_heads, KVd = c->n_kv_heads * hd;
    int16_t *qc = ws->qc;
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
        ws->score[j] = (int16_t)qd_clamp32(qd_qmul32(s, L->score_m) + L->z_score, L->score_lo, L->score_hi);
    }
    qd_qsoftmax_row(&L->sm, ws->score, p + 1, ws->prob, ws->work);
    /* PV: sum_j (p_j - zp)(v_j - zv); int32 partial sums over blocks of 128 positions
     * (|p - zp| < 2^16, |v| <= 2^7: 128 terms stay below 2^31), then int64 */
    int64_t *acc = ws->pvacc;
    int32_t *a32 = ws->pv32;
    int64_t psum = 0;
    for (int d = 0; d < hd; d++) acc[d] = 0;
    for (int j0 = 0; j0 <= p; j0 += 128) {
        int j1 = j0 + 128 <= p + 1 ? j0 + 128 : p + 1;
        for (int d = 0; d < hd; d++) a32[d] = 0;
        for (int j = j0; j < j1; j++) {
            int32_t pc = ws->prob[j] - L->z_prob;
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

/* ---------------------------------------------------------------- fast attention */

/* acc (nb, hdp) int64 = P (nb rows of J int16, ldp apart) x V (J positions of the packed
 * cache vp, hdp columns), J even. int32 partial sums over 256 positions at most: |p v| <= 2^22,
 * so 128 pairs stay below 2^31. */
static void pv_c(const int16_t *vp, int hdp, const int16_t *P, size_t ldp, int nb, int J,
                 int64_t *acc) {
    int32_t a32[256];
    for (int r = 0; r < nb; r++) {
        const int16_t *p = P + (size_t)r * ldp;
        for (int d0 = 0; d0 < hdp; d0 += 256) {
            int nd = hdp - d0 < 256 ? hdp - d0 : 256;
            for (int d = 0; d < nd; d++) acc[(size_t)r * hdp + d0 + d] = 0;
            for (int j0 = 0; j0 < J; j0 += 256) {
                int j1 = j0 + 256 < J ? j0 + 256 : J;
                for (int d = 0; d < nd; d++) a32[d] = 0;
                for (int j = j0; j < j1; j += 2) {
                    const int16_t *v = vp + (size_t)(j / 2) * hdp * 2 + (size_t)d0 * 2;
                    int32_t p0 = p[j], p1 = p[j + 1];
                    for (int d = 0; d < nd; d++) a32[d] += p0 * v[2 * d] + p1 * v[2 * d + 1];
                }
                for (int d = 0; d < nd; d++) acc[(size_t)r * hdp + d0 + d] += a32[d];
            }
        }
    }
}

/* The same with vpdpwssd: MR rows x NV vectors of 16 columns per block, accumulators in
 * registers. */
static inline __attribute__((always_inline)) T512 void pv_blk512(
    const int16_t *vp, int hdp, const int16_t *P, size_t ldp, int r0, int d0, int J, int64_t *acc,
    const int MR, const int NV) {
    for (int j0 = 0; j0 < J; j0 += 256) {
        int j1 = j0 + 256 < J ? j0 + 256 : J;
        __m512i a[4][4];
        _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++)
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) a[r][v] = _mm512_setzero_si512();
        for (int j = j0; j < j1; j += 2) {
            const int16_t *vr = vp + (size_t)(j / 2) * hdp * 2 + (size_t)d0 * 2;
            __m512i b[4];
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_si512(vr + 32 * v);
            _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++) {
                int32_t pp;
                memcpy(&pp, P + (size_t)(r0 + r) * ldp + j, 4);
                __m512i pb = _mm512_set1_epi32(pp);
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)
                    a[r][v] = _mm512_dpwssd_epi32(a[r][v], pb, b[v]);
            }
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < MR; r++)
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {
                int64_t *dst = acc + (size_t)(r0 + r) * hdp + d0 + 16 * v;
                __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a[r][v]));
                __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a[r][v], 1));
                if (j0) {
                    lo = _mm512_add_epi64(lo, _mm512_loadu_si512(dst));
                    hi = _mm512_add_epi64(hi, _mm512_loadu_si512(dst + 8));
                }
                _mm512_storeu_si512(dst, lo);
                _mm512_storeu_si512(dst + 8, hi);
            }
    }
}

static T512 void pv_512(const int16_t *vp, int hdp, const int16_t *P, size_t ldp, int nb, int J,
                        int64_t *acc) {
    for (int d0 = 0; d0 < hdp; d0 += 64) {
        int nv = (hdp - d0) / 16 < 4 ? (hdp - d0) / 16 : 4;
        for (int r0 = 0; r0 < nb; r0 += 4) {
            int mr = nb - r0 < 4 ? nb - r0 : 4;
#define PVB(mr_, nv_) case (mr_) * 8 + (nv_): pv_blk512(vp, hdp, P, ldp, r0, d0, J, acc, mr_, nv_); break
#define PVR(mr_) PVB(mr_, 1); PVB(mr_, 2); PVB(mr_, 3); PVB(mr_, 4)
            switch (mr * 8 + nv) {
                PVR(1); PVR(2); PVR(3); PVR(4);
            default: abort();
            }
#undef PVR
#undef PVB
        }
    }
}

/* Attention of the chunk's n query rows (positions pos0..) for every head, the reference's
 * integers: per head, QB queries at a time, QK^T by the int8 GEMM on the packed K cache, the
 * scores requantized and softmaxed row by row (table exp), PV by pv_*, in exact integer
 * arithmetic before the one rounding. Rows are padded to an even J with p = z_prob, whose
 * terms (p - zp)(v - zv) vanish. */
static void attend_fast(const qd_qrt *rt, qrt_ws *ws, const layer_rt *L, qd_qrt_kv *kv, int l,
                        const int8_t *q8, int8_t *o8, int n, int pos0, int h, int i0) {
    const qd_config *c = &rt->q->cfg;
    int hd = c->head_dim, nh = c->n_heads, grp = nh / c->n_kv_heads, QD = nh * hd;
    int hdp = kv->hdp, ldS = rt->ldS;
    int kvh = h / grp;
    const qd_igemm_w *kp = kv->kp[l * kv->n_kv + kvh];
    const int32_t *ksum = qd_igemm_w_rowsum(kp);
    const int16_t *vp = kv->vp + ((size_t)l * kv->n_kv + kvh) * kv->JP * hdp * 2;
    int nb = n - i0 < QB ? n - i0 : QB;
    int last = pos0 + i0 + nb - 1;      /* the block's last position */
    int J = (last + 2) & ~1;            /* even, > last */
    const int8_t *qb = q8 + (size_t)i0 * QD + (size_t)h * hd;
    qd_igemm_n(kp, last + 1, nb, qb, (size_t)QD, ws->S, (size_t)ldS, rt->isa);
    int64_t psum[QB];
    for (int r = 0; r < nb; r++) {
        int lim = pos0 + i0 + r;
        const int8_t *qh = qb + (size_t)r * QD;
        uint32_t qcs = 0;
        for (int d = 0; d < hd; d++) qcs += (uint32_t)(qh[d] - L->zq);
        qd_qscore_row(ws->S + (size_t)r * ldS, ksum, L->zq, (int32_t)((uint32_t)L->zk * qcs),
                      lim + 1, L->score_m, L->z_score, L->score_lo, L->score_hi, ws->sc,
                      rt->visa);
        int16_t *pr = ws->P + (size_t)r * ldS;
        qd_qsoftmax_row_tab(&L->sm, L->exp_tab, L->exp_len, ws->sc, lim + 1, pr, ws->work32,
                            rt->visa);
        int64_t ps = 0;
        for (int j = lim + 1; j < J; j++) pr[j] = (int16_t)L->z_prob;
        for (int j = 0; j < J; j++) ps += pr[j];
        psum[r] = ps;
    }
    int64_t *vs = ws->vsum;
    for (int d = 0; d < hd; d++) vs[d] = 0;
    for (int j = 0; j < J; j += 2) {
        const int16_t *v = vp + (size_t)(j / 2) * hdp * 2;
        for (int d = 0; d < hd; d++) vs[d] += v[2 * d] + v[2 * d + 1];
    }
    if (rt->visa == QD_ISA_AVX512_VNNI) pv_512(vp, hdp, ws->P, (size_t)ldS, nb, J, ws->acc64);
    else pv_c(vp, hdp, ws->P, (size_t)ldS, nb, J, ws->acc64);
    int64_t zz = (int64_t)J * L->z_prob * L->zv;
    for (int r = 0; r < nb; r++) {
        int8_t *o = o8 + (size_t)(i0 + r) * QD + (size_t)h * hd;
        const int64_t *a = ws->acc64 + (size_t)r * hdp;
        for (int d = 0; d < hd; d++) {
            int64_t v = a[d] - (int64_t)L->zv * psum[r] - (int64_t)L->z_prob * vs[d] + zz;
            int64_t y = v == (int32_t)v ? qd_qmul32((int32_t)v, L->pv_m) : qd_qmul64(v, L->pv_m);
            o[d] = (int8_t)qd_clamp32(y + L->z_pv, -128, 127);
        }
    }
}

/* Attention of a chunk as a job: task = (head, block of QB query rows) on the fast path, (row,
 * head) on the reference one. Blocks are numbered from the chunk's end: the costly ones (more
 * positions) are claimed first. */
typedef struct attn_job {
    const qd_qrt *rt;
    const layer_rt *L;
    qd_qrt_kv *kv;
    int l, n, pos0, fast, nblk;
    const int8_t *q8, *kc, *vc;
    int8_t *o8;
} attn_job;

static void attn_task(void *ctx, int t, qrt_ws *ws) {
    const attn_job *J = ctx;
    const qd_config *c = &J->rt->q->cfg;
    int nh = c->n_heads, QD = nh * c->head_dim, h = t % nh;
    if (J->fast) {
        int i0 = (J->nblk - 1 - t / nh) * QB;
        attend_fast(J->rt, ws, J->L, J->kv, J->l, J->q8, J->o8, J->n, J->pos0, h, i0);
    } else {
        int i = J->n - 1 - t / nh;
        attend(J->rt, ws, J->L, J->kc, J->vc, J->q8 + (size_t)i * QD, J->pos0 + i,
               J->o8 + (size_t)i * QD, h);
    }
}

/* The LM head as a job over vocabulary panel ranges: both byte halves and the epilogue. */
typedef struct head_job {
    const qd_qrt *rt;
    const qrt_ws *w;          /* hi8, lo8, rs in; acc, acc2 scratch */
    int M, parts;
    int16_t *out;
} head_job;

static void head_task(void *ctx, int t, qrt_ws *ws) {
    (void)ws; /* pool task signature; this task needs no scratch */
    const head_job *J = ctx;
    const qd_qrt *rt = J->rt;
    const lin_rt *H = &rt->head;
    const qrt_ws *w = J->w;
    int D = rt->q->cfg.dim, V = H->rows, n0, n1;
    part_cols(V, t, J->parts, &n0, &n1);
    qd_igemm_cols(H->pw, n0, n1, J->M, w->hi8, (size_t)D, w->acc, (size_t)V, rt->isa);
    qd_igemm_cols(H->pw, n0, n1, J->M, w->lo8, (size_t)D, w->acc2, (size_t)V, rt->isa);
    if (rt->visa != QD_ISA_SCALAR && H->fast) {
        if (rt->visa == QD_ISA_AVX512_VNNI) lin_epilogue_512(H, J->M, w->acc, w->acc2, w->rs, J->out, n0, n1);
        else if (rt->visa == QD_ISA_AVX2 || rt->visa == QD_ISA_AVX_VNNI)
            lin_epilogue_256(H, J->M, w->acc, w->acc2, w->rs, J->out, n0, n1);
        else lin_epilogue_fast_c(H, J->M, w->acc, w->acc2, w->rs, J->out, n0, n1);
        return;
    }
    const int32_t *wrs = qd_igemm_w_rowsum(H->pw);
    for (int i = 0; i < J->M; i++) {
        int64_t sa = w->rs[i];
        for (int v = n0; v < n1; v++) {
            size_t k = (size_t)i * V + v;
            int64_t dot = 256 * (int64_t)w->acc[k] + w->acc2[k] + 128 * (int64_t)wrs[v];
            int64_t a = dot + H->c[v] - (int64_t)H->zw[v] * sa;
            J->out[k] = (int16_t)qd_clamp32(qd_qmul64(a, H->m[v]) + H->zo, H->lo, H->hi);
        }
    }
}

/* ---------------------------------------------------------------- forward */

/* One chunk of n tokens with the activations of w. par: the caller is thread 0 and may use
 * the pool (not when it runs one window of a parallel evaluation). */
/* One row through the model's norm: RMSNorm (SIMD where the ISA allows), or LayerNorm. */
static void norm_row(const qd_qrt *rt, const qd_qnorm *rn, const qd_qlnorm *ln, const int16_t *x,
                     const int16_t *g, void *out) {
    if (rt->layernorm) qd_qlnorm_row(ln, x, g, out);
    else qd_qnorm_row_isa(rn, x, g, out, rt->visa);
}

static int forward_chunk(qd_qrt *rt, qrt_ws *w, int par, qd_qrt_kv *kv, const int *tokens, int n,
                         int pos0, int16_t *logits_q, qd_err *err) {
    const qd_qint *q = rt->q;
    const qd_config *c = &q->cfg;
    int D = c->dim, hd = c->head_dim, V = c->vocab_size;
    int QD = c->n_heads * hd, KVd = c->n_kv_heads * hd;
    /* embedding: 8-bit row -> EMB (16-bit) */
    for (int i = 0; i < n; i++) {
        int t = tokens[i];
        if (t < 0 || t >= V) return qd_errf(err, "%s: token %d outside the vocabulary", __func__, t);
        const int8_t *row = (const int8_t *)q->emb.q + (size_t)t * D;
        int32_t zr = q->emb.zero_point[q->emb.per_channel ? t : 0];
        for (int d = 0; d < D; d++)
            w->x[(size_t)i * D + d] =
                (int16_t)qd_clamp32(qd_qmul32(row[d] - zr, rt->emb_m[t]) + rt->z_emb, -32768, 32767);
    }
    for (int l = 0; l < c->n_layers; l++) {
        if (qd_stop_requested()) return qd_stopped(err);
        layer_rt *L = &rt->L[l];
        int8_t *kc = kv->k + (size_t)l * kv->max_T * KVd, *vc = kv->v + (size_t)l * kv->max_T * KVd;
        for (int i = 0; i < n; i++) norm_row(rt, &L->n1, &L->ln1, w->x + (size_t)i * D, L->g1, w->h8 + (size_t)i * D);
        lin_job qkv = {.rt = rt, .M = n, .nl = 3, .A = w->h8,
                       .L = {&L->w[QD_W_Q], &L->w[QD_W_K], &L->w[QD_W_V]}, .out = {w->q8, w->k8, w->v8}};
        lin_job_run(rt, w, par, &qkv);
        for (int i = 0; i < n; i++) {
            int p = pos0 + i;
            qd_qrope_apply_isa(&L->rq, w->q8 + (size_t)i * QD, w->q8 + (size_t)i * QD, c->n_heads, p, rt->visa);
            qd_qrope_apply_isa(&L->rk, w->k8 + (size_t)i * KVd, kc + (size_t)p * KVd, c->n_kv_heads, p, rt->visa);
            memcpy(vc + (size_t)p * KVd, w->v8 + (size_t)i * KVd, (size_t)KVd);
        }
        kv_pack(kv, l, pos0, n);
        attn_job aj = {.rt = rt, .L = L, .kv = kv, .l = l, .n = n, .pos0 = pos0,
                       .fast = rt->visa != QD_ISA_SCALAR && L->fast_attn, .nblk = (n + QB - 1) / QB,
                       .q8 = w->q8, .kc = kc, .vc = vc, .o8 = w->o8};
        par_run(rt, w, par_go(rt, par, (double)c->n_heads * n * (pos0 + n) * hd),
                c->n_heads * (aj.fast ? aj.nblk : n), attn_task, &aj);
        lin_run(rt, w, par, &L->w[QD_W_O], n, w->o8, w->t16);
        qd_qadd_i16_isa(&L->res1, w->x, w->t16, w->x2, (size_t)n * D, rt->visa);
        for (int i = 0; i < n; i++) norm_row(rt, &L->n2, &L->ln2, w->x2 + (size_t)i * D, L->g2, w->h8 + (size_t)i * D);
        lin_job ffn = {.rt = rt, .Ly = L, .M = n, .nl = 2, .swiglu = 1, .A = w->h8,
                       .L = {&L->w[QD_W_GATE], &L->w[QD_W_UP]}, .out = {w->g8, w->u8},
                       .s8 = w->s8, .m8 = w->m8};
        lin_job_run(rt, w, par, &ffn);
        lin_run(rt, w, par, &L->w[QD_W_DOWN], n, w->m8, w->t16);
        qd_qadd_i16_isa(&L->res2, w->x2, w->t16, w->x, (size_t)n * D, rt->visa);
    }
    for (int i = 0; i < n; i++) norm_row(rt, &rt->nf, &rt->lnf, w->x + (size_t)i * D, q->final_norm.q, w->hf + (size_t)i * D);
    /* LM head on a 16-bit input: a = 256*hi + lo, hi = a >> 8 (signed), lo - 128 signed */
    for (size_t i = 0; i < (size_t)n * D; i++) {
        int32_t a = w->hf[i];
        w->hi8[i] = (int8_t)(a >> 8);
        w->lo8[i] = (int8_t)((a & 255) - 128);
    }
    for (int i = 0; i < n; i++) {
        int64_t s = 0;
        for (int d = 0; d < D; d++) s += w->hf[(size_t)i * D + d];
        w->rs[i] = s;
    }
    int go = par_go(rt, par, 2.0 * n * D * V);
    head_job hj = {.rt = rt, .w = w, .M = n, .parts = par_parts(rt, go, (V + 15) / 16), .out = logits_q};
    par_run(rt, w, go, hj.parts, head_task, &hj);
    return QD_OK;
}

/* Feeds n tokens in chunks; logits as int16 (lq) and, when logits is not NULL, as floats. */
static int forward_rows(qd_qrt *rt, qrt_ws *w, int par, qd_qrt_kv *kv, const int *tokens, int n,
                        int pos0, int16_t *lq, float *logits, qd_err *err) {
    if (n <= 0 || pos0 < 0 || pos0 + n > kv->max_T)
        return qd_errf(err, "%s: positions %d..%d outside the cache of %d", __func__, pos0,
                       pos0 + n - 1, kv->max_T);
    int V = rt->q->cfg.vocab_size;
    for (int i = 0; i < n; i += rt->chunk) {
        int m = n - i < rt->chunk ? n - i : rt->chunk;
        int16_t *dst = logits ? w->lq : lq + (size_t)i * V;
        if (forward_chunk(rt, w, par, kv, tokens + i, m, pos0 + i, dst, err)) return QD_ERR;
        /* the API boundary: logits leave the integer model as floats */
        for (size_t k = 0; logits && k < (size_t)m * V; k++)
            logits[(size_t)i * V + k] = rt->logit_scale * (float)(dst[k] - rt->logit_zp);
    }
    return QD_OK;
}

int qd_qrt_forward_int(qd_qrt *rt, qd_qrt_kv *kv, const int *tokens, int n, int pos0,
                       int16_t *logits_q, qd_err *err) {
    return forward_rows(rt, &rt->ws[0], 1, kv, tokens, n, pos0, logits_q, NULL, err);
}

int qd_qrt_forward(qd_qrt *rt, qd_qrt_kv *kv, const int *tokens, int n, int pos0, float *logits,
                   qd_err *err) {
    return forward_rows(rt, &rt->ws[0], 1, kv, tokens, n, pos0, NULL, logits, err);
}

int qd_qrt_decode_step(qd_qrt *rt, qd_qrt_kv *kv, int token, int pos, float *logits,
                       qd_err *err) {
    return qd_qrt_forward(rt, kv, &token, 1, pos, logits, err);
}

/* Evaluation windows on the pool: window b on whatever thread claims it, with that thread's
 * activations and cache. */
typedef struct win_job {
    qd_qrt *rt;
    qd_qrt_kv **kv;           /* per thread, made on first use */
    const int *tokens;
    int T;
    float *logits;
    int *rc;                  /* per window */
    qd_err *errs;             /* per window */
} win_job;

static void win_task(void *ctx, int b, qrt_ws *ws) {
    win_job *J = ctx;
    qd_qrt *rt = J->rt;
    int tid = (int)(ws - rt->ws);
    if (!J->kv[tid] && !(J->kv[tid] = qd_qrt_kv_new(rt, J->T, &J->errs[b]))) {
        J->rc[b] = QD_ERR;
        return;
    }
    J->rc[b] = forward_rows(rt, ws, 0, J->kv[tid], J->tokens + (size_t)b * J->T, J->T, 0, NULL,
                            J->logits + (size_t)b * J->T * rt->q->cfg.vocab_size, &J->errs[b]);
}

int qd_qrt_logits_fn(void *ctx, const int *tokens, int B, int T, float *logits, qd_err *err) {
    qd_qrt *rt = ctx;
    int V = rt->q->cfg.vocab_size;
    if (rt->pool && B > 1) {
        for (int t = 1; t < rt->nthr; t++)
            if (ws_alloc_act(rt, &rt->ws[t], err)) return QD_ERR;
        qd_qrt_kv **kv = calloc((size_t)rt->nthr, sizeof *kv);
        int *rc = calloc((size_t)B, sizeof *rc);
        qd_err *errs = calloc((size_t)B, sizeof *errs);
        int ret = QD_OK;
        if (!kv || !rc || !errs) {
            ret = qd_errf(err, "%s: out of memory", __func__);
        } else {
            win_job J = {rt, kv, tokens, T, logits, rc, errs};
            par_call pc = {rt, win_task, &J};
            qd_pool_run(rt->pool, B, par_tramp, &pc);
            for (int b = 0; b < B && ret == QD_OK; b++)
                if (rc[b]) *err = errs[b], ret = QD_ERR;
        }
        for (int t = 0; kv && t < rt->nthr; t++) qd_qrt_kv_free(kv[t]);
        free(kv), free(rc), free(errs);
        return ret;
    }
    qd_qrt_kv *kv = qd_qrt_kv_new(rt, T, err);
    if (!kv) return QD_ERR;
    int rc = QD_OK;
    for (int b = 0; b < B && rc == QD_OK; b++)
        rc = qd_qrt_forward(rt, kv, tokens + (size_t)b * T, T, 0, logits + (size_t)b * T * V, err);
    qd_qrt_kv_free(kv);
    return rc;
}
