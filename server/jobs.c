/* Job index and scheduler. One mutex guards the index; the scheduler thread holds it only
 * between polls, never while waiting. State changes follow one order everywhere: append the
 * event line to events.jsonl, change the in-memory record, rewrite job.json, then wake the
 * watchers. So a watcher that sees a terminal state knows the final event is already on disk. */
#include "server/jobs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uuid/uuid.h>

#include "base/err.h"
#include "worker/dispatch.h"
#include "worker/worker.h"
#include "base/fs.h"
#include "base/sys.h"

struct srv_job {
    api_job job;
    bool deleted;
    long seq;              /* FIFO order among queued jobs */
    unsigned long version; /* watchers wait for this to change */
    /* while an attempt is under way (active); started once its worker runs (on Slurm: once
     * the job left the cluster's queue), which is when its time starts to count */
    bool active, started;
    wk_task task;
    double start_mono, deadline_mono, term_sent_mono;
    double run_s_before;   /* job.run_s when this attempt started */
    double persisted_mono; /* when job.json was last written during this attempt */
    bool progress_dirty;   /* progress newer than job.json */
    bool timed_out, shutdown_stop, killed;
};

/* While a worker runs, job.json is rewritten at most this often (when progress changed), so a
 * restarted server shows recent progress and knows how much of timeout_s is used. */
#define PERSIST_EVERY_S 1.0
#define RUN_S_EVERY_S 5.0

struct srv_jobs {
    srv_jobs_opts o;
    pthread_mutex_t mu;
    pthread_cond_t changed;
    srv_job **all;
    int n, cap;
    long next_seq;
    int running;
    bool stopping, closing;
    int wake[2];
    pthread_t thread;
    bool thread_started;
};

static void wake(srv_jobs *j) {
    char c = 1;
    if (write(j->wake[1], &c, 1) < 0) { /* a full wake pipe already means "wake up" */ }
}

static void bump(srv_jobs *j, srv_job *e) {
    e->version++;
    pthread_cond_broadcast(&j->changed);
}

static void persist(srv_jobs *j, srv_job *e) {
    qd_err err;
    if (srv_store_write_job(j->o.store, &e->job, &err))
        fprintf(stderr, "quantd: job %s: %s\n", e->job.id, err.msg);
}

static void append_event(srv_jobs *j, srv_job *e, char *line) {
    if (!line) return;
    qd_err err;
    if (srv_store_append_event(j->o.store, e->job.id, line, &err))
        fprintf(stderr, "quantd: job %s: %s\n", e->job.id, err.msg);
    free(line);
}

/* A job that ends any other way than succeeded has no report: a worker that wrote one just
 * before its cancel, timeout or kill took effect must not leave it looking finished. */
static void drop_report(srv_jobs *j, const srv_job *e) {
    char p[PATH_MAX + 64];
    srv_job_dir(j->o.store, e->job.id, p, PATH_MAX);
    strcat(p, "/artifacts/report.json");
    if (unlink(p) == 0) fprintf(stderr, "quantd: job %s: report.json removed (job %s)\n",
                                e->job.id, api_state_name(e->job.state));
}

/* The one way a job changes state: event, record, job.json, watchers. */
static void set_state(srv_jobs *j, srv_job *e, api_state s, const char *reason) {
    if (api_state_terminal(s) && s != API_SUCCEEDED) drop_report(j, e);
    append_event(j, e, api_event_state(s, reason));
    e->job.state = s;
    if (api_state_terminal(s)) e->job.finished_at = api_wall_now();
    persist(j, e);
    bump(j, e);
}

static srv_job *find_locked(srv_jobs *j, const char *id) {
    for (int i = 0; i < j->n; i++)
        if (!j->all[i]->deleted && !strcmp(j->all[i]->job.id, id)) return j->all[i];
    return NULL;
}

static int add_entry(srv_jobs *j, srv_job *e) {
    if (j->n == j->cap) {
        int cap = j->cap ? j->cap * 2 : 64;
        srv_job **na = realloc(j->all, (size_t)cap * sizeof *na);
        if (!na) return -1;
        j->all = na;
        j->cap = cap;
    }
    j->all[j->n++] = e;
    return 0;
}

static int queue_position(srv_jobs *j, const srv_job *e) {
    if (e->job.state != API_QUEUED) return -1;
    int pos = 0;
    for (int i = 0; i < j->n; i++) {
        const srv_job *o = j->all[i];
        if (!o->deleted && o->job.state == API_QUEUED && o->seq < e->seq) pos++;
    }
    return pos;
}

