/* AIMET encodings.json structure (1.0.0 and 0.6.1) for an RTN-quantized stories260K, W8 and W4:
 * field names and types, per-channel lengths, offset = -zero_point (unsigned), min/max
 * consistent with scale/offset, and every param name present in the Hugging Face export of the
 * dequantized model (what fp-folded/ holds). */
#include <unistd.h>

#include "quant/export/aimet.h"
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
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

static void test_aimet_w8(void) { run(8); }
static void test_aimet_w4(void) { run(4); }

int main(void) {
    if (setup()) {
        printf("FAIL setup: fixtures\n");
        return 1;
    }
    RUN(test_aimet_w8);
    RUN(test_aimet_w4);
    qd_tokens_free(&toks);
    qd_model_free(model);
    return CHECK_DONE();
}
