/* Golden component `pipelines`: whole generations against diffusers 0.26.3 pipelines, from the
 * prompts in the JSON through our text encoders, generator, sampler, UNet(s) and VAE, in f32,
 * from both checkpoint layouts. Every case of pipelines.json runs; the kind of case is read from
 * its parameters and tensors (refiner hand-off: <case>/base/ + <case>/refiner/; img2img: a
 * strength and <case>/init_image_uint8; ControlNet: a conditioning_scale and <case>/control_image_uint8,
 * run with the diffusers ControlNet folder next to the diffusers base and with an sgm single file
 * (written by golden_cn.c) next to the single-file base); LoRA: "lora": "<file>, scale <s> ...", run once
 * with that file and once with each file beside it of the same stem with another naming: kohya -> peft). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "denoise/registry.h"
#include "denoise/sampler.h"
#include "golden.h"
#include "golden_cn.h"
#include "tensor/tensor.h"
#include "pipeline/pipeline.h"

/* Thresholds (README section 6):
 * - embeddings and pooled vectors are single components: max abs 1e-4 (observed 2e-6);
 * - add_time_ids are integers and aesthetic scores: exact;
 * - initial noise is our torch-compatible generator times init_noise_sigma: 1e-5 (bit-exact
 *   noise, one f32 multiply);
 * - per-step latents and UNet outputs compound over steps and CFG x5: max abs 1e-3;
 * - final uint8 image: every value within +-1 and fewer than 1% of values differing. */
#define TH_EMB 1e-4
#define TH_NOISE 1e-5
#define TH_STEP 1e-3
#define TH_PIX_FRAC 0.01

typedef struct trace_state {
    golden_ctx *g;
    golden_set *s;
    char case_name[160];
    char pfx[2][128]; /* tensor prefix of stage 0 (base) and 1 (refiner) */
    int steps_seen[2];
    double max_step[2], max_in[2], max_out[2];
    int missing;
    float init_sigma;
    int have_noise;
    int control_calls; /* UNet calls that carried ControlNet residuals */
} trace_state;

static float *get(trace_state *t, const char *pfx, const char *name, size_t *n) {
    char key[256];
    snprintf(key, sizeof key, "%s%s", pfx, name);
    if (!golden_find(t->s, key)) return NULL;
    return golden_f32(t->g, t->s, key, NULL, NULL, n);
}

static void check_tensor(trace_state *t, const char *pfx, const char *name, const float *ours, size_t n, double th) {
    size_t m = 0;
    float *ref = get(t, pfx, name, &m);
    char metric[128];
    snprintf(metric, sizeof metric, "%s%s_maxabs", t->pfx[1][0] && pfx == t->pfx[1] ? "refiner_" : "", name);
    if (!ref) return;
    if (m != n) golden_fail(t->g, "pipelines", t->case_name, "%s%s: %zu values, ours %zu", pfx, name, m, n);
    else golden_check(t->g, "pipelines", t->case_name, metric, golden_max_abs(ours, ref, n), th);
    free(ref);
}

static void on_cond(void *user, int stage, const sdxl_cond *cd, const float *tid, int K) {
    trace_state *t = user;
    const char *p = t->pfx[stage];
    size_t ce = (size_t)(cd->n_tokens * cd->width), pe = (size_t)cd->pooled_dim;
    check_tensor(t, p, "negative_prompt_embeds", cd->context, ce, TH_EMB);
    check_tensor(t, p, "prompt_embeds", cd->context + ce, ce, TH_EMB);
    check_tensor(t, p, "negative_pooled_prompt_embeds", cd->pooled, pe, TH_EMB);
    check_tensor(t, p, "pooled_prompt_embeds", cd->pooled + pe, pe, TH_EMB);
    check_tensor(t, p, "add_time_ids", tid, (size_t)(2 * K), 0.0);
}

static void on_img2img(void *user, int image, const float *clean, const float *noise, const float *noised, size_t n) {
    trace_state *t = user;
    if (image) return;
    check_tensor(t, t->pfx[0], "init_latents_clean", clean, n, TH_EMB);
    check_tensor(t, t->pfx[0], "add_noise_noise", noise, n, 0.0);
    check_tensor(t, t->pfx[0], "init_latents_noised", noised, n, TH_NOISE * 10);
}

