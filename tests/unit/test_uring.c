/* test_uring: the ring an io_uring loop runs on (uring_ring_open) takes the operations the loop
 * submits and nothing else. io_uring's operations pass no seccomp filter: without the ring's
 * restrictions, a process the unit forbids every socket family but AF_UNIX could still open a
 * netlink or packet socket through its ring. These check what the ring refuses, and that each
 * operation the loop submits still runs on it: the integration suite's io_uring pass serves on
 * such rings, but not every one of its setups (a PROXY listener or handover = "always" is
 * served on epoll). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "uring.h"

static struct io_uring ring;

static void open_ring(void) {
        char why[128] = "";
        int r = uring_ring_open(&ring, why, sizeof(why));

        cr_assert_eq(r, 0, "uring_ring_open: %s (%s)", strerror(-r), why);
}

static void close_ring(void) {
        io_uring_queue_exit(&ring);
}

/* completion: submits what is prepared and returns the result of the one operation. */
static int completion(void) {
        struct io_uring_cqe *cqe;
        int r = io_uring_submit_and_wait(&ring, 1);

        cr_assert_eq(r, 1, "io_uring_submit_and_wait: %d (%s)", r, r < 0 ? strerror(-r) : "");
        cr_assert_eq(io_uring_peek_cqe(&ring, &cqe), 0);
        r = cqe->res;
        io_uring_cqe_seen(&ring, cqe);
        return r;
}

static struct io_uring_sqe *next_sqe(void) {
        struct io_uring_sqe *e = io_uring_get_sqe(&ring);

        cr_assert_not_null(e);
        return e;
}

TestSuite(ring, .init = open_ring, .fini = close_ring);

Test(ring, a_socket_of_a_family_the_unit_forbids_cannot_be_opened_through_it) {
        io_uring_prep_socket(next_sqe(), AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE, 0);
        cr_assert_eq(completion(), -EACCES);
        io_uring_prep_socket(next_sqe(), AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0, 0);
        cr_assert_eq(completion(), -EACCES);
}

Test(ring, no_file_is_opened_and_no_operation_the_loop_never_submits_runs) {
        io_uring_prep_openat(next_sqe(), AT_FDCWD, "/etc/passwd", O_RDONLY | O_CLOEXEC, 0);
        cr_assert_eq(completion(), -EACCES);
        io_uring_prep_nop(next_sqe());
        cr_assert_eq(completion(), -EACCES);
}

Test(ring, send_and_receive_run) {
        int sv[2];
        char buf[8] = "";

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        io_uring_prep_send(next_sqe(), sv[0], "hello", 5, MSG_NOSIGNAL);
        cr_assert_eq(completion(), 5);
        io_uring_prep_recv(next_sqe(), sv[1], buf, sizeof(buf), 0);
        cr_assert_eq(completion(), 5);
        cr_assert_eq(memcmp(buf, "hello", 5), 0);
        close(sv[0]);
        close(sv[1]);
}

/* A listener's poll and accept, as the loop arms them (on a socket without a network). */
Test(ring, poll_and_accept_run) {
        struct sockaddr_un addr = { .sun_family = AF_UNIX };
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        cr_assert_geq(lfd, 0);
        cr_assert_geq(cfd, 0);
        /* An abstract name, unique to this process: nothing to remove afterwards. */
        snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "hellod-test-uring-%d", (int) getpid());
        socklen_t len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + strlen(addr.sun_path + 1));
        cr_assert_eq(bind(lfd, (struct sockaddr *) &addr, len), 0);
        cr_assert_eq(listen(lfd, 4), 0);
        cr_assert_eq(connect(cfd, (struct sockaddr *) &addr, len), 0);
        io_uring_prep_poll_add(next_sqe(), lfd, POLLIN);
        int events = completion();
        cr_assert(events > 0 && (events & POLLIN), "poll: %d", events);
        io_uring_prep_accept(next_sqe(), lfd, NULL, NULL, SOCK_CLOEXEC);
        int afd = completion();
        cr_assert_geq(afd, 0, "accept: %s", strerror(-afd));
        close(afd);
        close(cfd);
        close(lfd);
}

