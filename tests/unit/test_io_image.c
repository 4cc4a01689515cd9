/* io/image: round trips through each format, metadata read back, PNG variants (grey, palette,
 * 16-bit, alpha, interlaced) built with libpng directly, EXIF orientation, limits, and truncated or
 * corrupted files of each format rejected with a message; the reference set's PNGs decode to the
 * exact pixels the reference stored. */
#include <dirent.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "io/genmeta.h"
#include "io/image.h"
#include "io/safetensors.h"

static sdxl_image make_rgb(int w, int h, uint32_t seed) {
    sdxl_image im;
    sdxl_image_alloc(&im, w, h, 3, NULL);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = im.data + ((size_t)y * w + x) * 3;
            /* smooth gradients so lossy codecs stay close */
            p[0] = (uint8_t)(x * 255 / (w - 1));
            p[1] = (uint8_t)(y * 255 / (h - 1));
            p[2] = (uint8_t)((x + y + seed) & 255);
        }
    return im;
}

/* Largest absolute difference and PSNR between two images of one shape. */
static double psnr(const sdxl_image *a, const sdxl_image *b, int *maxd) {
    size_t n = (size_t)a->width * a->height * a->channels;
    double se = 0;
    *maxd = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a->data[i] - (int)b->data[i]);
        if (d > *maxd) *maxd = d;
        se += (double)d * d;
    }
    double mse = se / (double)n;
    return mse == 0 ? 99.0 : 10 * log10(255.0 * 255.0 / mse);
}

static const char *PARAMS = "a cat, \"quoted\", 猫 ☕ 🐱\nNegative prompt: blurry\n"
                            "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 64x48";
static const char *REQUEST = "{\"prompt\":\"a cat, \\\"quoted\\\", 猫 ☕ 🐱\",\"steps\":30,\"note\":\"<&>\\n\\t\"}";

