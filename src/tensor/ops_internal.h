/* Private to src/tensor: grow-only scratch buffers kept in the compute context, and the
 * small vector helpers shared by the kernels. */
#ifndef SDXL_TENSOR_OPS_INTERNAL_H
#define SDXL_TENSOR_OPS_INTERNAL_H

#include <stddef.h>

#include "tensor/ops.h"
#include "tensor/vk/dev.h"

/* 64-byte aligned buffer that only grows (warm-up), so steady-state passes never allocate. */
typedef struct sdxl_buf {
    void *p;
    size_t cap;
} sdxl_buf;

/* Ensures cap >= bytes; old contents are not kept. Returns SDXL_OK or SDXL_ERR_NOMEM. */
int sdxl_buf_reserve(sdxl_buf *b, size_t bytes);
void sdxl_buf_free(sdxl_buf *b);

/* The context's Vulkan device (NULL on the CPU); set once by sdxl_compute_new_device. */
sdxl_dev *sdxl_compute_dev(const sdxl_compute *c);
void sdxl_compute_set_dev(sdxl_compute *c, sdxl_dev *d);

/* The context's buffer for attention's per-thread tiles. */
sdxl_buf *sdxl_compute_attn_buf(sdxl_compute *c);

/* 1 when the AVX-512 (F, BW, VL, DQ) kernels may run; 2 when avx512_bf16 is present too; 0 for the
 * portable C paths, also forced by a non-empty, non-"0" SDXL_NO_AVX512 (tests run both). */
int sdxl_simd_level(void);

#endif
