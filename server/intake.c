/* The intake (see intake.h): one thread, an epoll set over the listening socket, a stop eventfd and
 * the connections whose head is not in yet. Sockets are edge-triggered: peeking leaves the bytes
 * in the socket, so a level-triggered set would report the same bytes for ever; an edge comes
 * with each new arrival, and each is answered by one peek of the whole head so far. */
#include "server/intake.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "base/sys.h"
#include "server/head.h"

#define DRAIN_S 1.0               /* how long a refused connection's further bytes are dropped */
#define DRAIN_MAX (8u << 20)      /* ... and how many at most */
#define SWEEP_S 0.25
#define ACCEPT_PAUSE_S 0.1        /* out of file descriptors: accept again after this */

enum { D_HEAD, D_DRAIN };

typedef struct dconn {
    struct dconn *prev, *next;
    int fd, state;
    struct sockaddr_storage sa;
    socklen_t salen;
    srv_guard_conn *gc;
    double t0, last, drain_until;
    size_t seen;
    uint64_t drained;
} dconn;

struct srv_intake {
    srv_intake_opts o;
    int ep, stop_fd;
    pthread_t th;
    dconn *head;
    int n;
    double accept_paused_until, last_sweep;
    char tag_listen, tag_stop; /* epoll data for the two fds that are not connections */
    char buf[SRV_HEAD_MAX + 1];
};

static const char *reason(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void unlink_conn(srv_intake *d, dconn *c) {
    if (c->prev) c->prev->next = c->next;
    else d->head = c->next;
    if (c->next) c->next->prev = c->prev;
    d->n--;
}

/* Closes c (closing the fd also takes it out of the epoll set). */
static void drop(srv_intake *d, dconn *c) {
    unlink_conn(d, c);
    srv_guard_close(d->o.guard, c->gc); /* before close: the guard may shut c->fd until then */
    close(c->fd);
    free(c);
}

/* Writes the JSON error answer to fd (best effort: it is small and the socket's buffer empty). */
static void answer(int fd, int status, const char *code, const char *msg, const char *field,
                   bool no_body) {
    char *body = api_error_body(code, msg, field);
    size_t bl = body ? strlen(body) : 0;
    char date[64], hdr[320];
    time_t t = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&t, &tm));
    int hl = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                      status, reason(status), date, bl);
    struct iovec iov[2] = {{hdr, (size_t)hl}, {body, no_body ? 0 : bl}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    (void)!sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    free(body);
}

/* Reads and drops what a refused connection still sends, until its end, DRAIN_MAX or EAGAIN. */
static void drain(srv_intake *d, dconn *c) {
    for (;;) {
        ssize_t k = recv(c->fd, d->buf, sizeof d->buf, MSG_DONTWAIT);
        if (k > 0) {
            c->drained += (uint64_t)k;
            if (c->drained <= DRAIN_MAX) continue;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        drop(d, c);
        return;
    }
}

/* Answers c with an error and keeps it a moment to drop what follows: a close with unread bytes
 * would reset the connection, and the client could lose the answer. c must be in the epoll set. */
static void refuse(srv_intake *d, dconn *c, double now, int status, const char *code,
                   const char *msg, const char *field, bool no_body) {
    answer(c->fd, status, code, msg, field, no_body);
    shutdown(c->fd, SHUT_WR);
    c->state = D_DRAIN;
    c->drain_until = now + DRAIN_S;
    if (d->o.metrics) srv_metrics_request(d->o.metrics, -1, status, now - c->t0);
    drain(d, c);
}

/* Peeks at c's head: waits, refuses it, or hands it on. */
static void try_head(srv_intake *d, dconn *c, bool peer_done, double now) {
    ssize_t k = recv(c->fd, d->buf, sizeof d->buf, MSG_PEEK | MSG_DONTWAIT);
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (k <= 0) { /* closed by the client, or shut down by the guard */
        drop(d, c);
        return;
    }
    if ((size_t)k > c->seen) c->last = now;
    c->seen = (size_t)k;
    srv_head h;
    switch (srv_head_check(d->buf, (size_t)k, &h)) {
    case SRV_HEAD_MORE:
        if (peer_done)
            refuse(d, c, now, 400, "bad_request", "the connection ended before the request's headers did",
                   NULL, false);
        return;
    case SRV_HEAD_BAD:
        refuse(d, c, now, h.status, h.code, h.msg, h.field, h.is_head);
        return;
    case SRV_HEAD_OK:
        break;
    }
    epoll_ctl(d->ep, EPOLL_CTL_DEL, c->fd, NULL);
    if (!d->o.hand_on(d->o.cls, c->fd, (struct sockaddr *)&c->sa, c->salen, c->gc)) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = c};
        if (epoll_ctl(d->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
            drop(d, c);
            return;
        }
        refuse(d, c, now, 503, "service_unavailable",
               "the server is at max_connections; retry in a moment", NULL, h.is_head);
        return;
    }
    unlink_conn(d, c); /* the fd and the guard's record are the HTTP library's now */
    free(c);
}

