/* bench-text: SDXL text conditioning with full-size CLIP-L + OpenCLIP-bigG: one CFG prompt pair
 * (cond + uncond, 77 tokens each) from text to context [2, 77, 2048] and pooled [2, 1280].
 *
 *   bench-make_checkpoint                      (once: bench/models/sdxl_base_random.safetensors)
 *   bench-text [--model PATH] [--threads 2] [--prec bf16|f32] [--reps 5]
 *
 * Prints the load time, the best and mean encode time, GFLOP/s and the ratio to this run's
 * machine peak for the same precision and thread count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/mem.h"
#include "base/threads.h"
#include "io/checkpoint.h"
#include "peak.h"
#include "tensor/ops.h"
#include "text/conditioning.h"
#include "text/tokenizer.h"

static const char *PROMPT =
    "A breathtaking panoramic landscape of an ancient mountain valley at sunrise, with mist rolling over emerald "
    "pine forests, a crystal clear river winding between moss covered boulders, snow capped peaks glowing orange "
    "and pink in the first light, a small wooden cabin with smoke rising from its chimney, wild horses grazing";
static const char *NEGATIVE = "blurry, low quality, watermark, text, jpeg artifacts, deformed, extra fingers";

/* Process CPU seconds: on a shared machine, CPU time / threads estimates the quiet-machine wall time. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    char model[4096];
    const char *f = __FILE__, *p = strstr(f, "/bench/text.c");
    snprintf(model, sizeof model, "%.*s/bench/models/sdxl_base_random.safetensors", p && f[0] == '/' ? (int)(p - f) : 1,
             p && f[0] == '/' ? f : ".");
    int threads = 2, reps = 5;
    sdxl_prec prec = SDXL_PREC_BF16;
    for (int i = 1; i < argc; i++) {
        int has = i + 1 < argc;
        if (!strcmp(argv[i], "--model") && has)
            snprintf(model, sizeof model, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--threads") && has)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && has)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prec") && has)
            prec = !strcmp(argv[++i], "f32") ? SDXL_PREC_F32 : SDXL_PREC_BF16;
        else {
            fprintf(stderr, "usage: bench-text [--model PATH] [--threads N] [--prec bf16|f32] [--reps N]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    threads = sdxl_threads_set(threads);

    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_tokenizer *tok = NULL;
    sdxl_cond_model m = {0};
    double t0 = bench_now();
    if (sdxl_ckpt_open(model, &ck, &e)) {
        fprintf(stderr, "%s\n(make a random full-size checkpoint first: bench-make_checkpoint)\n", e.msg);
        return 1;
    }
    if (sdxl_compute_new(prec, &c, &e) || sdxl_tokenizer_new(&tok, &e) || sdxl_cond_model_load(c, ck, &m, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    double t_load = bench_now() - t0;
    if (!m.te1) {
        fprintf(stderr, "%s has no CLIP-L text encoder\n", model);
        return 1;
    }
    /* The encoders hold their own converted weights: the file's mapping can go. */
    sdxl_ckpt_close(ck);
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    const double rss_loaded = (double)ms.rss / 1e9;
    printf("model %s\n", model);
    printf("TE1 width %lld layers %lld heads %lld | TE2 width %lld layers %lld heads %lld proj %lld\n",
           (long long)m.te1->cfg.width, (long long)m.te1->cfg.layers, (long long)m.te1->cfg.heads,
           (long long)m.te2->cfg.width, (long long)m.te2->cfg.layers, (long long)m.te2->cfg.heads,
           (long long)m.te2->cfg.proj);
    printf("load + convert: %.2f s, weights held %.2f GB\n", t_load,
           (double)(m.te1->weight_bytes + m.te2->weight_bytes) / 1e9);

    sdxl_cond_params cp;
    sdxl_cond_params_init(&cp);
    cp.prompt = PROMPT;
    cp.negative = NEGATIVE;
    sdxl_cond cd;
    /* The first pass creates the GEMM primitives (JIT); timed passes reuse them. */
    if (sdxl_cond_encode(c, &m, tok, &cp, &cd, &e)) {
        fprintf(stderr, "encode: %s\n", e.msg);
        return 1;
    }
    const int64_t windows = cd.n_tokens / SDXL_COND_WINDOW;
    sdxl_cond_free(&cd);
    double best = 1e30, sum = 0, best_cpu = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = bench_now(), tc = cpu_now();
        if (sdxl_cond_encode(c, &m, tok, &cp, &cd, &e)) {
            fprintf(stderr, "encode: %s\n", e.msg);
            return 1;
        }
        t = bench_now() - t;
        tc = cpu_now() - tc;
        sdxl_cond_free(&cd);
        if (tc < best_cpu) best_cpu = tc;
        sum += t;
        if (t < best) best = t;
    }
    const int64_t B = 2 * windows, L = SDXL_COND_WINDOW;
    double flops =
        sdxl_clip_flops(m.te1, B, L, sdxl_cond_layer(m.te1, 1)) + sdxl_clip_flops(m.te2, B, L, m.te2->cfg.layers);
    double peak = bench_peak_gflops(prec, threads);
    double gf = flops / best / 1e9;
    sdxl_mem_query(&ms);
    printf("encode pair (%lld x 77 tokens each, %s, %d threads): best %.3f s, mean %.3f s over %d runs\n",
           (long long)windows, prec == SDXL_PREC_BF16 ? "bf16" : "f32", threads, best, sum / reps, reps);
    printf("CPU time: best %.3f s per pair, %.3f s per thread (spin-waits at barriers included)\n", best_cpu,
           best_cpu / threads);
    printf("%.1f GFLOP per pair, %.0f GFLOP/s, machine peak %.0f GFLOP/s (%s, %d threads): %.0f%% of peak\n",
           flops / 1e9, gf, peak, prec == SDXL_PREC_BF16 ? "bf16" : "f32", threads, peak > 0 ? 100 * gf / peak : 0.0);
    printf("RSS after load %.2f GB, now %.2f GB, peak %.2f GB (the peak includes the mapped file during load)\n",
           rss_loaded, (double)ms.rss / 1e9, (double)ms.peak_rss / 1e9);
    sdxl_cond_model_free(&m);
    sdxl_tokenizer_free(tok);
    sdxl_compute_free(c);
    return 0;
}
