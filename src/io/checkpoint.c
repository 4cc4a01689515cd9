/* Checkpoint layouts: which file holds each network and under which key prefix, detected from
 * the keys alone. Networks then read their tensors by stripped name through this handle. */
#include "io/checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CKPT_MAX_PREFIX 64
#define CKPT_JSON_MAX (1u << 20) /* config.json / model_index.json size bound */

typedef struct ckpt_part {
    sdxl_st_file *file; /* borrowed from files[] */
    char prefix[CKPT_MAX_PREFIX];
    size_t prefix_len;
    sdxl_naming naming;
    size_t *idx; /* indices into the file's offset-ordered tensors */
    size_t n;
    uint64_t params;
    sdxl_json *config;
} ckpt_part;

struct sdxl_ckpt {
    char *path;
    sdxl_layout layout;
    sdxl_st_file *files[SDXL_PART_COUNT]; /* owned, each at most once */
    size_t n_files;
    ckpt_part part[SDXL_PART_COUNT];
    size_t *other; /* single file: tensors outside every part */
    size_t n_other;
    sdxl_json *model_index;
};

static const char *PART_NAMES[SDXL_PART_COUNT] = {"unet", "vae", "text_encoder", "text_encoder_2"};

const char *sdxl_part_name(sdxl_part p) { return (unsigned)p < SDXL_PART_COUNT ? PART_NAMES[p] : "?"; }

const char *sdxl_ckpt_layout_name(sdxl_layout l) {
    switch (l) {
    case SDXL_LAYOUT_SINGLE_FILE: return "single-file";
    case SDXL_LAYOUT_DIFFUSERS: return "diffusers";
    case SDXL_LAYOUT_STANDALONE: return "standalone";
    }
    return "?";
}

const char *sdxl_naming_name(sdxl_naming n) {
    switch (n) {
    case SDXL_NAMING_NONE: return "none";
    case SDXL_NAMING_ORIGINAL: return "original";
    case SDXL_NAMING_DIFFUSERS: return "diffusers";
    }
    return "?";
}

static int starts(const char *s, const char *pre) { return !strncmp(s, pre, strlen(pre)); }

static int any_starts(const char *s, const char *const *pres) {
    for (; *pres; pres++)
        if (starts(s, *pres)) return 1;
    return 0;
}

static const char *const UNET_ORIG[] = {"input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", NULL};
static const char *const UNET_DIFF[] = {"down_blocks.", "up_blocks.", "mid_block.", "time_embedding.", "conv_in.",
                                        "add_embedding.", NULL};
static const char *const VAE_ORIG[] = {"encoder.down.", "encoder.mid.", "decoder.up.", "decoder.mid.", NULL};
static const char *const VAE_DIFF[] = {"encoder.down_blocks.", "encoder.mid_block.", "decoder.up_blocks.",
                                       "decoder.mid_block.", NULL};
