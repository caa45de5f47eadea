/* The run's cost estimate (quant/estimate.h) against real runs: random-weight checkpoints of a
 * few shapes (GQA and MHA, tied and untied, BF16 and F32, W8 and W4, batch 1 and 2) are
 * quantized by the real binary ($QUANTD, a child process) and its peak RSS (wait4's
 * ru_maxrss) must lie within [0.7, 1.3] of the estimate's peak. The band covers what differs
 * between machines (OpenBLAS's buffers, the allocator) while the large parts (a simulation,
 * the reference, a Hessian's factorisation) left out or counted twice move a ratio out of it. Properties: more samples and a larger batch predict more; the address
 * space exceeds the resident peak; qd_quantize_check refuses (field "budget") below the
 * estimate and accepts above it. Skipped under sanitizers (their shadow memory is not the
 * pipeline's). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/fs.h"
#include "quant/estimate.h"
#include "quant/io/load.h"
#include "quant/quantize.h"
#include "tests/check.h"
#include "tests/synth.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

static char tmp[256];

/* a checkpoint (HF directory) and random token ids, DIR/tokens.u32.bin */
static int write_case(const char *dir, qd_config c, const char *dtype, int n_tokens) {
    qd_err err = {{0}};
    qd_model *m = synth_model(&c, 7, &err);
    int rc = m && qd_mkdir_p(dir, &err) == QD_OK && qd_save_hf(m, dir, dtype, &err) == QD_OK;
    qd_model_free(m);
    if (!rc) {
        fprintf(stderr, "  %s: %s\n", dir, err.msg);
        return 0;
    }
    uint32_t *ids = malloc(sizeof *ids * (size_t)n_tokens);
    uint64_t s = 99;
    for (int i = 0; i < n_tokens; i++) ids[i] = (uint32_t)(synth_next(&s) % (uint64_t)c.vocab_size);
    char p[600];
    snprintf(p, sizeof p, "%s/tokens.u32.bin", dir);
    rc = qd_write_file_atomic(p, ids, sizeof *ids * (size_t)n_tokens, &err) == QD_OK;
    free(ids);
    return rc;
}

/* runs `quantd quantize` on dir with the budget's flags; its peak RSS in bytes, or -1 */
static double measured_peak(const char *dir, const char *method, int wbits, int samples, int T,
                            int epochs, int batch, double split) {
    const char *q = getenv("QUANTD");
    if (!q) q = "build/quantd";
    char model[600], calib[600], out[600], a_w[8], a_s[16], a_t[16], a_e[16], a_b[16], a_x[32];
    snprintf(model, sizeof model, "%s", dir);
    snprintf(calib, sizeof calib, "%s/tokens.u32.bin", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(a_w, sizeof a_w, "%d", wbits), snprintf(a_s, sizeof a_s, "%d", samples);
    snprintf(a_t, sizeof a_t, "%d", T), snprintf(a_e, sizeof a_e, "%d", epochs);
    snprintf(a_b, sizeof a_b, "%d", batch), snprintf(a_x, sizeof a_x, "%g", split);
    char *argv[] = {(char *)q, "quantize", "--model", model, "--calib", calib, "--out", out,
                    "--method", (char *)method, "--wbits", a_w, "--samples", a_s, "--seq-len",
                    a_t, "--epochs", a_e, "--batch", a_b, "--eval-split", a_x, "--quiet", NULL};
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout)) _exit(127);
        execv(q, argv);
        _exit(127);
    }
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "  %s quantize on %s: status %d\n", q, dir, st);
        return -1;
    }
    return (double)ru.ru_maxrss * 1024;
}

static void opts_for(qd_quant_opts *o, const char *dir, char *calib, size_t n, const char *method,
                     int wbits, int samples, int T, int epochs, int batch, double split) {
    qd_quant_defaults(o);
    snprintf(calib, n, "%s/tokens.u32.bin", dir);
    o->model_path = dir, o->calib_path = calib, o->out_dir = "unused";
    snprintf(o->method, sizeof o->method, "%s", method);
    o->wbits = wbits, o->samples = samples, o->seq_len = T, o->epochs = epochs, o->batch = batch;
    o->eval_split = split;
}

/* split: the evaluation's share of the tokens. The FP32 reference's part is its bound (every
 * log-probability kept); a peaked distribution (a tied random model, any trained one) keeps
 * fewer, so the cases keep that part small or use untied random models (flat distributions). */
