/* FP32 forward: BLAS path vs scalar reference, KV decode vs batched forward, and the three
 * stories260K forms (GGUF, Hugging Face, llama2.c) giving the same logits, the same
 * perplexity and Karpathy's documented greedy text. */
#include <math.h>

#include "quant/text/data.h"
#include "quant/fp/forward.h"
#include "quant/text/resolve.h"
#include "tests/check.h"
#include "quant/io/load.h"

static const char *EXPECTED =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high";

static qd_model *load(const char *rel) {
    qd_err err = {{0}};
    qd_model *m = qd_model_load(fixture(rel), &err);
    CHECK(m != NULL, "%s", err.msg);
    return m;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

static int fwd(void *ctx, const int *t, int B, int T, float *lg, qd_err *e) {
    return qd_forward(ctx, t, B, T, lg, e);
}

static void blas_matches_reference(void) {
    qd_model *m = load("models/stories260K.gguf");
    if (!m) return;
    /* (2, 37): one query block per window; (1, 130): three blocks of the causal-blocked
     * attention, the last one partial. */
    static const int shapes[][2] = {{2, 37}, {1, 130}};
    for (int k = 0; k < 2; k++) {
        int B = shapes[k][0], T = shapes[k][1], V = m->cfg.vocab_size;
        int *tok = malloc(sizeof(int) * B * T);
        for (int i = 0; i < B * T; i++) tok[i] = (i * 7919 + 13) % V;
        float *a = malloc(sizeof(float) * B * T * V), *b = malloc(sizeof(float) * B * T * V);
        qd_err err = {{0}};
        CHECK(qd_forward(m, tok, B, T, a, &err) == 0, "%s", err.msg);
        CHECK(qd_forward_ref(m, tok, B, T, b, &err) == 0, "%s", err.msg);
        float d = max_abs_diff(a, b, (size_t)B * T * V);
        /* float32 summation order differs (sgemm blocks vs a straight loop): 1e-4 is ample
         * for logits of magnitude ~10 after 5 layers. */
        CHECK(d < 1e-4f, "B %d T %d: max |blas - ref| = %g", B, T, d);
        free(tok), free(a), free(b);
    }
    qd_model_free(m);
}

static void decode_matches_batched(void) {
    qd_model *m = load("models/stories260K.gguf");
    if (!m) return;
    int T = 20, V = m->cfg.vocab_size;
    int tok[20];
    for (int i = 0; i < T; i++) tok[i] = (i * 31 + 1) % V;
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * V);
    qd_err err = {{0}};
    CHECK(qd_forward(m, tok, 1, T, a, &err) == 0, "%s", err.msg);
    qd_kv *kv = qd_kv_new(m, T, &err);
    float worst = 0;
    for (int t = 0; t < T; t++) {
        CHECK(qd_decode_step(m, kv, tok[t], t, b, &err) == 0, "%s", err.msg);
        worst = fmaxf(worst, max_abs_diff(a + (size_t)t * V, b, V));
    }
    CHECK(worst < 1e-4f, "max |decode - batched| = %g", worst);
    CHECK(qd_decode_step(m, kv, tok[0], T, b, &err) != 0, "position past the cache accepted");
    qd_kv_free(kv);
    free(a), free(b);
    qd_model_free(m);
}

static void bad_token_rejected(void) {
    qd_model *m = load("models/stories260K.gguf");
    if (!m) return;
    int tok[2] = {1, 512};
    float *lg = malloc(sizeof(float) * 2 * 512);
    qd_err err = {{0}};
    CHECK(qd_forward(m, tok, 1, 2, lg, &err) != 0, "token 512 accepted");
    CHECK(strstr(err.msg, "512") != NULL, "message: %s", err.msg);
    free(lg);
    qd_model_free(m);
}

static const char *FORMS[3] = {"models/stories260K.gguf", "models/stories260K-hf",
                               "models/stories260K.llama2c.bin"};

