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

/* Most BPE merges accepted from any file (Llama-3 has 280147). */
#define QD_MAX_MERGES (1 << 22)

/* What the vocabulary is for (GGUF's tokenizer.ggml.model): SentencePiece-style BPE over
 * scores with "\xe2\x96\x81" for a space and <0xNN> byte tokens ("llama"), or byte-level BPE
 * over ranked merges with GPT-2's byte-to-unicode spelling ("gpt2"). */
enum { QD_VOCAB_SPM = 0, QD_VOCAB_BPE = 1 };

/* A vocabulary as a checkpoint carries it. SPM tokens are raw bytes with SentencePiece's "▁"
 * (U+2581) standing for a space; BPE tokens are spelled in GPT-2's byte-to-unicode alphabet
 * ("Ġ" for a space), as tokenizer.json and GGUF store them. Ownership: the struct, tokens,
 * every tokens[i], scores, types, merges and every merges[i] are separate malloc'd blocks, all
 * freed by qd_vocab_free (qd_vocab_new makes one). */
typedef struct qd_vocab {
    int n;
    char **tokens;       /* n NUL-terminated strings */
    float *scores;       /* n merge scores (SentencePiece), or NULL (then all 0) */
    int *types;          /* n token types, or NULL (then inferred from the spelling) */
    int bos_id, eos_id, unk_id;   /* -1 when absent */
    int add_bos;         /* encode prepends BOS by default */
    int add_space_prefix;/* SentencePiece dummy prefix */
    int kind;            /* QD_VOCAB_SPM or QD_VOCAB_BPE */
    char pre[64];        /* BPE pre-tokenizer name (tokenizer.ggml.pre: "llama-bpe", "qwen2",
                            "smollm", ...), "" when the file names none */
    int n_merges;        /* BPE merges in rank order (0 for SPM) */
    char **merges;       /* n_merges "left right" strings, or NULL; the two tokens are split
                            at the first space after the first byte (llama.cpp's rule) */
} qd_vocab;

/* A vocabulary of n tokens with tokens[] zeroed (NULL strings), scores 0, types NORMAL,
 * ids -1, add_bos = add_space_prefix = 1, kind SPM, no merges. n in 1..QD_MAX_VOCAB. NULL on
 * failure. */
qd_vocab *qd_vocab_new(int n, qd_err *err);

/* Frees v, its arrays and its strings; NULL is a no-op. */
void qd_vocab_free(qd_vocab *v);

#endif
