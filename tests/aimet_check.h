/* Checks an AIMET encodings.json (1.0.0 or 0.6.1) against the integer model it was written
 * from and the Hugging Face export it is meant for (fp-folded/model.safetensors):
 *  - structure: version, the two sections (lists in 1.0.0, objects keyed by name in 0.6.1),
 *    every field with its type (name, dtype, enc_type, bw, is_sym, scale[], offset[] /
 *    bitwidth, dtype, is_symmetric, min, max, offset, scale);
 *  - one entry per activation site and per parameter, each param name a tensor of the export,
 *    per-channel lengths equal to the tensor's rows, PER_CHANNEL exactly when more than one;
 *  - values: scale equals the model's (to cJSON's 15 digits), offset = -(unsigned zero point) = -(stored zero point +
 *    2^(bw-1)) (AIMET's sign convention), an integer in [-(2^bw - 1), 0], -2^(bw-1) when
 *    symmetric; in 0.6.1 min = offset*scale and max = (2^bw - 1 + offset)*scale.
 * Failures go through CHECK (tests/check.h). */
#ifndef QD_AIMET_CHECK_H
#define QD_AIMET_CHECK_H

#include <cjson/cJSON.h>
#include <math.h>

#include "quant/rt/int_model.h"
#include "quant/io/safetensors.h"
#include "tests/check.h"
#include "base/fs.h"

typedef struct aimet_want {
    char name[128];
    int bits, sym, n;
    const float *scale;
    const int32_t *zp;     /* stored form */
    int seen;
} aimet_want;

/* Every encoding the model should export, in no particular order; *n set. Caller frees. */
static aimet_want *aimet_expected(const qd_qint *q, int *n_act, int *n_par) {
    int nl = q->cfg.n_layers;
    int cap = nl * (QD_AQ_PER_LAYER + QD_W_PER_LAYER + 2) + QD_AQG_COUNT + 3, k = 0;
    aimet_want *w = calloc((size_t)cap, sizeof *w);
    for (int l = -1; l < nl; l++)
        for (int s = 0; s < (l < 0 ? QD_AQG_COUNT : QD_AQ_PER_LAYER); s++) {
            const qd_qenc *a = &q->act[qd_act_index(nl, l, s)];
            if (l < 0) snprintf(w[k].name, sizeof w[k].name, "%s", qd_aqg_name(s));
            else snprintf(w[k].name, sizeof w[k].name, "model.layers.%d.%s", l, qd_aq_site_name(s));
            w[k].bits = a->bits, w[k].n = 1, w[k].scale = &a->scale, w[k].zp = &a->zero_point;
            k++;
        }
    *n_act = k;
#define LIN(W, ...)                                                                    \
    do {                                                                               \
        snprintf(w[k].name, sizeof w[k].name, __VA_ARGS__);                            \
        w[k].bits = (W)->bits, w[k].sym = (W)->sym, w[k].n = (W)->per_channel ? (W)->rows : 1; \
        w[k].scale = (W)->scale, w[k].zp = (W)->zero_point;                            \
        k++;                                                                           \
    } while (0)
#define VEC(V, ...)                                                                    \
    do {                                                                               \
        snprintf(w[k].name, sizeof w[k].name, __VA_ARGS__);                            \
        w[k].bits = 16, w[k].n = 1, w[k].scale = &(V)->scale, w[k].zp = &(V)->zero_point; \
        k++;                                                                           \
    } while (0)
    for (int l = 0; l < nl; l++) {
        for (int x = 0; x < QD_W_PER_LAYER; x++)
            LIN(&q->L[l].w[x], "model.layers.%d.%s.weight", l, qd_wsite_name(x));
        VEC(&q->L[l].attn_norm, "model.layers.%d.input_layernorm.weight", l);
        VEC(&q->L[l].ffn_norm, "model.layers.%d.post_attention_layernorm.weight", l);
    }
    LIN(&q->emb, "model.embed_tokens.weight");
    if (q->head.q != q->emb.q) LIN(&q->head, "lm_head.weight");
    VEC(&q->final_norm, "model.norm.weight");
#undef LIN
#undef VEC
    *n_par = k - *n_act;
    return w;
}

