/* k-diffusion's sampler loops (A1111's pinned k-diffusion) in its float32 operation order:
 * scalars that are 0-dim float32 tensors there are floats here, Python float constants are
 * rounded to float where they meet a tensor. Sigma lists follow A1111's schedule rules. */
#include "denoise/ksampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXS (SDXL_MAX_STEPS + 3)

enum { K_XIN, K_OUT, K_DEN, K_DEN2, K_OLD, K_OLD2, K_X2, K_D, K_NOISE, K_LMS0, K_LMS1, K_LMS2, K_LMS3, K_EPS,
       K_EPS1, K_EPS2, K_XLOW, K_XHIGH, K_XPREV, K_COUNT };

struct sdxl_ksampler {
    sdxl_sampler_config c;
    sdxl_train_table tab;
    size_t n;
    int steps, n_sig, calls, last_calls;
    float sig[MAXS];
    float ts[MAXS];
    float sigma_min, sigma_max; /* table extremes (DPM fast/adaptive on a full run) */
    /* multistep state */
    int pos, hist;  /* next step the state belongs to; stored history depth */
    float h_last, h_last2;
    int n_accept, n_reject;
    float *buf[K_COUNT];
};

int sdxl_ksampler_supports(sdxl_sampler_kind k) {
    switch (k) {
    case SDXL_SAMPLER_EULER: case SDXL_SAMPLER_EULER_A: case SDXL_SAMPLER_HEUN: case SDXL_SAMPLER_DPM2:
    case SDXL_SAMPLER_DPM2_A: case SDXL_SAMPLER_LMS: case SDXL_SAMPLER_DPMPP_2M: case SDXL_SAMPLER_DPMPP_2M_SDE:
    case SDXL_SAMPLER_DPMPP_2M_SDE_HEUN: case SDXL_SAMPLER_DPMPP_SDE: case SDXL_SAMPLER_DPMPP_2S_A:
    case SDXL_SAMPLER_DPMPP_3M_SDE: case SDXL_SAMPLER_DPM_FAST: case SDXL_SAMPLER_DPM_ADAPTIVE:
    case SDXL_SAMPLER_IPNDM: case SDXL_SAMPLER_HEUNPP2: case SDXL_SAMPLER_GRADIENT_ESTIMATION:
    case SDXL_SAMPLER_RES_MULTISTEP: case SDXL_SAMPLER_ER_SDE: case SDXL_SAMPLER_IPNDM_V: case SDXL_SAMPLER_RESTART:
    case SDXL_SAMPLER_DDIM_CFGPP:
        return 1;
    default: return 0;
    }
}

/* ---- table and sigmas ----------------------------------------------------------------------- */

int sdxl_ktable_init(sdxl_train_table *t, const sdxl_sampler_config *c, sdxl_err *e) {
    int n = c->train_steps;
    if (n < 2 || n > SDXL_MAX_TRAIN_STEPS)
        return sdxl_seterr(e, SDXL_ERR_ARG, "num_train_timesteps: must be in [2, %d], got %d", SDXL_MAX_TRAIN_STEPS, n);
    if (c->beta_kind != SDXL_BETA_SCALED_LINEAR && c->beta_kind != SDXL_BETA_LINEAR)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "beta_schedule: the k-diffusion path takes linear or "
                           "scaled_linear betas");
    if (!(c->beta_start > 0) || !(c->beta_end > c->beta_start) || !(c->beta_end < 1))
        return sdxl_seterr(e, SDXL_ERR_ARG, "beta_start/beta_end: need 0 < beta_start < beta_end < 1");
    memset(t, 0, sizeof *t);
    t->n = n;
    t->beta_kind = c->beta_kind;
    t->beta_start = c->beta_start;
    t->beta_end = c->beta_end;
    /* ldm make_beta_schedule: torch.linspace(float64) (** 2 for scaled_linear), np.cumprod in float64 */
    int sq = c->beta_kind == SDXL_BETA_SCALED_LINEAR;
    double a = sq ? sqrt(c->beta_start) : c->beta_start, b = sq ? sqrt(c->beta_end) : c->beta_end;
    double step = (b - a) / (n - 1), acc = 1;
    for (int i = 0; i < n; i++) {
        double v = i < n / 2 ? a + step * i : b - step * (n - 1 - i);
        double beta = sq ? v * v : v;
        t->betas[i] = (float)beta;
        acc *= 1.0 - beta;
        t->alphas_cumprod[i] = (float)acc;
    }
    if (c->zero_terminal_snr) {
        /* A1111 rescale_zero_terminal_snr_abar, float32 */
        float s[SDXL_MAX_TRAIN_STEPS];
        for (int i = 0; i < n; i++) s[i] = sqrtf(t->alphas_cumprod[i]);
        float s0 = s[0], sT = s[n - 1];
        float k = s0 / (s0 - sT);
        for (int i = 0; i < n; i++) {
            float v = (s[i] - sT) * k;
            t->alphas_cumprod[i] = v * v;
        }
        t->alphas_cumprod[n - 1] = 4.8973451890853435e-08f;
    }
    for (int i = 0; i < n; i++) {
        float ac = t->alphas_cumprod[i];
        t->sigmas[i] = sqrtf((1.0f - ac) / ac);
        t->log_sigmas[i] = logf(t->sigmas[i]);
    }
    return SDXL_OK;
}

/* k-diffusion DiscreteSchedule.sigma_to_t in float32 */
static float sigma_to_t(const sdxl_train_table *T, float sigma) {
    float ls = logf(sigma);
    int low = 0;
    for (int i = 0; i < T->n; i++)
        if (ls - T->log_sigmas[i] >= 0) low = i;
    if (low > T->n - 2) low = T->n - 2;
    float lo = T->log_sigmas[low], hi = T->log_sigmas[low + 1];
    float w = (lo - ls) / (lo - hi);
    w = w < 0 ? 0 : (w > 1 ? 1 : w);
    return (1.0f - w) * (float)low + w * (float)(low + 1);
}

/* DiscreteSchedule.t_to_sigma in float32 */
static float t_to_sigma(const sdxl_train_table *T, float t) {
    int lo = (int)floorf(t), hi = (int)ceilf(t);
    float w = t - truncf(t);
    return expf((1.0f - w) * T->log_sigmas[lo] + w * T->log_sigmas[hi]);
}

