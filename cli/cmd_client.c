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
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "api/api.h"
#include "base/limits.h"
#include "base/report_keys.h"
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

static bool job_id_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++)
        if (!(isxdigit((unsigned char)s[i]) || s[i] == '-')) return false;
    return true;
}

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

/* The flags every command takes, wherever they appear. 1: consumed; 0: not ours; -1: bad. */
static int global_flag(int argc, char **argv, int *i, opts *o) {
    const char *a = argv[*i];
    const char *v;
    if (!strcmp(a, "--url")) {
        if (!(v = arg_next(argc, argv, i))) return -1;
        snprintf(o->conn.url, sizeof o->conn.url, "%s", v);
    } else if (!strcmp(a, "--token")) {
        if (!(v = arg_next(argc, argv, i))) return -1;
        snprintf(o->conn.token, sizeof o->conn.token, "%s", v);
    } else if (!strcmp(a, "--json")) {
        o->json = true;
    } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
        o->quiet = true;
    } else if (!strcmp(a, "--retry")) {
        if (!(v = arg_next(argc, argv, i)) || arg_double("--retry", v, 0, 86400, &o->retry_s)) return -1;
    } else {
        return 0;
    }
    return 1;
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

/* The report's headline figures as a table. */
static void print_figures(const cJSON *job, FILE *f) {
    const cJSON *result = get(job, "result");
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
                if (k != i || !cJSON_IsObject(e)) continue;
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
        if (print) print_figures(job, f);
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
    char hex[65], err[300];
    uint64_t size;
    if (qc_sha256_file(file, hex, &size, err, sizeof err)) {
        fprintf(stderr, "quantd client: %s\n", err);
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

/* ---- commands ---- */

static int cmd_submit(opts *o, int argc, char **argv) {
    const char *model = NULL, *calib = NULL, *evalf = NULL, *tok = NULL, *method = NULL;
    const char *enc_version = NULL; /* validated by the server, as method is */
    double eval_split = -1;
    long wbits = 0, samples = 0, seq_len = 0, epochs = -1, threads = 0, timeout = 0;
    uint64_t seed = 0;
    bool have_seed = false, wait = false;
    gate gates[MAX_GATES];
    int ngates = 0;
    cJSON *labels = cJSON_CreateObject(), *abits = cJSON_CreateObject();
    int ex = EXIT_USAGE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int g = global_flag(argc, argv, &i, o);
        if (g < 0) goto out;
        if (g) continue;
        if (!strcmp(a, "--wait")) {
            wait = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            ex = EXIT_OK;
            goto out;
        }
        if (!(v = arg_next(argc, argv, &i))) goto out;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--calib") || !strcmp(a, "--calibration")) calib = v;
        else if (!strcmp(a, "--eval")) evalf = v;
        else if (!strcmp(a, "--tokenizer")) tok = v;
        else if (!strcmp(a, "--method")) method = v;
        else if (!strcmp(a, "--encodings-version")) enc_version = v;
        else if (!strcmp(a, "--eval-split")) {
            if (arg_double(a, v, 0, 1, &eval_split)) goto out;
        } else if (!strcmp(a, "--wbits")) {
            if (arg_int(a, v, 4, 8, &wbits)) goto out;
        } else if (!strcmp(a, "--samples")) {
            if (arg_int(a, v, QD_SAMPLES_MIN, QD_SAMPLES_MAX, &samples)) goto out;
        } else if (!strcmp(a, "--seq-len")) {
            if (arg_int(a, v, QD_SEQ_LEN_MIN, QD_SEQ_LEN_MAX, &seq_len)) goto out;
        } else if (!strcmp(a, "--epochs")) {
            if (arg_int(a, v, QD_EPOCHS_MIN, QD_EPOCHS_MAX, &epochs)) goto out;
        } else if (!strcmp(a, "--threads")) {
            if (arg_int(a, v, QD_THREADS_MIN, QD_THREADS_MAX, &threads)) goto out;
        } else if (!strcmp(a, "--timeout")) {
            if (arg_int(a, v, 1, 1L << 30, &timeout)) goto out;
        } else if (!strcmp(a, "--seed")) {
            if (arg_u64(a, v, &seed)) goto out;
            have_seed = true;
        } else if (!strcmp(a, "--wait-timeout")) {
            if (arg_double(a, v, 0, 1e9, &o->wait_timeout)) goto out;
        } else if (!strcmp(a, "--gate")) {
            if (ngates == MAX_GATES || parse_gate(v, &gates[ngates])) {
                fprintf(stderr, "quantd client: --gate: '%s' is not max_ppl_increase=X, max_kl=X or min_top1=X\n", v);
                goto out;
            }
            ngates++;
        } else if (!strcmp(a, "--label") || !strcmp(a, "--abits")) {
            const char *eq = strchr(v, '=');
            if (!eq || eq == v) {
                fprintf(stderr, "quantd client: %s: '%s' is not KEY=VALUE\n", a, v);
                goto out;
            }
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)(eq - v), v);
            if (a[2] == 'l') {
                cJSON_AddStringToObject(labels, key, eq + 1);
            } else {
                long bits;
                if (arg_int(a, eq + 1, 1, 64, &bits)) goto out;
                cJSON_AddNumberToObject(abits, key, (double)bits);
            }
        } else {
            fprintf(stderr, "quantd client submit: unknown option '%s'\n", a);
            goto out;
        }
    }
    o->conn.progress = !o->quiet;
    if (!model || !calib) {
        fprintf(stderr, "quantd client submit: --model and --calib are required\n");
        goto out;
    }
    if (evalf && eval_split >= 0) {
        fprintf(stderr, "quantd client submit: give --eval or --eval-split, not both\n");
        goto out;
    }
    char model_id[72], calib_id[72], eval_id[72] = "", tok_id[72] = "";
    if ((ex = ensure_blob(o, model, "model", model_id)) || (ex = ensure_blob(o, calib, "calibration", calib_id)) ||
        (evalf && (ex = ensure_blob(o, evalf, "eval", eval_id))) ||
        (tok && (ex = ensure_blob(o, tok, "tokenizer", tok_id))))
        goto out;

    cJSON *spec = cJSON_CreateObject();
    cJSON_AddStringToObject(spec, "model", model_id);
    cJSON_AddStringToObject(spec, "calibration", calib_id);
    if (eval_id[0]) cJSON_AddStringToObject(spec, "eval", eval_id);
    if (tok_id[0]) cJSON_AddStringToObject(spec, "tokenizer", tok_id);
    if (eval_split >= 0) cJSON_AddNumberToObject(spec, "eval_split", eval_split);
    if (method) cJSON_AddStringToObject(spec, "method", method);
    if (wbits) cJSON_AddNumberToObject(spec, "wbits", (double)wbits);
    if (cJSON_GetArraySize(abits)) {
        cJSON_AddItemToObject(spec, "abits", abits);
        abits = NULL;
    }
    if (samples || seq_len || epochs >= 0) {
        cJSON *b = cJSON_AddObjectToObject(spec, "budget");
        if (samples) cJSON_AddNumberToObject(b, "samples", (double)samples);
        if (seq_len) cJSON_AddNumberToObject(b, "seq_len", (double)seq_len);
        if (epochs >= 0) cJSON_AddNumberToObject(b, "epochs", (double)epochs);
    }
    if (have_seed) cJSON_AddNumberToObject(spec, "seed", (double)seed);
    if (threads) cJSON_AddNumberToObject(spec, "threads", (double)threads);
    if (timeout) cJSON_AddNumberToObject(spec, "timeout_s", (double)timeout);
    if (enc_version) cJSON_AddStringToObject(spec, "encodings_version", enc_version);
    /* only the gate the server knows goes into the spec; the others are checked here */
    for (int i = 0; i < ngates; i++)
        if (!strcmp(gates[i].name, "max_ppl_increase")) {
            cJSON *g = cJSON_AddObjectToObject(spec, "gates");
            cJSON_AddNumberToObject(g, "max_ppl_increase", gates[i].limit);
            break;
        }
    /* file names as labels, so that job lists (and the dashboard) can say which model a job
     * quantized; the blob ids alone do not */
    const char *files[2][2] = {{"model_file", model}, {"calib_file", calib}};
    for (int i = 0; i < 2; i++) {
        if (get(labels, files[i][0]) || cJSON_GetArraySize(labels) >= API_MAX_LABELS) continue;
        const char *b = strrchr(files[i][1], '/');
        char v[API_MAX_LABEL_VALUE + 1];
        snprintf(v, sizeof v, "%s", b ? b + 1 : files[i][1]);
        cJSON_AddStringToObject(labels, files[i][0], v);
    }
    if (cJSON_GetArraySize(labels)) {
        cJSON_AddItemToObject(spec, "labels", labels);
        labels = NULL;
    }
    char *body = cJSON_PrintUnformatted(spec);
    cJSON_Delete(spec);
    cJSON *job = NULL;
    ex = call(o, "POST", "/v1/jobs", body, "submit", &job);
    free(body);
    if (ex) goto out;
    const char *id = str_or(job, "id", "");
    if (!job_id_ok(id)) {
        fprintf(stderr, "quantd client: submit: the server answered without a job id\n");
        cJSON_Delete(job);
        ex = EXIT_SERVER;
        goto out;
    }
    if (!o->quiet) fprintf(stderr, "job %s %s\n", id, str_or(job, "state", "?"));
    if (!wait) {
        if (o->json) print_json(job);
        else printf("%s\n", id);
        cJSON_Delete(job);
        ex = EXIT_OK;
        goto out;
    }
    char idc[72];
    snprintf(idc, sizeof idc, "%s", id);
    cJSON_Delete(job);
    job = NULL;
    ex = wait_job(o, idc, false, -1, &job);
    if (ex == EXIT_OK) ex = finish(o, job, gates, ngates);
    cJSON_Delete(job);
