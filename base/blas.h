/* The BLAS kernel, chosen by CPU features. OpenBLAS's DYNAMIC_ARCH build picks its kernels from
 * a table of CPU model numbers and falls back to its generic Prescott (SSE3) kernel on CPUs the
 * table does not know: Debian's 0.3.21 does so on Sapphire/Emerald Rapids, at about 11% of the
 * machine's FMA peak. It reads OPENBLAS_CORETYPE in its constructor, before main, so the only
 * way to correct it from inside the program is to set that variable and execute the program
 * again; qd_blas_select does that once, first thing in every main (quantd, tests, benchmarks).
 *
 * Rules: a user's own OPENBLAS_CORETYPE is always respected; QD_BLAS_SELECT=0 turns the choice
 * off; a build without DYNAMIC_ARCH, a kernel name quantd does not know, or a kernel already at
 * the CPU's level is left alone. The re-execution keeps argv, the environment (plus
 * OPENBLAS_CORETYPE and the marker QD_BLAS_CHOSEN, which also stops any loop) and every open
 * file descriptor, and the process id. */
#ifndef QD_BASE_BLAS_H
#define QD_BASE_BLAS_H

#include <stddef.h>

/* Call first in main, before any thread or output. argv as main got it (NULL: read back from
 * /proc/self/cmdline). Returns only when no re-execution is needed or when it failed. */
void qd_blas_select(char **argv);

/* The OpenBLAS kernel name quantd chooses for this CPU from CPUID and XCR0 (AVX-512
 * F+VL+BW+DQ: "SkylakeX", or "Cooperlake" with AVX512-BF16; AVX2+FMA: "Haswell", on AMD "Zen";
 * AVX: "Sandybridge"), or NULL when it would choose none (older CPUs). Static string. */
const char *qd_blas_wanted_kernel(void);

/* What runs the sgemms, for `quantd --version` and report.json's compute.blas. Strings are
 * NUL-terminated and empty when unknown. */
typedef struct qd_blas_info {
    char library[16];    /* "OpenBLAS" */
    char version[16];    /* "0.3.21" */
    char kernel[32];     /* openblas_get_corename(): "SkylakeX", "Prescott", ... */
    char chosen_by[16];  /* "quantd" (from CPU features), "user" (OPENBLAS_CORETYPE), "library" */
    char wanted[32];     /* qd_blas_wanted_kernel(), "" when none */
    char config[160];    /* openblas_get_config() */
    int threads;         /* openblas_get_num_threads() */
} qd_blas_info;

void qd_blas_get_info(qd_blas_info *out);

/* One line for --version: "OpenBLAS 0.3.21, kernel SkylakeX (chosen by quantd from CPU
 * features), 2 threads, config: ...". Returns what snprintf returns. */
int qd_blas_describe(char *buf, size_t n);

#endif
