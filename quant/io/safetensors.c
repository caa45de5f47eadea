/* safetensors reader (validating, over a read-only mapping) and atomic writer. See
 * safetensors.h for the format and what is checked. */
#include "quant/io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant/io/half.h"
#include "quant/io/common.h"
#include "base/fs.h"

static const struct {
    const char *name;
    size_t size;
} DTYPES[QD_ST_DTYPE_COUNT] = {
    [QD_ST_BOOL] = {"BOOL", 1},       [QD_ST_U8] = {"U8", 1},     [QD_ST_I8] = {"I8", 1},
    [QD_ST_F8_E4M3] = {"F8_E4M3", 1}, [QD_ST_F8_E5M2] = {"F8_E5M2", 1},
    [QD_ST_U16] = {"U16", 2},         [QD_ST_I16] = {"I16", 2},   [QD_ST_F16] = {"F16", 2},
    [QD_ST_BF16] = {"BF16", 2},       [QD_ST_U32] = {"U32", 4},   [QD_ST_I32] = {"I32", 4},
    [QD_ST_F32] = {"F32", 4},         [QD_ST_U64] = {"U64", 8},   [QD_ST_I64] = {"I64", 8},
    [QD_ST_F64] = {"F64", 8},
};

const char *qd_st_dtype_name(qd_st_dtype t) {
    return (unsigned)t < QD_ST_DTYPE_COUNT ? DTYPES[t].name : "?";
}

size_t qd_st_dtype_size(qd_st_dtype t) {
    return (unsigned)t < QD_ST_DTYPE_COUNT ? DTYPES[t].size : 0;
}

int qd_st_dtype_parse(const char *name, qd_st_dtype *out) {
    for (int i = 0; i < QD_ST_DTYPE_COUNT; i++)
        if (strcmp(DTYPES[i].name, name) == 0) {
            *out = (qd_st_dtype)i;
            return QD_OK;
        }
    return QD_ERR;
}

/* ---- reader ---- */