static void test_round_trips(void) {
    sdxl_image src = make_rgb(64, 48, 7);
    const sdxl_image_format fmts[] = {SDXL_IMAGE_PNG, SDXL_IMAGE_JPEG, SDXL_IMAGE_WEBP, SDXL_IMAGE_WEBP};
    for (int k = 0; k < 4; k++) {
        sdxl_image_write_opts o;
        sdxl_image_write_opts_init(&o);
        o.lossless = k == 3;
        uint8_t *buf = NULL;
        size_t n = 0;
        sdxl_err e = {0};
        const char *name = sdxl_image_format_name(fmts[k]);
        CHECK(sdxl_image_encode(&src, fmts[k], &o, PARAMS, REQUEST, &buf, &n, &e) == SDXL_OK, "%s encode: %s", name,
              e.msg);
        CHECK(sdxl_image_sniff(buf, n) == fmts[k], "%s sniff", name);
        sdxl_image back;
        sdxl_image_meta m;
        CHECK(sdxl_image_decode(buf, n, name, NULL, 3, &back, &m, &e) == SDXL_OK, "%s decode: %s", name, e.msg);
        CHECK(back.width == 64 && back.height == 48 && back.channels == 3, "%s shape %dx%dx%d", name, back.width,
              back.height, back.channels);
        int maxd = 0;
        double p = back.data ? psnr(&src, &back, &maxd) : 0;
        if (fmts[k] == SDXL_IMAGE_PNG || k == 3)
            CHECK(maxd == 0, "%s lossless: max diff %d", name, maxd);
        else /* quality 90 on a smooth gradient: well above 35 dB */
            CHECK(p > 35, "%s lossy: PSNR %.1f dB", name, p);
        CHECK(m.parameters && !strcmp(m.parameters, PARAMS), "%s parameters read back: %s", name,
              m.parameters ? m.parameters : "(null)");
        CHECK(m.request && !strcmp(m.request, REQUEST), "%s request read back: %s", name,
              m.request ? m.request : "(null)");
        if (m.parameters) {
            sdxl_genmeta g;
            sdxl_genmeta_init(&g);
            CHECK(sdxl_genmeta_parse(m.parameters, strlen(m.parameters), &g, &e) == SDXL_OK && g.steps == 30 &&
                      g.width == 64 && g.height == 48 && !strcmp(g.negative_prompt, "blurry"),
                  "%s parameters parse", name);
            sdxl_genmeta_free(&g);
        }
        sdxl_image_meta_free(&m);
        /* mask read: one channel, PIL "L" of the RGB */
        sdxl_image mask;
        CHECK(sdxl_image_decode(buf, n, name, NULL, 1, &mask, NULL, &e) == SDXL_OK && mask.channels == 1, "%s mask",
              name);
        if (mask.data && back.data) {
            int bad = 0;
            for (int i = 0; i < 64 * 48; i++) {
                const uint8_t *c = back.data + 3 * i;
                int l = (int)((c[0] * 19595u + c[1] * 38470u + c[2] * 7471u + 0x8000u) >> 16);
                bad += mask.data[i] != l;
            }
            CHECK(bad == 0, "%s mask = L(RGB): %d differ", name, bad);
        }
        /* no metadata */
        free(buf);
        sdxl_image_free(&back);
        CHECK(sdxl_image_encode(&src, fmts[k], &o, NULL, NULL, &buf, &n, &e) == SDXL_OK, "%s plain encode", name);
        CHECK(sdxl_image_decode(buf, n, name, NULL, 3, &back, &m, &e) == SDXL_OK && !m.parameters && !m.request,
              "%s plain has no metadata", name);
        sdxl_image_meta_free(&m);
        sdxl_image_free(&back);
        sdxl_image_free(&mask);
        free(buf);
    }
    /* one-channel images in every format */
    for (int k = 0; k < 3; k++) {
        sdxl_image g1;
        sdxl_image_alloc(&g1, 40, 24, 1, NULL);
        for (int i = 0; i < 40 * 24; i++) g1.data[i] = (uint8_t)((i % 40) * 6);
        uint8_t *b1;
        size_t n1;
        sdxl_image back1;
        sdxl_err e = {0};
        CHECK(sdxl_image_encode(&g1, fmts[k], NULL, PARAMS, NULL, &b1, &n1, &e) == SDXL_OK, "grey %s encode: %s",
              sdxl_image_format_name(fmts[k]), e.msg);
        CHECK(sdxl_image_decode(b1, n1, "grey", NULL, 1, &back1, NULL, &e) == SDXL_OK && back1.channels == 1,
              "grey %s decode: %s", sdxl_image_format_name(fmts[k]), e.msg);
        int maxd = 0;
        double p = back1.data ? psnr(&g1, &back1, &maxd) : 0;
        CHECK(p > 35, "grey %s PSNR %.1f dB", sdxl_image_format_name(fmts[k]), p);
        sdxl_image_free(&back1);
        sdxl_image_free(&g1);
        free(b1);
    }
    /* a one-channel image is written as grey and reads back identical */
    sdxl_image g;
    sdxl_image_alloc(&g, 33, 17, 1, NULL);
    for (int i = 0; i < 33 * 17; i++) g.data[i] = (uint8_t)(i * 7);
    uint8_t *buf;
    size_t n;
    sdxl_image back;
    CHECK(sdxl_image_encode(&g, SDXL_IMAGE_PNG, NULL, NULL, NULL, &buf, &n, NULL) == SDXL_OK, "grey png");
    CHECK(sdxl_image_decode(buf, n, "grey", NULL, 1, &back, NULL, NULL) == SDXL_OK && !memcmp(back.data, g.data, 33 * 17),
          "grey png round trip");
    sdxl_image_free(&back);
    free(buf);
    sdxl_image_free(&g);
    sdxl_image_free(&src);
}

/* Writes a PNG of the given type with libpng directly (the cases our encoder never produces). */
typedef struct mem {
    uint8_t *p;
    size_t n;
} mem;
static void mem_write(png_structp png, png_bytep d, size_t len) {
    mem *m = png_get_io_ptr(png);
    m->p = realloc(m->p, m->n + len);
    memcpy(m->p + m->n, d, len);
    m->n += len;
}
static void mem_flush(png_structp png) { (void)png; }

