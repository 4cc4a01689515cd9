/* `sdxl preprocess`: runs one control-image preprocessor alone (the same code a generate request
 * runs in-request), optionally fitting the image to a size first with A1111's resize modes. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/preprocess.h"
#include "cli.h"
#include "io/image.h"

static int usage(FILE *out) {
    fprintf(out,
            "usage: sdxl preprocess MODE [options] INPUT -o OUTPUT\n"
            "  MODE: canny | invert | grayscale | threshold | tile | blur | none, or a full spec such as\n"
            "        canny:100:200 (the --control-preprocess syntax of sdxl generate)\n"
            "      --low X --high X     canny thresholds (default 100, 200; OpenCV cv2.Canny, aperture 3, L1)\n"
            "      --threshold T        threshold level 0..255 (default 127)\n"
            "      --factor F           tile downsampling factor (default 4)\n"
            "      --sigma S            blur / tile Gaussian sigma (default 2 for blur, 0 for tile)\n"
            "      --size WxH           fit the image to WxH first (as generate does with a control image)\n"
            "      --resize M           just | crop | fill (default just)\n"
            "  -o, --output PATH        .png, .jpg or .webp\n");
    return out == stdout ? 0 : 2;
}

static int num(const char *flag, const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x)) {
        fprintf(stderr, "sdxl preprocess: %s: expected a number, got \"%s\"\n", flag, v);
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_preprocess(int argc, char **argv) {
    const char *mode = NULL, *in = NULL, *out = NULL, *resize = "just";
    double low = NAN, high = NAN, thr = NAN, factor = NAN, sigma = NAN;
    int W = 0, H = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(stdout);
        int has = i + 1 < argc, r = 0;
        if (a[0] == '-' && a[1] && !has) {
            fprintf(stderr, "sdxl preprocess: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = argv[++i];
        else if (!strcmp(a, "--low")) r = num(a, argv[++i], &low);
        else if (!strcmp(a, "--high")) r = num(a, argv[++i], &high);
        else if (!strcmp(a, "--threshold")) r = num(a, argv[++i], &thr);
        else if (!strcmp(a, "--factor")) r = num(a, argv[++i], &factor);
        else if (!strcmp(a, "--sigma")) r = num(a, argv[++i], &sigma);
        else if (!strcmp(a, "--resize")) resize = argv[++i];
        else if (!strcmp(a, "--size")) {
            if (sscanf(argv[++i], "%dx%d", &W, &H) != 2 || W < 1 || H < 1 || W > 16384 || H > 16384) {
                fprintf(stderr, "sdxl preprocess: --size: expected WxH (1..16384), got \"%s\"\n", argv[i]);
                return 2;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "sdxl preprocess: unknown option \"%s\" (see sdxl preprocess --help)\n", a);
            return 2;
        } else if (!mode) mode = a;
        else if (!in) in = a;
        else {
            fprintf(stderr, "sdxl preprocess: unexpected argument \"%s\"\n", a);
            return 2;
        }
        if (r) return 2;
    }
    if (!mode || !in || !out) return usage(stderr);
    sdxl_err e = {0};
    sdxl_preprocess p;
    if (sdxl_preprocess_parse(mode, &p, &e)) {
        fprintf(stderr, "sdxl preprocess: %s\n", e.msg);
        return 2;
    }
    /* flags override the spec's values; the result is checked by the same parser */
    if (p.kind == SDXL_PRE_CANNY) {
        if (!isnan(low)) p.a = low;
        if (!isnan(high)) p.b = high;
    } else if (p.kind == SDXL_PRE_THRESHOLD && !isnan(thr)) p.a = thr;
    else if (p.kind == SDXL_PRE_TILE) {
        if (!isnan(factor)) p.a = factor;
        if (!isnan(sigma)) p.b = sigma;
    } else if (p.kind == SDXL_PRE_BLUR && !isnan(sigma)) p.a = sigma;
    char spec[128];
    sdxl_preprocess_format(&p, spec, sizeof spec);
    if (sdxl_preprocess_parse(spec, &p, &e)) {
        fprintf(stderr, "sdxl preprocess: %s\n", e.msg);
        return 2;
    }
    int rm = !strcmp(resize, "just") ? 0 : !strcmp(resize, "crop") ? 1 : !strcmp(resize, "fill") ? 2 : -1;
    if (rm < 0) {
        fprintf(stderr, "sdxl preprocess: --resize: just, crop or fill, got \"%s\"\n", resize);
        return 2;
    }
    if (sdxl_image_format_from_path(out) == SDXL_IMAGE_UNKNOWN) {
        fprintf(stderr, "sdxl preprocess: --output %s: use a .png, .jpg/.jpeg or .webp name\n", out);
        return 2;
    }
    sdxl_image img = {0}, fit = {0}, res = {0};
    int rc = 1;
    if (sdxl_image_read(in, NULL, 3, &img, NULL, &e)) {
        fprintf(stderr, "sdxl preprocess: %s\n", e.msg);
        return 1;
    }
    const sdxl_image *src = &img;
    if (W && (sdxl_image_alloc(&fit, W, H, 3, &e) ||
              sdxl_control_fit(img.data, img.width, img.height, rm, fit.data, W, H, &e))) {
        fprintf(stderr, "sdxl preprocess: %s\n", e.msg);
        goto done;
    }
    if (W) src = &fit;
    if (sdxl_image_alloc(&res, src->width, src->height, 3, &e) ||
        sdxl_preprocess_run(&p, src->data, src->width, src->height, res.data, &e) ||
        sdxl_image_write(out, SDXL_IMAGE_UNKNOWN, &res, NULL, NULL, NULL, &e)) {
        fprintf(stderr, "sdxl preprocess: %s\n", e.msg);
        goto done;
    }
    fprintf(stderr, "wrote %s (%s, %dx%d)\n", out, spec, res.width, res.height);
    rc = 0;
done:
    sdxl_image_free(&img);
    sdxl_image_free(&fit);
    sdxl_image_free(&res);
    return rc;
}