/* Fills sig[0..m] (m + 1 values, last 0) for m steps of A1111's schedule `kind`. */
static int schedule(sdxl_ksampler *k, sdxl_schedule_kind kind, int m, float *sig, sdxl_err *e) {
    const sdxl_train_table *T = &k->tab;
    float tmp[MAXS];
    double smin = k->c.sched.sigma_min > 0 ? k->c.sched.sigma_min : T->sigmas[0];
    double smax = k->c.sched.sigma_max > 0 ? k->c.sched.sigma_max : T->sigmas[T->n - 1];
    switch (kind) {
    case SDXL_SCHEDULE_DEFAULT:
    case SDXL_SCHEDULE_NORMAL: /* model.get_sigmas(n): t = linspace(T - 1, 0, n) */
        sdxl_torch_linspace_f32(T->n - 1, 0, m, tmp);
        for (int i = 0; i < m; i++) sig[i] = t_to_sigma(T, tmp[i]);
        break;
    case SDXL_SCHEDULE_KARRAS: { /* get_sigmas_karras, float32 ramp, Python-double constants */
        double rho = k->c.sched.rho, mi = pow(smin, 1 / rho), ma = pow(smax, 1 / rho);
        sdxl_torch_linspace_f32(0, 1, m, tmp);
        for (int i = 0; i < m; i++) sig[i] = powf((float)ma + tmp[i] * (float)(mi - ma), (float)rho);
        break;
    }
    case SDXL_SCHEDULE_EXPONENTIAL:
        sdxl_torch_linspace_f32(log(smax), log(smin), m, tmp);
        for (int i = 0; i < m; i++) sig[i] = expf(tmp[i]);
        break;
    default: {
        double d[MAXS];
        int got = 0, r = sdxl_schedule_sigmas(T, kind, m, &k->c.sched, d, MAXS, &got, e);
        if (r) return r;
        if (got != m + 1)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "schedule: %s merges steps at %d steps; choose another count",
                               sdxl_schedule_name(kind), m);
        for (int i = 0; i < m; i++) sig[i] = (float)d[i];
        break;
    }
    }
    sig[m] = 0;
    return SDXL_OK;
}

/* k-diffusion get_sigmas_karras(n, smin, smax, rho 7) without the appended zero: Python-double
 * ends, float32 ramp. */
static void karras7(int n, double smin, double smax, float *out) {
    float ramp[MAXS];
    double mi = pow(smin, 1 / 7.0), ma = pow(smax, 1 / 7.0);
    sdxl_torch_linspace_f32(0, 1, n, ramp);
    for (int i = 0; i < n; i++) out[i] = powf((float)ma + ramp[i] * (float)(mi - ma), 7.0f);
}

/* torch.argmin(abs(sig - v)): the first of the closest. */
static int argmin_abs(const float *sig, int n, float v) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (fabsf(sig[i] - v) < fabsf(sig[best] - v)) best = i;
    return best;
}

/* A1111 restart_sampler's step list for the sigma run in[0..m]: from 20 steps on, a Karras schedule
 * of m - restart_steps * restart_times steps with, after the sigma closest to 0.1, restart_times
 * passes of a Karras segment of restart_steps steps back up to the sigma closest to 2 (9 steps
 * once; from 36 steps, m / 4 steps twice). Returns the number of (from, to) pairs. */
static int restart_plan(const float *in, int m, float *from, float *to) {
    float sig[MAXS], seg[MAXS];
    int n = m, rs = 0, rt = 0, key = -1, np = 0;
    memcpy(sig, in, (size_t)(m + 1) * sizeof(float));
    if (m >= 20 && in[m] == 0) { /* a run handed to a refiner (ending above 0) gets no restarts */
        rs = 9, rt = 1;
        if (m >= 36) rs = m / 4, rt = 2;
        n = m - rs * rt;
        karras7(n, in[m - 1], in[0], sig);
        sig[n] = 0;
        key = argmin_abs(sig, n + 1, 0.1f);
    }
    for (int i = 0; i < n; i++) {
        from[np] = sig[i], to[np++] = sig[i + 1];
        if (i + 1 != key) continue;
        int lo = i + 1, hi = argmin_abs(sig, n + 1, 2.0f);
        if (hi >= lo) continue;
        karras7(rs + 1, sig[lo], sig[hi], seg);
        for (int t = 0; t < rt; t++)
            for (int j = 0; j < rs; j++) from[np] = seg[j], to[np++] = seg[j + 1];
    }
    return np;
}

/* A1111 sd_samplers_timesteps get_timesteps: range(0, T, T // steps) + 1, clipped to T - 1, so the
 * loop runs len - 1 steps; ts[] holds them descending (ts[steps] = the level the last step reaches). */
static int plan_timesteps(sdxl_ksampler *k, sdxl_err *e) {
    int T = k->tab.n, n = k->c.steps, stride = T / n, len = (T + stride - 1) / stride;
    if (n > T) return sdxl_seterr(e, SDXL_ERR_ARG, "steps: %s takes at most %d steps", sdxl_sampler_name(k->c.sampler), T);
    if (len - 1 > SDXL_MAX_STEPS || len < 2)
        return sdxl_seterr(e, SDXL_ERR_ARG, "steps: %d gives %d DDIM timesteps (2..%d)", n, len, SDXL_MAX_STEPS + 1);
    k->steps = len - 1;
    k->n_sig = len;
    for (int i = 0; i < len; i++) {
        int t = 1 + (len - 1 - i) * stride;
        if (t > T - 1) t = T - 1;
        k->ts[i] = (float)t;
        k->sig[i] = k->tab.sigmas[t];
    }
    k->calls = k->steps;
    k->sigma_min = k->tab.sigmas[0];
    k->sigma_max = k->tab.sigmas[T - 1];
    return SDXL_OK;
}

static int plan(sdxl_ksampler *k, sdxl_err *e) {
    const sdxl_sampler_config *c = &k->c;
    int n = c->steps, r;
    if (c->sampler == SDXL_SAMPLER_DDIM_CFGPP) return plan_timesteps(k, e);
    int discard = c->sampler == SDXL_SAMPLER_DPM2 || c->sampler == SDXL_SAMPLER_DPM2_A;
    if (discard) {
        /* A1111 discard_next_to_last_sigma: n + 1 sigmas, the next-to-last dropped */
        float tmp[MAXS];
        if ((r = schedule(k, c->schedule, n + 1, tmp, e))) return r;
        memcpy(k->sig, tmp, (size_t)n * sizeof(float));
        k->sig[n] = 0;
    } else if ((r = schedule(k, c->schedule, n, k->sig, e))) {
        return r;
    }
    k->steps = n;
    k->n_sig = n + 1;
    for (int i = 0; i < n; i++) k->ts[i] = sigma_to_t(&k->tab, k->sig[i]);
    k->sigma_min = k->tab.sigmas[0];
    k->sigma_max = k->tab.sigmas[k->tab.n - 1];
    switch (c->sampler) {
    case SDXL_SAMPLER_HEUN: case SDXL_SAMPLER_DPM2: case SDXL_SAMPLER_DPM2_A: case SDXL_SAMPLER_DPMPP_SDE:
    case SDXL_SAMPLER_DPMPP_2S_A: k->calls = 2 * n - 1; break;
    case SDXL_SAMPLER_DPM_ADAPTIVE: k->calls = 0; break;
    case SDXL_SAMPLER_HEUNPP2: k->calls = n >= 2 ? 3 * n - 3 : 1; break;
    case SDXL_SAMPLER_RESTART: {
        float from[2 * MAXS], to[2 * MAXS];
        int np = restart_plan(k->sig, n, from, to);
        k->calls = 0;
        for (int p = 0; p < np; p++) k->calls += to[p] == 0 ? 1 : 2;
        break;
    }
    default: k->calls = n;
    }
    return SDXL_OK;
}

/* ---- object --------------------------------------------------------------------------------- */

