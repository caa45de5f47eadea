/* The one table of limits and enumerations a job's settings obey, wherever they come from: the
 * HTTP API's job specs (api/), the command line (cli/) and the pipeline itself (quant/). Here,
 * in base/, because api/ and server/ may not include quant/. A bound changed here changes all
 * three; the server's config may only lower some of them (threads). */
#ifndef QD_BASE_LIMITS_H
#define QD_BASE_LIMITS_H

#include <stdbool.h>

#include "base/err.h"

/* ---- methods ---- */

typedef enum qd_method {
    QD_METHOD_RTN,
    QD_METHOD_SMOOTHQUANT,
    QD_METHOD_OMNIQUANT,
    QD_METHOD_MOBILEQUANT,
    QD_METHOD_COUNT
} qd_method;

#define QD_METHOD_DEFAULT QD_METHOD_MOBILEQUANT
/* The names as a reader sees them in a message: "rtn, smoothquant, omniquant, mobilequant". */
#define QD_METHOD_NAMES "rtn, smoothquant, omniquant, mobilequant"

/* "rtn", "smoothquant", "omniquant", "mobilequant"; "?" past the end. Static storage. */
const char *qd_method_name(qd_method m);
/* Parses a name as qd_method_name prints it; QD_ERR with err set ("method: unknown 'x' (rtn,
 * ...)") on anything else, NULL included. */
int qd_method_parse(const char *name, qd_method *out, qd_err *err);

/* ---- bit widths ---- */

#define QD_WBITS_DEFAULT 8
#define QD_WBITS_NAMES "4, 8"
bool qd_wbits_ok(int bits); /* 4 or 8 */

/* Activation bits a class may be given: 4, 8 or 16 (0 in a table: the bit map's default). */
#define QD_ABITS_NAMES "4, 8, 16"
bool qd_abits_ok(int bits);

/* Activation classes: the quantizers that share one bit width, in the order of enum qd_aclass
 * (quant/sim/fakequant.h), which is the index of every abits table. */
#define QD_N_ACLASS 13
#define QD_ACLASS_NAMES "res, norm, qkv, qk_in, score, prob, pv, oproj, gateup, silu, " \
                        "down_in, down_out, head"
/* "res", "norm", ...; NULL past the end. Static storage. */
const char *qd_aclass_name(int aclass);
/* Index of a class name, or -1 when unknown. */
int qd_aclass_parse(const char *name);

/* ---- budget and run ---- */

#define QD_SAMPLES_MIN 1
#define QD_SAMPLES_MAX 100000
#define QD_SAMPLES_DEFAULT 64
#define QD_SEQ_LEN_MIN 2
#define QD_SEQ_LEN_MAX 8192
#define QD_SEQ_LEN_DEFAULT 256
#define QD_EPOCHS_MIN 0
#define QD_EPOCHS_MAX 1000
#define QD_EPOCHS_DEFAULT 10
#define QD_THREADS_MIN 1
#define QD_THREADS_MAX 256
#define QD_BATCH_MAX 4096
#define QD_EVAL_SPLIT_DEFAULT 0.5
#define QD_EVAL_SPLIT_MAX 0.95 /* held-out fraction; > 0 */
/* Optimizer steps between checkpoints, for `quantd quantize` and for jobs alike (0: only when
 * stopped). */
#define QD_CHECKPOINT_EVERY_DEFAULT 20
#define QD_CHECKPOINT_EVERY_MAX (1 << 30)

/* ---- AIMET encodings.json format ---- */

#define QD_ENC_VERSION_DEFAULT "1.0.0"
#define QD_ENC_VERSION_NAMES "1.0.0, 0.6.1"
bool qd_enc_version_ok(const char *v);

#endif
