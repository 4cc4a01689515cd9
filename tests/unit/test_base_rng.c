/* base/rng: bit-exact torch CPU streams (values from the golden torch_rng.py emulation, which
 * matches torch 1.13 bit for bit), Philox 4x32-10 known-answer vectors (Random123's published
 * KAT), A1111 Philox normals derived from the published algorithm, and statistics of the rest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "check.h"

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void expect_bits(const char *what, const float *got, const uint32_t *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        CHECK(bits(got[i]) == want[i], "%s[%zu]: got 0x%08x (%.9g), want 0x%08x", what, i, bits(got[i]),
              (double)got[i], want[i]);
}

static void test_torch(void) {
    sdxl_rng r;
    float v[64];

    static const uint32_t randn42_5[] = {0x3eac62ae, 0x3e03e69d, 0x3e7016e7, 0x3e6bdc6c, 0xbf8fb9c2};
    sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, 42);
    sdxl_rng_randn(&r, v, 5);
    expect_bits("randn(42, 5) scalar path", v, randn42_5, 5);

    static const uint32_t randn42_17[] = {0x3ff6a529, 0xbe236d85, 0xbefeaae4, 0x3ee111d8, 0xbf4214e2, 0x3f8a0650,
                                          0x3f4d0144, 0x3fd71e93, 0x3eb63345, 0x3fa5f12f, 0x3f1c4788, 0x3faad8b0,
                                          0xbe6d2eed, 0x3d2b0c00, 0xbe80ce7a, 0x3f5c1fb0, 0xbe9e9482};
    sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, 42);
    sdxl_rng_randn(&r, v, 17);
    expect_bits("randn(42, 17) vector path + redrawn tail", v, randn42_17, 17);

    static const uint32_t randn42_17_def[] = {0x3ff6a527, 0xbe236d7b, 0xbefeaae2, 0x3ee111d7, 0xbf4214e2, 0x3f8a0650,
                                              0x3f4d0143, 0x3fd71e93, 0x3eb63341, 0x3fa5f12f, 0x3f1c4788, 0x3faad8b0,
                                              0xbe6d2eed, 0x3d2b0c00, 0xbe80ce7a, 0x3f5c1fb0, 0xbe9e9487};
    sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU_SCALAR, 42);
    sdxl_rng_randn(&r, v, 17);
    expect_bits("randn(42, 17) default kernel", v, randn42_17_def, 17);

    static const uint32_t rand42_3[] = {0x3f61dc66, 0x3f6a3db3, 0x3ec406b8};
    sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, 42);
    sdxl_rng_rand(&r, v, 3);
    expect_bits("rand(42, 3)", v, rand42_3, 3);

    /* successive draws: 3 (scalar, caches a 4th), 40 (vector, cache untouched), 1 (uses cache), 2 */
    static const uint32_t s_a[] = {0x3d3cf34c, 0x3ece07be, 0xbf8179c9};
    static const uint32_t s_b_head[] = {0xbea0f2cc, 0xbefe1cc3, 0x3dfcfc6a, 0xbe1a98cd};
    static const uint32_t s_b_tail[] = {0x3d045839, 0xbfd4632f, 0xbff04c53, 0x3f3cbc27};
    static const uint32_t s_c[] = {0x3e5df0a1};
    static const uint32_t s_d[] = {0x3ea39e56, 0xbf8265ad};
    sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, 1234);
    sdxl_rng_randn(&r, v, 3);
    expect_bits("seq 3", v, s_a, 3);
    sdxl_rng_randn(&r, v, 40);
    expect_bits("seq 40 head", v, s_b_head, 4);
    expect_bits("seq 40 tail", v + 36, s_b_tail, 4);
    sdxl_rng_randn(&r, v, 1);
    expect_bits("seq 1 (cached value)", v, s_c, 1);
    sdxl_rng_randn(&r, v, 2);
    expect_bits("seq 2", v, s_d, 2);

    /* a copy of the struct forks the stream */
    sdxl_rng a, b;
    sdxl_rng_init(&a, SDXL_RNG_TORCH_CPU, 99);
    sdxl_rng_randn(&a, v, 3);
    b = a;
    float x[20], y[20];
    sdxl_rng_randn(&a, x, 20);
    sdxl_rng_randn(&b, y, 20);
    CHECK(!memcmp(x, y, sizeof x), "copied generator continues identically");

    /* the high 32 bits of the seed are ignored, as by manual_seed */
    static const uint32_t wrap[] = {0x3eac62ae, 0x3e03e69d};
    sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, (1ull << 32) + 42);
    sdxl_rng_randn(&r, v, 2);
    expect_bits("seed 2^32+42 == 42", v, wrap, 2);

    /* a latent-sized draw crosses many mt19937 refills */
    size_t n = 4 * 128 * 128;
    float *big = malloc(n * sizeof(float));
    CHECK(big != NULL, "alloc");
    if (big) {
        sdxl_rng_init(&r, SDXL_RNG_TORCH_CPU, 7);
        sdxl_rng_randn(&r, big, n);
        static const uint32_t head[] = {0xbf51f456, 0x3eca902b}, tail[] = {0x3f7a3110, 0x3ff1517b};
        expect_bits("randn(7, 65536) head", big, head, 2);
        expect_bits("randn(7, 65536) tail", big + n - 2, tail, 2);
        double sum = 0;
        for (size_t i = 0; i < n; i++) sum += big[i];
        /* the float64 sum of the exact same floats in the same order is exact to the last bit */
        CHECK(sum == -375.33705472301517, "randn(7, 65536) sum %.17g", sum);
        free(big);
    }
}

