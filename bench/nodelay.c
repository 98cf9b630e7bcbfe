/* LD_PRELOAD shim for benchmarks: sets TCP_NODELAY on every socket a server accepts.
 * Used to run the s3s-fs test server the way production S3 servers behave (docs/benchmarks.md). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
    if (!real_accept4) real_accept4 = dlsym(RTLD_NEXT, "accept4");
    int conn = real_accept4(fd, addr, len, flags);
    if (conn >= 0) {
        int one = 1;
        setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return conn;
}
