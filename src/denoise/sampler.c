/* Each sampler follows its diffusers 0.26 scheduler literally: the same arrays (timesteps,
 * interleaved sigmas), the same per-call state machine, and the same float32 operation order
 * (scalars are float32 0-dim tensors there, so coefficients are computed in float here). */
#include "denoise/sampler.h"

#include "denoise/ksampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXA (2 * SDXL_MAX_STEPS + 4)

enum { B_SAMPLE, B_DERIV, B_M0, B_M1, B_E0, B_E1, B_E2, B_E3, B_NOISE, B_NOISE2, B_EPS, B_XIN, B_COUNT };

struct sdxl_sampler {
    sdxl_sampler_config c;
    sdxl_train_table tab;
    size_t n;
    int steps, vp, n_calls, n_sig, n_ts;
    float init_sigma;
    float ts[MAXA];                  /* model timestep per call (diffusers self.timesteps) */
    float sig[MAXA], sig_i[MAXA];    /* self.sigmas, self.sigmas_interpol */
    float sig_up[MAXA], sig_down[MAXA];
    int call_start[SDXL_MAX_STEPS + 1];
    int step_of[MAXA];               /* call -> step, for samplers with a varying number of calls per step */
    int order_list[SDXL_MAX_STEPS];
    /* state */
    int idx, lower_order_nums, counter, n_hist, has_sample;
    int this_order, this_corr_order, prev_tau; /* UniPC / SA-Solver orders chosen at the previous step */
    float dt_saved, mid_sigma, bt_d1;
    float h1, h2; /* DPM++ 3M SDE: the last two step sizes in -log(sigma) */
    float *buf[B_COUNT];
    sdxl_ksampler *k; /* the k-diffusion path: every call below forwards to it */
};

const char *sdxl_sampler_name(sdxl_sampler_kind k) {
    static const char *const names[SDXL_SAMPLER_COUNT] = {
        "euler", "euler_a", "heun", "dpm2", "dpm2_a", "lms", "ddim", "ddpm", "pndm", "dpmpp_2m", "dpmpp_2m_sde",
        "dpmpp_2s", "dpmpp_sde", "lcm", "unipc", "deis", "sa_solver", "dpmpp_2s_a", "dpmpp_3m_sde",
        "dpmpp_2m_sde_heun", "dpm_fast", "dpm_adaptive", "ipndm", "heunpp2", "gradient_estimation", "res_multistep",
        "er_sde", "ipndm_v", "restart", "ddim_cfgpp"};
    return (unsigned)k < SDXL_SAMPLER_COUNT ? names[k] : "?";
}

void sdxl_sampler_config_init(sdxl_sampler_config *c) {
    memset(c, 0, sizeof *c);
    c->sampler = SDXL_SAMPLER_EULER;
    c->schedule = SDXL_SCHEDULE_DEFAULT;
    c->steps = 20;
    c->spacing = SDXL_SPACING_LEADING;
    c->steps_offset = 1;
    c->eta = 0;
    c->ancestral_eta = 1;
    c->s_noise = 1;
    sdxl_schedule_params_init(&c->sched);
    c->lcm_original_steps = 50;
    c->lcm_timestep_scaling = 10;
    c->train_steps = 1000;
    c->beta_kind = SDXL_BETA_SCALED_LINEAR;
    c->beta_start = 0.00085;
    c->beta_end = 0.012;
}

static int is_vp(sdxl_sampler_kind k) {
    return k == SDXL_SAMPLER_DDIM || k == SDXL_SAMPLER_DDPM || k == SDXL_SAMPLER_PNDM || k == SDXL_SAMPLER_DPMPP_2M ||
           k == SDXL_SAMPLER_DPMPP_2M_SDE || k == SDXL_SAMPLER_DPMPP_2S || k == SDXL_SAMPLER_LCM ||
           k == SDXL_SAMPLER_UNIPC || k == SDXL_SAMPLER_DEIS || k == SDXL_SAMPLER_SA_SOLVER;
}

/* Samplers whose step math indexes the alphas table by integer timestep. */
static int is_alpha_table(sdxl_sampler_kind k) {
    return k == SDXL_SAMPLER_DDIM || k == SDXL_SAMPLER_DDPM || k == SDXL_SAMPLER_PNDM || k == SDXL_SAMPLER_LCM;
}

int sdxl_sampler_config_check(const sdxl_sampler_config *c, sdxl_err *e) {
    if ((unsigned)c->sampler >= SDXL_SAMPLER_COUNT)
        return sdxl_seterr(e, SDXL_ERR_ARG, "sampler: unknown value %d", (int)c->sampler);
    if ((unsigned)c->schedule >= SDXL_SCHEDULE_COUNT)
        return sdxl_seterr(e, SDXL_ERR_ARG, "schedule: unknown value %d", (int)c->schedule);
    if (c->steps < 1 || c->steps > SDXL_MAX_STEPS)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "steps: must be in [1, %d], got %d", SDXL_MAX_STEPS, c->steps);
    if (c->steps > c->train_steps)
        return sdxl_seterr(e, SDXL_ERR_ARG, "steps: must not exceed train_steps (%d), got %d", c->train_steps, c->steps);
    if (!(c->eta >= 0) || !(c->eta <= 1e3))
        return sdxl_seterr(e, SDXL_ERR_ARG, "eta: must be finite and >= 0, got %g", c->eta);
    if (!(c->ancestral_eta >= 0) || !(c->ancestral_eta <= 1e3))
        return sdxl_seterr(e, SDXL_ERR_ARG, "ancestral_eta: must be finite and >= 0, got %g", c->ancestral_eta);
    if (!(c->s_noise >= 0) || !(c->s_noise <= 1e3))
        return sdxl_seterr(e, SDXL_ERR_ARG, "s_noise: must be finite and >= 0, got %g", c->s_noise);
    if (!(c->sched.rho > 0) || !isfinite(c->sched.rho))
        return sdxl_seterr(e, SDXL_ERR_ARG, "rho: karras rho must be finite and > 0, got %g", c->sched.rho);
    if (c->sched.sigma_min < 0 || c->sched.sigma_max < 0 || !isfinite(c->sched.sigma_min) ||
        !isfinite(c->sched.sigma_max))
        return sdxl_seterr(e, SDXL_ERR_ARG, "sigma_min/sigma_max: must be finite and >= 0 (0 = model's)");
    if ((unsigned)c->spacing > SDXL_SPACING_LINSPACE)
        return sdxl_seterr(e, SDXL_ERR_ARG, "timestep_spacing: unknown value %d", (int)c->spacing);
    if (c->steps_offset < 0 || c->steps_offset >= c->train_steps)
        return sdxl_seterr(e, SDXL_ERR_ARG, "steps_offset: must be in [0, train_steps), got %d", c->steps_offset);
    if (c->sampler == SDXL_SAMPLER_LCM &&
        (c->lcm_original_steps < 1 || c->lcm_original_steps > c->train_steps || c->steps > c->lcm_original_steps))
        return sdxl_seterr(e, SDXL_ERR_ARG, "lcm_original_steps: must be in [steps, train_steps], got %d",
                           c->lcm_original_steps);
    if ((c->kdiffusion || c->zero_terminal_snr) && !sdxl_ksampler_supports(c->sampler))
        return c->zero_terminal_snr
                   ? sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "zero_terminal_snr: %s has no k-diffusion (A1111) form, which "
                                 "a zero-terminal-SNR model needs (Euler, Euler a, DPM++ 2M... have one)",
                                 sdxl_sampler_name(c->sampler))
                   : sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s has no k-diffusion (A1111) form",
                                 sdxl_sampler_name(c->sampler));
    if (c->schedule != SDXL_SCHEDULE_DEFAULT && is_alpha_table(c->sampler) &&
        !(c->schedule == SDXL_SCHEDULE_KARRAS && c->diffusers_karras))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "schedule: %s steps on integer timesteps and takes only its own "
                           "(default) schedule, not '%s'", sdxl_sampler_name(c->sampler), sdxl_schedule_name(c->schedule));
    return SDXL_OK;
}

/* ---- schedules per diffusers class ---------------------------------------------------------- */

/* k-diffusion get_ancestral_step: eta * sqrt(to^2 (from^2 - to^2) / from^2), capped at `to`.
 * With eta 1 it is diffusers' float expression unchanged (the cap never binds there). */
static float ancestral_up(float from, float to, double eta) {
    float up = sqrtf(to * to * (from * from - to * to) / (from * from));
    if (eta == 1) return up;
    up = (float)eta * up;
    return up < to ? up : to;
}

static float f_lerp_half(float a, float b) { return b - (b - a) * 0.5f; } /* torch.lerp(a, b, 0.5) */

