/* The job index and the scheduler. The index is rebuilt from the store at start; a job whose
 * local worker vanished (server killed) is requeued and resumes from its checkpoint, a job on
 * Slurm is followed again by its recorded batch job id. The scheduler thread runs at most
 * `workers` jobs at once, FIFO, each as one `quantd work` started through a dispatcher
 * (worker/dispatch.h: a local process or a Slurm batch job), follows their events, enforces
 * wall-clock timeouts and cancels (SIGTERM, then a kill after a grace period), and records how
 * each worker ended. */
#ifndef QD_SRV_JOBS_H
#define QD_SRV_JOBS_H

#include <stdbool.h>

#include "api/api.h"
#include "server/metrics.h"
#include "server/store.h"
#include "worker/dispatch.h"

typedef struct srv_jobs srv_jobs;
typedef struct srv_job srv_job; /* one indexed job; valid until srv_jobs_free */

typedef struct srv_jobs_opts {
    srv_store *store;
    srv_metrics *metrics;    /* may be NULL */
    wk_disp *disp;           /* where workers run; the caller keeps it until srv_jobs_free */
    int workers;             /* attempts under way at once (on Slurm: submitted at once) */
    size_t worker_mem_bytes;
    double grace_s;
    int max_queue;
    int max_attempts;        /* srv_config.max_attempts (< 1: 1) */
} srv_jobs_opts;

enum { SRV_OK = 0, SRV_NOT_FOUND, SRV_CONFLICT, SRV_QUEUE_FULL, SRV_INTERNAL };

/* Loads the store's jobs, recovers orphans, starts the scheduler thread. NULL on error. */
srv_jobs *srv_jobs_start(const srv_jobs_opts *o, qd_err *err);
/* Stops SSE waiters from blocking (they see the index as closing). Call before stopping HTTP. */
void srv_jobs_close_watchers(srv_jobs *j);
/* Stops the scheduler: local workers get SIGTERM (they checkpoint) and their jobs go back to
 * queued for the next start; Slurm jobs keep running and the next start follows them again.
 * Frees everything. Accepts NULL. */
void srv_jobs_free(srv_jobs *j);

/* Creates and queues a job for a validated spec. SRV_OK with *json (malloc'd job JSON), or
 * SRV_QUEUE_FULL / SRV_INTERNAL with err set. */
int srv_jobs_submit(srv_jobs *j, const api_spec *spec, char **json, qd_err *err);
/* The job as JSON text (malloc'd), NULL when unknown. */
char *srv_jobs_get_json(srv_jobs *j, const char *id);
/* Jobs newest first, filtered by state (NULL: any) and label "key=value" (NULL: any). */
char *srv_jobs_list_json(srv_jobs *j, const char *state, const char *label, int offset, int limit);
/* Cancels a queued or running job. SRV_OK (*json set), SRV_NOT_FOUND, SRV_CONFLICT. */
int srv_jobs_cancel(srv_jobs *j, const char *id, char **json);
/* Deletes a finished job and its files. SRV_OK, SRV_NOT_FOUND, SRV_CONFLICT (not finished). */
int srv_jobs_delete(srv_jobs *j, const char *id, qd_err *err);
/* State of a job; SRV_OK or SRV_NOT_FOUND. */
int srv_jobs_state(srv_jobs *j, const char *id, api_state *st);

/* For SSE: look a job up once, then wait for changes. */
srv_job *srv_jobs_find(srv_jobs *j, const char *id);
typedef struct srv_job_watch {
    unsigned long version; /* bumps on every event and state change */
    bool terminal;         /* the job has finished (its last event is on disk) */
    bool gone;             /* deleted, or the server is stopping */
} srv_job_watch;
void srv_jobs_watch(srv_jobs *j, srv_job *e, srv_job_watch *w);
/* Blocks until the job changes past w->version or timeout_s passes; refreshes *w. */
void srv_jobs_wait(srv_jobs *j, srv_job *e, srv_job_watch *w, double timeout_s);

/* Counts for /metrics and /healthz. */
void srv_jobs_counts(srv_jobs *j, long by_state[API_STATE_COUNT], long *queue_len, long *busy,
                     long *max);

/* Artifacts under dir (recursive, relative names) as a JSON array of {name,size}. */
cJSON *srv_artifacts_json(const char *dir);

#endif
