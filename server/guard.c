/* Connection guard (see guard.h). One lock over a list of every open connection; the lists are
 * as long as max_connections, so the linear scans cost microseconds per accept and per reaper
 * pass. */
#include "server/guard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/sys.h"

#define MAX_PROXIES 64
#define REAP_EVERY_S 0.25

/* An address in one form: IPv4 as its IPv4-mapped IPv6 address. */
typedef struct ipaddr {
    unsigned char b[16];
} ipaddr;

typedef struct cidr {
    ipaddr a;
    int bits; /* prefix length over the 128-bit form */
} cidr;

enum { ST_WAIT, ST_BUSY }; /* waiting for a request's headers (or idle) / inside a request */

struct srv_guard_conn {
    srv_guard_conn *prev, *next;
    ipaddr peer, client;
    int fd;
    bool proxied;   /* the peer is a trusted proxy */
    bool closing;   /* shut down by the guard; no longer counted */
    bool counted;   /* a request counted against client (proxied connections) */
    bool body_open; /* a body is expected and has not ended */
    int state;
    int served;     /* requests answered on this connection */
    double since;   /* when the current state began */
    uint64_t body_bytes;
};

struct srv_guard {
    srv_guard_opts o;
    cidr proxies[MAX_PROXIES];
    int n_proxies;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    pthread_t reaper;
    srv_guard_conn *head;
    srv_guard_stats st;
};

static bool addr_from_sockaddr(const struct sockaddr *sa, ipaddr *out) {
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        out->b[10] = out->b[11] = 0xff;
        memcpy(out->b + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out->b, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

/* A textual IPv4 or IPv6 address (IPv6 optionally in brackets). */
static bool addr_parse(const char *s, size_t n, ipaddr *out) {
    char buf[64];
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') s++, n -= 2;
    if (n == 0 || n >= sizeof buf) return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    memset(out, 0, sizeof *out);
    struct in_addr a4;
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        out->b[10] = out->b[11] = 0xff;
        memcpy(out->b + 12, &a4, 4);
        return true;
    }
    return inet_pton(AF_INET6, buf, out->b) == 1;
}

static bool addr_eq(const ipaddr *a, const ipaddr *b) { return !memcmp(a->b, b->b, 16); }

static bool cidr_has(const cidr *c, const ipaddr *a) {
    int full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->a.b, a->b, (size_t)full)) return false;
    if (!rest) return true;
    unsigned char m = (unsigned char)(0xff << (8 - rest));
    return (c->a.b[full] & m) == (a->b[full] & m);
}

static bool trusted(const srv_guard *g, const ipaddr *a) {
    for (int i = 0; i < g->n_proxies; i++)
        if (cidr_has(&g->proxies[i], a)) return true;
    return false;
}

static int parse_proxies(srv_guard *g, const char *list, qd_err *err) {
    const char *p = list ? list : "";
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t') p++;
        if (!*p) break;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ' && *e != '\t') e++;
        const char *slash = memchr(p, '/', (size_t)(e - p));
        size_t alen = (size_t)((slash ? slash : e) - p);
        if (g->n_proxies == MAX_PROXIES)
            return qd_errf(err, "trusted_proxies: more than %d entries", MAX_PROXIES);
        cidr *c = &g->proxies[g->n_proxies];
        bool v4 = memchr(p, '.', alen) != NULL && !memchr(p, ':', alen);
        int bits = 128;
        bool ok = addr_parse(p, alen, &c->a);
        if (ok && slash) {
            char *end;
            long b = strtol(slash + 1, &end, 10);
            ok = end == e && end > slash + 1 && b >= 0 && b <= (v4 ? 32 : 128);
            bits = (int)b + (v4 ? 96 : 0);
        }
        if (!ok)
            return qd_errf(err, "trusted_proxies: '%.*s' is not an address or ADDR/BITS",
                           (int)(e - p), p);
        c->bits = bits;
        g->n_proxies++;
        p = e;
    }
    return QD_OK;
}

/* Under the lock: closes c's socket for reading and writing; libmicrohttpd's thread then sees
 * the end of the stream and closes the connection (the fd stays libmicrohttpd's to close). */
static void shut(srv_guard_conn *c) {
    c->closing = true;
    shutdown(c->fd, SHUT_RDWR);
}

