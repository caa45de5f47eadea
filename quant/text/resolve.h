/* Finding the tokenizer that belongs to a checkpoint. */
#ifndef QD_LOADTOK_H
#define QD_LOADTOK_H

#include "quant/model.h"
#include "quant/text/tokenizer.h"

/* The tokenizer for model m loaded from model_path: tok_path when given; else the vocabulary
 * the checkpoint carries (GGUF); else tokenizer.json, then tokenizer.bin, beside the checkpoint
 * (in a Hugging Face directory or next to the file). Its vocabulary size must equal the
 * model's. NULL with err set (saying to pass a tokenizer) when none is found. */
qd_tokenizer *qd_tok_for_model(const qd_model *m, const char *model_path, const char *tok_path,
                               qd_err *err);

/* The same search for any checkpoint or artifact: vocab is the vocabulary it carries (or
 * NULL). Beside the file also looks into an fp-folded/ directory next to it, where quantd
 * puts the tokenizer of an integer artifact. vocab_size <= 0 skips the size check (for
 * tokenizing without loading the model's weights). */
qd_tokenizer *qd_tok_resolve(const struct qd_vocab *vocab, int vocab_size, const char *path,
                             const char *tok_path, qd_err *err);

#endif