static char *job_text_locked(srv_jobs *j, const srv_job *e) {
    cJSON *o = api_job_to_json(&e->job, queue_position(j, e));
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return t;
}

/* ---- artifacts and results ---- */

static void list_dir(cJSON *arr, const char *root, const char *rel, int depth) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char r[PATH_MAX], full[PATH_MAX * 2];
        snprintf(r, sizeof r, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
        snprintf(full, sizeof full, "%s/%s", root, r);
        struct stat st;
        if (lstat(full, &st) != 0) continue;
        if (S_ISDIR(st.st_mode) && depth < 4) {
            list_dir(arr, root, r, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", r);
            cJSON_AddNumberToObject(o, "size", (double)st.st_size);
            cJSON_AddItemToArray(arr, o);
        }
    }
    closedir(d);
}

cJSON *srv_artifacts_json(const char *dir) {
    cJSON *arr = cJSON_CreateArray();
    list_dir(arr, dir, "", 0);
    return arr;
}

/* A finished job's result: its artifacts and the report's headline figures, so that a CI
 * pipeline can gate on GET /v1/jobs/{id} alone. */
static cJSON *build_result(const char *jobdir) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/artifacts", jobdir);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddItemToObject(r, "artifacts", srv_artifacts_json(p));
    snprintf(p, sizeof p, "%s/artifacts/report.json", jobdir);
    size_t len;
    qd_err err;
    char *text = qd_read_file(p, 64 << 20, &len, &err);
    cJSON *rep = text ? cJSON_Parse(text) : NULL;
    free(text);
    /* the headline: the report's own keys, chosen in one place */
    api_report_headline(rep, r);
    cJSON_Delete(rep);
    return r;
}

/* The reason a worker gave for failing: the message of the last error event it wrote to
 * events.jsonl (the pipeline's own words, which name the user's fields and files: the worker
 * runs on its inputs laid out under those names). false when there is none, e.g. a worker
 * that crashed before saying anything. Reads at most the file's last 64 KiB. */
static bool worker_reason(const char *jobdir, char *out, size_t n) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/events.jsonl", jobdir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    enum { TAIL = 64 * 1024 };
    char *buf = malloc(TAIL + 1);
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > TAIL ? end - TAIL : 0;
    ssize_t k = buf ? pread(fd, buf, TAIL, start) : -1;
    close(fd);
    bool found = false;
    if (k > 0) {
        buf[k] = 0;
        for (char *line = buf, *nl; line && *line; line = nl ? nl + 1 : NULL) {
            nl = strchr(line, '\n');
            if (nl) *nl = 0;
            cJSON *o = cJSON_Parse(line);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type"),
                        *l = cJSON_GetObjectItemCaseSensitive(o, "level"),
                        *m = cJSON_GetObjectItemCaseSensitive(o, "message");
            if (cJSON_IsString(t) && !strcmp(t->valuestring, "log") && cJSON_IsString(l) &&
                !strcmp(l->valuestring, "error") && cJSON_IsString(m) && m->valuestring[0]) {
                snprintf(out, n, "%s", m->valuestring);
                found = true;
            }
            cJSON_Delete(o);
        }
    }
    free(buf);
    return found;
}

static void read_log_tail(const char *jobdir, char *out, size_t n) {
    out[0] = 0;
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/worker.log", jobdir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)(n - 1) ? end - (off_t)(n - 1) : 0;
    ssize_t k = pread(fd, out, n - 1, start);
    close(fd);
    if (k <= 0) {
        out[0] = 0;
        return;
    }
    out[k] = 0;
    /* start at a line boundary when we cut into the middle of the file */
    if (start > 0) {
        char *nl = strchr(out, '\n');
        if (nl) memmove(out, nl + 1, strlen(nl + 1) + 1);
    }
}

/* ---- the scheduler ---- */

/* Brings job.run_s up to date for a running attempt. */
static void update_run_s(srv_job *e, double now) {
    if (e->active && e->started) e->job.run_s = e->run_s_before + (now - e->start_mono);
}

/* The attempt's worker runs from now: its time counts against what is left of timeout_s. */
static void begin_run(srv_job *e, double now) {
    e->started = true;
    e->start_mono = now;
    e->run_s_before = e->job.run_s;
    e->deadline_mono = now + (e->job.spec.timeout_s - e->job.run_s);
    e->persisted_mono = now;
}