int sdxl_ksampler_new(const sdxl_sampler_config *c, size_t n, sdxl_ksampler **out, sdxl_err *e) {
    *out = NULL;
    if (!sdxl_ksampler_supports(c->sampler))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "sampler: %s has no k-diffusion loop", sdxl_sampler_name(c->sampler));
    sdxl_ksampler *k = calloc(1, sizeof *k);
    if (!k) return sdxl_seterr(e, SDXL_ERR_NOMEM, "sampler: out of memory");
    k->c = *c;
    k->n = n;
    int r;
    if ((r = sdxl_ktable_init(&k->tab, c, e)) || (r = plan(k, e))) {
        free(k);
        return r;
    }
    for (int i = 0; i < K_COUNT; i++) {
        k->buf[i] = malloc(n * sizeof(float));
        if (!k->buf[i]) {
            sdxl_ksampler_free(k);
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "sampler: cannot allocate %d buffers of %zu floats", K_COUNT, n);
        }
    }
    *out = k;
    return SDXL_OK;
}

void sdxl_ksampler_free(sdxl_ksampler *k) {
    if (!k) return;
    for (int i = 0; i < K_COUNT; i++) free(k->buf[i]);
    free(k);
}

void sdxl_ksampler_reset(sdxl_ksampler *k) {
    k->pos = -1;
    k->hist = 0;
    k->h_last = k->h_last2 = 0;
}

int sdxl_ksampler_steps(const sdxl_ksampler *k) { return k->steps; }
const sdxl_train_table *sdxl_ksampler_table(const sdxl_ksampler *k) { return &k->tab; }
const sdxl_sampler_config *sdxl_ksampler_config(const sdxl_ksampler *k) { return &k->c; }
float sdxl_ksampler_sigma_to_t(const sdxl_ksampler *k, float sigma) { return sigma_to_t(&k->tab, sigma); }

const float *sdxl_ksampler_sigmas(const sdxl_ksampler *k, int *n) {
    *n = k->n_sig;
    return k->sig;
}

const float *sdxl_ksampler_timesteps(const sdxl_ksampler *k, int *n) {
    *n = k->steps;
    return k->ts;
}

int sdxl_ksampler_model_calls(const sdxl_ksampler *k) { return k->calls ? k->calls : k->last_calls; }

void sdxl_ksampler_adaptive_info(const sdxl_ksampler *k, int *accepted, int *rejected) {
    *accepted = k->n_accept;
    *rejected = k->n_reject;
}

/* ---- one run -------------------------------------------------------------------------------- */

#define FOR_N for (size_t i = 0; i < k->n; i++)

typedef struct run {
    sdxl_ksampler *k;
    const sdxl_sampler_run_opts *o;
    sdxl_err *e;
    int step, calls;
} run;

/* CompVisDenoiser / CompVisVDenoiser: out = denoised(x, sigma). */
static int denoise(run *R, const float *x, float sigma, float *out) {
    sdxl_ksampler *k = R->k;
    if (R->o->cancel && *R->o->cancel) return sdxl_seterr(R->e, SDXL_ERR_CANCELLED, "cancelled at step %d", R->step + 1);
    float c_in = 1.0f / sqrtf(sigma * sigma + 1.0f);
    float *xin = k->buf[K_XIN], *mo = k->buf[K_OUT];
    FOR_N xin[i] = x[i] * c_in;
    float t = sigma_to_t(&k->tab, sigma);
    int r = R->o->model(R->o->model_user, xin, k->n, t, sigma, mo, R->e);
    R->calls++;
    if (r) return sdxl_err_prefix(R->e, "step %d/%d", R->step + 1, k->steps);
    if (k->c.v_prediction) {
        float c_skip = 1.0f / (sigma * sigma + 1.0f), c_out = -sigma * 1.0f / sqrtf(sigma * sigma + 1.0f);
        FOR_N out[i] = x[i] * c_skip + mo[i] * c_out;
    } else {
        float c_out = -sigma;
        FOR_N out[i] = x[i] + mo[i] * c_out;
    }
    return SDXL_OK;
}

/* Standard-normal noise for the move from sigma `from` to `to`. */
static int draw(run *R, float *dst, float from, float to) {
    sdxl_ksampler *k = R->k;
    if (R->o->noise) {
        int r = R->o->noise(R->o->noise_user, dst, k->n, from, to, R->e);
        if (r) return sdxl_err_prefix(R->e, "step %d/%d: noise", R->step + 1, k->steps);
    } else if (R->o->rng) {
        sdxl_rng_randn(R->o->rng, dst, k->n);
    } else {
        return sdxl_seterr(R->e, SDXL_ERR_ARG, "rng: sampler %s draws noise and needs a generator or a noise callback",
                           sdxl_sampler_name(k->c.sampler));
    }
    return SDXL_OK;
}

/* get_ancestral_step(from, to, eta) */
static void ancestral(float from, float to, float eta, float *down, float *up) {
    if (eta == 0) {
        *down = to, *up = 0;
        return;
    }
    float u = eta * sqrtf(to * to * (from * from - to * to) / (from * from));
    *up = to < u ? to : u;
    *down = sqrtf(to * to - *up * *up);
}

/* x += noise(from, to) * s_noise * up */
static int add_noise(run *R, float *x, float from, float to, float up) {
    sdxl_ksampler *k = R->k;
    float *z = k->buf[K_NOISE], sn = (float)k->c.s_noise;
    int r = draw(R, z, from, to);
    if (r) return r;
    FOR_N x[i] = x[i] + z[i] * sn * up;
    return SDXL_OK;
}

/* Gauss-Legendre 4 points, exact for LMS's cubic Lagrange bases (scipy quad in the reference). */
static double lms_coeff(const float *t, int order, int i, int j) {
    static const double X[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526};
    static const double W[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538};
    double a = t[i], b = t[i + 1], acc = 0;
    for (int q = 0; q < 4; q++) {
        double tau = 0.5 * (b - a) * X[q] + 0.5 * (a + b), prod = 1;
        for (int m = 0; m < order; m++)
            if (m != j) prod *= (tau - (double)t[i - m]) / ((double)t[i - j] - (double)t[i - m]);
        acc += W[q] * prod;
    }
    return acc * 0.5 * (b - a);
}

static float *B(sdxl_ksampler *k, int i) { return k->buf[i]; }

/* Rotates the buffer slots a <- b <- c <- a (history shifts without copies). */
static void rot3(sdxl_ksampler *k, int a, int b, int c) {
    float *t = k->buf[a];
    k->buf[a] = k->buf[b];
    k->buf[b] = k->buf[c];
    k->buf[c] = t;
}

