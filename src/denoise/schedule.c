#include "denoise/schedule.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* torch.linspace(a, b, n, dtype=float32) on an AVX2 build: blocks of 8 from base + k*step with
 * base = start + step*idx (a fused multiply-add in torch's binary), mirrored past the midpoint;
 * the last n % 16 elements take the scalar path. Matches diffusers' betas bit for bit. */
void sdxl_torch_linspace_f32(double a, double b, int n, float *out) {
    float start = (float)a, end = (float)b;
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int half = n / 2, i = 0;
#define LS_AT(idx)                                                                                            \
    ((idx) < half ? fmaf(step, (float)(idx), start) : fmaf(-step, (float)(n - (idx)-1), end))
    for (; i + 16 <= n; i += 16)
        for (int c = i; c < i + 16; c += 8) {
            float base = LS_AT(c);
            for (int k = 0; k < 8; k++) out[c + k] = base + (float)k * step;
        }
    for (; i < n; i++) out[i] = LS_AT(i);
#undef LS_AT
}

int sdxl_train_table_init(sdxl_train_table *t, int n, sdxl_beta_kind kind, double beta_start, double beta_end,
                          sdxl_err *e) {
    if (n < 2 || n > SDXL_MAX_TRAIN_STEPS)
        return sdxl_seterr(e, SDXL_ERR_ARG, "num_train_timesteps: must be in [2, %d], got %d", SDXL_MAX_TRAIN_STEPS, n);
    if (!(beta_start > 0) || !(beta_end > beta_start) || !(beta_end < 1))
        return sdxl_seterr(e, SDXL_ERR_ARG, "beta_start/beta_end: need 0 < beta_start < beta_end < 1, got %g, %g",
                           beta_start, beta_end);
    memset(t, 0, sizeof *t);
    t->n = n;
    t->beta_kind = kind;
    t->beta_start = beta_start;
    t->beta_end = beta_end;
    switch (kind) {
    case SDXL_BETA_LINEAR: sdxl_torch_linspace_f32(beta_start, beta_end, n, t->betas); break;
    case SDXL_BETA_SCALED_LINEAR:
        sdxl_torch_linspace_f32(sqrt(beta_start), sqrt(beta_end), n, t->betas);
        for (int i = 0; i < n; i++) t->betas[i] = t->betas[i] * t->betas[i];
        break;
    case SDXL_BETA_COSINE:
        for (int i = 0; i < n; i++) {
            double t1 = (double)i / n, t2 = (double)(i + 1) / n;
            double a1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), a2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
            double b = 1 - (a2 * a2) / (a1 * a1);
            t->betas[i] = (float)(b < 0.999 ? b : 0.999);
        }
        break;
    default: return sdxl_seterr(e, SDXL_ERR_ARG, "beta_schedule: unknown kind %d", (int)kind);
    }
    double acc = 1.0; /* torch's CPU cumprod accumulates in double */
    for (int i = 0; i < n; i++) {
        acc *= (double)(1.0f - t->betas[i]);
        t->alphas_cumprod[i] = (float)acc;
        float ac = t->alphas_cumprod[i];
        t->sigmas[i] = sqrtf((1.0f - ac) / ac);
        t->log_sigmas[i] = logf(t->sigmas[i]);
    }
    return SDXL_OK;
}

void sdxl_schedule_params_init(sdxl_schedule_params *p) {
    p->rho = 7.0;
    p->sigma_min = 0;
    p->sigma_max = 0;
    p->beta_alpha = 0.6;
    p->beta_beta = 0.6;
}

const char *sdxl_schedule_name(sdxl_schedule_kind k) {
    static const char *const names[SDXL_SCHEDULE_COUNT] = {"default", "normal", "karras", "exponential",
                                                           "sgm_uniform", "simple", "ddim_uniform", "beta",
                                                           "align_your_steps"};
    return (unsigned)k < SDXL_SCHEDULE_COUNT ? names[k] : "?";
}

double sdxl_sigma_to_t(const sdxl_train_table *t, double sigma) {
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int i = 0; i < t->n; i++)
        if (ls - (double)t->log_sigmas[i] >= 0) low = i;
    if (low > t->n - 2) low = t->n - 2;
    double lo = t->log_sigmas[low], hi = t->log_sigmas[low + 1];
    double w = (lo - ls) / (lo - hi);
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1 - w) * low + w * (low + 1);
}

double sdxl_t_to_sigma_log(const sdxl_train_table *t, double ts) {
    if (ts < 0) ts = 0;
    if (ts > t->n - 1) ts = t->n - 1;
    int lo = (int)floor(ts), hi = (int)ceil(ts);
    double w = ts - lo;
    return exp((1 - w) * t->log_sigmas[lo] + w * t->log_sigmas[hi]);
}

