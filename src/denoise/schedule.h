/* Noise schedules: the model's training table (betas, alphas_cumprod, sigmas) and the
 * inference sigma/timestep lists that samplers walk.
 *
 * Two families:
 *  - diffusers' own set_timesteps rules (spacing leading/trailing/linspace, steps_offset,
 *    N or N+1 spacing, Karras with diffusers' sigma range), reproduced per scheduler class by
 *    sampler.c from the helpers below;
 *  - the named schedules of A1111/ComfyUI/k-diffusion (sdxl_schedule_sigmas): normal,
 *    karras, exponential, sgm_uniform, simple, ddim_uniform, beta, align_your_steps.
 * The training table is computed in float32 exactly as torch does (see schedule.c). */
#ifndef SDXL_DENOISE_SCHEDULE_H
#define SDXL_DENOISE_SCHEDULE_H

#include "base/err.h"

#define SDXL_MAX_TRAIN_STEPS 4096
#define SDXL_MAX_STEPS 1000 /* inference steps accepted by any sampler */

typedef enum sdxl_beta_kind { SDXL_BETA_SCALED_LINEAR = 0, SDXL_BETA_LINEAR = 1, SDXL_BETA_COSINE = 2 } sdxl_beta_kind;

typedef enum sdxl_spacing { SDXL_SPACING_LEADING = 0, SDXL_SPACING_TRAILING = 1, SDXL_SPACING_LINSPACE = 2 } sdxl_spacing;

/* The training noise table. float32 values identical to torch/diffusers. */
typedef struct sdxl_train_table {
    int n;                       /* num_train_timesteps */
    sdxl_beta_kind beta_kind;
    double beta_start, beta_end;
    float betas[SDXL_MAX_TRAIN_STEPS];
    float alphas_cumprod[SDXL_MAX_TRAIN_STEPS];
    float sigmas[SDXL_MAX_TRAIN_STEPS];     /* sqrt((1 - ac) / ac) */
    float log_sigmas[SDXL_MAX_TRAIN_STEPS]; /* logf(sigmas) */
} sdxl_train_table;

/* SDXL: 1000 steps, scaled_linear 0.00085..0.012. */
int sdxl_train_table_init(sdxl_train_table *t, int n, sdxl_beta_kind kind, double beta_start, double beta_end,
                          sdxl_err *e);

/* Named schedules (A1111 "Schedule type", ComfyUI "scheduler"). */
typedef enum sdxl_schedule_kind {
    SDXL_SCHEDULE_DEFAULT = 0, /* the sampler's own diffusers rule (A1111 "Automatic") */
    SDXL_SCHEDULE_NORMAL,      /* t = linspace(T-1, 0, n), log-sigma interpolation; A1111 "Uniform"/discrete */
    SDXL_SCHEDULE_KARRAS,
    SDXL_SCHEDULE_EXPONENTIAL,
    SDXL_SCHEDULE_SGM_UNIFORM,
    SDXL_SCHEDULE_SIMPLE,
    SDXL_SCHEDULE_DDIM_UNIFORM,
    SDXL_SCHEDULE_BETA,
    SDXL_SCHEDULE_AYS, /* align_your_steps, SDXL noise levels */
    SDXL_SCHEDULE_COUNT
} sdxl_schedule_kind;

typedef struct sdxl_schedule_params {
    double rho;                    /* karras; default 7 */
    double sigma_min, sigma_max;   /* 0 = the model's (table) extremes */
    double beta_alpha, beta_beta;  /* beta schedule; default 0.6, 0.6 */
} sdxl_schedule_params;

void sdxl_schedule_params_init(sdxl_schedule_params *p);
const char *sdxl_schedule_name(sdxl_schedule_kind k);

/* Fills sigmas[0..*n_out-1] (descending, last entry 0) for `steps` steps. Most kinds give
 * steps+1 values; ddim_uniform and beta may give fewer when indices collide (as upstream).
 * cap is the capacity of sigmas. */
int sdxl_schedule_sigmas(const sdxl_train_table *t, sdxl_schedule_kind kind, int steps,
                         const sdxl_schedule_params *p, double *sigmas, int cap, int *n_out, sdxl_err *e);

/* sigma -> fractional timestep by log-sigma interpolation (k-diffusion, diffusers _sigma_to_t). */
double sdxl_sigma_to_t(const sdxl_train_table *t, double sigma);
/* timestep -> sigma by log-sigma interpolation (k-diffusion t_to_sigma, ComfyUI sigma()). */
double sdxl_t_to_sigma_log(const sdxl_train_table *t, double ts);
/* timestep -> sigma by linear interpolation of the sigma table (diffusers np.interp). */
double sdxl_t_to_sigma_lin(const sdxl_train_table *t, double ts);

/* diffusers spacings. n_plus_one selects the DPM-Solver/UniPC rule (N+1 points, last dropped).
 * Writes steps values (descending) to ts. */
int sdxl_diffusers_timesteps(const sdxl_train_table *t, sdxl_spacing sp, int steps_offset, int steps, int n_plus_one,
                             double *ts, sdxl_err *e);

/* torch.linspace(a, b, n, dtype=float32) as torch's AVX2 CPU kernel computes it. */
void sdxl_torch_linspace_f32(double a, double b, int n, float *out);

/* k-diffusion get_sigmas_karras: (max^(1/rho) + ramp (min^(1/rho) - max^(1/rho)))^rho, n values, no 0. */
void sdxl_karras_sigmas(double sigma_min, double sigma_max, double rho, int n, double *out);

/* Regularised incomplete beta I_x(a, b) and its inverse (for the beta schedule). */
double sdxl_betainc(double a, double b, double x);
double sdxl_betainc_inv(double a, double b, double p);

#endif
