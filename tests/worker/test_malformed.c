/* Malformed input against the running worker: many lines of many kinds (bad JSON, invalid UTF-8,
 * oversized lines, wrong types, out-of-range values, unknown ops, refused paths, ...). Each gets
 * exactly one error line with the documented code, and the worker then answers a valid request
 * correctly; now and then that request is a real generation.
 * usage: test_malformed SDXL_BIN MODELS_SRC WORK_DIR */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "io/image.h"

#define VARIANTS 25
#define MAX_LINE 65536

static int n_pass, n_fail;

typedef struct kind {
    const char *name;
    const char *code;
    const char *fmt; /* printf format with one %d (the variant); NULL = built in make() */
} kind;

static const kind KINDS[] = {
    {"truncated object", "bad_json", "{\"op\":\"jobs\",\"n\":%d"},
    {"trailing comma", "bad_json", "{\"op\":\"jobs\",\"n\":%d,}"},
    {"single quotes", "bad_json", "{'op':'jobs','n':%d}"},
    {"trailing bytes", "bad_json", "{\"op\":\"jobs\"} %d"},
    {"duplicate keys", "bad_json", "{\"op\":\"jobs\",\"op\":\"models\",\"n\":%d}"},
    {"NaN literal", "bad_json", "{\"op\":\"submit\",\"cfg_scale\":NaN,\"n\":%d}"},
    {"unterminated string", "bad_json", "{\"op\":\"submit\",\"prompt\":\"abc%d}"},
    {"bad escape", "bad_json", "{\"op\":\"submit\",\"prompt\":\"a\\x%d\"}"},
    {"lone surrogate escape", "bad_json", "{\"op\":\"submit\",\"prompt\":\"\\ud800 %d\"}"},
    {"deep nesting", "bad_json", NULL},
    {"raw control character", "bad_json", NULL},
    {"leading zero", "bad_json", "{\"op\":\"submit\",\"steps\":0%d}"},
    {"bare word", "bad_json", "hello %d"},
    {"invalid UTF-8 byte", "invalid_utf8", NULL},
    {"overlong UTF-8", "invalid_utf8", NULL},
    {"truncated UTF-8", "invalid_utf8", NULL},
    {"UTF-8 surrogate", "invalid_utf8", NULL},
    {"line too long", "line_too_long", NULL},
    {"array", "not_object", "[%d, 2, 3]"},
    {"number", "not_object", "%d"},
    {"string", "not_object", "\"op %d\""},
    {"null", "not_object", "null"},
    {"unknown op", "unknown_op", "{\"op\":\"frobnicate%d\"}"},
    {"no op", "missing_field", "{\"prompt\":\"p\",\"n\":%d}"},
    {"op not a string", "wrong_type", "{\"op\":%d}"},
    {"unknown action", "unknown_op", "{\"action\":\"dance_%d\"}"},
    {"unknown message_type", "unknown_op", "{\"message_type\":\"telepathy%d\",\"data\":{}}"},
    {"action not a string", "wrong_type", "{\"action\":%d}"},
    {"width not a number", "wrong_type", "{\"op\":\"submit\",\"prompt\":\"p\",\"width\":\"w%d\"}"},
    {"steps zero", "out_of_range", "{\"op\":\"submit\",\"prompt\":\"p%d\",\"steps\":0}"},
    {"cfg too large", "out_of_range", "{\"op\":\"submit\",\"prompt\":\"p\",\"cfg_scale\":10%d0}"},
    {"width not a multiple of 8", "out_of_range", "{\"op\":\"submit\",\"prompt\":\"p\",\"width\":%d01}"},
    {"unknown field", "unknown_field", "{\"op\":\"submit\",\"promt\":\"typo %d\"}"},
    {"unknown sampler", "unknown_scheduler", "{\"op\":\"submit\",\"prompt\":\"p\",\"sampler\":\"Bogus%d\"}"},
    {"fractional seed", "wrong_type", "{\"op\":\"submit\",\"prompt\":\"p\",\"seed\":%d.5}"},
    {"seed too large", "out_of_range", "{\"op\":\"submit\",\"prompt\":\"p\",\"seed\":9999999999%d}"},
    {"lora weight out of range", "out_of_range", "{\"op\":\"submit\",\"prompt\":\"p\",\"loras\":[{\"name\":\"x\",\"weight\":%d5}]}"},
    {"loras not an array", "wrong_type", "{\"op\":\"submit\",\"prompt\":\"p\",\"loras\":%d}"},
    {"model path escape", "path_refused", "{\"op\":\"submit\",\"prompt\":\"p\",\"model\":\"../../etc/passwd%d\"}"},
    {"model not found", "model_not_found", "{\"op\":\"submit\",\"prompt\":\"p\",\"model\":\"no_such_model_%d\"}"},
    {"bad format", "bad_value", "{\"op\":\"submit\",\"prompt\":\"p\",\"format\":\"bmp%d\"}"},
    {"bad priority", "bad_value", "{\"op\":\"submit\",\"prompt\":\"p\",\"priority\":\"asap%d\"}"},
    {"width over the limit", "limit", NULL},
    {"too many images", "limit", "{\"op\":\"submit\",\"prompt\":\"p\",\"batch_count\":10%d}"},
    {"mask without init image", "missing_field", "{\"op\":\"submit\",\"prompt\":\"p\",\"mask\":\"m%d.png\"}"},
    {"absolute save_path", "path_refused", "{\"op\":\"submit\",\"prompt\":\"p\",\"save_path\":\"/tmp/x%d\"}"},
    {"init_image escape", "path_refused", "{\"op\":\"submit\",\"prompt\":\"p\",\"init_image\":\"../x%d.png\"}"},
    {"cancel without job", "missing_field", "{\"op\":\"cancel\",\"n\":%d}"},
    {"cancel unknown job", "not_found", "{\"op\":\"cancel\",\"job\":\"%016d\"}"},
    {"status job not a string", "wrong_type", "{\"op\":\"status\",\"job\":%d}"},
    {"inference_request without data", "missing_field", "{\"message_type\":\"inference_request\",\"request_id\":\"%d\"}"},
    {"inference_request steps as string", "wrong_type",
     "{\"message_type\":\"inference_request\",\"request_id\":\"r\",\"data\":{\"prompt\":\"p\",\"hyperparameters\":{"
     "\"num_inference_steps\":\"2%d\"}}}"},
    {"upscaler we do not have", "unsupported",
     "{\"message_type\":\"inference_request\",\"request_id\":\"r\",\"data\":{\"prompt\":\"p\",\"model_name\":\"sdxl_base\","
     "\"output\":{\"upscale\":{\"enabled\":true,\"factor\":2,\"method\":\"ESRGAN_%d\"}}}}"},
    {"enhanced without request", "missing_field", "{\"action\":\"generate_sdxl_enhanced\",\"session_id\":\"%d\"}"},
    {"load_model without path", "missing_field", "{\"action\":\"load_model\",\"model_type\":\"SDXL\",\"n\":%d}"},
    {"load_model escape", "path_refused", "{\"action\":\"load_model\",\"model_path\":\"../../x%d\",\"model_type\":\"SDXL\"}"},
    {"device_index negative", "out_of_range", "{\"action\":\"initialize\",\"device_index\":-%d}"},
    {"id not a string", "wrong_type", "{\"op\":\"jobs\",\"id\":%d}"},
    {"A1111 hires scale too large", "out_of_range",
     "{\"op\":\"submit\",\"request\":{\"prompt\":\"p\",\"sampler_name\":\"Euler a\",\"enable_hr\":true,\"hr_scale\":9%d}}"},
    {"control unit not an object", "wrong_type", "{\"op\":\"submit\",\"prompt\":\"p\",\"controls\":[%d]}"},
    {"request not an object", "wrong_type", "{\"op\":\"submit\",\"request\":[%d]}"},
    {"unknown dialect", "bad_value", "{\"op\":\"submit\",\"dialect\":\"klingon%d\",\"request\":{}}"},
    {"NUL in a string", "bad_value", "{\"op\":\"submit\",\"prompt\":\"a\\u0000b%d\"}"},
    {"C# seed too large", "out_of_range",
     "{\"action\":\"generate_sdxl_enhanced\",\"request\":{\"Conditioning\":{\"Prompt\":\"p\"},\"Hyperparameters\":{"
     "\"Seed\":300000000%d}}}"},
};
#define N_KINDS (int)(sizeof KINDS / sizeof KINDS[0])