static void on_init(void *user, int stage, int image, const float *x, size_t n) {
    trace_state *t = user;
    if (stage || image || !t->have_noise) return;
    size_t m = 0;
    float *ref = get(t, t->pfx[0], "initial_noise", &m);
    if (!ref) return;
    if (m == n) {
        for (size_t i = 0; i < n; i++) ref[i] *= t->init_sigma;
        golden_check(t->g, "pipelines", t->case_name, "initial_latents_maxabs", golden_max_abs(x, ref, n), TH_NOISE);
    }
    free(ref);
}

static void on_unet(void *user, int stage, int call, double ts, const float *x_in, const float *out, int64_t batch,
                    size_t n_per) {
    trace_state *t = user;
    (void)ts;
    char name[64];
    size_t m = 0, n = (size_t)batch * n_per;
    snprintf(name, sizeof name, "step%d/unet_input", call);
    float *ref = get(t, t->pfx[stage], name, &m);
    if (ref && m == n) {
        double d = golden_max_abs(x_in, ref, n);
        if (!(d <= t->max_in[stage])) t->max_in[stage] = d; /* NaN sticks */
    } else if (!ref || m != n) t->missing++;
    free(ref);
    snprintf(name, sizeof name, "step%d/noise_pred_raw", call);
    ref = get(t, t->pfx[stage], name, &m);
    if (ref && m == n) {
        double d = golden_max_abs(out, ref, n);
        if (!(d <= t->max_out[stage])) t->max_out[stage] = d;
    } else t->missing++;
    free(ref);
}

/* The first call's residuals against step0/controlnet_down/i and controlnet_mid (NCHW, scaled). */
static void on_control(void *user, int call, int step, unsigned active, const sdxl_unet_in *in) {
    trace_state *t = user;
    (void)step;
    if (in->ctrl_down) t->control_calls++;
    if (call != 0) return;
    golden_check(t->g, "pipelines", t->case_name, "control_active_step0", active == 1u ? 0.0 : 1.0, 0.0);
    if (!in->ctrl_down) return;
    double worst = 0;
    for (int i = 0; i <= in->n_ctrl_down; i++) {
        char key[256];
        int nd;
        int64_t sh[8];
        size_t n;
        if (i < in->n_ctrl_down) snprintf(key, sizeof key, "%sstep0/controlnet_down/%d", t->pfx[0], i);
        else snprintf(key, sizeof key, "%sstep0/controlnet_mid", t->pfx[0]);
        if (!golden_find(t->s, key)) {
            t->missing++;
            continue;
        }
        float *ref = golden_f32(t->g, t->s, key, &nd, sh, &n);
        float *ours = ref && nd == 4 ? malloc(n * sizeof(float)) : NULL;
        if (ours) {
            sdxl_nhwc_to_nchw(i < in->n_ctrl_down ? in->ctrl_down[i] : in->ctrl_mid, ours, sh[0], sh[2], sh[3], sh[1]);
            double d = golden_max_abs(ours, ref, n);
            if (!(d <= worst)) worst = d;
        } else t->missing++;
        free(ours);
        free(ref);
    }
    /* single component (ControlNet on the recorded first-step input): README section 6 */
    golden_check(t->g, "pipelines", t->case_name, "controlnet_residuals_step0_maxabs", worst, TH_EMB);
}

static void on_step(void *user, int stage, int step, const float *x, size_t n) {
    trace_state *t = user;
    (void)step;
    char name[64];
    size_t m = 0;
    snprintf(name, sizeof name, "step%d/latents_after", t->steps_seen[stage]++);
    float *ref = get(t, t->pfx[stage], name, &m);
    if (ref && m == n) {
        double d = golden_max_abs(x, ref, n);
        if (!(d <= t->max_step[stage])) t->max_step[stage] = d;
    } else t->missing++;
    free(ref);
}

static int dims_pair(const sdxl_json *c, const char *key, int *h, int *w) {
    const sdxl_json *a = sdxl_json_get(c, key);
    if (!a || a->type != SDXL_JSON_ARRAY || a->len != 2) return 0;
    *h = (int)a->items[0].number;
    *w = (int)a->items[1].number;
    return 1;
}

