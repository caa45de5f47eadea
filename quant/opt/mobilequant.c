/* The methods: calibration, SmoothQuant initialisation, block-wise (OmniQuant-style) and
 * end-to-end (MobileQuant) training. See mobilequant.h. */
#include "quant/opt/mobilequant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/limits.h"
#include "quant/opt/optim.h"
#include "base/hash.h"
#include "base/stop.h"
#include "base/sys.h"

void qd_mq_defaults(qd_mq_opts *o, int wbits) {
    memset(o, 0, sizeof *o);
    snprintf(o->method, sizeof o->method, "%s", qd_method_name(QD_METHOD_DEFAULT));
    o->wbits = wbits;
    o->samples = 64, o->seq_len = 256, o->epochs = 10, o->batch = 1;
    o->alpha = 0.5f;
    o->lwc_grid = 51, o->lwc_rmin = 0.5;
    o->gptq = -1;
    o->overlap = 1;
    o->lrl_relative = 1;
    o->lr_let[0] = 1e-3, o->lr_let[1] = 1e-4;
    o->lr_lwc[0] = 1e-2, o->lr_lwc[1] = 1e-3;
    /* LRL relative to each quantizer's range (lrl_relative): DESIGN.md's raw 1e-6 -> 1e-7 is
     * ~1e-4 of an 8-bit scale but ~1 of a 16-bit one, too little and too much at once */
    o->lr_lrl[0] = 1e-3, o->lr_lrl[1] = 1e-4;
    /* W4: DESIGN.md's 1e-3 -> 1e-4 barely moves the clipping in the budget's steps (measured on
     * stories260K: +10.4% ppl vs +11.3%); LET twice as fast too */
    if (wbits < 8) {
        o->lr_lwc[0] = 1e-2, o->lr_lwc[1] = 1e-3;
        o->lr_let[0] = 5e-3, o->lr_let[1] = 5e-4;
    }
    o->holdout = 0.1;
    o->eval_batch = 8;
}

void qd_mq_result_free(qd_mq_result *r) {
    if (!r) return;
    free(r->loss), free(r->sel_step), free(r->sel_loss);
    r->loss = NULL, r->sel_step = NULL, r->sel_loss = NULL;
    r->n_loss = r->n_sel = 0;
}

uint64_t qd_mq_fingerprint(const qd_mq_opts *o, uint64_t h) {
    /* field by field into fixed-width arrays: no struct padding in the hash; recompute is not
     * in it (the same results either way: a rerun with another memory limit resumes) */
    static const char tag[] = "mq-settings-4"; /* 3: offsets projected; 4: held-out selection */
    h = qd_fnv64(h, tag, sizeof tag);
    h = qd_fnv64(h, o->method, strlen(o->method));
    int64_t k[8 + QD_AC_COUNT] = {o->wbits,    o->wgran,        o->samples, o->seq_len,
                                  o->epochs,   o->batch,        o->lwc_grid, o->overlap};
    for (int i = 0; i < QD_AC_COUNT; i++) k[8 + i] = o->abits[i];
    h = qd_fnv64(h, k, sizeof k);
    int64_t k2[3] = {o->lrl_relative, o->gptq, o->select_every};
    h = qd_fnv64(h, k2, sizeof k2);
    h = qd_fnv64(h, &o->holdout, sizeof o->holdout);
    h = qd_fnv64(h, &o->seed, sizeof o->seed);
    double d[8] = {o->alpha,     o->lwc_rmin,  o->lr_let[0], o->lr_let[1],
                   o->lr_lwc[0], o->lr_lwc[1], o->lr_lrl[0], o->lr_lrl[1]};
    return qd_fnv64(h, d, sizeof d);
}

static void report(const qd_mq_opts *o, const char *phase, long step, long total, double loss,
                   double lr, double phase_t0) {
    if (!o->progress) return;
    double now = qd_now();
    qd_progress p = {phase, step, total, loss, lr, now - o->t0, NAN, NULL, 0, 0, NAN};
    if (step > 0 && total > 0) p.eta_s = (now - phase_t0) / step * (double)(total - step);
    o->progress(o->progress_ctx, &p);
}

static int push_loss(qd_mq_result *r, float v, long *cap) {
    if (r->n_loss == *cap) {
        long nc = *cap ? 2 * *cap : 256;
        float *nl = realloc(r->loss, sizeof(float) * (size_t)nc);
        if (!nl) return QD_ERR;
        r->loss = nl, *cap = nc;
    }
    r->loss[r->n_loss++] = v;
    return QD_OK;
}

