/* libFuzzer target: arbitrary bytes through the PNG/JPEG/WebP decoders (RGB and mask, both alpha
 * modes) with small limits; whatever decodes must survive a lossless PNG round trip unchanged, and
 * any metadata text must go through the infotext parser. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/genmeta.h"
#include "io/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdxl_image_limits lim;
    sdxl_image_limits_init(&lim);
    lim.max_pixels = 1 << 20; /* keeps each run fast; the limit logic itself is what is exercised */
    lim.max_text = 1 << 16;
    for (int mode = 0; mode < 3; mode++) {
        lim.alpha = mode == 1 ? SDXL_ALPHA_WHITE : SDXL_ALPHA_DROP;
        int channels = mode == 2 ? 1 : 3;
        sdxl_image im;
        sdxl_image_meta meta;
        sdxl_err e = {0};
        if (sdxl_image_decode(data, size, "fuzz", &lim, channels, &im, &meta, &e) != SDXL_OK) {
            if (im.data || meta.n_texts || !e.msg[0]) abort(); /* failure leaves nothing behind and says why */
            continue;
        }
        if (!im.data || im.channels != channels || im.width <= 0 || im.height <= 0) abort();
        if ((uint64_t)im.width * (uint64_t)im.height > lim.max_pixels) abort();
        for (size_t i = 0; i < meta.n_texts; i++) {
            sdxl_genmeta g;
            sdxl_genmeta_init(&g);
            sdxl_genmeta_parse(meta.texts[i].value, strlen(meta.texts[i].value), &g, NULL);
            sdxl_genmeta_free(&g);
        }
        if (mode == 0) {
            uint8_t *png = NULL;
            size_t n = 0;
            sdxl_image_write_opts o;
            sdxl_image_write_opts_init(&o);
            o.png_compression = 1;
            if (sdxl_image_encode(&im, SDXL_IMAGE_PNG, &o, meta.parameters, meta.request, &png, &n, &e) != SDXL_OK)
                abort();
            sdxl_image back;
            sdxl_image_meta bm;
            lim.exif_orientation = 0;
            lim.max_text = (size_t)1 << 22; /* Latin-1 and UTF-16 texts grow when rewritten as UTF-8 */
            if (sdxl_image_decode(png, n, "fuzz round trip", &lim, 3, &back, &bm, &e) != SDXL_OK) abort();
            lim.exif_orientation = 1;
            lim.max_text = 1 << 16;
            if (back.width != im.width || back.height != im.height ||
                memcmp(back.data, im.data, (size_t)im.width * (size_t)im.height * 3))
                abort();
            if ((meta.parameters && (!bm.parameters || strcmp(bm.parameters, meta.parameters))) ||
                (meta.request && (!bm.request || strcmp(bm.request, meta.request))))
                abort();
            sdxl_image_free(&back);
            sdxl_image_meta_free(&bm);
            free(png);
        }
        sdxl_image_free(&im);
        sdxl_image_meta_free(&meta);
    }
    return 0;
}
