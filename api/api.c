/* JSON <-> C for the service contract. Validation is strict on purpose: a CI pipeline that
 * misspells "epochs" must get a 422 naming the field, not a job that silently ran with the
 * default budget. Every number from a client is range-checked before it reaches the worker. */
#include "api/api.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/limits.h"
#include "base/report_keys.h"

#define API_STR_(x) #x
#define API_STR(x) API_STR_(x)

static const char *const state_names[API_STATE_COUNT] = {
    "queued", "running", "succeeded", "failed", "cancelled", "timed_out",
};

const char *api_state_name(api_state s) {
    return (unsigned)s < API_STATE_COUNT ? state_names[s] : "unknown";
}

int api_state_parse(const char *s, api_state *out) {
    for (int i = 0; i < API_STATE_COUNT; i++)
        if (s && !strcmp(s, state_names[i])) {
            *out = (api_state)i;
            return 0;
        }
    return -1;
}

bool api_state_terminal(api_state s) {
    return s == API_SUCCEEDED || s == API_FAILED || s == API_CANCELLED || s == API_TIMED_OUT;
}

_Static_assert(QD_N_ACLASS <= API_N_ABITS, "every activation class fits api_spec.abits");

void api_spec_defaults(api_spec *s) {
    memset(s, 0, sizeof *s);
    s->eval_split = QD_EVAL_SPLIT_DEFAULT;
    snprintf(s->method, sizeof s->method, "%s", qd_method_name(QD_METHOD_DEFAULT));
    s->wbits = QD_WBITS_DEFAULT;
    s->samples = QD_SAMPLES_DEFAULT;
    s->seq_len = QD_SEQ_LEN_DEFAULT;
    s->epochs = QD_EPOCHS_DEFAULT;
    s->threads = 0; /* not given: the server's job_threads */
    s->timeout_s = 3600;
    s->max_ppl_increase = -1;
    snprintf(s->encodings_version, sizeof s->encodings_version, "%s", QD_ENC_VERSION_DEFAULT);
}

bool api_blob_id_valid(const char *s) {
    if (!s || strncmp(s, "sha256:", 7)) return false;
    s += 7;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return s[64] == 0;
}

