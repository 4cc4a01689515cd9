/* Vulkan runtime: loader, device, memory blocks, staging, recording, pipelines. */
#define VK_NO_PROTOTYPES
#include "tensor/vk/vk.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vulkan/vulkan.h>

#include "tensor/vk/vk_shaders.h"

#define VK_INSTANCE_FNS(X)                          \
    X(vkDestroyInstance)                            \
    X(vkEnumeratePhysicalDevices)                   \
    X(vkGetPhysicalDeviceProperties)                \
    X(vkGetPhysicalDeviceProperties2)               \
    X(vkGetPhysicalDeviceFeatures2)                 \
    X(vkGetPhysicalDeviceMemoryProperties)          \
    X(vkGetPhysicalDeviceMemoryProperties2)         \
    X(vkGetPhysicalDeviceQueueFamilyProperties)     \
    X(vkEnumerateDeviceExtensionProperties)         \
    X(vkCreateDevice)                               \
    X(vkGetDeviceProcAddr)

#define VK_DEVICE_FNS(X)              \
    X(vkDestroyDevice)                \
    X(vkGetDeviceQueue)               \
    X(vkCreateBuffer)                 \
    X(vkDestroyBuffer)                \
    X(vkGetBufferMemoryRequirements)  \
    X(vkAllocateMemory)               \
    X(vkFreeMemory)                   \
    X(vkBindBufferMemory)             \
    X(vkMapMemory)                    \
    X(vkUnmapMemory)                  \
    X(vkCreateCommandPool)            \
    X(vkDestroyCommandPool)           \
    X(vkAllocateCommandBuffers)       \
    X(vkBeginCommandBuffer)           \
    X(vkEndCommandBuffer)             \
    X(vkQueueSubmit)                  \
    X(vkCreateFence)                  \
    X(vkDestroyFence)                 \
    X(vkWaitForFences)                \
    X(vkResetFences)                  \
    X(vkCmdCopyBuffer)                \
    X(vkCmdPipelineBarrier)           \
    X(vkCmdBindPipeline)              \
    X(vkCmdBindDescriptorSets)        \
    X(vkCmdPushConstants)             \
    X(vkCmdDispatch)                  \
    X(vkCreateShaderModule)           \
    X(vkDestroyShaderModule)          \
    X(vkCreateComputePipelines)       \
    X(vkDestroyPipeline)              \
    X(vkCreatePipelineCache)          \
    X(vkDestroyPipelineCache)         \
    X(vkCreatePipelineLayout)         \
    X(vkDestroyPipelineLayout)        \
    X(vkCreateQueryPool)              \
    X(vkDestroyQueryPool)             \
    X(vkCmdResetQueryPool)            \
    X(vkCmdWriteTimestamp)            \
    X(vkGetQueryPoolResults)          \
    X(vkCreateDescriptorSetLayout)    \
    X(vkDestroyDescriptorSetLayout)   \
    X(vkCreateDescriptorPool)         \
    X(vkDestroyDescriptorPool)        \
    X(vkResetDescriptorPool)          \
    X(vkAllocateDescriptorSets)       \
    X(vkUpdateDescriptorSets)

/* Function table: loader handle and every entry point we call. */
typedef struct vk_fns {
    void *lib;
    PFN_vkGetInstanceProcAddr vkGetInstanceProcAddr;
    PFN_vkCreateInstance vkCreateInstance;
    PFN_vkEnumerateInstanceVersion vkEnumerateInstanceVersion;
#define X(f) PFN_##f f;
    VK_INSTANCE_FNS(X)
    VK_DEVICE_FNS(X)
#undef X
    VkInstance inst;
} vk_fns;

#define VK_MAX_BLOCKS 512
#define VK_BLOCK_BYTES ((uint64_t)256 << 20)
#define VK_STAGING_BYTES ((uint64_t)32 << 20)
#define VK_POOL_SETS 1024
/* SDXL_VULKAN_PROFILE: a timestamp before the first command and after each dispatch or copy */
#define VK_PROF_QUERIES (VK_POOL_SETS + 8)
#define VK_PROF_SUBS 32
#define VK_PROF_KEYS (SDXL_VK_SH_COUNT * VK_PROF_SUBS + 1) /* the last: copies */

typedef struct vk_prof_acc {
    double ns, flops;
    uint64_t n;
} vk_prof_acc;

typedef struct vk_range {
    uint64_t off, size;
} vk_range;

typedef struct vk_block {
    VkDeviceMemory mem;
    VkBuffer buf;
    uint64_t size;
    vk_range *free; /* sorted by offset, coalesced */
    int nfree, capfree;
} vk_block;

struct sdxl_vk {
    vk_fns f;
    VkPhysicalDevice pd;
    VkDevice dev;
    VkQueue queue;
    uint32_t qfam;
    sdxl_vk_devinfo info;
    VkPhysicalDeviceMemoryProperties memprops;
    uint64_t align;
    vk_block blocks[VK_MAX_BLOCKS];
    int nblocks;
    uint64_t held, peak;
    /* staging */
    VkBuffer stage_buf;
    VkDeviceMemory stage_mem;
    void *stage_map;
    /* recording */
    VkCommandPool cpool;
    VkCommandBuffer cmd;
    VkFence fence;
    int recording;
    uint64_t n_dispatch;
    uint64_t n_alloc; /* sub-allocations made */
    /* pipelines */
    VkDescriptorSetLayout dsl;
    VkPipelineLayout playout;
    VkPipelineCache pcache;
    VkDescriptorPool dpool;
    int dpool_used;
    VkPipeline pipe[SDXL_VK_SH_COUNT];
    int n_pipes;
    sdxl_vk_buf dummy;
    sdxl_vk_buf scratch; /* sdxl_vk_scratch: grows, never shrinks */
    /* profile (SDXL_VULKAN_PROFILE=FILE): GPU time per shader and sub-op, appended to FILE at free */
    char prof_path[512];
    VkQueryPool qpool;
    double ts_ns; /* nanoseconds per timestamp tick */
    uint32_t nts;
    uint16_t ts_key[VK_PROF_QUERIES];
    double ts_flops[VK_PROF_QUERIES];
    vk_prof_acc prof[VK_PROF_KEYS];
    uint64_t prof_submits, prof_dispatch0;
};

