/* linear and conv2d (oneDNN) against double-precision references, in f32 and bf16, odd sizes,
 * fused bias and accumulation, asymmetric pads, shapes other than the one the weights were laid
 * out for, the primitive cache, and rejection of bad arguments.
 *
 * Thresholds (NMSE against the double reference):
 *  - f32 1e-10: each output is a K-term f32 dot product; rounding errors are ~eps = 6e-8
 *    relative per term and add up like a random walk, so NMSE ~ K eps^2 = 3.6e-15 K, below
 *    1e-10 for every K used here (K <= 2000: 7e-12) with a 10x margin.
 *  - bf16 5e-5: both inputs are rounded to 8-bit mantissas (relative RMS error 2^-9/sqrt(3) =
 *    2.3e-3 each), so each product carries ~3.2e-3 relative RMS error and a dot product of
 *    random terms NMSE ~ 1e-5; 5e-5 leaves a 5x margin and still catches any real bug (a wrong
 *    layout or dropped term gives NMSE > 1e-2).
 *  - fused GEGLU against the same GEMM and GEGLU apart, 1e-8: both store bf16, whose own rounding
 *    is NMSE ~ 2^-18 = 4e-6; they differ where the epilogue's 1 + erf(x) cancels in f32 for gates
 *    below -3 (absolute errors ~1e-7 |h|, NMSE ~1e-10 here) or a sum rounds the other way at a
 *    bf16 tie, far below the format's rounding, while a wrong half or a missing GELU is > 1e-2. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/threads.h"
#include "check.h"
#include "tensor/ops.h"

#define NMSE_F32 1e-10
#define NMSE_BF16 5e-5
#define NMSE_GEGLU 1e-8

static uint64_t rng = 12345;

static float *rnd(int64_t n, float lo, float hi) {
    float *x = malloc((size_t)n * 4);
    check_fill_uniform(x, n, lo, hi, &rng);
    return x;
}

static uint16_t *to_f16(const float *x, int64_t n) {
    uint16_t *h = malloc((size_t)n * 2);
    sdxl_f32_to_f16(x, h, (size_t)n);
    return h;
}

/* y[M,N] = x W^T + b (+ y0) in double. */
static void ref_linear(const float *x, const float *w, const float *b, const float *y0, int64_t M, int64_t K,
                       int64_t N, double *y) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = b ? b[j] : 0;
            for (int64_t k = 0; k < K; k++) s += (double)x[i * K + k] * w[j * K + k];
            y[i * N + j] = s + (y0 ? y0[i * N + j] : 0);
        }
}

static void test_linear(sdxl_compute *c, int64_t M, int64_t K, int64_t N, int with_bias, int accum, int f16w) {
    sdxl_prec prec = sdxl_compute_prec(c);
    float *x = rnd(M * K, -1, 1), *w = rnd(N * K, -0.5f, 0.5f), *b = rnd(N, -1, 1), *y = rnd(M * N, -1, 1);
    float *y0 = malloc((size_t)(M * N) * 4);
    memcpy(y0, y, (size_t)(M * N) * 4);
    uint16_t *wh = NULL;
    if (f16w) { /* weights arrive as f16: the reference uses the same rounded values */
        wh = to_f16(w, N * K);
        sdxl_f16_to_f32(wh, w, (size_t)(N * K));
    }
    double *ref = malloc((size_t)(M * N) * 8);
    ref_linear(x, w, with_bias ? b : NULL, accum ? y0 : NULL, M, K, N, ref);
    sdxl_linear l;
    sdxl_err e = {0};
    int st = sdxl_linear_init(c, &l, K, N, f16w ? (const void *)wh : w, f16w ? SDXL_F16 : SDXL_F32,
                              with_bias ? b : NULL, SDXL_F32, &e);
    CHECK(st == SDXL_OK, "linear init %s", e.msg);
    if (st == SDXL_OK) {
        st = sdxl_linear_fwd(c, &l, x, M, y, accum ? SDXL_OP_ACCUM : 0, &e);
        CHECK(st == SDXL_OK, "linear fwd %s", e.msg);
        double nm = check_nmse(y, ref, M * N), thr = prec == SDXL_PREC_BF16 ? NMSE_BF16 : NMSE_F32;
        CHECK(nm <= thr, "linear %s M=%lld K=%lld N=%lld bias=%d accum=%d f16w=%d: nmse %.3g > %.3g",
              prec == SDXL_PREC_BF16 ? "bf16" : "f32", (long long)M, (long long)K, (long long)N, with_bias, accum,
              f16w, nm, thr);
        sdxl_linear_free(&l);
    }
    free(x), free(w), free(b), free(y), free(y0), free(wh), free(ref);
}

