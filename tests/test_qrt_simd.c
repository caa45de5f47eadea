/* The integer runtime's fast paths against the scalar reference, bit for bit: each SIMD
 * primitive (scores, table softmax, residual add, RMSNorm, SwiGLU product, RoPE) on random
 * inputs with odd lengths and extreme values, the packed-K GEMM restricted to a column prefix,
 * and whole random models (GQA, odd and large head sizes, biases, odd chunking, incremental
 * decoding) run with every ISA against QD_ISA_SCALAR, which takes the reference code. Paths
 * this CPU cannot run print SKIP. Threads: every ISA with 1, 2 and 3 threads (every operation
 * split, par_grain 0), batched, incremental and through qd_qrt_logits_fn (windows on
 * different threads), equals the single-thread scalar reference bit for bit, on the random
 * models and on stories260K. */
#include <stdint.h>

#include "quant/text/data.h"
#include "quant/rt/int_ops.h"
#include "quant/text/resolve.h"
#include "quant/rt/runtime.h"
#include "tests/check.h"
#include "quant/io/load.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) { return (uint32_t)(check_xorshift(&rng) >> 11); }
static int16_t rnd16(void) {
    uint32_t r = rnd() % 8;
    return r == 0 ? INT16_MIN : r == 1 ? INT16_MAX : (int16_t)rnd();
}

static const int lens[] = {1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 100, 257, 1000};
#define NLEN (int)(sizeof lens / sizeof lens[0])

static void test_softmax_scores(void) {
    qd_err err;
    for (int isa = 0; isa < QD_ISA_COUNT; isa++) {
        for (int it = 0; it < 40; it++) {
            /* score scales from sharp to flat, probability encodings with odd zero points */
            double s_in = 1e-4 * (1 + rnd() % 3000), s_out = 1.0 / (1000 + rnd() % 70000);
            int bits = 8 + (int)(rnd() % 9);
            qd_qsoftmax sm;
            CHECK(qd_qsoftmax_init(&sm, s_in, s_out, (int32_t)(rnd() % 64) - 32768, 16, &err) == QD_OK, "%s", err.msg);
            int32_t *tab = malloc(sizeof(int32_t) << bits);
            int len = qd_qsoftmax_tab(&sm, bits, tab);
            int n = lens[it % NLEN];
            int16_t *x = malloc(2 * n), *o0 = malloc(2 * n), *o1 = malloc(2 * n);
            int64_t *w64 = malloc(8 * n);
            int32_t *w32 = malloc(4 * n), *S = malloc(4 * n), *ks = malloc(4 * n);
            int32_t lo = qd_qmin(bits), hi = qd_qmax(bits);
            for (int j = 0; j < n; j++) x[j] = (int16_t)(lo + (int32_t)(rnd() % (uint32_t)(hi - lo + 1)));
            if (it % 5 == 0) for (int j = 0; j < n; j++) x[j] = (int16_t)(j % 2 ? lo : hi);
            qd_qsoftmax_row(&sm, x, n, o0, w64);
            qd_qsoftmax_row_tab(&sm, tab, len, x, n, o1, w32, (qd_isa)isa);
            CHECK(!memcmp(o0, o1, 2 * n), "softmax %s n=%d bits=%d", qd_isa_name((qd_isa)isa), n, bits);
            /* scores: int32 dot products and key sums */
            qd_qmul m;
            CHECK(qd_qmul_make(1e-6 * (1 + rnd() % 100000), &m, &err) == QD_OK, "%s", err.msg);
            int32_t zq = (int32_t)(rnd() % 200) - 100, off = (int32_t)rnd() % 100000;
            for (int j = 0; j < n; j++) S[j] = (int32_t)(rnd() % 2000000) - 1000000, ks[j] = (int32_t)(rnd() % 2000) - 1000;
            qd_qscore_row(S, ks, zq, off, n, m, 17, lo, hi, o0, QD_ISA_SCALAR);
            qd_qscore_row(S, ks, zq, off, n, m, 17, lo, hi, o1, (qd_isa)isa);
            CHECK(!memcmp(o0, o1, 2 * n), "scores %s n=%d", qd_isa_name((qd_isa)isa), n);
            free(tab), free(x), free(o0), free(o1), free(w64), free(w32), free(S), free(ks);
        }
    }
}

