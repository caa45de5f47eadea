/* report.json (report.h): the figures a run gathered, as one JSON object, written atomically.
 * Every key readers share is spelt through base/report_keys.h. */
#include "quant/report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"
#include "base/report_keys.h"
#include "base/sys.h"
#include "quant/fp/blas.h"
#include "quant/rt/int_model.h"
#include "quant/sim/fakequant.h"

void qd_layer_err_free(qd_layer_err *le) {
    free(le->mse);
    free(le->mse_iso);
    memset(le, 0, sizeof *le);
}

void qd_report_init(qd_report *r, const qd_quant_opts *o, double t0) {
    memset(r, 0, sizeof *r);
    r->o = o;
    r->t0 = t0;
}

void qd_report_clear(qd_report *r) {
    if (!r) return;
    for (int k = 0; k < QD_REPORT_MAX_VARIANTS; k++) qd_mq_result_free(&r->var[k].res);
    qd_layer_err_free(&r->layers);
}

double qd_report_ppl_increase(const qd_report *r) {
    return r->ex.cmp.ppl / r->fp32.ppl - 1;
}

static cJSON *cmp_json(const qd_cmp_result *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, QD_RK_PPL, c->ppl);
    cJSON_AddNumberToObject(o, "nll", c->nll);
    cJSON_AddNumberToObject(o, QD_RK_KL, c->kl);
    cJSON_AddNumberToObject(o, QD_RK_TOP1, c->top1);
    cJSON_AddNumberToObject(o, "seconds", c->seconds);
    return o;
}

static void add_settings(cJSON *rep, const qd_report *r) {
    const qd_quant_opts *o = r->o;
    cJSON_AddStringToObject(rep, QD_RK_VERSION, QD_REPORT_VERSION);
    cJSON_AddStringToObject(rep, QD_RK_METHOD, o->method);
    cJSON_AddNumberToObject(rep, QD_RK_WBITS, o->wbits);
    cJSON *ab = cJSON_AddObjectToObject(rep, "abits");
    for (int c = 0; c < QD_AC_COUNT; c++)
        cJSON_AddNumberToObject(ab, qd_aclass_name(c), o->abits_override[c]
                                                           ? o->abits_override[c]
                                                           : qd_aclass_default_bits(c));
    cJSON *bud = cJSON_AddObjectToObject(rep, "budget");
    cJSON_AddNumberToObject(bud, "samples", o->samples);
    cJSON_AddNumberToObject(bud, "seq_len", o->seq_len);
    cJSON_AddNumberToObject(bud, "epochs", o->epochs);
    cJSON_AddNumberToObject(bud, "windows_used", r->var[0].res.windows);
    cJSON_AddNumberToObject(bud, "batch", o->batch > 0 ? o->batch : 1);
    cJSON_AddBoolToObject(bud, "recompute", r->recompute);
    cJSON_AddNumberToObject(rep, "seed", (double)o->seed);
    cJSON_AddNumberToObject(rep, "threads", o->threads);
}

static void add_inputs(cJSON *rep, const qd_report *r) {
    const qd_quant_opts *o = r->o;
    cJSON *inp = cJSON_AddObjectToObject(rep, "inputs");
    cJSON_AddStringToObject(inp, "model", o->model_path);
    cJSON_AddStringToObject(inp, "calibration", o->calib_path);
    if (o->eval_path) cJSON_AddStringToObject(inp, "eval", o->eval_path);
    else cJSON_AddNumberToObject(inp, "eval_split", o->eval_split);
    cJSON_AddNumberToObject(inp, "calibration_tokens", (double)r->n_calib);
    cJSON_AddNumberToObject(inp, "model_params", (double)r->model_params);
    char fph[32];
    snprintf(fph, sizeof fph, "%016llx", (unsigned long long)r->fingerprint);
    cJSON_AddStringToObject(inp, "fingerprint", fph);
    cJSON *sha = cJSON_AddObjectToObject(inp, "sha256");
    cJSON_AddStringToObject(sha, "model", r->sha_model);
    cJSON_AddStringToObject(sha, "calibration", r->sha_calib);
    if (o->eval_path) cJSON_AddStringToObject(sha, "eval", r->sha_eval);
}

