/* Tokenizer tests: the three sources of one vocabulary give the same ids (tokenizer.bin,
 * GGUF, a generated tokenizer.json), the whole fixture text round-trips through each, known
 * LLaMA ids, byte fallback, decode rules, and every malformed-input error. */
#include "quant/text/tokenizer.h"
#include "quant/text/vocab_write.h"

#include "check.h"
#include "gguf_build.h"
#include "base/fs.h"
#include "base/sys.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#define TOK512 "models/tok512.bin"
#define LLAMA2 "models/llama2-tokenizer.bin"
#define TEXT "text/tinystories-valid-excerpt.txt"
#define HF512 "tests/data/tok512.tokenizer.json"
#define HF512_PAIRS "tests/data/tok512-pairs.tokenizer.json"

static const char *UNICODE_TEXT = "héllo wörld — 日本語 🙂";

static char tmpdir[256];

static const char *tmp_path(const char *name) { return check_path(tmpdir, name); }

static const char *write_tmp(const char *name, const void *data, size_t len) {
    return check_write(tmpdir, name, data, len);
}

static char *read_text(size_t *len) {
    qd_err e = {{0}};
    char *s = qd_read_file(fixture(TEXT), 1 << 24, len, &e);
    if (!s) fprintf(stderr, "  %s\n", e.msg);
    return s;
}

static qd_tokenizer *load(const char *path) {
    qd_err e = {{0}};
    qd_tokenizer *t = qd_tok_load(path, &e);
    CHECK(t != NULL, "%s", e.msg);
    return t;
}

/* Encodes s (with BOS), checks the ids decode back to s exactly, returns the ids. */
static int *roundtrip(const qd_tokenizer *t, const char *s, size_t len, size_t *n) {
    qd_err e = {{0}};
    int *ids = NULL;
    *n = 0;
    int rc = qd_tok_encode(t, s, len, 1, &ids, n, &e);
    CHECK(rc == QD_OK, "%s", e.msg);
    if (rc != QD_OK) return NULL;
    CHECK(*n > 0 && ids[0] == qd_tok_bos(t), "first id %d", *n ? ids[0] : -1);
    size_t dl = 0;
    char *d = qd_tok_decode_len(t, ids, *n, &dl, &e);
    CHECK(d != NULL, "%s", e.msg);
    if (d) {
        CHECK(dl == len && memcmp(d, s, len) == 0, "decoded %zu bytes differ from %zu", dl, len);
        free(d);
    }
    return ids;
}

