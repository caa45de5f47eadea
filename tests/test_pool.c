/* base/pool tests: every task of a job runs exactly once with a thread index in range, for
 * several thread and task counts and for many jobs in a row (a late-waking worker must never
 * run a task of the next job); nested calls and two threads posting jobs on one pool at once
 * run everything once; qd_pool_chunks covers [0, n) at fixed boundaries; the default pool
 * takes the size it is given. */
#include "base/pool.h"

#include "check.h"

#include <pthread.h>
#include <stdatomic.h>

#define MAXT 4096

typedef struct count_job {
    atomic_int hits[MAXT];
    atomic_int bad_tid;
    int threads;
} count_job;

static void count_task(void *ctx, int task, int tid) {
    count_job *J = ctx;
    atomic_fetch_add(&J->hits[task], 1);
    if (tid < 0 || tid >= J->threads) atomic_fetch_add(&J->bad_tid, 1);
}

/* Runs a job of n tasks on p and checks each ran once. */
static int run_counted(qd_pool *p, int n) {
    static count_job J;
    for (int i = 0; i < MAXT; i++) atomic_store(&J.hits[i], 0);
    atomic_store(&J.bad_tid, 0);
    J.threads = qd_pool_threads(p);
    qd_pool_run(p, n, count_task, &J);
    int bad = atomic_load(&J.bad_tid) != 0;
    for (int i = 0; i < MAXT; i++) bad |= atomic_load(&J.hits[i]) != (i < n);
    return !bad;
}

static void every_task_once(void) {
    const int threads[] = {1, 2, 3, 5};
    const int counts[] = {0, 1, 2, 3, 7, 64, 1000, MAXT};
    qd_err err = {{0}};
    for (size_t a = 0; a < sizeof threads / sizeof *threads; a++) {
        qd_pool *p = qd_pool_new(threads[a], &err);
        CHECK(p, "%s", err.msg);
        if (!p) continue;
        CHECK(qd_pool_threads(p) == threads[a], "%d threads", qd_pool_threads(p));
        for (size_t b = 0; b < sizeof counts / sizeof *counts; b++)
            CHECK(run_counted(p, counts[b]), "%d threads, %d tasks", threads[a], counts[b]);
        qd_pool_free(p);
    }
    CHECK(run_counted(NULL, 37), "NULL pool");
    CHECK(qd_pool_threads(NULL) == 1, "NULL pool has one thread");
    qd_pool_free(NULL);
}

/* Many short jobs back to back: the case where a worker wakes after its job has ended. */
static void many_jobs_in_a_row(void) {
    qd_err err = {{0}};
    qd_pool *p = qd_pool_new(3, &err);
    CHECK(p, "%s", err.msg);
    if (!p) return;
    int ok = 1;
    for (int r = 0; r < 2000 && ok; r++) ok = run_counted(p, 1 + r % 9);
    CHECK(ok, "a job of 2000 ran a task twice or not at all");
    qd_pool_free(p);
}

typedef struct nest_job {
    qd_pool *p;
    atomic_int inner[64 * 16];
    atomic_int bad_tid;
} nest_job;

typedef struct nest_inner {
    nest_job *J;
    int outer;
} nest_inner;

static void inner_task(void *ctx, int task, int tid) {
    nest_inner *I = ctx;
    if (tid != 0) atomic_fetch_add(&I->J->bad_tid, 1); /* nested: in order on the caller */
    atomic_fetch_add(&I->J->inner[I->outer * 16 + task], 1);
}

static void outer_task(void *ctx, int task, int tid) {
    (void)tid;
    nest_job *J = ctx;
    nest_inner I = {J, task};
    qd_pool_run(J->p, 16, inner_task, &I);
}

static void nested_calls(void) {
    qd_err err = {{0}};
    static nest_job J;
    J.p = qd_pool_new(3, &err);
    CHECK(J.p, "%s", err.msg);
    if (!J.p) return;
    for (int i = 0; i < 64 * 16; i++) atomic_store(&J.inner[i], 0);
    qd_pool_run(J.p, 64, outer_task, &J);
    int bad = 0;
    for (int i = 0; i < 64 * 16; i++) bad += atomic_load(&J.inner[i]) != 1;
    CHECK(!bad, "%d inner tasks did not run exactly once", bad);
    CHECK(atomic_load(&J.bad_tid) == 0, "a nested task saw a thread index other than 0");
    /* and the pool still works after nesting */
    CHECK(run_counted(J.p, 100), "after nested use");
    qd_pool_free(J.p);
}

