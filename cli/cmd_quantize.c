/* quantd quantize: the whole pipeline offline (load, calibrate, optimize, evaluate, export
 * the artifacts, report), the same code path as a job (qd_quantize). SIGTERM/SIGINT checkpoint and stop; a rerun with
 * the same arguments resumes. A progress bar when stderr is a terminal, plain lines otherwise. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdbool.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "base/fs.h"
#include "base/limits.h"
#include "base/pool.h"
#include "base/stop.h"
#include "base/str.h"
#include "quant/estimate.h"
#include "quant/quantize.h"
#include "quant/report.h"

typedef struct {
    int tty, quiet;
    int last_stage;
    const char *last_phase;
    double last_print;
} bar_state;

/* 75 -> "75s", 3725 -> "1h02m" */
static const char *dur(double s, char *b, size_t n) {
    if (!isfinite(s)) snprintf(b, n, "?");
    else if (s < 60) snprintf(b, n, "%.0fs", s);
    else if (s < 3600) snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    return b;
}

/* "[ 6/13] mobilequant eval" or "load": where the phase stands in the run */
static void where(const qd_progress *p, char *b, size_t n) {
    int k = p->stage > 0 ? snprintf(b, n, "[%2d/%d] ", p->stage, p->stages) : 0;
    snprintf(b + k, n - (size_t)k, "%s%s%s", p->variant ? p->variant : "", p->variant ? " " : "",
             p->phase);
}

static void on_progress(void *ctx, const qd_progress *p) {
    bar_state *b = ctx;
    if (b->quiet) return;
    double now = p->elapsed_s;
    int phase_change = !b->last_phase || strcmp(b->last_phase, p->phase) || b->last_stage != p->stage;
    char w[64], e1[16], e2[16], el[16];
    where(p, w, sizeof w);
    if (b->tty) {
        if (phase_change && b->last_phase) fputc('\n', stderr);
        if (!phase_change && now - b->last_print < 0.1 && p->step != p->total) return;
        char bar[21];
        int fill = p->total > 0 ? (int)(20.0 * (double)p->step / (double)p->total) : 0;
        for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
        bar[20] = 0;
        fprintf(stderr, "\r%-26s [%s] %ld/%ld", w, bar, p->step, p->total);
        if (!isnan(p->loss)) fprintf(stderr, " loss %.3e", p->loss);
        if (!isnan(p->eta_s)) fprintf(stderr, " eta %s", dur(p->eta_s, e1, sizeof e1));
        if (!isnan(p->eta_total_s)) fprintf(stderr, " | run eta %s", dur(p->eta_total_s, e2, sizeof e2));
        fprintf(stderr, " | %s   ", dur(p->elapsed_s, el, sizeof el));
    } else {
        /* a log: one line per phase change and at most one a second */
        if (!phase_change && now - b->last_print < 1.0 && p->step != p->total) return;
        fprintf(stderr, "%s %ld/%ld", w, p->step, p->total);
        if (!isnan(p->loss)) fprintf(stderr, " loss=%.4e", p->loss);
        if (!isnan(p->eta_s)) fprintf(stderr, " eta=%.0fs", p->eta_s);
        if (!isnan(p->eta_total_s)) fprintf(stderr, " run_eta=%.0fs", p->eta_total_s);
        fprintf(stderr, " elapsed=%.1fs\n", p->elapsed_s);
    }
    b->last_phase = p->phase;
    b->last_stage = p->stage;
    b->last_print = now;
}

/* ---- options ---- */

enum {
    O_MODEL = CLI_KEY, O_CALIB, O_EVAL, O_EVAL_SPLIT, O_TOKENIZER, O_OUT, O_METHOD, O_WBITS,
    O_SAMPLES, O_SEQ_LEN, O_EPOCHS, O_SEED, O_THREADS, O_ABITS, O_CHECKPOINT,
    O_CHECKPOINT_EVERY, O_MAX_PPL, O_LR_LET, O_LR_LWC, O_LR_LRL, O_BATCH, O_ENC_VERSION, O_QUIET,
    O_DRY_RUN, O_JSON, O_MAX_MEM, O_RECOMPUTE
};

/* What the command line asks besides the run's options. */
typedef struct {
    const char *ckpt;
    int quiet, dry_run, json;
} cli_extra;

