/* dtype conversions: the AVX-512 paths equal the scalar paths bit for bit, round to nearest
 * even, keep NaN a NaN and handle f16 subnormals and overflow; layout transposes are exact;
 * run-time SIMD selection agrees with base/cpu.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "check.h"
#include "tensor/ops_internal.h"
#include "tensor/tensor.h"

#define N 4099

static void fill_special(float *x, int n, uint64_t *s) {
    check_fill_uniform(x, n, -70000.0f, 70000.0f, s);
    for (int i = 0; i < n; i += 7) x[i] *= 1e-6f;  /* f16 subnormal range */
    for (int i = 3; i < n; i += 11) x[i] *= 1e-3f;
    const float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65520.0f, 6.1e-5f, 5.96e-8f, 1.0f + 1.0f / 2048};
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++) x[i * 13] = sp[i];
}

static void run(uint16_t *h, uint16_t *b, float *f16back, float *bfback, const float *x) {
    sdxl_f32_to_f16(x, h, N);
    sdxl_f32_to_bf16(x, b, N);
    sdxl_f16_to_f32(h, f16back, N);
    sdxl_bf16_to_f32(b, bfback, N);
}

int main(void) {
    uint64_t s = 5;
    float *x = malloc(N * 4), *fa = malloc(N * 4), *ba = malloc(N * 4), *fb = malloc(N * 4), *bb = malloc(N * 4);
    uint16_t *ha = malloc(N * 2), *bha = malloc(N * 2), *hb = malloc(N * 2), *bhb = malloc(N * 2);
    fill_special(x, N, &s);

    sdxl_cpu cpu;
    sdxl_cpu_detect(&cpu);
    int want = sdxl_cpu_has_avx512(&cpu) ? (cpu.avx512_bf16 ? 2 : 1) : 0;
    CHECK(sdxl_simd_level() == want, "simd level %d agrees with base/cpu.h (%d)", sdxl_simd_level(), want);

    run(ha, bha, fa, ba, x);
    setenv("SDXL_NO_AVX512", "1", 1);
    CHECK(sdxl_simd_level() == 0, "SDXL_NO_AVX512 selects the portable paths");
    run(hb, bhb, fb, bb, x);
    unsetenv("SDXL_NO_AVX512");

    CHECK(memcmp(ha, hb, N * 2) == 0, "f32->f16 vector equals scalar");
    CHECK(memcmp(bha, bhb, N * 2) == 0, "f32->bf16 vector equals scalar");
    int bad = 0;
    for (int i = 0; i < N; i++) {
        if (isnan(x[i])) {
            bad += !isnan(fb[i]) || !isnan(bb[i]) || !isnan(fa[i]) || !isnan(ba[i]);
            continue;
        }
        /* round to nearest: the back-converted value is within half a unit of the last place */
        double ulp_bf = fabs(x[i]) < 1e-37 ? 1e-40 : ldexp(1.0, ilogb(x[i]) - 7);
        bad += fabs((double)bb[i] - x[i]) > ulp_bf / 2 && !isinf(x[i]);
        bad += memcmp(&fa[i], &fb[i], 4) != 0 || memcmp(&ba[i], &bb[i], 4) != 0;
        if (fabs(x[i]) < 65504.0f) {
            double ax = fabs(x[i]), ulp_h = ax < 6.103515625e-5 ? ldexp(1.0, -24) : ldexp(1.0, ilogb(x[i]) - 10);
            bad += fabs((double)fb[i] - x[i]) > ulp_h / 2;
        }
    }
    CHECK(bad == 0, "round trips within half an ulp, NaN kept: %d bad", bad);
    CHECK(hb[13 * 6] == 0x7c00, "65520 rounds to f16 infinity (got %04x)", hb[13 * 6]);
    CHECK(hb[13 * 5] == 0x7bff, "65504 is the largest f16");

    /* ties to even in bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 */
    float t[2] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256};
    uint16_t tb[2];
    sdxl_f32_to_bf16(t, tb, 2);
    CHECK(tb[0] == 0x3f80 && tb[1] == 0x3f82, "bf16 ties to even (%04x %04x)", tb[0], tb[1]);

    /* NCHW <-> NHWC */
    float a[2 * 3 * 5 * 7], bq[2 * 3 * 5 * 7], c2[2 * 3 * 5 * 7];
    for (int i = 0; i < 210; i++) a[i] = (float)i;
    sdxl_nchw_to_nhwc(a, bq, 2, 3, 5, 7);
    CHECK(bq[((1 * 5 + 2) * 7 + 4) * 3 + 1] == a[((1 * 3 + 1) * 5 + 2) * 7 + 4], "nchw->nhwc index map");
    sdxl_nhwc_to_nchw(bq, c2, 2, 5, 7, 3);
    CHECK(memcmp(a, c2, sizeof a) == 0, "nhwc->nchw inverts nchw->nhwc");
    free(x), free(fa), free(ba), free(fb), free(bb), free(ha), free(bha), free(hb), free(bhb);
    return check_done();
}
