/* text/conditioning: zero uncond, windows of long prompts, emphasis, clip_skip, prompt_2, the
 * refiner's TE2-only context, and prompts of hostile bytes. Uses the goldens' tiny models. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"
#include "text/conditioning.h"
#include "text/tokenizer.h"

#define MODELS SDXL_TEST_DATA "/golden/models/"

static sdxl_compute *C;
static sdxl_tokenizer *TOK;

static int load(const char *path, sdxl_ckpt **ck, sdxl_cond_model *m) {
    sdxl_err e = {0};
    int rc = sdxl_ckpt_open(path, ck, &e);
    if (!rc) rc = sdxl_cond_model_load(C, *ck, m, &e);
    CHECK(rc == SDXL_OK, "load %s: %s", path, e.msg);
    return rc;
}

static int encode(const sdxl_cond_model *m, const sdxl_cond_params *p, sdxl_cond *cd, sdxl_err *e) {
    int rc = sdxl_cond_encode(C, m, TOK, p, cd, e);
    return rc;
}

static int all_zero(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

static int same(const float *a, const float *b, int64_t n) { return !memcmp(a, b, (size_t)n * sizeof(float)); }

static void test_uncond(const sdxl_cond_model *base) {
    sdxl_cond_params p;
    sdxl_cond_params_init(&p);
    p.prompt = "a photo of a cat";
    sdxl_cond z, ex, empty;
    sdxl_err e = {0};
    int rc = encode(base, &p, &z, &e);
    CHECK(rc == SDXL_OK, "encode: %s", e.msg);
    if (rc) return;
    const int64_t row = z.n_tokens * z.width;
    CHECK(z.width == 96 && z.pooled_dim == 64 && z.n_tokens == 77, "tiny base: context 77 x 96, pooled 64");
    CHECK(z.uncond_zero && all_zero(z.context, row) && all_zero(z.pooled, z.pooled_dim),
          "no negative prompt: uncond context and pooled are exact zeros");
    CHECK(!all_zero(z.context + row, row), "cond is encoded");
    p.negative = "";
    rc = encode(base, &p, &ex, &e);
    CHECK(rc == SDXL_OK && !ex.uncond_zero && !all_zero(ex.context, row), "explicit \"\" negative is encoded");
    CHECK(rc == SDXL_OK && same(ex.context + row, z.context + row, row) && same(ex.pooled + 64, z.pooled + 64, 64),
          "the cond row does not depend on the uncond");
    sdxl_cond_params q;
    sdxl_cond_params_init(&q);
    q.prompt = "";
    q.force_zeros = 0;
    rc = encode(base, &q, &empty, &e);
    CHECK(rc == SDXL_OK && same(empty.context, ex.context, row) && same(empty.context + row, ex.context, row),
          "negative \"\" = encoding of the empty prompt; force_zeros 0 encodes \"\" for a missing negative");
    sdxl_cond_free(&z);
    sdxl_cond_free(&ex);
    sdxl_cond_free(&empty);
}

static void test_long_prompt(const sdxl_cond_model *base) {
    char text[4096] = "";
    for (int i = 0; i < 60; i++)
        strcat(text, "red cat ");
    sdxl_cond_params p;
    sdxl_cond_params_init(&p);
    p.prompt = text;
    p.negative = "blurry";
    sdxl_cond cd, blur;
    sdxl_err e = {0};
    int rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_OK && cd.n_tokens == 2 * 77, "120 tokens -> 2 windows (%lld tokens): %s", (long long)cd.n_tokens,
          e.msg);
    if (rc) return;
    const int64_t W = cd.width, T = cd.n_tokens;
    sdxl_cond_params q;
    sdxl_cond_params_init(&q);
    q.prompt = "blurry";
    q.negative = "";
    rc = encode(base, &q, &blur, &e);
    CHECK(rc == SDXL_OK, "encode: %s", e.msg);
    if (!rc) {
        CHECK(same(cd.context, blur.context + 77 * W, 77 * W), "uncond window 0 = \"blurry\" alone");
        CHECK(same(cd.context + 77 * W, blur.context, 77 * W), "uncond padded with an empty window");
        CHECK(same(cd.pooled, blur.pooled + blur.pooled_dim, cd.pooled_dim), "pooled from the first window");
        sdxl_cond_free(&blur);
    }
    /* Window 1 of the cond is the second 77-token window encoded on its own. */
    sdxl_prompt p1, p2;
    sdxl_prompt_opts o;
    sdxl_prompt_opts_init(&o);
    rc = sdxl_prompt_build(TOK, text, strlen(text), &o, &p1, &e);
    o.pad_id = SDXL_TOK_PAD_TE2;
    if (!rc) rc = sdxl_prompt_build(TOK, text, strlen(text), &o, &p2, &e);
    CHECK(rc == SDXL_OK && p1.n_chunks == 2 && p2.n_chunks == 2, "prompt build: %s", e.msg);
    if (!rc) {
        float *ctx = malloc((size_t)(77 * W) * sizeof(float));
        sdxl_cond_tokens t1 = {p1.ids + 77, NULL, 1}, t2 = {p2.ids + 77, NULL, 1};
        rc = sdxl_cond_encode_tokens(C, base, 1, &t1, &t2, 1, ctx, NULL, &e);
        CHECK(rc == SDXL_OK && same(ctx, cd.context + T * W + 77 * W, 77 * W), "window 1 encoded as its own 77 tokens");
        free(ctx);
        sdxl_prompt_free(&p1);
        sdxl_prompt_free(&p2);
    }
    sdxl_cond_free(&cd);
}

