/* Image metadata of a request: the A1111 infotext (through io/genmeta) and our JSON request,
 * which keeps the caller's own sampler/schedule strings so that reading it back reproduces the
 * request exactly. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise/registry.h"
#include "io/genmeta.h"
#include "io/json.h"
#include "io/strbuf.h"
#include "adapters/preprocess.h"
#include "pipeline/control.h"
#include "pipeline/pipeline.h"

static const char *const RESIZE_A1111[3] = {"Just Resize", "Crop and Resize", "Resize and Fill"};
static const char *const RESIZE_KEY[3] = {"just", "crop", "fill"};

/* File stem of a ControlNet path, as A1111's extension names its model. */
static void model_stem(const char *path, char *out, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    size_t len = n - b;
    const char *ext = ".safetensors";
    if (len > strlen(ext) && !strncmp(path + n - strlen(ext), ext, strlen(ext))) len -= strlen(ext);
    if (len >= cap) len = cap - 1;
    memcpy(out, path + b, len);
    out[len] = 0;
}

/* ControlNet units the way A1111's ControlNet extension writes them: ControlNet i: "Module: ..., ...". */
static int control_infotext(sdxl_genmeta *g, const sdxl_gen_params *p, sdxl_err *e) {
    for (int i = 0; i < p->n_controls; i++) {
        const sdxl_control_spec *s = &p->controls[i];
        sdxl_preprocess pp;
        if (sdxl_preprocess_parse(s->preprocess, &pp, e)) return sdxl_err_prefix(e, "controls[%d]", i);
        char stem[256], v[1024], key[32], th[96] = "";
        model_stem(s->model ? s->model : "", stem, sizeof stem);
        if (pp.kind == SDXL_PRE_CANNY || pp.kind == SDXL_PRE_TILE)
            snprintf(th, sizeof th, ", Threshold A: %g, Threshold B: %g", pp.a, pp.b);
        else if (pp.kind == SDXL_PRE_THRESHOLD || pp.kind == SDXL_PRE_BLUR)
            snprintf(th, sizeof th, ", Threshold A: %g", pp.a);
        snprintf(v, sizeof v, "Module: %s, Model: %s, Weight: %g, Resize Mode: %s%s, Guidance Start: %g, Guidance End: %g, "
                 "Control Mode: %s",
                 sdxl_preprocess_module(pp.kind), stem, (double)sdxl_pl_ctrl_scale(s),
                 RESIZE_A1111[(unsigned)s->resize < 3 ? s->resize : 0], th, (double)s->guidance_start,
                 (double)sdxl_pl_ctrl_end(s), s->guess_mode ? "ControlNet is more important" : "Balanced");
        snprintf(key, sizeof key, "ControlNet %d", i);
        int st = sdxl_genmeta_extra_set(g, key, v, e);
        if (st) return st;
    }
    return SDXL_OK;
}

/* A1111's "Schedule type" display names, by sdxl_schedule_kind. */
static const char *const A1111_SCHEDULE[SDXL_SCHEDULE_COUNT] = {
    "Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple", "DDIM", "Beta", "Align Your Steps"};

/* The double that prints as the float's shortest decimal (0.8f -> 0.8, not 0.800000011920929):
 * A1111 writes the number the user typed. */
static double f2d(float v) {
    char t[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, (double)v);
        if ((float)strtod(t, NULL) == v) break;
    }
    return strtod(t, NULL);
}

