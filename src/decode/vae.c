/* SDXL VAE: AutoencoderKL encoder and decoder (sgm Encoder/Decoder = diffusers AutoencoderKL).
 *
 *   encode: conv_in -> levels of [resnets, downsample (pad right/bottom 1, conv stride 2)]
 *           -> mid (resnet, attention, resnet) -> GN+SiLU -> conv_out -> quant_conv -> moments
 *   decode: post_quant_conv -> conv_in -> mid -> levels of [resnets, nearest x2 + conv]
 *           -> GN+SiLU -> conv_out
 *
 * Every activation lives in one of three workspace buffers of equal size, sized before the
 * call from the shapes (so the memory estimate is the allocation, not a guess). */
#include "decode/vae.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/arena.h"
#include "base/mem.h"

#define VAE_EPS 1e-6f
#define VAE_MAX_SIDE (1 << 14) /* latent pixels a side (131072 image pixels) */
#define VAE_MAX_BATCH 4096
#define VAE_MAX_CH 65536

typedef struct vae_resnet {
    int cin, cout, has_shortcut;
    float *norm1_w, *norm1_b; /* [cin] */
    sdxl_conv2d conv1;        /* [cout, cin, 3, 3] */
    float *norm2_w, *norm2_b; /* [cout] */
    sdxl_conv2d conv2;        /* [cout, cout, 3, 3] */
    sdxl_conv2d shortcut;     /* [cout, cin, 1, 1], only when cin != cout */
} vae_resnet;

/* Single-head self-attention over the h*w tokens, head dim = channels. */
typedef struct vae_attn {
    int c;
    float *norm_w, *norm_b; /* [c] */
    sdxl_linear qkv;        /* [3c, c]: q, k, v stacked (1x1 convs in sgm, linears in diffusers) */
    sdxl_linear proj;       /* [c, c] */
} vae_attn;

typedef struct vae_encoder {
    sdxl_conv2d conv_in;                                    /* [ch0, in, 3, 3] */
    vae_resnet down[SDXL_VAE_MAX_LEVELS][SDXL_VAE_MAX_RES]; /* level i: ch[i] */
    sdxl_conv2d downsample[SDXL_VAE_MAX_LEVELS];            /* [ch_i, ch_i, 3, 3], s2, pad (0,0,1,1); not last */
    vae_resnet mid1;
    vae_attn mid_attn;
    vae_resnet mid2;
    float *norm_out_w, *norm_out_b; /* [ch_last] */
    sdxl_conv2d conv_out;           /* [2 lc, ch_last, 3, 3] */
    sdxl_conv2d quant_conv;         /* [2 lc, 2 lc, 1, 1] */
} vae_encoder;

typedef struct vae_decoder {
    sdxl_conv2d post_quant_conv; /* [lc, lc, 1, 1] */
    sdxl_conv2d conv_in;         /* [ch_last, lc, 3, 3] */
    vae_resnet mid1;
    vae_attn mid_attn;
    vae_resnet mid2;
    vae_resnet up[SDXL_VAE_MAX_LEVELS][SDXL_VAE_MAX_RES]; /* level i: ch[i]; run from the top level down */
    sdxl_conv2d upsample[SDXL_VAE_MAX_LEVELS]
                        [4];        /* nearest x2 + conv 3x3 as 4 phases [ch_i, ch_i, 2, 2]; not level 0 */
    float *norm_out_w, *norm_out_b; /* [ch0] */
    sdxl_conv2d conv_out;           /* [out, ch0, 3, 3] */
} vae_decoder;

struct sdxl_vae {
    sdxl_vae_config cfg;
    sdxl_compute *comp;
    sdxl_arena wa; /* norm vectors */
    vae_encoder enc;
    vae_decoder dec;
    size_t weight_bytes;
    float *ws[3];
    size_t ws_cap[3];    /* floats in each workspace buffer */
    uint64_t last_bytes; /* workspace + tile buffers of the last call */
};

/* ---- names: one table, two namings ------------------------------------------------------- */

/* Base name of encoder resnet j of level i, decoder resnet j of level i (level 0 = finest). */
static void enc_block(const sdxl_vae_config *cfg, int i, int j, char *b, size_t cap) {
    if (cfg->naming == SDXL_NAMING_DIFFUSERS)
        snprintf(b, cap, "encoder.down_blocks.%d.resnets.%d", i, j);
    else
        snprintf(b, cap, "encoder.down.%d.block.%d", i, j);
}

static void dec_block(const sdxl_vae_config *cfg, int i, int j, char *b, size_t cap) {
    if (cfg->naming == SDXL_NAMING_DIFFUSERS)
        snprintf(b, cap, "decoder.up_blocks.%d.resnets.%d", cfg->n_levels - 1 - i, j);
    else
        snprintf(b, cap, "decoder.up.%d.block.%d", i, j);
}

static const char *pick(const sdxl_vae_config *cfg, const char *sgm, const char *diff) {
    return cfg->naming == SDXL_NAMING_DIFFUSERS ? diff : sgm;
}

/* ---- loader: pass 1 validates everything, pass 2 converts --------------------------------- */

typedef struct loader {
    const sdxl_ckpt *ck;
    sdxl_compute *comp; /* NULL while validating */
    sdxl_vae *v;
    sdxl_vae_config *cfg;
    float *tmp; /* conversion buffer: 2 max_numel + 4 VAE_MAX_CH floats */
    size_t max_numel;
    int64_t n_params;
    char **names; /* expected names (validation pass) */
    size_t n_names, cap_names;
    sdxl_err *e;
} loader;

static int is_float(sdxl_st_dtype t) {
    return t == SDXL_ST_F32 || t == SDXL_ST_F16 || t == SDXL_ST_BF16 || t == SDXL_ST_F8_E4M3 || t == SDXL_ST_F8_E5M2;
}

static int add_name(loader *L, const char *name) {
    if (L->n_names == L->cap_names) {
        size_t cap = L->cap_names ? L->cap_names * 2 : 512;
        char **n = realloc(L->names, cap * sizeof *n);
        if (!n) return sdxl_seterr(L->e, SDXL_ERR_NOMEM, "vae: out of memory listing tensor names");
        L->names = n;
        L->cap_names = cap;
    }
    if (!(L->names[L->n_names] = strdup(name))) return sdxl_seterr(L->e, SDXL_ERR_NOMEM, "vae: out of memory");
    L->n_names++;
    return SDXL_OK;
}

/* Finds `name` and checks dtype and shape; a 1x1 conv [a, b, 1, 1] and a linear [a, b] are
 * accepted for each other when alt_1x1 is set. */
static int check(loader *L, const char *name, int ndim, const int64_t *shape, int alt_1x1, const sdxl_st_tensor **out) {
    const sdxl_st_tensor *t = sdxl_ckpt_find(L->ck, SDXL_PART_VAE, name);
    if (!t) return sdxl_seterr(L->e, SDXL_ERR_FORMAT, "vae tensor \"%s\": missing", name);
    if (!is_float(t->dtype))
        return sdxl_seterr(L->e, SDXL_ERR_FORMAT, "vae tensor \"%s\": dtype %s, expected F32, F16, BF16, F8_E4M3 or F8_E5M2", name,
                           sdxl_st_dtype_name(t->dtype));
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok && alt_1x1) {
        if (ndim == 2 && t->ndim == 4)
            ok = t->shape[0] == shape[0] && t->shape[1] == shape[1] && t->shape[2] == 1 && t->shape[3] == 1;
        else if (ndim == 4 && t->ndim == 2)
            ok = t->shape[0] == shape[0] && t->shape[1] == shape[1];
    }
    if (!ok) {
        char want[96] = "", got[96] = "";
        for (int i = 0, p = 0; i < ndim; i++)
            p += snprintf(want + p, sizeof want - p, i ? ",%lld" : "%lld", (long long)shape[i]);
        for (int i = 0, p = 0; i < t->ndim && i < 8; i++)
            p += snprintf(got + p, sizeof got - p, i ? ",%lld" : "%lld", (long long)t->shape[i]);
        return sdxl_seterr(L->e, SDXL_ERR_FORMAT, "vae tensor \"%s\": shape [%s], expected [%s]", name, got, want);
    }
    if (!L->comp) {
        L->n_params += (int64_t)t->numel;
        if (t->numel > L->max_numel) L->max_numel = t->numel;
        int rc = add_name(L, name);
        if (rc) return rc;
    }
    *out = t;
    return SDXL_OK;
}

static int read_into(loader *L, const sdxl_st_tensor *t, const char *name, float *dst) {
    return sdxl_ckpt_read_f32(L->ck, SDXL_PART_VAE, name, t->ndim, t->shape, dst, L->e);
}

