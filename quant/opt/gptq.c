/* GPTQ rounding onto fixed grids (gptq.h). Linear algebra in double: the inverse Hessian's
 * Cholesky factor drives every update, and float would lose the small pivots of nearly
 * dependent input channels. The lazy block update (the trailing columns are corrected once per
 * block, by one gemm) is the paper's; the column loop inside a block is plain C, row by row on
 * the default pool. The inverse Hessian's factor comes from LAPACK (dpotrf/dtrtri, which
 * OpenBLAS ships; Debian's libopenblas-dev has no lapacke.h, so the Fortran symbols are declared
 * here), once per input shared by several weights (qd_gptq_factor), with a plain C reference
 * beside it that the tests compare it with; the Hessians accumulate by ssyrk/sgemm per chunk of
 * rows into double. The FP-target step (qd_gptq_target) is one damped Cholesky solve
 * (dpotrf/dpotrs) per weight. */
#include "quant/opt/gptq.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "base/stop.h"
#include "quant/sim/ops.h"

void qd_gptq_defaults(qd_gptq_opts *o) {
    memset(o, 0, sizeof *o); /* no progress callback */
    o->damp = 0.01;
    o->act_order = 1;
    o->block = 128;
    o->fp_target = 1;
    o->target_damp = 0.2;
}

void qd_gptq_accum_ref(double *H, const float *X, int n, int cols) {
    /* row by row so no (n, cols) double copy is needed; H is symmetric, fill both halves */
    for (int r = 0; r < n; r++) {
        const float *x = X + (size_t)r * cols;
        for (int i = 0; i < cols; i++) {
            double xi = x[i];
            if (xi == 0) continue;
            double *h = H + (size_t)i * cols;
            for (int j = 0; j < cols; j++) h[j] += xi * x[j];
        }
    }
}

void qd_gptq_accum_cross_ref(double *C, const float *X, const float *F, int n, int cols) {
    /* as qd_gptq_accum_ref, but C is not symmetric: every (i, j) pair */
    for (int r = 0; r < n; r++) {
        const float *x = X + (size_t)r * cols, *f = F + (size_t)r * cols;
        for (int i = 0; i < cols; i++) {
            double xi = x[i];
            if (xi == 0) continue;
            double *c = C + (size_t)i * cols;
            for (int j = 0; j < cols; j++) c[j] += xi * f[j];
        }
    }
}

/* Each call's product is taken by sgemm/ssyrk in float, over chunks of ACCUM_CHUNK rows, and
 * each chunk's sum is added into the double accumulator: a float sum of at most ACCUM_CHUNK
 * products per entry (relative error ≲ ACCUM_CHUNK·2⁻²⁴ at worst, ~√ACCUM_CHUNK·2⁻²⁴ typical:
 * far below the damping's 1% of the mean diagonal), at sgemm's rate instead of dgemm's half. */
enum { ACCUM_CHUNK = 2048, ACCUM_TILE = 64 };

/* H += the upper triangle of t into both halves, by tiles (the lower half's writes stride) */
static void add_sym(double *H, const float *t, int cols) {
    for (int i0 = 0; i0 < cols; i0 += ACCUM_TILE)
        for (int j0 = i0; j0 < cols; j0 += ACCUM_TILE) {
            int i1 = i0 + ACCUM_TILE < cols ? i0 + ACCUM_TILE : cols;
            int j1 = j0 + ACCUM_TILE < cols ? j0 + ACCUM_TILE : cols;
            for (int i = i0; i < i1; i++)
                for (int j = j0 > i ? j0 : i; j < j1; j++) {
                    double v = t[(size_t)i * cols + j];
                    H[(size_t)i * cols + j] += v;
                    if (j != i) H[(size_t)j * cols + i] += v;
                }
        }
}

int qd_gptq_accum(double *H, const float *X, int n, int cols, float *work) {
    if (n < 1) return QD_OK;
    float *t = work ? work : malloc(sizeof(float) * (size_t)cols * cols);
    if (!t) return QD_ERR;
    for (int r0 = 0; r0 < n; r0 += ACCUM_CHUNK) {
        int nb = n - r0 < ACCUM_CHUNK ? n - r0 : ACCUM_CHUNK;
        /* the upper triangle (row-major) of t = Xᵀ X over the chunk */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, nb, 1, X + (size_t)r0 * cols,
                    cols, 0, t, cols);
        add_sym(H, t, cols);
    }
    if (!work) free(t);
    return QD_OK;
}