static const char *vk_res(VkResult r) {
    switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default: return "VkResult error";
    }
}

static int vk_fail(sdxl_err *e, VkResult r, const char *what) {
    int st = (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY) ? SDXL_ERR_NOMEM
                                                                                      : SDXL_ERR_INTERNAL;
    return sdxl_seterr(e, st, "vulkan: %s: %s (%d)", what, vk_res(r), (int)r);
}

static void fns_close(vk_fns *f) {
    if (f->inst && f->vkDestroyInstance) f->vkDestroyInstance(f->inst, NULL);
    if (f->lib) dlclose(f->lib);
    memset(f, 0, sizeof *f);
}

/* dlopen the loader and make an instance (Vulkan 1.1: properties2/features2 are core there). */
static int fns_open(vk_fns *f, sdxl_err *e) {
    memset(f, 0, sizeof *f);
    f->lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!f->lib)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: cannot load libvulkan.so.1 (install a Vulkan loader, "
                                                    "e.g. Debian libvulkan1, and a driver): %s", dlerror());
    *(void **)&f->vkGetInstanceProcAddr = dlsym(f->lib, "vkGetInstanceProcAddr");
    if (!f->vkGetInstanceProcAddr) {
        fns_close(f);
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: libvulkan.so.1 has no vkGetInstanceProcAddr");
    }
    f->vkCreateInstance = (PFN_vkCreateInstance)f->vkGetInstanceProcAddr(NULL, "vkCreateInstance");
    f->vkEnumerateInstanceVersion =
        (PFN_vkEnumerateInstanceVersion)f->vkGetInstanceProcAddr(NULL, "vkEnumerateInstanceVersion");
    uint32_t ver = VK_API_VERSION_1_0;
    if (f->vkEnumerateInstanceVersion) f->vkEnumerateInstanceVersion(&ver);
    if (!f->vkCreateInstance || ver < VK_API_VERSION_1_1) {
        fns_close(f);
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: the loader does not offer Vulkan 1.1");
    }
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .pApplicationName = "sdxl",
                             .pEngineName = "sdxl",
                             .apiVersion = VK_API_VERSION_1_1};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkResult r = f->vkCreateInstance(&ci, NULL, &f->inst);
    if (r != VK_SUCCESS) {
        fns_close(f);
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: vkCreateInstance: %s", vk_res(r));
    }
