/* SDXL ControlNet: layout detection, the hint block and zero convs, and the pass that turns the
 * trunk's features into scaled residuals. The trunk itself is denoise/unet.c (encoder_only). */
#include "adapters/controlnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/json.h"
#include "tensor/tensor.h"

#define MAX_HINT_BLOCKS 16
#define MAX_ZERO (1 + SDXL_UNET_MAX_LEVELS * (SDXL_UNET_MAX_RES + 1))
#define CFG_MAX (1u << 20)

struct sdxl_controlnet {
    sdxl_controlnet_layout layout;
    sdxl_compute *c;
    sdxl_ckpt *ck;      /* trunk tensors (part UNET) over the ControlNet file */
    const sdxl_st_file *f;
    char prefix[32];    /* "control_model." or "" */
    sdxl_unet *trunk;
    int64_t hint_ch;
    int bgr;            /* config controlnet_conditioning_channel_order "bgr" */
    sdxl_conv2d hint_in;                     /* [c0, hint_ch, 3, 3] */
    sdxl_conv2d hint_blocks[MAX_HINT_BLOCKS]; /* odd index: stride 2 */
    int n_hint_blocks;
    sdxl_conv2d hint_out;                    /* [ch0, c_last, 3, 3] */
    sdxl_conv2d zero[MAX_ZERO];              /* [c_i, c_i, 1, 1] */
    int n_zero;
    sdxl_conv2d zero_mid;                    /* [c_L, c_L, 1, 1] */
    int64_t n_params;
    int lora_rank;
    uint64_t weight_bytes;
    uint8_t *merged;    /* Control-LoRA: the merged trunk's safetensors image, during load only */
    float *scratch;     /* zero-conv output of one feature map, in the context's memory */
    size_t scratch_cap; /* floats */
};

const char *sdxl_controlnet_layout_name(sdxl_controlnet_layout l) {
    switch (l) {
    case SDXL_CN_DIFFUSERS: return "diffusers";
    case SDXL_CN_SGM: return "sgm";
    case SDXL_CN_CONTROL_LORA: return "control-lora";
    }
    return "?";
}

static int starts(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

static int to_dtype(sdxl_st_dtype t, sdxl_dtype *out) {
    switch (t) {
    case SDXL_ST_F32: *out = SDXL_F32; return 1;
    case SDXL_ST_F16: *out = SDXL_F16; return 1;
    case SDXL_ST_BF16: *out = SDXL_BF16; return 1;
    default: return 0;
    }
}

/* Finds prefix+name in the ControlNet file and checks its shape; errors name the tensor. */
static int get_tensor(const sdxl_controlnet *cn, const char *path, const char *name, int ndim, const int64_t *shape,
                      const sdxl_st_tensor **out, sdxl_err *e) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", cn->prefix, name);
    const sdxl_st_tensor *t = sdxl_st_find(cn->f, full);
    *out = t;
    if (!t) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: ControlNet tensor '%s' is missing", path, full);
    sdxl_dtype dt;
    if (!to_dtype(t->dtype, &dt))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: ControlNet tensor '%s': dtype %s, expected F32, F16 or BF16", path,
                           full, sdxl_st_dtype_name(t->dtype));
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = shape[i] <= 0 || t->shape[i] == shape[i];
    if (!ok) {
        char a[96] = "", b[96] = "";
        size_t ka = 0, kb = 0;
        for (int i = 0; i < ndim && ka < sizeof a; i++)
            ka += (size_t)snprintf(a + ka, sizeof a - ka, "%s%lld", i ? ", " : "", (long long)shape[i]);
        for (int i = 0; i < t->ndim && kb < sizeof b; i++)
            kb += (size_t)snprintf(b + kb, sizeof b - kb, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: ControlNet tensor '%s': expected shape [%s], got [%s]", path, full,
                           a, b);
    }
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] <= 0 || t->shape[i] > (1 << 16))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: ControlNet tensor '%s': dimension %d is %lld", path, full, i,
                               (long long)t->shape[i]);
    return SDXL_OK;
}

