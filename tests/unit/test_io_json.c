/* Strict JSON parser: a valid/invalid corpus, exact integers, escapes, UTF-8 rules, limits,
 * duplicate keys, error offsets, parse_file bounds and escape round trips. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "io/json.h"

static int parses(const char *s, size_t n) {
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    int st = sdxl_json_parse(s, n, NULL, "t", &v, &e);
    sdxl_json_free(v);
    return st == SDXL_OK;
}

static sdxl_json *must(const char *s) {
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    int st = sdxl_json_parse(s, strlen(s), NULL, "t", &v, &e);
    CHECK(st == SDXL_OK, "parse %s: %s", s, e.msg);
    return v;
}

static void test_corpus(void) {
    static const char *valid[] = {
        "0", "-0", "1", "-1", "1.5", "-1.5e10", "1E+2", "1e-2", "0.0", "true", "false", "null", "\"\"", "\"a\"",
        "[]", "{}", "[1,2,3]", " \t\r\n[ 1 , { \"a\" : [ ] } ] \n", "{\"a\":{\"b\":{\"c\":null}}}",
        "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\u0041\\u00e9\\u20ac\\ud83d\\ude00\"", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"",
        "\"\\u0000\"", "9223372036854775807", "-9223372036854775808", "18446744073709551616", "1e308",
        "\"\xef\xbf\xbf\"", "\"\xf4\x8f\xbf\xbf\"", "[[[[[]]]]]",
    };
    static const char *invalid[] = {
        "", " ", "01", "-", "+1", "1.", ".5", "1e", "1e+", "0x10", "NaN", "Infinity", "-Infinity", "tru", "nul",
        "True", "[1,]", "[,1]", "[1 2]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "{'a':1}", "{\"a\":1", "[1", "\"abc",
        "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud800x\"",
        "\"a\tb\"", "\"a\nb\"", "\"\x01\"", "\"\xc0\x80\"", "\"\xc1\xbf\"", "\"\xe0\x80\x80\"", "\"\xe0\x9f\xbf\"",
        "\"\xed\xa0\x80\"", "\"\xed\xbf\xbf\"", "\"\xf0\x80\x80\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"",
        "\"\xff\"", "\"\x80\"", "\"\xc3\"", "\"\xe2\x82\"", "1 2", "{} x", "[]]", "\xef\xbb\xbf{}", "1e999",
        "-1e999", "/*c*/1", "[1]//", "{\"a\":1,\"a\":2}",
    };
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++)
        CHECK(parses(valid[i], strlen(valid[i])), "valid[%zu] %s accepted", i, valid[i]);
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++)
        CHECK(!parses(invalid[i], strlen(invalid[i])), "invalid[%zu] %s rejected", i, invalid[i]);
    CHECK(!parses("[1]\0", 4), "embedded NUL after value rejected");
    CHECK(!parses("\"a\0b\"", 5), "raw NUL inside string rejected");
}

static void test_values(void) {
    sdxl_json *v = must("{\"i\":9007199254740993,\"m\":-9223372036854775808,\"big\":9223372036854775808,"
                        "\"f\":2.5,\"e\":1e2,\"s\":\"h\\u00e9\\ud83d\\ude00\",\"z\":\"a\\u0000b\",\"t\":true,"
                        "\"n\":null,\"a\":[1,\"x\",[2]]}");
    if (!v) return;
    const sdxl_json *i = sdxl_json_get(v, "i");
    CHECK(i && i->is_int && i->integer == 9007199254740993LL, "int64 exact beyond 2^53");
    const sdxl_json *m = sdxl_json_get(v, "m");
    CHECK(m && m->is_int && m->integer == INT64_MIN, "INT64_MIN exact");
    const sdxl_json *big = sdxl_json_get(v, "big");
    CHECK(big && !big->is_int && big->number == 9223372036854775808.0, "2^63 is a double, not int");
    CHECK(sdxl_json_num(v, "f", 0) == 2.5, "2.5");
    const sdxl_json *ee = sdxl_json_get(v, "e");
    CHECK(ee && !ee->is_int && ee->number == 100.0, "1e2 is not an int literal but equals 100");
    CHECK(sdxl_json_i64(v, "e", -7) == -7, "i64 getter refuses non-int");
    const sdxl_json *s = sdxl_json_get(v, "s");
    CHECK(s && s->len == 7 && !memcmp(s->str, "h\xc3\xa9\xf0\x9f\x98\x80", 7), "escape + surrogate pair decode");
    const sdxl_json *z = sdxl_json_get(v, "z");
    CHECK(z && z->len == 3 && z->str[1] == 0 && z->str[2] == 'b', "\\u0000 kept with its length");
    CHECK(sdxl_json_bool(v, "t", 0) == 1, "bool");
    CHECK(sdxl_json_get(v, "n")->type == SDXL_JSON_NULL, "null");
    CHECK(!strcmp(sdxl_json_str(v, "missing", "d"), "d"), "default for missing");
    CHECK(!strcmp(sdxl_json_str(v, "f", "d"), "d"), "default for wrong type");
    const sdxl_json *a = sdxl_json_get(v, "a");
    CHECK(a && a->len == 3 && sdxl_json_at(a, 1)->type == SDXL_JSON_STRING && sdxl_json_at(a, 3) == NULL, "array access");
    CHECK(sdxl_json_at(sdxl_json_at(a, 2), 0)->integer == 2, "nested array");
    CHECK(sdxl_json_get(a, "x") == NULL && sdxl_json_at(v, 0) == NULL, "container type mismatch gives NULL");
    sdxl_json_free(v);
}

