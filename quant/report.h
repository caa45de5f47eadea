/* report.json: the one module that writes it. qd_quantize gathers a run's figures into a
 * qd_report as it goes (the settings are its qd_quant_opts) and qd_report_write turns them into
 * the file. The key names other parts of quantd read are in base/report_keys.h; adding a key
 * means a field here and a line in report.c (and api/openapi.yaml's Report schema).
 *
 * The file (DESIGN.md §3; every number a JSON number):
 *   version "quantd-report/1", method, wbits, abits {class: bits} (the bit map with overrides),
 *   budget {samples, seq_len, epochs, windows_used, batch}, seed, threads;
 *   inputs {model, calibration, eval | eval_split, calibration_tokens, model_params,
 *           fingerprint (16 hex digits: the checkpoint's), sha256 {model, calibration[, eval]}};
 *   eval {tokens, ctx_len, fp32, <every variant run>, int, int_of, reference}: each variant
 *        {ppl, nll, kl, top1, seconds} against FP32 on the same evaluation tokens; int is the
 *        written model.qint.safetensors read back and run by the integer runtime, int_of the
 *        method it quantizes; reference {bytes, kept_max, kept_mean, tail_max, tail_mean}: the
 *        FP32 side, computed once and kept sparse (qd_eval_ref_stats);
 *   per_layer [{layer, mse, mse_isolated}] and per_layer_tokens: MSE of each block's output,
 *        fake-quant vs FP32, with the errors of earlier layers (mse) and alone on FP32's input
 *        (mse_isolated);
 *   loss_curve [one loss per optimizer step];
 *   selection {holdout_windows, holdout_tokens, loss "mse_last_block", states [{step, loss}]
 *        (step 0: the initialisation), kept_step, kept_loss[, lambda [{lambda, loss}],
 *        kept_lambda]}: MobileQuant's choice on calibration windows held out of training;
 *        absent when nothing was held out;
 *   compute {wall_seconds, method_seconds, export_seconds, tokens_processed, optimizer_steps,
 *            resumed_at_step, peak_rss_bytes, offsets_projected (activation offsets put back
 *            onto their range by the optimizer, summed over steps), blas {library, core (the
 *            kernel in use, e.g. "SkylakeX"), config, coretype_env ($OPENBLAS_CORETYPE or null),
 *            chosen_by ("quantd" from CPU features, "user", "library"), threads,
 *            thread_timeout ($OPENBLAS_THREAD_TIMEOUT or null), thread_timeout_by (as
 *            chosen_by)},
 *            stages [{phase, variant (null for load and export), seconds}] (the run's stages
 *            in order, as the progress reports name them), estimated_peak_bytes,
 *            estimated_address_space_bytes (estimate.h's prediction before the run)};
 *   size {fp32_bytes, quantized_bytes (the encodings' model bytes), bits_per_weight, ratio,
 *         weight_tensors, activation_quantizers, fp16_bytes, qint_bytes (model.qint.safetensors
 *         on disk), qint_payload_bytes (qd_qint_bytes), ratio_fp32, ratio_fp16 (FP bytes /
 *         qint_bytes), qint_bits_per_param, weight_bits_per_weight (qd_qint_weight_bits)};
 *   artifacts {"model.qint.safetensors": {bytes, format, format_version},
 *              "encodings.json": {bytes, format "aimet", format_version},
 *              "fp-folded": {bytes, dtype, tokenizer, tokenizer_source | tokenizer_missing}};
 *   gates {max_ppl_increase, ppl_increase, of "int", passed}: only when the gate was set; the
 *        increase is the integer runtime's (eval.int) over FP32. */
#ifndef QD_REPORT_H
#define QD_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "base/err.h"
#include "quant/fp/eval.h"
#include "quant/opt/mobilequant.h"
#include "quant/quantize.h"

/* One method run: its figures against FP32 and its optimizer's record (owned: the report's
 * clear frees res). */
#define QD_REPORT_MAX_STAGES 24 /* compute.stages: load, eval, 3 variants x 5 phases, export */

typedef struct qd_report_variant {
    const char *name; /* method name; static storage */
    qd_cmp_result cmp;
    qd_mq_result res;
    double seconds;
} qd_report_variant;

/* Per-layer errors of the chosen method's simulation. */
typedef struct qd_layer_err {
    int n;           /* layers (0: not measured) */
    double *mse;     /* block output, quantized model vs FP32 (earlier errors included) */
    double *mse_iso; /* the quantized block alone, fed FP32's input */
    size_t tokens;
} qd_layer_err;

void qd_layer_err_free(qd_layer_err *le);

/* The tokenizer put into fp-folded/. */
typedef struct qd_report_tokenizer {
    char name[32];     /* "tokenizer.json" / "tokenizer.bin", empty when none */
    char source[4200]; /* where it came from */
    char why[512];     /* why there is none */
} qd_report_tokenizer;

/* The artifacts as written, and the integer runtime's figures on them. */
typedef struct qd_report_export {
    qd_cmp_result cmp; /* integer runtime on the written artifact vs FP32 */
    size_t qint_bytes, enc_bytes, folded_bytes, payload_bytes, n_weights, n_bits;
    qd_report_tokenizer tok;
    double seconds;
} qd_report_export;

#define QD_REPORT_MAX_VARIANTS 4

typedef struct qd_report {
    const qd_quant_opts *o; /* the run's settings (borrowed) */
    double t0;              /* qd_now() at the start of the run: compute.wall_seconds */
    /* inputs */
    size_t model_params, n_calib;
    int recompute;                /* the training simulation recomputed its activations */
    uint64_t fingerprint;
    char sha_model[65], sha_calib[65], sha_eval[65];
    /* evaluation */
    qd_cmp_result fp32;
    qd_eval_ref_info ref;   /* the FP32 reference the variants were compared with (eval.h) */
    int n_variants;
    qd_report_variant var[QD_REPORT_MAX_VARIANTS]; /* [0]: the chosen method, then baselines */
    qd_layer_err layers;
    /* the chosen method's encodings */
    size_t enc_model_bytes;
    int enc_weights, enc_activations;
    qd_report_export ex;
    /* the stages as run (quantize.c's tracker) and the estimate made before the run */
    int n_stages;
    struct {
        const char *phase, *variant; /* static strings; variant NULL for load and export */
        double seconds;
    } stage[QD_REPORT_MAX_STAGES];
    double est_peak_bytes, est_vm_bytes;
} qd_report;

/* Zeroes r and ties it to the run's settings and start time. */
void qd_report_init(qd_report *r, const qd_quant_opts *o, double t0);
/* Frees what r owns (loss curves, layer errors); r itself is the caller's. */
void qd_report_clear(qd_report *r);

/* The relative perplexity increase over FP32 of the written artifact run by the integer
 * runtime (eval.int): what ships, and what the max_ppl_increase gate compares. */
double qd_report_ppl_increase(const qd_report *r);

/* report.json's object; caller frees with cJSON_Delete. NULL when out of memory. */
cJSON *qd_report_json(const qd_report *r);

/* Writes dir/report.json atomically. QD_ERR with err set on failure. */
int qd_report_write(const qd_report *r, const char *dir, qd_err *err);

/* Reads dir/report.json's gate verdict into *verdict: 1 passed, 0 missed, -1 no gate set.
 * QD_OK, or QD_ERR with err set when the file cannot be read or parsed. */
int qd_report_gate(const char *dir, int *verdict, qd_err *err);

#endif