/* What job.json shows of a Slurm attempt follows the dispatcher's view; true when it changed. */
static bool sync_slurm(srv_job *e) {
    const wk_task *t = &e->task;
    api_job *J = &e->job;
    if (!t->slurm_id[0]) return false;
    bool changed = strcmp(J->slurm_job_id, t->slurm_id) || strcmp(J->slurm_state, t->slurm_state) ||
                   strcmp(J->slurm_node, t->slurm_node) || strcmp(J->slurm_reason, t->slurm_reason);
    snprintf(J->slurm_job_id, sizeof J->slurm_job_id, "%s", t->slurm_id);
    snprintf(J->slurm_state, sizeof J->slurm_state, "%s", t->slurm_state);
    snprintf(J->slurm_node, sizeof J->slurm_node, "%s", t->slurm_node);
    snprintf(J->slurm_reason, sizeof J->slurm_reason, "%s", t->slurm_reason);
    return changed;
}

static void start_job(srv_jobs *j, srv_job *e) {
    char dir[PATH_MAX];
    srv_job_dir(j->o.store, e->job.id, dir, sizeof dir);
    /* timeout_s bounds the job's whole time in workers, over every attempt: a job that keeps
     * being restarted (server restarts, SIGTERMs) still ends */
    double left = e->job.spec.timeout_s - e->job.run_s;
    if (left <= 0) {
        snprintf(e->job.error, sizeof e->job.error,
                 "exceeded timeout_s=%d over %d attempt%s (%.1f s in workers)",
                 e->job.spec.timeout_s, e->job.attempts, e->job.attempts == 1 ? "" : "s",
                 e->job.run_s);
        set_state(j, e, API_TIMED_OUT, e->job.error);
        return;
    }
    e->job.attempts++;
    e->job.started_at = api_wall_now();
    e->job.exit_code = -1;
    e->job.term_signal = 0;
    e->job.error[0] = 0;
    e->job.log_tail[0] = 0;
    e->job.slurm_job_id[0] = e->job.slurm_state[0] = e->job.slurm_node[0] = e->job.slurm_reason[0] = 0;
    e->timed_out = e->shutdown_stop = e->killed = false;
    e->term_sent_mono = 0;
    e->started = false;
    char reason[64];
    snprintf(reason, sizeof reason, "attempt %d", e->job.attempts);
    set_state(j, e, API_RUNNING, reason);
    wk_start ws = {.job_id = e->job.id, .jobdir = dir, .threads = e->job.spec.threads,
                   .time_limit_s = left, .grace_s = j->o.grace_s};
    qd_err err;
    /* sbatch may take a while (a busy or unreachable controller): the index is not held
     * meanwhile. Only this thread touches e->task, and a running job is never deleted. */
    e->active = true;
    j->running++;
    pthread_mutex_unlock(&j->mu);
    int rc = wk_task_start(j->o.disp, &e->task, &ws, &err);
    pthread_mutex_lock(&j->mu);
    if (rc != QD_OK) {
        e->active = false;
        j->running--;
        if (wk_disp_detached(j->o.disp)) snprintf(e->job.error, sizeof e->job.error, "%.500s", err.msg);
        else snprintf(e->job.error, sizeof e->job.error, "cannot start worker: %.400s", err.msg);
        set_state(j, e, API_FAILED, e->job.error);
        return;
    }
    e->job.worker_pid = (int)e->task.pid;
    sync_slurm(e);
    if (!wk_disp_detached(j->o.disp)) begin_run(e, qd_now());
    e->persisted_mono = qd_now();
    e->progress_dirty = false;
    /* the pid or Slurm job id lets a restarted server find the attempt again */
    persist(j, e);
    bump(j, e);
}

/* Rewrites a running job's job.json when its progress changed and the last write is at least
 * PERSIST_EVERY_S old, and every RUN_S_EVERY_S regardless (run_s moves on through long quiet
 * phases). The scheduler also calls this on every poll, so the last progress of a burst
 * reaches the disk within about a second even when no further line arrives. */
static void persist_progress(srv_jobs *j, srv_job *e, double now) {
    double age = now - e->persisted_mono;
    if (age < PERSIST_EVERY_S || (!e->progress_dirty && age < RUN_S_EVERY_S)) return;
    update_run_s(e, now);
    persist(j, e);
    e->persisted_mono = now;
    e->progress_dirty = false;
}

