/* A checkpoint's vocabulary as the in-memory model carries it (qd_model.vocab): token
 * strings, merge scores and types, special ids. Tokenizers (quant/text/) are built from it;
 * readers (quant/io/) fill it. */
#ifndef QD_VOCAB_H
#define QD_VOCAB_H

#include "base/err.h"

/* Token types as GGUF's tokenizer.ggml.token_type stores them. */
enum { QD_TOK_NORMAL = 1, QD_TOK_UNKNOWN = 2, QD_TOK_CONTROL = 3, QD_TOK_USER = 4,
       QD_TOK_UNUSED = 5, QD_TOK_BYTE = 6 };

/* Longest token accepted from any file, in bytes. */
#define QD_TOK_MAX_BYTES 4096

/* A vocabulary as a checkpoint carries it. Tokens are raw bytes with SentencePiece's "▁"
 * (U+2581) standing for a space. Ownership: the struct, tokens, every tokens[i], scores and
 * types are separate malloc'd blocks, all freed by qd_vocab_free (qd_vocab_new makes one). */
typedef struct qd_vocab {
    int n;
    char **tokens;       /* n NUL-terminated strings */
    float *scores;       /* n merge scores (SentencePiece), or NULL (then all 0) */
    int *types;          /* n token types, or NULL (then inferred from the spelling) */
    int bos_id, eos_id, unk_id;   /* -1 when absent */
    int add_bos;         /* encode prepends BOS by default */
    int add_space_prefix;/* SentencePiece dummy prefix */
} qd_vocab;

/* A vocabulary of n tokens with tokens[] zeroed (NULL strings), scores 0, types NORMAL,
 * ids -1, add_bos = add_space_prefix = 1. n in 1..QD_MAX_VOCAB. NULL on failure. */
qd_vocab *qd_vocab_new(int n, qd_err *err);

/* Frees v, its arrays and its strings; NULL is a no-op. */
void qd_vocab_free(qd_vocab *v);

#endif