static int step(run *R, int i, float *x) {
    sdxl_ksampler *k = R->k;
    const sdxl_sampler_config *c = &k->c;
    const float *sg = k->sig;
    float s = sg[i], sn = sg[i + 1], eta = (float)c->ancestral_eta;
    float *den = B(k, K_DEN), *den2 = B(k, K_DEN2), *x2 = B(k, K_X2), *d = B(k, K_D);
    int r;
    if ((r = denoise(R, x, s, den))) return r;
    switch (c->sampler) {
    case SDXL_SAMPLER_EULER: {
        float dt = sn - s;
        FOR_N x[i] = x[i] + (x[i] - den[i]) / s * dt;
        break;
    }
    case SDXL_SAMPLER_EULER_A: {
        float down, up;
        ancestral(s, sn, eta, &down, &up);
        float dt = down - s;
        FOR_N x[i] = x[i] + (x[i] - den[i]) / s * dt;
        if (sn > 0 && (r = add_noise(R, x, s, sn, up))) return r;
        break;
    }
    case SDXL_SAMPLER_HEUN: {
        float dt = sn - s;
        if (sn == 0) {
            FOR_N x[i] = x[i] + (x[i] - den[i]) / s * dt;
            break;
        }
        FOR_N {
            d[i] = (x[i] - den[i]) / s;
            x2[i] = x[i] + d[i] * dt;
        }
        if ((r = denoise(R, x2, sn, den2))) return r;
        FOR_N {
            float d2 = (x2[i] - den2[i]) / sn;
            x[i] = x[i] + (d[i] + d2) / 2.0f * dt;
        }
        break;
    }
    case SDXL_SAMPLER_DPM2:
    case SDXL_SAMPLER_DPM2_A: {
        float to = sn, up = 0;
        if (c->sampler == SDXL_SAMPLER_DPM2_A) ancestral(s, sn, eta, &to, &up);
        if (to == 0) {
            float dt = to - s;
            FOR_N x[i] = x[i] + (x[i] - den[i]) / s * dt;
            break;
        }
        float ls = logf(s), lt = logf(to);
        float mid = expf(lt - (lt - ls) * 0.5f); /* torch.lerp(log s, log to, 0.5) */
        float dt1 = mid - s, dt2 = to - s;
        FOR_N {
            d[i] = (x[i] - den[i]) / s;
            x2[i] = x[i] + d[i] * dt1;
        }
        if ((r = denoise(R, x2, mid, den2))) return r;
        FOR_N x[i] = x[i] + (x2[i] - den2[i]) / mid * dt2;
        if (c->sampler == SDXL_SAMPLER_DPM2_A && (r = add_noise(R, x, s, sn, up))) return r;
        break;
    }
    case SDXL_SAMPLER_LMS: {
        /* ds holds the newest derivative in K_LMS0 */
        float *oldest = k->buf[K_LMS3]; /* shift the history: LMS3 <- LMS2 <- LMS1 <- LMS0 */
        k->buf[K_LMS3] = k->buf[K_LMS2];
        k->buf[K_LMS2] = k->buf[K_LMS1];
        k->buf[K_LMS1] = k->buf[K_LMS0];
        k->buf[K_LMS0] = oldest;
        float *d0 = B(k, K_LMS0);
        FOR_N d0[i] = (x[i] - den[i]) / s;
        if (k->hist < 4) k->hist++;
        int order = k->hist;
        float cf[4];
        for (int j = 0; j < order; j++) cf[j] = (float)lms_coeff(sg, order, i, j);
        const float *ds[4] = {B(k, K_LMS0), B(k, K_LMS1), B(k, K_LMS2), B(k, K_LMS3)};
        FOR_N {
            float acc = cf[0] * ds[0][i];
            for (int j = 1; j < order; j++) acc = acc + cf[j] * ds[j][i];
            x[i] = x[i] + acc;
        }
        break;
    }
    case SDXL_SAMPLER_DPMPP_2S_A: {
        float down, up;
        ancestral(s, sn, eta, &down, &up);
        if (down == 0) {
            float dt = down - s;
            FOR_N x[i] = x[i] + (x[i] - den[i]) / s * dt;
        } else {
            float t = -logf(s), tn = -logf(down), h = tn - t, sm = t + 0.5f * h;
            float a = expf(-sm) / expf(-t), b = expm1f(-h * 0.5f);
            FOR_N x2[i] = a * x[i] - b * den[i];
            if ((r = denoise(R, x2, expf(-sm), den2))) return r;
            float a2 = expf(-tn) / expf(-t), b2 = expm1f(-h);
            FOR_N x[i] = a2 * x[i] - b2 * den2[i];
        }
        if (sn > 0 && (r = add_noise(R, x, s, sn, up))) return r;
        break;
    }
    case SDXL_SAMPLER_DPMPP_SDE: {
        if (sn == 0) {
            float dt = sn - s;
            FOR_N x[i] = x[i] + (x[i] - den[i]) / s * dt;
            break;
        }
        float t = -logf(s), tn = -logf(sn), h = tn - t, sm = t + h * 0.5f;
        float sd, su;
        ancestral(expf(-t), expf(-sm), eta, &sd, &su);
        float s_ = -logf(sd);
        float a = expf(-s_) / expf(-t), b = expm1f(t - s_);
        FOR_N x2[i] = a * x[i] - b * den[i];
        if ((r = add_noise(R, x2, expf(-t), expf(-sm), su))) return r;
        if ((r = denoise(R, x2, expf(-sm), den2))) return r;
        ancestral(expf(-t), expf(-tn), eta, &sd, &su);
        float tn_ = -logf(sd);
        float a2 = expf(-tn_) / expf(-t), b2 = expm1f(t - tn_);
        FOR_N {
            float dd = 0.0f * den[i] + 1.0f * den2[i]; /* (1 - fac) den + fac den_2, fac = 1 */
            x[i] = a2 * x[i] - b2 * dd;
        }
        if ((r = add_noise(R, x, expf(-t), expf(-tn), su))) return r;
        break;
    }
    case SDXL_SAMPLER_DPMPP_2M: {
        float t = -logf(s), tn = -logf(sn), h = tn - t;
        float a = expf(-tn) / expf(-t), b = expm1f(-h);
        float *old = B(k, K_OLD);
        if (k->hist == 0 || sn == 0) {
            FOR_N x[i] = a * x[i] - b * den[i];
        } else {
            float hl = t - -logf(sg[i - 1]), rr = hl / h, q = 1.0f / (2.0f * rr), p = 1.0f + q;
            FOR_N {
                float dd = p * den[i] - q * old[i];
                x[i] = a * x[i] - b * dd;
            }
        }
        rot3(k, K_OLD, K_DEN, K_OLD2); /* old <- den */
        k->hist = 1;
        break;
    }
    case SDXL_SAMPLER_DPMPP_2M_SDE:
    case SDXL_SAMPLER_DPMPP_2M_SDE_HEUN: {
        float *old = B(k, K_OLD);
        float h = k->h_last;
        if (sn == 0) {
            memcpy(x, den, k->n * sizeof(float));
        } else {
            float t = -logf(s), t2 = -logf(sn);
            h = t2 - t;
            float eh = eta * h, a = sn / s * expf(-eh), b = -expm1f(-h - eh);
            FOR_N x[i] = a * x[i] + b * den[i];
            if (k->hist) {
                float rr = k->h_last / h, q;
                if (c->sampler == SDXL_SAMPLER_DPMPP_2M_SDE_HEUN)
                    q = (b / (-h - eh) + 1.0f) * (1.0f / rr);
                else
                    q = 0.5f * b * (1.0f / rr);
                FOR_N x[i] = x[i] + q * (den[i] - old[i]);
            }
            if (eta != 0) {
                float *z = B(k, K_NOISE), sq = sqrtf(-expm1f(-2.0f * eh)), snz = (float)c->s_noise;
                if ((r = draw(R, z, s, sn))) return r;
                FOR_N x[i] = x[i] + z[i] * sn * sq * snz;
            }
        }
        rot3(k, K_OLD, K_DEN, K_OLD2);
        k->hist = 1;
        k->h_last = h;
        break;
    }
    case SDXL_SAMPLER_DPMPP_3M_SDE: {
        float *d1m = B(k, K_OLD), *d2m = B(k, K_OLD2);
        float h = k->h_last;
        if (sn == 0) {
            memcpy(x, den, k->n * sizeof(float));
        } else {
            float t = -logf(s), t2 = -logf(sn);
            h = t2 - t;
            float he = h * (eta + 1.0f), ex = expf(-he), cm = -expm1f(-he);
            FOR_N x[i] = ex * x[i] + cm * den[i];
            if (k->hist >= 2) {
                float r0 = k->h_last / h, r1 = k->h_last2 / h;
                float phi2 = expm1f(-he) / he + 1.0f, phi3 = phi2 / he - 0.5f;
                FOR_N {
                    float a = (den[i] - d1m[i]) / r0, bb = (d1m[i] - d2m[i]) / r1;
                    float q = a + (a - bb) * r0 / (r0 + r1), w = (a - bb) / (r0 + r1);
                    x[i] = x[i] + phi2 * q - phi3 * w;
                }
            } else if (k->hist == 1) {
                float r0 = k->h_last / h, phi2 = expm1f(-he) / he + 1.0f;
                FOR_N x[i] = x[i] + phi2 * ((den[i] - d1m[i]) / r0);
            }
            if (eta != 0) {
                float *z = B(k, K_NOISE), sq = sqrtf(-expm1f(-2.0f * h * eta)), snz = (float)c->s_noise;
                if ((r = draw(R, z, s, sn))) return r;
                FOR_N x[i] = x[i] + z[i] * sn * sq * snz;
            }
        }
        rot3(k, K_OLD2, K_OLD, K_DEN); /* old2 <- old, old <- den */
        if (k->hist < 2) k->hist++;
        k->h_last2 = k->h_last;
        k->h_last = h;
        break;
    }
    case SDXL_SAMPLER_IPNDM:
    case SDXL_SAMPLER_IPNDM_V: {
        /* ComfyUI sample_ipndm / sample_ipndm_v (zju-pi diff-solvers): Adams-Bashforth on the last
         * max_order - 1 derivatives (LMS0..2), with fixed coefficients (ipndm) or ones from the
         * actual sigma spacing (ipndm_v) */
        float *d0 = B(k, K_D), *h1 = B(k, K_LMS0), *h2 = B(k, K_LMS1), *h3 = B(k, K_LMS2);
        FOR_N d0[i] = (x[i] - den[i]) / s;
        int order = k->hist + 1 < 4 ? k->hist + 1 : 4;
        float dt = sn - s;
        if (sn == 0) {
            memcpy(x, den, k->n * sizeof(float));
        } else if (order == 1) {
            FOR_N x[i] = x[i] + dt * d0[i];
        } else if (c->sampler == SDXL_SAMPLER_IPNDM) {
            if (order == 2)
                FOR_N x[i] = x[i] + dt * (3.0f * d0[i] - h1[i]) / 2.0f;
            else if (order == 3)
                FOR_N x[i] = x[i] + dt * (23.0f * d0[i] - 16.0f * h1[i] + 5.0f * h2[i]) / 12.0f;
            else
                FOR_N x[i] = x[i] + dt * (55.0f * d0[i] - 59.0f * h1[i] + 37.0f * h2[i] - 9.0f * h3[i]) / 24.0f;
        } else {
            float hn = sn - s, hn1 = s - sg[i - 1], c1, c2, c3 = 0, c4 = 0;
            if (order == 2) {
                c1 = (2.0f + hn / hn1) / 2.0f;
                c2 = -(hn / hn1) / 2.0f;
            } else {
                float hn2 = sg[i - 1] - sg[i - 2];
                float t1 = (1.0f - hn / (3.0f * (hn + hn1)) * (hn * (hn + hn1)) / (hn1 * (hn1 + hn2))) / 2.0f;
                if (order == 3) {
                    c1 = (2.0f + hn / hn1) / 2.0f + t1;
                    c2 = -(hn / hn1) / 2.0f - (1.0f + hn1 / hn2) * t1;
                    c3 = t1 * hn1 / hn2;
                } else {
                    float hn3 = sg[i - 2] - sg[i - 3];
                    float t2 = ((1.0f - hn / (3.0f * (hn + hn1))) / 2.0f +
                                (1.0f - hn / (2.0f * (hn + hn1))) * hn / (6.0f * (hn + hn1 + hn2))) *
                               (hn * (hn + hn1) * (hn + hn1 + hn2)) / (hn1 * (hn1 + hn2) * (hn1 + hn2 + hn3));
                    float q = hn1 * (hn1 + hn2) / (hn2 * (hn2 + hn3));
                    c1 = (2.0f + hn / hn1) / 2.0f + t1 + t2;
                    c2 = -(hn / hn1) / 2.0f - (1.0f + hn1 / hn2) * t1 - (1.0f + hn1 / hn2 + q) * t2;
                    c3 = t1 * hn1 / hn2 + (hn1 / hn2 + q * (1.0f + hn2 / hn3)) * t2;
                    c4 = -t2 * q * hn1 / hn2;
                }
            }
            if (order == 2)
                FOR_N x[i] = x[i] + dt * (c1 * d0[i] + c2 * h1[i]);
            else if (order == 3)
                FOR_N x[i] = x[i] + dt * (c1 * d0[i] + c2 * h1[i] + c3 * h2[i]);
            else
                FOR_N x[i] = x[i] + dt * (c1 * d0[i] + c2 * h1[i] + c3 * h2[i] + c4 * h3[i]);
        }
        float *oldest = k->buf[K_LMS2]; /* history: LMS2 <- LMS1 <- LMS0 <- d */
        k->buf[K_LMS2] = k->buf[K_LMS1];
        k->buf[K_LMS1] = k->buf[K_LMS0];
        k->buf[K_LMS0] = k->buf[K_D];
        k->buf[K_D] = oldest;
        if (k->hist < 3) k->hist++;
        break;
    }
    case SDXL_SAMPLER_HEUNPP2: {
        /* ComfyUI sample_heunpp2 (from sd-webui-samplers-scheduler): Euler on the last step, Heun with
         * weights (1 - w2, sigma_next / (2 sigma_0)) on the one before, else three calls */
        float dt = sn - s, s_end = sg[k->n_sig - 1], s0 = sg[0];
        FOR_N d[i] = (x[i] - den[i]) / s;
        if (sn == s_end) {
            FOR_N x[i] = x[i] + d[i] * dt;
            break;
        }
        FOR_N x2[i] = x[i] + d[i] * dt;
        if ((r = denoise(R, x2, sn, den2))) return r;
        float *d2 = B(k, K_EPS);
        FOR_N d2[i] = (x2[i] - den2[i]) / sn;
        if (i + 2 < k->n_sig && sg[i + 2] == s_end) {
            float w = 2.0f * s0, w2 = sn / w, w1 = 1.0f - w2;
            FOR_N x[i] = x[i] + (d[i] * w1 + d2[i] * w2) * dt;
            break;
        }
        float s2 = sg[i + 2], dt2 = s2 - sn, *x3 = B(k, K_XLOW), *den3 = B(k, K_XHIGH);
        FOR_N x3[i] = x2[i] + d2[i] * dt2;
        if ((r = denoise(R, x3, s2, den3))) return r;
        float w = 3.0f * s0, w2 = sn / w, w3 = s2 / w, w1 = 1.0f - w2 - w3;
        FOR_N {
            float d3 = (x3[i] - den3[i]) / s2;
            x[i] = x[i] + (w1 * d[i] + w2 * d2[i] + w3 * d3) * dt;
        }
        break;
    }
    case SDXL_SAMPLER_GRADIENT_ESTIMATION: {
        /* ComfyUI sample_gradient_estimation, ge_gamma 2: x += d dt + (gamma - 1)(d - d_prev) dt */
        float *dp = B(k, K_OLD), dt = sn - s;
        FOR_N d[i] = (x[i] - den[i]) / s;
        if (sn == 0) {
            memcpy(x, den, k->n * sizeof(float));
        } else {
            FOR_N x[i] = x[i] + d[i] * dt;
            if (k->hist) FOR_N x[i] = x[i] + (2.0f - 1.0f) * (d[i] - dp[i]) * dt;
        }
        rot3(k, K_OLD, K_D, K_OLD2);
        k->hist = 1;
        break;
    }
    case SDXL_SAMPLER_RES_MULTISTEP: {
        /* ComfyUI res_multistep with eta 0 (sigma_down = sigma_next): Euler first, then
         * x = e^-h x + h (b1 den + b2 den_prev), b1 = phi1 - phi2/c2, b2 = phi2/c2 at -h */
        float *old = B(k, K_OLD);
        if (sn == 0 || !k->hist) {
            float dt = sn - s;
            FOR_N x[i] = x[i] + (x[i] - den[i]) / s * dt;
        } else {
            /* the scalars in double: phi2 = (phi1 - 1)/-h cancels, and in float32 its error grows to
             * 1e-6 of the sample over 30 steps (no golden pins ComfyUI's float32 rounding here) */
            double t = -log(s), t_old = -log(k->h_last), t_next = -log(sn), t_prev = -log(sg[i - 1]);
            double h = t_next - t, c2 = (t_prev - t_old) / h;
            double phi1 = expm1(-h) / -h, phi2 = (phi1 - 1.0) / -h;
            double b1 = phi1 - phi2 / c2, b2 = phi2 / c2;
            if (isnan(b1)) b1 = 0;
            if (isnan(b2)) b2 = 0;
            float e = (float)exp(-h), hb1 = (float)(h * b1), hb2 = (float)(h * b2);
            FOR_N x[i] = e * x[i] + (hb1 * den[i] + hb2 * old[i]);
        }
        rot3(k, K_OLD, K_DEN, K_OLD2);
        k->hist = 1;
        k->h_last = sn; /* old_sigma_down */
        break;
    }
    case SDXL_SAMPLER_ER_SDE: {
        /* ComfyUI sample_er_sde, VP (not rectified flow): er_lambda = sigma, alpha = 1, noise scaler
         * x (e^(x^0.3) + 10), 200-point integrals, stages up to 3 */
        float *od = B(k, K_OLD), *odd = B(k, K_OLD2), *dd = B(k, K_EPS);
        int stage = k->hist + 1 < 3 ? k->hist + 1 : 3;
        if (sn == 0) {
            memcpy(x, den, k->n * sizeof(float));
        } else {
            float ls = expf(-(-logf(s))), lt = expf(-(-logf(sn)));
            float as = s / ls, at = sn / lt, ra = at / as;
            float nss = ls * (expf(powf(ls, 0.3f)) + 10.0f), nst = lt * (expf(powf(lt, 0.3f)) + 10.0f);
            float rr = nst / nss;
            FOR_N x[i] = ra * rr * x[i] + at * (1.0f - rr) * den[i];
            if (stage >= 2) {
                float dt = lt - ls, step_sz = -dt / 200.0f, sum1 = 0, sum2 = 0;
                for (int q = 0; q < 200; q++) {
                    float pos = lt + (float)q * step_sz, sc = pos * (expf(powf(pos, 0.3f)) + 10.0f);
                    sum1 += 1.0f / sc;
                    sum2 += (pos - ls) / sc;
                }
                float sI = sum1 * step_sz, lprev = expf(-(-logf(sg[i - 1])));
                float c = at * (dt + sI * nst);
                FOR_N {
                    dd[i] = (den[i] - od[i]) / (ls - lprev);
                    x[i] = x[i] + c * dd[i];
                }
                if (stage >= 3) {
                    float su = sum2 * step_sz, lpp = expf(-(-logf(sg[i - 2])));
                    float c3 = at * ((dt * dt) / 2.0f + su * nst);
                    FOR_N x[i] = x[i] + c3 * ((dd[i] - odd[i]) / ((ls - lpp) / 2.0f));
                }
                memcpy(odd, dd, k->n * sizeof(float));
            }
            float q = sqrtf(lt * lt - ls * ls * rr * rr);
            if (isnan(q)) q = 0;
            if ((float)c->s_noise > 0) {
                float *z = B(k, K_NOISE), sn_ = (float)c->s_noise;
                if ((r = draw(R, z, s, sn))) return r;
                FOR_N x[i] = x[i] + at * z[i] * sn_ * q;
            }
        }
        memcpy(od, den, k->n * sizeof(float));
        if (k->hist < 2) k->hist++;
        break;
    }
    default: return sdxl_seterr(R->e, SDXL_ERR_INTERNAL, "sampler: no k-diffusion step for %s", sdxl_sampler_name(c->sampler));
    }
    return SDXL_OK;
}

