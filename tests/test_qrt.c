/* The integer runtime on the real stories260K model against the fake-quant simulation with the
 * same encodings (RTN min/max from a calibration pass), W8A8 and W4A8: perplexity within 1% of
 * the simulation's, logits close, top-1 agreement; the artifact round trip gives identical
 * integer logits; incremental decoding equals the batched forward exactly; every ISA path gives
 * identical integers; unknown format versions are refused; metadata claiming sizes its tensors
 * do not hold is refused before anything of that size is allocated. */
#include <math.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "quant/text/data.h"
#include "quant/sim/encodings.h"
#include "quant/fp/forward.h"
#include "quant/text/resolve.h"
#include "quant/rt/runtime.h"
#include "quant/io/safetensors.h"
#include "tests/check.h"
#include "quant/io/load.h"
#include "base/hash.h"

static qd_model *model;
static qd_tokens toks;
#define T_WIN 64
#define N_CAL 8     /* calibration windows (first tokens of the text) */
#define N_EVAL 24   /* evaluation windows (after them: disjoint) */

static int setup(void) {
    qd_err err;
    model = qd_model_load(fixture("models/stories260K.gguf"), &err);
    if (!model) { fprintf(stderr, "%s\n", err.msg); return -1; }
    qd_tokenizer *tok = qd_tok_for_model(model, fixture("models/stories260K.gguf"), NULL, &err);
    if (!tok) { fprintf(stderr, "%s\n", err.msg); return -1; }
    int rc = qd_data_load(fixture("text/tinystories-valid-excerpt.txt"), tok, model->cfg.vocab_size, &toks, &err);
    qd_tok_free(tok);
    if (rc) { fprintf(stderr, "%s\n", err.msg); return -1; }
    if (toks.n < (size_t)(N_CAL + N_EVAL) * T_WIN) { fprintf(stderr, "text too short\n"); return -1; }
    return 0;
}

