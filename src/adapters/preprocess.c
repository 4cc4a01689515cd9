/* Control-image preprocessors (see preprocess.h). Canny follows OpenCV 4's cv::Canny step by step:
 * 3x3 Sobel with replicated borders into int16, L1 magnitude, the integer tan(22.5)/tan(67.5)
 * direction test with its asymmetric (> / >=) non-maximum comparisons, floor()ed thresholds, and
 * 8-connected hysteresis from the pixels above the high threshold. */
#include "adapters/preprocess.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/resize.h"

#define MAX_SIDE 16384

static const char *const MODULE[SDXL_PRE_COUNT] = {"none",      "canny",         "invert",       "grayscale",
                                                   "threshold", "tile_resample", "blur_gaussian"};
static const char *const SPEC[SDXL_PRE_COUNT] = {"none", "canny", "invert", "grayscale", "threshold", "tile", "blur"};

const char *sdxl_preprocess_module(sdxl_pre_kind k) { return (unsigned)k < SDXL_PRE_COUNT ? MODULE[k] : "?"; }

int sdxl_preprocess_parse(const char *spec, sdxl_preprocess *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    if (!spec || !*spec || !strcmp(spec, "none")) return SDXL_OK;
    size_t nl = strcspn(spec, ":");
    int k = -1;
    for (int i = 1; i < SDXL_PRE_COUNT; i++)
        if (strlen(SPEC[i]) == nl && !strncmp(spec, SPEC[i], nl)) k = i;
    if (!strncmp(spec, "gray", nl) && nl == 4) k = SDXL_PRE_GRAY;
    if (!strncmp(spec, "scribble", nl) && nl == 8) k = SDXL_PRE_THRESHOLD;
    if (k < 0)
        return sdxl_seterr(e, SDXL_ERR_ARG,
                           "preprocess: unknown \"%.*s\" (none, canny:LOW:HIGH, invert, grayscale, threshold:T, "
                           "tile:FACTOR:SIGMA, blur:SIGMA)",
                           (int)nl, spec);
    static const double DEF[SDXL_PRE_COUNT][2] = {{0, 0}, {100, 200}, {0, 0}, {0, 0}, {127, 0}, {4, 0}, {2, 0}};
    static const int NARG[SDXL_PRE_COUNT] = {0, 2, 0, 0, 1, 2, 1};
    out->kind = (sdxl_pre_kind)k;
    out->a = DEF[k][0];
    out->b = DEF[k][1];
    const char *p = spec + nl;
    for (int i = 0; *p; i++) {
        p++; /* ':' */
        char *end;
        double v = strtod(p, &end);
        if (i >= NARG[k] || end == p || (*end && *end != ':') || !isfinite(v))
            return sdxl_seterr(e, SDXL_ERR_ARG, "preprocess \"%s\": %s takes %d numeric argument%s", spec, SPEC[k],
                               NARG[k], NARG[k] == 1 ? "" : "s");
        if (i == 0) out->a = v;
        else out->b = v;
        p = end;
    }
    switch (out->kind) {
    case SDXL_PRE_CANNY:
        if (out->a < 0 || out->b < 0 || out->a > 10000 || out->b > 10000 || out->a > out->b)
            return sdxl_seterr(e, SDXL_ERR_ARG, "preprocess \"%s\": canny thresholds need 0 <= low <= high <= 10000",
                               spec);
        break;
    case SDXL_PRE_THRESHOLD:
        if (out->a < 0 || out->a > 255)
            return sdxl_seterr(e, SDXL_ERR_ARG, "preprocess \"%s\": threshold must be in 0..255", spec);
        break;
    case SDXL_PRE_TILE:
        if (out->a < 1 || out->a > 64 || out->b < 0 || out->b > 64)
            return sdxl_seterr(e, SDXL_ERR_ARG, "preprocess \"%s\": tile factor in 1..64, blur sigma in 0..64", spec);
        break;
    case SDXL_PRE_BLUR:
        if (out->a <= 0 || out->a > 64)
            return sdxl_seterr(e, SDXL_ERR_ARG, "preprocess \"%s\": blur sigma must be in (0, 64]", spec);
        break;
    default: break;
    }
    return SDXL_OK;
}

