/* The deployable artifacts that every quantize run writes (quantize.h), on stories260K with a
 * small budget, W8A8 (encodings 1.0.0) and W4A8 (0.6.1):
 *  - model.qint.safetensors loads with qd_qint_load, carries the method and the source's
 *    sha256, and the integer runtime's perplexity on the held-out tokens equals report
 *    eval.int.ppl; it is within 1% of the fake-quant simulation's (report eval.<method>);
 *  - a rerun of the method gives the same encodings: its integer model equals the artifact,
 *    and fp-folded/ read back through qd_model_load gives E->folded's FP32 logits (1e-4);
 *  - encodings.json passes tests/aimet_check.h against the artifact and fp-folded/'s tensors;
 *  - fp-folded/ carries a tokenizer that encodes like the checkpoint's own;
 *  - report sizes equal the files on disk, ratios follow from them, per_layer has a finite
 *    entry per layer, inputs.sha256 are the files' hashes;
 * and the tokenizer.bin writer: byte-identical round trip of tok512.bin, the GGUF vocabulary
 * written as tokenizer.bin tokenizes identically, vocabularies the format cannot carry are
 * refused without leaving a file. */
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "quant/text/data.h"
#include "quant/sim/encodings.h"
#include "quant/fp/eval.h"
#include "quant/fp/forward.h"
#include "quant/text/resolve.h"
#include "quant/opt/mobilequant.h"
#include "quant/rt/runtime.h"
#include "quant/quantize.h"
#include "quant/text/vocab_write.h"
#include "tests/aimet_check.h"
#include "tests/check.h"
#include "base/sys.h"
#include "quant/io/load.h"
#include "base/hash.h"

#define MODEL "models/stories260K.gguf"
#define TEXT "text/tinystories-valid-excerpt.txt"

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static char *slurp(const char *p, size_t *n) {
    qd_err err;
    return qd_read_file(p, 1 << 26, n, &err);
}

/* ---- tokenizer.bin writer --------------------------------------------------------------- */

static void vocab_roundtrip_tok512(void) {
    qd_err err = {{0}};
    qd_vocab *v = qd_vocab_load_llama2c(fixture("models/tok512.bin"), &err);
    CHECK(v != NULL, "%s", err.msg);
    if (!v) return;
    char path[] = "/tmp/qd_test_tokbin_XXXXXX";
    close(mkstemp(path));
    CHECK(qd_vocab_save_llama2c(v, path, &err) == QD_OK, "%s", err.msg);
    size_t na, nb;
    char *a = slurp(fixture("models/tok512.bin"), &na), *b = slurp(path, &nb);
    CHECK(a && b && na == nb && !memcmp(a, b, na), "tok512.bin round trip differs (%zu vs %zu bytes)", na, nb);
    free(a), free(b);
    unlink(path);
    qd_vocab_free(v);
}

static void vocab_gguf_as_tokenizer_bin(void) {
    qd_err err = {{0}};
    qd_model *m = qd_model_load(fixture(MODEL), &err);
    CHECK(m && m->vocab, "%s", err.msg);
    if (!m || !m->vocab) { qd_model_free(m); return; }
    char path[] = "/tmp/qd_test_tokbin_XXXXXX";
    close(mkstemp(path));
    CHECK(qd_vocab_save_llama2c(m->vocab, path, &err) == QD_OK, "%s", err.msg);
    qd_tokenizer *g = qd_tok_from_vocab(m->vocab, &err), *b = qd_tok_load(path, &err);
    CHECK(g && b, "%s", err.msg);
    size_t len;
    char *text = slurp(fixture(TEXT), &len);
    int *ia = NULL, *ib = NULL;
    size_t na = 0, nb = 0;
    if (g && b && text) {
        CHECK(qd_tok_encode(g, text, len, 1, &ia, &na, &err) == QD_OK &&
              qd_tok_encode(b, text, len, 1, &ib, &nb, &err) == QD_OK, "%s", err.msg);
        CHECK(na > 1000 && na == nb && !memcmp(ia, ib, sizeof(int) * na),
              "ids differ: %zu vs %zu tokens", na, nb);
        char *da = qd_tok_decode(g, ia, na, &err), *db = qd_tok_decode(b, ib, nb, &err);
        CHECK(da && db && !strcmp(da, db), "decoded texts differ");
        free(da), free(db);
    }
    /* the fixture's tokenizer.bin is this vocabulary exported by llama2.c: the same bytes */
    size_t n1, n2;
    char *x = slurp(path, &n1), *y = slurp(fixture("models/tok512.bin"), &n2);
    CHECK(x && y && n1 == n2 && !memcmp(x, y, n1), "GGUF vocabulary != tok512.bin");
    free(x), free(y), free(ia), free(ib), free(text);
    qd_tok_free(g), qd_tok_free(b);
    unlink(path);
    qd_model_free(m);
}

