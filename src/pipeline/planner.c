/* Batch planner v1: the largest sub-batch whose estimated peak (UNet measure pass, VAE formula,
 * latents) fits the memory available, capped by the user. Estimates grow with the batch, so the
 * search walks down from the cap and stops at the first fit. */
#include <stdio.h>

#include "pipeline/pipeline.h"

int sdxl_pl_plan_make(int n_images, int cap, uint64_t available, sdxl_pl_estimate_fn est, void *user,
                      sdxl_pl_plan *out, sdxl_err *e) {
    if (n_images < 1) return sdxl_seterr(e, SDXL_ERR_ARG, "images: need at least 1, got %d", n_images);
    if (cap <= 0 || cap > n_images) cap = n_images;
    out->n_images = n_images;
    out->available = available;
    out->memory_bound = 0;
    int b = cap;
    uint64_t bytes = 0;
    for (; b >= 1; b--) {
        int st = est(user, b, &bytes, e);
        if (st) return sdxl_err_prefix(e, "planner (sub-batch %d)", b);
        if (bytes <= available) break;
        out->memory_bound = 1;
    }
    if (b < 1) b = 1; /* even one image does not fit the estimate: try it anyway (bytes from b = 1) */
    /* equal sub-batches where the count allows: 5 images with room for 4 run as 3 + 2, not 4 + 1 */
    int n_sub = (n_images + b - 1) / b;
    int even = (n_images + n_sub - 1) / n_sub;
    if (even < b) {
        b = even;
        int st = est(user, b, &bytes, e);
        if (st) return sdxl_err_prefix(e, "planner (sub-batch %d)", b);
    }
    out->sub_batch = b;
    out->n_sub = n_sub;
    out->bytes = bytes;
    return SDXL_OK;
}

int sdxl_pl_unet_rows(int b, int cfg, int and_parts) {
    return and_parts > 0 ? (1 + and_parts) * b : cfg ? 2 * b : b;
}

void sdxl_pl_plan_describe(const sdxl_pl_plan *p, int cfg, char *buf, size_t cap) {
    snprintf(buf, cap, "%d image%s: %d sub-batch%s of %d (UNet batch %d%s), est %.2f GiB of %.2f GiB available%s",
             p->n_images, p->n_images == 1 ? "" : "s", p->n_sub, p->n_sub == 1 ? "" : "es", p->sub_batch,
             cfg ? 2 * p->sub_batch : p->sub_batch, cfg ? " with CFG" : "", (double)p->bytes / (1 << 30),
             (double)p->available / (1 << 30), p->memory_bound ? " (memory-bound)" : "");
}
