/* safetensors gate: every rejection rule with a crafted file (each message must name the file,
 * the tensor and the rule), the writer's round trip, dtype conversion, and sparse files carrying
 * the complete real SDXL base and refiner key tables. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "io/safetensors.h"

/* [u64 len][header][data bytes] in a static buffer; returns the total length. */
static unsigned char img[1 << 16];
static size_t craft(const char *header, size_t data_len) {
    size_t hl = strlen(header);
    for (int i = 0; i < 8; i++) img[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(img + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) img[8 + hl + i] = (unsigned char)(i * 7 + 1);
    return 8 + hl + data_len;
}

/* Expects rejection with every fragment present in the message. */
static void reject(const char *header, size_t data_len, const char *frag1, const char *frag2, const char *why) {
    size_t n = craft(header, data_len);
    sdxl_st_file *f = (sdxl_st_file *)1;
    sdxl_err e = {0};
    int st = sdxl_st_open_memory(img, n, "model.safetensors", &f, &e);
    CHECK(st != SDXL_OK && f == NULL, "%s: rejected", why);
    CHECK(strstr(e.msg, "model.safetensors") && (!frag1 || strstr(e.msg, frag1)) && (!frag2 || strstr(e.msg, frag2)),
          "%s: message has [%s] [%s]: %s", why, frag1 ? frag1 : "", frag2 ? frag2 : "", e.msg);
}

static sdxl_st_file *accept(const char *header, size_t data_len, const char *why) {
    size_t n = craft(header, data_len);
    sdxl_st_file *f = NULL;
    sdxl_err e = {0};
    int st = sdxl_st_open_memory(img, n, "ok.safetensors", &f, &e);
    CHECK(st == SDXL_OK && f, "%s: accepted (%s)", why, e.msg);
    return f;
}

#define T(name, body) "\"" name "\":{" body "}"

static void test_rules(void) {
    sdxl_err e = {0};
    sdxl_st_file *f = NULL;
    CHECK(sdxl_st_open_memory("abc", 3, "model.safetensors", &f, &e) == SDXL_ERR_FORMAT && strstr(e.msg, "too short"),
          "short file: %s", e.msg);
    unsigned char big[16] = {0, 0, 0, 0x7f, 0, 0, 0, 0, '{', '}'};
    CHECK(sdxl_st_open_memory(big, 16, "model.safetensors", &f, &e) == SDXL_ERR_FORMAT && strstr(e.msg, "exceeds the limit"),
          "huge header length: %s", e.msg);
    unsigned char lie[12] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    CHECK(sdxl_st_open_memory(lie, 12, "model.safetensors", &f, &e) == SDXL_ERR_FORMAT && strstr(e.msg, "runs past the end"),
          "header length past EOF: %s", e.msg);
    unsigned char allff[16];
    memset(allff, 0xff, sizeof allff);
    CHECK(sdxl_st_open_memory(allff, 16, "model.safetensors", &f, &e) == SDXL_ERR_FORMAT, "0xff.. length");

    reject("", 0, "starting with '{'", NULL, "empty header");
    reject(" {}", 0, "starting with '{'", NULL, "leading space");
    reject("[]", 0, "starting with '{'", NULL, "array header");
    reject("{\"a\xff\":1}", 0, "UTF-8", "header", "invalid UTF-8 key");
    reject("{\"a\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,2]},\"a\":{}}", 2, "duplicate key \"a\"", NULL,
           "duplicate tensor");
    {
        unsigned char nul[12] = {4, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', 0};
        CHECK(sdxl_st_open_memory(nul, 12, "model.safetensors", &f, &e) == SDXL_ERR_FORMAT &&
                  strstr(e.msg, "after the JSON value"),
              "NUL padding rejected: %s", e.msg);
    }
    reject("{\"w\":[1]}", 0, "tensor \"w\"", "must be an object", "entry not object");
    reject("{" T("w", "\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,2],\"extra\":1") "}", 2, "tensor \"w\"",
           "unexpected field \"extra\"", "extra field");
    reject("{" T("w", "\"shape\":[],\"data_offsets\":[0,2]") "}", 2, "tensor \"w\"", "missing field \"dtype\"", "no dtype");
    reject("{" T("w", "\"dtype\":\"F16\",\"data_offsets\":[0,2]") "}", 2, "tensor \"w\"", "missing field \"shape\"", "no shape");
    reject("{" T("w", "\"dtype\":\"F16\",\"shape\":[]") "}", 2, "tensor \"w\"", "missing field \"data_offsets\"", "no offsets");
    reject("{" T("w", "\"dtype\":16,\"shape\":[],\"data_offsets\":[0,2]") "}", 2, "tensor \"w\"", "dtype must be a string",
           "dtype type");
    reject("{" T("w", "\"dtype\":\"F8_E3M4\",\"shape\":[],\"data_offsets\":[0,1]") "}", 1, "tensor \"w\"",
           "unknown dtype \"F8_E3M4\"", "unknown dtype");
    reject("{" T("w", "\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[0,6]") "}", 6, "tensor \"w\"",
           "shape [3] x F8_E4M3 = 3 bytes but data_offsets span 6", "fp8 size rule");
    reject("{" T("w", "\"dtype\":\"F8_E5M2\",\"shape\":[4],\"data_offsets\":[0,4]") "}", 3, "tensor \"w\"",
           "run past the end", "fp8 offset rule");
    reject("{" T("w", "\"dtype\":\"f16\",\"shape\":[],\"data_offsets\":[0,2]") "}", 2, "tensor \"w\"", "unknown dtype",
           "dtype is case-sensitive");
    reject("{" T("w", "\"dtype\":\"F16\",\"shape\":3,\"data_offsets\":[0,6]") "}", 6, "tensor \"w\"", "shape must be an array",
           "shape type");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]") "}", 1, "tensor \"w\"",
           "9 dimensions", "ndim > 8");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[2,-1],\"data_offsets\":[0,1]") "}", 1, "tensor \"w\"",
           "shape[1] must be a non-negative integer", "negative dim");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]") "}", 1, "tensor \"w\"", "shape[0]",
           "fractional dim");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[[1]],\"data_offsets\":[0,1]") "}", 1, "tensor \"w\"", "shape[0]",
           "nested dim");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]") "}", 1, "tensor \"w\"", "data_offsets must be",
           "one offset");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]") "}", 1, "tensor \"w\"",
           "data_offsets must be", "three offsets");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]") "}", 1, "tensor \"w\"", "data_offsets must be",
           "negative offset");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,1]") "}", 2, "tensor \"w\"", "begin after end",
           "begin > end");
    reject("{" T("unet.x.weight", "\"dtype\":\"F16\",\"shape\":[3,4],\"data_offsets\":[0,20]") "}", 20,
           "tensor \"unet.x.weight\": shape [3,4] x F16 = 24 bytes but data_offsets span 20", NULL, "size mismatch");
    reject("{" T("w", "\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,0]") "}", 0, "tensor \"w\"",
           "more elements than 2^64", "numel overflow");
    reject("{" T("w", "\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]") "}", 0, "tensor \"w\"",
           "more than 2^64 bytes", "bytes overflow");
    reject("{" T("w", "\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,0]") "}", 0, "tensor \"w\"",
           "more than 2^64 bytes", "wrap-around to zero caught");
    reject("{" T("w", "\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]") "}", 3, "tensor \"w\"", "run past the end",
           "past data region");
    reject("{" T("a", "\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]") "," T("b", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]") "}",
           5, "tensor \"b\"", "overlap tensor \"a\"", "overlap");
    reject("{" T("a", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]") "," T("b", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]") "}",
           2, "tensor \"b\"", "overlap tensor \"a\"", "same range twice");
    reject("{" T("a", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]") "," T("b", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]") "}",
           5, "tensor \"b\"", "gap of 1 bytes", "gap");
    reject("{" T("b", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]") "}", 3, "tensor \"b\"", "gap of 1 bytes",
           "gap at start");
    reject("{" T("a", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]") "}", 3, "data region has 3 bytes",
           "cover 2", "trailing bytes");
    reject("{\"__metadata__\":[\"a\"]}", 0, "__metadata__", "must be an object", "metadata not object");
    reject("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ key \"k\"", "must be a string", "metadata value type");
    reject("{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "__metadata__ key \"k\"", "must be a string", "nested metadata");
    reject("{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, "__metadata__ key \"k\"", "NUL", "NUL in metadata");
    reject("{" T("", "\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]") "}", 0, "tensor \"\"", "empty name", "empty name");
    reject("{" T("a\\u0000b", "\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]") "}", 0, "tensor \"a\\x00b\"",
           "NUL byte", "NUL in name");
    {
        static char h[4096];
        char name[1100];
        memset(name, 'n', 1025);
        name[1025] = 0;
        snprintf(h, sizeof h, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", name);
        reject(h, 0, "name of 1025 bytes exceeds the limit of 1024", "...", "long name");
        name[1024] = 0;
        snprintf(h, sizeof h, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", name);
        sdxl_st_close(accept(h, 0, "name of exactly 1024 bytes"));
    }
    reject("{" T("bad\nname", "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,2]") "}", 2, "header", "control character",
           "raw newline in key is invalid JSON");
    reject("{" T("x\\n\\\"y", "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,2]") "}", 2, "tensor \"x\\x0a\\x22y\"",
           "= 1 bytes", "escaped name is quoted safely");

    /* accepted edge cases */
    sdxl_st_close(accept("{}", 0, "no tensors"));
    sdxl_st_close(accept("{}      ", 0, "trailing spaces"));
    sdxl_st_close(accept("{\"__metadata__\":{}}", 0, "empty metadata"));
    f = accept("{" T("z", "\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]") "," T("s", "\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]") "}",
               8, "zero-size tensor and scalar");
    if (f) {
        CHECK(sdxl_st_count(f) == 2 && !strcmp(sdxl_st_at(f, 0)->name, "z") && sdxl_st_at(f, 1)->numel == 1,
              "offset order, scalar numel 1");
        CHECK(sdxl_st_find(f, "s") == sdxl_st_at(f, 1) && !sdxl_st_find(f, "q"), "hash lookup");
        sdxl_st_close(f);
    }
    f = accept("{" T("b", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]") "," T("a", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]") "}",
               4, "entries in any header order");
    if (f) {
        CHECK(!strcmp(sdxl_st_at(f, 0)->name, "a") && sdxl_st_at(f, 1)->offset == 2, "sorted by offset");
        sdxl_st_close(f);
    }
}

