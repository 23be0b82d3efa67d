/* loadgen: the benchmark's targets and load generator, in C so that the
 * client side is never the bottleneck.  Compiled by bench/run.py into
 * bench/out/.  Every subcommand prints one JSON object on stdout.
 *
 *   loadgen target                       source/sink/echo servers (epoll); prints ports
 *   loadgen bulk down|up N TPORT PPORT SECS     N tunnels of bulk data
 *   loadgen connrate CONC TPORT PPORT SECS [socks|auth|http]
 *                                        handshake+CONNECT+64B echo+close
 *   loadgen pingpong TPORT PPORT SECS           64-byte ping-pong RTT
 *   loadgen idle N TPORT PPORT                  open N idle tunnels, wait, echo on all
 *   loadgen relay PORT                   the C reference SOCKS5 relay (PORT 0: any); prints its port
 *
 * PPORT 0 means a direct connection to the target; otherwise a SOCKS5
 * proxy (no auth) on 127.0.0.1:PPORT.  All loops are bounded by SECS or N.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ (256 * 1024)
static char buf[BUFSZ];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

static int read_exact(int fd, char *p, int n) {
    int got = 0;
    while (got < n) {
        ssize_t r = recv(fd, p + got, n - got, 0);
        if (r <= 0) return -1;
        got += r;
    }
    return 0;
}

static int write_all(int fd, const char *p, int n) {
    int put = 0;
    while (put < n) {
        ssize_t r = send(fd, p + put, n - put, MSG_NOSIGNAL);
        if (r < 0 && errno == EAGAIN) {
            struct pollfd pfd = {fd, POLLOUT, 0};
            poll(&pfd, 1, 1000);
            continue;
        }
        if (r <= 0) return -1;
        put += r;
    }
    return 0;
}

static const char GREETING[3] = {5, 1, 0};

static void connect_request(char req[10], int tport) {
    req[0] = 5; req[1] = 1; req[2] = 0; req[3] = 1;
    req[4] = 127; req[5] = 0; req[6] = 0; req[7] = 1;
    req[8] = tport >> 8; req[9] = tport & 0xff;
}

/* A blocking tunnel (or direct connection) to 127.0.0.1:tport; -1 on failure. */
static int open_tunnel(int tport, int pport) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    nodelay(fd);
    struct sockaddr_in sa = loopback(pport ? pport : tport);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
    if (pport) {
        char reply[10], req[10];
        connect_request(req, tport);
        if (write_all(fd, GREETING, 3) || read_exact(fd, reply, 2) || reply[1] != 0 ||
            write_all(fd, req, 10) || read_exact(fd, reply, 10) || reply[1] != 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* ---- target: source (writes forever), sink (reads forever), echo ---- */

enum { SOURCE, SINK, ECHO };

static int listener(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = loopback(0);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 4096)) die("listen");
    nonblock(fd);
    return fd;
}

static int port_of(int fd) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    return ntohs(sa.sin_port);
}

