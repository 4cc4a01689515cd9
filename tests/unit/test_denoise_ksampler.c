/* denoise/ksampler: the samplers outside the goldens (ComfyUI's ipndm, ipndm_v, heunpp2,
 * gradient_estimation, res_multistep, er_sde; A1111's Restart and DDIM CFG++) against plain double-precision transcriptions of
 * their published loops (ComfyUI comfy/k_diffusion/sampling.py) on the toy denoiser, fed the same
 * sigmas and the same noise: final sample within 1e-6 relative of its max, equal call counts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "denoise/ksampler.h"
#include "denoise/sampler.h"

#define N 64
#define MAXZ 256

typedef struct feed {
    float z[MAXZ][N];
    int next;
} feed;

static int noise_cb(void *user, float *out, size_t n, double from, double to, sdxl_err *e) {
    (void)from, (void)to;
    feed *f = user;
    if (n != N || f->next >= MAXZ) return sdxl_seterr(e, SDXL_ERR_ARG, "feed exhausted");
    memcpy(out, f->z[f->next++], sizeof f->z[0]);
    return SDXL_OK;
}

static int toy(void *user, const float *x_in, size_t n, double t, double sigma, float *eps, sdxl_err *e) {
    (void)sigma, (void)e;
    (*(int *)user)++;
    for (size_t i = 0; i < n; i++) eps[i] = tanhf(0.5f * x_in[i]) + (float)(0.001 * t);
    return SDXL_OK;
}

typedef struct ref {
    const sdxl_train_table *T;
    int calls;
} ref;

/* CompVisDenoiser on the toy, in double */
static void den(ref *r, const double *x, double s, double *out) {
    double t = sdxl_sigma_to_t(r->T, s), c = 1 / sqrt(s * s + 1);
    for (int i = 0; i < N; i++) out[i] = x[i] - s * (tanh(0.5 * x[i] * c) + 0.001 * t);
    r->calls++;
}

static double ns(double x) { return x * (exp(pow(x, 0.3)) + 10); }

