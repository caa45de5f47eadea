/* Tokenizers: one BPE engine over a vocabulary in SentencePiece's convention ("▁" for space,
 * <0xXX> byte tokens, <s>/</s> controls) or in GPT-2's byte-level alphabet, fed by three
 * sources: a qd_vocab (GGUF), llama2.c tokenizer.bin and Hugging Face tokenizer.json.
 * Byte-level text first goes through the pre-tokenizer steps (PCRE2 for the Split regexes,
 * utf8proc for normal forms and numeric classes), and each piece is merged on its own. SentencePiece mode picks the next merge by
 * the merged piece's score, Hugging Face mode by the merge list's rank; both keep a linked list
 * of symbols and a binary heap of candidate pairs, so encoding is O(n log n) in the text.
 * Stale heap entries are recognised by the pair's combined length: symbols only grow, so a
 * pair whose left is still followed by its right with the same total length is unchanged. */
#include "quant/text/tokenizer.h"

#include "quant/io/gguf.h"
#include "quant/model.h"
#include "base/fs.h"
#include "base/str.h"

#include <cjson/cJSON.h>
#include <math.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SPACE_MARK "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */
#define SPACE_MARK_LEN 3
#define TOKFILE_MAX_BYTES ((size_t)256 << 20)

enum { KIND_SPM = 0, KIND_HF = 1 };
enum { META_NEVER = 0, META_FIRST = 1, META_ALWAYS = 2 };

/* Byte-level pre-tokenizer steps, applied in order to a list of pieces of the text. */
enum { PT_SPLIT = 1, PT_DIGITS, PT_BYTELEVEL };
/* An added token's flags (tokenizers' AddedToken): matched only as a whole word, taking the
 * whitespace on its left, on its right. */
enum { AF_SINGLE_WORD = 1, AF_LSTRIP = 2, AF_RSTRIP = 4 };
/* How a Split keeps what its pattern matched (tokenizers' SplitDelimiterBehavior). */
enum { SB_ISOLATED = 0, SB_REMOVED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };

typedef struct pretok {
    int kind;
    pcre2_code *re;      /* PT_SPLIT: the file's pattern; PT_BYTELEVEL with use_regex: GPT-2's */
    int behavior, invert;
    int individual;      /* PT_DIGITS */
    int add_prefix_space;/* PT_BYTELEVEL */
} pretok;

/* GPT-2's pattern, which ByteLevel(use_regex) splits with, and the patterns GGUF's
 * tokenizer.ggml.pre names stand for (as the tokenizer.json files of those models give them). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3 "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2 "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct pair_slot {
    uint64_t key;  /* (left << 32) | right; EMPTY_KEY when free */
    int rank;
    int merged;
} pair_slot;
#define EMPTY_KEY UINT64_MAX

struct qd_tokenizer {
    qd_vocab *v;          /* owned copy; scores and types always present */
    size_t *tlen;         /* byte length of each token */
    int *smap;            /* string -> id+1 (0 = free), open addressing */
    size_t smask;
    int byte_id[256];     /* id of <0xXX>, or -1 */
    char *pbuf;           /* decoded pieces, one after another */
    size_t *poff;
    size_t *plen;
    int kind;
    /* Hugging Face mode */
    pair_slot *pairs;
    size_t pmask;
    int *added;           /* ids of added tokens, longest content first */
    int n_added;
    unsigned char added_first[256]; /* first bytes of added contents */
    int byte_fallback, fuse_unk;
    int norm_prepend, norm_replace; /* Prepend("▁"), Replace(" " -> "▁") normalizers */
    int meta, meta_scheme, meta_split;
    int unorm;            /* utf8proc options of the NFC/NFD/NFKC/NFKD normalizer, or 0 */
    /* byte-level BPE: pre-tokenizer steps, then BPE on each piece */
    pretok *steps;
    int n_steps;
    int ignore_merges;    /* a piece that is a whole vocabulary token is not merged */
    int bytelevel_dec;    /* ByteLevel decoder: pieces map GPT-2's alphabet back to bytes */
    unsigned char *added_norm; /* per id: added token matched in the normalized text */
    unsigned char *added_flags;/* per id: AF_* (single_word, lstrip, rstrip), or NULL */
    char bl_enc[256][3];  /* byte -> its character in GPT-2's alphabet (UTF-8) */
    unsigned char bl_len[256];
    short bl_dec[324];    /* code point -> byte, -1 when none */
};

/* ---- small helpers ---------------------------------------------------------------------- */

typedef struct ivec {
    int *a;
    size_t n, cap;
} ivec;

static int ivec_push(ivec *v, int x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        int *a = realloc(v->a, cap * sizeof *a);
        if (!a) return -1;
        v->a = a;
        v->cap = cap;
    }
    v->a[v->n++] = x;
    return 0;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* Parses "<0xXX>" (either hex case); returns the byte or -1. */
static int byte_token_value(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

size_t qd_utf8_valid_prefix(const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) n = 2;
        else if (c == 0xE0) { n = 3; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) n = 3;
        else if (c == 0xED) { n = 3; hi = 0x9F; }   /* no UTF-16 surrogates */
        else if (c >= 0xEE && c <= 0xEF) n = 3;
        else if (c == 0xF0) { n = 4; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) n = 4;
        else if (c == 0xF4) { n = 4; hi = 0x8F; }   /* <= U+10FFFF */
        else return i;
        if (len - i < n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += n;
    }
    return len;
}

/* Length of the (already validated) UTF-8 character starting with lead byte c. */
static size_t utf8_char_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static int infer_type(const qd_vocab *v, int i) {
    if (i == v->unk_id) return QD_TOK_UNKNOWN;
    if (i == v->bos_id || i == v->eos_id) return QD_TOK_CONTROL;
    const char *s = v->tokens[i];
    if (byte_token_value(s, strlen(s)) >= 0) return QD_TOK_BYTE;
    return QD_TOK_NORMAL;
}

/* ---- tokenizer construction ------------------------------------------------------------ */

static int smap_find(const qd_tokenizer *t, const char *s, size_t n) {
    for (size_t h = hash_bytes(s, n) & t->smask;; h = (h + 1) & t->smask) {
        int e = t->smap[h];
        if (!e) return -1;
        int id = e - 1;
        if (t->tlen[id] == n && memcmp(t->v->tokens[id], s, n) == 0) return id;
    }
}

static int mergeable(const qd_tokenizer *t, int id) {
    int ty = t->v->types[id];
    return ty != QD_TOK_CONTROL && ty != QD_TOK_BYTE && ty != QD_TOK_UNKNOWN &&
           ty != QD_TOK_UNUSED;
}

void qd_tok_free(qd_tokenizer *t) {
    if (!t) return;
    qd_vocab_free(t->v);
    free(t->tlen);
    free(t->smap);
    free(t->pbuf);
    free(t->poff);
    free(t->plen);
    free(t->pairs);
    free(t->added);
    free(t->added_norm);
    free(t->added_flags);
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t->steps);
    free(t);
}

/* GPT-2's byte-to-unicode alphabet: printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand
 * for themselves, the other 68 become U+0100.. in byte order, so every byte is one visible
 * character ("Ġ" = U+0120 is the space). */
static void bytelevel_tables(qd_tokenizer *t) {
    int next = 256;
    for (int i = 0; i < 324; i++) t->bl_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = keep ? b : next++;
        if (cp < 0x80) {
            t->bl_enc[b][0] = (char)cp;
            t->bl_len[b] = 1;
        } else {
            t->bl_enc[b][0] = (char)(0xC0 | (cp >> 6));
            t->bl_enc[b][1] = (char)(0x80 | (cp & 0x3F));
            t->bl_len[b] = 2;
        }
        t->bl_dec[cp] = (short)b;
    }
}

/* The bytes a token stands for under the ByteLevel decoder, written to o (at most n bytes):
 * each character maps back to its byte; a token with any character outside the alphabet
 * (an added token such as "<|im start|>" with a real space) is its own bytes, as tokenizers
 * decodes it. */
static size_t bytelevel_decode(const qd_tokenizer *t, const char *s, size_t n, char *o) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                              (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0 || cp >= 324 || t->bl_dec[cp] < 0) {
            memcpy(o, s, n);
            return n;
        }
        o[k++] = (char)t->bl_dec[cp];
        i += (size_t)l;
    }
    return k;
}

/* Builds the decoded form of every token: "▁" -> ' ', <0xXX> -> the byte, control -> "",
 * unknown -> " ⁇ "; with the ByteLevel decoder every token (control ones included, as
 * tokenizers decodes with skip_special_tokens false) through bytelevel_decode. */
static int build_pieces(qd_tokenizer *t, qd_err *err) {
    const qd_vocab *v = t->v;
    size_t total = 0;
    for (int i = 0; i < v->n; i++) total += t->tlen[i] + 8;
    t->pbuf = malloc(total);
    t->poff = malloc((size_t)v->n * sizeof *t->poff);
    t->plen = malloc((size_t)v->n * sizeof *t->plen);
    if (!t->pbuf || !t->poff || !t->plen)
        return qd_errf(err, "%s: out of memory", __func__);
    size_t o = 0;
    for (int i = 0; i < v->n; i++) {
        const char *s = v->tokens[i];
        size_t n = t->tlen[i];
        t->poff[i] = o;
        int ty = v->types[i];
        int b;
        if (t->bytelevel_dec) {
            o += bytelevel_decode(t, s, n, t->pbuf + o);
        } else if (ty == QD_TOK_CONTROL) {
            /* nothing */
        } else if (ty == QD_TOK_BYTE && (b = byte_token_value(s, n)) >= 0) {
            t->pbuf[o++] = (char)b;
        } else if (ty == QD_TOK_UNKNOWN) {
            memcpy(t->pbuf + o, " \xe2\x81\x87 ", 5);
            o += 5;
        } else {
            for (size_t k = 0; k < n;) {
                if (n - k >= SPACE_MARK_LEN && memcmp(s + k, SPACE_MARK, SPACE_MARK_LEN) == 0) {
                    t->pbuf[o++] = ' ';
                    k += SPACE_MARK_LEN;
                } else {
                    t->pbuf[o++] = s[k++];
                }
            }
        }
        t->plen[i] = o - t->poff[i];
    }
    return QD_OK;
}

