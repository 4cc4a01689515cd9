/* SDXL UNet (UNet2DConditionModel / sgm UNetModel). One walker lists every weight with its name
 * in both namings and its shape (validate, load, free all go through it); one forward body
 * runs either for real or in "measure" mode, which skips the math and only plans memory and
 * counts FLOPs, so the memory estimate is the forward itself. */
#include "denoise/unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tensor/tensor.h"

#define GN_GROUPS 32
#define GN_EPS_RES 1e-5f   /* resnets and conv_norm_out */
#define GN_EPS_XF 1e-6f    /* Transformer2DModel input norm */
#define LN_EPS 1e-5f
#define TIME_ID_DIM 256
#define WS_ALIGN 64
#define FF_CHUNK_BYTES (96u << 20) /* bound on the feed-forward temporaries of one row chunk */
#define MAX_SKIPS (1 + SDXL_UNET_MAX_LEVELS * (SDXL_UNET_MAX_RES + 1))
#define MAX_BATCH 1024
#define MAX_SIDE 4096 /* latent side: 32768 pixels */
#define MAX_CTX 4096

typedef struct unet_res {
    int64_t cin, cout;
    float *norm1_g, *norm1_b; /* [cin] */
    sdxl_conv2d conv1;        /* [cout, cin, 3, 3] */
    sdxl_linear temb;         /* [cout, time_dim]: applied to SiLU(emb) */
    float *norm2_g, *norm2_b; /* [cout] */
    sdxl_conv2d conv2;        /* [cout, cout, 3, 3] */
    int has_skip;
    sdxl_conv2d skip;         /* [cout, cin, 1, 1] when cin != cout */
} unet_res;

typedef struct unet_tblock {
    float *n1_g, *n1_b;   /* [c] */
    sdxl_linear qkv;      /* attn1.to_q | to_k | to_v fused: [3c, c], no bias */
    sdxl_linear out1;     /* attn1.to_out.0: [c, c] */
    float *n2_g, *n2_b;   /* [c] */
    sdxl_linear q2;       /* attn2.to_q: [c, c], no bias */
    sdxl_linear kv2;      /* attn2.to_k | to_v fused: [2c, context_dim], no bias */
    sdxl_linear out2;     /* attn2.to_out.0: [c, c] */
    float *n3_g, *n3_b;   /* [c] */
    sdxl_linear ff1;      /* ff.net.0.proj: [8c, c] = [h | gate] */
    sdxl_linear ff2;      /* ff.net.2: [c, 4c] */
} unet_tblock;

typedef struct unet_xf {
    int64_t c;
    int depth, heads;
    float *norm_g, *norm_b;     /* [c], GroupNorm eps 1e-6 */
    sdxl_linear proj_in;        /* [c, c] */
    unet_tblock *blocks;        /* [depth] */
    sdxl_linear proj_out;       /* [c, c] */
} unet_xf;

struct sdxl_unet {
    sdxl_unet_cfg cfg;
    sdxl_compute *c;
    int validate_only;
    int encoder_only; /* ControlNet trunk: no up blocks, no output head */
    int detected; /* the config is complete: the walker may run (free included) */

    sdxl_linear time1, time2; /* time_embed.0 [td, model_ch], .2 [td, td] */
    sdxl_linear add1, add2;   /* label_emb.0.0 [td, adm_in], .0.2 [td, td] */
    sdxl_conv2d conv_in;      /* [ch0, in_ch, 3, 3] */
    unet_res down_res[SDXL_UNET_MAX_LEVELS][SDXL_UNET_MAX_RES];
    unet_xf down_xf[SDXL_UNET_MAX_LEVELS][SDXL_UNET_MAX_RES];
    sdxl_conv2d down_conv[SDXL_UNET_MAX_LEVELS]; /* [c, c, 3, 3] stride 2 pad 1 */
    unet_res mid_res[2];
    unet_xf mid_xf;
    unet_res up_res[SDXL_UNET_MAX_LEVELS][SDXL_UNET_MAX_RES + 1]; /* indexed by level */
    unet_xf up_xf[SDXL_UNET_MAX_LEVELS][SDXL_UNET_MAX_RES + 1];
    sdxl_conv2d up_conv[SDXL_UNET_MAX_LEVELS]; /* [c, c, 3, 3] after nearest upsampling */
    float *out_g, *out_b;                      /* conv_norm_out [ch0] */
    sdxl_conv2d conv_out;                      /* [out_ch, ch0, 3, 3] */

    int n_skips;
    int64_t skip_ch[MAX_SKIPS];

    double load_seconds;
    uint64_t weight_bytes;

    /* activation workspace: a stack planned by a measure pass */
    char *ws;
    size_t ws_cap, ws_top, ws_peak;
    int measure;
    int ws_overflow; /* a measure pass whose sizes do not fit in size_t */
    double flops;
    int64_t plan_b, plan_h, plan_w, plan_l;

    int op_st;      /* first failure of an op that returns no status (device ops can fail) */
    sdxl_err op_err;
    sdxl_unet_feature_fn sink; /* set for the duration of sdxl_unet_encode */
    void *sink_user;

    int profile;
    double prof_s[SDXL_UNET_OP_COUNT];
    int64_t prof_n[SDXL_UNET_OP_COUNT];
    double prof_f[SDXL_UNET_OP_COUNT];
};

#define TRY(x)                                                                                                   \
    do {                                                                                                         \
        int rc_ = (x);                                                                                           \
        if (rc_ != SDXL_OK) return rc_;                                                                          \
    } while (0)

void sdxl_unet_opts_init(sdxl_unet_opts *o) { memset(o, 0, sizeof *o); }

const sdxl_unet_cfg *sdxl_unet_config(const sdxl_unet *u) { return &u->cfg; }

/* ---- names --------------------------------------------------------------------------------- */

static int is_diff(const sdxl_unet *u) { return u->cfg.naming == SDXL_NAMING_DIFFUSERS; }

/* Resnet parameter suffixes: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut. */
static const char *const RES_SUF[2][6] = {
    {"in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3", "skip_connection"},
    {"norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"},
};

static void nm_down_res(const sdxl_unet *u, char *b, size_t n, int l, int j) {
    if (is_diff(u)) snprintf(b, n, "down_blocks.%d.resnets.%d.", l, j);
    else snprintf(b, n, "input_blocks.%d.0.", 1 + l * (u->cfg.n_res + 1) + j);
}
static void nm_down_xf(const sdxl_unet *u, char *b, size_t n, int l, int j) {
    if (is_diff(u)) snprintf(b, n, "down_blocks.%d.attentions.%d.", l, j);
    else snprintf(b, n, "input_blocks.%d.1.", 1 + l * (u->cfg.n_res + 1) + j);
}
static void nm_down_conv(const sdxl_unet *u, char *b, size_t n, int l) {
    if (is_diff(u)) snprintf(b, n, "down_blocks.%d.downsamplers.0.conv.", l);
    else snprintf(b, n, "input_blocks.%d.0.op.", (l + 1) * (u->cfg.n_res + 1));
}
static void nm_mid_res(const sdxl_unet *u, char *b, size_t n, int k) {
    if (is_diff(u)) snprintf(b, n, "mid_block.resnets.%d.", k);
    else snprintf(b, n, "middle_block.%d.", 2 * k);
}
static void nm_mid_xf(const sdxl_unet *u, char *b, size_t n) {
    snprintf(b, n, "%s", is_diff(u) ? "mid_block.attentions.0." : "middle_block.1.");
}
/* Up blocks are numbered from the deepest level: block i serves level levels-1-i. */
static void nm_up_res(const sdxl_unet *u, char *b, size_t n, int l, int j) {
    int i = u->cfg.levels - 1 - l;
    if (is_diff(u)) snprintf(b, n, "up_blocks.%d.resnets.%d.", i, j);
    else snprintf(b, n, "output_blocks.%d.0.", i * (u->cfg.n_res + 1) + j);
}
static void nm_up_xf(const sdxl_unet *u, char *b, size_t n, int l, int j) {
    int i = u->cfg.levels - 1 - l;
    if (is_diff(u)) snprintf(b, n, "up_blocks.%d.attentions.%d.", i, j);
    else snprintf(b, n, "output_blocks.%d.1.", i * (u->cfg.n_res + 1) + j);
}
static void nm_up_conv(const sdxl_unet *u, char *b, size_t n, int l) {
    int i = u->cfg.levels - 1 - l;
    if (is_diff(u)) snprintf(b, n, "up_blocks.%d.upsamplers.0.conv.", i);
    else snprintf(b, n, "output_blocks.%d.%d.conv.", i * (u->cfg.n_res + 1) + u->cfg.n_res, u->cfg.up_depth[l] ? 2 : 1);
}

typedef struct top_names {
    const char *time1, *time2, *add1, *add2, *conv_in, *norm_out, *conv_out;
} top_names;
static const top_names TOP[2] = {
    {"time_embed.0.", "time_embed.2.", "label_emb.0.0.", "label_emb.0.2.", "input_blocks.0.0.", "out.0.", "out.2."},
    {"time_embedding.linear_1.", "time_embedding.linear_2.", "add_embedding.linear_1.", "add_embedding.linear_2.",
     "conv_in.", "conv_norm_out.", "conv_out."},
};

/* ---- config from shapes ------------------------------------------------------------------- */

static const sdxl_st_tensor *find2(const sdxl_ckpt *ck, const char *pre, const char *suf) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", pre, suf);
    return sdxl_ckpt_find(ck, SDXL_PART_UNET, name);
}

/* A tensor the config is read from: present and of rank ndim. */
static int probe(const sdxl_ckpt *ck, const char *pre, const char *suf, int ndim, const sdxl_st_tensor **t,
                 sdxl_err *e) {
    *t = find2(ck, pre, suf);
    if (!*t) return sdxl_seterr(e, SDXL_ERR_FORMAT, "UNet tensor '%s%s' is missing", pre, suf);
    if ((*t)->ndim != ndim)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "UNet tensor '%s%s': expected %d dimensions, got %d", pre, suf, ndim,
                           (*t)->ndim);
    for (int i = 0; i < ndim; i++)
        if ((*t)->shape[i] <= 0 || (*t)->shape[i] > (1 << 20))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "UNet tensor '%s%s': dimension %d is %lld, outside [1, 2^20]", pre,
                               suf, i, (long long)(*t)->shape[i]);
    return SDXL_OK;
}

