/* The benchmark's C load engine: `python -m bench.loadgen persistent --engine c` in C.
 *
 * One process, epoll (level-triggered), non-blocking sockets, OpenSSL on memory BIOs: per
 * request one SSL_write (one TLS record) and one send(), as bench/loadgen.py does, at a
 * fraction of its CPU, so that the relay under test, not the generator, is the bottleneck.
 * bench/cengine.py builds it (gcc -O2 ... -lssl -lcrypto -lm, cached) and drives it:
 *
 *     loadgen-c tls|tcp HOST PORT CONNS INFLIGHT WARMUP DURATION PARALLEL REQUESTS_FILE
 *
 * REQUESTS_FILE holds the requests to send in turn (shared over the connections, as the
 * Python engine does): a native uint32 count, then each request as a native uint32 length
 * and its bytes. Protocol on the standard streams (one line each, stdout flushed):
 *
 *     out: ready N                      every connection open (TLS 1.3 handshake done)
 *     in:  start DELAY                  start sending DELAY seconds from now
 *     out: window start                 WARMUP s later: the measurement window opens
 *     out: window end                   DURATION s later: it closes, sending stops
 *     out: {...}                        one JSON object: the window's counts and latencies
 *
 * A connection that fails to open ends the process (exit 1, the reason on stderr). The
 * closed loop: each connection keeps INFLIGHT requests outstanding; an answer is counted at
 * each "\r\n\r\n" (the responder's answers have no body), is bad unless it starts with
 * "SIP/2.0 200 ", and sends the next request; its latency runs from its request's send to
 * the read that completed it. TLS 1.3 only, no certificate verification, no SNI, like the
 * Python engine (the relay's cost is measured, not the client's).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECV_SIZE (256 * 1024)
#define HIST_BUCKETS 4096
#define OPEN_TIMEOUT 30.0
#define CLOSE_GRACE 3.0

enum state { CONNECTING, HANDSHAKE, OPEN, CLOSING, DEAD };

typedef struct {
    int fd;
    enum state state;
    SSL *ssl;
    BIO *rbio, *wbio;  /* memory BIOs: what was received, what is to send */
    int lost;          /* the peer closed, or the connection failed */
    char why[200];     /* why it failed ("" when it did not) */
    double *times;     /* send times of the outstanding requests, a ring */
    unsigned head, count, cap;
    char *rx;          /* the part of an answer not whole yet */
    size_t rxlen, rxcap;
    char *tx;          /* bytes send() did not take yet */
    size_t txlen, txcap;
    int want_out;
} Conn;

static int use_tls;
static SSL_CTX *ctx;
static int ep;
static Conn *conns;
static int nconns, inflight;
static char **reqs;
static uint32_t *req_len;
static uint32_t nreqs;
static uint64_t sent, answered, bad;
static int measuring, stopping;
static uint64_t sent_window, answered_window;
static uint64_t hist[HIST_BUCKETS];
static double *lat;
static size_t nlat, latcap;
static unsigned char recvbuf[RECV_SIZE];
static unsigned char plainbuf[RECV_SIZE];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "bench loadgen-c: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) die("%s", "out of memory");
    return q;
}

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    *buf = xrealloc(*buf, c);
    *cap = c;
}

