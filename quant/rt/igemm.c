/* Integer GEMM kernels and their run-time dispatch (see igemm.h for shapes and the int4 layout).
 *
 * Packed weight layout shared by every path: output channels in panels of 16 (zero padded);
 * within a panel, K in groups of 4 for int8 (64 bytes per group: channel c's 4 consecutive k
 * at bytes 4c..4c+3), the natural operand of vpdpbusd, which multiplies 4 byte pairs per 32-bit
 * lane. int4 groups cover 8 k in the same 64 bytes: byte 4c+j holds k = 8g+j in its low nibble
 * and k = 8g+4+j in its high nibble, so one load feeds two vpdpbusd after unpacking.
 *
 * vpdpbusd multiplies UNSIGNED bytes by SIGNED bytes. Activations are signed, so the VNNI paths
 * flip their sign bit (a ^ 0x80 == a + 128 as an unsigned byte) and subtract 128 * rowsum(W)
 * per output channel at the end. The AVX2 path has no such instruction without saturation
 * (vpmaddubsw saturates at 16 bits), so it sign-extends both operands to int16 and uses
 * vpmaddwd, which is exact.
 *
 * AMX-INT8 (tdpbssd) multiplies signed by signed bytes, so it needs no bias: a B tile is 16
 * groups of the packed layout as they lie (1 KiB), an A tile 16 rows of a zero-padded copy of A
 * (see igemm_amx.inc). */
#include "quant/rt/igemm.h"

#include <assert.h>
#include <cpuid.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PANEL 16

struct qd_igemm_w {
    int N, K, bits;
    int n_panels;          /* ceil(N / 16) */
    int n_groups;          /* k groups: ceil(K/4) for int8, ceil(K/8) for int4 */
    size_t panel_stride;   /* bytes per panel = n_groups * 64 */
    uint8_t *data;         /* n_panels * panel_stride bytes, 64-byte aligned */
    int32_t *rowsum;       /* N */
    int32_t *corr;         /* n_panels*16: 128*rowsum, padded with 0 (VNNI paths) */
};

/* Zero bytes after the last panel: an AMX B tile covers 16 groups and may read up to 15 groups
 * past a panel's end (against zero-padded A, so they add nothing). */
#define W_SLACK 1024

/* ---------------------------------------------------------------- CPU features */

static int xcr0_has(uint64_t mask) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & (1u << 27))) return 0; /* OSXSAVE: xgetbv usable */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
    return (xcr0 & mask) == mask;
}

static int cpu_avx_vnni(void) {
    /* AVX-VNNI is CPUID.(EAX=7,ECX=1):EAX bit 4; gcc 12's __builtin_cpu_supports has no name
     * for it. The OS must save ymm state (XCR0 bits 1,2). */
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 1, a, b, c, d);
    return (a & (1u << 4)) && xcr0_has(0x6) && __builtin_cpu_supports("avx2");
}

/* AMX-TILE and AMX-INT8 (CPUID.(EAX=7,ECX=0):EDX bits 24, 25), tile state enabled by the OS
 * (XCR0 bits 17, 18), and Linux's permission to use tile data: the kernel only allocates the
 * 8 KiB of tile state for processes that ask (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the
 * grant covers every thread of the process. */
static int cpu_amx_int8(void) {
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!(d & (1u << 24)) || !(d & (1u << 25))) return 0;
    if (!xcr0_has(0x60000)) return 0;
#ifdef __linux__
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 0;
    return 1;
#else
    return 0;
#endif
}

int qd_isa_supported(qd_isa isa) {
    static int cache[QD_ISA_COUNT] = {0};
    static int done;
    if (!done) {
        __builtin_cpu_init();
        cache[QD_ISA_SCALAR] = 1;
        cache[QD_ISA_AVX2] = __builtin_cpu_supports("avx2") && xcr0_has(0x6);
        cache[QD_ISA_AVX_VNNI] = cpu_avx_vnni();
        /* zmm state needs XCR0 bits 5..7 too */
        cache[QD_ISA_AVX512_VNNI] = __builtin_cpu_supports("avx512f") &&
                                    __builtin_cpu_supports("avx512bw") &&
                                    __builtin_cpu_supports("avx512vl") &&
                                    __builtin_cpu_supports("avx512vnni") && xcr0_has(0xe6);
        /* the AMX path unpacks int4 and takes short products with AVX-512 VNNI */
        cache[QD_ISA_AMX_INT8] = cache[QD_ISA_AVX512_VNNI] && cpu_amx_int8();
        __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
    }
    if (isa < 0 || isa >= QD_ISA_COUNT) return 0;
    return cache[isa];
}

qd_isa qd_isa_best(void) {
    for (int i = QD_ISA_COUNT - 1; i > 0; i--)
        if (qd_isa_supported((qd_isa)i)) return (qd_isa)i;
    return QD_ISA_SCALAR;
}

static const char *isa_names[QD_ISA_COUNT] = {"scalar", "avx2", "avx-vnni", "avx512-vnni",
                                               "amx-int8"};

