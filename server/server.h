/* `quantd serve`: the HTTP front end (libmicrohttpd), wired to the store, the scheduler, auth
 * and metrics. */
#ifndef QD_SERVER_H
#define QD_SERVER_H

#include "server/config.h"

/* Runs the service until SIGINT or SIGTERM; returns the process exit status. Prints
 * "listening on ADDR:PORT" on stdout and writes the same address to DATA/server.addr once the
 * socket is bound (port 0 in the config picks a free port). */
int srv_main(const srv_config *c);

/* The route table, for the test that compares it with api/openapi.yaml. */
int srv_route_count(void);
const char *srv_route_method(int i);
const char *srv_route_path(int i);

/* The OpenAPI document compiled into the binary. */
const char *srv_openapi_text(size_t *len);

#endif
