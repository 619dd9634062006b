/* yardstick-threads: the naive thread-per-connection server hellod's per-connection model is
 * measured against: blocking accept(), then pthread_create() of a detached thread for every
 * connection (no thread cache, default stacks), blocking recv()/send() in the thread. A
 * benchmark fixture (scripts/bench): it prints nothing per connection. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>

#include "yardstick.h"

#define IN_SIZE 4096

static bool arg_chunk;

static bool send_all(int fd, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t r = send(fd, buf, len, MSG_NOSIGNAL);

                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return false;
                }
                buf += r;
                len -= (size_t) r;
        }
        return true;
}

static void *serve(void *arg) {
        int fd = (int) (intptr_t) arg;
        YsProto *p = calloc(1, sizeof(*p));
        char in[IN_SIZE], *out = malloc(YS_OUT_SIZE(IN_SIZE));
        size_t len;

        if (!p || !out)
                goto done;
        p->chunk = arg_chunk;
        if (!send_all(fd, out, ys_greeting(p, out)))
                goto done;
        for (;;) {
                ssize_t r = recv(fd, in, arg_chunk ? YS_MAX_LINE + 3 : sizeof(in), 0);
                bool close_it;

                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0) {
                        if (r == 0) {
                                len = ys_eof(p, out);
                                (void) send_all(fd, out, len);
                        }
                        break;
                }
                close_it = ys_feed(p, in, (size_t) r, out, &len);
                if (!send_all(fd, out, len) || close_it)
                        break;
        }
done:
        close(fd);
        free(out);
        free(p);
        return NULL;
}

int main(int argc, char **argv) {
        YsArgs args = ys_parse_args(argc, argv, false);
        pthread_attr_t attr;
        int listen_fd;

        arg_chunk = args.chunk;
        (void) signal(SIGPIPE, SIG_IGN);
        ys_raise_nofile();
        listen_fd = ys_listen(&args, false, false);
        /* Detached from the start: pthread_detach() after pthread_create() raced with a thread
         * that had already exited, and crashed in pthread_detach() under churn (glibc 2.36). */
        if (pthread_attr_init(&attr) != 0 || pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) != 0) {
                fprintf(stderr, "yardstick-threads: cannot set up the thread attributes\n");
                return 1;
        }
        for (;;) {
                pthread_t t;
                int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno == EMFILE || errno == ENFILE)
                                usleep(10000);
                        continue;
                }
                if (pthread_create(&t, &attr, serve, (void *) (intptr_t) fd) != 0) {
                        close(fd);
                        continue;
                }
        }
}
