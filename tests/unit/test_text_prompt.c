/* text/prompt: A1111 parse_prompt_attention (its docstring examples and edge cases), BREAK, lora tags,
 * 75-token chunking with comma back-off, cond/uncond padding and the mean-preserving weighting. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "text/prompt.h"

typedef struct want_span {
    const char *text;
    double weight;
} want_span;

/* Weights are compared exactly (python float arithmetic in the same order) up to 1 ulp-ish slack. */
static int parses_to(const char *text, const want_span *w, size_t n) {
    sdxl_prompt_spans s = {0};
    sdxl_err e = {0};
    int rc = sdxl_prompt_parse_attention(text, strlen(text), &s, &e);
    int ok = rc == SDXL_OK && s.n == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = !strcmp(s.v[i].text, w[i].text) && fabs(s.v[i].weight - w[i].weight) <= 1e-15 * fabs(w[i].weight);
    if (!ok) {
        fprintf(stderr, "  parse(\"%s\") rc %d %s:", text, rc, e.msg);
        for (size_t i = 0; i < s.n; i++) fprintf(stderr, " ['%s', %.17g]", s.v[i].text, s.v[i].weight);
        fprintf(stderr, "\n");
    }
    sdxl_prompt_spans_free(&s);
    return ok;
}

static void test_attention(void) {
    /* A1111 parse_prompt_attention docstring */
    CHECK(parses_to("normal text", (want_span[]){{"normal text", 1.0}}, 1), "plain");
    CHECK(parses_to("an (important) word", (want_span[]){{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}, 3),
          "(x) is x1.1");
    CHECK(parses_to("(unbalanced", (want_span[]){{"unbalanced", 1.1}}, 1), "unclosed ( still applies");
    CHECK(parses_to("\\(literal\\]", (want_span[]){{"(literal]", 1.0}}, 1), "escapes");
    CHECK(parses_to("(unnecessary)(parens)", (want_span[]){{"unnecessaryparens", 1.1}}, 1), "equal weights merge");
    CHECK(parses_to("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                    (want_span[]){{"a ", 1.0},
                                  {"house", 1.5730000000000004},
                                  {" ", 1.1},
                                  {"on", 1.0},
                                  {" a ", 1.1},
                                  {"hill", 0.55},
                                  {", sun, ", 1.1},
                                  {"sky", 1.4641000000000006},
                                  {".", 1.1}},
                    9),
          "docstring example");
    /* edge cases */
    CHECK(parses_to("", (want_span[]){{"", 1.0}}, 1), "empty prompt");
    CHECK(parses_to("[a]", (want_span[]){{"a", 1 / 1.1}}, 1), "[x] divides by 1.1");
    CHECK(parses_to("((a))", (want_span[]){{"a", 1.1 * 1.1}}, 1), "((x))");
    CHECK(parses_to("(a: 1.5 )", (want_span[]){{"a", 1.5}}, 1), "spaces around the weight");
    CHECK(parses_to("(a:-0.5)", (want_span[]){{"a", -0.5}}, 1), "negative weight");
    CHECK(parses_to("a:1.2) b", (want_span[]){{"a:1.2) b", 1.0}}, 1), "weight without ( is text");
    CHECK(parses_to("a) b]", (want_span[]){{"a) b]", 1.0}}, 1), "unmatched closers are text");
    CHECK(parses_to("(a:1.2.3)", (want_span[]){{"a:1.2.3", 1.1}}, 1), "a malformed number is text");
    CHECK(parses_to("time: 10:30", (want_span[]){{"time: 10:30", 1.0}}, 1), "plain colons");
    CHECK(parses_to("\\\\(a)", (want_span[]){{"\\", 1.0}, {"a", 1.1}}, 2), "escaped backslash");
    CHECK(parses_to("a\\b", (want_span[]){{"ab", 1.0}}, 1), "a lone backslash is dropped");
    CHECK(parses_to("[(a)]", (want_span[]){{"a", 1.1 / 1.1}}, 1), "nesting of both kinds");
    CHECK(parses_to("a BREAK b", (want_span[]){{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}, 3), "BREAK");
    CHECK(parses_to("aBREAK b break", (want_span[]){{"aBREAK b break", 1.0}}, 1), "BREAK needs word bounds, caps");
    CHECK(parses_to("(BREAK)", (want_span[]){{"", 1.1}, {"BREAK", -1.1}, {"", 1.1}}, 3),
          "BREAK inside () is scaled like A1111 (then no longer a break)");
    sdxl_prompt_spans s = {0};
    sdxl_err e = {0};
    CHECK(sdxl_prompt_parse_attention("ab\xff", 3, &s, &e) == SDXL_ERR_FORMAT && strstr(e.msg, "offset 2"),
          "invalid UTF-8: %s", e.msg);
    sdxl_prompt_spans_free(&s);
    CHECK(sdxl_prompt_parse_attention("(x\xe2\x80\x83:\xe2\x80\x83" "2)", 11, &s, &e) == SDXL_OK && s.n == 1 &&
              s.v[0].weight == 2.0,
          "Unicode whitespace around the weight");
    sdxl_prompt_spans_free(&s);
}

static void test_loras(void) {
    const char *p = "a cat <lora:foo:0.8> <lyco:bar> <hypernet:x:1> <lora:baz:0.5:0.25><lora:q:te=0.3:unet=2> <lora:open";
    char *out = NULL;
    size_t len = 0;
    sdxl_prompt_lora *l = NULL;
    int n = 0;
    sdxl_err e = {0};
    int rc = sdxl_prompt_extract_loras(p, strlen(p), &out, &len, &l, &n, &e);
    CHECK(rc == SDXL_OK && !strcmp(out, "a cat     <lora:open"), "tags removed: '%s'", out ? out : "");
    CHECK(n == 4, "four lora/lyco tags, got %d", n);
    if (n == 4) {
        CHECK(!strcmp(l[0].name, "foo") && !strcmp(l[0].kind, "lora") && l[0].te_weight == 0.8f &&
                  l[0].unet_weight == 0.8f,
              "<lora:foo:0.8>");
        CHECK(!strcmp(l[1].name, "bar") && !strcmp(l[1].kind, "lyco") && l[1].te_weight == 1.0f, "<lyco:bar> = 1.0");
        CHECK(!strcmp(l[2].name, "baz") && l[2].te_weight == 0.5f && l[2].unet_weight == 0.25f, "te and unet");
        CHECK(!strcmp(l[3].name, "q") && l[3].te_weight == 0.3f && l[3].unet_weight == 2.0f, "named te=/unet=");
    }
    free(out);
    sdxl_prompt_loras_free(l, n);
    l = NULL;
    n = 0;
    rc = sdxl_prompt_extract_loras("<lora:x:abc>", 12, &out, &len, &l, &n, &e);
    CHECK(rc == SDXL_ERR_ARG && strstr(e.msg, "lora:x:abc"), "bad weight names the tag: %s", e.msg);
    sdxl_prompt_loras_free(l, n);
}

static sdxl_tokenizer *tok;

static void test_chunks(void) {
    sdxl_prompt p;
    sdxl_err e = {0};
    int rc = sdxl_prompt_build(tok, "a photo of a cat", 16, NULL, &p, &e);
    static const int32_t cat[] = {SDXL_TOK_BOS, 320, 1125, 539, 320, 2368, SDXL_TOK_EOS, SDXL_TOK_EOS};
    CHECK(rc == SDXL_OK && p.n_chunks == 1 && p.n_tokens == 5 && !memcmp(p.ids, cat, sizeof cat) &&
              p.ids[76] == SDXL_TOK_EOS,
          "plain prompt = the reference window");
    sdxl_prompt_free(&p);

    sdxl_prompt_opts o;
    sdxl_prompt_opts_init(&o);
    o.pad_id = SDXL_TOK_PAD_TE2;
    rc = sdxl_prompt_build(tok, "a (cat:1.5) <lora:x:0.5>", 24, &o, &p, &e);
    CHECK(rc == SDXL_OK && p.n_chunks == 1 && p.ids[2] == 2368 && p.weights[1] == 1.0f && p.weights[2] == 1.5f &&
              p.weights[0] == 1.0f && p.weights[3] == 1.0f && p.ids[3] == SDXL_TOK_EOS && p.ids[4] == 0 &&
              p.n_loras == 1,
          "weights per token, TE2 padding, lora list");
    sdxl_prompt_free(&p);

    rc = sdxl_prompt_build(tok, "", 0, NULL, &p, &e);
    CHECK(rc == SDXL_OK && p.n_chunks == 1 && p.n_tokens == 0 && p.ids[1] == SDXL_TOK_EOS, "empty prompt: one chunk");
    sdxl_prompt_free(&p);

    char buf[1024] = "";
    for (int i = 0; i < 75; i++) strcat(buf, "a ");
    rc = sdxl_prompt_build(tok, buf, strlen(buf), NULL, &p, &e);
    CHECK(rc == SDXL_OK && p.n_chunks == 1 && p.n_tokens == 75 && p.ids[76] == SDXL_TOK_EOS, "75 tokens: 1 chunk");
    sdxl_prompt_free(&p);
    strcat(buf, "b");
    rc = sdxl_prompt_build(tok, buf, strlen(buf), NULL, &p, &e);
    CHECK(rc == SDXL_OK && p.n_chunks == 2 && p.n_tokens == 76 && p.ids[77 + 1] != SDXL_TOK_EOS &&
              p.ids[77 + 2] == SDXL_TOK_EOS,
          "76 tokens: 2 chunks");
    sdxl_prompt_free(&p);

    /* 70 x "a", a comma, 10 x "b": the chunk ends after the comma and the b's move on */
    buf[0] = 0;
    for (int i = 0; i < 70; i++) strcat(buf, "a ");
    strcat(buf, ", ");
    for (int i = 0; i < 10; i++) strcat(buf, "b ");
    rc = sdxl_prompt_build(tok, buf, strlen(buf), NULL, &p, &e);
    int b_id = rc == SDXL_OK ? p.ids[77 + 1] : -1;
    CHECK(rc == SDXL_OK && p.n_chunks == 2 && p.ids[71] == 267 && p.ids[72] == SDXL_TOK_EOS &&
              p.ids[76] == SDXL_TOK_EOS && p.ids[77 + 10] == b_id && p.ids[77 + 11] == SDXL_TOK_EOS &&
              p.n_tokens == 85,
          "comma back-off moves the tail to the next chunk (n_tokens %zu)", p.n_tokens);
    sdxl_prompt_free(&p);
    sdxl_prompt_opts_init(&o);
    o.comma_backtrack = 0;
    rc = sdxl_prompt_build(tok, buf, strlen(buf), &o, &p, &e);
    CHECK(rc == SDXL_OK && p.n_chunks == 2 && p.ids[71] == 267 && p.ids[75] == b_id && p.ids[77 + 6] == b_id &&
              p.ids[77 + 7] == SDXL_TOK_EOS,
          "without back-off the chunk is filled to 75");
    sdxl_prompt_free(&p);

    rc = sdxl_prompt_build(tok, "a BREAK b", 9, NULL, &p, &e);
    CHECK(rc == SDXL_OK && p.n_chunks == 2 && p.ids[1] == 320 && p.ids[2] == SDXL_TOK_EOS && p.ids[78] != 320 &&
              p.n_tokens == 76,
          "BREAK starts a new chunk");
    sdxl_prompt u;
    sdxl_prompt_build(tok, "", 0, &o, &u, &e);
    rc = sdxl_prompt_pad_pair(&p, SDXL_TOK_PAD_TE1, &u, SDXL_TOK_PAD_TE2, &e);
    CHECK(rc == SDXL_OK && u.n_chunks == 2 && u.ids[77] == SDXL_TOK_BOS && u.ids[78] == SDXL_TOK_EOS &&
              u.ids[79] == SDXL_TOK_PAD_TE2 && u.weights[100] == 1.0f,
          "uncond padded with empty-prompt chunks");
    sdxl_prompt_free(&p);
    sdxl_prompt_free(&u);

    o.max_chunks = 1;
    rc = sdxl_prompt_build(tok, "a BREAK b", 9, &o, &p, &e);
    CHECK(rc == SDXL_ERR_LIMIT, "chunk limit: %s", e.msg);
    rc = sdxl_prompt_build(tok, "a\xc3(", 3, NULL, &p, &e);
    CHECK(rc == SDXL_ERR_FORMAT, "invalid UTF-8 in a prompt: %s", e.msg);
}

static void test_weighting(void) {
    enum { T = 77, C = 33 };
    float z[T * C], w[T];
    double ref[T * C];
    uint64_t st = 7;
    check_fill_uniform(z, T * C, -1.0f, 2.0f, &st);
    check_fill_uniform(w, T, 0.5f, 1.5f, &st);
    double m0 = 0, m1 = 0;
    for (int i = 0; i < T * C; i++) m0 += z[i];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            ref[t * C + c] = (double)z[t * C + c] * w[t];
            m1 += ref[t * C + c];
        }
    for (int i = 0; i < T * C; i++) ref[i] *= m0 / m1;
    sdxl_prompt_apply_weights(z, T, C, w);
    double err = 0, m2 = 0;
    for (int i = 0; i < T * C; i++) {
        err = fmax(err, fabs(z[i] - ref[i]));
        m2 += z[i];
    }
    /* float products against a double reference: a few ulps of O(1) values */
    CHECK(err < 1e-5, "weighted hidden states match the double reference (max abs %.3g)", err);
    CHECK(fabs(m2 - m0) / fabs(m0) < 1e-4, "mean preserved (%.6g vs %.6g)", m2 / (T * C), m0 / (T * C));
}

int main(void) {
    sdxl_err e = {0};
    test_attention();
    test_loras();
    if (sdxl_tokenizer_new(&tok, &e) != SDXL_OK) {
        CHECK(0, "tokenizer_new: %s", e.msg);
        return check_done();
    }
    test_chunks();
    test_weighting();
    sdxl_tokenizer_free(tok);
    return check_done();
}
