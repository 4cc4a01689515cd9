/* One-shot models and max_memory on the tiny model: a one-shot model gives the resident model's
 * pixels, frees its text encoders and UNet on the way, and refuses a second request; a
 * max_memory the plan cannot meet fails before any UNet step with the plan in the message, and
 * one it meets changes no pixel of a one-shot conversion. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pipeline/pipeline.h"

#define MODEL SDXL_TEST_DATA "/golden/models/tiny-sdxl-base"

static int on_progress(void *user, const sdxl_progress *p) {
    if (p->phase == SDXL_PHASE_BASE && p->step > 0) ++*(int *)user;
    return 0;
}

static sdxl_pl_model *load(int one_shot) {
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = MODEL;
    mp.precision = "f32";
    mp.one_shot = one_shot;
    sdxl_pl_model *m = NULL;
    sdxl_err e = {0};
    CHECK(sdxl_pl_model_load(&mp, NULL, &m, &e) == SDXL_OK, "load (one_shot %d): %s", one_shot, e.msg);
    return m;
}

static void request(sdxl_gen_params *p, int *steps) {
    sdxl_gen_params_init(p);
    p->prompt = "a red fox in the snow";
    p->width = p->height = 64;
    p->steps = 3;
    p->seed = 11;
    p->n_threads = 2;
    p->progress = on_progress;
    p->progress_user = steps;
}

int main(void) {
    sdxl_pl_model *res = load(0), *one = load(1);
    if (!res || !one) return check_done();
    CHECK(one->base_cond.te1 != NULL && one->base_unet != NULL, "one-shot: text encoders loaded, UNet validated");
    sdxl_gen_params p;
    int steps = 0;
    request(&p, &steps);
    sdxl_pl_result a, b;
    sdxl_err e = {0};
    CHECK(sdxl_pl_generate(res, &p, NULL, NULL, NULL, &a, &e) == SDXL_OK, "resident: %s", e.msg);
    CHECK(sdxl_pl_generate(one, &p, NULL, NULL, NULL, &b, &e) == SDXL_OK, "one-shot: %s", e.msg);
    CHECK(a.n == 1 && b.n == 1 && !memcmp(a.img[0].rgb, b.img[0].rgb, 64 * 64 * 3), "one-shot gives the same pixels");
    CHECK(one->base_cond.te1 == NULL && one->base_cond.te2 == NULL && one->base_unet == NULL,
          "one-shot: text encoders and UNet freed by the end of the request");
    sdxl_pl_result c;
    CHECK(sdxl_pl_generate(one, &p, NULL, NULL, NULL, &c, &e) == SDXL_ERR_ARG && strstr(e.msg, "one_shot"),
          "second request refused: %s", e.msg);
    CHECK(sdxl_pl_generate(res, &p, NULL, NULL, NULL, &c, &e) == SDXL_OK &&
              !memcmp(a.img[0].rgb, c.img[0].rgb, 64 * 64 * 3),
          "a resident model serves again: %s", e.msg);
    sdxl_pl_result_free(&b);
    sdxl_pl_result_free(&c);

    /* max_memory: 1 MB cannot even hold what is resident; 64 GB holds everything */
    sdxl_pl_model *tight = load(1);
    steps = 0;
    p.max_memory = 1 << 20;
    sdxl_err_clear(&e);
    CHECK(tight && sdxl_pl_generate(tight, &p, NULL, NULL, NULL, &c, &e) == SDXL_ERR_LIMIT && steps == 0 &&
              strstr(e.msg, "max_memory") && strstr(e.msg, "sub-batch of 1"),
          "max_memory 1 MB fails before any step (%d steps): %s", steps, e.msg);
    sdxl_pl_model_free(tight);
    /* a one-shot model converting its UNet under a bound it meets: the resident model's pixels */
    sdxl_pl_model *roomy = load(1);
    p.max_memory = (uint64_t)64 << 30;
    steps = 0;
    CHECK(roomy && sdxl_pl_generate(roomy, &p, NULL, NULL, NULL, &c, &e) == SDXL_OK && steps == 3 && c.n == 1 &&
              !memcmp(a.img[0].rgb, c.img[0].rgb, 64 * 64 * 3),
          "one-shot under max_memory 64 GB gives the same pixels: %s", e.msg);
    sdxl_pl_result_free(&c);
    sdxl_pl_model_free(roomy);
    steps = 0;
    CHECK(sdxl_pl_generate(res, &p, NULL, NULL, NULL, &c, &e) == SDXL_OK && steps == 3, "max_memory 64 GB: %s", e.msg);
    sdxl_pl_result_free(&c);
    sdxl_pl_result_free(&a);
    sdxl_pl_model_free(res);
    sdxl_pl_model_free(one);
    return check_done();
}