static int count_blocks(const sdxl_ckpt *ck, const char *xf_pre) {
    int k = 0;
    char suf[64];
    for (;;) {
        snprintf(suf, sizeof suf, "transformer_blocks.%d.norm1.weight", k);
        if (!find2(ck, xf_pre, suf) || k > SDXL_UNET_MAX_DEPTH) return k;
        k++;
    }
}

/* Heads per level, by the documented rule order: override, config.json, yaml beside a single
 * file (num_head_channels), else head dim 64 (real SDXL everywhere). */
static int yaml_head_dim(const char *ckpt_path) {
    size_t n = strlen(ckpt_path);
    const char *ext = ".safetensors";
    size_t ne = strlen(ext);
    if (n <= ne || strcmp(ckpt_path + n - ne, ext) != 0 || n + 8 > 4096) return 0;
    char path[4096];
    memcpy(path, ckpt_path, n - ne);
    memcpy(path + n - ne, ".yaml", 6);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[512];
    int hd = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "num_head_channels:");
        if (p) {
            long v = strtol(p + strlen("num_head_channels:"), NULL, 10);
            if (v > 0 && v <= 4096) hd = (int)v;
            break;
        }
    }
    fclose(f);
    return hd;
}

static int heads_from(sdxl_unet_cfg *g, int hd, const char *rule, sdxl_err *e) {
    for (int l = 0; l < g->levels; l++) {
        int att = g->down_depth[l] || g->up_depth[l] || (l == g->levels - 1);
        if (!att) {
            g->heads[l] = 0;
            continue;
        }
        if (g->ch[l] % hd != 0)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED,
                               "UNet attention heads (%s rule): level %d has %lld channels, not a multiple of head dim "
                               "%d; pass an explicit head_dim",
                               rule, l, (long long)g->ch[l], hd);
        g->heads[l] = (int)(g->ch[l] / hd);
    }
    g->mid_heads = g->heads[g->levels - 1];
    g->heads_rule = rule;
    return SDXL_OK;
}

static int detect_heads(sdxl_unet *u, const sdxl_ckpt *ck, const sdxl_unet_opts *o, sdxl_err *e) {
    sdxl_unet_cfg *g = &u->cfg;
    if (o->head_dim > 0) return heads_from(g, o->head_dim, "override", e);
    const sdxl_json *cj = sdxl_ckpt_config(ck, SDXL_PART_UNET);
    if (cj) {
        const sdxl_json *h = sdxl_json_get(cj, "num_attention_heads");
        if (!h || h->type == SDXL_JSON_NULL) h = sdxl_json_get(cj, "attention_head_dim");
        if (h && (h->type == SDXL_JSON_NUMBER || h->type == SDXL_JSON_ARRAY)) {
            if (h->type == SDXL_JSON_ARRAY && h->len != (size_t)g->levels)
                return sdxl_seterr(e, SDXL_ERR_FORMAT, "unet/config.json attention_head_dim: %zu entries for %d levels",
                                   h->len, g->levels);
            for (int l = 0; l < g->levels; l++) {
                const sdxl_json *v = h->type == SDXL_JSON_ARRAY ? sdxl_json_at(h, (size_t)l) : h;
                if (!v || v->type != SDXL_JSON_NUMBER || !v->is_int || v->integer <= 0 || v->integer > 4096 ||
                    g->ch[l] % v->integer != 0)
                    return sdxl_seterr(e, SDXL_ERR_FORMAT,
                                       "unet/config.json attention_head_dim[%d]: must be a positive divisor of the "
                                       "level's %lld channels",
                                       l, (long long)g->ch[l]);
                g->heads[l] = (int)v->integer;
            }
            g->mid_heads = g->heads[g->levels - 1];
            g->heads_rule = "config.json";
            return SDXL_OK;
        }
    }
    int hd = yaml_head_dim(sdxl_ckpt_path(ck));
    if (hd > 0) return heads_from(g, hd, "yaml", e);
    return heads_from(g, 64, "head_dim 64", e);
}

static int detect(sdxl_unet *u, const sdxl_ckpt *ck, const sdxl_unet_opts *o, sdxl_err *e) {
    sdxl_unet_cfg *g = &u->cfg;
    g->naming = sdxl_ckpt_naming(ck, SDXL_PART_UNET);
    if (g->naming == SDXL_NAMING_NONE)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: no UNet tensors in this checkpoint", sdxl_ckpt_path(ck));
    const top_names *tn = &TOP[is_diff(u)];
    const sdxl_st_tensor *t;
    char pre[128];

    TRY(probe(ck, tn->conv_in, "weight", 4, &t, e));
    g->in_ch = t->shape[1];
    if (!u->encoder_only) {
        TRY(probe(ck, tn->conv_out, "weight", 4, &t, e));
        g->out_ch = t->shape[0];
    }
    TRY(probe(ck, tn->time1, "weight", 2, &t, e));
    g->time_dim = t->shape[0];
    g->model_ch = t->shape[1];
    if (!find2(ck, tn->add1, "weight"))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED,
                           "UNet tensor '%sweight' is missing: not an SDXL UNet (no text_time add-embedding)", tn->add1);
    TRY(probe(ck, tn->add1, "weight", 2, &t, e));
    g->adm_in = t->shape[1];
    g->time_id_dim = TIME_ID_DIM;
    g->groups = GN_GROUPS;

    char suf[64];
    snprintf(suf, sizeof suf, "%s.weight", RES_SUF[is_diff(u)][1]); /* conv1 */
    g->n_res = 0;
    for (;;) {
        nm_down_res(u, pre, sizeof pre, 0, g->n_res);
        if (!find2(ck, pre, suf)) break;
        if (++g->n_res > SDXL_UNET_MAX_RES)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "UNet: more than %d resnets per level", SDXL_UNET_MAX_RES);
    }
    if (g->n_res == 0) {
        nm_down_res(u, pre, sizeof pre, 0, 0);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "UNet tensor '%s%s' is missing", pre, suf);
    }
    g->levels = 0;
    for (;;) {
        nm_down_res(u, pre, sizeof pre, g->levels, 0);
        if (!find2(ck, pre, suf)) break;
        if (++g->levels > SDXL_UNET_MAX_LEVELS)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "UNet: more than %d levels", SDXL_UNET_MAX_LEVELS);
    }
    for (int l = 0; l < g->levels; l++) {
        nm_down_res(u, pre, sizeof pre, l, 0);
        TRY(probe(ck, pre, suf, 4, &t, e));
        g->ch[l] = t->shape[0];
        if (g->ch[l] % GN_GROUPS != 0)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "UNet tensor '%s%s': %lld channels, not a multiple of %d groups",
                               pre, suf, (long long)g->ch[l], GN_GROUPS);
        nm_down_xf(u, pre, sizeof pre, l, 0);
        g->down_depth[l] = count_blocks(ck, pre);
        nm_up_xf(u, pre, sizeof pre, l, 0);
        g->up_depth[l] = u->encoder_only ? 0 : count_blocks(ck, pre);
        if (g->down_depth[l] > SDXL_UNET_MAX_DEPTH || g->up_depth[l] > SDXL_UNET_MAX_DEPTH)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "UNet level %d: more than %d transformer blocks", l,
                               SDXL_UNET_MAX_DEPTH);
    }
    nm_mid_xf(u, pre, sizeof pre);
    g->mid_depth = count_blocks(ck, pre);
    if (g->mid_depth == 0)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "UNet tensor '%stransformer_blocks.0.norm1.weight' is missing: "
                           "a mid block without attention is not SDXL", pre);
    if (g->mid_depth > SDXL_UNET_MAX_DEPTH)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "UNet mid block: more than %d transformer blocks",
                           SDXL_UNET_MAX_DEPTH);
    TRY(probe(ck, pre, "transformer_blocks.0.attn2.to_k.weight", 2, &t, e));
    g->context_dim = t->shape[1];
    g->is_refiner = g->levels == 4;
    TRY(detect_heads(u, ck, o, e));

    /* Skip channels in push order: conv_in, each down resnet, each downsampler. */
    u->n_skips = 0;
    u->skip_ch[u->n_skips++] = g->ch[0];
    for (int l = 0; l < g->levels; l++) {
        for (int j = 0; j < g->n_res; j++) u->skip_ch[u->n_skips++] = g->ch[l];
        if (l < g->levels - 1) u->skip_ch[u->n_skips++] = g->ch[l];
    }
    return SDXL_OK;
}

/* ---- the weight walker --------------------------------------------------------------------- */

enum { W_VALIDATE = 0, W_LOAD, W_FREE, W_LIST, W_LAYERS, W_ALTNAMES };

typedef struct walker {
    int mode;
    sdxl_unet *u;
    const sdxl_ckpt *ck;
    sdxl_err *e;
    char **names; /* validate: every expected name, to find unexpected tensors; list: every name */
    size_t n_names, cap_names;
    int64_t n_params;
    int64_t (*shapes)[5]; /* list: ndim, then the dims */
    /* W_LAYERS: each layer to fn; W_ALTNAMES: module names in the other naming, in walk order */
    sdxl_lref_fn fn;
    void *user;
    char (*alt)[SDXL_LREF_NAME];
    size_t n_alt, cap_alt, i_alt;
} walker;

static int to_dtype(sdxl_st_dtype t, sdxl_dtype *out) {
    *out = SDXL_F32;
    switch (t) {
    case SDXL_ST_F32: *out = SDXL_F32; return 1;
    case SDXL_ST_F16: *out = SDXL_F16; return 1;
    case SDXL_ST_BF16: *out = SDXL_BF16; return 1;
    case SDXL_ST_F8_E4M3: *out = SDXL_F8_E4M3; return 1;
    case SDXL_ST_F8_E5M2: *out = SDXL_F8_E5M2; return 1;
    default: return 0;
    }
}

static void fmt_shape(char *b, size_t n, int ndim, const int64_t *s) {
    size_t k = (size_t)snprintf(b, n, "[");
    for (int i = 0; i < ndim && k < n; i++) k += (size_t)snprintf(b + k, n - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < n) snprintf(b + k, n - k, "]");
}

/* Once a tensor is converted its mapped pages are only needed again to re-convert (LoRA undo). */
static void release_pages(const walker *w, const sdxl_st_tensor *t) {
    sdxl_st_release_tensor(sdxl_ckpt_file(w->ck, SDXL_PART_UNET), t);
}

