/* The offline pipeline behind `quantd quantize` and `quantd work` (quantize.h): load, split
 * calibration/evaluation tokens, baselines (RTN, SmoothQuant) and the chosen method, evaluation
 * of every variant against FP32 on the same tokens, encodings, the deployable artifacts
 * (model.qint.safetensors, encodings.json, fp-folded/ with its tokenizer), the integer
 * runtime's figures measured on the artifact as written, report.json. */
#include "quant/quantize.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/estimate.h"
#include "quant/export/aimet.h"
#include "quant/text/data.h"
#include "quant/sim/encodings.h"
#include "quant/fp/eval.h"
#include "quant/io/gguf.h"
#include "quant/text/resolve.h"
#include "quant/opt/mobilequant.h"
#include "quant/opt/optim.h"
#include "quant/rt/int_model.h"
#include "quant/rt/runtime.h"
#include "quant/text/vocab_write.h"
#include "base/fs.h"
#include "base/hash.h"
#include "base/limits.h"
#include "base/pool.h"
#include "base/stop.h"
#include "base/str.h"
#include "base/sys.h"
#include "quant/io/load.h"
#include "quant/report.h"
#include "base/report_keys.h"

void qd_quant_defaults(qd_quant_opts *o) {
    memset(o, 0, sizeof *o);
    o->eval_split = QD_EVAL_SPLIT_DEFAULT;
    snprintf(o->method, sizeof o->method, "%s", qd_method_name(QD_METHOD_DEFAULT));
    o->wbits = QD_WBITS_DEFAULT;
    o->samples = QD_SAMPLES_DEFAULT, o->seq_len = QD_SEQ_LEN_DEFAULT;
    o->epochs = QD_EPOCHS_DEFAULT;
    o->seed = 0;
    o->threads = 1;
    o->checkpoint_every = QD_CHECKPOINT_EVERY_DEFAULT;
    o->max_ppl_increase = -1;
    o->recompute = QD_RECOMPUTE_AUTO;
    snprintf(o->encodings_version, sizeof o->encodings_version, "%s", QD_ENC_VERSION_DEFAULT);
}

/* ---- progress: where a phase stands in the whole run ---------------------------------------

 * The run's plan is its stages in order, each with a predicted cost in forward-token
 * equivalents (a training step's forward and backward 6 per token). Every report of a phase
 * (from here, the evaluation's windows, the optimizers) is matched to its stage, named by its
 * variant, and given the overall ETA: what is left of this stage plus the later stages' costs,
 * each at the seconds per cost unit that finished stages of its phase took (of any phase before
 * one has finished). An estimate: it sharpens as the run goes. */

typedef struct {
    const char *phase, *variant;
    double cost;           /* predicted; 0: not counted in the rate (load) */
    double t_start, t_end; /* qd_now(); 0 before */
} stage;

typedef struct tracker {
    const qd_quant_opts *o;
    double t0;
    stage st[QD_REPORT_MAX_STAGES];
    int n, cur;            /* cur: the stage under way, -1 before the first */
    const char *variant;   /* what the pipeline runs now */
} tracker;

static void plan_add(tracker *tr, const char *phase, const char *variant, double cost) {
    if (tr->n < QD_REPORT_MAX_STAGES) tr->st[tr->n++] = (stage){phase, variant, cost, 0, 0};
}

/* The stages of a run of o over n_calib calibration and n_ev evaluation tokens (the windows
 * as qd_mq_run chooses them, near enough for a plan). */
static void plan(tracker *tr, size_t n_calib, size_t n_ev) {
    const qd_quant_opts *o = tr->o;
    double T = o->seq_len, ev = (double)n_ev;
    double nw = (double)(n_calib / (size_t)o->seq_len);
    if (nw > o->samples || nw < 1) nw = o->samples;
    double B = o->batch > 0 ? o->batch : 1;
    tr->n = 0;
    plan_add(tr, "load", NULL, 0);
    plan_add(tr, "eval", QD_RK_EVAL_FP32, ev);
    /* run_variants' order: the baselines, then the chosen method */
    const char *order[3] = {qd_method_name(QD_METHOD_RTN), qd_method_name(QD_METHOD_SMOOTHQUANT),
                            o->method};
    for (int k = 0; k < 3; k++) {
        if (k < 2 && !strcmp(order[k], o->method)) continue;
        const char *v = order[k];
        int train = !strcmp(v, qd_method_name(QD_METHOD_MOBILEQUANT)) ||
                    !strcmp(v, qd_method_name(QD_METHOD_OMNIQUANT));
        /* two statistics passes (RTN one: no SmoothQuant scales; SmoothQuant one after RTN,
         * whose pass it shares), a forward each */
        int passes = !strcmp(v, qd_method_name(QD_METHOD_RTN)) ? 1 : 2;
        if (!strcmp(v, qd_method_name(QD_METHOD_SMOOTHQUANT)) &&
            strcmp(o->method, qd_method_name(QD_METHOD_RTN)))
            passes = 1;
        plan_add(tr, "calibrate", v, passes * nw * T * 2);
        if (train && o->epochs > 0)
            plan_add(tr, "optimize", v, ceil(nw / B) * o->epochs * B * T * 6 + nw * T * 2);
        if (!strcmp(v, qd_method_name(QD_METHOD_MOBILEQUANT)))
            /* a GPTQ run about two statistics passes' time (bench_calib), twice at W4 with
             * the FP stream, and there once per ridge λ (six) */
            plan_add(tr, "gptq", v, nw * T * 4 * (o->wbits < 8 ? 12 : 1));
        plan_add(tr, "eval", v, ev + (k == 2 ? 3 * fmin(8, ev / T) * T : 0));
        if (k == 2) plan_add(tr, "fold", v, ev * 0.01);
    }
    plan_add(tr, "export", NULL, ev * 0.1);
    plan_add(tr, "eval", QD_RK_EVAL_INT, ev);
}

