/* The embedded SPIR-V, indexed by sdxl_vk_shader. */
#include "tensor/vk/vk_shaders.h"

#include "tensor/vk/vk.h"

static const uint32_t gemm_spv[] = {
#include "gemm.spv.inc"
};
static const uint32_t attention_spv[] = {
#include "attention.spv.inc"
};
static const uint32_t norm_spv[] = {
#include "norm.spv.inc"
};
static const uint32_t eltwise_spv[] = {
#include "eltwise.spv.inc"
};
static const uint32_t convert_spv[] = {
#include "convert.spv.inc"
};
static const uint32_t gemm_mma_spv[] = {
#include "gemm_mma.spv.inc"
};

static const uint32_t attn_tile64_spv[] = {
#include "attn_tile64.spv.inc"
};
static const uint32_t attn_tile32_spv[] = {
#include "attn_tile32.spv.inc"
};

static const uint32_t attn_mma_spv[] = {
#include "attn_mma.spv.inc"
};

const uint32_t *sdxl_vk_spirv(int shader, size_t *words) {
    switch (shader) {
    case SDXL_VK_SH_GEMM: *words = sizeof gemm_spv / 4; return gemm_spv;
    case SDXL_VK_SH_ATTN: *words = sizeof attention_spv / 4; return attention_spv;
    case SDXL_VK_SH_NORM: *words = sizeof norm_spv / 4; return norm_spv;
    case SDXL_VK_SH_ELTWISE: *words = sizeof eltwise_spv / 4; return eltwise_spv;
    case SDXL_VK_SH_CONVERT: *words = sizeof convert_spv / 4; return convert_spv;
    case SDXL_VK_SH_GEMM_MMA: *words = sizeof gemm_mma_spv / 4; return gemm_mma_spv;
    case SDXL_VK_SH_ATTN_T64: *words = sizeof attn_tile64_spv / 4; return attn_tile64_spv;
    case SDXL_VK_SH_ATTN_T32: *words = sizeof attn_tile32_spv / 4; return attn_tile32_spv;
    case SDXL_VK_SH_ATTN_MMA: *words = sizeof attn_mma_spv / 4; return attn_mma_spv;
    default: *words = 0; return NULL;
    }
}
