/* Unit tests of the service contract: job-spec validation (every bad field gets a 422 naming
 * it), JSON round trips of specs and job records, the event lines, config and token parsing,
 * and that the server's route table and api/openapi.yaml describe the same endpoints. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "base/limits.h"
#include "base/version.h"
#include "quant/quantize.h"
#include "quant/sim/fakequant.h"
#include "server/auth.h"
#include "base/hash.h"
#include "server/config.h"
#include "server/server.h"
#include "tests/check.h"
#include "base/fs.h"

#define BLOB_A "sha256:270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
#define BLOB_B "sha256:3ccdd4ecfe9b52fed5931479dc95ca56ce9fe44e3347cdf0daf401b3729d761c"

/* Parses text as a spec; returns 0/-1 and fills fe. */
static int parse(const char *text, api_spec *s, api_field_err *fe) {
    cJSON *o = cJSON_Parse(text);
    memset(fe, 0, sizeof *fe);
    int rc = api_spec_from_json(o, s, fe);
    cJSON_Delete(o);
    return rc;
}

static void test_spec_minimal_defaults(void) {
    api_spec s;
    api_field_err fe;
    int rc = parse("{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\"}", &s, &fe);
    CHECK(rc == 0, "minimal spec refused: %s %s", fe.field, fe.message);
    CHECK(!strcmp(s.method, "mobilequant"), "default method %s", s.method);
    CHECK(s.wbits == 8 && s.samples == 64 && s.seq_len == 256 && s.epochs == 10, "defaults");
    CHECK(s.threads == 0 /* the server chooses */ && s.timeout_s == 3600 && s.eval_split == 0.5, "defaults");
    CHECK(s.max_ppl_increase < 0 && !s.eval[0] && !s.tokenizer[0], "no gate, no eval blob");
    CHECK(!strcmp(s.encodings_version, "1.0.0"), "default encodings_version %s", s.encodings_version);
}

static void test_spec_full_roundtrip(void) {
    const char *text =
        "{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"eval\":\"" BLOB_B "\","
        "\"eval_split\":0.25,\"tokenizer\":null,\"method\":\"rtn\",\"wbits\":4,"
        "\"abits\":{\"res\":8,\"head\":16},\"budget\":{\"samples\":4,\"seq_len\":64,\"epochs\":1},"
        "\"seed\":42,\"threads\":2,\"timeout_s\":60,\"gates\":{\"max_ppl_increase\":0.02},"
        "\"labels\":{\"team\":\"npu\",\"ci.run\":\"17\"},\"encodings_version\":\"0.6.1\"}";
    api_spec s, s2;
    api_field_err fe;
    CHECK(parse(text, &s, &fe) == 0, "full spec refused: %s %s", fe.field, fe.message);
    CHECK(s.wbits == 4 && s.samples == 4 && s.seq_len == 64 && s.epochs == 1 && s.seed == 42, "values");
    CHECK(s.abits[0] == 8 && s.abits[12] == 16 && s.abits[1] == 0, "abits by class");
    CHECK(fabs(s.max_ppl_increase - 0.02) < 1e-12, "gate");
    CHECK(s.n_labels == 2 && !strcmp(s.label_val[1], "17"), "labels");
    CHECK(!strcmp(s.encodings_version, "0.6.1"), "encodings_version %s", s.encodings_version);
    cJSON *o = api_spec_to_json(&s);
    CHECK(api_spec_from_json(o, &s2, &fe) == 0, "own output refused: %s", fe.message);
    cJSON_Delete(o);
    CHECK(!memcmp(&s, &s2, sizeof s), "spec -> json -> spec differs");
}

/* A model directory: an object from relative path to blob id, kept in order, round-tripped;
 * unsafe names, repeats, a name that is also a directory, and non-blob values refused. */