static int same_ids(const int *a, size_t na, const int *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

/* ---- fixtures ----------------------------------------------------------------------- */

static void test_tok512_fixture(void) {
    size_t len;
    char *text = read_text(&len);
    CHECK(text != NULL, "fixture text");
    qd_tokenizer *t = load(fixture(TOK512));
    if (!text || !t) goto out;
    CHECK(qd_tok_vocab_size(t) == 512, "%d", qd_tok_vocab_size(t));
    CHECK(qd_tok_bos(t) == 1 && qd_tok_eos(t) == 2, "%d %d", qd_tok_bos(t), qd_tok_eos(t));
    CHECK(strcmp(qd_tok_token(t, 1), "<s>") == 0, "bos spelled %s", qd_tok_token(t, 1));
    CHECK(strcmp(qd_tok_token(t, 259), "\xe2\x96\x81t") == 0, "space spelled %s",
          qd_tok_token(t, 259));
    double t0 = qd_now();
    size_t n;
    int *ids = roundtrip(t, text, len, &n);
    double dt = qd_now() - t0;
    printf("  tok512: %zu bytes -> %zu tokens, encode+decode %.3f s\n", len, n, dt);
    CHECK(n >= 14000 && n <= 17000, "%zu tokens", n);
    CHECK(dt < 10.0, "encoding took %.1f s (quadratic?)", dt);
    /* merged pieces dominate: fewer than half the tokens are single bytes/characters */
    size_t short_pieces = 0;
    for (size_t i = 0; i < n; i++) short_pieces += strlen(qd_tok_token(t, ids[i])) <= 1;
    CHECK(short_pieces < n / 2, "%zu of %zu tokens are one byte", short_pieces, n);
    free(ids);
out:
    qd_tok_free(t);
    free(text);
}

static void test_llama2_fixture(void) {
    size_t len;
    char *text = read_text(&len);
    qd_tokenizer *t = load(fixture(LLAMA2));
    if (!text || !t) goto out;
    CHECK(qd_tok_vocab_size(t) == 32000, "%d", qd_tok_vocab_size(t));
    double t0 = qd_now();
    size_t n;
    int *ids = roundtrip(t, text, len, &n);
    printf("  llama2: %zu bytes -> %zu tokens, encode+decode %.3f s\n", len, n,
           qd_now() - t0);
    CHECK(n > 5000 && n < 12000, "%zu tokens", n);
    free(ids);
out:
    qd_tok_free(t);
    free(text);
}

/* Ids the real LLaMA tokenizer gives (SentencePiece, add_bos, dummy prefix). */
static void test_llama2_known_ids(void) {
    qd_tokenizer *t = load(fixture(LLAMA2));
    if (!t) return;
    static const struct {
        const char *text;
        int n;
        int ids[8];
    } cases[] = {
        {"Hello world", 3, {1, 15043, 3186}},
        {"Once upon a time", 5, {1, 9038, 2501, 263, 931}},
        {"", 1, {1}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        qd_err e = {{0}};
        int *ids;
        size_t n;
        int rc = qd_tok_encode(t, cases[c].text, strlen(cases[c].text), 1, &ids, &n, &e);
        CHECK(rc == QD_OK, "%s", e.msg);
        if (rc != QD_OK) continue;
        CHECK(same_ids(ids, n, cases[c].ids, (size_t)cases[c].n), "\"%s\": %zu ids, first %d %d",
              cases[c].text, n, n > 1 ? ids[1] : -1, n > 2 ? ids[2] : -1);
        free(ids);
    }
    /* two spaces: "▁x" (score -920) beats "▁▁" (score -1e9), leaving a lone "▁" */
    int *ids;
    size_t n;
    qd_err e = {{0}};
    CHECK(qd_tok_encode(t, "a  x", 4, 0, &ids, &n, &e) == QD_OK, "%s", e.msg);
    CHECK(n == 3 && strcmp(qd_tok_token(t, ids[1]), "\xe2\x96\x81") == 0 &&
              strcmp(qd_tok_token(t, ids[2]), "\xe2\x96\x81x") == 0,
          "%zu ids", n);
    free(ids);
    qd_tok_free(t);
}

static void test_tok512_short(void) {
    qd_tokenizer *t = load(fixture(TOK512));
    if (!t) return;
    const char *s = "Once upon a time";
    qd_err e = {{0}};
    int *ids;
    size_t n;
    CHECK(qd_tok_encode(t, s, strlen(s), 1, &ids, &n, &e) == QD_OK, "%s", e.msg);
    CHECK(n > 1 && n < 10, "%zu tokens", n);
    char cat[256] = "";
    for (size_t i = 1; i < n; i++) strncat(cat, qd_tok_token(t, ids[i]), sizeof cat - 1 - strlen(cat));
    CHECK(strcmp(cat, "\xe2\x96\x81Once\xe2\x96\x81upon\xe2\x96\x81" "a\xe2\x96\x81time") == 0,
          "pieces concatenate to %s", cat);
    /* every word of this phrase is one piece of the 512 vocabulary */
    static const int want[] = {1, 403, 407, 261, 378};
    CHECK(same_ids(ids, n, want, 5), "ids differ");
    free(ids);
    /* without BOS and without text: no ids, but a valid (freeable) array */
    CHECK(qd_tok_encode(t, "", 0, 0, &ids, &n, &e) == QD_OK && n == 0, "%zu", n);
    free(ids);
    qd_tok_free(t);
}

static void test_unicode_byte_fallback(void) {
    const char *paths[] = {fixture(TOK512), fixture(LLAMA2), HF512, HF512_PAIRS};
    for (size_t k = 0; k < 4; k++) {
        qd_tokenizer *t = load(paths[k]);
        if (!t) continue;
        size_t n;
        int *ids = roundtrip(t, UNICODE_TEXT, strlen(UNICODE_TEXT), &n);
        /* 🙂 (F0 9F 99 82) is in neither vocabulary: it must come out as four byte tokens */
        int found = 0;
        for (size_t i = 0; ids && i + 3 < n; i++)
            found |= qd_tok_type(t, ids[i]) == QD_TOK_BYTE &&
                     strcmp(qd_tok_token(t, ids[i]), "<0xF0>") == 0 &&
                     strcmp(qd_tok_token(t, ids[i + 3]), "<0x82>") == 0;
        CHECK(found, "%s: no byte fallback for the emoji", paths[k]);
        free(ids);
        /* control characters, a NUL byte and a lone CR survive as well */
        static const char odd[] = "a\0b\r\n\tc\x7f";
        ids = roundtrip(t, odd, sizeof odd - 1, &n);
        free(ids);
        qd_tok_free(t);
    }
}

static void test_hf_matches_spm(void) {
    size_t len;
    char *text = read_text(&len);
    qd_tokenizer *spm = load(fixture(TOK512));
    qd_tokenizer *hf = load(HF512);
    qd_tokenizer *hfp = load(HF512_PAIRS);
    if (!text || !spm || !hf || !hfp) goto out;
    CHECK(qd_tok_vocab_size(hf) == 512 && qd_tok_bos(hf) == 1 && qd_tok_eos(hf) == 2 &&
              qd_tok_add_bos(hf),
          "n %d bos %d eos %d", qd_tok_vocab_size(hf), qd_tok_bos(hf), qd_tok_eos(hf));
    const char *texts[] = {text, UNICODE_TEXT, " leading space", "trailing  spaces  ", "x"};
    size_t lens[] = {len, strlen(UNICODE_TEXT), 14, 18, 1};
    for (size_t k = 0; k < 5; k++) {
        size_t na, nb, nc;
        int *a = roundtrip(spm, texts[k], lens[k], &na);
        int *b = roundtrip(hf, texts[k], lens[k], &nb);
        int *c = roundtrip(hfp, texts[k], lens[k], &nc);
        CHECK(a && b && same_ids(a, na, b, nb), "text %zu: spm %zu ids, hf %zu ids", k, na, nb);
        CHECK(a && c && same_ids(a, na, c, nc), "text %zu: spm %zu ids, hf pairs %zu", k, na, nc);
        free(a);
        free(b);
        free(c);
    }
    /* special-token text is split out by the HF tokenizer, kept as characters by SentencePiece */
    qd_err e = {{0}};
    int *ids;
    size_t n;
    CHECK(qd_tok_encode(hf, "a</s>b", 6, 0, &ids, &n, &e) == QD_OK, "%s", e.msg);
    int has_eos = 0;
    for (size_t i = 0; i < n; i++) has_eos |= ids[i] == 2;
    CHECK(has_eos, "HF: </s> in text should become the EOS id");
    free(ids);
    CHECK(qd_tok_encode(spm, "a</s>b", 6, 0, &ids, &n, &e) == QD_OK, "%s", e.msg);
    for (size_t i = 0; i < n; i++) CHECK(ids[i] != 2, "SPM: </s> text became EOS");
    free(ids);
out:
    qd_tok_free(spm);
    qd_tok_free(hf);
    qd_tok_free(hfp);
    free(text);
}

static void test_gguf_vocab(void) {
    size_t len;
    char *text = read_text(&len);
    const char *pairs[2][2] = {{"models/stories260K.gguf", TOK512},
                               {"models/llama-2-tiny-random.gguf", LLAMA2}};
    for (int k = 0; k < 2 && text; k++) {
        qd_tokenizer *g = load(fixture(pairs[k][0]));
        qd_tokenizer *b = load(fixture(pairs[k][1]));
        if (g && b) {
            CHECK(qd_tok_vocab_size(g) == qd_tok_vocab_size(b), "%d vs %d",
                  qd_tok_vocab_size(g), qd_tok_vocab_size(b));
            size_t na, nb;
            int *x = roundtrip(g, text, len, &na);
            int *y = roundtrip(b, text, len, &nb);
            CHECK(x && y && same_ids(x, na, y, nb), "%s: %zu ids vs %zu from %s", pairs[k][0],
                  na, nb, pairs[k][1]);
            free(x);
            free(y);
            x = roundtrip(g, UNICODE_TEXT, strlen(UNICODE_TEXT), &na);
            y = roundtrip(b, UNICODE_TEXT, strlen(UNICODE_TEXT), &nb);
            CHECK(x && y && same_ids(x, na, y, nb), "unicode: %zu vs %zu ids", na, nb);
            free(x);
            free(y);
        }
        qd_tok_free(g);
        qd_tok_free(b);
    }
    free(text);
}

/* Ids from tests/gen_golden_ids.py, a naive quadratic SentencePiece BPE written separately in
 * Python: every tokenizer built from the same vocabulary must reproduce them. */
static void test_golden_ids(void) {
    FILE *f = fopen("tests/data/golden_ids.txt", "r");
    CHECK(f != NULL, "tests/data/golden_ids.txt missing");
    if (!f) return;
    size_t tlen;
    char *text = read_text(&tlen);
    qd_tokenizer *tok[2][3] = {
        {load(fixture(TOK512)), load(fixture("models/stories260K.gguf")), load(HF512)},
        {load(fixture(LLAMA2)), load(fixture("models/llama-2-tiny-random.gguf")), NULL}};
    static char line[1 << 16];
    int cases = 0;
    while (text && fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char vocab[16], src[512];
        int n, off;
        if (sscanf(line, "%15s %511s %d%n", vocab, src, &n, &off) != 3 || n < 1 || n > 4096) {
            CHECK(0, "bad golden line: %.60s", line);
            break;
        }
        int want[4096];
        char *p = line + off;
        for (int i = 0; i < n; i++) want[i] = (int)strtol(p, &p, 10);
        char buf[4096];
        const char *s;
        size_t len;
        if (strncmp(src, "fixture:", 8) == 0) {
            s = text;
            len = strtoul(src + 8, NULL, 10);
            CHECK(len <= tlen, "%zu", len);
        } else {
            len = strlen(src + 4) / 2;
            for (size_t i = 0; i < len && i < sizeof buf; i++) {
                unsigned v;
                sscanf(src + 4 + 2 * i, "%2x", &v);
                buf[i] = (char)v;
            }
            s = buf;
        }
        int v = strcmp(vocab, "tok512") == 0 ? 0 : 1;
        for (int k = 0; k < 3; k++) {
            if (!tok[v][k]) continue;
            int *ids;
            size_t m;
            qd_err e = {{0}};
            CHECK(qd_tok_encode(tok[v][k], s, len, 1, &ids, &m, &e) == QD_OK, "%s", e.msg);
            size_t at = 0;
            while (at < m && at < (size_t)n && ids[at] == want[at]) at++;
            CHECK(m == (size_t)n && at == m, "%s %s (form %d): %zu ids, want %d; first "
                  "difference at %zu", vocab, src, k, m, n, at);
            free(ids);
            cases++;
        }
    }
    CHECK(cases >= 30, "only %d golden cases", cases);
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < 3; k++) qd_tok_free(tok[v][k]);
    free(text);
    fclose(f);
}

/* ---- byte-level BPE against the Rust library ------------------------------------------ */

#define SMOLLM2 "tokenizers/smollm2-135m/tokenizer.json"
#define QWEN3_4K "tests/data/qwen3-4k.tokenizer.json"
#define LLAMA3S_4K "tests/data/llama3style-4k.tokenizer.json"
#define VARIANTS_4K "tests/data/variants-4k.tokenizer.json"
#define BPE_GOLDENS "tests/data/bpe_goldens.txt"

/* Hex to bytes ("-" is empty) into a malloc'd buffer; NULL on bad hex. */
static char *unhex(const char *h, size_t *len) {
    size_t n = strcmp(h, "-") == 0 ? 0 : strlen(h);
    char *b = malloc(n / 2 + 1);
    if (!b || n % 2) {
        free(b);
        return NULL;
    }
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1) {
            free(b);
            return NULL;
        }
        b[i] = (char)v;
    }
    b[n / 2] = 0;
    *len = n / 2;
    return b;
}

