/* Model I/O tests: the three forms of stories260K (GGUF, Hugging Face, llama2.c) load to the
 * same config and the same weights after RoPE normalisation; F16 GGUF with a 32000-token
 * vocabulary against hand-converted values; qd_save_hf round trips (F32/F16/BF16, sharded,
 * Qwen2 biases, tied/untied, rope_parameters); the safetensors writer for integer tensors; a
 * synthetic GGUF with every metadata type; fp16/bf16 bit patterns; and the bad-input
 * catalogue, each corrupt file built here from fixture bytes or from qd_save_hf output. */
#include "quant/io/gguf.h"
#include "quant/io/half.h"
#include "quant/model.h"
#include "quant/io/safetensors.h"
#include "quant/text/tokenizer.h"

#include "check.h"
#include "gguf_build.h"
#include "base/fs.h"
#include "quant/io/load.h"
#include "quant/fp/forward.h"
#include "synth.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF260 "models/stories260K.gguf"
#define HF260 "models/stories260K-hf"
#define L2C260 "models/stories260K.llama2c.bin"
#define TINY "models/llama-2-tiny-random.gguf"

static char tmpdir[256];

static const char *tmp(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *tmp(const char *fmt, ...) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ & 7];
    int n = snprintf(b, sizeof bufs[0], "%s/", tmpdir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, sizeof bufs[0] - (size_t)n, fmt, ap);
    va_end(ap);
    return b;
}

static uint8_t *slurp(const char *path, size_t *len) {
    qd_err e = {{0}};
    uint8_t *b = qd_read_file(path, 1u << 30, len, &e);
    CHECK(b != NULL, "%s", e.msg);
    return b;
}

static void spit(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    if (len) fwrite(data, 1, len, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    uint8_t *b = slurp(from, &n);
    if (b) spit(to, b, n);
    free(b);
}

static qd_model *load_ok(const char *path) {
    qd_err e = {{0}};
    qd_model *m = qd_model_load(path, &e);
    CHECK(m != NULL, "%s: %s", path, e.msg);
    return m;
}

/* Loading must fail, and the message must contain every given substring. */
#define EXPECT_FAIL(loadexpr, ...)                                                     \
    do {                                                                               \
        qd_err e_ = {{0}};                                                             \
        qd_err *err_ = &e_;                                                            \
        void *r_ = (void *)(loadexpr);                                                 \
        CHECK(r_ == NULL, "loading succeeded but should have failed");                 \
        const char *subs_[] = {__VA_ARGS__, NULL};                                     \
        for (int i_ = 0; subs_[i_]; i_++)                                              \
            CHECK(strstr(e_.msg, subs_[i_]) != NULL, "error '%s' lacks '%s'", e_.msg,   \
                  subs_[i_]);                                                          \
        if (getenv("QD_TEST_VERBOSE")) fprintf(stderr, "  expected error: %s\n", e_.msg); \
        if (r_) qd_model_free(r_);                                                     \
        (void)err_;                                                                    \
    } while (0)

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* Calls fn(name, a, b, n) for every tensor the two models share by config. */
typedef void (*pair_fn)(void *ctx, const char *name, const float *a, const float *b, size_t n);

static void each_pair(const qd_model *a, const qd_model *b, pair_fn fn, void *ctx) {
    const qd_config *c = &a->cfg;
    size_t D = (size_t)c->dim, F = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    size_t Q = (size_t)c->n_heads * c->head_dim, KV = (size_t)c->n_kv_heads * c->head_dim;
    char n[64];
    fn(ctx, "tok_emb", a->tok_emb, b->tok_emb, V * D);
    fn(ctx, "lm_head", a->lm_head, b->lm_head, V * D);
    fn(ctx, "final_norm", a->final_norm, b->final_norm, D);
    for (int l = 0; l < c->n_layers; l++) {
        const qd_layer *x = &a->layers[l], *y = &b->layers[l];
#define P(f, cnt)                                    \
    snprintf(n, sizeof n, "layer %d %s", l, #f);     \
    fn(ctx, n, x->f, y->f, cnt)
        P(attn_norm, D);
        P(wq, Q * D);
        P(wk, KV * D);
        P(wv, KV * D);
        P(wo, D * Q);
        P(ffn_norm, D);
        P(w_gate, F * D);
        P(w_up, F * D);
        P(w_down, D * F);
        if (c->qkv_bias && b->cfg.qkv_bias) {
            P(bq, Q);
            P(bk, KV);
            P(bv, KV);
        }
#undef P
    }
}

typedef struct cmp_ctx {
    double abs_tol, rel_tol, worst;
    const char *what;
} cmp_ctx;

static void cmp_pair(void *vctx, const char *name, const float *a, const float *b, size_t n) {
    cmp_ctx *c = vctx;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double lim = c->abs_tol + c->rel_tol * fabs((double)a[i]);
        if (d > c->worst) c->worst = d;
        if (!(d <= lim)) {
            CHECK(0, "%s: %s[%zu]: %.9g vs %.9g", c->what, name, i, (double)a[i], (double)b[i]);
            return;
        }
    }
}

static void expect_same_weights(const qd_model *a, const qd_model *b, double abs_tol,
                                double rel_tol, const char *what) {
    cmp_ctx c = {abs_tol, rel_tol, 0, what};
    each_pair(a, b, cmp_pair, &c);
}

static void copy_pair(void *ctx, const char *name, const float *a, const float *b, size_t n) {
    (void)ctx, (void)name;
    memcpy((float *)b, a, n * sizeof(float));
}

static void expect_same_config(const qd_config *a, const qd_config *b, int with_ctx,
                               const char *what) {
    CHECK(strcmp(a->arch, b->arch) == 0, "%s: arch %s vs %s", what, a->arch, b->arch);
#define F(f) CHECK(a->f == b->f, "%s: %s %g vs %g", what, #f, (double)a->f, (double)b->f)
    F(dim); F(hidden_dim); F(n_layers); F(n_heads); F(n_kv_heads); F(head_dim);
    F(vocab_size); F(norm_eps); F(rope_theta); F(tied_embeddings); F(qkv_bias);
    F(bos_id); F(eos_id);
    if (with_ctx) F(max_seq_len);
#undef F
}

/* ---- fp16 / bf16 ---- */

static void test_half_known_bits(void) {
    static const struct { uint16_t h; float f; } H[] = {
        {0x3c00, 1.0f}, {0xc000, -2.0f}, {0x7bff, 65504.0f}, {0x0001, 5.9604645e-8f},
        {0x03ff, 6.0975552e-5f}, {0x0400, 6.1035156e-5f}, {0x3555, 0.33325195f},
        {0x0000, 0.0f}, {0x8001, -5.9604645e-8f},
    };
    for (size_t i = 0; i < sizeof H / sizeof H[0]; i++) {
        CHECK(qd_fp16_to_f32(H[i].h) == H[i].f, "fp16 %04x -> %.9g", H[i].h,
              (double)qd_fp16_to_f32(H[i].h));
        CHECK(qd_f32_to_fp16(H[i].f) == H[i].h, "%.9g -> fp16 %04x", (double)H[i].f,
              qd_f32_to_fp16(H[i].f));
    }
    CHECK(qd_f32_bits(qd_fp16_to_f32(0x8000)) == 0x80000000u, "-0");
    CHECK(isinf(qd_fp16_to_f32(0x7c00)) && qd_fp16_to_f32(0x7c00) > 0, "+inf");
    CHECK(isinf(qd_fp16_to_f32(0xfc00)) && qd_fp16_to_f32(0xfc00) < 0, "-inf");
    CHECK(isnan(qd_fp16_to_f32(0x7e00)) && isnan(qd_fp16_to_f32(0x7c01)), "NaN");
    /* narrowing: overflow, underflow, ties to even, NaN stays NaN */
    CHECK(qd_f32_to_fp16(65520.0f) == 0x7c00, "65520 rounds to inf");
    CHECK(qd_f32_to_fp16(65519.0f) == 0x7bff, "65519 rounds to max");
    CHECK(qd_f32_to_fp16(1e-8f) == 0x0000, "1e-8 underflows to 0");
    CHECK(qd_f32_to_fp16(-1e-8f) == 0x8000, "-1e-8 underflows to -0");
    CHECK(qd_f32_to_fp16(2.9802322e-8f) == 0x0000, "exact half of min subnormal ties to 0");
    CHECK(qd_f32_to_fp16(2.9802326e-8f * 1.0000001f) == 0x0001, "just above half rounds up");
    CHECK(qd_f32_to_fp16(1.0f + 1.0f / 2048) == 0x3c00, "tie rounds to even (down)");
    CHECK(qd_f32_to_fp16(1.0f + 3.0f / 2048) == 0x3c02, "tie rounds to even (up)");
    CHECK(qd_f32_to_fp16(6.1030e-5f) == 0x0400, "subnormal rounding carries into normal");
    CHECK(qd_f32_to_fp16(6.1005e-5f) == 0x03ff, "just under the midpoint stays subnormal");
    CHECK(qd_f32_to_fp16(INFINITY) == 0x7c00 && qd_f32_to_fp16(-INFINITY) == 0xfc00, "inf");
    uint16_t hn = qd_f32_to_fp16(qd_bits_f32(0x7f800001u)); /* NaN payload only in low bits */
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff), "signalling NaN stays NaN: %04x", hn);
    /* bf16 */
    CHECK(qd_bf16_to_f32(0x3f80) == 1.0f && qd_bf16_to_f32(0xc040) == -3.0f, "bf16 basics");
    CHECK(qd_bf16_to_f32(0x0001) == ldexpf(1.0f, -133), "bf16 min subnormal");
    CHECK(qd_f32_to_bf16(qd_bits_f32(0x3f808000u)) == 0x3f80, "bf16 tie to even down");
    CHECK(qd_f32_to_bf16(qd_bits_f32(0x3f818000u)) == 0x3f82, "bf16 tie to even up");
    CHECK(qd_f32_to_bf16(qd_bits_f32(0x3f808001u)) == 0x3f81, "bf16 above tie");
    CHECK(qd_f32_to_bf16(qd_bits_f32(0x7f7fffffu)) == 0x7f80, "bf16 max f32 rounds to inf");
    uint16_t bn = qd_f32_to_bf16(qd_bits_f32(0x7f800001u));
    CHECK((bn & 0x7f80) == 0x7f80 && (bn & 0x7f), "bf16 NaN stays NaN: %04x", bn);
    CHECK(qd_f32_to_bf16(-INFINITY) == 0xff80, "bf16 -inf");
}

static void test_half_exhaustive(void) {
    /* Every fp16/bf16 pattern widens and narrows back to itself (NaNs: to some NaN). */
    int bad16 = 0, bad_bf = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qd_fp16_to_f32((uint16_t)h);
        uint16_t back = qd_f32_to_fp16(f);
        if (isnan(f) ? !((back & 0x7c00) == 0x7c00 && (back & 0x3ff)) : back != h) bad16++;
        float g = qd_bf16_to_f32((uint16_t)h);
        uint16_t bb = qd_f32_to_bf16(g);
        if (isnan(g) ? !isnan(qd_bf16_to_f32(bb)) : bb != h) bad_bf++;
    }
    CHECK(bad16 == 0, "%d fp16 patterns do not round-trip", bad16);
    CHECK(bad_bf == 0, "%d bf16 patterns do not round-trip", bad_bf);
    /* Narrowing picks the nearest fp16 for a sweep of floats (checked against neighbours),
     * from below the smallest subnormal up to 65520 (from there on: inf, checked above). */
    int bad = 0;
    for (uint32_t u = 0x33000000u; u < 0x477ff000u; u += 4099) {
        float f = qd_bits_f32(u);
        uint16_t h = qd_f32_to_fp16(f);
        double err = fabs((double)qd_fp16_to_f32(h) - f);
        double lo = h > 0 ? fabs((double)qd_fp16_to_f32((uint16_t)(h - 1)) - f) : INFINITY;
        double hi = h < 0x7bff ? fabs((double)qd_fp16_to_f32((uint16_t)(h + 1)) - f) : INFINITY;
        if (err > lo || err > hi) bad++;
    }
    CHECK(bad == 0, "%d floats not rounded to the nearest fp16", bad);
}

