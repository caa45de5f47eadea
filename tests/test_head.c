/* The request head check (server/head.c): valid heads are complete exactly at their blank line
 * and "more" at every shorter prefix; each malformed shape gets its status, code and field, as
 * early as the bytes allow; random and mutated inputs never crash it, and every message is
 * printable ASCII (the JSON answer stays valid UTF-8 whatever the client sent). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/head.h"
#include "tests/check.h"

static srv_head_result chk(const char *s, srv_head *h) { return srv_head_check(s, strlen(s), h); }

static bool ascii_msg(const srv_head *h) {
    for (const char *p = h->msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) return false;
    return h->msg[0] != 0;
}

static void test_valid_heads(void) {
    const char *ok[] = {
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", /* empty lines before the request line */
        "GET /x HTTP/1.0\r\n\r\n",                 /* HTTP/1.0 needs no Host */
        "POST /v1/blobs HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "HEAD /v1/jobs?limit=5&x=%20 HTTP/1.1\r\nhost:\r\nX-A: \t v\xc3\xa9 \t\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length:   007\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        srv_head h;
        size_t n = strlen(ok[i]);
        CHECK(chk(ok[i], &h) == SRV_HEAD_OK, "case %zu: %s", i, h.msg);
        CHECK(h.len == n, "case %zu: len %zu of %zu", i, h.len, n);
        for (size_t k = 0; k < n; k++)
            CHECK(srv_head_check(ok[i], k, &h) == SRV_HEAD_MORE, "case %zu prefix %zu: %d %s", i, k,
                  h.status, h.msg);
        /* a body after the head is not the head's */
        char buf[512];
        snprintf(buf, sizeof buf, "%shello", ok[i]);
        CHECK(chk(buf, &h) == SRV_HEAD_OK && h.len == n, "case %zu with a body", i);
    }
    srv_head h;
    chk(ok[3], &h);
    CHECK(h.content_length == 5, "%llu", (unsigned long long)h.content_length);
    chk(ok[5], &h);
    CHECK(h.content_length == 7, "%llu", (unsigned long long)h.content_length);
    chk(ok[4], &h);
    CHECK(h.is_head, "HEAD");
    chk(ok[0], &h);
    CHECK(!h.is_head && h.content_length == 0, "GET");
}

typedef struct bad_case {
    const char *req;
    int status;
    const char *code, *field;
} bad_case;