typedef struct golden_tok {
    const char *name;
    qd_tokenizer *t;
    int cases, enc_ok, dec_ok;
} golden_tok;

/* Runs every line of BPE_GOLDENS whose tokenizer is in toks[]: the ids must equal the Rust
 * library's, and decoding them must give the Rust library's decoded text. Returns the cases
 * run. */
static int run_bpe_goldens(golden_tok *toks, int n_toks) {
    FILE *f = fopen(BPE_GOLDENS, "r");
    CHECK(f != NULL, BPE_GOLDENS " missing");
    if (!f) return 0;
    static char line[1 << 17];
    static int want[1 << 14];
    int total = 0, shown = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[32], mode[8];
        static char th[1 << 16], dh[1 << 16];
        int n, off;
        if (sscanf(line, "%31s %7s %65535s %65535s %d%n", name, mode, th, dh, &n, &off) != 5 ||
            n < 0 || n > (int)(sizeof want / sizeof want[0])) {
            CHECK(0, "bad golden line: %.60s", line);
            break;
        }
        golden_tok *g = NULL;
        for (int k = 0; k < n_toks; k++)
            if (strcmp(toks[k].name, name) == 0) g = &toks[k];
        if (!g || !g->t) continue;
        char *p = line + off;
        for (int i = 0; i < n; i++) want[i] = (int)strtol(p, &p, 10);
        size_t tl = 0, dl = 0;
        char *text = unhex(th, &tl), *dec = unhex(dh, &dl);
        CHECK(text && dec, "bad hex in golden line: %.60s", line);
        if (!text || !dec) {
            free(text);
            free(dec);
            break;
        }
        int bos = strcmp(mode, "bos") == 0 && qd_tok_add_bos(g->t);
        int *ids = NULL;
        size_t m = 0;
        qd_err e = {{0}};
        int rc = qd_tok_encode(g->t, text, tl, bos, &ids, &m, &e);
        int same = rc == QD_OK && same_ids(ids, m, want, (size_t)n);
        g->cases++;
        total++;
        g->enc_ok += same;
        if (!same && shown++ < 8) {
            fprintf(stderr, "  %s %s \"%.80s\": %s\n    got ", name, mode, text,
                    rc == QD_OK ? "ids differ" : e.msg);
            for (size_t i = 0; i < m && i < 40; i++) fprintf(stderr, "%d ", ids[i]);
            fprintf(stderr, "\n    want ");
            for (int i = 0; i < n && i < 40; i++) fprintf(stderr, "%d ", want[i]);
            fputc('\n', stderr);
        }
        size_t ol = 0;
        char *out = qd_tok_decode_len(g->t, want, (size_t)n, &ol, &e);
        int dsame = out && ol == dl && memcmp(out, dec, dl) == 0;
        g->dec_ok += dsame;
        if (!dsame && shown++ < 8)
            fprintf(stderr, "  %s decode of \"%.80s\": got \"%.80s\", want \"%.80s\"\n", name,
                    text, out ? out : e.msg, dec);
        free(out);
        free(ids);
        free(text);
        free(dec);
    }
    fclose(f);
    for (int k = 0; k < n_toks; k++) {
        golden_tok *g = &toks[k];
        if (!g->t) continue;
        printf("  %s: %d/%d encodings, %d/%d decodings match tokenizers 0.22\n", g->name,
               g->enc_ok, g->cases, g->dec_ok, g->cases);
        CHECK(g->cases >= 250, "%s: only %d golden cases", g->name, g->cases);
        CHECK(g->enc_ok == g->cases && g->dec_ok == g->cases, "%s: %d/%d encode, %d/%d decode",
              g->name, g->enc_ok, g->cases, g->dec_ok, g->cases);
    }
    return total;
}

