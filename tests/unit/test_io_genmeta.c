/* io/genmeta: A1111 infotext format/parse (exact strings, real A1111 texts, quoting, round trips of
 * random metadata) and the JSON form. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "io/genmeta.h"

static int str_eq(const char *a, const char *b) {
    if (!a) a = "";
    if (!b) b = "";
    return !strcmp(a, b);
}
static int dbl_eq(double a, double b) { return (isnan(a) && isnan(b)) || a == b; }

static int meta_eq(const sdxl_genmeta *a, const sdxl_genmeta *b, char *why, size_t cap) {
#define FIELD(ok, name)                                                                                                \
    if (!(ok)) {                                                                                                       \
        snprintf(why, cap, "%s differs", name);                                                                        \
        return 0;                                                                                                      \
    }
    FIELD(str_eq(a->prompt, b->prompt), "prompt");
    FIELD(str_eq(a->negative_prompt, b->negative_prompt), "negative_prompt");
    FIELD(a->steps == b->steps, "steps");
    FIELD(str_eq(a->sampler, b->sampler) && !a->sampler == !b->sampler, "sampler");
    FIELD(str_eq(a->schedule, b->schedule) && !a->schedule == !b->schedule, "schedule");
    FIELD(dbl_eq(a->cfg_scale, b->cfg_scale), "cfg_scale");
    FIELD(a->seed == b->seed, "seed");
    FIELD(a->width == b->width && a->height == b->height, "size");
    FIELD(str_eq(a->model, b->model) && !a->model == !b->model, "model");
    FIELD(str_eq(a->model_hash, b->model_hash) && !a->model_hash == !b->model_hash, "model_hash");
    FIELD(dbl_eq(a->denoising_strength, b->denoising_strength), "denoising_strength");
    FIELD(a->clip_skip == b->clip_skip, "clip_skip");
    FIELD(str_eq(a->refiner, b->refiner) && !a->refiner == !b->refiner, "refiner");
    FIELD(dbl_eq(a->refiner_switch, b->refiner_switch), "refiner_switch");
    FIELD(a->n_extra == b->n_extra, "n_extra");
    for (size_t i = 0; i < a->n_extra; i++) {
        FIELD(!strcmp(a->extra[i].key, b->extra[i].key), "extra key");
        FIELD(!strcmp(a->extra[i].value, b->extra[i].value), "extra value");
    }
#undef FIELD
    return 1;
}

static void fill_example(sdxl_genmeta *m) {
    sdxl_genmeta_init(m);
    sdxl_genmeta_set_str(&m->prompt, "a photo of an astronaut riding a horse, (masterpiece:1.2)", NULL);
    sdxl_genmeta_set_str(&m->negative_prompt, "blurry, lowres", NULL);
    m->steps = 30;
    sdxl_genmeta_set_str(&m->sampler, "DPM++ 2M", NULL);
    sdxl_genmeta_set_str(&m->schedule, "Karras", NULL);
    m->cfg_scale = 7;
    m->seed = 123;
    m->width = 1024;
    m->height = 1024;
    sdxl_genmeta_set_str(&m->model_hash, "31e35c80fc", NULL);
    sdxl_genmeta_set_str(&m->model, "sd_xl_base_1.0", NULL);
    m->denoising_strength = 0.6;
    m->clip_skip = 2;
    sdxl_genmeta_set_str(&m->refiner, "sd_xl_refiner_1.0 [7440042bbd]", NULL);
    m->refiner_switch = 0.8;
    sdxl_genmeta_extra_set(m, "RNG", "CPU", NULL);
    sdxl_genmeta_extra_set(m, "Lora hashes", "add_detail: 7c6bad76eb54, more: 3b8aa1d351ef", NULL);
}

static void test_format_exact(void) {
    sdxl_genmeta m, back;
    fill_example(&m);
    char *txt = NULL;
    sdxl_err e = {0};
    CHECK(sdxl_genmeta_format(&m, &txt, &e) == SDXL_OK, "format: %s", e.msg);
    const char *want = "a photo of an astronaut riding a horse, (masterpiece:1.2)\n"
                       "Negative prompt: blurry, lowres\n"
                       "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, "
                       "Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.6, "
                       "Clip skip: 2, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, RNG: CPU, "
                       "Lora hashes: \"add_detail: 7c6bad76eb54, more: 3b8aa1d351ef\"";
    CHECK(txt && !strcmp(txt, want), "formatted text:\n%s", txt ? txt : "(null)");
    sdxl_genmeta_init(&back);
    CHECK(sdxl_genmeta_parse(txt, strlen(txt), &back, &e) == SDXL_OK, "parse: %s", e.msg);
    char why[64] = "";
    CHECK(meta_eq(&m, &back, why, sizeof why), "round trip: %s", why);

    char *js = NULL;
    CHECK(sdxl_genmeta_to_json(&m, &js, &e) == SDXL_OK, "to_json");
    sdxl_json *j = NULL;
    CHECK(sdxl_json_parse(js, strlen(js), NULL, "genmeta json", &j, &e) == SDXL_OK, "json valid: %s", e.msg);
    sdxl_genmeta fromj;
    sdxl_genmeta_init(&fromj);
    CHECK(sdxl_genmeta_from_json(j, &fromj, &e) == SDXL_OK, "from_json: %s", e.msg);
    CHECK(meta_eq(&m, &fromj, why, sizeof why), "json round trip: %s", why);
    CHECK(strstr(js, "\"cfg_scale\":7,") != NULL, "json cfg: %s", js);
    sdxl_json_free(j);

    sdxl_genmeta cp;
    CHECK(sdxl_genmeta_copy(&cp, &m, &e) == SDXL_OK && meta_eq(&m, &cp, why, sizeof why), "copy: %s", why);
    sdxl_genmeta_free(&cp);
    sdxl_genmeta_free(&fromj);
    free(js);
    free(txt);
    sdxl_genmeta_free(&back);
    sdxl_genmeta_free(&m);
}

/* Texts as A1111 1.9 and older versions write them. */
static void test_real_a1111(void) {
    const char *t1 = "masterpiece, best quality, 1girl,\nwhite hair, (smile:1.1)\n"
                     "Negative prompt: (worst quality:1.4), lowres,\nbad hands\n"
                     "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 2179987202, "
                     "Size: 832x1216, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.35, "
                     "Clip skip: 2, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: 4x-UltraSharp, "
                     "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, "
                     "Lora hashes: \"add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef\", "
                     "ADetailer prompt: \"a face,\\nsmiling \\\"x\\\"\", TI hashes: \"EasyNegative: c74b4e810b03\", "
                     "Version: v1.9.4\n";
    sdxl_genmeta m;
    sdxl_genmeta_init(&m);
    sdxl_err e = {0};
    CHECK(sdxl_genmeta_parse(t1, strlen(t1), &m, &e) == SDXL_OK, "parse real: %s", e.msg);
    CHECK(str_eq(m.prompt, "masterpiece, best quality, 1girl,\nwhite hair, (smile:1.1)"), "prompt: %s", m.prompt);
    CHECK(str_eq(m.negative_prompt, "(worst quality:1.4), lowres,\nbad hands"), "neg: %s", m.negative_prompt);
    CHECK(m.steps == 25 && m.cfg_scale == 6.5 && m.seed == 2179987202LL, "numbers %d %g %lld", m.steps, m.cfg_scale,
          (long long)m.seed);
    CHECK(m.width == 832 && m.height == 1216, "size %dx%d", m.width, m.height);
    CHECK(str_eq(m.sampler, "DPM++ 2M") && str_eq(m.schedule, "Karras"), "sampler");
    CHECK(str_eq(m.model, "sd_xl_base_1.0") && str_eq(m.model_hash, "31e35c80fc"), "model");
    CHECK(m.denoising_strength == 0.35 && m.clip_skip == 2 && m.refiner_switch == 0.8, "denoise/clip/switch");
    CHECK(str_eq(m.refiner, "sd_xl_refiner_1.0 [7440042bbd]"), "refiner: %s", m.refiner);
    CHECK(m.n_extra == 7, "extras: %zu", m.n_extra);
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "Lora hashes"), "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef"),
          "quoted extra");
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "ADetailer prompt"), "a face,\nsmiling \"x\""), "escapes: %s",
          sdxl_genmeta_extra_get(&m, "ADetailer prompt"));
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "Version"), "v1.9.4"), "version");
    CHECK(m.n_extra && !strcmp(m.extra[0].key, "Hires upscale"), "extras keep their order");
    /* format -> parse of a parsed text is a fixed point */
    char *txt = NULL;
    sdxl_genmeta back;
    sdxl_genmeta_init(&back);
    char why[64] = "";
    CHECK(sdxl_genmeta_format(&m, &txt, &e) == SDXL_OK, "format parsed");
    CHECK(txt && sdxl_genmeta_parse(txt, strlen(txt), &back, &e) == SDXL_OK && meta_eq(&m, &back, why, sizeof why),
          "real text round trip: %s", why);
    free(txt);

    /* older A1111: sampler with the schedule in its name, no negative, Windows line ends */
    const char *t2 = "a cat\r\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 1, Size: 512x512, "
                     "Model hash: abc, ENSD: 31337\r\n";
    CHECK(sdxl_genmeta_parse(t2, strlen(t2), &m, &e) == SDXL_OK, "parse old");
    CHECK(str_eq(m.prompt, "a cat") && str_eq(m.negative_prompt, "") && !m.schedule, "old prompt: [%s]", m.prompt);
    CHECK(str_eq(m.sampler, "DPM++ 2M Karras") && m.cfg_scale == 7.0 && m.width == 512, "old fields");
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "ENSD"), "31337"), "ENSD extra");

    /* fewer than 3 pairs on the last line: it is prompt text (A1111's rule) */
    const char *t3 = "line one\nstyle: anime, mood: calm";
    CHECK(sdxl_genmeta_parse(t3, strlen(t3), &m, &e) == SDXL_OK, "parse 2 pairs");
    CHECK(str_eq(m.prompt, t3) && m.n_extra == 0 && m.steps == 0, "2-pair line is prompt: %s", m.prompt);

    /* empty prompt, only a negative; single-line parameters */
    const char *t4 = "Negative prompt: ugly\nSteps: 4, Seed: 9, CFG scale: 1";
    CHECK(sdxl_genmeta_parse(t4, strlen(t4), &m, &e) == SDXL_OK && str_eq(m.prompt, "") &&
              str_eq(m.negative_prompt, "ugly") && m.steps == 4,
          "negative only");
    const char *t5 = "Steps: 4, Seed: 9, CFG scale: 1";
    CHECK(sdxl_genmeta_parse(t5, strlen(t5), &m, &e) == SDXL_OK && str_eq(m.prompt, "") && m.seed == 9,
          "parameters only");

    /* bad values of known keys are kept, not dropped; garbage between pairs is skipped */
    const char *t6 = "p\nSteps: many, Seed: -3, Size: 10x, CFG scale: nan, junk ,, Sampler: Euler a, Model: m";
    CHECK(sdxl_genmeta_parse(t6, strlen(t6), &m, &e) == SDXL_OK, "parse bad values");
    CHECK(m.steps == 0 && m.seed == -1 && m.width == 0 && isnan(m.cfg_scale), "bad values not taken");
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "Steps"), "many") && str_eq(sdxl_genmeta_extra_get(&m, "Seed"), "-3") &&
              str_eq(sdxl_genmeta_extra_get(&m, "Size"), "10x") && str_eq(sdxl_genmeta_extra_get(&m, "CFG scale"), "nan"),
          "bad values kept in extra");
    CHECK(str_eq(m.sampler, "Euler a") && str_eq(m.model, "m"), "pairs after junk");
    CHECK(sdxl_genmeta_format(&m, &txt, &e) == SDXL_OK, "format with bad-valued known keys in extra");
    CHECK(sdxl_genmeta_parse(txt, strlen(txt), &back, &e) == SDXL_OK && meta_eq(&m, &back, why, sizeof why),
          "bad values round trip: %s", why);
    free(txt);

    /* malformed quoting falls back to the raw text, as A1111's unquote does */
    const char *t7 = "p\nAa: \"unterminated, Bb: \"x\\q\", Cc: 1, Dd: \"\", E: 5";
    CHECK(sdxl_genmeta_parse(t7, strlen(t7), &m, &e) == SDXL_OK, "parse odd quotes");
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "Aa"), "\"unterminated"), "Aa=%s", sdxl_genmeta_extra_get(&m, "Aa"));
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "Bb"), "\"x\\q\""), "Bb=%s", sdxl_genmeta_extra_get(&m, "Bb"));
    CHECK(str_eq(sdxl_genmeta_extra_get(&m, "Dd"), ""), "Dd=%s", sdxl_genmeta_extra_get(&m, "Dd"));
    CHECK(m.n_extra == 4, "a 1-byte key is not a pair: %zu extras", m.n_extra);

    CHECK(sdxl_genmeta_parse(NULL, 0, &m, &e) == SDXL_OK && str_eq(m.prompt, ""), "empty text");
    CHECK(sdxl_genmeta_parse("x", SDXL_GENMETA_MAX_TEXT + 1, &m, &e) == SDXL_ERR_LIMIT, "length limit");
    sdxl_genmeta_free(&back);
    sdxl_genmeta_free(&m);
}