typedef struct line_ctx {
    srv_jobs *j;
    srv_job *e;
} line_ctx;

static void handle_line(void *ctx, const char *line) {
    line_ctx *c = ctx;
    cJSON *o = cJSON_Parse(line);
    if (o && api_event_apply(o, &c->e->job.progress)) {
        c->e->progress_dirty = true;
        persist_progress(c->j, c->e, qd_now());
    }
    cJSON_Delete(o);
    bump(c->j, c->e);
}

static bool has_report(const char *dir) {
    char rp[PATH_MAX + 64];
    snprintf(rp, sizeof rp, "%s/artifacts/report.json", dir);
    return access(rp, R_OK) == 0;
}

static void finish_job(srv_jobs *j, srv_job *e, const wk_end *end) {
    double now = qd_now();
    if (e->started && j->o.metrics) srv_metrics_add_worker_seconds(j->o.metrics, now - e->start_mono);
    update_run_s(e, now);
    e->active = false;
    j->running--;
    sync_slurm(e);
    char dir[PATH_MAX];
    srv_job_dir(j->o.store, e->job.id, dir, sizeof dir);
    e->job.exit_code = end->exit_code;
    e->job.term_signal = end->term_signal;
    if (end->kind != WK_END_EXIT && !e->job.cancel_requested) {
        /* the cluster ended the attempt, or lost it */
        if (end->kind == WK_END_LOST && has_report(dir)) {
            /* it finished while nobody was looking (server down, the job aged out of Slurm) */
            cJSON_Delete(e->job.result);
            e->job.result = build_result(dir);
            set_state(j, e, API_SUCCEEDED, "report found after the Slurm job left the queue");
            return;
        }
        if (end->kind == WK_END_LOST && e->job.attempts < j->o.max_attempts) {
            char msg[600];
            e->seq = -1000000 + e->seq;
            snprintf(msg, sizeof msg, "%.450s; requeued to resume from its checkpoint", end->why);
            set_state(j, e, API_QUEUED, msg);
            return;
        }
        snprintf(e->job.error, sizeof e->job.error, "%s", end->why);
        read_log_tail(dir, e->job.log_tail, sizeof e->job.log_tail);
        set_state(j, e, end->kind == WK_END_TIMEOUT ? API_TIMED_OUT : API_FAILED, e->job.error);
        return;
    }
    int code = e->job.exit_code;
    char msg[512];
    if (code == WK_EXIT_OK && !e->job.cancel_requested) {
        if (has_report(dir)) {
            cJSON_Delete(e->job.result);
            e->job.result = build_result(dir);
            set_state(j, e, API_SUCCEEDED, NULL);
            return;
        }
        snprintf(e->job.error, sizeof e->job.error, "worker exited 0 without a report.json");
    } else if (e->job.cancel_requested) {
        set_state(j, e, API_CANCELLED, "cancelled by request");
        return;
    } else if (e->timed_out) {
        snprintf(e->job.error, sizeof e->job.error, "exceeded timeout_s=%d (%.1f s in workers over %d attempt%s)",
                 e->job.spec.timeout_s, e->job.run_s, e->job.attempts, e->job.attempts == 1 ? "" : "s");
        read_log_tail(dir, e->job.log_tail, sizeof e->job.log_tail);
        set_state(j, e, API_TIMED_OUT, e->job.error);
        return;
    } else if (e->shutdown_stop ||
               (code == WK_EXIT_STOPPED && e->job.attempts < j->o.max_attempts)) {
        /* Stopped with a checkpoint: by our shutdown, or by someone else's SIGTERM. Either way
         * the job can go on, from its checkpoint, on the next free slot. */
        e->seq = -1000000 + e->seq; /* ahead of jobs that never started */
        snprintf(msg, sizeof msg, "worker stopped (%s); requeued to resume from its checkpoint",
                 e->shutdown_stop ? "server shutting down" : "SIGTERM");
        set_state(j, e, API_QUEUED, msg);
        return;
    } else if (e->job.term_signal && !e->killed && e->job.attempts < j->o.max_attempts) {
        /* killed by someone else (the OOM killer's SIGKILL, an operator): the next attempt
         * resumes from the checkpoint the worker left */
        e->seq = -1000000 + e->seq;
        snprintf(msg, sizeof msg, "worker killed by signal %d (%s); retrying from its checkpoint "
                 "(attempt %d of %d)", e->job.term_signal, strsignal(e->job.term_signal),
                 e->job.attempts + 1, j->o.max_attempts);
        set_state(j, e, API_QUEUED, msg);
        return;
    } else if (e->job.term_signal) {
        snprintf(e->job.error, sizeof e->job.error, "worker killed by signal %d (%s)%s",
                 e->job.term_signal, strsignal(e->job.term_signal),
                 e->killed ? "" : " on its last attempt");
    } else if (!worker_reason(dir, e->job.error, sizeof e->job.error)) {
        snprintf(e->job.error, sizeof e->job.error, "worker exited with status %d", code);
    }
    read_log_tail(dir, e->job.log_tail, sizeof e->job.log_tail);
    set_state(j, e, API_FAILED, e->job.error);
}

