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
