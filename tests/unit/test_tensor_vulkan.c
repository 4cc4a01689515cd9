/* Every Vulkan shader op against the CPU reference (tensor/ops.h, or a double-precision loop
 * for the GEMMs and attention), on random inputs with odd sizes; the allocator and the pipeline
 * cache. Runs on any Vulkan device; CI runs it on Mesa's lavapipe.
 *
 * Thresholds (NMSE):
 *  - GEMM/conv, f32 weights 1e-10: an f32 K-term dot product, NMSE ~ K eps^2 (as the CPU test).
 *  - f16 weights 1e-6: weights and inputs are rounded to 11-bit mantissas (relative RMS
 *    2^-11/sqrt(3) = 2.8e-4 each), so a random-term dot product has NMSE ~ 1.6e-7; 6x margin.
 *  - bf16 5e-5: the same with 8-bit mantissas, NMSE ~ 1e-5 (as the CPU's bf16 GEMM).
 *  - attention f32 1e-10 (as the CPU); f16 1e-6 and bf16 1e-4: q, k, v and P rounded.
 *  - norms, softmax, activations, GEGLU, timestep embedding 1e-12: the shaders compute in f32
 *    like the CPU kernels; the difference is a few ulp of exp/erfc/sin per element.
 *  - conversions, resize, concat, add, axpy, scale, bias: bit-exact. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tensor/ops.h"
#include "tensor/vk/vk_ops.h"

static uint64_t rng = 777;

static float *rnd(int64_t n, float lo, float hi) {
    float *x = malloc((size_t)(n ? n : 1) * 4);
    check_fill_uniform(x, n, lo, hi, &rng);
    return x;
}

static sdxl_vk_buf up(sdxl_vk *v, const float *x, int64_t n) {
    sdxl_vk_buf b;
    sdxl_err e = {0};
    int st = sdxl_vk_from_host(v, x, n, &b, &e);
    CHECK(!st, "upload %lld floats: %s", (long long)n, e.msg);
    return b;
}

static sdxl_vk_buf dev(sdxl_vk *v, int64_t n) {
    sdxl_vk_buf b;
    sdxl_err e = {0};
    CHECK(!sdxl_vk_alloc(v, (uint64_t)n * 4, &b, &e), "alloc: %s", e.msg);
    return b;
}

static float *down(sdxl_vk *v, const sdxl_vk_buf *b, int64_t n) {
    float *x = malloc((size_t)(n ? n : 1) * 4);
    sdxl_err e = {0};
    CHECK(!sdxl_vk_download(v, b, 0, x, (uint64_t)n * 4, &e), "download: %s", e.msg);
    return x;
}

static int exact(const float *a, const float *b, int64_t n) { return !memcmp(a, b, (size_t)n * 4); }

/* ---- GEMM ---- */

static double thr_for(sdxl_dtype s) { return s == SDXL_F32 ? 1e-10 : s == SDXL_F16 ? 1e-6 : 5e-5; }

static void test_linear(sdxl_vk *v, int64_t M, int64_t K, int64_t N, int bias, int accum, sdxl_dtype store) {
    float *x = rnd(M * K, -1, 1), *w = rnd(N * K, -0.5f, 0.5f), *b = rnd(N, -1, 1), *y0 = rnd(M * N, -1, 1);
    double *ref = malloc((size_t)(M * N) * 8);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = bias ? b[j] : 0;
            for (int64_t k = 0; k < K; k++) s += (double)x[i * K + k] * w[j * K + k];
            ref[i * N + j] = s + (accum ? y0[i * N + j] : 0);
        }
    sdxl_err e = {0};
    sdxl_vk_gemm_layer l;
    int st = sdxl_vk_linear_init(v, &l, K, N, w, SDXL_F32, bias ? b : NULL, SDXL_F32, store, &e);
    CHECK(!st, "linear init: %s", e.msg);
    sdxl_vk_buf bx = up(v, x, M * K), by = up(v, y0, M * N);
    st = sdxl_vk_linear_fwd(v, &l, &bx, M, &by, accum ? SDXL_OP_ACCUM : 0, &e);
    CHECK(!st, "linear fwd: %s", e.msg);
    float *y = down(v, &by, M * N);
    double nm = check_nmse(y, ref, M * N);
    CHECK(nm < thr_for(store), "linear M=%lld K=%lld N=%lld bias=%d accum=%d store=%d: nmse %.3g", (long long)M,
          (long long)K, (long long)N, bias, accum, (int)store, nm);
    printf("linear %lldx%lldx%lld store %d: nmse %.3g\n", (long long)M, (long long)K, (long long)N, (int)store, nm);
    sdxl_vk_layer_free(v, &l);
    sdxl_vk_release(v, &bx);
    sdxl_vk_release(v, &by);
    free(x), free(w), free(b), free(y0), free(ref), free(y);
}

