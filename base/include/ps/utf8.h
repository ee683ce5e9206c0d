/*
 * utf8.h — UTF-8 checking shared by the analyzer (which decodes) and the wire codec (which
 * only checks). The two inline steps are the analyzer's inner loop; keep them inline.
 */
#ifndef PS_UTF8_H
#define PS_UTF8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Length of the ASCII prefix of s, eight bytes at a time. */
static inline size_t ps_utf8_ascii_prefix(const uint8_t *s, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL) break;
    }
    while (i < len && s[i] < 0x80) i++;
    return i;
}

/* Decode the multi-byte sequence starting at s[0] (>= 0x80), `rem` bytes available.
 * Returns its length (2-4) and the code point in *cp, or 0 if it is ill-formed: a stray
 * continuation byte, an overlong form, a surrogate, a value above U+10FFFF or a truncated
 * sequence (Unicode Table 3-7, "well-formed UTF-8 byte sequences"). */
static inline size_t ps_utf8_multi(const uint8_t *s, size_t rem, int32_t *cp)
{
    uint8_t b0 = s[0];
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        if (rem < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((int32_t)(b0 & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (b0 >= 0xE0 && b0 <= 0xEF) {
        uint8_t lo = 0x80, hi = 0xBF;
        if (b0 == 0xE0) lo = 0xA0; /* overlong below U+0800 */
        if (b0 == 0xED) hi = 0x9F; /* surrogates U+D800-DFFF */
        if (rem < 3 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80) return 0;
        *cp = ((int32_t)(b0 & 0x0F) << 12) | ((int32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
        uint8_t lo = 0x80, hi = 0xBF;
        if (b0 == 0xF0) lo = 0x90; /* overlong below U+10000 */
        if (b0 == 0xF4) hi = 0x8F; /* above U+10FFFF */
        if (rem < 4 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        *cp = ((int32_t)(b0 & 0x07) << 18) | ((int32_t)(s[1] & 0x3F) << 12) |
              ((int32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        return 4;
    }
    return 0; /* 0x80-0xC1 (continuation, overlong 2-byte lead) or 0xF5-0xFF */
}

/* 1 if the `len` bytes at s are valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF). */
int ps_utf8_valid(const char *s, size_t len);

#endif
