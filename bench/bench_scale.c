/* Scale: how time and memory grow with the model (issue 13), and the random-weight
 * checkpoints (tests/synth.h, written as Hugging Face directories) it runs on.
 *
 *   bench_scale [--sizes tiny,30m,250m,1.1b] [--threads K] [--keep DIR]
 * for each size writes a BF16 checkpoint (tiny: stories260K's shape; 30m: dim 512, 8 layers;
 * 250m: TinyLlama-1.1B's layer shapes with 4 of its 22 layers, tied; 1.1b: all 22, untied,
 * vocab 32000) and random token ids, runs `quantd quantize --dry-run --json` (the estimate) and
 * then the run itself (a child; W8A8 MobileQuant, 4 windows of 128 tokens, 1 epoch, 1024
 * evaluation tokens, --threads K, default all CPUs) and prints per size: seconds per phase (from report.json's
 * compute.stages), seconds per optimizer step (and the estimate's), wall seconds, peak RSS
 * (wait4) and the estimate's peak. Without --sizes (as `make bench` runs it): tiny, 30m and 250m; 1.1b takes
 * hours on two cores.
 *
 *   bench_scale --write DIR [--dim D --hidden F --layers L --heads H --kv-heads K --vocab V
 *                            --ctx C --dtype F32|BF16 --tokens N --seed S --tied 0|1]
 * writes one checkpoint into DIR (config.json + model.safetensors) and, with --tokens N,
 * DIR/tokens.u32.bin: N random token ids (pre-tokenized calibration data, no tokenizer
 * needed). tests/e2e_stop.sh uses it for a model whose phases each last a few seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <limits.h>
#include <math.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/bench_common.h"
#include "base/fs.h"
#include "base/sys.h"
#include "quant/io/load.h"
#include "tests/synth.h"

typedef struct {
    int dim, hidden, layers, heads, kv_heads, vocab, ctx;
    const char *dtype;
    long tokens;
    uint64_t seed;
    int tied;
} shape;

static int write_tokens(const char *dir, long n, int vocab, uint64_t seed, qd_err *err) {
    uint32_t *ids = malloc(sizeof(uint32_t) * (size_t)n);
    if (!ids) return qd_errf(err, "out of memory");
    uint64_t s = seed * 31 + 7;
    for (long i = 0; i < n; i++) ids[i] = (uint32_t)(synth_next(&s) % (uint64_t)vocab);
    char path[4200];
    snprintf(path, sizeof path, "%s/tokens.u32.bin", dir);
    int rc = qd_write_file_atomic(path, ids, sizeof(uint32_t) * (size_t)n, err);
    free(ids);
    return rc;
}

static int write_checkpoint(const char *dir, const shape *s, qd_err *err) {
    qd_config c = synth_config(s->dim, s->hidden, s->layers, s->heads, s->kv_heads, s->vocab,
                               s->ctx);
    c.tied_embeddings = s->tied;
    qd_model *m = synth_model(&c, s->seed, err);
    if (!m) return QD_ERR;
    int rc = qd_mkdir_p(dir, err) || qd_save_hf(m, dir, s->dtype, err);
    qd_model_free(m);
    if (rc) return QD_ERR;
    return s->tokens > 0 ? write_tokens(dir, s->tokens, s->vocab, s->seed, err) : QD_OK;
}

static int usage(void) {
    fprintf(stderr, "usage: bench_scale [--sizes tiny,30m,250m,1.1b] [--threads K] [--keep DIR]\n"
                    "       bench_scale --write DIR [--dim D] [--hidden F] [--layers L] "
                    "[--heads H] [--kv-heads K] [--vocab V] [--ctx C] [--dtype F32|BF16] "
                    "[--tokens N] [--seed S] [--tied 0|1]\n");
    return 2;
}

/* ---- the run mode ---- */

typedef struct {
    const char *name;
    shape s;
} size_case;

