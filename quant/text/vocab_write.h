/* Writing a vocabulary back to a tokenizer file, so that an artifact directory (fp-folded/)
 * carries the tokenizer of its model: llama2.c's tokenizer.bin for SentencePiece-style
 * vocabularies, the one format every such vocabulary quantd reads from GGUF or tokenizer.bin
 * can be written to without a converter, and tokenizer.json for byte-level BPE ones.
 *
 * tokenizer.bin layout (little-endian): int32 max_token_length, then per token float32 score,
 * int32 byte length, the bytes (no NUL). Spaces are real spaces ("▁" -> ' '), BOS and EOS are
 * spelled "\n<s>\n" / "\n</s>\n": the inverse of qd_vocab_load_llama2c (tokenizer.h). */
#ifndef QD_VOCAB_WRITE_H
#define QD_VOCAB_WRITE_H

#include "quant/text/tokenizer.h"

/* Writes v to path as a llama2.c tokenizer.bin, atomically. The file is read back before it
 * replaces path and must give the same vocabulary (tokens, scores, token types, BOS/EOS/UNK
 * ids, add_bos and the dummy prefix); a vocabulary the format cannot carry (a literal space
 * inside a token, user-defined token types, add_bos off, a byte-level BPE vocabulary, ...) is
 * refused with err naming the first difference and nothing is written. QD_OK or QD_ERR. */
int qd_vocab_save_llama2c(const qd_vocab *v, const char *path, qd_err *err);

/* Writes a byte-level BPE vocabulary (QD_VOCAB_BPE, as GGUF gpt2 carries it) to path as a
 * Hugging Face tokenizer.json, atomically: the vocabulary, the merges, control and
 * user-defined tokens as added tokens (special and not), the pre-tokenizer v->pre names
 * (qd_bpe_pre_lookup), the BOS template when add_bos, the ByteLevel decoder. Loading it gives
 * the same ids as qd_tok_from_vocab(v). QD_OK or QD_ERR (not BPE, an unknown pre name). */
int qd_vocab_save_hf(const qd_vocab *v, const char *path, qd_err *err);

#endif