static void test_writer(void) {
    char path[64];
    snprintf(path, sizeof path, "test_io_st_%d.safetensors", (int)getpid());
    sdxl_st_writer *w;
    sdxl_err e = {0};
    CHECK(sdxl_st_writer_new(&w, &e) == SDXL_OK, "writer new");
    float f32[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    double f64[3] = {1e300, -0.25, 3};
    uint16_t f16[4] = {0x3c00, 0xc000, 0x3800, 0x0000};  /* 1, -2, 0.5, 0 */
    uint16_t bf16[3] = {0x3f80, 0xc040, 0x0000};          /* 1, -3, 0 */
    int64_t i64[2] = {-5, 1LL << 40};
    int32_t i32[2] = {7, -8};
    int16_t i16[2] = {300, -300};
    int8_t i8[3] = {-128, 0, 127};
    uint8_t u8[1] = {255}, bl[3] = {0, 1, 2};
    int64_t s6[2] = {2, 3}, s3[1] = {3}, s4[2] = {2, 2}, s2[1] = {2}, s1[1] = {1};
    CHECK(sdxl_st_writer_add(w, "u8", SDXL_ST_U8, 1, s1, u8, &e) == SDXL_OK, "add u8 first (misaligns what follows)");
    sdxl_st_writer_add(w, "f16", SDXL_ST_F16, 2, s4, f16, &e);
    sdxl_st_writer_add(w, "f32", SDXL_ST_F32, 2, s6, f32, &e);
    sdxl_st_writer_add(w, "f64", SDXL_ST_F64, 1, s3, f64, &e);
    sdxl_st_writer_add(w, "bf16", SDXL_ST_BF16, 1, s3, bf16, &e);
    sdxl_st_writer_add(w, "i64", SDXL_ST_I64, 1, s2, i64, &e);
    sdxl_st_writer_add(w, "i32", SDXL_ST_I32, 1, s2, i32, &e);
    sdxl_st_writer_add(w, "i16", SDXL_ST_I16, 1, s2, i16, &e);
    sdxl_st_writer_add(w, "i8", SDXL_ST_I8, 1, s3, i8, &e);
    sdxl_st_writer_add(w, "bool", SDXL_ST_BOOL, 1, s3, bl, &e);
    sdxl_st_writer_add(w, "scalar", SDXL_ST_F32, 0, NULL, f32, &e);
    sdxl_st_writer_add(w, "name \"with\" \\ quotes\n", SDXL_ST_U8, 1, s1, u8, &e);
    sdxl_st_writer_meta(w, "format", "pt", &e);
    sdxl_st_writer_meta(w, "note", "caf\xc3\xa9 \"q\"", &e);
    CHECK(sdxl_st_writer_add(w, "", SDXL_ST_U8, 1, s1, u8, &e) == SDXL_ERR_ARG, "writer rejects empty name");
    int64_t neg[1] = {-1};
    CHECK(sdxl_st_writer_add(w, "n", SDXL_ST_U8, 1, neg, u8, &e) == SDXL_ERR_ARG, "writer rejects negative dim");
    CHECK(sdxl_st_writer_finish(w, path, &e) == SDXL_OK, "finish: %s", e.msg);
    sdxl_st_writer_free(w);

    sdxl_st_file *f = NULL;
    CHECK(sdxl_st_open(path, &f, &e) == SDXL_OK, "reopen: %s", e.msg);
    if (f) {
        CHECK(sdxl_st_count(f) == 12 && sdxl_st_meta_count(f) == 2, "counts");
        CHECK(!strcmp(sdxl_st_meta_get(f, "note"), "caf\xc3\xa9 \"q\""), "metadata round trip");
        CHECK(sdxl_st_find(f, "name \"with\" \\ quotes\n") != NULL, "escaped name round trip");
        const unsigned char *base = sdxl_st_at(f, 0)->data;
        CHECK(((uintptr_t)base & 7) == 0, "data region 8-byte aligned (header padded)");
        float out[8];
        const sdxl_st_tensor *t = sdxl_st_find(f, "f16");
        CHECK(((uintptr_t)t->data & 1) == 1, "f16 tensor sits at an odd address");
        sdxl_st_to_f32(f, t, out, &e);
        CHECK(out[0] == 1 && out[1] == -2 && out[2] == 0.5f && out[3] == 0, "f16 (unaligned) to f32");
        sdxl_st_to_f32(f, sdxl_st_find(f, "bf16"), out, &e);
        CHECK(out[0] == 1 && out[1] == -3 && out[2] == 0, "bf16 to f32");
        sdxl_st_to_f32(f, sdxl_st_find(f, "f32"), out, &e);
        CHECK(!memcmp(out, f32, sizeof f32), "f32 exact");
        t = sdxl_st_find(f, "f32");
        CHECK(t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->nbytes == 24, "shape kept");
        sdxl_st_to_f32(f, sdxl_st_find(f, "f64"), out, &e);
        CHECK(isinf(out[0]) && out[0] > 0 && out[1] == -0.25f && out[2] == 3, "f64 saturates to inf");
        sdxl_st_to_f32(f, sdxl_st_find(f, "i64"), out, &e);
        CHECK(out[0] == -5 && out[1] == 1099511627776.0f, "i64");
        sdxl_st_to_f32(f, sdxl_st_find(f, "i32"), out, &e);
        CHECK(out[0] == 7 && out[1] == -8, "i32");
        sdxl_st_to_f32(f, sdxl_st_find(f, "i16"), out, &e);
        CHECK(out[0] == 300 && out[1] == -300, "i16");
        sdxl_st_to_f32(f, sdxl_st_find(f, "i8"), out, &e);
        CHECK(out[0] == -128 && out[1] == 0 && out[2] == 127, "i8");
        sdxl_st_to_f32(f, sdxl_st_find(f, "u8"), out, &e);
        CHECK(out[0] == 255, "u8");
        sdxl_st_to_f32(f, sdxl_st_find(f, "bool"), out, &e);
        CHECK(out[0] == 0 && out[1] == 1 && out[2] == 1, "bool");
        sdxl_st_to_f32(f, sdxl_st_find(f, "scalar"), out, &e);
        CHECK(out[0] == 1, "scalar");
        sdxl_st_close(f);
    }
    /* header bytes: padded with spaces, length multiple of 8 */
    FILE *fp = fopen(path, "rb");
    unsigned char l8[8];
    CHECK(fp && fread(l8, 1, 8, fp) == 8, "read back");
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | l8[i];
    char *h = malloc(hl + 1);
    CHECK(fread(h, 1, hl, fp) == hl && (8 + hl) % 8 == 0 && h[0] == '{', "header length aligned");
    fclose(fp);
    size_t end = hl;
    while (end && h[end - 1] == ' ') end--;
    CHECK(end && h[end - 1] == '}' && hl - end < 8, "padding is spaces after '}'");
    free(h);
    unlink(path);

    /* duplicate names are refused by the writer */
    sdxl_st_writer_new(&w, &e);
    sdxl_st_writer_add(w, "a", SDXL_ST_U8, 1, s1, u8, &e);
    sdxl_st_writer_add(w, "a", SDXL_ST_U8, 1, s1, u8, &e);
    CHECK(sdxl_st_writer_finish(w, path, &e) == SDXL_ERR_ARG && strstr(e.msg, "added twice"), "dup refused: %s", e.msg);
    sdxl_st_writer_free(w);
    CHECK(access(path, F_OK) != 0, "no file left behind");

    CHECK(sdxl_st_open("/nonexistent/x.safetensors", &f, &e) == SDXL_ERR_IO && strstr(e.msg, "/nonexistent/x.safetensors"),
          "missing file named: %s", e.msg);
    CHECK(sdxl_st_open(".", &f, &e) == SDXL_ERR_IO && strstr(e.msg, "not a regular file"), "directory: %s", e.msg);
}

/* Writes a sparse file with every name/dtype/shape of a real key table, reopens and checks it. */
static void sparse_table(const char *tsv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/golden/keys/%s", SDXL_TEST_DATA, tsv);
    FILE *fp = fopen(path, "r");
    CHECK(fp != NULL, "open %s", path);
    if (!fp) return;
    sdxl_st_writer *w;
    sdxl_err e = {0};
    sdxl_st_writer_new(&w, &e);
    char line[4096];
    size_t rows = 0;
    uint64_t bytes = 0;
    int bad = 0;
    if (!fgets(line, sizeof line, fp)) bad = 1; /* column names */
    while (fgets(line, sizeof line, fp)) {
        char *name = strtok(line, "\t"), *dt = strtok(NULL, "\t"), *sh = strtok(NULL, "\t\n");
        if (!name || !dt || !sh) {
            bad = 1;
            continue;
        }
        sdxl_st_dtype d = !strcmp(dt, "F16") ? SDXL_ST_F16 : !strcmp(dt, "I64") ? SDXL_ST_I64 : !strcmp(dt, "F32") ? SDXL_ST_F32 : SDXL_ST_BF16;
        int64_t shape[8];
        int nd = 0;
        for (char *p = sh + 1; *p && *p != ']' && nd < 8;) {
            shape[nd++] = strtoll(p, &p, 10);
            if (*p == ',') p++;
        }
        uint64_t nb = sdxl_st_dtype_size(d);
        for (int i = 0; i < nd; i++) nb *= (uint64_t)shape[i];
        bytes += nb;
        if (sdxl_st_writer_add(w, name, d, nd, shape, NULL, &e) != SDXL_OK) bad = 1;
        rows++;
    }
    fclose(fp);
    CHECK(!bad && rows > 1000, "%s: %zu rows parsed", tsv, rows);
    char out[128];
    snprintf(out, sizeof out, "test_io_sparse_%d.safetensors", (int)getpid());
    CHECK(sdxl_st_writer_finish(w, out, &e) == SDXL_OK, "sparse write: %s", e.msg);
    sdxl_st_writer_free(w);
    struct stat sb;
    CHECK(stat(out, &sb) == 0, "stat");
    printf("%s: %zu tensors, %.2f GB logical, %lld KiB on disk\n", tsv, rows, (double)sb.st_size / 1e9,
           (long long)sb.st_blocks / 2);
    CHECK((uint64_t)sb.st_size > bytes && (uint64_t)sb.st_blocks * 512 < ((uint64_t)4 << 20),
          "sparse: %lld bytes logical, %lld allocated", (long long)sb.st_size, (long long)sb.st_blocks * 512);
    sdxl_st_file *f = NULL;
    CHECK(sdxl_st_open(out, &f, &e) == SDXL_OK, "real key table validates: %s", e.msg);
    if (f) {
        CHECK(sdxl_st_count(f) == rows, "all %zu tensors present", rows);
        uint64_t sum = 0;
        for (size_t i = 0; i < sdxl_st_count(f); i++) sum += sdxl_st_at(f, i)->nbytes;
        CHECK(sum == bytes, "data region covers the table");
        CHECK(sdxl_st_find(f, "model.diffusion_model.time_embed.0.weight") != NULL, "lookup of a real name");
        sdxl_st_close(f);
    }
    unlink(out);
}

static void test_real_files(void) {
    const char *dirs[] = {"golden/models", "golden/models/tiny-sdxl-base/unet", "golden/models/tiny-sdxl-base/vae",
                          "golden/models/tiny-sdxl-base/text_encoder", "golden/models/tiny-sdxl-base/text_encoder_2",
                          "golden/models/tiny-sdxl-controlnet", "golden/cases"};
    int n = 0;
    for (size_t d = 0; d < sizeof dirs / sizeof *dirs; d++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", SDXL_TEST_DATA, dirs[d]);
        DIR *dp = opendir(dir);
        CHECK(dp != NULL, "opendir %s", dir);
        if (!dp) continue;
        struct dirent *de;
        while ((de = readdir(dp))) {
            size_t l = strlen(de->d_name);
            if (l < 12 || strcmp(de->d_name + l - 12, ".safetensors")) continue;
            char p[8192];
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            sdxl_st_file *f = NULL;
            sdxl_err e = {0};
            CHECK(sdxl_st_open(p, &f, &e) == SDXL_OK && sdxl_st_count(f) > 0, "real file %s: %s", de->d_name, e.msg);
            for (size_t i = 0; f && i < sdxl_st_count(f); i++)
                if (sdxl_st_find(f, sdxl_st_at(f, i)->name) != sdxl_st_at(f, i)) {
                    CHECK(0, "%s: find(%s)", de->d_name, sdxl_st_at(f, i)->name);
                    break;
                }
            sdxl_st_close(f);
            n++;
        }
        closedir(dp);
    }
    CHECK(n >= 15, "%d real files validated", n);
    sdxl_st_file *f = NULL;
    sdxl_err e = {0};
    sdxl_st_open(SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors", &f, &e);
    if (f) {
        CHECK(sdxl_st_meta_get(f, "format") && !strcmp(sdxl_st_meta_get(f, "format"), "pt"), "metadata format=pt");
        const sdxl_st_tensor *t = sdxl_st_find(f, "conditioner.embedders.0.transformer.text_model.embeddings.position_ids");
        CHECK(t && t->dtype == SDXL_ST_I64 && t->shape[1] == 77, "position_ids I64 [1,77]");
        float ids[77];
        if (t) sdxl_st_to_f32(f, t, ids, &e);
        CHECK(t && ids[0] == 0 && ids[76] == 76, "position_ids values");
        sdxl_st_close(f);
    }
}

/* Plain decodes from the format definitions (torch float8_e4m3fn, float8_e5m2). */
static float ref_e4m3(unsigned b) {
    int e = (b >> 3) & 15, m = b & 7;
    float v = e == 15 && m == 7 ? NAN : e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
    return b & 0x80 ? -v : v;
}

static float ref_e5m2(unsigned b) {
    int e = (b >> 2) & 31, m = b & 3;
    float v = e == 31 ? (m ? NAN : INFINITY) : e == 0 ? ldexpf((float)m, -16) : ldexpf((float)(4 + m), e - 17);
    return b & 0x80 ? -v : v;
}

static int same_value(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) && signbit(a) == signbit(b);
    return !memcmp(&a, &b, sizeof a);
}

/* Every fp8 code through the gate, on the vector path and the scalar one, odd address included. */
static void test_fp8(void) {
    const char *path = "test_io_safetensors_fp8.safetensors";
    unsigned char codes[256];
    for (int i = 0; i < 256; i++) codes[i] = (unsigned char)i;
    sdxl_st_writer *w;
    sdxl_err e = {0};
    int64_t s256[2] = {16, 16}, s1[1] = {1};
    sdxl_st_writer_new(&w, &e);
    sdxl_st_writer_add(w, "a_pad", SDXL_ST_U8, 1, s1, codes, &e);
    sdxl_st_writer_add(w, "e4m3", SDXL_ST_F8_E4M3, 2, s256, codes, &e);
    sdxl_st_writer_add(w, "e5m2", SDXL_ST_F8_E5M2, 2, s256, codes, &e);
    CHECK(sdxl_st_writer_finish(w, path, &e) == SDXL_OK, "fp8 write: %s", e.msg);
    sdxl_st_writer_free(w);
    sdxl_st_file *f = NULL;
    CHECK(sdxl_st_open(path, &f, &e) == SDXL_OK, "fp8 reopen: %s", e.msg);
    if (!f) return;
    const sdxl_st_tensor *t4 = sdxl_st_find(f, "e4m3"), *t5 = sdxl_st_find(f, "e5m2");
    CHECK(t4 && t5 && t4->nbytes == 256 && t5->nbytes == 256 && !strcmp(sdxl_st_dtype_name(t4->dtype), "F8_E4M3") &&
              !strcmp(sdxl_st_dtype_name(t5->dtype), "F8_E5M2") && sdxl_st_dtype_size(t4->dtype) == 1,
          "fp8 entries: 1 byte per element");
    for (int scalar = 0; scalar < 2 && t4 && t5; scalar++) {
        if (scalar) setenv("SDXL_NO_AVX512", "1", 1);
        float out[256];
        int bad4 = 0, bad5 = 0;
        sdxl_st_to_f32(f, t4, out, &e);
        for (int i = 0; i < 256; i++) bad4 += !same_value(out[i], ref_e4m3((unsigned)i));
        sdxl_st_to_f32(f, t5, out, &e);
        for (int i = 0; i < 256; i++) bad5 += !same_value(out[i], ref_e5m2((unsigned)i));
        CHECK(bad4 == 0, "F8_E4M3: all 256 codes exact (%s path): %d differ", scalar ? "scalar" : "vector", bad4);
        CHECK(bad5 == 0, "F8_E5M2: all 256 codes exact (%s path): %d differ", scalar ? "scalar" : "vector", bad5);
    }
    unsetenv("SDXL_NO_AVX512");
    sdxl_st_close(f);
    unlink(path);
}

/* A header of millions of tiny values is refused by the value cap, not parsed into gigabytes. */
static void test_value_cap(void) {
    size_t nv = (size_t)SDXL_ST_MAX_VALUES + 16, cap = 2 * nv + 128;
    unsigned char *buf = malloc(8 + cap);
    if (!buf) return;
    size_t k = 8;
    k += (size_t)sprintf((char *)buf + k, "{\"t\":{\"dtype\":\"F32\",\"shape\":[");
    for (size_t i = 0; i < nv; i++) buf[k++] = '1', buf[k++] = ',';
    buf[k - 1] = ']';
    k += (size_t)sprintf((char *)buf + k, ",\"data_offsets\":[0,4]}}");
    size_t hl = k - 8;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    sdxl_st_file *f = NULL;
    sdxl_err e = {0};
    int st = sdxl_st_open_memory(buf, k, "many.safetensors", &f, &e);
    CHECK(st == SDXL_ERR_LIMIT && strstr(e.msg, "many.safetensors") && strstr(e.msg, "values"), "value cap: %s", e.msg);
    sdxl_st_close(f);
    free(buf);
}

int main(void) {
    test_value_cap();
    test_rules();
    test_writer();
    test_fp8();
    test_real_files();
    sparse_table("sdxl_base_keys.tsv");
    sparse_table("sdxl_refiner_keys.tsv");
    return check_done();
}