static int cmd_target(void) {
    int ls[3], ep = epoll_create1(0);
    struct epoll_event ev, evs[256];
    for (int k = 0; k < 3; k++) {
        ls[k] = listener();
        ev.events = EPOLLIN;
        ev.data.u64 = ((uint64_t)(k + 8) << 32) | (uint32_t)ls[k];
        epoll_ctl(ep, EPOLL_CTL_ADD, ls[k], &ev);
    }
    printf("{\"source\": %d, \"sink\": %d, \"echo\": %d}\n", port_of(ls[0]), port_of(ls[1]), port_of(ls[2]));
    fflush(stdout);
    for (;;) { /* runs until the driver kills it */
        int n = epoll_wait(ep, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            int kind = evs[i].data.u64 >> 32, fd = (int)(uint32_t)evs[i].data.u64;
            if (kind >= 8) {
                for (int k = 0; k < 64; k++) {
                    int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    nodelay(c);
                    ev.events = (kind - 8 == SOURCE) ? (EPOLLOUT | EPOLLRDHUP) : EPOLLIN;
                    ev.data.u64 = ((uint64_t)(kind - 8) << 32) | (uint32_t)c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            int dead = (evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0;
            if (!dead && kind == SOURCE) {
                if (send(fd, buf, BUFSZ, MSG_NOSIGNAL) < 0 && errno != EAGAIN) dead = 1;
            } else if (!dead) {
                for (int k = 0; k < 16; k++) {
                    ssize_t r = recv(fd, buf, kind == ECHO ? 65536 : BUFSZ, 0);
                    if (r == 0 || (r < 0 && errno != EAGAIN)) { dead = 1; break; }
                    if (r < 0) break;
                    if (kind == ECHO && write_all(fd, buf, r)) { dead = 1; break; }
                }
            }
            if (dead) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
            }
        }
    }
    return 0;
}

/* ---- bulk: N tunnels, download from source or upload to sink ---- */

static int cmd_bulk(int up, int n, int tport, int pport, double secs) {
    int ep = epoll_create1(0), fds[64];
    struct epoll_event ev, evs[64];
    if (n > 64) n = 64;
    for (int i = 0; i < n; i++) {
        fds[i] = open_tunnel(tport, pport);
        if (fds[i] < 0) die("open tunnel");
        nonblock(fds[i]);
        ev.events = up ? EPOLLOUT : EPOLLIN;
        ev.data.fd = fds[i];
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    long long total = 0;
    double c0 = cpu_self(), t0 = now(), deadline = t0 + secs, t = t0;
    while (t < deadline) {
        int k = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < k; i++) {
            ssize_t r = up ? send(evs[i].data.fd, buf, BUFSZ, MSG_NOSIGNAL) : recv(evs[i].data.fd, buf, BUFSZ, 0);
            if (r > 0) total += r;
            else if (r == 0 || errno != EAGAIN) die("bulk transfer");
        }
        t = now();
    }
    double wall = t - t0, cpu = cpu_self() - c0;
    printf("{\"bytes\": %lld, \"secs\": %.4f, \"gbps\": %.4f, \"client_cpu\": %.4f}\n", total, wall,
           total * 8 / wall / 1e9, cpu / wall);
    return 0;
}

/* ---- connrate: CONC clients, each: connect, handshake, CONNECT, 64 B echo, close ----
 * MODE socks: SOCKS5 without auth; auth: SOCKS5 offering only method 0x02 and
 * sending RFC 1929 user "u", password "p"; http: an HTTP CONNECT request, then
 * the response head up to CRLFCRLF (status must be 200). */

enum { M_SOCKS, M_AUTH, M_HTTP };
enum { S_CONNECTING, S_METHOD, S_AUTH, S_REPLY, S_HEAD, S_ECHO };

static const char GREETING_AUTH[3] = {5, 1, 2};
static const char AUTH_REQUEST[] = {1, 1, 'u', 1, 'p'}; /* version 1, ulen, user, plen, password */

#define HEADMAX 1024
struct slot { int fd, state, got; double start; char in[HEADMAX]; };

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, long n, double p) { return n ? v[(long)(p * (n - 1))] : 0; }

static void slot_start(int ep, struct slot *s, int pport, int tport) {
    struct epoll_event ev;
    struct sockaddr_in sa = loopback(pport ? pport : tport);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    nodelay(s->fd);
    s->state = S_CONNECTING;
    s->got = 0;
    s->start = now();
    connect(s->fd, (struct sockaddr *)&sa, sizeof sa);
    ev.events = EPOLLOUT;
    ev.data.ptr = s;
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
}

/* A complete HTTP response head with status 200 and nothing after it? */
static int http_head_ok(const char *p, int n) {
    return n >= 12 && !memcmp(p, "HTTP/1.", 7) && !memcmp(p + 8, " 200", 4) && !memcmp(p + n - 4, "\r\n\r\n", 4);
}

static int sendn(int fd, const char *p, int n) { return send(fd, p, n, MSG_NOSIGNAL) == n ? 0 : -1; }

#define MAXLAT 4000000
static int cmd_connrate(int conc, int tport, int pport, double secs, int mode) {
    static struct slot slots[1024];
    double *lat = malloc(sizeof(double) * MAXLAT);
    long nlat = 0, errors = 0;
    int ep = epoll_create1(0);
    struct epoll_event ev, evs[1024];
    char req[10], msg[64], http_req[128];
    memset(msg, 'x', sizeof msg);
    connect_request(req, tport);
    int http_len = snprintf(http_req, sizeof http_req, "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                            tport, tport);
    if (conc > 1024) conc = 1024;
    double c0 = cpu_self(), t0 = now(), deadline = t0 + secs, t = t0;
    for (int i = 0; i < conc; i++) slot_start(ep, &slots[i], pport, tport);
    while (t < deadline && nlat < MAXLAT) {
        int k = epoll_wait(ep, evs, 1024, 100);
        for (int i = 0; i < k; i++) {
            struct slot *s = evs[i].data.ptr;
            int fail = (evs[i].events & EPOLLERR) != 0, done = 0;
            if (!fail && s->state == S_CONNECTING) {
                if (!pport) {
                    fail = sendn(s->fd, msg, 64);
                    s->state = S_ECHO;
                } else if (mode == M_HTTP) {
                    fail = sendn(s->fd, http_req, http_len);
                    s->state = S_HEAD;
                } else {
                    fail = sendn(s->fd, mode == M_AUTH ? GREETING_AUTH : GREETING, 3);
                    s->state = S_METHOD;
                }
                ev.events = EPOLLIN;
                ev.data.ptr = s;
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
            } else if (!fail) {
                int want = s->state == S_METHOD || s->state == S_AUTH ? 2
                           : s->state == S_REPLY                      ? 10
                           : s->state == S_HEAD                       ? HEADMAX
                                                                      : 64;
                ssize_t r = recv(s->fd, s->in + s->got, want - s->got, 0);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    fail = 1;
                } else if (s->state == S_HEAD) {
                    s->got += r;
                    if (memmem(s->in, s->got, "\r\n\r\n", 4)) {
                        fail = !http_head_ok(s->in, s->got) || sendn(s->fd, msg, 64);
                        s->state = S_ECHO;
                        s->got = 0;
                    } else if (s->got == HEADMAX) {
                        fail = 1;
                    }
                } else if ((s->got += r) == want) {
                    s->got = 0;
                    if (s->state == S_METHOD && mode == M_AUTH) {
                        fail = s->in[1] != 2 || sendn(s->fd, AUTH_REQUEST, sizeof AUTH_REQUEST);
                        s->state = S_AUTH;
                    } else if (s->state == S_METHOD || s->state == S_AUTH) {
                        fail = s->in[1] != 0 || sendn(s->fd, req, 10);
                        s->state = S_REPLY;
                    } else if (s->state == S_REPLY) {
                        fail = s->in[1] != 0 || sendn(s->fd, msg, 64);
                        s->state = S_ECHO;
                    } else {
                        done = 1;
                    }
                }
            }
            if (done || fail) {
                close(s->fd); /* closing fd removes it from the epoll set */
                if (done) lat[nlat++] = now() - s->start;
                else errors++;
                slot_start(ep, s, pport, tport);
            }
        }
        t = now();
    }
    double wall = t - t0, cpu = cpu_self() - c0;
    qsort(lat, nlat, sizeof(double), cmp_double);
    printf("{\"conns\": %ld, \"errors\": %ld, \"secs\": %.4f, \"rate\": %.1f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"client_cpu\": %.4f}\n",
           nlat, errors, wall, nlat / wall, pct(lat, nlat, 0.5) * 1e6, pct(lat, nlat, 0.99) * 1e6, cpu / wall);
    return 0;
}

/* ---- pingpong: 64 bytes there and back over one tunnel ---- */

static int cmd_pingpong(int tport, int pport, double secs) {
    double *lat = malloc(sizeof(double) * MAXLAT);
    long n = 0;
    char msg[64];
    memset(msg, 'p', sizeof msg);
    int fd = open_tunnel(tport, pport);
    if (fd < 0) die("open tunnel");
    for (int i = 0; i < 200; i++) /* warm up */
        if (write_all(fd, msg, 64) || read_exact(fd, buf, 64)) die("ping");
    double c0 = cpu_self(), t0 = now(), deadline = t0 + secs, t = t0;
    while (t < deadline && n < MAXLAT) {
        if (write_all(fd, msg, 64) || read_exact(fd, buf, 64)) die("ping");
        double t1 = now();
        lat[n++] = t1 - t;
        t = t1;
    }
    double wall = t - t0, cpu = cpu_self() - c0;
    qsort(lat, n, sizeof(double), cmp_double);
    printf("{\"pings\": %ld, \"p50_us\": %.2f, \"p99_us\": %.2f, \"client_cpu\": %.4f}\n", n,
           pct(lat, n, 0.5) * 1e6, pct(lat, n, 0.99) * 1e6, cpu / wall);
    return 0;
}

/* ---- idle: open N tunnels, report, wait for a line on stdin, echo 8 bytes on each ---- */

static int cmd_idle(int n, int tport, int pport) {
    int *fds = malloc(sizeof(int) * n), opened = 0, ok = 0;
    double t0 = now();
    for (int i = 0; i < n; i++) {
        fds[i] = open_tunnel(tport, pport);
        if (fds[i] >= 0) opened++;
    }
    printf("{\"opened\": %d, \"open_secs\": %.3f}\n", opened, now() - t0);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    char msg[8] = "idle-ok";
    for (int i = 0; i < n; i++) { /* all still relay? (send all first, then read) */
        if (fds[i] >= 0 && write_all(fds[i], msg, 8)) { close(fds[i]); fds[i] = -1; }
    }
    for (int i = 0; i < n; i++) {
        if (fds[i] < 0) continue;
        struct timeval tv = {5, 0};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (read_exact(fds[i], buf, 8) == 0 && memcmp(buf, msg, 8) == 0) ok++;
        close(fds[i]);
    }
    printf("{\"opened\": %d, \"echoed\": %d}\n", opened, ok);
    return 0;
}

/* ---- relay: a minimal single-threaded epoll SOCKS5 relay (the C reference) ----
 * No-auth SOCKS5 CONNECT to an IPv4 address only.  Each direction copies with
 * recv/send through the shared buffer while chunks are small (one syscall each
 * way, as for ping-pong); on a short send, or once a read fills COPY_CHUNK, it
 * switches for good to splice() through a pipe of its own, which is then that
 * direction's only (bounded) buffer, filled from one side while the other drains it.  EOF is passed on as shutdown(SHUT_WR);
 * the tunnel closes when both directions have ended, or on any error.
 * Edge-triggered: every pump runs until EAGAIN.  No handshake timeout. */

#define COPY_CHUNK 65536
#define PIPE_BYTES (1 << 20)
enum { H_GREETING, H_REQUEST, H_CONNECTING, H_RELAY };

struct rconn;
struct rend { struct rconn *c; int side; }; /* side 0 = client, 1 = upstream */
struct rdir { int pipe[2], cap, pending, eof, shut; }; /* direction d: fd[d] -> fd[1 - d] */
struct rconn {
    struct rend end[2];
    int fd[2], state, hlen, dead;
    struct rdir dir[2];
    unsigned char hs[2 + 255 + 10 + 256]; /* greeting, request, and early data up to 256 bytes */
    struct rconn *next_dead;
};

static struct rconn *dead_list;

static void rconn_close(struct rconn *c) {
    if (c->dead) return;
    c->dead = 1;
    for (int i = 0; i < 2; i++) {
        if (c->fd[i] >= 0) close(c->fd[i]); /* also leaves the epoll set */
        for (int j = 0; j < 2; j++)
            if (c->dir[i].pipe[j] >= 0) close(c->dir[i].pipe[j]);
    }
    c->next_dead = dead_list; /* freed after this batch of events: later events may point at it */
    dead_list = c;
}

static int rwatch(int ep, struct rconn *c, int side) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &c->end[side]};
    return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd[side], &ev);
}

