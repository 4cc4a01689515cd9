/* Ops on device buffers: argument checks, weight upload, push constants, grid sizes. */
#include "tensor/vk/vk_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tensor/ops.h"

#define MAX_ELEMS (((int64_t)1 << 32) - 1)

sdxl_vk_buf sdxl_vk_view(const sdxl_vk_buf *b, uint64_t off, uint64_t bytes) {
    sdxl_vk_buf r = *b;
    if (off > b->size) off = b->size;
    if (bytes > b->size - off) bytes = b->size - off;
    r.off = b->off + off;
    r.size = bytes;
    return r;
}

/* A bound range starts at an aligned offset; the rest of the view's offset travels in floats. */
typedef struct bound {
    sdxl_vk_buf b;
    uint32_t eoff;
} bound;

static int bind(const sdxl_vk *v, const sdxl_vk_buf *x, int64_t floats, const char *what, bound *out, sdxl_err *e) {
    if (!x || !x->buffer) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan: %s: no buffer", what);
    if (floats < 0 || floats > MAX_ELEMS || (uint64_t)floats * 4 > x->size)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan: %s: needs %lld floats, buffer holds %llu", what,
                           (long long)floats, (unsigned long long)(x->size / 4));
    uint64_t a = sdxl_vk_align(v), base = x->off / a * a;
    out->b = *x;
    out->b.off = base;
    out->b.size = x->size + (x->off - base);
    out->eoff = (uint32_t)((x->off - base) / 4);
    if (out->b.size > sdxl_vk_info(v)->max_storage_range)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan: %s: %llu bytes exceed the device's storage range %llu", what,
                           (unsigned long long)out->b.size,
                           (unsigned long long)sdxl_vk_info(v)->max_storage_range);
    return SDXL_OK;
}

/* Products of sizes, overflow-safe; -1 when past MAX_ELEMS. */
static int64_t mul3(int64_t a, int64_t b, int64_t c) {
    if (a < 0 || b < 0 || c < 0) return -1;
    if (a && b > MAX_ELEMS / a) return -1;
    int64_t ab = a * b;
    if (ab && c > MAX_ELEMS / ab) return -1;
    return ab * c;
}

typedef struct push {
    uint32_t u[28];
    float f[4];
} push;

static int run1d(sdxl_vk *v, sdxl_vk_shader sh, const sdxl_vk_buf *const bufs[4], const push *p, int64_t threads,
                 sdxl_err *e) {
    int64_t groups = (threads + 255) / 256;
    uint32_t gx = groups < 65535 ? (uint32_t)groups : 65535u;
    uint32_t gy = gx ? (uint32_t)((groups + gx - 1) / gx) : 0;
    return sdxl_vk_dispatch(v, sh, bufs, p, sizeof *p, gx, gy, 1, e);
}

int sdxl_vk_from_host(sdxl_vk *v, const float *x, int64_t n, sdxl_vk_buf *out, sdxl_err *e) {
    if (n < 0 || n > MAX_ELEMS) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan: upload of %lld floats", (long long)n);
    int st = sdxl_vk_alloc(v, (uint64_t)n * 4, out, e);
    if (!st && n && (st = sdxl_vk_upload(v, out, 0, x, (uint64_t)n * 4, e))) sdxl_vk_release(v, out);
    return st;
}

/* ---- GEMM layers ---------------------------------------------------------------------------- */

static int layer_upload(sdxl_vk *v, sdxl_vk_gemm_layer *l, const float *wf, int64_t nw, const void *b,
                        sdxl_dtype bdt, sdxl_err *e) {
    int64_t words = l->store == SDXL_F32 ? nw : (nw + 1) / 2;
    uint32_t *packed = malloc((size_t)words * 4);
    if (!packed) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan: out of memory packing %lld weights", (long long)nw);
    packed[words - 1] = 0;
    if (l->store == SDXL_F32) memcpy(packed, wf, (size_t)nw * 4);
    else if (l->store == SDXL_F16) sdxl_f32_to_f16(wf, (uint16_t *)packed, (size_t)nw);
    else sdxl_f32_to_bf16(wf, (uint16_t *)packed, (size_t)nw);
    int st = sdxl_vk_alloc(v, (uint64_t)words * 4, &l->w, e);
    if (!st) st = sdxl_vk_upload(v, &l->w, 0, packed, (uint64_t)words * 4, e);
    free(packed);
    if (!st && b) {
        float *bf = malloc((size_t)l->out * 4);
        if (!bf) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan: out of memory");
        sdxl_to_f32(b, bdt, bf, (size_t)l->out);
        st = sdxl_vk_from_host(v, bf, l->out, &l->bias, e);
        free(bf);
        l->has_bias = !st;
    }
    return st;
}