static const cli_opt opts[] = {
    {"model", O_MODEL, "M", "checkpoint: .gguf, Hugging Face directory, llama2.c .bin"},
    {"calib", O_CALIB, "C", "calibration data: .txt, .jsonl, pre-tokenized .bin"},
    {"eval", O_EVAL, "E", "evaluation data (default: --eval-split of the calibration tokens)"},
    {"eval-split", O_EVAL_SPLIT, "F", "hold out the last fraction F of the calibration tokens\n"
                                      "for evaluation (default 0.5); never used to calibrate"},
    {"out", O_OUT, "DIR", "output directory (created): model.qint.safetensors (integer\n"
                          "model), encodings.json (AIMET), fp-folded/ (HF checkpoint with\n"
                          "the transforms folded in, and the tokenizer), report.json"},
    {"method", O_METHOD, "M", QD_METHOD_NAMES " (default mobilequant);\n"
                              "rtn and smoothquant are always evaluated too"},
    {"wbits", O_WBITS, "B", "weight bits: 8 (W8A8, default) or 4 (W4A8)"},
    {"samples", O_SAMPLES, "N", "calibration windows (default 64)"},
    {"seq-len", O_SEQ_LEN, "T", "tokens per window (default 256)"},
    {"epochs", O_EPOCHS, "E", "passes over the windows (default 10)"},
    {"seed", O_SEED, "S", "seed (default 0)"},
    {"threads", O_THREADS, "K", "threads of OpenBLAS (the FP32 passes and the optimizer's\n"
                                "matrix products), of the program's pool (every other loop)\n"
                                "and of the integer runtime's evaluation (default 0: all the\n"
                                "CPUs this process may run on; the results are the same bits\n"
                                "at any count)"},
    {"abits", O_ABITS, "CLASS=BITS,...", "activation bits (" QD_ABITS_NAMES ") per class, e.g.\n"
                                          "res=16,norm=8; the classes:\n" QD_ACLASS_NAMES},
    {"tokenizer", O_TOKENIZER, "PATH", "tokenizer.bin / tokenizer.json / .gguf (default: the model's)"},
    {"checkpoint", O_CHECKPOINT, "PATH", "optimizer state file (default DIR/checkpoint), saved every\n"
                                         "--checkpoint-every steps and on SIGTERM/SIGINT; a rerun\n"
                                         "with the same inputs resumes from it"},
    {"checkpoint-every", O_CHECKPOINT_EVERY, "N", "steps between checkpoints (default 20; 0: only on stop)"},
    {"max-ppl-increase", O_MAX_PPL, "F", "gate recorded in the report; exit status 3 when missed"},
    {"batch", O_BATCH, "B", "calibration windows per optimizer step (default 1): an epoch\n"
                            "takes one step per B training windows, each step on B\n"
                            "windows at once, so a larger B takes fewer steps and more\n"
                            "memory (omniquant and mobilequant; rtn and smoothquant do\n"
                            "not train)"},
    {"lr-let", O_LR_LET, "START,END", "cosine learning-rate schedule of the LET scales"},
    {"lr-lwc", O_LR_LWC, "START,END", "... of the LWC clipping logits"},
    {"lr-lrl", O_LR_LRL, "START,END", "... of the activation ranges (LRL). Defaults:\n"
                                      "W8 LET 1e-3,1e-4  LWC 1e-2,1e-3  LRL 1e-3,1e-4;\n"
                                      "W4 LET 5e-3,5e-4  LWC 1e-2,1e-3  LRL 1e-3,1e-4.\n"
                                      "The LRL rate is relative to each quantizer's range:\n"
                                      "a step moves a scale by about lr x |scale| and an\n"
                                      "offset by lr x (2^bits - 1) steps, so one rate fits\n"
                                      "8- and 16-bit quantizers (not DESIGN.md's raw 1e-6,1e-7)"},
    {"encodings-version", O_ENC_VERSION, "V", "AIMET encodings.json format: " QD_ENC_VERSION_NAMES
                                              " (default 1.0.0)"},
    {"quiet", O_QUIET, NULL, "no progress bar or progress lines on stderr (errors are\n"
                             "still printed, and the exit status is the same)"},
    {"dry-run", O_DRY_RUN, NULL, "check everything quantize checks first, then print the\n"
                                 "predicted peak memory (per phase, and the parts of the\n"
                                 "peak), the time per optimizer step and of the whole run\n"
                                 "(from a short sgemm measured here); reads no weight,\n"
                                 "writes nothing (--out may be left out)"},
    {"json", O_JSON, NULL, "with --dry-run: the estimate as one JSON object on stdout"},
    {"max-mem", O_MAX_MEM, "SIZE", "refuse to start (exit 1, before any work) when the\n"
                                   "predicted address space at the peak exceeds SIZE\n"
                                   "(512M, 10G, ...): what the server does with\n"
                                   "worker_mem_bytes"},
    {"recompute", O_RECOMPUTE, "auto|on|off", "keep one layer's activations in training and run\n"
                                              "each layer's forward again in the backward: the\n"
                                              "same results, one more forward per step (auto,\n"
                                              "the default: when the run would not fit in\n"
                                              "--max-mem, or 90% of memory, and fits with it)"},
    {0}};

