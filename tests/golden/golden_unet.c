/* UNet goldens: every case of unet_base / unet_refiner, run in f32 from both checkpoint layouts
 * (the single file and the diffusers folder of the same tiny model). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise/unet.h"
#include "golden.h"

/* Max abs 1e-4: the reference's own fp32-vs-fp64 spread is up to 9e-6 on outputs of std ~0.55,
 * and the two layouts agree to 5e-6 upstream; 1e-4 leaves room for summation order only. */
#define UNET_MAX_ABS 1e-4

typedef struct case_data {
    float *latent, *t, *ctx, *pooled, *ids, *want;
    int64_t shape[4], ctx_shape[3], pooled_dim, n_ids;
    size_t n_out;
} case_data;

static void case_free(case_data *d) {
    free(d->latent);
    free(d->t);
    free(d->ctx);
    free(d->pooled);
    free(d->ids);
    free(d->want);
}

static int case_read(golden_ctx *g, golden_set *s, const char *cn, case_data *d) {
    char key[256];
    int nd;
    int64_t sh[8];
    size_t n;
    memset(d, 0, sizeof *d);
#define READ(field, name)                                                                                        \
    snprintf(key, sizeof key, "%s/%s", cn, name);                                                                \
    d->field = golden_f32(g, s, key, &nd, sh, &n);                                                               \
    if (!d->field) return -1;
    READ(latent, "latent");
    if (nd != 4) return -1;
    memcpy(d->shape, sh, sizeof d->shape);
    READ(t, "timestep");
    if ((int64_t)n != d->shape[0]) return -1;
    READ(ctx, "context");
    if (nd != 3 || sh[0] != d->shape[0]) return -1;
    memcpy(d->ctx_shape, sh, sizeof d->ctx_shape);
    READ(pooled, "text_embeds");
    if (nd != 2 || sh[0] != d->shape[0]) return -1;
    d->pooled_dim = sh[1];
    READ(ids, "time_ids");
    if (nd != 2 || sh[0] != d->shape[0]) return -1;
    d->n_ids = sh[1];
    READ(want, "out");
    d->n_out = n;
#undef READ
    return 0;
}

static void run_layout(golden_ctx *g, golden_set *s, const char *comp, const char *path, const char *layout) {
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_unet *u = NULL;
    if (sdxl_ckpt_open(path, &ck, &e) != SDXL_OK || sdxl_compute_new_device(SDXL_PREC_F32, g->device, &c, &e) != SDXL_OK ||
        sdxl_unet_load(c, ck, NULL, &u, &e) != SDXL_OK) {
        golden_fail(g, comp, layout, "load %s: %s", path, e.msg);
        goto done;
    }
    const sdxl_json *cases = sdxl_json_get(s->json, "cases");
    if (!cases || cases->type != SDXL_JSON_OBJECT || cases->len == 0) {
        golden_fail(g, comp, layout, "no \"cases\" object in %s.json", comp);
        goto done;
    }
    for (size_t i = 0; i < cases->len; i++) {
        const char *cn = cases->keys[i];
        char label[256];
        snprintf(label, sizeof label, "%s/%s", cn, layout);
        case_data d;
        if (case_read(g, s, cn, &d) != 0) {
            golden_fail(g, comp, label, "case tensors missing or of unexpected rank/batch");
            case_free(&d);
            continue;
        }
        float *got = malloc(d.n_out * sizeof(float));
        const int64_t out_n = d.shape[0] * sdxl_unet_config(u)->out_ch * d.shape[2] * d.shape[3];
        sdxl_unet_in in = {.batch = d.shape[0], .h = d.shape[2], .w = d.shape[3], .x = d.latent, .t = d.t,
                           .context = d.ctx, .ctx_len = d.ctx_shape[1], .pooled = d.pooled,
                           .pooled_dim = d.pooled_dim, .time_ids = d.ids, .n_time_ids = d.n_ids};
        if (!got || (int64_t)d.n_out != out_n || d.shape[1] != sdxl_unet_config(u)->in_ch ||
            d.ctx_shape[2] != sdxl_unet_config(u)->context_dim) {
            golden_fail(g, comp, label, "case shapes do not fit the model");
        } else if (sdxl_unet_forward(u, &in, got, &e) != SDXL_OK) {
            golden_fail(g, comp, label, "forward: %s", e.msg);
        } else {
            golden_check(g, comp, label, "max_abs", golden_max_abs(got, d.want, d.n_out), UNET_MAX_ABS);
        }
        free(got);
        case_free(&d);
    }
done:
    sdxl_unet_free(u);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
}

static int run_component(golden_ctx *g, const char *comp, const char *model) {
    golden_set s;
    if (golden_open(g, comp, &s) != 0) return 0;
    char file[256], path[4096];
    snprintf(file, sizeof file, "tiny_sd_xl_%s.safetensors", model);
    golden_path(path, sizeof path, g->models_dir, file);
    run_layout(g, &s, comp, path, "single-file");
    snprintf(file, sizeof file, "tiny-sdxl-%s", model);
    golden_path(path, sizeof path, g->models_dir, file);
    run_layout(g, &s, comp, path, "diffusers");
    golden_close(&s);
    return 0;
}

int golden_unet_base(golden_ctx *g) { return run_component(g, "unet_base", "base"); }
int golden_unet_refiner(golden_ctx *g) { return run_component(g, "unet_refiner", "refiner"); }