/* tokenizer.json files as the Rust library runs them: SmolLM2 (Digits + ByteLevel), a cut of
 * Qwen3's (NFC, Qwen2 regex, pair merges, non-special added tokens), a Llama-3-style one
 * (Llama-3 regex, ignore_merges, BOS template), and a variants one (NFKC, every Split behavior,
 * invert, String patterns, Digits runs, ByteLevel add_prefix_space + regex, an added token
 * matched in normalized text). */
static void test_bpe_goldens(void) {
    golden_tok toks[] = {{"smollm2", load(fixture(SMOLLM2)), 0, 0, 0},
                         {"qwen3-4k", load(QWEN3_4K), 0, 0, 0},
                         {"llama3style-4k", load(LLAMA3S_4K), 0, 0, 0},
                         {"variants-4k", load(VARIANTS_4K), 0, 0, 0}};
    int n = run_bpe_goldens(toks, 4);
    CHECK(n >= 1200, "%d golden cases", n);
    for (int k = 0; k < 4; k++) qd_tok_free(toks[k].t);
}

/* The tokenizer.json at json rewritten as a GGUF byte-level vocabulary (tokenizer.ggml.model
 * gpt2) with tokenizer.ggml.pre = pre, the way llama.cpp's converter writes one: tokens by id,
 * special added tokens CONTROL and other added tokens USER, merges as "a b" strings. */
static const char *gguf_from_json(const char *json, const char *pre, const char *out) {
    qd_err e = {{0}};
    size_t len;
    char *buf = qd_read_file(json, 64 << 20, &len, &e);
    qd_tokenizer *t = load(json);
    cJSON *root = buf ? cJSON_ParseWithLength(buf, len) : NULL;
    free(buf);
    CHECK(root && t, "%s", json);
    if (!root || !t) {
        cJSON_Delete(root);
        qd_tok_free(t);
        return NULL;
    }
    int n = qd_tok_vocab_size(t);
    const char **toks = malloc((size_t)n * sizeof *toks);
    int32_t *types = malloc((size_t)n * sizeof *types);
    for (int i = 0; i < n; i++) {
        toks[i] = qd_tok_token(t, i);
        types[i] = qd_tok_type(t, i);
    }
    const cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "model"), "merges");
    int nm = cJSON_GetArraySize(merges);
    char **ms = malloc((size_t)nm * sizeof *ms);
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) { /* not GetArrayItem: that walks the list each time */
        if (cJSON_IsString(m)) {
            ms[i] = strdup(m->valuestring);
        } else {
            const char *a = cJSON_GetArrayItem(m, 0)->valuestring;
            const char *b = cJSON_GetArrayItem(m, 1)->valuestring;
            ms[i] = malloc(strlen(a) + strlen(b) + 2);
            sprintf(ms[i], "%s %s", a, b);
        }
        i++;
    }
    gguf_build g = {0};
    gb_kv_str(&g, "general.architecture", "llama");
    gb_kv_str(&g, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(&g, "tokenizer.ggml.pre", pre);
    gb_kv_strs(&g, "tokenizer.ggml.tokens", toks, n);
    gb_kv_i32s(&g, "tokenizer.ggml.token_type", types, n);
    gb_kv_strs(&g, "tokenizer.ggml.merges", (const char *const *)ms, nm);
    if (qd_tok_add_bos(t)) {
        gb_kv_u32(&g, "tokenizer.ggml.bos_token_id", (uint32_t)qd_tok_bos(t));
        gb_kv_bool(&g, "tokenizer.ggml.add_bos_token", 1);
    }
    const char *p = tmp_path(out);
    CHECK(gb_write(&g, p) == 0, "write %s", p);
    for (int k = 0; k < nm; k++) free(ms[k]);
    free(ms);
    free(toks);
    free(types);
    cJSON_Delete(root);
    qd_tok_free(t);
    return p;
}

/* The same three vocabularies as GGUF gpt2 vocabularies, whose tokenizer.ggml.pre names the
 * pre-tokenizer (smollm, qwen2, llama-bpe), and those written back as tokenizer.json by
 * qd_vocab_save_hf: the same ids as the Rust library's. */
static void test_gguf_bpe_goldens(void) {
    /* copied: tmp_path's buffers rotate */
    static char fb[3][512];
    const char *src[3][3] = {{fixture(SMOLLM2), "smollm", "smollm2.gguf"},
                             {QWEN3_4K, "qwen2", "qwen3.gguf"},
                             {LLAMA3S_4K, "llama-bpe", "llama3s.gguf"}};
    const char *f[3];
    for (int k = 0; k < 3; k++) {
        const char *p = gguf_from_json(src[k][0], src[k][1], src[k][2]);
        snprintf(fb[k], sizeof fb[k], "%s", p ? p : "");
        f[k] = p ? fb[k] : NULL;
    }
    golden_tok toks[] = {{"smollm2", f[0] ? load(f[0]) : NULL, 0, 0, 0},
                         {"qwen3-4k", f[1] ? load(f[1]) : NULL, 0, 0, 0},
                         {"llama3style-4k", f[2] ? load(f[2]) : NULL, 0, 0, 0}};
    CHECK(run_bpe_goldens(toks, 3) >= 900, "golden cases");
    for (int k = 0; k < 3; k++) qd_tok_free(toks[k].t);
    qd_err e = {{0}};
    /* and written back as tokenizer.json (what fp-folded/ carries for such a model) */
    static const char *const names[3] = {"smollm2.tokenizer.json", "qwen3.tokenizer.json",
                                         "llama3s.tokenizer.json"};
    for (int k = 0; k < 3; k++) {
        qd_vocab *gv = f[k] ? qd_gguf_load_vocab(f[k], &e) : NULL;
        CHECK(gv != NULL, "%s", e.msg);
        const char *p = tmp_path(names[k]);
        CHECK(gv && qd_vocab_save_hf(gv, p, &e) == QD_OK, "save: %s", e.msg);
        toks[k].t = gv ? load(p) : NULL;
        toks[k].cases = toks[k].enc_ok = toks[k].dec_ok = 0;
        qd_vocab_free(gv);
    }
    CHECK(run_bpe_goldens(toks, 3) >= 900, "golden cases (written tokenizer.json)");
    for (int k = 0; k < 3; k++) qd_tok_free(toks[k].t);
    qd_vocab *v = qd_gguf_load_vocab(f[0], &e);
    CHECK(v != NULL, "%s", e.msg);
    if (v) {
        snprintf(v->pre, sizeof v->pre, "starcoder");
        CHECK(qd_tok_from_vocab(v, &e) == NULL && strstr(e.msg, "tokenizer.ggml.pre") &&
                  strstr(e.msg, "starcoder"),
              "unknown pre: '%s'", e.msg);
        snprintf(v->pre, sizeof v->pre, "smollm");
        free(v->merges[3]);
        v->merges[3] = strdup("nosuchtoken x");
        CHECK(qd_tok_from_vocab(v, &e) == NULL && strstr(e.msg, "tokenizer.ggml.merges[3]"),
              "bad merge: '%s'", e.msg);
        qd_vocab_free(v);
    }
}