static void test_refusals(void) {
    static char long_target[SRV_TARGET_MAX + 64], big[SRV_HEAD_MAX + 200], many[4096];
    int o = snprintf(long_target, sizeof long_target, "GET /");
    memset(long_target + o, 'a', SRV_TARGET_MAX + 1);
    long_target[o + SRV_TARGET_MAX + 1] = 0; /* no CRLF yet: refused before the line ends */
    o = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big + o, 'b', SRV_HEAD_MAX);
    big[o + SRV_HEAD_MAX] = 0;
    o = snprintf(many, sizeof many, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < SRV_HEAD_FIELDS_MAX; i++) o += snprintf(many + o, sizeof many - (size_t)o, "A%d: b\r\n", i);
    snprintf(many + o, sizeof many - (size_t)o, "\r\n");
    const bad_case cases[] = {
        {"GET /healthz HTTP/2.0\r\n", 505, "http_version_not_supported", NULL},
        {"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n", 505, "http_version_not_supported", NULL},
        {"GET /healthz HTTP/1.10\r\n", 400, "bad_request", NULL},
        {"GET /healthz HTTP/1.1 \r\n", 400, "bad_request", NULL},
        {"GET  /healthz HTTP/1.1\r\n", 400, "bad_request", NULL},
        {"GET /a b HTTP/1.1\r\n", 400, "bad_request", NULL},
        {"GET /\x01 HTTP/1.1\r\n", 400, "bad_request", NULL},
        {"GET /healthz\r\n", 400, "bad_request", NULL},
        {"GET /healthz HTTX", 400, "bad_request", NULL}, /* early: the line has not ended */
        {"\x16\x03\x01\x02\x00\x01", 400, "bad_request", NULL}, /* a TLS ClientHello */
        {"G(T / HTTP/1.1\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\nHost: x\n\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\nHo(st: x\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01z\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fz\r\n\r\n", 400, "bad_request", NULL},
        {"GET / HTTP/1.1\r\n\r\n", 400, "bad_request", "Host"},
        {"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, "bad_request", "Host"},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request", "Content-Length"},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "bad_request", "Content-Length"},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400, "bad_request", "Content-Length"},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400, "bad_request", "Content-Length"},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n", 413,
         "payload_too_large", "Content-Length"},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400,
         "bad_request", "Content-Length"},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "length_required",
         "Transfer-Encoding"},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 411, "length_required",
         "Transfer-Encoding"},
        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
         "bad_request", "Content-Length"},
        {long_target, 414, "uri_too_long", NULL},
        {big, 431, "header_fields_too_large", NULL},
        {many, 431, "header_fields_too_large", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const bad_case *b = &cases[i];
        srv_head h;
        srv_head_result r = chk(b->req, &h);
        CHECK(r == SRV_HEAD_BAD, "case %zu: %d", i, r);
        if (r != SRV_HEAD_BAD) continue;
        CHECK(h.status == b->status, "case %zu: %d, want %d (%s)", i, h.status, b->status, h.msg);
        CHECK(!strcmp(h.code, b->code), "case %zu: %s", i, h.code);
        CHECK(b->field ? h.field && !strcmp(h.field, b->field) : !h.field, "case %zu: field %s", i,
              h.field ? h.field : "(null)");
        CHECK(ascii_msg(&h), "case %zu: message %s", i, h.msg);
    }
}

/* Random bytes, and valid heads with one byte changed: no crash, no read past n (ASan), an OK
 * head lies inside the input, a refusal has a status and an ASCII message. */
static void test_random_inputs(void) {
    const char *seed = "POST /v1/blobs?name=a HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                       "octet-stream\r\nContent-Length: 12\r\n\r\nhello world!";
    size_t sl = strlen(seed);
    unsigned long long st = 88172645463325252ull;
    int ok = 0, bad = 0, more = 0;
    for (int it = 0; it < 20000; it++) {
        char buf[256];
        size_t n;
        st ^= st << 13, st ^= st >> 7, st ^= st << 17;
        if (it & 1) {
            memcpy(buf, seed, sl);
            n = sl - (st >> 40) % 8;
            buf[(st >> 8) % n] = (char)(st >> 32);
        } else {
            n = (st >> 20) % sizeof buf;
            for (size_t i = 0; i < n; i++) {
                st ^= st << 13, st ^= st >> 7, st ^= st << 17;
                buf[i] = (char)(st % 4 == 0 ? "\r\n: "[st >> 12 & 3] : (char)(st >> 24));
            }
        }
        /* a heap copy of exactly n bytes, so that ASan sees any read past the end */
        char *heap = malloc(n ? n : 1);
        memcpy(heap, buf, n);
        srv_head h;
        srv_head_result r = srv_head_check(heap, n, &h);
        free(heap);
        if (r == SRV_HEAD_OK) {
            ok++;
            CHECK(h.len <= n, "len %zu > %zu", h.len, n);
        } else if (r == SRV_HEAD_BAD) {
            bad++;
            CHECK(h.status >= 400 && h.status < 600 && h.code && ascii_msg(&h), "%d %s", h.status, h.msg);
        } else {
            more++;
        }
    }
    CHECK(ok > 100 && bad > 100, "ok %d bad %d more %d: the inputs should reach every outcome", ok, bad, more);
}

int main(void) {
    RUN(test_valid_heads);
    RUN(test_refusals);
    RUN(test_random_inputs);
    return CHECK_DONE();
}
