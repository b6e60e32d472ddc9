/*
 * seed_server.c - process-pool file server, reference implementation of the
 * seed outline the project started from.
 *
 * It is the "starting point we are leaving behind" for benchmarks, so it
 * follows the outline's design and wire format on purpose, inefficiencies
 * included:
 *   - the master forks NUM_CHILDREN children, each joined to it by a
 *     socketpair(AF_LOCAL, SOCK_STREAM);
 *   - the master runs epoll over the listening socket and the children's
 *     socketpair ends, accepts connections and passes each accepted fd to an
 *     idle child (busy flag) with sendmsg(SCM_RIGHTS);
 *   - a child sends FILE as frames of struct { int len; char buf[1000]; }:
 *     one frame holding the file's base name (len = strlen), content frames
 *     of whatever each read(fd, buf, 1000) returned, then a frame that is just
 *     the 4-byte int 0; each frame goes out with one send_n() of 4+len bytes;
 *   - the child then closes the client socket and writes an int to the
 *     master, which marks it idle again.
 * The int length field is sent in host byte order, exactly as in the seed.
 *
 * Usage: seed_server IP PORT NUM_CHILDREN FILE      (IPv4 only)
 * Prints "listening on IP:PORT" on stdout once it accepts connections.
 * SIGTERM / SIGINT: the master kills and reaps its children and exits.
 *
 * Build: gcc -O2 -o seed_server seed_server.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Outline section 1: the per-child record kept by the master. */
typedef struct {
    pid_t pid;   /* child pid */
    int fd;      /* master's end of the socketpair */
    int busy;    /* 1 while the child is sending a file */
    int alive;   /* 0 once the child has gone away (not in the outline) */
} child, *pchild;

/* Outline section 1: the transfer frame. */
typedef struct {
    int len;          /* number of meaningful bytes in buf; 0 ends the file */
    char buf[1000];   /* at most 1000 bytes per frame */
} data;

/* The frame is sent as 4 + len bytes starting at &d, so buf must follow len
 * directly. */
_Static_assert(offsetof(data, buf) == sizeof(int), "unexpected padding in data");

static const char *g_path;   /* FILE, as given on the command line */
static const char *g_name;   /* its base name, sent in the first frame */

static volatile sig_atomic_t g_stop;

static void on_stop_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* Outline section 7: send exactly len bytes.  MSG_NOSIGNAL so that a client
 * that went away gives EPIPE instead of killing the child with SIGPIPE.
 * Returns 0 on success, -1 on error (the transfer must then be abandoned). */
static int send_n(int sockfd, const char *p, int len)
{
    int total = 0;
    while (total < len) {
        ssize_t ret = send(sockfd, p + total, (size_t)(len - total), MSG_NOSIGNAL);
        if (ret < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        total += (int)ret;
    }
    return 0;
}

/* Outline section 4: pass fd to a child over its socketpair.  One byte of
 * ordinary data is sent with it, since ancillary data needs at least one
 * byte of payload to travel on a stream socket. */
static int send_fd(int sendfd, int fd)
{
    struct msghdr msg;
    struct iovec iov;
    char byte = ' ';
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct cmsghdr *cmsg;

    memset(&msg, 0, sizeof(msg));
    memset(&u, 0, sizeof(u));
    iov.iov_base = &byte;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));

    for (;;) {
        ssize_t ret = sendmsg(sendfd, &msg, MSG_NOSIGNAL);
        if (ret == 1)
            return 0;
        if (ret < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

/* Outline section 5: receive an fd from the master.  The outline calls the
 * iovec unnecessary; on a stream socket the one payload byte that carries the
 * descriptor has to be read, so a 1-byte iovec is used.
 * Returns 1 and sets *fd on success, 0 if the master has gone, -1 on error. */
static int recv_fd(int recvfd, int *fd)
{
    struct msghdr msg;
    struct iovec iov;
    char byte;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct cmsghdr *cmsg;
    ssize_t ret;

    memset(&msg, 0, sizeof(msg));
    memset(&u, 0, sizeof(u));
    iov.iov_base = &byte;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);

    do {
        ret = recvmsg(recvfd, &msg, MSG_CMSG_CLOEXEC);
    } while (ret < 0 && errno == EINTR);
    if (ret == 0)
        return 0;
    if (ret < 0)
        return -1;

    cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg == NULL || (msg.msg_flags & MSG_CTRUNC) ||
        cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS ||
        cmsg->cmsg_len != CMSG_LEN(sizeof(int))) {
        fprintf(stderr, "seed_server: child %d: message without a descriptor\n",
                (int)getpid());
        return -1;
    }
    memcpy(fd, CMSG_DATA(cmsg), sizeof(int));
    return 1;
}

