/* A process-wide stop request. SIGTERM and SIGINT (qd_stop_on_signals), or a caller
 * (qd_stop_request), raise it; the pipeline's long loops poll qd_stop_requested() once per
 * window, layer, block or optimizer step and return early (qd_stopped), so that a stop is
 * honoured within a fraction of a second in every phase. One flag for the whole process
 * because a signal is: a worker or `quantd quantize` runs one pipeline. A lock-free atomic,
 * so the handler and every thread may touch it. */
#ifndef QD_BASE_STOP_H
#define QD_BASE_STOP_H

#include <stdbool.h>

#include "base/err.h"

/* What a pipeline returns when it stopped on request (QD_OK 0, QD_ERR -1 otherwise). */
#define QD_STOPPED 1

/* Raises the request (async-signal-safe). */
void qd_stop_request(void);
/* True once the request is raised. */
bool qd_stop_requested(void);
/* Lowers it again (tests that run several pipelines in one process). */
void qd_stop_clear(void);
/* For a loop that noticed the request: says so in err and returns QD_ERR; the pipeline's top
 * level turns any failure while the request is raised into QD_STOPPED (qd_stop_status). */
int qd_stopped(qd_err *err);
/* rc, or QD_STOPPED when rc is a failure and the request is raised. */
int qd_stop_status(int rc);
/* Installs handlers for SIGTERM and SIGINT that raise the request (a process's top level); a
 * second SIGINT ends the process at once (the default action). */
void qd_stop_on_signals(void);

#endif