#define X(fn)                                                                \
    if (!(f->fn = (PFN_##fn)f->vkGetInstanceProcAddr(f->inst, #fn))) {       \
        fns_close(f);                                                        \
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: no entry point " #fn); \
    }
    VK_INSTANCE_FNS(X)
#undef X
    return SDXL_OK;
}

static int has_ext(const VkExtensionProperties *x, uint32_t n, const char *name) {
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(x[i].extensionName, name)) return 1;
    return 0;
}

static int dev_exts(vk_fns *f, VkPhysicalDevice pd, VkExtensionProperties **out, uint32_t *n) {
    *out = NULL;
    *n = 0;
    if (f->vkEnumerateDeviceExtensionProperties(pd, NULL, n, NULL) != VK_SUCCESS) return -1;
    *out = calloc(*n ? *n : 1, sizeof **out);
    if (!*out) return -1;
    if (f->vkEnumerateDeviceExtensionProperties(pd, NULL, n, *out) != VK_SUCCESS) return -1;
    return 0;
}

int sdxl_vk_mma_pick(const sdxl_vk_mma_shape *p, int n, uint32_t subgroup_size) {
    if (subgroup_size != 32) return -1;
    for (int i = 0; i < n; i++)
        if (p[i].m == 16 && p[i].n == 16 && p[i].k == 16 && p[i].a == SDXL_VK_MMA_F16 && p[i].b == SDXL_VK_MMA_F16 &&
            p[i].c == SDXL_VK_MMA_F32 && p[i].d == SDXL_VK_MMA_F32 && p[i].subgroup)
            return i;
    return -1;
}

static int mma_type(VkComponentTypeNV t) {
    return t == VK_COMPONENT_TYPE_FLOAT16_NV ? SDXL_VK_MMA_F16 : t == VK_COMPONENT_TYPE_FLOAT32_NV ? SDXL_VK_MMA_F32
                                                                                                 : SDXL_VK_MMA_OTHER;
}

static const char *mma_tname(VkComponentTypeNV t) {
    switch (t) {
    case VK_COMPONENT_TYPE_FLOAT16_NV: return "f16";
    case VK_COMPONENT_TYPE_FLOAT32_NV: return "f32";
    case VK_COMPONENT_TYPE_SINT8_NV: return "s8";
    case VK_COMPONENT_TYPE_UINT8_NV: return "u8";
    case VK_COMPONENT_TYPE_SINT32_NV: return "s32";
    case VK_COMPONENT_TYPE_UINT32_NV: return "u32";
    default: return "?";
    }
}

/* The device's VK_NV_cooperative_matrix shapes hold the one gemm_mma.comp uses; the list is
 * written to d->mma_shapes for `sdxl devices`. */
static int mma_shape_listed(vk_fns *f, VkPhysicalDevice pd, uint32_t subgroup_size, sdxl_vk_devinfo *d) {
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV get = (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)
        f->vkGetInstanceProcAddr(f->inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
    uint32_t n = 0;
    if (!get || get(pd, &n, NULL) != VK_SUCCESS || !n || n > 1024) return 0;
    VkCooperativeMatrixPropertiesNV *p = calloc(n, sizeof *p);
    sdxl_vk_mma_shape *s = calloc(n, sizeof *s);
    int ok = 0;
    if (p && s) {
        for (uint32_t i = 0; i < n; i++) p[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV;
        VkResult r = get(pd, &n, p);
        if (r == VK_SUCCESS || r == VK_INCOMPLETE) {
            size_t used = 0;
            for (uint32_t i = 0; i < n && used + 48 < sizeof d->mma_shapes; i++)
                used += (size_t)snprintf(d->mma_shapes + used, sizeof d->mma_shapes - used, "%s%ux%ux%u %s,%s->%s,%s%s",
                                         i ? "; " : "", p[i].MSize, p[i].NSize, p[i].KSize, mma_tname(p[i].AType),
                                         mma_tname(p[i].BType), mma_tname(p[i].CType), mma_tname(p[i].DType),
                                         p[i].scope == VK_SCOPE_SUBGROUP_NV ? "" : " (not subgroup)");
            for (uint32_t i = 0; i < n; i++)
                s[i] = (sdxl_vk_mma_shape){p[i].MSize,          p[i].NSize,          p[i].KSize,
                                           mma_type(p[i].AType), mma_type(p[i].BType), mma_type(p[i].CType),
                                           mma_type(p[i].DType), p[i].scope == VK_SCOPE_SUBGROUP_NV};
            ok = sdxl_vk_mma_pick(s, (int)n, subgroup_size) >= 0;
        }
    }
    free(p);
    free(s);
    return ok;
}

static void describe(vk_fns *f, VkPhysicalDevice pd, sdxl_vk_devinfo *d) {
    memset(d, 0, sizeof *d);
    VkExtensionProperties *x = NULL;
    uint32_t nx = 0;
    dev_exts(f, pd, &x, &nx);
    d->has_budget = has_ext(x, nx, "VK_EXT_memory_budget");
    d->bf16 = has_ext(x, nx, "VK_KHR_shader_bfloat16");
    d->coopmat = has_ext(x, nx, "VK_KHR_cooperative_matrix") || has_ext(x, nx, "VK_NV_cooperative_matrix");
    /* gemm_mma.comp's SPIR-V needs these three extensions (Vulkan 1.1 instance) */
    int mma_exts = has_ext(x, nx, "VK_NV_cooperative_matrix") && has_ext(x, nx, "VK_KHR_vulkan_memory_model") &&
                   has_ext(x, nx, "VK_KHR_shader_float16_int8");
    free(x);

    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &sg};
    f->vkGetPhysicalDeviceProperties2(pd, &p2);
    const VkPhysicalDeviceProperties *p = &p2.properties;
    snprintf(d->name, sizeof d->name, "%s", p->deviceName);
    switch (p->deviceType) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: d->type = SDXL_VK_DISCRETE; break;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: d->type = SDXL_VK_INTEGRATED; break;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: d->type = SDXL_VK_VIRTUAL; break;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: d->type = SDXL_VK_CPU; break;
    default: d->type = SDXL_VK_OTHER;
    }
    d->vendor = p->vendorID;
    d->device_id = p->deviceID;
    d->api_version = p->apiVersion;
    d->driver_version = p->driverVersion;
    d->subgroup_size = sg.subgroupSize;
    d->max_shared = p->limits.maxComputeSharedMemorySize;
    d->max_wg_invocations = p->limits.maxComputeWorkGroupInvocations;
    d->max_storage_range = p->limits.maxStorageBufferRange;

    VkPhysicalDeviceCooperativeMatrixFeaturesNV cm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV};
    VkPhysicalDeviceVulkanMemoryModelFeaturesKHR mm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_MEMORY_MODEL_FEATURES_KHR, .pNext = &cm};
    VkPhysicalDeviceShaderFloat16Int8Features f16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES, .pNext = mma_exts ? &mm : NULL};
    VkPhysicalDevice16BitStorageFeatures s16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
                                                .pNext = &f16};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &s16};
    f->vkGetPhysicalDeviceFeatures2(pd, &f2);
    d->fp16 = !!f16.shaderFloat16;
    d->storage16 = !!s16.storageBuffer16BitAccess;
    const char *env = getenv("SDXL_VULKAN_MMA"); /* "0": the plain GEMM, to compare the two */
    d->mma = mma_exts && d->fp16 && cm.cooperativeMatrix && mm.vulkanMemoryModel &&
             mma_shape_listed(f, pd, d->subgroup_size, d) && !(env && !strcmp(env, "0"));

    VkPhysicalDeviceMemoryBudgetPropertiesEXT bud = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
    VkPhysicalDeviceMemoryProperties2 m2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2,
                                            .pNext = d->has_budget ? &bud : NULL};
    f->vkGetPhysicalDeviceMemoryProperties2(pd, &m2);
    for (uint32_t h = 0; h < m2.memoryProperties.memoryHeapCount; h++) {
        if (!(m2.memoryProperties.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)) continue;
        d->local_bytes += m2.memoryProperties.memoryHeaps[h].size;
        if (d->has_budget) {
            d->budget_bytes += bud.heapBudget[h];
            d->usage_bytes += bud.heapUsage[h];
        }
    }
    if (!d->has_budget) d->budget_bytes = d->local_bytes;
}

int sdxl_vk_list(sdxl_vk_devinfo **out, int *n, sdxl_err *e) {
    *out = NULL;
    *n = 0;
    vk_fns f;
    int st = fns_open(&f, e);
    if (st) return st;
    uint32_t np = 0;
    VkResult r = f.vkEnumeratePhysicalDevices(f.inst, &np, NULL);
    VkPhysicalDevice *pds = calloc(np ? np : 1, sizeof *pds);
    sdxl_vk_devinfo *d = calloc(np ? np : 1, sizeof *d);
    if (!pds || !d) {
        free(pds), free(d), fns_close(&f);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan: out of memory listing devices");
    }
    if (r == VK_SUCCESS && np) r = f.vkEnumeratePhysicalDevices(f.inst, &np, pds);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        free(pds), free(d), fns_close(&f);
        return vk_fail(e, r, "vkEnumeratePhysicalDevices");
    }
    for (uint32_t i = 0; i < np; i++) describe(&f, pds[i], &d[i]);
    free(pds);
    fns_close(&f);
    *out = d;
    *n = (int)np;
    return SDXL_OK;
}

int sdxl_vk_pick(const sdxl_vk_devinfo *d, int n, int index) {
    if (index >= 0) return index < n ? index : -1;
    static const int order[] = {SDXL_VK_DISCRETE, SDXL_VK_INTEGRATED, SDXL_VK_VIRTUAL, SDXL_VK_CPU, SDXL_VK_OTHER};
    for (size_t k = 0; k < sizeof order / sizeof *order; k++)
        for (int i = 0; i < n; i++)
            if (d[i].type == order[k]) return i;
    return -1;
}

