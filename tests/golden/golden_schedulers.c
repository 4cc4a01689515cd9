/* Golden component `schedulers`: for every variant in schedulers.json (diffusers class + config)
 *  - timesteps and sigmas after set_timesteps(n), for every steps<n> present: relative 1e-6
 *    (float32 values computed by the same formulas; the bound allows a last-bit difference
 *    in log/exp between numpy and libm);
 *  - init_noise_sigma for each n in the JSON;
 *  - the toy-denoiser trajectory run end to end by our sampler from our own torch-compatible
 *    noise: every model call's input and timestep and the final sample, relative 1e-5 of the
 *    tensor's max (float32 step math in the reference's order; errors compound over 20-39 calls);
 *  - DPM++ SDE draws torchsde Brownian-tree noise we do not reproduce bit for bit: its schedule
 *    and timesteps are exact, and the final sample's mean and std must match the reference's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "denoise/registry.h"
#include "denoise/sampler.h"
#include "golden.h"

#define C "schedulers"

static double rel_err(const float *a, const float *b, size_t n) {
    double mx = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
        double x = fabs((double)a[i] - b[i]);
        if (!(x <= d)) d = x;
    }
    return d / (mx > 0 ? mx : 1);
}

/* per-element relative error with a floor, for schedule arrays that span 0.03..1000 */
static double rel_elem(const float *a, const float *b, size_t n) {
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - b[i]) / fmax(fabs(b[i]), 1e-3);
        if (!(x <= w)) w = x;
    }
    return w;
}

typedef struct toy {
    golden_ctx *g;
    golden_set *s;
    const char *v;
    int call, bad_calls;
    double worst_in, worst_t;
} toy;

static int toy_model(void *user, const float *x_in, size_t n, double t, double sigma, float *eps, sdxl_err *e) {
    (void)sigma;
    (void)e;
    toy *ty = user;
    char key[256];
    snprintf(key, sizeof key, "%s/traj/step%d/model_input", ty->v, ty->call);
    const sdxl_st_tensor *ti = golden_find(ty->s, key);
    if (ti && ti->numel == n) {
        float *ref = malloc(n * sizeof(float));
        if (ref && sdxl_st_to_f32(ty->s->st, ti, ref, NULL) == SDXL_OK) {
            double r = rel_err(x_in, ref, n);
            if (!(r <= ty->worst_in)) ty->worst_in = r;
        }
        free(ref);
    } else {
        ty->bad_calls++;
    }
    snprintf(key, sizeof key, "%s/traj/step%d/t", ty->v, ty->call);
    const sdxl_st_tensor *tt = golden_find(ty->s, key);
    float tref = 0;
    if (tt && tt->numel == 1 && sdxl_st_to_f32(ty->s->st, tt, &tref, NULL) == SDXL_OK) {
        double r = fabs(t - tref) / fmax(fabs(tref), 1.0);
        if (!(r <= ty->worst_t)) ty->worst_t = r;
    }
    float add = (float)(0.001 * (double)(float)t);
    for (size_t i = 0; i < n; i++) eps[i] = tanhf(0.5f * x_in[i]) + add;
    ty->call++;
    return SDXL_OK;
}

static void check_schedule(golden_ctx *g, golden_set *s, const char *v, const sdxl_sampler_config *base,
                           const sdxl_json *tensors, const sdxl_json *variant) {
    char prefix[160];
    snprintf(prefix, sizeof prefix, "%s/steps", v);
    for (size_t k = 0; k < tensors->len; k++) {
        const char *key = tensors->keys[k];
        if (strncmp(key, prefix, strlen(prefix))) continue;
        int steps = 0, used = 0;
        if (sscanf(key + strlen(prefix), "%d/timesteps%n", &steps, &used) != 1 || key[strlen(prefix) + used]) continue;
        char name[200];
        snprintf(name, sizeof name, "%s/steps%d", v, steps);
        sdxl_sampler_config c = *base;
        c.steps = steps;
        sdxl_sampler *sm;
        sdxl_err e = {0};
        if (sdxl_sampler_new(&c, 1, &sm, &e)) {
            golden_fail(g, C, name, "%s", e.msg);
            continue;
        }
        size_t nt = 0;
        float *ts = golden_f32(g, s, key, NULL, NULL, &nt);
        int n = 0;
        const float *mine = sdxl_sampler_timesteps(sm, &n);
        if (ts) {
            if ((size_t)n != nt)
                golden_fail(g, C, name, "timesteps: %d values, reference has %zu", n, nt);
            else
                golden_check(g, C, name, "timesteps_rel", rel_elem(mine, ts, nt), 1e-6);
        }
        free(ts);
        char sk[200];
        snprintf(sk, sizeof sk, "%s/steps%d/sigmas", v, steps);
        if (golden_find(s, sk)) {
            float *sg = golden_f32(g, s, sk, NULL, NULL, &nt);
            const float *ms = sdxl_sampler_sigmas(sm, &n);
            if (sg) {
                if ((size_t)n != nt || !ms)
                    golden_fail(g, C, name, "sigmas: %d values, reference has %zu", n, nt);
                else
                    golden_check(g, C, name, "sigmas_rel", rel_elem(ms, sg, nt), 1e-6);
            }
            free(sg);
        }
        char ns[32];
        snprintf(ns, sizeof ns, "%d", steps);
        const sdxl_json *ins = sdxl_json_get(sdxl_json_get(variant, "init_noise_sigma"), ns);
        if (ins && ins->type == SDXL_JSON_NUMBER) {
            double want = ins->number, got = sdxl_sampler_init_noise_sigma(sm);
            golden_check(g, C, name, "init_noise_sigma_rel", fabs(got - want) / fabs(want), 1e-6);
        }
        sdxl_sampler_free(sm);
    }
}

