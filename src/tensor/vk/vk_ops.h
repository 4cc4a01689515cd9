/* The ops of tensor/ops.h on Vulkan device buffers (f32 activations, channels-last). Each call
 * records dispatches; results are ready after sdxl_vk_flush or a download. Weights are
 * uploaded once at init in the storage dtype (f32, f16 or bf16); GEMM inputs are rounded to
 * that dtype and accumulate in f32, as the CPU's bf16 precision does. */
#ifndef SDXL_TENSOR_VK_OPS_H
#define SDXL_TENSOR_VK_OPS_H

#include "tensor/tensor.h"
#include "tensor/vk/vk.h"

/* A view of part of a buffer: byte offset and length inside b. */
sdxl_vk_buf sdxl_vk_view(const sdxl_vk_buf *b, uint64_t off, uint64_t bytes);
/* New buffer holding n host floats. */
int sdxl_vk_from_host(sdxl_vk *v, const float *x, int64_t n, sdxl_vk_buf *out, sdxl_err *e);

typedef struct sdxl_vk_gemm_layer {
    int64_t in, out;      /* linear: K, N. conv: cin, cout */
    int kh, kw, stride;   /* 1,1,1 for linear */
    int pad_t, pad_l, pad_b, pad_r;
    sdxl_dtype store;     /* weight dtype on the device */
    int has_bias;
    sdxl_vk_buf w;        /* [out][kh][kw][in] in store */
    sdxl_vk_buf bias;     /* [out] f32 */
} sdxl_vk_gemm_layer;

/* w: torch [out, in] of dtype wdt; b: [out] or NULL. */
int sdxl_vk_linear_init(sdxl_vk *v, sdxl_vk_gemm_layer *l, int64_t in, int64_t out, const void *w, sdxl_dtype wdt,
                        const void *b, sdxl_dtype bdt, sdxl_dtype store, sdxl_err *e);
/* w: torch [cout, cin, kh, kw]. */
int sdxl_vk_conv2d_init(sdxl_vk *v, sdxl_vk_gemm_layer *l, int64_t cin, int64_t cout, int kh, int kw, int stride,
                        int pad_t, int pad_l, int pad_b, int pad_r, const void *w, sdxl_dtype wdt, const void *b,
                        sdxl_dtype bdt, sdxl_dtype store, sdxl_err *e);
void sdxl_vk_layer_free(sdxl_vk *v, sdxl_vk_gemm_layer *l);
/* New f32 weights in torch order ([out, in] or [cout, cin, kh, kw]) and bias (NULL: kept) into
 * the layer's buffers, converted as at init (LoRA merge and undo). */
int sdxl_vk_layer_set(sdxl_vk *v, sdxl_vk_gemm_layer *l, const float *w, const float *b, sdxl_err *e);
/* y[M, out] (+)= x[M, in] W^T + b; flags: SDXL_OP_ACCUM. */
int sdxl_vk_linear_fwd(sdxl_vk *v, const sdxl_vk_gemm_layer *l, const sdxl_vk_buf *x, int64_t M,
                       const sdxl_vk_buf *y, int flags, sdxl_err *e);
/* x [n, h, w, cin] -> y [n, oh, ow, cout]. */
int sdxl_vk_conv2d_fwd(sdxl_vk *v, const sdxl_vk_gemm_layer *l, const sdxl_vk_buf *x, int64_t n, int64_t h,
                       int64_t w, const sdxl_vk_buf *y, int flags, sdxl_err *e);

/* As sdxl_attention; q/k/v/out are views, ld in floats. round: SDXL_F32 (none), SDXL_F16 or
 * SDXL_BF16 rounding of q, k, v and P before their products. */
int sdxl_vk_attention(sdxl_vk *v, const sdxl_vk_buf *q, int64_t q_ld, const sdxl_vk_buf *k, const sdxl_vk_buf *val,
                      int64_t kv_ld, const sdxl_vk_buf *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk,
                      int heads, int head_dim, float scale, int causal, sdxl_dtype round, sdxl_err *e);

int sdxl_vk_group_norm(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t hw, int64_t c,
                       int groups, float eps, const sdxl_vk_buf *gamma, const sdxl_vk_buf *beta, int silu,
                       sdxl_err *e);
/* Group norm's two strategies: one workgroup per (image, group), a single dispatch that reads
 * the group three times from one core (small groups); or split over pixel chunks, all cores,
 * three dispatches (large images). AUTO takes the first up to SDXL_VK_GN_ONE_MAX values a group. */
