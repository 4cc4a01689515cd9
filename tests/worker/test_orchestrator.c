/* The C# orchestrator's side of `sdxl worker`, through pipes: every example request of the
 * contract plus derived messages of every kind (PascalCase object, CRLF, \u escapes, integral
 * floats, nulls). Each reply must be exactly one line, parse, carry the documented envelope, and
 * its data keys must bind case-insensitively to the C# property names with fitting types; images
 * named in replies must exist with the requested size.
 * usage: test_orchestrator SDXL_BIN MODELS_SRC PROTOCOL_EXAMPLES WORK_DIR [--fast] */
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "io/image.h"

static int n_pass, n_fail;
static const char *g_work;

/* C# property kinds: s string, d double, l int64, i int32, b bool, m map string->bool,
 * a array of strings, o object */
typedef struct prop {
    const char *name;
    char kind;
} prop;

static const prop LOAD[] = {{"ModelId", 's'}, {"LoadTimeSeconds", 'd'}, {"ModelSizeBytes", 'l'}, {"GpuId", 's'}, {0, 0}};
static const prop BASIC[] = {{"OutputPath", 's'}, {"GenerationTimeSeconds", 'd'}, {"Seed", 'i'}, {"Width", 'i'},
                             {"Height", 'i'},     {"GpuId", 's'},                 {0, 0}};
static const prop ENH[] = {{"Images", 'a'},      {"GenerationTimeSeconds", 'd'}, {"PreprocessingTimeSeconds", 'd'},
                           {"PostprocessingTimeSeconds", 'd'}, {"MemoryUsedMB", 'd'}, {"SeedUsed", 'i'},
                           {"FeaturesUsed", 'm'}, {"GpuId", 's'}, {0, 0}};
static const prop VALID[] = {{"Valid", 'b'}, {"Error", 's'}, {"Warnings", 'a'}, {"ValidationDetails", 'o'}, {0, 0}};
static const prop CAPS[] = {{"Features", 'm'},           {"SupportedSchedulers", 'a'},   {"SupportedFormats", 'a'},
                            {"MaxResolution", 'i'},      {"MaxBatchSize", 'i'},          {"MemoryOptimizations", 'a'},
                            {"PostprocessingOptions", 'a'}, {0, 0}};

static int fits(const sdxl_json *v, char kind) {
    switch (kind) {
    case 's': return v->type == SDXL_JSON_STRING || v->type == SDXL_JSON_NULL;
    case 'd': return v->type == SDXL_JSON_NUMBER && isfinite(v->number);
    case 'l': return v->type == SDXL_JSON_NUMBER && v->is_int;
    case 'i': return v->type == SDXL_JSON_NUMBER && v->is_int && v->integer >= -2147483648LL && v->integer <= 2147483647LL;
    case 'b': return v->type == SDXL_JSON_BOOL;
    case 'o': return v->type == SDXL_JSON_OBJECT;
    case 'm':
        if (v->type != SDXL_JSON_OBJECT) return 0;
        for (size_t i = 0; i < v->len; i++)
            if (v->items[i].type != SDXL_JSON_BOOL) return 0;
        return 1;
    case 'a':
        if (v->type != SDXL_JSON_ARRAY) return 0;
        for (size_t i = 0; i < v->len; i++)
            if (v->items[i].type != SDXL_JSON_STRING) return 0;
        return 1;
    }
    return 0;
}

static int image_ok(const char *path, int w, int h) {
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", g_work, path);
    sdxl_image img = {0};
    if (sdxl_image_read(path[0] == '/' ? path : full, NULL, 3, &img, NULL, NULL)) return 0;
    int ok = (w <= 0 || img.width == w) && (h <= 0 || img.height == h);
    sdxl_image_free(&img);
    return ok;
}

/* Sends one line; reads exactly one reply; checks envelope, success and the required data keys.
 * Returns the parsed reply (caller frees). */
