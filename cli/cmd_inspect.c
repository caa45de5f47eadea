/* quantd inspect: what a checkpoint holds: architecture, tensors with shapes and dtypes,
 * parameter count, bytes. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "quant/model.h"
#include "quant/io/load.h"

static const cli_opt opts[] = {{"json", 'j', NULL, "one JSON object instead of text"}, {0}};

int cmd_inspect(int argc, char **argv) {
    int json = 0;
    cli_args a;
    cli_args_init(&a, "quantd inspect", "[--json] PATH", opts, argc, argv);
    for (int c; (c = cli_next(&a)) != CLI_END;) {
        if (c == 'j') json = 1;
        else if (c == CLI_HELP) return cli_help(&a), 0;
        else return 2;
    }
    if (argc - a.optind != 1) {
        cli_fail(&a, argc == a.optind ? "a PATH is required" : "one PATH only");
        cli_usage(&a, stderr);
        return 2;
    }
    const char *path = argv[a.optind];
    qd_err err = {{0}};
    qd_model *m = qd_model_load(path, &err);
    if (!m) {
        fprintf(stderr, "quantd inspect: %s\n", err.msg);
        return 1;
    }
    const qd_config *c = &m->cfg;
    size_t bytes = 0;
    for (int i = 0; i < m->n_tinfo; i++) bytes += m->tinfo[i].bytes;
    size_t np = qd_model_n_params(m);
#define NORM_NAME(c) ((c)->norm == QD_NORM_LAYER ? "layernorm" : "rmsnorm")
#define ACT_NAME(c) ((c)->act == QD_ACT_GELU_TANH ? "gelu_tanh" : "silu")
    if (json) {
        printf("{\"format\":\"%s\",\"arch\":\"%s\",\"dim\":%d,\"hidden_dim\":%d,\"n_layers\":%d,"
               "\"n_heads\":%d,\"n_kv_heads\":%d,\"head_dim\":%d,\"vocab_size\":%d,"
               "\"max_seq_len\":%d,\"norm_eps\":%g,\"rope_theta\":%g,\"tied_embeddings\":%s,"
               "\"qkv_bias\":%s,\"norm\":\"%s\",\"activation\":\"%s\",\"rotary_dims\":%d,"
               "\"emb_scale\":%.9g,\"params\":%zu,\"tensor_bytes\":%zu,\"tensors\":[",
               m->format, c->arch, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
               c->n_kv_heads, c->head_dim, c->vocab_size, c->max_seq_len, c->norm_eps,
               c->rope_theta, c->tied_embeddings ? "true" : "false",
               c->qkv_bias ? "true" : "false", NORM_NAME(c), ACT_NAME(c), qd_rot_dim(c),
               (double)qd_emb_scale(c), np, bytes);
        for (int i = 0; i < m->n_tinfo; i++) {
            const qd_tensor_info *t = &m->tinfo[i];
            printf("%s{\"name\":\"%s\",\"dtype\":\"%s\",\"shape\":[", i ? "," : "", t->name,
                   t->dtype);
            for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? "," : "", (long long)t->shape[d]);
            printf("],\"bytes\":%zu}", t->bytes);
        }
        printf("]}\n");
    } else {
        printf("%s: %s (%s)\n", path, c->arch, m->format);
        printf("  dim %d, hidden %d, layers %d, heads %d, kv heads %d, head_dim %d\n", c->dim,
               c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim);
        printf("  vocab %d, context %d, %s eps %g, rope theta %g, tied embeddings %s, "
               "qkv bias %s\n", c->vocab_size, c->max_seq_len,
               c->norm == QD_NORM_LAYER ? "layernorm" : "rms", c->norm_eps, c->rope_theta,
               c->tied_embeddings ? "yes" : "no", c->qkv_bias ? "yes" : "no");
        if (c->family != QD_FAMILY_LLAMA)
            printf("  norm %s, activation %s, rotary dims %d of %d, embedding scale %.9g\n",
                   NORM_NAME(c), ACT_NAME(c), qd_rot_dim(c), c->head_dim,
                   (double)qd_emb_scale(c));
        printf("  parameters %zu (%.3f M), tensor bytes %zu\n", np, np / 1e6, bytes);
        printf("  %-48s %-5s %-16s %s\n", "tensor", "dtype", "shape", "bytes");
        for (int i = 0; i < m->n_tinfo; i++) {
            const qd_tensor_info *t = &m->tinfo[i];
            char shape[64] = "";
            size_t o = 0;
            for (int d = 0; d < t->ndim && o < sizeof shape; d++)
                o += snprintf(shape + o, sizeof shape - o, "%s%lld", d ? "x" : "",
                              (long long)t->shape[d]);
            printf("  %-48s %-5s %-16s %zu\n", t->name, t->dtype, shape, t->bytes);
        }
    }
    qd_model_free(m);
    return 0;
}
