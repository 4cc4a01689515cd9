/* A1111's /sdapi/v1 routes: the same field names, defaults, response and error shapes as
 * AUTOMATIC1111's API, so its clients work unchanged. txt2img/img2img block (the connection is
 * suspended, not a thread) until the job ends, then answer images as base64 PNG, `parameters` (the
 * request with A1111's defaults) and `info` (a JSON string with infotexts and seeds). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/mem.h"
#include "denoise/registry.h"
#include "io/genmeta.h"
#include "io/image.h"
#include "serve/b64.h"
#include "serve/hub.h"
#include "serve/internal.h"
#include "service/engine.h"

int srv_submit(srv_req *r, sdxl_engine *eng, const sdxl_svc_request *q, char id[64]);
void srv_list_kind(srv_req *r, int lora, sdxl_strbuf *b);

/* A1111's request defaults (StableDiffusionTxt2ImgProcessingAPI / Img2Img), echoed in `parameters`. */
static const char TXT2IMG_DEFAULTS[] =
    "{\"prompt\":\"\",\"negative_prompt\":\"\",\"styles\":null,\"seed\":-1,\"subseed\":-1,\"subseed_strength\":0,"
    "\"seed_resize_from_h\":-1,\"seed_resize_from_w\":-1,\"sampler_name\":null,\"scheduler\":null,\"batch_size\":1,"
    "\"n_iter\":1,\"steps\":50,\"cfg_scale\":7.0,\"width\":512,\"height\":512,\"restore_faces\":null,\"tiling\":null,"
    "\"do_not_save_samples\":false,\"do_not_save_grid\":false,\"eta\":null,\"denoising_strength\":null,"
    "\"s_min_uncond\":null,\"s_churn\":null,\"s_tmax\":null,\"s_tmin\":null,\"s_noise\":null,"
    "\"override_settings\":null,\"override_settings_restore_afterwards\":true,\"refiner_checkpoint\":null,"
    "\"refiner_switch_at\":null,\"disable_extra_networks\":false,\"firstpass_image\":null,\"comments\":null,"
    "\"enable_hr\":false,\"firstphase_width\":0,\"firstphase_height\":0,\"hr_scale\":2.0,\"hr_upscaler\":null,"
    "\"hr_second_pass_steps\":0,\"hr_resize_x\":0,\"hr_resize_y\":0,\"hr_checkpoint_name\":null,"
    "\"hr_sampler_name\":null,\"hr_scheduler\":null,\"hr_prompt\":\"\",\"hr_negative_prompt\":\"\","
    "\"force_task_id\":null,\"sampler_index\":\"Euler\",\"script_name\":null,\"script_args\":[],"
    "\"send_images\":true,\"save_images\":false,\"alwayson_scripts\":{},\"infotext\":null}";
static const char IMG2IMG_DEFAULTS[] =
    "{\"prompt\":\"\",\"negative_prompt\":\"\",\"styles\":null,\"seed\":-1,\"subseed\":-1,\"subseed_strength\":0,"
    "\"seed_resize_from_h\":-1,\"seed_resize_from_w\":-1,\"sampler_name\":null,\"scheduler\":null,\"batch_size\":1,"
    "\"n_iter\":1,\"steps\":50,\"cfg_scale\":7.0,\"width\":512,\"height\":512,\"restore_faces\":null,\"tiling\":null,"
    "\"do_not_save_samples\":false,\"do_not_save_grid\":false,\"eta\":null,\"denoising_strength\":0.75,"
    "\"s_min_uncond\":null,\"s_churn\":null,\"s_tmax\":null,\"s_tmin\":null,\"s_noise\":null,"
    "\"override_settings\":null,\"override_settings_restore_afterwards\":true,\"refiner_checkpoint\":null,"
    "\"refiner_switch_at\":null,\"disable_extra_networks\":false,\"firstpass_image\":null,\"comments\":null,"
    "\"init_images\":null,\"resize_mode\":0,\"image_cfg_scale\":null,\"mask\":null,\"mask_blur_x\":4,"
    "\"mask_blur_y\":4,\"mask_blur\":null,\"mask_round\":true,\"inpainting_fill\":0,\"inpaint_full_res\":true,"
    "\"inpaint_full_res_padding\":0,\"inpainting_mask_invert\":0,\"initial_noise_multiplier\":null,"
    "\"latent_mask\":null,\"force_task_id\":null,\"sampler_index\":\"Euler\",\"include_init_images\":false,"
    "\"script_name\":null,\"script_args\":[],\"send_images\":true,\"save_images\":false,\"alwayson_scripts\":{},"
    "\"infotext\":null}";

/* Writes a parsed JSON value back as JSON. */
static void put_value(sdxl_strbuf *b, const sdxl_json *v) {
    switch (v->type) {
    case SDXL_JSON_NULL: sdxl_sb_str(b, "null"); break;
    case SDXL_JSON_BOOL: sdxl_sb_str(b, v->boolean ? "true" : "false"); break;
    case SDXL_JSON_NUMBER:
        if (v->is_int) sdxl_sb_printf(b, "%lld", (long long)v->integer);
        else sdxl_sb_printf(b, "%.17g", v->number);
        break;
    case SDXL_JSON_STRING: sdxl_sb_json(b, v->str); break;
    case SDXL_JSON_ARRAY:
        sdxl_sb_str(b, "[");
        for (size_t i = 0; i < v->len; i++) {
            if (i) sdxl_sb_str(b, ",");
            put_value(b, &v->items[i]);
        }
        sdxl_sb_str(b, "]");
        break;
    case SDXL_JSON_OBJECT:
        sdxl_sb_str(b, "{");
        for (size_t i = 0; i < v->len; i++) {
            if (i) sdxl_sb_str(b, ",");
            sdxl_sb_json(b, v->keys[i]);
            sdxl_sb_str(b, ":");
            put_value(b, &v->items[i]);
        }
        sdxl_sb_str(b, "}");
        break;
    }
}

