/* quantd work JOBDIR: runs one job; what the dispatchers start. Exit status: 0 done, 1 failed,
 * 2 usage, 3 stopped with a checkpoint (resumable). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "worker/worker.h"

int cmd_work(int argc, char **argv) {
    const char *dir = NULL;
    int fd = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: quantd work JOBDIR [--events-fd N]\n");
            return 0;
        } else if (!strcmp(argv[i], "--events-fd") && i + 1 < argc) {
            char *e;
            long v = strtol(argv[++i], &e, 10);
            if (*e || v < 0 || v > 65535) {
                fprintf(stderr, "quantd work: --events-fd takes a file descriptor number\n");
                return WK_EXIT_USAGE;
            }
            fd = (int)v;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "quantd work: unknown option '%s'\n", argv[i]);
            return WK_EXIT_USAGE;
        } else {
            dir = argv[i];
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: quantd work JOBDIR [--events-fd N]\n");
        return WK_EXIT_USAGE;
    }
    return wk_run(dir, fd);
}
