/* CLIP text transformer (Radford et al. 2021): token + position embedding, pre-LN blocks with
 * causal self-attention and an MLP, final LayerNorm, pooled row at the EOS position. */
#include "text/clip.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLIP_MAX_LAYERS 256
#define CLIP_MAX_DIM (1 << 16)
#define CLIP_MAX_TOKENS (1 << 22) /* batch x len of one forward */

/* ---- name table ------------------------------------------------------------------------------ */

/* Symbolic dimensions of the shape column: resolved from the config once it is known. */
enum { D_NONE = 0, D_W, D_3W, D_F, D_V, D_P, D_J };

typedef struct blk_src {
    const sdxl_st_tensor *ln1_g, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *out_w, *out_b;
    const sdxl_st_tensor *ln2_g, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} blk_src;

typedef struct wname {
    const char *hf; /* HF CLIPTextModel name (under text_model.) */
    int hf0, hf1;   /* shape */
    const char *oc; /* open_clip name; NULL when the HF tensor is part of a fused one */
    int oc0, oc1;
    size_t off; /* field of blk_src */
} wname;

/* One transformer block, both namings. open_clip's in_proj stacks q, k, v rows. */
static const wname BLOCK_NAMES[] = {
    {"encoder.layers.%d.layer_norm1.weight", D_W, 0, "transformer.resblocks.%d.ln_1.weight", D_W, 0,
     offsetof(blk_src, ln1_g)},
    {"encoder.layers.%d.layer_norm1.bias", D_W, 0, "transformer.resblocks.%d.ln_1.bias", D_W, 0,
     offsetof(blk_src, ln1_b)},
    {"encoder.layers.%d.self_attn.q_proj.weight", D_W, D_W, "transformer.resblocks.%d.attn.in_proj_weight", D_3W, D_W,
     offsetof(blk_src, q_w)},
    {"encoder.layers.%d.self_attn.q_proj.bias", D_W, 0, "transformer.resblocks.%d.attn.in_proj_bias", D_3W, 0,
     offsetof(blk_src, q_b)},
    {"encoder.layers.%d.self_attn.k_proj.weight", D_W, D_W, NULL, 0, 0, offsetof(blk_src, k_w)},
    {"encoder.layers.%d.self_attn.k_proj.bias", D_W, 0, NULL, 0, 0, offsetof(blk_src, k_b)},
    {"encoder.layers.%d.self_attn.v_proj.weight", D_W, D_W, NULL, 0, 0, offsetof(blk_src, v_w)},
    {"encoder.layers.%d.self_attn.v_proj.bias", D_W, 0, NULL, 0, 0, offsetof(blk_src, v_b)},
    {"encoder.layers.%d.self_attn.out_proj.weight", D_W, D_W, "transformer.resblocks.%d.attn.out_proj.weight", D_W, D_W,
     offsetof(blk_src, out_w)},
    {"encoder.layers.%d.self_attn.out_proj.bias", D_W, 0, "transformer.resblocks.%d.attn.out_proj.bias", D_W, 0,
     offsetof(blk_src, out_b)},
    {"encoder.layers.%d.layer_norm2.weight", D_W, 0, "transformer.resblocks.%d.ln_2.weight", D_W, 0,
     offsetof(blk_src, ln2_g)},
    {"encoder.layers.%d.layer_norm2.bias", D_W, 0, "transformer.resblocks.%d.ln_2.bias", D_W, 0,
     offsetof(blk_src, ln2_b)},
    {"encoder.layers.%d.mlp.fc1.weight", D_F, D_W, "transformer.resblocks.%d.mlp.c_fc.weight", D_F, D_W,
     offsetof(blk_src, fc1_w)},
    {"encoder.layers.%d.mlp.fc1.bias", D_F, 0, "transformer.resblocks.%d.mlp.c_fc.bias", D_F, 0,
     offsetof(blk_src, fc1_b)},
    {"encoder.layers.%d.mlp.fc2.weight", D_W, D_F, "transformer.resblocks.%d.mlp.c_proj.weight", D_W, D_F,
     offsetof(blk_src, fc2_w)},
    {"encoder.layers.%d.mlp.fc2.bias", D_W, 0, "transformer.resblocks.%d.mlp.c_proj.bias", D_W, 0,
     offsetof(blk_src, fc2_b)},
};
#define N_BLOCK_NAMES (sizeof BLOCK_NAMES / sizeof BLOCK_NAMES[0])