/* A1111's hires keys (processing.py extra_generation_params). */
static int hires_fields(sdxl_genmeta *g, const sdxl_gen_params *p, sdxl_err *e) {
    char buf[64];
    int st = SDXL_OK;
    g->denoising_strength = f2d(p->hr_denoising_strength);
    if (p->hr_resize_x || p->hr_resize_y) {
        snprintf(buf, sizeof buf, "%dx%d", p->hr_resize_x, p->hr_resize_y);
        st = sdxl_genmeta_extra_set(g, "Hires resize", buf, e);
    } else {
        snprintf(buf, sizeof buf, "%.9g", f2d(p->hr_scale));
        st = sdxl_genmeta_extra_set(g, "Hires upscale", buf, e);
    }
    if (!st && p->hr_second_pass_steps) {
        snprintf(buf, sizeof buf, "%d", p->hr_second_pass_steps);
        st = sdxl_genmeta_extra_set(g, "Hires steps", buf, e);
    }
    if (!st) st = sdxl_genmeta_extra_set(g, "Hires upscaler", p->hr_upscaler && *p->hr_upscaler ? p->hr_upscaler : "Latent", e);
    if (!st && p->hr_sampler && *p->hr_sampler) st = sdxl_genmeta_extra_set(g, "Hires sampler", p->hr_sampler, e);
    if (!st && p->hr_schedule && *p->hr_schedule) st = sdxl_genmeta_extra_set(g, "Hires schedule type", p->hr_schedule, e);
    if (!st && p->hr_prompt && *p->hr_prompt) st = sdxl_genmeta_extra_set(g, "Hires prompt", p->hr_prompt, e);
    if (!st && p->hr_negative_prompt && *p->hr_negative_prompt)
        st = sdxl_genmeta_extra_set(g, "Hires negative prompt", p->hr_negative_prompt, e);
    return st;
}

/* A1111 writes ENSD where the sampler draws its noise from the image generators (its uses_ensd
 * samplers); here: every sampler that draws noise, since the reseed applies to all of them. */
static int uses_ensd(const sdxl_gen_params *p) {
    sdxl_sched_choice ch;
    sdxl_err e = {0};
    if (sdxl_sched_resolve(p->sampler && *p->sampler ? p->sampler : "Euler", p->schedule, &ch, &e)) return 0;
    sdxl_sampler_config c;
    sdxl_sampler_config_init(&c);
    c.sampler = ch.sampler;
    return sdxl_sampler_config_draws_noise(&c);
}

int sdxl_pl_infotext(const sdxl_pl_model *m, const sdxl_gen_params *p, int width, int height, int64_t seed,
                     char **out, sdxl_err *e) {
    sdxl_genmeta g;
    sdxl_genmeta_init(&g);
    sdxl_sched_choice ch;
    int st = sdxl_sched_resolve(p->sampler && *p->sampler ? p->sampler : "Euler", p->schedule, &ch, e);
    if (st) return st;
    const sdxl_sampler_traits *tr = sdxl_sampler_traits_get(ch.sampler);
    char buf[64];
    if ((st = sdxl_genmeta_set_str(&g.prompt, p->prompt ? p->prompt : "", e)) ||
        (p->negative_prompt && (st = sdxl_genmeta_set_str(&g.negative_prompt, p->negative_prompt, e))) ||
        /* the diffusers dialect keeps the caller's class name so that the text alone reproduces the path */
        (st = sdxl_genmeta_set_str(&g.sampler, !ch.kdiffusion && p->sampler && *p->sampler ? p->sampler
                                               : tr && tr->a1111 && *tr->a1111 ? tr->a1111 : sdxl_sampler_name(ch.sampler), e)) ||
        (st = sdxl_genmeta_set_str(&g.schedule,
                                   (unsigned)ch.schedule < SDXL_SCHEDULE_COUNT ? A1111_SCHEDULE[ch.schedule]
                                                                               : "Automatic",
                                   e)) ||
        (st = sdxl_genmeta_set_str(&g.model, m ? m->base_name : "sdxl", e)))
        goto out;
    g.steps = p->steps;
    g.cfg_scale = f2d(p->cfg_scale);
    g.seed = seed;
    g.width = width;
    g.height = height;
    if (p->init_image) g.denoising_strength = f2d(p->strength);
    if (p->enable_hr && (st = hires_fields(&g, p, e))) goto out;
    if (p->clip_skip > 1) g.clip_skip = p->clip_skip;
    if (m && m->has_ref && p->refiner_switch < 1) {
        if ((st = sdxl_genmeta_set_str(&g.refiner, m->ref_name, e))) goto out;
        g.refiner_switch = f2d(p->refiner_switch);
    }
    if (p->eta_noise_seed_delta && uses_ensd(p)) {
        snprintf(buf, sizeof buf, "%d", p->eta_noise_seed_delta);
        if ((st = sdxl_genmeta_extra_set(&g, "ENSD", buf, e))) goto out;
    }
    if (p->rng && *p->rng && strcmp(p->rng, "torch") && strcmp(p->rng, "cpu") &&
        (st = sdxl_genmeta_extra_set(&g, "RNG", strcmp(p->rng, "philox") ? p->rng : "NV", e)))
        goto out;
    int vp = p->prediction && *p->prediction && strcmp(p->prediction, "auto")
                 ? (!strcmp(p->prediction, "v") || !strcmp(p->prediction, "v_prediction")) : (m && m->v_pred);
    int zt = p->zero_terminal_snr >= 0 ? p->zero_terminal_snr : (m && m->ztsnr);
    if (vp && (st = sdxl_genmeta_extra_set(&g, "Prediction", "v", e))) goto out;
    if (zt && (st = sdxl_genmeta_extra_set(&g, "Zero terminal SNR", "True", e))) goto out;
    if (p->guidance_rescale > 0) {
        snprintf(buf, sizeof buf, "%g", p->guidance_rescale);
        if ((st = sdxl_genmeta_extra_set(&g, "Guidance rescale", buf, e))) goto out;
    }
    if (p->prompt_2 && (st = sdxl_genmeta_extra_set(&g, "Prompt 2", p->prompt_2, e))) goto out;
    if (p->negative_prompt_2 && (st = sdxl_genmeta_extra_set(&g, "Negative prompt 2", p->negative_prompt_2, e)))
        goto out;
    if ((st = control_infotext(&g, p, e))) goto out;
    st = sdxl_genmeta_format(&g, out, e);
out:
    sdxl_genmeta_free(&g);
    return st;
}