/* Emphasis: a plain prompt is bit-identical with or without parsing; weights change the tokens
 * they cover and keep each window's mean (A1111). Mean bound: relative 1e-5, f32 sums of 77 x 96. */
static void test_emphasis(const sdxl_cond_model *base) {
    sdxl_cond_params p;
    sdxl_cond_params_init(&p);
    p.prompt = "a photo of a cat";
    sdxl_cond a, b, w;
    sdxl_err e = {0};
    int rc = encode(base, &p, &a, &e);
    p.emphasis = 0;
    if (!rc) rc = encode(base, &p, &b, &e);
    CHECK(rc == SDXL_OK && same(a.context, b.context, 2 * a.n_tokens * a.width), "plain prompt: emphasis on = off");
    if (rc) return;
    p.emphasis = 1;
    p.prompt = "a photo of a (cat:1.5)";
    rc = encode(base, &p, &w, &e);
    CHECK(rc == SDXL_OK, "weighted: %s", e.msg);
    if (!rc) {
        const int64_t W = a.width, off = a.n_tokens * W;
        double ma = 0, mw = 0;
        for (int64_t i = 0; i < 77 * 32; i++) {
            int64_t t = i / 32, j = i % 32;
            ma += a.context[off + t * W + j];
            mw += w.context[off + t * W + j];
        }
        CHECK(fabs(ma - mw) <= 1e-5 * fabs(ma) + 1e-6, "TE1 window mean kept: %.9g vs %.9g", ma, mw);
        CHECK(!same(a.context + off, w.context + off, 77 * W), "weights change the context");
        CHECK(same(a.pooled + 64, w.pooled + 64, 64), "pooled ignores the weights (A1111)");
        sdxl_cond_free(&w);
    }
    sdxl_cond_free(&a);
    sdxl_cond_free(&b);
}

