/* The release of quantd: what `quantd --version` prints (with the git commit the binary was
 * built from) and api/openapi.yaml's info.version (tests/test_api.c checks they agree). */
#ifndef QD_BASE_VERSION_H
#define QD_BASE_VERSION_H

#define QD_VERSION "1.0.0"

#endif
