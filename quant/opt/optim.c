/* AdamW with per-group cosine schedules, the generator, and the optimizer checkpoint. */
#include "quant/opt/optim.h"

#include "base/hash.h"
#include "base/fs.h"
#include "base/par.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint64_t qd_rng_next(qd_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t qd_rng_below(qd_rng *r, uint64_t n) {
    /* rejection keeps it unbiased */
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
    do x = qd_rng_next(r);
    while (x >= lim);
    return x % n;
}

void qd_rng_shuffle(qd_rng *r, int *idx, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)qd_rng_below(r, (uint64_t)i + 1);
        int t = idx[i];
        idx[i] = idx[j], idx[j] = t;
    }
}

qd_adam *qd_adam_new(size_t n, const size_t *grp_off, int n_groups, qd_err *err) {
    if (n_groups < 1 || n_groups > QD_ADAM_MAX_GROUPS || grp_off[n_groups] != n) {
        qd_errf(err, "%s: bad groups", __func__);
        return NULL;
    }
    qd_adam *a = calloc(1, sizeof *a);
    if (!a) goto oom;
    a->n = n, a->n_groups = n_groups;
    memcpy(a->grp_off, grp_off, sizeof(size_t) * (size_t)(n_groups + 1));
    a->beta1 = 0.9, a->beta2 = 0.999, a->eps = 1e-8, a->weight_decay = 0;
    a->m = calloc(n ? n : 1, sizeof(float));
    a->v = calloc(n ? n : 1, sizeof(float));
    if (!a->m || !a->v) goto oom;
    return a;
oom:
    qd_adam_free(a);
    qd_errf(err, "%s: out of memory", __func__);
    return NULL;
}

void qd_adam_free(qd_adam *a) {
    if (!a) return;
    free(a->m), free(a->v), free(a);
}

void qd_adam_reset(qd_adam *a) {
    memset(a->m, 0, a->n * sizeof(float));
    memset(a->v, 0, a->n * sizeof(float));
    a->step = 0;
}

double qd_adam_lr(const qd_adam *a, int k) {
    double T = a->total_steps > 0 ? (double)a->total_steps : 1;
    double t = (double)a->step / T;
    if (t > 1) t = 1;
    return a->lr_min[k] + 0.5 * (a->lr_max[k] - a->lr_min[k]) * (1 + cos(M_PI * t));
}

/* One group's elements [lo, hi) of an AdamW step (elementwise: any chunking gives the same). */
typedef struct adam_job {
    qd_adam *a;
    qd_real *p;
    const qd_real *g;
    size_t off;
    double lr, c1, c2;
} adam_job;

static void adam_r(const void *ctx, size_t lo, size_t hi) {
    const adam_job *J = ctx;
    qd_adam *a = J->a;
    double b1 = a->beta1, b2 = a->beta2;
    for (size_t i = J->off + lo; i < J->off + hi; i++) {
        double gi = J->g[i];
        double m = b1 * a->m[i] + (1 - b1) * gi;
        double v = b2 * a->v[i] + (1 - b2) * gi * gi;
        a->m[i] = (float)m, a->v[i] = (float)v;
        double upd = (m / J->c1) / (sqrt(v / J->c2) + a->eps) + a->weight_decay * J->p[i];
        J->p[i] = (qd_real)(J->p[i] - J->lr * (a->lr_scale ? a->lr_scale[i] : 1.0) * upd);
    }
}

void qd_adam_step(qd_adam *a, qd_real *p, const qd_real *g) {
    double t = (double)(a->step + 1);
    double c1 = 1 - pow(a->beta1, t), c2 = 1 - pow(a->beta2, t);
    for (int k = 0; k < a->n_groups; k++) {
        double lr = qd_adam_lr(a, k);
        if (a->lr_max[k] == 0) continue;
        adam_job J = {a, p, g, a->grp_off[k], lr, c1, c2};
        par_for(a->grp_off[k + 1] - a->grp_off[k], PAR_ELEMS, adam_r, &J);
    }
    a->step++;
}

static const char CKPT_MAGIC[8] = {'Q', 'D', 'C', 'K', 'P', 'T', '0', '1'};

typedef struct {
    FILE *f;
    uint64_t h;
    int bad;
} wr;

static void put(wr *w, const void *p, size_t n) {
    if (w->bad) return;
    if (fwrite(p, 1, n, w->f) != n) w->bad = 1;
    w->h = qd_fnv64(w->h, p, n);
}