static void test_conv(sdxl_vk *v, int64_t n, int64_t h, int64_t wd, int64_t cin, int64_t cout, int k, int s, int pt,
                      int pl, int pb, int pr, sdxl_dtype store) {
    int64_t oh = (h + pt + pb - k) / s + 1, ow = (wd + pl + pr - k) / s + 1;
    float *x = rnd(n * h * wd * cin, -1, 1), *w = rnd(cout * cin * k * k, -0.3f, 0.3f), *b = rnd(cout, -1, 1);
    double *ref = malloc((size_t)(n * oh * ow * cout) * 8);
    for (int64_t bi = 0; bi < n; bi++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++)
                for (int64_t co = 0; co < cout; co++) {
                    double acc = b[co];
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int64_t iy = oy * s - pt + ky, ix = ox * s - pl + kx;
                            if (iy < 0 || ix < 0 || iy >= h || ix >= wd) continue;
                            for (int64_t ci = 0; ci < cin; ci++)
                                acc += (double)x[((bi * h + iy) * wd + ix) * cin + ci] *
                                       w[((co * cin + ci) * k + ky) * k + kx];
                        }
                    ref[((bi * oh + oy) * ow + ox) * cout + co] = acc;
                }
    sdxl_err e = {0};
    sdxl_vk_gemm_layer l;
    int st = sdxl_vk_conv2d_init(v, &l, cin, cout, k, k, s, pt, pl, pb, pr, w, SDXL_F32, b, SDXL_F32, store, &e);
    CHECK(!st, "conv init: %s", e.msg);
    sdxl_vk_buf bx = up(v, x, n * h * wd * cin), by = dev(v, n * oh * ow * cout);
    st = sdxl_vk_conv2d_fwd(v, &l, &bx, n, h, wd, &by, 0, &e);
    CHECK(!st, "conv fwd: %s", e.msg);
    float *y = down(v, &by, n * oh * ow * cout);
    double nm = check_nmse(y, ref, n * oh * ow * cout);
    CHECK(nm < thr_for(store), "conv %lldx%lldx%lldx%lld->%lld k%d s%d pads (%d,%d,%d,%d) store %d: nmse %.3g",
          (long long)n, (long long)h, (long long)wd, (long long)cin, (long long)cout, k, s, pt, pl, pb, pr, (int)store,
          nm);
    printf("conv %lldx%lldx%lldx%lld->%lld k%d s%d store %d: nmse %.3g\n", (long long)n, (long long)h, (long long)wd,
           (long long)cin, (long long)cout, k, s, (int)store, nm);
    sdxl_vk_layer_free(v, &l);
    sdxl_vk_release(v, &bx);
    sdxl_vk_release(v, &by);
    free(x), free(w), free(b), free(ref), free(y);
}

/* ---- attention ---- */

static void test_attention(sdxl_vk *v, int64_t B, int64_t lq, int64_t lk, int heads, int d, int causal, int fused,
                           sdxl_dtype round, float spread) {
    int64_t W = (int64_t)heads * d;
    int64_t q_ld = fused ? 3 * W : W, kv_ld = fused ? 3 * W : W;
    if (fused) lk = lq;
    float *q = rnd(B * lq * q_ld, -spread, spread), *kv = fused ? q : rnd(2 * B * lk * kv_ld, -spread, spread);
    const float *kp = fused ? q + W : kv, *vp = fused ? q + 2 * W : kv + B * lk * kv_ld;
    float scale = 1.0f / sqrtf((float)d);
    double *ref = malloc((size_t)(B * lq * W) * 8), *sc = malloc((size_t)lk * 8);
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = 0; i < lq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < lk; j++) {
                    double s = 0;
                    for (int t = 0; t < d; t++)
                        s += (double)q[(b * lq + i) * q_ld + h * d + t] * kp[(b * lk + j) * kv_ld + h * d + t];
                    sc[j] = (causal && j > i) ? -INFINITY : s * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int64_t j = 0; j < lk; j++) sum += sc[j] = exp(sc[j] - mx);
                for (int t = 0; t < d; t++) {
                    double o = 0;
                    for (int64_t j = 0; j < lk; j++) o += sc[j] * vp[(b * lk + j) * kv_ld + h * d + t];
                    ref[(b * lq + i) * W + h * d + t] = o / sum;
                }
            }
    sdxl_err e = {0};
    sdxl_vk_buf bq = up(v, q, B * lq * q_ld), bkv = fused ? bq : up(v, kv, 2 * B * lk * kv_ld), bo = dev(v, B * lq * W);
    sdxl_vk_buf vk_ = fused ? sdxl_vk_view(&bq, (uint64_t)W * 4, bq.size - (uint64_t)W * 4) : bkv;
    sdxl_vk_buf vv = fused ? sdxl_vk_view(&bq, (uint64_t)W * 8, bq.size - (uint64_t)W * 8)
                           : sdxl_vk_view(&bkv, (uint64_t)(B * lk * kv_ld) * 4, (uint64_t)(B * lk * kv_ld) * 4);
    int st = sdxl_vk_attention(v, &bq, q_ld, &vk_, &vv, kv_ld, &bo, W, B, lq, lk, heads, d, scale, causal, round, &e);
    CHECK(!st, "attention: %s", e.msg);
    float *o = down(v, &bo, B * lq * W);
    double nm = check_nmse(o, ref, B * lq * W);
    double thr = round == SDXL_F32 ? 1e-10 : round == SDXL_F16 ? 1e-6 : 1e-4;
    CHECK(nm < thr, "attention B=%lld lq=%lld lk=%lld heads=%d d=%d causal=%d fused=%d round=%d: nmse %.3g",
          (long long)B, (long long)lq, (long long)lk, heads, d, causal, fused, (int)round, nm);
    printf("attention B=%lld lq=%lld lk=%lld %dx%d causal=%d fused=%d round=%d: nmse %.3g\n", (long long)B,
           (long long)lq, (long long)lk, heads, d, causal, fused, (int)round, nm);
    sdxl_vk_release(v, &bq);
    if (!fused) sdxl_vk_release(v, &bkv);
    sdxl_vk_release(v, &bo);
    free(q), free(ref), free(sc), free(o);
    if (!fused) free(kv);
}

