/* The web dashboard (web/index.html), compiled into the binary and served at GET /. */
#ifndef QD_SRV_DASHBOARD_H
#define QD_SRV_DASHBOARD_H

#include <stddef.h>

/* The page's bytes (static, never freed) and their length in *len. */
const char *srv_dashboard_html(size_t *len);

/* The dashboard's icon, an SVG (static, never freed), served at /favicon.ico and named by the
 * page's <link rel="icon">. */
const char *srv_favicon_svg(size_t *len);

#endif
