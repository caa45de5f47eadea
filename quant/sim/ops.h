/* Forward/backward pairs of the decoder-block ops and the fake quantizers, over raw buffers with
 * explicit dimensions (llm.c style). Forward functions write their output and cache what the
 * backward needs; backward functions ACCUMULATE (+=) into every gradient they produce, so one
 * zeroing of the gradient buffers per step is enough.
 *
 * The element type is qd_real: float in the library. tests/test_gradcheck.c compiles this file
 * (and fakequant.c) a second time with QD_REAL_DOUBLE defined, which turns qd_real into double and
 * every public function here into a file-local static of that test, so the gradient checks run
 * the very same code in double precision without clashing with the float library.
 *
 * Rounding: every rounding of a quantizer goes through qd_rctx. With rc == NULL (or mode OFF)
 * round-half-to-even (rint) is used, the rule the integer runtime must also use for weights. The
 * RECORD/REPLAY modes exist for gradient checks: the straight-through estimator makes the
 * gradient of round() equal to 1, which is the exact gradient of the function obtained by
 * freezing each rounding residual round(u)-u, and each clamp decision (below / inside / above
 * the grid), at their values at the base point. RECORD stores them, REPLAY uses them, so
 * central differences of the frozen function can be compared with the STE gradients exactly
 * (without freezing the clamp, every element that rounds onto the grid's end point sits exactly
 * on a kink). */
#ifndef QD_OPS_H
#define QD_OPS_H

#include <stddef.h>

#include "quant/fp/layers.h" /* qd_real, and the RMSNorm/SiLU/RoPE kernels these ops wrap */

#ifdef QD_REAL_DOUBLE
#define QD_API static __attribute__((unused))
#else
#define QD_API
#endif

/* ---- test-only fault hooks ----
 * The backward functions take a `fault` argument with which tests/test_gradcheck.c breaks one
 * term on purpose, to prove that its checks catch a wrong backward. The tests are honoured only
 * where QD_TEST_HOOKS is defined (that test compiles this file and fakequant.c itself with it);
 * the library and the quantd binary are built without, so no fault is tested in their loops. */
#ifdef QD_TEST_HOOKS
#define QD_FAULT(f, k) ((f) == (k))
#else
#define QD_FAULT(f, k) ((void)(f), 0)
#endif

/* ---- SIMD ----
 * The hottest float element loops (the activation quantizer's forward and backward, the
 * weight range and symmetric grid, LET on weights and its column sums) have AVX2 versions
 * chosen at run time that give the same bits as the scalar loops. on = 0 turns them off for
 * the whole process (tests compare the two); default on. */
QD_API void qd_ops_set_simd(int on);
/* Whether they are on (other vector loops that keep the scalar bits, GPTQ's, follow it too). */
QD_API int qd_ops_simd(void);

/* ---- rounding context (see the file comment) ---- */
enum { QD_ROUND_OFF = 0, QD_ROUND_RECORD = 1, QD_ROUND_REPLAY = 2 };
typedef struct qd_rctx {
    int mode;
    double *res;      /* residuals round(u)-u, cap entries */
    signed char *reg; /* clamp decisions -1/0/+1, cap entries */
    size_t cap;
    size_t cursor;    /* next free position (reset to 0 at the start of each forward) */
} qd_rctx;

/* Reserves n residual slots and returns their first position (0 when rc is NULL or OFF).
 * Asserts when RECORD/REPLAY would overflow the buffer. */
QD_API size_t qd_rctx_take(qd_rctx *rc, size_t n);

/* ---- RMSNorm: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) ---- */
/* out (N,C), rstd (N) saved for backward, x (N,C), w (C) */
QD_API void qd_rmsnorm_forward(qd_real *out, qd_real *rstd, const qd_real *x, const qd_real *w,
                               int N, int C, float eps);
/* dx (N,C) +=, dw (C) += ; dx or dw may be NULL */
QD_API void qd_rmsnorm_backward(qd_real *dx, qd_real *dw, const qd_real *dout, const qd_real *x,
                                const qd_real *w, const qd_real *rstd, int N, int C);

/* ---- LayerNorm with bias: out = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps) ---- */
/* out (N,C), mean and rstd (N) saved for backward, x (N,C), w and b (C) */
QD_API void qd_layernorm_forward(qd_real *out, qd_real *mean, qd_real *rstd, const qd_real *x,
                                 const qd_real *w, const qd_real *b, int N, int C, float eps);
