/* Samplers: walk a noise schedule calling a model, with diffusers' exact step math.
 *
 * Usage (the pipeline wraps UNet + CFG into `model`):
 *
 *     sdxl_sampler_config c;
 *     sdxl_sampler_config_init(&c);            // SDXL training table, Euler, leading, 20 steps
 *     c.sampler = SDXL_SAMPLER_DPMPP_2M; c.schedule = SDXL_SCHEDULE_KARRAS; c.steps = 30;
 *     sdxl_sampler *s;
 *     if (sdxl_sampler_new(&c, n_latent_floats, &s, &err)) ...
 *     sdxl_rng_randn(&rng, x, n);              // initial noise from the request's generator
 *     for (i...) x[i] *= sdxl_sampler_init_noise_sigma(s);
 *     sdxl_sampler_run_opts o = {.model = unet_cfg, .model_user = p, .rng = &rng, .on_step = progress};
 *     sdxl_sampler_run(s, x, &o, &err);        // x now holds the denoised latents
 *
 * Latents are one flat float array of n values (any fixed layout, batch included): every
 * sampler is elementwise. All buffers are allocated by sdxl_sampler_new; run() never allocates.
 *
 * The model callback receives the already-scaled model input (diffusers' scale_model_input)
 * and the timestep the UNet must see (fractional for Karras-type schedules), and writes the
 * epsilon prediction. Samplers in "sigma space" (Euler, Heun, DPM2, LMS, DPM++ SDE, DPM++ 2S a,
 * DPM++ 3M SDE) keep latents as x0 + sigma*eps and start from noise * init_noise_sigma; the
 * others (DDIM, DDPM, PNDM, DPM++ 2M/2S, UniPC, DEIS, SA-Solver, LCM) keep variance-preserving
 * latents and init_noise_sigma is 1. */
#ifndef SDXL_DENOISE_SAMPLER_H
#define SDXL_DENOISE_SAMPLER_H

#include <stddef.h>

#include "base/err.h"
#include "base/rng.h"
#include "denoise/schedule.h"

typedef enum sdxl_sampler_kind {
    SDXL_SAMPLER_EULER = 0,
    SDXL_SAMPLER_EULER_A,
    SDXL_SAMPLER_HEUN,
    SDXL_SAMPLER_DPM2,
    SDXL_SAMPLER_DPM2_A,
    SDXL_SAMPLER_LMS,
    SDXL_SAMPLER_DDIM,
    SDXL_SAMPLER_DDPM,
    SDXL_SAMPLER_PNDM,
    SDXL_SAMPLER_DPMPP_2M,
    SDXL_SAMPLER_DPMPP_2M_SDE,
    SDXL_SAMPLER_DPMPP_2S, /* DPM-Solver++ singlestep, order 2 (diffusers DPMSolverSinglestepScheduler) */
    SDXL_SAMPLER_DPMPP_SDE,
    SDXL_SAMPLER_LCM,
    SDXL_SAMPLER_UNIPC,
    SDXL_SAMPLER_DEIS,
    SDXL_SAMPLER_SA_SOLVER,
    SDXL_SAMPLER_DPMPP_2S_A,   /* k-diffusion sample_dpmpp_2s_ancestral (A1111 "DPM++ 2S a") */
    SDXL_SAMPLER_DPMPP_3M_SDE, /* k-diffusion sample_dpmpp_3m_sde (A1111 "DPM++ 3M SDE") */
    SDXL_SAMPLER_DPMPP_2M_SDE_HEUN, /* k-diffusion sample_dpmpp_2m_sde, solver_type heun (A1111 "DPM++ 2M SDE Heun") */
    SDXL_SAMPLER_DPM_FAST,     /* k-diffusion sample_dpm_fast (A1111 "DPM fast") */
    SDXL_SAMPLER_DPM_ADAPTIVE, /* k-diffusion sample_dpm_adaptive (A1111 "DPM adaptive") */
    SDXL_SAMPLER_IPNDM,        /* ComfyUI sample_ipndm (Adams-Bashforth in sigma, order <= 4) */
    SDXL_SAMPLER_HEUNPP2,      /* ComfyUI sample_heunpp2 (Heun++ with sigma-weighted derivatives) */
    SDXL_SAMPLER_GRADIENT_ESTIMATION, /* ComfyUI sample_gradient_estimation (ge_gamma 2) */
    SDXL_SAMPLER_RES_MULTISTEP,       /* ComfyUI sample_res_multistep (RES 2nd-order multistep, eta 0) */
    SDXL_SAMPLER_ER_SDE,       /* ComfyUI sample_er_sde (ER-SDE-Solver-3, VP) */
    SDXL_SAMPLER_IPNDM_V,      /* ComfyUI sample_ipndm_v (iPNDM with variable-step coefficients) */
    SDXL_SAMPLER_RESTART,      /* A1111 restart_sampler (Heun with Karras restart segments) */
    SDXL_SAMPLER_DDIM_CFGPP,   /* A1111 ddim_cfgpp (DDIM with CFG++: guidance / 12.5, uncond direction) */
    SDXL_SAMPLER_COUNT
} sdxl_sampler_kind;