/* mean squared error and its gradient (dout may be NULL) */
static double mse(const qd_real *y, const qd_real *t, qd_real *dout, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)y[i] - t[i];
        s += d * d;
        if (dout) dout[i] = (qd_real)(2 * d / (double)n);
    }
    return s / (double)n;
}

/* The sample order of an epoch: a permutation from a generator seeded by (seed, epoch), so a
 * resumed run regenerates it from the checkpointed state. */
static uint64_t epoch_rng(uint64_t seed, long epoch) {
    qd_rng r = {seed ^ 0x51ED5EEDull};
    uint64_t s = qd_rng_next(&r);
    return s + (uint64_t)epoch * 0x9E3779B97F4A7C15ull;
}

static void set_lrs(qd_adam *a, const qd_mq_opts *o, int train_lrl) {
    a->lr_max[QD_GRP_LET] = o->lr_let[0], a->lr_min[QD_GRP_LET] = o->lr_let[1];
    a->lr_max[QD_GRP_LWC] = o->lr_lwc[0], a->lr_min[QD_GRP_LWC] = o->lr_lwc[1];
    a->lr_max[QD_GRP_LRL] = train_lrl ? o->lr_lrl[0] : 0;
    a->lr_min[QD_GRP_LRL] = train_lrl ? o->lr_lrl[1] : 0;
}

typedef struct {
    qd_qsim *q;
    const qd_mq_opts *o;
    const int *win;        /* windows of T tokens */
    int nw, T, D;
    qd_real *x0, *out, *tgt, *dout;  /* batch buffers */
    int *tok;
    /* held-out selection (nh = 0: off) */
    const int *hwin;       /* nh windows of T tokens, disjoint from the training windows */
    int nh;
    qd_real *htgt;         /* their FP targets (nh * T * D) */
    qd_real *best;         /* parameters of the best state so far (n_params) */
    qd_real *targets;      /* the training windows' FP targets (nw * T * D), from the first
                            * statistics pass (LET off: the FP model's outputs), owned here */
} trainer;

static void gather(const qd_real *src, const int *idx, int b, size_t per, qd_real *dst) {
    for (int i = 0; i < b; i++)
        memcpy(dst + (size_t)i * per, src + (size_t)idx[i] * per, per * sizeof(qd_real));
}

/* FP outputs of the last block for every window (targets of the end-to-end loss). */
static void fp_targets(qd_qsim *q, const int *win, int nw, int T, qd_real *x0, qd_real *tg) {
    int sl = q->let_on, sa = q->aq_on, sw = q->wq_on;
    q->let_on = q->aq_on = q->wq_on = 0;
    size_t per = (size_t)T * q->cfg.dim;
    for (int w = 0; w < nw; w++) {
        q->rc.cursor = 0;
        qd_qsim_embed(q, win + (size_t)w * T, 1, T, x0);
        qd_qsim_forward_blocks(q, x0, tg + (size_t)w * per, 1, T);
    }
    q->let_on = sl, q->aq_on = sa, q->wq_on = sw;
}

/* The end-to-end loss (MSE of the last block against FP) of q on nh windows with targets tgt,
 * one window at a time through x0/out (T * D each); rounded to float so that a run resumed
 * from a checkpoint (which stores it as a float) compares the same numbers. */
static float holdout_loss(qd_qsim *q, const int *win, int nh, int T, const qd_real *tgt,
                          qd_real *x0, qd_real *out) {
    size_t per = (size_t)T * q->cfg.dim;
    double s = 0;
    for (int w = 0; w < nh; w++) {
        q->rc.cursor = 0;
        qd_qsim_embed(q, win + (size_t)w * T, 1, T, x0);
        qd_qsim_forward_blocks(q, x0, out, 1, T);
        s += mse(out, tgt + (size_t)w * per, NULL, per);
    }
    return (float)(s / nh);
}

static int push_sel(qd_mq_result *r, long step, float loss) {
    long *ns = realloc(r->sel_step, sizeof(long) * (size_t)(r->n_sel + 1));
    if (!ns) return QD_ERR;
    r->sel_step = ns;
    float *nl = realloc(r->sel_loss, sizeof(float) * (size_t)(r->n_sel + 1));
    if (!nl) return QD_ERR;
    r->sel_loss = nl;
    r->sel_step[r->n_sel] = step, r->sel_loss[r->n_sel] = loss;
    r->n_sel++;
    return QD_OK;
}

/* Test hook (qd_mq_test_stop_in_select): the held-out pass of this step raises the stop
 * request as it begins, as a SIGTERM arriving there would. */
static long test_stop_select = -1;
void qd_mq_test_stop_in_select(long step) { test_stop_select = step; }

