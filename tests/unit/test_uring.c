/* test_uring: the ring an io_uring loop runs on (uring_ring_open) takes the operations the loop
 * submits and nothing else. io_uring's operations pass no seccomp filter: without the ring's
 * restrictions, a process the unit forbids every socket family but AF_UNIX could still open a
 * netlink or packet socket through its ring. The integration suite runs every test on this
 * very ring (io_backend = "io_uring"); these check what it refuses. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
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

Test(ring, the_operations_the_loop_submits_run) {
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
