/* Checkpoint readers and writers of the in-memory model: GGUF, Hugging Face safetensors
 * directories, llama2.c, and the format detection in front of them. */
#ifndef QD_IO_LOAD_H
#define QD_IO_LOAD_H

#include "quant/model.h"

/* Loads a checkpoint, detecting the format: a .gguf file, a Hugging Face directory (or its
 * config.json / model.safetensors / index file), or a llama2.c .bin. Weights are checked for
 * NaN/Inf. NULL on failure with err naming the file and the field. */
qd_model *qd_model_load(const char *path, qd_err *err);

/* What qd_model_load would find, from the headers alone: the format, the config (architecture,
 * context, RoPE scaling), every tensor's name, dtype and shape checked as the loader checks them
 * (an unsupported GGUF type, a shard the index names but that is missing, a wrong shape), and
 * the vocabulary a GGUF carries. No weight is converted and nothing is allocated for them: the
 * returned model has cfg, vocab, format and tinfo, and NULL tensors (mem == NULL). NULL on
 * failure with err as qd_model_load sets it. Free with qd_model_free. */
qd_model *qd_model_probe(const char *path, qd_err *err);

/* Format-specific readers behind both; header_only as qd_model_probe. */
qd_model *qd_load_gguf(const char *path, int header_only, qd_err *err);
qd_model *qd_load_hf(const char *path, int header_only, qd_err *err);
qd_model *qd_load_llama2c(const char *path, int header_only, qd_err *err);

/* Writes m as a Hugging Face directory: config.json (LlamaForCausalLM, or Qwen2ForCausalLM
 * when cfg.qkv_bias; GemmaForCausalLM or StableLmForCausalLM for those families, Gemma's norms
 * as w of (1 + w)) and model.safetensors with HF tensor names, weights in dtype "F32",
 * "F16" or "BF16"; lm_head.weight only when untied. dir is created if missing; each file is
 * written atomically. QD_ERR with err set. */
int qd_save_hf(const qd_model *m, const char *dir, const char *dtype, qd_err *err);

/* The same, split into shards of at most max_shard_bytes of tensor data each
 * (model-0000K-of-0000N.safetensors + model.safetensors.index.json); max_shard_bytes == 0
 * writes the single model.safetensors. A tensor larger than the limit gets a shard alone. */
int qd_save_hf_sharded(const qd_model *m, const char *dir, const char *dtype,
                       size_t max_shard_bytes, qd_err *err);

#endif
