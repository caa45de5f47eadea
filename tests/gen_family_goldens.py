#!/usr/bin/env python3
"""Independent reference for the Gemma and StableLM-2 families (issue 12).

Writes small random-weight Hugging Face checkpoints (config.json + model.safetensors, F32 or
BF16) into tests/data/family/<name>/ and, beside each, logits.bin: the float32 logits
(T, vocab) of tokens.txt computed here in float64 numpy from the stored weights, following the
semantics of transformers' GemmaForCausalLM and StableLmForCausalLM (written from those
semantics, not from quantd's C code):

Gemma: embeddings times sqrt(hidden_size) rounded to the checkpoint's dtype; RMSNorm times
(1 + w); GeGLU with the tanh GELU; explicit head_dim (heads * head_dim != hidden_size);
attention scale head_dim^-0.5; rotate-half RoPE over the whole head; MQA/GQA with kv head j
serving q heads j*g .. j*g+g-1; tied LM head on the unscaled embeddings.
StableLM-2: LayerNorm with weight and bias (biased variance); partial rotary over the first
int(head_dim * partial_rotary_factor) dims with frequencies theta^(-2i/rot); q/k/v biases
(use_qkv_bias); SwiGLU; untied LM head.

Run once from the repository root with Debian's python3 and python3-numpy (`make test` needs
neither):
    /usr/bin/python3 tests/gen_family_goldens.py
The outputs are committed; tests/test_family.c compares quantd against them.
"""
import json
import os
import struct

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "family")

VARIANTS = [
    # Gemma, F32, MQA (1 kv head), head_dim 16 with 3 heads on hidden 24
    dict(name="gemma-f32", family="gemma", dtype="F32", dim=24, heads=3, kv=1, head_dim=16,
         ffn=40, vocab=64, layers=2, theta=10000.0, eps=1e-6, seed=1),
    # Gemma, BF16, GQA 4:2, head_dim 12 on hidden 32 (bf16(sqrt(32)) = 5.65625), head_dim key
    # given, hidden_act "gelu" of the first configs (transformers still runs the tanh GELU)
    dict(name="gemma-bf16", family="gemma", dtype="BF16", dim=32, heads=4, kv=2, head_dim=12,
         ffn=48, vocab=64, layers=2, theta=500.0, eps=1e-6, seed=2),
    # StableLM-2, F32, GQA 4:2, half of each head rotated, q/k/v biases
    dict(name="stablelm-f32", family="stablelm", dtype="F32", dim=32, heads=4, kv=2,
         head_dim=8, prf=0.5, qkv_bias=True, ffn=64, vocab=64, layers=2, theta=10000.0,
         eps=1e-5, seed=3),
    # StableLM-2, BF16, MHA, a quarter rotated (the 1.6B model's factor), no biases
    dict(name="stablelm-bf16", family="stablelm", dtype="BF16", dim=32, heads=2, kv=2,
         head_dim=16, prf=0.25, qkv_bias=False, ffn=48, vocab=64, layers=2, theta=1000.0,
         eps=1e-5, seed=4),
]

TOKENS = [1, 17, 5, 42, 63, 0, 8, 8, 30, 2, 55, 11]