/* Finds pre+suf and, when validating, checks dtype and shape and records the name. */
static int w_tensor(walker *w, const char *pre, const char *suf, int ndim, const int64_t *shape,
                    const sdxl_st_tensor **out) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", pre, suf);
    if (w->mode == W_LIST) {
        *out = NULL;
        if (w->n_names == w->cap_names) {
            size_t nc = w->cap_names ? 2 * w->cap_names : 1024;
            char **nn = realloc(w->names, nc * sizeof *nn);
            if (nn) w->names = nn;
            int64_t(*ns)[5] = realloc(w->shapes, nc * sizeof *ns);
            if (ns) w->shapes = ns;
            if (!nn || !ns) return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory listing tensor names");
            w->cap_names = nc;
        }
        if (!(w->names[w->n_names] = strdup(name)))
            return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory listing tensor names");
        w->shapes[w->n_names][0] = ndim;
        for (int i = 0; i < ndim && i < 4; i++) w->shapes[w->n_names][1 + i] = shape[i];
        w->n_names++;
        return SDXL_OK;
    }
    if (w->mode == W_ALTNAMES) {
        *out = NULL;
        return SDXL_OK;
    }
    const sdxl_st_tensor *t = sdxl_ckpt_find(w->ck, SDXL_PART_UNET, name);
    *out = t;
    if (!t) return sdxl_seterr(w->e, SDXL_ERR_FORMAT, "UNet tensor '%s' is missing (%s)", name, sdxl_ckpt_path(w->ck));
    if (w->mode != W_VALIDATE) return SDXL_OK;
    sdxl_dtype dt;
    if (!to_dtype(t->dtype, &dt))
        return sdxl_seterr(w->e, SDXL_ERR_FORMAT, "UNet tensor '%s': dtype %s, expected F32, F16, BF16, F8_E4M3 or F8_E5M2", name,
                           sdxl_st_dtype_name(t->dtype));
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char a[128], b[128];
        fmt_shape(a, sizeof a, ndim, shape);
        fmt_shape(b, sizeof b, t->ndim, t->shape);
        return sdxl_seterr(w->e, SDXL_ERR_FORMAT, "UNet tensor '%s': expected shape %s, got %s", name, a, b);
    }
    if (w->n_names == w->cap_names) {
        size_t nc = w->cap_names ? 2 * w->cap_names : 1024;
        char **nn = realloc(w->names, nc * sizeof *nn);
        if (!nn) return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory listing tensor names");
        w->names = nn;
        w->cap_names = nc;
    }
    w->names[w->n_names] = strdup(name);
    if (!w->names[w->n_names]) return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory listing tensor names");
    w->n_names++;
    w->n_params += (int64_t)t->numel;
    return SDXL_OK;
}

static int w_layer(walker *w, sdxl_lref_kind kind, const char *pre, const char *const *sufs, int nparts,
                   int64_t out_each, int64_t in, int k, int bias, void *layer, float *g, float *b);

static int w_vec(walker *w, const char *pre, int64_t n, float **g, float **b) {
    if (w->mode >= W_LAYERS) return w_layer(w, SDXL_LREF_NORM, pre, NULL, 1, n, 0, 1, 1, NULL, *g, *b);
    float **dst[2] = {g, b};
    const char *suf[2] = {"weight", "bias"};
    for (int i = 0; i < 2; i++) {
        if (w->mode == W_FREE) {
            free(*dst[i]);
            *dst[i] = NULL;
            continue;
        }
        const sdxl_st_tensor *t;
        TRY(w_tensor(w, pre, suf[i], 1, &n, &t));
        if (w->mode != W_LOAD) continue;
        sdxl_dtype dt;
        to_dtype(t->dtype, &dt);
        *dst[i] = malloc((size_t)n * sizeof(float));
        if (!*dst[i]) return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory for '%s%s'", pre, suf[i]);
        sdxl_to_f32(t->data, dt, *dst[i], (size_t)n);
        release_pages(w, t);
        w->u->weight_bytes += (uint64_t)n * sizeof(float);
    }
    return SDXL_OK;
}

static uint64_t gemm_bytes(const sdxl_unet *u, int64_t n) {
    return (uint64_t)n * (sdxl_compute_prec(u->c) == SDXL_PREC_BF16 ? 2u : 4u);
}

/* Linear from nparts stacked weights [out_each, in] (fused q|k|v), each part pre + sufs[i]
 * + "weight"; a bias (single part only) when bias is set. */
static int w_lin(walker *w, const char *pre, const char *const *sufs, int nparts, int64_t out_each, int64_t in,
                 int bias, sdxl_linear *l) {
    if (w->mode >= W_LAYERS) return w_layer(w, SDXL_LREF_LINEAR, pre, sufs, nparts, out_each, in, 1, bias, l, 0, 0);
    if (w->mode == W_FREE) {
        if (l->w || l->impl || l->bias) sdxl_linear_free(l);
        memset(l, 0, sizeof *l);
        return SDXL_OK;
    }
    const sdxl_st_tensor *t[3] = {0}, *tb = NULL;
    char suf[96];
    int64_t shape[2] = {out_each, in};
    for (int i = 0; i < nparts; i++) {
        snprintf(suf, sizeof suf, "%sweight", sufs[i]);
        TRY(w_tensor(w, pre, suf, 2, shape, &t[i]));
    }
    if (bias) {
        snprintf(suf, sizeof suf, "%sbias", sufs[0]);
        TRY(w_tensor(w, pre, suf, 1, &out_each, &tb));
    }
    if (w->mode != W_LOAD) {
        l->in = in; /* geometry only: enough for measure passes of a validate-only UNet */
        l->out = out_each * nparts;
        return SDXL_OK;
    }
    sdxl_dtype dt, bdt = SDXL_F32;
    to_dtype(t[0]->dtype, &dt);
    if (tb) to_dtype(tb->dtype, &bdt);
    int rc;
    if (nparts == 1) {
        rc = sdxl_linear_init(w->u->c, l, in, out_each, t[0]->data, dt, tb ? tb->data : NULL, bdt, w->e);
    } else {
        /* Stack the parts once at load; in f32 unless all share one dtype. */
        int same = 1;
        for (int i = 1; i < nparts; i++) same &= t[i]->dtype == t[0]->dtype;
        size_t es = same ? sdxl_dtype_size(dt) : sizeof(float);
        size_t part = (size_t)out_each * (size_t)in;
        char *buf = malloc(part * (size_t)nparts * es);
        if (!buf) return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory fusing '%s%s'", pre, sufs[0]);
        for (int i = 0; i < nparts; i++) {
            sdxl_dtype di;
            to_dtype(t[i]->dtype, &di);
            if (same) memcpy(buf + (size_t)i * part * es, t[i]->data, part * es);
            else sdxl_to_f32(t[i]->data, di, (float *)buf + (size_t)i * part, part);
        }
        rc = sdxl_linear_init(w->u->c, l, in, out_each * nparts, buf, same ? dt : SDXL_F32, NULL, SDXL_F32, w->e);
        free(buf);
    }
    if (rc != SDXL_OK) return sdxl_err_prefix(w->e, "UNet '%s%s'", pre, sufs[0]);
    for (int i = 0; i < nparts; i++) release_pages(w, t[i]);
    if (tb) release_pages(w, tb);
    w->u->weight_bytes += gemm_bytes(w->u, out_each * nparts * in) + (bias ? (uint64_t)out_each * 4u : 0u);
    return SDXL_OK;
}

static int w_lin1(walker *w, const char *pre, const char *suf, int64_t out, int64_t in, int bias, sdxl_linear *l) {
    const char *s[1] = {suf};
    return w_lin(w, pre, s, 1, out, in, bias, l);
}

static int w_conv(walker *w, const char *pre, int64_t cout, int64_t cin, int k, int stride, sdxl_conv2d *cv) {
    if (w->mode >= W_LAYERS) return w_layer(w, SDXL_LREF_CONV, pre, NULL, 1, cout, cin, k, 1, cv, NULL, NULL);
    if (w->mode == W_FREE) {
        if (cv->w || cv->impl || cv->bias) sdxl_conv2d_free(cv);
        memset(cv, 0, sizeof *cv);
        return SDXL_OK;
    }
    const sdxl_st_tensor *tw, *tb;
    int64_t shape[4] = {cout, cin, k, k};
    TRY(w_tensor(w, pre, "weight", 4, shape, &tw));
    TRY(w_tensor(w, pre, "bias", 1, &cout, &tb));
    int p = k / 2;
    if (w->mode != W_LOAD) {
        cv->cin = cin;
        cv->cout = cout;
        cv->kh = cv->kw = k;
        cv->stride = stride;
        cv->pad_t = cv->pad_l = cv->pad_b = cv->pad_r = p;
        return SDXL_OK;
    }
    sdxl_dtype dt, bdt;
    to_dtype(tw->dtype, &dt);
    to_dtype(tb->dtype, &bdt);
    if (sdxl_conv2d_init(w->u->c, cv, cin, cout, k, k, stride, p, p, p, p, tw->data, dt, tb->data, bdt, w->e) != SDXL_OK)
        return sdxl_err_prefix(w->e, "UNet '%sweight'", pre);
    release_pages(w, tw);
    release_pages(w, tb);
    w->u->weight_bytes += gemm_bytes(w->u, cout * cin * k * k) + (uint64_t)cout * 4u;
    return SDXL_OK;
}

static int walk_res(walker *w, const char *pre, int64_t cin, int64_t cout, unet_res *r) {
    const char *const *s = RES_SUF[is_diff(w->u)];
    char p[160];
    r->cin = cin;
    r->cout = cout;
    r->has_skip = cin != cout;
    snprintf(p, sizeof p, "%s%s.", pre, s[0]);
    TRY(w_vec(w, p, cin, &r->norm1_g, &r->norm1_b));
    snprintf(p, sizeof p, "%s%s.", pre, s[1]);
    TRY(w_conv(w, p, cout, cin, 3, 1, &r->conv1));
    snprintf(p, sizeof p, "%s%s.", pre, s[2]);
    TRY(w_lin1(w, p, "", cout, w->u->cfg.time_dim, 1, &r->temb));
    snprintf(p, sizeof p, "%s%s.", pre, s[3]);
    TRY(w_vec(w, p, cout, &r->norm2_g, &r->norm2_b));
    snprintf(p, sizeof p, "%s%s.", pre, s[4]);
    TRY(w_conv(w, p, cout, cout, 3, 1, &r->conv2));
    if (r->has_skip) {
        snprintf(p, sizeof p, "%s%s.", pre, s[5]);
        TRY(w_conv(w, p, cout, cin, 1, 1, &r->skip));
    }
    return SDXL_OK;
}