/* ---- JSON writer ----------------------------------------------------------------------------- */

static void sb_kstr(sdxl_strbuf *b, const char *key, const char *v) {
    if (!v) return;
    sdxl_sb_printf(b, ",\"%s\":", key);
    sdxl_sb_json(b, v);
}

static void sb_int(sdxl_strbuf *b, const char *key, long long v) { sdxl_sb_printf(b, ",\"%s\":%lld", key, v); }
/* Shortest text that reads back as the same float. */
static void sb_num(sdxl_strbuf *b, const char *key, float v) {
    char t[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, (double)v);
        if ((float)strtod(t, NULL) == v) break;
    }
    sdxl_sb_printf(b, ",\"%s\":%s", key, t);
}

int sdxl_pl_request_json(const sdxl_pl_model *m, const sdxl_gen_params *p, int width, int height, int64_t seed,
                         char **out, sdxl_err *e) {
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"version\":1");
    sb_kstr(&b, "model", m ? m->base_name : NULL);
    if (m && m->has_ref) sb_kstr(&b, "refiner_model", m->ref_name);
    sb_kstr(&b, "prompt", p->prompt ? p->prompt : "");
    sb_kstr(&b, "negative_prompt", p->negative_prompt);
    sb_kstr(&b, "prompt_2", p->prompt_2);
    sb_kstr(&b, "negative_prompt_2", p->negative_prompt_2);
    sb_int(&b, "width", width);
    sb_int(&b, "height", height);
    sb_int(&b, "steps", p->steps);
    sb_num(&b, "cfg_scale", p->cfg_scale);
    sb_num(&b, "guidance_rescale", p->guidance_rescale);
    sb_kstr(&b, "sampler", p->sampler && *p->sampler ? p->sampler : "Euler");
    sb_kstr(&b, "schedule", p->schedule && *p->schedule ? p->schedule : "Automatic");
    sb_int(&b, "seed", (long long)seed);
    sb_kstr(&b, "rng", p->rng && *p->rng ? p->rng : "torch");
    sb_int(&b, "original_width", p->original_width);
    sb_int(&b, "original_height", p->original_height);
    sb_int(&b, "crop_left", p->crop_left);
    sb_int(&b, "crop_top", p->crop_top);
    sb_int(&b, "target_width", p->target_width);
    sb_int(&b, "target_height", p->target_height);
    sb_int(&b, "negative_original_width", p->negative_original_width);
    sb_int(&b, "negative_original_height", p->negative_original_height);
    sb_int(&b, "negative_crop_left", p->negative_crop_left);
    sb_int(&b, "negative_crop_top", p->negative_crop_top);
    sb_int(&b, "negative_target_width", p->negative_target_width);
    sb_int(&b, "negative_target_height", p->negative_target_height);
    sb_num(&b, "refiner_switch", p->refiner_switch);
    sb_num(&b, "aesthetic_score", p->aesthetic_score);
    sb_num(&b, "negative_aesthetic_score", p->negative_aesthetic_score);
    if (p->init_image) sb_num(&b, "strength", p->strength);
    if (p->mask) sb_int(&b, "mask_blur", p->mask_blur);
    sb_int(&b, "clip_skip", p->clip_skip);
    if (p->n_controls > 0) {
        sdxl_sb_printf(&b, ",\"controls\":[");
        for (int i = 0; i < p->n_controls; i++) {
            const sdxl_control_spec *s = &p->controls[i];
            sdxl_sb_printf(&b, "%s{\"model\":", i ? "," : "");
            sdxl_sb_json(&b, s->model ? s->model : "");
            sb_num(&b, "scale", sdxl_pl_ctrl_scale(s));
            sb_num(&b, "guidance_start", s->guidance_start);
            sb_num(&b, "guidance_end", sdxl_pl_ctrl_end(s));
            sb_kstr(&b, "preprocess", s->preprocess && *s->preprocess ? s->preprocess : "none");
            sb_kstr(&b, "resize", RESIZE_KEY[(unsigned)s->resize < 3 ? s->resize : 0]);
            sdxl_sb_printf(&b, ",\"guess_mode\":%s}", s->guess_mode ? "true" : "false");
        }
        sdxl_sb_put(&b, "]", 1);
    }
    sb_kstr(&b, "prediction", p->prediction);
    if (p->enable_hr) {
        sb_int(&b, "enable_hr", 1);
        sb_num(&b, "hr_scale", p->hr_scale);
        sb_int(&b, "hr_resize_x", p->hr_resize_x);
        sb_int(&b, "hr_resize_y", p->hr_resize_y);
        sb_int(&b, "hr_second_pass_steps", p->hr_second_pass_steps);
        sb_num(&b, "hr_denoising_strength", p->hr_denoising_strength);
        sb_kstr(&b, "hr_upscaler", p->hr_upscaler);
        sb_kstr(&b, "hr_sampler", p->hr_sampler);
        sb_kstr(&b, "hr_schedule", p->hr_schedule);
        sb_kstr(&b, "hr_prompt", p->hr_prompt);
        sb_kstr(&b, "hr_negative_prompt", p->hr_negative_prompt);
    }
    if (p->zero_terminal_snr >= 0) sb_int(&b, "zero_terminal_snr", p->zero_terminal_snr);
    if (p->eta_noise_seed_delta) sb_int(&b, "eta_noise_seed_delta", p->eta_noise_seed_delta);
    sdxl_sb_put(&b, "}", 1);
    if (b.oom) {
        free(b.p);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory writing the request JSON");
    }
    *out = b.p;
    return SDXL_OK;
}

