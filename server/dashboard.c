/* web/index.html compiled into the binary (base/embed.h), as api/openapi.yaml is: the dashboard
 * that a server serves is always the one built with it. The page is self-contained (inline CSS
 * and JS, no network fetches besides the API). */
#include "server/dashboard.h"

#include "base/embed.h"

QD_EMBED_FILE(srv_dashboard, "web/index.html");

const char *srv_dashboard_html(size_t *len) {
    *len = (size_t)(srv_dashboard_end_ - srv_dashboard_start_);
    return srv_dashboard_start_;
}

/* A 4-bit staircase (the quantization grid) on the header's dark blue. */
static const char favicon[] =
    "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">"
    "<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1d2330\"/>"
    "<path d=\"M3 13V10H6V7H9V4H13\" fill=\"none\" stroke=\"#b9c8ff\" stroke-width=\"2\"/>"
    "</svg>";

const char *srv_favicon_svg(size_t *len) {
    *len = sizeof favicon - 1;
    return favicon;
}
