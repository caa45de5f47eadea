/* Subcommands of the quantd binary. Each takes argc/argv starting at the subcommand name and
 * returns the process exit status. */
#ifndef QD_CLI_H
#define QD_CLI_H

#include <stdio.h>

int cmd_inspect(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_work(int argc, char **argv);
int cmd_client(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

/* A report's headline figures (result: a job's result, or api_report_headline of a
 * report.json) as the client's table: perplexity, KL and top-1 per variant, then the sizes. */
struct cJSON;
void cli_print_figures(const struct cJSON *result, FILE *f);

#endif
