/* Helpers every checkpoint reader shares: a read-only file mapping, conversion to FP32 with the
 * NaN/Inf check, the RoPE row permutation and the tensor descriptions for `quantd inspect`. */
#include "quant/io/common.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/stop.h"
#include "quant/io/half.h"

int qd_map_open(qd_map *m, const char *path, qd_err *err) {
    m->data = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qd_errf(err, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return QD_OK;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return qd_errf(err, "%s: mmap failed: %s", path, strerror(errno));
    m->data = p;
    m->size = (size_t)st.st_size;
    return QD_OK;
}

void qd_map_close(qd_map *m) {
    if (m->data) munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

int qd_convert_f32(float *dst, const void *src, int src_type, size_t n, const char *path,
                   const char *tensor, qd_err *err) {
    const uint8_t *s = src;
    if (qd_stop_requested()) return qd_stopped(err); /* once per tensor: load stops promptly */
    switch (src_type) {
    case QD_SRC_F32:
        memcpy(dst, s, n * sizeof(float));
        break;
    case QD_SRC_F16:
    case QD_SRC_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(s[2 * i] | s[2 * i + 1] << 8);
            dst[i] = src_type == QD_SRC_F16 ? qd_fp16_to_f32(h) : qd_bf16_to_f32(h);
        }
        break;
    default:
        return qd_errf(err, "%s: tensor %s: internal: unknown source type %d", path, tensor,
                       src_type);
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return qd_errf(err, "%s: tensor %s: element %zu is %s", path, tensor, i,
                           isnan(dst[i]) ? "NaN" : "Inf");
    return QD_OK;
}

int qd_permute_rope_rows(float *w, int n_heads, int head_dim, size_t cols, qd_err *err) {
    size_t head_floats = (size_t)head_dim * cols;
    float *tmp = malloc(head_floats * sizeof(float));
    if (!tmp) return qd_errf(err, "%s: out of memory", __func__);
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *W = w + (size_t)h * head_floats;
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(tmp + (size_t)(j * half + i) * cols, W + (size_t)(2 * i + j) * cols,
                       cols * sizeof(float));
        memcpy(W, tmp, head_floats * sizeof(float));
    }
    free(tmp);
    return QD_OK;
}

static int cmp_span(const void *a, const void *b) {
    uint64_t x = ((const qd_span *)a)->begin, y = ((const qd_span *)b)->begin;
    return x < y ? -1 : x > y;
}

size_t qd_spans_overlap(qd_span *sp, size_t n) {
    if (n < 2) return 0;
    qsort(sp, n, sizeof *sp, cmp_span);
    for (size_t i = 1; i < n; i++)
        if (sp[i].begin < sp[i - 1].end) return i;
    return 0;
}

int qd_tinfo_add(qd_model *m, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, size_t bytes, qd_err *err) {
    /* Capacity is implicit: 16, then doubled whenever the count reaches a power of two. */
    int n = m->n_tinfo;
    if (n == 0 || (n >= 16 && (n & (n - 1)) == 0)) {
        size_t cap = n == 0 ? 16 : (size_t)n * 2;
        qd_tensor_info *t = realloc(m->tinfo, cap * sizeof *t);
        if (!t) return qd_errf(err, "%s: out of memory", __func__);
        m->tinfo = t;
    }
    qd_tensor_info *t = &m->tinfo[m->n_tinfo++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->ndim = ndim > 4 ? 4 : ndim;
    for (int i = 0; i < t->ndim; i++) t->shape[i] = shape[i];
    t->bytes = bytes;
    return QD_OK;
}