static srv_job *next_queued(srv_jobs *j) {
    srv_job *best = NULL;
    for (int i = 0; i < j->n; i++) {
        srv_job *e = j->all[i];
        if (!e->deleted && e->job.state == API_QUEUED && (!best || e->seq < best->seq)) best = e;
    }
    return best;
}

static void recover_orphans(srv_jobs *j);

static void *scheduler(void *arg) {
    srv_jobs *j = arg;
    struct pollfd *pf = NULL;
    int pcap = 0;
    bool detached = wk_disp_detached(j->o.disp);
    pthread_mutex_lock(&j->mu);
    recover_orphans(j);
    for (;;) {
        /* Slurm jobs outlive the server: a stopping server leaves them to the next start */
        if (j->stopping && (j->running == 0 || detached)) break;
        while (!j->stopping && j->running < j->o.workers) {
            srv_job *e = next_queued(j);
            if (!e) break;
            start_job(j, e);
        }
        if (pcap < j->running + 1) {
            pcap = j->running + 16;
            pf = realloc(pf, (size_t)pcap * sizeof *pf);
        }
        int np = 0;
        pf[np++] = (struct pollfd){.fd = j->wake[0], .events = POLLIN};
        for (int i = 0; i < j->n && np < pcap; i++) {
            srv_job *e = j->all[i];
            if (e->active && wk_task_fd(&e->task) >= 0)
                pf[np++] = (struct pollfd){.fd = wk_task_fd(&e->task), .events = POLLIN};
        }
        pthread_mutex_unlock(&j->mu);
        wk_disp_refresh(j->o.disp); /* squeue, at most every slurm_poll_s */
        poll(pf, (nfds_t)np, 200);
        pthread_mutex_lock(&j->mu);
        if (pf[0].revents) {
            char buf[256];
            while (read(j->wake[0], buf, sizeof buf) > 0) {}
        }
        for (int i = 0; i < j->n; i++) {
            srv_job *e = j->all[i];
            if (!e->active) continue;
            line_ctx lc = {j, e};
            wk_end end;
            wk_status st = wk_task_poll(j->o.disp, &e->task, handle_line, &lc, &end);
            double now = qd_now();
            if (st == WK_ENDED) {
                finish_job(j, e, &end);
                continue;
            }
            if (st == WK_RUNNING && !e->started) {
                begin_run(e, now);
                e->progress_dirty = true;
            }
            if (sync_slurm(e)) {
                e->progress_dirty = true;
                e->persisted_mono = 0; /* a Slurm state change is worth a write now */
                bump(j, e);
            }
            persist_progress(j, e, now);
            bool want_stop = e->job.cancel_requested || (j->stopping && !detached);
            if (e->started && !e->timed_out && !want_stop && now > e->deadline_mono) e->timed_out = true;
            if ((want_stop || e->timed_out) && e->term_sent_mono == 0) {
                e->shutdown_stop = j->stopping && !e->job.cancel_requested && !e->timed_out;
                wk_task_stop(j->o.disp, &e->task);
                e->term_sent_mono = now;
            } else if (e->term_sent_mono > 0 && !e->killed && now - e->term_sent_mono > j->o.grace_s) {
                wk_task_kill(j->o.disp, &e->task);
                e->killed = true;
            }
        }
    }
    /* what a re-attaching server will show: the latest progress and run time */
    for (int i = 0; i < j->n; i++)
        if (j->all[i]->active) {
            update_run_s(j->all[i], qd_now());
            persist(j, j->all[i]);
        }
    pthread_mutex_unlock(&j->mu);
    free(pf);
    return NULL;
}

/* ---- recovery ---- */