/* The common part: copies v (types inferred, scores zeroed where absent), builds the string
 * map, the byte table and the decoded pieces. */
static qd_tokenizer *tok_build(const qd_vocab *v, int bytelevel, const char *who,
                               qd_err *err) {
    if (!v) return qd_errf(err, "%s: no vocabulary", who), NULL;
    if (v->n < 1 || v->n > QD_MAX_VOCAB || !v->tokens)
        return qd_errf(err, "%s: vocabulary size %d outside 1..%d", who, v->n, QD_MAX_VOCAB),
               NULL;
    if (v->bos_id < -1 || v->bos_id >= v->n || v->eos_id < -1 || v->eos_id >= v->n ||
        v->unk_id < -1 || v->unk_id >= v->n)
        return qd_errf(err, "%s: bos/eos/unk id (%d/%d/%d) outside the %d-token vocabulary",
                       who, v->bos_id, v->eos_id, v->unk_id, v->n),
               NULL;
    qd_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return qd_errf(err, "%s: out of memory", who), NULL;
    t->bytelevel_dec = bytelevel;
    bytelevel_tables(t);
    qd_vocab *c = qd_vocab_new(v->n, err);
    t->v = c;
    if (!c) goto fail;
    c->bos_id = v->bos_id;
    c->eos_id = v->eos_id;
    c->unk_id = v->unk_id;
    c->add_bos = v->add_bos;
    c->add_space_prefix = v->add_space_prefix;
    t->tlen = malloc((size_t)v->n * sizeof *t->tlen);
    if (!t->tlen) goto oom;
    for (int i = 0; i < v->n; i++) {
        if (!v->tokens[i]) {
            qd_errf(err, "%s: token %d: missing string", who, i);
            goto fail;
        }
        size_t n = strlen(v->tokens[i]);
        if (n > QD_TOK_MAX_BYTES) {
            qd_errf(err, "%s: token %d: %zu bytes, limit %d", who, i, n, QD_TOK_MAX_BYTES);
            goto fail;
        }
        if (v->scores && !isfinite(v->scores[i])) {
            qd_errf(err, "%s: token %d: score is not finite", who, i);
            goto fail;
        }
        c->tokens[i] = malloc(n + 1);
        if (!c->tokens[i]) goto oom;
        memcpy(c->tokens[i], v->tokens[i], n + 1);
        t->tlen[i] = n;
        c->scores[i] = v->scores ? v->scores[i] : 0.0f;
        c->types[i] = v->types ? v->types[i] : infer_type(v, i);
    }
    t->smask = pow2_at_least((size_t)v->n * 2) - 1;
    t->smap = calloc(t->smask + 1, sizeof *t->smap);
    if (!t->smap) goto oom;
    for (int i = 0; i < v->n; i++) {
        if (t->tlen[i] == 0 || smap_find(t, c->tokens[i], t->tlen[i]) >= 0) continue;
        size_t h = hash_bytes(c->tokens[i], t->tlen[i]) & t->smask;
        while (t->smap[h]) h = (h + 1) & t->smask;
        t->smap[h] = i + 1;
    }
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int i = 0; i < v->n; i++) {
        int b;
        if (c->types[i] == QD_TOK_BYTE && (b = byte_token_value(c->tokens[i], t->tlen[i])) >= 0 &&
            t->byte_id[b] < 0)
            t->byte_id[b] = i;
    }
    if (build_pieces(t, err) != QD_OK) goto fail;
    return t;
oom:
    qd_errf(err, "%s: out of memory for %d tokens", who, v->n);
fail:
    qd_tok_free(t);
    return NULL;
}

static pcre2_code *compile_pattern(const char *pat, size_t len, int literal, const char *path,
                                   const char *field, qd_err *err);
static int cmp_added_len(const void *x, const void *y, void *ctx);

/* Sizes the pair map for n merges. */
static int pairs_init(qd_tokenizer *t, size_t n) {
    t->pmask = pow2_at_least(n * 2) - 1;
    t->pairs = malloc((t->pmask + 1) * sizeof *t->pairs);
    if (!t->pairs) return -1;
    for (size_t i = 0; i <= t->pmask; i++) t->pairs[i].key = EMPTY_KEY;
    return 0;
}

/* Adds the merge a + b -> ab at rank; a repeated pair keeps its first (best) rank. */
static void pair_insert(qd_tokenizer *t, int a, int b, int ab, int rank) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t h = hash_u64(key) & t->pmask;
    while (t->pairs[h].key != EMPTY_KEY && t->pairs[h].key != key) h = (h + 1) & t->pmask;
    if (t->pairs[h].key == EMPTY_KEY) t->pairs[h] = (pair_slot){key, rank, ab};
}

static int add_pre_step(qd_tokenizer *t, int kind, const char *re, int individual,
                        const char *who, qd_err *err) {
    pretok p = {.kind = kind, .behavior = SB_ISOLATED, .individual = individual};
    if (re && !(p.re = compile_pattern(re, PCRE2_ZERO_TERMINATED, 0, who, "tokenizer.ggml.pre",
                                       err)))
        return QD_ERR;
    pretok *s = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *s);
    if (!s) {
        pcre2_code_free(p.re);
        return qd_errf(err, "%s: out of memory", who);
    }
    t->steps = s;
    t->steps[t->n_steps++] = p;
    return QD_OK;
}

/* GGUF's byte-level vocabulary (tokenizer.ggml.model gpt2): the pre-tokenizer that
 * tokenizer.ggml.pre names, as the tokenizer.json of those models spells it, the ranked
 * merges, and control and user-defined tokens matched in the text as added tokens. */
int qd_bpe_pre_lookup(const char *name, qd_bpe_pre *p) {
    memset(p, 0, sizeof *p);
    if (!name[0] || strcmp(name, "gpt2") == 0 || strcmp(name, "default") == 0) {
        p->bytelevel_regex = RE_GPT2;
    } else if (strcmp(name, "smollm") == 0) {
        p->digits = 1;
        p->bytelevel_regex = RE_GPT2;
    } else if (strcmp(name, "llama-bpe") == 0 || strcmp(name, "llama3") == 0) {
        p->split_regex = RE_LLAMA3;
        p->ignore_merges = 1;
    } else if (strcmp(name, "qwen2") == 0) {
        p->split_regex = RE_QWEN2;
        p->nfc = 1; /* Qwen2's tokenizer.json normalizes to NFC */
    } else {
        return QD_ERR;
    }
    return QD_OK;
}

static int gguf_bpe_setup(qd_tokenizer *t, const qd_vocab *v, qd_err *err) {
    const char *who = "qd_tok_from_vocab";
    qd_bpe_pre p;
    if (qd_bpe_pre_lookup(v->pre, &p) != QD_OK)
        return qd_errf(err, "%s: tokenizer.ggml.pre: \"%s\" is not supported (gpt2, smollm, "
                       "llama-bpe, qwen2)", who, v->pre);
    if ((p.split_regex && add_pre_step(t, PT_SPLIT, p.split_regex, 0, who, err) != QD_OK) ||
        (p.digits && add_pre_step(t, PT_DIGITS, NULL, 1, who, err) != QD_OK) ||
        add_pre_step(t, PT_BYTELEVEL, p.bytelevel_regex, 0, who, err) != QD_OK)
        return QD_ERR;
    t->ignore_merges = p.ignore_merges;
    if (p.nfc) t->unorm = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    if (v->n_merges < 0 || v->n_merges > QD_MAX_MERGES || (v->n_merges && !v->merges))
        return qd_errf(err, "%s: tokenizer.ggml.merges: %d entries, limit %d", who, v->n_merges,
                       QD_MAX_MERGES);
    if (pairs_init(t, (size_t)v->n_merges) != 0) return qd_errf(err, "%s: out of memory", who);
    char *cat = malloc(2 * QD_TOK_MAX_BYTES + 2);
    if (!cat) return qd_errf(err, "%s: out of memory", who);
    for (int r = 0; r < v->n_merges; r++) {
        const char *m = v->merges[r];
        const char *sp = m && m[0] ? strchr(m + 1, ' ') : NULL;
        size_t la = sp ? (size_t)(sp - m) : 0, lb = sp ? strlen(sp + 1) : 0;
        if (!sp || lb == 0 || la > QD_TOK_MAX_BYTES || lb > QD_TOK_MAX_BYTES) {
            free(cat);
            return qd_errf(err, "%s: tokenizer.ggml.merges[%d]: expected \"left right\"", who, r);
        }
        memcpy(cat, m, la);
        memcpy(cat + la, sp + 1, lb);
        int a = smap_find(t, m, la), b = smap_find(t, sp + 1, lb), c = smap_find(t, cat, la + lb);
        if (a < 0 || b < 0 || c < 0) {
            free(cat);
            return qd_errf(err, "%s: tokenizer.ggml.merges[%d]: \"%s\" names a token that is "
                           "not in tokenizer.ggml.tokens", who, r, m);
        }
        pair_insert(t, a, b, c, r);
    }
    free(cat);
    t->added = malloc((size_t)t->v->n * sizeof *t->added);
    if (!t->added) return qd_errf(err, "%s: out of memory", who);
    for (int i = 0; i < t->v->n; i++) {
        int ty = t->v->types[i];
        if ((ty == QD_TOK_CONTROL || ty == QD_TOK_USER) && t->tlen[i] > 0) {
            t->added[t->n_added++] = i;
            t->added_first[(unsigned char)t->v->tokens[i][0]] = 1;
        }
    }
    qsort_r(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added_len, t);
    return QD_OK;
}

