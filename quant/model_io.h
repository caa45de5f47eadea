/* Private helpers shared by the checkpoint readers (gguf.c, hf.c, llama2c.c, model.c, and
 * safetensors.c for the mapping): a read-only file mapping, element conversion to FP32 with
 * the non-finite check, the interleaved -> rotate-half RoPE row permutation, and the tensor
 * descriptions kept for `quantd inspect`. Not part of the library's public contract. */
#ifndef QD_MODEL_IO_H
#define QD_MODEL_IO_H

#include <stdio.h>

#include "quant/model.h"

/* Dimension kinds for qd_layer_tensors; qd_layer_dim maps one to its size for a config. */
enum { QD_DIM_VEC = 0, QD_DIM_D, QD_DIM_Q, QD_DIM_KV, QD_DIM_F };

/* One tensor of a decoder layer, the single list every reader, writer and the allocator walk:
 * GGUF and Hugging Face name suffixes (after "blk.%d." / "model.layers.%d."), shape as
 * (rows, cols) dims kinds with rows == QD_DIM_VEC for a vector of cols, the qd_layer field at
 * offset, and bias = 1 when the tensor exists only with cfg.qkv_bias. Order is file order. */
typedef struct qd_layer_tensor {
    const char *gguf, *hf;
    int rows, cols;
    size_t offset; /* offsetof(qd_layer, field) */
    int bias;
} qd_layer_tensor;

extern const qd_layer_tensor qd_layer_tensors[];
extern const int qd_n_layer_tensors;

/* The size of dims kind for c (dim, n_heads*head_dim, n_kv_heads*head_dim, hidden_dim), 0 for
 * QD_DIM_VEC. */
int64_t qd_layer_dim(const qd_config *c, int kind);

/* Whether tensor t is present in a model with config c. */
static inline int qd_layer_tensor_on(const qd_config *c, const qd_layer_tensor *t) {
    return !t->bias || c->qkv_bias;
}

/* The qd_layer field that tensor t describes. */
static inline float **qd_layer_slot(qd_layer *L, const qd_layer_tensor *t) {
    return (float **)(void *)((char *)L + t->offset);
}
static inline const float *qd_layer_get(const qd_layer *L, const qd_layer_tensor *t) {
    return *(float *const *)(const void *)((const char *)L + t->offset);
}

/* A whole file mapped read-only. size 0 files map to data == NULL. */
typedef struct qd_map {
    const uint8_t *data;
    size_t size;
} qd_map;

/* Maps path read-only; QD_ERR with err naming the file. */
int qd_map_open(qd_map *m, const char *path, qd_err *err);
void qd_map_close(qd_map *m);

/* Source element types the readers convert from. */
enum { QD_SRC_F32, QD_SRC_F16, QD_SRC_BF16 };

/* Converts n little-endian elements of src type at src (any alignment) into dst and checks
 * that every value is finite. QD_ERR naming path, tensor and the element index otherwise. */
int qd_convert_f32(float *dst, const void *src, int src_type, size_t n, const char *path,
                   const char *tensor, qd_err *err);

/* Permutes the rows of a (n_heads*head_dim, cols) matrix from the interleaved-pair RoPE
 * layout (GGUF, llama2.c) to rotate-half (Hugging Face): within each head,
 * out row j*(hd/2)+i = in row 2i+j. cols = 1 for a bias vector. In place via scratch. */
int qd_permute_rope_rows(float *w, int n_heads, int head_dim, size_t cols, qd_err *err);

/* Appends a tensor description to m->tinfo (grown as needed). shape is outermost first. */
int qd_tinfo_add(qd_model *m, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, size_t bytes, qd_err *err);

/* A file written atomically: data goes to a temp file beside path; commit flushes, fsyncs,
 * renames over path and fsyncs the directory; abort removes the temp file. (safetensors.c) */
typedef struct qd_atomic_file {
    FILE *f;
    char path[4096];
    char tmp[4096 + 16];
} qd_atomic_file;

int qd_atomic_open(qd_atomic_file *a, const char *path, qd_err *err);
int qd_atomic_commit(qd_atomic_file *a, qd_err *err);
void qd_atomic_abort(qd_atomic_file *a);

#endif
