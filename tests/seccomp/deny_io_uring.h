/* deny_io_uring: makes io_uring_setup() fail with ERRNUM in this process and what it execs,
 * as a systemd SystemCallFilter= without io_uring does (ENOSYS or EPERM), or
 * kernel.io_uring_disabled (EPERM). A real seccomp filter, not a switch in hellod. */
#pragma once

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define DENY_IO_URING_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define DENY_IO_URING_ARCH AUDIT_ARCH_AARCH64
#else
#error "deny_io_uring: add this architecture's AUDIT_ARCH"
#endif

/* deny_syscall: makes the system call NR fail with ERRNUM in this process and what it execs.
 * Returns 0, or -errno. */
static inline int deny_syscall(unsigned nr, int errnum) {
        struct sock_filter code[] = {
                /* Another architecture's system call numbers mean something else: allow. */
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, DENY_IO_URING_ARCH, 0, 3),
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned) errnum & SECCOMP_RET_DATA)),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };

        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return -errno;
        if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
                return -errno;
        return 0;
}

/* Returns 0, or -errno. */
static inline int deny_io_uring(int errnum) {
        return deny_syscall(__NR_io_uring_setup, errnum);
}
