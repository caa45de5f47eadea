/* quantd serve: the HTTP service. Settings come from defaults, then --config FILE, then the
 * flags, so a systemd unit can keep a config file and still override the port. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "server/auth.h"
#include "base/hash.h"
#include "server/config.h"
#include "server/server.h"

enum { O_CONFIG = CLI_KEY, O_LISTEN, O_DATA, O_WORKERS, O_TOKENS, O_SET, O_GEN_TOKEN };

static const cli_opt opts[] = {
    {"config", O_CONFIG, "FILE", "key = value settings (see deploy/quantd.conf); read first,\n"
                                 "wherever it appears, so flags win over it"},
    {"listen", O_LISTEN, "ADDR:PORT", "default 127.0.0.1:8080; port 0 picks a free port"},
    {"data", O_DATA, "DIR", "data directory, default ./var"},
    {"workers", O_WORKERS, "N", "concurrent worker processes, default 1"},
    {"tokens", O_TOKENS, "FILE", "bearer-token file (required unless the address is loopback)"},
    {"set", O_SET, "KEY=VALUE", "any config setting, e.g. --set cancel_grace_s=2 (repeatable)"},
    {"gen-token", O_GEN_TOKEN, "ROLE", "print a new token (read, submit or admin) and its\n"
                                       "token-file line, then exit"},
    {0}};

/* A fresh random token: the caller keeps the token, the server keeps only its hash. */
static int gen_token(const char *role) {
    if (strcmp(role, "read") && strcmp(role, "submit") && strcmp(role, "admin")) {
        fprintf(stderr, "quantd serve: role must be read, submit or admin\n");
        return 2;
    }
    unsigned char raw[24];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(raw, 1, sizeof raw, f) != sizeof raw) {
        fprintf(stderr, "quantd serve: cannot read /dev/urandom\n");
        if (f) fclose(f);
        return 1;
    }
    fclose(f);
    char tok[64] = "qd_";
    for (size_t i = 0; i < sizeof raw; i++) snprintf(tok + 3 + 2 * i, 3, "%02x", raw[i]);
    char hex[65];
    qd_sha256_hex(tok, strlen(tok), hex);
    fprintf(stderr, "token (give to the client; it is not stored): %s\n", tok);
    printf("sha256:%s %s\n", hex, role);
    return 0;
}

/* A flag that sets one config key, kept in command-line order until the config file is in. */
typedef struct {
    const char *key; /* config key, or NULL for --set KEY=VALUE */
    const char *val;
} setting;

int cmd_serve(int argc, char **argv) {
    srv_config c;
    srv_config_defaults(&c);
    qd_err err;
    cli_args a;
    cli_args_init(&a, "quantd serve", "[--config FILE] [--listen ADDR:PORT] [--data DIR] "
                  "[--workers N]\n                    [--tokens FILE] [--set KEY=VALUE]...\n"
                  "       quantd serve --gen-token read|submit|admin", opts, argc, argv);
    setting set[CLI_MAX_OPTS * 4];
    int n_set = 0;
    const char *config = NULL;
    for (int k; (k = cli_next(&a)) != CLI_END;) {
        const char *key = NULL;
        switch (k) {
        case CLI_HELP: cli_help(&a); return 0;
        case O_GEN_TOKEN: return gen_token(a.val);
        case O_CONFIG: config = a.val; continue;
        case O_LISTEN: key = "listen"; break;
        case O_DATA: key = "data_dir"; break;
        case O_WORKERS: key = "workers"; break;
        case O_TOKENS: key = "token_file"; break;
        case O_SET:
            if (!strchr(a.val, '=') || a.val[0] == '=') {
                cli_fail(&a, "'%s' is not KEY=VALUE", a.val);
                return 2;
            }
            break;
        default: return 2;
        }
        if (n_set == (int)(sizeof set / sizeof set[0])) {
            cli_fail(&a, "too many settings");
            return 2;
        }
        set[n_set++] = (setting){key, a.val};
    }
    if (a.optind < argc) {
        cli_fail(&a, "unexpected operand '%s'", argv[a.optind]);
        return 2;
    }
    if (config && srv_config_load(&c, config, &err)) {
        fprintf(stderr, "quantd serve: %s\n", err.msg);
        return 2;
    }
    for (int i = 0; i < n_set; i++) {
        const char *key = set[i].key, *v = set[i].val;
        char kbuf[64];
        if (!key) {
            const char *eq = strchr(v, '=');
            snprintf(kbuf, sizeof kbuf, "%.*s", (int)(eq - v), v);
            key = kbuf;
            v = eq + 1;
        }
        if (srv_config_set(&c, key, v, &err)) {
            fprintf(stderr, "quantd serve: %s\n", err.msg);
            return 2;
        }
    }
    return srv_main(&c);
}