/* seconds per cost unit of the finished stages of this phase (NULL: of any), NAN before the
 * first */
static double rate(const tracker *tr, const char *phase) {
    double s = 0, c = 0;
    for (int i = 0; i < tr->n; i++)
        if (tr->st[i].t_end > 0 && tr->st[i].cost > 0 && (!phase || !strcmp(phase, tr->st[i].phase)))
            s += tr->st[i].t_end - tr->st[i].t_start, c += tr->st[i].cost;
    return c > 0 ? s / c : phase ? rate(tr, NULL) : NAN;
}

/* Fills in where p stands and hands it to the caller's callback. */
static void track_report(tracker *tr, qd_progress *p) {
    const qd_quant_opts *o = tr->o;
    double now = qd_now();
    /* the stage: the first from the current one on with this phase and variant */
    const char *v = !strcmp(p->phase, "load") || !strcmp(p->phase, "export") ? NULL : tr->variant;
    for (int i = tr->cur < 0 ? 0 : tr->cur; i < tr->n; i++)
        if (!strcmp(tr->st[i].phase, p->phase) &&
            (!v || !tr->st[i].variant || !strcmp(tr->st[i].variant, v))) {
            if (i != tr->cur) {
                if (tr->cur >= 0) tr->st[tr->cur].t_end = now;
                tr->cur = i;
                tr->st[i].t_start = now;
            }
            break;
        }
    p->elapsed_s = now - tr->t0;
    p->variant = tr->cur >= 0 ? tr->st[tr->cur].variant : NULL;
    p->stage = tr->cur + 1, p->stages = tr->n;
    if (isnan(p->eta_s) && tr->cur >= 0 && p->step > 0 && p->total > 0)
        p->eta_s = (now - tr->st[tr->cur].t_start) / (double)p->step *
                   (double)(p->total - p->step);
    p->eta_total_s = NAN;
    if (!isnan(rate(tr, NULL)) && tr->cur >= 0) {
        const stage *c = &tr->st[tr->cur];
        double left = !isnan(p->eta_s) ? p->eta_s
                                       : fmax(0, c->cost * rate(tr, c->phase) - (now - c->t_start));
        for (int i = tr->cur + 1; i < tr->n; i++) left += tr->st[i].cost * rate(tr, tr->st[i].phase);
        p->eta_total_s = left;
    }
    if (o->progress) o->progress(o->progress_ctx, p);
}

/* A report of the pipeline's own (step/total; 0/0 when not counted). */
static void track(tracker *tr, const char *phase, long step, long total) {
    if (!tr) return; /* qd_quantize_check: no progress */
    qd_progress p = {phase, step, total, NAN, NAN, 0, NAN, NULL, 0, 0, NAN};
    track_report(tr, &p);
}

/* The optimizers' reports pass through here (qd_mq_opts.progress). */
static void track_fn(void *ctx, const qd_progress *in) {
    qd_progress p = *in;
    track_report(ctx, &p);
}

/* The evaluation's windows (qd_eval_tick). */
static void track_eval(void *ctx, long done, long total) { track(ctx, "eval", done, total); }

