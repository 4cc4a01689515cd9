/* Checkpoint layout detection on the tiny models: single files (base, refiner), diffusers folders,
 * standalone UNet/VAE/text-encoder files in both namings and with kept prefixes, .fp16 variants,
 * and the errors for things that are not checkpoints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "io/checkpoint.h"

#define MODELS SDXL_TEST_DATA "/golden/models"

static sdxl_ckpt *open_ok(const char *path) {
    sdxl_ckpt *c = NULL;
    sdxl_err e = {0};
    int st = sdxl_ckpt_open(path, &c, &e);
    CHECK(st == SDXL_OK && c, "open %s: %s", path, e.msg);
    return c;
}

static void expect(const sdxl_ckpt *c, sdxl_layout l, const sdxl_naming nm[SDXL_PART_COUNT], const char *what) {
    CHECK(sdxl_ckpt_layout(c) == l, "%s: layout %s", what, sdxl_ckpt_layout_name(sdxl_ckpt_layout(c)));
    for (int p = 0; p < SDXL_PART_COUNT; p++) {
        CHECK(sdxl_ckpt_naming(c, (sdxl_part)p) == nm[p], "%s: %s naming %s, want %s", what, sdxl_part_name((sdxl_part)p),
              sdxl_naming_name(sdxl_ckpt_naming(c, (sdxl_part)p)), sdxl_naming_name(nm[p]));
        CHECK((sdxl_ckpt_count(c, (sdxl_part)p) > 0) == (nm[p] != SDXL_NAMING_NONE), "%s: %s count", what,
              sdxl_part_name((sdxl_part)p));
    }
}

/* Same tensor reached through two layouts must hold the same values (the layouts were proven
 * bit-exact conversions of each other). */
static void same_values(sdxl_ckpt *a, const char *na, sdxl_ckpt *b, const char *nb, sdxl_part p) {
    const sdxl_st_tensor *ta = sdxl_ckpt_find(a, p, na), *tb = sdxl_ckpt_find(b, p, nb);
    CHECK(ta && tb, "find %s / %s", na, nb);
    if (!ta || !tb) return;
    float *x = malloc(ta->numel * sizeof *x), *y = malloc(tb->numel * sizeof *y);
    sdxl_err e = {0};
    CHECK(sdxl_ckpt_read_f32(a, p, na, ta->ndim, ta->shape, x, &e) == SDXL_OK, "read %s: %s", na, e.msg);
    CHECK(sdxl_ckpt_read_f32(b, p, nb, ta->ndim, ta->shape, y, &e) == SDXL_OK, "read %s: %s", nb, e.msg);
    CHECK(ta->numel == tb->numel && !memcmp(x, y, ta->numel * sizeof *x), "%s == %s", na, nb);
    free(x);
    free(y);
}