/* A job recorded as running when the server starts lost its server mid-run. On Slurm its
 * batch job is (or was) still there: follow it again, never submit a second copy. A local
 * worker was stopped (it checkpoints on the SIGTERM of PR_SET_PDEATHSIG); requeue the job to
 * resume, or end it cancelled when a cancel came while it was being reaped. alive: what
 * wk_tasks_reattach said of its task. */
static void recover_orphan(srv_jobs *j, srv_job *e, bool alive) {
    char dir[PATH_MAX];
    srv_job_dir(j->o.store, e->job.id, dir, sizeof dir);
    if (alive) {
        e->active = true;
        e->started = false;
        e->term_sent_mono = 0;
        e->timed_out = e->shutdown_stop = e->killed = false;
        j->running++;
        char msg[160];
        snprintf(msg, sizeof msg, "server restarted; following Slurm job %s again", e->task.slurm_id);
        append_event(j, e, api_event_log("info", msg));
        sync_slurm(e);
        persist(j, e);
        bump(j, e);
        return;
    }
    char ck[PATH_MAX + 32];
    snprintf(ck, sizeof ck, "%s/checkpoint", dir);
    bool have_ck = access(ck, F_OK) == 0;
    e->job.worker_pid = 0;
    if (e->job.cancel_requested) {
        set_state(j, e, API_CANCELLED, "cancelled by request while the server restarted");
        return;
    }
    e->seq = -1000000 + e->seq;
    set_state(j, e, API_QUEUED,
              have_ck ? "server restarted; requeued to resume from its checkpoint"
                      : "server restarted; requeued");
}

/* Every job recorded as running when the server started, at once and with the index unlocked
 * while the dispatcher reaps or finds their workers (a local orphan may take cancel_grace_s to
 * stop): the API answers meanwhile, and n orphans cost one grace period, not n. Called by the
 * scheduler thread, with the lock held, before it starts any job; the orphans are not active,
 * so nothing else touches their tasks. */
static void recover_orphans(srv_jobs *j) {
    int n = 0;
    for (int i = 0; i < j->n; i++) n += !j->all[i]->deleted && j->all[i]->job.state == API_RUNNING;
    if (n == 0) return;
    srv_job **es = malloc(sizeof *es * (size_t)n);
    wk_task **ts = malloc(sizeof *ts * (size_t)n);
    bool *alive = calloc((size_t)n, sizeof *alive);
    if (!es || !ts || !alive) {
        fprintf(stderr, "quantd: recovery: out of memory; %d running jobs left as they are\n", n);
        free(es), free(ts), free(alive);
        return;
    }
    int k = 0;
    for (int i = 0; i < j->n && k < n; i++) {
        srv_job *e = j->all[i];
        if (e->deleted || e->job.state != API_RUNNING) continue;
        memset(&e->task, 0, sizeof e->task);
        e->task.pid = e->job.worker_pid;
        snprintf(e->task.slurm_id, sizeof e->task.slurm_id, "%s", e->job.slurm_job_id);
        snprintf(e->task.job_id, sizeof e->task.job_id, "%s", e->job.id);
        srv_job_dir(j->o.store, e->job.id, e->task.jobdir, sizeof e->task.jobdir);
        es[k] = e, ts[k] = &e->task;
        k++;
    }
    pthread_mutex_unlock(&j->mu);
    wk_tasks_reattach(j->o.disp, ts, k, j->o.grace_s, alive);
    pthread_mutex_lock(&j->mu);
    for (int i = 0; i < k; i++) recover_orphan(j, es[i], alive[i]);
    free(es), free(ts), free(alive);
}

static int cmp_created(const void *a, const void *b) {
    const api_job *x = a, *y = b;
    return x->created_at < y->created_at ? -1 : x->created_at > y->created_at;
}

srv_jobs *srv_jobs_start(const srv_jobs_opts *o, qd_err *err) {
    srv_jobs *j = calloc(1, sizeof *j);
    if (!j) {
        qd_errf(err, "%s: out of memory", __func__);
        return NULL;
    }
    j->o = *o;
    if (j->o.workers < 1) j->o.workers = 1;
    if (j->o.max_attempts < 1) j->o.max_attempts = 1;
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->changed, &ca);
    pthread_condattr_destroy(&ca);
    if (pipe2(j->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        qd_errf(err, "%s: pipe: %s", __func__, strerror(errno));
        free(j);
        return NULL;
    }
    api_job *loaded;
    int n;
    if (srv_store_load_jobs(o->store, &loaded, &n, err) != QD_OK) {
        srv_jobs_free(j);
        return NULL;
    }
    qsort(loaded, (size_t)n, sizeof *loaded, cmp_created);
    for (int i = 0; i < n; i++) {
        srv_job *e = calloc(1, sizeof *e);
        e->job = loaded[i];
        e->seq = j->next_seq++;
        add_entry(j, e);
    }
    free(loaded);
    if (pthread_create(&j->thread, NULL, scheduler, j) != 0) {
        qd_errf(err, "%s: cannot start the scheduler thread", __func__);
        srv_jobs_free(j);
        return NULL;
    }
    j->thread_started = true;
    return j;
}

