/* The Slurm dispatcher. A job's attempt is one batch job:
 *   sbatch --parsable --job-name=quantd-<id> --chdir=JOBDIR --output=JOBDIR/worker.log ...
 *          TEMPLATE JOBDIR QUANTD
 * where the template (deploy/quantd.sbatch, built in, or the site's own) execs `quantd work
 * JOBDIR` on the node. The Slurm job id goes into job.json, so a restarted server follows the
 * same job instead of submitting another. Progress is read from JOBDIR/events.jsonl, which the
 * worker appends to on the shared filesystem (no pipe crosses machines). Where the job stands
 * comes from one squeue call for every live job, at most every poll_s, run by the scheduler with
 * its index unlocked (wk_slurm_refresh); the rare extra questions (sacct for a job squeue no
 * longer shows, scontrol for a node's state) are asked only when a job ends.
 *
 * Every command runs through posix_spawn with a hard time bound, stdin from /dev/null and
 * signals reset, so a hung controller delays a poll but never the server. Only the scheduler's
 * one thread calls into this file (and srv_jobs_start before that thread exists), so the table
 * of live jobs needs no lock. */
#include "worker/dispatch_slurm.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/embed.h"
#include "base/fs.h"
#include "base/sys.h"

extern char **environ;

/* deploy/quantd.sbatch, built in: the script used when slurm_template is not set. */
QD_EMBED_FILE(wk_sbatch, "deploy/quantd.sbatch");

#define CMD_TIMEOUT_S 30.0
#define MAX_EXTRA_ARGS 32

typedef struct sl_entry {
    char id[32];
    double registered_mono; /* information older than this says nothing about the job */
    double info_mono;       /* when the squeue call that last answered for it started */
    bool known;             /* squeue listed it then */
    char state[24], reason[160], node[64];
    int exit_raw;           /* wait status as squeue gives it */
} sl_entry;

struct wk_slurm {
    char partition[128], account[128], qos[128];
    char extra_buf[1024];
    char *extra[MAX_EXTRA_ARGS];
    int n_extra;
    char script[PATH_MAX];
    char node_exe[PATH_MAX];
    size_t mem_limit;
    double poll_s, pending_down_s;
    bool builtin_script;
    sl_entry *live;
    int n_live, cap_live;
    double last_refresh;
    char last_error[400];
};

/* The message of a command's stderr as one line: "sbatch: error: " prefixes dropped, lines
 * joined with "; ", trailing blanks gone. */
static void one_line(const char *in, char *out, size_t n) {
    size_t k = 0;
    out[0] = 0;
    for (const char *p = in; *p && k + 1 < n;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        const char *s = p;
        for (const char *const *pre = (const char *const[]){"sbatch: ", "squeue: ", "scancel: ",
                                                             "error: ", NULL};
             *pre; pre++)
            if ((size_t)(s - p) + strlen(*pre) <= len && !strncmp(s, *pre, strlen(*pre))) s += strlen(*pre);
        len -= (size_t)(s - p);
        while (len && (s[len - 1] == ' ' || s[len - 1] == '\r')) len--;
        if (len) {
            int w = snprintf(out + k, n - k, "%s%.*s", k ? "; " : "", (int)len, s);
            if (w < 0) break;
            k += (size_t)w < n - k ? (size_t)w : n - k - 1;
        }
        if (!nl) break;
        p = nl + 1;
    }
}

static bool on_path(const char *cmd) {
    const char *path = getenv("PATH");
    if (!path) path = "/usr/bin:/bin";
    char buf[PATH_MAX];
    for (const char *p = path; *p;) {
        const char *c = strchr(p, ':');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len && len < sizeof buf - strlen(cmd) - 2) {
            snprintf(buf, sizeof buf, "%.*s/%s", (int)len, p, cmd);
            if (access(buf, X_OK) == 0) return true;
        }
        if (!c) break;
        p = c + 1;
    }
    return false;
}

/* ---- set-up ---- */

static void copy_opt(char *dst, size_t n, const char *v) { snprintf(dst, n, "%s", v ? v : ""); }