static int fail(api_field_err *fe, const char *field, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(api_field_err *fe, const char *field, const char *code, const char *fmt, ...) {
    if (fe) {
        snprintf(fe->field, sizeof fe->field, "%s", field);
        snprintf(fe->code, sizeof fe->code, "%s", code);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(fe->message, sizeof fe->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A blob reference: required string id, or (when nullable) JSON null -> "". */
static int get_blob(const cJSON *v, const char *field, bool nullable, char *out, size_t n,
                    api_field_err *fe) {
    if (!v || cJSON_IsNull(v)) {
        if (nullable) {
            out[0] = 0;
            return 0;
        }
        return fail(fe, field, "required", "%s is required (a blob id \"sha256:<hex>\")", field);
    }
    if (!cJSON_IsString(v)) return fail(fe, field, "invalid_type", "%s must be a string", field);
    if (!api_blob_id_valid(v->valuestring))
        return fail(fe, field, "invalid_value", "%s must be a blob id \"sha256:<64 hex digits>\"",
                    field);
    snprintf(out, n, "%s", v->valuestring);
    return 0;
}

bool api_file_name_valid(const char *name, const char **why) {
    const char *w = NULL;
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > API_MAX_FILE_NAME) w = "must be 1-" API_STR(API_MAX_FILE_NAME) " bytes";
    else if (name[0] == '/') w = "must be a relative path, not an absolute one";
    else if (strchr(name, '\\')) w = "must use '/' between directories, not '\\'";
    else
        for (const char *c = name; *c && !w; c++) {
            bool start = c == name || c[-1] == '/';
            if ((unsigned char)*c < 0x20 || *c == 0x7f) w = "must not hold control characters";
            else if (start && *c == '/') w = "must not have an empty directory component";
            else if (start && *c == '.')
                w = "must not have a component starting with '.' (no '..', no hidden files)";
        }
    if (!w && name[n - 1] == '/') w = "must name a file, not a directory";
    if (why) *why = w;
    return !w;
}

/* The files of a model directory: {"relative/path": "sha256:...", ...}. Names must be safe
 * (api_file_name_valid), distinct, and no name may also be a directory of another. */
static int get_model_files(const cJSON *o, api_spec *s, api_field_err *fe) {
    const cJSON *it;
    s->n_model_files = 0;
    cJSON_ArrayForEach(it, o) {
        const char *why;
        if (!api_file_name_valid(it->string, &why))
            return fail(fe, "model", "invalid_value", "model: file name \"%.*s\" %s",
                        API_MAX_FILE_NAME, it->string, why);
        if (s->n_model_files == API_MAX_MODEL_FILES)
            return fail(fe, "model", "out_of_range", "model: at most %d files",
                        API_MAX_MODEL_FILES);
        for (int i = 0; i < s->n_model_files; i++) {
            const char *a = s->model_files[i].name, *b = it->string;
            size_t la = strlen(a), lb = strlen(b);
            if (!strcmp(a, b))
                return fail(fe, "model", "invalid_value", "model: file \"%s\" is named twice", b);
            if ((la < lb && !strncmp(a, b, la) && b[la] == '/') ||
                (lb < la && !strncmp(a, b, lb) && a[lb] == '/'))
                return fail(fe, "model", "invalid_value",
                            "model: \"%s\" is a file and also a directory of \"%s\"",
                            la < lb ? a : b, la < lb ? b : a);
        }
        api_model_file *f = &s->model_files[s->n_model_files];
        if (!cJSON_IsString(it) || !api_blob_id_valid(it->valuestring))
            return fail(fe, "model", "invalid_value",
                        "model: file \"%s\" must map to a blob id \"sha256:<64 hex digits>\"",
                        it->string);
        snprintf(f->name, sizeof f->name, "%s", it->string);
        snprintf(f->blob, sizeof f->blob, "%s", it->valuestring);
        s->n_model_files++;
    }
    if (s->n_model_files == 0)
        return fail(fe, "model", "invalid_value",
                    "model: a directory needs at least one file (an object from relative path to "
                    "blob id)");
    return 0;
}

/* An integer within [lo, hi]; JSON numbers are doubles, so refuse fractions explicitly. */
static int get_int(const cJSON *v, const char *field, long long lo, long long hi, long long *out,
                   api_field_err *fe) {
    if (!cJSON_IsNumber(v)) return fail(fe, field, "invalid_type", "%s must be an integer", field);
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d))
        return fail(fe, field, "invalid_type", "%s must be an integer", field);
    if (d < (double)lo || d > (double)hi)
        return fail(fe, field, "out_of_range", "%s must be between %lld and %lld", field, lo, hi);
    *out = (long long)d;
    return 0;
}

static int get_num(const cJSON *v, const char *field, double lo, double hi, double *out,
                   api_field_err *fe) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return fail(fe, field, "invalid_type", "%s must be a number", field);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return fail(fe, field, "out_of_range", "%s must be between %g and %g", field, lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int parse_budget(const cJSON *b, api_spec *s, api_field_err *fe) {
    if (!cJSON_IsObject(b)) return fail(fe, "budget", "invalid_type", "budget must be an object");
    const cJSON *it;
    cJSON_ArrayForEach(it, b) {
        long long v;
        char field[96];
        snprintf(field, sizeof field, "budget.%s", it->string);
        if (!strcmp(it->string, "samples")) {
            if (get_int(it, field, QD_SAMPLES_MIN, QD_SAMPLES_MAX, &v, fe)) return -1;
            s->samples = (int)v;
        } else if (!strcmp(it->string, "seq_len")) {
            if (get_int(it, field, QD_SEQ_LEN_MIN, QD_SEQ_LEN_MAX, &v, fe)) return -1;
            s->seq_len = (int)v;
        } else if (!strcmp(it->string, "epochs")) {
            if (get_int(it, field, QD_EPOCHS_MIN, QD_EPOCHS_MAX, &v, fe)) return -1;
            s->epochs = (int)v;
        } else {
            return fail(fe, field, "unknown_field", "unknown field %s", field);
        }
    }
    return 0;
}

static int parse_abits(const cJSON *a, api_spec *s, api_field_err *fe) {
    if (!cJSON_IsObject(a)) return fail(fe, "abits", "invalid_type", "abits must be an object");
    const cJSON *it;
    cJSON_ArrayForEach(it, a) {
        char field[96];
        snprintf(field, sizeof field, "abits.%.80s", it->string);
        int k = qd_aclass_parse(it->string);
        if (k < 0)
            return fail(fe, field, "unknown_field", "unknown activation class %s (%s)", field,
                        QD_ACLASS_NAMES);
        long long v;
        if (get_int(it, field, 4, 16, &v, fe)) return -1;
        if (!qd_abits_ok((int)v))
            return fail(fe, field, "invalid_value", "%s must be one of %s", field, QD_ABITS_NAMES);
        s->abits[k] = (int)v;
    }
    return 0;
}

static bool label_key_ok(const char *k) {
    size_t n = strlen(k);
    if (n == 0 || n > API_MAX_LABEL_KEY) return false;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)k[i]) || strchr("._-/", k[i]))) return false;
    return true;
}