const char *qd_isa_name(qd_isa isa) {
    if (isa == QD_ISA_AUTO) return "auto";
    if (isa < 0 || isa >= QD_ISA_COUNT) return "?";
    return isa_names[isa];
}

int qd_isa_parse(const char *name, qd_isa *out, qd_err *err) {
    if (!strcmp(name, "auto")) { *out = QD_ISA_AUTO; return QD_OK; }
    for (int i = 0; i < QD_ISA_COUNT; i++)
        if (!strcmp(name, isa_names[i])) { *out = (qd_isa)i; return QD_OK; }
    return qd_errf(err, "%s: unknown ISA \"%s\" (auto, scalar, avx2, avx-vnni, avx512-vnni, amx-int8)",
                   __func__, name);
}

/* ---------------------------------------------------------------- reference */

void qd_igemm_s8_ref(int M, int N, int K, const int8_t *A, size_t lda, const int8_t *W,
                     size_t ldw, int32_t *C, size_t ldc) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            /* unsigned accumulation: wraps modulo 2^32 like the SIMD paths, never UB */
            uint32_t acc = 0;
            for (int k = 0; k < K; k++)
                acc += (uint32_t)((int32_t)A[(size_t)m * lda + k] * W[(size_t)n * ldw + k]);
            C[(size_t)m * ldc + n] = (int32_t)acc;
        }
}

void qd_igemm_s4_ref(int M, int N, int K, const int8_t *A, size_t lda, const uint8_t *W4,
                     size_t ldw4, int32_t *C, size_t ldc) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            uint32_t acc = 0;
            const uint8_t *row = W4 + (size_t)n * ldw4;
            for (int k = 0; k < K; k++)
                acc += (uint32_t)((int32_t)A[(size_t)m * lda + k] * qd_s4_get(row, k));
            C[(size_t)m * ldc + n] = (int32_t)acc;
        }
}

/* ---------------------------------------------------------------- packing */

static qd_igemm_w *w_alloc(int N, int K, int bits, qd_err *err) {
    if (N <= 0 || K <= 0 || N > (1 << 24) || K > (1 << 20))
        return qd_errf(err, "%s: bad shape N=%d K=%d", __func__, N, K), NULL;
    qd_igemm_w *w = calloc(1, sizeof *w);
    if (!w) return qd_errf(err, "%s: out of memory", __func__), NULL;
    w->N = N;
    w->K = K;
    w->bits = bits;
    w->n_panels = (N + PANEL - 1) / PANEL;
    w->n_groups = bits == 8 ? (K + 3) / 4 : (K + 7) / 8;
    w->panel_stride = (size_t)w->n_groups * 64;
    size_t bytes = (size_t)w->n_panels * w->panel_stride + W_SLACK;
    w->data = aligned_alloc(64, bytes);
    w->rowsum = calloc((size_t)N, sizeof *w->rowsum);
    w->corr = calloc((size_t)w->n_panels * PANEL, sizeof *w->corr);
    if (!w->data || !w->rowsum || !w->corr) {
        qd_igemm_w_free(w);
        return qd_errf(err, "%s: out of memory for %zu bytes", __func__, bytes), NULL;
    }
    memset(w->data, 0, bytes);
    return w;
}

static void w_finish(qd_igemm_w *w) {
    for (int n = 0; n < w->N; n++) w->corr[n] = (int32_t)((uint32_t)w->rowsum[n] * 128u);
}

qd_igemm_w *qd_igemm_pack_s8(const int8_t *W, int N, int K, size_t ldw, qd_err *err) {
    qd_igemm_w *w = w_alloc(N, K, 8, err);
    if (!w) return NULL;
    for (int n = 0; n < N; n++) {
        uint8_t *panel = w->data + (size_t)(n / PANEL) * w->panel_stride;
        int c = n % PANEL;
        int32_t s = 0;
        for (int k = 0; k < K; k++) {
            int8_t v = W[(size_t)n * ldw + k];
            panel[(size_t)(k / 4) * 64 + c * 4 + k % 4] = (uint8_t)v;
            s += v;
        }
        w->rowsum[n] = s;
    }
    w_finish(w);
    return w;
}

qd_igemm_w *qd_igemm_pack_s4(const uint8_t *W4, int N, int K, size_t ldw4, qd_err *err) {
    qd_igemm_w *w = w_alloc(N, K, 4, err);
    if (!w) return NULL;
    for (int n = 0; n < N; n++) {
        const uint8_t *row = W4 + (size_t)n * ldw4;
        uint8_t *panel = w->data + (size_t)(n / PANEL) * w->panel_stride;
        int c = n % PANEL;
        int32_t s = 0;
        for (int k = 0; k < K; k++) {
            int v = qd_s4_get(row, k);
            int g = k / 8, j = k % 8;
            uint8_t *b = &panel[(size_t)g * 64 + c * 4 + (j & 3)];
            if (j < 4) *b = (uint8_t)((*b & 0xf0) | (v & 15));
            else       *b = (uint8_t)((*b & 0x0f) | ((v & 15) << 4));
            s += v;
        }
        w->rowsum[n] = s;
    }
    w_finish(w);
    return w;
}