static void test_elementwise(void) {
    qd_err err;
    for (int isa = 0; isa < QD_ISA_COUNT; isa++) {
        for (int it = 0; it < NLEN * 3; it++) {
            int n = lens[it % NLEN];
            int16_t *a = malloc(2 * n), *b = malloc(2 * n), *o0 = malloc(2 * n), *o1 = malloc(2 * n);
            int8_t *a8 = malloc(n), *b8 = malloc(n), *p0 = malloc(n), *p1 = malloc(n);
            for (int i = 0; i < n; i++) a[i] = rnd16(), b[i] = rnd16(), a8[i] = (int8_t)rnd(), b8[i] = (int8_t)rnd();
            qd_qadd ad;
            CHECK(qd_qadd_init(&ad, 1e-3 * (1 + rnd() % 100), (int32_t)(rnd() % 300) - 150, 1e-3 * (1 + rnd() % 100),
                               (int32_t)(rnd() % 300) - 150, 1e-3 * (1 + rnd() % 100), (int32_t)(rnd() % 30), 16, &err) == QD_OK, "%s", err.msg);
            qd_qadd_i16(&ad, a, b, o0, (size_t)n);
            qd_qadd_i16_isa(&ad, a, b, o1, (size_t)n, (qd_isa)isa);
            CHECK(!memcmp(o0, o1, 2 * n), "qadd %s n=%d", qd_isa_name((qd_isa)isa), n);
            qd_qmul m;
            CHECK(qd_qmul_make(1e-4 * (1 + rnd() % 1000), &m, &err) == QD_OK, "%s", err.msg);
            int32_t za = (int32_t)(rnd() % 256) - 128, zb = (int32_t)(rnd() % 256) - 128;
            qd_qmul_i8(a8, za, b8, zb, m, 3, p0, (size_t)n, QD_ISA_SCALAR);
            qd_qmul_i8(a8, za, b8, zb, m, 3, p1, (size_t)n, (qd_isa)isa);
            CHECK(!memcmp(p0, p1, n), "qmul_i8 %s n=%d", qd_isa_name((qd_isa)isa), n);
            /* RMSNorm into 8 and 16 bits; gmax as the runtime sets it */
            for (int ob = 8; ob <= 16; ob += 8) {
                qd_qnorm nm;
                CHECK(qd_qnorm_init(&nm, n, 1e-3 * (1 + rnd() % 100), (int32_t)(rnd() % 100) - 50, 1e-4 * (1 + rnd() % 100),
                                    (int32_t)(rnd() % 100) - 50, 1e-2 * (1 + rnd() % 100), (int32_t)(rnd() % 20), ob, 1e-5f, &err) == QD_OK, "%s", err.msg);
                int16_t *g = malloc(2 * n);
                int64_t gm = 0;
                for (int i = 0; i < n; i++) {
                    g[i] = it % 2 ? rnd16() : (int16_t)(rnd() % 2000);
                    gm = llabs((int64_t)g[i] - nm.zg) > gm ? llabs((int64_t)g[i] - nm.zg) : gm;
                }
                if (it % 3 == 0) for (int i = 0; i < n; i++) a[i] = (int16_t)(rnd() % 64); /* small rows */
                nm.gmax = gm;
                qd_qnorm_row(&nm, a, g, o0);
                qd_qnorm_row_isa(&nm, a, g, o1, (qd_isa)isa);
                CHECK(!memcmp(o0, o1, (size_t)n * ob / 8), "qnorm %s n=%d out %d", qd_isa_name((qd_isa)isa), n, ob);
                free(g);
            }
            free(a), free(b), free(o0), free(o1), free(a8), free(b8), free(p0), free(p1);
        }
    }
}

