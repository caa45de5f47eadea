/* llama.c / llama2.c checkpoints (Karpathy's legacy "version 0" export): a header of 7 int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then FP32 tensors
 * stacked over layers, RoPE tables, and an optional classifier (vocab_size < 0 means the
 * classifier is stored separately rather than shared with the embeddings). The format has no
 * magic and no version, so the only integrity check available is that the header accounts for
 * the file size exactly. q/k rows are stored for interleaved-pair RoPE and are permuted to the
 * rotate-half layout at load. */
#include <stdio.h>
#include <string.h>

#include "quant/model.h"
#include "quant/io/common.h"

qd_model *qd_load_llama2c(const char *path, int header_only, qd_err *err) {
    qd_map map;
    qd_model *m = NULL;
    if (qd_map_open(&map, path, err)) return NULL;
    if (map.size < 28) {
        qd_errf(err, "%s: truncated: %zu bytes, the llama2.c header alone is 28", path, map.size);
        goto fail;
    }
    int32_t h[7];
    memcpy(h, map.data, sizeof h); /* little-endian hosts only, as llama2.c itself */
    static const char *const FIELD[7] = {"dim", "hidden_dim", "n_layers", "n_heads",
                                         "n_kv_heads", "vocab_size", "seq_len"};
    static const int64_t LIMIT[7] = {QD_MAX_DIM, QD_MAX_DIM, QD_MAX_LAYERS, QD_MAX_HEADS,
                                     QD_MAX_HEADS, QD_MAX_VOCAB, QD_MAX_CTX};
    int shared = h[5] > 0;
    int64_t vabs = h[5] < 0 ? -(int64_t)h[5] : h[5];
    for (int i = 0; i < 7; i++) {
        int64_t v = i == 5 ? vabs : h[i];
        if (v < 1 || v > LIMIT[i]) {
            qd_errf(err, "%s: header field %s = %d out of range [1, %lld] (not a llama2.c file?)",
                    path, FIELD[i], h[i], (long long)LIMIT[i]);
            goto fail;
        }
    }
    if (h[0] % h[3] != 0) {
        qd_errf(err, "%s: header: dim = %d is not a multiple of n_heads = %d", path, h[0], h[3]);
        goto fail;
    }
    qd_config c = {0};
    snprintf(c.arch, sizeof c.arch, "llama");
    c.dim = h[0];
    c.hidden_dim = h[1];
    c.n_layers = h[2];
    c.n_heads = h[3];
    c.n_kv_heads = h[4];
    c.vocab_size = (int)vabs;
    c.max_seq_len = h[6];
    c.head_dim = h[0] / h[3];
    /* Not stored in the file; these are what llama2.c's run.c hard-codes. */
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.bos_id = c.vocab_size > 1 ? 1 : -1;
    c.eos_id = c.vocab_size > 2 ? 2 : -1;
    c.tied_embeddings = shared;
    if (qd_config_validate(&c, path, err)) goto fail;

    /* Sizes in floats (all bounded above, so uint64 cannot overflow). */
    uint64_t D = (uint64_t)c.dim, F = (uint64_t)c.hidden_dim, V = (uint64_t)c.vocab_size;
    uint64_t NL = (uint64_t)c.n_layers, HD = (uint64_t)c.head_dim;
    uint64_t Q = (uint64_t)c.n_heads * HD, KV = (uint64_t)c.n_kv_heads * HD;
    uint64_t T = (uint64_t)c.max_seq_len;
    struct part {
        const char *name;
        uint64_t nl, rows, cols; /* nl > 0: stacked over the layers */
    } parts[] = {
        {"token_embedding_table", 0, V, D},
        {"rms_att_weight", NL, 1, D},
        {"wq", NL, Q, D},
        {"wk", NL, KV, D},
        {"wv", NL, KV, D},
        {"wo", NL, D, Q},
        {"rms_ffn_weight", NL, 1, D},
        {"w1", NL, F, D},
        {"w2", NL, D, F},
        {"w3", NL, F, D},
        {"rms_final_weight", 0, 1, D},
        {"freq_cis_real", 0, T, HD / 2},
        {"freq_cis_imag", 0, T, HD / 2},
        {"wcls", 0, shared ? 0 : V, D},
    };
    enum { P_EMB, P_ATT, P_WQ, P_WK, P_WV, P_WO, P_FFN, P_W1, P_W2, P_W3, P_FIN, P_FR, P_FI,
           P_CLS, P_N };
    uint64_t off[P_N + 1];
    off[0] = 28;
    for (int i = 0; i < P_N; i++)
        off[i + 1] = off[i] + (parts[i].nl ? parts[i].nl : 1) * parts[i].rows * parts[i].cols * 4;
    if (off[P_N] != (uint64_t)map.size) {
        qd_errf(err,
                "%s: file is %zu bytes but the header (dim %d, hidden_dim %d, n_layers %d, "
                "n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d) implies %llu",
                path, map.size, h[0], h[1], h[2], h[3], h[4], h[5], h[6],
                (unsigned long long)off[P_N]);
        goto fail;
    }
    if (!(m = header_only ? qd_model_header(&c, err) : qd_model_alloc(&c, err))) goto fail;
    snprintf(m->format, sizeof m->format, "llama2c");
    const uint8_t *b = map.data;
    if (header_only) goto info;
    char nm[48];
    /* Per-layer slices are named "wq[layer 3]" so a bad element can be found in the file. */
#define CONV(dst, part, idx, count)                                                          \
    (snprintf(nm, sizeof nm, parts[part].nl ? "%s[layer %llu]" : "%s", parts[part].name,      \
              (unsigned long long)l),                                                        \
     qd_convert_f32((dst), b + off[part] + (uint64_t)(idx) * 4, QD_SRC_F32, (size_t)(count),  \
                    path, nm, err))
    uint64_t l = 0;
    if (CONV(m->tok_emb, P_EMB, 0, V * D) || CONV(m->final_norm, P_FIN, 0, D)) goto fail;
    if (!shared && CONV(m->lm_head, P_CLS, 0, V * D)) goto fail;
    for (l = 0; l < NL; l++) {
        qd_layer *L = &m->layers[l];
        if (CONV(L->attn_norm, P_ATT, l * D, D) || CONV(L->wq, P_WQ, l * Q * D, Q * D) ||
            CONV(L->wk, P_WK, l * KV * D, KV * D) || CONV(L->wv, P_WV, l * KV * D, KV * D) ||
            CONV(L->wo, P_WO, l * D * Q, D * Q) || CONV(L->ffn_norm, P_FFN, l * D, D) ||
            CONV(L->w_gate, P_W1, l * F * D, F * D) || CONV(L->w_down, P_W2, l * D * F, D * F) ||
            CONV(L->w_up, P_W3, l * F * D, F * D))
            goto fail;
        if (qd_permute_rope_rows(L->wq, c.n_heads, c.head_dim, (size_t)D, err) ||
            qd_permute_rope_rows(L->wk, c.n_kv_heads, c.head_dim, (size_t)D, err))
            goto fail;
    }
#undef CONV
info:
    for (int i = 0; i < P_N; i++) {
        if (i == P_CLS && shared) continue;
        /* Shapes as the file holds them: stacked per-layer tensors get a leading n_layers;
         * vectors drop their row of 1. */
        int64_t shape[3];
        int nd = 0;
        if (parts[i].nl) shape[nd++] = (int64_t)parts[i].nl;
        if (parts[i].rows != 1) shape[nd++] = (int64_t)parts[i].rows;
        shape[nd++] = (int64_t)parts[i].cols;
        if (qd_tinfo_add(m, parts[i].name, "F32", nd, shape, (size_t)(off[i + 1] - off[i]), err))
            goto fail;
    }
    qd_map_close(&map);
    return m;
fail:
    qd_model_free(m);
    qd_map_close(&map);
    return NULL;
}
