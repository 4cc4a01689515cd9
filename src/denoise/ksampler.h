/* k-diffusion samplers on A1111's sigmas: the path an A1111-dialect request takes.
 *
 * A1111 does not run diffusers' schedulers: it wraps the UNet in k-diffusion's CompVisDenoiser
 * (or CompVisVDenoiser for v-prediction) and runs k-diffusion's sampler loops on a sigma list
 * built from ldm's training table (float64 betas, cumprod, cast to float32), with A1111's
 * schedule rules ("Automatic" = the model's discrete schedule, Karras and Exponential spanning
 * the whole table, DPM2's dropped next-to-last sigma). Every loop here follows k-diffusion's
 * float32 operation order. sampler.c forwards to this file when sdxl_sampler_config.kdiffusion
 * is set, so callers use the sdxl_sampler_* API unchanged.
 *
 * The model callback receives x * c_in and the fractional timestep t(sigma) and writes the raw
 * network output (epsilon, or v with prediction V); the denoiser scalings happen here. */
#ifndef SDXL_DENOISE_KSAMPLER_H
#define SDXL_DENOISE_KSAMPLER_H

#include <stddef.h>

#include "denoise/sampler.h"

/* The 1000-step table of ldm (float64 scaled_linear betas, cumulative product, float32 cast),
 * optionally rescaled to zero terminal SNR as A1111 does (last alphas_cumprod 4.8973451890853435e-08). */
int sdxl_ktable_init(sdxl_train_table *t, const sdxl_sampler_config *c, sdxl_err *e);

/* Whether kind k has a k-diffusion loop here. */
int sdxl_ksampler_supports(sdxl_sampler_kind k);

typedef struct sdxl_ksampler sdxl_ksampler;

int sdxl_ksampler_new(const sdxl_sampler_config *c, size_t n, sdxl_ksampler **out, sdxl_err *e);
void sdxl_ksampler_free(sdxl_ksampler *k);
void sdxl_ksampler_reset(sdxl_ksampler *k);
/* Steps = intervals of the sigma list (for DPM fast/adaptive: the requested steps). */
int sdxl_ksampler_steps(const sdxl_ksampler *k);
/* The sigma list (steps + 1 values, last 0) and the timestep of each step's first call. */
const float *sdxl_ksampler_sigmas(const sdxl_ksampler *k, int *n);
const float *sdxl_ksampler_timesteps(const sdxl_ksampler *k, int *n);
const sdxl_train_table *sdxl_ksampler_table(const sdxl_ksampler *k);
const sdxl_sampler_config *sdxl_ksampler_config(const sdxl_ksampler *k);
/* Model calls of a full run (DPM adaptive: unknown before the run, the last run's count). */
int sdxl_ksampler_model_calls(const sdxl_ksampler *k);
/* DPM adaptive's accepted and rejected steps in the last run. */
void sdxl_ksampler_adaptive_info(const sdxl_ksampler *k, int *accepted, int *rejected);
/* float32 k-diffusion sigma_to_t on the sampler's table. */
float sdxl_ksampler_sigma_to_t(const sdxl_ksampler *k, float sigma);
/* DDIM CFG++ keeps variance-preserving latents on integer timesteps (A1111's timesteps samplers):
 * its initial noise is unscaled, img2img starts where A1111's does and noises x0 to the level
 * before that step (sqrt(a) x0 + sqrt(1 - a) noise). */
int sdxl_ksampler_vp(const sdxl_ksampler *k);
int sdxl_ksampler_vp_start(const sdxl_ksampler *k, double strength);
void sdxl_ksampler_vp_add_noise(const sdxl_ksampler *k, int step, const float *x0, const float *noise, float *out);
/* Runs steps [start_step, end_step) in place; x is at sigma[start_step]. */
int sdxl_ksampler_run(sdxl_ksampler *k, float *x, const sdxl_sampler_run_opts *o, sdxl_err *e);

#endif
