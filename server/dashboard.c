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
