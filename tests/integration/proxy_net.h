/*
 * proxy_net.h — the socket plumbing the test proxies share (stall_proxy.c, fault_proxy.c):
 * IPv4 "HOST:PORT" addresses, a listening socket on one (port 0: a free one), the ready file
 * that names where a proxy listens, and blocking writes. Test helpers: they report failure
 * through errno and their return value and print nothing.
 */
#ifndef PS_TEST_PROXY_NET_H
#define PS_TEST_PROXY_NET_H

#include <netinet/in.h>
#include <stddef.h>

#define PN_ADDR_LEN 32 /* "255.255.255.255:65535" and its NUL */

/* Parse "a.b.c.d:PORT" into *out. Returns 0, or -1 when text is not IPv4:PORT (port 0..65535). */
int pn_parse_addr(const char *text, struct sockaddr_in *out);

/* "a.b.c.d:PORT" of a into buf (PN_ADDR_LEN bytes); returns buf. */
const char *pn_addr_str(const struct sockaddr_in *a, char *buf);

/* A TCP socket listening on *a (SO_REUSEADDR, so a port closed a moment ago binds again); a
 * port of 0 takes a free one, and *a is updated with the port bound. Returns the socket, or -1
 * with errno set. */
int pn_listen(struct sockaddr_in *a, int backlog);

/* Write "HOST:PORT\n" of a to path, atomically (path.tmp, then rename): a reader sees the whole
 * line or no file. Returns 0, or -1 with errno set. */
int pn_write_ready(const char *path, const struct sockaddr_in *a);

/* Write b[0..n) to the blocking descriptor fd, retrying after EINTR and short writes. Returns 0,
 * or -1 when a write fails or writes nothing. */
int pn_write_all(int fd, const void *b, size_t n);

#endif