static void test_bad_keys(void) {
    sdxl_genmeta m;
    sdxl_genmeta_init(&m);
    sdxl_err e = {0};
    CHECK(sdxl_genmeta_extra_set(&m, "a:b", "v", &e) == SDXL_ERR_ARG, "colon key rejected");
    CHECK(sdxl_genmeta_extra_set(&m, "x", "v", &e) == SDXL_ERR_ARG, "1-byte key rejected");
    CHECK(sdxl_genmeta_extra_set(&m, "Steps", "v", &e) == SDXL_ERR_ARG && strstr(e.msg, "Steps"), "named key: %s",
          e.msg);
    CHECK(sdxl_genmeta_extra_set(&m, "Hires upscale", "2", &e) == SDXL_OK, "good key");
    CHECK(sdxl_genmeta_extra_set(&m, "Hires upscale", "3", &e) == SDXL_OK && m.n_extra == 1 &&
              str_eq(m.extra[0].value, "3"),
          "extra replace");
    free(m.extra[0].key);
    m.extra[0].key = strdup("bad,key");
    char *t = NULL;
    CHECK(sdxl_genmeta_format(&m, &t, &e) == SDXL_ERR_ARG && !t, "format refuses unreadable key: %s", e.msg);
    sdxl_genmeta_free(&m);

    sdxl_json *j = NULL;
    const char *js = "{\"steps\":\"x\"}";
    sdxl_json_parse(js, strlen(js), NULL, "t", &j, NULL);
    CHECK(sdxl_genmeta_from_json(j, &m, &e) == SDXL_ERR_FORMAT && strstr(e.msg, "steps"), "json type: %s", e.msg);
    sdxl_json_free(j);
}

