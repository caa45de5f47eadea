/* One job from start to end, in its own process (`quantd work JOBDIR`): reads JOBDIR/job.json,
 * runs the quantization pipeline with the job's spec, and reports progress as JSON lines into
 * JOBDIR/events.jsonl and, when started by the local dispatcher, over a pipe. Artifacts and
 * report.json land in JOBDIR/artifacts; optimizer state in JOBDIR/checkpoint so that a stopped
 * job resumes where it left off. */
#ifndef QD_WORKER_H
#define QD_WORKER_H

#include <stddef.h>
#include <sys/types.h>

#include "api/api.h"
#include "base/err.h"

/* Exit statuses of `quantd work`, read by the dispatchers. */
#define WK_EXIT_OK 0      /* report written */
#define WK_EXIT_FAILED 1  /* the pipeline failed; stderr says why */
#define WK_EXIT_USAGE 2   /* bad arguments or an unreadable job directory */
#define WK_EXIT_STOPPED 3 /* stopped by SIGTERM after writing a checkpoint: resumable */

struct api_spec;
struct qd_quant_opts;

/* The pipeline's settings of a job spec (everything but the paths, which stay NULL). */
void wk_spec_opts(const struct api_spec *spec, struct qd_quant_opts *o);

/* A blob that is not in the store yet (a multipart part waiting for its job to be accepted),
 * at path; wk_layout_model and the door's check (check.h) use it in place of
 * DATA/blobs/sha256/<hash>. */
typedef struct wk_pending {
    const char *id;
    const char *path;
} wk_pending;

/* Where blob id lies: a pending path, or datadir/blobs/sha256/<hex>. -1 when out is short. */
int wk_blob_path(const char *datadir, const char *id, const wk_pending *pending, int n_pending,
                 char *out, size_t n);

/* Lays out a model made of several files (spec->model_files) as the directory it came from:
 * dir/<name> is a symlink to the file's blob (wk_blob_path) for each file, parents created.
 * Built under a hidden temp name beside dir and renamed into place, so that dir, when it
 * exists, is complete (a resumed job keeps it, and with it its checkpoint's fingerprint).
 * QD_ERR with err naming the file. */
int wk_layout_model(const char *datadir, const struct api_spec *spec, const wk_pending *pending,
                    int n_pending, const char *dir, qd_err *err);

/* The inputs of a job laid out in the current directory under the names of its fields, so
 * that every message about them names them as the user does ("calibration: line 3: ...",
 * "model/config.json: ..."), never DATA/blobs/sha256/<hash>: model (the blob, or the directory
 * of model_files, wk_layout_model), calibration, eval and tokenizer (symlinks to their blobs;
 * none for a field left out). A link left by an earlier attempt is replaced. The door's check
 * and the worker both use it. */
typedef struct wk_inputs {
    char model[API_MAX_FILE_NAME + 16]; /* "model", or "model/<name>" for one model file */
    const char *calibration, *eval, *tokenizer; /* static names; eval/tokenizer NULL when absent */
} wk_inputs;
int wk_layout_inputs(const char *datadir, const struct api_spec *spec, const wk_pending *pending,
                     int n_pending, wk_inputs *in, qd_err *err);

/* Runs the job in jobdir; events_fd >= 0 also receives every event line. Installs SIGTERM and
 * SIGINT handlers (a worker process's top level only). Returns one of WK_EXIT_*. */
int wk_run(const char *jobdir, int events_fd);

/* How the local dispatcher starts a worker. */
typedef struct wk_spawn_opts {
    const char *exe;        /* path of the quantd binary */
    const char *jobdir;     /* absolute job directory */
    int threads;            /* OPENBLAS/OMP thread count for the child */
    size_t mem_limit;       /* RLIMIT_AS in bytes, 0 for none */
} wk_spawn_opts;

/* Starts `exe work JOBDIR --events-fd 3` by fork+exec with the limits applied in the child,
 * stdout/stderr appended to JOBDIR/worker.log, and the child in its own process group, told
 * to stop (SIGTERM) if the spawning thread dies. On success *pid is the child and *events_fd
 * the non-blocking, close-on-exec read end of its event pipe (caller closes). QD_OK/QD_ERR. */
int wk_spawn(const wk_spawn_opts *o, pid_t *pid, int *events_fd, qd_err *err);

#endif