int qd_ckpt_save(const char *path, const qd_ckpt *c, const qd_adam *a, const qd_real *p,
                 qd_err *err) {
    qd_atomic_file af;
    if (qd_atomic_open(&af, path, err)) return QD_ERR;
    wr w = {af.f, QD_FNV_INIT, 0};
    uint32_t ver = QD_CKPT_VERSION, realsz = (uint32_t)sizeof(qd_real);
    uint64_t n = a->n, fp = c->fingerprint, rng = c->rng;
    int64_t step = a->step, total = c->total_steps, nl = c->n_loss, nx = c->n_extra;
    put(&w, CKPT_MAGIC, 8);
    put(&w, &ver, 4), put(&w, &realsz, 4);
    put(&w, &fp, 8), put(&w, &n, 8), put(&w, &step, 8), put(&w, &total, 8), put(&w, &rng, 8);
    put(&w, &nl, 8);
    if (nl) put(&w, c->loss, sizeof(float) * (size_t)nl);
    put(&w, &nx, 8);
    if (nx) put(&w, c->extra, sizeof(qd_real) * (size_t)nx);
    put(&w, p, sizeof(qd_real) * a->n);
    put(&w, a->m, sizeof(float) * a->n);
    put(&w, a->v, sizeof(float) * a->n);
    uint64_t h = w.h;
    if (w.bad || fwrite(&h, 8, 1, af.f) != 1) {
        int e = errno;
        qd_atomic_abort(&af);
        return qd_errf(err, "%s: write failed: %s", path, strerror(e));
    }
    return qd_atomic_commit(&af, err);
}

/* The next count elements of elem bytes of buf[*off..len) in a new allocation (never empty),
 * once the file is known to hold them: a count from the file is checked against the bytes
 * left before anything is allocated. NULL with err otherwise. */
static void *take_array(const unsigned char *buf, size_t len, size_t *off, int64_t count,
                        size_t elem, const char *path, qd_err *err) {
    if (count < 0 || (uint64_t)count > (len - *off) / elem)
        return qd_errf(err, "%s: checkpoint sizes do not match this run", path), NULL;
    size_t n = (size_t)count * elem;
    void *d = malloc(n ? n : 1);
    if (!d) return qd_errf(err, "%s: out of memory", path), NULL;
    memcpy(d, buf + *off, n);
    *off += n;
    return d;
}

int qd_ckpt_load(const char *path, uint64_t fingerprint, qd_ckpt *c, qd_adam *a, qd_real *p,
                 qd_err *err) {
    if (access(path, F_OK) != 0) return 1;
    size_t len;
    unsigned char *buf = qd_read_file(path, (size_t)1 << 36, &len, err);
    if (!buf) return QD_ERR;
    int rc = QD_ERR;
    size_t off = 0;
#define TAKE(dst, n)                                                                      \
    do {                                                                                  \
        if ((n) > len - off) {                                                            \
            qd_errf(err, "%s: checkpoint truncated", path);                               \
            goto out;                                                                     \
        }                                                                                 \
        memcpy((dst), buf + off, (n));                                                    \
        off += (n);                                                                       \
    } while (0)
    char magic[8];
    uint32_t ver, realsz;
    uint64_t fp, n, rng;
    int64_t step, total, nl, nx;
    c->loss = NULL, c->extra = NULL;
    if (len < 8 + 8) {
        qd_errf(err, "%s: checkpoint truncated", path);
        goto out;
    }
    {
        uint64_t h = qd_fnv64(QD_FNV_INIT, buf, len - 8), stored;
        memcpy(&stored, buf + len - 8, 8);
        len -= 8;
        TAKE(magic, 8);
        if (memcmp(magic, CKPT_MAGIC, 8)) {
            qd_errf(err, "%s: not a quantd checkpoint (bad magic)", path);
            goto out;
        }
        if (h != stored) {
            qd_errf(err, "%s: checkpoint checksum mismatch (corrupt file)", path);
            goto out;
        }
    }
    TAKE(&ver, 4);
    TAKE(&realsz, 4);
    if (ver != QD_CKPT_VERSION) {
        qd_errf(err, "%s: checkpoint version %u, this build reads only version %u (its "
                "optimizer settings mean something else); remove it to start over", path, ver,
                QD_CKPT_VERSION);
        goto out;
    }
    if (realsz != sizeof(qd_real)) {
        qd_errf(err, "%s: checkpoint of %u-byte parameters, this build uses %zu", path, realsz,
                sizeof(qd_real));
        goto out;
    }
    TAKE(&fp, 8);
    TAKE(&n, 8);
    TAKE(&step, 8);
    TAKE(&total, 8);
    TAKE(&rng, 8);
    TAKE(&nl, 8);
    if (fp != fingerprint) {
        qd_errf(err, "%s: checkpoint belongs to a run with other settings (model, data, method, "
                "budget or optimizer settings); remove it to start over", path);
        goto out;
    }
    if (n != a->n || step < 0 || step > total) {
        qd_errf(err, "%s: checkpoint sizes do not match this run", path);
        goto out;
    }
    if (!(c->loss = take_array(buf, len, &off, nl, sizeof(float), path, err))) goto out;
    TAKE(&nx, 8);
    if (!(c->extra = take_array(buf, len, &off, nx, sizeof(qd_real), path, err))) goto out;
    TAKE(p, sizeof(qd_real) * a->n);
    TAKE(a->m, sizeof(float) * a->n);
    TAKE(a->v, sizeof(float) * a->n);
    if (off != len) {
        qd_errf(err, "%s: trailing bytes in checkpoint", path);
        goto out;
    }
    c->fingerprint = fp, c->step = step, c->total_steps = total, c->rng = rng, c->n_loss = nl;
    c->n_extra = nx;
    a->step = step;
    rc = QD_OK;
#undef TAKE
out:
    if (rc != QD_OK) {
        free(c->loss), free(c->extra);
        c->loss = NULL, c->extra = NULL;
    }
    free(buf);
    return rc;
}
