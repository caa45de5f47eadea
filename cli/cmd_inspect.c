/* quantd inspect: what a file quantd reads or writes holds, from its headers where that is
 * enough. Checkpoints (GGUF, a Hugging Face directory or its files, llama2.c): architecture,
 * every tensor's dtype, shape and bytes, the parameter count, the tokenizer it carries or that
 * lies beside it; a GGUF also every metadata key and value, arrays summarised, as gguf-dump
 * prints them. Tokenizers (tokenizer.json, tokenizer.bin): kind and size. quantd's own
 * artifacts: model.qint.safetensors (format, bit map, every activation encoding, source hash,
 * sizes) and encodings.json (version, counts, bit widths). --json prints the same as one
 * object whose "kind" says which of these it is. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "base/fs.h"
#include "base/str.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "quant/io/gguf.h"
#include "quant/io/load.h"
#include "quant/io/safetensors.h"
#include "quant/model.h"
#include "quant/rt/int_model.h"
#include "quant/sim/fakequant.h"
#include "quant/text/resolve.h"
#include "quant/text/tokenizer.h"
#include "quant/vocab.h"

static const cli_opt opts[] = {{"json", 'j', NULL, "one JSON object instead of text"}, {0}};

#define ARRAY_HEAD 8       /* elements of a GGUF array shown */
#define JSON_FILE_MAX (64u << 20)

/* ---- checkpoints ---- */

static cJSON *model_json(const qd_model *m) {
    const qd_config *c = &m->cfg;
    size_t bytes = 0;
    for (int i = 0; i < m->n_tinfo; i++) bytes += m->tinfo[i].bytes;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "format", m->format);
    qd_config_json_shape(o, c);
    cJSON_AddStringToObject(o, "rope_scaling", qd_rope_scaling_name(c->rope_scaling));
    cJSON_AddBoolToObject(o, "tied_embeddings", c->tied_embeddings);
    cJSON_AddBoolToObject(o, "qkv_bias", c->qkv_bias);
    cJSON_AddStringToObject(o, "norm", c->norm == QD_NORM_LAYER ? "layernorm" : "rmsnorm");
    cJSON_AddStringToObject(o, "activation", c->act == QD_ACT_GELU_TANH ? "gelu_tanh" : "silu");
    cJSON_AddNumberToObject(o, "rotary_dims", qd_rot_dim(c));
    cJSON_AddNumberToObject(o, "emb_scale", qd_emb_scale(c));
    cJSON_AddNumberToObject(o, "bos_id", c->bos_id);
    cJSON_AddNumberToObject(o, "eos_id", c->eos_id);
    cJSON_AddNumberToObject(o, "params", (double)qd_model_n_params(m));
    cJSON_AddNumberToObject(o, "tensor_bytes", (double)bytes);
    cJSON *ts = cJSON_AddArrayToObject(o, "tensors");
    for (int i = 0; i < m->n_tinfo; i++) {
        const qd_tensor_info *t = &m->tinfo[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "name", t->name);
        cJSON_AddStringToObject(x, "dtype", t->dtype);
        cJSON *sh = cJSON_AddArrayToObject(x, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddNumberToObject(x, "bytes", (double)t->bytes);
        cJSON_AddItemToArray(ts, x);
    }
    return o;
}

static void model_text(const char *path, const qd_model *m) {
    const qd_config *c = &m->cfg;
    size_t bytes = 0, np = qd_model_n_params(m);
    for (int i = 0; i < m->n_tinfo; i++) bytes += m->tinfo[i].bytes;
    printf("%s: %s (%s)\n", path, c->arch, m->format);
    printf("  dim %d, hidden %d, layers %d, heads %d, kv heads %d, head_dim %d\n", c->dim,
           c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim);
    printf("  vocab %d, context %d, %s eps %g, rope theta %g (scaling %s), tied embeddings %s, "
           "qkv bias %s\n", c->vocab_size, c->max_seq_len,
           c->norm == QD_NORM_LAYER ? "layernorm" : "rms", c->norm_eps, c->rope_theta,
           qd_rope_scaling_name(c->rope_scaling), c->tied_embeddings ? "yes" : "no",
           c->qkv_bias ? "yes" : "no");
    if (c->family != QD_FAMILY_LLAMA)
        printf("  norm %s, activation %s, rotary dims %d of %d, embedding scale %.9g\n",
               c->norm == QD_NORM_LAYER ? "layernorm" : "rmsnorm",
               c->act == QD_ACT_GELU_TANH ? "gelu_tanh" : "silu", qd_rot_dim(c), c->head_dim,
               (double)qd_emb_scale(c));
    printf("  parameters %zu (%.3f M), tensor bytes %zu\n", np, np / 1e6, bytes);
    printf("  %-48s %-5s %-16s %s\n", "tensor", "dtype", "shape", "bytes");
    for (int i = 0; i < m->n_tinfo; i++) {
        const qd_tensor_info *t = &m->tinfo[i];
        char shape[64] = "";
        size_t o = 0;
        for (int d = 0; d < t->ndim && o < sizeof shape; d++)
            o += snprintf(shape + o, sizeof shape - o, "%s%lld", d ? "x" : "", (long long)t->shape[d]);
        printf("  %-48s %-5s %-16s %zu\n", t->name, t->dtype, shape, t->bytes);
    }
}