/* Norm / bias vector [n] into the weight arena. */
static int ld_vec(loader *L, float **dst, const char *base, const char *suffix, int64_t n) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", base, suffix);
    const sdxl_st_tensor *t;
    int rc = check(L, name, 1, &n, 0, &t);
    if (rc || !L->comp) return rc;
    if (!(*dst = sdxl_arena_alloc_array(&L->v->wa, (size_t)n, sizeof(float))))
        return sdxl_seterr(L->e, SDXL_ERR_NOMEM, "vae: out of memory for \"%s\"", name);
    L->v->weight_bytes += (size_t)n * sizeof(float);
    return read_into(L, t, name, *dst);
}

static int ld_conv(loader *L, sdxl_conv2d *cv, const char *base, int64_t cout, int64_t cin, int k, int stride, int pt,
                   int pl, int pb, int pr) {
    char wn[256], bn[256];
    snprintf(wn, sizeof wn, "%s.weight", base);
    snprintf(bn, sizeof bn, "%s.bias", base);
    const int64_t ws[4] = {cout, cin, k, k};
    const sdxl_st_tensor *tw, *tb;
    int rc = check(L, wn, 4, ws, k == 1, &tw);
    if (!rc) rc = check(L, bn, 1, &cout, 0, &tb);
    if (rc || !L->comp) return rc;
    float *bias = L->tmp + tw->numel;
    if ((rc = read_into(L, tw, wn, L->tmp)) || (rc = read_into(L, tb, bn, bias))) return rc;
    rc = sdxl_conv2d_init(L->comp, cv, cin, cout, k, k, stride, pt, pl, pb, pr, L->tmp, SDXL_F32, bias, SDXL_F32, L->e);
    if (rc) return sdxl_err_prefix(L->e, "vae conv \"%s\"", base);
    L->v->weight_bytes += (size_t)tw->numel * (sdxl_compute_prec(L->comp) == SDXL_PREC_BF16 ? 2 : 4) + cout * 4;
    return SDXL_OK;
}

/* Nearest x2 upsampling followed by a 3x3 conv (pad 1) is, for the output pixel (2i+a, 2j+b),
 * a 2x2 conv of the input at (i, j): along each axis phase 0 reads rows (i-1, i) with taps
 * (w0, w1+w2), phase 1 rows (i, i+1) with taps (w0+w1, w2). Four 2x2 convs do 16/36 of the
 * multiply-adds of the 3x3 conv on the upsampled image and need no upsampled copy. */
static int ld_upconv(loader *L, sdxl_conv2d *cv, const char *base, int64_t c) {
    char wn[256], bn[256];
    snprintf(wn, sizeof wn, "%s.weight", base);
    snprintf(bn, sizeof bn, "%s.bias", base);
    const int64_t ws[4] = {c, c, 3, 3};
    const sdxl_st_tensor *tw, *tb;
    int rc = check(L, wn, 4, ws, 0, &tw);
    if (!rc) rc = check(L, bn, 1, &c, 0, &tb);
    if (rc || !L->comp) return rc;
    float *w3 = L->tmp, *bias = w3 + 9 * c * c, *k = bias + c;
    if ((rc = read_into(L, tw, wn, w3)) || (rc = read_into(L, tb, bn, bias))) return rc;
    static const int lo[2][2] = {{0, 1}, {0, 2}}, hi[2][2] = {{0, 2}, {1, 2}}; /* [phase][tap]: 3x3 rows lo..hi */
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            for (int64_t oi = 0; oi < c * c; oi++)
                for (int r = 0; r < 2; r++)
                    for (int s2 = 0; s2 < 2; s2++) {
                        float sum = 0.0f;
                        for (int ky = lo[a][r]; ky <= hi[a][r]; ky++)
                            for (int kx = lo[b][s2]; kx <= hi[b][s2]; kx++)
                                sum += w3[oi * 9 + ky * 3 + kx];
                        k[oi * 4 + r * 2 + s2] = sum;
                    }
            rc = sdxl_conv2d_init(L->comp, &cv[a * 2 + b], c, c, 2, 2, 1, 1 - a, 1 - b, a, b, k, SDXL_F32, bias,
                                  SDXL_F32, L->e);
            if (rc) return sdxl_err_prefix(L->e, "vae upsampler \"%s\" phase %d", base, a * 2 + b);
        }
    L->v->weight_bytes += 16 * (size_t)(c * c) * (sdxl_compute_prec(L->comp) == SDXL_PREC_BF16 ? 2 : 4) + 4 * c * 4;
    return SDXL_OK;
}

static int ld_resnet(loader *L, vae_resnet *r, const char *base, int cin, int cout) {
    char b[256];
    int rc;
    r->cin = cin;
    r->cout = cout;
    r->has_shortcut = cin != cout;
    if ((rc = ld_vec(L, &r->norm1_w, base, "norm1.weight", cin)) ||
        (rc = ld_vec(L, &r->norm1_b, base, "norm1.bias", cin)))
        return rc;
    snprintf(b, sizeof b, "%s.conv1", base);
    if ((rc = ld_conv(L, &r->conv1, b, cout, cin, 3, 1, 1, 1, 1, 1))) return rc;
    if ((rc = ld_vec(L, &r->norm2_w, base, "norm2.weight", cout)) ||
        (rc = ld_vec(L, &r->norm2_b, base, "norm2.bias", cout)))
        return rc;
    snprintf(b, sizeof b, "%s.conv2", base);
    if ((rc = ld_conv(L, &r->conv2, b, cout, cout, 3, 1, 1, 1, 1, 1))) return rc;
    if (r->has_shortcut) {
        snprintf(b, sizeof b, "%s.%s", base, pick(L->cfg, "nin_shortcut", "conv_shortcut"));
        if ((rc = ld_conv(L, &r->shortcut, b, cout, cin, 1, 1, 0, 0, 0, 0))) return rc;
    }
    return SDXL_OK;
}

/* diffusers renamed the VAE attention (query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0);
 * older files use the first names. */
static const char *attn_sub(loader *L, const char *base, int which) {
    static const char *const SGM[] = {"norm", "q", "k", "v", "proj_out"};
    static const char *const NEW[] = {"group_norm", "to_q", "to_k", "to_v", "to_out.0"};
    static const char *const OLD[] = {"group_norm", "query", "key", "value", "proj_attn"};
    if (L->cfg->naming != SDXL_NAMING_DIFFUSERS) return SGM[which];
    char name[256];
    snprintf(name, sizeof name, "%s.%s.weight", base, NEW[which]);
    if (sdxl_ckpt_find(L->ck, SDXL_PART_VAE, name)) return NEW[which];
    snprintf(name, sizeof name, "%s.%s.weight", base, OLD[which]);
    return sdxl_ckpt_find(L->ck, SDXL_PART_VAE, name) ? OLD[which] : NEW[which];
}

static int ld_attn(loader *L, vae_attn *a, const char *base, int c) {
    char b[256];
    int rc;
    a->c = c;
    snprintf(b, sizeof b, "%s.%s", base, attn_sub(L, base, 0));
    if ((rc = ld_vec(L, &a->norm_w, b, "weight", c)) || (rc = ld_vec(L, &a->norm_b, b, "bias", c))) return rc;
    const int64_t wshape[2] = {c, c}, cc = c;
    const sdxl_st_tensor *tw[4], *tb[4];
    char wn[4][256], bn[4][256];
    for (int i = 0; i < 4; i++) {
        snprintf(wn[i], sizeof wn[i], "%s.%s.weight", base, attn_sub(L, base, 1 + i));
        snprintf(bn[i], sizeof bn[i], "%s.%s.bias", base, attn_sub(L, base, 1 + i));
        if ((rc = check(L, wn[i], 2, wshape, 1, &tw[i])) || (rc = check(L, bn[i], 1, &cc, 0, &tb[i]))) return rc;
    }
    if (!L->comp) {
        if ((size_t)4 * c * c > L->max_numel) L->max_numel = (size_t)4 * c * c;
        return SDXL_OK;
    }
    /* q, k, v stacked into one [3c, c] GEMM; the bias vectors follow the weights in tmp. */
    size_t cc2 = (size_t)c * c;
    float *bias = L->tmp + 3 * cc2;
    for (int i = 0; i < 3; i++)
        if ((rc = read_into(L, tw[i], wn[i], L->tmp + i * cc2)) || (rc = read_into(L, tb[i], bn[i], bias + i * c)))
            return rc;
    if ((rc = sdxl_linear_init(L->comp, &a->qkv, c, 3 * c, L->tmp, SDXL_F32, bias, SDXL_F32, L->e)))
        return sdxl_err_prefix(L->e, "vae attention \"%s\" q/k/v", base);
    if ((rc = read_into(L, tw[3], wn[3], L->tmp)) || (rc = read_into(L, tb[3], bn[3], bias))) return rc;
    if ((rc = sdxl_linear_init(L->comp, &a->proj, c, c, L->tmp, SDXL_F32, bias, SDXL_F32, L->e)))
        return sdxl_err_prefix(L->e, "vae attention \"%s\" proj", base);
    L->v->weight_bytes += 4 * cc2 * (sdxl_compute_prec(L->comp) == SDXL_PREC_BF16 ? 2 : 4) + 4 * (size_t)c * 4;
    return SDXL_OK;
}