/* NHWC conv in double; w torch [co, ci, kh, kw]. */
static void ref_conv(const float *x, const float *w, const float *b, const float *y0, int64_t n, int64_t h, int64_t wd,
                     int64_t ci, int64_t co, int kh, int kw, int s, int pt, int pl, int64_t oh, int64_t ow,
                     double *y) {
    for (int64_t bi = 0; bi < n; bi++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++)
                for (int64_t o = 0; o < co; o++) {
                    double acc = b ? b[o] : 0;
                    for (int ky = 0; ky < kh; ky++) {
                        int64_t iy = oy * s - pt + ky;
                        if (iy < 0 || iy >= h) continue;
                        for (int kx = 0; kx < kw; kx++) {
                            int64_t ix = ox * s - pl + kx;
                            if (ix < 0 || ix >= wd) continue;
                            const float *xp = x + ((bi * h + iy) * wd + ix) * ci;
                            for (int64_t i = 0; i < ci; i++) acc += (double)xp[i] * w[((o * ci + i) * kh + ky) * kw + kx];
                        }
                    }
                    int64_t idx = ((bi * oh + oy) * ow + ox) * co + o;
                    y[idx] = acc + (y0 ? y0[idx] : 0);
                }
}

static void test_conv(sdxl_compute *c, int64_t n, int64_t h, int64_t wd, int64_t ci, int64_t co, int k, int s, int pt,
                      int pl, int pb, int pr, int accum) {
    sdxl_prec prec = sdxl_compute_prec(c);
    float *x = rnd(n * h * wd * ci, -1, 1), *w = rnd(co * ci * k * k, -0.3f, 0.3f), *b = rnd(co, -1, 1);
    sdxl_conv2d cv;
    sdxl_err e = {0};
    int st = sdxl_conv2d_init(c, &cv, ci, co, k, k, s, pt, pl, pb, pr, w, SDXL_F32, b, SDXL_F32, &e);
    CHECK(st == SDXL_OK, "conv init %s", e.msg);
    if (st != SDXL_OK) {
        free(x), free(w), free(b);
        return;
    }
    int64_t oh, ow;
    sdxl_conv2d_out_size(&cv, h, wd, &oh, &ow);
    int64_t ny = n * oh * ow * co;
    float *y = rnd(ny, -1, 1), *y0 = malloc((size_t)ny * 4);
    memcpy(y0, y, (size_t)ny * 4);
    double *ref = malloc((size_t)ny * 8);
    ref_conv(x, w, b, accum ? y0 : NULL, n, h, wd, ci, co, k, k, s, pt, pl, oh, ow, ref);
    st = sdxl_conv2d_fwd(c, &cv, x, n, h, wd, y, accum ? SDXL_OP_ACCUM : 0, &e);
    CHECK(st == SDXL_OK, "conv fwd %s", e.msg);
    double nm = check_nmse(y, ref, ny), thr = prec == SDXL_PREC_BF16 ? NMSE_BF16 : NMSE_F32;
    CHECK(nm <= thr, "conv %s n=%lld %lldx%lld %lld->%lld k=%d s=%d pads=(%d,%d,%d,%d) accum=%d: nmse %.3g > %.3g",
          prec == SDXL_PREC_BF16 ? "bf16" : "f32", (long long)n, (long long)h, (long long)wd, (long long)ci,
          (long long)co, k, s, pt, pl, pb, pr, accum, nm, thr);
    sdxl_conv2d_free(&cv);
    free(x), free(w), free(b), free(y), free(y0), free(ref);
}