static const char *const VAE_ANY[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv.", NULL};
static const char *const CLIP_HF[] = {"text_model.", NULL};
static const char *const CLIP_OPEN[] = {"transformer.resblocks.", "token_embedding.", "positional_embedding", "ln_final.",
                                        NULL};

/* Naming of a part from its stripped names; NONE when nothing is recognised. */
static sdxl_naming detect_naming(sdxl_part p, const sdxl_st_file *f, const ckpt_part *cp, int *mixed) {
    int orig = 0, diff = 0;
    for (size_t i = 0; i < cp->n; i++) {
        const char *s = sdxl_st_at(f, cp->idx[i])->name + cp->prefix_len;
        switch (p) {
        case SDXL_PART_UNET:
            orig |= any_starts(s, UNET_ORIG);
            diff |= any_starts(s, UNET_DIFF);
            break;
        case SDXL_PART_VAE:
            orig |= any_starts(s, VAE_ORIG);
            diff |= any_starts(s, VAE_DIFF);
            break;
        case SDXL_PART_TE1: diff |= any_starts(s, CLIP_HF); break;
        case SDXL_PART_TE2:
            orig |= any_starts(s, CLIP_OPEN);
            diff |= any_starts(s, CLIP_HF);
            break;
        default: break;
        }
    }
    *mixed = orig && diff;
    if (p == SDXL_PART_TE1 && diff) return cp->prefix_len ? SDXL_NAMING_ORIGINAL : SDXL_NAMING_DIFFUSERS;
    return orig ? SDXL_NAMING_ORIGINAL : diff ? SDXL_NAMING_DIFFUSERS : SDXL_NAMING_NONE;
}

/* Fills a part's tensor list: names starting with the prefix, or all names for prefix "". */
static int collect(sdxl_ckpt *c, sdxl_part p, sdxl_st_file *f, const char *prefix, sdxl_err *e) {
    ckpt_part *cp = &c->part[p];
    size_t pl = strlen(prefix), n = sdxl_st_count(f);
    if (pl >= CKPT_MAX_PREFIX) return sdxl_seterr(e, SDXL_ERR_INTERNAL, "%s: prefix too long", c->path);
    cp->idx = malloc((n ? n : 1) * sizeof *cp->idx);
    if (!cp->idx) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory", c->path);
    memcpy(cp->prefix, prefix, pl + 1);
    cp->prefix_len = pl;
    cp->file = f;
    for (size_t i = 0; i < n; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        if (pl && (strncmp(t->name, prefix, pl) || !t->name[pl])) continue;
        cp->idx[cp->n++] = i;
        cp->params += t->numel;
    }
    int mixed;
    cp->naming = detect_naming(p, f, cp, &mixed);
    if (mixed)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: %s tensors%s%s%s mix original and diffusers names", sdxl_st_path(f),
                           PART_NAMES[p], pl ? " under \"" : "", prefix, pl ? "\"" : "");
    if (cp->naming == SDXL_NAMING_NONE)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: %s tensors%s%s%s have no recognisable %s names (first: \"%.200s\")",
                           sdxl_st_path(f), PART_NAMES[p], pl ? " under \"" : "", prefix, pl ? "\"" : "", PART_NAMES[p],
                           cp->n ? sdxl_st_at(f, cp->idx[0])->name : "");
    return SDXL_OK;
}

/* "conditioner.embedders.N.<kind>." -> N, else -1. */
static long embedder_index(const char *name, const char *kind) {
    static const char pre[] = "conditioner.embedders.";
    if (!starts(name, pre)) return -1;
    const char *s = name + sizeof pre - 1;
    if (*s < '0' || *s > '9') return -1;
    long n = 0;
    for (; *s >= '0' && *s <= '9' && n < 1000; s++) n = n * 10 + (*s - '0');
    if (*s != '.' || !starts(s + 1, kind)) return -1;
    return n;
}

