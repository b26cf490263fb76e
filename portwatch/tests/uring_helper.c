/* One io_uring bind or listen through raw system calls, for portwatch's
 * io_uring tests. No liburing: Debian 12's (2.3) predates IORING_OP_BIND, and
 * its kernel headers (6.1) predate the opcodes too, so they are spelled out.
 *
 *   uring_helper bind ADDR PORT   new TCP socket, IORING_OP_BIND to ADDR:PORT
 *   uring_helper listen FD        IORING_OP_LISTEN on inherited socket FD
 *
 * Prints "res=N" (the completion's result) and exits 0; exits 2 when the
 * ring cannot be set up. */
#include <arpa/inet.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define OP_BIND 56
#define OP_LISTEN 57

static int die(const char *what) {
	perror(what);
	return 2;
}

int main(int argc, char **argv) {
	struct sockaddr_in sin;
	struct io_uring_params p;
	struct io_uring_sqe *sqes, *sqe;
	struct io_uring_cqe *cqes;
	unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	unsigned char *sq, *cq;
	int ring, fd, listen_op;

	if (argc == 4 && !strcmp(argv[1], "bind")) {
		listen_op = 0;
		fd = socket(AF_INET, SOCK_STREAM, 0);
		memset(&sin, 0, sizeof sin);
		sin.sin_family = AF_INET;
		sin.sin_port = htons(atoi(argv[3]));
		if (fd < 0 || inet_pton(AF_INET, argv[2], &sin.sin_addr) != 1)
			return die("socket/address");
	} else if (argc == 3 && !strcmp(argv[1], "listen")) {
		listen_op = 1;
		fd = atoi(argv[2]);
	} else {
		fprintf(stderr, "usage: %s bind ADDR PORT | listen FD\n", argv[0]);
		return 2;
	}

	memset(&p, 0, sizeof p);
	ring = syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0)
		return die("io_uring_setup");
	sq = mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
		  IORING_OFF_SQ_RING);
	cq = mmap(NULL, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
		  IORING_OFF_CQ_RING);
	sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe),
		    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
		    IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
		return die("mmap");
	sq_tail = (unsigned *)(sq + p.sq_off.tail);
	sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	sq_array = (unsigned *)(sq + p.sq_off.array);
	cq_head = (unsigned *)(cq + p.cq_off.head);
	cq_tail = (unsigned *)(cq + p.cq_off.tail);
	cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);

	sqe = &sqes[0];
	memset(sqe, 0, sizeof *sqe);
	sqe->fd = fd;
	sqe->user_data = 42;
	if (listen_op) {
		sqe->opcode = OP_LISTEN;
		sqe->len = 16; /* backlog */
	} else {
		sqe->opcode = OP_BIND;
		sqe->addr = (unsigned long)&sin;
		sqe->addr2 = sizeof sin; /* addrlen */
	}
	unsigned tail = *sq_tail;
	sq_array[tail & *sq_mask] = 0;
	__atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS,
		    NULL, 0) < 0)
		return die("io_uring_enter");
	unsigned head = *cq_head;
	if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) {
		fprintf(stderr, "no completion\n");
		return 2;
	}
	printf("res=%d\n", cqes[head & *cq_mask].res);
	__atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
	return 0;
}