/* Simulation with RTN ranges (no LET, no clipping) and the encodings read from it. */
static qd_qsim *make_sim(int wbits, qd_qint_enc *enc) {
    qd_err err;
    qd_qsim_opts o;
    qd_qsim_defaults(&o);
    o.wbits = wbits;
    o.train = 0;
    o.Tmax = T_WIN;
    o.Bmax = 4;
    qd_qsim *q = qd_qsim_new(model, &o, &err);
    CHECK(q != NULL, "%s", err.msg);
    if (!q) return NULL;
    q->let_on = 0;
    q->lwc_on = 0;
    qd_qstats *st = qd_qstats_new(&model->cfg);
    CHECK(qd_qsim_collect(q, toks.ids, N_CAL, T_WIN, st, &err) == QD_OK, "%s", err.msg);
    qd_qsim_init_ranges(q, st);
    qd_qstats_free(st);
    CHECK(qd_qint_enc_init(enc, &model->cfg, wbits, NULL, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_qint_enc_from_qsim(enc, q, &err) == QD_OK, "%s", err.msg);
    return q;
}

static void compare_case(int wbits) {
    qd_err err;
    qd_qint_enc enc;
    qd_qsim *sim = make_sim(wbits, &enc);
    if (!sim) return;
    qd_qint *qi = qd_qint_build(model, &enc, &err);
    CHECK(qi != NULL, "%s", err.msg);
    qd_qrt *rt = qi ? qd_qrt_new(qi, NULL, &err) : NULL;
    CHECK(rt != NULL, "%s", err.msg);
    if (!rt) goto out;
    const int *ev = toks.ids + (size_t)N_CAL * T_WIN;
    size_t ne = (size_t)N_EVAL * T_WIN;
    qd_eval_result r_sim, r_int, r_fp;
    CHECK(qd_eval_ppl(qd_qsim_logits_fn, sim, model->cfg.vocab_size, ev, ne, T_WIN, &r_sim, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_eval_ppl(qd_qrt_logits_fn, rt, model->cfg.vocab_size, ev, ne, T_WIN, &r_int, &err) == QD_OK, "%s", err.msg);
    sim->aq_on = sim->wq_on = 0;
    CHECK(qd_eval_ppl(qd_qsim_logits_fn, sim, model->cfg.vocab_size, ev, ne, T_WIN, &r_fp, &err) == QD_OK, "%s", err.msg);
    sim->aq_on = sim->wq_on = 1;
    double rel = fabs(r_int.ppl / r_sim.ppl - 1);
    printf("# W%dA8 ppl: fp32 %.4f  sim %.4f  int %.4f  (int vs sim %+.3f%%; %.0f tok/s int)\n",
           wbits, r_fp.ppl, r_sim.ppl, r_int.ppl, 100 * (r_int.ppl / r_sim.ppl - 1),
           r_int.tokens / r_int.seconds);
    /* the bound: integer-runtime perplexity within 1% of the simulation's */
    CHECK(rel < 0.01, "int ppl %.4f vs sim %.4f", r_int.ppl, r_sim.ppl);

    /* logits of a few windows: top-1 agreement and relative error against the simulation */
    int V = model->cfg.vocab_size, B = 4;
    float *ls = malloc(sizeof(float) * B * T_WIN * V), *li = malloc(sizeof(float) * B * T_WIN * V);
    CHECK(qd_qsim_logits(sim, ev, B, T_WIN, ls, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_qrt_logits_fn(rt, ev, B, T_WIN, li, &err) == QD_OK, "%s", err.msg);
    float *lf = malloc(sizeof(float) * B * T_WIN * V);
    CHECK(qd_forward(model, ev, B, T_WIN, lf, &err) == QD_OK, "%s", err.msg);
    int agree = 0, sim_fp = 0, int_fp = 0;
    double num = 0, den = 0;
    for (int r = 0; r < B * T_WIN; r++) {
        int as = 0, ai = 0, af = 0;
        for (int v = 0; v < V; v++) {
            size_t k = (size_t)r * V + v;
            if (ls[k] > ls[(size_t)r * V + as]) as = v;
            if (li[k] > li[(size_t)r * V + ai]) ai = v;
            if (lf[k] > lf[(size_t)r * V + af]) af = v;
            num += (ls[k] - li[k]) * (ls[k] - li[k]);
            den += ls[k] * ls[k];
        }
        agree += as == ai;
        sim_fp += as == af;
        int_fp += ai == af;
    }
    double n = B * T_WIN, top1 = agree / n, rmse = sqrt(num / den);
    printf("# W%dA8 top-1 agreement: int/sim %.3f, sim/fp32 %.3f, int/fp32 %.3f; relative logit "
           "RMSE int vs sim %.4f\n", wbits, top1, sim_fp / n, int_fp / n, rmse);
    /* bounds: the runtime lands on the simulation's grid points except where fixed-point and
     * float rounding disagree at a boundary; those 1-step flips compound through the layers,
     * so agreement is high but not total. The integer model must match FP32 as well as the
     * simulation does (within 3 points), and its logits stay within 5% RMS of the sim's. */
    CHECK(top1 > 0.9, "top-1 agreement %.3f", top1);
    CHECK(int_fp / n > sim_fp / n - 0.03, "int/fp32 %.3f vs sim/fp32 %.3f", int_fp / n, sim_fp / n);
    CHECK(rmse < 0.05, "relative RMSE %.4f", rmse);
    free(ls);
    free(li);
    free(lf);
out:
    qd_qrt_free(rt);
    qd_qint_free(qi);
    qd_qint_enc_free(&enc);
    qd_qsim_free(sim);
}

/* The optimizer's encodings struct (encodings.h) gives the same integer model as reading the
 * simulation directly. */
static void test_from_encodings(void) {
    qd_err err;
    qd_qint_enc e1;
    qd_qsim *sim = make_sim(8, &e1);
    if (!sim) return;
    qd_encodings *E = qd_encodings_build(sim, model, &err);
    CHECK(E != NULL, "%s", err.msg);
    qd_qint *a = qd_qint_build(model, &e1, &err);
    qd_qint *b = E ? qd_qint_from_encodings(E, &err) : NULL;
    CHECK(a && b, "%s", err.msg);
    if (a && b) {
        qd_qrt *ra = qd_qrt_new(a, NULL, &err), *rb = qd_qrt_new(b, NULL, &err);
        int V = model->cfg.vocab_size, T = 32;
        int16_t *la = malloc(sizeof(int16_t) * T * V), *lb = malloc(sizeof(int16_t) * T * V);
        qd_qrt_kv *kv = qd_qrt_kv_new(ra, T, &err);
        CHECK(qd_qrt_forward_int(ra, kv, toks.ids + 3000, T, 0, la, &err) == QD_OK, "%s", err.msg);
        CHECK(qd_qrt_forward_int(rb, kv, toks.ids + 3000, T, 0, lb, &err) == QD_OK, "%s", err.msg);
        CHECK(!memcmp(la, lb, sizeof(int16_t) * T * V), "integer logits differ");
        qd_qrt_kv_free(kv);
        free(la), free(lb);
        qd_qrt_free(ra), qd_qrt_free(rb);
    }
    qd_qint_free(a), qd_qint_free(b);
    qd_encodings_free(E);
    qd_qint_enc_free(&e1);
    qd_qsim_free(sim);
}

static void test_w8a8_vs_sim(void) { compare_case(8); }
static void test_w4a8_vs_sim(void) { compare_case(4); }

/* Artifact round trip, incremental decode == batched, every ISA identical. */
static void test_roundtrip_decode_isa(void) {
    qd_err err;
    qd_qint_enc enc;
    CHECK(qd_qint_enc_rtn(&enc, model, 4, toks.ids, N_CAL, T_WIN, &err) == QD_OK, "%s", err.msg);
    qd_qint *qi = qd_qint_build(model, &enc, &err);
    CHECK(qi != NULL, "%s", err.msg);
    if (!qi) return;
    snprintf(qi->method, sizeof qi->method, "rtn");
    CHECK(qd_sha256_path(fixture("models/stories260K.gguf"), qi->source_sha256, &err) == QD_OK, "%s", err.msg);
    char path[] = "/tmp/qd_test_qrt_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(qd_qint_save(qi, path, &err) == QD_OK, "%s", err.msg);
    qd_qrt *a = qd_qrt_new(qi, NULL, &err);
    qd_qrt *b = qd_qrt_load(path, NULL, &err);
    CHECK(a && b, "%s", err.msg);
    if (!a || !b) goto out;
    CHECK(!strcmp(qd_qrt_model(b)->source_sha256, qi->source_sha256), "sha256 lost");
    int V = model->cfg.vocab_size, T = 40;
    const int *tk = toks.ids + 1000;
    int16_t *la = malloc(sizeof(int16_t) * T * V), *lb = malloc(sizeof(int16_t) * T * V);
    qd_qrt_kv *kv = qd_qrt_kv_new(a, T, &err);
    CHECK(qd_qrt_forward_int(a, kv, tk, T, 0, la, &err) == QD_OK, "%s", err.msg);
    /* loaded artifact, fed one token at a time */
    for (int t = 0; t < T; t++)
        CHECK(qd_qrt_forward_int(b, kv, tk + t, 1, t, lb + (size_t)t * V, &err) == QD_OK, "%s", err.msg);
    CHECK(!memcmp(la, lb, sizeof(int16_t) * T * V), "loaded/incremental logits differ");
    for (int i = 0; i < QD_ISA_COUNT; i++) {
        if (!qd_isa_supported((qd_isa)i)) { printf("SKIP isa %s: unsupported\n", qd_isa_name((qd_isa)i)); continue; }
        qd_qrt_opts o;
        qd_qrt_defaults(&o);
        o.isa = (qd_isa)i;
        o.chunk = 7; /* odd chunking must not matter either */
        qd_qrt *c = qd_qrt_new(qi, &o, &err);
        CHECK(c != NULL, "%s", err.msg);
        if (!c) continue;
        CHECK(qd_qrt_forward_int(c, kv, tk, T, 0, lb, &err) == QD_OK, "%s", err.msg);
        CHECK(!memcmp(la, lb, sizeof(int16_t) * T * V), "isa %s differs", qd_isa_name((qd_isa)i));
        qd_qrt_free(c);
    }
    qd_qrt_kv_free(kv);
    free(la);
    free(lb);
out:
    qd_qrt_free(a);
    qd_qrt_free(b);
    qd_qint_free(qi);
    qd_qint_enc_free(&enc);
    unlink(path);
}

/* A file claiming another version (or another format) is refused with a message saying so. */
static void test_version_refused(void) {
    qd_err err;
    char path[] = "/tmp/qd_test_qver_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    int32_t x = 0;
    qd_st_wtensor t = {.name = "x", .dtype = QD_ST_I32, .ndim = 1, .shape = {1}, .data = &x};
    const char *meta2[] = {"format", QD_QINT_FORMAT, "format_version", "2", NULL};
    CHECK(qd_st_write(path, &t, 1, meta2, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_qint_load(path, &err) == NULL, "version 2 accepted");
    CHECK(strstr(err.msg, "version 2 is not supported") != NULL, "message: %s", err.msg);
    const char *meta3[] = {"format", "something.else", NULL};
    CHECK(qd_st_write(path, &t, 1, meta3, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_qint_load(path, &err) == NULL && strstr(err.msg, "not a quantd integer model"), "message: %s", err.msg);
    unlink(path);
}

/* An artifact whose architecture claims dim = 65536 with n_heads x head_dim = 65536 (a 4 GiB
 * q_proj at 8 bits, 2 GiB at 4) but whose tensors hold one element: the reader must refuse it
 * by the tensor's real size. The load runs in a child whose address space is capped at 256 MiB
 * above what it already maps, so a reader that allocated from the metadata first fails with
 * "out of memory" instead of naming the tensor (under AddressSanitizer, which reserves terabytes
 * of shadow memory, the cap is left off and only the message is checked). */
static void huge_claim_case(qd_st_dtype wdtype, const char *want) {
    char path[] = "/tmp/qd_test_qhuge_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    qd_err err;
    int8_t w = 1;
    float sc = 1.0f;
    int32_t zp = 0;
    qd_st_wtensor t[3] = {
        {.name = "model.layers.0.self_attn.q_proj.weight", .dtype = wdtype, .ndim = 1, .shape = {1}, .data = &w},
        {.name = "model.layers.0.self_attn.q_proj.weight_scale", .dtype = QD_ST_F32, .ndim = 1, .shape = {1}, .data = &sc},
        {.name = "model.layers.0.self_attn.q_proj.weight_zero_point", .dtype = QD_ST_I32, .ndim = 1, .shape = {1}, .data = &zp},
    };
    const char *arch = "{\"arch\":\"llama\",\"dim\":65536,\"hidden_dim\":65536,\"n_layers\":1,"
                       "\"n_heads\":256,\"n_kv_heads\":256,\"head_dim\":256,\"vocab_size\":1048576,"
                       "\"max_seq_len\":1048576,\"tied_embeddings\":1,\"qkv_bias\":0,\"bos_id\":1,"
                       "\"eos_id\":2,\"norm_eps\":1e-5,\"rope_theta\":10000}";
    const char *meta[] = {"format", QD_QINT_FORMAT, "format_version", "1", "architecture", arch, NULL};
    CHECK(qd_st_write(path, t, 3, meta, &err) == QD_OK, "%s", err.msg);
    int pfd[2];
    CHECK(pipe(pfd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
#if !defined(__SANITIZE_ADDRESS__)
        long vm_kb = 0;
        FILE *st = fopen("/proc/self/status", "r");
        char line[256];
        while (st && fgets(line, sizeof line, st))
            if (!strncmp(line, "VmSize:", 7)) vm_kb = atol(line + 7);
        if (st) fclose(st);
        struct rlimit rl = {.rlim_cur = (rlim_t)(vm_kb + (256 << 10)) << 10};
        rl.rlim_max = rl.rlim_cur;
        setrlimit(RLIMIT_AS, &rl);
#endif
        qd_err e2;
        qd_qint *q = qd_qint_load(path, &e2);
        if (write(pfd[1], q ? "loaded" : e2.msg, strlen(q ? "loaded" : e2.msg)) < 0) _exit(2);
        _exit(0);
    }
    close(pfd[1]);
    char msg[512] = "";
    ssize_t n = read(pfd[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = 0;
    close(pfd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    CHECK(strstr(msg, want) != NULL, "message: %s (want %s)", msg, want);
    unlink(path);
}

static void test_huge_claim_int8(void) {
    huge_claim_case(QD_ST_I8, "q_proj.weight has 1 elements, expected 4294967296");
}

static void test_huge_claim_int4(void) {
    huge_claim_case(QD_ST_U8, "q_proj.weight has 1 elements, expected 2147483648");
}

int main(void) {
    RUN(test_huge_claim_int8); /* before setup: the child forks from a process without threads */
    RUN(test_huge_claim_int4);
    if (setup()) {
        printf("FAIL setup: fixtures\n");
        return 1;
    }
    RUN(test_version_refused);
    RUN(test_roundtrip_decode_isa);
    RUN(test_from_encodings);
    RUN(test_w8a8_vs_sim);
    RUN(test_w4a8_vs_sim);
    qd_tokens_free(&toks);
    qd_model_free(model);
    return CHECK_DONE();
}
