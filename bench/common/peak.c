/* This run's machine peak: every thread runs independent multiply-add chains that live in
 * registers (no loads), so the figure is the core's FMA (or dot-product) throughput.
 *
 * BENCH_CLOCK=cpu switches both clocks to CPU time, for machines shared with other tenants:
 * bench_now() returns the process's CPU seconds divided by the OpenMP thread count (what the
 * wall clock would read if every thread had its core to itself; spin-waits count as busy),
 * and the peak loop times each thread by its own CPU clock. */
#include "peak.h"

#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cpu.h"

static int cpu_clock(void) {
    const char *s = getenv("BENCH_CLOCK");
    return s && !strcmp(s, "cpu");
}

static double read_clock(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double bench_now(void) {
    if (cpu_clock()) return read_clock(CLOCK_PROCESS_CPUTIME_ID) / (double)omp_get_max_threads();
    return read_clock(CLOCK_MONOTONIC);
}

/* The peak loop's per-thread clock. */
static double peak_now(void) { return read_clock(cpu_clock() ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC); }

#define PEAK_SECONDS 0.3
#define PEAK_INNER 4096 /* iterations between clock reads */

/* 16 chains: FMA latency 4 x 2 pipes needs 8 in flight; vdpbf16ps, slower, measured 3% higher
 * with 16 than with 12. Returns iterations. */
__attribute__((target("avx512f"))) static long long run_fma(double seconds, float seed) {
    __m512 a0 = _mm512_set1_ps(seed), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512 a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    const __m512 m = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    long long it = 0;
    double t0 = peak_now();
    do {
        for (int i = 0; i < PEAK_INNER; i++) {
            a0 = _mm512_fmadd_ps(a0, m, b);
            a1 = _mm512_fmadd_ps(a1, m, b);
            a2 = _mm512_fmadd_ps(a2, m, b);
            a3 = _mm512_fmadd_ps(a3, m, b);
            a4 = _mm512_fmadd_ps(a4, m, b);
            a5 = _mm512_fmadd_ps(a5, m, b);
            a6 = _mm512_fmadd_ps(a6, m, b);
            a7 = _mm512_fmadd_ps(a7, m, b);
            a8 = _mm512_fmadd_ps(a8, m, b);
            a9 = _mm512_fmadd_ps(a9, m, b);
            a10 = _mm512_fmadd_ps(a10, m, b);
            a11 = _mm512_fmadd_ps(a11, m, b);
            a12 = _mm512_fmadd_ps(a12, m, b);
            a13 = _mm512_fmadd_ps(a13, m, b);
            a14 = _mm512_fmadd_ps(a14, m, b);
            a15 = _mm512_fmadd_ps(a15, m, b);
            /* All sixteen: a chain the compiler can see is identical to another gets merged
             * with it, and the loop would then run fewer instructions than it counts. */
            __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
            __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
        }
        it += PEAK_INNER;
    } while (peak_now() - t0 < seconds);
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15)));
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return it;
}

__attribute__((target("avx512f,avx512bf16"))) static long long run_dpbf16(double seconds, float seed) {
    __m512 a0 = _mm512_set1_ps(seed), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512 a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    long long it = 0;
    double t0 = peak_now();
    do {
        for (int i = 0; i < PEAK_INNER; i++) {
            a0 = _mm512_dpbf16_ps(a0, x, y);
            a1 = _mm512_dpbf16_ps(a1, x, y);
            a2 = _mm512_dpbf16_ps(a2, x, y);
            a3 = _mm512_dpbf16_ps(a3, x, y);
            a4 = _mm512_dpbf16_ps(a4, x, y);
            a5 = _mm512_dpbf16_ps(a5, x, y);
            a6 = _mm512_dpbf16_ps(a6, x, y);
            a7 = _mm512_dpbf16_ps(a7, x, y);
            a8 = _mm512_dpbf16_ps(a8, x, y);
            a9 = _mm512_dpbf16_ps(a9, x, y);
            a10 = _mm512_dpbf16_ps(a10, x, y);
            a11 = _mm512_dpbf16_ps(a11, x, y);
            a12 = _mm512_dpbf16_ps(a12, x, y);
            a13 = _mm512_dpbf16_ps(a13, x, y);
            a14 = _mm512_dpbf16_ps(a14, x, y);
            a15 = _mm512_dpbf16_ps(a15, x, y);
            /* All sixteen: a chain the compiler can see is identical to another gets merged
             * with it, and the loop would then run fewer instructions than it counts. */
            __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
            __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
        }
        it += PEAK_INNER;
    } while (peak_now() - t0 < seconds);
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15)));
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return it;
}

double bench_peak_gflops(sdxl_prec prec, int threads) {
    sdxl_cpu cpu;
    sdxl_cpu_detect(&cpu);
    if (!sdxl_cpu_has_avx512(&cpu)) return 0;
    if (prec == SDXL_PREC_BF16 && !cpu.avx512_bf16) return 0;
    if (threads <= 0) threads = omp_get_max_threads();
    /* flops per iteration: 16 instructions x 16 lanes x (fma: 2 | dpbf16: 2 pairs x 2) */
    const double per_it = prec == SDXL_PREC_BF16 ? 16.0 * 64.0 : 16.0 * 32.0;
    double flops = 0, t_max = 0;
#pragma omp parallel num_threads(threads) reduction(+ : flops) reduction(max : t_max)
    {
        double t0 = peak_now();
        long long it = prec == SDXL_PREC_BF16 ? run_dpbf16(PEAK_SECONDS, 1.0f) : run_fma(PEAK_SECONDS, 1.0f);
        t_max = peak_now() - t0;
        flops = (double)it * per_it;
    }
    return t_max > 0 ? flops / t_max * 1e-9 : 0;
}
