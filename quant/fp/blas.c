/* The BLAS in use (blas.h), from OpenBLAS's own queries. */
#include "quant/fp/blas.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

void qd_blas_info_get(qd_blas_info *b) {
    const char *cfg = openblas_get_config(), *core = openblas_get_corename();
    const char *env = getenv("OPENBLAS_CORETYPE");
    snprintf(b->library, sizeof b->library, "OpenBLAS");
    snprintf(b->config, sizeof b->config, "%s", cfg ? cfg : "");
    snprintf(b->core, sizeof b->core, "%s", core ? core : "");
    snprintf(b->coretype_env, sizeof b->coretype_env, "%s", env ? env : "");
    b->threads = openblas_get_num_threads();
}