/* Conv pre+"weight"/"bias": [cout, cin, k, k]; cout/cin <= 0 take the file's value. */
static int load_conv(sdxl_controlnet *cn, const char *path, const char *pre, int64_t cout, int64_t cin, int k,
                     int stride, sdxl_conv2d *cv, sdxl_err *e) {
    char n[160];
    const sdxl_st_tensor *tw, *tb;
    int64_t sw[4] = {cout, cin, k, k};
    snprintf(n, sizeof n, "%sweight", pre);
    if (get_tensor(cn, path, n, 4, sw, &tw, e)) return SDXL_ERR_FORMAT;
    int64_t so = tw->shape[0];
    snprintf(n, sizeof n, "%sbias", pre);
    if (get_tensor(cn, path, n, 1, &so, &tb, e)) return SDXL_ERR_FORMAT;
    sdxl_dtype dw = SDXL_F32, db = SDXL_F32;
    to_dtype(tw->dtype, &dw);
    to_dtype(tb->dtype, &db);
    int p = k / 2;
    int st = sdxl_conv2d_init(cn->c, cv, tw->shape[1], tw->shape[0], k, k, stride, p, p, p, p, tw->data, dw, tb->data,
                              db, e);
    if (st) return sdxl_err_prefix(e, "%s: ControlNet '%s%sweight'", path, cn->prefix, pre);
    cn->n_params += (int64_t)(tw->numel + tb->numel);
    cn->weight_bytes += tw->numel * (sdxl_compute_prec(cn->c) == SDXL_PREC_BF16 ? 2u : 4u) + tb->numel * 4u;
    sdxl_st_release_tensor(cn->f, tw);
    sdxl_st_release_tensor(cn->f, tb);
    return SDXL_OK;
}

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Opens the weights (a folder's diffusion_pytorch_model[.fp16].safetensors or the file) and
 * the folder's config.json. */
static int open_files(const char *path, sdxl_st_file **f, sdxl_json **cfg, sdxl_err *e) {
    struct stat sb;
    *f = NULL;
    *cfg = NULL;
    if (stat(path, &sb) != 0) return sdxl_seterr(e, SDXL_ERR_IO, "%s: ControlNet not found", path);
    if (!S_ISDIR(sb.st_mode)) return sdxl_st_open(path, f, e);
    char w[4096], c[4096];
    const char *names[] = {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"};
    for (int i = 0; i < 2; i++) {
        if ((size_t)snprintf(w, sizeof w, "%s/%s", path, names[i]) >= sizeof w)
            return sdxl_seterr(e, SDXL_ERR_ARG, "%s: path too long", path);
        if (is_file(w)) break;
        w[0] = 0;
    }
    if (!w[0])
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: a ControlNet folder needs diffusion_pytorch_model.safetensors", path);
    snprintf(c, sizeof c, "%s/config.json", path);
    if (is_file(c)) {
        int st = sdxl_json_parse_file(c, CFG_MAX, NULL, cfg, e);
        if (st) return st;
        if ((*cfg)->type != SDXL_JSON_OBJECT) {
            sdxl_json_free(*cfg);
            *cfg = NULL;
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: must hold a JSON object", c);
        }
    }
    int st = sdxl_st_open(w, f, e);
    if (st) {
        sdxl_json_free(*cfg);
        *cfg = NULL;
    }
    return st;
}

/* Layout and key prefix from the names. */
static int detect_layout(const sdxl_st_file *f, const char *path, sdxl_controlnet_layout *lay, const char **prefix,
                         sdxl_err *e) {
    int cm = 0, hint = 0, diff = 0, lora = 0, bare_sgm = 0;
    size_t n = sdxl_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const char *s = sdxl_st_at(f, i)->name;
        cm |= starts(s, "control_model.");
        hint |= starts(s, "input_hint_block.") || starts(s, "control_model.input_hint_block.");
        diff |= starts(s, "controlnet_cond_embedding.");
        lora |= !strcmp(s, "lora_controlnet");
        bare_sgm |= starts(s, "input_blocks.");
    }
    if (lora) {
        *lay = SDXL_CN_CONTROL_LORA;
        *prefix = "";
        return SDXL_OK;
    }
    if (diff) {
        *lay = SDXL_CN_DIFFUSERS;
        *prefix = "";
        return SDXL_OK;
    }
    if (hint && (cm || bare_sgm)) {
        *lay = SDXL_CN_SGM;
        *prefix = cm ? "control_model." : "";
        return SDXL_OK;
    }
    return sdxl_seterr(e, SDXL_ERR_FORMAT,
                       "%s: not a ControlNet (no controlnet_cond_embedding.*, input_hint_block.* or lora_controlnet "
                       "tensor; first: \"%.200s\")",
                       path, n ? sdxl_st_at(f, 0)->name : "(no tensors)");
}

/* SD 1.x/2.x ControlNets have no text_time add-embedding; say so before the trunk check does. */
static int check_sdxl(const sdxl_st_file *f, const char *prefix, const char *path, sdxl_err *e) {
    char n[160];
    const char *adds[] = {"add_embedding.linear_1.weight", "label_emb.0.0.weight"};
    for (int i = 0; i < 2; i++) {
        snprintf(n, sizeof n, "%s%s", prefix, adds[i]);
        if (sdxl_st_find(f, n)) return SDXL_OK;
    }
    int64_t ctx = 0;
    size_t cnt = sdxl_st_count(f);
    for (size_t i = 0; i < cnt && !ctx; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        const char *k = strstr(t->name, "attn2.to_k.weight");
        if (k && t->ndim == 2) ctx = t->shape[1];
    }
    return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED,
                       "%s: an SD 1.x/2.x ControlNet (no SDXL text_time add-embedding%s%lld%s); SDXL needs an SDXL "
                       "ControlNet",
                       path, ctx ? ", cross-attention width " : "", (long long)ctx, ctx ? "" : "");
}

