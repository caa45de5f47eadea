/* The connection guard (server/guard.c) without HTTP: per-address admission with idle and stuck
 * connections displaced (and just-opened or busy ones never), trusted_proxies parsing, and the
 * client that X-Forwarded-For names behind a trusted proxy. Each connection's "socket" is one
 * end of a socketpair, so that a displaced connection shows as the other end reading EOF. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/guard.h"
#include "tests/check.h"

static struct sockaddr_in v4(const char *a) {
    struct sockaddr_in s = {.sin_family = AF_INET};
    inet_pton(AF_INET, a, &s.sin_addr);
    return s;
}

typedef struct fake {
    int sv[2]; /* sv[0] is the server's end, sv[1] the client's */
    srv_guard_conn *c;
} fake;

static bool fake_open(srv_guard *g, fake *f, const char *addr) {
    struct sockaddr_in sa = v4(addr);
    if (!srv_guard_admit(g, (struct sockaddr *)&sa)) return false;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, f->sv) != 0) return false;
    f->c = srv_guard_open(g, (struct sockaddr *)&sa, f->sv[0]);
    return f->c != NULL;
}

static void fake_close(srv_guard *g, fake *f) {
    srv_guard_close(g, f->c);
    close(f->sv[0]);
    close(f->sv[1]);
    f->c = NULL;
}

/* Whether the guard shut this connection down: the client's end then reads EOF. */
static bool was_shut(const fake *f) {
    struct pollfd p = {.fd = f->sv[1], .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) return false;
    char b;
    return recv(f->sv[1], &b, 1, MSG_DONTWAIT) == 0;
}

static void test_proxies_parsed(void) {
    qd_err err;
    const char *bad[] = {"10.0.0.0/33", "::1/129", "nonsense", "10.0.0.1/", "1.2.3.4/x"};
    for (int i = 0; i < 5; i++) {
        srv_guard_opts o = {.per_ip = 1, .trusted_proxies = bad[i]};
        srv_guard *g = srv_guard_new(&o, &err);
        CHECK(g == NULL && strstr(err.msg, "trusted_proxies"), "'%s' accepted", bad[i]);
        srv_guard_free(g);
    }
    srv_guard_opts o = {.per_ip = 1, .trusted_proxies = " 127.0.0.1, ::1,10.0.0.0/8 fd00::/8"};
    srv_guard *g = srv_guard_new(&o, &err);
    CHECK(g != NULL, "%s", err.msg);
    srv_guard_free(g);
}

static void test_displacement(void) {
    qd_err err;
    srv_guard_opts o = {.per_ip = 2};
    srv_guard *g = srv_guard_new(&o, &err);
    CHECK(g != NULL, "%s", err.msg);
    if (!g) return;
    fake a, b, c, d;
    CHECK(fake_open(g, &a, "192.0.2.1") && fake_open(g, &b, "192.0.2.1"), "first two admitted");
    /* both just opened: a third is refused rather than displacing a fresh connection */
    struct sockaddr_in sa = v4("192.0.2.1");
    CHECK(!srv_guard_admit(g, (struct sockaddr *)&sa), "third admitted over two fresh ones");
    /* another address is not affected */
    CHECK(fake_open(g, &d, "192.0.2.9"), "other address refused");
    /* a answers a request and goes idle; b is busy: the next connection displaces a */
    CHECK(srv_guard_request_begin(g, a.c, NULL), "request a");
    srv_guard_body_done(g, a.c);
    srv_guard_request_end(g, a.c);
    CHECK(srv_guard_request_begin(g, b.c, NULL), "request b");
    CHECK(fake_open(g, &c, "192.0.2.1"), "not admitted in place of an idle connection");
    CHECK(was_shut(&a) && !was_shut(&b), "a shut %d, b shut %d", was_shut(&a), was_shut(&b));
    /* b busy, c fresh: full again */
    CHECK(!srv_guard_admit(g, (struct sockaddr *)&sa), "admitted over a busy and a fresh connection");
    srv_guard_stats st = srv_guard_get_stats(g);
    CHECK(st.evicted == 1 && st.refused == 2, "evicted %llu refused %llu", (unsigned long long)st.evicted,
          (unsigned long long)st.refused);
    srv_guard_request_end(g, b.c);
    fake_close(g, &a);
    fake_close(g, &b);
    fake_close(g, &c);
    fake_close(g, &d);
    srv_guard_free(g);
}

static void test_forwarded_for(void) {
    qd_err err;
    srv_guard_opts o = {.per_ip = 1, .trusted_proxies = "127.0.0.1, 10.0.0.0/8"};
    srv_guard *g = srv_guard_new(&o, &err);
    CHECK(g != NULL, "%s", err.msg);
    if (!g) return;
    fake p[6];
    for (int i = 0; i < 6; i++) CHECK(fake_open(g, &p[i], "127.0.0.1"), "proxy connection %d refused", i);
    /* one request in flight per client: the client is the rightmost untrusted address */
    CHECK(srv_guard_request_begin(g, p[0].c, "203.0.113.7"), "first request of the client");
    CHECK(!srv_guard_request_begin(g, p[1].c, "203.0.113.7"), "second request of the same client");
    srv_guard_request_end(g, p[1].c);
    CHECK(!srv_guard_request_begin(g, p[2].c, "198.51.100.1, 203.0.113.7"), "a forged left entry changed the client");
    srv_guard_request_end(g, p[2].c);
    CHECK(!srv_guard_request_begin(g, p[3].c, "203.0.113.7, 10.1.1.1"), "a trusted hop was not skipped");
    srv_guard_request_end(g, p[3].c);
    CHECK(srv_guard_request_begin(g, p[4].c, "203.0.113.8"), "another client refused");
    srv_guard_request_end(g, p[0].c);
    CHECK(srv_guard_request_begin(g, p[5].c, " 203.0.113.7 "), "the client's slot was not freed");
    srv_guard_stats st = srv_guard_get_stats(g);
    CHECK(st.client_limited == 3, "client_limited %llu", (unsigned long long)st.client_limited);
    srv_guard_request_end(g, p[4].c);
    srv_guard_request_end(g, p[5].c);
    for (int i = 0; i < 6; i++) fake_close(g, &p[i]);
    /* from a peer that is not a proxy, X-Forwarded-For is ignored: no per-request limit at all */
    fake q;
    CHECK(fake_open(g, &q, "192.0.2.5"), "direct peer refused");
    CHECK(srv_guard_request_begin(g, q.c, "203.0.113.7") && srv_guard_request_begin(g, q.c, "203.0.113.7"),
          "X-Forwarded-For of an untrusted peer counted");
    srv_guard_request_end(g, q.c);
    fake_close(g, &q);
    srv_guard_free(g);
}

int main(void) {
    RUN(test_proxies_parsed);
    RUN(test_displacement);
    RUN(test_forwarded_for);
    return CHECK_DONE();
}