/* JSON numbers are doubles: accept only exact non-negative integers below 2^53. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return QD_ERR;
    double d = j->valuedouble;
    if (!isfinite(d) || d < 0 || d > 9007199254740992.0 || d != floor(d)) return QD_ERR;
    *out = (uint64_t)d;
    return QD_OK;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const qd_st_tensor *)a)->name, ((const qd_st_tensor *)b)->name);
}

static int parse_tensor(qd_st_file *f, const cJSON *j, qd_st_tensor *t, size_t data_size,
                        qd_err *err) {
    const char *p = f->path, *nm = j->string;
    if (strlen(nm) > QD_ST_MAX_NAME)
        return qd_errf(err, "%s: tensor name of %zu bytes exceeds %d", p, strlen(nm),
                       QD_ST_MAX_NAME);
    if (!cJSON_IsObject(j)) return qd_errf(err, "%s: tensor '%s': entry is not an object", p, nm);
    t->name = strdup(nm);
    if (!t->name) return qd_errf(err, "%s: out of memory", p);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    if (!cJSON_IsString(dt))
        return qd_errf(err, "%s: tensor '%s': dtype missing or not a string", p, nm);
    if (qd_st_dtype_parse(dt->valuestring, &t->dtype) != QD_OK)
        return qd_errf(err, "%s: tensor '%s': unknown dtype '%.32s'", p, nm, dt->valuestring);
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    if (!cJSON_IsArray(sh)) return qd_errf(err, "%s: tensor '%s': shape missing", p, nm);
    int nd = cJSON_GetArraySize(sh);
    if (nd > QD_ST_MAX_NDIM)
        return qd_errf(err, "%s: tensor '%s': shape has %d dims, limit %d", p, nm, nd,
                       QD_ST_MAX_NDIM);
    t->ndim = nd;
    uint64_t n = 1;
    int k = 0, overflow = 0;
    for (const cJSON *d = sh->child; d; d = d->next, k++) {
        uint64_t v;
        if (json_uint(d, &v) != QD_OK)
            return qd_errf(err, "%s: tensor '%s': shape[%d] is not a non-negative integer", p,
                           nm, k);
        t->shape[k] = (int64_t)v;
        if (__builtin_mul_overflow(n, v, &n)) overflow = 1;
    }
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    uint64_t b, e;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(off->child, &b) ||
        json_uint(off->child->next, &e))
        return qd_errf(err,
                       "%s: tensor '%s': data_offsets must be [begin, end] with integers in "
                       "[0, 2^53]",
                       p, nm);
    if (b > e || e > data_size)
        return qd_errf(err,
                       "%s: tensor '%s': data_offsets [%llu, %llu] out of range (data block "
                       "is %zu bytes)",
                       p, nm, (unsigned long long)b, (unsigned long long)e, data_size);
    uint64_t want;
    if (overflow || __builtin_mul_overflow(n, (uint64_t)qd_st_dtype_size(t->dtype), &want) ||
        want != e - b)
        return qd_errf(err,
                       "%s: tensor '%s': shape and dtype %s need %s%llu bytes but data_offsets "
                       "span %llu",
                       p, nm, qd_st_dtype_name(t->dtype), overflow ? "more than " : "",
                       overflow ? (unsigned long long)UINT64_MAX : (unsigned long long)want,
                       (unsigned long long)(e - b));
    t->n_elems = n;
    t->nbytes = (size_t)(e - b);
    t->offset = f->data_start + (size_t)b;
    t->data = f->base + t->offset;
    return QD_OK;
}

static int parse_meta(qd_st_file *f, const cJSON *j, qd_err *err) {
    if (!cJSON_IsObject(j)) return qd_errf(err, "%s: __metadata__ is not an object", f->path);
    int n = cJSON_GetArraySize(j);
    f->meta = calloc((size_t)n + 1, sizeof *f->meta);
    if (!f->meta) return qd_errf(err, "%s: out of memory", f->path);
    for (const cJSON *m = j->child; m; m = m->next) {
        if (!cJSON_IsString(m))
            return qd_errf(err, "%s: __metadata__ '%.64s' is not a string", f->path, m->string);
        qd_st_kv *kv = &f->meta[f->n_meta++];
        kv->key = strdup(m->string);
        kv->value = strdup(m->valuestring);
        if (!kv->key || !kv->value) return qd_errf(err, "%s: out of memory", f->path);
    }
    return QD_OK;
}

static int parse_header(qd_st_file *f, qd_err *err) {
    const char *p = f->path;
    if (f->size < 8)
        return qd_errf(err, "%s: truncated: %zu bytes, need at least 8 for the header length", p,
                       f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->base[i];
    if (n > QD_ST_MAX_HEADER)
        return qd_errf(err, "%s: header length %llu exceeds limit %u", p, (unsigned long long)n,
                       QD_ST_MAX_HEADER);
    if (n > f->size - 8)
        return qd_errf(err, "%s: header length %llu runs past end of file (%zu bytes)", p,
                       (unsigned long long)n, f->size);
    if (n < 2 || f->base[8] != '{')
        return qd_errf(err, "%s: bad magic: header is not a JSON object (not safetensors)", p);
    f->header_len = (size_t)n;
    f->data_start = 8 + (size_t)n;
    cJSON *root = cJSON_ParseWithLength((const char *)f->base + 8, (size_t)n);
    if (!root) return qd_errf(err, "%s: header is not valid JSON", p);
    int rc = QD_ERR;
    if (!cJSON_IsObject(root)) {
        qd_errf(err, "%s: header is not a JSON object", p);
        goto out;
    }
    int count = cJSON_GetArraySize(root);
    if (count > QD_ST_MAX_TENSORS + 1) {
        qd_errf(err, "%s: header holds %d entries, limit %d", p, count, QD_ST_MAX_TENSORS);
        goto out;
    }
    f->tensors = calloc((size_t)count + 1, sizeof *f->tensors);
    if (!f->tensors) {
        qd_errf(err, "%s: out of memory", p);
        goto out;
    }
    size_t data_size = f->size - f->data_start;
    for (const cJSON *j = root->child; j; j = j->next) {
        if (strcmp(j->string, "__metadata__") == 0) {
            if (f->meta) {
                qd_errf(err, "%s: duplicate __metadata__", p);
                goto out;
            }
            if (parse_meta(f, j, err) != QD_OK) goto out;
            continue;
        }
        if (parse_tensor(f, j, &f->tensors[f->n_tensors++], data_size, err) != QD_OK) goto out;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_name);
    for (int i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            qd_errf(err, "%s: duplicate tensor name '%s'", p, f->tensors[i].name);
            goto out;
        }
    /* Overlap check over the ranges sorted by start; empty tensors overlap nothing. */
    qd_span *sp = malloc(((size_t)f->n_tensors + 1) * sizeof *sp);
    if (!sp) {
        qd_errf(err, "%s: out of memory", p);
        goto out;
    }
    size_t m = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].nbytes)
            sp[m++] = (qd_span){f->tensors[i].offset, f->tensors[i].offset + f->tensors[i].nbytes,
                                (uint32_t)i};
    size_t ov = qd_spans_overlap(sp, m);
    if (ov) {
        qd_errf(err, "%s: data_offsets of tensors '%s' and '%s' overlap", p,
                f->tensors[sp[ov - 1].idx].name, f->tensors[sp[ov].idx].name);
        free(sp);
        goto out;
    }
    free(sp);
    rc = QD_OK;
out:
    cJSON_Delete(root);
    return rc;
}

qd_st_file *qd_st_open(const char *path, qd_err *err) {
    qd_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        qd_errf(err, "%s: out of memory", path);
        return NULL;
    }
    qd_map map;
    if (qd_map_open(&map, path, err) != QD_OK) {
        qd_st_close(f);
        return NULL;
    }
    f->base = map.data;
    f->size = map.size;
    if (parse_header(f, err) != QD_OK) {
        qd_st_close(f);
        return NULL;
    }
    return f;
}

void qd_st_close(qd_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->meta);
    qd_map map = {f->base, f->size};
    qd_map_close(&map);
    free(f->path);
    free(f);
}