static const char synopsis[] =
    "--model M --calib C [--eval E | --eval-split F] --out DIR\n"
    "                       [--method " "mobilequant|omniquant|smoothquant|rtn] [--wbits 8|4]\n"
    "                       [--samples N] [--seq-len T] [--epochs E] [--seed S] [--threads K]\n"
    "                       [--abits CLASS=BITS,...] [--tokenizer PATH] [--checkpoint PATH]\n"
    "                       [--checkpoint-every N] [--max-ppl-increase F] [--batch B]\n"
    "                       [--lr-let A,B] [--lr-lwc A,B] [--lr-lrl A,B]\n"
    "                       [--encodings-version V] [--quiet] [--max-mem SIZE]\n"
    "                       [--recompute auto|on|off] [--dry-run [--json]]";

static const char epilog[] =
    "exit status: 0 done; 1 failed; 2 bad command line; 3 the --max-ppl-increase gate was\n"
    "missed; 130 stopped by SIGTERM/SIGINT with the state checkpointed (rerun to resume).\n";

static int parse_abits(const cli_args *a, const char *s, int *abits) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (eq) *eq = 0;
        int c = qd_aclass_parse(tok);
        if (!eq || c < 0)
            return cli_fail(a, "'%s' is not CLASS=BITS with a class among %s", tok, QD_ACLASS_NAMES);
        static const int bits[] = {4, 8, 16};
        if (cli_int_choice(a, eq + 1, bits, 3, QD_ABITS_NAMES, &abits[c])) return CLI_BAD;
    }
    return 0;
}

/* "START,END" learning rates */
static int parse_lr(const cli_args *a, const char *s, double *lr) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    char *comma = strchr(buf, ',');
    if (!comma) return cli_fail(a, "'%s' is not START,END", s);
    *comma = 0;
    if (cli_double(a, buf, 1e-12, 10, &lr[0]) || cli_double(a, comma + 1, 0, 10, &lr[1]))
        return CLI_BAD;
    return 0;
}

static bool method_ok(const char *s) {
    qd_method m;
    return qd_method_parse(s, &m, NULL) == QD_OK;
}

