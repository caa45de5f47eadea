/* The names of report.json's keys that other parts of quantd read. quant/report.c is the one
 * writer of the file and spells every key through these names; the job result's headline
 * (api_report_headline, used by server/jobs.c), the CI client's summary (cli/cmd_client.c)
 * and the dashboard (web/index.html, which reads the same literal names) read them. Here, in
 * base/, because the server and api/ may not include quant/. quant/report.h documents the
 * whole file, keys that nobody else reads included. */
#ifndef QD_BASE_REPORT_KEYS_H
#define QD_BASE_REPORT_KEYS_H

#define QD_REPORT_VERSION "quantd-report/1"

/* top level */
#define QD_RK_VERSION "version"
#define QD_RK_METHOD "method"
#define QD_RK_WBITS "wbits"
#define QD_RK_EVAL "eval"           /* {tokens, ctx_len, <variant>: {ppl,nll,kl,top1,seconds}, int_of} */
#define QD_RK_SIZE "size"           /* bytes, bits per weight, ratios */
#define QD_RK_GATES "gates"         /* present only when a gate was set */
#define QD_RK_COMPUTE "compute"     /* wall seconds, tokens, steps, peak RSS */
#define QD_RK_PER_LAYER "per_layer" /* [{layer, mse, mse_isolated}] */
#define QD_RK_LOSS_CURVE "loss_curve"

/* eval.<variant>: fp32, the methods (rtn, smoothquant, omniquant, mobilequant), and int, the
 * written artifact run by the integer runtime; eval.int_of names the method int quantizes */
#define QD_RK_EVAL_FP32 "fp32"
#define QD_RK_EVAL_INT "int"
#define QD_RK_EVAL_INT_OF "int_of"
#define QD_RK_PPL "ppl"
#define QD_RK_KL "kl"
#define QD_RK_TOP1 "top1"

/* gates: {max_ppl_increase: the limit, ppl_increase: the measured figure (eval.int over
 * eval.fp32), of: "int", passed: bool} */
#define QD_RK_GATE_MAX_PPL "max_ppl_increase"
#define QD_RK_GATE_PPL_INCREASE "ppl_increase"
#define QD_RK_GATE_PASSED "passed"

/* The headline: the report's keys a finished job's `result` carries (GET /v1/jobs/{id}), so
 * that a CI pipeline can gate on the job record alone. NULL-terminated. */
#define QD_REPORT_HEADLINE_KEYS {QD_RK_EVAL, QD_RK_SIZE, QD_RK_GATES, QD_RK_COMPUTE, NULL}

#endif
