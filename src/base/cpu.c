#include "base/cpu.h"

#include <cpuid.h>
#include <stdio.h>
#include <string.h>

static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

void sdxl_cpu_detect(sdxl_cpu *c) {
    memset(c, 0, sizeof *c);
    unsigned a, b, cx, d;
    if (!__get_cpuid(1, &a, &b, &cx, &d)) return;
    int osxsave = (cx >> 27) & 1;
    int avx = (cx >> 28) & 1;
    c->fma = (cx >> 12) & 1;
    c->f16c = (cx >> 29) & 1;
    if (!osxsave || !avx) return;
    unsigned long long xcr0 = xgetbv0();
    int ymm_ok = (xcr0 & 0x6) == 0x6;
    int zmm_ok = (xcr0 & 0xe6) == 0xe6;
    if (!ymm_ok) {
        c->fma = c->f16c = 0;
        return;
    }
    unsigned max = __get_cpuid_max(0, NULL);
    if (max < 7) return;
    __cpuid_count(7, 0, a, b, cx, d);
    c->avx2 = (b >> 5) & 1;
    if (zmm_ok) {
        c->avx512f = (b >> 16) & 1;
        c->avx512dq = (b >> 17) & 1;
        c->avx512bw = (b >> 30) & 1;
        c->avx512vl = (b >> 31) & 1;
        c->avx512_vnni = (cx >> 11) & 1;
    }
    c->amx_bf16 = (d >> 22) & 1;
    __cpuid_count(7, 1, a, b, cx, d);
    c->avx_vnni = (a >> 4) & 1;
    if (zmm_ok) c->avx512_bf16 = (a >> 5) & 1;
}

int sdxl_cpu_has_avx512(const sdxl_cpu *c) { return c->avx512f && c->avx512bw && c->avx512vl && c->avx512dq; }

void sdxl_cpu_describe(const sdxl_cpu *c, char *buf, int cap) {
    struct { int on; const char *name; } f[] = {
        {c->avx2, "avx2"}, {c->fma, "fma"}, {c->f16c, "f16c"}, {c->avx512f, "avx512f"},
        {c->avx512bw, "avx512bw"}, {c->avx512vl, "avx512vl"}, {c->avx512dq, "avx512dq"},
        {c->avx512_bf16, "avx512_bf16"}, {c->avx512_vnni, "avx512_vnni"}, {c->avx_vnni, "avx_vnni"},
        {c->amx_bf16, "amx_bf16"},
    };
    int n = 0;
    if (cap > 0) buf[0] = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (!f[i].on) continue;
        int w = snprintf(buf + n, (size_t)(cap - n), "%s%s", n ? " " : "", f[i].name);
        if (w < 0 || w >= cap - n) break;
        n += w;
    }
}
