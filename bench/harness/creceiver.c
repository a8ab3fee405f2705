/* The receive path in C: the same job as bench/harness/receiver.py, for less CPU.
 *
 * The harness must cost less per delivery than the cheapest server it measures
 * (Redis, a few microseconds), which a Python loop cannot: it pays an
 * interpreter round trip per recvmsg.  This is the same loop without that:
 * epoll, one recvmsg per ready socket, memmem for the markers of
 * bench/harness/wire.py, records in growable int64 arrays.  Each read is
 * stamped on its own (CLOCK_MONOTONIC through the vDSO costs ~20 ns), and also
 * carries the kernel's SO_TIMESTAMPNS arrival stamp, converted to monotonic
 * with the offset between the two clocks read at the same batch.
 *
 * bench/harness/creceiver.py compiles this at run time when a C compiler exists
 * and speaks to it over stdin/stdout:
 *
 *   setup (binary, once):  "host port window count chat ppid delay_acks [tls [web]]\n", then per client
 *                          u32 login_len, u32 notice_len, login bytes, notice bytes
 *   "L\n"                  connect and log in every client, `window` in flight
 *   "M nb nd np\n"         arm recording (forget earlier records); answers "A\n"
 *   "S\n"                  status: one line of counters, then the samples
 *   "C\n"                  collect: a header line, then the nine int64 arrays
 *   "Q\n" or EOF           exit
 *
 * Delayed ACKs: a client that only listens has its kernel ACK every small
 * segment as soon as it is read (it is never in TCP's interactive "pingpong"
 * mode), and on loopback that ACK's whole trip, including its processing at the
 * server's socket, runs on the receiver's CPU: about half of what a read cost.
 * With delay_acks set, TCP_QUICKACK is turned off again after every read, so
 * the kernel ACKs on its delayed-ACK timer or every ~two segments instead.
 * Only for servers that set TCP_NODELAY (all the benchmark starts do); a
 * Nagle server would wait for those ACKs, so a --target gets plain ACKs.
 *
 * TLS (the select-tls system): compiled with -DWITH_TLS and linked with
 * OpenSSL, and given tls=1 in the header, every client runs TLS over a pair of
 * memory BIOs, as the server does: the socket is still read with recvmsg, so
 * the kernel's arrival stamp is that of the ciphertext, and the ciphertext
 * goes to the SSL object, the plaintext it yields to the same line handling.
 * The server's certificate is not verified (it is a throwaway one; verifying
 * would cost the harness, not the server).  The handshake's flights and the
 * login are small enough for an empty socket buffer; a send the kernel does not
 * take whole drops the client.
 *
 * WebSocket (the select-ws system): given web=1 in the header, a client's input
 * is the server's HTTP answer, skipped, then frames (bench/harness/wire.py's
 * web dialect).  The frames are walked only to find where the last complete
 * one ends (the rest is carried, as a partial line is) and to answer the
 * server's pings with masked pongs, or it would close the connection; the
 * markers are looked for in the frames' bytes as they are, since a server's
 * frames are unmasked.
 *
 * It dies with its parent (PR_SET_PDEATHSIG), so even a SIGKILLed benchmark
 * leaves no receiver holding connections.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
#ifdef WITH_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define MAX_EVENTS 256
#define RECV_SIZE (256 * 1024)
#define MAX_CARRY (1 << 20)
#define CTL_KEY UINT64_MAX

static const char SEQ_MARK[] = "seq=";
static const char TIME_MARK[] = " t=";
static const char ONLINE_TAIL[] = " is online.>";
static const char PROBE_MARK[] = "<User p";

typedef struct {
    int64_t *v;
    size_t n, cap;
} vec;

static void push(vec *a, int64_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 1024;
        a->v = realloc(a->v, a->cap * sizeof(int64_t));
        if (!a->v) {
            perror("realloc");
            exit(3);
        }
    }
    a->v[a->n++] = x;
}

typedef struct {
    int fd;
    char connecting, logged;
    char *login, *own;
    uint32_t login_len, own_len;
    char *carry;
    size_t carry_len;
    char upgraded; /* web: the HTTP answer has been read */