static const char *const GGUF_TYPE[QD_GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array",
    "uint64", "int64", "float64"};

static const char *gguf_type(uint32_t t) { return t < QD_GGUF_TYPE_COUNT ? GGUF_TYPE[t] : "?"; }

/* Element i of a numeric GGUF array as a JSON number (bool as true/false). */
static cJSON *gguf_elem(const qd_gguf_kv *kv, uint64_t i) {
    const uint8_t *p = kv->arr;
    switch (kv->arr_type) {
    case QD_GGUF_UINT8: return cJSON_CreateNumber(p[i]);
    case QD_GGUF_INT8: return cJSON_CreateNumber((int8_t)p[i]);
    case QD_GGUF_BOOL: return cJSON_CreateBool(p[i] != 0);
    case QD_GGUF_UINT16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return cJSON_CreateNumber(v); }
    case QD_GGUF_INT16: { int16_t v; memcpy(&v, p + 2 * i, 2); return cJSON_CreateNumber(v); }
    case QD_GGUF_UINT32: { uint32_t v; memcpy(&v, p + 4 * i, 4); return cJSON_CreateNumber(v); }
    case QD_GGUF_INT32: { int32_t v; memcpy(&v, p + 4 * i, 4); return cJSON_CreateNumber(v); }
    case QD_GGUF_FLOAT32: { float v; memcpy(&v, p + 4 * i, 4); return cJSON_CreateNumber(v); }
    case QD_GGUF_UINT64: { uint64_t v; memcpy(&v, p + 8 * i, 8); return cJSON_CreateNumber((double)v); }
    case QD_GGUF_INT64: { int64_t v; memcpy(&v, p + 8 * i, 8); return cJSON_CreateNumber((double)v); }
    case QD_GGUF_FLOAT64: { double v; memcpy(&v, p + 8 * i, 8); return cJSON_CreateNumber(v); }
    }
    return cJSON_CreateNull(); /* nested arrays: only their count is summarised */
}

/* Every metadata key: {key, type, value}; arrays as {type: "array", element_type, n, head}. */
static cJSON *gguf_meta_json(const qd_gguf *g) {
    cJSON *a = cJSON_CreateArray();
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const qd_gguf_kv *kv = &g->kv[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "key", kv->key);
        cJSON_AddStringToObject(x, "type", gguf_type(kv->type));
        if (kv->type == QD_GGUF_STRING) {
            cJSON_AddStringToObject(x, "value", kv->str);
        } else if (kv->type == QD_GGUF_ARRAY) {
            cJSON_AddStringToObject(x, "element_type", gguf_type(kv->arr_type));
            cJSON_AddNumberToObject(x, "n", (double)kv->arr_n);
            cJSON *h = cJSON_AddArrayToObject(x, "head");
            for (uint64_t k = 0; k < kv->arr_n && k < ARRAY_HEAD; k++) {
                if (kv->arr_type == QD_GGUF_STRING) {
                    char *s = malloc(kv->arr_str_len[k] + 1);
                    if (!s) break;
                    memcpy(s, kv->arr_str[k], kv->arr_str_len[k]);
                    s[kv->arr_str_len[k]] = 0;
                    cJSON_AddItemToArray(h, cJSON_CreateString(s));
                    free(s);
                } else {
                    cJSON_AddItemToArray(h, gguf_elem(kv, k));
                }
            }
        } else if (kv->type == QD_GGUF_BOOL) {
            cJSON_AddBoolToObject(x, "value", kv->u64 != 0);
        } else if (kv->type == QD_GGUF_FLOAT32 || kv->type == QD_GGUF_FLOAT64) {
            cJSON_AddNumberToObject(x, "value", kv->f64);
        } else if (kv->type == QD_GGUF_UINT64 || kv->type == QD_GGUF_UINT32 ||
                   kv->type == QD_GGUF_UINT16 || kv->type == QD_GGUF_UINT8) {
            cJSON_AddNumberToObject(x, "value", (double)kv->u64);
        } else {
            cJSON_AddNumberToObject(x, "value", (double)kv->i64);
        }
        cJSON_AddItemToArray(a, x);
    }
    return a;
}

