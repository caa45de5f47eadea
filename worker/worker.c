/* The job runner behind `quantd work JOBDIR`. It maps the job's spec onto qd_quant_opts and
 * runs the same pipeline as `quantd quantize`. Every progress report becomes one JSON line,
 * appended to events.jsonl first (the durable record the server's SSE streams read) and then
 * written to the event pipe (so the server's job state follows without polling the file).
 * SIGTERM only raises the stop request (base/stop.h), which every phase of the pipeline polls:
 * it saves the optimizer's checkpoint where there is one to save and returns without a report,
 * and this process exits with WK_EXIT_STOPPED so the job can be resumed. */
#include "worker/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "quant/quantize.h"
#include "base/fs.h"
#include "base/stop.h"
#include "base/sys.h"

typedef struct emitter {
    int file_fd;
    int pipe_fd;
    double last_emit;
    char last_phase[16];
    int last_stage;
} emitter;

/* One whole line per write(): with O_APPEND a line lands in the file in one piece, and the
 * server never sees half a line on the pipe except across reads, which it buffers. */
static void emit_line(emitter *e, char *line) {
    if (!line) return;
    size_t n = strlen(line);
    char *buf = malloc(n + 2);
    if (!buf) {
        free(line);
        return;
    }
    memcpy(buf, line, n);
    buf[n] = '\n';
    free(line);
    if (e->file_fd >= 0 && write(e->file_fd, buf, n + 1) < 0)
        fprintf(stderr, "worker: events.jsonl: %s\n", strerror(errno));
    if (e->pipe_fd >= 0) {
        ssize_t w = write(e->pipe_fd, buf, n + 1);
        /* A full pipe drops the line (the file has it); a closed one is a server that went away:
         * carry on, the job's files are what counts. */
        if (w < 0 && errno == EPIPE) {
            close(e->pipe_fd);
            e->pipe_fd = -1;
        }
    }
    free(buf);
}

static void on_progress(void *ctx, const qd_progress *p) {
    emitter *e = ctx;
    double now = qd_now();
    const char *phase = p->phase ? p->phase : "";
    bool boundary = strcmp(phase, e->last_phase) || p->stage != e->last_stage ||
                    p->step == p->total || p->step <= 1;
    /* Optimizer steps on small models take milliseconds; 4 lines a second is plenty for a
     * progress bar and keeps events.jsonl small. */
    if (!boundary && now - e->last_emit < 0.25) return;
    e->last_emit = now;
    snprintf(e->last_phase, sizeof e->last_phase, "%s", phase);
    e->last_stage = p->stage;
    emit_line(e, api_event_progress(phase, p->step, p->total, p->loss, p->lr, p->elapsed_s,
                                    p->eta_s, p->variant, p->stage, p->stages, p->eta_total_s));
}

int wk_blob_path(const char *datadir, const char *id, const wk_pending *pending, int n_pending,
                 char *out, size_t n) {
    if (!id[0]) return 0;
    for (int i = 0; i < n_pending; i++)
        if (!strcmp(pending[i].id, id)) {
            int k = snprintf(out, n, "%s", pending[i].path);
            return k > 0 && (size_t)k < n ? 0 : -1;
        }
    int k = snprintf(out, n, "%s/blobs/sha256/%s", datadir, id + 7);
    return k > 0 && (size_t)k < n ? 0 : -1;
}