wk_slurm *wk_slurm_new(const wk_slurm_opts *o, const char *exe, size_t mem_limit, qd_err *err) {
    const char *need[] = {"sbatch", "squeue", "scancel", "scontrol"};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!on_path(need[i])) {
            qd_errf(err, "dispatcher = slurm: %s is not on PATH (Debian: apt-get install slurm-client)",
                    need[i]);
            return NULL;
        }
    wk_slurm *s = calloc(1, sizeof *s);
    if (!s) {
        qd_errf(err, "%s: out of memory", __func__);
        return NULL;
    }
    copy_opt(s->partition, sizeof s->partition, o->partition);
    copy_opt(s->account, sizeof s->account, o->account);
    copy_opt(s->qos, sizeof s->qos, o->qos);
    copy_opt(s->extra_buf, sizeof s->extra_buf, o->sbatch_args);
    char *sv = NULL;
    for (char *tok = strtok_r(s->extra_buf, " \t", &sv); tok; tok = strtok_r(NULL, " \t", &sv)) {
        if (s->n_extra == MAX_EXTRA_ARGS) {
            qd_errf(err, "slurm_sbatch_args: more than %d arguments", MAX_EXTRA_ARGS);
            free(s);
            return NULL;
        }
        s->extra[s->n_extra++] = tok;
    }
    copy_opt(s->node_exe, sizeof s->node_exe, o->quantd_path && o->quantd_path[0] ? o->quantd_path : exe);
    s->mem_limit = mem_limit;
    s->poll_s = o->poll_s > 0 ? o->poll_s : 5;
    s->pending_down_s = o->pending_down_s;
    s->last_refresh = -1e9;
    if (o->template_path && o->template_path[0]) {
        copy_opt(s->script, sizeof s->script, o->template_path);
        if (access(s->script, R_OK) != 0) {
            qd_errf(err, "slurm_template %s: %s", s->script, strerror(errno));
            free(s);
            return NULL;
        }
    } else {
        /* sbatch copies the script at submission, so one file in the data directory serves */
        if (mkdir(o->state_dir, 0755) != 0 && errno != EEXIST) {
            qd_errf(err, "%s: %s", o->state_dir, strerror(errno));
            free(s);
            return NULL;
        }
        snprintf(s->script, sizeof s->script, "%s/quantd.sbatch", o->state_dir);
        qd_atomic_file af;
        if (qd_atomic_open(&af, s->script, err) != QD_OK) {
            free(s);
            return NULL;
        }
        fwrite(wk_sbatch_start_, 1, (size_t)(wk_sbatch_end_ - wk_sbatch_start_), af.f);
        if (qd_atomic_commit(&af, err) != QD_OK) {
            free(s);
            return NULL;
        }
        chmod(s->script, 0755);
        s->builtin_script = true;
    }
    return s;
}

void wk_slurm_free(wk_slurm *s) {
    if (!s) return;
    free(s->live);
    free(s);
}

void wk_slurm_describe(const wk_slurm *s, char *out, size_t n) {
    snprintf(out, n,
             "workers run on Slurm: sbatch%s%s%s%s%s%s%s%s %s (%s), quantd on the nodes: %s, squeue "
             "every %.1f s",
             s->partition[0] ? " --partition=" : "", s->partition, s->account[0] ? " --account=" : "",
             s->account, s->qos[0] ? " --qos=" : "", s->qos, s->n_extra ? " " : "",
             s->n_extra ? "+ slurm_sbatch_args" : "", s->script,
             s->builtin_script ? "built-in batch script" : "slurm_template", s->node_exe, s->poll_s);
}

/* ---- the table of live jobs ---- */

static sl_entry *find_live(wk_slurm *s, const char *id) {
    for (int i = 0; i < s->n_live; i++)
        if (!strcmp(s->live[i].id, id)) return &s->live[i];
    return NULL;
}

static sl_entry *add_live(wk_slurm *s, const char *id) {
    sl_entry *e = find_live(s, id);
    if (e) return e;
    if (s->n_live == s->cap_live) {
        int cap = s->cap_live ? s->cap_live * 2 : 16;
        sl_entry *n = realloc(s->live, (size_t)cap * sizeof *n);
        if (!n) return NULL;
        s->live = n;
        s->cap_live = cap;
    }
    e = &s->live[s->n_live++];
    memset(e, 0, sizeof *e);
    snprintf(e->id, sizeof e->id, "%s", id);
    e->registered_mono = qd_now();
    e->info_mono = -1;
    return e;
}

static void drop_live(wk_slurm *s, const char *id) {
    sl_entry *e = find_live(s, id);
    if (!e) return;
    *e = s->live[--s->n_live];
}

