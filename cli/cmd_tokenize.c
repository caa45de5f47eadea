/* quantd tokenize: text to token ids with a model's tokenizer, like llama.cpp's
 * llama-tokenize. Input from --text, --file (the whole file is one text) or --jsonl (one JSON
 * object with a string "text" field per line; blank lines are skipped). Output: one JSON
 * array of ids per text on stdout, in input order, or with --out the ids of all texts one
 * after another as pre-tokenized calibration data (.u32.bin: little-endian uint32; .u16.bin
 * or .bin: uint16), which quantize and eval read without a tokenizer. No BOS or EOS is added
 * unless --bos. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/fs.h"
#include "cli/cli.h"
#include "quant/io/gguf.h"
#include "quant/text/data.h"
#include "quant/text/resolve.h"
#include "quant/text/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: quantd tokenize (--tokenizer PATH | --model PATH)\n"
            "                       (--text S | --file F | --jsonl F) [--bos] [--pieces]\n"
            "                       [--out F.u32.bin]\n"
            "  --tokenizer  tokenizer.json, tokenizer.bin or a .gguf's vocabulary\n"
            "  --model      a checkpoint: its own vocabulary (GGUF) or the tokenizer beside it\n"
            "  --text       the text to tokenize\n"
            "  --file       a UTF-8 file, tokenized whole as one text\n"
            "  --jsonl      one JSON object with a \"text\" field per line: one id array each\n"
            "  --bos        put the tokenizer's BOS in front of each text (default: none)\n"
            "  --pieces     print \"id<TAB>piece\" lines (the piece as JSON) instead of arrays\n"
            "  --out        write all ids to a pre-tokenized file instead of printing them:\n"
            "               .u32.bin little-endian uint32, .u16.bin (or .bin) uint16\n");
}

static qd_tokenizer *open_tokenizer(const char *tok_path, const char *model_path, qd_err *err) {
    if (tok_path) return qd_tok_load(tok_path, err);
    size_t n = strlen(model_path);
    if (n >= 5 && !strcasecmp(model_path + n - 5, ".gguf")) {
        qd_vocab *v = qd_gguf_load_vocab(model_path, err);
        if (!v) return NULL;
        qd_tokenizer *t = qd_tok_resolve(v, 0, model_path, NULL, err);
        qd_vocab_free(v);
        return t;
    }
    return qd_tok_resolve(NULL, 0, model_path, NULL, err);
}

typedef struct sink {
    const qd_tokenizer *tok;
    int bos, pieces, width;  /* width: 0 = print, 2 or 4 = bytes per id into f */
    FILE *f;
    size_t texts, tokens;
} sink;

static void print_json_string(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c < 0x20 || c == 0x7f) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

/* Encodes one text and prints or writes its ids. where names the input in messages. */
static int emit(sink *s, const char *text, size_t len, const char *where, qd_err *err) {
    int *ids = NULL;
    size_t n = 0;
    if (qd_tok_encode(s->tok, text, len, s->bos, &ids, &n, err) != QD_OK) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return qd_errf(err, "%s: %s", where, msg);
    }
    int rc = QD_OK;
    if (s->width) {
        for (size_t i = 0; i < n && rc == QD_OK; i++) {
            uint32_t v = (uint32_t)ids[i];
            if (s->width == 2 && v > 0xFFFF) {
                rc = qd_errf(err, "%s: token id %u does not fit uint16: name the output "
                             ".u32.bin", where, v);
                break;
            }
            unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8),
                                  (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
            if (fwrite(b, 1, (size_t)s->width, s->f) != (size_t)s->width)
                rc = qd_errf(err, "write failed");
        }
    } else if (s->pieces) {
        int prev = -1;
        for (size_t i = 0; i < n; i++) {
            size_t pl;
            const char *p = qd_tok_piece(s->tok, prev, ids[i], &pl);
            printf("%d\t", ids[i]);
            print_json_string(p, pl);
            putchar('\n');
            prev = ids[i];
        }
    } else {
        putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        fputs("]\n", stdout);
    }
    s->texts++;
    s->tokens += n;
    free(ids);
    return rc;
}

