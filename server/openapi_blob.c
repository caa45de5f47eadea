/* api/openapi.yaml compiled into the binary (base/embed.h), so that /v1/openapi.yaml is always
 * the spec of the code that serves it. */
#include "server/server.h"

#include "base/embed.h"

QD_EMBED_FILE(srv_openapi, "api/openapi.yaml");

const char *srv_openapi_text(size_t *len) {
    *len = (size_t)(srv_openapi_end_ - srv_openapi_start_);
    return srv_openapi_start_;
}
