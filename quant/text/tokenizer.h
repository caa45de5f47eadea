/* Tokenizers: SentencePiece-style BPE (the vocabulary inside GGUF, llama2.c tokenizer.bin),
 * byte-level BPE (GGUF gpt2 vocabularies) and Hugging Face tokenizer.json (BPE with byte
 * fallback, or byte-level with Split/Digits/ByteLevel pre-tokenizers). One opaque qd_tokenizer encodes
 * UTF-8 text to ids and decodes ids back to bytes.
 *
 * Every source is turned into one vocabulary convention: pieces spell a space as "▁" (U+2581),
 * BOS/EOS are "<s>"/"</s>" control tokens, raw bytes are "<0xXX>" byte tokens. So the
 * tokenizer.bin and the GGUF forms of one vocabulary give identical ids.
 *
 * Encoding, SentencePiece BPE (GGUF vocab, tokenizer.bin): optional dummy-prefix space, spaces
 * -> "▁", split into UTF-8 characters, then repeatedly merge the adjacent pair whose
 * concatenation is a vocabulary piece with the highest score (ties: leftmost first); a final
 * symbol that is not a piece becomes its bytes' <0xXX> tokens (or UNK). Control and byte
 * pieces never take part in merges, and special-token text in the input ("<s>") is encoded
 * as plain characters.
 *
 * Encoding, Hugging Face BPE (SentencePiece-like: Metaspace, Prepend/Replace): the input is
 * first split on the added_tokens' contents (those become their ids directly), each remaining
 * segment is normalized (Prepend "▁" and Replace " " -> "▁", or the Metaspace pre-tokenizer),
 * split into characters (unknown ones by byte fallback) and merged by the rank of the
 * "merges" list (lowest first, ties leftmost).
 *
 * Encoding, byte-level BPE (tokenizer.json with ByteLevel, Split or Digits pre-tokenizers, as
 * the Rust tokenizers library runs it; GGUF tokenizer.ggml.model gpt2): added tokens are
 * matched leftmost-longest in the raw text (special ones and those with normalized false) and
 * after normalization (the others), with their single_word, lstrip and rstrip flags; each
 * segment between them is normalized (NFC/NFD/NFKC/
 * NFKD by utf8proc), cut by the pre-tokenizer steps in order (Split: the file's regex by PCRE2
 * with UTF and Unicode properties, with its behavior and invert; Digits: Unicode numeric
 * characters, one by one or in runs; ByteLevel: optional prefix space, GPT-2's regex, then
 * each byte as its character of GPT-2's byte-to-unicode alphabet), and each piece is merged
 * by rank (with ignore_merges a piece that is a vocabulary token is taken whole; a character
 * with no token, no byte fallback and no unk is dropped, as tokenizers drops it). GGUF's
 * tokenizer.ggml.pre picks the steps: gpt2, smollm, llama-bpe (ignore_merges), qwen2 (NFC).
 * Unsupported forms (an unknown normalizer or pre-tokenizer, a subword prefix or suffix, BPE
 * dropout) fail to load, naming the field.
 *
 * Decoding: "▁" -> space, byte tokens -> the raw byte, control tokens -> nothing, UNK ->
 * " ⁇ " (as SentencePiece prints it), and with a dummy prefix the leading space of the piece
 * that starts the text (at the start or right after BOS) is dropped. With the ByteLevel
 * decoder each token's characters map back to bytes, and control tokens decode to their text
 * (tokenizers' decode with skip_special_tokens false). */
#ifndef QD_TOKENIZER_H
#define QD_TOKENIZER_H

#include "base/err.h"
#include "quant/vocab.h"

typedef struct qd_tokenizer qd_tokenizer;

/* Builds a tokenizer from a vocabulary (copied): SentencePiece-style BPE for QD_VOCAB_SPM,
 * byte-level BPE over v->merges with the pre-tokenizer v->pre names for QD_VOCAB_BPE. NULL on
 * failure (NULL token strings, ids out of range, more than QD_MAX_VOCAB tokens, an unknown
 * pre-tokenizer name, a merge of tokens not in the vocabulary). */
qd_tokenizer *qd_tok_from_vocab(const qd_vocab *v, qd_err *err);

