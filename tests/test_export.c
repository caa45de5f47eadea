/* AIMET encodings.json structure (1.0.0 and 0.6.1) for an RTN-quantized stories260K, W8 and W4:
 * field names and types, per-channel lengths, offset = -zero_point (unsigned), min/max
 * consistent with scale/offset, and every param name present in the Hugging Face export of the
 * dequantized model (what fp-folded/ holds). */
#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

#include "quant/aimet.h"
#include "quant/data.h"
#include "quant/loadtok.h"
#include "quant/safetensors.h"
#include "tests/check.h"

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

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static void check_version(const qd_qint *qi, const char *dir, const char *ver, const qd_st_file *hf) {
    qd_err err;
    char path[512];
    snprintf(path, sizeof path, "%s/encodings-%s.json", dir, ver);
    CHECK(qd_aimet_write(qi, path, ver, &err) == QD_OK, "%s", err.msg);
    size_t len;
    char *txt = qd_read_file(path, 1 << 26, &len, &err);
    cJSON *root = txt ? cJSON_Parse(txt) : NULL;
    CHECK(root != NULL, "%s: not JSON", path);
    if (!root) { free(txt); return; }
    int v1 = !strcmp(ver, "1.0.0");
    CHECK(cJSON_IsString(get(root, "version")) && !strcmp(get(root, "version")->valuestring, ver), "version");
    int nl = qi->cfg.n_layers;
    int want_act = nl * QD_AQ_PER_LAYER + QD_AQG_COUNT, n_act = 0, n_par = 0;
    for (int which = 0; which < 2; which++) {
        const cJSON *sec = get(root, which ? "param_encodings" : "activation_encodings");
        CHECK(v1 ? cJSON_IsArray(sec) : cJSON_IsObject(sec), "section %d type", which);
        const cJSON *it;
        cJSON_ArrayForEach(it, sec) {
            const char *name;
            int bw, sym, n;
            double scale[4096], offset[4096];
            if (v1) {
                const cJSON *nm = get(it, "name"), *dt = get(it, "dtype"), *et = get(it, "enc_type");
                const cJSON *bwj = get(it, "bw"), *isj = get(it, "is_sym"), *sc = get(it, "scale"), *of = get(it, "offset");
                CHECK(cJSON_IsString(nm) && cJSON_IsString(dt) && !strcmp(dt->valuestring, "INT") &&
                      cJSON_IsString(et) && cJSON_IsNumber(bwj) && cJSON_IsBool(isj) &&
                      cJSON_IsArray(sc) && cJSON_IsArray(of), "fields of an entry");
                if (check_case_failed) break;
                name = nm->valuestring, bw = bwj->valueint, sym = cJSON_IsTrue(isj);
                n = cJSON_GetArraySize(sc);
                CHECK(n == cJSON_GetArraySize(of) && n <= 4096, "%s: scale/offset lengths", name);
                CHECK(!strcmp(et->valuestring, n > 1 ? "PER_CHANNEL" : "PER_TENSOR"), "%s enc_type", name);
                for (int i = 0; i < n && i < 4096; i++) {
                    scale[i] = cJSON_GetArrayItem(sc, i)->valuedouble;
                    offset[i] = cJSON_GetArrayItem(of, i)->valuedouble;
                }
            } else {
                name = it->string;
                n = cJSON_GetArraySize(it);
                CHECK(cJSON_IsArray(it) && n >= 1 && n <= 4096, "%s: list", name);
                bw = 0, sym = 0;
                for (int i = 0; i < n && i < 4096; i++) {
                    const cJSON *e = cJSON_GetArrayItem(it, i);
                    const cJSON *b = get(e, "bitwidth"), *s = get(e, "is_symmetric"), *mn = get(e, "min"),
                                *mx = get(e, "max"), *of = get(e, "offset"), *sc = get(e, "scale"), *dt = get(e, "dtype");
                    CHECK(cJSON_IsNumber(b) && cJSON_IsString(s) && cJSON_IsNumber(mn) && cJSON_IsNumber(mx) &&
                          cJSON_IsNumber(of) && cJSON_IsNumber(sc) && cJSON_IsString(dt), "%s fields", name);
                    if (check_case_failed) break;
                    bw = b->valueint, sym = !strcmp(s->valuestring, "True");
                    scale[i] = sc->valuedouble, offset[i] = of->valuedouble;
                    /* min = offset*scale, max = (2^bw - 1 + offset)*scale */
                    double Q = pow(2, bw) - 1;
                    CHECK(fabs(mn->valuedouble - offset[i] * scale[i]) <= 1e-6 * fabs(mn->valuedouble) + 1e-12 &&
                          fabs(mx->valuedouble - (Q + offset[i]) * scale[i]) <= 1e-6 * fabs(mx->valuedouble) + 1e-12,
                          "%s: min/max inconsistent", name);
                }
            }
            if (check_case_failed) break;
            CHECK(bw == 4 || bw == 8 || bw == 16, "%s bw %d", name, bw);
            for (int i = 0; i < n; i++) {
                CHECK(scale[i] > 0 && offset[i] == floor(offset[i]) && offset[i] <= 0 && offset[i] >= -(pow(2, bw) - 1),
                      "%s[%d]: scale %g offset %g", name, i, scale[i], offset[i]);
                if (sym) CHECK(offset[i] == -pow(2, bw - 1), "%s: symmetric offset %g", name, offset[i]);
            }
            if (which) {
                n_par++;
                const qd_st_tensor *t = qd_st_find(hf, name);
                CHECK(t != NULL, "param %s not in the HF export", name);
                if (t) CHECK(n == 1 || n == t->shape[0], "%s: %d channels, tensor has %lld rows", name, n, (long long)t->shape[0]);
            } else {
                n_act++;
            }
            if (check_case_failed) break;
        }
    }
    CHECK(n_act == want_act, "%d activation encodings, want %d", n_act, want_act);
    CHECK(n_par == nl * (QD_W_PER_LAYER + 2) + 2 + (qi->head.q != qi->emb.q), "%d param encodings", n_par);
    /* offset = -zero_point on the unsigned grid: the q_proj output of layer 0 */
    const qd_qenc *a = &qi->act[qd_act_index(nl, 0, QD_AQ_Q)];
    const cJSON *sec = get(root, "activation_encodings");
    const cJSON *e = NULL, *it;
    if (v1) {
        cJSON_ArrayForEach(it, sec) if (!strcmp(get(it, "name")->valuestring, "model.layers.0.self_attn.q_proj.output")) e = it;
        CHECK(e && cJSON_GetArrayItem(get(e, "offset"), 0)->valuedouble == -(a->zero_point + 128), "offset sign");
    } else {
        e = cJSON_GetArrayItem(get(sec, "model.layers.0.self_attn.q_proj.output"), 0);
        CHECK(e && get(e, "offset")->valuedouble == -(a->zero_point + 128), "offset sign");
    }
    cJSON_Delete(root);
    free(txt);
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
