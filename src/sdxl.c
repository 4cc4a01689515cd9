/* Public API: thin wrappers that keep per-handle error text and delegate to src/ folders. */
#include "sdxl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "base/err.h"
#include "base/log.h"
#include "base/threads.h"
#include "io/safetensors.h"
#include "pipeline/pipeline.h"

struct sdxl_ctx {
    sdxl_logger log;
    int n_threads;
    sdxl_err err;
};

struct sdxl_file {
    sdxl_st_file *st;
};

const char *sdxl_version(void) { return "0.1.0"; }

void sdxl_ctx_params_init(sdxl_ctx_params *p) {
    memset(p, 0, sizeof *p);
    p->n_threads = 0;
    p->log_level = SDXL_LOG_WARN;
}

sdxl_status sdxl_ctx_new(const sdxl_ctx_params *p, sdxl_ctx **out) {
    sdxl_ctx_params d;
    if (!out) return SDXL_ERR_ARG;
    *out = NULL;
    if (!p) {
        sdxl_ctx_params_init(&d);
        p = &d;
    }
    if (p->n_threads < 0 || p->n_threads > 4096) return SDXL_ERR_ARG;
    sdxl_ctx *c = calloc(1, sizeof *c);
    if (!c) return SDXL_ERR_NOMEM;
    c->log.fn = p->log_fn;
    c->log.user = p->log_user;
    c->log.level = p->log_level;
    c->n_threads = sdxl_threads_set(p->n_threads);
    *out = c;
    return SDXL_OK;
}

void sdxl_ctx_free(sdxl_ctx *ctx) { free(ctx); }

const char *sdxl_errmsg(const sdxl_ctx *ctx) { return ctx ? ctx->err.msg : "no context"; }

const char *sdxl_cpu_features(void) {
    /* Thread-local: no shared mutable state, and the pointer stays valid for the thread. */
    static _Thread_local char buf[256];
    sdxl_cpu c;
    sdxl_cpu_detect(&c);
    sdxl_cpu_describe(&c, buf, sizeof buf);
    return buf;
}

static sdxl_status ret(sdxl_ctx *ctx, int st) {
    if (st == SDXL_OK) sdxl_err_clear(&ctx->err);
    return (sdxl_status)st;
}

sdxl_status sdxl_file_open(sdxl_ctx *ctx, const char *path, sdxl_file **out) {
    if (!ctx) return SDXL_ERR_ARG;
    if (!path || !out) return ret(ctx, sdxl_seterr(&ctx->err, SDXL_ERR_ARG, "sdxl_file_open: path and out are required"));
    *out = NULL;
    sdxl_file *f = calloc(1, sizeof *f);
    if (!f) return ret(ctx, sdxl_seterr(&ctx->err, SDXL_ERR_NOMEM, "out of memory"));
    int st = sdxl_st_open(path, &f->st, &ctx->err);
    if (st != SDXL_OK) {
        free(f);
        return (sdxl_status)st;
    }
    *out = f;
    return ret(ctx, SDXL_OK);
}

void sdxl_file_free(sdxl_file *f) {
    if (!f) return;
    sdxl_st_close(f->st);
    free(f);
}

size_t sdxl_file_n_tensors(const sdxl_file *f) { return f ? sdxl_st_count(f->st) : 0; }

sdxl_status sdxl_file_tensor(const sdxl_file *f, size_t i, sdxl_tensor_info *out) {
    if (!f || !out || i >= sdxl_st_count(f->st)) return SDXL_ERR_ARG;
    const sdxl_st_tensor *t = sdxl_st_at(f->st, i);
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->dtype = sdxl_st_dtype_name(t->dtype);
    out->ndim = t->ndim;
    for (int k = 0; k < t->ndim && k < 8; k++) out->shape[k] = t->shape[k];
    out->nbytes = t->nbytes;
    return SDXL_OK;
}

size_t sdxl_file_n_metadata(const sdxl_file *f) { return f ? sdxl_st_meta_count(f->st) : 0; }

sdxl_status sdxl_file_metadata(const sdxl_file *f, size_t i, const char **key, const char **value) {
    if (!f || !key || !value || i >= sdxl_st_meta_count(f->st)) return SDXL_ERR_ARG;
    sdxl_st_meta_at(f->st, i, key, value);
    return SDXL_OK;
}

/* ---- generation ------------------------------------------------------------------------------ */

struct sdxl_model {
    sdxl_pl_model *pl;
};

struct sdxl_session {
    sdxl_ctx *ctx;
    sdxl_model *model;
    volatile int cancel;
    sdxl_err err;
};

struct sdxl_result {
    sdxl_pl_result pl;
    sdxl_image_out *imgs;
};

void sdxl_free(void *p) { free(p); }

sdxl_status sdxl_model_load(sdxl_ctx *ctx, const sdxl_model_params *p, sdxl_model **out) {
    if (!ctx) return SDXL_ERR_ARG;
    if (!p || !out) return ret(ctx, sdxl_seterr(&ctx->err, SDXL_ERR_ARG, "sdxl_model_load: params and out are required"));
    *out = NULL;
    sdxl_model *m = calloc(1, sizeof *m);
    if (!m) return ret(ctx, sdxl_seterr(&ctx->err, SDXL_ERR_NOMEM, "out of memory"));
    int st = sdxl_pl_model_load(p, &ctx->log, &m->pl, &ctx->err);
    if (st) {
        free(m);
        return (sdxl_status)st;
    }
    *out = m;
    return ret(ctx, SDXL_OK);
}