/* ---- the three forms of stories260K ---- */

static void test_three_forms_agree(void) {
    qd_model *g = load_ok(fixture(GGUF260));
    qd_model *h = load_ok(fixture(HF260));
    qd_model *l = load_ok(fixture(L2C260));
    if (!g || !h || !l) goto out;
    CHECK(strcmp(g->format, "gguf") == 0 && strcmp(h->format, "safetensors") == 0 &&
              strcmp(l->format, "llama2c") == 0,
          "formats %s %s %s", g->format, h->format, l->format);
    const qd_config *c = &h->cfg;
    CHECK(c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 &&
              c->n_kv_heads == 4 && c->head_dim == 8 && c->vocab_size == 512 &&
              c->tied_embeddings == 1 && c->qkv_bias == 0 && c->bos_id == 1 && c->eos_id == 2 &&
              c->max_seq_len == 512 && c->rope_theta == 10000.0f && c->norm_eps == 1e-5f,
          "HF config");
    /* The GGUF says context_length 2048, the others 512: not a weight property. */
    expect_same_config(&g->cfg, c, 0, "gguf vs hf");
    expect_same_config(&l->cfg, c, 1, "llama2c vs hf");
    CHECK(g->lm_head == g->tok_emb && h->lm_head == h->tok_emb && l->lm_head == l->tok_emb,
          "tied heads share the embedding");
    /* The key RoPE check: interleaved (GGUF, llama2.c) permuted to rotate-half == HF. */
    expect_same_weights(h, g, 1e-6, 0, "gguf vs hf");
    expect_same_weights(h, l, 1e-6, 0, "llama2c vs hf");
    CHECK(max_diff(h->layers[0].wq, g->layers[0].wq, 64 * 64) == 0, "q exact");
    CHECK(max_diff(h->layers[4].wk, l->layers[4].wk, 32 * 64) == 0, "k exact");
    /* ... and unpermuted q would differ: the check has teeth. */
    CHECK(max_diff(h->layers[0].wq + 64, g->layers[0].wq + 2 * 64, 64) > 0, "rows differ");
    CHECK(g->vocab && g->vocab->n == 512 && !h->vocab && !l->vocab, "vocab only from GGUF");
    CHECK(qd_model_n_params(g) == 260032, "n_params %zu", qd_model_n_params(g));
out:
    qd_model_free(g);
    qd_model_free(h);
    qd_model_free(l);
}

static void test_format_detection_and_paths(void) {
    const char *paths[] = {fixture(HF260), fixture(HF260 "/config.json"),
                           fixture(HF260 "/model.safetensors"), fixture(HF260 "/")};
    for (int i = 0; i < 4; i++) {
        qd_model *m = load_ok(paths[i]);
        CHECK(m && strcmp(m->format, "safetensors") == 0, "%s", paths[i]);
        qd_model_free(m);
    }
    /* Content sniffing when the suffix says nothing. */
    copy_file(fixture(GGUF260), tmp("noext1"));
    copy_file(fixture(L2C260), tmp("noext2"));
    qd_model *a = load_ok(tmp("noext1")), *b = load_ok(tmp("noext2"));
    CHECK(a && strcmp(a->format, "gguf") == 0, "sniffed gguf");
    CHECK(b && strcmp(b->format, "llama2c") == 0, "sniffed llama2c");
    qd_model_free(a);
    qd_model_free(b);
    EXPECT_FAIL(qd_model_load(tmp("does-not-exist"), err_), "does-not-exist", "cannot open");
}

static void test_tensor_info(void) {
    qd_model *g = load_ok(fixture(GGUF260)), *h = load_ok(fixture(HF260)),
             *l = load_ok(fixture(L2C260));
    if (!g || !h || !l) goto out;
    CHECK(g->n_tinfo == 48, "gguf tinfo %d", g->n_tinfo);
    const qd_tensor_info *t = &g->tinfo[0];
    CHECK(strcmp(t->name, "token_embd.weight") == 0 && strcmp(t->dtype, "F32") == 0 &&
              t->ndim == 2 && t->shape[0] == 512 && t->shape[1] == 64 && t->bytes == 131072,
          "gguf tinfo[0] %s %s %lld %lld", t->name, t->dtype, (long long)t->shape[0],
          (long long)t->shape[1]);
    CHECK(h->n_tinfo == 47, "hf tinfo %d", h->n_tinfo);
    int found = 0;
    for (int i = 0; i < h->n_tinfo; i++)
        if (strcmp(h->tinfo[i].name, "model.layers.0.self_attn.k_proj.weight") == 0) {
            found = h->tinfo[i].shape[0] == 32 && h->tinfo[i].shape[1] == 64 &&
                    h->tinfo[i].bytes == 8192;
        }
    CHECK(found, "hf k_proj tinfo");
    CHECK(l->n_tinfo == 13, "llama2c tinfo %d", l->n_tinfo);
    t = &l->tinfo[2];
    CHECK(strcmp(t->name, "wq") == 0 && t->ndim == 3 && t->shape[0] == 5 && t->shape[1] == 64 &&
              t->bytes == 5 * 64 * 64 * 4,
          "llama2c wq tinfo");
out:
    qd_model_free(g);
    qd_model_free(h);
    qd_model_free(l);
}

/* qd_model_probe: the loader's config, vocabulary and tensor list from the headers alone, for
 * each format; no tensor memory; a NaN (only in the weights) passes the probe and fails the
 * load; a header fault (an index naming a missing shard) fails both the same way. */
static void test_probe_headers_only(void) {
    const char *forms[] = {fixture(GGUF260), fixture(HF260), fixture(L2C260)};
    for (int i = 0; i < 3; i++) {
        qd_err e = {{0}};
        qd_model *p = qd_model_probe(forms[i], &e), *m = load_ok(forms[i]);
        CHECK(p != NULL, "%s: probe: %s", forms[i], e.msg);
        if (p && m) {
            CHECK(!memcmp(&p->cfg, &m->cfg, sizeof p->cfg), "%s: probe config differs", forms[i]);
            CHECK(!p->mem && !p->tok_emb && !p->layers && !strcmp(p->format, m->format),
                  "%s: the probe holds tensors or another format", forms[i]);
            CHECK(p->n_tinfo == m->n_tinfo && p->n_tinfo > 0 &&
                      !memcmp(p->tinfo, m->tinfo, sizeof *p->tinfo * (size_t)p->n_tinfo),
                  "%s: tensor list %d vs %d", forms[i], p->n_tinfo, m->n_tinfo);
            CHECK(!p->vocab == !m->vocab && (!p->vocab || p->vocab->n == m->vocab->n),
                  "%s: vocabulary", forms[i]);
        }
        qd_model_free(p);
        qd_model_free(m);
    }
    /* a NaN in token_embd.weight: the headers are fine */
    size_t n;
    uint8_t *b = slurp(fixture(GGUF260), &n);
    qd_err e = {{0}};
    qd_gguf *g = qd_gguf_open(fixture(GGUF260), &e);
    const qd_gguf_tensor *t = g ? qd_gguf_find_tensor(g, "token_embd.weight") : NULL;
    if (b && t) {
        size_t off = (size_t)((const uint8_t *)t->data - g->base) + 4 * 7;
        uint32_t qnan = 0x7fc00000;
        memcpy(b + off, &qnan, 4);
        spit(tmp("nan.gguf"), b, n);
        qd_model *p = qd_model_probe(tmp("nan.gguf"), &e);
        CHECK(p != NULL, "probe of a NaN weight failed: %s", e.msg);
        qd_model_free(p);
        EXPECT_FAIL(qd_model_load(tmp("nan.gguf"), err_), "token_embd.weight", "NaN");
    }
    qd_gguf_close(g);
    free(b);
    /* an index naming a shard that is not there */
    mkdir(tmp("probe-shard"), 0755);
    copy_file(fixture(HF260 "/config.json"), tmp("probe-shard/config.json"));
    copy_file(fixture(HF260 "/model.safetensors"), tmp("probe-shard/model.safetensors"));
    const char *idx = "{\"weight_map\":{\"model.embed_tokens.weight\":\"model.safetensors\","
                      "\"model.norm.weight\":\"model-00002-of-00002.safetensors\"}}";
    spit(tmp("probe-shard/model.safetensors.index.json"), idx, strlen(idx));
    EXPECT_FAIL(qd_model_probe(tmp("probe-shard"), err_), "model-00002-of-00002.safetensors",
                "which is missing");
    EXPECT_FAIL(qd_model_load(tmp("probe-shard"), err_), "model-00002-of-00002.safetensors",
                "which is missing");
}

static void test_gguf_vocab(void) {
    qd_err e = {{0}};
    qd_vocab *v = qd_gguf_load_vocab(fixture(GGUF260), &e);
    CHECK(v != NULL, "%s", e.msg);
    if (!v) return;
    CHECK(v->n == 512 && strcmp(v->tokens[0], "<unk>") == 0 && strcmp(v->tokens[1], "<s>") == 0 &&
              strcmp(v->tokens[3], "<0x00>") == 0,
          "tokens");
    CHECK(v->scores && v->types && v->types[0] == QD_TOK_UNKNOWN && v->types[1] == QD_TOK_CONTROL &&
              v->types[3] == QD_TOK_BYTE,
          "types");
    CHECK(v->bos_id == 1 && v->eos_id == 2 && v->unk_id == 0, "ids %d %d %d", v->bos_id,
          v->eos_id, v->unk_id);
    CHECK(v->add_bos == 1 && v->add_space_prefix == 1, "defaults");
    qd_vocab_free(v);
    v = qd_gguf_load_vocab(fixture(TINY), &e);
    CHECK(v && v->n == 32000, "tiny vocab: %s", v ? "" : e.msg);
    qd_vocab_free(v);
    EXPECT_FAIL(qd_gguf_load_vocab(fixture(L2C260), err_), "bad magic");
}

/* A byte-level BPE vocabulary (tokenizer.ggml.model gpt2) in a hand-built GGUF: tokens,
 * ranked merges and the pre-tokenizer name land in qd_vocab; broken forms are named. */
static const char *gpt2_vocab_file(const char *model, const char *const *merges, int n_merges,
                                   const char *pre) {
    static const char *const toks[] = {"a", "b", "ab", "\xc4\xa0", "\xc4\xa0" "ab", "<|end|>"};
    const int32_t types[] = {1, 1, 1, 1, 1, 3};
    gguf_build g = {0};
    gb_kv_str(&g, "general.architecture", "llama");
    if (model) gb_kv_str(&g, "tokenizer.ggml.model", model);
    if (pre) gb_kv_str(&g, "tokenizer.ggml.pre", pre);
    gb_kv_strs(&g, "tokenizer.ggml.tokens", toks, 6);
    gb_kv_i32s(&g, "tokenizer.ggml.token_type", types, 6);
    if (merges) gb_kv_strs(&g, "tokenizer.ggml.merges", merges, n_merges);
    gb_kv_u32(&g, "tokenizer.ggml.eos_token_id", 5);
    const char *p = tmp("vocab-%s-%d.gguf", model ? model : "none", n_merges);
    CHECK(gb_write(&g, p) == 0, "write %s", p);
    return p;
}

