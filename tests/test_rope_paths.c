/* RoPE scaling reaches every path that rotates q and k: the FP32 forward, the fake-quant
 * simulation and the integer runtime all build their tables from qd_rope_inv_freq, and the
 * integer artifact carries the scaling. stories260K with llama3 scaling (factor 8, low 1,
 * high 4, original context 64, so its four frequency pairs fall in all three bands) is run
 * through each path; each must agree with the scaled FP32 forward better than with the
 * unscaled one, which shows the scaling was not dropped on the way. */
#include "quant/fp/eval.h"
#include "quant/fp/forward.h"
#include "quant/io/load.h"
#include "quant/model.h"
#include "quant/rt/int_model.h"
#include "quant/rt/runtime.h"
#include "quant/sim/fakequant.h"
#include "quant/text/data.h"
#include "quant/text/tokenizer.h"

#include "check.h"

#include <math.h>
#include <unistd.h>

#define T 128
#define B 4

static double rel_rmse(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (a[i] - b[i]) * (double)(a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / den);
}

static void test_paths(void) {
    qd_err e = {{0}};
    qd_model *m = qd_model_load(fixture("models/stories260K.gguf"), &e);
    CHECK(m != NULL, "%s", e.msg);
    qd_tokenizer *tok = qd_tok_load(fixture("models/tok512.bin"), &e);
    qd_tokens ts = {0};
    if (!m || !tok ||
        qd_data_load(fixture("text/tinystories-valid-excerpt.txt"), tok, 512, &ts, &e) != 0 ||
        ts.n < (size_t)(B + 8) * T) {
        CHECK(0, "setup: %s", e.msg);
        qd_tok_free(tok);
        qd_model_free(m);
        return;
    }
    qd_model *s = qd_model_clone(m, &e);
    CHECK(s != NULL, "%s", e.msg);
    if (!s) goto out0;
    s->cfg.rope_scaling = QD_ROPE_LLAMA3;
    s->cfg.rope_factor = 8;
    s->cfg.rope_low_freq_factor = 1;
    s->cfg.rope_high_freq_factor = 4;
    s->cfg.rope_orig_ctx = 64;
    CHECK(qd_config_validate(&s->cfg, "scaled", &e) == QD_OK, "%s", e.msg);

    size_t n = (size_t)B * T * m->cfg.vocab_size;
    float *fp_m = malloc(n * 4), *fp_s = malloc(n * 4), *sim_s = malloc(n * 4),
          *int_s = malloc(n * 4);
    const int *ev = ts.ids + (size_t)8 * T; /* after the calibration windows */
    CHECK(qd_forward(m, ev, B, T, fp_m, &e) == 0, "%s", e.msg);
    CHECK(qd_forward(s, ev, B, T, fp_s, &e) == 0, "%s", e.msg);
    double scaled_vs_plain = rel_rmse(fp_s, fp_m, n);

    /* the simulation with every quantizer off is the FP32 model: the scaled one */
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = 8, o.Bmax = B, o.Tmax = T, o.train = 0;
    qd_qsim *q = qd_qsim_new(s, &o, &e);
    CHECK(q != NULL, "%s", e.msg);
    double sim_err = INFINITY;
    if (q) {
        q->let_on = q->wq_on = q->aq_on = 0;
        CHECK(qd_qsim_logits(q, ev, B, T, sim_s, &e) == 0, "%s", e.msg);
        sim_err = rel_rmse(sim_s, fp_s, n);
        /* same math, other summation order: 1e-5 relative RMS */
        CHECK(sim_err < 1e-5, "sim vs scaled forward: %g", sim_err);
        CHECK(rel_rmse(sim_s, fp_m, n) > 0.05, "sim vs unscaled forward: %g",
              rel_rmse(sim_s, fp_m, n));
        qd_qsim_free(q);
    }

    /* the integer runtime (W8A8, min/max ranges from the scaled model), and its artifact
     * read back */
    qd_qint_enc enc;
    qd_qint *qi = NULL, *qi2 = NULL;
    qd_qrt *rt = NULL;
    double int_vs_s = INFINITY, int_vs_m = 0;
    if (qd_qint_enc_rtn(&enc, s, 8, ts.ids, 8, T, &e) != QD_OK) {
        CHECK(0, "%s", e.msg);
        goto out1;
    }
    qi = qd_qint_build(s, &enc, &e);
    qd_qint_enc_free(&enc);
    CHECK(qi != NULL, "%s", e.msg);
    if (!qi) goto out1;
    char path[] = "/tmp/qd_rope_paths_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd >= 0) close(fd);
    CHECK(qd_qint_save(qi, path, &e) == QD_OK, "%s", e.msg);
    qi2 = qd_qint_load(path, &e);
    unlink(path);
    CHECK(qi2 != NULL, "%s", e.msg);
    if (!qi2) goto out1;
    const qd_config *c2 = &qi2->cfg;
    CHECK(c2->rope_scaling == QD_ROPE_LLAMA3 && c2->rope_factor == 8 &&
              c2->rope_low_freq_factor == 1 && c2->rope_high_freq_factor == 4 &&
              c2->rope_orig_ctx == 64,
          "the artifact carries the scaling (%d %g %d)", c2->rope_scaling,
          (double)c2->rope_factor, c2->rope_orig_ctx);
    rt = qd_qrt_new(qi2, NULL, &e);
    CHECK(rt != NULL, "%s", e.msg);
    if (!rt) goto out1;
    CHECK(qd_qrt_logits_fn(rt, ev, B, T, int_s, &e) == 0, "%s", e.msg);
    int_vs_s = rel_rmse(int_s, fp_s, n);
    int_vs_m = rel_rmse(int_s, fp_m, n);
    CHECK(int_vs_s < int_vs_m, "integer runtime: %g from the scaled FP32 model, %g from the "
          "unscaled one", int_vs_s, int_vs_m);
out1:
    printf("# relative logit RMSE (T = %d): scaled vs unscaled FP32 %.4f; sim (FP) vs scaled "
           "%.2g; int W8A8 vs scaled %.4f, vs unscaled %.4f\n",
           T, scaled_vs_plain, sim_err, int_vs_s, int_vs_m);
    CHECK(scaled_vs_plain > 0.05, "the scaling must change the logits: %g", scaled_vs_plain);
    qd_qrt_free(rt);
    qd_qint_free(qi2);
    qd_qint_free(qi);
    free(fp_m), free(fp_s), free(sim_s), free(int_s);
    qd_model_free(s);
out0:
    qd_tokens_free(&ts);
    qd_tok_free(tok);
    qd_model_free(m);
}

int main(void) {
    RUN(test_paths);
    return CHECK_DONE();
}