static const size_case sizes[] = {
    {"tiny", {64, 172, 5, 8, 4, 512, 512, "BF16", 0, 1, 1}},
    {"30m", {512, 1376, 8, 8, 4, 8192, 2048, "BF16", 0, 1, 0}},
    {"250m", {2048, 5632, 4, 32, 4, 32000, 2048, "BF16", 0, 1, 1}},
    {"1.1b", {2048, 5632, 22, 32, 4, 32000, 2048, "BF16", 0, 1, 0}},
};

#define SAMPLES 4
#define SEQ 128
#define EVAL_TOKENS 1024

/* runs argv (a quantd command) with stdout into out_path (NULL: /dev/null); its exit status,
 * -1 when it could not run; *rss its peak RSS in bytes */
static int run_child(char **argv, const char *out_path, double *rss) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (!freopen(out_path ? out_path : "/dev/null", "w", stdout)) _exit(127);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid) return -1;
    if (rss) *rss = (double)ru.ru_maxrss * 1024;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static cJSON *read_json(const char *path) {
    qd_err err = {{0}};
    size_t n;
    char *t = qd_read_file(path, 64u << 20, &n, &err);
    cJSON *j = t ? cJSON_ParseWithLength(t, n) : NULL;
    free(t);
    return j;
}

/* seconds of the stages of report.json r matching phase (and variant, NULL: any) */
static double stage_s(const cJSON *r, const char *phase, const char *variant) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "compute"), "stages");
    double t = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, st) {
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "phase"));
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "variant"));
        if (p && !strcmp(p, phase) && (!variant || (v && !strcmp(v, variant))))
            t += cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "seconds"));
    }
    return t;
}

static int run_size(const size_case *z, const char *root, const char *exe, int threads) {
    if (strlen(root) > PATH_MAX - 64) return 1;
    char dir[PATH_MAX + 32], out[PATH_MAX + 48], calib[PATH_MAX + 64], est[PATH_MAX + 64],
        rep[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/%s", root, z->name);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(calib, sizeof calib, "%s/tokens.u32.bin", dir);
    snprintf(est, sizeof est, "%s/estimate.json", dir);
    snprintf(rep, sizeof rep, "%s/out/report.json", dir);
    shape s = z->s;
    /* the windows, the held-out slice and the evaluation tokens (the last half) */
    s.tokens = 2 * (long)fmax((SAMPLES + 2) * SEQ, EVAL_TOKENS);
    qd_err err = {{0}};
    if (write_checkpoint(dir, &s, &err)) {
        fprintf(stderr, "bench_scale: %s\n", err.msg);
        return 1;
    }
    char a_s[16], a_t[16], a_k[16];
    snprintf(a_s, sizeof a_s, "%d", SAMPLES), snprintf(a_t, sizeof a_t, "%d", SEQ);
    snprintf(a_k, sizeof a_k, "%d", threads);
    char *args[] = {(char *)exe, "quantize", "--model", dir, "--calib", calib, "--out", out,
                    "--samples", a_s, "--seq-len", a_t, "--epochs", "1", "--eval-split", "0.5",
                    "--threads", a_k, "--quiet", "--dry-run", "--json", NULL};
    if (run_child(args, est, NULL) != 0) {
        fprintf(stderr, "bench_scale: %s: the dry run failed\n", z->name);
        return 1;
    }
    args[19] = NULL; /* the run itself */
    double rss = 0;
    double t0 = qd_now();
    int rc = run_child(args, NULL, &rss);
    double wall = qd_now() - t0;
    cJSON *e = read_json(est), *r = read_json(rep);
    if (rc != 0 || !r || !e) {
        fprintf(stderr, "bench_scale: %s: quantize exited %d\n", z->name, rc);
        cJSON_Delete(e), cJSON_Delete(r);
        return 1;
    }
    double params = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(r, "size"), "fp32_bytes")) / 4;
    double steps = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(r, "compute"), "optimizer_steps"));
    double opt = stage_s(r, "optimize", NULL);
    double base = stage_s(r, "calibrate", "rtn") + stage_s(r, "eval", "rtn") +
                  stage_s(r, "calibrate", "smoothquant") + stage_s(r, "eval", "smoothquant");
    double peak_est = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "peak_bytes"));
    double step_est = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "step_s"));
    printf("%-5s %7.1fM %6.1f %6.1f %6.1f %6.1f %6.1f %7.2f %7.2f %6.1f %6.1f %6.1f %6.1f %7.0f "
           "%8.0f %8.0f %5.2f\n",
           z->name, params / 1e6, stage_s(r, "load", NULL), stage_s(r, "eval", "fp32"), base,
           stage_s(r, "calibrate", "mobilequant"), opt, steps > 0 ? opt / steps : NAN, step_est,
           stage_s(r, "gptq", NULL), stage_s(r, "eval", "mobilequant"),
           stage_s(r, "export", NULL), stage_s(r, "eval", "int"), wall, rss / 1048576,
           peak_est / 1048576, rss / peak_est);
    fflush(stdout);
    cJSON_Delete(e), cJSON_Delete(r);
    qd_rm_rf(dir);
    return 0;
}