const qd_st_tensor *qd_st_find(const qd_st_file *f, const char *name) {
    if (!f || !f->n_tensors) return NULL;
    qd_st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof key, cmp_name);
}

const char *qd_st_meta(const qd_st_file *f, const char *key) {
    for (int i = 0; f && i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

/* ---- writer ---- */

/* Streams n floats as dtype (F32, F16, BF16) in little-endian through a small buffer. */
static int write_f32_as(FILE *f, const float *x, size_t n, qd_st_dtype dtype) {
    uint8_t buf[8192];
    size_t es = qd_st_dtype_size(dtype), per = sizeof buf / es;
    for (size_t i = 0; i < n; i += per) {
        size_t k = n - i < per ? n - i : per;
        for (size_t j = 0; j < k; j++) {
            uint32_t v = dtype == QD_ST_F32   ? qd_f32_bits(x[i + j])
                         : dtype == QD_ST_F16 ? qd_f32_to_fp16(x[i + j])
                                              : qd_f32_to_bf16(x[i + j]);
            for (size_t b = 0; b < es; b++) buf[j * es + b] = (uint8_t)(v >> (8 * b));
        }
        if (fwrite(buf, es, k, f) != k) return QD_ERR;
    }
    return QD_OK;
}

int qd_st_write(const char *path, const qd_st_wtensor *t, int n, const char *const *meta,
                qd_err *err) {
    if (n < 0 || n > QD_ST_MAX_TENSORS)
        return qd_errf(err, "%s: %d tensors, limit %d", path, n, QD_ST_MAX_TENSORS);
    cJSON *root = cJSON_CreateObject();
    char *hdr = NULL;
    int rc = QD_ERR;
    if (!root) return qd_errf(err, "%s: out of memory", path);
    if (meta && meta[0]) {
        cJSON *mj = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; mj && meta[i]; i += 2) {
            if (!meta[i + 1]) {
                qd_errf(err, "%s: metadata key '%s' has no value", path, meta[i]);
                goto out;
            }
            cJSON_AddStringToObject(mj, meta[i], meta[i + 1]);
        }
    }
    uint64_t off = 0;
    size_t *sizes = calloc((size_t)n + 1, sizeof *sizes);
    if (!sizes) {
        qd_errf(err, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const qd_st_wtensor *w = &t[i];
        if (!w->name || !*w->name || strcmp(w->name, "__metadata__") == 0 ||
            (unsigned)w->dtype >= QD_ST_DTYPE_COUNT || w->ndim < 0 || w->ndim > QD_ST_MAX_NDIM) {
            qd_errf(err, "%s: tensor %d ('%s'): bad name, dtype or ndim", path, i,
                    w->name ? w->name : "(null)");
            free(sizes);
            goto out;
        }
        if (cJSON_GetObjectItemCaseSensitive(root, w->name)) {
            qd_errf(err, "%s: duplicate tensor name '%s'", path, w->name);
            free(sizes);
            goto out;
        }
        uint64_t ne = 1;
        int bad = 0;
        for (int d = 0; d < w->ndim; d++)
            if (w->shape[d] < 0 || __builtin_mul_overflow(ne, (uint64_t)w->shape[d], &ne))
                bad = 1;
        uint64_t nb;
        if (bad || __builtin_mul_overflow(ne, (uint64_t)qd_st_dtype_size(w->dtype), &nb) ||
            nb > (uint64_t)SIZE_MAX || (nb && !w->data && !w->f32) ||
            (!w->data && w->f32 && w->dtype != QD_ST_F32 && w->dtype != QD_ST_F16 &&
             w->dtype != QD_ST_BF16)) {
            qd_errf(err, "%s: tensor '%s': bad shape or missing data", path, w->name);
            free(sizes);
            goto out;
        }
        sizes[i] = (size_t)nb;
        cJSON *o = cJSON_AddObjectToObject(root, w->name);
        cJSON_AddStringToObject(o, "dtype", qd_st_dtype_name(w->dtype));
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < w->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)w->shape[d]));
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    hdr = cJSON_PrintUnformatted(root);
    if (!hdr) {
        qd_errf(err, "%s: out of memory", path);
        free(sizes);
        goto out;
    }
    /* Pad the header with spaces so the data block starts 8-byte aligned, as the reference
     * writer does; readers that map the file can then use aligned loads. */
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    qd_atomic_file af;
    if (qd_atomic_open(&af, path, err) != QD_OK) {
        free(sizes);
        goto out;
    }
    fwrite(len8, 1, 8, af.f);
    fwrite(hdr, 1, hl, af.f);
    for (size_t i = hl; i < padded; i++) fputc(' ', af.f);
    for (int i = 0; i < n; i++) {
        if (!sizes[i]) continue;
        if (t[i].data) {
            if (fwrite(t[i].data, 1, sizes[i], af.f) != sizes[i]) break;
        } else if (write_f32_as(af.f, t[i].f32, sizes[i] / qd_st_dtype_size(t[i].dtype),
                                t[i].dtype) != QD_OK) {
            break;
        }
    }
    free(sizes);
    rc = qd_atomic_commit(&af, err);
out:
    free(hdr);
    cJSON_Delete(root);
    return rc;
}