static void test_spec_model_dir(void) {
    api_spec s, s2;
    api_field_err fe;
    const char *ok = "{\"model\":{\"config.json\":\"" BLOB_A "\",\"sub/model.safetensors\":\"" BLOB_B
                     "\"},\"calibration\":\"" BLOB_B "\"}";
    CHECK(parse(ok, &s, &fe) == 0, "model directory refused: %s", fe.message);
    CHECK(s.n_model_files == 2 && !s.model[0], "two files, no single blob");
    CHECK(!strcmp(s.model_files[1].name, "sub/model.safetensors") &&
          !strcmp(s.model_files[1].blob, BLOB_B), "second file %s", s.model_files[1].name);
    cJSON *o = api_spec_to_json(&s);
    CHECK(cJSON_IsObject(cJSON_GetObjectItem(o, "model")), "written back as an object");
    CHECK(api_spec_from_json(o, &s2, &fe) == 0 && !memcmp(&s, &s2, sizeof s), "round trip");
    cJSON_Delete(o);
    static const char *const bad[] = {
        "{\"../x\":\"" BLOB_A "\"}", "{\"/etc/passwd\":\"" BLOB_A "\"}",
        "{\"a/./b\":\"" BLOB_A "\"}", "{\".git/config\":\"" BLOB_A "\"}",
        "{\"a//b\":\"" BLOB_A "\"}", "{\"a\\\\b\":\"" BLOB_A "\"}", "{\"d/\":\"" BLOB_A "\"}",
        "{\"\":\"" BLOB_A "\"}", "{\"a\\u0001\":\"" BLOB_A "\"}",
        "{\"x\":\"" BLOB_A "\",\"x\":\"" BLOB_B "\"}", "{\"a\":\"" BLOB_A "\",\"a/b\":\"" BLOB_B "\"}",
        "{\"a/b\":\"" BLOB_A "\",\"a\":\"" BLOB_B "\"}", "{\"x\":\"sha256:12\"}", "{\"x\":null}", "{}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"model\":%s,\"calibration\":\"" BLOB_B "\"}", bad[i]);
        CHECK(parse(text, &s, &fe) == -1 && !strcmp(fe.field, "model"), "%s: accepted or field %s",
              bad[i], fe.field);
    }
    CHECK(api_file_name_valid("a.b/c-d_e.json", NULL) && api_file_name_valid("x..y", NULL),
          "dots inside a name are fine");
    char longname[API_MAX_FILE_NAME + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    CHECK(!api_file_name_valid(longname, NULL), "a name over the limit");
    longname[API_MAX_FILE_NAME] = 0;
    CHECK(api_file_name_valid(longname, NULL), "a name at the limit");
}

typedef struct bad_case {
    const char *json;
    const char *field;
    const char *code;
} bad_case;

/* The bad-input catalogue for specs: every case must name the offending field. */
static void test_spec_bad_fields(void) {
    static const bad_case cases[] = {
        {"{\"calibration\":\"" BLOB_B "\"}", "model", "required"},
        {"{\"model\":\"" BLOB_A "\"}", "calibration", "required"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"modle\":1}", "modle", "unknown_field"},
        {"{\"model\":\"sha256:xyz\",\"calibration\":\"" BLOB_B "\"}", "model", "invalid_value"},
        {"{\"model\":\"../../etc/passwd\",\"calibration\":\"" BLOB_B "\"}", "model", "invalid_value"},
        {"{\"model\":7,\"calibration\":\"" BLOB_B "\"}", "model", "invalid_type"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"method\":\"gptq\"}", "method", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"method\":3}", "method", "invalid_type"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"wbits\":6}", "wbits", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"wbits\":8.5}", "wbits", "invalid_type"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"wbits\":\"8\"}", "wbits", "invalid_type"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"budget\":{\"samples\":0}}", "budget.samples", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"budget\":{\"samples\":1e12}}", "budget.samples", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"budget\":{\"epoch\":1}}", "budget.epoch", "unknown_field"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"budget\":[]}", "budget", "invalid_type"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"threads\":0}", "threads", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"timeout_s\":-1}", "timeout_s", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"seed\":-1}", "seed", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"eval_split\":1.5}", "eval_split", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"eval_split\":0}", "eval_split", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"abits\":{\"bogus\":8}}", "abits.bogus", "unknown_field"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"abits\":{\"res\":7}}", "abits.res", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"gates\":{\"max_ppl\":1}}", "gates.max_ppl", "unknown_field"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"gates\":{\"max_ppl_increase\":-0.1}}", "gates.max_ppl_increase", "out_of_range"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"a b\":\"x\"}}", "labels.a b", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"a\":1}}", "labels.a", "invalid_type"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"encodings_version\":\"2.0\"}", "encodings_version", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"encodings_version\":1}", "encodings_version", "invalid_type"},
        {"[1,2]", "", "invalid_type"},
        /* stray bytes, an overlong '/', a surrogate, past U+10FFFF, a cut sequence */
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"team\":\"np\xff\"}}", "labels.team", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"team\":\"\xc0\xaf\"}}", "labels.team", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"team\":\"\xed\xa0\x80\"}}", "labels.team", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"team\":\"\xf4\x90\x80\x80\"}}", "labels.team", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"team\":\"ab\xe2\x82\"}}", "labels.team", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"t\xfe\":\"x\"}}", "labels", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"m\xffx\":1}", "", "invalid_value"},
        {"{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"method\":\"rtn\x80\"}", "method", "invalid_value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_spec s;
        api_field_err fe;
        int rc = parse(cases[i].json, &s, &fe);
        CHECK(rc == -1, "case %zu accepted: %s", i, cases[i].json);
        CHECK(!strcmp(fe.field, cases[i].field), "case %zu: field '%s', want '%s'", i, fe.field,
              cases[i].field);
        CHECK(!strcmp(fe.code, cases[i].code), "case %zu: code '%s', want '%s'", i, fe.code,
              cases[i].code);
        CHECK(fe.message[0], "case %zu: no message", i);
    }
    /* too many labels */
    char big[8192];
    int n = snprintf(big, sizeof big, "{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{");
    for (int i = 0; i <= API_MAX_LABELS; i++) n += snprintf(big + n, sizeof big - (size_t)n, "%s\"k%d\":\"v\"", i ? "," : "", i);
    snprintf(big + n, sizeof big - (size_t)n, "}}");
    api_spec s;
    api_field_err fe;
    CHECK(parse(big, &s, &fe) == -1 && !strcmp(fe.field, "labels"), "33 labels accepted");
}

