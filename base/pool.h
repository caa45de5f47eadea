/* The program's thread pool: threads - 1 workers (the caller of qd_pool_run is thread 0) that
 * sleep on a condition variable between jobs. A job is ntasks independent tasks claimed one at a
 * time from an atomic counter, so which thread runs a task depends on timing; code that must
 * give the same result for any thread count makes each task's output depend on the task index
 * only (qd_pool_chunks cuts [0, n) at fixed boundaries) and combines per-task reductions in task
 * order afterwards.
 *
 * One job at a time per pool: a qd_pool_run from inside a task (nested), or while another thread
 * has a job on the same pool, runs its tasks in order on the calling thread (tid 0). Results are
 * the same either way.
 *
 * The process-wide default pool (qd_pool_default) is what the numeric core uses: the FP
 * simulation and training, calibration, evaluation and, unless given its own thread count, the
 * integer runtime. Programs size it once at start from their threads option
 * (qd_pool_set_default); until then it is made on first use with all online CPUs. */
#ifndef QD_BASE_POOL_H
#define QD_BASE_POOL_H

#include <stddef.h>

#include "base/err.h"

#define QD_POOL_MAX_THREADS 256

typedef struct qd_pool qd_pool;

/* A task: ctx, its index in [0, ntasks), and the running thread's index in [0, threads), unique
 * among the tasks of one job that run at the same time (for per-thread scratch). */
typedef void (*qd_pool_fn)(void *ctx, int task, int tid);

/* The CPUs this process may run on (its affinity mask; else the online CPUs), at least 1 and at
 * most QD_POOL_MAX_THREADS. */
int qd_pool_online_cpus(void);

/* A pool of threads threads, the caller's included (0: qd_pool_online_cpus(); above
 * QD_POOL_MAX_THREADS: that many). 1 starts no thread. NULL with err on failure. Free with
 * qd_pool_free, which joins the workers (NULL is a no-op). */
qd_pool *qd_pool_new(int threads, qd_err *err);
void qd_pool_free(qd_pool *p);

/* Threads of p, the caller's included; 1 for NULL. */
int qd_pool_threads(const qd_pool *p);

/* Runs fn(ctx, t, tid) for t = 0..ntasks-1, each exactly once, and returns when all are done.
 * p NULL, a one-thread pool, one task, a nested call or a busy pool: in order on the caller. */
void qd_pool_run(qd_pool *p, int ntasks, qd_pool_fn fn, void *ctx);

/* A chunk of a range: items [lo, hi), the running thread's index as for qd_pool_fn. */
typedef void (*qd_pool_chunk_fn)(void *ctx, size_t lo, size_t hi, int tid);

/* Chunks [0, n) cuts into at chunk items each (the last one shorter): ceil(n / chunk). */
size_t qd_pool_nchunks(size_t n, size_t chunk);

/* fn over [0, n) cut into chunks of chunk items ([k chunk, min(n, (k+1) chunk)) is chunk k), one
 * task per chunk: on p when there are at least two chunks, else on the caller. The boundaries
 * depend on n and chunk only, never on the thread count. */
void qd_pool_chunks(qd_pool *p, size_t n, size_t chunk, qd_pool_chunk_fn fn, void *ctx);

/* Replaces the default pool by one of threads threads (0: all online CPUs). Call it between
 * jobs from the program's main thread, never while something uses the default pool (a qd_qrt
 * made with threads 0 keeps a pointer to it). QD_OK, or QD_ERR with err (the old pool stays). */
int qd_pool_set_default(int threads, qd_err *err);

/* The default pool, made with all online CPUs on first use when qd_pool_set_default was not
 * called; NULL only when it could not be made (callers then run on one thread). */
qd_pool *qd_pool_default(void);

#endif
