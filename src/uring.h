/* uring: the ring an io_uring loop runs on (the loop itself is an engine: engine.h). */
#pragma once

#include <liburing.h>
#include <stddef.h>

/* uring_ring_open: RING set up for a loop on the calling thread, its only submitter. The kernel
 * must offer every operation the loop submits (else WHY, of SIZE, says what it lacks, in a
 * notice's words), and the ring accepts nothing else: no other opcode, no SQE flag but
 * IOSQE_BUFFER_SELECT, no registration but of a provided-buffer ring. io_uring's operations
 * pass no seccomp filter, so a ring open to all of them would be a way around the unit's
 * sandbox: IORING_OP_SOCKET (Linux 5.19) creates sockets of the families that
 * RestrictAddressFamilies= forbids, IORING_OP_OPENAT opens files. Returns 0 or a negative errno
 * (RING then not set up). */
int uring_ring_open(struct io_uring *ring, char *why, size_t size);