/* Single files and prefixed standalone files: each key goes to the part its prefix names. */
static int open_prefixed(sdxl_ckpt *c, sdxl_st_file *f, int *found, sdxl_err *e) {
    static const struct {
        const char *prefix;
        sdxl_part part;
    } FIXED[] = {
        {"model.diffusion_model.", SDXL_PART_UNET}, {"first_stage_model.", SDXL_PART_VAE},
        {"unet.", SDXL_PART_UNET}, {"vae.", SDXL_PART_VAE},
        {"text_encoder.", SDXL_PART_TE1}, {"text_encoder_2.", SDXL_PART_TE2},
    };
    char prefix[SDXL_PART_COUNT][CKPT_MAX_PREFIX] = {{0}};
    int have[SDXL_PART_COUNT] = {0};
    size_t n = sdxl_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const char *name = sdxl_st_at(f, i)->name;
        char cand[CKPT_MAX_PREFIX] = "";
        int part = -1;
        long k;
        for (size_t j = 0; j < sizeof FIXED / sizeof *FIXED; j++)
            if (starts(name, FIXED[j].prefix)) {
                snprintf(cand, sizeof cand, "%s", FIXED[j].prefix);
                part = (int)FIXED[j].part;
                break;
            }
        if (part < 0 && (k = embedder_index(name, "transformer.")) >= 0) {
            snprintf(cand, sizeof cand, "conditioner.embedders.%ld.transformer.", k);
            part = SDXL_PART_TE1;
        } else if (part < 0 && (k = embedder_index(name, "model.")) >= 0) {
            snprintf(cand, sizeof cand, "conditioner.embedders.%ld.model.", k);
            part = SDXL_PART_TE2;
        }
        if (part < 0) continue;
        if (!have[part]) {
            have[part] = 1;
            memcpy(prefix[part], cand, sizeof cand);
        } else if (strcmp(prefix[part], cand)) {
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: both \"%s\" and \"%s\" hold a %s; cannot tell which to use", c->path,
                               prefix[part], cand, PART_NAMES[part]);
        }
    }
    *found = 0;
    for (int p = 0; p < SDXL_PART_COUNT; p++) {
        if (!have[p]) continue;
        int st = collect(c, (sdxl_part)p, f, prefix[p], e);
        if (st) return st;
        (*found)++;
    }
    if (!*found) return SDXL_OK;
    c->other = malloc((n ? n : 1) * sizeof *c->other);
    if (!c->other) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory", c->path);
    for (size_t i = 0; i < n; i++) {
        const char *name = sdxl_st_at(f, i)->name;
        int mine = 0;
        for (int p = 0; p < SDXL_PART_COUNT && !mine; p++)
            mine = have[p] && !strncmp(name, c->part[p].prefix, c->part[p].prefix_len) && name[c->part[p].prefix_len];
        if (!mine) c->other[c->n_other++] = i;
    }
    return SDXL_OK;
}

/* A file of one bare network: tell which from its names. */
static int bare_part(const sdxl_ckpt *c, const sdxl_st_file *f, sdxl_part *out, sdxl_err *e) {
    int unet = 0, vae = 0, te_hf = 0, te_open = 0, proj = 0, cnet = 0;
    size_t n = sdxl_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const char *s = sdxl_st_at(f, i)->name;
        unet |= any_starts(s, UNET_ORIG) || any_starts(s, UNET_DIFF);
        vae |= any_starts(s, VAE_ANY);
        te_hf |= any_starts(s, CLIP_HF);
        te_open |= any_starts(s, CLIP_OPEN);
        proj |= !strcmp(s, "text_projection.weight");
        cnet |= starts(s, "controlnet_");
    }
    if (cnet)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: holds ControlNet weights (controlnet_*), not an SDXL checkpoint",
                           c->path);
    int kinds = (unet != 0) + (vae != 0) + ((te_hf || te_open) != 0);
    if (kinds == 0)
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: no SDXL network recognised from the tensor names (first: \"%.200s\"); expected "
                           "model.diffusion_model.*, first_stage_model.*, conditioner.*, or a bare UNet/VAE/text encoder",
                           c->path, n ? sdxl_st_at(f, 0)->name : "(no tensors)");
    if (kinds > 1)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor names mix%s%s%s without prefixes; cannot tell the network",
                           c->path, unet ? " UNet" : "", vae ? " VAE" : "", (te_hf || te_open) ? " text-encoder" : "");
    *out = unet ? SDXL_PART_UNET : vae ? SDXL_PART_VAE : (te_open || proj) ? SDXL_PART_TE2 : SDXL_PART_TE1;
    return SDXL_OK;
}

static int add_file(sdxl_ckpt *c, const char *path, sdxl_st_file **out, sdxl_err *e) {
    int st = sdxl_st_open(path, out, e);
    if (st) return st;
    c->files[c->n_files++] = *out;
    return SDXL_OK;
}

