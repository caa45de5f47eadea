/* Calibration / evaluation data: UTF-8 .txt, .jsonl with a "text" field, or pre-tokenized
 * little-endian uint16/uint32 .bin. Everything becomes one token stream.
 *
 * Formats, chosen by the file name (case-insensitive) unless a format is passed:
 *   .txt       UTF-8 text (a leading UTF-8 BOM is skipped). CRLF becomes LF; documents are
 *              separated by "<|endoftext|>" (TinyStories' separator); each is trimmed of
 *              ASCII whitespace, and the non-empty ones are encoded with BOS in front.
 *   .jsonl     one JSON object per line with a string "text" field (blank lines skipped);
 *              each non-empty text is a document, encoded with BOS in front.
 *   .u32.bin   little-endian uint32 token ids.
 *   .u16.bin   little-endian uint16 token ids; a plain ".bin" is uint16 too (the nanoGPT /
 *              llama2.c convention). Name a uint32 file ".u32.bin": the width is never guessed
 *              from the contents.
 *   other      sniffed: valid UTF-8 whose first non-blank byte is '{' is .jsonl, other valid
 *              UTF-8 without NUL bytes is .txt, anything else is an error asking for a name.
 * Every id is checked < vocab_size (error names the index and the value); empty input (no
 * tokens at all), invalid UTF-8 (byte offset), bad JSON (line number) are errors. Files are
 * limited to QD_DATA_MAX_BYTES. */
#ifndef QD_DATA_H
#define QD_DATA_H

#include "base/err.h"
#include "quant/text/tokenizer.h"

#define QD_DATA_MAX_BYTES ((size_t)4 << 30)

enum { QD_DATA_AUTO = 0, QD_DATA_TXT, QD_DATA_JSONL, QD_DATA_U16, QD_DATA_U32 };

typedef struct qd_tokens {
    int *ids;
    size_t n;
} qd_tokens;

/* Reads path and tokenizes it with tok (not needed for .bin). Text documents are encoded with
 * BOS at the start of each document. vocab_size <= 0 means the tokenizer's. out->ids is
 * malloc'd (free with qd_tokens_free). QD_ERR with err naming the file on failure, out
 * zeroed. */
int qd_data_load(const char *path, const qd_tokenizer *tok, int vocab_size, qd_tokens *out,
                 qd_err *err);

/* As qd_data_load with the format given (QD_DATA_*; AUTO = by name, then sniffed): for
 * content-addressed blobs whose names carry no extension. */
int qd_data_load_as(const char *path, int format, const qd_tokenizer *tok, int vocab_size,
                    qd_tokens *out, qd_err *err);

/* The same on len bytes in memory; name is used in messages only. */
int qd_data_parse(const char *name, int format, const char *buf, size_t len,
                  const qd_tokenizer *tok, int vocab_size, qd_tokens *out, qd_err *err);

/* The format a file name implies (QD_DATA_TXT...), or QD_DATA_AUTO when it implies none. */
int qd_data_format_of(const char *path);

/* Parses "txt", "jsonl", "u16", "u32", "auto" (a job spec's field); -1 when unknown. */
int qd_data_format_parse(const char *s);

/* Frees t->ids and zeroes t; NULL is a no-op. */
void qd_tokens_free(qd_tokens *t);

#endif