static void vocab_refuses_what_it_cannot_carry(void) {
    qd_err err = {{0}};
    qd_vocab *v = qd_vocab_new(4, &err);
    const char *toks[4] = {"<unk>", "<s>", "</s>", "a b"};
    for (int i = 0; i < 4; i++) v->tokens[i] = strdup(toks[i]);
    v->unk_id = 0, v->bos_id = 1, v->eos_id = 2;
    v->types[0] = QD_TOK_UNKNOWN, v->types[1] = v->types[2] = QD_TOK_CONTROL;
    char dir[] = "/tmp/qd_test_tokref_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.bin", dir);
    /* a literal space would come back as "▁" */
    CHECK(qd_vocab_save_llama2c(v, path, &err) == QD_ERR && strstr(err.msg, "token 3"),
          "space accepted: %s", err.msg);
    free(v->tokens[3]);
    v->tokens[3] = strdup("\xe2\x96\x81" "ab");
    v->add_bos = 0; /* the format cannot say "no BOS" */
    CHECK(qd_vocab_save_llama2c(v, path, &err) == QD_ERR && strstr(err.msg, "add_bos"),
          "add_bos 0 accepted: %s", err.msg);
    v->add_bos = 1;
    v->types[3] = QD_TOK_USER;
    CHECK(qd_vocab_save_llama2c(v, path, &err) == QD_ERR && strstr(err.msg, "type"),
          "user type accepted: %s", err.msg);
    CHECK(file_size(path) < 0, "a refused vocabulary left a file");
    v->types[3] = QD_TOK_NORMAL;
    CHECK(qd_vocab_save_llama2c(v, path, &err) == QD_OK, "%s", err.msg);
    qd_vocab *r = qd_vocab_load_llama2c(path, &err);
    CHECK(r && r->n == 4 && !strcmp(r->tokens[3], v->tokens[3]) && r->bos_id == 1, "reload");
    qd_vocab_free(r);
    qd_vocab_free(v);
    check_rmtree(dir);
}

/* ---- the pipeline's artifacts ----------------------------------------------------------- */

static cJSON *jget(const cJSON *o, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *x = o;
    for (char *k = strtok(buf, "/"); k && x; k = strtok(NULL, "/"))
        x = cJSON_GetObjectItemCaseSensitive(x, k);
    return (cJSON *)x;
}