static int open_file(sdxl_ckpt *c, const char *path, sdxl_err *e) {
    sdxl_st_file *f;
    int st = add_file(c, path, &f, e);
    if (st) return st;
    for (size_t i = 0; i < sdxl_st_count(f); i++) {
        const char *name = sdxl_st_at(f, i)->name;
        if (starts(name, "lora_") || strstr(name, ".lora_") || strstr(name, ".lora."))
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: holds LoRA weights (\"%.200s\"), not a checkpoint; load it as a LoRA",
                               path, name);
    }
    int found = 0;
    if ((st = open_prefixed(c, f, &found, e))) return st;
    if (found) {
        c->layout = found >= 2 ? SDXL_LAYOUT_SINGLE_FILE : SDXL_LAYOUT_STANDALONE;
        return SDXL_OK;
    }
    sdxl_part p;
    if ((st = bare_part(c, f, &p, e))) return st;
    c->layout = SDXL_LAYOUT_STANDALONE;
    return collect(c, p, f, "", e);
}

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* A diffusers component folder: config.json plus weights under their canonical or .fp16 name. */
static int open_component(sdxl_ckpt *c, sdxl_part p, const char *dir, int required, sdxl_err *e) {
    const char *base = (p == SDXL_PART_TE1 || p == SDXL_PART_TE2) ? "model" : "diffusion_pytorch_model";
    char w[4096], w16[4096], cfg[4096];
    if ((size_t)snprintf(w, sizeof w, "%s/%s.safetensors", dir, base) >= sizeof w ||
        (size_t)snprintf(w16, sizeof w16, "%s/%s.fp16.safetensors", dir, base) >= sizeof w16 ||
        (size_t)snprintf(cfg, sizeof cfg, "%s/config.json", dir) >= sizeof cfg)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: path too long", dir);
    const char *wp = is_file(w) ? w : is_file(w16) ? w16 : NULL;
    if (!wp) {
        if (!required && !is_dir(dir)) return SDXL_OK;
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: no %s.safetensors (nor %s.fp16.safetensors) for the %s", dir, base, base,
                           PART_NAMES[p]);
    }
    sdxl_st_file *f;
    int st = add_file(c, wp, &f, e);
    if (st) return st;
    if ((st = collect(c, p, f, "", e))) return st;
    sdxl_json_opts o;
    sdxl_json_opts_init(&o);
    if ((st = sdxl_json_parse_file(cfg, CKPT_JSON_MAX, &o, &c->part[p].config, e))) return st;
    if (c->part[p].config->type != SDXL_JSON_OBJECT)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: must hold a JSON object", cfg);
    return SDXL_OK;
}

/* model_index.json lists a component as ["library", "Class"], or [null, null] / null when absent. */
static int index_lists(const sdxl_json *mi, const char *name) {
    const sdxl_json *v = sdxl_json_get(mi, name);
    if (!v || v->type == SDXL_JSON_NULL) return 0;
    if (v->type == SDXL_JSON_ARRAY) {
        for (size_t i = 0; i < v->len; i++)
            if (v->items[i].type != SDXL_JSON_NULL) return 1;
        return 0;
    }
    return 1;
}

static int open_folder(sdxl_ckpt *c, const char *path, sdxl_err *e) {
    char mi[4096], sub[4096];
    if ((size_t)snprintf(mi, sizeof mi, "%s/model_index.json", path) >= sizeof mi)
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: path too long", path);
    if (!is_file(mi)) {
        /* a lone component folder (e.g. a custom VAE): config.json + weights */
        char cfg[4096];
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        const char *cands[] = {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                               "model.safetensors", "model.fp16.safetensors"};
        for (size_t i = 0; i < 4; i++) {
            snprintf(sub, sizeof sub, "%s/%s", path, cands[i]);
            if (!is_file(sub) || !is_file(cfg)) continue;
            sdxl_st_file *f;
            int st = add_file(c, sub, &f, e);
            if (st) return st;
            sdxl_part p;
            if ((st = bare_part(c, f, &p, e))) return st;
            if ((st = collect(c, p, f, "", e))) return st;
            c->layout = SDXL_LAYOUT_STANDALONE;
            return sdxl_json_parse_file(cfg, CKPT_JSON_MAX, NULL, &c->part[p].config, e);
        }
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: a folder must be a diffusers pipeline (model_index.json) or one component "
                           "(config.json + diffusion_pytorch_model.safetensors)",
                           path);
    }
    int st = sdxl_json_parse_file(mi, CKPT_JSON_MAX, NULL, &c->model_index, e);
    if (st) return st;
    if (c->model_index->type != SDXL_JSON_OBJECT) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: must hold a JSON object", mi);
    c->layout = SDXL_LAYOUT_DIFFUSERS;
    for (int p = 0; p < SDXL_PART_COUNT; p++) {
        int listed = index_lists(c->model_index, PART_NAMES[p]);
        snprintf(sub, sizeof sub, "%s/%s", path, PART_NAMES[p]);
        if (!listed && !is_dir(sub)) continue;
        if ((st = open_component(c, (sdxl_part)p, sub, listed, e))) return st;
    }
    if (!c->part[SDXL_PART_UNET].file)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: diffusers folder without a unet/ component", path);
    return SDXL_OK;
}