/* One option into o. 0, or CLI_BAD after saying why. */
static int take_option(const cli_args *a, int c, qd_quant_opts *o, cli_extra *x) {
    const char *v = a->val;
    long n;
    static const int wbits[] = {4, 8};
    switch (c) {
    case O_MODEL: o->model_path = v; return 0;
    case O_CALIB: o->calib_path = v; return 0;
    case O_EVAL: o->eval_path = v; return 0;
    case O_EVAL_SPLIT: return cli_double(a, v, 1e-6, QD_EVAL_SPLIT_MAX, &o->eval_split);
    case O_TOKENIZER: o->tokenizer_path = v; return 0;
    case O_OUT: o->out_dir = v; return 0;
    case O_METHOD:
        if (cli_word(a, v, method_ok, QD_METHOD_NAMES)) return CLI_BAD;
        snprintf(o->method, sizeof o->method, "%s", v);
        return 0;
    case O_WBITS: return cli_int_choice(a, v, wbits, 2, QD_WBITS_NAMES, &o->wbits);
    case O_ABITS: return parse_abits(a, v, o->abits_override);
    case O_SEED: return cli_u64(a, v, &o->seed);
    case O_CHECKPOINT: x->ckpt = v; return 0;
    case O_MAX_PPL: return cli_double(a, v, 0, 1e6, &o->max_ppl_increase);
    case O_LR_LET: return parse_lr(a, v, o->lr_let);
    case O_LR_LWC: return parse_lr(a, v, o->lr_lwc);
    case O_LR_LRL: return parse_lr(a, v, o->lr_lrl);
    case O_ENC_VERSION:
        if (cli_word(a, v, qd_enc_version_ok, QD_ENC_VERSION_NAMES)) return CLI_BAD;
        snprintf(o->encodings_version, sizeof o->encodings_version, "%s", v);
        return 0;
    case O_QUIET: x->quiet = 1; return 0;
    case O_DRY_RUN: x->dry_run = 1; return 0;
    case O_JSON: x->json = 1; return 0;
    case O_RECOMPUTE:
        if (!strcmp(v, "auto")) o->recompute = QD_RECOMPUTE_AUTO;
        else if (!strcmp(v, "on")) o->recompute = 1;
        else if (!strcmp(v, "off")) o->recompute = 0;
        else return cli_fail(a, "--recompute: '%s' is not auto, on or off", v);
        return 0;
    case O_MAX_MEM:
        if (qd_parse_size(v, &o->max_mem))
            return cli_fail(a, "'%s' is not a size (digits with an optional K, M, G or T)", v);
        return 0;
    }
    /* the integers of the budget and the run, bounded by base/limits.h's table */
    int *dst;
    long lo, hi;
    switch (c) {
    case O_SAMPLES: dst = &o->samples, lo = QD_SAMPLES_MIN, hi = QD_SAMPLES_MAX; break;
    case O_SEQ_LEN: dst = &o->seq_len, lo = QD_SEQ_LEN_MIN, hi = QD_SEQ_LEN_MAX; break;
    case O_EPOCHS: dst = &o->epochs, lo = QD_EPOCHS_MIN, hi = QD_EPOCHS_MAX; break;
    case O_THREADS: dst = &o->threads, lo = 0, hi = QD_THREADS_MAX; break;
    case O_BATCH: dst = &o->batch, lo = 1, hi = QD_BATCH_MAX; break;
    case O_CHECKPOINT_EVERY: dst = &o->checkpoint_every, lo = 0, hi = QD_CHECKPOINT_EVERY_MAX; break;
    default: return CLI_BAD;
    }
    if (cli_int(a, v, lo, hi, &n)) return CLI_BAD;
    *dst = (int)n;
    return 0;
}

/* The command line into o: 0 to run, 1 after --help, 2 on a usage error (explained). */
static int parse_args(int argc, char **argv, qd_quant_opts *o, cli_extra *x) {
    cli_args a;
    cli_args_init(&a, "quantd quantize", synopsis, opts, argc, argv);
    a.epilog = epilog;
    for (int c; (c = cli_next(&a)) != CLI_END;) {
        if (c == CLI_HELP) {
            cli_help(&a);
            return 1;
        }
        if (c == CLI_BAD || take_option(&a, c, o, x)) return 2;
    }
    a.opt[0] = 0;
    if (a.optind < argc) {
        cli_fail(&a, "unexpected operand '%s'", argv[a.optind]);
        return 2;
    }
    if (x->json && !x->dry_run) {
        cli_fail(&a, "--json goes with --dry-run");
        return 2;
    }
    if (x->dry_run && !o->out_dir) o->out_dir = "."; /* never written */
    if (o->threads == 0) { /* all CPUs: counted here, so that the report names the number */
        int n = qd_pool_online_cpus();
        o->threads = n < QD_THREADS_MIN ? QD_THREADS_MIN : n > QD_THREADS_MAX ? QD_THREADS_MAX : n;
    }
    if (!o->model_path || !o->calib_path || !o->out_dir) {
        cli_fail(&a, "--model, --calib and --out are required");
        cli_usage(&a, stderr);
        return 2;
    }
    return 0;
}

/* The report's headline as the client prints it, on stderr (stdout is the report's path). */
static void print_summary(const char *out_dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/report.json", out_dir);
    size_t len;
    qd_err err = {{0}};
    char *text = qd_read_file(p, 64 << 20, &len, &err);
    cJSON *rep = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!rep) return;
    cJSON *head = cJSON_CreateObject();
    api_report_headline(rep, head);
    cli_print_figures(head, stderr);
    cJSON_Delete(head);
    cJSON_Delete(rep);
}

