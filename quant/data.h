/* Calibration / evaluation data: UTF-8 .txt, .jsonl with a "text" field, or pre-tokenized
 * little-endian uint16/uint32 .bin. Everything becomes one token stream. */
#ifndef QD_DATA_H
#define QD_DATA_H

#include "quant/qd.h"
#include "quant/tokenizer.h"

typedef struct qd_tokens {
    int *ids;
    size_t n;
} qd_tokens;

/* Reads path and tokenizes it with tok (not needed for .bin). Text documents are encoded with
 * BOS at the start of each document (a .txt's "<|endoftext|>" separators and each .jsonl line
 * start a document). Pre-tokenized .bin: uint16 unless the name ends in .u32.bin or
 * ".bin" with a size not divisible by 2. Every id is checked < vocab_size. Empty input,
 * invalid UTF-8 (with byte offset), bad JSON (with line number) are errors. */
int qd_data_load(const char *path, const qd_tokenizer *tok, int vocab_size, qd_tokens *out,
                 qd_err *err);

void qd_tokens_free(qd_tokens *t);

#endif