/* Splits a '|'-separated line in place into at most n fields. */
static int split_bar(char *line, char **f, int n) {
    int k = 0;
    f[k++] = line;
    for (char *p = line; *p && k < n; p++)
        if (*p == '|') {
            *p = 0;
            f[k++] = p + 1;
        }
    return k;
}

void wk_slurm_refresh(wk_slurm *s) {
    double now = qd_now();
    if (s->n_live == 0 || now - s->last_refresh < s->poll_s) return;
    s->last_refresh = now;
    size_t cap = (size_t)s->n_live * (sizeof s->live[0].id + 1) + 1, k = 0;
    char *ids = malloc(cap);
    if (!ids) return;
    ids[0] = 0;
    for (int i = 0; i < s->n_live; i++)
        k += (size_t)snprintf(ids + k, cap - k, "%s%s", k ? "," : "", s->live[i].id);
    char *argv[] = {"squeue", "--noheader", "--states=all", "--jobs", ids, "--Format",
                    "JobID:|,State:|,Reason:|,NodeList:|,exit_code:|", NULL};
    size_t outn = (size_t)s->n_live * 320 + 4096;
    char *out = malloc(outn);
    char errb[1024];
    if (!out) {
        free(ids);
        return;
    }
    int st = wk_run_cmd(argv, CMD_TIMEOUT_S, out, outn, errb, sizeof errb);
    free(ids);
    bool ok = st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (ok && strlen(out) + 1 >= outn) {
        /* a cut answer would make the jobs past the cut look gone */
        ok = false;
        snprintf(errb, sizeof errb, "squeue's answer for %d jobs was longer than %zu bytes", s->n_live, outn);
    }
    /* squeue answers "Invalid job id" when it knows none of the jobs asked for (it skips the
     * unknown ones of a longer list): that is an answer, not a failure */
    if (!ok && st >= 0 && WIFEXITED(st) && strstr(errb, "Invalid job id")) ok = true;
    if (!ok) {
        char msg[400];
        one_line(errb, msg, sizeof msg);
        if (strcmp(msg, s->last_error)) {
            fprintf(stderr, "quantd: squeue failed, job states not updated: %s\n", msg);
            snprintf(s->last_error, sizeof s->last_error, "%s", msg);
        }
        free(out);
        return;
    }
    s->last_error[0] = 0;
    for (int i = 0; i < s->n_live; i++) {
        s->live[i].known = false;
        s->live[i].info_mono = now;
    }
    char *sv = NULL;
    for (char *line = strtok_r(out, "\n", &sv); line; line = strtok_r(NULL, "\n", &sv)) {
        char *f[6];
        if (split_bar(line, f, 6) < 5) continue;
        sl_entry *e = find_live(s, f[0]);
        if (!e) continue;
        e->known = true;
        snprintf(e->state, sizeof e->state, "%s", f[1]);
        snprintf(e->reason, sizeof e->reason, "%s", f[2]);
        snprintf(e->node, sizeof e->node, "%s", f[3]);
        e->exit_raw = atoi(f[4]);
    }
    free(out);
}

/* ---- submitting ---- */

static long long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

