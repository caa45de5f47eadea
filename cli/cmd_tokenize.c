/* quantd tokenize: text to token ids with a model's tokenizer, like llama.cpp's
 * llama-tokenize. Input from --text, --file (the whole file is one text) or --jsonl (one JSON
 * object with a string "text" field per line; blank lines are skipped). Output: one JSON
 * array of ids per text on stdout, in input order, or with --out the ids of all texts one
 * after another as pre-tokenized calibration data (.u32.bin: little-endian uint32; .u16.bin
 * or .bin: uint16), which quantize and eval read without a tokenizer. No BOS or EOS is added
 * unless --bos. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/fs.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "quant/io/gguf.h"
#include "quant/text/data.h"
#include "quant/text/resolve.h"
#include "quant/text/tokenizer.h"

enum { O_TOKENIZER = CLI_KEY, O_MODEL, O_TEXT, O_FILE, O_JSONL, O_OUT, O_BOS, O_PIECES };

static const cli_opt opts[] = {
    {"tokenizer", O_TOKENIZER, "PATH", "tokenizer.json, tokenizer.bin or a .gguf's vocabulary"},
    {"model", O_MODEL, "PATH", "a checkpoint: its own vocabulary (GGUF) or the tokenizer beside it"},
    {"text", O_TEXT, "S", "the text to tokenize"},
    {"file", O_FILE, "F", "a UTF-8 file, tokenized whole as one text"},
    {"jsonl", O_JSONL, "F", "one JSON object with a \"text\" field per line: one id array each"},
    {"bos", O_BOS, NULL, "put the tokenizer's BOS in front of each text (default: none)"},
    {"pieces", O_PIECES, NULL, "print \"id<TAB>piece\" lines (the piece as JSON) instead of arrays"},
    {"out", O_OUT, "F", "write all ids to a pre-tokenized file instead of printing them:\n"
                        ".u32.bin little-endian uint32, .u16.bin (or .bin) uint16"},
    {0}};

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
    const char *tok_path = NULL, *model_path = NULL, *text = NULL, *file = NULL, *jsonl = NULL,
               *out = NULL;
    sink s = {0};
    cli_args a;
    cli_args_init(&a, "quantd tokenize", "(--tokenizer PATH | --model PATH)\n"
                  "                       (--text S | --file F | --jsonl F) [--bos] [--pieces]\n"
                  "                       [--out F.u32.bin]", opts, argc, argv);
    for (int c; (c = cli_next(&a)) != CLI_END;) {
        switch (c) {
        case O_TOKENIZER: tok_path = a.val; break;
        case O_MODEL: model_path = a.val; break;
        case O_TEXT: text = a.val; break;
        case O_FILE: file = a.val; break;
        case O_JSONL: jsonl = a.val; break;
        case O_OUT: out = a.val; break;
        case O_BOS: s.bos = 1; break;
        case O_PIECES: s.pieces = 1; break;
        case CLI_HELP: cli_help(&a); return 0;
        default: return 2;
        }
    }
    if (a.optind < argc) {
        cli_fail(&a, "unexpected operand '%s'", argv[a.optind]);
        return 2;
    }
    if (!tok_path == !model_path) {
        cli_fail(&a, "give one of --tokenizer or --model");
        cli_usage(&a, stderr);
        return 2;
    }
    if ((text != NULL) + (file != NULL) + (jsonl != NULL) != 1) {
        cli_fail(&a, "give one of --text, --file or --jsonl");
        cli_usage(&a, stderr);
        return 2;
    }
    if (out) {
        int fmt = qd_data_format_of(out);
        size_t ol = strlen(out);
        if (fmt == QD_DATA_U32) s.width = 4;
        else if (fmt == QD_DATA_U16 || (ol >= 4 && !strcasecmp(out + ol - 4, ".bin"))) s.width = 2;
        else {
            snprintf(a.opt, sizeof a.opt, "--out");
            cli_fail(&a, "'%s' must end in .u32.bin, .u16.bin or .bin", out);
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
