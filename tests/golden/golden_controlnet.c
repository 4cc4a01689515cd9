/* ControlNet goldens: every case of controlnet.json (ControlNet residuals, then the UNet with them)
 * from the diffusers folder and from an sgm-named single file (control_model.*, input_hint_block,
 * zero_convs, middle_block_out) that this test writes from the folder with its own name map, and
 * from a Control-LoRA it writes too (base UNet trunk + full-rank up/down deltas, see golden_cn.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/controlnet.h"
#include "golden.h"
#include "golden_cn.h"
#include "tensor/tensor.h"

/* Max abs 1e-4 (README section 6, single components): the reference's fp32-vs-fp64 spread of
 * ControlNet + UNet is up to 1e-5; the rest is summation order. */
#define CN_MAX_ABS 1e-4

static void check_nhwc(golden_ctx *g, const char *label, const char *metric, const float *ours_nhwc,
                       const float *ref_nchw, const int64_t *sh) {
    size_t n = (size_t)(sh[0] * sh[1] * sh[2] * sh[3]);
    float *t = malloc(n * sizeof(float));
    if (!t) {
        golden_fail(g, "controlnet", label, "out of memory");
        return;
    }
    sdxl_nhwc_to_nchw(ours_nhwc, t, sh[0], sh[2], sh[3], sh[1]);
    golden_check(g, "controlnet", label, metric, golden_max_abs(t, ref_nchw, n), CN_MAX_ABS);
    free(t);
}

static void run_case(golden_ctx *g, golden_set *s, sdxl_unet *u, sdxl_controlnet *cn, const char *cname,
                     const char *layout, double scale) {
    char label[256], key[256];
    snprintf(label, sizeof label, "%s/%s", cname, layout);
    int nd;
    int64_t sh[8], shc[8], shi[8];
    size_t n;
#define GET(var, name, ndp, shp)                                                                                 \
    snprintf(key, sizeof key, "%s/%s", cname, name);                                                             \
    float *var = golden_f32(g, s, key, ndp, shp, &n);
    GET(lat, "latent", &nd, sh);
    GET(t, "timestep", NULL, NULL);
    GET(ctx, "context", NULL, shc);
    GET(pooled, "text_embeds", NULL, shi);
    int64_t pdim = shi[1];
    GET(ids, "time_ids", NULL, shi);
    int64_t nids = shi[1];
    GET(img, "cond_image", NULL, shi);
    GET(want, "out", NULL, NULL);
    GET(mid, "mid", NULL, NULL);
#undef GET
    int ns = sdxl_unet_n_skips(u);
    float *acc[64] = {0}, *accm = NULL, *hint = NULL, *img_nhwc = NULL, *out = NULL;
    if (!lat || !t || !ctx || !pooled || !ids || !img || !want || !mid || nd != 4 || ns > 64) {
        golden_fail(g, "controlnet", label, "case tensors missing or of unexpected rank");
        goto done;
    }
    int64_t B = sh[0], h = sh[2], w = sh[3], H = shi[2], W = shi[3], c0 = sdxl_unet_config(u)->ch[0];
    const sdxl_unet_cfg *ucfg = sdxl_unet_config(u);
    int64_t cl = ucfg->ch[ucfg->levels - 1], mh = 0, mw = 0;
    for (int i = 0; i < ns; i++) {
        int64_t oh, ow, oc;
        sdxl_unet_skip_shape(u, i, h, w, &oh, &ow, &oc);
        acc[i] = calloc((size_t)(B * oh * ow * oc), sizeof(float));
        if (i == ns - 1) { /* the mid block runs at the last skip's size */
            mh = oh;
            mw = ow;
        }
    }
    accm = calloc((size_t)(B * mh * mw * cl), sizeof(float));
    hint = malloc((size_t)(B * h * w * c0) * sizeof(float));
    img_nhwc = malloc((size_t)(B * H * W * shi[1]) * sizeof(float));
    out = malloc((size_t)(B * 4 * h * w) * sizeof(float));
    if (!accm || !hint || !img_nhwc || !out) {
        golden_fail(g, "controlnet", label, "out of memory");
        goto done;
    }
    sdxl_nchw_to_nhwc(img, img_nhwc, B, shi[1], H, W);
    sdxl_err e = {0};
    if (sdxl_controlnet_hint(cn, img_nhwc, B, H, W, hint, &e)) {
        golden_fail(g, "controlnet", label, "hint: %s", e.msg);
        goto done;
    }
    sdxl_unet_in in = {.batch = B, .h = h, .w = w, .x = lat, .t = t, .context = ctx, .ctx_len = shc[1],
                       .pooled = pooled, .pooled_dim = pdim, .time_ids = ids, .n_time_ids = nids, .ctrl_hint = hint,
                       .ctrl_hint_rows = B};
    if (sdxl_controlnet_apply(cn, &in, (float)scale, 0, acc, accm, 0, &e)) {
        golden_fail(g, "controlnet", label, "apply: %s", e.msg);
        goto done;
    }
    double worst = 0;
    for (int i = 0; i < ns; i++) {
        snprintf(key, sizeof key, "%s/down/%d", cname, i);
        int64_t ds[8];
        int dn;
        float *ref = golden_f32(g, s, key, &dn, ds, &n);
        if (!ref || dn != 4) {
            free(ref);
            continue;
        }
        float *tmp = malloc(n * sizeof(float));
        sdxl_nhwc_to_nchw(acc[i], tmp, ds[0], ds[2], ds[3], ds[1]);
        double d = golden_max_abs(tmp, ref, n);
        if (!(d <= worst)) worst = d;
        free(tmp);
        free(ref);
    }
    golden_check(g, "controlnet", label, "down_maxabs", worst, CN_MAX_ABS);
    int64_t msh[4] = {B, cl, mh, mw};
    check_nhwc(g, label, "mid_maxabs", accm, mid, msh);
    in.ctrl_hint = NULL;
    in.ctrl_down = (const float *const *)acc;
    in.n_ctrl_down = ns;
    in.ctrl_mid = accm;
    if (sdxl_unet_forward(u, &in, out, &e)) golden_fail(g, "controlnet", label, "unet: %s", e.msg);
    else golden_check(g, "controlnet", label, "out_maxabs", golden_max_abs(out, want, (size_t)(B * 4 * h * w)), CN_MAX_ABS);
done:
    for (int i = 0; i < 64; i++) free(acc[i]);
    free(accm);
    free(hint);
    free(img_nhwc);
    free(out);
    free(lat);
    free(t);
    free(ctx);
    free(pooled);
    free(ids);
    free(img);
    free(want);
    free(mid);
}