/* Tensors outside the blocks. */
static const char *const HF_TOK = "embeddings.token_embedding.weight";    /* [V, W] */
static const char *const HF_POS = "embeddings.position_embedding.weight"; /* [P, W] */
static const char *const HF_LNF_G = "final_layer_norm.weight";            /* [W] */
static const char *const HF_LNF_B = "final_layer_norm.bias";              /* [W] */
static const char *const HF_PROJ = "text_projection.weight";              /* [J, W], outside text_model. */
static const char *const OC_TOK = "token_embedding.weight";               /* [V, W] */
static const char *const OC_POS = "positional_embedding";                 /* [P, W] */
static const char *const OC_LNF_G = "ln_final.weight";                    /* [W] */
static const char *const OC_LNF_B = "ln_final.bias";                      /* [W] */
static const char *const OC_PROJ = "text_projection";                     /* [W, J], applied as x @ P */

/* ---- loading --------------------------------------------------------------------------------- */

typedef struct loader {
    const sdxl_clip_source *src;
    const char *prefix; /* "text_model." or "" for HF names */
    int64_t dims[7];
} loader;

void sdxl_clip_opts_init(sdxl_clip_opts *o) {
    o->heads = 0;
    o->act = -1;
}

int64_t sdxl_clip_default_heads(int64_t width) {
    int64_t hd = width >= 512 ? 64 : 16;
    return width % hd == 0 ? width / hd : 1;
}

static int st_to_dtype(const sdxl_st_tensor *t, sdxl_dtype *out) {
    switch (t->dtype) {
    case SDXL_ST_F32: *out = SDXL_F32; return 1;
    case SDXL_ST_F16: *out = SDXL_F16; return 1;
    case SDXL_ST_BF16: *out = SDXL_BF16; return 1;
    case SDXL_ST_F8_E4M3: *out = SDXL_F8_E4M3; return 1;
    case SDXL_ST_F8_E5M2: *out = SDXL_F8_E5M2; return 1;
    default: return 0;
    }
}

/* Dtype of a tensor already checked by fetch(). */
static sdxl_dtype dt_of(const sdxl_st_tensor *t) {
    sdxl_dtype d = SDXL_F32;
    st_to_dtype(t, &d);
    return d;
}

static const sdxl_st_tensor *lookup(const loader *L, const char *name, int hf_inner) {
    char full[512];
    snprintf(full, sizeof full, "%s%s", hf_inner ? L->prefix : "", name);
    return L->src->find(L->src->user, full);
}

static void shape_str(char *buf, size_t cap, int nd, const int64_t *s) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < nd && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* Finds `name` and checks its rank, shape (d1 == D_NONE: rank 1) and floating dtype. */
static int fetch(const loader *L, const char *name, int hf_inner, int d0, int d1, const sdxl_st_tensor **out,
                 sdxl_err *e) {
    const sdxl_st_tensor *t = lookup(L, name, hf_inner);
    const char *pre = hf_inner ? L->prefix : "";
    if (!t) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor \"%s%s\" is missing", L->src->what, pre, name);
    int nd = d1 ? 2 : 1;
    int64_t want[2] = {L->dims[d0], d1 ? L->dims[d1] : 0};
    int ok = t->ndim == nd && t->shape[0] == want[0] && (nd == 1 || t->shape[1] == want[1]);
    if (!ok) {
        char got[128], exp[64];
        shape_str(got, sizeof got, t->ndim, t->shape);
        shape_str(exp, sizeof exp, nd, want);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor \"%s%s\" has shape %s, expected %s", L->src->what, pre, name,
                           got, exp);
    }
    sdxl_dtype dt;
    if (!st_to_dtype(t, &dt))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor \"%s%s\" has dtype %s, expected F16, BF16, F32, F8_E4M3 or F8_E5M2",
                           L->src->what, pre, name, sdxl_st_dtype_name(t->dtype));
    *out = t;
    return SDXL_OK;
}

static int cfg_int(const loader *L, const char *key, int64_t shape_value, sdxl_err *e) {
    const sdxl_json *v = L->src->config ? sdxl_json_get(L->src->config, key) : NULL;
    if (v && (!v->is_int || v->integer != shape_value))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: config.json \"%s\" is %g but the weights say %lld", L->src->what,
                           key, v->number, (long long)shape_value);
    return SDXL_OK;
}

