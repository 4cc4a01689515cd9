/* Pipeline: batch planner arithmetic, field-named validation, per-image generators with a
 * stochastic sampler (batch == singles), and cancellation from another thread within one step,
 * on the tiny test model. */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pipeline/pipeline.h"

static int est_linear(void *user, int b, uint64_t *bytes, sdxl_err *e) {
    (void)e;
    *bytes = (uint64_t)b * *(uint64_t *)user;
    return SDXL_OK;
}

/* 100 bytes per UNet row, CFG on, *user AND parts */
static int est_rows(void *user, int b, uint64_t *bytes, sdxl_err *e) {
    (void)e;
    *bytes = 100u * (uint64_t)sdxl_pl_unet_rows(b, 1, *(int *)user);
    return SDXL_OK;
}

static void test_planner(void) {
    uint64_t per = 100;
    sdxl_pl_plan p;
    sdxl_err e = {0};
    CHECK(sdxl_pl_plan_make(10, 0, 350, est_linear, &per, &p, &e) == SDXL_OK, "plan: %s", e.msg);
    CHECK(p.sub_batch == 3 && p.n_sub == 4 && p.memory_bound, "10 images, room for 3: got %d x %d", p.sub_batch, p.n_sub);
    CHECK(sdxl_pl_plan_make(5, 0, 400, est_linear, &per, &p, &e) == SDXL_OK, "plan");
    CHECK(p.sub_batch == 3 && p.n_sub == 2, "5 images, room for 4: even split 3 + 2, got %d x %d", p.sub_batch, p.n_sub);
    CHECK(sdxl_pl_plan_make(8, 2, 1 << 30, est_linear, &per, &p, &e) == SDXL_OK, "plan");
    CHECK(p.sub_batch == 2 && p.n_sub == 4 && !p.memory_bound, "user cap 2: got %d x %d", p.sub_batch, p.n_sub);
    CHECK(sdxl_pl_plan_make(3, 0, 50, est_linear, &per, &p, &e) == SDXL_OK, "plan");
    CHECK(p.sub_batch == 1 && p.n_sub == 3, "nothing fits: one at a time, got %d", p.sub_batch);
    CHECK(sdxl_pl_plan_make(0, 0, 50, est_linear, &per, &p, &e) == SDXL_ERR_ARG, "0 images rejected");
    char buf[256];
    sdxl_pl_plan_make(4, 0, 1 << 30, est_linear, &per, &p, &e);
    sdxl_pl_plan_describe(&p, 1, buf, sizeof buf);
    CHECK(strstr(buf, "4 images: 1 sub-batch of 4 (UNet batch 8 with CFG)") != NULL, "describe: %s", buf);
    /* composable AND: the uncond row plus one row per part, with or without CFG */
    CHECK(sdxl_pl_unet_rows(3, 0, 0) == 3 && sdxl_pl_unet_rows(3, 1, 0) == 6, "plain rows");
    CHECK(sdxl_pl_unet_rows(2, 1, 3) == 8 && sdxl_pl_unet_rows(2, 0, 2) == 6, "AND rows: (1 + parts) x images");
    /* an estimate by rows: with 3 AND parts (4 rows an image) half the images of CFG (2 rows) fit */
    int parts = 0;
    CHECK(sdxl_pl_plan_make(8, 0, 1600, est_rows, &parts, &p, &e) == SDXL_OK && p.sub_batch == 8, "CFG: 8 fit");
    parts = 3;
    CHECK(sdxl_pl_plan_make(8, 0, 1600, est_rows, &parts, &p, &e) == SDXL_OK && p.sub_batch == 4 && p.memory_bound,
          "AND x3: 4 fit, got %d", p.sub_batch);
}

static void expect_bad(const sdxl_gen_params *p, const char *field) {
    sdxl_err e = {0};
    int st = sdxl_pl_check(NULL, p, &e);
    CHECK(st != SDXL_OK && strncmp(e.msg, field, strlen(field)) == 0, "%s: status %d, message \"%s\"", field, st, e.msg);
}

static void test_validation(void) {
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    sdxl_err e = {0};
    CHECK(sdxl_pl_check(NULL, &p, &e) == SDXL_OK, "defaults valid: %s", e.msg);
    p.width = 100;
    expect_bad(&p, "width");
    sdxl_gen_params_init(&p);
    p.height = 0x7fffffff;
    expect_bad(&p, "height");
    sdxl_gen_params_init(&p);
    p.steps = 0;
    expect_bad(&p, "steps");
    sdxl_gen_params_init(&p);
    p.strength = 1.5f;
    expect_bad(&p, "strength");
    sdxl_gen_params_init(&p);
    p.sampler = "no such sampler";
    expect_bad(&p, "sampler");
    sdxl_gen_params_init(&p);
    p.cfg_scale = 0.0f / 0.0f;
    expect_bad(&p, "cfg_scale");
    sdxl_gen_params_init(&p);
    p.seed = -5;
    expect_bad(&p, "seed");
    sdxl_gen_params_init(&p);
    p.batch_count = 0;
    expect_bad(&p, "batch_count");
    sdxl_gen_params_init(&p);
    static const uint8_t px[64];
    p.mask = px;
    expect_bad(&p, "mask");
    sdxl_gen_params_init(&p);
    p.rng = "dice";
    expect_bad(&p, "rng");
    sdxl_gen_params_init(&p);
    p.refiner_switch = 0;
    expect_bad(&p, "refiner_switch");
}

