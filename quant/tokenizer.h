/* Tokenizers: SentencePiece-style BPE (the vocabulary inside GGUF, llama2.c tokenizer.bin)
 * and Hugging Face tokenizer.json (BPE with byte fallback). One opaque qd_tokenizer encodes
 * UTF-8 text to ids and decodes ids back to bytes. */
#ifndef QD_TOKENIZER_H
#define QD_TOKENIZER_H

#include "quant/qd.h"

/* Token types as GGUF's tokenizer.ggml.token_type stores them. */
enum { QD_TOK_NORMAL = 1, QD_TOK_UNKNOWN = 2, QD_TOK_CONTROL = 3, QD_TOK_USER = 4,
       QD_TOK_UNUSED = 5, QD_TOK_BYTE = 6 };

/* A vocabulary as a checkpoint carries it. Tokens are raw bytes with SentencePiece's "▁"
 * (U+2581) standing for a space where the source uses it. Owned strings; free with
 * qd_vocab_free. */
typedef struct qd_vocab {
    int n;
    char **tokens;       /* n NUL-terminated strings */
    float *scores;       /* n merge scores (SentencePiece), or NULL */
    int *types;          /* n token types, or NULL */
    int bos_id, eos_id, unk_id;   /* -1 when absent */
    int add_bos;         /* encode prepends BOS by default */
    int add_space_prefix;/* SentencePiece dummy prefix */
} qd_vocab;

void qd_vocab_free(qd_vocab *v);

typedef struct qd_tokenizer qd_tokenizer;

/* Builds a SentencePiece-style BPE tokenizer from a vocabulary (copied). NULL on failure. */
qd_tokenizer *qd_tok_from_vocab(const qd_vocab *v, qd_err *err);

/* Loads a tokenizer file: llama2.c tokenizer.bin, Hugging Face tokenizer.json, or the
 * vocabulary inside a .gguf. NULL on failure with err naming the file and the field. */
qd_tokenizer *qd_tok_load(const char *path, qd_err *err);

void qd_tok_free(qd_tokenizer *t);

int qd_tok_vocab_size(const qd_tokenizer *t);
int qd_tok_bos(const qd_tokenizer *t);
int qd_tok_eos(const qd_tokenizer *t);

/* Encodes len bytes of UTF-8 text. *ids is malloc'd (caller frees), *n_ids its length.
 * add_bos prepends BOS. Invalid UTF-8 is an error naming the byte offset. */
int qd_tok_encode(const qd_tokenizer *t, const char *text, size_t len, int add_bos,
                  int **ids, size_t *n_ids, qd_err *err);

/* The bytes of one token as text, given the previous token (SentencePiece drops the leading
 * space after BOS; byte tokens <0xXX> become the raw byte). Returns a pointer valid while t
 * lives and sets *len. */
const char *qd_tok_piece(const qd_tokenizer *t, int prev, int id, size_t *len);

/* Decodes ids to a malloc'd NUL-terminated string (caller frees). NULL on bad id. */
char *qd_tok_decode(const qd_tokenizer *t, const int *ids, size_t n, qd_err *err);

#endif