static int load_hint_and_zero(sdxl_controlnet *cn, const char *path, const sdxl_unet_cfg *g, sdxl_err *e) {
    int sgm = cn->layout != SDXL_CN_DIFFUSERS;
    char pre[128];
    /* hint block: conv_in, blocks (stride 1, 2 alternating), conv_out */
    int nb = 0;
    for (;;) {
        char n[160];
        if (sgm) snprintf(n, sizeof n, "%sinput_hint_block.%d.weight", cn->prefix, 2 * (nb + 1));
        else snprintf(n, sizeof n, "%scontrolnet_cond_embedding.blocks.%d.weight", cn->prefix, nb);
        if (!sdxl_st_find(cn->f, n)) break;
        if (++nb > MAX_HINT_BLOCKS)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: more than %d hint-block convs", path, MAX_HINT_BLOCKS - 1);
    }
    if (sgm) nb--; /* the last even index is conv_out */
    if (nb < 0 || nb % 2)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: the hint block has %d inner convs, expected pairs", path, nb);
    cn->n_hint_blocks = nb;
    snprintf(pre, sizeof pre, sgm ? "input_hint_block.0." : "controlnet_cond_embedding.conv_in.");
    if (load_conv(cn, path, pre, 0, 0, 3, 1, &cn->hint_in, e)) return SDXL_ERR_FORMAT;
    cn->hint_ch = cn->hint_in.cin;
    int64_t cprev = cn->hint_in.cout;
    for (int k = 0; k < nb; k++) {
        if (sgm) snprintf(pre, sizeof pre, "input_hint_block.%d.", 2 * (k + 1));
        else snprintf(pre, sizeof pre, "controlnet_cond_embedding.blocks.%d.", k);
        if (load_conv(cn, path, pre, 0, cprev, 3, k % 2 ? 2 : 1, &cn->hint_blocks[k], e)) return SDXL_ERR_FORMAT;
        cprev = cn->hint_blocks[k].cout;
    }
    if (sgm) snprintf(pre, sizeof pre, "input_hint_block.%d.", 2 * (nb + 1));
    else snprintf(pre, sizeof pre, "controlnet_cond_embedding.conv_out.");
    if (load_conv(cn, path, pre, g->ch[0], cprev, 3, 1, &cn->hint_out, e)) return SDXL_ERR_FORMAT;
    /* zero convs, one per skip, then the mid block's */
    cn->n_zero = sdxl_unet_n_skips(cn->trunk);
    for (int i = 0; i < cn->n_zero; i++) {
        int64_t oh, ow, c;
        sdxl_unet_skip_shape(cn->trunk, i, 8, 8, &oh, &ow, &c);
        if (sgm) snprintf(pre, sizeof pre, "zero_convs.%d.0.", i);
        else snprintf(pre, sizeof pre, "controlnet_down_blocks.%d.", i);
        if (load_conv(cn, path, pre, c, c, 1, 1, &cn->zero[i], e)) return SDXL_ERR_FORMAT;
    }
    int64_t cl = g->ch[g->levels - 1];
    snprintf(pre, sizeof pre, sgm ? "middle_block_out.0." : "controlnet_mid_block.");
    return load_conv(cn, path, pre, cl, cl, 1, 1, &cn->zero_mid, e) ? SDXL_ERR_FORMAT : SDXL_OK;
}

/* The residuals must fit the UNet they are added to. */
static int check_fit(const sdxl_controlnet *cn, const sdxl_unet *base, const char *path, sdxl_err *e) {
    const sdxl_unet_cfg *a = sdxl_unet_config(cn->trunk), *b = sdxl_unet_config(base);
    if (a->context_dim != b->context_dim || a->adm_in != b->adm_in)
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: ControlNet context width %lld / add-embedding %lld, the UNet has %lld / %lld (a "
                           "ControlNet for another model?)",
                           path, (long long)a->context_dim, (long long)a->adm_in, (long long)b->context_dim,
                           (long long)b->adm_in);
    if (sdxl_unet_n_skips(cn->trunk) != sdxl_unet_n_skips(base))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: ControlNet has %d skip residuals, the UNet %d", path,
                           sdxl_unet_n_skips(cn->trunk), sdxl_unet_n_skips(base));
    for (int i = 0; i < sdxl_unet_n_skips(base); i++) {
        int64_t h1, w1, c1, h2, w2, c2;
        sdxl_unet_skip_shape(cn->trunk, i, 64, 64, &h1, &w1, &c1);
        sdxl_unet_skip_shape(base, i, 64, 64, &h2, &w2, &c2);
        if (h1 != h2 || w1 != w2 || c1 != c2)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: ControlNet residual %d has %lld channels, the UNet's skip %lld",
                               path, i, (long long)c1, (long long)c2);
    }
    if (a->ch[a->levels - 1] != b->ch[b->levels - 1])
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: ControlNet mid residual has %lld channels, the UNet %lld", path,
                           (long long)a->ch[a->levels - 1], (long long)b->ch[b->levels - 1]);
    return SDXL_OK;
}

