#include "fleet/runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/image.h"
#include "io/json.h"

int64_t sdxl_fleet_job_seed(const char *id) {
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *c = (const unsigned char *)id; *c; c++) h = (h ^ *c) * 1099511628211ULL;
    return (int64_t)(h & 0x7fffffff);
}

static int on_progress(void *user, const sdxl_progress *p) {
    sdxl_fleet_lib_runner *lr = user;
    sdxl_fleet_progress fp = {
        .phase = sdxl_phase_name(p->phase),
        .step = p->step,
        .total = p->total,
        .image = p->image,
        .n_images = p->n_images,
        .eta_s = p->eta,
    };
    sdxl_fleet_report(lr->sink, &fp);
    return 0;
}

static int fail(sdxl_fleet_job_out *out, const char *code, const char *msg) {
    snprintf(out->error_code, sizeof out->error_code, "%s", code);
    snprintf(out->error, sizeof out->error, "%s", msg);
    return -1;
}

static int lib_run(void *user, const char *id, const char *request, const char *dir, const char *rel_dir,
                   sdxl_fleet_sink *sink, sdxl_fleet_job_out *out) {
    sdxl_fleet_lib_runner *lr = user;
    lr->sink = sink;
    size_t len = strlen(request);
    sdxl_json_opts jo;
    sdxl_json_opts_init(&jo);
    sdxl_json *root = NULL;
    sdxl_err e;
    sdxl_err_clear(&e);
    if (sdxl_json_parse(request, len, &jo, "request", &root, &e)) return fail(out, "invalid_request", e.msg);
    const char *fmt_name = root->type == SDXL_JSON_OBJECT ? sdxl_json_str(root, "format", "png") : "png";
    const char *ext = !strcmp(fmt_name, "png") ? "png"
                      : (!strcmp(fmt_name, "jpg") || !strcmp(fmt_name, "jpeg")) ? "jpg"
                      : !strcmp(fmt_name, "webp") ? "webp"
                                                  : NULL;
    sdxl_json_free(root);
    if (!ext) return fail(out, "invalid_request", "format: must be \"png\", \"jpg\" or \"webp\"");

    sdxl_gen_params gp;
    void *storage = NULL;
    if (sdxl_gen_params_from_json(lr->ctx, request, len, &gp, &storage) != SDXL_OK) {
        sdxl_free(storage);
        return fail(out, "invalid_request", sdxl_errmsg(lr->ctx));
    }
    if (gp.seed < 0) gp.seed = sdxl_fleet_job_seed(id);
    gp.progress = on_progress;
    gp.progress_user = lr;
    sdxl_result *res = NULL;
    sdxl_status st = sdxl_generate(lr->session, &gp, &res);
    sdxl_free(storage);
    if (st != SDXL_OK)
        return fail(out, st == SDXL_ERR_ARG ? "invalid_request" : st == SDXL_ERR_CANCELLED ? "cancelled" : "runtime",
                    sdxl_session_errmsg(lr->session));
    int n = sdxl_result_count(res);
    sdxl_fleet_progress wp = {.phase = "write", .step = 0, .total = n, .n_images = n, .eta_s = -1};
    sdxl_fleet_report(sink, &wp);
    sdxl_sb_str(&out->outputs, "[");
    sdxl_sb_str(&out->seeds, "[");
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const sdxl_image_out *im = sdxl_result_image(res, i);
        sdxl_image img = {.width = im->width, .height = im->height, .channels = 3, .data = (uint8_t *)im->data};
        char path[4096], rel[512];
        snprintf(path, sizeof path, "%s/%d.%s", dir, i, ext);
        snprintf(rel, sizeof rel, "%s/%d.%s", rel_dir, i, ext);
        if (sdxl_image_write(path, SDXL_IMAGE_UNKNOWN, &img, NULL, sdxl_result_infotext(res, i),
                             sdxl_result_request_json(res, i), &e)) {
            rc = fail(out, "output", e.msg);
            break;
        }
        if (i) {
            sdxl_sb_str(&out->outputs, ",");
            sdxl_sb_str(&out->seeds, ",");
        }
        sdxl_sb_json(&out->outputs, rel);
        sdxl_sb_printf(&out->seeds, "%lld", (long long)im->seed);
    }
    sdxl_sb_str(&out->outputs, "]");
    sdxl_sb_str(&out->seeds, "]");
    const sdxl_gen_stats *gs = sdxl_result_stats(res);
    sdxl_sb_printf(&out->stats,
                   "{\"images\":%d,\"text_s\":%.3f,\"base_s\":%.3f,\"refiner_s\":%.3f,\"decode_s\":%.3f,"
                   "\"total_s\":%.3f,\"peak_rss\":%llu,\"unet_calls\":%d}",
                   n, gs->text_s, gs->base_s, gs->refiner_s, gs->decode_s, gs->total_s,
                   (unsigned long long)gs->peak_rss, gs->unet_calls);
    sdxl_result_free(res);
    return rc;
}

static void lib_cancel(void *user) {
    sdxl_fleet_lib_runner *lr = user;
    sdxl_session_cancel(lr->session);
}

int sdxl_fleet_lib_runner_init(sdxl_fleet_lib_runner *lr, sdxl_ctx *ctx, sdxl_model *model, const char *model_name,
                               sdxl_fleet_runner *rn, sdxl_err *e) {
    memset(lr, 0, sizeof *lr);
    lr->ctx = ctx;
    lr->model = model;
    snprintf(lr->model_name, sizeof lr->model_name, "%s", model_name ? model_name : "");
    if (sdxl_session_new(ctx, model, &lr->session) != SDXL_OK)
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s", sdxl_errmsg(ctx));
    memset(rn, 0, sizeof *rn);
    rn->user = lr;
    rn->run = lib_run;
    rn->cancel = lib_cancel;
    rn->model = lr->model_name;
    return 0;
}

void sdxl_fleet_lib_runner_free(sdxl_fleet_lib_runner *lr) {
    if (lr && lr->session) sdxl_session_free(lr->session);
    if (lr) lr->session = NULL;
}
