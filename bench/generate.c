/* bench-generate: whole generations on the full-size random SDXL checkpoint (made by
 * bench-make_checkpoint): text encoders, CFG UNet steps, VAE decode. Prints each stage's
 * seconds, the UNet's GFLOP/s and its share of this run's machine peak, and the peak RSS.
 *
 *   bench-generate [--model CKPT] [--prec bf16|f32] [--threads 2] [--runs 512x4,1024x2] [--cfg 7]
 *
 * Default model: bench/models/sdxl_base_random.safetensors (run from the repository root). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"
#include "base/threads.h"
#include "peak.h"
#include "pipeline/pipeline.h"

#define DEFAULT_MODEL "bench/models/sdxl_base_random.safetensors"

static int on_progress(void *user, const sdxl_progress *p) {
    (void)user;
    fprintf(stderr, "  %-7s %d/%d  %.1fs\n", sdxl_phase_name(p->phase), p->step, p->total, p->elapsed);
    return 0;
}

int main(int argc, char **argv) {
    const char *model = DEFAULT_MODEL, *prec = "bf16", *runs = "512x4,1024x2";
    int threads = 2;
    float cfg = 7.0f;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--prec") && i + 1 < argc) prec = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = argv[++i];
        else if (!strcmp(argv[i], "--cfg") && i + 1 < argc) cfg = (float)atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-generate [--model CKPT] [--prec bf16|f32] [--threads N] "
                            "[--runs SIZExSTEPS,...] [--cfg X]\n");
            return 2;
        }
    }
    threads = sdxl_threads_set(threads);
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = model;
    mp.precision = prec;
    sdxl_err e = {0};
    sdxl_pl_model *m = NULL;
    double t0 = bench_now();
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
        fprintf(stderr, "bench-generate: %s\n(make the checkpoint with bench-make_checkpoint)\n", e.msg);
        return 1;
    }
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    double peak = bench_peak_gflops(m->prec, threads);
    printf("model %s, %s, %d threads: load %.1f s, RSS after load %.2f GiB; machine peak %.0f GFLOP/s\n", model,
           m->prec == SDXL_PREC_BF16 ? "bf16" : "f32", threads, bench_now() - t0, (double)ms.rss / (1 << 30), peak);
    printf("%-10s %5s %7s %7s %8s %8s %8s %9s %7s %9s\n", "size", "steps", "text_s", "unet_s", "s/step", "decode_s",
           "total_s", "UNet GF/s", "%peak", "peakRSS");
    for (const char *r = runs; r && *r;) {
        int side = 0, steps = 0;
        if (sscanf(r, "%dx%d", &side, &steps) != 2) {
            fprintf(stderr, "bench-generate: --runs: expected SIZExSTEPS, got %s\n", r);
            break;
        }
        sdxl_gen_params p;
        sdxl_gen_params_init(&p);
        p.prompt = "a photo of a red fox in the snow, highly detailed";
        p.negative_prompt = "blurry, low quality";
        p.width = p.height = side;
        p.steps = steps;
        p.cfg_scale = cfg;
        p.seed = 1;
        p.progress = on_progress;
        sdxl_pl_result res;
        if (sdxl_pl_generate(m, &p, NULL, NULL, NULL, &res, &e)) {
            fprintf(stderr, "bench-generate: %dx%d: %s\n", side, side, e.msg);
            break;
        }
        double flops = sdxl_unet_flops(m->base_unet, cfg > 1 ? 2 : 1, side / 8, side / 8, 77);
        double gfs = flops * res.st.unet_calls / res.st.base_s / 1e9;
        printf("%4dx%-5d %5d %7.2f %7.2f %8.2f %8.2f %8.2f %9.0f %6.1f%% %7.2fG\n", side, side, steps, res.st.text_s,
               res.st.base_s, res.st.base_s / steps, res.st.decode_s, res.st.total_s, gfs,
               peak > 0 ? 100 * gfs / peak : 0, (double)res.st.peak_rss / (1 << 30));
        fflush(stdout);
        sdxl_pl_result_free(&res);
        r = strchr(r, ',');
        if (r) r++;
    }
    sdxl_pl_model_free(m);
    return 0;
}