/* `parameters`: A1111's defaults overlaid with the body; images are not echoed (as A1111). */
static void put_parameters(sdxl_strbuf *b, const sdxl_json *body, int img2img) {
    sdxl_json *def = NULL;
    const char *txt = img2img ? IMG2IMG_DEFAULTS : TXT2IMG_DEFAULTS;
    if (sdxl_json_parse(txt, strlen(txt), NULL, "defaults", &def, NULL) != SDXL_OK) {
        put_value(b, body);
        return;
    }
    sdxl_sb_str(b, "{");
    int first = 1;
    for (size_t i = 0; i < def->len; i++) {
        const char *k = def->keys[i];
        const sdxl_json *v = sdxl_json_get(body, k);
        if (!first) sdxl_sb_str(b, ",");
        first = 0;
        sdxl_sb_json(b, k);
        sdxl_sb_str(b, ":");
        if (img2img && (!strcmp(k, "init_images") || !strcmp(k, "mask"))) sdxl_sb_str(b, "null");
        else put_value(b, v ? v : &def->items[i]);
    }
    for (size_t i = 0; i < body->len; i++) {
        if (sdxl_json_get(def, body->keys[i])) continue;
        sdxl_sb_str(b, ",");
        sdxl_sb_json(b, body->keys[i]);
        sdxl_sb_str(b, ":");
        put_value(b, &body->items[i]);
    }
    sdxl_sb_str(b, "}");
    sdxl_json_free(def);
}

/* ---- ControlNet extension: alwayson_scripts.controlnet.args -> control units ---- */

static const char *const CN_TYPES[][2] = {
    {"canny", "canny"},       {"depth", "depth"},       {"openpose", "pose"}, {"pose", "pose"},
    {"scribble", "scribble"}, {"seg", "seg"},           {"normal", "normal"}, {"mlsd", "mlsd"},
    {"lineart", "lineart"},   {"softedge", "scribble"}, {NULL, NULL}};

static const char *cn_type(const char *module, const char *model) {
    for (int pass = 0; pass < 2; pass++) {
        const char *s = pass ? model : module;
        if (!s) continue;
        for (int i = 0; CN_TYPES[i][0]; i++)
            if (strcasestr(s, CN_TYPES[i][0])) return CN_TYPES[i][1];
    }
    return NULL;
}

typedef struct cn_units {
    sdxl_svc_control u[8];
    char model[8][256];
    int n;
} cn_units;

/* Reads the units; answers 422 (and returns -1) on a malformed one. Images are validated. */
static int read_controlnet(srv_req *r, const sdxl_json *body, cn_units *cn) {
    memset(cn, 0, sizeof *cn);
    const sdxl_json *as = sdxl_json_get(body, "alwayson_scripts");
    if (!as || as->type == SDXL_JSON_NULL) return 0;
    if (as->type != SDXL_JSON_OBJECT) {
        srv_error(r, 422, "type_error.dict", "alwayson_scripts", "alwayson_scripts: must be an object");
        return -1;
    }
    const sdxl_json *c = NULL;
    for (size_t i = 0; i < as->len; i++)
        if (!strcasecmp(as->keys[i], "controlnet")) c = &as->items[i];
    if (!c) return 0;
    const sdxl_json *args = c->type == SDXL_JSON_OBJECT ? sdxl_json_get(c, "args") : NULL;
    if (!args || args->type != SDXL_JSON_ARRAY) {
        srv_error(r, 422, "type_error.list", "alwayson_scripts.controlnet.args",
                  "alwayson_scripts.controlnet.args: must be a list of units");
        return -1;
    }
    for (size_t i = 0; i < args->len; i++) {
        const sdxl_json *a = &args->items[i];
        char f[96];
        snprintf(f, sizeof f, "alwayson_scripts.controlnet.args[%zu]", i);
        if (a->type != SDXL_JSON_OBJECT) {
            srv_error(r, 422, "type_error.dict", f, "%s: must be an object", f);
            return -1;
        }
        const sdxl_json *en = sdxl_json_get(a, "enabled");
        if (en && en->type == SDXL_JSON_BOOL && !en->boolean) continue;
        if (cn->n >= 8) {
            srv_error(r, 422, "value_error.too_many_units", f, "at most 8 ControlNet units");
            return -1;
        }
        const sdxl_json *im = sdxl_json_get(a, "input_image");
        if (!im) im = sdxl_json_get(a, "image");
        if (im && im->type == SDXL_JSON_OBJECT) im = sdxl_json_get(im, "image");
        if (!im || im->type != SDXL_JSON_STRING) {
            srv_error(r, 422, "value_error.missing", f, "%s.input_image: a base64 image is required", f);
            return -1;
        }
        char imf[128];
        snprintf(imf, sizeof imf, "%s.input_image", f);
        if (srv_check_image(r, imf, im->str)) return -1;
        sdxl_svc_control *u = &cn->u[cn->n];
        const char *model = sdxl_json_str(a, "model", NULL), *module = sdxl_json_str(a, "module", NULL);
        if (!model || !model[0] || !strcasecmp(model, "None")) {
            srv_error(r, 422, "value_error.missing", f, "%s.model: a ControlNet model name is required", f);
            return -1;
        }
        /* "diffusers_xl_canny_full [2b69fca4]" -> "diffusers_xl_canny_full" */
        snprintf(cn->model[cn->n], sizeof cn->model[0], "%s", model);
        char *br = strstr(cn->model[cn->n], " [");
        if (br) *br = 0;
        u->model = cn->model[cn->n];
        u->type = cn_type(module, model);
        u->image = im->str;
        u->scale = (float)sdxl_json_num(a, "weight", 1.0);
        u->guidance_start = (float)sdxl_json_num(a, "guidance_start", 0.0);
        u->guidance_end = (float)sdxl_json_num(a, "guidance_end", 1.0);
        u->preprocess = module && strcasecmp(module, "none") ? module : NULL;
        u->resolution = (int)sdxl_json_num(a, "processor_res", 0);
        if (u->resolution < 0) u->resolution = 0;
        cn->n++;
    }
    return 0;
}