double sdxl_t_to_sigma_lin(const sdxl_train_table *t, double ts) {
    if (!(ts > 0)) return t->sigmas[0];
    if (ts >= t->n - 1) return t->sigmas[t->n - 1];
    int j = (int)floor(ts);
    if (ts == j) return t->sigmas[j];
    return ((double)t->sigmas[j + 1] - (double)t->sigmas[j]) * (ts - j) + (double)t->sigmas[j];
}

/* np.linspace(0, stop, num)[i] */
static double np_linspace(double stop, int num, int i) {
    if (num == 1) return 0;
    if (i == num - 1) return stop;
    return (double)i * (stop / (double)(num - 1));
}

int sdxl_diffusers_timesteps(const sdxl_train_table *t, sdxl_spacing sp, int steps_offset, int steps, int n_plus_one,
                             double *ts, sdxl_err *e) {
    int N = t->n;
    if (steps < 1 || steps > N)
        return sdxl_seterr(e, SDXL_ERR_ARG, "steps: must be in [1, %d] for this schedule, got %d", N, steps);
    int m = n_plus_one ? steps + 1 : steps;
    switch (sp) {
    case SDXL_SPACING_LINSPACE:
        for (int i = 0; i < steps; i++) {
            double v = np_linspace(N - 1, m, m - 1 - i);
            ts[i] = n_plus_one ? nearbyint(v) : v;
        }
        break;
    case SDXL_SPACING_LEADING: {
        int ratio = N / m;
        for (int i = 0; i < steps; i++) ts[i] = (double)((m - 1 - i) * ratio + steps_offset);
        break;
    }
    case SDXL_SPACING_TRAILING: {
        double ratio = (double)N / steps;
        for (int i = 0; i < steps; i++) ts[i] = nearbyint((double)N + (double)i * -ratio) - 1;
        break;
    }
    default: return sdxl_seterr(e, SDXL_ERR_ARG, "timestep_spacing: unknown value %d", (int)sp);
    }
    return SDXL_OK;
}

void sdxl_karras_sigmas(double sigma_min, double sigma_max, double rho, int n, double *out) {
    double min_inv = pow(sigma_min, 1 / rho), max_inv = pow(sigma_max, 1 / rho);
    for (int i = 0; i < n; i++) {
        double ramp = np_linspace(1.0, n, i);
        out[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
    }
}

/* Continued fraction for I_x(a, b) (modified Lentz). */
static double betacf(double a, double b, double x) {
    const double tiny = 1e-300;
    double c = 1, d = 1 - (a + b) * x / (a + 1);
    if (fabs(d) < tiny) d = tiny;
    d = 1 / d;
    double h = d;
    for (int m = 1; m <= 300; m++) {
        double m2 = 2 * m, aa = m * (b - m) * x / ((a - 1 + m2) * (a + m2));
        d = 1 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1 / d;
        h *= d * c;
        aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1 + m2));
        d = 1 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1) < 1e-16) break;
    }
    return h;
}

double sdxl_betainc(double a, double b, double x) {
    if (x <= 0) return 0;
    if (x >= 1) return 1;
    double lbt = lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x);
    if (x < (a + 1) / (a + b + 2)) return exp(lbt) * betacf(a, b, x) / a;
    return 1 - exp(lbt) * betacf(b, a, 1 - x) / b;
}

