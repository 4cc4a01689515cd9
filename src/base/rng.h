/* Random generators for initial latents and sampler noise. Each request owns its generator
 * (a plain struct: copy it to fork the stream); nothing here is global.
 *
 *   SDXL_RNG_TORCH_CPU   torch.Generator('cpu').manual_seed(seed) + torch.rand/randn(float32),
 *                        bit-exact with torch's AVX2 kernel (what x86-64 torch and diffusers use).
 *   SDXL_RNG_TORCH_CPU_SCALAR  the same stream through torch's non-SIMD kernel
 *                        (ATEN_CPU_CAPABILITY=default): libm logf/cosf/sinf.
 *   SDXL_RNG_PHILOX      A1111's "NV" generator: Philox 4x32-10 counter (offset, 0, index, 0),
 *                        key = seed, Box-Muller in double; one offset per randn call.
 *   SDXL_RNG_FAST        xoshiro256++ uniforms with the float Box-Muller; not compatible with
 *                        anything, just fast and of good quality. */
#ifndef SDXL_BASE_RNG_H
#define SDXL_BASE_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef enum sdxl_rng_kind {
    SDXL_RNG_TORCH_CPU = 0,
    SDXL_RNG_TORCH_CPU_SCALAR = 1,
    SDXL_RNG_PHILOX = 2,
    SDXL_RNG_FAST = 3
} sdxl_rng_kind;

typedef struct sdxl_rng {
    sdxl_rng_kind kind;
    uint64_t seed;
    /* torch CPU: mt19937 state and the cached second value of the scalar normal path */
    uint32_t mt[624];
    int mti;
    int has_next_normal;
    double next_normal;
    /* Philox: randn calls so far (the counter's word 0) */
    uint64_t philox_offset;
    /* fast: xoshiro256++ */
    uint64_t xs[4];
} sdxl_rng;

/* Seeds a generator. torch kinds use seed & 0xffffffff, as manual_seed does. */
void sdxl_rng_init(sdxl_rng *r, sdxl_rng_kind kind, uint64_t seed);

/* Fills out[n] with uniforms in [0, 1) (torch.rand for the torch kinds). */
void sdxl_rng_rand(sdxl_rng *r, float *out, size_t n);

/* Fills out[n] with standard normals: one torch.randn(n) call for the torch kinds (the path
 * depends on n: >= 16 vectorised, < 16 scalar with cache), one Generator.randn for Philox. */
void sdxl_rng_randn(sdxl_rng *r, float *out, size_t n);

/* Raw engine output, for tests: the next 32-bit mt19937 / xoshiro word. */
uint32_t sdxl_rng_u32(sdxl_rng *r);

/* Philox 4x32-10 block function (Salmon et al. 2011), in place on ctr[4] with key[2]. */
void sdxl_philox4x32_10(uint32_t ctr[4], const uint32_t key[2]);

/* "torch", "torch_scalar", "philox", "fast" and the aliases "cpu", "torch_cpu", "nv"; -1 if unknown. */
int sdxl_rng_kind_parse(const char *name);
const char *sdxl_rng_kind_name(sdxl_rng_kind k);

#endif