#ifdef WITH_TLS
    SSL *ssl; /* NULL on plain TCP, and until the TCP connection is up */
    char handshaken;
#endif
} client;

static client *cl;
static size_t ncl, next_login, inflight, window;
static int ep, chat, web;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static int64_t logged_in, notices, last_notice_ns, dropped, connect_errors, bad, last_record_ns;
static int64_t nb, nd, np, b_dup, d_dup, p_dup;
static unsigned char *b_seen, *d_seen, *p_seen;
static vec b_seq, b_lat, b_klat, d_seq, d_lat, d_klat, p_seq, p_ts, p_kts;
static char samples[5][200];
static size_t sample_len[5], nsamples;
#ifdef WITH_TLS
static SSL_CTX *tls_ctx; /* NULL: plain TCP */
#endif

static int64_t clock_ns(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void read_full(void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t r = read(0, p, len);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            exit(0); /* the parent went away during setup */
        }
        p += r;
        len -= (size_t)r;
    }
}

static void write_full(const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t w = write(1, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            exit(0);
        }
        p += w;
        len -= (size_t)w;
    }
}

static void reset(int64_t b, int64_t d, int64_t p) {
    nb = b, nd = d, np = p;
    free(b_seen), free(d_seen), free(p_seen);
    b_seen = calloc(ncl * (size_t)nb + 1, 1);
    d_seen = calloc((size_t)nd + 1, 1);
    p_seen = calloc(ncl * (size_t)np + 1, 1);
    if (!b_seen || !d_seen || !p_seen) {
        perror("calloc");
        exit(3);
    }
    vec *all[] = {&b_seq, &b_lat, &b_klat, &d_seq, &d_lat, &d_klat, &p_seq, &p_ts, &p_kts};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) all[i]->n = 0;
    b_dup = d_dup = p_dup = 0;
    last_record_ns = 0;
}

static void connect_more(void);

static void drop(size_t k) {
    client *c = &cl[k];
    if (c->fd < 0) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->connecting = 0;
    free(c->carry);
    c->carry = NULL;
    c->carry_len = 0;
    c->upgraded = 0;
#ifdef WITH_TLS
    if (c->ssl) SSL_free(c->ssl); /* frees its BIOs too */
    c->ssl = NULL;
    c->handshaken = 0;
#endif
    dropped++;
    if (!c->logged) {
        inflight--;
        connect_more();
    }
}

static void connect_more(void) {
    while (inflight < window && next_login < ncl) {
        size_t k = next_login++;
        int s = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s < 0) {
            connect_errors++;
            continue;
        }
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        if (connect(s, (struct sockaddr *)&addr, addrlen) < 0 && errno != EINPROGRESS) {
            close(s);
            connect_errors++;
            continue;
        }
        cl[k].fd = s;
        cl[k].connecting = 1;
        inflight++;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = k};
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    }
}

#ifdef WITH_TLS
/* Send whatever OpenSSL wrote into the client's outgoing memory BIO.
 * Returns 0 (and drops the client) if the kernel did not take all of it. */
static int tls_flush(size_t k) {
    client *c = &cl[k];
    BIO *w = SSL_get_wbio(c->ssl);
    char buf[16 * 1024];
    int n;
    while ((n = BIO_read(w, buf, sizeof buf)) > 0) {
        if (send(c->fd, buf, (size_t)n, MSG_NOSIGNAL) != n) {
            drop(k);
            return 0;
        }
    }
    return 1;
}

/* Drive the handshake on; once done, send the login.  Returns 1 when the
 * handshake is complete, 0 while it waits for the server, -1 if the client
 * was dropped. */
static int tls_handshake(size_t k) {
    client *c = &cl[k];
    int rc = SSL_do_handshake(c->ssl);
    if (!tls_flush(k)) return -1;
    if (rc != 1) {
        if (SSL_get_error(c->ssl, rc) == SSL_ERROR_WANT_READ) return 0;
        ERR_clear_error();
        connect_errors++;
        drop(k);
        return -1;
    }
    c->handshaken = 1;
    if (SSL_write(c->ssl, c->login, (int)c->login_len) != (int)c->login_len) {
        ERR_clear_error();
        drop(k);
        return -1;
    }
    return tls_flush(k) ? 1 : -1;
}
#endif

