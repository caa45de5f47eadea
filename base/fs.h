/* Files: whole-file reads, write-everything, and atomic replacement (temp file beside the
 * target, fsync of file and directory, rename). The one copy of each for all of quantd. */
#ifndef QD_BASE_FS_H
#define QD_BASE_FS_H

#include <stddef.h>
#include <stdio.h>

#include "base/err.h"

/* Reads a whole file into a malloc'd buffer (NUL appended, not counted in *len); caller frees.
 * Refuses files larger than max_bytes. NULL on failure with err set (names the file). */
void *qd_read_file(const char *path, size_t max_bytes, size_t *len, qd_err *err);

/* Writes all n bytes to fd, retrying short writes and EINTR. 0, or -1 with errno set. */
int qd_write_all(int fd, const void *data, size_t n);

/* A file written atomically: data goes to a temp file beside path; commit flushes, fsyncs,
 * renames over path and fsyncs the directory; abort removes the temp file. */
typedef struct qd_atomic_file {
    FILE *f;
    char path[4096];
    char tmp[4096 + 16];
} qd_atomic_file;

int qd_atomic_open(qd_atomic_file *a, const char *path, qd_err *err);
int qd_atomic_commit(qd_atomic_file *a, qd_err *err);
void qd_atomic_abort(qd_atomic_file *a);

#endif