/* Valid UTF-8 passes, in labels too, and the validator's edges hold. */
static void test_utf8(void) {
    api_spec s;
    api_field_err fe;
    const char *ok = "{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\",\"labels\":{\"team\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82\"}}";
    CHECK(parse(ok, &s, &fe) == 0, "valid UTF-8 refused: %s %s", fe.field, fe.message);
    CHECK(api_utf8_valid("") && api_utf8_valid("\x7f") && api_utf8_valid("\xf4\x8f\xbf\xbf"), "edges refused");
    CHECK(!api_utf8_valid("\xe0\x80\x80") && !api_utf8_valid("\xf0\x80\x80\x80") && !api_utf8_valid("\xc1\xbf"), "overlong accepted");
    CHECK(!api_utf8_valid("\x80") && !api_utf8_valid("\xf5\x80\x80\x80"), "bad lead accepted");
}

static void test_blob_ids(void) {
    CHECK(api_blob_id_valid(BLOB_A), "valid id refused");
    CHECK(!api_blob_id_valid("sha256:" "270CBA1BD5109F42D03350F60406024560464DB173C0E387D91F0426D3BD256D"), "upper hex");
    CHECK(!api_blob_id_valid(BLOB_A "0"), "65 hex digits");
    CHECK(!api_blob_id_valid("md5:abc"), "other algorithm");
    CHECK(!api_blob_id_valid(NULL), "NULL");
}

static void test_states(void) {
    for (int i = 0; i < API_STATE_COUNT; i++) {
        api_state s;
        CHECK(api_state_parse(api_state_name((api_state)i), &s) == 0 && (int)s == i, "state %d", i);
    }
    api_state s;
    CHECK(api_state_parse("done", &s) == -1, "unknown state accepted");
    CHECK(!api_state_terminal(API_QUEUED) && !api_state_terminal(API_RUNNING), "live states");
    CHECK(api_state_terminal(API_SUCCEEDED) && api_state_terminal(API_FAILED) &&
          api_state_terminal(API_CANCELLED) && api_state_terminal(API_TIMED_OUT), "terminal states");
}