typedef struct sdxl_sampler_config {
    sdxl_sampler_kind sampler;
    sdxl_schedule_kind schedule; /* DEFAULT: the diffusers class's own rule */
    int diffusers_karras;        /* with schedule KARRAS: diffusers' use_karras_sigmas range and rounding */
    int steps;
    sdxl_spacing spacing;        /* diffusers timestep_spacing (DEFAULT schedule) */
    int steps_offset;
    double eta;                  /* DDIM; 0 = deterministic */
    double ancestral_eta;        /* euler_a, dpm2_a, dpmpp_2s_a, dpmpp_3m_sde noise amount; 1 (A1111 "eta (ancestral)") */
    double s_noise;              /* noise multiplier for ancestral/SDE steps; 1 */
    sdxl_schedule_params sched;  /* rho, sigma range, beta parameters */
    int lcm_original_steps;      /* LCM: 50 */
    double lcm_timestep_scaling; /* LCM: 10 */
    /* training table */
    int train_steps;             /* 1000 */
    sdxl_beta_kind beta_kind;
    double beta_start, beta_end;
    /* A1111 path (ksampler.c): k-diffusion loops on ldm's table and A1111's sigma rules */
    int kdiffusion;
    int v_prediction;       /* the model predicts v (CompVisVDenoiser) */
    int zero_terminal_snr;  /* alphas_cumprod rescaled to zero terminal SNR (k-diffusion path only) */
} sdxl_sampler_config;

/* SDXL defaults: scaled_linear 0.00085..0.012 over 1000, leading spacing, offset 1, Euler, 20 steps. */
void sdxl_sampler_config_init(sdxl_sampler_config *c);
/* Field-named validation (steps, eta, s_noise, rho, ...); also run by sdxl_sampler_new. */
int sdxl_sampler_config_check(const sdxl_sampler_config *c, sdxl_err *e);
const char *sdxl_sampler_name(sdxl_sampler_kind k);
/* Whether a run with this config draws noise (needs a generator or a noise callback): the
 * ancestral and SDE samplers, DDIM with eta > 0, DPM++ 3M SDE with ancestral_eta > 0. */
int sdxl_sampler_config_draws_noise(const sdxl_sampler_config *c);

typedef struct sdxl_sampler sdxl_sampler;

/* Computes the schedule and allocates every buffer for latents of n floats. */
int sdxl_sampler_new(const sdxl_sampler_config *c, size_t n, sdxl_sampler **out, sdxl_err *e);
void sdxl_sampler_free(sdxl_sampler *s);

/* Epsilon prediction for x_in (n floats) at timestep t (sigma = the schedule's noise level). */
typedef int (*sdxl_model_fn)(void *user, const float *x_in, size_t n, double t, double sigma, float *eps_out,
                             sdxl_err *e);
/* After each completed step: step index (from 0), total steps, the sigma reached, latents.
 * Returning nonzero cancels the run (SDXL_ERR_CANCELLED). */
typedef int (*sdxl_step_fn)(void *user, int step, int total, double sigma, const float *x, size_t n);

