/* Ops on f32 channels-last activations. GEMMs (linear, conv) go through oneDNN with a
 * primitive cache in the compute context; everything else is our own AVX-512 / portable C.
 * Layer objects hold weights converted once, at load, into the layout the primitive wants. */
#ifndef SDXL_TENSOR_OPS_H
#define SDXL_TENSOR_OPS_H

#include <stdint.h>

#include "base/err.h"
#include "tensor/tensor.h"

/* Engine, stream, primitive cache, scratch for GEMM input conversion, precision. Not shared
 * between threads that run forwards at the same time: one per session. */
typedef struct sdxl_compute sdxl_compute;

int sdxl_compute_new(sdxl_prec prec, sdxl_compute **out, sdxl_err *e);
void sdxl_compute_free(sdxl_compute *c);
sdxl_prec sdxl_compute_prec(const sdxl_compute *c);
/* Primitives created so far (tests check the cache is hit). */
int64_t sdxl_compute_n_primitives(const sdxl_compute *c);
/* Frees the scratch buffers (GEMM-input copies, oneDNN scratchpad, attention tiles); the next
 * op regrows them. For handing memory to another stage between phases, not per step. */
void sdxl_compute_trim(sdxl_compute *c);

/* malloc for large, long-lived buffers (weights, workspaces); release with free(). From 2 MiB up
 * the start is 2 MiB-aligned and the whole 2 MiB pages are marked for transparent huge pages,
 * so first touching the buffer faults once per 2 MiB instead of once per 4 KiB. */
void *sdxl_alloc_big(size_t bytes);

/* The context's GEMM-input buffer, grown to n bf16 values (contents kept unless it must grow);
 * NULL when out of memory. Valid until the next GEMM without SDXL_OP_SRC_BF16 or the next trim. */
uint16_t *sdxl_compute_src_bf16(sdxl_compute *c, int64_t n);

/* ---- linear: y[M, out] = x[M, in] . W^T + b ------------------------------------------- */

typedef struct sdxl_linear {
    int64_t in, out;
    sdxl_prec prec;
    void *w;      /* weights in oneDNN's chosen layout and the precision's dtype (owned) */
    float *bias;  /* [out] or NULL (owned) */
    void *impl;   /* private */
} sdxl_linear;

#define SDXL_OP_ACCUM 1 /* y += result instead of y = result (residual fused into the GEMM) */
/* bf16 contexts only: x points at n bf16 values already converted, e.g. by the op that produced
 * them, in the context's GEMM-input buffer (sdxl_compute_src_bf16) or a workspace; several GEMMs
 * may read one such input in turn while nothing else converts into the buffer. */
#define SDXL_OP_SRC_BF16 2

/* w: torch layout [out, in] row-major, of dtype wdt; b: [out] or NULL. Weights are copied. */
int sdxl_linear_init(sdxl_compute *c, sdxl_linear *l, int64_t in, int64_t out, const void *w, sdxl_dtype wdt,
                     const void *b, sdxl_dtype bdt, sdxl_err *e);
void sdxl_linear_free(sdxl_linear *l);
int sdxl_linear_fwd(sdxl_compute *c, const sdxl_linear *l, const float *x, int64_t M, float *y, int flags,
                    sdxl_err *e);

/* bf16 CPU contexts: a GEGLU feed-forward's first GEMM and the GEGLU in one, without the
 * [M, 2f] f32 projection: y [M, f] bf16 = h * gelu(gate) for [h | gate] = x . W^T + b, l->out =
 * 2f. The gate half runs first into g [M, f] (f32 scratch) with GELU in its epilogue, then the h
 * half multiplies by g in its own and stores bf16 (a next GEMM's SDXL_OP_SRC_BF16 input).
 * flags: SDXL_OP_SRC_BF16 or 0. SDXL_ERR_UNSUPPORTED elsewhere, or where the stored weights do
 * not split in two halves of N: run sdxl_linear_fwd and sdxl_geglu_bf16 then. */