void sdxl_preprocess_format(const sdxl_preprocess *p, char *buf, size_t cap) {
    const char *n = (unsigned)p->kind < SDXL_PRE_COUNT ? SPEC[p->kind] : "none";
    switch (p->kind) {
    case SDXL_PRE_CANNY:
    case SDXL_PRE_TILE: snprintf(buf, cap, "%s:%g:%g", n, p->a, p->b); break;
    case SDXL_PRE_THRESHOLD:
    case SDXL_PRE_BLUR: snprintf(buf, cap, "%s:%g", n, p->a); break;
    default: snprintf(buf, cap, "%s", n); break;
    }
}

/* ---- Canny ------------------------------------------------------------------------------------ */

#define CANNY_SHIFT 15
#define TG22 13573 /* (int)(tan(22.5 deg) * 2^15 + 0.5) */

int sdxl_canny(const uint8_t *img, int w, int h, int cn, double low_t, double high_t, uint8_t *edges, sdxl_err *e) {
    if (w < 1 || h < 1 || w > MAX_SIDE || h > MAX_SIDE || (cn != 1 && cn != 3))
        return sdxl_seterr(e, SDXL_ERR_ARG, "canny: image %dx%d with %d channels (1..%d a side, 1 or 3 channels)", w,
                           h, cn, MAX_SIDE);
    if (low_t > high_t) {
        double t = low_t;
        low_t = high_t;
        high_t = t;
    }
    int low = (int)floor(low_t), high = (int)floor(high_t);
    size_t W2 = (size_t)w + 2, n = (size_t)w * (size_t)h;
    int *mag = calloc(W2 * ((size_t)h + 2), sizeof(int)); /* zero frame around the image */
    short *dx = malloc(n * sizeof(short)), *dy = malloc(n * sizeof(short));
    uint8_t *map = malloc(W2 * ((size_t)h + 2));
    size_t *stack = malloc(n * sizeof(size_t));
    if (!mag || !dx || !dy || !map || !stack) {
        free(mag);
        free(dx);
        free(dy);
        free(map);
        free(stack);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "canny: out of memory for a %dx%d image", w, h);
    }
    /* Sobel per channel (BORDER_REPLICATE); the channel with the largest L1 norm wins (first on ties) */
    for (int y = 0; y < h; y++) {
        int ym = y > 0 ? y - 1 : 0, yp = y < h - 1 ? y + 1 : h - 1;
        const uint8_t *r0 = img + (size_t)ym * w * cn, *r1 = img + (size_t)y * w * cn, *r2 = img + (size_t)yp * w * cn;
        for (int x = 0; x < w; x++) {
            int xm = (x > 0 ? x - 1 : 0) * cn, xp = (x < w - 1 ? x + 1 : w - 1) * cn, xc = x * cn;
            int best = -1, bx = 0, by = 0;
            for (int k = 0; k < cn; k++) {
                int gx = (r0[xp + k] + 2 * r1[xp + k] + r2[xp + k]) - (r0[xm + k] + 2 * r1[xm + k] + r2[xm + k]);
                int gy = (r2[xm + k] + 2 * r2[xc + k] + r2[xp + k]) - (r0[xm + k] + 2 * r0[xc + k] + r0[xp + k]);
                int m = abs(gx) + abs(gy);
                if (m > best) {
                    best = m;
                    bx = gx;
                    by = gy;
                }
            }
            size_t i = (size_t)y * w + x;
            dx[i] = (short)bx;
            dy[i] = (short)by;
            mag[((size_t)y + 1) * W2 + x + 1] = best;
        }
    }
    /* non-maximum suppression: map 0 = candidate, 1 = not an edge, 2 = edge */
    memset(map, 1, W2 * ((size_t)h + 2));
    size_t top = 0;
    for (int y = 0; y < h; y++) {
        const int *mp = mag + (size_t)y * W2 + 1, *ma = mp + W2, *mn = ma + W2;
        uint8_t *mr = map + ((size_t)y + 1) * W2 + 1;
        for (int x = 0; x < w; x++) {
            int m = ma[x];
            if (m <= low) continue;
            size_t i = (size_t)y * w + x;
            int xs = dx[i], ys = dy[i];
            int ax = abs(xs), ay = abs(ys) << CANNY_SHIFT;
            int tg22x = ax * TG22, keep;
            if (ay < tg22x) {
                keep = m > ma[x - 1] && m >= ma[x + 1];
            } else {
                int tg67x = tg22x + (ax << (CANNY_SHIFT + 1));
                if (ay > tg67x) {
                    keep = m > mp[x] && m >= mn[x];
                } else {
                    int s = (xs ^ ys) < 0 ? -1 : 1;
                    keep = m > mp[x - s] && m > mn[x + s];
                }
            }
            if (!keep) continue;
            if (m > high) {
                mr[x] = 2;
                stack[top++] = ((size_t)y + 1) * W2 + x + 1;
            } else {
                mr[x] = 0;
            }
        }
    }
    /* hysteresis: candidates 8-connected to an edge become edges */
    static const int DY[8] = {-1, -1, -1, 0, 0, 1, 1, 1}, DX[8] = {-1, 0, 1, -1, 1, -1, 0, 1};
    while (top) {
        size_t p = stack[--top];
        for (int k = 0; k < 8; k++) {
            size_t q = (size_t)((ptrdiff_t)p + DY[k] * (ptrdiff_t)W2 + DX[k]);
            if (map[q] == 0) {
                map[q] = 2;
                stack[top++] = q;
            }
        }
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) edges[(size_t)y * w + x] = map[((size_t)y + 1) * W2 + x + 1] == 2 ? 255 : 0;
    free(mag);
    free(dx);
    free(dy);
    free(map);
    free(stack);
    return SDXL_OK;
}