static void one_case(const char *name, qd_config c, const char *dtype, const char *method,
                     int wbits, int samples, int T, int epochs, int batch, double split) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    CHECK(write_case(dir, c, dtype, 6000), "writing %s", dir);
    qd_quant_opts o;
    char calib[600];
    opts_for(&o, dir, calib, sizeof calib, method, wbits, samples, T, epochs, batch, split);
    qd_estimate e;
    char field[QD_CHECK_FIELD];
    qd_err err = {{0}};
    CHECK(qd_quantize_plan(&o, 0, &e, field, &err) == QD_OK, "%s", err.msg);
    double rss = measured_peak(dir, method, wbits, samples, T, epochs, batch, split);
    double r = rss / e.peak_bytes;
    printf("  %-10s estimate %.1f MiB (peak phase %s), measured peak RSS %.1f MiB: ratio %.2f\n",
           name, e.peak_bytes / 1048576, e.ph[e.peak].phase, rss / 1048576, r);
    CHECK(rss > 0 && r >= 0.7 && r <= 1.3, "%s: measured/estimate %.2f outside [0.7, 1.3]", name, r);
}

static void test_estimate_vs_rss(void) {
    if (UNDER_SANITIZER) {
        printf("SKIP test_estimate_vs_rss: the sanitizers' shadow memory is not the pipeline's\n");
        return;
    }
    qd_config a = synth_config(256, 688, 2, 4, 2, 4096, 512);
    a.tied_embeddings = 0;
    one_case("gqa-w8", a, "BF16", "mobilequant", 8, 8, 128, 1, 1, 0.5);
    one_case("gqa-w4", a, "BF16", "mobilequant", 4, 8, 128, 1, 1, 0.5);
    qd_config b = synth_config(384, 1024, 2, 6, 6, 2048, 512); /* tied */
    one_case("mha-b2", b, "F32", "mobilequant", 8, 8, 64, 1, 2, 0.1);
}

static void test_estimate_properties(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/props", tmp);
    qd_config a = synth_config(128, 344, 2, 4, 2, 1024, 512);
    CHECK(write_case(dir, a, "F32", 4000), "writing %s", dir);
    qd_quant_opts o;
    char calib[600], field[QD_CHECK_FIELD];
    qd_err err = {{0}};
    qd_estimate e1, e2, e3;
    opts_for(&o, dir, calib, sizeof calib, "mobilequant", 8, 8, 128, 1, 1, 0.5);
    CHECK(qd_quantize_plan(&o, 0, &e1, field, &err) == QD_OK, "%s", err.msg);
    o.samples = 64;
    CHECK(qd_quantize_plan(&o, 0, &e2, field, &err) == QD_OK, "%s", err.msg);
    o.samples = 8, o.batch = 4;
    CHECK(qd_quantize_plan(&o, 0, &e3, field, &err) == QD_OK, "%s", err.msg);
    CHECK(e2.peak_bytes > e1.peak_bytes, "samples 64 %.0f vs 8 %.0f", e2.peak_bytes, e1.peak_bytes);
    /* the optimizer's phase: every layer's saved activations scale with the batch */
    int k = 0;
    while (k < e1.n_phases - 1 && strcmp(e1.ph[k].phase, "optimize")) k++;
    CHECK(!strcmp(e1.ph[k].phase, "optimize") && e3.ph[k].bytes > e1.ph[k].bytes,
          "batch 4 %.0f vs 1 %.0f (%s)", e3.ph[k].bytes, e1.ph[k].bytes, e1.ph[k].phase);
    CHECK(e1.vm_bytes > e1.peak_bytes, "address space %.0f, peak %.0f", e1.vm_bytes, e1.peak_bytes);
    CHECK(isnan(e1.step_s), "no probe: no time");
    double sum = 0;
    for (int i = 0; i < e1.ph[e1.peak].n_parts; i++) sum += e1.ph[e1.peak].part[i].bytes;
    CHECK(fabs(sum - e1.peak_bytes) < 1, "the peak is the sum of its parts: %.0f vs %.0f", sum,
          e1.peak_bytes);
    /* the limit: refused below the address space, accepted above */
    o.batch = 1;
    o.max_mem = (size_t)(e1.vm_bytes * 0.9);
    CHECK(qd_quantize_check(&o, field, &err) == QD_ERR && !strcmp(field, "budget") &&
              strstr(err.msg, "budget: the run would need about"),
          "field '%s': %s", field, err.msg);
    o.max_mem = (size_t)(e1.vm_bytes * 1.1);
    CHECK(qd_quantize_check(&o, field, &err) == QD_OK, "%s", err.msg);
    /* with the probe: a time per step and for the run */
    o.max_mem = 0;
    CHECK(qd_quantize_plan(&o, 1, &e1, field, &err) == QD_OK, "%s", err.msg);
    CHECK(e1.sgemm_gflops > 0 && e1.step_s > 0 && e1.total_s > e1.step_s * (double)e1.steps &&
              e1.steps == 8,
          "%g GFLOP/s, %g s/step, %g s, %ld steps", e1.sgemm_gflops, e1.step_s, e1.total_s,
          e1.steps);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/qd_test_estimate_XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    RUN(test_estimate_properties);
    RUN(test_estimate_vs_rss);
    qd_err err = {{0}};
    qd_rm_rf(tmp);
    (void)err;
    return check_failed_total ? 1 : 0;
}