static void run_ref(sdxl_sampler_kind kind, ref *r, const float *sgf, int n, const feed *f, double *x) {
    double sg[SDXL_MAX_STEPS + 2], dn[N], d[N], x2[N], d2[N], x3[N], d3[N], hist[3][N], old[N], oldd[N], dd[N];
    int nh = 0, zi = 0;
    for (int i = 0; i <= n; i++) sg[i] = sgf[i];
    for (int i = 0; i < n; i++) {
        double s = sg[i], sn = sg[i + 1], dt = sn - s;
        den(r, x, s, dn);
        for (int k = 0; k < N; k++) d[k] = (x[k] - dn[k]) / s;
        switch (kind) {
        case SDXL_SAMPLER_IPNDM: {
            int order = nh + 1 < 4 ? nh + 1 : 4;
            for (int k = 0; k < N; k++) {
                double v = order == 1 ? d[k]
                         : order == 2 ? (3 * d[k] - hist[0][k]) / 2
                         : order == 3 ? (23 * d[k] - 16 * hist[0][k] + 5 * hist[1][k]) / 12
                                      : (55 * d[k] - 59 * hist[0][k] + 37 * hist[1][k] - 9 * hist[2][k]) / 24;
                x[k] = sn == 0 ? dn[k] : x[k] + dt * v;
            }
            memmove(hist[1], hist[0], 2 * sizeof hist[0]);
            memcpy(hist[0], d, sizeof d);
            if (nh < 3) nh++;
            break;
        }
        case SDXL_SAMPLER_IPNDM_V: {
            /* variable-step Adams-Bashforth coefficients (zju-pi diff-solvers sample_ipndm_v) */
            int order = nh + 1 < 4 ? nh + 1 : 4;
            double c[4] = {1, 0, 0, 0};
            if (order >= 2) {
                double hn = dt, h1 = s - sg[i - 1], h2 = order >= 3 ? sg[i - 1] - sg[i - 2] : 1,
                       h3 = order >= 4 ? sg[i - 2] - sg[i - 3] : 1;
                double t1 = (1 - hn / (3 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2;
                double t2 = ((1 - hn / (3 * (hn + h1))) / 2 + (1 - hn / (2 * (hn + h1))) * hn / (6 * (hn + h1 + h2))) *
                            (hn * (hn + h1) * (hn + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3));
                double q = h1 * (h1 + h2) / (h2 * (h2 + h3));
                c[0] = (2 + hn / h1) / 2, c[1] = -(hn / h1) / 2;
                if (order >= 3) c[0] += t1, c[1] -= (1 + h1 / h2) * t1, c[2] = t1 * h1 / h2;
                if (order == 4) {
                    c[0] += t2, c[1] -= (1 + h1 / h2 + q) * t2;
                    c[2] += (h1 / h2 + q * (1 + h2 / h3)) * t2, c[3] = -t2 * q * h1 / h2;
                }
            }
            for (int k = 0; k < N; k++) {
                double v = c[0] * d[k];
                for (int j = 1; j < order; j++) v += c[j] * hist[j - 1][k];
                x[k] = sn == 0 ? dn[k] : x[k] + dt * v;
            }
            memmove(hist[1], hist[0], 2 * sizeof hist[0]);
            memcpy(hist[0], d, sizeof d);
            if (nh < 3) nh++;
            break;
        }
        case SDXL_SAMPLER_HEUNPP2: {
            double send = sg[n];
            if (sn == send) {
                for (int k = 0; k < N; k++) x[k] += d[k] * dt;
                break;
            }
            for (int k = 0; k < N; k++) x2[k] = x[k] + d[k] * dt;
            den(r, x2, sn, dn);
            for (int k = 0; k < N; k++) d2[k] = (x2[k] - dn[k]) / sn;
            if (sg[i + 2] == send) {
                double w2 = sn / (2 * sg[0]);
                for (int k = 0; k < N; k++) x[k] += (d[k] * (1 - w2) + d2[k] * w2) * dt;
                break;
            }
            for (int k = 0; k < N; k++) x3[k] = x2[k] + d2[k] * (sg[i + 2] - sn);
            den(r, x3, sg[i + 2], dn);
            for (int k = 0; k < N; k++) d3[k] = (x3[k] - dn[k]) / sg[i + 2];
            double w2 = sn / (3 * sg[0]), w3 = sg[i + 2] / (3 * sg[0]), w1 = 1 - w2 - w3;
            for (int k = 0; k < N; k++) x[k] += (w1 * d[k] + w2 * d2[k] + w3 * d3[k]) * dt;
            break;
        }
        case SDXL_SAMPLER_GRADIENT_ESTIMATION:
            for (int k = 0; k < N; k++) {
                if (sn == 0)
                    x[k] = dn[k];
                else
                    x[k] += d[k] * dt + (i >= 1 ? (2.0 - 1) * (d[k] - old[k]) * dt : 0);
                old[k] = d[k];
            }
            break;
        case SDXL_SAMPLER_RES_MULTISTEP:
            if (sn == 0 || i == 0) {
                for (int k = 0; k < N; k++) x[k] += d[k] * dt;
            } else {
                double t = -log(s), t_old = -log(s), tn = -log(sn), tp = -log(sg[i - 1]);
                double h = tn - t, c2 = (tp - t_old) / h;
                double p1 = expm1(-h) / -h, p2 = (p1 - 1) / -h, b1 = p1 - p2 / c2, b2 = p2 / c2;
                for (int k = 0; k < N; k++) x[k] = exp(-h) * x[k] + h * (b1 * dn[k] + b2 * old[k]);
            }
            memcpy(old, dn, sizeof dn);
            break;
        case SDXL_SAMPLER_ER_SDE: {
            int stage = i + 1 < 3 ? i + 1 : 3;
            if (sn == 0) {
                memcpy(x, dn, sizeof dn);
            } else {
                double ls = s, lt = sn, rr = ns(lt) / ns(ls), dlt = lt - ls;
                for (int k = 0; k < N; k++) x[k] = rr * x[k] + (1 - rr) * dn[k];
                if (stage >= 2) {
                    double step = -dlt / 200, s1 = 0, s2 = 0;
                    for (int q = 0; q < 200; q++) {
                        double pos = lt + q * step;
                        s1 += 1 / ns(pos);
                        s2 += (pos - ls) / ns(pos);
                    }
                    s1 *= step, s2 *= step;
                    for (int k = 0; k < N; k++) {
                        dd[k] = (dn[k] - old[k]) / (ls - sg[i - 1]);
                        x[k] += (dlt + s1 * ns(lt)) * dd[k];
                        if (stage >= 3) x[k] += (dlt * dlt / 2 + s2 * ns(lt)) * ((dd[k] - oldd[k]) / ((ls - sg[i - 2]) / 2));
                    }
                    memcpy(oldd, dd, sizeof dd);
                }
                double q = sqrt(fmax(lt * lt - ls * ls * rr * rr, 0));
                for (int k = 0; k < N; k++) x[k] += f->z[zi][k] * q;
                zi++;
            }
            memcpy(old, dn, sizeof dn);
            break;
        }
        default: break;
        }
    }
}

static void check_kind(sdxl_sampler_kind kind, sdxl_schedule_kind sched, int steps) {
    sdxl_sampler_config c;
    sdxl_sampler_config_init(&c);
    c.sampler = kind;
    c.schedule = sched;
    c.steps = steps;
    c.kdiffusion = 1;
    sdxl_sampler *s = NULL;
    sdxl_err e = {0};
    if (sdxl_sampler_new(&c, N, &s, &e)) {
        CHECK(0, "%s: %s", sdxl_sampler_name(kind), e.msg);
        return;
    }
    static feed f;
    uint64_t st = 1234 + (uint64_t)kind;
    float x0[N];
    check_fill_uniform(&f.z[0][0], (int64_t)MAXZ * N, -2, 2, &st);
    check_fill_uniform(x0, N, -1, 1, &st);
    int n_sig;
    const float *sg = sdxl_sampler_sigmas(s, &n_sig);
    float x[N];
    double xr[N];
    for (int i = 0; i < N; i++) x[i] = x0[i] * sg[0], xr[i] = x[i];
    int calls = 0;
    f.next = 0;
    sdxl_sampler_run_opts o = {.model = toy, .model_user = &calls, .noise = noise_cb, .noise_user = &f};
    int rc = sdxl_sampler_run(s, x, &o, &e);
    ref r = {sdxl_ksampler_table(sdxl_sampler_ksampler(s)), 0};
    run_ref(kind, &r, sg, n_sig - 1, &f, xr);
    double mx = 0, d = 0;
    for (int i = 0; i < N; i++) {
        mx = fmax(mx, fabs(xr[i]));
        d = fmax(d, fabs(x[i] - xr[i]));
    }
    double rel = d / mx;
    if (getenv("SDXL_TEST_VERBOSE"))
        printf("  %-20s %-12s %2d steps: rel %.2e, calls %d/%d\n", sdxl_sampler_name(kind), sdxl_schedule_name(sched),
               steps, rel, calls, r.calls);
    CHECK(rc == SDXL_OK && rel <= 1e-6 && calls == r.calls && calls == sdxl_sampler_model_calls(s),
          "%s %s %d steps: rel %.3g (1e-6), calls %d ref %d (%s)", sdxl_sampler_name(kind), sdxl_schedule_name(sched),
          steps, rel, calls, r.calls, e.msg);
    sdxl_sampler_free(s);
}

/* get_sigmas_karras(n, lo, hi), rho 7, in double (no appended zero) */
static void karras_d(int n, double lo, double hi, double *out) {
    double a = pow(hi, 1 / 7.0), b = pow(lo, 1 / 7.0);
    for (int i = 0; i < n; i++) out[i] = pow(a + (n > 1 ? (double)i / (n - 1) : 0) * (b - a), 7);
}

static int closest(const double *v, int n, double to) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (fabs(v[i] - to) < fabs(v[b] - to)) b = i;
    return b;
}

/* A1111 modules/sd_samplers_extra.py restart_sampler, in double: returns the model calls */
static int restart_ref(ref *r, const float *sgf, int m, const feed *f, double *x) {
    double sig[SDXL_MAX_STEPS + 2], seg[SDXL_MAX_STEPS + 2], from[2 * SDXL_MAX_STEPS], to[2 * SDXL_MAX_STEPS];
    double dn[N], d[N], x2[N];
    int n = m, rs = 0, rt = 0, key = -1, np = 0, zi = 0;
    for (int i = 0; i <= m; i++) sig[i] = sgf[i];
    if (m >= 20) {
        rs = m >= 36 ? m / 4 : 9, rt = m >= 36 ? 2 : 1, n = m - rs * rt;
        karras_d(n, sgf[m - 1], sgf[0], sig);
        sig[n] = 0;
        key = closest(sig, n + 1, 0.1);
    }
    for (int i = 0; i < n; i++) {
        from[np] = sig[i], to[np++] = sig[i + 1];
        int hi = closest(sig, n + 1, 2.0);
        if (i + 1 == key && hi < i + 1) {
            karras_d(rs + 1, sig[i + 1], sig[hi], seg);
            for (int t = 0; t < rt; t++)
                for (int j = 0; j < rs; j++) from[np] = seg[j], to[np++] = seg[j + 1];
        }
    }
    double last = -1;
    for (int p = 0; p < np; p++) {
        double s = from[p], sn = to[p], dt = sn - s;
        if (last < 0)
            last = s;
        else if (last < s) {
            for (int k = 0; k < N; k++) x[k] += f->z[zi][k] * sqrt(s * s - last * last);
            zi++;
        }
        den(r, x, s, dn);
        for (int k = 0; k < N; k++) d[k] = (x[k] - dn[k]) / s;
        if (sn == 0) {
            for (int k = 0; k < N; k++) x[k] += d[k] * dt;
        } else {
            for (int k = 0; k < N; k++) x2[k] = x[k] + d[k] * dt;
            den(r, x2, sn, dn);
            for (int k = 0; k < N; k++) x[k] += (d[k] + (x2[k] - dn[k]) / sn) / 2 * dt;
        }
        last = sn;
    }
    return zi;
}

static void check_restart(sdxl_schedule_kind sched, int steps) {
    sdxl_sampler_config c;
    sdxl_sampler_config_init(&c);
    c.sampler = SDXL_SAMPLER_RESTART;
    c.schedule = sched;
    c.steps = steps;
    c.kdiffusion = 1;
    sdxl_sampler *s = NULL;
    sdxl_err e = {0};
    if (sdxl_sampler_new(&c, N, &s, &e)) {
        CHECK(0, "restart: %s", e.msg);
        return;
    }
    static feed f;
    uint64_t st = 99 + (uint64_t)steps;
    float x0[N], x[N];
    double xr[N];
    check_fill_uniform(&f.z[0][0], (int64_t)MAXZ * N, -2, 2, &st);
    check_fill_uniform(x0, N, -1, 1, &st);
    int n_sig, calls = 0;
    const float *sg = sdxl_sampler_sigmas(s, &n_sig);
    for (int i = 0; i < N; i++) x[i] = x0[i] * sg[0], xr[i] = x[i];
    f.next = 0;
    sdxl_sampler_run_opts o = {.model = toy, .model_user = &calls, .noise = noise_cb, .noise_user = &f};
    int rc = sdxl_sampler_run(s, x, &o, &e);
    ref r = {sdxl_ksampler_table(sdxl_sampler_ksampler(s)), 0};
    int draws = restart_ref(&r, sg, n_sig - 1, &f, xr);
    double mx = 0, d = 0;
    for (int i = 0; i < N; i++) mx = fmax(mx, fabs(xr[i])), d = fmax(d, fabs(x[i] - xr[i]));
    if (getenv("SDXL_TEST_VERBOSE"))
        printf("  restart %-12s %2d steps: rel %.2e, calls %d/%d, noise draws %d\n", sdxl_schedule_name(sched), steps,
               d / mx, calls, r.calls, draws);
    CHECK(rc == SDXL_OK && d / mx <= 1e-6 && calls == r.calls && calls == sdxl_sampler_model_calls(s) &&
              f.next == draws && (steps < 20 || draws > 0),
          "restart %s %d steps: rel %.3g (1e-6), calls %d ref %d, draws %d ref %d (%s)", sdxl_schedule_name(sched),
          steps, d / mx, calls, r.calls, f.next, draws, e.msg);
    sdxl_sampler_free(s);
}

/* DDIM CFG++ toy: cond eps tanh(x/2) + 0.001 t, uncond 0.7 tanh(x/2) - 0.05, combined at cfg * mul */
#define CFG 7.5
static int toy_cfgpp(void *user, const float *x, size_t n, double t, double sigma, double mul, float *eps, float *unc,
                     sdxl_err *e) {
    (void)sigma, (void)e;
    (*(int *)user)++;
    float g = (float)(CFG * mul);
    for (size_t i = 0; i < n; i++) {
        float c = tanhf(0.5f * x[i]) + (float)(0.001 * t), u = 0.7f * tanhf(0.5f * x[i]) - 0.05f;
        unc[i] = u;
        eps[i] = u + g * (c - u);
    }
    return SDXL_OK;
}

/* A1111 modules/sd_samplers_timesteps_impl.py ddim_cfgpp (eta 0) in double on timesteps
 * range(0, 1000, 1000 // steps) + 1 */
static int ddim_cfgpp_ref(const sdxl_train_table *T, int steps, int start, double *x) {
    int stride = T->n / steps, len = (T->n + stride - 1) / stride, calls = 0, ts[SDXL_MAX_STEPS + 2];
    for (int j = 0; j < len; j++) ts[j] = 1 + j * stride > T->n - 1 ? T->n - 1 : 1 + j * stride;
    for (int idx = len - 1 - start; idx >= 1; idx--) {
        double at = T->alphas_cumprod[ts[idx]], ap = T->alphas_cumprod[ts[idx - 1]], g = CFG / 12.5;
        calls++;
        for (int k = 0; k < N; k++) {
            double c = tanh(0.5 * x[k]) + 0.001 * ts[idx], u = 0.7 * tanh(0.5 * x[k]) - 0.05, et = u + g * (c - u);
            double x0 = (x[k] - sqrt(1 - at) * et) / sqrt(at);
            x[k] = sqrt(ap) * x0 + sqrt(1 - ap) * u;
        }
    }
    return calls;
}

static void check_ddim_cfgpp(int steps, double strength) {
    sdxl_sampler_config c;
    sdxl_sampler_config_init(&c);
    c.sampler = SDXL_SAMPLER_DDIM_CFGPP;
    c.steps = steps;
    c.kdiffusion = 1;
    sdxl_sampler *s = NULL;
    sdxl_err e = {0};
    if (sdxl_sampler_new(&c, N, &s, &e)) {
        CHECK(0, "ddim_cfgpp: %s", e.msg);
        return;
    }
    uint64_t st = 7 + (uint64_t)steps;
    float x[N], x0[N], z[N];
    double xr[N];
    check_fill_uniform(x0, N, -1, 1, &st);
    check_fill_uniform(z, N, -2, 2, &st);
    int start = strength < 1 ? sdxl_sampler_start_for_strength(s, strength) : 0;
    if (strength < 1)
        sdxl_sampler_add_noise(s, start, x0, z, x);
    else
        for (int i = 0; i < N; i++) x[i] = z[i] * sdxl_sampler_init_noise_sigma(s);
    for (int i = 0; i < N; i++) xr[i] = x[i];
    int calls = 0;
    sdxl_sampler_run_opts o = {.model = toy, .model_cfgpp = toy_cfgpp, .model_user = &calls, .start_step = start};
    int rc = sdxl_sampler_run(s, x, &o, &e);
    const sdxl_train_table *T = sdxl_ksampler_table(sdxl_sampler_ksampler(s));
    /* img2img: A1111 noises x0 to timesteps[t_enc] and loops from timesteps[t_enc - 1] */
    int t_enc = (int)(fmin(strength, 0.999) * steps), stride = T->n / steps, len = (T->n + stride - 1) / stride;
    if (strength < 1) {
        int tn = 1 + t_enc * stride;
        double a = T->alphas_cumprod[tn];
        for (int i = 0; i < N; i++) xr[i] = x0[i] * sqrt(a) + z[i] * sqrt(1 - a);
    }
    int rcalls = ddim_cfgpp_ref(T, steps, strength < 1 ? len - t_enc : 0, xr);
    double mx = 0, d = 0;
    for (int i = 0; i < N; i++) mx = fmax(mx, fabs(xr[i])), d = fmax(d, fabs(x[i] - xr[i]));
    if (getenv("SDXL_TEST_VERBOSE"))
        printf("  ddim_cfgpp %2d steps strength %.2f: rel %.2e, calls %d/%d\n", steps, strength, d / mx, calls, rcalls);
    CHECK(rc == SDXL_OK && d / mx <= 1e-6 && calls == rcalls && (strength < 1 || calls == sdxl_sampler_model_calls(s)),
          "ddim_cfgpp %d steps strength %g: rel %.3g (1e-6), calls %d ref %d (%s)", steps, strength, d / mx, calls,
          rcalls, e.msg);
    /* without the CFG++ callback the run is refused, naming what is missing */
    sdxl_sampler_run_opts o2 = {.model = toy, .model_user = &calls};
    CHECK(sdxl_sampler_run(s, x, &o2, &e) == SDXL_ERR_ARG && strstr(e.msg, "unconditional"), "no cfgpp callback: %s",
          e.msg);
    sdxl_sampler_free(s);
}

int main(void) {
    const sdxl_sampler_kind kinds[] = {SDXL_SAMPLER_IPNDM, SDXL_SAMPLER_HEUNPP2, SDXL_SAMPLER_GRADIENT_ESTIMATION,
                                       SDXL_SAMPLER_RES_MULTISTEP, SDXL_SAMPLER_ER_SDE, SDXL_SAMPLER_IPNDM_V};
    const sdxl_schedule_kind scheds[] = {SDXL_SCHEDULE_DEFAULT, SDXL_SCHEDULE_KARRAS, SDXL_SCHEDULE_EXPONENTIAL};
    const int steps[] = {12, 5, 30};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        for (int j = 0; j < 3; j++) check_kind(kinds[k], scheds[j], steps[j]);
    /* Restart: plain Heun below 20 steps, one 9-step restart from 20, two of steps / 4 from 36 */
    const int rsteps[] = {12, 20, 30, 40};
    for (int j = 0; j < 4; j++) check_restart(j % 2 ? SDXL_SCHEDULE_KARRAS : SDXL_SCHEDULE_EXPONENTIAL, rsteps[j]);
    check_restart(SDXL_SCHEDULE_DEFAULT, 25);
    /* DDIM CFG++: txt2img at step counts with and without A1111's extra timestep, and img2img */
    const int dsteps[] = {10, 30, 40, 7};
    for (int j = 0; j < 4; j++) check_ddim_cfgpp(dsteps[j], 1.0);
    check_ddim_cfgpp(20, 0.6);
    return check_done();
}
