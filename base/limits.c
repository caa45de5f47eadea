/* The table of limits and enumerations (limits.h). */
#include "base/limits.h"

#include <string.h>

static const char *const method_names[QD_METHOD_COUNT] = {"rtn", "smoothquant", "omniquant",
                                                          "mobilequant"};

const char *qd_method_name(qd_method m) {
    return (unsigned)m < QD_METHOD_COUNT ? method_names[m] : "?";
}

int qd_method_parse(const char *name, qd_method *out, qd_err *err) {
    for (int i = 0; name && i < QD_METHOD_COUNT; i++)
        if (!strcmp(name, method_names[i])) {
            *out = (qd_method)i;
            return QD_OK;
        }
    return qd_errf(err, "method: unknown '%.64s' (%s)", name ? name : "", QD_METHOD_NAMES);
}

bool qd_wbits_ok(int bits) { return bits == 4 || bits == 8; }

bool qd_abits_ok(int bits) { return bits == 4 || bits == 8 || bits == 16; }

static const char *const aclass_names[QD_N_ACLASS] = {
    "res", "norm", "qkv", "qk_in", "score", "prob", "pv", "oproj", "gateup", "silu", "down_in",
    "down_out", "head"};

const char *qd_aclass_name(int c) { return c >= 0 && c < QD_N_ACLASS ? aclass_names[c] : NULL; }

int qd_aclass_parse(const char *name) {
    for (int i = 0; name && i < QD_N_ACLASS; i++)
        if (!strcmp(name, aclass_names[i])) return i;
    return -1;
}

bool qd_enc_version_ok(const char *v) { return v && (!strcmp(v, "1.0.0") || !strcmp(v, "0.6.1")); }
