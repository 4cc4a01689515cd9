/* libFuzzer target: arbitrary bytes through the A1111 infotext parser; what parses must format,
 * format must parse again, and the JSON form must read back into the same named fields. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/genmeta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same_num(double a, double b) { return (isnan(a) && isnan(b)) || a == b; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdxl_genmeta m, back, fj;
    sdxl_genmeta_init(&m);
    sdxl_genmeta_init(&back);
    sdxl_genmeta_init(&fj);
    sdxl_err e = {0};
    if (sdxl_genmeta_parse((const char *)data, size, &m, &e) != SDXL_OK) return 0;
    char *txt = NULL, *js = NULL;
    if (sdxl_genmeta_format(&m, &txt, &e) != SDXL_OK) abort();
    if (sdxl_genmeta_parse(txt, strlen(txt), &back, &e) != SDXL_OK) abort();
    if (sdxl_genmeta_to_json(&m, &js, &e) != SDXL_OK) abort();
    sdxl_json *j = NULL;
    if (sdxl_json_parse(js, strlen(js), NULL, "fuzz genmeta json", &j, &e) != SDXL_OK) abort();
    if (sdxl_genmeta_from_json(j, &fj, &e) != SDXL_OK) abort();
    if (fj.steps != m.steps || fj.seed != m.seed || fj.width != m.width || fj.height != m.height ||
        fj.clip_skip != m.clip_skip || !same_num(fj.cfg_scale, m.cfg_scale) ||
        !same_num(fj.denoising_strength, m.denoising_strength) || !same_num(fj.refiner_switch, m.refiner_switch) ||
        fj.n_extra != m.n_extra)
        abort();
    sdxl_json_free(j);
    free(js);
    free(txt);
    sdxl_genmeta_free(&m);
    sdxl_genmeta_free(&back);
    sdxl_genmeta_free(&fj);
    return 0;
}