static void test_gguf_vocab_gpt2(void) {
    static const char *const merges[] = {"a b", "\xc4\xa0 ab"};
    qd_err e = {{0}};
    qd_vocab *v = qd_gguf_load_vocab(gpt2_vocab_file("gpt2", merges, 2, "smollm"), &e);
    CHECK(v != NULL, "%s", e.msg);
    if (v) {
        CHECK(v->kind == QD_VOCAB_BPE && v->n == 6 && strcmp(v->pre, "smollm") == 0, "kind/pre");
        CHECK(v->n_merges == 2 && strcmp(v->merges[0], "a b") == 0 &&
                  strcmp(v->merges[1], "\xc4\xa0 ab") == 0,
              "merges in rank order");
        CHECK(v->eos_id == 5 && v->bos_id == -1 && v->types[5] == QD_TOK_CONTROL, "ids/types");
        CHECK(v->add_bos == 0 && v->add_space_prefix == 0, "BPE defaults: no BOS, no prefix");
        qd_vocab_free(v);
    }
    /* a left token that is itself a space splits after the first byte, as llama.cpp does */
    static const char *const sp[] = {"  a"};
    v = qd_gguf_load_vocab(gpt2_vocab_file("gpt2", sp, 1, NULL), &e);
    CHECK(v && v->n_merges == 1 && v->pre[0] == 0, "space token merge: %s", v ? "" : e.msg);
    qd_vocab_free(v);
    v = qd_gguf_load_vocab(gpt2_vocab_file("llama", NULL, 0, NULL), &e);
    CHECK(v && v->kind == QD_VOCAB_SPM && v->n_merges == 0 && v->add_bos == 1, "llama kind");
    qd_vocab_free(v);
    v = qd_gguf_load_vocab(gpt2_vocab_file(NULL, NULL, 0, NULL), &e);
    CHECK(v && v->kind == QD_VOCAB_SPM, "absent model is SentencePiece-style");
    qd_vocab_free(v);
    EXPECT_FAIL(qd_gguf_load_vocab(gpt2_vocab_file("bert", NULL, 0, NULL), err_), "vocab-bert",
                "tokenizer.ggml.model", "bert");
    EXPECT_FAIL(qd_gguf_load_vocab(gpt2_vocab_file("gpt2", NULL, 0, NULL), err_),
                "tokenizer.ggml.merges is missing");
    static const char *const bad[] = {"a b", "ab"};
    EXPECT_FAIL(qd_gguf_load_vocab(gpt2_vocab_file("gpt2", bad, 2, NULL), err_),
                "tokenizer.ggml.merges[1]", "'ab'");
    static const char *const trail[] = {"a "};
    EXPECT_FAIL(qd_gguf_load_vocab(gpt2_vocab_file("gpt2", trail, 1, NULL), err_),
                "tokenizer.ggml.merges[0]");
}

/* Hand conversion of a binary16 pattern, independent of half.h. */
static float hand_f16(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
    return (float)(s ? -v : v);
}

static void test_tiny_random_f16(void) {
    qd_model *m = load_ok(fixture(TINY));
    size_t len;
    uint8_t *raw = slurp(fixture(TINY), &len);
    if (!m || !raw) goto out;
    const qd_config *c = &m->cfg;
    CHECK(c->dim == 8 && c->hidden_dim == 32 && c->n_layers == 1 && c->n_heads == 2 &&
              c->n_kv_heads == 2 && c->head_dim == 4 && c->vocab_size == 32000 &&
              c->max_seq_len == 4096 && !c->tied_embeddings,
          "tiny config");
    CHECK(m->vocab && m->vocab->n == 32000, "vocab");
    CHECK(strcmp(m->tinfo[0].dtype, "F16") == 0 && m->tinfo[0].bytes == 512000, "tinfo F16");
    /* Offsets from an independent Python dump of the header: data starts at 724416;
     * token_embd at +0, attn_q at +512000, output at +514144 (all F16). */
    const size_t data = 724416;
    CHECK(len == 1750560, "fixture size %zu", len);
    size_t idx[] = {0, 1, 7, 12345, 255999};
    for (int i = 0; i < 5; i++) {
        size_t o = data + 2 * idx[i];
        float want = hand_f16((uint16_t)(raw[o] | raw[o + 1] << 8));
        CHECK(m->tok_emb[idx[i]] == want, "tok_emb[%zu] %g vs %g", idx[i],
              (double)m->tok_emb[idx[i]], (double)want);
        o = data + 514144 + 2 * idx[i];
        want = hand_f16((uint16_t)(raw[o] | raw[o + 1] << 8));
        CHECK(m->lm_head[idx[i]] == want, "lm_head[%zu]", idx[i]);
    }
    /* q: GGUF row 2i+j of head h is HF row h*4 + j*2 + i. */
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
                for (int col = 0; col < 8; col++) {
                    size_t o = data + 512000 + 2 * ((size_t)(h * 4 + 2 * i + j) * 8 + col);
                    float want = hand_f16((uint16_t)(raw[o] | raw[o + 1] << 8));
                    float got = m->layers[0].wq[(size_t)(h * 4 + j * 2 + i) * 8 + col];
                    CHECK(got == want, "wq h%d i%d j%d c%d: %g vs %g", h, i, j, col,
                          (double)got, (double)want);
                }
out:
    free(raw);
    qd_model_free(m);
}

static void test_clone(void) {
    qd_model *m = load_ok(fixture(GGUF260));
    if (!m) return;
    qd_err e = {{0}};
    qd_model *c = qd_model_clone(m, &e);
    CHECK(c != NULL, "%s", e.msg);
    if (c) {
        expect_same_config(&m->cfg, &c->cfg, 1, "clone");
        expect_same_weights(m, c, 0, 0, "clone");
        CHECK(c->mem != m->mem && c->lm_head == c->tok_emb && !c->vocab && !c->tinfo,
              "clone owns its memory, shares nothing");
        CHECK(((uintptr_t)c->layers[1].wk & 63) == 0, "tensors 64-byte aligned");
    }
    qd_model_free(c);
    qd_model_free(m);
    qd_model_free(NULL);
}

/* ---- qd_save_hf ---- */

static void save_ok(const qd_model *m, const char *dir, const char *dtype, size_t shard) {
    qd_err e = {{0}};
    int rc = qd_save_hf_sharded(m, dir, dtype, shard, &e);
    CHECK(rc == QD_OK, "save %s %s: %s", dir, dtype, e.msg);
}

static void test_save_roundtrip(void) {
    qd_model *m = load_ok(fixture(GGUF260));
    if (!m) return;
    static const struct { const char *dt; double rel, abs; } V[] = {
        {"F32", 0, 0},
        {"F16", 1.0 / 2048, 3e-8},  /* half an fp16 ulp; subnormals by absolute error */
        {"BF16", 1.0 / 256, 1e-38}, /* half a bf16 ulp */
    };
    for (int i = 0; i < 3; i++) {
        const char *dir = tmp("save-%s", V[i].dt);
        save_ok(m, dir, V[i].dt, 0);
        qd_model *r = load_ok(dir);
        if (!r) continue;
        expect_same_config(&m->cfg, &r->cfg, 1, V[i].dt);
        expect_same_weights(m, r, V[i].abs, V[i].rel, V[i].dt);
        CHECK(r->n_tinfo == 47 && strcmp(r->tinfo[0].dtype, V[i].dt) == 0, "%s tinfo %s",
              V[i].dt, r->n_tinfo ? r->tinfo[0].dtype : "");
        qd_model_free(r);
    }
    /* Saving again over the same directory replaces it (atomic rename, no temp left). */
    save_ok(m, tmp("save-F32"), "F32", 0);
    int n = 0;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp", tmp("save-F32"));
    FILE *p = popen(cmd, "r");
    if (p) {
        if (fscanf(p, "%d", &n) != 1) n = -1;
        pclose(p);
    }
    CHECK(n == 0, "%d temp files left behind", n);
    /* config.json is plain HF. */
    size_t len;
    char *cj = (char *)slurp(tmp("save-BF16/config.json"), &len);
    cJSON *j = cj ? cJSON_Parse(cj) : NULL;
    CHECK(j && strcmp(cJSON_GetObjectItem(j, "model_type")->valuestring, "llama") == 0 &&
              strcmp(cJSON_GetObjectItem(j, "torch_dtype")->valuestring, "bfloat16") == 0 &&
              cJSON_GetObjectItem(j, "rms_norm_eps")->valuedouble == 1e-5,
          "config.json: %s", cj ? cj : "");
    cJSON_Delete(j);
    free(cj);
    qd_err e = {{0}};
    CHECK(qd_save_hf(m, tmp("bad"), "F64", &e) == QD_ERR && strstr(e.msg, "F64"), "%s", e.msg);
    qd_model_free(m);
}

static void test_save_sharded(void) {
    qd_model *m = load_ok(fixture(HF260));
    if (!m) return;
    const char *dir = tmp("sharded");
    save_ok(m, dir, "F32", 200000);
    qd_err e = {{0}};
    /* 1040128 bytes of tensors in shards of <= 200000 (the embedding alone is 131072). */
    size_t len;
    char *ix = (char *)slurp(tmp("sharded/model.safetensors.index.json"), &len);
    CHECK(ix && strstr(ix, "model-00001-of-00006.safetensors") &&
              strstr(ix, "model-00006-of-00006.safetensors") && strstr(ix, "1040128"),
          "index: %.300s", ix ? ix : "");
    free(ix);
    qd_st_file *s3 = qd_st_open(tmp("sharded/model-00003-of-00006.safetensors"), &e);
    CHECK(s3 != NULL && s3->n_tensors > 1, "shard 3: %s", e.msg);
    for (int i = 0; s3 && i < s3->n_tensors; i++) {
        size_t last = s3->tensors[i].offset + s3->tensors[i].nbytes - s3->data_start;
        CHECK(last <= 200000, "shard over the limit");
    }
    qd_st_close(s3);
    CHECK(access(tmp("sharded/model.safetensors"), F_OK) != 0, "no single file");
    qd_model *r = load_ok(dir);
    if (r) {
        expect_same_config(&m->cfg, &r->cfg, 1, "sharded");
        expect_same_weights(m, r, 0, 0, "sharded");
        CHECK(r->n_tinfo == 47, "tinfo over all shards: %d", r->n_tinfo);
    }
    qd_model_free(r);
    /* Saving single-file over it removes the index that would shadow it. */
    save_ok(m, dir, "F32", 0);
    CHECK(access(tmp("sharded/model.safetensors.index.json"), F_OK) != 0, "index removed");
    qd_model_free(m);
}

/* Two shards and an index written by hand from the fixture's raw tensors, through the
 * general writer (raw data pointers). */
static void test_hand_sharded(void) {
    qd_err e = {{0}};
    qd_st_file *f = qd_st_open(fixture(HF260 "/model.safetensors"), &e);
    CHECK(f != NULL, "%s", e.msg);
    if (!f) return;
    mkdir(tmp("hand"), 0755);
    copy_file(fixture(HF260 "/config.json"), tmp("hand/config.json"));
    qd_st_wtensor *w = calloc((size_t)f->n_tensors, sizeof *w);
    cJSON *idx = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(idx, "weight_map");
    for (int i = 0; i < f->n_tensors; i++) {
        const qd_st_tensor *t = &f->tensors[i];
        w[i] = (qd_st_wtensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                               .data = t->data};
        memcpy(w[i].shape, t->shape, sizeof t->shape);
        cJSON_AddStringToObject(wm, t->name, i < 20 ? "a.safetensors" : "b.safetensors");
    }
    CHECK(qd_st_write(tmp("hand/a.safetensors"), w, 20, NULL, &e) == QD_OK, "%s", e.msg);
    CHECK(qd_st_write(tmp("hand/b.safetensors"), w + 20, f->n_tensors - 20, NULL, &e) == QD_OK,
          "%s", e.msg);
    char *txt = cJSON_Print(idx);
    spit(tmp("hand/model.safetensors.index.json"), txt, strlen(txt));
    free(txt);
    qd_model *a = load_ok(tmp("hand")), *b = load_ok(fixture(HF260));
    if (a && b) expect_same_weights(b, a, 0, 0, "hand-sharded");
    qd_model_free(a);
    qd_model_free(b);
    /* An index naming a file outside the directory is refused. */
    cJSON_ReplaceItemInObject(wm, "model.norm.weight", cJSON_CreateString("../b.safetensors"));
    txt = cJSON_Print(idx);
    spit(tmp("hand/model.safetensors.index.json"), txt, strlen(txt));
    free(txt);
    EXPECT_FAIL(qd_model_load(tmp("hand"), err_), "index.json", "model.norm.weight",
                "plain file name");
    cJSON_Delete(idx);
    free(w);
    qd_st_close(f);
}

