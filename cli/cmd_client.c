/* quantd client: the CI side of the service. Submits a job (uploading only the files the
 * server does not already hold), follows its progress, checks the report against gates and
 * says how it went through the exit status, so that a pipeline step fails when the quantized
 * model misses its accuracy budget. Progress goes to stderr; results to stdout (JSON with
 * --json), so `quantd client submit ... --wait --json > result.json` keeps a clean record.
 *
 * Exit statuses (also in the usage text and docs/client.md):
 *   0 the request worked; for a waited-on job: it succeeded and every gate passed
 *   1 the job failed, was cancelled or timed out
 *   2 bad command line
 *   3 the job succeeded but a gate failed (or could not be evaluated)
 *   4 the server rejected the request (4xx: validation, auth, unknown job, conflict)
 *   5 the server could not be reached (or the connection broke and did not come back)
 *   6 the server failed (5xx) or answered something unreadable
 *   7 a local file could not be read or written
 *   8 --wait-timeout passed before the job finished */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "base/fs.h"
#include "base/hash.h"
#include "base/limits.h"
#include "base/report_keys.h"
#include "base/str.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/client.h"

enum {
    EXIT_OK = 0,
    EXIT_JOB_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_GATE = 3,
    EXIT_REJECTED = 4,
    EXIT_UNREACHABLE = 5,
    EXIT_SERVER = 6,
    EXIT_LOCAL = 7,
    EXIT_WAIT_TIMEOUT = 8,
};

#define MAX_GATES 8

/* A gate the report must meet. Kinds: max_ppl_increase (relative, integer model vs FP32; the
 * server records it too), max_kl and min_top1 (checked here against eval.int). */
typedef struct gate {
    char name[32];
    double limit;
} gate;

typedef struct opts {
    qc_conn conn;
    bool json;
    bool quiet;
    double retry_s;      /* how long a wait keeps trying a server that went away */
    double wait_timeout; /* 0: wait as long as it takes */
} opts;

static void usage(FILE *f) {
    fprintf(f,
        "usage: quantd client [--url URL] [--token T] [--json] [--quiet] COMMAND ...\n"
        "\n"
        "commands:\n"
        "  submit --model F --calib F [--eval F | --eval-split X] [--tokenizer F]\n"
        "         [--method mobilequant|omniquant|smoothquant|rtn] [--wbits 4|8]\n"
        "         [--abits CLASS=BITS]... [--samples N] [--seq-len N] [--epochs N]\n"
        "         [--seed N] [--threads N] [--timeout S] [--label K=V]...\n"
        "         [--gate max_ppl_increase=2%%]... [--encodings-version 1.0.0|0.6.1]\n"
        "         [--wait [--wait-timeout S]]\n"
        "                      upload (skipping files the server has) and submit a job\n"
        "  wait ID [--gate ...] [--wait-timeout S]\n"
        "                      follow a job to its end and check its gates\n"
        "  status ID [--gate ...]  one job's state, progress and report figures\n"
        "  events ID [--from N]    the job's event stream (JSON lines with --json)\n"
        "  download ID --out DIR [--name NAME]...  artifacts into DIR\n"
        "  cancel ID           ask the server to stop a job\n"
        "  list [--state S] [--label K=V] [--limit N] [--offset N]\n"
        "\n"
        "  --url URL     server (default $QUANTD_URL, else http://127.0.0.1:8080)\n"
        "  --token T     bearer token (default $QUANTD_TOKEN)\n"
        "  --json        JSON on stdout instead of text\n"
        "  --quiet       no progress on stderr\n"
        "  --retry S     how long wait/events keep trying a server that went away (default 120)\n"
        "\n"
        "gates: max_ppl_increase=X (relative perplexity increase of the integer model over\n"
        "FP32; X as 0.02 or 2%%), max_kl=X, min_top1=X (of the integer model; 0.9 or 90%%).\n"
        "\n"
        "exit status: 0 ok (job succeeded, gates passed); 1 job failed, cancelled or timed out;\n"
        "2 usage; 3 a gate failed; 4 request rejected (4xx); 5 server unreachable;\n"
        "6 server error (5xx); 7 local file error; 8 --wait-timeout passed.\n");
}

/* ---- small helpers ---- */

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static double num_or_nan(const cJSON *o, const char *k) {
    const cJSON *v = get(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *str_or(const cJSON *o, const char *k, const char *dflt) {
    const char *s = cJSON_GetStringValue(get(o, k));
    return s ? s : dflt;
}

/* Percent-encodes s for a query string. */
static void url_escape(const char *s, char *out, size_t n) {
    size_t k = 0;
    for (; *s && k + 4 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || strchr("-._~", c)) out[k++] = (char)c;
        else k += (size_t)snprintf(out + k, n - k, "%%%02X", c);
    }
    out[k] = 0;
}

/* Parses "0.02", "2%" into a fraction. */
static int parse_fraction(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s) return -1;
    if (*end == '%') {
        v /= 100;
        end++;
    }
    if (*end || !isfinite(v) || v < 0) return -1;
    *out = v;
    return 0;
}

static int parse_gate(const char *s, gate *g) {
    const char *eq = strchr(s, '=');
    if (!eq || eq == s || (size_t)(eq - s) >= sizeof g->name) return -1;
    snprintf(g->name, sizeof g->name, "%.*s", (int)(eq - s), s);
    if (strcmp(g->name, "max_ppl_increase") && strcmp(g->name, "max_kl") && strcmp(g->name, "min_top1"))
        return -1;
    return parse_fraction(eq + 1, &g->limit);
}

/* Prints why a request did not work and returns the matching exit status. */
static int fail_resp(const char *what, const qc_resp *r) {
    if (r->status == 0) {
        fprintf(stderr, "quantd client: %s: server unreachable: %s\n", what, r->error);
        return EXIT_UNREACHABLE;
    }
    if (r->status < 0) {
        fprintf(stderr, "quantd client: %s: %s\n", what, r->error);
        return EXIT_LOCAL;
    }
    cJSON *o = r->body ? cJSON_Parse(r->body) : NULL;
    const cJSON *e = get(o, "error");
    if (e) {
        const char *field = cJSON_GetStringValue(get(e, "field"));
        fprintf(stderr, "quantd client: %s: HTTP %ld %s: %s", what, r->status,
                str_or(e, "code", "error"), str_or(e, "message", ""));
        if (field) fprintf(stderr, " (field: %s)", field);
        fputc('\n', stderr);
    } else {
        fprintf(stderr, "quantd client: %s: HTTP %ld\n", what, r->status);
    }
    cJSON_Delete(o);
    return r->status >= 400 && r->status < 500 ? EXIT_REJECTED : EXIT_SERVER;
}

/* A JSON request; on success *out (may be NULL) gets the parsed answer. Returns an exit
 * status; non-zero ones are already explained on stderr. */
static int call(const opts *o, const char *method, const char *path, const char *body,
                const char *what, cJSON **out) {
    qc_resp r;
    int rc = qc_request(&o->conn, method, path, body ? "application/json" : NULL, body,
                        body ? strlen(body) : 0, false, &r);
    if (rc != 0 || r.status < 200 || r.status >= 300) {
        int ex = fail_resp(what, &r);
        qc_resp_free(&r);
        return ex;
    }
    if (out) {
        *out = r.body ? cJSON_Parse(r.body) : NULL;
        if (!*out) {
            fprintf(stderr, "quantd client: %s: the server's answer is not JSON\n", what);
            qc_resp_free(&r);
            return EXIT_SERVER;
        }
    }
    qc_resp_free(&r);
    return EXIT_OK;
}