/* ---- norms and elementwise against tensor/ops.h ---- */

static void cmp(const char *what, const float *got, const float *want, int64_t n, double thr) {
    double nm = check_nmse_f(got, want, n);
    CHECK(nm < thr, "%s: nmse %.3g (threshold %.0e)", what, nm, thr);
    printf("%s: nmse %.3g\n", what, nm);
}

static void test_norms(sdxl_vk *v) {
    sdxl_err e = {0};
    /* both strategies on every shape: the split one's chunks end mid-image (hw % 64 != 0) */
    struct { int64_t n, hw, c; int g, silu; float eps, off; } gn[] = {
        {2, 35, 96, 32, 0, 1e-5f, 3.0f},         {1, 143, 4, 2, 1, 1e-6f, 0.0f},
        {2, 11 * 13, 320, 32, 1, 1e-5f, -2.0f},  {2, 67 * 61, 64, 32, 1, 1e-5f, 5.0f},
        {1, 1000, 6, 3, 0, 1e-6f, -0.5f}};
    const char *pname[3] = {"auto", "one workgroup", "split"};
    for (size_t t = 0; t < sizeof gn / sizeof *gn; t++)
        for (int path = SDXL_VK_GN_AUTO; path <= SDXL_VK_GN_SPLIT; path++) {
            int64_t n = gn[t].n * gn[t].hw * gn[t].c;
            float *x = rnd(n, -1 + gn[t].off, 1 + gn[t].off), *g = rnd(gn[t].c, 0.5f, 1.5f), *b = rnd(gn[t].c, -1, 1);
            float *want = malloc((size_t)n * 4);
            sdxl_group_norm(x, want, gn[t].n, gn[t].hw, gn[t].c, gn[t].g, gn[t].eps, g, b, gn[t].silu);
            sdxl_vk_buf bx = up(v, x, n), bg = up(v, g, gn[t].c), bb = up(v, b, gn[t].c);
            CHECK(!sdxl_vk_group_norm_path(v, &bx, &bx, gn[t].n, gn[t].hw, gn[t].c, gn[t].g, gn[t].eps, &bg, &bb,
                                           gn[t].silu, (sdxl_vk_gn_path)path, &e),
                  "group norm: %s", e.msg);
            float *got = down(v, &bx, n);
            char name[128];
            snprintf(name, sizeof name, "group_norm %lldx%lldx%lld g%d silu %d (in place, %s)", (long long)gn[t].n,
                     (long long)gn[t].hw, (long long)gn[t].c, gn[t].g, gn[t].silu, pname[path]);
            cmp(name, got, want, n, 1e-12);
            sdxl_vk_release(v, &bx), sdxl_vk_release(v, &bg), sdxl_vk_release(v, &bb);
            free(x), free(g), free(b), free(want), free(got);
        }
    int64_t shapes[][2] = {{77, 768}, {5, 1280}, {3, 33}};
    for (size_t t = 0; t < 3; t++) {
        int64_t r = shapes[t][0], c = shapes[t][1], n = r * c;
        float *x = rnd(n, -2, 3), *g = rnd(c, 0.5f, 1.5f), *b = rnd(c, -1, 1), *want = malloc((size_t)n * 4);
        sdxl_layer_norm(x, want, r, c, 1e-5f, g, b);
        sdxl_vk_buf bx = up(v, x, n), by = dev(v, n), bg = up(v, g, c), bb = up(v, b, c);
        CHECK(!sdxl_vk_layer_norm(v, &bx, &by, r, c, 1e-5f, &bg, &bb, &e), "layer norm: %s", e.msg);
        float *got = down(v, &by, n);
        char name[64];
        snprintf(name, sizeof name, "layer_norm %lldx%lld", (long long)r, (long long)c);
        cmp(name, got, want, n, 1e-12);
        memcpy(want, x, (size_t)n * 4);
        sdxl_softmax_rows(want, r, c);
        CHECK(!sdxl_vk_softmax_rows(v, &bx, r, c, &e), "softmax: %s", e.msg);
        free(got);
        got = down(v, &bx, n);
        snprintf(name, sizeof name, "softmax %lldx%lld", (long long)r, (long long)c);
        cmp(name, got, want, n, 1e-12);
        sdxl_vk_release(v, &bx), sdxl_vk_release(v, &by), sdxl_vk_release(v, &bg), sdxl_vk_release(v, &bb);
        free(x), free(g), free(b), free(want), free(got);
    }
}