static void free_convs(sdxl_controlnet *cn) {
    sdxl_conv2d *all[] = {&cn->hint_in, &cn->hint_out, &cn->zero_mid};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i]->w || all[i]->impl || all[i]->bias) sdxl_conv2d_free(all[i]);
    for (int i = 0; i < MAX_HINT_BLOCKS; i++)
        if (cn->hint_blocks[i].w || cn->hint_blocks[i].impl) sdxl_conv2d_free(&cn->hint_blocks[i]);
    for (int i = 0; i < MAX_ZERO; i++)
        if (cn->zero[i].w || cn->zero[i].impl) sdxl_conv2d_free(&cn->zero[i]);
}

void sdxl_controlnet_free(sdxl_controlnet *cn) {
    if (!cn) return;
    free_convs(cn);
    sdxl_unet_free(cn->trunk);
    sdxl_ckpt_close(cn->ck);
    free(cn->merged);
    sdxl_compute_release(cn->c, cn->scratch);
    free(cn);
}

static int lora_trunk(sdxl_controlnet *cn, const char *path, const sdxl_st_file *f, const sdxl_ckpt *base_ck,
                      const sdxl_unet *base, sdxl_ckpt **out, sdxl_err *e);

/* Head width of the base UNet's first attention (SDXL: 64 everywhere). */
static int base_head_dim(const sdxl_unet *base) {
    const sdxl_unet_cfg *g = sdxl_unet_config(base);
    for (int l = 0; l < g->levels; l++)
        if (g->down_depth[l] && g->heads[l] > 0) return (int)(g->ch[l] / g->heads[l]);
    return (int)(g->ch[g->levels - 1] / (g->mid_heads > 0 ? g->mid_heads : 1));
}

int sdxl_controlnet_load(sdxl_compute *c, const char *path, const sdxl_unet *base, const sdxl_ckpt *base_ck,
                         const sdxl_logger *log, sdxl_controlnet **out, sdxl_err *e) {
    *out = NULL;
    if (!c || !path || !base) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_controlnet_load: c, path and base are required");
    sdxl_controlnet *cn = calloc(1, sizeof *cn);
    if (!cn) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    cn->c = c;
    sdxl_st_file *f = NULL;
    sdxl_json *cfg = NULL;
    const char *prefix = "";
    int st = open_files(path, &f, &cfg, e);
    if (!st) st = detect_layout(f, path, &cn->layout, &prefix, e);
    if (!st && cn->layout != SDXL_CN_CONTROL_LORA) st = check_sdxl(f, prefix, path, e);
    if (st) {
        sdxl_st_close(f);
        sdxl_json_free(cfg);
        free(cn);
        return st;
    }
    snprintf(cn->prefix, sizeof cn->prefix, "%s", prefix);
    cn->f = f;
    if (cfg) {
        const char *order = sdxl_json_str(cfg, "controlnet_conditioning_channel_order", "rgb");
        cn->bgr = !strcmp(order, "bgr");
        if (sdxl_json_bool(cfg, "global_pool_conditions", 0)) {
            sdxl_st_close(f);
            sdxl_json_free(cfg);
            free(cn);
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: global_pool_conditions ControlNets are not supported",
                               path);
        }
    }
    static const char *const EXTRA_DIFF[] = {"controlnet_cond_embedding.", "controlnet_down_blocks.",
                                             "controlnet_mid_block.", NULL};
    static const char *const EXTRA_SGM[] = {"input_hint_block.", "zero_convs.", "middle_block_out.", NULL};
    sdxl_unet_opts uo;
    sdxl_unet_opts_init(&uo);
    uo.encoder_only = 1;
    uo.extra_prefixes = cn->layout == SDXL_CN_DIFFUSERS ? EXTRA_DIFF : EXTRA_SGM;
    if (cn->layout == SDXL_CN_CONTROL_LORA) {
        sdxl_json_free(cfg);
        /* the trunk's heads follow the base UNet's */
        uo.head_dim = base_head_dim(base);
        st = lora_trunk(cn, path, f, base_ck, base, &cn->ck, e);
    } else {
        /* heads: config.json, else a .yaml beside the file, else the base UNet's head width */
        char yp[4200];
        size_t pl = strlen(path);
        snprintf(yp, sizeof yp, "%.*s.yaml", (int)(pl > 12 && !strcmp(path + pl - 12, ".safetensors") ? pl - 12 : pl),
                 path);
        if (!cfg && !is_file(yp)) uo.head_dim = base_head_dim(base);
        st = sdxl_ckpt_wrap(f, SDXL_PART_UNET, prefix, cfg, path, &cn->ck, e);
        f = NULL; /* owned by cn->ck */
    }
    if (!st) {
        st = sdxl_unet_load(c, cn->ck, &uo, &cn->trunk, e);
        if (st) sdxl_err_prefix(e, "ControlNet %s", path);
    }
    if (cn->layout == SDXL_CN_CONTROL_LORA) {
        /* the trunk is converted: its merged source goes, the Control-LoRA file stays for the rest */
        sdxl_ckpt_close(cn->ck);
        cn->ck = NULL;
        free(cn->merged);
        cn->merged = NULL;
        if (!st) st = sdxl_ckpt_wrap(f, SDXL_PART_UNET, "", NULL, path, &cn->ck, e);
        else sdxl_st_close(f);
    }
    if (!st) st = check_fit(cn, base, path, e);
    if (!st) st = load_hint_and_zero(cn, path, sdxl_unet_config(cn->trunk), e);
    if (st) {
        sdxl_controlnet_free(cn);
        return st;
    }
    cn->n_params += sdxl_unet_config(cn->trunk)->n_params;
    sdxl_unet_stats us;
    sdxl_unet_stats_get(cn->trunk, &us);
    cn->weight_bytes += us.weight_bytes;
    sdxl_ckpt_release_pages(cn->ck);
    if (log)
        SDXL_INFO(log, "ControlNet %s (%s): %lld params, %.1f MB of weights", path,
                  sdxl_controlnet_layout_name(cn->layout), (long long)cn->n_params, (double)cn->weight_bytes / 1e6);
    *out = cn;
    return SDXL_OK;
}