static void three_forms_same_logits(void) {
    qd_model *m[3];
    for (int i = 0; i < 3; i++)
        if (!(m[i] = load(FORMS[i]))) return;
    int T = 64, V = 512;
    int tok[64];
    for (int i = 0; i < T; i++) tok[i] = (i * 37 + 5) % V;
    float *lg[3];
    qd_err err = {{0}};
    for (int i = 0; i < 3; i++) {
        lg[i] = malloc(sizeof(float) * T * V);
        CHECK(qd_forward(m[i], tok, 1, T, lg[i], &err) == 0, "%s", err.msg);
    }
    for (int i = 1; i < 3; i++) {
        float d = max_abs_diff(lg[0], lg[i], (size_t)T * V);
        CHECK(d < 1e-4f, "%s vs %s: max |logit diff| = %g", FORMS[0], FORMS[i], d);
    }
    for (int i = 0; i < 3; i++) free(lg[i]), qd_model_free(m[i]);
}

static char *greedy(const qd_model *m, const qd_tokenizer *tok, int n) {
    qd_err err = {{0}};
    qd_kv *kv = qd_kv_new(m, n + 1, &err);
    float *lg = malloc(sizeof(float) * m->cfg.vocab_size);
    char *out = calloc(1, 4096);
    size_t len = 0;
    int cur = 1, prev = 1;
    for (int pos = 0; pos < n; pos++) {
        if (qd_decode_step(m, kv, cur, pos, lg, &err)) break;
        int best = 0;
        for (int i = 1; i < m->cfg.vocab_size; i++)
            if (lg[i] > lg[best]) best = i;
        size_t pl;
        const char *p = qd_tok_piece(tok, prev, best, &pl);
        if (len + pl < 4095) memcpy(out + len, p, pl), len += pl;
        prev = cur = best;
    }
    qd_kv_free(kv);
    free(lg);
    return out;
}

static void three_forms_greedy_text(void) {
    for (int i = 0; i < 3; i++) {
        qd_model *m = load(FORMS[i]);
        if (!m) return;
        qd_err err = {{0}};
        const char *tp = m->vocab ? NULL : fixture("models/tok512.bin");
        qd_tokenizer *tok = qd_tok_for_model(m, fixture(FORMS[i]), tp, &err);
        CHECK(tok != NULL, "%s", err.msg);
        if (tok) {
            char *text = greedy(m, tok, 80);
            CHECK(strncmp(text, EXPECTED, strlen(EXPECTED)) == 0, "%s gave: %s", FORMS[i], text);
            free(text);
        }
        qd_tok_free(tok);
        qd_model_free(m);
    }
}

static void three_forms_same_perplexity(void) {
    double ppl[3] = {0};
    for (int i = 0; i < 3; i++) {
        qd_model *m = load(FORMS[i]);
        if (!m) return;
        qd_err err = {{0}};
        qd_tokenizer *tok = qd_tok_load(fixture("models/tok512.bin"), &err);
        CHECK(tok != NULL, "%s", err.msg);
        qd_tokens ts = {0};
        int ok = tok && qd_data_load(fixture("text/tinystories-valid-excerpt.txt"), tok, 512, &ts,
                                     &err) == 0;
        CHECK(ok, "%s", err.msg);
        qd_eval_result r;
        if (ok) {
            CHECK(qd_eval_ppl(fwd, m, 512, ts.ids, ts.n, 256, &r, &err) == 0, "%s", err.msg);
            ppl[i] = r.ppl;
            CHECK(r.tokens > 10000, "only %zu tokens", r.tokens);
        }
        qd_tokens_free(&ts);
        qd_tok_free(tok);
        qd_model_free(m);
    }
    /* A trained model on in-distribution text: a sane perplexity, and the same for each form
     * to float rounding. */
    CHECK(ppl[0] > 1.5 && ppl[0] < 50, "gguf ppl %g", ppl[0]);
    for (int i = 1; i < 3; i++)
        CHECK(fabs(ppl[i] - ppl[0]) < 1e-4 * ppl[0], "ppl %g vs %g", ppl[i], ppl[0]);
    printf("# stories260K ppl on the excerpt (ctx 256): %.4f %.4f %.4f\n", ppl[0], ppl[1], ppl[2]);
}

int main(void) {
    RUN(blas_matches_reference);
    RUN(decode_matches_batched);
    RUN(bad_token_rejected);
    RUN(three_forms_same_logits);
    RUN(three_forms_greedy_text);
    RUN(three_forms_same_perplexity);
    return CHECK_DONE();
}
