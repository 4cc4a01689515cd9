/* text/tokenizer + text/unicode: vocabulary layout, ids of known prompts (ids from the openai CLIP
 * reference, see tests/data/golden/cases/tokenizer.json), the clean-up steps, bad input and limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

static sdxl_tokenizer *tok;

static int ids_equal(const char *text, size_t len, int flags, const int32_t *want, size_t n) {
    sdxl_tok_ids ids = {0};
    sdxl_err e = {0};
    int rc = sdxl_tokenizer_encode(tok, text, len, flags, &ids, &e);
    int ok = rc == SDXL_OK && ids.n == n && (n == 0 || !memcmp(ids.ids, want, n * sizeof(int32_t)));
    if (!ok) {
        fprintf(stderr, "  \"%s\" -> rc %d (%s), %zu ids:", text, rc, e.msg, ids.n);
        for (size_t i = 0; i < ids.n && i < 40; i++) fprintf(stderr, " %d", ids.ids[i]);
        fprintf(stderr, "\n");
    }
    sdxl_tok_ids_free(&ids);
    return ok;
}

static int normalizes_to(const char *text, const char *want) {
    char *out = NULL;
    sdxl_err e = {0};
    int rc = sdxl_tokenizer_normalize(tok, text, strlen(text), &out, NULL, &e);
    int ok = rc == SDXL_OK && !strcmp(out, want);
    if (!ok) fprintf(stderr, "  normalize(\"%s\") = \"%s\" (rc %d %s), want \"%s\"\n", text, out ? out : "", rc, e.msg, want);
    free(out);
    return ok;
}

static void test_vocab(void) {
    CHECK(!strcmp(sdxl_tokenizer_piece(tok, 0), "!"), "id 0 is '!'");
    CHECK(!strcmp(sdxl_tokenizer_piece(tok, 256), "!</w>"), "id 256 is '!</w>'");
    CHECK(!strcmp(sdxl_tokenizer_piece(tok, 267), ",</w>"), "id 267 is ',</w>' (A1111's comma token)");
    CHECK(!strcmp(sdxl_tokenizer_piece(tok, 320), "a</w>"), "id 320 is 'a</w>'");
    CHECK(!strcmp(sdxl_tokenizer_piece(tok, 2368), "cat</w>"), "id 2368 is 'cat</w>'");
    CHECK(!strcmp(sdxl_tokenizer_piece(tok, SDXL_TOK_BOS), "<|startoftext|>"), "BOS piece");
    CHECK(!strcmp(sdxl_tokenizer_piece(tok, SDXL_TOK_EOS), "<|endoftext|>"), "EOS piece");
    CHECK(sdxl_tokenizer_piece(tok, SDXL_TOK_VOCAB) == NULL && sdxl_tokenizer_piece(tok, -1) == NULL, "range check");
    char buf[32];
    CHECK(sdxl_tokenizer_piece_text(tok, 2368, buf, sizeof buf) == 3 && !strcmp(buf, "cat"), "piece text 'cat'");
    /* 'cafÃ©</w>' in the byte alphabet is the UTF-8 of "café" */
    sdxl_tok_ids ids = {0};
    sdxl_err e = {0};
    CHECK(sdxl_tokenizer_encode(tok, "caf\xc3\xa9", 5, 0, &ids, &e) == SDXL_OK && ids.n == 1, "café is one token");
    if (ids.n == 1) {
        CHECK(!strcmp(sdxl_tokenizer_piece(tok, ids.ids[0]), "caf\xc3\x83\xc2\xa9</w>"), "café piece");
        CHECK(sdxl_tokenizer_piece_text(tok, ids.ids[0], buf, sizeof buf) == 5 && !strcmp(buf, "caf\xc3\xa9"),
              "café piece text");
    }
    sdxl_tok_ids_free(&ids);
}