/* dx (N,C) +=, dw (C) +=, db (C) += ; each may be NULL */
QD_API void qd_layernorm_backward(qd_real *dx, qd_real *dw, qd_real *db, const qd_real *dout,
                                  const qd_real *x, const qd_real *w, const qd_real *mean,
                                  const qd_real *rstd, int N, int C);

/* ---- linear: out (N,OC) = x (N,C) · W^T (W is (OC,C) row-major) + b (OC, may be NULL) ---- */
QD_API void qd_linear_forward(qd_real *out, const qd_real *x, const qd_real *W, const qd_real *b,
                              int N, int C, int OC);
/* dx (N,C) +=, dW (OC,C) +=, db (OC) += ; each may be NULL */
QD_API void qd_linear_backward(qd_real *dx, qd_real *dW, qd_real *db, const qd_real *dout,
                               const qd_real *x, const qd_real *W, int N, int C, int OC);

/* ---- RoPE, rotate-half layout over the first rot dims of each head: element i pairs with
 * i + rot/2, dims rot..hd-1 pass (partial rotary; rot = hd for full) ---- */
/* The cos/sin tables (T, rot/2) come from qd_rope_table / qd_rope_table_freq (quant/fp/layers.h)
 * built for width rot. */
/* out (B*T, nh*hd) = rotate(x); positions are t = row % T. out may equal x. */
QD_API void qd_rope_forward(qd_real *out, const qd_real *x, const qd_real *cos_t,
                            const qd_real *sin_t, int B, int T, int nh, int hd, int rot);
/* dx += rotate^-1(dout) (the rotation is orthogonal: its transpose; identity on the rest). */
QD_API void qd_rope_backward(qd_real *dx, const qd_real *dout, const qd_real *cos_t,
                             const qd_real *sin_t, int B, int T, int nh, int hd, int rot);

/* ---- gated MLP: out = act(g) * u (SwiGLU, GeGLU), split in two ops so a quantizer can sit
 * between ---- */
/* out (n) = g * sigmoid(g) */
QD_API void qd_silu_forward(qd_real *out, const qd_real *g, size_t n);
/* dg += dout * silu'(g) */
QD_API void qd_silu_backward(qd_real *dg, const qd_real *dout, const qd_real *g, size_t n);
/* GeGLU's activation: out (n) = the tanh GELU of g (quant/fp/layers.h) */
QD_API void qd_gelu_forward(qd_real *out, const qd_real *g, size_t n);
/* dg += dout * gelu'(g) */
QD_API void qd_gelu_backward(qd_real *dg, const qd_real *dout, const qd_real *g, size_t n);
/* The gated MLP's activation by cfg.act (QD_ACT_SILU, QD_ACT_GELU_TANH): silu or gelu above. */
QD_API void qd_act_forward(int act, qd_real *out, const qd_real *g, size_t n);
QD_API void qd_act_backward(int act, qd_real *dg, const qd_real *dout, const qd_real *g,
                            size_t n);
/* Gemma's embedding scale: out = x * s (out may equal x); dx += dout * s */
QD_API void qd_scale_forward(qd_real *out, const qd_real *x, qd_real s, size_t n);
QD_API void qd_scale_backward(qd_real *dx, const qd_real *dout, qd_real s, size_t n);
/* out = a * b elementwise */
QD_API void qd_mul_forward(qd_real *out, const qd_real *a, const qd_real *b, size_t n);
/* da += dout * b, db += dout * a (either may be NULL) */
QD_API void qd_mul_backward(qd_real *da, qd_real *db, const qd_real *dout, const qd_real *a,
                            const qd_real *b, size_t n);
/* residual: out = a + b */
QD_API void qd_add_forward(qd_real *out, const qd_real *a, const qd_real *b, size_t n);
/* da += dout, db += dout */
QD_API void qd_add_backward(qd_real *da, qd_real *db, const qd_real *dout, size_t n);