static void print_json(const cJSON *o) {
    char *t = cJSON_Print(o);
    if (t) puts(t);
    free(t);
    fflush(stdout);
}

/* ---- the command line ---- */

/* The options every command takes, wherever they appear. */
enum { G_URL = CLI_KEY, G_TOKEN, G_JSON, G_RETRY, OWN = CLI_KEY + 16 };
static const cli_opt global_opts[] = {
    {"url", G_URL, "URL", "server (default $QUANTD_URL, else http://127.0.0.1:8080)"},
    {"token", G_TOKEN, "T", "bearer token (default $QUANTD_TOKEN)"},
    {"json", G_JSON, NULL, "JSON on stdout instead of text"},
    {"quiet", 'q', NULL, "no progress on stderr"},
    {"retry", G_RETRY, "S", "how long wait/events keep trying a server that went away\n"
                            "(default 120)"},
    {0}};

/* One command's parser: the global options, then its own. */
typedef struct cmd_parser {
    cli_args a;
    cli_opt all[CLI_MAX_OPTS];
} cmd_parser;

static void parser_init(cmd_parser *p, const char *prog, const char *synopsis, const cli_opt *own,
                        int argc, char **argv) {
    int n = 0;
    for (const cli_opt *g = global_opts; g->name; g++) p->all[n++] = *g;
    for (; own && own->name && n < CLI_MAX_OPTS - 1; own++) p->all[n++] = *own;
    p->all[n] = (cli_opt){0};
    cli_args_init(&p->a, prog, synopsis, p->all, argc, argv);
}

/* The next option of the command's own (global ones are applied to o on the way): its key,
 * CLI_END, CLI_HELP (the help is printed) or CLI_BAD (explained). */
static int next_opt(cmd_parser *p, opts *o) {
    for (;;) {
        int c = cli_next(&p->a);
        const char *v = p->a.val;
        switch (c) {
        case G_URL: snprintf(o->conn.url, sizeof o->conn.url, "%s", v); break;
        case G_TOKEN: snprintf(o->conn.token, sizeof o->conn.token, "%s", v); break;
        case G_JSON: o->json = true; break;
        case 'q': o->quiet = true; break;
        case G_RETRY:
            if (cli_double(&p->a, v, 0, 86400, &o->retry_s)) return CLI_BAD;
            break;
        case CLI_HELP: cli_help(&p->a); return CLI_HELP;
        default: return c;
        }
    }
}

/* The one job id operand of wait, status, events, cancel and download. */
static int one_id(cmd_parser *p, const char **id) {
    cli_args *a = &p->a;
    a->opt[0] = 0;
    int n = a->argc - a->optind;
    if (n != 1) {
        cli_fail(a, n ? "one job id only" : "a job id is required");
        cli_usage(a, stderr);
        return CLI_BAD;
    }
    *id = a->argv[a->optind];
    if (!qd_uuid_like(*id)) return cli_fail(a, "'%s' is not a job id", *id);
    return 0;
}

static int no_operands(cmd_parser *p) {
    cli_args *a = &p->a;
    a->opt[0] = 0;
    if (a->optind < a->argc) return cli_fail(a, "unexpected operand '%s'", a->argv[a->optind]);
    return 0;
}

static int take_gate(const cli_args *a, const char *v, gate *gates, int *ngates) {
    if (*ngates == MAX_GATES) return cli_fail(a, "at most %d gates", MAX_GATES);
    if (parse_gate(v, &gates[*ngates]))
        return cli_fail(a, "'%s' is not max_ppl_increase=X, max_kl=X or min_top1=X", v);
    (*ngates)++;
    return 0;
}

/* ---- report figures and gates ---- */

/* The eval entry of the integer model: "int" (the integer runtime) when the report has it,
 * else the method's fake-quant figures. */
static const cJSON *int_eval(const cJSON *eval, const char *method) {
    const cJSON *e = get(eval, QD_RK_EVAL_INT);
    if (!e && method) e = get(eval, method);
    return e;
}

/* The server's own verdict on a gate, when the report carries one: 1 passed, 0 failed, -1
 * none. The report has one server-side gate, {"gates":{"max_ppl_increase":limit,
 * "ppl_increase":measured,"passed":bool}} (quant/report.h). */
static int server_verdict(const cJSON *result, const char *name) {
    const cJSON *gs = get(result, QD_RK_GATES);
    const cJSON *p = get(gs, QD_RK_GATE_PASSED);
    if (!strcmp(name, QD_RK_GATE_MAX_PPL) && cJSON_IsNumber(get(gs, QD_RK_GATE_MAX_PPL)) &&
        cJSON_IsBool(p))
        return cJSON_IsTrue(p);
    return -1;
}

/* Checks the gates against a finished job; fills arr (may be NULL) with one object per gate
 * and prints one line each to f. Returns how many failed. */
static int check_gates(const cJSON *job, const gate *gates, int n, cJSON *arr, FILE *f) {
    const cJSON *result = get(job, "result");
    const cJSON *spec = get(job, "spec");
    const cJSON *eval = get(result, QD_RK_EVAL);
    const char *method = str_or(spec, "method", NULL);
    gate all[MAX_GATES + 1];
    int k = 0;
    for (int i = 0; i < n && k < MAX_GATES; i++) all[k++] = gates[i];
    /* a gate the job was submitted with counts even when this command was not given it */
    const cJSON *sg = get(get(spec, "gates"), "max_ppl_increase");
    bool have = false;
    for (int i = 0; i < k; i++) have |= !strcmp(all[i].name, "max_ppl_increase");
    if (cJSON_IsNumber(sg) && !have) {
        snprintf(all[k].name, sizeof all[k].name, "max_ppl_increase");
        all[k++].limit = sg->valuedouble;
    }
    int failed = 0;
    const cJSON *ie = int_eval(eval, method);
    for (int i = 0; i < k; i++) {
        const gate *g = &all[i];
        double value = NAN;
        bool pass = false;
        if (!strcmp(g->name, "max_ppl_increase")) {
            double pf = num_or_nan(get(eval, QD_RK_EVAL_FP32), QD_RK_PPL);
            double pq = num_or_nan(ie, QD_RK_PPL);
            if (isfinite(pf) && isfinite(pq) && pf > 0) value = pq / pf - 1;
            double srv = num_or_nan(get(result, QD_RK_GATES), QD_RK_GATE_PPL_INCREASE);
            if (isfinite(srv)) value = srv; /* the figure the server's verdict rests on */
            pass = isfinite(value) && value <= g->limit + 1e-12;
        } else if (!strcmp(g->name, "max_kl")) {
            value = num_or_nan(ie, QD_RK_KL);
            pass = isfinite(value) && value <= g->limit;
        } else {
            value = num_or_nan(ie, QD_RK_TOP1);
            pass = isfinite(value) && value >= g->limit;
        }
        int sv = server_verdict(result, g->name);
        /* The server's verdict wins where it gave one: it saw the full-precision figures. */
        if (sv >= 0) pass = sv == 1;
        failed += !pass;
        bool pct = strcmp(g->name, "max_kl") != 0;
        if (f) {
            if (isfinite(value))
                fprintf(f, "gate %s %s %.4g%s: %.4g%s  %s\n", g->name,
                        g->name[1] == 'i' ? ">=" : "<=", pct ? 100 * g->limit : g->limit,
                        pct ? "%" : "", pct ? 100 * value : value, pct ? "%" : "",
                        pass ? "passed" : "FAILED");
            else
                fprintf(f, "gate %s: %s\n", g->name,
                        pass ? "passed (server's verdict)"
                             : "FAILED (the report lacks the figures to check it)");
        }
        if (arr) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", g->name);
            cJSON_AddNumberToObject(o, "limit", g->limit);
            if (isfinite(value)) cJSON_AddNumberToObject(o, "value", value);
            else cJSON_AddNullToObject(o, "value");
            cJSON_AddBoolToObject(o, "passed", pass);
            cJSON_AddItemToArray(arr, o);
        }
    }
    /* the report's own verdict */
    const cJSON *p = get(get(result, QD_RK_GATES), QD_RK_GATE_PASSED);
    if (cJSON_IsFalse(p) && failed == 0) {
        if (f) fprintf(f, "gate: the report says a gate failed\n");
        failed = 1;
    }
    return failed;
}