/* A model with cfg changed from src's (bias, tying), common weights copied. */
static qd_model *variant(const qd_model *src, int qkv_bias, int tied) {
    qd_config c = src->cfg;
    c.qkv_bias = qkv_bias;
    c.tied_embeddings = tied;
    qd_err e = {{0}};
    qd_model *m = qd_model_alloc(&c, &e);
    CHECK(m != NULL, "%s", e.msg);
    if (!m) return NULL;
    each_pair(src, m, copy_pair, NULL);
    return m;
}

static void test_qwen2_bias_roundtrip(void) {
    qd_model *s = load_ok(fixture(HF260));
    qd_model *m = s ? variant(s, 1, 1) : NULL;
    if (!m) goto out;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int i = 0; i < 64; i++) {
            m->layers[l].bq[i] = 0.01f * (float)(i + l);
            if (i < 32) {
                m->layers[l].bk[i] = -0.02f * (float)i;
                m->layers[l].bv[i] = 0.5f + (float)l;
            }
        }
    save_ok(m, tmp("qwen2"), "F32", 0);
    size_t len;
    char *cj = (char *)slurp(tmp("qwen2/config.json"), &len);
    CHECK(cj && strstr(cj, "\"qwen2\"") && strstr(cj, "Qwen2ForCausalLM"), "qwen2 config");
    free(cj);
    qd_model *r = load_ok(tmp("qwen2"));
    if (r) {
        CHECK(r->cfg.qkv_bias == 1 && r->layers[3].bq != NULL, "bias loaded");
        expect_same_weights(m, r, 0, 0, "qwen2");
        CHECK(r->layers[4].bv[31] == 4.5f, "bv value");
    }
    qd_model_free(r);
out:
    qd_model_free(m);
    qd_model_free(s);
}

static void test_tied_untied(void) {
    qd_model *s = load_ok(fixture(HF260));
    qd_model *m = s ? variant(s, 0, 0) : NULL;
    if (!m) goto out;
    size_t n = (size_t)m->cfg.vocab_size * m->cfg.dim;
    CHECK(m->lm_head != m->tok_emb, "separate head storage");
    for (size_t i = 0; i < n; i++) m->lm_head[i] = 0.5f * m->tok_emb[i];
    save_ok(m, tmp("untied"), "F32", 0);
    qd_model *r = load_ok(tmp("untied"));
    if (r) {
        CHECK(!r->cfg.tied_embeddings && r->lm_head != r->tok_emb, "untied on load");
        CHECK(max_diff(r->lm_head, m->lm_head, n) == 0, "lm_head values");
        CHECK(qd_model_n_params(r) == qd_model_n_params(s) + n, "untied params");
    }
    qd_model_free(r);
    /* untied config without lm_head.weight: a missing tensor */
    copy_file(fixture(HF260 "/model.safetensors"), tmp("untied/model.safetensors"));
    EXPECT_FAIL(qd_model_load(tmp("untied"), err_), "missing tensor lm_head.weight");
out:
    qd_model_free(m);
    qd_model_free(s);
}

/* Writes dir/config.json as the fixture's with edits applied by fn, and links the weights. */
static const char *hf_with_config(const char *name, void (*fn)(cJSON *)) {
    const char *dir = tmp("%s", name);
    mkdir(dir, 0755);
    size_t len;
    char *txt = (char *)slurp(fixture(HF260 "/config.json"), &len);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    if (!j) return dir;
    fn(j);
    txt = cJSON_Print(j);
    spit(tmp("%s/config.json", name), txt, strlen(txt));
    free(txt);
    cJSON_Delete(j);
    char wpath[600];
    snprintf(wpath, sizeof wpath, "%s/model.safetensors", dir);
    if (access(wpath, F_OK) != 0) copy_file(fixture(HF260 "/model.safetensors"), wpath);
    return dir;
}

static void rope_params(cJSON *j) {
    cJSON_DeleteItemFromObject(j, "rope_theta");
    cJSON *rp = cJSON_AddObjectToObject(j, "rope_parameters");
    cJSON_AddStringToObject(rp, "rope_type", "default");
    cJSON_AddNumberToObject(rp, "rope_theta", 500000.0);
}
static void rope_llama3(cJSON *j) {
    cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
    cJSON_AddStringToObject(rs, "rope_type", "llama3");
    cJSON_AddNumberToObject(rs, "factor", 8.0);
}
static void rope_yarn(cJSON *j) {
    cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
    cJSON_AddStringToObject(rs, "rope_type", "yarn");
    cJSON_AddNumberToObject(rs, "factor", 4.0);
}
static void dtype_int8(cJSON *j) {
    cJSON_DeleteItemFromObject(j, "torch_dtype");
    cJSON_AddStringToObject(j, "torch_dtype", "int8");
}
static void quantized(cJSON *j) {
    cJSON *q = cJSON_AddObjectToObject(j, "quantization_config");
    cJSON_AddStringToObject(q, "quant_method", "gptq");
}
static void unknown_keys(cJSON *j) {
    cJSON_AddStringToObject(j, "transformers_version", "4.57.1");
    cJSON_AddNumberToObject(j, "initializer_range", 0.02);
    cJSON_AddBoolToObject(j, "use_cache", 1);
    cJSON_DeleteItemFromObject(j, "torch_dtype");
    cJSON_AddStringToObject(j, "dtype", "bfloat16");
}
static void arch_gpt2(cJSON *j) {
    cJSON_ReplaceItemInObject(j, "model_type", cJSON_CreateString("gpt2"));
}
static void arch_none(cJSON *j) {
    cJSON_DeleteItemFromObject(j, "model_type");
    cJSON_DeleteItemFromObject(j, "architectures");
}
static void arch_only_list(cJSON *j) {
    cJSON_DeleteItemFromObject(j, "model_type");
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateString("MistralForCausalLM"));
    cJSON_ReplaceItemInObject(j, "architectures", a);
}
static void arch_bad_list(cJSON *j) {
    arch_only_list(j);
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(j, "architectures"), 0,
                             cJSON_CreateString("FalconForCausalLM"));
}
static void act_gelu(cJSON *j) {
    cJSON_ReplaceItemInObject(j, "hidden_act", cJSON_CreateString("gelu"));
}
static void no_hidden(cJSON *j) { cJSON_DeleteItemFromObject(j, "hidden_size"); }
static void huge_layers(cJSON *j) {
    cJSON_ReplaceItemInObject(j, "num_hidden_layers", cJSON_CreateNumber(1e12));
}
static void frac_heads(cJSON *j) {
    cJSON_ReplaceItemInObject(j, "num_attention_heads", cJSON_CreateNumber(8.5));
}
static void eos_list(cJSON *j) {
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateNumber(2));
    cJSON_AddItemToArray(a, cJSON_CreateNumber(3));
    cJSON_ReplaceItemInObject(j, "eos_token_id", a);
    cJSON_DeleteItemFromObject(j, "head_dim");
}
static void gqa_mismatch(cJSON *j) { cJSON_DeleteItemFromObject(j, "num_key_value_heads"); }

static void test_hf_config_variants(void) {
    qd_model *m = load_ok(hf_with_config("ropep", rope_params));
    CHECK(m && m->cfg.rope_theta == 500000.0f, "rope_parameters.rope_theta");
    qd_model_free(m);
    m = load_ok(hf_with_config("mistral", arch_only_list));
    CHECK(m != NULL, "architectures alone is enough");
    qd_model_free(m);
    /* eos as a list takes the first; head_dim defaults to hidden/heads. */
    m = load_ok(hf_with_config("eoslist", eos_list));
    CHECK(m && m->cfg.eos_id == 2 && m->cfg.head_dim == 8, "eos list / head_dim default");
    qd_model_free(m);
    EXPECT_FAIL(qd_model_load(hf_with_config("rope3", rope_llama3), err_), "rope3/config.json",
                "rope_scaling.low_freq_factor missing");
    EXPECT_FAIL(qd_model_load(hf_with_config("yarn", rope_yarn), err_), "yarn/config.json",
                "unsupported rope_scaling type 'yarn'");
    EXPECT_FAIL(qd_model_load(hf_with_config("dtype8", dtype_int8), err_), "dtype8/config.json",
                "torch_dtype 'int8'");
    EXPECT_FAIL(qd_model_load(hf_with_config("gptq", quantized), err_), "gptq/config.json",
                "quantization_config", "gptq");
    m = load_ok(hf_with_config("unknownkeys", unknown_keys));
    CHECK(m && m->cfg.dim == 64, "unknown keys are ignored");
    qd_model_free(m);
    EXPECT_FAIL(qd_model_load(hf_with_config("gpt2", arch_gpt2), err_), "config.json",
                "unsupported architecture", "model_type 'gpt2'");
    EXPECT_FAIL(qd_model_load(hf_with_config("noarch", arch_none), err_),
                "unsupported architecture", "neither model_type nor architectures");
    EXPECT_FAIL(qd_model_load(hf_with_config("falcon", arch_bad_list), err_),
                "unsupported architecture", "FalconForCausalLM");
    EXPECT_FAIL(qd_model_load(hf_with_config("gelu", act_gelu), err_), "hidden_act 'gelu'");
    EXPECT_FAIL(qd_model_load(hf_with_config("nohidden", no_hidden), err_), "config.json",
                "missing hidden_size");
    EXPECT_FAIL(qd_model_load(hf_with_config("hugelayers", huge_layers), err_),
                "num_hidden_layers", "out of range");
    EXPECT_FAIL(qd_model_load(hf_with_config("fracheads", frac_heads), err_),
                "num_attention_heads is not an integer");
    /* num_key_value_heads defaults to num_attention_heads (8), but the file has 4 */
    EXPECT_FAIL(qd_model_load(hf_with_config("gqa", gqa_mismatch), err_),
                "model.layers.0.self_attn.k_proj.weight", "shape [32, 64], expected [64, 64]");
    spit(tmp("gqa/config.json"), "{\"model_type\": \"llama\",", 24);
    EXPECT_FAIL(qd_model_load(tmp("gqa"), err_), "config.json", "JSON");
}

/* ---- safetensors writer: integer artifacts, metadata, scalars ---- */

static void test_st_writer_general(void) {
    int8_t q[6] = {-128, -1, 0, 1, 2, 127};
    int32_t b[3] = {-7, 0, 1 << 30};
    uint8_t packed[2] = {0x1f, 0xe2};
    float s = 0.125f;
    qd_st_wtensor w[] = {
        {.name = "w.q", .dtype = QD_ST_I8, .ndim = 2, .shape = {2, 3}, .data = q},
        {.name = "w.bias", .dtype = QD_ST_I32, .ndim = 1, .shape = {3}, .data = b},
        {.name = "w.int4", .dtype = QD_ST_U8, .ndim = 1, .shape = {2}, .data = packed},
        {.name = "w.scale", .dtype = QD_ST_F32, .ndim = 0, .data = &s},
        {.name = "empty", .dtype = QD_ST_F16, .ndim = 2, .shape = {0, 4}, .data = NULL},
    };
    const char *meta[] = {"quant", "{\"wbits\":8}", "format", "pt", NULL};
    qd_err e = {{0}};
    const char *p = tmp("ints.safetensors");
    CHECK(qd_st_write(p, w, 5, meta, &e) == QD_OK, "%s", e.msg);
    qd_st_file *f = qd_st_open(p, &e);
    CHECK(f != NULL, "%s", e.msg);
    if (!f) return;
    CHECK(f->n_tensors == 5 && f->data_start % 8 == 0, "count/alignment");
    const qd_st_tensor *t = qd_st_find(f, "w.q");
    CHECK(t && t->dtype == QD_ST_I8 && t->ndim == 2 && t->shape[1] == 3 &&
              memcmp(t->data, q, 6) == 0,
          "I8");
    t = qd_st_find(f, "w.bias");
    CHECK(t && t->dtype == QD_ST_I32 && memcmp(t->data, b, 12) == 0, "I32");
    t = qd_st_find(f, "w.scale");
    CHECK(t && t->ndim == 0 && t->n_elems == 1 && memcmp(t->data, &s, 4) == 0, "scalar");
    t = qd_st_find(f, "empty");
    CHECK(t && t->nbytes == 0 && t->n_elems == 0, "empty");
    CHECK(qd_st_meta(f, "quant") && strcmp(qd_st_meta(f, "quant"), "{\"wbits\":8}") == 0 &&
              f->n_meta == 2 && !qd_st_meta(f, "nope"),
          "metadata");
    CHECK(!qd_st_find(f, "nope"), "absent");
    qd_st_close(f);
    /* F32 source converted while writing */
    float x[4] = {1.0f, -2.5f, 65504.0f, 1e-8f};
    qd_st_wtensor h = {.name = "h", .dtype = QD_ST_F16, .ndim = 1, .shape = {4}, .f32 = x};
    CHECK(qd_st_write(p, &h, 1, NULL, &e) == QD_OK, "%s", e.msg);
    f = qd_st_open(p, &e);
    t = f ? qd_st_find(f, "h") : NULL;
    const uint8_t *d = t ? t->data : NULL;
    CHECK(d && (d[0] | d[1] << 8) == 0x3c00 && (d[2] | d[3] << 8) == 0xc100 &&
              (d[4] | d[5] << 8) == 0x7bff && (d[6] | d[7] << 8) == 0,
          "F16 from F32");
    qd_st_close(f);
    /* writer refuses nonsense */
    qd_st_wtensor dup[2] = {w[0], w[0]};
    CHECK(qd_st_write(p, dup, 2, NULL, &e) == QD_ERR && strstr(e.msg, "duplicate"), "%s", e.msg);
    qd_st_wtensor neg = w[0];
    neg.shape[0] = -1;
    CHECK(qd_st_write(p, &neg, 1, NULL, &e) == QD_ERR, "negative shape");
    f = qd_st_open(p, &e);
    CHECK(f && f->n_tensors == 1, "failed writes left the file alone");
    qd_st_close(f);
}

