/* quantd: one binary, many subcommands (serve, work, quantize, eval, generate, tokenize,
 * inspect). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} subcommand;

static const subcommand commands[] = {
    {"eval", cmd_eval, "perplexity of a checkpoint on a text or token file"},
    {"generate", cmd_generate, "sample text from a checkpoint"},
    {"quantize", cmd_quantize, "the whole quantization pipeline offline, writes report.json"},
    {"tokenize", cmd_tokenize, "text to token ids (JSON arrays, or a pre-tokenized .u32.bin)"},
    {"inspect", cmd_inspect, "architecture, tensors, dtypes and sizes of a checkpoint"},
    {"serve", cmd_serve, "the HTTP service: uploads, job queue, workers, artifacts"},
    {"work", cmd_work, "run one job directory (what the service's dispatcher starts)"},
    {"client", cmd_client, "CI client: submit, wait, gate, download (quantd client --help)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: quantd <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`quantd <command> --help` for the options of one command.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "quantd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
