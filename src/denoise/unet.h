/* SDXL UNet: base (3 levels) and refiner (4 levels) are two configs of one code path, both read
 * from the tensor shapes of either naming (sgm single file or diffusers). Activations are f32
 * channels-last inside; the public forward takes and returns NCHW latents (see docs/unet.md). */
#ifndef SDXL_DENOISE_UNET_H
#define SDXL_DENOISE_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/log.h"
#include "io/checkpoint.h"
#include "io/layerref.h"
#include "tensor/ops.h"

#define SDXL_UNET_MAX_LEVELS 6
#define SDXL_UNET_MAX_RES 4   /* resnets per down level (up levels have one more) */
#define SDXL_UNET_MAX_DEPTH 64 /* transformer blocks per attention */

typedef struct sdxl_unet_cfg {
    sdxl_naming naming;     /* ORIGINAL (sgm names) or DIFFUSERS */
    int is_refiner;         /* 1 when 4 levels (SDXL refiner), 0 for 3 (SDXL base) */
    int64_t in_ch, out_ch;  /* 4 and 4 (in 9 for inpainting UNets) */
    int64_t model_ch;       /* level-0 width = width of the sinusoidal timestep embedding */
    int64_t time_dim;       /* time embedding width (4 * model_ch) */
    int64_t adm_in;         /* add-embedding input: pooled width + n_time_ids * time_id_dim */
    int64_t time_id_dim;    /* 256: sinusoidal width of each micro-conditioning value */
    int64_t context_dim;    /* cross-attention key/value width (2048 base, 1280 refiner) */
    int levels, n_res;
    int64_t ch[SDXL_UNET_MAX_LEVELS];
    int down_depth[SDXL_UNET_MAX_LEVELS]; /* transformer blocks per attention; 0 = no attention */
    int up_depth[SDXL_UNET_MAX_LEVELS];
    int mid_depth;
    int heads[SDXL_UNET_MAX_LEVELS]; /* attention heads per level (mid uses the last level's) */
    int mid_heads;
    const char *heads_rule; /* which rule gave the heads: "override", "config.json", "yaml", "head_dim 64" */
    int groups;             /* GroupNorm groups: 32 */
    int64_t n_params;       /* parameters in the UNet tensors */
} sdxl_unet_cfg;

typedef struct sdxl_unet_opts {
    int head_dim;      /* > 0: every attention uses this head dim (overrides every other rule) */
    int validate_only; /* check every tensor's name, shape, dtype; convert nothing (forward refused) */
    const sdxl_logger *log;
    /* ControlNet trunk: only the embeddings, conv_in, down and mid blocks (run by sdxl_unet_encode);
     * tensors whose names start with one of extra_prefixes (NULL-terminated) are the caller's. */
    int encoder_only;
    const char *const *extra_prefixes;
} sdxl_unet_opts;

void sdxl_unet_opts_init(sdxl_unet_opts *o);

typedef struct sdxl_unet sdxl_unet;

/* Reads the config from the shapes, validates every expected tensor (the first mismatch or
 * unexpected tensor is named in the error) before allocating, then converts the weights once
 * into the compute precision and oneDNN layout of c. The checkpoint and c must outlive u. */
int sdxl_unet_load(sdxl_compute *c, const sdxl_ckpt *ck, const sdxl_unet_opts *o, sdxl_unet **out, sdxl_err *e);
void sdxl_unet_free(sdxl_unet *u);
const sdxl_unet_cfg *sdxl_unet_config(const sdxl_unet *u);

typedef struct sdxl_unet_stats {
    double load_seconds;
    uint64_t weight_bytes;    /* converted weights held by the layers */
    uint64_t workspace_bytes; /* activation workspace currently reserved */
} sdxl_unet_stats;
void sdxl_unet_stats_get(const sdxl_unet *u, sdxl_unet_stats *s);

/* One forward. Shapes: x [batch, in_ch, h, w] NCHW; t [batch] (float timesteps, one per row);
 * context [batch, ctx_len, context_dim]; pooled [batch, pooled_dim]; time_ids [batch, n_time_ids]
 * with pooled_dim + 256 * n_time_ids == adm_in. Optional ControlNet residuals, channels-last,
 * added to the skips (ctrl_down[i]: [batch, h_i, w_i, c_i], one per skip in push order) and to
 * the mid-block output (ctrl_mid). */
