/* Request parsing for every dialect onto one struct, field-path validation, canonical JSON.
 * See request.h; the mapping table is in docs/worker.md. */
#include "service/request.h"

#include <ctype.h>
#include <math.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise/registry.h"

/* ---- storage: every string and array a request points to ----------------------------------- */

typedef struct store {
    void **p;
    int n, cap;
    int oom;
} store;

static void *keep(sdxl_svc_request *r, void *p) {
    store *s = r->storage;
    if (!p) return NULL;
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) {
            free(p);
            return NULL;
        }
        r->storage = s;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        void **np = realloc(s->p, (size_t)cap * sizeof *np);
        if (!np) {
            s->oom = 1;
            free(p);
            return NULL;
        }
        s->p = np;
        s->cap = cap;
    }
    s->p[s->n++] = p;
    return p;
}

const char *sdxl_svc_request_strdup(sdxl_svc_request *r, const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s);
    char *c = malloc(n + 1);
    if (!c) return NULL;
    memcpy(c, s, n + 1);
    return keep(r, c);
}

void sdxl_svc_request_init(sdxl_svc_request *r) {
    memset(r, 0, sizeof *r);
    sdxl_gen_params_init(&r->g);
    r->quality = 95;
    r->priority = SDXL_PRIO_NORMAL;
}

void sdxl_svc_request_free(sdxl_svc_request *r) {
    if (!r) return;
    store *s = r->storage;
    if (s) {
        for (int i = 0; i < s->n; i++) free(s->p[i]);
        free(s->p);
        free(s);
    }
    memset(r, 0, sizeof *r);
}

const char *sdxl_svc_dialect_name(sdxl_svc_dialect d) {
    switch (d) {
    case SDXL_DIALECT_NATIVE: return "native";
    case SDXL_DIALECT_ORCH_PAYLOAD: return "orchestrator";
    case SDXL_DIALECT_ORCH_BASIC: return "orchestrator_basic";
    case SDXL_DIALECT_ORCH_CSHARP: return "orchestrator_csharp";
    case SDXL_DIALECT_A1111_TXT2IMG: return "a1111_txt2img";
    case SDXL_DIALECT_A1111_IMG2IMG: return "a1111_img2img";
    default: return "auto";
    }
}

/* ---- issues ------------------------------------------------------------------------------- */

void sdxl_svc_issue_add(sdxl_svc_issues *is, const char *code, const char *field, const char *fmt, ...) {
    if (!is) return;
    if (is->n >= SDXL_SVC_MAX_ISSUES) {
        is->dropped++;
        return;
    }
    sdxl_svc_issue *it = &is->items[is->n++];
    snprintf(it->code, sizeof it->code, "%s", code);
    snprintf(it->field, sizeof it->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->message, sizeof it->message, fmt, ap);
    va_end(ap);
}

void sdxl_svc_warn(sdxl_svc_issues *is, const char *fmt, ...) {
    if (!is || is->n_warnings >= 8) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(is->warnings[is->n_warnings++], sizeof is->warnings[0], fmt, ap);
    va_end(ap);
}

void sdxl_svc_issues_join(const sdxl_svc_issues *is, char *buf, size_t cap) {
    size_t n = 0;
    if (cap) buf[0] = 0;
    for (int i = 0; i < is->n && n + 1 < cap; i++) {
        const sdxl_svc_issue *it = &is->items[i];
        int k = it->field[0] ? snprintf(buf + n, cap - n, "%s%s: %s", i ? "; " : "", it->field, it->message)
                             : snprintf(buf + n, cap - n, "%s%s", i ? "; " : "", it->message);
        if (k < 0) break;
        n += (size_t)k;
    }
    if (is->dropped && n + 1 < cap) snprintf(buf + n, cap - n, "; and %d more", is->dropped);
}

/* ---- key lookup ignoring case and underscores ---------------------------------------------- */

static int key_eq(const char *a, size_t alen, const char *b) {
    size_t i = 0;
    const char *q = b;
    for (;;) {
        while (i < alen && (a[i] == '_' || a[i] == '-')) i++;
        while (*q == '_') q++;
        if (i == alen || !*q) return i == alen && !*q;
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)*q)) return 0;
        i++;
        q++;
    }
}

