/* bench-unet: one UNet forward at batch 2 (a CFG step) on a full-size checkpoint, per latent
 * size: seconds, GFLOP/s, % of this run's machine peak of the precision (the best reading: three
 * at start, one before and one after every timed forward), time per op type, load time, weight
 * bytes and peak RSS.
 *
 *   bench-unet [--model PATH] [--threads N] [--prec bf16|f32] [--sizes 64,128] [--batch 2] [--runs 1]
 *              [--control CONTROLNET]
 *
 * --control adds one ControlNet per step: the ControlNet pass (trunk + zero convs, on the same batch)
 * is timed alone and together with the UNet forward it feeds; its extra time per step and its own
 * GFLOP/s as a % of the peak are printed (the hint embedding, once per request, is reported apart).
 *
 * PATH defaults to bench/models/sdxl_base_random.safetensors (made by bench-make_checkpoint). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"
#include "base/threads.h"
#include "adapters/controlnet.h"
#include "denoise/unet.h"
#include "peak.h"

static void fill(float *x, size_t n, float scale, unsigned *s) {
    for (size_t i = 0; i < n; i++) {
        *s = *s * 1664525u + 1013904223u;
        x[i] = scale * ((float)(*s >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
}

/* One ControlNet per step at this shape: hint embedding (once), the pass alone, and pass + UNet. */
static int bench_control(sdxl_controlnet *cn, sdxl_unet *u, const sdxl_unet_in *in0, float *y, double unet_s,
                         double peak, int runs, sdxl_err *e) {
    const sdxl_unet_cfg *g = sdxl_unet_config(u);
    int64_t H = 8 * in0->h, W = 8 * in0->w, ns = sdxl_unet_n_skips(u), oh = 0, ow = 0, oc = 0;
    float *img = malloc((size_t)(H * W * 3) * sizeof(float)), *hint = malloc((size_t)(in0->h * in0->w * g->ch[0]) * sizeof(float));
    float *acc[64] = {0}, *mid = NULL;
    unsigned sd = 7;
    fill(img, (size_t)(H * W * 3), 0.5f, &sd);
    for (int64_t i = 0; i < H * W * 3; i++) img[i] += 0.5f;
    for (int i = 0; i < ns && i < 64; i++) {
        sdxl_unet_skip_shape(u, i, in0->h, in0->w, &oh, &ow, &oc);
        acc[i] = calloc((size_t)(in0->batch * oh * ow * oc), sizeof(float));
    }
    mid = calloc((size_t)(in0->batch * oh * ow * g->ch[g->levels - 1]), sizeof(float));
    double t0 = bench_now();
    int st = sdxl_controlnet_hint(cn, img, 1, H, W, hint, e);
    double th = bench_now() - t0;
    sdxl_unet_in in = *in0;
    in.ctrl_hint = hint;
    in.ctrl_hint_rows = 1;
    if (!st) st = sdxl_controlnet_apply(cn, &in, 1.0f, 0, acc, mid, 0, e); /* warm-up: plans the workspace */
    double best_cn = 1e30, best_step = 1e30;
    sdxl_unet *trunk = sdxl_controlnet_trunk(cn);
    sdxl_unet_profile(trunk, 1);
    for (int r = 0; r < runs && !st; r++) {
        t0 = bench_now();
        st = sdxl_controlnet_apply(cn, &in, 1.0f, 0, acc, mid, 0, e);
        double dt = bench_now() - t0;
        if (dt < best_cn) best_cn = dt;
    }
    double secs[SDXL_UNET_OP_COUNT], opf[SDXL_UNET_OP_COUNT];
    int64_t calls[SDXL_UNET_OP_COUNT];
    sdxl_unet_profile_get(trunk, secs, calls, opf);
    sdxl_unet_profile(trunk, 0);
    sdxl_unet_in un = *in0;
    un.ctrl_down = (const float *const *)acc;
    un.n_ctrl_down = (int)ns;
    un.ctrl_mid = mid;
    for (int r = 0; r < runs && !st; r++) {
        t0 = bench_now();
        st = sdxl_controlnet_apply(cn, &in, 1.0f, 0, acc, mid, 0, e);
        if (!st) st = sdxl_unet_forward(u, &un, y, e);
        double dt = bench_now() - t0;
        if (dt < best_step) best_step = dt;
    }
    if (!st) {
        /* the ControlNet's work: the trunk's products plus one 1x1 conv per residual */
        double fl = sdxl_unet_flops(trunk, in0->batch, in0->h, in0->w, in0->ctx_len);
        for (int i = 0; i <= ns; i++) {
            int64_t c = g->ch[g->levels - 1];
            if (i < ns) sdxl_unet_skip_shape(u, i, in0->h, in0->w, &oh, &ow, &c);
            fl += 2.0 * (double)in0->batch * (double)(oh * ow) * (double)c * (double)c;
        }
        double gf = fl / best_cn / 1e9;
        printf("  controlnet: hint embedding %.2f s (once per request); pass %.2f s, %.0f GFLOP, %.0f GFLOP/s = "
               "%.1f%% of peak; step with it %.2f s = +%.0f%% over the UNet alone\n",
               th, best_cn, fl / 1e9, gf, 100.0 * gf / peak, best_step, 100.0 * (best_step - unet_s) / unet_s);
        double tot = 0;
        for (int k = 0; k < SDXL_UNET_OP_COUNT; k++) tot += secs[k];
        for (int k = 0; k < SDXL_UNET_OP_COUNT; k++)
            printf("    %-10s %8.2f s %5.1f%%  %7.0f GFLOP  %5.0f GFLOP/s\n", sdxl_unet_op_name((sdxl_unet_op)k),
                   secs[k] / runs, tot > 0 ? 100.0 * secs[k] / tot : 0.0, opf[k] / runs / 1e9,
                   secs[k] > 0 ? opf[k] / secs[k] / 1e9 : 0.0);
    }
    for (int i = 0; i < 64; i++) free(acc[i]);
    free(mid);
    free(img);
    free(hint);
    return st;
}