static void fmt_num(char *b, size_t n, double v, const char *fmt) {
    if (isfinite(v)) snprintf(b, n, fmt, v);
    else snprintf(b, n, "-");
}

/* The report's headline figures as a table (cli.h); `quantd quantize` ends with it too. */
void cli_print_figures(const cJSON *result, FILE *f) {
    const cJSON *eval = get(result, QD_RK_EVAL);
    if (cJSON_IsObject(eval)) {
        fprintf(f, "%-14s %12s %12s %8s\n", "variant", "perplexity", "KL", "top-1");
        /* fp32, the methods in the table's order, the integer runtime */
        const char *order[QD_METHOD_COUNT + 2];
        order[0] = QD_RK_EVAL_FP32;
        for (int m = 0; m < QD_METHOD_COUNT; m++) order[1 + m] = qd_method_name((qd_method)m);
        order[QD_METHOD_COUNT + 1] = QD_RK_EVAL_INT;
        const size_t no = sizeof order / sizeof order[0];
        /* the known variants in a fixed order, then whatever else the report holds */
        for (size_t i = 0; i <= no; i++) {
            const cJSON *e;
            cJSON_ArrayForEach(e, eval) {
                size_t k = 0;
                while (k < no && strcmp(e->string, order[k])) k++;
                /* figures only: eval.reference is how FP32 was kept, not a variant */
                if (k != i || !cJSON_IsObject(e) || !cJSON_IsNumber(get(e, QD_RK_PPL))) continue;
                char a[32], b[32], c[32];
                fmt_num(a, sizeof a, num_or_nan(e, QD_RK_PPL), "%.4f");
                fmt_num(b, sizeof b, num_or_nan(e, QD_RK_KL), "%.5f");
                fmt_num(c, sizeof c, num_or_nan(e, QD_RK_TOP1) * 100, "%.2f%%");
                fprintf(f, "%-14s %12s %12s %8s\n",
                        !strcmp(e->string, QD_RK_EVAL_INT) ? "int (runtime)" : e->string,
                        a, b, c);
            }
        }
    }
    const cJSON *sizes = get(result, QD_RK_SIZE);
    if (cJSON_IsObject(sizes)) {
        const cJSON *s;
        cJSON_ArrayForEach(s, sizes) {
            if (cJSON_IsNumber(s)) {
                if (strstr(s->string, "bytes")) {
                    char h[32];
                    fprintf(f, "size %-22s %s\n", s->string, qc_human_size(s->valuedouble, h, sizeof h));
                } else {
                    fprintf(f, "size %-22s %.4g\n", s->string, s->valuedouble);
                }
            }
        }
    }
}

static int job_outcome(const cJSON *job, const gate *gates, int ngates, bool print, FILE *f,
                       cJSON *gate_arr) {
    const char *state = str_or(job, "state", "?");
    if (!strcmp(state, "succeeded")) {
        if (print) cli_print_figures(get(job, "result"), f);
        return check_gates(job, gates, ngates, gate_arr, print ? f : NULL) ? EXIT_GATE : EXIT_OK;
    }
    if (!strcmp(state, "failed") || !strcmp(state, "cancelled") || !strcmp(state, "timed_out")) {
        if (print) {
            const char *err = cJSON_GetStringValue(get(job, "error"));
            fprintf(f, "job %s %s%s%s\n", str_or(job, "id", "?"), state, err ? ": " : "", err ? err : "");
            const char *tail = cJSON_GetStringValue(get(job, "log_tail"));
            if (tail && *tail) fprintf(f, "last lines of the worker's log:\n%s%s", tail,
                                       tail[strlen(tail) - 1] == '\n' ? "" : "\n");
        }
        return EXIT_JOB_FAILED;
    }
    return EXIT_OK; /* queued or running */
}

/* ---- progress from events ---- */

typedef struct follow {
    const opts *o;
    bool tty;
    bool raw;         /* `events`: every event to stdout */
    char phase[32];
    double last_line;
    bool open_line;   /* a \r progress line is on the terminal */
    const char *state; /* last state seen */
    char state_buf[16];
} follow;

static void end_line(follow *fl) {
    if (fl->open_line) {
        fputc('\n', stderr);
        fl->open_line = false;
    }
}

static void print_event_text(FILE *f, const cJSON *e) {
    const char *type = str_or(e, "type", "");
    if (!strcmp(type, "progress")) {
        char loss[32], eta[32];
        fmt_num(loss, sizeof loss, num_or_nan(e, "loss"), "%.4g");
        fmt_num(eta, sizeof eta, num_or_nan(e, "eta_s"), "%.0fs");
        fprintf(f, "%-10s %ld/%ld  loss %s  eta %s", str_or(e, "phase", "?"),
                (long)num_or_nan(e, "step"), (long)num_or_nan(e, "total"), loss, eta);
    } else if (!strcmp(type, "state")) {
        const char *reason = cJSON_GetStringValue(get(e, "reason"));
        fprintf(f, "state %s%s%s", str_or(e, "state", "?"), reason ? ": " : "", reason ? reason : "");
    } else if (!strcmp(type, "log")) {
        fprintf(f, "[%s] %s", str_or(e, "level", "info"), str_or(e, "message", ""));
    } else {
        fprintf(f, "%s", type);
    }
}

static int on_event(void *ctx, const qc_event *ev) {
    follow *fl = ctx;
    cJSON *e = cJSON_Parse(ev->data);
    if (!e) return 0;
    const char *type = str_or(e, "type", "");
    if (!strcmp(type, "state")) {
        snprintf(fl->state_buf, sizeof fl->state_buf, "%s", str_or(e, "state", ""));
        fl->state = fl->state_buf;
    }
    if (fl->raw) {
        if (fl->o->json) {
            fputs(ev->data, stdout);
        } else {
            printf("%ld ", ev->id);
            print_event_text(stdout, e);
        }
        fputc('\n', stdout);
        fflush(stdout);
    } else if (!fl->o->quiet) {
        bool progress = !strcmp(type, "progress");
        double now = qc_now();
        const char *phase = str_or(e, "phase", "");
        bool phase_change = progress && strcmp(phase, fl->phase);
        bool last = progress && num_or_nan(e, "step") >= num_or_nan(e, "total");
        if (progress && fl->tty) {
            fputs("\r\033[K  ", stderr);
            print_event_text(stderr, e);
            fl->open_line = true;
            if (phase_change) snprintf(fl->phase, sizeof fl->phase, "%s", phase);
        } else if (!progress || phase_change || last || now - fl->last_line >= 5) {
            /* logs get a line per phase and one every few seconds, not one per step */
            end_line(fl);
            fputs("  ", stderr);
            print_event_text(stderr, e);
            fputc('\n', stderr);
            fl->last_line = now;
            if (phase_change) snprintf(fl->phase, sizeof fl->phase, "%s", phase);
        }
        fflush(stderr);
    }
    cJSON_Delete(e);
    return 0;
}

