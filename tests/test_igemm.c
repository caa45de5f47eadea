/* Every SIMD path of the integer GEMM against the scalar reference, exactly (integer results
 * must match bit for bit), on random shapes with odd sizes, extreme values and strided
 * operands. Paths this CPU cannot run print "SKIP name". The AMX path also runs, on every CPU,
 * over igemm.c's C model of the tile instructions (qd_igemm_amx_model), so its tiling and
 * tails are checked where the hardware is missing. */
#include <stdint.h>

#include "quant/rt/igemm.h"
#include "tests/check.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) { return (uint32_t)(check_xorshift(&rng) >> 11); }

/* Values: uniform over the whole range, with the extremes -128/127 over-represented because
 * they exercise the +128 bias of the VNNI paths. */
static int8_t rnd_s8(void) {
    uint32_t r = rnd() % 10;
    if (r == 0) return -128;
    if (r == 1) return 127;
    return (int8_t)(rnd() & 0xff);
}

/* Not an ISA: run_case's name for qd_igemm_amx_model. */
#define AMX_MODEL ((qd_isa)100)
static const char *path_name(qd_isa isa) { return isa == AMX_MODEL ? "amx-model" : qd_isa_name(isa); }

static int run_case(qd_isa isa, int bits, int M, int N, int K, int pad) {
    size_t lda = (size_t)K + pad, ldc = (size_t)N + pad;
    size_t ldw = bits == 8 ? (size_t)K + pad : (size_t)(K + 1) / 2 + pad;
    int8_t *A = malloc((size_t)M * lda);
    uint8_t *W = calloc((size_t)N, ldw);
    int32_t *C0 = malloc((size_t)M * ldc * 4), *C1 = malloc((size_t)M * ldc * 4);
    for (size_t i = 0; i < (size_t)M * lda; i++) A[i] = rnd_s8();
    for (int n = 0; n < N; n++) {
        if (bits == 8) {
            for (int k = 0; k < K; k++) W[(size_t)n * ldw + k] = (uint8_t)rnd_s8();
        } else {
            for (int k = 0; k < K; k++) qd_s4_set(W + (size_t)n * ldw, k, (int)(rnd() % 16) - 8);
        }
    }
    for (size_t i = 0; i < (size_t)M * ldc; i++) C0[i] = C1[i] = 0x5a5a5a5a;
    qd_err err;
    qd_igemm_w *pw;
    if (bits == 8) {
        qd_igemm_s8_ref(M, N, K, A, lda, (const int8_t *)W, ldw, C0, ldc);
        pw = qd_igemm_pack_s8((const int8_t *)W, N, K, ldw, &err);
    } else {
        qd_igemm_s4_ref(M, N, K, A, lda, W, ldw, C0, ldc);
        pw = qd_igemm_pack_s4(W, N, K, ldw, &err);
    }
    int bad = 0;
    CHECK(pw != NULL, "%s", err.msg);
    if (pw) {
        if (isa == AMX_MODEL) CHECK(qd_igemm_amx_model(pw, M, A, lda, C1, ldc) == QD_OK, "model");
        else qd_igemm(pw, M, A, lda, C1, ldc, isa);
        for (int m = 0; m < M && bad < 3; m++)
            for (int n = 0; n < (int)ldc && bad < 3; n++)
                if (C0[(size_t)m * ldc + n] != C1[(size_t)m * ldc + n]) {
                    /* padding columns must be left alone too */
                    CHECK(0, "%s int%d M=%d N=%d K=%d: C[%d][%d] = %d, want %d", path_name(isa),
                          bits, M, N, K, m, n, C1[(size_t)m * ldc + n], C0[(size_t)m * ldc + n]);
                    bad++;
                }
        /* rowsum is what callers fold zero points with */
        const int32_t *rs = qd_igemm_w_rowsum(pw);
        for (int n = 0; n < N; n++) {
            int32_t s = 0;
            for (int k = 0; k < K; k++)
                s += bits == 8 ? ((const int8_t *)W)[(size_t)n * ldw + k] : qd_s4_get(W + (size_t)n * ldw, k);
            if (rs[n] != s) { CHECK(0, "rowsum[%d] %d want %d", n, rs[n], s); bad++; break; }
        }
    }
    qd_igemm_w_free(pw);
    free(A); free(W); free(C0); free(C1);
    return bad;
}

static void check_isa(qd_isa isa) {
    /* fixed corner shapes, then random ones (odd sizes included) */
    static const int shapes[][3] = {
        {1, 1, 1}, {1, 16, 4}, {1, 17, 5}, {3, 15, 7}, {4, 64, 64}, {5, 33, 9},
        {7, 65, 129}, {8, 80, 172}, {1, 512, 64}, {13, 172, 64}, {2, 3, 1000},
        /* AMX tiles: 16 rows, 64 k, panel pairs; exact fits, one past, one short */
        {16, 16, 64}, {16, 32, 128}, {17, 33, 65}, {32, 32, 64}, {31, 48, 192}, {33, 47, 200},
        {48, 80, 300}, {64, 17, 1000}, {40, 16, 63},
    };
    for (int bits = 8; bits >= 4; bits -= 4) {
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            if (run_case(isa, bits, shapes[i][0], shapes[i][1], shapes[i][2], 0)) return;
        for (int t = 0; t < 60; t++) {
            /* M up to 70: two 32-row AMX blocks and a tail */
            int M = 1 + (int)(rnd() % (t & 1 ? 19 : 70)), N = 1 + (int)(rnd() % 150),
                K = 1 + (int)(rnd() % 300);
            if (run_case(isa, bits, M, N, K, (int)(rnd() % 5))) return;
        }
    }
}

