/* LoRA requests on the tiny model: bad files (SD 1.5 naming, wrong shapes, mismatched rank, NaN,
 * truncated) and a prompt tag escaping the LoRA folder each fail with one clear error, and the
 * next request on the same model gives the byte-identical image; prompt tags equal the request
 * list; a batch with a LoRA equals single runs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "pipeline/pipeline.h"

#define KOHYA SDXL_TEST_DATA "/golden/models/tiny_sdxl_lora_kohya.safetensors"

static sdxl_pl_model *load(void) {
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors";
    mp.precision = "f32";
    sdxl_pl_model *m = NULL;
    sdxl_err e = {0};
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) fprintf(stderr, "load: %s\n", e.msg);
    return m;
}

static void params(sdxl_gen_params *p) {
    sdxl_gen_params_init(p);
    p->prompt = "a red boat";
    p->width = p->height = 64;
    p->steps = 2;
    p->seed = 5;
}

static uint8_t *gen(sdxl_pl_model *m, const sdxl_gen_params *p, sdxl_err *e, int *st) {
    sdxl_pl_result r;
    *st = sdxl_pl_generate(m, p, NULL, NULL, NULL, &r, e);
    if (*st) return NULL;
    uint8_t *px = malloc((size_t)r.n * 64 * 64 * 3);
    for (int i = 0; i < r.n; i++) memcpy(px + (size_t)i * 64 * 64 * 3, r.img[i].rgb, 64 * 64 * 3);
    sdxl_pl_result_free(&r);
    return px;
}

/* Writes a file of F32 tensors given as (name, ndim, shape..., value) rows; value NAN fills NaN. */
typedef struct trow {
    const char *name;
    int ndim;
    int64_t shape[4];
    float value;
} trow;

