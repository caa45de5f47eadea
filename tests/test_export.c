/* AIMET encodings.json structure (1.0.0 and 0.6.1) for an RTN-quantized stories260K, W8 and W4:
 * field names and types, per-channel lengths, offset = -zero_point (unsigned), min/max
 * consistent with scale/offset, and every param name present in the Hugging Face export of the
 * dequantized model (what fp-folded/ holds).
 * Then the same checks on MobileQuant's trained encodings, seeds 0, 1, 2 at W8 and W4: every
 * activation offset an integer in [-(2^bw - 1), 0] and every quantizer present, and 0 fake-
 * quantizes to exactly 0 in the simulation itself; and with an LRL learning rate large enough
 * to push offsets past the ends of their range, the projection engages (res.projected > 0) and
 * the encodings stay valid. */
#include <unistd.h>

#include "quant/export/aimet.h"
#include "quant/opt/mobilequant.h"
#include "quant/sim/encodings.h"
#include "quant/text/data.h"
#include "quant/text/resolve.h"
#include "quant/io/safetensors.h"
#include "tests/aimet_check.h"
#include "tests/check.h"
#include "quant/io/load.h"

static qd_model *model;
static qd_tokens toks;

static int setup(void) {
    qd_err err;
    model = qd_model_load(fixture("models/stories260K.gguf"), &err);
    qd_tokenizer *tok = model ? qd_tok_for_model(model, fixture("models/stories260K.gguf"), NULL, &err) : NULL;
    if (!tok || qd_data_load(fixture("text/tinystories-valid-excerpt.txt"), tok, model->cfg.vocab_size, &toks, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    qd_tok_free(tok);
    return 0;
}

/* Writes the encodings in format ver and checks them against the model (tests/aimet_check.h:
 * structure, one entry per site and parameter, AIMET's offset sign, min/max consistency). */
static void check_version(const qd_qint *qi, const char *dir, const char *ver, const qd_st_file *hf) {
    qd_err err;
    char path[512];
    snprintf(path, sizeof path, "%s/encodings-%s.json", dir, ver);
    CHECK(qd_aimet_write(qi, path, ver, &err) == QD_OK, "%s", err.msg);
    aimet_check_file(path, ver, qi, hf);
}

static void run(int wbits) {
    qd_err err;
    qd_qint_enc enc;
    CHECK(qd_qint_enc_rtn(&enc, model, wbits, toks.ids, 4, 64, &err) == QD_OK, "%s", err.msg);
    qd_qint *qi = qd_qint_build(model, &enc, &err);
    CHECK(qi != NULL, "%s", err.msg);
    if (!qi) return;
    char dir[] = "/tmp/qd_test_export_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    /* the HF export of the dequantized weights stands in for fp-folded/ (same names) */
    qd_model *dq = qd_qint_dequant(qi, &err);
    char hfdir[600], st[700];
    snprintf(hfdir, sizeof hfdir, "%s/fp-folded", dir);
    CHECK(dq && qd_save_hf(dq, hfdir, "F32", &err) == QD_OK, "%s", err.msg);
    snprintf(st, sizeof st, "%s/model.safetensors", hfdir);
    qd_st_file *hf = qd_st_open(st, &err);
    CHECK(hf != NULL, "%s", err.msg);
    if (hf) {
        check_version(qi, dir, "1.0.0", hf);
        check_version(qi, dir, "0.6.1", hf);
    }
    CHECK(qd_aimet_write(qi, "/dev/null", "2.0.0", &err) == QD_ERR, "bad version accepted");
    qd_st_close(hf);
    qd_model_free(dq);
    qd_qint_free(qi);
    qd_qint_enc_free(&enc);
    check_rmtree(dir);
}

static void test_aimet_w8(void) { run(8); }
static void test_aimet_w4(void) { run(4); }

/* MobileQuant at a small budget (4 windows x 64 tokens x 1 epoch) on the first half of the
 * text; its encodings in both formats through aimet_check. Returns res.projected (-1 on failure). */
static long mq_encodings(int wbits, uint64_t seed, double lr_lrl) {
    qd_err err = {{0}};
    qd_mq_opts o;
    qd_mq_defaults(&o, wbits);
    o.samples = 4, o.seq_len = 64, o.epochs = 1, o.seed = seed;
    if (lr_lrl > 0) o.lr_lrl[0] = o.lr_lrl[1] = lr_lrl;
    qd_qsim *q = NULL;
    qd_mq_result res;
    CHECK(qd_mq_run(model, toks.ids, toks.n / 2, &o, &q, &res, &err) == QD_OK, "%s", err.msg);
    if (!q) return -1;
    long projected = res.projected;
    qd_mq_result_free(&res);
    /* the simulation: 0 is on every activation grid */
    int n_bad = 0;
    for (int l = -1; l < q->cfg.n_layers; l++)
        for (int s = 0; s < (l < 0 ? QD_AQG_COUNT : QD_AQ_PER_LAYER); s++) {
            const qd_aq *a = l < 0 ? &q->aqg[s] : &q->L[l].aq[s];
            qd_real zero = 0, y = 1;
            qd_aq_forward(&y, &zero, 1, a, NULL, 0);
            if (y != 0) n_bad++;
        }
    CHECK(n_bad == 0, "W%d seed %llu: %d activation quantizers do not represent 0", wbits,
          (unsigned long long)seed, n_bad);
    qd_encodings *E = qd_encodings_build(q, model, &err);
    CHECK(E != NULL, "%s", err.msg);
    qd_qsim_free(q);
    if (!E) return -1;
    for (int i = 0; i < E->n_a; i++) {
        const qd_aenc *a = &E->a[i];
        CHECK(a->zero >= 0 && a->zero <= (int32_t)((1u << a->bits) - 1) && a->min <= 0 &&
              a->max >= 0, "W%d seed %llu %s: zero point %d (%d bits), range [%g, %g]", wbits,
              (unsigned long long)seed, a->name, a->zero, a->bits, a->min, a->max);
    }
    qd_qint *qi = qd_qint_from_encodings(E, &err);
    CHECK(qi != NULL, "%s", err.msg);
    char dir[] = "/tmp/qd_test_export_mq_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char hfdir[600], st[700];
    snprintf(hfdir, sizeof hfdir, "%s/fp-folded", dir);
    CHECK(qd_save_hf(E->folded, hfdir, "F32", &err) == QD_OK, "%s", err.msg);
    snprintf(st, sizeof st, "%s/model.safetensors", hfdir);
    qd_st_file *hf = qd_st_open(st, &err);
    CHECK(hf != NULL, "%s", err.msg);
    if (hf && qi) {
        check_version(qi, dir, "1.0.0", hf);
        check_version(qi, dir, "0.6.1", hf);
    }
    qd_st_close(hf);
    qd_qint_free(qi);
    qd_encodings_free(E);
    check_rmtree(dir);
    return projected;
}

static void mq_seeds(int wbits) {
    for (uint64_t seed = 0; seed < 3 && !check_case_failed; seed++) {
        long p = mq_encodings(wbits, seed, 0);
        printf("# W%dA8 seed %llu: %ld offsets projected onto their range\n", wbits,
               (unsigned long long)seed, p);
    }
}
static void mobilequant_encodings_w8_seeds(void) { mq_seeds(8); }
static void mobilequant_encodings_w4_seeds(void) { mq_seeds(4); }

/* An LRL learning rate of 5% of each range per step drives offsets past the ends of their
 * ranges whatever the CPU's rounding: the projection must engage and keep zero on the grid. */
static void mobilequant_offsets_pushed_out(void) {
    for (int wbits = 8; wbits >= 4; wbits -= 4) {
        long p = mq_encodings(wbits, 1, 0.05);
        CHECK(p > 0, "W%d: no offset reached an end of its range (%ld)", wbits, p);
    }
}

int main(void) {
    if (setup()) {
        printf("FAIL setup: fixtures\n");
        return 1;
    }
    RUN(test_aimet_w8);
    RUN(test_aimet_w4);
    RUN(mobilequant_encodings_w8_seeds);
    RUN(mobilequant_encodings_w4_seeds);
    RUN(mobilequant_offsets_pushed_out);
    qd_tokens_free(&toks);
    qd_model_free(model);
    return CHECK_DONE();
}