int qd_gptq_accum_cross(double *C, const float *X, const float *F, int n, int cols,
                        float *work) {
    if (n < 1) return QD_OK;
    size_t nn = (size_t)cols * cols;
    float *t = work ? work : malloc(sizeof(float) * nn);
    if (!t) return QD_ERR;
    for (int r0 = 0; r0 < n; r0 += ACCUM_CHUNK) {
        int nb = n - r0 < ACCUM_CHUNK ? n - r0 : ACCUM_CHUNK;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, cols, nb, 1,
                    X + (size_t)r0 * cols, cols, F + (size_t)r0 * cols, cols, 0, t, cols);
        for (size_t i = 0; i < nn; i++) C[i] += t[i];
    }
    if (!work) free(t);
    return QD_OK;
}

/* In-place lower Cholesky factor of the (n, n) row-major A (upper triangle zeroed). QD_ERR when
 * A is not positive definite. */
static int chol_lower(double *A, int n) {
    for (int j = 0; j < n; j++) {
        double *aj = A + (size_t)j * n;
        double s = aj[j];
        for (int k = 0; k < j; k++) s -= aj[k] * aj[k];
        if (!(s > 0)) return QD_ERR;
        double d = sqrt(s);
        aj[j] = d;
        for (int i = j + 1; i < n; i++) {
            double *ai = A + (size_t)i * n;
            double t = ai[j];
            for (int k = 0; k < j; k++) t -= ai[k] * aj[k];
            ai[j] = t / d;
        }
        for (int k = j + 1; k < n; k++) aj[k] = 0;
    }
    return QD_OK;
}

/* LAPACK's Fortran interface (column-major; the trailing argument is the hidden length of the
 * character argument, which gfortran-built LAPACK expects and C-built routines ignore). */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info,
                    size_t uplo_len);
/* solves A X = B from dpotrf's factor */
extern void dpotrs_(const char *uplo, const int *n, const int *nrhs, const double *a,
                    const int *lda, double *b, const int *ldb, int *info, size_t uplo_len);
/* inverse of a triangular matrix in place */
extern void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda,
                    int *info, size_t uplo_len, size_t diag_len);

int qd_gptq_inv_chol(const double *H, double *U, int n) {
    /* The factor of H⁻¹ from one factorisation of H in reversed order (2n³/3 flops instead of
     * the 4n³/3 of factor, invert, factor again): with J the exchange matrix, J H J = L Lᵀ
     * gives H = R Rᵀ with R = J L J upper, so H⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ = J L⁻¹ J is upper
     * with Uᵀ U = H⁻¹ (the factor with a positive diagonal is unique, so it is the reference's
     * U up to rounding). Column-major lower L is row-major upper storage; reading L⁻¹ through
     * J..J is the in-place swap of element (r, c) with (n-1-c, n-1-r) of that storage. */
    int info = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) U[(size_t)i * n + j] = H[(size_t)(n - 1 - i) * n + (n - 1 - j)];
    dpotrf_("L", &n, U, &n, &info, 1);
    if (info != 0) return QD_ERR;
    dtrtri_("L", "N", &n, U, &n, &info, 1, 1);
    if (info != 0) return QD_ERR;
    for (int r = 0; r < n; r++)
        for (int c = 0; c < n; c++) {
            size_t p = (size_t)r * n + c, q = (size_t)(n - 1 - c) * n + (n - 1 - r);
            if (p < q) {
                double t = U[p];
                U[p] = U[q], U[q] = t;
            }
        }
    for (int i = 1; i < n; i++) memset(U + (size_t)i * n, 0, sizeof(double) * (size_t)i);
    return QD_OK;
}

static int inv_chol_upper(const double *H, double *U, double *work, int n);

int qd_gptq_inv_chol_ref(const double *H, double *U, int n) {
    double *work = malloc(sizeof(double) * (size_t)n * n);
    if (!work) return QD_ERR;
    int rc = inv_chol_upper(H, U, work, n);
    free(work);
    return rc;
}

/* U (upper, row-major) with H⁻¹ = Uᵀ U, from H. work: n*n. QD_ERR when H is not positive
 * definite. The plain reference of qd_gptq_inv_chol. */