qd_igemm_w *qd_igemm_w_new_s8(int N, int K, qd_err *err) { return w_alloc(N, K, 8, err); }

void qd_igemm_w_set_rows(qd_igemm_w *w, int n0, int nrows, const int8_t *rows, size_t ld) {
    for (int i = 0; i < nrows; i++) {
        int n = n0 + i;
        uint8_t *panel = w->data + (size_t)(n / PANEL) * w->panel_stride + (n % PANEL) * 4;
        const int8_t *r = rows + (size_t)i * ld;
        int32_t s = 0;
        for (int k = 0; k < w->K; k++) {
            panel[(size_t)(k / 4) * 64 + k % 4] = (uint8_t)r[k];
            s += r[k];
        }
        w->rowsum[n] = s;
        w->corr[n] = (int32_t)((uint32_t)s * 128u);
    }
}

void qd_igemm_w_free(qd_igemm_w *w) {
    if (!w) return;
    free(w->data);
    free(w->rowsum);
    free(w->corr);
    free(w);
}

int qd_igemm_w_rows(const qd_igemm_w *w) { return w->N; }
int qd_igemm_w_cols(const qd_igemm_w *w) { return w->K; }
int qd_igemm_w_bits(const qd_igemm_w *w) { return w->bits; }
const int32_t *qd_igemm_w_rowsum(const qd_igemm_w *w) { return w->rowsum; }
size_t qd_igemm_w_bytes(const qd_igemm_w *w) {
    return (size_t)w->n_panels * w->panel_stride + (size_t)w->N * 4 +
           (size_t)w->n_panels * PANEL * 4;
}

/* ---------------------------------------------------------------- scalar on the packed layout */

/* Reads the packed layout back with plain loops: checks the packing itself in the tests and is
 * the path for CPUs without AVX2. */
static void gemm_scalar(const qd_igemm_w *w, int M, const int8_t *A, size_t lda, int32_t *C,
                        size_t ldc) {
    for (int m = 0; m < M; m++) {
        const int8_t *a = A + (size_t)m * lda;
        for (int n = 0; n < w->N; n++) {
            const uint8_t *p = w->data + (size_t)(n / PANEL) * w->panel_stride + (n % PANEL) * 4;
            uint32_t acc = 0;
            if (w->bits == 8) {
                for (int k = 0; k < w->K; k++)
                    acc += (uint32_t)(a[k] * (int8_t)p[(size_t)(k / 4) * 64 + k % 4]);
            } else {
                for (int k = 0; k < w->K; k++) {
                    int b = p[(size_t)(k / 8) * 64 + (k % 4)];
                    int v = (k % 8) < 4 ? (b & 15) : (b >> 4);
                    acc += (uint32_t)(a[k] * ((v ^ 8) - 8));
                }
            }
            C[(size_t)m * ldc + n] = (int32_t)acc;
        }
    }
}

/* 4 activation bytes starting at k, zero beyond K (the padded weights there are zero, so the
 * value only has to be readable, not meaningful). */
static inline uint32_t load_a4(const int8_t *a, int k, int K) {
    uint32_t v = 0;
    if (k + 4 <= K) {
        memcpy(&v, a + k, 4);
    } else {
        for (int i = 0; k + i < K && i < 4; i++) v |= (uint32_t)(uint8_t)a[k + i] << (8 * i);
    }
    return v;
}

#define AINL __attribute__((always_inline)) inline
/* the row/panel loops have constant trip counts per call site; unrolled, the accumulators
 * stay in registers */
#define UNROLL _Pragma("GCC unroll 16")

