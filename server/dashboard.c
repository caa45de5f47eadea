/* web/index.html compiled into the binary, as api/openapi.yaml is (server/openapi_blob.c): the
 * dashboard that a server serves is always the one built with it, and nothing is looked up
 * beside the binary at run time. The page is self-contained (inline CSS and JS, no network
 * fetches besides the API). The assembler reads the file relative to the directory the
 * compiler runs in, the repository root; the Makefile names it as a prerequisite because -MMD
 * cannot see an .incbin. */
#include "server/dashboard.h"

__asm__(".section .rodata\n"
        ".balign 16\n"
        "srv_dashboard_start_:\n"
        ".incbin \"web/index.html\"\n"
        "srv_dashboard_end_:\n"
        ".byte 0\n"
        ".previous\n");

extern const char srv_dashboard_start_[] __asm__("srv_dashboard_start_");
extern const char srv_dashboard_end_[] __asm__("srv_dashboard_end_");

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