/* Random metadata: every value the formatter writes must come back from the parser. */
static uint64_t rng_state = 88172645463325252ULL;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

static char *rnd_text(int allow_nl, int line_safe) {
    static const char *const pieces[] = {"a", "b", " ", ",", ":", "\"", "\\", "é", "猫", "(x:1.2)", "\t", "Steps: 3",
                                         "BREAK", "'", "{}", "[]", "<lora:x:1>", "\\n", "\n"};
    size_t np = sizeof pieces / sizeof pieces[0] - (allow_nl ? 0 : 1);
    char buf[512];
    size_t n = 0;
    int len = (int)(rnd() % 12);
    for (int i = 0; i < len; i++) {
        const char *p = pieces[rnd() % np];
        if (n + strlen(p) + 1 >= sizeof buf) break;
        memcpy(buf + n, p, strlen(p));
        n += strlen(p);
    }
    buf[n] = 0;
    if (line_safe) {
        /* prompt lines are trimmed by the format; keep only texts it can carry */
        char out[512];
        size_t o = 0, ls = 0;
        for (size_t i = 0; i <= n; i++) {
            if (i == n || buf[i] == '\n') {
                size_t a = ls, b = i;
                while (a < b && (buf[a] == ' ' || buf[a] == '\t')) a++;
                while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t')) b--;
                if (b > a) {
                    if (o) out[o++] = '\n';
                    memcpy(out + o, buf + a, b - a);
                    o += b - a;
                }
                ls = i + 1;
            }
        }
        out[o] = 0;
        if (!strncmp(out, "Negative prompt:", 16)) out[0] = 'n';
        return strdup(out);
    }
    return strdup(buf);
}

