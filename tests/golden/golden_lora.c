/* Golden component `lora`: every LoRA file of the models folder that the JSON's unet case names
 * or that sits beside it (kohya and PEFT naming of the same LoRA), merged at the case's scale
 * into the tiny base of both layouts in f32. Checks the UNet output against diffusers' runtime
 * LoRA, the text encoders against the merged reference, the recorded merged weights, and that
 * removing the LoRA gives back the bare UNet output bit for bit. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "pipeline/pipeline.h"

#define COMP "lora"
/* Thresholds (README section 6): single components max abs 1e-4 relative to the output's max;
 * the reference UNet runs the LoRA at runtime, not merged (observed 1.3e-5 apart). Merged
 * weights are the same f32 formula on both sides: 1e-6 of their max. */
#define TH_REL 1e-4
#define TH_WEIGHT_REL 1e-6

static double maxabs_of(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

static void cmp_rel(golden_ctx *g, golden_set *s, const char *label, const char *key, const float *got, size_t n,
                    double rel) {
    size_t m = 0;
    float *ref = golden_find(s, key) ? golden_f32(g, s, key, NULL, NULL, &m) : NULL;
    if (!ref) {
        golden_fail(g, COMP, label, "%s missing", key);
        return;
    }
    char metric[192];
    snprintf(metric, sizeof metric, "%s_maxabs", key);
    if (m != n) golden_fail(g, COMP, label, "%s: %zu values, ours %zu", key, m, n);
    else golden_check(g, COMP, label, metric, golden_max_abs(got, ref, n), rel * (maxabs_of(ref, n) > 1 ? maxabs_of(ref, n) : 1));
    free(ref);
}

static float *unet_run(golden_ctx *g, golden_set *s, sdxl_pl_model *m, const char *label, size_t *n_out) {
    int nd;
    int64_t sh[8], csh[8];
    size_t n, nc, np, nt, ntid;
    float *x = golden_f32(g, s, "unet/latent", &nd, sh, &n);
    float *t = golden_f32(g, s, "unet/timestep", NULL, NULL, &nt);
    float *ctx = golden_f32(g, s, "unet/context", NULL, csh, &nc);
    int64_t psh[8], tsh[8];
    float *pooled = golden_f32(g, s, "unet/text_embeds", NULL, psh, &np);
    float *tid = golden_f32(g, s, "unet/time_ids", NULL, tsh, &ntid);
    float *out = x ? malloc(n * sizeof(float)) : NULL;
    sdxl_err e = {0};
    if (!x || !t || !ctx || !pooled || !tid || !out) {
        free(out);
        out = NULL;
    } else {
        sdxl_unet_in in = {.batch = sh[0], .h = sh[2], .w = sh[3], .x = x, .t = t, .context = ctx,
                           .ctx_len = csh[1], .pooled = pooled, .pooled_dim = psh[1], .time_ids = tid,
                           .n_time_ids = tsh[1]};
        if (sdxl_unet_forward(m->base_unet, &in, out, &e) != SDXL_OK) {
            golden_fail(g, COMP, label, "unet forward: %s", e.msg);
            free(out);
            out = NULL;
        }
        *n_out = n;
    }
    free(x);
    free(t);
    free(ctx);
    free(pooled);
    free(tid);
    return out;
}

static void te_run(golden_ctx *g, golden_set *s, sdxl_pl_model *m, const char *label) {
    for (int k = 0; k < 2; k++) {
        const char *key = k ? "te/ids2" : "te/ids1";
        int64_t sh[8];
        size_t n;
        float *f = golden_f32(g, s, key, NULL, sh, &n);
        if (!f) continue;
        int32_t *ids = malloc(n * sizeof *ids);
        for (size_t i = 0; i < n; i++) ids[i] = (int32_t)f[i];
        free(f);
        const sdxl_clip *te = k ? m->base_cond.te2 : m->base_cond.te1;
        int64_t B = sh[0], L = sh[1], W = te->cfg.width, J = te->cfg.proj ? te->cfg.proj : W;
        float *h = malloc((size_t)(B * L * W) * sizeof(float)), *pooled = malloc((size_t)(B * J) * sizeof(float));
        sdxl_clip_io io = {ids, B, L, te->cfg.layers - 1, h, k ? pooled : NULL, NULL, NULL};
        sdxl_err e = {0};
        if (sdxl_clip_forward(m->c, te, &io, &e) != SDXL_OK) {
            golden_fail(g, COMP, label, "te%d forward: %s", k + 1, e.msg);
        } else {
            cmp_rel(g, s, label, k ? "te/te2_penultimate_lora" : "te/te1_penultimate_lora", h, (size_t)(B * L * W),
                    TH_REL);
            if (k) cmp_rel(g, s, label, "te/te2_pooled_lora", pooled, (size_t)(B * J), TH_REL);
        }
        free(ids);
        free(h);
        free(pooled);
    }
}

static void merged_weights(golden_ctx *g, golden_set *s, sdxl_pl_model *m, const char *label) {
    size_t n = sdxl_st_count(s->st);
    for (size_t i = 0; i < n; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(s->st, i);
        const char *pre = "merged/unet.", *suf = ".weight";
        size_t lp = strlen(pre), ls = strlen(suf), ln = strlen(t->name);
        if (strncmp(t->name, pre, lp) || ln <= lp + ls || strcmp(t->name + ln - ls, suf)) continue;
        char mod[256];
        snprintf(mod, sizeof mod, "%.*s", (int)(ln - lp - ls), t->name + lp);
        float *w = malloc(t->numel * sizeof(float));
        sdxl_err e = {0};
        if (sdxl_lora_merged_weight(m->lora, SDXL_LORA_UNET, mod, w, t->numel, &e) != SDXL_OK)
            golden_fail(g, COMP, label, "merged %s: %s", mod, e.msg);
        else
            cmp_rel(g, s, label, t->name, w, t->numel, TH_WEIGHT_REL);
        free(w);
    }
}

/* The LoRA files to run: the ones in models_dir whose names contain "lora" and end .safetensors. */
static int list_loras(const char *dir, char names[][256], int max) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < max) {
        size_t l = strlen(de->d_name);
        if (l > 12 && strstr(de->d_name, "lora") && !strcmp(de->d_name + l - 12, ".safetensors") && l < 256)
            snprintf(names[n++], 256, "%s", de->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[i], names[j]) > 0) {
                char t[256];
                memcpy(t, names[i], 256);
                memcpy(names[i], names[j], 256);
                memcpy(names[j], t, 256);
            }
    return n;
}