static int store_ok(sdxl_dtype d) { return d == SDXL_F32 || d == SDXL_F16 || d == SDXL_BF16; }

int sdxl_vk_linear_init(sdxl_vk *v, sdxl_vk_gemm_layer *l, int64_t in, int64_t out, const void *w, sdxl_dtype wdt,
                        const void *b, sdxl_dtype bdt, sdxl_dtype store, sdxl_err *e) {
    return sdxl_vk_conv2d_init(v, l, in, out, 1, 1, 1, 0, 0, 0, 0, w, wdt, b, bdt, store, e);
}

int sdxl_vk_conv2d_init(sdxl_vk *v, sdxl_vk_gemm_layer *l, int64_t cin, int64_t cout, int kh, int kw, int stride,
                        int pad_t, int pad_l, int pad_b, int pad_r, const void *w, sdxl_dtype wdt, const void *b,
                        sdxl_dtype bdt, sdxl_dtype store, sdxl_err *e) {
    memset(l, 0, sizeof *l);
    l->w.block = l->bias.block = -1;
    if (cin <= 0 || cout <= 0 || cin > (1 << 20) || cout > (1 << 20) || kh <= 0 || kw <= 0 || kh > 64 || kw > 64 ||
        stride <= 0 || stride > 64 || pad_t < 0 || pad_l < 0 || pad_b < 0 || pad_r < 0 || pad_t >= kh + stride ||
        pad_b >= kh + stride || pad_l >= kw + stride || pad_r >= kw + stride)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan gemm layer: bad shape %lld->%lld %dx%d stride %d", (long long)cin,
                           (long long)cout, kh, kw, stride);
    if (!w || !store_ok(wdt) || !store_ok(store) || (b && !store_ok(bdt)))
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan gemm layer: weights missing or of unknown dtype");
    int64_t nw = mul3(cout, cin, (int64_t)kh * kw);
    if (nw < 0) return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan gemm layer: too many weights");
    *l = (sdxl_vk_gemm_layer){.in = cin, .out = cout, .kh = kh, .kw = kw, .stride = stride, .pad_t = pad_t,
                              .pad_l = pad_l, .pad_b = pad_b, .pad_r = pad_r, .store = store};
    l->w.block = l->bias.block = -1;
    float *src = malloc((size_t)nw * 4), *wf = malloc((size_t)nw * 4);
    if (!src || !wf) {
        free(src), free(wf);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan gemm layer: out of memory");
    }
    sdxl_to_f32(w, wdt, src, (size_t)nw);
    int64_t taps = (int64_t)kh * kw;
    for (int64_t o = 0; o < cout; o++) /* [cout][cin][kh][kw] -> [cout][kh][kw][cin] */
        for (int64_t i = 0; i < cin; i++)
            for (int64_t t = 0; t < taps; t++) wf[(o * taps + t) * cin + i] = src[(o * cin + i) * taps + t];
    free(src);
    int st = layer_upload(v, l, wf, nw, b, bdt, e);
    free(wf);
    if (st) {
        sdxl_vk_layer_free(v, l);
        return sdxl_err_prefix(e, "vulkan gemm layer %lld->%lld %dx%d", (long long)cin, (long long)cout, kh, kw);
    }
    return SDXL_OK;
}

int sdxl_vk_layer_set(sdxl_vk *v, sdxl_vk_gemm_layer *l, const float *w, const float *b, sdxl_err *e) {
    if (!l->w.buffer || !w) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan gemm layer: set weights on no layer");
    int64_t taps = (int64_t)l->kh * l->kw, nw = mul3(l->out, l->in, taps);
    int64_t words = l->store == SDXL_F32 ? nw : (nw + 1) / 2;
    float *wf = malloc((size_t)nw * 4);
    uint32_t *packed = malloc((size_t)words * 4);
    if (!wf || !packed) {
        free(wf), free(packed);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan gemm layer: out of memory");
    }
    for (int64_t o = 0; o < l->out; o++) /* [cout][cin][kh][kw] -> [cout][kh][kw][cin], as at init */
        for (int64_t i = 0; i < l->in; i++)
            for (int64_t t = 0; t < taps; t++) wf[(o * taps + t) * l->in + i] = w[(o * l->in + i) * taps + t];
    packed[words - 1] = 0;
    if (l->store == SDXL_F32) memcpy(packed, wf, (size_t)nw * 4);
    else if (l->store == SDXL_F16) sdxl_f32_to_f16(wf, (uint16_t *)packed, (size_t)nw);
    else sdxl_f32_to_bf16(wf, (uint16_t *)packed, (size_t)nw);
    int st = sdxl_vk_upload(v, &l->w, 0, packed, (uint64_t)words * 4, e);
    if (!st && b && l->has_bias) st = sdxl_vk_upload(v, &l->bias, 0, b, (uint64_t)l->out * 4, e);
    free(wf);
    free(packed);
    return st;
}

