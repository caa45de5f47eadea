/* The whole quantization pipeline, offline: load model and data, split calibration and
 * evaluation tokens, run the chosen method (rtn | smoothquant | omniquant | mobilequant),
 * evaluate FP32 and the baselines, export artifacts and write report.json into out_dir.
 * `quantd quantize` and `quantd work JOBDIR` both call qd_quantize: one code path.
 *
 * out_dir after a successful run (DESIGN.md §3, artifacts):
 *   model.qint.safetensors  the integer model (qint.h), evaluated with the integer runtime
 *                           (report eval.int) after being read back from disk;
 *   encodings.json          AIMET encodings (aimet.h), format opts.encodings_version;
 *   fp-folded/              config.json + model.safetensors (F32, LET folded in, weights
 *                           clipped) and the tokenizer (tokenizer.json or tokenizer.bin);
 *   report.json             figures for every variant, sizes, per-layer errors, input hashes:
 *                           written by quant/report.c, which documents its keys.
 *
 * The stages (quantize.c): validate the settings, load the model and data, estimate the
 * run's memory (estimate.h; refused over max_mem), fingerprint the run (a checkpoint from
 * other inputs is refused), run FP32, the baselines and then the chosen method (its fold
 * writes into the model itself), export the artifacts and evaluate the written integer
 * model, write the report. */
#ifndef QD_QUANTIZE_H
#define QD_QUANTIZE_H

#include <stdint.h>

#include "base/err.h"
#include "quant/progress.h"

typedef struct qd_quant_opts {
    const char *model_path;      /* checkpoint (any supported format) */
    const char *calib_path;      /* calibration data */
    const char *eval_path;       /* evaluation data, or NULL to use eval_split */
    const char *tokenizer_path;  /* NULL: the checkpoint's own vocabulary */
    double eval_split;           /* fraction of calibration tokens held out (when no eval_path) */
    char method[16];             /* "mobilequant" (default), "omniquant", "smoothquant", "rtn" */
    int wbits;                   /* 8 or 4 */
    int abits_override[16];      /* per activation class; 0 = bit map default (see qsim.h) */
    int samples, seq_len, epochs;
    uint64_t seed;
    int threads;
    const char *out_dir;         /* report.json and artifacts go here (created) */
    const char *checkpoint_path; /* optimizer state for resume, or NULL */
    int checkpoint_every;        /* steps between checkpoints (0: only on stop) */
    qd_progress_fn progress;     /* may be NULL */
    void *progress_ctx;
    double max_ppl_increase;     /* gate: < 0 when not set; recorded in the report */
    /* learning-rate schedules {start, end} per group; {0, 0}: DESIGN.md's reference values for
     * the weight width (qd_mq_defaults) */
    double lr_let[2], lr_lwc[2], lr_lrl[2];
    int batch;                   /* windows per optimizer step (0: 1) */
    char encodings_version[8];   /* AIMET encodings.json format: "1.0.0" (default) or "0.6.1" */
    size_t max_mem;              /* refuse (field "budget") when the estimated address space
                                  * at the peak (estimate.h vm_bytes: what RLIMIT_AS counts)
                                  * exceeds this many bytes; 0: no limit */
    int recompute;               /* the training simulation keeps one layer's activations and
                                  * recomputes each layer in the backward (the same results, one
                                  * more forward per step): QD_RECOMPUTE_AUTO (the default: on
                                  * when the run would not fit in max_mem, or without one in
                                  * 90% of the machine's memory, and fits with it), 0 off, 1 on */
} qd_quant_opts;

#define QD_RECOMPUTE_AUTO (-1)

void qd_quant_defaults(qd_quant_opts *o);

/* The checks qd_quantize makes before any work, alone: the settings (bit widths, the bit map
 * against what the integer model takes, the budget), the model's headers (format,
 * architecture, context, RoPE scaling, tensor types, shards; qd_model_probe), its tokenizer's
 * presence and kind, the calibration and evaluation data (format, token ids, enough tokens),
 * seq_len against the context. No weight is read. QD_OK, or QD_ERR with err saying why and
 * field naming the job spec field at fault ("model", "tokenizer", "calibration", "eval",
 * "eval_split", "budget.seq_len", "abits.qkv", "wbits", ...; "" when none fits). */
#define QD_CHECK_FIELD 32
int qd_quantize_check(const qd_quant_opts *o, char field[QD_CHECK_FIELD], qd_err *err);

/* qd_quantize_check, then the run's cost into *e (estimate.h; probe != 0 also measures sgemm
 * for the time figures): what `quantize --dry-run` prints. Nothing is written. */
struct qd_estimate;
int qd_quantize_plan(const qd_quant_opts *o, int probe, struct qd_estimate *e,
                     char field[QD_CHECK_FIELD], qd_err *err);

/* Runs the pipeline. QD_OK on success (report written), QD_ERR with err set on failure.
 * Returns QD_STOPPED when a stop is requested (base/stop.h: SIGTERM/SIGINT in quantd), which
 * every phase polls per window, layer or step: no report.json is written then, and the
 * checkpoint holds the optimizer's state (the steps done, or the finished training). */
int qd_quantize(const qd_quant_opts *o, qd_err *err);

#endif