/* ---- the others ------------------------------------------------------------------------------- */

/* OpenCV's RGB2GRAY in fixed point: (4899 R + 9617 G + 1868 B + 2^13) >> 14. */
static uint8_t gray_of(const uint8_t *p) { return (uint8_t)((4899 * p[0] + 9617 * p[1] + 1868 * p[2] + 8192) >> 14); }

/* Separable Gaussian (radius ceil(3 sigma), replicated borders) on RGB, in place. */
static int blur_rgb(uint8_t *img, int w, int h, double sigma, sdxl_err *e) {
    int r = (int)ceil(3 * sigma);
    if (r < 1) return SDXL_OK;
    float *k = malloc(sizeof(float) * (size_t)(2 * r + 1));
    float *tmp = malloc(sizeof(float) * (size_t)w * (size_t)h * 3);
    if (!k || !tmp) {
        free(k);
        free(tmp);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "blur: out of memory");
    }
    double sum = 0;
    for (int i = -r; i <= r; i++) sum += k[i + r] = (float)exp(-0.5 * i * i / (sigma * sigma));
    for (int i = 0; i <= 2 * r; i++) k[i] = (float)(k[i] / sum);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float a = 0;
                for (int i = -r; i <= r; i++) {
                    int xx = x + i < 0 ? 0 : x + i >= w ? w - 1 : x + i;
                    a += k[i + r] * img[((size_t)y * w + xx) * 3 + c];
                }
                tmp[((size_t)y * w + x) * 3 + c] = a;
            }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float a = 0;
                for (int i = -r; i <= r; i++) {
                    int yy = y + i < 0 ? 0 : y + i >= h ? h - 1 : y + i;
                    a += k[i + r] * tmp[((size_t)yy * w + x) * 3 + c];
                }
                img[((size_t)y * w + x) * 3 + c] = (uint8_t)(a < 0 ? 0 : a > 255 ? 255 : lrintf(a));
            }
    free(k);
    free(tmp);
    return SDXL_OK;
}