/* ---- activation fake quantizer (static, per tensor, asymmetric) ----
 * q = clamp(round(x/s) + round(z), 0, 2^bits - 1), x̂ = (q - round(z)) * s.
 * The scale s and the offset z are trained (LRL); z is the zero point before rounding. Both
 * enter through their parametrisation: s through qd_aq_scale (s >= 1e-8), z through qd_aq_zero
 * (z clamped to [0, 2^bits - 1]), so that 0 = (round(z) - round(z)) * s is always on the grid —
 * what AIMET and QNN require of every activation encoding (offset in [-(2^bw - 1), 0]).
 * STE: dx̂/dx = 1 inside the range, 0 outside. dx̂/ds = round(x/s) - x/s inside,
 * -round(z) below, (2^b-1) - round(z) above; dx̂/dz = 0 inside, -s outside, and 0 for every
 * element while z lies outside [0, 2^b - 1] (the clamp's derivative). */
typedef struct qd_aq {
    qd_real *s, *z;    /* the parameters (in the trained parameter buffer) */
    qd_real *ds, *dz;  /* their gradients (NULL: not accumulated) */
    int bits;
} qd_aq;
/* Effective scale: s clamped to >= 1e-8 so a trained scale can never divide by zero. */
QD_API qd_real qd_aq_scale(const qd_aq *q);
/* Effective offset: z clamped to [0, 2^bits - 1] (zero exactly representable). */
QD_API qd_real qd_aq_zero(const qd_aq *q);
/* out (n) = x̂ (out may equal x). pos: rounding slots (qd_rctx_take(rc, n + 1)). */
QD_API void qd_aq_forward(qd_real *out, const qd_real *x, size_t n, const qd_aq *q,
                          qd_rctx *rc, size_t pos);
/* dx = dout * dx̂/dx (written, not added; dx may be NULL); *q->ds, *q->dz += their sums. x is
 * the pre-quant input. */
QD_API void qd_aq_backward(qd_real *dx, const qd_real *dout, const qd_real *x, size_t n,
                           const qd_aq *q, const qd_rctx *rc, size_t pos, int fault);

/* ---- weight fake quantizer with learnable weight clipping (LWC) ----
 * Asymmetric (per tensor or per output row): hi = sigmoid(γ)·max(W), lo = sigmoid(β)·min(W),
 *   s = (hi - lo)/(2^b - 1), z = round(-lo/s), q = clamp(round(W/s) + z, 0, 2^b-1), Ŵ = (q-z)s.
 * Symmetric (per tensor or per row): hi = sigmoid(γ)·max|W|, s = hi/(2^(b-1)-1),
 *   q = clamp(round(W/s), -2^(b-1), 2^(b-1)-1), Ŵ = q·s.
 * γ/β NULL means no clipping (factor 1): plain min/max round-to-nearest. Gradients flow to W
 * through the STE and through max/min (to the arg-max/arg-min element), and to γ, β. */
typedef struct qd_wq_spec {
    int bits;          /* 2..16 */
    int sym;           /* symmetric (z = 0) */
    int per_channel;   /* one range per output row */
} qd_wq_spec;
/* out (rows, cols) = Ŵ. gam/bet: (per_channel ? rows : 1) logits, or NULL. scale/zero
 * (per_channel ? rows : 1) receive the encodings (may be NULL). pos: qd_rctx_take(rc,
 * rows*cols + rows). out may equal w. */
QD_API void qd_wq_forward(qd_real *out, const qd_real *w, int rows, int cols, qd_wq_spec sp,
                          const qd_real *gam, const qd_real *bet, qd_real *scale, qd_real *zero,
                          qd_rctx *rc, size_t pos);
/* dw (rows, cols) = dL/dW (written, not added) given dout = dL/dŴ; dgam/dbet += (NULL to skip). fault 1 (test hook)
 * drops the gradient through the range. */
QD_API void qd_wq_backward(qd_real *dw, qd_real *dgam, qd_real *dbet, const qd_real *dout,
                           const qd_real *w, int rows, int cols, qd_wq_spec sp,
                           const qd_real *gam, const qd_real *bet, const qd_rctx *rc, size_t pos,
                           int fault);

/* A per-tensor weight range: the bounds of t (max|t| when symmetric; mn 0 then), the flat
 * indices of their first occurrences (-1: the included 0) and t at the max's. known: filled. */
typedef struct qd_wrange {
    int known;
    qd_real mx, mn, tmx;
    long amx, amn;
} qd_wrange;