void sdxl_vk_layer_free(sdxl_vk *v, sdxl_vk_gemm_layer *l) {
    if (!l) return;
    sdxl_vk_release(v, &l->w);
    sdxl_vk_release(v, &l->bias);
    memset(l, 0, sizeof *l);
    l->w.block = l->bias.block = -1;
}

static int gemm_run(sdxl_vk *v, const sdxl_vk_gemm_layer *l, const sdxl_vk_buf *x, int64_t xfloats, const sdxl_vk_buf *y,
                    int64_t M, int conv, int64_t n, int64_t h, int64_t w, int64_t oh, int64_t ow, int flags,
                    sdxl_err *e) {
    int64_t K = l->in * l->kh * l->kw, N = l->out, yfloats = mul3(M, N, 1);
    if (M <= 0 || yfloats < 0 || xfloats < 0 || M > 0xffffffffLL)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan gemm: bad size M=%lld", (long long)M);
    bound bx, by;
    int st;
    if ((st = bind(v, x, xfloats, "gemm input", &bx, e)) || (st = bind(v, y, yfloats, "gemm output", &by, e)))
        return st;
    push p = {0};
    p.u[0] = (uint32_t)M;
    p.u[1] = (uint32_t)N;
    p.u[2] = (uint32_t)K;
    p.u[3] = ((flags & SDXL_OP_ACCUM) ? 1u : 0u) | (l->has_bias ? 2u : 0u);
    p.u[4] = (uint32_t)l->store;
    p.u[5] = (uint32_t)conv;
    p.u[6] = (uint32_t)h;
    p.u[7] = (uint32_t)w;
    p.u[8] = (uint32_t)l->in;
    p.u[9] = (uint32_t)oh;
    p.u[10] = (uint32_t)ow;
    p.u[11] = (uint32_t)l->kh;
    p.u[12] = (uint32_t)l->kw;
    p.u[13] = (uint32_t)l->stride;
    p.u[14] = (uint32_t)l->pad_t;
    p.u[15] = (uint32_t)l->pad_l;
    p.u[16] = bx.eoff;
    p.u[17] = by.eoff;
    (void)n;
    const sdxl_vk_buf *bufs[4] = {&bx.b, &l->w, l->has_bias ? &l->bias : NULL, &by.b};
    /* f16 weights go to the matrix units where the device has the shape (128x128 tiles, same
     * rounding); their rows move as 16-byte vectors where offsets and K allow */
    sdxl_vk_shader sh = l->store == SDXL_F16 && sdxl_vk_info(v)->mma ? SDXL_VK_SH_GEMM_MMA : SDXL_VK_SH_GEMM;
    int64_t tile = sh == SDXL_VK_SH_GEMM_MMA ? 128 : 64;
    p.u[18] = ((bx.eoff % 4 == 0 && (conv ? l->in % 4 == 0 : K % 4 == 0)) ? 1u : 0u) | (K % 8 == 0 ? 2u : 0u);
    int64_t gy = (M + tile - 1) / tile, gx = (N + tile - 1) / tile;
    if (gy > 65535 || gx > 65535) return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan gemm: M=%lld too large", (long long)M);
    return sdxl_vk_dispatch(v, sh, bufs, &p, sizeof p, (uint32_t)gx, (uint32_t)gy, 1, e);
}

int sdxl_vk_linear_fwd(sdxl_vk *v, const sdxl_vk_gemm_layer *l, const sdxl_vk_buf *x, int64_t M,
                       const sdxl_vk_buf *y, int flags, sdxl_err *e) {
    return gemm_run(v, l, x, mul3(M, l->in, 1), y, M, 0, 1, 1, M, 1, M, flags, e);
}