static const cJSON *aj(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

/* One entry's figures, read from either format; 0 when a field is missing or mistyped. */
static int aimet_entry(const cJSON *it, int v1, const char **name, int *bw, int *sym, int *n,
                       double *scale, double *offset, int cap) {
    if (v1) {
        const cJSON *nm = aj(it, "name"), *dt = aj(it, "dtype"), *et = aj(it, "enc_type"),
                    *b = aj(it, "bw"), *s = aj(it, "is_sym"), *sc = aj(it, "scale"),
                    *of = aj(it, "offset");
        CHECK(cJSON_IsString(nm) && cJSON_IsString(dt) && cJSON_IsString(et) && cJSON_IsNumber(b) &&
              cJSON_IsBool(s) && cJSON_IsArray(sc) && cJSON_IsArray(of), "1.0.0 entry fields");
        if (check_case_failed) return 0;
        *name = nm->valuestring, *bw = b->valueint, *sym = cJSON_IsTrue(s);
        *n = cJSON_GetArraySize(sc);
        CHECK(*n >= 1 && *n <= cap && *n == cJSON_GetArraySize(of), "%s: %d scales, %d offsets",
              *name, *n, cJSON_GetArraySize(of));
        CHECK(!strcmp(dt->valuestring, "INT"), "%s: dtype %s", *name, dt->valuestring);
        CHECK(!strcmp(et->valuestring, *n > 1 ? "PER_CHANNEL" : "PER_TENSOR"), "%s: enc_type %s",
              *name, et->valuestring);
        if (check_case_failed) return 0;
        for (int i = 0; i < *n; i++) {
            const cJSON *a = cJSON_GetArrayItem(sc, i), *o = cJSON_GetArrayItem(of, i);
            CHECK(cJSON_IsNumber(a) && cJSON_IsNumber(o), "%s[%d]: not numbers", *name, i);
            if (check_case_failed) return 0;
            scale[i] = a->valuedouble, offset[i] = o->valuedouble;
        }
        return 1;
    }
    *name = it->string;
    *n = cJSON_GetArraySize(it);
    CHECK(cJSON_IsArray(it) && *n >= 1 && *n <= cap, "%s: 0.6.1 entry is not a list", *name);
    if (check_case_failed) return 0;
    for (int i = 0; i < *n; i++) {
        const cJSON *e = cJSON_GetArrayItem(it, i);
        const cJSON *b = aj(e, "bitwidth"), *s = aj(e, "is_symmetric"), *mn = aj(e, "min"),
                    *mx = aj(e, "max"), *of = aj(e, "offset"), *sc = aj(e, "scale"),
                    *dt = aj(e, "dtype");
        CHECK(cJSON_IsNumber(b) && cJSON_IsString(s) && cJSON_IsNumber(mn) && cJSON_IsNumber(mx) &&
              cJSON_IsNumber(of) && cJSON_IsNumber(sc) && cJSON_IsString(dt) &&
              !strcmp(dt->valuestring, "int"), "%s[%d]: 0.6.1 fields", *name, i);
        if (check_case_failed) return 0;
        CHECK(!strcmp(s->valuestring, "True") || !strcmp(s->valuestring, "False"),
              "%s: is_symmetric %s", *name, s->valuestring);
        *bw = b->valueint, *sym = !strcmp(s->valuestring, "True");
        scale[i] = sc->valuedouble, offset[i] = of->valuedouble;
        double Q = ldexp(1, *bw) - 1, lo = offset[i] * scale[i], hi = (Q + offset[i]) * scale[i];
        /* tolerance: the writer computes these in double from the same float scale */
        CHECK(fabs(mn->valuedouble - lo) <= 1e-9 * fabs(lo) + 1e-30 &&
              fabs(mx->valuedouble - hi) <= 1e-9 * fabs(hi) + 1e-30,
              "%s[%d]: min/max %g/%g vs offset*scale %g/%g", *name, i, mn->valuedouble,
              mx->valuedouble, lo, hi);
    }
    return !check_case_failed;
}

/* The whole check (see the file comment). */
static void aimet_check_file(const char *path, const char *ver, const qd_qint *q,
                             const qd_st_file *hf) {
    qd_err err;
    size_t len;
    char *txt = qd_read_file(path, 1 << 27, &len, &err);
    cJSON *root = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    CHECK(root != NULL, "%s: missing or not JSON", path);
    if (!root) return;
    int v1 = !strcmp(ver, "1.0.0");
    const cJSON *vj = aj(root, "version");
    CHECK(cJSON_IsString(vj) && !strcmp(vj->valuestring, ver), "version");
    int n_act, n_par;
    aimet_want *want = aimet_expected(q, &n_act, &n_par);
    enum { CAP = 1 << 16 };
    double *scale = malloc(sizeof(double) * CAP), *offset = malloc(sizeof(double) * CAP);
    for (int which = 0; which < 2 && !check_case_failed; which++) {
        const cJSON *sec = aj(root, which ? "param_encodings" : "activation_encodings");
        CHECK(v1 ? cJSON_IsArray(sec) : cJSON_IsObject(sec), "%s: section type",
              which ? "param_encodings" : "activation_encodings");
        int count = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, sec) {
            const char *name = NULL;
            int bw = 0, sym = 0, n = 0;
            if (!aimet_entry(it, v1, &name, &bw, &sym, &n, scale, offset, CAP)) break;
            count++;
            aimet_want *w = NULL;
            int lo = which ? n_act : 0, hi = which ? n_act + n_par : n_act;
            for (int k = lo; k < hi && !w; k++)
                if (!strcmp(want[k].name, name)) w = &want[k];
            CHECK(w != NULL, "%s: no such %s", name, which ? "parameter" : "activation site");
            if (!w) break;
            CHECK(!w->seen, "%s: listed twice", name);
            w->seen = 1;
            CHECK(bw == w->bits && sym == w->sym && n == w->n, "%s: bw %d sym %d n %d, want %d %d %d",
                  name, bw, sym, n, w->bits, w->sym, w->n);
            if (check_case_failed) break;
            double full = ldexp(1, bw) - 1;
            for (int i = 0; i < n; i++) {
                double want_off = -((double)w->zp[i] + ldexp(1, bw - 1));
                /* cJSON writes 15 significant digits when they read back within its epsilon */
                CHECK(fabs(scale[i] - w->scale[i]) <= 1e-12 * w->scale[i] && offset[i] == want_off,
                      "%s[%d]: scale %.9g offset %g, want %.9g %g", name, i, scale[i], offset[i],
                      (double)w->scale[i], want_off);
                CHECK(scale[i] > 0 && offset[i] == floor(offset[i]) && offset[i] <= 0 &&
                      offset[i] >= -full, "%s[%d]: scale %g offset %g", name, i, scale[i], offset[i]);
                if (sym) CHECK(offset[i] == -ldexp(1, bw - 1), "%s: symmetric offset %g", name, offset[i]);
                if (check_case_failed) break;
            }
            if (which) {
                const qd_st_tensor *t = qd_st_find(hf, name);
                CHECK(t != NULL, "param %s is not a tensor of fp-folded/", name);
                if (t) CHECK(n == 1 || (t->ndim == 2 && n == t->shape[0]),
                             "%s: %d channels, the tensor has %lld rows", name, n, (long long)t->shape[0]);
            }
            if (check_case_failed) break;
        }
        CHECK(count == (which ? n_par : n_act), "%s: %d entries, want %d",
              which ? "param_encodings" : "activation_encodings", count, which ? n_par : n_act);
    }
    free(scale), free(offset), free(want);
    cJSON_Delete(root);
}

#endif