static void check_trajectory(golden_ctx *g, golden_set *s, const char *v, const sdxl_sampler_config *base,
                             const sdxl_json *traj) {
    char name[160], key[256];
    snprintf(name, sizeof name, "%s/traj", v);
    int steps = (int)sdxl_json_i64(traj, "N", 0), calls_ref = (int)sdxl_json_i64(traj, "n_model_calls", -1);
    int64_t seed = sdxl_json_i64(traj, "seed", -1);
    snprintf(key, sizeof key, "%s/traj/x0", v);
    size_t n = 0;
    float *x0 = golden_f32(g, s, key, NULL, NULL, &n);
    if (!x0) return;
    if (steps < 1 || seed < 0) {
        golden_fail(g, C, name, "trajectory JSON lacks N or seed");
        free(x0);
        return;
    }
    sdxl_sampler_config c = *base;
    c.steps = steps;
    sdxl_sampler *sm;
    sdxl_err e = {0};
    if (sdxl_sampler_new(&c, n, &sm, &e)) {
        golden_fail(g, C, name, "%s", e.msg);
        free(x0);
        return;
    }
    float *x = malloc(n * sizeof(float));
    sdxl_rng rng;
    sdxl_rng_init(&rng, SDXL_RNG_TORCH_CPU, (uint64_t)seed);
    sdxl_rng_randn(&rng, x, n);
    float ins = sdxl_sampler_init_noise_sigma(sm);
    for (size_t i = 0; i < n; i++) x[i] = x[i] * ins;
    golden_check(g, C, name, "x0_rel", rel_err(x, x0, n), 1e-6);
    toy ty = {g, s, v, 0, 0, 0, 0};
    sdxl_sampler_run_opts o = {.model = toy_model, .model_user = &ty, .rng = &rng};
    int r = sdxl_sampler_run(sm, x, &o, &e);
    if (r) {
        golden_fail(g, C, name, "%s", e.msg);
    } else {
        if (calls_ref >= 0) golden_check(g, C, name, "model_calls_diff", abs(ty.call - calls_ref), 0);
        int sde = c.sampler == SDXL_SAMPLER_DPMPP_SDE;
        if (!sde) {
            golden_check(g, C, name, "model_input_rel", ty.worst_in, 1e-5);
            golden_check(g, C, name, "timestep_rel", ty.worst_t, 1e-6);
            snprintf(key, sizeof key, "%s/traj/step%d/prev_sample", v, ty.call - 1);
            float *fin = golden_f32(g, s, key, NULL, NULL, NULL);
            if (fin) golden_check(g, C, name, "final_rel", rel_err(x, fin, n), 1e-5);
            free(fin);
        } else {
            /* statistical: our own Brownian noise; compare the final sample's moments with the
             * reference's to 10% (the toy trajectory's spread across seeds is ~5%) */
            golden_check(g, C, name, "timestep_rel", ty.worst_t, 1e-6);
            double m = 0, m2 = 0;
            for (size_t i = 0; i < n; i++) m += x[i], m2 += (double)x[i] * x[i];
            m /= (double)n;
            double sd = sqrt(m2 / (double)n - m * m);
            double rm = sdxl_json_num(traj, "final_mean", NAN), rs = sdxl_json_num(traj, "final_std", NAN);
            golden_check(g, C, name, "stat_mean_rel", fabs(m - rm) / fabs(rm), 0.1);
            golden_check(g, C, name, "stat_std_rel", fabs(sd - rs) / fabs(rs), 0.1);
        }
    }
    free(x);
    free(x0);
    sdxl_sampler_free(sm);
}

