/* The BLAS library and kernel the numeric core runs on, for reports. Float results that feed
 * back into themselves (MobileQuant's training trajectory) differ between BLAS kernels of the
 * same library (OpenBLAS picks Haswell, SkylakeX, Cooperlake... at run time, or what
 * OPENBLAS_CORETYPE names), so a figure is stated with the kernel that produced it. */
#ifndef QD_BLAS_H
#define QD_BLAS_H

typedef struct qd_blas_info {
    char library[16];     /* "OpenBLAS" */
    char config[160];     /* openblas_get_config(): version, build options, the kernel */
    char core[48];        /* openblas_get_corename(): the kernel in use, e.g. "SkylakeX" */
    char coretype_env[48]; /* $OPENBLAS_CORETYPE, "" when unset */
    int threads;          /* openblas_get_num_threads() */
} qd_blas_info;

void qd_blas_info_get(qd_blas_info *b);

#endif
