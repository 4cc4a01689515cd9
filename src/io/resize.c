#include "io/resize.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Pillow's fixed point: 8 bits of result, 2 spare bits for the kernel's negative lobes. */
#define PREC_BITS 22

/* One axis: for output i, taps start at first[i], count n[i], weights w[i * ksize ...]. */
typedef struct axis {
    int ksize;
    int *first, *n;
    int32_t *w;
} axis;

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double lanczos3(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

static void axis_free(axis *a) {
    free(a->first);
    free(a->n);
    free(a->w);
    memset(a, 0, sizeof *a);
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc: the centre of output i is (i + 0.5) * scale
 * in input coordinates; the window [centre - support, centre + support) is rounded (truncating
 * cast, then clamped to the image) and the weights renormalised over the taps that remain. */
static int axis_init(axis *a, int in, int out, const char *what, sdxl_err *e) {
    memset(a, 0, sizeof *a);
    double scale = (double)in / out;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = 3.0 * fscale;
    a->ksize = (int)ceil(support) * 2 + 1; /* in <= 65536: at most 393217 */
    double *tmp = malloc((size_t)a->ksize * sizeof(double));
    a->first = malloc((size_t)out * sizeof(int));
    a->n = malloc((size_t)out * sizeof(int));
    a->w = (size_t)out > SIZE_MAX / sizeof(int32_t) / (size_t)a->ksize
               ? NULL
               : malloc((size_t)out * (size_t)a->ksize * sizeof(int32_t));
    if (!tmp || !a->first || !a->n || !a->w) {
        free(tmp);
        axis_free(a);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory for the resize weights", what);
    }
    double ss = 1.0 / fscale;
    for (int i = 0; i < out; i++) {
        double centre = (i + 0.5) * scale;
        int lo = (int)(centre - support + 0.5);
        if (lo < 0) lo = 0;
        int hi = (int)(centre + support + 0.5);
        if (hi > in) hi = in;
        int n = hi - lo;
        if (n > a->ksize) n = a->ksize; /* cannot happen: the window spans at most ksize taps */
        double sum = 0.0;
        for (int t = 0; t < n; t++) {
            tmp[t] = lanczos3((t + lo - centre + 0.5) * ss);
            sum += tmp[t];
        }
        int32_t *w = a->w + (size_t)i * a->ksize;
        for (int t = 0; t < n; t++) {
            double v = (sum != 0.0 ? tmp[t] / sum : tmp[t]) * (double)(1 << PREC_BITS);
            w[t] = (int32_t)(v < 0 ? v - 0.5 : v + 0.5);
        }
        a->first[i] = lo;
        a->n[i] = n < 0 ? 0 : n;
    }
    free(tmp);
    return SDXL_OK;
}

/* Pillow's clip8: floor(acc / 2^22) clamped to 0..255 (acc carries the +0.5 rounding term). */
static inline uint8_t clip8(int64_t acc) {
    if (acc < 0) return 0;
    int64_t v = acc >> PREC_BITS;
    return (uint8_t)(v > 255 ? 255 : v);
}

/* Horizontal pass: rows x in_w -> rows x out_w. */
static void pass_h(const uint8_t *src, int in_w, int rows, int ch, uint8_t *dst, int out_w, const axis *a) {
    int64_t work = (int64_t)rows * out_w * a->ksize;
#pragma omp parallel for schedule(static) if (work > (1 << 20))
    for (int y = 0; y < rows; y++) {
        const uint8_t *s = src + (size_t)y * in_w * ch;
        uint8_t *d = dst + (size_t)y * out_w * ch;
        for (int x = 0; x < out_w; x++) {
            const int32_t *w = a->w + (size_t)x * a->ksize;
            const uint8_t *p = s + (size_t)a->first[x] * ch;
            for (int c = 0; c < ch; c++) {
                int64_t acc = 1 << (PREC_BITS - 1);
                for (int t = 0; t < a->n[x]; t++) acc += (int64_t)p[(size_t)t * ch + c] * w[t];
                d[(size_t)x * ch + c] = clip8(acc);
            }
        }
    }
}

/* Vertical pass: in_h x cols -> out_h x cols (cols counts bytes: width * channels). */
static void pass_v(const uint8_t *src, size_t cols, uint8_t *dst, int out_h, const axis *a) {
    int64_t work = (int64_t)out_h * (int64_t)cols * a->ksize;
#pragma omp parallel for schedule(static) if (work > (1 << 20))
    for (int y = 0; y < out_h; y++) {
        const int32_t *w = a->w + (size_t)y * a->ksize;
        const uint8_t *s = src + (size_t)a->first[y] * cols;
        uint8_t *d = dst + (size_t)y * cols;
        for (size_t x = 0; x < cols; x++) {
            int64_t acc = 1 << (PREC_BITS - 1);
            for (int t = 0; t < a->n[y]; t++) acc += (int64_t)s[(size_t)t * cols + x] * w[t];
            d[x] = clip8(acc);
        }
    }
}

static int bytes_of(int w, int h, int ch, size_t *out) {
    size_t n = (size_t)w;
    if (n > SIZE_MAX / (size_t)h) return 0;
    n *= (size_t)h;
    if (n > SIZE_MAX / (size_t)ch) return 0;
    *out = n * (size_t)ch;
    return 1;
}

int sdxl_resize_u8(const uint8_t *src, int in_w, int in_h, int channels, uint8_t *dst, int out_w, int out_h,
                   const char *what, sdxl_err *e) {
    if (!what) what = "image";
    if (!src || !dst) return sdxl_seterr(e, SDXL_ERR_ARG, "%s: resize needs a source and a destination", what);
    if (channels < 1 || channels > 4)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: channels must be 1..4, got %d", what, channels);
    if (in_w < 1 || in_h < 1 || in_w > SDXL_RESIZE_MAX_SIDE || in_h > SDXL_RESIZE_MAX_SIDE)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: source size %dx%d must be 1..%d a side", what, in_w, in_h,
                           SDXL_RESIZE_MAX_SIDE);
    if (out_w < 1 || out_h < 1 || out_w > SDXL_RESIZE_MAX_SIDE || out_h > SDXL_RESIZE_MAX_SIDE)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: target size %dx%d must be 1..%d a side", what, out_w, out_h,
                           SDXL_RESIZE_MAX_SIDE);
    size_t n_in, n_out, n_mid;
    if (!bytes_of(in_w, in_h, channels, &n_in) || !bytes_of(out_w, out_h, channels, &n_out) ||
        !bytes_of(out_w, in_h, channels, &n_mid))
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: %dx%d -> %dx%d overflows the address space", what, in_w, in_h,
                           out_w, out_h);
    uintptr_t s0 = (uintptr_t)src, d0 = (uintptr_t)dst;
    if (s0 < d0 + n_out && d0 < s0 + n_in)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: resize source and destination overlap", what);
    if (in_w == out_w && in_h == out_h) {
        memcpy(dst, src, n_out);
        return SDXL_OK;
    }
    axis ax = {0}, ay = {0};
    uint8_t *mid = NULL;
    int st = SDXL_OK;
    /* Pillow skips a pass whose size does not change: that pass would be the identity anyway. */
    if (in_w != out_w && (st = axis_init(&ax, in_w, out_w, what, e))) goto done;
    if (in_h != out_h && (st = axis_init(&ay, in_h, out_h, what, e))) goto done;
    if (in_w == out_w) {
        pass_v(src, (size_t)in_w * channels, dst, out_h, &ay);
    } else if (in_h == out_h) {
        pass_h(src, in_w, in_h, channels, dst, out_w, &ax);
    } else {
        if (!(mid = malloc(n_mid))) {
            st = sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory resizing %dx%d -> %dx%d", what, in_w, in_h, out_w,
                             out_h);
            goto done;
        }
        pass_h(src, in_w, in_h, channels, mid, out_w, &ax);
        pass_v(mid, (size_t)out_w * channels, dst, out_h, &ay);
    }
done:
    free(mid);
    axis_free(&ax);
    axis_free(&ay);
    return st;
}
