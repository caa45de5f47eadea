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
 * the same integers. */
#ifndef QD_GPTQ_H
#define QD_GPTQ_H

#include "quant/qd.h"
#include "quant/qsim.h"

typedef struct qd_gptq_opts {
    double damp;      /* added to H's diagonal, relative to its mean (default 0.01) */
    int act_order;    /* round columns in order of decreasing H_ii (default 1) */
    int block;        /* columns per lazy update block (default 128) */
} qd_gptq_opts;

void qd_gptq_defaults(qd_gptq_opts *o);

/* H (cols, cols) += Xᵀ X for X (n, cols) row-major. Only accumulates; H starts zeroed. */
void qd_gptq_accum(double *H, const float *X, int n, int cols);

/* Rounds W (rows, cols) onto the grid of sp with the given scale and zero point per group
 * (rows when sp.per_channel, else 1; zero is the grid's rounded zero point, 0 when symmetric),
 * compensating errors through H (cols, cols, symmetric, not modified). Writes the dequantized
 * weights (q - zero)·scale into what (rows, cols) and, when iq is not NULL, the integers q.
 * QD_OK, or QD_ERR with err set (out of memory, or H not positive definite after damping). */
int qd_gptq_round(const float *W, int rows, int cols, qd_wq_spec sp, const float *scale,
                  const float *zero, const double *H, const qd_gptq_opts *o, float *what,
                  int32_t *iq, qd_err *err);

/* U (n, n, row-major upper triangular, lower part zero) with H⁻¹ = Uᵀ U for a symmetric
 * positive definite H (n, n): the factor that drives GPTQ's updates. LAPACK (dpotrf, dpotri,
 * dpotrf). QD_ERR when H is not positive definite. */
int qd_gptq_inv_chol(const double *H, double *U, int n);
/* The same by plain O(n³) loops: the reference qd_gptq_inv_chol is tested against. QD_ERR also
 * when out of memory. */
int qd_gptq_inv_chol_ref(const double *H, double *U, int n);

/* Plain round-to-nearest on the same grid (the reference GPTQ is compared with). */
void qd_gptq_rtn(const float *W, int rows, int cols, qd_wq_spec sp, const float *scale,
                 const float *zero, float *what, int32_t *iq);

/* Runs GPTQ over every linear weight of q (weight quantization on) with calibration inputs from
 * n_windows windows of T tokens (T <= q's Tmax), and fixes the results in q. QD_OK or QD_ERR. */
int qd_gptq_qsim(qd_qsim *q, const int *tokens, int n_windows, int T, const qd_gptq_opts *o,
                 qd_err *err);

#endif