/* ---- DPM-Solver (fast, adaptive) ------------------------------------------------------------ */

/* eps at time t (= -log sigma): (x - denoised) / sigma */
static int dpm_eps(run *R, const float *x, float t, float *eps) {
    sdxl_ksampler *k = R->k;
    float sigma = expf(-t), *den = B(k, K_DEN);
    int r = denoise(R, x, sigma, den);
    if (r) return r;
    FOR_N eps[i] = (x[i] - den[i]) / sigma;
    return SDXL_OK;
}

/* dpm_solver_{1,2,3}_step from x at t to tn with eps (at t) already in K_EPS; have_r1 says K_EPS1
 * holds eps at t + r1 h (the adaptive solver shares it between its 2nd and 3rd order steps). */
static int dpm_step(run *R, int order, const float *x, float t, float tn, double r1, int *have_r1, float *out) {
    sdxl_ksampler *k = R->k;
    float *eps = B(k, K_EPS), *e1 = B(k, K_EPS1), *e2 = B(k, K_EPS2), *u = B(k, K_X2);
    float h = tn - t, sgn = expf(-tn), em = expm1f(h);
    int r;
    if (order == 1) {
        FOR_N out[i] = x[i] - sgn * em * eps[i];
        return SDXL_OK;
    }
    float s1 = t + (float)r1 * h;
    if (!*have_r1) {
        float a = expf(-s1) * expm1f((float)r1 * h);
        FOR_N u[i] = x[i] - a * eps[i];
        if ((r = dpm_eps(R, u, s1, e1))) return r;
        *have_r1 = 1;
    }
    if (order == 2) {
        float a = sgn * em, b = sgn / (float)(2.0 * r1) * em;
        FOR_N out[i] = x[i] - a * eps[i] - b * (e1[i] - eps[i]);
        return SDXL_OK;
    }
    const float r2 = (float)(2.0 / 3.0);
    float s2 = t + r2 * h, r2h = r2 * h;
    float a = expf(-s2) * expm1f(r2h), b = expf(-s2) * (float)((2.0 / 3.0) / (1.0 / 3.0)) * (expm1f(r2h) / r2h - 1.0f);
    FOR_N u[i] = x[i] - a * eps[i] - b * (e1[i] - eps[i]);
    if ((r = dpm_eps(R, u, s2, e2))) return r;
    float a3 = sgn * em, b3 = sgn / r2 * (em / h - 1.0f);
    FOR_N out[i] = x[i] - a3 * eps[i] - b3 * (e2[i] - eps[i]);
    return SDXL_OK;
}