/* The whole network in file order; the same walk validates and loads. */
static int walk(loader *L) {
    const sdxl_vae_config *cfg = L->cfg;
    sdxl_vae *v = L->v;
    const int nl = cfg->n_levels, lc = cfg->latent_channels, cl = cfg->ch[nl - 1];
    char b[256];
    int rc;
    if (cfg->has_encoder) {
        vae_encoder *E = &v->enc;
        if ((rc = ld_conv(L, &E->conv_in, "encoder.conv_in", cfg->ch[0], cfg->in_channels, 3, 1, 1, 1, 1, 1)))
            return rc;
        int cin = cfg->ch[0];
        for (int i = 0; i < nl; i++) {
            for (int j = 0; j < cfg->enc_resnets; j++) {
                enc_block(cfg, i, j, b, sizeof b);
                if ((rc = ld_resnet(L, &E->down[i][j], b, cin, cfg->ch[i]))) return rc;
                cin = cfg->ch[i];
            }
            if (i == nl - 1) break;
            if (cfg->naming == SDXL_NAMING_DIFFUSERS)
                snprintf(b, sizeof b, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            else
                snprintf(b, sizeof b, "encoder.down.%d.downsample.conv", i);
            /* pad right and bottom by 1, then stride 2 without padding */
            if ((rc = ld_conv(L, &E->downsample[i], b, cin, cin, 3, 2, 0, 0, 1, 1))) return rc;
        }
        if ((rc = ld_resnet(L, &E->mid1, pick(cfg, "encoder.mid.block_1", "encoder.mid_block.resnets.0"), cl, cl)) ||
            (rc = ld_attn(L, &E->mid_attn, pick(cfg, "encoder.mid.attn_1", "encoder.mid_block.attentions.0"), cl)) ||
            (rc = ld_resnet(L, &E->mid2, pick(cfg, "encoder.mid.block_2", "encoder.mid_block.resnets.1"), cl, cl)))
            return rc;
        const char *no = pick(cfg, "encoder.norm_out", "encoder.conv_norm_out");
        if ((rc = ld_vec(L, &E->norm_out_w, no, "weight", cl)) || (rc = ld_vec(L, &E->norm_out_b, no, "bias", cl)) ||
            (rc = ld_conv(L, &E->conv_out, "encoder.conv_out", 2 * lc, cl, 3, 1, 1, 1, 1, 1)) ||
            (rc = ld_conv(L, &E->quant_conv, "quant_conv", 2 * lc, 2 * lc, 1, 1, 0, 0, 0, 0)))
            return rc;
    }
    vae_decoder *D = &v->dec;
    if ((rc = ld_conv(L, &D->post_quant_conv, "post_quant_conv", lc, lc, 1, 1, 0, 0, 0, 0)) ||
        (rc = ld_conv(L, &D->conv_in, "decoder.conv_in", cl, lc, 3, 1, 1, 1, 1, 1)) ||
        (rc = ld_resnet(L, &D->mid1, pick(cfg, "decoder.mid.block_1", "decoder.mid_block.resnets.0"), cl, cl)) ||
        (rc = ld_attn(L, &D->mid_attn, pick(cfg, "decoder.mid.attn_1", "decoder.mid_block.attentions.0"), cl)) ||
        (rc = ld_resnet(L, &D->mid2, pick(cfg, "decoder.mid.block_2", "decoder.mid_block.resnets.1"), cl, cl)))
        return rc;
    int cin = cl;
    for (int i = nl - 1; i >= 0; i--) {
        for (int j = 0; j < cfg->dec_resnets; j++) {
            dec_block(cfg, i, j, b, sizeof b);
            if ((rc = ld_resnet(L, &D->up[i][j], b, cin, cfg->ch[i]))) return rc;
            cin = cfg->ch[i];
        }
        if (i == 0) break;
        if (cfg->naming == SDXL_NAMING_DIFFUSERS)
            snprintf(b, sizeof b, "decoder.up_blocks.%d.upsamplers.0.conv", nl - 1 - i);
        else
            snprintf(b, sizeof b, "decoder.up.%d.upsample.conv", i);
        if ((rc = ld_upconv(L, D->upsample[i], b, cin))) return rc;
    }
    const char *no = pick(cfg, "decoder.norm_out", "decoder.conv_norm_out");
    if ((rc = ld_vec(L, &D->norm_out_w, no, "weight", cfg->ch[0])) ||
        (rc = ld_vec(L, &D->norm_out_b, no, "bias", cfg->ch[0])) ||
        (rc = ld_conv(L, &D->conv_out, "decoder.conv_out", cfg->out_channels, cfg->ch[0], 3, 1, 1, 1, 1, 1)))
        return rc;
    return SDXL_OK;
}

/* Shape of a 4-D conv weight used to read the config; errors name it. */
static int probe4(const sdxl_ckpt *ck, const char *name, int64_t *shape, sdxl_err *e) {
    const sdxl_st_tensor *t = sdxl_ckpt_find(ck, SDXL_PART_VAE, name);
    if (!t) return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae tensor \"%s\": missing", name);
    if (t->ndim != 4)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae tensor \"%s\": %d dimensions, expected 4 (a conv weight)", name,
                           t->ndim);
    for (int i = 0; i < 4; i++)
        shape[i] = t->shape[i];
    return SDXL_OK;
}

static int count_blocks(const sdxl_ckpt *ck, sdxl_vae_config *cfg, int enc, int level, int max) {
    char b[256], n[300];
    int k = 0;
    for (; k < max; k++) {
        if (enc)
            enc_block(cfg, level, k, b, sizeof b);
        else
            dec_block(cfg, level, k, b, sizeof b);
        snprintf(n, sizeof n, "%s.conv1.weight", b);
        if (!sdxl_ckpt_find(ck, SDXL_PART_VAE, n)) break;
    }
    return k;
}

static int chan_ok(int64_t c) { return c > 0 && c <= VAE_MAX_CH; }

static int detect(const sdxl_ckpt *ck, sdxl_vae_config *cfg, sdxl_err *e) {
    memset(cfg, 0, sizeof *cfg);
    cfg->naming = sdxl_ckpt_naming(ck, SDXL_PART_VAE);
    if (cfg->naming == SDXL_NAMING_NONE)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: no VAE tensors (first_stage_model.* or vae/)", sdxl_ckpt_path(ck));
    int64_t s[4];
    int rc;
    /* Levels: decoder up blocks present. In diffusers numbering block 0 is the top level, so
     * count with a provisional level count big enough, then renumber. */
    char n[300];
    int nl = 0;
    while (nl < SDXL_VAE_MAX_LEVELS) {
        snprintf(n, sizeof n,
                 cfg->naming == SDXL_NAMING_DIFFUSERS ? "decoder.up_blocks.%d.resnets.0.conv1.weight"
                                                      : "decoder.up.%d.block.0.conv1.weight",
                 nl);
        if (!sdxl_ckpt_find(ck, SDXL_PART_VAE, n)) break;
        nl++;
    }
    if (nl == 0) {
        snprintf(n, sizeof n, "%s",
                 cfg->naming == SDXL_NAMING_DIFFUSERS ? "decoder.up_blocks.0.resnets.0.conv1.weight"
                                                      : "decoder.up.0.block.0.conv1.weight");
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae tensor \"%s\": missing (no decoder levels)", n);
    }
    cfg->n_levels = nl;
    cfg->dec_resnets = count_blocks(ck, cfg, 0, 0, SDXL_VAE_MAX_RES);
    if (cfg->dec_resnets == 0) return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae: decoder level 0 has no resnets");
    for (int i = 0; i < nl; i++) {
        char b[256];
        dec_block(cfg, i, 0, b, sizeof b);
        snprintf(n, sizeof n, "%s.conv1.weight", b);
        if ((rc = probe4(ck, n, s, e))) return rc;
        if (!chan_ok(s[0]))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae tensor \"%s\": %lld channels", n, (long long)s[0]);
        cfg->ch[i] = (int)s[0];
    }
    if ((rc = probe4(ck, "decoder.conv_in.weight", s, e))) return rc;
    if (!chan_ok(s[1]))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae tensor \"decoder.conv_in.weight\": bad input channels");
    cfg->latent_channels = (int)s[1];
    if ((rc = probe4(ck, "decoder.conv_out.weight", s, e))) return rc;
    if (!chan_ok(s[0])) return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae tensor \"decoder.conv_out.weight\": bad channels");
    cfg->out_channels = (int)s[0];
    cfg->has_encoder = sdxl_ckpt_find(ck, SDXL_PART_VAE, "encoder.conv_in.weight") != NULL;
    if (cfg->has_encoder) {
        if ((rc = probe4(ck, "encoder.conv_in.weight", s, e))) return rc;
        if (!chan_ok(s[1]))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae tensor \"encoder.conv_in.weight\": bad channels");
        cfg->in_channels = (int)s[1];
        cfg->enc_resnets = count_blocks(ck, cfg, 1, 0, SDXL_VAE_MAX_RES);
        if (cfg->enc_resnets == 0) return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae: encoder level 0 has no resnets");
    }
    const sdxl_json *conf = sdxl_ckpt_config(ck, SDXL_PART_VAE);
    cfg->groups = 32;
    cfg->eps = VAE_EPS;
    cfg->scaling_factor = SDXL_VAE_SCALING_DEFAULT;
    cfg->force_upcast = 1;
    if (conf) {
        int64_t g = sdxl_json_i64(conf, "norm_num_groups", 32);
        cfg->groups = g > 0 && g <= VAE_MAX_CH ? (int)g : 0;
        cfg->scaling_factor = (float)sdxl_json_num(conf, "scaling_factor", SDXL_VAE_SCALING_DEFAULT);
        cfg->force_upcast = sdxl_json_bool(conf, "force_upcast", 1);
    }
    if (!(cfg->scaling_factor > 0.0f) || !isfinite(cfg->scaling_factor))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae config scaling_factor: must be a positive number");
    if (cfg->groups <= 0) return sdxl_seterr(e, SDXL_ERR_FORMAT, "vae config norm_num_groups: must be positive");
    for (int i = 0; i < nl; i++)
        if (cfg->ch[i] % cfg->groups) {
            char b[256];
            dec_block(cfg, i, 0, b, sizeof b);
            return sdxl_seterr(
                e, SDXL_ERR_FORMAT,
                "vae tensor \"%s.conv1.weight\": %d output channels (level %d) are not a multiple of %d groups", b,
                cfg->ch[i], i, cfg->groups);
        }
    return SDXL_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every tensor under the VAE's own namespaces must be one we expect (other prefixes, such as a
 * training loss, are ignored). */
