/* libFuzzer target: ControlNet preprocessing on untrusted input. The first line is a preprocess
 * spec (what --control-preprocess and request JSON carry); the next 3 bytes give a small image's
 * width, height and resize mode; the rest are its pixels. Whatever parses runs: every mode, Canny
 * on 1 and 3 channels, the resize modes. Nothing may crash or read out of bounds. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/preprocess.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nl = memchr(data, '\n', size < 64 ? size : 64);
    size_t sl = nl ? (size_t)(nl - data) : (size < 64 ? size : 64);
    char spec[65];
    memcpy(spec, data, sl);
    spec[sl] = 0;
    sdxl_preprocess p;
    sdxl_err e = {0};
    int ok = sdxl_preprocess_parse(spec, &p, &e) == SDXL_OK;
    size_t off = sl + (nl ? 1 : 0);
    if (size < off + 3) return 0;
    int w = 1 + data[off] % 48, h = 1 + data[off + 1] % 48, mode = data[off + 2] % 4;
    off += 3;
    size_t n = (size_t)w * (size_t)h * 3;
    uint8_t *img = calloc(n, 1), *out = malloc(n), *ed = malloc((size_t)w * (size_t)h);
    if (!img || !out || !ed) goto done;
    memcpy(img, data + off, size - off < n ? size - off : n);
    if (ok) sdxl_preprocess_run(&p, img, w, h, out, &e);
    sdxl_canny(img, w, h, 3, data[off % size], data[(off + 1) % size], ed, &e);
    sdxl_canny(img, w, h, 1, 10, 40, ed, &e);
    int dw = 1 + (w * 7) % 40, dh = 1 + (h * 5) % 40;
    uint8_t *fit = malloc((size_t)dw * (size_t)dh * 3);
    if (fit) sdxl_control_fit(img, w, h, mode, fit, dw, dh, &e);
    free(fit);
done:
    free(img);
    free(out);
    free(ed);
    return 0;
}