static inline int ld4(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Copy of A for the VNNI paths: sign bit flipped (a + 128 as unsigned) and rows padded to the
 * packed K so the kernels read whole groups without tail cases. Padding holds 0x80 (a = 0);
 * the padded weights are zero anyway. Small copies use the caller's stack buffer. */
static uint8_t *bias_a(const qd_igemm_w *w, int M, const int8_t *A, size_t lda, size_t *ldu,
                       uint8_t *stackbuf, size_t stackbytes) {
    size_t kp = (size_t)w->n_groups * (w->bits == 8 ? 4 : 8);
    size_t bytes = (size_t)M * kp;
    uint8_t *u = bytes <= stackbytes ? stackbuf : malloc(bytes);
    if (!u) return NULL;
    for (int m = 0; m < M; m++) {
        const int8_t *a = A + (size_t)m * lda;
        uint8_t *d = u + (size_t)m * kp;
        for (int k = 0; k < w->K; k++) d[k] = (uint8_t)a[k] ^ 0x80u;
        for (size_t k = (size_t)w->K; k < kp; k++) d[k] = 0x80;
    }
    *ldu = kp;
    return u;
}

/* ---------------------------------------------------------------- AVX-512 VNNI */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define MR512 6
#define NP512 4

/* One block: rows m0..m0+MR-1 x panels p0..p0+NP-1. MR and NP are constants at each call site,
 * so the accumulator arrays live in registers. */
static AINL T512 void blk512(const qd_igemm_w *w, const uint8_t *A, size_t lda, int32_t *C,
                             size_t ldc, int m0, int p0, const int MR, const int NP) {
    __m512i acc[MR512][NP512];
    UNROLL
    for (int r = 0; r < MR; r++)
        UNROLL
        for (int j = 0; j < NP; j++) acc[r][j] = _mm512_setzero_si512();
    const uint8_t *wp = w->data + (size_t)p0 * w->panel_stride;
    const int G = w->n_groups;
    if (w->bits == 8) {
        for (int g = 0; g < G; g++) {
            __m512i b[NP512];
            UNROLL
            for (int j = 0; j < NP; j++)
                b[j] = _mm512_load_si512((const void *)(wp + j * w->panel_stride + (size_t)g * 64));
            UNROLL
            for (int r = 0; r < MR; r++) {
                __m512i a = _mm512_set1_epi32(ld4(A + (size_t)(m0 + r) * lda + 4 * g));
                UNROLL
                for (int j = 0; j < NP; j++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], a, b[j]);
            }
        }
    } else {
        const __m512i m4 = _mm512_set1_epi8(15), s8 = _mm512_set1_epi8(8);
        for (int g = 0; g < G; g++) {
            __m512i lo[NP512], hi[NP512];
            UNROLL
            for (int j = 0; j < NP; j++) {
                __m512i v = _mm512_load_si512((const void *)(wp + j * w->panel_stride + (size_t)g * 64));
                __m512i l = _mm512_and_si512(v, m4);
                __m512i h = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                /* sign-extend nibbles: (x ^ 8) - 8 */
                lo[j] = _mm512_sub_epi8(_mm512_xor_si512(l, s8), s8);
                hi[j] = _mm512_sub_epi8(_mm512_xor_si512(h, s8), s8);
            }
            UNROLL
            for (int r = 0; r < MR; r++) {
                const uint8_t *a = A + (size_t)(m0 + r) * lda + 8 * g;
                __m512i al = _mm512_set1_epi32(ld4(a));
                __m512i ah = _mm512_set1_epi32(ld4(a + 4));
                UNROLL
                for (int j = 0; j < NP; j++) {
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], al, lo[j]);
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], ah, hi[j]);
                }
            }
        }
    }
    UNROLL
    for (int j = 0; j < NP; j++) {
        int n0 = (p0 + j) * PANEL;
        int nv = w->N - n0 < PANEL ? w->N - n0 : PANEL;
        __mmask16 mask = (__mmask16)((1u << nv) - 1);
        __m512i corr = _mm512_loadu_si512((const void *)(w->corr + n0));
        UNROLL
        for (int r = 0; r < MR; r++)
            _mm512_mask_storeu_epi32(C + (size_t)(m0 + r) * ldc + n0, mask,
                                     _mm512_sub_epi32(acc[r][j], corr));
    }
}

static T512 void gemm_avx512(const qd_igemm_w *w, int M, const uint8_t *A, size_t lda,
                             int32_t *C, size_t ldc) {
    /* panel blocks outside, rows inside: a block of 4 panels (64 channels x K bytes) stays in
     * cache while every row of A streams past it */
    for (int p0 = 0; p0 < w->n_panels; p0 += NP512) {
        int np = w->n_panels - p0 < NP512 ? w->n_panels - p0 : NP512;
        for (int m0 = 0; m0 < M; m0 += MR512) {
            int mr = M - m0 < MR512 ? M - m0 : MR512;
#define B512(mr_, np_) case (mr_) * 8 + (np_): blk512(w, A, lda, C, ldc, m0, p0, mr_, np_); break
#define B512R(mr_) B512(mr_, 1); B512(mr_, 2); B512(mr_, 3); B512(mr_, 4)
            switch (mr * 8 + np) {
                B512R(1); B512R(2); B512R(3); B512R(4); B512R(5); B512R(6);
            default: abort();
            }
#undef B512R
#undef B512
        }
    }
}

/* ---------------------------------------------------------------- AVX-VNNI (256-bit) */

#define TVNNI __attribute__((target("avx2,avxvnni")))
#define MRV 4
#define NPV 2 /* 16-channel panels; each is two ymm halves */

