/* quantd work JOBDIR: runs one job; what the dispatchers start. Exit status: 0 done, 1 failed,
 * 2 usage, 3 stopped with a checkpoint (resumable). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "worker/check.h"
#include "worker/worker.h"

static const cli_opt opts[] = {
    {"events-fd", 'e', "N", "also write the progress events as JSON lines to this descriptor"},
    {"check", 'c', NULL, "check a job before it is accepted (the server's door): DIR holds "
                         "input.json; one JSON answer on stdout"},
    {0}};

int cmd_work(int argc, char **argv) {
    long fd = -1;
    int check = 0;
    cli_args a;
    cli_args_init(&a, "quantd work", "JOBDIR [--events-fd N] | --check DIR", opts, argc, argv);
    for (int c; (c = cli_next(&a)) != CLI_END;) {
        if (c == 'c') {
            check = 1;
        } else if (c == 'e') {
            if (cli_int(&a, a.val, 0, 65535, &fd)) return WK_EXIT_USAGE;
        } else if (c == CLI_HELP) {
            cli_help(&a);
            return 0;
        } else {
            return WK_EXIT_USAGE;
        }
    }
    if (argc - a.optind != 1) {
        cli_fail(&a, argc == a.optind ? "a JOBDIR is required" : "one JOBDIR only");
        cli_usage(&a, stderr);
        return WK_EXIT_USAGE;
    }
    if (check) return wk_check_dir(argv[a.optind]);
    return wk_run(argv[a.optind], (int)fd);
}
