/* The thread pool (see pool.h). qd_pool_run returns once every task is done and no worker is
 * inside the job, so a worker that wakes late can never claim a task of the next job with the
 * old job's function: it reads the job under the lock, and a new job is posted only once every
 * worker that entered the last one has left it. */
#include "base/pool.h"

#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct pool_arg {
    qd_pool *p;
    int tid;
} pool_arg;

struct qd_pool {
    int n, started;
    pthread_t *th;
    pool_arg *args;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen;        /* bumped when a job is posted */
    int stop;
    int busy;                 /* a job is posted and its caller has not returned */
    qd_pool_fn fn;            /* the current job */
    void *ctx;
    int ntasks, finished, inside;
    atomic_int next;
};

/* > 0 while this thread runs a task of some pool: a qd_pool_run from there runs in order. */
static _Thread_local int tl_in_task;

int qd_pool_online_cpus(void) {
    /* the CPUs this process may run on (taskset, a Slurm or container cpuset), else online */
    cpu_set_t set;
    long n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
    if (n < 1) n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    return n < QD_POOL_MAX_THREADS ? (int)n : QD_POOL_MAX_THREADS;
}

static int pool_work(qd_pool *p, qd_pool_fn fn, void *ctx, int ntasks, int tid) {
    int k = 0;
    tl_in_task++;
    for (int t; (t = atomic_fetch_add(&p->next, 1)) < ntasks; k++) fn(ctx, t, tid);
    tl_in_task--;
    return k;
}

static void *pool_main(void *arg) {
    const pool_arg *a = arg;
    qd_pool *p = a->p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->stop) pthread_cond_wait(&p->go, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        qd_pool_fn fn = p->fn;
        void *ctx = p->ctx;
        int nt = p->ntasks;
        p->inside++;
        pthread_mutex_unlock(&p->mu);
        int k = pool_work(p, fn, ctx, nt, a->tid);
        pthread_mutex_lock(&p->mu);
        p->inside--;
        p->finished += k;
        if (p->finished == p->ntasks && !p->inside) pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void qd_pool_free(qd_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p->args);
    free(p);
}

qd_pool *qd_pool_new(int threads, qd_err *err) {
    int n = threads <= 0 ? qd_pool_online_cpus()
                         : (threads < QD_POOL_MAX_THREADS ? threads : QD_POOL_MAX_THREADS);
    qd_pool *p = calloc(1, sizeof *p);
    if (!p) return qd_errf(err, "%s: out of memory", __func__), NULL;
    p->n = n;
    p->th = calloc((size_t)n, sizeof *p->th);
    p->args = calloc((size_t)n, sizeof *p->args);
    atomic_init(&p->next, 0);
    if (!p->th || !p->args || pthread_mutex_init(&p->mu, NULL)) {
        free(p->th), free(p->args), free(p);
        return qd_errf(err, "%s: out of memory", __func__), NULL;
    }
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n; i++) {
        p->args[i] = (pool_arg){p, i};
        int rc = pthread_create(&p->th[p->started], NULL, pool_main, &p->args[i]);
        if (rc) {
            qd_pool_free(p);
            return qd_errf(err, "%s: cannot start thread %d of %d: %s", __func__, i + 1, n,
                           strerror(rc)), NULL;
        }
        p->started++;
    }
    return p;
}

int qd_pool_threads(const qd_pool *p) { return p ? p->n : 1; }

static void run_serial(int ntasks, qd_pool_fn fn, void *ctx) {
    for (int t = 0; t < ntasks; t++) fn(ctx, t, 0);
}

void qd_pool_run(qd_pool *p, int ntasks, qd_pool_fn fn, void *ctx) {
    if (ntasks <= 0) return;
    if (!p || p->n == 1 || ntasks == 1 || tl_in_task) {
        run_serial(ntasks, fn, ctx);
        return;
    }
    pthread_mutex_lock(&p->mu);
    /* Wait for the late joiners of the last job, and check for another thread's job after
     * every wait: the wait releases the lock, so a second caller can post meanwhile (both
     * posting overwrote each other's job: tasks ran twice or never, test_pool two_posters). */
    for (;;) {
        if (p->busy) { /* another thread's job: do not wait for it */
            pthread_mutex_unlock(&p->mu);
            run_serial(ntasks, fn, ctx);
            return;
        }
        if (!p->inside) break;
        pthread_cond_wait(&p->done, &p->mu);
    }
    p->busy = 1;
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    p->finished = 0;
    atomic_store(&p->next, 0);
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    int k = pool_work(p, fn, ctx, ntasks, 0);
    pthread_mutex_lock(&p->mu);
    p->finished += k;
    while (p->finished < ntasks || p->inside) pthread_cond_wait(&p->done, &p->mu);
    p->busy = 0;
    pthread_mutex_unlock(&p->mu);
}

/* ---------------------------------------------------------------- chunks */

size_t qd_pool_nchunks(size_t n, size_t chunk) {
    assert(chunk > 0);
    return n / chunk + (n % chunk != 0);
}

typedef struct chunk_job {
    qd_pool_chunk_fn fn;
    void *ctx;
    size_t n, chunk;
} chunk_job;

static void chunk_task(void *ctx, int task, int tid) {
    const chunk_job *J = ctx;
    size_t lo = (size_t)task * J->chunk, hi = lo + J->chunk;
    J->fn(J->ctx, lo, hi < J->n ? hi : J->n, tid);
}

void qd_pool_chunks(qd_pool *p, size_t n, size_t chunk, qd_pool_chunk_fn fn, void *ctx) {
    size_t nc = qd_pool_nchunks(n, chunk);
    if (nc == 0) return;
    if (nc == 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    assert(nc <= (size_t)1 << 30 && "qd_pool_chunks: too many chunks");
    chunk_job J = {fn, ctx, n, chunk};
    qd_pool_run(p, (int)nc, chunk_task, &J);
}

/* ---------------------------------------------------------------- the default pool */

static pthread_mutex_t def_mu = PTHREAD_MUTEX_INITIALIZER;
static qd_pool *def_pool;
static int def_failed; /* the lazy default could not be made: do not retry on every call */

int qd_pool_set_default(int threads, qd_err *err) {
    pthread_mutex_lock(&def_mu);
    if (def_pool && def_pool->n == (threads <= 0 ? qd_pool_online_cpus() : threads)) {
        pthread_mutex_unlock(&def_mu);
        return QD_OK;
    }
    qd_pool *p = qd_pool_new(threads, err);
    if (p) {
        qd_pool_free(def_pool);
        def_pool = p;
        def_failed = 0;
    }
    pthread_mutex_unlock(&def_mu);
    return p ? QD_OK : QD_ERR;
}

qd_pool *qd_pool_default(void) {
    pthread_mutex_lock(&def_mu);
    if (!def_pool && !def_failed) {
        qd_err e = {{0}};
        if (!(def_pool = qd_pool_new(0, &e))) def_failed = 1;
    }
    qd_pool *p = def_pool;
    pthread_mutex_unlock(&def_mu);
    return p;
}