qd_tokenizer *qd_tok_from_vocab(const qd_vocab *v, qd_err *err) {
    int bpe = v && v->kind == QD_VOCAB_BPE;
    qd_tokenizer *t = tok_build(v, bpe, __func__, err);
    if (!t) return NULL;
    t->kind = bpe ? KIND_HF : KIND_SPM;
    if (bpe && gguf_bpe_setup(t, v, err) != QD_OK) {
        qd_tok_free(t);
        return NULL;
    }
    return t;
}

/* ---- accessors ------------------------------------------------------------------------- */

int qd_tok_vocab_size(const qd_tokenizer *t) { return t->v->n; }
int qd_tok_bos(const qd_tokenizer *t) { return t->v->bos_id; }
int qd_tok_eos(const qd_tokenizer *t) { return t->v->eos_id; }
int qd_tok_add_bos(const qd_tokenizer *t) { return t->v->add_bos; }

const char *qd_tok_token(const qd_tokenizer *t, int id) {
    return id >= 0 && id < t->v->n ? t->v->tokens[id] : NULL;
}

int qd_tok_type(const qd_tokenizer *t, int id) {
    return id >= 0 && id < t->v->n ? t->v->types[id] : 0;
}

int qd_tok_find(const qd_tokenizer *t, const char *s) {
    return smap_find(t, s, strlen(s));
}

/* ---- the BPE engine -------------------------------------------------------------------- */

typedef struct sym {
    size_t start, len;    /* bytes of the normalized text; len 0 = merged away */
    int prev, next;       /* -1 at a word boundary */
    int id;               /* token id, or -1 (SentencePiece: not a piece, byte fallback) */
} sym;

typedef struct bigram {
    double key;           /* higher merges first: score, or -rank */
    int left, right, id;
    size_t size;
} bigram;

typedef struct heap {
    bigram *a;
    size_t n, cap;
} heap;

static int bigram_before(const bigram *x, const bigram *y) {
    return x->key > y->key || (x->key == y->key && x->left < y->left);
}

static int heap_push(heap *h, bigram b) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        bigram *a = realloc(h->a, cap * sizeof *a);
        if (!a) return -1;
        h->a = a;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_before(&b, &h->a[p])) break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = b;
    return 0;
}

static bigram heap_pop(heap *h) {
    bigram top = h->a[0];
    bigram last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bigram_before(&h->a[c + 1], &h->a[c])) c++;
        if (!bigram_before(&h->a[c], &last)) break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n) h->a[i] = last;
    return top;
}

static const pair_slot *pair_find(const qd_tokenizer *t, int a, int b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t h = hash_u64(key) & t->pmask;; h = (h + 1) & t->pmask) {
        const pair_slot *p = &t->pairs[h];
        if (p->key == EMPTY_KEY) return NULL;
        if (p->key == key) return p;
    }
}

static int try_pair(const qd_tokenizer *t, const char *s, const sym *sy, int l, int r, heap *h) {
    if (l < 0 || r < 0) return 0;
    bigram b = {.left = l, .right = r, .size = sy[l].len + sy[r].len};
    if (t->kind == KIND_SPM) {
        int id = smap_find(t, s + sy[l].start, b.size);
        if (id < 0 || !mergeable(t, id)) return 0;
        b.id = id;
        b.key = t->v->scores[id];
    } else {
        if (sy[l].id < 0 || sy[r].id < 0) return 0;
        const pair_slot *p = pair_find(t, sy[l].id, sy[r].id);
        if (!p) return 0;
        b.id = p->merged;
        b.key = -(double)p->rank;
    }
    return heap_push(h, b);
}

/* Encodes one normalized string s (valid UTF-8) and appends the ids. split_mark starts a new
 * word at every "▁" (Metaspace split): merges never cross a word boundary. */
static int bpe_encode(const qd_tokenizer *t, const char *s, size_t n, int split_mark,
                      ivec *out, qd_err *err) {
    if (n == 0) return QD_OK;
    sym *sy = malloc(n * sizeof *sy);
    heap h = {0};
    int rc = QD_ERR;
    if (!sy) {
        qd_errf(err, "qd_tok_encode: out of memory for %zu bytes of text", n);
        goto done;
    }
    int ns = 0, dropped_start = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_char_len((unsigned char)s[i]);
        int word_start = i == 0 || dropped_start ||
                         (split_mark && cl == SPACE_MARK_LEN &&
                          memcmp(s + i, SPACE_MARK, SPACE_MARK_LEN) == 0);
        dropped_start = 0;
        int id = smap_find(t, s + i, cl);
        if (t->kind == KIND_SPM && id >= 0 && !mergeable(t, id)) id = -1;
        if (t->kind == KIND_HF && id < 0) {
            int all = t->byte_fallback;
            for (size_t k = 0; all && k < cl; k++) all = t->byte_id[(unsigned char)s[i + k]] >= 0;
            if (all) {
                for (size_t k = 0; k < cl; k++) {
                    sy[ns] = (sym){i + k, 1, ns - 1, ns + 1,
                                   t->byte_id[(unsigned char)s[i + k]]};
                    if (word_start && k == 0) sy[ns].prev = -1;
                    ns++;
                }
                i += cl;
                continue;
            }
            if (t->v->unk_id < 0) {
                /* no token, no byte fallback, no unk: tokenizers drops the character (a
                 * byte-level vocabulary without some byte's character, as SmolLM2's) */
                dropped_start = word_start;
                i += cl;
                continue;
            }
            id = t->v->unk_id;
            if (t->fuse_unk && ns > 0 && !word_start && sy[ns - 1].id == id &&
                sy[ns - 1].start + sy[ns - 1].len == i) {
                sy[ns - 1].len += cl;
                i += cl;
                continue;
            }
        }
        sy[ns] = (sym){i, cl, word_start ? -1 : ns - 1, ns + 1, id};
        ns++;
        i += cl;
    }
    for (int k = 0; k < ns; k++)
        if (k + 1 == ns || sy[k + 1].prev < 0) sy[k].next = -1;
    for (int k = 0; k + 1 < ns; k++)
        if (sy[k].next >= 0 && try_pair(t, s, sy, k, k + 1, &h) != 0) goto oom;
    while (h.n) {
        bigram b = heap_pop(&h);
        sym *l = &sy[b.left], *r = &sy[b.right];
        if (l->len == 0 || r->len == 0 || l->next != b.right || l->len + r->len != b.size)
            continue;
        l->len += r->len;
        l->id = b.id;
        l->next = r->next;
        if (r->next >= 0) sy[r->next].prev = b.left;
        r->len = 0;
        if (try_pair(t, s, sy, l->prev, b.left, &h) != 0 ||
            try_pair(t, s, sy, b.left, l->next, &h) != 0)
            goto oom;
    }
    for (int k = 0; k < ns; k++) {
        if (sy[k].len == 0) continue;
        if (sy[k].id >= 0) {
            if (ivec_push(out, sy[k].id) != 0) goto oom;
            continue;
        }
        /* SentencePiece byte fallback: a symbol that is no piece becomes its bytes */
        const unsigned char *p = (const unsigned char *)s + sy[k].start;
        int all = 1;
        for (size_t j = 0; j < sy[k].len; j++) all &= t->byte_id[p[j]] >= 0;
        if (all) {
            for (size_t j = 0; j < sy[k].len; j++)
                if (ivec_push(out, t->byte_id[p[j]]) != 0) goto oom;
        } else if (t->v->unk_id >= 0) {
            if (ivec_push(out, t->v->unk_id) != 0) goto oom;
        } else {
            qd_errf(err, "qd_tok_encode: character at byte %zu of the normalized text is not "
                    "in the vocabulary and there are no byte tokens or unk token",
                    sy[k].start);
            goto done;
        }
    }
    rc = QD_OK;
    goto done;
oom:
    qd_errf(err, "qd_tok_encode: out of memory");
done:
    free(sy);
    free(h.a);
    return rc;
}

/* Normalizes one segment into a malloc'd buffer: optional "▁" in front, spaces -> "▁". */
static char *normalize(const char *s, size_t n, int prepend, int replace, size_t *out_len) {
    size_t cap;
    if (qd_mul_ok(n, SPACE_MARK_LEN, &cap) != 0 || cap > SIZE_MAX - 8) return NULL;
    char *b = malloc(cap + 8);
    if (!b) return NULL;
    size_t o = 0;
    if (prepend) {
        memcpy(b, SPACE_MARK, SPACE_MARK_LEN);
        o = SPACE_MARK_LEN;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ' && replace) {
            memcpy(b + o, SPACE_MARK, SPACE_MARK_LEN);
            o += SPACE_MARK_LEN;
        } else {
            b[o++] = s[i];
        }
    }
    b[o] = 0;
    *out_len = o;
    return b;
}

/* ---- byte-level pre-tokenization ---------------------------------------------------- */

typedef struct span {
    size_t off, len;
} span;

typedef struct svec {
    span *a;
    size_t n, cap;
} svec;

/* Appends a piece; empty ones are dropped, as tokenizers drops them. */
static int svec_push(svec *v, size_t off, size_t len) {
    if (len == 0) return 0;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        span *a = realloc(v->a, cap * sizeof *a);
        if (!a) return -1;
        v->a = a;
        v->cap = cap;
    }
    v->a[v->n++] = (span){off, len};
    return 0;
}

/* One piece cut into what a pattern matched (m = 1) and the gaps between (m = 0), covering
 * it in order. */
typedef struct seg {
    size_t s, e;
    int m;
} seg;

typedef struct segv {
    seg *a;
    size_t n, cap;
} segv;

static int segv_push(segv *v, size_t s, size_t e, int m) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        seg *a = realloc(v->a, cap * sizeof *a);
        if (!a) return -1;
        v->a = a;
        v->cap = cap;
    }
    v->a[v->n++] = (seg){s, e, m};
    return 0;
}

