/* Prometheus text-format metrics: HTTP requests by route and status, a latency histogram per
 * route, upload bytes, worker seconds; job gauges are passed in at render time. */
#ifndef QD_SRV_METRICS_H
#define QD_SRV_METRICS_H

#include <stdint.h>

#include "api/api.h"

typedef struct srv_metrics srv_metrics;

/* Route i is labelled route_names[i]; index n_routes stands for "unmatched". NULL on OOM. */
srv_metrics *srv_metrics_new(int n_routes, const char *const *route_names);
void srv_metrics_free(srv_metrics *m);

/* Counts one finished request (route -1 for unmatched). Thread-safe. */
void srv_metrics_request(srv_metrics *m, int route, int status, double seconds);
void srv_metrics_add_upload(srv_metrics *m, uint64_t bytes);
void srv_metrics_add_worker_seconds(srv_metrics *m, double seconds);

/* The exposition text (malloc'd, caller frees). */
char *srv_metrics_render(srv_metrics *m, const long jobs_by_state[API_STATE_COUNT],
                         long queue_length, long workers_busy, long workers_max);

#endif