/* Follows a job until it ends: the SSE stream while it lasts, then the job record; reconnects
 * with Last-Event-ID when the connection drops. *job_out gets the final record. */
static int wait_job(const opts *o, const char *id, bool raw, long from, cJSON **job_out) {
    char path[128], jpath[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    snprintf(jpath, sizeof jpath, "/v1/jobs/%s", id);
    follow fl = {.o = o, .tty = isatty(2), .raw = raw};
    long last = from;
    double t0 = qc_now(), down_since = 0;
    for (;;) {
        qc_resp r;
        double deadline = o->wait_timeout > 0 ? t0 + o->wait_timeout : 0;
        int rc = qc_events(&o->conn, path, &last, on_event, &fl, deadline, &r);
        end_line(&fl);
        if (rc == 1) {
            qc_resp_free(&r);
            fprintf(stderr, "quantd client: job %s still not finished after %.0f s\n", id, o->wait_timeout);
            return EXIT_WAIT_TIMEOUT;
        }
        if (rc == 0 && r.status >= 300) {
            int ex = fail_resp("events", &r);
            qc_resp_free(&r);
            return ex;
        }
        qc_resp_free(&r);
        bool reached = rc == 0;
        cJSON *job = NULL;
        if (qc_request(&o->conn, "GET", jpath, NULL, NULL, 0, false, &r) == 0) {
            reached = true;
            if (r.status != 200) {
                int ex = fail_resp("job", &r);
                qc_resp_free(&r);
                return ex;
            }
            job = r.body ? cJSON_Parse(r.body) : NULL;
            if (!job) {
                qc_resp_free(&r);
                fprintf(stderr, "quantd client: job: the server's answer is not JSON\n");
                return EXIT_SERVER;
            }
            api_state st;
            if (api_state_parse(str_or(job, "state", ""), &st) == 0 && api_state_terminal(st)) {
                qc_resp_free(&r);
                *job_out = job;
                return EXIT_OK;
            }
            cJSON_Delete(job);
        }
        double now = qc_now();
        if (!reached) {
            if (down_since == 0) {
                down_since = now;
                if (!o->quiet)
                    fprintf(stderr, "quantd client: lost the server (%s); retrying for %.0f s\n",
                            r.error, o->retry_s);
            }
            if (now - down_since > o->retry_s) {
                fprintf(stderr, "quantd client: server unreachable: %s\n", r.error);
                qc_resp_free(&r);
                return EXIT_UNREACHABLE;
            }
        } else {
            down_since = 0;
        }
        qc_resp_free(&r);
        if (o->wait_timeout > 0 && now - t0 > o->wait_timeout) {
            fprintf(stderr, "quantd client: job %s still not finished after %.0f s\n", id, o->wait_timeout);
            return EXIT_WAIT_TIMEOUT;
        }
        sleep_s(1.0);
    }
}

/* Prints the finished job (text on stdout, or JSON with the gate outcomes) and returns the
 * exit status it deserves. */
static int finish(const opts *o, cJSON *job, const gate *gates, int ngates) {
    int ex;
    if (o->json) {
        cJSON *arr = cJSON_CreateArray();
        ex = job_outcome(job, gates, ngates, !o->quiet, stderr, arr);
        cJSON_AddItemToObject(job, "client_gates", arr);
        cJSON_AddNumberToObject(job, "client_exit", ex);
        print_json(job);
    } else {
        const char *state = str_or(job, "state", "?");
        printf("job %s %s\n", str_or(job, "id", "?"), state);
        ex = job_outcome(job, gates, ngates, true, stdout, NULL);
        fflush(stdout);
    }
    return ex;
}

/* ---- uploads ---- */

/* Makes sure the server holds file; id gets its blob id. Returns an exit status. */
static int ensure_blob(const opts *o, const char *file, const char *label, char id[72]) {
    char hex[65];
    qd_err err;
    uint64_t size;
    if (qd_sha256_file(file, hex, &size, &err)) {
        fprintf(stderr, "quantd client: %s\n", err.msg);
        return EXIT_LOCAL;
    }
    snprintf(id, 72, "sha256:%s", hex);
    char path[128], hs[32];
    snprintf(path, sizeof path, "/v1/blobs/%s", id);
    qc_human_size((double)size, hs, sizeof hs);
    /* Ask first: blobs are content-addressed, so a hit means the bytes need not travel. A
     * server without the HEAD route answers 404 or 405, and the upload below still
     * deduplicates on its side (200 instead of 201). */
    qc_resp r;
    if (qc_request(&o->conn, "HEAD", path, NULL, NULL, 0, true, &r) != 0) {
        int ex = fail_resp("blob check", &r);
        qc_resp_free(&r);
        return ex;
    }
    long st = r.status;
    qc_resp_free(&r);
    if (st == 200) {
        if (!o->quiet)
            fprintf(stderr, "%s: %s (%s) already on the server, upload skipped (%.19s...)\n", label,
                    file, hs, id);
        return EXIT_OK;
    }
    if (st == 401 || st == 403) {
        fprintf(stderr, "quantd client: blob check: HTTP %ld: the token is missing or lacks a role\n", st);
        return EXIT_REJECTED;
    }
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (qc_upload_file(&o->conn, "/v1/blobs", file, size, base, &r) != 0 || r.status / 100 != 2) {
        int ex = fail_resp("upload", &r);
        qc_resp_free(&r);
        return ex;
    }
    cJSON *a = r.body ? cJSON_Parse(r.body) : NULL;
    const char *got = cJSON_GetStringValue(get(a, "id"));
    int ex = EXIT_OK;
    if (!got || strcmp(got, id)) {
        fprintf(stderr, "quantd client: upload of %s: the server's sha256 %s differs from ours %s\n",
                file, got ? got : "(none)", id);
        ex = EXIT_SERVER;
    } else if (!o->quiet) {
        fprintf(stderr, "%s: %s (%s) %s (%.19s...)\n", label, file, hs,
                r.status == 200 ? "sent; the server already had it" : "uploaded", id);
    }
    cJSON_Delete(a);
    qc_resp_free(&r);
    return ex;
}

/* The files of a model directory, as the spec names them: relative paths of the regular files
 * under dir (names starting with '.' skipped, as the server refuses them), in name order. */
typedef struct dir_files {
    int n;
    char rel[API_MAX_MODEL_FILES][API_MAX_FILE_NAME + 1];
} dir_files;

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}
static int visible(const struct dirent *d) { return d->d_name[0] != '.'; }

static int list_dir(const char *top, const char *rel, int depth, dir_files *out) {
    char path[8192];
    snprintf(path, sizeof path, "%s%s%s", top, rel[0] ? "/" : "", rel);
    struct dirent **ents = NULL;
    int n = scandir(path, &ents, visible, by_name);
    if (n < 0) {
        fprintf(stderr, "quantd client: %s: %s\n", path, strerror(errno));
        return EXIT_LOCAL;
    }
    int ex = EXIT_OK;
    for (int i = 0; i < n; i++) {
        char r[API_MAX_FILE_NAME + 2], p[8192 + 300];
        struct stat st;
        int k = snprintf(r, sizeof r, "%s%s%s", rel, rel[0] ? "/" : "", ents[i]->d_name);
        snprintf(p, sizeof p, "%s/%s", top, r);
        if (ex) {
        } else if (stat(p, &st) != 0) {
            fprintf(stderr, "quantd client: %s: %s\n", p, strerror(errno));
            ex = EXIT_LOCAL;
        } else if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
            /* sockets, fifos: nothing a checkpoint holds */
        } else if (k > API_MAX_FILE_NAME) {
            fprintf(stderr, "quantd client: %s: the name in the model directory is longer than %d "
                    "bytes\n", p, API_MAX_FILE_NAME);
            ex = EXIT_LOCAL;
        } else if (S_ISDIR(st.st_mode)) {
            if (depth >= 8) {
                fprintf(stderr, "quantd client: %s: directories nested deeper than 8\n", p);
                ex = EXIT_LOCAL;
            } else {
                ex = list_dir(top, r, depth + 1, out);
            }
        } else if (out->n == API_MAX_MODEL_FILES) {
            fprintf(stderr, "quantd client: %s: more than %d files (the limit of a model "
                    "directory)\n", top, API_MAX_MODEL_FILES);
            ex = EXIT_LOCAL;
        } else {
            memcpy(out->rel[out->n++], r, (size_t)k + 1);
        }
        free(ents[i]);
    }
    free(ents);
    return ex;
}