static int parse_labels(const cJSON *l, api_spec *s, api_field_err *fe) {
    if (!cJSON_IsObject(l)) return fail(fe, "labels", "invalid_type", "labels must be an object");
    const cJSON *it;
    s->n_labels = 0;
    cJSON_ArrayForEach(it, l) {
        char field[96];
        snprintf(field, sizeof field, "labels.%.80s", it->string);
        if (!label_key_ok(it->string))
            return fail(fe, field, "invalid_value",
                        "label keys are 1-%d characters of [A-Za-z0-9._-/]", API_MAX_LABEL_KEY);
        if (!cJSON_IsString(it)) return fail(fe, field, "invalid_type", "%s must be a string", field);
        if (strlen(it->valuestring) > API_MAX_LABEL_VALUE)
            return fail(fe, field, "out_of_range", "%s is longer than %d bytes", field,
                        API_MAX_LABEL_VALUE);
        if (s->n_labels == API_MAX_LABELS)
            return fail(fe, "labels", "out_of_range", "at most %d labels", API_MAX_LABELS);
        snprintf(s->label_key[s->n_labels], sizeof s->label_key[0], "%s", it->string);
        snprintf(s->label_val[s->n_labels], sizeof s->label_val[0], "%s", it->valuestring);
        s->n_labels++;
    }
    return 0;
}

static int parse_gates(const cJSON *g, api_spec *s, api_field_err *fe) {
    if (cJSON_IsNull(g)) return 0;
    if (!cJSON_IsObject(g)) return fail(fe, "gates", "invalid_type", "gates must be an object");
    const cJSON *it;
    cJSON_ArrayForEach(it, g) {
        char field[96];
        snprintf(field, sizeof field, "gates.%.80s", it->string);
        if (!strcmp(it->string, "max_ppl_increase")) {
            if (cJSON_IsNull(it)) continue;
            if (get_num(it, field, 0, 1000, &s->max_ppl_increase, fe)) return -1;
        } else {
            return fail(fe, field, "unknown_field", "unknown gate %s", field);
        }
    }
    return 0;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF. */
bool api_utf8_valid(const char *str) {
    const unsigned char *p = (const unsigned char *)str;
    while (*p) {
        unsigned c = *p++;
        if (c < 0x80) continue;
        int more;
        unsigned cp, min;
        if (c >= 0xc2 && c <= 0xdf) more = 1, cp = c & 0x1f, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef) more = 2, cp = c & 0x0f, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4) more = 3, cp = c & 0x07, min = 0x10000;
        else return false;
        for (int i = 0; i < more; i++, p++) {
            if ((*p & 0xc0) != 0x80) return false;
            cp = cp << 6 | (*p & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    }
    return true;
}

/* Every key and string of a spec must be UTF-8 before anything else looks at it: a label stored
 * with stray bytes would be echoed into every job list and break strict JSON parsers there. The
 * field named is the path of valid keys down to the bad string (a bad key names its parent). */
static int check_utf8(const cJSON *o, const char *path, int depth, api_field_err *fe) {
    if (depth > 8) return 0; /* deeper than any spec field: refused later as unknown */
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        char field[96];
        if (it->string && !api_utf8_valid(it->string))
            return fail(fe, path, "invalid_value", "a field name under %s is not valid UTF-8",
                        path[0] ? path : "the spec");
        if (it->string)
            snprintf(field, sizeof field, "%s%s%.80s", path, path[0] ? "." : "", it->string);
        else
            snprintf(field, sizeof field, "%s", path);
        if (cJSON_IsString(it) && !api_utf8_valid(it->valuestring))
            return fail(fe, field, "invalid_value", "%s is not valid UTF-8", field);
        if ((cJSON_IsObject(it) || cJSON_IsArray(it)) && check_utf8(it, field, depth + 1, fe))
            return -1;
    }
    return 0;
}