static void test_eltwise(sdxl_vk *v) {
    sdxl_err e = {0};
    const int64_t n = 4099;
    float *x = rnd(n, -8, 8), *x2 = rnd(n, -3, 3), *want = malloc(n * 4), *got;
    sdxl_vk_buf bx = up(v, x, n), b2 = up(v, x2, n), by = dev(v, 3 * n);
    struct { sdxl_vk_act a; void (*f)(float *, int64_t); const char *name; } acts[] = {
        {SDXL_VK_SILU, sdxl_silu, "silu"},
        {SDXL_VK_GELU, sdxl_gelu, "gelu"},
        {SDXL_VK_GELU_TANH, sdxl_gelu_tanh, "gelu_tanh"},
        {SDXL_VK_QUICK_GELU, sdxl_quick_gelu, "quick_gelu"}};
    for (size_t t = 0; t < 4; t++) {
        memcpy(want, x, n * 4);
        acts[t].f(want, n);
        CHECK(!sdxl_vk_activation(v, acts[t].a, &bx, &by, n, &e), "%s: %s", acts[t].name, e.msg);
        got = down(v, &by, n);
        cmp(acts[t].name, got, want, n, 1e-12);
        free(got);
    }
    /* geglu: rows 17, f 120 (x holds 2f per row). */
    {
        int64_t rows = 17, f = 120;
        float *gx = rnd(rows * 2 * f, -4, 4), *gw = malloc((size_t)(rows * f) * 4);
        sdxl_geglu(gx, gw, rows, f);
        sdxl_vk_buf bg = up(v, gx, rows * 2 * f);
        CHECK(!sdxl_vk_geglu(v, &bg, &by, rows, f, &e), "geglu: %s", e.msg);
        got = down(v, &by, rows * f);
        cmp("geglu 17x(2x120)", got, gw, rows * f, 1e-12);
        sdxl_vk_release(v, &bg);
        free(gx), free(gw), free(got);
    }
    /* add, axpy, scale: exact (one f32 operation; axpy is fused like the CPU's fmaf? compare to fmaf). */
    for (int64_t i = 0; i < n; i++) want[i] = x[i] + x2[i];
    CHECK(!sdxl_vk_add(v, &bx, &b2, &by, n, &e), "add: %s", e.msg);
    got = down(v, &by, n);
    CHECK(exact(got, want, n), "add is exact");
    free(got);
    for (int64_t i = 0; i < n; i++) want[i] = x[i] * 0.37f;
    sdxl_vk_buf bs = up(v, x, n);
    CHECK(!sdxl_vk_scale(v, &bs, 0.37f, n, &e), "scale: %s", e.msg);
    got = down(v, &bs, n);
    CHECK(exact(got, want, n), "scale is exact");
    free(got);
    for (int64_t i = 0; i < n; i++) want[i] = 0.0f;
    CHECK(!sdxl_vk_fill(v, &bs, 0.0f, n - 1, &e), "fill: %s", e.msg); /* the last float stays */
    got = down(v, &bs, n);
    want[n - 1] = x[n - 1] * 0.37f;
    CHECK(exact(got, want, n), "fill writes its n floats only");
    free(got);
    memcpy(want, x2, n * 4);
    sdxl_axpy(-1.25f, x, want, n);
    sdxl_vk_buf ba = up(v, x2, n);
    CHECK(!sdxl_vk_axpy(v, -1.25f, &bx, &ba, n, &e), "axpy: %s", e.msg);
    got = down(v, &ba, n);
    cmp("axpy", got, want, n, 1e-14);
    free(got);
    /* add_bias [rows 29, c 141] and the per-image vector. */
    {
        int64_t rows = 29, c = 141;
        float *bias = rnd(c, -1, 1);
        memcpy(want, x, (size_t)(rows * c) * 4);
        sdxl_add_bias(want, bias, rows, c);
        sdxl_vk_buf bb = up(v, bias, c), bt = up(v, x, rows * c);
        CHECK(!sdxl_vk_add_bias(v, &bt, &bb, rows, c, &e), "add_bias: %s", e.msg);
        got = down(v, &bt, rows * c);
        CHECK(exact(got, want, rows * c), "add_bias is exact");
        free(got);
        /* n 3, hw 9, c 141: vec [3, c]; reuses x as the vector's source. */
        memcpy(want, x, (size_t)(3 * 9 * c) * 4);
        for (int b = 0; b < 3; b++) sdxl_add_bias(want + b * 9 * c, x2 + b * c, 9, c);
        sdxl_vk_buf bv = up(v, x2, 3 * c), bt2 = up(v, x, 3 * 9 * c);
        CHECK(!sdxl_vk_add_rowvec(v, &bt2, &bv, 3, 9, c, &e), "add_rowvec: %s", e.msg);
        got = down(v, &bt2, 3 * 9 * c);
        CHECK(exact(got, want, 3 * 9 * c), "add_rowvec is exact");
        free(got);
        sdxl_vk_release(v, &bb), sdxl_vk_release(v, &bt), sdxl_vk_release(v, &bv), sdxl_vk_release(v, &bt2);
        free(bias);
    }
    /* concat rows 31: 13 + 40 channels. */
    {
        int64_t rows = 31, ca = 13, cb = 40;
        float *w2 = malloc((size_t)(rows * (ca + cb)) * 4);
        sdxl_concat_channels(x, ca, x2, cb, w2, rows);
        CHECK(!sdxl_vk_concat_channels(v, &bx, ca, &b2, cb, &by, rows, &e), "concat: %s", e.msg);
        got = down(v, &by, rows * (ca + cb));
        CHECK(exact(got, w2, rows * (ca + cb)), "concat is exact");
        free(got), free(w2);
    }
    /* upsample 2x and a general nearest resize (5x7 -> 11x3), c 3. */
    {
        int64_t N = 2, h = 5, w = 7, c = 3;
        float *u = malloc((size_t)(N * 4 * h * w * c) * 4);
        sdxl_upsample_nearest2x(x, u, N, h, w, c);
        CHECK(!sdxl_vk_resize_nearest(v, &bx, &by, N, h, w, c, 2 * h, 2 * w, &e), "upsample: %s", e.msg);
        got = down(v, &by, N * 4 * h * w * c);
        CHECK(exact(got, u, N * 4 * h * w * c), "upsample 2x is exact");
        free(got);
        sdxl_resize_nearest(x, u, N, h, w, c, 11, 3);
        CHECK(!sdxl_vk_resize_nearest(v, &bx, &by, N, h, w, c, 11, 3, &e), "resize: %s", e.msg);
        got = down(v, &by, N * 11 * 3 * c);
        CHECK(exact(got, u, N * 11 * 3 * c), "resize 5x7 -> 11x3 is exact");
        free(got), free(u);
    }
    /* timestep embedding: t up to 999 and SDXL's time ids (up to 1024), dim 320 and 257 (odd). */
    {
        float t[5] = {0.0f, 1.0f, 999.0f, 531.25f, 1024.0f};
        int dims[2] = {320, 257};
        for (int k = 0; k < 2; k++)
            for (int flip = 0; flip < 2; flip++) {
                int dim = dims[k];
                float *w2 = malloc((size_t)(5 * dim) * 4);
                sdxl_timestep_embedding(t, 5, dim, flip, flip ? 0.0f : 1.0f, 10000.0f, w2);
                sdxl_vk_buf bt = up(v, t, 5), bf, bo = dev(v, 5 * dim);
                CHECK(!sdxl_vk_timestep_freqs(v, dim, flip ? 0.0f : 1.0f, 10000.0f, &bf, &e), "freqs: %s", e.msg);
                CHECK(!sdxl_vk_timestep_embedding(v, &bt, 5, dim, flip, &bf, &bo, &e), "timestep: %s", e.msg);
                got = down(v, &bo, 5 * dim);
                char name[64];
                snprintf(name, sizeof name, "timestep_embedding dim %d flip %d", dim, flip);
                cmp(name, got, w2, 5 * dim, 1e-12);
                sdxl_vk_release(v, &bt), sdxl_vk_release(v, &bf), sdxl_vk_release(v, &bo);
                free(got), free(w2);
            }
    }
    sdxl_vk_release(v, &bx), sdxl_vk_release(v, &b2), sdxl_vk_release(v, &by), sdxl_vk_release(v, &bs);
    sdxl_vk_release(v, &ba);
    free(x), free(x2), free(want);
}

