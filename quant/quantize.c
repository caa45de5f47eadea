/* The offline pipeline behind `quantd quantize` and `quantd work` (quantize.h): load, split
 * calibration/evaluation tokens, baselines (RTN, SmoothQuant) and the chosen method, evaluation
 * of every variant against FP32 on the same tokens, encodings, report.json. */
#include "quant/quantize.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/data.h"
#include "quant/encodings.h"
#include "quant/eval.h"
#include "quant/loadtok.h"
#include "quant/mobilequant.h"
#include "quant/optim.h"

void qd_quant_defaults(qd_quant_opts *o) {
    memset(o, 0, sizeof *o);
    o->eval_split = 0.5;
    strcpy(o->method, "mobilequant");
    o->wbits = 8;
    o->samples = 64, o->seq_len = 256, o->epochs = 10;
    o->seed = 0;
    o->threads = 1;
    o->checkpoint_every = 50;
    o->max_ppl_increase = -1;
}

static void progress(const qd_quant_opts *o, const char *phase, double t0) {
    if (!o->progress) return;
    qd_progress p = {phase, 0, 0, NAN, NAN, qd_now() - t0, NAN};
    o->progress(o->progress_ctx, &p);
}

static int mkdir_p(const char *dir, qd_err *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return qd_errf(err, "%s: path too long", dir);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST)
                return qd_errf(err, "%s: cannot create: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST)
        return qd_errf(err, "%s: cannot create: %s", buf, strerror(errno));
    return QD_OK;
}

/* Writes text to dir/name through a temp file + fsync + rename. */
static int write_atomic(const char *dir, const char *name, const char *text, qd_err *err) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return qd_errf(err, "%s: cannot create: %s", tmp, strerror(errno));
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n || fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return qd_errf(err, "%s: write failed: %s", path, strerror(errno));
    }
    return QD_OK;
}

static uint64_t file_fingerprint(uint64_t h, const char *path) {
    struct stat st;
    if (path && stat(path, &st) == 0) {
        h = qd_fnv64(h, path, strlen(path));
        int64_t v[2] = {(int64_t)st.st_size, (int64_t)st.st_mtime};
        h = qd_fnv64(h, v, sizeof v);
    }
    return h;
}

static int pretokenized(const char *path) {
    const char *ext = strrchr(path, '.');
    return ext && !strcmp(ext, ".bin");
}

static cJSON *cmp_json(const qd_cmp_result *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "ppl", r->ppl);
    cJSON_AddNumberToObject(o, "nll", r->nll);
    cJSON_AddNumberToObject(o, "kl", r->kl);
    cJSON_AddNumberToObject(o, "top1", r->top1);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    return o;
}

typedef struct {
    const char *name;
    qd_cmp_result cmp;
    qd_mq_result res;
    double seconds;
    int done;
} variant;

static int run_variant(const qd_quant_opts *o, const qd_model *m, const int *calib,
                       size_t n_calib, const int *ev, size_t n_ev, const char *method,
                       uint64_t fp, double t0, variant *v, qd_encodings **enc, qd_err *err) {
    qd_mq_opts mo;
    qd_mq_defaults(&mo, o->wbits);
    snprintf(mo.method, sizeof mo.method, "%s", method);
    memcpy(mo.abits, o->abits_override, sizeof mo.abits);
    mo.samples = o->samples, mo.seq_len = o->seq_len, mo.epochs = o->epochs;
    mo.seed = o->seed;
    if (o->batch > 0) mo.batch = o->batch;
    if (o->lr_let[0] > 0) memcpy(mo.lr_let, o->lr_let, sizeof mo.lr_let);
    if (o->lr_lwc[0] > 0) memcpy(mo.lr_lwc, o->lr_lwc, sizeof mo.lr_lwc);
    if (o->lr_lrl[0] > 0) memcpy(mo.lr_lrl, o->lr_lrl, sizeof mo.lr_lrl);
    mo.stop = o->stop, mo.progress = o->progress, mo.progress_ctx = o->progress_ctx, mo.t0 = t0;
    int main_method = !strcmp(method, o->method);
    if (main_method) {
        mo.checkpoint_path = o->checkpoint_path;
        mo.checkpoint_every = o->checkpoint_every;
        mo.fingerprint = fp;
    }
    double ts = qd_now();
    qd_qsim *q = NULL;
    v->name = method;
    int rc = qd_mq_run(m, calib, n_calib, &mo, &q, &v->res, err);
    if (rc != QD_OK) return rc;
    progress(o, "eval", t0);
    rc = qd_eval_compare(qd_fp32_logits_fn, (void *)m, qd_qsim_logits_fn, q, m->cfg.vocab_size,
                         ev, n_ev, o->seq_len, &v->cmp, err);
    if (rc == QD_OK && enc && main_method) {
        progress(o, "fold", t0);
        *enc = qd_encodings_build(q, m, err);
        if (!*enc) rc = QD_ERR;
    }
    v->seconds = qd_now() - ts;
    v->done = rc == QD_OK;
    qd_qsim_free(q);
    return rc;
}