static int dpm_fast(run *R, float *x, float smin, float smax, int nfe) {
    sdxl_ksampler *k = R->k;
    float t0 = -logf(smax), t1 = -logf(smin);
    int m = nfe / 3 + 1, orders[MAXS], n_ord = 0;
    float ts[MAXS];
    sdxl_torch_linspace_f32(t0, t1, m + 1, ts);
    if (nfe % 3 == 0) {
        for (int i = 0; i < m - 2; i++) orders[n_ord++] = 3;
        orders[n_ord++] = 2;
        orders[n_ord++] = 1;
    } else {
        for (int i = 0; i < m - 1; i++) orders[n_ord++] = 3;
        orders[n_ord++] = nfe % 3;
    }
    float *nx = B(k, K_XHIGH);
    for (int i = 0; i < n_ord; i++) {
        int have = 0, r;
        R->step = i;
        if ((r = dpm_eps(R, x, ts[i], B(k, K_EPS)))) return r;
        if ((r = dpm_step(R, orders[i], x, ts[i], ts[i + 1], orders[i] == 3 ? 1.0 / 3.0 : 0.5, &have, nx)))
            return r;
        memcpy(x, nx, k->n * sizeof(float));
    }
    return SDXL_OK;
}

static int dpm_adaptive(run *R, float *x, float smin, float smax) {
    sdxl_ksampler *k = R->k;
    const double rtol = 0.05, atol = 0.0078, h_init = 0.05, accept_safety = 0.81, eps_pid = 1e-8;
    const int order = 3;
    float t_start = -logf(smax), t_end = -logf(smin), s = t_start;
    float *xl = B(k, K_XLOW), *xh = B(k, K_XHIGH), *xp = B(k, K_XPREV);
    float ftol = (float)atol, frt = (float)rtol;
    memcpy(xp, x, k->n * sizeof(float));
    double h = h_init, errs[3] = {0, 0, 0};
    int have_errs = 0;
    /* PID controller with pcoeff 0, icoeff 1, dcoeff 0: b1 = 1/order, b2 = b3 = 0 */
    double b1 = 1.0 / order, b2 = 0, b3 = 0;
    k->n_accept = k->n_reject = 0;
    int steps = 0;
    while (s < t_end - 1e-5f) {
        float t = s + (float)h;
        if (t_end < t) t = t_end;
        int have = 0, r;
        R->step = steps;
        if ((r = dpm_eps(R, x, s, B(k, K_EPS)))) return r;
        if ((r = dpm_step(R, 2, x, s, t, 1.0 / 3.0, &have, xl))) return r;
        if ((r = dpm_step(R, 3, x, s, t, 1.0 / 3.0, &have, xh))) return r;
        double sum = 0;
        FOR_N {
            float ax = fabsf(xl[i]), ap = fabsf(xp[i]), mx = ax > ap ? ax : ap;
            float delta = frt * mx;
            if (delta < ftol) delta = ftol;
            float q = (xl[i] - xh[i]) / delta;
            sum += (double)q * q;
        }
        float error = (float)sqrt(sum) / (float)sqrt((double)k->n);
        double inv = 1 / ((double)error + eps_pid);
        if (!have_errs) errs[0] = errs[1] = errs[2] = inv, have_errs = 1;
        errs[0] = inv;
        double factor = pow(errs[0], b1) * pow(errs[1], b2) * pow(errs[2], b3);
        factor = 1 + atan(factor - 1);
        int accept = factor >= accept_safety;
        if (accept) errs[2] = errs[1], errs[1] = errs[0];
        h *= factor;
        if (accept) {
            float *tmp = k->buf[K_XPREV];
            k->buf[K_XPREV] = k->buf[K_XLOW];
            k->buf[K_XLOW] = tmp;
            xp = k->buf[K_XPREV];
            xl = k->buf[K_XLOW];
            memcpy(x, xh, k->n * sizeof(float));
            s = t;
            k->n_accept++;
        } else {
            k->n_reject++;
        }
        steps++;
        if (steps > 100000) return sdxl_seterr(R->e, SDXL_ERR_LIMIT, "DPM adaptive: more than 100000 steps (step size collapsed)");
    }
    return SDXL_OK;
}

