/* The quantization methods on top of the simulation (qsim.h):
 *   rtn          min/max activation ranges, round-to-nearest weights (no clipping, no LET);
 *   smoothquant  SmoothQuant scales (α = 0.5) folded as LET, then RTN;
 *   omniquant    SmoothQuant init, then LET + LWC trained block by block (MSE of each block's
 *                output against the FP block on FP inputs), activation ranges re-measured;
 *   mobilequant  SmoothQuant init, then LET + LWC + LRL trained jointly, end to end (MSE of the
 *                last decoder block's output against FP), AdamW with per-group cosine LRs.
 * Deterministic for a given seed and BLAS thread count. mobilequant checkpoints its optimizer
 * state and resumes the same trajectory. */
#ifndef QD_MOBILEQUANT_H
#define QD_MOBILEQUANT_H

#include "quant/opt/gptq.h"
#include "quant/sim/fakequant.h"
#include "quant/progress.h"

typedef struct qd_mq_opts {
    char method[16];
    int wbits, wgran;
    int abits[QD_AC_COUNT];
    int samples, seq_len, epochs, batch;
    uint64_t seed;
    float alpha;                       /* SmoothQuant migration strength */
    int lwc_grid;                      /* LWC init: clipping ratios searched per weight group
                                          (qd_qsim_search_lwc); 0: logits 4 (the paper's) */
    double lwc_rmin;                   /* smallest ratio of that grid */
    int overlap;                       /* data with fewer than `samples` disjoint windows:
                                          `samples` overlapping windows, evenly spaced (1) */
    int lrl_relative;                  /* LRL learning rates relative to each quantizer's
                                          range (scale ·|s|, offset ·(2^b-1)) instead of raw */
    int gptq;                          /* final integers by GPTQ rounding (gptq.h) onto the
                                          trained grids: 1 on, 0 off, -1 auto (mobilequant);
                                          below 8 bits towards the FP outputs (fp_target) */
    double lr_let[2], lr_lwc[2], lr_lrl[2];   /* {start, end} of each cosine */
    double holdout;                    /* mobilequant: the fraction of the calibration tokens
                                          (their end, as whole windows; 0 off) held out of
                                          training to select the returned state and the W4
                                          FP-target λ by the end-to-end loss on them */
    int select_every;                  /* steps between the trajectory states compared
                                          (0: one per epoch); the initialisation and the last
                                          step are always candidates */
    const char *checkpoint_path;       /* NULL: no checkpoints */
    int checkpoint_every;              /* steps; 0: only when stopped */
    uint64_t fingerprint;              /* identifies the run's inputs (model, data) in the
                                          checkpoint; qd_mq_run folds in every setting above
                                          (qd_mq_fingerprint) */
    qd_progress_fn progress;
    void *progress_ctx;
    double t0;                         /* qd_now() at the start of the pipeline */
    int eval_batch;                    /* windows the returned simulation holds at once */
    int recompute;                     /* the training simulation recomputes each layer in the
                                          backward instead of keeping every layer's activations
                                          (qd_qsim_opts.recompute; the same results) */
    /* Statistics of the untransformed model (LET and quantizers off) over the windows a run
     * without held-out data uses, shared between the baselines: an RTN run leaves its one pass
     * here when *share_stats is NULL (the caller frees it, qd_qstats_free), a SmoothQuant run
     * takes its SmoothQuant scales from *share_stats instead of a first pass of its own (the
     * same statistics of every layer site: qd_qsim_collect_layers). NULL: no sharing. Only with
     * the same model, budget and calibration tokens. */
    qd_qstats **share_stats;
} qd_mq_opts;

/* Defaults for a weight width (holdout 0.1, one candidate state per epoch, and): LET 1e-3 -> 1e-4 and LWC 1e-2 -> 1e-3 (DESIGN.md's W8A8
 * reference), W4A8: LET 5e-3 -> 5e-4, LWC 1e-2 -> 1e-3; LRL 1e-3 -> 1e-4 relative to each
 * quantizer's range (lrl_relative); clipping search init (51 ratios down to 0.5); GPTQ final
 * rounding for mobilequant; overlapping windows on short data; budget 64 x 256 x 10, batch 1,
 * α 0.5, method mobilequant. */
void qd_mq_defaults(qd_mq_opts *o, int wbits);
/* Test hook: the held-out selection pass of this optimizer step (-1: none) raises the stop
 * request as it begins. */
void qd_mq_test_stop_in_select(long step);

#define QD_MQ_MAX_LAMBDA 8

typedef struct qd_mq_result {
    float *loss;        /* one entry per optimizer step (malloc'd; qd_mq_result_free) */
    long n_loss;
    long steps;         /* steps run in this call */
    long resumed_at;    /* step the checkpoint resumed from (0 when fresh) */
    size_t tokens;      /* tokens pushed through the model (calibration + training) */
    int windows;        /* calibration windows used */
    int stopped;        /* stopped through opts->stop after a checkpoint */
    long projected;     /* activation offsets the optimizer pushed past an end of their range
                           and qd_qsim_project_ranges put back, summed over steps */
    /* held-out model selection (mobilequant with holdout > 0): */
    int holdout_windows;       /* windows of seq_len held out (0: no selection) */
    long n_sel;                /* states compared: step 0 is the initialisation */
    long *sel_step;            /* (malloc'd) their steps */
    float *sel_loss;           /* (malloc'd) their held-out losses (MSE of the last block) */
    long kept_step;            /* the state returned (-1: no selection) */
    double kept_loss;
    int n_lambda;              /* W4 FP-target ridges compared (0: none) */
    double lambda[QD_MQ_MAX_LAMBDA], lambda_loss[QD_MQ_MAX_LAMBDA];
    double kept_lambda;        /* the one used (its held-out loss after GPTQ was lowest) */
} qd_mq_result;

void qd_mq_result_free(qd_mq_result *r);

/* h chained with every option that changes the trajectory or the result (method, widths,
 * budget, seed, α, LWC search, windows, LRL lr meaning, GPTQ, learning rates): the checkpoint
 * fingerprint, so that a resume with other settings, defaults included, is refused. */
uint64_t qd_mq_fingerprint(const qd_mq_opts *o, uint64_t h);

/* Runs the method on n_calib calibration tokens. On success *out is the trained simulation,
 * all quantizers on, ready for qd_qsim_logits (caller frees with qd_qsim_free); QD_OK.
 * Returns QD_STOPPED (and *out NULL) when a stop was requested (base/stop.h), which it polls
 * per window, layer and step: mobilequant then saves its checkpoint (the steps done, or the
 * finished training when the stop comes after it, so that a rerun resumes there); QD_ERR with
 * err set on failure. */
int qd_mq_run(const qd_model *m, const int *calib, size_t n_calib, const qd_mq_opts *o,
              qd_qsim **out, qd_mq_result *res, qd_err *err);

#endif