static double jnum(const cJSON *o, const char *path) {
    const cJSON *x = jget(o, path);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

static const char *jstr(const cJSON *o, const char *path) {
    const cJSON *x = jget(o, path);
    return cJSON_IsString(x) ? x->valuestring : "";
}

/* The bytes of every weight of two integer models agree (same grid and same integers). */
static int qlin_same(const qd_qlin *a, const qd_qlin *b) {
    size_t ng = a->per_channel ? (size_t)a->rows : 1;
    return a->rows == b->rows && a->cols == b->cols && a->bits == b->bits &&
           a->per_channel == b->per_channel &&
           !memcmp(a->q, b->q, (size_t)a->rows * qd_qlin_row_bytes(a)) &&
           !memcmp(a->scale, b->scale, sizeof(float) * ng) &&
           !memcmp(a->zero_point, b->zero_point, sizeof(int32_t) * ng);
}

static void pipeline(int wbits, const char *enc_version) {
    char dir[] = "/tmp/qd_test_art_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    qd_quant_opts o;
    qd_quant_defaults(&o);
    o.model_path = fixture(MODEL);
    o.calib_path = fixture(TEXT);
    o.eval_split = 0.5;
    o.wbits = wbits;
    o.samples = 4, o.seq_len = 64, o.epochs = 1;
    o.out_dir = dir;
    snprintf(o.encodings_version, sizeof o.encodings_version, "%s", enc_version);
    qd_err err = {{0}};
    int rc = qd_quantize(&o, &err);
    CHECK(rc == QD_OK, "%s", err.msg);
    if (rc != QD_OK) { check_rmtree(dir); return; }

    char p_rep[600], p_qint[600], p_enc[600], p_fold[600], p_st[700], p_cfg[700], p_tok[700];
    snprintf(p_rep, sizeof p_rep, "%s/report.json", dir);
    snprintf(p_qint, sizeof p_qint, "%s/model.qint.safetensors", dir);
    snprintf(p_enc, sizeof p_enc, "%s/encodings.json", dir);
    snprintf(p_fold, sizeof p_fold, "%s/fp-folded", dir);
    snprintf(p_st, sizeof p_st, "%s/model.safetensors", p_fold);
    snprintf(p_cfg, sizeof p_cfg, "%s/config.json", p_fold);
    snprintf(p_tok, sizeof p_tok, "%s/tokenizer.bin", p_fold);
    const char *files[] = {p_rep, p_qint, p_enc, p_st, p_cfg, p_tok};
    for (int i = 0; i < 6; i++) CHECK(file_size(files[i]) > 0, "%s missing", files[i]);
    size_t n;
    char *text = slurp(p_rep, &n);
    cJSON *r = text ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(r != NULL, "report.json");

    /* the same evaluation tokens as the pipeline: the held-out last half */
    qd_model *m = qd_model_load(o.model_path, &err);
    qd_tokenizer *tok = m ? qd_tok_for_model(m, o.model_path, NULL, &err) : NULL;
    qd_tokens t = {0};
    CHECK(tok && qd_data_load(o.calib_path, tok, m->cfg.vocab_size, &t, &err) == QD_OK, "%s", err.msg);
    if (!r || !tok || !t.n) goto out;
    size_t n_ev = (size_t)floor((double)t.n * 0.5), n_cal = t.n - n_ev;
    const int *ev = t.ids + n_cal;
    int V = m->cfg.vocab_size;

    /* the integer artifact: loads, is labelled, and its runtime figure is the report's */
    char sha[65];
    CHECK(qd_sha256_path(o.model_path, sha, &err) == QD_OK, "%s", err.msg);
    CHECK(!strcmp(jstr(r, "inputs/sha256/model"), sha), "inputs.sha256.model");
    CHECK(qd_sha256_path(o.calib_path, sha, &err) == QD_OK &&
          !strcmp(jstr(r, "inputs/sha256/calibration"), sha), "inputs.sha256.calibration");
    qd_qint *qi = qd_qint_load(p_qint, &err);
    CHECK(qi != NULL, "%s", err.msg);
    if (!qi) goto out;
    CHECK(!strcmp(qi->method, "mobilequant") && !strcmp(qi->source_sha256, jstr(r, "inputs/sha256/model")),
          "metadata: method '%s' sha '%s'", qi->method, qi->source_sha256);
    CHECK(qi->wbits == wbits, "wbits %d", qi->wbits);
    qd_qrt *rt = qd_qrt_new(qi, NULL, &err);
    CHECK(rt != NULL, "%s", err.msg);
    qd_cmp_result ci = {0};
    if (rt)
        CHECK(qd_eval_compare(qd_fp32_logits_fn, m, qd_qrt_logits_fn, rt, V, ev, n_ev, o.seq_len,
                              &ci, &err) == QD_OK, "%s", err.msg);
    double rep_int = jnum(r, "eval/int/ppl"), rep_sim = jnum(r, "eval/mobilequant/ppl");
    double rep_fp = jnum(r, "eval/fp32/ppl");
    /* cJSON prints 15 significant digits when they read back within its epsilon */
    CHECK(fabs(ci.ppl - rep_int) <= 1e-12 * rep_int, "int ppl %.15g, report %.15g", ci.ppl, rep_int);
    /* the report's KL is against the FP32 reference kept once (eval.h): within 1e-5 relative
     * of the two-model comparison's */
    CHECK(fabs(ci.kl - jnum(r, "eval/int/kl")) <= 1e-5 * ci.kl + 1e-15 &&
          fabs(ci.top1 - jnum(r, "eval/int/top1")) <= 1e-12, "int kl %.12g top1 %.12g differ from the report's %.12g %.12g",
          ci.kl, ci.top1, jnum(r, "eval/int/kl"), jnum(r, "eval/int/top1"));
    /* the bound: integer runtime within 1% of the fake-quant simulation */
    printf("# W%dA8 (%s, budget 4x64x1) ppl fp32 %.4f  sim %.4f  int %.4f  (int vs sim %+.3f%%)"
           "  kl int %.4f  top1 int %.3f\n", wbits, enc_version, rep_fp, rep_sim, rep_int,
           100 * (rep_int / rep_sim - 1), jnum(r, "eval/int/kl"), jnum(r, "eval/int/top1"));
    CHECK(fabs(rep_int / rep_sim - 1) < 0.01, "int ppl %.4f vs sim %.4f", rep_int, rep_sim);

    /* a rerun of the method gives the encodings again (deterministic): its integer model is
     * the artifact, and fp-folded/ is its folded model */
    qd_mq_opts mo;
    qd_mq_defaults(&mo, wbits);
    mo.samples = o.samples, mo.seq_len = o.seq_len, mo.epochs = o.epochs, mo.seed = o.seed;
    mo.t0 = qd_now();
    qd_qsim *q = NULL;
    qd_mq_result res = {0};
    qd_encodings *E = NULL;
    CHECK(qd_mq_run(m, t.ids, n_cal, &mo, &q, &res, &err) == QD_OK, "%s", err.msg);
    if (q) E = qd_encodings_build(q, m, &err);
    CHECK(E != NULL, "%s", err.msg);
    if (E) {
        qd_qint *q2 = qd_qint_from_encodings(E, &err);
        CHECK(q2 != NULL, "%s", err.msg);
        if (q2) {
            int same = qlin_same(&q2->emb, &qi->emb);
            for (int l = 0; l < qi->cfg.n_layers; l++)
                for (int w = 0; w < QD_W_PER_LAYER; w++) same &= qlin_same(&q2->L[l].w[w], &qi->L[l].w[w]);
            size_t na = (size_t)qi->cfg.n_layers * QD_AQ_PER_LAYER + QD_AQG_COUNT;
            same &= !memcmp(q2->act, qi->act, na * sizeof *qi->act);
            CHECK(same, "the rerun's integer model differs from the artifact");
        }
        qd_qint_free(q2);
        qd_model *f = qd_model_load(p_fold, &err);
        CHECK(f != NULL, "%s", err.msg);
        if (f) {
            int T = 64, B = 2;
            float *la = malloc(sizeof(float) * B * T * V), *lb = malloc(sizeof(float) * B * T * V);
            CHECK(qd_forward(E->folded, ev, B, T, la, &err) == QD_OK &&
                  qd_forward(f, ev, B, T, lb, &err) == QD_OK, "%s", err.msg);
            float d = 0, s = 0;
            for (int i = 0; i < B * T * V; i++)
                d = fmaxf(d, fabsf(la[i] - lb[i])), s = fmaxf(s, fabsf(la[i]));
            CHECK(d <= 1e-4f, "fp-folded logits differ from E->folded by %g (max |logit| %g)", d, s);
            CHECK(f->cfg.tied_embeddings == m->cfg.tied_embeddings && f->cfg.n_layers == m->cfg.n_layers,
                  "config");
            free(la), free(lb);
        }
        qd_model_free(f);
    }
    qd_encodings_free(E);
    qd_qsim_free(q);
    qd_mq_result_free(&res);

    /* encodings.json against the artifact and fp-folded/'s tensor names */
    qd_st_file *hf = qd_st_open(p_st, &err);
    CHECK(hf != NULL, "%s", err.msg);
    if (hf) aimet_check_file(p_enc, enc_version, qi, hf);
    qd_st_close(hf);

    /* the tokenizer beside the folded model is the checkpoint's */
    qd_tokenizer *ft = qd_tok_load(p_tok, &err);
    CHECK(ft != NULL, "%s", err.msg);
    if (ft) {
        int *ia = NULL, *ib = NULL;
        size_t na = 0, nb = 0;
        const char *s = "Once upon a time, Lily saw a big red ball.";
        qd_tok_encode(tok, s, strlen(s), 1, &ia, &na, &err);
        qd_tok_encode(ft, s, strlen(s), 1, &ib, &nb, &err);
        CHECK(na > 5 && na == nb && !memcmp(ia, ib, sizeof(int) * na), "fp-folded tokenizer encodes differently");
        free(ia), free(ib);
    }
    qd_tok_free(ft);
    CHECK(!strcmp(jstr(r, "artifacts/fp-folded/tokenizer"), "tokenizer.bin"), "report tokenizer");

    /* sizes: the report's bytes are the files' */
    long bq = file_size(p_qint), be = file_size(p_enc);
    long bf = file_size(p_st) + file_size(p_cfg) + file_size(p_tok);
    CHECK(jnum(r, "size/qint_bytes") == bq && jnum(r, "artifacts/model.qint.safetensors/bytes") == bq,
          "qint bytes %g vs file %ld", jnum(r, "size/qint_bytes"), bq);
    CHECK(jnum(r, "artifacts/encodings.json/bytes") == be, "encodings bytes");
    CHECK(jnum(r, "artifacts/fp-folded/bytes") == bf, "fp-folded bytes %g vs %ld",
          jnum(r, "artifacts/fp-folded/bytes"), bf);
    double fp32 = jnum(r, "size/fp32_bytes");
    CHECK(fp32 == 4.0 * (double)qd_model_n_params(m) && jnum(r, "size/fp16_bytes") == fp32 / 2, "fp bytes");
    CHECK(fabs(jnum(r, "size/ratio_fp32") - fp32 / bq) < 1e-9 &&
          fabs(jnum(r, "size/ratio_fp16") - fp32 / 2 / bq) < 1e-9, "ratios");
    CHECK(jnum(r, "size/qint_payload_bytes") == (double)qd_qint_bytes(qi) &&
          qd_qint_bytes(qi) < (size_t)bq, "payload bytes");
    size_t nw, nbits;
    qd_qint_weight_bits(qi, &nw, &nbits);
    double bpw = jnum(r, "size/weight_bits_per_weight");
    CHECK(fabs(bpw - (double)nbits / nw) < 1e-9 && bpw > wbits && bpw < 9, "bits/weight %g", bpw);
    printf("# W%dA8 bytes: model.qint.safetensors %ld (%.2f bits/weight, %.2fx smaller than FP32 "
           "%.0f, %.2fx than FP16), encodings.json %ld, fp-folded/ %ld\n", wbits, bq, bpw,
           fp32 / bq, fp32, fp32 / 2 / bq, be, bf);

    /* per-layer errors */
    const cJSON *pl = jget(r, "per_layer");
    CHECK(cJSON_GetArraySize(pl) == m->cfg.n_layers, "per_layer length %d", cJSON_GetArraySize(pl));
    for (int l = 0; l < cJSON_GetArraySize(pl); l++) {
        const cJSON *e = cJSON_GetArrayItem(pl, l);
        double a = jnum(e, "mse"), b = jnum(e, "mse_isolated");
        CHECK(jnum(e, "layer") == l && isfinite(a) && isfinite(b) && a > 0 && b > 0,
              "per_layer[%d]: mse %g isolated %g", l, a, b);
    }
    qd_qrt_free(rt);
    qd_qint_free(qi);
out:
    cJSON_Delete(r);
    qd_tokens_free(&t);
    qd_tok_free(tok);
    qd_model_free(m);
    check_rmtree(dir);
}

static void artifacts_w8a8(void) { pipeline(8, "1.0.0"); }
static void artifacts_w4a8(void) { pipeline(4, "0.6.1"); }

static void bad_encodings_version_refused_early(void) {
    qd_quant_opts o;
    qd_quant_defaults(&o);
    o.model_path = fixture(MODEL);
    o.calib_path = fixture(TEXT);
    o.out_dir = "/tmp/qd_test_art_never";
    strcpy(o.encodings_version, "2.0");
    qd_err err = {{0}};
    double t0 = qd_now();
    CHECK(qd_quantize(&o, &err) == QD_ERR && strstr(err.msg, "encodings_version"), "%s", err.msg);
    CHECK(qd_now() - t0 < 1 && file_size(o.out_dir) < 0, "refused late");
}

int main(void) {
    RUN(vocab_roundtrip_tok512);
    RUN(vocab_gguf_as_tokenizer_bin);
    RUN(vocab_refuses_what_it_cannot_carry);
    RUN(bad_encodings_version_refused_early);
    RUN(artifacts_w8a8);
    RUN(artifacts_w4a8);
    return CHECK_DONE();
}
