/* quantd generate: greedy or temperature sampling from a checkpoint with the KV-cache decode
 * path. Without a prompt it starts from BOS alone. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/runner.h"

enum { O_MODEL = CLI_KEY, O_TOKENIZER, O_PROMPT, O_TEMP, O_SEED, O_THREADS };

static const cli_opt opts[] = {
    {"model", O_MODEL, "PATH", "checkpoint, or an integer artifact model.qint.safetensors"},
    {"prompt", O_PROMPT, "S", "text to continue (default: start from BOS)"},
    {"tokens", 'n', "N", "tokens to generate (default 128; stops early at BOS/EOS)"},
    {"temp", O_TEMP, "T", "0 = greedy (default), else softmax temperature"},
    {"seed", O_SEED, "S", "sampling seed (default 0)"},
    {"tokenizer", O_TOKENIZER, "PATH", "tokenizer.bin / tokenizer.json / .gguf (default: the model's own)"},
    {"threads", O_THREADS, "N", "integer runtime threads (default 0: all CPUs)"},
    {0}};

/* xorshift64*: small, fast, and the same sequence on every platform. */
static uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static int sample(const float *logits, int V, float temp, uint64_t *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temp <= 0) return best;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((logits[i] - logits[best]) / temp);
    double r = (double)(rng_next(rng) >> 11) / 9007199254740992.0 * sum, acc = 0;
    for (int i = 0; i < V; i++) {
        acc += exp((logits[i] - logits[best]) / temp);
        if (acc >= r) return i;
    }
    return V - 1;
}

int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL, *prompt = NULL;
    long n = 128, threads = 0;
    double temp = 0;
    uint64_t seed = 0;
    cli_args a;
    cli_args_init(&a, "quantd generate", "--model PATH|ART.qint.safetensors [--prompt S] [-n N] "
                  "[--temp T] [--seed S] [--tokenizer PATH] [--threads N]", opts, argc, argv);
    for (int c; (c = cli_next(&a)) != CLI_END;) {
        switch (c) {
        case O_MODEL: model_path = a.val; break;
        case O_TOKENIZER: tok_path = a.val; break;
        case O_PROMPT: prompt = a.val; break;
        case 'n':
            if (cli_int(&a, a.val, 1, QD_MAX_CTX, &n)) return 2;
            break;
        case O_TEMP:
            if (cli_double(&a, a.val, 0, 100, &temp)) return 2;
            break;
        case O_SEED:
            if (cli_u64(&a, a.val, &seed)) return 2;
            break;
        case O_THREADS:
            if (cli_int(&a, a.val, 0, QD_QRT_MAX_THREADS, &threads)) return 2;
            break;
        case CLI_HELP: cli_help(&a); return 0;
        default: return 2;
        }
    }
    if (a.optind < argc) {
        cli_fail(&a, "unexpected operand '%s'", argv[a.optind]);
        return 2;
    }
    if (!model_path) {
        cli_fail(&a, "--model is required");
        cli_usage(&a, stderr);
        return 2;
    }
    qd_err err = {{0}};
    runner r;
    if (runner_open(&r, model_path, (int)threads, &err)) {
        fprintf(stderr, "quantd generate: %s\n", err.msg);
        return 1;
    }
    int rc = 1, *ids = NULL;
    size_t n_ids = 0;
    float *logits = NULL;
    qd_tokenizer *tok = runner_tokenizer(&r, model_path, tok_path, &err);
    if (!tok) goto out;
    int bos = qd_tok_bos(tok), eos = qd_tok_eos(tok);
    if (prompt) {
        if (qd_tok_encode(tok, prompt, strlen(prompt), 1, &ids, &n_ids, &err)) goto out;
    } else {
        ids = malloc(sizeof(int));
        if (!ids) goto out;
        ids[0] = bos >= 0 ? bos : 1;
        n_ids = 1;
    }
    long total = (long)n_ids + n;
    if (runner_decode_init(&r, (int)total, &err)) goto out;
    if (!(logits = malloc(sizeof(float) * r.vocab_size))) goto out;
    uint64_t rng = seed * 0x9E3779B97F4A7C15ULL + 1;
    int prev = ids[0], pos = 0;
    for (size_t i = 0; i < n_ids; i++, pos++) {
        if (runner_decode(&r, ids[i], pos, logits, &err)) goto out;
        if (i > 0) {
            size_t len;
            const char *p = qd_tok_piece(tok, prev, ids[i], &len);
            fwrite(p, 1, len, stdout);
            prev = ids[i];
        }
    }
    for (long s = 0; s < n; s++, pos++) {
        int next = sample(logits, r.vocab_size, (float)temp, &rng);
        if (next == bos || next == eos) break;
        size_t len;
        const char *p = qd_tok_piece(tok, prev, next, &len);
        fwrite(p, 1, len, stdout);
        fflush(stdout);
        prev = next;
        if (s + 1 < n && runner_decode(&r, next, pos, logits, &err)) goto out;
    }
    putchar('\n');
    rc = 0;
out:
    if (rc) fprintf(stderr, "quantd generate: %s\n", err.msg[0] ? err.msg : "out of memory");
    free(ids);
    free(logits);
    qd_tok_free(tok);
    runner_close(&r);
    return rc;
}