/* ---- bad-input catalogue: safetensors ---- */

/* Rewrites the fixture's model.safetensors into dir with the header edited by fn (given the
 * header object), data block unchanged; copies config.json alongside. */
static const char *st_mutant(const char *name, void (*fn)(cJSON *)) {
    const char *dir = tmp("%s", name);
    mkdir(dir, 0755);
    copy_file(fixture(HF260 "/config.json"), tmp("%s/config.json", name));
    size_t len;
    uint8_t *b = slurp(fixture(HF260 "/model.safetensors"), &len);
    if (!b) return dir;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
    cJSON *j = cJSON_ParseWithLength((const char *)b + 8, (size_t)n);
    fn(j);
    char *h = cJSON_PrintUnformatted(j);
    size_t hl = strlen(h);
    const char *p = tmp("%s/model.safetensors", name);
    FILE *f = fopen(p, "wb");
    for (int i = 0; i < 8; i++) fputc((int)((uint64_t)hl >> (8 * i)) & 0xff, f);
    fwrite(h, 1, hl, f);
    fwrite(b + 8 + n, 1, len - 8 - (size_t)n, f);
    fclose(f);
    free(h);
    cJSON_Delete(j);
    free(b);
    return dir;
}

static cJSON *entry(cJSON *j, const char *t) { return cJSON_GetObjectItem(j, t); }
static void set_offsets(cJSON *j, const char *t, double a, double b) {
    cJSON *o = cJSON_CreateArray();
    cJSON_AddItemToArray(o, cJSON_CreateNumber(a));
    cJSON_AddItemToArray(o, cJSON_CreateNumber(b));
    cJSON_ReplaceItemInObject(entry(j, t), "data_offsets", o);
}
static void mut_overlap(cJSON *j) {
    set_offsets(j, "model.layers.0.input_layernorm.weight", 131000, 131256);
}
static void mut_out_of_range(cJSON *j) {
    set_offsets(j, "model.norm.weight", 1045000, 1045256);
}
static void mut_huge_offset(cJSON *j) {
    set_offsets(j, "model.norm.weight", 1e17, 1e17 + 256);
}
static void mut_reversed(cJSON *j) { set_offsets(j, "model.norm.weight", 256, 0); }
static void mut_shape(cJSON *j) {
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(entry(j, "model.embed_tokens.weight"), "shape"),
                             1, cJSON_CreateNumber(65));
}
static void mut_shape_overflow(cJSON *j) {
    cJSON *s = cJSON_GetObjectItem(entry(j, "model.norm.weight"), "shape");
    cJSON_ReplaceItemInArray(s, 0, cJSON_CreateNumber(4294967296.0));
    cJSON_AddItemToArray(s, cJSON_CreateNumber(4294967296.0));
}
static void mut_dtype(cJSON *j) {
    cJSON_ReplaceItemInObject(entry(j, "model.norm.weight"), "dtype", cJSON_CreateString("F33"));
}
static void mut_dtype_i8(cJSON *j) {
    /* 256 bytes as I8 is shape [256], a model-level type error on the right name */
    cJSON *e = entry(j, "model.norm.weight");
    cJSON_ReplaceItemInObject(e, "dtype", cJSON_CreateString("I32"));
}
static void mut_missing(cJSON *j) { cJSON_DeleteItemFromObject(j, "model.norm.weight"); }
static void mut_not_object(cJSON *j) {
    cJSON_ReplaceItemInObject(j, "model.norm.weight", cJSON_CreateNumber(3));
}
static void mut_meta_nonstring(cJSON *j) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "__metadata__"), "format",
                              cJSON_CreateNumber(1));
}
static void mut_dup(cJSON *j) {
    cJSON_AddItemToObject(j, "model.norm.weight",
                          cJSON_Duplicate(entry(j, "model.layers.0.input_layernorm.weight"), 1));
}

static void patch_u64(const char *path, size_t at, uint64_t v) {
    FILE *f = fopen(path, "r+b");
    if (!f) return;
    fseek(f, (long)at, SEEK_SET);
    for (int i = 0; i < 8; i++) fputc((int)(v >> (8 * i)) & 0xff, f);
    fclose(f);
}

static void patch_bytes(const char *path, size_t at, const void *b, size_t n) {
    FILE *f = fopen(path, "r+b");
    if (!f) return;
    fseek(f, (long)at, SEEK_SET);
    fwrite(b, 1, n, f);
    fclose(f);
}

static void truncate_copy(const char *from, const char *to, size_t n) {
    size_t len;
    uint8_t *b = slurp(from, &len);
    if (b) spit(to, b, n < len ? n : len);
    free(b);
}

static void test_bad_safetensors(void) {
    EXPECT_FAIL(qd_model_load(st_mutant("st-overlap", mut_overlap), err_), "model.safetensors",
                "overlap", "model.layers.0.input_layernorm.weight");
    EXPECT_FAIL(qd_model_load(st_mutant("st-range", mut_out_of_range), err_),
                "model.norm.weight", "out of range");
    EXPECT_FAIL(qd_model_load(st_mutant("st-huge", mut_huge_offset), err_), "model.norm.weight",
                "data_offsets");
    EXPECT_FAIL(qd_model_load(st_mutant("st-rev", mut_reversed), err_), "model.norm.weight",
                "out of range");
    EXPECT_FAIL(qd_model_load(st_mutant("st-shape", mut_shape), err_),
                "model.embed_tokens.weight", "need 133120 bytes but data_offsets span 131072");
    EXPECT_FAIL(qd_model_load(st_mutant("st-shape2", mut_shape_overflow), err_),
                "model.norm.weight", "need more than");
    EXPECT_FAIL(qd_model_load(st_mutant("st-dtype", mut_dtype), err_), "model.norm.weight",
                "unknown dtype 'F33'");
    EXPECT_FAIL(qd_model_load(st_mutant("st-i32", mut_dtype_i8), err_), "model.norm.weight",
                "unsupported dtype I32");
    EXPECT_FAIL(qd_model_load(st_mutant("st-missing", mut_missing), err_),
                "missing tensor model.norm.weight");
    EXPECT_FAIL(qd_model_load(st_mutant("st-notobj", mut_not_object), err_),
                "model.norm.weight", "not an object");
    EXPECT_FAIL(qd_model_load(st_mutant("st-meta", mut_meta_nonstring), err_), "__metadata__",
                "format");
    EXPECT_FAIL(qd_model_load(st_mutant("st-dup", mut_dup), err_), "duplicate",
                "model.norm.weight");
    /* raw byte damage */
    char p[512];
    snprintf(p, sizeof p, "%s", tmp("st-hdr/model.safetensors"));
    mkdir(tmp("st-hdr"), 0755);
    copy_file(fixture(HF260 "/config.json"), tmp("st-hdr/config.json"));
    copy_file(fixture(HF260 "/model.safetensors"), p);
    patch_u64(p, 0, 2000000);
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "model.safetensors", "header length 2000000",
                "past end of file");
    patch_u64(p, 0, (uint64_t)1 << 62);
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "model.safetensors", "exceeds limit");
    copy_file(fixture(HF260 "/model.safetensors"), p);
    patch_bytes(p, 8, "[", 1);
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "model.safetensors", "bad magic");
    truncate_copy(fixture(HF260 "/model.safetensors"), p, 5);
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "model.safetensors", "truncated");
    truncate_copy(fixture(HF260 "/model.safetensors"), p, 1000);
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "model.safetensors", "past end of file");
    truncate_copy(fixture(HF260 "/model.safetensors"), p, 1045088 - 4);
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "model.safetensors", "out of range");
    /* NaN and Inf in the data */
    copy_file(fixture(HF260 "/model.safetensors"), p);
    size_t len;
    uint8_t *b = slurp(p, &len);
    uint64_t hl = 0;
    for (int i = 7; b && i >= 0; i--) hl = hl << 8 | b[i];
    free(b);
    float bad = NAN;
    patch_bytes(p, 8 + (size_t)hl + 131072 + 4 * 3, &bad, 4); /* input_layernorm of layer 0 */
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "model.safetensors",
                "model.layers.0.input_layernorm.weight", "element 3 is NaN");
    bad = -INFINITY;
    patch_bytes(p, 8 + (size_t)hl + 131072 + 4 * 3, &bad, 4);
    EXPECT_FAIL(qd_model_load(tmp("st-hdr"), err_), "element 3 is Inf");
}

/* ---- bad-input catalogue: GGUF ---- */