/* Sigma list (n values, no final 0) and float timesteps for the sigma-space classes. */
static int base_sigmas(sdxl_sampler *s, double *sg, double *tt, int *rounded_t, sdxl_err *e) {
    const sdxl_sampler_config *c = &s->c;
    int n = c->steps;
    *rounded_t = 0;
    if (c->schedule == SDXL_SCHEDULE_DEFAULT || (c->schedule == SDXL_SCHEDULE_KARRAS && c->diffusers_karras)) {
        int r = sdxl_diffusers_timesteps(&s->tab, c->spacing, c->steps_offset, n, 0, tt, e);
        if (r) return r;
        for (int i = 0; i < n; i++) {
            if (c->spacing == SDXL_SPACING_LINSPACE) tt[i] = (float)tt[i];
            sg[i] = sdxl_t_to_sigma_lin(&s->tab, tt[i]);
        }
        if (c->schedule == SDXL_SCHEDULE_KARRAS) {
            double smin = c->sched.sigma_min > 0 ? c->sched.sigma_min : sg[n - 1];
            double smax = c->sched.sigma_max > 0 ? c->sched.sigma_max : sg[0];
            sdxl_karras_sigmas(smin, smax, c->sched.rho, n, sg);
            for (int i = 0; i < n; i++) tt[i] = sdxl_sigma_to_t(&s->tab, sg[i]);
        }
        return SDXL_OK;
    }
    double tmp[SDXL_MAX_STEPS + 2];
    int m = 0;
    int r = sdxl_schedule_sigmas(&s->tab, c->schedule, n, &c->sched, tmp, SDXL_MAX_STEPS + 2, &m, e);
    if (r) return r;
    if (m - 1 != n) s->steps = m - 1; /* ddim_uniform / beta may merge steps */
    for (int i = 0; i < m - 1; i++) {
        sg[i] = tmp[i];
        tt[i] = sdxl_sigma_to_t(&s->tab, tmp[i]);
    }
    return SDXL_OK;
}

static void set_init_sigma_ve(sdxl_sampler *s) {
    float mx = 0;
    for (int i = 0; i < s->n_sig; i++)
        if (s->sig[i] > mx) mx = s->sig[i];
    int leading = s->c.schedule == SDXL_SCHEDULE_DEFAULT || s->c.diffusers_karras;
    s->init_sigma = (leading && s->c.spacing == SDXL_SPACING_LEADING) ? sqrtf(mx * mx + 1.0f) : mx;
}

/* np.linspace(0, stop, num, endpoint=False)[i] */
static double np_linspace_endpoint_false(double stop, int num, int i) { return (double)i * (stop / num); }

static int plan(sdxl_sampler *s, sdxl_err *e) {
    const sdxl_sampler_config *c = &s->c;
    const sdxl_train_table *T = &s->tab;
    double sg[SDXL_MAX_STEPS + 2], tt[SDXL_MAX_STEPS + 2];
    int rt = 0, r;
    s->steps = c->steps;
    s->vp = is_vp(c->sampler);
    s->init_sigma = 1.0f;
    switch (c->sampler) {
    case SDXL_SAMPLER_EULER:
    case SDXL_SAMPLER_EULER_A:
    case SDXL_SAMPLER_LMS:
        if ((r = base_sigmas(s, sg, tt, &rt, e))) return r;
        for (int i = 0; i < s->steps; i++) {
            s->sig[i] = (float)sg[i];
            s->ts[i] = (float)tt[i];
        }
        s->sig[s->steps] = 0;
        s->n_sig = s->steps + 1;
        s->n_ts = s->n_calls = s->steps;
        set_init_sigma_ve(s);
        break;
    case SDXL_SAMPLER_HEUN:
    case SDXL_SAMPLER_DPMPP_SDE: {
        if ((r = base_sigmas(s, sg, tt, &rt, e))) return r;
        int n = s->steps, k = 0;
        s->sig[k++] = (float)sg[0];
        for (int i = 1; i < n; i++) s->sig[k++] = (float)sg[i], s->sig[k++] = (float)sg[i];
        s->sig[k++] = 0;
        s->n_sig = k;
        k = 0;
        s->ts[k++] = (float)tt[0];
        for (int i = 1; i < n; i++) {
            if (c->sampler == SDXL_SAMPLER_DPMPP_SDE) {
                /* _second_order_timesteps: midpoint in -log(sigma) between consecutive sigmas */
                double t0 = -log(sg[i - 1]), t1 = -log(sg[i]);
                s->ts[k++] = (float)sdxl_sigma_to_t(T, exp(-(t0 + (t1 - t0) * 0.5)));
            } else {
                s->ts[k++] = (float)tt[i];
            }
            s->ts[k++] = (float)tt[i];
        }
        s->n_ts = s->n_calls = k;
        s->sig[s->n_sig - 1] = 0;
        set_init_sigma_ve(s);
        break;
    }
    case SDXL_SAMPLER_DPM2:
    case SDXL_SAMPLER_DPM2_A: {
        if ((r = base_sigmas(s, sg, tt, &rt, e))) return r;
        int n = s->steps;
        if (c->schedule == SDXL_SCHEDULE_KARRAS && c->diffusers_karras)
            for (int i = 0; i < n; i++) tt[i] = nearbyint(tt[i]);
        float sv[SDXL_MAX_STEPS + 2] = {0}, si[SDXL_MAX_STEPS + 2] = {0}, up[SDXL_MAX_STEPS + 2] = {0},
              dn[SDXL_MAX_STEPS + 2] = {0};
        for (int i = 0; i < n; i++) sv[i] = (float)sg[i];
        sv[n] = 0;
        if (c->sampler == SDXL_SAMPLER_DPM2) {
            for (int i = 0; i <= n; i++) si[i] = expf(f_lerp_half(logf(sv[i]), logf(sv[i == 0 ? n : i - 1])));
            for (int i = 0; i <= n; i++) up[i] = dn[i] = 0;
        } else {
            for (int i = 0; i <= n; i++) {
                float nx = i < n ? sv[i + 1] : 0.0f;
                up[i] = ancestral_up(sv[i], nx, c->ancestral_eta);
                dn[i] = sqrtf(nx * nx - up[i] * up[i]);
            }
            dn[n] = 0;
            for (int i = 0; i <= n; i++) si[i] = expf(f_lerp_half(logf(sv[i]), logf(dn[i])));
            si[n] = 0;
            if (n >= 1) si[n - 1] = 0;
        }
        int k = 0;
        s->sig[k] = sv[0], s->sig_i[k] = si[0], s->sig_up[k] = up[0], s->sig_down[k] = dn[0];
        k++;
        for (int i = 1; i <= n; i++)
            for (int j = 0; j < 2; j++, k++)
                s->sig[k] = sv[i], s->sig_i[k] = si[i], s->sig_up[k] = up[i], s->sig_down[k] = dn[i];
        s->sig[k] = sv[n], s->sig_i[k] = si[n], s->sig_up[k] = up[n], s->sig_down[k] = dn[n];
        s->n_sig = ++k;
        k = 0;
        s->ts[k++] = (float)tt[0];
        for (int i = 1; i < n; i++) {
            float smid = c->sampler == SDXL_SAMPLER_DPM2 ? si[i] : si[i - 1];
            s->ts[k++] = (float)sdxl_sigma_to_t(T, smid);
            s->ts[k++] = (float)tt[i];
        }
        s->n_ts = s->n_calls = k;
        float mx = 0;
        for (int i = 0; i < s->n_sig; i++)
            if (s->sig[i] > mx) mx = s->sig[i];
        int leading = c->spacing == SDXL_SPACING_LEADING &&
                      (c->schedule == SDXL_SCHEDULE_DEFAULT || c->diffusers_karras);
        s->init_sigma = leading ? sqrtf(mx * mx + 1.0f) : mx;
        break;
    }
    case SDXL_SAMPLER_DDIM:
    case SDXL_SAMPLER_DDPM:
    case SDXL_SAMPLER_PNDM: {
        int n = s->steps;
        if ((r = sdxl_diffusers_timesteps(T, c->spacing, c->steps_offset, n, 0, tt, e))) return r;
        if (c->spacing == SDXL_SPACING_LINSPACE)
            for (int i = 0; i < n; i++) tt[i] = nearbyint(tt[i]);
        if (c->sampler == SDXL_SAMPLER_PNDM) {
            /* plms_timesteps: [t_{n-1}, t_{n-2}, t_{n-2}, ..., t_0] (ascending list reversed, second repeated) */
            int k = 0;
            s->ts[k++] = (float)tt[0];
            if (n >= 2) s->ts[k++] = (float)tt[1];
            for (int i = 1; i < n; i++) s->ts[k++] = (float)tt[i];
            s->n_ts = s->n_calls = k;
        } else {
            for (int i = 0; i < n; i++) s->ts[i] = (float)tt[i];
            s->n_ts = s->n_calls = n;
        }
        s->n_sig = 0;
        break;
    }
    case SDXL_SAMPLER_LCM: {
        int n = s->steps, orig = c->lcm_original_steps, cc = c->train_steps / orig;
        for (int i = 0; i < n; i++) {
            int j = (int)floor(np_linspace_endpoint_false(orig, n, i));
            s->ts[i] = (float)((orig - j) * cc - 1);
        }
        s->n_ts = s->n_calls = n;
        s->n_sig = 0;
        break;
    }
    case SDXL_SAMPLER_DPMPP_2M:
    case SDXL_SAMPLER_DPMPP_2M_SDE:
    case SDXL_SAMPLER_DPMPP_2S:
    case SDXL_SAMPLER_UNIPC:
    case SDXL_SAMPLER_DEIS:
    case SDXL_SAMPLER_SA_SOLVER: {
        int n = s->steps;
        int ends_at_min = c->sampler == SDXL_SAMPLER_UNIPC || c->sampler == SDXL_SAMPLER_DEIS ||
                          c->sampler == SDXL_SAMPLER_SA_SOLVER;
        if (c->schedule == SDXL_SCHEDULE_DEFAULT || (c->schedule == SDXL_SCHEDULE_KARRAS && c->diffusers_karras)) {
            /* multistep honours timestep_spacing with N+1 points; singlestep always uses linspace */
            sdxl_spacing sp = c->sampler == SDXL_SAMPLER_DPMPP_2S ? SDXL_SPACING_LINSPACE : c->spacing;
            int off = c->sampler == SDXL_SAMPLER_DPMPP_2S ? 0 : c->steps_offset;
            if ((r = sdxl_diffusers_timesteps(T, sp, off, n, 1, tt, e))) return r;
            if (c->schedule == SDXL_SCHEDULE_KARRAS) {
                double smin = c->sched.sigma_min > 0 ? c->sched.sigma_min : T->sigmas[0];
                double smax = c->sched.sigma_max > 0 ? c->sched.sigma_max : T->sigmas[T->n - 1];
                sdxl_karras_sigmas(smin, smax, c->sched.rho, n, sg);
                for (int i = 0; i < n; i++) tt[i] = nearbyint(sdxl_sigma_to_t(T, sg[i]));
            } else {
                for (int i = 0; i < n; i++) sg[i] = sdxl_t_to_sigma_lin(T, tt[i]);
            }
        } else {
            if ((r = base_sigmas(s, sg, tt, &rt, e))) return r;
            n = s->steps;
        }
        for (int i = 0; i < n; i++) s->sig[i] = (float)sg[i], s->ts[i] = (float)tt[i];
        /* DPM-Solver: final_sigmas_type "zero"; UniPC/DEIS/SA-Solver end at sigma(t=0), or repeat the
         * last Karras sigma */
        s->sig[n] = !ends_at_min ? 0.0f : (c->schedule == SDXL_SCHEDULE_KARRAS ? s->sig[n - 1] : T->sigmas[0]);
        s->n_sig = n + 1;
        s->n_ts = s->n_calls = n;
        if (c->sampler == SDXL_SAMPLER_DPMPP_2S) {
            /* get_order_list with lower_order_final forced on (final_sigmas_type zero) */
            for (int i = 0; i < n; i++) s->order_list[i] = (i % 2) ? 2 : 1;
            s->order_list[n - 1] = 1;
        }
        break;
    }
    case SDXL_SAMPLER_DPMPP_2S_A:
    case SDXL_SAMPLER_DPMPP_3M_SDE: {
        /* k-diffusion samplers on the A1111 default schedules: Karras for 2S a, exponential for 3M SDE */
        if (s->c.schedule == SDXL_SCHEDULE_DEFAULT)
            s->c.schedule = c->sampler == SDXL_SAMPLER_DPMPP_2S_A ? SDXL_SCHEDULE_KARRAS : SDXL_SCHEDULE_EXPONENTIAL;
        if ((r = base_sigmas(s, sg, tt, &rt, e))) return r;
        int n = s->steps, k = 0;
        for (int i = 0; i < n; i++) s->sig[i] = (float)sg[i];
        s->sig[n] = 0;
        s->n_sig = n + 1;
        for (int i = 0; i < n; i++) {
            s->call_start[i] = k;
            s->step_of[k] = i;
            s->sig_i[k] = s->sig[i];
            s->ts[k++] = (float)tt[i];
            if (c->sampler == SDXL_SAMPLER_DPMPP_3M_SDE) continue;
            float up = ancestral_up(s->sig[i], s->sig[i + 1], c->ancestral_eta);
            float st = s->sig[i + 1], down = sqrtf(st * st - up * up);
            s->sig_up[i] = up, s->sig_down[i] = down;
            if (down == 0) continue; /* Euler step: one call */
            float t0 = -logf(s->sig[i]), h = -logf(down) - t0, mid = expf(-(t0 + 0.5f * h));
            s->step_of[k] = i;
            s->sig_i[k] = mid;
            s->ts[k++] = (float)sdxl_sigma_to_t(T, mid);
        }
        s->call_start[n] = k;
        s->step_of[k] = n;
        s->n_ts = s->n_calls = k;
        set_init_sigma_ve(s);
        return SDXL_OK;
    }
    default: /* sdxl_sampler_config_check has already refused kinds outside the enum */
        return sdxl_seterr(e, SDXL_ERR_INTERNAL, "sampler: no schedule rule for kind %d", (int)c->sampler);
    }
    /* calls -> steps */
    int n = s->steps;
    if (s->n_calls == n) {
        for (int k = 0; k <= n; k++) s->call_start[k] = k;
    } else if (c->sampler == SDXL_SAMPLER_PNDM) {
        for (int k = 0; k <= n; k++) s->call_start[k] = k == 0 ? 0 : k + 1;
    } else {
        for (int k = 0; k < n; k++) s->call_start[k] = 2 * k;
        s->call_start[n] = s->n_calls;
    }
    return SDXL_OK;
}

