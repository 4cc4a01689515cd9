/* Tensor type and dtype conversion. Activations are f32, channels-last (NHWC; tokens x channels
 * inside transformer blocks). f16/bf16 appear in weights and in GEMM inputs. */
#ifndef SDXL_TENSOR_TENSOR_H
#define SDXL_TENSOR_TENSOR_H

#include <stddef.h>
#include <stdint.h>

/* F8_E4M3 is the "fn" variant (no infinities, S.1111.111 is NaN); F8_E5M2 is IEEE-like. Both only
 * as stored weights: every value of either is exact in f32, bf16 and (E5M2) f16. */
typedef enum sdxl_dtype { SDXL_F32 = 0, SDXL_F16 = 1, SDXL_BF16 = 2, SDXL_F8_E4M3 = 3, SDXL_F8_E5M2 = 4 } sdxl_dtype;

/* Compute precision of GEMMs: f32 is the reference; bf16 feeds bf16 inputs, accumulates in f32. */
typedef enum sdxl_prec { SDXL_PREC_F32 = 0, SDXL_PREC_BF16 = 1 } sdxl_prec;

#define SDXL_MAX_DIMS 4

/* A view: ne[] sizes outermost first (N, H, W, C), nb[] strides in elements. Never owns data. */
typedef struct sdxl_tensor {
    sdxl_dtype dtype;
    int ndim;
    int64_t ne[SDXL_MAX_DIMS];
    int64_t nb[SDXL_MAX_DIMS];
    void *data;
} sdxl_tensor;

size_t sdxl_dtype_size(sdxl_dtype t);
/* Contiguous view of the given shape. */
sdxl_tensor sdxl_tensor_make(sdxl_dtype t, void *data, int ndim, const int64_t *ne);
int64_t sdxl_tensor_numel(const sdxl_tensor *t);
int sdxl_tensor_is_contiguous(const sdxl_tensor *t);
/* View of [start, start+len) along dimension dim. */
sdxl_tensor sdxl_tensor_slice(const sdxl_tensor *t, int dim, int64_t start, int64_t len);

/* Vectorised conversions (AVX-512 where available). f32->f16/bf16 round to nearest even;
 * NaN stays NaN. */
void sdxl_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void sdxl_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void sdxl_bf16_to_f32(const uint16_t *src, float *dst, size_t n);
void sdxl_f32_to_bf16(const float *src, uint16_t *dst, size_t n);
/* fp8 to f32, exact. */
void sdxl_f8e4m3_to_f32(const uint8_t *src, float *dst, size_t n);
void sdxl_f8e5m2_to_f32(const uint8_t *src, float *dst, size_t n);
/* Any of the five to f32. */
void sdxl_to_f32(const void *src, sdxl_dtype t, float *dst, size_t n);

/* Layout edges: NCHW <-> NHWC (golden files and images are NCHW). */
void sdxl_nchw_to_nhwc(const float *src, float *dst, int64_t n, int64_t c, int64_t h, int64_t w);
void sdxl_nhwc_to_nchw(const float *src, float *dst, int64_t n, int64_t h, int64_t w, int64_t c);

#endif
