/* ControlNet loading on the tiny models: the reduced "small"/"mid" layouts (no attention in the down
 * blocks, a shallower mid block) are read from the shapes and run; every bad file is refused with
 * the tensor or file named (missing or misshapen tensor, SD 1.x ControlNet, truncated file, a
 * ControlNet for another UNet, a Control-LoRA delta for no layer). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/controlnet.h"
#include "check.h"
#include "io/safetensors.h"

#define MODELS SDXL_TEST_DATA "/golden/models/"
#define CN_FILE MODELS "tiny-sdxl-controlnet/diffusion_pytorch_model.safetensors"

typedef int (*keep_fn)(const char *name, const sdxl_st_tensor *t, int64_t *shape);

/* Copies the tiny ControlNet into path, dropping (keep 0) or reshaping tensors. */
static int rewrite(const char *path, keep_fn keep, const char *extra_name) {
    sdxl_err e = {0};
    sdxl_st_file *f = NULL;
    sdxl_st_writer *w = NULL;
    if (sdxl_st_open(CN_FILE, &f, &e) || sdxl_st_writer_new(&w, &e)) return -1;
    static const uint16_t zeros[4096];
    int st = 0;
    for (size_t i = 0; i < sdxl_st_count(f) && !st; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        int64_t shape[8];
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        int k = keep ? keep(t->name, t, shape) : 1;
        if (!k) continue;
        uint64_t n = 1;
        for (int d = 0; d < t->ndim; d++) n *= (uint64_t)shape[d];
        st = sdxl_st_writer_add(w, t->name, t->dtype, t->ndim, shape, n == t->numel ? t->data : NULL, &e);
    }
    if (extra_name && !st) {
        int64_t s2[2] = {4, 4};
        st = sdxl_st_writer_add(w, extra_name, SDXL_ST_F16, 2, s2, zeros, &e);
    }
    if (!st) st = sdxl_st_writer_finish(w, path, &e);
    sdxl_st_writer_free(w);
    sdxl_st_close(f);
    return st;
}

/* small: DownBlock2D everywhere (no down attention), mid block with one transformer layer */
static int keep_small(const char *n, const sdxl_st_tensor *t, int64_t *s) {
    (void)t;
    (void)s;
    if (!strncmp(n, "down_blocks.", 12) && strstr(n, ".attentions.")) return 0;
    if (!strncmp(n, "mid_block.attentions.0.transformer_blocks.", 42) && n[42] != '0') return 0;
    return 1;
}
static int drop_zero3(const char *n, const sdxl_st_tensor *t, int64_t *s) {
    (void)t;
    (void)s;
    return strcmp(n, "controlnet_down_blocks.3.weight") != 0;
}
static int bad_shape(const char *n, const sdxl_st_tensor *t, int64_t *s) {
    (void)t;
    if (!strcmp(n, "controlnet_mid_block.weight")) s[1] = 32;
    return 1;
}
static int wide_context(const char *n, const sdxl_st_tensor *t, int64_t *s) {
    (void)t;
    if (strstr(n, "attn2.to_k.weight") || strstr(n, "attn2.to_v.weight")) s[1] = 128;
    return 1;
}

