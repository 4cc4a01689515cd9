/* io/prediction: v_pred / ztsnr marker tensors of a single file and a diffusers folder's
 * scheduler config decide the model's prediction type and schedule. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "io/prediction.h"
#include "io/safetensors.h"

/* The tiny single file plus the given empty marker tensors, written to path. */
static int with_markers(const char *path, const char *const *markers, int n) {
    sdxl_err e = {0};
    sdxl_st_file *f = NULL;
    sdxl_st_writer *w = NULL;
    if (sdxl_st_open(SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors", &f, &e) ||
        sdxl_st_writer_new(&w, &e))
        return -1;
    int st = 0;
    for (size_t i = 0; i < sdxl_st_count(f) && !st; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f, i);
        st = sdxl_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &e);
    }
    int64_t zero = 0;
    for (int k = 0; k < n && !st; k++) st = sdxl_st_writer_add(w, markers[k], SDXL_ST_F32, 1, &zero, NULL, &e);
    if (!st) st = sdxl_st_writer_finish(w, path, &e);
    if (st) fprintf(stderr, "  writing %s: %s\n", path, e.msg);
    sdxl_st_writer_free(w);
    sdxl_st_close(f);
    return st;
}

static void check_file(const char *path, int v, int z, const char *src) {
    sdxl_ckpt *c = NULL;
    sdxl_err e = {0};
    sdxl_prediction p;
    int st = sdxl_ckpt_open(path, &c, &e);
    if (!st) st = sdxl_ckpt_prediction(c, &p, &e);
    CHECK(!st && p.v_pred == v && p.ztsnr == z && !strcmp(p.source, src), "%s: v %d ztsnr %d source %s (%s)", path,
          st ? -1 : p.v_pred, st ? -1 : p.ztsnr, st ? "-" : p.source, e.msg);
    sdxl_ckpt_close(c);
}

int main(void) {
    const char *vz[2] = {"v_pred", "ztsnr"};
    char a[] = "pred_vz.safetensors", b[] = "pred_v.safetensors";
    if (with_markers(a, vz, 2) == 0) check_file(a, 1, 1, "markers");
    if (with_markers(b, vz, 1) == 0) check_file(b, 1, 0, "markers");
    check_file(SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors", 0, 0, "default");
    check_file(SDXL_TEST_DATA "/golden/models/tiny-sdxl-base", 0, 0, "scheduler_config.json");
    unlink(a);
    unlink(b);
    return check_done();
}