int sdxl_vk_parse_device(const char *s, int *index, sdxl_err *e) {
    if (!strcmp(s, "vulkan") || !strcmp(s, "auto")) {
        *index = -1;
        return SDXL_OK;
    }
    if (!strncmp(s, "vulkan:", 7) && s[7]) {
        char *end;
        long v = strtol(s + 7, &end, 10);
        if (!*end && v >= 0 && v < 1024) {
            *index = (int)v;
            return SDXL_OK;
        }
    }
    return sdxl_seterr(e, SDXL_ERR_ARG, "device: expected cpu, auto, vulkan or vulkan:N, got \"%s\"", s);
}

const sdxl_vk_devinfo *sdxl_vk_info(const sdxl_vk *v) { return &v->info; }
uint64_t sdxl_vk_bytes_held(const sdxl_vk *v) { return v->held; }
uint64_t sdxl_vk_bytes_peak(const sdxl_vk *v) { return v->peak; }
uint64_t sdxl_vk_align(const sdxl_vk *v) { return v->align; }
uint64_t sdxl_vk_n_dispatches(const sdxl_vk *v) { return v->n_dispatch; }
uint64_t sdxl_vk_n_allocs(const sdxl_vk *v) { return v->n_alloc; }
int sdxl_vk_n_pipelines(const sdxl_vk *v) { return v->n_pipes; }

int sdxl_vk_budget(sdxl_vk *v, uint64_t *budget, uint64_t *usage) {
    sdxl_vk_devinfo d;
    describe(&v->f, v->pd, &d);
    v->info.budget_bytes = d.budget_bytes;
    v->info.usage_bytes = d.usage_bytes;
    if (budget) *budget = d.budget_bytes;
    if (usage) *usage = d.usage_bytes;
    return SDXL_OK;
}

static int find_type(const sdxl_vk *v, uint32_t bits, VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid) {
    for (uint32_t i = 0; i < v->memprops.memoryTypeCount; i++) {
        VkMemoryPropertyFlags fl = v->memprops.memoryTypes[i].propertyFlags;
        if ((bits & (1u << i)) && (fl & want) == want && !(fl & avoid)) return (int)i;
    }
    return -1;
}

static int make_buffer(sdxl_vk *v, uint64_t bytes, VkBufferUsageFlags usage, int host, VkBuffer *buf,
                       VkDeviceMemory *mem, sdxl_err *e) {
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                             .size = bytes,
                             .usage = usage,
                             .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VkResult r = v->f.vkCreateBuffer(v->dev, &bi, NULL, buf);
    if (r != VK_SUCCESS) return vk_fail(e, r, "vkCreateBuffer");
    VkMemoryRequirements mr;
    v->f.vkGetBufferMemoryRequirements(v->dev, *buf, &mr);
    int t = host ? find_type(v, mr.memoryTypeBits,
                             VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT, 0)
                 : find_type(v, mr.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
    if (t < 0 && !host) t = find_type(v, mr.memoryTypeBits, 0, 0);
    if (t < 0) {
        v->f.vkDestroyBuffer(v->dev, *buf, NULL);
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: no %s memory type for a buffer",
                           host ? "host-visible" : "device");
    }
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                               .allocationSize = mr.size,
                               .memoryTypeIndex = (uint32_t)t};
    r = v->f.vkAllocateMemory(v->dev, &ai, NULL, mem);
    if (r == VK_SUCCESS) r = v->f.vkBindBufferMemory(v->dev, *buf, *mem, 0);
    if (r != VK_SUCCESS) {
        v->f.vkDestroyBuffer(v->dev, *buf, NULL);
        if (*mem) v->f.vkFreeMemory(v->dev, *mem, NULL);
        *mem = VK_NULL_HANDLE;
        return vk_fail(e, r, "vkAllocateMemory");
    }
    return SDXL_OK;
}

/* ---- sub-allocator: first fit in sorted free lists over blocks of VK_BLOCK_BYTES or more ---- */

static int range_push(vk_block *b, int at, vk_range r) {
    if (b->nfree == b->capfree) {
        int cap = b->capfree ? 2 * b->capfree : 16;
        vk_range *p = realloc(b->free, (size_t)cap * sizeof *p);
        if (!p) return -1;
        b->free = p;
        b->capfree = cap;
    }
    memmove(b->free + at + 1, b->free + at, (size_t)(b->nfree - at) * sizeof *b->free);
    b->free[at] = r;
    b->nfree++;
    return 0;
}

static void range_drop(vk_block *b, int at) {
    memmove(b->free + at, b->free + at + 1, (size_t)(b->nfree - at - 1) * sizeof *b->free);
    b->nfree--;
}

static int block_take(vk_block *b, uint64_t bytes, uint64_t *off) {
    for (int i = 0; i < b->nfree; i++) {
        if (b->free[i].size < bytes) continue;
        *off = b->free[i].off;
        b->free[i].off += bytes;
        b->free[i].size -= bytes;
        if (!b->free[i].size) range_drop(b, i);
        return 0;
    }
    return -1;
}

int sdxl_vk_alloc(sdxl_vk *v, uint64_t bytes, sdxl_vk_buf *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    out->block = -1;
    if (!bytes) bytes = 1;
    if (bytes > UINT64_MAX / 2) return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan: allocation of %llu bytes",
                                                   (unsigned long long)bytes);
    uint64_t need = (bytes + v->align - 1) / v->align * v->align;
    int slot = -1;
    v->n_alloc++;
    for (int i = 0; i < v->nblocks; i++) {
        vk_block *b = &v->blocks[i];
        uint64_t off;
        if (b->mem && !block_take(b, need, &off)) {
            *out = (sdxl_vk_buf){.buffer = (void *)b->buf, .off = off, .size = need, .block = i};
            goto done;
        }
        if (!b->mem && slot < 0) slot = i;
    }
    if (slot < 0) {
        if (v->nblocks == VK_MAX_BLOCKS)
            return sdxl_seterr(e, SDXL_ERR_LIMIT, "vulkan: more than %d device blocks", VK_MAX_BLOCKS);
        slot = v->nblocks++;
    }
    vk_block *b = &v->blocks[slot];
    uint64_t bsz = need > VK_BLOCK_BYTES ? need : VK_BLOCK_BYTES;
    if (v->info.local_bytes && bsz > v->info.local_bytes / 4 && need <= v->info.local_bytes / 4)
        bsz = v->info.local_bytes / 4 / v->align * v->align;
    int st = make_buffer(v, bsz,
                         VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                             VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                         0, &b->buf, &b->mem, e);
    if (st) {
        if (slot == v->nblocks - 1) v->nblocks--;
        return sdxl_err_prefix(e, "device allocation of %llu bytes", (unsigned long long)bytes);
    }
    b->size = bsz;
    b->nfree = 0;
    if (range_push(b, 0, (vk_range){0, bsz})) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan: out of memory");
    v->held += bsz;
    if (v->held > v->peak) v->peak = v->held;
    uint64_t off;
    block_take(b, need, &off);
    *out = (sdxl_vk_buf){.buffer = (void *)b->buf, .off = off, .size = need, .block = slot};
