/* What a checkpoint's model predicts: single files mark v-prediction and zero-terminal-SNR
 * training with empty tensors named `v_pred` and `ztsnr` (the convention A1111 and ComfyUI
 * read); a diffusers folder says it in scheduler/scheduler_config.json (`prediction_type`
 * "v_prediction", `rescale_betas_zero_snr`). */
#ifndef SDXL_IO_PREDICTION_H
#define SDXL_IO_PREDICTION_H

#include "base/err.h"
#include "io/checkpoint.h"

typedef struct sdxl_prediction {
    int v_pred;            /* the model predicts v, not epsilon */
    int ztsnr;             /* trained with a zero-terminal-SNR schedule */
    const char *source;    /* "markers", "scheduler_config.json" or "default" */
} sdxl_prediction;

/* Never fails on a missing or unreadable scheduler config (the default, epsilon, is kept); a config
 * whose prediction_type is neither epsilon nor v_prediction is SDXL_ERR_UNSUPPORTED naming it. */
int sdxl_ckpt_prediction(const sdxl_ckpt *c, sdxl_prediction *out, sdxl_err *e);

#endif