/* The wake: a read of the loop's eventfd; and the cancel of a receive that waits. */
Test(ring, a_read_of_an_eventfd_and_a_cancel_run) {
        uint64_t value = 0;
        int efd = eventfd(3, EFD_CLOEXEC);
        int sv[2];
        char buf[8];
        struct io_uring_cqe *cqe;

        cr_assert_geq(efd, 0);
        io_uring_prep_read(next_sqe(), efd, &value, sizeof(value), 0);
        cr_assert_eq(completion(), (int) sizeof(value));
        cr_assert_eq(value, 3);
        close(efd);

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        struct io_uring_sqe *e = next_sqe();
        io_uring_prep_recv(e, sv[1], buf, sizeof(buf), 0);
        io_uring_sqe_set_data64(e, 1);
        cr_assert_eq(io_uring_submit(&ring), 1);
        e = next_sqe();
        io_uring_prep_cancel64(e, 1, 0);
        io_uring_sqe_set_data64(e, 2);
        cr_assert_eq(io_uring_submit(&ring), 1);
        for (int seen = 0; seen < 2; seen++) {
                cr_assert_eq(io_uring_wait_cqe(&ring, &cqe), 0);
                if (cqe->user_data == 1)
                        cr_assert_eq(cqe->res, -ECANCELED, "the receive: %d", cqe->res);
                else
                        cr_assert_eq(cqe->res, 0, "the cancel: %d", cqe->res);
                io_uring_cqe_seen(&ring, cqe);
        }
        close(sv[0]);
        close(sv[1]);
}

/* A multishot receive into a provided buffer, as a loop's line-framed sessions read. */
Test(ring, a_multishot_receive_with_a_provided_buffer_runs) {
        enum { COUNT = 8, SIZE = 64, GROUP = 3 };
        size_t ring_size = COUNT * sizeof(struct io_uring_buf);
        struct io_uring_buf_ring *br = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        static char bufs[COUNT][SIZE];
        struct io_uring_cqe *cqe;
        int sv[2];

        cr_assert_neq(br, MAP_FAILED);
        io_uring_buf_ring_init(br);
        struct io_uring_buf_reg reg = { .ring_addr = (unsigned long) br, .ring_entries = COUNT, .bgid = GROUP };
        cr_assert_eq(io_uring_register_buf_ring(&ring, &reg, 0), 0);
        for (int i = 0; i < COUNT; i++)
                io_uring_buf_ring_add(br, bufs[i], SIZE, (unsigned short) i, io_uring_buf_ring_mask(COUNT), i);
        io_uring_buf_ring_advance(br, COUNT);
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        struct io_uring_sqe *e = next_sqe();
        io_uring_prep_recv_multishot(e, sv[1], NULL, 0, 0);
        e->flags |= IOSQE_BUFFER_SELECT;
        e->buf_group = GROUP;
        cr_assert_eq(io_uring_submit(&ring), 1);
        cr_assert_eq(send(sv[0], "line\n", 5, MSG_NOSIGNAL), 5);
        cr_assert_eq(io_uring_wait_cqe(&ring, &cqe), 0);
        cr_assert_eq(cqe->res, 5, "the receive: %d", cqe->res);
        cr_assert(cqe->flags & IORING_CQE_F_BUFFER);
        cr_assert(cqe->flags & IORING_CQE_F_MORE, "the receive is still armed");
        cr_assert_eq(memcmp(bufs[cqe->flags >> IORING_CQE_BUFFER_SHIFT], "line\n", 5), 0);
        io_uring_cqe_seen(&ring, cqe);
        close(sv[0]); /* the end of file ends the multishot receive */
        cr_assert_eq(io_uring_wait_cqe(&ring, &cqe), 0);
        cr_assert_eq(cqe->res, 0);
        io_uring_cqe_seen(&ring, cqe);
        close(sv[1]);
        cr_assert_eq(io_uring_unregister_buf_ring(&ring, GROUP), 0);
        munmap(br, ring_size);
}

Test(ring, an_operation_with_a_flag_the_loop_never_sets_is_refused) {
        int sv[2];
        char buf[8];

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        cr_assert_eq(send(sv[0], "x", 1, 0), 1);
        struct io_uring_sqe *e = next_sqe();

        io_uring_prep_recv(e, sv[1], buf, sizeof(buf), 0);
        io_uring_sqe_set_flags(e, IOSQE_ASYNC);
        cr_assert_eq(completion(), -EACCES);
        close(sv[0]);
        close(sv[1]);
}

Test(ring, only_a_provided_buffer_ring_can_be_registered) {
        struct io_uring_buf_reg reg = { .ring_entries = 8, .bgid = 7 };
        size_t size = 8 * sizeof(struct io_uring_buf);
        void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

        cr_assert_neq(mem, MAP_FAILED);
        cr_assert_geq(fd, 0);
        reg.ring_addr = (unsigned long) mem;
        cr_assert_eq(io_uring_register_buf_ring(&ring, &reg, 0), 0);
        cr_assert_eq(io_uring_unregister_buf_ring(&ring, 7), 0);
        cr_assert_eq(io_uring_register_files(&ring, &fd, 1), -EACCES);
        close(fd);
        munmap(mem, size);
}