static void test_philox(void) {
    /* Random123 kat_vectors, philox4x32 10 rounds */
    struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (int k = 0; k < 3; k++) {
        uint32_t c[4];
        memcpy(c, kat[k].ctr, sizeof c);
        sdxl_philox4x32_10(c, kat[k].key);
        CHECK(!memcmp(c, kat[k].out, sizeof c), "philox KAT %d: %08x %08x %08x %08x", k, c[0], c[1], c[2], c[3]);
    }
    /* the generator's first value of seed 0 is KAT 0's words through A1111's Box-Muller */
    {
        const double inv = (double)2.3283064e-10f, i2p = (double)(float)(2.3283064e-10 * 6.2831855);
        double u = kat[0].out[0] * inv + (double)(2.3283064e-10f / 2.0f), v = kat[0].out[1] * i2p + (double)((float)i2p / 2.0f);
        float want = (float)(sqrt(-2.0 * log(u)) * sin(v)), got;
        sdxl_rng g;
        sdxl_rng_init(&g, SDXL_RNG_PHILOX, 0);
        sdxl_rng_randn(&g, &got, 1);
        CHECK(bits(got) == bits(want), "philox seed 0 value 0 from KAT 0: %.9g want %.9g", got, want);
    }
    /* A1111 NV generator: counter (offset, 0, i, 0), key = seed, u = x*2^-32 + 2^-33,
     * v = y*2pi*2^-32 + pi*2^-32, value sqrt(-2 ln u) sin v; each call bumps the offset */
    static const uint32_t p0[] = {0x3e46ace2, 0x400a53f3, 0xbe302e20, 0x3f595bff, 0xbff652b7, 0x3f272a0b};
    static const uint32_t p1[] = {0x3e0e7a0f, 0xbddda06f, 0xbf37a8fb};
    static const uint32_t pbig[] = {0x3f889704, 0xbf960201, 0x3f367d12};
    sdxl_rng r;
    float v[8];
    sdxl_rng_init(&r, SDXL_RNG_PHILOX, 42);
    sdxl_rng_randn(&r, v, 6);
    expect_bits("philox(42) call 0", v, p0, 6);
    sdxl_rng_randn(&r, v, 3);
    expect_bits("philox(42) call 1", v, p1, 3);
    sdxl_rng_init(&r, SDXL_RNG_PHILOX, (1ull << 40) + 5);
    sdxl_rng_randn(&r, v, 3);
    expect_bits("philox(2^40+5): 64-bit key", v, pbig, 3);
}

/* Moments of n normals: mean within 5 standard errors of 0, variance within 5 of 1. */
static void check_moments(sdxl_rng_kind kind, size_t n) {
    float *x = malloc(n * sizeof(float));
    CHECK(x != NULL, "alloc");
    if (!x) return;
    sdxl_rng r;
    sdxl_rng_init(&r, kind, 2024);
    sdxl_rng_randn(&r, x, n);
    double m = 0, m2 = 0;
    int finite = 1;
    for (size_t i = 0; i < n; i++) {
        finite &= isfinite(x[i]) != 0;
        m += x[i];
        m2 += (double)x[i] * x[i];
    }
    m /= (double)n;
    m2 = m2 / (double)n - m * m;
    double se = 1.0 / sqrt((double)n);
    CHECK(finite, "%s: all finite", sdxl_rng_kind_name(kind));
    CHECK(fabs(m) < 5 * se, "%s: mean %g", sdxl_rng_kind_name(kind), m);
    CHECK(fabs(m2 - 1) < 5 * sqrt(2.0) * se, "%s: variance %g", sdxl_rng_kind_name(kind), m2);
    sdxl_rng_rand(&r, x, n);
    int in01 = 1;
    for (size_t i = 0; i < n; i++) in01 &= x[i] >= 0.0f && x[i] < 1.0f;
    CHECK(in01, "%s: rand in [0,1)", sdxl_rng_kind_name(kind));
    free(x);
}

int main(void) {
    test_torch();
    test_philox();
    check_moments(SDXL_RNG_TORCH_CPU, 1 << 18);
    check_moments(SDXL_RNG_PHILOX, 1 << 18);
    check_moments(SDXL_RNG_FAST, 1 << 18);
    float v[5];
    sdxl_rng r;
    sdxl_rng_init(&r, SDXL_RNG_FAST, 1);
    sdxl_rng_randn(&r, v, 5);
    CHECK(isfinite(v[0]) && isfinite(v[4]), "fast: short draws");
    CHECK(sdxl_rng_kind_parse("NV") == SDXL_RNG_PHILOX && sdxl_rng_kind_parse("cpu") == SDXL_RNG_TORCH_CPU &&
              sdxl_rng_kind_parse("nope") == -1,
          "kind names");
    return check_done();
}