static mem make_png(int w, int h, int ctype, int depth, int interlace, const uint8_t *rows_data, size_t stride,
                    const png_color *pal, int npal, const uint8_t *trns, int ntrns, const char *text_after) {
    mem m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(m.p);
        m.p = NULL;
        return m;
    }
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, w, h, depth, ctype, interlace, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, npal);
    if (trns) png_set_tRNS(png, info, trns, ntrns, NULL);
    png_write_info(png, info);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < h; y++) png_write_row(png, rows_data + (size_t)y * stride);
    if (text_after) {
        png_text t;
        memset(&t, 0, sizeof t);
        t.compression = PNG_TEXT_COMPRESSION_zTXt;
        t.key = (png_charp) "parameters";
        t.text = (png_charp)text_after;
        t.text_length = strlen(text_after);
        png_set_text(png, info, &t, 1);
    }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return m;
}

static void test_png_variants(void) {
    enum { W = 5, H = 4 };
    sdxl_err e = {0};
    sdxl_image im;
    sdxl_image_meta meta;
    /* 16-bit RGB: the high byte is kept (PIL's "RGB;16B") */
    uint8_t d16[H][W * 6];
    for (int y = 0; y < H; y++)
        for (int i = 0; i < W * 3; i++) d16[y][2 * i] = (uint8_t)(y * 40 + i), d16[y][2 * i + 1] = 0xff;
    mem m = make_png(W, H, PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE, &d16[0][0], W * 6, NULL, 0, NULL, 0, NULL);
    CHECK(sdxl_image_decode(m.p, m.n, "rgb16", NULL, 3, &im, NULL, &e) == SDXL_OK, "16-bit: %s", e.msg);
    CHECK(im.data && im.data[0] == 0 && im.data[3 * W * 2 + 4] == 84, "16-bit high byte: %d %d", im.data ? im.data[0] : -1,
          im.data ? im.data[3 * W * 2 + 4] : -1);
    sdxl_image_free(&im);
    free(m.p);

    /* palette with tRNS: dropped by default, composited on white on request; Latin-1 zTXt after IDAT */
    png_color pal[2] = {{255, 0, 0}, {0, 0, 255}};
    uint8_t trns[2] = {255, 0};
    uint8_t idx[H][W];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) idx[y][x] = (uint8_t)((x + y) & 1);
    m = make_png(W, H, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_ADAM7, &idx[0][0], W, pal, 2, trns, 2,
                 "caf\xe9, Steps: 1, Seed: 2, Size: 5x4");
    CHECK(sdxl_image_decode(m.p, m.n, "pal", NULL, 3, &im, &meta, &e) == SDXL_OK, "palette: %s", e.msg);
    CHECK(im.data && im.data[0] == 255 && im.data[3] == 0 && im.data[5] == 255, "palette colours, alpha dropped");
    CHECK(meta.parameters && !strcmp(meta.parameters, "caf\xc3\xa9, Steps: 1, Seed: 2, Size: 5x4"),
          "zTXt after IDAT, Latin-1 to UTF-8: %s", meta.parameters ? meta.parameters : "(null)");
    sdxl_image_meta_free(&meta);
    sdxl_image_free(&im);
    sdxl_image_limits lim;
    sdxl_image_limits_init(&lim);
    lim.alpha = SDXL_ALPHA_WHITE;
    CHECK(sdxl_image_decode(m.p, m.n, "pal", &lim, 3, &im, NULL, &e) == SDXL_OK, "palette white: %s", e.msg);
    CHECK(im.data && im.data[0] == 255 && im.data[3] == 255 && im.data[4] == 255 && im.data[5] == 255,
          "transparent pixel is white");
    sdxl_image_free(&im);
    int w, h;
    char path[] = "/tmp/sdxl_test_img_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, m.p, m.n) == (ssize_t)m.n, "temp file");
    close(fd);
    CHECK(sdxl_image_read_meta(path, NULL, &meta, &w, &h, &e) == SDXL_OK && w == W && h == H && meta.parameters,
          "read_meta of an interlaced PNG with texts after the pixels: %s", e.msg);
    sdxl_image_meta_free(&meta);
    unlink(path);
    free(m.p);

    /* grey+alpha 8-bit: composite matches PIL's alpha_composite over white */
    uint8_t ga[H][W * 2];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) ga[y][2 * x] = 100, ga[y][2 * x + 1] = (uint8_t)(x * 60);
    m = make_png(W, H, PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE, &ga[0][0], W * 2, NULL, 0, NULL, 0, NULL);
    CHECK(sdxl_image_decode(m.p, m.n, "ga", &lim, 3, &im, NULL, &e) == SDXL_OK, "grey+alpha: %s", e.msg);
    /* a=60: 100*60/255 + 255*195/255 = 218.5..., PIL rounds to 219; a=0: 255; a=240: 109 */
    CHECK(im.data && im.data[0] == 255 && im.data[3] == 219 && im.data[12] == 109, "composite %d %d %d",
          im.data ? im.data[0] : -1, im.data ? im.data[3] : -1, im.data ? im.data[12] : -1);
    sdxl_image_free(&im);
    CHECK(sdxl_image_decode(m.p, m.n, "ga", NULL, 1, &im, NULL, &e) == SDXL_OK && im.data[3] == 100,
          "grey+alpha mask ignores alpha");
    sdxl_image_free(&im);
    free(m.p);

    /* 1-bit grey */
    uint8_t bits[H][1];
    for (int y = 0; y < H; y++) bits[y][0] = 0xa0;
    m = make_png(W, H, PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE, &bits[0][0], 1, NULL, 0, NULL, 0, NULL);
    CHECK(sdxl_image_decode(m.p, m.n, "g1", NULL, 1, &im, NULL, &e) == SDXL_OK && im.data[0] == 255 &&
              im.data[1] == 0 && im.data[2] == 255,
          "1-bit grey expands to 0/255");
    sdxl_image_free(&im);
    free(m.p);
}

