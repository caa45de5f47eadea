/* SHA-256 through OpenSSL EVP, and FNV-1a 64 (see hash.h). */
#include "base/hash.h"
#include "base/stop.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

struct qd_sha256_ctx {
    EVP_MD_CTX *md;
};

static void to_hex(const unsigned char d[32], char hex[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[64] = 0;
}

void qd_sha256(const void *data, size_t n, unsigned char out[32]) {
    unsigned int len = 32;
    EVP_Digest(data, n, out, &len, EVP_sha256(), NULL);
}

void qd_sha256_hex(const void *data, size_t n, char hex[65]) {
    unsigned char d[32];
    qd_sha256(data, n, d);
    to_hex(d, hex);
}

qd_sha256_ctx *qd_sha256_new(void) {
    qd_sha256_ctx *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->md = EVP_MD_CTX_new();
    if (!h->md || EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
        qd_sha256_free(h);
        return NULL;
    }
    return h;
}

void qd_sha256_update(qd_sha256_ctx *h, const void *data, size_t n) {
    EVP_DigestUpdate(h->md, data, n);
}

int qd_sha256_update_file(qd_sha256_ctx *h, const char *path, uint64_t *size, qd_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return qd_errf(err, "%s: not a regular file", path);
    }
    unsigned char buf[1 << 16];
    uint64_t total = 0;
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) {
        if (qd_stop_requested()) { /* a worker's input of gigabytes: stop within the read */
            fclose(f);
            return qd_stopped(err);
        }
        EVP_DigestUpdate(h->md, buf, k);
        total += k;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) return qd_errf(err, "%s: read error", path);
    if (size) *size += total;
    return QD_OK;
}

void qd_sha256_final(qd_sha256_ctx *h, char hex[65]) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn = 0;
    EVP_DigestFinal_ex(h->md, d, &dn);
    to_hex(d, hex);
}

void qd_sha256_free(qd_sha256_ctx *h) {
    if (!h) return;
    EVP_MD_CTX_free(h->md);
    free(h);
}

int qd_sha256_file(const char *path, char hex[65], uint64_t *size, qd_err *err) {
    qd_sha256_ctx *h = qd_sha256_new();
    if (!h) return qd_errf(err, "%s: cannot start a sha256 digest (out of memory)", path);
    uint64_t total = 0;
    int rc = qd_sha256_update_file(h, path, &total, err);
    if (rc == QD_OK) {
        qd_sha256_final(h, hex);
        if (size) *size = total;
    }
    qd_sha256_free(h);
    return rc;
}

static int visible(const struct dirent *d) { return d->d_name[0] != '.'; }

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

int qd_sha256_path(const char *path, char hex[65], qd_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) return qd_errf(err, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return qd_sha256_file(path, hex, NULL, err);
    struct dirent **names = NULL;
    int n = scandir(path, &names, visible, by_name);
    if (n < 0) return qd_errf(err, "%s: cannot list: %s", path, strerror(errno));
    qd_sha256_ctx *h = qd_sha256_new();
    int rc = h ? QD_OK : qd_errf(err, "%s: cannot start a sha256 digest (out of memory)", path);
    for (int i = 0; i < n; i++) {
        char p[4096];
        struct stat s2;
        if (rc == QD_OK && snprintf(p, sizeof p, "%s/%s", path, names[i]->d_name) < (int)sizeof p &&
            stat(p, &s2) == 0 && S_ISREG(s2.st_mode))
            rc = qd_sha256_update_file(h, p, NULL, err);
        free(names[i]);
    }
    free(names);
    if (rc == QD_OK) qd_sha256_final(h, hex);
    qd_sha256_free(h);
    return rc;
}

uint64_t qd_fnv64(uint64_t h, const void *data, size_t n) {
    const unsigned char *b = data;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}