int qd_quantize(const qd_quant_opts *o, qd_err *err) {
    double t0 = qd_now();
    if (!o->model_path || !o->calib_path || !o->out_dir)
        return qd_errf(err, "quantize: model, calibration data and output directory are required");
    if (o->wbits != 8 && o->wbits != 4) return qd_errf(err, "wbits: %d (8 or 4)", o->wbits);
    if (!o->eval_path && !(o->eval_split > 0 && o->eval_split < 1))
        return qd_errf(err, "eval_split: %g must be in (0, 1) without an eval file", o->eval_split);
    for (int i = 0; i < 16; i++)
        if (o->abits_override[i] && (o->abits_override[i] < 2 || o->abits_override[i] > 16))
            return qd_errf(err, "abits: class %d: %d bits (2..16)", i, o->abits_override[i]);
    if (o->samples < 1 || o->samples > 1 << 20 || o->seq_len < 2 || o->seq_len > QD_MAX_CTX ||
        o->epochs < 0 || o->epochs > 100000)
        return qd_errf(err, "budget: samples %d, seq_len %d, epochs %d out of range", o->samples,
                       o->seq_len, o->epochs);
    if (o->threads < 1 || o->threads > 1024)
        return qd_errf(err, "threads: %d out of range", o->threads);
    if (strcmp(o->method, "rtn") && strcmp(o->method, "smoothquant") &&
        strcmp(o->method, "omniquant") && strcmp(o->method, "mobilequant"))
        return qd_errf(err, "method: unknown '%s' (rtn, smoothquant, omniquant, mobilequant)",
                       o->method);
    if (mkdir_p(o->out_dir, err)) return QD_ERR;
    openblas_set_num_threads(o->threads);

    int rc = QD_ERR;
    qd_model *m = NULL;
    qd_tokenizer *tok = NULL;
    qd_tokens cal = {0}, evt = {0};
    qd_encodings *enc = NULL;
    cJSON *rep = NULL;
    char *text = NULL;
    variant vars[4];
    memset(vars, 0, sizeof vars);

    progress(o, "load", t0);
    m = qd_model_load(o->model_path, err);
    if (!m) goto out;
    if (!pretokenized(o->calib_path) || (o->eval_path && !pretokenized(o->eval_path))) {
        tok = qd_tok_for_model(m, o->model_path, o->tokenizer_path, err);
        if (!tok) goto out;
    }
    if (qd_data_load(o->calib_path, tok, m->cfg.vocab_size, &cal, err)) goto out;
    const int *calib = cal.ids, *ev;
    size_t n_calib = cal.n, n_ev;
    if (o->eval_path) {
        if (qd_data_load(o->eval_path, tok, m->cfg.vocab_size, &evt, err)) goto out;
        ev = evt.ids, n_ev = evt.n;
    } else {
        /* the last fraction is held out: never seen by calibration */
        n_ev = (size_t)floor((double)cal.n * o->eval_split);
        n_calib = cal.n - n_ev;
        ev = cal.ids + n_calib;
    }
    if (n_ev < 2) {
        qd_errf(err, "eval: %zu evaluation tokens, need at least 2", n_ev);
        goto out;
    }
    if (o->seq_len > m->cfg.max_seq_len) {
        qd_errf(err, "seq_len: %d exceeds the model's context %d", o->seq_len,
                m->cfg.max_seq_len);
        goto out;
    }

    /* the run's fingerprint: a checkpoint from other inputs or settings is refused */
    uint64_t fp = QD_FNV_INIT;
    fp = file_fingerprint(fp, o->model_path);
    fp = qd_fnv64(fp, calib, sizeof(int) * n_calib);
    fp = qd_fnv64(fp, o->method, strlen(o->method));
    int32_t knobs[24] = {o->wbits, o->samples, o->seq_len, o->epochs, o->batch};
    memcpy(knobs + 5, o->abits_override, sizeof(int) * 16);
    fp = qd_fnv64(fp, knobs, sizeof knobs);
    fp = qd_fnv64(fp, &o->seed, sizeof o->seed);
    double lrs[6] = {o->lr_let[0], o->lr_let[1], o->lr_lwc[0], o->lr_lwc[1], o->lr_lrl[0],
                     o->lr_lrl[1]};
    fp = qd_fnv64(fp, lrs, sizeof lrs);

    /* FP32 reference */
    progress(o, "eval", t0);
    qd_cmp_result fp32;
    if (qd_eval_compare(qd_fp32_logits_fn, m, qd_fp32_logits_fn, m, m->cfg.vocab_size, ev, n_ev,
                        o->seq_len, &fp32, err))
        goto out;

    /* the chosen method first (it is the one that can be stopped and resumed), then the
     * baselines that are not it */
    const char *order[3] = {o->method, "rtn", "smoothquant"};
    int nv = 0;
    for (int k = 0; k < 3; k++) {
        if (k > 0 && !strcmp(order[k], o->method)) continue;
        int r = run_variant(o, m, calib, n_calib, ev, n_ev, order[k], fp, t0, &vars[nv],
                            k == 0 ? &enc : NULL, err);
        nv++;
        if (r == 1) {
            rc = 1; /* stopped: the checkpoint holds the state */
            goto out;
        }
        if (r != QD_OK) goto out;
    }

    /* report.json */
    progress(o, "export", t0);
    rep = cJSON_CreateObject();
    cJSON_AddStringToObject(rep, "version", "quantd-report/1");
    cJSON_AddStringToObject(rep, "method", o->method);
    cJSON_AddNumberToObject(rep, "wbits", o->wbits);
    cJSON *ab = cJSON_AddObjectToObject(rep, "abits");
    for (int c = 0; c < QD_AC_COUNT; c++)
        cJSON_AddNumberToObject(ab, qd_aclass_name(c), o->abits_override[c]
                                                           ? o->abits_override[c]
                                                           : qd_aclass_default_bits(c));
    cJSON *bud = cJSON_AddObjectToObject(rep, "budget");
    cJSON_AddNumberToObject(bud, "samples", o->samples);
    cJSON_AddNumberToObject(bud, "seq_len", o->seq_len);
    cJSON_AddNumberToObject(bud, "epochs", o->epochs);
    cJSON_AddNumberToObject(bud, "windows_used", vars[0].res.windows);
    cJSON_AddNumberToObject(bud, "batch", o->batch > 0 ? o->batch : 1);
    cJSON_AddNumberToObject(rep, "seed", (double)o->seed);
    cJSON_AddNumberToObject(rep, "threads", o->threads);
    cJSON *inp = cJSON_AddObjectToObject(rep, "inputs");
    cJSON_AddStringToObject(inp, "model", o->model_path);
    cJSON_AddStringToObject(inp, "calibration", o->calib_path);
    if (o->eval_path) cJSON_AddStringToObject(inp, "eval", o->eval_path);
    else cJSON_AddNumberToObject(inp, "eval_split", o->eval_split);
    cJSON_AddNumberToObject(inp, "calibration_tokens", (double)n_calib);
    cJSON_AddNumberToObject(inp, "model_params", (double)qd_model_n_params(m));
    char fph[32];
    snprintf(fph, sizeof fph, "%016llx", (unsigned long long)fp);
    cJSON_AddStringToObject(inp, "fingerprint", fph);

    cJSON *evj = cJSON_AddObjectToObject(rep, "eval");
    cJSON_AddNumberToObject(evj, "tokens", (double)fp32.tokens);
    cJSON_AddNumberToObject(evj, "ctx_len", o->seq_len);
    cJSON_AddItemToObject(evj, "fp32", cmp_json(&fp32));
    for (int k = 0; k < nv; k++) cJSON_AddItemToObject(evj, vars[k].name, cmp_json(&vars[k].cmp));

    cJSON *lc = cJSON_AddArrayToObject(rep, "loss_curve");
    for (long i = 0; i < vars[0].res.n_loss; i++)
        cJSON_AddItemToArray(lc, cJSON_CreateNumber(vars[0].res.loss[i]));

    double wall = qd_now() - t0;
    size_t tokens = fp32.tokens;
    for (int k = 0; k < nv; k++) tokens += vars[k].res.tokens + vars[k].cmp.tokens;
    cJSON *cp = cJSON_AddObjectToObject(rep, "compute");
    cJSON_AddNumberToObject(cp, "wall_seconds", wall);
    cJSON_AddNumberToObject(cp, "method_seconds", vars[0].seconds);
    cJSON_AddNumberToObject(cp, "tokens_processed", (double)tokens);
    cJSON_AddNumberToObject(cp, "optimizer_steps", (double)vars[0].res.n_loss);
    cJSON_AddNumberToObject(cp, "resumed_at_step", (double)vars[0].res.resumed_at);
    cJSON_AddNumberToObject(cp, "peak_rss_bytes", (double)qd_peak_rss());

    if (enc) {
        size_t fp_bytes = qd_model_n_params(m) * 4, qb = qd_encodings_model_bytes(enc);
        cJSON *sz = cJSON_AddObjectToObject(rep, "size");
        cJSON_AddNumberToObject(sz, "fp32_bytes", (double)fp_bytes);
        cJSON_AddNumberToObject(sz, "quantized_bytes", (double)qb);
        cJSON_AddNumberToObject(sz, "bits_per_weight",
                                8.0 * (double)qb / (double)qd_model_n_params(m));
        cJSON_AddNumberToObject(sz, "ratio", (double)fp_bytes / (double)qb);
        cJSON_AddNumberToObject(sz, "weight_tensors", enc->n_w);
        cJSON_AddNumberToObject(sz, "activation_quantizers", enc->n_a);
    }
    if (o->max_ppl_increase >= 0) {
        cJSON *g = cJSON_AddObjectToObject(rep, "gates");
        double inc = vars[0].cmp.ppl / fp32.ppl - 1;
        cJSON_AddNumberToObject(g, "max_ppl_increase", o->max_ppl_increase);
        cJSON_AddNumberToObject(g, "ppl_increase", inc);
        cJSON_AddBoolToObject(g, "passed", inc <= o->max_ppl_increase);
    }
    text = cJSON_Print(rep);
    if (!text) {
        qd_errf(err, "report: out of memory");
        goto out;
    }
    if (write_atomic(o->out_dir, "report.json", text, err)) goto out;
    /* the run is complete: its checkpoint would only make a rerun skip the work */
    if (o->checkpoint_path) unlink(o->checkpoint_path);
    rc = QD_OK;
out:
    for (int k = 0; k < 4; k++) qd_mq_result_free(&vars[k].res);
    cJSON_Delete(rep);
    free(text);
    qd_encodings_free(enc);
    qd_tokens_free(&cal);
    qd_tokens_free(&evt);
    qd_tok_free(tok);
    qd_model_free(m);
    return rc;
}
