/* ControlNet in the pipeline, on the tiny models: two units with different guidance windows. Step by
 * step, the units active are exactly those whose window holds the step, and the residuals the UNet
 * receives equal this test's own sum of each active unit's residuals on the recorded input (and are
 * absent outside every window); the latents equal the single-ControlNet run while only that unit
 * is active and the no-ControlNet run before any is. Also guess mode, batches, img2img windows and
 * the request errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/controlnet.h"
#include "check.h"
#include "pipeline/pipeline.h"

#define MODELS SDXL_TEST_DATA "/golden/models/"
#define STEPS 8
#define SIDE 64
#define MAXCALLS 16

typedef struct rec {
    int calls;
    unsigned active[MAXCALLS];
    int step[MAXCALLS];
    int had_res[MAXCALLS];
    double worst;      /* max |UNet residual - own sum| over calls and skips */
    double uncond_abs; /* guess mode: max |residual| on the uncond rows */
    double cond_abs;
    float *lat[STEPS]; /* latents after each step */
    size_t n_lat;
    /* own recomputation */
    sdxl_controlnet *cn[2];
    float *hint[2];
    float scale[2];
    int guess[2];
    int map[2]; /* request unit k -> own cn index */
    int n_units;
    sdxl_unet *unet;
} rec;

static void rec_free(rec *r) {
    for (int i = 0; i < STEPS; i++) free(r->lat[i]);
    memset(r->lat, 0, sizeof r->lat);
}

static void on_control(void *user, int call, int step, unsigned active, const sdxl_unet_in *in) {
    rec *r = user;
    if (call >= MAXCALLS) return;
    r->calls = call + 1;
    r->active[call] = active;
    r->step[call] = step;
    r->had_res[call] = in->ctrl_down != NULL;
    if (!in->ctrl_down || !r->unet) return;
    int ns = sdxl_unet_n_skips(r->unet);
    float *acc[64];
    size_t an[64];
    int64_t oh = 0, ow = 0, oc = 0;
    for (int i = 0; i < ns; i++) {
        sdxl_unet_skip_shape(r->unet, i, in->h, in->w, &oh, &ow, &oc);
        an[i] = (size_t)(in->batch * oh * ow * oc);
        acc[i] = calloc(an[i], sizeof(float));
    }
    const sdxl_unet_cfg *g = sdxl_unet_config(r->unet);
    size_t mn = (size_t)(in->batch * oh * ow * g->ch[g->levels - 1]);
    float *mid = calloc(mn, sizeof(float));
    sdxl_err e = {0};
    for (int k = 0; k < r->n_units; k++) {
        if (!(active & (1u << k))) continue;
        int j = r->map[k];
        sdxl_unet_in ci = *in;
        ci.ctrl_down = NULL;
        ci.ctrl_mid = NULL;
        ci.n_ctrl_down = 0;
        ci.ctrl_hint = r->hint[j];
        ci.ctrl_hint_rows = 1;
        int64_t row0 = 0;
        if (r->guess[k]) {
            int64_t B = in->batch / 2, hw = in->h * in->w;
            row0 = B;
            ci.batch = B;
            ci.x = in->x + B * 4 * hw;
            ci.t = in->t + B;
            ci.context = in->context + B * in->ctx_len * g->context_dim;
            ci.pooled = in->pooled + B * in->pooled_dim;
            ci.time_ids = in->time_ids + B * in->n_time_ids;
        }
        CHECK(sdxl_controlnet_apply(r->cn[j], &ci, r->scale[k], r->guess[k], acc, mid, row0, &e) == SDXL_OK,
              "own apply: %s", e.msg);
    }
    for (int i = 0; i <= ns; i++) {
        const float *a = i < ns ? in->ctrl_down[i] : in->ctrl_mid, *b = i < ns ? acc[i] : mid;
        size_t n = i < ns ? an[i] : mn;
        for (size_t q = 0; q < n; q++) {
            double d = fabs((double)a[q] - b[q]);
            if (!(d <= r->worst)) r->worst = d;
            if (q < n / 2) r->uncond_abs = fmax(r->uncond_abs, fabs(a[q]));
            else r->cond_abs = fmax(r->cond_abs, fabs(a[q]));
        }
    }
    for (int i = 0; i < ns; i++) free(acc[i]);
    free(mid);
}