static void test_clip_skip_and_prompt2(const sdxl_cond_model *base) {
    sdxl_cond_params p;
    sdxl_cond_params_init(&p);
    p.prompt = "a red car";
    p.clip_skip = 2;
    sdxl_cond cd;
    sdxl_err e = {0};
    int rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_OK, "clip_skip 2: %s", e.msg);
    if (!rc) {
        sdxl_prompt pr;
        sdxl_prompt_opts o;
        sdxl_prompt_opts_init(&o);
        o.pad_id = SDXL_TOK_PAD_TE2;
        rc = sdxl_prompt_build(TOK, p.prompt, strlen(p.prompt), &o, &pr, &e);
        const int64_t W2 = base->te2->cfg.width, W = cd.width;
        float *h = malloc((size_t)(77 * W2) * sizeof(float));
        sdxl_clip_io io = {pr.ids, 1, 77, base->te2->cfg.layers - 2, h, NULL, NULL, NULL};
        if (!rc) rc = sdxl_clip_forward(C, base->te2, &io, &e);
        int ok = !rc;
        for (int64_t t = 0; ok && t < 77; t++)
            ok = same(h + t * W2, cd.context + cd.n_tokens * W + t * W + 32, W2);
        CHECK(ok, "clip_skip 2 = hidden state layers-2 of TE2 (%s)", e.msg);
        free(h);
        sdxl_prompt_free(&pr);
        sdxl_cond_free(&cd);
    }
    p.clip_skip = 3; /* tiny encoders have 3 blocks: hidden state 0 = embeddings */
    rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_OK, "clip_skip = layers is the embeddings: %s", e.msg);
    if (!rc) sdxl_cond_free(&cd);
    p.clip_skip = 4;
    CHECK(encode(base, &p, &cd, &e) == SDXL_ERR_ARG && strstr(e.msg, "clip_skip"), "clip_skip too large: %s", e.msg);

    sdxl_cond one, two, mixed;
    sdxl_cond_params_init(&p);
    p.prompt = "a red car";
    rc = encode(base, &p, &one, &e);
    p.prompt = "a blue boat";
    if (!rc) rc = encode(base, &p, &two, &e);
    p.prompt = "a red car";
    p.prompt_2 = "a blue boat";
    if (!rc) rc = encode(base, &p, &mixed, &e);
    CHECK(rc == SDXL_OK, "prompt_2: %s", e.msg);
    if (!rc) {
        const int64_t W = one.width, off = one.n_tokens * W;
        int ok1 = 1, ok2 = 1;
        for (int64_t t = 0; t < 77; t++) {
            ok1 &= same(mixed.context + off + t * W, one.context + off + t * W, 32);
            ok2 &= same(mixed.context + off + t * W + 32, two.context + off + t * W + 32, 64);
        }
        CHECK(ok1 && ok2 && same(mixed.pooled + 64, two.pooled + 64, 64),
              "prompt feeds TE1, prompt_2 feeds TE2 and pooled");
        sdxl_cond_free(&one);
        sdxl_cond_free(&two);
        sdxl_cond_free(&mixed);
    }
}

static void test_refiner(void) {
    sdxl_ckpt *ck = NULL;
    sdxl_cond_model m;
    if (load(MODELS "tiny_sd_xl_refiner.safetensors", &ck, &m)) return;
    CHECK(!m.te1 && m.te2 && !m.force_zeros_for_empty_prompt, "refiner: TE2 only, no forced zeros");
    sdxl_cond_params p;
    sdxl_cond_params_init(&p);
    p.prompt = "a photo of a cat";
    sdxl_cond cd;
    sdxl_err e = {0};
    int rc = encode(&m, &p, &cd, &e);
    CHECK(rc == SDXL_OK && cd.width == 64 && cd.pooled_dim == 64 && !cd.uncond_zero && !all_zero(cd.context, 77 * 64),
          "refiner context is TE2's width and its uncond encodes \"\": %s", e.msg);
    if (!rc) sdxl_cond_free(&cd);
    sdxl_cond_model_free(&m);
    sdxl_ckpt_close(ck);
}

