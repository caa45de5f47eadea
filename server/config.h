/* Settings of `quantd serve`: defaults, a `key = value` config file, then command-line flags,
 * later sources overriding earlier ones. */
#ifndef QD_SRV_CONFIG_H
#define QD_SRV_CONFIG_H

#include <stddef.h>

#include "base/err.h"

typedef struct srv_config {
    char listen[128];        /* ADDR:PORT, [v6addr]:PORT; port 0 picks a free one */
    char data_dir[1024];
    int workers;             /* concurrent worker processes */
    char token_file[1024];   /* empty: no auth (refused unless the listener is loopback) */
    size_t max_upload_bytes; /* one blob */
    size_t min_free_bytes;   /* uploads are refused (507) when the disk would drop below */
    int max_queue;           /* queued jobs before POST /v1/jobs answers 429 */
    size_t worker_mem_bytes; /* RLIMIT_AS per worker (Slurm: --mem), 0 for none */
    int worker_mem_check;    /* refuse at submit (422, field budget) a job whose estimated
                                address space (quant/estimate.h) exceeds worker_mem_bytes */
    int worker_max_threads;  /* a spec may ask for at most this many */
    int job_threads;         /* a spec's threads when it names none; 0: the server's CPUs (its
                                affinity mask) over workers with local workers, 1 on Slurm */
    int max_timeout_s;       /* a spec's timeout_s is capped to this */
    double cancel_grace_s;   /* SIGTERM -> SIGKILL */
    int max_attempts;        /* attempts of one job whose worker was killed from outside (a
                                signal quantd did not send, e.g. the OOM killer's SIGKILL),
                                stopped by someone else's SIGTERM, or lost by Slurm, before the
                                job fails; each retry resumes from the job's checkpoint */
    int max_connections;
    int per_ip_connections;
    int conn_timeout_s;      /* idle connection timeout (libmicrohttpd's; each byte resets it) */
    int header_timeout_s;    /* a request's headers within this of the connection opening or of
                                its previous response: a deadline bytes do not reset; 0: none */
    size_t body_min_rate;    /* bytes/s a body must average after body_grace_s; 0: no minimum */
    int body_grace_s;
    char trusted_proxies[512]; /* "ADDR[/BITS],...": peers whose X-Forwarded-For names the client */
    char static_dir[1024];   /* dashboard files served under /, empty for the built-in page */
    /* where workers run (worker/dispatch.h): "local" (child processes) or "slurm" */
    char dispatcher[16];
    char slurm_partition[128];  /* sbatch --partition; empty: the cluster's default */
    char slurm_account[128];    /* --account */
    char slurm_qos[128];        /* --qos */
    char slurm_sbatch_args[1024]; /* more sbatch arguments, blank-separated, after quantd's own */
    char slurm_template[1024];  /* batch script; empty: the built-in deploy/quantd.sbatch */
    char slurm_quantd[1024];    /* quantd's path on the compute nodes; empty: this binary's */
    double slurm_poll_s;        /* squeue at most this often */
    double slurm_pending_down_s; /* a job pending on down/drained nodes fails after this long */
} srv_config;

void srv_config_defaults(srv_config *c);

/* Reads a config file of `key = value` lines (# comments). QD_OK, or QD_ERR naming the line. */
int srv_config_load(srv_config *c, const char *path, qd_err *err);

/* Sets one key from text (the keys are the field names above, sizes in bytes with an optional
 * K/M/G suffix). QD_OK or QD_ERR. */
int srv_config_set(srv_config *c, const char *key, const char *value, qd_err *err);

#endif