/* The run's outcome as the exit status: 0, 1 failed, 3 gate missed, 130 stopped. */
static int outcome(const qd_quant_opts *o, int rc, const qd_err *run_err, int quiet) {
    if (rc == QD_STOPPED) {
        fprintf(stderr, "quantd quantize: stopped; state saved in %s (rerun to resume)\n",
                o->checkpoint_path);
        return 130;
    }
    if (rc != QD_OK) {
        fprintf(stderr, "quantd quantize: %s\n", run_err->msg);
        return 1;
    }
    printf("%s/report.json\n", o->out_dir);
    if (!quiet) print_summary(o->out_dir);
    /* the gate outcome is in the report: one source of truth */
    qd_err err = {{0}};
    int verdict;
    if (qd_report_gate(o->out_dir, &verdict, &err)) {
        fprintf(stderr, "quantd quantize: %s\n", err.msg);
        return 1;
    }
    if (verdict == 0) {
        fprintf(stderr, "quantd quantize: gate max-ppl-increase missed\n");
        return 3;
    }
    return 0;
}

/* --dry-run: the checks, then the estimate on stdout. 0, or 1 when a check fails. */
static int dry_run(const qd_quant_opts *o, int json) {
    qd_estimate e;
    char field[QD_CHECK_FIELD];
    qd_err err = {{0}};
    if (qd_quantize_plan(o, 1, &e, field, &err)) {
        fprintf(stderr, "quantd quantize: %s\n", err.msg);
        return 1;
    }
    if (!json) {
        char buf[8192];
        qd_estimate_format(&e, buf, sizeof buf);
        fputs(buf, stdout);
        return 0;
    }
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "peak_bytes", e.peak_bytes);
    cJSON_AddStringToObject(r, "peak_phase", e.ph[e.peak].phase);
    cJSON_AddNumberToObject(r, "address_space_bytes", e.vm_bytes);
    cJSON_AddBoolToObject(r, "recompute", e.recompute);
    cJSON *ph = cJSON_AddArrayToObject(r, "phases");
    for (int i = 0; i < e.n_phases; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "phase", e.ph[i].phase);
        cJSON_AddNumberToObject(p, "bytes", e.ph[i].bytes);
        cJSON *parts = cJSON_AddArrayToObject(p, "parts");
        for (int k = 0; k < e.ph[i].n_parts; k++) {
            cJSON *q = cJSON_CreateObject();
            cJSON_AddStringToObject(q, "name", e.ph[i].part[k].name);
            cJSON_AddNumberToObject(q, "bytes", e.ph[i].part[k].bytes);
            cJSON_AddItemToArray(parts, q);
        }
        cJSON_AddItemToArray(ph, p);
    }
    cJSON_AddNumberToObject(r, "sgemm_gflops", e.sgemm_gflops);
    cJSON_AddNumberToObject(r, "optimizer_steps", (double)e.steps);
    cJSON_AddNumberToObject(r, "step_gflop", e.step_flops / 1e9);
    cJSON_AddNumberToObject(r, "step_s", e.step_s);
    cJSON_AddNumberToObject(r, "total_s", e.total_s);
    char *t = cJSON_Print(r);
    if (t) puts(t);
    free(t);
    cJSON_Delete(r);
    return 0;
}

int cmd_quantize(int argc, char **argv) {
    qd_quant_opts o;
    qd_quant_defaults(&o);
    o.threads = 0; /* unlike a job's default (1: a server runs several workers), all CPUs */
    cli_extra x = {0};
    int pr = parse_args(argc, argv, &o, &x);
    if (pr) return pr == 1 ? 0 : 2;
    if (x.dry_run) return dry_run(&o, x.json);
    const char *ckpt = x.ckpt;
    int quiet = x.quiet;
    char ckbuf[4200];
    if (!ckpt) {
        snprintf(ckbuf, sizeof ckbuf, "%s/checkpoint", o.out_dir);
        ckpt = ckbuf;
    }
    o.checkpoint_path = ckpt;
    /* SIGTERM and SIGINT raise the stop request qd_quantize polls: it checkpoints and stops */
    qd_stop_on_signals();
    bar_state bs = {isatty(fileno(stderr)), quiet, 0, NULL, 0};
    o.progress = on_progress;
    o.progress_ctx = &bs;
    qd_err err = {{0}};
    int rc = qd_quantize(&o, &err);
    if (bs.tty && bs.last_phase) fputc('\n', stderr);
    return outcome(&o, rc, &err, quiet);
}
