/* The intake (server/intake.c) over real loopback sockets, without the HTTP library: a valid head is
 * handed on with every byte still unread (the head trickled in pieces too); a bad head gets the
 * JSON error answer and the connection's end, even when the client keeps sending; a connection
 * the guard does not admit gets a JSON 429, one the hand-over cannot take a JSON 503; a head
 * that stalls past the idle timeout is closed. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/sys.h"
#include "server/intake.h"
#include "tests/check.h"

typedef struct taken {
    pthread_mutex_t mu;
    int fds[16], n;
    bool refuse; /* hand_on answers false */
} taken;

static bool hand_on(void *cls, int fd, const struct sockaddr *sa, socklen_t sl, srv_guard_conn *gc) {
    (void)sa;
    (void)sl;
    (void)gc;
    taken *t = cls;
    pthread_mutex_lock(&t->mu);
    bool ok = !t->refuse && t->n < 16;
    if (ok) t->fds[t->n++] = fd;
    pthread_mutex_unlock(&t->mu);
    return ok;
}

static int take_fd(taken *t, double wait_s) {
    double t0 = qd_now();
    while (qd_now() - t0 < wait_s) {
        pthread_mutex_lock(&t->mu);
        int fd = t->n ? t->fds[--t->n] : -1;
        pthread_mutex_unlock(&t->mu);
        if (fd >= 0) return fd;
        usleep(2000);
    }
    return -1;
}

static int listener(struct sockaddr_in *a) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof *a;
    if (bind(fd, (struct sockaddr *)a, sl) || listen(fd, 64) || getsockname(fd, (struct sockaddr *)a, &sl)) {
        perror("listen");
        exit(1);
    }
    return fd;
}

static int dial(const struct sockaddr_in *a) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (const struct sockaddr *)a, sizeof *a)) {
        perror("connect");
        exit(1);
    }
    return fd;
}

/* Everything fd delivers until its end or wait_s of silence; returns the byte count. */
static size_t read_until_end(int fd, char *buf, size_t cap, double wait_s, bool *ended) {
    size_t n = 0;
    *ended = false;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(wait_s * 1000)) <= 0) return n;
        ssize_t k = recv(fd, buf + n, cap - 1 - n, 0);
        if (k <= 0) {
            *ended = true;
            buf[n] = 0;
            return n;
        }
        n += (size_t)k;
        buf[n] = 0;
        if (n + 1 >= cap) return n;
    }
}

typedef struct rig {
    struct sockaddr_in addr;
    srv_intake *d;
    srv_guard *g;
    taken t;
} rig;

static void rig_start(rig *r, int per_ip, double idle_s) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->t.mu, NULL);
    qd_err err;
    srv_guard_opts go = {.per_ip = per_ip};
    r->g = srv_guard_new(&go, &err);
    srv_intake_opts o = {.listen_fd = listener(&r->addr), .max_pending = 64, .idle_timeout_s = idle_s,
                       .guard = r->g, .hand_on = hand_on, .cls = &r->t};
    r->d = srv_intake_start(&o, &err);
    if (!r->d || !r->g) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
}

static void rig_stop(rig *r) {
    srv_intake_stop(r->d);
    srv_guard_free(r->g);
    pthread_mutex_destroy(&r->t.mu);
}

static void test_valid_head_handed_on_unread(void) {
    rig r;
    rig_start(&r, 0, 5);
    const char *req = "POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    int c = dial(&r.addr);
    /* in three pieces: the head completes only with the second */
    send(c, req, 10, 0);
    usleep(50000);
    CHECK(take_fd(&r.t, 0.1) < 0, "handed on before the head was complete");
    send(c, req + 10, strlen(req) - 10 - 5, 0);
    int s = take_fd(&r.t, 2.0);
    CHECK(s >= 0, "not handed on");
    if (s >= 0) {
        send(c, "hello", 5, 0);
        char buf[256];
        bool ended;
        size_t n = read_until_end(s, buf, sizeof buf, 0.3, &ended);
        CHECK(n == strlen(req) && !memcmp(buf, req, n), "the handed-on socket holds %zu bytes: %s", n, buf);
        close(s);
    }
    close(c);
    rig_stop(&r);
}