static void rreply(struct rconn *c, int code) {
    char reply[10] = {5, code, 0, 1, 0, 0, 0, 0, 0, 0};
    if (sendn(c->fd[0], reply, 10) || code) rconn_close(c);
}

/* Relay direction d until it would block; 0 = keep going, -1 = the tunnel failed. */
static int rpump(struct rconn *c, int d) {
    struct rdir *D = &c->dir[d];
    int src = c->fd[d], dst = c->fd[1 - d];
    while (!D->shut && D->pipe[0] < 0 && !D->eof) { /* copy mode: small chunks, one syscall each way */
        ssize_t n = recv(src, buf, COPY_CHUNK, 0);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        if (n == 0) {
            D->eof = 1;
            break;
        }
        ssize_t m = send(dst, buf, n, MSG_NOSIGNAL);
        if (m < 0 && errno != EAGAIN) return -1;
        if (m < 0) m = 0;
        if (m < n || n == COPY_CHUNK) { /* switch to splice; the unsent rest goes into the new, empty pipe */
            if (pipe2(D->pipe, O_NONBLOCK | O_CLOEXEC)) return -1;
            D->cap = fcntl(D->pipe[1], F_SETPIPE_SZ, PIPE_BYTES);
            if (D->cap < COPY_CHUNK) D->cap = COPY_CHUNK; /* the default size, if the kernel refused */
            if (m < n && write(D->pipe[1], buf + m, n - m) != n - m) return -1;
            D->pending = n - m;
        }
    }
    /* splice mode: keep the pipe filling from src while dst drains it; stop when neither moves */
    for (int moved = 1; moved && D->pipe[0] >= 0 && !D->shut;) {
        moved = 0;
        if (D->pending > 0) {
            ssize_t n = splice(D->pipe[0], NULL, dst, NULL, D->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0 && errno != EAGAIN) return -1;
            if (n > 0) {
                D->pending -= n;
                moved = 1;
            }
        }
        if (!D->eof && D->pending < D->cap) {
            ssize_t n = splice(src, NULL, D->pipe[1], NULL, D->cap - D->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0 && errno != EAGAIN) return -1;
            if (n == 0) D->eof = 1;
            if (n >= 0) {
                D->pending += n;
                moved = 1;
            }
        }
    }
    if (D->eof && D->pending == 0 && !D->shut) {
        D->shut = 1;
        shutdown(dst, SHUT_WR);
    }
    return 0;
}