done:
    return SDXL_OK;
}

void sdxl_vk_release(sdxl_vk *v, sdxl_vk_buf *x) {
    if (!v || !x || x->block < 0 || x->block >= v->nblocks || !x->buffer) return;
    vk_block *b = &v->blocks[x->block];
    int at = 0;
    while (at < b->nfree && b->free[at].off < x->off) at++;
    if (range_push(b, at, (vk_range){x->off, x->size})) return; /* leaks the range, never corrupts */
    if (at + 1 < b->nfree && b->free[at].off + b->free[at].size == b->free[at + 1].off) {
        b->free[at].size += b->free[at + 1].size;
        range_drop(b, at + 1);
    }
    if (at > 0 && b->free[at - 1].off + b->free[at - 1].size == b->free[at].off) {
        b->free[at - 1].size += b->free[at].size;
        range_drop(b, at);
    }
    if (b->nfree == 1 && b->free[0].size == b->size) { /* whole block free: give it back */
        if (v->recording) {                              /* once recorded work that may use it ran */
            sdxl_err e;
            sdxl_vk_flush(v, &e);
        }
        v->f.vkDestroyBuffer(v->dev, b->buf, NULL);
        v->f.vkFreeMemory(v->dev, b->mem, NULL);
        v->held -= b->size;
        free(b->free);
        memset(b, 0, sizeof *b);
    }
    memset(x, 0, sizeof *x);
    x->block = -1;
}

int sdxl_vk_scratch(sdxl_vk *v, uint64_t bytes, sdxl_vk_buf *out, sdxl_err *e) {
    if (!v->scratch.buffer || v->scratch.size < bytes) {
        sdxl_vk_release(v, &v->scratch); /* recorded work still reading it runs first (release) */
        int st = sdxl_vk_alloc(v, bytes, &v->scratch, e);
        if (st) return st;
    }
    *out = v->scratch;
    out->size = bytes;
    return SDXL_OK;
}

/* ---- recording ---------------------------------------------------------------------------- */

static int rec_begin(sdxl_vk *v, sdxl_err *e) {
    if (v->recording) return SDXL_OK;
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    VkResult r = v->f.vkBeginCommandBuffer(v->cmd, &bi);
    if (r != VK_SUCCESS) return vk_fail(e, r, "vkBeginCommandBuffer");
    v->recording = 1;
    if (v->qpool) {
        v->f.vkCmdResetQueryPool(v->cmd, v->qpool, 0, VK_PROF_QUERIES);
        v->f.vkCmdWriteTimestamp(v->cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, v->qpool, 0);
        v->nts = 1;
    }
    return SDXL_OK;
}

/* Marks the end of the command just recorded (serialised by the barrier after it). */
static void prof_mark(sdxl_vk *v, int key, double flops) {
    if (!v->qpool || v->nts >= VK_PROF_QUERIES) return;
    v->f.vkCmdWriteTimestamp(v->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, v->qpool, v->nts);
    v->ts_key[v->nts] = (uint16_t)key;
    v->ts_flops[v->nts] = flops;
    v->nts++;
}

static void prof_collect(sdxl_vk *v) {
    if (!v->qpool || v->nts < 2) return;
    uint64_t t[VK_PROF_QUERIES];
    if (v->f.vkGetQueryPoolResults(v->dev, v->qpool, 0, v->nts, sizeof t, t, sizeof *t,
                                   VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT) != VK_SUCCESS)
        return;
    for (uint32_t i = 1; i < v->nts; i++) {
        vk_prof_acc *a = &v->prof[v->ts_key[i]];
        a->ns += (double)(t[i] - t[i - 1]) * v->ts_ns;
        a->flops += v->ts_flops[i];
        a->n++;
    }
    v->prof_submits++;
    v->nts = 0;
}

static int is_gemm(int sh) { return sh == SDXL_VK_SH_GEMM || sh == SDXL_VK_SH_GEMM_MMA; }
static int is_attn(int sh) {
    return sh == SDXL_VK_SH_ATTN || sh == SDXL_VK_SH_ATTN_T64 || sh == SDXL_VK_SH_ATTN_T32 || sh == SDXL_VK_SH_ATTN_MMA;
}

/* Key and FLOPs of a dispatch, read from its push constants (see vk_ops.c for the layouts). */
static int prof_key(sdxl_vk_shader sh, const uint32_t *u, uint32_t gz, double *flops) {
    uint32_t sub = 0;
    *flops = 0;
    if (is_gemm(sh)) {
        sub = u[5] ? (u[11] * u[12] > 1 ? 2 : 1) : 0;
        *flops = 2.0 * u[0] * u[1] * u[2];
    } else if (is_attn(sh)) {
        *flops = 4.0 * u[0] * u[1] * u[2] * u[3] * gz;
    } else {
        sub = u[0];
    }
    return (int)sh * VK_PROF_SUBS + (int)(sub % VK_PROF_SUBS);
}

void sdxl_vk_profile_reset(sdxl_vk *v) {
    if (!v->qpool) return;
    sdxl_err e = {0};
    sdxl_vk_flush(v, &e);
    memset(v->prof, 0, sizeof v->prof);
    v->prof_submits = 0;
    v->prof_dispatch0 = v->n_dispatch;
}