const sdxl_json *sdxl_svc_get(const sdxl_json *obj, const char *key) {
    if (!obj || obj->type != SDXL_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (key_eq(obj->keys[i], obj->key_lens[i], key)) return &obj->items[i];
    return NULL;
}

/* ---- typed field readers: absent and null leave the default ---------------------------------- */

typedef struct rd {
    sdxl_svc_request *r;
    sdxl_svc_issues *is;
    char path[96];
} rd;

static void fpath(char *out, size_t cap, const char *base, const char *key) {
    if (base && *base) snprintf(out, cap, "%s.%s", base, key);
    else snprintf(out, cap, "%s", key);
}

static const char *type_name(const sdxl_json *v) {
    static const char *const n[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
    return n[v->type];
}

/* Looks key up in obj (first of several '|'-separated spellings); NULL when absent or null. */
static const sdxl_json *look(const sdxl_json *obj, const char *keys, char *used, size_t ucap) {
    char k[64];
    const char *p = keys;
    while (*p) {
        size_t n = strcspn(p, "|");
        if (n >= sizeof k) n = sizeof k - 1;
        memcpy(k, p, n);
        k[n] = 0;
        const sdxl_json *v = sdxl_svc_get(obj, k);
        if (v && v->type != SDXL_JSON_NULL) {
            snprintf(used, ucap, "%s", k);
            return v;
        }
        p += n;
        if (*p == '|') p++;
    }
    return NULL;
}

static int rd_str(rd *c, const sdxl_json *obj, const char *keys, const char **out) {
    char k[64], f[160];
    const sdxl_json *v = look(obj, keys, k, sizeof k);
    if (!v) return 0;
    fpath(f, sizeof f, c->path, k);
    if (v->type != SDXL_JSON_STRING) {
        sdxl_svc_issue_add(c->is, "wrong_type", f, "must be a string, got %s", type_name(v));
        return 0;
    }
    if (strlen(v->str) != v->len) {
        sdxl_svc_issue_add(c->is, "bad_value", f, "must not contain NUL characters");
        return 0;
    }
    *out = sdxl_svc_request_strdup(c->r, v->str);
    return 1;
}

static int rd_num(rd *c, const sdxl_json *obj, const char *keys, double lo, double hi, double *out) {
    char k[64], f[160];
    const sdxl_json *v = look(obj, keys, k, sizeof k);
    if (!v) return 0;
    fpath(f, sizeof f, c->path, k);
    if (v->type != SDXL_JSON_NUMBER) {
        sdxl_svc_issue_add(c->is, "wrong_type", f, "must be a number, got %s", type_name(v));
        return 0;
    }
    if (!isfinite(v->number) || v->number < lo || v->number > hi) {
        sdxl_svc_issue_add(c->is, "out_of_range", f, "must be within %g..%g, got %g", lo, hi, v->number);
        return 0;
    }
    *out = v->number;
    return 1;
}

static int rd_float(rd *c, const sdxl_json *obj, const char *keys, double lo, double hi, float *out) {
    double d;
    if (!rd_num(c, obj, keys, lo, hi, &d)) return 0;
    *out = (float)d;
    return 1;
}

static int rd_i64(rd *c, const sdxl_json *obj, const char *keys, int64_t lo, int64_t hi, int64_t *out) {
    char k[64], f[160];
    const sdxl_json *v = look(obj, keys, k, sizeof k);
    if (!v) return 0;
    fpath(f, sizeof f, c->path, k);
    if (v->type != SDXL_JSON_NUMBER) {
        sdxl_svc_issue_add(c->is, "wrong_type", f, "must be an integer, got %s", type_name(v));
        return 0;
    }
    /* whole-number floats (20.0) are integers; the C# serializer writes 7 for 7.0 anyway */
    if (!v->is_int && (!isfinite(v->number) || v->number != floor(v->number))) {
        sdxl_svc_issue_add(c->is, "wrong_type", f, "must be an integer, got %g", v->number);
        return 0;
    }
    double d = v->is_int ? (double)v->integer : v->number;
    if (d < (double)lo || d > (double)hi) {
        sdxl_svc_issue_add(c->is, "out_of_range", f, "must be within %lld..%lld, got %.0f", (long long)lo,
                           (long long)hi, d);
        return 0;
    }
    *out = v->is_int ? v->integer : (int64_t)d;
    return 1;
}

static int rd_int(rd *c, const sdxl_json *obj, const char *keys, int lo, int hi, int *out) {
    int64_t v;
    if (!rd_i64(c, obj, keys, lo, hi, &v)) return 0;
    *out = (int)v;
    return 1;
}

/* One scalar field of a dialect: its spellings ("a|b", the first present wins; errors name it as
 * written here), type, range and place in the request. A dialect is mostly a list of these. */
typedef struct fld {
    const char *keys;
    char type; /* 's' string, 'i' int, 'l' int64, 'f' float, 'd' double */
    double lo, hi;
    size_t off;
} fld;

#define G_(m) offsetof(sdxl_svc_request, g.m)
#define R_(m) offsetof(sdxl_svc_request, m)
#define NFLD(t) (sizeof(t) / sizeof *(t))

/* Reads every field of the table that obj has, in table order. */
static void rd_fields(rd *c, const sdxl_json *obj, const fld *t, size_t n) {
    for (size_t i = 0; i < n; i++) {
        void *dst = (char *)c->r + t[i].off;
        switch (t[i].type) {
        case 's': rd_str(c, obj, t[i].keys, (const char **)dst); break;
        case 'i': rd_int(c, obj, t[i].keys, (int)t[i].lo, (int)t[i].hi, (int *)dst); break;
        case 'l': rd_i64(c, obj, t[i].keys, (int64_t)t[i].lo, (int64_t)t[i].hi, (int64_t *)dst); break;
        case 'f': rd_float(c, obj, t[i].keys, t[i].lo, t[i].hi, (float *)dst); break;
        default: rd_num(c, obj, t[i].keys, t[i].lo, t[i].hi, (double *)dst); break;
        }
    }
}

static int rd_bool(rd *c, const sdxl_json *obj, const char *keys, int *out);
static const sdxl_json *rd_obj(rd *c, const sdxl_json *obj, const char *keys);
static size_t push(rd *c, const char *seg);
static void pop(rd *c, size_t n);

/* The fields of the table inside the object member `key` (errors name key.field); the member or NULL. */
static const sdxl_json *rd_section(rd *c, const sdxl_json *obj, const char *key, const fld *t, size_t n) {
    const sdxl_json *o = rd_obj(c, obj, key);
    if (o) {
        size_t s = push(c, key);
        rd_fields(c, o, t, n);
        pop(c, s);
    }
    return o;
}

static int rd_bool(rd *c, const sdxl_json *obj, const char *keys, int *out) {
    char k[64], f[160];
    const sdxl_json *v = look(obj, keys, k, sizeof k);
    if (!v) return 0;
    fpath(f, sizeof f, c->path, k);
    if (v->type != SDXL_JSON_BOOL) {
        sdxl_svc_issue_add(c->is, "wrong_type", f, "must be true or false, got %s", type_name(v));
        return 0;
    }
    *out = v->boolean;
    return 1;
}

/* Object member that must be an object (NULL when absent/null; an issue when another type). */
static const sdxl_json *rd_obj(rd *c, const sdxl_json *obj, const char *keys) {
    char k[64], f[160];
    const sdxl_json *v = look(obj, keys, k, sizeof k);
    if (!v) return NULL;
    if (v->type != SDXL_JSON_OBJECT) {
        fpath(f, sizeof f, c->path, k);
        sdxl_svc_issue_add(c->is, "wrong_type", f, "must be an object, got %s", type_name(v));
        return NULL;
    }
    return v;
}

static const sdxl_json *rd_arr(rd *c, const sdxl_json *obj, const char *keys, size_t max, char *used, size_t ucap) {
    char k[64], f[160];
    const sdxl_json *v = look(obj, keys, k, sizeof k);
    if (!v) return NULL;
    fpath(f, sizeof f, c->path, k);
    snprintf(used, ucap, "%s", f);
    if (v->type != SDXL_JSON_ARRAY) {
        sdxl_svc_issue_add(c->is, "wrong_type", f, "must be an array, got %s", type_name(v));
        return NULL;
    }
    if (v->len > max) {
        sdxl_svc_issue_add(c->is, "limit", f, "at most %zu entries, got %zu", max, v->len);
        return NULL;
    }
    return v;
}

/* Enters a nested object for path naming; returns the saved path length. */
static size_t push(rd *c, const char *seg) {
    size_t n = strlen(c->path);
    if (n) snprintf(c->path + n, sizeof c->path - n, ".%s", seg);
    else snprintf(c->path, sizeof c->path, "%s", seg);
    return n;
}

static void pop(rd *c, size_t n) { c->path[n] = 0; }

/* Keys of obj not in `known` ('|'-separated) are an error in the native dialect. */
static void unknown_keys(rd *c, const sdxl_json *obj, const char *known) {
    for (size_t i = 0; i < obj->len; i++) {
        const char *p = known;
        int found = 0;
        while (*p && !found) {
            size_t n = strcspn(p, "|");
            char k[64];
            if (n >= sizeof k) n = sizeof k - 1;
            memcpy(k, p, n);
            k[n] = 0;
            found = key_eq(obj->keys[i], obj->key_lens[i], k);
            p += n;
            if (*p == '|') p++;
        }
        if (!found) {
            char f[160], key[48];
            snprintf(key, sizeof key, "%.*s", (int)(obj->key_lens[i] < 40 ? obj->key_lens[i] : 40), obj->keys[i]);
            fpath(f, sizeof f, c->path, key);
            sdxl_svc_issue_add(c->is, "unknown_field", f, "is not a field of this request (see `sdxl worker --schema`)");
        }
    }
}

/* ---- shared pieces ------------------------------------------------------------------------ */

static void rd_priority(rd *c, const sdxl_json *obj, const char *keys) {
    char k[64], f[160];
    const sdxl_json *v = look(obj, keys, k, sizeof k);
    if (!v) return;
    fpath(f, sizeof f, c->path, k);
    if (v->type == SDXL_JSON_STRING) {
        static const char *const names[] = {"low", "normal", "high", "urgent"};
        for (int i = 0; i < 4; i++)
            if (!strcasecmp(v->str, names[i])) {
                c->r->priority = i;
                return;
            }
        sdxl_svc_issue_add(c->is, "bad_value", f, "must be low, normal, high or urgent, got \"%.40s\"", v->str);
        return;
    }
    rd_int(c, obj, keys, 0, 3, &c->r->priority);
}

static int rd_lora_list(rd *c, const sdxl_json *arr, const char *apath, const char *name_keys, const char *w_keys) {
    sdxl_svc_request *r = c->r;
    if (!arr || !arr->len) return 0;
    r->loras = keep(r, calloc(arr->len, sizeof *r->loras));
    if (!r->loras) return SDXL_ERR_NOMEM;
    char save[96];
    snprintf(save, sizeof save, "%s", c->path);
    for (size_t i = 0; i < arr->len; i++) {
        const sdxl_json *it = &arr->items[i];
        snprintf(c->path, sizeof c->path, "%s[%zu]", apath, i);
        sdxl_svc_lora *l = &r->loras[r->n_loras];
        l->weight = 1.0f;
        l->te_weight = NAN;
        if (it->type == SDXL_JSON_STRING) {
            l->name = sdxl_svc_request_strdup(r, it->str);
        } else if (it->type != SDXL_JSON_OBJECT) {
            sdxl_svc_issue_add(c->is, "wrong_type", c->path, "must be an object or a name, got %s", type_name(it));
            continue;
        } else {
            if (!rd_str(c, it, name_keys, &l->name))
                if (!look(it, name_keys, (char[64]){0}, 64)) sdxl_svc_issue_add(c->is, "missing_field", c->path,
                                                                                "name: required");
            rd_float(c, it, w_keys, -2, 2, &l->weight);
            rd_float(c, it, "te_weight|text_encoder_weight", -2, 2, &l->te_weight);
        }
        if (isnan(l->te_weight)) l->te_weight = l->weight;
        r->n_loras++;
    }
    snprintf(c->path, sizeof c->path, "%s", save);
    return 0;
}

static int is_control_type(const char *t) {
    static const char *const types[] = {"canny", "depth", "pose", "openpose", "scribble", "seg", "normal", "mlsd",
                                        "lineart", "softedge", "tile", "inpaint", NULL};
    for (int i = 0; types[i]; i++)
        if (!strcasecmp(t, types[i])) return 1;
    return 0;
}

/* ---- native (canonical snake_case; camelCase and PascalCase match too) ---------------------- */

#define NATIVE_KEYS                                                                                                    \
    "schema_version|op|id|prompt|negative_prompt|prompt_2|negative_prompt_2|width|height|steps|cfg_scale|"            \
    "guidance_scale|guidance_rescale|sampler|scheduler|schedule|seed|rng|batch_count|batch_size|original_width|"      \
    "original_height|crop_left|crop_top|target_width|target_height|negative_original_width|"                         \
    "negative_original_height|negative_crop_left|negative_crop_top|negative_target_width|negative_target_height|"     \
    "refiner_switch|aesthetic_score|negative_aesthetic_score|init_image|strength|mask|mask_blur|clip_skip|"          \
    "model|base|refiner|vae|loras|controls|format|quality|save_path|file_prefix|upscale|priority|timeout|"           \
    "client_id|request_id|preview_every|dry_run|events|enable_hr|hr_scale|hr_resize_x|hr_resize_y|"                  \
    "hr_second_pass_steps|hr_denoising_strength|hr_upscaler|hr_sampler|hr_schedule|hr_prompt|hr_negative_prompt|"   \
    "eta_noise_seed_delta"

#define SIDE 0, 65536 /* width, height and micro-conditioning sizes */

static const fld NATIVE_GEN[] = {
    {"prompt", 's', 0, 0, G_(prompt)},
    {"negative_prompt", 's', 0, 0, G_(negative_prompt)},
    {"prompt_2", 's', 0, 0, G_(prompt_2)},
    {"negative_prompt_2", 's', 0, 0, G_(negative_prompt_2)},
    {"width", 'i', SIDE, G_(width)},
    {"height", 'i', SIDE, G_(height)},
    {"steps", 'i', 1, 10000, G_(steps)},
    {"cfg_scale|guidance_scale", 'f', 0, 100, G_(cfg_scale)},
    {"guidance_rescale", 'f', 0, 1, G_(guidance_rescale)},
    {"sampler|scheduler", 's', 0, 0, G_(sampler)},
    {"schedule", 's', 0, 0, G_(schedule)},
    {"seed", 'l', -1, 0xffffffffLL, G_(seed)},
    {"rng", 's', 0, 0, G_(rng)},
    {"batch_count", 'i', 1, 4096, G_(batch_count)},
    {"batch_size", 'i', 0, 64, G_(batch_size)},
    {"original_width", 'i', SIDE, G_(original_width)},
    {"original_height", 'i', SIDE, G_(original_height)},
    {"crop_left", 'i', SIDE, G_(crop_left)},
    {"crop_top", 'i', SIDE, G_(crop_top)},
    {"target_width", 'i', SIDE, G_(target_width)},
    {"target_height", 'i', SIDE, G_(target_height)},
    {"negative_original_width", 'i', SIDE, G_(negative_original_width)},
    {"negative_original_height", 'i', SIDE, G_(negative_original_height)},
    {"negative_crop_left", 'i', -1, 65536, G_(negative_crop_left)},
    {"negative_crop_top", 'i', -1, 65536, G_(negative_crop_top)},
    {"negative_target_width", 'i', SIDE, G_(negative_target_width)},
    {"negative_target_height", 'i', SIDE, G_(negative_target_height)},
    {"refiner_switch", 'f', 0, 1, G_(refiner_switch)},
    {"aesthetic_score", 'f', -100, 100, G_(aesthetic_score)},
    {"negative_aesthetic_score", 'f', -100, 100, G_(negative_aesthetic_score)},
    {"init_image", 's', 0, 0, R_(init_image)},
    {"strength", 'f', 0, 1, G_(strength)},
    {"mask", 's', 0, 0, R_(mask)},
    {"mask_blur", 'i', 0, 256, G_(mask_blur)},
    {"clip_skip", 'i', 0, 64, G_(clip_skip)},
    {"model|base", 's', 0, 0, R_(base)},
    {"refiner", 's', 0, 0, R_(refiner)},
    {"vae", 's', 0, 0, R_(vae)},
    {"eta_noise_seed_delta", 'i', 0, 2147483647, G_(eta_noise_seed_delta)},
};

/* The hires fix in canonical names (A1111's txt2img body maps onto the same fields). */
static const fld NATIVE_HR[] = {
    {"hr_scale", 'f', 1, 8, G_(hr_scale)},
    {"hr_resize_x", 'i', 0, 16384, G_(hr_resize_x)},
    {"hr_resize_y", 'i', 0, 16384, G_(hr_resize_y)},
    {"hr_second_pass_steps", 'i', 0, 10000, G_(hr_second_pass_steps)},
    {"hr_denoising_strength", 'f', 0, 1, G_(hr_denoising_strength)},
    {"hr_upscaler", 's', 0, 0, G_(hr_upscaler)},
    {"hr_sampler", 's', 0, 0, G_(hr_sampler)},
    {"hr_schedule", 's', 0, 0, G_(hr_schedule)},
    {"hr_prompt", 's', 0, 0, G_(hr_prompt)},
    {"hr_negative_prompt", 's', 0, 0, G_(hr_negative_prompt)},
};

static const fld NATIVE_OUT[] = {
    {"format", 's', 0, 0, R_(format)},
    {"quality", 'i', 1, 100, R_(quality)},
    {"save_path", 's', 0, 0, R_(save_path)},
    {"file_prefix", 's', 0, 0, R_(file_prefix)},
};

static const fld NATIVE_JOB[] = {
    {"timeout", 'd', 0, 86400 * 7, R_(timeout_s)},
    {"client_id|request_id", 's', 0, 0, R_(client_id)},
    {"preview_every", 'i', 0, 10000, R_(preview_every)},
};

static void parse_native(rd *c, const sdxl_json *o) {
    sdxl_svc_request *r = c->r;
    unknown_keys(c, o, NATIVE_KEYS);
    int64_t sv = SDXL_SVC_SCHEMA_VERSION;
    if (rd_i64(c, o, "schema_version", 1, 1000, &sv) && sv > SDXL_SVC_SCHEMA_VERSION)
        sdxl_svc_issue_add(c->is, "unsupported", "schema_version", "this worker speaks version %d, got %lld",
                           SDXL_SVC_SCHEMA_VERSION, (long long)sv);
    rd_fields(c, o, NATIVE_GEN, NFLD(NATIVE_GEN));
    if (rd_bool(c, o, "enable_hr", &r->g.enable_hr) && r->g.enable_hr) rd_fields(c, o, NATIVE_HR, NFLD(NATIVE_HR));
    char ap[128];
    const sdxl_json *la = rd_arr(c, o, "loras", 64, ap, sizeof ap);
    if (la) rd_lora_list(c, la, ap, "name|path", "weight|unet_weight");
    const sdxl_json *ca = rd_arr(c, o, "controls", 8, ap, sizeof ap);
    if (ca && ca->len) {
        r->controls = keep(r, calloc(ca->len, sizeof *r->controls));
        if (r->controls) {
            size_t save = strlen(c->path);
            for (size_t i = 0; i < ca->len; i++) {
                const sdxl_json *it = &ca->items[i];
                snprintf(c->path, sizeof c->path, "%s[%zu]", ap, i);
                if (it->type != SDXL_JSON_OBJECT) {
                    sdxl_svc_issue_add(c->is, "wrong_type", c->path, "must be an object, got %s", type_name(it));
                    continue;
                }
                unknown_keys(c, it, "model|type|image|scale|guidance_start|guidance_end|preprocess|resolution");
                sdxl_svc_control *u = &r->controls[r->n_controls++];
                u->scale = 1;
                u->guidance_end = 1;
                rd_str(c, it, "model", &u->model);
                rd_str(c, it, "type", &u->type);
                rd_str(c, it, "image", &u->image);
                rd_float(c, it, "scale", 0, 2, &u->scale);
                rd_float(c, it, "guidance_start", 0, 1, &u->guidance_start);
                rd_float(c, it, "guidance_end", 0, 1, &u->guidance_end);
                rd_str(c, it, "preprocess", &u->preprocess);
                rd_int(c, it, "resolution", 0, 8192, &u->resolution);
            }
            c->path[save] = 0;
        }
    }
    rd_fields(c, o, NATIVE_OUT, NFLD(NATIVE_OUT));
    const sdxl_json *up = rd_obj(c, o, "upscale");
    if (up) {
        size_t s = push(c, "upscale");
        unknown_keys(c, up, "factor|method|enabled");
        int en = 1;
        rd_bool(c, up, "enabled", &en);
        rd_int(c, up, "factor", 1, 8, &r->upscale_factor);
        rd_str(c, up, "method", &r->upscale_method);
        if (!en) r->upscale_factor = 0;
        pop(c, s);
    }
    rd_priority(c, o, "priority");
    rd_fields(c, o, NATIVE_JOB, NFLD(NATIVE_JOB));
}

/* ---- the orchestrator's enhanced payload (snake_case, nested) -------------------------------- */

static void orch_controlnet(rd *c, const sdxl_json *cn) {
    sdxl_svc_request *r = c->r;
    size_t s = push(c, "controlnet");
    int en = 0;
    rd_bool(c, cn, "enabled", &en);
    if (en) {
        r->controls = keep(r, calloc(1, sizeof *r->controls));
        if (r->controls) {
            sdxl_svc_control *u = &r->controls[0];
            r->n_controls = 1;
            u->scale = 1;
            u->guidance_end = 1;
            if (rd_str(c, cn, "type", &u->type) && !is_control_type(u->type))
                sdxl_svc_issue_add(c->is, "bad_value", "controlnet.type",
                                   "unknown type \"%.40s\" (canny, depth, pose, scribble, seg, normal, mlsd, lineart)",
                                   u->type);
            else if (!u->type)
                sdxl_svc_issue_add(c->is, "missing_field", "controlnet.type", "required when enabled");
            rd_str(c, cn, "model|model_name", &u->model);
            rd_float(c, cn, "conditioning_scale|scale|weight", 0, 2, &u->scale);
            if (!rd_str(c, cn, "control_image|image|conditioning_image", &u->image))
                sdxl_svc_issue_add(c->is, "missing_field", "controlnet.control_image", "required when enabled");
            rd_float(c, cn, "guidance_start", 0, 1, &u->guidance_start);
            rd_float(c, cn, "guidance_end", 0, 1, &u->guidance_end);
            const sdxl_json *pp = rd_obj(c, cn, "preprocessor");
            if (pp) {
                size_t s2 = push(c, "preprocessor");
                int pen = 0;
                rd_bool(c, pp, "enabled", &pen);
                rd_int(c, pp, "resolution", 64, 8192, &u->resolution);
                if (pen && u->type) u->preprocess = u->type;
                pop(c, s2);
            }
        }
    }
    pop(c, s);
}

static void orch_output(rd *c, const sdxl_json *out) {
    sdxl_svc_request *r = c->r;
    size_t s = push(c, "output");
    rd_str(c, out, "format", &r->format);
    rd_int(c, out, "quality", 1, 100, &r->quality);
    rd_str(c, out, "save_path", &r->save_path);
    const sdxl_json *up = rd_obj(c, out, "upscale");
    if (up) {
        size_t s2 = push(c, "upscale");
        int en = 0;
        rd_bool(c, up, "enabled", &en);
        if (en) {
            double f = 2;
            rd_num(c, up, "factor", 1, 8, &f);
            r->upscale_factor = (int)f;
            if (f != floor(f)) sdxl_svc_warn(c->is, "output.upscale.factor %g rounded down to %d", f, (int)f);
            rd_str(c, up, "method", &r->upscale_method);
            if (!r->upscale_method) r->upscale_method = "";
        }
        pop(c, s2);
    }
    pop(c, s);
}

/* the orchestrator's seeds are C# int */
#define SEED32 -1, 0x7fffffffLL

/* flat keys of the older payload */
static const fld ORCH_FLAT[] = {
    {"prompt", 's', 0, 0, G_(prompt)},
    {"negative_prompt", 's', 0, 0, G_(negative_prompt)},
    {"model_name", 's', 0, 0, R_(base)},
    {"steps|num_inference_steps", 'i', 1, 10000, G_(steps)},
    {"guidance_scale|cfg_scale", 'f', 0, 100, G_(cfg_scale)},
    {"width", 'i', SIDE, G_(width)},
    {"height", 'i', SIDE, G_(height)},
    {"seed", 'l', SEED32, G_(seed)},
    {"refiner_model", 's', 0, 0, R_(refiner)},
    {"vae_model", 's', 0, 0, R_(vae)},
    {"scheduler_type", 's', 0, 0, G_(sampler)},
};

static const fld ORCH_HP[] = {
    {"num_inference_steps|steps", 'i', 1, 10000, G_(steps)},
    {"guidance_scale", 'f', 0, 100, G_(cfg_scale)},
    {"seed", 'l', SEED32, G_(seed)},
    {"strength", 'f', 0, 1, G_(strength)}, /* always sent (0.8); img2img only with an init image */
    {"guidance_rescale", 'f', 0, 1, G_(guidance_rescale)},
    {"clip_skip", 'i', 0, 64, G_(clip_skip)},
};

static const fld ORCH_DIM[] = {{"width", 'i', SIDE, G_(width)}, {"height", 'i', SIDE, G_(height)}};

static const fld ORCH_MODELS[] = {
    {"base", 's', 0, 0, R_(base)}, {"refiner", 's', 0, 0, R_(refiner)}, {"vae", 's', 0, 0, R_(vae)}};

static void parse_orch_payload(rd *c, const sdxl_json *o) {
    sdxl_svc_request *r = c->r;
    sdxl_gen_params *g = &r->g;
    const char *wt = NULL;
    if (rd_str(c, o, "worker_type", &wt) && strcmp(wt, "enhanced_sdxl_worker") && strcmp(wt, "sdxl_worker") &&
        strcmp(wt, "pipeline_manager"))
        sdxl_svc_warn(c->is, "worker_type \"%.40s\" is only a routing hint; treated as sdxl_worker", wt);
    /* the orchestrator's defaults (512x512, 20 steps, 7.5) unless the payload says otherwise */
    g->width = g->height = 512;
    g->steps = 20;
    g->cfg_scale = 7.5f;
    rd_fields(c, o, ORCH_FLAT, NFLD(ORCH_FLAT));
    rd_section(c, o, "hyperparameters", ORCH_HP, NFLD(ORCH_HP));
    rd_section(c, o, "dimensions", ORCH_DIM, NFLD(ORCH_DIM));
    rd_str(c, o, "scheduler", &g->sampler);
    rd_section(c, o, "models", ORCH_MODELS, NFLD(ORCH_MODELS));
    const sdxl_json *lo = rd_obj(c, o, "lora");
    if (lo) {
        size_t s = push(c, "lora");
        int en = 0;
        rd_bool(c, lo, "enabled", &en);
        char ap[128];
        const sdxl_json *la = rd_arr(c, lo, "models", 64, ap, sizeof ap);
        if (en && la) rd_lora_list(c, la, ap, "name", "weight|scale");
        pop(c, s);
    }
    const sdxl_json *cn = rd_obj(c, o, "controlnet");
    if (cn) orch_controlnet(c, cn);
    const sdxl_json *out = rd_obj(c, o, "output");
    if (out) orch_output(c, out);
    const sdxl_json *b = rd_obj(c, o, "batch");
    if (b) {
        size_t s = push(c, "batch");
        rd_int(c, b, "size", 1, 64, &g->batch_count);
        pop(c, s);
    }
    const sdxl_json *pr = rd_obj(c, o, "precision");
    if (pr) {
        /* hints for GPU engines: accepted, type-checked, no effect here */
        size_t s = push(c, "precision");
        const char *dt = NULL;
        int bv;
        rd_str(c, pr, "dtype", &dt);
        rd_bool(c, pr, "cpu_offload", &bv);
        rd_bool(c, pr, "sequential_cpu_offload", &bv);
        rd_bool(c, pr, "attention_slicing", &bv);
        rd_bool(c, pr, "vae_slicing", &bv);
        rd_bool(c, pr, "xformers", &bv);
        pop(c, s);
    }
    const sdxl_json *md = rd_obj(c, o, "metadata");
    if (md) {
        size_t s = push(c, "metadata");
        rd_str(c, md, "request_id", &r->client_id);
        rd_priority(c, md, "priority");
        rd_num(c, md, "timeout", 0, 86400 * 7, &r->timeout_s);
        char ap[128];
        const sdxl_json *tags = rd_arr(c, md, "tags", 256, ap, sizeof ap);
        for (size_t i = 0; tags && i < tags->len; i++)
            if (tags->items[i].type != SDXL_JSON_STRING)
                sdxl_svc_issue_add(c->is, "wrong_type", "metadata.tags", "must be an array of strings");
        pop(c, s);
    }
    rd_str(c, o, "init_image|image", &r->init_image);
    rd_str(c, o, "mask_image|mask", &r->mask);
}

/* ---- the orchestrator's basic generate_image parameters ---------------------------------------- */

static const fld ORCH_BASIC[] = {
    {"prompt", 's', 0, 0, G_(prompt)},
    {"negative_prompt", 's', 0, 0, G_(negative_prompt)},
    {"width", 'i', SIDE, G_(width)},
    {"height", 'i', SIDE, G_(height)},
    {"steps|num_inference_steps", 'i', 1, 10000, G_(steps)},
    {"guidance_scale|cfg_scale", 'f', 0, 100, G_(cfg_scale)},
    {"seed", 'l', SEED32, G_(seed)},
    {"scheduler|sampler", 's', 0, 0, G_(sampler)},
    {"model_name|model", 's', 0, 0, R_(base)},
};

static void parse_orch_basic(rd *c, const sdxl_json *o) {
    sdxl_gen_params *g = &c->r->g;
    g->width = g->height = 512;
    g->steps = 20;
    g->cfg_scale = 7.5f;
    rd_fields(c, o, ORCH_BASIC, NFLD(ORCH_BASIC));
}

/* ---- the orchestrator's C# EnhancedSDXLRequest object (PascalCase, nested) ----------------------- */

static const fld CS_MODEL[] = {
    {"Base", 's', 0, 0, R_(base)}, {"Refiner", 's', 0, 0, R_(refiner)}, {"Vae", 's', 0, 0, R_(vae)}};

static const fld CS_SCHEDULER[] = {
    {"Type|Name", 's', 0, 0, G_(sampler)},
    {"Steps|NumInferenceSteps", 'i', 1, 10000, G_(steps)},
    {"GuidanceScale", 'f', 0, 100, G_(cfg_scale)},
};

static const fld CS_HP[] = {
    {"NumInferenceSteps|Steps", 'i', 1, 10000, G_(steps)},
    {"GuidanceScale", 'f', 0, 100, G_(cfg_scale)},
    {"Seed", 'l', SEED32, G_(seed)},
    {"Strength", 'f', 0, 1, G_(strength)},
    {"Width", 'i', SIDE, G_(width)},
    {"Height", 'i', SIDE, G_(height)},
    {"BatchSize", 'i', 1, 64, G_(batch_count)},
    {"GuidanceRescale", 'f', 0, 1, G_(guidance_rescale)},
    {"ClipSkip", 'i', 0, 64, G_(clip_skip)},
};

static const fld CS_DIM[] = {{"Width", 'i', SIDE, G_(width)}, {"Height", 'i', SIDE, G_(height)}};

static const fld CS_OUTPUT[] = {
    {"Format", 's', 0, 0, R_(format)}, {"Quality", 'i', 1, 100, R_(quality)}, {"SavePath", 's', 0, 0, R_(save_path)}};

static void parse_csharp(rd *c, const sdxl_json *o) {
    sdxl_svc_request *r = c->r;
    sdxl_gen_params *g = &r->g;
    g->width = g->height = 1024;
    g->steps = 20;
    g->cfg_scale = 7.5f;
    rd_section(c, o, "Model", CS_MODEL, NFLD(CS_MODEL));
    const sdxl_json *sc = look(o, "Scheduler", (char[64]){0}, 64);
    if (sc && sc->type == SDXL_JSON_STRING) rd_str(c, o, "Scheduler", &g->sampler);
    else rd_section(c, o, "Scheduler", CS_SCHEDULER, NFLD(CS_SCHEDULER));
    rd_section(c, o, "Hyperparameters", CS_HP, NFLD(CS_HP));
    rd_section(c, o, "Dimensions", CS_DIM, NFLD(CS_DIM));
    const sdxl_json *cd = rd_obj(c, o, "Conditioning");
    if (cd) {
        size_t s = push(c, "Conditioning");
        rd_str(c, cd, "Prompt", &g->prompt);
        rd_str(c, cd, "NegativePrompt", &g->negative_prompt);
        char ap[128];
        const sdxl_json *la = rd_arr(c, cd, "LoRAs|Loras", 64, ap, sizeof ap);
        if (la) rd_lora_list(c, la, ap, "Name|ModelPath|Path", "Scale|Weight");
        const sdxl_json *ca = rd_arr(c, cd, "ControlNets", 8, ap, sizeof ap);
        if (ca && ca->len) {
            r->controls = keep(r, calloc(ca->len, sizeof *r->controls));
            for (size_t i = 0; r->controls && i < ca->len; i++) {
                const sdxl_json *it = &ca->items[i];
                char save[96];
                snprintf(save, sizeof save, "%s", c->path);
                snprintf(c->path, sizeof c->path, "%s[%zu]", ap, i);
                if (it->type != SDXL_JSON_OBJECT) {
                    sdxl_svc_issue_add(c->is, "wrong_type", c->path, "must be an object, got %s", type_name(it));
                } else {
                    sdxl_svc_control *u = &r->controls[r->n_controls++];
                    u->scale = 1;
                    u->guidance_end = 1;
                    rd_str(c, it, "ModelPath|Model|Name", &u->model);
                    rd_str(c, it, "Type", &u->type);
                    rd_str(c, it, "ConditioningImage|ControlImage|Image", &u->image);
                    rd_float(c, it, "ConditioningScale|Weight|Scale", 0, 2, &u->scale);
                    rd_float(c, it, "GuidanceStart", 0, 1, &u->guidance_start);
                    rd_float(c, it, "GuidanceEnd", 0, 1, &u->guidance_end);
                }
                snprintf(c->path, sizeof c->path, "%s", save);
            }
        }
        rd_str(c, cd, "InitImage|Image", &r->init_image);
        rd_str(c, cd, "MaskImage|Mask", &r->mask);
        pop(c, s);
    }
    rd_section(c, o, "Output", CS_OUTPUT, NFLD(CS_OUTPUT));
    char ap[128];
    const sdxl_json *pp = rd_arr(c, o, "PostProcessing", 16, ap, sizeof ap);
    for (size_t i = 0; pp && i < pp->len; i++) {
        const sdxl_json *it = &pp->items[i];
        char save[96];
        snprintf(save, sizeof save, "%s", c->path);
        snprintf(c->path, sizeof c->path, "%s[%zu]", ap, i);
        const char *type = NULL;
        if (it->type == SDXL_JSON_OBJECT && rd_str(c, it, "Type", &type)) {
            if (!strcasecmp(type, "Upscale")) {
                double f = 2;
                rd_num(c, it, "Factor|Scale", 1, 8, &f);
                r->upscale_factor = (int)f;
                rd_str(c, it, "Model|Method", &r->upscale_method);
                if (!r->upscale_method) r->upscale_method = "";
            } else {
                sdxl_svc_issue_add(c->is, "unsupported", c->path, "post-processing step \"%.40s\" is not available "
                                                                  "(Upscale only)", type);
            }
        } else if (it->type != SDXL_JSON_OBJECT) {
            sdxl_svc_issue_add(c->is, "wrong_type", c->path, "must be an object, got %s", type_name(it));
        }
        snprintf(c->path, sizeof c->path, "%s", save);
    }
    rd_priority(c, o, "Priority");
    rd_num(c, o, "Timeout|TimeoutSeconds", 0, 86400 * 7, &r->timeout_s);
    rd_str(c, o, "RequestId", &r->client_id);
}

/* ---- A1111 /sdapi/v1/txt2img and img2img bodies ------------------------------------------------ */

static const fld A1111_GEN[] = {
    {"prompt", 's', 0, 0, G_(prompt)},
    {"negative_prompt", 's', 0, 0, G_(negative_prompt)},
    {"width", 'i', SIDE, G_(width)},
    {"height", 'i', SIDE, G_(height)},
    {"steps", 'i', 1, 10000, G_(steps)},
    {"cfg_scale", 'f', 0, 100, G_(cfg_scale)},
    {"seed", 'l', -1, 0xffffffffLL, G_(seed)},
};

static const fld A1111_BATCH[] = {
    {"scheduler", 's', 0, 0, G_(schedule)},
    {"batch_size", 'i', 1, 64, G_(batch_size)},
    {"n_iter", 'i', 1, 4096, G_(batch_count)},
};

/* txt2img's hires fix; denoising_strength is the second pass's strength there */
static const fld A1111_HR[] = {
    {"hr_scale", 'f', 1, 8, G_(hr_scale)},
    {"hr_resize_x", 'i', 0, 16384, G_(hr_resize_x)},
    {"hr_resize_y", 'i', 0, 16384, G_(hr_resize_y)},
    {"hr_second_pass_steps", 'i', 0, 10000, G_(hr_second_pass_steps)},
    {"denoising_strength", 'f', 0, 1, G_(hr_denoising_strength)},
    {"hr_upscaler", 's', 0, 0, G_(hr_upscaler)},
    {"hr_sampler_name", 's', 0, 0, G_(hr_sampler)},
    {"hr_scheduler", 's', 0, 0, G_(hr_schedule)},
    {"hr_prompt", 's', 0, 0, G_(hr_prompt)},
    {"hr_negative_prompt", 's', 0, 0, G_(hr_negative_prompt)},
};

/* A1111 clients send "" and "Use same ..." for "as the first pass". */
static const char *hr_same(const char *s) {
    return s && *s && strncmp(s, "Use same", 8) ? s : NULL;
}

static void parse_a1111(rd *c, const sdxl_json *o, int img2img) {
    sdxl_svc_request *r = c->r;
    sdxl_gen_params *g = &r->g;
    g->width = g->height = 512;
    g->steps = 50;
    g->cfg_scale = 7.0f;
    rd_fields(c, o, A1111_GEN, NFLD(A1111_GEN));
    if (!rd_str(c, o, "sampler_name", &g->sampler)) rd_str(c, o, "sampler_index", &g->sampler);
    rd_fields(c, o, A1111_BATCH, NFLD(A1111_BATCH));
    rd_str(c, o, "refiner_checkpoint", &r->refiner);
    if (r->refiner && (!r->refiner[0] || !strcmp(r->refiner, "None"))) r->refiner = NULL; /* A1111: no refiner */
    float sw = g->refiner_switch;
    rd_float(c, o, "refiner_switch_at", 0, 1, &sw);
    if (r->refiner) g->refiner_switch = sw; /* clients send 0 when no refiner is chosen */
    int hr = 0, rf = 0;
    if (rd_bool(c, o, "enable_hr", &hr) && hr && !img2img) {
        g->enable_hr = 1;
        rd_fields(c, o, A1111_HR, NFLD(A1111_HR));
        g->hr_sampler = hr_same(g->hr_sampler);
        g->hr_schedule = hr_same(g->hr_schedule);
        g->hr_prompt = hr_same(g->hr_prompt);
        g->hr_negative_prompt = hr_same(g->hr_negative_prompt);
        g->hr_upscaler = hr_same(g->hr_upscaler);
    } else if (hr && img2img) sdxl_svc_warn(c->is, "enable_hr ignored: the hires fix is a txt2img option");
    if (rd_bool(c, o, "restore_faces", &rf) && rf) sdxl_svc_warn(c->is, "restore_faces ignored");
    const sdxl_json *ov = rd_obj(c, o, "override_settings");
    if (ov) {
        size_t s = push(c, "override_settings");
        rd_str(c, ov, "sd_model_checkpoint", &r->base);
        rd_str(c, ov, "sd_vae", &r->vae);
        if (r->vae && (!strcmp(r->vae, "Automatic") || !strcmp(r->vae, "None"))) r->vae = NULL;
        int cs = 0;
        if (rd_int(c, ov, "CLIP_stop_at_last_layers", 1, 64, &cs)) g->clip_skip = cs;
        rd_int(c, ov, "eta_noise_seed_delta", 0, 2147483647, &g->eta_noise_seed_delta);
        pop(c, s);
    }
    if (img2img) {
        rd_float(c, o, "denoising_strength", 0, 1, &g->strength);
        char ap[128];
        const sdxl_json *ii = rd_arr(c, o, "init_images", 1, ap, sizeof ap);
        if (ii && ii->len) {
            if (ii->items[0].type == SDXL_JSON_STRING) r->init_image = sdxl_svc_request_strdup(r, ii->items[0].str);
            else sdxl_svc_issue_add(c->is, "wrong_type", "init_images[0]", "must be a base64 string");
        }
        if (!r->init_image) sdxl_svc_issue_add(c->is, "missing_field", "init_images", "img2img needs one image");
        rd_str(c, o, "mask", &r->mask);
        rd_int(c, o, "mask_blur", 0, 256, &g->mask_blur);
    }
}

/* ---- detection and entry point ---------------------------------------------------------------- */

static sdxl_svc_dialect detect(const sdxl_json *o) {
    if (sdxl_svc_get(o, "Conditioning") || sdxl_svc_get(o, "PostProcessing")) return SDXL_DIALECT_ORCH_CSHARP;
    if (sdxl_json_get(o, "hyperparameters") || sdxl_json_get(o, "dimensions") || sdxl_json_get(o, "worker_type") ||
        sdxl_json_get(o, "model_name"))
        return SDXL_DIALECT_ORCH_PAYLOAD;
    if (sdxl_json_get(o, "init_images")) return SDXL_DIALECT_A1111_IMG2IMG;
    static const char *const a1111[] = {"sampler_name", "sampler_index", "n_iter", "denoising_strength",
                                        "override_settings", "enable_hr", "restore_faces", "alwayson_scripts",
                                        "send_images", "save_images", NULL};
    for (int i = 0; a1111[i]; i++)
        if (sdxl_json_get(o, a1111[i])) return SDXL_DIALECT_A1111_TXT2IMG;
    return SDXL_DIALECT_NATIVE;
}

/* The checks run on the struct and name canonical fields; report them as the dialect spells them. */
static void dialect_path(sdxl_svc_dialect d, char *field, size_t cap) {
    static const char *const payload[][2] = {
        {"width", "dimensions.width"}, {"height", "dimensions.height"}, {"steps", "hyperparameters.num_inference_steps"},
        {"cfg_scale", "hyperparameters.guidance_scale"}, {"sampler", "scheduler"}, {"model", "models.base"},
        {"refiner", "models.refiner"}, {"vae", "models.vae"}, {"format", "output.format"},
        {"save_path", "output.save_path"}, {"upscale.method", "output.upscale.method"}, {"loras", "lora.models"},
        {"batch_count", "batch.size"}, {NULL, NULL}};
    static const char *const csharp[][2] = {
        {"width", "Hyperparameters.Width"}, {"height", "Hyperparameters.Height"}, {"steps", "Scheduler.Steps"},
        {"cfg_scale", "Hyperparameters.GuidanceScale"}, {"sampler", "Scheduler.Type"}, {"model", "Model.Base"},
        {"refiner", "Model.Refiner"}, {"vae", "Model.Vae"}, {"format", "Output.Format"},
        {"save_path", "Output.SavePath"}, {"upscale.method", "PostProcessing.Model"}, {"loras", "Conditioning.LoRAs"},
        {"controls", "Conditioning.ControlNets"}, {"batch_count", "Hyperparameters.BatchSize"}, {NULL, NULL}};
    static const char *const a1111[][2] = {
        {"sampler", "sampler_name"}, {"model", "override_settings.sd_model_checkpoint"},
        {"vae", "override_settings.sd_vae"}, {"init_image", "init_images[0]"}, {"batch_count", "n_iter"},
        {NULL, NULL}};
    const char *const(*t)[2] = d == SDXL_DIALECT_ORCH_PAYLOAD ? payload
                               : d == SDXL_DIALECT_ORCH_CSHARP ? csharp
                               : d == SDXL_DIALECT_A1111_TXT2IMG || d == SDXL_DIALECT_A1111_IMG2IMG ? a1111
                                                                                                     : NULL;
    for (int i = 0; t && t[i][0]; i++) {
        size_t n = strlen(t[i][0]);
        if (!strncmp(field, t[i][0], n) && (field[n] == 0 || field[n] == '[' || field[n] == '.')) {
            char rest[96];
            snprintf(rest, sizeof rest, "%s", field + n);
            snprintf(field, cap, "%s%s", t[i][1], rest);
            return;
        }
    }
}

int sdxl_svc_request_parse(const sdxl_json *obj, sdxl_svc_dialect d, sdxl_svc_request *r, sdxl_svc_issues *is) {
    sdxl_svc_request_init(r);
    int before = is->n;
    if (!obj || obj->type != SDXL_JSON_OBJECT) {
        sdxl_svc_issue_add(is, "wrong_type", "", "a request must be a JSON object");
        return SDXL_ERR_ARG;
    }
    if (d == SDXL_DIALECT_AUTO) d = detect(obj);
    r->dialect = d;
    rd c = {.r = r, .is = is};
    switch (d) {
    case SDXL_DIALECT_ORCH_PAYLOAD: parse_orch_payload(&c, obj); break;
    case SDXL_DIALECT_ORCH_BASIC: parse_orch_basic(&c, obj); break;
    case SDXL_DIALECT_ORCH_CSHARP: parse_csharp(&c, obj); break;
    case SDXL_DIALECT_A1111_TXT2IMG: parse_a1111(&c, obj, 0); break;
    case SDXL_DIALECT_A1111_IMG2IMG: parse_a1111(&c, obj, 1); break;
    default: parse_native(&c, obj); break;
    }
    if (r->storage && ((store *)r->storage)->oom) sdxl_svc_issue_add(is, "nomem", "", "out of memory");
    int first_check = is->n;
    sdxl_svc_request_validate(r, is);
    for (int i = first_check; i < is->n; i++) dialect_path(d, is->items[i].field, sizeof is->items[i].field);
    return is->n > before ? SDXL_ERR_ARG : SDXL_OK;
}

/* ---- validation ------------------------------------------------------------------------------ */

/* Names of models and adapters: a stem, "org/name" or a relative path; never ".." or absolute. */
static void check_name(sdxl_svc_issues *is, const char *field, const char *s) {
    if (!s) return;
    if (!*s) {
        sdxl_svc_issue_add(is, "bad_value", field, "must not be empty");
        return;
    }
    if (strlen(s) > 512) {
        sdxl_svc_issue_add(is, "limit", field, "longer than 512 bytes");
        return;
    }
    if (s[0] == '/' || s[0] == '\\' || strstr(s, "..") || strchr(s, '\\')) {
        /* absolute paths are allowed only when they lie inside a configured root: the engine decides */
        if (s[0] == '/' && !strstr(s, "..")) return;
        sdxl_svc_issue_add(is, "path_refused", field, "\"%.60s\" leaves the model roots", s);
    }
}

static int looks_base64(const char *s) {
    if (!strncmp(s, "data:", 5)) return 1;
    size_t n = strlen(s);
    if (n < 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!(isalnum((unsigned char)ch) || ch == '+' || ch == '/' || ch == '=' || ch == '\n' || ch == '\r'))
            return 0;
    }
    return 1;
}

static void check_image_ref(sdxl_svc_issues *is, const char *field, const char *s) {
    if (!s) return;
    if (!*s) {
        sdxl_svc_issue_add(is, "bad_value", field, "must not be empty");
        return;
    }
    if (looks_base64(s)) return;
    if (strstr(s, "..")) sdxl_svc_issue_add(is, "path_refused", field, "\"..\" is not allowed in an image path");
}

const char *sdxl_svc_scheduler_alias(const char *name) {
    /* the orchestrator's short names and the Python side's legacy table, onto registry names */
    static const char *const tab[][2] = {
        {"DPM++", "DPMSolverMultistepScheduler"},
        {"DPMSolverMultistep", "DPMSolverMultistepScheduler"},
        {"DPMSolverSinglestep", "DPMSolverSinglestepScheduler"},
        {"EulerC", "EulerDiscreteScheduler"},
        {"EulerAncestral", "EulerAncestralDiscreteScheduler"},
        {"EulerA", "EulerAncestralDiscreteScheduler"},
        {"Euler", "EulerDiscreteScheduler"},
        {"KDPM2", "KDPM2DiscreteScheduler"},
        {"KDPM2Ancestral", "KDPM2AncestralDiscreteScheduler"},
        {"EulerDiscrete", "EulerDiscreteScheduler"},
        {"HeunDiscrete", "HeunDiscreteScheduler"},
        {"LMSDiscrete", "LMSDiscreteScheduler"},
        {"UniPCMultistep", "UniPCMultistepScheduler"},
        {"DDIM", "DDIMScheduler"},
        {"PNDM", "PNDMScheduler"},
        {"LMS", "LMSDiscreteScheduler"},
        {"Heun", "HeunDiscreteScheduler"},
        {"UniPC", "UniPCMultistepScheduler"},
    };
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(name, tab[i][0])) return tab[i][1];
    sdxl_sched_choice ch;
    sdxl_err e;
    return sdxl_sched_resolve(name, NULL, &ch, &e) == SDXL_OK ? name : NULL;
}