static int check_unknown(loader *L) {
    qsort(L->names, L->n_names, sizeof *L->names, cmp_str);
    size_t n = sdxl_ckpt_count(L->ck, SDXL_PART_VAE);
    for (size_t i = 0; i < n; i++) {
        const sdxl_st_tensor *t;
        const char *name = sdxl_ckpt_name_at(L->ck, SDXL_PART_VAE, i, &t);
        if (!name) continue;
        if (strncmp(name, "encoder.", 8) && strncmp(name, "decoder.", 8) && strncmp(name, "quant_conv.", 11) &&
            strncmp(name, "post_quant_conv.", 16))
            continue;
        if (!L->cfg->has_encoder && (!strncmp(name, "encoder.", 8) || !strncmp(name, "quant_conv.", 11))) continue;
        if (!bsearch(&name, L->names, L->n_names, sizeof *L->names, cmp_str))
            return sdxl_seterr(L->e, SDXL_ERR_FORMAT,
                               "vae tensor \"%s\": unexpected for a %d-level VAE with %d/%d resnets", name,
                               L->cfg->n_levels, L->cfg->enc_resnets, L->cfg->dec_resnets);
    }
    return SDXL_OK;
}

static void loader_free(loader *L) {
    for (size_t i = 0; i < L->n_names; i++)
        free(L->names[i]);
    free(L->names);
    free(L->tmp);
}

static int validate(const sdxl_ckpt *ck, sdxl_vae *v, loader *L, sdxl_err *e) {
    memset(L, 0, sizeof *L);
    L->ck = ck;
    L->v = v;
    L->cfg = &v->cfg;
    L->e = e;
    int rc = detect(ck, &v->cfg, e);
    if (!rc) rc = walk(L);
    if (!rc) rc = check_unknown(L);
    v->cfg.n_params = L->n_params;
    return rc;
}

int sdxl_vae_validate(const sdxl_ckpt *ck, sdxl_vae_config *cfg, sdxl_err *e) {
    sdxl_vae *v = calloc(1, sizeof *v);
    if (!v) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae: out of memory");
    loader L;
    int rc = validate(ck, v, &L, e);
    if (!rc && cfg) *cfg = v->cfg;
    loader_free(&L);
    free(v);
    return rc;
}

static void resnet_free(vae_resnet *r) {
    sdxl_conv2d_free(&r->conv1);
    sdxl_conv2d_free(&r->conv2);
    if (r->has_shortcut) sdxl_conv2d_free(&r->shortcut);
}

static void attn_free(vae_attn *a) {
    sdxl_linear_free(&a->qkv);
    sdxl_linear_free(&a->proj);
}

void sdxl_vae_trim(sdxl_vae *v) {
    for (int i = 0; i < 3; i++) {
        sdxl_compute_release(v->comp, v->ws[i]);
        v->ws[i] = NULL;
    }
    v->ws_cap[0] = v->ws_cap[1] = v->ws_cap[2] = 0;
}

void sdxl_vae_free(sdxl_vae *v) {
    if (!v) return;
    const sdxl_vae_config *cfg = &v->cfg;
    /* Layers never initialised are zero; the free functions accept them (impl NULL). */
    if (cfg->has_encoder) {
        vae_encoder *E = &v->enc;
        sdxl_conv2d_free(&E->conv_in);
        for (int i = 0; i < cfg->n_levels; i++) {
            for (int j = 0; j < cfg->enc_resnets; j++)
                resnet_free(&E->down[i][j]);
            sdxl_conv2d_free(&E->downsample[i]);
        }
        resnet_free(&E->mid1);
        attn_free(&E->mid_attn);
        resnet_free(&E->mid2);
        sdxl_conv2d_free(&E->conv_out);
        sdxl_conv2d_free(&E->quant_conv);
    }
    vae_decoder *D = &v->dec;
    sdxl_conv2d_free(&D->post_quant_conv);
    sdxl_conv2d_free(&D->conv_in);
    resnet_free(&D->mid1);
    attn_free(&D->mid_attn);
    resnet_free(&D->mid2);
    for (int i = 0; i < cfg->n_levels; i++) {
        for (int j = 0; j < cfg->dec_resnets; j++)
            resnet_free(&D->up[i][j]);
        for (int p = 0; p < 4; p++)
            sdxl_conv2d_free(&D->upsample[i][p]);
    }
    sdxl_conv2d_free(&D->conv_out);
    sdxl_arena_free(&v->wa);
    sdxl_vae_trim(v);
    free(v);
}

int sdxl_vae_load(const sdxl_ckpt *ck, sdxl_compute *c, sdxl_vae **out, sdxl_err *e) {
    *out = NULL;
    sdxl_vae *v = calloc(1, sizeof *v);
    if (!v) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae: out of memory");
    loader L;
    int rc = validate(ck, v, &L, e);
    if (rc) {
        loader_free(&L);
        free(v);
        return rc;
    }
    v->comp = c;
    sdxl_arena_init(&v->wa, 1u << 16);
    L.comp = c;
    /* + bias room behind the largest weight (ld_conv / ld_attn put biases after it) */
    if (!(L.tmp = malloc((2 * L.max_numel + 4 * (size_t)VAE_MAX_CH) * sizeof(float)))) {
        loader_free(&L);
        sdxl_vae_free(v);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae: out of memory for the conversion buffer");
    }
    rc = walk(&L);
    loader_free(&L);
    if (rc) {
        sdxl_vae_free(v);
        return rc;
    }
    *out = v;
    return SDXL_OK;
}

const sdxl_vae_config *sdxl_vae_get_config(const sdxl_vae *v) { return &v->cfg; }
size_t sdxl_vae_weight_bytes(const sdxl_vae *v) { return v->weight_bytes; }
uint64_t sdxl_vae_last_bytes(const sdxl_vae *v) { return v->last_bytes; }

void sdxl_vae_run_init(sdxl_vae_run *r) {
    r->slice = 1;
    r->tile = SDXL_VAE_TILE_AUTO;
    r->tile_latent = 64;
    r->tile_overlap = 16;
    r->max_bytes = 0;
}

/* ---- forward ------------------------------------------------------------------------------ */

/* One pass over the three workspace buffers, or (plan) a dry run of the same code that records
 * how many floats each buffer must hold and the largest GEMM input: the estimate is the
 * allocation. Buffers are named by index so the plan follows the same swaps. */
typedef struct fwd {
    sdxl_vae *v;
    int plan;
    int64_t need[3];
    int64_t max_in; /* largest GEMM input, floats (the bf16 conversion buffer) */
    sdxl_err *e;
    int st; /* first failure of a step that returns no status */
} fwd;

static float *buf(fwd *F, int i, int64_t floats) {
    if (!F->plan) return F->v->ws[i];
    if (floats > F->need[i]) F->need[i] = floats;
    return NULL;
}

static void note_in(fwd *F, int64_t floats) {
    if (floats > F->max_in) F->max_in = floats;
}

