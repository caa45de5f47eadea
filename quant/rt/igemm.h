/* Integer matrix products for the integer-only runtime: int8 x int8 -> int32 and
 * int8 x int4 -> int32, with a plain scalar reference beside SIMD kernels (AMX-INT8, AVX-512
 * VNNI, AVX-VNNI, AVX2) chosen at run time. No global -m flags: each kernel carries its own
 * __attribute__((target)), and dispatch asks the CPU (cpuid) what it may run.
 *
 * Shapes follow the model's linear layers (y = W x, W row-major [out][in]):
 *     C[m][n] = sum_k A[m][k] * W[n][k]        A: (M, K) int8, W: (N, K), C: (M, N) int32
 * A's rows are activations (one token each), W's rows are output channels.
 *
 * int4 weights, "packed two per byte" (the artifact layout, qd_igemm_*_s4 inputs): each row of W
 * takes ceil(K/2) bytes; the element at EVEN column k sits in the LOW nibble of byte k/2 and the
 * element at odd column k+1 in the HIGH nibble; nibbles are two's complement (-8..7). An odd K
 * leaves the last high nibble zero.
 *
 * Arithmetic is exact: every path returns the same int32 as the reference (wrap-around
 * arithmetic modulo 2^32 like the reference when a dot product would not fit, which the
 * runtime's bounds exclude: |A|,|W| <= 128 and K <= 65536 keep |C| < 2^31). */
#ifndef QD_IGEMM_H
#define QD_IGEMM_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef enum qd_isa {
    QD_ISA_AUTO = -1,      /* the best path this CPU supports */
    QD_ISA_SCALAR = 0,     /* plain C reference */
    QD_ISA_AVX2,           /* vpmaddwd on sign-extended int16 */
    QD_ISA_AVX_VNNI,       /* vpdpbusd, VEX-encoded, 256-bit */
    QD_ISA_AVX512_VNNI,    /* vpdpbusd, 512-bit */
    QD_ISA_AMX_INT8,       /* tdpbssd on 16x64 tiles (products of fewer than 4 rows: AVX-512 VNNI) */
    QD_ISA_COUNT
} qd_isa;

/* Short name ("scalar", "avx2", "avx-vnni", "avx512-vnni", "amx-int8"); "auto" for QD_ISA_AUTO. */
const char *qd_isa_name(qd_isa isa);

/* 1 when this CPU (and OS: saved vector state) can run isa; scalar is always 1. AMX-INT8 also
 * needs the kernel's permission for tile data (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once per
 * process by the first call) and AVX-512 VNNI beside it. */
int qd_isa_supported(qd_isa isa);

/* The fastest supported path. */
qd_isa qd_isa_best(void);

/* The ISA for everything but the matrix products: AMX has tiles for products only, so with
 * AMX-INT8 the requantization, norms, softmax and RoPE take the AVX-512 paths. */
static inline qd_isa qd_isa_vector(qd_isa isa) {
    return isa == QD_ISA_AMX_INT8 ? QD_ISA_AVX512_VNNI : isa;
}

/* Parses a name as printed by qd_isa_name; QD_ERR on unknown names. */
int qd_isa_parse(const char *name, qd_isa *out, qd_err *err);

/* Reference kernels over plain row-major buffers (leading dimensions in elements; for W4 in
 * bytes per row). */
void qd_igemm_s8_ref(int M, int N, int K, const int8_t *A, size_t lda, const int8_t *W,
                     size_t ldw, int32_t *C, size_t ldc);
void qd_igemm_s4_ref(int M, int N, int K, const int8_t *A, size_t lda, const uint8_t *W4,
                     size_t ldw4, int32_t *C, size_t ldc);

