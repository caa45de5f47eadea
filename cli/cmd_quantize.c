/* quantd quantize: the whole pipeline offline (load, calibrate, optimize, evaluate, export
 * the artifacts, report), the same code path as a job (qd_quantize). SIGTERM/SIGINT checkpoint and stop; a rerun with
 * the same arguments resumes. A progress bar when stderr is a terminal, plain lines otherwise. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "quant/sim/fakequant.h"
#include "quant/quantize.h"
#include "quant/report.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: quantd quantize --model M --calib C [--eval E | --eval-split F] --out DIR\n"
            "                       [--method mobilequant|omniquant|smoothquant|rtn] [--wbits 8|4]\n"
            "                       [--samples N] [--seq-len T] [--epochs E] [--seed S]\n"
            "                       [--threads K] [--abits CLASS=BITS,...] [--tokenizer PATH]\n"
            "                       [--checkpoint PATH] [--checkpoint-every N]\n"
            "                       [--max-ppl-increase F] [--batch B] [--lr-let A,B]\n"
            "                       [--lr-lwc A,B] [--lr-lrl A,B] [--encodings-version V]\n"
            "                       [--quiet]\n"
            "  --model       checkpoint: .gguf, Hugging Face directory, llama2.c .bin\n"
            "  --calib       calibration data: .txt, .jsonl, pre-tokenized .bin\n"
            "  --eval        evaluation data; or --eval-split F holds out the last fraction F of\n"
            "                the calibration tokens (default 0.5)\n"
            "  --out         output directory (created): model.qint.safetensors (integer\n"
            "                model), encodings.json (AIMET), fp-folded/ (HF checkpoint with the\n"
            "                transforms folded in, and the tokenizer), report.json\n"
            "  --method      default mobilequant; rtn and smoothquant are always evaluated too\n"
            "  --wbits       8 (W8A8, default) or 4 (W4A8)\n"
            "  --samples/--seq-len/--epochs   budget (default 64 / 256 / 10)\n"
            "  --abits       per activation class bits, e.g. res=16,norm=8 (classes: res norm qkv\n"
            "                qk_in score prob pv oproj gateup silu down_in down_out head)\n"
            "  --checkpoint  optimizer state file (default DIR/checkpoint); saved every N steps\n"
            "                (default 20) and on SIGTERM/SIGINT; a rerun resumes from it\n"
            "  --max-ppl-increase F  gate recorded in the report; exit status 3 when missed\n"
            "  --lr-let/--lr-lwc/--lr-lrl START,END  cosine learning-rate schedules of the LET\n"
            "                scales, the LWC clipping logits and the activation ranges (LRL).\n"
            "                Defaults: W8 LET 1e-3,1e-4  LWC 1e-2,1e-3  LRL 1e-3,1e-4;\n"
            "                W4 LET 5e-3,5e-4  LWC 1e-2,1e-3  LRL 1e-3,1e-4. The LRL rate is\n"
            "                relative to each quantizer's range: a step moves a scale by about\n"
            "                lr x |scale| and an offset by lr x (2^bits - 1) steps, so one rate\n"
            "                fits 8- and 16-bit quantizers (not DESIGN.md's raw 1e-6,1e-7)\n"
            "  --encodings-version 1.0.0|0.6.1  AIMET encodings.json format (default 1.0.0)\n");
}

typedef struct {
    int tty, quiet;
    const char *last_phase;
    double last_print;
} bar_state;

static void on_progress(void *ctx, const qd_progress *p) {
    bar_state *b = ctx;
    if (b->quiet) return;
    double now = p->elapsed_s;
    int phase_change = !b->last_phase || strcmp(b->last_phase, p->phase);
    if (b->tty) {
        if (phase_change && b->last_phase) fputc('\n', stderr);
        if (!phase_change && now - b->last_print < 0.1 && p->step != p->total) return;
        char bar[31];
        int fill = p->total > 0 ? (int)(30.0 * (double)p->step / (double)p->total) : 0;
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%-9s [%s] %ld/%ld", p->phase, bar, p->step, p->total);
        if (!isnan(p->loss)) fprintf(stderr, " loss %.3e", p->loss);
        if (!isnan(p->eta_s)) fprintf(stderr, " eta %.0fs", p->eta_s);
        fprintf(stderr, " %.0fs   ", p->elapsed_s);
    } else {
        /* a log: one line per phase change and at most one a second */
        if (!phase_change && now - b->last_print < 1.0 && p->step != p->total) return;
        fprintf(stderr, "%s %ld/%ld", p->phase, p->step, p->total);
        if (!isnan(p->loss)) fprintf(stderr, " loss=%.4e", p->loss);
        if (!isnan(p->eta_s)) fprintf(stderr, " eta=%.0fs", p->eta_s);
        fprintf(stderr, " elapsed=%.1fs\n", p->elapsed_s);
    }
    b->last_phase = p->phase;
    b->last_print = now;
}