static int inv_chol_upper(const double *H, double *U, double *work, int n) {
    double *L = work;
    memcpy(L, H, sizeof(double) * (size_t)n * n);
    if (chol_lower(L, n)) return QD_ERR;
    /* Linv (lower) into U's storage: L Linv = I, forward substitution column by column */
    double *Li = U;
    memset(Li, 0, sizeof(double) * (size_t)n * n);
    for (int j = 0; j < n; j++) {
        Li[(size_t)j * n + j] = 1 / L[(size_t)j * n + j];
        for (int i = j + 1; i < n; i++) {
            const double *li = L + (size_t)i * n;
            double t = 0;
            for (int k = j; k < i; k++) t += li[k] * Li[(size_t)k * n + j];
            Li[(size_t)i * n + j] = -t / li[i];
        }
    }
    /* H⁻¹ = Linvᵀ Linv into L's storage, then its lower factor, transposed into U */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, n, n, 1, Li, n, Li, n, 0, L, n);
    if (chol_lower(L, n)) return QD_ERR;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) U[(size_t)i * n + j] = j >= i ? L[(size_t)j * n + i] : 0;
    return QD_OK;
}

int qd_gptq_target(const float *W, int rows, int cols, const double *H, const double *C,
                   double damp, float *Wt, double *work, qd_err *err) {
    size_t nn = (size_t)cols * cols, nw = (size_t)rows * cols;
    double *A = work ? work : malloc(sizeof(double) * nn), *Z = malloc(sizeof(double) * nw);
    double *Wd = malloc(sizeof(double) * nw);
    int rc = QD_ERR;
    if (!A || !Z || !Wd) {
        qd_errf(err, "%s: out of memory", __func__);
        goto out;
    }
    double mean = 0;
    for (int i = 0; i < cols; i++) {
        double d = H[(size_t)i * cols + i];
        mean += d > 0 ? d : 0;
    }
    mean = mean > 0 ? mean / cols : 1;
    /* right-hand side (C - H) Wᵀ, (cols, rows) column-major = Z = W (C - H)ᵀ (rows, cols)
     * row-major: the solution Δ of (H + λI) Δ = (C - H) Wᵀ, read row-major, is W' - W */
    for (size_t i = 0; i < nw; i++) Wd[i] = W[i];
    for (size_t i = 0; i < nn; i++) A[i] = C[i] - H[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, cols, 1, Wd, cols, A, cols,
                0, Z, cols);
    /* the same dead-input rule as qd_gptq_round; λ raised tenfold while not definite */
    double dm = damp > 0 ? damp : 0.01;
    int ok = 0, info = 0;
    for (int tries = 0; tries < 4 && !ok; tries++, dm *= 10) {
        memcpy(A, H, sizeof(double) * nn);
        for (int i = 0; i < cols; i++) {
            double *d = &A[(size_t)i * cols + i];
            if (!(*d > 0)) *d = 1;
            *d += dm * mean;
        }
        dpotrf_("L", &cols, A, &cols, &info, 1);
        ok = info == 0;
    }
    if (!ok) {
        qd_errf(err, "%s: input Hessian not positive definite after damping", __func__);
        goto out;
    }
    dpotrs_("L", &cols, &rows, A, &cols, Z, &cols, &info, 1);
    if (info != 0) {
        qd_errf(err, "%s: solve failed (%d)", __func__, info);
        goto out;
    }
    for (size_t i = 0; i < nw; i++) Wt[i] = (float)(Wd[i] + Z[i]);
    rc = QD_OK;
out:
    if (A != work) free(A);
    free(Z), free(Wd);
    return rc;
}

typedef struct {
    double key;
    int idx;
} colkey;

static int by_key_desc(const void *a, const void *b) {
    const colkey *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return x->idx - y->idx; /* ties in index order: deterministic */
}

/* The grid point of u = w / s: the integer q and the dequantized value, in float exactly as the
 * simulation computes it ((q - z)·s). */
static inline float grid_point(double w, float s, float z, float qmin, float qmax, float *qi) {
    float t = (float)rint(w / (double)s) + z;
    t = t < qmin ? qmin : (t > qmax ? qmax : t);
    *qi = t;
    return (t - z) * s;
}

