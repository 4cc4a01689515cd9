/* Generation metadata: the A1111 "parameters" text that SDXL tools write into images, and the
 * same fields as JSON. The parser reads any A1111/Forge/ComfyUI-exported infotext and keeps keys
 * it does not know in `extra`, so parse -> format -> parse loses nothing. */
#ifndef SDXL_IO_GENMETA_H
#define SDXL_IO_GENMETA_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "io/json.h"

#define SDXL_GENMETA_MAX_TEXT ((size_t)4 << 20) /* longest infotext parse accepts, in bytes */

typedef struct sdxl_genmeta_kv {
    char *key;   /* A1111 key as written, e.g. "Hires upscale" */
    char *value; /* unquoted value */
} sdxl_genmeta_kv;

/* Every pointer is owned (malloc'd UTF-8) or NULL; NULL / the listed sentinel means "absent". */
typedef struct sdxl_genmeta {
    char *prompt;               /* text before "Negative prompt:" */
    char *negative_prompt;
    int steps;                  /* "Steps"; <= 0 absent */
    char *sampler;              /* "Sampler", A1111 display name, e.g. "DPM++ 2M" */
    char *schedule;             /* "Schedule type", e.g. "Karras" */
    double cfg_scale;           /* "CFG scale"; NaN absent */
    int64_t seed;               /* "Seed"; < 0 absent */
    int width, height;          /* "Size: WxH"; <= 0 absent */
    char *model_hash;           /* "Model hash", A1111 short hash (10 hex digits of the sha256) */
    char *model;                /* "Model", file stem */
    double denoising_strength;  /* "Denoising strength" (img2img); NaN absent */
    int clip_skip;              /* "Clip skip", A1111 numbering (2 = penultimate layer); <= 0 absent */
    char *refiner;              /* "Refiner", e.g. "sd_xl_refiner_1.0 [7440042bbd]" */
    double refiner_switch;      /* "Refiner switch at", fraction of steps; NaN absent */
    sdxl_genmeta_kv *extra;     /* other keys in order of appearance (unique keys); a named key lands
                                   here only when parse met a value its type rejects ("Steps: abc") */
    size_t n_extra;
} sdxl_genmeta;

/* Sets every field to absent. */
void sdxl_genmeta_init(sdxl_genmeta *m);
/* Frees the strings and leaves m as after init. */
void sdxl_genmeta_free(sdxl_genmeta *m);
/* Deep copy into an uninitialised dst. */
int sdxl_genmeta_copy(sdxl_genmeta *dst, const sdxl_genmeta *src, sdxl_err *e);

/* Replaces *field (one of m's char* fields) with a copy of s (NULL clears). */
int sdxl_genmeta_set_str(char **field, const char *s, sdxl_err *e);
/* Adds or replaces an extra key. Keys must be A1111 keys: a letter/digit/_ then letters, digits,
 * _, space, '-' or '/' (at least 2 bytes) and must not be one of the named fields' keys. */
int sdxl_genmeta_extra_set(sdxl_genmeta *m, const char *key, const char *value, sdxl_err *e);
/* Value of an extra key, or NULL. */
const char *sdxl_genmeta_extra_get(const sdxl_genmeta *m, const char *key);

/* Writes the A1111 infotext (malloc'd, NUL-terminated):
 *   prompt\nNegative prompt: neg\nSteps: 30, Sampler: DPM++ 2M, ..., <extra keys>
 * Values holding ',', ':', a newline, a leading quote or surrounding spaces are JSON-quoted as
 * A1111 does. Fails (SDXL_ERR_ARG) on an extra key the parser could not read back. */
int sdxl_genmeta_format(const sdxl_genmeta *m, char **out, sdxl_err *e);

/* Parses an A1111 infotext with A1111's rules: the last line is the parameter line when it has
 * at least 3 "Key: value" pairs; lines of the prompts are trimmed; quoted values are JSON
 * strings. A known key whose value does not parse (e.g. "Steps: abc") goes to extra unchanged.
 * out must be initialised; it is overwritten. Malformed UTF-8 becomes U+FFFD. */
int sdxl_genmeta_parse(const char *text, size_t len, sdxl_genmeta *out, sdxl_err *e);

/* JSON object with snake_case keys (prompt, negative_prompt, steps, sampler, schedule, cfg_scale,
 * seed, width, height, model, model_hash, denoising_strength, clip_skip, refiner, refiner_switch,
 * extra{}); absent fields are omitted. malloc'd. */
int sdxl_genmeta_to_json(const sdxl_genmeta *m, char **out, sdxl_err *e);
/* Reads the object written by sdxl_genmeta_to_json; unknown keys are ignored, a wrong type is an
 * error naming the key. out must be initialised; it is overwritten. */
int sdxl_genmeta_from_json(const sdxl_json *obj, sdxl_genmeta *out, sdxl_err *e);

#endif
