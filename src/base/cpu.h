/* CPU features detected at run time (cpuid + OS support for the register state). */
#ifndef SDXL_BASE_CPU_H
#define SDXL_BASE_CPU_H

typedef struct sdxl_cpu {
    int avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512dq;
    int avx512_bf16, avx512_vnni, avx_vnni, amx_bf16;
} sdxl_cpu;

void sdxl_cpu_detect(sdxl_cpu *out);
/* True when the AVX-512 kernels (F+BW+VL+DQ) may run. */
int sdxl_cpu_has_avx512(const sdxl_cpu *c);
/* Space-separated names of the present features, into buf. */
void sdxl_cpu_describe(const sdxl_cpu *c, char *buf, int cap);

#endif