int api_spec_from_json(const cJSON *obj, api_spec *s, api_field_err *fe) {
    api_spec_defaults(s);
    if (!cJSON_IsObject(obj)) return fail(fe, "", "invalid_type", "the job spec must be an object");
    if (check_utf8(obj, "", 0, fe)) return -1;
    const cJSON *it;
    bool have_model = false, have_calib = false;
    cJSON_ArrayForEach(it, obj) {
        const char *k = it->string;
        long long v;
        if (!strcmp(k, "model")) {
            if (cJSON_IsObject(it) ? get_model_files(it, s, fe)
                                   : get_blob(it, k, false, s->model, sizeof s->model, fe))
                return -1;
            have_model = true;
        } else if (!strcmp(k, "calibration")) {
            if (get_blob(it, k, false, s->calibration, sizeof s->calibration, fe)) return -1;
            have_calib = true;
        } else if (!strcmp(k, "eval")) {
            if (get_blob(it, k, true, s->eval, sizeof s->eval, fe)) return -1;
        } else if (!strcmp(k, "tokenizer")) {
            if (get_blob(it, k, true, s->tokenizer, sizeof s->tokenizer, fe)) return -1;
        } else if (!strcmp(k, "eval_split")) {
            if (get_num(it, k, 0, QD_EVAL_SPLIT_MAX, &s->eval_split, fe)) return -1;
        } else if (!strcmp(k, "method")) {
            if (!cJSON_IsString(it)) return fail(fe, k, "invalid_type", "method must be a string");
            qd_method m;
            if (qd_method_parse(it->valuestring, &m, NULL))
                return fail(fe, k, "invalid_value", "method must be one of %s", QD_METHOD_NAMES);
            snprintf(s->method, sizeof s->method, "%s", qd_method_name(m));
        } else if (!strcmp(k, "wbits")) {
            if (get_int(it, k, 4, 8, &v, fe)) return -1;
            if (!qd_wbits_ok((int)v))
                return fail(fe, k, "invalid_value", "wbits must be one of %s", QD_WBITS_NAMES);
            s->wbits = (int)v;
        } else if (!strcmp(k, "abits")) {
            if (parse_abits(it, s, fe)) return -1;
        } else if (!strcmp(k, "budget")) {
            if (parse_budget(it, s, fe)) return -1;
        } else if (!strcmp(k, "seed")) {
            /* 2^53: the largest integer a JSON number carries exactly */
            if (get_int(it, k, 0, 9007199254740992LL, &v, fe)) return -1;
            s->seed = (uint64_t)v;
        } else if (!strcmp(k, "threads")) {
            if (get_int(it, k, QD_THREADS_MIN, QD_THREADS_MAX, &v, fe)) return -1;
            s->threads = (int)v;
        } else if (!strcmp(k, "timeout_s")) {
            if (get_int(it, k, 1, API_MAX_TIMEOUT_S, &v, fe)) return -1;
            s->timeout_s = (int)v;
        } else if (!strcmp(k, "gates")) {
            if (parse_gates(it, s, fe)) return -1;
        } else if (!strcmp(k, "labels")) {
            if (parse_labels(it, s, fe)) return -1;
        } else if (!strcmp(k, "encodings_version")) {
            if (!cJSON_IsString(it))
                return fail(fe, k, "invalid_type", "encodings_version must be a string");
            const char *ev = it->valuestring;
            if (!qd_enc_version_ok(ev))
                return fail(fe, k, "invalid_value", "encodings_version must be one of %s",
                            QD_ENC_VERSION_NAMES);
            snprintf(s->encodings_version, sizeof s->encodings_version, "%s", ev);
        } else {
            char field[96];
            snprintf(field, sizeof field, "%.90s", k);
            return fail(fe, field, "unknown_field", "unknown field %s", field);
        }
    }
    if (!have_model) return fail(fe, "model", "required", "model is required");
    if (!have_calib) return fail(fe, "calibration", "required", "calibration is required");
    if (s->eval_split <= 0 && !s->eval[0])
        return fail(fe, "eval_split", "out_of_range",
                    "eval_split must be > 0 when no eval blob is given");
    return 0;
}