/* Reads the configuration from the shapes (and config.json where given), checking they agree. */
static int read_config(loader *L, const sdxl_clip_opts *o, sdxl_clip_config *cfg, sdxl_err *e) {
    const sdxl_clip_source *s = L->src;
    int hf = s->naming == SDXL_CLIP_NAMING_HF;
    memset(cfg, 0, sizeof *cfg);
    L->prefix = "";
    if (hf) {
        L->prefix = "text_model.";
        if (!lookup(L, HF_TOK, 1)) L->prefix = "";
    }
    const sdxl_st_tensor *tok = lookup(L, hf ? HF_TOK : OC_TOK, 1), *pos = lookup(L, hf ? HF_POS : OC_POS, 1);
    if (!tok)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: token embedding \"%s%s\" is missing", s->what, L->prefix,
                           hf ? HF_TOK : OC_TOK);
    if (!pos)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: position embedding \"%s%s\" is missing", s->what, L->prefix,
                           hf ? HF_POS : OC_POS);
    if (tok->ndim != 2 || tok->shape[0] < 1 || tok->shape[1] < 1 || tok->shape[0] > (1 << 24) ||
        tok->shape[1] > CLIP_MAX_DIM)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: token embedding must be [vocab, width] with width <= %d", s->what,
                           CLIP_MAX_DIM);
    if (pos->ndim != 2 || pos->shape[0] < 1 || pos->shape[0] > 4096)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: position embedding must be [positions <= 4096, width]", s->what);
    cfg->vocab = tok->shape[0];
    cfg->width = tok->shape[1];
    cfg->n_pos = pos->shape[0];

    char name[256];
    const wname *ln1 = &BLOCK_NAMES[0], *fc1 = NULL;
    for (size_t k = 0; k < N_BLOCK_NAMES; k++)
        if (BLOCK_NAMES[k].off == offsetof(blk_src, fc1_w)) fc1 = &BLOCK_NAMES[k];
    for (cfg->layers = 0; cfg->layers < CLIP_MAX_LAYERS; cfg->layers++) {
        snprintf(name, sizeof name, hf ? ln1->hf : ln1->oc, (int)cfg->layers);
        if (!lookup(L, name, 1)) break;
    }
    if (cfg->layers == 0)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: no transformer block (\"%s%s\" is missing)", s->what, L->prefix,
                           name);
    snprintf(name, sizeof name, hf ? fc1->hf : fc1->oc, 0);
    const sdxl_st_tensor *f = lookup(L, name, 1);
    if (!f || f->ndim != 2 || f->shape[0] < 1 || f->shape[0] > 4 * CLIP_MAX_DIM)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: \"%s%s\" must be [mlp, width]", s->what, L->prefix, name);
    cfg->mlp = f->shape[0];

    const sdxl_st_tensor *p = hf ? s->find(s->user, HF_PROJ) : lookup(L, OC_PROJ, 1);
    if (p) {
        if (p->ndim != 2 || p->shape[0] < 1 || p->shape[1] < 1 || p->shape[0] > CLIP_MAX_DIM ||
            p->shape[1] > CLIP_MAX_DIM)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: text projection must be 2-D", s->what);
        cfg->proj = hf ? p->shape[0] : p->shape[1];
    }

    int rc;
    if ((rc = cfg_int(L, "hidden_size", cfg->width, e)) || (rc = cfg_int(L, "num_hidden_layers", cfg->layers, e)) ||
        (rc = cfg_int(L, "intermediate_size", cfg->mlp, e)) || (rc = cfg_int(L, "vocab_size", cfg->vocab, e)) ||
        (rc = cfg_int(L, "max_position_embeddings", cfg->n_pos, e)))
        return rc;

    cfg->heads = sdxl_clip_default_heads(cfg->width);
    int64_t h = s->config ? sdxl_json_i64(s->config, "num_attention_heads", 0) : 0;
    if (h > 0) cfg->heads = h;
    if (o->heads > 0) cfg->heads = o->heads;
    if (cfg->heads < 1 || cfg->width % cfg->heads)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: %lld heads do not divide width %lld", s->what,
                           (long long)cfg->heads, (long long)cfg->width);

    cfg->act = hf ? SDXL_CLIP_QUICK_GELU : SDXL_CLIP_GELU;
    const char *act = s->config ? sdxl_json_str(s->config, "hidden_act", NULL) : NULL;
    if (act) {
        if (strcmp(act, "quick_gelu") == 0)
            cfg->act = SDXL_CLIP_QUICK_GELU;
        else if (strcmp(act, "gelu") == 0)
            cfg->act = SDXL_CLIP_GELU;
        else
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED,
                               "%s: config.json hidden_act \"%s\" (supported: quick_gelu, gelu)", s->what, act);
    }
    if (o->act == SDXL_CLIP_QUICK_GELU || o->act == SDXL_CLIP_GELU) cfg->act = (sdxl_clip_act)o->act;
    cfg->ln_eps = 1e-5f;
    if (s->config) cfg->ln_eps = (float)sdxl_json_num(s->config, "layer_norm_eps", 1e-5);
    if (!(cfg->ln_eps > 0 && cfg->ln_eps < 1))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: config.json layer_norm_eps must be in (0, 1)", s->what);

    L->dims[D_NONE] = 0;
    L->dims[D_W] = cfg->width;
    L->dims[D_3W] = 3 * cfg->width;
    L->dims[D_F] = cfg->mlp;
    L->dims[D_V] = cfg->vocab;
    L->dims[D_P] = cfg->n_pos;
    L->dims[D_J] = cfg->proj;
    return SDXL_OK;
}

