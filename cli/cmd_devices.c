/* `sdxl devices`: the compute devices `--device` can name: the CPU, then each Vulkan device
 * with its memory, budget and the features the shaders use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sdxl.h"
#include "tensor/vk/vk.h"

static const char *type_name(int t) {
    switch (t) {
    case SDXL_VK_DISCRETE: return "discrete GPU";
    case SDXL_VK_INTEGRATED: return "integrated GPU";
    case SDXL_VK_VIRTUAL: return "virtual GPU";
    case SDXL_VK_CPU: return "CPU (software)";
    default: return "other";
    }
}

int cmd_devices(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: sdxl devices\n"
                   "  lists the devices --device accepts: cpu, and vulkan:N for each Vulkan device (auto picks a\n"
                   "  discrete GPU first), with device memory, the VK_EXT_memory_budget budget and the features used.\n");
            return 0;
        }
        fprintf(stderr, "sdxl devices: unknown option '%s'\n", argv[i]);
        return 2;
    }
    printf("cpu: %s\n", sdxl_cpu_features());
    sdxl_err e = {0};
    sdxl_vk_devinfo *d = NULL;
    int n = 0;
    if (sdxl_vk_list(&d, &n, &e)) {
        printf("vulkan: unavailable (%s)\n", e.msg);
        return 0;
    }
    int pick = sdxl_vk_pick(d, n, -1);
    if (!n) printf("vulkan: no device\n");
    for (int i = 0; i < n; i++) {
        const sdxl_vk_devinfo *x = &d[i];
        printf("vulkan:%d%s: %s (%s, vendor 0x%04x device 0x%04x, Vulkan %u.%u.%u)\n", i, i == pick ? " [auto]" : "",
               x->name, type_name(x->type), x->vendor, x->device_id, x->api_version >> 22,
               (x->api_version >> 12) & 0x3ff, x->api_version & 0xfff);
        printf("  memory: %.2f GiB device-local; budget %.2f GiB%s, in use %.2f GiB\n",
               x->local_bytes / 1073741824.0, x->budget_bytes / 1073741824.0,
               x->has_budget ? " (VK_EXT_memory_budget)" : " (no budget extension: heap size)",
               x->usage_bytes / 1073741824.0);
        printf("  features: fp16 arithmetic %s, 16-bit storage %s, bf16 %s, cooperative matrix %s; subgroup %u, "
               "shared memory %u KiB, storage range %.0f MiB\n",
               x->fp16 ? "yes" : "no", x->storage16 ? "yes" : "no", x->bf16 ? "yes" : "no",
               x->mma ? "yes (GEMM on matrix units, f16)" : x->coopmat ? "yes (no usable f16 16x16x16 shape)" : "no",
               x->subgroup_size, x->max_shared / 1024,
               x->max_storage_range / 1048576.0);
        if (x->mma_shapes[0]) printf("  matrix shapes (VK_NV_cooperative_matrix): %s\n", x->mma_shapes);
    }
    free(d);
    return 0;
}