/* ---- txt2img / img2img ---- */

typedef struct gen_wait {
    char id[64];
    int img2img;
} gen_wait;

static void gen_done(srv_req *r) {
    srv_hub_forget(r->srv->hub, r);
    free(r->async);
    r->async = NULL;
}

static void job_timestamp(char *buf, size_t cap, double created) {
    time_t t = created > 0 ? (time_t)created : time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, cap, "%Y%m%d%H%M%S", &tm);
}

static void put_info(sdxl_strbuf *b, const sdxl_job_info *j, const sdxl_json *body, char **infotexts, int n_txt) {
    sdxl_genmeta gm;
    sdxl_genmeta_init(&gm);
    if (n_txt > 0 && infotexts[0]) sdxl_genmeta_parse(infotexts[0], strlen(infotexts[0]), &gm, NULL);
    const char *prompt = sdxl_json_str(body, "prompt", ""), *neg = sdxl_json_str(body, "negative_prompt", "");
    int n = j->n_images > 0 ? j->n_images : 1;
    sdxl_sb_str(b, "{\"prompt\":");
    sdxl_sb_json(b, prompt);
    sdxl_sb_str(b, ",\"all_prompts\":[");
    for (int i = 0; i < n; i++) {
        if (i) sdxl_sb_str(b, ",");
        sdxl_sb_json(b, prompt);
    }
    sdxl_sb_str(b, "],\"negative_prompt\":");
    sdxl_sb_json(b, neg);
    sdxl_sb_str(b, ",\"all_negative_prompts\":[");
    for (int i = 0; i < n; i++) {
        if (i) sdxl_sb_str(b, ",");
        sdxl_sb_json(b, neg);
    }
    sdxl_sb_printf(b, "],\"seed\":%lld,\"all_seeds\":[", j->seeds ? (long long)j->seeds[0] : -1LL);
    for (int i = 0; i < j->n_images && j->seeds; i++) sdxl_sb_printf(b, "%s%lld", i ? "," : "", (long long)j->seeds[i]);
    sdxl_sb_printf(b, "],\"subseed\":-1,\"all_subseeds\":[");
    for (int i = 0; i < j->n_images; i++) sdxl_sb_str(b, i ? ",-1" : "-1");
    sdxl_sb_printf(b, "],\"subseed_strength\":0,\"width\":%d,\"height\":%d,\"sampler_name\":", j->width, j->height);
    if (gm.sampler) sdxl_sb_json(b, gm.sampler);
    else sdxl_sb_json(b, sdxl_json_str(body, "sampler_name", "Euler"));
    sdxl_sb_printf(b, ",\"cfg_scale\":%g,\"steps\":%d,\"batch_size\":%d,\"restore_faces\":false,"
                      "\"face_restoration_model\":null,\"sd_model_name\":",
                   gm.cfg_scale == gm.cfg_scale ? gm.cfg_scale : sdxl_json_num(body, "cfg_scale", 7.0),
                   gm.steps > 0 ? gm.steps : (int)sdxl_json_i64(body, "steps", 50),
                   (int)sdxl_json_i64(body, "batch_size", 1));
    if (gm.model) sdxl_sb_json(b, gm.model);
    else sdxl_sb_str(b, "null");
    sdxl_sb_str(b, ",\"sd_model_hash\":");
    if (gm.model_hash) sdxl_sb_json(b, gm.model_hash);
    else sdxl_sb_str(b, "null");
    sdxl_sb_str(b, ",\"sd_vae_name\":null,\"sd_vae_hash\":null,\"seed_resize_from_w\":-1,\"seed_resize_from_h\":-1,"
                   "\"denoising_strength\":");
    if (gm.denoising_strength == gm.denoising_strength) sdxl_sb_printf(b, "%g", gm.denoising_strength);
    else sdxl_sb_str(b, "null");
    sdxl_sb_str(b, ",\"extra_generation_params\":{");
    for (size_t i = 0; i < gm.n_extra; i++) {
        if (i) sdxl_sb_str(b, ",");
        sdxl_sb_json(b, gm.extra[i].key);
        sdxl_sb_str(b, ":");
        sdxl_sb_json(b, gm.extra[i].value);
    }
    sdxl_sb_str(b, "},\"index_of_first_image\":0,\"infotexts\":[");
    for (int i = 0; i < n_txt; i++) {
        if (i) sdxl_sb_str(b, ",");
        sdxl_sb_json(b, infotexts[i] ? infotexts[i] : "");
    }
    char ts[32];
    job_timestamp(ts, sizeof ts, j->created);
    sdxl_sb_printf(b, "],\"styles\":[],\"job_timestamp\":\"%s\",\"clip_skip\":%d,"
                      "\"is_using_inpainting_conditioning\":false,\"version\":\"sdxl %s\"}",
                   ts, gm.clip_skip > 0 ? gm.clip_skip : 1, sdxl_version());
    sdxl_genmeta_free(&gm);
}