/* Replaces dir/name by n bytes (qd_write_file_atomic: unique temp, fsync, rename, fsync of dir). */
static int write_atomic_n(const char *dir, const char *name, const void *data, size_t n,
                          qd_err *err) {
    char path[4400];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return qd_errf(err, "%s/%s: path too long", dir, name);
    return qd_write_file_atomic(path, data, n, err);
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

/* Token ids already (.bin, .u32.bin), so no tokenizer is needed: the data reader's rule. */
static int pretokenized(const char *path) {
    int f = qd_data_format_of(path);
    return f == QD_DATA_U16 || f == QD_DATA_U32;
}

/* Measures le on at most LAYER_ERR_WINDOWS windows of the evaluation tokens: a chart for the
 * dashboard, not a benchmark. Both passes keep the LET on: folded into FP32 weights it is
 * exact, so the pass with the quantizers off is the FP32 model. Costs about three forwards. */
#define LAYER_ERR_WINDOWS 8
static int layer_errors(qd_qsim *q, const int *ev, size_t n_ev, int T, qd_layer_err *le,
                        qd_err *err) {
    const qd_config *c = &q->cfg;
    int D = c->dim, nl = c->n_layers;
    if ((size_t)T > n_ev) T = (int)n_ev;
    if (T > q->o.Tmax) T = q->o.Tmax;
    int nw = (int)(n_ev / (size_t)T);
    if (nw > LAYER_ERR_WINDOWS) nw = LAYER_ERR_WINDOWS;
    int Bm = q->o.Bmax < nw ? q->o.Bmax : nw;
    size_t sz = (size_t)Bm * T * D;
    qd_real *buf = malloc(sizeof(qd_real) * sz * 5);
    le->mse = calloc((size_t)nl, sizeof *le->mse);
    le->mse_iso = calloc((size_t)nl, sizeof *le->mse_iso);
    if (!buf || !le->mse || !le->mse_iso) {
        free(buf);
        qd_layer_err_free(le);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    le->n = nl;
    int sa = q->aq_on, sw = q->wq_on;
    for (int w0 = 0; w0 < nw; w0 += Bm) {
        int nb = nw - w0 < Bm ? nw - w0 : Bm;
        size_t N = (size_t)nb * T * D;
        const int *tok = ev + (size_t)w0 * T;
        qd_real *xf = buf, *yf = buf + sz, *xq = buf + 2 * sz, *yq = buf + 3 * sz,
                *yi = buf + 4 * sz;
        q->rc.cursor = 0;
        q->aq_on = q->wq_on = 0;
        qd_qsim_embed(q, tok, nb, T, xf);
        q->aq_on = sa, q->wq_on = sw;
        qd_qsim_embed(q, tok, nb, T, xq);
        for (int l = 0; l < nl; l++) {
            if (qd_stop_requested()) {
                q->aq_on = sa, q->wq_on = sw;
                free(buf);
                qd_layer_err_free(le);
                return qd_stopped(err);
            }
            q->aq_on = q->wq_on = 0;
            qd_qsim_layer_forward(q, l, xf, yf, nb, T);
            q->aq_on = sa, q->wq_on = sw;
            qd_qsim_layer_forward(q, l, xq, yq, nb, T);
            qd_qsim_layer_forward(q, l, xf, yi, nb, T);
            double a = 0, b = 0;
            for (size_t i = 0; i < N; i++) {
                double d = (double)yq[i] - yf[i], e = (double)yi[i] - yf[i];
                a += d * d, b += e * e;
            }
            le->mse[l] += a, le->mse_iso[l] += b;
            qd_real *t = xf;
            xf = yf, yf = t;
            t = xq, xq = yq, yq = t;
        }
    }
    q->aq_on = sa, q->wq_on = sw;
    free(buf);
    double n = (double)nw * T * D;
    for (int l = 0; l < nl; l++) le->mse[l] /= n, le->mse_iso[l] /= n;
    le->tokens = (size_t)nw * T;
    return QD_OK;
}

/* One variant: calibrate (and train) it, evaluate it against ref. For the chosen method (enc
 * set) also its per-layer errors and its encodings, folded into *own itself: the model is
 * handed over (*own = NULL, it is (*enc)->folded now), since nothing reads it after the last
 * variant. */
static int run_variant(const qd_quant_opts *o, qd_model **own, const int *calib,
                       size_t n_calib, const qd_eval_ref *ref, const int *ev, size_t n_ev,
                       const char *method, uint64_t fp, int recompute, qd_qstats **shared,
                       tracker *tr, qd_report_variant *v, qd_encodings **enc, qd_layer_err *le,
                       qd_err *err) {
    const qd_model *m = *own;
    qd_mq_opts mo;
    qd_mq_defaults(&mo, o->wbits);
    snprintf(mo.method, sizeof mo.method, "%s", method);
    memcpy(mo.abits, o->abits_override, sizeof mo.abits);
    mo.samples = o->samples, mo.seq_len = o->seq_len, mo.epochs = o->epochs;
    mo.seed = o->seed;
    mo.recompute = recompute;
    mo.share_stats = shared;
    if (o->batch > 0) mo.batch = o->batch;
    if (o->lr_let[0] > 0) memcpy(mo.lr_let, o->lr_let, sizeof mo.lr_let);
    if (o->lr_lwc[0] > 0) memcpy(mo.lr_lwc, o->lr_lwc, sizeof mo.lr_lwc);
    if (o->lr_lrl[0] > 0) memcpy(mo.lr_lrl, o->lr_lrl, sizeof mo.lr_lrl);
    mo.progress = track_fn, mo.progress_ctx = tr, mo.t0 = tr->t0;
    tr->variant = method;
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
    track(tr, "eval", 0, 0);
    rc = qd_eval_ref_compare(ref, qd_qsim_logits_fn, q, track_eval, tr, &v->cmp, err);
    if (rc == QD_OK && le && main_method) rc = layer_errors(q, ev, n_ev, o->seq_len, le, err);
    if (rc == QD_OK && enc && main_method) {
        track(tr, "fold", 0, 1);
        *enc = qd_encodings_build_into(q, *own, err);
        *own = NULL;
        if (!*enc) rc = QD_ERR;
        else track(tr, "fold", 1, 1);
    }
    v->seconds = qd_now() - ts;
    qd_qsim_free(q);
    return rc;
}

/* ---- artifacts ---------------------------------------------------------------------------- */

static int is_regular(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Bytes on disk of a file, or of the regular files directly inside a directory. */
static size_t disk_bytes(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (!S_ISDIR(st.st_mode)) return (size_t)st.st_size;
    size_t total = 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *de;
    char p[4400];
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", path, de->d_name);
            if (is_regular(p)) total += disk_bytes(p);
        }
    closedir(d);
    return total;
}

#define TOKFILE_COPY_MAX (256u << 20)

static int copy_into(const char *src, const char *dir, const char *name, qd_err *err) {
    size_t n;
    void *data = qd_read_file(src, TOKFILE_COPY_MAX, &n, err);
    if (!data) return QD_ERR;
    int rc = write_atomic_n(dir, name, data, n, err);
    free(data);
    return rc;
}

/* Puts the model's tokenizer into dir: the user's tokenizer file copied as it is (a .gguf
 * given as tokenizer has its vocabulary written out), else the checkpoint's own vocabulary
 * (GGUF) written as tokenizer.bin (a byte-level BPE one as tokenizer.json), else a
 * tokenizer.json / tokenizer.bin found beside the checkpoint copied. A vocabulary that tokenizer.bin cannot carry leaves dir without one and
 * says why: the artifacts stay usable with --tokenizer. */
static void write_tokenizer(const qd_quant_opts *o, const qd_model *m, const char *dir,
                            qd_report_tokenizer *t) {
    memset(t, 0, sizeof *t);
    qd_err e = {{0}};
    const char *src = NULL;
    char cand[4200];
    if (o->tokenizer_path) {
        src = o->tokenizer_path;
    } else if (!m->vocab) {
        char base[4096];
        struct stat st;
        snprintf(base, sizeof base, "%s", o->model_path);
        if (!(stat(base, &st) == 0 && S_ISDIR(st.st_mode))) {
            char *slash = strrchr(base, '/');
            if (slash) *slash = 0;
            else strcpy(base, ".");
        }
        static const char *names[] = {"tokenizer.json", "tokenizer.bin"};
        for (int i = 0; i < 2 && !src; i++) {
            snprintf(cand, sizeof cand, "%s/%s", base, names[i]);
            if (is_regular(cand)) src = cand;
        }
        if (!src) {
            snprintf(t->why, sizeof t->why, "the checkpoint carries no vocabulary and no "
                     "tokenizer was given or found beside it");
            return;
        }
    }
    int rc;
    /* the same rule as qd_tok_load's for which format a path holds */
    if (src && !qd_has_ext(src, ".gguf")) {
        int json = qd_has_ext(src, ".json");
        snprintf(t->name, sizeof t->name, "%s", json ? "tokenizer.json" : "tokenizer.bin");
        snprintf(t->source, sizeof t->source, "%s", src);
        rc = copy_into(src, dir, t->name, &e);
    } else {
        qd_vocab *v = src ? qd_gguf_load_vocab(src, &e) : m->vocab;
        int bpe = v && v->kind == QD_VOCAB_BPE; /* byte-level: merges need tokenizer.json */
        snprintf(t->name, sizeof t->name, "%s", bpe ? "tokenizer.json" : "tokenizer.bin");
        snprintf(t->source, sizeof t->source, "%s", src ? src : o->model_path);
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, t->name);
        rc = !v ? QD_ERR : bpe ? qd_vocab_save_hf(v, path, &e) : qd_vocab_save_llama2c(v, path, &e);
        if (src) qd_vocab_free(v);
    }
    if (rc != QD_OK) {
        t->name[0] = 0;
        snprintf(t->why, sizeof t->why, "%s", e.msg);
    }
}

/* Writes model.qint.safetensors, encodings.json and fp-folded/ from the final encodings, then
 * reads the integer artifact back from disk and evaluates it with the integer runtime on the
 * evaluation tokens: the figure is the artifact's, not the in-memory model's. */
static int export_artifacts(const qd_quant_opts *o, const qd_model *m, const qd_encodings *E,
                            const char *model_sha, const qd_eval_ref *ref, tracker *tr,
                            qd_report_export *x, qd_err *err) {
    double ts = qd_now();
    memset(x, 0, sizeof *x);
    char qpath[4200], epath[4200], fdir[4200];
    snprintf(qpath, sizeof qpath, "%s/model.qint.safetensors", o->out_dir);
    snprintf(epath, sizeof epath, "%s/encodings.json", o->out_dir);
    snprintf(fdir, sizeof fdir, "%s/fp-folded", o->out_dir);
    qd_qint *qi = qd_qint_from_encodings(E, err);
    if (!qi) return QD_ERR;
    snprintf(qi->method, sizeof qi->method, "%s", o->method);
    snprintf(qi->source_sha256, sizeof qi->source_sha256, "%s", model_sha);
    int rc = QD_ERR;
    qd_qrt *rt = NULL;
    /* between the writers: each is seconds at most even at a billion parameters */
    track(tr, "export", 1, 5);
    if (qd_stop_requested() || qd_qint_save(qi, qpath, err) || qd_stop_requested())
        goto out;
    track(tr, "export", 2, 5);
    if (qd_aimet_write(qi, epath, o->encodings_version, err) || qd_stop_requested()) goto out;
    track(tr, "export", 3, 5);
    if (qd_save_hf(E->folded, fdir, "F32", err) || qd_stop_requested()) goto out;
    track(tr, "export", 4, 5);
    write_tokenizer(o, m, fdir, &x->tok);
    x->payload_bytes = qd_qint_bytes(qi);
    qd_qint_weight_bits(qi, &x->n_weights, &x->n_bits);
    track(tr, "export", 5, 5);
    qd_qrt_opts ro;
    qd_qrt_defaults(&ro);
    ro.threads = 0; /* the default pool, of o->threads */
    if (!(rt = qd_qrt_load(qpath, &ro, err))) goto out;
    tr->variant = QD_RK_EVAL_INT;
    track(tr, "eval", 0, 0);
    if (qd_eval_ref_compare(ref, qd_qrt_logits_fn, rt, track_eval, tr, &x->cmp, err)) goto out;
    x->qint_bytes = disk_bytes(qpath);
    x->enc_bytes = disk_bytes(epath);
    x->folded_bytes = disk_bytes(fdir);
    rc = QD_OK;
out:
    qd_qrt_free(rt);
    qd_qint_free(qi);
    x->seconds = qd_now() - ts;
    return rc;
}

/* ---- the pipeline's stages -------------------------------------------------------------- */

/* Settings that need no file to judge, against base/limits.h's table. */
/* The field a check names: a job spec's JSON path. */
static int failf(char *field, const char *name, qd_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int failf(char *field, const char *name, qd_err *err, const char *fmt, ...) {
    snprintf(field, QD_CHECK_FIELD, "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return QD_ERR;
}

/* A failure whose err is already set: names the field. */
static int at_field(char *field, const char *name) {
    snprintf(field, QD_CHECK_FIELD, "%s", name);
    return QD_ERR;
}

static int validate(const qd_quant_opts *o, char *field, qd_err *err) {
    field[0] = 0;
    if (!o->model_path || !o->calib_path || !o->out_dir)
        return qd_errf(err, "quantize: model, calibration data and output directory are required");
    if (!qd_wbits_ok(o->wbits))
        return failf(field, "wbits", err, "wbits: %d is not one of %s", o->wbits, QD_WBITS_NAMES);
    if (!o->eval_path && !(o->eval_split > 0 && o->eval_split < 1))
        return failf(field, "eval_split", err, "eval_split: %g must be in (0, 1) without an eval file",
                     o->eval_split);
    for (int i = 0; i < 16; i++) {
        const char *allowed = QD_ABITS_NAMES;
        if (!o->abits_override[i]) continue;
        if (i >= QD_N_ACLASS || !qd_abits_ok(o->abits_override[i]) ||
            !qd_qrt_abits_ok(i, o->abits_override[i], &allowed)) {
            char f[QD_CHECK_FIELD];
            snprintf(f, sizeof f, "abits.%s", i < QD_N_ACLASS ? qd_aclass_name(i) : "?");
            return failf(field, f, err,
                         "abits: class %s: %d bits: the integer model takes %s for this class",
                         i < QD_N_ACLASS ? qd_aclass_name(i) : "?", o->abits_override[i], allowed);
        }
    }
#define IN(v, lo, hi) ((v) >= (lo) && (v) <= (hi))
    if (!IN(o->samples, QD_SAMPLES_MIN, QD_SAMPLES_MAX) ||
        !IN(o->seq_len, QD_SEQ_LEN_MIN, QD_SEQ_LEN_MAX) ||
        !IN(o->epochs, QD_EPOCHS_MIN, QD_EPOCHS_MAX))
        return qd_errf(err, "budget: samples %d [%d, %d], seq_len %d [%d, %d], epochs %d [%d, %d]: "
                       "out of range", o->samples, QD_SAMPLES_MIN, QD_SAMPLES_MAX, o->seq_len,
                       QD_SEQ_LEN_MIN, QD_SEQ_LEN_MAX, o->epochs, QD_EPOCHS_MIN, QD_EPOCHS_MAX);
    if (!IN(o->threads, QD_THREADS_MIN, QD_THREADS_MAX))
        return qd_errf(err, "threads: %d is not in [%d, %d]", o->threads, QD_THREADS_MIN,
                       QD_THREADS_MAX);
    if (!IN(o->batch, 0, QD_BATCH_MAX))
        return qd_errf(err, "batch: %d is not in [0, %d]", o->batch, QD_BATCH_MAX);
    if (!IN(o->checkpoint_every, 0, QD_CHECKPOINT_EVERY_MAX))
        return qd_errf(err, "checkpoint_every: %d is not in [0, %d]", o->checkpoint_every,
                       QD_CHECKPOINT_EVERY_MAX);
#undef IN
    qd_method m;
    if (qd_method_parse(o->method, &m, err)) return QD_ERR;
    if (!qd_enc_version_ok(o->encodings_version))
        return qd_errf(err, "encodings_version: \"%.8s\" is not one of %s", o->encodings_version,
                       QD_ENC_VERSION_NAMES);
    return QD_OK;
}

/* What a run loads: the model, its tokenizer, calibration and evaluation tokens. */
typedef struct {
    qd_model *m;
    qd_tokenizer *tok;
    qd_tokens cal, evt;
    const int *calib, *ev; /* into cal / evt */
    size_t n_calib, n_ev;
    qd_estimate est;       /* the run's cost, from the headers and the token counts */
    int recompute;         /* the training simulation recomputes (quantize.h; resolved) */
    int probe;             /* the estimate probes this machine's sgemm rate (its time part) */
} inputs;

/* What a memory limit is held against: the address space with a limit (max_mem, RLIMIT_AS),
 * else the resident peak (against the machine's memory). */
static double limited_bytes(const qd_estimate *e, size_t max_mem) {
    return max_mem > 0 ? e->vm_bytes : e->peak_bytes;
}

/* The part of p with the most bytes: what a refusal names. */
static int largest_part(const qd_est_phase *p) {
    int k = 0;
    for (int i = 1; i < p->n_parts; i++)
        if (p->part[i].bytes > p->part[k].bytes) k = i;
    return k;
}

static void inputs_free(inputs *in) {
    qd_tokens_free(&in->cal);
    qd_tokens_free(&in->evt);
    qd_tok_free(in->tok);
    qd_model_free(in->m);
}

/* Loads the model and the data, hashes the input files into the report, and splits the
 * calibration tokens when no evaluation file is given (the last fraction is held out: never
 * seen by calibration). */
static int load_inputs(const qd_quant_opts *o, inputs *in, qd_report *rep, tracker *tr,
                       char *field, qd_err *err) {
    /* Everything that can be known before any work comes first, from the checkpoint's headers
     * (qd_quantize_check stops after it): the model's format, architecture, context and tensor
     * types, its tokenizer, the data's format and size. The weights are read last. */
    track(tr, "load", 0, 3);
    if (!(in->m = qd_model_probe(o->model_path, err))) return at_field(field, "model");
    const qd_model *m = in->m;
    if (o->seq_len > m->cfg.max_seq_len)
        return failf(field, "budget.seq_len", err, "seq_len: %d exceeds the model's context %d",
                     o->seq_len, m->cfg.max_seq_len);
    if (!pretokenized(o->calib_path) || (o->eval_path && !pretokenized(o->eval_path))) {
        in->tok = qd_tok_for_model(m, o->model_path, o->tokenizer_path, err);
        if (!in->tok)
            return at_field(field, m->vocab && !o->tokenizer_path ? "model" : "tokenizer");
    }
    if (qd_stop_requested() ||
        qd_data_load(o->calib_path, in->tok, m->cfg.vocab_size, &in->cal, err))
        return at_field(field, "calibration");
    in->calib = in->cal.ids, in->n_calib = in->cal.n;
    if (o->eval_path) {
        if (qd_data_load(o->eval_path, in->tok, m->cfg.vocab_size, &in->evt, err))
            return at_field(field, "eval");
        in->ev = in->evt.ids, in->n_ev = in->evt.n;
    } else {
        in->n_ev = (size_t)floor((double)in->cal.n * o->eval_split);
        in->n_calib = in->cal.n - in->n_ev;
        in->ev = in->cal.ids + in->n_calib;
    }
    if (in->n_ev < 2)
        return failf(field, o->eval_path ? "eval" : "eval_split", err,
                     "eval: %zu evaluation tokens, need at least 2", in->n_ev);
    /* the run's peak memory from the config, the budget and the token counts; recompute (auto)
     * when the training simulation's activations would not fit and recomputing them lowers
     * the peak */
    double fbytes = (double)disk_bytes(o->model_path);
    qd_quant_opts oe = *o;
    oe.recompute = o->recompute == 1;
    qd_quantize_estimate(&oe, &m->cfg, fbytes, in->n_calib, in->n_ev, 0, &in->est);
    if (o->recompute == QD_RECOMPUTE_AUTO) {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        double phys = pages > 0 && psz > 0 ? (double)pages * (double)psz : 0;
        double limit = o->max_mem > 0 ? (double)o->max_mem : 0.9 * phys;
        double need = limited_bytes(&in->est, o->max_mem);
        if (limit > 0 && need > limit) {
            qd_estimate e1;
            oe.recompute = 1;
            qd_quantize_estimate(&oe, &m->cfg, fbytes, in->n_calib, in->n_ev, 0, &e1);
            if (limited_bytes(&e1, o->max_mem) < need) in->est = e1;
            else oe.recompute = 0;
        }
    }
    in->recompute = oe.recompute;
    if (in->probe)
        qd_quantize_estimate(&oe, &m->cfg, fbytes, in->n_calib, in->n_ev, 1, &in->est);
    if (o->max_mem > 0 && in->est.vm_bytes > (double)o->max_mem) {
        char need[32], vm[32], lim[32];
        const qd_est_phase *pk = &in->est.ph[in->est.peak];
        qd_format_size(in->est.peak_bytes, need, sizeof need);
        qd_format_size(in->est.vm_bytes, vm, sizeof vm);
        qd_format_size((double)o->max_mem, lim, sizeof lim);
        return failf(field, "budget", err,
                     "budget: the run would need about %s of memory at its peak (%s of address "
                     "space; phase %s, most of it %s%s), more than the %s a worker may use: "
                     "lower budget.samples, budget.seq_len or budget.batch, or quantize a "
                     "smaller model",
                     need, vm, pk->phase, pk->part[largest_part(pk)].name,
                     in->recompute ? ", activations recomputed per layer" : "", lim);
    }
    if (!rep) return QD_OK; /* qd_quantize_check */

    field[0] = 0;
    qd_model *full = qd_model_load(o->model_path, err);
    if (!full) return qd_stop_requested() ? QD_ERR : at_field(field, "model");
    if (qd_stop_requested()) {
        qd_model_free(full);
        return QD_ERR;
    }
    /* the tokenizer may point into the probe's vocabulary: keep that one */
    qd_vocab_free(full->vocab);
    full->vocab = in->m->vocab;
    in->m->vocab = NULL;
    qd_model_free(in->m);
    in->m = full;
    m = full;
    track(tr, "load", 1, 3);
    /* the inputs' identities, for the report and the artifact's metadata */
    if (qd_sha256_path(o->model_path, rep->sha_model, err) ||
        qd_sha256_path(o->calib_path, rep->sha_calib, err) ||
        (o->eval_path && qd_sha256_path(o->eval_path, rep->sha_eval, err)))
        return QD_ERR;
    track(tr, "load", 2, 3);
    rep->n_calib = in->n_calib;
    rep->recompute = in->recompute;
    rep->model_params = qd_model_n_params(m);
    track(tr, "load", 3, 3);
    return QD_OK;
}

/* The run's fingerprint: a checkpoint from other inputs or settings is refused. */
static uint64_t fingerprint(const qd_quant_opts *o, const inputs *in) {
    uint64_t fp = QD_FNV_INIT;
    fp = file_fingerprint(fp, o->model_path);
    fp = qd_fnv64(fp, in->calib, sizeof(int) * in->n_calib);
    fp = qd_fnv64(fp, o->method, strlen(o->method));
    int32_t knobs[24] = {o->wbits, o->samples, o->seq_len, o->epochs, o->batch};
    memcpy(knobs + 5, o->abits_override, sizeof(int) * 16);
    fp = qd_fnv64(fp, knobs, sizeof knobs);
    fp = qd_fnv64(fp, &o->seed, sizeof o->seed);
    double lrs[6] = {o->lr_let[0], o->lr_let[1], o->lr_lwc[0], o->lr_lwc[1], o->lr_lrl[0],
                     o->lr_lrl[1]};
    return qd_fnv64(fp, lrs, sizeof lrs);
}

/* FP32's figures and the reference every variant is compared with (*ref, computed once),
 * then the baselines that are not the chosen method, then the chosen method last: its fold
 * takes the F32 model over (folded in place), so the model is held once however large. The
 * report keeps the chosen method as its first variant. *enc gets the chosen method's
 * encodings (and in->m moves into them). QD_STOPPED when stopped (the checkpoint holds the
 * chosen method's state; the baselines are rerun on resume). */
static int run_variants(const qd_quant_opts *o, inputs *in, tracker *tr, qd_report *rep,
                        qd_eval_ref **ref, qd_encodings **enc, qd_err *err) {
    const qd_model *m = in->m;
    tr->variant = QD_RK_EVAL_FP32;
    track(tr, "eval", 0, 0);
    *ref = qd_eval_ref_new(qd_fp32_logits_fn, (void *)m, m->cfg.vocab_size, in->ev, in->n_ev,
                           o->seq_len, 0, track_eval, tr, &rep->fp32, err);
    if (!*ref) return QD_ERR;
    qd_eval_ref_stats(*ref, &rep->ref);
    const char *base[2] = {qd_method_name(QD_METHOD_RTN), qd_method_name(QD_METHOD_SMOOTHQUANT)};
    rep->n_variants = 1; /* var[0]: the chosen method, run last */
    /* RTN's statistics pass serves SmoothQuant's first one (the same windows, LET off) */
    qd_qstats *shared = NULL;
    for (int k = 0; k < 2; k++) {
        if (!strcmp(base[k], o->method)) continue;
        int r = run_variant(o, &in->m, in->calib, in->n_calib, *ref, in->ev, in->n_ev, base[k],
                            rep->fingerprint, in->recompute, &shared, tr,
                            &rep->var[rep->n_variants++], NULL, NULL, err);
        if (r != QD_OK) {
            qd_qstats_free(shared);
            return r;
        }
    }
    int r = run_variant(o, &in->m, in->calib, in->n_calib, *ref, in->ev, in->n_ev, o->method,
                        rep->fingerprint, in->recompute, &shared, tr, &rep->var[0], enc,
                        &rep->layers, err);
    qd_qstats_free(shared);
    if (r != QD_OK) return r;
    if (!*enc) return qd_errf(err, "export: no encodings from %s", o->method);
    rep->enc_model_bytes = qd_encodings_model_bytes(*enc);
    rep->enc_weights = (*enc)->n_w;
    rep->enc_activations = (*enc)->n_a;
    return QD_OK;
}

int qd_quantize_plan(const qd_quant_opts *o, int probe, qd_estimate *e,
                     char field[QD_CHECK_FIELD], qd_err *err) {
    if (validate(o, field, err)) return QD_ERR;
    inputs in;
    memset(&in, 0, sizeof in);
    in.probe = probe && e;
    if (in.probe) openblas_set_num_threads(o->threads); /* the rate at the run's threads */
    int rc = load_inputs(o, &in, NULL, NULL, field, err);
    if (rc == QD_OK && e) *e = in.est;
    inputs_free(&in);
    return rc;
}

int qd_quantize_check(const qd_quant_opts *o, char field[QD_CHECK_FIELD], qd_err *err) {
    return qd_quantize_plan(o, 0, NULL, field, err);
}

int qd_quantize(const qd_quant_opts *o, qd_err *err) {
    double t0 = qd_now();
    char field[QD_CHECK_FIELD];
    if (validate(o, field, err) || qd_mkdir_p(o->out_dir, err) ||
        qd_pool_set_default(o->threads, err))
        return QD_ERR;
    openblas_set_num_threads(o->threads);

    int rc = QD_ERR;
    inputs in;
    memset(&in, 0, sizeof in);
    qd_encodings *enc = NULL;
    qd_eval_ref *ref = NULL;
    qd_report rep;
    qd_report_init(&rep, o, t0);

    tracker tr = {.o = o, .t0 = t0, .cur = -1};
    plan(&tr, (size_t)o->samples * (size_t)o->seq_len, 0); /* the count of stages, for load */
    if (load_inputs(o, &in, &rep, &tr, field, err)) goto out;
    rep.fingerprint = fingerprint(o, &in);
    plan(&tr, in.n_calib, in.n_ev);
    tr.st[0].t_start = t0, tr.cur = 0;
    rc = run_variants(o, &in, &tr, &rep, &ref, &enc, err);
    if (rc != QD_OK) goto out; /* QD_STOPPED: stopped */
    rc = QD_ERR;

    /* the deployable artifacts, and the integer runtime's figures on the written artifact */
    track(&tr, "export", 0, 5);
    /* no report once a stop is requested: a stopped run never looks finished */
    if (export_artifacts(o, enc->folded, enc, rep.sha_model, ref, &tr, &rep.ex, err) ||
        qd_stop_requested())
        goto out;
    double now = qd_now();
    if (tr.cur >= 0 && tr.st[tr.cur].t_end == 0) tr.st[tr.cur].t_end = now;
    for (int i = 0; i < tr.n && rep.n_stages < QD_REPORT_MAX_STAGES; i++)
        if (tr.st[i].t_start > 0)
            rep.stage[rep.n_stages].phase = tr.st[i].phase,
            rep.stage[rep.n_stages].variant = tr.st[i].variant,
            rep.stage[rep.n_stages++].seconds = tr.st[i].t_end - tr.st[i].t_start;
    rep.est_peak_bytes = in.est.peak_bytes, rep.est_vm_bytes = in.est.vm_bytes;
    if (qd_report_write(&rep, o->out_dir, err)) goto out;
    /* the run is complete: its checkpoint would only make a rerun skip the work */
    if (o->checkpoint_path) unlink(o->checkpoint_path);
    rc = QD_OK;
out:
    qd_report_clear(&rep);
    qd_eval_ref_free(ref);
    inputs_free(&in); /* the tokenizer may read the vocabulary the folded model now holds */
    qd_encodings_free(enc);
    return qd_stop_status(rc);
}
