/* ggml's quantized block types, dequantized to FP32 at load: the 32-element blocks Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0 and the 256-element super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, written from
 * the block format definitions (ggml-common.h's block_* structs and the meaning of each field),
 * one plain loop per type. The layouts are repeated here as structs whose sizes are checked
 * with _Static_assert against the sizes GGUF files use. */
#ifndef QD_IO_GGML_BLOCKS_H
#define QD_IO_GGML_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

/* ggml type ids, as GGUF numbers them. */
enum {
    QD_GGML_Q4_0 = 2, QD_GGML_Q4_1 = 3, QD_GGML_Q5_0 = 6, QD_GGML_Q5_1 = 7, QD_GGML_Q8_0 = 8,
    QD_GGML_Q2_K = 10, QD_GGML_Q3_K = 11, QD_GGML_Q4_K = 12, QD_GGML_Q5_K = 13,
    QD_GGML_Q6_K = 14
};

#define QD_QK 32    /* elements in a Q4_0 ... Q8_0 block */
#define QD_QK_K 256 /* elements in a K-quant super-block */

/* Each block starts with or ends in IEEE half scales (ggml_half), stored little-endian. */
typedef struct { uint16_t d; uint8_t qs[QD_QK / 2]; } qd_block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QD_QK / 2]; } qd_block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QD_QK / 2]; } qd_block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QD_QK / 2]; } qd_block_q5_1;
typedef struct { uint16_t d; int8_t qs[QD_QK]; } qd_block_q8_0;
typedef struct { uint8_t scales[QD_QK_K / 16]; uint8_t qs[QD_QK_K / 4]; uint16_t d, dmin; } qd_block_q2_K;
typedef struct { uint8_t hmask[QD_QK_K / 8]; uint8_t qs[QD_QK_K / 4]; uint8_t scales[12]; uint16_t d; } qd_block_q3_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QD_QK_K / 2]; } qd_block_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QD_QK_K / 8]; uint8_t qs[QD_QK_K / 2]; } qd_block_q5_K;
typedef struct { uint8_t ql[QD_QK_K / 2]; uint8_t qh[QD_QK_K / 4]; int8_t scales[QD_QK_K / 16]; uint16_t d; } qd_block_q6_K;

_Static_assert(sizeof(qd_block_q4_0) == 18, "block_q4_0 is 18 bytes");
_Static_assert(sizeof(qd_block_q4_1) == 20, "block_q4_1 is 20 bytes");
_Static_assert(sizeof(qd_block_q5_0) == 22, "block_q5_0 is 22 bytes");
_Static_assert(sizeof(qd_block_q5_1) == 24, "block_q5_1 is 24 bytes");
_Static_assert(sizeof(qd_block_q8_0) == 34, "block_q8_0 is 34 bytes");
_Static_assert(sizeof(qd_block_q2_K) == 84, "block_q2_K is 84 bytes");
_Static_assert(sizeof(qd_block_q3_K) == 110, "block_q3_K is 110 bytes");
_Static_assert(sizeof(qd_block_q4_K) == 144, "block_q4_K is 144 bytes");
_Static_assert(sizeof(qd_block_q5_K) == 176, "block_q5_K is 176 bytes");
_Static_assert(sizeof(qd_block_q6_K) == 210, "block_q6_K is 210 bytes");

/* Whether type is one of the block types above. */
int qd_ggml_block_type(uint32_t type);

/* Elements per block and bytes per block of a block type (0 for other types). */
size_t qd_ggml_block_elems(uint32_t type);
size_t qd_ggml_block_bytes(uint32_t type);

/* Dequantizes n elements (a multiple of the block size) of a block type from src (any
 * alignment, n / block_elems blocks) into dst. Returns 0, or -1 for a type that is not a
 * block type or an n that is not a whole number of blocks. */
int qd_ggml_dequantize(uint32_t type, const void *src, float *dst, size_t n);

#endif
