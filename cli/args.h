/* Small helpers for the subcommands' flag parsing: every numeric flag is range-checked and a
 * bad value names the flag. */
#ifndef QD_ARGS_H
#define QD_ARGS_H

#include <stdint.h>

/* Parses s as an integer in [lo, hi] into *out; prints "quantd: FLAG: ..." and returns -1 on
 * failure. */
int arg_int(const char *flag, const char *s, long lo, long hi, long *out);
int arg_double(const char *flag, const char *s, double lo, double hi, double *out);
int arg_u64(const char *flag, const char *s, uint64_t *out);

/* Value of a flag that needs one: argv[*i+1], advancing *i; prints an error and returns NULL
 * when missing. */
const char *arg_next(int argc, char **argv, int *i);

#endif
