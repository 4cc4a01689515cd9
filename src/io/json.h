/* Strict JSON (RFC 8259) parsed into an immutable tree. Input is untrusted: the parser checks
 * UTF-8, nesting depth and sizes, and can reject duplicate object keys. Never aborts. */
#ifndef SDXL_IO_JSON_H
#define SDXL_IO_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef enum sdxl_json_type {
    SDXL_JSON_NULL,
    SDXL_JSON_BOOL,
    SDXL_JSON_NUMBER,
    SDXL_JSON_STRING,
    SDXL_JSON_ARRAY,
    SDXL_JSON_OBJECT
} sdxl_json_type;

typedef struct sdxl_json sdxl_json;
struct sdxl_json {
    sdxl_json_type type;
    int boolean;      /* BOOL */
    double number;    /* NUMBER, as strtod reads it */
    int is_int;       /* NUMBER written without fraction/exponent and fits int64 */
    int64_t integer;  /* NUMBER when is_int */
    char *str;        /* STRING: decoded UTF-8, NUL-terminated (may contain NUL; use len) */
    size_t len;       /* STRING: bytes; ARRAY/OBJECT: element count */
    sdxl_json *items; /* ARRAY elements, OBJECT values (in document order) */
    char **keys;      /* OBJECT keys, decoded, NUL-terminated */
    size_t *key_lens;
};

typedef struct sdxl_json_opts {
    int max_depth;          /* default 64 */
    int reject_dup_keys;    /* default 1 */
    size_t max_string;      /* longest string or key in bytes; default 16 MiB */
    int allow_nonfinite;    /* accept Python's NaN / Infinity / -Infinity as numbers; default 0 */
    size_t max_values;      /* most values (scalars, arrays, objects) in the document; 0 (default) = no cap */
} sdxl_json_opts;

void sdxl_json_opts_init(sdxl_json_opts *o);

/* Parses exactly one value (surrounding whitespace allowed). `what` names the source in
 * error messages ("model.safetensors header"); errors give the byte offset. opts may be NULL. */
int sdxl_json_parse(const char *text, size_t len, const sdxl_json_opts *opts, const char *what,
                    sdxl_json **out, sdxl_err *e);
/* Frees a whole document: v must be the root that sdxl_json_parse returned (or NULL). */
void sdxl_json_free(sdxl_json *v);

/* Lookups return NULL when absent or of the wrong container type. */
const sdxl_json *sdxl_json_get(const sdxl_json *obj, const char *key);
const sdxl_json *sdxl_json_at(const sdxl_json *arr, size_t i);
/* Typed getters: return def when absent or of another type. */
double sdxl_json_num(const sdxl_json *obj, const char *key, double def);
int64_t sdxl_json_i64(const sdxl_json *obj, const char *key, int64_t def);
const char *sdxl_json_str(const sdxl_json *obj, const char *key, const char *def);
int sdxl_json_bool(const sdxl_json *obj, const char *key, int def);

/* Reads a whole file (bounded by max_bytes) and parses it. */
int sdxl_json_parse_file(const char *path, size_t max_bytes, const sdxl_json_opts *opts, sdxl_json **out,
                         sdxl_err *e);

/* Appends s to buf as a JSON string literal with escapes; returns bytes needed (snprintf-like). */
size_t sdxl_json_escape(char *buf, size_t cap, const char *s, size_t len);

#endif