static void on_step(void *user, int stage, int step, const float *x, size_t n) {
    rec *r = user;
    if (stage || step < 0 || step >= STEPS) return;
    free(r->lat[step]);
    r->lat[step] = malloc(n * sizeof(float));
    memcpy(r->lat[step], x, n * sizeof(float));
    r->n_lat = n;
}

static void make_image(uint8_t *img, int kind) {
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            uint8_t *p = img + (y * SIDE + x) * 3;
            int v = kind ? ((x / 8 + y / 8) % 2) * 255 : ((x - 32) * (x - 32) + (y - 32) * (y - 32) < 400) * 255;
            p[0] = p[1] = p[2] = (uint8_t)v;
        }
}

static int same(const float *a, const float *b, size_t n) { return a && b && !memcmp(a, b, n * sizeof(float)); }

static int gen(sdxl_pl_model *m, const sdxl_gen_params *p, rec *r, sdxl_pl_result *res) {
    sdxl_pl_trace tr = {.user = r, .control = on_control, .step = on_step};
    sdxl_err e = {0};
    int st = sdxl_pl_generate(m, p, NULL, &tr, NULL, res, &e);
    CHECK(st == SDXL_OK, "generate: %s", e.msg);
    return st;
}

int main(void) {
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = MODELS "tiny-sdxl-base";
    mp.precision = "f32";
    sdxl_pl_model *m = NULL;
    sdxl_err e = {0};
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
        CHECK(0, "load: %s", e.msg);
        return check_done();
    }
    uint8_t imgA[SIDE * SIDE * 3], imgB[SIDE * SIDE * 3];
    make_image(imgA, 0);
    make_image(imgB, 1);
    /* unit 0: the folder by path, [0, 0.5]; unit 1: by name inside a control dir, [0.25, 1] */
    const char *dirs[] = {MODELS};
    sdxl_control_spec cs[2];
    memset(cs, 0, sizeof cs);
    cs[0] = (sdxl_control_spec){.model = MODELS "tiny-sdxl-controlnet", .image = imgA, .image_width = SIDE,
                                .image_height = SIDE, .scale = 0.7f, .guidance_start = 0, .guidance_end = 0.5f};
    cs[1] = (sdxl_control_spec){.model = "tiny-sdxl-controlnet", .image = imgB, .image_width = SIDE,
                                .image_height = SIDE, .scale = 1.0f, .guidance_start = 0.25f, .guidance_end = 1.0f};
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    p.prompt = "a house";
    p.negative_prompt = "blurry";
    p.width = p.height = SIDE;
    p.steps = STEPS;
    p.cfg_scale = 5;
    p.seed = 7;
    p.control_dirs = dirs;
    p.n_control_dirs = 1;

    /* own ControlNets and hints for the recomputation */
    rec own = {0};
    sdxl_compute *c = NULL;
    CHECK(sdxl_compute_new(SDXL_PREC_F32, &c, &e) == SDXL_OK, "compute");
    own.unet = m->base_unet;
    const uint8_t *imgs[2] = {imgA, imgB};
    for (int j = 0; j < 2; j++) {
        CHECK(sdxl_controlnet_load(c, MODELS "tiny-sdxl-controlnet", m->base_unet, m->base_ck, NULL, &own.cn[j], &e) ==
                  SDXL_OK,
              "own load: %s", e.msg);
        float f[SIDE * SIDE * 3];
        for (int q = 0; q < SIDE * SIDE * 3; q++) f[q] = (float)imgs[j][q] / 255.0f;
        own.hint[j] = malloc((size_t)(SIDE / 8) * (SIDE / 8) * 32 * sizeof(float));
        CHECK(sdxl_controlnet_hint(own.cn[j], f, 1, SIDE, SIDE, own.hint[j], &e) == SDXL_OK, "own hint: %s", e.msg);
    }

    rec rn = {0}, ra = own, rb = own, rab = own;
    sdxl_pl_result res;
    /* no ControlNet */
    if (!gen(m, &p, &rn, &res)) sdxl_pl_result_free(&res);
    /* A alone */
    p.controls = cs;
    p.n_controls = 1;
    ra.n_units = 1;
    ra.map[0] = 0;
    ra.scale[0] = 0.7f;
    if (!gen(m, &p, &ra, &res)) sdxl_pl_result_free(&res);
    /* B alone */
    p.controls = cs + 1;
    rb.n_units = 1;
    rb.map[0] = 1;
    rb.scale[0] = 1.0f;
    if (!gen(m, &p, &rb, &res)) sdxl_pl_result_free(&res);
    /* both */
    p.controls = cs;
    p.n_controls = 2;
    rab.n_units = 2;
    rab.map[0] = 0;
    rab.map[1] = 1;
    rab.scale[0] = 0.7f;
    rab.scale[1] = 1.0f;
    sdxl_pl_result rab_res;
    int ab_ok = gen(m, &p, &rab, &rab_res) == SDXL_OK;

    /* windows: A holds steps 0..3 (i/8 >= 0, (i+1)/8 <= 0.5), B steps 2..7 */
    CHECK(rab.calls == STEPS, "both: %d UNet calls traced", rab.calls);
    for (int i = 0; i < rab.calls; i++) {
        unsigned want = (i <= 3 ? 1u : 0u) | (i >= 2 ? 2u : 0u);
        CHECK(rab.step[i] == i && rab.active[i] == want && rab.had_res[i], "both, step %d: active %u, want %u", i,
              rab.active[i], want);
        CHECK(ra.active[i] == (i <= 3 ? 1u : 0u) && ra.had_res[i] == (i <= 3), "A alone, step %d: active %u, residuals %d",
              i, ra.active[i], ra.had_res[i]);
        CHECK(rb.active[i] == (i >= 2 ? 1u : 0u) && rb.had_res[i] == (i >= 2), "B alone, step %d: active %u, residuals %d",
              i, rb.active[i], rb.had_res[i]);
    }
    /* same code, same inputs, same order of sums: exact */
    CHECK(rab.worst == 0 && ra.worst == 0 && rb.worst == 0, "residuals = own sum of the active units: %g %g %g",
          rab.worst, ra.worst, rb.worst);
    size_t n = rn.n_lat;
    CHECK(!same(ra.lat[0], rn.lat[0], n), "A changes step 0");
    CHECK(same(rab.lat[0], ra.lat[0], n) && same(rab.lat[1], ra.lat[1], n), "both = A alone while only A is active");
    CHECK(!same(rab.lat[2], ra.lat[2], n), "both differ from A once B joins (step 2)");
    CHECK(same(rb.lat[0], rn.lat[0], n) && same(rb.lat[1], rn.lat[1], n), "B alone = no ControlNet before its window");
    CHECK(!same(rb.lat[2], rn.lat[2], n), "B changes step 2");

    /* batches: image 1 of a batch of 2 = the single run with seed + 1 */
    if (ab_ok) {
        sdxl_gen_params pb = p;
        pb.batch_count = 1;
        pb.batch_size = 2;
        rec rbat = {0}, rs = {0};
        sdxl_pl_result r2, r1;
        if (!gen(m, &pb, &rbat, &r2)) {
            pb.batch_size = 1;
            pb.seed = p.seed + 1;
            if (!gen(m, &pb, &rs, &r1)) {
                CHECK(r2.n == 2 && r1.n == 1 && !memcmp(r2.img[1].rgb, r1.img[0].rgb, SIDE * SIDE * 3) &&
                          !memcmp(r2.img[0].rgb, rab_res.img[0].rgb, SIDE * SIDE * 3),
                      "batch of 2 with ControlNet = single runs (seed, seed + 1)");
                sdxl_pl_result_free(&r1);
            }
            sdxl_pl_result_free(&r2);
        }
        rec_free(&rbat);
        rec_free(&rs);
        sdxl_pl_result_free(&rab_res);
    }

    /* guess mode: residuals only on the conditional half */
    {
        sdxl_control_spec g1 = cs[0];
        g1.guess_mode = 1;
        g1.guidance_end = 1;
        p.controls = &g1;
        p.n_controls = 1;
        rec rg = own;
        rg.n_units = 1;
        rg.map[0] = 0;
        rg.scale[0] = 0.7f;
        rg.guess[0] = 1;
        if (!gen(m, &p, &rg, &res)) sdxl_pl_result_free(&res);
        CHECK(rg.worst == 0 && rg.uncond_abs == 0 && rg.cond_abs > 0,
              "guess mode: own ramp sum %g, uncond max %g, cond max %g", rg.worst, rg.uncond_abs, rg.cond_abs);
        rec_free(&rg);
    }

    /* img2img: the window counts the steps the request runs (strength 0.5: 4 of 8) */
    {
        uint8_t init[SIDE * SIDE * 3];
        make_image(init, 1);
        sdxl_gen_params pi = p;
        pi.controls = cs;
        pi.n_controls = 1;
        pi.init_image = init;
        pi.init_width = pi.init_height = SIDE;
        pi.strength = 0.5f;
        pi.sampler = "EulerDiscreteScheduler"; /* diffusers' img2img: strength x steps steps (A1111's runs one more) */
        rec ri = own;
        ri.n_units = 1;
        ri.map[0] = 0;
        ri.scale[0] = 0.7f;
        if (!gen(m, &pi, &ri, &res)) sdxl_pl_result_free(&res);
        CHECK(ri.calls == 4 && ri.active[0] == 1 && ri.active[1] == 1 && ri.active[2] == 0 && ri.active[3] == 0,
              "img2img: A's window [0, 0.5] holds the first 2 of 4 steps (%d calls, %u %u %u %u)", ri.calls,
              ri.active[0], ri.active[1], ri.active[2], ri.active[3]);
        rec_free(&ri);
    }

    /* request errors name the field */
    {
        struct { const char *what; sdxl_control_spec s; } bad[] = {
            {"controls[0].scale", {.model = "x", .image = imgA, .image_width = 8, .image_height = 8, .scale = 3}},
            {"controls[0].scale", {.model = "x", .image = imgA, .image_width = 8, .image_height = 8, .scale = -1}},
            {"controls[0].guidance_start",
             {.model = "x", .image = imgA, .image_width = 8, .image_height = 8, .guidance_start = 0.8f, .guidance_end = 0.2f}},
            {"controls[0].image", {.model = "x", .image = NULL, .image_width = 8, .image_height = 8}},
            {"controls[0].model", {.model = "", .image = imgA, .image_width = 8, .image_height = 8}},
            {"controls[0].resize", {.model = "x", .image = imgA, .image_width = 8, .image_height = 8, .resize = 9}},
            {"controls[0]: preprocess", {.model = "x", .image = imgA, .image_width = 8, .image_height = 8, .preprocess = "sobel"}},
        };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            sdxl_gen_params q = p;
            q.controls = &bad[i].s;
            q.n_controls = 1;
            e.msg[0] = 0;
            CHECK(sdxl_pl_check(m, &q, &e) != SDXL_OK && strstr(e.msg, bad[i].what), "bad %zu: \"%s\" names %s", i,
                  e.msg, bad[i].what);
        }
        sdxl_control_spec nf = {.model = "no-such-controlnet", .image = imgA, .image_width = SIDE, .image_height = SIDE};
        sdxl_gen_params q = p;
        q.controls = &nf;
        q.n_controls = 1;
        rec rx = {0};
        sdxl_pl_trace tr = {.user = &rx};
        CHECK(sdxl_pl_generate(m, &q, NULL, &tr, NULL, &res, &e) != SDXL_OK && strstr(e.msg, "controls[0].model") &&
                  strstr(e.msg, "no-such-controlnet"),
              "missing model named: %s", e.msg);
    }

    rec_free(&rn);
    rec_free(&ra);
    rec_free(&rb);
    rec_free(&rab);
    for (int j = 0; j < 2; j++) {
        sdxl_controlnet_free(own.cn[j]);
        free(own.hint[j]);
    }
    sdxl_compute_free(c);
    sdxl_pl_model_free(m);
    return check_done();
}
