/* Rebuilding converted layers from their mapped originals; see layerref.h. */
#include "io/layerref.h"

#include <string.h>

#include "tensor/tensor.h"

static sdxl_dtype dt_of(const sdxl_st_tensor *t) {
    return t->dtype == SDXL_ST_F16 ? SDXL_F16 : t->dtype == SDXL_ST_BF16 ? SDXL_BF16 : SDXL_F32;
}

int64_t sdxl_lref_part_numel(const sdxl_lref *r) {
    return r->kind == SDXL_LREF_NORM ? r->out_each : r->out_each * r->in * r->kh * r->kw;
}

int64_t sdxl_lref_numel(const sdxl_lref *r) { return sdxl_lref_part_numel(r) * r->nparts; }

int64_t sdxl_lref_bias_numel(const sdxl_lref *r) {
    return r->part[0].b ? r->out_each * r->nparts : 0;
}

void sdxl_lref_original(const sdxl_lref *r, float *w, float *b) {
    int64_t pn = sdxl_lref_part_numel(r), row = pn / r->out_each;
    for (int i = 0; i < r->nparts; i++) {
        const sdxl_lref_part *p = &r->part[i];
        size_t es = sdxl_dtype_size(dt_of(p->w));
        const char *src = (const char *)p->w->data + (size_t)(p->w_row0 * row) * es;
        const int64_t chunk = 1 << 16, nch = (pn + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (nch > 1)
        for (int64_t c = 0; c < nch; c++) {
            int64_t o = c * chunk, len = pn - o < chunk ? pn - o : chunk;
            sdxl_to_f32(src + (size_t)o * es, dt_of(p->w), w + i * pn + o, (size_t)len);
        }
        if (b && p->b) {
            size_t bs = sdxl_dtype_size(dt_of(p->b));
            sdxl_to_f32((const char *)p->b->data + (size_t)p->b_row0 * bs, dt_of(p->b), b + i * r->out_each,
                        (size_t)r->out_each);
        }
    }
}

int sdxl_lref_set(sdxl_compute *c, const sdxl_lref *r, const float *w, const float *b, sdxl_err *e) {
    switch (r->kind) {
    case SDXL_LREF_LINEAR: return sdxl_linear_set_weights(c, r->lin, w, b, e);
    case SDXL_LREF_CONV: return sdxl_conv2d_set_weights(c, r->conv, w, b, e);
    case SDXL_LREF_NORM:
        memcpy(r->norm_g, w, (size_t)r->out_each * sizeof(float));
        if (b && r->norm_b) memcpy(r->norm_b, b, (size_t)r->out_each * sizeof(float));
        return SDXL_OK;
    }
    return sdxl_seterr(e, SDXL_ERR_ARG, "layer: unknown kind %d", (int)r->kind);
}

void sdxl_lref_release(const sdxl_lref *r, const sdxl_st_file *f) {
    if (!f) return;
    for (int i = 0; i < r->nparts; i++) {
        if (i == 0 || r->part[i].w != r->part[0].w) sdxl_st_release_tensor(f, r->part[i].w);
        if (r->part[i].b && (i == 0 || r->part[i].b != r->part[0].b)) sdxl_st_release_tensor(f, r->part[i].b);
    }
}
