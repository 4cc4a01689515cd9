/* bench-ops: GFLOP/s of matmul, conv and attention at SDXL shapes, in f32 and bf16, each as a
 * percentage of this run's machine peak for the same precision (register-only FMA loop); and
 * GB/s of the memory-bound ops (norms, activations, adds) against this run's copy bandwidth.
 * Usage: bench-ops [--threads N] [--reps N] [--prec f32|bf16] [--only matmul,accum,ff,conv,attention,memory]
 * Each figure is the best of `reps` timed runs after one warm-up run (which creates the
 * primitives and grows the scratch buffers). BENCH_CLOCK=cpu times by CPU time (peak.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/threads.h"
#include "tensor/tensor.h"
#include "peak.h"
#include "tensor/ops.h"

static uint64_t seed = 1;

/* 64-byte aligned, as the networks' activations are: a row that straddles an extra cache line
 * costs attention a few percent. */
static float *rnd(int64_t n) {
    float *x = aligned_alloc(64, ((size_t)n * 4 + 63) & ~(size_t)63);
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

/* Short ops repeat beyond `reps` until they have run this long (at most 500 times): a few
 * milliseconds are easily hit by another process on a shared machine. */
#define MIN_SECONDS 0.25
static int more(int r, double start) { return r < reps || (r < 500 && bench_now() - start < MIN_SECONDS); }

static void bench_matmul(sdxl_compute *c, int64_t M, int64_t K, int64_t N, double peak) {
    float *x = rnd(M * K), *w = rnd(N * K), *b = rnd(N), *y = rnd(M * N);
    sdxl_linear l;
    sdxl_err e = {0};
    if (sdxl_linear_init(c, &l, K, N, w, SDXL_F32, b, SDXL_F32, &e) || sdxl_linear_fwd(c, &l, x, M, y, 0, &e)) {
        fprintf(stderr, "matmul: %s\n", e.msg);
        exit(1);
    }
    double best = 1e30, t_start = bench_now();
    for (int r = 0; more(r, t_start); r++) {
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
    double best = 1e30, t_start = bench_now();
    for (int r = 0; more(r, t_start); r++) {
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
    double best = 1e30, t_start = bench_now();
    for (int r = 0; more(r, t_start); r++) {
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

/* A GEMM on a bf16 input (as the UNet's norms and attention write it), into y and added to y
 * (SDXL_OP_ACCUM, the residual GEMMs); the two run in turn, each the best of its runs. */
static void bench_accum(sdxl_compute *c, int64_t M, int64_t K, int64_t N, double peak) {
    float *x = rnd(M * K), *w = rnd(N * K), *b = rnd(N), *y = rnd(M * N);
    uint16_t *xb = aligned_alloc(64, (size_t)(M * K) * 2);
    sdxl_linear l;
    sdxl_err e = {0};
    if (!xb || sdxl_linear_init(c, &l, K, N, w, SDXL_F32, b, SDXL_F32, &e)) {
        fprintf(stderr, "accum: %s\n", e.msg);
        exit(1);
    }
    sdxl_f32_to_bf16(x, xb, (size_t)(M * K));
    double best[2] = {1e30, 1e30}, t_start = bench_now();
    for (int r = -1; more(r < 0 ? 0 : r, t_start); r++)
        for (int v = 0; v < 2; v++) {
            double t0 = bench_now();
            int fl = SDXL_OP_SRC_BF16 | (v ? SDXL_OP_ACCUM : 0);
            int st = sdxl_linear_fwd(c, &l, (const float *)(void *)xb, M, y, fl, &e);
            double t = bench_now() - t0;
            if (st) {
                fprintf(stderr, "accum: %s\n", e.msg);
                exit(1);
            }
            if (r >= 0 && t < best[v]) best[v] = t;
        }
    char name[96];
    for (int v = 0; v < 2; v++) {
        snprintf(name, sizeof name, "matmul bf16 in M=%lld K=%lld N=%lld%s", (long long)M, (long long)K, (long long)N,
                 v ? " +=" : "");
        report(name, sdxl_compute_prec(c), 2.0 * M * K * N, best[v], peak);
    }
    sdxl_linear_free(&l);
    free(x), free(w), free(b), free(y), free(xb);
}

/* One feed-forward (bf16): ff1 [8c, c], GEGLU, ff2 [c, 4c] accumulated into the residual, over M
 * rows: as separate ops (the f32 projection, then the GEGLU to bf16) and with the GEGLU fused
 * into ff1 (sdxl_linear_geglu_bf16). The two run in turn, each the best of its runs. */
static void bench_ff(sdxl_compute *c, int64_t M, int64_t C, double peak) {
    float *x = rnd(M * C), *w1 = rnd(8 * C * C), *b1 = rnd(8 * C), *w2 = rnd(4 * C * C), *b2 = rnd(C), *h = rnd(M * C);
    float *p = rnd(M * 8 * C), *g = rnd(M * 4 * C);
    uint16_t *yb = aligned_alloc(64, (size_t)(M * 4 * C) * 2);
    for (int64_t i = 0; i < 8 * C * C; i++) w1[i] *= 0.1f;
    sdxl_linear l1, l2;
    sdxl_err e = {0};
    if (!yb || sdxl_linear_init(c, &l1, C, 8 * C, w1, SDXL_F32, b1, SDXL_F32, &e) ||
        sdxl_linear_init(c, &l2, 4 * C, C, w2, SDXL_F32, b2, SDXL_F32, &e)) {
        fprintf(stderr, "ff: %s\n", e.msg);
        exit(1);
    }
    double best[2] = {1e30, 1e30}, t_start = bench_now();
    for (int r = -1; more(r < 0 ? 0 : r, t_start); r++)
        for (int v = 0; v < 2; v++) {
            double t0 = bench_now();
            int st;
            if (v == 0) {
                st = sdxl_linear_fwd(c, &l1, x, M, p, 0, &e);
                uint16_t *xb = st ? NULL : sdxl_compute_src_bf16(c, M * 4 * C);
                if (xb) sdxl_geglu_bf16(p, xb, M, 4 * C);
                if (!st) st = sdxl_linear_fwd(c, &l2, (const float *)(void *)xb, M, h, SDXL_OP_ACCUM | SDXL_OP_SRC_BF16, &e);
            } else {
                st = sdxl_linear_geglu_bf16(c, &l1, x, M, g, yb, 0, &e);
                if (!st) st = sdxl_linear_fwd(c, &l2, (const float *)(void *)yb, M, h, SDXL_OP_ACCUM | SDXL_OP_SRC_BF16, &e);
            }
            double t = bench_now() - t0;
            if (st) {
                fprintf(stderr, "ff: %s\n", e.msg);
                exit(1);
            }
            if (r >= 0 && t < best[v]) best[v] = t;
        }
    char name[96];
    for (int v = 0; v < 2; v++) {
        snprintf(name, sizeof name, "feed-forward M=%lld c=%lld, %s", (long long)M, (long long)C,
                 v ? "GEGLU fused" : "GEGLU apart");
        report(name, sdxl_compute_prec(c), 24.0 * M * C * C, best[v], peak);
    }
    sdxl_linear_free(&l1);
    sdxl_linear_free(&l2);
    free(x), free(w1), free(b1), free(w2), free(b2), free(h), free(p), free(g), free(yb);
}

/* ---- memory-bound ops: GB/s of compulsory traffic (each input read once, each output written
 * once), and that as a percentage of a parallel copy of the same number of bytes run just before
 * (a tensor that fits the L3 cache copies several times faster than one that does not). ---- */

typedef struct mem_arg {
    float *x, *y, *g, *b;
    int64_t n, hw, c, rows, f;
    int inplace; /* y is restored from x (untimed) before every run of an in-place op */
} mem_arg;

static double best_of(void (*fn)(void *), void *arg) {
    mem_arg *a = arg;
    fn(arg);
    double best = 1e30, t_start = bench_now();
    for (int r = 0; more(r, t_start); r++) {
        if (a->inplace) memcpy(a->y, a->x, (size_t)a->n * 4);
        double t0 = bench_now();
        fn(arg);
        double t = bench_now() - t0;
        if (t < best) best = t;
    }
    return best;
}

static void run_copy(void *p) {
    mem_arg *a = p;
    sdxl_concat_channels(a->x, 4096, a->x, 0, a->y, a->n / 4096);
}
static void run_gn(void *p) {
    mem_arg *a = p;
    sdxl_group_norm(a->x, a->y, 1, a->hw, a->c, 32, 1e-5f, a->g, a->b, 0);
}
static void run_gn_silu(void *p) {
    mem_arg *a = p;
    sdxl_group_norm(a->x, a->y, 1, a->hw, a->c, 32, 1e-5f, a->g, a->b, 1);
}
static void run_ln(void *p) {
    mem_arg *a = p;
    sdxl_layer_norm(a->x, a->y, a->rows, a->c, 1e-5f, a->g, a->b);
}
static void run_geglu(void *p) {
    mem_arg *a = p;
    sdxl_geglu(a->x, a->y, a->rows, a->f);
}
static void run_silu(void *p) {
    mem_arg *a = p;
    sdxl_silu(a->y, a->n);
}
static void run_gelu(void *p) {
    mem_arg *a = p;
    sdxl_gelu(a->y, a->n);
}
static void run_add(void *p) {
    mem_arg *a = p;
    sdxl_add(a->x, a->y, a->y, a->n);
}
static void run_bf16(void *p) {
    mem_arg *a = p;
    sdxl_f32_to_bf16(a->x, (uint16_t *)a->y, (size_t)a->n);
}

/* Times fn, then a copy of `bytes` (half read, half written), and prints both. */
static void mem_run(const char *what, void (*fn)(void *), mem_arg *a, double bytes) {
    double t = best_of(fn, a);
    mem_arg cp = *a;
    cp.inplace = 0;
    cp.n = ((int64_t)(bytes / 8) + 4095) / 4096 * 4096;
    double tc = best_of(run_copy, &cp), gbs = bytes / t * 1e-9, copy_gbs = 8.0 * (double)cp.n / tc * 1e-9;
    printf("%-44s      %8.1f GB/s     %5.1f%% of copy at %.1f GB/s  (%.2f ms)\n", what, gbs, 100.0 * gbs / copy_gbs,
           copy_gbs, t * 1e3);
}

static void bench_memory(void) {
    const int64_t big = 4096 * 2560; /* geglu's input is [4096, 2 x 2560]; 16384 x 320 is half of it */
    mem_arg a = {rnd(2 * big), rnd(2 * big), rnd(5120), rnd(5120), 0, 0, 0, 0, 0, 0};
    /* activations spread over [-3, 3), as gate pre-activations are: the activations' fast paths
     * for small arguments must not flatter the figures */
    for (int64_t i = 0; i < 2 * big; i++) a.x[i] *= 6.0f, a.y[i] *= 6.0f;
    static const int64_t gn[][2] = {{64 * 64, 640}, {128 * 128, 320}, {32 * 32, 1280}, {256 * 256, 256}};
    char name[96];
    for (int i = 0; i < 4; i++) {
        a.hw = gn[i][0], a.c = gn[i][1];
        double bytes = 8.0 * a.hw * a.c;
        snprintf(name, sizeof name, "group_norm %lldx%lld g32", (long long)a.hw, (long long)a.c);
        mem_run(name, run_gn, &a, bytes);
        snprintf(name, sizeof name, "group_norm+silu %lldx%lld g32", (long long)a.hw, (long long)a.c);
        mem_run(name, run_gn_silu, &a, bytes);
    }
    a.rows = 4096, a.c = 640;
    mem_run("layer_norm 4096x640", run_ln, &a, 8.0 * 4096 * 640);
    a.rows = 1024, a.c = 1280;
    mem_run("layer_norm 1024x1280", run_ln, &a, 8.0 * 1024 * 1280);
    a.rows = 4096, a.f = 2560;
    mem_run("geglu 4096x(2x2560)", run_geglu, &a, 12.0 * 4096 * 2560);
    a.n = 4096 * 640;
    a.inplace = 1; /* every repetition sees the same spread of arguments */
    mem_run("silu 4096x640 (in place)", run_silu, &a, 8.0 * a.n);
    mem_run("gelu 4096x640 (in place)", run_gelu, &a, 8.0 * a.n);
    a.inplace = 0;
    mem_run("add 4096x640 (y += x)", run_add, &a, 12.0 * a.n);
    mem_run("f32->bf16 4096x640", run_bf16, &a, 6.0 * a.n);
    free(a.x), free(a.y), free(a.g), free(a.b);
}

static int wants(const char *only, const char *what) {
    if (!only) return 1;
    size_t n = strlen(what);
    for (const char *p = only; (p = strstr(p, what)) != NULL; p += n)
        if ((p == only || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return 1;
    return 0;
}

int main(int argc, char **argv) {
    int threads = 2;
    const char *only = NULL, *prec = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--prec") && i + 1 < argc) prec = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--reps N] [--prec f32|bf16] "
                    "[--only matmul,accum,ff,conv,attention,memory]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    threads = sdxl_threads_set(threads);
    const char *clk = getenv("BENCH_CLOCK");
    if (clk && !strcmp(clk, "cpu") && threads > 1)
        printf("note: BENCH_CLOCK=cpu is exact for one thread only: the kernel accounts the other threads' time "
               "at scheduler ticks, so ops shorter than ~10 ms are under-counted\n");
    /* best of three, like the ops: a lower reading means another process took the core */
    double peak[2] = {0, 0};
    for (int i = 0; i < 3; i++)
        for (int pi = 0; pi < 2; pi++) {
            double g = bench_peak_gflops(pi ? SDXL_PREC_BF16 : SDXL_PREC_F32, threads);
            if (g > peak[pi]) peak[pi] = g;
        }
    printf("threads %d  machine peak: f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s\n", threads, peak[0], peak[1]);
    for (int pi = 0; pi < 2; pi++) {
        sdxl_prec p = pi ? SDXL_PREC_BF16 : SDXL_PREC_F32;
        if (prec && strcmp(prec, pi ? "bf16" : "f32")) continue;
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
        if (wants(only, "matmul")) {
            bench_matmul(c, 4096, 640, 640, peak[pi]);
            bench_matmul(c, 4096, 640, 5120, peak[pi]);
            bench_matmul(c, 1024, 1280, 1280, peak[pi]);
            bench_matmul(c, 1024, 1280, 10240, peak[pi]);
        }
        if (wants(only, "accum") && p == SDXL_PREC_BF16) {
            bench_accum(c, 8192, 640, 640, peak[pi]);   /* out projections, 1024x1024 images, batch 2 */
            bench_accum(c, 2048, 1280, 1280, peak[pi]);
            bench_accum(c, 8192, 2560, 640, peak[pi]);  /* second FF GEMM (chunks of up to 8192 rows) */
            bench_accum(c, 2048, 5120, 1280, peak[pi]);
        }
        if (wants(only, "ff") && p == SDXL_PREC_BF16) {
            bench_ff(c, 2048, 640, peak[pi]); /* 512x512 images, batch 2 */
            bench_ff(c, 512, 1280, peak[pi]);
        }
        if (wants(only, "conv")) {
            bench_conv(c, 1, 64, 640, peak[pi]);
            bench_conv(c, 1, 128, 320, peak[pi]);
            bench_conv(c, 1, 32, 1280, peak[pi]);
        }
        if (wants(only, "attention")) {
            bench_attention(c, 4096, 4096, 10, 64, peak[pi]);
            bench_attention(c, 1024, 1024, 20, 64, peak[pi]);
            bench_attention(c, 4096, 77, 10, 64, peak[pi]);
            bench_attention(c, 1024, 77, 20, 64, peak[pi]);
            bench_attention(c, 4096, 4096, 1, 512, peak[pi]);
        }
        sdxl_compute_free(c);
    }
    if (wants(only, "memory")) bench_memory();
    return 0;
}