static void test_scalar(void) { check_isa(QD_ISA_SCALAR); }
static void test_avx2(void) { check_isa(QD_ISA_AVX2); }
static void test_avx_vnni(void) { check_isa(QD_ISA_AVX_VNNI); }
static void test_avx512_vnni(void) { check_isa(QD_ISA_AVX512_VNNI); }
static void test_amx_int8(void) { check_isa(QD_ISA_AMX_INT8); }
static void test_amx_model(void) { check_isa(AMX_MODEL); }

/* Largest magnitudes at the largest K the runtime allows per matmul chunk: the VNNI bias of
 * +128 makes the raw accumulator exceed 2^31, and the correction must still give the exact
 * value. */
static void test_extremes(void) {
    int K = 65536, N = 3;
    int8_t *A = malloc((size_t)K);
    int8_t *W = malloc((size_t)N * K);
    for (int k = 0; k < K; k++) A[k] = -128;
    for (int k = 0; k < K; k++) { W[k] = -128; W[K + k] = 127; W[2 * K + k] = (int8_t)(k & 1 ? 127 : -128); }
    int32_t want[3], got[3];
    qd_igemm_s8_ref(1, N, K, A, K, W, K, want, N);
    qd_err err;
    qd_igemm_w *pw = qd_igemm_pack_s8(W, N, K, K, &err);
    CHECK(pw != NULL, "%s", err.msg);
    for (int i = 0; pw && i < QD_ISA_COUNT; i++) {
        if (!qd_isa_supported((qd_isa)i)) continue;
        qd_igemm(pw, 1, A, K, got, N, (qd_isa)i);
        for (int n = 0; n < N; n++)
            CHECK(got[n] == want[n], "%s n=%d: %d want %d", qd_isa_name((qd_isa)i), n, got[n], want[n]);
    }
    CHECK(pw && qd_igemm_amx_model(pw, 1, A, K, got, N) == QD_OK, "model");
    for (int n = 0; pw && n < N; n++) CHECK(got[n] == want[n], "amx-model n=%d: %d want %d", n, got[n], want[n]);
    CHECK(want[1] == -128 * 127 * K, "ref %d", want[1]);
    qd_igemm_w_free(pw);
    free(A); free(W);
}

static void test_dispatch(void) {
    qd_isa best = qd_isa_best();
    CHECK(qd_isa_supported(best), "best %s unsupported", qd_isa_name(best));
    CHECK(qd_isa_supported(QD_ISA_SCALAR), "scalar");
    qd_isa p;
    qd_err err;
    CHECK(qd_isa_parse("avx-vnni", &p, &err) == QD_OK && p == QD_ISA_AVX_VNNI, "parse");
    CHECK(qd_isa_parse("amx-int8", &p, &err) == QD_OK && p == QD_ISA_AMX_INT8, "parse amx");
    CHECK(qd_isa_parse("sse9", &p, &err) == QD_ERR, "parse bad");
    /* AMX's non-GEMM work runs on AVX-512, which every AMX CPU has */
    CHECK(!qd_isa_supported(QD_ISA_AMX_INT8) || qd_isa_supported(QD_ISA_AVX512_VNNI), "amx without avx512");
    CHECK(qd_isa_vector(QD_ISA_AMX_INT8) == QD_ISA_AVX512_VNNI && qd_isa_vector(QD_ISA_AVX2) == QD_ISA_AVX2, "vector isa");
    printf("# best path: %s; supported:", qd_isa_name(best));
    for (int i = 0; i < QD_ISA_COUNT; i++)
        if (qd_isa_supported((qd_isa)i)) printf(" %s", qd_isa_name((qd_isa)i));
    printf("\n");
    CHECK(qd_igemm_pack_s8(NULL, 0, 4, 4, &err) == NULL, "bad shape accepted");
}

#define RUN_ISA(fn, isa)                                                   \
    do {                                                                   \
        if (qd_isa_supported(isa)) RUN(fn);                                \
        else printf("SKIP " #fn ": CPU lacks %s\n", qd_isa_name(isa));     \
    } while (0)

int main(void) {
    RUN(test_dispatch);
    RUN(test_scalar);
    RUN_ISA(test_avx2, QD_ISA_AVX2);
    RUN_ISA(test_avx_vnni, QD_ISA_AVX_VNNI);
    RUN_ISA(test_avx512_vnni, QD_ISA_AVX512_VNNI);
    RUN_ISA(test_amx_int8, QD_ISA_AMX_INT8);
    RUN(test_amx_model);
    RUN(test_extremes);
    return CHECK_DONE();
}
