/* The local dispatcher: starts `quantd work JOBDIR` as a child process. The server is
 * multi-threaded, so between fork and exec the child may only make async-signal-safe calls:
 * everything it needs (argv, envp, the log fd, the pipe) is prepared before fork, and the
 * child does nothing but plain system calls in a fixed order before execve. */
#include "worker/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

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
