/* Golden component `ksamplers`: A1111's sampler path (k-diffusion loops on A1111's sigmas). For
 * every variant in ksamplers.json the request is built the way a user gives it, from the A1111
 * sampler and schedule names through the registry (which must select the k-diffusion path),
 * plus the prediction type and zero-terminal-SNR flag; then
 *  - alphas_cumprod (ldm's table, rescaled for zero terminal SNR): relative 1e-6 per element
 *    (float32 values of the same formula; the bound allows a last-bit difference);
 *  - the sigma list (not for DPM fast/adaptive, which take a range): relative 1e-6 per element;
 *  - the initial latent x0 = randn(seed) * sigma_0 from our torch-compatible generator: 1e-6;
 *  - every model call's input and output, and the final sample: relative 1e-5 of the tensor's max
 *    (the reference ran in float32; errors compound over up to 27 calls); the timesteps of all
 *    calls: relative 1e-5 of the largest (t(sigma) is ill-conditioned near t = 0, where one ulp
 *    of log sigma moves t by 3e-4, and torch's Sleef log/exp differ from libm by an ulp: DPM
 *    adaptive's step-size controller carries such an ulp into its later timesteps);
 *  - the model-call count, and DPM adaptive's accepted/rejected step counts: equal. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "denoise/ksampler.h"
#include "denoise/registry.h"
#include "denoise/sampler.h"
#include "golden.h"

#define C "ksamplers"

static double rel_max(const float *a, const float *b, size_t n) {
    double mx = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
        double x = fabs((double)a[i] - b[i]);
        if (!(x <= d)) d = x;
    }
    return d / (mx > 0 ? mx : 1);
}

typedef struct toy {
    golden_set *s;
    const char *v;
    int call, missing;
    double w_in, w_t, w_out, t_max;
} toy;

/* The toy network: tanh(0.5 x_in) + 0.001 t, compared call by call with the reference. */
static int toy_model(void *user, const float *x_in, size_t n, double t, double sigma, float *out, sdxl_err *e) {
    (void)sigma, (void)e;
    toy *ty = user;
    float add = (float)(0.001 * (double)(float)t);
    for (size_t i = 0; i < n; i++) out[i] = tanhf(0.5f * x_in[i]) + add;
    char key[256];
    float *ref = malloc(n * sizeof(float));
    const char *what[2] = {"model_input", "model_output"};
    for (int w = 0; w < 2 && ref; w++) {
        snprintf(key, sizeof key, "%s/call%d/%s", ty->v, ty->call, what[w]);
        const sdxl_st_tensor *ti = golden_find(ty->s, key);
        if (!ti || ti->numel != n || sdxl_st_to_f32(ty->s->st, ti, ref, NULL) != SDXL_OK) {
            ty->missing++;
            continue;
        }
        double r = rel_max(w ? out : x_in, ref, n);
        double *dst = w ? &ty->w_out : &ty->w_in;
        if (!(r <= *dst)) *dst = r;
    }
    free(ref);
    snprintf(key, sizeof key, "%s/call%d/t", ty->v, ty->call);
    const sdxl_st_tensor *tt = golden_find(ty->s, key);
    float tref = 0;
    if (tt && tt->numel == 1 && sdxl_st_to_f32(ty->s->st, tt, &tref, NULL) == SDXL_OK) {
        double r = fabs(t - tref);
        if (!(r <= ty->w_t)) ty->w_t = r;
        if (fabs(tref) > ty->t_max) ty->t_max = fabs(tref);
    } else {
        ty->missing++;
    }
    ty->call++;
    return SDXL_OK;
}

