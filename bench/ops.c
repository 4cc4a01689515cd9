/* bench-ops: GFLOP/s of matmul, conv and attention at SDXL shapes, in f32 and bf16, each as a
 * percentage of this run's machine peak for the same precision (register-only FMA loop).
 * Usage: bench-ops [--threads N] [--reps N] [--only matmul|conv|attention]
 * Each figure is the best of `reps` timed runs after one warm-up run (which creates the
 * primitives and grows the scratch buffers). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/threads.h"
#include "peak.h"
#include "tensor/ops.h"

static uint64_t seed = 1;

static float *rnd(int64_t n) {
    float *x = malloc((size_t)n * 4);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(seed >> 40) / (double)(1 << 24)) - 0.5f;
    }
    return x;
}

static void report(const char *what, sdxl_prec p, double flops, double secs, double peak) {
    double gf = flops / secs * 1e-9;
    printf("%-44s %-4s %8.1f GFLOP/s  %5.1f%% of peak  (%.1f ms)\n", what, p == SDXL_PREC_BF16 ? "bf16" : "f32", gf,
           peak > 0 ? 100.0 * gf / peak : 0.0, secs * 1e3);
}

static int reps = 3;

static void bench_matmul(sdxl_compute *c, int64_t M, int64_t K, int64_t N, double peak) {
    float *x = rnd(M * K), *w = rnd(N * K), *b = rnd(N), *y = rnd(M * N);
    sdxl_linear l;
    sdxl_err e = {0};
    if (sdxl_linear_init(c, &l, K, N, w, SDXL_F32, b, SDXL_F32, &e) || sdxl_linear_fwd(c, &l, x, M, y, 0, &e)) {
        fprintf(stderr, "matmul: %s\n", e.msg);
        exit(1);
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        sdxl_linear_fwd(c, &l, x, M, y, 0, &e);
        double t = bench_now() - t0;
        if (t < best) best = t;
    }
    char name[96];
    snprintf(name, sizeof name, "matmul M=%lld K=%lld N=%lld", (long long)M, (long long)K, (long long)N);
    report(name, sdxl_compute_prec(c), 2.0 * M * K * N, best, peak);
    sdxl_linear_free(&l);
    free(x), free(w), free(b), free(y);
}

static void bench_conv(sdxl_compute *c, int64_t n, int64_t hw, int64_t ch, double peak) {
    float *x = rnd(n * hw * hw * ch), *w = rnd(ch * ch * 9), *b = rnd(ch), *y = rnd(n * hw * hw * ch);
    sdxl_conv2d cv;
    sdxl_err e = {0};
    if (sdxl_conv2d_init(c, &cv, ch, ch, 3, 3, 1, 1, 1, 1, 1, w, SDXL_F32, b, SDXL_F32, &e) ||
        sdxl_conv2d_fwd(c, &cv, x, n, hw, hw, y, 0, &e)) {
        fprintf(stderr, "conv: %s\n", e.msg);
        exit(1);
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        sdxl_conv2d_fwd(c, &cv, x, n, hw, hw, y, 0, &e);
        double t = bench_now() - t0;
        if (t < best) best = t;
    }
    char name[96];
    snprintf(name, sizeof name, "conv3x3 n=%lld %lldx%lldx%lld->%lld", (long long)n, (long long)hw, (long long)hw,
             (long long)ch, (long long)ch);
    report(name, sdxl_compute_prec(c), 2.0 * n * hw * hw * ch * ch * 9, best, peak);
    sdxl_conv2d_free(&cv);
    free(x), free(w), free(b), free(y);
}

static void bench_attention(sdxl_compute *c, int64_t lq, int64_t lk, int heads, int d, double peak) {
    int64_t hd = (int64_t)heads * d;
    float *q = rnd(lq * hd), *kv = rnd(lk * 2 * hd), *o = rnd(lq * hd);
    sdxl_err e = {0};
    float scale = 0.125f;
    if (sdxl_attention(c, q, hd, kv, kv + hd, 2 * hd, o, hd, 1, lq, lk, heads, d, scale, 0, &e)) {
        fprintf(stderr, "attention: %s\n", e.msg);
        exit(1);
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        sdxl_attention(c, q, hd, kv, kv + hd, 2 * hd, o, hd, 1, lq, lk, heads, d, scale, 0, &e);
        double t = bench_now() - t0;
        if (t < best) best = t;
    }
    char name[96];
    snprintf(name, sizeof name, "attention lq=%lld lk=%lld %dx%d", (long long)lq, (long long)lk, heads, d);
    report(name, sdxl_compute_prec(c), 4.0 * lq * lk * d * heads, best, peak);
    free(q), free(kv), free(o);
}

int main(int argc, char **argv) {
    int threads = 2;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--reps N] [--only matmul|conv|attention]\n", argv[0]);
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    threads = sdxl_threads_set(threads);
    double peak[2] = {bench_peak_gflops(SDXL_PREC_F32, threads), bench_peak_gflops(SDXL_PREC_BF16, threads)};
    printf("threads %d  machine peak: f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s\n", threads, peak[0], peak[1]);
    for (int pi = 0; pi < 2; pi++) {
        sdxl_prec p = pi ? SDXL_PREC_BF16 : SDXL_PREC_F32;
        if (p == SDXL_PREC_BF16 && peak[1] <= 0) {
            printf("bf16: not supported by this CPU\n");
            continue;
        }
        sdxl_compute *c;
        sdxl_err e = {0};
        if (sdxl_compute_new(p, &c, &e)) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        if (!only || !strcmp(only, "matmul")) {
            bench_matmul(c, 4096, 640, 640, peak[pi]);
            bench_matmul(c, 4096, 640, 5120, peak[pi]);
            bench_matmul(c, 1024, 1280, 1280, peak[pi]);
            bench_matmul(c, 1024, 1280, 10240, peak[pi]);
        }
        if (!only || !strcmp(only, "conv")) {
            bench_conv(c, 1, 64, 640, peak[pi]);
            bench_conv(c, 1, 128, 320, peak[pi]);
        }
        if (!only || !strcmp(only, "attention")) {
            bench_attention(c, 4096, 4096, 10, 64, peak[pi]);
            bench_attention(c, 1024, 1024, 20, 64, peak[pi]);
            bench_attention(c, 4096, 77, 10, 64, peak[pi]);
        }
        sdxl_compute_free(c);
    }
    return 0;
}