static void test_bad_input(const sdxl_cond_model *base) {
    sdxl_cond_params p;
    sdxl_cond_params_init(&p);
    sdxl_cond cd;
    sdxl_err e = {0};
    p.prompt = "a cat \xff\xfe dog";
    int rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_ERR_FORMAT && strstr(e.msg, "prompt") && strstr(e.msg, "6"),
          "invalid UTF-8 named with its offset: %s", e.msg);
    p.prompt = "a photo";
    p.negative = "\xc3";
    rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_ERR_FORMAT && strstr(e.msg, "negative_prompt"), "bad negative named: %s", e.msg);
    if (!rc) sdxl_cond_free(&cd);

    static const char nul[] = "a\0cat\0\0(dog:2)";
    sdxl_cond_params_init(&p);
    p.prompt = nul;
    p.prompt_len = sizeof nul - 1;
    rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_OK || rc == SDXL_ERR_FORMAT || rc == SDXL_ERR_ARG, "NULs inside a prompt: status %d (%s)", rc,
          e.msg);
    if (!rc) sdxl_cond_free(&cd);

    size_t big = 1 << 20;
    char *mb = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        mb[i] = "ab (c:1.1) [d] "[i % 15];
    mb[big] = 0;
    p.prompt = mb;
    p.prompt_len = 0;
    rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_ERR_LIMIT, "1 MB prompt is over the byte limit: %s", e.msg);
    if (!rc) sdxl_cond_free(&cd);
    for (size_t i = 0; i < big; i++)
        mb[i] = (char)(i * 2654435761u >> 13);
    p.prompt_len = big;
    rc = encode(base, &p, &cd, &e);
    CHECK(rc != SDXL_OK, "1 MB of random bytes is refused: %s", e.msg);
    if (!rc) sdxl_cond_free(&cd);
    p.prompt_len = 0;
    /* 40 000 bytes of words: under the byte limit, over the window limit. */
    for (size_t i = 0; i < 40000; i++)
        mb[i] = "cat "[i % 4];
    mb[40000] = 0;
    rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_ERR_LIMIT, "10 000 tokens exceed max_chunks: %s", e.msg);
    if (!rc) sdxl_cond_free(&cd);
    p.max_chunks = 1024;
    mb[4000] = 0;
    rc = encode(base, &p, &cd, &e);
    CHECK(rc == SDXL_OK && cd.n_tokens == 14 * 77, "1000 tokens -> 14 windows: %s", e.msg);
    if (!rc) sdxl_cond_free(&cd);
    free(mb);
    p.max_chunks = 0;
    CHECK(encode(base, &p, &cd, &e) == SDXL_ERR_ARG, "max_chunks 0 refused: %s", e.msg);

    /* Random prompts over the syntax characters, UTF-8 pieces and raw bytes: every one ends
     * in OK or an error status, and an OK one has finite values. */
    static const char *const PIECES[] = {"(",
                                         ")",
                                         "[",
                                         "]",
                                         ":",
                                         "\\",
                                         "<lora:",
                                         ">",
                                         ",",
                                         " ",
                                         "BREAK",
                                         "cat",
                                         "1.5",
                                         "-2",
                                         "\xc3\xa9",
                                         "\xe2\x80\x9c",
                                         "\xf0\x9f\x9a\x80",
                                         "\xff",
                                         "\x80",
                                         "\0",
                                         "<|endoftext|>",
                                         "&amp;",
                                         "e+99"};
    const int NP = (int)(sizeof PIECES / sizeof PIECES[0]);
    uint64_t st = 12345;
    int n_ok = 0, n_err = 0, finite = 1;
    char buf[600];
    for (int it = 0; it < 300; it++) {
        size_t len = 0;
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        int n = (int)(st >> 59) * 4;
        for (int k = 0; k < n; k++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            const char *pc = PIECES[(st >> 33) % (uint64_t)NP];
            if (it % 4 && (pc[0] == '\xff' || pc[0] == '\x80')) continue; /* mostly valid UTF-8 */
            size_t pl = pc[0] ? strlen(pc) : 1;
            if (len + pl < sizeof buf) memcpy(buf + len, pc, pl), len += pl;
        }
        sdxl_cond_params_init(&p);
        p.prompt = buf;
        p.prompt_len = len ? len : 0;
        if (!len) p.prompt = "";
        p.negative = (it & 1) ? buf : NULL;
        p.negative_len = p.prompt_len;
        rc = encode(base, &p, &cd, &e);
        if (rc == SDXL_OK) {
            n_ok++;
            for (int64_t i = 0; i < 2 * cd.n_tokens * cd.width; i++)
                finite &= isfinite(cd.context[i]);
            sdxl_cond_free(&cd);
        } else {
            n_err++;
            finite &= rc == SDXL_ERR_FORMAT || rc == SDXL_ERR_ARG || rc == SDXL_ERR_LIMIT;
        }
    }
    CHECK(finite && n_ok > 0 && n_err > 0, "300 random prompts: %d encoded (finite), %d refused with a status", n_ok,
          n_err);
    printf("random prompts: %d encoded, %d refused\n", n_ok, n_err);
}

int main(void) {
    sdxl_err e = {0};
    if (sdxl_compute_new(SDXL_PREC_F32, &C, &e) || sdxl_tokenizer_new(&TOK, &e)) {
        CHECK(0, "setup: %s", e.msg);
        return check_done();
    }
    sdxl_ckpt *ck = NULL;
    sdxl_cond_model base;
    if (!load(MODELS "tiny_sd_xl_base.safetensors", &ck, &base)) {
        CHECK(base.te1 && base.te2 && base.force_zeros_for_empty_prompt, "base: both encoders, forced zeros");
        test_uncond(&base);
        test_long_prompt(&base);
        test_emphasis(&base);
        test_clip_skip_and_prompt2(&base);
        test_bad_input(&base);
        sdxl_cond_model_free(&base);
        sdxl_ckpt_close(ck);
    }
    test_refiner();
    sdxl_tokenizer_free(TOK);
    sdxl_compute_free(C);
    return check_done();
}
