/* Progress of a long run, as the pipeline and the optimizers report it to their caller (the
 * CLI's progress line, the worker's event pipe). The optimizers fill phase, step, total, loss,
 * lr and the phase's ETA; qd_quantize adds where the phase stands in the whole run (the
 * variant it belongs to, its stage among all stages) and the run's overall ETA. */
#ifndef QD_PROGRESS_H
#define QD_PROGRESS_H

typedef struct qd_progress {
    const char *phase;     /* "load", "calibrate", "optimize", "gptq", "fold", "eval", "export" */
    long step, total;      /* steps done / planned within the phase (0/0 when not counted) */
    double loss;           /* current training loss, NAN when none */
    double lr;             /* current learning rate of the LET group, NAN when none */
    double elapsed_s;      /* seconds since qd_quantize started */
    double eta_s;          /* estimated seconds left in the phase, NAN when unknown */
    const char *variant;   /* "fp32", "rtn", "smoothquant", "omniquant", "mobilequant", "int"
                              (the written artifact), or NULL (load, export) */
    int stage, stages;     /* this phase is stage `stage` (1-based) of `stages`; 0 when unknown */
    double eta_total_s;    /* estimated seconds left in the whole run, NAN when unknown */
} qd_progress;

typedef void (*qd_progress_fn)(void *ctx, const qd_progress *p);

#endif