int sdxl_vk_conv2d_fwd(sdxl_vk *v, const sdxl_vk_gemm_layer *l, const sdxl_vk_buf *x, int64_t n, int64_t h,
                       int64_t w, const sdxl_vk_buf *y, int flags, sdxl_err *e) {
    if (n <= 0 || h <= 0 || w <= 0 || h > 65536 || w > 65536)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan conv2d: bad input size %lldx%lldx%lld", (long long)n, (long long)h,
                           (long long)w);
    int64_t oh = (h + l->pad_t + l->pad_b - l->kh) / l->stride + 1;
    int64_t ow = (w + l->pad_l + l->pad_r - l->kw) / l->stride + 1;
    if (h + l->pad_t + l->pad_b < l->kh || w + l->pad_l + l->pad_r < l->kw || oh <= 0 || ow <= 0)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan conv2d: input %lldx%lld smaller than the kernel", (long long)h,
                           (long long)w);
    int64_t M = mul3(n, oh, ow);
    int st = gemm_run(v, l, x, mul3(mul3(n, h, w), l->in, 1), y, M, 1, n, h, w, oh, ow, flags, e);
    if (st) sdxl_err_prefix(e, "conv2d %lld->%lld %dx%d at %lldx%lldx%lld", (long long)l->in, (long long)l->out, l->kh,
                            l->kw, (long long)n, (long long)h, (long long)w);
    return st;
}

/* ---- attention ------------------------------------------------------------------------------ */

int sdxl_vk_attention(sdxl_vk *v, const sdxl_vk_buf *q, int64_t q_ld, const sdxl_vk_buf *k, const sdxl_vk_buf *val,
                      int64_t kv_ld, const sdxl_vk_buf *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk,
                      int heads, int head_dim, float scale, int causal, sdxl_dtype round, sdxl_err *e) {
    int64_t hd_all = (int64_t)heads * head_dim;
    if (batch <= 0 || lq <= 0 || lk <= 0 || heads <= 0 || head_dim <= 0 || head_dim > 2048 || q_ld < hd_all ||
        kv_ld < hd_all || out_ld < hd_all || batch > 65535 || heads > 65535 || !store_ok(round))
        return sdxl_seterr(e, SDXL_ERR_ARG,
                           "vulkan attention: bad shape batch=%lld lq=%lld lk=%lld heads=%d d=%d ld=%lld/%lld/%lld",
                           (long long)batch, (long long)lq, (long long)lk, heads, head_dim, (long long)q_ld,
                           (long long)kv_ld, (long long)out_ld);
    /* Each operand spans up to the last row's last head. */
    int64_t qn = mul3(batch * lq - 1, q_ld, 1), kn = mul3(batch * lk - 1, kv_ld, 1), on = mul3(batch * lq - 1, out_ld, 1);
    if (qn < 0 || kn < 0 || on < 0) return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan attention: operands too large");
    bound bq, bk, bv, bo;
    int st;
    if ((st = bind(v, q, qn + hd_all, "attention q", &bq, e)) || (st = bind(v, k, kn + hd_all, "attention k", &bk, e)) ||
        (st = bind(v, val, kn + hd_all, "attention v", &bv, e)) ||
        (st = bind(v, out, on + hd_all, "attention out", &bo, e)))
        return st;
    /* the kernel and its query rows per workgroup: the general one takes br x head_dim <= 2048 */
    sdxl_vk_shader sh = SDXL_VK_SH_ATTN;
    int br = 2048 / head_dim;
    if (br > 32) br = 32;
    if (br < 1) br = 1;
    if (head_dim <= 64 && round != SDXL_F32 && sdxl_vk_info(v)->mma) { /* f16 on matrix units */
        sh = SDXL_VK_SH_ATTN_MMA;
        br = 64;
    } else if (head_dim <= 64) { /* register-tiled kernel; 64 rows where the shared memory allows */
        int big = sdxl_vk_info(v)->max_shared >= 45056;
        sh = big ? SDXL_VK_SH_ATTN_T64 : SDXL_VK_SH_ATTN_T32;
        br = big ? 64 : 32;
    }
    push p = {0};
    p.u[0] = (uint32_t)lq;
    p.u[1] = (uint32_t)lk;
    p.u[2] = (uint32_t)head_dim;
    p.u[3] = (uint32_t)heads;
    p.u[4] = bq.eoff;
    p.u[5] = bk.eoff;
    p.u[6] = bv.eoff;
    p.u[7] = bo.eoff;
    p.u[8] = (uint32_t)q_ld;
    p.u[9] = (uint32_t)kv_ld;
    p.u[10] = (uint32_t)out_ld;
    p.u[11] = (uint32_t)br;
    p.u[12] = causal ? 1u : 0u;
    p.u[13] = (uint32_t)round;
    p.f[0] = scale;
    const sdxl_vk_buf *bufs[4] = {&bq.b, &bk.b, &bv.b, &bo.b};
    int64_t gx = (lq + br - 1) / br;
    if (gx > 65535) return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan attention: lq=%lld too long", (long long)lq);
    return sdxl_vk_dispatch(v, sh, bufs, &p, sizeof p, (uint32_t)gx, (uint32_t)heads, (uint32_t)batch, e);
}