static int conv(fwd *F, const sdxl_conv2d *cv, int64_t cin, const float *x, int64_t n, int64_t h, int64_t w, float *y,
                int flags) {
    note_in(F, n * h * w * cin);
    if (F->st) return F->st;
    return F->plan ? SDXL_OK : sdxl_conv2d_fwd(F->v->comp, cv, x, n, h, w, y, flags, F->e);
}

static int linear(fwd *F, const sdxl_linear *l, int64_t in, const float *x, int64_t rows, float *y, int flags) {
    note_in(F, rows * in);
    return F->plan ? SDXL_OK : sdxl_linear_fwd(F->v->comp, l, x, rows, y, flags, F->e);
}

static void gn(fwd *F, const float *x, float *y, int64_t n, int64_t hw, int64_t c, const float *g, const float *b,
               int silu) {
    if (!F->plan && !F->st) F->st = sdxl_op_group_norm(F->v->comp, x, y, n, hw, c, F->v->cfg.groups, F->v->cfg.eps, g, b, silu, F->e);
}

/* Group norm feeding one GEMM: in a bf16 VAE it writes the GEMM's bf16 input directly (no f32
 * copy to write, read back and convert); *src and *flags are what to pass to that GEMM. */
static int gn_in(fwd *F, const float *x, float *y, int64_t n, int64_t hw, int64_t c, const float *g, const float *b,
                 int silu, const float **src, int *flags) {
    *src = y;
    *flags = 0;
    if (F->plan || sdxl_compute_prec(F->v->comp) != SDXL_PREC_BF16 || sdxl_compute_is_device(F->v->comp)) {
        gn(F, x, y, n, hw, c, g, b, silu);
        return SDXL_OK;
    }
    uint16_t *yb = sdxl_compute_src_bf16(F->v->comp, n * hw * c);
    if (!yb) return sdxl_seterr(F->e, SDXL_ERR_NOMEM, "vae: cannot hold %lld bf16 values", (long long)(n * hw * c));
    sdxl_group_norm_bf16(x, yb, n, hw, c, F->v->cfg.groups, F->v->cfg.eps, g, b, silu);
    *src = (const float *)(const void *)yb;
    *flags = SDXL_OP_SRC_BF16;
    return SDXL_OK;
}

static void swap_idx(int *a, int *b) {
    int t = *a;
    *a = *b;
    *b = t;
}

/* x [n, h*w, cin] -> x [n, h*w, cout]; t1, t2 are scratch buffers that may be swapped with x. */
static int resnet_fwd(fwd *F, const vae_resnet *r, int64_t cin, int64_t cout, int *x, int *t1, int *t2, int64_t n,
                      int64_t h, int64_t w) {
    const int64_t m = n * h * w;
    const float *s;
    int rc, fl;
    if (cin != cout) {
        float *X = buf(F, *x, m * cin), *T1 = buf(F, *t1, m * cout), *T2 = buf(F, *t2, m * cout);
        /* shortcut first, so norm1 can overwrite x */
        if ((rc = conv(F, &r->shortcut, cin, X, n, h, w, T2, 0))) return rc;
        if ((rc = gn_in(F, X, X, n, h * w, cin, r->norm1_w, r->norm1_b, 1, &s, &fl))) return rc;
        if ((rc = conv(F, &r->conv1, cin, s, n, h, w, T1, fl))) return rc;
        if ((rc = gn_in(F, T1, T1, n, h * w, cout, r->norm2_w, r->norm2_b, 1, &s, &fl))) return rc;
        if ((rc = conv(F, &r->conv2, cout, s, n, h, w, T2, SDXL_OP_ACCUM | fl))) return rc;
        swap_idx(x, t2);
    } else {
        float *X = buf(F, *x, m * cin), *T1 = buf(F, *t1, m * cin), *T2 = buf(F, *t2, m * cout);
        if ((rc = gn_in(F, X, T1, n, h * w, cin, r->norm1_w, r->norm1_b, 1, &s, &fl))) return rc;
        if ((rc = conv(F, &r->conv1, cin, s, n, h, w, T2, fl))) return rc;
        if ((rc = gn_in(F, T2, T2, n, h * w, cout, r->norm2_w, r->norm2_b, 1, &s, &fl))) return rc;
        if ((rc = conv(F, &r->conv2, cout, s, n, h, w, X, SDXL_OP_ACCUM | fl))) return rc;
    }
    return SDXL_OK;
}

/* x += proj(attention(norm(x))) over the hw tokens of each image; t1 holds [n*hw, c], t2 [n*hw, 3c]. */
static int attn_fwd(fwd *F, const vae_attn *a, int64_t c, int x, int t1, int t2, int64_t n, int64_t hw) {
    float *X = buf(F, x, n * hw * c), *T1 = buf(F, t1, n * hw * c), *T2 = buf(F, t2, n * hw * 3 * c);
    const float *s;
    int rc, fl;
    if ((rc = gn_in(F, X, T1, n, hw, c, a->norm_w, a->norm_b, 0, &s, &fl))) return rc;
    if ((rc = linear(F, &a->qkv, c, s, n * hw, T2, fl))) return rc;
    if (!F->plan && (rc = sdxl_attention(F->v->comp, T2, 3 * c, T2 + c, T2 + 2 * c, 3 * c, T1, c, n, hw, hw, 1, (int)c,
                                         1.0f / sqrtf((float)c), 0, F->e)))
        return rc;
    return linear(F, &a->proj, c, T1, n * hw, X, SDXL_OP_ACCUM);
}

static int mid_fwd(fwd *F, const vae_resnet *m1, const vae_attn *at, const vae_resnet *m2, int *x, int *t1, int *t2,
                   int64_t n, int64_t h, int64_t w) {
    const int64_t c = F->v->cfg.ch[F->v->cfg.n_levels - 1];
    int rc;
    if ((rc = resnet_fwd(F, m1, c, c, x, t1, t2, n, h, w))) return rc;
    if ((rc = attn_fwd(F, at, c, *x, *t1, *t2, n, h * w))) return rc;
    return resnet_fwd(F, m2, c, c, x, t1, t2, n, h, w);
}

/* x [n, h, w, c] -> x [n, 2h, 2w, c] (x holds the larger size); the four phases go to ph. */
/* Nearest x2 + 3x3 conv as four 2x2 phase convs on the small image: x [n, h, w, c] ->
 * y [n, 2h, 2w, c]. One phase at a time goes through ph and is scattered into y, so the
 * scratch is one small image rather than all four phases. */
static int upconv_fwd(fwd *F, const sdxl_conv2d *cv, int x, int ph, int y, int64_t n, int64_t h, int64_t w,
                      int64_t c) {
    const int64_t np = n * h * w * c;
    float *X = buf(F, x, np), *P = buf(F, ph, np), *Y = buf(F, y, 4 * np);
    const int bf = !F->plan && sdxl_compute_prec(F->v->comp) == SDXL_PREC_BF16 && !sdxl_compute_is_device(F->v->comp);
    for (int p = 0; p < 4; p++) {
        /* the four phases read the same input: a bf16 VAE converts it once, for the first */
        const float *s = X;
        int fl = 0;
        if (p && bf && !F->plan) {
            s = (const float *)(const void *)sdxl_compute_src_bf16(F->v->comp, np);
            fl = SDXL_OP_SRC_BF16;
            if (!s) return sdxl_seterr(F->e, SDXL_ERR_NOMEM, "vae: upsampler input");
        }
        int rc = conv(F, &cv[p], c, s, n, h, w, P, fl);
        if (rc) return rc;
        if (F->plan) continue;
        if ((rc = sdxl_op_place_phase(F->v->comp, P, Y, n, h, w, c, p / 2, p % 2, F->e))) return rc;
    }
    return SDXL_OK;
}

/* Encoder output size of one stride-2 level: pad right/bottom 1, 3x3, stride 2. */
static int64_t down_size(int64_t s) { return (s + 1 - 3) / 2 + 1; }