void sdxl_controlnet_get_info(const sdxl_controlnet *cn, sdxl_controlnet_info *info) {
    info->layout = cn->layout;
    info->hint_ch = cn->hint_ch;
    info->n_hint_blocks = cn->n_hint_blocks;
    info->n_skips = cn->n_zero;
    info->n_params = cn->n_params;
    info->lora_rank = cn->lora_rank;
    info->trunk = sdxl_unet_config(cn->trunk);
}

sdxl_unet *sdxl_controlnet_trunk(sdxl_controlnet *cn) { return cn->trunk; }
uint64_t sdxl_controlnet_weight_bytes(const sdxl_controlnet *cn) { return cn->weight_bytes; }

/* ---- hint block ------------------------------------------------------------------------------ */

/* Largest activation of the hint block at H x W, in floats per image. */
static int64_t hint_max_floats(const sdxl_controlnet *cn, int64_t H, int64_t W) {
    int64_t h = H, w = W, m = H * W * (cn->hint_ch > cn->hint_in.cout ? cn->hint_ch : cn->hint_in.cout);
    for (int k = 0; k < cn->n_hint_blocks; k++) {
        sdxl_conv2d_out_size(&cn->hint_blocks[k], h, w, &h, &w);
        if (h * w * cn->hint_blocks[k].cout > m) m = h * w * cn->hint_blocks[k].cout;
    }
    return m;
}

uint64_t sdxl_controlnet_hint_bytes(const sdxl_controlnet *cn, int64_t H, int64_t W) {
    return 2u * (uint64_t)hint_max_floats(cn, H, W) * sizeof(float);
}

int sdxl_controlnet_hint(sdxl_controlnet *cn, const float *img, int64_t rows, int64_t H, int64_t W, float *out,
                         sdxl_err *e) {
    if (rows < 1 || H < 8 || W < 8 || H % 8 || W % 8 || H > 65536 || W > 65536)
        return sdxl_seterr(e, SDXL_ERR_ARG, "control image: %lldx%lld must be multiples of 8", (long long)W,
                           (long long)H);
    /* activations in the context's memory (the device's on a Vulkan context); the image goes up once */
    int64_t m = hint_max_floats(cn, H, W);
    const int64_t ch = cn->hint_ch;
    float *a = sdxl_compute_alloc(cn->c, (size_t)m * sizeof(float), e);
    float *b = a ? sdxl_compute_alloc(cn->c, (size_t)m * sizeof(float), e) : NULL;
    float *swap = cn->bgr ? malloc((size_t)(H * W * ch) * sizeof(float)) : NULL;
    int st = SDXL_OK;
    if (!a || !b || (cn->bgr && !swap))
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory embedding a %lldx%lld control image", (long long)W,
                         (long long)H);
    int64_t oh = H / 8, ow = W / 8, oc = cn->hint_out.cout;
    for (int64_t r = 0; r < rows && !st; r++) {
        const float *src = img + r * H * W * ch;
        if (cn->bgr) {
            for (int64_t i = 0; i < H * W; i++)
                for (int64_t k = 0; k < ch; k++) swap[i * ch + k] = src[i * ch + (ch - 1 - k)];
            src = swap;
        }
        int64_t h = H, w = W;
        st = sdxl_op_copy(cn->c, b, src, (size_t)(H * W * ch) * sizeof(float), e);
        if (!st) st = sdxl_conv2d_fwd(cn->c, &cn->hint_in, b, 1, h, w, a, 0, e);
        if (!st) st = sdxl_op_silu(cn->c, a, h * w * cn->hint_in.cout, e);
        for (int k = 0; k < cn->n_hint_blocks && !st; k++) {
            int64_t nh, nw;
            sdxl_conv2d_out_size(&cn->hint_blocks[k], h, w, &nh, &nw);
            st = sdxl_conv2d_fwd(cn->c, &cn->hint_blocks[k], a, 1, h, w, b, 0, e);
            h = nh;
            w = nw;
            if (!st) st = sdxl_op_silu(cn->c, b, h * w * cn->hint_blocks[k].cout, e);
            float *t = a;
            a = b;
            b = t;
        }
        if (st) break;
        if (h != oh || w != ow) {
            st = sdxl_seterr(e, SDXL_ERR_FORMAT, "ControlNet hint block maps %lldx%lld pixels to %lldx%lld, not 1/8",
                             (long long)W, (long long)H, (long long)w, (long long)h);
            break;
        }
        st = sdxl_conv2d_fwd(cn->c, &cn->hint_out, a, 1, h, w, out + r * oh * ow * oc, 0, e);
    }
    if (!st) st = sdxl_compute_sync(cn->c, e);
    sdxl_compute_release(cn->c, a);
    sdxl_compute_release(cn->c, b);
    free(swap);
    return st ? sdxl_err_prefix(e, "ControlNet hint") : SDXL_OK;
}

