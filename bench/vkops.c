/* bench-vkops: Vulkan shader ops at SDXL shapes on one device. Group norm by both strategies
 * (one workgroup per group, and split over pixel chunks) as GB/s of the tensor read twice and
 * written once, with the ratio of their times in this run; GEMM as GFLOP/s per weight dtype
 * (f16 takes the matrix units where the device has them), against --peak when given.
 * Usage: bench-vkops [--device vulkan[:N]] [--reps N] [--peak GFLOPS] [--only gn|gn-unet,gemm]
 * Each figure is the best of `reps` runs after one warm-up, each run submitted and waited for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peak.h"
#include "tensor/vk/vk_ops.h"

static uint64_t seed = 1;

static sdxl_vk_buf rnd_buf(sdxl_vk *v, int64_t n) {
    float *x = malloc((size_t)n * 4);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(seed >> 40) / (double)(1 << 24)) - 0.5f;
    }
    sdxl_vk_buf b;
    sdxl_err e = {0};
    if (sdxl_vk_from_host(v, x, n, &b, &e)) {
        fprintf(stderr, "upload: %s\n", e.msg);
        exit(1);
    }
    free(x);
    return b;
}

static void die(const char *what, const sdxl_err *e) {
    fprintf(stderr, "%s: %s\n", what, e->msg);
    exit(1);
}

static double time_gn(sdxl_vk *v, int reps, const sdxl_vk_buf *x, const sdxl_vk_buf *y, int64_t n, int64_t hw,
                      int64_t c, const sdxl_vk_buf *g, const sdxl_vk_buf *b, sdxl_vk_gn_path path) {
    sdxl_err e = {0};
    double best = 1e30;
    for (int r = -1; r < reps; r++) {
        double t0 = bench_now();
        if (sdxl_vk_group_norm_path(v, x, y, n, hw, c, 32, 1e-5f, g, b, 1, path, &e) || sdxl_vk_flush(v, &e))
            die("group norm", &e);
        double t = bench_now() - t0;
        if (r >= 0 && t < best) best = t;
    }
    return best;
}

static void bench_gn(sdxl_vk *v, int reps, int unet_only) {
    static const struct { const char *what; int64_t n, hw, c; } s[] = {
        {"UNet 1024^2 CFG, level 0 (2x128^2x320)", 2, 128 * 128, 320},
        {"UNet 1024^2 CFG, level 2 (2x32^2x1280)", 2, 32 * 32, 1280},
        {"VAE decode 512^2, 256^2x256", 1, 256 * 256, 256},
        {"VAE decode 512^2, 512^2x128", 1, 512 * 512, 128},
    };
    printf("group norm + SiLU, 32 groups: one workgroup per group vs split (chunks of pixels)\n");
    for (size_t i = 0; i < (unet_only ? 2 : sizeof s / sizeof *s); i++) {
        int64_t n = s[i].n * s[i].hw * s[i].c;
        sdxl_vk_buf x = rnd_buf(v, n), y = rnd_buf(v, n), g = rnd_buf(v, s[i].c), b = rnd_buf(v, s[i].c);
        double t1 = time_gn(v, reps, &x, &y, s[i].n, s[i].hw, s[i].c, &g, &b, SDXL_VK_GN_ONE);
        double t2 = time_gn(v, reps, &x, &y, s[i].n, s[i].hw, s[i].c, &g, &b, SDXL_VK_GN_SPLIT);
        double gb = 3.0 * (double)n * 4 * 1e-9;
        printf("%-42s one %8.2f ms (%6.2f GB/s)  split %8.2f ms (%6.2f GB/s)  one/split %.2fx  auto: %s\n", s[i].what,
               t1 * 1e3, gb / t1, t2 * 1e3, gb / t2, t1 / t2,
               s[i].hw * (s[i].c / 32) <= SDXL_VK_GN_ONE_MAX ? "one" : "split");
        sdxl_vk_release(v, &x), sdxl_vk_release(v, &y), sdxl_vk_release(v, &g), sdxl_vk_release(v, &b);
    }
}

static void bench_gemm(sdxl_vk *v, int reps, double peak) {
    static const struct { const char *what; int64_t M, K, N; } s[] = {
        {"UNet 1024^2 CFG, attn proj (2x4096 x 640 x 640)", 2 * 4096, 640, 640},
        {"UNet 1024^2 CFG, FF in (2x1024 x 1280 x 10240)", 2 * 1024, 1280, 10240},
    };
    sdxl_dtype st[3] = {SDXL_F32, SDXL_F16, SDXL_BF16};
    const char *sn[3] = {"f32", "f16", "bf16"};
    printf("GEMM (matrix units for f16: %s)\n", sdxl_vk_info(v)->mma ? "yes" : "no");
    for (size_t i = 0; i < sizeof s / sizeof *s; i++)
        for (int d = 0; d < 3; d++) {
            sdxl_err e = {0};
            int64_t M = s[i].M, K = s[i].K, N = s[i].N;
            float *w = calloc((size_t)(N * K), 4);
            if (!w) die("weights", &e);
            for (int64_t j = 0; j < N * K; j++) w[j] = (float)((j * 7919) % 1000) * 1e-3f - 0.5f;
            sdxl_vk_gemm_layer l;
            if (sdxl_vk_linear_init(v, &l, K, N, w, SDXL_F32, NULL, SDXL_F32, st[d], &e)) die("gemm layer", &e);
            free(w);
            sdxl_vk_buf x = rnd_buf(v, M * K), y = rnd_buf(v, M * N);
            double best = 1e30;
            for (int r = -1; r < reps; r++) {
                double t0 = bench_now();
                if (sdxl_vk_linear_fwd(v, &l, &x, M, &y, 0, &e) || sdxl_vk_flush(v, &e)) die("gemm", &e);
                double t = bench_now() - t0;
                if (r >= 0 && t < best) best = t;
            }
            double gf = 2.0 * (double)M * K * N / best * 1e-9;
            printf("%-48s %-4s %9.1f GFLOP/s", s[i].what, sn[d], gf);
            if (peak > 0) printf("  %5.1f%% of peak %.0f", 100.0 * gf / peak, peak);
            printf("  (%.2f ms)\n", best * 1e3);
            sdxl_vk_layer_free(v, &l);
            sdxl_vk_release(v, &x), sdxl_vk_release(v, &y);
        }
}

int main(int argc, char **argv) {
    const char *device = "vulkan", *only = "gn,gemm";
    int reps = 3;
    double peak = 0;
    for (int i = 1; i < argc; i++) {
        int has = i + 1 < argc;
        if (!strcmp(argv[i], "--device") && has) device = argv[++i];
        else if (!strcmp(argv[i], "--reps") && has) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--peak") && has) peak = atof(argv[++i]);
        else if (!strcmp(argv[i], "--only") && has) only = argv[++i];
        else {
            fprintf(stderr, "usage: bench-vkops [--device vulkan[:N]] [--reps 3] [--peak GFLOPS] [--only gn,gemm]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    sdxl_err e = {0};
    int index;
    sdxl_vk *v = NULL;
    if (sdxl_vk_parse_device(device, &index, &e) || sdxl_vk_new(index, &v, &e)) die("device", &e);
    printf("device: %s\n", sdxl_vk_info(v)->name);
    if (strstr(only, "gn")) bench_gn(v, reps, strstr(only, "gn-unet") != NULL);
    if (strstr(only, "gemm")) bench_gemm(v, reps, peak);
    sdxl_vk_free(v);
    return 0;
}