/* ---- per-call step math --------------------------------------------------------------------- */

#define FOR_N for (size_t i = 0; i < s->n; i++)

static float *B(sdxl_sampler *s, int k) { return s->buf[k]; }

/* Where a run's noise comes from: the caller's noise callback, else its generator. */
typedef struct noise_src {
    const sdxl_sampler_run_opts *o;
    sdxl_err *e;
    int err;
} noise_src;

/* Standard-normal noise for the move from level `from` to level `to` (sigma units). */
static void draw(sdxl_sampler *s, noise_src *ns, float *dst, double from, double to) {
    if (ns->o->noise) {
        int r = ns->err ? ns->err : ns->o->noise(ns->o->noise_user, dst, s->n, from, to, ns->e);
        if (r) {
            ns->err = r;
            memset(dst, 0, s->n * sizeof(float));
        }
    } else if (ns->o->rng) {
        sdxl_rng_randn(ns->o->rng, dst, s->n);
    } else {
        memset(dst, 0, s->n * sizeof(float));
    }
}

static double table_sigma(const sdxl_sampler *s, int t) { return t >= 0 && t < s->tab.n ? s->tab.sigmas[t] : 0.0; }

static int tstep(const sdxl_sampler *s, int idx) { return (int)s->ts[idx]; }

static float ac_or(const sdxl_sampler *s, int t, float final) {
    return t >= 0 && t < s->tab.n ? s->tab.alphas_cumprod[t] : final;
}

/* Noise level the model sees at call idx (sigma-space scale_model_input). */
static float input_sigma(const sdxl_sampler *s, int idx) {
    switch (s->c.sampler) {
    case SDXL_SAMPLER_DPM2: return s->has_sample ? s->sig_i[idx] : s->sig[idx];
    case SDXL_SAMPLER_DPM2_A: return s->has_sample ? s->sig_i[idx - 1] : s->sig[idx];
    case SDXL_SAMPLER_DPMPP_SDE: return s->has_sample ? s->mid_sigma : s->sig[idx];
    case SDXL_SAMPLER_DPMPP_2S_A: case SDXL_SAMPLER_DPMPP_3M_SDE: return s->sig_i[idx];
    default: return s->sig[idx];
    }
}

static void alpha_sigma(float sigma, float *a, float *st) {
    *a = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *st = sigma * *a;
}

/* Gauss-Legendre 4 points: exact for the cubic Lagrange bases of LMS. */
static double lms_coeff(const sdxl_sampler *s, int order, int t, int cur) {
    static const double X[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526};
    static const double W[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538};
    double a = s->sig[t], b = s->sig[t + 1], acc = 0;
    for (int q = 0; q < 4; q++) {
        double tau = 0.5 * (b - a) * X[q] + 0.5 * (a + b), prod = 1;
        for (int k = 0; k < order; k++)
            if (k != cur) prod *= (tau - s->sig[t - k]) / ((double)s->sig[t - cur] - s->sig[t - k]);
        acc += W[q] * prod;
    }
    return acc * 0.5 * (b - a);
}