/* One candidate state: its held-out loss joins the record, and it becomes the kept state when
 * strictly better (ties keep the earlier state). */
static int select_state(trainer *t, qd_mq_result *res, long step, qd_err *err) {
    qd_qsim *q = t->q;
    if (step == test_stop_select) qd_stop_request();
    float l = holdout_loss(q, t->hwin, t->nh, t->T, t->htgt, t->x0, t->out);
    if (qd_stop_requested()) return qd_stopped(err); /* l is not a loss */
    res->tokens += (size_t)t->nh * t->T;
    if (push_sel(res, step, l)) return qd_errf(err, "%s: out of memory", __func__);
    if (res->kept_step < 0 || l < res->kept_loss) {
        res->kept_step = step, res->kept_loss = l;
        memcpy(t->best, q->p, sizeof(qd_real) * q->n_params);
    }
    return QD_OK;
}

/* The selection's state in a checkpoint's extra block: kept step, kept loss, n, the n steps,
 * the n losses, the kept parameters, and (pending) one more element, 1: the checkpoint's own
 * state is a candidate whose held-out pass was stopped (a checkpoint without it has none). */
static qd_real *sel_pack(const trainer *t, const qd_mq_result *r, int pending, long *n) {
    size_t np = t->q->n_params;
    *n = 3 + 2 * r->n_sel + (long)np + (pending ? 1 : 0);
    qd_real *x = malloc(sizeof(qd_real) * (size_t)*n);
    if (!x) return NULL;
    x[0] = (qd_real)r->kept_step, x[1] = (qd_real)r->kept_loss, x[2] = (qd_real)r->n_sel;
    for (long i = 0; i < r->n_sel; i++)
        x[3 + i] = (qd_real)r->sel_step[i], x[3 + r->n_sel + i] = r->sel_loss[i];
    memcpy(x + 3 + 2 * r->n_sel, t->best, sizeof(qd_real) * np);
    if (pending) x[*n - 1] = 1;
    return x;
}

static int sel_unpack(trainer *t, qd_mq_result *r, const qd_real *x, long n, int *pending) {
    size_t np = t->q->n_params;
    if (n < 3) return QD_ERR;
    long ns = (long)x[2], base = 3 + 2 * ns + (long)np;
    *pending = ns >= 0 && n == base + 1 && x[n - 1] == 1;
    if (ns < 0 || (n != base && !*pending)) return QD_ERR;
    r->n_sel = 0;
    for (long i = 0; i < ns; i++)
        if (push_sel(r, (long)x[3 + i], (float)x[3 + ns + i])) return QD_ERR;
    r->kept_step = (long)x[0], r->kept_loss = (float)x[1];
    memcpy(t->best, x + 3 + 2 * ns, sizeof(qd_real) * np);
    return QD_OK;
}

/* LRL steps relative to each quantizer's range: the scale moves by lr·|s| (a fraction of itself)
 * and the offset by lr·(2^b - 1) steps (the same fraction of the range), so that one learning
 * rate suits 8- and 16-bit quantizers whose raw scales differ by orders of magnitude. */
static void lrl_lr_scale(const qd_qsim *q, float *f) {
    for (int l = 0; l <= q->cfg.n_layers; l++) {
        int n = l < q->cfg.n_layers ? QD_AQ_PER_LAYER : QD_AQG_COUNT;
        const qd_aq *aq = l < q->cfg.n_layers ? q->L[l].aq : q->aqg;
        for (int k = 0; k < n; k++) {
            size_t i = (size_t)(aq[k].s - q->p);
            f[i] = (float)fabs((double)*aq[k].s);
            f[i + 1] = (float)((1u << aq[k].bits) - 1);
        }
    }
}

/* GPTQ's progress: run k of the λ search (of runs), layer by layer. */
typedef struct gptq_tick {
    const qd_mq_opts *o;
    int k, runs;
    double ph0;
} gptq_tick;

static void gptq_layer_done(void *ctx, int done, int n_layers) {
    const gptq_tick *g = ctx;
    report(g->o, "gptq", (long)g->k * n_layers + done, (long)g->runs * n_layers, NAN, NAN, g->ph0);
}

/* The trainer's state after `done` steps into the checkpoint (with the selection's record;
 * pending: the held-out pass of this state is still to run). */
static int save_state(const trainer *t, const qd_mq_result *res, const qd_adam *a, uint64_t fprint,
                      long done, uint64_t rng_state, int pending, qd_err *err) {
    qd_ckpt ck = {fprint, done, a->total_steps, rng_state, res->loss, res->n_loss, NULL, 0};
    if (t->nh && !(ck.extra = sel_pack(t, res, pending, &ck.n_extra)))
        return qd_errf(err, "%s: out of memory", __func__);
    int rc = qd_ckpt_save(t->o->checkpoint_path, &ck, a, t->q->p, err);
    free(ck.extra);
    return rc;
}