/* Loads a tokenizer file: ".gguf" -> the vocabulary inside it (qd_gguf_load_vocab),
 * ".json" -> Hugging Face tokenizer.json, ".bin" -> llama2.c tokenizer.bin; a name without
 * one of those suffixes (an uploaded blob) by its content: the GGUF magic, a JSON object, else
 * tokenizer.bin.
 * NULL on failure with err naming the file and the field. */
qd_tokenizer *qd_tok_load(const char *path, qd_err *err);

/* Format-specific loaders behind qd_tok_load. */
qd_tokenizer *qd_tok_load_llama2c(const char *path, qd_err *err);
qd_tokenizer *qd_tok_load_hf(const char *path, qd_err *err);

/* Reads a llama2.c tokenizer.bin into a vocabulary in the common convention (spaces -> "▁",
 * "\n<s>\n" -> "<s>"). NULL on failure. Free with qd_vocab_free. */
qd_vocab *qd_vocab_load_llama2c(const char *path, qd_err *err);

void qd_tok_free(qd_tokenizer *t);

int qd_tok_vocab_size(const qd_tokenizer *t);
int qd_tok_bos(const qd_tokenizer *t);
int qd_tok_eos(const qd_tokenizer *t);
/* Whether encoding by default prepends BOS (the source's add_bos setting). */
int qd_tok_add_bos(const qd_tokenizer *t);

/* The vocabulary spelling of token id ("▁the", "<0x0A>", "<s>"), or NULL when out of range. */
const char *qd_tok_token(const qd_tokenizer *t, int id);
/* The type (QD_TOK_*) of token id, or 0 when out of range. */
int qd_tok_type(const qd_tokenizer *t, int id);
/* The id whose spelling is exactly s (any type), or -1. */
int qd_tok_find(const qd_tokenizer *t, const char *s);

/* Encodes len bytes of UTF-8 text. *ids is malloc'd (caller frees), *n_ids its length.
 * add_bos prepends BOS. Invalid UTF-8 is an error naming the byte offset. */
int qd_tok_encode(const qd_tokenizer *t, const char *text, size_t len, int add_bos,
                  int **ids, size_t *n_ids, qd_err *err);

/* The bytes of one token as text, given the previous token (-1 at the start of a text):
 * the dummy-prefix space is dropped at the start and after BOS; byte tokens <0xXX> become
 * the raw byte; control tokens are empty. Returns a pointer valid while t lives (not
 * NUL-terminated where the byte is 0) and sets *len; NULL with *len = 0 for a bad id. */
const char *qd_tok_piece(const qd_tokenizer *t, int prev, int id, size_t *len);

/* Decodes ids to a malloc'd NUL-terminated string (caller frees). NULL on bad id. */
char *qd_tok_decode(const qd_tokenizer *t, const int *ids, size_t n, qd_err *err);

/* As qd_tok_decode, and sets *len to the decoded length (the text may hold NUL bytes). */
char *qd_tok_decode_len(const qd_tokenizer *t, const int *ids, size_t n, size_t *len,
                        qd_err *err);

/* The byte-level pre-tokenizer a GGUF tokenizer.ggml.pre name stands for, as the
 * tokenizer.json of those models spells it: an optional Split (Isolated) by split_regex, an
 * optional Digits (individual), then ByteLevel (no prefix space) splitting by bytelevel_regex
 * when it is not NULL; ignore_merges and an NFC normalizer where the model has them. The
 * strings are static. */
typedef struct qd_bpe_pre {
    const char *split_regex, *bytelevel_regex;
    int digits, ignore_merges, nfc;
} qd_bpe_pre;

/* Fills p for name ("" and "gpt2", "smollm", "llama-bpe"/"llama3", "qwen2"); QD_ERR when the
 * name is unknown. */
int qd_bpe_pre_lookup(const char *name, qd_bpe_pre *p);

/* Length of the longest valid UTF-8 prefix of s: len when all of s is valid, else the byte
 * offset of the first invalid sequence. Strict: no overlongs, surrogates or > U+10FFFF. */
size_t qd_utf8_valid_prefix(const char *s, size_t len);

#endif