/* lambda = log(alpha) - log(sigma) of a VP level given in sigma form (float32, as diffusers). */
static float lambda_of(float sigma) {
    float a, st;
    alpha_sigma(sigma, &a, &st);
    return logf(a) - logf(st);
}

/* Shifts the model-output history: M1 <- M0, M0 <- the buffer `fresh` (whose storage is recycled). */
static void push_output(sdxl_sampler *s, int fresh) {
    float *old = s->buf[B_M1];
    s->buf[B_M1] = s->buf[B_M0];
    s->buf[B_M0] = s->buf[fresh];
    s->buf[fresh] = old;
    if (s->n_hist < 2) s->n_hist++;
}

/* torch.linalg.solve of [[1, 1], [rk, 1]] x = b as LAPACK getrf/getrs do it in float32: partial
 * pivoting, the pivot column scaled by the pivot's reciprocal. */
static void solve2(float rk, float b0, float b1, float *x0, float *x1) {
    float a00 = 1, a01 = 1, a10 = rk, a11 = 1;
    if (fabsf(rk) > 1.0f) {
        a00 = rk, a01 = 1, a10 = 1, a11 = 1;
        float t = b0;
        b0 = b1, b1 = t;
    }
    float l = a10 * (1.0f / a00), u11 = a11 - l * a01;
    float y1 = b1 - l * b0;
    *x1 = y1 / u11;
    *x0 = (b0 - a01 * *x1) / a00;
}

/* UniPC B(h) coefficients (bh2, data prediction), for the predictor (p) or corrector (c) of
 * `order`: rk is (lambda_s1 - lambda_s0)/h for order 2. Returns hh = -h, h_phi_1 and B_h. */
static void unipc_coeffs(float h, float *hphi1, float *bh, float rk, int order, int corrector, float *rho0,
                         float *rho1) {
    float hh = -h, p1 = expm1f(hh), B = expm1f(hh);
    *hphi1 = p1;
    *bh = B;
    *rho0 = 0.5f, *rho1 = 0;
    if (!corrector || order < 2) return;
    float phik = p1 / hh - 1.0f;
    float b0 = phik * 1.0f / B;
    phik = phik / hh - 0.5f;
    float b1 = phik * 2.0f / B;
    solve2(rk, b0, b1, rho0, rho1);
}

/* SA-Solver: integral of exp(k x) x^order over [start, end] with k = 1 + tau^2 (tau 0 or 1). */
static float sa_exp_pos(int order, float start, float end, int k) {
    float ec = (float)k * end, sc = (float)k * start, dec = expf(-(ec - sc)), e = expf(ec);
    if (order == 0) return e * (1.0f - dec) / (float)k;
    return e * ((ec - 1.0f) - (sc - 1.0f) * dec) / (float)(k * k);
}

/* SA-Solver Lagrange-basis coefficients for order 1 or 2 over lambda_list l (newest first). */
static void sa_coeffs(int order, float start, float end, const float *l, int k, float *c) {
    if (order == 1) {
        c[0] = 1.0f * sa_exp_pos(0, start, end, k);
        return;
    }
    float d01 = l[0] - l[1], d10 = l[1] - l[0];
    float lc[2][2] = {{1.0f / d01, -l[1] / d01}, {1.0f / d10, -l[0] / d10}};
    float p1 = sa_exp_pos(1, start, end, k), p0 = sa_exp_pos(0, start, end, k);
    for (int i = 0; i < 2; i++) c[i] = lc[i][0] * p1 + lc[i][1] * p0;
}

static int sa_tau(float t) { return t >= 200 && t <= 800 ? 1 : 0; }

/* One SA-Solver update from level sig[from] to sig[from + 1]: the predictor (from = idx, outputs
 * M0, M1 newest first) or the corrector (from = idx - 1, outputs `cur`, M0). */
static void sa_update(sdxl_sampler *s, int from, int order, int tau, const float *xs, const float *m_new,
                      const float *m_old, const float *nz, float *out, int corrector) {
    float lt = lambda_of(s->sig[from + 1]), l0 = lambda_of(s->sig[from]);
    float at, st, a0, s0;
    alpha_sigma(s->sig[from + 1], &at, &st);
    alpha_sigma(s->sig[from], &a0, &s0);
    (void)at;
    (void)a0;
    int k = 1 + tau * tau;
    float h = lt - l0, lam[2];
    lam[0] = corrector ? lt : l0;
    lam[1] = corrector ? l0 : (from >= 1 ? lambda_of(s->sig[from - 1]) : l0);
    float c[2] = {0, 0};
    sa_coeffs(order, l0, lt, lam, k, c);
    if (order == 2) {
        float ek = expf((float)k * lt), emk = expf((float)k * -h), fix;
        if (!corrector) {
            float ls1 = lambda_of(s->sig[from - 1]);
            fix = 1.0f * ek * (h * h / 2.0f - (h * (float)k - 1.0f + emk) / (float)(k * k)) / (l0 - ls1);
        } else {
            fix = 1.0f * ek * (h / 2.0f - (h * (float)k - 1.0f + emk) / ((float)(k * k) * h));
        }
        c[0] += fix;
        c[1] -= fix;
    }
    float g = (float)k * st * expf((float)(-(tau * tau)) * lt);
    float g0 = g * c[0], g1 = order == 2 ? g * c[1] : 0.0f;
    float nc = st * sqrtf(1.0f - expf((float)(-2 * tau * tau) * h));
    float xc = expf((float)(-(tau * tau)) * h) * (st / s0);
    FOR_N {
        float gp = g0 * m_new[i];
        if (order == 2) gp = gp + g1 * m_old[i];
        out[i] = xc * xs[i] + gp + nc * nz[i];
    }
}