static int train_e2e(trainer *t, qd_mq_result *res, qd_err *err) {
    qd_qsim *q = t->q;
    const qd_mq_opts *o = t->o;
    int T = t->T, B = o->batch;
    size_t per = (size_t)T * t->D;
    int rc = QD_ERR;
    qd_real *targets = t->targets;
    int *perm = malloc(sizeof(int) * (size_t)t->nw);
    float *lrf = malloc(sizeof(float) * q->n_params);
    qd_adam *a = qd_adam_new(q->n_params, q->grp_off, QD_GRP_COUNT, err);
    long cap = 0;
    if (!targets || !perm || !lrf || !a) {
        if (a) qd_errf(err, "%s: out of memory", __func__);
        goto out;
    }
    for (size_t i = 0; i < q->n_params; i++) lrf[i] = 1;
    if (o->lrl_relative) a->lr_scale = lrf;
    long spe = (t->nw + B - 1) / B;
    a->total_steps = spe * o->epochs;
    set_lrs(a, o, 1);
    uint64_t fprint = qd_mq_fingerprint(o, o->fingerprint);
    long start = 0;
    long every = o->select_every > 0 ? o->select_every : spe;
    int pending = 0; /* the checkpoint's state still needs its held-out pass */
    if (o->checkpoint_path) {
        qd_ckpt ck = {0};
        int lr = qd_ckpt_load(o->checkpoint_path, fprint, &ck, a, q->p, err);
        if (lr == QD_ERR) goto out;
        if (lr == QD_OK) {
            start = ck.step;
            free(res->loss);
            res->loss = ck.loss, res->n_loss = ck.n_loss, cap = ck.n_loss;
            res->resumed_at = start;
            int bad = t->nh ? sel_unpack(t, res, ck.extra, ck.n_extra, &pending) : ck.n_extra != 0;
            free(ck.extra);
            if (bad) {
                qd_errf(err, "%s: checkpoint's model-selection state does not match this run",
                        o->checkpoint_path);
                goto out;
            }
        }
    }
    /* the targets came with the first statistics pass (qd_mq_run) */
    if (qd_stop_requested()) {
        qd_stopped(err);
        goto out;
    }
    if (t->nh && start == 0 && select_state(t, res, 0, err)) goto out;
    if (pending && select_state(t, res, start, err)) {
        if (!qd_stop_requested()) goto out;
        res->stopped = 1; /* stopped again: the checkpoint on disk still says pending */
        rc = QD_STOPPED;
        goto out;
    }
    double ph0 = qd_now();
    long cur_epoch = -1;
    uint64_t rng_state = 0;
    for (long step = start; step < a->total_steps; step++) {
        long ep = step / spe, i = step % spe;
        if (ep != cur_epoch) {
            rng_state = epoch_rng(o->seed, ep);
            qd_rng r = {rng_state};
            for (int k = 0; k < t->nw; k++) perm[k] = k;
            qd_rng_shuffle(&r, perm, t->nw);
            cur_epoch = ep;
        }
        int b = (int)(t->nw - i * B < B ? t->nw - i * B : B);
        const int *idx = perm + i * B;
        for (int k = 0; k < b; k++)
            memcpy(t->tok + (size_t)k * T, t->win + (size_t)idx[k] * T, sizeof(int) * (size_t)T);
        gather(targets, idx, b, per, t->tgt);
        qd_qsim_zero_grad(q);
        q->rc.cursor = 0;
        qd_qsim_embed(q, t->tok, b, T, t->x0);
        qd_qsim_forward_blocks(q, t->x0, t->out, b, T);
        double loss = mse(t->out, t->tgt, t->dout, per * (size_t)b);
        qd_qsim_backward_blocks(q, t->dout);
        if (qd_stop_requested()) {
            /* stopped within the step: the parameters are still those after `step` steps */
            if (o->checkpoint_path && step > start &&
                save_state(t, res, a, fprint, step, rng_state, 0, err))
                goto out;
            res->stopped = 1;
            rc = QD_STOPPED;
            goto out;
        }
        double lr = qd_adam_lr(a, QD_GRP_LET);
        if (o->lrl_relative) lrl_lr_scale(q, lrf);
        qd_adam_step(a, q->p, q->g);
        res->projected += qd_qsim_project_ranges(q);
        if (push_loss(res, (float)loss, &cap)) {
            qd_errf(err, "%s: out of memory", __func__);
            goto out;
        }
        res->steps++;
        res->tokens += (size_t)b * T;
        /* a stop within the held-out pass saves the state after this step with its pass
         * pending: the rerun runs the pass first, then goes on */
        if (t->nh && ((step + 1) % every == 0 || step + 1 == a->total_steps) &&
            select_state(t, res, step + 1, err)) {
            if (!qd_stop_requested()) goto out;
            if (o->checkpoint_path && save_state(t, res, a, fprint, step + 1, rng_state, 1, err))
                goto out;
            res->stopped = 1;
            rc = QD_STOPPED;
            goto out;
        }
        report(o, "optimize", step + 1 - start, a->total_steps - start, loss, lr, ph0);
        int stop = qd_stop_requested();
        int due = o->checkpoint_every > 0 && (step + 1) % o->checkpoint_every == 0;
        if (o->checkpoint_path && (stop || due) && step + 1 < a->total_steps &&
            save_state(t, res, a, fprint, step + 1, rng_state, 0, err))
            goto out;
        if (stop && step + 1 < a->total_steps) {
            res->stopped = 1;
            rc = QD_STOPPED;
            goto out;
        }
    }
    /* the finished training, so that a stop in a later phase (GPTQ, evaluation, export)
     * resumes without training again; the pipeline removes it when the run completes */
    if (o->checkpoint_path && (start < a->total_steps || pending) &&
        save_state(t, res, a, fprint, a->total_steps, rng_state, 0, err))
        goto out;
    /* the kept state replaces the last one */
    if (t->nh) memcpy(q->p, t->best, sizeof(qd_real) * q->n_params);
    rc = QD_OK;
out:
    free(perm), free(lrf);
    qd_adam_free(a);
    return rc;
}