static void test_job_roundtrip(void) {
    api_job j;
    api_job_init(&j);
    snprintf(j.id, sizeof j.id, "0f8fad5b-d9cb-469f-a165-70867728950e");
    snprintf(j.spec.model, sizeof j.spec.model, BLOB_A);
    snprintf(j.spec.calibration, sizeof j.spec.calibration, BLOB_B);
    j.state = API_FAILED;
    j.created_at = 1700000000.25;
    j.started_at = 1700000001.5;
    j.finished_at = 1700000009.75;
    snprintf(j.progress.phase, sizeof j.progress.phase, "optimize");
    j.progress.step = 3;
    j.progress.total = 10;
    j.progress.loss = 0.125;
    j.attempts = 2;
    j.worker_pid = 1234;
    j.term_signal = 9;
    snprintf(j.error, sizeof j.error, "worker killed by signal 9");
    snprintf(j.slurm_job_id, sizeof j.slurm_job_id, "4711");
    snprintf(j.slurm_state, sizeof j.slurm_state, "NODE_FAIL");
    snprintf(j.slurm_node, sizeof j.slurm_node, "n17");
    snprintf(j.slurm_reason, sizeof j.slurm_reason, "NodeDown");
    j.result = cJSON_Parse("{\"eval\":{\"int\":{\"ppl\":9.5}}}");
    cJSON *o = api_job_to_json(&j, -1);
    api_job k;
    qd_err err;
    CHECK(api_job_from_json(o, &k, &err) == 0, "own job record refused: %s", err.msg);
    cJSON_Delete(o);
    CHECK(!strcmp(k.id, j.id) && k.state == API_FAILED && k.attempts == 2 && k.worker_pid == 1234,
          "fields");
    CHECK(fabs(k.created_at - j.created_at) < 2e-3 && fabs(k.finished_at - j.finished_at) < 2e-3,
          "times %f %f", k.created_at, k.finished_at);
    CHECK(k.progress.step == 3 && k.progress.total == 10 && k.progress.loss == 0.125, "progress");
    CHECK(isnan(k.progress.eta_s), "unknown ETA stays unknown");
    CHECK(k.term_signal == 9 && k.exit_code == -1 && !strcmp(k.error, j.error), "worker end");
    CHECK(k.result && cJSON_GetObjectItem(k.result, "eval"), "result kept");
    CHECK(!strcmp(k.slurm_job_id, "4711") && !strcmp(k.slurm_state, "NODE_FAIL") &&
              !strcmp(k.slurm_node, "n17") && !strcmp(k.slurm_reason, "NodeDown"),
          "the Slurm job of the last attempt is kept (a restarted server follows it by its id)");
    api_job_clear(&j);
    api_job_clear(&k);
}

static void test_events(void) {
    char *l = api_event_progress("optimize", 5, 20, 0.5, NAN, 1.0, NAN, "mobilequant", 4, 13, 95.0);
    cJSON *o = cJSON_Parse(l);
    CHECK(o != NULL, "progress line is not JSON: %s", l);
    CHECK(!strchr(l, '\n'), "event lines are single lines");
    api_progress p;
    api_progress_init(&p);
    CHECK(api_event_apply(o, &p), "progress event not applied");
    CHECK(p.step == 5 && p.total == 20 && p.loss == 0.5 && isnan(p.eta_s) &&
          !strcmp(p.phase, "optimize") && !strcmp(p.variant, "mobilequant") && p.stage == 4 &&
          p.stages == 13 && p.eta_total_s == 95.0, "applied values");
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(o, "lr")), "NaN is null in JSON");
    cJSON_Delete(o);
    free(l);
    /* a later phase without a loss keeps the optimizer's last one */
    l = api_event_progress("eval", 1, 3, NAN, NAN, 2.0, NAN, NULL, 0, 0, NAN);
    o = cJSON_Parse(l);
    CHECK(api_event_apply(o, &p) && !strcmp(p.phase, "eval") && p.loss == 0.5, "loss after optimize: %g", p.loss);
    cJSON_Delete(o);
    free(l);
    l = api_event_state(API_CANCELLED, "by request");
    o = cJSON_Parse(l);
    CHECK(!api_event_apply(o, &p), "a state event is not progress");
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(o, "state")), "cancelled"), "state");
    cJSON_Delete(o);
    free(l);
    char *e = api_error_body("unknown_field", "unknown field x", "x");
    o = cJSON_Parse(e);
    cJSON *err = cJSON_GetObjectItem(o, "error");
    CHECK(err && !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(err, "field")), "x"), "error body");
    cJSON_Delete(o);
    free(e);
}