static void run_variant(golden_ctx *g, golden_set *s, const char *v, const sdxl_json *var) {
    sdxl_err e = {0};
    sdxl_sched_choice ch;
    const char *name = sdxl_json_str(var, "a1111", ""), *sched = sdxl_json_str(var, "schedule", "Automatic");
    if (sdxl_sched_resolve(name, sched, &ch, &e)) {
        golden_fail(g, C, v, "resolve '%s' / '%s': %s", name, sched, e.msg);
        return;
    }
    if (!ch.kdiffusion) {
        golden_fail(g, C, v, "'%s' did not select the k-diffusion path", name);
        return;
    }
    sdxl_sampler_config c;
    sdxl_sampler_config_init(&c);
    c.sampler = ch.sampler;
    c.schedule = ch.schedule;
    c.kdiffusion = 1;
    c.steps = (int)sdxl_json_i64(var, "N", 0);
    c.v_prediction = !strcmp(sdxl_json_str(var, "prediction", "epsilon"), "v");
    c.zero_terminal_snr = sdxl_json_bool(var, "zero_terminal_snr", 0);
    const sdxl_json *shape = sdxl_json_get(var, "shape");
    size_t n = 1;
    for (size_t i = 0; shape && i < shape->len; i++) n *= (size_t)sdxl_json_at(shape, i)->integer;
    sdxl_sampler *sm = NULL;
    if (!shape || sdxl_sampler_new(&c, n, &sm, &e)) {
        golden_fail(g, C, v, "sampler: %s", shape ? e.msg : "no shape");
        return;
    }
    const sdxl_ksampler *k = sdxl_sampler_ksampler(sm);
    char key[256];
    /* the table */
    snprintf(key, sizeof key, "%s/alphas_cumprod", v);
    const char *ack = golden_find(s, key) ? key : "alphas_cumprod";
    size_t na = 0;
    float *ac = golden_f32(g, s, ack, NULL, NULL, &na);
    const sdxl_train_table *T = sdxl_ksampler_table(k);
    if (ac && na == (size_t)T->n) golden_check(g, C, v, "alphas_cumprod_rel", golden_max_rel(T->alphas_cumprod, ac, na, 1e-30), 1e-6);
    free(ac);
    /* the sigma list */
    int ns = 0;
    const float *sig = sdxl_sampler_sigmas(sm, &ns);
    snprintf(key, sizeof key, "%s/sigmas", v);
    if (golden_find(s, key)) {
        size_t nr = 0;
        float *rs = golden_f32(g, s, key, NULL, NULL, &nr);
        if (rs && nr == (size_t)ns)
            golden_check(g, C, v, "sigmas_rel", golden_max_rel(sig, rs, nr, 1e-30), 1e-6);
        else if (rs)
            golden_fail(g, C, v, "sigmas: %d values, reference %zu", ns, nr);
        free(rs);
    }
    /* x0 and the run */
    sdxl_rng rng;
    sdxl_rng_init(&rng, SDXL_RNG_TORCH_CPU, (uint64_t)sdxl_json_i64(var, "seed", 0));
    float *x = malloc(n * sizeof(float));
    snprintf(key, sizeof key, "%s/x0", v);
    size_t nx = 0;
    float *x0 = golden_f32(g, s, key, NULL, NULL, &nx);
    if (!x || !x0 || nx != n) {
        golden_fail(g, C, v, "x0: missing or of another size");
        goto out;
    }
    sdxl_rng_randn(&rng, x, n);
    float s0 = sdxl_sampler_init_noise_sigma(sm);
    for (size_t i = 0; i < n; i++) x[i] *= s0;
    golden_check(g, C, v, "x0_rel", rel_max(x, x0, n), 1e-6);
    toy ty = {s, v, 0, 0, 0, 0, 0, 0};
    sdxl_sampler_run_opts o = {.model = toy_model, .model_user = &ty, .rng = &rng};
    if (sdxl_sampler_run(sm, x, &o, &e)) {
        golden_fail(g, C, v, "run: %s", e.msg);
        goto out;
    }
    int calls_ref = (int)sdxl_json_i64(var, "n_model_calls", -1);
    golden_check(g, C, v, "model_calls_diff", abs(ty.call - calls_ref), 0);
    golden_check(g, C, v, "model_input_rel", ty.missing ? INFINITY : ty.w_in, 1e-5);
    golden_check(g, C, v, "t_rel", ty.w_t / fmax(ty.t_max, 1.0), 1e-5);
    golden_check(g, C, v, "model_output_rel", ty.w_out, 1e-5);
    snprintf(key, sizeof key, "%s/final", v);
    size_t nf = 0;
    float *fin = golden_f32(g, s, key, NULL, NULL, &nf);
    if (fin && nf == n) golden_check(g, C, v, "final_rel", rel_max(x, fin, n), 1e-5);
    free(fin);
    const sdxl_json *info = sdxl_json_get(var, "info");
    if (info) {
        int acc = 0, rej = 0;
        sdxl_ksampler_adaptive_info(k, &acc, &rej);
        golden_check(g, C, v, "accepted_diff", abs(acc - (int)sdxl_json_i64(info, "n_accept", -1)), 0);
        golden_check(g, C, v, "rejected_diff", abs(rej - (int)sdxl_json_i64(info, "n_reject", -1)), 0);
    }
out:
    free(x0);
    free(x);
    sdxl_sampler_free(sm);
}

int golden_ksamplers(golden_ctx *g) {
    golden_set s;
    if (golden_open(g, C, &s)) return 0;
    const sdxl_json *variants = sdxl_json_get(s.json, "variants");
    if (!variants || variants->type != SDXL_JSON_OBJECT) {
        golden_fail(g, C, "json", "no \"variants\" object");
    } else {
        for (size_t i = 0; i < variants->len; i++) run_variant(g, &s, variants->keys[i], &variants->items[i]);
    }
    golden_close(&s);
    return 0;
}