int sdxl_ckpt_open(const char *path, sdxl_ckpt **out, sdxl_err *e) {
    if (!out) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_ckpt_open: out is required");
    *out = NULL;
    if (!path) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_ckpt_open: path is required");
    sdxl_ckpt *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    }
    struct stat sb;
    int st;
    if (stat(path, &sb) != 0) st = sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    else if (S_ISDIR(sb.st_mode)) st = open_folder(c, path, e);
    else st = open_file(c, path, e);
    if (st) {
        sdxl_ckpt_close(c);
        return st;
    }
    *out = c;
    return SDXL_OK;
}

int sdxl_ckpt_wrap(sdxl_st_file *f, sdxl_part p, const char *prefix, sdxl_json *config, const char *label,
                   sdxl_ckpt **out, sdxl_err *e) {
    *out = NULL;
    sdxl_ckpt *c = (unsigned)p < SDXL_PART_COUNT ? calloc(1, sizeof *c) : NULL;
    if (!c || !(c->path = strdup(label ? label : sdxl_st_path(f)))) {
        free(c);
        sdxl_st_close(f);
        sdxl_json_free(config);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    }
    c->files[c->n_files++] = f;
    c->layout = SDXL_LAYOUT_STANDALONE;
    c->part[p].config = config;
    int st = collect(c, p, f, prefix ? prefix : "", e);
    if (st) {
        sdxl_ckpt_close(c);
        return st;
    }
    *out = c;
    return SDXL_OK;
}

void sdxl_ckpt_close(sdxl_ckpt *c) {
    if (!c) return;
    for (int p = 0; p < SDXL_PART_COUNT; p++) {
        free(c->part[p].idx);
        sdxl_json_free(c->part[p].config);
    }
    for (size_t i = 0; i < c->n_files; i++) sdxl_st_close(c->files[i]);
    sdxl_json_free(c->model_index);
    free(c->other);
    free(c->path);
    free(c);
}

static const ckpt_part *part_of(const sdxl_ckpt *c, sdxl_part p) {
    return c && (unsigned)p < SDXL_PART_COUNT && c->part[p].file ? &c->part[p] : NULL;
}