/* A1111 restart_sampler on sig[start..end]: Heun steps along the restart step list; where the list
 * goes back up, fresh noise brings x from the level reached to the restart level. */
static int restart_run(run *R, float *x, int start, int end) {
    sdxl_ksampler *k = R->k;
    float from[2 * MAXS], to[2 * MAXS], last = -1;
    int np = restart_plan(k->sig + start, end - start, from, to), r;
    float *den = B(k, K_DEN), *den2 = B(k, K_DEN2), *x2 = B(k, K_X2), *d = B(k, K_D), *z = B(k, K_NOISE);
    for (int p = 0; p < np; p++) {
        float s = from[p], sn = to[p], dt = sn - s;
        R->step = start + (p < end - start ? p : end - start - 1);
        if (last < 0) {
            last = s;
        } else if (last < s) {
            float up = sqrtf(s * s - last * last), snz = (float)k->c.s_noise;
            if ((r = draw(R, z, last, s))) return r;
            FOR_N x[i] = x[i] + z[i] * snz * up;
        }
        if ((r = denoise(R, x, s, den))) return r;
        FOR_N d[i] = (x[i] - den[i]) / s;
        if (sn == 0) {
            FOR_N x[i] = x[i] + d[i] * dt;
        } else {
            FOR_N x2[i] = x[i] + d[i] * dt;
            if ((r = denoise(R, x2, sn, den2))) return r;
            FOR_N {
                float d2 = (x2[i] - den2[i]) / sn;
                x[i] = x[i] + (d[i] + d2) / 2.0f * dt;
            }
        }
        last = sn;
    }
    return SDXL_OK;
}