static float *vec_f32(const sdxl_st_tensor *t, int64_t n) {
    float *v = malloc((size_t)n * sizeof(float));
    if (v) sdxl_to_f32(t->data, dt_of(t), v, (size_t)n);
    return v;
}

static int linear_from(sdxl_compute *c, sdxl_linear *l, int64_t in, int64_t out, const sdxl_st_tensor *w,
                       const sdxl_st_tensor *b, sdxl_err *e) {
    return sdxl_linear_init(c, l, in, out, w->data, dt_of(w), b->data, dt_of(b), e);
}

/* HF's separate q, k, v become one [3W, W] GEMM, as open_clip stores them. */
static int qkv_from_hf(sdxl_compute *c, sdxl_linear *l, int64_t W, const blk_src *s, sdxl_err *e) {
    float *w = malloc((size_t)(3 * W * W + 3 * W) * sizeof(float));
    if (!w) return sdxl_seterr(e, SDXL_ERR_NOMEM, "clip: fusing q/k/v of width %lld", (long long)W);
    float *b = w + 3 * W * W;
    const sdxl_st_tensor *ws[3] = {s->q_w, s->k_w, s->v_w}, *bs[3] = {s->q_b, s->k_b, s->v_b};
    for (int i = 0; i < 3; i++) {
        sdxl_to_f32(ws[i]->data, dt_of(ws[i]), w + i * W * W, (size_t)(W * W));
        sdxl_to_f32(bs[i]->data, dt_of(bs[i]), b + i * W, (size_t)W);
    }
    int rc = sdxl_linear_init(c, l, W, 3 * W, w, SDXL_F32, b, SDXL_F32, e);
    free(w);
    return rc;
}

static void linear_free_if(sdxl_linear *l) {
    if (l->w || l->impl || l->bias) sdxl_linear_free(l);
}

void sdxl_clip_free(sdxl_clip *m) {
    if (!m) return;
    if (m->blocks) {
        for (int64_t i = 0; i < m->cfg.layers; i++) {
            sdxl_clip_block *b = &m->blocks[i];
            free(b->ln1_g);
            free(b->ln1_b);
            free(b->ln2_g);
            free(b->ln2_b);
            linear_free_if(&b->qkv);
            linear_free_if(&b->out);
            linear_free_if(&b->fc1);
            linear_free_if(&b->fc2);
        }
        free(m->blocks);
    }
    linear_free_if(&m->proj);
    free(m->tok_emb);
    free(m->pos_emb);
    free(m->lnf_g);
    free(m->lnf_b);
    free(m);
}

