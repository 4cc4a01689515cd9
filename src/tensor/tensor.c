#include "tensor/tensor.h"
#include "tensor/ops_internal.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>


size_t sdxl_dtype_size(sdxl_dtype t) { return t == SDXL_F32 ? 4 : t == SDXL_F8_E4M3 || t == SDXL_F8_E5M2 ? 1 : 2; }

sdxl_tensor sdxl_tensor_make(sdxl_dtype t, void *data, int ndim, const int64_t *ne) {
    sdxl_tensor x;
    memset(&x, 0, sizeof x);
    x.dtype = t;
    x.ndim = ndim;
    x.data = data;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        x.ne[i] = ne[i];
        x.nb[i] = s;
        s *= ne[i];
    }
    return x;
}

int64_t sdxl_tensor_numel(const sdxl_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}

int sdxl_tensor_is_contiguous(const sdxl_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->ne[i] != 1 && t->nb[i] != s) return 0;
        s *= t->ne[i];
    }
    return 1;
}

sdxl_tensor sdxl_tensor_slice(const sdxl_tensor *t, int dim, int64_t start, int64_t len) {
    sdxl_tensor v = *t;
    v.ne[dim] = len;
    v.data = (char *)t->data + (size_t)(start * t->nb[dim]) * sdxl_dtype_size(t->dtype);
    return v;
}

/* ---- scalar conversions (the reference for the vector paths) ---- */

static float f16_to_f32_1(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t f32_to_f16_1(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                  /* result subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((ax - 0x38000000u) >> 13);
    uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static float bf16_to_f32_1(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t f32_to_bf16_1(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* E5M2 is the top byte of an f16. E4M3 without its sign, shifted left by 7, is an f16 (normal
 * or subnormal alike) of 2^-8 times its value; the scaling by 256 is exact. */
static uint16_t f8e4m3_as_f16(uint8_t x) { return (uint16_t)(((x & 0x80) << 8) | ((x & 0x7f) << 7)); }

static float f8e4m3_to_f32_1(uint8_t x) {
    if ((x & 0x7f) == 0x7f) return (x & 0x80) ? -NAN : NAN;
    return f16_to_f32_1(f8e4m3_as_f16(x)) * 256.0f;
}

static float f8e5m2_to_f32_1(uint8_t x) { return f16_to_f32_1((uint16_t)(x << 8)); }

/* ---- AVX-512 paths ---- */

__attribute__((target("avx512f,f16c"))) static void f16_to_f32_avx512(const uint16_t *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
    for (; i < n; i++) d[i] = f16_to_f32_1(s[i]);
}

__attribute__((target("avx512f,f16c"))) static void f32_to_f16_avx512(const float *s, uint16_t *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(d + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) d[i] = f32_to_f16_1(s[i]);
}

__attribute__((target("avx512f"))) static void bf16_to_f32_avx512(const uint16_t *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + i)));
        _mm512_storeu_si512(d + i, _mm512_slli_epi32(v, 16));
    }
    for (; i < n; i++) d[i] = bf16_to_f32_1(s[i]);
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) static void f32_to_bf16_avx512bf16(const float *s, uint16_t *d,
                                                                                         size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + i));
        _mm256_storeu_si256((__m256i *)(d + i), (__m256i)v);
    }
    for (; i < n; i++) d[i] = f32_to_bf16_1(s[i]);
}

__attribute__((target("avx512f,avx512bw,f16c"))) static void f8e5m2_to_f32_avx512(const uint8_t *s, float *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(s + i))), 8);
        _mm512_storeu_ps(d + i, _mm512_cvtph_ps(h));
    }
    for (; i < n; i++) d[i] = f8e5m2_to_f32_1(s[i]);
}

__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static void f8e4m3_to_f32_avx512(const uint8_t *s, float *d, size_t n) {
    const __m256i mag = _mm256_set1_epi16(0x7f), sign = _mm256_set1_epi16(0x80);
    const __m512 scale = _mm512_set1_ps(256.0f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(s + i)));
        __m256i m = _mm256_and_si256(x, mag);
        __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(x, sign), 8), _mm256_slli_epi16(m, 7));
        __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(h), scale);
        __mmask16 nan = _mm256_cmpeq_epi16_mask(m, mag);
        __m512i qnan = _mm512_or_si512(_mm512_castps_si512(f), _mm512_set1_epi32(0x7fc00000)); /* keeps the sign */
        f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(qnan));
        _mm512_storeu_ps(d + i, f);
    }
    for (; i < n; i++) d[i] = f8e4m3_to_f32_1(s[i]);
}

/* sdxl_simd_level is cheap (cached cpuid) and honours SDXL_NO_AVX512, so tests reach the scalar paths. */
/* Every AVX-512 CPU has F16C; clang does not know "f16c" as a feature name. */
static int have_avx512(void) { return sdxl_simd_level() >= 1; }

static int have_avx512bf16(void) { return sdxl_simd_level() >= 2; }

void sdxl_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
    if (n >= 16 && have_avx512()) {
        f16_to_f32_avx512(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32_1(src[i]);
}

void sdxl_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
    if (n >= 16 && have_avx512()) {
        f32_to_f16_avx512(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_f16_1(src[i]);
}

void sdxl_bf16_to_f32(const uint16_t *src, float *dst, size_t n) {
    if (n >= 16 && have_avx512()) {
        bf16_to_f32_avx512(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32_1(src[i]);
}

void sdxl_f32_to_bf16(const float *src, uint16_t *dst, size_t n) {
    if (n >= 16 && have_avx512bf16()) {
        f32_to_bf16_avx512bf16(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16_1(src[i]);
}

void sdxl_f8e4m3_to_f32(const uint8_t *src, float *dst, size_t n) {
    if (n >= 16 && have_avx512()) {
        f8e4m3_to_f32_avx512(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = f8e4m3_to_f32_1(src[i]);
}

void sdxl_f8e5m2_to_f32(const uint8_t *src, float *dst, size_t n) {
    if (n >= 16 && have_avx512()) {
        f8e5m2_to_f32_avx512(src, dst, n);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = f8e5m2_to_f32_1(src[i]);
}

void sdxl_to_f32(const void *src, sdxl_dtype t, float *dst, size_t n) {
    switch (t) {
    case SDXL_F32: memmove(dst, src, n * sizeof(float)); break;
    case SDXL_F16: sdxl_f16_to_f32(src, dst, n); break;
    case SDXL_BF16: sdxl_bf16_to_f32(src, dst, n); break;
    case SDXL_F8_E4M3: sdxl_f8e4m3_to_f32(src, dst, n); break;
    case SDXL_F8_E5M2: sdxl_f8e5m2_to_f32(src, dst, n); break;
    }
}

void sdxl_nchw_to_nhwc(const float *src, float *dst, int64_t n, int64_t c, int64_t h, int64_t w) {
    for (int64_t b = 0; b < n; b++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++)
                for (int64_t k = 0; k < c; k++)
                    dst[((b * h + y) * w + x) * c + k] = src[((b * c + k) * h + y) * w + x];
}

void sdxl_nhwc_to_nchw(const float *src, float *dst, int64_t n, int64_t h, int64_t w, int64_t c) {
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < c; k++)
            for (int64_t y = 0; y < h; y++)
                for (int64_t x = 0; x < w; x++)
                    dst[((b * c + k) * h + y) * w + x] = src[((b * h + y) * w + x) * c + k];
}
