/* SHA-256 (FIPS 180-4), streaming: init, update any number of times, then final. The state is a
 * plain struct owned by the caller. */
#ifndef SDXL_BASE_SHA256_H
#define SDXL_BASE_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sdxl_sha256 {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;
    size_t n;
} sdxl_sha256;

void sdxl_sha256_init(sdxl_sha256 *s);
void sdxl_sha256_update(sdxl_sha256 *s, const void *p, size_t n);
/* Pads and writes the digest as 64 lowercase hex digits plus a NUL; s is spent afterwards. */
void sdxl_sha256_hex(sdxl_sha256 *s, char out[65]);

#endif