/* Appends the UTF-8 form of code point c. */
static size_t put_utf8(char *p, unsigned c) {
    if (c < 0x80) { p[0] = (char)c; return 1; }
    if (c < 0x800) { p[0] = (char)(0xC0 | c >> 6); p[1] = (char)(0x80 | (c & 63)); return 2; }
    if (c < 0x10000) {
        p[0] = (char)(0xE0 | c >> 12);
        p[1] = (char)(0x80 | (c >> 6 & 63));
        p[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    p[0] = (char)(0xF0 | c >> 18);
    p[1] = (char)(0x80 | (c >> 12 & 63));
    p[2] = (char)(0x80 | (c >> 6 & 63));
    p[3] = (char)(0x80 | (c & 63));
    return 4;
}

/* Random strings mixing ASCII words, runs of spaces, Latin-1, CJK, emoji and control bytes
 * round-trip through every form, and the forms of one vocabulary agree. */
static void test_random_roundtrip(void) {
    qd_tokenizer *spm = load(fixture(TOK512)), *hf = load(HF512), *big = load(fixture(LLAMA2));
    if (!spm || !hf || !big) goto out;
    uint32_t rng = 12345;
    static const unsigned ranges[][2] = {{'a', 'z'}, {' ', ' '}, {'!', '~'}, {0xA0, 0x17F},
                                         {0x4E00, 0x4FFF}, {0x1F600, 0x1F64F}, {1, 31},
                                         {0x2581, 0x2581}};
    for (int iter = 0; iter < 300; iter++) {
        char s[1024];
        size_t len = 0;
        int nch = 1 + iter % 60;
        for (int c = 0; c < nch; c++) {
            rng = rng * 1664525u + 1013904223u;
            unsigned r = (rng >> 8) % 100;
            int k = r < 55 ? 0 : r < 70 ? 1 : r < 78 ? 2 : r < 85 ? 3 : r < 91 ? 4 : r < 95 ? 5
                  : r < 99 ? 6 : 7;
            rng = rng * 1664525u + 1013904223u;
            unsigned cp = ranges[k][0] + (rng >> 8) % (ranges[k][1] - ranges[k][0] + 1);
            len += put_utf8(s + len, cp);
        }
        s[len] = 0;
        int has_mark = strstr(s, "\xe2\x96\x81") != NULL;
        qd_tokenizer *ts[3] = {spm, hf, big};
        int *prev = NULL;
        size_t nprev = 0;
        for (int k = 0; k < 3; k++) {
            int *ids;
            size_t n;
            qd_err e = {{0}};
            if (qd_tok_encode(ts[k], s, len, 1, &ids, &n, &e) != QD_OK) {
                CHECK(0, "iter %d: %s", iter, e.msg);
                continue;
            }
            size_t dl;
            char *d = qd_tok_decode_len(ts[k], ids, n, &dl, &e);
            /* a literal U+2581 in the input decodes as a space, as in SentencePiece */
            if (!has_mark)
                CHECK(d && dl == len && memcmp(d, s, len) == 0, "iter %d form %d: round trip",
                      iter, k);
            free(d);
            if (k == 1) CHECK(same_ids(prev, nprev, ids, n), "iter %d: hf differs from spm", iter);
            if (k == 0) {
                prev = ids;
                nprev = n;
            } else {
                free(ids);
            }
        }
        free(prev);
    }
out:
    qd_tok_free(spm);
    qd_tok_free(hf);
    qd_tok_free(big);
}

/* ---- decoding ----------------------------------------------------------------------- */

static void test_decode_rules(void) {
    qd_tokenizer *t = load(fixture(TOK512));
    if (!t) return;
    size_t l;
    const char *p = qd_tok_piece(t, -1, 1, &l);
    CHECK(p && l == 0, "BOS decodes to %zu bytes", l);
    p = qd_tok_piece(t, 5, 2, &l);
    CHECK(p && l == 0, "EOS decodes to %zu bytes", l);
    int nl = qd_tok_find(t, "<0x0A>");
    CHECK(nl >= 3, "<0x0A> id %d", nl);
    p = qd_tok_piece(t, 1, nl, &l);
    CHECK(l == 1 && p[0] == '\n', "byte token gives %zu bytes", l);
    int the = qd_tok_find(t, "\xe2\x96\x81the");
    CHECK(the > 0, "no ▁the");
    p = qd_tok_piece(t, 1, the, &l);
    CHECK(l == 3 && memcmp(p, "the", 3) == 0, "after BOS: '%.*s'", (int)l, p);
    p = qd_tok_piece(t, -1, the, &l);
    CHECK(l == 3 && memcmp(p, "the", 3) == 0, "at start: '%.*s'", (int)l, p);
    p = qd_tok_piece(t, the, the, &l);
    CHECK(l == 4 && memcmp(p, " the", 4) == 0, "mid-text: '%.*s'", (int)l, p);
    p = qd_tok_piece(t, 0, 512, &l);
    CHECK(p == NULL && l == 0, "out of range id gives a piece");
    /* BOS in mid-stream starts a new document; EOS produces nothing */
    int ids[] = {1, the, the, 2, 1, the};
    qd_err e = {{0}};
    char *d = qd_tok_decode(t, ids, 6, &e);
    CHECK(d && strcmp(d, "the thethe") == 0, "decoded '%s'", d ? d : e.msg);
    free(d);
    qd_tok_free(t);
}

/* ---- errors ------------------------------------------------------------------------- */

static void test_encode_errors(void) {
    qd_tokenizer *t = load(fixture(TOK512));
    if (!t) return;
    static const struct {
        const char *s;
        size_t len, off;
    } bad[] = {
        {"ab\xff" "cd", 5, 2},          /* never valid */
        {"ok \xc0\x80", 5, 3},          /* overlong NUL */
        {"\xe0\x80\xaf", 3, 0},         /* overlong '/' */
        {"x\xed\xa0\x80y", 5, 1},       /* UTF-16 surrogate */
        {"end \xe6\x97", 6, 4},         /* truncated at the end */
        {"\xf4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
        {"a\x80", 2, 1},                /* stray continuation */
        {"\xe6\x97z", 3, 0},            /* bad continuation */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        qd_err e = {{0}};
        int *ids = (int *)&e;
        size_t n = 99;
        int rc = qd_tok_encode(t, bad[k].s, bad[k].len, 1, &ids, &n, &e);
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu", bad[k].off);
        CHECK(rc == QD_ERR && strstr(e.msg, "UTF-8") && strstr(e.msg, want),
              "case %zu: rc %d msg '%s'", k, rc, e.msg);
        CHECK(ids == NULL && n == 0, "case %zu: outputs not cleared", k);
        CHECK(qd_utf8_valid_prefix(bad[k].s, bad[k].len) == bad[k].off, "case %zu", k);
    }
    CHECK(qd_utf8_valid_prefix(UNICODE_TEXT, strlen(UNICODE_TEXT)) == strlen(UNICODE_TEXT),
          "valid text rejected");
    qd_tok_free(t);
}

static void test_decode_errors(void) {
    qd_tokenizer *t = load(fixture(TOK512));
    if (!t) return;
    int bad1[] = {1, 300, 512};
    int bad2[] = {-1};
    qd_err e = {{0}};
    char *d = qd_tok_decode(t, bad1, 3, &e);
    CHECK(d == NULL && strstr(e.msg, "token 2") && strstr(e.msg, "512"), "'%s'", e.msg);
    d = qd_tok_decode(t, bad2, 1, &e);
    CHECK(d == NULL && strstr(e.msg, "token 0") && strstr(e.msg, "-1"), "'%s'", e.msg);
    d = qd_tok_decode(t, bad2, 0, &e);
    CHECK(d && d[0] == 0, "empty decode");
    free(d);
    qd_tok_free(t);
}

/* Builds a tokenizer.bin in memory: max_len, then (score, len, bytes) per token. */
typedef struct bbuf {
    unsigned char b[4096];
    size_t n;
} bbuf;

static void put_i32(bbuf *b, int32_t v) {
    memcpy(b->b + b->n, &v, 4);
    b->n += 4;
}

static void put_tok(bbuf *b, float score, int32_t len, const char *s) {
    memcpy(b->b + b->n, &score, 4);
    b->n += 4;
    put_i32(b, len);
    if (len > 0 && s) {
        memcpy(b->b + b->n, s, (size_t)len);
        b->n += (size_t)len;
    }
}

static void expect_load_error(const char *path, const char *field) {
    qd_err e = {{0}};
    qd_tokenizer *t = qd_tok_load(path, &e);
    CHECK(t == NULL, "%s loaded", path);
    CHECK(strstr(e.msg, path) != NULL, "message does not name the file: '%s'", e.msg);
    CHECK(strstr(e.msg, field) != NULL, "message does not name '%s': '%s'", field, e.msg);
    qd_tok_free(t);
}

static void test_tokbin_errors(void) {
    bbuf b;
    expect_load_error(tmp_path("missing.bin"), "cannot open");
    expect_load_error(write_tmp("empty.bin", "", 0), "max_token_length");
    b.n = 0;
    put_i32(&b, 0);
    put_tok(&b, 0, 1, "a");
    expect_load_error(write_tmp("maxlen0.bin", b.b, b.n), "max_token_length");
    b.n = 0;
    put_i32(&b, 8);
    expect_load_error(write_tmp("notokens.bin", b.b, b.n), "no tokens");
    b.n = 0;
    put_i32(&b, 8);
    put_tok(&b, 0, 5, "\n<s>\n");
    put_tok(&b, 0, -3, NULL);
    expect_load_error(write_tmp("neglen.bin", b.b, b.n), "token 1: length -3");
    b.n = 0;
    put_i32(&b, 8);
    put_tok(&b, 0, 5000, NULL);
    expect_load_error(write_tmp("hugelen.bin", b.b, b.n), "token 0: length 5000");
    b.n = 0;
    put_i32(&b, 8);
    put_tok(&b, 0, 1, "a");
    put_tok(&b, 0, 6, "abcdef");
    b.n -= 3; /* only three of six bytes present */
    expect_load_error(write_tmp("truncbytes.bin", b.b, b.n), "token 1: truncated bytes");
    b.n = 0;
    put_i32(&b, 8);
    put_tok(&b, 0, 1, "a");
    b.b[b.n++] = 0;
    b.b[b.n++] = 0;
    expect_load_error(write_tmp("truncscore.bin", b.b, b.n), "token 1: truncated score");
    b.n = 0;
    put_i32(&b, 8);
    put_tok(&b, 0, 3, "a\0b");
    expect_load_error(write_tmp("nul.bin", b.b, b.n), "token 0: contains a NUL");
    b.n = 0;
    put_i32(&b, 8);
    put_tok(&b, 0, 1, "a");
    put_tok(&b, NAN, 1, "b");
    expect_load_error(write_tmp("nan.bin", b.b, b.n), "token 1: score");
    /* the real file, cut short in the middle of a token */
    qd_err e = {{0}};
    size_t len;
    char *real = qd_read_file(fixture(TOK512), 1 << 20, &len, &e);
    CHECK(real != NULL, "%s", e.msg);
    if (real) {
        expect_load_error(write_tmp("cut.bin", real, len - 3), "token 511: truncated");
        free(real);
    }
    /* a minimal valid file: <unk>, <s>, </s>, a byte token and two pieces */
    b.n = 0;
    put_i32(&b, 6);
    put_tok(&b, 0, 5, "<unk>");
    put_tok(&b, 0, 5, "\n<s>\n");
    put_tok(&b, 0, 6, "\n</s>\n");
    put_tok(&b, 0, 6, "<0x61>");
    put_tok(&b, -1, 2, " a");
    put_tok(&b, -2, 1, " ");
    qd_tokenizer *t = load(write_tmp("tiny.bin", b.b, b.n));
    if (t) {
        CHECK(qd_tok_bos(t) == 1 && qd_tok_eos(t) == 2 && qd_tok_type(t, 0) == QD_TOK_UNKNOWN &&
                  qd_tok_type(t, 1) == QD_TOK_CONTROL && qd_tok_type(t, 3) == QD_TOK_BYTE,
              "ids/types");
        int *ids;
        size_t n;
        CHECK(qd_tok_encode(t, "a ab", 4, 1, &ids, &n, &e) == QD_OK, "%s", e.msg);
        /* "▁a▁ab" -> ▁a ▁a then 'b' is unknown with no byte token -> <unk> */
        static const int want[] = {1, 4, 4, 0};
        CHECK(same_ids(ids, n, want, 4), "%zu ids", n);
        char *d = qd_tok_decode(t, ids, n, &e);
        CHECK(d && strcmp(d, "a a \xe2\x81\x87 ") == 0, "'%s'", d);
        free(d);
        free(ids);
        qd_tok_free(t);
    }
}

static void expect_hf_error(const char *name, const char *json, const char *field) {
    expect_load_error(write_tmp(name, json, strlen(json)), field);
}

#define HF_HEAD "{\"added_tokens\":[],\"normalizer\":null,\"pre_tokenizer\":null,"
static void test_hf_errors(void) {
    expect_hf_error("bad1.json", "{\"model\": {", "not valid JSON");
    expect_hf_error("bad2.json", "[1,2]", "not a JSON object");
    expect_hf_error("bad3.json", "{}", "model");
    expect_hf_error("bad4.json", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "model.type");
    expect_hf_error("bad5.json", "{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", "model.vocab");
    expect_hf_error("bad6.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}",
                    "model.merges");
    expect_hf_error("bad7.json",
                    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0.5},\"merges\":[]}}",
                    "model.vocab[\"a\"]");
    expect_hf_error("bad8.json",
                    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":99999999},\"merges\":[]}}",
                    "model.vocab[\"a\"]");
    /* 74 bytes that name one token at the top of the id space: refused before the 1M-entry
     * vocabulary is allocated (the unsupported pre_tokenizer would be refused only after) */
    expect_hf_error("bad8b.json",
                    "{\"model\":{\"vocab\":{\"a\":1048575},\"merges\":[]},\"pre_tokenizer\":"
                    "{\"type\":\"X\"}}",
                    "model.vocab: ids reach 1048575 but the file names 1 tokens");
    expect_hf_error("bad8c.json",
                    "{\"added_tokens\":[{\"id\":600,\"content\":\"<x>\"}],\"model\":{\"vocab\":"
                    "{\"a\":0},\"merges\":[]}}",
                    "at most 258 ids may be unused");
    expect_hf_error("bad9.json",
                    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}",
                    "already used");
    expect_hf_error("bad10.json",
                    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},"
                    "\"merges\":[\"a b\"]}}",
                    "model.merges[0]: \"ab\"");
    expect_hf_error("bad11.json",
                    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
                    "\"merges\":[\"a b\", \"ab\"]}}",
                    "model.merges[1]");
    expect_hf_error("bad12.json",
                    "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\",1]]}}",
                    "model.merges[0]");
    expect_hf_error("bad13.json",
                    "{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"type\":\"BPE\","
                    "\"vocab\":{\"a\":0},\"merges\":[]}}",
                    "pre_tokenizer.type: \"Whitespace\" is not supported");
    expect_hf_error("bad14.json",
                    "{\"normalizer\":{\"type\":\"Lowercase\"},\"model\":{\"type\":\"BPE\","
                    "\"vocab\":{\"a\":0},\"merges\":[]}}",
                    "normalizer.type: \"Lowercase\"");
#define BPE_A "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}"
    expect_hf_error("bad13b.json",
                    "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\\\\p{L}\"},"
                    "\"behavior\":\"Isolated\"}," BPE_A,
                    "pre_tokenizer Split.pattern: pattern does not compile at offset");
    expect_hf_error("bad13c.json",
                    "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                    "\"behavior\":\"Sideways\"}," BPE_A,
                    "Split.behavior: \"Sideways\" unknown");
    expect_hf_error("bad13d.json",
                    "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Glob\":\"a\"},"
                    "\"behavior\":\"Isolated\"}," BPE_A,
                    "Split.pattern");
    expect_hf_error("bad13e.json",
                    "{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
                    "\"Metaspace\"},{\"type\":\"ByteLevel\"}]}," BPE_A,
                    "together with ByteLevel");
    expect_hf_error("bad13h.json",
                    "{\"model\":{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\","
                    "\"vocab\":{\"a\":0},\"merges\":[]}}",
                    "model.continuing_subword_prefix");
    expect_hf_error("bad13i.json",
                    "{\"model\":{\"type\":\"BPE\",\"end_of_word_suffix\":\"</w>\","
                    "\"vocab\":{\"a\":0},\"merges\":[]}}",
                    "model.end_of_word_suffix");
    expect_hf_error("bad13j.json",
                    "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
                    "{\"type\":\"NFKC\"}]}," BPE_A,
                    "normalizer.type: NFKC after another normalizer");
    expect_hf_error("bad15.json",
                    "{\"added_tokens\":[{\"id\":0,\"content\":\"b\"}],\"model\":{\"type\":\"BPE\","
                    "\"vocab\":{\"a\":0},\"merges\":[]}}",
                    "added_tokens[0]");
    expect_hf_error("bad16.json",
                    "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},"
                    "\"merges\":[]}}",
                    "model.unk_token");
    expect_hf_error("bad17.json",
                    "{\"added_tokens\":[{\"id\":-4,\"content\":\"x\"}],\"model\":{\"type\":"
                    "\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                    "added_tokens[0]");
    expect_hf_error("bad18.json",
                    "{\"model\":{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{\"a\":0},"
                    "\"merges\":[]}}",
                    "model.dropout");
    expect_hf_error("bad19.json",
                    "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", "model.vocab");
}

/* A hand-written tokenizer.json: Metaspace pre-tokenizer (prepend "first", split on ▁),
 * [a, b] merges, no byte fallback, fused unknowns. */
/* Holes in the id space within the bound load as UNUSED tokens: one entry plus one added token
 * at id 259 is 258 unused ids, the most that 2 named tokens allow. */
static void test_hf_id_holes(void) {
    const char *json = "{\"added_tokens\":[{\"id\":259,\"content\":\"<x>\",\"special\":true}],"
                       "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}";
    qd_tokenizer *t = load(write_tmp("holes.json", json, strlen(json)));
    if (!t) return;
    CHECK(qd_tok_vocab_size(t) == 260, "n %d", qd_tok_vocab_size(t));
    CHECK(qd_tok_type(t, 1) == QD_TOK_UNUSED && qd_tok_type(t, 258) == QD_TOK_UNUSED &&
              qd_tok_type(t, 259) == QD_TOK_CONTROL,
          "types %d %d %d", qd_tok_type(t, 1), qd_tok_type(t, 258), qd_tok_type(t, 259));
    qd_tok_free(t);
}

static void test_hf_metaspace(void) {
    const char *json =
        "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
        "{\"id\":1,\"content\":\"<s>\",\"special\":true},"
        "{\"id\":9,\"content\":\"[X]\",\"special\":false}],"
        "\"normalizer\":null,"
        "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\xe2\x96\x81\","
        "\"prepend_scheme\":\"first\",\"split\":true},"
        "\"post_processor\":null,"
        "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
        "\"byte_fallback\":false,"
        "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"\xe2\x96\x81\":2,\"a\":3,\"b\":4,"
        "\"\xe2\x96\x81" "a\":5,\"ab\":6,\"\xe2\x96\x81" "ab\":7,\"bb\":8},"
        "\"merges\":[[\"a\",\"b\"],[\"\xe2\x96\x81\",\"ab\"],[\"\xe2\x96\x81\",\"a\"],"
        "[\"b\",\"b\"]]}}";
    qd_tokenizer *t = load(write_tmp("meta.json", json, strlen(json)));
    if (!t) return;
    CHECK(qd_tok_vocab_size(t) == 10 && qd_tok_bos(t) == 1 && !qd_tok_add_bos(t), "n %d bos %d",
          qd_tok_vocab_size(t), qd_tok_bos(t));
    static const struct {
        const char *text;
        int n;
        int ids[12];
    } cases[] = {
        /* ▁ab wins over ▁a because a+b has the best rank */
        {"ab", 1, {7}},
        /* split at ▁: "▁ab" "▁bbb" -> ▁ab | ▁ bb b */
        {"ab bbb", 4, {7, 2, 8, 4}},
        /* unknown characters fuse into one <unk>; "[X]" is an added token; only the first
         * segment gets the ▁ */
        {"xyz[X]a", 4, {2, 0, 9, 3}},
        /* prepend only at the very start, and not when the text starts with a space */
        {" a", 1, {5}},
    };
    for (size_t c = 0; c < 4; c++) {
        qd_err e = {{0}};
        int *ids;
        size_t n;
        int rc = qd_tok_encode(t, cases[c].text, strlen(cases[c].text), 0, &ids, &n, &e);
        CHECK(rc == QD_OK, "%s", e.msg);
        if (rc != QD_OK) continue;
        CHECK(same_ids(ids, n, cases[c].ids, (size_t)cases[c].n), "\"%s\": %zu ids: %d %d %d %d",
              cases[c].text, n, n > 0 ? ids[0] : -1, n > 1 ? ids[1] : -1, n > 2 ? ids[2] : -1,
              n > 3 ? ids[3] : -1);
        free(ids);
    }
    qd_tok_free(t);
}

static void test_vocab_api(void) {
    qd_err e = {{0}};
    CHECK(qd_vocab_new(0, &e) == NULL && strstr(e.msg, "vocabulary size"), "'%s'", e.msg);
    qd_vocab_free(NULL);
    qd_tok_free(NULL);
    qd_vocab *v = qd_vocab_new(4, &e);
    CHECK(v != NULL, "%s", e.msg);
    if (!v) return;
    v->tokens[0] = strdup("<unk>");
    v->tokens[1] = strdup("<s>");
    v->tokens[2] = strdup("x");
    qd_tokenizer *t = qd_tok_from_vocab(v, &e);
    CHECK(t == NULL && strstr(e.msg, "token 3"), "'%s'", e.msg);
    v->tokens[3] = strdup("<0x79>");
    v->bos_id = 7;
    t = qd_tok_from_vocab(v, &e);
    CHECK(t == NULL && strstr(e.msg, "bos"), "'%s'", e.msg);
    /* no types given: inferred from the spelling and the special ids */
    v->bos_id = 1;
    v->unk_id = 0;
    free(v->types);
    v->types = NULL;
    free(v->scores);
    v->scores = NULL;
    t = qd_tok_from_vocab(v, &e);
    CHECK(t != NULL, "%s", e.msg);
    if (t) {
        CHECK(qd_tok_type(t, 0) == QD_TOK_UNKNOWN && qd_tok_type(t, 1) == QD_TOK_CONTROL &&
                  qd_tok_type(t, 2) == QD_TOK_NORMAL && qd_tok_type(t, 3) == QD_TOK_BYTE &&
                  qd_tok_type(t, 4) == 0,
              "types");
        CHECK(qd_tok_find(t, "x") == 2 && qd_tok_find(t, "nope") == -1, "find");
        int *ids;
        size_t n;
        /* no space piece and no dummy prefix piece: "▁" falls back to <unk>; y is a byte */
        v->add_space_prefix = 0;
        qd_tok_free(t);
        t = qd_tok_from_vocab(v, &e);
        CHECK(qd_tok_encode(t, "xy", 2, 1, &ids, &n, &e) == QD_OK, "%s", e.msg);
        static const int want[] = {1, 2, 3};
        CHECK(same_ids(ids, n, want, 3), "%zu ids", n);
        free(ids);
        qd_tok_free(t);
    }
    qd_vocab_free(v);
}

static void test_dispatch(void) {
    qd_err e = {{0}};
    CHECK(qd_tok_load(tmp_path("nothing.json"), &e) == NULL && strstr(e.msg, "nothing.json"),
          "'%s'", e.msg);
    CHECK(qd_tok_load(tmp_path("nothing.gguf"), &e) == NULL && strstr(e.msg, "nothing.gguf"),
          "'%s'", e.msg);
    /* a tokenizer.bin fed as GGUF: the GGUF reader must refuse it and say so */
    CHECK(qd_tok_load(write_tmp("fake.gguf", "abcd", 4), &e) == NULL && strstr(e.msg, "fake.gguf"),
          "'%s'", e.msg);
}

int main(void) {
    check_tmpdir(tmpdir, sizeof tmpdir, "test_tok");
    RUN(test_tok512_fixture);
    RUN(test_llama2_fixture);
    RUN(test_llama2_known_ids);
    RUN(test_tok512_short);
    RUN(test_unicode_byte_fallback);
    RUN(test_hf_matches_spm);
    RUN(test_gguf_vocab);
    RUN(test_golden_ids);
    RUN(test_bpe_goldens);
    RUN(test_gguf_bpe_goldens);
    RUN(test_random_roundtrip);
    RUN(test_decode_rules);
    RUN(test_encode_errors);
    RUN(test_decode_errors);
    RUN(test_tokbin_errors);
    RUN(test_hf_errors);
    RUN(test_hf_id_holes);
    RUN(test_hf_metaspace);
    RUN(test_vocab_api);
    RUN(test_dispatch);
    check_rmtree(tmpdir);
    return CHECK_DONE();
}
