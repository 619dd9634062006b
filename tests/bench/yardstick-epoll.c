/* yardstick-epoll: the minimal event-loop server hellod's worker pool is measured against.
 * One thread per loop, each loop an epoll instance with its own SO_REUSEPORT listener on the
 * same port (--loops N, default 1), non-blocking sockets, level-triggered, one recv() and one
 * send() per request. A benchmark fixture (scripts/bench), not a product: it prints nothing
 * per connection and has no limits beyond the line length. */
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>

#include "yardstick.h"

#define IN_SIZE 16384

typedef struct Conn {
        int fd;
        bool closing;      /* close once the pending output is sent */
        char *out;         /* output a full socket buffer did not take; reading waits for it */
        size_t out_len, out_off;
        YsProto proto;
} Conn;

typedef struct Loop {
        YsArgs args;
        int listen_fd, epfd;
        char *in, *out;
} Loop;

static void conn_free(Conn *c) {
        close(c->fd);
        free(c->out);
        free(c);
}

/* conn_write: sends BUF; what the socket does not take waits in c->out, with EPOLLOUT
 * instead of EPOLLIN (back-pressure: no reading until it is sent). Returns -1 when the
 * connection is gone, 0 when all is sent, 1 when some waits. */
static int conn_write(Loop *l, Conn *c, const char *buf, size_t len) {
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
        size_t off = 0;

        while (off < len) {
                ssize_t r = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);

                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -1;
                }
                off += (size_t) r;
        }
        if (off == len)
                return 0;
        c->out = malloc(len - off);
        if (!c->out)
                return -1;
        memcpy(c->out, buf + off, len - off);
        c->out_len = len - off;
        c->out_off = 0;
        return epoll_ctl(l->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0 ? -1 : 1;
}

static void on_writable(Loop *l, Conn *c) {
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };

        while (c->out_off < c->out_len) {
                ssize_t r = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return;
                        conn_free(c);
                        return;
                }
                c->out_off += (size_t) r;
        }
        free(c->out);
        c->out = NULL;
        if (c->closing || epoll_ctl(l->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
                conn_free(c);
}

static void on_readable(Loop *l, Conn *c) {
        size_t max = c->proto.chunk ? YS_MAX_LINE + 3 : IN_SIZE, len;
        ssize_t r = recv(c->fd, l->in, max, 0);
        bool close_it;

        if (r < 0) {
                if (errno != EAGAIN && errno != EINTR)
                        conn_free(c);
                return;
        }
        if (r == 0) {
                len = ys_eof(&c->proto, l->out);
                (void) conn_write(l, c, l->out, len);
                conn_free(c);
                return;
        }
        close_it = ys_feed(&c->proto, l->in, (size_t) r, l->out, &len);
        switch (conn_write(l, c, l->out, len)) {
        case 0:
                if (close_it)
                        conn_free(c);
                break;
        case 1: /* waiting for EPOLLOUT */
                c->closing = close_it;
                break;
        default:
                conn_free(c);
                break;
        }
}

static void on_accept(Loop *l) {
        for (;;) {
                int fd = accept4(l->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                struct epoll_event ev = { .events = EPOLLIN };
                char greeting[32];
                Conn *c;

                if (fd < 0)
                        return; /* EAGAIN, or out of descriptors: the next event retries */
                c = calloc(1, sizeof(*c));
                if (!c) {
                        close(fd);
                        continue;
                }
                c->fd = fd;
                c->proto.chunk = l->args.chunk;
                ev.data.ptr = c;
                if (send(fd, greeting, ys_greeting(&c->proto, greeting), MSG_NOSIGNAL) < 0 ||
                    epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
                        conn_free(c);
        }
}

static void *loop_main(void *arg) {
        Loop *l = arg;
        struct epoll_event evs[256];

        for (;;) {
                int n = epoll_wait(l->epfd, evs, 256, -1);

                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;

                        if (!c)
                                on_accept(l);
                        else if (c->out)
                                on_writable(l, c);
                        else
                                on_readable(l, c);
                }
        }
        return NULL;
}

int main(int argc, char **argv) {
        YsArgs args = ys_parse_args(argc, argv, true);
        Loop *loops = calloc(args.loops, sizeof(Loop));

        if (!loops)
                return 1;
        (void) signal(SIGPIPE, SIG_IGN);
        ys_raise_nofile();
        for (unsigned i = 0; i < args.loops; i++) {
                Loop *l = &loops[i];
                struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };

                l->args = args;
                l->listen_fd = ys_listen(&args, args.loops > 1, true);
                l->epfd = epoll_create1(EPOLL_CLOEXEC);
                l->in = malloc(IN_SIZE);
                l->out = malloc(YS_OUT_SIZE(IN_SIZE));
                if (l->epfd < 0 || !l->in || !l->out ||
                    epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->listen_fd, &ev) < 0) {
                        perror("yardstick-epoll");
                        return 1;
                }
        }
        for (unsigned i = 1; i < args.loops; i++) {
                pthread_t t;

                if (pthread_create(&t, NULL, loop_main, &loops[i]) != 0) {
                        fprintf(stderr, "yardstick-epoll: cannot start a loop thread\n");
                        return 1;
                }
        }
        loop_main(&loops[0]);
        return 0;
}