static AINL TVNNI void blkvnni(const qd_igemm_w *w, const uint8_t *A, size_t lda, int32_t *C,
                               size_t ldc, int m0, int p0, const int MR, const int NP) {
    __m256i acc[MRV][NPV * 2];
    UNROLL
    for (int r = 0; r < MR; r++)
        UNROLL
        for (int j = 0; j < 2 * NP; j++) acc[r][j] = _mm256_setzero_si256();
    const uint8_t *wp = w->data + (size_t)p0 * w->panel_stride;
    const int G = w->n_groups;
    if (w->bits == 8) {
        for (int g = 0; g < G; g++) {
            __m256i b[NPV * 2];
            UNROLL
            for (int j = 0; j < 2 * NP; j++)
                b[j] = _mm256_load_si256(
                    (const __m256i *)(wp + (j / 2) * w->panel_stride + (size_t)g * 64 + (j & 1) * 32));
            UNROLL
            for (int r = 0; r < MR; r++) {
                __m256i a = _mm256_set1_epi32(ld4(A + (size_t)(m0 + r) * lda + 4 * g));
                UNROLL
                for (int j = 0; j < 2 * NP; j++)
                    acc[r][j] = _mm256_dpbusd_avx_epi32(acc[r][j], a, b[j]);
            }
        }
    } else {
        const __m256i m4 = _mm256_set1_epi8(15), s8 = _mm256_set1_epi8(8);
        for (int g = 0; g < G; g++) {
            __m256i lo[NPV * 2], hi[NPV * 2];
            UNROLL
            for (int j = 0; j < 2 * NP; j++) {
                __m256i v = _mm256_load_si256(
                    (const __m256i *)(wp + (j / 2) * w->panel_stride + (size_t)g * 64 + (j & 1) * 32));
                __m256i l = _mm256_and_si256(v, m4);
                __m256i h = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                lo[j] = _mm256_sub_epi8(_mm256_xor_si256(l, s8), s8);
                hi[j] = _mm256_sub_epi8(_mm256_xor_si256(h, s8), s8);
            }
            UNROLL
            for (int r = 0; r < MR; r++) {
                const uint8_t *a = A + (size_t)(m0 + r) * lda + 8 * g;
                __m256i al = _mm256_set1_epi32(ld4(a));
                __m256i ah = _mm256_set1_epi32(ld4(a + 4));
                UNROLL
                for (int j = 0; j < 2 * NP; j++) {
                    acc[r][j] = _mm256_dpbusd_avx_epi32(acc[r][j], al, lo[j]);
                    acc[r][j] = _mm256_dpbusd_avx_epi32(acc[r][j], ah, hi[j]);
                }
            }
        }
    }
    UNROLL
    for (int j = 0; j < 2 * NP; j++) {
        int n0 = p0 * PANEL + j * 8;
        if (n0 >= w->N) break;
        int nv = w->N - n0 < 8 ? w->N - n0 : 8;
        __m256i corr = _mm256_loadu_si256((const __m256i *)(w->corr + n0));
        UNROLL
        for (int r = 0; r < MR; r++) {
            __m256i v = _mm256_sub_epi32(acc[r][j], corr);
            int32_t *dst = C + (size_t)(m0 + r) * ldc + n0;
            if (nv == 8) {
                _mm256_storeu_si256((__m256i *)dst, v);
            } else {
                int32_t tmp[8];
                _mm256_storeu_si256((__m256i *)tmp, v);
                memcpy(dst, tmp, (size_t)nv * 4);
            }
        }
    }
}

static TVNNI void gemm_avxvnni(const qd_igemm_w *w, int M, const uint8_t *A, size_t lda,
                               int32_t *C, size_t ldc) {
    for (int p0 = 0; p0 < w->n_panels; p0 += NPV) {
        int np = w->n_panels - p0 < NPV ? w->n_panels - p0 : NPV;
        for (int m0 = 0; m0 < M; m0 += MRV) {
            int mr = M - m0 < MRV ? M - m0 : MRV;
#define BV(mr_, np_) case (mr_) * 8 + (np_): blkvnni(w, A, lda, C, ldc, m0, p0, mr_, np_); break
            switch (mr * 8 + np) {
                BV(1, 1); BV(1, 2); BV(2, 1); BV(2, 2);
                BV(3, 1); BV(3, 2); BV(4, 1); BV(4, 2);
            default: abort();
            }
#undef BV
        }
    }
}

/* ---------------------------------------------------------------- AVX2 (vpmaddwd) */

#define TAVX2 __attribute__((target("avx2")))
#define MR2 2

/* 4 signed activation bytes at k, sign-extended to int16 and repeated in every 64-bit lane:
 * vpmaddwd then pairs (a0,a1),(a2,a3) with a channel's (w0,w1),(w2,w3). */
static AINL TAVX2 __m256i bcast_a4_16(const int8_t *a, int k, int K) {
    __m128i v = _mm_cvtepi8_epi16(_mm_cvtsi32_si128((int)load_a4(a, k, K)));
    return _mm256_broadcastq_epi64(v);
}

