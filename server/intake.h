/* The intake: the thread that accepts connections and reads each request's head before the HTTP
 * library sees it.
 *
 * libmicrohttpd answers a malformed request itself, with HTML bodies compiled into it (505,
 * 400, 413, 414, 431, ...), and offers no hook to replace them. So quantd accepts connections
 * itself: one thread, epoll, every socket non-blocking. It peeks at each connection's bytes
 * (MSG_PEEK: nothing is consumed) until the head is complete, and checks it (server/head.h). A
 * valid head is handed on, with its bytes still unread, to the HTTP library (srv_intake_opts.
 * hand_on: MHD_add_connection); a bad one is answered in quantd's JSON error shape, the rest of
 * what the client sends is read and dropped for a moment (so that closing does not reset the
 * connection under the answer) and the connection is closed. Every response carries
 * "Connection: close" (http.c), so each connection carries one request and every request's head
 * passes here.
 *
 * The guard (guard.h) admits connections here, at accept, and its header deadline runs from
 * here: it shuts a stalled connection down, which the intake sees as the end of the stream. A
 * connection refused by the guard gets a JSON 429, one past max_pending a JSON 503. */
#ifndef QD_SRV_INTAKE_H
#define QD_SRV_INTAKE_H

#include <stdbool.h>
#include <sys/socket.h>

#include "base/err.h"
#include "server/guard.h"
#include "server/metrics.h"

typedef struct srv_intake srv_intake;

typedef struct srv_intake_opts {
    int listen_fd;        /* bound and listening; the intake owns it from here */
    int max_pending;      /* connections whose head is not in yet */
    double idle_timeout_s; /* no byte for this long while the head is incomplete: closed */
    srv_guard *guard;     /* NULL: no per-address limits */
    srv_metrics *metrics; /* refusals are counted as requests of no route; may be NULL */
    /* A connection with a complete, valid head: hand it on (its bytes are unread). Returns
     * false when it cannot be taken now (the intake answers 503 and closes it); true: the fd and
     * gc now belong to the callee, even when it then fails. */
    bool (*hand_on)(void *cls, int fd, const struct sockaddr *sa, socklen_t salen,
                    srv_guard_conn *gc);
    void *cls;
} srv_intake_opts;

/* Starts the thread. NULL with err set (the listen fd is then still the caller's). */
srv_intake *srv_intake_start(const srv_intake_opts *o, qd_err *err);
/* Stops accepting, closes the connections still at the intake and the listen fd, joins. */
void srv_intake_stop(srv_intake *d);

#endif
