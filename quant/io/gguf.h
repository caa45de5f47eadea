/* GGUF (v2, v3) reader. The file is mapped read-only; the parser walks the header with a
 * bounded cursor, so every count, string length, array length, dimension and tensor offset is
 * checked against QD_GGUF_MAX_* and against the bytes that remain before it is used. All
 * metadata value types are parsed (nested arrays too, to a bounded depth); tensors of any
 * ggml type are described, and qd_load_gguf (io/load.h) converts F32/F16/BF16 and the block
 * types of ggml_blocks.h (Q4_0 ... Q8_0, Q2_K ... Q6_K) to FP32. */
#ifndef QD_GGUF_H
#define QD_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

struct qd_vocab;

#define QD_GGUF_MAX_TENSORS (1 << 16)
#define QD_GGUF_MAX_KV (1 << 16)
#define QD_GGUF_MAX_STRING (1 << 24)     /* one string value or key, bytes */
#define QD_GGUF_MAX_ARRAY (1 << 26)      /* elements of one array */
#define QD_GGUF_MAX_DIMS 4
#define QD_GGUF_MAX_DEPTH 4              /* nesting of arrays of arrays */

/* Metadata value types, numbered as the GGUF spec numbers them. */
enum {
    QD_GGUF_UINT8 = 0, QD_GGUF_INT8 = 1, QD_GGUF_UINT16 = 2, QD_GGUF_INT16 = 3,
    QD_GGUF_UINT32 = 4, QD_GGUF_INT32 = 5, QD_GGUF_FLOAT32 = 6, QD_GGUF_BOOL = 7,
    QD_GGUF_STRING = 8, QD_GGUF_ARRAY = 9, QD_GGUF_UINT64 = 10, QD_GGUF_INT64 = 11,
    QD_GGUF_FLOAT64 = 12, QD_GGUF_TYPE_COUNT
};

/* ggml tensor types this reader converts; others are described but refused by the loader. */
enum { QD_GGML_F32 = 0, QD_GGML_F16 = 1, QD_GGML_BF16 = 30 };

typedef struct qd_gguf_kv {
    char *key;                 /* NUL-terminated copy */
    uint32_t type;             /* QD_GGUF_* */
    /* scalars, widened: integers and bools in i64/u64 (both set), floats in f64 */
    int64_t i64;
    uint64_t u64;
    double f64;
    char *str;                 /* STRING: NUL-terminated copy (str_len bytes before the NUL) */
    uint64_t str_len;
    /* ARRAY */
    uint32_t arr_type;         /* element type */
    uint64_t arr_n;            /* element count */
    const uint8_t *arr;        /* numeric elements, raw little-endian, in the mapping */
    const char **arr_str;      /* STRING arrays: arr_n pointers into the mapping (not NUL-ended) */
    uint64_t *arr_str_len;     /* ... and their lengths */
} qd_gguf_kv;

typedef struct qd_gguf_tensor {
    char *name;
    uint32_t type;             /* ggml type */
    int n_dims;
    uint64_t ne[QD_GGUF_MAX_DIMS]; /* ggml order: ne[0] is the innermost (contiguous) dim */
    uint64_t n_elems;
    uint64_t offset;           /* relative to the data section */
    size_t nbytes;             /* 0 when the type's size is unknown to this reader */
    const void *data;          /* into the mapping, or NULL when nbytes is 0 */
} qd_gguf_tensor;

typedef struct qd_gguf {
    char *path;
    uint32_t version;
    uint64_t n_kv;
    qd_gguf_kv *kv;
    uint64_t n_tensors;
    qd_gguf_tensor *tensors;
    uint32_t alignment;
    size_t data_start;         /* file offset of the data section */
    const uint8_t *base;       /* the mapping (private) */
    size_t size;
} qd_gguf;

/* Opens and validates a GGUF file. NULL on failure with err naming the file and the field. */
qd_gguf *qd_gguf_open(const char *path, qd_err *err);
void qd_gguf_close(qd_gguf *g);

const qd_gguf_kv *qd_gguf_find(const qd_gguf *g, const char *key);
const qd_gguf_tensor *qd_gguf_find_tensor(const qd_gguf *g, const char *name);

/* Integer metadata (any integer or bool type) into *out. 0 found, 1 absent (out untouched),
 * QD_ERR when present with a non-integer type or a value outside [lo, hi] (err names key). */
int qd_gguf_get_int(const qd_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t *out,
                    qd_err *err);
/* Float metadata (float32/float64, or an integer) into *out; same returns. */
int qd_gguf_get_float(const qd_gguf *g, const char *key, double *out, qd_err *err);

/* Name of a ggml type ("F32", "Q4_K", ...), or "type<N>" in buf for unknown ones. */
const char *qd_ggml_type_name(uint32_t type, char buf[16]);

/* The vocabulary in a GGUF file's tokenizer.ggml.* metadata. NULL on failure with err set
 * (a file without tokenizer.ggml.tokens is a failure). Free with qd_vocab_free. */
struct qd_vocab *qd_gguf_load_vocab(const char *path, qd_err *err);
/* The same from an opened file. */
struct qd_vocab *qd_gguf_vocab(const qd_gguf *g, qd_err *err);

#endif