static void add_eval(cJSON *rep, const qd_report *r) {
    cJSON *evj = cJSON_AddObjectToObject(rep, QD_RK_EVAL);
    cJSON_AddNumberToObject(evj, "tokens", (double)r->fp32.tokens);
    cJSON_AddNumberToObject(evj, "ctx_len", r->o->seq_len);
    cJSON_AddItemToObject(evj, QD_RK_EVAL_FP32, cmp_json(&r->fp32));
    for (int k = 0; k < r->n_variants; k++)
        cJSON_AddItemToObject(evj, r->var[k].name, cmp_json(&r->var[k].cmp));
    cJSON_AddItemToObject(evj, QD_RK_EVAL_INT, cmp_json(&r->ex.cmp));
    cJSON_AddStringToObject(evj, QD_RK_EVAL_INT_OF, r->o->method);
    /* how the FP32 side was kept (computed once): what KL's tail lumps together */
    cJSON *rj = cJSON_AddObjectToObject(evj, "reference");
    cJSON_AddNumberToObject(rj, "bytes", (double)r->ref.bytes);
    cJSON_AddNumberToObject(rj, "kept_max", r->ref.kept_max);
    cJSON_AddNumberToObject(rj, "kept_mean", r->ref.kept_mean);
    cJSON_AddNumberToObject(rj, "tail_max", r->ref.tail_max);
    cJSON_AddNumberToObject(rj, "tail_mean", r->ref.tail_mean);

    const qd_layer_err *le = &r->layers;
    if (le->n > 0) {
        cJSON *pl = cJSON_AddArrayToObject(rep, QD_RK_PER_LAYER);
        for (int l = 0; l < le->n; l++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "layer", l);
            cJSON_AddNumberToObject(e, "mse", le->mse[l]);
            cJSON_AddNumberToObject(e, "mse_isolated", le->mse_iso[l]);
            cJSON_AddItemToArray(pl, e);
        }
        cJSON_AddNumberToObject(rep, "per_layer_tokens", (double)le->tokens);
    }
    cJSON *lc = cJSON_AddArrayToObject(rep, QD_RK_LOSS_CURVE);
    for (long i = 0; i < r->var[0].res.n_loss; i++)
        cJSON_AddItemToArray(lc, cJSON_CreateNumber(r->var[0].res.loss[i]));
}

/* MobileQuant's held-out model selection: which trajectory state was kept and the held-out
 * losses of every candidate (and of every W4 FP-target λ). Absent when nothing was held out. */
static void add_selection(cJSON *rep, const qd_report *r) {
    const qd_mq_result *m = &r->var[0].res;
    if (m->holdout_windows <= 0) return;
    cJSON *sel = cJSON_AddObjectToObject(rep, "selection");
    cJSON_AddNumberToObject(sel, "holdout_windows", m->holdout_windows);
    cJSON_AddNumberToObject(sel, "holdout_tokens", (double)m->holdout_windows * r->o->seq_len);
    cJSON_AddStringToObject(sel, "loss", "mse_last_block");
    cJSON *st = cJSON_AddArrayToObject(sel, "states");
    for (long i = 0; i < m->n_sel; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "step", (double)m->sel_step[i]);
        cJSON_AddNumberToObject(e, "loss", m->sel_loss[i]);
        cJSON_AddItemToArray(st, e);
    }
    cJSON_AddNumberToObject(sel, "kept_step", (double)m->kept_step);
    cJSON_AddNumberToObject(sel, "kept_loss", m->kept_loss);
    if (m->n_lambda > 0) {
        cJSON *lj = cJSON_AddArrayToObject(sel, "lambda");
        for (int i = 0; i < m->n_lambda; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "lambda", m->lambda[i]);
            cJSON_AddNumberToObject(e, "loss", m->lambda_loss[i]);
            cJSON_AddItemToArray(lj, e);
        }
        cJSON_AddNumberToObject(sel, "kept_lambda", m->kept_lambda);
    }
}

