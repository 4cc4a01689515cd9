/* Preprocessors: Canny pixel for pixel against OpenCV 4's cv2.Canny (reference PNGs made by
 * tests/make_canny_refs.py and committed; no python needed here), the other modes by their
 * definitions, the resize modes, and the spec parser's errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/preprocess.h"
#include "check.h"
#include "io/image.h"

#define CANNY SDXL_TEST_DATA "/canny/"

static void test_canny_opencv(void) {
    FILE *f = fopen(CANNY "cases.txt", "r");
    CHECK(f != NULL, "open %scases.txt", CANNY);
    if (!f) return;
    char line[512];
    int n_cases = 0, n_exact = 0, images_with_edges = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char in[128], ref[128];
        int ch;
        double lo, hi;
        if (sscanf(line, "%127s %d %lf %lf %127s", in, &ch, &lo, &hi, ref) != 5) continue;
        char p1[512], p2[512];
        snprintf(p1, sizeof p1, CANNY "%s", in);
        snprintf(p2, sizeof p2, CANNY "%s", ref);
        sdxl_image a = {0}, r = {0};
        sdxl_err e = {0};
        int ok = sdxl_image_read(p1, NULL, ch, &a, NULL, &e) == SDXL_OK && sdxl_image_read(p2, NULL, 1, &r, NULL, &e) == SDXL_OK;
        CHECK(ok, "read %s / %s: %s", in, ref, e.msg);
        if (ok) {
            uint8_t *ed = malloc((size_t)a.width * a.height);
            CHECK(sdxl_canny(a.data, a.width, a.height, ch, lo, hi, ed, &e) == SDXL_OK, "canny %s: %s", in, e.msg);
            size_t diff = 0, on = 0, np = (size_t)a.width * a.height;
            for (size_t i = 0; i < np; i++) {
                diff += ed[i] != r.data[i];
                on += r.data[i] != 0;
            }
            CHECK(diff == 0, "canny %s (%d ch, %g/%g) vs %s: %zu of %zu pixels differ", in, ch, lo, hi, ref, diff, np);
            n_exact += diff == 0;
            images_with_edges += on > 0;
            free(ed);
        }
        sdxl_image_free(&a);
        sdxl_image_free(&r);
        n_cases++;
    }
    fclose(f);
    CHECK(n_cases >= 50 && n_exact == n_cases, "canny: %d of %d OpenCV references exact", n_exact, n_cases);
    CHECK(images_with_edges > 0 && images_with_edges < n_cases, "canny references include edge and flat cases");
    printf("canny: %d/%d cases bit-exact vs OpenCV\n", n_exact, n_cases);
}

static void test_modes(void) {
    enum { W = 13, H = 9 };
    uint8_t img[W * H * 3], out[W * H * 3];
    for (int i = 0; i < W * H * 3; i++) img[i] = (uint8_t)(i * 37 + 11);
    sdxl_preprocess p;
    sdxl_err e = {0};
    CHECK(sdxl_preprocess_parse("invert", &p, &e) == SDXL_OK && sdxl_preprocess_run(&p, img, W, H, out, &e) == SDXL_OK,
          "invert: %s", e.msg);
    int ok = 1;
    for (int i = 0; i < W * H * 3; i++) ok &= out[i] == 255 - img[i];
    CHECK(ok, "invert is 255 - v");
    CHECK(sdxl_preprocess_parse("grayscale", &p, &e) == SDXL_OK && sdxl_preprocess_run(&p, img, W, H, out, &e) == SDXL_OK,
          "grayscale: %s", e.msg);
    ok = 1;
    for (int i = 0; i < W * H; i++) {
        int g = (4899 * img[3 * i] + 9617 * img[3 * i + 1] + 1868 * img[3 * i + 2] + 8192) >> 14;
        ok &= out[3 * i] == g && out[3 * i + 1] == g && out[3 * i + 2] == g;
    }
    CHECK(ok, "grayscale is OpenCV's RGB2GRAY, replicated");
    CHECK(sdxl_preprocess_parse("threshold:100", &p, &e) == SDXL_OK && sdxl_preprocess_run(&p, img, W, H, out, &e) == SDXL_OK,
          "threshold: %s", e.msg);
    ok = 1;
    for (int i = 0; i < W * H; i++) {
        int g = (4899 * img[3 * i] + 9617 * img[3 * i + 1] + 1868 * img[3 * i + 2] + 8192) >> 14;
        ok &= out[3 * i] == (g > 100 ? 255 : 0);
    }
    CHECK(ok, "threshold: gray > T -> 255");
    /* blur and tile keep a flat image flat and smooth a step */
    uint8_t flat[W * H * 3];
    memset(flat, 90, sizeof flat);
    CHECK(sdxl_preprocess_parse("blur:1.5", &p, &e) == SDXL_OK && sdxl_preprocess_run(&p, flat, W, H, out, &e) == SDXL_OK,
          "blur: %s", e.msg);
    ok = 1;
    for (int i = 0; i < W * H * 3; i++) ok &= out[i] == 90;
    CHECK(ok, "blur keeps a flat image");
    uint8_t step[W * H * 3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) step[(y * W + x) * 3 + c] = x < W / 2 ? 0 : 255;
    CHECK(sdxl_preprocess_run(&p, step, W, H, out, &e) == SDXL_OK, "blur step");
    CHECK(out[(4 * W + W / 2 - 1) * 3] > 0 && out[(4 * W + W / 2) * 3] < 255 && out[4 * W * 3] == 0, "blur smooths a step");
    CHECK(sdxl_preprocess_parse("tile:4:1", &p, &e) == SDXL_OK && sdxl_preprocess_run(&p, flat, W, H, out, &e) == SDXL_OK,
          "tile: %s", e.msg);
    ok = 1;
    for (int i = 0; i < W * H * 3; i++) ok &= out[i] == 90;
    CHECK(ok, "tile keeps a flat image");
    CHECK(sdxl_preprocess_parse("canny", &p, &e) == SDXL_OK && p.a == 100 && p.b == 200, "canny defaults 100/200");
    char buf[64];
    sdxl_preprocess_parse("canny:50:120", &p, &e);
    sdxl_preprocess_format(&p, buf, sizeof buf);
    CHECK(!strcmp(buf, "canny:50:120"), "format reads back: %s", buf);
    CHECK(!strcmp(sdxl_preprocess_module(p.kind), "canny"), "module name");
    const char *bad[] = {"sobel", "canny:a", "canny:200:100", "canny:1:2:3", "threshold:300", "blur:0", "tile:0.5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        e.msg[0] = 0;
        CHECK(sdxl_preprocess_parse(bad[i], &p, &e) != SDXL_OK && strstr(e.msg, "preprocess"), "\"%s\" refused: %s",
              bad[i], e.msg);
    }
}