/* ---- JSON reader ----------------------------------------------------------------------------- */

static const char *const STR_KEYS[] = {"prompt", "negative_prompt", "prompt_2", "negative_prompt_2",
                                       "sampler", "schedule", "rng", "prediction", "hr_upscaler", "hr_sampler",
                                       "hr_schedule", "hr_prompt", "hr_negative_prompt"};

static const char **str_field(sdxl_gen_params *p, const char *k) {
    if (!strcmp(k, "prompt")) return &p->prompt;
    if (!strcmp(k, "negative_prompt")) return &p->negative_prompt;
    if (!strcmp(k, "prompt_2")) return &p->prompt_2;
    if (!strcmp(k, "negative_prompt_2")) return &p->negative_prompt_2;
    if (!strcmp(k, "sampler")) return &p->sampler;
    if (!strcmp(k, "schedule")) return &p->schedule;
    if (!strcmp(k, "prediction")) return &p->prediction;
    if (!strcmp(k, "hr_upscaler")) return &p->hr_upscaler;
    if (!strcmp(k, "hr_sampler")) return &p->hr_sampler;
    if (!strcmp(k, "hr_schedule")) return &p->hr_schedule;
    if (!strcmp(k, "hr_prompt")) return &p->hr_prompt;
    if (!strcmp(k, "hr_negative_prompt")) return &p->hr_negative_prompt;
    return &p->rng;
}

