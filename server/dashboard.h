/* The web dashboard (web/index.html), compiled into the binary and served at GET /. */
#ifndef QD_SRV_DASHBOARD_H
#define QD_SRV_DASHBOARD_H

#include <stddef.h>

/* The page's bytes (static, never freed) and their length in *len. */
const char *srv_dashboard_html(size_t *len);

#endif