/* All matches of re in s[0, n), as tokenizers' Split finds them (an empty match moves on by
 * one character). QD_ERR on a PCRE2 matching error (such as its match limit). */
static int regex_segments(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                          segv *sg, qd_err *err) {
    size_t prev = 0, at = 0;
    while (at <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return qd_errf(err, "qd_tok_encode: pre-tokenizer regex: %s", (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if ((prev != ms && segv_push(sg, prev, ms, 0) != 0) || segv_push(sg, ms, me, 1) != 0)
            return qd_errf(err, "qd_tok_encode: out of memory");
        prev = me;
        if (me > ms) at = me;
        else if (me >= n) break;
        else at = me + utf8_char_len((unsigned char)s[me]);
    }
    if (prev < n && segv_push(sg, prev, n, 0) != 0)
        return qd_errf(err, "qd_tok_encode: out of memory");
    return QD_OK;
}

/* Unicode numeric characters (general category Nd, Nl or No: Rust's char::is_numeric) one
 * by one, and the runs between them. */
static int digit_segments(const char *s, size_t n, segv *sg) {
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                              (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0) return -1;
        utf8proc_category_t c = utf8proc_category(cp);
        int num = c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL ||
                  c == UTF8PROC_CATEGORY_NO;
        if (!num && sg->n && !sg->a[sg->n - 1].m && sg->a[sg->n - 1].e == i)
            sg->a[sg->n - 1].e = i + (size_t)l;
        else if (segv_push(sg, i, i + (size_t)l, num) != 0)
            return -1;
        i += (size_t)l;
    }
    return 0;
}

/* Keeps the segments of a piece at base as behavior says (tokenizers'
 * NormalizedString::split), appending the kept ones to out. */
static int apply_behavior(segv *sg, int behavior, int invert, size_t base, svec *out) {
    seg *a = sg->a;
    size_t n = sg->n, k = 0;
    if (invert)
        for (size_t i = 0; i < n; i++) a[i].m = !a[i].m;
    int prev = 0;
    if (behavior == SB_MERGED_NEXT) {
        /* from the end: a match joins the piece after it */
        for (size_t i = n; i-- > 0;) {
            seg x = a[i];
            if (x.m && !prev && k) a[n - k].s = x.s;
            else a[n - ++k] = (seg){x.s, x.e, 0};
            prev = x.m;
        }
        for (size_t i = n - k; i < n; i++)
            if (svec_push(out, base + a[i].s, a[i].e - a[i].s) != 0) return -1;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        seg x = a[i];
        switch (behavior) {
        case SB_REMOVED: a[k++] = x; break;
        case SB_CONTIGUOUS:
            if (x.m == prev && k) a[k - 1].e = x.e;
            else a[k++] = (seg){x.s, x.e, 0};
            break;
        case SB_MERGED_PREV:
            if (x.m && !prev && k) a[k - 1].e = x.e;
            else a[k++] = (seg){x.s, x.e, 0};
            break;
        default: a[k++] = (seg){x.s, x.e, 0}; break;
        }
        prev = x.m;
    }
    for (size_t i = 0; i < k; i++)
        if (!a[i].m && svec_push(out, base + a[i].s, a[i].e - a[i].s) != 0) return -1;
    return 0;
}

/* BPE on one pre-tokenized piece: with ignore_merges a piece that is a vocabulary token is
 * that token. */
static int bpe_piece(const qd_tokenizer *t, const char *s, size_t n, ivec *out, qd_err *err);

/* Pre-tokenizes the normalized text s[0, n) with the steps and encodes each piece. */
static int pipeline_encode(const qd_tokenizer *t, const char *s, size_t n, ivec *out,
                           qd_err *err) {
    int rc = QD_ERR;
    char *buf = malloc(n ? n : 1), *nbuf = NULL;
    svec cur = {0}, next = {0};
    segv sg = {0};
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!buf || !md) goto oom;
    memcpy(buf, s, n);
    if (svec_push(&cur, 0, n) != 0) goto oom;
    for (int k = 0; k < t->n_steps; k++) {
        const pretok *p = &t->steps[k];
        next.n = 0;
        if (p->kind == PT_BYTELEVEL) {
            /* optional space in front of each piece, GPT-2's split, then every byte becomes
             * its character: at most 2 bytes per byte, plus the spaces */
            size_t cap = 0;
            for (size_t i = 0; i < cur.n; i++) cap += 2 * (cur.a[i].len + 1);
            free(nbuf);
            if (!(nbuf = malloc(cap ? cap : 1))) goto oom;
            char *tmp = malloc(n + cur.n + 1);
            if (!tmp) goto oom;
            size_t o = 0;
            int bad = 0; /* 1: regex error (err set), 2: out of memory */
            for (size_t i = 0; i < cur.n && !bad; i++) {
                size_t l = 0;
                if (p->add_prefix_space && buf[cur.a[i].off] != ' ') tmp[l++] = ' ';
                memcpy(tmp + l, buf + cur.a[i].off, cur.a[i].len);
                l += cur.a[i].len;
                sg.n = 0;
                if (p->re) bad = regex_segments(p->re, md, tmp, l, &sg, err) != QD_OK;
                else bad = segv_push(&sg, 0, l, 0) != 0 ? 2 : 0;
                for (size_t j = 0; j < sg.n && !bad; j++) {
                    size_t start = o;
                    for (size_t b = sg.a[j].s; b < sg.a[j].e; b++) {
                        unsigned char c = (unsigned char)tmp[b];
                        memcpy(nbuf + o, t->bl_enc[c], t->bl_len[c]);
                        o += t->bl_len[c];
                    }
                    if (svec_push(&next, start, o - start) != 0) bad = 2;
                }
            }
            free(tmp);
            if (bad == 1) goto done;
            if (bad) goto oom;
            char *sw = buf;
            buf = nbuf;
            nbuf = sw;
        } else {
            for (size_t i = 0; i < cur.n; i++) {
                const char *ps = buf + cur.a[i].off;
                sg.n = 0;
                if (p->kind == PT_SPLIT) {
                    if (regex_segments(p->re, md, ps, cur.a[i].len, &sg, err) != QD_OK) goto done;
                    if (apply_behavior(&sg, p->behavior, p->invert, cur.a[i].off, &next) != 0)
                        goto oom;
                } else {
                    if (digit_segments(ps, cur.a[i].len, &sg) != 0 ||
                        apply_behavior(&sg, p->individual ? SB_ISOLATED : SB_CONTIGUOUS, 0,
                                       cur.a[i].off, &next) != 0)
                        goto oom;
                }
            }
        }
        svec sw = cur;
        cur = next;
        next = sw;
    }
    for (size_t i = 0; i < cur.n; i++)
        if (bpe_piece(t, buf + cur.a[i].off, cur.a[i].len, out, err) != QD_OK) goto done;
    rc = QD_OK;
    goto done;
oom:
    qd_errf(err, "qd_tok_encode: out of memory for %zu bytes of text", n);
done:
    free(buf);
    free(nbuf);
    free(cur.a);
    free(next.a);
    free(sg.a);
    pcre2_match_data_free(md);
    return rc;
}

static int bpe_piece(const qd_tokenizer *t, const char *s, size_t n, ivec *out, qd_err *err) {
    if (t->ignore_merges) {
        int id = smap_find(t, s, n);
        if (id >= 0) return ivec_push(out, id) == 0 ? QD_OK
                                                     : qd_errf(err, "qd_tok_encode: out of memory");
    }
    return bpe_encode(t, s, n, 0, out, err);
}

/* The text under the NFC/NFD/NFKC/NFKD normalizer (utf8proc), malloc'd; NULL on failure. */
static char *unicode_normalize(const qd_tokenizer *t, const char *s, size_t n, size_t *m,
                               qd_err *err) {
    utf8proc_uint8_t *d = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &d,
                                      (utf8proc_option_t)t->unorm);
    if (r < 0) {
        qd_errf(err, "qd_tok_encode: normalizer: %s", utf8proc_errmsg(r));
        return NULL;
    }
    *m = (size_t)r;
    return (char *)d;
}

/* The added token whose content starts s at i (longest first) among those matched in the
 * raw text (norm 0) or in the normalized text (norm 1), or -1. */
static int added_at(const qd_tokenizer *t, const char *s, size_t n, size_t i, int norm);
static int next_added(const qd_tokenizer *t, const char *s, size_t n, size_t from, size_t floor,
                      int norm, size_t *ms, size_t *me);

/* A segment between added tokens in byte-level mode: normalize, split on the added tokens
 * that are matched in normalized text, pre-tokenize and encode the rest. */
static int pipeline_segment(const qd_tokenizer *t, const char *s, size_t n, ivec *out,
                            qd_err *err) {
    char *norm = NULL;
    if (t->unorm) {
        if (!(norm = unicode_normalize(t, s, n, &n, err))) return QD_ERR;
        s = norm;
    }
    int rc = QD_OK;
    size_t seg = 0, ms, me;
    int id;
    while (rc == QD_OK && t->added_norm &&
           (id = next_added(t, s, n, seg, seg, 1, &ms, &me)) >= 0) {
        if (ms > seg) rc = pipeline_encode(t, s + seg, ms - seg, out, err);
        if (rc == QD_OK && ivec_push(out, id) != 0)
            rc = qd_errf(err, "qd_tok_encode: out of memory");
        seg = me;
    }
    if (rc == QD_OK && n > seg) rc = pipeline_encode(t, s + seg, n - seg, out, err);
    free(norm);
    return rc;
}

