#include "base/rng.h"

#include <math.h>
#include <string.h>
#include <strings.h>

/* ---- mt19937 (the engine behind at::mt19937 and std::mt19937) ---------------------------- */

static void mt_seed(sdxl_rng *r, uint32_t s) {
    r->mt[0] = s;
    for (int i = 1; i < 624; i++) r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->mti = 624;
}

static uint32_t mt_next(sdxl_rng *r) {
    if (r->mti >= 624) {
        for (int i = 0; i < 624; i++) {
            uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % 624] & 0x7fffffffu);
            r->mt[i] = r->mt[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        r->mti = 0;
    }
    uint32_t y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* ---- xoshiro256++ seeded through splitmix64 ---------------------------------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xs_next(sdxl_rng *r) {
    uint64_t *s = r->xs;
    uint64_t out = rotl64(s[0] + s[3], 23) + s[0];
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

void sdxl_rng_init(sdxl_rng *r, sdxl_rng_kind kind, uint64_t seed) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->seed = seed;
    mt_seed(r, (uint32_t)(seed & 0xffffffffu));
    uint64_t sm = seed;
    for (int i = 0; i < 4; i++) r->xs[i] = splitmix64(&sm);
}

uint32_t sdxl_rng_u32(sdxl_rng *r) {
    if (r->kind == SDXL_RNG_FAST) return (uint32_t)(xs_next(r) >> 32);
    return mt_next(r);
}

/* at::uniform_real_distribution<float>(0, 1): the low 24 bits of one draw. */
static float uniform_f32(sdxl_rng *r) { return (float)(sdxl_rng_u32(r) & 0xffffffu) * 0x1p-24f; }

/* at::uniform_real_distribution<double>: 53 bits of random64() = (first << 32) | second. */
static double uniform_f64(sdxl_rng *r) {
    uint64_t hi = mt_next(r), lo = mt_next(r);
    uint64_t x = (hi << 32) | lo;
    return (double)(x & ((1ull << 53) - 1)) * 0x1p-53;
}

/* ---- the float32 log/sincos of torch's AVX2 normal kernel (cephes, avx_mathfun.h) ---------
 * torch's binary was built with FMA contraction; the fused products are spelled out as fmaf and
 * every other operation is rounded separately (this file is built with -ffp-contract=off). */

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float log_ps(float x) {
    static const float P[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                               -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                               2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
    const float min_norm = u2f(0x00800000u);
    if (!(x >= min_norm)) x = min_norm;
    uint32_t bits = f2u(x);
    float e = (float)((int32_t)(bits >> 23) - 127) + 1.0f;
    x = u2f((bits & ~0x7f800000u) | f2u(0.5f));
    int mask = x < 0.707106781186547524f;
    float tmp = mask ? x : 0.0f;
    x = x - 1.0f;
    e = e - (mask ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = P[0];
    for (int i = 1; i < 9; i++) y = fmaf(y, x, P[i]);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

static void sincos_ps(float x, float *s_out, float *c_out) {
    int sign_sin = signbit(x) != 0;
    x = fabsf(x);
    int32_t j = (int32_t)(x * 1.27323954473516f);
    j = (j + 1) & ~1;
    float y = (float)j;
    int swap_sin = (j & 4) != 0;
    int poly = (j & 2) == 0;
    int sign_cos = (~(j - 2) & 4) != 0;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float yc = fmaf(fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f), z, 4.166664568298827E-002f) * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f), z, -1.6666654611E-1f) * z;
    ys = fmaf(ys, x, x);
    float s = poly ? ys : yc, c = poly ? yc : ys;
    if (sign_sin ^ swap_sin) s = -s;
    if (sign_cos) c = -c;
    *s_out = s;
    *c_out = c;
}

/* Box-Muller over 16 uniforms in place: d[j], d[j+8] <- r cos, r sin with u1 = 1-d[j], u2 = d[j+8]. */
static void fill16_avx2(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j], u2 = d[j + 8];
        float radius = sqrtf(-2.0f * log_ps(u1));
        float s, c;
        sincos_ps(6.2831855f * u2, &s, &c);
        d[j] = radius * c;
        d[j + 8] = radius * s;
    }
}

static void fill16_scalar(float *d) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float radius = sqrtf(-2.0f * logf(u1));
        float theta = (float)(2.0 * M_PI * (double)d[j + 8]);
        d[j] = radius * cosf(theta);
        d[j + 8] = radius * sinf(theta);
    }
}

