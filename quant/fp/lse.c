#include "quant/fp/lse.h"

#include <math.h>

static int simd_cap = 2;

void qd_lse_set_simd(int level) { simd_cap = level; }

static float qd_row_max_ref(const float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

double qd_lse_ref(const float *x, int n) {
    double mx = qd_row_max_ref(x, n), s = 0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    return mx + log(s);
}

double qd_sumexp_unmarked_ref(const float *x, int n, float shift, const unsigned char *mark) {
    double s = 0;
    for (int i = 0; i < n; i++)
        if (!mark || !mark[i]) s += exp((double)x[i] - (double)shift);
    return s;
}

int qd_argmax_ref(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[a]) a = i;
    return a;
}

#if defined(__x86_64__)
#include <immintrin.h>

/* glibc's libmvec (part of libc6): exp of 16 and 8 floats (IFUNCs that pick their own code
 * for the CPU; the caller's target attribute makes the vector argument travel in zmm/ymm) */
extern __m512 _ZGVeN16v_expf(__m512);
extern __m256 _ZGVdN8v_expf(__m256);

static int isa(void) {
    static int level = -1; /* 2: AVX-512F, 1: AVX2+FMA, 0: none */
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("avx512f")                                      ? 2
                : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                                       : 0;
    }
    return level < simd_cap ? level : simd_cap;
}

__attribute__((target("avx512f"))) static float max512(const float *x, int n) {
    __m512 m = _mm512_set1_ps(x[0]);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(_mm512_loadu_ps(x + i), m); /* NaN: keeps m */
    float mx = _mm512_reduce_max_ps(m);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

__attribute__((target("avx2,fma"))) static float max256(const float *x, int n) {
    __m256 m = _mm256_set1_ps(x[0]);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);
    float t[8];
    _mm256_storeu_ps(t, m);
    float mx = t[0];
    for (int k = 1; k < 8; k++) mx = t[k] > mx ? t[k] : mx;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* sum of exp(x[i] - shift) over i < n with mark NULL or !mark[i], in double */
__attribute__((target("avx512f"))) static double sumexp512(const float *x, int n, float shift,
                                                           const unsigned char *mark) {
    __m512 vs = _mm512_set1_ps(shift);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = _ZGVeN16v_expf(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs));
        if (mark) {
            __m512i m = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(mark + i)));
            __mmask16 keep = _mm512_cmpeq_epi32_mask(m, _mm512_setzero_si512());
            e = _mm512_maskz_mov_ps(keep, e);
        }
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    for (; i < n; i++)
        if (!mark || !mark[i]) s += exp((double)x[i] - (double)shift);
    return s;
}

__attribute__((target("avx2,fma"))) static double sumexp256(const float *x, int n, float shift,
                                                            const unsigned char *mark) {
    __m256 vs = _mm256_set1_ps(shift);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = _ZGVdN8v_expf(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        if (mark) {
            __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mark + i)));
            __m256i keep = _mm256_cmpeq_epi32(m, _mm256_setzero_si256());
            e = _mm256_and_ps(e, _mm256_castsi256_ps(keep));
        }
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
    double s = (t[0] + t[1]) + (t[2] + t[3]);
    for (; i < n; i++)
        if (!mark || !mark[i]) s += exp((double)x[i] - (double)shift);
    return s;
}

float qd_row_max(const float *x, int n) {
    if (x[0] != x[0]) return x[0];
    switch (isa()) {
    case 2: return max512(x, n);
    case 1: return max256(x, n);
    default: return qd_row_max_ref(x, n);
    }
}


double qd_sumexp_unmarked(const float *x, int n, float shift, const unsigned char *mark) {
    switch (isfinite(shift) ? isa() : 0) {
    case 2: return sumexp512(x, n, shift, mark);
    case 1: return sumexp256(x, n, shift, mark);
    default: return qd_sumexp_unmarked_ref(x, n, shift, mark);
    }
}

int qd_argmax(const float *x, int n) {
    if (!isa()) return qd_argmax_ref(x, n);
    float mx = qd_row_max(x, n);
    if (mx != mx) return 0;
    for (int i = 0; i < n; i++)
        if (x[i] == mx) return i;
    return 0;
}

const char *qd_lse_path(void) {
    static const char *name[3] = {"scalar", "avx2", "avx512"};
    return name[isa()];
}

#else

const char *qd_lse_path(void) { return "scalar"; }
float qd_row_max(const float *x, int n) { return qd_row_max_ref(x, n); }
double qd_sumexp_unmarked(const float *x, int n, float shift, const unsigned char *mark) {
    return qd_sumexp_unmarked_ref(x, n, shift, mark);
}
int qd_argmax(const float *x, int n) { return qd_argmax_ref(x, n); }

#endif

double qd_lse(const float *x, int n, float *mx) {
    float m = qd_row_max(x, n);
    if (mx) *mx = m;
    return (double)m + log(qd_sumexp_unmarked(x, n, m, NULL));
}
