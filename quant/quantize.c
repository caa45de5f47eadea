/* The offline pipeline behind `quantd quantize` and `quantd work` (quantize.h): load, split
 * calibration/evaluation tokens, baselines (RTN, SmoothQuant) and the chosen method, evaluation
 * of every variant against FP32 on the same tokens, encodings, the deployable artifacts
 * (model.qint.safetensors, encodings.json, fp-folded/ with its tokenizer), the integer
 * runtime's figures measured on the artifact as written, report.json. */
#include "quant/quantize.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

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
#include "base/sys.h"
#include "quant/io/load.h"

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
    strcpy(o->encodings_version, "1.0.0");
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

/* Writes n bytes to dir/name through a temp file + fsync + rename. */
static int write_atomic_n(const char *dir, const char *name, const void *data, size_t n,
                          qd_err *err) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return qd_errf(err, "%s: cannot create: %s", tmp, strerror(errno));
    int bad = fwrite(data, 1, n, f) != n || fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return qd_errf(err, "%s: write failed: %s", path, strerror(errno));
    }
    return QD_OK;
}

static int write_atomic(const char *dir, const char *name, const char *text, qd_err *err) {
    return write_atomic_n(dir, name, text, strlen(text), err);
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

/* Per-layer errors of the chosen method's simulation (report "per_layer"). */
typedef struct {
    int n;              /* layers (0: not measured) */
    double *mse;        /* block output, quantized model vs FP32 (earlier errors included) */
    double *mse_iso;    /* the quantized block alone, fed FP32's input */
    size_t tokens;
} layer_err;

static void layer_err_free(layer_err *le) {
    free(le->mse);
    free(le->mse_iso);
    memset(le, 0, sizeof *le);
}

/* Measures le on at most LAYER_ERR_WINDOWS windows of the evaluation tokens: a chart for the
 * dashboard, not a benchmark. Both passes keep the LET on: folded into FP32 weights it is
 * exact, so the pass with the quantizers off is the FP32 model. Costs about three forwards. */
#define LAYER_ERR_WINDOWS 8
static int layer_errors(qd_qsim *q, const int *ev, size_t n_ev, int T, layer_err *le,
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
        layer_err_free(le);
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

static int run_variant(const qd_quant_opts *o, const qd_model *m, const int *calib,
                       size_t n_calib, const int *ev, size_t n_ev, const char *method,
                       uint64_t fp, double t0, variant *v, qd_encodings **enc, layer_err *le,
                       qd_err *err) {
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
    if (rc == QD_OK && le && main_method) rc = layer_errors(q, ev, n_ev, o->seq_len, le, err);
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

typedef struct {
    char name[32];        /* "tokenizer.json" / "tokenizer.bin", empty when none */
    char source[4200];    /* where it came from */
    char why[512];        /* why there is none */
} tok_out;

/* Puts the model's tokenizer into dir: the user's tokenizer file copied as it is (a .gguf
 * given as tokenizer has its vocabulary written out), else the checkpoint's own vocabulary
 * (GGUF) written as tokenizer.bin, else a tokenizer.json / tokenizer.bin found beside the
 * checkpoint copied. A vocabulary that tokenizer.bin cannot carry leaves dir without one and
 * says why: the artifacts stay usable with --tokenizer. */
static void write_tokenizer(const qd_quant_opts *o, const qd_model *m, const char *dir,
                            tok_out *t) {
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
    const char *ext = src ? strrchr(src, '.') : NULL;
    int rc;
    if (src && !(ext && !strcmp(ext, ".gguf"))) {
        int json = ext && !strcmp(ext, ".json");
        snprintf(t->name, sizeof t->name, "%s", json ? "tokenizer.json" : "tokenizer.bin");
        snprintf(t->source, sizeof t->source, "%s", src);
        rc = copy_into(src, dir, t->name, &e);
    } else {
        qd_vocab *v = src ? qd_gguf_load_vocab(src, &e) : m->vocab;
        snprintf(t->name, sizeof t->name, "tokenizer.bin");
        snprintf(t->source, sizeof t->source, "%s", src ? src : o->model_path);
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, t->name);
        rc = v ? qd_vocab_save_llama2c(v, path, &e) : QD_ERR;
        if (src) qd_vocab_free(v);
    }
    if (rc != QD_OK) {
        t->name[0] = 0;
        snprintf(t->why, sizeof t->why, "%s", e.msg);
    }
}

typedef struct {
    qd_cmp_result cmp;    /* integer runtime on the written artifact vs FP32 */
    size_t qint_bytes, enc_bytes, folded_bytes, payload_bytes, n_weights, n_bits;
    tok_out tok;
    double seconds;
} exported;

/* Writes model.qint.safetensors, encodings.json and fp-folded/ from the final encodings, then
 * reads the integer artifact back from disk and evaluates it with the integer runtime on the
 * evaluation tokens: the figure is the artifact's, not the in-memory model's. */
static int export_artifacts(const qd_quant_opts *o, const qd_model *m, const qd_encodings *E,
                            const char *model_sha, const int *ev, size_t n_ev, double t0,
                            exported *x, qd_err *err) {
    double ts = qd_now();
    memset(x, 0, sizeof *x);
    char qpath[4200], epath[4200], fdir[4200];
    snprintf(qpath, sizeof qpath, "%s/model.qint.safetensors", o->out_dir);
    snprintf(epath, sizeof epath, "%s/encodings.json", o->out_dir);
    snprintf(fdir, sizeof fdir, "%s/fp-folded", o->out_dir);
    qd_qint_enc qe;
    if (qd_qint_enc_from_encodings(&qe, E, err)) return QD_ERR;
    qd_qint *qi = qd_qint_build(E->folded, &qe, err);
    qd_qint_enc_free(&qe);
    if (!qi) return QD_ERR;
    snprintf(qi->method, sizeof qi->method, "%s", o->method);
    snprintf(qi->source_sha256, sizeof qi->source_sha256, "%s", model_sha);
    int rc = QD_ERR;
    qd_qrt *rt = NULL;
    if (qd_qint_save(qi, qpath, err) || qd_aimet_write(qi, epath, o->encodings_version, err) ||
        qd_save_hf(E->folded, fdir, "F32", err))
        goto out;
    write_tokenizer(o, m, fdir, &x->tok);
    x->payload_bytes = qd_qint_bytes(qi);
    qd_qint_weight_bits(qi, &x->n_weights, &x->n_bits);
    progress(o, "eval", t0);
    qd_qrt_opts ro;
    qd_qrt_defaults(&ro);
    ro.threads = o->threads;
    if (!(rt = qd_qrt_load(qpath, &ro, err))) goto out;
    if (qd_eval_compare(qd_fp32_logits_fn, (void *)m, qd_qrt_logits_fn, rt, m->cfg.vocab_size, ev,
                        n_ev, o->seq_len, &x->cmp, err))
        goto out;
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
    if (strcmp(o->encodings_version, "1.0.0") && strcmp(o->encodings_version, "0.6.1"))
        return qd_errf(err, "encodings_version: \"%.8s\" (1.0.0 or 0.6.1)", o->encodings_version);
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
    layer_err le = {0};
    exported ex;
    memset(&ex, 0, sizeof ex);
    char sha_model[65] = "", sha_calib[65] = "", sha_eval[65] = "";

    progress(o, "load", t0);
    m = qd_model_load(o->model_path, err);
    if (!m) goto out;
    /* the inputs' identities, for the report and the artifact's metadata */
    if (qd_sha256_path(o->model_path, sha_model, err) ||
        qd_sha256_path(o->calib_path, sha_calib, err) ||
        (o->eval_path && qd_sha256_path(o->eval_path, sha_eval, err)))
        goto out;
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
                            k == 0 ? &enc : NULL, k == 0 ? &le : NULL, err);
        nv++;
        if (r == 1) {
            rc = 1; /* stopped: the checkpoint holds the state */
            goto out;
        }
        if (r != QD_OK) goto out;
    }

    /* the deployable artifacts, and the integer runtime's figures on the written artifact */
    progress(o, "export", t0);
    if (!enc) {
        qd_errf(err, "export: no encodings from %s", o->method);
        goto out;
    }
    if (export_artifacts(o, m, enc, sha_model, ev, n_ev, t0, &ex, err)) goto out;

    /* report.json */
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
    cJSON *sha = cJSON_AddObjectToObject(inp, "sha256");
    cJSON_AddStringToObject(sha, "model", sha_model);
    cJSON_AddStringToObject(sha, "calibration", sha_calib);
    if (o->eval_path) cJSON_AddStringToObject(sha, "eval", sha_eval);

    cJSON *evj = cJSON_AddObjectToObject(rep, "eval");
    cJSON_AddNumberToObject(evj, "tokens", (double)fp32.tokens);
    cJSON_AddNumberToObject(evj, "ctx_len", o->seq_len);
    cJSON_AddItemToObject(evj, "fp32", cmp_json(&fp32));
    for (int k = 0; k < nv; k++) cJSON_AddItemToObject(evj, vars[k].name, cmp_json(&vars[k].cmp));
    cJSON_AddItemToObject(evj, "int", cmp_json(&ex.cmp));
    cJSON_AddStringToObject(evj, "int_of", o->method);

    /* per decoder layer: MSE of the block output, quantized (sim) vs FP32 */
    if (le.n > 0) {
        cJSON *pl = cJSON_AddArrayToObject(rep, "per_layer");
        for (int l = 0; l < le.n; l++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "layer", l);
            cJSON_AddNumberToObject(e, "mse", le.mse[l]);
            cJSON_AddNumberToObject(e, "mse_isolated", le.mse_iso[l]);
            cJSON_AddItemToArray(pl, e);
        }
        cJSON_AddNumberToObject(rep, "per_layer_tokens", (double)le.tokens);
    }

    cJSON *lc = cJSON_AddArrayToObject(rep, "loss_curve");
    for (long i = 0; i < vars[0].res.n_loss; i++)
        cJSON_AddItemToArray(lc, cJSON_CreateNumber(vars[0].res.loss[i]));

    double wall = qd_now() - t0;
    size_t tokens = fp32.tokens;
    for (int k = 0; k < nv; k++) tokens += vars[k].res.tokens + vars[k].cmp.tokens;
    tokens += ex.cmp.tokens + 3 * le.tokens;
    cJSON *cp = cJSON_AddObjectToObject(rep, "compute");
    cJSON_AddNumberToObject(cp, "wall_seconds", wall);
    cJSON_AddNumberToObject(cp, "method_seconds", vars[0].seconds);
    cJSON_AddNumberToObject(cp, "export_seconds", ex.seconds);
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
        /* the artifact as written: ratios of the FP16/FP32 weights to model.qint.safetensors */
        cJSON_AddNumberToObject(sz, "fp16_bytes", (double)fp_bytes / 2);
        cJSON_AddNumberToObject(sz, "qint_bytes", (double)ex.qint_bytes);
        cJSON_AddNumberToObject(sz, "qint_payload_bytes", (double)ex.payload_bytes);
        cJSON_AddNumberToObject(sz, "ratio_fp32", (double)fp_bytes / (double)ex.qint_bytes);
        cJSON_AddNumberToObject(sz, "ratio_fp16", (double)fp_bytes / 2 / (double)ex.qint_bytes);
        cJSON_AddNumberToObject(sz, "qint_bits_per_param",
                                8.0 * (double)ex.qint_bytes / (double)qd_model_n_params(m));
        /* matmul weights and the embedding/head table, per-channel scale and zero included */
        cJSON_AddNumberToObject(sz, "weight_bits_per_weight",
                                ex.n_weights ? (double)ex.n_bits / (double)ex.n_weights : 0);
    }
    cJSON *art = cJSON_AddObjectToObject(rep, "artifacts");
    cJSON *a1 = cJSON_AddObjectToObject(art, "model.qint.safetensors");
    cJSON_AddNumberToObject(a1, "bytes", (double)ex.qint_bytes);
    cJSON_AddStringToObject(a1, "format", QD_QINT_FORMAT);
    cJSON_AddNumberToObject(a1, "format_version", QD_QINT_VERSION);
    cJSON *a2 = cJSON_AddObjectToObject(art, "encodings.json");
    cJSON_AddNumberToObject(a2, "bytes", (double)ex.enc_bytes);
    cJSON_AddStringToObject(a2, "format", "aimet");
    cJSON_AddStringToObject(a2, "format_version", o->encodings_version);
    cJSON *a3 = cJSON_AddObjectToObject(art, "fp-folded");
    cJSON_AddNumberToObject(a3, "bytes", (double)ex.folded_bytes);
    cJSON_AddStringToObject(a3, "dtype", "F32");
    if (ex.tok.name[0]) {
        cJSON_AddStringToObject(a3, "tokenizer", ex.tok.name);
        cJSON_AddStringToObject(a3, "tokenizer_source", ex.tok.source);
    } else {
        cJSON_AddNullToObject(a3, "tokenizer");
        cJSON_AddStringToObject(a3, "tokenizer_missing", ex.tok.why);
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
    layer_err_free(&le);
    cJSON_Delete(rep);
    free(text);
    qd_encodings_free(enc);
    qd_tokens_free(&cal);
    qd_tokens_free(&evt);
    qd_tok_free(tok);
    qd_model_free(m);
    return rc;
}