int sdxl_linear_geglu_bf16(sdxl_compute *c, const sdxl_linear *l, const float *x, int64_t M, float *g, uint16_t *y,
                           int flags, sdxl_err *e);

/* ---- conv2d, NHWC ------------------------------------------------------------------------ */

typedef struct sdxl_conv2d {
    int64_t cin, cout;
    int kh, kw, stride;
    int pad_t, pad_l, pad_b, pad_r; /* asymmetric pads: the VAE encoder's downsampler is (0,0,1,1) */
    sdxl_prec prec;
    void *w;
    float *bias;
    void *impl;
} sdxl_conv2d;

/* w: torch layout [cout, cin, kh, kw]. */
int sdxl_conv2d_init(sdxl_compute *c, sdxl_conv2d *cv, int64_t cin, int64_t cout, int kh, int kw, int stride,
                     int pad_t, int pad_l, int pad_b, int pad_r, const void *w, sdxl_dtype wdt, const void *b,
                     sdxl_dtype bdt, sdxl_err *e);
void sdxl_conv2d_free(sdxl_conv2d *cv);
void sdxl_conv2d_out_size(const sdxl_conv2d *cv, int64_t h, int64_t w, int64_t *oh, int64_t *ow);
/* x [n, h, w, cin] -> y [n, oh, ow, cout]. */
int sdxl_conv2d_fwd(sdxl_compute *c, const sdxl_conv2d *cv, const float *x, int64_t n, int64_t h, int64_t w,
                    float *y, int flags, sdxl_err *e);

/* ---- weight replacement ----------------------------------------------------------------- */

/* Replace a built layer's weights in place (same layout, same primitives): w in torch order
 * ([out, in] or [cout, cin, kh, kw]) f32; b [out] or NULL to keep the bias. Converting the same
 * values as init gives byte-identical stored weights, which is what makes LoRA undo exact. */
int sdxl_linear_set_weights(sdxl_compute *c, sdxl_linear *l, const float *w, const float *b, sdxl_err *e);
int sdxl_conv2d_set_weights(sdxl_compute *c, sdxl_conv2d *cv, const float *w, const float *b, sdxl_err *e);
/* Where the stored weights keep each value: element (o, i, y, x) of the torch-order weights is
 * element off[0][o] + off[1][i] + off[2][y] + off[3][x] of l->w (linear: y = x = 0), of esize
 * bytes; bytes covers the buffer, padding included (zero). Lets LoRA merge deltas straight into
 * a copy of the packed weights. */
typedef struct sdxl_wlayout {
    int64_t n[4];
    int64_t *off[4];
    int esize;
    size_t bytes;
} sdxl_wlayout;
int sdxl_linear_layout(const sdxl_linear *l, sdxl_wlayout *lay, sdxl_err *e);
int sdxl_conv2d_layout(const sdxl_conv2d *cv, sdxl_wlayout *lay, sdxl_err *e);
void sdxl_wlayout_free(sdxl_wlayout *lay);
/* After l->w was pointed at another buffer of the same layout: refreshes the context's private
 * reordered copies of the layer's weights. */
int sdxl_linear_weights_moved(sdxl_compute *c, const sdxl_linear *l, sdxl_err *e);
int sdxl_conv2d_weights_moved(sdxl_compute *c, const sdxl_conv2d *cv, sdxl_err *e);
/* Bytes of the stored (converted) weights at l->w / cv->w. */
size_t sdxl_linear_weight_bytes(const sdxl_linear *l);
size_t sdxl_conv2d_weight_bytes(const sdxl_conv2d *cv);

/* ---- packed-weights store (the converted-weights cache) ------------------------------------ */

/* What identifies one layer's packed weights: op (1 linear, 2 conv), precision, torch-order
 * dims, a hash of the layout oneDNN chose on this machine and build, the packed size, and a
 * hash of the source values' size and first and last bytes. */
typedef struct sdxl_wkey {
    int32_t op, prec, ndims, pad;
    int64_t dims[4];
    uint64_t layout, bytes, src;
} sdxl_wkey;

