/* GGUF reader and the GGUF model loader. The header is walked with a cursor that checks every
 * length against the remaining bytes and a fixed limit before reading or allocating; the
 * loader then maps llama.* (mistral.*, qwen2.*) metadata, RoPE scaling and tensors onto a
 * qd_model, converting F32/F16/BF16 and dequantizing ggml's block types (ggml_blocks.h) to
 * FP32, and permuting q/k rows from GGUF's interleaved RoPE layout to rotate-half (llama.cpp's
 * converter applies the inverse permutation to Hugging Face weights for the llama
 * architecture; qwen2 is stored unpermuted, as NEOX-style RoPE). */
#include "quant/io/gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/model.h"
#include "base/stop.h"
#include "quant/io/common.h"
#include "quant/io/ggml_blocks.h"
#include "quant/vocab.h"

#define QD_GGUF_MAX_NAME 1024

/* ---- ggml types ---- */

typedef struct ggml_type_info {
    const char *name;
    uint32_t block;  /* elements per block */
    uint32_t size;   /* bytes per block */
} ggml_type_info;

static const ggml_type_info GGML_TYPES[] = {
    [0] = {"F32", 1, 4},       [1] = {"F16", 1, 2},       [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},    [6] = {"Q5_0", 32, 22},    [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},    [9] = {"Q8_1", 32, 36},    [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110}, [12] = {"Q4_K", 256, 144}, [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210}, [15] = {"Q8_K", 256, 292}, [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74}, [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18}, [21] = {"IQ3_S", 256, 110}, [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},     [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},      [27] = {"I64", 1, 8},      [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56}, [30] = {"BF16", 1, 2},     [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66}, [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (sizeof GGML_TYPES / sizeof GGML_TYPES[0])

static const ggml_type_info *ggml_type(uint32_t t) {
    return t < N_GGML_TYPES && GGML_TYPES[t].name ? &GGML_TYPES[t] : NULL;
}

const char *qd_ggml_type_name(uint32_t type, char buf[16]) {
    const ggml_type_info *ti = ggml_type(type);
    if (ti) return ti->name;
    snprintf(buf, 16, "type%u", type);
    return buf;
}

/* ---- bounded cursor ---- */

typedef struct cur {
    const uint8_t *p;
    size_t pos, size;
    const char *path;
    qd_err *err;
} cur;

static int need(cur *c, uint64_t n, const char *what) {
    if (n > c->size - c->pos)
        return qd_errf(c->err, "%s: truncated: %s at offset %zu needs %llu bytes, %zu remain",
                       c->path, what, c->pos, (unsigned long long)n, c->size - c->pos);
    return QD_OK;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int rd_u32(cur *c, uint32_t *v, const char *what) {
    if (need(c, 4, what)) return QD_ERR;
    *v = (uint32_t)le(c->p + c->pos, 4);
    c->pos += 4;
    return QD_OK;
}

static int rd_u64(cur *c, uint64_t *v, const char *what) {
    if (need(c, 8, what)) return QD_ERR;
    *v = le(c->p + c->pos, 8);
    c->pos += 8;
    return QD_OK;
}

/* A GGUF string: u64 length then bytes (no NUL). Points into the mapping. */
static int rd_str(cur *c, const char **s, uint64_t *len, uint64_t limit, const char *what) {
    size_t at = c->pos;
    if (rd_u64(c, len, what)) return QD_ERR;
    if (*len > limit)
        return qd_errf(c->err, "%s: %s at offset %zu: string length %llu exceeds limit %llu",
                       c->path, what, at, (unsigned long long)*len, (unsigned long long)limit);
    if (need(c, *len, what)) return QD_ERR;
    *s = (const char *)c->p + c->pos;
    c->pos += (size_t)*len;
    return QD_OK;
}

static char *dup_n(const char *s, uint64_t n) {
    char *d = malloc((size_t)n + 1);
    if (d) {
        memcpy(d, s, (size_t)n);
        d[n] = 0;
    }
    return d;
}

static size_t scalar_size(uint32_t t) {
    switch (t) {
    case QD_GGUF_UINT8: case QD_GGUF_INT8: case QD_GGUF_BOOL: return 1;
    case QD_GGUF_UINT16: case QD_GGUF_INT16: return 2;
    case QD_GGUF_UINT32: case QD_GGUF_INT32: case QD_GGUF_FLOAT32: return 4;
    case QD_GGUF_UINT64: case QD_GGUF_INT64: case QD_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Decodes one little-endian scalar of type t at p into kv's widened fields. */
static void set_scalar(qd_gguf_kv *kv, uint32_t t, const uint8_t *p) {
    uint64_t raw = le(p, (int)scalar_size(t));
    kv->u64 = raw;
    kv->i64 = (int64_t)raw;
    kv->f64 = (double)raw;
    switch (t) {
    case QD_GGUF_INT8: kv->i64 = (int8_t)raw; break;
    case QD_GGUF_INT16: kv->i64 = (int16_t)raw; break;
    case QD_GGUF_INT32: kv->i64 = (int32_t)raw; break;
    case QD_GGUF_INT64: kv->i64 = (int64_t)raw; break;
    case QD_GGUF_FLOAT32: {
        uint32_t u = (uint32_t)raw;
        float f;
        memcpy(&f, &u, 4);
        kv->f64 = f;
        return;
    }
    case QD_GGUF_FLOAT64: {
        double d;
        memcpy(&d, &raw, 8);
        kv->f64 = d;
        return;
    }
    default: break;
    }
    kv->f64 = (double)kv->i64;
    if (t == QD_GGUF_UINT64) kv->f64 = (double)raw;
}

/* Skips an array value (used for arrays nested in arrays); depth-bounded. */
static int skip_array(cur *c, int depth) {
    uint32_t at;
    uint64_t n;
    size_t start = c->pos;
    if (depth > QD_GGUF_MAX_DEPTH)
        return qd_errf(c->err, "%s: arrays nested deeper than %d at offset %zu", c->path,
                       QD_GGUF_MAX_DEPTH, start);
    if (rd_u32(c, &at, "array element type") || rd_u64(c, &n, "array length")) return QD_ERR;
    if (n > QD_GGUF_MAX_ARRAY)
        return qd_errf(c->err, "%s: array at offset %zu: length %llu exceeds limit %d", c->path,
                       start, (unsigned long long)n, QD_GGUF_MAX_ARRAY);
    if (at == QD_GGUF_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            uint64_t l;
            if (rd_str(c, &s, &l, QD_GGUF_MAX_STRING, "array string")) return QD_ERR;
        }
    } else if (at == QD_GGUF_ARRAY) {
        for (uint64_t i = 0; i < n; i++)
            if (skip_array(c, depth + 1)) return QD_ERR;
    } else {
        size_t es = scalar_size(at);
        if (!es)
            return qd_errf(c->err, "%s: array at offset %zu: unknown element type %u", c->path,
                           start, at);
        if (need(c, n * es, "array elements")) return QD_ERR; /* n*es < 2^30: no overflow */
        c->pos += (size_t)(n * es);
    }
    return QD_OK;
}

static int parse_value(cur *c, qd_gguf_kv *kv) {
    const char *k = kv->key;
    char what[80];
    snprintf(what, sizeof what, "value of '%.60s'", k);
    if (kv->type == QD_GGUF_STRING) {
        const char *s;
        if (rd_str(c, &s, &kv->str_len, QD_GGUF_MAX_STRING, what)) return QD_ERR;
        if (!(kv->str = dup_n(s, kv->str_len))) return qd_errf(c->err, "%s: out of memory", c->path);
        return QD_OK;
    }
    if (kv->type != QD_GGUF_ARRAY) {
        size_t es = scalar_size(kv->type);
        if (!es)
            return qd_errf(c->err, "%s: key '%s': unknown value type %u", c->path, k, kv->type);
        if (need(c, es, what)) return QD_ERR;
        set_scalar(kv, kv->type, c->p + c->pos);
        c->pos += es;
        return QD_OK;
    }
    size_t start = c->pos;
    if (rd_u32(c, &kv->arr_type, what) || rd_u64(c, &kv->arr_n, what)) return QD_ERR;
    uint64_t n = kv->arr_n;
    if (n > QD_GGUF_MAX_ARRAY)
        return qd_errf(c->err, "%s: key '%s': array length %llu exceeds limit %d", c->path, k,
                       (unsigned long long)n, QD_GGUF_MAX_ARRAY);
    if (kv->arr_type == QD_GGUF_STRING) {
        /* Every string takes at least its 8-byte length: bound n before allocating. */
        if (n > (c->size - c->pos) / 8)
            return qd_errf(c->err, "%s: key '%s': array length %llu runs past end of file",
                           c->path, k, (unsigned long long)n);
        kv->arr_str = malloc(((size_t)n + 1) * sizeof *kv->arr_str);
        kv->arr_str_len = malloc(((size_t)n + 1) * sizeof *kv->arr_str_len);
        if (!kv->arr_str || !kv->arr_str_len)
            return qd_errf(c->err, "%s: out of memory", c->path);
        for (uint64_t i = 0; i < n; i++)
            if (rd_str(c, &kv->arr_str[i], &kv->arr_str_len[i], QD_GGUF_MAX_STRING, what))
                return QD_ERR;
    } else if (kv->arr_type == QD_GGUF_ARRAY) {
        kv->arr = c->p + c->pos;
        for (uint64_t i = 0; i < n; i++)
            if (skip_array(c, 2)) return QD_ERR;
    } else {
        size_t es = scalar_size(kv->arr_type);
        if (!es)
            return qd_errf(c->err, "%s: key '%s' at offset %zu: unknown array element type %u",
                           c->path, k, start, kv->arr_type);
        if (need(c, n * es, what)) return QD_ERR;
        kv->arr = c->p + c->pos;
        c->pos += (size_t)(n * es);
    }
    return QD_OK;
}

/* (name, index) pairs sorted by name: duplicate detection and binary-search lookup. */
typedef struct name_idx {
    const char *name;
    uint32_t idx;
} name_idx;

static int cmp_name_idx(const void *a, const void *b) {
    return strcmp(((const name_idx *)a)->name, ((const name_idx *)b)->name);
}

/* qd_gguf plus the private lookup index; the public struct is its first member. */
typedef struct gguf_impl {
    qd_gguf g;
    name_idx *by_name;
} gguf_impl;

static int parse_tensor_info(cur *c, qd_gguf_tensor *t, uint64_t i) {
    const char *s;
    uint64_t len;
    char what[64];
    snprintf(what, sizeof what, "name of tensor %llu", (unsigned long long)i);
    if (rd_str(c, &s, &len, QD_GGUF_MAX_NAME, what)) return QD_ERR;
    if (!(t->name = dup_n(s, len))) return qd_errf(c->err, "%s: out of memory", c->path);
    uint32_t nd;
    if (rd_u32(c, &nd, "tensor n_dims")) return QD_ERR;
    if (nd < 1 || nd > QD_GGUF_MAX_DIMS)
        return qd_errf(c->err, "%s: tensor '%s': n_dims = %u out of range [1, %d]", c->path,
                       t->name, nd, QD_GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t n = 1;
    for (uint32_t d = 0; d < nd; d++) {
        if (rd_u64(c, &t->ne[d], "tensor dimension")) return QD_ERR;
        if (t->ne[d] == 0 || t->ne[d] > ((uint64_t)1 << 40) ||
            __builtin_mul_overflow(n, t->ne[d], &n) || n > ((uint64_t)1 << 40))
            return qd_errf(c->err, "%s: tensor '%s': dimension %u = %llu out of range",
                           c->path, t->name, d, (unsigned long long)t->ne[d]);
    }
    for (uint32_t d = nd; d < QD_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    t->n_elems = n;
    if (rd_u32(c, &t->type, "tensor type") || rd_u64(c, &t->offset, "tensor offset"))
        return QD_ERR;
    const ggml_type_info *ti = ggml_type(t->type);
    if (!ti)
        return qd_errf(c->err, "%s: tensor '%s': unknown tensor type %u", c->path, t->name,
                       t->type);
    if (t->ne[0] % ti->block)
        return qd_errf(c->err, "%s: tensor '%s': ne[0] = %llu not a multiple of %s block %u",
                       c->path, t->name, (unsigned long long)t->ne[0], ti->name, ti->block);
    t->nbytes = (size_t)(n / ti->block * ti->size); /* n < 2^40, size < 2^9: no overflow */
    return QD_OK;
}

static int parse(gguf_impl *im, qd_err *err) {
    qd_gguf *g = &im->g;
    cur c = {g->base, 0, g->size, g->path, err};
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0)
        return qd_errf(err, "%s: bad magic (not a GGUF file)", g->path);
    c.pos = 4;
    if (rd_u32(&c, &g->version, "version")) return QD_ERR;
    if (g->version != 2 && g->version != 3)
        return qd_errf(err, "%s: unsupported GGUF version %u (need 2 or 3)", g->path, g->version);
    if (rd_u64(&c, &g->n_tensors, "tensor count") || rd_u64(&c, &g->n_kv, "metadata count"))
        return QD_ERR;
    if (g->n_tensors > QD_GGUF_MAX_TENSORS)
        return qd_errf(err, "%s: tensor count %llu exceeds limit %d", g->path,
                       (unsigned long long)g->n_tensors, QD_GGUF_MAX_TENSORS);
    if (g->n_kv > QD_GGUF_MAX_KV)
        return qd_errf(err, "%s: metadata count %llu exceeds limit %d", g->path,
                       (unsigned long long)g->n_kv, QD_GGUF_MAX_KV);
    /* A kv takes >= 12 bytes and a tensor info >= 28: bound the counts by the file. */
    if (g->n_kv * 12 + g->n_tensors * 28 > g->size - c.pos)
        return qd_errf(err, "%s: tensor count %llu and metadata count %llu run past end of file",
                       g->path, (unsigned long long)g->n_tensors, (unsigned long long)g->n_kv);
    g->kv = calloc((size_t)g->n_kv + 1, sizeof *g->kv);
    g->tensors = calloc((size_t)g->n_tensors + 1, sizeof *g->tensors);
    size_t nmax = (size_t)(g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors) + 1;
    im->by_name = malloc(nmax * sizeof *im->by_name);
    if (!g->kv || !g->tensors || !im->by_name) return qd_errf(err, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        qd_gguf_kv *kv = &g->kv[i];
        const char *s;
        uint64_t len;
        char what[48];
        snprintf(what, sizeof what, "key of metadata entry %llu", (unsigned long long)i);
        if (rd_str(&c, &s, &len, QD_GGUF_MAX_NAME, what)) return QD_ERR;
        if (!(kv->key = dup_n(s, len))) return qd_errf(err, "%s: out of memory", g->path);
        if (rd_u32(&c, &kv->type, "metadata value type")) return QD_ERR;
        if (parse_value(&c, kv)) return QD_ERR;
    }
    for (uint64_t i = 0; i < g->n_kv; i++) im->by_name[i] = (name_idx){g->kv[i].key, (uint32_t)i};
    qsort(im->by_name, (size_t)g->n_kv, sizeof *im->by_name, cmp_name_idx);
    for (uint64_t i = 1; i < g->n_kv; i++)
        if (strcmp(im->by_name[i - 1].name, im->by_name[i].name) == 0)
            return qd_errf(err, "%s: duplicate metadata key '%s'", g->path, im->by_name[i].name);

    g->alignment = 32;
    const qd_gguf_kv *al = qd_gguf_find(g, "general.alignment");
    if (al) {
        if (al->type != QD_GGUF_UINT32 || al->u64 == 0 || (al->u64 & (al->u64 - 1)) ||
            al->u64 > 65536)
            return qd_errf(err, "%s: general.alignment must be a power of two uint32 <= 65536",
                           g->path);
        g->alignment = (uint32_t)al->u64;
    }

    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (parse_tensor_info(&c, &g->tensors[i], i)) return QD_ERR;
    size_t ds = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors && ds > g->size)
        return qd_errf(err, "%s: truncated: data section would start at %zu, file is %zu bytes",
                       g->path, ds, g->size);
    g->data_start = ds > g->size ? g->size : ds;
    size_t data_size = g->size - g->data_start;
    qd_span *sp = malloc(((size_t)g->n_tensors + 1) * sizeof *sp);
    if (!sp) return qd_errf(err, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        qd_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment) {
            free(sp);
            return qd_errf(err, "%s: tensor '%s': offset %llu is not a multiple of alignment %u",
                           g->path, t->name, (unsigned long long)t->offset, g->alignment);
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            free(sp);
            return qd_errf(err,
                           "%s: tensor '%s': data [%llu, +%zu) out of range (truncated? data "
                           "section is %zu bytes)",
                           g->path, t->name, (unsigned long long)t->offset, t->nbytes, data_size);
        }
        t->data = g->base + g->data_start + t->offset;
        sp[i] = (qd_span){t->offset, t->offset + t->nbytes, (uint32_t)i};
    }
    size_t ov = qd_spans_overlap(sp, (size_t)g->n_tensors);
    if (ov) {
        qd_errf(err, "%s: data of tensors '%s' and '%s' overlap", g->path,
                g->tensors[sp[ov - 1].idx].name, g->tensors[sp[ov].idx].name);
        free(sp);
        return QD_ERR;
    }
    free(sp);
    /* From here on by_name indexes tensors. */
    for (uint64_t i = 0; i < g->n_tensors; i++)
        im->by_name[i] = (name_idx){g->tensors[i].name, (uint32_t)i};
    qsort(im->by_name, (size_t)g->n_tensors, sizeof *im->by_name, cmp_name_idx);
    for (uint64_t i = 1; i < g->n_tensors; i++)
        if (strcmp(im->by_name[i - 1].name, im->by_name[i].name) == 0)
            return qd_errf(err, "%s: duplicate tensor name '%s'", g->path, im->by_name[i].name);
    return QD_OK;
}

qd_gguf *qd_gguf_open(const char *path, qd_err *err) {
    gguf_impl *im = calloc(1, sizeof *im);
    if (!im || !(im->g.path = strdup(path))) {
        free(im);
        qd_errf(err, "%s: out of memory", path);
        return NULL;
    }
    qd_map map;
    if (qd_map_open(&map, path, err) != QD_OK) {
        qd_gguf_close(&im->g);
        return NULL;
    }
    im->g.base = map.data;
    im->g.size = map.size;
    if (parse(im, err) != QD_OK) {
        qd_gguf_close(&im->g);
        return NULL;
    }
    return &im->g;
}

void qd_gguf_close(qd_gguf *g) {
    if (!g) return;
    gguf_impl *im = (gguf_impl *)g;
    for (uint64_t i = 0; g->kv && i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str);
        free(g->kv[i].arr_str);
        free(g->kv[i].arr_str_len);
    }
    free(g->kv);
    for (uint64_t i = 0; g->tensors && i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->tensors);
    free(im->by_name);
    qd_map map = {g->base, g->size};
    qd_map_close(&map);
    free(g->path);
    free(im);
}

const qd_gguf_kv *qd_gguf_find(const qd_gguf *g, const char *key) {
    /* Keys are few (tens); a scan keeps by_name free for tensors. */
    for (uint64_t i = 0; g && i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

const qd_gguf_tensor *qd_gguf_find_tensor(const qd_gguf *g, const char *name) {
    if (!g || !g->n_tensors) return NULL;
    const gguf_impl *im = (const gguf_impl *)g;
    name_idx key = {name, 0};
    const name_idx *r = bsearch(&key, im->by_name, (size_t)g->n_tensors, sizeof key, cmp_name_idx);
    return r ? &g->tensors[r->idx] : NULL;
}

static int is_int_type(uint32_t t) {
    return t == QD_GGUF_UINT8 || t == QD_GGUF_INT8 || t == QD_GGUF_UINT16 ||
           t == QD_GGUF_INT16 || t == QD_GGUF_UINT32 || t == QD_GGUF_INT32 ||
           t == QD_GGUF_UINT64 || t == QD_GGUF_INT64 || t == QD_GGUF_BOOL;
}

int qd_gguf_get_int(const qd_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out,
                    qd_err *err) {
    const qd_gguf_kv *kv = qd_gguf_find(g, key);
    if (!kv) return 1;
    if (!is_int_type(kv->type))
        return qd_errf(err, "%s: %s has type %u, need an integer", g->path, key, kv->type);
    int unsigned_big = kv->type == QD_GGUF_UINT64 && kv->u64 > (uint64_t)INT64_MAX;
    if (unsigned_big || kv->i64 < lo || kv->i64 > hi)
        return qd_errf(err, "%s: %s = %s%lld out of range [%lld, %lld]", g->path, key,
                       unsigned_big ? "(huge) " : "", (long long)kv->i64, (long long)lo,
                       (long long)hi);
    *out = kv->i64;
    return 0;
}

int qd_gguf_get_float(const qd_gguf *g, const char *key, double *out, qd_err *err) {
    const qd_gguf_kv *kv = qd_gguf_find(g, key);
    if (!kv) return 1;
    if (kv->type != QD_GGUF_FLOAT32 && kv->type != QD_GGUF_FLOAT64 && !is_int_type(kv->type))
        return qd_errf(err, "%s: %s has type %u, need a number", g->path, key, kv->type);
    *out = kv->f64;
    return 0;
}

/* ---- vocabulary ---- */

static int vocab_id(const qd_gguf *g, const char *key, int n, int *out, qd_err *err) {
    int64_t v;
    const qd_gguf_kv *kv = qd_gguf_find(g, key);
    /* 0xFFFFFFFF (and -1) mark "none" in files written by llama.cpp. */
    if (kv && is_int_type(kv->type) && (kv->u64 == 0xffffffffu || kv->i64 == -1)) return QD_OK;
    int rc = qd_gguf_get_int(g, key, 0, n - 1, &v, err);
    if (rc < 0) return QD_ERR;
    if (rc == 0) *out = (int)v;
    return QD_OK;
}

static int vocab_flag(const qd_gguf *g, const char *key, int *out, qd_err *err) {
    int64_t v;
    int rc = qd_gguf_get_int(g, key, 0, 1, &v, err);
    if (rc < 0) return QD_ERR;
    if (rc == 0) *out = (int)v;
    return QD_OK;
}

qd_vocab *qd_gguf_vocab(const qd_gguf *g, qd_err *err) {
    const qd_gguf_kv *tk = qd_gguf_find(g, "tokenizer.ggml.tokens");
    if (!tk) {
        qd_errf(err, "%s: no vocabulary (tokenizer.ggml.tokens missing)", g->path);
        return NULL;
    }
    if (tk->type != QD_GGUF_ARRAY || tk->arr_type != QD_GGUF_STRING) {
        qd_errf(err, "%s: tokenizer.ggml.tokens is not an array of strings", g->path);
        return NULL;
    }
    if (tk->arr_n < 1 || tk->arr_n > QD_MAX_VOCAB) {
        qd_errf(err, "%s: tokenizer.ggml.tokens has %llu entries, need 1..%d", g->path,
                (unsigned long long)tk->arr_n, QD_MAX_VOCAB);
        return NULL;
    }
    int n = (int)tk->arr_n;
    const qd_gguf_kv *sc = qd_gguf_find(g, "tokenizer.ggml.scores");
    const qd_gguf_kv *ty = qd_gguf_find(g, "tokenizer.ggml.token_type");
    if (sc && (sc->type != QD_GGUF_ARRAY || sc->arr_type != QD_GGUF_FLOAT32 || sc->arr_n != tk->arr_n)) {
        qd_errf(err, "%s: tokenizer.ggml.scores must be %d float32 values", g->path, n);
        return NULL;
    }
    if (ty && (ty->type != QD_GGUF_ARRAY ||
               (ty->arr_type != QD_GGUF_INT32 && ty->arr_type != QD_GGUF_UINT32) ||
               ty->arr_n != tk->arr_n)) {
        qd_errf(err, "%s: tokenizer.ggml.token_type must be %d int32 values", g->path, n);
        return NULL;
    }
    /* tokenizer.ggml.model says how the tokens are spelled and merged; absent means the
     * SentencePiece-style vocabulary older llama files carry. */
    const qd_gguf_kv *md = qd_gguf_find(g, "tokenizer.ggml.model");
    int kind = QD_VOCAB_SPM;
    if (md) {
        if (md->type != QD_GGUF_STRING) {
            qd_errf(err, "%s: tokenizer.ggml.model is not a string", g->path);
            return NULL;
        }
        if (strcmp(md->str, "gpt2") == 0) {
            kind = QD_VOCAB_BPE;
        } else if (strcmp(md->str, "llama") != 0) {
            qd_errf(err, "%s: tokenizer.ggml.model = '%.40s' is unsupported (need llama or gpt2)",
                    g->path, md->str);
            return NULL;
        }
    }
    const qd_gguf_kv *mg = qd_gguf_find(g, "tokenizer.ggml.merges");
    if (kind == QD_VOCAB_BPE) {
        if (!mg) {
            qd_errf(err, "%s: tokenizer.ggml.model is gpt2 but tokenizer.ggml.merges is missing",
                    g->path);
            return NULL;
        }
        if (mg->type != QD_GGUF_ARRAY || mg->arr_type != QD_GGUF_STRING) {
            qd_errf(err, "%s: tokenizer.ggml.merges is not an array of strings", g->path);
            return NULL;
        }
        if (mg->arr_n > QD_MAX_MERGES) {
            qd_errf(err, "%s: tokenizer.ggml.merges has %llu entries, limit %d", g->path,
                    (unsigned long long)mg->arr_n, QD_MAX_MERGES);
            return NULL;
        }
    }
    const qd_gguf_kv *pre = qd_gguf_find(g, "tokenizer.ggml.pre");
    if (pre && (pre->type != QD_GGUF_STRING || pre->str_len >= sizeof ((qd_vocab *)0)->pre)) {
        qd_errf(err, "%s: tokenizer.ggml.pre must be a string of at most %zu bytes", g->path,
                sizeof ((qd_vocab *)0)->pre - 1);
        return NULL;
    }
    qd_vocab *v = calloc(1, sizeof *v);
    if (!v) goto oom;
    v->n = n;
    v->bos_id = v->eos_id = v->unk_id = -1;
    v->kind = kind;
    /* llama.cpp's defaults: SentencePiece adds BOS and the dummy prefix, byte-level BPE
     * neither unless the file says so. */
    v->add_bos = kind == QD_VOCAB_SPM;
    v->add_space_prefix = kind == QD_VOCAB_SPM;
    if (pre) snprintf(v->pre, sizeof v->pre, "%s", pre->str);
    v->tokens = calloc((size_t)n, sizeof *v->tokens);
    if (!v->tokens) goto oom;
    for (int i = 0; i < n; i++) {
        if (memchr(tk->arr_str[i], 0, (size_t)tk->arr_str_len[i])) {
            qd_errf(err, "%s: tokenizer.ggml.tokens[%d] contains a NUL byte", g->path, i);
            qd_vocab_free(v);
            return NULL;
        }
        if (!(v->tokens[i] = dup_n(tk->arr_str[i], tk->arr_str_len[i]))) goto oom;
    }
    if (sc) {
        if (!(v->scores = malloc((size_t)n * sizeof *v->scores))) goto oom;
        for (int i = 0; i < n; i++) {
            uint32_t u = (uint32_t)le(sc->arr + 4 * (size_t)i, 4);
            memcpy(&v->scores[i], &u, 4);
        }
    }
    if (ty) {
        if (!(v->types = malloc((size_t)n * sizeof *v->types))) goto oom;
        for (int i = 0; i < n; i++) v->types[i] = (int)(int32_t)le(ty->arr + 4 * (size_t)i, 4);
    }
    if (kind == QD_VOCAB_BPE && mg->arr_n) {
        int nm = (int)mg->arr_n;
        if (!(v->merges = calloc((size_t)nm, sizeof *v->merges))) goto oom;
        v->n_merges = nm;
        for (int i = 0; i < nm; i++) {
            const char *s = mg->arr_str[i];
            size_t l = (size_t)mg->arr_str_len[i];
            /* The two tokens are split at the first space after the first byte, as llama.cpp
             * splits them (so a left token may itself be a space). */
            const char *sp = l > 1 ? memchr(s + 1, ' ', l - 1) : NULL;
            if (!sp || sp == s + l - 1 || memchr(s, 0, l) || l > 2 * QD_TOK_MAX_BYTES + 1) {
                qd_errf(err, "%s: tokenizer.ggml.merges[%d] = '%.*s' is not two tokens "
                        "separated by one space", g->path, i, (int)(l > 60 ? 60 : l), s);
                qd_vocab_free(v);
                return NULL;
            }
            if (!(v->merges[i] = dup_n(s, l))) goto oom;
        }
    }
    if (vocab_id(g, "tokenizer.ggml.bos_token_id", n, &v->bos_id, err) ||
        vocab_id(g, "tokenizer.ggml.eos_token_id", n, &v->eos_id, err) ||
        vocab_id(g, "tokenizer.ggml.unknown_token_id", n, &v->unk_id, err) ||
        vocab_flag(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err) ||
        vocab_flag(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err)) {
        qd_vocab_free(v);
        return NULL;
    }
    return v;
oom:
    qd_errf(err, "%s: out of memory for the vocabulary", g->path);
    qd_vocab_free(v);
    return NULL;
}

qd_vocab *qd_gguf_load_vocab(const char *path, qd_err *err) {
    qd_gguf *g = qd_gguf_open(path, err);
    if (!g) return NULL;
    qd_vocab *v = qd_gguf_vocab(g, err);
    qd_gguf_close(g);
    return v;
}

/* ---- model ---- */

typedef struct loader {
    const qd_gguf *g;
    qd_err *err;
    int check_only; /* first pass: shapes and types, nothing allocated yet */
} loader;

/* Finds tensor name, checks it is F32/F16/BF16 or a block type of ggml_blocks.h with shape
 * (rows, cols) in PyTorch order (rows == 0: a vector of cols), and unless check_only converts
 * it into dst. */
static int take(loader *ld, const char *name, uint64_t rows, uint64_t cols, float *dst) {
    const qd_gguf *g = ld->g;
    const qd_gguf_tensor *t = qd_gguf_find_tensor(g, name);
    if (!t) return qd_errf(ld->err, "%s: missing tensor %s", g->path, name);
    int src = -1;
    switch (t->type) {
    case QD_GGML_F32: src = QD_SRC_F32; break;
    case QD_GGML_F16: src = QD_SRC_F16; break;
    case QD_GGML_BF16: src = QD_SRC_BF16; break;
    default:
        if (!qd_ggml_block_type(t->type)) {
            char b[16];
            return qd_errf(ld->err,
                           "%s: tensor %s: unsupported type %s (quantd reads F32, F16, BF16, "
                           "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                           g->path, name, qd_ggml_type_name(t->type, b));
        }
    }
    int ok = rows ? (t->n_dims == 2 && t->ne[0] == cols && t->ne[1] == rows)
                  : (t->n_dims == 1 && t->ne[0] == cols);
    if (!ok) {
        char got[96];
        int k = 0;
        for (int d = t->n_dims - 1; d >= 0 && k < (int)sizeof got - 24; d--)
            k += snprintf(got + k, sizeof got - (size_t)k, "%s%llu", d == t->n_dims - 1 ? "" : ", ",
                          (unsigned long long)t->ne[d]);
        if (rows)
            return qd_errf(ld->err, "%s: tensor %s: shape [%s], expected [%llu, %llu]", g->path,
                           name, got, (unsigned long long)rows, (unsigned long long)cols);
        return qd_errf(ld->err, "%s: tensor %s: shape [%s], expected [%llu]", g->path, name, got,
                       (unsigned long long)cols);
    }
    if (ld->check_only) return QD_OK;
    if (src >= 0) return qd_convert_f32(dst, t->data, src, (size_t)t->n_elems, g->path, name, ld->err);
    /* parse_tensor_info checked ne[0] against the block size and the bytes against the file */
    if (qd_stop_requested()) return qd_stopped(ld->err);
    if (qd_ggml_dequantize(t->type, t->data, dst, (size_t)t->n_elems) != 0) {
        char b[16];
        return qd_errf(ld->err, "%s: tensor %s: internal: cannot dequantize %s", g->path, name,
                       qd_ggml_type_name(t->type, b));
    }
    for (size_t i = 0; i < (size_t)t->n_elems; i++)
        if (!isfinite(dst[i])) {
            char b[16];
            return qd_errf(ld->err, "%s: tensor %s: element %zu is %s (a %s block scale?)",
                           g->path, name, i, isnan(dst[i]) ? "NaN" : "Inf",
                           qd_ggml_type_name(t->type, b));
        }
    return QD_OK;
}

static int get_req(const qd_gguf *g, const char *arch, const char *key, int64_t lo, int64_t hi,
                   int64_t *out, int64_t dflt, int required, qd_err *err) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int rc = qd_gguf_get_int(g, k, lo, hi, out, err);
    if (rc < 0) return QD_ERR;
    if (rc == 1) {
        if (required) return qd_errf(err, "%s: missing metadata %s", g->path, k);
        *out = dflt;
    }
    return QD_OK;
}

/* Llama 3.1's scaling as llama.cpp stores it: no scaling keys, but a rope_freqs.weight
 * tensor of head_dim/2 frequency divisors computed from (factor, low_freq_factor,
 * high_freq_factor, original context). The parameters are recovered from the divisors: factor
 * is the largest, and in the band between, 1/divisor is linear in orig/wavelength with slope
 * 1/(high-low) and intercept -low/(high-low). The fit must then reproduce every divisor; a
 * rope_freqs that follows another rule is refused rather than approximated. */
static int gguf_rope_freqs(const qd_gguf *g, const char *arch, qd_config *c, qd_err *err) {
    const char *name = "rope_freqs.weight";
    const qd_gguf_tensor *t = qd_gguf_find_tensor(g, name);
    int half = c->head_dim / 2;
    if (t->type != QD_GGML_F32 || t->n_dims != 1 || t->ne[0] != (uint64_t)half)
        return qd_errf(err, "%s: tensor %s: need F32 [%d] (head_dim / 2)", g->path, name, half);
    float *dv = malloc((size_t)half * sizeof *dv);
    if (!dv) return qd_errf(err, "%s: out of memory", g->path);
    int rc = qd_convert_f32(dv, t->data, QD_SRC_F32, (size_t)half, g->path, name, err);
    double k = 1;
    for (int i = 0; rc == QD_OK && i < half; i++) {
        if (!(dv[i] >= 1.0f))
            rc = qd_errf(err, "%s: tensor %s: element %d = %g, need a divisor >= 1", g->path,
                         name, i, (double)dv[i]);
        else if (dv[i] > k) k = dv[i];
    }
    if (rc || k == 1) {
        free(dv);
        return rc; /* all ones: no scaling */
    }
    char key[128];
    int64_t orig = 8192; /* transformers' and llama.cpp's default for Llama 3 */
    snprintf(key, sizeof key, "%s.rope.scaling.original_context_length", arch);
    if (qd_gguf_get_int(g, key, 1, QD_MAX_CTX, &orig, err) < 0) {
        free(dv);
        return QD_ERR;
    }
    /* x = orig / wavelength; divisor 1 where x > high, k where x < low, blended between */
    double sx = 0, sy = 0, sxx = 0, sxy = 0, max_lo = 0, min_hi = INFINITY;
    int nb = 0;
    for (int i = 0; i < half; i++) {
        double base = pow((double)c->rope_theta, -2.0 * i / c->head_dim);
        double x = (double)orig * base / (2 * M_PI);
        double d = dv[i];
        if (fabs(d - 1) < 1e-6) {
            if (x < min_hi) min_hi = x;
        } else if (fabs(d - k) < 1e-6 * k) {
            if (x > max_lo) max_lo = x;
        } else {
            double y = (1 / d - 1 / k) / (1 - 1 / k);
            sx += x, sy += y, sxx += x * x, sxy += x * y, nb++;
        }
    }
    double lo, hi;
    if (nb >= 2 && nb * sxx - sx * sx > 0) {
        double a = (nb * sxy - sx * sy) / (nb * sxx - sx * sx), b = (sy - a * sx) / nb;
        lo = -b / a;
        hi = lo + 1 / a;
    } else if (nb == 1) {
        /* one blended pair fixes one equation: take Llama 3.1's high/low ratio of 4 */
        lo = sx / (1 + 3 * sy);
        hi = 4 * lo;
    } else {
        /* no blended pair: Llama 3.1's own values when the divisors allow them, else a
         * ratio-4 band just above the slowed pairs */
        lo = 1, hi = 4;
        if (!(max_lo < lo && hi < min_hi)) {
            lo = max_lo * 1.0001 + 1e-9;
            hi = isfinite(min_hi) && min_hi < 4 * lo ? (lo + min_hi) / 2 : 4 * lo;
        }
    }
    c->rope_scaling = QD_ROPE_LLAMA3;
    c->rope_factor = (float)k;
    c->rope_low_freq_factor = (float)lo;
    c->rope_high_freq_factor = (float)hi;
    c->rope_orig_ctx = (int)orig;
    for (int i = 0; rc == QD_OK && i < half; i++) {
        double base = pow((double)c->rope_theta, -2.0 * i / c->head_dim);
        double fit = base / qd_rope_inv_freq(c, i);
        if (!(lo > 0 && hi > lo) || fabs(fit - dv[i]) > 1e-4 * dv[i])
            rc = qd_errf(err, "%s: tensor %s: frequency divisors do not follow llama3 RoPE "
                         "scaling (element %d = %g, the fit gives %g)", g->path, name, i,
                         (double)dv[i], fit);
    }
    free(dv);
    return rc;
}

/* <arch>.rope.scaling.type (none, linear) with .factor, the older .rope.scale_linear, and the
 * llama3-style rope_freqs tensor; yarn and others are refused by name. */
static int gguf_rope_scaling(const qd_gguf *g, const char *arch, qd_config *c, qd_err *err) {
    char k[128];
    double f = 1;
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    const qd_gguf_kv *rs = qd_gguf_find(g, k);
    const char *type = "none";
    if (rs) {
        if (rs->type != QD_GGUF_STRING) return qd_errf(err, "%s: %s is not a string", g->path, k);
        type = rs->str;
    }
    char fk[128];
    snprintf(fk, sizeof fk, "%s.rope.scaling.factor", arch);
    int frc = qd_gguf_get_float(g, fk, &f, err);
    if (frc < 0) return QD_ERR;
    if (!rs) { /* older files: rope.scale_linear */
        snprintf(fk, sizeof fk, "%s.rope.scale_linear", arch);
        frc = qd_gguf_get_float(g, fk, &f, err);
        if (frc < 0) return QD_ERR;
        if (frc == 0 && f != 1) type = "linear";
    }
    if (strcmp(type, "linear") == 0) {
        if (frc != 0 || !(f > 0) || !isfinite(f))
            return qd_errf(err, "%s: %s is linear but %s is missing or not positive", g->path, k,
                           fk);
        if (f != 1) {
            c->rope_scaling = QD_ROPE_LINEAR;
            c->rope_factor = (float)f;
        }
    } else if (strcmp(type, "none") != 0) {
        return qd_errf(err, "%s: unsupported %s = '%.32s' (quantd applies none, linear and "
                       "llama3-style rope_freqs)", g->path, k, type);
    }
    if (qd_gguf_find_tensor(g, "rope_freqs.weight")) {
        if (c->rope_scaling != QD_ROPE_NONE)
            return qd_errf(err, "%s: both %s and tensor rope_freqs.weight scale RoPE", g->path, k);
        return gguf_rope_freqs(g, arch, c, err);
    }
    return QD_OK;
}

static int gguf_config(const qd_gguf *g, qd_config *c, int *permute, qd_err *err) {
    const qd_gguf_kv *a = qd_gguf_find(g, "general.architecture");
    if (!a || a->type != QD_GGUF_STRING)
        return qd_errf(err, "%s: missing general.architecture", g->path);
    const char *arch = a->str;
    int family = QD_FAMILY_LLAMA;
    if (strcmp(arch, "llama") == 0 || strcmp(arch, "mistral") == 0) {
        /* Mistral checkpoints go through llama.cpp's Llama converter: the same layout */
        *permute = 1;
    } else if (strcmp(arch, "qwen2") == 0 || strcmp(arch, "gemma") == 0 ||
               strcmp(arch, "stablelm") == 0) {
        /* llama.cpp runs these with NEOX (rotate-half) RoPE and stores q/k unpermuted */
        *permute = 0;
        family = arch[0] == 'g' ? QD_FAMILY_GEMMA : arch[0] == 's' ? QD_FAMILY_STABLELM
                                                                    : QD_FAMILY_LLAMA;
    } else {
        return qd_errf(err,
                       "%s: unsupported architecture '%.40s' (general.architecture): need "
                       "llama, mistral, qwen2, gemma or stablelm",
                       g->path, arch);
    }
    memset(c, 0, sizeof *c);
    qd_config_set_family(c, family);
    int64_t dim, ff, nl, nh, nkv, hd, ctx, rd;
    if (get_req(g, arch, "embedding_length", 1, QD_MAX_DIM, &dim, 0, 1, err) ||
        get_req(g, arch, "feed_forward_length", 1, QD_MAX_DIM, &ff, 0, 1, err) ||
        get_req(g, arch, "block_count", 1, QD_MAX_LAYERS, &nl, 0, 1, err) ||
        get_req(g, arch, "attention.head_count", 1, QD_MAX_HEADS, &nh, 0, 1, err) ||
        get_req(g, arch, "attention.head_count_kv", 1, QD_MAX_HEADS, &nkv, nh, 0, err) ||
        get_req(g, arch, "attention.key_length", 1, QD_MAX_DIM, &hd, dim / nh, 0, err) ||
        get_req(g, arch, "context_length", 1, QD_MAX_CTX, &ctx, 2048, 0, err) ||
        get_req(g, arch, "rope.dimension_count", 1, QD_MAX_DIM, &rd, hd, 0, err))
        return QD_ERR;
    if (rd != hd && family != QD_FAMILY_STABLELM)
        return qd_errf(err, "%s: %s.rope.dimension_count = %lld but head_dim = %lld: partial "
                       "rotary embeddings are StableLM's only", g->path, arch, (long long)rd,
                       (long long)hd);
    if (rd > hd || rd % 2 != 0)
        return qd_errf(err, "%s: %s.rope.dimension_count = %lld must be even and at most "
                       "head_dim = %lld", g->path, arch, (long long)rd, (long long)hd);
    c->rope_dim = rd == hd ? 0 : (int)rd;
    /* llama.cpp scales Gemma's embeddings by sqrtf(n_embd) in F32 (and its converter has
     * already stored the norms as 1 + w, which is what the model keeps: model.h) */
    if (family == QD_FAMILY_GEMMA) c->emb_scale = sqrtf((float)dim);
    char k[128];
    double theta = 10000.0, eps = 1e-5;
    snprintf(k, sizeof k, "%s.rope.freq_base", arch);
    if (qd_gguf_get_float(g, k, &theta, err) < 0) return QD_ERR;
    snprintf(k, sizeof k, family == QD_FAMILY_STABLELM ? "%s.attention.layer_norm_epsilon"
                                                        : "%s.attention.layer_norm_rms_epsilon",
             arch);
    if (qd_gguf_get_float(g, k, &eps, err) < 0) return QD_ERR;
    c->dim = (int)dim;
    c->hidden_dim = (int)ff;
    c->n_layers = (int)nl;
    c->n_heads = (int)nh;
    c->n_kv_heads = (int)nkv;
    c->head_dim = (int)hd;
    c->max_seq_len = (int)ctx;
    c->rope_theta = (float)theta;
    c->norm_eps = (float)eps;
    c->bos_id = c->eos_id = -1;
    return gguf_rope_scaling(g, arch, c, err);
}

/* Loads all weights; pass 0 only checks (ld->check_only), pass 1 converts into m. */
static int gguf_weights(loader *ld, qd_model *m, const qd_config *c) {
    uint64_t D = (uint64_t)c->dim, V = (uint64_t)c->vocab_size;
    char n[96];
#define DST(field) (m ? (field) : NULL)
    if (take(ld, "token_embd.weight", V, D, DST(m->tok_emb))) return QD_ERR;
    if (take(ld, "output_norm.weight", 0, D, DST(m->final_norm))) return QD_ERR;
    if (c->norm == QD_NORM_LAYER && take(ld, "output_norm.bias", 0, D, DST(m->final_norm_b)))
        return QD_ERR;
    if (!c->tied_embeddings && take(ld, "output.weight", V, D, DST(m->lm_head))) return QD_ERR;
    for (int l = 0; l < c->n_layers; l++) {
        qd_layer *L = m ? &m->layers[l] : NULL;
        for (int i = 0; i < qd_n_layer_tensors; i++) {
            const qd_layer_tensor *t = &qd_layer_tensors[i];
            if (!qd_layer_tensor_on(c, t)) continue;
            snprintf(n, sizeof n, "blk.%d.%s", l, t->gguf);
            if (take(ld, n, (uint64_t)qd_layer_dim(c, t->rows), (uint64_t)qd_layer_dim(c, t->cols),
                     L ? *qd_layer_slot(L, t) : NULL))
                return QD_ERR;
        }
    }
#undef DST
    return QD_OK;
}

qd_model *qd_load_gguf(const char *path, int header_only, qd_err *err) {
    qd_gguf *g = qd_gguf_open(path, err);
    if (!g) return NULL;
    qd_model *m = NULL;
    qd_config c;
    int permute = 0;
    if (gguf_config(g, &c, &permute, err)) goto fail;
    const qd_gguf_tensor *emb = qd_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) {
        qd_errf(err, "%s: missing tensor token_embd.weight", path);
        goto fail;
    }
    if (emb->n_dims != 2 || emb->ne[1] < 1 || emb->ne[1] > QD_MAX_VOCAB) {
        qd_errf(err, "%s: tensor token_embd.weight: vocabulary size %llu out of range [1, %d]",
                path, (unsigned long long)emb->ne[1], QD_MAX_VOCAB);
        goto fail;
    }
    c.vocab_size = (int)emb->ne[1];
    /* Many converters write output.weight even when it is a copy of the embeddings (the
     * stories260K GGUF does); a byte-identical copy is a tied head, and stays one on save. */
    const qd_gguf_tensor *out = qd_gguf_find_tensor(g, "output.weight");
    c.tied_embeddings = !out || (out->type == emb->type && out->n_dims == emb->n_dims &&
                                 memcmp(out->ne, emb->ne, sizeof out->ne) == 0 &&
                                 (header_only || memcmp(out->data, emb->data, emb->nbytes) == 0));
    c.qkv_bias = qd_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    if (c.family == QD_FAMILY_STABLELM) {
        /* llama.cpp's StableLM graph: q/k LayerNorms when these tensors exist, the parallel
         * residual when ffn_norm does not; quantd implements neither */
        if (qd_gguf_find_tensor(g, "blk.0.attn_q_norm.weight")) {
            qd_errf(err, "%s: unsupported tensor blk.0.attn_q_norm.weight (StableLM with "
                    "qk_layernorm: per-head q/k LayerNorms are not implemented)", path);
            goto fail;
        }
        if (!qd_gguf_find_tensor(g, "blk.0.ffn_norm.weight")) {
            qd_errf(err, "%s: no tensor blk.0.ffn_norm.weight: a StableLM with the parallel "
                    "residual (use_parallel_residual), which quantd does not implement", path);
            goto fail;
        }
    }
    qd_vocab *v = NULL;
    if (qd_gguf_find(g, "tokenizer.ggml.tokens")) {
        if (!(v = qd_gguf_vocab(g, err))) goto fail;
        if (v->bos_id < c.vocab_size) c.bos_id = v->bos_id;
        if (v->eos_id < c.vocab_size) c.eos_id = v->eos_id;
    }
    loader ld = {g, err, 1};
    if (qd_config_validate(&c, path, err) || gguf_weights(&ld, NULL, &c)) {
        qd_vocab_free(v);
        goto fail;
    }
    if (!(m = header_only ? qd_model_header(&c, err) : qd_model_alloc(&c, err))) {
        qd_vocab_free(v);
        goto fail;
    }
    m->vocab = v;
    snprintf(m->format, sizeof m->format, "gguf");
    ld.check_only = 0;
    if (!header_only && gguf_weights(&ld, m, &c)) goto fail;
    if (permute && !header_only) {
        for (int l = 0; l < c.n_layers; l++) {
            qd_layer *L = &m->layers[l];
            if (qd_permute_rope_rows(L->wq, c.n_heads, c.head_dim, (size_t)c.dim, err) ||
                qd_permute_rope_rows(L->wk, c.n_kv_heads, c.head_dim, (size_t)c.dim, err))
                goto fail;
            if (c.qkv_bias && (qd_permute_rope_rows(L->bq, c.n_heads, c.head_dim, 1, err) ||
                               qd_permute_rope_rows(L->bk, c.n_kv_heads, c.head_dim, 1, err)))
                goto fail;
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const qd_gguf_tensor *t = &g->tensors[i];
        int64_t shape[4];
        char b[16];
        for (int d = 0; d < t->n_dims; d++) shape[d] = (int64_t)t->ne[t->n_dims - 1 - d];
        if (qd_tinfo_add(m, t->name, qd_ggml_type_name(t->type, b), t->n_dims, shape, t->nbytes,
                         err))
            goto fail;
    }
    qd_gguf_close(g);
    return m;
fail:
    qd_model_free(m);
    qd_gguf_close(g);
    return NULL;
}