static void gen_resume(srv_req *r) {
    gen_wait *w = r->async;
    sdxl_job_info j;
    if (!srv_hub_final(r->srv->hub, w->id, &j)) {
        srv_error(r, 500, "RuntimeError", NULL, "job %s ended without a result", w->id);
        return;
    }
    if (j.state == SDXL_JOB_FAILED) {
        sdxl_strbuf b = {0};
        sdxl_sb_str(&b, "{\"error\":");
        sdxl_sb_json(&b, j.error_code[0] ? j.error_code : "RuntimeError");
        sdxl_sb_str(&b, ",\"detail\":");
        sdxl_sb_json(&b, j.error);
        sdxl_sb_str(&b, ",\"body\":\"\",\"errors\":");
        sdxl_sb_json(&b, j.error);
        sdxl_sb_str(&b, "}");
        srv_take_json(r, 500, &b);
        sdxl_job_info_free(&j);
        return;
    }
    /* done, or cancelled (interrupt): A1111 answers 200 with what was finished */
    int send = sdxl_json_bool(r->json, "send_images", 1);
    char **texts = calloc((size_t)(j.n_done > 0 ? j.n_done : 1), sizeof *texts);
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"images\":[");
    int shown = 0;
    for (int i = 0; i < j.n_done && texts; i++) {
        uint8_t *p = NULL;
        size_t n = 0;
        if (srv_read_file(j.paths[i], (size_t)1 << 30, &p, &n)) continue;
        sdxl_image_meta meta;
        memset(&meta, 0, sizeof meta);
        sdxl_image img = {0};
        /* the file is ours, but read back through the validating decoder: its infotext is the truth */
        if (sdxl_image_decode(p, n, j.paths[i], NULL, 3, &img, &meta, NULL) == SDXL_OK && meta.parameters)
            texts[i] = strdup(meta.parameters);
        sdxl_image_free(&img);
        sdxl_image_meta_free(&meta);
        if (send) {
            size_t el = sdxl_b64_encoded_len(n);
            char *enc = el != SIZE_MAX ? malloc(el + 1) : NULL;
            if (enc) {
                sdxl_b64_encode(p, n, enc);
                sdxl_sb_str(&b, shown++ ? ",\"" : "\"");
                sdxl_sb_put(&b, enc, el);
                sdxl_sb_str(&b, "\"");
                free(enc);
            } else {
                b.oom = 1;
            }
        }
        free(p);
    }
    sdxl_sb_str(&b, "],\"parameters\":");
    put_parameters(&b, r->json, w->img2img);
    sdxl_strbuf info = {0};
    put_info(&info, &j, r->json, texts, j.n_done);
    sdxl_sb_str(&b, ",\"info\":");
    sdxl_sb_json(&b, info.p ? info.p : "{}");
    sdxl_sb_str(&b, "}");
    if (info.oom) b.oom = 1;
    sdxl_sb_free(&info);
    for (int i = 0; texts && i < j.n_done; i++) free(texts[i]);
    free(texts);
    sdxl_job_info_free(&j);
    srv_take_json(r, 200, &b);
}

static void generate(srv_req *r, int img2img) {
    sdxl_serve *s = r->srv;
    const sdxl_json *body = r->json;
    if (img2img) {
        const sdxl_json *ii = sdxl_json_get(body, "init_images");
        if (ii && ii->type == SDXL_JSON_ARRAY) {
            if (ii->len > (size_t)s->o.lim.max_images) {
                srv_error(r, 422, "value_error.too_many_images", "init_images", "at most %d init images",
                          s->o.lim.max_images);
                return;
            }
            for (size_t i = 0; i < ii->len; i++) {
                char f[48];
                snprintf(f, sizeof f, "init_images[%zu]", i);
                if (ii->items[i].type == SDXL_JSON_STRING && srv_check_image(r, f, ii->items[i].str)) return;
            }
        }
        const sdxl_json *m = sdxl_json_get(body, "mask");
        if (m && m->type == SDXL_JSON_STRING && srv_check_image(r, "mask", m->str)) return;
    }
    cn_units *cn = calloc(1, sizeof *cn);
    if (!cn) {
        srv_error(r, 503, "nomem", NULL, "out of memory");
        return;
    }
    if (read_controlnet(r, body, cn)) {
        free(cn);
        return;
    }
    sdxl_svc_request q;
    sdxl_svc_issues is;
    memset(&is, 0, sizeof is);
    if (sdxl_svc_request_parse(body, img2img ? SDXL_DIALECT_A1111_IMG2IMG : SDXL_DIALECT_A1111_TXT2IMG, &q, &is)) {
        srv_issues(r, &is);
        sdxl_svc_request_free(&q);
        free(cn);
        return;
    }
    if (srv_check_request(r, &q)) {
        sdxl_svc_request_free(&q);
        free(cn);
        return;
    }
    pthread_mutex_lock(&s->a1111_mu);
    if (!q.base && s->checkpoint[0]) q.base = sdxl_svc_request_strdup(&q, s->checkpoint);
    if (!q.vae && s->vae[0]) q.vae = sdxl_svc_request_strdup(&q, s->vae);
    if (!q.g.clip_skip && s->clip_stop > 1) q.g.clip_skip = s->clip_stop;
    if (!q.preview_every) q.preview_every = s->o.preview_every;
    pthread_mutex_unlock(&s->a1111_mu);
    sdxl_svc_control *saved = q.controls;
    int saved_n = q.n_controls;
    if (cn->n) {
        q.controls = cn->u;
        q.n_controls = cn->n;
    }
    sdxl_engine *eng = srv_eng(r);
    if (!eng) {
        q.controls = saved;
        q.n_controls = saved_n;
        sdxl_svc_request_free(&q);
        free(cn);
        return;
    }
    gen_wait *w = calloc(1, sizeof *w);
    int ok = w && srv_submit(r, eng, &q, w->id) == 0;
    srv_eng_done(r);
    q.controls = saved;
    q.n_controls = saved_n;
    sdxl_svc_request_free(&q);
    free(cn);
    if (!w) {
        srv_error(r, 503, "nomem", NULL, "out of memory");
        return;
    }
    if (!ok) {
        free(w);
        return;
    }
    w->img2img = img2img;
    srv_suspend(r, gen_resume, gen_done, w);
    srv_hub_wait(s->hub, w->id, r);
}