sdxl_layout sdxl_ckpt_layout(const sdxl_ckpt *c) { return c ? c->layout : SDXL_LAYOUT_STANDALONE; }
sdxl_naming sdxl_ckpt_naming(const sdxl_ckpt *c, sdxl_part p) {
    const ckpt_part *cp = part_of(c, p);
    return cp ? cp->naming : SDXL_NAMING_NONE;
}
const sdxl_st_file *sdxl_ckpt_file(const sdxl_ckpt *c, sdxl_part p) {
    const ckpt_part *cp = part_of(c, p);
    return cp ? cp->file : NULL;
}
const char *sdxl_ckpt_prefix(const sdxl_ckpt *c, sdxl_part p) {
    const ckpt_part *cp = part_of(c, p);
    return cp ? cp->prefix : NULL;
}
size_t sdxl_ckpt_count(const sdxl_ckpt *c, sdxl_part p) {
    const ckpt_part *cp = part_of(c, p);
    return cp ? cp->n : 0;
}
uint64_t sdxl_ckpt_params(const sdxl_ckpt *c, sdxl_part p) {
    const ckpt_part *cp = part_of(c, p);
    return cp ? cp->params : 0;
}
const sdxl_json *sdxl_ckpt_config(const sdxl_ckpt *c, sdxl_part p) {
    const ckpt_part *cp = part_of(c, p);
    return cp ? cp->config : NULL;
}
const sdxl_json *sdxl_ckpt_model_index(const sdxl_ckpt *c) { return c ? c->model_index : NULL; }
const char *sdxl_ckpt_path(const sdxl_ckpt *c) { return c ? c->path : NULL; }
size_t sdxl_ckpt_other_count(const sdxl_ckpt *c) { return c ? c->n_other : 0; }
const sdxl_st_tensor *sdxl_ckpt_other_at(const sdxl_ckpt *c, size_t i) {
    return c && i < c->n_other ? sdxl_st_at(c->files[0], c->other[i]) : NULL;
}

const char *sdxl_ckpt_name_at(const sdxl_ckpt *c, sdxl_part p, size_t i, const sdxl_st_tensor **t) {
    const ckpt_part *cp = part_of(c, p);
    if (t) *t = NULL;
    if (!cp || i >= cp->n) return NULL;
    const sdxl_st_tensor *x = sdxl_st_at(cp->file, cp->idx[i]);
    if (t) *t = x;
    return x->name + cp->prefix_len;
}

const sdxl_st_tensor *sdxl_ckpt_find(const sdxl_ckpt *c, sdxl_part p, const char *name) {
    const ckpt_part *cp = part_of(c, p);
    if (!cp || !name) return NULL;
    if (!cp->prefix_len) return sdxl_st_find(cp->file, name);
    char full[CKPT_MAX_PREFIX + SDXL_ST_MAX_NAME + 1];
    size_t nl = strlen(name);
    if (cp->prefix_len + nl >= sizeof full) return NULL;
    memcpy(full, cp->prefix, cp->prefix_len);
    memcpy(full + cp->prefix_len, name, nl + 1);
    return sdxl_st_find(cp->file, full);
}

int sdxl_ckpt_read_f32(const sdxl_ckpt *c, sdxl_part p, const char *name, int ndim, const int64_t *shape, float *dst,
                       sdxl_err *e) {
    if (!c || !name || (ndim > 0 && !shape)) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_ckpt_read_f32: bad arguments");
    const ckpt_part *cp = part_of(c, p);
    if (!cp) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: has no %s", c->path, sdxl_part_name(p));
    const sdxl_st_tensor *t = sdxl_ckpt_find(c, p, name);
    if (!t)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: %s: missing tensor \"%s%.200s\"", sdxl_st_path(cp->file), PART_NAMES[p],
                           cp->prefix, name);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[192], want[192];
        size_t o = 0;
        got[0] = want[0] = 0;
        for (int i = 0; i < t->ndim && o < sizeof got; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%lld", i ? "," : "", (long long)t->shape[i]);
        o = 0;
        for (int i = 0; i < ndim && i < SDXL_ST_MAX_DIMS && o < sizeof want; i++)
            o += (size_t)snprintf(want + o, sizeof want - o, "%s%lld", i ? "," : "", (long long)shape[i]);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: %s: tensor \"%s\": shape [%s] but expected [%s]", sdxl_st_path(cp->file),
                           PART_NAMES[p], t->name, got, want);
    }
    int st = sdxl_st_to_f32(cp->file, t, dst, e);
    if (st) sdxl_err_prefix(e, "%s", PART_NAMES[p]);
    return st;
}

void sdxl_ckpt_release_pages(const sdxl_ckpt *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_files; i++) sdxl_st_release_all(c->files[i]);
}