static void test_errors(void) {
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    int st = sdxl_json_parse("{\"a\": [1, 2,, 3]}", 17, NULL, "cfg.json", &v, &e);
    CHECK(st == SDXL_ERR_FORMAT && v == NULL, "format error");
    CHECK(strstr(e.msg, "cfg.json") && strstr(e.msg, "byte 12"), "message names source and byte offset: %s", e.msg);
    st = sdxl_json_parse("{\"k\":1,\"k\":2}", 13, NULL, "d", &v, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "duplicate key \"k\""), "duplicate key named: %s", e.msg);
    sdxl_json_opts o;
    sdxl_json_opts_init(&o);
    o.reject_dup_keys = 0;
    st = sdxl_json_parse("{\"k\":1,\"k\":2}", 13, &o, "d", &v, &e);
    CHECK(st == SDXL_OK && sdxl_json_i64(v, "k", 0) == 2, "duplicates allowed when asked; last wins");
    sdxl_json_free(v);
    /* many keys: the hashed duplicate check */
    char big[200000];
    size_t n = 0;
    n += (size_t)sprintf(big + n, "{");
    for (int i = 0; i < 5000; i++) n += (size_t)sprintf(big + n, "%s\"key%d\":%d", i ? "," : "", i, i);
    n += (size_t)sprintf(big + n, "}");
    st = sdxl_json_parse(big, n, NULL, "big", &v, &e);
    CHECK(st == SDXL_OK && v->len == 5000 && sdxl_json_i64(v, "key4321", -1) == 4321, "5000 keys");
    sdxl_json_free(v);
    n -= 1;
    n += (size_t)sprintf(big + n, ",\"key17\":0}");
    st = sdxl_json_parse(big, n, NULL, "big", &v, &e);
    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "\"key17\""), "hashed duplicate found: %s", e.msg);

    /* depth */
    char deep[300];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    o.max_depth = 100;
    CHECK(sdxl_json_parse(deep, 200, &o, "d", &v, &e) == SDXL_OK, "depth 100 at limit 100");
    sdxl_json_free(v);
    o.max_depth = 99;
    st = sdxl_json_parse(deep, 200, &o, "d", &v, &e);
    CHECK(st == SDXL_ERR_LIMIT && strstr(e.msg, "nesting deeper than 99") && strstr(e.msg, "byte 99"),
          "depth limit named: %s", e.msg);
    /* string limit */
    o.max_depth = 64;
    o.max_string = 3;
    CHECK(sdxl_json_parse("\"abc\"", 5, &o, "d", &v, &e) == SDXL_OK, "string at limit");
    sdxl_json_free(v);
    st = sdxl_json_parse("[\"abcd\"]", 8, &o, "d", &v, &e);
    CHECK(st == SDXL_ERR_LIMIT && strstr(e.msg, "limit"), "string limit: %s", e.msg);
    st = sdxl_json_parse("{\"abcd\":1}", 10, &o, "d", &v, &e);
    CHECK(st == SDXL_ERR_LIMIT, "key limit");
    /* non-NUL-terminated input: parser must stop at len */
    char nt[4] = {'1', '2', '3', '4'};
    st = sdxl_json_parse(nt, 2, NULL, "d", &v, &e);
    CHECK(st == SDXL_OK && v->integer == 12, "reads only len bytes");
    sdxl_json_free(v);
    CHECK(sdxl_json_parse(NULL, 0, NULL, "d", &v, &e) == SDXL_ERR_FORMAT, "empty input");
    CHECK(sdxl_json_parse("1", 1, NULL, "d", NULL, &e) == SDXL_ERR_ARG, "NULL out");
}