int sdxl_clip_load(sdxl_compute *c, const sdxl_clip_source *src, const sdxl_clip_opts *o, sdxl_clip **out,
                   sdxl_err *e) {
    *out = NULL;
    sdxl_clip_opts dflt;
    if (!o) {
        sdxl_clip_opts_init(&dflt);
        o = &dflt;
    }
    loader L = {src, "", {0}};
    sdxl_clip_config cfg;
    int rc = read_config(&L, o, &cfg, e);
    if (rc) return rc;
    int hf = src->naming == SDXL_CLIP_NAMING_HF;
    const int64_t W = cfg.width;

    /* Pass 1: every tensor found and checked; nothing big allocated yet. */
    const sdxl_st_tensor *tok, *pos, *lnf_g, *lnf_b, *proj = NULL;
    if ((rc = fetch(&L, hf ? HF_TOK : OC_TOK, 1, D_V, D_W, &tok, e)) ||
        (rc = fetch(&L, hf ? HF_POS : OC_POS, 1, D_P, D_W, &pos, e)))
        return rc;
    blk_src *bs = calloc((size_t)cfg.layers, sizeof *bs);
    if (!bs) return sdxl_seterr(e, SDXL_ERR_NOMEM, "clip: block table");
    char name[256];
    for (int64_t i = 0; i < cfg.layers && !rc; i++) {
        for (size_t k = 0; k < N_BLOCK_NAMES && !rc; k++) {
            const wname *wn = &BLOCK_NAMES[k];
            const char *fmt = hf ? wn->hf : wn->oc;
            if (!fmt) continue;
            snprintf(name, sizeof name, fmt, (int)i);
            rc = fetch(&L, name, 1, hf ? wn->hf0 : wn->oc0, hf ? wn->hf1 : wn->oc1,
                       (const sdxl_st_tensor **)((char *)&bs[i] + wn->off), e);
        }
    }
    if (!rc) rc = fetch(&L, hf ? HF_LNF_G : OC_LNF_G, 1, D_W, 0, &lnf_g, e);
    if (!rc) rc = fetch(&L, hf ? HF_LNF_B : OC_LNF_B, 1, D_W, 0, &lnf_b, e);
    if (!rc && cfg.proj)
        rc = hf ? fetch(&L, HF_PROJ, 0, D_J, D_W, &proj, e) : fetch(&L, OC_PROJ, 1, D_W, D_J, &proj, e);
    if (rc) {
        free(bs);
        return rc;
    }

    /* Pass 2: convert into the compute precision. */
    sdxl_clip *m = calloc(1, sizeof *m);
    if (!m) {
        free(bs);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "clip: model");
    }
    m->cfg = cfg;
    m->naming = src->naming;
    m->tok_dtype = dt_of(tok);
    size_t tok_bytes = (size_t)(cfg.vocab * W) * sdxl_dtype_size(m->tok_dtype);
    m->tok_emb = malloc(tok_bytes);
    m->pos_emb = vec_f32(pos, cfg.n_pos * W);
    m->lnf_g = vec_f32(lnf_g, W);
    m->lnf_b = vec_f32(lnf_b, W);
    m->blocks = calloc((size_t)cfg.layers, sizeof *m->blocks);
    if (!m->tok_emb || !m->pos_emb || !m->lnf_g || !m->lnf_b || !m->blocks) {
        rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "clip: %s: embeddings (%zu bytes)", src->what, tok_bytes);
        goto fail;
    }
    memcpy(m->tok_emb, tok->data, tok_bytes);
    int64_t bytes = (int64_t)tok_bytes + (cfg.n_pos + 2) * W * 4;
    int64_t wsize = sdxl_compute_prec(c) == SDXL_PREC_BF16 ? 2 : 4;
    for (int64_t i = 0; i < cfg.layers; i++) {
        sdxl_clip_block *b = &m->blocks[i];
        const blk_src *s = &bs[i];
        b->ln1_g = vec_f32(s->ln1_g, W);
        b->ln1_b = vec_f32(s->ln1_b, W);
        b->ln2_g = vec_f32(s->ln2_g, W);
        b->ln2_b = vec_f32(s->ln2_b, W);
        if (!b->ln1_g || !b->ln1_b || !b->ln2_g || !b->ln2_b) {
            rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "clip: layer norms");
            goto fail;
        }
        rc = hf ? qkv_from_hf(c, &b->qkv, W, s, e) : linear_from(c, &b->qkv, W, 3 * W, s->q_w, s->q_b, e);
        if (!rc) rc = linear_from(c, &b->out, W, W, s->out_w, s->out_b, e);
        if (!rc) rc = linear_from(c, &b->fc1, W, cfg.mlp, s->fc1_w, s->fc1_b, e);
        if (!rc) rc = linear_from(c, &b->fc2, cfg.mlp, W, s->fc2_w, s->fc2_b, e);
        if (rc) {
            sdxl_err_prefix(e, "%s: block %lld", src->what, (long long)i);
            goto fail;
        }
        bytes += (4 * W * W + 2 * W * cfg.mlp) * wsize + (8 * W + cfg.mlp) * 4;
    }
    if (cfg.proj) {
        if (hf) {
            rc = sdxl_linear_init(c, &m->proj, W, cfg.proj, proj->data, dt_of(proj), NULL, SDXL_F32, e);
        } else {
            /* open_clip stores P [W, J] for x @ P; the linear wants P^T [J, W]. */
            float *p = malloc((size_t)(W * cfg.proj) * sizeof(float) * 2);
            if (!p) {
                rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "clip: text projection");
                goto fail;
            }
            float *pt = p + W * cfg.proj;
            sdxl_to_f32(proj->data, dt_of(proj), p, (size_t)(W * cfg.proj));
            for (int64_t i = 0; i < W; i++)
                for (int64_t j = 0; j < cfg.proj; j++)
                    pt[j * W + i] = p[i * cfg.proj + j];
            rc = sdxl_linear_init(c, &m->proj, W, cfg.proj, pt, SDXL_F32, NULL, SDXL_F32, e);
            free(p);
        }
        if (rc) {
            sdxl_err_prefix(e, "%s: text projection", src->what);
            goto fail;
        }
        bytes += W * cfg.proj * wsize;
    }
    m->weight_bytes = bytes;
    free(bs);
    *out = m;
    return SDXL_OK;
fail:
    free(bs);
    sdxl_clip_free(m);
    return rc;
}

typedef struct ckpt_user {
    const sdxl_ckpt *ck;
    sdxl_part part;
} ckpt_user;