/* z [n, h, w, lc] scaled latents -> img [n, 8h, 8w, out]. */
static int dec_forward(fwd *F, const float *z, int64_t n, int64_t h, int64_t w, float *img) {
    const sdxl_vae_config *cfg = &F->v->cfg;
    const vae_decoder *D = &F->v->dec;
    const int nl = cfg->n_levels;
    const int64_t lc = cfg->latent_channels, cl = cfg->ch[nl - 1], nz = n * h * w * lc;
    int x = 0, t1 = 1, t2 = 2, rc;
    float *T1 = buf(F, t1, nz), *T2 = buf(F, t2, nz);
    if (!F->plan && ((rc = sdxl_op_copy(F->v->comp, T1, z, (size_t)nz * sizeof(float), F->e)) ||
                     (rc = sdxl_op_div(F->v->comp, T1, cfg->scaling_factor, nz, F->e)))) /* division, as the reference does */
        return rc;
    if ((rc = conv(F, &D->post_quant_conv, lc, T1, n, h, w, T2, 0))) return rc;
    if ((rc = conv(F, &D->conv_in, lc, T2, n, h, w, buf(F, x, n * h * w * cl), 0))) return rc;
    if ((rc = mid_fwd(F, &D->mid1, &D->mid_attn, &D->mid2, &x, &t1, &t2, n, h, w))) return rc;
    int64_t cin = cl;
    for (int i = nl - 1; i >= 0; i--) {
        for (int j = 0; j < cfg->dec_resnets; j++) {
            if ((rc = resnet_fwd(F, &D->up[i][j], cin, cfg->ch[i], &x, &t1, &t2, n, h, w))) return rc;
            cin = cfg->ch[i];
        }
        if (i == 0) break;
        if ((rc = upconv_fwd(F, D->upsample[i], x, t1, t2, n, h, w, cin))) return rc;
        swap_idx(&x, &t2);
        h *= 2;
        w *= 2;
    }
    float *X = buf(F, x, n * h * w * cfg->ch[0]);
    const float *s;
    int fl;
    if ((rc = gn_in(F, X, X, n, h * w, cfg->ch[0], D->norm_out_w, D->norm_out_b, 1, &s, &fl))) return rc;
    return conv(F, &D->conv_out, cfg->ch[0], s, n, h, w, img, fl);
}

/* img [n, H, W, in] -> moments [n, h, w, 2 lc], left in workspace buffer *res. */
static int enc_forward(fwd *F, const float *img, int64_t n, int64_t H, int64_t W, int *res) {
    const sdxl_vae_config *cfg = &F->v->cfg;
    const vae_encoder *E = &F->v->enc;
    const int nl = cfg->n_levels;
    const int64_t cl = cfg->ch[nl - 1], lc2 = 2 * (int64_t)cfg->latent_channels;
    int x = 0, t1 = 1, t2 = 2, rc;
    int64_t h = H, w = W, cin = cfg->ch[0];
    if ((rc = conv(F, &E->conv_in, cfg->in_channels, img, n, h, w, buf(F, x, n * h * w * cin), 0))) return rc;
    for (int i = 0; i < nl; i++) {
        for (int j = 0; j < cfg->enc_resnets; j++) {
            if ((rc = resnet_fwd(F, &E->down[i][j], cin, cfg->ch[i], &x, &t1, &t2, n, h, w))) return rc;
            cin = cfg->ch[i];
        }
        if (i == nl - 1) break;
        int64_t h2 = down_size(h), w2 = down_size(w);
        if ((rc = conv(F, &E->downsample[i], cin, buf(F, x, n * h * w * cin), n, h, w, buf(F, t1, n * h2 * w2 * cin),
                       0)))
            return rc;
        swap_idx(&x, &t1);
        h = h2;
        w = w2;
    }
    if ((rc = mid_fwd(F, &E->mid1, &E->mid_attn, &E->mid2, &x, &t1, &t2, n, h, w))) return rc;
    const int64_t m = n * h * w;
    float *X = buf(F, x, m * cl), *T1 = buf(F, t1, m * lc2), *T2 = buf(F, t2, m * lc2);
    const float *s;
    int fl;
    if ((rc = gn_in(F, X, X, n, h * w, cl, E->norm_out_w, E->norm_out_b, 1, &s, &fl))) return rc;
    if ((rc = conv(F, &E->conv_out, cl, s, n, h, w, T1, fl))) return rc;
    if ((rc = conv(F, &E->quant_conv, lc2, T1, n, h, w, T2, 0))) return rc;
    *res = t2;
    return SDXL_OK;
}

/* Workspace plan of a decode (enc = 0) or encode (enc = 1) of n items of h x w (latent for
 * decode, image for encode): floats per buffer and the largest GEMM input. */
static int plan(const sdxl_vae_config *cfg, int enc, int64_t n, int64_t h, int64_t w, int64_t need[3],
                int64_t *max_in) {
    sdxl_vae *t = calloc(1, sizeof *t);
    if (!t) return SDXL_ERR_NOMEM;
    t->cfg = *cfg;
    fwd F = {t, 1, {0, 0, 0}, 0, NULL, 0};
    int res;
    if (enc)
        enc_forward(&F, NULL, n, h, w, &res);
    else
        dec_forward(&F, NULL, n, h, w, NULL);
    free(t);
    for (int i = 0; i < 3; i++)
        need[i] = F.need[i] > 0 ? F.need[i] : 1;
    *max_in = F.max_in;
    return SDXL_OK;
}

static uint64_t need_bytes(const int64_t need[3]) {
    return ((uint64_t)need[0] + (uint64_t)need[1] + (uint64_t)need[2]) * sizeof(float);
}

/* Grows each buffer to its planned size (kept for later calls). */
static int ws_reserve(sdxl_vae *v, const int64_t need[3], sdxl_err *e) {
    for (int i = 0; i < 3; i++) {
        if ((size_t)need[i] <= v->ws_cap[i]) continue;
        if ((uint64_t)need[i] > SIZE_MAX / sizeof(float) - 64)
            return sdxl_seterr(e, SDXL_ERR_LIMIT, "vae: workspace of %lld floats does not fit in memory",
                               (long long)need[i]);
        sdxl_compute_release(v->comp, v->ws[i]);
        v->ws_cap[i] = 0;
        size_t bytes = ((size_t)need[i] * sizeof(float) + 63) & ~(size_t)63;
        if (!(v->ws[i] = sdxl_compute_alloc(v->comp, bytes, NULL)))
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae: cannot allocate a %zu-byte activation buffer", bytes);
        v->ws_cap[i] = (size_t)need[i];
    }
    return SDXL_OK;
}

/* moments rows [m, 2 lc] -> mean, clamped logvar, scaled sample (each optional). */
static void finish_moments(const sdxl_vae_config *cfg, const float *mom, int64_t m, const float *noise, float *lat,
                           float *mean, float *logvar) {
    const int lc = cfg->latent_channels;
    const float sf = cfg->scaling_factor;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m; r++)
        for (int k = 0; k < lc; k++) {
            float mu = mom[r * 2 * lc + k], lv = mom[r * 2 * lc + lc + k];
            lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
            if (mean) mean[r * lc + k] = mu;
            if (logvar) logvar[r * lc + k] = lv;
            if (lat) {
                float s = noise ? mu + expf(0.5f * lv) * noise[r * lc + k] : mu;
                lat[r * lc + k] = s * sf;
            }
        }
}

/* ---- tiling ------------------------------------------------------------------------------- */

/* Tile starts along one axis of length len: tiles of t with overlap o, the last one flush with
 * the end so every tile has full size. Returns the count; starts may be NULL to only count. */
static int tile_starts(int64_t len, int64_t t, int64_t o, int64_t *starts) {
    int64_t stride = t - o;
    int k = 0;
    for (int64_t s = 0;; s += stride) {
        if (s + t >= len) s = len > t ? len - t : 0;
        if (starts) starts[k] = s;
        k++;
        if (s + t >= len) break;
    }
    return k;
}

/* Blend weight of position p in a tile of size len whose sides have neighbours: linear ramps of
 * width r rising from the tile's edge, 1 inside. Ramps of neighbours sum to 1 over an overlap. */
static float ramp(int64_t p, int64_t len, int64_t r, int left, int right) {
    float wgt = 1.0f;
    if (left && p < r) wgt *= ((float)p + 0.5f) / (float)r;
    if (right && len - 1 - p < r) wgt *= ((float)(len - 1 - p) + 0.5f) / (float)r;
    return wgt;
}

typedef struct tile_plan {
    int64_t th, tw, o;
    int ny, nx;
    int64_t *ys, *xs;
} tile_plan;

static int plan_tiles(const sdxl_vae_run *run, int64_t h, int64_t w, tile_plan *p, sdxl_err *e) {
    int64_t t = run->tile_latent, o = run->tile_overlap;
    if (t < 2 || o < 0 || o >= t)
        return sdxl_seterr(e, SDXL_ERR_ARG,
                           "vae tiling: tile_latent %lld and tile_overlap %lld need 0 <= overlap < tile, tile >= 2",
                           (long long)t, (long long)o);
    p->th = h < t ? h : t;
    p->tw = w < t ? w : t;
    p->o = o;
    p->ny = tile_starts(h, p->th, o, NULL);
    p->nx = tile_starts(w, p->tw, o, NULL);
    p->ys = malloc(sizeof(int64_t) * (size_t)(p->ny + p->nx));
    if (!p->ys) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae tiling: out of memory");
    p->xs = p->ys + p->ny;
    tile_starts(h, p->th, o, p->ys);
    tile_starts(w, p->tw, o, p->xs);
    return SDXL_OK;
}

/* Accumulates weight * tile [th*f, tw*f, ch] into dst [H, W, ch] at (y0, x0)*f and the weights into
 * wsum [H, W]; f is the pixel factor of the grid (8 for images, 1 for latents). */