static int encode_segment(const qd_tokenizer *t, const char *s, size_t n, size_t off, ivec *out,
                          qd_err *err) {
    if (n == 0) return QD_OK;
    if (t->n_steps) return pipeline_segment(t, s, n, out, err);
    char *unorm = NULL;
    if (t->unorm) {
        if (!(unorm = unicode_normalize(t, s, n, &n, err))) return QD_ERR;
        s = unorm;
        if (n == 0) {
            free(unorm);
            return QD_OK;
        }
    }
    int prepend, replace;
    if (t->kind == KIND_SPM) {
        prepend = t->v->add_space_prefix;
        replace = 1;
    } else {
        replace = t->norm_replace || t->meta;
        prepend = t->norm_prepend;
        if (t->meta && !prepend &&
            (t->meta_scheme == META_ALWAYS || (t->meta_scheme == META_FIRST && off == 0)))
            /* Metaspace prepends only where the text does not already start with one */
            prepend = !(s[0] == ' ' ||
                        (n >= SPACE_MARK_LEN && memcmp(s, SPACE_MARK, SPACE_MARK_LEN) == 0));
    }
    size_t m;
    char *norm = normalize(s, n, prepend, replace, &m);
    free(unorm);
    if (!norm) return qd_errf(err, "qd_tok_encode: out of memory for %zu bytes of text", n);
    int rc = bpe_encode(t, norm, m, t->kind == KIND_HF && t->meta && t->meta_split, out, err);
    free(norm);
    return rc;
}

static int added_at(const qd_tokenizer *t, const char *s, size_t n, size_t i, int norm) {
    if (!t->added_first[(unsigned char)s[i]]) return -1;
    for (int k = 0; k < t->n_added; k++) {
        int id = t->added[k];
        if (t->added_norm && t->added_norm[id] != norm) continue;
        size_t l = t->tlen[id];
        if (l <= n - i && memcmp(s + i, t->v->tokens[id], l) == 0) return id;
    }
    return -1;
}

/* Unicode White_Space (Rust's char::is_whitespace). */
static int is_ws(utf8proc_int32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* A word character for single_word: a letter, a number or '_'. */
static int is_word(utf8proc_int32_t c) {
    if (c == '_') return 1;
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

/* The character starting at s[i] (valid UTF-8), its length in *l. */
static utf8proc_int32_t char_at(const char *s, size_t n, size_t i, size_t *l) {
    utf8proc_int32_t c = -1;
    utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                          (utf8proc_ssize_t)(n - i), &c);
    *l = r > 0 ? (size_t)r : 1;
    return c;
}

/* The start of the character that ends at s[i] (i > 0). */
static size_t char_before(const char *s, size_t i) {
    do i--;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80);
    return i;
}

/* The next added token at or after from in s[0, n), as tokenizers finds them: leftmost-
 * longest; a single_word match inside a word is passed over (the search goes on after it);
 * lstrip takes the whitespace before the match, back to floor (the end of the previous
 * match); rstrip the whitespace after it. [*ms, *me) is what the token stands for; -1 when
 * there is none. */
static int next_added(const qd_tokenizer *t, const char *s, size_t n, size_t from, size_t floor,
                      int norm, size_t *ms, size_t *me) {
    for (size_t i = from; i < n;) {
        int id = added_at(t, s, n, i, norm);
        if (id < 0) {
            i++;
            continue;
        }
        size_t st = i, e = i + t->tlen[id], l;
        int f = t->added_flags ? t->added_flags[id] : 0;
        if ((f & AF_SINGLE_WORD) &&
            ((st > 0 && is_word(char_at(s, n, char_before(s, st), &l))) ||
             (e < n && is_word(char_at(s, n, e, &l))))) {
            i = e;
            continue;
        }
        if (f & AF_LSTRIP)
            while (st > floor) {
                size_t b = char_before(s, st);
                if (!is_ws(char_at(s, n, b, &l))) break;
                st = b;
            }
        if (f & AF_RSTRIP)
            while (e < n && is_ws(char_at(s, n, e, &l))) e += l;
        *ms = st;
        *me = e;
        return id;
    }
    return -1;
}

int qd_tok_encode(const qd_tokenizer *t, const char *text, size_t len, int add_bos, int **ids,
                  size_t *n_ids, qd_err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!text && len) return qd_errf(err, "%s: NULL text", __func__);
    size_t bad = qd_utf8_valid_prefix(text, len);
    if (bad != len) return qd_errf(err, "%s: invalid UTF-8 at byte offset %zu", __func__, bad);
    ivec out = {0};
    if (add_bos) {
        if (t->v->bos_id < 0) return qd_errf(err, "%s: the vocabulary has no BOS token", __func__);
        if (ivec_push(&out, t->v->bos_id) != 0) goto oom;
    }
    if (t->kind == KIND_SPM || t->n_added == 0) {
        if (encode_segment(t, text, len, 0, &out, err) != QD_OK) goto fail;
    } else {
        size_t seg = 0, ms, me;
        int id;
        while ((id = next_added(t, text, len, seg, seg, 0, &ms, &me)) >= 0) {
            if (encode_segment(t, text + seg, ms - seg, seg, &out, err) != QD_OK) goto fail;
            if (ivec_push(&out, id) != 0) goto oom;
            seg = me;
        }
        if (encode_segment(t, text + seg, len - seg, seg, &out, err) != QD_OK) goto fail;
    }
    if (!out.a && !(out.a = malloc(sizeof(int)))) goto oom;
    *ids = out.a;
    *n_ids = out.n;
    return QD_OK;
oom:
    qd_errf(err, "%s: out of memory", __func__);
fail:
    free(out.a);
    return QD_ERR;
}

/* ---- decoding -------------------------------------------------------------------------- */

const char *qd_tok_piece(const qd_tokenizer *t, int prev, int id, size_t *len) {
    if (id < 0 || id >= t->v->n) {
        *len = 0;
        return NULL;
    }
    const char *p = t->pbuf + t->poff[id];
    size_t n = t->plen[id];
    if (t->v->add_space_prefix && (prev < 0 || prev == t->v->bos_id) && n > 0 && p[0] == ' ' &&
        t->v->types[id] != QD_TOK_BYTE && t->v->types[id] != QD_TOK_UNKNOWN) {
        p++;
        n--;
    }
    *len = n;
    return p;
}

char *qd_tok_decode_len(const qd_tokenizer *t, const int *ids, size_t n, size_t *len,
                        qd_err *err) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->v->n)
            return qd_errf(err, "qd_tok_decode: token %zu: id %d outside the vocabulary (0..%d)",
                           i, ids[i], t->v->n - 1),
                   NULL;
        total += t->plen[ids[i]];
    }
    char *s = malloc(total + 1);
    if (!s) return qd_errf(err, "qd_tok_decode: out of memory for %zu bytes", total), NULL;
    size_t o = 0;
    int prev = -1;
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *p = qd_tok_piece(t, prev, ids[i], &l);
        memcpy(s + o, p, l);
        o += l;
        prev = ids[i];
    }
    s[o] = 0;
    if (len) *len = o;
    return s;
}

char *qd_tok_decode(const qd_tokenizer *t, const int *ids, size_t n, qd_err *err) {
    return qd_tok_decode_len(t, ids, n, NULL, err);
}

/* ---- llama2.c tokenizer.bin ------------------------------------------------------------ */

static int32_t rd_i32(const unsigned char *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

static float rd_f32(const unsigned char *p) {
    int32_t i = rd_i32(p);
    float f;
    memcpy(&f, &i, 4);
    return f;
}

/* tokenizer.bin stores a space as a real space and BOS/EOS as "\n<s>\n" / "\n</s>\n": map them
 * onto the SentencePiece spelling so that ids agree with the GGUF form of the vocabulary. */
static char *llama2c_spelling(const unsigned char *p, size_t n) {
    if (n == 5 && memcmp(p, "\n<s>\n", 5) == 0) return strdup("<s>");
    if (n == 6 && memcmp(p, "\n</s>\n", 6) == 0) return strdup("</s>");
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += p[i] == ' ';
    char *s = malloc(n + 2 * spaces + 1);
    if (!s) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ') {
            memcpy(s + o, SPACE_MARK, SPACE_MARK_LEN);
            o += SPACE_MARK_LEN;
        } else {
            s[o++] = (char)p[i];
        }
    }
    s[o] = 0;
    return s;
}

qd_vocab *qd_vocab_load_llama2c(const char *path, qd_err *err) {
    size_t len;
    unsigned char *buf = qd_read_file(path, TOKFILE_MAX_BYTES, &len, err);
    if (!buf) return NULL;
    qd_vocab *v = NULL;
    if (len < 4) {
        qd_errf(err, "%s: max_token_length: truncated file (%zu bytes)", path, len);
        goto fail;
    }
    int32_t maxlen = rd_i32(buf);
    if (maxlen < 1 || maxlen > QD_TOK_MAX_BYTES) {
        qd_errf(err, "%s: max_token_length: %d outside 1..%d", path, maxlen, QD_TOK_MAX_BYTES);
        goto fail;
    }
    /* first pass: count and check */
    int n = 0;
    size_t o = 4;
    while (o < len) {
        if (n >= QD_MAX_VOCAB) {
            qd_errf(err, "%s: more than %d tokens", path, QD_MAX_VOCAB);
            goto fail;
        }
        if (len - o < 8) {
            qd_errf(err, "%s: token %d: truncated score/length (%zu bytes left)", path, n,
                    len - o);
            goto fail;
        }
        float score = rd_f32(buf + o);
        int32_t l = rd_i32(buf + o + 4);
        if (!isfinite(score)) {
            qd_errf(err, "%s: token %d: score is not finite", path, n);
            goto fail;
        }
        if (l < 0 || l > QD_TOK_MAX_BYTES) {
            qd_errf(err, "%s: token %d: length %d outside 0..%d", path, n, l, QD_TOK_MAX_BYTES);
            goto fail;
        }
        o += 8;
        if (len - o < (size_t)l) {
            qd_errf(err, "%s: token %d: truncated bytes (length %d, %zu bytes left)", path, n,
                    l, len - o);
            goto fail;
        }
        if (memchr(buf + o, 0, (size_t)l)) {
            qd_errf(err, "%s: token %d: contains a NUL byte", path, n);
            goto fail;
        }
        o += (size_t)l;
        n++;
    }
    if (n == 0) {
        qd_errf(err, "%s: no tokens", path);
        goto fail;
    }
    v = qd_vocab_new(n, err);
    if (!v) goto fail;
    o = 4;
    for (int i = 0; i < n; i++) {
        v->scores[i] = rd_f32(buf + o);
        size_t l = (size_t)rd_i32(buf + o + 4);
        o += 8;
        v->tokens[i] = llama2c_spelling(buf + o, l);
        if (!v->tokens[i]) {
            qd_errf(err, "%s: out of memory", path);
            goto fail;
        }
        o += l;
        if (strcmp(v->tokens[i], "<unk>") == 0 && v->unk_id < 0) v->unk_id = i;
        if (strcmp(v->tokens[i], "<s>") == 0 && v->bos_id < 0) v->bos_id = i;
        if (strcmp(v->tokens[i], "</s>") == 0 && v->eos_id < 0) v->eos_id = i;
    }
    for (int i = 0; i < n; i++) v->types[i] = infer_type(v, i);
    free(buf);
    return v;
fail:
    qd_vocab_free(v);
    free(buf);
    return NULL;
}