static int walk_xf(walker *w, const char *pre, int64_t c, int depth, int heads, unet_xf *x) {
    char p[192];
    if (w->mode != W_FREE && !x->blocks) {
        x->blocks = calloc((size_t)depth, sizeof *x->blocks);
        if (!x->blocks) return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory");
    }
    if (w->mode == W_FREE && !x->blocks) return SDXL_OK;
    x->c = c;
    x->depth = depth;
    x->heads = heads;
    snprintf(p, sizeof p, "%snorm.", pre);
    TRY(w_vec(w, p, c, &x->norm_g, &x->norm_b));
    TRY(w_lin1(w, pre, "proj_in.", c, c, 1, &x->proj_in));
    static const char *const QKV[3] = {"attn1.to_q.", "attn1.to_k.", "attn1.to_v."};
    static const char *const KV[2] = {"attn2.to_k.", "attn2.to_v."};
    for (int k = 0; k < depth; k++) {
        unet_tblock *b = &x->blocks[k];
        char bp[192];
        snprintf(bp, sizeof bp, "%stransformer_blocks.%d.", pre, k);
        snprintf(p, sizeof p, "%snorm1.", bp);
        TRY(w_vec(w, p, c, &b->n1_g, &b->n1_b));
        TRY(w_lin(w, bp, QKV, 3, c, c, 0, &b->qkv));
        TRY(w_lin1(w, bp, "attn1.to_out.0.", c, c, 1, &b->out1));
        snprintf(p, sizeof p, "%snorm2.", bp);
        TRY(w_vec(w, p, c, &b->n2_g, &b->n2_b));
        TRY(w_lin1(w, bp, "attn2.to_q.", c, c, 0, &b->q2));
        TRY(w_lin(w, bp, KV, 2, c, w->u->cfg.context_dim, 0, &b->kv2));
        TRY(w_lin1(w, bp, "attn2.to_out.0.", c, c, 1, &b->out2));
        snprintf(p, sizeof p, "%snorm3.", bp);
        TRY(w_vec(w, p, c, &b->n3_g, &b->n3_b));
        TRY(w_lin1(w, bp, "ff.net.0.proj.", 8 * c, c, 1, &b->ff1));
        TRY(w_lin1(w, bp, "ff.net.2.", c, 4 * c, 1, &b->ff2));
    }
    TRY(w_lin1(w, pre, "proj_out.", c, c, 1, &x->proj_out));
    if (w->mode == W_FREE) {
        free(x->blocks);
        x->blocks = NULL;
    }
    return SDXL_OK;
}

/* Every weight of the network, in forward order. */
static int walk(walker *w) {
    sdxl_unet *u = w->u;
    const sdxl_unet_cfg *g = &u->cfg;
    const top_names *tn = &TOP[is_diff(u)];
    char pre[128];
    int L = g->levels;
    TRY(w_lin1(w, tn->time1, "", g->time_dim, g->model_ch, 1, &u->time1));
    TRY(w_lin1(w, tn->time2, "", g->time_dim, g->time_dim, 1, &u->time2));
    TRY(w_lin1(w, tn->add1, "", g->time_dim, g->adm_in, 1, &u->add1));
    TRY(w_lin1(w, tn->add2, "", g->time_dim, g->time_dim, 1, &u->add2));
    TRY(w_conv(w, tn->conv_in, g->ch[0], g->in_ch, 3, 1, &u->conv_in));
    int64_t cprev = g->ch[0];
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < g->n_res; j++) {
            nm_down_res(u, pre, sizeof pre, l, j);
            TRY(walk_res(w, pre, cprev, g->ch[l], &u->down_res[l][j]));
            cprev = g->ch[l];
            if (g->down_depth[l]) {
                nm_down_xf(u, pre, sizeof pre, l, j);
                TRY(walk_xf(w, pre, g->ch[l], g->down_depth[l], g->heads[l], &u->down_xf[l][j]));
            }
        }
        if (l < L - 1) {
            nm_down_conv(u, pre, sizeof pre, l);
            TRY(w_conv(w, pre, g->ch[l], g->ch[l], 3, 2, &u->down_conv[l]));
        }
    }
    int64_t cl = g->ch[L - 1];
    nm_mid_res(u, pre, sizeof pre, 0);
    TRY(walk_res(w, pre, cl, cl, &u->mid_res[0]));
    nm_mid_xf(u, pre, sizeof pre);
    TRY(walk_xf(w, pre, cl, g->mid_depth, g->mid_heads, &u->mid_xf));
    nm_mid_res(u, pre, sizeof pre, 1);
    TRY(walk_res(w, pre, cl, cl, &u->mid_res[1]));
    if (u->encoder_only) return SDXL_OK;
    int ns = u->n_skips;
    cprev = cl;
    for (int l = L - 1; l >= 0; l--) {
        for (int j = 0; j <= g->n_res; j++) {
            int64_t cs = u->skip_ch[--ns];
            nm_up_res(u, pre, sizeof pre, l, j);
            TRY(walk_res(w, pre, cprev + cs, g->ch[l], &u->up_res[l][j]));
            cprev = g->ch[l];
            if (g->up_depth[l]) {
                nm_up_xf(u, pre, sizeof pre, l, j);
                TRY(walk_xf(w, pre, g->ch[l], g->up_depth[l], g->heads[l], &u->up_xf[l][j]));
            }
        }
        if (l > 0) {
            nm_up_conv(u, pre, sizeof pre, l);
            TRY(w_conv(w, pre, g->ch[l], g->ch[l], 3, 1, &u->up_conv[l]));
        }
    }
    TRY(w_vec(w, tn->norm_out, g->ch[0], &u->out_g, &u->out_b));
    TRY(w_conv(w, tn->conv_out, g->out_ch, g->ch[0], 3, 1, &u->conv_out));
    return SDXL_OK;
}

/* W_ALTNAMES records each part's module name; W_LAYERS hands the layer with its tensors and
 * the recorded other-naming name of the same walk position to fn. */
static int w_layer(walker *w, sdxl_lref_kind kind, const char *pre, const char *const *sufs, int nparts,
                   int64_t out_each, int64_t in, int k, int bias, void *layer, float *g, float *b) {
    sdxl_lref r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.nparts = nparts;
    r.out_each = out_each;
    r.in = in;
    r.kh = r.kw = k;
    if (kind == SDXL_LREF_LINEAR) r.lin = layer;
    else if (kind == SDXL_LREF_CONV) r.conv = layer;
    r.norm_g = g;
    r.norm_b = b;
    for (int i = 0; i < nparts; i++) {
        sdxl_lref_part *p = &r.part[i];
        char mod[SDXL_LREF_NAME + 64], suf[96];
        snprintf(mod, sizeof mod, "%s%s", pre, sufs ? sufs[i] : "");
        size_t n = strlen(mod);
        if (n && mod[n - 1] == '.') mod[--n] = 0;
        if (n >= SDXL_LREF_NAME) return sdxl_seterr(w->e, SDXL_ERR_INTERNAL, "UNet module name '%s' too long", mod);
        if (w->mode == W_ALTNAMES) {
            if (w->n_alt == w->cap_alt) {
                size_t nc = w->cap_alt ? 2 * w->cap_alt : 2048;
                char(*na)[SDXL_LREF_NAME] = realloc(w->alt, nc * sizeof *na);
                if (!na) return sdxl_seterr(w->e, SDXL_ERR_NOMEM, "UNet: out of memory listing layers");
                w->alt = na;
                w->cap_alt = nc;
            }
            memcpy(w->alt[w->n_alt++], mod, n + 1);
            continue;
        }
        memcpy(p->name, mod, n + 1);
        if (w->i_alt < w->n_alt) memcpy(p->alt, w->alt[w->i_alt++], SDXL_LREF_NAME);
        snprintf(suf, sizeof suf, "%sweight", sufs ? sufs[i] : "");
        TRY(w_tensor(w, pre, suf, 0, NULL, &p->w));
        if (bias) {
            snprintf(suf, sizeof suf, "%sbias", sufs ? sufs[i] : "");
            TRY(w_tensor(w, pre, suf, 0, NULL, &p->b));
        }
    }
    return w->mode == W_LAYERS ? w->fn(w->user, &r, w->e) : SDXL_OK;
}