/* Uploads each file of model directory dir once (ensure_blob skips those the server has) and
 * returns {"relative/path": "sha256:...", ...} in *files. An exit status. */
static int ensure_dir(const opts *o, const char *dir, cJSON **files) {
    dir_files *df = calloc(1, sizeof *df);
    if (!df) return EXIT_LOCAL;
    int ex = list_dir(dir, "", 0, df);
    if (!ex && df->n == 0) {
        fprintf(stderr, "quantd client: %s: the model directory holds no files\n", dir);
        ex = EXIT_LOCAL;
    }
    *files = cJSON_CreateObject();
    for (int i = 0; i < df->n && !ex; i++) {
        char path[8192 + 200], id[72], label[API_MAX_FILE_NAME + 16];
        snprintf(path, sizeof path, "%s/%s", dir, df->rel[i]);
        snprintf(label, sizeof label, "model %s", df->rel[i]);
        if (!(ex = ensure_blob(o, path, label, id)))
            cJSON_AddStringToObject(*files, df->rel[i], id);
    }
    free(df);
    return ex;
}

/* ---- commands ---- */

/* What `submit` was asked for. */
typedef struct submit_args {
    const char *model, *calib, *evalf, *tok, *method, *enc_version;
    double eval_split; /* < 0: not given */
    int wbits;         /* 0: not given (the server's default) */
    long samples, seq_len, epochs, threads, timeout; /* 0 (epochs: -1): not given */
    uint64_t seed;
    bool have_seed, wait;
    gate gates[MAX_GATES];
    int ngates;
    cJSON *labels, *abits; /* owned */
} submit_args;

enum {
    S_MODEL = OWN, S_CALIB, S_EVAL, S_TOKENIZER, S_METHOD, S_ENC_VERSION, S_EVAL_SPLIT, S_WBITS,
    S_SAMPLES, S_SEQ_LEN, S_EPOCHS, S_THREADS, S_TIMEOUT, S_SEED, S_WAIT, S_WAIT_TIMEOUT, S_GATE,
    S_LABEL, S_ABITS
};

static const cli_opt submit_opts[] = {
    {"model", S_MODEL, "F", "checkpoint to upload: a file, or a Hugging Face directory (each file "
                            "sent once; skipped when the server has it)"},
    {"calib", S_CALIB, "F", "calibration data"},
    {"calibration", S_CALIB, "F", "the same as --calib"},
    {"eval", S_EVAL, "F", "evaluation data (default: --eval-split of the calibration)"},
    {"eval-split", S_EVAL_SPLIT, "X", "held-out fraction of the calibration tokens"},
    {"tokenizer", S_TOKENIZER, "F", "tokenizer file (default: the checkpoint's own)"},
    {"method", S_METHOD, "M", QD_METHOD_NAMES " (the server checks it)"},
    {"wbits", S_WBITS, "B", "weight bits, " QD_WBITS_NAMES},
    {"abits", S_ABITS, "CLASS=BITS", "activation bits of a class (repeatable)"},
    {"samples", S_SAMPLES, "N", "calibration windows"},
    {"seq-len", S_SEQ_LEN, "N", "tokens per window"},
    {"epochs", S_EPOCHS, "N", "passes over the windows"},
    {"seed", S_SEED, "N", "seed"},
    {"threads", S_THREADS, "N", "worker threads"},
    {"timeout", S_TIMEOUT, "S", "the job's wall-time limit in seconds"},
    {"encodings-version", S_ENC_VERSION, "V", "AIMET encodings.json format, " QD_ENC_VERSION_NAMES},
    {"label", S_LABEL, "K=V", "a label (repeatable)"},
    {"gate", S_GATE, "NAME=VALUE", "max_ppl_increase=2%, max_kl=X, min_top1=90% (repeatable)"},
    {"wait", S_WAIT, NULL, "follow the job to its end and check the gates"},
    {"wait-timeout", S_WAIT_TIMEOUT, "S", "give up waiting after S seconds (exit 8)"},
    {0}};

static int submit_take(const cli_args *a, int c, submit_args *s, opts *o) {
    const char *v = a->val;
    static const int wbits[] = {4, 8}, abits[] = {4, 8, 16};
    switch (c) {
    case S_MODEL: s->model = v; return 0;
    case S_CALIB: s->calib = v; return 0;
    case S_EVAL: s->evalf = v; return 0;
    case S_TOKENIZER: s->tok = v; return 0;
    /* the server's list is the authority on methods: it answers 422 naming the field */
    case S_METHOD: s->method = v; return 0;
    case S_ENC_VERSION:
        if (cli_word(a, v, qd_enc_version_ok, QD_ENC_VERSION_NAMES)) return CLI_BAD;
        s->enc_version = v;
        return 0;
    case S_EVAL_SPLIT: return cli_double(a, v, 0, QD_EVAL_SPLIT_MAX, &s->eval_split);
    case S_WBITS: return cli_int_choice(a, v, wbits, 2, QD_WBITS_NAMES, &s->wbits);
    case S_SAMPLES: return cli_int(a, v, QD_SAMPLES_MIN, QD_SAMPLES_MAX, &s->samples);
    case S_SEQ_LEN: return cli_int(a, v, QD_SEQ_LEN_MIN, QD_SEQ_LEN_MAX, &s->seq_len);
    case S_EPOCHS: return cli_int(a, v, QD_EPOCHS_MIN, QD_EPOCHS_MAX, &s->epochs);
    case S_THREADS: return cli_int(a, v, QD_THREADS_MIN, QD_THREADS_MAX, &s->threads);
    case S_TIMEOUT: return cli_int(a, v, 1, API_MAX_TIMEOUT_S, &s->timeout);
    case S_SEED:
        s->have_seed = true;
        return cli_u64(a, v, &s->seed);
    case S_WAIT: s->wait = true; return 0;
    case S_WAIT_TIMEOUT: return cli_double(a, v, 0, 1e9, &o->wait_timeout);
    case S_GATE: return take_gate(a, v, s->gates, &s->ngates);
    case S_LABEL:
    case S_ABITS: {
        const char *eq = strchr(v, '=');
        if (!eq || eq == v) return cli_fail(a, "'%s' is not KEY=VALUE", v);
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)(eq - v), v);
        if (c == S_LABEL) {
            cJSON_AddStringToObject(s->labels, key, eq + 1);
            return 0;
        }
        if (qd_aclass_parse(key) < 0)
            return cli_fail(a, "'%s' is not an activation class (%s)", key, QD_ACLASS_NAMES);
        int bits;
        if (cli_int_choice(a, eq + 1, abits, 3, QD_ABITS_NAMES, &bits)) return CLI_BAD;
        cJSON_AddNumberToObject(s->abits, key, bits);
        return 0;
    }
    }
    return CLI_BAD;
}

