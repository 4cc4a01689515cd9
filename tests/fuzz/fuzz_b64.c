/* libFuzzer target: arbitrary bytes through the base64 / data-URL decoder of `sdxl serve`; what
 * decodes must encode and decode back to the same bytes, and the size limit must hold. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/b64.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t limit = size > 0 ? data[0] * 16u : 0;
    uint8_t *out = NULL;
    size_t n = 0;
    if (sdxl_b64_decode((const char *)data, size, limit, "fuzz", &out, &n, NULL) != SDXL_OK) {
        if (out) abort();
        return 0;
    }
    if (n > limit) abort();
    size_t el = sdxl_b64_encoded_len(n);
    char *enc = malloc(el + 1);
    if (!enc) abort();
    sdxl_b64_encode(out, n, enc);
    if (strlen(enc) != el) abort();
    uint8_t *back = NULL;
    size_t bn = 0;
    if (sdxl_b64_decode(enc, el, n, "fuzz", &back, &bn, NULL) != SDXL_OK || bn != n || memcmp(back, out, n)) abort();
    free(back);
    free(enc);
    free(out);
    return 0;
}
