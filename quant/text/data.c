/* Calibration data readers: text, JSON lines and pre-tokenized id files, all turned into one
 * token stream with every id checked against the vocabulary. Errors name the file and where:
 * the byte offset for bad UTF-8, the line for bad JSON, the index for a bad id. */
#include "quant/text/data.h"
#include "base/fs.h"
#include "base/stop.h"
#include "base/str.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DOC_SEP "<|endoftext|>"

typedef struct tvec {
    int *a;
    size_t n, cap;
} tvec;

static int tvec_append(tvec *v, const int *x, size_t n) {
    if (n > SIZE_MAX / sizeof(int) - v->n) return -1;
    if (v->n + n > v->cap) {
        size_t cap = v->cap ? v->cap : 4096;
        while (cap < v->n + n) cap = cap > SIZE_MAX / 4 ? v->n + n : cap * 2;
        int *a = realloc(v->a, cap * sizeof *a);
        if (!a) return -1;
        v->a = a;
        v->cap = cap;
    }
    memcpy(v->a + v->n, x, n * sizeof *x);
    v->n += n;
    return 0;
}

void qd_tokens_free(qd_tokens *t) {
    if (!t) return;
    free(t->ids);
    t->ids = NULL;
    t->n = 0;
}

int qd_data_format_of(const char *path) {
    if (!path) return QD_DATA_AUTO;
    if (qd_has_ext(path, ".txt")) return QD_DATA_TXT;
    if (qd_has_ext(path, ".jsonl")) return QD_DATA_JSONL;
    if (qd_has_ext(path, ".u32.bin")) return QD_DATA_U32;
    if (qd_has_ext(path, ".bin")) return QD_DATA_U16;
    return QD_DATA_AUTO;
}

