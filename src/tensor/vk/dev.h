/* The Vulkan side of sdxl_compute: device activations are addresses in a reserved, inaccessible
 * (PROT_NONE) host range that maps one to one onto a device buffer, so the networks' pointer
 * arithmetic (views, offsets) carries over unchanged and a stray CPU access faults at once.
 * Any other pointer an op receives is host memory: inputs are uploaded (small ones cached,
 * checked against a kept copy on each use), host outputs are computed in a temporary device
 * buffer and read back. Dispatches on device memory are only recorded, so a forward whose
 * activations are all device memory runs as few command buffers and never crosses the bus. */
#ifndef SDXL_TENSOR_VK_DEV_H
#define SDXL_TENSOR_VK_DEV_H

#include "tensor/ops.h"
#include "tensor/vk/vk_ops.h"

typedef struct sdxl_dev sdxl_dev;

int sdxl_dev_new(const char *device, sdxl_prec prec, sdxl_dev **out, sdxl_err *e);
void sdxl_dev_free(sdxl_dev *d);
sdxl_vk *sdxl_dev_vk(sdxl_dev *d);
void *sdxl_dev_alloc(sdxl_dev *d, size_t bytes, sdxl_err *e);
void sdxl_dev_release(sdxl_dev *d, void *p);
/* Drops the cached host inputs and temporaries (sdxl_compute_trim). */
void sdxl_dev_trim(sdxl_dev *d);
int sdxl_dev_copy(sdxl_dev *d, void *dst, const void *src, size_t bytes, sdxl_err *e);
/* Submits what is recorded and waits. */
int sdxl_dev_sync(sdxl_dev *d, sdxl_err *e);

/* GEMM layers: impl of a device layer (its w stays NULL). */
int sdxl_dev_layer_init(sdxl_dev *d, void **impl, int64_t cin, int64_t cout, int kh, int kw, int stride, int pad_t,
                        int pad_l, int pad_b, int pad_r, const void *w, sdxl_dtype wdt, const void *b,
                        sdxl_dtype bdt, sdxl_err *e);
void sdxl_dev_layer_free(void *impl);
int sdxl_dev_layer_set_weights(void *impl, const float *w, const float *b, sdxl_err *e);
int sdxl_dev_linear_fwd(sdxl_dev *d, const void *impl, const float *x, int64_t M, float *y, int flags, sdxl_err *e);
int sdxl_dev_conv2d_fwd(sdxl_dev *d, const void *impl, const float *x, int64_t n, int64_t h, int64_t w, float *y,
                        int flags, sdxl_err *e);
int sdxl_dev_attention(sdxl_dev *d, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                       float *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads, int head_dim,
                       float scale, int causal, sdxl_err *e);

int sdxl_dev_group_norm(sdxl_dev *d, const float *x, float *y, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                        const float *gamma, const float *beta, int silu, sdxl_err *e);
int sdxl_dev_layer_norm(sdxl_dev *d, const float *x, float *y, int64_t rows, int64_t c, float eps, const float *gamma,
                        const float *beta, sdxl_err *e);
int sdxl_dev_softmax_rows(sdxl_dev *d, float *x, int64_t rows, int64_t n, sdxl_err *e);
int sdxl_dev_activation(sdxl_dev *d, sdxl_vk_act act, float *x, int64_t n, sdxl_err *e);
int sdxl_dev_geglu(sdxl_dev *d, const float *x, float *y, int64_t rows, int64_t f, sdxl_err *e);
int sdxl_dev_resize_nearest(sdxl_dev *d, const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t c,
                            int64_t oh, int64_t ow, sdxl_err *e);
int sdxl_dev_concat_channels(sdxl_dev *d, const float *a, int64_t ca, const float *b, int64_t cb, float *y,
                             int64_t rows, sdxl_err *e);
int sdxl_dev_add(sdxl_dev *d, const float *a, const float *b, float *y, int64_t n, sdxl_err *e);
int sdxl_dev_axpy(sdxl_dev *d, float s, const float *x, float *y, int64_t n, sdxl_err *e);
int sdxl_dev_scale(sdxl_dev *d, float *x, float s, int64_t n, sdxl_err *e);
int sdxl_dev_fill(sdxl_dev *d, float *x, float v, int64_t n, sdxl_err *e);
int sdxl_dev_add_bias(sdxl_dev *d, float *x, const float *bias, int64_t rows, int64_t c, sdxl_err *e);
int sdxl_dev_div(sdxl_dev *d, float *x, float s, int64_t n, sdxl_err *e);
int sdxl_dev_place_phase(sdxl_dev *d, const float *p, float *y, int64_t n, int64_t h, int64_t w, int64_t c, int a,
                         int q, sdxl_err *e);
int sdxl_dev_transpose(sdxl_dev *d, const float *x, float *y, int64_t n, int64_t rows, int64_t cols, sdxl_err *e);
int sdxl_dev_timestep_embedding(sdxl_dev *d, const float *t, int64_t n, int dim, int flip_sin_to_cos,
                                float downscale_freq_shift, float max_period, float *out, sdxl_err *e);

#endif