def to_bf16_bits(a):
    """float32 array -> uint16 bf16 bits, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_round(a):
    return (to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, dtype):
    header, blobs, off = {}, [], 0
    for name, a in tensors:
        if dtype == "BF16":
            b = to_bf16_bits(a).tobytes()
        else:
            b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_weights(v):
    rng = np.random.default_rng(v["seed"])
    D, H, KV, hd, F, V = v["dim"], v["heads"], v["kv"], v["head_dim"], v["ffn"], v["vocab"]
    gemma = v["family"] == "gemma"

    def lin(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def normw():
        # Gemma stores w of (1 + w); LayerNorm stores the multiplier itself
        return (0.2 * rng.standard_normal(D) + (0.0 if gemma else 1.0)).astype(np.float32)

    def vec(n, s):
        return (s * rng.standard_normal(n)).astype(np.float32)

    # Gemma's embeddings are small and scaled up by sqrt(hidden) (the tied head sees them small)
    emb = rng.standard_normal((V, D)) / (np.sqrt(D) if gemma else 1.0)
    t = [("model.embed_tokens.weight", emb.astype(np.float32))]
    for l in range(v["layers"]):
        p = "model.layers.%d." % l
        t.append((p + "input_layernorm.weight", normw()))
        if not gemma:
            t.append((p + "input_layernorm.bias", vec(D, 0.1)))
        t.append((p + "self_attn.q_proj.weight", lin(H * hd, D)))
        t.append((p + "self_attn.k_proj.weight", lin(KV * hd, D)))
        t.append((p + "self_attn.v_proj.weight", lin(KV * hd, D)))
        if v.get("qkv_bias"):
            t.append((p + "self_attn.q_proj.bias", vec(H * hd, 0.2)))
            t.append((p + "self_attn.k_proj.bias", vec(KV * hd, 0.2)))
            t.append((p + "self_attn.v_proj.bias", vec(KV * hd, 0.2)))
        t.append((p + "self_attn.o_proj.weight", lin(D, H * hd)))
        t.append((p + "post_attention_layernorm.weight", normw()))
        if not gemma:
            t.append((p + "post_attention_layernorm.bias", vec(D, 0.1)))
        t.append((p + "mlp.gate_proj.weight", lin(F, D)))
        t.append((p + "mlp.up_proj.weight", lin(F, D)))
        t.append((p + "mlp.down_proj.weight", lin(D, F)))
    t.append(("model.norm.weight", normw()))
    if not gemma:
        t.append(("model.norm.bias", vec(D, 0.1)))
        t.append(("lm_head.weight", lin(V, D)))
    if v["dtype"] == "BF16":
        t = [(n, bf16_round(a)) for n, a in t]
    return t


def config_of(v):
    c = {
        "hidden_size": v["dim"], "intermediate_size": v["ffn"],
        "num_hidden_layers": v["layers"], "num_attention_heads": v["heads"],
        "num_key_value_heads": v["kv"], "vocab_size": v["vocab"],
        "max_position_embeddings": 64, "rope_theta": v["theta"], "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32" if v["dtype"] == "F32" else "bfloat16",
    }
    if v["family"] == "gemma":
        c.update({"architectures": ["GemmaForCausalLM"], "model_type": "gemma",
                  "head_dim": v["head_dim"], "rms_norm_eps": v["eps"],
                  "attention_bias": False})
        if v["dtype"] == "F32":
            c.update({"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"})
        else:
            c.update({"hidden_act": "gelu"})  # tie_word_embeddings absent: Gemma ties by default
        if v["dtype"] == "F32":
            c["tie_word_embeddings"] = True
    else:
        c.update({"architectures": ["StableLmForCausalLM"], "model_type": "stablelm",
                  "layer_norm_eps": v["eps"], "partial_rotary_factor": v["prf"],
                  "use_qkv_bias": v["qkv_bias"], "qk_layernorm": False,
                  "use_parallel_residual": False, "hidden_act": "silu",
                  "tie_word_embeddings": False})
    return c


def reference_logits(v, tensors, tokens):
    W = {n: a.astype(np.float64) for n, a in tensors}
    D, H, KV, hd = v["dim"], v["heads"], v["kv"], v["head_dim"]
    gemma = v["family"] == "gemma"
    T, g, eps = len(tokens), H // KV, v["eps"]
    rot = hd if gemma else int(hd * v["prf"])

    def norm(x, p):
        if gemma:
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + W[p + ".weight"])
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * W[p + ".weight"] + W[p + ".bias"]

    inv = v["theta"] ** (-np.arange(0, rot, 2, dtype=np.float64) / rot)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]

    def rope(x):  # (T, heads, hd)
        xr, xp = x[..., :rot], x[..., rot:]
        half = rot // 2
        rh = np.concatenate([-xr[..., half:], xr[..., :half]], -1)
        return np.concatenate([xr * cos + rh * sin, xp], -1)

    def proj(x, p):
        y = x @ W[p + ".weight"].T
        return y + W[p + ".bias"] if p + ".bias" in W else y

    x = W["model.embed_tokens.weight"][tokens]
    if gemma:
        s = np.float32(np.sqrt(D))
        x = x * float(bf16_round(np.array([s]))[0] if v["dtype"] == "BF16" else s)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(v["layers"]):
        p = "model.layers.%d." % l
        h = norm(x, p + "input_layernorm")
        q = rope(proj(h, p + "self_attn.q_proj").reshape(T, H, hd))
        k = rope(proj(h, p + "self_attn.k_proj").reshape(T, KV, hd))
        vv = proj(h, p + "self_attn.v_proj").reshape(T, KV, hd)
        o = np.zeros((T, H, hd))
        for hh in range(H):
            sc = q[:, hh] @ k[:, hh // g].T * hd ** -0.5 + mask
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            o[:, hh] = (sc / sc.sum(-1, keepdims=True)) @ vv[:, hh // g]
        x = x + o.reshape(T, H * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = norm(x, p + "post_attention_layernorm")
        gt = h @ W[p + "mlp.gate_proj.weight"].T
        if gemma:
            a = 0.5 * gt * (1 + np.tanh(np.sqrt(2 / np.pi) * (gt + 0.044715 * gt ** 3)))
        else:
            a = gt / (1 + np.exp(-gt))
        x = x + (a * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    x = norm(x, "model.norm")
    head = W["model.embed_tokens.weight"] if gemma else W["lm_head.weight"]
    return x @ head.T


def main():
    for v in VARIANTS:
        d = os.path.join(OUT, v["name"])
        os.makedirs(d, exist_ok=True)
        t = make_weights(v)
        write_safetensors(os.path.join(d, "model.safetensors"), t, v["dtype"])
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config_of(v), f, indent=2)
            f.write("\n")
        logits = reference_logits(v, t, TOKENS).astype("<f4")
        logits.tofile(os.path.join(d, "logits.bin"))
        with open(os.path.join(d, "tokens.txt"), "w") as f:
            f.write(" ".join(map(str, TOKENS)) + "\n")
        print("%s: logits %s, max |logit| %.3f" % (v["name"], logits.shape,
                                                   float(np.abs(logits).max())))


if __name__ == "__main__":
    main()