static cJSON *vocab_json(const qd_vocab *v) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", v->kind == QD_VOCAB_BPE ? "byte-level BPE (gpt2)"
                                                                : "SentencePiece-style BPE (llama)");
    cJSON_AddNumberToObject(o, "size", v->n);
    if (v->kind == QD_VOCAB_BPE) {
        cJSON_AddStringToObject(o, "pre", v->pre);
        cJSON_AddNumberToObject(o, "merges", v->n_merges);
    }
    cJSON_AddNumberToObject(o, "bos_id", v->bos_id);
    cJSON_AddNumberToObject(o, "eos_id", v->eos_id);
    cJSON_AddNumberToObject(o, "unk_id", v->unk_id);
    return o;
}

/* ---- tokenizer files ---- */

static const char *json_type(const cJSON *o, const char *k) {
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, k), "type"));
}

/* tokenizer.json or tokenizer.bin: what it is (from the file), and that quantd runs it (it is
 * loaded: an unsupported form is an error naming the field). */
static cJSON *tokenizer_json(const char *path, qd_err *err) {
    qd_tokenizer *t = qd_tok_load(path, err);
    if (!t) return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", "tokenizer");
    if (qd_has_ext(path, ".json")) {
        size_t len;
        char *text = qd_read_file(path, JSON_FILE_MAX, &len, err);
        cJSON *j = text ? cJSON_ParseWithLength(text, len) : NULL;
        free(text);
        const char *mt = json_type(j, "model");
        cJSON_AddStringToObject(o, "format", "tokenizer.json");
        cJSON_AddStringToObject(o, "model", mt ? mt : "BPE");
        const char *pre = json_type(j, "pre_tokenizer"), *norm = json_type(j, "normalizer"),
                   *dec = json_type(j, "decoder");
        if (pre) cJSON_AddStringToObject(o, "pre_tokenizer", pre);
        else cJSON_AddNullToObject(o, "pre_tokenizer");
        if (norm) cJSON_AddStringToObject(o, "normalizer", norm);
        else cJSON_AddNullToObject(o, "normalizer");
        if (dec) cJSON_AddStringToObject(o, "decoder", dec);
        cJSON_AddNumberToObject(o, "added_tokens",
                                cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "added_tokens")));
        cJSON_AddNumberToObject(o, "merges", cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(
                                                 cJSON_GetObjectItemCaseSensitive(j, "model"), "merges")));
        cJSON_Delete(j);
    } else {
        cJSON_AddStringToObject(o, "format", "llama2.c tokenizer.bin");
        cJSON_AddStringToObject(o, "model", "SentencePiece-style BPE");
    }
    cJSON_AddNumberToObject(o, "size", qd_tok_vocab_size(t));
    cJSON_AddNumberToObject(o, "bos_id", qd_tok_bos(t));
    cJSON_AddNumberToObject(o, "eos_id", qd_tok_eos(t));
    cJSON_AddBoolToObject(o, "adds_bos", qd_tok_add_bos(t));
    qd_tok_free(t);
    return o;
}

/* ---- quantd's artifacts ---- */

