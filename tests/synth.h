/* Synthetic random models for tests and benchmarks of the quantization code: a config builder
 * and a filler with a seeded generator, so a test needs no checkpoint file. Header-only
 * (static) because tests/ *.c files are linked into every test binary. */
#ifndef QD_TESTS_SYNTH_H
#define QD_TESTS_SYNTH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant/model.h"

static inline uint64_t synth_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static inline double synth_u(uint64_t *s) {
    return (double)(synth_next(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

static inline qd_config synth_config(int dim, int hidden, int layers, int heads, int kv_heads,
                                     int vocab, int ctx) {
    qd_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.arch, "llama");
    c.dim = dim, c.hidden_dim = hidden, c.n_layers = layers, c.n_heads = heads;
    c.n_kv_heads = kv_heads, c.head_dim = dim / heads, c.vocab_size = vocab;
    c.max_seq_len = ctx, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f;
    c.tied_embeddings = 1, c.bos_id = 1, c.eos_id = 2;
    return c;
}

/* Sets the switches of a Gemma or StableLM-2 config on c (synth_config's shapes): Gemma gets
 * the tanh GELU and the embedding scale sqrt(dim), StableLM LayerNorms and half of each head
 * rotated. */
static inline void synth_family(qd_config *c, int family) {
    qd_config_set_family(c, family);
    if (family == QD_FAMILY_GEMMA) c->emb_scale = sqrtf((float)c->dim);
    if (family == QD_FAMILY_STABLELM) c->rope_dim = c->head_dim / 2 + (c->head_dim / 2) % 2;
}

/* Weights uniform with std ~ 1/sqrt(fan_in), norms 1 + 0.2 u, LayerNorm biases 0.1 u,
 * embeddings ~ 1. */
static inline qd_model *synth_model(const qd_config *c, uint64_t seed, qd_err *err) {
    qd_model *m = qd_model_alloc(c, err);
    if (!m) return NULL;
    uint64_t s = seed * 7919 + 1;
    const double k3 = sqrt(3.0);
#define FILL(p, n, sc) for (size_t i_ = 0; i_ < (size_t)(n); i_++) (p)[i_] = (float)((sc) * k3 * synth_u(&s))
#define NORM(p, n) for (size_t i_ = 0; i_ < (size_t)(n); i_++) (p)[i_] = (float)(1 + 0.2 * synth_u(&s))
    int D = c->dim, F = c->hidden_dim, QD = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim;
    FILL(m->tok_emb, (size_t)c->vocab_size * D, 1.0);
    for (int l = 0; l < c->n_layers; l++) {
        qd_layer *L = &m->layers[l];
        NORM(L->attn_norm, D);
        NORM(L->ffn_norm, D);
        FILL(L->wq, (size_t)QD * D, 1 / sqrt(D));
        FILL(L->wk, (size_t)KV * D, 1 / sqrt(D));
        FILL(L->wv, (size_t)KV * D, 1 / sqrt(D));
        FILL(L->wo, (size_t)D * QD, 1 / sqrt(QD));
        FILL(L->w_gate, (size_t)F * D, 1 / sqrt(D));
        FILL(L->w_up, (size_t)F * D, 1 / sqrt(D));
        FILL(L->w_down, (size_t)D * F, 1 / sqrt(F));
        if (L->attn_norm_b) FILL(L->attn_norm_b, D, 0.1);
        if (L->ffn_norm_b) FILL(L->ffn_norm_b, D, 0.1);
        if (L->bq) FILL(L->bq, QD, 0.1);
        if (L->bk) FILL(L->bk, KV, 0.1);
        if (L->bv) FILL(L->bv, KV, 0.1);
    }
    NORM(m->final_norm, D);
    if (m->final_norm_b) FILL(m->final_norm_b, D, 0.1);
    if (m->lm_head != m->tok_emb) FILL(m->lm_head, (size_t)c->vocab_size * D, 1 / sqrt(D));
#undef FILL
#undef NORM
    return m;
}

#ifdef CHECK
/* synth_model with its failure counted as a failed check (include tests/check.h first). */
static inline qd_model *synth_checked(const qd_config *c, uint64_t seed) {
    qd_err err = {{0}};
    qd_model *m = synth_model(c, seed, &err);
    CHECK(m != NULL, "synth_model: %s", err.msg);
    return m;
}
#endif

#endif
