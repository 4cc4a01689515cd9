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
#include "pipeline/pipeline.h"

/* A1111's "Schedule type" display names, by sdxl_schedule_kind. */
static const char *const A1111_SCHEDULE[SDXL_SCHEDULE_COUNT] = {
    "Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform", "Simple", "DDIM", "Beta", "Align Your Steps"};


/* The shortest decimal that reads back as f: the infotext says 0.6 (as A1111), not 0.6000000238. */
static double float_text(float f) {
    char buf[32];
    for (int prec = 1; prec < 10; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    return (double)f;
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
        (st = sdxl_genmeta_set_str(&g.sampler, tr && tr->a1111 ? tr->a1111 : sdxl_sampler_name(ch.sampler), e)) ||
        (st = sdxl_genmeta_set_str(&g.schedule,
                                   (unsigned)ch.schedule < SDXL_SCHEDULE_COUNT ? A1111_SCHEDULE[ch.schedule]
                                                                               : "Automatic",
                                   e)) ||
        (st = sdxl_genmeta_set_str(&g.model, m ? m->base_name : "sdxl", e)))
        goto out;
    g.steps = p->steps;
    g.cfg_scale = float_text(p->cfg_scale);
    g.seed = seed;
    g.width = width;
    g.height = height;
    if (p->init_image) g.denoising_strength = float_text(p->strength);
    if (p->clip_skip > 1) g.clip_skip = p->clip_skip;
    if (m && m->has_ref && p->refiner_switch < 1) {
        if ((st = sdxl_genmeta_set_str(&g.refiner, m->ref_name, e))) goto out;
        g.refiner_switch = float_text(p->refiner_switch);
    }
    if (p->rng && *p->rng && strcmp(p->rng, "torch") && strcmp(p->rng, "cpu") &&
        (st = sdxl_genmeta_extra_set(&g, "RNG", strcmp(p->rng, "philox") ? p->rng : "NV", e)))
        goto out;
    if (p->guidance_rescale > 0) {
        snprintf(buf, sizeof buf, "%g", p->guidance_rescale);
        if ((st = sdxl_genmeta_extra_set(&g, "Guidance rescale", buf, e))) goto out;
    }
    if (p->prompt_2 && (st = sdxl_genmeta_extra_set(&g, "Prompt 2", p->prompt_2, e))) goto out;
    if (p->negative_prompt_2 && (st = sdxl_genmeta_extra_set(&g, "Negative prompt 2", p->negative_prompt_2, e)))
        goto out;
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
                                       "sampler", "schedule", "rng"};

static const char **str_field(sdxl_gen_params *p, const char *k) {
    if (!strcmp(k, "prompt")) return &p->prompt;
    if (!strcmp(k, "negative_prompt")) return &p->negative_prompt;
    if (!strcmp(k, "prompt_2")) return &p->prompt_2;
    if (!strcmp(k, "negative_prompt_2")) return &p->negative_prompt_2;
    if (!strcmp(k, "sampler")) return &p->sampler;
    if (!strcmp(k, "schedule")) return &p->schedule;
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
    char *blk = malloc(total ? total : 1), *w = blk;
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
    sdxl_json_free(root);
    if (st) {
        free(blk);
        return st;
    }
    *storage = blk;
    return SDXL_OK;
}