static void run_case(golden_ctx *g, golden_set *s, sdxl_pl_model *m, const char *layout, const char *cname,
                     const sdxl_json *c, const char *cn_path, const sdxl_lora_spec *lora) {
    trace_state t;
    memset(&t, 0, sizeof t);
    t.g = g;
    t.s = s;
    snprintf(t.case_name, sizeof t.case_name, "%s/%s", cname, layout);
    if (lora) {
        const char *b = strrchr(lora->path, '/');
        size_t k = strlen(t.case_name);
        snprintf(t.case_name + k, sizeof t.case_name - k, "/%s", b ? b + 1 : lora->path);
    }
    char key[256];
    snprintf(key, sizeof key, "%s/base/prompt_embeds", cname);
    int handoff = golden_find(s, key) != NULL;
    if (handoff) {
        snprintf(t.pfx[0], sizeof t.pfx[0], "%s/base/", cname);
        snprintf(t.pfx[1], sizeof t.pfx[1], "%s/refiner/", cname);
    } else {
        snprintf(t.pfx[0], sizeof t.pfx[0], "%s/", cname);
    }
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    if (lora) {
        p.loras = lora;
        p.n_loras = 1;
    }
    const sdxl_json *neg = sdxl_json_get(c, "negative_prompt");
    p.prompt = sdxl_json_str(c, "prompt", "");
    p.negative_prompt = neg && neg->type == SDXL_JSON_STRING ? neg->str : NULL;
    p.steps = (int)sdxl_json_i64(c, "num_inference_steps", sdxl_json_i64(c, "steps", 0));
    p.cfg_scale = (float)sdxl_json_num(c, "guidance_scale", 5.0);
    p.seed = sdxl_json_i64(c, "seed", sdxl_json_i64(c, "base_seed", 0));
    /* "scheduler": a diffusers class name, optionally followed by " (note)"; absent means the
     * SDXL default, EulerDiscreteScheduler. Any dialect the registry knows is accepted. */
    char sched[128] = "EulerDiscreteScheduler";
    const char *sj = sdxl_json_str(c, "scheduler", NULL);
    if (sj) {
        size_t k = strcspn(sj, " (");
        if (k == 0 || k >= sizeof sched) {
            golden_fail(g, "pipelines", t.case_name, "unreadable scheduler \"%s\"", sj);
            return;
        }
        memcpy(sched, sj, k);
        sched[k] = 0;
    }
    p.sampler = sched;
    p.height = (int)sdxl_json_i64(c, "height", 0);
    p.width = (int)sdxl_json_i64(c, "width", 0);
    dims_pair(c, "original_size", &p.original_height, &p.original_width);
    dims_pair(c, "crops_coords_top_left", &p.crop_top, &p.crop_left);
    dims_pair(c, "target_size", &p.target_height, &p.target_width);
    p.refiner_switch = handoff ? (float)sdxl_json_num(c, "denoising_end", 0.8) : 1.0f;
    p.aesthetic_score = (float)sdxl_json_num(c, "aesthetic_score", 6.0);
    p.negative_aesthetic_score = (float)sdxl_json_num(c, "negative_aesthetic_score", 2.5);
    uint8_t *init = NULL;
    snprintf(key, sizeof key, "%s/init_image_uint8", cname);
    const sdxl_st_tensor *it = golden_find(s, key);
    if (it) {
        size_t n = 0;
        int64_t shape[8];
        int nd = 0;
        float *f = golden_f32(g, s, key, &nd, shape, &n);
        if (!f || nd != 3 || shape[2] != 3) {
            free(f);
            golden_fail(g, "pipelines", t.case_name, "%s: expected [H, W, 3]", key);
            return;
        }
        init = malloc(n);
        for (size_t i = 0; i < n; i++) init[i] = (uint8_t)f[i];
        free(f);
        p.init_image = init;
        p.init_height = (int)shape[0];
        p.init_width = (int)shape[1];
        p.strength = (float)sdxl_json_num(c, "strength", 0.75);
    }
    /* ControlNet: the recorded control image at the conditioning scale, guidance 0..1 */
    uint8_t *cimg = NULL;
    sdxl_control_spec cs;
    memset(&cs, 0, sizeof cs);
    snprintf(key, sizeof key, "%s/control_image_uint8", cname);
    if (golden_find(s, key) || sdxl_json_get(c, "conditioning_scale")) {
        size_t n = 0;
        int64_t shape[8];
        int nd = 0;
        float *f = golden_find(s, key) ? golden_f32(g, s, key, &nd, shape, &n) : NULL;
        if (!f || nd != 3 || shape[2] != 3 || !cn_path) {
            free(f);
            free(init);
            golden_fail(g, "pipelines", t.case_name, "%s: expected [H, W, 3] and a ControlNet", key);
            return;
        }
        cimg = malloc(n);
        for (size_t i = 0; i < n; i++) cimg[i] = (uint8_t)f[i];
        free(f);
        cs.model = cn_path;
        cs.image = cimg;
        cs.image_height = (int)shape[0];
        cs.image_width = (int)shape[1];
        cs.scale = (float)sdxl_json_num(c, "conditioning_scale", 1.0);
        cs.guidance_start = (float)sdxl_json_num(c, "control_guidance_start", 0.0);
        cs.guidance_end = (float)sdxl_json_num(c, "control_guidance_end", 1.0);
        cs.guess_mode = sdxl_json_bool(c, "guess_mode", 0);
        p.controls = &cs;
        p.n_controls = 1;
    }
    /* init_noise_sigma of the case's schedule, to compare the recorded unscaled noise */
    sdxl_sampler_config sc;
    sdxl_sampler_config_init(&sc);
    sc.steps = p.steps;
    sdxl_sampler *probe = NULL;
    sdxl_err e = {0};
    sdxl_sched_choice ch;
    if (sdxl_sched_resolve(sched, NULL, &ch, &e) != SDXL_OK) {
        golden_fail(g, "pipelines", t.case_name, "scheduler: %s", e.msg);
        free(init);
        free(cimg);
        return;
    }
    sc.sampler = ch.sampler;
    sc.schedule = ch.schedule;
    sc.diffusers_karras = ch.diffusers_karras;
    if (p.steps > 0 && sdxl_sampler_new(&sc, 1, &probe, &e) == SDXL_OK) {
        t.init_sigma = sdxl_sampler_init_noise_sigma(probe);
        t.have_noise = 1;
    }
    sdxl_sampler_free(probe);
    sdxl_pl_trace tr = {.user = &t, .cond = on_cond, .img2img = on_img2img, .init = on_init, .unet = on_unet,
                        .step = on_step, .control = on_control};
    sdxl_pl_result r;
    int st = sdxl_pl_generate(m, &p, NULL, &tr, NULL, &r, &e);
    free(init);
    free(cimg);
    if (!st && p.n_controls)
        golden_check(g, "pipelines", t.case_name, "control_calls_missing", (double)(t.steps_seen[0] - t.control_calls), 0.0);
    if (st) {
        golden_fail(g, "pipelines", t.case_name, "generate: %s", e.msg);
        return;
    }
    for (int k = 0; k < 1 + handoff; k++) {
        const char *sfx = k ? "refiner_" : "";
        char metric[64];
        snprintf(metric, sizeof metric, "%sunet_input_maxabs", sfx);
        golden_check(g, "pipelines", t.case_name, metric, t.max_in[k], TH_STEP);
        snprintf(metric, sizeof metric, "%snoise_pred_maxabs", sfx);
        golden_check(g, "pipelines", t.case_name, metric, t.max_out[k], TH_STEP);
        snprintf(metric, sizeof metric, "%sstep_latents_maxabs", sfx);
        golden_check(g, "pipelines", t.case_name, metric, t.max_step[k], TH_STEP);
        snprintf(metric, sizeof metric, "%sunet_calls", sfx);
        char ck[256];
        snprintf(ck, sizeof ck, "%sstep%d/unet_input", t.pfx[k], t.steps_seen[k]);
        /* the recorded run made exactly as many calls as we did: no step<k> beyond ours */
        golden_check(g, "pipelines", t.case_name, metric, golden_find(s, ck) ? 1.0 : 0.0, 0.0);
    }
    golden_check(g, "pipelines", t.case_name, "missing_step_tensors", (double)t.missing, 0.0);
    size_t n = 0;
    float *ref = get(&t, t.pfx[handoff], "image_uint8", &n);
    if (!ref) {
        golden_fail(g, "pipelines", t.case_name, "%simage_uint8 missing", t.pfx[handoff]);
    } else if (r.n != 1 || (size_t)r.img[0].width * (size_t)r.img[0].height * 3 != n) {
        golden_fail(g, "pipelines", t.case_name, "image: %d images of %dx%d, reference has %zu values", r.n,
                    r.n ? r.img[0].width : 0, r.n ? r.img[0].height : 0, n);
    } else {
        double maxd = 0;
        size_t diff = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)r.img[0].rgb[i] - ref[i]);
            if (d > maxd) maxd = d;
            diff += d > 0;
        }
        golden_check(g, "pipelines", t.case_name, "image_uint8_maxdiff", maxd, 1.0);
        golden_check(g, "pipelines", t.case_name, "image_uint8_frac_differ", (double)diff / (double)n, TH_PIX_FRAC);
    }
    free(ref);
    sdxl_pl_result_free(&r);
}

