/* Brownian tree noise: torchsde's BrownianTree as k-diffusion's BrownianTreeNoiseSampler (and so
 * A1111's DPM++ SDE / 2M SDE / 3M SDE) builds it, one tree per image seeded with the image's seed.
 *
 * torchsde 0.2.x BrownianTree(t0, w0 = 0, t1, entropy = seed) is a BrownianInterval with
 * halfway_tree, tol 1e-6 (times rounded to 6 decimals), pool_size 24 and no Levy area: the root
 * holds W(t1) - W(t0) = randn(seed_W) * sqrt(t1 - t0); a query [ta, tb] splits nodes at their
 * (rounded) midpoints until [ta, tb] is a union of nodes, and a child's increment is the Brownian
 * bridge of its parent's, (left / h) W + sqrt(left * right / h) randn(parent's seed). Every seed
 * comes from numpy's SeedSequence(entropy = seed, spawn_key = (key, depth), pool_size = 24), and
 * every randn is torch.randn from a CPU generator manual_seed'ed with it (base/rng.h), in float32
 * with torch's operation order. Only the tree's values matter, not torchsde's cache or search
 * order (they change speed, not results). */
#ifndef SDXL_DENOISE_BROWNIAN_H
#define SDXL_DENOISE_BROWNIAN_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

/* numpy SeedSequence(entropy, spawn_key, pool_size).generate_state(n_out) for uint32 words; the
 * entropy and spawn key as the uint32 word arrays numpy coerces them to. pool_size <= 64. */
void sdxl_seedseq_state(const uint32_t *entropy, int n_entropy, const uint32_t *spawn, int n_spawn, int pool_size,
                        uint32_t *out, int n_out);

typedef struct sdxl_btree sdxl_btree;

/* A tree over [t0, t1] (t0 < t1) for samples of n floats, seeded like BrownianTree(entropy = seed);
 * max_queries bounds the queries of one run (node storage is allocated here, never while queried). */
int sdxl_btree_new(double t0, double t1, uint64_t seed, size_t n, int max_queries, sdxl_btree **out, sdxl_err *e);
void sdxl_btree_free(sdxl_btree *b);
/* W(tb) - W(ta), ta <= tb (clamped to [t0, t1] as torchsde does). */
int sdxl_btree_increment(sdxl_btree *b, double ta, double tb, float *out, sdxl_err *e);
/* BrownianTreeNoiseSampler(sigma, sigma_next): the increment between the two, signed by their order,
 * divided by sqrt(|sigma_next - sigma|) in float32. Has the sdxl_noise_fn signature. */
int sdxl_btree_noise(void *tree, float *out, size_t n, double sigma, double sigma_next, sdxl_err *e);

struct sdxl_sampler;
/* The tree k-diffusion's BrownianTreeNoiseSampler builds for an A1111-path DPM++ SDE / 2M SDE /
 * 2M SDE Heun / 3M SDE run: over the whole schedule's smallest nonzero and largest sigma (A1111
 * passes the full sigmas for img2img and hires passes too), seeded with the image's seed;
 * *out = NULL for samplers that draw no Brownian noise. */
int sdxl_btree_for_run(const struct sdxl_sampler *s, uint64_t seed, size_t n, sdxl_btree **out, sdxl_err *e);

#endif