/* Each ymm accumulator holds 4 channels x 2 partial sums; the pairs are folded at the end. */
static AINL TAVX2 void fold_store16(__m256i acc[4], int32_t *dst, int nv) {
    /* hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7]; the permute restores channel order */
    __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[0], acc[1]), 0xd8);
    __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[2], acc[3]), 0xd8);
    if (nv == 16) {
        _mm256_storeu_si256((__m256i *)dst, lo);
        _mm256_storeu_si256((__m256i *)(dst + 8), hi);
    } else {
        int32_t tmp[16];
        _mm256_storeu_si256((__m256i *)tmp, lo);
        _mm256_storeu_si256((__m256i *)(tmp + 8), hi);
        memcpy(dst, tmp, (size_t)nv * 4);
    }
}

static AINL TAVX2 void blkavx2(const qd_igemm_w *w, const int8_t *A, size_t lda, int32_t *C,
                               size_t ldc, int m0, int p, const int MR) {
    __m256i acc[MR2][4];
    UNROLL
    for (int r = 0; r < MR; r++)
        UNROLL
        for (int j = 0; j < 4; j++) acc[r][j] = _mm256_setzero_si256();
    const uint8_t *wp = w->data + (size_t)p * w->panel_stride;
    const int K = w->K;
    if (w->bits == 8) {
        for (int g = 0; g < w->n_groups; g++) {
            __m256i v0 = _mm256_load_si256((const __m256i *)(wp + (size_t)g * 64));
            __m256i v1 = _mm256_load_si256((const __m256i *)(wp + (size_t)g * 64 + 32));
            __m256i b[4] = {
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v0)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v0, 1)),
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v1)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v1, 1)),
            };
            UNROLL
            for (int r = 0; r < MR; r++) {
                __m256i a = bcast_a4_16(A + (size_t)(m0 + r) * lda, 4 * g, K);
                UNROLL
                for (int j = 0; j < 4; j++)
                    acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(a, b[j]));
            }
        }
    } else {
        const __m256i m4 = _mm256_set1_epi8(15), s8 = _mm256_set1_epi8(8);
        for (int g = 0; g < w->n_groups; g++) {
            for (int half = 0; half < 2; half++) {
                __m256i v0 = _mm256_load_si256((const __m256i *)(wp + (size_t)g * 64));
                __m256i v1 = _mm256_load_si256((const __m256i *)(wp + (size_t)g * 64 + 32));
                if (half) {
                    v0 = _mm256_srli_epi16(v0, 4);
                    v1 = _mm256_srli_epi16(v1, 4);
                }
                v0 = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(v0, m4), s8), s8);
                v1 = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(v1, m4), s8), s8);
                __m256i b[4] = {
                    _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v0)),
                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v0, 1)),
                    _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v1)),
                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v1, 1)),
                };
                UNROLL
                for (int r = 0; r < MR; r++) {
                    __m256i a = bcast_a4_16(A + (size_t)(m0 + r) * lda, 8 * g + 4 * half, K);
                    UNROLL
                    for (int j = 0; j < 4; j++)
                        acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(a, b[j]));
                }
            }
        }
    }
    int n0 = p * PANEL;
    int nv = w->N - n0 < PANEL ? w->N - n0 : PANEL;
    UNROLL
    for (int r = 0; r < MR; r++) fold_store16(acc[r], C + (size_t)(m0 + r) * ldc + n0, nv);
}

static TAVX2 void gemm_avx2(const qd_igemm_w *w, int M, const int8_t *A, size_t lda,
                            int32_t *C, size_t ldc) {
    for (int p = 0; p < w->n_panels; p++)
        for (int m0 = 0; m0 < M; m0 += MR2) {
            if (M - m0 >= 2) blkavx2(w, A, lda, C, ldc, m0, p, 2);
            else             blkavx2(w, A, lda, C, ldc, m0, p, 1);
        }
}

/* ---------------------------------------------------------------- AMX-INT8 */

#define AMX_MIN_M 4 /* fewer rows than this waste most of a 16-row tile: AVX-512 VNNI instead */

/* The 64-byte tile configuration (palette 1): every tile used here is 16 rows x 64 bytes. */
struct amx_cfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};
_Static_assert(sizeof(struct amx_cfg) == 64, "ldtilecfg reads 64 bytes");

static void amx_cfg_fill(struct amx_cfg *c) {
    memset(c, 0, sizeof *c);
    c->palette = 1;
    for (int t = 0; t < 8; t++) {
        c->colsb[t] = 64;
        c->rows[t] = 16;
    }
}

/* A compiler barrier that also makes p's memory visible to it: the tile intrinsics are asm
 * statements that name their addresses but not the memory behind them, so stores into a buffer
 * a tile is about to load (or loads from one a tile just stored) must not move across them. */
#define AMX_ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

/* Unpacks one int4 panel (G groups of 8 k) into the int8 layout of kp k: int4 group g's low
 * nibbles are int8 group 2g, its high nibbles group 2g+1; the rest up to kp is zero. */
typedef void (*amx_unpack_fn)(uint8_t *dst, const uint8_t *src, int G, size_t kp);