/* Offset of the tensor-info record of name (its u64 length prefix) in a GGUF buffer. */
static size_t find_tinfo(const uint8_t *b, size_t len, const char *name) {
    uint8_t key[128];
    size_t n = strlen(name);
    for (int i = 0; i < 8; i++) key[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(key + 8, name, n);
    const uint8_t *p = memmem(b, len, key, n + 8);
    return p ? (size_t)(p - b) : 0;
}

/* Writes a copy of the stories GGUF, with a u32 or u64 patched at a tensor's info field:
 * field 0 = n_dims, 1 = ne[0], 2 = ne[1], 3 = type, 4 = offset (2-D tensors). */
static const char *gguf_patch_tensor(const char *out, const char *tensor, int field, uint64_t v) {
    size_t len;
    uint8_t *b = slurp(fixture(GGUF260), &len);
    const char *p = tmp("%s", out);
    if (!b) return p;
    size_t at = find_tinfo(b, len, tensor);
    CHECK(at != 0, "tensor %s not found in fixture", tensor);
    at += 8 + strlen(tensor);
    static const size_t off[] = {0, 4, 12, 20, 24}, width[] = {4, 8, 8, 4, 8};
    for (size_t i = 0; i < width[field]; i++) b[at + off[field] + i] = (uint8_t)(v >> (8 * i));
    spit(p, b, len);
    free(b);
    return p;
}

static void test_bad_gguf(void) {
    char p[512];
    snprintf(p, sizeof p, "%s", tmp("bad.gguf"));
    size_t len;
    uint8_t *orig = slurp(fixture(GGUF260), &len);
    if (!orig) return;
#define FRESH() spit(p, orig, len)
    FRESH();
    patch_bytes(p, 0, "GGUX", 4);
    EXPECT_FAIL(qd_load_gguf(p, 0, err_), "bad.gguf", "bad magic");
    uint8_t v1[4] = {1, 0, 0, 0}, v4[4] = {4, 0, 0, 0};
    FRESH();
    patch_bytes(p, 4, v1, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.gguf", "unsupported GGUF version 1");
    patch_bytes(p, 4, v4, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "unsupported GGUF version 4");
    FRESH();
    patch_u64(p, 8, (uint64_t)1 << 40);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.gguf", "tensor count 1099511627776 exceeds limit");
    FRESH();
    patch_u64(p, 8, 60000);
    EXPECT_FAIL(qd_model_load(p, err_), "tensor count 60000", "past end of file");
    FRESH();
    patch_u64(p, 16, UINT64_MAX);
    EXPECT_FAIL(qd_model_load(p, err_), "metadata count 18446744073709551615 exceeds limit");
    FRESH();
    patch_u64(p, 24, UINT64_MAX); /* first key's length */
    EXPECT_FAIL(qd_model_load(p, err_), "bad.gguf", "key of metadata entry 0",
                "string length 18446744073709551615 exceeds limit");
    FRESH();
    patch_u64(p, 24, 1000000); /* under the key limit? no: keys are <= 1024 */
    EXPECT_FAIL(qd_model_load(p, err_), "string length 1000000 exceeds limit");
    FRESH();
    patch_u64(p, 61, (uint64_t)1 << 60); /* tokenizer.ggml.tokens array length */
    EXPECT_FAIL(qd_model_load(p, err_), "tokenizer.ggml.tokens",
                "array length 1152921504606846976 exceeds limit");
    FRESH();
    patch_u64(p, 61, 50000000);
    EXPECT_FAIL(qd_model_load(p, err_), "tokenizer.ggml.tokens", "array length 50000000",
                "past end of file");
    FRESH();
    patch_u64(p, 69, (uint64_t)1 << 40); /* first token's string length */
    EXPECT_FAIL(qd_model_load(p, err_), "tokenizer.ggml.tokens", "string length 1099511627776");
    FRESH();
    patch_u64(p, 69, 3000000); /* under the string limit, past the end */
    EXPECT_FAIL(qd_model_load(p, err_), "truncated", "tokenizer.ggml.tokens");
    /* truncations at many points: always an error, never a crash */
    size_t cuts[] = {0, 3, 7, 20, 30, 100, 6000, 14000, 14160, 14176, 600000, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        truncate_copy(fixture(GGUF260), p, cuts[i]);
        EXPECT_FAIL(qd_model_load(p, err_), "bad.gguf");
    }
    truncate_copy(fixture(GGUF260), p, 14000);
    EXPECT_FAIL(qd_model_load(p, err_), "truncated");
    truncate_copy(fixture(GGUF260), p, len - 1);
    EXPECT_FAIL(qd_model_load(p, err_), "blk.4.ffn_norm.weight", "out of range");
    /* tensor info damage */
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t1.gguf", "token_embd.weight", 3, 99), err_),
                "token_embd.weight", "unknown tensor type 99");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t2.gguf", "token_embd.weight", 3, 20), err_),
                "t2.gguf", "token_embd.weight", "unsupported type IQ4_NL");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t2b.gguf", "blk.1.attn_q.weight", 3, 39), err_),
                "t2b.gguf", "blk.1.attn_q.weight", "unsupported type MXFP4");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t2c.gguf", "blk.0.ffn_up.weight", 3, 16), err_),
                "blk.0.ffn_up.weight", "IQ2_XXS block 256");
    /* F32 bytes read as Q4_0 blocks: the block scales decode to NaN here, and the loader
     * names it rather than passing NaN weights on */
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t2d.gguf", "token_embd.weight", 3, 2), err_),
                "token_embd.weight", "is NaN", "Q4_0");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t3.gguf", "blk.2.ffn_up.weight", 4, 1 << 30),
                              err_),
                "blk.2.ffn_up.weight", "out of range");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t4.gguf", "blk.0.attn_k.weight", 4, 262400),
                              err_),
                "overlap", "blk.0.attn_k.weight");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t5.gguf", "blk.0.attn_q.weight", 4, 262401),
                              err_),
                "blk.0.attn_q.weight", "alignment");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t6.gguf", "blk.0.attn_q.weight", 1, 32), err_),
                "blk.0.attn_q.weight", "shape [64, 32], expected [64, 64]");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t7.gguf", "blk.0.attn_q.weight", 0, 9), err_),
                "blk.0.attn_q.weight", "n_dims = 9");
    EXPECT_FAIL(qd_model_load(gguf_patch_tensor("t8.gguf", "blk.0.attn_q.weight", 1,
                                                (uint64_t)1 << 62),
                              err_),
                "blk.0.attn_q.weight", "dimension 0");
    /* missing tensor: rename output_norm */
    FRESH();
    size_t at = find_tinfo(orig, len, "output_norm.weight");
    patch_bytes(p, at + 8, "outpux", 6);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.gguf", "missing tensor output_norm.weight");
    /* unsupported architecture */
    FRESH();
    const uint8_t *a = memmem(orig, len, "general.architecture", 20);
    CHECK(a != NULL, "arch key");
    if (a) patch_bytes(p, (size_t)(a - orig) + 20 + 4 + 8, "bloom", 5);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.gguf", "unsupported architecture 'bloom'",
                "general.architecture");
    /* NaN / Inf weight: blk.3.ffn_down starts at data offset 901120 */
    size_t data = 14176;
    float bad = NAN;
    FRESH();
    patch_bytes(p, data + 901120 + 4 * 10, &bad, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.gguf", "blk.3.ffn_down.weight", "element 10 is NaN");
    bad = INFINITY;
    FRESH();
    patch_bytes(p, data + 4 * 5, &bad, 4); /* token_embd */
    EXPECT_FAIL(qd_model_load(p, err_), "token_embd.weight", "element 5 is Inf");
    /* a metadata value of the wrong type / range */
    FRESH();
    const uint8_t *k = memmem(orig, len, "llama.block_count", 17);
    uint32_t nl = 100000;
    if (k) patch_bytes(p, (size_t)(k - orig) + 17 + 4, &nl, 4); /* the u32 value */
    EXPECT_FAIL(qd_model_load(p, err_), "llama.block_count", "out of range");
    free(orig);
#undef FRESH
}

/* ---- Hugging Face directories as transformers writes them ---- */

/* Rewrites one tensor name in a safetensors header in place: the new name, padded with
 * spaces after its closing quote (JSON whitespace), so every offset stays valid. */
static void rename_st_tensor(const char *path, const char *from, const char *to) {
    size_t len;
    uint8_t *b = slurp(path, &len);
    if (!b) return;
    char q_from[128], q_to[128];
    snprintf(q_from, sizeof q_from, "\"%s\"", from);
    int n = snprintf(q_to, sizeof q_to, "\"%s\"", to);
    size_t hl = (size_t)b[0] | (size_t)b[1] << 8 | (size_t)b[2] << 16 | (size_t)b[3] << 24;
    char *h = memmem(b + 8, hl, q_from, strlen(q_from));
    CHECK(h && (size_t)n <= strlen(q_from), "rename %s", from);
    if (h && (size_t)n <= strlen(q_from)) {
        memset(h, ' ', strlen(q_from));
        memcpy(h, q_to, (size_t)n);
        spit(path, b, len);
    }
    free(b);
}

static double logits_diff(const qd_model *a, const qd_model *b) {
    int tok[24], V = a->cfg.vocab_size;
    for (int i = 0; i < 24; i++) tok[i] = (i * 37 + 1) % V;
    float *la = malloc(sizeof(float) * 24 * V), *lb = malloc(sizeof(float) * 24 * V);
    qd_err e = {{0}};
    double d = INFINITY;
    if (qd_forward(a, tok, 1, 24, la, &e) == 0 && qd_forward(b, tok, 1, 24, lb, &e) == 0) {
        double num = 0, den = 0;
        for (int i = 0; i < 24 * V; i++) num += (la[i] - lb[i]) * (double)(la[i] - lb[i]),
                                         den += la[i] * (double)la[i];
        d = sqrt(num / den);
    }
    free(la);
    free(lb);
    return d;
}

static void untie(cJSON *j) {
    cJSON_ReplaceItemInObject(j, "tie_word_embeddings", cJSON_CreateBool(0));
}

static void test_hf_transformers_forms(void) {
    qd_model *ref = load_ok(fixture(HF260));
    if (!ref) return;
    /* tied, with the shared matrix saved as lm_head.weight only (transformers keeps whichever
     * module it saw first) */
    mkdir(tmp("tiedhead"), 0755);
    copy_file(fixture(HF260 "/config.json"), tmp("tiedhead/config.json"));
    copy_file(fixture(HF260 "/model.safetensors"), tmp("tiedhead/model.safetensors"));
    rename_st_tensor(tmp("tiedhead/model.safetensors"), "model.embed_tokens.weight",
                     "lm_head.weight");
    qd_model *m = load_ok(tmp("tiedhead"));
    if (m) {
        CHECK(m->cfg.tied_embeddings && m->lm_head == m->tok_emb, "tied");
        CHECK(max_diff(m->tok_emb, ref->tok_emb, (size_t)512 * 64) == 0, "embeddings");
        double d = logits_diff(ref, m);
        CHECK(d < 1e-6, "logits of the lm_head-named directory vs the fixture: rel %g", d);
    }
    qd_model_free(m);
    /* the same file with tie_word_embeddings false: the embeddings are missing */
    EXPECT_FAIL(qd_model_load(hf_with_config("tiedhead", untie), err_), "tiedhead",
                "missing tensor model.embed_tokens.weight");

    /* F16 and BF16 shards behind an index; a listed shard that is missing is named */
    for (int k = 0; k < 2; k++) {
        const char *dt = k ? "BF16" : "F16";
        const char *dir = tmp("shards-%s", dt);
        save_ok(ref, dir, dt, 300000); /* 520 KB of 16-bit weights: two shards */
        m = load_ok(dir);
        CHECK(m && strcmp(m->tinfo[0].dtype, dt) == 0, "%s shards", dt);
        if (m) CHECK(logits_diff(ref, m) < (k ? 2e-2 : 2e-3), "%s logits", dt);
        qd_model_free(m);
        char shard[600];
        snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
        CHECK(access(shard, F_OK) == 0, "expected two shards");
        unlink(shard);
        EXPECT_FAIL(qd_model_load(dir, err_), "model.safetensors.index.json",
                    "model-00002-of-00002.safetensors", "missing", "weight_map['model.layers.");
    }

    /* an explicit head_dim that is not hidden_size / num_attention_heads */
    qd_config c = synth_config(32, 48, 2, 4, 2, 50, 64);
    c.head_dim = 16;
    qd_err e = {{0}};
    qd_model *h = synth_model(&c, 5, &e);
    CHECK(h != NULL, "%s", e.msg);
    if (h) {
        save_ok(h, tmp("headdim"), "F32", 0);
        m = load_ok(tmp("headdim"));
        CHECK(m && m->cfg.head_dim == 16 && m->cfg.dim == 32, "head_dim 16 with dim 32");
        if (m) CHECK(logits_diff(h, m) == 0, "head_dim model logits");
        qd_model_free(m);
    }
    qd_model_free(h);
    qd_model_free(ref);
}

/* ---- RoPE scaling ---- */

/* transformers' llama3 rule, written out here: wavelengths above orig/low slowed by factor,
 * below orig/high kept, and between them (1 - s) f / factor + s f, s = (orig/wl - low) /
 * (high - low). */
static double llama3_freq(double theta, int hd, int i, double factor, double low, double high,
                          double orig) {
    double f = 1.0 / pow(theta, 2.0 * i / hd), wl = 2 * M_PI / f;
    if (wl < orig / high) return f;
    if (wl > orig / low) return f / factor;
    double s = (orig / wl - low) / (high - low);
    return (1 - s) * f / factor + s * f;
}

static void rope_l3_small(cJSON *j) { /* orig 64 puts stories260K's 4 pairs in all 3 bands */
    cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
    cJSON_AddStringToObject(rs, "rope_type", "llama3");
    cJSON_AddNumberToObject(rs, "factor", 8.0);
    cJSON_AddNumberToObject(rs, "low_freq_factor", 1.0);
    cJSON_AddNumberToObject(rs, "high_freq_factor", 4.0);
    cJSON_AddNumberToObject(rs, "original_max_position_embeddings", 64);
}
static void rope_linear(cJSON *j) {
    cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
    cJSON_AddStringToObject(rs, "type", "linear"); /* the older key */
    cJSON_AddNumberToObject(rs, "factor", 4.0);
}

