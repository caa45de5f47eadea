/* The dispatchers: how the server has a job's worker (`quantd work JOBDIR`) run, behind one
 * start / poll / stop / kill / reattach interface, so that the scheduler in server/jobs.c does
 * not know where workers run.
 *   local: fork+exec on the server's machine; events arrive on a pipe, the exit status by
 *          waitpid.
 *   slurm: `sbatch --parsable` of a batch script that runs the worker on a compute node; the
 *          job is followed with squeue (one call for all jobs, at most every poll_s), progress by
 *          reading the job's events.jsonl on the shared filesystem, cancel with scancel.
 * One wk_task is one attempt of one job. The scheduler owns the tasks and calls these from its
 * one thread, except wk_disp_refresh, which it calls with its index unlocked. */
#ifndef QD_WORKER_DISPATCH_H
#define QD_WORKER_DISPATCH_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "base/err.h"

typedef struct wk_slurm_opts {
    const char *partition;   /* empty: the cluster's default */
    const char *account;
    const char *qos;
    const char *sbatch_args; /* extra sbatch arguments, blank-separated, after quantd's own */
    const char *template_path; /* batch script; empty: the built-in deploy/quantd.sbatch */
    const char *quantd_path; /* quantd on the nodes; empty: the server's own binary */
    double poll_s;           /* squeue at most this often */
    double pending_down_s;   /* a job pending only because its nodes are down or drained fails
                                after this long */
    const char *state_dir;   /* where the built-in batch script is written (DATA/slurm) */
} wk_slurm_opts;

typedef struct wk_disp_opts {
    const char *kind;        /* "local" or "slurm" */
    const char *exe;         /* the quantd binary (local workers; default for slurm_quantd) */
    size_t mem_limit;        /* bytes per worker: RLIMIT_AS locally, --mem on Slurm; 0 none */
    wk_slurm_opts slurm;
} wk_disp_opts;

typedef struct wk_disp wk_disp;

/* Runs argv[0] (found on PATH), stdin /dev/null, for at most timeout_s (then SIGKILL);
 * stdout into out, stderr into err_out (both NUL-terminated, truncated to fit). Returns the
 * wait status, or -1 with err_out saying why it did not run to its end. posix_spawn, so it is
 * safe from the threaded server. */
int wk_run_cmd(char *const argv[], double timeout_s, char *out, size_t outn, char *err_out,
               size_t errn);

/* Checks the options (slurm: that sbatch and squeue are on PATH and the template readable) and
 * returns the dispatcher, or NULL with err naming what is wrong. */
wk_disp *wk_disp_new(const wk_disp_opts *o, qd_err *err);
void wk_disp_free(wk_disp *d);
/* "local" or "slurm". */
const char *wk_disp_kind(const wk_disp *d);
/* True when workers outlive the server (Slurm): a stopping server leaves them running and the
 * next start re-attaches, instead of stopping them to checkpoint. */
bool wk_disp_detached(const wk_disp *d);
/* For the start-up log: one line on where workers run. */
void wk_disp_describe(const wk_disp *d, char *out, size_t n);

/* How one attempt ended. */
typedef enum wk_end_kind {
    WK_END_EXIT,     /* the worker ended: exit_code or term_signal say how */
    WK_END_REFUSED,  /* it never started: sbatch refused it (why says so) */
    WK_END_TIMEOUT,  /* the cluster's time limit (--time) ended it */
    WK_END_OOM,      /* the cluster killed it for exceeding its memory (--mem) */
    WK_END_NODE,     /* its node failed or went down, or it pended on down/drained nodes */
    WK_END_CANCELLED,/* cancelled by someone outside quantd (scancel) */
    WK_END_LOST      /* the cluster no longer knows the job and said nothing of its end;
                        restartable (resume from the checkpoint) */
} wk_end_kind;

typedef struct wk_end {
    wk_end_kind kind;
    int exit_code;   /* -1 when unknown */
    int term_signal; /* 0 when none */
    char why[400];   /* for every kind but a plain WK_END_EXIT: what the cluster said */
} wk_end;

typedef enum wk_status { WK_PENDING, WK_RUNNING, WK_ENDED } wk_status;

typedef struct wk_task {
    /* what job.json records, so that a restarted server finds the attempt again */
    pid_t pid;            /* local */
    char slurm_id[32];    /* slurm */
    char slurm_state[24]; /* last state squeue gave (PENDING, RUNNING, COMPLETED ...) */
    char slurm_node[64];
    char slurm_reason[160];
    /* private to the dispatcher */
    int fd;               /* local: the event pipe, -1 once closed */
    long long ev_off;     /* slurm: bytes of events.jsonl already read */
    char line[8192];
    size_t line_len;
    bool line_overflow;
    double submitted_mono, pending_down_since, stop_mono;
    char jobdir[PATH_MAX];
    char job_id[40];
} wk_task;

/* What one attempt needs. */
typedef struct wk_start {
    const char *job_id;
    const char *jobdir;   /* absolute */
    int threads;
    double time_limit_s;  /* what is left of the job's timeout_s (the cluster's --time) */
    double grace_s;       /* the server's cancel grace, added to --time so the server's own
                             timeout (SIGTERM, checkpoint) comes first */
} wk_start;

/* Starts an attempt: t is filled in (pid or slurm_id). QD_OK, or QD_ERR with err saying why
 * (sbatch's own message when it refused the job). */
int wk_task_start(wk_disp *d, wk_task *t, const wk_start *s, qd_err *err);

/* Event lines (whole, without the newline) go to on_line as they arrive. */
typedef void (*wk_line_fn)(void *ctx, const char *line);

/* Reads what the worker reported since the last call and where the attempt stands. On
 * WK_ENDED *end says how it ended and the task is finished with (no stop or kill after). */
wk_status wk_task_poll(wk_disp *d, wk_task *t, wk_line_fn on_line, void *ctx, wk_end *end);
/* The file descriptor to wait on for new events (local: the pipe), -1 when there is none
 * (Slurm: poll on a timer). */
int wk_task_fd(const wk_task *t);
/* Asks the worker to stop (SIGTERM: it writes its checkpoint and exits). */
void wk_task_stop(wk_disp *d, wk_task *t);
/* Ends the worker now (SIGKILL to its process group; scancel). */
void wk_task_kill(wk_disp *d, wk_task *t);

/* Runs slow cluster queries (squeue) for every live Slurm task, at most every poll_s. Call with
 * no lock held; the next wk_task_poll sees the result. Local: nothing to do. */
void wk_disp_refresh(wk_disp *d);

/* A server that starts finds n jobs recorded as running: t[i] holds what job.json recorded
 * (pid or slurm_id, or neither) and the job's job_id and jobdir. alive[i] becomes true when
 * the attempt goes on and t[i] now follows it (Slurm: the job is still known to the cluster,
 * found by its id or, when the id was never recorded, by its name quantd-<job id>); false when
 * there is nothing to follow and the job should be requeued (local: the orphaned worker was
 * stopped and has exited). Local orphans are stopped together: SIGTERM to all at once, SIGKILL
 * to those still there after grace_s, so the call takes one grace period at most (plus 5 s for
 * a process that ignores SIGKILL while in the kernel), however many there are. Call with no
 * lock held. */
void wk_tasks_reattach(wk_disp *d, wk_task *const *t, int n, double grace_s, bool *alive);

#endif