static void test_cache(sdxl_compute *c) {
    float *w = rnd(40 * 24, -1, 1), *x = rnd(100 * 24, -1, 1), *y = malloc(100 * 40 * 4);
    sdxl_linear a, b;
    sdxl_err e = {0};
    CHECK(sdxl_linear_init(c, &a, 24, 40, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_OK, "%s", e.msg);
    CHECK(sdxl_linear_init(c, &b, 24, 40, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_OK, "%s", e.msg);
    int64_t n0 = sdxl_compute_n_primitives(c);
    CHECK(sdxl_linear_fwd(c, &a, x, 100, y, 0, &e) == SDXL_OK, "%s", e.msg);
    int64_t n1 = sdxl_compute_n_primitives(c);
    CHECK(n1 == n0 + 1, "first call creates one primitive (%lld -> %lld)", (long long)n0, (long long)n1);
    for (int i = 0; i < 3; i++) CHECK(sdxl_linear_fwd(c, &a, x, 100, y, 0, &e) == SDXL_OK, "%s", e.msg);
    CHECK(sdxl_linear_fwd(c, &b, x, 100, y, 0, &e) == SDXL_OK, "%s", e.msg);
    CHECK(sdxl_compute_n_primitives(c) == n1, "repeated shape and same-shape layer hit the cache (%lld)",
          (long long)sdxl_compute_n_primitives(c));
    CHECK(sdxl_linear_fwd(c, &a, x, 50, y, 0, &e) == SDXL_OK, "%s", e.msg);
    CHECK(sdxl_compute_n_primitives(c) == n1 + 1, "a new M makes one new primitive");
    CHECK(sdxl_linear_fwd(c, &a, x, 50, y, SDXL_OP_ACCUM, &e) == SDXL_OK, "%s", e.msg);
    CHECK(sdxl_compute_n_primitives(c) == n1 + 2, "accumulation is its own primitive");
    sdxl_linear_free(&a);
    sdxl_linear_free(&b);
    free(w), free(x), free(y);
}

static void test_errors(sdxl_compute *c) {
    float w[16] = {0};
    sdxl_linear l;
    sdxl_conv2d cv;
    sdxl_err e = {0};
    CHECK(sdxl_linear_init(c, &l, 0, 4, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_ERR_ARG, "in=0 rejected");
    CHECK(strstr(e.msg, "linear") != NULL, "message names the op: %s", e.msg);
    CHECK(sdxl_linear_init(c, &l, INT64_MAX / 2, 4, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_ERR_ARG,
          "huge size rejected before allocation");
    CHECK(sdxl_linear_init(c, &l, 4, 4, NULL, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_ERR_ARG, "NULL weights rejected");
    CHECK(sdxl_linear_init(c, &l, 4, 4, w, (sdxl_dtype)7, NULL, SDXL_F32, &e) == SDXL_ERR_ARG, "bad dtype rejected");
    CHECK(sdxl_conv2d_init(c, &cv, 1, 1, 3, 3, 0, 1, 1, 1, 1, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_ERR_ARG,
          "stride 0 rejected");
    CHECK(sdxl_conv2d_init(c, &cv, 1, 1, 3, 3, 1, -1, 1, 1, 1, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_ERR_ARG,
          "negative pad rejected");
    CHECK(sdxl_conv2d_init(c, &cv, 1, 1, 3, 3, 1, 0, 0, 0, 0, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_OK, "%s", e.msg);
    float x[4] = {0}, y[4];
    CHECK(sdxl_conv2d_fwd(c, &cv, x, 1, 2, 2, y, 0, &e) == SDXL_ERR_ARG, "input smaller than the kernel rejected");
    CHECK(sdxl_conv2d_fwd(c, &cv, x, 1, -2, 2, y, 0, &e) == SDXL_ERR_ARG, "negative size rejected");
    sdxl_conv2d_free(&cv);
    sdxl_linear l2;
    CHECK(sdxl_linear_init(c, &l2, 2, 2, w, SDXL_F32, NULL, SDXL_F32, &e) == SDXL_OK, "%s", e.msg);
    CHECK(sdxl_linear_fwd(c, &l2, x, -1, y, 0, &e) == SDXL_ERR_ARG, "negative M rejected");
    CHECK(sdxl_linear_fwd(c, &l2, x, 0, y, 0, &e) == SDXL_OK, "M=0 is a no-op");
    sdxl_linear_free(&l2);
}

/* GroupNorm+SiLU written as bf16 and fed with SDXL_OP_SRC_BF16 gives the very bits of the f32
 * norm fed plainly (the GEMM converts it the same way); an f32 context refuses the flag. */
static void test_src_bf16(sdxl_compute *c) {
    const int64_t n = 2, h = 9, wd = 7, ci = 64, co = 48, m = n * h * wd;
    float *x = rnd(m * ci, -2, 3), *w = rnd(co * ci * 9, -0.2f, 0.2f), *b = rnd(co, -1, 1), *g = rnd(ci, 0.5f, 1.5f),
          *be = rnd(ci, -0.5f, 0.5f), *t = malloc(sizeof(float) * (size_t)(m * ci)),
          *y1 = malloc(sizeof(float) * (size_t)(m * co)), *y2 = malloc(sizeof(float) * (size_t)(m * co));
    sdxl_conv2d cv;
    sdxl_err e = {0};
    CHECK(sdxl_conv2d_init(c, &cv, ci, co, 3, 3, 1, 1, 1, 1, 1, w, SDXL_F32, b, SDXL_F32, &e) == SDXL_OK, "%s", e.msg);
    sdxl_group_norm(x, t, n, h * wd, ci, 32, 1e-6f, g, be, 1);
    CHECK(sdxl_conv2d_fwd(c, &cv, t, n, h, wd, y1, 0, &e) == SDXL_OK, "plain conv: %s", e.msg);
    uint16_t *xb = sdxl_compute_src_bf16(c, m * ci);
    CHECK(xb != NULL, "GEMM-input buffer");
    if (sdxl_compute_prec(c) == SDXL_PREC_BF16 && xb) {
        sdxl_group_norm_bf16(x, xb, n, h * wd, ci, 32, 1e-6f, g, be, 1);
        CHECK(sdxl_conv2d_fwd(c, &cv, (const float *)(const void *)xb, n, h, wd, y2, SDXL_OP_SRC_BF16, &e) == SDXL_OK,
              "bf16-input conv: %s", e.msg);
        CHECK(!memcmp(y1, y2, sizeof(float) * (size_t)(m * co)), "group norm to bf16 + SRC_BF16 conv equals the f32 path bit for bit");
        /* the buffer keeps its contents while it need not grow: a second GEMM reads the same input */
        CHECK(sdxl_compute_src_bf16(c, m * ci) == xb, "same buffer");
        CHECK(sdxl_conv2d_fwd(c, &cv, (const float *)(const void *)xb, n, h, wd, y2, SDXL_OP_SRC_BF16, &e) == SDXL_OK &&
                  !memcmp(y1, y2, sizeof(float) * (size_t)(m * co)),
              "second GEMM on the same bf16 input");
    } else {
        CHECK(sdxl_conv2d_fwd(c, &cv, x, n, h, wd, y2, SDXL_OP_SRC_BF16, &e) == SDXL_ERR_ARG, "f32 context refuses a bf16 input");
    }
    sdxl_conv2d_free(&cv);
    /* GEGLU to bf16: the f32 GEGLU's values rounded like the GEMM input conversion, odd widths too */
    for (int64_t f = 300; f <= 640; f += 340) {
        const int64_t rows = 5;
        float *gx = rnd(rows * 2 * f, -4, 4), *gy = malloc(sizeof(float) * (size_t)(rows * f));
        uint16_t *r1 = malloc(2 * (size_t)(rows * f)), *r2 = malloc(2 * (size_t)(rows * f));
        sdxl_geglu(gx, gy, rows, f);
        sdxl_f32_to_bf16(gy, r1, (size_t)(rows * f));
        sdxl_geglu_bf16(gx, r2, rows, f);
        CHECK(!memcmp(r1, r2, 2 * (size_t)(rows * f)), "GEGLU to bf16 equals the rounded f32 GEGLU (f = %lld)", (long long)f);
        free(gx);
        free(gy);
        free(r1);
        free(r2);
    }
    /* LayerNorm to bf16: the f32 norm's values rounded like the GEMM input conversion, odd widths too */
    for (int64_t cw = 300; cw <= 1300; cw += 980) {
        const int64_t rows = 7;
        float *lx = rnd(rows * cw, -3, 5), *lg = rnd(cw, 0.5f, 1.5f), *lb = rnd(cw, -0.5f, 0.5f),
              *ly = malloc(sizeof(float) * (size_t)(rows * cw));
        uint16_t *r1 = malloc(2 * (size_t)(rows * cw)), *r2 = malloc(2 * (size_t)(rows * cw));
        for (int affine = 0; affine < 2; affine++) {
            sdxl_layer_norm(lx, ly, rows, cw, 1e-5f, affine ? lg : NULL, affine ? lb : NULL);
            sdxl_f32_to_bf16(ly, r1, (size_t)(rows * cw));
            sdxl_layer_norm_bf16(lx, r2, rows, cw, 1e-5f, affine ? lg : NULL, affine ? lb : NULL);
            CHECK(!memcmp(r1, r2, 2 * (size_t)(rows * cw)), "layer norm to bf16 equals the rounded f32 norm (c = %lld)",
                  (long long)cw);
        }
        /* with a residual added first: x + res kept in x, and the norm of the sum, both bit for bit */
        float *res = rnd(rows * cw, -2, 2), *xs = malloc(sizeof(float) * (size_t)(rows * cw)),
              *xf = malloc(sizeof(float) * (size_t)(rows * cw));
        sdxl_add(lx, res, xs, rows * cw);
        sdxl_layer_norm_bf16(xs, r1, rows, cw, 1e-5f, lg, lb);
        memcpy(xf, lx, sizeof(float) * (size_t)(rows * cw));
        sdxl_add_layer_norm_bf16(xf, res, r2, rows, cw, 1e-5f, lg, lb);
        CHECK(!memcmp(r1, r2, 2 * (size_t)(rows * cw)) && !memcmp(xs, xf, sizeof(float) * (size_t)(rows * cw)),
              "add + layer norm to bf16 equals the add, then the norm (c = %lld)", (long long)cw);
        free(res);
        free(xs);
        free(xf);
        free(lx);
        free(lg);
        free(lb);
        free(ly);
        free(r1);
        free(r2);
    }
    free(x);
    free(w);
    free(b);
    free(g);
    free(be);
    free(t);
    free(y1);
    free(y2);
}

/* The fused GEGLU feed-forward input (bf16): the linear then the GEGLU to bf16, but for GELU's own
 * f32 rounding (NMSE_GEGLU); rows do not depend on the others (a batch gives its items' bits); an
 * f32 context and widths that do not split refuse it. */
static void test_geglu_fused(sdxl_compute *c) {
    static const int64_t shapes[][3] = {{37, 96, 128}, {300, 160, 640}, {5, 1280, 256}, {8, 64, 100}};
    for (int si = 0; si < 4; si++) {
        int64_t M = shapes[si][0], K = shapes[si][1], f = shapes[si][2], N = 2 * f;
        float *x = rnd(M * K, -2, 2), *w = rnd(N * K, -0.2f, 0.2f), *b = rnd(N, -1, 1);
        float *p = malloc(sizeof(float) * (size_t)(M * N)), *g = malloc(sizeof(float) * (size_t)(M * f));
        uint16_t *r1 = malloc(2 * (size_t)(M * f)), *r2 = malloc(2 * (size_t)(M * f)), *r3 = malloc(2 * (size_t)(M * f));
        sdxl_linear l;
        sdxl_err e = {0};
        CHECK(sdxl_linear_init(c, &l, K, N, w, SDXL_F32, b, SDXL_F32, &e) == SDXL_OK, "%s", e.msg);
        int rc = sdxl_linear_geglu_bf16(c, &l, x, M, g, r2, 0, &e);
        if (sdxl_compute_prec(c) != SDXL_PREC_BF16 || f % 64) {
            CHECK(rc == SDXL_ERR_UNSUPPORTED, "fused GEGLU refused (f32 context or f = %lld): %d", (long long)f, rc);
        } else {
            CHECK(rc == SDXL_OK, "fused GEGLU: %s", e.msg);
            CHECK(sdxl_linear_fwd(c, &l, x, M, p, 0, &e) == SDXL_OK, "%s", e.msg);
            sdxl_geglu_bf16(p, r1, M, f);
            double se = 0, ss = 0;
            float *v1 = malloc(4 * (size_t)(M * f)), *v2 = malloc(4 * (size_t)(M * f));
            sdxl_bf16_to_f32(r1, v1, (size_t)(M * f));
            sdxl_bf16_to_f32(r2, v2, (size_t)(M * f));
            for (int64_t i = 0; i < M * f; i++) {
                se += (v1[i] - v2[i]) * (double)(v1[i] - v2[i]);
                ss += v1[i] * (double)v1[i];
            }
            CHECK(se <= NMSE_GEGLU * ss, "fused GEGLU %lldx%lldx%lld: NMSE %g against the linear and GEGLU apart",
                  (long long)M, (long long)K, (long long)N, se / ss);
            free(v1);
            free(v2);
            int64_t m2 = M / 2 + 1;
            CHECK(sdxl_linear_geglu_bf16(c, &l, x + (M - m2) * K, m2, g, r3, 0, &e) == SDXL_OK &&
                      !memcmp(r3, r2 + (M - m2) * f, 2 * (size_t)(m2 * f)),
                  "fused GEGLU rows are independent of the batch");
        }
        sdxl_linear_free(&l);
        free(x);
        free(w);
        free(b);
        free(p);
        free(g);
        free(r1);
        free(r2);
        free(r3);
    }
}

static void run_prec(sdxl_prec prec) {
    sdxl_compute *c;
    sdxl_err e = {0};
    if (sdxl_compute_new(prec, &c, &e) != SDXL_OK) {
        CHECK(0, "compute_new: %s", e.msg);
        return;
    }
    /* odd sizes, f16 weights, bias or not, accumulate or not; M far from the layout's typical M */
    test_linear(c, 37, 53, 29, 1, 0, 0);
    test_linear(c, 1, 17, 5, 0, 0, 0);
    test_linear(c, 77, 96, 131, 1, 1, 1);
    test_linear(c, 300, 160, 640, 1, 0, 1);
    test_linear(c, 4096, 64, 48, 1, 1, 0);
    test_linear(c, 5, 1280, 12, 0, 1, 0);
    /* 3x3 s1 p1, 1x1, 3x3 s2 p1, the VAE downsampler's (0,0,1,1) s2, odd images and channels */
    test_conv(c, 1, 5, 7, 3, 4, 3, 1, 1, 1, 1, 1, 0);
    test_conv(c, 2, 8, 8, 4, 96, 3, 1, 1, 1, 1, 1, 1);
    test_conv(c, 2, 9, 6, 96, 32, 1, 1, 0, 0, 0, 0, 1);
    test_conv(c, 1, 11, 13, 32, 32, 3, 2, 1, 1, 1, 1, 0);
    test_conv(c, 1, 10, 7, 32, 32, 3, 2, 0, 0, 1, 1, 0);
    test_conv(c, 2, 16, 16, 64, 64, 3, 1, 1, 1, 1, 1, 0);
    test_conv(c, 1, 3, 3, 5, 3, 3, 1, 0, 0, 0, 0, 1);
    test_cache(c);
    test_errors(c);
    test_src_bf16(c);
    test_geglu_fused(c);
    sdxl_compute_free(c);
}

int main(void) {
    sdxl_threads_set(2);
    run_prec(SDXL_PREC_F32);
    run_prec(SDXL_PREC_BF16);
    return check_done();
}