static void grid_limits(qd_wq_spec sp, float *qmin, float *qmax) {
    if (sp.sym) {
        *qmax = (float)((1 << (sp.bits - 1)) - 1);
        *qmin = -*qmax - 1;
    } else {
        *qmin = 0;
        *qmax = (float)((1u << sp.bits) - 1);
    }
}

void qd_gptq_rtn(const float *W, int rows, int cols, qd_wq_spec sp, const float *scale,
                 const float *zero, float *what, int32_t *iq) {
    float qmin, qmax;
    grid_limits(sp, &qmin, &qmax);
    for (int r = 0; r < rows; r++) {
        int g = sp.per_channel ? r : 0;
        float s = scale[g], z = sp.sym ? 0 : zero[g];
        for (int c = 0; c < cols; c++) {
            size_t k = (size_t)r * cols + c;
            float t = rintf(W[k] / s) + z;
            t = t < qmin ? qmin : (t > qmax ? qmax : t);
            what[k] = (t - z) * s;
            if (iq) iq[k] = (int32_t)t;
        }
    }
}

struct qd_gptq_fac {
    int cols;
    int *perm;   /* position a of the rounding order is input column perm[a] */
    int *dead;   /* (cols) input never nonzero in the calibration data */
    double *U;   /* (cols, cols) upper: (damped H, permuted)⁻¹ = Uᵀ U */
    /* kept for the next factorisation (qd_gptq_refactor) at their capacities: a fresh
     * allocation of U and the work buffer per input was a fresh mmap whose pages the kernel
     * cleared each time (3% of bench_calib) */
    double *ws;  /* the permuted damped H while factoring, the permuted weights while rounding */
    double *E;   /* the rounding's scaled errors of one block (rows, block) */
    size_t cap_cols, cap_nn, cap_ws, cap_e;
};

void qd_gptq_fac_free(qd_gptq_fac *f) {
    if (!f) return;
    free(f->perm), free(f->dead), free(f->U), free(f->ws), free(f->E);
    free(f);
}

/* *p holds at least n doubles (its contents are not kept when it grows); 0, or -1. */
static int grow(double **p, size_t *cap, size_t n) {
    if (*cap >= n) return 0;
    free(*p);
    *p = malloc(sizeof(double) * (n ? n : 1));
    *cap = *p ? n : 0;
    return *p ? 0 : -1;
}

qd_gptq_fac *qd_gptq_factor(const double *H, int cols, const qd_gptq_opts *o, qd_err *err) {
    return qd_gptq_refactor(NULL, H, cols, o, err);
}

double *qd_gptq_fac_work(qd_gptq_fac *f, size_t n) {
    return grow(&f->ws, &f->cap_ws, n) ? NULL : f->ws;
}

qd_gptq_fac *qd_gptq_refactor(qd_gptq_fac *f, const double *H, int cols, const qd_gptq_opts *o,
                              qd_err *err) {
    size_t nn = (size_t)cols * cols;
    if (!f) f = calloc(1, sizeof *f);
    colkey *ck = malloc(sizeof(colkey) * (size_t)cols);
    double *Hp = NULL;
    if (f) {
        f->cols = cols;
        if (f->cap_cols < (size_t)cols) {
            free(f->perm), free(f->dead);
            f->perm = malloc(sizeof(int) * (size_t)cols);
            f->dead = malloc(sizeof(int) * (size_t)cols);
            f->cap_cols = f->perm && f->dead ? (size_t)cols : 0;
        }
        if (f->cap_cols && grow(&f->U, &f->cap_nn, nn) == 0 && grow(&f->ws, &f->cap_ws, nn) == 0)
            Hp = f->ws;
    }
    if (!f || !f->cap_cols || !Hp || !ck) {
        qd_errf(err, "%s: out of memory", __func__);
        goto fail;
    }
    memset(f->dead, 0, sizeof(int) * (size_t)cols);
    /* column order and dead inputs (never nonzero in the calibration data) */
    double mean = 0;
    for (int i = 0; i < cols; i++) {
        double d = H[(size_t)i * cols + i];
        f->dead[i] = !(d > 0);
        mean += f->dead[i] ? 0 : d;
        ck[i].key = o->act_order ? d : 0, ck[i].idx = i;
    }
    mean = mean > 0 ? mean / cols : 1;
    qsort(ck, (size_t)cols, sizeof *ck, by_key_desc);
    for (int a = 0; a < cols; a++) f->perm[a] = ck[a].idx;
    for (int a = 0; a < cols; a++)
        for (int b = 0; b < cols; b++)
            Hp[(size_t)a * cols + b] = H[(size_t)ck[a].idx * cols + ck[b].idx];
    /* damping: relative to the mean diagonal, raised tenfold while H is still not definite */
    double damp = o->damp > 0 ? o->damp : 0.01;
    int ok = 0;
    for (int tries = 0; tries < 4 && !ok; tries++, damp *= 10) {
        for (int a = 0; a < cols; a++) { /* damped H in place: the factorisation's input */
            double *d = &Hp[(size_t)a * cols + a];
            if (f->dead[ck[a].idx]) *d = 1;
            *d += damp * mean;
        }
        ok = qd_gptq_inv_chol(Hp, f->U, cols) == QD_OK;
        if (!ok) /* undo this try's damping before the next */
            for (int a = 0; a < cols; a++) Hp[(size_t)a * cols + a] -= damp * mean;
    }
    if (!ok) {
        qd_errf(err, "%s: input Hessian not positive definite after damping", __func__);
        goto fail;
    }
    free(ck);
    return f;
fail:
    free(ck);
    qd_gptq_fac_free(f);
    return NULL;
}