static void write_file(const char *path, const trow *rows, int n) {
    sdxl_st_writer *w;
    sdxl_err e = {0};
    sdxl_st_writer_new(&w, &e);
    float *bufs[16];
    for (int i = 0; i < n; i++) {
        int64_t k = 1;
        for (int d = 0; d < rows[i].ndim; d++) k *= rows[i].shape[d];
        bufs[i] = malloc((size_t)k * sizeof(float));
        for (int64_t j = 0; j < k; j++) bufs[i][j] = isnan(rows[i].value) && j ? 0.01f : rows[i].value;
        int64_t one = 1;
        sdxl_st_writer_add(w, rows[i].name, SDXL_ST_F32, rows[i].ndim, rows[i].ndim ? rows[i].shape : &one, bufs[i], &e);
    }
    sdxl_st_writer_finish(w, path, &e);
    sdxl_st_writer_free(w);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

static void test_bad(sdxl_pl_model *m) {
    sdxl_gen_params p;
    params(&p);
    sdxl_err e = {0};
    int st;
    uint8_t *ref = gen(m, &p, &e, &st);
    CHECK(ref != NULL, "plain image: %s", e.msg);
    char dir[] = "/tmp/sdxl_badlora_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char path[6][512];
    const char *Q = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q";
    char d[160], u[160], a[160];
    snprintf(d, sizeof d, "%s.lora_down.weight", Q);
    snprintf(u, sizeof u, "%s.lora_up.weight", Q);
    snprintf(a, sizeof a, "%s.alpha", Q);
    /* SD 1.5: its te and a UNet block SDXL does not have */
    trow sd15[] = {{"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", 2, {4, 768}, 0.1f},
                   {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", 2, {768, 4}, 0.1f},
                   {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 2, {4, 320}, 0.1f},
                   {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", 2, {320, 4}, 0.1f}};
    trow shape[] = {{d, 2, {4, 48}, 0.1f}, {u, 2, {32, 4}, 0.1f}};
    trow rank[] = {{d, 2, {4, 32}, 0.1f}, {u, 2, {32, 8}, 0.1f}};
    trow nan[] = {{d, 2, {4, 32}, NAN}, {u, 2, {32, 4}, 0.1f}, {a, 0, {0}, 4.0f}};
    snprintf(path[0], sizeof path[0], "%s/sd15.safetensors", dir);
    snprintf(path[1], sizeof path[1], "%s/shape.safetensors", dir);
    snprintf(path[2], sizeof path[2], "%s/rank.safetensors", dir);
    snprintf(path[3], sizeof path[3], "%s/nan.safetensors", dir);
    snprintf(path[4], sizeof path[4], "%s/trunc.safetensors", dir);
    write_file(path[0], sd15, 4);
    write_file(path[1], shape, 2);
    write_file(path[2], rank, 2);
    write_file(path[3], nan, 3);
    { /* the kohya file cut in the middle of its data */
        FILE *in = fopen(KOHYA, "rb"), *out = fopen(path[4], "wb");
        char buf[4096];
        size_t k, total = 0;
        while ((k = fread(buf, 1, sizeof buf, in)) > 0 && total < 60000) total += fwrite(buf, 1, k, out);
        fclose(in);
        fclose(out);
    }
    const char *want[] = {"SD 1.x/2.x", "input size differs", "mismatched rank", "non-finite", "", "\"..\""};
    for (int i = 0; i < 6; i++) {
        sdxl_lora_spec spec = {path[i], 1.0f, 1.0f, NULL};
        sdxl_gen_params q;
        params(&q);
        const char *dirs[1] = {dir};
        if (i < 5) {
            q.loras = &spec;
            q.n_loras = 1;
        } else {
            q.prompt = "a red boat <lora:../../etc/passwd:1>";
            q.lora_dirs = dirs;
            q.n_lora_dirs = 1;
        }
        e.msg[0] = 0;
        uint8_t *px = gen(m, &q, &e, &st);
        CHECK(px == NULL && st != SDXL_OK && strstr(e.msg, want[i]), "bad LoRA %d refused: %s", i, e.msg);
        free(px);
        /* the next request on the same model is unchanged */
        px = gen(m, &p, &e, &st);
        CHECK(px && ref && memcmp(px, ref, 64 * 64 * 3) == 0, "after bad LoRA %d: byte-identical image", i);
        free(px);
    }
    for (int i = 0; i < 5; i++) unlink(path[i]);
    rmdir(dir);
    free(ref);
}

static void test_requests(sdxl_pl_model *m) {
    sdxl_err e = {0};
    int st;
    sdxl_gen_params p;
    params(&p);
    uint8_t *plain = gen(m, &p, &e, &st);
    sdxl_lora_spec spec = {KOHYA, 0.6f, 0.4f, NULL};
    p.loras = &spec;
    p.n_loras = 1;
    uint8_t *withl = gen(m, &p, &e, &st);
    CHECK(withl && plain && memcmp(withl, plain, 64 * 64 * 3) != 0, "the LoRA changes the image");
    /* the same through a prompt tag (A1111 order te:unet), resolved in the folder */
    sdxl_gen_params q;
    params(&q);
    const char *dirs[1] = {SDXL_TEST_DATA "/golden/models"};
    q.prompt = "a red boat<lora:tiny_sdxl_lora_kohya:0.4:0.6>";
    q.lora_dirs = dirs;
    q.n_lora_dirs = 1;
    uint8_t *tag = gen(m, &q, &e, &st);
    CHECK(tag && withl && memcmp(tag, withl, 64 * 64 * 3) == 0, "prompt tag == request list (%s)", e.msg);
    /* batch with the LoRA == single runs */
    p.batch_size = 2;
    uint8_t *b2 = gen(m, &p, &e, &st);
    p.batch_size = 0;
    p.seed = 6;
    uint8_t *s6 = gen(m, &p, &e, &st);
    CHECK(b2 && s6 && memcmp(b2, withl, 64 * 64 * 3) == 0 && memcmp(b2 + 64 * 64 * 3, s6, 64 * 64 * 3) == 0,
          "a batch of two with the LoRA equals the two single images");
    /* the request JSON names the LoRA with its hash; read back it finds the file by name, and by
     * hash in a folder where it has another name */
    {
        sdxl_gen_params r0;
        params(&r0);
        r0.loras = &spec;
        r0.n_loras = 1;
        sdxl_pl_result res;
        CHECK(sdxl_pl_generate(m, &r0, NULL, NULL, NULL, &res, &e) == SDXL_OK, "generate for JSON");
        char dir[] = "/tmp/sdxl_lorahash_XXXXXX", cp[600];
        CHECK(mkdtemp(dir) != NULL, "temp dir");
        snprintf(cp, sizeof cp, "%s/renamed.safetensors", dir);
        CHECK(link(KOHYA, cp) == 0 || symlink(KOHYA, cp) == 0, "renamed copy");
        for (int k = 0; k < 2; k++) {
            sdxl_gen_params back;
            sdxl_gen_params_init(&back);
            void *storage = NULL;
            int ok = sdxl_pl_params_from_json(res.img[0].request, strlen(res.img[0].request), &back, &storage, &e) ==
                     SDXL_OK;
            CHECK(ok && back.n_loras == 1 && back.loras[0].hash && strlen(back.loras[0].hash) == 12,
                  "request JSON carries the LoRA and its hash");
            const char *d2[1] = {k ? dir : SDXL_TEST_DATA "/golden/models"};
            back.lora_dirs = d2;
            back.n_lora_dirs = 1;
            uint8_t *px = ok ? gen(m, &back, &e, &st) : NULL;
            CHECK(px && memcmp(px, res.img[0].rgb, 64 * 64 * 3) == 0, "restored by %s: same image (%s)",
                  k ? "hash" : "name", e.msg);
            free(px);
            free(storage);
        }
        unlink(cp);
        rmdir(dir);
        sdxl_pl_result_free(&res);
    }
    /* and back to no LoRA: byte-identical to before */
    params(&p);
    uint8_t *again = gen(m, &p, &e, &st);
    CHECK(again && plain && memcmp(again, plain, 64 * 64 * 3) == 0, "request without LoRA after one with it is "
          "byte-identical");
    free(plain);
    free(withl);
    free(tag);
    free(b2);
    free(s6);
    free(again);
}

int main(void) {
    sdxl_pl_model *m = load();
    CHECK(m != NULL, "tiny model");
    if (m) {
        test_bad(m);
        test_requests(m);
        sdxl_pl_model_free(m);
    }
    return check_done();
}
