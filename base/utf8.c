/*
 * utf8.c — ps_utf8_valid (utf8.h).
 */
#include "ps/utf8.h"

int ps_utf8_valid(const char *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    if (!s) return len == 0;
    while (i < len) {
        int32_t c;
        size_t k;
        if (s[i] < 0x80) {
            i += ps_utf8_ascii_prefix(s + i, len - i);
            continue;
        }
        k = ps_utf8_multi(s + i, len - i, &c);
        if (!k) return 0;
        i += k;
    }
    return 1;
}