int wk_slurm_start(wk_slurm *s, wk_task *t, const wk_start *st, qd_err *err) {
    char name[64], chdir_a[PATH_MAX + 16], output[PATH_MAX + 32], cpus[32], mem[48], tlim[48];
    char part[160], acct[160], qos[160], evp[PATH_MAX + 16];
    snprintf(name, sizeof name, "--job-name=quantd-%s", st->job_id);
    snprintf(chdir_a, sizeof chdir_a, "--chdir=%s", st->jobdir);
    snprintf(output, sizeof output, "--output=%s/worker.log", st->jobdir);
    snprintf(cpus, sizeof cpus, "--cpus-per-task=%d", st->threads > 0 ? st->threads : 1);
    /* a little over what is left of timeout_s, so that the server's own timeout (SIGTERM and a
     * checkpoint) comes first and Slurm's is the backstop; Slurm counts whole minutes */
    double secs = st->time_limit_s + st->grace_s + 60;
    snprintf(tlim, sizeof tlim, "--time=%ld", (long)ceil(secs / 60));
    char *argv[24 + MAX_EXTRA_ARGS];
    int a = 0;
    argv[a++] = "sbatch";
    argv[a++] = "--parsable";
    argv[a++] = name;
    argv[a++] = chdir_a;
    argv[a++] = output;
    argv[a++] = "--open-mode=append";
    argv[a++] = cpus;
    argv[a++] = "--ntasks=1";
    argv[a++] = "--nodes=1";
    if (s->mem_limit) {
        snprintf(mem, sizeof mem, "--mem=%zuM", (s->mem_limit + (1u << 20) - 1) >> 20);
        argv[a++] = mem;
    }
    argv[a++] = tlim;
    argv[a++] = "--no-requeue"; /* quantd requeues, from the checkpoint, itself */
    if (s->partition[0]) {
        snprintf(part, sizeof part, "--partition=%s", s->partition);
        argv[a++] = part;
    }
    if (s->account[0]) {
        snprintf(acct, sizeof acct, "--account=%s", s->account);
        argv[a++] = acct;
    }
    if (s->qos[0]) {
        snprintf(qos, sizeof qos, "--qos=%s", s->qos);
        argv[a++] = qos;
    }
    for (int i = 0; i < s->n_extra; i++) argv[a++] = s->extra[i];
    argv[a++] = s->script;
    argv[a++] = (char *)st->jobdir;
    argv[a++] = s->node_exe;
    argv[a] = NULL;
    snprintf(evp, sizeof evp, "%s/events.jsonl", st->jobdir);
    t->ev_off = file_size(evp);
    char out[256], errb[2048], msg[600];
    int rc = wk_run_cmd(argv, CMD_TIMEOUT_S, out, sizeof out, errb, sizeof errb);
    if (rc < 0) return qd_errf(err, "sbatch: %s", errb);
    if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        one_line(errb, msg, sizeof msg);
        return qd_errf(err, "sbatch refused the job (exit %d): %s", WIFEXITED(rc) ? WEXITSTATUS(rc) : -1,
                       msg[0] ? msg : "no message");
    }
    /* --parsable: "jobid" or "jobid;cluster" */
    char *p = out;
    while (*p == ' ' || *p == '\n') p++;
    size_t n = strspn(p, "0123456789");
    if (n == 0 || n >= sizeof t->slurm_id)
        return qd_errf(err, "sbatch printed no job id: '%.200s'", out);
    memcpy(t->slurm_id, p, n);
    t->slurm_id[n] = 0;
    snprintf(t->slurm_state, sizeof t->slurm_state, "PENDING");
    t->submitted_mono = qd_now();
    if (!add_live(s, t->slurm_id)) return qd_errf(err, "%s: out of memory", __func__);
    return QD_OK;
}

/* ---- following ---- */

/* Feeds the lines appended to events.jsonl since the last call. Only whole lines count: a line
 * the worker is still writing is read again next time. */
static void tail_events(wk_task *t, wk_line_fn on_line, void *ctx) {
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/events.jsonl", t->jobdir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[65536];
    for (;;) {
        ssize_t k = pread(fd, buf, sizeof buf, (off_t)t->ev_off);
        if (k <= 0) break;
        ssize_t end = k;
        while (end > 0 && buf[end - 1] != '\n') end--;
        if (end == 0) {
            if (k < (ssize_t)sizeof buf) break; /* a partial last line: wait for its end */
            end = k;                            /* one over-long line: let feed drop it */
        }
        wk_task_feed(t, buf, (size_t)end, on_line, ctx);
        t->ev_off += end;
        if (k < (ssize_t)sizeof buf) break;
    }
    close(fd);
}

/* "State=DOWN+DRAIN Reason=..." of a node, as one short text. */
static void node_info(const char *node, char *out, size_t n) {
    out[0] = 0;
    if (!node[0]) return;
    char nodes[128];
    snprintf(nodes, sizeof nodes, "%s", node);
    char *argv[] = {"scontrol", "--oneliner", "show", "node", nodes, NULL};
    char o[8192], e[512];
    int st = wk_run_cmd(argv, CMD_TIMEOUT_S, o, sizeof o, e, sizeof e);
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return;
    const char *sp = strstr(o, " State="), *rp = strstr(o, " Reason=");
    char state[64] = "";
    if (sp) sscanf(sp + 7, "%63s", state);
    char reason[256] = "";
    if (rp) {
        snprintf(reason, sizeof reason, "%s", rp + 8);
        reason[strcspn(reason, "\n")] = 0;
    }
    snprintf(out, n, "node %.63s is %s%s%.150s%s", node, state[0] ? state : "in an unknown state",
             reason[0] ? " (reason: " : "", reason, reason[0] ? ")" : "");
}

