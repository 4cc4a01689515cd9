/* pipeline: per-step conditioning of A1111 prompt editing, alternation and AND on the tiny model.
 *  - a schedule whose texts are all equal reproduces the plain prompt's pixels exactly;
 *  - "a cat :1" (an AND part of weight 1) is the plain "a cat";
 *  - an edit differs from both of its texts; AND adds one UNet row per part;
 *  - the k-diffusion path (A1111 names) and the diffusers path (class names) both run it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pipeline/pipeline.h"

typedef struct trace_user {
    int64_t max_batch;
    int calls;
} trace_user;

static void on_unet(void *user, int stage, int call, double t, const float *x_in, const float *out, int64_t batch,
                    size_t n_per) {
    (void)stage, (void)call, (void)t, (void)x_in, (void)out, (void)n_per;
    trace_user *u = user;
    if (batch > u->max_batch) u->max_batch = batch;
    u->calls++;
}

static uint8_t *gen(sdxl_pl_model *m, const char *prompt, const char *neg, const char *sampler, trace_user *tu) {
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    p.prompt = prompt;
    p.negative_prompt = neg;
    p.width = p.height = 64;
    p.steps = 4;
    p.cfg_scale = 5;
    p.seed = 11;
    p.sampler = sampler;
    sdxl_pl_trace tr = {.user = tu, .unet = on_unet};
    sdxl_pl_result r;
    sdxl_err e = {0};
    if (tu) memset(tu, 0, sizeof *tu);
    if (sdxl_pl_generate(m, &p, NULL, tu ? &tr : NULL, NULL, &r, &e)) {
        fprintf(stderr, "  generate(\"%s\"): %s\n", prompt, e.msg);
        return NULL;
    }
    uint8_t *px = malloc(64 * 64 * 3);
    if (px) memcpy(px, r.img[0].rgb, 64 * 64 * 3);
    sdxl_pl_result_free(&r);
    return px;
}

static int same(const uint8_t *a, const uint8_t *b) { return a && b && !memcmp(a, b, 64 * 64 * 3); }

int main(void) {
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors";
    mp.precision = "f32";
    sdxl_pl_model *m = NULL;
    sdxl_err e = {0};
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
        CHECK(0, "load tiny model: %s", e.msg);
        return check_done();
    }
    const char *samplers[2] = {"Euler a", "EulerDiscreteScheduler"};
    for (int k = 0; k < 2; k++) {
        const char *sp = samplers[k];
        trace_user tu;
        uint8_t *plain = gen(m, "a red fox", NULL, sp, &tu);
        int64_t plain_batch = tu.max_batch;
        uint8_t *eq = gen(m, "a [red:red:2] fox", NULL, sp, NULL);
        uint8_t *blue = k ? NULL : gen(m, "a blue fox", NULL, sp, NULL);
        uint8_t *edit = k ? NULL : gen(m, "a [red:blue:2] fox", NULL, sp, NULL);
        uint8_t *alt = k ? NULL : gen(m, "a [red|blue] fox", NULL, sp, NULL);
        CHECK(plain && same(plain, eq), "%s: an edit between equal texts is the plain prompt", sp);
        if (k) { /* the diffusers path: the plain-equivalence check is enough */
            free(plain), free(eq), free(blue), free(edit), free(alt);
            continue;
        }
        CHECK(edit && !same(edit, plain) && !same(edit, blue), "%s: the edit differs from both of its texts", sp);
        CHECK(alt && !same(alt, plain) && !same(alt, blue) && !same(alt, edit), "%s: alternation differs", sp);
        uint8_t *w1 = gen(m, "a red fox :1", NULL, sp, NULL);
        CHECK(same(w1, plain), "%s: \"a red fox :1\" is the plain prompt", sp);
        uint8_t *neg_plain = gen(m, "a red fox", "blurry", sp, NULL);
        uint8_t *neg_eq = gen(m, "a red fox", "[blurry:blurry:3]", sp, NULL);
        CHECK(same(neg_plain, neg_eq), "%s: the negative prompt's schedule runs the same path", sp);
        uint8_t *and2 = gen(m, "a red fox AND a blue fox :0.5", NULL, sp, &tu);
        CHECK(and2 && tu.max_batch == plain_batch + 1 && plain_batch == 2, "%s: AND of 2 parts: UNet batch %lld (plain %lld)",
              sp, (long long)tu.max_batch, (long long)plain_batch);
        CHECK(and2 && !same(and2, plain), "%s: AND changes the image", sp);
        free(plain), free(eq), free(blue), free(edit), free(alt), free(w1), free(neg_plain), free(neg_eq), free(and2);
    }
    sdxl_pl_model_free(m);
    return check_done();
}