static int run_mode(const char *list, const char *keep, int threads) {
    char exe[PATH_MAX], root[PATH_MAX];
    if (bench_quantd_exe(exe)) {
        fprintf(stderr, "bench_scale: quantd not found (set QUANTD)\n");
        return 1;
    }
    if (keep) snprintf(root, sizeof root, "%s", keep);
    else {
        snprintf(root, sizeof root, "/tmp/bench_scale_XXXXXX");
        if (!mkdtemp(root)) return 1;
    }
    printf("bench_scale: W8A8 MobileQuant, %d windows x %d tokens, 1 epoch, %d evaluation "
           "tokens, random BF16 weights, %d threads; seconds per phase, peak RSS and the "
           "estimate (quantize --dry-run) in MiB\n", SAMPLES, SEQ, EVAL_TOKENS, threads);
    printf("%-5s %8s %6s %6s %6s %6s %6s %7s %7s %6s %6s %6s %6s %7s %8s %8s %5s\n", "size",
           "params", "load", "fp32", "base", "calib", "optim", "s/step", "(est)", "gptq",
           "eval", "export", "int", "wall", "peak", "estim", "ratio");
    int rc = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        char key[16];
        snprintf(key, sizeof key, ",%s,", sizes[i].name);
        char l[256];
        snprintf(l, sizeof l, ",%s,", list);
        if (strstr(l, key)) rc |= run_size(&sizes[i], root, exe, threads);
    }
    if (!keep) rmdir(root);
    return rc;
}

int main(int argc, char **argv) {
    shape s = {256, 704, 4, 8, 8, 4096, 512, "F32", 0, 1, 0};
    const char *dir = NULL, *list = "tiny,30m,250m", *keep = NULL;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = ncpu > 0 ? (int)ncpu : 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        i++;
        if (!strcmp(a, "--write")) dir = v;
        else if (!strcmp(a, "--sizes")) list = v;
        else if (!strcmp(a, "--keep")) keep = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--dim")) s.dim = atoi(v);
        else if (!strcmp(a, "--hidden")) s.hidden = atoi(v);
        else if (!strcmp(a, "--layers")) s.layers = atoi(v);
        else if (!strcmp(a, "--heads")) s.heads = atoi(v);
        else if (!strcmp(a, "--kv-heads")) s.kv_heads = atoi(v);
        else if (!strcmp(a, "--vocab")) s.vocab = atoi(v);
        else if (!strcmp(a, "--ctx")) s.ctx = atoi(v);
        else if (!strcmp(a, "--dtype")) s.dtype = v;
        else if (!strcmp(a, "--tokens")) s.tokens = atol(v);
        else if (!strcmp(a, "--seed")) s.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--tied")) s.tied = atoi(v);
        else return usage();
    }
    if (!dir) return run_mode(list, keep, threads < 1 ? 1 : threads);
    qd_err err = {{0}};
    if (write_checkpoint(dir, &s, &err)) {
        fprintf(stderr, "bench_scale: %s\n", err.msg);
        return 1;
    }
    return 0;
}
