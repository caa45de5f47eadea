/* Config file parsing. The format is deliberately tiny (key = value) so that a systemd unit
 * or a container can template it without a YAML library. */
#include "server/config.h"

#include "base/str.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void srv_config_defaults(srv_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:8080");
    snprintf(c->data_dir, sizeof c->data_dir, "./var");
    c->workers = 1;
    c->max_upload_bytes = (size_t)16 << 30;
    c->min_free_bytes = (size_t)256 << 20;
    c->max_queue = 1000;
    c->worker_mem_bytes = (size_t)32 << 30;
    c->worker_mem_check = 1;
    c->worker_max_threads = 64;
    c->job_threads = 0;
    c->max_timeout_s = 7 * 24 * 3600;
    c->cancel_grace_s = 10;
    c->max_attempts = 3;
    c->max_connections = 512;
    c->per_ip_connections = 256; /* half of max_connections: a busy NAT or CI farm fits */
    c->conn_timeout_s = 120;
    snprintf(c->dispatcher, sizeof c->dispatcher, "local");
    c->slurm_poll_s = 5;
    c->slurm_pending_down_s = 600;
    c->header_timeout_s = 15;
    c->body_min_rate = 8 << 10;
    c->body_grace_s = 10;
}

static int parse_seconds(const char *v, double lo, double hi, double *out) {
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end || !(d >= lo && d <= hi)) return -1;
    *out = d;
    return 0;
}

static int parse_int(const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi) return -1;
    *out = (int)n;
    return 0;
}

static int set_str(char *dst, size_t n, const char *v) {
    if (strlen(v) >= n) return -1;
    snprintf(dst, n, "%s", v);
    return 0;
}

int srv_config_set(srv_config *c, const char *k, const char *v, qd_err *err) {
    int bad = 0;
    if (!strcmp(k, "listen")) bad = set_str(c->listen, sizeof c->listen, v);
    else if (!strcmp(k, "data_dir") || !strcmp(k, "data")) bad = set_str(c->data_dir, sizeof c->data_dir, v);
    else if (!strcmp(k, "workers")) bad = parse_int(v, 1, 1024, &c->workers);
    else if (!strcmp(k, "token_file")) bad = set_str(c->token_file, sizeof c->token_file, v);
    else if (!strcmp(k, "max_upload_bytes")) bad = qd_parse_size(v, &c->max_upload_bytes);
    else if (!strcmp(k, "min_free_bytes")) bad = qd_parse_size(v, &c->min_free_bytes);
    else if (!strcmp(k, "max_queue")) bad = parse_int(v, 1, 1000000, &c->max_queue);
    else if (!strcmp(k, "worker_mem_bytes")) bad = qd_parse_size(v, &c->worker_mem_bytes);
    else if (!strcmp(k, "worker_mem_check")) bad = parse_int(v, 0, 1, &c->worker_mem_check);
    else if (!strcmp(k, "worker_max_threads")) bad = parse_int(v, 1, 256, &c->worker_max_threads);
    else if (!strcmp(k, "job_threads")) bad = parse_int(v, 0, 256, &c->job_threads);
    else if (!strcmp(k, "max_timeout_s")) bad = parse_int(v, 1, 7 * 24 * 3600, &c->max_timeout_s);
    else if (!strcmp(k, "cancel_grace_s")) {
        char *end;
        c->cancel_grace_s = strtod(v, &end);
        bad = end == v || *end || c->cancel_grace_s < 0 || c->cancel_grace_s > 3600;
    } else if (!strcmp(k, "max_attempts")) bad = parse_int(v, 1, 100, &c->max_attempts);
    else if (!strcmp(k, "max_connections")) bad = parse_int(v, 1, 100000, &c->max_connections);
    else if (!strcmp(k, "per_ip_connections")) bad = parse_int(v, 0, 100000, &c->per_ip_connections);
    else if (!strcmp(k, "conn_timeout_s")) bad = parse_int(v, 0, 86400, &c->conn_timeout_s);
    else if (!strcmp(k, "header_timeout_s")) bad = parse_int(v, 0, 3600, &c->header_timeout_s);
    else if (!strcmp(k, "body_min_rate")) bad = qd_parse_size(v, &c->body_min_rate);
    else if (!strcmp(k, "body_grace_s")) bad = parse_int(v, 0, 3600, &c->body_grace_s);
    else if (!strcmp(k, "trusted_proxies")) bad = set_str(c->trusted_proxies, sizeof c->trusted_proxies, v);
    else if (!strcmp(k, "static_dir")) bad = set_str(c->static_dir, sizeof c->static_dir, v);
    else if (!strcmp(k, "dispatcher")) {
        if (strcmp(v, "local") && strcmp(v, "slurm"))
            return qd_errf(err, "bad value '%s' for dispatcher: local or slurm", v);
        bad = set_str(c->dispatcher, sizeof c->dispatcher, v);
    } else if (!strcmp(k, "slurm_partition")) bad = set_str(c->slurm_partition, sizeof c->slurm_partition, v);
    else if (!strcmp(k, "slurm_account")) bad = set_str(c->slurm_account, sizeof c->slurm_account, v);
    else if (!strcmp(k, "slurm_qos")) bad = set_str(c->slurm_qos, sizeof c->slurm_qos, v);
    else if (!strcmp(k, "slurm_sbatch_args")) bad = set_str(c->slurm_sbatch_args, sizeof c->slurm_sbatch_args, v);
    else if (!strcmp(k, "slurm_template")) bad = set_str(c->slurm_template, sizeof c->slurm_template, v);
    else if (!strcmp(k, "slurm_quantd")) bad = set_str(c->slurm_quantd, sizeof c->slurm_quantd, v);
    else if (!strcmp(k, "slurm_poll_s")) bad = parse_seconds(v, 0.1, 3600, &c->slurm_poll_s);
    else if (!strcmp(k, "slurm_pending_down_s")) bad = parse_seconds(v, 0, 30 * 86400, &c->slurm_pending_down_s);
    else return qd_errf(err, "unknown setting '%s'", k);
    /* the value is cut so that a long one cannot push the key out of the message */
    if (bad) return qd_errf(err, "bad value '%.120s%s' for %s", v, strlen(v) > 120 ? "..." : "", k);
    return QD_OK;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

int srv_config_load(srv_config *c, const char *path, qd_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) return qd_errf(err, "%s: %s", path, strerror(errno));
    char line[2048];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            fclose(f);
            return qd_errf(err, "%s:%d: expected key = value", path, ln);
        }
        *eq = 0;
        char *k = trim(s), *v = trim(eq + 1);
        qd_err e2;
        if (srv_config_set(c, k, v, &e2)) {
            fclose(f);
            return qd_errf(err, "%s:%d: %s", path, ln, e2.msg);
        }
    }
    fclose(f);
    return QD_OK;
}