/* qd_wq_forward of t = LET(W) (qd_let_weight_forward's values: c, r as there, both NULL: t = W)
 * without writing t: it is made row by row or chunk by chunk where it is read. rg (per tensor;
 * NULL: none): when rg->known, t's range is taken from there (a backward's recomputation of Ŵ,
 * given its forward's range), else computed and stored there with known set. */
QD_API void qd_wq_let_forward(qd_real *out, const qd_real *w, int rows, int cols,
                              const qd_real *c, const qd_real *r, qd_wq_spec sp,
                              const qd_real *gam, const qd_real *bet, qd_real *scale,
                              qd_real *zero, qd_rctx *rc, size_t pos, qd_wrange *rg);
/* qd_wq_backward with respect to t = LET(W) (dw = dL/dt), t made as in qd_wq_let_forward; rg:
 * the forward's range of t when known (per tensor), else it is computed. */
QD_API void qd_wq_let_backward(qd_real *dw, qd_real *dgam, qd_real *dbet, const qd_real *dout,
                               const qd_real *w, int rows, int cols, const qd_real *c,
                               const qd_real *r, qd_wq_spec sp, const qd_real *gam,
                               const qd_real *bet, const qd_rctx *rc, size_t pos,
                               const qd_wrange *rg, int fault);

/* ---- causal self-attention with GQA and quantizers inside ----
 * Per window b and head h (kv head h / (nh/nkv)):
 *   S = q_h k_kv^T / sqrt(hd) (causal: j <= i),  Ŝ = fq(S; sq),  P = softmax(Ŝ),
 *   P̂ = fq(P; pq),  out_h = P̂ v_kv.
 * sq/pq may be NULL (no quantizer). q (B*T, nh*hd), k/v (B*T, nkv*hd), out (B*T, nh*hd) is the
 * pre-quant PV output. S and P (B, nh, T, T) are saved for backward (entries j > i are 0).
 * pos_s/pos_p: rounding slots, qd_rctx_take(rc, B*nh*T*T + 1) each. scratch: T*T reals. */
QD_API void qd_attn_forward(qd_real *out, qd_real *S, qd_real *P, const qd_real *q,
                            const qd_real *k, const qd_real *v, int B, int T, int nh, int nkv,
                            int hd, const qd_aq *sq, const qd_aq *pq, qd_rctx *rc, size_t pos_s,
                            size_t pos_p, qd_real *scratch);
/* dq, dk, dv +=; quantizer gradients +=. scratch: 2*T*T reals. fault 3 (test hook) breaks the
 * softmax backward. */
QD_API void qd_attn_backward(qd_real *dq, qd_real *dk, qd_real *dv, const qd_real *dout,
                             const qd_real *S, const qd_real *P, const qd_real *q,
                             const qd_real *k, const qd_real *v, int B, int T, int nh, int nkv,
                             int hd, const qd_aq *sq, const qd_aq *pq, const qd_rctx *rc,
                             size_t pos_s, size_t pos_p, qd_real *scratch, int fault);

/* ---- learned equivalent transform scales (LET) ----
 * The effective scale keeps |s| >= 1e-2: qd_let_eff(s) = s, or ±1e-2 when |s| is smaller (then
 * the gradient to s is 0). */
QD_API qd_real qd_let_eff(qd_real s);
/* W' = diag(1/r) · W · diag(c): out (rows, cols); c (cols) or NULL, r (rows) or NULL.
 * Raw parameters; the effective clamp is applied inside. */
QD_API void qd_let_weight_forward(qd_real *out, const qd_real *w, int rows, int cols,
                                  const qd_real *c, const qd_real *r);
/* dc += Σ_i dW'_ij W'_ij / c_j, dr += -Σ_j dW'_ij W'_ij / r_i (w is the original W). */
QD_API void qd_let_weight_backward(qd_real *dc, qd_real *dr, const qd_real *dout,
                                   const qd_real *w, int rows, int cols, const qd_real *c,
                                   const qd_real *r);
/* out (n) = v / s (norm weights and biases divided by the scale). */
QD_API void qd_let_div_forward(qd_real *out, const qd_real *v, const qd_real *s, size_t n);
/* ds += -dout * v / s^2 */
QD_API void qd_let_div_backward(qd_real *ds, const qd_real *dout, const qd_real *v,
                                const qd_real *s, size_t n);

#endif