static void test_rope(void) {
    qd_err err;
    static const int hds[] = {2, 4, 8, 10, 16, 32, 34, 48, 64, 80, 128, 256};
    for (int isa = 0; isa < QD_ISA_COUNT; isa++)
        for (size_t t = 0; t < sizeof hds / sizeof hds[0]; t++) {
            int hd = hds[t], T = 37, nh = 1 + (int)(rnd() % 7);
            qd_qrope rp;
            CHECK(qd_qrope_init(&rp, T, hd, 10000.0f, 0.02 + 1e-3 * (rnd() % 50), (int32_t)(rnd() % 40) - 20,
                                0.02 + 1e-3 * (rnd() % 50), (int32_t)(rnd() % 40) - 20, &err) == QD_OK, "%s", err.msg);
            int8_t *x = malloc((size_t)nh * hd), *o0 = malloc((size_t)nh * hd), *o1 = malloc((size_t)nh * hd);
            for (int pos = 0; pos < T; pos += 5) {
                for (int i = 0; i < nh * hd; i++) x[i] = (int8_t)rnd();
                qd_qrope_apply(&rp, x, o0, nh, pos);
                qd_qrope_apply_isa(&rp, x, o1, nh, pos, (qd_isa)isa);
                CHECK(!memcmp(o0, o1, (size_t)nh * hd), "rope %s hd=%d pos=%d", qd_isa_name((qd_isa)isa), hd, pos);
                memcpy(o1, x, (size_t)nh * hd); /* in place */
                qd_qrope_apply_isa(&rp, o1, o1, nh, pos, (qd_isa)isa);
                CHECK(!memcmp(o0, o1, (size_t)nh * hd), "rope in place %s hd=%d", qd_isa_name((qd_isa)isa), hd);
            }
            free(x), free(o0), free(o1);
            qd_qrope_free(&rp);
        }
}

/* The K cache's packed form: rows written one block at a time, products over a prefix. */
static void test_igemm_prefix(void) {
    qd_err err;
    for (int isa = 0; isa < QD_ISA_COUNT; isa++) {
        if (!qd_isa_supported((qd_isa)isa)) continue;
        int N = 77, K = 1 + (int)(rnd() % 70), M = 1 + (int)(rnd() % 20);
        int8_t *W = malloc((size_t)N * K), *A = malloc((size_t)M * K);
        for (int i = 0; i < N * K; i++) W[i] = (int8_t)rnd();
        for (int i = 0; i < M * K; i++) A[i] = (int8_t)rnd();
        qd_igemm_w *w = qd_igemm_w_new_s8(N, K, &err);
        CHECK(w != NULL, "%s", err.msg);
        for (int n0 = 0; n0 < N; n0 += 13) qd_igemm_w_set_rows(w, n0, N - n0 < 13 ? N - n0 : 13, W + (size_t)n0 * K, (size_t)K);
        int32_t *C0 = malloc(4 * (size_t)M * N), *C1 = malloc(4 * (size_t)M * N);
        qd_igemm_s8_ref(M, N, K, A, (size_t)K, W, (size_t)K, C0, (size_t)N);
        for (int ne = 1; ne <= N; ne += 19) {
            for (int i = 0; i < M * N; i++) C1[i] = 0x5a5a5a5a;
            qd_igemm_n(w, ne, M, A, (size_t)K, C1, (size_t)N, (qd_isa)isa);
            int bad = 0;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++)
                    bad += C1[m * N + n] != (n < ne ? C0[m * N + n] : 0x5a5a5a5a);
            CHECK(!bad, "igemm_n %s n_end=%d: %d wrong", qd_isa_name((qd_isa)isa), ne, bad);
        }
        for (int n = 0; n < N; n++) {
            int32_t s = 0;
            for (int k = 0; k < K; k++) s += W[(size_t)n * K + k];
            CHECK(qd_igemm_w_rowsum(w)[n] == s, "rowsum %d", n);
        }
        qd_igemm_w_free(w);
        free(W), free(A), free(C0), free(C1);
    }
}