/* One block [i1, i2) of the column loop for rows [r0, r1): each row's columns rounded in order,
 * each error pushed onto the row's later columns of the block (rows are independent: the row's
 * block stays in cache while the block of U is shared). E (rows, i2 - i1) receives the scaled
 * errors the trailing update needs. The rows run in parallel on the default pool. */
typedef struct {
    const qd_gptq_fac *f;
    double *Wd, *E;
    int rows, i1, i2;
    qd_wq_spec sp;
    const float *scale, *zero;
    float qmin, qmax;
    float *what;
    int32_t *iq;
} round_job;

/* w[k] -= e·u[k] for k < n: the error pushed onto a row's later columns, the column loop's
 * inner loop. The vector versions do the same product and difference per element (no fused
 * multiply-add: C11 does not contract the scalar one), so they give the scalar loop's bits;
 * chosen at run time, off with qd_ops_set_simd(0). */
static void push_scalar(double *restrict w, const double *restrict u, double e, int n) {
    for (int k = 0; k < n; k++) w[k] -= e * u[k];
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static void push_avx512(double *restrict w,
                                                           const double *restrict u, double e,
                                                           int n) {
    __m512d ve = _mm512_set1_pd(e);
    int k = 0;
    for (; k + 8 <= n; k += 8)
        _mm512_storeu_pd(w + k, _mm512_sub_pd(_mm512_loadu_pd(w + k),
                                              _mm512_mul_pd(ve, _mm512_loadu_pd(u + k))));
    for (; k < n; k++) w[k] -= e * u[k];
}

__attribute__((target("avx2"))) static void push_avx2(double *restrict w, const double *restrict u,
                                                      double e, int n) {
    __m256d ve = _mm256_set1_pd(e);
    int k = 0;
    for (; k + 4 <= n; k += 4)
        _mm256_storeu_pd(w + k, _mm256_sub_pd(_mm256_loadu_pd(w + k),
                                              _mm256_mul_pd(ve, _mm256_loadu_pd(u + k))));
    for (; k < n; k++) w[k] -= e * u[k];
}
#endif

typedef void (*push_fn)(double *restrict, const double *restrict, double, int);

static push_fn push_pick(void) {
#if defined(__x86_64__)
    if (qd_ops_simd()) {
        if (__builtin_cpu_supports("avx512f")) return push_avx512;
        if (__builtin_cpu_supports("avx2")) return push_avx2;
    }
#endif
    return push_scalar;
}

/* a qd_pool_chunk_fn over rows of the round_job ctx */
static void round_rows(void *ctx, size_t r0, size_t r1, int tid) {
    const round_job *j = ctx;
    (void)tid;
    int cols = j->f->cols, nb = j->i2 - j->i1;
    push_fn push = push_pick();
    for (size_t r = r0; r < r1; r++) {
        int g = j->sp.per_channel ? r : 0;
        float s = j->scale[g], z = j->sp.sym ? 0 : j->zero[g], qi;
        double *wr = j->Wd + (size_t)r * cols, *er = j->E + (size_t)r * nb;
        for (int i = j->i1; i < j->i2; i++) {
            const double *ui = j->f->U + (size_t)i * cols;
            int c = j->f->perm[i];
            double w = wr[i];
            float deq = grid_point(w, s, z, j->qmin, j->qmax, &qi);
            j->what[(size_t)r * cols + c] = deq;
            if (j->iq) j->iq[(size_t)r * cols + c] = (int32_t)qi;
            double e = (w - (double)deq) / ui[i];
            er[i - j->i1] = e;
            push(wr + i + 1, ui + i + 1, e, j->i2 - i - 1);
        }
    }
}

int qd_gptq_round_fac(qd_gptq_fac *f, const float *W, int rows, qd_wq_spec sp,
                      const float *scale, const float *zero, int block, float *what,
                      int32_t *iq, qd_err *err) {
    int cols = f->cols;
    int B = block > 0 ? block : 128;
    if (B > cols) B = cols;
    if (grow(&f->ws, &f->cap_ws, (size_t)rows * cols) || grow(&f->E, &f->cap_e, (size_t)rows * B))
        return qd_errf(err, "%s: out of memory", __func__);
    double *Wd = f->ws, *E = f->E;
    for (int r = 0; r < rows; r++)
        for (int a = 0; a < cols; a++) {
            int c = f->perm[a];
            Wd[(size_t)r * cols + a] = f->dead[c] ? 0 : W[(size_t)r * cols + c];
        }
    round_job j = {f, Wd, E, rows, 0, 0, sp, scale, zero, 0, 0, what, iq};
    grid_limits(sp, &j.qmin, &j.qmax);
    for (int i1 = 0; i1 < cols; i1 += B) {
        int i2 = i1 + B < cols ? i1 + B : cols, nb = i2 - i1;
        j.i1 = i1, j.i2 = i2;
        qd_pool_chunks(qd_pool_default(), (size_t)rows, 32, round_rows, &j);
        if (i2 < cols) /* the lazy update: every later column at once */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols - i2, nb, -1, E, nb,
                        f->U + (size_t)i1 * cols + i2, cols, 1, Wd + i2, cols);
    }
    return QD_OK;
}

