/* The process-wide stop request (stop.h). */
#include "base/stop.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>

static atomic_int requested;
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "a signal handler may store the stop request");

void qd_stop_request(void) { atomic_store_explicit(&requested, 1, memory_order_relaxed); }

bool qd_stop_requested(void) { return atomic_load_explicit(&requested, memory_order_relaxed); }

void qd_stop_clear(void) { atomic_store_explicit(&requested, 0, memory_order_relaxed); }

int qd_stopped(qd_err *err) { return qd_errf(err, "stopped by request"); }

int qd_stop_status(int rc) { return rc != QD_OK && qd_stop_requested() ? QD_STOPPED : rc; }

/* A second Ctrl-C is the impatient user's: the default action, now, without the checkpoint. */
static void on_signal(int sig) {
    if (sig == SIGINT && qd_stop_requested()) {
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
        return;
    }
    qd_stop_request();
}

void qd_stop_on_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}
