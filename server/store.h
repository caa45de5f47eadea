/* The embedded store: a data directory holding content-addressed blobs and one directory per
 * job. Layout (DESIGN.md §4):
 *   DATA/blobs/sha256/<hex>      uploads, read-only once complete
 *   DATA/blobs/tmp/              uploads in progress (cleared at start)
 *   DATA/jobs/<uuid>/job.json    spec + state, replaced atomically
 *   DATA/jobs/<uuid>/events.jsonl, artifacts/, checkpoint, worker.log
 *   DATA/lock                    flock held by the one server using DATA */
#ifndef QD_SRV_STORE_H
#define QD_SRV_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "api/api.h"
#include "base/err.h"

typedef struct srv_store srv_store;

/* Opens (creating) the data directory and locks it against a second server. NULL on error. */
srv_store *srv_store_open(const char *dir, qd_err *err);
void srv_store_close(srv_store *s);

/* Absolute path of the data directory. */
const char *srv_store_dir(const srv_store *s);

/* Bytes available to an unprivileged writer on the data directory's filesystem. */
uint64_t srv_store_free_bytes(const srv_store *s);

/* Path of blob id ("sha256:<hex>", validated by the caller) into out. */
int srv_blob_path(const srv_store *s, const char *id, char *out, size_t n);
/* True when the blob exists; *size (may be NULL) gets its size. */
bool srv_blob_exists(const srv_store *s, const char *id, uint64_t *size);

/* An upload being streamed into blobs/tmp with its sha256 computed on the fly. */
typedef struct srv_upload srv_upload;
srv_upload *srv_upload_begin(srv_store *s, qd_err *err);
/* Appends bytes; 0 on success or an errno value (ENOSPC, EDQUOT, EIO ...). */
int srv_upload_write(srv_upload *u, const void *data, size_t n);
uint64_t srv_upload_size(const srv_upload *u);
/* Ends the hash of an upload that is complete but not yet stored: id gets "sha256:<hex>". The
 * upload takes no more writes; srv_upload_finish stores it, srv_upload_abort drops it. Lets a
 * multipart job name its parts by id before deciding to keep them. */
void srv_upload_seal(srv_upload *u, char id[72]);
/* Syncs and moves the upload to its content address; frees u. *existed is true when the same
 * content was already stored (the temp file is then dropped). QD_OK or QD_ERR. */
int srv_upload_finish(srv_upload *u, char id[72], uint64_t *size, bool *existed, qd_err *err);
/* Where the bytes of an unfinished upload lie (blobs/tmp/upload-XXXXXX), for the door's check
 * of a multipart job before its parts are stored. */
const char *srv_upload_path(const srv_upload *u);
/* Drops an unfinished upload: the temp file is removed. Accepts NULL. */
void srv_upload_abort(srv_upload *u);

/* DATA/jobs/<id> into out. */
int srv_job_dir(const srv_store *s, const char *id, char *out, size_t n);
/* Creates the job's directory with its job.json and an events.jsonl holding first_event,
 * all-or-nothing (built under a temp name, then renamed). */
int srv_store_create_job(srv_store *s, const api_job *j, const char *first_event, qd_err *err);
/* Replaces job.json atomically (temp file, fsync, rename, fsync of the directory). */
int srv_store_write_job(srv_store *s, const api_job *j, qd_err *err);
/* Appends one event line (newline added) to the job's events.jsonl. */
int srv_store_append_event(srv_store *s, const char *id, const char *line, qd_err *err);
/* Removes a job directory and everything in it. */
int srv_store_delete_job(srv_store *s, const char *id, qd_err *err);
/* Loads every job.json under DATA/jobs into a malloc'd array (caller clears each and frees).
 * Unreadable records are skipped with a message on stderr, never fatal. */
int srv_store_load_jobs(srv_store *s, api_job **jobs, int *n, qd_err *err);

#endif
