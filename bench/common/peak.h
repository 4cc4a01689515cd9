/* Shared benchmark helpers: wall clock and this run's machine peak from a register-only loop. */
#ifndef SDXL_BENCH_PEAK_H
#define SDXL_BENCH_PEAK_H

#include "tensor/tensor.h"

/* Seconds: monotonic wall clock, or with BENCH_CLOCK=cpu the process's CPU time divided by the
 * thread count (for machines shared with other tenants; exact for one thread). */
double bench_now(void);
/* Peak GFLOP/s (multiply-add = 2 flops) of `threads` threads running independent FMA chains
 * in registers: vfmadd231ps for f32, vdpbf16ps for bf16 (0 if the CPU lacks it). */
double bench_peak_gflops(sdxl_prec prec, int threads);

#endif