/* EXIF orientation: a JPEG written with orientation 6 (rotate 90 CW) reads back rotated. */
static void test_orientation(void) {
    sdxl_image src;
    sdxl_image_alloc(&src, 32, 16, 3, NULL);
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 32; x++) memset(src.data + ((size_t)y * 32 + x) * 3, x < 16 ? 0 : 255, 3);
    uint8_t *buf;
    size_t n;
    CHECK(sdxl_image_encode(&src, SDXL_IMAGE_JPEG, NULL, NULL, NULL, &buf, &n, NULL) == SDXL_OK, "orientation encode");
    /* splice an APP1 EXIF (little-endian, IFD0 with Orientation = 6) after SOI */
    static const uint8_t app1[] = {0xff, 0xe1, 0x00, 0x22, 'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 0x2a, 0, 8, 0, 0, 0,
                                   1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0};
    uint8_t *j = malloc(n + sizeof app1);
    memcpy(j, buf, 2);
    memcpy(j + 2, app1, sizeof app1);
    memcpy(j + 2 + sizeof app1, buf + 2, n - 2);
    sdxl_image im;
    sdxl_err e = {0};
    CHECK(sdxl_image_decode(j, n + sizeof app1, "rot", NULL, 3, &im, NULL, &e) == SDXL_OK, "rot decode: %s", e.msg);
    /* rotated 90 CW: 16 wide, 32 tall; the left (black) half of the source is now the top */
    CHECK(im.width == 16 && im.height == 32, "rotated size %dx%d", im.width, im.height);
    CHECK(im.data && im.data[(2 * 16 + 8) * 3] < 30 && im.data[(29 * 16 + 8) * 3] > 225, "rotated content");
    sdxl_image_free(&im);
    sdxl_image_limits lim;
    sdxl_image_limits_init(&lim);
    lim.exif_orientation = 0;
    CHECK(sdxl_image_decode(j, n + sizeof app1, "rot", &lim, 3, &im, NULL, &e) == SDXL_OK && im.width == 32,
          "orientation off");
    sdxl_image_free(&im);
    free(j);
    free(buf);
    sdxl_image_free(&src);
}

