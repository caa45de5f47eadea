/* Error-compensating rounding of linear weights onto fixed grids (GPTQ: Frantar et al., "GPTQ:
 * Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2022).
 *
 * Round-to-nearest treats every weight on its own. GPTQ rounds the columns of W (rows = output
 * channels, cols = inputs) one at a time and pushes each column's rounding error onto the
 * columns not yet rounded, through the inverse of the layer's input Hessian H = XᵀX (X the
 * calibration inputs of the linear), so that the layer's OUTPUT error ||X Wᵀ - X Ŵᵀ||² is what
 * gets minimised rather than the weight error. The grids (scale, zero point per output row or
 * per tensor) are given and not changed: here they come from the trained LET/LWC encodings, so
 * the result is a set of integers on exactly the grid the runtime and the exporters use.
 *
 * qd_gptq_round is the algorithm on one matrix; qd_gptq_qsim applies it to every linear weight
 * of a quantized simulation, layer by layer, with the inputs each linear sees in the quantized
 * model (the layers below and the earlier linears of the same layer already rounded), and fixes
 * the results in the simulation (qd_qsim_set_wfix) so evaluation, folding and the encodings use
 * the same integers.
 *
 * FP target (asymmetric calibration, as in GPTAQ: Li et al., 2025): the quantized model's input
 * Xq of a linear differs from the FP model's Xf (activation quantization, the layers below), so
 * the error that matters is ||Xq Ŵᵀ - Xf Wᵀ||², not ||Xq (Ŵ - W)ᵀ||². With H = XqᵀXq and
 * C = XqᵀXf it equals ||Xq (Ŵ - W')ᵀ||² + const for the least-squares weight W', so GPTQ is run
 * on W' instead of W (qd_gptq_target). W' is a ridge step from W, not a free refit: the trained
 * LET/LWC weights already fit the end-to-end loss, and the step only has to absorb the
 * per-layer input error. */
#ifndef QD_GPTQ_H
#define QD_GPTQ_H

#include "base/err.h"
#include "quant/sim/fakequant.h"

typedef struct qd_gptq_opts {
    double damp;      /* added to H's diagonal, relative to its mean (default 0.01) */
    int act_order;    /* round columns in order of decreasing H_ii (default 1) */
    int block;        /* columns per lazy update block (default 128) */
    int fp_target;    /* qd_gptq_qsim: round W' towards the FP model's outputs (default 1) */
    double target_damp; /* ridge of that step towards W, relative to H's mean diagonal
                           (default 0.2: measured on stories260K W4A8, 0.01..2 tried) */
    /* qd_gptq_qsim: called after each layer (done of n_layers) for progress, or NULL */
    void (*layer_done)(void *ctx, int done, int n_layers);
    void *layer_ctx;
} qd_gptq_opts;

void qd_gptq_defaults(qd_gptq_opts *o);

/* H (cols, cols) += Xᵀ X for X (n, cols) row-major, both halves. Only accumulates; H starts
 * zeroed. By ssyrk in float over chunks of at most 2048 rows, each chunk's sum added into H in
 * double. work: cols² floats of scratch (NULL: allocated here). QD_OK, or QD_ERR when out of
 * memory (only with work NULL; H then holds part of the sum). */
int qd_gptq_accum(double *H, const float *X, int n, int cols, float *work);
/* The same by plain loops in double: the reference qd_gptq_accum is tested against (its
 * products exact; qd_gptq_accum's within the float sums' bound). */
void qd_gptq_accum_ref(double *H, const float *X, int n, int cols);

/* C (cols, cols) += Xᵀ F for X, F (n, cols) row-major (the same tokens in two models), by
 * sgemm as qd_gptq_accum. QD_OK, or QD_ERR when out of memory. */
int qd_gptq_accum_cross(double *C, const float *X, const float *F, int n, int cols,
                        float *work);
/* Its plain reference. */
void qd_gptq_accum_cross_ref(double *C, const float *X, const float *F, int n, int cols);