/* 0 to go on, 1 after --help, 2 on a usage error (explained). */
static int submit_parse(opts *o, int argc, char **argv, submit_args *s) {
    cmd_parser p;
    parser_init(&p, "quantd client submit", "--model F --calib F [options] [--wait]", submit_opts,
                argc, argv);
    for (int c; (c = next_opt(&p, o)) != CLI_END;) {
        if (c == CLI_HELP) return 1;
        if (c == CLI_BAD || submit_take(&p.a, c, s, o)) return 2;
    }
    if (no_operands(&p)) return 2;
    if (!s->model || !s->calib) {
        cli_fail(&p.a, "--model and --calib are required");
        return 2;
    }
    if (s->evalf && s->eval_split >= 0) {
        cli_fail(&p.a, "give --eval or --eval-split, not both");
        return 2;
    }
    return 0;
}

/* The job spec for the uploaded blobs (ids[4]: model, calibration, eval, tokenizer; "" when
 * none; a model directory's files in model_files instead, taken). Takes labels and abits out
 * of s. */
static cJSON *submit_spec(submit_args *s, char ids[4][72], cJSON **model_files) {
    cJSON *spec = cJSON_CreateObject();
    if (*model_files) {
        cJSON_AddItemToObject(spec, "model", *model_files);
        *model_files = NULL;
    } else {
        cJSON_AddStringToObject(spec, "model", ids[0]);
    }
    cJSON_AddStringToObject(spec, "calibration", ids[1]);
    if (ids[2][0]) cJSON_AddStringToObject(spec, "eval", ids[2]);
    if (ids[3][0]) cJSON_AddStringToObject(spec, "tokenizer", ids[3]);
    if (s->eval_split >= 0) cJSON_AddNumberToObject(spec, "eval_split", s->eval_split);
    if (s->method) cJSON_AddStringToObject(spec, "method", s->method);
    if (s->wbits) cJSON_AddNumberToObject(spec, "wbits", s->wbits);
    if (cJSON_GetArraySize(s->abits)) {
        cJSON_AddItemToObject(spec, "abits", s->abits);
        s->abits = NULL;
    }
    if (s->samples || s->seq_len || s->epochs >= 0) {
        cJSON *b = cJSON_AddObjectToObject(spec, "budget");
        if (s->samples) cJSON_AddNumberToObject(b, "samples", (double)s->samples);
        if (s->seq_len) cJSON_AddNumberToObject(b, "seq_len", (double)s->seq_len);
        if (s->epochs >= 0) cJSON_AddNumberToObject(b, "epochs", (double)s->epochs);
    }
    if (s->have_seed) cJSON_AddNumberToObject(spec, "seed", (double)s->seed);
    if (s->threads) cJSON_AddNumberToObject(spec, "threads", (double)s->threads);
    if (s->timeout) cJSON_AddNumberToObject(spec, "timeout_s", (double)s->timeout);
    if (s->enc_version) cJSON_AddStringToObject(spec, "encodings_version", s->enc_version);
    /* only the gate the server knows goes into the spec; the others are checked here */
    for (int i = 0; i < s->ngates; i++)
        if (!strcmp(s->gates[i].name, QD_RK_GATE_MAX_PPL)) {
            cJSON *g = cJSON_AddObjectToObject(spec, "gates");
            cJSON_AddNumberToObject(g, QD_RK_GATE_MAX_PPL, s->gates[i].limit);
            break;
        }
    /* file names as labels, so that job lists (and the dashboard) can say which model a job
     * quantized; the blob ids alone do not */
    const char *files[2][2] = {{"model_file", s->model}, {"calib_file", s->calib}};
    for (int i = 0; i < 2; i++) {
        if (get(s->labels, files[i][0]) || cJSON_GetArraySize(s->labels) >= API_MAX_LABELS) continue;
        char v[API_MAX_LABEL_VALUE + 1];
        size_t n = strlen(files[i][1]);
        while (n > 1 && files[i][1][n - 1] == '/') n--; /* a directory given as DIR/ */
        const char *b = memrchr(files[i][1], '/', n > 0 ? n - 1 : 0);
        b = b ? b + 1 : files[i][1];
        snprintf(v, sizeof v, "%.*s", (int)(n - (size_t)(b - files[i][1])), b);
        cJSON_AddStringToObject(s->labels, files[i][0], v);
    }
    if (cJSON_GetArraySize(s->labels)) {
        cJSON_AddItemToObject(spec, "labels", s->labels);
        s->labels = NULL;
    }
    return spec;
}

/* Posts the spec; without --wait prints the job, with it follows the job to its end. */
static int submit_post(opts *o, cJSON *spec, const submit_args *s) {
    char *body = cJSON_PrintUnformatted(spec);
    cJSON *job = NULL;
    int ex = call(o, "POST", "/v1/jobs", body, "submit", &job);
    free(body);
    if (ex) return ex;
    const char *id = str_or(job, "id", "");
    if (!qd_uuid_like(id)) {
        fprintf(stderr, "quantd client: submit: the server answered without a job id\n");
        cJSON_Delete(job);
        return EXIT_SERVER;
    }
    if (!o->quiet) fprintf(stderr, "job %s %s\n", id, str_or(job, "state", "?"));
    if (!s->wait) {
        if (o->json) print_json(job);
        else printf("%s\n", id);
        cJSON_Delete(job);
        return EXIT_OK;
    }
    char idc[72];
    snprintf(idc, sizeof idc, "%s", id);
    cJSON_Delete(job);
    job = NULL;
    ex = wait_job(o, idc, false, -1, &job);
    if (ex == EXIT_OK) ex = finish(o, job, s->gates, s->ngates);
    cJSON_Delete(job);
    return ex;
}

static int cmd_submit(opts *o, int argc, char **argv) {
    cJSON *model_files = NULL;
    bool model_dir = false;
    submit_args s;
    memset(&s, 0, sizeof s);
    s.eval_split = -1;
    s.epochs = -1;
    s.labels = cJSON_CreateObject();
    s.abits = cJSON_CreateObject();
    int ex = submit_parse(o, argc, argv, &s);
    if (ex) {
        ex = ex == 1 ? EXIT_OK : EXIT_USAGE;
        goto out;
    }
    o->conn.progress = !o->quiet;
    char ids[4][72] = {"", "", "", ""};
    struct stat st;
    model_dir = stat(s.model, &st) == 0 && S_ISDIR(st.st_mode);
    if ((ex = model_dir ? ensure_dir(o, s.model, &model_files)
                        : ensure_blob(o, s.model, "model", ids[0])) ||
        (ex = ensure_blob(o, s.calib, "calibration", ids[1])) ||
        (s.evalf && (ex = ensure_blob(o, s.evalf, "eval", ids[2]))) ||
        (s.tok && (ex = ensure_blob(o, s.tok, "tokenizer", ids[3]))))
        goto out;
    cJSON *spec = submit_spec(&s, ids, &model_files);
    ex = submit_post(o, spec, &s);
    cJSON_Delete(spec);
out:
    cJSON_Delete(model_files);
    cJSON_Delete(s.labels);
    cJSON_Delete(s.abits);
    return ex;
}

enum { I_GATE = OWN, I_WAIT_TIMEOUT, I_FROM };

/* "ID [--gate ...] [--wait-timeout S] [--from N]" for wait, status, events and cancel: the
 * options that apply to the command (gates: wait and status; from: events). 0, 1 after
 * --help, 2 on a usage error. */