static void rrelay(struct rconn *c, int d) {
    if (rpump(c, d)) rconn_close(c);
    else if (c->dir[0].shut && c->dir[1].shut) rconn_close(c);
}

/* Client bytes while greeting or requesting: parse, reply, connect. */
static void rhandshake(int ep, struct rconn *c) {
    for (;;) {
        if (c->hlen == (int)sizeof c->hs) return rconn_close(c);
        ssize_t n = recv(c->fd[0], c->hs + c->hlen, sizeof c->hs - c->hlen, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) return rconn_close(c);
        if (n < 0) return;
        c->hlen += n;
        if (c->state == H_GREETING) {
            if (c->hs[0] != 5) return rconn_close(c);
            int need = c->hlen >= 2 ? 2 + c->hs[1] : 2;
            if (c->hlen < need) continue;
            int ok = memchr(c->hs + 2, 0, c->hs[1]) != NULL;
            char reply[2] = {5, ok ? 0 : (char)0xff};
            if (sendn(c->fd[0], reply, 2) || !ok) return rconn_close(c);
            c->hlen -= need;
            memmove(c->hs, c->hs + need, c->hlen);
            c->state = H_REQUEST;
        }
        if (c->hlen < 4) continue;
        if (c->hs[0] != 5 || c->hs[1] != 1) return rreply(c, 7);
        if (c->hs[3] != 1) return rreply(c, 8);
        if (c->hlen < 10) continue; /* the only request we take is 10 bytes long */
        struct sockaddr_in sa = loopback(0);
        memcpy(&sa.sin_addr, c->hs + 4, 4);
        memcpy(&sa.sin_port, c->hs + 8, 2);
        c->hlen -= 10;
        memmove(c->hs, c->hs + 10, c->hlen); /* early data, sent once connected */
        c->fd[1] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd[1] < 0) return rreply(c, 1);
        nodelay(c->fd[1]);
        if (connect(c->fd[1], (struct sockaddr *)&sa, sizeof sa) && errno != EINPROGRESS) return rreply(c, 5);
        if (rwatch(ep, c, 1)) return rreply(c, 1);
        c->state = H_CONNECTING;
        return;
    }
}

