/* libFuzzer target: arbitrary bytes through the safetensors gate, then through every accessor
 * a loader would use on a file that passed. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdxl_st_file *f = NULL;
    sdxl_err e = {0};
    if (sdxl_st_open_memory(data, size, "fuzz.safetensors", &f, &e) != SDXL_OK) return 0;
    float buf[256];
    for (size_t i = 0; i < sdxl_st_count(f); i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        if (sdxl_st_find(f, t->name) != t) abort();
        if (t->numel <= 256) sdxl_st_to_f32(f, t, buf, &e);
    }
    for (size_t i = 0; i < sdxl_st_meta_count(f); i++) {
        const char *k, *v;
        sdxl_st_meta_at(f, i, &k, &v);
        if (sdxl_st_meta_get(f, k) == NULL) abort();
    }
    sdxl_st_close(f);
    return 0;
}
