/* Base64 codec for JSON-carried images; see b64.h for the accepted forms. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/b64.h"

static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t sdxl_b64_encoded_len(size_t n) {
    if (n > (SIZE_MAX - 3) / 4 * 3) return SIZE_MAX;
    return (n + 2) / 3 * 4;
}

void sdxl_b64_encode(const uint8_t *in, size_t n, char *out) {
    size_t i = 0, o = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = ALPHABET[v >> 18];
        out[o++] = ALPHABET[(v >> 12) & 63];
        out[o++] = ALPHABET[(v >> 6) & 63];
        out[o++] = ALPHABET[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = ALPHABET[v >> 18];
        out[o++] = ALPHABET[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = ALPHABET[v >> 18];
        out[o++] = ALPHABET[(v >> 12) & 63];
        out[o++] = ALPHABET[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = 0;
}

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

int sdxl_b64_decode(const char *s, size_t len, size_t max_out, const char *field, uint8_t **out, size_t *out_len,
                    sdxl_err *e) {
    *out = NULL;
    *out_len = 0;
    size_t start = 0;
    if (len >= 5 && !strncmp(s, "data:", 5)) {
        const char *comma = memchr(s, ',', len);
        if (!comma) return sdxl_seterr(e, SDXL_ERR_ARG, "%s: data URL without ','", field);
        size_t head = (size_t)(comma - s);
        if (head < 12 || memcmp(comma - 7, ";base64", 7))
            return sdxl_seterr(e, SDXL_ERR_ARG, "%s: data URL is not ';base64'", field);
        start = head + 1;
    } else if ((len >= 7 && !strncmp(s, "http://", 7)) || (len >= 8 && !strncmp(s, "https://", 8))) {
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: URLs are not fetched; send the image as base64", field);
    }
    size_t digits = 0, pad = 0;
    for (size_t i = start; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_space(c)) continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (b64_value(c) < 0 || pad)
            return sdxl_seterr(e, SDXL_ERR_ARG, "%s: invalid base64 at byte %zu", field, i);
        digits++;
    }
    if (digits % 4 == 1 || pad > 2 || (pad && (digits + pad) % 4))
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: invalid base64 length (%zu digits, %zu '=')", field, digits, pad);
    if (digits == 0) return sdxl_seterr(e, SDXL_ERR_ARG, "%s: empty image data", field);
    size_t n = digits / 4 * 3 + (digits % 4 ? digits % 4 - 1 : 0);
    if (n > max_out)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: decoded image is %zu bytes, the limit is %zu", field, n, max_out);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory for %zu bytes", field, n);
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = start; i < len; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) continue;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
        }
    }
    *out = buf;
    *out_len = o;
    return SDXL_OK;
}
