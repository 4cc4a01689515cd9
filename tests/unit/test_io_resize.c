/* io/resize against a plain double-precision reference of PIL's LANCZOS definition. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "io/resize.h"

/* Reference weights of output i on input tap j (0 outside the window), PIL's definition:
 * centre (i + 0.5) * in / out, support 3 * max(scale, 1), window rounded by truncation and
 * clamped, weights normalised over the window, then quantised to 22-bit fixed point. */
static double ref_kernel(double x) {
    if (!(x >= -3.0 && x < 3.0)) return 0.0;
    double a = x == 0.0 ? 1.0 : sin(M_PI * x) / (M_PI * x);
    double b = x == 0.0 ? 1.0 : sin(M_PI * x / 3.0) / (M_PI * x / 3.0);
    return a * b;
}

/* Fills w[out][in] with normalised double weights. */
static void ref_weights(int in, int out, double *w) {
    double scale = (double)in / out, fs = scale > 1.0 ? scale : 1.0, sup = 3.0 * fs;
    for (int i = 0; i < out; i++) {
        double c = (i + 0.5) * scale, sum = 0.0;
        int lo = (int)(c - sup + 0.5), hi = (int)(c + sup + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        for (int j = 0; j < in; j++) {
            w[(size_t)i * in + j] = (j >= lo && j < hi) ? ref_kernel((j - c + 0.5) / fs) : 0.0;
            sum += w[(size_t)i * in + j];
        }
        for (int j = 0; j < in; j++)
            if (sum != 0.0) w[(size_t)i * in + j] /= sum;
    }
}

/* One 1-D pass over a strided line. quant: PIL's fixed point and uint8 rounding; else double,
 * only clamped to 0..255 (what a uint8 intermediate must do to Lanczos' overshoot). */
static void ref_line(const double *src, size_t sstride, int in, double *dst, size_t dstride, int out,
                     const double *w, int quant) {
    for (int i = 0; i < out; i++) {
        double acc = 0.0;
        int64_t iacc = 1 << 21;
        for (int j = 0; j < in; j++) {
            double wj = w[(size_t)i * in + j];
            double q = wj * 4194304.0;
            int64_t k = (int64_t)(q < 0 ? q - 0.5 : q + 0.5);
            acc += wj * src[(size_t)j * sstride];
            iacc += k * (int64_t)src[(size_t)j * sstride];
        }
        if (quant) {
            int64_t v = iacc < 0 ? 0 : iacc / 4194304;
            dst[(size_t)i * dstride] = (double)(v > 255 ? 255 : v);
        } else {
            dst[(size_t)i * dstride] = acc < 0 ? 0 : acc > 255 ? 255 : acc;
        }
    }
}

/* Full reference: horizontal pass (skipped when the width is unchanged), then vertical. */
static void ref_resize(const uint8_t *src, int iw, int ih, int ch, double *dst, int ow, int oh, int quant) {
    double *a = malloc(sizeof(double) * (size_t)iw * ih * ch);
    double *mid = malloc(sizeof(double) * (size_t)ow * ih * ch);
    double *wx = malloc(sizeof(double) * (size_t)iw * ow), *wy = malloc(sizeof(double) * (size_t)ih * oh);
    for (size_t i = 0; i < (size_t)iw * ih * ch; i++) a[i] = src[i];
    ref_weights(iw, ow, wx);
    ref_weights(ih, oh, wy);
    if (iw == ow) memcpy(mid, a, sizeof(double) * (size_t)iw * ih * ch);
    else
        for (int y = 0; y < ih; y++)
            for (int c = 0; c < ch; c++)
                ref_line(a + (size_t)y * iw * ch + c, ch, iw, mid + (size_t)y * ow * ch + c, ch, ow, wx, quant);
    if (ih == oh) memcpy(dst, mid, sizeof(double) * (size_t)ow * ih * ch);
    else
        for (int x = 0; x < ow * ch; x++) ref_line(mid + x, (size_t)ow * ch, ih, dst + x, (size_t)ow * ch, oh, wy, quant);
    free(a);
    free(mid);
    free(wx);
    free(wy);
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Random image, or a smooth one (gradients are what photos mostly are). */
static void fill(uint8_t *p, size_t n, int smooth, uint64_t *s) {
    for (size_t i = 0; i < n; i++) p[i] = smooth ? (uint8_t)((i * 7 + (i / 13) * 3) & 0xff) : (uint8_t)rng_next(s);
}

/* Compares against both references: bit-exact with the fixed-point one, and within 2 of the
 * pure-double one (each of the two passes rounds to uint8, and Lanczos' negative lobes can
 * amplify the first pass's 0.5 rounding error by up to sum|w| ~ 1.3). */
static void compare(int iw, int ih, int ch, int ow, int oh, int smooth, uint64_t *s) {
    size_t ni = (size_t)iw * ih * ch, no = (size_t)ow * oh * ch;
    uint8_t *src = malloc(ni), *dst = malloc(no);
    double *rq = malloc(no * sizeof(double)), *rd = malloc(no * sizeof(double));
    fill(src, ni, smooth, s);
    sdxl_err e = {0};
    int st = sdxl_resize_u8(src, iw, ih, ch, dst, ow, oh, "t", &e);
    CHECK(st == 0, "%dx%dx%d -> %dx%d: status %d %s", iw, ih, ch, ow, oh, st, e.msg);
    ref_resize(src, iw, ih, ch, rq, ow, oh, 1);
    ref_resize(src, iw, ih, ch, rd, ow, oh, 0);
    size_t bad = 0;
    double maxd = 0;
    for (size_t i = 0; i < no; i++) {
        if (dst[i] != (uint8_t)rq[i]) bad++;
        if (fabs(dst[i] - rd[i]) > maxd) maxd = fabs(dst[i] - rd[i]);
    }
    CHECK(bad == 0, "%dx%dx%d -> %dx%d (%s): %zu of %zu differ from the fixed-point reference", iw, ih, ch, ow, oh,
          smooth ? "smooth" : "noise", bad, no);
    CHECK(maxd <= 2.0, "%dx%dx%d -> %dx%d (%s): max |diff| %.3f vs the double reference (limit 2)", iw, ih, ch, ow,
          oh, smooth ? "smooth" : "noise", maxd);
    free(src);
    free(dst);
    free(rq);
    free(rd);
}

int main(void) {
    uint64_t s = 42;
    sdxl_err e = {0};

    /* sizes: down and up, odd, 1xN and Nx1, extreme ratios, one axis only */
    static const int cases[][4] = {
        {96, 64, 64, 64}, {64, 96, 64, 64}, {64, 64, 96, 80}, {17, 13, 8, 8}, {13, 17, 31, 29}, {7, 5, 3, 2},
        {1, 9, 1, 4},     {9, 1, 4, 1},     {1, 1, 5, 3},     {5, 3, 1, 1}, {100, 3, 7, 3}, {3, 100, 3, 7},
        {200, 150, 64, 48}, {33, 21, 64, 40}, {1, 40, 1, 40}, {40, 1, 39, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int ch = 1; ch <= 3; ch += 2)
            for (int smooth = 0; smooth < 2; smooth++)
                compare(cases[k][0], cases[k][1], ch, cases[k][2], cases[k][3], smooth, &s);

    /* identity at scale 1 */
    {
        uint8_t a[5 * 7 * 3], b[5 * 7 * 3];
        fill(a, sizeof a, 0, &s);
        CHECK(sdxl_resize_u8(a, 5, 7, 3, b, 5, 7, NULL, &e) == 0 && !memcmp(a, b, sizeof a), "identity");
    }
    /* constant images stay exactly constant, up and down, for the extreme values too */
    {
        static const uint8_t vals[] = {0, 1, 77, 128, 254, 255};
        uint8_t a[23 * 11], b[40 * 17];
        for (size_t v = 0; v < sizeof vals; v++) {
            memset(a, vals[v], sizeof a);
            int ok = sdxl_resize_u8(a, 23, 11, 1, b, 40, 17, NULL, &e) == 0;
            for (size_t i = 0; i < 40 * 17; i++) ok &= b[i] == vals[v];
            memset(b, vals[v], sizeof b);
            ok &= sdxl_resize_u8(b, 40, 17, 1, a, 9, 4, NULL, &e) == 0;
            for (size_t i = 0; i < 9 * 4; i++) ok &= a[i] == vals[v];
            CHECK(ok, "constant %d image stays constant", vals[v]);
        }
    }
    /* a mirror-symmetric input gives a mirror-symmetric output */
    {
        int iw = 31, ow = 12;
        uint8_t a[31], b[12], c[20];
        for (int i = 0; i < iw; i++) a[i] = a[iw - 1 - i] = (uint8_t)rng_next(&s);
        int ok = sdxl_resize_u8(a, iw, 1, 1, b, ow, 1, NULL, &e) == 0;
        for (int i = 0; i < ow; i++) ok &= b[i] == b[ow - 1 - i];
        ok &= sdxl_resize_u8(a, iw, 1, 1, c, 20, 1, NULL, &e) == 0;
        for (int i = 0; i < 20; i++) ok &= c[i] == c[19 - i];
        CHECK(ok, "symmetric input gives a symmetric output");
    }
    /* known small cases, worked by hand from the definition */
    {
        uint8_t a[2] = {10, 21}, b[4];
        CHECK(sdxl_resize_u8(a, 2, 1, 1, b, 1, 1, NULL, &e) == 0 && b[0] == 16, "[10 21] -> 1: 15.5 rounds up to 16");
        a[1] = 20;
        CHECK(sdxl_resize_u8(a, 1, 2, 1, b, 1, 1, NULL, &e) == 0 && b[0] == 15, "[10 20] vertical -> 1: 15");
        uint8_t ramp[2] = {0, 255};
        /* weights L(0.25), L(1.25) etc. normalised: 255 * -0.1755 clamps to 0, 255 * 0.2329 = 59.4 */
        CHECK(sdxl_resize_u8(ramp, 2, 1, 1, b, 4, 1, NULL, &e) == 0 && b[0] == 0 && b[1] == 59 && b[2] == 196 &&
                  b[3] == 255,
              "[0 255] -> 4: got [%d %d %d %d], want [0 59 196 255]", b[0], b[1], b[2], b[3]);
        uint8_t chk[4] = {0, 255, 255, 0};
        CHECK(sdxl_resize_u8(chk, 2, 2, 1, b, 1, 1, NULL, &e) == 0 && b[0] == 128, "2x2 checker -> 1x1: 128");
        uint8_t rgb[6] = {255, 0, 10, 255, 0, 20};
        CHECK(sdxl_resize_u8(rgb, 2, 1, 3, b, 1, 1, NULL, &e) == 0 && b[0] == 255 && b[1] == 0 && b[2] == 15,
              "RGB channels are independent: got %d %d %d", b[0], b[1], b[2]);
    }
    /* bad arguments are errors naming the image, never crashes */
    {
        uint8_t a[16] = {0}, b[16];
        struct { const uint8_t *src; int iw, ih, ch; uint8_t *dst; int ow, oh; const char *why; } bad[] = {
            {NULL, 2, 2, 1, b, 2, 2, "null source"},      {a, 2, 2, 1, NULL, 2, 2, "null destination"},
            {a, 2, 2, 0, b, 2, 2, "0 channels"},          {a, 2, 2, 5, b, 2, 2, "5 channels"},
            {a, 0, 2, 1, b, 2, 2, "zero width"},          {a, 2, -1, 1, b, 2, 2, "negative height"},
            {a, 2, 2, 1, b, 0, 2, "zero target width"},   {a, 2, 2, 1, b, 2, -5, "negative target height"},
            {a, 2147483647, 2, 1, b, 2, 2, "INT_MAX width"}, {a, 2, 2, 1, b, 2, 2147483647, "INT_MAX target"},
            {a, 65537, 1, 1, b, 1, 1, "side over the limit"}, {a, 4, 4, 1, a + 2, 2, 2, "overlapping buffers"},
        };
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            sdxl_err_clear(&e);
            int st = sdxl_resize_u8(bad[k].src, bad[k].iw, bad[k].ih, bad[k].ch, bad[k].dst, bad[k].ow, bad[k].oh,
                                    "init_image", &e);
            CHECK(st != 0 && strstr(e.msg, "init_image:"), "%s: status %d, message \"%s\"", bad[k].why, st, e.msg);
        }
    }
    return check_done();
}