static void test_tiny(void) {
    const sdxl_naming O = SDXL_NAMING_ORIGINAL, D = SDXL_NAMING_DIFFUSERS, N = SDXL_NAMING_NONE;
    sdxl_ckpt *sb = open_ok(MODELS "/tiny_sd_xl_base.safetensors");
    sdxl_ckpt *sr = open_ok(MODELS "/tiny_sd_xl_refiner.safetensors");
    sdxl_ckpt *db = open_ok(MODELS "/tiny-sdxl-base");
    sdxl_ckpt *dr = open_ok(MODELS "/tiny-sdxl-refiner");
    if (!sb || !sr || !db || !dr) return;
    expect(sb, SDXL_LAYOUT_SINGLE_FILE, (sdxl_naming[]){O, O, O, O}, "single base");
    expect(sr, SDXL_LAYOUT_SINGLE_FILE, (sdxl_naming[]){O, O, N, O}, "single refiner");
    expect(db, SDXL_LAYOUT_DIFFUSERS, (sdxl_naming[]){D, D, D, D}, "diffusers base");
    expect(dr, SDXL_LAYOUT_DIFFUSERS, (sdxl_naming[]){D, D, N, D}, "diffusers refiner");
    CHECK(!strcmp(sdxl_ckpt_prefix(sb, SDXL_PART_TE1), "conditioner.embedders.0.transformer.") &&
              !strcmp(sdxl_ckpt_prefix(sb, SDXL_PART_TE2), "conditioner.embedders.1.model.") &&
              !strcmp(sdxl_ckpt_prefix(sr, SDXL_PART_TE2), "conditioner.embedders.0.model.") &&
              !strcmp(sdxl_ckpt_prefix(sb, SDXL_PART_UNET), "model.diffusion_model.") &&
              !strcmp(sdxl_ckpt_prefix(db, SDXL_PART_UNET), ""),
          "prefixes");
    /* the layouts hold the same networks: equal tensor counts per part (README: 838/778/244) */
    CHECK(sdxl_ckpt_count(sb, SDXL_PART_UNET) == 838 && sdxl_ckpt_count(db, SDXL_PART_UNET) == 838, "base UNet 838 tensors");
    CHECK(sdxl_ckpt_count(sr, SDXL_PART_UNET) == 778 && sdxl_ckpt_count(dr, SDXL_PART_UNET) == 778, "refiner UNet 778");
    CHECK(sdxl_ckpt_count(sb, SDXL_PART_VAE) == 244 && sdxl_ckpt_count(db, SDXL_PART_VAE) == 244, "VAE 244");
    CHECK(sdxl_ckpt_params(sb, SDXL_PART_UNET) == sdxl_ckpt_params(db, SDXL_PART_UNET) &&
              sdxl_ckpt_params(sb, SDXL_PART_VAE) == sdxl_ckpt_params(db, SDXL_PART_VAE) &&
              sdxl_ckpt_params(sb, SDXL_PART_TE1) == sdxl_ckpt_params(db, SDXL_PART_TE1) + 77,
          "parameter counts agree across layouts (single-file TE1 adds position_ids [1,77])");
    CHECK(sdxl_ckpt_other_count(sb) == 0, "no stray tensors in the base file");
    const char *nm = sdxl_ckpt_name_at(sb, SDXL_PART_VAE, 0, NULL);
    CHECK(nm && (!strncmp(nm, "encoder.", 8) || !strncmp(nm, "decoder.", 8) || strstr(nm, "quant_conv.")),
          "stripped name %s", nm ? nm : "(null)");
    CHECK(sdxl_ckpt_config(sb, SDXL_PART_UNET) == NULL && sdxl_ckpt_model_index(sb) == NULL, "single file: no configs");
    CHECK(sdxl_json_get(sdxl_ckpt_config(db, SDXL_PART_UNET), "block_out_channels") != NULL, "unet config parsed");
    CHECK(!strcmp(sdxl_json_str(sdxl_ckpt_model_index(dr), "_class_name", ""), "StableDiffusionXLImg2ImgPipeline"),
          "model_index parsed");
    CHECK(sdxl_ckpt_find(sb, SDXL_PART_UNET, "time_embed.0.weight") && !sdxl_ckpt_find(sb, SDXL_PART_VAE, "time_embed.0.weight"),
          "find is per part");
    same_values(sb, "input_blocks.0.0.weight", db, "conv_in.weight", SDXL_PART_UNET);
    same_values(sb, "decoder.conv_in.weight", db, "decoder.conv_in.weight", SDXL_PART_VAE);
    same_values(sb, "text_model.encoder.layers.0.mlp.fc1.weight", db, "text_model.encoder.layers.0.mlp.fc1.weight",
                SDXL_PART_TE1);
    same_values(sb, "ln_final.weight", db, "text_model.final_layer_norm.weight", SDXL_PART_TE2);

    /* read_f32 errors name file, part and tensor */
    sdxl_err e = {0};
    float tmp[4];
    int64_t wrong[2] = {3, 4};
    int st = sdxl_ckpt_read_f32(sb, SDXL_PART_UNET, "time_embed.0.weight", 2, wrong, tmp, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "unet") && strstr(e.msg, "model.diffusion_model.time_embed.0.weight") &&
              strstr(e.msg, "expected [3,4]"),
          "shape mismatch: %s", e.msg);
    st = sdxl_ckpt_read_f32(sb, SDXL_PART_VAE, "nope.weight", 1, wrong, tmp, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "vae") && strstr(e.msg, "missing tensor \"first_stage_model.nope.weight\""),
          "missing: %s", e.msg);
    st = sdxl_ckpt_read_f32(sr, SDXL_PART_TE1, "x", 1, wrong, tmp, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "has no text_encoder"), "absent part: %s", e.msg);
    sdxl_ckpt_close(sb);
    sdxl_ckpt_close(sr);
    sdxl_ckpt_close(db);
    sdxl_ckpt_close(dr);
}

/* Writes every tensor of part p of `src` under `prefix` into a new file. */
static void extract(const char *src, sdxl_part p, const char *prefix, const char *out) {
    sdxl_ckpt *c = open_ok(src);
    if (!c) return;
    sdxl_st_writer *w;
    sdxl_err e = {0};
    sdxl_st_writer_new(&w, &e);
    for (size_t i = 0; i < sdxl_ckpt_count(c, p); i++) {
        const sdxl_st_tensor *t;
        const char *n = sdxl_ckpt_name_at(c, p, i, &t);
        char name[2048];
        snprintf(name, sizeof name, "%s%s", prefix, n);
        sdxl_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data, &e);
    }
    CHECK(sdxl_st_writer_finish(w, out, &e) == SDXL_OK, "write %s: %s", out, e.msg);
    sdxl_st_writer_free(w);
    sdxl_ckpt_close(c);
}