void a_txt2img(srv_req *r) { generate(r, 0); }
void a_img2img(srv_req *r) { generate(r, 1); }

/* ---- progress, interrupt, skip ---- */

void a_progress(srv_req *r) {
    const char *skip = srv_query(r, "skip_current_image");
    int want_png = !(skip && (!strcasecmp(skip, "true") || !strcmp(skip, "1")));
    srv_hub_progress p;
    srv_hub_progress_get(r->srv->hub, &p, want_png);
    int job_count = 0;
    sdxl_engine *eng = srv_eng(r);
    if (!eng) {
        free(p.png);
        return;
    }
    sdxl_engine_metrics m;
    sdxl_engine_metrics_get(eng, &m);
    srv_eng_done(r);
    job_count = m.queued + m.running;
    double progress = 0, eta = 0;
    if (p.active && p.steps > 0) {
        progress = (double)p.step / p.steps;
        if (!strcmp(p.phase, "decode") || !strcmp(p.phase, "write")) progress = 0.99;
        if (progress > 1) progress = 1;
        double el = sdxl_srv_now() - p.started;
        eta = p.eta_s >= 0 ? p.eta_s : (progress > 0.01 ? el / progress - el : 0);
    }
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b,
                   "{\"progress\":%.4f,\"eta_relative\":%.3f,\"state\":{\"skipped\":false,\"interrupted\":false,"
                   "\"stopping_generation\":false,\"job\":",
                   progress, eta);
    sdxl_sb_json(&b, p.active ? p.job : "");
    sdxl_sb_printf(&b, ",\"job_count\":%d,\"job_timestamp\":\"0\",\"job_no\":%d,\"sampling_step\":%d,"
                       "\"sampling_steps\":%d},\"current_image\":",
                   job_count, p.active ? p.image : 0, p.active ? p.step : 0, p.active ? p.steps : 0);
    if (p.active && p.png) {
        size_t el = sdxl_b64_encoded_len(p.png_len);
        char *enc = el != SIZE_MAX ? malloc(el + 1) : NULL;
        if (enc) {
            sdxl_b64_encode(p.png, p.png_len, enc);
            sdxl_sb_json(&b, enc);
            free(enc);
        } else {
            sdxl_sb_str(&b, "null");
        }
    } else {
        sdxl_sb_str(&b, "null");
    }
    sdxl_sb_str(&b, ",\"textinfo\":null,\"current_task\":");
    if (p.active) sdxl_sb_json(&b, p.job);
    else sdxl_sb_str(&b, "null");
    sdxl_sb_str(&b, "}");
    free(p.png);
    srv_take_json(r, 200, &b);
}

/* Cancels the running job (A1111 has one generation at a time; so does its view of our queue). */
static void cancel_current(srv_req *r) {
    srv_hub_progress p;
    srv_hub_progress_get(r->srv->hub, &p, 0);
    if (!p.active) return;
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_engine_cancel(eng, p.job);
    srv_eng_done(r);
    snprintf(r->job, sizeof r->job, "%s", p.job);
}

void a_interrupt(srv_req *r) {
    cancel_current(r);
    if (!r->status) srv_json(r, 200, "{}");
}

void a_skip(srv_req *r) {
    cancel_current(r);
    if (!r->status) srv_json(r, 200, "null");
}

/* ---- options ---- */

void a_options_get(srv_req *r) {
    sdxl_serve *s = r->srv;
    char ckpt[512], vae[512];
    int clip;
    pthread_mutex_lock(&s->a1111_mu);
    snprintf(ckpt, sizeof ckpt, "%s", s->checkpoint);
    snprintf(vae, sizeof vae, "%s", s->vae[0] ? s->vae : "Automatic");
    clip = s->clip_stop;
    pthread_mutex_unlock(&s->a1111_mu);
    if (!ckpt[0] && s->ecfg && s->ecfg->default_model) snprintf(ckpt, sizeof ckpt, "%s", s->ecfg->default_model);
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"sd_model_checkpoint\":");
    sdxl_sb_json(&b, ckpt);
    sdxl_sb_str(&b, ",\"sd_vae\":");
    sdxl_sb_json(&b, vae);
    sdxl_sb_printf(&b, ",\"CLIP_stop_at_last_layers\":%d,\"samples_format\":\"png\",\"enable_pnginfo\":true,"
                       "\"sd_checkpoint_hash\":null,\"outdir_samples\":",
                   clip);
    sdxl_sb_json(&b, s->ecfg && s->ecfg->output_root ? s->ecfg->output_root : ".");
    sdxl_sb_str(&b, ",\"live_previews_enable\":true,\"show_progress_every_n_steps\":1}");
    srv_take_json(r, 200, &b);
}