static void test_bad_head_answered_json(void) {
    rig r;
    rig_start(&r, 0, 5);
    int c = dial(&r.addr);
    const char *req = "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n";
    send(c, req, strlen(req), 0);
    /* the client keeps sending after the refusal: the answer must still arrive whole */
    char junk[16384];
    memset(junk, 'j', sizeof junk);
    for (int i = 0; i < 8; i++) send(c, junk, sizeof junk, MSG_NOSIGNAL | MSG_DONTWAIT);
    char buf[4096];
    bool ended;
    size_t n = read_until_end(c, buf, sizeof buf, 3.0, &ended);
    CHECK(n > 0 && !strncmp(buf, "HTTP/1.1 505 HTTP Version Not Supported\r\n", 41), "%s", buf);
    CHECK(strstr(buf, "\r\nContent-Type: application/json\r\n") && strstr(buf, "\r\nConnection: close\r\n"), "%s", buf);
    const char *body = strstr(buf, "\r\n\r\n");
    CHECK(body && strstr(body, "{\"error\":{\"code\":\"http_version_not_supported\""), "%s", buf);
    CHECK(ended, "the connection was not closed");
    CHECK(take_fd(&r.t, 0.05) < 0, "a bad head was handed on");
    close(c);
    /* HEAD: the answer has no body */
    c = dial(&r.addr);
    req = "HEAD / HTTP/1.1\r\n\r\n";
    send(c, req, strlen(req), 0);
    n = read_until_end(c, buf, sizeof buf, 3.0, &ended);
    body = strstr(buf, "\r\n\r\n");
    CHECK(n && strstr(buf, " 400 ") && body && body[4] == 0 && ended, "%s", buf);
    close(c);
    /* a client that ends its side with the head incomplete */
    c = dial(&r.addr);
    send(c, "GET / HT", 8, 0);
    shutdown(c, SHUT_WR);
    n = read_until_end(c, buf, sizeof buf, 3.0, &ended);
    CHECK(n && strstr(buf, " 400 ") && strstr(buf, "ended before") && ended, "%s", buf);
    close(c);
    rig_stop(&r);
}

static void test_limits(void) {
    rig r;
    rig_start(&r, 1, 0.4);
    char buf[4096];
    bool ended;
    /* per_ip 1: a second connection while the first is fresh is refused with a JSON 429 */
    int a = dial(&r.addr);
    send(a, "GET / HTTP/1.1\r\n", 16, 0);
    usleep(50000);
    int b = dial(&r.addr);
    size_t n = read_until_end(b, buf, sizeof buf, 3.0, &ended);
    CHECK(n && !strncmp(buf, "HTTP/1.1 429 ", 13) && strstr(buf, "per_ip_connections") && ended, "%s", buf);
    close(b);
    /* the first one stalls: closed after the idle timeout, with no answer */
    double t0 = qd_now();
    n = read_until_end(a, buf, sizeof buf, 3.0, &ended);
    double dt = qd_now() - t0;
    CHECK(ended && n == 0 && dt > 0.2 && dt < 2.5, "ended %d after %.2f s with %zu bytes", ended, dt, n);
    close(a);
    /* the hand-over cannot take it: a JSON 503 */
    r.t.refuse = true;
    usleep(300000);
    a = dial(&r.addr);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    send(a, req, strlen(req), 0);
    n = read_until_end(a, buf, sizeof buf, 3.0, &ended);
    CHECK(n && !strncmp(buf, "HTTP/1.1 503 ", 13) && strstr(buf, "max_connections") && ended, "%s", buf);
    close(a);
    rig_stop(&r);
}

int main(void) {
    RUN(test_valid_head_handed_on_unread);
    RUN(test_bad_head_answered_json);
    RUN(test_limits);
    return CHECK_DONE();
}
