/* The request head check that runs before libmicrohttpd sees a connection (server/intake.c).
 *
 * srv_head_check reads the bytes of a request head as they have arrived (the intake peeks them
 * from the socket without consuming them) and says whether the head is complete and valid, needs
 * more bytes, or is refused, with the status, error code, message and header to answer in
 * quantd's JSON error shape. It is strict (RFC 9112): lines end in CRLF; the request line is
 * METHOD SP TARGET SP HTTP/DIGIT.DIGIT; header names are tokens followed at once by a colon;
 * no obsolete line folding and no control characters in values; exactly one Host on HTTP/1.1;
 * Content-Length a decimal number, the same in every copy; no Transfer-Encoding (quantd needs
 * every body's length before the body, as it checks sizes and free disk before storing a byte:
 * 411, or 400 beside a Content-Length). Errors are found as early as the bytes allow: a bad
 * request line is refused before the headers arrive.
 *
 * Pure: no I/O, no allocation; buf need not be NUL-terminated. */
#ifndef QD_SRV_HEAD_H
#define QD_SRV_HEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_HEAD_MAX (32u << 10)   /* the whole head, request line and blank line included */
#define SRV_TARGET_MAX (8u << 10)  /* the request target */
#define SRV_HEAD_FIELDS_MAX 100    /* header lines */

typedef enum { SRV_HEAD_MORE, SRV_HEAD_OK, SRV_HEAD_BAD } srv_head_result;

typedef struct srv_head {
    size_t len;             /* SRV_HEAD_OK: the head's bytes, its blank line included */
    bool is_head;           /* the method is HEAD (an error answer then has no body) */
    uint64_t content_length; /* SRV_HEAD_OK: 0 when there is none */
    /* SRV_HEAD_BAD: the answer */
    int status;
    const char *code;  /* quantd's error code: bad_request, length_required, ... */
    const char *field; /* the header named, or NULL */
    char msg[160];
} srv_head;

/* Checks the first n bytes of a connection. SRV_HEAD_MORE: valid so far, the head is not
 * complete (n < SRV_HEAD_MAX). */
srv_head_result srv_head_check(const char *buf, size_t n, srv_head *h);

#endif
