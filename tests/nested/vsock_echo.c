/* vsock-echo CID PORT TEXT: connect to a vsock listener, send TEXT, print the reply.
 * Runs inside the nested test's Linux guest (busybox has no vsock client). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: vsock-echo CID PORT TEXT\n");
        return 2;
    }
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("vsock-echo: socket");
        return 1;
    }
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK,
                               .svm_cid = (unsigned)atoi(argv[1]),
                               .svm_port = (unsigned)atoi(argv[2])};
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("vsock-echo: connect");
        return 1;
    }
    size_t len = strlen(argv[3]);
    if (write(fd, argv[3], len) != (ssize_t)len) {
        perror("vsock-echo: write");
        return 1;
    }
    char buf[256];
    size_t got = 0;
    while (got < len && got < sizeof buf - 1) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = 0;
    printf("vsock-echo: reply %s\n", buf);
    close(fd);
    return got == len ? 0 : 1;
}
