/* Option parsing for every subcommand, on getopt_long: `--opt=value` and `--opt value` both
 * work, options and operands may come in any order, `--help`/`-h` is the same everywhere,
 * and every complaint has one shape, "PROG: --opt: what is wrong", e.g.
 *   quantd quantize: --wbits: '3' is not one of 4, 8
 * A subcommand lists its options in a cli_opt table; the table also prints its --help:
 *
 *   static const cli_opt opts[] = {
 *       {"model", 'm', "PATH", "checkpoint: .gguf, HF directory, llama2.c .bin"},
 *       {"json", 'j', NULL, "JSON on stdout"},
 *       {0}};
 *   cli_args a;
 *   cli_args_init(&a, "quantd eval", "--model PATH [--json]", opts, argc, argv);
 *   for (int c; (c = cli_next(&a)) != CLI_END;)
 *       switch (c) {
 *       case 'm': model = a.val; break;
 *       case CLI_HELP: return cli_help(&a), 0;
 *       default: return 2;            (CLI_BAD: already explained on stderr)
 *       }
 *   operands: a.argv[a.optind .. a.argc)
 *
 * Keys are the option's short letter where it has one; options with no short form use keys
 * from CLI_KEY up. */
#ifndef QD_ARGS_H
#define QD_ARGS_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CLI_END (-1)
#define CLI_BAD (-2)  /* a usage error, already printed */
#define CLI_HELP (-3) /* --help or -h */
#define CLI_KEY 256   /* first key for options without a short letter */
#define CLI_MAX_OPTS 64

/* One option: long name (no dashes), key (a short letter, or CLI_KEY + n for none), the
 * value's name in the help (NULL: the option takes no value) and a one-line help text
 * (continuation lines start with '\n'). A table ends with an entry whose name is NULL. */
typedef struct cli_opt {
    const char *name;
    int key;
    const char *arg;
    const char *help;
} cli_opt;

typedef struct cli_args {
    const char *prog;     /* "quantd quantize": the start of every message */
    const char *synopsis; /* the usage line after prog */
    const cli_opt *opts;
    const char *epilog;   /* printed after the options by cli_help, or NULL */
    int argc;
    char **argv;          /* argv[0] is the subcommand's name */
    bool stop_at_operand; /* stop at the first operand (a command's own subcommand) */
    /* filled by cli_next */
    const char *val;      /* the option's value */
    char opt[72];         /* the option as a message names it: "--wbits", "-n" */
    int optind;           /* after CLI_END: index of the first operand */
    /* getopt_long's tables */
    struct option lo[CLI_MAX_OPTS + 2];
    char so[3 * CLI_MAX_OPTS + 8];
} cli_args;

/* Prepares a parse of argv[1..argc) against opts (which gets --help/-h added). */
void cli_args_init(cli_args *a, const char *prog, const char *synopsis, const cli_opt *opts,
                   int argc, char **argv);

/* The next option's key (a.val holds its value), CLI_HELP, CLI_BAD (explained on stderr) or
 * CLI_END; after CLI_END the operands are argv[a.optind..argc). */
int cli_next(cli_args *a);

/* The usage line, the options with their help, and the epilog, to stdout. */
void cli_help(const cli_args *a);
/* The usage line to f. */
void cli_usage(const cli_args *a, FILE *f);

/* "PROG: OPT: message" on stderr (OPT: the option being parsed, left out when empty); returns
 * CLI_BAD. */
int cli_fail(const cli_args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Value parsers for the current option's value s: 0 on success, CLI_BAD after printing
 * "PROG: --opt: 'S' is not ...". */
int cli_int(const cli_args *a, const char *s, long lo, long hi, long *out);
int cli_double(const cli_args *a, const char *s, double lo, double hi, double *out);
int cli_u64(const cli_args *a, const char *s, uint64_t *out);
/* s must be one of the n integers in allowed, listed as `names` in the message ("4, 8"). */
int cli_int_choice(const cli_args *a, const char *s, const int *allowed, int n,
                   const char *names, int *out);
/* s must satisfy ok(); `names` lists what would. */
int cli_word(const cli_args *a, const char *s, bool (*ok)(const char *), const char *names);

#endif