static int *int_field(sdxl_gen_params *p, const char *k) {
    struct { const char *k; int *v; } t[] = {
        {"width", &p->width}, {"height", &p->height}, {"steps", &p->steps},
        {"original_width", &p->original_width}, {"original_height", &p->original_height},
        {"crop_left", &p->crop_left}, {"crop_top", &p->crop_top}, {"target_width", &p->target_width},
        {"target_height", &p->target_height}, {"negative_original_width", &p->negative_original_width},
        {"negative_original_height", &p->negative_original_height}, {"negative_crop_left", &p->negative_crop_left},
        {"negative_crop_top", &p->negative_crop_top}, {"negative_target_width", &p->negative_target_width},
        {"negative_target_height", &p->negative_target_height}, {"mask_blur", &p->mask_blur},
        {"clip_skip", &p->clip_skip}, {"batch_count", &p->batch_count}, {"batch_size", &p->batch_size},
        {"zero_terminal_snr", &p->zero_terminal_snr}, {"enable_hr", &p->enable_hr}, {"hr_resize_x", &p->hr_resize_x},
        {"hr_resize_y", &p->hr_resize_y}, {"hr_second_pass_steps", &p->hr_second_pass_steps},
        {"eta_noise_seed_delta", &p->eta_noise_seed_delta},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].k, k)) return t[i].v;
    return NULL;
}

static float *float_field(sdxl_gen_params *p, const char *k) {
    struct { const char *k; float *v; } t[] = {
        {"cfg_scale", &p->cfg_scale}, {"guidance_rescale", &p->guidance_rescale},
        {"refiner_switch", &p->refiner_switch}, {"aesthetic_score", &p->aesthetic_score},
        {"negative_aesthetic_score", &p->negative_aesthetic_score}, {"strength", &p->strength},
        {"hr_scale", &p->hr_scale}, {"hr_denoising_strength", &p->hr_denoising_strength},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].k, k)) return t[i].v;
    return NULL;
}