static int id_args(opts *o, int argc, char **argv, const char **id, gate *gates, int *ngates,
                   long *from) {
    static const cli_opt gate_opts[] = {
        {"gate", I_GATE, "NAME=VALUE", "max_ppl_increase=X, max_kl=X or min_top1=X (repeatable)"},
        {"wait-timeout", I_WAIT_TIMEOUT, "S", "give up after S seconds (exit 8)"},
        {0}};
    static const cli_opt from_opts[] = {
        {"from", I_FROM, "N", "replay the events after event N"},
        {"wait-timeout", I_WAIT_TIMEOUT, "S", "give up after S seconds (exit 8)"},
        {0}};
    char prog[64];
    snprintf(prog, sizeof prog, "quantd client %s", argv[0]);
    cmd_parser p;
    parser_init(&p, prog, gates ? "ID [--gate NAME=VALUE]... [--wait-timeout S]"
                              : from ? "ID [--from N] [--wait-timeout S]" : "ID",
                gates ? gate_opts : from ? from_opts : NULL, argc, argv);
    for (int c; (c = next_opt(&p, o)) != CLI_END;) {
        if (c == CLI_HELP) return 1;
        if (c == I_GATE && gates) {
            if (take_gate(&p.a, p.a.val, gates, ngates)) return 2;
        } else if (c == I_WAIT_TIMEOUT) {
            if (cli_double(&p.a, p.a.val, 0, 1e9, &o->wait_timeout)) return 2;
        } else if (c == I_FROM && from) {
            if (cli_int(&p.a, p.a.val, 0, 1L << 40, from)) return 2;
        } else {
            return 2;
        }
    }
    return one_id(&p, id) ? 2 : 0;
}

/* id_args's answer as an exit status, or -1 to go on. */
static int id_args_exit(int r) { return r == 0 ? -1 : r == 1 ? EXIT_OK : EXIT_USAGE; }

static int cmd_wait(opts *o, int argc, char **argv) {
    const char *id;
    gate gates[MAX_GATES];
    int ngates = 0;
    int r = id_args_exit(id_args(o, argc, argv, &id, gates, &ngates, NULL));
    if (r >= 0) return r;
    cJSON *job = NULL;
    int ex = wait_job(o, id, false, -1, &job);
    if (ex == EXIT_OK) ex = finish(o, job, gates, ngates);
    cJSON_Delete(job);
    return ex;
}

static int cmd_status(opts *o, int argc, char **argv) {
    const char *id;
    gate gates[MAX_GATES];
    int ngates = 0;
    int r = id_args_exit(id_args(o, argc, argv, &id, gates, &ngates, NULL));
    if (r >= 0) return r;
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    cJSON *job = NULL;
    int ex = call(o, "GET", path, NULL, "status", &job);
    if (ex) return ex;
    if (o->json) {
        cJSON *arr = cJSON_CreateArray();
        ex = job_outcome(job, gates, ngates, false, NULL, arr);
        cJSON_AddItemToObject(job, "client_gates", arr);
        print_json(job);
    } else {
        const cJSON *p = get(job, "progress");
        char loss[32], eta[32];
        fmt_num(loss, sizeof loss, num_or_nan(p, "loss"), "%.4g");
        fmt_num(eta, sizeof eta, num_or_nan(p, "eta_s"), "%.0f s");
        const cJSON *spec = get(job, "spec");
        printf("job       %s\nstate     %s\nmethod    %s W%d\ncreated   %s\nfinished  %s\n",
               str_or(job, "id", "?"), str_or(job, "state", "?"), str_or(spec, "method", "?"),
               (int)num_or_nan(spec, "wbits"), str_or(job, "created_at", "-"),
               str_or(job, "finished_at", "-"));
        printf("progress  %s %ld/%ld  loss %s  eta %s\n", str_or(p, "phase", "-"),
               (long)num_or_nan(p, "step"), (long)num_or_nan(p, "total"), loss, eta);
        ex = job_outcome(job, gates, ngates, true, stdout, NULL);
    }
    cJSON_Delete(job);
    return ex;
}

static int cmd_events(opts *o, int argc, char **argv) {
    const char *id;
    long from = -1;
    int r = id_args_exit(id_args(o, argc, argv, &id, NULL, NULL, &from));
    if (r >= 0) return r;
    cJSON *job = NULL;
    int ex = wait_job(o, id, true, from, &job);
    cJSON_Delete(job);
    return ex;
}

static int cmd_cancel(opts *o, int argc, char **argv) {
    const char *id;
    int r = id_args_exit(id_args(o, argc, argv, &id, NULL, NULL, NULL));
    if (r >= 0) return r;
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    cJSON *job = NULL;
    int ex = call(o, "POST", path, NULL, "cancel", &job);
    if (ex) return ex;
    if (o->json) print_json(job);
    else printf("job %s %s, cancel requested\n", id, str_or(job, "state", "?"));
    cJSON_Delete(job);
    return EXIT_OK;
}

/* Artifact names from the server become paths under --out: plain relative segments only. */
static bool safe_name(const char *n) {
    if (!*n || n[0] == '/' || strlen(n) > 255) return false;
    const char *seg = n;
    for (const char *p = n;; p++) {
        if (*p == '/' || !*p) {
            size_t len = (size_t)(p - seg);
            if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
                return false;
            if (!*p) return true;
            seg = p + 1;
        } else if (!(isalnum((unsigned char)*p) || strchr("._-", *p))) {
            return false;
        }
    }
}

enum { D_NAME = OWN };

static int cmd_download(opts *o, int argc, char **argv) {
    static const cli_opt own[] = {
        {"out", 'o', "DIR", "where the artifacts go (created)"},
        {"name", D_NAME, "NAME", "only this artifact (repeatable; default: all)"},
        {0}};
    const char *id = NULL, *out = NULL;
    const char *names[64];
    int nnames = 0;
    cmd_parser p;
    parser_init(&p, "quantd client download", "ID --out DIR [--name NAME]...", own, argc, argv);
    for (int c; (c = next_opt(&p, o)) != CLI_END;) {
        if (c == CLI_HELP) return EXIT_OK;
        if (c == 'o') {
            out = p.a.val;
        } else if (c == D_NAME) {
            if (nnames == 64) return cli_fail(&p.a, "at most 64 names"), EXIT_USAGE;
            names[nnames++] = p.a.val;
        } else {
            return EXIT_USAGE;
        }
    }
    if (one_id(&p, &id)) return EXIT_USAGE;
    if (!out) {
        cli_fail(&p.a, "--out DIR is required");
        return EXIT_USAGE;
    }
    o->conn.progress = !o->quiet && isatty(2);
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s/artifacts", id);
    cJSON *list = NULL;
    int ex = call(o, "GET", path, NULL, "artifacts", &list);
    if (ex) return ex;
    const char *state = str_or(list, "state", "?");
    if (strcmp(state, "succeeded") && !o->quiet)
        fprintf(stderr, "quantd client: note: job %s is %s; its artifacts may be incomplete\n", id, state);
    qd_err err;
    if (qd_mkdir_p(out, &err)) {
        fprintf(stderr, "quantd client: %s\n", err.msg);
        cJSON_Delete(list);
        return EXIT_LOCAL;
    }
    cJSON *done = cJSON_CreateArray();
    const cJSON *it;
    int got = 0;
    cJSON_ArrayForEach(it, get(list, "artifacts")) {
        const char *name = str_or(it, "name", "");
        bool want = nnames == 0;
        for (int k = 0; k < nnames; k++) want |= !strcmp(names[k], name);
        if (!want) continue;
        if (!safe_name(name)) {
            fprintf(stderr, "quantd client: skipping artifact with an unsafe name '%s'\n", name);
            continue;
        }
        char dest[4096], url[512];
        snprintf(dest, sizeof dest, "%s/%s", out, name);
        char *slash = strrchr(dest, '/');
        *slash = 0;
        if (qd_mkdir_p(dest, &err)) {
            fprintf(stderr, "quantd client: %s\n", err.msg);
            ex = EXIT_LOCAL;
            break;
        }
        *slash = '/';
        snprintf(url, sizeof url, "/v1/jobs/%s/artifacts/%s", id, name);
        qc_resp r;
        if (qc_download(&o->conn, url, dest, name, &r) != 0 || r.status / 100 != 2) {
            ex = fail_resp(name, &r);
            qc_resp_free(&r);
            break;
        }
        qc_resp_free(&r);
        got++;
        if (!o->quiet && !o->conn.progress) fprintf(stderr, "  %s\n", dest);
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "name", name);
        cJSON_AddStringToObject(f, "path", dest);
        cJSON_AddNumberToObject(f, "size", num_or_nan(it, "size"));
        cJSON_AddItemToArray(done, f);
    }
    if (ex == EXIT_OK && nnames > got) {
        fprintf(stderr, "quantd client: download: %d of the named artifacts do not exist\n", nnames - got);
        ex = EXIT_REJECTED;
    }
    if (o->json) {
        cJSON *res = cJSON_CreateObject();
        cJSON_AddStringToObject(res, "id", id);
        cJSON_AddStringToObject(res, "state", state);
        cJSON_AddStringToObject(res, "out", out);
        cJSON_AddItemToObject(res, "files", done);
        print_json(res);
        cJSON_Delete(res);
    } else {
        if (ex == EXIT_OK) printf("%d artifact%s in %s\n", got, got == 1 ? "" : "s", out);
        cJSON_Delete(done);
    }
    cJSON_Delete(list);
    return ex;
}

