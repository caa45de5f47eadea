/* Option parsing on getopt_long for every subcommand (args.h). getopt's own messages are off
 * (opterr = 0): every complaint is printed here, in one shape. */
#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define HELP_KEY 'h'

void cli_args_init(cli_args *a, const char *prog, const char *synopsis, const cli_opt *opts,
                   int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->prog = prog;
    a->synopsis = synopsis;
    a->opts = opts;
    a->argc = argc;
    a->argv = argv;
    a->optind = argc;
    int n = 0;
    for (; opts && opts[n].name && n < CLI_MAX_OPTS; n++)
        a->lo[n] = (struct option){opts[n].name, opts[n].arg ? required_argument : no_argument,
                                   NULL, opts[n].key};
    a->lo[n++] = (struct option){"help", no_argument, NULL, HELP_KEY};
    a->lo[n] = (struct option){0};
}

static const struct option *by_key(const cli_args *a, int key) {
    for (const struct option *o = a->lo; o->name; o++)
        if (o->val == key) return o;
    return NULL;
}

/* The short-option string: '+' (stop at the first operand) when asked, ':' so that a missing
 * value is told apart from an unknown option, then the letters. */
static void build_short(cli_args *a) {
    size_t k = 0;
    if (a->stop_at_operand) a->so[k++] = '+';
    a->so[k++] = ':';
    for (const struct option *o = a->lo; o->name && k + 3 < sizeof a->so; o++)
        if (o->val > 0 && o->val < 128) {
            a->so[k++] = (char)o->val;
            if (o->has_arg == required_argument) a->so[k++] = ':';
        }
    a->so[k] = 0;
}

int cli_fail(const cli_args *a, const char *fmt, ...) {
    fprintf(stderr, "%s: ", a->prog);
    if (a->opt[0]) fprintf(stderr, "%s: ", a->opt);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_BAD;
}

int cli_next(cli_args *a) {
    if (!a->so[0]) {
        build_short(a);
        optind = 0; /* GNU: start a fresh scan (this process may have parsed before) */
    }
    opterr = 0;
    a->val = NULL;
    a->opt[0] = 0;
    int idx = -1;
    int c = getopt_long(a->argc, a->argv, a->so, a->lo, &idx);
    if (c == -1) {
        a->optind = optind;
        return CLI_END;
    }
    if (c == '?' || c == ':') {
        const char *typed = optind > 0 && optind <= a->argc ? a->argv[optind - 1] : "";
        const struct option *o = optopt ? by_key(a, optopt) : NULL;
        if (o && o->val >= 128) snprintf(a->opt, sizeof a->opt, "--%s", o->name);
        else if (o && !strncmp(typed, "--", 2)) snprintf(a->opt, sizeof a->opt, "--%s", o->name);
        else if (o) snprintf(a->opt, sizeof a->opt, "-%c", o->val);
        if (c == ':') return cli_fail(a, "needs a value (%s --help)", a->prog);
        if (o && strchr(typed, '=')) return cli_fail(a, "takes no value");
        a->opt[0] = 0;
        if (optopt && !o)
            return cli_fail(a, "unknown option '-%c' (%s --help lists the options)", optopt,
                            a->prog);
        return cli_fail(a, "unknown option '%s' (%s --help lists the options)", typed, a->prog);
    }
    if (idx >= 0) snprintf(a->opt, sizeof a->opt, "--%s", a->lo[idx].name);
    else snprintf(a->opt, sizeof a->opt, "-%c", c);
    if (c == HELP_KEY) return CLI_HELP;
    a->val = optarg;
    return c;
}

void cli_usage(const cli_args *a, FILE *f) {
    fprintf(f, "usage: %s %s\n", a->prog, a->synopsis ? a->synopsis : "");
}

static void print_opt(const char *shortname, const char *name, const char *arg, const char *help) {
    char head[80];
    int n = snprintf(head, sizeof head, "  %s%s--%s%s%s", shortname, shortname[0] ? ", " : "",
                     name, arg ? " " : "", arg ? arg : "");
    printf("%s", head);
    int col = n < 0 ? 0 : n;
    if (col > 26) {
        printf("\n");
        col = 0;
    }
    printf("%*s", 28 - col, "");
    for (const char *p = help ? help : ""; *p; p++) {
        putchar(*p);
        if (*p == '\n') printf("%28s", "");
    }
    putchar('\n');
}

void cli_help(const cli_args *a) {
    cli_usage(a, stdout);
    printf("\n");
    for (const cli_opt *o = a->opts; o && o->name; o++) {
        char sn[4] = "";
        if (o->key > 0 && o->key < 128) snprintf(sn, sizeof sn, "-%c", o->key);
        print_opt(sn, o->name, o->arg, o->help);
    }
    print_opt("-h", "help", NULL, "this text");
    if (a->epilog) printf("\n%s", a->epilog);
    fflush(stdout);
}

int cli_int(const cli_args *a, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return cli_fail(a, "'%s' is not an integer in [%ld, %ld]", s, lo, hi);
    *out = v;
    return 0;
}

int cli_double(const cli_args *a, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || !(v >= lo && v <= hi))
        return cli_fail(a, "'%s' is not a number in [%g, %g]", s, lo, hi);
    *out = v;
    return 0;
}

int cli_u64(const cli_args *a, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return cli_fail(a, "'%s' is not a non-negative integer", s);
    *out = v;
    return 0;
}

int cli_int_choice(const cli_args *a, const char *s, const int *allowed, int n,
                   const char *names, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    for (int i = 0; !errno && end != s && !*end && i < n; i++)
        if (v == allowed[i]) {
            *out = allowed[i];
            return 0;
        }
    return cli_fail(a, "'%s' is not one of %s", s, names);
}

int cli_word(const cli_args *a, const char *s, bool (*ok)(const char *), const char *names) {
    if (ok(s)) return 0;
    return cli_fail(a, "'%s' is not one of %s", s, names);
}
