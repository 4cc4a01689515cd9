/* Vulkan compute runtime: libvulkan.so.1 loaded at run time, device selection, a sub-allocator
 * over large device blocks, staging copies, one command buffer that records many dispatches
 * with a barrier between each, and a pipeline cache. Private to src/tensor. */
#ifndef SDXL_TENSOR_VK_H
#define SDXL_TENSOR_VK_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct sdxl_vk sdxl_vk;

enum { SDXL_VK_OTHER = 0, SDXL_VK_INTEGRATED = 1, SDXL_VK_DISCRETE = 2, SDXL_VK_VIRTUAL = 3, SDXL_VK_CPU = 4 };

/* What `sdxl devices` prints and what selection looks at. */
typedef struct sdxl_vk_devinfo {
    char name[256];
    int type; /* SDXL_VK_* */
    uint32_t vendor, device_id, api_version, driver_version;
    uint64_t local_bytes;  /* sum of device-local heaps */
    uint64_t budget_bytes; /* VK_EXT_memory_budget of those heaps, else local_bytes */
    uint64_t usage_bytes;  /* by every process, when the budget extension reports it */
    int has_budget;        /* VK_EXT_memory_budget present */
    int fp16;              /* shaderFloat16 */
    int storage16;         /* storageBuffer16BitAccess */
    int bf16;              /* VK_KHR_shader_bfloat16 advertised */
    int coopmat;           /* VK_KHR_cooperative_matrix or VK_NV_cooperative_matrix advertised */
    int mma;               /* gemm_mma.comp runs here (sdxl_vk_mma_pick found its shape; features on) */
    uint32_t subgroup_size, max_shared, max_wg_invocations;
    uint64_t max_storage_range;
    char mma_shapes[512]; /* VK_NV_cooperative_matrix's list as "MxNxK A,B->C,D" entries ("" when none) */
} sdxl_vk_devinfo;

/* One entry of a device's VK_NV_cooperative_matrix property list, in our own terms. */
enum { SDXL_VK_MMA_OTHER = 0, SDXL_VK_MMA_F16 = 1, SDXL_VK_MMA_F32 = 2 };
typedef struct sdxl_vk_mma_shape {
    uint32_t m, n, k;
    int a, b, c, d;   /* SDXL_VK_MMA_*: A and B inputs, C and D accumulators */
    int subgroup;     /* scope is the subgroup */
} sdxl_vk_mma_shape;
/* Index of the entry gemm_mma.comp needs (16x16x16, f16 A and B, f32 C and D, subgroup scope)
 * when the device's subgroups are 32 wide (the shader's four subgroups fill 128 threads); -1
 * when there is none, and the plain tiled GEMM runs. */
int sdxl_vk_mma_pick(const sdxl_vk_mma_shape *p, int n, uint32_t subgroup_size);

/* Lists every Vulkan device. *out is malloc'd (free()); *n may be 0. Fails with
 * SDXL_ERR_UNSUPPORTED when no loader or no instance is available. */
int sdxl_vk_list(sdxl_vk_devinfo **out, int *n, sdxl_err *e);
/* index -1: auto (discrete, then integrated, virtual, CPU; first of each kind). */
int sdxl_vk_pick(const sdxl_vk_devinfo *d, int n, int index);
/* "vulkan" or "auto" -> -1, "vulkan:N" -> N. Returns SDXL_ERR_ARG for anything else. */
int sdxl_vk_parse_device(const char *s, int *index, sdxl_err *e);

int sdxl_vk_new(int index, sdxl_vk **out, sdxl_err *e);
void sdxl_vk_free(sdxl_vk *v);
const sdxl_vk_devinfo *sdxl_vk_info(const sdxl_vk *v);
/* Re-reads the budget (it moves with other processes). */
int sdxl_vk_budget(sdxl_vk *v, uint64_t *budget, uint64_t *usage);
/* Bytes held by this context's blocks, and the most it held. */
uint64_t sdxl_vk_bytes_held(const sdxl_vk *v);
uint64_t sdxl_vk_bytes_peak(const sdxl_vk *v);
/* Offset alignment of sub-allocations (and of the bound ranges of views). */
uint64_t sdxl_vk_align(const sdxl_vk *v);

/* A range of a device block. Views never own it; sdxl_vk_release returns it to the block. */
typedef struct sdxl_vk_buf {
    void *buffer; /* VkBuffer of the block */
    uint64_t off, size;
    int block;
} sdxl_vk_buf;

int sdxl_vk_alloc(sdxl_vk *v, uint64_t bytes, sdxl_vk_buf *b, sdxl_err *e);
void sdxl_vk_release(sdxl_vk *v, sdxl_vk_buf *b);
/* A device range of at least `bytes` that ops use between their own dispatches (group norm's
 * statistics); one per context, grown on demand: a later call may hand out the same memory. */
int sdxl_vk_scratch(sdxl_vk *v, uint64_t bytes, sdxl_vk_buf *out, sdxl_err *e);
/* Host <-> device through the staging buffer; wait for completion. Flushes pending work first. */
int sdxl_vk_upload(sdxl_vk *v, const sdxl_vk_buf *b, uint64_t off, const void *src, uint64_t n, sdxl_err *e);
int sdxl_vk_download(sdxl_vk *v, const sdxl_vk_buf *b, uint64_t off, void *dst, uint64_t n, sdxl_err *e);

/* Shaders compiled into the library. */
typedef enum sdxl_vk_shader {
    SDXL_VK_SH_GEMM = 0,
    SDXL_VK_SH_ATTN,
    SDXL_VK_SH_NORM,
    SDXL_VK_SH_ELTWISE,
    SDXL_VK_SH_CONVERT,
    SDXL_VK_SH_GEMM_MMA, /* devices with sdxl_vk_devinfo.mma only */
    SDXL_VK_SH_ATTN_T64, /* head_dim <= 64, 64 query rows a workgroup (44 KiB of shared memory) */
    SDXL_VK_SH_ATTN_T32, /* the same, 32 rows (26 KiB) */
    SDXL_VK_SH_ATTN_MMA, /* head_dim <= 64, rounded operands, on matrix units (devices with mma) */
    SDXL_VK_SH_COUNT
} sdxl_vk_shader;

#define SDXL_VK_MAX_BINDINGS 4
#define SDXL_VK_PUSH_BYTES 128

/* Records one dispatch (and a compute->compute barrier after it) into the open command buffer;
 * bufs[i] NULL binds a dummy. Work runs at sdxl_vk_flush or at the next copy. */
int sdxl_vk_dispatch(sdxl_vk *v, sdxl_vk_shader sh, const sdxl_vk_buf *const bufs[SDXL_VK_MAX_BINDINGS],
                     const void *push, size_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz, sdxl_err *e);
/* Submits what was recorded and waits. */
int sdxl_vk_flush(sdxl_vk *v, sdxl_err *e);
/* Dispatches recorded since the context was made, and pipelines created (the cache is hit after). */
uint64_t sdxl_vk_n_dispatches(const sdxl_vk *v);
/* Sub-allocations made since the context was made (a warm step loop makes none). */
uint64_t sdxl_vk_n_allocs(const sdxl_vk *v);
int sdxl_vk_n_pipelines(const sdxl_vk *v);
/* SDXL_VULKAN_PROFILE: waits for pending work, then forgets the GPU times summed so far. */
void sdxl_vk_profile_reset(sdxl_vk *v);

#endif