int sdxl_pl_params_from_json(const char *json, size_t len, sdxl_gen_params *p, void **storage, sdxl_err *e) {
    *storage = NULL;
    sdxl_json *root = NULL;
    int st = sdxl_json_parse(json, len, NULL, "request JSON", &root, e);
    if (st) return st;
    if (root->type != SDXL_JSON_OBJECT) {
        sdxl_json_free(root);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: must be an object");
    }
    size_t total = 0;
    for (size_t i = 0; i < sizeof STR_KEYS / sizeof STR_KEYS[0]; i++) {
        const sdxl_json *v = sdxl_json_get(root, STR_KEYS[i]);
        if (v && v->type == SDXL_JSON_STRING) total += v->len + 1;
    }
    /* ControlNet units: an array of specs at the block's start (images are not in the JSON) */
    const sdxl_json *ctl = sdxl_json_get(root, "controls");
    size_t n_ctl = ctl && ctl->type == SDXL_JSON_ARRAY ? ctl->len : 0;
    if (n_ctl > SDXL_PL_MAX_CONTROLS) {
        sdxl_json_free(root);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: controls: at most %d units", SDXL_PL_MAX_CONTROLS);
    }
    for (size_t i = 0; i < n_ctl; i++)
        for (int k = 0; k < 2; k++) {
            const sdxl_json *v = sdxl_json_get(&ctl->items[i], k ? "preprocess" : "model");
            if (v && v->type == SDXL_JSON_STRING) total += v->len + 1;
        }
    /* "loras": [{name, hash, unet_weight, te_weight}]: specs first in the block, then their strings */
    const sdxl_json *lj = sdxl_json_get(root, "loras");
    size_t nl = lj && lj->type == SDXL_JSON_ARRAY ? lj->len : 0;
    if (nl > 64) {
        sdxl_json_free(root);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: loras: at most 64 entries");
    }
    for (size_t i = 0; i < nl; i++) {
        const sdxl_json *it = sdxl_json_at(lj, i), *nm = sdxl_json_get(it, "name"), *h = sdxl_json_get(it, "hash");
        if (nm && nm->type == SDXL_JSON_STRING) total += nm->len + 1;
        if (h && h->type == SDXL_JSON_STRING) total += h->len + 1;
    }
    /* the block: control specs, LoRA specs, then every string */
    size_t spec_bytes = n_ctl * sizeof(sdxl_control_spec) + nl * sizeof(sdxl_lora_spec);
    char *blk = malloc(spec_bytes + total + 1), *w = blk + spec_bytes;
    if (!blk) {
        sdxl_json_free(root);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < root->len; i++) {
        const char *k = root->keys[i];
        const sdxl_json *v = &root->items[i];
        int is_str = 0;
        for (size_t j = 0; j < sizeof STR_KEYS / sizeof STR_KEYS[0]; j++) is_str |= !strcmp(STR_KEYS[j], k);
        if (is_str) {
            if (v->type == SDXL_JSON_NULL) continue;
            if (v->type != SDXL_JSON_STRING || memchr(v->str, 0, v->len)) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: %s: must be a string without NUL", k);
                break;
            }
            memcpy(w, v->str, v->len + 1);
            *str_field(p, k) = w;
            w += v->len + 1;
        } else if (!strcmp(k, "seed")) {
            if (v->type != SDXL_JSON_NUMBER || !v->is_int) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: seed: must be an integer");
                break;
            }
            p->seed = v->integer;
        } else if (int_field(p, k)) {
            if (v->type != SDXL_JSON_NUMBER || !v->is_int || v->integer < -2147483647LL || v->integer > 2147483647LL) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: %s: must be a 32-bit integer", k);
                break;
            }
            *int_field(p, k) = (int)v->integer;
        } else if (float_field(p, k)) {
            if (v->type != SDXL_JSON_NUMBER || !isfinite(v->number)) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: %s: must be a finite number", k);
                break;
            }
            *float_field(p, k) = (float)v->number;
        }
    }
    sdxl_control_spec *specs = (sdxl_control_spec *)(void *)blk;
    for (size_t i = 0; !st && i < n_ctl; i++) {
        const sdxl_json *u = &ctl->items[i];
        sdxl_control_spec *s = &specs[i];
        memset(s, 0, sizeof *s);
        if (u->type != SDXL_JSON_OBJECT) {
            st = sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: controls[%zu]: must be an object", i);
            break;
        }
        for (int k = 0; k < 2; k++) {
            const sdxl_json *v = sdxl_json_get(u, k ? "preprocess" : "model");
            if (!v || v->type != SDXL_JSON_STRING || memchr(v->str, 0, v->len)) continue;
            memcpy(w, v->str, v->len + 1);
            if (k) s->preprocess = w;
            else s->model = w;
            w += v->len + 1;
        }
        s->scale = (float)sdxl_json_num(u, "scale", 1.0);
        s->guidance_start = (float)sdxl_json_num(u, "guidance_start", 0.0);
        s->guidance_end = (float)sdxl_json_num(u, "guidance_end", 1.0);
        s->guess_mode = sdxl_json_bool(u, "guess_mode", 0);
        const char *rz = sdxl_json_str(u, "resize", "just");
        s->resize = !strcmp(rz, "crop") ? SDXL_RESIZE_CROP : !strcmp(rz, "fill") ? SDXL_RESIZE_FILL : SDXL_RESIZE_JUST;
    }
    if (!st && n_ctl) {
        p->controls = specs;
        p->n_controls = (int)n_ctl;
    }
    for (size_t i = 0; !st && i < nl; i++) {
        sdxl_lora_spec *l = (sdxl_lora_spec *)(void *)(blk + n_ctl * sizeof(sdxl_control_spec)) + i;
        const sdxl_json *it = sdxl_json_at(lj, i), *nm = sdxl_json_get(it, "name"), *h = sdxl_json_get(it, "hash");
        if (!it || it->type != SDXL_JSON_OBJECT || !nm || nm->type != SDXL_JSON_STRING || memchr(nm->str, 0, nm->len) ||
            (h && (h->type != SDXL_JSON_STRING || memchr(h->str, 0, h->len)))) {
            st = sdxl_seterr(e, SDXL_ERR_FORMAT, "request JSON: loras[%zu]: needs a string \"name\" (and \"hash\")", i);
            break;
        }
        memcpy(w, nm->str, nm->len + 1);
        l->path = w;
        w += nm->len + 1;
        l->hash = NULL;
        if (h) {
            memcpy(w, h->str, h->len + 1);
            l->hash = w;
            w += h->len + 1;
        }
        l->unet_weight = (float)sdxl_json_num(it, "unet_weight", 1.0);
        l->te_weight = (float)sdxl_json_num(it, "te_weight", l->unet_weight);
    }
    if (!st && nl) {
        p->loras = (const sdxl_lora_spec *)(void *)(blk + n_ctl * sizeof(sdxl_control_spec));
        p->n_loras = (int)nl;
    }
    sdxl_json_free(root);
    if (st) {
        free(blk);
        return st;
    }
    *storage = blk;
    return SDXL_OK;
}

