/*
 * page.c — what the broker serves to a browser: the search page at `/` (broker/page.html,
 * compiled into the binary at build time) and the sticker pictures under `/images/`, read-only
 * from the configured image root (option image-root).
 *
 *   GET /                  the search page (text/html; it calls /v1/search and /v1/click)
 *   GET /images/<path>     the file <image-root>/<path>: png, jpeg/jpg, gif or webp, at most
 *                          max-image-bytes (default 1 MiB); 404 without image-root
 *
 * An image path is percent-decoded once, then refused (404) if it is empty, absolute, has an
 * empty, "." or ".." component, a backslash or a NUL or control byte, or an extension other
 * than the four. The file is then opened one component at a time with openat(O_NOFOLLOW) from
 * the root's directory, so no symbolic link is followed anywhere under the root (403: a link
 * could lead out of it, and the check-then-open race of realpath does not arise); the last
 * component must be a regular file. The root itself may be a link: it is the operator's.
 *
 * The file goes out with evbuffer_add_file (sendfile from the page cache): the lane only opens
 * and stats it. Pictures are small (the demo's are ~1 KB), hence the cap, which also keeps one
 * request from tying up a connection's buffers.
 */
#include <event2/buffer.h>
#include <event2/http.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"
#include "ps/corpus.h"

/* Generated from page.html (embed_page.cmake). */
extern const char broker_page_html[];
extern const size_t broker_page_html_len;

#define IMAGES_PREFIX "/images/"

/* Content type of an image file name by its extension, or NULL for anything else. */
static const char *image_type(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {{"png", "image/png"},
                 {"jpg", "image/jpeg"},
                 {"jpeg", "image/jpeg"},
                 {"gif", "image/gif"},
                 {"webp", "image/webp"}};
    const char *dot = strrchr(name, '.');
    if (!dot || strchr(dot, '/')) return NULL;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcasecmp(dot + 1, types[i].ext) == 0) return types[i].type;
    return NULL;
}

/* The decoded relative path (n bytes) is one we may look up: see the top of the file. */
static int path_ok(const char *p, size_t n)
{
    if (n == 0 || n > PS_IMAGE_MAX || p[0] == '/') return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\') return 0;
    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && p[j] != '/') j++;
        size_t len = j - i;
        if (len == 0 || (len == 1 && p[i] == '.') || (len == 2 && p[i] == '.' && p[i + 1] == '.'))
            return 0;
        i = j + 1;
    }
    return 1;
}

/* Open rel (checked by path_ok) under root without following any link. Returns the fd of a
 * regular file, or a PS_E* code with err set. */
static int open_under(const char *root, char *rel, ps_err *err)
{
    int dir = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return ps_err_set(err, PS_ENOTFOUND, "the image root is not readable");
    char *comp = rel;
    for (;;) {
        char *slash = strchr(comp, '/');
        if (slash) *slash = '\0';
        int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | (slash ? O_DIRECTORY : 0);
        int fd = openat(dir, comp, flags);
        struct stat lsb; /* why it failed: a link (ELOOP, or ENOTDIR with O_DIRECTORY) or not */
        int link =
            fd < 0 && fstatat(dir, comp, &lsb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lsb.st_mode);
        close(dir);
        if (link)
            return ps_err_set(err, PS_EFORBIDDEN,
                              "a symbolic link under the image root is not followed");
        if (fd < 0) return ps_err_set(err, PS_ENOTFOUND, "no such image");
        if (!slash) {
            struct stat sb;
            if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
                close(fd);
                return ps_err_set(err, PS_ENOTFOUND, "no such image");
            }
            return fd;
        }
        dir = fd;
        comp = slash + 1;
    }
}

/* GET /images/<path>. Returns 0 once answered, or a PS_E* code with err set. */
static int serve_image(struct evhttp_request *req, const char *path, const broker_images *img,
                       ps_err *err)
{
    const char *root = img->root;
    if (!root) return ps_err_set(err, PS_ENOTFOUND, "no image root is configured");
    size_t n = 0;
    char *rel = evhttp_uridecode(path + strlen(IMAGES_PREFIX), 0, &n);
    if (!rel) return ps_err_set(err, PS_ENOMEM, "out of memory for an image path");
    const char *type = NULL;
    int rc = 0, fd = -1;
    if (strlen(rel) != n || !path_ok(rel, n))
        rc = ps_err_set(err, PS_ENOTFOUND, "not an image path (relative, without '..')");
    else if (!(type = image_type(rel)))
        rc = ps_err_set(err, PS_ENOTFOUND, "not an image (png, jpeg, gif or webp)");
    else if ((fd = open_under(root, rel, err)) < 0)
        rc = fd;
    free(rel);
    if (rc) return rc;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size > img->max_bytes) {
        close(fd);
        return ps_err_set(err, PS_ETOOBIG, "the image is over %zu bytes (max-image-bytes)",
                          img->max_bytes);
    }
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    if (sb.st_size == 0) {
        close(fd);
    } else if (evbuffer_add_file(out, fd, 0, sb.st_size) != 0) { /* fd: closed once sent */
        return ps_err_set(err, PS_ENOMEM, "out of memory sending an image");
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "public, max-age=3600");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_send_reply(req, 200, "OK", NULL);
    return 0;
}

int broker_page_serve(struct evhttp_request *req, int ep, const char *path,
                      const broker_images *img, ps_err *err)
{
    if (ep == BROKER_EP_IMAGE) return serve_image(req, path, img, err);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evbuffer_add(evhttp_request_get_output_buffer(req), broker_page_html, broker_page_html_len);
    evhttp_add_header(h, "Content-Type", "text/html; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(h, "Content-Security-Policy",
                      "default-src 'self'; img-src 'self' http: https: data:; "
                      "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'");
    evhttp_send_reply(req, 200, "OK", NULL);
    return 0;
}

void broker_page_image_url(ps_buf *b, const char *image)
{
    if (!image || !image[0]) return;
    if (ps_image_is_url(image)) {
        ps_buf_str(b, image);
        return;
    }
    /* a path: /images/ and the path with every byte outside [A-Za-z0-9/._~-] percent-encoded */
    static const char hex[] = "0123456789ABCDEF";
    ps_buf_str(b, IMAGES_PREFIX);
    for (const char *p = image; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            strchr("/._~-", c)) {
            ps_buf_byte(b, c);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            ps_buf_add(b, esc, 3);
        }
    }
}
