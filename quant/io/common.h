/* Private helpers shared by the checkpoint readers in quant/io/ (gguf, hf, llama2c, and
 * safetensors for the mapping): a read-only file mapping, element conversion to FP32 with
 * the non-finite check, the interleaved -> rotate-half RoPE row permutation, the overlap check of tensor data
 * ranges, and the tensor descriptions kept for `quantd inspect`. Not part of the library's public contract. */
#ifndef QD_MODEL_IO_H
#define QD_MODEL_IO_H

#include <stdio.h>

#include "quant/model.h"

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

/* The byte range [begin, end) of one tensor's data in a file; idx names the tensor. */
typedef struct qd_span {
    uint64_t begin, end;
    uint32_t idx;
} qd_span;

/* Sorts the n spans by begin and returns the first i >= 1 whose span starts before the one
 * before it ends (sp[i - 1].idx and sp[i].idx then name two tensors whose data overlap), or 0
 * when no two overlap. */
size_t qd_spans_overlap(qd_span *sp, size_t n);

/* Appends a tensor description to m->tinfo (grown as needed). shape is outermost first. */
int qd_tinfo_add(qd_model *m, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, size_t bytes, qd_err *err);

#endif