static sdxl_json *ask(wk *w, const char *what, const char *line, size_t len, int want_success, const prop *props) {
    if (wk_write(w, line, len) || (len && line[len - 1] != '\n' && wk_write(w, "\n", 1))) {
        CHECK(0, "%s: cannot write", what);
        return NULL;
    }
    char *rep = wk_read(w, 600);
    CHECK(rep != NULL, "%s: no reply", what);
    if (!rep) return NULL;
    /* lock-step: nothing else may follow the reply */
    CHECK(!wk_ready(w, 0.05), "%s: more than one line came back", what);
    sdxl_json *v = NULL;
    int parsed = sdxl_json_parse(rep, strlen(rep), NULL, "reply", &v, NULL) == 0;
    CHECK(parsed, "%s: reply does not parse: %.200s", what, rep);
    if (!parsed) {
        free(rep);
        return NULL;
    }
    const sdxl_json *su = sdxl_json_get(v, "success"), *er = sdxl_json_get(v, "error"), *da = sdxl_json_get(v, "data");
    CHECK(su && su->type == SDXL_JSON_BOOL, "%s: success must be a bool", what);
    CHECK(er && (er->type == SDXL_JSON_NULL || er->type == SDXL_JSON_STRING), "%s: error must be null or a string", what);
    CHECK(da && (da->type == SDXL_JSON_NULL || da->type == SDXL_JSON_OBJECT), "%s: data must be null or an object", what);
    int ok = su && su->type == SDXL_JSON_BOOL && su->boolean;
    if (want_success >= 0)
        CHECK(ok == want_success, "%s: success %d, wanted %d: %.300s", what, ok, want_success, rep);
    if (ok) {
        CHECK(er && er->type == SDXL_JSON_NULL, "%s: success with an error text", what);
        CHECK(da && da->type == SDXL_JSON_OBJECT, "%s: success needs non-null data", what);
        for (int i = 0; props && props[i].name && da && da->type == SDXL_JSON_OBJECT; i++) {
            const sdxl_json *pv = ci_get(da, props[i].name);
            CHECK(pv != NULL, "%s: data.%s missing (binds case-insensitively)", what, props[i].name);
            if (pv) CHECK(fits(pv, props[i].kind), "%s: data.%s has the wrong type for kind %c", what, props[i].name,
                          props[i].kind);
        }
    } else {
        CHECK(er && er->type == SDXL_JSON_STRING && er->len > 0 && !strchr(er->str, '\n'),
              "%s: a failure needs a one-line error", what);
        CHECK(da && da->type == SDXL_JSON_NULL, "%s: a failure has data null", what);
    }
    free(rep);
    return v;
}

static sdxl_json *ask_s(wk *w, const char *what, const char *line, int want, const prop *props) {
    return ask(w, what, line, strlen(line), want, props);
}

/* A pretty-printed example file as one wire line. */
static char *example_line(const char *dir, const char *name) {
    char path[4096], *b;
    size_t n;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (read_file(path, &b, &n)) return NULL;
    for (size_t i = 0; i < n; i++)
        if (b[i] == '\n' || b[i] == '\r') b[i] = ' ';
    return b;
}

/* The example's data keys exist in ours, with the same JSON types. */
static void same_shape(const char *what, const sdxl_json *ours, const char *dir, const char *name) {
    char *b = example_line(dir, name);
    sdxl_json *ex = NULL;
    if (!b || sdxl_json_parse(b, strlen(b), NULL, name, &ex, NULL)) {
        CHECK(0, "%s: cannot read %s", what, name);
        free(b);
        return;
    }
    const sdxl_json *ed = sdxl_json_get(ex, "data"), *od = sdxl_json_get(ours, "data");
    for (size_t i = 0; ed && od && i < ed->len; i++) {
        const sdxl_json *ov = ci_get(od, ed->keys[i]);
        CHECK(ov != NULL, "%s: %s key %s missing from our reply", what, name, ed->keys[i]);
        if (ov) CHECK(ov->type == ed->items[i].type, "%s: %s key %s: type differs", what, name, ed->keys[i]);
    }
    sdxl_json_free(ex);
    free(b);
}

