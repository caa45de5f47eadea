/* The per-position work of every evaluation over a vocabulary: log-sum-exp of a row of logits,
 * the sum of exp over the tokens not marked, and the argmax. At a vocabulary of 32000 this was
 * most of an evaluation's time per token once the matmuls are fast (scalar double exp: about
 * 0.2 ms per position, against 0.3 ms for the integer model's whole forward per token).
 *
 * The fast paths take exp in float from glibc's vector math library (libmvec, part of libc6:
 * _ZGVeN16v_expf on AVX-512, _ZGVdN8v_expf on AVX2) and add the terms in double, 8 or 16
 * partial sums; the row's maximum is subtracted first, so every term is in [0, 1]. They differ
 * from the scalar references (exp in double, one running sum) by about 1e-7 relative in the sum
 * (tests/test_lse checks 2e-6 on rows of up to 151936 logits; it measured 1e-7 on both paths). The result
 * is the same for any thread count (one row is one call) but may differ between ISAs in the
 * last bits, as a BLAS kernel's sums do. qd_lse_set_simd(0) takes the references everywhere. */
#ifndef QD_FP_LSE_H
#define QD_FP_LSE_H

/* max over x[0..n) (n >= 1); NaN elements are skipped unless x[0] is one */
float qd_row_max(const float *x, int n);

/* log sum_i exp(x[i]), as max + log(qd_sumexp_unmarked(x, n, max, NULL)); *mx (when not NULL)
 * gets the max. Every evaluation path computes a row's log-normaliser with this one function,
 * so their NLLs agree to the bit. */
double qd_lse(const float *x, int n, float *mx);
double qd_lse_ref(const float *x, int n);

/* sum over i with !mark[i] (every i when mark is NULL) of exp(x[i] - shift) (mark: n bytes) */
double qd_sumexp_unmarked(const float *x, int n, float shift, const unsigned char *mark);
double qd_sumexp_unmarked_ref(const float *x, int n, float shift, const unsigned char *mark);

/* the first index of the maximum of x[0..n) (n >= 1; NaN never wins unless it is x[0]) */
int qd_argmax(const float *x, int n);
int qd_argmax_ref(const float *x, int n);

/* The widest path allowed: 2 (the default) AVX-512 where the CPU has it, 1 at most AVX2, 0 the
 * scalar references everywhere (tests, benchmarks). */
void qd_lse_set_simd(int level);

/* The path taken now: "avx512", "avx2" or "scalar". */
const char *qd_lse_path(void);

#endif