int qd_gptq_round(const float *W, int rows, int cols, qd_wq_spec sp, const float *scale,
                  const float *zero, const double *H, const qd_gptq_opts *o, float *what,
                  int32_t *iq, qd_err *err) {
    qd_gptq_fac *f = qd_gptq_factor(H, cols, o, err);
    if (!f) return QD_ERR;
    int rc = qd_gptq_round_fac(f, W, rows, sp, scale, zero, o->block, what, iq, err);
    qd_gptq_fac_free(f);
    return rc;
}

/* The linears of one layer in the order their inputs become available, grouped by the input
 * they share (one Hessian per group). */
static const int stage_w[4][3] = {{QD_W_Q, QD_W_K, QD_W_V}, {QD_W_O, -1, -1},
                                  {QD_W_GATE, QD_W_UP, -1}, {QD_W_DOWN, -1, -1}};

/* One stream through a layer's stages: its layer inputs per window (X), and where its last
 * stage ended, per token: o's then gate/up's input (in, cmid wide), the residual stream into
 * the FFN (res), down's input (dn; NULL for the FP stream, whose stage 3 runs the layer whole:
 * it reads no rounded weight). */
typedef struct {
    qd_real *X, *in, *res, *dn;
    size_t cmid;
} gq_stream;

/* Stage st of layer l for the nb windows from token r0: from the layer's input (stages 0 and
 * 1) or where stage st - 1 ended (qd_qsim_layer_resume), up to stage st's input, which it
 * returns, keeping where the next stage resumes; the last stage (4, or 3 for a stream without
 * dn) runs to the layer's end, its output the batch's next X. */