double sdxl_betainc_inv(double a, double b, double p) {
    if (p <= 0) return 0;
    if (p >= 1) return 1;
    double lo = 0, hi = 1;
    for (int i = 0; i < 200 && hi - lo > 1e-15; i++) {
        double mid = 0.5 * (lo + hi);
        if (sdxl_betainc(a, b, mid) < p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* ComfyUI AlignYourStepsScheduler noise levels for SDXL (Nvidia, "Align Your Steps", 2024). */
static const double AYS_SDXL[11] = {14.6146412293, 6.3184485435, 3.7681790315, 2.1811480769,
                                    1.3405244350,  0.8620721141, 0.5550693306, 0.3798540444,
                                    0.2332364211,  0.1114188177, 0.0291671582};

int sdxl_schedule_sigmas(const sdxl_train_table *t, sdxl_schedule_kind kind, int steps,
                         const sdxl_schedule_params *pp, double *s, int cap, int *n_out, sdxl_err *e) {
    sdxl_schedule_params dp;
    if (!pp) {
        sdxl_schedule_params_init(&dp);
        pp = &dp;
    }
    if (steps < 1 || steps > SDXL_MAX_STEPS)
        return sdxl_seterr(e, SDXL_ERR_ARG, "steps: must be in [1, %d], got %d", SDXL_MAX_STEPS, steps);
    if (cap < steps + 2) return sdxl_seterr(e, SDXL_ERR_ARG, "sigmas: capacity %d < steps + 2", cap);
    if (kind == SDXL_SCHEDULE_KARRAS && !(pp->rho > 0))
        return sdxl_seterr(e, SDXL_ERR_ARG, "rho: karras rho must be > 0, got %g", pp->rho);
    if (kind == SDXL_SCHEDULE_BETA && (!(pp->beta_alpha > 0) || !(pp->beta_beta > 0)))
        return sdxl_seterr(e, SDXL_ERR_ARG, "beta_alpha/beta_beta: must be > 0, got %g, %g", pp->beta_alpha,
                           pp->beta_beta);
    int N = t->n, n = 0;
    double smin = pp->sigma_min > 0 ? pp->sigma_min : t->sigmas[0];
    double smax = pp->sigma_max > 0 ? pp->sigma_max : t->sigmas[N - 1];
    if (!(smax > smin)) return sdxl_seterr(e, SDXL_ERR_ARG, "sigma_min/sigma_max: need min < max, got %g, %g", smin, smax);
    switch (kind) {
    case SDXL_SCHEDULE_DEFAULT:
    case SDXL_SCHEDULE_NORMAL:
        /* k-diffusion get_sigmas / ComfyUI normal: t = linspace(T-1, 0, n) */
        for (int i = 0; i < steps; i++) s[n++] = sdxl_t_to_sigma_log(t, (N - 1) - np_linspace(N - 1, steps, i));
        break;
    case SDXL_SCHEDULE_SGM_UNIFORM:
        for (int i = 0; i < steps; i++) s[n++] = sdxl_t_to_sigma_log(t, (N - 1) - np_linspace(N - 1, steps + 1, i));
        break;
    case SDXL_SCHEDULE_KARRAS:
        sdxl_karras_sigmas(smin, smax, pp->rho, steps, s);
        n = steps;
        break;
    case SDXL_SCHEDULE_EXPONENTIAL:
        for (int i = 0; i < steps; i++) {
            double lmax = log(smax), lmin = log(smin);
            s[n++] = exp(steps == 1 ? lmax : (i == steps - 1 ? lmin : lmax + i * ((lmin - lmax) / (steps - 1))));
        }
        break;
    case SDXL_SCHEDULE_SIMPLE: {
        double ss = (double)N / steps;
        for (int i = 0; i < steps; i++) s[n++] = t->sigmas[N - 1 - (int)(i * ss)];
        break;
    }
    case SDXL_SCHEDULE_DDIM_UNIFORM: {
        int ss = N / steps > 1 ? N / steps : 1;
        double tmp[SDXL_MAX_TRAIN_STEPS];
        int m = 0;
        for (int x = 1; x < N; x += ss) tmp[m++] = t->sigmas[x];
        if (m > cap - 1) m = cap - 1;
        for (int i = 0; i < m; i++) s[n++] = tmp[m - 1 - i];
        break;
    }
    case SDXL_SCHEDULE_BETA: {
        double last = -1;
        for (int i = 0; i < steps; i++) {
            double q = 1 - (double)i / steps;
            double tt = nearbyint(sdxl_betainc_inv(pp->beta_alpha, pp->beta_beta, q) * (N - 1));
            if (tt != last) s[n++] = t->sigmas[(int)tt];
            last = tt;
        }
        break;
    }
    case SDXL_SCHEDULE_AYS: {
        /* loglinear_interp of the 11 levels to steps+1 points, then the last forced to 0 */
        if (steps + 1 == 11) {
            for (int i = 0; i < 10; i++) s[n++] = AYS_SDXL[i];
        } else {
            for (int i = 0; i < steps; i++) {
                double pos = (1.0 - np_linspace(1.0, steps + 1, i)) * 10;
                int k = pos >= 9 ? 9 : (int)floor(pos);
                double ya = log(AYS_SDXL[10 - k]), yb = log(AYS_SDXL[9 - k]);
                s[n++] = exp(ya + (yb - ya) * (pos - k));
            }
        }
        break;
    }
    default: return sdxl_seterr(e, SDXL_ERR_ARG, "schedule: unknown kind %d", (int)kind);
    }
    s[n++] = 0.0;
    *n_out = n;
    return SDXL_OK;
}