/* True when the job's Slurm output says the cluster killed it for its memory (jobacct's
 * OverMemoryKill and the cgroup OOM killer both leave such a line in worker.log). */
static bool log_says_oom(const char *jobdir) {
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/worker.log", jobdir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[8192];
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0;
    ssize_t k = pread(fd, buf, sizeof buf - 1, start);
    close(fd);
    if (k <= 0) return false;
    buf[k] = 0;
    return strstr(buf, "exceeded memory limit") || strstr(buf, "Exceeded job memory limit") ||
           strstr(buf, "oom-kill") || strstr(buf, "OOM Killed");
}

static bool pending_on_bad_nodes(const char *reason) {
    return strstr(reason, "ReqNodeNotAvail") || strstr(reason, "NodeDown") ||
           strstr(reason, "DOWN") || strstr(reason, "DRAIN") || strstr(reason, "PartitionDown") ||
           strstr(reason, "PartitionInactive");
}

/* Maps the end of a Slurm job onto wk_end. exit_code/term_signal from the wait status. */
static void map_end(wk_slurm *s, wk_task *t, const char *state, int exit_code, int sig, wk_end *end) {
    memset(end, 0, sizeof *end);
    end->exit_code = exit_code;
    end->term_signal = sig;
    char node[300];
    if (!strncmp(state, "COMPLETED", 9) || !strncmp(state, "FAILED", 6)) {
        if (sig == SIGKILL && log_says_oom(t->jobdir)) {
            end->kind = WK_END_OOM;
            snprintf(end->why, sizeof end->why,
                     "Slurm job %s killed for exceeding its memory limit (--mem=%zuM) on %s",
                     t->slurm_id, (s->mem_limit + (1u << 20) - 1) >> 20, t->slurm_node);
        } else {
            end->kind = WK_END_EXIT;
        }
    } else if (!strncmp(state, "OUT_OF_MEMORY", 13)) {
        end->kind = WK_END_OOM;
        snprintf(end->why, sizeof end->why, "Slurm job %s ended OUT_OF_MEMORY (--mem=%zuM) on %s",
                 t->slurm_id, (s->mem_limit + (1u << 20) - 1) >> 20, t->slurm_node);
    } else if (!strncmp(state, "TIMEOUT", 7) || !strncmp(state, "DEADLINE", 8)) {
        end->kind = WK_END_TIMEOUT;
        snprintf(end->why, sizeof end->why, "Slurm job %s ended %s: the cluster's time limit on %s",
                 t->slurm_id, state, t->slurm_node);
    } else if (!strncmp(state, "NODE_FAIL", 9) || !strncmp(state, "BOOT_FAIL", 9)) {
        end->kind = WK_END_NODE;
        node_info(t->slurm_node, node, sizeof node);
        snprintf(end->why, sizeof end->why, "Slurm job %s ended %s on node %s%s%.250s", t->slurm_id,
                 state, t->slurm_node[0] ? t->slurm_node : "?", node[0] ? ": " : "", node);
    } else if (!strncmp(state, "CANCELLED", 9)) {
        if (t->stop_mono > 0) {
            end->kind = WK_END_EXIT; /* ours: the scheduler knows why it stopped the job */
        } else {
            end->kind = WK_END_CANCELLED;
            snprintf(end->why, sizeof end->why, "Slurm job %s was cancelled outside quantd (%s)",
                     t->slurm_id, t->slurm_reason[0] ? t->slurm_reason : "scancel");
        }
    } else {
        /* PREEMPTED, REVOKED, SPECIAL_EXIT ...: nothing wrong with the job itself */
        end->kind = WK_END_LOST;
        snprintf(end->why, sizeof end->why, "Slurm job %s ended %s", t->slurm_id, state);
    }
}

static void decode_raw(int raw, int *code, int *sig) {
    if (WIFSIGNALED(raw)) {
        *code = -1;
        *sig = WTERMSIG(raw);
    } else {
        *code = WEXITSTATUS(raw);
        *sig = 0;
    }
}