static void strip_hash(char *s) {
    char *br = strstr(s, " [");
    if (br) *br = 0;
}

void a_options_set(srv_req *r) {
    sdxl_serve *s = r->srv;
    const sdxl_json *o = r->json;
    char ckpt[512] = "", vae[512] = "";
    int set_ckpt = 0, set_vae = 0, clip = 0;
    const sdxl_json *v = sdxl_json_get(o, "sd_model_checkpoint");
    if (v) {
        if (v->type != SDXL_JSON_STRING) {
            srv_error(r, 422, "type_error.str", "sd_model_checkpoint", "sd_model_checkpoint: must be a string");
            return;
        }
        snprintf(ckpt, sizeof ckpt, "%s", v->str);
        strip_hash(ckpt);
        set_ckpt = 1;
    }
    v = sdxl_json_get(o, "sd_vae");
    if (v) {
        if (v->type != SDXL_JSON_STRING) {
            srv_error(r, 422, "type_error.str", "sd_vae", "sd_vae: must be a string");
            return;
        }
        snprintf(vae, sizeof vae, "%s", v->str);
        strip_hash(vae);
        if (!strcmp(vae, "Automatic") || !strcmp(vae, "None")) vae[0] = 0;
        set_vae = 1;
    }
    v = sdxl_json_get(o, "CLIP_stop_at_last_layers");
    if (v) {
        if (v->type != SDXL_JSON_NUMBER || !v->is_int || v->integer < 1 || v->integer > 12) {
            srv_error(r, 422, "value_error.number", "CLIP_stop_at_last_layers",
                      "CLIP_stop_at_last_layers: an integer 1..12");
            return;
        }
        clip = (int)v->integer;
    }
    if ((set_ckpt && ckpt[0]) || (set_vae && vae[0])) {
        sdxl_engine *eng = srv_eng(r);
        if (!eng) return;
        char path[1024], err[512];
        int bad = 0;
        if (set_ckpt && ckpt[0] && sdxl_engine_resolve(eng, "model", ckpt, path, sizeof path, err, sizeof err)) {
            srv_error(r, 422, "value_error.model", "sd_model_checkpoint", "sd_model_checkpoint: %s", err);
            bad = 1;
        } else if (set_vae && vae[0] && sdxl_engine_resolve(eng, "vae", vae, path, sizeof path, err, sizeof err)) {
            srv_error(r, 422, "value_error.vae", "sd_vae", "sd_vae: %s", err);
            bad = 1;
        }
        srv_eng_done(r);
        if (bad) return;
    }
    pthread_mutex_lock(&s->a1111_mu);
    if (set_ckpt) snprintf(s->checkpoint, sizeof s->checkpoint, "%s", ckpt);
    if (set_vae) snprintf(s->vae, sizeof s->vae, "%s", vae);
    if (clip) s->clip_stop = clip;
    pthread_mutex_unlock(&s->a1111_mu);
    srv_json(r, 200, "null");
}

/* ---- listings ---- */

void a_sd_models(srv_req *r) {
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_strbuf arr = {0};
    int st = sdxl_engine_models(eng, &arr);
    srv_eng_done(r);
    sdxl_json *list = NULL;
    if (st || !arr.p || sdxl_json_parse(arr.p, arr.n, NULL, "models", &list, NULL) || list->type != SDXL_JSON_ARRAY) {
        sdxl_sb_free(&arr);
        sdxl_json_free(list);
        srv_error(r, 500, "RuntimeError", NULL, "cannot list models");
        return;
    }
    sdxl_sb_free(&arr);
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "[");
    for (size_t i = 0; i < list->len; i++) {
        const sdxl_json *it = &list->items[i];
        const char *name = it->type == SDXL_JSON_STRING ? it->str : sdxl_json_str(it, "name", "");
        const char *path = it->type == SDXL_JSON_STRING ? it->str : sdxl_json_str(it, "path", name);
        if (i) sdxl_sb_str(&b, ",");
        sdxl_sb_str(&b, "{\"title\":");
        sdxl_sb_json(&b, name);
        sdxl_sb_str(&b, ",\"model_name\":");
        sdxl_sb_json(&b, name);
        sdxl_sb_str(&b, ",\"hash\":null,\"sha256\":null,\"filename\":");
        sdxl_sb_json(&b, path);
        sdxl_sb_str(&b, ",\"config\":null}");
    }
    sdxl_sb_str(&b, "]");
    sdxl_json_free(list);
    srv_take_json(r, 200, &b);
}

static void named_files(srv_req *r, const sdxl_strbuf *files, int lora) {
    sdxl_json *list = NULL;
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "[");
    if (files->p && sdxl_json_parse(files->p, files->n, NULL, "files", &list, NULL) == SDXL_OK) {
        for (size_t i = 0; i < list->len; i++) {
            const char *name = sdxl_json_str(&list->items[i], "name", ""),
                       *path = sdxl_json_str(&list->items[i], "path", "");
            sdxl_sb_str(&b, i ? ",{\"" : "{\"");
            sdxl_sb_str(&b, lora ? "name\":" : "model_name\":");
            sdxl_sb_json(&b, name);
            if (lora) {
                sdxl_sb_str(&b, ",\"alias\":");
                sdxl_sb_json(&b, name);
                sdxl_sb_str(&b, ",\"path\":");
            } else {
                sdxl_sb_str(&b, ",\"filename\":");
            }
            sdxl_sb_json(&b, path);
            if (lora) sdxl_sb_str(&b, ",\"metadata\":{}");
            sdxl_sb_str(&b, "}");
        }
    }
    sdxl_json_free(list);
    sdxl_sb_str(&b, "]");
    srv_take_json(r, 200, &b);
}