void sdxl_rng_rand(sdxl_rng *r, float *out, size_t n) {
    if (r->kind == SDXL_RNG_PHILOX) {
        uint32_t key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
        for (size_t i = 0; i < n; i++) {
            uint32_t c[4] = {(uint32_t)r->philox_offset, 0, (uint32_t)i, (uint32_t)((uint64_t)i >> 32)};
            sdxl_philox4x32_10(c, key);
            out[i] = (float)(c[0] >> 8) * 0x1p-24f;
        }
        r->philox_offset++;
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_f32(r);
}

void sdxl_philox4x32_10(uint32_t ctr[4], const uint32_t key_in[2]) {
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)ctr[0] * 0xD2511F53u, p1 = (uint64_t)ctr[2] * 0xCD9E8D57u;
        uint32_t c1 = ctr[1], c3 = ctr[3];
        ctr[0] = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        ctr[1] = (uint32_t)p1;
        ctr[2] = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        ctr[3] = (uint32_t)p0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

/* A1111 rng_philox.py: u = x*2^-32 + 2^-33 and v = y*(2pi*2^-32) + (2pi*2^-33), in double
 * from the float32 constants it uses; output r*sin(v). */
static void philox_randn(sdxl_rng *r, float *out, size_t n) {
    const double inv = (double)2.3283064e-10f;
    const double inv2pi = (double)(float)(2.3283064e-10 * 6.2831855);
    const double half = (double)(2.3283064e-10f / 2.0f), half2pi = (double)((float)(2.3283064e-10 * 6.2831855) / 2.0f);
    uint32_t key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
    for (size_t i = 0; i < n; i++) {
        uint32_t c[4] = {(uint32_t)r->philox_offset, 0, (uint32_t)i, 0};
        sdxl_philox4x32_10(c, key);
        double u = (double)c[0] * inv + half;
        double v = (double)c[1] * inv2pi + half2pi;
        double s = sqrt(-2.0 * log(u));
        out[i] = (float)(s * sin(v));
    }
    r->philox_offset++;
}

void sdxl_rng_randn(sdxl_rng *r, float *out, size_t n) {
    if (r->kind == SDXL_RNG_PHILOX) {
        philox_randn(r, out, n);
        return;
    }
    void (*fill)(float *) = r->kind == SDXL_RNG_TORCH_CPU_SCALAR ? fill16_scalar : fill16_avx2;
    if (n >= 16) {
        for (size_t i = 0; i < n; i++) out[i] = uniform_f32(r);
        for (size_t i = 0; i + 16 <= n; i += 16) fill(out + i);
        if (n % 16) {
            float *tail = out + n - 16;
            for (int i = 0; i < 16; i++) tail[i] = uniform_f32(r);
            fill(tail);
        }
        return;
    }
    if (r->kind == SDXL_RNG_FAST) {
        float tmp[16];
        for (int i = 0; i < 16; i++) tmp[i] = uniform_f32(r);
        fill16_avx2(tmp);
        memcpy(out, tmp, n * sizeof(float));
        return;
    }
    /* torch's scalar path: at::normal_distribution<double> with its cached second value */
    for (size_t i = 0; i < n; i++) {
        if (r->has_next_normal) {
            out[i] = (float)r->next_normal;
            r->has_next_normal = 0;
            continue;
        }
        double u1 = uniform_f64(r), u2 = uniform_f64(r);
        double rad = sqrt(-2.0 * log(1.0 - u2));
        double th = 2.0 * M_PI * u1;
        r->next_normal = rad * sin(th);
        r->has_next_normal = 1;
        out[i] = (float)(rad * cos(th));
    }
}

static const struct {
    const char *name;
    sdxl_rng_kind kind;
} RNG_NAMES[] = {
    {"torch", SDXL_RNG_TORCH_CPU},   {"cpu", SDXL_RNG_TORCH_CPU},       {"torch_cpu", SDXL_RNG_TORCH_CPU},
    {"torch_scalar", SDXL_RNG_TORCH_CPU_SCALAR}, {"philox", SDXL_RNG_PHILOX}, {"nv", SDXL_RNG_PHILOX},
    {"fast", SDXL_RNG_FAST},
};

int sdxl_rng_kind_parse(const char *name) {
    if (!name) return -1;
    for (size_t i = 0; i < sizeof RNG_NAMES / sizeof RNG_NAMES[0]; i++)
        if (!strcasecmp(name, RNG_NAMES[i].name)) return (int)RNG_NAMES[i].kind;
    return -1;
}

const char *sdxl_rng_kind_name(sdxl_rng_kind k) {
    switch (k) {
    case SDXL_RNG_TORCH_CPU: return "torch";
    case SDXL_RNG_TORCH_CPU_SCALAR: return "torch_scalar";
    case SDXL_RNG_PHILOX: return "philox";
    case SDXL_RNG_FAST: return "fast";
    }
    return "?";
}