/* squeue no longer lists the job: ask accounting, which keeps finished jobs, if the cluster
 * has it. True when sacct answered for the job. */
static bool ask_sacct(wk_task *t, char *state, size_t sn, int *code, int *sig) {
    char *argv[] = {"sacct", "--noheader", "--parsable2", "--allocations", "--jobs", t->slurm_id,
                    "--format=State,ExitCode,NodeList", NULL};
    char o[2048], e[512];
    int st = wk_run_cmd(argv, CMD_TIMEOUT_S, o, sizeof o, e, sizeof e);
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return false;
    char *f[4];
    char *sv = NULL;
    char *line = strtok_r(o, "\n", &sv);
    if (!line || split_bar(line, f, 4) < 3) return false;
    /* "CANCELLED by 0" -> "CANCELLED" */
    snprintf(state, sn, "%s", f[0]);
    state[strcspn(state, " ")] = 0;
    int c = 0, sg = 0;
    if (sscanf(f[1], "%d:%d", &c, &sg) < 1) return false;
    *code = sg ? -1 : c;
    *sig = sg;
    if (f[2][0] && strcmp(f[2], "None assigned")) snprintf(t->slurm_node, sizeof t->slurm_node, "%s", f[2]);
    return state[0] != 0;
}

wk_status wk_slurm_poll(wk_slurm *s, wk_task *t, wk_line_fn on_line, void *ctx, wk_end *end) {
    tail_events(t, on_line, ctx);
    sl_entry *e = find_live(s, t->slurm_id);
    if (!e) e = add_live(s, t->slurm_id);
    if (!e || e->info_mono < e->registered_mono)
        return strcmp(t->slurm_state, "RUNNING") ? WK_PENDING : WK_RUNNING;
    int code = -1, sig = 0;
    char state[24];
    if (!e->known) {
        if (!ask_sacct(t, state, sizeof state, &code, &sig)) {
            memset(end, 0, sizeof *end);
            end->kind = WK_END_LOST;
            end->exit_code = -1;
            snprintf(end->why, sizeof end->why,
                     "Slurm no longer knows job %s (not in squeue, and sacct has no record of it)",
                     t->slurm_id);
            snprintf(t->slurm_state, sizeof t->slurm_state, "VANISHED");
            drop_live(s, t->slurm_id);
            return WK_ENDED;
        }
    } else {
        snprintf(state, sizeof state, "%s", e->state);
        snprintf(t->slurm_reason, sizeof t->slurm_reason, "%s", strcmp(e->reason, "None") ? e->reason : "");
        if (e->node[0]) snprintf(t->slurm_node, sizeof t->slurm_node, "%s", e->node);
        decode_raw(e->exit_raw, &code, &sig);
    }
    snprintf(t->slurm_state, sizeof t->slurm_state, "%s", state);
    if (!strcmp(state, "PENDING") || !strcmp(state, "CONFIGURING") || !strcmp(state, "REQUEUED") ||
        !strcmp(state, "REQUEUE_HOLD") || !strcmp(state, "REQUEUE_FED") || !strcmp(state, "SUSPENDED") ||
        !strcmp(state, "RESV_DEL_HOLD")) {
        if (!pending_on_bad_nodes(t->slurm_reason)) {
            t->pending_down_since = 0;
            return WK_PENDING;
        }
        double now = qd_now();
        if (t->pending_down_since == 0) t->pending_down_since = now;
        if (now - t->pending_down_since < s->pending_down_s) return WK_PENDING;
        /* its nodes stayed down or drained: give up, with what the nodes say */
        char *argv[] = {"scancel", t->slurm_id, NULL};
        char o[256], er[512];
        wk_run_cmd(argv, CMD_TIMEOUT_S, o, sizeof o, er, sizeof er);
        char *nargv[] = {"sinfo", "--noheader", "--Node", "--format=%N %T %E", NULL};
        char no[4096] = "";
        int st = wk_run_cmd(nargv, CMD_TIMEOUT_S, no, sizeof no, er, sizeof er);
        char nodes[300] = "";
        if (st >= 0) {
            /* "name state reason" lines -> "name state (reason); ..." for the unavailable ones */
            size_t k = 0;
            char *sv = NULL;
            for (char *ln = strtok_r(no, "\n", &sv); ln && k + 1 < sizeof nodes; ln = strtok_r(NULL, "\n", &sv)) {
                char nm[64], ns[32];
                int used = 0;
                if (sscanf(ln, "%63s %31s %n", nm, ns, &used) < 2) continue;
                if (!strstr(ns, "down") && !strstr(ns, "drain") && !strstr(ns, "fail")) continue;
                int w = snprintf(nodes + k, sizeof nodes - k, "%s%s %s (%s)", k ? "; " : "", nm, ns,
                                 used ? ln + used : "");
                if (w > 0) k += (size_t)w < sizeof nodes - k ? (size_t)w : sizeof nodes - k - 1;
            }
        }
        memset(end, 0, sizeof *end);
        end->kind = WK_END_NODE;
        end->exit_code = -1;
        snprintf(end->why, sizeof end->why, "Slurm job %s pended %.0f s on unavailable nodes (%.120s)%s%.200s",
                 t->slurm_id, now - t->pending_down_since, t->slurm_reason, nodes[0] ? ": " : "", nodes);
        snprintf(t->slurm_state, sizeof t->slurm_state, "CANCELLED");
        drop_live(s, t->slurm_id);
        return WK_ENDED;
    }
    if (!strcmp(state, "RUNNING") || !strcmp(state, "COMPLETING") || !strcmp(state, "STAGE_OUT") ||
        !strcmp(state, "SIGNALING") || !strcmp(state, "RESIZING"))
        return WK_RUNNING;
    /* an end state: read what the worker wrote last, then map */
    tail_events(t, on_line, ctx);
    map_end(s, t, state, code, sig, end);
    drop_live(s, t->slurm_id);
    return WK_ENDED;
}

