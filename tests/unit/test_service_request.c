/* Request dialects onto one struct, field-path validation with every problem at once, canonical
 * JSON round trip, scheduler names of every dialect, name resolution confined to the roots. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "service/names.h"
#include "service/request.h"

static int parse(const char *text, sdxl_svc_dialect d, sdxl_svc_request *r, sdxl_svc_issues *is) {
    sdxl_json *v = NULL;
    memset(is, 0, sizeof *is);
    if (sdxl_json_parse(text, strlen(text), NULL, "test", &v, NULL)) {
        sdxl_svc_request_init(r);
        return -1;
    }
    int st = sdxl_svc_request_parse(v, d, r, is);
    sdxl_json_free(v);
    return st;
}

static int has_issue(const sdxl_svc_issues *is, const char *code, const char *field) {
    for (int i = 0; i < is->n; i++)
        if (!strcmp(is->items[i].code, code) && !strcmp(is->items[i].field, field)) return 1;
    return 0;
}

int main(void) {
    sdxl_svc_request r;
    sdxl_svc_issues is;

    /* the orchestrator's payload */
    int st = parse("{\"worker_type\":\"sdxl_worker\",\"prompt\":\"p\",\"negative_prompt\":\"n\",\"model_name\":\"m1\","
                   "\"hyperparameters\":{\"num_inference_steps\":20,\"guidance_scale\":7.5,\"seed\":42,\"strength\":0.8},"
                   "\"dimensions\":{\"width\":1024,\"height\":768},\"scheduler\":\"DPMSolverMultistepScheduler\","
                   "\"models\":{\"base\":\"org/base\",\"refiner\":null,\"vae\":\"custom/vae\"},\"lora\":{\"enabled\":true,"
                   "\"models\":[{\"name\":\"style\",\"weight\":-1.5,\"adapter_name\":null}]},\"output\":{\"format\":\"webp\","
                   "\"quality\":80,\"save_path\":\"outputs/\"},\"batch\":{\"size\":3},\"metadata\":{\"request_id\":\"abc\","
                   "\"priority\":\"high\",\"timeout\":120}}",
                   SDXL_DIALECT_AUTO, &r, &is);
    CHECK(st == 0 && r.dialect == SDXL_DIALECT_ORCH_PAYLOAD, "payload parses (%s)", is.n ? is.items[0].message : "");
    CHECK(r.g.steps == 20 && fabsf(r.g.cfg_scale - 7.5f) < 1e-6 && r.g.seed == 42 && r.g.width == 1024 &&
              r.g.height == 768,
          "payload numbers");
    CHECK(!strcmp(r.base, "org/base") && !r.refiner && !strcmp(r.vae, "custom/vae"), "payload models");
    CHECK(r.n_loras == 1 && !strcmp(r.loras[0].name, "style") && r.loras[0].weight == -1.5f, "payload lora");
    CHECK(!r.init_image && r.g.strength == 0.8f, "strength alone is not img2img");
    CHECK(r.g.batch_count == 3 && r.priority == SDXL_PRIO_HIGH && r.timeout_s == 120 && !strcmp(r.client_id, "abc"),
          "payload batch / metadata");
    CHECK(!strcmp(r.format, "webp") && r.quality == 80 && !strcmp(r.save_path, "outputs/"), "payload output");
    /* canonical round trip */
    sdxl_strbuf a = {0}, b = {0};
    sdxl_svc_request_to_json(&r, &a);
    sdxl_svc_request c;
    CHECK(sdxl_svc_request_copy(&r, &c) == 0, "canonical JSON reads back");
    sdxl_svc_request_to_json(&c, &b);
    CHECK(a.p && b.p && !strcmp(a.p, b.p), "canonical JSON is stable:\n%s\n%s", a.p, b.p);
    sdxl_sb_free(&a);
    sdxl_sb_free(&b);
    sdxl_svc_request_free(&c);
    sdxl_svc_request_free(&r);

    /* the C# object, PascalCase */
    st = parse("{\"Model\":{\"Base\":\"stabilityai/sdxl-base-1.0\",\"Refiner\":\"stabilityai/sdxl-refiner-1.0\"},"
               "\"Scheduler\":{\"Type\":\"DPM++\",\"Steps\":50,\"GuidanceScale\":7.5},\"Hyperparameters\":{\"Width\":1024,"
               "\"Height\":1024,\"Seed\":123456,\"BatchSize\":1},\"Conditioning\":{\"Prompt\":\"sunset\",\"NegativePrompt\":"
               "\"blurry\",\"LoRAs\":[{\"ModelPath\":\"path/to/lora\",\"Weight\":0.8}]},\"Output\":{\"Format\":\"PNG\","
               "\"Quality\":95,\"SavePath\":\"outputs/\"}}",
               SDXL_DIALECT_AUTO, &r, &is);
    CHECK(st == 0 && r.dialect == SDXL_DIALECT_ORCH_CSHARP, "C# object parses (%s)", is.n ? is.items[0].message : "");
    CHECK(r.g.steps == 50 && r.g.seed == 123456 && !strcmp(r.g.prompt, "sunset") && !strcmp(r.refiner,
          "stabilityai/sdxl-refiner-1.0"), "C# fields");
    CHECK(r.n_loras == 1 && !strcmp(r.loras[0].name, "path/to/lora") && r.loras[0].weight == 0.8f, "C# LoRAs");
    sdxl_svc_request_free(&r);

    /* A1111 img2img */
    st = parse("{\"prompt\":\"a cat\",\"sampler_name\":\"DPM++ 2M\",\"scheduler\":\"Karras\",\"steps\":25,\"cfg_scale\":6,"
               "\"denoising_strength\":0.55,\"init_images\":[\"data:image/png;base64,iVBORw0KGgo=\"],\"n_iter\":2,"
               "\"batch_size\":2,\"override_settings\":{\"sd_model_checkpoint\":\"sdxl_base\",\"CLIP_stop_at_last_layers\":2}}",
               SDXL_DIALECT_AUTO, &r, &is);
    CHECK(st == 0 && r.dialect == SDXL_DIALECT_A1111_IMG2IMG, "A1111 img2img parses (%s)", is.n ? is.items[0].message : "");
    CHECK(r.g.strength == 0.55f && r.init_image && r.g.batch_count == 2 && r.g.batch_size == 2 && r.g.clip_skip == 2 &&
              !strcmp(r.g.schedule, "Karras") && !strcmp(r.base, "sdxl_base"),
          "A1111 fields");
    sdxl_svc_request_free(&r);

    /* camelCase and PascalCase of the canonical keys */
    st = parse("{\"Prompt\":\"x\",\"negativePrompt\":\"y\",\"cfgScale\":4,\"BatchCount\":2,\"clip_skip\":2}",
               SDXL_DIALECT_AUTO, &r, &is);
    CHECK(st == 0 && r.dialect == SDXL_DIALECT_NATIVE && !strcmp(r.g.negative_prompt, "y") && r.g.cfg_scale == 4 &&
              r.g.batch_count == 2,
          "camelCase / PascalCase keys bind");
    sdxl_svc_request_free(&r);

    /* every problem at once, with field paths */
    st = parse("{\"prompt\":3,\"width\":100,\"steps\":\"x\",\"loras\":[{\"name\":\"a\"},{\"name\":\"b\",\"weight\":3}],"
               "\"sampler\":\"Nonsense Sampler\",\"model\":\"../x\",\"bogus\":1}",
               SDXL_DIALECT_NATIVE, &r, &is);
    CHECK(st != 0 && is.n >= 7, "7 problems reported, got %d", is.n);
    CHECK(has_issue(&is, "wrong_type", "prompt") && has_issue(&is, "out_of_range", "width") &&
              has_issue(&is, "wrong_type", "steps") && has_issue(&is, "out_of_range", "loras[1].weight") &&
              has_issue(&is, "unknown_scheduler", "sampler") && has_issue(&is, "path_refused", "model") &&
              has_issue(&is, "unknown_field", "bogus"),
          "codes and paths");
    char joined[2048];
    sdxl_svc_issues_join(&is, joined, sizeof joined);
    CHECK(strstr(joined, "loras[1].weight: must be within -2..2") != NULL, "message: %s", joined);
    sdxl_svc_request_free(&r);

    /* scheduler names of every dialect resolve */
    static const char *const names[] = {
        "DPMSolverMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
        "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DDIM", "PNDM", "LMS", "EulerA",
        "EulerC", "Heun", "DPM++", "DPMSolverMultistep", "DPMSolverSinglestep", "Euler", "EulerAncestral", "KDPM2",
        "KDPM2Ancestral", "UniPC", "Euler a", "DPM++ 2M Karras", "dpmpp_2m", "k_euler_ancestral", "euler_ancestral"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECK(sdxl_svc_scheduler_alias(names[i]) != NULL, "scheduler %s resolves", names[i]);
    CHECK(sdxl_svc_scheduler_alias("Totally Unknown") == NULL, "nonsense is refused");

    /* names stay inside the roots */
    char root[] = "/tmp/sdxl_names_XXXXXX";
    CHECK(mkdtemp(root) != NULL, "temp dir");
    char p[PATH_MAX + 64], outside[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/models", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/models/org", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/models/org/base.safetensors", root);
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    snprintf(outside, sizeof outside, "%s/secret.safetensors", root);
    f = fopen(outside, "w");
    if (f) fclose(f);
    snprintf(p, sizeof p, "%s/models/link.safetensors", root);
    CHECK(symlink(outside, p) == 0, "symlink");
    char mdir[PATH_MAX + 16];
    snprintf(mdir, sizeof mdir, "%s/models", root);
    const char *dirs[] = {mdir};
    sdxl_engine_config cfg;
    sdxl_engine_config_init(&cfg);
    cfg.models_dirs = dirs;
    cfg.n_models_dirs = 1;
    sdxl_svc_roots roots;
    char err[512], out[PATH_MAX];
    CHECK(sdxl_svc_roots_init(&roots, &cfg, err, sizeof err) == 0, "roots");
    CHECK(sdxl_svc_resolve(&roots, "model", "org/base", out, sizeof out, err, sizeof err) == 0, "org/name: %s", err);
    CHECK(sdxl_svc_resolve(&roots, "model", "link", out, sizeof out, err, sizeof err) != 0 && strstr(err, "refused"),
          "symlink escape refused: %s", err);
    CHECK(sdxl_svc_resolve(&roots, "model", "../secret", out, sizeof out, err, sizeof err) != 0, "dotdot refused");
    CHECK(sdxl_svc_resolve(&roots, "model", outside, out, sizeof out, err, sizeof err) != 0, "absolute outside refused");
    CHECK(sdxl_svc_resolve(&roots, "lora", "org/base", out, sizeof out, err, sizeof err) == 0,
          "LoRA names also resolve in the model roots");
    CHECK(sdxl_svc_resolve(&roots, "input", "x.png", out, sizeof out, err, sizeof err) != 0,
          "no input folder: image paths refused");
    sdxl_svc_roots_free(&roots);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    CHECK(system(cmd) == 0, "cleanup");

    /* the schema file in docs/ is the text the worker prints */
    char *doc = NULL;
    size_t n = 0;
    FILE *fs = fopen(SDXL_SOURCE_DIR "/docs/worker.schema.json", "rb");
    if (fs) {
        fseek(fs, 0, SEEK_END);
        n = (size_t)ftell(fs);
        fseek(fs, 0, SEEK_SET);
        doc = calloc(n + 1, 1);
        if (doc && fread(doc, 1, n, fs) != n) n = 0;
        fclose(fs);
    }
    CHECK(doc && !strcmp(doc, sdxl_svc_request_schema()), "docs/worker.schema.json matches `sdxl worker --schema`");
    sdxl_json *sv = NULL;
    CHECK(doc && sdxl_json_parse(doc, n, NULL, "schema", &sv, NULL) == 0, "the schema is valid JSON");
    sdxl_json_free(sv);
    free(doc);
    return check_done();
}
