/* ControlNet units of a request (see control.h). diffusers 0.26.3 StableDiffusionXLControlNetPipeline
 * semantics: control image as float [0, 1] RGB, the ControlNet fed the UNet's own (scaled) input,
 * context and added conditions, residuals scaled inside the ControlNet and summed over units
 * (MultiControlNetModel), keep = !(i/n < start || (i+1)/n > end), guess mode on the conditional
 * half only. Units outside their window are skipped rather than run at scale 0 (same sum). */
#include "pipeline/control.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/preprocess.h"
#include "pipeline/pipeline.h"

#define CACHE_MAX 8
#define MAX_SIDE 8192

struct sdxl_pl_cn_cache {
    int n;
    char *path[CACHE_MAX];
    sdxl_controlnet *cn[CACHE_MAX];
};

void sdxl_pl_cn_cache_free(sdxl_pl_cn_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) {
        free(c->path[i]);
        sdxl_controlnet_free(c->cn[i]);
    }
    free(c);
}

typedef struct unit {
    sdxl_controlnet *cn;
    float scale, start, end;
    int guess;
    float *hint; /* [1, h, w, ch0], in the context's memory */
} unit;

struct sdxl_pl_ctrl {
    int n;
    unit u[SDXL_PL_MAX_CONTROLS];
    int ns;                 /* skips of the base UNet */
    int64_t rows, B, h, w;
    int cfg;
    sdxl_compute *c;        /* the UNet's: residual sums and hints live in its memory (a device's too) */
    float *acc[64];         /* summed residuals per skip, channels-last [rows, h_i, w_i, c_i] */
    size_t acc_n[64];
    float *acc_mid;
    size_t acc_mid_n;
    float *x4;              /* 4-channel ControlNet input when the UNet takes 9 (inpainting) */
    float *host[65];        /* host copies of acc and acc_mid for trace hooks (device contexts) */
    const sdxl_unet *unet;
};

float sdxl_pl_ctrl_scale(const sdxl_control_spec *s) { return s->scale == 0 ? 1.0f : s->scale; }
float sdxl_pl_ctrl_end(const sdxl_control_spec *s) { return s->guidance_end == 0 ? 1.0f : s->guidance_end; }

int sdxl_pl_ctrl_check(const sdxl_gen_params *p, sdxl_err *e) {
    if (p->n_controls < 0 || (p->n_controls && !p->controls))
        return sdxl_seterr(e, SDXL_ERR_ARG, "controls: n_controls %d without a list", p->n_controls);
    if (p->n_controls > SDXL_PL_MAX_CONTROLS)
        return sdxl_seterr(e, SDXL_ERR_ARG, "controls: at most %d ControlNet units, got %d", SDXL_PL_MAX_CONTROLS,
                           p->n_controls);
    if (p->n_control_dirs < 0 || (p->n_control_dirs && !p->control_dirs))
        return sdxl_seterr(e, SDXL_ERR_ARG, "control_dirs: n_control_dirs %d without a list", p->n_control_dirs);
    for (int i = 0; i < p->n_controls; i++) {
        const sdxl_control_spec *s = &p->controls[i];
        if (!s->model || !*s->model) return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].model: a ControlNet is required", i);
        if (!s->image) return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].image: a control image is required", i);
        if (s->image_width < 1 || s->image_height < 1 || s->image_width > MAX_SIDE || s->image_height > MAX_SIDE)
            return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].image: size %dx%d must be 1..%d a side", i,
                               s->image_width, s->image_height, MAX_SIDE);
        float sc = sdxl_pl_ctrl_scale(s), st = s->guidance_start, en = sdxl_pl_ctrl_end(s);
        if (!isfinite(sc) || sc < 0 || sc > 2)
            return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].scale: must be in [0, 2], got %g", i, s->scale);
        if (!isfinite(st) || st < 0 || st > 1)
            return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].guidance_start: must be in [0, 1], got %g", i, st);
        if (!isfinite(en) || en < 0 || en > 1)
            return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].guidance_end: must be in [0, 1], got %g", i, en);
        if (st > en)
            return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].guidance_start: %g is after guidance_end %g", i, st, en);
        if ((unsigned)s->resize > SDXL_RESIZE_FILL)
            return sdxl_seterr(e, SDXL_ERR_ARG, "controls[%d].resize: %d is not a resize mode (0 just, 1 crop, 2 fill)",
                               i, (int)s->resize);
        sdxl_preprocess pp;
        if (sdxl_preprocess_parse(s->preprocess, &pp, e)) return sdxl_err_prefix(e, "controls[%d]", i);
    }
    return SDXL_OK;
}