qd_tokenizer *qd_tok_load_llama2c(const char *path, qd_err *err) {
    qd_vocab *v = qd_vocab_load_llama2c(path, err);
    if (!v) return NULL;
    qd_tokenizer *t = qd_tok_from_vocab(v, err);
    qd_vocab_free(v);
    return t;
}

/* ---- Hugging Face tokenizer.json ------------------------------------------------------- */

typedef struct hf_opts {
    int norm_prepend, norm_replace, meta, meta_scheme, meta_split;
    int unorm;               /* utf8proc options of a Unicode normal form */
    pretok steps[8];         /* byte-level pre-tokenizer steps (patterns owned here until moved) */
    int n_steps;
} hf_opts;

static void hf_opts_free(hf_opts *o) {
    for (int i = 0; i < o->n_steps; i++) pcre2_code_free(o->steps[i].re);
    o->n_steps = 0;
}

/* Compiles a pre-tokenizer pattern (UTF, Unicode properties for \s \w \d, as Oniguruma runs
 * tokenizers' patterns) with JIT where PCRE2 has it. NULL with err naming where and why. */
static pcre2_code *compile_pattern(const char *pat, size_t len, int literal, const char *path,
                                   const char *field, qd_err *err) {
    int ec;
    PCRE2_SIZE eo;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opt, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(ec, msg, sizeof msg);
        qd_errf(err, "%s: %s: pattern does not compile at offset %zu: %s", path, field,
                (size_t)eo, (const char *)msg);
        return NULL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* no JIT: the interpreter matches the same */
    return re;
}

static int hf_normalizer(const cJSON *nz, const char *path, hf_opts *o, qd_err *err) {
    if (!nz || cJSON_IsNull(nz)) return QD_OK;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(nz, "type");
    if (!cJSON_IsString(type))
        return qd_errf(err, "%s: normalizer.type: missing", path);
    const char *ty = type->valuestring;
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(nz, "normalizers");
        if (!cJSON_IsArray(list))
            return qd_errf(err, "%s: normalizer.normalizers: not an array", path);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) if (hf_normalizer(it, path, o, err) != QD_OK) return QD_ERR;
        return QD_OK;
    }
    static const struct { const char *name; int opt; } forms[] = {
        {"NFC", UTF8PROC_STABLE | UTF8PROC_COMPOSE},
        {"NFD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE},
        {"NFKC", UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT},
        {"NFKD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT}};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++)
        if (strcmp(ty, forms[i].name) == 0) {
            if (o->unorm || o->norm_prepend || o->norm_replace)
                return qd_errf(err, "%s: normalizer.type: %s after another normalizer is not "
                               "supported (only one Unicode form, first)", path, ty);
            o->unorm = forms[i].opt;
            return QD_OK;
        }
    if (strcmp(ty, "Prepend") == 0) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(nz, "prepend");
        if (!cJSON_IsString(p) || strcmp(p->valuestring, SPACE_MARK) != 0)
            return qd_errf(err, "%s: normalizer.prepend: only \"" SPACE_MARK "\" is supported",
                           path);
        o->norm_prepend = 1;
        return QD_OK;
    }
    if (strcmp(ty, "Replace") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(nz, "pattern");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(nz, "content");
        if (!cJSON_IsString(str) || !cJSON_IsString(content) ||
            strcmp(str->valuestring, " ") != 0 || strcmp(content->valuestring, SPACE_MARK) != 0)
            return qd_errf(err, "%s: normalizer Replace: only \" \" -> \"" SPACE_MARK
                           "\" is supported", path);
        o->norm_replace = 1;
        return QD_OK;
    }
    return qd_errf(err, "%s: normalizer.type: \"%s\" is not supported (NFC, NFD, NFKC, NFKD, "
                   "Prepend, Replace, Sequence)", path, ty);
}

static int add_step(hf_opts *o, pretok p, const char *path, qd_err *err) {
    if (o->n_steps == (int)(sizeof o->steps / sizeof o->steps[0])) {
        pcre2_code_free(p.re);
        return qd_errf(err, "%s: pre_tokenizer: more than %d steps", path, o->n_steps);
    }
    o->steps[o->n_steps++] = p;
    return QD_OK;
}

/* A bool field that may be absent (then def). */
static int opt_bool(const cJSON *obj, const char *key, int def) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsBool(b) ? cJSON_IsTrue(b) : def;
}

static int hf_pretokenizer(const cJSON *pt, const char *path, hf_opts *o, qd_err *err) {
    if (!pt || cJSON_IsNull(pt)) return QD_OK;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (!cJSON_IsString(type)) return qd_errf(err, "%s: pre_tokenizer.type: missing", path);
    const char *ty = type->valuestring;
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        if (!cJSON_IsArray(list))
            return qd_errf(err, "%s: pre_tokenizer.pretokenizers: not an array", path);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) if (hf_pretokenizer(it, path, o, err) != QD_OK) return QD_ERR;
        return QD_OK;
    }
    if (strcmp(ty, "ByteLevel") == 0) {
        pretok p = {.kind = PT_BYTELEVEL, .add_prefix_space = opt_bool(pt, "add_prefix_space", 1)};
        if (opt_bool(pt, "use_regex", 1) &&
            !(p.re = compile_pattern(RE_GPT2, PCRE2_ZERO_TERMINATED, 0, path,
                                     "pre_tokenizer ByteLevel", err)))
            return QD_ERR;
        return add_step(o, p, path, err);
    }
    if (strcmp(ty, "Digits") == 0) {
        pretok p = {.kind = PT_DIGITS, .individual = opt_bool(pt, "individual_digits", 0)};
        return add_step(o, p, path, err);
    }
    if (strcmp(ty, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *src = cJSON_IsString(re) ? re : str;
        if (!cJSON_IsString(src))
            return qd_errf(err, "%s: pre_tokenizer Split.pattern: needs {\"Regex\": ...} or "
                           "{\"String\": ...}", path);
        static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious",
                                             "MergedWithNext", "Contiguous"};
        const cJSON *bh = cJSON_GetObjectItemCaseSensitive(pt, "behavior");
        int behavior = -1;
        for (int i = 0; i < 5 && cJSON_IsString(bh); i++)
            if (strcmp(bh->valuestring, names[i]) == 0) behavior = i;
        if (behavior < 0)
            return qd_errf(err, "%s: pre_tokenizer Split.behavior: \"%s\" unknown (Isolated, "
                           "Removed, MergedWithPrevious, MergedWithNext, Contiguous)", path,
                           cJSON_IsString(bh) ? bh->valuestring : "?");
        pretok p = {.kind = PT_SPLIT, .behavior = behavior, .invert = opt_bool(pt, "invert", 0)};
        if (!(p.re = compile_pattern(src->valuestring, strlen(src->valuestring), src == str, path,
                                     "pre_tokenizer Split.pattern", err)))
            return QD_ERR;
        return add_step(o, p, path, err);
    }
    if (strcmp(ty, "Metaspace") != 0)
        return qd_errf(err, "%s: pre_tokenizer.type: \"%s\" is not supported (ByteLevel, Split, "
                       "Digits, Metaspace, Sequence)", path, ty);
    const cJSON *rep = cJSON_GetObjectItemCaseSensitive(pt, "replacement");
    if (rep && (!cJSON_IsString(rep) || strcmp(rep->valuestring, SPACE_MARK) != 0))
        return qd_errf(err, "%s: pre_tokenizer.replacement: only \"" SPACE_MARK "\" is supported",
                       path);
    o->meta = 1;
    o->meta_scheme = META_ALWAYS;
    const cJSON *aps = cJSON_GetObjectItemCaseSensitive(pt, "add_prefix_space");
    if (cJSON_IsBool(aps)) o->meta_scheme = cJSON_IsTrue(aps) ? META_ALWAYS : META_NEVER;
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(pt, "prepend_scheme");
    if (cJSON_IsString(ps)) {
        if (strcmp(ps->valuestring, "always") == 0) o->meta_scheme = META_ALWAYS;
        else if (strcmp(ps->valuestring, "first") == 0) o->meta_scheme = META_FIRST;
        else if (strcmp(ps->valuestring, "never") == 0) o->meta_scheme = META_NEVER;
        else
            return qd_errf(err, "%s: pre_tokenizer.prepend_scheme: \"%s\" unknown", path,
                           ps->valuestring);
    }
    const cJSON *split = cJSON_GetObjectItemCaseSensitive(pt, "split");
    o->meta_split = split ? cJSON_IsTrue(split) : 1;
    return QD_OK;
}

/* Whether the decoder (or one in its Sequence) is ByteLevel. Other decoders are the
 * SentencePiece-style rules of build_pieces. */
