/* hellod-test-no-ipv6 COMMAND [ARG]...: runs COMMAND as on a host without IPv6 (booted with
 * ipv6.disable=1): socket(AF_INET6, ...) fails with EAFNOSUPPORT, in it and what it execs. A
 * real seccomp filter, not a switch in hellod. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "deny_io_uring.h" /* DENY_IO_URING_ARCH: this architecture's AUDIT_ARCH */

static int deny_ipv6_sockets(void) {
        struct sock_filter code[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, DENY_IO_URING_ARCH, 0, 5),
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 3),
                /* the domain: the low 32 bits of the first argument (little-endian) */
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EAFNOSUPPORT & SECCOMP_RET_DATA)),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };

        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return -errno;
        if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
                return -errno;
        return 0;
}

int main(int argc, char *argv[]) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s COMMAND [ARG]...\n", argv[0]);
                return 2;
        }
        int r = deny_ipv6_sockets();
        if (r < 0) {
                fprintf(stderr, "%s: cannot install the seccomp filter: %s\n", argv[0], strerror(-r));
                return 1;
        }
        execvp(argv[1], argv + 1);
        fprintf(stderr, "%s: cannot run %s: %s\n", argv[0], argv[1], strerror(errno));
        return 127;
}