/* A1111 ddim_cfgpp, one step from ts[i] to the next level: the model sees x unscaled and the
 * integer timestep, guidance at cfg / 12.5; x0 from the guided eps, the direction from the
 * unconditional one. */
static int ddim_cfgpp_step(run *R, int i, float *x) {
    sdxl_ksampler *k = R->k;
    const sdxl_sampler_run_opts *o = R->o;
    if (o->cancel && *o->cancel) return sdxl_seterr(R->e, SDXL_ERR_CANCELLED, "cancelled at step %d", i + 1);
    int t = (int)k->ts[i], tp = (int)k->ts[i + 1];
    float *et = B(k, K_EPS), *eu = B(k, K_EPS1), *z = B(k, K_NOISE);
    int r = o->model_cfgpp(o->model_user, x, k->n, t, k->tab.sigmas[t], 1 / 12.5, et, eu, R->e);
    R->calls++;
    if (r) return sdxl_err_prefix(R->e, "step %d/%d", i + 1, k->steps);
    float at = k->tab.alphas_cumprod[t], ap = k->tab.alphas_cumprod[tp];
    if (k->c.v_prediction) { /* CompVisTimestepsVDenoiser: eps = sqrt(a) v + sqrt(1 - a) x */
        float sa = sqrtf(at), sb = sqrtf(1.0f - at);
        FOR_N et[i] = sa * et[i] + sb * x[i], eu[i] = sa * eu[i] + sb * x[i];
    }
    double ed = k->c.eta * sqrt((1.0 - (double)ap) / (1.0 - (double)at) * (1.0 - (double)at / (double)ap));
    float st = (float)ed, s1m = sqrtf(1.0f - at), sat = sqrtf(at), sap = sqrtf(ap);
    float dir = sqrtf(1.0f - ap - st * st);
    if (st != 0 && (r = draw(R, z, k->sig[i], k->sig[i + 1]))) return r;
    FOR_N {
        float x0 = (x[i] - s1m * et[i]) / sat;
        float v = sap * x0 + dir * eu[i];
        x[i] = st != 0 ? v + st * z[i] : v;
    }
    return SDXL_OK;
}

int sdxl_ksampler_vp(const sdxl_ksampler *k) { return k->c.sampler == SDXL_SAMPLER_DDIM_CFGPP; }

int sdxl_ksampler_vp_start(const sdxl_ksampler *k, double strength) {
    /* A1111 timesteps img2img: t_enc = int(min(strength, 0.999) * steps) of the requested steps,
     * x noised to timesteps[t_enc], the loop from timesteps[t_enc - 1] */
    int t_enc = (int)((strength < 0.999 ? strength : 0.999) * k->c.steps), start = k->steps + 1 - t_enc;
    return start < 1 ? 1 : start > k->steps - 1 ? k->steps - 1 : start;
}

void sdxl_ksampler_vp_add_noise(const sdxl_ksampler *k, int step, const float *x0, const float *noise, float *out) {
    int t = step > 0 && step <= k->steps ? (int)k->ts[step - 1] : (int)k->ts[0];
    float ac = k->tab.alphas_cumprod[t], a = sqrtf(ac), b = sqrtf(1.0f - ac);
    FOR_N out[i] = x0[i] * a + noise[i] * b;
}

int sdxl_ksampler_run(sdxl_ksampler *k, float *x, const sdxl_sampler_run_opts *o, sdxl_err *e) {
    int end = o->end_step > 0 ? o->end_step : k->steps;
    if (!o->model) return sdxl_seterr(e, SDXL_ERR_ARG, "model: callback is required");
    if (o->start_step < 0 || o->start_step >= k->steps || end > k->steps || end <= o->start_step)
        return sdxl_seterr(e, SDXL_ERR_ARG, "start_step/end_step: need 0 <= start < end <= %d, got %d, %d", k->steps,
                           o->start_step, end);
    if (sdxl_sampler_config_draws_noise(&k->c) && !o->rng && !o->noise)
        return sdxl_seterr(e, SDXL_ERR_ARG, "rng: sampler %s draws noise and needs a generator or a noise callback",
                           sdxl_sampler_name(k->c.sampler));
    run R = {k, o, e, o->start_step, 0};
    int r;
    if (k->c.sampler == SDXL_SAMPLER_DDIM_CFGPP) {
        if (!o->model_cfgpp)
            return sdxl_seterr(e, SDXL_ERR_ARG, "model: DDIM CFG++ needs the unconditional prediction (a CFG++ callback)");
        for (int i = o->start_step; i < end; i++) {
            R.step = i;
            if ((r = ddim_cfgpp_step(&R, i, x))) return r;
            if (o->on_step && o->on_step(o->step_user, i, k->steps, k->sig[i + 1], x, k->n))
                return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled after step %d", i + 1);
        }
        k->last_calls = R.calls;
        return SDXL_OK;
    }
    if (k->c.sampler == SDXL_SAMPLER_RESTART) {
        r = restart_run(&R, x, o->start_step, end);
        k->last_calls = R.calls;
        if (r) return r;
        if (o->on_step && o->on_step(o->step_user, end - 1, k->steps, k->sig[end], x, k->n))
            return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled after step %d", end);
        return SDXL_OK;
    }
    if (k->c.sampler == SDXL_SAMPLER_DPM_FAST || k->c.sampler == SDXL_SAMPLER_DPM_ADAPTIVE) {
        /* A1111: the model's sigma range on a full run; for a partial one the range's first sigma
         * and its last nonzero one */
        float smax = o->start_step == 0 ? k->sigma_max : k->sig[o->start_step];
        float smin = o->start_step == 0 && end == k->steps ? k->sigma_min : k->sig[end];
        if (!(smin > 0)) smin = k->sig[end - 1]; /* A1111 img2img: sigma_sched[-2] */
        r = k->c.sampler == SDXL_SAMPLER_DPM_FAST ? dpm_fast(&R, x, smin, smax, end - o->start_step)
                                                  : dpm_adaptive(&R, x, smin, smax);
        k->last_calls = R.calls;
        if (r) return r;
        if (o->on_step && o->on_step(o->step_user, end - 1, k->steps, k->sig[end], x, k->n))
            return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled after step %d", end);
        return SDXL_OK;
    }
    if (o->start_step != k->pos) sdxl_ksampler_reset(k);
    for (int i = o->start_step; i < end; i++) {
        R.step = i;
        if ((r = step(&R, i, x))) {
            k->pos = -1;
            return r;
        }
        k->pos = i + 1;
        if (o->on_step && o->on_step(o->step_user, i, k->steps, k->sig[i + 1], x, k->n))
            return sdxl_seterr(e, SDXL_ERR_CANCELLED, "cancelled after step %d", i + 1);
    }
    k->last_calls = R.calls;
    return SDXL_OK;
}