void a_sd_vae(srv_req *r) {
    const sdxl_engine_config *c = r->srv->ecfg;
    static const char *const sub[] = {"VAE", "vae", NULL};
    sdxl_strbuf own = {0}, in = {0}, all = {0};
    srv_list_files(c->vae_dirs, c->n_vae_dirs, NULL, &own);
    srv_list_files(c->models_dirs, c->n_models_dirs, sub, &in);
    sdxl_sb_put(&all, own.p, own.n - 1);
    if (own.n > 2 && in.n > 2) sdxl_sb_str(&all, ",");
    sdxl_sb_put(&all, in.p + 1, in.n - 1);
    named_files(r, &all, 0);
    sdxl_sb_free(&own);
    sdxl_sb_free(&in);
    sdxl_sb_free(&all);
}

void a_loras(srv_req *r) {
    sdxl_strbuf files = {0};
    srv_list_kind(r, 1, &files);
    named_files(r, &files, 1);
    sdxl_sb_free(&files);
}

void a_samplers(srv_req *r) {
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "[");
    int first = 1;
    for (int k = 0; k < SDXL_SAMPLER_COUNT; k++) {
        const sdxl_sampler_traits *t = sdxl_sampler_traits_get((sdxl_sampler_kind)k);
        if (!t->implemented || !t->a1111 || !t->a1111[0]) continue;
        sdxl_sb_str(&b, first ? "{\"name\":" : ",{\"name\":");
        first = 0;
        sdxl_sb_json(&b, t->a1111);
        sdxl_sb_str(&b, ",\"aliases\":[");
        int na = 0;
        for (size_t i = 0; i < sdxl_sched_alias_count(); i++) {
            const sdxl_sched_alias *a = sdxl_sched_alias_at(i);
            if (a->sampler != (sdxl_sampler_kind)k || a->schedule != SDXL_SCHEDULE_DEFAULT || !strcmp(a->name, t->a1111))
                continue;
            if (strncmp(a->dialect, "a1111", 5) && strcmp(a->dialect, "k-diffusion")) continue;
            if (na++) sdxl_sb_str(&b, ",");
            sdxl_sb_json(&b, a->name);
        }
        sdxl_sb_str(&b, "],\"options\":{}}");
    }
    sdxl_sb_str(&b, "]");
    srv_take_json(r, 200, &b);
}

void a_schedulers(srv_req *r) {
    static const struct {
        sdxl_schedule_kind k;
        const char *name, *label;
        double rho;
    } T[] = {{SDXL_SCHEDULE_DEFAULT, "automatic", "Automatic", -1},
             {SDXL_SCHEDULE_NORMAL, "uniform", "Uniform", -1},
             {SDXL_SCHEDULE_KARRAS, "karras", "Karras", 7.0},
             {SDXL_SCHEDULE_EXPONENTIAL, "exponential", "Exponential", -1},
             {SDXL_SCHEDULE_SGM_UNIFORM, "sgm_uniform", "SGM Uniform", -1},
             {SDXL_SCHEDULE_SIMPLE, "simple", "Simple", -1},
             {SDXL_SCHEDULE_DDIM_UNIFORM, "ddim", "DDIM", -1},
             {SDXL_SCHEDULE_BETA, "beta", "Beta", -1},
             {SDXL_SCHEDULE_AYS, "align_your_steps", "Align Your Steps", -1}};
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "[");
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        sdxl_sb_printf(&b, "%s{\"name\":\"%s\",\"label\":\"%s\",\"aliases\":", i ? "," : "", T[i].name, T[i].label);
        if (T[i].k != SDXL_SCHEDULE_DEFAULT) sdxl_sb_printf(&b, "[\"%s\"]", sdxl_schedule_name(T[i].k));
        else sdxl_sb_str(&b, "null");
        sdxl_sb_printf(&b, ",\"default_rho\":%g,\"need_inner_model\":false}", T[i].rho);
    }
    sdxl_sb_str(&b, "]");
    srv_take_json(r, 200, &b);
}

void a_refresh(srv_req *r) {
    /* listings scan the folders on every call: nothing is cached to refresh */
    srv_json(r, 200, "null");
}