static void test_fit(void) {
    /* 40x20 image, left half red, right half blue -> 16x16 */
    enum { SW = 40, SH = 20, D = 16 };
    uint8_t src[SW * SH * 3], dst[D * D * 3];
    for (int y = 0; y < SH; y++)
        for (int x = 0; x < SW; x++) {
            uint8_t *p = src + (y * SW + x) * 3;
            p[0] = x < SW / 2 ? 255 : 0;
            p[1] = 0;
            p[2] = x < SW / 2 ? 0 : 255;
        }
    sdxl_err e = {0};
    CHECK(sdxl_control_fit(src, SW, SH, 2, dst, D, D, &e) == SDXL_OK, "fill: %s", e.msg);
    /* fit: 16x8 centred, black bands above and below */
    CHECK(dst[0] == 0 && dst[1] == 0 && dst[2] == 0 && dst[(8 * D + 1) * 3] == 255, "fill pads black, keeps content");
    CHECK(sdxl_control_fit(src, SW, SH, 1, dst, D, D, &e) == SDXL_OK, "crop: %s", e.msg);
    /* cover: 32x16 then the centre 16 columns: both halves present, no black */
    CHECK(dst[0] == 255 && dst[(D - 1) * 3 + 2] == 255 && dst[(D * D - 1) * 3 + 2] == 255, "crop keeps the centre");
    CHECK(sdxl_control_fit(src, SW, SH, 0, dst, D, D, &e) == SDXL_OK && dst[0] == 255 && dst[(D - 1) * 3 + 2] == 255,
          "just resize stretches");
    CHECK(sdxl_control_fit(src, SW, SH, 7, dst, D, D, &e) != SDXL_OK, "bad mode refused");
}

int main(void) {
    test_canny_opencv();
    test_modes();
    test_fit();
    return check_done();
}