static int run_jsonl(sink *s, const char *path, qd_err *err) {
    size_t len;
    char *buf = qd_read_file(path, QD_DATA_MAX_BYTES, &len, err);
    if (!buf) return QD_ERR;
    int rc = QD_OK;
    size_t line = 0;
    for (char *p = buf; p < buf + len && rc == QD_OK;) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(buf + len - p);
        line++;
        size_t k = 0;
        while (k < l && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r')) k++;
        if (k < l) {
            char where[4200];
            snprintf(where, sizeof where, "%s: line %zu", path, line);
            cJSON *o = cJSON_ParseWithLength(p, l);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
            if (!o) rc = qd_errf(err, "%s: not valid JSON", where);
            else if (!cJSON_IsString(t)) rc = qd_errf(err, "%s: no string \"text\" field", where);
            else rc = emit(s, t->valuestring, strlen(t->valuestring), where, err);
            cJSON_Delete(o);
        }
        p += l + 1;
    }
    free(buf);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'}, {"model", required_argument, NULL, 'm'},
        {"text", required_argument, NULL, 's'},      {"file", required_argument, NULL, 'f'},
        {"jsonl", required_argument, NULL, 'j'},     {"out", required_argument, NULL, 'o'},
        {"bos", no_argument, NULL, 'b'},             {"pieces", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0}};
    const char *tok_path = NULL, *model_path = NULL, *text = NULL, *file = NULL, *jsonl = NULL,
               *out = NULL;
    sink s = {0};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': tok_path = optarg; break;
        case 'm': model_path = optarg; break;
        case 's': text = optarg; break;
        case 'f': file = optarg; break;
        case 'j': jsonl = optarg; break;
        case 'o': out = optarg; break;
        case 'b': s.bos = 1; break;
        case 'p': s.pieces = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2; /* getopt_long said what was wrong */
        }
    }
    if (optind < argc) {
        fprintf(stderr, "quantd tokenize: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!tok_path == !model_path) {
        fprintf(stderr, "quantd tokenize: give one of --tokenizer or --model\n");
        usage(stderr);
        return 2;
    }
    if ((text != NULL) + (file != NULL) + (jsonl != NULL) != 1) {
        fprintf(stderr, "quantd tokenize: give one of --text, --file or --jsonl\n");
        usage(stderr);
        return 2;
    }
    if (out) {
        int fmt = qd_data_format_of(out);
        size_t ol = strlen(out);
        if (fmt == QD_DATA_U32) s.width = 4;
        else if (fmt == QD_DATA_U16 || (ol >= 4 && !strcasecmp(out + ol - 4, ".bin"))) s.width = 2;
        else {
            fprintf(stderr, "quantd tokenize: --out: '%s' must end in .u32.bin, .u16.bin or "
                            ".bin\n", out);
            return 2;
        }
    }
    qd_err err = {{0}};
    qd_tokenizer *tok = open_tokenizer(tok_path, model_path, &err);
    if (!tok) {
        fprintf(stderr, "quantd tokenize: %s\n", err.msg);
        return 1;
    }
    s.tok = tok;
    int rc = QD_ERR;
    char *buf = NULL;
    qd_atomic_file af = {0};
    if (s.bos && qd_tok_bos(tok) < 0) {
        qd_errf(&err, "--bos: %s has no BOS token", tok_path ? tok_path : model_path);
        goto done;
    }
    if (out) {
        if (qd_atomic_open(&af, out, &err) != QD_OK) goto done;
        s.f = af.f;
    }
    if (text) {
        rc = emit(&s, text, strlen(text), "--text", &err);
    } else if (file) {
        size_t len;
        if ((buf = qd_read_file(file, QD_DATA_MAX_BYTES, &len, &err)))
            rc = emit(&s, buf, len, file, &err);
    } else {
        rc = run_jsonl(&s, jsonl, &err);
    }
    if (out) {
        if (rc == QD_OK && s.tokens == 0) rc = qd_errf(&err, "%s: no tokens to write", out);
        if (rc == QD_OK) rc = qd_atomic_commit(&af, &err);
        else qd_atomic_abort(&af);
        if (rc == QD_OK)
            fprintf(stderr, "quantd tokenize: %zu text%s, %zu tokens -> %s (uint%d)\n", s.texts,
                    s.texts == 1 ? "" : "s", s.tokens, out, s.width * 8);
    }
done:
    if (rc != QD_OK) fprintf(stderr, "quantd tokenize: %s\n", err.msg);
    free(buf);
    qd_tok_free(tok);
    if (fflush(stdout) != 0 && rc == QD_OK) {
        fprintf(stderr, "quantd tokenize: writing stdout failed\n");
        rc = QD_ERR;
    }
    return rc == QD_OK ? 0 : 1;
}