static void add_blob(cJSON *o, const char *k, const char *v) {
    if (v[0]) cJSON_AddStringToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

cJSON *api_spec_to_json(const api_spec *s) {
    cJSON *o = cJSON_CreateObject();
    if (s->n_model_files > 0) {
        cJSON *mf = cJSON_AddObjectToObject(o, "model");
        for (int i = 0; i < s->n_model_files; i++)
            cJSON_AddStringToObject(mf, s->model_files[i].name, s->model_files[i].blob);
    } else {
        add_blob(o, "model", s->model);
    }
    add_blob(o, "calibration", s->calibration);
    add_blob(o, "eval", s->eval);
    cJSON_AddNumberToObject(o, "eval_split", s->eval_split);
    add_blob(o, "tokenizer", s->tokenizer);
    cJSON_AddStringToObject(o, "method", s->method);
    cJSON_AddNumberToObject(o, "wbits", s->wbits);
    cJSON *ab = cJSON_AddObjectToObject(o, "abits");
    for (int i = 0; i < QD_N_ACLASS; i++)
        if (s->abits[i]) cJSON_AddNumberToObject(ab, qd_aclass_name(i), s->abits[i]);
    cJSON *b = cJSON_AddObjectToObject(o, "budget");
    cJSON_AddNumberToObject(b, "samples", s->samples);
    cJSON_AddNumberToObject(b, "seq_len", s->seq_len);
    cJSON_AddNumberToObject(b, "epochs", s->epochs);
    cJSON_AddNumberToObject(o, "seed", (double)s->seed);
    /* 0: not chosen yet (a server fills it in at submit); left out, so that it reads back */
    if (s->threads > 0) cJSON_AddNumberToObject(o, "threads", s->threads);
    cJSON_AddNumberToObject(o, "timeout_s", s->timeout_s);
    cJSON *g = cJSON_AddObjectToObject(o, "gates");
    if (s->max_ppl_increase >= 0) cJSON_AddNumberToObject(g, "max_ppl_increase", s->max_ppl_increase);
    cJSON_AddStringToObject(o, "encodings_version", s->encodings_version);
    cJSON *l = cJSON_AddObjectToObject(o, "labels");
    for (int i = 0; i < s->n_labels; i++) cJSON_AddStringToObject(l, s->label_key[i], s->label_val[i]);
    return o;
}

void api_progress_init(api_progress *p) {
    memset(p, 0, sizeof *p);
    p->loss = NAN;
    p->eta_s = NAN;
    p->eta_total_s = NAN;
}

void api_job_init(api_job *j) {
    memset(j, 0, sizeof *j);
    api_spec_defaults(&j->spec);
    api_progress_init(&j->progress);
    j->exit_code = -1;
}

void api_job_clear(api_job *j) {
    if (!j) return;
    cJSON_Delete(j->result);
    j->result = NULL;
}

double api_wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void api_time_format(double t, char *buf, size_t n) {
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    int ms = (int)((t - (double)s) * 1000.0);
    if (ms < 0) ms = 0;
    if (ms > 999) ms = 999;
    char tmp[32];
    strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03dZ", tmp, ms);
}

double api_time_parse(const char *s) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int ms = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) < 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (double)timegm(&tm) + ms / 1000.0;
}

static void add_time(cJSON *o, const char *k, double t) {
    if (t <= 0) {
        cJSON_AddNullToObject(o, k);
        return;
    }
    char buf[40];
    api_time_format(t, buf, sizeof buf);
    cJSON_AddStringToObject(o, k, buf);
}

