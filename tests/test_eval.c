/* Evaluation against the FP32 reference computed once (eval.h: qd_eval_ref_*) gives the same
 * figures as the plain two-model comparison (qd_eval_compare) on the same windows:
 *  - stories260K (trained, vocabulary 512) against its RTN and SmoothQuant simulations, and a
 *    random-weight model with a 4096-token vocabulary against its RTN simulation: perplexity
 *    and top-1 equal (relative 1e-12; the variant's logits are the same computation), KL within
 *    relative 1e-5 (the reference's log-probabilities are kept as floats);
 *  - the FP32 side's own figures: perplexity equal to qd_eval_ppl's, KL 0, top-1 1;
 *  - a memory budget too small for every kept token: perplexity and top-1 still exact, KL a
 *    lower bound of the exact one (the lumped tail), the lumped mass reported, the memory
 *    within the budget;
 *  - a remainder window shorter than the context counts as in qd_eval_compare. */
#include <math.h>

#include "quant/fp/eval.h"
#include "quant/opt/mobilequant.h"
#include "quant/text/data.h"
#include "quant/text/resolve.h"
#include "base/sys.h"
#include "tests/check.h"
#include "tests/synth.h"
#include "quant/io/load.h"

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-300); }

static qd_qsim *variant(const qd_model *m, const char *method, const int *cal, size_t n_cal, int T) {
    qd_mq_opts mo;
    qd_mq_defaults(&mo, 8);
    snprintf(mo.method, sizeof mo.method, "%s", method);
    mo.samples = 4, mo.seq_len = T, mo.epochs = 0, mo.t0 = qd_now();
    qd_qsim *q = NULL;
    qd_mq_result res = {0};
    qd_err err = {{0}};
    CHECK(qd_mq_run(m, cal, n_cal, &mo, &q, &res, &err) == QD_OK, "%s: %s", method, err.msg);
    qd_mq_result_free(&res);
    return q;
}

/* ref-once vs two-model figures of q against m; returns the reference's stats */
static void same_figures(const char *what, const qd_model *m, qd_qsim *q, const int *ev, size_t n_ev,
                         int T, size_t budget, int exact_kl, qd_eval_ref_info *info) {
    int V = m->cfg.vocab_size;
    qd_err err = {{0}};
    qd_cmp_result self, fast, exact, fp_exact;
    qd_eval_ref *r = qd_eval_ref_new(qd_fp32_logits_fn, (void *)m, V, ev, n_ev, T, budget, NULL, NULL,
                                     &self, &err);
    CHECK(r != NULL, "%s: %s", what, err.msg);
    if (!r) return;
    CHECK(qd_eval_ref_compare(r, qd_qsim_logits_fn, q, NULL, NULL, &fast, &err) == QD_OK, "%s: %s", what, err.msg);
    CHECK(qd_eval_compare(qd_fp32_logits_fn, (void *)m, qd_qsim_logits_fn, q, V, ev, n_ev, T, &exact,
                          &err) == QD_OK, "%s: %s", what, err.msg);
    CHECK(qd_eval_compare(qd_fp32_logits_fn, (void *)m, qd_fp32_logits_fn, (void *)m, V, ev, n_ev, T,
                          &fp_exact, &err) == QD_OK, "%s: %s", what, err.msg);
    qd_eval_result pe;
    CHECK(qd_eval_ppl(qd_fp32_logits_fn, (void *)m, V, ev, n_ev, T, &pe, &err) == QD_OK, "%s", err.msg);
    CHECK(rel(self.ppl, fp_exact.ppl) < 1e-12 && rel(self.ppl, pe.ppl) < 1e-9 && self.kl == 0 &&
              self.top1 == 1 && self.tokens == exact.tokens,
          "%s: fp32 ppl %.10g vs %.10g (eval_ppl %.10g), kl %g top1 %g, %zu vs %zu tokens", what,
          self.ppl, fp_exact.ppl, pe.ppl, self.kl, self.top1, self.tokens, exact.tokens);
    CHECK(fast.tokens == exact.tokens && rel(fast.ppl, exact.ppl) < 1e-12 && fast.top1 == exact.top1,
          "%s: ppl %.12g vs %.12g, top1 %.6f vs %.6f", what, fast.ppl, exact.ppl, fast.top1, exact.top1);
    qd_eval_ref_stats(r, info);
    if (exact_kl)
        CHECK(rel(fast.kl, exact.kl) < 1e-5, "%s: kl %.9g vs %.9g (rel %.2e; tail max %.2e)", what,
              fast.kl, exact.kl, rel(fast.kl, exact.kl), info->tail_max);
    else
        CHECK(fast.kl <= exact.kl * (1 + 1e-5) && fast.kl > 0, "%s: kl %.9g is not a lower bound "
              "of %.9g", what, fast.kl, exact.kl);
    printf("# %s: ppl %.6g kl %.6g (exact %.6g) top1 %.4f; reference %zu bytes for %zu positions "
           "(logits: %zu), %.1f of at most %d tokens kept, tail max %.2e mean %.2e\n", what, fast.ppl,
           fast.kl, exact.kl, fast.top1, info->bytes, info->positions,
           info->positions * (size_t)V * sizeof(float), info->kept_mean, info->kept_max,
           info->tail_max, info->tail_mean);
    qd_eval_ref_free(r);
}

