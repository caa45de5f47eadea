/* Resolves the tokenizer of a checkpoint: explicit path, embedded vocabulary, or a tokenizer
 * file beside the checkpoint. */
#include "quant/text/resolve.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

qd_tokenizer *qd_tok_for_model(const qd_model *m, const char *model_path, const char *tok_path,
                               qd_err *err) {
    return qd_tok_resolve(m->vocab, m->cfg.vocab_size, model_path, tok_path, err);
}

qd_tokenizer *qd_tok_resolve(const qd_vocab *vocab, int vocab_size, const char *model_path,
                             const char *tok_path, qd_err *err) {
    qd_tokenizer *t = NULL;
    if (tok_path) {
        t = qd_tok_load(tok_path, err);
    } else if (vocab) {
        t = qd_tok_from_vocab(vocab, err);
    } else {
        char dir[4096], cand[4200];
        snprintf(dir, sizeof dir, "%s", model_path);
        if (!is_dir(dir)) {
            char tmp[4096];
            snprintf(tmp, sizeof tmp, "%s", model_path);
            snprintf(dir, sizeof dir, "%s", dirname(tmp));
        }
        static const char *names[] = {"tokenizer.json", "tokenizer.bin",
                                      "fp-folded/tokenizer.json", "fp-folded/tokenizer.bin"};
        for (size_t i = 0; i < 4 && !t; i++) {
            snprintf(cand, sizeof cand, "%s/%s", dir, names[i]);
            if (is_file(cand)) t = qd_tok_load(cand, err);
            if (!t && is_file(cand)) return NULL;
        }
        if (!t) {
            qd_errf(err, "%s: the checkpoint carries no vocabulary and no tokenizer.json or "
                         "tokenizer.bin lies beside it: pass --tokenizer PATH", model_path);
            return NULL;
        }
    }
    if (!t) return NULL;
    if (vocab_size > 0 && qd_tok_vocab_size(t) != vocab_size) {
        qd_errf(err, "%s: tokenizer has %d tokens but the model's vocab_size is %d",
                tok_path ? tok_path : model_path, qd_tok_vocab_size(t), vocab_size);
        qd_tok_free(t);
        return NULL;
    }
    return t;
}