static void unpack_s4_scalar(uint8_t *dst, const uint8_t *src, int G, size_t kp) {
    for (int g = 0; g < G; g++)
        for (int i = 0; i < 64; i++) {
            int b = src[(size_t)g * 64 + i];
            dst[(size_t)(2 * g) * 64 + i] = (uint8_t)(((b & 15) ^ 8) - 8);
            dst[(size_t)(2 * g + 1) * 64 + i] = (uint8_t)((((b >> 4) & 15) ^ 8) - 8);
        }
    memset(dst + (size_t)G * 128, 0, kp * 16 - (size_t)G * 128);
}

static T512 void unpack_s4_512(uint8_t *dst, const uint8_t *src, int G, size_t kp) {
    const __m512i m4 = _mm512_set1_epi8(15), s8 = _mm512_set1_epi8(8);
    for (int g = 0; g < G; g++) {
        __m512i v = _mm512_load_si512((const void *)(src + (size_t)g * 64));
        __m512i l = _mm512_and_si512(v, m4);
        __m512i h = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        _mm512_store_si512((void *)(dst + (size_t)(2 * g) * 64),
                           _mm512_sub_epi8(_mm512_xor_si512(l, s8), s8));
        _mm512_store_si512((void *)(dst + (size_t)(2 * g + 1) * 64),
                           _mm512_sub_epi8(_mm512_xor_si512(h, s8), s8));
    }
    memset(dst + (size_t)G * 128, 0, kp * 16 - (size_t)G * 128);
}

/* The hardware. */
#define AMX_FN gemm_amx_hw
#define AMX_TARGET __attribute__((target("amx-tile,amx-int8")))
#define AMX_STATE (void)0
#define T_CFG(c) _tile_loadconfig(c)
#define T_ZERO(t) _tile_zero(t)
#define T_LOAD(t, b, s) _tile_loadd(t, b, (long)(s))
#define T_DP(c, a, b) _tile_dpbssd(c, a, b)
#define T_STORE(t, b, s) _tile_stored(t, b, (long)(s))
#define T_RELEASE() _tile_release()
#include "quant/rt/igemm_amx.inc"
#undef AMX_FN
#undef AMX_TARGET
#undef AMX_STATE
#undef T_CFG
#undef T_ZERO
#undef T_LOAD
#undef T_DP
#undef T_STORE
#undef T_RELEASE

/* A C model of the tile instructions as the Intel SDM defines them for palette 1: tiles of
 * rows x colsb bytes, tdpbssd adding, per int32 lane, four signed byte products with 32-bit
 * wrap-around. */
struct amx_model {
    int rows[8], colsb[8];
    uint8_t t[8][16][64];
};

static void am_cfg(struct amx_model *s, const struct amx_cfg *c) {
    assert(c->palette == 1);
    memset(s->t, 0, sizeof s->t);
    for (int i = 0; i < 8; i++) {
        assert(c->rows[i] <= 16 && c->colsb[i] <= 64);
        s->rows[i] = c->rows[i];
        s->colsb[i] = c->colsb[i];
    }
}

static void am_zero(struct amx_model *s, int t) { memset(s->t[t], 0, sizeof s->t[t]); }

static void am_load(struct amx_model *s, int t, const void *base, size_t stride) {
    for (int r = 0; r < s->rows[t]; r++)
        memcpy(s->t[t][r], (const uint8_t *)base + (size_t)r * stride, (size_t)s->colsb[t]);
}

static void am_store(struct amx_model *s, int t, void *base, size_t stride) {
    for (int r = 0; r < s->rows[t]; r++)
        memcpy((uint8_t *)base + (size_t)r * stride, s->t[t][r], (size_t)s->colsb[t]);
}

static void am_dpbssd(struct amx_model *s, int c, int a, int b) {
    /* the shapes tdpbssd requires: C rows = A rows, A's k dwords = B rows, C cols = B cols */
    assert(s->rows[c] == s->rows[a] && s->colsb[a] == 4 * s->rows[b] && s->colsb[c] == s->colsb[b]);
    for (int m = 0; m < s->rows[c]; m++)
        for (int n = 0; n < s->colsb[c] / 4; n++) {
            uint32_t acc;
            memcpy(&acc, &s->t[c][m][4 * n], 4);
            for (int k = 0; k < s->colsb[a] / 4; k++)
                for (int i = 0; i < 4; i++)
                    acc += (uint32_t)((int32_t)(int8_t)s->t[a][m][4 * k + i] *
                                      (int8_t)s->t[b][k][4 * n + i]);
            memcpy(&s->t[c][m][4 * n], &acc, 4);
        }
}

#define AMX_FN gemm_amx_model
#define AMX_TARGET
#define AMX_STATE struct amx_model st_; memset(&st_, 0, sizeof st_)
#define T_CFG(c) am_cfg(&st_, c)
#define T_ZERO(t) am_zero(&st_, t)
#define T_LOAD(t, b, s) am_load(&st_, t, b, s)
#define T_DP(c, a, b) am_dpbssd(&st_, c, a, b)
#define T_STORE(t, b, s) am_store(&st_, t, b, s)
#define T_RELEASE() (void)0
#include "quant/rt/igemm_amx.inc"
#undef AMX_FN
#undef AMX_TARGET
#undef AMX_STATE
#undef T_CFG
#undef T_ZERO
#undef T_LOAD
#undef T_DP
#undef T_STORE
#undef T_RELEASE

