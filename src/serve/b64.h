/* Base64 (RFC 4648, standard alphabet) for images in JSON bodies. Decoding accepts what A1111's
 * Python base64.b64decode accepts from clients: an optional "data:<mime>;base64," prefix, ASCII
 * whitespace anywhere, missing trailing padding. Any other byte is an error with its offset. */
#ifndef SDXL_SERVE_B64_H
#define SDXL_SERVE_B64_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* Bytes base64 output of n input bytes takes, without NUL; SIZE_MAX on overflow. */
size_t sdxl_b64_encoded_len(size_t n);
/* Writes the encoding of in[0..n) to out (sdxl_b64_encoded_len(n) + 1 bytes, NUL-terminated). */
void sdxl_b64_encode(const uint8_t *in, size_t n, char *out);

/* Decodes s[0..len) (data URL prefix allowed) into a malloc'd buffer of at most max_out bytes.
 * `field` names the JSON field in errors ("init_images[0]: invalid base64 at byte 17").
 * Errors: SDXL_ERR_ARG (not base64, a URL), SDXL_ERR_LIMIT (decoded size over max_out). */
int sdxl_b64_decode(const char *s, size_t len, size_t max_out, const char *field, uint8_t **out, size_t *out_len,
                    sdxl_err *e);

#endif