static const qd_real *run_stage(qd_qsim *q, int l, int st, gq_stream *s, size_t r0, int nb,
                                int T, qd_real *Y) {
    size_t D = (size_t)q->cfg.dim, N = (size_t)nb * T;
    int w_in = st < 4 ? stage_w[st][0] : QD_W_DOWN, n;
    int whole = st == 4 || (st == 3 && !s->dn), up = whole ? -1 : w_in;
    size_t cols = (size_t)q->L[l].wcols[w_in];
    q->rc.cursor = 0;
    if (st < 2)
        qd_qsim_layer_forward_to(q, l, s->X + r0 * D, Y, nb, T, up);
    else if (st == 4)
        qd_qsim_layer_resume(q, l, QD_W_DOWN, s->dn + r0 * cols, s->res + r0 * D, Y, nb, T, -1);
    else
        qd_qsim_layer_resume(q, l, stage_w[st - 1][0], s->in + r0 * s->cmid,
                             st == 2 ? s->X + r0 * D : s->res + r0 * D, Y, nb, T, up);
    const qd_real *in = st < 4 ? qd_qsim_weight_input(q, l, w_in, &n) : NULL;
    if (st == 1 || st == 2) memcpy(s->in + r0 * s->cmid, in, sizeof(qd_real) * N * cols);
    if (st == 2) memcpy(s->res + r0 * D, qd_qsim_residual(q, l, &n), sizeof(qd_real) * N * D);
    if (st == 3 && s->dn) memcpy(s->dn + r0 * cols, in, sizeof(qd_real) * N * cols);
    if (whole) memcpy(s->X + r0 * D, Y, sizeof(qd_real) * N * D);
    return in;
}