int wk_layout_model(const char *datadir, const api_spec *spec, const wk_pending *pending,
                    int n_pending, const char *dir, qd_err *err) {
    struct stat st;
    if (lstat(dir, &st) == 0) return QD_OK; /* laid out by an earlier attempt */
    char tmp[PATH_MAX], parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    const char *base = slash ? slash + 1 : parent;
    if (slash) *slash = 0;
    if (snprintf(tmp, sizeof tmp, "%s/.%s.tmpXXXXXX", slash ? parent : ".", base) >= (int)sizeof tmp)
        return qd_errf(err, "%s: path too long", dir);
    if (!mkdtemp(tmp)) return qd_errf(err, "%s: %s", tmp, strerror(errno));
    int rc = QD_OK;
    for (int i = 0; i < spec->n_model_files && rc == QD_OK; i++) {
        const api_model_file *f = &spec->model_files[i];
        char link[PATH_MAX + 160], blob[PATH_MAX + 96], sub[PATH_MAX + 160];
        if (!api_file_name_valid(f->name, NULL) ||
            wk_blob_path(datadir, f->blob, pending, n_pending, blob, sizeof blob) ||
            snprintf(link, sizeof link, "%s/%s", tmp, f->name) >= (int)sizeof link) {
            rc = qd_errf(err, "model: file \"%s\": not a safe relative name", f->name);
            break;
        }
        snprintf(sub, sizeof sub, "%s", link);
        char *cut = strrchr(sub, '/');
        *cut = 0;
        if (qd_mkdir_p(sub, err)) rc = QD_ERR;
        else if (symlink(blob, link) != 0)
            rc = qd_errf(err, "model: file \"%s\": %s", f->name, strerror(errno));
    }
    if (rc == QD_OK && rename(tmp, dir) != 0)
        rc = qd_errf(err, "%s: %s", dir, strerror(errno));
    if (rc != QD_OK) qd_rm_rf(tmp);
    else qd_fsync_dir(slash ? parent : ".");
    return rc;
}

void wk_spec_opts(const api_spec *spec, qd_quant_opts *o) {
    qd_quant_defaults(o);
    o->eval_split = spec->eval_split;
    snprintf(o->method, sizeof o->method, "%s", spec->method);
    o->wbits = spec->wbits;
    for (int i = 0; i < API_N_ABITS && i < (int)(sizeof o->abits_override / sizeof o->abits_override[0]); i++)
        o->abits_override[i] = spec->abits[i];
    o->samples = spec->samples;
    o->seq_len = spec->seq_len;
    o->epochs = spec->epochs;
    o->seed = spec->seed;
    o->threads = spec->threads > 0 ? spec->threads : 1; /* a server sets it; `work` on a bare spec: 1 */
    o->max_ppl_increase = spec->max_ppl_increase;
    _Static_assert(sizeof o->encodings_version >= sizeof spec->encodings_version,
                   "spec encodings_version fits qd_quant_opts");
    snprintf(o->encodings_version, sizeof o->encodings_version, "%s", spec->encodings_version);
}

/* name -> the blob of id (a symlink, replacing one an earlier attempt left); nothing when id
 * is "" (a field left out). */
static int link_blob(const char *datadir, const char *id, const wk_pending *p, int np,
                     const char *name, qd_err *err) {
    if (!id[0]) return QD_OK;
    char target[PATH_MAX + 96];
    if (wk_blob_path(datadir, id, p, np, target, sizeof target))
        return qd_errf(err, "%s: path too long", name);
    struct stat st;
    if (lstat(name, &st) == 0 && S_ISLNK(st.st_mode) && unlink(name) != 0)
        return qd_errf(err, "%s: %s", name, strerror(errno));
    if (symlink(target, name) != 0) return qd_errf(err, "%s: %s", name, strerror(errno));
    return QD_OK;
}

int wk_layout_inputs(const char *datadir, const api_spec *spec, const wk_pending *pending,
                     int n_pending, wk_inputs *in, qd_err *err) {
    memset(in, 0, sizeof *in);
    snprintf(in->model, sizeof in->model, "model");
    if (spec->n_model_files) {
        if (wk_layout_model(datadir, spec, pending, n_pending, "model", err)) return QD_ERR;
        if (spec->n_model_files == 1)
            snprintf(in->model, sizeof in->model, "model/%s", spec->model_files[0].name);
    } else if (link_blob(datadir, spec->model, pending, n_pending, "model", err)) {
        return QD_ERR;
    }
    if (link_blob(datadir, spec->calibration, pending, n_pending, "calibration", err) ||
        link_blob(datadir, spec->eval, pending, n_pending, "eval", err) ||
        link_blob(datadir, spec->tokenizer, pending, n_pending, "tokenizer", err))
        return QD_ERR;
    in->calibration = "calibration";
    in->eval = spec->eval[0] ? "eval" : NULL;
    in->tokenizer = spec->tokenizer[0] ? "tokenizer" : NULL;
    return QD_OK;
}

