/* Vocabulary writers (vocab_write.h): llama2.c tokenizer.bin, verified by reading the file
 * back with the project's own reader before it is committed, and tokenizer.json for byte-level
 * BPE vocabularies. */
#include "quant/text/vocab_write.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/io/common.h"
#include "base/fs.h"

#define SPACE_MARK "\xe2\x96\x81"
#define SPACE_MARK_LEN 3

/* The llama2.c spelling of token i into buf (at least 5 + strlen bytes); returns its length. */
static size_t spelling(const qd_vocab *v, int i, char *buf) {
    const char *s = v->tokens[i];
    if (i == v->bos_id && !strcmp(s, "<s>")) return (size_t)sprintf(buf, "\n<s>\n");
    if (i == v->eos_id && !strcmp(s, "</s>")) return (size_t)sprintf(buf, "\n</s>\n");
    size_t o = 0;
    while (*s) {
        if (!strncmp(s, SPACE_MARK, SPACE_MARK_LEN)) {
            buf[o++] = ' ';
            s += SPACE_MARK_LEN;
        } else {
            buf[o++] = *s++;
        }
    }
    return o;
}

static void put_i32(unsigned char *p, int32_t v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    for (int k = 0; k < 4; k++) p[k] = (unsigned char)(u >> (8 * k));
}

static void put_f32(unsigned char *p, float f) {
    int32_t i;
    memcpy(&i, &f, 4);
    put_i32(p, i);
}

/* First difference between the vocabulary and what the file gave back, or NULL. */
static const char *differs(const qd_vocab *v, const qd_vocab *r, int *at) {
    *at = -1;
    if (r->n != v->n) return "token count";
    if (r->bos_id != v->bos_id) return "BOS id (the format knows BOS only as the first \"<s>\")";
    if (r->eos_id != v->eos_id) return "EOS id (the format knows EOS only as the first \"</s>\")";
    if (r->unk_id != v->unk_id) return "UNK id (the format knows UNK only as the first \"<unk>\")";
    if (r->add_bos != v->add_bos) return "add_bos (the format always prepends BOS)";
    if (r->add_space_prefix != v->add_space_prefix)
        return "add_space_prefix (the format always adds the dummy prefix)";
    for (int i = 0; i < v->n; i++) {
        *at = i;
        if (strcmp(r->tokens[i], v->tokens[i]))
            return "token spelling (a literal space or a BOS/EOS spelling elsewhere)";
        float s = v->scores ? v->scores[i] : 0.0f;
        if (memcmp(&s, &r->scores[i], sizeof s)) return "score";
        if (v->types && v->types[i] != r->types[i])
            return "token type (only normal, control BOS/EOS, unknown and byte tokens)";
    }
    *at = -1;
    return NULL;
}

int qd_vocab_save_llama2c(const qd_vocab *v, const char *path, qd_err *err) {
    if (!v || v->n < 1 || v->n > QD_MAX_VOCAB || !v->tokens)
        return qd_errf(err, "%s: %s: empty or oversized vocabulary", __func__, path);
    if (v->kind == QD_VOCAB_BPE)
        return qd_errf(err, "%s: %s: a byte-level BPE vocabulary (merges, pre-tokenizer \"%s\") "
                       "cannot be written as tokenizer.bin, which carries SentencePiece scores "
                       "only", __func__, path, v->pre);
    size_t maxlen = 0, total = 4;
    for (int i = 0; i < v->n; i++) {
        if (!v->tokens[i]) return qd_errf(err, "%s: %s: token %d is NULL", __func__, path, i);
        size_t n = strlen(v->tokens[i]);
        if (n > QD_TOK_MAX_BYTES)
            return qd_errf(err, "%s: %s: token %d is %zu bytes (at most %d)", __func__, path, i, n,
                           QD_TOK_MAX_BYTES);
        total += 8 + n + 6;
    }
    unsigned char *buf = malloc(total);
    char *tok = malloc(QD_TOK_MAX_BYTES + 8);
    if (!buf || !tok) {
        free(buf), free(tok);
        return qd_errf(err, "%s: out of memory", __func__);
    }
    size_t o = 4;
    for (int i = 0; i < v->n; i++) {
        size_t n = spelling(v, i, tok);
        if (n > maxlen) maxlen = n;
        put_f32(buf + o, v->scores ? v->scores[i] : 0.0f);
        put_i32(buf + o + 4, (int32_t)n);
        memcpy(buf + o + 8, tok, n);
        o += 8 + n;
    }
    free(tok);
    put_i32(buf, (int32_t)(maxlen ? maxlen : 1));
    qd_atomic_file af;
    if (qd_atomic_open(&af, path, err)) {
        free(buf);
        return QD_ERR;
    }
    int bad = fwrite(buf, 1, o, af.f) != o || fflush(af.f) != 0;
    free(buf);
    if (bad) {
        qd_atomic_abort(&af);
        return qd_errf(err, "%s: write failed", path);
    }
    qd_vocab *r = qd_vocab_load_llama2c(af.tmp, err);
    if (!r) {
        qd_atomic_abort(&af);
        return QD_ERR;
    }
    int at;
    const char *why = differs(v, r, &at);
    qd_vocab_free(r);
    if (why) {
        qd_atomic_abort(&af);
        if (at >= 0)
            return qd_errf(err, "%s: %s: the vocabulary cannot be written as tokenizer.bin: token "
                           "%d: %s", __func__, path, at, why);
        return qd_errf(err, "%s: %s: the vocabulary cannot be written as tokenizer.bin: %s",
                       __func__, path, why);
    }
    return qd_atomic_commit(&af, err);
}

