/* SHA-256 through OpenSSL's EVP interface: of a buffer, of a file, or streamed over many pieces
 * (an upload, the files of a checkpoint directory). The one copy for all of quantd; hex digests
 * are 64 lowercase characters and a NUL. And FNV-1a 64, the cheap checksum and fingerprint of
 * optimizer checkpoints (not for anything an adversary chooses). */
#ifndef QD_BASE_HASH_H
#define QD_BASE_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* The raw 32-byte digest of n bytes. */
void qd_sha256(const void *data, size_t n, unsigned char out[32]);

/* The hex digest of n bytes. */
void qd_sha256_hex(const void *data, size_t n, char hex[65]);

/* The hex digest of a regular file's bytes; *size (may be NULL) receives its length. QD_ERR
 * with err naming the file when it cannot be opened, is not a regular file or fails to read. */
int qd_sha256_file(const char *path, char hex[65], uint64_t *size, qd_err *err);

/* The hex digest of a checkpoint: a regular file's bytes, or for a directory the bytes of its
 * regular files (names not starting with '.') one after another in strcmp order of their names.
 * QD_ERR names the path. */
int qd_sha256_path(const char *path, char hex[65], qd_err *err);

/* A digest fed piece by piece. new: NULL when OpenSSL cannot start one (out of memory);
 * free accepts NULL. */
typedef struct qd_sha256_ctx qd_sha256_ctx;
qd_sha256_ctx *qd_sha256_new(void);
void qd_sha256_update(qd_sha256_ctx *h, const void *data, size_t n);
/* Feeds a regular file's bytes; *size (may be NULL) += its length. QD_ERR names the file. */
int qd_sha256_update_file(qd_sha256_ctx *h, const char *path, uint64_t *size, qd_err *err);
/* Writes the hex digest of everything fed so far; the context must not be fed again. */
void qd_sha256_final(qd_sha256_ctx *h, char hex[65]);
void qd_sha256_free(qd_sha256_ctx *h);

/* FNV-1a 64 over bytes, chained from h (start with QD_FNV_INIT). */
#define QD_FNV_INIT 0xcbf29ce484222325ull
uint64_t qd_fnv64(uint64_t h, const void *data, size_t n);

#endif
