/* libFuzzer target: arbitrary bytes through the safetensors gate and the LoRA module grouping
 * and factor checks, then the info and hash accessors a loader or `sdxl info` would use. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "adapters/lora.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdxl_lora_file *f = NULL;
    sdxl_err e = {0};
    if (sdxl_lora_open_memory(data, size, "fuzz.safetensors", &f, &e) != SDXL_OK) return 0;
    sdxl_lora_info i;
    sdxl_lora_get_info(f, &i);
    if (i.n_modules <= 0 || i.n_modules != i.per_net[0] + i.per_net[1] + i.per_net[2] + i.n_other) abort();
    sdxl_lora_close(f);
    return 0;
}
