/* Validation at the door (check.h): the server's side writes the spec and where its blobs lie
 * into a scratch directory and runs `quantd work --check DIR`; the child lays the inputs out
 * there under the spec's field names and runs the pipeline's own checks (qd_quantize_check)
 * from inside it, so that a message reads "model/config.json: rope_scaling: ..." and never
 * names DATA/blobs/sha256/<hash>. */
#include "worker/check.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/fs.h"
#include "quant/quantize.h"
#include "worker/dispatch.h"

#define CHECK_INPUT_MAX (4u << 20)

static void answer(bool ok, const char *field, const char *message) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", ok);
    if (!ok) {
        /* the estimate's refusal is the one check of field "budget" itself */
        cJSON_AddStringToObject(o, "code", field && !strcmp(field, "budget") ? "over_memory_limit"
                                                                             : "unsupported_input");
        cJSON_AddStringToObject(o, "field", field ? field : "");
        cJSON_AddStringToObject(o, "message", message ? message : "");
    }
    char *t = cJSON_PrintUnformatted(o);
    if (t) printf("%s\n", t);
    fflush(stdout);
    free(t);
    cJSON_Delete(o);
}

int wk_check_dir(const char *dir) {
    qd_err err = {{0}};
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/input.json", dir);
    size_t len;
    char *text = qd_read_file(path, CHECK_INPUT_MAX, &len, &err);
    bool read_ok = text != NULL;
    cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    const char *datadir = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "data_dir"));
    const cJSON *pend = cJSON_GetObjectItemCaseSensitive(root, "pending");
    double mem_limit = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(root, "mem_limit"));
    if (!datadir || chdir(dir) != 0) {
        fprintf(stderr, "quantd work --check: %s\n", read_ok ? "input.json: not a check input" : err.msg);
        cJSON_Delete(root);
        return 2;
    }
    api_spec spec;
    api_field_err fe;
    if (api_spec_from_json(cJSON_GetObjectItemCaseSensitive(root, "spec"), &spec, &fe)) {
        answer(false, fe.field, fe.message);
        cJSON_Delete(root);
        return 1;
    }
    int np = cJSON_GetArraySize(pend);
    wk_pending *p = np > 0 ? calloc((size_t)np, sizeof *p) : NULL;
    int k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, pend) {
        if (p && k < np && cJSON_IsString(it)) p[k].id = it->string, p[k++].path = it->valuestring;
    }
    /* the inputs under the names of their fields, so that messages name them as the user does */
    wk_inputs in;
    int rc = wk_layout_inputs(datadir, &spec, p, k, &in, &err);
    free(p);
    cJSON_Delete(root);
    if (rc != QD_OK) {
        fprintf(stderr, "quantd work --check: %s\n", err.msg);
        return 2;
    }
    qd_quant_opts o;
    wk_spec_opts(&spec, &o);
    o.model_path = in.model;
    o.calib_path = in.calibration;
    o.eval_path = in.eval;
    o.tokenizer_path = in.tokenizer;
    o.out_dir = "artifacts"; /* never written: the check reads only */
    if (mem_limit > 0) o.max_mem = (size_t)mem_limit;
    char field[QD_CHECK_FIELD];
    if (qd_quantize_check(&o, field, &err)) {
        answer(false, field, err.msg);
        return 1;
    }
    answer(true, NULL, NULL);
    return 0;
}

int wk_check_spec(const char *exe, const char *datadir, const api_spec *spec,
                  const wk_pending *pending, int n_pending, size_t mem_limit, double timeout_s,
                  api_field_err *fe, qd_err *err) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/jobs/.tmp/check-XXXXXX", datadir) >= (int)sizeof dir)
        return qd_errf(err, "%s: path too long", __func__);
    if (!mkdtemp(dir)) return qd_errf(err, "%s: %s: %s", __func__, dir, strerror(errno));
    cJSON *in = cJSON_CreateObject();
    cJSON_AddStringToObject(in, "data_dir", datadir);
    cJSON_AddNumberToObject(in, "mem_limit", (double)mem_limit);
    cJSON_AddItemToObject(in, "spec", api_spec_to_json(spec));
    cJSON *pj = cJSON_AddObjectToObject(in, "pending");
    for (int i = 0; i < n_pending; i++) cJSON_AddStringToObject(pj, pending[i].id, pending[i].path);
    char *text = cJSON_PrintUnformatted(in);
    cJSON_Delete(in);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/input.json", dir);
    int rc = text ? qd_write_text_atomic(path, text, err) : qd_errf(err, "%s: out of memory", __func__);
    free(text);
    char out[4096], errb[1024];
    int st = -1;
    if (rc == QD_OK) {
        char *argv[] = {(char *)exe, "work", "--check", dir, NULL};
        st = wk_run_cmd(argv, timeout_s, out, sizeof out, errb, sizeof errb);
    }
    qd_rm_rf(dir);
    if (rc != QD_OK) return QD_ERR;
    if (st < 0) return qd_errf(err, "the input check did not finish: %s", errb);
    /* the answer is the last line of stdout */
    char *line = out, *nl;
    while ((nl = strchr(line, '\n')) && nl[1]) line = nl + 1;
    cJSON *a = cJSON_Parse(line);
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(a, "ok");
    int ans;
    if (cJSON_IsTrue(ok) && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        ans = 0;
    } else if (cJSON_IsFalse(ok) && WIFEXITED(st) && WEXITSTATUS(st) == 1) {
        memset(fe, 0, sizeof *fe);
        const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "code"));
        snprintf(fe->code, sizeof fe->code, "%s", code ? code : "unsupported_input");
        const char *f = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "field"));
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "message"));
        snprintf(fe->field, sizeof fe->field, "%s", f ? f : "");
        snprintf(fe->message, sizeof fe->message, "%s", m ? m : "");
        ans = 1;
    } else {
        size_t n = strlen(errb);
        while (n && (errb[n - 1] == '\n' || errb[n - 1] == ' ')) errb[--n] = 0;
        const char *last = strrchr(errb, '\n');
        ans = qd_errf(err, "the input check %s %d%s%s",
                      WIFSIGNALED(st) ? "was killed by signal" : "exited with status",
                      WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), errb[0] ? ": " : "",
                      last ? last + 1 : errb);
    }
    cJSON_Delete(a);
    return ans;
}