static cJSON *qint_json(const char *path, const qd_st_file *f, qd_err *err) {
    qd_qint *q = qd_qint_load(path, err);
    if (!q) return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", "qint");
    cJSON *meta = cJSON_AddObjectToObject(o, "metadata");
    for (int i = 0; i < f->n_meta; i++) {
        cJSON *v = f->meta[i].value[0] == '{' ? cJSON_Parse(f->meta[i].value) : NULL;
        cJSON_AddItemToObject(meta, f->meta[i].key, v ? v : cJSON_CreateString(f->meta[i].value));
    }
    cJSON_AddStringToObject(o, "method", q->method);
    cJSON_AddStringToObject(o, "source_sha256", q->source_sha256);
    cJSON_AddNumberToObject(o, "wbits", q->wbits);
    cJSON_AddNumberToObject(o, "head_bits", q->head_bits);
    size_t nw = 0, nb = 0;
    qd_qint_weight_bits(q, &nw, &nb);
    cJSON *sz = cJSON_AddObjectToObject(o, "size");
    cJSON_AddNumberToObject(sz, "file_bytes", (double)f->size);
    cJSON_AddNumberToObject(sz, "payload_bytes", (double)qd_qint_bytes(q));
    cJSON_AddNumberToObject(sz, "weights", (double)nw);
    cJSON_AddNumberToObject(sz, "weight_bits_per_weight", nw ? (double)nb / (double)nw : 0);
    cJSON_AddNumberToObject(sz, "tensors", f->n_tensors);
    int nl = q->cfg.n_layers;
    cJSON *acts = cJSON_AddArrayToObject(o, "activation_encodings");
    for (int l = -1; l < nl; l++) {
        int ns = l < 0 ? QD_AQG_COUNT : QD_AQ_PER_LAYER;
        for (int s = 0; s < ns; s++) {
            const qd_qenc *a = &q->act[qd_act_index(nl, l, s)];
            char name[160];
            if (l < 0) snprintf(name, sizeof name, "%s", qd_aqg_name(s));
            else snprintf(name, sizeof name, "model.layers.%d.%s", l, qd_aq_site_name(s));
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "name", name);
            cJSON_AddNumberToObject(x, "bits", a->bits);
            cJSON_AddNumberToObject(x, "scale", a->scale);
            cJSON_AddNumberToObject(x, "zero_point", a->zero_point);
            cJSON_AddItemToArray(acts, x);
        }
    }
    qd_qint_free(q);
    return o;
}

/* An AIMET encodings.json (1.0.0: arrays of {name, bw, ...}; 0.6.1: objects of name ->
 * [{bitwidth, ...}]): version, how many of each, and their bit widths. */
static int is_encodings(const cJSON *j) {
    return cJSON_GetObjectItemCaseSensitive(j, "activation_encodings") &&
           cJSON_GetObjectItemCaseSensitive(j, "param_encodings");
}

static void count_bits(const cJSON *list, cJSON *hist, int *n) {
    const cJSON *e;
    *n = 0;
    cJSON_ArrayForEach(e, list) {
        const cJSON *x = cJSON_IsArray(e) ? cJSON_GetArrayItem(e, 0) : e; /* 0.6.1: a list per name */
        const cJSON *bw = cJSON_GetObjectItemCaseSensitive(x, "bw");
        if (!bw) bw = cJSON_GetObjectItemCaseSensitive(x, "bitwidth");
        char k[16];
        snprintf(k, sizeof k, "%d", cJSON_IsNumber(bw) ? (int)bw->valuedouble : 0);
        cJSON *c = cJSON_GetObjectItemCaseSensitive(hist, k);
        if (c) cJSON_SetNumberValue(c, c->valuedouble + 1);
        else cJSON_AddNumberToObject(hist, k, 1);
        (*n)++;
    }
}

static cJSON *encodings_json(const cJSON *j) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", "encodings");
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "version"));
    cJSON_AddStringToObject(o, "version", v ? v : "0.6.1");
    const char *key[2] = {"activation_encodings", "param_encodings"};
    for (int i = 0; i < 2; i++) {
        cJSON *x = cJSON_AddObjectToObject(o, key[i]);
        cJSON *hist = cJSON_CreateObject();
        int n;
        count_bits(cJSON_GetObjectItemCaseSensitive(j, key[i]), hist, &n);
        cJSON_AddNumberToObject(x, "count", n);
        cJSON_AddItemToObject(x, "bits", hist);
    }
    return o;
}

/* ---- text rendering of the JSON forms ---- */