int main(int argc, char **argv) {
    const char *model = "bench/models/sdxl_base_random.safetensors", *sizes = "64,128", *control = NULL;
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
        else if (!strcmp(argv[i], "--control") && has) control = argv[++i];
        else if (!strcmp(argv[i], "--device") && has) device = argv[++i];
        else if (!strcmp(argv[i], "--peak") && has) given_peak = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-unet [--model PATH] [--threads N] [--prec bf16|f32] [--sizes 64,128] "
                            "[--batch 2] [--runs 1] [--device cpu|vulkan[:N]] [--peak GFLOPS] [--control CONTROLNET]\n"
                            "  --peak: the device's measured matmul peak (a GPU's is not measured here)\n");
            return 2;
        }
    }
    if (batch < 1 || runs < 1) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    sdxl_threads_set(threads);
    const char *pname = prec == SDXL_PREC_BF16 ? "bf16" : "f32";
    int on_device = device && strcmp(device, "cpu");
    double peak = given_peak;
    /* best of three, as bench-ops: a lower reading means another process took a core */
    for (int i = 0; i < 3 && given_peak <= 0 && !on_device; i++) {
        double p = bench_peak_gflops(prec, threads);
        if (p > peak) peak = p;
    }
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
    sdxl_controlnet *cn = NULL;
    if (control) {
        double tl = bench_now();
        if (sdxl_controlnet_load(c, control, u, ck, NULL, &cn, &e) != SDXL_OK) {
            fprintf(stderr, "bench-unet: %s\n", e.msg);
            return 1;
        }
        sdxl_controlnet_info ci;
        sdxl_controlnet_get_info(cn, &ci);
        printf("controlnet %s: %s, %lld params, load %.1f s, weights %.2f GB (%s)\n", control,
               sdxl_controlnet_layout_name(ci.layout), (long long)ci.n_params, bench_now() - tl,
               sdxl_controlnet_weight_bytes(cn) / 1e9, prec == SDXL_PREC_BF16 ? "bf16" : "f32");
    }
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
        sdxl_compute_profile_reset(c);
        /* The peak is sampled again before and after every timed forward and the best sample of
         * the run is used, as bench-vae does: this VM's speed drifts by up to 15% within minutes,
         * and a peak taken at a slow moment would inflate the ratio. */
        for (int r = 0; r < runs; r++) {
            if (given_peak <= 0 && !on_device) {
                double p = bench_peak_gflops(prec, threads);
                if (p > peak) peak = p;
            }
            t0 = bench_now();
            sdxl_unet_forward(u, &in, y, &e);
            double dt = bench_now() - t0;
            if (dt < best) best = dt;
        }
        if (given_peak <= 0 && !on_device) {
            double p = bench_peak_gflops(prec, threads);
            if (p > peak) peak = p;
        }
        double secs[SDXL_UNET_OP_COUNT];
        int64_t calls[SDXL_UNET_OP_COUNT];
        double opf[SDXL_UNET_OP_COUNT];
        sdxl_unet_profile_get(u, secs, calls, opf);
        sdxl_unet_profile(u, 0);
        double gf = flops / best / 1e9;
        printf("\nlatent %lldx%lld batch %lld (%s, %d threads): %.2f s (first call %.2f s), %.0f GFLOP, %.0f GFLOP/s = "
               "%.1f%% of peak %.0f; activations %.0f MB\n",
               (long long)s, (long long)s, (long long)batch, pname, threads, best, warm, flops / 1e9, gf,
               peak > 0 ? 100.0 * gf / peak : 0.0, peak, est / 1e6);
        if (cn && bench_control(cn, u, &in, y, best, peak, runs, &e)) {
            fprintf(stderr, "bench-unet: %s\n", e.msg);
            return 1;
        }
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
    sdxl_controlnet_free(cn);
    sdxl_unet_free(u);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
    return 0;
}
