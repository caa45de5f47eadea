/* A reusable safetensors reader and writer. The format: an 8-byte little-endian header length
 * N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
 * {str: str}}, then the data block (offsets are relative to it). The reader maps the file
 * read-only and checks everything before anyone indexes with it: header length against the
 * file and QD_ST_MAX_HEADER, dtype names, shape product times element size against the byte
 * range, ranges inside the data block and not overlapping, duplicate names. The writer takes
 * named tensors of any dtype (integer artifacts included) and writes atomically. */
#ifndef QD_SAFETENSORS_H
#define QD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define QD_ST_MAX_HEADER (100u << 20) /* the reference implementation's limit too */
#define QD_ST_MAX_TENSORS (1 << 20)
#define QD_ST_MAX_NDIM 8
#define QD_ST_MAX_NAME 1024

typedef enum qd_st_dtype {
    QD_ST_BOOL, QD_ST_U8, QD_ST_I8, QD_ST_F8_E4M3, QD_ST_F8_E5M2, QD_ST_U16, QD_ST_I16,
    QD_ST_F16, QD_ST_BF16, QD_ST_U32, QD_ST_I32, QD_ST_F32, QD_ST_U64, QD_ST_I64, QD_ST_F64,
    QD_ST_DTYPE_COUNT
} qd_st_dtype;

/* The dtype's name as safetensors spells it ("F32", "BF16", "I8", "F8_E4M3", ...). */
const char *qd_st_dtype_name(qd_st_dtype t);
/* Bytes per element. */
size_t qd_st_dtype_size(qd_st_dtype t);
/* Parses a dtype name; QD_ERR (err untouched) when unknown. */
int qd_st_dtype_parse(const char *name, qd_st_dtype *out);

typedef struct qd_st_tensor {
    char *name;
    qd_st_dtype dtype;
    int ndim;                       /* 0 for a scalar */
    int64_t shape[QD_ST_MAX_NDIM];  /* outermost first */
    uint64_t n_elems;
    size_t nbytes;
    size_t offset;                  /* absolute offset of the first byte in the file */
    const void *data;               /* into the read-only mapping; any alignment */
} qd_st_tensor;

typedef struct qd_st_kv {
    char *key, *value;
} qd_st_kv;

typedef struct qd_st_file {
    char *path;
    int n_tensors;
    qd_st_tensor *tensors;          /* sorted by name */
    int n_meta;
    qd_st_kv *meta;                 /* __metadata__ in header order */
    size_t header_len;              /* N */
    size_t data_start;              /* 8 + N */
    const uint8_t *base;            /* the mapping (private) */
    size_t size;                    /* file size */
} qd_st_file;

/* Opens and validates path. NULL on failure with err naming the file and the field. Close
 * with qd_st_close (tensor data pointers die with it). */
qd_st_file *qd_st_open(const char *path, qd_err *err);
void qd_st_close(qd_st_file *f);

/* The tensor called name, or NULL. */
const qd_st_tensor *qd_st_find(const qd_st_file *f, const char *name);
/* The __metadata__ value for key, or NULL. */
const char *qd_st_meta(const qd_st_file *f, const char *key);

/* One tensor to write: nbytes is product(shape) * dtype size. Either data holds those bytes
 * (little-endian), or data is NULL and f32 holds product(shape) floats that the writer
 * converts to dtype F32, F16 or BF16 (round to nearest even) as it writes, so that saving a
 * model in half precision needs no second copy of it. */
typedef struct qd_st_wtensor {
    const char *name;
    qd_st_dtype dtype;
    int ndim;
    int64_t shape[QD_ST_MAX_NDIM];
    const void *data;
    const float *f32;
} qd_st_wtensor;

/* Writes n tensors (in the given order) and the metadata (NULL, or a NULL-terminated list of
 * key, value, key, value, ...) to path atomically: a temp file in the same directory, fsync,
 * rename, fsync of the directory. QD_ERR with err set; path is untouched on failure. */
int qd_st_write(const char *path, const qd_st_wtensor *t, int n, const char *const *meta,
                qd_err *err);

#endif