static void add_compute(cJSON *rep, const qd_report *r) {
    size_t tokens = r->fp32.tokens;
    for (int k = 0; k < r->n_variants; k++) tokens += r->var[k].res.tokens + r->var[k].cmp.tokens;
    tokens += r->ex.cmp.tokens + 3 * r->layers.tokens; /* layer errors: three passes */
    cJSON *cp = cJSON_AddObjectToObject(rep, QD_RK_COMPUTE);
    cJSON_AddNumberToObject(cp, "wall_seconds", qd_now() - r->t0);
    cJSON_AddNumberToObject(cp, "method_seconds", r->var[0].seconds);
    cJSON_AddNumberToObject(cp, "export_seconds", r->ex.seconds);
    cJSON_AddNumberToObject(cp, "tokens_processed", (double)tokens);
    cJSON_AddNumberToObject(cp, "optimizer_steps", (double)r->var[0].res.n_loss);
    cJSON_AddNumberToObject(cp, "resumed_at_step", (double)r->var[0].res.resumed_at);
    cJSON_AddNumberToObject(cp, "peak_rss_bytes", (double)qd_peak_rss());
    cJSON_AddNumberToObject(cp, "offsets_projected", (double)r->var[0].res.projected);
    /* the kernel the figures came from: MobileQuant's trajectory depends on its rounding */
    qd_blas_info bi;
    qd_blas_info_get(&bi);
    cJSON *bj = cJSON_AddObjectToObject(cp, "blas");
    cJSON_AddStringToObject(bj, "library", bi.library);
    cJSON_AddStringToObject(bj, "core", bi.core);
    cJSON_AddStringToObject(bj, "config", bi.config);
    if (bi.coretype_env[0]) cJSON_AddStringToObject(bj, "coretype_env", bi.coretype_env);
    else cJSON_AddNullToObject(bj, "coretype_env");
    cJSON_AddStringToObject(bj, "chosen_by", bi.chosen_by);
    cJSON_AddNumberToObject(bj, "threads", bi.threads);
    if (bi.thread_timeout[0]) cJSON_AddStringToObject(bj, "thread_timeout", bi.thread_timeout);
    else cJSON_AddNullToObject(bj, "thread_timeout");
    cJSON_AddStringToObject(bj, "thread_timeout_by", bi.timeout_by);
    cJSON *sj = cJSON_AddArrayToObject(cp, "stages");
    for (int i = 0; i < r->n_stages; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "phase", r->stage[i].phase);
        if (r->stage[i].variant) cJSON_AddStringToObject(e, "variant", r->stage[i].variant);
        else cJSON_AddNullToObject(e, "variant");
        cJSON_AddNumberToObject(e, "seconds", r->stage[i].seconds);
        cJSON_AddItemToArray(sj, e);
    }
    cJSON_AddNumberToObject(cp, "estimated_peak_bytes", r->est_peak_bytes);
    cJSON_AddNumberToObject(cp, "estimated_address_space_bytes", r->est_vm_bytes);
}

static void add_size(cJSON *rep, const qd_report *r) {
    const qd_report_export *ex = &r->ex;
    double np = (double)r->model_params, fp_bytes = np * 4, qb = (double)r->enc_model_bytes;
    double qib = (double)ex->qint_bytes;
    cJSON *sz = cJSON_AddObjectToObject(rep, QD_RK_SIZE);
    cJSON_AddNumberToObject(sz, "fp32_bytes", fp_bytes);
    cJSON_AddNumberToObject(sz, "quantized_bytes", qb);
    cJSON_AddNumberToObject(sz, "bits_per_weight", 8.0 * qb / np);
    cJSON_AddNumberToObject(sz, "ratio", fp_bytes / qb);
    cJSON_AddNumberToObject(sz, "weight_tensors", r->enc_weights);
    cJSON_AddNumberToObject(sz, "activation_quantizers", r->enc_activations);
    /* the artifact as written: ratios of the FP16/FP32 weights to model.qint.safetensors */
    cJSON_AddNumberToObject(sz, "fp16_bytes", fp_bytes / 2);
    cJSON_AddNumberToObject(sz, "qint_bytes", qib);
    cJSON_AddNumberToObject(sz, "qint_payload_bytes", (double)ex->payload_bytes);
    cJSON_AddNumberToObject(sz, "ratio_fp32", fp_bytes / qib);
    cJSON_AddNumberToObject(sz, "ratio_fp16", fp_bytes / 2 / qib);
    cJSON_AddNumberToObject(sz, "qint_bits_per_param", 8.0 * qib / np);
    /* matmul weights and the embedding/head table, per-channel scale and zero included */
    cJSON_AddNumberToObject(sz, "weight_bits_per_weight",
                            ex->n_weights ? (double)ex->n_bits / (double)ex->n_weights : 0);
}

