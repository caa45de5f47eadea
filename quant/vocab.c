/* The vocabulary record: constructor and destructor. */
#include "quant/vocab.h"

#include <stdlib.h>

#include "quant/model.h"

qd_vocab *qd_vocab_new(int n, qd_err *err) {
    if (n < 1 || n > QD_MAX_VOCAB)
        return qd_errf(err, "%s: vocabulary size %d outside 1..%d", __func__, n, QD_MAX_VOCAB),
               NULL;
    qd_vocab *v = calloc(1, sizeof *v);
    if (!v) return qd_errf(err, "%s: out of memory", __func__), NULL;
    v->n = n;
    v->tokens = calloc((size_t)n, sizeof *v->tokens);
    v->scores = calloc((size_t)n, sizeof *v->scores);
    v->types = malloc((size_t)n * sizeof *v->types);
    if (!v->tokens || !v->scores || !v->types) {
        qd_vocab_free(v);
        return qd_errf(err, "%s: out of memory for %d tokens", __func__, n), NULL;
    }
    for (int i = 0; i < n; i++) v->types[i] = QD_TOK_NORMAL;
    v->bos_id = v->eos_id = v->unk_id = -1;
    v->add_bos = 1;
    v->add_space_prefix = 1;
    return v;
}

void qd_vocab_free(qd_vocab *v) {
    if (!v) return;
    if (v->tokens)
        for (int i = 0; i < v->n; i++) free(v->tokens[i]);
    free(v->tokens);
    free(v->scores);
    free(v->types);
    if (v->merges)
        for (int i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->merges);
    free(v);
}