static void test_known_ids(void) {
    static const int32_t cat[] = {320, 1125, 539, 320, 2368};
    CHECK(ids_equal("a photo of a cat", 16, 0, cat, 5), "plain prompt");
    CHECK(ids_equal("  A   PHOTO\tof\na CAT ", 21, 0, cat, 5), "case and whitespace");
    CHECK(ids_equal("a photo of a cat\0", 17, 0, cat, 5), "a NUL byte is dropped (ftfy removes control characters)");
    CHECK(ids_equal("", 0, 0, NULL, 0), "empty prompt");
    static const int32_t eot[] = {49407, 24269, 1689, 17134};
    static const int32_t eot_oc[] = {27, 347, 40786, 4160, 91, 285, 24269, 1689, 17134};
    const char *lit = "<|endoftext|> literal special token";
    CHECK(ids_equal(lit, strlen(lit), 0, eot, 4), "literal <|endoftext|> is the special id (openai, HF)");
    CHECK(ids_equal(lit, strlen(lit), SDXL_TOK_LITERAL_SPECIAL, eot_oc, 9), "open_clip encodes it as text");
    static const int32_t contr[] = {585, 568, 267, 847, 713};
    CHECK(ids_equal("it's, don't", 11, 0, contr, 5), "contractions split as the reference regex");

    int32_t w[SDXL_TOK_CTX];
    size_t n = 0;
    sdxl_err e = {0};
    CHECK(sdxl_tokenizer_encode77(tok, "a photo of a cat", 16, 0, SDXL_TOK_PAD_TE2, w, &n, &e) == SDXL_OK && n == 5,
          "encode77");
    CHECK(w[0] == SDXL_TOK_BOS && w[1] == 320 && w[5] == 2368 && w[6] == SDXL_TOK_EOS && w[7] == 0 && w[76] == 0,
          "TE2 window pads with 0");
    int32_t many[100];
    for (int i = 0; i < 100; i++) many[i] = 320;
    sdxl_tokenizer_window(many, 100, SDXL_TOK_PAD_TE1, w);
    CHECK(w[0] == SDXL_TOK_BOS && w[75] == 320 && w[76] == SDXL_TOK_EOS, "truncation keeps EOS at 76");
    sdxl_tokenizer_window(many, 0, SDXL_TOK_PAD_TE1, w);
    CHECK(w[1] == SDXL_TOK_EOS && w[2] == SDXL_TOK_EOS && w[76] == SDXL_TOK_EOS, "TE1 window pads with EOS");
}

static void test_clean(void) {
    CHECK(normalizes_to("  HELLO \t World  ", "hello world"), "strip, collapse, lower");
    CHECK(normalizes_to("fish &amp; chips &lt;3", "fish & chips <3"), "named entities");
    CHECK(normalizes_to("&amp;lt;", "<"), "unescaped twice");
    CHECK(normalizes_to("&#x41;&#66;&#128;", "ab\xe2\x82\xac"), "numeric references, 0x80 as windows-1252");
    CHECK(normalizes_to("&ampfoo &notit; &bogus;", "&foo \xc2\xacit; &bogus;"), "html5 legacy prefix rule");
    CHECK(normalizes_to("\xe2\x80\x9cq\xe2\x80\x9d \xe2\x80\x98s\xe2\x80\x99", "\"q\" 's'"), "uncurl quotes");
    CHECK(normalizes_to("\xef\xbc\xa1\xef\xbc\x91\xe3\x80\x80x", "a1 x"), "fullwidth forms and U+3000");
    CHECK(normalizes_to("\xef\xac\x81ne \xef\xac\x82y", "fine fly"), "latin ligatures");
    CHECK(normalizes_to("e\xcc\x81", "\xc3\xa9"), "NFC composes combining marks");
    CHECK(normalizes_to("caf\xc3\x83\xc2\xa9 don\xc3\xa2\xe2\x82\xac\xe2\x84\xa2t", "caf\xc3\xa9 don't"),
          "UTF-8 read as windows-1252 is repaired");
    CHECK(normalizes_to("caf\xc3\xa9 na\xc3\xafve \xc3\xa0 la", "caf\xc3\xa9 na\xc3\xafve \xc3\xa0 la"),
          "real Latin-1 letters are left alone");
    CHECK(normalizes_to("caf\xc3\xa9 and caf\xc3\x83\xc2\xa9", "caf\xc3\xa9 and caf\xc3\xa9"),
          "mixed text: only the mojibake run is decoded");
    CHECK(normalizes_to("a\x1b[31mred\x1b[0m", "ared"), "terminal escapes removed");
    CHECK(normalizes_to("\xc2\x93x\xc2\x94", "\"x\""), "C1 controls read as windows-1252");
    CHECK(normalizes_to("\xce\xa3\xce\x91\xce\xa3", "\xcf\x83\xce\xb1\xcf\x82"), "Unicode lower-case with final sigma");
}