enum { L_STATE = OWN, L_LABEL, L_LIMIT, L_OFFSET };

static int cmd_list(opts *o, int argc, char **argv) {
    static const cli_opt own[] = {
        {"state", L_STATE, "S", "only jobs in this state"},
        {"label", L_LABEL, "K=V", "only jobs with this label"},
        {"limit", L_LIMIT, "N", "at most N jobs (default 50, at most 500)"},
        {"offset", L_OFFSET, "N", "skip the first N"},
        {0}};
    const char *state = NULL, *label = NULL;
    long limit = 50, offset = 0;
    cmd_parser p;
    parser_init(&p, "quantd client list", "[--state S] [--label K=V] [--limit N] [--offset N]", own,
                argc, argv);
    for (int c; (c = next_opt(&p, o)) != CLI_END;) {
        switch (c) {
        case CLI_HELP: return EXIT_OK;
        case L_STATE: state = p.a.val; break;
        case L_LABEL: label = p.a.val; break;
        case L_LIMIT:
            if (cli_int(&p.a, p.a.val, 1, 500, &limit)) return EXIT_USAGE;
            break;
        case L_OFFSET:
            if (cli_int(&p.a, p.a.val, 0, 100000000, &offset)) return EXIT_USAGE;
            break;
        default: return EXIT_USAGE;
        }
    }
    if (no_operands(&p)) return EXIT_USAGE;
    char path[1024], es[300], el[600];
    int n = snprintf(path, sizeof path, "/v1/jobs?limit=%ld&offset=%ld", limit, offset);
    if (state) {
        url_escape(state, es, sizeof es);
        n += snprintf(path + n, sizeof path - (size_t)n, "&state=%s", es);
    }
    if (label) {
        url_escape(label, el, sizeof el);
        snprintf(path + n, sizeof path - (size_t)n, "&label=%s", el);
    }
    cJSON *list = NULL;
    int ex = call(o, "GET", path, NULL, "list", &list);
    if (ex) return ex;
    if (o->json) {
        print_json(list);
    } else {
        printf("%-36s  %-10s %-12s %-4s %-10s %-11s %-20s\n", "id", "state", "method", "bits",
               "phase", "step", "created");
        const cJSON *j;
        cJSON_ArrayForEach(j, get(list, "jobs")) {
            const cJSON *spec = get(j, "spec"), *p = get(j, "progress");
            char step[32];
            snprintf(step, sizeof step, "%ld/%ld", (long)num_or_nan(p, "step"), (long)num_or_nan(p, "total"));
            printf("%-36s  %-10s %-12s W%-3d %-10s %-11s %-20s\n", str_or(j, "id", "?"),
                   str_or(j, "state", "?"), str_or(spec, "method", "?"), (int)num_or_nan(spec, "wbits"),
                   str_or(p, "phase", "-"), step, str_or(j, "created_at", "-"));
        }
        double total = num_or_nan(list, "total");
        if (isfinite(total)) printf("(%d of %.0f)\n", cJSON_GetArraySize(get(list, "jobs")), total);
    }
    cJSON_Delete(list);
    return EXIT_OK;
}

int cmd_client(int argc, char **argv) {
    opts o;
    memset(&o, 0, sizeof o);
    const char *env_url = getenv("QUANTD_URL"), *env_tok = getenv("QUANTD_TOKEN");
    snprintf(o.conn.url, sizeof o.conn.url, "%s", env_url && *env_url ? env_url : "http://127.0.0.1:8080");
    if (env_tok) snprintf(o.conn.token, sizeof o.conn.token, "%s", env_tok);
    o.conn.connect_timeout_s = 10;
    o.conn.timeout_s = 120;
    o.retry_s = 120;
    cmd_parser p;
    parser_init(&p, "quantd client", "[--url URL] [--token T] [--json] [--quiet] COMMAND ...",
                NULL, argc, argv);
    p.a.stop_at_operand = true; /* the command's own options come after its name */
    for (int c; (c = cli_next(&p.a)) != CLI_END;) {
        const char *v = p.a.val;
        switch (c) {
        case G_URL: snprintf(o.conn.url, sizeof o.conn.url, "%s", v); break;
        case G_TOKEN: snprintf(o.conn.token, sizeof o.conn.token, "%s", v); break;
        case G_JSON: o.json = true; break;
        case 'q': o.quiet = true; break;
        case G_RETRY:
            if (cli_double(&p.a, v, 0, 86400, &o.retry_s)) return EXIT_USAGE;
            break;
        case CLI_HELP: usage(stdout); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    int i = p.a.optind;
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    static const struct {
        const char *name;
        int (*fn)(opts *, int, char **);
    } cmds[] = {{"submit", cmd_submit}, {"wait", cmd_wait}, {"status", cmd_status},
                {"events", cmd_events}, {"download", cmd_download}, {"cancel", cmd_cancel},
                {"list", cmd_list}};
    int (*fn)(opts *, int, char **) = NULL;
    for (size_t k = 0; k < sizeof cmds / sizeof cmds[0]; k++)
        if (!strcmp(argv[i], cmds[k].name)) fn = cmds[k].fn;
    if (!fn) {
        fprintf(stderr, "quantd client: unknown command '%s'\n", argv[i]);
        usage(stderr);
        return EXIT_USAGE;
    }
    size_t ul = strlen(o.conn.url);
    while (ul > 0 && o.conn.url[ul - 1] == '/') o.conn.url[--ul] = 0;
    if (qc_init()) {
        fprintf(stderr, "quantd client: libcurl did not start\n");
        return EXIT_LOCAL;
    }
    /* the subcommands read flags after their name; the URL may still change there */
    int ex = fn(&o, argc - i, argv + i);
    return ex;
}