static int hf_decoder_bytelevel(const cJSON *d) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(d, "type");
    if (!cJSON_IsString(ty)) return 0;
    if (strcmp(ty->valuestring, "ByteLevel") == 0) return 1;
    if (strcmp(ty->valuestring, "Sequence") != 0) return 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(d, "decoders"))
        if (hf_decoder_bytelevel(it)) return 1;
    return 0;
}

/* The post-processor's template for one sequence (TemplateProcessing, or one inside a
 * Sequence of processors), or NULL. */
static const cJSON *hf_template_single(const cJSON *pp) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
    if (cJSON_IsArray(single)) return single;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pp, "processors")) {
        const cJSON *s = hf_template_single(it);
        if (s) return s;
    }
    return NULL;
}

/* Spelling of one side of a merge, as a NUL-terminated string in a or b. */
static int hf_merge_sides(const cJSON *m, char **a, char **b) {
    *a = *b = NULL;
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring;
        const char *sp = strchr(s, ' ');
        if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' ')) return -1;
        *a = strndup(s, (size_t)(sp - s));
        *b = strdup(sp + 1);
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
        const cJSON *x = cJSON_GetArrayItem(m, 0), *y = cJSON_GetArrayItem(m, 1);
        if (!cJSON_IsString(x) || !cJSON_IsString(y)) return -1;
        *a = strdup(x->valuestring);
        *b = strdup(y->valuestring);
    } else {
        return -1;
    }
    return *a && *b ? 0 : -2;
}

static int cmp_added_len(const void *x, const void *y, void *ctx) {
    const qd_tokenizer *t = ctx;
    size_t a = t->tlen[*(const int *)x], b = t->tlen[*(const int *)y];
    return a < b ? 1 : a > b ? -1 : 0;
}

/* The parts of a tokenizer.json that hf_build reads, found and checked by hf_model_fields. */
typedef struct hf_fields {
    const cJSON *model, *vocab, *merges, *added;
    int n_vocab, n_added; /* entries of model.vocab and added_tokens */
} hf_fields;

/* Finds model, model.vocab, model.merges and added_tokens and refuses what is not a plain BPE
 * model (another type, dropout, subword prefix or suffix, counts past QD_MAX_VOCAB). */
static int hf_model_fields(const cJSON *root, const char *path, hf_fields *f, qd_err *err) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return qd_errf(err, "%s: model: missing", path);
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (mtype && !(cJSON_IsString(mtype) && strcmp(mtype->valuestring, "BPE") == 0))
        return qd_errf(err, "%s: model.type: \"%s\" is not supported (only BPE)", path,
                       cJSON_IsString(mtype) ? mtype->valuestring : "?");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return qd_errf(err, "%s: model.vocab: missing", path);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) return qd_errf(err, "%s: model.merges: missing", path);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return qd_errf(err, "%s: added_tokens: not an array", path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return qd_errf(err, "%s: model.dropout: BPE dropout is not supported", path);
    const cJSON *cont = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    const cJSON *eow = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    if ((cJSON_IsString(cont) && cont->valuestring[0]) || (cont && !cJSON_IsString(cont) &&
                                                           !cJSON_IsNull(cont)))
        return qd_errf(err, "%s: model.continuing_subword_prefix: not supported", path);
    if ((cJSON_IsString(eow) && eow->valuestring[0]) || (eow && !cJSON_IsString(eow) &&
                                                         !cJSON_IsNull(eow)))
        return qd_errf(err, "%s: model.end_of_word_suffix: not supported", path);
    f->model = model;
    f->vocab = vocab;
    f->merges = merges;
    f->added = cJSON_IsArray(added) ? added : NULL;
    f->n_vocab = cJSON_GetArraySize(vocab);
    f->n_added = f->added ? cJSON_GetArraySize(added) : 0;
    if (f->n_vocab < 1 || f->n_vocab > QD_MAX_VOCAB || f->n_added > QD_MAX_VOCAB)
        return qd_errf(err, "%s: model.vocab: %d entries (added_tokens %d), limit 1..%d", path,
                       f->n_vocab, f->n_added, QD_MAX_VOCAB);
    return QD_OK;
}

/* The size of the id space (largest id of model.vocab and added_tokens, plus one), every id
 * checked to be an integer in range and every added token to have a string content; -1 with
 * err otherwise. */
static int hf_id_space(const hf_fields *f, const char *path, qd_err *err) {
    int max_id = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, f->vocab) {
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (d < 0 || d >= QD_MAX_VOCAB || d != (int)d)
            return qd_errf(err, "%s: model.vocab[\"%s\"]: id is not an integer in 0..%d", path,
                           it->string, QD_MAX_VOCAB - 1),
                   -1;
        if ((int)d > max_id) max_id = (int)d;
    }
    int ai = 0;
    cJSON_ArrayForEach(it, f->added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        double d = cJSON_IsNumber(id) ? id->valuedouble : -1;
        if (d < 0 || d >= QD_MAX_VOCAB || d != (int)d || !cJSON_IsString(content))
            return qd_errf(err, "%s: added_tokens[%d]: needs an integer id in 0..%d and a "
                           "string content", path, ai, QD_MAX_VOCAB - 1),
                   -1;
        if ((int)d > max_id) max_id = (int)d;
        ai++;
    }
    return max_id + 1;
}

/* Per-id facts about added tokens, kept until the tokenizer takes them over. */
typedef struct hf_added {
    int *special;          /* 0: not added, 1: added, 2: added and special */
    unsigned char *norm;   /* matched after normalization */
    unsigned char *flags;  /* AF_* */
} hf_added;

/* Fills v's token strings from model.vocab, then added_tokens (their flags into a). */
static int hf_fill_tokens(qd_vocab *v, const hf_fields *f, hf_added *a, const char *path,
                          qd_err *err) {
    const cJSON *it;
    cJSON_ArrayForEach(it, f->vocab) {
        int id = (int)it->valuedouble;
        if (v->tokens[id])
            return qd_errf(err, "%s: model.vocab[\"%s\"]: id %d already used by \"%s\"", path,
                           it->string, id, v->tokens[id]);
        if (strlen(it->string) > QD_TOK_MAX_BYTES)
            return qd_errf(err, "%s: model.vocab: token %d longer than %d bytes", path, id,
                           QD_TOK_MAX_BYTES);
        if (!(v->tokens[id] = strdup(it->string)))
            return qd_errf(err, "%s: out of memory", path);
    }
    int ai = 0;
    cJSON_ArrayForEach(it, f->added) {
        int id = (int)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        const char *content = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        if (v->tokens[id] && strcmp(v->tokens[id], content) != 0 && !a->special[id])
            return qd_errf(err, "%s: added_tokens[%d]: id %d is \"%s\" in model.vocab, not "
                           "\"%s\"", path, ai, id, v->tokens[id], content);
        if (strlen(content) > QD_TOK_MAX_BYTES)
            return qd_errf(err, "%s: added_tokens[%d]: content longer than %d bytes", path, ai,
                           QD_TOK_MAX_BYTES);
        if (!v->tokens[id] && !(v->tokens[id] = strdup(content)))
            return qd_errf(err, "%s: out of memory", path);
        a->special[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special")) ? 2 : 1;
        /* tokenizers' defaults: special tokens match the raw text, others the normalized */
        a->norm[id] = (unsigned char)opt_bool(it, "normalized", a->special[id] == 1);
        a->flags[id] = (unsigned char)((opt_bool(it, "single_word", 0) ? AF_SINGLE_WORD : 0) |
                                       (opt_bool(it, "lstrip", 0) ? AF_LSTRIP : 0) |
                                       (opt_bool(it, "rstrip", 0) ? AF_RSTRIP : 0));
        ai++;
    }
    return QD_OK;
}

/* Token types: holes in the id space become empty UNUSED tokens, added ones CONTROL or USER,
 * <0xXX> pieces BYTE under byte_fallback, model.unk_token UNKNOWN. */
static int hf_token_types(qd_vocab *v, const int *special, int byte_fallback,
                          const cJSON *model, const char *path, qd_err *err) {
    for (int i = 0; i < v->n; i++) {
        if (!v->tokens[i]) { /* a hole in the id space: never produced */
            if (!(v->tokens[i] = strdup(""))) return qd_errf(err, "%s: out of memory", path);
            v->types[i] = QD_TOK_UNUSED;
        } else if (special[i]) {
            v->types[i] = special[i] == 2 ? QD_TOK_CONTROL : QD_TOK_USER;
        } else if (byte_fallback && byte_token_value(v->tokens[i], strlen(v->tokens[i])) >= 0) {
            v->types[i] = QD_TOK_BYTE;
        }
    }
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (!cJSON_IsString(unk)) return QD_OK;
    for (int i = 0; i < v->n && v->unk_id < 0; i++)
        if (strcmp(v->tokens[i], unk->valuestring) == 0) v->unk_id = i;
    if (v->unk_id < 0)
        return qd_errf(err, "%s: model.unk_token: \"%s\" is not in model.vocab", path,
                       unk->valuestring);
    v->types[v->unk_id] = QD_TOK_UNKNOWN;
    return QD_OK;
}

/* The normalizer and pre-tokenizer into o, refusing combinations that are not implemented. */
static int hf_pipeline(const cJSON *root, const char *path, hf_opts *o, qd_err *err) {
    if (hf_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, o, err) !=
            QD_OK ||
        hf_pretokenizer(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, o,
                        err) != QD_OK)
        return QD_ERR;
    if (o->n_steps && (o->meta || o->norm_prepend || o->norm_replace))
        return qd_errf(err, "%s: pre_tokenizer: Metaspace, Prepend or Replace together with "
                       "ByteLevel, Split or Digits is not supported", path);
    return QD_OK;
}

