/* libFuzzer target: arbitrary bytes through the strict JSON parser (both duplicate-key modes),
 * then getters and escape on what parsed; escaped strings must parse back to themselves. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const sdxl_json *v, int depth) {
    if (v->type == SDXL_JSON_STRING) {
        size_t need = sdxl_json_escape(NULL, 0, v->str, v->len);
        char *buf = malloc(need + 1);
        if (!buf) return;
        sdxl_json_escape(buf, need + 1, v->str, v->len);
        sdxl_json *back = NULL;
        if (sdxl_json_parse(buf, need, NULL, "escape", &back, NULL) != SDXL_OK) abort();
        if (back->len != v->len || memcmp(back->str, v->str, v->len)) abort(); /* parsed strings are valid UTF-8 */
        sdxl_json_free(back);
        free(buf);
    }
    if (v->type == SDXL_JSON_OBJECT)
        for (size_t i = 0; i < v->len; i++) {
            if (strlen(v->keys[i]) == v->key_lens[i] && !sdxl_json_get(v, v->keys[i])) abort(); /* NUL-free keys */
            walk(&v->items[i], depth + 1);
        }
    if (v->type == SDXL_JSON_ARRAY)
        for (size_t i = 0; i < v->len; i++) walk(sdxl_json_at(v, i), depth + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdxl_json_opts o;
    sdxl_json_opts_init(&o);
    for (int dup = 0; dup < 2; dup++) {
        o.reject_dup_keys = dup;
        sdxl_json *v = NULL;
        sdxl_err e = {0};
        if (sdxl_json_parse((const char *)data, size, &o, "fuzz", &v, &e) == SDXL_OK) {
            walk(v, 0);
            sdxl_json_free(v);
        }
    }
    return 0;
}