/* Outline section 6: send the file as name frame, content frames, 0 frame.
 * Deviations, for correctness only: the file is opened before the name
 * frame goes out, and on an open or read error the connection is closed
 * without the terminating 0 frame, so the client sees an error instead of a
 * silently short file.  The caller closes sockfd. */
static void send_file(int sockfd)
{
    data d;
    int fd;
    int flag = 0;

    fd = open(g_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "seed_server: open %s: %s\n", g_path, strerror(errno));
        return;
    }

    /* (1) file name */
    memset(&d, 0, sizeof(d));
    d.len = (int)strlen(g_name);
    memcpy(d.buf, g_name, (size_t)d.len);
    if (send_n(sockfd, (char *)&d, (int)sizeof(int) + d.len) < 0)
        goto out;

    /* (2) file content: one frame per read(fd, d.buf, 1000) call */
    for (;;) {
        ssize_t n;
        memset(&d, 0, sizeof(d));   /* the seed clears the frame every time */
        n = read(fd, d.buf, sizeof(d.buf));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "seed_server: read %s: %s\n", g_path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        d.len = (int)n;
        if (send_n(sockfd, (char *)&d, (int)sizeof(int) + d.len) < 0)
            goto out;   /* client gone: stop this transfer */
    }

    /* (3) end of file: just the int 0 */
    send_n(sockfd, (char *)&flag, (int)sizeof(int));
out:
    close(fd);
}

/* Outline section 2: the child's loop.  Returns only to exit. */
static void child_handle(int fdr)
{
    int new_fd;
    int flag = 1;

    for (;;) {
        int r = recv_fd(fdr, &new_fd);           /* (1) */
        if (r <= 0)
            break;                               /* master gone or error */
        send_file(new_fd);                       /* (2) */
        close(new_fd);
        for (;;) {                               /* (3) tell the master */
            ssize_t w = write(fdr, &flag, sizeof(int));
            if (w == (ssize_t)sizeof(int))
                break;
            if (w < 0 && errno == EINTR)
                continue;
            _exit(1);
        }
    }
    _exit(0);
}

/* Outline section 2: fork n children, each with its own socketpair. */
static int make_child(pchild p, int n)
{
    int fds[2];
    pid_t pid;
    int i, j;
    pid_t master = getpid();

    for (i = 0; i < n; ++i) {
        if (socketpair(AF_LOCAL, SOCK_STREAM, 0, fds) < 0) {
            perror("seed_server: socketpair");
            return -1;
        }
        pid = fork();
        if (pid < 0) {
            perror("seed_server: fork");
            return -1;
        }
        if (pid == 0) {
            /* Die with the master even if it is SIGKILLed mid-transfer. */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != master)
                _exit(0);
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            close(fds[1]);
            /* Drop the master's ends of earlier children's pairs, so each
             * child notices when the master goes away. */
            for (j = 0; j < i; ++j)
                close(p[j].fd);
            child_handle(fds[0]);
        }
        close(fds[0]);
        p[i].pid = pid;
        p[i].fd = fds[1];
        p[i].busy = 0;
        p[i].alive = 1;
    }
    return 0;
}

/* Pending connections, used when every child is busy.  The outline is silent
 * about this case ("j==num: all children busy"); dropping the connection is
 * not acceptable, so the master keeps accepted fds in a FIFO and hands the
 * oldest one to the next child that reports itself free. */
