/* Finding the tokenizer that belongs to a checkpoint. */
#ifndef QD_LOADTOK_H
#define QD_LOADTOK_H

#include "quant/model.h"
#include "quant/tokenizer.h"

/* The tokenizer for model m loaded from model_path: tok_path when given; else the vocabulary
 * the checkpoint carries (GGUF); else tokenizer.json, then tokenizer.bin, beside the checkpoint
 * (in a Hugging Face directory or next to the file). Its vocabulary size must equal the
 * model's. NULL with err set (saying to pass a tokenizer) when none is found. */
qd_tokenizer *qd_tok_for_model(const qd_model *m, const char *model_path, const char *tok_path,
                               qd_err *err);

#endif