/* Consulted by every CPU linear/conv init of a context it is set on. lookup returns the layer's
 * packed weights (exactly k->bytes, 64-byte aligned, writable, valid while the layer lives) to
 * use in place, or NULL to convert; record receives the weights of each layer converted
 * (valid during the call). */
typedef struct sdxl_wstore {
    const void *(*lookup)(void *user, const sdxl_wkey *k);
    void (*record)(void *user, const sdxl_wkey *k, const void *w);
    void *user;
} sdxl_wstore;

/* s NULL detaches. The store is copied; its user pointer must outlive the inits it serves. */
void sdxl_compute_set_wstore(sdxl_compute *c, const sdxl_wstore *s);
/* Parallel 64-bit hash of n bytes (the cache's data check); the same for any thread count. */
uint64_t sdxl_hash_bytes(const void *p, size_t n);
/* A 64-bit finalizer (MurmurHash3's fmix64): every input bit moves every output bit. */
uint64_t sdxl_mix64(uint64_t h);
/* Hash of what decides packed layouts besides the shapes: the oneDNN version and the CPU's ISA. */
uint64_t sdxl_gemm_build_hash(void);

/* ---- norms, activations, elementwise (x and y may alias unless noted) --------------------- */

/* x [n, hw, c] channels-last; groups divide c. gamma/beta [c]. silu fuses SiLU after the affine. */
void sdxl_group_norm(const float *x, float *y, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                     const float *gamma, const float *beta, int silu);
/* The same, written as bf16 (a GEMM input: see SDXL_OP_SRC_BF16); the values are the f32 ones
 * rounded as the GEMM's own input conversion rounds them, so results do not change. */
void sdxl_group_norm_bf16(const float *x, uint16_t *y, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                          const float *gamma, const float *beta, int silu);
void sdxl_layer_norm(const float *x, float *y, int64_t rows, int64_t c, float eps, const float *gamma,
                     const float *beta);
/* The same, written as bf16 (a GEMM input: see SDXL_OP_SRC_BF16), rounded as the GEMM's own input
 * conversion rounds the f32 values. y must not alias x. */
void sdxl_layer_norm_bf16(const float *x, uint16_t *y, int64_t rows, int64_t c, float eps, const float *gamma,
                          const float *beta);
/* x += res (a residual branch's output, rows x c), then the bf16 LayerNorm of the new x into y: the
 * same bits as sdxl_add then sdxl_layer_norm_bf16, in one pass over the rows. */
void sdxl_add_layer_norm_bf16(float *x, const float *res, uint16_t *y, int64_t rows, int64_t c, float eps,
                              const float *gamma, const float *beta);
void sdxl_softmax_rows(float *x, int64_t rows, int64_t n);
void sdxl_gelu(float *x, int64_t n);       /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
void sdxl_gelu_tanh(float *x, int64_t n);  /* tanh approximation */
void sdxl_quick_gelu(float *x, int64_t n); /* x * sigmoid(1.702 x) */
void sdxl_silu(float *x, int64_t n);
/* x [rows, 2f] = [h | gate] -> y [rows, f] = h * gelu(gate). y must not alias x. */
void sdxl_geglu(const float *x, float *y, int64_t rows, int64_t f);
/* The same, written as bf16 for the next GEMM's input (SDXL_OP_SRC_BF16), rounded as that GEMM's
 * own conversion would round the f32 result. */
void sdxl_geglu_bf16(const float *x, uint16_t *y, int64_t rows, int64_t f);
/* x [n, h, w, c] -> y [n, 2h, 2w, c]. */
void sdxl_upsample_nearest2x(const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t c);
/* torch 'nearest': src index = floor(dst * in / out). */
void sdxl_resize_nearest(const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh,
                         int64_t ow);