static void test_convert(sdxl_vk *v) {
    sdxl_err e = {0};
    const int64_t n = 1001;
    float *x = rnd(n, -70000, 70000);
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65520.0f, 65519.99f, 6.1e-5f,
                             5.96e-8f, 2.98e-8f, 2.99e-8f, 1e-10f, -3.0e-6f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048,
                             3.3895e38f, 1.00390625f, 1.01171875f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) x[i] = special[i];
    for (int64_t i = 100; i < 300; i++) x[i] *= 1e-9f; /* f16 subnormals */
    uint16_t *want = malloc(n * 2), *got = malloc(n * 2 + 2);
    sdxl_vk_buf bx = up(v, x, n), bh = dev(v, (n + 1) / 2), bf = dev(v, n);
    for (int k = 0; k < 2; k++) {
        sdxl_dtype dt = k ? SDXL_BF16 : SDXL_F16;
        if (k) sdxl_f32_to_bf16(x, want, n);
        else sdxl_f32_to_f16(x, want, n);
        CHECK(!sdxl_vk_convert(v, &bx, SDXL_F32, &bh, dt, n, &e), "convert: %s", e.msg);
        CHECK(!sdxl_vk_download(v, &bh, 0, got, (uint64_t)n * 2, &e), "download: %s", e.msg);
        int bad = 0;
        for (int64_t i = 0; i < n; i++) bad += got[i] != want[i];
        CHECK(!bad, "f32 -> %s bit-exact (%d differ)", k ? "bf16" : "f16", bad);
        float *wf = malloc(n * 4);
        if (k) sdxl_bf16_to_f32(want, wf, n);
        else sdxl_f16_to_f32(want, wf, n);
        CHECK(!sdxl_vk_convert(v, &bh, dt, &bf, SDXL_F32, n, &e), "convert back: %s", e.msg);
        float *gf = down(v, &bf, n);
        CHECK(exact(gf, wf, n), "%s -> f32 bit-exact", k ? "bf16" : "f16");
        free(wf), free(gf);
    }
    sdxl_vk_release(v, &bx), sdxl_vk_release(v, &bh), sdxl_vk_release(v, &bf);
    free(x), free(want), free(got);
}

