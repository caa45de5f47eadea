/* The request head check (see head.h). */
#include "server/head.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 §5.6.2: the characters of a token (methods, header names). */
static bool tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A header value's characters: visible ASCII, space, tab and obs-text (bytes >= 0x80). */
static bool vchar(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static srv_head_result bad(srv_head *h, int status, const char *code, const char *field,
                           const char *fmt, ...) {
    h->status = status;
    h->code = code;
    h->field = field;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->msg, sizeof h->msg, fmt, ap);
    va_end(ap);
    return SRV_HEAD_BAD;
}

/* Up to 40 bytes of s as printable ASCII ('?' for anything else), for a message that must stay
 * valid UTF-8 whatever the client sent. */
static const char *excerpt(const char *s, size_t n, char out[41]) {
    size_t k = n < 40 ? n : 40;
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' ? (char)c : '?';
    }
    out[k] = 0;
    return out;
}

/* The line starting at p: 1 with *e at its CR when it ends in CRLF, 0 when its end has not
 * arrived, -1 for a CR or LF alone. */
static int next_line(const char *b, size_t n, size_t p, size_t *e) {
    for (size_t i = p; i < n; i++) {
        if (b[i] == '\n') return -1;
        if (b[i] == '\r') {
            if (i + 1 == n) return 0;
            if (b[i + 1] != '\n') return -1;
            *e = i;
            return 1;
        }
    }
    return 0;
}

/* The request line [p, end), complete or (when !complete) as far as it has arrived. */
static srv_head_result request_line(const char *b, size_t p, size_t end, bool complete,
                                    srv_head *h, bool *http11) {
    const char *not_http = "not an HTTP/1.1 request line (METHOD SP TARGET SP HTTP/1.1 CRLF)";
    size_t i = p;
    while (i < end && tchar((unsigned char)b[i])) i++;
    if (i - p > 32) return bad(h, 400, "bad_request", NULL, "a method longer than 32 characters");
    if (i == end && !complete) return SRV_HEAD_MORE;
    if (i == end || i == p || b[i] != ' ') return bad(h, 400, "bad_request", NULL, "%s", not_http);
    h->is_head = i - p == 4 && !memcmp(b + p, "HEAD", 4);
    size_t t = i + 1, j = t;
    while (j < end && (unsigned char)b[j] > 0x20 && (unsigned char)b[j] < 0x7f) j++;
    if (j - t > SRV_TARGET_MAX)
        return bad(h, 414, "uri_too_long", NULL, "a request target longer than %u bytes",
                   SRV_TARGET_MAX);
    if (j == end && !complete) return SRV_HEAD_MORE;
    if (j == end || j == t || b[j] != ' ')
        return bad(h, 400, "bad_request", NULL,
                   "%s; the target must be visible ASCII (percent-encode the rest)", not_http);
    static const char pat[] = "HTTP/d.d";
    size_t k = j + 1, have = end - k;
    for (size_t q = 0; q < 8 && q < have; q++) {
        unsigned char c = (unsigned char)b[k + q];
        bool ok = pat[q] == 'd' ? c >= '0' && c <= '9' : c == (unsigned char)pat[q];
        if (!ok) return bad(h, 400, "bad_request", NULL, "%s", not_http);
    }
    if (have < 8) return complete ? bad(h, 400, "bad_request", NULL, "%s", not_http) : SRV_HEAD_MORE;
    if (have > 8) return bad(h, 400, "bad_request", NULL, "%s", not_http);
    char major = b[k + 5], minor = b[k + 7];
    if (major != '1' || (minor != '0' && minor != '1'))
        return bad(h, 505, "http_version_not_supported", NULL,
                   "HTTP/%c.%c is not supported: send HTTP/1.1 (or 1.0)", major, minor);
    *http11 = minor == '1';
    return complete ? SRV_HEAD_OK : SRV_HEAD_MORE;
}

static bool name_is(const char *b, size_t p, size_t q, const char *name) {
    size_t l = strlen(name);
    return q - p == l && !strncasecmp(b + p, name, l);
}