static void standalone(const char *path, sdxl_part p, sdxl_naming nm, const char *prefix, const char *what) {
    sdxl_ckpt *c = open_ok(path);
    if (!c) return;
    CHECK(sdxl_ckpt_layout(c) == SDXL_LAYOUT_STANDALONE && sdxl_ckpt_naming(c, p) == nm &&
              !strcmp(sdxl_ckpt_prefix(c, p), prefix),
          "%s: standalone %s %s prefix \"%s\" (got %s %s \"%s\")", what, sdxl_part_name(p), sdxl_naming_name(nm), prefix,
          sdxl_ckpt_layout_name(sdxl_ckpt_layout(c)), sdxl_naming_name(sdxl_ckpt_naming(c, p)),
          sdxl_ckpt_prefix(c, p) ? sdxl_ckpt_prefix(c, p) : "(none)");
    for (int q = 0; q < SDXL_PART_COUNT; q++)
        if (q != (int)p) CHECK(sdxl_ckpt_count(c, (sdxl_part)q) == 0, "%s: only one part", what);
    sdxl_ckpt_close(c);
}

static void test_standalone(void) {
    char d[64], p[256];
    snprintf(d, sizeof d, "test_io_ckpt_%d", (int)getpid());
    mkdir(d, 0755);
    const char *single = MODELS "/tiny_sd_xl_base.safetensors", *folder = MODELS "/tiny-sdxl-base";
    const sdxl_naming O = SDXL_NAMING_ORIGINAL, D = SDXL_NAMING_DIFFUSERS;
    standalone(MODELS "/tiny-sdxl-base/unet/diffusion_pytorch_model.safetensors", SDXL_PART_UNET, D, "", "bare diffusers UNet");
    standalone(MODELS "/tiny-sdxl-base/vae/diffusion_pytorch_model.safetensors", SDXL_PART_VAE, D, "", "bare diffusers VAE");
    standalone(MODELS "/tiny-sdxl-base/text_encoder_2/model.safetensors", SDXL_PART_TE2, D, "", "bare HF TE2");
    standalone(MODELS "/tiny-sdxl-base/text_encoder/model.safetensors", SDXL_PART_TE1, D, "", "bare HF TE1");
    standalone(MODELS "/tiny-sdxl-base/vae", SDXL_PART_VAE, D, "", "component folder (custom VAE)");
    struct {
        const char *src;
        sdxl_part part;
        const char *prefix;
        sdxl_naming nm;
        const char *what;
    } cases[] = {
        {single, SDXL_PART_VAE, "", O, "bare original VAE"},
        {single, SDXL_PART_UNET, "", O, "bare sgm UNet"},
        {single, SDXL_PART_VAE, "first_stage_model.", O, "VAE keeping first_stage_model."},
        {folder, SDXL_PART_VAE, "vae.", D, "diffusers VAE keeping vae."},
        {folder, SDXL_PART_VAE, "first_stage_model.", D, "diffusers VAE under first_stage_model."},
        {single, SDXL_PART_UNET, "model.diffusion_model.", O, "UNet keeping model.diffusion_model."},
        {folder, SDXL_PART_UNET, "unet.", D, "diffusers UNet keeping unet."},
        {single, SDXL_PART_TE2, "", O, "bare open_clip TE2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(p, sizeof p, "%s/c%zu.safetensors", d, i);
        extract(cases[i].src, cases[i].part, cases[i].prefix, p);
        standalone(p, cases[i].part, cases[i].nm, cases[i].prefix, cases[i].what);
        unlink(p);
    }

    /* .fp16 variant in a diffusers folder; refused things */
    char sub[256], real[4096];
    snprintf(sub, sizeof sub, "%s/unet", d);
    mkdir(sub, 0755);
    snprintf(p, sizeof p, "%s/model_index.json", d);
    FILE *fp = fopen(p, "w");
    fputs("{\"_class_name\":\"StableDiffusionXLPipeline\",\"unet\":[\"diffusers\",\"UNet2DConditionModel\"],"
          "\"vae\":[\"diffusers\",\"AutoencoderKL\"],\"text_encoder\":[null,null]}",
          fp);
    fclose(fp);
    sdxl_ckpt *c = NULL;
    sdxl_err e = {0};
    int st = sdxl_ckpt_open(d, &c, &e);
    CHECK(st == SDXL_ERR_IO && strstr(e.msg, "unet") && strstr(e.msg, "diffusion_pytorch_model.safetensors"),
          "listed component without weights: %s", e.msg);
    char *cwd = getcwd(NULL, 0);
    snprintf(real, sizeof real, "%s/%s/unet/diffusion_pytorch_model.fp16.safetensors", cwd, d);
    CHECK(symlink(MODELS "/tiny-sdxl-base/unet/diffusion_pytorch_model.safetensors", real) == 0, "symlink weights");
    snprintf(real, sizeof real, "%s/%s/unet/config.json", cwd, d);
    CHECK(symlink(MODELS "/tiny-sdxl-base/unet/config.json", real) == 0, "symlink config");
    st = sdxl_ckpt_open(d, &c, &e);
    CHECK(st == SDXL_ERR_IO && strstr(e.msg, "/vae"), "vae listed but absent: %s", e.msg);
    snprintf(p, sizeof p, "%s/model_index.json", d);
    fp = fopen(p, "w");
    fputs("{\"unet\":[\"diffusers\",\"UNet2DConditionModel\"],\"vae\":null}", fp);
    fclose(fp);
    c = open_ok(d);
    if (c) {
        CHECK(sdxl_ckpt_layout(c) == SDXL_LAYOUT_DIFFUSERS && sdxl_ckpt_count(c, SDXL_PART_UNET) == 838 &&
                  strstr(sdxl_st_path(sdxl_ckpt_file(c, SDXL_PART_UNET)), ".fp16.safetensors") &&
                  !sdxl_ckpt_file(c, SDXL_PART_VAE),
              "fp16 variant used when the canonical name is absent");
        sdxl_ckpt_close(c);
    }
    snprintf(real, sizeof real, "%s/%s/unet/diffusion_pytorch_model.fp16.safetensors", cwd, d);
    unlink(real);
    snprintf(real, sizeof real, "%s/%s/unet/config.json", cwd, d);
    unlink(real);
    rmdir(sub);
    unlink(p);

    st = sdxl_ckpt_open(MODELS "/tiny-sdxl-controlnet", &c, &e);
    CHECK(st == SDXL_ERR_UNSUPPORTED && strstr(e.msg, "ControlNet"), "controlnet refused: %s", e.msg);
    st = sdxl_ckpt_open(MODELS "/tiny_sdxl_lora_kohya.safetensors", &c, &e);
    CHECK(st == SDXL_ERR_UNSUPPORTED && strstr(e.msg, "LoRA"), "kohya LoRA refused: %s", e.msg);
    st = sdxl_ckpt_open(MODELS "/tiny_sdxl_lora_peft.safetensors", &c, &e);
    CHECK(st == SDXL_ERR_UNSUPPORTED && strstr(e.msg, "LoRA"), "PEFT LoRA refused: %s", e.msg);
    st = sdxl_ckpt_open(SDXL_TEST_DATA "/golden/cases/rng.safetensors", &c, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "no SDXL network recognised"), "unrelated file: %s", e.msg);
    st = sdxl_ckpt_open(d, &c, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "model_index.json"), "empty folder: %s", e.msg);
    st = sdxl_ckpt_open(MODELS "/tiny_sd_xl_base.yaml", &c, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "tiny_sd_xl_base.yaml"), "yaml is not safetensors: %s", e.msg);
    st = sdxl_ckpt_open("/nonexistent/model", &c, &e);
    CHECK(st == SDXL_ERR_IO && strstr(e.msg, "/nonexistent/model"), "missing path: %s", e.msg);

    /* bare file mixing networks without prefixes */
    sdxl_st_writer *w;
    sdxl_st_writer_new(&w, &e);
    int64_t s1[1] = {1};
    uint16_t h = 0;
    sdxl_st_writer_add(w, "encoder.conv_in.weight", SDXL_ST_F16, 1, s1, &h, &e);
    sdxl_st_writer_add(w, "input_blocks.0.0.weight", SDXL_ST_F16, 1, s1, &h, &e);
    snprintf(p, sizeof p, "%s/mix.safetensors", d);
    sdxl_st_writer_finish(w, p, &e);
    sdxl_st_writer_free(w);
    st = sdxl_ckpt_open(p, &c, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "mix UNet VAE"), "mixed bare file: %s", e.msg);
    unlink(p);
    /* two embedders claiming the same role */
    sdxl_st_writer_new(&w, &e);
    sdxl_st_writer_add(w, "conditioner.embedders.0.model.ln_final.weight", SDXL_ST_F16, 1, s1, &h, &e);
    sdxl_st_writer_add(w, "conditioner.embedders.2.model.ln_final.weight", SDXL_ST_F16, 1, s1, &h, &e);
    sdxl_st_writer_finish(w, p, &e);
    sdxl_st_writer_free(w);
    st = sdxl_ckpt_open(p, &c, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "text_encoder_2") && strstr(e.msg, "embedders.2.model."),
          "ambiguous embedders: %s", e.msg);
    unlink(p);
    rmdir(d);
    free(cwd);
}

int main(void) {
    test_tiny();
    test_standalone();
    return check_done();
}