int qd_data_format_parse(const char *s) {
    static const char *names[] = {"auto", "txt", "jsonl", "u16", "u32"};
    for (int i = 0; s && i < 5; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Encodes one document with BOS (when the vocabulary has one) and appends its ids. */
static int add_doc(const char *name, size_t line, const qd_tokenizer *tok, const char *s,
                   size_t n, tvec *out, qd_err *err) {
    int *ids;
    size_t k;
    qd_err e;
    if (qd_stop_requested()) return qd_stopped(err);
    if (qd_tok_encode(tok, s, n, qd_tok_bos(tok) >= 0, &ids, &k, &e) != QD_OK) {
        if (line) return qd_errf(err, "%s:%zu: %s", name, line, e.msg);
        return qd_errf(err, "%s: %s", name, e.msg);
    }
    int rc = tvec_append(out, ids, k);
    free(ids);
    if (rc != 0) return qd_errf(err, "%s: out of memory after %zu tokens", name, out->n);
    return QD_OK;
}

static int utf8_check(const char *name, const char *buf, size_t len, qd_err *err) {
    size_t bad = qd_utf8_valid_prefix(buf, len);
    if (bad == len) return QD_OK;
    size_t line = 1;
    for (size_t i = 0; i < bad; i++) line += buf[i] == '\n';
    return qd_errf(err, "%s: invalid UTF-8 at byte offset %zu (line %zu)", name, bad, line);
}

static int parse_txt(const char *name, const char *buf, size_t len, const qd_tokenizer *tok,
                     tvec *out, qd_err *err) {
    if (utf8_check(name, buf, len, err) != QD_OK) return QD_ERR;
    if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) {
        buf += 3;
        len -= 3;
    }
    char *text = malloc(len + 1);
    if (!text) return qd_errf(err, "%s: out of memory for %zu bytes", name, len);
    size_t m = 0;
    for (size_t i = 0; i < len; i++)
        if (!(buf[i] == '\r' && i + 1 < len && buf[i + 1] == '\n')) text[m++] = buf[i];
    text[m] = 0;
    const size_t sep = strlen(DOC_SEP);
    size_t start = 0;
    int rc = QD_OK;
    while (start <= m && rc == QD_OK) {
        const char *hit = memmem(text + start, m - start, DOC_SEP, sep);
        size_t end = hit ? (size_t)(hit - text) : m;
        size_t a = start, b = end;
        while (a < b && is_blank(text[a])) a++;
        while (b > a && is_blank(text[b - 1])) b--;
        if (b > a) rc = add_doc(name, 0, tok, text + a, b - a, out, err);
        if (!hit) break;
        start = end + sep;
    }
    free(text);
    return rc;
}

static int parse_jsonl(const char *name, const char *buf, size_t len, const qd_tokenizer *tok,
                       tvec *out, qd_err *err) {
    if (utf8_check(name, buf, len, err) != QD_OK) return QD_ERR;
    size_t line = 0;
    for (size_t start = 0; start < len;) {
        const char *nl = memchr(buf + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - buf) : len;
        line++;
        size_t a = start, b = end;
        while (a < b && is_blank(buf[a])) a++;
        while (b > a && is_blank(buf[b - 1])) b--;
        start = end + 1;
        if (a == b) continue;
        const char *stop = NULL;
        cJSON *obj = cJSON_ParseWithLengthOpts(buf + a, b - a, &stop, 0);
        if (!obj) return qd_errf(err, "%s:%zu: not valid JSON", name, line);
        if (stop && stop < buf + b) {
            cJSON_Delete(obj);
            return qd_errf(err, "%s:%zu: text after the JSON object", name, line);
        }
        if (!cJSON_IsObject(obj)) {
            cJSON_Delete(obj);
            return qd_errf(err, "%s:%zu: not a JSON object", name, line);
        }
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text");
        if (!cJSON_IsString(text) || !text->valuestring) {
            cJSON_Delete(obj);
            return qd_errf(err, "%s:%zu: no string \"text\" field", name, line);
        }
        size_t n = strlen(text->valuestring);
        int rc = n ? add_doc(name, line, tok, text->valuestring, n, out, err) : QD_OK;
        cJSON_Delete(obj);
        if (rc != QD_OK) return rc;
    }
    return QD_OK;
}

static int parse_ids(const char *name, const unsigned char *buf, size_t len, size_t width,
                     int vocab_size, tvec *out, qd_err *err) {
    if (len % width != 0)
        return qd_errf(err, "%s: %zu bytes is not a whole number of uint%zu token ids", name,
                       len, width * 8);
    size_t n = len / width;
    if (n == 0) return QD_OK;
    out->a = malloc(n * sizeof *out->a);
    if (!out->a) return qd_errf(err, "%s: out of memory for %zu tokens", name, n);
    out->cap = n;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = buf + i * width;
        uint32_t v = width == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8
                                : (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                      (uint32_t)p[3] << 24;
        if (v >= (uint32_t)vocab_size)
            return qd_errf(err, "%s: token %zu: id %u is outside the vocabulary (size %d)",
                           name, i, v, vocab_size);
        out->a[i] = (int)v;
    }
    out->n = n;
    return QD_OK;
}

int qd_data_parse(const char *name, int format, const char *buf, size_t len,
                  const qd_tokenizer *tok, int vocab_size, qd_tokens *out, qd_err *err) {
    out->ids = NULL;
    out->n = 0;
    if (!name) name = "(data)";
    if (format == QD_DATA_AUTO) format = qd_data_format_of(name);
    if (format == QD_DATA_AUTO) {
        size_t i = 0;
        while (i < len && is_blank(buf[i])) i++;
        if (qd_utf8_valid_prefix(buf, len) == len && !memchr(buf, 0, len))
            format = i < len && buf[i] == '{' ? QD_DATA_JSONL : QD_DATA_TXT;
        else
            return qd_errf(err, "%s: cannot tell the data format: not UTF-8 text, and the name "
                           "does not end in .u16.bin, .bin or .u32.bin (token ids, as `quantd "
                           "tokenize --out` writes them)", name);
    }
    if (format < QD_DATA_TXT || format > QD_DATA_U32)
        return qd_errf(err, "%s: unknown data format %d", name, format);
    if (vocab_size <= 0 && tok) vocab_size = qd_tok_vocab_size(tok);
    if (vocab_size <= 0)
        return qd_errf(err, "%s: no vocabulary size to check token ids against", name);
    if (len == 0) return qd_errf(err, "%s: empty file", name);
    tvec v = {0};
    int rc;
    if (format == QD_DATA_U16 || format == QD_DATA_U32) {
        rc = parse_ids(name, (const unsigned char *)buf, len, format == QD_DATA_U16 ? 2 : 4,
                       vocab_size, &v, err);
    } else if (!tok) {
        rc = qd_errf(err, "%s: a tokenizer is needed for %s data", name,
                     format == QD_DATA_TXT ? "text" : "JSON lines");
    } else {
        rc = format == QD_DATA_TXT ? parse_txt(name, buf, len, tok, &v, err)
                                   : parse_jsonl(name, buf, len, tok, &v, err);
        for (size_t i = 0; rc == QD_OK && i < v.n; i++)
            if (v.a[i] < 0 || v.a[i] >= vocab_size)
                rc = qd_errf(err, "%s: token %zu: id %d is outside the vocabulary (size %d)",
                             name, i, v.a[i], vocab_size);
    }
    if (rc == QD_OK && v.n == 0) rc = qd_errf(err, "%s: no tokens (empty input)", name);
    if (rc != QD_OK) {
        free(v.a);
        return QD_ERR;
    }
    out->ids = v.a;
    out->n = v.n;
    return QD_OK;
}

int qd_data_load_as(const char *path, int format, const qd_tokenizer *tok, int vocab_size,
                    qd_tokens *out, qd_err *err) {
    out->ids = NULL;
    out->n = 0;
    size_t len;
    char *buf = qd_read_file(path, QD_DATA_MAX_BYTES, &len, err);
    if (!buf) return QD_ERR;
    int rc = qd_data_parse(path, format, buf, len, tok, vocab_size, out, err);
    free(buf);
    return rc;
}

int qd_data_load(const char *path, const qd_tokenizer *tok, int vocab_size, qd_tokens *out,
                 qd_err *err) {
    return qd_data_load_as(path, QD_DATA_AUTO, tok, vocab_size, out, err);
}