typedef enum sdxl_vk_gn_path { SDXL_VK_GN_AUTO = 0, SDXL_VK_GN_ONE, SDXL_VK_GN_SPLIT } sdxl_vk_gn_path;
#define SDXL_VK_GN_ONE_MAX 4096
int sdxl_vk_group_norm_path(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t hw,
                            int64_t c, int groups, float eps, const sdxl_vk_buf *gamma, const sdxl_vk_buf *beta,
                            int silu, sdxl_vk_gn_path path, sdxl_err *e);
int sdxl_vk_layer_norm(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t rows, int64_t c, float eps,
                       const sdxl_vk_buf *gamma, const sdxl_vk_buf *beta, sdxl_err *e);
int sdxl_vk_softmax_rows(sdxl_vk *v, const sdxl_vk_buf *x, int64_t rows, int64_t n, sdxl_err *e);

typedef enum sdxl_vk_act { SDXL_VK_SILU = 3, SDXL_VK_GELU = 4, SDXL_VK_GELU_TANH = 5, SDXL_VK_QUICK_GELU = 6 } sdxl_vk_act;
int sdxl_vk_activation(sdxl_vk *v, sdxl_vk_act act, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n,
                       sdxl_err *e);
int sdxl_vk_geglu(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t rows, int64_t f, sdxl_err *e);
int sdxl_vk_resize_nearest(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t h, int64_t w,
                           int64_t c, int64_t oh, int64_t ow, sdxl_err *e);
int sdxl_vk_concat_channels(sdxl_vk *v, const sdxl_vk_buf *a, int64_t ca, const sdxl_vk_buf *b, int64_t cb,
                            const sdxl_vk_buf *y, int64_t rows, sdxl_err *e);
int sdxl_vk_add(sdxl_vk *v, const sdxl_vk_buf *a, const sdxl_vk_buf *b, const sdxl_vk_buf *y, int64_t n, sdxl_err *e);
int sdxl_vk_axpy(sdxl_vk *v, float s, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, sdxl_err *e);
/* y = x, n floats (views may be unaligned). */
int sdxl_vk_copy(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, sdxl_err *e);
/* x[i] /= s (a true division). */
int sdxl_vk_div(sdxl_vk *v, const sdxl_vk_buf *x, float s, int64_t n, sdxl_err *e);
/* p [n, h, w, c] -> y [n, 2h, 2w, c] at rows 2i+a and columns 2j+q (one phase of a 2x upsample). */
int sdxl_vk_place_phase(sdxl_vk *v, const sdxl_vk_buf *p, const sdxl_vk_buf *y, int64_t n, int64_t h, int64_t w,
                        int64_t c, int a, int q, sdxl_err *e);
int sdxl_vk_scale(sdxl_vk *v, const sdxl_vk_buf *x, float s, int64_t n, sdxl_err *e);
/* x[i] = val. */
int sdxl_vk_fill(sdxl_vk *v, const sdxl_vk_buf *x, float val, int64_t n, sdxl_err *e);
/* x [rows, c] += bias [c]. */
int sdxl_vk_add_bias(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *bias, int64_t rows, int64_t c,
                     sdxl_err *e);
/* x [n, hw, c] += vec [n, c] (a per-image vector broadcast over pixels). */
int sdxl_vk_add_rowvec(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *vec, int64_t n, int64_t hw, int64_t c,
                       sdxl_err *e);

/* x [n][rows][cols] -> y [n][cols][rows] (NCHW <-> NHWC). */
int sdxl_vk_transpose(sdxl_vk *v, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t rows, int64_t cols,
                      sdxl_err *e);

/* Frequencies of sdxl_timestep_embedding, computed on the host exactly as the CPU does. */
int sdxl_vk_timestep_freqs(sdxl_vk *v, int dim, float downscale_freq_shift, float max_period, sdxl_vk_buf *out,
                           sdxl_err *e);
int sdxl_vk_timestep_embedding(sdxl_vk *v, const sdxl_vk_buf *t, int64_t n, int dim, int flip_sin_to_cos,
                               const sdxl_vk_buf *freqs, const sdxl_vk_buf *out, sdxl_err *e);

/* n elements: f32 -> to (f16/bf16 packed two per word) or from (f16/bf16) -> f32. */
int sdxl_vk_convert(sdxl_vk *v, const sdxl_vk_buf *src, sdxl_dtype from, const sdxl_vk_buf *dst, sdxl_dtype to,
                    int64_t n, sdxl_err *e);

#endif
