/*
 * proxy_net.c — the socket plumbing the test proxies share (proxy_net.h).
 */
#include "proxy_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int pn_parse_addr(const char *text, struct sockaddr_in *out)
{
    const char *colon = strrchr(text, ':');
    char host[INET_ADDRSTRLEN], *end;
    if (!colon || colon == text || (size_t)(colon - text) >= sizeof host) return -1;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || port > 65535) return -1;
    *out = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

const char *pn_addr_str(const struct sockaddr_in *a, char *buf)
{
    char host[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    snprintf(buf, PN_ADDR_LEN, "%s:%u", host, ntohs(a->sin_port));
    return buf;
}

int pn_listen(struct sockaddr_in *a, int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    socklen_t al = sizeof *a;
    if (fd < 0) return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, (struct sockaddr *)a, sizeof *a) || listen(fd, backlog) ||
        getsockname(fd, (struct sockaddr *)a, &al)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int pn_write_ready(const char *path, const struct sockaddr_in *a)
{
    char tmp[4096], text[PN_ADDR_LEN];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    int bad = fprintf(f, "%s\n", pn_addr_str(a, text)) < 0;
    if (fclose(f) || bad || rename(tmp, path)) return -1;
    return 0;
}

int pn_write_all(int fd, const void *b, size_t n)
{
    const char *p = b;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}