static int exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* A path as given, else name, name.safetensors inside each control dir. */
static int find_model(const sdxl_gen_params *p, int i, char *out, size_t cap, sdxl_err *e) {
    const char *name = p->controls[i].model;
    if (exists(name)) {
        snprintf(out, cap, "%s", name);
        return SDXL_OK;
    }
    for (int d = 0; d < p->n_control_dirs; d++) {
        const char *suf[] = {"", ".safetensors"};
        for (int k = 0; k < 2; k++) {
            if ((size_t)snprintf(out, cap, "%s/%s%s", p->control_dirs[d], name, suf[k]) < cap && exists(out))
                return SDXL_OK;
        }
    }
    return sdxl_seterr(e, SDXL_ERR_IO, "controls[%d].model: \"%s\" not found (%d control dir%s searched)", i, name,
                       p->n_control_dirs, p->n_control_dirs == 1 ? "" : "s");
}

static int get_cn(sdxl_pl_model *m, const char *path, const sdxl_logger *log, sdxl_controlnet **out, sdxl_err *e) {
    if (!m->cn_cache && !(m->cn_cache = calloc(1, sizeof *m->cn_cache)))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    sdxl_pl_cn_cache *c = m->cn_cache;
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->path[i], path)) {
            *out = c->cn[i];
            return SDXL_OK;
        }
    sdxl_controlnet *cn = NULL;
    int st = sdxl_controlnet_load(m->c, path, m->base_unet, m->base_ck, log, &cn, e);
    if (st) return st;
    if (c->n == CACHE_MAX) { /* the oldest goes */
        free(c->path[0]);
        sdxl_controlnet_free(c->cn[0]);
        memmove(c->path, c->path + 1, sizeof *c->path * (CACHE_MAX - 1));
        memmove(c->cn, c->cn + 1, sizeof *c->cn * (CACHE_MAX - 1));
        c->n--;
    }
    if (!(c->path[c->n] = strdup(path))) {
        sdxl_controlnet_free(cn);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    }
    c->cn[c->n++] = cn;
    *out = cn;
    return SDXL_OK;
}

void sdxl_pl_ctrl_free(sdxl_pl_ctrl *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) sdxl_compute_release(c->c, c->u[i].hint);
    for (int i = 0; i < 64; i++) sdxl_compute_release(c->c, c->acc[i]);
    sdxl_compute_release(c->c, c->acc_mid);
    for (int i = 0; i < 65; i++) free(c->host[i]);
    free(c->x4);
    free(c);
}

int sdxl_pl_ctrl_count(const sdxl_pl_ctrl *c) { return c ? c->n : 0; }

/* Control image -> W x H by the resize mode -> preprocessor -> float [0, 1] -> hint embedding. */
static int prepare_unit(sdxl_compute *c, const sdxl_control_spec *s, int i, unit *u, int W, int H, sdxl_err *e) {
    size_t npx = (size_t)W * (size_t)H;
    uint8_t *fit = malloc(npx * 3), *pre = malloc(npx * 3);
    float *f = malloc(npx * 3 * sizeof(float));
    const sdxl_unet_cfg *tc = sdxl_unet_config(sdxl_controlnet_trunk(u->cn));
    u->hint = sdxl_compute_alloc(c, npx / 64 * (size_t)tc->ch[0] * sizeof(float), NULL);
    int st = SDXL_OK;
    if (!fit || !pre || !f || !u->hint) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "controls[%d]: out of memory", i);
    sdxl_preprocess pp;
    if (!st) st = sdxl_preprocess_parse(s->preprocess, &pp, e);
    if (!st) st = sdxl_control_fit(s->image, s->image_width, s->image_height, (int)s->resize, fit, W, H, e);
    if (!st) st = sdxl_preprocess_run(&pp, fit, W, H, pre, e);
    if (!st) {
        for (size_t k = 0; k < npx * 3; k++) f[k] = (float)pre[k] / 255.0f;
        st = sdxl_controlnet_hint(u->cn, f, 1, H, W, u->hint, e);
    }
    free(fit);
    free(pre);
    free(f);
    return st ? sdxl_err_prefix(e, "controls[%d]", i) : SDXL_OK;
}