/* XMP written by another tool in our namespace: entities, numeric references and malformed ones. */
static void test_xmp_entities(void) {
    sdxl_image src = make_rgb(8, 8, 0);
    uint8_t *buf;
    size_t n;
    CHECK(sdxl_image_encode(&src, SDXL_IMAGE_JPEG, NULL, NULL, NULL, &buf, &n, NULL) == SDXL_OK, "xmp base");
    const char *xmp = "http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description xmlns:sdxl=\"urn:sdxl:1.0:\"\n"
                      " sdxl:parameters=\"a&amp;b&lt;&gt;&quot;&apos;&#10;&#x1F431;&#0;&bogus;&;\"/></x:xmpmeta>";
    size_t xl = 29 + strlen(xmp + 29);
    uint8_t *j = malloc(n + xl + 4);
    memcpy(j, buf, 2);
    j[2] = 0xff, j[3] = 0xe1, j[4] = (uint8_t)((xl + 2) >> 8), j[5] = (uint8_t)(xl + 2);
    memcpy(j + 6, xmp, xl);
    memcpy(j + 6 + xl, buf + 2, n - 2);
    sdxl_image im;
    sdxl_image_meta m;
    sdxl_err e = {0};
    CHECK(sdxl_image_decode(j, n + xl + 4, "xmp.jpg", NULL, 3, &im, &m, &e) == SDXL_OK, "xmp decode: %s", e.msg);
    CHECK(m.parameters && !strcmp(m.parameters, "a&b<>\"'\n\xf0\x9f\x90\xb1\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
          "xmp entities: %s", m.parameters ? m.parameters : "(null)");
    CHECK(m.n_texts == 2 && !strcmp(m.texts[0].key, "XMP"), "raw packet kept");
    sdxl_image_meta_free(&m);
    sdxl_image_free(&im);
    free(j);
    free(buf);
    sdxl_image_free(&src);
}

static void test_limits(void) {
    sdxl_image src = make_rgb(100, 60, 1);
    uint8_t *buf;
    size_t n;
    sdxl_err e = {0};
    const sdxl_image_format fmts[] = {SDXL_IMAGE_PNG, SDXL_IMAGE_JPEG, SDXL_IMAGE_WEBP};
    for (int k = 0; k < 3; k++) {
        const char *name = sdxl_image_format_name(fmts[k]);
        CHECK(sdxl_image_encode(&src, fmts[k], NULL, NULL, NULL, &buf, &n, &e) == SDXL_OK, "%s encode", name);
        sdxl_image_limits lim;
        sdxl_image im;
        sdxl_image_limits_init(&lim);
        lim.max_width = 99;
        CHECK(sdxl_image_decode(buf, n, name, &lim, 3, &im, NULL, &e) == SDXL_ERR_LIMIT && !im.data &&
                  strstr(e.msg, "100x60"),
              "%s width limit: %s", name, e.msg);
        sdxl_image_limits_init(&lim);
        lim.max_pixels = 5999;
        CHECK(sdxl_image_decode(buf, n, name, &lim, 3, &im, NULL, &e) == SDXL_ERR_LIMIT, "%s pixel limit", name);
        sdxl_image_limits_init(&lim);
        lim.max_bytes = n - 1;
        CHECK(sdxl_image_decode(buf, n, name, &lim, 3, &im, NULL, &e) == SDXL_ERR_LIMIT && strstr(e.msg, "bytes"),
              "%s byte limit: %s", name, e.msg);
        free(buf);
    }
    /* a PNG header claiming 100000x100000 is refused before any allocation */
    static const uint8_t big[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                                  0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0, 8, 2, 0, 0, 0, 0, 0, 0, 0};
    uint8_t hdr[sizeof big];
    memcpy(hdr, big, sizeof big);
    uint32_t crc = (uint32_t)crc32(0, hdr + 12, 17);
    hdr[29] = (uint8_t)(crc >> 24), hdr[30] = (uint8_t)(crc >> 16), hdr[31] = (uint8_t)(crc >> 8), hdr[32] = (uint8_t)crc;
    sdxl_image im;
    int st = sdxl_image_decode(hdr, sizeof hdr, "huge.png", NULL, 3, &im, NULL, &e);
    CHECK(st == SDXL_ERR_LIMIT || st == SDXL_ERR_FORMAT, "huge PNG header refused (%d): %s", st, e.msg);
    CHECK(sdxl_image_decode((const uint8_t *)"GIF89a......", 12, "x.gif", NULL, 3, &im, NULL, &e) == SDXL_ERR_FORMAT &&
              strstr(e.msg, "x.gif"),
          "unknown format: %s", e.msg);
    CHECK(sdxl_image_decode(NULL, 0, "empty", NULL, 3, &im, NULL, &e) == SDXL_ERR_FORMAT, "empty input");
    CHECK(sdxl_image_decode((const uint8_t *)"x", 1, "c", NULL, 2, &im, NULL, &e) == SDXL_ERR_ARG, "channels 2");
    sdxl_image_free(&src);
}

/* Every prefix and many single-byte corruptions of each format: an error or a valid image, never a
 * crash (ASan/UBSan builds check the memory side); prefixes cut inside the data must be errors. */
static void test_corrupt(void) {
    sdxl_image src = make_rgb(40, 30, 3);
    const sdxl_image_format fmts[] = {SDXL_IMAGE_PNG, SDXL_IMAGE_JPEG, SDXL_IMAGE_WEBP};
    for (int k = 0; k < 3; k++) {
        const char *name = sdxl_image_format_name(fmts[k]);
        uint8_t *buf;
        size_t n;
        sdxl_err e = {0};
        sdxl_image_encode(&src, fmts[k], NULL, PARAMS, REQUEST, &buf, &n, &e);
        int accepted = 0, named = 1;
        for (size_t cut = 0; cut < n; cut++) {
            sdxl_image im;
            sdxl_image_meta m;
            int st = sdxl_image_decode(buf, cut, "cut.img", NULL, 3, &im, &m, &e);
            if (st == SDXL_OK) accepted++;
            else if (!strstr(e.msg, "cut.img")) named = 0;
            sdxl_image_free(&im);
            sdxl_image_meta_free(&m);
        }
        CHECK(accepted == 0, "%s: %d truncated files accepted", name, accepted);
        CHECK(named, "%s: truncation errors name the file (%s)", name, e.msg);
        /* a corrupted header may claim any size within the limits; keep them small so the loop is quick */
        sdxl_image_limits small;
        sdxl_image_limits_init(&small);
        small.max_pixels = 1 << 20;
        uint64_t s = 12345 + (uint64_t)k;
        uint8_t *c = malloc(n);
        for (int it = 0; it < 1500; it++) {
            memcpy(c, buf, n);
            for (int f = 0; f < 1 + it % 4; f++) {
                s = s * 6364136223846793005ULL + 1442695040888963407ULL;
                c[(s >> 33) % n] ^= (uint8_t)(1 + ((s >> 20) & 0xfe));
            }
            sdxl_image im;
            sdxl_image_meta m;
            int st = sdxl_image_decode(c, n, "bad.img", &small, it & 1 ? 1 : 3, &im, &m, &e);
            if (st == SDXL_OK)
                CHECK(im.data && im.width > 0 && im.height > 0 && im.width * im.height <= 1 << 20,
                      "%s corrupt but decoded: sane", name);
            else CHECK(!im.data && strstr(e.msg, "bad.img"), "%s corruption error names the file: %s", name, e.msg);
            sdxl_image_free(&im);
            sdxl_image_meta_free(&m);
        }
        free(c);
        free(buf);
    }
    sdxl_image_free(&src);
}

static void test_files(void) {
    sdxl_image src = make_rgb(24, 16, 9);
    sdxl_err e = {0};
    char dir[] = "/tmp/sdxl_img_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char path[256];
    snprintf(path, sizeof path, "%s/out.webp", dir);
    CHECK(sdxl_image_write(path, SDXL_IMAGE_UNKNOWN, &src, NULL, PARAMS, NULL, &e) == SDXL_OK, "write webp: %s", e.msg);
    sdxl_image im;
    sdxl_image_meta m;
    CHECK(sdxl_image_read(path, NULL, 3, &im, &m, &e) == SDXL_OK && im.width == 24 && m.parameters &&
              !strcmp(m.parameters, PARAMS) && !m.request,
          "read webp: %s", e.msg);
    sdxl_image_free(&im);
    sdxl_image_meta_free(&m);
    unlink(path);
    snprintf(path, sizeof path, "%s/out.gif", dir);
    CHECK(sdxl_image_write(path, SDXL_IMAGE_UNKNOWN, &src, NULL, NULL, NULL, &e) == SDXL_ERR_ARG, "unknown ext: %s",
          e.msg);
    snprintf(path, sizeof path, "%s/no/such/dir/x.png", dir);
    CHECK(sdxl_image_write(path, SDXL_IMAGE_UNKNOWN, &src, NULL, NULL, NULL, &e) == SDXL_ERR_IO && strstr(e.msg, path),
          "unwritable path: %s", e.msg);
    CHECK(sdxl_image_read(path, NULL, 3, &im, NULL, &e) == SDXL_ERR_IO, "missing file: %s", e.msg);
    CHECK(sdxl_image_read(dir, NULL, 3, &im, NULL, &e) == SDXL_ERR_IO, "directory: %s", e.msg);
    /* JPEG metadata over one APP1 segment: refused, nothing written */
    size_t big = 40000;
    char *longp = malloc(big + 1);
    memset(longp, 'a', big);
    longp[big] = 0;
    snprintf(path, sizeof path, "%s/long.jpg", dir);
    CHECK(sdxl_image_write(path, SDXL_IMAGE_UNKNOWN, &src, NULL, longp, NULL, &e) == SDXL_ERR_LIMIT &&
              access(path, F_OK) != 0,
          "JPEG APP1 limit, no partial file: %s", e.msg);
    snprintf(path, sizeof path, "%s/long.png", dir);
    CHECK(sdxl_image_write(path, SDXL_IMAGE_UNKNOWN, &src, NULL, longp, longp, &e) == SDXL_OK, "long PNG text");
    CHECK(sdxl_image_read(path, NULL, 3, &im, &m, &e) == SDXL_OK && m.parameters && strlen(m.parameters) == big,
          "long PNG text read back");
    sdxl_image_free(&im);
    sdxl_image_meta_free(&m);
    unlink(path);
    free(longp);
    CHECK(rmdir(dir) == 0, "no temporary files left behind");
    sdxl_image_free(&src);
}

/* Every PNG of the reference set (written by PIL) decodes to exactly the uint8 tensor the reference
 * stored for it: some U8 tensor of the same height, width and 3 channels in the case files. */
static void test_golden_pngs(void) {
    char cases[512], dir[600];
    snprintf(cases, sizeof cases, "%s/golden/cases", SDXL_TEST_DATA);
    snprintf(dir, sizeof dir, "%s/images", cases);
    DIR *d = opendir(dir);
    if (!d) return;
    sdxl_st_file *files[32];
    int nf = 0;
    DIR *cd = opendir(cases);
    struct dirent *de;
    while (cd && (de = readdir(cd)) && nf < 32) {
        size_t l = strlen(de->d_name);
        if (l < 12 || strcmp(de->d_name + l - 12, ".safetensors")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", cases, de->d_name);
        if (sdxl_st_open(p, &files[nf], NULL) == SDXL_OK) nf++;
    }
    if (cd) closedir(cd);
    int checked = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 4 || strcmp(de->d_name + l - 4, ".png")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        sdxl_image im;
        sdxl_err e = {0};
        if (sdxl_image_read(path, NULL, 3, &im, NULL, &e) != SDXL_OK) {
            CHECK(0, "%s: %s", de->d_name, e.msg);
            continue;
        }
        size_t nb = (size_t)im.width * im.height * 3;
        int candidates = 0, match = 0;
        for (int f = 0; f < nf && !match; f++) {
            for (size_t i = 0; i < sdxl_st_count(files[f]) && !match; i++) {
                const sdxl_st_tensor *t = sdxl_st_at(files[f], i);
                if (t->dtype != SDXL_ST_U8 || t->nbytes != nb || t->shape[t->ndim - 1] != 3 ||
                    t->shape[t->ndim - 2] != im.width)
                    continue;
                candidates++;
                match = !memcmp(t->data, im.data, nb);
            }
        }
        CHECK(match, "%s (%dx%d) equals a reference uint8 tensor (%d of that shape)", de->d_name, im.width,
              im.height, candidates);
        checked++;
        sdxl_image_free(&im);
    }
    closedir(d);
    for (int f = 0; f < nf; f++) sdxl_st_close(files[f]);
    CHECK(checked > 0, "reference PNGs found in %s", dir);
}

int main(void) {
    test_round_trips();
    test_png_variants();
    test_orientation();
    test_xmp_entities();
    test_limits();
    test_corrupt();
    test_files();
    test_golden_pngs();
    return check_done();
}
