/* api/openapi.yaml compiled into the binary, so that /v1/openapi.yaml is always the spec of the
 * code that serves it (no runtime lookup of a file beside the binary). The assembler reads
 * the file relative to the directory the compiler runs in: the repository root, as the
 * Makefile does. */
#include "server/server.h"

__asm__(".section .rodata\n"
        ".balign 16\n"
        "srv_openapi_start_:\n"
        ".incbin \"api/openapi.yaml\"\n"
        "srv_openapi_end_:\n"
        ".byte 0\n"
        ".previous\n");

extern const char srv_openapi_start_[] __asm__("srv_openapi_start_");
extern const char srv_openapi_end_[] __asm__("srv_openapi_end_");

const char *srv_openapi_text(size_t *len) {
    *len = (size_t)(srv_openapi_end_ - srv_openapi_start_);
    return srv_openapi_start_;
}
