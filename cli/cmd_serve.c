/* quantd serve: the HTTP service. Settings come from defaults, then --config FILE, then the
 * flags, so a systemd unit can keep a config file and still override the port. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/server.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: quantd serve [--config FILE] [--listen ADDR:PORT] [--data DIR] [--workers N]\n"
            "                    [--tokens FILE] [--set KEY=VALUE]...\n"
            "       quantd serve --gen-token ROLE    (prints a new token and its token-file line)\n"
            "\n"
            "  --config FILE       key = value settings (see deploy/quantd.conf)\n"
            "  --listen ADDR:PORT  default 127.0.0.1:8080; port 0 picks a free port\n"
            "  --data DIR          data directory, default ./var\n"
            "  --workers N         concurrent worker processes, default 1\n"
            "  --tokens FILE       bearer-token file (required unless the address is loopback)\n"
            "  --set KEY=VALUE     any config setting, e.g. --set cancel_grace_s=2\n");
}

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
    srv_sha256_hex(tok, strlen(tok), hex);
    fprintf(stderr, "token (give to the client; it is not stored): %s\n", tok);
    printf("sha256:%s %s\n", hex, role);
    return 0;
}

int cmd_serve(int argc, char **argv) {
    srv_config c;
    srv_config_defaults(&c);
    qd_err err;
    /* the config file first, wherever --config appears, so flags always win */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            if (srv_config_load(&c, argv[i + 1], &err)) {
                fprintf(stderr, "quantd serve: %s\n", err.msg);
                return 2;
            }
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *key = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--gen-token")) {
            if (i + 1 >= argc) {
                usage(stderr);
                return 2;
            }
            return gen_token(argv[i + 1]);
        }
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strcmp(a, "--listen")) key = "listen";
        else if (!strcmp(a, "--data")) key = "data_dir";
        else if (!strcmp(a, "--workers")) key = "workers";
        else if (!strcmp(a, "--tokens")) key = "token_file";
        else if (!strcmp(a, "--set")) key = "";
        else {
            fprintf(stderr, "quantd serve: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "quantd serve: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        char kbuf[64];
        if (!*key) {
            const char *eq = strchr(v, '=');
            if (!eq || (size_t)(eq - v) >= sizeof kbuf) {
                fprintf(stderr, "quantd serve: --set takes KEY=VALUE\n");
                return 2;
            }
            memcpy(kbuf, v, (size_t)(eq - v));
            kbuf[eq - v] = 0;
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