static void step_call(sdxl_sampler *s, int idx, float *x, const float *eps, noise_src *ns) {
    const sdxl_sampler_config *c = &s->c;
    float *noise = B(s, B_NOISE);
    switch (c->sampler) {
    case SDXL_SAMPLER_EULER: {
        /* diffusers draws (and discards with s_churn = 0) every step: keeps the generator aligned */
        if (!ns->o->noise) draw(s, ns, noise, s->sig[idx], s->sig[idx + 1]);
        float sigma = s->sig[idx], dt = s->sig[idx + 1] - sigma;
        FOR_N {
            float pred = x[i] - sigma * eps[i];
            float d = (x[i] - pred) / sigma;
            x[i] = x[i] + d * dt;
        }
        break;
    }
    case SDXL_SAMPLER_EULER_A: {
        float sf = s->sig[idx], st = s->sig[idx + 1];
        float up = ancestral_up(sf, st, c->ancestral_eta);
        float down = sqrtf(st * st - up * up), dt = down - sf;
        draw(s, ns, noise, sf, st);
        FOR_N {
            float pred = x[i] - sf * eps[i];
            float d = (x[i] - pred) / sf;
            float p = x[i] + d * dt;
            x[i] = p + noise[i] * up;
        }
        break;
    }
    case SDXL_SAMPLER_HEUN: {
        float *d0 = B(s, B_DERIV), *saved = B(s, B_SAMPLE);
        if (!s->has_sample) {
            float sigma = s->sig[idx], dt = s->sig[idx + 1] - sigma;
            FOR_N {
                float pred = x[i] - sigma * eps[i];
                d0[i] = (x[i] - pred) / sigma;
                saved[i] = x[i];
                x[i] = x[i] + d0[i] * dt;
            }
            s->dt_saved = dt;
            s->has_sample = 1;
        } else {
            float sn = s->sig[idx], dt = s->dt_saved;
            FOR_N {
                float pred = x[i] - sn * eps[i];
                float d = (x[i] - pred) / sn;
                d = (d0[i] + d) / 2;
                x[i] = saved[i] + d * dt;
            }
            s->has_sample = 0;
        }
        break;
    }
    case SDXL_SAMPLER_DPM2: {
        float *saved = B(s, B_SAMPLE);
        if (!s->has_sample) {
            float sigma = s->sig[idx], si = s->sig_i[idx + 1], dt = si - sigma;
            FOR_N {
                float pred = x[i] - sigma * eps[i];
                float d = (x[i] - pred) / sigma;
                saved[i] = x[i];
                x[i] = x[i] + d * dt;
            }
            s->has_sample = 1;
        } else {
            float sigma = s->sig[idx - 1], si = s->sig_i[idx], dt = s->sig[idx] - sigma;
            FOR_N {
                float pred = x[i] - si * eps[i];
                float d = (x[i] - pred) / si;
                x[i] = saved[i] + d * dt;
            }
            s->has_sample = 0;
        }
        break;
    }
    case SDXL_SAMPLER_DPM2_A: {
        float *saved = B(s, B_SAMPLE);
        /* drawn on both calls (diffusers' stream), used by the second */
        if (s->has_sample) draw(s, ns, noise, s->sig[idx - 1], s->sig[idx]);
        else if (!ns->o->noise) draw(s, ns, noise, s->sig[idx], s->sig[idx + 1]);
        if (!s->has_sample) {
            float sigma = s->sig[idx], si = s->sig_i[idx], dt = si - sigma;
            FOR_N {
                float pred = x[i] - sigma * eps[i];
                float d = (x[i] - pred) / sigma;
                saved[i] = x[i];
                x[i] = x[i] + d * dt;
            }
            s->has_sample = 1;
        } else {
            float sigma = s->sig[idx - 1], si = s->sig_i[idx - 1], up = s->sig_up[idx - 1];
            float dt = s->sig_down[idx - 1] - sigma;
            FOR_N {
                float pred = x[i] - si * eps[i];
                float d = (x[i] - pred) / si;
                float p = saved[i] + d * dt;
                x[i] = p + noise[i] * up;
            }
            s->has_sample = 0;
        }
        break;
    }
    case SDXL_SAMPLER_LMS: {
        /* history ring: derivative j steps ago lives in buf[B_E0 + (pos - j) mod 4] */
        int order = idx + 1 < 4 ? idx + 1 : 4;
        int slot = s->counter % 4;
        float *dn = B(s, B_E0 + slot);
        float sigma = s->sig[idx];
        FOR_N {
            float pred = x[i] - sigma * eps[i];
            dn[i] = (x[i] - pred) / sigma;
        }
        s->counter++;
        if (s->n_hist < 4) s->n_hist++;
        if (order > s->n_hist) order = s->n_hist;
        float co[4];
        for (int k = 0; k < order; k++) co[k] = (float)lms_coeff(s, order, idx, k);
        FOR_N {
            float acc = co[0] * B(s, B_E0 + slot)[i];
            for (int k = 1; k < order; k++) acc = acc + co[k] * B(s, B_E0 + (slot - k + 4) % 4)[i];
            x[i] = x[i] + acc;
        }
        break;
    }
    case SDXL_SAMPLER_DDIM: {
        int t = tstep(s, idx), pt = t - s->tab.n / s->steps;
        float at = s->tab.alphas_cumprod[t], ap = ac_or(s, pt, s->tab.alphas_cumprod[0]);
        float bt = 1 - at, bp = 1 - ap;
        float var = (bp / bt) * (1 - at / ap);
        float sd = (float)c->eta * sqrtf(var);
        float sb = sqrtf(bt), sa = sqrtf(at), sap = sqrtf(ap), dir = sqrtf(1 - ap - sd * sd);
        if (c->eta > 0) draw(s, ns, noise, table_sigma(s, t), table_sigma(s, pt));
        FOR_N {
            float x0 = (x[i] - sb * eps[i]) / sa;
            float p = sap * x0 + dir * eps[i];
            x[i] = c->eta > 0 ? p + sd * noise[i] : p;
        }
        break;
    }
    case SDXL_SAMPLER_DDPM: {
        int t = tstep(s, idx), pt = t - s->tab.n / s->steps;
        float at = s->tab.alphas_cumprod[t], ap = ac_or(s, pt, 1.0f);
        float bt = 1 - at, bp = 1 - ap, ca = at / ap, cb = 1 - ca;
        float c0 = (sqrtf(ap) * cb) / bt, c1 = sqrtf(ca) * bp / bt;
        float sb = sqrtf(bt), sa = sqrtf(at);
        float var = (1 - ap) / (1 - at) * (1 - at / ap);
        if (var < 1e-20f) var = 1e-20f;
        float sv = sqrtf(var);
        if (t > 0) draw(s, ns, noise, table_sigma(s, t), table_sigma(s, pt));
        FOR_N {
            float x0 = (x[i] - sb * eps[i]) / sa;
            float p = c0 * x0 + c1 * x[i];
            x[i] = t > 0 ? p + sv * noise[i] : p;
        }
        break;
    }
    case SDXL_SAMPLER_PNDM: {
        int ratio = s->tab.n / s->steps;
        int t = tstep(s, idx), pt = t - ratio;
        float *saved = B(s, B_SAMPLE), *mo = B(s, B_M0);
        const float *xs = x;
        if (s->counter != 1) {
            /* keep the last 3, append: ets ring in E0..E3, n_hist entries, newest at (n_hist-1) */
            if (s->n_hist == 4) {
                float *tmp = s->buf[B_E0];
                memmove(&s->buf[B_E0], &s->buf[B_E1], 3 * sizeof(float *));
                s->buf[B_E3] = tmp;
                s->n_hist = 3;
            }
            memcpy(s->buf[B_E0 + s->n_hist], eps, s->n * sizeof(float));
            s->n_hist++;
        } else {
            pt = t;
            t = t + ratio;
        }
        const float *e1 = s->buf[B_E0 + s->n_hist - 1];
        if (s->n_hist == 1 && s->counter == 0) {
            memcpy(mo, eps, s->n * sizeof(float));
            memcpy(saved, x, s->n * sizeof(float));
        } else if (s->n_hist == 1 && s->counter == 1) {
            FOR_N mo[i] = (eps[i] + e1[i]) / 2;
            xs = saved;
        } else if (s->n_hist == 2) {
            const float *e2 = s->buf[B_E0];
            FOR_N mo[i] = (3 * e1[i] - e2[i]) / 2;
        } else if (s->n_hist == 3) {
            const float *e2 = s->buf[B_E1], *e3 = s->buf[B_E0];
            FOR_N mo[i] = (23 * e1[i] - 16 * e2[i] + 5 * e3[i]) / 12;
        } else {
            const float *e2 = s->buf[B_E2], *e3 = s->buf[B_E1], *e4 = s->buf[B_E0];
            const float k24 = (float)(1.0 / 24);
            FOR_N mo[i] = k24 * (55 * e1[i] - 59 * e2[i] + 37 * e3[i] - 9 * e4[i]);
        }
        float at = s->tab.alphas_cumprod[t], ap = ac_or(s, pt, s->tab.alphas_cumprod[0]);
        float bt = 1 - at, bp = 1 - ap;
        float sc = sqrtf(ap / at), den = at * sqrtf(bp) + sqrtf(at * bt * ap), dd = ap - at;
        FOR_N x[i] = sc * xs[i] - dd * mo[i] / den;
        s->counter++;
        break;
    }
    case SDXL_SAMPLER_DPMPP_2M:
    case SDXL_SAMPLER_DPMPP_2M_SDE:
    case SDXL_SAMPLER_DPMPP_2S: {
        int sde = c->sampler == SDXL_SAMPLER_DPMPP_2M_SDE, single = c->sampler == SDXL_SAMPLER_DPMPP_2S;
        float a0, s0;
        alpha_sigma(s->sig[idx], &a0, &s0);
        /* model_outputs shift: M1 <- M0 <- x0 prediction */
        float *tmp = s->buf[B_M1];
        s->buf[B_M1] = s->buf[B_M0];
        s->buf[B_M0] = tmp;
        float *m0 = B(s, B_M0), *m1 = B(s, B_M1);
        FOR_N m0[i] = (x[i] - s0 * eps[i]) / a0;
        if (s->n_hist < 2) s->n_hist++;
        if (sde) draw(s, ns, noise, s->sig[idx], s->sig[idx + 1]);
        float at, st;
        alpha_sigma(s->sig[idx + 1], &at, &st);
        float lt = logf(at) - logf(st), l0 = logf(a0) - logf(s0);
        int order;
        if (single) {
            order = s->order_list[idx];
            while (order > s->n_hist) order--;
            if (order == 1) memcpy(B(s, B_SAMPLE), x, s->n * sizeof(float));
        } else {
            int last = idx == s->n_ts - 1;
            order = (s->lower_order_nums < 1 || last) ? 1 : 2;
        }
        const float *xs = single ? B(s, B_SAMPLE) : x;
        if (order == 1) {
            float h = lt - l0, eh = expf(-h);
            if (!sde) {
                float ca = st / s0, cm = at * (eh - 1.0f);
                FOR_N x[i] = ca * xs[i] - cm * m0[i];
            } else {
                float e2h = expf(-2.0f * h);
                float ca = st / s0 * eh, cm = at * (1 - e2h), cn = st * sqrtf(1.0f - e2h);
                FOR_N x[i] = ca * xs[i] + cm * m0[i] + cn * noise[i];
            }
        } else {
            float a1, s1;
            alpha_sigma(s->sig[idx - 1], &a1, &s1);
            float l1 = logf(a1) - logf(s1);
            float h, h0, sref;
            if (single) {
                h = lt - l1, h0 = l0 - l1, sref = s1;
            } else {
                h = lt - l0, h0 = l0 - l1, sref = s0;
            }
            float r0 = h0 / h, ir = 1.0f / r0, eh = expf(-h);
            const float *D0 = single ? m1 : m0;
            if (!sde) {
                float ca = st / sref, cm = at * (eh - 1.0f), cd = 0.5f * (at * (eh - 1.0f));
                FOR_N {
                    float d1 = ir * (m0[i] - m1[i]);
                    x[i] = ca * xs[i] - cm * D0[i] - cd * d1;
                }
            } else {
                float e2h = expf(-2.0f * h);
                float ca = st / s0 * eh, cm = at * (1 - e2h), cd = 0.5f * (at * (1 - e2h)), cn = st * sqrtf(1.0f - e2h);
                FOR_N {
                    float d1 = ir * (m0[i] - m1[i]);
                    x[i] = ca * xs[i] + cm * D0[i] + cd * d1 + cn * noise[i];
                }
            }
        }
        if (s->lower_order_nums < 2) s->lower_order_nums++;
        break;
    }
    case SDXL_SAMPLER_DPMPP_SDE: {
        int first = !s->has_sample;
        float sigma = first ? s->sig[idx] : s->sig[idx - 1], next = first ? s->sig[idx + 1] : s->sig[idx];
        float t = -logf(sigma), tn = -logf(next), tp = t + (tn - t) * 0.5f;
        float sin_ = first ? sigma : expf(-tp);
        float *saved = B(s, B_SAMPLE), *z1 = B(s, B_NOISE2);
        if (next == 0) {
            float dt = next - sigma;
            FOR_N {
                float pred = x[i] - sin_ * eps[i];
                float d = (x[i] - pred) / sigma;
                x[i] = x[i] + d * dt;
            }
            break;
        }
        if (first) tn = tp;
        float sf = expf(-t), stt = expf(-tn);
        float up = sqrtf(stt * stt * (sf * sf - stt * stt) / (sf * sf));
        if (stt < up) up = stt;
        float down = sqrtf(stt * stt - up * up), ta = -logf(down);
        float ca = expf(-ta) / expf(-t), cp = expm1f(t - ta);
        float sn = (float)c->s_noise;
        /* Brownian increments normalised by sqrt(|dt|): z1 on [sigma, mid], then the whole step
         * [sigma, next] = (sqrt(d1) z1 + sqrt(d2) z2) / sqrt(d1 + d2) with a fresh z2 on [mid, next],
         * unless a noise callback supplies each increment itself */
        float mid = first ? stt : s->mid_sigma;
        /* the callback sees diffusers' sigma_fn(t) values (exp(-(-log sigma)) may differ from sigma
         * in the last bit, which moves a torchsde query time rounded to 1e-6) */
        if (first) {
            draw(s, ns, z1, sf, mid);
            memcpy(noise, z1, s->n * sizeof(float));
            s->bt_d1 = fabsf(sigma - mid);
        } else if (ns->o->noise) {
            draw(s, ns, noise, sf, stt);
        } else {
            draw(s, ns, noise, mid, next);
            float d1 = s->bt_d1, d2 = fabsf(mid - next), w1 = sqrtf(d1), w2 = sqrtf(d2), wn = sqrtf(d1 + d2);
            FOR_N noise[i] = (w1 * z1[i] + w2 * noise[i]) / wn;
        }
        const float *xs = first ? x : saved;
        FOR_N {
            float pred = x[i] - sin_ * eps[i];
            float p = ca * xs[i] - cp * pred;
            float nv = noise[i] * sn;
            if (first) saved[i] = x[i];
            x[i] = p + nv * up;
        }
        if (first) {
            s->has_sample = 1;
            s->mid_sigma = stt;
        } else {
            s->has_sample = 0;
        }
        break;
    }
    case SDXL_SAMPLER_LCM: {
        int t = tstep(s, idx), pt = idx + 1 < s->n_ts ? tstep(s, idx + 1) : t;
        float at = s->tab.alphas_cumprod[t], ap = ac_or(s, pt, s->tab.alphas_cumprod[0]);
        float bt = 1 - at, bp = 1 - ap;
        float sc = (float)t * (float)c->lcm_timestep_scaling;
        float cskip = 0.25f / (sc * sc + 0.25f), cout = sc / sqrtf(sc * sc + 0.25f);
        float sb = sqrtf(bt), sa = sqrtf(at);
        int last = idx == s->n_ts - 1;
        if (!last) draw(s, ns, noise, table_sigma(s, t), table_sigma(s, pt));
        float sap = sqrtf(ap), sbp = sqrtf(bp);
        FOR_N {
            float x0 = (x[i] - sb * eps[i]) / sa;
            float den = cout * x0 + cskip * x[i];
            x[i] = last ? den : sap * den + sbp * noise[i];
        }
        break;
    }
    case SDXL_SAMPLER_DPMPP_2S_A: {
        /* k-diffusion sample_dpmpp_2s_ancestral: DPM-Solver++(2S) to sigma_down via the midpoint in
         * -log(sigma), then ancestral noise of sigma_up; an Euler step where sigma_down is 0 */
        int k = s->step_of[idx];
        float sigma = s->sig[k], next = s->sig[k + 1], up = s->sig_up[k], down = s->sig_down[k];
        float sn = (float)c->s_noise;
        float *saved = B(s, B_SAMPLE);
        if (!s->has_sample) {
            if (down == 0) {
                float dt = down - sigma;
                FOR_N {
                    float den = x[i] - sigma * eps[i];
                    x[i] = x[i] + (x[i] - den) / sigma * dt;
                }
                if (next > 0) {
                    draw(s, ns, noise, sigma, next);
                    FOR_N x[i] = x[i] + noise[i] * sn * up;
                }
                break;
            }
            float t0 = -logf(sigma), h = -logf(down) - t0, sm = t0 + 0.5f * h;
            float ca = expf(-sm) / expf(-t0), cd = expm1f(-h * 0.5f);
            FOR_N {
                float den = x[i] - sigma * eps[i];
                saved[i] = x[i];
                x[i] = ca * x[i] - cd * den;
            }
            s->has_sample = 1;
        } else {
            float t0 = -logf(sigma), tn = -logf(down), h = tn - t0, mid = s->sig_i[idx];
            float ca = expf(-tn) / expf(-t0), cd = expm1f(-h);
            if (next > 0) draw(s, ns, noise, sigma, next);
            FOR_N {
                float den2 = x[i] - mid * eps[i];
                float v = ca * saved[i] - cd * den2;
                x[i] = next > 0 ? v + noise[i] * sn * up : v;
            }
            s->has_sample = 0;
        }
        break;
    }
    case SDXL_SAMPLER_DPMPP_3M_SDE: {
        /* k-diffusion sample_dpmpp_3m_sde: third-order multistep in data prediction with SDE noise
         * of strength eta; the Brownian increments of one call per step are independent normals */
        float sigma = s->sig[idx], next = s->sig[idx + 1];
        float *d0 = B(s, B_DERIV), *d1m = B(s, B_M0), *d2m = B(s, B_M1);
        FOR_N d0[i] = x[i] - sigma * eps[i];
        float h = s->h1;
        if (next == 0) {
            memcpy(x, d0, s->n * sizeof(float));
        } else {
            float eta = (float)c->ancestral_eta, sn = (float)c->s_noise;
            float t0 = -logf(sigma), t1 = -logf(next);
            h = t1 - t0;
            float he = h * (eta + 1.0f), ex = expf(-he), cm = -expm1f(-he);
            float phi2 = expm1f(-he) / he + 1.0f, phi3 = phi2 / he - 0.5f;
            int order = s->n_hist;
            float r0 = order >= 1 ? s->h1 / h : 1.0f, r1 = order >= 2 ? s->h2 / h : 1.0f;
            float cn = 0;
            if (eta != 0) {
                draw(s, ns, noise, sigma, next);
                cn = next * sqrtf(-expm1f(-2.0f * h * eta)) * sn;
            }
            FOR_N {
                float v = ex * x[i] + cm * d0[i];
                if (order >= 2) {
                    float a = (d0[i] - d1m[i]) / r0, b = (d1m[i] - d2m[i]) / r1;
                    float q = a + (a - b) * r0 / (r0 + r1), w = (a - b) / (r0 + r1);
                    v = v + phi2 * q - phi3 * w;
                } else if (order == 1) {
                    v = v + phi2 * ((d0[i] - d1m[i]) / r0);
                }
                x[i] = eta != 0 ? v + noise[i] * cn : v;
            }
        }
        push_output(s, B_DERIV);
        s->h2 = s->h1;
        s->h1 = h;
        break;
    }
    case SDXL_SAMPLER_UNIPC: {
        /* UniPCMultistepScheduler, bh2, predict_x0: corrector UniC on the incoming sample, then
         * predictor UniP; orders warm up from 1 and drop to 1 on the last step */
        float a0, s0;
        alpha_sigma(s->sig[idx], &a0, &s0);
        float *mc = B(s, B_DERIV);
        FOR_N mc[i] = (x[i] - s0 * eps[i]) / a0;
        if (idx > 0 && s->has_sample) {
            const float *last = B(s, B_SAMPLE), *m0 = B(s, B_M0), *m1 = B(s, B_M1);
            int order = s->this_order;
            float at, st, as, ss;
            alpha_sigma(s->sig[idx], &at, &st);
            alpha_sigma(s->sig[idx - 1], &as, &ss);
            float lt = logf(at) - logf(st), l0 = logf(as) - logf(ss), h = lt - l0;
            float rk = order >= 2 ? (lambda_of(s->sig[idx - 2]) - l0) / h : 1.0f;
            float hphi1, bh, r0, r1;
            unipc_coeffs(h, &hphi1, &bh, rk, order, 1, &r0, &r1);
            float ca = st / ss, cm = at * hphi1, cb = at * bh;
            FOR_N {
                float xt = ca * last[i] - cm * m0[i];
                float d1t = mc[i] - m0[i];
                float res = order >= 2 ? r0 * ((m1[i] - m0[i]) / rk) + r1 * d1t : 0.0f + r0 * d1t;
                x[i] = xt - cb * res;
            }
        }
        push_output(s, B_DERIV);
        int order = s->n_ts - idx < 2 ? s->n_ts - idx : 2;
        if (order > s->lower_order_nums + 1) order = s->lower_order_nums + 1;
        s->this_order = order;
        memcpy(B(s, B_SAMPLE), x, s->n * sizeof(float));
        s->has_sample = 1;
        {
            const float *m0 = B(s, B_M0), *m1 = B(s, B_M1);
            float at, st;
            alpha_sigma(s->sig[idx + 1], &at, &st);
            float lt = logf(at) - logf(st), l0 = lambda_of(s->sig[idx]), h = lt - l0;
            float hphi1, bh, r0, r1;
            float rk = order >= 2 ? (lambda_of(s->sig[idx - 1]) - l0) / h : 1.0f;
            unipc_coeffs(h, &hphi1, &bh, rk, order, 0, &r0, &r1);
            float ca = st / s0, cm = at * hphi1, cb = at * bh;
            FOR_N {
                float xt = ca * x[i] - cm * m0[i];
                x[i] = order >= 2 ? xt - cb * (r0 * ((m1[i] - m0[i]) / rk)) : xt;
            }
        }
        if (s->lower_order_nums < 2) s->lower_order_nums++;
        break;
    }
    case SDXL_SAMPLER_DEIS: {
        /* DEISMultistepScheduler, logrho, order 2: epsilon history, exponential integrator in log rho */
        float a0, s0, at, st;
        alpha_sigma(s->sig[idx], &a0, &s0);
        alpha_sigma(s->sig[idx + 1], &at, &st);
        float *mc = B(s, B_DERIV);
        FOR_N {
            float x0 = (x[i] - s0 * eps[i]) / a0;
            mc[i] = (x[i] - a0 * x0) / s0;
        }
        push_output(s, B_DERIV);
        const float *m0 = B(s, B_M0), *m1 = B(s, B_M1);
        int lof = idx == s->n_ts - 1 && s->n_ts < 15, los = idx == s->n_ts - 2 && s->n_ts < 15;
        (void)los;
        if (s->lower_order_nums < 1 || lof) {
            float h = (logf(at) - logf(st)) - (logf(a0) - logf(s0));
            float ca = at / a0, cm = st * (expf(h) - 1.0f);
            FOR_N x[i] = ca * x[i] - cm * m0[i];
        } else {
            float a1, s1;
            alpha_sigma(s->sig[idx - 1], &a1, &s1);
            float rt = st / at, r0 = s0 / a0, r1 = s1 / a1;
            float Lt = logf(rt), L0 = logf(r0), L1 = logf(r1);
            /* ind(t, b, c) = t (log t - log c - 1) / (log b - log c), the integral of the Lagrange basis */
            float i_t01 = rt * (-L1 + Lt - 1.0f) / (L0 - L1), i_001 = r0 * (-L1 + L0 - 1.0f) / (L0 - L1);
            float i_t10 = rt * (-L0 + Lt - 1.0f) / (L1 - L0), i_010 = r0 * (-L0 + L0 - 1.0f) / (L1 - L0);
            float c1 = i_t01 - i_001, c2 = i_t10 - i_010;
            FOR_N x[i] = at * (x[i] / a0 + c1 * m0[i] + c2 * m1[i]);
        }
        if (s->lower_order_nums < 2) s->lower_order_nums++;
        break;
    }
    case SDXL_SAMPLER_SA_SOLVER: {
        /* SASolverScheduler, data prediction, predictor and corrector order 2, tau = 1 for
         * 200 <= t <= 800 else 0; noise drawn every step after the corrector */
        float a0, s0;
        alpha_sigma(s->sig[idx], &a0, &s0);
        float *mc = B(s, B_DERIV);
        FOR_N mc[i] = (x[i] - s0 * eps[i]) / a0;
        if (idx > 0 && s->has_sample)
            sa_update(s, idx - 1, s->this_corr_order, s->prev_tau, B(s, B_SAMPLE), mc, B(s, B_M0), B(s, B_NOISE2), x, 1);
        push_output(s, B_DERIV);
        draw(s, ns, B(s, B_NOISE2), s->sig[idx], s->sig[idx + 1]); /* last_noise of the next corrector */
        int po = s->n_ts - idx < 2 ? s->n_ts - idx : 2, co = s->n_ts - idx + 1 < 2 ? s->n_ts - idx + 1 : 2;
        if (po > s->lower_order_nums + 1) po = s->lower_order_nums + 1;
        if (co > s->lower_order_nums + 2) co = s->lower_order_nums + 2;
        s->this_order = po;
        s->this_corr_order = co;
        memcpy(B(s, B_SAMPLE), x, s->n * sizeof(float));
        s->has_sample = 1;
        s->prev_tau = sa_tau(s->ts[idx]);
        sa_update(s, idx, po, s->prev_tau, x, B(s, B_M0), B(s, B_M1), B(s, B_NOISE2), x, 0);
        if (s->lower_order_nums < 2) s->lower_order_nums++;
        break;
    }
    default: break;
    }
}