/* The weight W' (rows, cols into Wt) whose layer output on the quantized inputs best matches
 * the FP output: W' = W + (H + λI)⁻¹ (C - H) Wᵀ, transposed, with H = XqᵀXq, C = XqᵀXf (both
 * (cols, cols)) and λ = damp·mean(diag H) (dead inputs get H_ii = 1 as in qd_gptq_round).
 * damp -> 0 (<= 0 means 0.01) is the exact least-squares fit, damp -> ∞ leaves W. work: cols²
 * doubles of scratch, or NULL (allocated here). QD_OK, or QD_ERR with err set (out of memory,
 * H not positive definite). */
int qd_gptq_target(const float *W, int rows, int cols, const double *H, const double *C,
                   double damp, float *Wt, double *work, qd_err *err);

/* Rounds W (rows, cols) onto the grid of sp with the given scale and zero point per group
 * (rows when sp.per_channel, else 1; zero is the grid's rounded zero point, 0 when symmetric),
 * compensating errors through H (cols, cols, symmetric, not modified). Writes the dequantized
 * weights (q - zero)·scale into what (rows, cols) and, when iq is not NULL, the integers q.
 * QD_OK, or QD_ERR with err set (out of memory, or H not positive definite after damping). */
int qd_gptq_round(const float *W, int rows, int cols, qd_wq_spec sp, const float *scale,
                  const float *zero, const double *H, const qd_gptq_opts *o, float *what,
                  int32_t *iq, qd_err *err);

/* What GPTQ needs from H alone, shared by the weights that read the same input (q/k/v, gate/up):
 * the column order (act_order), the dead inputs and the damped inverse Hessian's factor. */
typedef struct qd_gptq_fac qd_gptq_fac;
/* Factors H (cols, cols) as qd_gptq_round does. The caller frees it with qd_gptq_fac_free;
 * NULL with err set (out of memory, H not positive definite after damping). */
qd_gptq_fac *qd_gptq_factor(const double *H, int cols, const qd_gptq_opts *o, qd_err *err);
/* The same into f (NULL: a new one), reusing its buffers where they are large enough: f for
 * this H, or NULL with err set and f freed. */
qd_gptq_fac *qd_gptq_refactor(qd_gptq_fac *f, const double *H, int cols, const qd_gptq_opts *o,
                              qd_err *err);
void qd_gptq_fac_free(qd_gptq_fac *f);
/* f's work buffer grown to n doubles (NULL when it cannot grow): scratch free between a
 * factorisation and the next rounding, which overwrite it. */
double *qd_gptq_fac_work(qd_gptq_fac *f, size_t n);
/* qd_gptq_round of W (rows, f's cols) from the factorisation f, columns in lazy blocks of
 * block (<= 0: 128); the same results as qd_gptq_round with the options f was made with.
 * Its work buffers are f's (kept for the next call). */
int qd_gptq_round_fac(qd_gptq_fac *f, const float *W, int rows, qd_wq_spec sp,
                      const float *scale, const float *zero, int block, float *what,
                      int32_t *iq, qd_err *err);

/* U (n, n, row-major upper triangular, lower part zero) with H⁻¹ = Uᵀ U for a symmetric
 * positive definite H (n, n): the factor that drives GPTQ's updates. LAPACK (dpotrf and dtrtri
 * of H in reversed order). QD_ERR when H is not positive definite. */
int qd_gptq_inv_chol(const double *H, double *U, int n);
/* The same by plain O(n³) loops: the reference qd_gptq_inv_chol is tested against. QD_ERR also
 * when out of memory. */
int qd_gptq_inv_chol_ref(const double *H, double *U, int n);

/* Plain round-to-nearest on the same grid (the reference GPTQ is compared with). */
void qd_gptq_rtn(const float *W, int rows, int cols, qd_wq_spec sp, const float *scale,
                 const float *zero, float *what, int32_t *iq);

/* Runs GPTQ over every linear weight of q (weight quantization on) with calibration inputs from
 * n_windows windows of T tokens (T <= q's Tmax), and fixes the results in q. With o->fp_target
 * each weight is first moved to qd_gptq_target's W' against the same simulation with every
 * quantizer off (the FP model, LET kept). QD_OK or QD_ERR. */
int qd_gptq_qsim(qd_qsim *q, const int *tokens, int n_windows, int T, const qd_gptq_opts *o,
                 qd_err *err);

#endif