static void prof_write(sdxl_vk *v) {
    static const char *const sh[SDXL_VK_SH_COUNT] = {"gemm",     "attention", "norm",          "eltwise",
                                                             "convert",  "gemm_mma",  "attention t64", "attention t32",
                                                             "attention mma"};
    static const char *const gemm[3] = {"linear", "conv 1x1", "conv kxk"};
    FILE *o = strcmp(v->prof_path, "-") ? fopen(v->prof_path, "a") : stderr;
    if (!o) return;
    double total = 0;
    for (int k = 0; k < VK_PROF_KEYS; k++) total += v->prof[k].ns;
    fprintf(o, "# vulkan profile, %s: %.3f ms of GPU time in %llu submissions, %llu dispatches\n", v->info.name,
            total * 1e-6, (unsigned long long)v->prof_submits, (unsigned long long)(v->n_dispatch - v->prof_dispatch0));
    for (int k = 0; k < VK_PROF_KEYS; k++) {
        const vk_prof_acc *a = &v->prof[k];
        if (!a->n) continue;
        char name[64];
        int s = k / VK_PROF_SUBS, sub = k % VK_PROF_SUBS;
        if (k == VK_PROF_KEYS - 1) snprintf(name, sizeof name, "copy");
        else if (is_gemm(s)) snprintf(name, sizeof name, "%s %s", sh[s], gemm[sub % 3]);
        else if (is_attn(s)) snprintf(name, sizeof name, "%s", sh[s]);
        else snprintf(name, sizeof name, "%s %d", sh[s], sub);
        fprintf(o, "%-22s %8llu calls %12.3f ms %6.2f%%", name, (unsigned long long)a->n, a->ns * 1e-6,
                total > 0 ? 100.0 * a->ns / total : 0.0);
        if (a->flops > 0) fprintf(o, " %10.1f GFLOP/s", a->flops / a->ns);
        fputc('\n', o);
    }
    if (o != stderr) fclose(o);
}

int sdxl_vk_flush(sdxl_vk *v, sdxl_err *e) {
    if (!v->recording) return SDXL_OK;
    v->recording = 0;
    VkResult r = v->f.vkEndCommandBuffer(v->cmd);
    if (r != VK_SUCCESS) return vk_fail(e, r, "vkEndCommandBuffer");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &v->cmd};
    r = v->f.vkResetFences(v->dev, 1, &v->fence);
    if (r == VK_SUCCESS) r = v->f.vkQueueSubmit(v->queue, 1, &si, v->fence);
    if (r == VK_SUCCESS) r = v->f.vkWaitForFences(v->dev, 1, &v->fence, VK_TRUE, UINT64_MAX);
    if (r != VK_SUCCESS) return vk_fail(e, r, "vkQueueSubmit");
    prof_collect(v);
    v->f.vkResetDescriptorPool(v->dev, v->dpool, 0);
    v->dpool_used = 0;
    return SDXL_OK;
}

static void barrier(sdxl_vk *v, VkPipelineStageFlags src, VkAccessFlags sa, VkPipelineStageFlags dst,
                    VkAccessFlags da) {
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER, .srcAccessMask = sa, .dstAccessMask = da};
    v->f.vkCmdPipelineBarrier(v->cmd, src, dst, 0, 1, &mb, 0, NULL, 0, NULL);
}

/* Copies through the staging buffer in chunks; dir 0 uploads, 1 downloads. */
static int staged(sdxl_vk *v, const sdxl_vk_buf *b, uint64_t off, void *host, uint64_t n, int dir, sdxl_err *e) {
    if (!b || !b->buffer || off > b->size || n > b->size - off)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vulkan: copy of %llu bytes at %llu outside a buffer of %llu",
                           (unsigned long long)n, (unsigned long long)off,
                           (unsigned long long)(b ? b->size : 0));
    int st;
    for (uint64_t done = 0; done < n;) {
        uint64_t k = n - done < VK_STAGING_BYTES ? n - done : VK_STAGING_BYTES;
        if (dir == 0) memcpy(v->stage_map, (char *)host + done, k);
        if ((st = rec_begin(v, e))) return st;
        barrier(v, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT,
                VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT);
        VkBufferCopy c = {.srcOffset = dir == 0 ? 0 : b->off + off + done,
                          .dstOffset = dir == 0 ? b->off + off + done : 0,
                          .size = k};
        VkBuffer dev = (VkBuffer)b->buffer;
        v->f.vkCmdCopyBuffer(v->cmd, dir == 0 ? v->stage_buf : dev, dir == 0 ? dev : v->stage_buf, 1, &c);
        prof_mark(v, VK_PROF_KEYS - 1, 0);
        barrier(v, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_HOST_BIT,
                VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_HOST_READ_BIT);
        if ((st = sdxl_vk_flush(v, e))) return st;
        if (dir == 1) memcpy((char *)host + done, v->stage_map, k);
        done += k;
    }
    return SDXL_OK;
}

int sdxl_vk_upload(sdxl_vk *v, const sdxl_vk_buf *b, uint64_t off, const void *src, uint64_t n, sdxl_err *e) {
    return staged(v, b, off, (void *)src, n, 0, e);
}

int sdxl_vk_download(sdxl_vk *v, const sdxl_vk_buf *b, uint64_t off, void *dst, uint64_t n, sdxl_err *e) {
    return staged(v, b, off, dst, n, 1, e);
}

static int pipeline(sdxl_vk *v, sdxl_vk_shader sh, sdxl_err *e) {
    if (v->pipe[sh]) return SDXL_OK;
    size_t words = 0;
    const uint32_t *code = sdxl_vk_spirv(sh, &words);
    VkShaderModuleCreateInfo mi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                   .codeSize = words * 4,
                                   .pCode = code};
    VkShaderModule mod;
    VkResult r = v->f.vkCreateShaderModule(v->dev, &mi, NULL, &mod);
    if (r != VK_SUCCESS) return vk_fail(e, r, "vkCreateShaderModule");
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                  .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = mod,
                  .pName = "main"},
        .layout = v->playout};
    r = v->f.vkCreateComputePipelines(v->dev, v->pcache, 1, &ci, NULL, &v->pipe[sh]);
    v->f.vkDestroyShaderModule(v->dev, mod, NULL);
    if (r != VK_SUCCESS) {
        v->pipe[sh] = VK_NULL_HANDLE;
        return vk_fail(e, r, "vkCreateComputePipelines");
    }
    v->n_pipes++;
    return SDXL_OK;
}