int sdxl_svc_request_validate(const sdxl_svc_request *r, sdxl_svc_issues *is) {
    int before = is->n;
    const sdxl_gen_params *g = &r->g;
    if (g->width && (g->width < 64 || g->width % 8))
        sdxl_svc_issue_add(is, "out_of_range", "width", "must be a multiple of 8, at least 64, got %d", g->width);
    if (g->height && (g->height < 64 || g->height % 8))
        sdxl_svc_issue_add(is, "out_of_range", "height", "must be a multiple of 8, at least 64, got %d", g->height);
    if (g->prompt && strlen(g->prompt) > 65536) sdxl_svc_issue_add(is, "limit", "prompt", "longer than 65536 bytes");
    if (g->negative_prompt && strlen(g->negative_prompt) > 65536)
        sdxl_svc_issue_add(is, "limit", "negative_prompt", "longer than 65536 bytes");
    if (g->sampler) {
        const char *canon = sdxl_svc_scheduler_alias(g->sampler);
        sdxl_sched_choice ch;
        sdxl_err e = {0};
        if (!canon || sdxl_sched_resolve(canon, g->schedule, &ch, &e) != SDXL_OK) {
            if (!canon) sdxl_sched_resolve(g->sampler, g->schedule, &ch, &e);
            const char *m = strstr(e.msg, "unknown");
            sdxl_svc_issue_add(is, "unknown_scheduler", "sampler", "%s", m ? m : e.msg);
        } else {
            const sdxl_sampler_traits *t = sdxl_sampler_traits_get(ch.sampler);
            if (t && !t->implemented)
                sdxl_svc_issue_add(is, "unsupported", "sampler", "\"%.40s\" (%s) is not implemented in this build",
                                   g->sampler, t->name);
        }
    } else if (g->schedule) {
        sdxl_sched_choice ch;
        sdxl_err e = {0};
        if (sdxl_sched_resolve("Euler", g->schedule, &ch, &e) != SDXL_OK)
            sdxl_svc_issue_add(is, "unknown_scheduler", "schedule", "%s", e.msg);
    }
    if (g->rng && strcmp(g->rng, "torch") && strcmp(g->rng, "philox") && strcmp(g->rng, "fast"))
        sdxl_svc_issue_add(is, "bad_value", "rng", "must be torch, philox or fast, got \"%.20s\"", g->rng);
    check_name(is, "model", r->base);
    check_name(is, "refiner", r->refiner);
    check_name(is, "vae", r->vae);
    check_image_ref(is, "init_image", r->init_image);
    check_image_ref(is, "mask", r->mask);
    if (r->mask && !r->init_image) sdxl_svc_issue_add(is, "missing_field", "init_image", "a mask needs an init image");
    for (int i = 0; i < r->n_loras; i++) {
        char f[48];
        snprintf(f, sizeof f, "loras[%d].name", i);
        if (!r->loras[i].name) continue; /* reported as missing already */
        check_name(is, f, r->loras[i].name);
    }
    for (int i = 0; i < r->n_controls; i++) {
        const sdxl_svc_control *u = &r->controls[i];
        char f[48];
        snprintf(f, sizeof f, "controls[%d].image", i);
        check_image_ref(is, f, u->image);
        if (!u->image)
            sdxl_svc_issue_add(is, "missing_field", f, "a control unit needs an image");
        snprintf(f, sizeof f, "controls[%d].model", i);
        if (u->model) check_name(is, f, u->model);
        else if (!u->type) sdxl_svc_issue_add(is, "missing_field", f, "a control unit needs a model or a type");
        if (u->guidance_start > u->guidance_end) {
            snprintf(f, sizeof f, "controls[%d].guidance_end", i);
            sdxl_svc_issue_add(is, "out_of_range", f, "must not be below guidance_start");
        }
    }
    if (r->format) {
        if (strcasecmp(r->format, "png") && strcasecmp(r->format, "jpeg") && strcasecmp(r->format, "jpg") &&
            strcasecmp(r->format, "webp"))
            sdxl_svc_issue_add(is, "bad_value", r->dialect == SDXL_DIALECT_ORCH_PAYLOAD ? "output.format" : "format",
                               "must be png, jpeg or webp, got \"%.20s\"", r->format);
    }
    if (r->save_path && (r->save_path[0] == '/' || strstr(r->save_path, "..")))
        sdxl_svc_issue_add(is, "path_refused", "save_path", "must be a relative folder without \"..\"");
    if (r->file_prefix && (strchr(r->file_prefix, '/') || strstr(r->file_prefix, "..") || strlen(r->file_prefix) > 64))
        sdxl_svc_issue_add(is, "bad_value", "file_prefix", "must be a plain name of at most 64 bytes");
    if (r->upscale_factor > 1) {
        const char *m = r->upscale_method && *r->upscale_method ? r->upscale_method : "(none)";
        if (strcasecmp(m, "lanczos"))
            sdxl_svc_issue_add(is, "unsupported", "upscale.method",
                               "\"%.40s\" is not available; this worker upscales with \"lanczos\" only", m);
    }
    int n_images = g->batch_count * (g->batch_size > 0 ? g->batch_size : 1);
    if (n_images > 4096) sdxl_svc_issue_add(is, "limit", "batch_count", "at most 4096 images per request");
    return is->n > before ? SDXL_ERR_ARG : SDXL_OK;
}