/* rows of a [rows, ca] and b [rows, cb] -> y [rows, ca + cb]. y must not alias. */
void sdxl_concat_channels(const float *a, int64_t ca, const float *b, int64_t cb, float *y, int64_t rows);
void sdxl_add(const float *a, const float *b, float *y, int64_t n);
/* y[i] += s * x[i]. */
void sdxl_axpy(float s, const float *x, float *y, int64_t n);
void sdxl_scale(float *x, float s, int64_t n);
/* Adds bias [c] to every row of x [rows, c]. */
void sdxl_add_bias(float *x, const float *bias, int64_t rows, int64_t c);

/* Sinusoidal embedding of n values into [n, dim], matching diffusers get_timestep_embedding in
 * float32: exponent = -ln(max_period) * i / (half - shift); arg = t * exp(exponent);
 * [sin | cos], swapped to [cos | sin] when flip_sin_to_cos. SDXL: flip 1, shift 0, period 10000. */
void sdxl_timestep_embedding(const float *t, int64_t n, int dim, int flip_sin_to_cos, float downscale_freq_shift,
                             float max_period, float *out);

/* ---- attention ----------------------------------------------------------------------------- */

/* Flash-style multi-head attention: query tiles with an online softmax, no [lq, lk] matrix.
 * q: [batch, lq] rows of q_ld floats, head h at columns h*head_dim; k, v: [batch, lk] rows of
 * kv_ld floats; out: [batch, lq] rows of out_ld floats. causal masks keys j > i. In bf16
 * precision the two products take bf16 inputs with f32 accumulation; softmax stays f32. */
int sdxl_attention(sdxl_compute *c, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                   float *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads, int head_dim,
                   float scale, int causal, sdxl_err *e);

/* The same with the output written as bf16 (a GEMM input: see SDXL_OP_SRC_BF16), rounded as the
 * GEMM's own input conversion rounds the f32 output, so the GEMM's result does not change.
 * SDXL_ERR_UNSUPPORTED where the bf16 kernel does not run (f32 context, no avx512_bf16, a device). */
int sdxl_attention_bf16(sdxl_compute *c, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                        uint16_t *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads, int head_dim,
                        float scale, int causal, sdxl_err *e);

/* ---- one forward, two backends --------------------------------------------------------------
 * A context made on a Vulkan device runs every op above and below there: layers created on it
 * keep their weights on the device (uploaded once, f32 or bf16 as the precision says), and
 * memory from sdxl_compute_alloc is device memory, addressed by pointers the CPU must not
 * touch (they fault); move data with sdxl_op_copy. Ops also accept host pointers there (copied
 * in, and out for outputs), so a network runs correctly before its activations move to the
 * device. On the CPU, sdxl_compute_alloc is aligned_alloc and the sdxl_op_* are the plain ops. */

/* device: NULL or "cpu"; "vulkan" / "vulkan:N"; "auto" (a Vulkan GPU if there is one, else cpu). */
int sdxl_compute_new_device(sdxl_prec prec, const char *device, sdxl_compute **out, sdxl_err *e);
/* 1 on a Vulkan device. */
int sdxl_compute_is_device(const sdxl_compute *c);
/* The device's name ("cpu" on the CPU). */
const char *sdxl_compute_device_name(const sdxl_compute *c);
/* Activation memory (64-byte aligned); NULL with e set on failure. Free with sdxl_compute_release. */
void *sdxl_compute_alloc(sdxl_compute *c, size_t bytes, sdxl_err *e);
void sdxl_compute_release(sdxl_compute *c, void *p);
/* Bytes the device's memory budget allows this process (VK_EXT_memory_budget, else the heap
 * size) and the bytes its blocks hold; 0, 0 on the CPU. */
void sdxl_compute_device_memory(sdxl_compute *c, uint64_t *budget, uint64_t *held);
/* memmove between any mix of host and device memory (bytes a multiple of 4 device to device). */
int sdxl_op_copy(sdxl_compute *c, void *dst, const void *src, size_t bytes, sdxl_err *e);
/* Waits for recorded device work (no-op on the CPU). */
int sdxl_compute_sync(sdxl_compute *c, sdxl_err *e);
/* Device memory allocations made so far by a device context (0 on the CPU): the step loop
 * must not add any once warm. */