static void test_alloc(sdxl_vk *v) {
    sdxl_err e = {0};
    uint64_t held0 = sdxl_vk_bytes_held(v);
    sdxl_vk_buf b[40];
    for (int i = 0; i < 40; i++) CHECK(!sdxl_vk_alloc(v, 1000 + 37 * (uint64_t)i, &b[i], &e), "alloc: %s", e.msg);
    for (int i = 0; i < 40; i++) CHECK(b[i].off % sdxl_vk_align(v) == 0, "aligned sub-allocation");
    for (int i = 1; i < 40; i++) CHECK(b[i].buffer != b[i - 1].buffer || b[i].off >= b[i - 1].off + b[i - 1].size, "disjoint");
    for (int i = 0; i < 40; i += 2) sdxl_vk_release(v, &b[i]);
    sdxl_vk_buf big;
    CHECK(!sdxl_vk_alloc(v, 3 << 20, &big, &e), "alloc 3 MiB: %s", e.msg);
    for (int i = 1; i < 40; i += 2) sdxl_vk_release(v, &b[i]);
    sdxl_vk_release(v, &big);
    CHECK(sdxl_vk_bytes_held(v) == held0, "blocks given back after every release (%llu vs %llu)",
          (unsigned long long)sdxl_vk_bytes_held(v), (unsigned long long)held0);
    sdxl_vk_buf s;
    CHECK(!sdxl_vk_alloc(v, 64, &s, &e), "alloc");
    CHECK(sdxl_vk_upload(v, &s, s.size - 10, "0123456789abcdefghijklmnopqrstuvwxyz", 37, &e) == SDXL_ERR_ARG,
          "copy past the end refused: %s", e.msg);
    sdxl_vk_release(v, &s);
}

/* The seam: one op sequence on a CPU context and on a Vulkan context, device memory, host
 * operands (staged in and out), overlapping device copies, layout edges. */
static void test_seam(void) {
    sdxl_err e = {0};
    sdxl_compute *cc = NULL, *cv = NULL;
    CHECK(!sdxl_compute_new_device(SDXL_PREC_F32, "cpu", &cc, &e), "cpu context: %s", e.msg);
    if (sdxl_compute_new_device(SDXL_PREC_F32, "vulkan", &cv, &e)) {
        CHECK(0, "vulkan context: %s", e.msg);
        sdxl_compute_free(cc);
        return;
    }
    CHECK(sdxl_compute_is_device(cv) && !sdxl_compute_is_device(cc), "device flag");
    const int64_t n = 2, C = 6, H = 5, Wd = 7, hw = H * Wd, M = n * hw, N = 12;
    float *img = rnd(n * C * hw, -1, 1), *w = rnd(N * C, -0.5f, 0.5f), *b = rnd(N, -1, 1), *g = rnd(N, 0.5f, 1.5f),
          *be = rnd(N, -1, 1), *acc = rnd(M * N, -1, 1);
    float *out[2];
    for (int k = 0; k < 2; k++) {
        sdxl_compute *c = k ? cv : cc;
        sdxl_linear l;
        CHECK(!sdxl_linear_init(c, &l, C, N, w, SDXL_F32, b, SDXL_F32, &e), "linear init: %s", e.msg);
        float *x = sdxl_compute_alloc(c, (size_t)(M * C) * 4, &e), *y = sdxl_compute_alloc(c, (size_t)(M * N) * 4, &e);
        float *z = sdxl_compute_alloc(c, (size_t)(4 * M * N) * 4, &e);
        CHECK(x && y && z, "alloc: %s", e.msg);
        int st = sdxl_op_nchw_to_nhwc(c, img, x, n, C, H, Wd, &e);
        if (!st) st = sdxl_linear_fwd(c, &l, x, M, y, 0, &e);
        if (!st) st = sdxl_op_group_norm(c, y, y, n, hw, N, 3, 1e-5f, g, be, 1, &e);
        if (!st) st = sdxl_op_copy(c, y + 5, y, (size_t)(M * N - 5) * 4, &e);  /* overlapping, upwards */
        if (!st) st = sdxl_op_copy(c, y, y + 3, (size_t)(M * N - 3) * 4, &e);  /* overlapping, downwards */
        if (!st) st = sdxl_op_div(c, y, 0.13025f, M * N, &e);
        for (int p = 0; p < 4 && !st; p++) st = sdxl_op_place_phase(c, y, z, n, H, Wd, N, p / 2, p % 2, &e);
        out[k] = malloc((size_t)(4 * M * N + M * N) * 4);
        memcpy(out[k] + 4 * M * N, acc, (size_t)(M * N) * 4);
        /* a host output that accumulates */
        if (!st) st = sdxl_linear_fwd(c, &l, x, M, out[k] + 4 * M * N, SDXL_OP_ACCUM, &e);
        if (!st) st = sdxl_op_nhwc_to_nchw(c, z, out[k], n, 2 * H, 2 * Wd, N, &e);
        if (!st) st = sdxl_compute_sync(c, &e);
        CHECK(!st, "seam ops on %s: %s", sdxl_compute_device_name(c), e.msg);
        sdxl_compute_release(c, x);
        sdxl_compute_release(c, y);
        sdxl_compute_release(c, z);
        sdxl_linear_free(&l);
    }
    cmp("seam: nchw->nhwc, linear, group norm+silu, copies, div, phases, accumulate into host", out[1], out[0],
        5 * M * N, 1e-10);
    uint64_t budget, held;
    sdxl_compute_device_memory(cv, &budget, &held);
    CHECK(budget > 0, "device budget reported (%llu)", (unsigned long long)budget);
    free(out[0]), free(out[1]), free(img), free(w), free(b), free(g), free(be), free(acc);
    sdxl_compute_free(cc);
    sdxl_compute_free(cv);
}