static void test_random_round_trip(void) {
    int bad = 0;
    char why[64] = "";
    for (int it = 0; it < 2000; it++) {
        sdxl_genmeta m, back;
        sdxl_genmeta_init(&m);
        sdxl_genmeta_init(&back);
        m.prompt = rnd_text(1, 1);
        m.negative_prompt = rnd_text(1, 1);
        m.steps = 1 + (int)(rnd() % 150);
        m.sampler = rnd_text(1, 0);
        if (rnd() & 1) m.schedule = rnd_text(0, 0);
        m.cfg_scale = (double)(rnd() % 3000) / 100.0;
        m.seed = (int64_t)rnd() * (int64_t)(rnd() % 4);
        m.width = 8 * (1 + (int)(rnd() % 256));
        m.height = 8 * (1 + (int)(rnd() % 256));
        if (rnd() & 1) m.model = rnd_text(0, 0);
        if (rnd() & 1) m.denoising_strength = (double)(rnd() % 1001) / 1000.0;
        if (rnd() & 1) m.refiner = rnd_text(0, 0), m.refiner_switch = 1.0 / (1 + rnd() % 9);
        int nx = (int)(rnd() % 4);
        for (int k = 0; k < nx; k++) {
            char key[32];
            snprintf(key, sizeof key, "Key %c-%d/x", 'A' + k, (int)(rnd() % 100));
            char *v = rnd_text(1, 0);
            sdxl_genmeta_extra_set(&m, key, v, NULL);
            free(v);
        }
        char *t = NULL;
        sdxl_err e = {0};
        if (sdxl_genmeta_format(&m, &t, &e) != SDXL_OK || sdxl_genmeta_parse(t, strlen(t), &back, &e) != SDXL_OK ||
            !meta_eq(&m, &back, why, sizeof why)) {
            if (!bad) fprintf(stderr, "round trip failed (%s) on:\n%s\n", why, t ? t : e.msg);
            bad++;
        }
        free(t);
        sdxl_genmeta_free(&m);
        sdxl_genmeta_free(&back);
    }
    CHECK(bad == 0, "random round trips: %d of 2000 failed", bad);
}

int main(void) {
    test_format_exact();
    test_real_a1111();
    test_bad_keys();
    test_random_round_trip();
    return check_done();
}