void wk_slurm_signal(wk_slurm *s, wk_task *t, bool kill_it) {
    if (!t->slurm_id[0]) return;
    char o[256], e[1024];
    if (t->stop_mono == 0) t->stop_mono = qd_now();
    bool pending = !strcmp(t->slurm_state, "PENDING");
    int st = -1;
    if (!kill_it && !pending) {
        /* the batch step is the worker itself (the script execs it): SIGTERM makes it write its
         * checkpoint and exit 3 */
        char *argv[] = {"scancel", "--batch", "--signal=TERM", t->slurm_id, NULL};
        st = wk_run_cmd(argv, CMD_TIMEOUT_S, o, sizeof o, e, sizeof e);
    }
    /* a kill, a job still in the queue, or one that cannot take a signal (not started yet) */
    if (kill_it || pending || st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char *argv[] = {"scancel", t->slurm_id, NULL};
        st = wk_run_cmd(argv, CMD_TIMEOUT_S, o, sizeof o, e, sizeof e);
        if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            char msg[400];
            one_line(e, msg, sizeof msg);
            fprintf(stderr, "quantd: job %s: scancel %s: %s\n", t->job_id, t->slurm_id, msg);
        }
    }
    s->last_refresh = -1e9; /* look again at the next refresh */
}

bool wk_slurm_reattach(wk_slurm *s, wk_task *t) {
    if (!t->slurm_id[0]) {
        /* the server died between sbatch and writing the id: find the job by its name */
        char name[64];
        snprintf(name, sizeof name, "quantd-%s", t->job_id);
        char *argv[] = {"squeue", "--noheader", "--states=all", "--name", name, "--Format", "JobID:|,State:|", NULL};
        char o[4096], e[512];
        int st = wk_run_cmd(argv, CMD_TIMEOUT_S, o, sizeof o, e, sizeof e);
        if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            char msg[400];
            one_line(e, msg, sizeof msg);
            fprintf(stderr, "quantd: job %s: squeue --name %s failed: %s\n", t->job_id, name, msg);
            return false;
        }
        long best = -1;
        char *sv = NULL;
        for (char *ln = strtok_r(o, "\n", &sv); ln; ln = strtok_r(NULL, "\n", &sv)) {
            long id = strtol(ln, NULL, 10);
            if (id > best) best = id;
        }
        if (best < 0) return false;
        snprintf(t->slurm_id, sizeof t->slurm_id, "%ld", best);
    }
    snprintf(t->slurm_state, sizeof t->slurm_state, "UNKNOWN");
    t->ev_off = 0; /* replay the progress so far */
    t->submitted_mono = qd_now();
    sl_entry *e = add_live(s, t->slurm_id);
    if (e) e->registered_mono = qd_now();
    s->last_refresh = -1e9;
    return true;
}