/* ---- object --------------------------------------------------------------------------------- */

int sdxl_sampler_new(const sdxl_sampler_config *c, size_t n, sdxl_sampler **out, sdxl_err *e) {
    *out = NULL;
    int r = sdxl_sampler_config_check(c, e);
    if (r) return r;
    if (n == 0 || n > ((size_t)1 << 34)) return sdxl_seterr(e, SDXL_ERR_ARG, "latents: size must be in [1, 2^34], got %zu", n);
    sdxl_sampler *s = calloc(1, sizeof *s);
    if (!s) return sdxl_seterr(e, SDXL_ERR_NOMEM, "sampler: out of memory");
    s->c = *c;
    s->n = n;
    if (s->c.kdiffusion || s->c.zero_terminal_snr || c->sampler >= SDXL_SAMPLER_DPMPP_2M_SDE_HEUN) {
        s->c.kdiffusion = 1;
        if ((r = sdxl_ksampler_new(&s->c, n, &s->k, e))) {
            free(s);
            return r;
        }
        *out = s;
        return SDXL_OK;
    }
    if ((r = sdxl_train_table_init(&s->tab, c->train_steps, c->beta_kind, c->beta_start, c->beta_end, e)) ||
        (r = plan(s, e))) {
        free(s);
        return r;
    }
    for (int k = 0; k < B_COUNT; k++) {
        s->buf[k] = malloc(n * sizeof(float));
        if (!s->buf[k]) {
            sdxl_sampler_free(s);
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "sampler: cannot allocate %d buffers of %zu floats", B_COUNT, n);
        }
    }
    *out = s;
    return SDXL_OK;
}