/* base/limits.h's table: names round-trip, and the API and the pipeline take the same
 * bounds from it (the largest budget passes the API; one more is refused by both). */
static void test_limits_table(void) {
    for (int m = 0; m < QD_METHOD_COUNT; m++) {
        qd_method back;
        CHECK(qd_method_parse(qd_method_name((qd_method)m), &back, NULL) == QD_OK &&
                  back == (qd_method)m, "method %d round trip", m);
    }
    qd_method x;
    qd_err e = {{0}};
    CHECK(qd_method_parse("gptq", &x, &e) == QD_ERR && strstr(e.msg, "gptq") &&
              strstr(e.msg, QD_METHOD_NAMES), "unknown method: '%s'", e.msg);
    CHECK(qd_method_parse(NULL, &x, NULL) == QD_ERR, "NULL method");
    for (int c = 0; c < QD_AC_COUNT; c++)
        CHECK(qd_aclass_parse(qd_aclass_name(c)) == c, "class %d round trip", c);
    CHECK(qd_aclass_name(QD_AC_COUNT) == NULL && qd_aclass_parse("bogus") == -1, "past the end");
    CHECK(qd_wbits_ok(4) && qd_wbits_ok(8) && !qd_wbits_ok(3) && !qd_wbits_ok(16), "wbits");
    CHECK(qd_abits_ok(16) && !qd_abits_ok(12) && !qd_abits_ok(0), "abits");

    char spec[512];
    api_spec s;
    api_field_err fe;
    snprintf(spec, sizeof spec, "{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\","
             "\"budget\":{\"samples\":%d,\"seq_len\":%d,\"epochs\":%d}}", QD_SAMPLES_MAX,
             QD_SEQ_LEN_MAX, QD_EPOCHS_MAX);
    CHECK(parse(spec, &s, &fe) == 0, "the table's largest budget: %s", fe.message);
    snprintf(spec, sizeof spec, "{\"model\":\"" BLOB_A "\",\"calibration\":\"" BLOB_B "\","
             "\"budget\":{\"samples\":%d}}", QD_SAMPLES_MAX + 1);
    CHECK(parse(spec, &s, &fe) == -1 && !strcmp(fe.field, "budget.samples"), "samples + 1");
    /* the pipeline refuses the same value before it opens any file */
    qd_quant_opts o;
    qd_quant_defaults(&o);
    o.model_path = o.calib_path = o.out_dir = "/nonexistent/qd-limits";
    o.samples = QD_SAMPLES_MAX + 1;
    CHECK(qd_quantize(&o, &e) == QD_ERR && strstr(e.msg, "budget"), "pipeline: '%s'", e.msg);
    /* the defaults are the table's, in the API and the pipeline alike */
    api_spec_defaults(&s);
    qd_quant_defaults(&o);
    CHECK(s.samples == o.samples && s.seq_len == o.seq_len && s.epochs == o.epochs &&
              s.wbits == o.wbits && !strcmp(s.method, o.method) && s.eval_split == o.eval_split,
          "api and pipeline defaults differ");
    CHECK(o.checkpoint_every == QD_CHECKPOINT_EVERY_DEFAULT, "checkpoint interval");
}

static void test_config(void) {
    srv_config c;
    srv_config_defaults(&c);
    CHECK(!strcmp(c.listen, "127.0.0.1:8080") && !strcmp(c.data_dir, "./var") && c.workers == 1,
          "defaults");
    char path[] = "/tmp/qd_test_conf_XXXXXX";
    int fd = mkstemp(path);
    const char *text = "# comment\nlisten = 0.0.0.0:9000\nworkers=3\nmax_upload_bytes = 2G\n"
                       "cancel_grace_s = 1.5\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "write");
    close(fd);
    qd_err err;
    CHECK(srv_config_load(&c, path, &err) == QD_OK, "load: %s", err.msg);
    CHECK(!strcmp(c.listen, "0.0.0.0:9000") && c.workers == 3 &&
          c.max_upload_bytes == (size_t)2 << 30 && c.cancel_grace_s == 1.5, "values");
    CHECK(srv_config_set(&c, "workers", "0", &err) == QD_ERR, "0 workers accepted");
    CHECK(srv_config_set(&c, "wrokers", "2", &err) == QD_ERR, "unknown key accepted");
    CHECK(srv_config_set(&c, "max_upload_bytes", "12Q", &err) == QD_ERR, "bad size accepted");
    unlink(path);
}