/* OmniQuant-style: each block on its own, inputs from the already-quantized blocks below,
 * targets from the FP block on FP inputs. LRL is not trained; ranges are re-measured after. */
static int train_blockwise(trainer *t, qd_mq_result *res, qd_err *err) {
    qd_qsim *q = t->q;
    const qd_mq_opts *o = t->o;
    int T = t->T, B = o->batch, nw = t->nw;
    size_t per = (size_t)T * t->D, all = per * (size_t)nw;
    int rc = QD_ERR;
    qd_real *fp_in = malloc(sizeof(qd_real) * all), *fp_out = malloc(sizeof(qd_real) * all);
    qd_real *q_in = malloc(sizeof(qd_real) * all), *x1 = malloc(sizeof(qd_real) * per);
    int *perm = malloc(sizeof(int) * (size_t)nw);
    qd_adam *a = qd_adam_new(q->n_params, q->grp_off, QD_GRP_COUNT, err);
    long cap = 0;
    if (!fp_in || !fp_out || !q_in || !x1 || !perm || !a) {
        if (a) qd_errf(err, "%s: out of memory", __func__);
        goto out;
    }
    int sl = q->let_on, sa = q->aq_on, sw = q->wq_on;
    for (int w = 0; w < nw; w++) {
        q->let_on = q->aq_on = q->wq_on = 0;
        qd_qsim_embed(q, t->win + (size_t)w * T, 1, T, fp_in + (size_t)w * per);
        q->let_on = sl, q->aq_on = sa, q->wq_on = sw;
        qd_qsim_embed(q, t->win + (size_t)w * T, 1, T, q_in + (size_t)w * per);
    }
    long spe = (nw + B - 1) / B;
    long total_all = spe * o->epochs * q->cfg.n_layers, done = 0;
    double ph0 = qd_now();
    for (int l = 0; l < q->cfg.n_layers; l++) {
        q->let_on = q->aq_on = q->wq_on = 0;
        for (int w = 0; w < nw; w++)
            qd_qsim_layer_forward(q, l, fp_in + (size_t)w * per, fp_out + (size_t)w * per, 1, T);
        q->let_on = sl, q->aq_on = sa, q->wq_on = sw;
        res->tokens += (size_t)nw * T;
        qd_adam_reset(a);
        a->total_steps = spe * o->epochs;
        set_lrs(a, o, 0);
        for (long step = 0; step < a->total_steps; step++) {
            long ep = step / spe, i = step % spe;
            if (i == 0) {
                qd_rng r = {epoch_rng(o->seed + (uint64_t)l * 7919, ep)};
                for (int k = 0; k < nw; k++) perm[k] = k;
                qd_rng_shuffle(&r, perm, nw);
            }
            int b = (int)(nw - i * B < B ? nw - i * B : B);
            gather(q_in, perm + i * B, b, per, t->x0);
            gather(fp_out, perm + i * B, b, per, t->tgt);
            qd_qsim_zero_grad(q);
            q->rc.cursor = 0;
            if (qd_stop_requested()) {
                res->stopped = 1;
                rc = QD_STOPPED;
                goto out;
            }
            qd_qsim_layer_forward(q, l, t->x0, t->out, b, T);
            double loss = mse(t->out, t->tgt, t->dout, per * (size_t)b);
            qd_qsim_layer_backward(q, l, t->dout, NULL);
            double lr = qd_adam_lr(a, QD_GRP_LET);
            qd_adam_step(a, q->p, q->g);
            if (push_loss(res, (float)loss, &cap)) {
                qd_errf(err, "%s: out of memory", __func__);
                goto out;
            }
            res->steps++, done++;
            res->tokens += (size_t)b * T;
            report(o, "optimize", done, total_all, loss, lr, ph0);
        }
        /* inputs of the next block: this block, quantized, on the quantized inputs */
        for (int w = 0; w < nw; w++) {
            qd_qsim_layer_forward(q, l, q_in + (size_t)w * per, x1, 1, T);
            memcpy(q_in + (size_t)w * per, x1, per * sizeof(qd_real));
        }
        qd_real *tmp = fp_in;
        fp_in = fp_out, fp_out = tmp;
    }
    rc = QD_OK;
out:
    free(fp_in), free(fp_out), free(q_in), free(x1), free(perm);
    qd_adam_free(a);
    return rc;
}