/* The padded copy of A and the int4 scratch, then the hardware or the model. QD_ERR when out of
 * memory (C untouched). */
static int gemm_amx(const qd_igemm_w *w, int M, const int8_t *A, size_t lda, int32_t *C,
                    size_t ldc, int model) {
    size_t kp = ((size_t)w->n_groups * (w->bits == 8 ? 4 : 8) + 63) / 64 * 64;
    size_t mp = ((size_t)M + 15) / 16 * 16;
    uint8_t *ap = aligned_alloc(64, mp * kp);
    uint8_t *bs = w->bits == 4 ? aligned_alloc(64, 2 * kp * 16) : NULL;
    if (!ap || (w->bits == 4 && !bs)) {
        free(ap);
        free(bs);
        return QD_ERR;
    }
    for (int m = 0; m < M; m++) {
        memcpy(ap + (size_t)m * kp, A + (size_t)m * lda, (size_t)w->K);
        memset(ap + (size_t)m * kp + w->K, 0, kp - (size_t)w->K);
    }
    memset(ap + (size_t)M * kp, 0, (mp - (size_t)M) * kp);
    AMX_ESCAPE(ap);
    amx_unpack_fn unpack = qd_isa_supported(QD_ISA_AVX512_VNNI) ? unpack_s4_512 : unpack_s4_scalar;
    if (model) gemm_amx_model(w, M, ap, kp, kp, bs, unpack, C, ldc);
    else gemm_amx_hw(w, M, ap, kp, kp, bs, unpack, C, ldc);
    free(ap);
    free(bs);
    return QD_OK;
}

int qd_igemm_amx_model(const qd_igemm_w *w, int M, const int8_t *A, size_t lda, int32_t *C,
                       size_t ldc) {
    if (M <= 0) return QD_OK;
    return gemm_amx(w, M, A, lda, C, ldc, 1);
}

/* ---------------------------------------------------------------- dispatch */

void qd_igemm_n(const qd_igemm_w *w, int n_end, int M, const int8_t *A, size_t lda, int32_t *C,
                size_t ldc, qd_isa isa) {
    /* a view with fewer output channels: the panels are the same bytes, only fewer of them */
    qd_igemm_w v = *w;
    v.N = n_end < w->N ? n_end : w->N;
    v.n_panels = (v.N + PANEL - 1) / PANEL;
    qd_igemm(&v, M, A, lda, C, ldc, isa);
}

void qd_igemm_cols(const qd_igemm_w *w, int n0, int n1, int M, const int8_t *A, size_t lda,
                   int32_t *C, size_t ldc, qd_isa isa) {
    assert(n0 >= 0 && n0 % PANEL == 0 && n0 < n1 && n1 <= w->N);
    /* a view starting at panel n0/16: panels are 64-byte multiples, so alignment is kept, and
     * the row sums and corrections move with it */
    qd_igemm_w v = *w;
    v.data = w->data + (size_t)(n0 / PANEL) * w->panel_stride;
    v.rowsum = w->rowsum + n0;
    v.corr = w->corr + n0;
    v.N = n1 - n0;
    v.n_panels = (v.N + PANEL - 1) / PANEL;
    qd_igemm(&v, M, A, lda, C + n0, ldc, isa);
}

void qd_igemm(const qd_igemm_w *w, int M, const int8_t *A, size_t lda, int32_t *C, size_t ldc,
              qd_isa isa) {
    if (M <= 0) return;
    if (isa == QD_ISA_AUTO || !qd_isa_supported(isa)) isa = qd_isa_best();
    if (isa == QD_ISA_AMX_INT8) {
        if (M >= AMX_MIN_M && gemm_amx(w, M, A, lda, C, ldc, 0) == QD_OK) return;
        isa = QD_ISA_AVX512_VNNI;
    }
    if (isa == QD_ISA_AVX512_VNNI || isa == QD_ISA_AVX_VNNI) {
        uint8_t stackbuf[16384];
        size_t ldu;
        uint8_t *u = bias_a(w, M, A, lda, &ldu, stackbuf, sizeof stackbuf);
        if (!u) { /* out of memory for the copy: the AVX2 path needs none */
            isa = QD_ISA_AVX2;
        } else {
            if (isa == QD_ISA_AVX512_VNNI) gemm_avx512(w, M, u, ldu, C, ldc);
            else gemm_avxvnni(w, M, u, ldu, C, ldc);
            if (u != stackbuf) free(u);
            return;
        }
    }
    switch (isa) {
    case QD_ISA_AVX2:        gemm_avx2(w, M, A, lda, C, ldc); break;
    default:                 gemm_scalar(w, M, A, lda, C, ldc); break;
    }
}