/* schedulers.json carries Python's -Infinity (lambda_min_clipped), which strict JSON rejects:
 * read the file and turn the bare tokens Infinity/-Infinity/NaN into null before parsing. */
static int open_lenient(golden_ctx *g, golden_set *s) {
    char path[4096];
    sdxl_err e = {0};
    memset(s, 0, sizeof *s);
    s->component = C;
    golden_path(path, sizeof path, g->golden_dir, C ".safetensors");
    if (sdxl_st_open(path, &s->st, &e) != SDXL_OK) {
        golden_fail(g, C, "open", "%s", e.msg);
        return -1;
    }
    golden_path(path, sizeof path, g->golden_dir, C ".json");
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long len = -1;
    if (f && !fseek(f, 0, SEEK_END) && (len = ftell(f)) >= 0 && len < (64L << 20) && !fseek(f, 0, SEEK_SET) &&
        (buf = malloc((size_t)len + 1)) && fread(buf, 1, (size_t)len, f) == (size_t)len) {
        static const char *const bad[] = {"-Infinity", "Infinity", "NaN"};
        int in_str = 0;
        for (long i = 0; i < len; i++) {
            if (buf[i] == '"' && (i == 0 || buf[i - 1] != '\\')) in_str = !in_str;
            if (in_str) continue;
            for (int k = 0; k < 3; k++) {
                size_t bl = strlen(bad[k]);
                if ((size_t)(len - i) >= bl && !memcmp(buf + i, bad[k], bl)) {
                    memset(buf + i, ' ', bl);
                    memcpy(buf + i, "null", 4);
                    i += (long)bl - 1;
                    break;
                }
            }
        }
        if (sdxl_json_parse(buf, (size_t)len, NULL, path, &s->json, &e) != SDXL_OK) golden_fail(g, C, "open", "%s", e.msg);
    } else {
        golden_fail(g, C, "open", "%s: cannot read", path);
    }
    if (f) fclose(f);
    free(buf);
    if (!s->json) {
        golden_close(s);
        return -1;
    }
    return 0;
}

int golden_schedulers(golden_ctx *g) {
    golden_set s;
    if (open_lenient(g, &s) != 0) return 1;
    const sdxl_json *tensors = sdxl_json_get(s.json, "tensors");
    const sdxl_json *variants = sdxl_json_get(s.json, "variants");
    if (!tensors || !variants || variants->type != SDXL_JSON_OBJECT) {
        golden_fail(g, C, "json", "no \"tensors\"/\"variants\" objects");
        golden_close(&s);
        return 1;
    }
    /* the training table itself */
    sdxl_train_table *tab = malloc(sizeof *tab);
    const sdxl_json *bc = sdxl_json_get(s.json, "base_config");
    sdxl_sampler_config bcfg;
    sdxl_err e = {0};
    if (tab && bc && sdxl_sched_from_diffusers("EulerDiscreteScheduler", bc, &bcfg, &e) == SDXL_OK &&
        sdxl_train_table_init(tab, bcfg.train_steps, bcfg.beta_kind, bcfg.beta_start, bcfg.beta_end, &e) == SDXL_OK) {
        size_t n = 0;
        float *ac = golden_f32(g, &s, "alphas_cumprod", NULL, NULL, &n);
        if (ac && n == (size_t)tab->n) golden_check(g, C, "alphas_cumprod", "rel", rel_elem(tab->alphas_cumprod, ac, n), 0);
        free(ac);
        float *b = golden_f32(g, &s, "betas", NULL, NULL, &n);
        if (b && n == (size_t)tab->n) golden_check(g, C, "betas", "rel", rel_elem(tab->betas, b, n), 0);
        free(b);
    } else {
        golden_fail(g, C, "base_config", "%s", e.msg);
    }
    free(tab);
    for (size_t k = 0; k < variants->len; k++) {
        const char *v = variants->keys[k];
        const sdxl_json *var = &variants->items[k];
        const char *cls = sdxl_json_str(var, "class", "");
        sdxl_sampler_config c;
        if (sdxl_sched_from_diffusers(cls, sdxl_json_get(var, "config"), &c, &e)) {
            golden_fail(g, C, v, "%s", e.msg);
            continue;
        }
        check_schedule(g, &s, v, &c, tensors, var);
        const sdxl_json *traj = sdxl_json_get(var, "trajectory");
        if (!traj) continue;
        if (c.sampler == SDXL_SAMPLER_UNIPC || c.sampler == SDXL_SAMPLER_DEIS || c.sampler == SDXL_SAMPLER_SA_SOLVER) {
            golden_fail(g, C, v, "trajectory: %s step math is not implemented", sdxl_sampler_name(c.sampler));
            continue;
        }
        check_trajectory(g, &s, v, &c, traj);
    }
    golden_close(&s);
    return 0;
}
