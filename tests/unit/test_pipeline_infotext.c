/* pipeline/meta: A1111's infotext alone as a request (what `sdxl generate --from` does with an image
 * from A1111 or Forge): every field the engine knows is mapped, the rest named in one warning; our
 * own infotext read back this way reproduces the image (hires fix included); floats print as A1111
 * prints them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "pipeline/pipeline.h"

static const char *A1111 =
    "masterpiece, a castle on a hill, (sunset:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 832x1216, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.45, Clip skip: 2, RNG: NV, ENSD: 31337, "
    "Hires upscale: 1.5, Hires steps: 12, Hires upscaler: Latent (bicubic antialiased), "
    "Lora hashes: \"detail: 0123456789ab\", Version: v1.10.1";

static void test_mapping(void) {
    sdxl_gen_params p;
    void *st = NULL;
    char warn[1024];
    sdxl_err e = {0};
    int rc = sdxl_pl_params_from_infotext(A1111, strlen(A1111), "my_model", &p, &st, warn, sizeof warn, &e);
    CHECK(rc == SDXL_OK, "parse: %s", e.msg);
    if (rc) return;
    CHECK(!strcmp(p.prompt, "masterpiece, a castle on a hill, (sunset:1.2)"), "prompt: %s", p.prompt);
    CHECK(p.negative_prompt && !strcmp(p.negative_prompt, "blurry, lowres"), "negative");
    CHECK(p.steps == 28 && !strcmp(p.sampler, "DPM++ 2M") && !strcmp(p.schedule, "Karras"), "steps/sampler/schedule");
    CHECK(p.cfg_scale == 6.5f && p.seed == 1234567 && p.width == 832 && p.height == 1216, "cfg/seed/size");
    CHECK(p.clip_skip == 2 && p.rng && !strcmp(p.rng, "philox"), "clip skip, RNG NV -> philox");
    CHECK(p.enable_hr && p.hr_scale == 1.5f && p.hr_second_pass_steps == 12 && p.hr_denoising_strength == 0.45f &&
              !strcmp(p.hr_upscaler, "Latent (bicubic antialiased)"),
          "hires fields");
    CHECK(p.eta_noise_seed_delta == 31337, "ENSD -> eta_noise_seed_delta: %d", p.eta_noise_seed_delta);
    CHECK(!strstr(warn, "ENSD") && strstr(warn, "Lora hashes") && strstr(warn, "my_model") && !strstr(warn, "Version") &&
              !strstr(warn, "Hires"),
          "warning names what is ignored: %s", warn);
    free(st);
    /* an infotext without parameters line is still a prompt */
    rc = sdxl_pl_params_from_infotext("just a prompt", 13, NULL, &p, &st, warn, sizeof warn, &e);
    CHECK(rc == SDXL_OK && !strcmp(p.prompt, "just a prompt") && p.steps == 30 && !*warn, "prompt only");
    free(st);
}

static void test_roundtrip(void) {
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors";
    mp.precision = "f32";
    sdxl_pl_model *m = NULL;
    sdxl_err e = {0};
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
        CHECK(0, "load: %s", e.msg);
        return;
    }
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    p.prompt = "a [red:blue:0.5] fox";
    p.negative_prompt = "blurry";
    p.width = 64, p.height = 64, p.steps = 3, p.cfg_scale = 5.5f, p.seed = 9;
    p.sampler = "DPM++ 2M", p.schedule = "Karras";
    p.enable_hr = 1, p.hr_scale = 1.5f, p.hr_second_pass_steps = 2, p.hr_denoising_strength = 0.55f;
    p.hr_upscaler = "Latent (nearest-exact)";
    sdxl_pl_result a, b;
    if (sdxl_pl_generate(m, &p, NULL, NULL, NULL, &a, &e)) {
        CHECK(0, "generate: %s", e.msg);
        sdxl_pl_model_free(m);
        return;
    }
    const char *it = a.img[0].infotext;
    CHECK(a.img[0].width == 96 && a.img[0].height == 96, "hires image is 96x96 (%dx%d)", a.img[0].width, a.img[0].height);
    CHECK(strstr(it, "CFG scale: 5.5,") && strstr(it, "Denoising strength: 0.55,") && strstr(it, "Hires upscale: 1.5,") &&
              strstr(it, "Size: 64x64,") && strstr(it, "Hires steps: 2,") && strstr(it, "Hires upscaler: Latent (nearest-exact)"),
          "infotext: %s", it);
    sdxl_gen_params q;
    void *st = NULL;
    char warn[512];
    int rc = sdxl_pl_params_from_infotext(it, strlen(it), "tiny_sd_xl_base", &q, &st, warn, sizeof warn, &e);
    CHECK(rc == SDXL_OK && !*warn, "our infotext reads back without warnings: %s %s", e.msg, warn);
    if (!rc && !sdxl_pl_generate(m, &q, NULL, NULL, NULL, &b, &e)) {
        CHECK(b.n == 1 && !memcmp(a.img[0].rgb, b.img[0].rgb, 96 * 96 * 3), "the infotext alone reproduces the pixels");
        CHECK(!strcmp(a.img[0].infotext, b.img[0].infotext), "and the infotext");
        sdxl_pl_result_free(&b);
    } else {
        CHECK(0, "regenerate: %s", e.msg);
    }
    free(st);
    sdxl_pl_result_free(&a);
    sdxl_pl_model_free(m);
}

int main(void) {
    test_mapping();
    test_roundtrip();
    return check_done();
}