static void connected(size_t k) {
    client *c = &cl[k];
    c->connecting = 0;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        connect_errors++;
        drop(k);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = k};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
#ifdef WITH_TLS
    if (tls_ctx) { /* the ClientHello first; the login once the handshake is done */
        c->ssl = SSL_new(tls_ctx);
        BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
        if (!c->ssl || !r || !w) {
            fprintf(stderr, "creceiver: out of memory for TLS\n");
            exit(3);
        }
        SSL_set_bio(c->ssl, r, w);
        SSL_set_connect_state(c->ssl);
        tls_handshake(k);
        return;
    }
#endif
    /* Tiny; fits an empty socket buffer. */
    if (send(c->fd, c->login, c->login_len, MSG_NOSIGNAL) != (ssize_t)c->login_len) drop(k);
}

static size_t count(const char *data, size_t len, const char *mark, size_t mlen) {
    size_t n = 0;
    const char *p = data, *end = data + len;
    while ((p = memmem(p, (size_t)(end - p), mark, mlen)) != NULL) {
        n++;
        p += mlen;
    }
    return n;
}

/* Digits in [p, end) as a number; -1 unless all are digits and there is one. */
static int64_t number(const char *p, const char *end) {
    if (p >= end || end - p > 19) return -1;
    int64_t v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static void parse_seq(size_t k, const char *data, size_t len, int64_t now, int64_t know) {
    const char *end = data + len;
    const char *i = memmem(data, len, SEQ_MARK, 4);
    while (i) {
        const char *j = i + 5 <= end ? memmem(i + 5, (size_t)(end - i - 5), TIME_MARK, 3) : NULL;
        const char *e = j ? memchr(j + 3, ' ', (size_t)(end - j - 3)) : NULL;
        if (!e) {
            bad++;
            return;
        }
        int64_t seq = number(i + 5, j), sent = number(j + 3, e);
        if (seq < 0 || sent < 0) {
            bad++;
            return;
        }
        char kind = i[4];
        if (kind == 'B' && seq < nb) {
            size_t slot = k * (size_t)nb + (size_t)seq;
            if (b_seen[slot]) {
                b_dup++;
            } else {
                b_seen[slot] = 1;
                push(&b_seq, seq);
                push(&b_lat, now - sent);
                push(&b_klat, know - sent);
            }
        } else if (kind == 'D' && seq < nd) {
            if (d_seen[seq]) {
                d_dup++;
            } else {
                d_seen[seq] = 1;
                push(&d_seq, seq);
                push(&d_lat, now - sent);
                push(&d_klat, know - sent);
            }
        } else {
            bad++;
        }
        last_record_ns = now;
        i = memmem(e, (size_t)(end - e), SEQ_MARK, 4);
    }
}

static void parse_probe(size_t k, const char *data, size_t len, int64_t now, int64_t know) {
    const char *end = data + len;
    const size_t mlen = sizeof PROBE_MARK - 1, tlen = sizeof ONLINE_TAIL - 1;
    const char *i = memmem(data, len, PROBE_MARK, mlen);
    while (i) {
        const char *start = i + mlen;
        const char *j = memchr(start, ' ', (size_t)(end - start));
        if (j && j > start && (size_t)(end - j) >= tlen && memcmp(j, ONLINE_TAIL, tlen) == 0) {
            int64_t seq = number(start, j);
            if (seq >= 0 && seq < np) {
                size_t slot = k * (size_t)np + (size_t)seq;
                if (p_seen[slot]) {
                    p_dup++;
                } else {
                    p_seen[slot] = 1;
                    push(&p_seq, seq);
                    push(&p_ts, now);
                    push(&p_kts, know);
                    last_record_ns = now;
                }
            }
        }
        i = memmem(start, (size_t)(end - start), PROBE_MARK, mlen);
    }
}

/* One chunk of complete lines received by client k. */
static void chunk(size_t k, const char *data, size_t len, int64_t now, int64_t know) {
    client *c = &cl[k];
    const size_t tlen = sizeof ONLINE_TAIL - 1;
    if (!c->logged) {
        if (memmem(data, len, c->own, c->own_len)) {
            c->logged = 1;
            logged_in++;
            inflight--;
            connect_more();
        } else if (chat && nsamples < 5 && !memmem(data, len, ONLINE_TAIL, tlen)) {
            size_t n = len < 200 ? len : 200;
            memcpy(samples[nsamples], data, n);
            sample_len[nsamples++] = n;
        }
    }
    size_t n = count(data, len, ONLINE_TAIL, tlen);
    if (n) {
        notices += (int64_t)n;
        last_notice_ns = now;
    }
    if (memmem(data, len, SEQ_MARK, 4)) parse_seq(k, data, len, now, know);
    if (np && memmem(data, len, PROBE_MARK, sizeof PROBE_MARK - 1))
        parse_probe(k, data, len, now, know);
}

static char rbuf[RECV_SIZE + MAX_CARRY];
static int delay_acks = 1;
static const int zero = 0;

/* Keep data[cut, len) of client k for its next read. */
static void carry(client *c, const char *data, size_t cut, size_t len) {
    size_t tail = len - cut;
    if (tail > MAX_CARRY) {
        bad++;
        return;
    }
    char *p = realloc(c->carry, tail ? tail : 1);
    if (!p) exit(3);
    c->carry = p;
    memcpy(c->carry, data + cut, tail);
    c->carry_len = tail;
}

/* A masked pong echoing a ping's payload; 0 if client k was dropped. */
static int pong(size_t k, const unsigned char *payload, size_t n) {
    unsigned char frame[6 + 125];
    if (n > 125) n = 125; /* (a control frame's payload is at most 125 bytes) */
    uint32_t mask = (uint32_t)random();
    frame[0] = 0x8A;
    frame[1] = (unsigned char)(0x80 | n);
    memcpy(frame + 2, &mask, 4);
    for (size_t i = 0; i < n; i++) frame[6 + i] = payload[i] ^ frame[2 + i % 4];
    if (send(cl[k].fd, frame, 6 + n, MSG_NOSIGNAL) != (ssize_t)(6 + n)) {
        drop(k);
        return 0;
    }
    return 1;
}

/* Where the last complete server frame in p[0, len) ends, the pings among
 * them answered; (size_t)-1 if client k was dropped. */
static size_t frames(size_t k, const unsigned char *p, size_t len) {
    size_t i = 0;
    while (i + 2 <= len) {
        size_t start = i + 2;
        uint64_t n = p[i + 1] & 0x7f;
        if (n >= 126) {
            start += n == 126 ? 2 : 8;
            if (start > len) break;
            n = 0;
            for (size_t j = i + 2; j < start; j++) n = n << 8 | p[j];
        }
        if (n > len - start) break;
        if ((p[i] & 0x0f) == 0x9 && !pong(k, p + start, (size_t)n)) return (size_t)-1;
        i = start + (size_t)n;
    }
    return i;
}

/* `len` bytes of input of client k, received at rbuf + MAX_CARRY (so that the
 * carried partial line fits in front of them): account for the complete lines
 * (web: the complete frames). */
static void lines(size_t k, size_t len, int64_t now, int64_t know) {
    client *c = &cl[k];
    char *data = rbuf + MAX_CARRY;
    if (c->carry_len) {
        data -= c->carry_len;
        memcpy(data, c->carry, c->carry_len);
        len += c->carry_len;
        c->carry_len = 0;
    }
    if (web) {
        if (!c->upgraded) {
            char *end = memmem(data, len, "\r\n\r\n", 4);
            if (!end) {
                carry(c, data, 0, len);
                return;
            }
            if (len < 13 || memcmp(data, "HTTP/1.1 101 ", 13) != 0) { /* refused: say why */
                if (nsamples < 5) {
                    size_t n = len < 200 ? len : 200;
                    memcpy(samples[nsamples], data, n);
                    sample_len[nsamples++] = n;
                }
                drop(k);
                return;
            }
            c->upgraded = 1;
            len -= (size_t)(end + 4 - data);
            data = end + 4;
        }
        size_t cut = frames(k, (const unsigned char *)data, len);
        if (cut == (size_t)-1) return;
        if (cut < len) carry(c, data, cut, len);
        len = cut;
        if (!len) return;
    } else if (data[len - 1] != '\n') { /* a partial line: keep its tail for the next read */
        char *nl = memrchr(data, '\n', len);
        size_t cut = nl ? (size_t)(nl - data) + 1 : 0;
        carry(c, data, cut, len);
        len = cut;
        if (!len) return;
    }
    chunk(k, data, len, now, know);
}

#ifdef WITH_TLS
static char tbuf[RECV_SIZE]; /* ciphertext as read */

/* The TLS half of readable(): ciphertext in, plaintext through lines(). */
static void tls_readable(size_t k, const char *cipher, size_t clen, int64_t now, int64_t know) {
    client *c = &cl[k];
    if (BIO_write(SSL_get_rbio(c->ssl), cipher, (int)clen) != (int)clen) {
        fprintf(stderr, "creceiver: out of memory for TLS\n");
        exit(3);
    }
    if (!c->handshaken && tls_handshake(k) != 1) return;
    char *base = rbuf + MAX_CARRY;
    size_t len = 0;
    for (;;) {
        int n = SSL_read(c->ssl, base + len, (int)(RECV_SIZE - len));
        if (n > 0) {
            len += (size_t)n;
            if (len == RECV_SIZE) { /* full: hand it on, read on */
                lines(k, len, now, know);
                len = 0;
            }
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_READ) break;
        ERR_clear_error(); /* close_notify or a TLS error: this connection is over */
        if (len) lines(k, len, now, know);
        drop(k);
        return;
    }
    if (BIO_ctrl_pending(SSL_get_wbio(c->ssl)) && !tls_flush(k)) return;
    if (len) lines(k, len, now, know);
}
#endif

static void readable(size_t k, int64_t offset) {
    client *c = &cl[k];
    char cmsg[CMSG_SPACE(sizeof(struct timespec))];
    /* Room before the data for the carried partial line, so joining is one memcpy. */
    char *base = rbuf + MAX_CARRY;
#ifdef WITH_TLS
    if (c->ssl) base = tbuf;
#endif
    struct iovec iov = {.iov_base = base, .iov_len = RECV_SIZE};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg,
                         .msg_controllen = sizeof cmsg};
    ssize_t r = recvmsg(c->fd, &msg, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) {
        drop(k);
        return;
    }
    if (delay_acks) setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
    int64_t now = clock_ns(CLOCK_MONOTONIC), know = now;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SO_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(h), sizeof ts);
            know = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - offset;
        }
    }