/* ---- pass -------------------------------------------------------------------------------------- */

typedef struct sink_ctx {
    sdxl_controlnet *cn;
    float scale;
    int guess;
    float *const *acc_down;
    float *acc_mid;
    int64_t row0;
} sink_ctx;

static int zero_sink(void *user, int i, const float *x, int64_t n, int64_t h, int64_t w, int64_t c, sdxl_err *e) {
    sink_ctx *s = user;
    sdxl_controlnet *cn = s->cn;
    const sdxl_conv2d *cv = i < cn->n_zero ? &cn->zero[i] : &cn->zero_mid;
    size_t need = (size_t)(n * h * w * cv->cout);
    if (need > cn->scratch_cap) { /* grows on the first pass of a shape only */
        sdxl_compute_release(cn->c, cn->scratch);
        cn->scratch = sdxl_compute_alloc(cn->c, need * sizeof(float), e);
        cn->scratch_cap = cn->scratch ? need : 0;
        if (!cn->scratch) return sdxl_err_prefix(e, "ControlNet: residual %d", i);
    }
    (void)c;
    int st = sdxl_conv2d_fwd(cn->c, cv, x, n, h, w, cn->scratch, 0, e);
    if (st) return st;
    /* diffusers guess mode: scales = logspace(-1, 0, n_down + 1), the mid residual takes the last (1) */
    float k = s->scale;
    if (s->guess && i < cn->n_zero) k *= powf(10.0f, -1.0f + (float)i / (float)cn->n_zero);
    float *acc = (i < cn->n_zero ? s->acc_down[i] : s->acc_mid) + s->row0 * h * w * cv->cout;
    return sdxl_op_axpy(cn->c, k, cn->scratch, acc, (int64_t)need, e);
}

int sdxl_controlnet_apply(sdxl_controlnet *cn, const sdxl_unet_in *in, float scale, int guess, float *const *acc_down,
                          float *acc_mid, int64_t acc_row0, sdxl_err *e) {
    if (!in->ctrl_hint) return sdxl_seterr(e, SDXL_ERR_ARG, "ControlNet: no hint embedding given");
    if (!acc_down || !acc_mid) return sdxl_seterr(e, SDXL_ERR_ARG, "ControlNet: residual buffers are required");
    sink_ctx s = {cn, scale, guess, acc_down, acc_mid, acc_row0};
    return sdxl_unet_encode(cn->trunk, in, zero_sink, &s, e);
}

int sdxl_controlnet_estimate(sdxl_controlnet *cn, int64_t batch, int64_t h, int64_t w, int64_t ctx_len,
                             size_t *bytes, sdxl_err *e) {
    size_t tb = 0;
    int st = sdxl_unet_estimate(cn->trunk, batch, h, w, ctx_len, &tb, e);
    if (st) return st;
    int64_t oh, ow, c, m = 0;
    for (int i = 0; i < cn->n_zero; i++) {
        sdxl_unet_skip_shape(cn->trunk, i, h, w, &oh, &ow, &c);
        if (oh * ow * c > m) m = oh * ow * c;
    }
    *bytes = tb + (size_t)(batch * m) * sizeof(float);
    return SDXL_OK;
}

void sdxl_controlnet_trim(sdxl_controlnet *cn) {
    if (!cn) return;
    sdxl_unet_trim(cn->trunk);
    sdxl_compute_release(cn->c, cn->scratch);
    cn->scratch = NULL;
    cn->scratch_cap = 0;
}

/* ---- Control-LoRA ------------------------------------------------------------------------------- */

/* Stability's Control-LoRA (as ComfyUI's ControlLora loads it): sgm names without prefix; a
 * "lora_controlnet" marker; for a LoRA'd layer "<module>.up" [out, r(, 1, 1)] and "<module>.down"
 * [r, in(, kh, kw)] with W = W_base + up.flatten(1) @ down.flatten(1); any other trunk tensor
 * present in the file replaces the base's; absent ones are the base UNet's. The merged trunk is
 * built in memory as a safetensors image (in the base's dtype) and converted like any trunk. */

