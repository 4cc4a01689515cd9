#include "io/prediction.h"

#include <stdio.h>
#include <string.h>

#include "io/json.h"

static int marker(const sdxl_ckpt *c, const char *name) {
    for (size_t i = 0; i < sdxl_ckpt_other_count(c); i++)
        if (!strcmp(sdxl_ckpt_other_at(c, i)->name, name)) return 1;
    return 0;
}

int sdxl_ckpt_prediction(const sdxl_ckpt *c, sdxl_prediction *out, sdxl_err *e) {
    out->v_pred = out->ztsnr = 0;
    out->source = "default";
    if (sdxl_ckpt_layout(c) == SDXL_LAYOUT_SINGLE_FILE) {
        out->v_pred = marker(c, "v_pred");
        out->ztsnr = marker(c, "ztsnr");
        if (out->v_pred || out->ztsnr) out->source = "markers";
        return SDXL_OK;
    }
    if (sdxl_ckpt_layout(c) != SDXL_LAYOUT_DIFFUSERS) return SDXL_OK;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", sdxl_ckpt_path(c)) >= (int)sizeof path)
        return SDXL_OK;
    FILE *f = fopen(path, "rb");
    if (!f) return SDXL_OK;
    fclose(f);
    sdxl_json *j = NULL;
    sdxl_err ignore = {0};
    if (sdxl_json_parse_file(path, 1 << 20, NULL, &j, &ignore) != SDXL_OK) return SDXL_OK;
    const char *pt = sdxl_json_str(j, "prediction_type", "epsilon");
    int st = SDXL_OK;
    if (!strcmp(pt, "v_prediction"))
        out->v_pred = 1;
    else if (strcmp(pt, "epsilon"))
        st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: prediction_type \"%s\" is not supported (epsilon, v_prediction)",
                         path, pt);
    out->ztsnr = sdxl_json_bool(j, "rescale_betas_zero_snr", 0);
    out->source = "scheduler_config.json";
    sdxl_json_free(j);
    return st;
}
