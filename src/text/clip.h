/* CLIP text transformer, one implementation for both SDXL encoders: CLIP-L (HF CLIPTextModel
 * names, quick_gelu) and OpenCLIP-bigG (open_clip names with fused q/k/v and a text_projection
 * matrix, erf gelu; or diffusers' CLIPTextModelWithProjection names). The configuration is
 * read from the tensor shapes, so the tiny test models and the real ones share every line. */
#ifndef SDXL_TEXT_CLIP_H
#define SDXL_TEXT_CLIP_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "io/layerref.h"
#include "io/safetensors.h"
#include "tensor/ops.h"

typedef enum sdxl_clip_act { SDXL_CLIP_QUICK_GELU = 0, SDXL_CLIP_GELU } sdxl_clip_act;

/* Tensor naming of a text encoder. */
typedef enum sdxl_clip_naming {
    SDXL_CLIP_NAMING_HF =
        0, /* text_model.embeddings..., encoder.layers.i.self_attn.{q,k,v}_proj, text_projection.weight [proj, W] */
    SDXL_CLIP_NAMING_OPENCLIP /* token_embedding, transformer.resblocks.i.attn.in_proj_weight [3W, W], text_projection
                                 [W, proj] */
} sdxl_clip_naming;

typedef struct sdxl_clip_config {
    int64_t width;  /* W: 768 CLIP-L, 1280 bigG */
    int64_t layers; /* 12, 32 */
    int64_t heads;  /* 12, 20 (head width 64) */
    int64_t mlp;    /* F: 3072, 5120 */
    int64_t vocab;  /* V: 49408 */
    int64_t n_pos;  /* P: 77 */
    int64_t proj;   /* J: 1280 for bigG; 0 = no text_projection (pooled is the normed row itself) */
    sdxl_clip_act act;
    float ln_eps; /* 1e-5 */
} sdxl_clip_config;

typedef struct sdxl_clip_block {
    float *ln1_g, *ln1_b; /* [W] */
    sdxl_linear qkv;      /* [3W, W] rows q, k, v (HF's separate q/k/v fused at load) */
    sdxl_linear out;      /* [W, W] */
    float *ln2_g, *ln2_b; /* [W] */
    sdxl_linear fc1;      /* [F, W] (open_clip c_fc) */
    sdxl_linear fc2;      /* [W, F] (open_clip c_proj) */
} sdxl_clip_block;

typedef struct sdxl_clip {
    sdxl_clip_config cfg;
    sdxl_clip_naming naming;
    sdxl_dtype tok_dtype; /* token embedding kept in its stored dtype (f16 in real files: 126 MB for bigG, not 253) */
    void *tok_emb;        /* [V, W] */
    float *pos_emb;       /* [P, W] */
    sdxl_clip_block *blocks; /* [layers] */
    float *lnf_g, *lnf_b;    /* [W] final LayerNorm */
    sdxl_linear proj;        /* [J, W] = P^T, so pooled = x @ P; unused when cfg.proj == 0 */
    int64_t weight_bytes;    /* bytes held for weights */
} sdxl_clip;

/* Where the tensors come from: a lookup by name (prefix stripped) and an optional config.json. */
typedef struct sdxl_clip_source {
    const sdxl_st_tensor *(*find)(void *user, const char *name);
    void *user;
    sdxl_clip_naming naming;
    const sdxl_json *config; /* diffusers config.json or NULL */
    const char *what;        /* names the source in errors ("text_encoder_2 of x.safetensors") */
} sdxl_clip_source;

typedef struct sdxl_clip_opts {
    int heads; /* > 0 overrides config.json and the head-width rule */
    int act;   /* -1 = config.json hidden_act, else the naming's default; or an sdxl_clip_act */
} sdxl_clip_opts;

void sdxl_clip_opts_init(sdxl_clip_opts *o);

/* Head count when no config says it: every released CLIP text tower uses 64-wide heads
 * (CLIP-L 12, ViT-H 16, bigG 20); widths below 512 are test models with 16-wide heads. */
int64_t sdxl_clip_default_heads(int64_t width);

/* Validates every expected tensor (name, rank, shape, dtype; the first mismatch named) before
 * allocating, then converts the weights into the compute context's precision. */
int sdxl_clip_load(sdxl_compute *c, const sdxl_clip_source *src, const sdxl_clip_opts *o, sdxl_clip **out, sdxl_err *e);
/* The text encoder part of a checkpoint (SDXL_PART_TE1 or SDXL_PART_TE2). */
int sdxl_clip_load_ckpt(sdxl_compute *c, const sdxl_ckpt *ck, sdxl_part part, const sdxl_clip_opts *o, sdxl_clip **out,
                        sdxl_err *e);
void sdxl_clip_free(sdxl_clip *m);

/* Every block's linear and LayerNorm layers linked to the tensors of src (the source m was loaded
 * from), each module named as HF names it ("text_model.encoder.layers.0.self_attn.q_proj"). */
int sdxl_clip_layers(sdxl_clip *m, const sdxl_clip_source *src, sdxl_lref_fn fn, void *user, sdxl_err *e);
int sdxl_clip_layers_ckpt(sdxl_clip *m, const sdxl_ckpt *ck, sdxl_part part, sdxl_lref_fn fn, void *user,
                          sdxl_err *e);

typedef struct sdxl_clip_io {
    const int32_t *ids; /* [batch, len] token ids < vocab */
    int64_t batch, len; /* len <= n_pos */
    int64_t layer;      /* hidden state wanted in `hidden`: 0 = embeddings, i = output of block i */
    float *hidden;      /* [batch, len, W] or NULL */
    float *pooled;      /* [batch, J] (J = W without projection) or NULL: ln_final(last)[argmax ids] @ P */
    float *last_normed; /* [batch, len, W] ln_final(last block output) (HF last_hidden_state) or NULL */
    float **all;        /* NULL or layers+1 buffers [batch, len, W]: every hidden state */
} sdxl_clip_io;

/* Runs only the blocks the requested outputs need (the context alone skips the last block). */
int sdxl_clip_forward(sdxl_compute *c, const sdxl_clip *m, const sdxl_clip_io *io, sdxl_err *e);

/* Multiply-add count x2 of a forward that runs `blocks` blocks on batch x len tokens. */
double sdxl_clip_flops(const sdxl_clip *m, int64_t batch, int64_t len, int64_t blocks);
/* Peak scratch bytes of a forward (activations, not weights). */
int64_t sdxl_clip_scratch_bytes(const sdxl_clip *m, int64_t batch, int64_t len);

#endif
