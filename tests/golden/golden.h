/* sdxl-golden: checks components against reference outputs. One file per component
 * (golden_<name>.c) defines `int golden_<name>(golden_ctx *g)`; components.def lists them. */
#ifndef SDXL_GOLDEN_H
#define SDXL_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "io/json.h"
#include "io/safetensors.h"

typedef struct golden_ctx {
    const char *golden_dir; /* holds <component>.json + <component>.safetensors */
    const char *models_dir;
    const char *device; /* --device: NULL (cpu), vulkan, vulkan:N */
    int n_pass, n_fail;
} golden_ctx;

/* One component's case file pair. */
typedef struct golden_set {
    sdxl_st_file *st;
    sdxl_json *json;
    const char *component;
} golden_set;

/* Opens <golden_dir>/<component>.{json,safetensors}. On failure reports one FAIL line. */
int golden_open(golden_ctx *g, const char *component, golden_set *s);
void golden_close(golden_set *s);

/* Tensor `key` as a malloc'd f32 array (caller frees); NULL (and a FAIL line) if absent.
 * shape/ndim may be NULL. */
float *golden_f32(golden_ctx *g, golden_set *s, const char *key, int *ndim, int64_t *shape, size_t *numel);
/* Tensor `key` if present, else NULL without reporting. */
const sdxl_st_tensor *golden_find(golden_set *s, const char *key);

/* Prints "PASS|FAIL component/case metric=value threshold=value" and counts it. pass = value <= threshold. */
int golden_check(golden_ctx *g, const char *component, const char *case_name, const char *metric, double value,
                 double threshold);
/* Records a failure that is not a metric (missing tensor, load error). */
void golden_fail(golden_ctx *g, const char *component, const char *case_name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

double golden_max_abs(const float *a, const float *b, size_t n);
double golden_max_rel(const float *a, const float *b, size_t n, double floor); /* |a-b| / max(|b|, floor) */
double golden_nmse(const float *a, const float *b, size_t n);                  /* sum (a-b)^2 / sum b^2 */
/* Path join into a static-sized buffer. */
void golden_path(char *buf, size_t cap, const char *dir, const char *name);

#endif