static const sdxl_st_tensor *ckpt_find(void *user, const char *name) {
    const ckpt_user *u = user;
    return sdxl_ckpt_find(u->ck, u->part, name);
}

int sdxl_clip_load_ckpt(sdxl_compute *c, const sdxl_ckpt *ck, sdxl_part part, const sdxl_clip_opts *o, sdxl_clip **out,
                        sdxl_err *e) {
    *out = NULL;
    if (part != SDXL_PART_TE1 && part != SDXL_PART_TE2)
        return sdxl_seterr(e, SDXL_ERR_ARG, "clip: part %d is not a text encoder", (int)part);
    sdxl_naming nm = sdxl_ckpt_naming(ck, part);
    if (nm == SDXL_NAMING_NONE)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: no %s in this checkpoint", sdxl_ckpt_path(ck),
                           sdxl_part_name(part));
    char what[600];
    snprintf(what, sizeof what, "%s of %s", sdxl_part_name(part), sdxl_ckpt_path(ck));
    ckpt_user u = {ck, part};
    sdxl_clip_source src = {ckpt_find, &u, SDXL_CLIP_NAMING_HF, sdxl_ckpt_config(ck, part), what};
    /* Only the original layout's bigG uses open_clip names; CLIP-L is HF-named everywhere. */
    if (nm == SDXL_NAMING_ORIGINAL && part == SDXL_PART_TE2) src.naming = SDXL_CLIP_NAMING_OPENCLIP;
    return sdxl_clip_load(c, &src, o, out, e);
}

/* ---- layers, for rebuilding with a delta ------------------------------------------------------ */

/* Each block's q|k|v, out, fc1, fc2 and both LayerNorms. Parts are named as HF names them
 * (text_model.encoder.layers.i.self_attn.q_proj), which LoRA files use for either naming; alt is
 * the open_clip name where a module has its own tensor there. */
int sdxl_clip_layers(sdxl_clip *m, const sdxl_clip_source *src, sdxl_lref_fn fn, void *user, sdxl_err *e) {
    int hf = m->naming == SDXL_CLIP_NAMING_HF;
    loader L = {src, hf ? "text_model." : "", {0}};
    if (hf && !lookup(&L, HF_TOK, 1)) L.prefix = "";
    const int64_t W = m->cfg.width, F = m->cfg.mlp;
    static const struct {
        const char *hf, *oc_w, *oc_b; /* module, open_clip weight and bias names */
        int kind, nparts;
    } MODS[] = {
        {"self_attn.%s_proj", "transformer.resblocks.%d.attn.in_proj_weight", "transformer.resblocks.%d.attn.in_proj_bias",
         SDXL_LREF_LINEAR, 3},
        {"self_attn.out_proj", "transformer.resblocks.%d.attn.out_proj.weight",
         "transformer.resblocks.%d.attn.out_proj.bias", SDXL_LREF_LINEAR, 1},
        {"mlp.fc1", "transformer.resblocks.%d.mlp.c_fc.weight", "transformer.resblocks.%d.mlp.c_fc.bias",
         SDXL_LREF_LINEAR, 1},
        {"mlp.fc2", "transformer.resblocks.%d.mlp.c_proj.weight", "transformer.resblocks.%d.mlp.c_proj.bias",
         SDXL_LREF_LINEAR, 1},
        {"layer_norm1", "transformer.resblocks.%d.ln_1.weight", "transformer.resblocks.%d.ln_1.bias", SDXL_LREF_NORM, 1},
        {"layer_norm2", "transformer.resblocks.%d.ln_2.weight", "transformer.resblocks.%d.ln_2.bias", SDXL_LREF_NORM, 1},
    };
    static const char *const QKV[3] = {"q", "k", "v"};
    for (int64_t i = 0; i < m->cfg.layers; i++) {
        sdxl_clip_block *blk = &m->blocks[i];
        for (size_t k = 0; k < sizeof MODS / sizeof MODS[0]; k++) {
            sdxl_lref r;
            memset(&r, 0, sizeof r);
            r.kind = (sdxl_lref_kind)MODS[k].kind;
            r.nparts = MODS[k].nparts;
            r.kh = r.kw = 1;
            r.out_each = k == 2 ? F : W;
            r.in = r.kind == SDXL_LREF_NORM ? 0 : k == 3 ? F : W;
            switch (k) {
            case 0: r.lin = &blk->qkv; break;
            case 1: r.lin = &blk->out; break;
            case 2: r.lin = &blk->fc1; break;
            case 3: r.lin = &blk->fc2; break;
            case 4: r.norm_g = blk->ln1_g; r.norm_b = blk->ln1_b; break;
            default: r.norm_g = blk->ln2_g; r.norm_b = blk->ln2_b; break;
            }
            for (int p = 0; p < r.nparts; p++) {
                sdxl_lref_part *pt = &r.part[p];
                char mod[128], nm[256];
                snprintf(mod, sizeof mod, MODS[k].hf, r.nparts > 1 ? QKV[p] : "");
                snprintf(pt->name, sizeof pt->name, "text_model.encoder.layers.%d.%s", (int)i, mod);
                if (hf) {
                    const char *sfx[2] = {"weight", "bias"};
                    const sdxl_st_tensor **dst[2] = {&pt->w, &pt->b};
                    for (int j = 0; j < 2; j++) {
                        snprintf(nm, sizeof nm, "encoder.layers.%d.%s.%s", (int)i, mod, sfx[j]);
                        *dst[j] = lookup(&L, nm, 1);
                    }
                } else {
                    snprintf(nm, sizeof nm, MODS[k].oc_w, (int)i);
                    pt->w = lookup(&L, nm, 1);
                    if (r.nparts == 1) {
                        size_t n = strlen(nm) - strlen(".weight");
                        if (n < sizeof pt->alt) {
                            memcpy(pt->alt, nm, n);
                            pt->alt[n] = 0;
                        }
                    }
                    snprintf(nm, sizeof nm, MODS[k].oc_b, (int)i);
                    pt->b = lookup(&L, nm, 1);
                    pt->w_row0 = pt->b_row0 = p * W;
                }
                if (!pt->w || !pt->b)
                    return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensors of \"%s\" are missing", src->what, pt->name);
            }
            int rc = fn(user, &r, e);
            if (rc) return rc;
        }
    }
    return SDXL_OK;
}