void sdxl_model_free(sdxl_model *m) {
    if (!m) return;
    sdxl_pl_model_free(m->pl);
    free(m);
}

const char *sdxl_model_precision(const sdxl_model *m) {
    return m && m->pl->prec == SDXL_PREC_BF16 ? "bf16" : "f32";
}

int sdxl_model_has_refiner(const sdxl_model *m) { return m ? m->pl->has_ref : 0; }

sdxl_status sdxl_session_new(sdxl_ctx *ctx, sdxl_model *m, sdxl_session **out) {
    if (!ctx) return SDXL_ERR_ARG;
    if (!m || !out) return ret(ctx, sdxl_seterr(&ctx->err, SDXL_ERR_ARG, "sdxl_session_new: model and out are required"));
    sdxl_session *s = calloc(1, sizeof *s);
    if (!s) return ret(ctx, sdxl_seterr(&ctx->err, SDXL_ERR_NOMEM, "out of memory"));
    s->ctx = ctx;
    s->model = m;
    *out = s;
    return ret(ctx, SDXL_OK);
}

void sdxl_session_free(sdxl_session *s) { free(s); }

const char *sdxl_session_errmsg(const sdxl_session *s) { return s ? s->err.msg : "no session"; }

void sdxl_session_cancel(sdxl_session *s) {
    if (s) __atomic_store_n((int *)&s->cancel, 1, __ATOMIC_SEQ_CST);
}

sdxl_status sdxl_gen_params_check(sdxl_ctx *ctx, const sdxl_model *m, const sdxl_gen_params *p) {
    if (!ctx) return SDXL_ERR_ARG;
    return ret(ctx, sdxl_pl_check(m ? m->pl : NULL, p, &ctx->err));
}

sdxl_status sdxl_gen_params_from_json(sdxl_ctx *ctx, const char *json, size_t len, sdxl_gen_params *p, void **storage) {
    if (!ctx) return SDXL_ERR_ARG;
    if (!json || !p || !storage)
        return ret(ctx, sdxl_seterr(&ctx->err, SDXL_ERR_ARG, "sdxl_gen_params_from_json: json, p and storage are required"));
    sdxl_gen_params_init(p);
    return ret(ctx, sdxl_pl_params_from_json(json, len ? len : strlen(json), p, storage, &ctx->err));
}

sdxl_status sdxl_generate(sdxl_session *s, const sdxl_gen_params *p, sdxl_result **out) {
    if (!s) return SDXL_ERR_ARG;
    sdxl_err_clear(&s->err);
    if (!p || !out) return (sdxl_status)sdxl_seterr(&s->err, SDXL_ERR_ARG, "sdxl_generate: params and out are required");
    *out = NULL;
    __atomic_store_n((int *)&s->cancel, 0, __ATOMIC_SEQ_CST);
    sdxl_result *r = calloc(1, sizeof *r);
    if (!r) return (sdxl_status)sdxl_seterr(&s->err, SDXL_ERR_NOMEM, "out of memory");
    int st = sdxl_pl_generate(s->model->pl, p, &s->cancel, NULL, &s->ctx->log, &r->pl, &s->err);
    if (!st) {
        r->imgs = calloc((size_t)r->pl.n, sizeof *r->imgs);
        if (!r->imgs) st = sdxl_seterr(&s->err, SDXL_ERR_NOMEM, "out of memory");
    }
    if (st) {
        sdxl_result_free(r);
        return (sdxl_status)st;
    }
    for (int i = 0; i < r->pl.n; i++) {
        r->imgs[i].width = r->pl.img[i].width;
        r->imgs[i].height = r->pl.img[i].height;
        r->imgs[i].channels = 3;
        r->imgs[i].data = r->pl.img[i].rgb;
        r->imgs[i].seed = r->pl.img[i].seed;
    }
    *out = r;
    return SDXL_OK;
}

int sdxl_result_count(const sdxl_result *r) { return r ? r->pl.n : 0; }

const sdxl_image_out *sdxl_result_image(const sdxl_result *r, int i) {
    return r && i >= 0 && i < r->pl.n ? &r->imgs[i] : NULL;
}

const char *sdxl_result_infotext(const sdxl_result *r, int i) {
    return r && i >= 0 && i < r->pl.n ? r->pl.img[i].infotext : NULL;
}

const char *sdxl_result_request_json(const sdxl_result *r, int i) {
    return r && i >= 0 && i < r->pl.n ? r->pl.img[i].request : NULL;
}

const sdxl_gen_stats *sdxl_result_stats(const sdxl_result *r) { return r ? &r->pl.st : NULL; }

const char *sdxl_result_plan(const sdxl_result *r) { return r ? r->pl.plan : ""; }

void sdxl_result_free(sdxl_result *r) {
    if (!r) return;
    sdxl_pl_result_free(&r->pl);
    free(r->imgs);
    free(r);
}