/* ---- A1111 infotext reader ------------------------------------------------------------------ */

/* Infotext keys that set nothing here but change nothing A1111 computes by default (or that we
 * cannot honour): they are named in the warning. */
static int known_key(const char *k) {
    static const char *const mapped[] = {"RNG", "ENSD", "Eta noise seed delta", "Hires upscale", "Hires steps",
                                         "Hires upscaler", "Hires resize", "Hires sampler", "Hires schedule type",
                                         "Hires prompt", "Hires negative prompt", "Prediction", "Zero terminal SNR",
                                         "Guidance rescale", "Prompt 2", "Negative prompt 2", "Version"};
    for (size_t i = 0; i < sizeof mapped / sizeof mapped[0]; i++)
        if (!strcmp(k, mapped[i])) return 1;
    return 0;
}

static void warn_add(char *w, size_t cap, const char *what) {
    size_t n = strlen(w);
    if (n + strlen(what) + 3 < cap) snprintf(w + n, cap - n, "%s%s", n ? ", " : "", what);
}

int sdxl_pl_params_from_infotext(const char *text, size_t len, const char *model_name, sdxl_gen_params *p,
                                 void **storage, char *warn, size_t warn_cap, sdxl_err *e) {
    *storage = NULL;
    if (warn_cap) warn[0] = 0;
    sdxl_genmeta g;
    sdxl_genmeta_init(&g);
    int st = sdxl_genmeta_parse(text, len, &g, e);
    if (st) return sdxl_err_prefix(e, "infotext");
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"version\":1");
    sb_kstr(&b, "prompt", g.prompt ? g.prompt : "");
    sb_kstr(&b, "negative_prompt", g.negative_prompt && *g.negative_prompt ? g.negative_prompt : NULL);
    if (g.steps > 0) sb_int(&b, "steps", g.steps);
    sb_kstr(&b, "sampler", g.sampler);
    sb_kstr(&b, "schedule", g.schedule);
    if (isfinite(g.cfg_scale)) sb_num(&b, "cfg_scale", (float)g.cfg_scale);
    if (g.seed >= 0) sb_int(&b, "seed", (long long)g.seed);
    if (g.width > 0 && g.height > 0) sb_int(&b, "width", g.width), sb_int(&b, "height", g.height);
    if (g.clip_skip > 0) sb_int(&b, "clip_skip", g.clip_skip);
    if (isfinite(g.refiner_switch)) sb_num(&b, "refiner_switch", (float)g.refiner_switch);
    const char *v;
    if ((v = sdxl_genmeta_extra_get(&g, "RNG"))) {
        if (!strcmp(v, "NV")) sb_kstr(&b, "rng", "philox");
        else if (!strcmp(v, "CPU")) sb_kstr(&b, "rng", "torch");
        else warn_add(warn, warn_cap, "RNG (only CPU and NV)");
    }
    if ((v = sdxl_genmeta_extra_get(&g, "ENSD")) || (v = sdxl_genmeta_extra_get(&g, "Eta noise seed delta"))) {
        char *end;
        long d = strtol(v, &end, 10);
        if (end != v && !*end && d >= -2147483647L && d <= 2147483647L)
            sb_int(&b, "eta_noise_seed_delta", (int)d);
        else
            warn_add(warn, warn_cap, "ENSD (not an integer)");
    }
    if ((v = sdxl_genmeta_extra_get(&g, "Prediction"))) sb_kstr(&b, "prediction", v);
    if ((v = sdxl_genmeta_extra_get(&g, "Zero terminal SNR"))) sb_int(&b, "zero_terminal_snr", !strcmp(v, "True"));
    if ((v = sdxl_genmeta_extra_get(&g, "Guidance rescale"))) sb_num(&b, "guidance_rescale", strtof(v, NULL));
    if ((v = sdxl_genmeta_extra_get(&g, "Prompt 2"))) sb_kstr(&b, "prompt_2", v);
    if ((v = sdxl_genmeta_extra_get(&g, "Negative prompt 2"))) sb_kstr(&b, "negative_prompt_2", v);
    const char *hu = sdxl_genmeta_extra_get(&g, "Hires upscale"), *hr = sdxl_genmeta_extra_get(&g, "Hires resize");
    if (hu || hr || sdxl_genmeta_extra_get(&g, "Hires upscaler")) {
        sb_int(&b, "enable_hr", 1);
        if (hu) sb_num(&b, "hr_scale", strtof(hu, NULL));
        int rx = 0, ry = 0;
        if (hr && sscanf(hr, "%dx%d", &rx, &ry) == 2) sb_int(&b, "hr_resize_x", rx), sb_int(&b, "hr_resize_y", ry);
        if ((v = sdxl_genmeta_extra_get(&g, "Hires steps"))) sb_int(&b, "hr_second_pass_steps", atoi(v));
        if (isfinite(g.denoising_strength)) sb_num(&b, "hr_denoising_strength", (float)g.denoising_strength);
        sb_kstr(&b, "hr_upscaler", sdxl_genmeta_extra_get(&g, "Hires upscaler"));
        sb_kstr(&b, "hr_sampler", sdxl_genmeta_extra_get(&g, "Hires sampler"));
        sb_kstr(&b, "hr_schedule", sdxl_genmeta_extra_get(&g, "Hires schedule type"));
        sb_kstr(&b, "hr_prompt", sdxl_genmeta_extra_get(&g, "Hires prompt"));
        sb_kstr(&b, "hr_negative_prompt", sdxl_genmeta_extra_get(&g, "Hires negative prompt"));
    } else if (isfinite(g.denoising_strength)) {
        sb_num(&b, "strength", (float)g.denoising_strength); /* img2img: applies when an init image is given */
    }
    sdxl_sb_put(&b, "}", 1);
    for (size_t i = 0; i < g.n_extra; i++)
        if (!known_key(g.extra[i].key)) warn_add(warn, warn_cap, g.extra[i].key);
    if (g.model && model_name && strcmp(g.model, model_name)) {
        char t[600];
        snprintf(t, sizeof t, "Model (the infotext names \"%s\", not \"%s\")", g.model, model_name);
        warn_add(warn, warn_cap, t);
    }
    sdxl_genmeta_free(&g);
    if (b.oom) {
        free(b.p);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory reading the infotext");
    }
    sdxl_gen_params_init(p);
    st = sdxl_pl_params_from_json(b.p, b.n, p, storage, e);
    free(b.p);
    return st;
}