static void run_small(sdxl_compute *c, sdxl_unet *u, const sdxl_ckpt *ck, const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/small.safetensors", dir);
    CHECK(rewrite(path, keep_small, NULL) == 0, "write small variant");
    sdxl_err e = {0};
    sdxl_controlnet *cn = NULL;
    CHECK(sdxl_controlnet_load(c, path, u, ck, NULL, &cn, &e) == SDXL_OK, "small loads: %s", e.msg);
    if (!cn) return;
    sdxl_controlnet_info info;
    sdxl_controlnet_get_info(cn, &info);
    CHECK(info.trunk->down_depth[0] == 0 && info.trunk->down_depth[1] == 0 && info.trunk->down_depth[2] == 0 &&
              info.trunk->mid_depth == 1 && info.n_skips == 9 && info.n_hint_blocks == 6,
          "small config from shapes: down depths %d %d %d, mid %d, %d skips", info.trunk->down_depth[0],
          info.trunk->down_depth[1], info.trunk->down_depth[2], info.trunk->mid_depth, info.n_skips);
    enum { B = 2, h = 8, w = 8 };
    static float x[B * 4 * h * w], t[B] = {500, 500}, ctx[B * 77 * 96], pooled[B * 64], ids[B * 6], img[64 * 64 * 3];
    static float hint[h * w * 32];
    for (int i = 0; i < B * 4 * h * w; i++) x[i] = sinf((float)i);
    for (int i = 0; i < B * 77 * 96; i++) ctx[i] = cosf((float)i * 0.1f);
    for (int i = 0; i < 64 * 64 * 3; i++) img[i] = (float)((i / 3) % 64 > 31);
    for (int i = 0; i < B * 6; i++) ids[i] = 64;
    CHECK(sdxl_controlnet_hint(cn, img, 1, 64, 64, hint, &e) == SDXL_OK, "hint: %s", e.msg);
    float *acc[9];
    int64_t oh = 0, ow = 0, oc = 0;
    for (int i = 0; i < 9; i++) {
        sdxl_unet_skip_shape(u, i, h, w, &oh, &ow, &oc);
        acc[i] = calloc((size_t)(B * oh * ow * oc), sizeof(float));
    }
    float *mid = calloc((size_t)(B * oh * ow * 64), sizeof(float));
    sdxl_unet_in in = {.batch = B, .h = h, .w = w, .x = x, .t = t, .context = ctx, .ctx_len = 77, .pooled = pooled,
                       .pooled_dim = 64, .time_ids = ids, .n_time_ids = 6, .ctrl_hint = hint, .ctrl_hint_rows = 1};
    CHECK(sdxl_controlnet_apply(cn, &in, 1.0f, 0, acc, mid, 0, &e) == SDXL_OK, "small runs: %s", e.msg);
    double mx = 0;
    int finite = 1;
    for (int i = 0; i < B * oh * ow * 64; i++) {
        finite &= isfinite(mid[i]);
        mx = fmax(mx, fabs(mid[i]));
    }
    CHECK(finite && mx > 0, "small: mid residual finite and nonzero (max %g)", mx);
    for (int i = 0; i < 9; i++) free(acc[i]);
    free(mid);
    sdxl_controlnet_free(cn);
    unlink(path);
}

static void expect_fail(sdxl_compute *c, sdxl_unet *u, const sdxl_ckpt *ck, const char *path, const char *what,
                        const char *word) {
    sdxl_err e = {0};
    sdxl_controlnet *cn = NULL;
    int st = sdxl_controlnet_load(c, path, u, ck, NULL, &cn, &e);
    CHECK(st != SDXL_OK && strstr(e.msg, word), "%s refused naming \"%s\": %s", what, word, e.msg);
    sdxl_controlnet_free(cn);
}

int main(void) {
    char dir[] = "/tmp/sdxl-test-cn-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_unet *u = NULL;
    CHECK(sdxl_ckpt_open(MODELS "tiny-sdxl-base", &ck, &e) == SDXL_OK && sdxl_compute_new(SDXL_PREC_F32, &c, &e) == SDXL_OK &&
              sdxl_unet_load(c, ck, NULL, &u, &e) == SDXL_OK,
          "base: %s", e.msg);
    if (!u) return check_done();
    run_small(c, u, ck, dir);
    char p[512];
    snprintf(p, sizeof p, "%s/missing.safetensors", dir);
    rewrite(p, drop_zero3, NULL);
    expect_fail(c, u, ck, p, "missing zero conv", "controlnet_down_blocks.3.weight");
    snprintf(p, sizeof p, "%s/shape.safetensors", dir);
    rewrite(p, bad_shape, NULL);
    expect_fail(c, u, ck, p, "misshapen zero conv", "controlnet_mid_block.weight");
    snprintf(p, sizeof p, "%s/ctx.safetensors", dir);
    rewrite(p, wide_context, NULL);
    expect_fail(c, u, ck, p, "ControlNet for another UNet", "context width 128");
    snprintf(p, sizeof p, "%s/extra.safetensors", dir);
    rewrite(p, NULL, "down_blocks.9.resnets.0.conv1.weight");
    expect_fail(c, u, ck, p, "unexpected trunk tensor", "down_blocks.9.resnets.0.conv1.weight");
    /* truncated: the header promises more data than the file holds */
    snprintf(p, sizeof p, "%s/trunc.safetensors", dir);
    {
        FILE *in = fopen(CN_FILE, "rb"), *out = fopen(p, "wb");
        char buf[65536];
        size_t n = in ? fread(buf, 1, sizeof buf, in) : 0;
        if (out) fwrite(buf, 1, n, out);
        if (in) fclose(in);
        if (out) fclose(out);
    }
    expect_fail(c, u, ck, p, "truncated file", "trunc.safetensors");
    expect_fail(c, u, ck, MODELS "tiny_sdxl_lora_kohya.safetensors", "a LoRA", "not a ControlNet");
    expect_fail(c, u, ck, dir, "a folder without weights", "diffusion_pytorch_model.safetensors");
    unlink(p);
    snprintf(p, sizeof p, "%s/missing.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/shape.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/ctx.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/extra.safetensors", dir);
    unlink(p);
    rmdir(dir);
    sdxl_unet_free(u);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
    return check_done();
}