int sdxl_unet_layers(sdxl_unet *u, const sdxl_ckpt *ck, sdxl_lref_fn fn, void *user, sdxl_err *e) {
    if (!u->detected || u->validate_only)
        return sdxl_seterr(e, SDXL_ERR_ARG, "UNet: no converted layers to list");
    walker w = {.mode = W_ALTNAMES, .u = u, .ck = ck, .e = e, .fn = fn, .user = user};
    sdxl_naming own = u->cfg.naming;
    u->cfg.naming = own == SDXL_NAMING_DIFFUSERS ? SDXL_NAMING_ORIGINAL : SDXL_NAMING_DIFFUSERS;
    int st = walk(&w);
    u->cfg.naming = own;
    if (!st) {
        w.mode = W_LAYERS;
        st = walk(&w);
    }
    free(w.alt);
    return st;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_extra(const char *name, const char *const *extra) {
    for (; extra && *extra; extra++)
        if (!strncmp(name, *extra, strlen(*extra))) return 1;
    return 0;
}

static int check_unexpected(walker *w, const char *const *extra) {
    qsort(w->names, w->n_names, sizeof *w->names, cmp_str);
    size_t n = sdxl_ckpt_count(w->ck, SDXL_PART_UNET);
    for (size_t i = 0; i < n; i++) {
        const sdxl_st_tensor *t;
        const char *name = sdxl_ckpt_name_at(w->ck, SDXL_PART_UNET, i, &t);
        if (!name || is_extra(name, extra)) continue;
        if (!bsearch(&name, w->names, w->n_names, sizeof *w->names, cmp_str))
            return sdxl_seterr(w->e, SDXL_ERR_FORMAT,
                               "UNet tensor '%s' is unexpected for the detected config (%d levels, %d resnets per "
                               "level, %s naming)",
                               name, w->u->cfg.levels, w->u->cfg.n_res, is_diff(w->u) ? "diffusers" : "original");
    }
    return SDXL_OK;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void sdxl_unet_free(sdxl_unet *u) {
    if (!u) return;
    if (u->detected) {
        walker w = {.mode = W_FREE, .u = u};
        walk(&w);
    }
    sdxl_compute_release(u->c, u->ws);
    free(u);
}

int sdxl_unet_load(sdxl_compute *c, const sdxl_ckpt *ck, const sdxl_unet_opts *o, sdxl_unet **out, sdxl_err *e) {
    *out = NULL;
    sdxl_unet_opts def;
    if (!o) {
        sdxl_unet_opts_init(&def);
        o = &def;
    }
    if (!c && !o->validate_only) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_unet_load: compute context is NULL");
    double t0 = now_s();
    sdxl_unet *u = calloc(1, sizeof *u);
    if (!u) return sdxl_seterr(e, SDXL_ERR_NOMEM, "UNet: out of memory");
    u->c = c;
    u->validate_only = 1;
    u->encoder_only = o->encoder_only != 0;
    int rc = detect(u, ck, o, e);
    u->detected = rc == SDXL_OK;
    walker w = {.mode = W_VALIDATE, .u = u, .ck = ck, .e = e};
    if (rc == SDXL_OK) rc = walk(&w);
    if (rc == SDXL_OK) rc = check_unexpected(&w, o->extra_prefixes);
    for (size_t i = 0; i < w.n_names; i++) free(w.names[i]);
    free(w.names);
    if (rc != SDXL_OK) {
        sdxl_unet_free(u);
        return rc;
    }
    u->cfg.n_params = w.n_params;
    if (!o->validate_only) {
        u->validate_only = 0;
        walker wl = {.mode = W_LOAD, .u = u, .ck = ck, .e = e};
        rc = walk(&wl);
        if (rc != SDXL_OK) {
            sdxl_unet_free(u);
            return rc;
        }
    }
    u->load_seconds = now_s() - t0;
    if (o->log)
        SDXL_INFO(o->log, "UNet %s: %d levels, %lld params, heads by %s, loaded in %.2f s, %.1f MB of weights",
                  u->cfg.is_refiner ? "refiner" : "base", u->cfg.levels, (long long)u->cfg.n_params, u->cfg.heads_rule,
                  u->load_seconds, (double)u->weight_bytes / 1e6);
    *out = u;
    return SDXL_OK;
}

void sdxl_unet_stats_get(const sdxl_unet *u, sdxl_unet_stats *s) {
    s->load_seconds = u->load_seconds;
    s->weight_bytes = u->weight_bytes;
    s->workspace_bytes = u->ws_cap;
}

int sdxl_unet_n_skips(const sdxl_unet *u) { return u->n_skips; }

void sdxl_unet_skip_shape(const sdxl_unet *u, int i, int64_t h, int64_t w, int64_t *oh, int64_t *ow, int64_t *oc) {
    *oc = i >= 0 && i < u->n_skips ? u->skip_ch[i] : 0;
    if (i-- == 0) goto done;
    for (int l = 0; l < u->cfg.levels; l++) {
        for (int j = 0; j < u->cfg.n_res; j++)
            if (i-- == 0) goto done;
        if (l < u->cfg.levels - 1) {
            h = (h + 1) / 2;
            w = (w + 1) / 2;
            if (i-- == 0) goto done;
        }
    }
done:
    *oh = h;
    *ow = w;
}

/* ---- workspace: a stack; measure mode only counts --------------------------------------------- */

static size_t align_up(size_t n) { return (n + WS_ALIGN - 1) & ~(size_t)(WS_ALIGN - 1); }

static float *ws_ptr(sdxl_unet *u, size_t off) { return u->measure ? NULL : (float *)(u->ws + off); }

/* Pointer arithmetic that stays defined in measure mode (where buffers are NULL). */
static float *at(float *p, int64_t off) { return p ? p + off : NULL; }

/* The real pass replays the measure pass of the same shape, so it cannot outgrow the plan. */
static float *ws_alloc(sdxl_unet *u, int64_t nfloats, size_t *off) {
    size_t o = u->ws_top;
    if (nfloats < 0 || (uint64_t)nfloats > (SIZE_MAX / 2 - u->ws_top) / sizeof(float)) {
        u->ws_overflow = 1; /* only a measure pass can get here: it fails before any real run */
        nfloats = 0;
    }
    u->ws_top += align_up((size_t)nfloats * sizeof(float));
    if (u->ws_top > u->ws_peak) u->ws_peak = u->ws_top;
    if (!u->measure && u->ws_top > u->ws_cap) {
        fprintf(stderr, "sdxl unet: workspace plan exceeded (%zu > %zu)\n", u->ws_top, u->ws_cap);
        abort();
    }
    if (off) *off = o;
    return ws_ptr(u, o);
}

/* Moves the buffer at src (nfloats) down to offset dst and makes it the stack top. */
static float *ws_collapse(sdxl_unet *u, size_t dst, size_t src, int64_t nfloats) {
    size_t bytes = (size_t)nfloats * sizeof(float);
    double t0 = u->profile ? now_s() : 0;
    if (!u->measure && dst != src && !u->op_st)
        u->op_st = sdxl_op_copy(u->c, u->ws + dst, u->ws + src, bytes, &u->op_err);
    if (u->profile && !u->measure) {
        u->prof_s[SDXL_UNET_OP_OTHER] += now_s() - t0;
        u->prof_n[SDXL_UNET_OP_OTHER]++;
    }
    u->ws_top = dst + align_up(bytes);
    return ws_ptr(u, dst);
}

/* ---- op wrappers: skip the math in measure mode, count FLOPs, time per op type -------------- */

/* Runs an op that returns a status unless one failed already; the forward reports the first. */
#define OP(u, call)                                   \
    do {                                              \
        if (!(u)->op_st) (u)->op_st = (call);         \
    } while (0)

#define PROF_BEGIN(u) double t0_ = (u)->profile ? now_s() : 0
#define PROF_END(u, k)                                                                                           \
    do {                                                                                                         \
        if ((u)->profile) {                                                                                      \
            (u)->prof_s[k] += now_s() - t0_;                                                                     \
            (u)->prof_n[k]++;                                                                                    \
        }                                                                                                        \
    } while (0)

static int op_linear(sdxl_unet *u, const sdxl_linear *l, const float *x, int64_t m, float *y, int flags, sdxl_err *e) {
    double fl = 2.0 * (double)m * (double)l->in * (double)l->out;
    u->flops += fl;
    if (u->measure) return SDXL_OK;
    u->prof_f[SDXL_UNET_OP_LINEAR] += fl;
    PROF_BEGIN(u);
    int rc = sdxl_linear_fwd(u->c, l, x, m, y, flags, e);
    PROF_END(u, SDXL_UNET_OP_LINEAR);
    return rc;
}

static int op_conv(sdxl_unet *u, const sdxl_conv2d *cv, const float *x, int64_t n, int64_t h, int64_t w, float *y,
                   int flags, sdxl_err *e) {
    int64_t oh, ow;
    sdxl_conv2d_out_size(cv, h, w, &oh, &ow);
    double fl = 2.0 * (double)n * (double)oh * (double)ow * (double)cv->cout * (double)cv->cin * cv->kh * cv->kw;
    u->flops += fl;
    if (u->measure) return SDXL_OK;
    u->prof_f[SDXL_UNET_OP_CONV] += fl;
    PROF_BEGIN(u);
    int rc = sdxl_conv2d_fwd(u->c, cv, x, n, h, w, y, flags, e);
    PROF_END(u, SDXL_UNET_OP_CONV);
    return rc;
}

/* bf: write o as bf16 (the next GEMM's input) where the bf16 kernel runs; *oflags says which it
 * wrote (SDXL_OP_SRC_BF16 or 0), for that GEMM. */
static int op_attn(sdxl_unet *u, const float *q, int64_t qld, const float *k, const float *v, int64_t kvld, float *o,
                   int64_t old, int64_t b, int64_t lq, int64_t lk, int heads, int hd, int bf, int *oflags,
                   sdxl_err *e) {
    double fl = 4.0 * (double)b * (double)lq * (double)lk * (double)heads * (double)hd;
    u->flops += fl;
    *oflags = 0;
    if (u->measure) return SDXL_OK;
    u->prof_f[SDXL_UNET_OP_ATTENTION] += fl;
    PROF_BEGIN(u);
    float scale = 1.0f / sqrtf((float)hd);
    int rc = SDXL_ERR_UNSUPPORTED;
    if (bf) {
        sdxl_err e2 = {0};
        rc = sdxl_attention_bf16(u->c, q, qld, k, v, kvld, (uint16_t *)(void *)o, old, b, lq, lk, heads, hd, scale, 0,
                                 &e2);
        if (rc == SDXL_OK) *oflags = SDXL_OP_SRC_BF16;
        else if (rc != SDXL_ERR_UNSUPPORTED) *e = e2;
    }
    if (rc == SDXL_ERR_UNSUPPORTED)
        rc = sdxl_attention(u->c, q, qld, k, v, kvld, o, old, b, lq, lk, heads, hd, scale, 0, e);
    PROF_END(u, SDXL_UNET_OP_ATTENTION);
    return rc;
}

static void op_gn(sdxl_unet *u, const float *x, float *y, int64_t n, int64_t hw, int64_t c, float eps, const float *g,
                  const float *b, int silu) {
    if (u->measure) return;
    PROF_BEGIN(u);
    OP(u, sdxl_op_group_norm(u->c, x, y, n, hw, c, GN_GROUPS, eps, g, b, silu, &u->op_err));
    PROF_END(u, SDXL_UNET_OP_GROUPNORM);
}

static void op_ln(sdxl_unet *u, const float *x, float *y, int64_t rows, int64_t c, const float *g, const float *b) {
    if (u->measure) return;
    PROF_BEGIN(u);
    OP(u, sdxl_op_layer_norm(u->c, x, y, rows, c, LN_EPS, g, b, &u->op_err));
    PROF_END(u, SDXL_UNET_OP_LAYERNORM);
}

/* bf16 CPU contexts: GEMM inputs written as bf16 by the op that makes them (rounded as the GEMM
 * would round them), so the GEMM skips its conversion pass. */
static int bf16_inputs(const sdxl_unet *u) {
    return u->c && sdxl_compute_prec(u->c) == SDXL_PREC_BF16 && !sdxl_compute_is_device(u->c);
}

/* LayerNorm of a GEMM input into y (bf16 in y's first half where bf16_inputs); *flags is what to
 * pass the GEMMs that read it. */
static void op_ln_in(sdxl_unet *u, const float *x, float *y, int64_t rows, int64_t c, const float *g, const float *b,
                     int *flags) {
    *flags = bf16_inputs(u) ? SDXL_OP_SRC_BF16 : 0;
    if (!*flags) {
        op_ln(u, x, y, rows, c, g, b);
        return;
    }
    if (u->measure) return;
    PROF_BEGIN(u);
    sdxl_layer_norm_bf16(x, (uint16_t *)(void *)y, rows, c, LN_EPS, g, b);
    PROF_END(u, SDXL_UNET_OP_LAYERNORM);
}

/* op_ln_in after x += res (res: a residual branch's output, rows x c floats; bf16 CPU contexts only,
 * where the two run as one pass over the rows). */
static void op_add_ln_in(sdxl_unet *u, float *x, const float *res, float *y, int64_t rows, int64_t c, const float *g,
                         const float *b, int *flags) {
    *flags = SDXL_OP_SRC_BF16;
    if (u->measure) return;
    PROF_BEGIN(u);
    sdxl_add_layer_norm_bf16(x, res, (uint16_t *)(void *)y, rows, c, LN_EPS, g, b);
    PROF_END(u, SDXL_UNET_OP_LAYERNORM);
}

/* An attention's out projection added to the residual stream h, then the next LayerNorm into y.
 * bf16 CPU: the projection writes scratch (free by then) and the norm adds it to h as it reads it:
 * an accumulating GEMM waits in its epilogue on reading h from memory (4-10% of the GEMM at
 * K = c), where the norm's pass streams it. Same bits. */
static int op_out_ln_in(sdxl_unet *u, const sdxl_linear *out, const float *o, int oflags, float *h, float *scratch,
                        float *y, int64_t m, int64_t c, const float *g, const float *b, int *flags, sdxl_err *e) {
    if (bf16_inputs(u)) {
        int st = op_linear(u, out, o, m, scratch, oflags, e);
        if (!st) op_add_ln_in(u, h, scratch, y, m, c, g, b, flags);
        return st;
    }
    int st = op_linear(u, out, o, m, h, SDXL_OP_ACCUM | oflags, e);
    if (!st) op_ln_in(u, h, y, m, c, g, b, flags);
    return st;
}

/* GroupNorm of a conv or linear input: into y, or in bf16 CPU contexts as bf16 into the context's
 * GEMM-input buffer; *src and *flags are what to pass the GEMM (the next GEMM to run). */
static int op_gn_in(sdxl_unet *u, const float *x, float *y, int64_t n, int64_t hw, int64_t c, float eps,
                    const float *g, const float *b, int silu, const float **src, int *flags, sdxl_err *e) {
    *src = y;
    *flags = 0;
    if (!bf16_inputs(u)) {
        op_gn(u, x, y, n, hw, c, eps, g, b, silu);
        return SDXL_OK;
    }
    *flags = SDXL_OP_SRC_BF16;
    if (u->measure) return SDXL_OK;
    PROF_BEGIN(u);
    uint16_t *yb = sdxl_compute_src_bf16(u->c, n * hw * c);
    if (!yb) return sdxl_seterr(e, SDXL_ERR_NOMEM, "unet: group norm output of %lld values", (long long)(n * hw * c));
    sdxl_group_norm_bf16(x, yb, n, hw, c, GN_GROUPS, eps, g, b, silu);
    *src = (const float *)(const void *)yb;
    PROF_END(u, SDXL_UNET_OP_GROUPNORM);
    return SDXL_OK;
}

/* Row r0 of a GEMM input of rows of c values, f32 or (flags) bf16. */
static const float *in_row(const float *x, int64_t r0, int64_t c, int flags) {
    if (!x) return NULL;
    return flags & SDXL_OP_SRC_BF16 ? (const float *)(const void *)((const uint16_t *)(const void *)x + r0 * c)
                                    : x + r0 * c;
}

/* In bf16 the GEGLU writes the next GEMM's bf16 input itself: *src and *flags are what to pass it. */
static int op_geglu(sdxl_unet *u, const float *x, float *y, int64_t rows, int64_t f, const float **src, int *flags,
                    sdxl_err *e) {
    *src = y;
    *flags = 0;
    if (u->measure) return SDXL_OK;
    PROF_BEGIN(u);
    if (sdxl_compute_prec(u->c) == SDXL_PREC_BF16 && !sdxl_compute_is_device(u->c)) {
        uint16_t *yb = sdxl_compute_src_bf16(u->c, rows * f);
        if (!yb) return sdxl_seterr(e, SDXL_ERR_NOMEM, "unet: GEGLU output of %lld values", (long long)(rows * f));
        sdxl_geglu_bf16(x, yb, rows, f);
        *src = (const float *)(const void *)yb;
        *flags = SDXL_OP_SRC_BF16;
    } else {
        OP(u, sdxl_op_geglu(u->c, x, y, rows, f, &u->op_err));
    }
    PROF_END(u, SDXL_UNET_OP_GEGLU);
    return SDXL_OK;
}

/* Feed-forward input half in bf16 CPU contexts: ff1 and the GEGLU as one op, its bf16 output in y
 * (g: f32 scratch of rows x f); *src and *flags are what to pass the second GEMM. Elsewhere, or
 * where the layer's weights do not split, ff1 into p and the GEGLU into y. */
static int op_ff_in(sdxl_unet *u, const sdxl_linear *ff1, const float *x, int xflags, int64_t rows, float *p, float *y,
                    const float **src, int *flags, sdxl_err *e) {
    int64_t f = ff1->out / 2;
    if (bf16_inputs(u)) {
        double fl = 2.0 * (double)rows * (double)ff1->in * (double)ff1->out;
        int rc = SDXL_OK;
        sdxl_err e2 = {0};
        if (!u->measure) {
            PROF_BEGIN(u);
            rc = sdxl_linear_geglu_bf16(u->c, ff1, x, rows, p, (uint16_t *)(void *)y, xflags, &e2);
            PROF_END(u, SDXL_UNET_OP_LINEAR);
        }
        if (rc == SDXL_OK) {
            u->flops += fl;
            if (!u->measure) u->prof_f[SDXL_UNET_OP_LINEAR] += fl;
            *src = y;
            *flags = SDXL_OP_SRC_BF16;
            return SDXL_OK;
        }
        if (rc != SDXL_ERR_UNSUPPORTED) {
            *e = e2;
            return rc;
        }
    }
    TRY(op_linear(u, ff1, x, rows, p, xflags, e));
    return op_geglu(u, p, y, rows, f, src, flags, e);
}

static void op_silu(sdxl_unet *u, float *x, int64_t n) {
    if (u->measure) return;
    PROF_BEGIN(u);
    OP(u, sdxl_op_silu(u->c, x, n, &u->op_err));
    PROF_END(u, SDXL_UNET_OP_OTHER);
}

static void op_copy(sdxl_unet *u, float *dst, const float *src, int64_t n) {
    if (u->measure) return;
    PROF_BEGIN(u);
    OP(u, sdxl_op_copy(u->c, dst, src, (size_t)n * sizeof(float), &u->op_err));
    PROF_END(u, SDXL_UNET_OP_OTHER);
}

static void op_add(sdxl_unet *u, const float *a, float *y, int64_t n) {
    if (u->measure || !a) return;
    PROF_BEGIN(u);
    OP(u, sdxl_op_add(u->c, a, y, y, n, &u->op_err));
    PROF_END(u, SDXL_UNET_OP_OTHER);
}

static void op_concat(sdxl_unet *u, const float *a, int64_t ca, const float *b, int64_t cb, float *y, int64_t rows) {
    if (u->measure) return;
    PROF_BEGIN(u);
    OP(u, sdxl_op_concat_channels(u->c, a, ca, b, cb, y, rows, &u->op_err));
    PROF_END(u, SDXL_UNET_OP_OTHER);
}

/* y[b] (hw rows of c) += v[b] (one row per batch item). */
static void op_add_rows(sdxl_unet *u, float *y, const float *v, int64_t n, int64_t hw, int64_t c) {
    if (u->measure) return;
    PROF_BEGIN(u);
    for (int64_t b = 0; b < n; b++) OP(u, sdxl_op_add_bias(u->c, y + b * hw * c, v + b * c, hw, c, &u->op_err));
    PROF_END(u, SDXL_UNET_OP_OTHER);
}

static void op_resize(sdxl_unet *u, const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh,
                      int64_t ow) {
    if (u->measure) return;
    PROF_BEGIN(u);
    if (oh == 2 * h && ow == 2 * w) OP(u, sdxl_op_upsample_nearest2x(u->c, x, y, n, h, w, c, &u->op_err));
    else OP(u, sdxl_op_resize_nearest(u->c, x, y, n, h, w, c, oh, ow, &u->op_err));
    PROF_END(u, SDXL_UNET_OP_OTHER);
}

/* adm[b] = [pooled[b] | sinusoid_256(time_ids[b][0]) | ... ]. */
static void op_adm(sdxl_unet *u, const sdxl_unet_in *in, float *adm) {
    if (u->measure) return;
    PROF_BEGIN(u);
    int64_t w = u->cfg.adm_in;
    for (int64_t b = 0; b < in->batch; b++) {
        OP(u, sdxl_op_copy(u->c, adm + b * w, in->pooled + b * in->pooled_dim, (size_t)in->pooled_dim * sizeof(float),
                           &u->op_err));
        OP(u, sdxl_op_timestep_embedding(u->c, in->time_ids + b * in->n_time_ids, in->n_time_ids, TIME_ID_DIM, 1, 0.0f,
                                         10000.0f, adm + b * w + in->pooled_dim, &u->op_err));
    }
    PROF_END(u, SDXL_UNET_OP_OTHER);
}

static void op_tembed(sdxl_unet *u, const float *t, int64_t n, int64_t dim, float *out) {
    if (u->measure) return;
    OP(u, sdxl_op_timestep_embedding(u->c, t, n, (int)dim, 1, 0.0f, 10000.0f, out, &u->op_err));
}

/* ---- blocks ------------------------------------------------------------------------------- */

/* ResBlock: y = skip(x) + conv2(SiLU(GN(conv1(SiLU(GN(x))) + proj(SiLU(emb))))). The output is
 * allocated on the stack top (temporaries released). clobber: x may be overwritten. */
static int resblock(sdxl_unet *u, const unet_res *r, float *x, int64_t n, int64_t h, int64_t w, int clobber,
                    const float *emb_act, float **out, size_t *out_off, sdxl_err *e) {
    int64_t hw = h * w;
    float *y = ws_alloc(u, n * hw * r->cout, out_off);
    size_t mk = u->ws_top;
    if (r->has_skip) TRY(op_conv(u, &r->skip, x, n, h, w, y, 0, e));
    else op_copy(u, y, x, n * hw * r->cout);
    float *g = clobber ? x : ws_alloc(u, n * hw * r->cin, NULL);
    const float *src;
    int fl;
    TRY(op_gn_in(u, x, g, n, hw, r->cin, GN_EPS_RES, r->norm1_g, r->norm1_b, 1, &src, &fl, e));
    float *t = ws_alloc(u, n * hw * r->cout, NULL);
    float *tp = ws_alloc(u, n * r->cout, NULL);
    TRY(op_conv(u, &r->conv1, src, n, h, w, t, fl, e));
    TRY(op_linear(u, &r->temb, emb_act, n, tp, 0, e));
    op_add_rows(u, t, tp, n, hw, r->cout);
    TRY(op_gn_in(u, t, t, n, hw, r->cout, GN_EPS_RES, r->norm2_g, r->norm2_b, 1, &src, &fl, e));
    TRY(op_conv(u, &r->conv2, src, n, h, w, y, SDXL_OP_ACCUM | fl, e));
    u->ws_top = mk;
    *out = y;
    return SDXL_OK;
}

/* Rows per feed-forward chunk: equal chunks (one GEMM shape, one primitive) under the budget. */
static int64_t ff_rows(int64_t m, int64_t c) {
    int64_t per_row = 12 * c * (int64_t)sizeof(float); /* [8c] projection + [4c] GEGLU output */
    int64_t r = (int64_t)FF_CHUNK_BYTES / per_row;
    if (r >= m) return m;
    if (r < 64) r = 64;
    int64_t k = (m + r - 1) / r;
    r = ((m + k - 1) / k + 15) & ~(int64_t)15;
    return r < m ? r : m;
}

/* Transformer2DModel with linear projections, in place: x += proj_out(blocks(proj_in(GN(x)))). */
static int xformer(sdxl_unet *u, const unet_xf *xf, float *x, int64_t n, int64_t hw, const sdxl_unet_in *in,
                   sdxl_err *e) {
    int64_t c = xf->c, m = n * hw, lc = in->ctx_len;
    int hd = (int)(c / xf->heads);
    size_t mk = u->ws_top;
    float *nb = ws_alloc(u, m * c, NULL);
    float *h = ws_alloc(u, m * c, NULL);
    float *qkv = ws_alloc(u, m * 3 * c, NULL);
    float *o = ws_alloc(u, m * c, NULL);
    float *kv = ws_alloc(u, n * lc * 2 * c, NULL);
    int64_t fr = ff_rows(m, c);
    float *p = ws_alloc(u, fr * 8 * c, NULL);
    float *gg = ws_alloc(u, fr * 4 * c, NULL);
    const float *src;
    int fl;
    TRY(op_gn_in(u, x, nb, n, hw, c, GN_EPS_XF, xf->norm_g, xf->norm_b, 0, &src, &fl, e));
    TRY(op_linear(u, &xf->proj_in, src, m, h, fl, e));
    for (int k = 0; k < xf->depth; k++) {
        const unet_tblock *b = &xf->blocks[k];
        int nfl;
        op_ln_in(u, h, nb, m, c, b->n1_g, b->n1_b, &nfl);
        TRY(op_linear(u, &b->qkv, nb, m, qkv, nfl, e));
        int ofl, bf = bf16_inputs(u);
        TRY(op_attn(u, qkv, 3 * c, at(qkv, c), at(qkv, 2 * c), 3 * c, o, c, n, hw, hw, xf->heads, hd, bf, &ofl, e));
        TRY(op_out_ln_in(u, &b->out1, o, ofl, h, qkv, nb, m, c, b->n2_g, b->n2_b, &nfl, e));
        TRY(op_linear(u, &b->q2, nb, m, qkv, nfl, e));
        TRY(op_linear(u, &b->kv2, in->context, n * lc, kv, 0, e));
        TRY(op_attn(u, qkv, c, kv, at(kv, c), 2 * c, o, c, n, hw, lc, xf->heads, hd, bf, &ofl, e));
        TRY(op_out_ln_in(u, &b->out2, o, ofl, h, qkv, nb, m, c, b->n3_g, b->n3_b, &nfl, e));
        for (int64_t r0 = 0; r0 < m; r0 += fr) {
            int64_t rows = m - r0 < fr ? m - r0 : fr;
            const float *gin;
            int gfl;
            TRY(op_ff_in(u, &b->ff1, in_row(nb, r0, c, nfl), nfl, rows, p, gg, &gin, &gfl, e));
            TRY(op_linear(u, &b->ff2, gin, rows, at(h, r0 * c), SDXL_OP_ACCUM | gfl, e));
        }
    }
    TRY(op_linear(u, &xf->proj_out, h, m, x, SDXL_OP_ACCUM, e));
    u->ws_top = mk;
    return SDXL_OK;
}

typedef struct skip_buf {
    size_t off;
    int64_t h, w, c;
} skip_buf;

/* The whole forward; in measure mode no buffer is touched. */
static int body(sdxl_unet *u, const sdxl_unet_in *in, float *out, sdxl_err *e) {
    const sdxl_unet_cfg *g = &u->cfg;
    int64_t n = in->batch, H = in->h, W = in->w, td = g->time_dim;
    int L = g->levels;
    u->ws_top = 0;
    u->ws_peak = 0;
    u->flops = 0;

    /* Embeddings: emb_act = SiLU(time_mlp(sin(t)) + add_mlp([pooled | sin(time_ids)])). */
    float *emb = ws_alloc(u, n * td, NULL);
    size_t mk = u->ws_top;
    float *ts = ws_alloc(u, n * g->model_ch, NULL);
    float *hid = ws_alloc(u, n * td, NULL);
    float *adm = ws_alloc(u, n * g->adm_in, NULL);
    op_tembed(u, in->t, n, g->model_ch, ts);
    TRY(op_linear(u, &u->time1, ts, n, hid, 0, e));
    op_silu(u, hid, n * td);
    TRY(op_linear(u, &u->time2, hid, n, emb, 0, e));
    op_adm(u, in, adm);
    TRY(op_linear(u, &u->add1, adm, n, hid, 0, e));
    op_silu(u, hid, n * td);
    TRY(op_linear(u, &u->add2, hid, n, emb, SDXL_OP_ACCUM, e));
    op_silu(u, emb, n * td); /* every resnet applies SiLU before its time projection */
    u->ws_top = mk;

    /* conv_in, channels-last from here on */
    skip_buf sk[MAX_SKIPS];
    int ns = 0;
    size_t hoff;
    float *h = ws_alloc(u, n * H * W * g->ch[0], &hoff);
    mk = u->ws_top;
    float *x0 = ws_alloc(u, n * H * W * g->in_ch, NULL);
    if (!u->measure) {
        PROF_BEGIN(u);
        OP(u, sdxl_op_nchw_to_nhwc(u->c, in->x, x0, n, g->in_ch, H, W, &u->op_err));
        PROF_END(u, SDXL_UNET_OP_OTHER);
    }
    TRY(op_conv(u, &u->conv_in, x0, n, H, W, h, 0, e));
    u->ws_top = mk;
    if (in->ctrl_hint) {
        int64_t per = H * W * g->ch[0];
        for (int64_t b = 0; b < n; b++)
            op_add(u, in->ctrl_hint + (in->ctrl_hint_rows == 1 ? 0 : b * per), at(h, b * per), per);
    }
    sk[ns++] = (skip_buf){hoff, H, W, g->ch[0]};

    /* Down: every block output is kept as a skip, so the stack holds exactly the skips. */
    int64_t hh = H, ww = W, ch = g->ch[0];
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < g->n_res; j++) {
            const unet_res *r = &u->down_res[l][j];
            float *y;
            TRY(resblock(u, r, h, n, hh, ww, 0, emb, &y, &hoff, e));
            if (g->down_depth[l]) TRY(xformer(u, &u->down_xf[l][j], y, n, hh * ww, in, e));
            h = y;
            ch = r->cout;
            sk[ns++] = (skip_buf){hoff, hh, ww, ch};
        }
        if (l < L - 1) {
            int64_t oh, ow;
            sdxl_conv2d_out_size(&u->down_conv[l], hh, ww, &oh, &ow);
            float *y = ws_alloc(u, n * oh * ow * ch, &hoff);
            TRY(op_conv(u, &u->down_conv[l], h, n, hh, ww, y, 0, e));
            h = y;
            hh = oh;
            ww = ow;
            sk[ns++] = (skip_buf){hoff, hh, ww, ch};
        }
    }
    /* Mid: resnet, transformer, resnet. */
    {
        float *y, *z;
        size_t yoff, zoff;
        TRY(resblock(u, &u->mid_res[0], h, n, hh, ww, 0, emb, &y, &yoff, e));
        TRY(xformer(u, &u->mid_xf, y, n, hh * ww, in, e));
        TRY(resblock(u, &u->mid_res[1], y, n, hh, ww, 1, emb, &z, &zoff, e));
        h = ws_collapse(u, yoff, zoff, n * hh * ww * ch);
        if (u->encoder_only) {
            if (u->measure) return SDXL_OK;
            for (int i = 0; i < ns; i++)
                TRY(u->sink(u->sink_user, i, ws_ptr(u, sk[i].off), n, sk[i].h, sk[i].w, sk[i].c, e));
            return u->sink(u->sink_user, ns, h, n, hh, ww, ch, e);
        }
        if (in->ctrl_mid) op_add(u, in->ctrl_mid, h, n * hh * ww * ch);
        /* ControlNet residuals join the skips only, after the mid block read the last one. */
        if (in->ctrl_down)
            for (int i = 0; i < ns; i++)
                op_add(u, in->ctrl_down[i], ws_ptr(u, sk[i].off), n * sk[i].h * sk[i].w * sk[i].c);
    }

    /* Up: each resnet eats the top skip, which lies right below h; its output moves down over it. */
    for (int l = L - 1; l >= 0; l--) {
        for (int j = 0; j <= g->n_res; j++) {
            const unet_res *r = &u->up_res[l][j];
            skip_buf s = sk[--ns];
            float *x = ws_alloc(u, n * hh * ww * (ch + s.c), NULL);
            op_concat(u, h, ch, ws_ptr(u, s.off), s.c, x, n * hh * ww);
            float *y;
            size_t yoff;
            TRY(resblock(u, r, x, n, hh, ww, 1, emb, &y, &yoff, e));
            ch = r->cout;
            h = ws_collapse(u, s.off, yoff, n * hh * ww * ch);
            hoff = s.off;
            if (g->up_depth[l]) TRY(xformer(u, &u->up_xf[l][j], h, n, hh * ww, in, e));
        }
        if (l > 0) {
            /* Nearest upsampling to the next skip's size (2x unless the latent was not a multiple). */
            int64_t th = sk[ns - 1].h, tw = sk[ns - 1].w;
            float *up = ws_alloc(u, n * th * tw * ch, NULL);
            op_resize(u, h, up, n, hh, ww, ch, th, tw);
            size_t yoff;
            float *y = ws_alloc(u, n * th * tw * ch, &yoff);
            TRY(op_conv(u, &u->up_conv[l], up, n, th, tw, y, 0, e));
            hh = th;
            ww = tw;
            h = ws_collapse(u, hoff, yoff, n * hh * ww * ch);
        }
    }

    /* Out: GroupNorm + SiLU (in place, h is dead after), conv_out, back to NCHW. */
    op_gn(u, h, h, n, hh * ww, ch, GN_EPS_RES, u->out_g, u->out_b, 1);
    float *o = ws_alloc(u, n * hh * ww * g->out_ch, NULL);
    TRY(op_conv(u, &u->conv_out, h, n, hh, ww, o, 0, e));
    if (!u->measure) {
        PROF_BEGIN(u);
        OP(u, sdxl_op_nhwc_to_nchw(u->c, o, out, n, hh, ww, g->out_ch, &u->op_err));
        PROF_END(u, SDXL_UNET_OP_OTHER);
    }
    return SDXL_OK;
}