out:
    cJSON_Delete(labels);
    cJSON_Delete(abits);
    return ex;
}

/* Parses "ID [--gate ...] [--wait-timeout S] [--from N]" for wait, status and events. */
static int id_args(opts *o, int argc, char **argv, const char **id, gate *gates, int *ngates,
                   long *from) {
    *id = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int g = global_flag(argc, argv, &i, o);
        if (g < 0) return -1;
        if (g) continue;
        if (!strcmp(a, "--gate") && gates) {
            if (!(v = arg_next(argc, argv, &i))) return -1;
            if (*ngates == MAX_GATES || parse_gate(v, &gates[*ngates])) {
                fprintf(stderr, "quantd client: --gate: '%s' is not max_ppl_increase=X, max_kl=X or min_top1=X\n", v);
                return -1;
            }
            (*ngates)++;
        } else if (!strcmp(a, "--wait-timeout")) {
            if (!(v = arg_next(argc, argv, &i)) || arg_double(a, v, 0, 1e9, &o->wait_timeout)) return -1;
        } else if (!strcmp(a, "--from") && from) {
            if (!(v = arg_next(argc, argv, &i)) || arg_int(a, v, 0, 1L << 40, from)) return -1;
        } else if (a[0] == '-') {
            fprintf(stderr, "quantd client %s: unknown option '%s'\n", argv[0], a);
            return -1;
        } else if (!*id) {
            *id = a;
        } else {
            fprintf(stderr, "quantd client %s: one job id only\n", argv[0]);
            return -1;
        }
    }
    if (!*id) {
        fprintf(stderr, "quantd client %s: a job id is required\n", argv[0]);
        return -1;
    }
    if (!job_id_ok(*id)) {
        fprintf(stderr, "quantd client %s: '%s' is not a job id\n", argv[0], *id);
        return -1;
    }
    return 0;
}