void sdxl_sampler_free(sdxl_sampler *s) {
    if (!s) return;
    sdxl_ksampler_free(s->k);
    for (int k = 0; k < B_COUNT; k++) free(s->buf[k]);
    free(s);
}

void sdxl_sampler_reset(sdxl_sampler *s) {
    if (s->k) sdxl_ksampler_reset(s->k);
    s->idx = s->lower_order_nums = s->counter = s->n_hist = s->has_sample = 0;
    s->this_order = s->this_corr_order = s->prev_tau = 0;
    s->h1 = s->h2 = 0;
    s->dt_saved = s->mid_sigma = s->bt_d1 = 0;
}

int sdxl_sampler_config_draws_noise(const sdxl_sampler_config *c) {
    switch (c->sampler) {
    case SDXL_SAMPLER_EULER_A: case SDXL_SAMPLER_DPM2_A: case SDXL_SAMPLER_DDPM: case SDXL_SAMPLER_DPMPP_2M_SDE:
    case SDXL_SAMPLER_DPMPP_SDE: case SDXL_SAMPLER_LCM: case SDXL_SAMPLER_SA_SOLVER: case SDXL_SAMPLER_DPMPP_2S_A:
    case SDXL_SAMPLER_DPMPP_2M_SDE_HEUN: case SDXL_SAMPLER_ER_SDE: case SDXL_SAMPLER_RESTART:
        return 1;
    case SDXL_SAMPLER_DPMPP_3M_SDE: return c->ancestral_eta > 0;
    case SDXL_SAMPLER_DDIM: case SDXL_SAMPLER_DDIM_CFGPP: return c->eta > 0;
    default: return 0;
    }
}

