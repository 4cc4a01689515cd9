/* Test helper: rewrites a diffusers ControlNet folder as an sgm single file (plus the .yaml
 * beside it that gives the head dim), with a name map of its own, independent of the loader's. */
#ifndef SDXL_GOLDEN_CN_H
#define SDXL_GOLDEN_CN_H

#include "base/err.h"

/* prefix: "control_model." (A1111-style files) or "". Writes out_path and out_path's .yaml. */
int golden_cn_write_sgm(const char *diffusers_dir, const char *out_path, const char *prefix, sdxl_err *e);
/* A Control-LoRA (sgm names, lora_controlnet marker) that rebuilds the same ControlNet on the base
 * UNet's trunk: every trunk matrix/conv as W_base + up @ down with up = W_cn - W_base and down the
 * identity (full rank, exact in f32), add-embedding weights, 1-D tensors, hint block and zero
 * convs as full tensors. base_unet_dir: the base's diffusers unet/ folder. */
int golden_cn_write_control_lora(const char *diffusers_dir, const char *base_unet_dir, const char *out_path,
                                 sdxl_err *e);
/* Removes the file and its .yaml. */
void golden_cn_remove_sgm(const char *out_path);

#endif