int golden_lora(golden_ctx *g) {
    golden_set s;
    if (golden_open(g, COMP, &s)) return 0;
    const sdxl_json *cu = sdxl_json_get(sdxl_json_get(s.json, "cases"), "unet");
    double scale = cu ? sdxl_json_num(cu, "scale", 1.0) : 1.0;
    const sdxl_json *ct = sdxl_json_get(sdxl_json_get(s.json, "cases"), "te");
    double te_scale = ct ? sdxl_json_num(ct, "scale", scale) : scale;
    char loras[16][256];
    int nl = list_loras(g->models_dir, loras, 16);
    if (nl == 0) golden_fail(g, COMP, "files", "no *lora*.safetensors in %s", g->models_dir);
    static const struct { const char *layout, *base; } LAYOUTS[] = {
        {"single-file", "tiny_sd_xl_base.safetensors"},
        {"diffusers", "tiny-sdxl-base"},
    };
    for (size_t l = 0; l < sizeof LAYOUTS / sizeof LAYOUTS[0]; l++) {
        char base[4096];
        golden_path(base, sizeof base, g->models_dir, LAYOUTS[l].base);
        sdxl_model_params mp;
        sdxl_model_params_init(&mp);
        mp.base = base;
        mp.precision = "f32";
        sdxl_pl_model *m = NULL;
        sdxl_err e = {0};
        if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
            golden_fail(g, COMP, LAYOUTS[l].layout, "load: %s", e.msg);
            continue;
        }
        size_t n0 = 0;
        float *bare = unet_run(g, &s, m, LAYOUTS[l].layout, &n0);
        if (bare) cmp_rel(g, &s, LAYOUTS[l].layout, "unet/unet_out_without_lora", bare, n0, TH_REL);
        for (int k = 0; k < nl; k++) {
            char label[512], path[4096];
            snprintf(label, sizeof label, "%s/%s", LAYOUTS[l].layout, loras[k]);
            golden_path(path, sizeof path, g->models_dir, loras[k]);
            sdxl_lora_use u = {path, (float)scale, (float)te_scale};
            sdxl_lora_stats st;
            if (sdxl_pl_lora_set(m, &u, 1, &st, &e) != SDXL_OK) {
                golden_fail(g, COMP, label, "apply: %s", e.msg);
                continue;
            }
            /* every module of the file found its layer */
            sdxl_lora_file *lf = sdxl_lora_applied_at(m->lora, 0);
            sdxl_lora_info li;
            sdxl_lora_get_info(lf, &li);
            golden_check(g, COMP, label, "modules_unmatched", (double)(li.n_modules - st.modules_bound), 0.0);
            if (cu && sdxl_json_get(cu, "lora_modules"))
                golden_check(g, COMP, label, "unet_modules_vs_case",
                             fabs((double)li.per_net[SDXL_LORA_UNET] - (double)sdxl_json_i64(cu, "lora_modules", 0)),
                             0.0);
            size_t n = 0;
            float *got = unet_run(g, &s, m, label, &n);
            if (got) cmp_rel(g, &s, label, "unet/unet_out_lora", got, n, TH_REL);
            free(got);
            te_run(g, &s, m, label);
            merged_weights(g, &s, m, label);
            if (sdxl_pl_lora_set(m, NULL, 0, NULL, &e) != SDXL_OK) {
                golden_fail(g, COMP, label, "remove: %s", e.msg);
                continue;
            }
            got = unet_run(g, &s, m, label, &n);
            if (got && bare)
                golden_check(g, COMP, label, "removed_unet_bytes_differ", memcmp(got, bare, n * sizeof(float)) != 0,
                             0.0);
            free(got);
        }
        free(bare);
        sdxl_pl_model_free(m);
    }
    golden_close(&s);
    return 0;
}
