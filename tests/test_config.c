/* quantd serve's settings (server/config.c): the dispatcher and its Slurm keys from a real
 * config file and from --set, and the errors a bad value gets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/config.h"
#include "tests/check.h"

static void test_defaults_are_local(void) {
    srv_config c;
    srv_config_defaults(&c);
    CHECK(!strcmp(c.dispatcher, "local"), "default dispatcher '%s'", c.dispatcher);
    CHECK(c.slurm_poll_s > 0 && c.slurm_pending_down_s > 0, "poll %g, pending %g", c.slurm_poll_s,
          c.slurm_pending_down_s);
    CHECK(!c.slurm_partition[0] && !c.slurm_template[0] && !c.slurm_quantd[0], "Slurm settings empty");
}

static void test_slurm_file(void) {
    char path[] = "/tmp/quantd-test-config.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    const char *text = "# a Slurm set-up\n"
                       "dispatcher = slurm\n"
                       "slurm_partition = gpu\n"
                       "slurm_account = ml\n"
                       "slurm_qos = high\n"
                       "slurm_sbatch_args = --constraint=avx512 --exclusive\n"
                       "slurm_template = /etc/quantd/quantd.sbatch\n"
                       "slurm_quantd = /opt/quantd/bin/quantd\n"
                       "slurm_poll_s = 2.5\n"
                       "slurm_pending_down_s = 30\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "write");
    close(fd);
    srv_config c;
    srv_config_defaults(&c);
    qd_err err;
    CHECK(srv_config_load(&c, path, &err) == QD_OK, "load: %s", err.msg);
    unlink(path);
    CHECK(!strcmp(c.dispatcher, "slurm") && !strcmp(c.slurm_partition, "gpu") &&
              !strcmp(c.slurm_account, "ml") && !strcmp(c.slurm_qos, "high"),
          "dispatcher %s partition %s account %s qos %s", c.dispatcher, c.slurm_partition,
          c.slurm_account, c.slurm_qos);
    CHECK(!strcmp(c.slurm_sbatch_args, "--constraint=avx512 --exclusive"), "args '%s'", c.slurm_sbatch_args);
    CHECK(!strcmp(c.slurm_template, "/etc/quantd/quantd.sbatch") &&
              !strcmp(c.slurm_quantd, "/opt/quantd/bin/quantd"),
          "template %s quantd %s", c.slurm_template, c.slurm_quantd);
    CHECK(c.slurm_poll_s == 2.5 && c.slurm_pending_down_s == 30, "poll %g pending %g", c.slurm_poll_s,
          c.slurm_pending_down_s);
}

static void test_bad_values(void) {
    srv_config c;
    srv_config_defaults(&c);
    qd_err err;
    CHECK(srv_config_set(&c, "dispatcher", "pbs", &err) == QD_ERR &&
              strstr(err.msg, "dispatcher") && strstr(err.msg, "local or slurm"),
          "unknown dispatcher: '%s'", err.msg);
    CHECK(!strcmp(c.dispatcher, "local"), "a refused value changes nothing");
    CHECK(srv_config_set(&c, "slurm_poll_s", "0", &err) == QD_ERR && strstr(err.msg, "slurm_poll_s"),
          "poll 0: '%s'", err.msg);
    CHECK(srv_config_set(&c, "slurm_poll_s", "x", &err) == QD_ERR, "poll x");
    CHECK(srv_config_set(&c, "slurm_pending_down_s", "-1", &err) == QD_ERR, "pending -1");
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK(srv_config_set(&c, "slurm_sbatch_args", big, &err) == QD_ERR && strstr(err.msg, "slurm_sbatch_args"),
          "too long: '%s'", err.msg);
    CHECK(srv_config_set(&c, "slurm_partiton", "gpu", &err) == QD_ERR && strstr(err.msg, "slurm_partiton"),
          "a misspelt key is named: '%s'", err.msg);
}

int main(void) {
    RUN(test_defaults_are_local);
    RUN(test_slurm_file);
    RUN(test_bad_values);
    return CHECK_DONE();
}