/* ---- norms ---------------------------------------------------------------------------------- */

static int norm_run(sdxl_vk *v, int mode, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t rows, int64_t hw,
                    int64_t c, int groups, int silu, float eps, const sdxl_vk_buf *g, const sdxl_vk_buf *b,
                    int64_t wgs, sdxl_err *e) {
    int64_t n = mul3(rows, hw, c);
    bound bx, by, bg = {0}, bb = {0};
    int st;
    if (n < 0 || wgs > 65535 * 65535LL) return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan norm: too large");
    if ((st = bind(v, x, n, "norm input", &bx, e)) || (st = bind(v, y, n, "norm output", &by, e))) return st;
    if (mode != 2 && ((st = bind(v, g, c, "norm gamma", &bg, e)) || (st = bind(v, b, c, "norm beta", &bb, e))))
        return st;
    if (bg.eoff || bb.eoff) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan norm: gamma/beta must be whole buffers");
    push p = {0};
    p.u[0] = (uint32_t)mode;
    p.u[1] = (uint32_t)rows;
    p.u[2] = (uint32_t)hw;
    p.u[3] = (uint32_t)c;
    p.u[4] = (uint32_t)groups;
    p.u[5] = silu ? 1u : 0u;
    p.u[6] = bx.eoff;
    p.u[7] = by.eoff;
    p.f[0] = eps;
    const sdxl_vk_buf *bufs[4] = {&bx.b, mode != 2 ? &bg.b : NULL, mode != 2 ? &bb.b : NULL, &by.b};
    return sdxl_vk_dispatch(v, SDXL_VK_SH_NORM, bufs, &p, sizeof p, (uint32_t)wgs, 1, 1, e);
}

#define GN_CHUNK 64                 /* pixels per partial statistic of the split path */
#define GN_THREADS ((int64_t)1 << 18) /* its elementwise pass loops over the rest */

/* Split group norm: statistics per (image, chunk, channel) into the scratch, per (image,
 * channel) (mean, rs * gamma, beta) after them, then the elementwise pass. */
static int gn_split(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t hw, int64_t c,
                    int groups, float eps, const sdxl_vk_buf *gamma, const sdxl_vk_buf *beta, int silu,
                    sdxl_err *e) {
    int64_t chunks = (hw + GN_CHUNK - 1) / GN_CHUNK, parts = mul3(n, chunks, c), total = mul3(n, hw, c);
    int64_t wgs = n * groups;
    if (parts < 0 || total < 0 || wgs > 65535LL * 65535LL)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan group norm: too large");
    sdxl_vk_buf sc;
    int64_t stat_floats = 2 * parts, chan_floats = 3 * n * c;
    int st = sdxl_vk_scratch(v, (uint64_t)(stat_floats + chan_floats) * 4, &sc, e);
    if (st) return st;
    bound bx, by, bg, bb;
    if ((st = bind(v, x, total, "norm input", &bx, e)) || (st = bind(v, y, total, "norm output", &by, e)) ||
        (st = bind(v, gamma, c, "norm gamma", &bg, e)) || (st = bind(v, beta, c, "norm beta", &bb, e)))
        return st;
    if (bg.eoff || bb.eoff) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan norm: gamma/beta must be whole buffers");
    push p = {0};
    p.u[1] = (uint32_t)n;
    p.u[2] = (uint32_t)hw;
    p.u[3] = (uint32_t)c;
    p.u[4] = (uint32_t)groups;
    p.u[5] = silu ? 1u : 0u;
    p.u[8] = GN_CHUNK;
    p.u[9] = (uint32_t)chunks;
    p.f[0] = eps;
    p.u[0] = 3; /* chunk statistics: x -> scratch[0, stat_floats) */
    p.u[6] = bx.eoff;
    p.u[7] = 0;
    const sdxl_vk_buf *b3[4] = {&bx.b, NULL, NULL, &sc};
    if ((st = run1d(v, SDXL_VK_SH_NORM, b3, &p, parts, e))) return st;
    p.u[0] = 4; /* per group: scratch -> scratch[stat_floats, +chan_floats) */
    p.u[6] = 0;
    p.u[7] = (uint32_t)stat_floats;
    const sdxl_vk_buf *b4[4] = {&sc, &bg.b, &bb.b, &sc};
    uint32_t gx = wgs < 65535 ? (uint32_t)wgs : 65535u, gy = (uint32_t)((wgs + gx - 1) / gx);
    if ((st = sdxl_vk_dispatch(v, SDXL_VK_SH_NORM, b4, &p, sizeof p, gx, gy, 1, e))) return st;
    p.u[0] = 5; /* normalise: x, scratch -> y */
    p.u[6] = bx.eoff;
    p.u[7] = by.eoff;
    p.u[10] = (uint32_t)stat_floats;
    const sdxl_vk_buf *b5[4] = {&bx.b, &sc, NULL, &by.b};
    return run1d(v, SDXL_VK_SH_NORM, b5, &p, total < GN_THREADS ? total : GN_THREADS, e);
}

