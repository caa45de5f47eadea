/* Validation at the door: what `quantd quantize` checks before any work (qd_quantize_check:
 * the settings, the model's headers, its tokenizer, the data), run for a job spec that the
 * server is about to accept. The server runs no numeric code itself, so it asks a short-lived
 * child, `quantd work --check DIR`, through wk_check_spec; the child (wk_check_dir) lays the
 * inputs out in DIR under the names of the spec's fields (model, model/<file>, calibration,
 * eval, tokenizer) and works from there, so that its messages name the user's inputs and files,
 * never a server path. */
#ifndef QD_WORKER_CHECK_H
#define QD_WORKER_CHECK_H

#include <stddef.h>

#include "api/api.h"
#include "base/err.h"
#include "worker/worker.h"

/* Checks spec against the inputs in data directory datadir (blobs under blobs/sha256, or the
 * pending ones) by running `exe work --check` for at most timeout_s in a scratch directory
 * under datadir/jobs/.tmp (removed again); mem_limit > 0 also refuses a run whose estimated
 * address space exceeds it (code over_memory_limit, field budget). 0 when the job can run; 1
 * when it cannot, with fe naming the field and saying why (field "" when no spec field fits);
 * QD_ERR when the check itself could not run or answer (err says why). */
int wk_check_spec(const char *exe, const char *datadir, const api_spec *spec,
                  const wk_pending *pending, int n_pending, size_t mem_limit, double timeout_s,
                  api_field_err *fe, qd_err *err);

/* The child's side, `quantd work --check DIR`: reads DIR/input.json (written by wk_check_spec),
 * lays the inputs out in DIR, runs qd_quantize_check there and prints one JSON line on stdout:
 * {"ok":true} or {"ok":false,"field":...,"message":...}. Returns the exit status: 0 accepted,
 * 1 refused, 2 unreadable input. */
int wk_check_dir(const char *dir);

#endif
