/* A UDP echo server for the test images: answers every datagram on the port given (default
 * 53) with "nebula udp " and the datagram. busybox has no UDP server applet; this is built
 * static by scripts/test-image.sh. SIGTERM ends it at once (as PID 1 in a container, a
 * process without a handler would ignore it and every `docker stop` would wait its timeout). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void stop(int signal_number) {
    (void)signal_number;
    _exit(0);
}

int main(int argc, char **argv) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    int port = argc > 1 ? atoi(argv[1]) : 53;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) return 1;
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_ANY);
    address.sin_port = htons((unsigned short)port);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) != 0) return 1;
    static const char prefix[] = "nebula udp ";
    char reply[2048];
    memcpy(reply, prefix, sizeof prefix - 1);
    for (;;) {
        struct sockaddr_in peer;
        socklen_t peer_length = sizeof peer;
        ssize_t length = recvfrom(fd, reply + sizeof prefix - 1, sizeof reply - sizeof prefix, 0,
                                  (struct sockaddr *)&peer, &peer_length);
        if (length < 0) continue;
        sendto(fd, reply, (size_t)length + sizeof prefix - 1, 0, (struct sockaddr *)&peer, peer_length);
    }
}
