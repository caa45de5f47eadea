/* quant/fp/lse.h: the vector log-sum-exp, masked exp sums and argmax against their scalar
 * double references on rows of every length around the vector widths and of the sizes of real
 * vocabularies, with logits spread from 0.01 to 30 (so the sums run from one dominant term to
 * thousands of equal ones), -inf entries, NaN, ties and signed zeros. Bounds: the log-normaliser
 * within 2e-6 absolute (exp within 4 ulp in float, sums in double), the sums within 2e-6
 * relative; the max and argmax exact. */
#include <math.h>

#include "quant/fp/lse.h"
#include "tests/check.h"

static uint64_t rng = 88172645463325252ull;
static double unif(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static double gauss(void) {
    double u = unif() + 1e-300, v = unif();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

static const int lens[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 512, 4099, 32000, 151936};
#define NLEN ((int)(sizeof lens / sizeof *lens))

static void fill(float *x, int n, double sigma, int spikes) {
    for (int i = 0; i < n; i++) x[i] = (float)(sigma * gauss() - 3);
    for (int k = 0; k < spikes && n > 0; k++) x[(int)(unif() * n)] += (float)(10 + 10 * unif());
}

static void against_reference_at(void) {
    float *x = malloc(sizeof(float) * 151936);
    unsigned char *mark = malloc(151936);
    double worst_lz = 0, worst_s = 0;
    int cases = 0;
    for (int li = 0; li < NLEN; li++)
        for (int si = 0; si < 4; si++) {
            int n = lens[li];
            double sigma = si == 0 ? 0.01 : si == 1 ? 1 : si == 2 ? 5 : 30;
            fill(x, n, sigma, si == 1 ? 3 : 0);
            if (si == 2 && n > 3) x[n / 2] = -INFINITY, x[n - 1] = -INFINITY;
            for (int i = 0; i < n; i++) mark[i] = unif() < 0.3;
            float mx, mref = x[0];
            for (int i = 1; i < n; i++) mref = x[i] > mref ? x[i] : mref;
            double lz = qd_lse(x, n, &mx), lr = qd_lse_ref(x, n);
            CHECK(mx == mref, "n %d sigma %g: max %.9g vs %.9g", n, sigma, mx, mref);
            CHECK(fabs(lz - lr) <= 2e-6, "n %d sigma %g: lse %.12g vs %.12g", n, sigma, lz, lr);
            if (fabs(lz - lr) > worst_lz) worst_lz = fabs(lz - lr);
            for (int masked = 0; masked < 2; masked++) {
                const unsigned char *mk = masked ? mark : NULL;
                double s = qd_sumexp_unmarked(x, n, mx, mk), sr = qd_sumexp_unmarked_ref(x, n, mx, mk);
                double rel = sr > 0 ? fabs(s - sr) / sr : fabs(s);
                CHECK(rel <= 2e-6, "n %d sigma %g masked %d: sum %.12g vs %.12g", n, sigma, masked, s, sr);
                if (rel > worst_s) worst_s = rel;
            }
            CHECK(qd_argmax(x, n) == qd_argmax_ref(x, n), "n %d sigma %g: argmax %d vs %d", n,
                  sigma, qd_argmax(x, n), qd_argmax_ref(x, n));
            cases++;
        }
    printf("# %s path: %d rows, worst |lse - ref| %.2e, worst sum rel %.2e\n", qd_lse_path(), cases,
           worst_lz, worst_s);
    free(x), free(mark);
}

/* every path this CPU has: AVX-512, AVX2, and the scalar one (which must match itself) */
static void against_reference(void) {
    const char *seen = "";
    for (int level = 2; level >= 0; level--) {
        qd_lse_set_simd(level);
        if (!strcmp(qd_lse_path(), seen)) continue; /* the CPU lacks this level */
        seen = qd_lse_path();
        against_reference_at();
    }
    qd_lse_set_simd(2);
}

static void special_values(void) {
    float x[40];
    for (int i = 0; i < 40; i++) x[i] = (float)(i % 7) - 3;
    /* ties: the first index of the maximum wins, as in the reference */
    x[5] = 9, x[21] = 9, x[37] = 9;
    CHECK(qd_argmax(x, 40) == 5, "tie: %d", qd_argmax(x, 40));
    /* signed zeros compare equal: the first one is the argmax */
    for (int i = 0; i < 40; i++) x[i] = -1;
    x[19] = -0.0f, x[20] = 0.0f;
    CHECK(qd_argmax(x, 40) == 19 && qd_argmax_ref(x, 40) == 19, "zeros: %d", qd_argmax(x, 40));
    /* NaN inside is skipped by max and argmax and makes the sum NaN; NaN first wins */
    x[30] = NAN;
    CHECK(qd_argmax(x, 40) == 19, "nan inside: %d", qd_argmax(x, 40));
    CHECK(isnan(qd_lse(x, 40, NULL)) && isnan(qd_lse_ref(x, 40)), "nan sum");
    x[0] = NAN;
    CHECK(qd_argmax(x, 40) == 0 && qd_argmax_ref(x, 40) == 0, "nan first");
    /* one finite logit among -inf: the normaliser is that logit */
    for (int i = 0; i < 40; i++) x[i] = -INFINITY;
    x[23] = 2.5f;
    CHECK(qd_lse(x, 40, NULL) == 2.5 && qd_argmax(x, 40) == 23, "-inf row: %.9g",
          qd_lse(x, 40, NULL));
    /* +inf: the references' answer (NaN from inf - inf) */
    x[3] = INFINITY;
    CHECK(isnan(qd_lse(x, 40, NULL)) && qd_argmax(x, 40) == 3, "+inf row");
}

static void scalar_switch(void) {
    float x[1000];
    fill(x, 1000, 4, 2);
    qd_lse_set_simd(0);
    double a = qd_lse(x, 1000, NULL);
    const char *p = qd_lse_path();
    qd_lse_set_simd(2);
    /* the switch takes the reference itself (same bits), and the fast path exists */
    CHECK(!strcmp(p, "scalar") && a == qd_lse_ref(x, 1000), "%s: %.17g vs %.17g", p, a,
          qd_lse_ref(x, 1000));
}

int main(void) {
    RUN(against_reference);
    RUN(special_values);
    RUN(scalar_switch);
    return check_failed_total ? 1 : 0;
}
