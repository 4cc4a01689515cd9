/* ControlNet units of a request inside the pipeline: validation, model cache, control images
 * (resize mode, preprocessing, hint embedding once per request), and per UNet call the summed
 * residuals of the units whose guidance window holds the step (diffusers' controlnet_keep). */
#ifndef SDXL_PIPELINE_CONTROL_H
#define SDXL_PIPELINE_CONTROL_H

#include <stdint.h>

#include "adapters/controlnet.h"
#include "base/err.h"
#include "denoise/unet.h"
#include "sdxl.h"

#define SDXL_PL_MAX_CONTROLS 8

typedef struct sdxl_pl_model sdxl_pl_model;
typedef struct sdxl_pl_cn_cache sdxl_pl_cn_cache;
void sdxl_pl_cn_cache_free(sdxl_pl_cn_cache *c);

/* Field-named checks of p->controls (no model needed). */
int sdxl_pl_ctrl_check(const sdxl_gen_params *p, sdxl_err *e);

/* A unit's effective values (defaults filled: scale 0 -> 1, guidance_end 0 -> 1). */
float sdxl_pl_ctrl_scale(const sdxl_control_spec *s);
float sdxl_pl_ctrl_end(const sdxl_control_spec *s);

typedef struct sdxl_pl_ctrl sdxl_pl_ctrl;

/* Loads (or reuses) each unit's ControlNet, fits its image to W x H (resize mode), preprocesses it
 * and embeds the hint. NULL *out when the request has no unit. */
int sdxl_pl_ctrl_new(sdxl_pl_model *m, const sdxl_gen_params *p, int W, int H, const sdxl_logger *log,
                     sdxl_pl_ctrl **out, sdxl_err *e);
void sdxl_pl_ctrl_free(sdxl_pl_ctrl *c);

/* Residual buffers for UNet batches of `rows` rows ([uncond x B; cond x B] when cfg) at h x w. */
int sdxl_pl_ctrl_bind(sdxl_pl_ctrl *c, int64_t rows, int B, int cfg, int64_t h, int64_t w, sdxl_err *e);

/* Extra peak bytes of one UNet call with control at this batch (trunk activations, residuals). */
int sdxl_pl_ctrl_estimate(sdxl_pl_ctrl *c, int64_t rows, int B, int cfg, int64_t h, int64_t w, int64_t T,
                          uint64_t *bytes, sdxl_err *e);

/* Fills in->ctrl_down / ctrl_mid with the summed residuals of the units active at schedule step
 * i of n (left NULL when none is); in is the UNet's input (in_ch channels per row). *active gets
 * one bit per active unit. */
int sdxl_pl_ctrl_run(sdxl_pl_ctrl *c, sdxl_unet_in *in, int64_t in_ch, int i, int n, unsigned *active, sdxl_err *e);

/* The per-unit values for metadata: the resolved model name and preprocess module. */
int sdxl_pl_ctrl_count(const sdxl_pl_ctrl *c);
/* For trace hooks: in's residuals as host memory (copies on a device context, made on first
 * use; the same pointers on the CPU). */
int sdxl_pl_ctrl_host_view(sdxl_pl_ctrl *c, sdxl_unet_in *in, sdxl_err *e);
void sdxl_pl_ctrl_trim(sdxl_pl_ctrl *c);

#endif
