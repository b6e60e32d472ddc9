/*
 * seed_client.c - client for seed_server, reference implementation of the
 * client in the seed outline the project started from.
 *
 * Protocol, as in the seed: the server sends frames of an int length (host
 * byte order) followed by that many bytes.  The first frame is the file's
 * base name; then content frames of 1..1000 bytes; a length of 0 ends the
 * file.  The client reads the name, creates OUTDIR/name, and loops reading
 * len and content until len == 0, with one recv_n per length and one per
 * content frame, as the seed does.
 *
 * Usage: seed_client IP PORT OUTDIR_OR_DEVNULL   (IPv4 only)
 *   If the third argument is /dev/null the content is written there.
 * Prints nothing on success and exits 0.
 * Exit 1: connection, receive or local I/O error (message on stderr).
 * Exit 2: bad usage or a protocol violation (length outside 0..1000, or a
 *         file name that is empty, contains '/' or NUL, or is "." / "..").
 *
 * Build: gcc -O2 -o seed_client seed_client.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define FRAME_MAX 1000

/* Outline section 7: receive exactly len bytes.  Unlike the seed, end of
 * stream (0) and errors (-1 other than EINTR) are fatal. */
static void recv_n(int sockfd, char *p, int len)
{
    int total = 0;
    while (total < len) {
        ssize_t ret = recv(sockfd, p + total, (size_t)(len - total), 0);
        if (ret < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "seed_client: recv: %s\n", strerror(errno));
            exit(1);
        }
        if (ret == 0) {
            fprintf(stderr, "seed_client: connection closed by server mid-transfer\n");
            exit(1);
        }
        total += (int)ret;
    }
}

static void write_all(int fd, const char *p, int len)
{
    int total = 0;
    while (total < len) {
        ssize_t ret = write(fd, p + total, (size_t)(len - total));
        if (ret < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "seed_client: write: %s\n", strerror(errno));
            exit(1);
        }
        total += (int)ret;
    }
}

static int read_len(int sockfd)
{
    int len;
    recv_n(sockfd, (char *)&len, (int)sizeof(int));
    if (len < 0 || len > FRAME_MAX) {
        fprintf(stderr, "seed_client: bad frame length %d\n", len);
        exit(2);
    }
    return len;
}

int main(int argc, char *argv[])
{
    struct sockaddr_in server;
    char buf[1024];
    char path[4096];
    char *end;
    long port;
    int sockfd, fd, len;
    int devnull;

    if (argc != 4) {
        fprintf(stderr, "usage: %s IP PORT OUTDIR_OR_DEVNULL\n", argv[0]);
        return 2;
    }
    memset(&server, 0, sizeof(server));
    server.sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
        fprintf(stderr, "seed_client: bad IPv4 address: %s\n", argv[1]);
        return 2;
    }
    errno = 0;
    port = strtol(argv[2], &end, 10);
    if (errno || *end || end == argv[2] || port < 1 || port > 65535) {
        fprintf(stderr, "seed_client: bad port: %s\n", argv[2]);
        return 2;
    }
    server.sin_port = htons((unsigned short)port);
    devnull = strcmp(argv[3], "/dev/null") == 0;

    sockfd = socket(AF_INET, SOCK_STREAM, 0);
    if (sockfd < 0) {
        perror("seed_client: socket");
        return 1;
    }
    while (connect(sockfd, (struct sockaddr *)&server, sizeof(server)) < 0) {  /* (1) */
        if (errno == EINTR)
            continue;
        fprintf(stderr, "seed_client: connect %s:%ld: %s\n", argv[1], port, strerror(errno));
        return 1;
    }

    /* (2)(3) file name; buf is zeroed so the name is NUL-terminated */
    memset(buf, 0, sizeof(buf));
    len = read_len(sockfd);
    if (len == 0) {
        fprintf(stderr, "seed_client: empty file name\n");
        return 2;
    }
    recv_n(sockfd, buf, len);
    if (memchr(buf, '\0', (size_t)len) != NULL || strchr(buf, '/') != NULL ||
        strcmp(buf, ".") == 0 || strcmp(buf, "..") == 0) {
        fprintf(stderr, "seed_client: unsafe file name from server\n");
        return 2;
    }

    /* (4) create the file.  O_TRUNC is added to the seed's O_CREAT|O_RDWR so
     * that fetching over an existing longer file leaves no stale tail. */
    if (devnull) {
        fd = open("/dev/null", O_WRONLY);
        if (fd < 0) {
            perror("seed_client: open /dev/null");
            return 1;
        }
    } else {
        if (snprintf(path, sizeof(path), "%s/%s", argv[3], buf) >= (int)sizeof(path)) {
            fprintf(stderr, "seed_client: output path too long\n");
            return 2;
        }
        fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0666);
        if (fd < 0) {
            fprintf(stderr, "seed_client: open %s: %s\n", path, strerror(errno));
            return 1;
        }
    }

    for (;;) {
        len = read_len(sockfd);              /* (5) content length */
        if (len == 0)
            break;                           /* end of file */
        recv_n(sockfd, buf, len);            /* (6) content */
        write_all(fd, buf, len);             /* (7) */
    }

    if (close(fd) < 0) {
        perror("seed_client: close");
        return 1;
    }
    close(sockfd);
    return 0;
}
