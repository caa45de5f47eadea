/* The dispatcher interface (worker/dispatch.h) and its local kind: `quantd work JOBDIR` as a
 * child process of the server. The server is multi-threaded, so between fork and exec the child
 * may only make async-signal-safe calls: everything it needs (argv, envp, the log fd, the pipe)
 * is prepared before fork, and the child does nothing but plain system calls in a fixed order
 * before execve. The Slurm kind lives in dispatch_slurm.c. */
#include "worker/dispatch.h"
#include "worker/dispatch_slurm.h"
#include "worker/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/sys.h"

extern char **environ;

/* Copies the environment, replacing the thread-count variables, so a job's BLAS and OpenMP
 * pools have the size the spec asked for and not whatever the server inherited. */
static char **build_env(int threads) {
    size_t n = 0;
    while (environ[n]) n++;
    char **env = calloc(n + 4, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strncmp(environ[i], "OPENBLAS_NUM_THREADS=", 21) ||
            !strncmp(environ[i], "OMP_NUM_THREADS=", 16))
            continue;
        env[k++] = environ[i];
    }
    static __thread char ob[48], omp[48];
    snprintf(ob, sizeof ob, "OPENBLAS_NUM_THREADS=%d", threads > 0 ? threads : 1);
    snprintf(omp, sizeof omp, "OMP_NUM_THREADS=%d", threads > 0 ? threads : 1);
    env[k++] = ob;
    env[k++] = omp;
    env[k] = NULL;
    return env;
}

int wk_spawn(const wk_spawn_opts *o, pid_t *pid_out, int *events_fd, qd_err *err) {
    char logpath[PATH_MAX];
    if (snprintf(logpath, sizeof logpath, "%s/worker.log", o->jobdir) >= (int)sizeof logpath)
        return qd_errf(err, "%s: job directory path too long", __func__);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0) return qd_errf(err, "%s: %s: %s", __func__, logpath, strerror(errno));
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int p[2];
    if (nullfd < 0 || pipe2(p, O_CLOEXEC) != 0) {
        int e = errno;
        close(logfd);
        if (nullfd >= 0) close(nullfd);
        return qd_errf(err, "%s: pipe: %s", __func__, strerror(e));
    }
    char **env = build_env(o->threads);
    char *argv[] = {(char *)o->exe, "work", (char *)o->jobdir, "--events-fd", "3", NULL};
    struct rlimit rl = {(rlim_t)o->mem_limit, (rlim_t)o->mem_limit};
    pid_t parent = getpid();
    sigset_t all, old;
    sigfillset(&all);
    /* Signals stay blocked across fork so that no server handler runs in the child before
     * the child has reset the dispositions. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = env ? fork() : -1;
    if (pid == 0) {
        /* child: async-signal-safe calls only */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127); /* the server died before prctl took effect */
        if (o->mem_limit) setrlimit(RLIMIT_AS, &rl);
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (int s = 1; s < NSIG; s++) sigaction(s, &dfl, NULL);
        /* fd 3 is the event pipe; move the write end out of the way first if it is low. */
        int w = p[1];
        if (w < 4) {
            w = fcntl(p[1], F_DUPFD, 10);
            if (w < 0) _exit(127);
        }
        if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0 || dup2(w, 3) < 0)
            _exit(127);
        syscall(SYS_close_range, 4U, ~0U, 0U);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(o->exe, argv, env);
        _exit(127);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    free(env);
    close(logfd);
    close(nullfd);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return qd_errf(err, "%s: fork: %s", __func__, strerror(fork_errno));
    }
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    *pid_out = pid;
    *events_fd = p[0];
    return QD_OK;
}

/* ---- running a command ---- */