/* Builds line i of kind k into b (length in *len). */
static void make(int k, int i, char *b, size_t cap, size_t *len) {
    const kind *kd = &KINDS[k];
    if (kd->fmt) {
        *len = (size_t)snprintf(b, cap, kd->fmt, i + 1);
        return;
    }
    const char *nm = kd->name;
    if (!strcmp(nm, "deep nesting")) {
        size_t n = 0;
        int depth = 65 + i * 10;
        for (int d = 0; d < depth; d++) b[n++] = '[';
        for (int d = 0; d < depth; d++) b[n++] = ']';
        *len = n;
    } else if (!strcmp(nm, "raw control character")) {
        static const char ctl[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 31};
        *len = (size_t)snprintf(b, cap, "{\"op\":\"submit\",\"prompt\":\"a%cb\"}", ctl[i % (int)sizeof ctl]);
    } else if (!strcmp(nm, "width over the limit")) {
        *len = (size_t)snprintf(b, cap, "{\"op\":\"submit\",\"prompt\":\"p\",\"width\":%d}", 2056 + 8 * i);
    } else if (!strcmp(nm, "invalid UTF-8 byte")) {
        *len = (size_t)snprintf(b, cap, "{\"op\":\"submit\",\"prompt\":\"a%cb\"}", (char)(0xf8 + i % 8));
    } else if (!strcmp(nm, "overlong UTF-8")) {
        *len = (size_t)snprintf(b, cap, "{\"op\":\"submit\",\"prompt\":\"a%c%cb\"}", (char)0xc0, (char)(0x80 + i % 60));
    } else if (!strcmp(nm, "truncated UTF-8")) {
        *len = (size_t)snprintf(b, cap, "{\"op\":\"submit\",\"prompt\":\"a%c\"}", (char)(0xe2 + i % 10));
    } else if (!strcmp(nm, "UTF-8 surrogate")) {
        *len = (size_t)snprintf(b, cap, "{\"op\":\"submit\",\"prompt\":\"%c%c%c\"}", (char)0xed, (char)(0xa0 + i % 16),
                                (char)0x80);
    } else if (!strcmp(nm, "line too long")) {
        size_t n = MAX_LINE + 10 + (size_t)i * 997;
        size_t k2 = (size_t)snprintf(b, cap, "{\"op\":\"submit\",\"prompt\":\"");
        for (; k2 < n; k2++) b[k2] = (char)('a' + k2 % 26);
        b[k2++] = '"';
        b[k2++] = '}';
        *len = k2;
    }
}