static void test_file(void) {
    char path[64];
    snprintf(path, sizeof path, "test_io_json_%d.json", (int)getpid());
    FILE *fp = fopen(path, "w");
    CHECK(fp != NULL, "create temp");
    if (!fp) return;
    fputs("{\"a\": [1, 2, 3], \"b\": \"x\"}\n", fp);
    fclose(fp);
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    CHECK(sdxl_json_parse_file(path, 1000, NULL, &v, &e) == SDXL_OK && sdxl_json_get(v, "a")->len == 3, "parse_file");
    sdxl_json_free(v);
    int st = sdxl_json_parse_file(path, 10, NULL, &v, &e);
    CHECK(st == SDXL_ERR_LIMIT && strstr(e.msg, path), "file over max_bytes: %s", e.msg);
    unlink(path);
    st = sdxl_json_parse_file(path, 10, NULL, &v, &e);
    CHECK(st == SDXL_ERR_IO && strstr(e.msg, path), "missing file: %s", e.msg);
    st = sdxl_json_parse_file(".", 10, NULL, &v, &e);
    CHECK(st == SDXL_ERR_IO, "directory rejected");
    st = sdxl_json_parse_file(SDXL_TEST_DATA "/golden/models/tiny-sdxl-base/unet/config.json", 1 << 20, NULL, &v, &e);
    CHECK(st == SDXL_OK && sdxl_json_get(v, "block_out_channels"), "real config.json: %s", e.msg);
    sdxl_json_free(v);
}

static void test_escape(void) {
    const char src[] = "q\"b\\n\n\t\x01\xc3\xa9\xff\xf0\x9f\x98\x80";
    size_t len = sizeof src - 1;
    size_t need = sdxl_json_escape(NULL, 0, src, len);
    char *buf = malloc(need + 1);
    CHECK(sdxl_json_escape(buf, need + 1, src, len) == need && strlen(buf) == need, "escape size contract");
    CHECK(!strcmp(buf, "\"q\\\"b\\\\n\\n\\t\\u0001\xc3\xa9\\ufffd\xf0\x9f\x98\x80\""), "escape text: %s", buf);
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    CHECK(sdxl_json_parse(buf, need, NULL, "esc", &v, &e) == SDXL_OK, "escaped output parses");
    CHECK(v && v->len == len + 2 && !memcmp(v->str, "q\"b\\n\n\t\x01\xc3\xa9\xef\xbf\xbd\xf0\x9f\x98\x80", v->len),
          "round trip (invalid byte becomes U+FFFD)");
    sdxl_json_free(v);
    char small[5];
    CHECK(sdxl_json_escape(small, sizeof small, "abcdef", 6) == 8 && !strcmp(small, "\"abc"), "truncation NUL-terminates");
    free(buf);
}

static void test_speed(void) {
    /* ~24 MiB header-like document: must parse in well under a few seconds */
    size_t cap = (size_t)26 << 20, n = 0;
    char *s = malloc(cap);
    n += (size_t)sprintf(s + n, "{");
    for (int i = 0; n < cap - 200; i++)
        n += (size_t)sprintf(s + n, "%s\"model.diffusion_model.block.%d.weight\":{\"dtype\":\"F16\",\"shape\":[1280,640,3,3],"
                                    "\"data_offsets\":[%d,%d]}",
                             i ? "," : "", i, i * 100, i * 100 + 100);
    n += (size_t)sprintf(s + n, "}");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    int st = sdxl_json_parse(s, n, NULL, "speed", &v, &e);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double sec = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    CHECK(st == SDXL_OK, "large document parses: %s", e.msg);
    printf("parsed %.1f MiB with %zu keys in %.3f s (%.0f MiB/s)\n", (double)n / 1048576.0, v ? v->len : 0, sec,
           (double)n / 1048576.0 / sec);
    sdxl_json_free(v);
    free(s);
}

static void test_nonfinite(void) {
    const char *doc = "[NaN, Infinity, -Infinity, -1]";
    CHECK(!parses(doc, strlen(doc)), "strict mode rejects NaN/Infinity");
    sdxl_json_opts o;
    sdxl_json_opts_init(&o);
    o.allow_nonfinite = 1;
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    CHECK(sdxl_json_parse(doc, strlen(doc), &o, "t", &v, &e) == SDXL_OK, "allow_nonfinite: %s", e.msg);
    if (v) {
        CHECK(isnan(sdxl_json_at(v, 0)->number), "NaN");
        CHECK(sdxl_json_at(v, 1)->number == INFINITY && sdxl_json_at(v, 2)->number == -INFINITY, "infinities");
        CHECK(sdxl_json_at(v, 3)->is_int && sdxl_json_at(v, 3)->integer == -1, "plain -1 still an integer");
    }
    sdxl_json_free(v);
    const char *bad = "[Inf]";
    v = NULL;
    CHECK(sdxl_json_parse(bad, strlen(bad), &o, "t", &v, &e) != SDXL_OK, "Inf is not a Python literal");
    sdxl_json_free(v);
}

int main(void) {
    test_nonfinite();
    test_corpus();
    test_values();
    test_errors();
    test_file();
    test_escape();
    test_speed();
    return check_done();
}