void srv_jobs_close_watchers(srv_jobs *j) {
    pthread_mutex_lock(&j->mu);
    j->closing = true;
    pthread_cond_broadcast(&j->changed);
    pthread_mutex_unlock(&j->mu);
}

void srv_jobs_free(srv_jobs *j) {
    if (!j) return;
    if (j->thread_started) {
        pthread_mutex_lock(&j->mu);
        j->stopping = true;
        j->closing = true;
        pthread_cond_broadcast(&j->changed);
        pthread_mutex_unlock(&j->mu);
        wake(j);
        pthread_join(j->thread, NULL);
    }
    for (int i = 0; i < j->n; i++) {
        api_job_clear(&j->all[i]->job);
        free(j->all[i]);
    }
    free(j->all);
    close(j->wake[0]);
    close(j->wake[1]);
    pthread_cond_destroy(&j->changed);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

/* ---- API operations ---- */

int srv_jobs_submit(srv_jobs *j, const api_spec *spec, char **json, qd_err *err) {
    srv_job *e = calloc(1, sizeof *e);
    if (!e) return qd_errf(err, "out of memory"), SRV_INTERNAL;
    api_job_init(&e->job);
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, e->job.id);
    e->job.spec = *spec;
    e->job.state = API_QUEUED;
    e->job.created_at = api_wall_now();
    pthread_mutex_lock(&j->mu);
    long queued = 0;
    for (int i = 0; i < j->n; i++)
        if (!j->all[i]->deleted && j->all[i]->job.state == API_QUEUED) queued++;
    if (queued >= j->o.max_queue) {
        pthread_mutex_unlock(&j->mu);
        free(e);
        qd_errf(err, "the queue holds %ld jobs, its limit", queued);
        return SRV_QUEUE_FULL;
    }
    char *ev = api_event_state(API_QUEUED, "submitted");
    int rc = srv_store_create_job(j->o.store, &e->job, ev, err);
    free(ev);
    if (rc != QD_OK || add_entry(j, e) != 0) {
        pthread_mutex_unlock(&j->mu);
        free(e);
        return SRV_INTERNAL;
    }
    e->seq = j->next_seq++;
    *json = job_text_locked(j, e);
    pthread_mutex_unlock(&j->mu);
    wake(j);
    return SRV_OK;
}

char *srv_jobs_get_json(srv_jobs *j, const char *id) {
    pthread_mutex_lock(&j->mu);
    srv_job *e = find_locked(j, id);
    char *t = e ? job_text_locked(j, e) : NULL;
    pthread_mutex_unlock(&j->mu);
    return t;
}

int srv_jobs_state(srv_jobs *j, const char *id, api_state *st) {
    pthread_mutex_lock(&j->mu);
    srv_job *e = find_locked(j, id);
    if (e) *st = e->job.state;
    pthread_mutex_unlock(&j->mu);
    return e ? SRV_OK : SRV_NOT_FOUND;
}

static bool has_label(const api_spec *s, const char *label) {
    const char *eq = strchr(label, '=');
    size_t kl = eq ? (size_t)(eq - label) : strlen(label);
    for (int i = 0; i < s->n_labels; i++)
        if (strlen(s->label_key[i]) == kl && !strncmp(s->label_key[i], label, kl) &&
            (!eq || !strcmp(s->label_val[i], eq + 1)))
            return true;
    return false;
}

static int cmp_newest(const void *a, const void *b) {
    const srv_job *x = *(srv_job *const *)a, *y = *(srv_job *const *)b;
    return x->job.created_at > y->job.created_at ? -1 : x->job.created_at < y->job.created_at;
}