/* The statistics pass into a new *st: through the LM head (head) or, for SmoothQuant, which
 * reads only the linears' inputs, through the decoder layers alone. */
static int collect(qd_qsim *q, const int *win, int nw, int T, int head, qd_qstats **st,
                   qd_real *outs, qd_mq_result *res, qd_err *err) {
    *st = qd_qstats_new(&q->cfg);
    if (!*st) return qd_errf(err, "%s: out of memory", __func__);
    res->tokens += (size_t)nw * T;
    return head ? qd_qsim_collect(q, win, nw, T, *st, err)
                : qd_qsim_collect_layers(q, win, nw, T, *st, outs, err);
}

int qd_mq_run(const qd_model *m, const int *calib, size_t n_calib, const qd_mq_opts *o,
              qd_qsim **out, qd_mq_result *res, qd_err *err) {
    *out = NULL;
    memset(res, 0, sizeof *res);
    qd_method method;
    if (qd_method_parse(o->method, &method, err)) return QD_ERR;
    int T = o->seq_len;
    if (T < 2 || T > m->cfg.max_seq_len)
        return qd_errf(err, "seq_len: %d outside [2, %d] (the model's context)", T,
                       m->cfg.max_seq_len);
    if (o->samples < 1 || o->epochs < 0 || o->batch < 1)
        return qd_errf(err, "budget: samples %d, epochs %d, batch %d", o->samples, o->epochs,
                       o->batch);
    size_t avail = n_calib / (size_t)T;
    if (avail < 1)
        return qd_errf(err, "calibration: %zu tokens, fewer than one window of %d", n_calib, T);
    res->kept_step = -1, res->kept_lambda = NAN;
    /* the held-out slice: whole windows at the end of the calibration tokens (a fraction of
     * them, at most an eighth of the budget's samples), never seen by training or GPTQ */
    const int *hold = NULL;
    int nh = 0;
    if (method == QD_METHOD_MOBILEQUANT && o->epochs > 0 && o->holdout > 0) {
        size_t want = (size_t)(o->holdout * (double)n_calib) / (size_t)T, cap = (size_t)o->samples / 8;
        if (cap < 1) cap = 1;
        if (want > cap) want = cap;
        if (want < 1) want = 1;
        if (n_calib >= (want + 1) * (size_t)T) {
            nh = (int)want;
            n_calib -= (size_t)nh * T;
            hold = calib + n_calib;
            avail = n_calib / (size_t)T;
        }
    }
    res->holdout_windows = nh;
    int nw = (int)(avail < (size_t)o->samples ? avail : (size_t)o->samples);
    const int *win = calib;
    int *own = NULL;
    if (o->overlap && avail < (size_t)o->samples) {
        /* short data: the budget's samples as overlapping windows at evenly spaced offsets,
         * starts at least T/8 tokens apart, instead of only the few disjoint windows */
        size_t span = n_calib - (size_t)T, stride = T / 8 > 0 ? (size_t)T / 8 : 1;
        size_t most = 1 + span / stride;
        nw = (int)(most < (size_t)o->samples ? most : (size_t)o->samples);
        if (nw > (int)avail) {
            own = malloc(sizeof(int) * (size_t)nw * T);
            if (!own) return qd_errf(err, "%s: out of memory", __func__);
            for (int i = 0; i < nw; i++) {
                size_t off = (size_t)((double)i * (double)span / (nw - 1));
                memcpy(own + (size_t)i * T, calib + off, sizeof(int) * (size_t)T);
            }
            win = own;
        } else {
            nw = (int)avail;
        }
    }
    res->windows = nw;
    int B = o->batch < nw ? o->batch : nw;
    int training = method == QD_METHOD_OMNIQUANT || method == QD_METHOD_MOBILEQUANT;

    qd_qsim_opts so;
    qd_qsim_defaults(&so);
    so.wbits = o->wbits, so.wgran = o->wgran;
    memcpy(so.abits, o->abits, sizeof so.abits);
    so.Bmax = B, so.Tmax = T, so.train = training;
    so.recompute = training && o->recompute;
    qd_qsim *q = qd_qsim_new(m, &so, err);
    if (!q) return QD_ERR;
    qd_qstats *st = NULL;
    trainer tr = {0};
    int rc = QD_ERR;
    double ph0 = qd_now();

    /* 1. statistics with identity LET -> SmoothQuant scales (not for RTN, which has no LET:
     * its ranges come from the one pass below, on the same untransformed model) */
    int rtn = method == QD_METHOD_RTN;
    const qd_qstats *shared = method == QD_METHOD_SMOOTHQUANT && o->share_stats ? *o->share_stats
                                                                                : NULL;
    int passes = rtn || shared ? 1 : 2;
    report(o, "calibrate", 0, passes, NAN, NAN, ph0);
    q->let_on = 0;
    if (shared) { /* the RTN baseline's pass over the same windows */
        q->let_on = 1;
        qd_qsim_smoothquant(q, shared, o->alpha);
    } else if (!rtn) {
        /* MobileQuant's end-to-end targets are this pass's outputs (LET and quantizers off) */
        if (method == QD_METHOD_MOBILEQUANT && o->epochs > 0) {
            tr.targets = malloc(sizeof(qd_real) * (size_t)nw * T * m->cfg.dim);
            if (!tr.targets) {
                qd_errf(err, "%s: out of memory", __func__);
                goto out;
            }
        }
        if (collect(q, win, nw, T, 0, &st, tr.targets, res, err)) goto out;
        q->let_on = 1;
        qd_qsim_smoothquant(q, st, o->alpha);
        qd_qstats_free(st);
        st = NULL;
        report(o, "calibrate", 1, passes, NAN, NAN, ph0);
    }
    /* 2. activation ranges of the smoothed model */
    if (collect(q, win, nw, T, 1, &st, NULL, res, err)) goto out;
    qd_qsim_init_ranges(q, st);
    if (training && o->lwc_grid > 0) qd_qsim_search_lwc(q, st, o->lwc_grid, o->lwc_rmin);
    if (rtn && o->share_stats && !*o->share_stats) *o->share_stats = st; /* the caller's now */
    else qd_qstats_free(st);
    st = NULL;
    if (qd_stop_requested()) {
        qd_stopped(err);
        goto out;
    }
    report(o, "calibrate", passes, passes, NAN, NAN, ph0);
    q->lwc_on = training;

    /* 3. training */
    if (training && o->epochs > 0) {
        tr.q = q, tr.o = o, tr.win = win, tr.nw = nw, tr.T = T, tr.D = m->cfg.dim;
        size_t bs = (size_t)B * T * m->cfg.dim;
        tr.x0 = malloc(sizeof(qd_real) * bs), tr.out = malloc(sizeof(qd_real) * bs);
        tr.tgt = malloc(sizeof(qd_real) * bs), tr.dout = malloc(sizeof(qd_real) * bs);
        tr.tok = malloc(sizeof(int) * (size_t)B * T);
        if (!tr.x0 || !tr.out || !tr.tgt || !tr.dout || !tr.tok) {
            qd_errf(err, "%s: out of memory", __func__);
            goto out;
        }
        if (nh) {
            tr.hwin = hold, tr.nh = nh;
            tr.htgt = malloc(sizeof(qd_real) * (size_t)nh * T * m->cfg.dim);
            tr.best = malloc(sizeof(qd_real) * q->n_params);
            if (!tr.htgt || !tr.best) {
                qd_errf(err, "%s: out of memory", __func__);
                goto out;
            }
            fp_targets(q, hold, nh, T, tr.x0, tr.htgt);
            res->tokens += (size_t)nh * T;
        }
        qd_mq_opts ob = *o;
        ob.batch = B;
        tr.o = &ob;
        int r = method == QD_METHOD_MOBILEQUANT ? train_e2e(&tr, res, err) : train_blockwise(&tr, res, err);
        if (r != QD_OK) {
            rc = r;
            goto out;
        }
        if (method == QD_METHOD_OMNIQUANT) {
            /* block-wise training moved the LET scales: re-measure the static ranges */
            if (collect(q, win, nw, T, 1, &st, NULL, res, err)) goto out;
            qd_qsim_init_ranges(q, st);
        }
    }

    /* 4. an evaluation simulation (no saved activations, wider batch) with the same params */
    so.train = 0;
    so.Bmax = o->eval_batch > 0 ? o->eval_batch : 1;
    qd_qsim *ev = qd_qsim_new(m, &so, err);
    if (!ev) goto out;
    memcpy(ev->p, q->p, sizeof(qd_real) * q->n_params);
    ev->let_on = q->let_on, ev->lwc_on = q->lwc_on;
    /* the training simulation (every layer's saved activations) is done with: not alive
     * during GPTQ, the run's largest phase at scale */
    qd_qsim_free(q);
    q = NULL;
    free(tr.tgt), free(tr.dout), free(tr.best), free(tr.targets);
    tr.tgt = tr.dout = NULL, tr.best = NULL, tr.targets = NULL;
    /* 5. the final integers: error-compensating rounding onto the trained grids */
    if (o->gptq > 0 || (o->gptq < 0 && method == QD_METHOD_MOBILEQUANT)) {
        qd_gptq_opts go;
        qd_gptq_defaults(&go);
        /* FP target only at W4: at W8 the rounding error is small and fitting the activation
         * error on calibration windows cost perplexity on stories260K (+1.41% vs +0.71%) */
        go.fp_target = o->wbits < 8;
        /* the FP target's ridge λ: the one whose rounding gives the lowest held-out loss */
        static const double lambdas[] = {0.05, 0.1, 0.2, 0.5, 1, 2};
        int nl = go.fp_target && tr.nh ? (int)(sizeof lambdas / sizeof *lambdas) : 0;
        int best = -1, runs = nl ? nl : 1;
        /* the best run's integers, kept as they come instead of rerunning GPTQ at its λ */
        unsigned char *kept = nl ? malloc(qd_qsim_wfix_bytes(ev)) : NULL;
        if (nl && !kept) {
            qd_errf(err, "%s: out of memory", __func__);
            qd_qsim_free(ev);
            goto out;
        }
        gptq_tick gt = {o, 0, runs, ph0};
        go.layer_done = gptq_layer_done, go.layer_ctx = &gt;
        for (int k = 0; k < runs; k++) {
            if (nl) go.target_damp = lambdas[k];
            for (int l = 0; l < m->cfg.n_layers; l++)
                for (int w = 0; w < QD_W_PER_LAYER; w++) qd_qsim_set_wfix(ev, l, w, NULL);
            gt.k = k;
            report(o, "gptq", (long)k * m->cfg.n_layers, (long)runs * m->cfg.n_layers, NAN, NAN,
                   ph0);
            if (qd_gptq_qsim(ev, win, nw, T, &go, err)) {
                free(kept);
                qd_qsim_free(ev);
                goto out;
            }
            /* the calibration passes, twice with the FP stream */
            res->tokens += (size_t)nw * T * 4 * (size_t)m->cfg.n_layers * (go.fp_target ? 2 : 1);
            if (!nl) break;
            float l = holdout_loss(ev, tr.hwin, tr.nh, T, tr.htgt, tr.x0, tr.out);
            res->tokens += (size_t)tr.nh * T;
            res->lambda[k] = lambdas[k], res->lambda_loss[k] = l;
            res->n_lambda = k + 1;
            if (best < 0 || l < res->lambda_loss[best]) {
                best = k;
                if (k < nl - 1) qd_qsim_wfix_save(ev, kept); /* the last run stays in place */
            }
        }
        if (nl && best != nl - 1) qd_qsim_wfix_restore(ev, kept);
        free(kept);
        if (nl) res->kept_lambda = lambdas[best];
        else if (go.fp_target) res->kept_lambda = go.target_damp;
    }
    *out = ev;
    rc = QD_OK;
out:
    qd_qstats_free(st);
    free(own);
    free(tr.x0), free(tr.out), free(tr.tgt), free(tr.dout), free(tr.tok);
    free(tr.htgt), free(tr.best), free(tr.targets);
    qd_qsim_free(q);
    return qd_stop_status(rc);
}
