/* The Slurm dispatcher's functions behind worker/dispatch.h (private to worker/dispatch*.c). */
#ifndef QD_WORKER_DISPATCH_SLURM_H
#define QD_WORKER_DISPATCH_SLURM_H

#include "worker/dispatch.h"

typedef struct wk_slurm wk_slurm;

wk_slurm *wk_slurm_new(const wk_slurm_opts *o, const char *exe, size_t mem_limit, qd_err *err);
void wk_slurm_free(wk_slurm *s);
void wk_slurm_describe(const wk_slurm *s, char *out, size_t n);
int wk_slurm_start(wk_slurm *s, wk_task *t, const wk_start *st, qd_err *err);
wk_status wk_slurm_poll(wk_slurm *s, wk_task *t, wk_line_fn on_line, void *ctx, wk_end *end);
/* kill false: SIGTERM to the worker (a pending job is cancelled outright); true: scancel. */
void wk_slurm_signal(wk_slurm *s, wk_task *t, bool kill);
void wk_slurm_refresh(wk_slurm *s);
bool wk_slurm_reattach(wk_slurm *s, wk_task *t);

/* Splits buf into whole lines for on_line, keeping a partial line in t (dispatch.c). */
void wk_task_feed(wk_task *t, const char *buf, size_t k, wk_line_fn on_line, void *ctx);

#endif
