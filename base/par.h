/* The numeric loops' use of the default pool (base/pool.h), shared by the simulation's ops
 * (quant/sim/ops.c), the fake-quantized model (fakequant.c), the optimizer (quant/opt/optim.c)
 * and the FP32 forward (quant/fp/forward.c): a loop over n
 * items runs in chunks of a fixed size, PAR_ELEMS elements or as many whole rows as hold that
 * many, so the chunk boundaries depend on the sizes only. A sum over the chunks is kept per
 * chunk (par_part) and the partial sums are added in chunk order afterwards (par_part_add), so
 * every result is the same bits for any thread count; with one thread the chunks run in order
 * on the caller, the reference. A loop of at most one chunk runs on the caller without touching
 * the pool: waking it costs more than such a loop. Header-only (static inline): ops.c and
 * fakequant.c are also compiled together into one file (tests/test_gradcheck.c, bench). */
#ifndef QD_BASE_PAR_H
#define QD_BASE_PAR_H

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"

#ifndef PAR_ELEMS /* tests/test_gradcheck.c makes it tiny so its small tensors span many chunks */
#define PAR_ELEMS 16384
#endif

/* A loop body over items [lo, hi) of the job a. */
typedef void (*par_fn)(const void *a, size_t lo, size_t hi);

typedef struct par_job {
    par_fn fn;
    const void *a;
} par_job;

static inline void par_tramp(void *ctx, size_t lo, size_t hi, int tid) {
    (void)tid;
    const par_job *J = ctx;
    J->fn(J->a, lo, hi);
}

/* fn over [0, n) in chunks of chunk items (see the file comment). */
static inline void par_for(size_t n, size_t chunk, par_fn fn, const void *a) {
    if (n <= chunk) {
        if (n) fn(a, 0, n);
        return;
    }
    par_job J = {fn, a};
    qd_pool_chunks(qd_pool_default(), n, chunk, par_tramp, &J);
}

/* Rows of cols elements per chunk: whole rows holding about PAR_ELEMS elements. */
static inline size_t par_rows(size_t cols) {
    return cols >= PAR_ELEMS ? 1 : PAR_ELEMS / (cols ? cols : 1);
}

/* The last large block of partial sums par_part_free released (one per file that includes this
 * header), reused by the next par_part it holds: the LET and norm backwards' partial sums are
 * 0.3-1 MB per call, and a fresh malloc of that size is a fresh mmap whose pages the kernel
 * clears on every call (bench_optimizer: 3% of a step in clear_page). Taken and put back by
 * atomic exchange, so concurrent callers never share a block. A block holds its capacity in
 * doubles in the element before the one par_part returns. */
static _Atomic(double *) par_cache;

/* Per-chunk partial sums: K doubles per chunk of a loop over n items in chunks of chunk, in
 * small (cap doubles) when they fit, else allocated (free with par_part_free). Zeroed. */
static inline double *par_part(size_t n, size_t chunk, size_t K, double *small, size_t cap) {
    size_t m = qd_pool_nchunks(n, chunk) * K;
    double *p = small;
    if (m > cap) {
        double *b = atomic_exchange(&par_cache, NULL);
        if (b && (size_t)b[-1] < m) free(b - 1), b = NULL;
        if (!b) {
            b = malloc(sizeof(double) * (m + 1));
            assert(b && "par_part: out of memory for partial sums");
            b[0] = (double)m;
            b++;
        }
        p = b;
    }
    memset(p, 0, sizeof(double) * m);
    return p;
}

static inline void par_part_free(double *p, const double *small) {
    if (p == small) return;
    double *old = atomic_exchange(&par_cache, p);
    if (old) free(old - 1);
}

/* sums[k] += the K partial sums of part added in chunk order. */
static inline void par_part_add(const double *part, size_t n, size_t chunk, size_t K,
                                double *sums) {
    size_t nc = qd_pool_nchunks(n, chunk);
    for (size_t c = 0; c < nc; c++)
        for (size_t k = 0; k < K; k++) sums[k] += part[c * K + k];
}

typedef struct par_zero_job {
    char *p;
} par_zero_job;

static inline void par_zero_r(const void *a, size_t lo, size_t hi) {
    memset(((const par_zero_job *)a)->p + lo, 0, hi - lo);
}

/* memset(p, 0, bytes) on the pool in chunks of 16 PAR_ELEMS bytes (the large gradient buffers a
 * backward clears before accumulating into them). */
static inline void par_zero(void *p, size_t bytes) {
    par_zero_job J = {p};
    par_for(bytes, 16 * PAR_ELEMS, par_zero_r, &J);
}

#endif