static int parse_abits(const char *s, int *abits) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '=');
        if (!eq) goto bad;
        *eq = 0;
        int c;
        for (c = 0; c < QD_AC_COUNT; c++)
            if (!strcmp(tok, qd_aclass_name(c))) break;
        if (c == QD_AC_COUNT) goto bad;
        long v;
        if (arg_int("--abits", eq + 1, 2, 16, &v)) return -1;
        abits[c] = (int)v;
    }
    return 0;
bad:
    fprintf(stderr, "quantd quantize: --abits: expected CLASS=BITS[,...] with a known class\n");
    return -1;
}

/* "START,END" learning rates */
static int parse_lr(const char *flag, const char *s, double *lr) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    char *comma = strchr(buf, ',');
    if (!comma) {
        fprintf(stderr, "quantd quantize: %s: expected START,END\n", flag);
        return -1;
    }
    *comma = 0;
    if (arg_double(flag, buf, 1e-12, 10, &lr[0]) || arg_double(flag, comma + 1, 0, 10, &lr[1]))
        return -1;
    return 0;
}

int cmd_quantize(int argc, char **argv) {
    qd_quant_opts o;
    qd_quant_defaults(&o);
    const char *method = NULL, *ckpt = NULL;
    int quiet = 0;
    long v;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val;
#define NEXT() if (!(val = arg_next(argc, argv, &i))) return 2
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model")) {
            NEXT();
            o.model_path = val;
        } else if (!strcmp(a, "--calib")) {
            NEXT();
            o.calib_path = val;
        } else if (!strcmp(a, "--eval")) {
            NEXT();
            o.eval_path = val;
        } else if (!strcmp(a, "--eval-split")) {
            NEXT();
            if (arg_double("--eval-split", val, 1e-6, 0.999999, &o.eval_split)) return 2;
        } else if (!strcmp(a, "--tokenizer")) {
            NEXT();
            o.tokenizer_path = val;
        } else if (!strcmp(a, "--out")) {
            NEXT();
            o.out_dir = val;
        } else if (!strcmp(a, "--method")) {
            NEXT();
            method = val;
        } else if (!strcmp(a, "--wbits")) {
            NEXT();
            if (arg_int("--wbits", val, 4, 8, &v)) return 2;
            if (v != 4 && v != 8) {
                fprintf(stderr, "quantd quantize: --wbits: 8 or 4\n");
                return 2;
            }
            o.wbits = (int)v;
        } else if (!strcmp(a, "--samples")) {
            NEXT();
            if (arg_int("--samples", val, QD_SAMPLES_MIN, QD_SAMPLES_MAX, &v)) return 2;
            o.samples = (int)v;
        } else if (!strcmp(a, "--seq-len")) {
            NEXT();
            if (arg_int("--seq-len", val, QD_SEQ_LEN_MIN, QD_SEQ_LEN_MAX, &v)) return 2;
            o.seq_len = (int)v;
        } else if (!strcmp(a, "--epochs")) {
            NEXT();
            if (arg_int("--epochs", val, QD_EPOCHS_MIN, QD_EPOCHS_MAX, &v)) return 2;
            o.epochs = (int)v;
        } else if (!strcmp(a, "--seed")) {
            NEXT();
            if (arg_u64("--seed", val, &o.seed)) return 2;
        } else if (!strcmp(a, "--threads")) {
            NEXT();
            if (arg_int("--threads", val, QD_THREADS_MIN, QD_THREADS_MAX, &v)) return 2;
            o.threads = (int)v;
        } else if (!strcmp(a, "--abits")) {
            NEXT();
            if (parse_abits(val, o.abits_override)) return 2;
        } else if (!strcmp(a, "--checkpoint")) {
            NEXT();
            ckpt = val;
        } else if (!strcmp(a, "--checkpoint-every")) {
            NEXT();
            if (arg_int("--checkpoint-every", val, 0, QD_CHECKPOINT_EVERY_MAX, &v)) return 2;
            o.checkpoint_every = (int)v;
        } else if (!strcmp(a, "--max-ppl-increase")) {
            NEXT();
            if (arg_double("--max-ppl-increase", val, 0, 1e6, &d)) return 2;
            o.max_ppl_increase = d;
        } else if (!strcmp(a, "--lr-let") || !strcmp(a, "--lr-lwc") || !strcmp(a, "--lr-lrl")) {
            NEXT();
            double *dst = a[6] == 'e' ? o.lr_let : (a[6] == 'w' ? o.lr_lwc : o.lr_lrl);
            if (parse_lr(a, val, dst)) return 2;
        } else if (!strcmp(a, "--batch")) {
            NEXT();
            if (arg_int("--batch", val, 1, QD_BATCH_MAX, &v)) return 2;
            o.batch = (int)v;
        } else if (!strcmp(a, "--encodings-version")) {
            NEXT();
            if (strcmp(val, "1.0.0") && strcmp(val, "0.6.1")) {
                fprintf(stderr, "quantd quantize: --encodings-version: 1.0.0 or 0.6.1\n");
                return 2;
            }
            snprintf(o.encodings_version, sizeof o.encodings_version, "%s", val);
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else {
            fprintf(stderr, "quantd quantize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
#undef NEXT
    }
    if (!o.model_path || !o.calib_path || !o.out_dir) {
        fprintf(stderr, "quantd quantize: --model, --calib and --out are required\n");
        usage(stderr);
        return 2;
    }
    if (method) {
        if (strlen(method) >= sizeof o.method) {
            fprintf(stderr, "quantd quantize: --method: unknown '%s'\n", method);
            return 2;
        }
        strcpy(o.method, method);
    }
    char ckbuf[4096];
    if (!ckpt) {
        snprintf(ckbuf, sizeof ckbuf, "%s/checkpoint", o.out_dir);
        ckpt = ckbuf;
    }
    o.checkpoint_path = ckpt;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    o.stop = &stop_flag;
    bar_state bs = {isatty(fileno(stderr)), quiet, NULL, 0};
    o.progress = on_progress;
    o.progress_ctx = &bs;
    qd_err err = {{0}};
    int rc = qd_quantize(&o, &err);
    if (bs.tty && bs.last_phase) fputc('\n', stderr);
    if (rc == 1) {
        fprintf(stderr, "quantd quantize: stopped; state saved in %s (rerun to resume)\n", ckpt);
        return 130;
    }
    if (rc != QD_OK) {
        fprintf(stderr, "quantd quantize: %s\n", err.msg);
        return 1;
    }
    printf("%s/report.json\n", o.out_dir);
    /* the gate outcome is in the report: one source of truth */
    int verdict;
    if (qd_report_gate(o.out_dir, &verdict, &err)) {
        fprintf(stderr, "quantd quantize: %s\n", err.msg);
        return 1;
    }
    if (verdict == 0) {
        fprintf(stderr, "quantd quantize: gate max-ppl-increase missed\n");
        return 3;
    }
    return 0;
}
