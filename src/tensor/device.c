/* The backend seam: contexts on a Vulkan device, activation memory, and the ops that take a
 * context, each either the CPU kernel or the device's (tensor/vk/dev.c). */
#include <stdlib.h>
#include <string.h>

#include "tensor/ops.h"
#include "tensor/ops_internal.h"

int sdxl_compute_new_device(sdxl_prec prec, const char *device, sdxl_compute **out, sdxl_err *e) {
    *out = NULL;
    if (!device || !strcmp(device, "cpu")) return sdxl_compute_new(prec, out, e);
    if (!strcmp(device, "auto")) { /* a GPU; lavapipe and other software devices lose to the CPU kernels */
        sdxl_vk_devinfo *d = NULL;
        int n = 0, gpu = 0;
        sdxl_err ignore = {0};
        if (!sdxl_vk_list(&d, &n, &ignore))
            for (int i = 0; i < n; i++) gpu |= d[i].type == SDXL_VK_DISCRETE || d[i].type == SDXL_VK_INTEGRATED;
        free(d);
        if (!gpu) return sdxl_compute_new(prec, out, e);
    }
    sdxl_dev *dev = NULL;
    int st = sdxl_dev_new(device, prec, &dev, e);
    if (st) return st;
    if ((st = sdxl_compute_new(prec, out, e))) {
        sdxl_dev_free(dev);
        return st;
    }
    sdxl_compute_set_dev(*out, dev);
    return SDXL_OK;
}

int sdxl_compute_is_device(const sdxl_compute *c) { return sdxl_compute_dev(c) != NULL; }

const char *sdxl_compute_device_name(const sdxl_compute *c) {
    sdxl_dev *d = sdxl_compute_dev(c);
    return d ? sdxl_vk_info(sdxl_dev_vk(d))->name : "cpu";
}

void *sdxl_compute_alloc(sdxl_compute *c, size_t bytes, sdxl_err *e) {
    sdxl_dev *d = sdxl_compute_dev(c);
    if (d) return sdxl_dev_alloc(d, bytes, e);
    void *p = sdxl_alloc_big(bytes ? bytes : 64);
    if (!p) sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory for %zu bytes of activations", bytes);
    return p;
}

void sdxl_compute_release(sdxl_compute *c, void *p) {
    sdxl_dev *d = sdxl_compute_dev(c);
    if (d) sdxl_dev_release(d, p);
    else free(p);
}

void sdxl_compute_device_memory(sdxl_compute *c, uint64_t *budget, uint64_t *held) {
    sdxl_dev *d = sdxl_compute_dev(c);
    *budget = *held = 0;
    if (!d) return;
    sdxl_vk_budget(sdxl_dev_vk(d), budget, NULL);
    *held = sdxl_vk_bytes_held(sdxl_dev_vk(d));
}

int sdxl_op_copy(sdxl_compute *c, void *dst, const void *src, size_t bytes, sdxl_err *e) {
    sdxl_dev *d = sdxl_compute_dev(c);
    if (d) return sdxl_dev_copy(d, dst, src, bytes, e);
    if (bytes) memmove(dst, src, bytes);
    return SDXL_OK;
}

uint64_t sdxl_compute_device_allocs(const sdxl_compute *c) {
    sdxl_dev *d = sdxl_compute_dev(c);
    return d ? sdxl_vk_n_allocs(sdxl_dev_vk(d)) : 0;
}

void sdxl_compute_profile_reset(sdxl_compute *c) {
    sdxl_dev *d = sdxl_compute_dev(c);
    if (d) sdxl_vk_profile_reset(sdxl_dev_vk(d));
}

int sdxl_compute_sync(sdxl_compute *c, sdxl_err *e) {
    sdxl_dev *d = sdxl_compute_dev(c);
    return d ? sdxl_dev_sync(d, e) : SDXL_OK;
}

#define DEV_OR(call_dev, call_cpu)                     \
    do {                                               \
        sdxl_dev *d_ = sdxl_compute_dev(c);            \
        if (d_) return call_dev;                       \
        call_cpu;                                      \
        (void)e;                                       \
        return SDXL_OK;                                \
    } while (0)

int sdxl_op_group_norm(sdxl_compute *c, const float *x, float *y, int64_t n, int64_t hw, int64_t ch, int groups,
                       float eps, const float *gamma, const float *beta, int silu, sdxl_err *e) {
    DEV_OR(sdxl_dev_group_norm(d_, x, y, n, hw, ch, groups, eps, gamma, beta, silu, e),
           sdxl_group_norm(x, y, n, hw, ch, groups, eps, gamma, beta, silu));
}

int sdxl_op_layer_norm(sdxl_compute *c, const float *x, float *y, int64_t rows, int64_t ch, float eps,
                       const float *gamma, const float *beta, sdxl_err *e) {
    DEV_OR(sdxl_dev_layer_norm(d_, x, y, rows, ch, eps, gamma, beta, e), sdxl_layer_norm(x, y, rows, ch, eps, gamma, beta));
}

int sdxl_op_softmax_rows(sdxl_compute *c, float *x, int64_t rows, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_softmax_rows(d_, x, rows, n, e), sdxl_softmax_rows(x, rows, n));
}

int sdxl_op_gelu(sdxl_compute *c, float *x, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_activation(d_, SDXL_VK_GELU, x, n, e), sdxl_gelu(x, n));
}

