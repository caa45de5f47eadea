/* FP32 forward benchmark: tokens/s and achieved GFLOP/s of qd_forward on a synthetic model
 * (dim 1024, 4 layers, FFN 2816, 16 heads, T = 512, vocab 32000, random weights), next to
 * plain cblas_sgemm GFLOP/s at the model's own matmul shapes measured in the same run. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "quant/fp/blas.h"
#include "quant/fp/forward.h"
#include "tests/synth.h"
#include "base/sys.h"

/* Query rows per causal attention block: must match QD_ATTN_QBLOCK in quant/forward.c. */
#define ATTN_QBLOCK 64

static double best_of(int reps, double (*fn)(void *), void *ctx) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = fn(ctx);
        if (t < best) best = t;
    }
    return best;
}

typedef struct {
    qd_model *m;
    qd_fwd_ws *ws;
    int *tok;
    float *logits;
    int B, T;
} fwd_ctx;

static double run_fwd(void *p) {
    fwd_ctx *c = p;
    qd_err err;
    double t0 = qd_now();
    if (qd_forward_ws(c->m, c->ws, c->tok, c->B, c->T, c->logits, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    return qd_now() - t0;
}

typedef struct {
    int M, N, K, count;   /* C (M,N) = A (M,K) B^T; count = calls per forward */
} shape;

static double sgemm_seconds(const shape *s, int n) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        float *A = malloc(sizeof(float) * s[i].M * s[i].K), *B = malloc(sizeof(float) * s[i].N * s[i].K),
              *C = malloc(sizeof(float) * s[i].M * s[i].N);
        for (size_t j = 0; j < (size_t)s[i].M * s[i].K; j++) A[j] = (float)(j % 7) * 0.1f;
        for (size_t j = 0; j < (size_t)s[i].N * s[i].K; j++) B[j] = (float)(j % 5) * 0.1f;
        /* Small shapes (attention blocks) repeat so one timing covers ~0.1 GFLOP: a
         * single 64 x 64 call is too short to time against the clock and thread wake-up. */
        int inner = 1 + (int)(1e8 / (2.0 * s[i].M * s[i].N * s[i].K));
        double best = 1e30;
        for (int r = 0; r < 3; r++) {
            double t0 = qd_now();
            for (int j = 0; j < inner; j++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s[i].M, s[i].N, s[i].K,
                            1.0f, A, s[i].K, B, s[i].K, 0.0f, C, s[i].N);
            double t = (qd_now() - t0) / inner;
            if (t < best) best = t;
        }
        total += best * s[i].count;
        free(A), free(B), free(C);
    }
    return total;
}

int main(void) {
    qd_blas_select(NULL);
    qd_config c = synth_config(1024, 2816, 4, 16, 16, 32000, 512);
    qd_err err;
    qd_model *m = synth_model(&c, 42, &err);
    if (!m) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int B = 1, T = 512;
    fwd_ctx fc = {m, qd_fwd_ws_new(), malloc(sizeof(int) * B * T), malloc(sizeof(float) * (size_t)B * T * c.vocab_size), B, T};
    for (int i = 0; i < B * T; i++) fc.tok[i] = (i * 7919) % c.vocab_size;
    run_fwd(&fc); /* warm-up */
    double t = best_of(3, run_fwd, &fc);
    int N = B * T, D = c.dim, F = c.hidden_dim, qd = c.n_heads * c.head_dim,
        kvd = c.n_kv_heads * c.head_dim, L = c.n_layers;
    double lin = 2.0 * N * ((double)D * qd * 2 + 2.0 * D * kvd + 3.0 * D * F) * L;
    /* Attention counts the sgemm work the forward runs: per (batch, head, layer) and query
     * block [i0, i1), scores (i1 - i0, i1) over head_dim and P.V (i1 - i0, head_dim) over
     * i1. That is the causal triangle plus the masked upper half of each diagonal block,
     * not the full T x T; the baseline below times the same block shapes. */
    double attn = 0;
    shape sh[8 + 2 * (T + ATTN_QBLOCK - 1) / ATTN_QBLOCK];
    int ns = 0;
    sh[ns++] = (shape){N, qd, D, L};
    sh[ns++] = (shape){N, kvd, D, 2 * L};
    sh[ns++] = (shape){N, D, qd, L};
    sh[ns++] = (shape){N, F, D, 2 * L};
    sh[ns++] = (shape){N, D, F, L};
    sh[ns++] = (shape){N, c.vocab_size, D, 1};
    for (int i0 = 0; i0 < T; i0 += ATTN_QBLOCK) {
        int i1 = i0 + ATTN_QBLOCK < T ? i0 + ATTN_QBLOCK : T;
        attn += 2.0 * 2.0 * B * c.n_heads * (double)(i1 - i0) * i1 * c.head_dim * L;
        sh[ns++] = (shape){i1 - i0, i1, c.head_dim, B * c.n_heads * L};
        sh[ns++] = (shape){i1 - i0, c.head_dim, i1, B * c.n_heads * L};
    }
    double head = 2.0 * N * (double)D * c.vocab_size;
    double flops = lin + attn + head;
    double ts = sgemm_seconds(sh, ns);
    printf("fp32 forward: synthetic dim %d, %d layers, FFN %d, %d heads, T %d, vocab %d\n", D,
           L, F, c.n_heads, T, c.vocab_size);
    printf("  forward        %8.1f tokens/s  %7.1f GFLOP/s  (%.3f s per %d tokens)\n", N / t,
           flops / t * 1e-9, t, N);
    printf("  plain sgemm    %8s           %7.1f GFLOP/s  (same shapes, same run)\n", "",
           flops / ts * 1e-9);
    printf("  ratio forward/sgemm %.2f\n", ts / t);
    free(fc.tok), free(fc.logits);
    qd_fwd_ws_free(fc.ws);
    qd_model_free(m);
    return 0;
}