typedef struct merge_item {
    char *name;            /* sgm name */
    const sdxl_st_tensor *src; /* base or file tensor */
    const sdxl_st_tensor *up, *down;
    int ndim;
    int64_t shape[4];
    uint64_t numel, off;
    sdxl_st_dtype dt;
} merge_item;

typedef struct merge_ctx {
    const sdxl_st_file *f;
    const sdxl_ckpt *base_ck;
    const char *path;
    merge_item *it;
    size_t n, cap;
    int rank;
} merge_ctx;

static int merge_add(void *user, const char *orig, const char *diff, int ndim, const int64_t *shape, sdxl_err *e) {
    merge_ctx *m = user;
    if (m->n == m->cap) {
        size_t nc = m->cap ? 2 * m->cap : 1024;
        merge_item *ni = realloc(m->it, nc * sizeof *ni);
        if (!ni) return sdxl_seterr(e, SDXL_ERR_NOMEM, "Control-LoRA: out of memory");
        m->it = ni;
        m->cap = nc;
    }
    merge_item *it = &m->it[m->n];
    memset(it, 0, sizeof *it);
    if (!(it->name = strdup(orig))) return sdxl_seterr(e, SDXL_ERR_NOMEM, "Control-LoRA: out of memory");
    m->n++;
    it->ndim = ndim;
    it->numel = 1;
    for (int i = 0; i < ndim; i++) {
        it->shape[i] = shape[i];
        it->numel *= (uint64_t)shape[i];
    }
    const sdxl_st_tensor *t = sdxl_st_find(m->f, orig);
    const sdxl_st_tensor *b = sdxl_ckpt_find(m->base_ck, SDXL_PART_UNET,
                                             sdxl_ckpt_naming(m->base_ck, SDXL_PART_UNET) == SDXL_NAMING_DIFFUSERS ? diff : orig);
    it->src = t ? t : b;
    if (!it->src)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: Control-LoRA tensor '%s' is neither in the file nor in the base UNet",
                           m->path, orig);
    int ok = it->src->ndim == ndim && it->src->numel == it->numel;
    for (int i = 0; ok && i < ndim; i++) ok = it->src->shape[i] == shape[i];
    sdxl_dtype dd;
    if (!ok || !to_dtype(it->src->dtype, &dd))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: Control-LoRA trunk tensor '%s' (%s): wrong shape or dtype", m->path,
                           orig, t ? "from the file" : "from the base UNet");
    it->dt = it->src->dtype == SDXL_ST_F32 && b ? b->dtype : it->src->dtype;
    if (it->dt == SDXL_ST_F32 && t && b) it->dt = b->dtype;
    size_t nl = strlen(orig);
    if (nl > 7 && !strcmp(orig + nl - 7, ".weight") && nl < 240) {
        char mod[256];
        snprintf(mod, sizeof mod, "%.*s.up", (int)(nl - 7), orig);
        it->up = sdxl_st_find(m->f, mod);
        snprintf(mod, sizeof mod, "%.*s.down", (int)(nl - 7), orig);
        it->down = sdxl_st_find(m->f, mod);
        if (!it->up != !it->down)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: Control-LoRA '%.*s' has only one of .up/.down", m->path,
                               (int)(nl - 7), orig);
        if (it->up) {
            int64_t r = it->down->shape[0];
            sdxl_dtype ud, dd2;
            int good = it->up->ndim >= 2 && it->down->ndim >= 2 && r > 0 && it->up->shape[0] == shape[0] &&
                       (uint64_t)r * (uint64_t)shape[0] == it->up->numel && it->up->numel / (uint64_t)shape[0] == (uint64_t)r &&
                       it->down->numel == (uint64_t)r * (it->numel / (uint64_t)shape[0]) && to_dtype(it->up->dtype, &ud) &&
                       to_dtype(it->down->dtype, &dd2);
            if (!good)
                return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: Control-LoRA '%.*s.up/.down': shapes do not make [%lld, ...]",
                                   m->path, (int)(nl - 7), orig, (long long)shape[0]);
            if (r > m->rank) m->rank = (int)r;
        }
    }
    return SDXL_OK;
}

/* Every .up/.down of the file must belong to a trunk weight (catches a LoRA for another model). */
static int check_lora_keys(const merge_ctx *m, sdxl_err *e) {
    size_t n = sdxl_st_count(m->f);
    for (size_t i = 0; i < n; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(m->f, i);
        size_t nl = strlen(t->name);
        int up = nl > 3 && !strcmp(t->name + nl - 3, ".up"), down = nl > 5 && !strcmp(t->name + nl - 5, ".down");
        if (!up && !down) continue;
        int found = 0;
        for (size_t k = 0; k < m->n && !found; k++) found = m->it[k].up == t || m->it[k].down == t;
        if (!found)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: Control-LoRA tensor '%s' matches no layer of the base UNet's trunk",
                               m->path, t->name);
    }
    return SDXL_OK;
}