/* The fixture GGUF with general.architecture (and the llama.* keys) renamed to arch when
 * given, extra metadata added by extra, and optionally a rope_freqs.weight tensor. */
static const char *gguf_variant(const char *name, const char *arch, void (*extra)(gguf_build *),
                                const float *freqs, int n_freqs) {
    qd_err e = {{0}};
    qd_gguf *src = qd_gguf_open(fixture(GGUF260), &e);
    CHECK(src != NULL, "%s", e.msg);
    const char *p = tmp("%s", name);
    if (!src) return p;
    gguf_build g = {0};
    for (uint64_t i = 0; i < src->n_kv; i++) {
        const qd_gguf_kv *kv = &src->kv[i];
        if (arch && strcmp(kv->key, "general.architecture") == 0) {
            gb_kv_str(&g, kv->key, arch);
        } else if (arch && strncmp(kv->key, "llama.", 6) == 0) {
            char k[200];
            snprintf(k, sizeof k, "%s.%s", arch, kv->key + 6);
            qd_gguf_kv c2 = *kv;
            c2.key = k;
            gb_copy_kv(&g, &c2);
        } else {
            gb_copy_kv(&g, kv);
        }
    }
    if (extra) extra(&g);
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const qd_gguf_tensor *t = &src->tensors[i];
        gb_tensor(&g, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes);
    }
    if (freqs) {
        uint64_t ne[1] = {(uint64_t)n_freqs};
        gb_tensor(&g, "rope_freqs.weight", QD_GGML_F32, 1, ne, freqs, (size_t)n_freqs * 4);
    }
    CHECK(gb_write(&g, p) == 0, "write %s", p);
    qd_gguf_close(src);
    return p;
}

static void kv_orig64(gguf_build *g) { gb_kv_u32(g, "llama.rope.scaling.original_context_length", 64); }
static void kv_linear4(gguf_build *g) {
    gb_kv_str(g, "llama.rope.scaling.type", "linear");
    gb_kv_f32(g, "llama.rope.scaling.factor", 4.0f);
}
static void kv_yarn(gguf_build *g) {
    gb_kv_str(g, "llama.rope.scaling.type", "yarn");
    gb_kv_f32(g, "llama.rope.scaling.factor", 4.0f);
}
static void kv_linear_nofactor(gguf_build *g) { gb_kv_str(g, "llama.rope.scaling.type", "linear"); }

static void test_rope_scaling(void) {
    qd_model *plain = load_ok(fixture(HF260));
    qd_model *h3 = load_ok(hf_with_config("rope-l3", rope_l3_small));
    qd_model *hl = load_ok(hf_with_config("rope-lin", rope_linear));
    qd_model *g = NULL;
    if (!plain || !h3 || !hl) goto out;
    const qd_config *c = &h3->cfg;
    CHECK(c->rope_scaling == QD_ROPE_LLAMA3 && c->rope_factor == 8 &&
              c->rope_low_freq_factor == 1 && c->rope_high_freq_factor == 4 &&
              c->rope_orig_ctx == 64,
          "llama3 fields");
    for (int i = 0; i < 4; i++) {
        double want = llama3_freq(10000, 8, i, 8, 1, 4, 64);
        CHECK(fabs(qd_rope_inv_freq(c, i) / want - 1) < 1e-12, "pair %d: %g vs %g", i,
              qd_rope_inv_freq(c, i), want);
        CHECK(fabs(qd_rope_inv_freq(&hl->cfg, i) * 4 / qd_rope_inv_freq(&plain->cfg, i) - 1) < 1e-12,
              "linear pair %d", i);
    }
    /* all three bands are hit: pair 0 kept, pair 1 blended, pairs 2-3 divided by 8 */
    double r1 = qd_rope_inv_freq(c, 1) / qd_rope_inv_freq(&plain->cfg, 1);
    CHECK(qd_rope_inv_freq(c, 0) == qd_rope_inv_freq(&plain->cfg, 0) && r1 < 1 && r1 > 1.0 / 8 &&
              fabs(qd_rope_inv_freq(c, 3) * 8 / qd_rope_inv_freq(&plain->cfg, 3) - 1) < 1e-12,
          "bands (pair 1 ratio %g)", r1);
    double d3 = logits_diff(plain, h3), dl = logits_diff(plain, hl);
    CHECK(d3 > 1e-3 && dl > 1e-3, "scaling changes the logits (llama3 %g, linear %g)", d3, dl);
    /* written back by qd_save_hf, read again */
    save_ok(h3, tmp("rope-l3-saved"), "F32", 0);
    qd_model *r = load_ok(tmp("rope-l3-saved"));
    CHECK(r && r->cfg.rope_scaling == QD_ROPE_LLAMA3 && r->cfg.rope_orig_ctx == 64 &&
              r->cfg.rope_factor == 8 && logits_diff(h3, r) == 0,
          "llama3 round trip");
    qd_model_free(r);
    save_ok(hl, tmp("rope-lin-saved"), "F32", 0);
    r = load_ok(tmp("rope-lin-saved"));
    CHECK(r && r->cfg.rope_scaling == QD_ROPE_LINEAR && r->cfg.rope_factor == 4, "linear rt");
    qd_model_free(r);

    /* GGUF: llama.cpp's rope_freqs tensor (frequency divisors) for the same llama3 parameters
     * gives the HF directory's logits, and the parameters are recovered */
    float fr[4];
    for (int i = 0; i < 4; i++)
        fr[i] = (float)(1.0 / pow(10000, 2.0 * i / 8) / llama3_freq(10000, 8, i, 8, 1, 4, 64));
    g = load_ok(gguf_variant("l3.gguf", NULL, kv_orig64, fr, 4));
    if (g) {
        CHECK(g->cfg.rope_scaling == QD_ROPE_LLAMA3 && g->cfg.rope_factor == 8 &&
                  g->cfg.rope_orig_ctx == 64 && fabs(g->cfg.rope_low_freq_factor - 1) < 1e-3 &&
                  fabs(g->cfg.rope_high_freq_factor - 4) < 1e-3,
              "recovered llama3 %g %g %g %d", (double)g->cfg.rope_factor,
              (double)g->cfg.rope_low_freq_factor, (double)g->cfg.rope_high_freq_factor,
              g->cfg.rope_orig_ctx);
        double d = logits_diff(h3, g);
        CHECK(d < 1e-4, "GGUF rope_freqs vs HF llama3 logits: rel %g", d);
    }
    qd_model_free(g);
    /* without the original context the rule is the same up to scale: same frequencies */
    g = load_ok(gguf_variant("l3-noorig.gguf", NULL, NULL, fr, 4));
    if (g) {
        CHECK(g->cfg.rope_orig_ctx == 8192, "default original context %d", g->cfg.rope_orig_ctx);
        for (int i = 0; i < 4; i++)
            CHECK(fabs(qd_rope_inv_freq(&g->cfg, i) / qd_rope_inv_freq(c, i) - 1) < 1e-5,
                  "pair %d", i);
    }
    qd_model_free(g);
    g = load_ok(gguf_variant("lin.gguf", NULL, kv_linear4, NULL, 0));
    if (g) {
        CHECK(g->cfg.rope_scaling == QD_ROPE_LINEAR && g->cfg.rope_factor == 4, "GGUF linear");
        CHECK(logits_diff(hl, g) < 1e-4, "GGUF linear vs HF linear logits");
    }
    qd_model_free(g);
    g = load_ok(gguf_variant("mistral.gguf", "mistral", NULL, NULL, 0));
    CHECK(g && logits_diff(plain, g) < 1e-4, "general.architecture mistral");
    qd_model_free(g);
    g = NULL;
    EXPECT_FAIL(qd_model_load(gguf_variant("yarn.gguf", NULL, kv_yarn, NULL, 0), err_),
                "yarn.gguf", "llama.rope.scaling.type", "'yarn'");
    EXPECT_FAIL(qd_model_load(gguf_variant("linnof.gguf", NULL, kv_linear_nofactor, NULL, 0),
                              err_),
                "linnof.gguf", "llama.rope.scaling.factor");
    float odd[4] = {1, 3, 2, 8};
    EXPECT_FAIL(qd_model_load(gguf_variant("odd.gguf", NULL, NULL, odd, 4), err_), "odd.gguf",
                "rope_freqs.weight", "do not follow llama3");
    float shortf[3] = {1, 2, 8};
    EXPECT_FAIL(qd_model_load(gguf_variant("short.gguf", NULL, NULL, shortf, 3), err_),
                "rope_freqs.weight", "[4]");
    EXPECT_FAIL(qd_model_load(gguf_variant("phi3.gguf", "phi3", NULL, NULL, 0), err_),
                "phi3.gguf", "general.architecture", "phi3");
out:
    qd_model_free(plain);
    qd_model_free(h3);
    qd_model_free(hl);
}