/* JSON has no NaN: unknown figures are null. */
static void add_num_or_null(cJSON *o, const char *k, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

cJSON *api_job_to_json(const api_job *j, int queue_pos) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "state", api_state_name(j->state));
    cJSON_AddItemToObject(o, "spec", api_spec_to_json(&j->spec));
    add_time(o, "created_at", j->created_at);
    add_time(o, "started_at", j->started_at);
    add_time(o, "finished_at", j->finished_at);
    if (queue_pos >= 0) cJSON_AddNumberToObject(o, "queue_position", queue_pos);
    cJSON *p = cJSON_AddObjectToObject(o, "progress");
    if (j->progress.phase[0]) cJSON_AddStringToObject(p, "phase", j->progress.phase);
    else cJSON_AddNullToObject(p, "phase");
    cJSON_AddNumberToObject(p, "step", (double)j->progress.step);
    cJSON_AddNumberToObject(p, "total", (double)j->progress.total);
    add_num_or_null(p, "loss", j->progress.loss);
    add_num_or_null(p, "eta_s", j->progress.eta_s);
    cJSON_AddNumberToObject(p, "elapsed_s", j->progress.elapsed_s);
    if (j->progress.variant[0]) cJSON_AddStringToObject(p, "variant", j->progress.variant);
    else cJSON_AddNullToObject(p, "variant");
    cJSON_AddNumberToObject(p, "stage", j->progress.stage);
    cJSON_AddNumberToObject(p, "stages", j->progress.stages);
    add_num_or_null(p, "eta_total_s", j->progress.eta_total_s);
    cJSON_AddNumberToObject(o, "attempts", j->attempts);
    cJSON_AddNumberToObject(o, "run_s", round(j->run_s * 1000) / 1000);
    cJSON_AddBoolToObject(o, "cancel_requested", j->cancel_requested);
    cJSON *w = cJSON_AddObjectToObject(o, "worker");
    cJSON_AddNumberToObject(w, "pid", j->worker_pid);
    if (j->exit_code >= 0) cJSON_AddNumberToObject(w, "exit_code", j->exit_code);
    else cJSON_AddNullToObject(w, "exit_code");
    if (j->term_signal) cJSON_AddNumberToObject(w, "signal", j->term_signal);
    else cJSON_AddNullToObject(w, "signal");
    if (j->slurm_job_id[0]) {
        cJSON *sl = cJSON_AddObjectToObject(o, "slurm");
        cJSON_AddStringToObject(sl, "job_id", j->slurm_job_id);
        cJSON_AddStringToObject(sl, "state", j->slurm_state);
        cJSON_AddStringToObject(sl, "node", j->slurm_node);
        cJSON_AddStringToObject(sl, "reason", j->slurm_reason);
    }
    if (j->error[0]) cJSON_AddStringToObject(o, "error", j->error);
    else cJSON_AddNullToObject(o, "error");
    if (j->log_tail[0]) cJSON_AddStringToObject(o, "log_tail", j->log_tail);
    if (j->result) cJSON_AddItemToObject(o, "result", cJSON_Duplicate(j->result, 1));
    else cJSON_AddNullToObject(o, "result");
    return o;
}

static double num_or(const cJSON *o, const char *k, double dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static const char *str_or(const cJSON *o, const char *k, const char *dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

int api_job_from_json(const cJSON *o, api_job *j, qd_err *err) {
    api_job_init(j);
    if (!cJSON_IsObject(o)) return qd_errf(err, "%s: job record is not an object", __func__);
    const char *id = str_or(o, "id", NULL);
    if (!id || strlen(id) >= sizeof j->id) return qd_errf(err, "%s: job record has no id", __func__);
    snprintf(j->id, sizeof j->id, "%s", id);
    if (api_state_parse(str_or(o, "state", ""), &j->state))
        return qd_errf(err, "%s: job %s: unknown state", __func__, id);
    api_field_err fe;
    if (api_spec_from_json(cJSON_GetObjectItemCaseSensitive(o, "spec"), &j->spec, &fe))
        return qd_errf(err, "%s: job %s: spec.%s: %s", __func__, id, fe.field, fe.message);
    j->created_at = api_time_parse(str_or(o, "created_at", NULL));
    j->started_at = api_time_parse(str_or(o, "started_at", NULL));
    j->finished_at = api_time_parse(str_or(o, "finished_at", NULL));
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "progress");
    if (cJSON_IsObject(p)) {
        snprintf(j->progress.phase, sizeof j->progress.phase, "%s", str_or(p, "phase", ""));
        j->progress.step = (long)num_or(p, "step", 0);
        j->progress.total = (long)num_or(p, "total", 0);
        j->progress.loss = num_or(p, "loss", NAN);
        j->progress.eta_s = num_or(p, "eta_s", NAN);
        j->progress.elapsed_s = num_or(p, "elapsed_s", 0);
        snprintf(j->progress.variant, sizeof j->progress.variant, "%s", str_or(p, "variant", ""));
        j->progress.stage = (int)num_or(p, "stage", 0);
        j->progress.stages = (int)num_or(p, "stages", 0);
        j->progress.eta_total_s = num_or(p, "eta_total_s", NAN);
    }
    j->attempts = (int)num_or(o, "attempts", 0);
    j->run_s = num_or(o, "run_s", 0);
    if (!isfinite(j->run_s) || j->run_s < 0) j->run_s = 0;
    j->cancel_requested = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "cancel_requested"));
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "worker");
    if (cJSON_IsObject(w)) {
        j->worker_pid = (int)num_or(w, "pid", 0);
        j->exit_code = (int)num_or(w, "exit_code", -1);
        j->term_signal = (int)num_or(w, "signal", 0);
    }
    const cJSON *sl = cJSON_GetObjectItemCaseSensitive(o, "slurm");
    if (cJSON_IsObject(sl)) {
        snprintf(j->slurm_job_id, sizeof j->slurm_job_id, "%s", str_or(sl, "job_id", ""));
        snprintf(j->slurm_state, sizeof j->slurm_state, "%s", str_or(sl, "state", ""));
        snprintf(j->slurm_node, sizeof j->slurm_node, "%s", str_or(sl, "node", ""));
        snprintf(j->slurm_reason, sizeof j->slurm_reason, "%s", str_or(sl, "reason", ""));
    }
    snprintf(j->error, sizeof j->error, "%s", str_or(o, "error", ""));
    snprintf(j->log_tail, sizeof j->log_tail, "%s", str_or(o, "log_tail", ""));
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "result");
    if (cJSON_IsObject(r)) j->result = cJSON_Duplicate(r, 1);
    return 0;
}