static void add_artifacts(cJSON *rep, const qd_report *r) {
    const qd_report_export *ex = &r->ex;
    cJSON *art = cJSON_AddObjectToObject(rep, "artifacts");
    cJSON *a1 = cJSON_AddObjectToObject(art, "model.qint.safetensors");
    cJSON_AddNumberToObject(a1, "bytes", (double)ex->qint_bytes);
    cJSON_AddStringToObject(a1, "format", QD_QINT_FORMAT);
    cJSON_AddNumberToObject(a1, "format_version", QD_QINT_VERSION);
    cJSON *a2 = cJSON_AddObjectToObject(art, "encodings.json");
    cJSON_AddNumberToObject(a2, "bytes", (double)ex->enc_bytes);
    cJSON_AddStringToObject(a2, "format", "aimet");
    cJSON_AddStringToObject(a2, "format_version", r->o->encodings_version);
    cJSON *a3 = cJSON_AddObjectToObject(art, "fp-folded");
    cJSON_AddNumberToObject(a3, "bytes", (double)ex->folded_bytes);
    cJSON_AddStringToObject(a3, "dtype", "F32");
    if (ex->tok.name[0]) {
        cJSON_AddStringToObject(a3, "tokenizer", ex->tok.name);
        cJSON_AddStringToObject(a3, "tokenizer_source", ex->tok.source);
    } else {
        cJSON_AddNullToObject(a3, "tokenizer");
        cJSON_AddStringToObject(a3, "tokenizer_missing", ex->tok.why);
    }
}

static void add_gates(cJSON *rep, const qd_report *r) {
    if (r->o->max_ppl_increase < 0) return;
    cJSON *g = cJSON_AddObjectToObject(rep, QD_RK_GATES);
    double inc = qd_report_ppl_increase(r);
    cJSON_AddNumberToObject(g, QD_RK_GATE_MAX_PPL, r->o->max_ppl_increase);
    cJSON_AddNumberToObject(g, QD_RK_GATE_PPL_INCREASE, inc);
    cJSON_AddStringToObject(g, "of", QD_RK_EVAL_INT);
    cJSON_AddBoolToObject(g, QD_RK_GATE_PASSED, inc <= r->o->max_ppl_increase);
}

cJSON *qd_report_json(const qd_report *r) {
    cJSON *rep = cJSON_CreateObject();
    if (!rep) return NULL;
    add_settings(rep, r);
    add_inputs(rep, r);
    add_eval(rep, r);
    add_selection(rep, r);
    add_compute(rep, r);
    add_size(rep, r);
    add_artifacts(rep, r);
    add_gates(rep, r);
    return rep;
}

int qd_report_write(const qd_report *r, const char *dir, qd_err *err) {
    cJSON *rep = qd_report_json(r);
    char *text = rep ? cJSON_Print(rep) : NULL;
    cJSON_Delete(rep);
    if (!text) return qd_errf(err, "%s: out of memory", __func__);
    char path[4200];
    snprintf(path, sizeof path, "%s/report.json", dir);
    int rc = qd_write_text_atomic(path, text, err);
    free(text);
    return rc;
}

int qd_report_gate(const char *dir, int *verdict, qd_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/report.json", dir);
    size_t n;
    char *text = qd_read_file(path, 1 << 26, &n, err);
    if (!text) return QD_ERR;
    cJSON *rep = cJSON_Parse(text);
    free(text);
    if (!rep) return qd_errf(err, "%s: not JSON", path);
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(rep, QD_RK_GATES);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(g, QD_RK_GATE_PASSED);
    int rc = QD_OK;
    if (!g) *verdict = -1;
    else if (cJSON_IsBool(p)) *verdict = cJSON_IsTrue(p);
    else rc = qd_errf(err, "%s: gates.passed is missing or not a boolean", path);
    cJSON_Delete(rep);
    return rc;
}