static int lora_trunk(sdxl_controlnet *cn, const char *path, const sdxl_st_file *f, const sdxl_ckpt *base_ck,
                      const sdxl_unet *base, sdxl_ckpt **out, sdxl_err *e) {
    *out = NULL;
    if (!base_ck) return sdxl_seterr(e, SDXL_ERR_ARG, "%s: a Control-LoRA needs the base checkpoint", path);
    merge_ctx m = {.f = f, .base_ck = base_ck, .path = path};
    int st = sdxl_unet_list_names(base, 1, merge_add, &m, e);
    if (!st) st = check_lora_keys(&m, e);
    /* header: {"name":{"dtype":..,"shape":[..],"data_offsets":[a,b]},...} padded to 8 */
    size_t hcap = 64, hlen = 0;
    uint64_t data = 0;
    for (size_t i = 0; !st && i < m.n; i++) {
        merge_item *it = &m.it[i];
        it->off = data;
        data += it->numel * sdxl_st_dtype_size(it->dt);
        hcap += strlen(it->name) + 160;
    }
    char *hdr = st ? NULL : malloc(hcap);
    if (!st && !hdr) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "Control-LoRA: out of memory");
    if (!st) {
        hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "{");
        for (size_t i = 0; i < m.n; i++) {
            merge_item *it = &m.it[i];
            hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                                     it->name, sdxl_st_dtype_name(it->dt));
            for (int k = 0; k < it->ndim; k++)
                hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "%s%lld", k ? "," : "", (long long)it->shape[k]);
            uint64_t end = it->off + it->numel * sdxl_st_dtype_size(it->dt);
            hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "],\"data_offsets\":[%llu,%llu]}",
                                     (unsigned long long)it->off, (unsigned long long)end);
        }
        hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "}");
        while (hlen % 8) hdr[hlen++] = ' ';
    }
    uint8_t *buf = NULL;
    size_t total = 8 + hlen + (size_t)data;
    if (!st && !(buf = malloc(total))) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "Control-LoRA: out of memory for %zu bytes", total);
    float *w = NULL, *u = NULL, *d = NULL;
    if (!st) {
        for (int k = 0; k < 8; k++) buf[k] = (uint8_t)((uint64_t)hlen >> (8 * k));
        memcpy(buf + 8, hdr, hlen);
        uint8_t *dst = buf + 8 + hlen;
        for (size_t i = 0; !st && i < m.n; i++) {
            merge_item *it = &m.it[i];
            sdxl_dtype sd = SDXL_F32, od = SDXL_F32;
            to_dtype(it->src->dtype, &sd);
            to_dtype(it->dt, &od);
            if (!it->up && it->src->dtype == it->dt) {
                memcpy(dst + it->off, it->src->data, it->src->nbytes);
                continue;
            }
            w = malloc(it->numel * sizeof(float));
            if (!w) {
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "Control-LoRA: out of memory");
                break;
            }
            sdxl_to_f32(it->src->data, sd, w, it->numel);
            if (it->up) {
                int64_t O = it->shape[0], r = it->down->shape[0], K = (int64_t)(it->numel / (uint64_t)O);
                u = malloc((size_t)(O * r) * sizeof(float));
                d = malloc((size_t)(r * K) * sizeof(float));
                if (!u || !d) {
                    st = sdxl_seterr(e, SDXL_ERR_NOMEM, "Control-LoRA: out of memory");
                    break;
                }
                sdxl_dtype ud = SDXL_F32, dd = SDXL_F32;
                to_dtype(it->up->dtype, &ud);
                to_dtype(it->down->dtype, &dd);
                sdxl_to_f32(it->up->data, ud, u, (size_t)(O * r));
                sdxl_to_f32(it->down->data, dd, d, (size_t)(r * K));
                for (int64_t o = 0; o < O; o++)
                    for (int64_t q = 0; q < r; q++) {
                        float a = u[o * r + q];
                        if (a != 0)
                            for (int64_t k = 0; k < K; k++) w[o * K + k] += a * d[q * K + k];
                    }
                free(u);
                free(d);
                u = d = NULL;
            }
            if (od == SDXL_F16) sdxl_f32_to_f16(w, (uint16_t *)(void *)(dst + it->off), it->numel);
            else if (od == SDXL_BF16) sdxl_f32_to_bf16(w, (uint16_t *)(void *)(dst + it->off), it->numel);
            else memcpy(dst + it->off, w, it->numel * sizeof(float));
            free(w);
            w = NULL;
        }
    }
    free(w);
    free(u);
    free(d);
    free(hdr);
    for (size_t i = 0; i < m.n; i++) free(m.it[i].name);
    free(m.it);
    sdxl_st_file *mf = NULL;
    if (!st) st = sdxl_st_open_memory(buf, total, path, &mf, e);
    if (!st) {
        cn->merged = buf;
        buf = NULL;
        st = sdxl_ckpt_wrap(mf, SDXL_PART_UNET, "", NULL, path, out, e);
    }
    free(buf);
    cn->lora_rank = m.rank;
    return st;
}