int sdxl_preprocess_run(const sdxl_preprocess *p, const uint8_t *rgb, int w, int h, uint8_t *out, sdxl_err *e) {
    if (w < 1 || h < 1 || w > MAX_SIDE || h > MAX_SIDE)
        return sdxl_seterr(e, SDXL_ERR_ARG, "preprocess: image %dx%d must be 1..%d a side", w, h, MAX_SIDE);
    size_t n = (size_t)w * (size_t)h;
    switch (p->kind) {
    case SDXL_PRE_NONE: memcpy(out, rgb, n * 3); return SDXL_OK;
    case SDXL_PRE_INVERT:
        for (size_t i = 0; i < n * 3; i++) out[i] = (uint8_t)(255 - rgb[i]);
        return SDXL_OK;
    case SDXL_PRE_GRAY:
    case SDXL_PRE_THRESHOLD:
        for (size_t i = 0; i < n; i++) {
            uint8_t g = gray_of(rgb + 3 * i);
            if (p->kind == SDXL_PRE_THRESHOLD) g = g > p->a ? 255 : 0;
            out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = g;
        }
        return SDXL_OK;
    case SDXL_PRE_CANNY: {
        uint8_t *ed = malloc(n);
        if (!ed) return sdxl_seterr(e, SDXL_ERR_NOMEM, "canny: out of memory");
        int st = sdxl_canny(rgb, w, h, 3, p->a, p->b, ed, e);
        for (size_t i = 0; !st && i < n; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = ed[i];
        free(ed);
        return st;
    }
    case SDXL_PRE_TILE: {
        int sw = (int)lround(w / p->a), sh = (int)lround(h / p->a);
        if (sw < 1) sw = 1;
        if (sh < 1) sh = 1;
        uint8_t *small = malloc((size_t)sw * (size_t)sh * 3);
        if (!small) return sdxl_seterr(e, SDXL_ERR_NOMEM, "tile: out of memory");
        int st = sdxl_resize_u8(rgb, w, h, 3, small, sw, sh, "tile", e);
        if (!st) st = sdxl_resize_u8(small, sw, sh, 3, out, w, h, "tile", e);
        free(small);
        if (!st && p->b > 0) st = blur_rgb(out, w, h, p->b, e);
        return st;
    }
    case SDXL_PRE_BLUR:
        memcpy(out, rgb, n * 3);
        return blur_rgb(out, w, h, p->a, e);
    default: return sdxl_seterr(e, SDXL_ERR_ARG, "preprocess: unknown kind %d", (int)p->kind);
    }
}

int sdxl_control_fit(const uint8_t *src, int sw, int sh, int mode, uint8_t *dst, int dw, int dh, sdxl_err *e) {
    if (sw < 1 || sh < 1 || dw < 1 || dh < 1)
        return sdxl_seterr(e, SDXL_ERR_ARG, "control image: size %dx%d -> %dx%d", sw, sh, dw, dh);
    if (mode == 0 || (int64_t)sw * dh == (int64_t)sh * dw) return sdxl_resize_u8(src, sw, sh, 3, dst, dw, dh, "control image", e);
    if (mode != 1 && mode != 2) return sdxl_seterr(e, SDXL_ERR_ARG, "control resize: mode %d (0 just, 1 crop, 2 fill)", mode);
    double kx = (double)dw / sw, ky = (double)dh / sh, k = mode == 1 ? (kx > ky ? kx : ky) : (kx < ky ? kx : ky);
    int rw = (int)lround(sw * k), rh = (int)lround(sh * k);
    if (mode == 1) {
        if (rw < dw) rw = dw;
        if (rh < dh) rh = dh;
    } else {
        if (rw > dw) rw = dw;
        if (rh > dh) rh = dh;
        if (rw < 1) rw = 1;
        if (rh < 1) rh = 1;
    }
    uint8_t *tmp = malloc((size_t)rw * (size_t)rh * 3);
    if (!tmp) return sdxl_seterr(e, SDXL_ERR_NOMEM, "control image: out of memory resizing");
    int st = sdxl_resize_u8(src, sw, sh, 3, tmp, rw, rh, "control image", e);
    if (!st && mode == 1) { /* centre crop */
        int ox = (rw - dw) / 2, oy = (rh - dh) / 2;
        for (int y = 0; y < dh; y++) memcpy(dst + (size_t)y * dw * 3, tmp + ((size_t)(y + oy) * rw + ox) * 3, (size_t)dw * 3);
    } else if (!st) { /* centred, black borders */
        int ox = (dw - rw) / 2, oy = (dh - rh) / 2;
        memset(dst, 0, (size_t)dw * (size_t)dh * 3);
        for (int y = 0; y < rh; y++) memcpy(dst + ((size_t)(y + oy) * dw + ox) * 3, tmp + (size_t)y * rw * 3, (size_t)rw * 3);
    }
    free(tmp);
    return st;
}
