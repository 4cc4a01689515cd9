/* SDXL ControlNet (diffusers ControlNetModel / sgm cldm.ControlNet): the UNet's trunk (embeddings,
 * conv_in, down and mid blocks, run by denoise/unet.c in encoder_only mode) plus the hint block that
 * embeds the control image and one 1x1 "zero conv" per skip and for the mid block. Layouts: a
 * diffusers folder or file (controlnet_* names), the sgm single file (control_model.* or bare
 * input_blocks / input_hint_block / zero_convs / middle_block_out), and Stability's Control-LoRA
 * (the base UNet's trunk plus low-rank deltas; see docs/controlnet.md). */
#ifndef SDXL_ADAPTERS_CONTROLNET_H
#define SDXL_ADAPTERS_CONTROLNET_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/log.h"
#include "denoise/unet.h"
#include "tensor/ops.h"

typedef struct sdxl_controlnet sdxl_controlnet;

typedef enum sdxl_controlnet_layout {
    SDXL_CN_DIFFUSERS = 0, /* controlnet_cond_embedding / controlnet_down_blocks / controlnet_mid_block */
    SDXL_CN_SGM,           /* input_hint_block / zero_convs / middle_block_out */
    SDXL_CN_CONTROL_LORA   /* sgm names with .up/.down deltas on the base UNet's trunk */
} sdxl_controlnet_layout;

typedef struct sdxl_controlnet_info {
    sdxl_controlnet_layout layout;
    int64_t hint_ch;      /* control image channels (3) */
    int n_hint_blocks;    /* convs between the hint block's conv_in and conv_out */
    int n_skips;          /* zero convs before the mid one */
    int64_t n_params;     /* parameters of the trunk, hint block and zero convs */
    int lora_rank;        /* Control-LoRA: largest rank of its deltas; 0 otherwise */
    const sdxl_unet_cfg *trunk;
} sdxl_controlnet_info;

const char *sdxl_controlnet_layout_name(sdxl_controlnet_layout l); /* "diffusers", "sgm", "control-lora" */

/* path: a diffusers folder (config.json + diffusion_pytorch_model[.fp16].safetensors) or a
 * .safetensors file in any layout above. base: the UNet the residuals are for; its shapes are
 * checked against the ControlNet's, and a Control-LoRA takes its trunk weights from base_ck
 * (the checkpoint base was loaded from, which must still be open). Weights are converted once
 * into c's precision. An SD 1.x/2.x ControlNet is refused saying so. */
int sdxl_controlnet_load(sdxl_compute *c, const char *path, const sdxl_unet *base, const sdxl_ckpt *base_ck,
                         const sdxl_logger *log, sdxl_controlnet **out, sdxl_err *e);
void sdxl_controlnet_free(sdxl_controlnet *cn);
void sdxl_controlnet_get_info(const sdxl_controlnet *cn, sdxl_controlnet_info *info);

/* Hint embedding of control images img [rows, H, W, hint_ch] channels-last in [0, 1] (RGB order)
 * into out [rows, H/8, W/8, ch0] (H, W multiples of 8). Independent of the timestep: computed once
 * per request and passed as sdxl_unet_in.ctrl_hint to every step. */
int sdxl_controlnet_hint(sdxl_controlnet *cn, const float *img, int64_t rows, int64_t H, int64_t W, float *out,
                         sdxl_err *e);

/* One ControlNet pass on in (the UNet's input for these rows, with ctrl_hint set): every residual,
 * times scale (guess mode: times diffusers' logspace(-1, 0) ramp over the blocks, mid 1), is added
 * to acc_down[i] / acc_mid (channels-last, the UNet's skip shapes) starting at row acc_row0. */
int sdxl_controlnet_apply(sdxl_controlnet *cn, const sdxl_unet_in *in, float scale, int guess, float *const *acc_down,
                          float *acc_mid, int64_t acc_row0, sdxl_err *e);

/* Peak bytes of one pass at this shape (trunk activations plus the zero-conv scratch), and of the
 * hint embedding at H x W pixels; weights held. */
int sdxl_controlnet_estimate(sdxl_controlnet *cn, int64_t batch, int64_t h, int64_t w, int64_t ctx_len,
                             size_t *bytes, sdxl_err *e);
uint64_t sdxl_controlnet_hint_bytes(const sdxl_controlnet *cn, int64_t H, int64_t W);
uint64_t sdxl_controlnet_weight_bytes(const sdxl_controlnet *cn);

/* Frees the activation workspaces (trunk and scratch). */
void sdxl_controlnet_trim(sdxl_controlnet *cn);

/* The trunk, for profiling and FLOP counts (bench/unet --control). */
sdxl_unet *sdxl_controlnet_trunk(sdxl_controlnet *cn);

#endif