void a_png_info(srv_req *r) {
    const sdxl_json *im = sdxl_json_get(r->json, "image");
    if (!im || im->type != SDXL_JSON_STRING) {
        srv_error(r, 422, "value_error.missing", "image", "image: a base64 PNG/JPEG/WebP is required");
        return;
    }
    if (!im->str[0]) {
        srv_error(r, 404, "not_found", "image", "Image not found");
        return;
    }
    sdxl_err e = {0};
    uint8_t *bytes = NULL;
    size_t n = 0;
    int st = sdxl_b64_decode(im->str, im->len, r->srv->o.lim.max_image_bytes, "image", &bytes, &n, &e);
    if (st) {
        srv_error(r, st == SDXL_ERR_LIMIT ? 413 : 422, "value_error.base64", "image", "%s", e.msg);
        return;
    }
    sdxl_image_limits il;
    sdxl_image_limits_init(&il);
    il.max_bytes = r->srv->o.lim.max_image_bytes;
    il.max_pixels = r->srv->o.lim.max_pixels;
    sdxl_image img = {0};
    sdxl_image_meta meta;
    memset(&meta, 0, sizeof meta);
    st = sdxl_image_decode(bytes, n, "image", &il, 3, &img, &meta, &e);
    free(bytes);
    sdxl_image_free(&img);
    if (st) {
        srv_error(r, st == SDXL_ERR_LIMIT ? 413 : 422, "value_error.image", "image", "%s", e.msg);
        return;
    }
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"info\":");
    sdxl_sb_json(&b, meta.parameters ? meta.parameters : "");
    sdxl_sb_str(&b, ",\"items\":{");
    int first = 1;
    for (size_t i = 0; i < meta.n_texts; i++) {
        if (meta.texts[i].value == meta.parameters) continue;
        if (!first) sdxl_sb_str(&b, ",");
        first = 0;
        sdxl_sb_json(&b, meta.texts[i].key);
        sdxl_sb_str(&b, ":");
        sdxl_sb_json(&b, meta.texts[i].value);
    }
    sdxl_sb_str(&b, "},\"parameters\":{");
    if (meta.parameters) {
        sdxl_genmeta gm;
        sdxl_genmeta_init(&gm);
        if (sdxl_genmeta_parse(meta.parameters, strlen(meta.parameters), &gm, NULL) == SDXL_OK) {
            sdxl_sb_str(&b, "\"Prompt\":");
            sdxl_sb_json(&b, gm.prompt ? gm.prompt : "");
            sdxl_sb_str(&b, ",\"Negative prompt\":");
            sdxl_sb_json(&b, gm.negative_prompt ? gm.negative_prompt : "");
            if (gm.steps > 0) sdxl_sb_printf(&b, ",\"Steps\":\"%d\"", gm.steps);
            if (gm.sampler) {
                sdxl_sb_str(&b, ",\"Sampler\":");
                sdxl_sb_json(&b, gm.sampler);
            }
            if (gm.schedule) {
                sdxl_sb_str(&b, ",\"Schedule type\":");
                sdxl_sb_json(&b, gm.schedule);
            }
            if (gm.cfg_scale == gm.cfg_scale) sdxl_sb_printf(&b, ",\"CFG scale\":\"%g\"", gm.cfg_scale);
            if (gm.seed >= 0) sdxl_sb_printf(&b, ",\"Seed\":\"%lld\"", (long long)gm.seed);
            if (gm.width > 0) sdxl_sb_printf(&b, ",\"Size-1\":\"%d\",\"Size-2\":\"%d\"", gm.width, gm.height);
            if (gm.model_hash) {
                sdxl_sb_str(&b, ",\"Model hash\":");
                sdxl_sb_json(&b, gm.model_hash);
            }
            if (gm.model) {
                sdxl_sb_str(&b, ",\"Model\":");
                sdxl_sb_json(&b, gm.model);
            }
            for (size_t i = 0; i < gm.n_extra; i++) {
                sdxl_sb_str(&b, ",");
                sdxl_sb_json(&b, gm.extra[i].key);
                sdxl_sb_str(&b, ":");
                sdxl_sb_json(&b, gm.extra[i].value);
            }
        }
        sdxl_genmeta_free(&gm);
    }
    sdxl_sb_str(&b, "}}");
    sdxl_image_meta_free(&meta);
    srv_take_json(r, 200, &b);
}

void a_memory(srv_req *r) {
    sdxl_mem_stats m;
    sdxl_mem_query(&m);
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b,
                   "{\"ram\":{\"free\":%llu,\"used\":%llu,\"total\":%llu},"
                   "\"cuda\":{\"error\":\"no CUDA device: this server computes on the CPU\"}}",
                   (unsigned long long)m.mem_available, (unsigned long long)m.rss, (unsigned long long)m.mem_total);
    srv_take_json(r, 200, &b);
}

void a_cmd_flags(srv_req *r) {
    sdxl_serve *s = r->srv;
    const sdxl_engine_config *c = s->ecfg;
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"listen\":");
    sdxl_sb_str(&b, strncmp(s->o.listen, "127.", 4) && strncmp(s->o.listen, "[::1]", 5) &&
                            strncmp(s->o.listen, "localhost", 9)
                        ? "true"
                        : "false");
    sdxl_sb_printf(&b, ",\"port\":%d,\"api\":true,\"nowebui\":true,\"api_auth\":%s,\"api_log\":%s,\"ckpt_dir\":",
                   s->port, s->api_auth ? "\"***\"" : "null", s->o.access_log ? "true" : "false");
    if (c && c->n_models_dirs) sdxl_sb_json(&b, c->models_dirs[0]);
    else sdxl_sb_str(&b, "null");
    sdxl_sb_str(&b, ",\"lora_dir\":");
    if (c && c->n_lora_dirs) sdxl_sb_json(&b, c->lora_dirs[0]);
    else sdxl_sb_str(&b, "null");
    sdxl_sb_str(&b, ",\"vae_dir\":");
    if (c && c->n_vae_dirs) sdxl_sb_json(&b, c->vae_dirs[0]);
    else sdxl_sb_str(&b, "null");
    sdxl_sb_str(&b, ",\"data_dir\":");
    sdxl_sb_json(&b, c && c->output_root ? c->output_root : ".");
    sdxl_sb_str(&b, ",\"use_cpu\":[\"all\"],\"skip_torch_cuda_test\":true,\"precision\":");
    sdxl_sb_json(&b, c && c->precision ? c->precision : "auto");
    sdxl_sb_str(&b, "}");
    srv_take_json(r, 200, &b);
}
