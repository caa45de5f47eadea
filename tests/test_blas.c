/* quant/fp/blas: the OpenBLAS kernel chosen from CPU features. The checks hold on any CPU and with
 * any OPENBLAS_CORETYPE in the environment: this binary runs itself as a child with the
 * variables set or unset, and each child reports what it ran on through an inherited pipe (so
 * the re-execution is seen to keep the pid, argv and open descriptors). */
#include <fcntl.h>
#include <stdint.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cblas.h>

#include "quant/fp/blas.h"
#include "tests/check.h"

extern char **environ;

/* Child: writes "pid chosen_by kernel timeout_by timeout marker argv1|argv2" to fd (argv[2]),
 * the marker's spaces as commas. */
static int child(int argc, char **argv) {
    if (argc < 5) return 2;
    int fd = atoi(argv[2]);
    qd_blas_info i;
    qd_blas_info_get(&i);
    const char *mark = getenv("QD_BLAS_CHOSEN");
    char m[128];
    snprintf(m, sizeof m, "%s", mark && mark[0] ? mark : "-");
    for (char *c = m; *c; c++)
        if (*c == ' ') *c = ',';
    dprintf(fd, "%ld %s %s %s %s %s %s|%s\n", (long)getpid(), i.chosen_by, i.core, i.timeout_by,
            i.thread_timeout[0] ? i.thread_timeout : "-", m, argv[3], argv[4]);
    close(fd);
    return 0;
}

typedef struct {
    long pid;
    char chosen[16], kernel[32], tby[16], timeout[16], mark[128], args[128];
} report;

/* Runs this binary as a child with env edits: unset[] removed, set "K=V" added. */
static int run_child(const char *const *unset, const char *set, report *r) {
    int p[2];
    if (pipe(p)) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        for (int k = 0; unset && unset[k]; k++) unsetenv(unset[k]);
        if (set) putenv((char *)set);
        char fd[16];
        snprintf(fd, sizeof fd, "%d", p[1]);
        char *av[] = {"test_blas", "--child", fd, "one arg", "two", NULL};
        execve("/proc/self/exe", av, environ);
        _exit(127);
    }
    close(p[1]);
    char buf[512] = {0};
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(p[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)n;
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    memset(r, 0, sizeof *r);
    if (sscanf(buf, "%ld %15s %31s %15s %15s %127s %127[^\n]", &r->pid, r->chosen, r->kernel,
               r->tby, r->timeout, r->mark, r->args) != 7)
        return -1;
    return r->pid == (long)pid && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void test_info(void) {
    qd_blas_info i;
    qd_blas_info_get(&i);
    CHECK(!strcmp(i.library, "OpenBLAS"), "library '%s'", i.library);
    CHECK(i.version[0] >= '0' && i.version[0] <= '9', "version '%s'", i.version);
    CHECK(i.core[0], "no kernel name");
    CHECK(i.threads >= 1, "threads %d", i.threads);
    char line[512];
    CHECK(qd_blas_describe(line, sizeof line) > 0 && strstr(line, i.core), "%s", line);
    printf("# %s\n", line);
    /* when quantd chose, the library runs what it chose */
    if (!strcmp(i.chosen_by, "quantd"))
        CHECK(!strcasecmp(i.core, i.wanted), "chose %s, runs %s", i.wanted, i.core);
}

/* What quantd sets on this machine when nothing is set: the timeout wherever OpenBLAS runs
 * pthreads with more than one thread, the kernel when the library's own is of a lower class. */
static int timeout_expected(void) {
    return openblas_get_parallel() == 1 && openblas_get_num_threads() > 1;
}

static const char *const all[] = {"OPENBLAS_CORETYPE", "OPENBLAS_THREAD_TIMEOUT",
                                  "GOTO_THREAD_TIMEOUT", "QD_BLAS_CHOSEN", "QD_BLAS_SELECT",
                                  NULL};

static void test_reexec(void) {
    report r;
    CHECK(run_child(all, NULL, &r) == 0, "child failed");
    /* same pid (checked in run_child), argv and descriptor kept */
    CHECK(!strcmp(r.args, "one arg|two"), "argv '%s'", r.args);
    const char *want = qd_blas_wanted_kernel();
    printf("# unset: kernel %s chosen by %s (CPU features suggest %s); timeout %s by %s; "
           "marker %s\n", r.kernel, r.chosen, want ? want : "none", r.timeout, r.tby, r.mark);
    char m[96];
    if (!strcmp(r.chosen, "quantd")) {
        snprintf(m, sizeof m, "OPENBLAS_CORETYPE=%s", want ? want : "?");
        CHECK(want && !strcasecmp(r.kernel, want) && strstr(r.mark, m), "%s / %s", r.kernel, r.mark);
    } else {
        CHECK(!strcmp(r.chosen, "library") && !strstr(r.mark, "CORETYPE"), "%s %s", r.chosen, r.mark);
    }
    if (timeout_expected()) {
        CHECK(!strcmp(r.tby, "quantd") && !strcmp(r.timeout, "4") &&
              strstr(r.mark, "OPENBLAS_THREAD_TIMEOUT=4"), "%s %s %s", r.tby, r.timeout, r.mark);
    } else {
        CHECK(!strcmp(r.tby, "library") && !strcmp(r.timeout, "-"), "%s %s", r.tby, r.timeout);
    }
}

static void test_user_respected(void) {
    report r;
    /* Prescott runs on every x86-64; a user's choice wins even when it is slower */
    CHECK(run_child(all, "OPENBLAS_CORETYPE=Prescott", &r) == 0, "child failed");
    CHECK(!strcmp(r.chosen, "user") && !strstr(r.mark, "CORETYPE"), "%s %s", r.chosen, r.mark);
    CHECK(!strcasecmp(r.kernel, "Prescott"), "kernel %s", r.kernel);
    /* a user's timeout likewise */
    CHECK(run_child(all, "OPENBLAS_THREAD_TIMEOUT=20", &r) == 0, "child failed");
    CHECK(!strcmp(r.tby, "user") && !strcmp(r.timeout, "20") && !strstr(r.mark, "TIMEOUT"),
          "%s %s %s", r.tby, r.timeout, r.mark);
    /* QD_BLAS_SELECT=0 leaves the library's own choices */
    CHECK(run_child(all, "QD_BLAS_SELECT=0", &r) == 0, "child failed");
    CHECK(!strcmp(r.chosen, "library") && !strcmp(r.tby, "library") && !strcmp(r.mark, "-"),
          "%s %s %s", r.chosen, r.tby, r.mark);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--child")) return child(argc, argv);
    RUN(test_info);
    RUN(test_reexec);
    RUN(test_user_respected);
    return CHECK_DONE();
}