static void test_tokens(void) {
    char path[] = "/tmp/qd_test_tok_XXXXXX";
    int fd = mkstemp(path);
    char hr[65], ha[65], line[256];
    qd_sha256_hex("reader-token", 12, hr);
    qd_sha256_hex("admin-token", 11, ha);
    int n = snprintf(line, sizeof line, "# tokens\nsha256:%s read ci\nsha256:%s admin ops\n", hr, ha);
    CHECK(write(fd, line, (size_t)n) == n, "write");
    close(fd);
    qd_err err;
    srv_auth *a = srv_auth_load(path, &err);
    CHECK(a != NULL, "load: %s", err.msg);
    CHECK(srv_auth_check(a, "reader-token") == SRV_ROLE_READ, "read role");
    CHECK(srv_auth_check(a, "admin-token") == SRV_ROLE_ADMIN, "admin role");
    CHECK(srv_auth_check(a, "admin-token2") == SRV_ROLE_NONE, "unknown token");
    CHECK(srv_auth_check(a, "") == SRV_ROLE_NONE, "empty token");
    srv_auth_free(a);
    /* group- or world-writable: refused, naming the file and its mode */
    static const struct { mode_t mode; const char *want; } modes[] = {
        {0666, "mode 0666"}, {0620, "mode 0620"}, {0602, "mode 0602"}};
    for (int i = 0; i < 3; i++) {
        CHECK(chmod(path, modes[i].mode) == 0, "chmod");
        a = srv_auth_load(path, &err);
        CHECK(a == NULL, "mode %o accepted", (unsigned)modes[i].mode);
        srv_auth_free(a);
        CHECK(a == NULL && strstr(err.msg, path) && strstr(err.msg, modes[i].want), "message: %s", err.msg);
    }
    CHECK(chmod(path, 0644) == 0, "chmod");
    a = srv_auth_load(path, &err);
    CHECK(a != NULL, "mode 0644 refused: %s", err.msg);
    srv_auth_free(a);
    fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(write(fd, "plaintoken admin\n", 17) == 17, "write");
    close(fd);
    CHECK(srv_auth_load(path, &err) == NULL, "a plain-text token line was accepted");
    unlink(path);
}