int sdxl_clip_layers_ckpt(sdxl_clip *m, const sdxl_ckpt *ck, sdxl_part part, sdxl_lref_fn fn, void *user,
                          sdxl_err *e) {
    char what[600];
    snprintf(what, sizeof what, "%s of %s", sdxl_part_name(part), sdxl_ckpt_path(ck));
    ckpt_user u = {ck, part};
    sdxl_clip_source src = {ckpt_find, &u, m->naming, sdxl_ckpt_config(ck, part), what};
    return sdxl_clip_layers(m, &src, fn, user, e);
}

/* ---- forward --------------------------------------------------------------------------------- */

double sdxl_clip_flops(const sdxl_clip *m, int64_t batch, int64_t len, int64_t blocks) {
    const double W = (double)m->cfg.width, F = (double)m->cfg.mlp, T = (double)(batch * len);
    double per_block =
        2.0 * T * (4 * W * W + 2 * W * F) + 2.0 * 2.0 * (double)batch * W * (double)len * (double)(len + 1) / 2;
    return per_block * (double)blocks + 2.0 * (double)batch * W * (double)m->cfg.proj;
}

int64_t sdxl_clip_scratch_bytes(const sdxl_clip *m, int64_t batch, int64_t len) {
    return batch * len * (6 * m->cfg.width + m->cfg.mlp) * (int64_t)sizeof(float);
}

static int act_fwd(sdxl_compute *c, sdxl_clip_act a, float *x, int64_t n, sdxl_err *e) {
    return a == SDXL_CLIP_QUICK_GELU ? sdxl_op_quick_gelu(c, x, n, e) : sdxl_op_gelu(c, x, n, e);
}

/* x += attn(LN1(x)); x += mlp(LN2(x)). */
static int block_fwd(sdxl_compute *c, const sdxl_clip *m, const sdxl_clip_block *b, float *x, float *h, float *qkv,
                     float *att, float *ff, int64_t B, int64_t L, sdxl_err *e) {
    const sdxl_clip_config *cf = &m->cfg;
    const int64_t W = cf->width, M = B * L;
    const int hd = (int)(W / cf->heads);
    int rc;
    if ((rc = sdxl_op_layer_norm(c, x, h, M, W, cf->ln_eps, b->ln1_g, b->ln1_b, e))) return rc;
    if ((rc = sdxl_linear_fwd(c, &b->qkv, h, M, qkv, 0, e))) return rc;
    if ((rc = sdxl_attention(c, qkv, 3 * W, qkv + W, qkv + 2 * W, 3 * W, att, W, B, L, L, (int)cf->heads, hd,
                             1.0f / sqrtf((float)hd), 1, e)))
        return rc;
    if ((rc = sdxl_linear_fwd(c, &b->out, att, M, x, SDXL_OP_ACCUM, e))) return rc;
    if ((rc = sdxl_op_layer_norm(c, x, h, M, W, cf->ln_eps, b->ln2_g, b->ln2_b, e))) return rc;
    if ((rc = sdxl_linear_fwd(c, &b->fc1, h, M, ff, 0, e))) return rc;
    if ((rc = act_fwd(c, cf->act, ff, M * cf->mlp, e))) return rc;
    return sdxl_linear_fwd(c, &b->fc2, ff, M, x, SDXL_OP_ACCUM, e);
}