/* ---- a synthetic GGUF with every metadata type ---- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

static void test_gguf_all_types(void) {
    buf b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, 2); /* v2 */
    put_u64(&b, 1); /* tensors */
    put_u64(&b, 15); /* kvs */
    uint8_t u8 = 200; int8_t i8 = -100; uint16_t u16 = 60000; int16_t i16 = -30000;
    int32_t i32 = -2000000000; float f32 = 1.5f; uint8_t bl = 1; uint64_t u64 = UINT64_MAX;
    int64_t i64 = INT64_MIN; double f64 = -0.25;
    put_str(&b, "t.u8"); put_u32(&b, QD_GGUF_UINT8); put(&b, &u8, 1);
    put_str(&b, "t.i8"); put_u32(&b, QD_GGUF_INT8); put(&b, &i8, 1);
    put_str(&b, "t.u16"); put_u32(&b, QD_GGUF_UINT16); put(&b, &u16, 2);
    put_str(&b, "t.i16"); put_u32(&b, QD_GGUF_INT16); put(&b, &i16, 2);
    put_str(&b, "t.u32"); put_u32(&b, QD_GGUF_UINT32); put_u32(&b, 4000000000u);
    put_str(&b, "t.i32"); put_u32(&b, QD_GGUF_INT32); put(&b, &i32, 4);
    put_str(&b, "t.f32"); put_u32(&b, QD_GGUF_FLOAT32); put(&b, &f32, 4);
    put_str(&b, "t.bool"); put_u32(&b, QD_GGUF_BOOL); put(&b, &bl, 1);
    put_str(&b, "t.str"); put_u32(&b, QD_GGUF_STRING); put_str(&b, "héllo");
    put_str(&b, "t.u64"); put_u32(&b, QD_GGUF_UINT64); put_u64(&b, u64);
    put_str(&b, "t.i64"); put_u32(&b, QD_GGUF_INT64); put(&b, &i64, 8);
    put_str(&b, "t.f64"); put_u32(&b, QD_GGUF_FLOAT64); put(&b, &f64, 8);
    put_str(&b, "t.arr_i16"); put_u32(&b, QD_GGUF_ARRAY); put_u32(&b, QD_GGUF_INT16);
    put_u64(&b, 3);
    int16_t a16[3] = {1, -2, 3};
    put(&b, a16, 6);
    put_str(&b, "t.arr_str"); put_u32(&b, QD_GGUF_ARRAY); put_u32(&b, QD_GGUF_STRING);
    put_u64(&b, 2); put_str(&b, "a"); put_str(&b, "");
    put_str(&b, "t.arr_arr"); put_u32(&b, QD_GGUF_ARRAY); put_u32(&b, QD_GGUF_ARRAY);
    put_u64(&b, 2);
    put_u32(&b, QD_GGUF_UINT8); put_u64(&b, 2); put(&b, "\x01\x02", 2);
    put_u32(&b, QD_GGUF_STRING); put_u64(&b, 1); put_str(&b, "x");
    /* one F32 tensor [3] at offset 0 */
    put_str(&b, "w"); put_u32(&b, 1); put_u64(&b, 3); put_u32(&b, QD_GGML_F32); put_u64(&b, 0);
    while (b.n % 32) put(&b, "", 1);
    float w[3] = {1, 2, 3};
    put(&b, w, 12);
    char p[512];
    snprintf(p, sizeof p, "%s", tmp("types.gguf"));
    spit(p, b.p, b.n);
    qd_err e = {{0}};
    qd_gguf *g = qd_gguf_open(p, &e);
    CHECK(g != NULL, "%s", e.msg);
    if (g) {
        CHECK(g->version == 2 && g->n_kv == 15 && g->n_tensors == 1, "counts");
        const qd_gguf_kv *kv;
        int64_t iv;
        double dv;
        CHECK((kv = qd_gguf_find(g, "t.u8")) && kv->u64 == 200, "u8");
        CHECK((kv = qd_gguf_find(g, "t.i8")) && kv->i64 == -100, "i8");
        CHECK((kv = qd_gguf_find(g, "t.u16")) && kv->u64 == 60000, "u16");
        CHECK((kv = qd_gguf_find(g, "t.i16")) && kv->i64 == -30000, "i16");
        CHECK((kv = qd_gguf_find(g, "t.u32")) && kv->u64 == 4000000000u, "u32");
        CHECK((kv = qd_gguf_find(g, "t.i32")) && kv->i64 == -2000000000, "i32");
        CHECK((kv = qd_gguf_find(g, "t.f32")) && kv->f64 == 1.5, "f32");
        CHECK((kv = qd_gguf_find(g, "t.bool")) && kv->u64 == 1, "bool");
        CHECK((kv = qd_gguf_find(g, "t.str")) && strcmp(kv->str, "héllo") == 0, "str");
        CHECK((kv = qd_gguf_find(g, "t.u64")) && kv->u64 == UINT64_MAX, "u64");
        CHECK((kv = qd_gguf_find(g, "t.i64")) && kv->i64 == INT64_MIN, "i64");
        CHECK((kv = qd_gguf_find(g, "t.f64")) && kv->f64 == -0.25, "f64");
        CHECK((kv = qd_gguf_find(g, "t.arr_i16")) && kv->arr_n == 3 &&
                  kv->arr_type == QD_GGUF_INT16 && memcmp(kv->arr, a16, 6) == 0,
              "arr i16");
        CHECK((kv = qd_gguf_find(g, "t.arr_str")) && kv->arr_n == 2 && kv->arr_str_len[0] == 1 &&
                  kv->arr_str[0][0] == 'a' && kv->arr_str_len[1] == 0,
              "arr str");
        CHECK((kv = qd_gguf_find(g, "t.arr_arr")) && kv->arr_n == 2 &&
                  kv->arr_type == QD_GGUF_ARRAY,
              "arr arr");
        CHECK(qd_gguf_get_int(g, "t.u64", 0, 10, &iv, &e) == QD_ERR && strstr(e.msg, "t.u64"),
              "u64 beyond int64 refused: %s", e.msg);
        CHECK(qd_gguf_get_int(g, "t.i16", -40000, 0, &iv, &e) == 0 && iv == -30000, "get_int");
        CHECK(qd_gguf_get_int(g, "t.str", 0, 1, &iv, &e) == QD_ERR, "string is not an int");
        CHECK(qd_gguf_get_int(g, "nope", 0, 1, &iv, &e) == 1, "absent");
        CHECK(qd_gguf_get_float(g, "t.f32", &dv, &e) == 0 && dv == 1.5, "get_float");
        const qd_gguf_tensor *t = qd_gguf_find_tensor(g, "w");
        float got[3];
        if (t) memcpy(got, t->data, 12);
        CHECK(t && t->nbytes == 12 && g->data_start % 32 == 0 && got[2] == 3.0f, "tensor");
        qd_gguf_close(g);
    }
    /* not a model: a clear error, not a crash */
    EXPECT_FAIL(qd_load_gguf(p, 0, err_), "types.gguf", "missing general.architecture");
    /* nesting deeper than the limit */
    buf d = {0};
    put(&d, "GGUF", 4); put_u32(&d, 3); put_u64(&d, 0); put_u64(&d, 1);
    put_str(&d, "deep"); put_u32(&d, QD_GGUF_ARRAY);
    for (int i = 0; i < 10; i++) { put_u32(&d, QD_GGUF_ARRAY); put_u64(&d, 1); }
    put_u32(&d, QD_GGUF_UINT8); put_u64(&d, 0);
    spit(p, d.p, d.n);
    EXPECT_FAIL(qd_gguf_open(p, err_), "nested deeper");
    /* unknown value type */
    d.n = 0;
    put(&d, "GGUF", 4); put_u32(&d, 3); put_u64(&d, 0); put_u64(&d, 1);
    put_str(&d, "odd"); put_u32(&d, 13); put_u64(&d, 0);
    spit(p, d.p, d.n);
    EXPECT_FAIL(qd_gguf_open(p, err_), "odd", "unknown value type 13");
    free(d.p);
    free(b.p);
}

/* ---- bad-input catalogue: llama2.c ---- */

static void test_bad_llama2c(void) {
    size_t len;
    uint8_t *b = slurp(fixture(L2C260), &len);
    if (!b) return;
    char p[512];
    snprintf(p, sizeof p, "%s", tmp("bad.bin"));
    spit(p, b, len - 1);
    EXPECT_FAIL(qd_load_llama2c(p, 0, err_), "bad.bin", "1056539 bytes", "implies 1056540");
    uint8_t *big = malloc(len + 4);
    memcpy(big, b, len);
    memset(big + len, 0, 4);
    spit(p, big, len + 4);
    free(big);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.bin", "implies 1056540");
    spit(p, b, 10);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.bin", "truncated");
    spit(p, b, 0);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.bin", "truncated");
    int32_t h[7];
    memcpy(h, b, 28);
    int32_t z = 0, huge = 0x7fffffff, neg = -5;
    spit(p, b, len);
    patch_bytes(p, 12, &z, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.bin", "n_heads = 0");
    spit(p, b, len);
    patch_bytes(p, 0, &huge, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.bin", "dim = 2147483647 out of range");
    spit(p, b, len);
    patch_bytes(p, 16, &neg, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "n_kv_heads = -5");
    /* vocab_size < 0 declares a separate classifier, which the file lacks */
    int32_t nv = -512;
    spit(p, b, len);
    patch_bytes(p, 20, &nv, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "implies 1187612");
    /* ... and with one appended it loads untied */
    uint8_t *cls = malloc(len + 512 * 64 * 4);
    memcpy(cls, b, len);
    memcpy(cls + 20, &nv, 4);
    for (size_t i = 0; i < 512 * 64; i++) {
        float v = (float)i * 1e-4f;
        memcpy(cls + len + 4 * i, &v, 4);
    }
    spit(p, cls, len + 512 * 64 * 4);
    free(cls);
    qd_model *m = load_ok(p);
    CHECK(m && !m->cfg.tied_embeddings && m->lm_head[100] == 100 * 1e-4f, "separate wcls");
    qd_model_free(m);
    /* NaN in wq of layer 1 */
    float bad = NAN;
    spit(p, b, len);
    size_t wq = 28 + 4 * (512 * 64 + 5 * 64 + 64 * 64 + 7);
    patch_bytes(p, wq, &bad, 4);
    EXPECT_FAIL(qd_model_load(p, err_), "bad.bin", "wq[layer 1]", "element 7 is NaN");
    free(b);
}

/* Random damage to the header bytes of each format: every load ends in a model or an error,
 * never a crash or a sanitizer report (this binary runs under ASan/UBSan in make test-asan). */
static void test_random_header_damage(void) {
    static const struct { const char *src, *dst; size_t span; } F[] = {
        {GGUF260, "fz/m.gguf", 14176},
        {HF260 "/model.safetensors", "fz/model.safetensors", 4960},
        {L2C260, "fz/m.bin", 28},
    };
    mkdir(tmp("fz"), 0755);
    copy_file(fixture(HF260 "/config.json"), tmp("fz/config.json"));
    uint64_t rng = 12345;
    int loaded = 0, failed = 0;
    for (int f = 0; f < 3; f++) {
        size_t len;
        uint8_t *orig = slurp(fixture(F[f].src), &len);
        if (!orig) continue;
        uint8_t *b = malloc(len);
        char p[512];
        snprintf(p, sizeof p, "%s", tmp("%s", F[f].dst));
        for (int it = 0; it < 150; it++) {
            memcpy(b, orig, len);
            int flips = 1 + (int)(rng % 4);
            for (int k = 0; k < flips; k++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)(rng >> 33) % F[f].span;
                uint8_t v = (uint8_t)(rng >> 25);
                b[at] = (rng >> 60) & 1 ? v : (uint8_t)(b[at] ^ (1u << (v & 7)));
            }
            spit(p, b, len);
            qd_err e = {{0}};
            qd_model *m = f == 1 ? qd_model_load(tmp("fz"), &e) : qd_model_load(p, &e);
            if (m) loaded++;
            else failed++;
            if (!m && getenv("QD_TEST_VERBOSE") && it % 10 == 0) fprintf(stderr, "  fz: %s\n", e.msg);
            CHECK(m || e.msg[0], "failure without a message");
            qd_model_free(m);
        }
        free(b);
        free(orig);
    }
    CHECK(loaded + failed == 450, "ran");
    if (getenv("QD_TEST_VERBOSE")) fprintf(stderr, "  %d loaded, %d refused\n", loaded, failed);
}

static void test_config_validate(void) {
    qd_model *m = load_ok(fixture(HF260));
    if (!m) return;
    qd_err e = {{0}};
    CHECK(qd_config_validate(&m->cfg, "x", &e) == QD_OK, "%s", e.msg);
    qd_config c = m->cfg;
    c.n_kv_heads = 3;
    CHECK(qd_config_validate(&c, "x", &e) == QD_ERR && strstr(e.msg, "multiple"), "%s", e.msg);
    c = m->cfg;
    c.head_dim = 7;
    CHECK(qd_config_validate(&c, "x", &e) == QD_ERR && strstr(e.msg, "head_dim"), "%s", e.msg);
    c = m->cfg;
    c.norm_eps = 0;
    CHECK(qd_config_validate(&c, "x", &e) == QD_ERR && strstr(e.msg, "norm_eps"), "%s", e.msg);
    c = m->cfg;
    c.rope_theta = NAN;
    CHECK(qd_config_validate(&c, "x", &e) == QD_ERR && strstr(e.msg, "rope_theta"), "%s", e.msg);
    c = m->cfg;
    c.eos_id = 512;
    CHECK(qd_config_validate(&c, "x", &e) == QD_ERR && strstr(e.msg, "eos_id"), "%s", e.msg);
    c = m->cfg;
    c.vocab_size = QD_MAX_VOCAB + 1;
    CHECK(qd_model_alloc(&c, &e) == NULL && strstr(e.msg, "vocab_size"), "%s", e.msg);
    qd_model_free(m);
}

int main(void) {
    check_tmpdir(tmpdir, sizeof tmpdir, "model_io");
    RUN(test_half_known_bits);
    RUN(test_half_exhaustive);
    RUN(test_three_forms_agree);
    RUN(test_probe_headers_only);
    RUN(test_format_detection_and_paths);
    RUN(test_tensor_info);
    RUN(test_gguf_vocab);
    RUN(test_gguf_vocab_gpt2);
    RUN(test_tiny_random_f16);
    RUN(test_clone);
    RUN(test_config_validate);
    RUN(test_save_roundtrip);
    RUN(test_save_sharded);
    RUN(test_hand_sharded);
    RUN(test_qwen2_bias_roundtrip);
    RUN(test_tied_untied);
    RUN(test_hf_config_variants);
    RUN(test_hf_transformers_forms);
    RUN(test_rope_scaling);
    RUN(test_st_writer_general);
    RUN(test_bad_safetensors);
    RUN(test_bad_gguf);
    RUN(test_gguf_all_types);
    RUN(test_bad_llama2c);
    RUN(test_random_header_damage);
    check_rmtree(tmpdir);
    return CHECK_DONE();
}