int sdxl_vk_group_norm_path(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t hw,
                            int64_t c, int groups, float eps, const sdxl_vk_buf *gamma, const sdxl_vk_buf *beta,
                            int silu, sdxl_vk_gn_path path, sdxl_err *e) {
    if (n <= 0 || hw <= 0 || c <= 0 || groups <= 0 || c % groups)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan group norm: bad shape n=%lld hw=%lld c=%lld groups=%d",
                           (long long)n, (long long)hw, (long long)c, groups);
    if (path == SDXL_VK_GN_AUTO) path = hw * (c / groups) <= SDXL_VK_GN_ONE_MAX ? SDXL_VK_GN_ONE : SDXL_VK_GN_SPLIT;
    if (path == SDXL_VK_GN_SPLIT) return gn_split(v, x, y, n, hw, c, groups, eps, gamma, beta, silu, e);
    return norm_run(v, 0, x, y, n, hw, c, groups, silu, eps, gamma, beta, n * groups, e);
}

int sdxl_vk_group_norm(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t hw, int64_t c,
                       int groups, float eps, const sdxl_vk_buf *gamma, const sdxl_vk_buf *beta, int silu,
                       sdxl_err *e) {
    return sdxl_vk_group_norm_path(v, x, y, n, hw, c, groups, eps, gamma, beta, silu, SDXL_VK_GN_AUTO, e);
}

int sdxl_vk_layer_norm(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t rows, int64_t c, float eps,
                       const sdxl_vk_buf *gamma, const sdxl_vk_buf *beta, sdxl_err *e) {
    if (rows <= 0 || c <= 0) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan layer norm: bad shape");
    return norm_run(v, 1, x, y, rows, 1, c, 1, 0, eps, gamma, beta, rows, e);
}

int sdxl_vk_softmax_rows(sdxl_vk *v, const sdxl_vk_buf *x, int64_t rows, int64_t n, sdxl_err *e) {
    if (rows <= 0 || n <= 0) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan softmax: bad shape");
    return norm_run(v, 2, x, x, rows, 1, n, 1, 0, 0.0f, NULL, NULL, rows, e);
}

/* ---- elementwise ---------------------------------------------------------------------------- */

enum { OP_ADD = 0, OP_AXPY = 1, OP_SCALE = 2, OP_ADD_BIAS = 7, OP_GEGLU = 8, OP_CONCAT = 9, OP_RESIZE = 10,
       OP_TIMESTEP = 11, OP_ADD_ROWVEC = 12, OP_TRANSPOSE = 13, OP_DIV = 14,
       OP_PHASE = 15, OP_FILL = 16 };

static int elt(sdxl_vk *v, int op, const sdxl_vk_buf *a, int64_t na, const sdxl_vk_buf *b, int64_t nb,
               const sdxl_vk_buf *y, int64_t ny, const uint32_t args[6], float s, sdxl_err *e) {
    bound ba, bb, by;
    int st;
    if (ny < 0 || na < 0 || nb < 0) return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan op: size too large");
    if ((st = bind(v, a, na, "op input", &ba, e)) || (b && (st = bind(v, b, nb, "op second input", &bb, e))) ||
        (st = bind(v, y, ny, "op output", &by, e)))
        return st;
    push p = {0};
    p.u[0] = (uint32_t)op;
    p.u[1] = (uint32_t)ny;
    for (int i = 0; i < 6; i++) p.u[2 + i] = args ? args[i] : 0;
    p.u[8] = ba.eoff;
    p.u[9] = b ? bb.eoff : 0;
    p.u[10] = by.eoff;
    p.f[0] = s;
    const sdxl_vk_buf *bufs[4] = {&ba.b, b ? &bb.b : NULL, NULL, &by.b};
    return run1d(v, SDXL_VK_SH_ELTWISE, bufs, &p, ny, e);
}