/* Nibble helpers for the documented int4 layout. */
static inline int qd_s4_get(const uint8_t *row, int k) {
    int b = row[k >> 1];
    int v = (k & 1) ? (b >> 4) : (b & 15);
    return (v ^ 8) - 8;
}
static inline void qd_s4_set(uint8_t *row, int k, int v) {
    uint8_t *b = &row[k >> 1];
    if (k & 1) *b = (uint8_t)((*b & 0x0f) | ((v & 15) << 4));
    else       *b = (uint8_t)((*b & 0xf0) | (v & 15));
}

/* Weights repacked once for the SIMD kernels (panels of 16 output channels, K interleaved in
 * groups of 4 for int8 / 8 for int4), plus the per-channel sums the kernels need. Opaque. */
typedef struct qd_igemm_w qd_igemm_w;

/* Packs W (N, K) int8 row-major with leading dimension ldw. NULL on bad shape / no memory. */
qd_igemm_w *qd_igemm_pack_s8(const int8_t *W, int N, int K, size_t ldw, qd_err *err);

/* Packs int4 W in the documented two-per-byte layout, ldw4 bytes per row (>= ceil(K/2)). */
qd_igemm_w *qd_igemm_pack_s4(const uint8_t *W4, int N, int K, size_t ldw4, qd_err *err);

void qd_igemm_w_free(qd_igemm_w *w);

int qd_igemm_w_rows(const qd_igemm_w *w);     /* N */
int qd_igemm_w_cols(const qd_igemm_w *w);     /* K */
int qd_igemm_w_bits(const qd_igemm_w *w);     /* 8 or 4 */
/* sum_k W[n][k] per output channel (N entries), owned by w: used for zero-point terms. */
const int32_t *qd_igemm_w_rowsum(const qd_igemm_w *w);
/* Bytes held by the packed weights (for reports). */
size_t qd_igemm_w_bytes(const qd_igemm_w *w);

/* An all-zero packed int8 matrix of N rows and K columns, to be filled row by row with
 * qd_igemm_w_set_rows (the integer runtime keeps its K cache this way). NULL on bad shape. */
qd_igemm_w *qd_igemm_w_new_s8(int N, int K, qd_err *err);

/* Writes rows n0..n0+nrows-1 of an int8 w from rows (K values each, ld elements apart) and
 * updates their row sums. */
void qd_igemm_w_set_rows(qd_igemm_w *w, int n0, int nrows, const int8_t *rows, size_t ld);

/* qd_igemm restricted to output channels 0..n_end-1 (1 <= n_end <= N): columns from n_end on
 * are neither computed nor written. */
void qd_igemm_n(const qd_igemm_w *w, int n_end, int M, const int8_t *A, size_t lda, int32_t *C,
                size_t ldc, qd_isa isa);

/* qd_igemm restricted to output channels n0..n1-1, n0 a multiple of 16 (one packed panel),
 * 0 <= n0 < n1 <= N: C points at column 0 and only columns n0..n1-1 are written. The integer
 * runtime splits a product over threads this way; every column gets the same int32 as in the
 * whole product. */
void qd_igemm_cols(const qd_igemm_w *w, int n0, int n1, int M, const int8_t *A, size_t lda,
                   int32_t *C, size_t ldc, qd_isa isa);

/* C (M, N) = A (M, K) x W^T with the chosen path (QD_ISA_AUTO: the best; an unsupported path
 * falls back to the best supported one). */
void qd_igemm(const qd_igemm_w *w, int M, const int8_t *A, size_t lda, int32_t *C, size_t ldc,
              qd_isa isa);

/* For tests: the AMX-INT8 path (padding, tiling, tails, int4 unpacking) over a C model of the
 * tile instructions (ldtilecfg, tileloadd, tdpbssd, tilestored), for every M, so that CPUs
 * without AMX check all of it but the instructions themselves. Same C as qd_igemm; QD_ERR (C
 * untouched) when out of memory. */
int qd_igemm_amx_model(const qd_igemm_w *w, int M, const int8_t *A, size_t lda, int32_t *C,
                       size_t ldc);

#endif