static void run_layout(golden_ctx *g, golden_set *s, sdxl_unet *u, const sdxl_ckpt *bck, sdxl_compute *c,
                       const char *cn_path, const char *layout) {
    sdxl_err e = {0};
    sdxl_controlnet *cn = NULL;
    if (sdxl_controlnet_load(c, cn_path, u, bck, NULL, &cn, &e)) {
        golden_fail(g, "controlnet", layout, "load %s: %s", cn_path, e.msg);
        return;
    }
    const sdxl_json *cases = sdxl_json_get(s->json, "cases");
    if (!cases || cases->type != SDXL_JSON_OBJECT || !cases->len)
        golden_fail(g, "controlnet", layout, "no \"cases\" object");
    for (size_t i = 0; cases && i < cases->len; i++)
        run_case(g, s, u, cn, cases->keys[i], layout, sdxl_json_num(&cases->items[i], "conditioning_scale", 1.0));
    sdxl_controlnet_free(cn);
}

int golden_controlnet(golden_ctx *g) {
    golden_set s;
    if (golden_open(g, "controlnet", &s)) return 0;
    char base[4096], cnd[4096], dir[64] = "/tmp/sdxl-golden-cn-XXXXXX", sgm[4200];
    golden_path(base, sizeof base, g->models_dir, "tiny-sdxl-base");
    golden_path(cnd, sizeof cnd, g->models_dir, "tiny-sdxl-controlnet");
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_unet *u = NULL;
    if (sdxl_ckpt_open(base, &ck, &e) || sdxl_compute_new_device(SDXL_PREC_F32, g->device, &c, &e) ||
        sdxl_unet_load(c, ck, NULL, &u, &e)) {
        golden_fail(g, "controlnet", "load", "base %s: %s", base, e.msg);
        goto done;
    }
    run_layout(g, &s, u, ck, c, cnd, "diffusers");
    if (!mkdtemp(dir)) {
        golden_fail(g, "controlnet", "sgm", "cannot make a temporary folder");
        goto done;
    }
    snprintf(sgm, sizeof sgm, "%s/tiny_sdxl_controlnet_sgm.safetensors", dir);
    if (golden_cn_write_sgm(cnd, sgm, "control_model.", &e)) golden_fail(g, "controlnet", "sgm", "convert: %s", e.msg);
    else run_layout(g, &s, u, ck, c, sgm, "sgm-single-file");
    golden_cn_remove_sgm(sgm);
    /* Control-LoRA: the same ControlNet as the base UNet's trunk plus full-rank deltas */
    char unetdir[4200], cl[4200];
    snprintf(unetdir, sizeof unetdir, "%s/unet", base);
    snprintf(cl, sizeof cl, "%s/tiny_control_lora.safetensors", dir);
    if (golden_cn_write_control_lora(cnd, unetdir, cl, &e)) golden_fail(g, "controlnet", "control-lora", "convert: %s", e.msg);
    else run_layout(g, &s, u, ck, c, cl, "control-lora");
    remove(cl);
    rmdir(dir);
done:
    sdxl_unet_free(u);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
    golden_close(&s);
    return 0;
}