int sdxl_vk_activation(sdxl_vk *v, sdxl_vk_act act, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n,
                       sdxl_err *e) {
    if (act < SDXL_VK_SILU || act > SDXL_VK_QUICK_GELU) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan: bad activation");
    return elt(v, (int)act, x, n, NULL, 0, y, n, NULL, 0.0f, e);
}

int sdxl_vk_geglu(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t rows, int64_t f, sdxl_err *e) {
    uint32_t a[6] = {(uint32_t)f};
    if (rows <= 0 || f <= 0) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan geglu: bad shape");
    return elt(v, OP_GEGLU, x, mul3(rows, 2 * f, 1), NULL, 0, y, mul3(rows, f, 1), a, 0.0f, e);
}

int sdxl_vk_resize_nearest(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t h, int64_t w,
                           int64_t c, int64_t oh, int64_t ow, sdxl_err *e) {
    if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || oh <= 0 || ow <= 0 || h > 65536 || w > 65536 || oh > 65536 ||
        ow > 65536)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan resize: bad shape");
    uint32_t a[6] = {(uint32_t)c, (uint32_t)h, (uint32_t)w, (uint32_t)oh, (uint32_t)ow};
    return elt(v, OP_RESIZE, x, mul3(mul3(n, h, w), c, 1), NULL, 0, y, mul3(mul3(n, oh, ow), c, 1), a, 0.0f, e);
}

int sdxl_vk_concat_channels(sdxl_vk *v, const sdxl_vk_buf *a, int64_t ca, const sdxl_vk_buf *b, int64_t cb,
                            const sdxl_vk_buf *y, int64_t rows, sdxl_err *e) {
    if (rows <= 0 || ca <= 0 || cb <= 0) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan concat: bad shape");
    uint32_t args[6] = {(uint32_t)ca, (uint32_t)cb};
    return elt(v, OP_CONCAT, a, mul3(rows, ca, 1), b, mul3(rows, cb, 1), y, mul3(rows, ca + cb, 1), args, 0.0f, e);
}

int sdxl_vk_add(sdxl_vk *v, const sdxl_vk_buf *a, const sdxl_vk_buf *b, const sdxl_vk_buf *y, int64_t n, sdxl_err *e) {
    return elt(v, OP_ADD, a, n, b, n, y, n, NULL, 0.0f, e);
}

int sdxl_vk_axpy(sdxl_vk *v, float s, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, sdxl_err *e) {
    return elt(v, OP_AXPY, x, n, NULL, 0, y, n, NULL, s, e);
}

int sdxl_vk_copy(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, sdxl_err *e) {
    return elt(v, OP_SCALE, x, n, NULL, 0, y, n, NULL, 1.0f, e);
}

int sdxl_vk_div(sdxl_vk *v, const sdxl_vk_buf *x, float s, int64_t n, sdxl_err *e) {
    return elt(v, OP_DIV, x, n, NULL, 0, x, n, NULL, s, e);
}

int sdxl_vk_place_phase(sdxl_vk *v, const sdxl_vk_buf *p, const sdxl_vk_buf *y, int64_t n, int64_t h, int64_t w,
                        int64_t c, int a, int q, sdxl_err *e) {
    if (n <= 0 || h <= 0 || w <= 0 || c <= 0 || a < 0 || a > 1 || q < 0 || q > 1)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan place_phase: bad shape");
    uint32_t args[6] = {(uint32_t)h, (uint32_t)w, (uint32_t)c, (uint32_t)a, (uint32_t)q};
    int64_t np = mul3(mul3(n, h, w), c, 1);
    bound bp, by;
    int st;
    if (np < 0) return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan place_phase: too large");
    if ((st = bind(v, p, np, "phase input", &bp, e)) || (st = bind(v, y, 4 * np, "phase output", &by, e))) return st;
    push pc = {0};
    pc.u[0] = OP_PHASE;
    pc.u[1] = (uint32_t)np;
    for (int i = 0; i < 6; i++) pc.u[2 + i] = args[i];
    pc.u[8] = bp.eoff;
    pc.u[10] = by.eoff;
    const sdxl_vk_buf *bufs[4] = {&bp.b, NULL, NULL, &by.b};
    return run1d(v, SDXL_VK_SH_ELTWISE, bufs, &pc, np, e);
}

int sdxl_vk_scale(sdxl_vk *v, const sdxl_vk_buf *x, float s, int64_t n, sdxl_err *e) {
    return elt(v, OP_SCALE, x, n, NULL, 0, x, n, NULL, s, e);
}

