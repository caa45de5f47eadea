/* What a quantize run will cost, before it runs: the peak resident memory, phase by phase as
 * named parts (the model, the reference log-probabilities, the training simulation, GPTQ's
 * Hessians, ...), from the model's config, the budget and the data's token counts alone (no
 * weight is read), and the time of one optimizer step and of the whole run from the work's
 * floating-point operations at a measured sgemm rate.
 *
 * The memory model mirrors the allocations of the pipeline (quantize.c, mobilequant.c,
 * fakequant.c, gptq.c, eval.c, encodings.c, int_model.c); tests/test_estimate.c holds it to
 * the peak RSS of real runs on several shapes. Whoever changes what a phase keeps alive
 * changes its part here. `quantize --dry-run` prints it; qd_quantize_check refuses a run whose
 * address space at the peak (vm_bytes) exceeds qd_quant_opts.max_mem (field "budget"), which
 * the server sets to worker_mem_bytes (the worker's RLIMIT_AS). */
#ifndef QD_ESTIMATE_H
#define QD_ESTIMATE_H

#include <stddef.h>

#include "quant/model.h"

typedef struct qd_quant_opts qd_quant_opts;

#define QD_EST_PARTS 14
#define QD_EST_PHASES 10

typedef struct {
    const char *name; /* static text */
    double bytes;
} qd_est_part;

typedef struct {
    const char *phase; /* "load", "eval fp32", "baselines", "calibrate", "optimize", "gptq", "eval",
                        * "fold", "export" */
    double bytes;      /* the sum of its parts */
    int n_parts;
    qd_est_part part[QD_EST_PARTS];
} qd_est_phase;

typedef struct qd_estimate {
    int n_phases, peak;      /* peak: the index of the phase with the most bytes */
    qd_est_phase ph[QD_EST_PHASES];
    double peak_bytes;       /* resident memory at the peak */
    double vm_bytes;         /* address space at the peak: peak_bytes and what the process
                              * reserves without touching (malloc arenas, thread stacks,
                              * OpenBLAS's buffers), what RLIMIT_AS counts */
    /* time: NAN when not probed (qd_quantize_estimate's probe = 0) */
    double sgemm_gflops;     /* measured here, with the run's thread count */
    double step_flops;       /* one optimizer step (forward and backward), 0 without training */
    double step_s, total_s;  /* predicted seconds per optimizer step and for the whole run */
    long steps;              /* optimizer steps of the run */
    int recompute;           /* the training simulation recomputes its activations (the
                              * options' recompute, 1) */
} qd_estimate;

/* Fills e for options o on a model of config c whose checkpoint occupies file_bytes, with
 * n_calib calibration and n_ev evaluation tokens (the split as the run makes it). probe != 0
 * runs a short sgemm (about 0.3 s) for the time figures. */
void qd_quantize_estimate(const qd_quant_opts *o, const qd_config *c, double file_bytes,
                          size_t n_calib, size_t n_ev, int probe, qd_estimate *e);

/* A human-readable table of e (every phase, the peak phase's parts) into buf. */
void qd_estimate_format(const qd_estimate *e, char *buf, size_t n);

#endif