/* Weights replaced after load (LoRA merge and undo) on a device layer: a linear and a padded
 * conv then compute what fresh CPU layers with the new weights compute (NMSE 1e-10, f32). */
static void test_set_weights(void) {
    sdxl_err e = {0};
    sdxl_compute *cc = NULL, *cv = NULL;
    if (sdxl_compute_new_device(SDXL_PREC_F32, "cpu", &cc, &e) || sdxl_compute_new_device(SDXL_PREC_F32, "vulkan", &cv, &e)) {
        CHECK(0, "contexts: %s", e.msg);
        sdxl_compute_free(cc);
        return;
    }
    const int64_t M = 29, K = 19, N = 23, n = 2, H = 5, W = 6, ci = 7, co = 9;
    float *w1 = rnd(N * K, -1, 1), *w2 = rnd(N * K, -1, 1), *b1 = rnd(N, -1, 1), *b2 = rnd(N, -1, 1), *x = rnd(M * K, -1, 1);
    float *k1 = rnd(co * ci * 9, -1, 1), *k2 = rnd(co * ci * 9, -1, 1), *kb = rnd(co, -1, 1), *img = rnd(n * H * W * ci, -1, 1);
    float *y[2], *z[2];
    for (int d = 0; d < 2; d++) {
        sdxl_compute *c = d ? cv : cc;
        sdxl_linear l;
        sdxl_conv2d k;
        y[d] = malloc((size_t)(M * N) * 4);
        z[d] = malloc((size_t)(n * H * W * co) * 4);
        int st = sdxl_linear_init(c, &l, K, N, d ? w1 : w2, SDXL_F32, d ? b1 : b2, SDXL_F32, &e);
        if (!st && d) st = sdxl_linear_set_weights(c, &l, w2, b2, &e);
        if (!st) st = sdxl_linear_fwd(c, &l, x, M, y[d], 0, &e);
        if (!st) st = sdxl_conv2d_init(c, &k, ci, co, 3, 3, 1, 1, 1, 1, 1, d ? k1 : k2, SDXL_F32, kb, SDXL_F32, &e);
        if (!st && d) st = sdxl_conv2d_set_weights(c, &k, k2, NULL, &e);
        if (!st) st = sdxl_conv2d_fwd(c, &k, img, n, H, W, z[d], 0, &e);
        CHECK(!st, "set weights on %s: %s", sdxl_compute_device_name(c), e.msg);
        sdxl_linear_free(&l);
        sdxl_conv2d_free(&k);
    }
    cmp("linear after set_weights on the device", y[1], y[0], M * N, 1e-10);
    cmp("conv 3x3 after set_weights on the device (bias kept)", z[1], z[0], n * H * W * co, 1e-10);
    free(w1), free(w2), free(b1), free(b2), free(x), free(k1), free(k2), free(kb), free(img);
    free(y[0]), free(y[1]), free(z[0]), free(z[1]);
    sdxl_compute_free(cc);
    sdxl_compute_free(cv);
}

/* The matrix-unit GEMM is chosen from the device's property list: fabricated lists, since
 * lavapipe has no VK_NV_cooperative_matrix (a real GPU runs gemm_mma.comp in the GEMM tests). */
static void test_mma_pick(void) {
    enum { F16 = SDXL_VK_MMA_F16, F32 = SDXL_VK_MMA_F32, I8 = SDXL_VK_MMA_OTHER };
    const sdxl_vk_mma_shape want = {16, 16, 16, F16, F16, F32, F32, 1};
    const sdxl_vk_mma_shape nvidia[] = {{16, 8, 16, F16, F16, F32, F32, 1}, {16, 8, 8, F16, F16, F16, F16, 1},
                                        {16, 16, 16, F16, F16, F16, F16, 1}, want, {16, 16, 32, I8, I8, I8, I8, 1}};
    CHECK(sdxl_vk_mma_pick(nvidia, 5, 32) == 3, "the 16x16x16 f16->f32 subgroup entry is found among others");
    CHECK(sdxl_vk_mma_pick(nvidia, 3, 32) == -1, "only 16x8 shapes or f16 accumulation: plain GEMM");
    CHECK(sdxl_vk_mma_pick(nvidia, 0, 32) == -1, "empty list: plain GEMM");
    CHECK(sdxl_vk_mma_pick(&want, 1, 64) == -1 && sdxl_vk_mma_pick(&want, 1, 16) == -1,
          "subgroups other than 32 wide: plain GEMM");
    sdxl_vk_mma_shape w = want;
    w.subgroup = 0;
    CHECK(sdxl_vk_mma_pick(&w, 1, 32) == -1, "workgroup scope: plain GEMM");
    w = want;
    w.b = I8;
    CHECK(sdxl_vk_mma_pick(&w, 1, 32) == -1, "another B type: plain GEMM");
    w = want;
    w.k = 8;
    CHECK(sdxl_vk_mma_pick(&w, 1, 32) == -1, "K 8: plain GEMM");
}