int sdxl_op_gelu_tanh(sdxl_compute *c, float *x, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_activation(d_, SDXL_VK_GELU_TANH, x, n, e), sdxl_gelu_tanh(x, n));
}

int sdxl_op_quick_gelu(sdxl_compute *c, float *x, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_activation(d_, SDXL_VK_QUICK_GELU, x, n, e), sdxl_quick_gelu(x, n));
}

int sdxl_op_silu(sdxl_compute *c, float *x, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_activation(d_, SDXL_VK_SILU, x, n, e), sdxl_silu(x, n));
}

int sdxl_op_geglu(sdxl_compute *c, const float *x, float *y, int64_t rows, int64_t f, sdxl_err *e) {
    DEV_OR(sdxl_dev_geglu(d_, x, y, rows, f, e), sdxl_geglu(x, y, rows, f));
}

int sdxl_op_upsample_nearest2x(sdxl_compute *c, const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t ch,
                               sdxl_err *e) {
    DEV_OR(sdxl_dev_resize_nearest(d_, x, y, n, h, w, ch, 2 * h, 2 * w, e), sdxl_upsample_nearest2x(x, y, n, h, w, ch));
}

int sdxl_op_resize_nearest(sdxl_compute *c, const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t ch,
                           int64_t oh, int64_t ow, sdxl_err *e) {
    DEV_OR(sdxl_dev_resize_nearest(d_, x, y, n, h, w, ch, oh, ow, e), sdxl_resize_nearest(x, y, n, h, w, ch, oh, ow));
}

int sdxl_op_concat_channels(sdxl_compute *c, const float *a, int64_t ca, const float *b, int64_t cb, float *y,
                            int64_t rows, sdxl_err *e) {
    DEV_OR(sdxl_dev_concat_channels(d_, a, ca, b, cb, y, rows, e), sdxl_concat_channels(a, ca, b, cb, y, rows));
}

int sdxl_op_add(sdxl_compute *c, const float *a, const float *b, float *y, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_add(d_, a, b, y, n, e), sdxl_add(a, b, y, n));
}

int sdxl_op_axpy(sdxl_compute *c, float s, const float *x, float *y, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_axpy(d_, s, x, y, n, e), sdxl_axpy(s, x, y, n));
}

int sdxl_op_scale(sdxl_compute *c, float *x, float s, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_scale(d_, x, s, n, e), sdxl_scale(x, s, n));
}

static void fill(float *x, float v, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = v;
}

int sdxl_op_fill(sdxl_compute *c, float *x, float v, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_fill(d_, x, v, n, e), fill(x, v, n));
}

int sdxl_op_add_bias(sdxl_compute *c, float *x, const float *bias, int64_t rows, int64_t ch, sdxl_err *e) {
    DEV_OR(sdxl_dev_add_bias(d_, x, bias, rows, ch, e), sdxl_add_bias(x, bias, rows, ch));
}

int sdxl_op_timestep_embedding(sdxl_compute *c, const float *t, int64_t n, int dim, int flip_sin_to_cos,
                               float downscale_freq_shift, float max_period, float *out, sdxl_err *e) {
    DEV_OR(sdxl_dev_timestep_embedding(d_, t, n, dim, flip_sin_to_cos, downscale_freq_shift, max_period, out, e),
           sdxl_timestep_embedding(t, n, dim, flip_sin_to_cos, downscale_freq_shift, max_period, out));
}

int sdxl_op_nchw_to_nhwc(sdxl_compute *c, const float *src, float *dst, int64_t n, int64_t ch, int64_t h, int64_t w,
                         sdxl_err *e) {
    DEV_OR(sdxl_dev_transpose(d_, src, dst, n, ch, h * w, e), sdxl_nchw_to_nhwc(src, dst, n, ch, h, w));
}

int sdxl_op_nhwc_to_nchw(sdxl_compute *c, const float *src, float *dst, int64_t n, int64_t h, int64_t w, int64_t ch,
                         sdxl_err *e) {
    DEV_OR(sdxl_dev_transpose(d_, src, dst, n, h * w, ch, e), sdxl_nhwc_to_nchw(src, dst, n, h, w, ch));
}

int sdxl_op_div(sdxl_compute *c, float *x, float s, int64_t n, sdxl_err *e) {
    DEV_OR(sdxl_dev_div(d_, x, s, n, e), for (int64_t i = 0; i < n; i++) x[i] = x[i] / s);
}

static void place_phase(const float *p, float *y, int64_t n, int64_t h, int64_t w, int64_t ch, int a, int q) {
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n * h; row++) {
        const int64_t b = row / h, i = row % h;
        float *dst = y + ((b * 2 * h + 2 * i + a) * 2 * w + q) * ch;
        const float *src = p + row * w * ch;
        for (int64_t j = 0; j < w; j++) memcpy(dst + 2 * j * ch, src + j * ch, (size_t)ch * sizeof(float));
    }
}

int sdxl_op_place_phase(sdxl_compute *c, const float *p, float *y, int64_t n, int64_t h, int64_t w, int64_t ch, int a,
                        int q, sdxl_err *e) {
    DEV_OR(sdxl_dev_place_phase(d_, p, y, n, h, w, ch, a, q, e), place_phase(p, y, n, h, w, ch, a, q));
}