static void accept_all(srv_intake *d, double now) {
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(d->o.listen_fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: stop watching the listening socket for a moment, or a
                 * level-triggered wait would spin on the connection that cannot be taken */
                epoll_ctl(d->ep, EPOLL_CTL_DEL, d->o.listen_fd, NULL);
                d->accept_paused_until = now + ACCEPT_PAUSE_S;
            }
            return;
        }
        if (d->n >= d->o.max_pending) {
            answer(fd, 503, "service_unavailable",
                   "too many connections are waiting for their headers; retry in a moment", NULL, false);
            close(fd);
            if (d->o.metrics) srv_metrics_request(d->o.metrics, -1, 503, 0);
            continue;
        }
        dconn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->sa = sa;
        c->salen = sl;
        c->t0 = c->last = now;
        c->next = d->head;
        if (d->head) d->head->prev = c;
        d->head = c;
        d->n++;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = c};
        if (epoll_ctl(d->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            drop(d, c);
            continue;
        }
        if (d->o.guard && !srv_guard_admit(d->o.guard, (struct sockaddr *)&sa)) {
            refuse(d, c, now, 429, "too_many_requests",
                   "too many connections from this address (per_ip_connections)", NULL, false);
            continue;
        }
        c->gc = srv_guard_open(d->o.guard, (struct sockaddr *)&sa, fd);
        try_head(d, c, false, now);
    }
}

/* Closes connections past their time: a head with no new byte for idle_timeout_s, a refused
 * connection past DRAIN_S; and watches the listening socket again after a pause. */
static void sweep(srv_intake *d, double now) {
    if (now - d->last_sweep < SWEEP_S) return;
    d->last_sweep = now;
    for (dconn *c = d->head, *nx; c; c = nx) {
        nx = c->next;
        bool late = c->state == D_DRAIN ? now > c->drain_until
                                        : d->o.idle_timeout_s > 0 && now - c->last > d->o.idle_timeout_s;
        if (late) drop(d, c);
    }
    if (d->accept_paused_until > 0 && now >= d->accept_paused_until) {
        d->accept_paused_until = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &d->tag_listen};
        epoll_ctl(d->ep, EPOLL_CTL_ADD, d->o.listen_fd, &ev);
    }
}

static void *intake_main(void *arg) {
    srv_intake *d = arg;
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(d->ep, evs, 64, (int)(SWEEP_S * 1000));
        double now = qd_now();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &d->tag_stop) goto out;
            if (p == &d->tag_listen) {
                accept_all(d, now);
                continue;
            }
            dconn *c = p;
            if (c->state == D_DRAIN) drain(d, c);
            else try_head(d, c, (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0, now);
        }
        sweep(d, now);
    }
out:
    while (d->head) drop(d, d->head);
    return NULL;
}

srv_intake *srv_intake_start(const srv_intake_opts *o, qd_err *err) {
    srv_intake *d = calloc(1, sizeof *d);
    if (!d) return qd_errf(err, "%s: out of memory", __func__), NULL;
    d->o = *o;
    if (d->o.max_pending < 1) d->o.max_pending = 1;
    d->ep = epoll_create1(EPOLL_CLOEXEC);
    d->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event el = {.events = EPOLLIN, .data.ptr = &d->tag_listen};
    struct epoll_event es = {.events = EPOLLIN, .data.ptr = &d->tag_stop};
    int e = 0;
    if (d->ep < 0 || d->stop_fd < 0 || epoll_ctl(d->ep, EPOLL_CTL_ADD, o->listen_fd, &el) != 0 ||
        epoll_ctl(d->ep, EPOLL_CTL_ADD, d->stop_fd, &es) != 0)
        e = errno;
    else
        e = pthread_create(&d->th, NULL, intake_main, d);
    if (e) {
        if (d->ep >= 0) close(d->ep);
        if (d->stop_fd >= 0) close(d->stop_fd);
        free(d);
        return qd_errf(err, "%s: cannot start the accepting thread: %s", __func__, strerror(e)), NULL;
    }
    return d;
}

void srv_intake_stop(srv_intake *d) {
    if (!d) return;
    uint64_t one = 1;
    (void)!write(d->stop_fd, &one, sizeof one);
    pthread_join(d->th, NULL);
    close(d->o.listen_fd);
    close(d->ep);
    close(d->stop_fd);
    free(d);
}