#ifdef WITH_TLS
    if (c->ssl) {
        tls_readable(k, tbuf, (size_t)r, now, know);
        return;
    }
#endif
    lines(k, (size_t)r, now, know);
}

static void reply_status(void) {
    char line[512];
    int n = snprintf(line, sizeof line,
                     "%lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld\n",
                     (long long)logged_in, (long long)inflight, (long long)notices,
                     (long long)last_notice_ns, (long long)dropped, (long long)connect_errors,
                     (long long)bad, (long long)b_seq.n, (long long)d_seq.n, (long long)p_seq.n,
                     (long long)last_record_ns, (long long)nsamples);
    write_full(line, (size_t)n);
    for (size_t i = 0; i < nsamples; i++) {
        n = snprintf(line, sizeof line, "%zu\n", sample_len[i]);
        write_full(line, (size_t)n);
        write_full(samples[i], sample_len[i]);
    }
}

static void reply_collect(void) {
    char line[256];
    int n = snprintf(line, sizeof line, "%lld %lld %lld %zu %zu %zu\n", (long long)b_dup,
                     (long long)d_dup, (long long)p_dup, b_seq.n, d_seq.n, p_seq.n);
    write_full(line, (size_t)n);
    vec *all[] = {&b_seq, &b_lat, &b_klat, &d_seq, &d_lat, &d_klat, &p_seq, &p_ts, &p_kts};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        write_full(all[i]->v, all[i]->n * sizeof(int64_t));
    reset(nb, nd, np);
}

