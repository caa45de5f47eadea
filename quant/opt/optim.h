/* The optimizer side of MobileQuant: AdamW with one cosine learning-rate schedule per
 * parameter group, a small seeded generator, and the resumable checkpoint of the whole
 * optimizer state (parameters, Adam moments, step, generator, loss curve). */
#ifndef QD_OPTIM_H
#define QD_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "quant/sim/ops.h"
#include "base/err.h"

/* splitmix64: tiny, seedable, state is one word (easy to checkpoint). */
typedef struct qd_rng {
    uint64_t s;
} qd_rng;
uint64_t qd_rng_next(qd_rng *r);
/* uniform integer in [0, n) */
uint64_t qd_rng_below(qd_rng *r, uint64_t n);
/* Fisher-Yates shuffle of idx[0..n) */
void qd_rng_shuffle(qd_rng *r, int *idx, int n);

#define QD_ADAM_MAX_GROUPS 4

typedef struct qd_adam {
    size_t n;                              /* parameters */
    int n_groups;
    size_t grp_off[QD_ADAM_MAX_GROUPS + 1];/* group k: [grp_off[k], grp_off[k+1]) */
    double lr_max[QD_ADAM_MAX_GROUPS];     /* cosine from lr_max at step 0 ... */
    double lr_min[QD_ADAM_MAX_GROUPS];     /* ... to lr_min at total_steps; 0/0: frozen */
    double beta1, beta2, eps, weight_decay;
    long step;                             /* steps taken */
    long total_steps;                      /* schedule length */
    float *m, *v;                          /* moments (n each) */
    const float *lr_scale;                 /* per-parameter factor on the learning rate, or
                                              NULL (1): set by the caller, not saved */
} qd_adam;

/* Allocates moments for n parameters split by grp_off (n_groups+1 offsets). Defaults: betas
 * 0.9/0.999, eps 1e-8, weight decay 0. NULL on failure. */
qd_adam *qd_adam_new(size_t n, const size_t *grp_off, int n_groups, qd_err *err);
void qd_adam_free(qd_adam *a);
/* Clears moments and the step (block-wise training restarts per block). */
void qd_adam_reset(qd_adam *a);
/* Learning rate of group k at the current step. */
double qd_adam_lr(const qd_adam *a, int k);
/* One AdamW update of p with gradient g (each parameter's step times lr_scale[i] when set);
 * advances step. Groups with lr_max 0 are skipped. */
void qd_adam_step(qd_adam *a, qd_real *p, const qd_real *g);

/* Checkpoint file: magic "QDCKPT01", version, a fingerprint of the run configuration (a resume
 * with other settings is refused), then step, total, generator, loss curve, the method's own
 * state (extra: MobileQuant's held-out model selection), parameters and both moments, closed by
 * a 64-bit FNV-1a checksum. Written to path.tmp, fsync'ed, renamed.
 * The version counts changes of layout OR of meaning: version 2 is the first whose parameters
 * follow the LWC clipping search init, relative LRL learning rates and overlapping windows
 * (version 1 files would resume a different trajectory); version 3 adds the extra block and
 * offsets projected onto their range; other versions are refused. */
#define QD_CKPT_VERSION 3u
typedef struct qd_ckpt {
    uint64_t fingerprint;
    long step, total_steps;
    uint64_t rng;
    float *loss;      /* loss curve: one entry per step (n_loss); owned by the caller on save,
                         malloc'd on load (caller frees) */
    long n_loss;
    qd_real *extra;   /* the method's state (n_extra values, may be 0); owned by the caller on
                         save, malloc'd on load (caller frees) */
    long n_extra;
} qd_ckpt;

int qd_ckpt_save(const char *path, const qd_ckpt *c, const qd_adam *a, const qd_real *p,
                 qd_err *err);
/* Loads into c (allocating c->loss and c->extra), a's moments and step, and p. Refuses a wrong magic,
 * version, fingerprint, size or checksum with err saying which. Returns 1 when path does not
 * exist (nothing loaded), QD_OK when loaded, QD_ERR on a bad file. */
int qd_ckpt_load(const char *path, uint64_t fingerprint, qd_ckpt *c, qd_adam *a, qd_real *p,
                 qd_err *err);

#endif