static void test_bad_input(void) {
    sdxl_tok_ids ids = {0};
    sdxl_err e = {0};
    int rc = sdxl_tokenizer_encode(tok, "abc\xff" "def", 7, 0, &ids, &e);
    CHECK(rc == SDXL_ERR_FORMAT && strstr(e.msg, "byte offset 3"), "invalid UTF-8 names the offset: %s", e.msg);
    rc = sdxl_tokenizer_encode(tok, "ab\xe2\x82", 4, 0, &ids, &e);
    CHECK(rc == SDXL_ERR_FORMAT && strstr(e.msg, "offset 2"), "truncated sequence: %s", e.msg);
    rc = sdxl_tokenizer_encode(tok, "\xed\xa0\x80", 3, 0, &ids, &e);
    CHECK(rc == SDXL_ERR_FORMAT, "UTF-8 surrogates are rejected");
    rc = sdxl_tokenizer_encode(tok, "\xc0\xaf", 2, 0, &ids, &e);
    CHECK(rc == SDXL_ERR_FORMAT, "overlong encodings are rejected");

    size_t big = (size_t)1 << 20;
    char *p = malloc(big);
    for (size_t i = 0; i < big; i++) p[i] = "a cat, "[i % 7];
    rc = sdxl_tokenizer_encode(tok, p, big, 0, &ids, &e);
    CHECK(rc == SDXL_ERR_LIMIT && strstr(e.msg, "limit"), "1 MiB prompt over the default limit: %s", e.msg);
    sdxl_tokenizer_set_max_bytes(tok, 2 * big);
    ids.n = 0;
    clock_t t0 = clock();
    rc = sdxl_tokenizer_encode(tok, p, big, 0, &ids, &e);
    CHECK(rc == SDXL_OK && ids.n == big / 7 * 3 + 2, /* the tail "a ca" is 2 more */ "1 MiB prompt with a raised limit: %zu ids", ids.n);
    for (size_t i = 0; i < big; i++) p[i] = (char)('a' + (i * 7919 % 26));
    ids.n = 0;
    rc = sdxl_tokenizer_encode(tok, p, big, 0, &ids, &e);
    CHECK(rc == SDXL_OK && ids.n > 0, "one 1 MiB word (O(n log n) BPE): %zu ids", ids.n);
    for (size_t i = 0; i < big; i++) p[i] = (char)(i * 131 % 256);
    ids.n = 0;
    rc = sdxl_tokenizer_encode(tok, p, big, 0, &ids, &e);
    CHECK(rc == SDXL_ERR_FORMAT, "1 MiB of arbitrary bytes: an error, no crash");
    fprintf(stderr, "  1 MiB prompts: %.2f s\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    sdxl_tokenizer_set_max_bytes(tok, 0);
    CHECK(sdxl_tokenizer_max_bytes(tok) == SDXL_TOK_MAX_BYTES_DEFAULT, "0 restores the default limit");
    free(p);
    sdxl_tok_ids_free(&ids);
}

int main(void) {
    sdxl_err e = {0};
    if (sdxl_tokenizer_new(&tok, &e) != SDXL_OK) {
        CHECK(0, "tokenizer_new: %s", e.msg);
        return check_done();
    }
    test_vocab();
    test_known_ids();
    test_clean();
    test_bad_input();
    sdxl_tokenizer_free(tok);
    return check_done();
}
