/* denoise/registry + schedules: >= 60 names across dialects resolve to their canonical pair,
 * unknown names fail with suggestions, named schedules follow their published definitions,
 * validation names the field, and the sigma cache hits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "denoise/registry.h"

#define K(x) SDXL_SAMPLER_##x
#define SC(x) SDXL_SCHEDULE_##x

static const struct {
    const char *name, *schedule;
    sdxl_sampler_kind k;
    sdxl_schedule_kind s;
} CASES[] = {
    {"Euler", NULL, K(EULER), SC(DEFAULT)}, {"Euler a", NULL, K(EULER_A), SC(DEFAULT)},
    {"euler_ancestral", NULL, K(EULER_A), SC(DEFAULT)}, {"k_euler_a", NULL, K(EULER_A), SC(DEFAULT)},
    {"k_euler", NULL, K(EULER), SC(DEFAULT)}, {"EULER-A", NULL, K(EULER_A), SC(DEFAULT)},
    {"Heun", NULL, K(HEUN), SC(DEFAULT)}, {"k_heun", NULL, K(HEUN), SC(DEFAULT)},
    {"DPM2", NULL, K(DPM2), SC(DEFAULT)}, {"dpm_2", NULL, K(DPM2), SC(DEFAULT)},
    {"DPM2 a", NULL, K(DPM2_A), SC(DEFAULT)}, {"dpm_2_ancestral", NULL, K(DPM2_A), SC(DEFAULT)},
    {"k_dpm_2_a", NULL, K(DPM2_A), SC(DEFAULT)}, {"LMS", NULL, K(LMS), SC(DEFAULT)},
    {"k_lms", NULL, K(LMS), SC(DEFAULT)}, {"LMS Karras", NULL, K(LMS), SC(KARRAS)},
    {"DDIM", NULL, K(DDIM), SC(DEFAULT)}, {"PLMS", NULL, K(PNDM), SC(DEFAULT)},
    {"DPM++ 2M", NULL, K(DPMPP_2M), SC(DEFAULT)}, {"DPM++ 2M", "Karras", K(DPMPP_2M), SC(KARRAS)},
    {"DPM++ 2M Karras", NULL, K(DPMPP_2M), SC(KARRAS)}, {"dpmpp_2m", "karras", K(DPMPP_2M), SC(KARRAS)},
    {"k_dpmpp_2m", NULL, K(DPMPP_2M), SC(DEFAULT)}, {"dpm++2m", NULL, K(DPMPP_2M), SC(DEFAULT)},
    {"dpm++2mv2", NULL, K(DPMPP_2M), SC(DEFAULT)}, {"DPM++ 2M SDE", NULL, K(DPMPP_2M_SDE), SC(DEFAULT)},
    {"DPM++ 2M SDE Karras", NULL, K(DPMPP_2M_SDE), SC(KARRAS)},
    {"DPM++ 2M SDE Exponential", NULL, K(DPMPP_2M_SDE), SC(EXPONENTIAL)},
    {"dpmpp_2m_sde_gpu", "karras", K(DPMPP_2M_SDE), SC(KARRAS)}, {"k_dpmpp_2m_sde", NULL, K(DPMPP_2M_SDE), SC(DEFAULT)},
    {"DPM++ SDE", NULL, K(DPMPP_SDE), SC(DEFAULT)}, {"DPM++ SDE Karras", NULL, K(DPMPP_SDE), SC(KARRAS)},
    {"dpmpp_sde_gpu", NULL, K(DPMPP_SDE), SC(DEFAULT)}, {"k_dpmpp_sde", NULL, K(DPMPP_SDE), SC(DEFAULT)},
    {"Euler a", "Automatic", K(EULER_A), SC(DEFAULT)}, {"Euler", "Uniform", K(EULER), SC(NORMAL)},
    {"euler", "normal", K(EULER), SC(NORMAL)}, {"euler", "sgm_uniform", K(EULER), SC(SGM_UNIFORM)},
    {"Euler", "SGM Uniform", K(EULER), SC(SGM_UNIFORM)}, {"euler", "simple", K(EULER), SC(SIMPLE)},
    {"euler", "ddim_uniform", K(EULER), SC(DDIM_UNIFORM)}, {"euler", "beta", K(EULER), SC(BETA)},
    {"Euler", "Align Your Steps", K(EULER), SC(AYS)}, {"euler", "exponential", K(EULER), SC(EXPONENTIAL)},
    {"lcm", NULL, K(LCM), SC(DEFAULT)}, {"LCM", NULL, K(LCM), SC(DEFAULT)}, {"uni_pc", NULL, K(UNIPC), SC(DEFAULT)},
    {"uni_pc_bh2", NULL, K(UNIPC), SC(DEFAULT)}, {"deis", NULL, K(DEIS), SC(DEFAULT)},
    {"EulerDiscreteScheduler", NULL, K(EULER), SC(DEFAULT)},
    {"EulerAncestralDiscreteScheduler", NULL, K(EULER_A), SC(DEFAULT)},
    {"HeunDiscreteScheduler", NULL, K(HEUN), SC(DEFAULT)}, {"KDPM2DiscreteScheduler", NULL, K(DPM2), SC(DEFAULT)},
    {"KDPM2AncestralDiscreteScheduler", NULL, K(DPM2_A), SC(DEFAULT)},
    {"LMSDiscreteScheduler", NULL, K(LMS), SC(DEFAULT)}, {"DDIMScheduler", NULL, K(DDIM), SC(DEFAULT)},
    {"DDPMScheduler", NULL, K(DDPM), SC(DEFAULT)}, {"PNDMScheduler", NULL, K(PNDM), SC(DEFAULT)},
    {"DPMSolverMultistepScheduler", NULL, K(DPMPP_2M), SC(DEFAULT)},
    {"DPMSolverMultistepScheduler", "use_karras_sigmas", K(DPMPP_2M), SC(KARRAS)},
    {"DPMSolverMultistepScheduler(algorithm_type=sde-dpmsolver++, use_karras_sigmas=True)", NULL, K(DPMPP_2M_SDE),
     SC(KARRAS)},
    {"DPMSolverSinglestepScheduler", NULL, K(DPMPP_2S), SC(DEFAULT)},
    {"DPMSolverSDEScheduler", NULL, K(DPMPP_SDE), SC(DEFAULT)}, {"LCMScheduler", NULL, K(LCM), SC(DEFAULT)},
    {"UniPCMultistepScheduler", NULL, K(UNIPC), SC(DEFAULT)}, {"SASolverScheduler", NULL, K(SA_SOLVER), SC(DEFAULT)},
    {"euler_a", NULL, K(EULER_A), SC(DEFAULT)}, {"Euler a Karras", NULL, K(EULER_A), SC(KARRAS)},
    {"  dpm++ 2m   karras ", NULL, K(DPMPP_2M), SC(KARRAS)}, {"DPM2 a Karras", NULL, K(DPM2_A), SC(KARRAS)},
    {"DPM++ 2S a", NULL, K(DPMPP_2S_A), SC(DEFAULT)}, {"DPM++ 2S a Karras", NULL, K(DPMPP_2S_A), SC(KARRAS)},
    {"k_dpmpp_2s_a", NULL, K(DPMPP_2S_A), SC(DEFAULT)}, {"dpmpp_2s_ancestral", "karras", K(DPMPP_2S_A), SC(KARRAS)},
    {"dpm++2s_a", NULL, K(DPMPP_2S_A), SC(DEFAULT)}, {"DPM++ 3M SDE", NULL, K(DPMPP_3M_SDE), SC(DEFAULT)},
    {"DPM++ 3M SDE Karras", NULL, K(DPMPP_3M_SDE), SC(KARRAS)},
    {"DPM++ 3M SDE", "Exponential", K(DPMPP_3M_SDE), SC(EXPONENTIAL)},
    {"dpmpp_3m_sde_gpu", NULL, K(DPMPP_3M_SDE), SC(DEFAULT)}, {"k_dpmpp_3m_sde", NULL, K(DPMPP_3M_SDE), SC(DEFAULT)},
    {"DEISMultistepScheduler", NULL, K(DEIS), SC(DEFAULT)}, {"sa_solver", NULL, K(SA_SOLVER), SC(DEFAULT)},
};

static void test_names(void) {
    int n = (int)(sizeof CASES / sizeof CASES[0]);
    CHECK(n >= 60, "table covers %d names", n);
    for (int i = 0; i < n; i++) {
        sdxl_sched_choice c;
        sdxl_err e = {0};
        int r = sdxl_sched_resolve(CASES[i].name, CASES[i].schedule, &c, &e);
        CHECK(r == SDXL_OK && c.sampler == CASES[i].k && c.schedule == CASES[i].s, "'%s' + '%s': got %s/%s (%s)",
              CASES[i].name, CASES[i].schedule ? CASES[i].schedule : "", sdxl_sampler_name(c.sampler),
              sdxl_schedule_name(c.schedule), e.msg);
    }
    for (size_t i = 0; i < sdxl_sched_alias_count(); i++) {
        const sdxl_sched_alias *a = sdxl_sched_alias_at(i);
        sdxl_sched_choice c;
        CHECK(sdxl_sched_resolve(a->name, NULL, &c, NULL) == SDXL_OK && c.sampler == a->sampler, "alias '%s'", a->name);
    }
    sdxl_sched_choice c;
    sdxl_err e = {0};
    CHECK(sdxl_sched_resolve("DPM++ 2N Karas", NULL, &c, &e) == SDXL_ERR_ARG && strstr(e.msg, "closest") &&
              strstr(e.msg, "DPM++ 2M"),
          "unknown name suggests: %s", e.msg);
    CHECK(sdxl_sched_resolve("euler", "karas", &c, &e) == SDXL_ERR_ARG && strstr(e.msg, "schedule"), "bad schedule: %s",
          e.msg);
    CHECK(sdxl_sched_resolve("", NULL, &c, &e) == SDXL_ERR_ARG, "empty name");
    /* names other tools use for samplers we do not implement say so, with alternatives */
    static const char *const unsupported[] = {"Euler CFG++", "seeds_2", "TCDScheduler", "res_multistep_cfg_pp"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
        CHECK(sdxl_sched_resolve(unsupported[i], NULL, &c, &e) == SDXL_ERR_UNSUPPORTED &&
                  strstr(e.msg, "not supported") && strstr(e.msg, "closest"),
              "'%s': %s", unsupported[i], e.msg);
    /* A1111's Restart and DDIM CFG++ and ComfyUI's ipndm_v under every name those tools use */
    static const struct { const char *name; sdxl_sampler_kind k; sdxl_schedule_kind sch; } added[] = {
        {"Restart", SDXL_SAMPLER_RESTART, SDXL_SCHEDULE_DEFAULT}, {"restart", SDXL_SAMPLER_RESTART, SDXL_SCHEDULE_DEFAULT},
        {"Restart Karras", SDXL_SAMPLER_RESTART, SDXL_SCHEDULE_KARRAS},
        {"DDIM CFG++", SDXL_SAMPLER_DDIM_CFGPP, SDXL_SCHEDULE_DEFAULT},
        {"ddim_cfgpp", SDXL_SAMPLER_DDIM_CFGPP, SDXL_SCHEDULE_DEFAULT},
        {"ipndm_v", SDXL_SAMPLER_IPNDM_V, SDXL_SCHEDULE_DEFAULT}, {"iPNDM_v", SDXL_SAMPLER_IPNDM_V, SDXL_SCHEDULE_DEFAULT},
    };
    for (size_t i = 0; i < sizeof added / sizeof added[0]; i++)
        CHECK(sdxl_sched_resolve(added[i].name, NULL, &c, &e) == SDXL_OK && c.sampler == added[i].k &&
                  c.schedule == added[i].sch && c.kdiffusion && sdxl_sampler_traits_get(c.sampler)->implemented,
              "'%s': %s", added[i].name, e.msg);
    /* the dialect decides the path: A1111/ComfyUI/k-diffusion names run k-diffusion's loops,
     * diffusers class names diffusers' schedulers */
    static const struct { const char *name; sdxl_sampler_kind k; int kd; } paths[] = {
        {"DPM fast", SDXL_SAMPLER_DPM_FAST, 1}, {"k_dpm_ad", SDXL_SAMPLER_DPM_ADAPTIVE, 1},
        {"dpm_adaptive", SDXL_SAMPLER_DPM_ADAPTIVE, 1}, {"DPM++ 2M SDE Heun Karras", SDXL_SAMPLER_DPMPP_2M_SDE_HEUN, 1},
        {"DPM++ 2M", SDXL_SAMPLER_DPMPP_2M, 1}, {"Euler", SDXL_SAMPLER_EULER, 1}, {"euler_ancestral", SDXL_SAMPLER_EULER_A, 1},
        {"EulerDiscreteScheduler", SDXL_SAMPLER_EULER, 0}, {"DPMSolverMultistepScheduler", SDXL_SAMPLER_DPMPP_2M, 0},
        {"DDIM", SDXL_SAMPLER_DDIM, 0}, {"UniPC", SDXL_SAMPLER_UNIPC, 0},
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        CHECK(sdxl_sched_resolve(paths[i].name, NULL, &c, &e) == SDXL_OK && c.sampler == paths[i].k &&
                  c.kdiffusion == paths[i].kd,
              "'%s' -> sampler %d kdiffusion %d", paths[i].name, (int)c.sampler, c.kdiffusion);
    CHECK(sdxl_sched_resolve("DPM++ 2M", "use_karras_sigmas", &c, &e) == SDXL_OK && !c.kdiffusion,
          "use_karras_sigmas is diffusers' rule");
    CHECK(sdxl_sched_resolve("EDMEulerScheduler(use_karras_sigmas=true)", NULL, &c, &e) == SDXL_ERR_UNSUPPORTED,
          "inline unsupported class: %s", e.msg);
    /* every sampler has traits with a name and is implemented */
    for (int k = 0; k < SDXL_SAMPLER_COUNT; k++) {
        const sdxl_sampler_traits *tr = sdxl_sampler_traits_get((sdxl_sampler_kind)k);
        CHECK(tr->kind == (sdxl_sampler_kind)k && tr->name && !strcmp(tr->name, sdxl_sampler_name((sdxl_sampler_kind)k)) &&
                  tr->implemented,
              "traits of %s", sdxl_sampler_name((sdxl_sampler_kind)k));
    }
}

/* diffusers configs we cannot run exactly are refused by field. */
static void test_diffusers_configs(void) {
    static const struct {
        const char *cls, *json, *field;
    } BAD[] = {
        {"UniPCMultistepScheduler", "{\"solver_type\": \"bh1\"}", "solver_type"},
        {"UniPCMultistepScheduler", "{\"solver_order\": 3}", "solver_order"},
        {"UniPCMultistepScheduler", "{\"predict_x0\": false}", "predict_x0"},
        {"UniPCMultistepScheduler", "{\"disable_corrector\": [0]}", "disable_corrector"},
        {"DEISMultistepScheduler", "{\"solver_order\": 3}", "solver_order"},
        {"DEISMultistepScheduler", "{\"algorithm_type\": \"dpmsolver++\"}", "algorithm_type"},
        {"SASolverScheduler", "{\"predictor_order\": 3}", "predictor_order"},
        {"SASolverScheduler", "{\"algorithm_type\": \"noise_prediction\"}", "algorithm_type"},
        {"SASolverScheduler", "{\"lambda_min_clipped\": -5.1}", "lambda_min_clipped"},
        {"SASolverScheduler", "{\"thresholding\": true}", "thresholding"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        sdxl_json *j = NULL;
        sdxl_sampler_config c;
        sdxl_err e = {0};
        int r = sdxl_json_parse(BAD[i].json, strlen(BAD[i].json), NULL, "test", &j, &e);
        if (r == SDXL_OK) r = sdxl_sched_from_diffusers(BAD[i].cls, j, &c, &e);
        CHECK(r == SDXL_ERR_UNSUPPORTED && strstr(e.msg, BAD[i].field), "%s %s: %s", BAD[i].cls, BAD[i].json, e.msg);
        sdxl_json_free(j);
    }
    const char *ok = "{\"solver_order\": 2, \"solver_type\": \"bh2\", \"lambda_min_clipped\": null}";
    sdxl_json *j = NULL;
    sdxl_sampler_config c;
    sdxl_err e = {0};
    CHECK(sdxl_json_parse(ok, strlen(ok), NULL, "test", &j, &e) == SDXL_OK &&
              sdxl_sched_from_diffusers("UniPCMultistepScheduler", j, &c, &e) == SDXL_OK && c.sampler == K(UNIPC),
          "default UniPC config: %s", e.msg);
    sdxl_json_free(j);
}

static void test_schedules(void) {
    sdxl_train_table *t = malloc(sizeof *t);
    CHECK(t && sdxl_train_table_init(t, 1000, SDXL_BETA_SCALED_LINEAR, 0.00085, 0.012, NULL) == SDXL_OK, "table");
    if (!t) return;
    double s[64];
    int n;
    double smin = t->sigmas[0], smax = t->sigmas[999];
    /* karras: (max^(1/7) + i/(n-1) (min^(1/7) - max^(1/7)))^7, then 0 */
    CHECK(sdxl_schedule_sigmas(t, SDXL_SCHEDULE_KARRAS, 10, NULL, s, 64, &n, NULL) == SDXL_OK && n == 11, "karras n");
    for (int i = 0; i < 10; i++) {
        double want = pow(pow(smax, 1 / 7.0) + i / 9.0 * (pow(smin, 1 / 7.0) - pow(smax, 1 / 7.0)), 7);
        CHECK(fabs(s[i] - want) <= 1e-12 * want, "karras[%d] %.17g vs %.17g", i, s[i], want);
    }
    CHECK(s[10] == 0, "karras ends at 0");
    /* exponential: geometric from max to min */
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_EXPONENTIAL, 5, NULL, s, 64, &n, NULL);
    for (int i = 0; i < 5; i++) {
        double want = exp(log(smax) + i / 4.0 * (log(smin) - log(smax)));
        CHECK(fabs(s[i] - want) <= 1e-12 * want, "exponential[%d]", i);
    }
    /* normal: t = linspace(999, 0, n), sigma by log interpolation; endpoints are table values */
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_NORMAL, 4, NULL, s, 64, &n, NULL);
    CHECK(n == 5 && fabs(s[0] - smax) < 1e-6 * smax && fabs(s[3] - smin) < 1e-6 && s[4] == 0, "normal endpoints");
    double t1 = 999 - 333.0, w = t1 - floor(t1);
    double want = exp((1 - w) * t->log_sigmas[(int)floor(t1)] + w * t->log_sigmas[(int)ceil(t1)]);
    CHECK(fabs(s[1] - want) < 1e-9 * want, "normal[1] log-interp");
    /* sgm_uniform: linspace(999, 0, n+1)[:-1] */
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_SGM_UNIFORM, 4, NULL, s, 64, &n, NULL);
    CHECK(n == 5 && fabs(s[0] - smax) < 1e-6 * smax && fabs(s[2] - sdxl_t_to_sigma_log(t, 999 - 2 * 999 / 4.0)) < 1e-9,
          "sgm_uniform");
    /* simple: sigmas[-(1 + int(i * 1000/n))] */
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_SIMPLE, 3, NULL, s, 64, &n, NULL);
    CHECK(n == 4 && s[0] == t->sigmas[999] && s[1] == t->sigmas[999 - 333] && s[2] == t->sigmas[999 - 666], "simple");
    /* ddim_uniform: indices 1, 1+ss, ... reversed, then 0 */
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_DDIM_UNIFORM, 10, NULL, s, 64, &n, NULL);
    CHECK(n == 11 && s[0] == t->sigmas[901] && s[9] == t->sigmas[1] && s[10] == 0, "ddim_uniform n=%d", n);
    /* beta(0.6, 0.6): t_i = rint(ppf(1 - i/n) * 999); first is 999, and the symmetric
     * distribution puts ppf(2/3) and ppf(1/3) at mirrored timesteps */
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_BETA, 3, NULL, s, 64, &n, NULL);
    int i1 = -1, i2 = -1;
    for (int k = 0; k < 1000; k++) {
        if (t->sigmas[k] == s[1]) i1 = k;
        if (t->sigmas[k] == s[2]) i2 = k;
    }
    CHECK(n == 4 && s[0] == t->sigmas[999] && i1 > 500 && i1 + i2 == 999, "beta: %d %d", i1, i2);
    CHECK(fabs(sdxl_betainc(0.6, 0.6, 0.5) - 0.5) < 1e-12 && fabs(sdxl_betainc(1, 1, 0.3) - 0.3) < 1e-12 &&
              fabs(sdxl_betainc_inv(2, 3, sdxl_betainc(2, 3, 0.37)) - 0.37) < 1e-10,
          "incomplete beta");
    /* align_your_steps: 10 steps are the published SDXL levels */
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_AYS, 10, NULL, s, 64, &n, NULL);
    CHECK(n == 11 && fabs(s[0] - 14.6146412293) < 1e-9 && fabs(s[9] - 0.1114188177) < 1e-9 && s[10] == 0, "ays 10");
    sdxl_schedule_sigmas(t, SDXL_SCHEDULE_AYS, 20, NULL, s, 64, &n, NULL);
    CHECK(n == 21 && fabs(s[0] - 14.6146412293) < 1e-9 && fabs(s[2] - 6.3184485435) < 1e-9, "ays 20 keeps knots");
    /* sigma <-> t round trip */
    CHECK(fabs(sdxl_sigma_to_t(t, sdxl_t_to_sigma_log(t, 411.25)) - 411.25) < 1e-6, "sigma_to_t inverse");
    free(t);
}