typedef struct poster {
    qd_pool *p;
    atomic_int hits[512];
    int ok;
} poster;

static void poster_task(void *ctx, int task, int tid) {
    (void)tid;
    poster *P = ctx;
    atomic_fetch_add(&P->hits[task], 1);
}

static void *poster_main(void *arg) {
    poster *P = arg;
    P->ok = 1;
    for (int r = 0; r < 200; r++) {
        for (int i = 0; i < 512; i++) atomic_store(&P->hits[i], 0);
        qd_pool_run(P->p, 512, poster_task, P);
        for (int i = 0; i < 512; i++) P->ok &= atomic_load(&P->hits[i]) == 1;
    }
    return NULL;
}

/* Two threads post jobs on one pool at once: one gets the pool, the other runs in order. */
static void two_posters(void) {
    qd_err err = {{0}};
    qd_pool *p = qd_pool_new(3, &err);
    CHECK(p, "%s", err.msg);
    if (!p) return;
    static poster A, B;
    A.p = B.p = p;
    pthread_t ta, tb;
    pthread_create(&ta, NULL, poster_main, &A);
    pthread_create(&tb, NULL, poster_main, &B);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(A.ok && B.ok, "concurrent posters: %d %d", A.ok, B.ok);
    qd_pool_free(p);
}

typedef struct chunk_rec {
    atomic_int cover[10007];
    atomic_int bad;
    size_t chunk;
} chunk_rec;

static void chunk_fn(void *ctx, size_t lo, size_t hi, int tid) {
    (void)tid;
    chunk_rec *R = ctx;
    if (lo % R->chunk || hi <= lo || hi - lo > R->chunk) atomic_fetch_add(&R->bad, 1);
    for (size_t i = lo; i < hi; i++) atomic_fetch_add(&R->cover[i], 1);
}

static void chunks_cover_range(void) {
    qd_err err = {{0}};
    qd_pool *p = qd_pool_new(2, &err);
    CHECK(p, "%s", err.msg);
    CHECK(qd_pool_nchunks(0, 5) == 0 && qd_pool_nchunks(5, 5) == 1 && qd_pool_nchunks(6, 5) == 2,
          "nchunks");
    static chunk_rec R;
    const size_t ns[] = {0, 1, 99, 100, 101, 10007};
    const size_t cs[] = {1, 7, 100, 20000};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t b = 0; b < sizeof cs / sizeof *cs; b++) {
            for (size_t i = 0; i < 10007; i++) atomic_store(&R.cover[i], 0);
            atomic_store(&R.bad, 0);
            R.chunk = cs[b];
            qd_pool_chunks(p, ns[a], cs[b], chunk_fn, &R);
            int bad = atomic_load(&R.bad);
            for (size_t i = 0; i < 10007; i++) bad += atomic_load(&R.cover[i]) != (i < ns[a]);
            CHECK(!bad, "n %zu chunk %zu: %d wrong", ns[a], cs[b], bad);
        }
    qd_pool_free(p);
}

static void default_pool_size(void) {
    qd_err err = {{0}};
    CHECK(qd_pool_set_default(3, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_pool_threads(qd_pool_default()) == 3, "%d", qd_pool_threads(qd_pool_default()));
    CHECK(run_counted(qd_pool_default(), 500), "default pool");
    CHECK(qd_pool_set_default(0, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_pool_threads(qd_pool_default()) == qd_pool_online_cpus(), "%d",
          qd_pool_threads(qd_pool_default()));
    CHECK(qd_pool_set_default(1, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_pool_threads(qd_pool_default()) == 1, "one thread");
    CHECK(run_counted(qd_pool_default(), 10), "one-thread default pool");
}

int main(void) {
    RUN(every_task_once);
    RUN(many_jobs_in_a_row);
    RUN(nested_calls);
    RUN(two_posters);
    RUN(chunks_cover_range);
    RUN(default_pool_size);
    return CHECK_DONE();
}