/* A random model (weights and tokens), RTN encodings from its own FP statistics. */
static qd_qint *rnd_qint(const qd_config *c, int wbits, uint64_t seed, int **ids_out, int T) {
    qd_err err;
    qd_model *m = qd_model_alloc(c, &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return NULL;
    uint64_t s = seed;
    for (size_t i = 0; i < m->n_floats; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        m->mem[i] = ((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 0.3f;
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int i = 0; i < c->dim; i++) m->layers[l].attn_norm[i] += 1, m->layers[l].ffn_norm[i] += 1;
    int *ids = malloc(sizeof(int) * 3 * T);
    for (int j = 0; j < 3 * T; j++) ids[j] = (int)(rnd() % (uint32_t)c->vocab_size);
    qd_qint_enc e;
    qd_qint *q = NULL;
    if (qd_qint_enc_rtn(&e, m, wbits, ids, 2, T, &err) == QD_OK) {
        q = qd_qint_build(m, &e, &err);
        qd_qint_enc_free(&e);
    }
    CHECK(q != NULL, "%s", err.msg);
    qd_model_free(m);
    *ids_out = ids;
    return q;
}

/* q run with every ISA x threads {1, 2, 3} against the scalar single-thread reference:
 * a batched forward of T tokens, the same fed incrementally, and B windows through
 * qd_qrt_logits_fn (float logits, compared bit for bit). ids: at least B * T tokens. */
static void check_threads(const qd_qint *q, const int *ids, int T, int B, int chunk,
                          const char *what) {
    qd_err err;
    int V = q->cfg.vocab_size;
    size_t nl = (size_t)T * V, nf = (size_t)B * T * V;
    int16_t *l0 = malloc(sizeof(int16_t) * nl), *l1 = malloc(sizeof(int16_t) * nl);
    float *f0 = malloc(sizeof(float) * nf), *f1 = malloc(sizeof(float) * nf);
    qd_qrt_opts o;
    qd_qrt_defaults(&o);
    o.isa = QD_ISA_SCALAR;
    o.threads = 1;
    qd_qrt *ref = qd_qrt_new(q, &o, &err);
    CHECK(ref != NULL, "%s", err.msg);
    qd_qrt_kv *kv = ref ? qd_qrt_kv_new(ref, T, &err) : NULL;
    if (!kv) goto out;
    CHECK(qd_qrt_forward_int(ref, kv, ids, T, 0, l0, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_qrt_logits_fn(ref, ids, B, T, f0, &err) == QD_OK, "%s", err.msg);
    for (int isa = 0; isa < QD_ISA_COUNT; isa++) {
        if (!qd_isa_supported((qd_isa)isa)) { printf("SKIP %s\n", qd_isa_name((qd_isa)isa)); continue; }
        for (int th = 1; th <= 3; th++) {
            if (isa == QD_ISA_SCALAR && th == 1) continue; /* the reference itself */
            o.isa = (qd_isa)isa;
            o.threads = th;
            o.chunk = chunk;
            o.par_grain = 0; /* split every operation, however small */
            qd_qrt *rt = qd_qrt_new(q, &o, &err);
            CHECK(rt != NULL, "%s", err.msg);
            if (!rt) continue;
            const char *in = qd_isa_name((qd_isa)isa);
            memset(l1, 0, sizeof(int16_t) * nl);
            CHECK(qd_qrt_forward_int(rt, kv, ids, T, 0, l1, &err) == QD_OK, "%s", err.msg);
            CHECK(!memcmp(l0, l1, sizeof(int16_t) * nl), "%s %s %dt: batched logits differ", what, in, th);
            /* incremental: a few single tokens, then the rest */
            for (int t = 0; t < 5; t++)
                CHECK(qd_qrt_forward_int(rt, kv, ids + t, 1, t, l1 + (size_t)t * V, &err) == QD_OK, "%s", err.msg);
            CHECK(qd_qrt_forward_int(rt, kv, ids + 5, T - 5, 5, l1 + (size_t)5 * V, &err) == QD_OK, "%s", err.msg);
            CHECK(!memcmp(l0, l1, sizeof(int16_t) * nl), "%s %s %dt: incremental logits differ", what, in, th);
            memset(f1, 0, sizeof(float) * nf);
            CHECK(qd_qrt_logits_fn(rt, ids, B, T, f1, &err) == QD_OK, "%s", err.msg);
            CHECK(!memcmp(f0, f1, sizeof(float) * nf), "%s %s %dt: windows differ", what, in, th);
            qd_qrt_free(rt);
        }
    }
out:
    qd_qrt_kv_free(kv);
    qd_qrt_free(ref);
    free(l0), free(l1), free(f0), free(f1);
}

static void test_models(void) {
    qd_config cs[] = {
        {.arch = "llama", .dim = 48, .hidden_dim = 100, .n_layers = 2, .n_heads = 6, .n_kv_heads = 2, .head_dim = 8,
         .vocab_size = 300, .max_seq_len = 150, .norm_eps = 1e-5f, .rope_theta = 10000, .qkv_bias = 1,
         .tied_embeddings = 1, .bos_id = -1, .eos_id = -1},
        {.arch = "llama", .dim = 96, .hidden_dim = 250, .n_layers = 1, .n_heads = 3, .n_kv_heads = 3, .head_dim = 34,
         .vocab_size = 1001, .max_seq_len = 301, .norm_eps = 1e-5f, .rope_theta = 500000, .bos_id = -1, .eos_id = -1},
        {.arch = "llama", .dim = 128, .hidden_dim = 200, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1, .head_dim = 64,
         .vocab_size = 257, .max_seq_len = 290, .norm_eps = 1e-5f, .rope_theta = 10000, .bos_id = -1, .eos_id = -1},
        {.arch = "llama", .dim = 40, .hidden_dim = 72, .n_layers = 1, .n_heads = 4, .n_kv_heads = 4, .head_dim = 16,
         .vocab_size = 77, .max_seq_len = 133, .norm_eps = 1e-5f, .rope_theta = 10000, .bos_id = -1, .eos_id = -1},
        /* Gemma: tanh-GELU table, MQA, heads * head_dim != dim, the embedding scale */
        {.arch = "gemma", .family = QD_FAMILY_GEMMA, .act = QD_ACT_GELU_TANH, .emb_scale = 6.9282f,
         .dim = 48, .hidden_dim = 80, .n_layers = 2, .n_heads = 4, .n_kv_heads = 1, .head_dim = 16,
         .vocab_size = 90, .max_seq_len = 70, .norm_eps = 1e-6f, .rope_theta = 10000,
         .tied_embeddings = 1, .bos_id = -1, .eos_id = -1},
        /* StableLM-2: integer LayerNorm with bias, a quarter of each head rotated, q/k/v biases */
        {.arch = "stablelm", .family = QD_FAMILY_STABLELM, .norm = QD_NORM_LAYER, .rope_dim = 4,
         .dim = 32, .hidden_dim = 64, .n_layers = 2, .n_heads = 2, .n_kv_heads = 2, .head_dim = 16,
         .vocab_size = 70, .max_seq_len = 60, .norm_eps = 1e-5f, .rope_theta = 10000, .qkv_bias = 1,
         .bos_id = -1, .eos_id = -1},
    };
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++)
        for (int wb = 8; wb >= 4; wb -= 4) {
            int T = cs[ci].max_seq_len, *ids = NULL;
            qd_qint *q = rnd_qint(&cs[ci], wb, 77 + ci, &ids, T);
            if (q) {
                char what[64];
                snprintf(what, sizeof what, "model %zu W%d", ci, wb);
                /* ids: 3T tokens; the last window's are the evaluation ones */
                check_threads(q, ids + T, T, 2, ci % 2 ? 64 : 23, what);
            }
            free(ids);
            qd_qint_free(q);
        }
}

/* stories260K with RTN encodings (W8A8, W4A8): the same checks on a real model, 3 windows. */
static void test_stories_threads(void) {
    qd_err err;
    qd_model *m = qd_model_load(fixture("models/stories260K.gguf"), &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return;
    qd_tokenizer *tok = qd_tok_for_model(m, fixture("models/stories260K.gguf"), NULL, &err);
    qd_tokens tk = {0};
    int T = 96, B = 3;
    CHECK(tok && qd_data_load(fixture("text/tinystories-valid-excerpt.txt"), tok, m->cfg.vocab_size, &tk, &err) == QD_OK,
          "%s", err.msg);
    if (tk.n >= (size_t)(4 + B) * T)
        for (int wb = 8; wb >= 4; wb -= 4) {
            qd_qint_enc e;
            qd_qint *q = NULL;
            if (qd_qint_enc_rtn(&e, m, wb, tk.ids, 4, T, &err) == QD_OK) {
                q = qd_qint_build(m, &e, &err);
                qd_qint_enc_free(&e);
            }
            CHECK(q != NULL, "%s", err.msg);
            if (q) check_threads(q, tk.ids + 4 * T, T, B, 64, wb == 8 ? "stories260K W8A8" : "stories260K W4A8");
            qd_qint_free(q);
        }
    qd_tokens_free(&tk);
    qd_tok_free(tok);
    qd_model_free(m);
}

int main(void) {
    RUN(test_softmax_scores);
    RUN(test_elementwise);
    RUN(test_rope);
    RUN(test_igemm_prefix);
    RUN(test_models);
    RUN(test_stories_threads);
    return CHECK_DONE();
}