int golden_pipelines(golden_ctx *g) {
    golden_set s;
    if (golden_open(g, "pipelines", &s)) return 0;
    const sdxl_json *cases = sdxl_json_get(s.json, "cases");
    if (!cases || cases->type != SDXL_JSON_OBJECT) {
        golden_fail(g, "pipelines", "json", "no \"cases\" object");
        golden_close(&s);
        return 0;
    }
    static const struct { const char *layout, *base, *refiner; } LAYOUTS[] = {
        {"single-file", "tiny_sd_xl_base.safetensors", "tiny_sd_xl_refiner.safetensors"},
        {"diffusers", "tiny-sdxl-base", "tiny-sdxl-refiner"},
    };
    char dir[64] = "/tmp/sdxl-golden-pl-XXXXXX", sgm[4200] = "", cnd[4096];
    golden_path(cnd, sizeof cnd, g->models_dir, "tiny-sdxl-controlnet");
    if (mkdtemp(dir)) {
        sdxl_err e = {0};
        snprintf(sgm, sizeof sgm, "%s/tiny_sdxl_controlnet.safetensors", dir);
        if (golden_cn_write_sgm(cnd, sgm, "control_model.", &e)) {
            golden_fail(g, "pipelines", "controlnet", "sgm file: %s", e.msg);
            sgm[0] = 0;
        }
    }
    for (size_t l = 0; l < sizeof LAYOUTS / sizeof LAYOUTS[0]; l++) {
        char base[4096], ref[4096];
        golden_path(base, sizeof base, g->models_dir, LAYOUTS[l].base);
        golden_path(ref, sizeof ref, g->models_dir, LAYOUTS[l].refiner);
        sdxl_model_params mp;
        sdxl_model_params_init(&mp);
        mp.base = base;
        mp.refiner = ref;
        mp.precision = "f32";
        mp.device = g->device;
        sdxl_pl_model *m = NULL;
        sdxl_err e = {0};
        if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
            golden_fail(g, "pipelines", LAYOUTS[l].layout, "load: %s", e.msg);
            continue;
        }
        for (size_t i = 0; i < cases->len; i++) {
            const char *cname = cases->keys[i];
            const sdxl_json *c = &cases->items[i];
            const sdxl_json *lora = sdxl_json_get(c, "lora");
            if (lora && lora->type == SDXL_JSON_STRING) {
                /* "<file>, scale <s> (...)": the UNet and the text encoders at the same scale */
                char file[256], path[2][4096];
                size_t k = strcspn(lora->str, ",");
                const char *sc = strstr(lora->str, "scale ");
                if (k == 0 || k >= sizeof file || !sc) {
                    golden_fail(g, "pipelines", cname, "unreadable \"lora\": %s", lora->str);
                    continue;
                }
                memcpy(file, lora->str, k);
                file[k] = 0;
                float w = (float)strtod(sc + 6, NULL);
                golden_path(path[0], sizeof path[0], g->models_dir, file);
                int np = 1;
                char *kh = strstr(file, "kohya");
                if (kh) {
                    char other[300];
                    snprintf(other, sizeof other, "%.*speft%s", (int)(kh - file), file, kh + 5);
                    golden_path(path[1], sizeof path[1], g->models_dir, other);
                    FILE *fp = fopen(path[1], "rb");
                    if (fp) {
                        fclose(fp);
                        np = 2;
                    }
                }
                for (int j = 0; j < np; j++) {
                    sdxl_lora_spec spec = {path[j], w, w, NULL};
                    run_case(g, &s, m, LAYOUTS[l].layout, cname, c, NULL, &spec);
                }
                continue;
            }
            if (lora && lora->type != SDXL_JSON_NULL) {
                golden_fail(g, "pipelines", cname, "\"lora\" must be a string");
                continue;
            }
            run_case(g, &s, m, LAYOUTS[l].layout, cname, c, l == 0 ? (sgm[0] ? sgm : NULL) : cnd, NULL);
        }
        sdxl_pl_model_free(m);
    }
    if (sgm[0]) golden_cn_remove_sgm(sgm);
    rmdir(dir);
    golden_close(&s);
    return 0;
}