int main(void) {
    sdxl_err e = {0};
    test_mma_pick();
    sdxl_vk_devinfo *devs = NULL;
    int nd = 0;
    int st = sdxl_vk_list(&devs, &nd, &e);
    CHECK(!st && nd > 0, "a Vulkan device is present (install mesa-vulkan-drivers for lavapipe): %s",
          st ? e.msg : "none listed");
    free(devs);
    sdxl_vk *v = NULL;
    if (st || (st = sdxl_vk_new(-1, &v, &e))) {
        CHECK(0, "vulkan context: %s", e.msg);
        return check_done();
    }
    printf("device: %s\n", sdxl_vk_info(v)->name);
    int idx;
    CHECK(sdxl_vk_parse_device("vulkan:x", &idx, &e) == SDXL_ERR_ARG, "bad device string refused");
    CHECK(!sdxl_vk_parse_device("vulkan:1", &idx, &e) && idx == 1, "vulkan:1 parsed");
    sdxl_vk *bad = NULL;
    CHECK(sdxl_vk_new(999, &bad, &e) == SDXL_ERR_ARG && !bad, "missing device refused: %s", e.msg);

    test_seam();
    test_set_weights();
    test_alloc(v);
    test_convert(v);
    test_eltwise(v);
    test_norms(v);
    sdxl_dtype stores[3] = {SDXL_F32, SDXL_F16, SDXL_BF16};
    for (int s = 0; s < 3; s++) {
        test_linear(v, 1, 17, 5, 1, 0, stores[s]);
        test_linear(v, 37, 33, 70, 1, 1, stores[s]);
        test_linear(v, 130, 97, 65, 0, 1, stores[s]);
        test_conv(v, 2, 5, 7, 3, 4, 3, 1, 1, 1, 1, 1, stores[s]);
        test_conv(v, 1, 11, 13, 96, 33, 3, 2, 0, 0, 1, 1, stores[s]);
        test_conv(v, 2, 11, 13, 40, 17, 1, 1, 0, 0, 0, 0, stores[s]);
    }
    test_linear(v, 301, 640, 129, 1, 0, SDXL_F32);
    /* several 128x128 tiles and K steps with tails, rows moving as vectors (K % 8 == 0) or not */
    test_linear(v, 300, 320, 200, 1, 1, SDXL_F16);
    test_linear(v, 257, 328, 131, 0, 0, SDXL_F16);
    test_linear(v, 140, 330, 129, 1, 0, SDXL_F16);
    test_conv(v, 2, 9, 11, 64, 130, 3, 1, 1, 1, 1, 1, SDXL_F16);
    test_conv(v, 1, 13, 12, 36, 70, 3, 2, 0, 0, 1, 1, SDXL_F16);
    for (int s = 0; s < 3; s++) {
        test_attention(v, 2, 37, 37, 3, 40, 0, 0, stores[s], 1.0f);
        test_attention(v, 1, 50, 77, 2, 64, 0, 0, stores[s], 1.0f);
        test_attention(v, 2, 33, 33, 2, 16, 1, 1, stores[s], 1.0f);
    }
    test_attention(v, 1, 20, 45, 1, 7, 1, 0, SDXL_F32, 1.0f);
    test_attention(v, 1, 19, 40, 1, 512, 0, 0, SDXL_F32, 0.3f);
    test_attention(v, 1, 70, 70, 2, 24, 0, 0, SDXL_F32, 6.0f); /* scores spread: the running max moves */
    /* several row and key blocks of the tiled kernel (64 or 32 rows, 32 keys), with tails */
    test_attention(v, 2, 150, 77, 3, 64, 0, 0, SDXL_F32, 3.0f);
    test_attention(v, 1, 130, 130, 2, 64, 1, 1, SDXL_F16, 2.0f);
    test_attention(v, 1, 97, 200, 1, 33, 0, 0, SDXL_BF16, 1.0f);
    int pipes = sdxl_vk_n_pipelines(v);
    test_linear(v, 3, 5, 7, 1, 0, SDXL_F16);
    /* gemm, attention (head_dim > 64) and its tiled kernel, norm, eltwise, convert; where the
     * matrix units run, f16 weights take gemm_mma.comp and rounded attention attn_mma.comp */
    int used = 6 + (sdxl_vk_info(v)->mma ? 2 : 0);
    CHECK(sdxl_vk_n_pipelines(v) == pipes && pipes == used, "pipelines created once (%d)", pipes);
    printf("dispatches %llu, peak device bytes %llu\n", (unsigned long long)sdxl_vk_n_dispatches(v),
           (unsigned long long)sdxl_vk_bytes_peak(v));
    sdxl_vk_free(v);
    return check_done();
}