int wk_run_cmd(char *const argv[], double timeout_s, char *out, size_t outn, char *err_out,
               size_t errn) {
    out[0] = err_out[0] = 0;
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC)) {
        snprintf(err_out, errn, "pipe: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (po[i] >= 0) close(po[i]);
            if (pe[i] >= 0) close(pe[i]);
        }
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(po[1]);
    close(pe[1]);
    if (rc != 0) {
        close(po[0]);
        close(pe[0]);
        snprintf(err_out, errn, "cannot run %s: %s", argv[0], strerror(rc));
        return -1;
    }
    size_t lo = 0, le = 0;
    int fds[2] = {po[0], pe[0]};
    double t0 = qd_now();
    bool timed_out = false;
    while (fds[0] >= 0 || fds[1] >= 0) {
        double left = timeout_s - (qd_now() - t0);
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd pf[2] = {{.fd = fds[0], .events = POLLIN}, {.fd = fds[1], .events = POLLIN}};
        int k = poll(pf, 2, (int)(left * 1000) + 1);
        if (k < 0 && errno != EINTR) break;
        for (int i = 0; i < 2; i++) {
            if (fds[i] < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buf[4096];
            ssize_t r = read(fds[i], buf, sizeof buf);
            if (r <= 0) {
                close(fds[i]);
                fds[i] = -1;
                continue;
            }
            char *dst = i ? err_out : out;
            size_t cap = i ? errn : outn, *len = i ? &le : &lo;
            size_t take = (size_t)r < cap - 1 - *len ? (size_t)r : cap - 1 - *len;
            memcpy(dst + *len, buf, take);
            *len += take;
            dst[*len] = 0;
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) close(fds[i]);
    int status = 0;
    if (timed_out) kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (timed_out) {
        snprintf(err_out, errn, "%s did not answer within %.0f s", argv[0], timeout_s);
        return -1;
    }
    return status;
}

/* ---- the interface ---- */

struct wk_disp {
    bool slurm;
    char exe[PATH_MAX];
    size_t mem_limit;
    wk_slurm *sl;
};

wk_disp *wk_disp_new(const wk_disp_opts *o, qd_err *err) {
    const char *kind = o->kind && o->kind[0] ? o->kind : "local";
    if (strcmp(kind, "local") && strcmp(kind, "slurm")) {
        qd_errf(err, "dispatcher must be local or slurm, not '%s'", kind);
        return NULL;
    }
    wk_disp *d = calloc(1, sizeof *d);
    if (!d) {
        qd_errf(err, "%s: out of memory", __func__);
        return NULL;
    }
    d->slurm = !strcmp(kind, "slurm");
    snprintf(d->exe, sizeof d->exe, "%s", o->exe);
    d->mem_limit = o->mem_limit;
    if (d->slurm && !(d->sl = wk_slurm_new(&o->slurm, o->exe, o->mem_limit, err))) {
        free(d);
        return NULL;
    }
    return d;
}

void wk_disp_free(wk_disp *d) {
    if (!d) return;
    wk_slurm_free(d->sl);
    free(d);
}

const char *wk_disp_kind(const wk_disp *d) { return d->slurm ? "slurm" : "local"; }

bool wk_disp_detached(const wk_disp *d) { return d->slurm; }

void wk_disp_describe(const wk_disp *d, char *out, size_t n) {
    if (d->slurm) wk_slurm_describe(d->sl, out, n);
    else snprintf(out, n, "workers run here as child processes (%s work JOBDIR)", d->exe);
}

void wk_disp_refresh(wk_disp *d) {
    if (d->slurm) wk_slurm_refresh(d->sl);
}

int wk_task_fd(const wk_task *t) { return t->fd; }

static void task_reset(wk_task *t, const char *job_id, const char *jobdir) {
    memset(t, 0, sizeof *t);
    t->fd = -1;
    snprintf(t->job_id, sizeof t->job_id, "%s", job_id);
    snprintf(t->jobdir, sizeof t->jobdir, "%s", jobdir);
}

int wk_task_start(wk_disp *d, wk_task *t, const wk_start *s, qd_err *err) {
    task_reset(t, s->job_id, s->jobdir);
    if (d->slurm) return wk_slurm_start(d->sl, t, s, err);
    wk_spawn_opts so = {.exe = d->exe, .jobdir = s->jobdir, .threads = s->threads,
                        .mem_limit = d->mem_limit};
    return wk_spawn(&so, &t->pid, &t->fd, err);
}

/* Splits what arrived into whole lines; an over-long line is dropped, not split. */
void wk_task_feed(wk_task *t, const char *buf, size_t k, wk_line_fn on_line, void *ctx) {
    for (size_t i = 0; i < k; i++) {
        char c = buf[i];
        if (c == '\n') {
            if (!t->line_overflow) {
                t->line[t->line_len] = 0;
                on_line(ctx, t->line);
            }
            t->line_len = 0;
            t->line_overflow = false;
        } else if (t->line_len + 1 < sizeof t->line) {
            t->line[t->line_len++] = c;
        } else {
            t->line_overflow = true;
        }
    }
}

/* Reads the pipe; false at EOF or on an error other than "nothing yet". */
static bool drain_pipe(wk_task *t, wk_line_fn on_line, void *ctx) {
    char buf[16384];
    for (;;) {
        ssize_t k = read(t->fd, buf, sizeof buf);
        if (k == 0) return false;
        if (k < 0) return errno == EAGAIN || errno == EINTR;
        wk_task_feed(t, buf, (size_t)k, on_line, ctx);
    }
}

wk_status wk_task_poll(wk_disp *d, wk_task *t, wk_line_fn on_line, void *ctx, wk_end *end) {
    if (d->slurm) return wk_slurm_poll(d->sl, t, on_line, ctx, end);
    if (t->fd >= 0 && !drain_pipe(t, on_line, ctx)) {
        close(t->fd); /* EOF: the exit status follows through waitpid */
        t->fd = -1;
    }
    int status;
    if (t->pid <= 0 || waitpid(t->pid, &status, WNOHANG) != t->pid) return WK_RUNNING;
    if (t->fd >= 0) {
        drain_pipe(t, on_line, ctx);
        close(t->fd);
        t->fd = -1;
    }
    memset(end, 0, sizeof *end);
    end->kind = WK_END_EXIT;
    end->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    end->term_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    t->pid = 0;
    return WK_ENDED;
}

void wk_task_stop(wk_disp *d, wk_task *t) {
    if (d->slurm) wk_slurm_signal(d->sl, t, false);
    else if (t->pid > 0) kill(t->pid, SIGTERM);
}

void wk_task_kill(wk_disp *d, wk_task *t) {
    if (d->slurm) {
        wk_slurm_signal(d->sl, t, true);
    } else if (t->pid > 0) {
        kill(-t->pid, SIGKILL); /* the whole process group: no stray helpers */
        kill(t->pid, SIGKILL);
    }
}

static bool is_our_worker(pid_t pid, const char *jobdir) {
    char p[64], cmd[8192];
    snprintf(p, sizeof p, "/proc/%d/cmdline", (int)pid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t k = read(fd, cmd, sizeof cmd - 1);
    close(fd);
    if (k <= 0) return false;
    cmd[k] = 0;
    /* argv is NUL-separated: look for "work" followed by the job directory */
    for (ssize_t i = 0; i < k; i += (ssize_t)strlen(cmd + i) + 1)
        if (!strcmp(cmd + i, "work") && i + 5 < k && !strcmp(cmd + i + 5, jobdir)) return true;
    return false;
}

void wk_tasks_reattach(wk_disp *d, wk_task *const *t, int n, double grace_s, bool *alive) {
    /* what was recorded, then a clean task that keeps only the ids */
    pid_t *pid = calloc((size_t)(n > 0 ? n : 1), sizeof *pid);
    for (int i = 0; i < n; i++) {
        char id[sizeof t[i]->job_id], dir[sizeof t[i]->jobdir], sid[sizeof t[i]->slurm_id];
        snprintf(id, sizeof id, "%s", t[i]->job_id);
        snprintf(dir, sizeof dir, "%s", t[i]->jobdir);
        snprintf(sid, sizeof sid, "%s", t[i]->slurm_id);
        if (pid) pid[i] = t[i]->pid;
        task_reset(t[i], id, dir);
        alive[i] = false;
        if (d->slurm) {
            snprintf(t[i]->slurm_id, sizeof t[i]->slurm_id, "%s", sid);
            alive[i] = wk_slurm_reattach(d->sl, t[i]);
        }
    }
    if (d->slurm || !pid) {
        free(pid);
        return;
    }
    /* A local worker lost its server: it got SIGTERM through PR_SET_PDEATHSIG and is writing
     * a checkpoint, or is already gone. Stop them all, wait for them together (then force
     * them); their jobs are requeued. */
    for (int i = 0; i < n; i++) {
        if (pid[i] > 0 && is_our_worker(pid[i], t[i]->jobdir)) kill(pid[i], SIGTERM);
        else pid[i] = 0;
    }
    double t0 = qd_now();
    bool forced = false;
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) {
            if (pid[i] > 0 && !(kill(pid[i], 0) == 0 && is_our_worker(pid[i], t[i]->jobdir)))
                pid[i] = 0;
            left += pid[i] > 0;
        }
        double dt = qd_now() - t0;
        if (!left || dt > grace_s + 5) break;
        if (!forced && dt > grace_s) {
            for (int i = 0; i < n; i++)
                if (pid[i] > 0) {
                    kill(-pid[i], SIGKILL);
                    kill(pid[i], SIGKILL);
                }
            forced = true;
        }
        usleep(50 * 1000);
    }
    free(pid);
}