/* CFG++ samplers: like sdxl_model_fn with the guidance scale multiplied by scale_mul, and the
 * unconditional prediction written to uncond_out (A1111 need_last_noise_uncond). */
typedef int (*sdxl_model_cfgpp_fn)(void *user, const float *x_in, size_t n, double t, double sigma, double scale_mul,
                                   float *eps_out, float *uncond_out, sdxl_err *e);

/* Optional replacement for the generator: fill out[0..n-1] with standard-normal noise for the
 * move from noise level sigma_from to sigma_to. For DPM++ SDE each call must be the normalised
 * Brownian increment (W(sigma_to) - W(sigma_from)) / sqrt(|sigma_to - sigma_from|) of one path
 * per run (first [sigma, mid], then [sigma, next] of the same step), e.g. a torchsde-style
 * Brownian tree or recorded noise. Only called where the noise is used. */
typedef int (*sdxl_noise_fn)(void *user, float *out, size_t n, double sigma_from, double sigma_to, sdxl_err *e);

typedef struct sdxl_sampler_run_opts {
    sdxl_model_fn model;
    void *model_user;
    sdxl_step_fn on_step; /* may be NULL */
    void *step_user;
    const volatile int *cancel; /* polled before every model call; nonzero cancels. May be NULL */
    sdxl_rng *rng;              /* noise for ancestral/SDE steps (continues the initial-noise stream) */
    sdxl_noise_fn noise;        /* if set, supplies that noise instead of rng */
    void *noise_user;
    int start_step;             /* first step to run (img2img, refiner hand-off); x is at that step's level */
    int end_step;               /* stop before this step; 0 = run to the end */
    sdxl_model_cfgpp_fn model_cfgpp; /* DDIM CFG++ calls this instead of model (model_user) */
} sdxl_sampler_run_opts;

/* Runs steps [start_step, end_step) in place on x. May be called again for a later range
 * (the state of multistep methods carries over within one sampler). */
int sdxl_sampler_run(sdxl_sampler *s, float *x, const sdxl_sampler_run_opts *o, sdxl_err *e);
/* Forgets the multistep history so the sampler can run a fresh trajectory. */
void sdxl_sampler_reset(sdxl_sampler *s);

/* Whether the run takes the k-diffusion (A1111) path of ksampler.h, and that sampler. */
int sdxl_sampler_is_kdiffusion(const sdxl_sampler *s);
struct sdxl_ksampler;
const struct sdxl_ksampler *sdxl_sampler_ksampler(const sdxl_sampler *s);

/* Multiplier for the initial noise. */
float sdxl_sampler_init_noise_sigma(const sdxl_sampler *s);
int sdxl_sampler_steps(const sdxl_sampler *s);
/* diffusers' scheduler.timesteps and scheduler.sigmas (interleaved for 2nd-order methods).
 * sigmas is NULL (n = 0) for the alpha-table samplers that have none. */
const float *sdxl_sampler_timesteps(const sdxl_sampler *s, int *n);
const float *sdxl_sampler_sigmas(const sdxl_sampler *s, int *n);
/* Model calls the full run makes. */
int sdxl_sampler_model_calls(const sdxl_sampler *s);
/* The timestep of step k's first model call. */
double sdxl_sampler_step_timestep(const sdxl_sampler *s, int k);

/* img2img: the step to start at for a strength in (0, 1] (diffusers get_timesteps). */
int sdxl_sampler_start_for_strength(const sdxl_sampler *s, double strength);
/* Refiner hand-off, diffusers semantics with a fraction f in (0, 1): steps run by the base
 * with denoising_end = f (timesteps >= round(T (1 - f))), and the step a denoising_start = f
 * pass starts at (first timestep below that cutoff). */
int sdxl_sampler_end_for_fraction(const sdxl_sampler *s, double f);
int sdxl_sampler_start_for_fraction(const sdxl_sampler *s, double f);
/* out = latents x0 noised to the level of step k (diffusers add_noise): x0 + sigma*noise in
 * sigma space, sqrt(ac) x0 + sqrt(1-ac) noise otherwise. */
void sdxl_sampler_add_noise(const sdxl_sampler *s, int k, const float *x0, const float *noise, float *out);

#endif