static void check_images(const char *what, const sdxl_json *v, int n, int w, int h) {
    const sdxl_json *im = ci_get(sdxl_json_get(v, "data"), "Images");
    CHECK(im && im->type == SDXL_JSON_ARRAY && (n < 0 || (int)im->len == n), "%s: %d images expected", what, n);
    for (size_t i = 0; im && i < im->len; i++)
        CHECK(im->items[i].type == SDXL_JSON_STRING && image_ok(im->items[i].str, w, h), "%s: image %zu missing or of the wrong size",
              what, i);
}

static const char *data_str(const sdxl_json *v, const char *k) {
    const sdxl_json *x = ci_get(sdxl_json_get(v, "data"), k);
    return x && x->type == SDXL_JSON_STRING ? x->str : "";
}

static int64_t data_int(const sdxl_json *v, const char *k) {
    const sdxl_json *x = ci_get(sdxl_json_get(v, "data"), k);
    return x && x->type == SDXL_JSON_NUMBER ? (int64_t)x->number : -999;
}

static const char *err_str(const sdxl_json *v) { return sdxl_json_str(v, "error", ""); }

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: test_orchestrator SDXL_BIN MODELS_SRC EXAMPLES WORK_DIR [--fast]\n");
        return 2;
    }
    char bin[4096], src[4096], ex[4096], work[4096];
    rm_rf(argv[4]);
    mkdir(argv[4], 0755);
    if (!realpath(argv[1], bin) || !realpath(argv[2], src) || !realpath(argv[3], ex) || !realpath(argv[4], work)) {
        fprintf(stderr, "test_orchestrator: a path does not exist\n");
        return 2;
    }
    int fast = argc > 5 && !strcmp(argv[5], "--fast");
    g_work = work;
    char models[4096], errlog[4096];
    snprintf(models, sizeof models, "%s/models", work);
    snprintf(errlog, sizeof errlog, "%s/stderr.log", work);
    if (make_models_dir(src, models)) {
        printf("FAIL: cannot build the models folder\n");
        return 1;
    }
    const char *args[] = {"--models-dir", models, "--precision", "f32", "-t", "2", NULL};
    wk w;
    if (wk_start(&w, bin, work, errlog, args)) return 1;
    /* the first reply counts as ready: nothing may come before it */
    CHECK(!wk_ready(&w, 0.5), "the worker wrote something before being asked");

    char *l1 = example_line(ex, "req_01_initialize.json"), *l2 = example_line(ex, "req_02_load_model.json"),
         *l5 = example_line(ex, "req_05_inference_request_basic.json");
    CHECK(l1 && l2 && l5, "examples readable");
    sdxl_json *v;
    v = ask_s(&w, "example initialize", l1, 1, NULL);
    sdxl_json_free(v);
    v = ask_s(&w, "example load_model", l2, 1, LOAD);
    if (v) {
        same_shape("example load_model", v, ex, "resp_02_load_model_ok.json");
        CHECK(!strcmp(data_str(v, "ModelId"), "sdxl_base"), "load_model ModelId is the file stem: %s", data_str(v, "ModelId"));
        CHECK(data_int(v, "ModelSizeBytes") > 1000000, "ModelSizeBytes is the file size");
    }
    sdxl_json_free(v);
    /* the contract's own example, unchanged: 1024x1024, 20 DPM++ steps with the example's own
     * 300 s timeout (about 40 s on a quiet 2-core machine). A machine shared far beyond its cores
     * cannot keep that promise, so the run is skipped there (and said so); the 64x64 form below
     * still reads every field. */
    double load[1] = {0};
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (!fast && getloadavg(load, 1) == 1 && load[0] > 4.0 * (double)(ncpu > 0 ? ncpu : 1)) {
        printf("note: load average %.1f on %ld CPUs: the 1024x1024 example is skipped this run\n", load[0], ncpu);
        fast = 1;
    }
    if (!fast) {
        v = ask_s(&w, "example inference_request", l5, 1, ENH);
        if (v) {
            same_shape("example inference_request", v, ex, "resp_03_enhanced_generate_ok_csharp_binding.json");
            check_images("example inference_request", v, 1, 1024, 1024);
            CHECK(data_int(v, "SeedUsed") == 42, "SeedUsed 42");
            const char *p = "";
            const sdxl_json *im = ci_get(sdxl_json_get(v, "data"), "Images");
            if (im && im->len) p = im->items[0].str;
            CHECK(!strncmp(p, "outputs/enhanced_sdxl_", 22), "image under save_path outputs/: %s", p);
        }
        sdxl_json_free(v);
    }
    /* the same example at 64x64, 2 steps: every field of the payload is read */
    if (l5) {
        char *s = strdup(l5);
        char *q;
        while ((q = strstr(s, "1024"))) memcpy(q, "64  ", 4);
        q = strstr(s, "\"num_inference_steps\": 20");
        if (q) memcpy(q, "\"num_inference_steps\":  2", 25);
        v = ask_s(&w, "derived inference_request 64", s, 1, ENH);
        if (v) {
            check_images("derived inference_request 64", v, 1, 64, 64);
            const sdxl_json *fu = ci_get(sdxl_json_get(v, "data"), "FeaturesUsed");
            const sdxl_json *i2i = ci_get(fu, "img2img");
            CHECK(i2i && i2i->type == SDXL_JSON_BOOL && !i2i->boolean, "strength alone is not img2img");
        }
        sdxl_json_free(v);
        free(s);
    }
    /* CRLF line end, blank lines skipped */
    static const char crlf[] = "\r\n\n{\"action\":\"initialize\",\"device_index\":0}\r\n";
    v = ask(&w, "CRLF initialize", crlf, sizeof crlf - 1, 1, NULL);
    sdxl_json_free(v);
    /* basic generate_image: integral floats, explicit seed */
    v = ask_s(&w, "generate_image",
              "{\"action\":\"generate_image\",\"parameters\":{\"prompt\":\"a red fox\",\"negative_prompt\":\"blurry\","
              "\"width\":64,\"height\":64,\"steps\":2,\"guidance_scale\":7,\"seed\":7}}",
              1, BASIC);
    if (v) {
        CHECK(data_int(v, "Seed") == 7, "Seed 7");
        CHECK(image_ok(data_str(v, "OutputPath"), 64, 64), "OutputPath exists (%s)", data_str(v, "OutputPath"));
    }
    sdxl_json_free(v);
    /* nulls for absent values, random seed within int32 */
    v = ask_s(&w, "generate_image nulls",
              "{\"action\":\"generate_image\",\"parameters\":{\"prompt\":\"x\",\"negative_prompt\":null,\"width\":64,"
              "\"height\":64,\"steps\":2,\"guidance_scale\":7.5,\"seed\":-1}}",
              1, BASIC);
    if (v) CHECK(data_int(v, "Seed") >= 0, "random seed fits int32");
    sdxl_json_free(v);
    /* \u escapes of every non-ASCII character and < > & ' +, surrogate pairs */
    v = ask_s(&w, "inference_request escapes",
              "{\"message_type\":\"inference_request\",\"request_id\":\"0123456789abcdef\",\"data\":{\"worker_type\":"
              "\"enhanced_sdxl_worker\",\"prompt\":\"\\u003Ccat\\u003E \\u0026 \\u0027dog\\u0027 \\u002B caf\\u00E9 "
              "\\uD83D\\uDE00\",\"negative_prompt\":\"\",\"model_name\":\"cyberrealistic_v1.1\",\"hyperparameters\":{"
              "\"num_inference_steps\":2,\"guidance_scale\":7,\"seed\":11,\"strength\":0.8},\"dimensions\":{\"width\":64,"
              "\"height\":64},\"scheduler\":\"DDIMScheduler\",\"models\":{\"base\":\"cyberrealistic_v1.1\",\"refiner\":null,"
              "\"vae\":null},\"lora\":{\"enabled\":false,\"models\":[]},\"controlnet\":{\"enabled\":false},\"output\":{"
              "\"format\":\"png\",\"quality\":95,\"save_path\":\"outputs/\",\"upscale\":{\"enabled\":false}},\"batch\":{"
              "\"size\":1,\"parallel\":false},\"precision\":{\"dtype\":\"fp16\",\"cpu_offload\":false,"
              "\"sequential_cpu_offload\":false,\"attention_slicing\":true,\"vae_slicing\":true,\"xformers\":false},"
              "\"metadata\":{\"request_id\":\"0123456789abcdef\",\"priority\":\"normal\",\"timeout\":300,\"tags\":[]}}}",
              1, ENH);
    if (v) check_images("escapes", v, 1, 64, 64);
    sdxl_json_free(v);
    /* org/name model, short scheduler name, batch of 2, JPEG */
    v = ask_s(&w, "inference_request batch jpeg",
              "{\"message_type\":\"inference_request\",\"request_id\":\"00000000000000aa\",\"data\":{\"worker_type\":"
              "\"sdxl_worker\",\"prompt\":\"a lake\",\"negative_prompt\":\"\",\"model_name\":\"stabilityai/sdxl-base-1.0\","
              "\"hyperparameters\":{\"num_inference_steps\":2,\"guidance_scale\":5,\"seed\":100,\"strength\":0.8},"
              "\"dimensions\":{\"width\":64,\"height\":64},\"scheduler\":\"EulerA\",\"models\":{\"base\":"
              "\"stabilityai/sdxl-base-1.0\",\"refiner\":null,\"vae\":null},\"output\":{\"format\":\"jpeg\",\"quality\":80,"
              "\"save_path\":\"outputs/jpeg/\",\"upscale\":{\"enabled\":false}},\"batch\":{\"size\":2,\"parallel\":false}}}",
              1, ENH);
    if (v) {
        check_images("batch jpeg", v, 2, 64, 64);
        const sdxl_json *im = ci_get(sdxl_json_get(v, "data"), "Images");
        CHECK(im && im->len && strstr(im->items[0].str, ".jpg"), "JPEG extension");
    }
    sdxl_json_free(v);
    /* upscale: lanczos works, an upscaler we do not have is a clear error */
    v = ask_s(&w, "upscale lanczos",
              "{\"message_type\":\"inference_request\",\"request_id\":\"00000000000000ab\",\"data\":{\"prompt\":\"x\","
              "\"model_name\":\"sdxl_base\",\"hyperparameters\":{\"num_inference_steps\":2,\"guidance_scale\":5,\"seed\":1,"
              "\"strength\":0.8},\"dimensions\":{\"width\":64,\"height\":64},\"output\":{\"format\":\"png\",\"quality\":95,"
              "\"save_path\":\"outputs/\",\"upscale\":{\"enabled\":true,\"factor\":2,\"method\":\"lanczos\"}}}}",
              1, ENH);
    if (v) check_images("upscale lanczos", v, 1, 128, 128);
    sdxl_json_free(v);
    v = ask_s(&w, "upscale unknown method",
              "{\"message_type\":\"inference_request\",\"request_id\":\"00000000000000ac\",\"data\":{\"prompt\":\"x\","
              "\"model_name\":\"sdxl_base\",\"hyperparameters\":{\"num_inference_steps\":2,\"guidance_scale\":5,\"seed\":1,"
              "\"strength\":0.8},\"dimensions\":{\"width\":64,\"height\":64},\"output\":{\"upscale\":{\"enabled\":true,"
              "\"factor\":4,\"method\":\"Real-ESRGAN\"}}}}",
              0, NULL);
    if (v) CHECK(strstr(err_str(v), "upscale") && strstr(err_str(v), "Real-ESRGAN"), "upscale error names it: %s", err_str(v));
    sdxl_json_free(v);
    /* LoRA: passes through to the merge; a name that resolves to a file without LoRA tensors is a
     * clear error naming the LoRA */
    v = ask_s(&w, "lora",
              "{\"message_type\":\"inference_request\",\"request_id\":\"00000000000000ad\",\"data\":{\"prompt\":\"x\","
              "\"model_name\":\"sdxl_base\",\"hyperparameters\":{\"num_inference_steps\":2,\"guidance_scale\":5,\"seed\":1,"
              "\"strength\":0.8},\"dimensions\":{\"width\":64,\"height\":64},\"lora\":{\"enabled\":true,\"models\":[{"
              "\"name\":\"sdxl_base\",\"weight\":0.8,\"adapter_name\":null}]}}}",
              -1, ENH);
    if (v && !sdxl_json_bool(v, "success", 0)) CHECK(strcasestr(err_str(v), "lora") != NULL, "lora error names the LoRA: %s", err_str(v));
    sdxl_json_free(v);
    /* the C# object, PascalCase, under "request" and under "request_data" */
    static const char csharp[] =
        "{\"Model\":{\"Base\":\"sdxl_base\",\"Refiner\":null,\"Vae\":null},\"Scheduler\":{\"Type\":\"DPMSolverMultistep\","
        "\"Steps\":2,\"GuidanceScale\":7},\"Hyperparameters\":{\"Width\":64,\"Height\":64,\"Seed\":123456,\"BatchSize\":1},"
        "\"Conditioning\":{\"Prompt\":\"A beautiful sunset\",\"NegativePrompt\":\"blurry\",\"LoRAs\":[],\"ControlNets\":[]},"
        "\"Output\":{\"Format\":\"PNG\",\"Quality\":95,\"SavePath\":\"outputs/\"},\"PostProcessing\":[]}";
    char line[4096];
    snprintf(line, sizeof line, "{\"action\":\"generate_sdxl_enhanced\",\"request\":%s,\"session_id\":\"s1\"}", csharp);
    v = ask_s(&w, "generate_sdxl_enhanced", line, 1, ENH);
    if (v) {
        CHECK(data_int(v, "SeedUsed") == 123456, "SeedUsed 123456");
        check_images("generate_sdxl_enhanced", v, 1, 64, 64);
    }
    sdxl_json_free(v);
    snprintf(line, sizeof line, "{\"action\":\"generate_sdxl_enhanced\",\"request_data\":%s}", csharp);
    v = ask_s(&w, "generate_sdxl_enhanced request_data", line, 1, ENH);
    sdxl_json_free(v);
    snprintf(line, sizeof line, "{\"action\":\"validate_request\",\"request\":%s}", csharp);
    v = ask_s(&w, "validate_request valid", line, 1, VALID);
    if (v) CHECK(sdxl_json_bool(sdxl_json_get(v, "data"), "Valid", 0) == 1, "Valid true");
    sdxl_json_free(v);
    v = ask_s(&w, "validate_request invalid",
              "{\"action\":\"validate_request\",\"request\":{\"Model\":{\"Base\":\"sdxl_base\"},\"Hyperparameters\":{"
              "\"Width\":100,\"Height\":64,\"GuidanceScale\":\"x\"},\"Conditioning\":{\"Prompt\":\"p\",\"LoRAs\":[{"
              "\"Name\":\"a\",\"Scale\":9}]}}}",
              1, VALID);
    if (v) {
        const sdxl_json *d = sdxl_json_get(v, "data");
        const char *e = sdxl_json_str(d, "Error", "");
        CHECK(sdxl_json_bool(d, "Valid", 1) == 0, "Valid false");
        CHECK(strstr(e, "Width") && strstr(e, "GuidanceScale") && strstr(e, "LoRAs[0]"),
              "every problem reported at once with its path: %s", e);
    }
    sdxl_json_free(v);
    v = ask_s(&w, "get_capabilities", "{\"action\":\"get_capabilities\"}", 1, CAPS);
    if (v) {
        static const char *const cls[] = {"DPMSolverMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                                          "EulerAncestralDiscreteScheduler", "DPMSolverSinglestepScheduler",
                                          "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                                          "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler"};
        const sdxl_json *ss = ci_get(sdxl_json_get(v, "data"), "SupportedSchedulers");
        for (size_t i = 0; i < sizeof cls / sizeof cls[0]; i++) {
            int found = 0;
            for (size_t k = 0; ss && k < ss->len; k++) found |= !strcmp(ss->items[k].str, cls[i]);
            CHECK(found, "SupportedSchedulers lists %s", cls[i]);
        }
    }
    sdxl_json_free(v);
    /* every scheduler name the orchestrator's side sends generates */
    static const char *const names[] = {"DPMSolverMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                                        "EulerAncestralDiscreteScheduler", "DPMSolverSinglestepScheduler",
                                        "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                                        "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
                                        "DDIM", "PNDM", "LMS", "EulerA", "EulerC", "Heun", "DPM++", "DPMSolverMultistep",
                                        "DPMSolverSinglestep", "Euler", "EulerAncestral", "KDPM2", "KDPM2Ancestral",
                                        "UniPC"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(line, sizeof line,
                 "{\"message_type\":\"inference_request\",\"request_id\":\"%016zx\",\"data\":{\"prompt\":\"s\","
                 "\"model_name\":\"sdxl_base\",\"hyperparameters\":{\"num_inference_steps\":2,\"guidance_scale\":5,"
                 "\"seed\":3,\"strength\":0.8},\"dimensions\":{\"width\":64,\"height\":64},\"scheduler\":\"%s\"}}",
                 i, names[i]);
        char what[96];
        snprintf(what, sizeof what, "scheduler %s", names[i]);
        v = ask_s(&w, what, line, 1, ENH);
        sdxl_json_free(v);
    }
    static const prop NONE[] = {{0, 0}};
    v = ask_s(&w, "get_status", "{\"action\":\"get_status\"}", 1, NONE);
    sdxl_json_free(v);
    v = ask_s(&w, "get_model_info", "{\"action\":\"get_model_info\"}", 1, NONE);
    sdxl_json_free(v);
    v = ask_s(&w, "cleanup_memory", "{\"action\":\"cleanup_memory\"}", 1, NONE);
    sdxl_json_free(v);
    v = ask_s(&w, "unload_model", "{\"action\":\"unload_model\"}", 1, NONE);
    sdxl_json_free(v);
    v = ask_s(&w, "generate_image without a model",
              "{\"action\":\"generate_image\",\"parameters\":{\"prompt\":\"x\",\"width\":64,\"height\":64,\"steps\":2}}", 0,
              NULL);
    sdxl_json_free(v);
    v = ask_s(&w, "load_model by name",
              "{\"action\":\"load_model\",\"model_path\":\"sdxl_base\",\"model_type\":\"SDXL\",\"model_id\":\"mine\"}", 1,
              LOAD);
    if (v) CHECK(!strcmp(data_str(v, "ModelId"), "mine"), "model_id given is echoed");
    sdxl_json_free(v);
    v = ask_s(&w, "load_model symlink escape",
              "{\"action\":\"load_model\",\"model_path\":\"escape\",\"model_type\":\"SDXL\",\"model_id\":null}", 0, NULL);
    if (v) CHECK(strstr(err_str(v), "refused") != NULL, "symlink escape refused: %s", err_str(v));
    sdxl_json_free(v);
    v = ask_s(&w, "load_model dotdot",
              "{\"action\":\"load_model\",\"model_path\":\"../models/sdxl_base\",\"model_type\":\"SDXL\"}", 0, NULL);
    sdxl_json_free(v);
    v = ask_s(&w, "generate_image after load",
              "{\"action\":\"generate_image\",\"parameters\":{\"prompt\":\"x\",\"width\":64,\"height\":64,\"steps\":2,"
              "\"guidance_scale\":7,\"seed\":8}}",
              1, BASIC);
    sdxl_json_free(v);
    v = ask_s(&w, "unknown action", "{\"action\":\"make_coffee\"}", 0, NULL);
    sdxl_json_free(v);
    v = ask_s(&w, "unknown message_type", "{\"message_type\":\"telepathy\",\"request_id\":\"x\",\"data\":{}}", 0, NULL);
    sdxl_json_free(v);
    v = ask_s(&w, "bad JSON", "{\"action\":", 0, NULL);
    sdxl_json_free(v);
    v = ask_s(&w, "after bad JSON", "{\"action\":\"get_status\"}", 1, NONE);
    sdxl_json_free(v);
    int rc = wk_finish(&w, 60);
    CHECK(rc == 0, "EOF: exit 0, got %d", rc);
    free(l1);
    free(l2);
    free(l5);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