static int check_shape(const sdxl_unet *u, const sdxl_unet_in *in, int need_data, sdxl_err *e) {
    const sdxl_unet_cfg *g = &u->cfg;
    if (in->batch < 1 || in->batch > MAX_BATCH)
        return sdxl_seterr(e, SDXL_ERR_ARG, "unet: batch %lld outside [1, %d]", (long long)in->batch, MAX_BATCH);
    if (in->h < 1 || in->h > MAX_SIDE || in->w < 1 || in->w > MAX_SIDE)
        return sdxl_seterr(e, SDXL_ERR_ARG, "unet: latent %lldx%lld outside [1, %d]", (long long)in->h,
                           (long long)in->w, MAX_SIDE);
    if (in->ctx_len < 1 || in->ctx_len > MAX_CTX)
        return sdxl_seterr(e, SDXL_ERR_ARG, "unet: ctx_len %lld outside [1, %d]", (long long)in->ctx_len, MAX_CTX);
    if (!need_data) return SDXL_OK;
    if (!in->x || !in->t || !in->context || !in->pooled || !in->time_ids)
        return sdxl_seterr(e, SDXL_ERR_ARG, "unet: x, t, context, pooled and time_ids must all be given");
    if (in->pooled_dim < 0 || in->n_time_ids < 0 || in->n_time_ids > 64 ||
        in->pooled_dim + TIME_ID_DIM * in->n_time_ids != g->adm_in)
        return sdxl_seterr(e, SDXL_ERR_ARG,
                           "unet: pooled_dim %lld + 256 * n_time_ids %lld must equal the add-embedding input %lld",
                           (long long)in->pooled_dim, (long long)in->n_time_ids, (long long)g->adm_in);
    if (in->ctrl_hint && in->ctrl_hint_rows != 1 && in->ctrl_hint_rows != in->batch)
        return sdxl_seterr(e, SDXL_ERR_ARG, "unet: ctrl_hint_rows %lld must be 1 or the batch %lld",
                           (long long)in->ctrl_hint_rows, (long long)in->batch);
    if (in->ctrl_down && in->n_ctrl_down != u->n_skips)
        return sdxl_seterr(e, SDXL_ERR_ARG, "unet: %d ControlNet residuals given, the UNet has %d skips",
                           in->n_ctrl_down, u->n_skips);
    return SDXL_OK;
}