static void print_scalar(const cJSON *v) {
    if (cJSON_IsString(v)) printf("%s", v->valuestring);
    else if (cJSON_IsBool(v)) printf("%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v)) printf("-");
    else if (cJSON_IsNumber(v)) printf("%.10g", v->valuedouble);
}

static bool all_scalars(const cJSON *a) {
    const cJSON *e;
    cJSON_ArrayForEach(e, a) if (cJSON_IsObject(e) || cJSON_IsArray(e)) return false;
    return true;
}

/* key: value lines, nested objects indented, arrays of scalars on one line, arrays of objects
 * one compact line per element. */
static void print_tree(const cJSON *o, int depth) {
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        printf("%*s%s:", 2 * depth + 2, "", it->string ? it->string : "-");
        if (cJSON_IsObject(it)) {
            printf("\n");
            print_tree(it, depth + 1);
        } else if (cJSON_IsArray(it) && all_scalars(it)) {
            const cJSON *e;
            int k = 0;
            cJSON_ArrayForEach(e, it) {
                printf(k++ ? ", " : " ");
                print_scalar(e);
            }
            printf("\n");
        } else if (cJSON_IsArray(it)) {
            printf(" %d\n", cJSON_GetArraySize(it));
            const cJSON *e;
            cJSON_ArrayForEach(e, it) {
                char *t = cJSON_PrintUnformatted(e);
                printf("%*s%s\n", 2 * depth + 4, "", t ? t : "");
                free(t);
            }
        } else {
            printf(" ");
            print_scalar(it);
            printf("\n");
        }
    }
}

/* GGUF metadata as gguf-dump prints it: one line per key, arrays as [N x type] and their head. */
static void gguf_meta_text(const cJSON *meta) {
    printf("  metadata: %d keys\n", cJSON_GetArraySize(meta));
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        const char *k = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(kv, "key"));
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(kv, "type"));
        printf("    %-44s %-8s ", k, t);
        if (!strcmp(t, "array")) {
            const cJSON *h = cJSON_GetObjectItemCaseSensitive(kv, "head"), *e;
            printf("[%.0f x %s]", cJSON_GetObjectItemCaseSensitive(kv, "n")->valuedouble,
                   cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(kv, "element_type")));
            int k2 = 0;
            cJSON_ArrayForEach(e, h) {
                printf(k2++ ? ", " : " ");
                if (cJSON_IsString(e)) printf("\"%s\"", e->valuestring);
                else print_scalar(e);
            }
            if (cJSON_GetArraySize(h) < cJSON_GetObjectItemCaseSensitive(kv, "n")->valuedouble)
                printf(", ...");
        } else {
            print_scalar(cJSON_GetObjectItemCaseSensitive(kv, "value"));
        }
        printf("\n");
    }
}

/* ---- the command ---- */

static int emit(cJSON *o, int json, const char *path) {
    if (json) {
        char *t = cJSON_PrintUnformatted(o);
        printf("%s\n", t ? t : "{}");
        free(t);
    } else {
        printf("%s: %s\n", path, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "kind")));
        cJSON_DeleteItemFromObjectCaseSensitive(o, "kind");
        print_tree(o, 0);
    }
    cJSON_Delete(o);
    return 0;
}

static int fail(const qd_err *err) {
    fprintf(stderr, "quantd inspect: %s\n", err->msg);
    return 1;
}

/* A checkpoint: the model from its headers, its tokenizer, and for a GGUF every metadata key. */
static int inspect_checkpoint(const char *path, int json, qd_err *err) {
    qd_gguf *g = NULL;
    struct stat st;
    int is_gguf = stat(path, &st) == 0 && !S_ISDIR(st.st_mode);
    if (is_gguf) {
        unsigned char head[4] = {0};
        FILE *f = fopen(path, "rb");
        is_gguf = f && fread(head, 1, 4, f) == 4 && !memcmp(head, "GGUF", 4);
        if (f) fclose(f);
    }
    if (is_gguf && !(g = qd_gguf_open(path, err))) return fail(err);
    qd_err merr = {{0}};
    qd_model *m = qd_model_probe(path, &merr);
    if (!m && !g) return fail(&merr);
    cJSON *o = m ? model_json(m) : cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", "checkpoint");
    if (!m) {
        /* a GGUF quantd cannot run (an IQ type, another architecture): still its header */
        cJSON_AddStringToObject(o, "format", "gguf");
        cJSON_AddStringToObject(o, "model_error", merr.msg);
        cJSON *ts = cJSON_AddArrayToObject(o, "tensors");
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const qd_gguf_tensor *t = &g->tensors[i];
            char b[16];
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "name", t->name);
            cJSON_AddStringToObject(x, "dtype", qd_ggml_type_name(t->type, b));
            cJSON *sh = cJSON_AddArrayToObject(x, "shape");
            for (int d = t->n_dims - 1; d >= 0; d--)
                cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->ne[d]));
            cJSON_AddNumberToObject(x, "bytes", (double)t->nbytes);
            cJSON_AddItemToArray(ts, x);
        }
    }
    if (g) {
        cJSON_AddNumberToObject(o, "gguf_version", g->version);
        cJSON_AddItemToObject(o, "metadata", gguf_meta_json(g));
    }
    /* the tokenizer it carries, or that lies beside it (the one quantize would use) */
    qd_err terr = {{0}};
    if (m && m->vocab) {
        cJSON_AddItemToObject(o, "tokenizer", vocab_json(m->vocab));
    } else if (m) {
        qd_tokenizer *t = qd_tok_resolve(NULL, m->cfg.vocab_size, path, NULL, &terr);
        if (t) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "kind", "beside the checkpoint");
            cJSON_AddNumberToObject(x, "size", qd_tok_vocab_size(t));
            cJSON_AddItemToObject(o, "tokenizer", x);
            qd_tok_free(t);
        } else {
            cJSON_AddStringToObject(o, "tokenizer_error", terr.msg);
        }
    }
    if (json) {
        char *t = cJSON_PrintUnformatted(o);
        printf("%s\n", t ? t : "{}");
        free(t);
    } else {
        if (m) model_text(path, m);
        else printf("%s: gguf (%s)\n", path, merr.msg);
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(o, "tokenizer");
        if (tok) {
            printf("  tokenizer:\n");
            print_tree(tok, 1);
        } else if (m) {
            printf("  tokenizer: none (%s)\n", terr.msg);
        }
        if (g) gguf_meta_text(cJSON_GetObjectItemCaseSensitive(o, "metadata"));
    }
    cJSON_Delete(o);
    qd_model_free(m);
    qd_gguf_close(g);
    return 0;
}