static int needs_noise(const sdxl_sampler *s) { return sdxl_sampler_config_draws_noise(&s->c); }

static double level_at_call(const sdxl_sampler *s, int call) {
    if (call >= s->n_calls) return s->n_sig ? s->sig[s->n_sig - 1] : 0.0;
    if (s->c.sampler == SDXL_SAMPLER_DPMPP_2S_A) return s->sig_i[call];
    if (s->n_sig) return s->sig[call];
    int t = tstep(s, call);
    return t >= 0 && t < s->tab.n ? s->tab.sigmas[t] : 0.0;
}

int sdxl_sampler_run(sdxl_sampler *s, float *x, const sdxl_sampler_run_opts *o, sdxl_err *e) {
    if (s->k) return sdxl_ksampler_run(s->k, x, o, e);
    int end = o->end_step > 0 ? o->end_step : s->steps;
    if (!o->model) return sdxl_seterr(e, SDXL_ERR_ARG, "model: callback is required");
    if (o->start_step < 0 || o->start_step >= s->steps || end > s->steps || end <= o->start_step)
        return sdxl_seterr(e, SDXL_ERR_ARG, "start_step/end_step: need 0 <= start < end <= %d, got %d, %d", s->steps,
                           o->start_step, end);
    if (needs_noise(s) && !o->rng && !o->noise)
        return sdxl_seterr(e, SDXL_ERR_ARG, "rng: sampler %s draws noise and needs a generator or a noise callback",
                           sdxl_sampler_name(s->c.sampler));
    if (o->start_step == 0 || s->idx != s->call_start[o->start_step]) sdxl_sampler_reset(s);
    noise_src ns = {o, e, 0};
    for (int k = o->start_step; k < end; k++) {
        for (int call = s->call_start[k]; call < s->call_start[k + 1]; call++) {
            if (o->cancel && *o->cancel) return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled at step %d", k);
            s->idx = call;
            const float *xin = x;
            double sigma;
            if (!s->vp) {
                float sg = input_sigma(s, call), den = sqrtf(sg * sg + 1.0f);
                float *xi = B(s, B_XIN);
                FOR_N xi[i] = x[i] / den;
                xin = xi;
                sigma = sg;
            } else {
                sigma = level_at_call(s, call);
            }
            int r = o->model(o->model_user, xin, s->n, s->ts[call], sigma, B(s, B_EPS), e);
            if (r) return sdxl_err_prefix(e, "step %d/%d", k + 1, s->steps);
            if (s->c.v_prediction) {
                /* v -> eps on the variance-preserving input: eps = sigma_vp x_in + alpha v */
                float a = 1.0f / sqrtf((float)(sigma * sigma) + 1.0f), sv = (float)sigma * a, *ep = B(s, B_EPS);
                FOR_N ep[i] = sv * xin[i] + a * ep[i];
            }
            step_call(s, call, x, B(s, B_EPS), &ns);
            if (ns.err) return sdxl_err_prefix(e, "step %d/%d: noise", k + 1, s->steps);
        }
        s->idx = s->call_start[k + 1];
        if (o->on_step && o->on_step(o->step_user, k, s->steps, level_at_call(s, s->call_start[k + 1]), x, s->n))
            return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled after step %d", k + 1);
    }
    return SDXL_OK;
}

/* A1111 starts from noise * sigmas[0] */
float sdxl_sampler_init_noise_sigma(const sdxl_sampler *s) {
    int n;
    if (s->k && sdxl_ksampler_vp(s->k)) return 1.0f;
    return s->k ? sdxl_ksampler_sigmas(s->k, &n)[0] : s->init_sigma;
}
int sdxl_sampler_steps(const sdxl_sampler *s) { return s->k ? sdxl_ksampler_steps(s->k) : s->steps; }
int sdxl_sampler_model_calls(const sdxl_sampler *s) { return s->k ? sdxl_ksampler_model_calls(s->k) : s->n_calls; }
int sdxl_sampler_is_kdiffusion(const sdxl_sampler *s) { return s->k != NULL; }
const sdxl_ksampler *sdxl_sampler_ksampler(const sdxl_sampler *s) { return s->k; }

const float *sdxl_sampler_timesteps(const sdxl_sampler *s, int *n) {
    if (s->k) return sdxl_ksampler_timesteps(s->k, n);
    *n = s->n_ts;
    return s->ts;
}

const float *sdxl_sampler_sigmas(const sdxl_sampler *s, int *n) {
    if (s->k) return sdxl_ksampler_sigmas(s->k, n);
    *n = s->n_sig;
    return s->n_sig ? s->sig : NULL;
}

double sdxl_sampler_step_timestep(const sdxl_sampler *s, int k) {
    if (k < 0) k = 0;
    if (s->k) {
        int n;
        const float *ts = sdxl_ksampler_timesteps(s->k, &n);
        return k < n ? ts[k] : -1;
    }
    if (k >= s->steps) return -1;
    return s->ts[s->call_start[k]];
}

int sdxl_sampler_start_for_strength(const sdxl_sampler *s, double strength) {
    if (!(strength > 0)) return sdxl_sampler_steps(s);
    if (s->k && sdxl_ksampler_vp(s->k)) return sdxl_ksampler_vp_start(s->k, strength);
    if (s->k) {
        /* A1111 img2img: t_enc = int(min(strength, 0.999) * steps), run sigmas[steps - t_enc - 1:] */
        int n = sdxl_ksampler_steps(s->k), t_enc = (int)((strength < 0.999 ? strength : 0.999) * n);
        return n - t_enc - 1 < 0 ? 0 : n - t_enc - 1;
    }
    int init = (int)(s->steps * (strength < 1 ? strength : 1.0));
    int start = s->steps - init;
    return start < 0 ? 0 : start;
}

int sdxl_sampler_end_for_fraction(const sdxl_sampler *s, double f) {
    if (s->k) {
        /* A1111 apply_refiner: the base model runs every step i with i / steps <= f */
        int n = sdxl_ksampler_steps(s->k), k = 0;
        while (k < n && (double)k / n <= f) k++;
        return k;
    }
    double cutoff = nearbyint(s->tab.n - f * s->tab.n);
    int k = 0;
    while (k < s->steps && sdxl_sampler_step_timestep(s, k) >= cutoff) k++;
    return k;
}

/* Timesteps descend, so the first step below the cutoff is the count of those at or above it. */
int sdxl_sampler_start_for_fraction(const sdxl_sampler *s, double f) { return sdxl_sampler_end_for_fraction(s, f); }

void sdxl_sampler_add_noise(const sdxl_sampler *s, int k, const float *x0, const float *noise, float *out) {
    if (s->k && sdxl_ksampler_vp(s->k)) {
        sdxl_ksampler_vp_add_noise(s->k, k, x0, noise, out);
        return;
    }
    if (s->k) {
        int n;
        const float *sg = sdxl_ksampler_sigmas(s->k, &n);
        float sk = k >= 0 && k < n ? sg[k] : 0.0f;
        FOR_N out[i] = x0[i] + noise[i] * sk;
        return;
    }
    int call = k >= 0 && k < s->steps ? s->call_start[k] : s->n_calls;
    if (!s->vp) {
        float sg = (float)level_at_call(s, call);
        FOR_N out[i] = x0[i] + noise[i] * sg;
        return;
    }
    float a, st;
    if (s->n_sig) {
        alpha_sigma(call < s->n_calls ? s->sig[call] : 0.0f, &a, &st);
    } else {
        float ac = call < s->n_calls ? s->tab.alphas_cumprod[tstep(s, call)] : 1.0f;
        a = sqrtf(ac);
        st = sqrtf(1 - ac);
    }
    FOR_N out[i] = a * x0[i] + st * noise[i];
}