static int measure(sdxl_unet *u, const sdxl_unet_in *in, sdxl_err *e) {
    u->measure = 1;
    u->ws_overflow = 0;
    int rc = body(u, in, NULL, e);
    u->measure = 0;
    if (rc == SDXL_OK && u->ws_overflow)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "unet: activations of batch %lld at %lldx%lld do not fit in memory",
                           (long long)in->batch, (long long)in->h, (long long)in->w);
    return rc;
}

int sdxl_unet_estimate(sdxl_unet *u, int64_t batch, int64_t h, int64_t w, int64_t ctx_len, size_t *bytes,
                       sdxl_err *e) {
    sdxl_unet_in in = {.batch = batch, .h = h, .w = w, .ctx_len = ctx_len};
    TRY(check_shape(u, &in, 0, e));
    TRY(measure(u, &in, e));
    *bytes = u->ws_peak;
    return SDXL_OK;
}

double sdxl_unet_flops(sdxl_unet *u, int64_t batch, int64_t h, int64_t w, int64_t ctx_len) {
    sdxl_unet_in in = {.batch = batch, .h = h, .w = w, .ctx_len = ctx_len};
    if (check_shape(u, &in, 0, NULL) != SDXL_OK || measure(u, &in, NULL) != SDXL_OK) return 0;
    return u->flops;
}