static int *q_buf;
static size_t q_cap, q_head, q_len;

static int q_push(int fd)
{
    if (q_len == q_cap) {
        size_t ncap = q_cap ? q_cap * 2 : 64;
        int *nb = malloc(ncap * sizeof(int));
        size_t i;
        if (nb == NULL)
            return -1;
        for (i = 0; i < q_len; ++i)
            nb[i] = q_buf[(q_head + i) % q_cap];
        free(q_buf);
        q_buf = nb;
        q_cap = ncap;
        q_head = 0;
    }
    q_buf[(q_head + q_len) % q_cap] = fd;
    q_len++;
    return 0;
}

static int q_pop(void)
{
    int fd = q_buf[q_head];
    q_head = (q_head + 1) % q_cap;
    q_len--;
    return fd;
}

/* Hand new_fd to child c and mark it busy; the master's copy is closed. */
static void dispatch(pchild c, int new_fd)
{
    if (send_fd(c->fd, new_fd) < 0)
        fprintf(stderr, "seed_server: send_fd to child %d: %s\n",
                (int)c->pid, strerror(errno));
    else
        c->busy = 1;
    close(new_fd);
}

static void stop_children(pchild p, int n)
{
    int i;
    for (i = 0; i < n; ++i)
        if (p[i].pid > 0)
            kill(p[i].pid, SIGTERM);
    for (i = 0; i < n; ++i) {
        if (p[i].pid > 0) {
            while (waitpid(p[i].pid, NULL, 0) < 0 && errno == EINTR)
                ;
        }
    }
}