static int is_event(const sdxl_json *v, const char *ev) { return !strcmp(sdxl_json_str(v, "event", ""), ev); }

/* Next reply that is not the hello line. */
static sdxl_json *reply(wk *w, char **raw) {
    if (raw) *raw = NULL;
    for (;;) {
        char *line = wk_read(w, 900); /* a generation on a loaded machine: model load + one step */
        if (!line) return NULL;
        sdxl_json *v = NULL;
        if (sdxl_json_parse(line, strlen(line), NULL, "reply", &v, NULL)) {
            printf("reply does not parse: %.200s\n", line);
            free(line);
            return NULL;
        }
        if (is_event(v, "hello")) {
            sdxl_json_free(v);
            free(line);
            continue;
        }
        if (raw) *raw = line;
        else free(line);
        return v;
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_malformed SDXL_BIN MODELS_SRC WORK_DIR\n");
        return 2;
    }
    char bin[PATH_MAX], src[PATH_MAX], work[PATH_MAX], models[PATH_MAX + 16];
    if (wk_setup(argv[1], argv[2], argv[3], bin, src, work, models)) return 2;
    char errlog[PATH_MAX + 16];
    snprintf(errlog, sizeof errlog, "%s/stderr.log", work);
    char maxline[32];
    snprintf(maxline, sizeof maxline, "%d", MAX_LINE);
    const char *args[] = {"--models-dir", models, "--precision", "f32", "-t", "2", "--max-line", maxline,
                          "--max-images", "16", "-m", "sdxl_base", NULL};
    wk w;
    if (wk_start(&w, bin, work, errlog, args)) return 1;
    size_t cap = MAX_LINE + 64 * 1024;
    char *b = malloc(cap);
    int lines = 0, gens = 0;
    int per_kind_ok[N_KINDS];
    memset(per_kind_ok, 0, sizeof per_kind_ok);
    for (int i = 0; i < VARIANTS; i++)
        for (int k = 0; k < N_KINDS; k++) {
            size_t len = 0;
            make(k, i, b, cap, &len);
            b[len++] = '\n';
            if (wk_write(&w, b, len)) {
                CHECK(0, "worker closed its stdin (kind %s)", KINDS[k].name);
                goto out;
            }
            lines++;
            char *raw = NULL;
            sdxl_json *v = reply(&w, &raw);
            CHECK(v != NULL, "kind %s variant %d: no reply (crash?)", KINDS[k].name, i);
            if (!v) goto out;
            const char *code = sdxl_json_str(v, "code", "");
            int ok = !strcmp(code, KINDS[k].code) && !sdxl_json_bool(v, "success", 0);
            CHECK(ok, "kind %s variant %d: code %s, wanted %s: %.300s", KINDS[k].name, i, code, KINDS[k].code, raw);
            per_kind_ok[k] += ok;
            sdxl_json_free(v);
            free(raw);
            /* the next valid request is answered correctly */
            int which = (i * N_KINDS + k) % 4;
            if ((i * N_KINDS + k) % 150 == 149) which = 4;
            static const char *const valid[] = {"{\"op\":\"schedulers\"}", "{\"action\":\"get_status\"}",
                                                "{\"op\":\"jobs\",\"id\":\"q\"}", "{\"action\":\"get_capabilities\"}"};
            if (which < 4) {
                wk_send(&w, valid[which]);
                v = reply(&w, &raw);
                CHECK(v != NULL, "valid request after %s: no reply", KINDS[k].name);
                if (!v) goto out;
                if (which == 0) CHECK(is_event(v, "schedulers"), "schedulers reply: %.200s", raw);
                if (which == 1 || which == 3) CHECK(sdxl_json_bool(v, "success", 0), "orchestrator reply: %.200s", raw);
                if (which == 2) CHECK(is_event(v, "jobs"), "jobs reply: %.200s", raw);
            } else {
                char line[512];
                snprintf(line, sizeof line,
                         "{\"action\":\"generate_image\",\"parameters\":{\"prompt\":\"after %s\",\"width\":64,"
                         "\"height\":64,\"steps\":1,\"guidance_scale\":5,\"seed\":%d}}",
                         KINDS[k].name, i);
                wk_send(&w, line);
                v = reply(&w, &raw);
                CHECK(v && sdxl_json_bool(v, "success", 0), "generation after %s: %.300s", KINDS[k].name,
                      raw ? raw : "(none)");
                const sdxl_json *d = sdxl_json_get(v, "data");
                char path[PATH_MAX * 2];
                snprintf(path, sizeof path, "%s/%s", work, sdxl_json_str(d, "OutputPath", "?"));
                sdxl_image im = {0};
                CHECK(sdxl_image_read(path, NULL, 3, &im, NULL, NULL) == 0 && im.width == 64, "image %s", path);
                sdxl_image_free(&im);
                gens++;
            }
            sdxl_json_free(v);
            free(raw);
        }
out:
    free(b);
    int rc = wk_finish(&w, 60);
    CHECK(rc == 0, "exit status %d after EOF", rc);
    int kinds_ok = 0;
    for (int k = 0; k < N_KINDS; k++) kinds_ok += per_kind_ok[k] == VARIANTS;
    printf("%d malformed lines of %d kinds (%d kinds answered right every time), %d generations in between\n", lines,
           N_KINDS, kinds_ok, gens);
    CHECK(lines >= 1200 && N_KINDS >= 48, "at least 1200 lines of 48 kinds");
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