int qd_gptq_qsim(qd_qsim *q, const int *tokens, int n_windows, int T, const qd_gptq_opts *o,
                 qd_err *err) {
    const qd_config *c = &q->cfg;
    if (T < 1 || T > q->o.Tmax || n_windows < 1)
        return qd_errf(err, "%s: %d windows of %d tokens (the simulation holds %d)", __func__,
                       n_windows, T, q->o.Tmax);
    int D = c->dim, Bm = q->o.Bmax, fpt = o->fp_target;
    size_t per = (size_t)T * D;
    size_t wmax = 0, cmax = 0, gmax = 0;
    for (int w = 0; w < QD_W_PER_LAYER; w++) {
        size_t n = (size_t)q->L[0].wrows[w] * q->L[0].wcols[w];
        if (n > wmax) wmax = n;
        if ((size_t)q->L[0].wcols[w] > cmax) cmax = (size_t)q->L[0].wcols[w];
        if ((size_t)q->L[0].wrows[w] > gmax) gmax = (size_t)q->L[0].wrows[w];
    }
    size_t all = per * (size_t)n_windows, ntok = (size_t)T * n_windows;
    size_t cmid = (size_t)q->L[0].wcols[QD_W_O] > (size_t)D ? (size_t)q->L[0].wcols[QD_W_O] : (size_t)D;
    qd_real *X = malloc(sizeof(qd_real) * all);
    qd_real *Y = malloc(sizeof(qd_real) * per * (size_t)Bm);
    /* where the last stage ended, per window: o's then gate/up's input, the residual stream
     * into the FFN, down's input (the next stage resumes there, qd_qsim_layer_resume) */
    qd_real *Kin = malloc(sizeof(qd_real) * ntok * cmid), *Kres = malloc(sizeof(qd_real) * all);
    qd_real *Kdn = malloc(sizeof(qd_real) * ntok * (size_t)q->L[0].wcols[QD_W_DOWN]);
    double *H = malloc(sizeof(double) * cmax * cmax);
    float *wk = malloc(sizeof(float) * cmax * cmax); /* the accumulations' float products */
    qd_real *t = malloc(sizeof(qd_real) * wmax), *what = malloc(sizeof(qd_real) * wmax);
    qd_real *sc = malloc(sizeof(qd_real) * gmax), *zp = malloc(sizeof(qd_real) * gmax);
    /* FP target: the FP stream, its linear inputs, and C = Xqᵀ Xfp; the FP stream's stages
     * resume too (its own o/gate-up inputs and residual) */
    qd_real *Xf = fpt ? malloc(sizeof(qd_real) * all) : NULL;
    qd_real *F = fpt ? malloc(sizeof(qd_real) * (size_t)T * Bm * cmax) : NULL;
    double *C = fpt ? malloc(sizeof(double) * cmax * cmax) : NULL;
    qd_real *tt = fpt ? malloc(sizeof(qd_real) * wmax) : NULL;
    qd_real *Kfin = fpt ? malloc(sizeof(qd_real) * ntok * cmid) : NULL;
    qd_real *Kfres = fpt ? malloc(sizeof(qd_real) * all) : NULL;
    int rc = QD_ERR, sw = q->wq_on, sa = q->aq_on;
    qd_gptq_fac *fac = NULL;
    if (!X || !Y || !Kin || !Kres || !Kdn || !H || !wk || !t || !what || !sc || !zp ||
        (fpt && (!Xf || !F || !C || !tt || !Kfin || !Kfres))) {
        qd_errf(err, "%s: out of memory", __func__);
        goto out;
    }
    q->wq_on = 1;
    for (int w0 = 0; w0 < n_windows; w0 += Bm) {
        int nb = n_windows - w0 < Bm ? n_windows - w0 : Bm;
        q->rc.cursor = 0;
        qd_qsim_embed(q, tokens + (size_t)w0 * T, nb, T, X + (size_t)w0 * per);
        if (fpt) {
            q->wq_on = q->aq_on = 0;
            qd_qsim_embed(q, tokens + (size_t)w0 * T, nb, T, Xf + (size_t)w0 * per);
            q->wq_on = 1, q->aq_on = sa;
        }
    }
    gq_stream qs = {X, Kin, Kres, Kdn, cmid}, fs = {Xf, Kfin, Kfres, NULL, cmid};
    for (int l = 0; l < c->n_layers; l++) {
        const qd_qlayer *L = &q->L[l];
        /* stage st's input, from where stage st - 1 ended (its weights now rounded); stage 4
         * is the whole layer with its final integers: the next layer's input */
        for (int st = 0; st <= 4; st++) {
            int cols = st < 4 ? L->wcols[stage_w[st][0]] : 0;
            if (st < 4) {
                memset(H, 0, sizeof(double) * (size_t)cols * cols);
                if (fpt) memset(C, 0, sizeof(double) * (size_t)cols * cols);
            }
            for (int w0 = 0; w0 < n_windows; w0 += Bm) {
                int nb = n_windows - w0 < Bm ? n_windows - w0 : Bm, n = nb * T;
                size_t r0 = (size_t)w0 * T; /* the batch's first token */
                if (qd_stop_requested()) {
                    qd_stopped(err);
                    goto out;
                }
                if (fpt && st < 4) {
                    q->wq_on = q->aq_on = 0;
                    memcpy(F, run_stage(q, l, st, &fs, r0, nb, T, Y),
                           sizeof(qd_real) * (size_t)n * cols);
                    q->wq_on = 1, q->aq_on = sa;
                }
                const qd_real *in = run_stage(q, l, st, &qs, r0, nb, T, Y);
                if (st == 4) continue;
                qd_gptq_accum(H, in, n, cols, wk);
                if (fpt) qd_gptq_accum_cross(C, in, F, n, cols, wk);
            }
            if (st == 4) break;
            /* one factorisation for the weights that share this input */
            fac = qd_gptq_refactor(fac, H, cols, o, err); /* its buffers kept for the next */
            if (!fac) goto out;
            for (int k = 0; k < 3 && stage_w[st][k] >= 0; k++) {
                int w = stage_w[st][k], rows = L->wrows[w];
                if (qd_stop_requested()) {
                    qd_stopped(err);
                    goto out;
                }
                qd_qsim_weight_let(q, l, w, t);
                qd_qsim_weight_enc(q, l, w, sc, zp);
                const qd_real *src = t;
                if (fpt) {
                    /* its cols² scratch: the factorisation's work buffer, free until the
                     * rounding (NULL when it cannot grow: the target allocates its own) */
                    double *tw = qd_gptq_fac_work(fac, (size_t)cols * cols);
                    if (qd_gptq_target(t, rows, cols, H, C, o->target_damp, tt, tw, err))
                        goto out;
                    src = tt;
                }
                if (qd_gptq_round_fac(fac, src, rows, L->wspec[w], sc, zp, o->block, what, NULL,
                                      err))
                    goto out;
                if (qd_qsim_set_wfix(q, l, w, what)) {
                    qd_errf(err, "%s: out of memory", __func__);
                    goto out;
                }
            }
        }
        if (o->layer_done) o->layer_done(o->layer_ctx, l + 1, c->n_layers);
    }
    rc = QD_OK;
out:
    q->wq_on = sw, q->aq_on = sa;
    free(X), free(Y), free(Kin), free(Kres), free(Kdn), free(H), free(wk), free(t), free(what), free(sc);
    free(zp), free(Xf), free(F), free(C), free(tt), free(Kfin), free(Kfres);
    qd_gptq_fac_free(fac);
    return rc;
}
