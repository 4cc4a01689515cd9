/* ControlNet and UNet on a Vulkan device (lavapipe in CI) as the pipeline drives them: hint
 * embedding and residual sums in device memory, latents, timesteps, embeddings and the noise
 * prediction on the host. Checks the steps against the CPU context (NMSE 1e-10: both compute
 * in f32, only summation order differs) and that a warm step loop makes no device allocation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/controlnet.h"
#include "check.h"

#define MODELS SDXL_TEST_DATA "/golden/models/"
enum { B = 2, H = 8, W = 8, STEPS = 4 };

typedef struct run {
    sdxl_compute *c;
    sdxl_unet *u;
    sdxl_controlnet *cn;
    float *hint, *acc[64], *mid;
    size_t acc_n[64], mid_n;
    int ns;
} run;

static int setup(run *r, const char *device, sdxl_ckpt *ck, sdxl_err *e) {
    memset(r, 0, sizeof *r);
    int st = sdxl_compute_new_device(SDXL_PREC_F32, device, &r->c, e);
    if (!st) st = sdxl_unet_load(r->c, ck, NULL, &r->u, e);
    if (!st) st = sdxl_controlnet_load(r->c, MODELS "tiny-sdxl-controlnet", r->u, ck, NULL, &r->cn, e);
    if (st) return st;
    r->ns = sdxl_unet_n_skips(r->u);
    const sdxl_unet_cfg *g = sdxl_unet_config(r->u);
    int64_t oh = 0, ow = 0, oc = 0;
    for (int i = 0; i < r->ns && !st; i++) {
        sdxl_unet_skip_shape(r->u, i, H, W, &oh, &ow, &oc);
        r->acc_n[i] = (size_t)(B * oh * ow * oc);
        if (!(r->acc[i] = sdxl_compute_alloc(r->c, r->acc_n[i] * 4, e))) st = SDXL_ERR_NOMEM;
    }
    r->mid_n = (size_t)(B * oh * ow * g->ch[g->levels - 1]);
    if (!st && !(r->mid = sdxl_compute_alloc(r->c, r->mid_n * 4, e))) st = SDXL_ERR_NOMEM;
    if (!st && !(r->hint = sdxl_compute_alloc(r->c, (size_t)(H * W * g->ch[0]) * 4, e))) st = SDXL_ERR_NOMEM;
    float img[8 * H * 8 * W * 3];
    for (int i = 0; i < 8 * H * 8 * W * 3; i++) img[i] = (float)((i / 3) % (8 * W) > 4 * W) * 0.9f + 0.05f;
    if (!st) st = sdxl_controlnet_hint(r->cn, img, 1, 8 * H, 8 * W, r->hint, e);
    return st;
}

static void teardown(run *r) {
    for (int i = 0; i < r->ns; i++) sdxl_compute_release(r->c, r->acc[i]);
    sdxl_compute_release(r->c, r->mid);
    sdxl_compute_release(r->c, r->hint);
    sdxl_controlnet_free(r->cn);
    sdxl_unet_free(r->u);
    sdxl_compute_free(r->c);
}

/* One denoising step: ControlNet residuals (guess mode on the second row's pass only when
 * guess), then the UNet with them. The host inputs change every step, their addresses do not. */
static int step(run *r, int k, float *x, float *t, const float *ctx, const float *pooled, const float *ids,
                float *out, sdxl_err *e) {
    for (int i = 0; i < B * 4 * H * W; i++) x[i] = sinf((float)(i + 7 * k)) * 0.8f;
    t[0] = t[1] = 900.0f - 200.0f * (float)k;
    int st = SDXL_OK;
    for (int i = 0; i < r->ns && !st; i++) st = sdxl_op_fill(r->c, r->acc[i], 0.0f, (int64_t)r->acc_n[i], e);
    if (!st) st = sdxl_op_fill(r->c, r->mid, 0.0f, (int64_t)r->mid_n, e);
    sdxl_unet_in in = {.batch = B, .h = H, .w = W, .x = x, .t = t, .context = ctx, .ctx_len = 77, .pooled = pooled,
                       .pooled_dim = 64, .time_ids = ids, .n_time_ids = 6, .ctrl_hint = r->hint, .ctrl_hint_rows = 1};
    if (!st) st = sdxl_controlnet_apply(r->cn, &in, 0.8f, k % 2, r->acc, r->mid, 0, e);
    in.ctrl_hint = NULL;
    in.ctrl_down = (const float *const *)r->acc;
    in.n_ctrl_down = r->ns;
    in.ctrl_mid = r->mid;
    if (!st) st = sdxl_unet_forward(r->u, &in, out, e);
    return st;
}

int main(void) {
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    if (sdxl_ckpt_open(MODELS "tiny-sdxl-base", &ck, &e)) {
        CHECK(0, "base: %s", e.msg);
        return check_done();
    }
    static float x[B * 4 * H * W], t[B], ctx[B * 77 * 96], pooled[B * 64], ids[B * 6];
    static float out[2][STEPS][B * 4 * H * W];
    for (int i = 0; i < B * 77 * 96; i++) ctx[i] = cosf((float)i * 0.1f);
    for (int i = 0; i < B * 64; i++) pooled[i] = sinf((float)i * 0.3f);
    for (int i = 0; i < B * 6; i++) ids[i] = i % 6 < 2 ? 64.0f : 0.0f;
    const char *devs[2] = {"cpu", "vulkan"};
    uint64_t allocs[STEPS] = {0};
    for (int d = 0; d < 2; d++) {
        run r;
        int st = setup(&r, devs[d], ck, &e);
        CHECK(!st, "%s: load, residual buffers and hint: %s", devs[d], e.msg);
        for (int k = 0; k < STEPS && !st; k++) {
            st = step(&r, k, x, t, ctx, pooled, ids, out[d][k], &e);
            CHECK(!st, "%s: step %d: %s", devs[d], k, e.msg);
            if (d == 1) allocs[k] = sdxl_compute_device_allocs(r.c);
        }
        if (d == 1 && !st) {
            CHECK(sdxl_compute_is_device(r.c), "the vulkan context is a device");
            CHECK(allocs[STEPS - 1] == allocs[1], "no device allocation once warm: %llu after step 1, %llu after %d",
                  (unsigned long long)allocs[1], (unsigned long long)allocs[STEPS - 1], STEPS - 1);
        }
        teardown(&r);
    }
    for (int k = 0; k < STEPS; k++) {
        double nm = check_nmse_f(out[1][k], out[0][k], B * 4 * H * W);
        CHECK(nm < 1e-10, "step %d (ControlNet%s + UNet): vulkan vs cpu nmse %.3g", k, k % 2 ? ", guess mode" : "", nm);
        printf("step %d: vulkan vs cpu nmse %.3g\n", k, nm);
    }
    sdxl_ckpt_close(ck);
    return check_done();
}