int sdxl_vk_fill(sdxl_vk *v, const sdxl_vk_buf *x, float val, int64_t n, sdxl_err *e) {
    return elt(v, OP_FILL, x, n, NULL, 0, x, n, NULL, val, e);
}

int sdxl_vk_add_bias(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *bias, int64_t rows, int64_t c,
                     sdxl_err *e) {
    if (rows <= 0 || c <= 0) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan add_bias: bad shape");
    uint32_t a[6] = {(uint32_t)c};
    return elt(v, OP_ADD_BIAS, x, mul3(rows, c, 1), bias, c, x, mul3(rows, c, 1), a, 0.0f, e);
}

int sdxl_vk_add_rowvec(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *vec, int64_t n, int64_t hw, int64_t c,
                       sdxl_err *e) {
    if (n <= 0 || hw <= 0 || c <= 0) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan add_rowvec: bad shape");
    uint32_t a[6] = {(uint32_t)hw, (uint32_t)c};
    return elt(v, OP_ADD_ROWVEC, x, mul3(n, hw, c), vec, mul3(n, c, 1), x, mul3(n, hw, c), a, 0.0f, e);
}

int sdxl_vk_transpose(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t rows, int64_t cols,
                      sdxl_err *e) {
    if (n <= 0 || rows <= 0 || cols <= 0) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan transpose: bad shape");
    int64_t all = mul3(n, rows, cols);
    uint32_t a[6] = {(uint32_t)rows, (uint32_t)cols};
    return elt(v, OP_TRANSPOSE, x, all, NULL, 0, y, all, a, 0.0f, e);
}

int sdxl_vk_timestep_freqs(sdxl_vk *v, int dim, float downscale_freq_shift, float max_period, sdxl_vk_buf *out,
                           sdxl_err *e) {
    if (dim < 2 || dim > (1 << 20)) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan timestep: bad dim %d", dim);
    int half = dim / 2;
    float *f = malloc((size_t)half * sizeof *f);
    if (!f) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan timestep: out of memory");
    const float neg_log = (float)(-log((double)max_period));
    const float denom = (float)half - downscale_freq_shift;
    for (int i = 0; i < half; i++) {
        float ex = neg_log * (float)i;
        ex = ex / denom;
        f[i] = (float)exp((double)ex);
    }
    int st = sdxl_vk_from_host(v, f, half, out, e);
    free(f);
    return st;
}

int sdxl_vk_timestep_embedding(sdxl_vk *v, const sdxl_vk_buf *t, int64_t n, int dim, int flip_sin_to_cos,
                               const sdxl_vk_buf *freqs, const sdxl_vk_buf *out, sdxl_err *e) {
    if (n <= 0 || dim < 2) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan timestep: bad shape");
    uint32_t a[6] = {(uint32_t)dim, flip_sin_to_cos ? 1u : 0u};
    return elt(v, OP_TIMESTEP, t, n, freqs, dim / 2, out, mul3(n, dim, 1), a, 0.0f, e);
}

int sdxl_vk_convert(sdxl_vk *v, const sdxl_vk_buf *src, sdxl_dtype from, const sdxl_vk_buf *dst, sdxl_dtype to,
                    int64_t n, sdxl_err *e) {
    int mode;
    if (from == SDXL_F32 && to == SDXL_F16) mode = 0;
    else if (from == SDXL_F16 && to == SDXL_F32) mode = 1;
    else if (from == SDXL_F32 && to == SDXL_BF16) mode = 2;
    else if (from == SDXL_BF16 && to == SDXL_F32) mode = 3;
    else return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan convert: unsupported %d -> %d", (int)from, (int)to);
    if (n <= 0 || n > MAX_ELEMS) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan convert: bad count");
    int64_t words = (n + 1) / 2, fl = n;
    bound bs, bd;
    int st;
    if ((st = bind(v, src, mode & 1 ? words : fl, "convert input", &bs, e)) ||
        (st = bind(v, dst, mode & 1 ? fl : words, "convert output", &bd, e)))
        return st;
    if (bs.eoff || bd.eoff) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan convert: views must be aligned");
    push p = {0};
    p.u[0] = (uint32_t)mode;
    p.u[1] = (uint32_t)n;
    const sdxl_vk_buf *bufs[4] = {mode & 1 ? NULL : &bs.b, mode & 1 ? &bs.b : NULL, mode & 1 ? NULL : &bd.b,
                                  mode & 1 ? &bd.b : NULL};
    return run1d(v, SDXL_VK_SH_CONVERT, bufs, &p, words, e);
}