static int cmd_wait(opts *o, int argc, char **argv) {
    const char *id;
    gate gates[MAX_GATES];
    int ngates = 0;
    if (id_args(o, argc, argv, &id, gates, &ngates, NULL)) return EXIT_USAGE;
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
    if (id_args(o, argc, argv, &id, gates, &ngates, NULL)) return EXIT_USAGE;
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
    if (id_args(o, argc, argv, &id, NULL, NULL, &from)) return EXIT_USAGE;
    cJSON *job = NULL;
    int ex = wait_job(o, id, true, from, &job);
    cJSON_Delete(job);
    return ex;
}

static int cmd_cancel(opts *o, int argc, char **argv) {
    const char *id;
    if (id_args(o, argc, argv, &id, NULL, NULL, NULL)) return EXIT_USAGE;
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

static int mkdirs(const char *path) {
    char b[4096];
    snprintf(b, sizeof b, "%s", path);
    for (char *p = b + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(b, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(b, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int cmd_download(opts *o, int argc, char **argv) {
    const char *id = NULL, *out = NULL;
    const char *names[64];
    int nnames = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int g = global_flag(argc, argv, &i, o);
        if (g < 0) return EXIT_USAGE;
        if (g) continue;
        if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            if (!(out = arg_next(argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--name")) {
            const char *v = arg_next(argc, argv, &i);
            if (!v || nnames == 64) return EXIT_USAGE;
            names[nnames++] = v;
        } else if (a[0] == '-' || id) {
            fprintf(stderr, "quantd client download: unexpected '%s'\n", a);
            return EXIT_USAGE;
        } else {
            id = a;
        }
    }
    o->conn.progress = !o->quiet && isatty(2);
    if (!id || !out || !job_id_ok(id)) {
        fprintf(stderr, "quantd client download: a job id and --out DIR are required\n");
        return EXIT_USAGE;
    }
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s/artifacts", id);
    cJSON *list = NULL;
    int ex = call(o, "GET", path, NULL, "artifacts", &list);
    if (ex) return ex;
    const char *state = str_or(list, "state", "?");
    if (strcmp(state, "succeeded") && !o->quiet)
        fprintf(stderr, "quantd client: note: job %s is %s; its artifacts may be incomplete\n", id, state);
    if (mkdirs(out)) {
        fprintf(stderr, "quantd client: %s: %s\n", out, strerror(errno));
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
        if (mkdirs(dest)) {
            fprintf(stderr, "quantd client: %s: %s\n", dest, strerror(errno));
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

static int cmd_list(opts *o, int argc, char **argv) {
    const char *state = NULL, *label = NULL;
    long limit = 50, offset = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int g = global_flag(argc, argv, &i, o);
        if (g < 0) return EXIT_USAGE;
        if (g) continue;
        if (!strcmp(a, "--state")) {
            if (!(state = arg_next(argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--label")) {
            if (!(label = arg_next(argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--limit")) {
            if (!(v = arg_next(argc, argv, &i)) || arg_int(a, v, 1, 500, &limit)) return EXIT_USAGE;
        } else if (!strcmp(a, "--offset")) {
            if (!(v = arg_next(argc, argv, &i)) || arg_int(a, v, 0, 100000000, &offset)) return EXIT_USAGE;
        } else {
            fprintf(stderr, "quantd client list: unknown option '%s'\n", a);
            return EXIT_USAGE;
        }
    }
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
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return EXIT_OK;
        }
        int g = global_flag(argc, argv, &i, &o);
        if (g < 0) return EXIT_USAGE;
        if (!g) {
            fprintf(stderr, "quantd client: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
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