int main(int argc, char *argv[])
{
    struct sockaddr_in server;
    struct epoll_event ev, *evs;
    struct sigaction sa;
    struct stat st;
    pchild p;
    char *end;
    long port, num_l;
    int num, sockfd, epollfd, one = 1, i, live, status = 0;
    const char *slash;

    if (argc != 5) {
        fprintf(stderr, "usage: %s IP PORT NUM_CHILDREN FILE\n", argv[0]);
        return 2;
    }
    memset(&server, 0, sizeof(server));
    server.sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
        fprintf(stderr, "seed_server: bad IPv4 address: %s\n", argv[1]);
        return 2;
    }
    errno = 0;
    port = strtol(argv[2], &end, 10);
    if (errno || *end || end == argv[2] || port < 0 || port > 65535) {
        fprintf(stderr, "seed_server: bad port: %s\n", argv[2]);
        return 2;
    }
    server.sin_port = htons((unsigned short)port);
    errno = 0;
    num_l = strtol(argv[3], &end, 10);
    if (errno || *end || end == argv[3] || num_l < 1 || num_l > 4096) {
        fprintf(stderr, "seed_server: bad NUM_CHILDREN: %s\n", argv[3]);
        return 2;
    }
    num = (int)num_l;

    g_path = argv[4];
    slash = strrchr(g_path, '/');
    g_name = slash ? slash + 1 : g_path;
    if (strlen(g_name) == 0 || strlen(g_name) > sizeof(((data *)0)->buf) ||
        strcmp(g_name, ".") == 0 || strcmp(g_name, "..") == 0) {
        fprintf(stderr, "seed_server: FILE must name a file: %s\n", g_path);
        return 2;
    }
    if (stat(g_path, &st) < 0 || !S_ISREG(st.st_mode) || access(g_path, R_OK) < 0) {
        fprintf(stderr, "seed_server: %s is not a readable regular file\n", g_path);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);

    /* Children first, so they do not inherit the listening socket. */
    p = calloc((size_t)num, sizeof(child));
    evs = calloc((size_t)num + 1, sizeof(struct epoll_event));
    if (p == NULL || evs == NULL) {
        perror("seed_server: calloc");
        return 1;
    }
    if (make_child(p, num) < 0) {
        stop_children(p, num);
        return 1;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;   /* no SA_RESTART: epoll_wait must return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    /* Outline section 3. */
    sockfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);                 /* (1) */
    if (sockfd < 0) {
        perror("seed_server: socket");
        status = 1;
        goto done;
    }
    setsockopt(sockfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(sockfd, (struct sockaddr *)&server, sizeof(server)) < 0) {       /* (3) */
        perror("seed_server: bind");
        status = 1;
        goto done;
    }
    /* (4) The seed passes num as the backlog; with num = 2 a burst of
     * concurrent connects overflows the accept queue and clients stall in
     * SYN retransmits, which would measure the kernel, not the design. */
    if (listen(sockfd, SOMAXCONN) < 0) {
        perror("seed_server: listen");
        status = 1;
        goto done;
    }
    {
        /* Port 0 asks the kernel for a free port: report the one it chose. */
        struct sockaddr_in bound;
        socklen_t bound_len = sizeof(bound);
        if (getsockname(sockfd, (struct sockaddr *)&bound, &bound_len) == 0)
            port = ntohs(bound.sin_port);
    }
    epollfd = epoll_create1(EPOLL_CLOEXEC);                                   /* (5) */
    if (epollfd < 0) {
        perror("seed_server: epoll_create1");
        status = 1;
        goto done;
    }
    memset(&ev, 0, sizeof(ev));                                               /* (6) */
    ev.events = EPOLLIN;
    ev.data.fd = sockfd;
    epoll_ctl(epollfd, EPOLL_CTL_ADD, sockfd, &ev);                           /* (7) */
    for (i = 0; i < num; ++i) {
        ev.events = EPOLLIN;
        ev.data.fd = p[i].fd;
        epoll_ctl(epollfd, EPOLL_CTL_ADD, p[i].fd, &ev);
    }

    printf("listening on %s:%ld\n", argv[1], port);
    fflush(stdout);

    live = num;
    while (!g_stop) {
        int retep = epoll_wait(epollfd, evs, num + 1, -1);                   /* (8) */
        int k;
        if (retep < 0) {
            if (errno == EINTR)
                continue;
            perror("seed_server: epoll_wait");
            status = 1;
            break;
        }
        for (k = 0; k < retep; ++k) {
            int fd = evs[k].data.fd;
            if (fd == sockfd) {
                int new_fd = accept4(sockfd, NULL, NULL, SOCK_CLOEXEC);      /* (9) */
                int j;
                if (new_fd < 0) {
                    if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
                        perror("seed_server: accept");
                    continue;
                }
                for (j = 0; j < num; ++j)
                    if (p[j].alive && !p[j].busy)
                        break;
                if (j < num) {
                    dispatch(&p[j], new_fd);                                 /* (10) */
                } else if (q_push(new_fd) < 0) {
                    fprintf(stderr, "seed_server: out of memory, dropping a connection\n");
                    close(new_fd);
                }
                continue;
            }
            for (i = 0; i < num; ++i) {
                int flag;
                ssize_t r;
                if (p[i].fd != fd)
                    continue;
                /* (11) the child says it is done */
                do {
                    r = recv(fd, &flag, sizeof(int), MSG_WAITALL);
                } while (r < 0 && errno == EINTR);
                if (r != (ssize_t)sizeof(int)) {
                    /* Child exited (not in the outline): forget it. */
                    fprintf(stderr, "seed_server: child %d went away\n", (int)p[i].pid);
                    epoll_ctl(epollfd, EPOLL_CTL_DEL, fd, NULL);
                    close(fd);
                    p[i].fd = -1;
                    p[i].alive = 0;
                    p[i].busy = 0;
                    waitpid(p[i].pid, NULL, 0);
                    p[i].pid = 0;
                    if (--live == 0) {
                        fprintf(stderr, "seed_server: no children left\n");
                        status = 1;
                        g_stop = 1;
                    }
                    break;
                }
                p[i].busy = 0;
                if (q_len > 0)
                    dispatch(&p[i], q_pop());
                break;
            }
        }
    }

done:
    stop_children(p, num);
    return status;
}