char *srv_jobs_list_json(srv_jobs *j, const char *state, const char *label, int offset, int limit) {
    api_state want = API_QUEUED;
    bool by_state = state && api_state_parse(state, &want) == 0;
    pthread_mutex_lock(&j->mu);
    srv_job **sel = malloc((size_t)(j->n + 1) * sizeof *sel);
    int k = 0;
    for (int i = 0; i < j->n; i++) {
        srv_job *e = j->all[i];
        if (e->deleted || (by_state && e->job.state != want) || (label && !has_label(&e->job.spec, label)))
            continue;
        sel[k++] = e;
    }
    qsort(sel, (size_t)k, sizeof *sel, cmp_newest);
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "jobs");
    for (int i = offset; i < k && i < offset + limit; i++)
        cJSON_AddItemToArray(arr, api_job_to_json(&sel[i]->job, queue_position(j, sel[i])));
    pthread_mutex_unlock(&j->mu);
    cJSON_AddNumberToObject(o, "total", k);
    cJSON_AddNumberToObject(o, "offset", offset);
    cJSON_AddNumberToObject(o, "limit", limit);
    if (offset + limit < k) cJSON_AddNumberToObject(o, "next_offset", offset + limit);
    else cJSON_AddNullToObject(o, "next_offset");
    free(sel);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return t;
}

int srv_jobs_cancel(srv_jobs *j, const char *id, char **json) {
    pthread_mutex_lock(&j->mu);
    srv_job *e = find_locked(j, id);
    int rc = SRV_OK;
    if (!e) rc = SRV_NOT_FOUND;
    else if (api_state_terminal(e->job.state)) rc = SRV_CONFLICT;
    else if (e->job.state == API_QUEUED) {
        e->job.cancel_requested = true;
        set_state(j, e, API_CANCELLED, "cancelled by request before it started");
    } else if (!e->job.cancel_requested) {
        e->job.cancel_requested = true;
        persist(j, e);
        bump(j, e);
    }
    if (e && json) *json = job_text_locked(j, e);
    pthread_mutex_unlock(&j->mu);
    if (rc == SRV_OK) wake(j);
    return rc;
}

int srv_jobs_delete(srv_jobs *j, const char *id, qd_err *err) {
    pthread_mutex_lock(&j->mu);
    srv_job *e = find_locked(j, id);
    int rc = SRV_OK;
    if (!e) rc = SRV_NOT_FOUND;
    else if (!api_state_terminal(e->job.state)) rc = SRV_CONFLICT;
    else if (srv_store_delete_job(j->o.store, id, err) != QD_OK) rc = SRV_INTERNAL;
    else {
        /* the entry stays allocated (SSE streams may hold it) but leaves the index */
        e->deleted = true;
        bump(j, e);
    }
    pthread_mutex_unlock(&j->mu);
    return rc;
}

srv_job *srv_jobs_find(srv_jobs *j, const char *id) {
    pthread_mutex_lock(&j->mu);
    srv_job *e = find_locked(j, id);
    pthread_mutex_unlock(&j->mu);
    return e;
}

static void watch_locked(srv_jobs *j, srv_job *e, srv_job_watch *w) {
    w->version = e->version;
    w->terminal = api_state_terminal(e->job.state);
    w->gone = e->deleted || j->closing;
}

void srv_jobs_watch(srv_jobs *j, srv_job *e, srv_job_watch *w) {
    pthread_mutex_lock(&j->mu);
    watch_locked(j, e, w);
    pthread_mutex_unlock(&j->mu);
}

void srv_jobs_wait(srv_jobs *j, srv_job *e, srv_job_watch *w, double timeout_s) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double frac = timeout_s - floor(timeout_s);
    ts.tv_sec += (time_t)floor(timeout_s);
    ts.tv_nsec += (long)(frac * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->mu);
    while (e->version == w->version && !e->deleted && !j->closing)
        if (pthread_cond_timedwait(&j->changed, &j->mu, &ts) == ETIMEDOUT) break;
    watch_locked(j, e, w);
    pthread_mutex_unlock(&j->mu);
}

void srv_jobs_counts(srv_jobs *j, long by_state[API_STATE_COUNT], long *queue_len, long *busy,
                     long *max) {
    memset(by_state, 0, sizeof(long) * API_STATE_COUNT);
    pthread_mutex_lock(&j->mu);
    for (int i = 0; i < j->n; i++)
        if (!j->all[i]->deleted) by_state[j->all[i]->job.state]++;
    *busy = j->running;
    *max = j->o.workers;
    pthread_mutex_unlock(&j->mu);
    *queue_len = by_state[API_QUEUED];
}