srv_head_result srv_head_check(const char *buf, size_t n, srv_head *h) {
    memset(h, 0, sizeof *h);
    bool over = n > SRV_HEAD_MAX;
    if (over) n = SRV_HEAD_MAX;
    size_t p = 0, e = 0;
    /* RFC 9112 §2.2: empty lines before the request line are ignored */
    while (p + 1 < n && buf[p] == '\r' && buf[p + 1] == '\n') p += 2;
    int r = next_line(buf, n, p, &e);
    if (r < 0) return bad(h, 400, "bad_request", NULL, "the request line does not end in CRLF");
    bool http11 = false;
    size_t end = r ? e : n;
    if (!r && end > p && buf[end - 1] == '\r') end--; /* its LF has not arrived */
    srv_head_result rl = request_line(buf, p, end, r > 0, h, &http11);
    if (rl == SRV_HEAD_BAD) return rl;
    if (r == 0) {
        if (!over) return SRV_HEAD_MORE;
        return bad(h, 414, "uri_too_long", NULL, "a request line longer than %u bytes", SRV_HEAD_MAX);
    }
    int fields = 0, hosts = 0, lengths = 0, te = 0;
    uint64_t length = 0;
    char ex[41];
    for (p = e + 2;; p = e + 2) {
        r = next_line(buf, n, p, &e);
        if (r < 0) return bad(h, 400, "bad_request", NULL, "a header line does not end in CRLF");
        if (r == 0) {
            if (!over) return SRV_HEAD_MORE;
            return bad(h, 431, "header_fields_too_large", NULL,
                       "the request's headers are larger than %u KiB", SRV_HEAD_MAX >> 10);
        }
        if (e == p) break; /* the blank line: the head is complete */
        if (++fields > SRV_HEAD_FIELDS_MAX)
            return bad(h, 431, "header_fields_too_large", NULL, "more than %d header lines",
                       SRV_HEAD_FIELDS_MAX);
        if (buf[p] == ' ' || buf[p] == '\t')
            return bad(h, 400, "bad_request", NULL,
                       "a header line starts with whitespace (obsolete line folding)");
        size_t q = p;
        while (q < e && tchar((unsigned char)buf[q])) q++;
        if (!memchr(buf + p, ':', e - p))
            return bad(h, 400, "bad_request", NULL, "a header line without a colon: \"%s\"",
                       excerpt(buf + p, e - p, ex));
        if (buf[q] != ':') {
            const char *what = buf[q] == ' ' || buf[q] == '\t' ? "whitespace between the name and the colon"
                                                               : "a character that a header name cannot have";
            return bad(h, 400, "bad_request", NULL, "a header line with %s: \"%s\"", what,
                       excerpt(buf + p, e - p, ex));
        }
        if (q == p) return bad(h, 400, "bad_request", NULL, "a header line without a name");
        size_t v = q + 1, ve = e;
        for (size_t i = v; i < ve; i++)
            if (!vchar((unsigned char)buf[i]))
                return bad(h, 400, "bad_request", NULL, "a control character in the value of %s",
                           excerpt(buf + p, q - p, ex));
        while (v < ve && (buf[v] == ' ' || buf[v] == '\t')) v++;
        while (ve > v && (buf[ve - 1] == ' ' || buf[ve - 1] == '\t')) ve--;
        if (name_is(buf, p, q, "Host")) {
            hosts++;
        } else if (name_is(buf, p, q, "Transfer-Encoding")) {
            te++;
        } else if (name_is(buf, p, q, "Content-Length")) {
            uint64_t x = 0;
            if (v == ve)
                return bad(h, 400, "bad_request", "Content-Length", "an empty Content-Length");
            for (size_t i = v; i < ve; i++) {
                unsigned d = (unsigned char)buf[i] - '0';
                if (d > 9)
                    return bad(h, 400, "bad_request", "Content-Length",
                               "Content-Length \"%s\" is not a decimal number",
                               excerpt(buf + v, ve - v, ex));
                if (x > (UINT64_MAX - d) / 10)
                    return bad(h, 413, "payload_too_large", "Content-Length",
                               "a Content-Length that does not fit 64 bits");
                x = x * 10 + d;
            }
            if (lengths++ && x != length)
                return bad(h, 400, "bad_request", "Content-Length", "Content-Length headers that disagree");
            length = x;
        }
    }
    if (hosts == 0 && http11)
        return bad(h, 400, "bad_request", "Host", "an HTTP/1.1 request needs a Host header");
    if (hosts > 1) return bad(h, 400, "bad_request", "Host", "more than one Host header");
    if (te && lengths)
        return bad(h, 400, "bad_request", "Content-Length",
                   "Content-Length together with Transfer-Encoding");
    if (te)
        return bad(h, 411, "length_required", "Transfer-Encoding",
                   "send the body with a Content-Length (not Transfer-Encoding): quantd checks "
                   "a body's size and the free disk before it stores a byte");
    h->len = e + 2;
    h->content_length = length;
    return SRV_HEAD_OK;
}