void sdxl_unet_trim(sdxl_unet *u) {
    if (!u) return;
    sdxl_compute_release(u->c, u->ws);
    u->ws = NULL;
    u->ws_cap = 0;
    u->plan_b = 0;
}

/* Checks the input and plans (once per shape) the workspace of a real pass. */
static int prepare(sdxl_unet *u, const sdxl_unet_in *in, sdxl_err *e) {
    if (u->validate_only) return sdxl_seterr(e, SDXL_ERR_ARG, "unet: loaded in validate-only mode, cannot run");
    TRY(check_shape(u, in, 1, e));
    if (in->batch != u->plan_b || in->h != u->plan_h || in->w != u->plan_w || in->ctx_len != u->plan_l) {
        TRY(measure(u, in, e));
        size_t need = u->ws_peak;
        if (need > u->ws_cap) {
            sdxl_compute_release(u->c, u->ws);
            u->ws = NULL;
            u->ws_cap = 0;
            u->plan_b = 0;
            void *p = sdxl_compute_alloc(u->c, need, NULL);
            if (!p) return sdxl_seterr(e, SDXL_ERR_NOMEM, "unet: cannot allocate %zu bytes of activations", need);
            u->ws = p;
            u->ws_cap = need;
        }
        u->plan_b = in->batch;
        u->plan_h = in->h;
        u->plan_w = in->w;
        u->plan_l = in->ctx_len;
    }
    return SDXL_OK;
}

/* The pass itself; an op that returns no status records its first failure in op_st. */
static int run_body(sdxl_unet *u, const sdxl_unet_in *in, float *out, sdxl_err *e) {
    u->op_st = 0;
    int rc = body(u, in, out, e);
    if (!rc && u->op_st) {
        rc = u->op_st;
        if (e) *e = u->op_err;
    }
    return rc;
}

int sdxl_unet_forward(sdxl_unet *u, const sdxl_unet_in *in, float *out, sdxl_err *e) {
    if (u->encoder_only) return sdxl_seterr(e, SDXL_ERR_ARG, "unet: a ControlNet trunk has no output; use the encode pass");
    if (!out) return sdxl_seterr(e, SDXL_ERR_ARG, "unet: output buffer is NULL");
    TRY(prepare(u, in, e));
    return run_body(u, in, out, e);
}

int sdxl_unet_encode(sdxl_unet *u, const sdxl_unet_in *in, sdxl_unet_feature_fn sink, void *user, sdxl_err *e) {
    if (!u->encoder_only) return sdxl_seterr(e, SDXL_ERR_ARG, "unet: the encode pass needs a trunk loaded encoder_only");
    if (!sink) return sdxl_seterr(e, SDXL_ERR_ARG, "unet: encode needs a feature sink");
    TRY(prepare(u, in, e));
    u->sink = sink;
    u->sink_user = user;
    int rc = run_body(u, in, NULL, e);
    u->sink = NULL;
    u->sink_user = NULL;
    return rc;
}

/* ---- profile ------------------------------------------------------------------------------- */

const char *sdxl_unet_op_name(sdxl_unet_op op) {
    static const char *const N[SDXL_UNET_OP_COUNT] = {"conv", "linear", "attention", "groupnorm",
                                                     "layernorm", "geglu", "other"};
    return (unsigned)op < SDXL_UNET_OP_COUNT ? N[op] : "?";
}

void sdxl_unet_profile(sdxl_unet *u, int enable) {
    u->profile = enable;
    memset(u->prof_s, 0, sizeof u->prof_s);
    memset(u->prof_n, 0, sizeof u->prof_n);
    memset(u->prof_f, 0, sizeof u->prof_f);
}

void sdxl_unet_profile_get(const sdxl_unet *u, double seconds[SDXL_UNET_OP_COUNT], int64_t calls[SDXL_UNET_OP_COUNT],
                           double flops[SDXL_UNET_OP_COUNT]) {
    memcpy(seconds, u->prof_s, sizeof u->prof_s);
    memcpy(calls, u->prof_n, sizeof u->prof_n);
    memcpy(flops, u->prof_f, sizeof u->prof_f);
}

/* ---- names in both namings ----------------------------------------------------------------- */

/* Walks a geometry-only copy of u once per naming: both walks visit the tensors in one order. */
static int list_pass(const sdxl_unet *u, int encoder_only, sdxl_naming nm, walker *w, sdxl_err *e) {
    sdxl_unet *s = calloc(1, sizeof *s);
    if (!s) return sdxl_seterr(e, SDXL_ERR_NOMEM, "UNet: out of memory");
    s->cfg = u->cfg;
    s->cfg.naming = nm;
    s->encoder_only = encoder_only || u->encoder_only;
    s->n_skips = u->n_skips;
    memcpy(s->skip_ch, u->skip_ch, sizeof s->skip_ch);
    *w = (walker){.mode = W_LIST, .u = s, .e = e};
    int rc = walk(w);
    walker wf = {.mode = W_FREE, .u = s};
    walk(&wf);
    free(s);
    return rc;
}

static void list_free(walker *w) {
    for (size_t i = 0; i < w->n_names; i++) free(w->names[i]);
    free(w->names);
    free(w->shapes);
}

int sdxl_unet_list_names(const sdxl_unet *u, int encoder_only, sdxl_unet_name_fn fn, void *user, sdxl_err *e) {
    walker a, b;
    int rc = list_pass(u, encoder_only, SDXL_NAMING_ORIGINAL, &a, e);
    if (rc == SDXL_OK) rc = list_pass(u, encoder_only, SDXL_NAMING_DIFFUSERS, &b, e);
    else memset(&b, 0, sizeof b);
    if (rc == SDXL_OK && a.n_names != b.n_names)
        rc = sdxl_seterr(e, SDXL_ERR_INTERNAL, "UNet: the namings list %zu and %zu tensors", a.n_names, b.n_names);
    for (size_t i = 0; rc == SDXL_OK && i < a.n_names; i++)
        rc = fn(user, a.names[i], b.names[i], (int)a.shapes[i][0], &a.shapes[i][1], e);
    list_free(&a);
    list_free(&b);
    return rc;
}