int sdxl_pl_ctrl_new(sdxl_pl_model *m, const sdxl_gen_params *p, int W, int H, const sdxl_logger *log,
                     sdxl_pl_ctrl **out, sdxl_err *e) {
    *out = NULL;
    if (!p->n_controls) return SDXL_OK;
    if (m->one_shot)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "controls: a one_shot model cannot run ControlNet units; load it whole");
    sdxl_pl_ctrl *c = calloc(1, sizeof *c);
    if (!c) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    c->unet = m->base_unet;
    c->c = m->c;
    c->ns = sdxl_unet_n_skips(m->base_unet);
    int st = SDXL_OK;
    for (int i = 0; i < p->n_controls && !st; i++) {
        const sdxl_control_spec *s = &p->controls[i];
        unit *u = &c->u[c->n++];
        u->scale = sdxl_pl_ctrl_scale(s);
        u->start = s->guidance_start;
        u->end = sdxl_pl_ctrl_end(s);
        u->guess = s->guess_mode != 0;
        char path[4096];
        st = find_model(p, i, path, sizeof path, e);
        if (!st) {
            pthread_mutex_lock(&m->mu);
            st = get_cn(m, path, log, &u->cn, e);
            if (st) sdxl_err_prefix(e, "controls[%d].model", i);
            else st = prepare_unit(m->c, s, i, u, W, H, e);
            pthread_mutex_unlock(&m->mu);
        }
    }
    if (st) {
        sdxl_pl_ctrl_free(c);
        return st;
    }
    *out = c;
    return SDXL_OK;
}

int sdxl_pl_ctrl_bind(sdxl_pl_ctrl *c, int64_t rows, int B, int cfg, int64_t h, int64_t w, sdxl_err *e) {
    for (int i = 0; i < 64; i++) {
        sdxl_compute_release(c->c, c->acc[i]);
        c->acc[i] = NULL;
    }
    for (int i = 0; i < 65; i++) {
        free(c->host[i]);
        c->host[i] = NULL;
    }
    sdxl_compute_release(c->c, c->acc_mid);
    free(c->x4);
    c->acc_mid = c->x4 = NULL;
    c->rows = rows;
    c->B = B;
    c->cfg = cfg;
    c->h = h;
    c->w = w;
    if (c->ns > 64) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "ControlNet: %d skips", c->ns);
    int64_t oh = 0, ow = 0, oc = 0;
    for (int i = 0; i < c->ns; i++) {
        sdxl_unet_skip_shape(c->unet, i, h, w, &oh, &ow, &oc);
        c->acc_n[i] = (size_t)(rows * oh * ow * oc);
        if (!(c->acc[i] = sdxl_compute_alloc(c->c, c->acc_n[i] * sizeof(float), e)))
            return sdxl_err_prefix(e, "ControlNet: residual %d", i);
    }
    const sdxl_unet_cfg *g = sdxl_unet_config(c->unet);
    c->acc_mid_n = (size_t)(rows * oh * ow * g->ch[g->levels - 1]); /* the mid block runs at the last skip's size */
    c->x4 = g->in_ch != 4 ? malloc((size_t)(rows * 4 * h * w) * sizeof(float)) : NULL;
    if (g->in_ch != 4 && !c->x4) return sdxl_seterr(e, SDXL_ERR_NOMEM, "ControlNet: out of memory for the residuals");
    if (!(c->acc_mid = sdxl_compute_alloc(c->c, c->acc_mid_n * sizeof(float), e)))
        return sdxl_err_prefix(e, "ControlNet: the mid residual");
    return SDXL_OK;
}

int sdxl_pl_ctrl_estimate(sdxl_pl_ctrl *c, int64_t rows, int B, int cfg, int64_t h, int64_t w, int64_t T,
                          uint64_t *bytes, sdxl_err *e) {
    uint64_t worst = 0, acc = 0;
    for (int i = 0; i < c->n; i++) {
        size_t b = 0;
        int64_t r = c->u[i].guess && cfg ? B : rows;
        int st = sdxl_controlnet_estimate(c->u[i].cn, r, h, w, T, &b, e);
        if (st) return st;
        if (b > worst) worst = b;
    }
    for (int i = 0; i < c->ns; i++) {
        int64_t oh, ow, oc;
        sdxl_unet_skip_shape(c->unet, i, h, w, &oh, &ow, &oc);
        acc += (uint64_t)(rows * oh * ow * oc) * sizeof(float);
    }
    *bytes = worst + 2 * acc; /* residual sums plus the mid one and a 4-channel input, bounded by one more set */
    return SDXL_OK;
}

