/* Connection guard: the per-address limits and deadlines that keep slow or idle clients from
 * locking others out.
 *
 * libmicrohttpd's own per-IP limit counts every open connection, and its timeout is an idle
 * timeout that each byte resets, so a client trickling headers or a body a byte at a time holds
 * its slots for ever; behind a reverse proxy every client shares the proxy's address. The guard
 * replaces both:
 *   - a connection must finish a request's headers within header_timeout_s of opening (or of
 *     its previous response): an absolute deadline, not reset by bytes;
 *   - a body must arrive at body_min_rate bytes/s on average once body_grace_s has passed;
 *   - when an address is at per_ip connections, a new one is still admitted if an older
 *     connection of that address is idle between requests, or has been waiting more than a
 *     second for its first request's headers: the oldest of those is closed instead (HTTP lets
 *     a server close an idle connection); connections busy with a request, and those just
 *     opened, are never displaced;
 *   - connections from trusted_proxies are not limited by their own address; their requests
 *     count against the client named by X-Forwarded-For (the rightmost address that is not
 *     itself a trusted proxy), and a client over per_ip requests in flight gets a 429.
 * Connections are closed with shutdown(2) from the guard's reaper thread or the accepting
 * thread, under the guard's lock, while libmicrohttpd still owns and later closes the fd.
 *
 * Not tied to libmicrohttpd: http.c calls these from its callbacks. Thread-safe. */
#ifndef QD_SRV_GUARD_H
#define QD_SRV_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "base/err.h"

typedef struct srv_guard srv_guard;
typedef struct srv_guard_conn srv_guard_conn;

typedef struct srv_guard_opts {
    int per_ip;               /* connections per address (requests per client behind a proxy); 0: no limit */
    double header_timeout_s;  /* 0: no header deadline */
    double idle_timeout_s;    /* a trusted proxy's keep-alive connection between requests */
    double body_min_rate;     /* bytes/s; 0: no body deadline */
    double body_grace_s;
    const char *trusted_proxies; /* "ADDR[/BITS], ..." or empty */
} srv_guard_opts;

/* Counters since start, for the log and the load test. */
typedef struct srv_guard_stats {
    uint64_t header_timeouts, body_too_slow, evicted, refused, client_limited;
} srv_guard_stats;

/* Parses the options (a bad trusted_proxies entry is an error naming it) and starts the reaper
 * thread. NULL with err set. Free with srv_guard_free. */
srv_guard *srv_guard_new(const srv_guard_opts *o, qd_err *err);
void srv_guard_free(srv_guard *g); /* NULL is fine; no connection may still be open */

/* Whether a connection from sa may be accepted; may close an idle connection of that address
 * to make room. Called before srv_guard_open for the same connection, from one thread. */
bool srv_guard_admit(srv_guard *g, const struct sockaddr *sa);

/* A connection accepted from sa on socket fd; the record lives until srv_guard_close. */
srv_guard_conn *srv_guard_open(srv_guard *g, const struct sockaddr *sa, int fd);
void srv_guard_close(srv_guard *g, srv_guard_conn *c); /* NULL is fine */

/* A request's headers are in. xff is its X-Forwarded-For (or NULL), honoured only when the peer
 * is a trusted proxy. Returns false when the client already has per_ip requests in flight
 * (answer 429); the request then still ends with srv_guard_request_end. */
bool srv_guard_request_begin(srv_guard *g, srv_guard_conn *c, const char *xff);
void srv_guard_body(srv_guard *g, srv_guard_conn *c, size_t n); /* n more body bytes */
void srv_guard_body_done(srv_guard *g, srv_guard_conn *c);      /* the body has ended */
void srv_guard_request_end(srv_guard *g, srv_guard_conn *c);    /* answered or cut off */

srv_guard_stats srv_guard_get_stats(srv_guard *g);

#endif