/* BOS/EOS: the usual names (SentencePiece's, Llama-3's, GPT-2's); the post-processor's
 * template says whether BOS is added, and which token it is. */
static int hf_bos_eos(qd_tokenizer *t, const cJSON *root, const char *path, qd_err *err) {
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>",
                                            "<|endoftext|>"};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>"};
    t->v->bos_id = t->v->eos_id = -1;
    for (size_t k = 0; k < 4 && t->v->bos_id < 0; k++) t->v->bos_id = qd_tok_find(t, bos_names[k]);
    for (size_t k = 0; k < 3 && t->v->eos_id < 0; k++) t->v->eos_id = qd_tok_find(t, eos_names[k]);
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const cJSON *single = hf_template_single(pp);
    const cJSON *first = cJSON_IsArray(single) ? cJSON_GetArrayItem(single, 0) : NULL;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken");
    const cJSON *stid = cJSON_GetObjectItemCaseSensitive(st, "id");
    if (!cJSON_IsString(stid)) return QD_OK;
    int id = qd_tok_find(t, stid->valuestring);
    if (id < 0)
        return qd_errf(err, "%s: post_processor.single[0]: \"%s\" is not a token", path,
                       stid->valuestring);
    t->v->bos_id = id;
    t->v->add_bos = 1;
    return QD_OK;
}

/* The added tokens, matched in the raw text before normalization, longest first. */
static int hf_added_list(qd_tokenizer *t, const int *special, int n_added, const char *path,
                         qd_err *err) {
    if (!n_added) return QD_OK;
    if (!(t->added = malloc((size_t)n_added * sizeof *t->added)))
        return qd_errf(err, "%s: out of memory", path);
    for (int i = 0; i < t->v->n; i++)
        if (special[i] && t->tlen[i] > 0) {
            t->added[t->n_added++] = i;
            t->added_first[(unsigned char)t->v->tokens[i][0]] = 1;
        }
    qsort_r(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added_len, t);
    return QD_OK;
}

/* One merge "a b" into the pair map: (id of a, id of b) -> (rank, id of ab). */
static int hf_merge_one(qd_tokenizer *t, const cJSON *m, int rank, const char *path,
                        qd_err *err) {
    char *ma, *mb, *mab = NULL;
    int r = hf_merge_sides(m, &ma, &mb);
    int rc = QD_ERR;
    if (r == -2) {
        qd_errf(err, "%s: out of memory", path);
    } else if (r != 0) {
        qd_errf(err, "%s: model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", path, rank);
    } else {
        size_t la = strlen(ma), lb = strlen(mb);
        if (!(mab = malloc(la + lb + 1))) {
            qd_errf(err, "%s: out of memory", path);
        } else {
            memcpy(mab, ma, la);
            memcpy(mab + la, mb, lb + 1);
            int a = qd_tok_find(t, ma), b = qd_tok_find(t, mb), ab = qd_tok_find(t, mab);
            if (a < 0 || b < 0 || ab < 0) {
                qd_errf(err, "%s: model.merges[%d]: \"%s\" is not in model.vocab", path, rank,
                        a < 0 ? ma : b < 0 ? mb : mab);
            } else {
                pair_insert(t, a, b, ab, rank);
                rc = QD_OK;
            }
        }
    }
    free(ma);
    free(mb);
    free(mab);
    return rc;
}

/* model.merges: rank = position. */
static int hf_merges(qd_tokenizer *t, const cJSON *merges, const char *path, qd_err *err) {
    int n_merges = cJSON_GetArraySize(merges);
    if (n_merges > 4 * QD_MAX_VOCAB)
        return qd_errf(err, "%s: model.merges: %d entries, limit %d", path, n_merges,
                       4 * QD_MAX_VOCAB);
    if (pairs_init(t, (size_t)n_merges) != 0) return qd_errf(err, "%s: out of memory", path);
    int rank = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        if (hf_merge_one(t, it, rank, path, err) != QD_OK) return QD_ERR;
        rank++;
    }
    return QD_OK;
}

/* Unused ids allowed in a tokenizer.json's id space beyond one per token it names. */
#define HF_MAX_EXTRA_HOLES 256

/* Builds a Hugging Face BPE tokenizer from a parsed tokenizer.json: ids from model.vocab and
 * added_tokens (holes in the id space become empty UNUSED tokens), the pair map from merges. */
static qd_tokenizer *hf_build(const cJSON *root, const char *path, qd_err *err) {
    hf_fields f = {0};
    if (hf_model_fields(root, path, &f, err) != QD_OK) return NULL;
    int n = hf_id_space(&f, path, err);
    if (n < 0) return NULL;
    /* the vocabulary is allocated for the whole id space: ids that no entry of the file names
     * (holes) cost memory without costing file bytes, so they are bounded by the entries */
    int entries = f.n_vocab + f.n_added;
    if (n > 2 * entries + HF_MAX_EXTRA_HOLES)
        return qd_errf(err, "%s: model.vocab: ids reach %d but the file names %d tokens (at most "
                       "%d ids may be unused)", path, n - 1, entries,
                       entries + HF_MAX_EXTRA_HOLES),
               NULL;
    qd_vocab *v = qd_vocab_new(n, err);
    if (!v) return NULL;
    hf_opts opts = {0};
    qd_tokenizer *t = NULL;
    hf_added a = {calloc((size_t)v->n, sizeof *a.special), calloc((size_t)v->n, 1),
                  calloc((size_t)v->n, 1)};
    if (!a.special || !a.norm || !a.flags) {
        qd_errf(err, "%s: out of memory", path);
        goto fail;
    }
    int byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(f.model, "byte_fallback"));
    if (hf_fill_tokens(v, &f, &a, path, err) != QD_OK ||
        hf_token_types(v, a.special, byte_fallback, f.model, path, err) != QD_OK ||
        hf_pipeline(root, path, &opts, err) != QD_OK)
        goto fail;
    int bytelevel_dec = hf_decoder_bytelevel(cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    v->add_bos = 0;
    v->add_space_prefix = opts.norm_prepend || (opts.meta && opts.meta_scheme != META_NEVER);
    t = tok_build(v, bytelevel_dec, path, err);
    if (!t) goto fail;
    t->ignore_merges = opt_bool(f.model, "ignore_merges", 0);
    t->unorm = opts.unorm;
    if (opts.n_steps) {
        if (!(t->steps = malloc((size_t)opts.n_steps * sizeof *t->steps))) {
            qd_errf(err, "%s: out of memory", path);
            goto fail;
        }
        memcpy(t->steps, opts.steps, (size_t)opts.n_steps * sizeof *t->steps);
        t->n_steps = opts.n_steps;
        opts.n_steps = 0;
        t->added_norm = a.norm;
        a.norm = NULL;
    }
    t->added_flags = a.flags;
    a.flags = NULL;
    t->kind = KIND_HF;
    t->byte_fallback = byte_fallback;
    t->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(f.model, "fuse_unk"));
    t->norm_prepend = opts.norm_prepend;
    t->norm_replace = opts.norm_replace;
    t->meta = opts.meta;
    t->meta_scheme = opts.meta_scheme;
    t->meta_split = opts.meta_split;
    if (hf_bos_eos(t, root, path, err) != QD_OK ||
        hf_added_list(t, a.special, f.n_added, path, err) != QD_OK ||
        hf_merges(t, f.merges, path, err) != QD_OK)
        goto fail;
    free(a.special);
    free(a.norm); /* kept only with byte-level steps */
    qd_vocab_free(v);
    return t;
fail:
    free(a.special);
    free(a.norm);
    free(a.flags);
    hf_opts_free(&opts);
    qd_vocab_free(v);
    qd_tok_free(t);
    return NULL;
}

qd_tokenizer *qd_tok_load_hf(const char *path, qd_err *err) {
    size_t len;
    char *buf = qd_read_file(path, TOKFILE_MAX_BYTES, &len, err);
    if (!buf) return NULL;
    cJSON *root = cJSON_ParseWithLength(buf, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= buf && at <= buf + len ? (long)(at - buf) : -1;
        qd_errf(err, "%s: not valid JSON (near byte %ld)", path, off);
        free(buf);
        return NULL;
    }
    free(buf);
    qd_tokenizer *t = cJSON_IsObject(root) ? hf_build(root, path, err)
                                           : (qd_errf(err, "%s: not a JSON object", path), NULL);
    cJSON_Delete(root);
    return t;
}

/* ---- dispatch -------------------------------------------------------------------------- */

/* The kind of a tokenizer file without a telling suffix (an uploaded blob): GGUF by its magic,
 * tokenizer.json by a leading '{', else llama2.c's tokenizer.bin. */
static int sniff_kind(const char *path) {
    unsigned char b[64];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(b, 1, sizeof b, f) : 0;
    if (f) fclose(f);
    if (n >= 4 && !memcmp(b, "GGUF", 4)) return 'g';
    size_t i = 0;
    if (n >= 3 && b[0] == 0xef && b[1] == 0xbb && b[2] == 0xbf) i = 3; /* UTF-8 byte order mark */
    while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r')) i++;
    return i < n && b[i] == '{' ? 'j' : 'b';
}

qd_tokenizer *qd_tok_load(const char *path, qd_err *err) {
    if (!path) return qd_errf(err, "%s: no path", __func__), NULL;
    int kind = qd_has_ext(path, ".gguf") ? 'g' : qd_has_ext(path, ".json") ? 'j'
               : qd_has_ext(path, ".bin") ? 'b' : sniff_kind(path);
    if (kind == 'g') {
        qd_vocab *v = qd_gguf_load_vocab(path, err);
        if (!v) return NULL;
        qd_tokenizer *t = qd_tok_from_vocab(v, err);
        if (!t) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
            qd_errf(err, "%s: %s", path, msg);
        }
        qd_vocab_free(v);
        return t;
    }
    if (kind == 'j') return qd_tok_load_hf(path, err);
    return qd_tok_load_llama2c(path, err);
}