static void blend_add(const tile_plan *p, int iy, int ix, int64_t f, const float *tile, int64_t ch, float *dst,
                      float *wsum, int64_t W) {
    const int64_t TH = p->th * f, TW = p->tw * f, r = p->o * f;
    const int64_t y0 = p->ys[iy] * f, x0 = p->xs[ix] * f;
    const int top = iy > 0, bottom = iy<p->ny - 1, left = ix> 0, right = ix < p->nx - 1;
#pragma omp parallel for schedule(static)
    for (int64_t y = 0; y < TH; y++) {
        float wy = ramp(y, TH, r, top, bottom);
        for (int64_t x = 0; x < TW; x++) {
            float wgt = wy * ramp(x, TW, r, left, right);
            const float *s = tile + (y * TW + x) * ch;
            float *d = dst + ((y0 + y) * W + x0 + x) * ch;
            for (int64_t k = 0; k < ch; k++)
                d[k] += wgt * s[k];
            wsum[(y0 + y) * W + x0 + x] += wgt;
        }
    }
}

static void blend_norm(float *dst, const float *wsum, int64_t pixels, int64_t ch) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < pixels; i++) {
        float inv = wsum[i];
        for (int64_t k = 0; k < ch; k++)
            dst[i * ch + k] /= inv;
    }
}

static void copy_tile(const float *src, int64_t W, int64_t ch, int64_t y0, int64_t x0, int64_t th, int64_t tw,
                      float *dst) {
    for (int64_t y = 0; y < th; y++)
        memcpy(dst + y * tw * ch, src + ((y0 + y) * W + x0) * ch, (size_t)(tw * ch) * sizeof(float));
}

/* ---- public calls -------------------------------------------------------------------------- */

static int check_dims(int64_t n, int64_t h, int64_t w, int64_t max_side, const char *what, sdxl_err *e) {
    if (n < 1 || n > VAE_MAX_BATCH)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vae %s: batch %lld outside [1, %d]", what, (long long)n, VAE_MAX_BATCH);
    if (h < 1 || w < 1 || h > max_side || w > max_side)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vae %s: size %lldx%lld outside [1, %lld]", what, (long long)h,
                           (long long)w, (long long)max_side);
    return SDXL_OK;
}

/* Every activation count must stay far inside int64 and size_t: n * H * W * 3 * widest < 2^52. */
static int size_ok(const sdxl_vae_config *cfg, int64_t n, int64_t H, int64_t W) {
    double c = 2.0 * cfg->latent_channels;
    for (int i = 0; i < cfg->n_levels; i++)
        if (cfg->ch[i] > c) c = cfg->ch[i];
    if (cfg->in_channels > c) c = cfg->in_channels;
    if (cfg->out_channels > c) c = cfg->out_channels;
    return (double)n * (double)H * (double)W * 3.0 * c < 4503599627370496.0;
}

static uint64_t default_budget(void) {
    sdxl_mem_stats m;
    sdxl_mem_query(&m);
    return m.available ? m.available / 2 : (uint64_t)4 << 30;
}

/* bf16 GEMMs convert their f32 input to bf16 in the compute context's buffer: at most one
 * workspace buffer's worth at 2 bytes a value, plus the 25% that buffer grows by. */
static uint64_t prec_extra(sdxl_prec prec, int64_t floats) {
    return prec == SDXL_PREC_BF16 ? (uint64_t)floats * 5 / 2 : 0;
}

static int use_tiles(const sdxl_vae_config *cfg, const sdxl_vae_run *run, int64_t h, int64_t w, uint64_t untiled) {
    if (run->tile == SDXL_VAE_TILE_OFF) return 0;
    if (h <= run->tile_latent && w <= run->tile_latent) return 0;
    if (run->tile == SDXL_VAE_TILE_ON) return 1;
    (void)cfg;
    return untiled > (run->max_bytes ? run->max_bytes : default_budget());
}

static uint64_t plan_bytes(const sdxl_vae_config *cfg, int enc, int64_t n, int64_t h, int64_t w, sdxl_prec prec) {
    int64_t need[3], max_in;
    if (plan(cfg, enc, n, h, w, need, &max_in)) return UINT64_MAX;
    return need_bytes(need) + prec_extra(prec, max_in);
}

static uint64_t dec_bytes_untiled(const sdxl_vae_config *cfg, int64_t n, int64_t h, int64_t w, sdxl_prec prec,
                                  const sdxl_vae_run *run) {
    return plan_bytes(cfg, 0, run->slice ? 1 : n, h, w, prec);
}

static uint64_t dec_bytes_tiled(const sdxl_vae_config *cfg, int64_t h, int64_t w, sdxl_prec prec,
                                const sdxl_vae_run *run) {
    int64_t th = h < run->tile_latent ? h : run->tile_latent, tw = w < run->tile_latent ? w : run->tile_latent;
    int64_t f = (int64_t)1 << (cfg->n_levels - 1);
    uint64_t extra =
        (uint64_t)(th * tw * cfg->latent_channels + th * f * tw * f * cfg->out_channels) + (uint64_t)(h * f * w * f);
    return plan_bytes(cfg, 0, 1, th, tw, prec) + extra * sizeof(float);
}

uint64_t sdxl_vae_decode_bytes(const sdxl_vae_config *cfg, int64_t n, int64_t h, int64_t w, sdxl_prec prec,
                               const sdxl_vae_run *run) {
    sdxl_vae_run def;
    if (!run) {
        sdxl_vae_run_init(&def);
        run = &def;
    }
    if (n < 1 || h < 1 || w < 1 || h > VAE_MAX_SIDE || w > VAE_MAX_SIDE || n > VAE_MAX_BATCH) return 0;
    if (!size_ok(cfg, n, h << (cfg->n_levels - 1), w << (cfg->n_levels - 1))) return 0;
    uint64_t untiled = dec_bytes_untiled(cfg, n, h, w, prec, run);
    return use_tiles(cfg, run, h, w, untiled) ? dec_bytes_tiled(cfg, h, w, prec, run) : untiled;
}

int sdxl_vae_decode(sdxl_vae *v, const float *latents, int64_t n, int64_t h, int64_t w, float *image,
                    const sdxl_vae_run *run, sdxl_err *e) {
    const sdxl_vae_config *cfg = &v->cfg;
    sdxl_vae_run def;
    if (!run) {
        sdxl_vae_run_init(&def);
        run = &def;
    }
    int rc = check_dims(n, h, w, VAE_MAX_SIDE, "decode latents", e);
    if (rc) return rc;
    const sdxl_prec prec = sdxl_compute_prec(v->comp);
    const int64_t f = (int64_t)1 << (cfg->n_levels - 1), lc = cfg->latent_channels, oc = cfg->out_channels;
    const int64_t H = h * f, W = w * f, zsz = h * w * lc, isz = H * W * oc;
    if (!size_ok(cfg, n, H, W))
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "vae decode: %lld images of %lldx%lld are too large", (long long)n,
                           (long long)H, (long long)W);
    if (!use_tiles(cfg, run, h, w, dec_bytes_untiled(cfg, n, h, w, prec, run))) {
        const int64_t nb = run->slice ? 1 : n;
        int64_t need[3], max_in;
        if (plan(cfg, 0, nb, h, w, need, &max_in)) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae decode: out of memory");
        if ((rc = ws_reserve(v, need, e))) return rc;
        v->last_bytes = need_bytes(need);
        fwd F = {v, 0, {0, 0, 0}, 0, e, 0};
        for (int64_t b = 0; b < n; b += nb)
            if ((rc = dec_forward(&F, latents + b * zsz, nb, h, w, image + b * isz)))
                return sdxl_err_prefix(e, "vae decode");
        return SDXL_OK;
    }
    tile_plan p;
    if ((rc = plan_tiles(run, h, w, &p, e))) return rc;
    int64_t need[3], max_in;
    const int64_t tz = p.th * p.tw * lc, ti = p.th * f * p.tw * f * oc;
    float *zt = malloc(sizeof(float) * (size_t)(tz + ti + H * W));
    if (zt && plan(cfg, 0, 1, p.th, p.tw, need, &max_in)) {
        free(zt);
        zt = NULL;
    }
    if (!zt || (rc = ws_reserve(v, need, e))) {
        free(zt);
        free(p.ys);
        return zt ? rc : sdxl_seterr(e, SDXL_ERR_NOMEM, "vae tiled decode: out of memory for tile buffers");
    }
    v->last_bytes = need_bytes(need) + (uint64_t)(tz + ti + H * W) * sizeof(float);
    float *it = zt + tz, *wsum = it + ti;
    fwd F = {v, 0, {0, 0, 0}, 0, e, 0};
    for (int64_t b = 0; b < n && !rc; b++) {
        float *img = image + b * isz;
        memset(img, 0, sizeof(float) * (size_t)isz);
        memset(wsum, 0, sizeof(float) * (size_t)(H * W));
        for (int iy = 0; iy < p.ny && !rc; iy++)
            for (int ix = 0; ix < p.nx && !rc; ix++) {
                copy_tile(latents + b * zsz, w, lc, p.ys[iy], p.xs[ix], p.th, p.tw, zt);
                if ((rc = dec_forward(&F, zt, 1, p.th, p.tw, it))) {
                    sdxl_err_prefix(e, "vae tiled decode, tile (%d, %d)", iy, ix);
                    break;
                }
                blend_add(&p, iy, ix, f, it, oc, img, wsum, W);
            }
        if (!rc) blend_norm(img, wsum, H * W, oc);
    }
    free(zt);
    free(p.ys);
    return rc;
}