static char cbuf[4096];
static size_t clen;

/* Returns 0 when told to quit (or the parent closed the pipe). */
static int command(void) {
    ssize_t r = read(0, cbuf + clen, sizeof cbuf - clen - 1);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
    if (r <= 0) return 0;
    clen += (size_t)r;
    char *nl;
    while ((nl = memchr(cbuf, '\n', clen)) != NULL) {
        *nl = 0;
        long long b = 0, d = 0, p = 0;
        switch (cbuf[0]) {
        case 'L':
            connect_more();
            break;
        case 'M':
            sscanf(cbuf + 1, "%lld %lld %lld", &b, &d, &p);
            reset(b, d, p);
            write_full("A\n", 2);
            break;
        case 'S':
            reply_status();
            break;
        case 'C':
            reply_collect();
            break;
        case 'Q':
            return 0;
        default:
            fprintf(stderr, "creceiver: unknown command %s\n", cbuf);
            return 0;
        }
        size_t used = (size_t)(nl - cbuf) + 1;
        memmove(cbuf, cbuf + used, clen - used);
        clen -= used;
    }
    if (clen == sizeof cbuf - 1) return 0; /* no command is this long */
    return 1;
}

int main(void) {
    /* Die with the parent, even a SIGKILLed one; Ctrl-C is the parent's to handle. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    char header[512];
    size_t hl = 0;
    while (hl < sizeof header - 1) {
        read_full(header + hl, 1);
        if (header[hl++] == '\n') break;
    }
    header[hl] = 0;
    char host[256];
    char port[16];
    long long win = 0, n = 0, ischat = 0, ppid = 0, delay = 1, tls = 0, isweb = 0;
    if (sscanf(header, "%255s %15s %lld %lld %lld %lld %lld %lld %lld", host, port, &win, &n,
               &ischat, &ppid, &delay, &tls, &isweb) < 7) {
        fprintf(stderr, "creceiver: bad header\n");
        return 2;
    }
    if (tls) {
#ifdef WITH_TLS
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx || !SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION)) {
            fprintf(stderr, "creceiver: cannot make a TLS context\n");
            return 2;
        }
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
#else
        fprintf(stderr, "creceiver: built without TLS (-DWITH_TLS)\n");
        return 2;
#endif
    }
    if (getppid() != (pid_t)ppid) return 0; /* the parent died before prctl */
    window = win > 0 ? (size_t)win : 1;
    ncl = (size_t)n;
    chat = (int)ischat;
    web = (int)isweb;
    srandom((unsigned)getpid());
    delay_acks = (int)delay;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0) {
        fprintf(stderr, "creceiver: cannot resolve %s\n", host);
        return 2;
    }
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    cl = calloc(ncl + 1, sizeof *cl);
    for (size_t k = 0; k < ncl; k++) {
        uint32_t lens[2];
        read_full(lens, sizeof lens);
        cl[k].fd = -1;
        cl[k].login_len = lens[0];
        cl[k].own_len = lens[1];
        cl[k].login = malloc(lens[0] + 1);
        cl[k].own = malloc(lens[1] + 1);
        read_full(cl[k].login, lens[0]);
        read_full(cl[k].own, lens[1]);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event cev = {.events = EPOLLIN, .data.u64 = CTL_KEY};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &cev);
    reset(0, 0, 0);
    write_full("R\n", 2); /* ready */
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ne = epoll_wait(ep, events, MAX_EVENTS, 1000);
        if (ne < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (ne == 0 && getppid() != (pid_t)ppid) return 0; /* belt and braces */
        int64_t offset = clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_MONOTONIC);
        for (int e = 0; e < ne; e++) {
            uint64_t key = events[e].data.u64;
            if (key == CTL_KEY) {
                if (!command()) return 0;
                continue;
            }
            size_t k = (size_t)key;
            if (cl[k].fd < 0) continue;
            if (cl[k].connecting) {
                if (events[e].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) connected(k);
                continue;
            }
            readable(k, offset);
        }
    }
}
