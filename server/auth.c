/* Token checks compare hashes, in constant time over every entry, so that neither the match
 * position nor a prefix match shows in the response time. */
#include "server/auth.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "base/hash.h"

#define AUTH_MAX_TOKENS 4096

typedef struct token {
    unsigned char hash[32];
    srv_role role;
} token;

struct srv_auth {
    token *t;
    int n;
};

const char *srv_role_name(srv_role r) {
    switch (r) {
    case SRV_ROLE_READ: return "read";
    case SRV_ROLE_SUBMIT: return "submit";
    case SRV_ROLE_ADMIN: return "admin";
    default: return "none";
    }
}

static int unhex(const char *s, unsigned char out[32]) {
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (!isxdigit((unsigned char)s[2 * i]) || !isxdigit((unsigned char)s[2 * i + 1]) ||
            sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (unsigned char)v;
    }
    return isxdigit((unsigned char)s[64]) ? -1 : 0;
}

srv_auth *srv_auth_load(const char *path, qd_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        qd_errf(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    /* Whoever can write the token file can grant themselves admin: refuse to start on a file
     * that anyone but its owner may write (checked on the open file, not the path). */
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        qd_errf(err, "%s: %s", path, strerror(errno));
        fclose(f);
        return NULL;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        qd_errf(err, "%s: mode %04o lets %s write it; a token file must be writable by its owner "
                     "only (chmod go-w %s)", path, (unsigned)(st.st_mode & 07777),
                (st.st_mode & S_IWOTH) ? "everyone" : "its group", path);
        fclose(f);
        return NULL;
    }
    srv_auth *a = calloc(1, sizeof *a);
    a->t = calloc(AUTH_MAX_TOKENS, sizeof *a->t);
    char line[1024];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char hash[128], role[32];
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (!*s || *s == '#') continue;
        if (sscanf(s, "%127s %31s", hash, role) != 2 || strncmp(hash, "sha256:", 7) ||
            strlen(hash) != 71) {
            qd_errf(err, "%s:%d: expected 'sha256:<hex> read|submit|admin [name]'", path, ln);
            goto fail;
        }
        if (a->n == AUTH_MAX_TOKENS) {
            qd_errf(err, "%s: more than %d tokens", path, AUTH_MAX_TOKENS);
            goto fail;
        }
        token *t = &a->t[a->n];
        if (unhex(hash + 7, t->hash)) {
            qd_errf(err, "%s:%d: bad hex in hash", path, ln);
            goto fail;
        }
        if (!strcmp(role, "read")) t->role = SRV_ROLE_READ;
        else if (!strcmp(role, "submit")) t->role = SRV_ROLE_SUBMIT;
        else if (!strcmp(role, "admin")) t->role = SRV_ROLE_ADMIN;
        else {
            qd_errf(err, "%s:%d: unknown role '%s'", path, ln, role);
            goto fail;
        }
        a->n++;
    }
    fclose(f);
    if (a->n == 0) {
        qd_errf(err, "%s: no tokens", path);
        srv_auth_free(a);
        return NULL;
    }
    return a;
fail:
    fclose(f);
    srv_auth_free(a);
    return NULL;
}

void srv_auth_free(srv_auth *a) {
    if (!a) return;
    free(a->t);
    free(a);
}

srv_role srv_auth_check(const srv_auth *a, const char *tok) {
    if (!a || !tok || !*tok) return SRV_ROLE_NONE;
    unsigned char h[32];
    qd_sha256(tok, strlen(tok), h);
    srv_role r = SRV_ROLE_NONE;
    for (int i = 0; i < a->n; i++)
        if (CRYPTO_memcmp(h, a->t[i].hash, 32) == 0) r = a->t[i].role;
    return r;
}