void sdxl_vae_latent_size(const sdxl_vae *v, int64_t H, int64_t W, int64_t *h, int64_t *w) {
    for (int i = 0; i < v->cfg.n_levels - 1; i++) {
        H = down_size(H);
        W = down_size(W);
    }
    *h = H;
    *w = W;
}

static uint64_t enc_bytes_untiled(const sdxl_vae_config *cfg, int64_t n, int64_t H, int64_t W, sdxl_prec prec,
                                  const sdxl_vae_run *run) {
    return plan_bytes(cfg, 1, run->slice ? 1 : n, H, W, prec);
}

static uint64_t enc_bytes_tiled(const sdxl_vae_config *cfg, int64_t h, int64_t w, sdxl_prec prec,
                                const sdxl_vae_run *run) {
    int64_t f = (int64_t)1 << (cfg->n_levels - 1);
    int64_t th = h < run->tile_latent ? h : run->tile_latent, tw = w < run->tile_latent ? w : run->tile_latent;
    uint64_t extra =
        (uint64_t)(th * f * tw * f * cfg->in_channels) + (uint64_t)(h * w * (2 * cfg->latent_channels + 1));
    return plan_bytes(cfg, 1, 1, th * f, tw * f, prec) + extra * sizeof(float);
}

/* Tiled encoding needs the image to be a whole number of latent pixels. */
static int enc_tileable(const sdxl_vae_config *cfg, int64_t H, int64_t W) {
    int64_t f = (int64_t)1 << (cfg->n_levels - 1);
    return H % f == 0 && W % f == 0;
}

uint64_t sdxl_vae_encode_bytes(const sdxl_vae_config *cfg, int64_t n, int64_t H, int64_t W, sdxl_prec prec,
                               const sdxl_vae_run *run) {
    sdxl_vae_run def;
    if (!run) {
        sdxl_vae_run_init(&def);
        run = &def;
    }
    int64_t f = (int64_t)1 << (cfg->n_levels - 1);
    if (n < 1 || H < f || W < f || H > VAE_MAX_SIDE * f || W > VAE_MAX_SIDE * f || n > VAE_MAX_BATCH) return 0;
    if (!size_ok(cfg, n, H, W)) return 0;
    uint64_t untiled = enc_bytes_untiled(cfg, n, H, W, prec, run);
    if (enc_tileable(cfg, H, W) && use_tiles(cfg, run, H / f, W / f, untiled))
        return enc_bytes_tiled(cfg, H / f, W / f, prec, run);
    return untiled;
}

int sdxl_vae_encode(sdxl_vae *v, const float *image, int64_t n, int64_t H, int64_t W, const float *noise,
                    float *latents, float *mean, float *logvar, const sdxl_vae_run *run, sdxl_err *e) {
    const sdxl_vae_config *cfg = &v->cfg;
    if (!cfg->has_encoder) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "vae encode: this VAE file has no encoder");
    sdxl_vae_run def;
    if (!run) {
        sdxl_vae_run_init(&def);
        run = &def;
    }
    const int64_t f = (int64_t)1 << (cfg->n_levels - 1);
    int rc = check_dims(n, H, W, VAE_MAX_SIDE * f, "encode image", e);
    if (rc) return rc;
    if (H < f || W < f)
        return sdxl_seterr(e, SDXL_ERR_ARG, "vae encode image: %lldx%lld is smaller than one latent pixel (%lld)",
                           (long long)H, (long long)W, (long long)f);
    if (!size_ok(cfg, n, H, W))
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "vae encode: %lld images of %lldx%lld are too large", (long long)n,
                           (long long)H, (long long)W);
    const sdxl_prec prec = sdxl_compute_prec(v->comp);
    const int64_t ic = cfg->in_channels, lc = cfg->latent_channels;
    int64_t h, w;
    sdxl_vae_latent_size(v, H, W, &h, &w);
    const int64_t isz = H * W * ic, zsz = h * w * lc;
    if (!(enc_tileable(cfg, H, W) && use_tiles(cfg, run, h, w, enc_bytes_untiled(cfg, n, H, W, prec, run)))) {
        const int64_t nb = run->slice ? 1 : n;
        int64_t need[3], max_in;
        if (plan(cfg, 1, nb, H, W, need, &max_in)) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae encode: out of memory");
        if ((rc = ws_reserve(v, need, e))) return rc;
        v->last_bytes = need_bytes(need);
        fwd F = {v, 0, {0, 0, 0}, 0, e, 0};
        for (int64_t b = 0; b < n; b += nb) {
            int res;
            if ((rc = enc_forward(&F, image + b * isz, nb, H, W, &res))) return sdxl_err_prefix(e, "vae encode");
            /* the moments come to the host (the workspace may be device memory) */
            size_t mb = (size_t)(nb * h * w * 2 * lc) * sizeof(float);
            float *mom = malloc(mb);
            if (!mom) return sdxl_seterr(e, SDXL_ERR_NOMEM, "vae encode: out of memory for the moments");
            if ((rc = sdxl_op_copy(v->comp, mom, v->ws[res], mb, e))) {
                free(mom);
                return sdxl_err_prefix(e, "vae encode");
            }
            finish_moments(cfg, mom, nb * h * w, noise ? noise + b * zsz : NULL, latents ? latents + b * zsz : NULL,
                           mean ? mean + b * zsz : NULL, logvar ? logvar + b * zsz : NULL);
            free(mom);
        }
        return SDXL_OK;
    }
    tile_plan p;
    if ((rc = plan_tiles(run, h, w, &p, e))) return rc;
    int64_t need[3], max_in;
    const int64_t tm = p.th * p.tw * 2 * lc, ti0 = p.th * f * p.tw * f * ic, ti = ti0 > tm ? ti0 : tm,
                  nm = h * w * 2 * lc; /* it holds the image tile, then the tile's moments */
    float *it = malloc(sizeof(float) * (size_t)(ti + nm + h * w));
    if (it && plan(cfg, 1, 1, p.th * f, p.tw * f, need, &max_in)) {
        free(it);
        it = NULL;
    }
    if (!it || (rc = ws_reserve(v, need, e))) {
        free(it);
        free(p.ys);
        return it ? rc : sdxl_seterr(e, SDXL_ERR_NOMEM, "vae tiled encode: out of memory for tile buffers");
    }
    v->last_bytes = need_bytes(need) + (uint64_t)(ti + nm + h * w) * sizeof(float);
    float *mom = it + ti, *wsum = mom + nm;
    fwd F = {v, 0, {0, 0, 0}, 0, e, 0};
    for (int64_t b = 0; b < n && !rc; b++) {
        memset(mom, 0, sizeof(float) * (size_t)nm);
        memset(wsum, 0, sizeof(float) * (size_t)(h * w));
        for (int iy = 0; iy < p.ny && !rc; iy++)
            for (int ix = 0; ix < p.nx && !rc; ix++) {
                int res;
                copy_tile(image + b * isz, W, ic, p.ys[iy] * f, p.xs[ix] * f, p.th * f, p.tw * f, it);
                if ((rc = enc_forward(&F, it, 1, p.th * f, p.tw * f, &res))) {
                    sdxl_err_prefix(e, "vae tiled encode, tile (%d, %d)", iy, ix);
                    break;
                }
                if ((rc = sdxl_op_copy(v->comp, it, v->ws[res], (size_t)tm * sizeof(float), e))) break;
                blend_add(&p, iy, ix, 1, it, 2 * lc, mom, wsum, w);
            }
        if (rc) break;
        blend_norm(mom, wsum, h * w, 2 * lc);
        finish_moments(cfg, mom, h * w, noise ? noise + b * zsz : NULL, latents ? latents + b * zsz : NULL,
                       mean ? mean + b * zsz : NULL, logvar ? logvar + b * zsz : NULL);
    }
    free(it);
    free(p.ys);
    return rc;
}

void sdxl_vae_to_uint8(const float *x, uint8_t *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float y = x[i] / 2.0f + 0.5f;
        y = y < 0.0f ? 0.0f : y > 1.0f ? 1.0f : y; /* NaN -> 0 via the comparisons below */
        if (!(y >= 0.0f)) y = 0.0f;
        out[i] = (uint8_t)nearbyintf(y * 255.0f);
    }
}