static void *reaper_main(void *arg) {
    srv_guard *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        double now = qd_now();
        for (srv_guard_conn *c = g->head; c; c = c->next) {
            if (c->closing) continue;
            double age = now - c->since;
            if (c->state == ST_WAIT) {
                double limit = c->proxied && c->served ? g->o.idle_timeout_s : g->o.header_timeout_s;
                if (limit > 0 && age > limit) {
                    shut(c);
                    g->st.header_timeouts++;
                }
            } else if (c->body_open && g->o.body_min_rate > 0 && age > g->o.body_grace_s &&
                       (double)c->body_bytes < g->o.body_min_rate * (age - g->o.body_grace_s)) {
                shut(c);
                g->st.body_too_slow++;
            }
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = ts.tv_nsec + (long)(REAP_EVERY_S * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

srv_guard *srv_guard_new(const srv_guard_opts *o, qd_err *err) {
    srv_guard *g = calloc(1, sizeof *g);
    if (!g) return qd_errf(err, "%s: out of memory", __func__), NULL;
    g->o = *o;
    g->o.trusted_proxies = NULL;
    if (parse_proxies(g, o->trusted_proxies, err)) {
        free(g);
        return NULL;
    }
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    int e = pthread_create(&g->reaper, NULL, reaper_main, g);
    if (e) {
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        free(g);
        return qd_errf(err, "%s: cannot start a thread: %s", __func__, strerror(e)), NULL;
    }
    return g;
}

void srv_guard_free(srv_guard *g) {
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    g->stop = true;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->reaper, NULL);
    while (g->head) {
        srv_guard_conn *c = g->head;
        g->head = c->next;
        free(c);
    }
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* Which connection an address at its limit gives up for a new one: one idle between requests,
 * or one whose first request's headers are still not in after FRESH_S (a client sends those
 * at once). A connection that has just opened is left alone: displacing it would only make its
 * client reconnect and displace the next. */
#define FRESH_S 1.0
static bool displaceable(const srv_guard_conn *c, double now) {
    return c->state == ST_WAIT && (c->served > 0 || now - c->since > FRESH_S);
}

bool srv_guard_admit(srv_guard *g, const struct sockaddr *sa) {
    ipaddr a;
    if (!g || g->o.per_ip <= 0 || !addr_from_sockaddr(sa, &a)) return true;
    pthread_mutex_lock(&g->mu);
    bool ok = true;
    if (!trusted(g, &a)) {
        int n = 0;
        srv_guard_conn *oldest = NULL;
        double now = qd_now();
        for (srv_guard_conn *c = g->head; c; c = c->next) {
            if (c->closing || !addr_eq(&c->peer, &a)) continue;
            n++;
            if (displaceable(c, now) && (!oldest || c->since < oldest->since)) oldest = c;
        }
        if (n >= g->o.per_ip) {
            if (oldest) {
                shut(oldest);
                g->st.evicted++;
            } else {
                ok = false;
                g->st.refused++;
            }
        }
    }
    pthread_mutex_unlock(&g->mu);
    return ok;
}

srv_guard_conn *srv_guard_open(srv_guard *g, const struct sockaddr *sa, int fd) {
    if (!g) return NULL;
    srv_guard_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL; /* unguarded, but served */
    if (sa) addr_from_sockaddr(sa, &c->peer);
    c->client = c->peer;
    c->fd = fd;
    c->state = ST_WAIT;
    c->since = qd_now();
    pthread_mutex_lock(&g->mu);
    c->proxied = trusted(g, &c->peer);
    c->next = g->head;
    if (g->head) g->head->prev = c;
    g->head = c;
    pthread_mutex_unlock(&g->mu);
    return c;
}

void srv_guard_close(srv_guard *g, srv_guard_conn *c) {
    if (!g || !c) return;
    pthread_mutex_lock(&g->mu);
    if (c->prev) c->prev->next = c->next;
    else g->head = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&g->mu);
    free(c);
}

/* The client behind a trusted proxy: X-Forwarded-For read from the right (each proxy appends the
 * address it saw), skipping addresses that are trusted proxies themselves; entries further left
 * were written by the client and are not believed. */
static ipaddr xff_client(const srv_guard *g, const ipaddr *peer, const char *xff) {
    ipaddr cur = *peer;
    const char *end = xff + strlen(xff);
    for (int hops = 0; end > xff && hops < 32; hops++) {
        const char *start = end;
        while (start > xff && start[-1] != ',') start--;
        const char *a = start, *b = end;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        ipaddr x;
        if (!addr_parse(a, (size_t)(b - a), &x)) break;
        cur = x;
        if (!trusted(g, &x)) break;
        end = start > xff ? start - 1 : xff;
    }
    return cur;
}

bool srv_guard_request_begin(srv_guard *g, srv_guard_conn *c, const char *xff) {
    if (!g || !c) return true;
    pthread_mutex_lock(&g->mu);
    c->state = ST_BUSY;
    c->since = qd_now();
    c->body_bytes = 0;
    c->body_open = true;
    c->counted = false;
    c->client = c->proxied && xff ? xff_client(g, &c->peer, xff) : c->peer;
    bool ok = true;
    if (c->proxied && g->o.per_ip > 0) {
        int n = 0;
        for (srv_guard_conn *o = g->head; o; o = o->next)
            if (o->counted && addr_eq(&o->client, &c->client)) n++;
        if (n >= g->o.per_ip) {
            ok = false;
            g->st.client_limited++;
        } else {
            c->counted = true;
        }
    }
    pthread_mutex_unlock(&g->mu);
    return ok;
}

void srv_guard_body(srv_guard *g, srv_guard_conn *c, size_t n) {
    if (!g || !c) return;
    pthread_mutex_lock(&g->mu);
    c->body_bytes += n;
    pthread_mutex_unlock(&g->mu);
}

void srv_guard_body_done(srv_guard *g, srv_guard_conn *c) {
    if (!g || !c) return;
    pthread_mutex_lock(&g->mu);
    c->body_open = false;
    pthread_mutex_unlock(&g->mu);
}

void srv_guard_request_end(srv_guard *g, srv_guard_conn *c) {
    if (!g || !c) return;
    pthread_mutex_lock(&g->mu);
    c->state = ST_WAIT;
    c->since = qd_now();
    c->body_open = false;
    c->counted = false;
    c->served++;
    pthread_mutex_unlock(&g->mu);
}

srv_guard_stats srv_guard_get_stats(srv_guard *g) {
    srv_guard_stats s = {0};
    if (!g) return s;
    pthread_mutex_lock(&g->mu);
    s = g->st;
    pthread_mutex_unlock(&g->mu);
    return s;
}
