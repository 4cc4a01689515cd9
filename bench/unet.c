/* bench-unet: one UNet forward at batch 2 (a CFG step) on a full-size checkpoint, per latent
 * size: seconds, GFLOP/s, % of this run's machine peak of the precision, time per op type,
 * load time, weight bytes and peak RSS.
 *
 *   bench-unet [--model PATH] [--threads N] [--prec bf16|f32] [--sizes 64,128] [--batch 2] [--runs 1]
 *
 * PATH defaults to bench/models/sdxl_base_random.safetensors (made by bench-make_checkpoint). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"
#include "base/threads.h"
#include "denoise/unet.h"
#include "peak.h"

static void fill(float *x, size_t n, float scale, unsigned *s) {
    for (size_t i = 0; i < n; i++) {
        *s = *s * 1664525u + 1013904223u;
        x[i] = scale * ((float)(*s >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
}

int main(int argc, char **argv) {
    const char *model = "bench/models/sdxl_base_random.safetensors", *sizes = "64,128";
    const char *device = NULL;
    double given_peak = 0;
    int threads = 2, runs = 1;
    int64_t batch = 2;
    sdxl_prec prec = SDXL_PREC_BF16;
    for (int i = 1; i < argc; i++) {
        int has = i + 1 < argc;
        if (!strcmp(argv[i], "--model") && has) model = argv[++i];
        else if (!strcmp(argv[i], "--threads") && has) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prec") && has) prec = !strcmp(argv[++i], "f32") ? SDXL_PREC_F32 : SDXL_PREC_BF16;
        else if (!strcmp(argv[i], "--sizes") && has) sizes = argv[++i];
        else if (!strcmp(argv[i], "--batch") && has) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && has) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device") && has) device = argv[++i];
        else if (!strcmp(argv[i], "--peak") && has) given_peak = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-unet [--model PATH] [--threads N] [--prec bf16|f32] [--sizes 64,128] "
                            "[--batch 2] [--runs 1] [--device cpu|vulkan[:N]] [--peak GFLOPS]\n"
                            "  --peak: the device's measured matmul peak (a GPU's is not measured here)\n");
            return 2;
        }
    }
    if (batch < 1 || runs < 1) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    sdxl_threads_set(threads);
    const char *pname = prec == SDXL_PREC_BF16 ? "bf16" : "f32";
    int on_device = device && strcmp(device, "cpu");
    double peak = given_peak > 0 ? given_peak : on_device ? 0 : bench_peak_gflops(prec, threads);
    if (given_peak > 0 || !on_device)
        printf("%s peak (%s%s): %.0f GFLOP/s\n", on_device ? "device" : "machine", pname,
               given_peak > 0 ? ", given" : "", peak);

    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_unet *u = NULL;
    if (sdxl_ckpt_open(model, &ck, &e) != SDXL_OK || sdxl_compute_new_device(prec, device, &c, &e) != SDXL_OK ||
        sdxl_unet_load(c, ck, NULL, &u, &e) != SDXL_OK) {
        fprintf(stderr, "bench-unet: %s\n", e.msg);
        return 1;
    }
    const sdxl_unet_cfg *g = sdxl_unet_config(u);
    sdxl_unet_stats st;
    sdxl_unet_stats_get(u, &st);
    sdxl_mem_stats m;
    sdxl_mem_query(&m);
    printf("device: %s%s\n", sdxl_compute_device_name(c), on_device ? " (per-op times below are recording times)" : "");
    printf("model %s: %s UNet, %lld params, load %.1f s, weights %.2f GB (%s), RSS %.2f GB\n", model,
           g->is_refiner ? "refiner" : "base", (long long)g->n_params, st.load_seconds, st.weight_bytes / 1e9, pname,
           m.rss / 1e9);

    int64_t lc = 77, pd = g->adm_in - 256 * (g->is_refiner ? 5 : 6), nid = g->is_refiner ? 5 : 6;
    unsigned seed = 1;
    for (const char *p = sizes; *p;) {
        int64_t s = strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
        if (s < 8 || s > 512) continue;
        size_t nx = (size_t)(batch * g->in_ch * s * s);
        float *x = malloc(nx * sizeof(float)), *y = malloc((size_t)(batch * g->out_ch * s * s) * sizeof(float));
        float *ctx = malloc((size_t)(batch * lc * g->context_dim) * sizeof(float));
        float *pooled = malloc((size_t)(batch * pd) * sizeof(float)), *ids = malloc((size_t)(batch * nid) * sizeof(float));
        float *t = malloc((size_t)batch * sizeof(float));
        fill(x, nx, 1.0f, &seed);
        fill(ctx, (size_t)(batch * lc * g->context_dim), 1.0f, &seed);
        fill(pooled, (size_t)(batch * pd), 1.0f, &seed);
        for (int64_t i = 0; i < batch * nid; i++) ids[i] = (float)(8 * s);
        for (int64_t i = 0; i < batch; i++) t[i] = 500.0f;
        sdxl_unet_in in = {.batch = batch, .h = s, .w = s, .x = x, .t = t, .context = ctx, .ctx_len = lc,
                           .pooled = pooled, .pooled_dim = pd, .time_ids = ids, .n_time_ids = nid};
        size_t est = 0;
        sdxl_unet_estimate(u, batch, s, s, lc, &est, &e);
        double flops = sdxl_unet_flops(u, batch, s, s, lc);
        double t0 = bench_now();
        if (sdxl_unet_forward(u, &in, y, &e) != SDXL_OK) {
            fprintf(stderr, "bench-unet: %s\n", e.msg);
            return 1;
        }
        double warm = bench_now() - t0, best = 1e30;
        sdxl_unet_profile(u, 1);
        for (int r = 0; r < runs; r++) {
            t0 = bench_now();
            sdxl_unet_forward(u, &in, y, &e);
            double dt = bench_now() - t0;
            if (dt < best) best = dt;
        }
        double secs[SDXL_UNET_OP_COUNT];
        int64_t calls[SDXL_UNET_OP_COUNT];
        double opf[SDXL_UNET_OP_COUNT];
        sdxl_unet_profile_get(u, secs, calls, opf);
        sdxl_unet_profile(u, 0);
        double gf = flops / best / 1e9;
        printf("\nlatent %lldx%lld batch %lld (%s, %d threads): %.2f s (first call %.2f s), %.0f GFLOP, %.0f GFLOP/s = "
               "%.1f%% of peak; activations %.0f MB\n",
               (long long)s, (long long)s, (long long)batch, pname, threads, best, warm, flops / 1e9, gf,
               peak > 0 ? 100.0 * gf / peak : 0.0, est / 1e6);
        double tot = 0;
        for (int k = 0; k < SDXL_UNET_OP_COUNT; k++) tot += secs[k];
        for (int k = 0; k < SDXL_UNET_OP_COUNT; k++)
            printf("  %-10s %8.2f s %5.1f%%  %6lld calls  %7.0f GFLOP  %5.0f GFLOP/s\n",
                   sdxl_unet_op_name((sdxl_unet_op)k), secs[k] / runs, tot > 0 ? 100.0 * secs[k] / tot : 0.0,
                   (long long)(calls[k] / runs), opf[k] / runs / 1e9, secs[k] > 0 ? opf[k] / secs[k] / 1e9 : 0.0);
        free(x);
        free(y);
        free(ctx);
        free(pooled);
        free(ids);
        free(t);
    }
    sdxl_mem_query(&m);
    printf("\npeak RSS %.2f GB\n", m.peak_rss / 1e9);
    sdxl_unet_free(u);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
    return 0;
}
