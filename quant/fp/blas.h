/* The BLAS library and kernel the numeric core runs on, for reports. Float results that feed
 * back into themselves (MobileQuant's training trajectory) differ between BLAS kernels of the
 * same library (OpenBLAS picks Haswell, SkylakeX, Cooperlake... at run time, or what
 * OPENBLAS_CORETYPE names), so a figure is stated with the kernel that produced it.
 *
 * And the kernel's choice by CPU features. OpenBLAS's DYNAMIC_ARCH build picks its kernels from
 * a table of CPU model numbers and falls back to its generic Prescott (SSE3) kernel on CPUs the
 * table does not know: Debian's 0.3.21 does so on Sapphire/Emerald Rapids, at about 11% of the
 * machine's FMA peak. It reads OPENBLAS_CORETYPE in its constructor, before main, so the only
 * way to correct it from inside the program is to set that variable and execute the program
 * again; qd_blas_select does that once, first thing in every main (quantd, tests, benchmarks).
 *
 * Rules: a user's own OPENBLAS_CORETYPE is always respected; QD_BLAS_SELECT=0 turns the choice
 * off; a build without DYNAMIC_ARCH, a kernel name quantd does not know, or a kernel already at
 * the CPU's level is left alone.
 *
 * The same re-execution sets OPENBLAS_THREAD_TIMEOUT=4 when it is unset (pthreads build, more
 * than one thread): after a call OpenBLAS's threads spin in sched_yield for 2^28 cycles (about
 * 0.1 s) before they sleep, on the cores where quantd's pool runs the work between the GEMMs.
 * With 2^4 they sleep at once (bench_optimizer, 2 vCPUs: a step 1.14 -> 1.00 s, the pool's
 * share of the work 0.58 -> 0.41 s; bench_calib GPTQ 6.0 -> 5.0 s; the forward within 2%).
 * A user's own value is respected, and QD_BLAS_SELECT=0 turns this off too.
 *
 * The re-execution keeps argv, the environment (plus what it set and the marker QD_BLAS_CHOSEN,
 * "VAR=VALUE ..." of what quantd set, which also stops any loop), every open file descriptor
 * and the process id. */
#ifndef QD_BLAS_H
#define QD_BLAS_H

#include <stddef.h>

typedef struct qd_blas_info {
    char library[16];     /* "OpenBLAS" */
    char version[16];     /* "0.3.21", from the config string */
    char config[160];     /* openblas_get_config(): version, build options, the kernel */
    char core[48];        /* openblas_get_corename(): the kernel in use, e.g. "SkylakeX" */
    char coretype_env[48]; /* $OPENBLAS_CORETYPE, "" when unset */
    char chosen_by[16];   /* who chose the kernel: "quantd" (CPU features, qd_blas_select),
                           * "user" ($OPENBLAS_CORETYPE), "library" (its own detection) */
    char wanted[32];      /* qd_blas_wanted_kernel(), "" when none */
    char thread_timeout[16]; /* $OPENBLAS_THREAD_TIMEOUT, "" when unset (the library's 28) */
    char timeout_by[16];  /* who set it: "quantd", "user", "library" (unset) */
    int threads;          /* openblas_get_num_threads() */
} qd_blas_info;

void qd_blas_info_get(qd_blas_info *b);

/* Call first in main, before any thread or output. argv as main got it (NULL: read back from
 * /proc/self/cmdline). Returns only when no re-execution is needed or when it failed. */
void qd_blas_select(char **argv);

/* The OpenBLAS kernel name quantd chooses for this CPU from CPUID and XCR0 (AVX-512
 * F+VL+BW+DQ: "SkylakeX", or "Cooperlake" with AVX512-BF16; AVX2+FMA: "Haswell", on AMD "Zen";
 * AVX: "Sandybridge"), or NULL when it would choose none (older CPUs). Static string. */
const char *qd_blas_wanted_kernel(void);

/* One line for --version: "OpenBLAS 0.3.21, kernel SkylakeX (chosen by quantd from CPU
 * features; ...), 2 threads, idle threads spin 2^4 cycles (set by quantd); <config>". Returns what snprintf returns. */
int qd_blas_describe(char *buf, size_t n);

#endif