static void rconnected(struct rconn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) || err) return rreply(c, 5);
    rreply(c, 0);
    if (c->dead || (c->hlen && sendn(c->fd[1], (char *)c->hs, c->hlen))) return rconn_close(c);
    c->state = H_RELAY;
    rrelay(c, 0); /* edges seen while connecting were not acted on */
    if (!c->dead) rrelay(c, 1);
}

static int cmd_relay(int port) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = loopback(port);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4096)) die("relay listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("{\"port\": %d}\n", port_of(ls));
    fflush(stdout);
    for (;;) { /* runs until killed */
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct rend *e = evs[i].data.ptr;
            if (e == NULL) {
                for (int k = 0; k < 64; k++) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    struct rconn *c = calloc(1, sizeof *c);
                    if (c == NULL) {
                        close(fd);
                        break;
                    }
                    c->fd[0] = fd;
                    c->fd[1] = c->dir[0].pipe[0] = c->dir[0].pipe[1] = c->dir[1].pipe[0] = c->dir[1].pipe[1] = -1;
                    c->end[0] = (struct rend){c, 0};
                    c->end[1] = (struct rend){c, 1};
                    nodelay(fd);
                    if (rwatch(ep, c, 0)) rconn_close(c);
                }
                continue;
            }
            struct rconn *c = e->c;
            if (c->dead) continue;
            uint32_t what = evs[i].events;
            if (c->state == H_RELAY) {
                if (what & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) rrelay(c, e->side);
                if (!c->dead && (what & EPOLLOUT) && c->dir[1 - e->side].pending) rrelay(c, 1 - e->side);
            } else if (c->state == H_CONNECTING) {
                if (e->side == 1) rconnected(c);
            } else if (e->side == 0 && (what & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))) {
                rhandshake(ep, c);
            }
        }
        while (dead_list) {
            struct rconn *c = dead_list;
            dead_list = c->next_dead;
            free(c);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGPIPE, SIG_IGN);
    memset(buf, 'b', sizeof buf);
    if (argc >= 2 && !strcmp(argv[1], "target")) return cmd_target();
    if (argc == 7 && !strcmp(argv[1], "bulk"))
        return cmd_bulk(!strcmp(argv[2], "up"), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]));
    if ((argc == 6 || argc == 7) && !strcmp(argv[1], "connrate")) {
        const char *mode = argc == 7 ? argv[6] : "socks";
        int m = !strcmp(mode, "socks") ? M_SOCKS : !strcmp(mode, "auth") ? M_AUTH : !strcmp(mode, "http") ? M_HTTP : -1;
        if (m < 0) {
            fprintf(stderr, "loadgen: connrate mode must be socks, auth or http\n");
            return 2;
        }
        return cmd_connrate(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]), m);
    }
    if (argc == 5 && !strcmp(argv[1], "pingpong"))
        return cmd_pingpong(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "relay")) return cmd_relay(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "idle")) return cmd_idle(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: see the comment at the top of loadgen.c\n");
    return 2;
}