int sdxl_pl_ctrl_run(sdxl_pl_ctrl *c, sdxl_unet_in *in, int64_t in_ch, int i, int n, unsigned *active, sdxl_err *e) {
    *active = 0;
    in->ctrl_down = NULL;
    in->n_ctrl_down = 0;
    in->ctrl_mid = NULL;
    if (!c || n <= 0) return SDXL_OK;
    for (int k = 0; k < c->n; k++) {
        double a = (double)i / n, b = (double)(i + 1) / n;
        if (!(a < c->u[k].start || b > c->u[k].end)) *active |= 1u << k;
    }
    if (!*active) return SDXL_OK;
    if (in->batch != c->rows) return sdxl_seterr(e, SDXL_ERR_INTERNAL, "ControlNet: bound for %lld rows, got %lld",
                                                 (long long)c->rows, (long long)in->batch);
    int st = SDXL_OK;
    for (int s = 0; s < c->ns && !st; s++) st = sdxl_op_fill(c->c, c->acc[s], 0.0f, (int64_t)c->acc_n[s], e);
    if (!st) st = sdxl_op_fill(c->c, c->acc_mid, 0.0f, (int64_t)c->acc_mid_n, e);
    if (st) return sdxl_err_prefix(e, "ControlNet");
    const float *x = in->x;
    size_t hw = (size_t)(in->h * in->w);
    if (in_ch != 4) { /* the ControlNet sees the latents, not the inpainting UNet's mask channels */
        for (int64_t r = 0; r < in->batch && !st; r++)
            st = sdxl_op_copy(c->c, c->x4 + (size_t)r * 4 * hw, in->x + (size_t)r * (size_t)in_ch * hw,
                              4 * hw * sizeof(float), e);
        if (st) return st;
        x = c->x4;
    }
    const sdxl_unet_cfg *g = sdxl_unet_config(c->unet);
    for (int k = 0; k < c->n; k++) {
        if (!(*active & (1u << k))) continue;
        const unit *u = &c->u[k];
        sdxl_unet_in ci = *in;
        ci.x = x;
        ci.ctrl_down = NULL;
        ci.n_ctrl_down = 0;
        ci.ctrl_mid = NULL;
        ci.ctrl_hint = u->hint;
        ci.ctrl_hint_rows = 1;
        int64_t row0 = 0;
        if (u->guess && c->cfg) { /* the conditional half only; the uncond rows get zeros */
            row0 = c->B;
            ci.batch = c->B;
            ci.x = x + (size_t)row0 * 4 * hw;
            ci.t = in->t + row0;
            ci.context = in->context + (size_t)(row0 * in->ctx_len * g->context_dim);
            ci.pooled = in->pooled + (size_t)(row0 * in->pooled_dim);
            ci.time_ids = in->time_ids + (size_t)(row0 * in->n_time_ids);
        }
        st = sdxl_controlnet_apply(u->cn, &ci, u->scale, u->guess, c->acc, c->acc_mid, row0, e);
        if (st) return sdxl_err_prefix(e, "controls[%d]", k);
    }
    in->ctrl_down = (const float *const *)c->acc;
    in->n_ctrl_down = c->ns;
    in->ctrl_mid = c->acc_mid;
    return SDXL_OK;
}

int sdxl_pl_ctrl_host_view(sdxl_pl_ctrl *c, sdxl_unet_in *in, sdxl_err *e) {
    if (!c || !in->ctrl_down || !sdxl_compute_is_device(c->c)) return SDXL_OK;
    for (int i = 0; i <= c->ns; i++) {
        size_t n = i < c->ns ? c->acc_n[i] : c->acc_mid_n;
        if (!c->host[i] && !(c->host[i] = malloc(n * sizeof(float))))
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "ControlNet: out of memory");
        int st = sdxl_op_copy(c->c, c->host[i], i < c->ns ? c->acc[i] : c->acc_mid, n * sizeof(float), e);
        if (st) return st;
    }
    in->ctrl_down = (const float *const *)c->host;
    in->ctrl_mid = c->host[c->ns];
    return SDXL_OK;
}

void sdxl_pl_ctrl_trim(sdxl_pl_ctrl *c) {
    if (!c) return;
    for (int k = 0; k < c->n; k++) sdxl_controlnet_trim(c->u[k].cn);
}