/* ---- runs on the tiny model ------------------------------------------------------------------ */

typedef struct cancel_state {
    volatile int cancel;
    volatile int steps;
    volatile int steps_at_cancel;
} cancel_state;

static int count_steps(void *user, const sdxl_progress *p) {
    cancel_state *c = user;
    if (p->phase == SDXL_PHASE_BASE) __atomic_add_fetch(&c->steps, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void *canceller(void *arg) {
    cancel_state *c = arg;
    while (__atomic_load_n(&c->steps, __ATOMIC_SEQ_CST) < 2) sched_yield();
    c->steps_at_cancel = __atomic_load_n(&c->steps, __ATOMIC_SEQ_CST);
    __atomic_store_n(&c->cancel, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_runs(void) {
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors";
    mp.precision = "f32";
    sdxl_pl_model *m = NULL;
    sdxl_err e = {0};
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
        CHECK(0, "load tiny model: %s", e.msg);
        return;
    }
    /* a stochastic sampler: sub-batches of one image, each from its own generator */
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    p.prompt = "a small boat";
    p.width = p.height = 64;
    p.steps = 3;
    p.sampler = "Euler a";
    p.seed = 11;
    p.batch_count = 2;
    sdxl_pl_result rb, r1;
    CHECK(sdxl_pl_generate(m, &p, NULL, NULL, NULL, &rb, &e) == SDXL_OK, "batch: %s", e.msg);
    CHECK(rb.n == 2 && rb.st.sub_batch == 1, "Euler a runs one image per sub-batch: n %d sub %d", rb.n, rb.st.sub_batch);
    p.batch_count = 1;
    p.seed = 12;
    CHECK(sdxl_pl_generate(m, &p, NULL, NULL, NULL, &r1, &e) == SDXL_OK, "single: %s", e.msg);
    CHECK(rb.n == 2 && r1.n == 1 && r1.img[0].seed == 12 && rb.img[1].seed == 12 &&
              memcmp(rb.img[1].rgb, r1.img[0].rgb, 64 * 64 * 3) == 0,
          "image 1 of a batch seeded 11 equals the single image seeded 12");
    CHECK(rb.n == 2 && memcmp(rb.img[0].rgb, rb.img[1].rgb, 64 * 64 * 3) != 0, "different seeds differ");
    sdxl_pl_result_free(&rb);
    sdxl_pl_result_free(&r1);

    /* cancellation from another thread returns within one step */
    cancel_state cs = {0};
    p.sampler = "Euler";
    p.steps = 40;
    p.progress = count_steps;
    p.progress_user = &cs;
    pthread_t th;
    pthread_create(&th, NULL, canceller, &cs);
    sdxl_pl_result rc;
    int st = sdxl_pl_generate(m, &p, &cs.cancel, NULL, NULL, &rc, &e);
    pthread_join(th, NULL);
    CHECK(st == SDXL_ERR_CANCELLED, "cancelled: status %d (%s)", st, e.msg);
    CHECK(cs.steps - cs.steps_at_cancel <= 1, "returned within one step: %d steps after the cancel", cs.steps - cs.steps_at_cancel);
    CHECK(rc.n == 0 && rc.img == NULL, "no images after a cancel");

    /* inpainting with masked blending runs and keeps the size */
    uint8_t *img = malloc(64 * 64 * 3), *mask = calloc(64 * 64, 1);
    for (int i = 0; i < 64 * 64 * 3; i++) img[i] = (uint8_t)(i * 7);
    for (int y = 16; y < 48; y++)
        for (int x = 16; x < 48; x++) mask[y * 64 + x] = 255;
    sdxl_gen_params_init(&p);
    p.prompt = "a window";
    p.steps = 4;
    p.seed = 3;
    p.init_image = img;
    p.init_width = p.init_height = 64;
    p.mask = mask;
    p.strength = 1.0f;
    CHECK(sdxl_pl_generate(m, &p, NULL, NULL, NULL, &rc, &e) == SDXL_OK, "inpaint: %s", e.msg);
    CHECK(rc.n == 1 && rc.img[0].width == 64 && rc.img[0].height == 64, "inpaint image size");
    sdxl_pl_result_free(&rc);
    free(img);
    free(mask);
    sdxl_pl_model_free(m);
}

int main(void) {
    test_planner();
    test_validation();
    test_runs();
    return check_done();
}
