/* The service contract in C: job specs, job states, progress events and job records, to and
 * from JSON (cJSON), with validation that names the offending field. Shared by the server
 * (parses what clients send, persists job.json), the worker (reads job.json, writes events)
 * and the CLI. api/openapi.yaml describes the same shapes for HTTP clients. */
#ifndef QD_API_H
#define QD_API_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "base/err.h"

/* Limits of the service's own fields. The budget, bit widths, methods and activation classes
 * obey base/limits.h's table, as the CLI and the pipeline do; the server may lower some
 * through its config. */
#define API_MAX_TIMEOUT_S (7 * 24 * 3600)
#define API_MAX_LABELS 32
#define API_MAX_LABEL_KEY 63
#define API_MAX_LABEL_VALUE 255
#define API_N_ABITS 16
/* A model made of several files (a Hugging Face directory): at most this many files, each
 * named by a relative path of at most API_MAX_FILE_NAME bytes. */
#define API_MAX_MODEL_FILES 64
#define API_MAX_FILE_NAME 127

typedef enum api_state {
    API_QUEUED,
    API_RUNNING,
    API_SUCCEEDED,
    API_FAILED,
    API_CANCELLED,
    API_TIMED_OUT,
    API_STATE_COUNT
} api_state;

/* Lower-case state name ("queued" ...); never NULL. */
const char *api_state_name(api_state s);
/* Parses a state name; 0 on success, -1 when unknown. */
int api_state_parse(const char *s, api_state *out);
/* True for succeeded, failed, cancelled and timed_out. */
bool api_state_terminal(api_state s);

/* A validation failure: which field (JSON path, e.g. "budget.samples"), a machine code
 * ("required", "invalid_type", "out_of_range", "unknown_field", "invalid_value") and a message. */
typedef struct api_field_err {
    char field[96];
    char code[32];
    char message[256];
} api_field_err;

/* One file of a model directory: its relative path there and its blob. */
typedef struct api_model_file {
    char name[API_MAX_FILE_NAME + 1];
    char blob[72];
} api_model_file;

/* A job spec as accepted by POST /v1/jobs, with every default filled in. Blob ids are
 * "sha256:<64 hex>" strings; an empty string stands for JSON null. The model is either one
 * blob (model) or a directory of n_model_files files (model is then ""; JSON: an object from
 * relative path to blob id). */
typedef struct api_spec {
    char model[72];
    int n_model_files;
    api_model_file model_files[API_MAX_MODEL_FILES];
    char calibration[72];
    char eval[72];
    char tokenizer[72];
    double eval_split;
    char method[16];
    int wbits;
    int abits[API_N_ABITS]; /* 0: the bit map's default for that activation class */
    int samples, seq_len, epochs;
    uint64_t seed;
    int threads;
    int timeout_s;
    double max_ppl_increase; /* < 0 when the gate is not set */
    char encodings_version[8]; /* AIMET encodings.json format: "1.0.0" or "0.6.1" */
    int n_labels;
    char label_key[API_MAX_LABELS][API_MAX_LABEL_KEY + 1];
    char label_val[API_MAX_LABELS][API_MAX_LABEL_VALUE + 1];
} api_spec;

void api_spec_defaults(api_spec *s);

/* Validates and parses a spec object. 0 on success; -1 with *fe naming the first bad field.
 * Unknown fields are refused (a typo must not silently fall back to a default). */
int api_spec_from_json(const cJSON *obj, api_spec *s, api_field_err *fe);

/* The spec as a JSON object with every field present; caller frees with cJSON_Delete. */
cJSON *api_spec_to_json(const api_spec *s);

/* True when s is "sha256:" followed by 64 lower-case hex digits. */
bool api_blob_id_valid(const char *s);

/* Whether name may be a file of a model directory: a relative path of 1-API_MAX_FILE_NAME
 * bytes whose '/'-separated components are non-empty and start with neither '.' nor a
 * control character (so no "..", no absolute path, no hidden file), without '\\'. On false
 * *why (may be NULL) says what is wrong. */
bool api_file_name_valid(const char *name, const char **why);

/* Whether s (NUL-terminated) is strict UTF-8: no overlong forms, surrogates or code points past
 * U+10FFFF. */
bool api_utf8_valid(const char *s);

/* Progress of a job as the API reports it. NAN marks an unknown loss or ETA. */
typedef struct api_progress {
    char phase[16];
    long step, total;
    double loss;
    double eta_s;
    double elapsed_s;
    char variant[16];     /* what the phase works on (fp32, rtn, ..., int); "" when none */
    int stage, stages;    /* the phase is stage `stage` of `stages` of the run; 0 unknown */
    double eta_total_s;   /* seconds left in the whole run, NAN when unknown */
} api_progress;

void api_progress_init(api_progress *p);

/* A job record: what job.json holds and what GET /v1/jobs/{id} returns. */
typedef struct api_job {
    char id[40];
    api_state state;
    api_spec spec;
    double created_at, started_at, finished_at; /* unix seconds; 0 when not yet */
    api_progress progress;
    int attempts;         /* worker starts so far */
    double run_s;         /* seconds spent in workers over all attempts; counts against timeout_s */
    int worker_pid;       /* last worker's pid, 0 when none */
    int exit_code;        /* last worker's exit status, -1 when none */
    int term_signal;      /* signal that ended the last worker, 0 when none */
    bool cancel_requested;
    /* the Slurm dispatcher's batch job of the last attempt ("" when none), as squeue last saw it */
    char slurm_job_id[32];
    char slurm_state[24];
    char slurm_node[64];
    char slurm_reason[160];
    char error[512];      /* why it failed, empty otherwise */
    char log_tail[2048];  /* last lines of the worker's log on failure */
    cJSON *result;        /* owned; NULL until finished */
} api_job;

void api_job_init(api_job *j);
/* Frees what the record owns (result); the struct itself is the caller's. */
void api_job_clear(api_job *j);

/* The job as JSON; caller frees. queue_pos >= 0 adds "queue_position". */
cJSON *api_job_to_json(const api_job *j, int queue_pos);

/* Reads a job record written by api_job_to_json. 0 on success, -1 with err set. */
int api_job_from_json(const cJSON *obj, api_job *j, qd_err *err);

/* RFC 3339 UTC text of a unix time, into buf (>= 32 bytes). */
void api_time_format(double t, char *buf, size_t n);
/* Parses what api_time_format writes; 0 on failure. */
double api_time_parse(const char *s);
/* Seconds since the epoch, wall clock. */
double api_wall_now(void);

/* An error body {"error":{"code","message","field"}} as a malloc'd string; field may be NULL. */
char *api_error_body(const char *code, const char *message, const char *field);

/* One event line (no newline) for a pipeline progress report: a malloc'd JSON string.
 * variant may be NULL; stage/stages 0 and eta_total_s NAN when unknown. */
char *api_event_progress(const char *phase, long step, long total, double loss, double lr,
                         double elapsed_s, double eta_s, const char *variant, int stage,
                         int stages, double eta_total_s);
/* One event line for a state change; reason may be NULL. Malloc'd. */
char *api_event_state(api_state s, const char *reason);
/* One event line for a log message. Malloc'd. */
char *api_event_log(const char *level, const char *message);

/* Applies a progress event object to p; returns true when obj was a progress event. */
bool api_event_apply(const cJSON *obj, api_progress *p);

/* A finished job's result headline: adds to `into` a copy of each of report.json's
 * QD_REPORT_HEADLINE_KEYS (base/report_keys.h: eval, size, gates, compute) that report holds.
 * report may be NULL (nothing is added). */
void api_report_headline(const cJSON *report, cJSON *into);

#endif