int sdxl_clip_forward(sdxl_compute *c, const sdxl_clip *m, const sdxl_clip_io *io, sdxl_err *e) {
    const sdxl_clip_config *cf = &m->cfg;
    const int64_t W = cf->width, B = io->batch, L = io->len;
    if (B < 1 || L < 1 || L > cf->n_pos || B > CLIP_MAX_TOKENS / L)
        return sdxl_seterr(e, SDXL_ERR_ARG, "clip: batch %lld x length %lld (length must be 1..%lld, tokens <= %d)",
                           (long long)B, (long long)L, (long long)cf->n_pos, CLIP_MAX_TOKENS);
    if (io->hidden && (io->layer < 0 || io->layer > cf->layers))
        return sdxl_seterr(e, SDXL_ERR_ARG, "clip: hidden layer %lld out of range 0..%lld", (long long)io->layer,
                           (long long)cf->layers);
    const int64_t M = B * L;
    for (int64_t i = 0; i < M; i++)
        if (io->ids[i] < 0 || io->ids[i] >= cf->vocab)
            return sdxl_seterr(e, SDXL_ERR_ARG, "clip: token id %d at [%lld, %lld] is outside the vocabulary (0..%lld)",
                               (int)io->ids[i], (long long)(i / L), (long long)(i % L), (long long)cf->vocab - 1);
    int need_all = io->pooled || io->last_normed || io->all;
    int64_t nblk = need_all ? cf->layers : io->hidden ? io->layer : 0;

    /* Activations in the context's memory (the device's on a GPU); embeddings are gathered here. */
    float *x = sdxl_compute_alloc(c, (size_t)sdxl_clip_scratch_bytes(m, B, L), e);
    float *emb = malloc((size_t)(M * W) * sizeof(float));
    if (!x || !emb) {
        sdxl_compute_release(c, x);
        free(emb);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "clip: scratch for %lld tokens", (long long)M);
    }
    float *h = x + M * W, *att = h + M * W, *qkv = att + M * W, *ff = qkv + 3 * M * W;

    const size_t esz = sdxl_dtype_size(m->tok_dtype);
    for (int64_t i = 0; i < M; i++) {
        float *row = emb + i * W;
        sdxl_to_f32((const char *)m->tok_emb + (size_t)io->ids[i] * (size_t)W * esz, m->tok_dtype, row, (size_t)W);
        sdxl_add(row, m->pos_emb + (i % L) * W, row, W);
    }
    size_t hs_bytes = (size_t)(M * W) * sizeof(float);
    int rc = sdxl_op_copy(c, x, emb, hs_bytes, e);
    free(emb);
    if (!rc && io->all) rc = sdxl_op_copy(c, io->all[0], x, hs_bytes, e);
    if (!rc && io->hidden && io->layer == 0) rc = sdxl_op_copy(c, io->hidden, x, hs_bytes, e);

    for (int64_t i = 0; i < nblk && !rc; i++) {
        rc = block_fwd(c, m, &m->blocks[i], x, h, qkv, att, ff, B, L, e);
        if (rc) break;
        if (io->all) rc = sdxl_op_copy(c, io->all[i + 1], x, hs_bytes, e);
        if (!rc && io->hidden && io->layer == i + 1) rc = sdxl_op_copy(c, io->hidden, x, hs_bytes, e);
    }
    if (!rc && io->last_normed) rc = sdxl_op_layer_norm(c, x, io->last_normed, M, W, cf->ln_eps, m->lnf_g, m->lnf_b, e);
    if (!rc && io->pooled) {
        /* The EOS row: argmax of the ids (first maximum), as HF and open_clip pick it. */
        for (int64_t b = 0; b < B; b++) {
            const int32_t *ids = io->ids + b * L;
            int64_t at = 0;
            for (int64_t t = 1; t < L; t++)
                if (ids[t] > ids[at]) at = t;
            if (!rc) rc = sdxl_op_layer_norm(c, x + (b * L + at) * W, h + b * W, 1, W, cf->ln_eps, m->lnf_g, m->lnf_b, e);
        }
        if (!rc)
            rc = cf->proj ? sdxl_linear_fwd(c, &m->proj, h, B, io->pooled, 0, e)
                          : sdxl_op_copy(c, io->pooled, h, (size_t)(B * W) * sizeof(float), e);
    }
    sdxl_compute_release(c, x);
    return rc;
}
