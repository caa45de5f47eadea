/* Random-weight checkpoints (tests/synth.h) written as Hugging Face directories, for tests and
 * benchmarks that need a model larger than the fixtures:
 *
 *   bench_scale --write DIR [--dim D --hidden F --layers L --heads H --kv-heads K --vocab V
 *                            --ctx C --dtype F32|BF16 --tokens N --seed S]
 * writes one checkpoint into DIR (config.json + model.safetensors) and, with --tokens N,
 * DIR/tokens.u32.bin: N random token ids (pre-tokenized calibration data, no tokenizer
 * needed). tests/e2e_stop.sh uses it for a model whose phases each last a few seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fs.h"
#include "quant/io/load.h"
#include "tests/synth.h"

typedef struct {
    int dim, hidden, layers, heads, kv_heads, vocab, ctx;
    const char *dtype;
    long tokens;
    uint64_t seed;
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
    c.tied_embeddings = 0;
    qd_model *m = synth_model(&c, s->seed, err);
    if (!m) return QD_ERR;
    int rc = qd_mkdir_p(dir, err) || qd_save_hf(m, dir, s->dtype, err);
    qd_model_free(m);
    if (rc) return QD_ERR;
    return s->tokens > 0 ? write_tokens(dir, s->tokens, s->vocab, s->seed, err) : QD_OK;
}

static int usage(void) {
    fprintf(stderr, "usage: bench_scale --write DIR [--dim D] [--hidden F] [--layers L] "
                    "[--heads H] [--kv-heads K] [--vocab V] [--ctx C] [--dtype F32|BF16] "
                    "[--tokens N] [--seed S]\n");
    return 2;
}

int main(int argc, char **argv) {
    shape s = {256, 704, 4, 8, 8, 4096, 512, "F32", 0, 1};
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        i++;
        if (!strcmp(a, "--write")) dir = v;
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
        else return usage();
    }
    if (argc == 1) { /* `make bench` runs every benchmark without arguments */
        printf("bench_scale: nothing to measure without --write (see its header)\n");
        return 0;
    }
    if (!dir) return usage();
    qd_err err = {{0}};
    if (write_checkpoint(dir, &s, &err)) {
        fprintf(stderr, "bench_scale: %s\n", err.msg);
        return 1;
    }
    return 0;
}