char *api_error_body(const char *code, const char *message, const char *field) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", message ? message : "");
    if (field) cJSON_AddStringToObject(e, "field", field);
    else cJSON_AddNullToObject(e, "field");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static char *event_finish(cJSON *o) {
    cJSON_AddNumberToObject(o, "t", api_wall_now());
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

char *api_event_progress(const char *phase, long step, long total, double loss, double lr,
                         double elapsed_s, double eta_s, const char *variant, int stage,
                         int stages, double eta_total_s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "progress");
    cJSON_AddStringToObject(o, "phase", phase ? phase : "");
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddNumberToObject(o, "total", (double)total);
    add_num_or_null(o, "loss", loss);
    add_num_or_null(o, "lr", lr);
    add_num_or_null(o, "elapsed_s", elapsed_s);
    add_num_or_null(o, "eta_s", eta_s);
    if (variant) cJSON_AddStringToObject(o, "variant", variant);
    if (stage > 0) cJSON_AddNumberToObject(o, "stage", stage), cJSON_AddNumberToObject(o, "stages", stages);
    add_num_or_null(o, "eta_total_s", eta_total_s);
    return event_finish(o);
}

char *api_event_state(api_state s, const char *reason) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "state");
    cJSON_AddStringToObject(o, "state", api_state_name(s));
    if (reason) cJSON_AddStringToObject(o, "reason", reason);
    return event_finish(o);
}

char *api_event_log(const char *level, const char *message) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "log");
    cJSON_AddStringToObject(o, "level", level);
    cJSON_AddStringToObject(o, "message", message);
    return event_finish(o);
}

bool api_event_apply(const cJSON *o, api_progress *p) {
    if (strcmp(str_or(o, "type", ""), "progress")) return false;
    snprintf(p->phase, sizeof p->phase, "%s", str_or(o, "phase", ""));
    p->step = (long)num_or(o, "step", 0);
    p->total = (long)num_or(o, "total", 0);
    /* the loss is the last optimizer step's: a later phase (evaluation, export) reports none,
     * and a finished job should still show where its optimizer ended */
    double loss = num_or(o, "loss", NAN);
    if (!isnan(loss)) p->loss = loss;
    p->eta_s = num_or(o, "eta_s", NAN);
    p->elapsed_s = num_or(o, "elapsed_s", 0);
    snprintf(p->variant, sizeof p->variant, "%s", str_or(o, "variant", ""));
    p->stage = (int)num_or(o, "stage", 0);
    p->stages = (int)num_or(o, "stages", 0);
    p->eta_total_s = num_or(o, "eta_total_s", NAN);
    return true;
}

void api_report_headline(const cJSON *report, cJSON *into) {
    static const char *const keys[] = QD_REPORT_HEADLINE_KEYS;
    for (size_t i = 0; keys[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(report, keys[i]);
        if (v) cJSON_AddItemToObject(into, keys[i], cJSON_Duplicate(v, 1));
    }
}