typedef struct sdxl_unet_in {
    int64_t batch, h, w;
    const float *x;
    const float *t;
    const float *context;
    int64_t ctx_len;
    const float *pooled;
    int64_t pooled_dim;
    const float *time_ids;
    int64_t n_time_ids;
    const float *const *ctrl_down; /* NULL or n_ctrl_down pointers */
    int n_ctrl_down;
    const float *ctrl_mid;
    /* ControlNet hint embedding, channels-last [ctrl_hint_rows, h, w, ch[0]], added to conv_in's
     * output; ctrl_hint_rows is 1 (every row gets it) or batch. */
    const float *ctrl_hint;
    int64_t ctrl_hint_rows;
} sdxl_unet_in;

/* out: [batch, out_ch, h, w] NCHW. The activation workspace is planned once per shape (a
 * measure pass of the same code) and reused: no allocation per call after the first. */
int sdxl_unet_forward(sdxl_unet *u, const sdxl_unet_in *in, float *out, sdxl_err *e);

/* The trunk pass of an encoder_only UNet (a ControlNet): conv_in (+ ctrl_hint), down and mid
 * blocks; then sink sees each skip i = 0..n_skips-1 and the mid output (i = n_skips),
 * channels-last [batch, h, w, c], valid only during the call. Same workspace plan as forward. */
typedef int (*sdxl_unet_feature_fn)(void *user, int i, const float *x, int64_t batch, int64_t h, int64_t w, int64_t c,
                                    sdxl_err *e);
int sdxl_unet_encode(sdxl_unet *u, const sdxl_unet_in *in, sdxl_unet_feature_fn sink, void *user, sdxl_err *e);

/* Every tensor of u's network (its trunk when encoder_only is set) in walk order, with its name
 * in both namings and its shape: how a Control-LoRA maps its sgm names onto a diffusers base. */
typedef int (*sdxl_unet_name_fn)(void *user, const char *original, const char *diffusers, int ndim,
                                 const int64_t *shape, sdxl_err *e);
int sdxl_unet_list_names(const sdxl_unet *u, int encoder_only, sdxl_unet_name_fn fn, void *user, sdxl_err *e);

/* Frees the activation workspace (the next forward plans and allocates it again), so a later
 * stage such as the VAE decode does not sit on top of it. */
void sdxl_unet_trim(sdxl_unet *u);

/* Number of skips (ControlNet residuals) and the shape of the i-th one for a latent h x w. */
int sdxl_unet_n_skips(const sdxl_unet *u);
void sdxl_unet_skip_shape(const sdxl_unet *u, int i, int64_t h, int64_t w, int64_t *oh, int64_t *ow, int64_t *oc);

/* Peak activation bytes of one forward at this shape, before running: a measure pass of the
 * forward code (no math, no weights needed; works on a validate-only UNet). Activations are f32
 * in both precisions; the bf16 GEMM-input scratch lives in the compute context. */
int sdxl_unet_estimate(sdxl_unet *u, int64_t batch, int64_t h, int64_t w, int64_t ctx_len, size_t *bytes,
                       sdxl_err *e);

/* Every linear, conv and norm layer in walk order, linked to its tensors in ck (the checkpoint u
 * was loaded from), with each module's name in both namings; fn's error stops the walk. */
int sdxl_unet_layers(sdxl_unet *u, const sdxl_ckpt *ck, sdxl_lref_fn fn, void *user, sdxl_err *e);

/* Per-op-type timing of forwards (for bench/unet). */
typedef enum sdxl_unet_op {
    SDXL_UNET_OP_CONV = 0,
    SDXL_UNET_OP_LINEAR,
    SDXL_UNET_OP_ATTENTION,
    SDXL_UNET_OP_GROUPNORM,
    SDXL_UNET_OP_LAYERNORM,
    SDXL_UNET_OP_GEGLU,
    SDXL_UNET_OP_OTHER,
    SDXL_UNET_OP_COUNT
} sdxl_unet_op;
const char *sdxl_unet_op_name(sdxl_unet_op op);
void sdxl_unet_profile(sdxl_unet *u, int enable); /* enable also clears the counters */
/* Seconds, calls and FLOPs (conv, linear, attention) per op type since profiling was enabled. */
void sdxl_unet_profile_get(const sdxl_unet *u, double seconds[SDXL_UNET_OP_COUNT], int64_t calls[SDXL_UNET_OP_COUNT],
                           double flops[SDXL_UNET_OP_COUNT]);

/* Multiply-adds x2 of the conv, linear and attention products of one forward at this shape,
 * counted by a measure pass (for GFLOP/s figures). */
double sdxl_unet_flops(sdxl_unet *u, int64_t batch, int64_t h, int64_t w, int64_t ctx_len);

#endif