/* The routes the server registers and the paths/methods of api/openapi.yaml: the same set. */
static void test_routes_match_openapi(void) {
    size_t len;
    qd_err err;
    char *y = qd_read_file("api/openapi.yaml", 1 << 20, &len, &err);
    CHECK(y != NULL, "%s", err.msg);
    if (!y) return;
    /* the embedded copy is the file */
    size_t elen;
    const char *emb = srv_openapi_text(&elen);
    CHECK(elen == len && !memcmp(emb, y, len), "the binary embeds a stale openapi.yaml");
    /* the contract's version is the release's */
    char want[64];
    snprintf(want, sizeof want, "\n  version: \"%s\"\n", QD_VERSION);
    CHECK(strstr(y, want) != NULL, "openapi.yaml's info.version is not QD_VERSION %s", QD_VERSION);
    char spec_ops[64][128], head_ops[16][128];
    int n_ops = 0, n_heads = 0;
    bool in_paths = false;
    char cur[96] = "";
    for (char *line = strtok(y, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "paths:", 6)) {
            in_paths = true;
            continue;
        }
        if (in_paths && line[0] != ' ') break;
        if (!in_paths) continue;
        if (line[0] == ' ' && line[1] == ' ' && line[2] == '/') {
            snprintf(cur, sizeof cur, "%s", line + 2);
            char *colon = strrchr(cur, ':');
            if (colon) *colon = 0;
        } else if (!strncmp(line, "    ", 4) && line[4] != ' ') {
            /* HEAD is not a route of its own: the server answers it for every GET route, so a
             * documented head: must sit beside a routed get: (checked below) */
            if (!strncmp(line + 4, "head:", 5) && n_heads < 16) {
                snprintf(head_ops[n_heads++], sizeof head_ops[0], "GET %s", cur);
                continue;
            }
            const char *methods[] = {"get:", "post:", "put:", "delete:", "patch:"};
            for (int m = 0; m < 5; m++)
                if (!strncmp(line + 4, methods[m], strlen(methods[m])) && n_ops < 64) {
                    char up[8];
                    size_t k;
                    for (k = 0; methods[m][k] != ':'; k++) up[k] = (char)(methods[m][k] - 32);
                    up[k] = 0;
                    snprintf(spec_ops[n_ops++], sizeof spec_ops[0], "%s %s", up, cur);
                }
        }
    }
    free(y);
    int nr = srv_route_count();
    CHECK(nr == n_ops, "server has %d routes, openapi.yaml %d operations", nr, n_ops);
    for (int i = 0; i < nr; i++) {
        char op[128];
        snprintf(op, sizeof op, "%s %s", srv_route_method(i), srv_route_path(i));
        bool found = false;
        for (int k = 0; k < n_ops; k++) found |= !strcmp(op, spec_ops[k]);
        CHECK(found, "route %s is missing from api/openapi.yaml", op);
    }
    for (int k = 0; k < n_ops; k++) {
        bool found = false;
        for (int i = 0; i < nr; i++) {
            char op[128];
            snprintf(op, sizeof op, "%s %s", srv_route_method(i), srv_route_path(i));
            found |= !strcmp(op, spec_ops[k]);
        }
        CHECK(found, "openapi.yaml documents %s, which the server does not route", spec_ops[k]);
    }
    for (int k = 0; k < n_heads; k++) {
        bool found = false;
        for (int i = 0; i < nr; i++) {
            char op[128];
            snprintf(op, sizeof op, "%s %s", srv_route_method(i), srv_route_path(i));
            found |= !strcmp(op, head_ops[k]);
        }
        CHECK(found, "openapi.yaml documents HEAD for %s, which has no GET route", head_ops[k] + 4);
    }
    CHECK(n_heads >= 1, "HEAD /v1/blobs/{id} is not documented");
}

/* The job result's headline is the report's eval, size, gates and compute, nothing else. */
static void test_report_headline(void) {
    cJSON *rep = cJSON_Parse("{\"version\":\"quantd-report/1\",\"eval\":{\"fp32\":{\"ppl\":5}},"
                             "\"size\":{\"ratio\":3.9},\"compute\":{\"wall_seconds\":1},"
                             "\"loss_curve\":[1,2],\"inputs\":{}}");
    cJSON *h = cJSON_CreateObject();
    api_report_headline(rep, h);
    CHECK(cJSON_GetObjectItem(h, "eval") && cJSON_GetObjectItem(h, "size") &&
              cJSON_GetObjectItem(h, "compute"),
          "headline lacks eval, size or compute");
    CHECK(!cJSON_GetObjectItem(h, "gates"), "no gate in the report, none in the headline");
    CHECK(cJSON_GetArraySize(h) == 3, "headline has %d keys, want 3", cJSON_GetArraySize(h));
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(h, "size"), "ratio")) == 3.9,
          "size copied");
    cJSON_AddItemToObject(rep, "gates", cJSON_Parse("{\"max_ppl_increase\":0.02,\"passed\":false}"));
    cJSON *h2 = cJSON_CreateObject();
    api_report_headline(rep, h2);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(h2, "gates"), "passed")),
          "gates copied with their verdict");
    cJSON *h3 = cJSON_CreateObject();
    api_report_headline(NULL, h3);
    CHECK(cJSON_GetArraySize(h3) == 0, "no report, no headline");
    cJSON_Delete(h);
    cJSON_Delete(h2);
    cJSON_Delete(h3);
    cJSON_Delete(rep);
}

int main(void) {
    RUN(test_spec_minimal_defaults);
    RUN(test_spec_full_roundtrip);
    RUN(test_spec_bad_fields);
    RUN(test_spec_model_dir);
    RUN(test_utf8);
    RUN(test_blob_ids);
    RUN(test_states);
    RUN(test_job_roundtrip);
    RUN(test_events);
    RUN(test_limits_table);
    RUN(test_config);
    RUN(test_tokens);
    RUN(test_routes_match_openapi);
    RUN(test_report_headline);
    return CHECK_DONE();
}
