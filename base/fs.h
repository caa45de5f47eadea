/* Files: whole-file reads, write-everything, mkdir -p, and atomic replacement (a unique temp
 * file beside the target, fsync of the file, rename, fsync of the directory). The one copy of
 * each for all of quantd. */
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

/* Creates dir and every missing parent (mode 0755); an existing directory is fine. QD_ERR
 * naming the component that could not be created (or that exists and is not a directory). */
int qd_mkdir_p(const char *dir, qd_err *err);

/* fsyncs a directory, so that renames and creations inside it survive a crash. 0, or -1 with
 * errno set. */
int qd_fsync_dir(const char *dir);

/* A file written atomically: open creates a unique hidden temp file beside path
 * (DIR/.NAME.tmpXXXXXX, mkstemp, mode 0644) and a FILE* for it; commit flushes, fsyncs, renames
 * over path and fsyncs the directory; abort (or a failed commit) removes the temp file. A reader
 * of path sees the old content or the new one, never a part. */
typedef struct qd_atomic_file {
    FILE *f;
    char path[4096];
    char tmp[4096 + 16];
} qd_atomic_file;

int qd_atomic_open(qd_atomic_file *a, const char *path, qd_err *err);
int qd_atomic_commit(qd_atomic_file *a, qd_err *err);
void qd_atomic_abort(qd_atomic_file *a);

/* Replaces path by the n bytes at data through qd_atomic_*. QD_ERR names the file; then path
 * keeps its old content and no temp file is left. */
int qd_write_file_atomic(const char *path, const void *data, size_t n, qd_err *err);

/* Replaces path by the NUL-terminated text and a final newline, as qd_write_file_atomic does
 * (the JSON writers: report.json, encodings.json, config.json, tokenizer.json). */
int qd_write_text_atomic(const char *path, const char *text, qd_err *err);

/* Recursively removes path; symlinks are removed, never followed. 0 (also when path does not
 * exist) or -1 with errno set. */
int qd_rm_rf(const char *path);

#endif