int wk_run(const char *jobdir, int events_fd) {
    qd_stop_on_signals();
    signal(SIGPIPE, SIG_IGN);

    char path[PATH_MAX + 32], datadir[PATH_MAX];
    if (!realpath(jobdir, datadir)) {
        fprintf(stderr, "worker: %s: %s\n", jobdir, strerror(errno));
        return WK_EXIT_USAGE;
    }
    char jdir[PATH_MAX];
    snprintf(jdir, sizeof jdir, "%s", datadir);
    /* JOBDIR is DATA/jobs/<id>: blobs live two levels up. */
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(datadir, '/');
        if (!slash || slash == datadir) {
            fprintf(stderr, "worker: %s is not DATA/jobs/<id>\n", jdir);
            return WK_EXIT_USAGE;
        }
        *slash = 0;
    }

    qd_err err = {{0}};
    snprintf(path, sizeof path, "%s/job.json", jdir);
    size_t len;
    char *text = qd_read_file(path, 1 << 20, &len, &err);
    if (!text) {
        fprintf(stderr, "worker: %s\n", err.msg);
        return WK_EXIT_USAGE;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    api_job job;
    if (api_job_from_json(root, &job, &err)) {
        cJSON_Delete(root);
        fprintf(stderr, "worker: %s: %s\n", path, err.msg);
        return WK_EXIT_USAGE;
    }
    cJSON_Delete(root);

    emitter em = {.file_fd = -1, .pipe_fd = events_fd, .last_emit = 0, .last_phase = ""};
    snprintf(path, sizeof path, "%s/events.jsonl", jdir);
    em.file_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (em.file_fd < 0) fprintf(stderr, "worker: %s: %s\n", path, strerror(errno));
    if (events_fd >= 0) fcntl(events_fd, F_SETFL, fcntl(events_fd, F_GETFL) | O_NONBLOCK);

    /* From here on the worker works inside its job directory, on its inputs laid out under
     * the names of their fields: what the pipeline says about a file (and report.json's
     * "inputs") names it as the user knows it, never a path of the server's. */
    wk_inputs in;
    if (chdir(jdir) != 0) {
        fprintf(stderr, "worker: %s: %s\n", jdir, strerror(errno));
        return WK_EXIT_USAGE;
    }
    if (wk_layout_inputs(datadir, &job.spec, NULL, 0, &in, &err)) {
        emit_line(&em, api_event_log("error", err.msg));
        fprintf(stderr, "worker: %s\n", err.msg);
        return WK_EXIT_FAILED;
    }

    qd_quant_opts o;
    wk_spec_opts(&job.spec, &o);
    o.model_path = in.model;
    o.calib_path = in.calibration;
    o.eval_path = in.eval;
    o.tokenizer_path = in.tokenizer;
    o.out_dir = "artifacts";
    o.checkpoint_path = "checkpoint";
    o.progress = on_progress;
    o.progress_ctx = &em;

    char msg[256];
    bool resume = access(o.checkpoint_path, F_OK) == 0;
    snprintf(msg, sizeof msg, "worker %d started (%s), method %s", (int)getpid(),
             resume ? "resuming from checkpoint" : "fresh", job.spec.method);
    emit_line(&em, api_event_log("info", msg));
    fprintf(stderr, "worker: %s\n", msg);

    int rc = qd_quantize(&o, &err);
    int status;
    if (rc == QD_OK) {
        emit_line(&em, api_event_log("info", "pipeline finished"));
        status = WK_EXIT_OK;
    } else if (rc == QD_STOPPED) {
        emit_line(&em, api_event_log("info", "stopped; checkpoint written"));
        fprintf(stderr, "worker: stopped; checkpoint written\n");
        status = WK_EXIT_STOPPED;
    } else {
        emit_line(&em, api_event_log("error", err.msg));
        fprintf(stderr, "worker: %s\n", err.msg);
        status = WK_EXIT_FAILED;
    }
    if (em.file_fd >= 0) {
        fsync(em.file_fd);
        close(em.file_fd);
    }
    if (em.pipe_fd >= 0) close(em.pipe_fd);
    api_job_clear(&job);
    return status;
}
