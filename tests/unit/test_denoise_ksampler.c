/* denoise/ksampler: the samplers outside the goldens (ComfyUI's ipndm, heunpp2,
 * gradient_estimation, res_multistep, er_sde) against plain double-precision transcriptions of
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

int main(void) {
    const sdxl_sampler_kind kinds[] = {SDXL_SAMPLER_IPNDM, SDXL_SAMPLER_HEUNPP2, SDXL_SAMPLER_GRADIENT_ESTIMATION,
                                       SDXL_SAMPLER_RES_MULTISTEP, SDXL_SAMPLER_ER_SDE};
    const sdxl_schedule_kind scheds[] = {SDXL_SCHEDULE_DEFAULT, SDXL_SCHEDULE_KARRAS, SDXL_SCHEDULE_EXPONENTIAL};
    const int steps[] = {12, 5, 30};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        for (int j = 0; j < 3; j++) check_kind(kinds[k], scheds[j], steps[j]);
    return check_done();
}