int sdxl_vk_dispatch(sdxl_vk *v, sdxl_vk_shader sh, const sdxl_vk_buf *const bufs[SDXL_VK_MAX_BINDINGS],
                     const void *push, size_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz, sdxl_err *e) {
    if ((unsigned)sh >= SDXL_VK_SH_COUNT || push_bytes > SDXL_VK_PUSH_BYTES)
        return sdxl_seterr(e, SDXL_ERR_INTERNAL, "vulkan: bad dispatch");
    if (!gx || !gy || !gz) return SDXL_OK;
    int st;
    if ((st = pipeline(v, sh, e))) return st;
    if (v->dpool_used == VK_POOL_SETS && (st = sdxl_vk_flush(v, e))) return st;
    if ((st = rec_begin(v, e))) return st;
    VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                      .descriptorPool = v->dpool,
                                      .descriptorSetCount = 1,
                                      .pSetLayouts = &v->dsl};
    VkDescriptorSet set;
    VkResult r = v->f.vkAllocateDescriptorSets(v->dev, &ai, &set);
    if (r != VK_SUCCESS) return vk_fail(e, r, "vkAllocateDescriptorSets");
    v->dpool_used++;
    VkDescriptorBufferInfo bi[SDXL_VK_MAX_BINDINGS];
    VkWriteDescriptorSet w[SDXL_VK_MAX_BINDINGS];
    for (int i = 0; i < SDXL_VK_MAX_BINDINGS; i++) {
        const sdxl_vk_buf *b = bufs[i] && bufs[i]->buffer ? bufs[i] : &v->dummy;
        uint64_t range = b->size < v->info.max_storage_range ? b->size : v->info.max_storage_range;
        bi[i] = (VkDescriptorBufferInfo){.buffer = (VkBuffer)b->buffer, .offset = b->off, .range = range};
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                      .dstSet = set,
                                      .dstBinding = (uint32_t)i,
                                      .descriptorCount = 1,
                                      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                      .pBufferInfo = &bi[i]};
    }
    v->f.vkUpdateDescriptorSets(v->dev, SDXL_VK_MAX_BINDINGS, w, 0, NULL);
    v->f.vkCmdBindPipeline(v->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, v->pipe[sh]);
    v->f.vkCmdBindDescriptorSets(v->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, v->playout, 0, 1, &set, 0, NULL);
    uint8_t pc[SDXL_VK_PUSH_BYTES] = {0};
    if (push_bytes) memcpy(pc, push, push_bytes);
    v->f.vkCmdPushConstants(v->cmd, v->playout, VK_SHADER_STAGE_COMPUTE_BIT, 0, SDXL_VK_PUSH_BYTES, pc);
    v->f.vkCmdDispatch(v->cmd, gx, gy, gz);
    barrier(v, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
            VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
    if (v->qpool) {
        double fl;
        int key = prof_key(sh, (const uint32_t *)pc, gz, &fl);
        prof_mark(v, key, fl);
    }
    v->n_dispatch++;
    return SDXL_OK;
}

/* ---- context ------------------------------------------------------------------------------ */

int sdxl_vk_new(int index, sdxl_vk **out, sdxl_err *e) {
    *out = NULL;
    sdxl_vk *v = calloc(1, sizeof *v);
    if (!v) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan: out of memory");
    int st = fns_open(&v->f, e);
    if (st) {
        free(v);
        return st;
    }
    vk_fns *f = &v->f;
    uint32_t np = 0;
    VkPhysicalDevice *pds = NULL;
    sdxl_vk_devinfo *infos = NULL;
    VkResult r = f->vkEnumeratePhysicalDevices(f->inst, &np, NULL);
    if (r != VK_SUCCESS || !np) {
        st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: no Vulkan device found");
        goto fail;
    }
    pds = calloc(np, sizeof *pds);
    infos = calloc(np, sizeof *infos);
    if (!pds || !infos) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "vulkan: out of memory");
        goto fail;
    }
    r = f->vkEnumeratePhysicalDevices(f->inst, &np, pds);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        st = vk_fail(e, r, "vkEnumeratePhysicalDevices");
        goto fail;
    }
    for (uint32_t i = 0; i < np; i++) describe(f, pds[i], &infos[i]);
    int pick = sdxl_vk_pick(infos, (int)np, index);
    if (pick < 0) {
        st = sdxl_seterr(e, SDXL_ERR_ARG, "device: vulkan:%d does not exist (%u Vulkan device%s; see `sdxl devices`)",
                         index, np, np == 1 ? "" : "s");
        goto fail;
    }
    v->pd = pds[pick];
    v->info = infos[pick];
    free(pds), free(infos);
    pds = NULL, infos = NULL;

    uint32_t nq = 0;
    f->vkGetPhysicalDeviceQueueFamilyProperties(v->pd, &nq, NULL);
    VkQueueFamilyProperties qf[64];
    if (nq > 64) nq = 64;
    f->vkGetPhysicalDeviceQueueFamilyProperties(v->pd, &nq, qf);
    v->qfam = UINT32_MAX;
    for (uint32_t i = 0; i < nq && v->qfam == UINT32_MAX; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) v->qfam = i;
    if (v->qfam == UINT32_MAX) {
        st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: %s has no compute queue", v->info.name);
        goto fail;
    }
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                  .queueFamilyIndex = v->qfam,
                                  .queueCount = 1,
                                  .pQueuePriorities = &prio};
    const char *exts[4];
    uint32_t next = 0;
    if (v->info.has_budget) exts[next++] = "VK_EXT_memory_budget";
    /* the matrix-unit GEMM: its extensions and features, only where describe() found them all */
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV, .cooperativeMatrix = VK_TRUE};
    VkPhysicalDeviceVulkanMemoryModelFeaturesKHR mm = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_MEMORY_MODEL_FEATURES_KHR, .pNext = &cm,
        .vulkanMemoryModel = VK_TRUE};
    VkPhysicalDeviceShaderFloat16Int8Features f16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES, .pNext = &mm, .shaderFloat16 = VK_TRUE};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f16};
    if (v->info.mma) {
        exts[next++] = "VK_NV_cooperative_matrix";
        exts[next++] = "VK_KHR_vulkan_memory_model";
        exts[next++] = "VK_KHR_shader_float16_int8";
    }
    VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                             .pNext = v->info.mma ? &f2 : NULL,
                             .queueCreateInfoCount = 1,
                             .pQueueCreateInfos = &qi,
                             .enabledExtensionCount = next,
                             .ppEnabledExtensionNames = exts};
    r = f->vkCreateDevice(v->pd, &di, NULL, &v->dev);
    if (r != VK_SUCCESS) {
        st = vk_fail(e, r, "vkCreateDevice");
        goto fail;
    }