/* ---- canonical JSON --------------------------------------------------------------------------- */

static void kv_str(sdxl_strbuf *b, int *first, const char *k, const char *v) {
    if (!v) return;
    sdxl_sb_printf(b, "%s\"%s\":", *first ? "" : ",", k);
    sdxl_sb_json(b, v);
    *first = 0;
}

static void kv_num(sdxl_strbuf *b, int *first, const char *k, double v) {
    sdxl_sb_printf(b, "%s\"%s\":%.9g", *first ? "" : ",", k, v);
    *first = 0;
}

static void kv_int(sdxl_strbuf *b, int *first, const char *k, long long v) {
    sdxl_sb_printf(b, "%s\"%s\":%lld", *first ? "" : ",", k, v);
    *first = 0;
}

void sdxl_svc_request_to_json(const sdxl_svc_request *r, sdxl_strbuf *b) {
    const sdxl_gen_params *g = &r->g;
    sdxl_gen_params d;
    sdxl_gen_params_init(&d);
    int f = 1;
    sdxl_sb_str(b, "{");
    kv_int(b, &f, "schema_version", SDXL_SVC_SCHEMA_VERSION);
    kv_str(b, &f, "prompt", g->prompt ? g->prompt : "");
    kv_str(b, &f, "negative_prompt", g->negative_prompt);
    kv_str(b, &f, "prompt_2", g->prompt_2);
    kv_str(b, &f, "negative_prompt_2", g->negative_prompt_2);
    kv_int(b, &f, "width", g->width);
    kv_int(b, &f, "height", g->height);
    kv_int(b, &f, "steps", g->steps);
    kv_num(b, &f, "cfg_scale", g->cfg_scale);
    if (g->guidance_rescale) kv_num(b, &f, "guidance_rescale", g->guidance_rescale);
    kv_str(b, &f, "sampler", g->sampler);
    kv_str(b, &f, "schedule", g->schedule);
    kv_int(b, &f, "seed", (long long)g->seed);
    kv_str(b, &f, "rng", g->rng);
    kv_int(b, &f, "batch_count", g->batch_count);
    if (g->batch_size) kv_int(b, &f, "batch_size", g->batch_size);
    const struct { const char *k; int v, def; } ints[] = {
        {"original_width", g->original_width, 0}, {"original_height", g->original_height, 0},
        {"crop_left", g->crop_left, 0}, {"crop_top", g->crop_top, 0}, {"target_width", g->target_width, 0},
        {"target_height", g->target_height, 0}, {"negative_original_width", g->negative_original_width, 0},
        {"negative_original_height", g->negative_original_height, 0},
        {"negative_crop_left", g->negative_crop_left, -1}, {"negative_crop_top", g->negative_crop_top, -1},
        {"negative_target_width", g->negative_target_width, 0},
        {"negative_target_height", g->negative_target_height, 0}, {"mask_blur", g->mask_blur, 4},
        {"clip_skip", g->clip_skip, 0}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].v != ints[i].def) kv_int(b, &f, ints[i].k, ints[i].v);
    if (g->refiner_switch != d.refiner_switch) kv_num(b, &f, "refiner_switch", g->refiner_switch);
    if (g->aesthetic_score != d.aesthetic_score) kv_num(b, &f, "aesthetic_score", g->aesthetic_score);
    if (g->negative_aesthetic_score != d.negative_aesthetic_score)
        kv_num(b, &f, "negative_aesthetic_score", g->negative_aesthetic_score);
    kv_num(b, &f, "strength", g->strength);
    kv_str(b, &f, "init_image", r->init_image);
    kv_str(b, &f, "mask", r->mask);
    kv_str(b, &f, "model", r->base);
    kv_str(b, &f, "refiner", r->refiner);
    kv_str(b, &f, "vae", r->vae);
    if (g->eta_noise_seed_delta) kv_int(b, &f, "eta_noise_seed_delta", g->eta_noise_seed_delta);
    if (g->enable_hr) {
        sdxl_sb_str(b, ",\"enable_hr\":true");
        kv_num(b, &f, "hr_scale", g->hr_scale);
        if (g->hr_resize_x) kv_int(b, &f, "hr_resize_x", g->hr_resize_x);
        if (g->hr_resize_y) kv_int(b, &f, "hr_resize_y", g->hr_resize_y);
        if (g->hr_second_pass_steps) kv_int(b, &f, "hr_second_pass_steps", g->hr_second_pass_steps);
        kv_num(b, &f, "hr_denoising_strength", g->hr_denoising_strength);
        kv_str(b, &f, "hr_upscaler", g->hr_upscaler);
        kv_str(b, &f, "hr_sampler", g->hr_sampler);
        kv_str(b, &f, "hr_schedule", g->hr_schedule);
        kv_str(b, &f, "hr_prompt", g->hr_prompt);
        kv_str(b, &f, "hr_negative_prompt", g->hr_negative_prompt);
    }
    if (r->n_loras) {
        sdxl_sb_str(b, ",\"loras\":[");
        for (int i = 0; i < r->n_loras; i++) {
            int ff = 1;
            sdxl_sb_str(b, i ? ",{" : "{");
            kv_str(b, &ff, "name", r->loras[i].name ? r->loras[i].name : "");
            kv_num(b, &ff, "weight", r->loras[i].weight);
            kv_num(b, &ff, "te_weight", r->loras[i].te_weight);
            sdxl_sb_str(b, "}");
        }
        sdxl_sb_str(b, "]");
    }
    if (r->n_controls) {
        sdxl_sb_str(b, ",\"controls\":[");
        for (int i = 0; i < r->n_controls; i++) {
            const sdxl_svc_control *u = &r->controls[i];
            int ff = 1;
            sdxl_sb_str(b, i ? ",{" : "{");
            kv_str(b, &ff, "model", u->model);
            kv_str(b, &ff, "type", u->type);
            kv_str(b, &ff, "image", u->image);
            kv_num(b, &ff, "scale", u->scale);
            kv_num(b, &ff, "guidance_start", u->guidance_start);
            kv_num(b, &ff, "guidance_end", u->guidance_end);
            kv_str(b, &ff, "preprocess", u->preprocess);
            if (u->resolution) kv_int(b, &ff, "resolution", u->resolution);
            sdxl_sb_str(b, "}");
        }
        sdxl_sb_str(b, "]");
    }
    kv_str(b, &f, "format", r->format);
    kv_int(b, &f, "quality", r->quality);
    kv_str(b, &f, "save_path", r->save_path);
    kv_str(b, &f, "file_prefix", r->file_prefix);
    if (r->upscale_factor > 1) {
        sdxl_sb_printf(b, ",\"upscale\":{\"factor\":%d", r->upscale_factor);
        if (r->upscale_method) {
            sdxl_sb_str(b, ",\"method\":");
            sdxl_sb_json(b, r->upscale_method);
        }
        sdxl_sb_str(b, "}");
    }
    kv_int(b, &f, "priority", r->priority);
    if (r->timeout_s > 0) kv_num(b, &f, "timeout", r->timeout_s);
    kv_str(b, &f, "client_id", r->client_id);
    if (r->preview_every) kv_int(b, &f, "preview_every", r->preview_every);
    sdxl_sb_str(b, "}");
}

int sdxl_svc_request_copy(const sdxl_svc_request *src, sdxl_svc_request *dst) {
    sdxl_strbuf b = {0};
    sdxl_svc_request_to_json(src, &b);
    if (b.oom) {
        sdxl_sb_free(&b);
        return SDXL_ERR_NOMEM;
    }
    sdxl_json *v = NULL;
    sdxl_err e;
    int st = sdxl_json_parse(b.p, b.n, NULL, "request", &v, &e);
    sdxl_sb_free(&b);
    if (st) return st;
    sdxl_svc_issues is = {0};
    st = sdxl_svc_request_parse(v, SDXL_DIALECT_NATIVE, dst, &is);
    sdxl_json_free(v);
    if (st == SDXL_OK) {
        dst->dialect = src->dialect;
        dst->preview_every = src->preview_every;
    }
    return st;
}