static void set_events(Conn *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void fail(Conn *c, const char *what, const char *detail) {
    if (c->state == DEAD) return;
    if (!c->why[0]) snprintf(c->why, sizeof c->why, "%s: %s", what, detail);
    c->lost = 1;
    c->state = DEAD;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static const char *ssl_error_text(void) {
    static char buf[160];
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (!e) return "error";
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

/* Send `len` bytes now, or keep what the socket does not take for EPOLLOUT. */
static void send_bytes(Conn *c, const void *data, size_t len) {
    if (c->state == DEAD || len == 0) return;
    if (c->txlen) {  /* already waiting: keep the order */
        grow(&c->tx, &c->txcap, c->txlen + len);
        memcpy(c->tx + c->txlen, data, len);
        c->txlen += len;
        return;
    }
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            fail(c, "send", strerror(errno));
            return;
        }
        n = 0;
    }
    if ((size_t)n < len) {
        grow(&c->tx, &c->txcap, len - n);
        memcpy(c->tx, (const char *)data + n, len - n);
        c->txlen = len - n;
        set_events(c, 1);
    }
}

static void flush_tx(Conn *c) {
    ssize_t n = send(c->fd, c->tx, c->txlen, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            fail(c, "send", strerror(errno));
        return;
    }
    memmove(c->tx, c->tx + n, c->txlen - n);
    c->txlen -= n;
    if (!c->txlen) set_events(c, 0);
}

/* What TLS wrote into the memory BIO, sent. */
static void flush_tls(Conn *c) {
    char *p;
    long n = BIO_get_mem_data(c->wbio, &p);
    if (n <= 0) return;
    send_bytes(c, p, n);
    (void)BIO_reset(c->wbio);
}

static int batch;  /* 1: the requests one read calls for leave in one send() */

static void send_request(Conn *c, int flush) {
    uint32_t k = (uint32_t)(sent % nreqs);
    sent++;
    if (measuring) sent_window++;
    if (c->count < c->cap) {
        c->times[(c->head + c->count) % c->cap] = now();
        c->count++;
    }
    if (use_tls) {
        if (SSL_write(c->ssl, reqs[k], req_len[k]) <= 0) {
            fail(c, "TLS write", ssl_error_text());
            return;
        }
        if (flush) flush_tls(c);
    } else {
        send_bytes(c, reqs[k], req_len[k]);
    }
}

static void record(double x) {
    if (x < 1e-7) x = 1e-7;
    long k = (long)(log(x * 1e7) * 50);
    if (k >= HIST_BUCKETS) k = HIST_BUCKETS - 1;
    hist[k]++;
    if (nlat == latcap) {
        latcap = latcap ? latcap * 2 : 65536;
        lat = xrealloc(lat, latcap * sizeof *lat);
    }
    lat[nlat++] = x;
}

static const char OK[] = "SIP/2.0 200 ";
static const char END[] = "\r\n\r\n";

/* Decrypted (or plain) bytes from the peer: count the whole answers, send as many requests. */
static void plain_received(Conn *c, const char *data, size_t len) {
    const char *buf = data;
    size_t blen = len, from = 0;
    if (c->rxlen) {
        grow(&c->rx, &c->rxcap, c->rxlen + len);
        memcpy(c->rx + c->rxlen, data, len);
        from = c->rxlen >= 3 ? c->rxlen - 3 : 0;
        c->rxlen += len;
        buf = c->rx;
        blen = c->rxlen;
    }
    size_t start = 0, n = 0;
    const char *p;
    while ((p = memmem(buf + from, blen - from, END, 4)) != NULL) {
        size_t end = (size_t)(p - buf) + 4;
        if (end - start < sizeof OK - 1 || memcmp(buf + start, OK, sizeof OK - 1) != 0) bad++;
        n++;
        start = from = end;
    }
    if (buf == c->rx) {
        memmove(c->rx, c->rx + start, blen - start);
        c->rxlen = blen - start;
    } else if (start < blen) {
        grow(&c->rx, &c->rxcap, blen - start);
        memcpy(c->rx, buf + start, blen - start);
        c->rxlen = blen - start;
    }
    if (!n) return;
    double t = now();
    for (size_t i = 0; i < n; i++) {
        if (!c->count) {  /* an answer to nothing sent */
            bad++;
            continue;
        }
        double sent_at = c->times[c->head];
        c->head = (c->head + 1) % c->cap;
        c->count--;
        answered++;
        if (measuring) {
            answered_window++;
            record(t - sent_at);
        }
    }
    if (!stopping && c->state == OPEN) {
        for (size_t i = 0; i < n && c->state == OPEN; i++) send_request(c, !batch);
        if (batch && use_tls && c->state == OPEN) flush_tls(c);
    }
}

static int opened, open_failed;

static void handshake(Conn *c) {
    int r = SSL_do_handshake(c->ssl);
    flush_tls(c);
    if (c->state == DEAD) {
        open_failed++;
        return;
    }
    if (r == 1) {
        c->state = OPEN;
        opened++;
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        fail(c, "TLS handshake", ssl_error_text());
        open_failed++;
    }
}

static void on_readable(Conn *c) {
    ssize_t n = recv(c->fd, recvbuf, sizeof recvbuf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        int was_open = c->state == HANDSHAKE;
        fail(c, "recv", strerror(errno));
        if (was_open) open_failed++;
        return;
    }
    if (n == 0) {  /* the peer closed */
        int was_opening = c->state == HANDSHAKE;
        if (c->state != CLOSING && !c->why[0])
            snprintf(c->why, sizeof c->why, "closed by the peer");
        c->lost = 1;
        c->state = DEAD;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        if (was_opening) open_failed++;
        return;
    }
    if (!use_tls) {
        plain_received(c, (const char *)recvbuf, n);
        return;
    }
    BIO_write(c->rbio, recvbuf, n);
    if (c->state == HANDSHAKE) {
        handshake(c);
        if (c->state != OPEN) return;
    }
    size_t got = 0;
    while (BIO_ctrl_pending(c->rbio) > 0 && c->state != DEAD) {
        int r = SSL_read(c->ssl, plainbuf + got, sizeof plainbuf - got);
        if (r > 0) {
            got += r;
            if (got == sizeof plainbuf) {
                plain_received(c, (const char *)plainbuf, got);
                got = 0;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN) break;
        fail(c, "TLS read", ssl_error_text());
        return;
    }
    if (got && c->state != DEAD) plain_received(c, (const char *)plainbuf, got);
    if (c->state != DEAD) flush_tls(c);  /* e.g. a key update's answer */
}

static void on_connected(Conn *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
        fail(c, "connect", strerror(err));
        open_failed++;
        return;
    }
    set_events(c, 0);
    if (!use_tls) {
        c->state = OPEN;
        opened++;
        return;
    }
    c->state = HANDSHAKE;
    handshake(c);
}

static struct addrinfo *target;

static void start_connect(Conn *c) {
    c->fd = socket(target->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    if (use_tls) {
        c->ssl = SSL_new(ctx);
        c->rbio = BIO_new(BIO_s_mem());
        c->wbio = BIO_new(BIO_s_mem());
        if (!c->ssl || !c->rbio || !c->wbio) die("%s", "SSL_new failed");
        SSL_set_bio(c->ssl, c->rbio, c->wbio);
        SSL_set_connect_state(c->ssl);
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = 1;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    if (connect(c->fd, target->ai_addr, target->ai_addrlen) < 0 && errno != EINPROGRESS) {
        fail(c, "connect", strerror(errno));
        open_failed++;
    }
}

static void dispatch(struct epoll_event *ev) {
    Conn *c = ev->data.ptr;
    if (c->state == DEAD) return;
    if (c->state == CONNECTING) {
        if (ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
        return;
    }
    if (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
    if (c->state != DEAD && (ev->events & EPOLLOUT) && c->txlen) flush_tx(c);
}

/* Wait for events until `deadline` (CLOCK_MONOTONIC), or for one batch when it is 0. */
static void poll_until(double deadline) {
    struct epoll_event evs[256];
    for (;;) {
        int timeout = 0;
        if (deadline > 0) {
            double left = deadline - now();
            if (left <= 0) return;
            timeout = (int)(left * 1000) + 1;
        }
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) dispatch(&evs[i]);
        if (deadline <= 0) return;
    }
}

static void load_requests(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the requests file %s", path);
    if (fread(&nreqs, 4, 1, f) != 1 || nreqs == 0) die("%s", "bad requests file");
    reqs = xrealloc(NULL, nreqs * sizeof *reqs);
    req_len = xrealloc(NULL, nreqs * sizeof *req_len);
    for (uint32_t i = 0; i < nreqs; i++) {
        if (fread(&req_len[i], 4, 1, f) != 1 || req_len[i] == 0 || req_len[i] > 16384)
            die("%s", "bad requests file");
        reqs[i] = xrealloc(NULL, req_len[i]);
        if (fread(reqs[i], 1, req_len[i], f) != req_len[i]) die("%s", "short requests file");
    }
    fclose(f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_ms(const char *key, double q, int last) {
    if (!nlat) {
        printf("\"%s\": null%s", key, last ? "" : ", ");
        return;
    }
    size_t i = (size_t)(q * nlat);
    if (i > nlat - 1) i = nlat - 1;
    printf("\"%s\": %.6f%s", key, lat[i] * 1000, last ? "" : ", ");
}

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20 || ch > 0x7e) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    if (argc != 10 && argc != 11) {
        fprintf(stderr,
                "usage: %s tls|tcp HOST PORT CONNS INFLIGHT WARMUP DURATION PARALLEL "
                "REQUESTS_FILE [each|batch]\n",
                argv[0]);
        return 2;
    }
    batch = argc == 11 && strcmp(argv[10], "batch") == 0;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    use_tls = strcmp(argv[1], "tls") == 0;
    if (!use_tls && strcmp(argv[1], "tcp") != 0) die("unknown scheme %s", argv[1]);
    const char *host = argv[2], *port = argv[3];
    nconns = atoi(argv[4]);
    inflight = atoi(argv[5]);
    double warmup = atof(argv[6]), duration = atof(argv[7]);
    int parallel = atoi(argv[8]);
    if (nconns < 1 || inflight < 1 || parallel < 1) die("%s", "bad counts");
    load_requests(argv[9]);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int gai = getaddrinfo(host, port, &hints, &target);
    if (gai) die("getaddrinfo: %s", gai_strerror(gai));

    if (use_tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx) die("%s", "SSL_CTX_new failed");
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    conns = calloc(nconns, sizeof *conns);
    if (!conns) die("%s", "out of memory");
    for (int i = 0; i < nconns; i++) {
        conns[i].cap = inflight;
        conns[i].times = xrealloc(NULL, inflight * sizeof(double));
    }

    /* open: at most `parallel` connections opening at a time */
    int started = 0;
    double open_deadline = now() + OPEN_TIMEOUT;
    while (opened + open_failed < nconns) {
        while (started < nconns && started - opened - open_failed < parallel)
            start_connect(&conns[started++]);
        if (now() > open_deadline) break;
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) dispatch(&evs[i]);
    }
    if (opened < nconns) {
        int failed = 0;
        const char *why = "timed out";
        for (int i = 0; i < nconns; i++)
            if (conns[i].state != OPEN) {
                failed++;
                if (conns[i].why[0]) why = conns[i].why;
            }
        fprintf(stderr, "bench loadgen-c: %d connection(s) failed to open: %s\n", failed, why);
        return 1;
    }
    printf("ready %d\n", opened);
    fflush(stdout);

    char line[128];
    if (!fgets(line, sizeof line, stdin)) die("%s", "standard input closed before the start");
    double delay = 0;
    if (sscanf(line, "start %lf", &delay) != 1) die("expected 'start DELAY', got %s", line);
    double t_start = now() + (delay > 0 ? delay : 0);
    poll_until(t_start);
    for (int i = 0; i < nconns; i++)
        for (int k = 0; k < inflight && conns[i].state == OPEN; k++) send_request(&conns[i], 1);
    poll_until(t_start + warmup);
    measuring = 1;
    printf("window start\n");
    fflush(stdout);
    poll_until(t_start + warmup + duration);
    measuring = 0;
    stopping = 1;
    printf("window end\n");
    fflush(stdout);

    /* a failed connection is lost too: count each once */
    int errors = 0;
    for (int i = 0; i < nconns; i++) errors += conns[i].lost;
    char *samples[3];
    int nsamples = 0;
    for (int i = 0; i < nconns && nsamples < 3; i++)
        if (conns[i].why[0] && strcmp(conns[i].why, "closed by the peer") != 0)
            samples[nsamples++] = conns[i].why;

    /* close: close_notify and FIN, then the peer's close (or the grace time) */
    for (int i = 0; i < nconns; i++) {
        Conn *c = &conns[i];
        if (c->state != OPEN) continue;
        if (use_tls) {
            SSL_shutdown(c->ssl);
            flush_tls(c);
        }
        if (c->state == DEAD) continue;
        c->state = CLOSING;
        if (!c->txlen) shutdown(c->fd, SHUT_WR);
    }
    double close_deadline = now() + CLOSE_GRACE;
    for (;;) {
        int left = 0;
        for (int i = 0; i < nconns; i++) left += conns[i].state != DEAD;
        if (!left || now() >= close_deadline) break;
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) dispatch(&evs[i]);
    }
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != DEAD) close(conns[i].fd);

    qsort(lat, nlat, sizeof *lat, cmp_double);
    printf("{\"round_trips\": %llu, \"sent_in_window\": %llu, \"answered\": %llu, "
           "\"sent\": %llu, \"bad_responses\": %llu, \"errors\": %d, \"error_samples\": [",
           (unsigned long long)answered_window, (unsigned long long)sent_window,
           (unsigned long long)answered, (unsigned long long)sent, (unsigned long long)bad,
           errors);
    for (int i = 0; i < nsamples; i++) {
        if (i) printf(", ");
        print_json_string(samples[i]);
    }
    printf("], \"latency_ms\": {");
    print_ms("p50", 0.50, 0);
    print_ms("p99", 0.99, 0);
    print_ms("p99.9", 0.999, 0);
    print_ms("max", 1.0, 1);
    printf("}, \"latency_hist\": {");
    int first = 1;
    for (int k = 0; k < HIST_BUCKETS; k++) {
        if (!hist[k]) continue;
        printf("%s\"%d\": %llu", first ? "" : ", ", k, (unsigned long long)hist[k]);
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
    return 0;
}