uint64_t sdxl_compute_device_allocs(const sdxl_compute *c);
/* With SDXL_VULKAN_PROFILE=FILE set, a device context times each dispatch and copy on the GPU and
 * appends the sums per shader to FILE ("-": stderr) when freed; this forgets what was summed so
 * far (a bench calls it after its warm-up). No-op on the CPU or without the variable. */
void sdxl_compute_profile_reset(sdxl_compute *c);

int sdxl_op_group_norm(sdxl_compute *c, const float *x, float *y, int64_t n, int64_t hw, int64_t ch, int groups,
                       float eps, const float *gamma, const float *beta, int silu, sdxl_err *e);
int sdxl_op_layer_norm(sdxl_compute *c, const float *x, float *y, int64_t rows, int64_t ch, float eps,
                       const float *gamma, const float *beta, sdxl_err *e);
int sdxl_op_softmax_rows(sdxl_compute *c, float *x, int64_t rows, int64_t n, sdxl_err *e);
int sdxl_op_gelu(sdxl_compute *c, float *x, int64_t n, sdxl_err *e);
int sdxl_op_gelu_tanh(sdxl_compute *c, float *x, int64_t n, sdxl_err *e);
int sdxl_op_quick_gelu(sdxl_compute *c, float *x, int64_t n, sdxl_err *e);
int sdxl_op_silu(sdxl_compute *c, float *x, int64_t n, sdxl_err *e);
int sdxl_op_geglu(sdxl_compute *c, const float *x, float *y, int64_t rows, int64_t f, sdxl_err *e);
int sdxl_op_upsample_nearest2x(sdxl_compute *c, const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t ch,
                               sdxl_err *e);
int sdxl_op_resize_nearest(sdxl_compute *c, const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t ch,
                           int64_t oh, int64_t ow, sdxl_err *e);
int sdxl_op_concat_channels(sdxl_compute *c, const float *a, int64_t ca, const float *b, int64_t cb, float *y,
                            int64_t rows, sdxl_err *e);
int sdxl_op_add(sdxl_compute *c, const float *a, const float *b, float *y, int64_t n, sdxl_err *e);
int sdxl_op_axpy(sdxl_compute *c, float s, const float *x, float *y, int64_t n, sdxl_err *e);
int sdxl_op_scale(sdxl_compute *c, float *x, float s, int64_t n, sdxl_err *e);
/* x[i] = v for n floats (device memory is not zeroed by sdxl_compute_alloc). */
int sdxl_op_fill(sdxl_compute *c, float *x, float v, int64_t n, sdxl_err *e);
/* x[i] /= s, a true division (x * (1/s) rounds differently). */
int sdxl_op_div(sdxl_compute *c, float *x, float s, int64_t n, sdxl_err *e);
/* One phase of a 2x upsample: p [n, h, w, ch] -> y [n, 2h, 2w, ch] at rows 2i+a, columns 2j+q. */
int sdxl_op_place_phase(sdxl_compute *c, const float *p, float *y, int64_t n, int64_t h, int64_t w, int64_t ch, int a,
                        int q, sdxl_err *e);
int sdxl_op_add_bias(sdxl_compute *c, float *x, const float *bias, int64_t rows, int64_t ch, sdxl_err *e);
/* Layout edges: NCHW <-> NHWC (either side host or context memory). */
int sdxl_op_nchw_to_nhwc(sdxl_compute *c, const float *src, float *dst, int64_t n, int64_t ch, int64_t h, int64_t w,
                         sdxl_err *e);
int sdxl_op_nhwc_to_nchw(sdxl_compute *c, const float *src, float *dst, int64_t n, int64_t h, int64_t w, int64_t ch,
                         sdxl_err *e);
int sdxl_op_timestep_embedding(sdxl_compute *c, const float *t, int64_t n, int dim, int flip_sin_to_cos,
                               float downscale_freq_shift, float max_period, float *out, sdxl_err *e);

#endif