static void stories_variants(void) {
    qd_err err = {{0}};
    qd_model *m = qd_model_load(fixture("models/stories260K.gguf"), &err);
    CHECK(m != NULL, "%s", err.msg);
    if (!m) return;
    qd_tokenizer *tok = qd_tok_for_model(m, fixture("models/stories260K.gguf"), NULL, &err);
    qd_tokens t = {0};
    if (!tok || qd_data_load(fixture("text/tinystories-valid-excerpt.txt"), tok, m->cfg.vocab_size,
                             &t, &err)) {
        CHECK(0, "%s", err.msg);
    } else {
        int T = 128;
        /* 5 windows and a remainder of 37 tokens */
        size_t n_ev = 5 * (size_t)T + 37;
        const int *ev = t.ids + t.n - n_ev;
        const char *methods[2] = {"rtn", "smoothquant"};
        for (int k = 0; k < 2; k++) {
            qd_qsim *q = variant(m, methods[k], t.ids, 8 * (size_t)T, T);
            if (!q) continue;
            qd_eval_ref_info info;
            char what[64];
            snprintf(what, sizeof what, "stories260K %s", methods[k]);
            same_figures(what, m, q, ev, n_ev, T, 0, 1, &info);
            CHECK(info.positions == 5 * (size_t)(T - 1) + 36, "%zu positions", info.positions);
            qd_qsim_free(q);
        }
    }
    qd_tokens_free(&t);
    qd_tok_free(tok);
    qd_model_free(m);
}

static void large_vocab_and_budget(void) {
    qd_config c = synth_config(64, 160, 2, 4, 4, 4096, 64);
    qd_model *m = synth_checked(&c, 5);
    if (!m) return;
    int T = 64;
    size_t n = 12 * (size_t)T;
    int *tok = malloc(sizeof(int) * n);
    uint64_t s = 11;
    for (size_t i = 0; i < n; i++) tok[i] = (int)(synth_next(&s) % (uint64_t)c.vocab_size);
    qd_qsim *q = variant(m, "rtn", tok, 4 * (size_t)T, T);
    if (q) {
        const int *ev = tok + 4 * (size_t)T;
        size_t n_ev = 8 * (size_t)T;
        qd_eval_ref_info all, some;
        same_figures("synth V=4096 rtn", m, q, ev, n_ev, T, 0, 1, &all);
        /* a budget of 80 tokens per position: the rest is lumped */
        size_t budget = all.positions * 80 * 8;
        same_figures("synth V=4096 rtn, small budget", m, q, ev, n_ev, T, budget, 0, &some);
        CHECK(some.kept_max == 80 && some.kept_mean <= 80 && some.tail_max > 0 &&
                  some.bytes < budget + all.positions * 32 + 4096,
              "budget %zu: %zu bytes, kept max %d mean %.1f, tail max %g", budget, some.bytes,
              some.kept_max, some.kept_mean, some.tail_max);
        qd_qsim_free(q);
    }
    free(tok);
    qd_model_free(m);
}

int main(void) {
    RUN(stories_variants);
    RUN(large_vocab_and_budget);
    return CHECK_DONE();
}