#define X(fn)                                                                  \
    if (!(f->fn = (PFN_##fn)f->vkGetDeviceProcAddr(v->dev, #fn))) {            \
        st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vulkan: no entry point " #fn); \
        goto fail;                                                             \
    }
    VK_DEVICE_FNS(X)
#undef X
    f->vkGetDeviceQueue(v->dev, v->qfam, 0, &v->queue);
    f->vkGetPhysicalDeviceMemoryProperties(v->pd, &v->memprops);
    VkPhysicalDeviceProperties pp;
    f->vkGetPhysicalDeviceProperties(v->pd, &pp);
    v->align = pp.limits.minStorageBufferOffsetAlignment > 256 ? pp.limits.minStorageBufferOffsetAlignment : 256;

    VkCommandPoolCreateInfo cpi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                   .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                   .queueFamilyIndex = v->qfam};
    if ((r = f->vkCreateCommandPool(v->dev, &cpi, NULL, &v->cpool)) != VK_SUCCESS) goto vkfail;
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                       .commandPool = v->cpool,
                                       .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                       .commandBufferCount = 1};
    if ((r = f->vkAllocateCommandBuffers(v->dev, &cai, &v->cmd)) != VK_SUCCESS) goto vkfail;
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if ((r = f->vkCreateFence(v->dev, &fi, NULL, &v->fence)) != VK_SUCCESS) goto vkfail;

    VkDescriptorSetLayoutBinding lb[SDXL_VK_MAX_BINDINGS];
    for (int i = 0; i < SDXL_VK_MAX_BINDINGS; i++)
        lb[i] = (VkDescriptorSetLayoutBinding){.binding = (uint32_t)i,
                                               .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                               .descriptorCount = 1,
                                               .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkDescriptorSetLayoutCreateInfo dli = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                           .bindingCount = SDXL_VK_MAX_BINDINGS,
                                           .pBindings = lb};
    if ((r = f->vkCreateDescriptorSetLayout(v->dev, &dli, NULL, &v->dsl)) != VK_SUCCESS) goto vkfail;
    VkPushConstantRange pr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .size = SDXL_VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo pli = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                      .setLayoutCount = 1,
                                      .pSetLayouts = &v->dsl,
                                      .pushConstantRangeCount = 1,
                                      .pPushConstantRanges = &pr};
    if ((r = f->vkCreatePipelineLayout(v->dev, &pli, NULL, &v->playout)) != VK_SUCCESS) goto vkfail;
    VkPipelineCacheCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
    if ((r = f->vkCreatePipelineCache(v->dev, &pci, NULL, &v->pcache)) != VK_SUCCESS) goto vkfail;
    VkDescriptorPoolSize ps = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                               .descriptorCount = VK_POOL_SETS * SDXL_VK_MAX_BINDINGS};
    VkDescriptorPoolCreateInfo dpi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                                      .maxSets = VK_POOL_SETS,
                                      .poolSizeCount = 1,
                                      .pPoolSizes = &ps};
    if ((r = f->vkCreateDescriptorPool(v->dev, &dpi, NULL, &v->dpool)) != VK_SUCCESS) goto vkfail;
    if ((st = make_buffer(v, VK_STAGING_BYTES, VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                          1, &v->stage_buf, &v->stage_mem, e)))
        goto fail;
    if ((r = f->vkMapMemory(v->dev, v->stage_mem, 0, VK_WHOLE_SIZE, 0, &v->stage_map)) != VK_SUCCESS) goto vkfail;
    if ((st = sdxl_vk_alloc(v, 256, &v->dummy, e))) goto fail;
    const char *prof = getenv("SDXL_VULKAN_PROFILE");
    if (prof && *prof && qf[v->qfam].timestampValidBits && pp.limits.timestampComputeAndGraphics) {
        snprintf(v->prof_path, sizeof v->prof_path, "%s", prof);
        v->ts_ns = pp.limits.timestampPeriod;
        VkQueryPoolCreateInfo qpi = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                     .queryType = VK_QUERY_TYPE_TIMESTAMP,
                                     .queryCount = VK_PROF_QUERIES};
        if ((r = f->vkCreateQueryPool(v->dev, &qpi, NULL, &v->qpool)) != VK_SUCCESS) goto vkfail;
    }
    *out = v;
    return SDXL_OK;
vkfail:
    st = vk_fail(e, r, "device set-up");
fail:
    free(pds);
    free(infos);
    sdxl_vk_free(v);
    return st;
}

void sdxl_vk_free(sdxl_vk *v) {
    if (!v) return;
    vk_fns *f = &v->f;
    if (v->dev) {
        if (v->recording) {
            f->vkEndCommandBuffer(v->cmd);
            v->recording = 0;
        }
        if (v->qpool) {
            prof_write(v);
            f->vkDestroyQueryPool(v->dev, v->qpool, NULL);
        }
        for (int i = 0; i < SDXL_VK_SH_COUNT; i++)
            if (v->pipe[i]) f->vkDestroyPipeline(v->dev, v->pipe[i], NULL);
        sdxl_vk_release(v, &v->scratch);
        for (int i = 0; i < v->nblocks; i++) {
            vk_block *b = &v->blocks[i];
            if (b->buf) f->vkDestroyBuffer(v->dev, b->buf, NULL);
            if (b->mem) f->vkFreeMemory(v->dev, b->mem, NULL);
            free(b->free);
        }
        if (v->stage_buf) f->vkDestroyBuffer(v->dev, v->stage_buf, NULL);
        if (v->stage_mem) f->vkFreeMemory(v->dev, v->stage_mem, NULL);
        if (v->dpool) f->vkDestroyDescriptorPool(v->dev, v->dpool, NULL);
        if (v->pcache) f->vkDestroyPipelineCache(v->dev, v->pcache, NULL);
        if (v->playout) f->vkDestroyPipelineLayout(v->dev, v->playout, NULL);
        if (v->dsl) f->vkDestroyDescriptorSetLayout(v->dev, v->dsl, NULL);
        if (v->fence) f->vkDestroyFence(v->dev, v->fence, NULL);
        if (v->cpool) f->vkDestroyCommandPool(v->dev, v->cpool, NULL);
        f->vkDestroyDevice(v->dev, NULL);
    }
    fns_close(f);
    free(v);
}
