/* quantd eval: perplexity of a checkpoint over non-overlapping windows of a text or token
 * file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "quant/text/data.h"
#include "quant/fp/forward.h"
#include "cli/runner.h"

enum { O_MODEL = CLI_KEY, O_DATA, O_TOKENIZER, O_CTX, O_THREADS, O_JSON };

static const cli_opt opts[] = {
    {"model", O_MODEL, "PATH", "checkpoint: .gguf, Hugging Face directory, llama2.c .bin, or an\n"
                               "integer artifact model.qint.safetensors (integer runtime)"},
    {"data", O_DATA, "PATH", ".txt, .jsonl (\"text\" field) or pre-tokenized .bin"},
    {"tokenizer", O_TOKENIZER, "PATH", "tokenizer.bin / tokenizer.json / .gguf (default: the model's own)"},
    {"ctx", O_CTX, "N", "window length in tokens, at most the model's context\n"
                        "(default 256, or the context when it is shorter)"},
    {"threads", O_THREADS, "N", "integer runtime threads (default 0: all CPUs)"},
    {"json", O_JSON, NULL, "print one JSON object instead of text"},
    {0}};

int cmd_eval(int argc, char **argv) {
    const char *model_path = NULL, *data_path = NULL, *tok_path = NULL;
    long ctx = 0, threads = 0;
    int json = 0;
    cli_args a;
    cli_args_init(&a, "quantd eval", "--model PATH --data PATH [--tokenizer PATH] [--ctx N] "
                  "[--threads N] [--json]", opts, argc, argv);
    for (int c; (c = cli_next(&a)) != CLI_END;) {
        switch (c) {
        case O_MODEL: model_path = a.val; break;
        case O_DATA: data_path = a.val; break;
        case O_TOKENIZER: tok_path = a.val; break;
        case O_CTX:
            if (cli_int(&a, a.val, 2, QD_MAX_CTX, &ctx)) return 2;
            break;
        case O_THREADS:
            if (cli_int(&a, a.val, 0, QD_QRT_MAX_THREADS, &threads)) return 2;
            break;
        case O_JSON: json = 1; break;
        case CLI_HELP: cli_help(&a); return 0;
        default: return 2;
        }
    }
    if (a.optind < argc) {
        cli_fail(&a, "unexpected operand '%s'", argv[a.optind]);
        return 2;
    }
    if (!model_path || !data_path) {
        cli_fail(&a, "--model and --data are required");
        cli_usage(&a, stderr);
        return 2;
    }
    qd_err err = {{0}};
    runner r;
    if (runner_open(&r, model_path, (int)threads, &err)) {
        fprintf(stderr, "quantd eval: %s\n", err.msg);
        return 1;
    }
    int rc = 1;
    qd_tokens toks = {0};
    /* a window past the context would run the model where it was never trained (the FP32
     * forward) or past the integer runtime's RoPE tables: refused as a bad --ctx */
    if (ctx > r.ctx) {
        fprintf(stderr, "quantd eval: --ctx: '%ld' is past the model's context (%d tokens)\n",
                ctx, r.ctx);
        runner_close(&r);
        return 2;
    }
    if (ctx == 0) ctx = r.ctx < 256 ? r.ctx : 256;
    qd_tokenizer *tok = NULL;
    int fmt = qd_data_format_of(data_path);
    int pretokenized = fmt == QD_DATA_U16 || fmt == QD_DATA_U32;
    if (!pretokenized && !(tok = runner_tokenizer(&r, model_path, tok_path, &err))) goto out;
    if (qd_data_load(data_path, tok, r.vocab_size, &toks, &err)) goto out;
    qd_eval_result res;
    if (qd_eval_ppl(runner_logits, &r, r.vocab_size, toks.ids, toks.n, (int)ctx, &res, &err))
        goto out;
    double tps = res.seconds > 0 ? (double)toks.n / res.seconds : 0;
    if (json)
        printf("{\"runtime\":\"%s\",\"ppl\":%.6f,\"nll\":%.6f,\"tokens\":%zu,\"ctx\":%ld,"
               "\"seconds\":%.4f,\"tokens_per_s\":%.1f}\n",
               r.kind, res.ppl, res.nll, res.tokens, ctx, res.seconds, tps);
    else
        printf("perplexity %.4f  (%s, nll %.5f nats/token, %zu predicted tokens, ctx %ld, "
               "%.2f s, %.0f tokens/s)\n",
               res.ppl, r.kind, res.nll, res.tokens, ctx, res.seconds, tps);
    rc = 0;
out:
    if (rc) fprintf(stderr, "quantd eval: %s\n", err.msg);
    qd_tokens_free(&toks);
    qd_tok_free(tok);
    runner_close(&r);
    return rc;
}