int cmd_inspect(int argc, char **argv) {
    int json = 0;
    cli_args a;
    cli_args_init(&a, "quantd inspect", "[--json] PATH", opts, argc, argv);
    for (int c; (c = cli_next(&a)) != CLI_END;) {
        if (c == 'j') json = 1;
        else if (c == CLI_HELP) return cli_help(&a), 0;
        else return 2;
    }
    if (argc - a.optind != 1) {
        cli_fail(&a, argc == a.optind ? "a PATH is required" : "one PATH only");
        cli_usage(&a, stderr);
        return 2;
    }
    const char *path = argv[a.optind];
    qd_err err = {{0}};
    struct stat st;
    if (stat(path, &st) != 0) {
        qd_errf(&err, "%s: cannot open: %s", path, strerror(errno));
        return fail(&err);
    }
    if (S_ISDIR(st.st_mode)) return inspect_checkpoint(path, json, &err);
    if (qd_has_ext(path, ".safetensors")) {
        qd_st_file *f = qd_st_open(path, &err);
        if (!f) return fail(&err);
        const char *fmt = qd_st_meta(f, "format");
        int rc;
        if (fmt && !strcmp(fmt, QD_QINT_FORMAT)) {
            cJSON *o = qint_json(path, f, &err);
            rc = o ? emit(o, json, path) : fail(&err);
        } else {
            rc = inspect_checkpoint(path, json, &err);
        }
        qd_st_close(f);
        return rc;
    }
    if (qd_has_ext(path, ".json")) {
        size_t len;
        char *text = qd_read_file(path, JSON_FILE_MAX, &len, &err);
        if (!text) return fail(&err);
        cJSON *j = cJSON_ParseWithLength(text, len);
        free(text);
        if (!j) {
            qd_errf(&err, "%s: not valid JSON", path);
            return fail(&err);
        }
        int enc = is_encodings(j), tokj = cJSON_GetObjectItemCaseSensitive(j, "model") &&
                                           cJSON_GetObjectItemCaseSensitive(j, "added_tokens");
        cJSON *o = enc ? encodings_json(j) : NULL;
        cJSON_Delete(j);
        if (o) return emit(o, json, path);
        if (tokj) {
            o = tokenizer_json(path, &err);
            return o ? emit(o, json, path) : fail(&err);
        }
        return inspect_checkpoint(path, json, &err); /* config.json or an index */
    }
    /* .gguf, a llama2.c checkpoint, or a llama2.c tokenizer.bin */
    if (qd_has_ext(path, ".gguf")) return inspect_checkpoint(path, json, &err);
    qd_err merr = {{0}};
    qd_model *m = qd_model_probe(path, &merr);
    if (m) {
        qd_model_free(m);
        return inspect_checkpoint(path, json, &err);
    }
    cJSON *o = tokenizer_json(path, &err);
    if (o) return emit(o, json, path);
    return fail(&merr); /* neither: the checkpoint reader's reason */
}
