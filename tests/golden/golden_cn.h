/* Test helper: rewrites a diffusers ControlNet folder as an sgm single file (plus the .yaml
 * beside it that gives the head dim), with a name map of its own, independent of the loader's. */
#ifndef SDXL_GOLDEN_CN_H
#define SDXL_GOLDEN_CN_H

#include "base/err.h"

/* prefix: "control_model." (A1111-style files) or "". Writes out_path and out_path's .yaml. */
int golden_cn_write_sgm(const char *diffusers_dir, const char *out_path, const char *prefix, sdxl_err *e);
/* Removes the file and its .yaml. */
void golden_cn_remove_sgm(const char *out_path);

#endif