/* ---- tokenizer.json for a byte-level BPE vocabulary ----------------------------------- */

static cJSON *bytelevel_json(int use_regex) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "ByteLevel");
    cJSON_AddBoolToObject(b, "add_prefix_space", 0);
    cJSON_AddBoolToObject(b, "trim_offsets", 1);
    cJSON_AddBoolToObject(b, "use_regex", use_regex);
    return b;
}

int qd_vocab_save_hf(const qd_vocab *v, const char *path, qd_err *err) {
    if (!v || v->kind != QD_VOCAB_BPE || v->n < 1 || v->n > QD_MAX_VOCAB || !v->tokens ||
        (v->n_merges && !v->merges))
        return qd_errf(err, "%s: %s: not a byte-level BPE vocabulary", __func__, path);
    qd_bpe_pre p;
    if (qd_bpe_pre_lookup(v->pre, &p) != QD_OK)
        return qd_errf(err, "%s: %s: pre-tokenizer \"%s\" is not supported", __func__, path,
                       v->pre);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < v->n; i++) {
        int ty = v->types ? v->types[i] : QD_TOK_NORMAL;
        if ((ty != QD_TOK_CONTROL && ty != QD_TOK_USER) || !v->tokens[i] || !v->tokens[i][0])
            continue;
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", v->tokens[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", ty == QD_TOK_CONTROL);
        cJSON_AddItemToArray(added, a);
    }
    if (p.nfc) {
        cJSON *nz = cJSON_AddObjectToObject(root, "normalizer");
        cJSON_AddStringToObject(nz, "type", "NFC");
    } else {
        cJSON_AddNullToObject(root, "normalizer");
    }
    cJSON *pt = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pt, "type", "Sequence");
    cJSON *steps = cJSON_AddArrayToObject(pt, "pretokenizers");
    if (p.split_regex) {
        cJSON *sp = cJSON_CreateObject();
        cJSON_AddStringToObject(sp, "type", "Split");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(sp, "pattern"), "Regex", p.split_regex);
        cJSON_AddStringToObject(sp, "behavior", "Isolated");
        cJSON_AddBoolToObject(sp, "invert", 0);
        cJSON_AddItemToArray(steps, sp);
    }
    if (p.digits) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "type", "Digits");
        cJSON_AddBoolToObject(d, "individual_digits", 1);
        cJSON_AddItemToArray(steps, d);
    }
    cJSON_AddItemToArray(steps, bytelevel_json(p.bytelevel_regex != NULL));
    if (v->add_bos && v->bos_id >= 0 && v->bos_id < v->n && v->tokens[v->bos_id]) {
        const char *bos = v->tokens[v->bos_id];
        cJSON *pp = cJSON_AddObjectToObject(root, "post_processor");
        cJSON_AddStringToObject(pp, "type", "TemplateProcessing");
        cJSON *single = cJSON_AddArrayToObject(pp, "single");
        cJSON *st = cJSON_CreateObject(), *sq = cJSON_CreateObject();
        cJSON *sti = cJSON_AddObjectToObject(st, "SpecialToken");
        cJSON_AddStringToObject(sti, "id", bos);
        cJSON_AddNumberToObject(sti, "type_id", 0);
        cJSON *sqi = cJSON_AddObjectToObject(sq, "Sequence");
        cJSON_AddStringToObject(sqi, "id", "A");
        cJSON_AddNumberToObject(sqi, "type_id", 0);
        cJSON_AddItemToArray(single, st);
        cJSON_AddItemToArray(single, sq);
        cJSON *pair = cJSON_Duplicate(single, 1);
        cJSON_AddItemToObject(pp, "pair", pair);
        cJSON *spec = cJSON_AddObjectToObject(pp, "special_tokens");
        cJSON *sb = cJSON_AddObjectToObject(spec, bos);
        cJSON_AddStringToObject(sb, "id", bos);
        cJSON_AddItemToObject(sb, "ids", cJSON_CreateIntArray(&v->bos_id, 1));
        cJSON_AddItemToObject(sb, "tokens", cJSON_CreateStringArray(&bos, 1));
    } else {
        cJSON_AddNullToObject(root, "post_processor");
    }
    cJSON_AddItemToObject(root, "decoder", bytelevel_json(1));
    cJSON *m = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddNullToObject(m, "dropout");
    cJSON_AddNullToObject(m, "unk_token");
    cJSON_AddNullToObject(m, "continuing_subword_prefix");
    cJSON_AddNullToObject(m, "end_of_word_suffix");
    cJSON_AddBoolToObject(m, "fuse_unk", 0);
    cJSON_AddBoolToObject(m, "byte_fallback", 0);
    cJSON_AddBoolToObject(m, "ignore_merges", p.ignore_merges);
    cJSON *vocab = cJSON_AddObjectToObject(m, "vocab");
    for (int i = 0; i < v->n; i++)
        if (v->tokens[i] && v->tokens[i][0]) cJSON_AddNumberToObject(vocab, v->tokens[i], i);
    cJSON *merges = cJSON_AddArrayToObject(m, "merges");
    for (int i = 0; i < v->n_merges; i++)
        cJSON_AddItemToArray(merges, cJSON_CreateString(v->merges[i]));
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return qd_errf(err, "%s: %s: out of memory", __func__, path);
    int rc = qd_write_text_atomic(path, text, err);
    free(text);
    return rc;
}
