/* A GGUF v3 writer for tests: metadata entries and tensors are appended in order, then the
 * whole file is written at once (32-byte alignment). gb_copy_kv re-serialises an entry read
 * by qd_gguf_open, so a test can rewrite a real file with other tensors. Header-only (static
 * inline) because tests/ *.c files are linked into every test binary. Nothing here is
 * quantd's code: it writes the bytes the GGUF spec describes, independently of the reader. */
#ifndef QD_TESTS_GGUF_BUILD_H
#define QD_TESTS_GGUF_BUILD_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/io/gguf.h"

typedef struct gb_buf {
    uint8_t *p;
    size_t n, cap;
} gb_buf;

typedef struct gguf_build {
    gb_buf kv, ti, data;
    uint64_t n_kv, n_t;
} gguf_build;

static inline void gb_put(gb_buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static inline void gb_u32(gb_buf *b, uint32_t v) { gb_put(b, &v, 4); }
static inline void gb_u64(gb_buf *b, uint64_t v) { gb_put(b, &v, 8); }
static inline void gb_strn(gb_buf *b, const char *s, size_t n) {
    gb_u64(b, n);
    gb_put(b, s, n);
}
static inline void gb_str(gb_buf *b, const char *s) { gb_strn(b, s, strlen(s)); }

static inline void gb_key(gguf_build *g, const char *key, uint32_t type) {
    gb_str(&g->kv, key);
    gb_u32(&g->kv, type);
    g->n_kv++;
}
static inline void gb_kv_str(gguf_build *g, const char *key, const char *v) {
    gb_key(g, key, QD_GGUF_STRING);
    gb_str(&g->kv, v);
}
static inline void gb_kv_u32(gguf_build *g, const char *key, uint32_t v) {
    gb_key(g, key, QD_GGUF_UINT32);
    gb_u32(&g->kv, v);
}
static inline void gb_kv_f32(gguf_build *g, const char *key, float v) {
    gb_key(g, key, QD_GGUF_FLOAT32);
    gb_put(&g->kv, &v, 4);
}
static inline void gb_kv_bool(gguf_build *g, const char *key, int v) {
    uint8_t b = (uint8_t)(v != 0);
    gb_key(g, key, QD_GGUF_BOOL);
    gb_put(&g->kv, &b, 1);
}
static inline void gb_kv_strs(gguf_build *g, const char *key, const char *const *v, int n) {
    gb_key(g, key, QD_GGUF_ARRAY);
    gb_u32(&g->kv, QD_GGUF_STRING);
    gb_u64(&g->kv, (uint64_t)n);
    for (int i = 0; i < n; i++) gb_str(&g->kv, v[i]);
}
static inline void gb_kv_f32s(gguf_build *g, const char *key, const float *v, int n) {
    gb_key(g, key, QD_GGUF_ARRAY);
    gb_u32(&g->kv, QD_GGUF_FLOAT32);
    gb_u64(&g->kv, (uint64_t)n);
    gb_put(&g->kv, v, (size_t)n * 4);
}
static inline void gb_kv_i32s(gguf_build *g, const char *key, const int32_t *v, int n) {
    gb_key(g, key, QD_GGUF_ARRAY);
    gb_u32(&g->kv, QD_GGUF_INT32);
    gb_u64(&g->kv, (uint64_t)n);
    gb_put(&g->kv, v, (size_t)n * 4);
}

static inline size_t gb_scalar_size(uint32_t t) {
    switch (t) {
    case QD_GGUF_UINT8: case QD_GGUF_INT8: case QD_GGUF_BOOL: return 1;
    case QD_GGUF_UINT16: case QD_GGUF_INT16: return 2;
    case QD_GGUF_UINT32: case QD_GGUF_INT32: case QD_GGUF_FLOAT32: return 4;
    default: return 8;
    }
}

/* Copies an entry as qd_gguf_open parsed it (scalars, strings, flat arrays; nested arrays
 * are not copied). Returns 0, or -1 for a nested array. */
static inline int gb_copy_kv(gguf_build *g, const qd_gguf_kv *kv) {
    if (kv->type == QD_GGUF_ARRAY && kv->arr_type == QD_GGUF_ARRAY) return -1;
    gb_key(g, kv->key, kv->type);
    if (kv->type == QD_GGUF_STRING) {
        gb_strn(&g->kv, kv->str, (size_t)kv->str_len);
    } else if (kv->type == QD_GGUF_ARRAY) {
        gb_u32(&g->kv, kv->arr_type);
        gb_u64(&g->kv, kv->arr_n);
        if (kv->arr_type == QD_GGUF_STRING)
            for (uint64_t i = 0; i < kv->arr_n; i++)
                gb_strn(&g->kv, kv->arr_str[i], (size_t)kv->arr_str_len[i]);
        else
            gb_put(&g->kv, kv->arr, (size_t)kv->arr_n * gb_scalar_size(kv->arr_type));
    } else {
        uint64_t raw = kv->u64;
        if (kv->type == QD_GGUF_FLOAT32) {
            float f = (float)kv->f64;
            uint32_t u;
            memcpy(&u, &f, 4);
            raw = u;
        } else if (kv->type == QD_GGUF_FLOAT64) {
            memcpy(&raw, &kv->f64, 8);
        }
        gb_put(&g->kv, &raw, gb_scalar_size(kv->type)); /* little-endian host */
    }
    return 0;
}

/* A tensor: ne in ggml order (ne[0] innermost), nbytes of data of ggml type type. */
static inline void gb_tensor(gguf_build *g, const char *name, uint32_t type, int n_dims,
                             const uint64_t *ne, const void *data, size_t nbytes) {
    while (g->data.n % 32) gb_put(&g->data, "", 1);
    gb_str(&g->ti, name);
    gb_u32(&g->ti, (uint32_t)n_dims);
    for (int d = 0; d < n_dims; d++) gb_u64(&g->ti, ne[d]);
    gb_u32(&g->ti, type);
    gb_u64(&g->ti, g->data.n);
    gb_put(&g->data, data, nbytes);
    g->n_t++;
}

/* Writes the file and frees the builder. 0 on success. */
static inline int gb_write(gguf_build *g, const char *path) {
    gb_buf f = {0};
    gb_put(&f, "GGUF", 4);
    gb_u32(&f, 3);
    gb_u64(&f, g->n_t);
    gb_u64(&f, g->n_kv);
    gb_put(&f, g->kv.p, g->kv.n);
    gb_put(&f, g->ti.p, g->ti.n);
    while (f.n % 32) gb_put(&f, "", 1);
    gb_put(&f, g->data.p, g->data.n);
    FILE *fp = fopen(path, "wb");
    int rc = fp && fwrite(f.p, 1, f.n, fp) == f.n ? 0 : -1;
    if (fp && fclose(fp) != 0) rc = -1;
    free(f.p);
    free(g->kv.p);
    free(g->ti.p);
    free(g->data.p);
    memset(g, 0, sizeof *g);
    return rc;
}

#endif
