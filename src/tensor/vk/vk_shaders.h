/* SPIR-V of shaders/ *.comp, compiled by glslc at build time and embedded. */
#ifndef SDXL_TENSOR_VK_SHADERS_H
#define SDXL_TENSOR_VK_SHADERS_H

#include <stddef.h>
#include <stdint.h>

const uint32_t *sdxl_vk_spirv(int shader, size_t *words);

#endif