static void test_validation_and_cache(void) {
    sdxl_sampler_config c;
    sdxl_err e = {0};
    sdxl_sampler_config_init(&c);
    c.steps = 0;
    CHECK(sdxl_sampler_config_check(&c, &e) && strstr(e.msg, "steps"), "steps: %s", e.msg);
    sdxl_sampler_config_init(&c);
    c.eta = -1;
    CHECK(sdxl_sampler_config_check(&c, &e) && strstr(e.msg, "eta"), "eta: %s", e.msg);
    sdxl_sampler_config_init(&c);
    c.sched.rho = 0;
    CHECK(sdxl_sampler_config_check(&c, &e) && strstr(e.msg, "rho"), "rho: %s", e.msg);
    sdxl_sampler_config_init(&c);
    c.sampler = SDXL_SAMPLER_DDIM;
    c.schedule = SDXL_SCHEDULE_KARRAS;
    CHECK(sdxl_sampler_config_check(&c, &e) == SDXL_ERR_UNSUPPORTED && strstr(e.msg, "schedule"), "ddim+karras: %s",
          e.msg);
    sdxl_sigma_cache *cache;
    CHECK(sdxl_sigma_cache_new(2, &cache, NULL) == SDXL_OK, "cache");
    const float *sg, *ts;
    int ns, nt, hits, misses;
    sdxl_sampler_config_init(&c);
    c.steps = 8;
    sdxl_sigma_cache_get(cache, &c, &sg, &ns, &ts, &nt, NULL);
    CHECK(ns == 9 && nt == 8 && ts[0] == 876 && ts[7] == 1, "euler 8 steps: [876..1], got %g..%g", ts[0], ts[nt - 1]);
    sdxl_sigma_cache_get(cache, &c, &sg, &ns, &ts, &nt, NULL);
    c.steps = 9;
    sdxl_sigma_cache_get(cache, &c, &sg, &ns, &ts, &nt, NULL);
    sdxl_sigma_cache_stats(cache, &hits, &misses);
    CHECK(hits == 1 && misses == 2, "cache hits %d misses %d", hits, misses);
    sdxl_sigma_cache_free(cache);
    sdxl_recommendation r;
    for (int u = 0; u < SDXL_USE_COUNT; u++) {
        sdxl_recommend((sdxl_use_case)u, &r);
        CHECK(r.steps > 0 && r.why && strlen(r.why) > 20 && sdxl_sampler_traits_get(r.choice.sampler)->implemented,
              "recommendation %d", u);
    }
}

int main(void) {
    test_names();
    test_diffusers_configs();
    test_schedules();
    test_validation_and_cache();
    return check_done();
}
