/* The compute context and the GEMM ops (linear, conv2d) on oneDNN's C API.
 *
 * Weights are converted once, at init, to the precision's dtype and reordered into the layout
 * oneDNN prefers for a typical shape. Primitives are created per (op, shape, dtypes, flags,
 * thread count, weight layout) and kept in the context; two layers of the same shape share one.
 * A shape whose preferred layout differs from the stored one first tries the stored layout;
 * if oneDNN can only run that through a reference kernel, the layer's weights are reordered
 * once more into a private copy kept in the context. */
#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <oneapi/dnnl/dnnl.h>

#include "base/mem.h"
#include "tensor/ops.h"
#include "tensor/ops_internal.h"

enum { OP_LINEAR = 1, OP_CONV = 2 };
/* Private key flags beside SDXL_OP_ACCUM: the two halves of the fused GEGLU feed-forward. */
enum { KF_GELU = 1 << 8, KF_MUL_BF16 = 1 << 9 };

/* Per-layer private data: the weights' memory descriptor and its id in the context. */
typedef struct gemm_layer {
    dnnl_memory_desc_t wmd;
    int layout_id;
    int op;
    uint64_t serial; /* unique per layer in its context: keys private weight copies */
    int borrowed;    /* the weights belong to a packed-weights store: not freed with the layer */
} gemm_layer;

typedef struct prim_key {
    int op, prec, flags, has_bias, nthr, layout_id;
    int64_t d[10];
} prim_key;

typedef struct prim_entry {
    prim_key key;
    dnnl_primitive_t prim;
    int own_weights;          /* 1: this primitive needs weights in use_wmd, not the stored layout */
    dnnl_memory_desc_t use_wmd;
    dnnl_memory_t m_src, m_wei, m_bias, m_dst, m_scratch, m_mul;
    size_t scratch_bytes;
} prim_entry;

/* A layer's weights reordered for one primitive that could not use the stored layout. */
typedef struct wcopy {
    uint64_t layer;
    const prim_entry *entry;
    void *data;
} wcopy;

struct sdxl_compute {
    sdxl_prec prec;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    prim_entry *prims;
    int64_t n_prims, cap_prims;
    dnnl_memory_desc_t *layouts;
    int n_layouts, cap_layouts;
    wcopy *wcopies;
    int n_wcopies, cap_wcopies;
    sdxl_buf xbuf;       /* bf16 copy of a GEMM input */
    sdxl_buf dnnl_scratch;
    sdxl_buf attn;       /* attention per-thread tiles */
    uint64_t next_serial;
    sdxl_dev *dev;       /* Vulkan device, or NULL for the CPU */
    struct lmemo { prim_key k; int id; } *lmemo; /* typical key -> layout: one descriptor per shape */
    int n_lmemo, cap_lmemo;
    sdxl_wstore ws;
    int has_ws;
};

void sdxl_compute_set_wstore(sdxl_compute *c, const sdxl_wstore *s) {
    c->has_ws = s != NULL;
    if (s) c->ws = *s;
}

sdxl_dev *sdxl_compute_dev(const sdxl_compute *c) { return c ? c->dev : NULL; }
void sdxl_compute_set_dev(sdxl_compute *c, sdxl_dev *d) { c->dev = d; }

static int dnnl_fail(sdxl_err *e, dnnl_status_t s, const char *what) {
    int st = s == dnnl_out_of_memory ? SDXL_ERR_NOMEM
             : s == dnnl_unimplemented ? SDXL_ERR_UNSUPPORTED
                                       : SDXL_ERR_INTERNAL;
    return sdxl_seterr(e, st, "oneDNN: %s failed (status %d)", what, (int)s);
}

#define DNNL_TRY(call, what)                                                                                    \
    do {                                                                                                        \
        dnnl_status_t s_ = (call);                                                                              \
        if (s_ != dnnl_success) return dnnl_fail(e, s_, what);                                                  \
    } while (0)

void *sdxl_alloc_big(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    size_t sz = (bytes + 63) & ~(size_t)63;
    if (sz < bytes) return NULL;
    if (bytes < huge) return aligned_alloc(64, sz);
    void *p = NULL;
    if (posix_memalign(&p, huge, sz)) return NULL;
    /* Huge pages over the whole 2 MiB units only: a rounded-up tail would be resident waste
     * (0.7 GB over the UNet's weights). Advice only: where THP is off nothing changes. */
    if (p) madvise(p, bytes & ~(huge - 1), MADV_HUGEPAGE);
    return p;
}

int sdxl_buf_reserve(sdxl_buf *b, size_t bytes) {
    if (bytes <= b->cap) return SDXL_OK;
    size_t cap = bytes + bytes / 4;
    if (cap < bytes) cap = bytes;
    cap = (cap + 63) & ~(size_t)63;
    if (cap < bytes) return SDXL_ERR_NOMEM;
    void *p = sdxl_alloc_big(cap);
    if (!p) return SDXL_ERR_NOMEM;
    free(b->p);
    b->p = p;
    b->cap = cap;
    return SDXL_OK;
}

void sdxl_buf_free(sdxl_buf *b) {
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

sdxl_buf *sdxl_compute_attn_buf(sdxl_compute *c) { return &c->attn; }

int sdxl_compute_new(sdxl_prec prec, sdxl_compute **out, sdxl_err *e) {
    *out = NULL;
    if (prec != SDXL_PREC_F32 && prec != SDXL_PREC_BF16)
        return sdxl_seterr(e, SDXL_ERR_ARG, "compute: unknown precision %d", (int)prec);
    sdxl_compute *c = calloc(1, sizeof *c);
    if (!c) return sdxl_seterr(e, SDXL_ERR_NOMEM, "compute: out of memory");
    c->prec = prec;
    dnnl_status_t s = dnnl_engine_create(&c->engine, dnnl_cpu, 0);
    if (s == dnnl_success) s = dnnl_stream_create(&c->stream, c->engine, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        sdxl_compute_free(c);
        return dnnl_fail(e, s, "engine/stream creation");
    }
    *out = c;
    return SDXL_OK;
}

void sdxl_compute_free(sdxl_compute *c) {
    if (!c) return;
    sdxl_dev_free(c->dev);
    for (int64_t i = 0; i < c->n_prims; i++) {
        prim_entry *p = &c->prims[i];
        dnnl_primitive_destroy(p->prim);
        dnnl_memory_destroy(p->m_src);
        dnnl_memory_destroy(p->m_wei);
        dnnl_memory_destroy(p->m_bias);
        dnnl_memory_destroy(p->m_dst);
        dnnl_memory_destroy(p->m_scratch);
        dnnl_memory_destroy(p->m_mul);
    }
    for (int i = 0; i < c->n_wcopies; i++) free(c->wcopies[i].data);
    free(c->wcopies);
    free(c->prims);
    free(c->layouts);
    free(c->lmemo);
    sdxl_buf_free(&c->xbuf);
    sdxl_buf_free(&c->dnnl_scratch);
    sdxl_buf_free(&c->attn);
    if (c->stream) dnnl_stream_destroy(c->stream);
    if (c->engine) dnnl_engine_destroy(c->engine);
    free(c);
}

sdxl_prec sdxl_compute_prec(const sdxl_compute *c) { return c->prec; }
int64_t sdxl_compute_n_primitives(const sdxl_compute *c) { return c->n_prims; }

void sdxl_compute_trim(sdxl_compute *c) {
    if (!c) return;
    sdxl_dev_trim(c->dev);
    sdxl_buf_free(&c->xbuf);
    sdxl_buf_free(&c->dnnl_scratch);
    sdxl_buf_free(&c->attn);
}

/* Id of a weights layout; equal descriptors share an id so their layers share primitives. */
static int layout_id(sdxl_compute *c, const dnnl_memory_desc_t *md) {
    for (int i = 0; i < c->n_layouts; i++)
        if (dnnl_memory_desc_equal(&c->layouts[i], md)) return i;
    if (c->n_layouts == c->cap_layouts) {
        int cap = c->cap_layouts ? c->cap_layouts * 2 : 16;
        dnnl_memory_desc_t *n = realloc(c->layouts, (size_t)cap * sizeof *n);
        if (!n) return -1;
        c->layouts = n;
        c->cap_layouts = cap;
    }
    c->layouts[c->n_layouts] = *md;
    return c->n_layouts++;
}

static dnnl_data_type_t gemm_dt(sdxl_prec p) { return p == SDXL_PREC_BF16 ? dnnl_bf16 : dnnl_f32; }

/* Operation descriptor for a key; wmd is the weights descriptor to request (may be format any). */
typedef union op_desc {
    dnnl_matmul_desc_t mm;
    dnnl_convolution_desc_t conv;
} op_desc;

static dnnl_status_t make_desc(const prim_key *k, const dnnl_memory_desc_t *wmd, op_desc *od) {
    dnnl_data_type_t dt = gemm_dt((sdxl_prec)k->prec);
    dnnl_memory_desc_t src, dst, bias;
    dnnl_status_t s;
    if (k->op == OP_LINEAR) {
        int64_t M = k->d[0], K = k->d[1], N = k->d[2];
        dnnl_dims_t ds = {M, K}, dd = {M, N}, db = {1, N};
        if ((s = dnnl_memory_desc_init_by_tag(&src, 2, ds, dt, dnnl_ab)) != dnnl_success) return s;
        dnnl_data_type_t ddt = k->flags & KF_MUL_BF16 ? dnnl_bf16 : dnnl_f32;
        if ((s = dnnl_memory_desc_init_by_tag(&dst, 2, dd, ddt, dnnl_ab)) != dnnl_success) return s;
        if ((s = dnnl_memory_desc_init_by_tag(&bias, 2, db, dnnl_f32, dnnl_ab)) != dnnl_success) return s;
        return dnnl_matmul_desc_init(&od->mm, &src, wmd, k->has_bias ? &bias : NULL, &dst);
    }
    /* d: n, h, w, cin, cout, kh, kw, stride, pads packed (t | l<<16), (b | r<<16) */
    int64_t n = k->d[0], h = k->d[1], w = k->d[2], ci = k->d[3], co = k->d[4], kh = k->d[5], kw = k->d[6];
    int64_t st = k->d[7], pt = k->d[8] & 0xffff, pl = k->d[8] >> 16, pb = k->d[9] & 0xffff, pr = k->d[9] >> 16;
    int64_t oh = (h + pt + pb - kh) / st + 1, ow = (w + pl + pr - kw) / st + 1;
    dnnl_dims_t ds = {n, ci, h, w}, dd = {n, co, oh, ow}, db = {co};
    dnnl_dims_t strides = {st, st}, padl = {pt, pl}, padr = {pb, pr};
    if ((s = dnnl_memory_desc_init_by_tag(&src, 4, ds, dt, dnnl_nhwc)) != dnnl_success) return s;
    if ((s = dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_nhwc)) != dnnl_success) return s;
    if ((s = dnnl_memory_desc_init_by_tag(&bias, 1, db, dnnl_f32, dnnl_a)) != dnnl_success) return s;
    return dnnl_convolution_forward_desc_init(&od->conv, dnnl_forward_inference, dnnl_convolution_direct, &src, wmd,
                                              k->has_bias ? &bias : NULL, &dst, strides, padl, padr);
}

static dnnl_status_t make_pd(sdxl_compute *c, const prim_key *k, const dnnl_memory_desc_t *wmd,
                             dnnl_primitive_desc_t *pd) {
    op_desc od;
    dnnl_status_t s = make_desc(k, wmd, &od);
    if (s != dnnl_success) return s;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if ((s = dnnl_primitive_attr_create(&attr)) != dnnl_success) return s;
    s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success && (k->flags & (SDXL_OP_ACCUM | KF_GELU | KF_MUL_BF16))) {
        s = dnnl_post_ops_create(&po);
        if (s == dnnl_success && (k->flags & SDXL_OP_ACCUM)) s = dnnl_post_ops_append_sum(po, 1.0f);
        if (s == dnnl_success && (k->flags & KF_GELU)) s = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_gelu_erf, 0, 0);
        if (s == dnnl_success && (k->flags & KF_MUL_BF16)) {
            /* the multiplier: an f32 [M, N] tensor (the gate half's GELU) */
            dnnl_memory_desc_t md;
            dnnl_dims_t dd = {k->d[0], k->d[2]};
            s = dnnl_memory_desc_init_by_tag(&md, 2, dd, dnnl_f32, dnnl_ab);
            if (s == dnnl_success) s = dnnl_post_ops_append_binary(po, dnnl_binary_mul, &md);
        }
        if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, po);
    }
    if (s == dnnl_success) s = dnnl_primitive_desc_create(pd, &od, attr, c->engine, NULL);
    if (po) dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    return s;
}

static int pd_is_reference(const_dnnl_primitive_desc_t pd) {
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl) return 1;
    return strncmp(impl, "ref", 3) == 0;
}

/* Reorders `src` (of descriptor smd) into dst (of descriptor dmd). */
static int reorder_into(sdxl_compute *c, const dnnl_memory_desc_t *smd, const void *src, const dnnl_memory_desc_t *dmd,
                        void *dst, sdxl_err *e) {
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_memory_t ms = NULL, md = NULL;
    dnnl_status_t s = dnnl_reorder_primitive_desc_create(&pd, smd, c->engine, dmd, c->engine, NULL);
    if (s == dnnl_success) s = dnnl_primitive_create(&r, pd);
    if (s == dnnl_success) s = dnnl_memory_create(&ms, smd, c->engine, (void *)src);
    if (s == dnnl_success) s = dnnl_memory_create(&md, dmd, c->engine, dst);
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
        s = dnnl_primitive_execute(r, c->stream, 2, args);
        if (s == dnnl_success) s = dnnl_stream_wait(c->stream);
    }
    if (md) dnnl_memory_destroy(md);
    if (ms) dnnl_memory_destroy(ms);
    if (r) dnnl_primitive_destroy(r);
    if (pd) dnnl_primitive_desc_destroy(pd);
    return s != dnnl_success ? dnnl_fail(e, s, "weights reorder") : SDXL_OK;
}

/* Reorders `src` (of descriptor smd) into a new buffer of descriptor dmd. */
static int reorder_new(sdxl_compute *c, const dnnl_memory_desc_t *smd, const void *src, const dnnl_memory_desc_t *dmd,
                       void **out, sdxl_err *e) {
    *out = NULL;
    size_t bytes = dnnl_memory_desc_get_size(dmd);
    void *dst = sdxl_alloc_big(bytes);
    if (!dst) return sdxl_seterr(e, SDXL_ERR_NOMEM, "weights reorder: out of memory (%zu bytes)", bytes);
    sdxl_mem_populate(dst, bytes);
    int st = reorder_into(c, smd, src, dmd, dst, e);
    if (st) {
        free(dst);
        return st;
    }
    *out = dst;
    return SDXL_OK;
}

static int find_or_create(sdxl_compute *c, const prim_key *k, const gemm_layer *gl, prim_entry **out, sdxl_err *e) {
    for (int64_t i = 0; i < c->n_prims; i++)
        if (memcmp(&c->prims[i].key, k, sizeof *k) == 0) {
            *out = &c->prims[i];
            return SDXL_OK;
        }
    if (c->n_prims == c->cap_prims) {
        int64_t cap = c->cap_prims ? c->cap_prims * 2 : 32;
        prim_entry *n = realloc(c->prims, (size_t)cap * sizeof *n);
        if (!n) return sdxl_seterr(e, SDXL_ERR_NOMEM, "primitive cache: out of memory");
        /* wcopies point at entries: rebase them */
        for (int i = 0; i < c->n_wcopies; i++) c->wcopies[i].entry = n + (c->wcopies[i].entry - c->prims);
        c->prims = n;
        c->cap_prims = cap;
    }
    prim_entry *p = &c->prims[c->n_prims];
    memset(p, 0, sizeof *p);
    p->key = *k;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = make_pd(c, k, &gl->wmd, &pd);
    if (s == dnnl_success && pd_is_reference(pd)) {
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
        s = dnnl_unimplemented;
    }
    if (s != dnnl_success) {
        /* The stored layout has no fast kernel for this shape: let oneDNN choose. */
        dnnl_memory_desc_t any = gl->wmd;
        dnnl_dims_t dims;
        memcpy(dims, gl->wmd.dims, sizeof dims);
        s = dnnl_memory_desc_init_by_tag(&any, gl->wmd.ndims, dims, gl->wmd.data_type, dnnl_format_tag_any);
        if (s == dnnl_success) s = make_pd(c, k, &any, &pd);
        if (s != dnnl_success) return dnnl_fail(e, s, k->op == OP_LINEAR ? "matmul creation" : "convolution creation");
        p->own_weights = 1;
    }
    p->use_wmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if (!p->own_weights && !dnnl_memory_desc_equal(&p->use_wmd, &gl->wmd)) p->own_weights = 1;
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    const dnnl_memory_desc_t *bmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1);
    const dnnl_memory_desc_t *scmd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    p->scratch_bytes = scmd ? dnnl_memory_desc_get_size(scmd) : 0;
    s = dnnl_primitive_create(&p->prim, pd);
    if (s == dnnl_success) s = dnnl_memory_create(&p->m_src, smd, c->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success) s = dnnl_memory_create(&p->m_wei, &p->use_wmd, c->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success && k->has_bias) s = dnnl_memory_create(&p->m_bias, bmd, c->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success) s = dnnl_memory_create(&p->m_dst, dmd, c->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success && p->scratch_bytes)
        s = dnnl_memory_create(&p->m_scratch, scmd, c->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success && (k->flags & KF_MUL_BF16)) {
        dnnl_memory_desc_t md;
        dnnl_dims_t dd = {k->d[0], k->d[2]};
        s = dnnl_memory_desc_init_by_tag(&md, 2, dd, dnnl_f32, dnnl_ab);
        if (s == dnnl_success) s = dnnl_memory_create(&p->m_mul, &md, c->engine, DNNL_MEMORY_NONE);
    }
    dnnl_primitive_desc_destroy(pd);
    if (s != dnnl_success) {
        dnnl_primitive_destroy(p->prim);
        dnnl_memory_destroy(p->m_src);
        dnnl_memory_destroy(p->m_wei);
        dnnl_memory_destroy(p->m_bias);
        dnnl_memory_destroy(p->m_dst);
        dnnl_memory_destroy(p->m_scratch);
        dnnl_memory_destroy(p->m_mul);
        return dnnl_fail(e, s, "primitive creation");
    }
    c->n_prims++;
    *out = p;
    return SDXL_OK;
}

/* The weights to hand to primitive p for a layer: its stored weights, or a private reordered copy. */
static int weights_for(sdxl_compute *c, const prim_entry *p, const gemm_layer *gl, const void *w, const void **out,
                       sdxl_err *e) {
    *out = w;
    if (!p->own_weights) return SDXL_OK;
    for (int i = 0; i < c->n_wcopies; i++)
        if (c->wcopies[i].layer == gl->serial && c->wcopies[i].entry == p) {
            *out = c->wcopies[i].data;
            return SDXL_OK;
        }
    if (c->n_wcopies == c->cap_wcopies) {
        int cap = c->cap_wcopies ? c->cap_wcopies * 2 : 8;
        wcopy *n = realloc(c->wcopies, (size_t)cap * sizeof *n);
        if (!n) return sdxl_seterr(e, SDXL_ERR_NOMEM, "weights copy: out of memory");
        c->wcopies = n;
        c->cap_wcopies = cap;
    }
    void *data;
    int st = reorder_new(c, &gl->wmd, w, &p->use_wmd, &data, e);
    if (st) return st;
    c->wcopies[c->n_wcopies++] = (wcopy){gl->serial, p, data};
    *out = data;
    return SDXL_OK;
}

uint16_t *sdxl_compute_src_bf16(sdxl_compute *c, int64_t n) {
    if (n < 0 || (uint64_t)n > SIZE_MAX / 2 || sdxl_buf_reserve(&c->xbuf, (size_t)(n ? n : 1) * 2)) return NULL;
    return c->xbuf.p;
}

/* The GEMM's bf16 input: x converted into the context's input buffer, in parallel, or x itself
 * when the caller converted it already (SDXL_OP_SRC_BF16). */
static int src_bf16(sdxl_compute *c, const float *x, int64_t n, int flags, const void **out, sdxl_err *e);

/* Converts n floats of x to bf16 in the context's input buffer, in parallel. */
static int input_bf16(sdxl_compute *c, const float *x, int64_t n, const void **out, sdxl_err *e) {
    if ((uint64_t)n > SIZE_MAX / 2 || sdxl_buf_reserve(&c->xbuf, (size_t)n * 2))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "GEMM input: cannot hold %lld bf16 values", (long long)n);
    uint16_t *d = c->xbuf.p;
    const int64_t chunk = 1 << 16;
    int64_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (nchunks > 1)
    for (int64_t i = 0; i < nchunks; i++) {
        int64_t b = i * chunk, len = n - b < chunk ? n - b : chunk;
        sdxl_f32_to_bf16(x + b, d + b, (size_t)len);
    }
    *out = d;
    return SDXL_OK;
}

static int src_bf16(sdxl_compute *c, const float *x, int64_t n, int flags, const void **out, sdxl_err *e) {
    if (flags & SDXL_OP_SRC_BF16) {
        if (c->prec != SDXL_PREC_BF16)
            return sdxl_seterr(e, SDXL_ERR_ARG, "GEMM: a bf16 input given to an f32 context");
        *out = x;
        return SDXL_OK;
    }
    return c->prec == SDXL_PREC_BF16 ? input_bf16(c, x, n, out, e) : SDXL_OK;
}

/* mul: the binary post-op's input where the key has KF_MUL_BF16, else unused. */
static int run_prim(sdxl_compute *c, prim_entry *p, const void *src, const void *w, const float *bias, void *dst,
                    const float *mul, sdxl_err *e) {
    if (p->scratch_bytes && sdxl_buf_reserve(&c->dnnl_scratch, p->scratch_bytes))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "oneDNN scratchpad: out of memory (%zu bytes)", p->scratch_bytes);
    DNNL_TRY(dnnl_memory_set_data_handle(p->m_src, (void *)src), "set src");
    DNNL_TRY(dnnl_memory_set_data_handle(p->m_wei, (void *)w), "set weights");
    DNNL_TRY(dnnl_memory_set_data_handle(p->m_dst, dst), "set dst");
    dnnl_exec_arg_t args[6] = {{DNNL_ARG_SRC, p->m_src}, {DNNL_ARG_WEIGHTS, p->m_wei}, {DNNL_ARG_DST, p->m_dst}};
    int nargs = 3;
    if (p->m_bias) {
        DNNL_TRY(dnnl_memory_set_data_handle(p->m_bias, (void *)bias), "set bias");
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, p->m_bias};
    }
    if (p->m_scratch) {
        DNNL_TRY(dnnl_memory_set_data_handle(p->m_scratch, c->dnnl_scratch.p), "set scratchpad");
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->m_scratch};
    }
    if (p->m_mul) {
        DNNL_TRY(dnnl_memory_set_data_handle(p->m_mul, (void *)mul), "set multiplier");
        int po = p->key.flags & SDXL_OP_ACCUM ? 1 : 0; /* the sum comes first */
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_MULTIPLE_POST_OP(po) | DNNL_ARG_SRC_1, p->m_mul};
    }
    DNNL_TRY(dnnl_primitive_execute(p->prim, c->stream, nargs, args), "execute");
    DNNL_TRY(dnnl_stream_wait(c->stream), "stream wait");
    return SDXL_OK;
}

/* Copies n values of dtype t into f32 (new buffer), in chunks across the threads: the source
 * is usually the file mapping, so this is where a load reads the checkpoint. */
static float *to_f32_copy(const void *src, sdxl_dtype t, int64_t n) {
    if (n <= 0 || (uint64_t)n > SIZE_MAX / 4) return NULL;
    float *d = sdxl_alloc_big((size_t)n * 4);
    if (!d) return NULL;
    sdxl_mem_populate(d, (size_t)n * 4);
    const int64_t chunk = 1 << 18;
    const size_t es = sdxl_dtype_size(t);
#pragma omp parallel for schedule(static) if (n > 2 * chunk)
    for (int64_t i = 0; i < n; i += chunk) {
        int64_t len = n - i < chunk ? n - i : chunk;
        sdxl_to_f32((const char *)src + (size_t)i * es, t, d + i, (size_t)len);
    }
    return d;
}

static int valid_dtype(sdxl_dtype t) { return t >= SDXL_F32 && t <= SDXL_F8_E5M2; }

/* The layout oneDNN prefers for the typical key, created once per distinct key in the context. */
static int layout_for(sdxl_compute *c, const prim_key *typical, int ndims, const dnnl_dims_t dims, gemm_layer *gl,
                      sdxl_err *e) {
    gl->serial = ++c->next_serial;
    for (int i = 0; i < c->n_lmemo; i++)
        if (!memcmp(&c->lmemo[i].k, typical, sizeof *typical)) {
            gl->layout_id = c->lmemo[i].id;
            gl->wmd = c->layouts[gl->layout_id];
            return SDXL_OK;
        }
    dnnl_memory_desc_t any;
    dnnl_dims_t d;
    memcpy(d, dims, sizeof d);
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&any, ndims, d, gemm_dt((sdxl_prec)typical->prec), dnnl_format_tag_any),
             "weights descriptor");
    dnnl_primitive_desc_t pd = NULL;
    DNNL_TRY(make_pd(c, typical, &any, &pd), typical->op == OP_LINEAR ? "matmul creation" : "convolution creation");
    gl->wmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    gl->layout_id = layout_id(c, &gl->wmd);
    if (gl->layout_id < 0) return sdxl_seterr(e, SDXL_ERR_NOMEM, "layout table: out of memory");
    if (c->n_lmemo == c->cap_lmemo) {
        int cap = c->cap_lmemo ? 2 * c->cap_lmemo : 32;
        struct lmemo *n = realloc(c->lmemo, (size_t)cap * sizeof *n);
        if (!n) return sdxl_seterr(e, SDXL_ERR_NOMEM, "layout table: out of memory");
        c->lmemo = n;
        c->cap_lmemo = cap;
    }
    c->lmemo[c->n_lmemo++] = (struct lmemo){*typical, gl->layout_id};
    return SDXL_OK;
}

#define HASH_CHUNK ((size_t)1 << 20)

uint64_t sdxl_mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

/* Eight independent multiply-add lanes over whole 64-byte blocks, then the tail. */
static uint64_t hash_chunk(const unsigned char *p, size_t n, uint64_t seed) {
    uint64_t a[8];
    for (int i = 0; i < 8; i++) a[i] = seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
    size_t nb = n / 64;
    for (size_t b = 0; b < nb; b++) {
        uint64_t v[8];
        memcpy(v, p + b * 64, 64);
        for (int i = 0; i < 8; i++) a[i] = (a[i] ^ v[i]) * 0x100000001b3ull + (a[i] >> 29);
    }
    uint64_t h = seed ^ n;
    for (int i = 0; i < 8; i++) h = sdxl_mix64(h ^ a[i]);
    for (size_t i = nb * 64; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return sdxl_mix64(h);
}

uint64_t sdxl_hash_bytes(const void *p, size_t n) {
    const unsigned char *b = p;
    int64_t nch = (int64_t)((n + HASH_CHUNK - 1) / HASH_CHUNK);
    uint64_t h = sdxl_mix64(n + 1);
#pragma omp parallel for schedule(static) reduction(^ : h) if (nch > 1)
    for (int64_t i = 0; i < nch; i++) {
        size_t o = (size_t)i * HASH_CHUNK, len = n - o < HASH_CHUNK ? n - o : HASH_CHUNK;
        h ^= sdxl_mix64(hash_chunk(b + o, len, (uint64_t)i) + (uint64_t)i);
    }
    return h;
}

uint64_t sdxl_gemm_build_hash(void) {
    const dnnl_version_t *v = dnnl_version();
    uint64_t h = sdxl_mix64(((uint64_t)v->major << 40) ^ ((uint64_t)v->minor << 20) ^ (uint64_t)v->patch);
    if (v->hash) h = sdxl_mix64(h ^ hash_chunk((const unsigned char *)v->hash, strlen(v->hash), 3));
    const int isa[] = {__builtin_cpu_supports("avx2"), __builtin_cpu_supports("avx512f"),
                       __builtin_cpu_supports("avx512bw"), __builtin_cpu_supports("avx512vnni"),
                       __builtin_cpu_supports("avx512bf16"), (int)dnnl_get_effective_cpu_isa()};
    return sdxl_mix64(h ^ hash_chunk((const unsigned char *)isa, sizeof isa, 5));
}

/* Hash of what decides a descriptor's bytes: dims, dtype, padding and blocking. */
static uint64_t layout_hash(const dnnl_memory_desc_t *md) {
    int64_t v[8 + 5 * DNNL_MAX_NDIMS];
    int n = 0;
    memset(v, 0, sizeof v);
    v[n++] = md->ndims;
    v[n++] = md->data_type;
    v[n++] = md->format_kind;
    v[n++] = md->offset0;
    v[n++] = (int64_t)md->extra.flags;
    for (int i = 0; i < md->ndims && i < DNNL_MAX_NDIMS; i++) {
        v[n++] = md->dims[i];
        v[n++] = md->padded_dims[i];
        v[n++] = md->padded_offsets[i];
    }
    if (md->format_kind == dnnl_blocked) {
        const dnnl_blocking_desc_t *bd = &md->format_desc.blocking;
        v[n++] = bd->inner_nblks;
        for (int i = 0; i < md->ndims && i < DNNL_MAX_NDIMS; i++) v[n++] = bd->strides[i];
        for (int i = 0; i < bd->inner_nblks && i < DNNL_MAX_NDIMS; i++) {
            v[n++] = bd->inner_blks[i];
            v[n++] = bd->inner_idxs[i];
        }
    }
    return hash_chunk((const unsigned char *)v, (size_t)n * sizeof *v, 0x5d71);
}

/* Hash of the source values' count, dtype and first and last bytes: tells layers apart. */
static uint64_t src_hash(const void *w, sdxl_dtype t, int64_t n) {
    size_t bytes = (size_t)n * sdxl_dtype_size(t), k = bytes < 256 ? bytes : 256;
    uint64_t h = hash_chunk(w, k, (uint64_t)bytes * 31u + (uint64_t)t);
    return sdxl_mix64(h ^ hash_chunk((const unsigned char *)w + bytes - k, k, 7));
}

/* Source values of dtype t into plain bf16, in parallel; values pass through f32 exactly, then
 * round to nearest even (as a reorder from f32 does). */
static uint16_t *to_bf16_copy(const void *src, sdxl_dtype t, int64_t n) {
    if (n <= 0 || (uint64_t)n > SIZE_MAX / 2) return NULL;
    uint16_t *d = sdxl_alloc_big((size_t)n * 2);
    if (!d) return NULL;
    sdxl_mem_populate(d, (size_t)n * 2);
    enum { CH = 1 << 13 };
    const size_t es = sdxl_dtype_size(t);
    const int64_t nch = (n + CH - 1) / CH;
#pragma omp parallel for schedule(static) if (nch > 4)
    for (int64_t i = 0; i < nch; i++) {
        float f[CH];
        int64_t o = i * CH, len = n - o < CH ? n - o : CH;
        const void *s = (const char *)src + (size_t)o * es;
        if (t == SDXL_F32) sdxl_f32_to_bf16(s, d + o, (size_t)len);
        else {
            sdxl_to_f32(s, t, f, (size_t)len);
            sdxl_f32_to_bf16(f, d + o, (size_t)len);
        }
    }
    return d;
}

/* Source values (torch order: dims + tag, dtype t) converted and reordered into wmd at dst. */
static int pack_into(sdxl_compute *c, int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag, const void *w,
                     sdxl_dtype t, int64_t nw, const dnnl_memory_desc_t *wmd, void *dst, sdxl_err *e) {
    int bf = c->prec == SDXL_PREC_BF16;
    void *tmp = NULL;
    const void *src = w;
    if (bf && t != SDXL_BF16) src = tmp = to_bf16_copy(w, t, nw);
    else if (!bf && t != SDXL_F32) src = tmp = to_f32_copy(w, t, nw);
    if (!src) return sdxl_seterr(e, SDXL_ERR_NOMEM, "weights: out of memory");
    dnnl_memory_desc_t plain;
    dnnl_dims_t d;
    memcpy(d, dims, sizeof d);
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&plain, ndims, d, bf ? dnnl_bf16 : dnnl_f32, tag);
    int st = s != dnnl_success ? dnnl_fail(e, s, "weights descriptor") : reorder_into(c, &plain, src, wmd, dst, e);
    free(tmp);
    return st;
}

static int bias_init(const void *b, sdxl_dtype bdt, int64_t n, float **out, sdxl_err *e) {
    *out = NULL;
    if (!b) return SDXL_OK;
    if (!valid_dtype(bdt)) return sdxl_seterr(e, SDXL_ERR_ARG, "bias: unknown dtype %d", (int)bdt);
    *out = to_f32_copy(b, bdt, n);
    return *out ? SDXL_OK : sdxl_seterr(e, SDXL_ERR_NOMEM, "bias: out of memory");
}

/* The part of linear and conv init they share: the layer record, and the weights (torch order,
 * given by dims + tag) laid out for the typical primitive key k, which already reflects the
 * bias: taken from the context's packed-weights store when it holds them, else converted (and
 * handed to the store). On failure the caller's *_free releases whatever was set. */
static int layer_weights(sdxl_compute *c, int op, const void *w, sdxl_dtype wdt, int ndims, const dnnl_dims_t dims,
                         dnnl_format_tag_t tag, const prim_key *k, void **impl, void **w_out, sdxl_err *e) {
    int64_t nw = 1;
    for (int i = 0; i < ndims; i++) nw *= dims[i];
    gemm_layer *gl = calloc(1, sizeof *gl);
    if (!gl) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    gl->op = op;
    *impl = gl;
    int st = layout_for(c, k, ndims, dims, gl, e);
    if (st) return st;
    size_t bytes = dnnl_memory_desc_get_size(&gl->wmd);
    sdxl_wkey key;
    memset(&key, 0, sizeof key);
    if (c->has_ws) {
        key.op = op;
        key.prec = (int32_t)c->prec;
        key.ndims = ndims;
        for (int i = 0; i < ndims && i < 4; i++) key.dims[i] = dims[i];
        key.layout = layout_hash(&gl->wmd);
        key.bytes = bytes;
        key.src = src_hash(w, wdt, nw);
        const void *p = c->ws.lookup ? c->ws.lookup(c->ws.user, &key) : NULL;
        if (p) {
            *w_out = (void *)p;
            gl->borrowed = 1;
            return SDXL_OK;
        }
    }
    void *dst = sdxl_alloc_big(bytes);
    if (!dst) return sdxl_seterr(e, SDXL_ERR_NOMEM, "weights: out of memory (%zu bytes)", bytes);
    sdxl_mem_populate(dst, bytes);
    st = pack_into(c, ndims, dims, tag, w, wdt, nw, &gl->wmd, dst, e);
    if (st) {
        free(dst);
        return st;
    }
    *w_out = dst;
    if (c->has_ws && c->ws.record) c->ws.record(c->ws.user, &key, dst);
    return SDXL_OK;
}

static int borrowed(const void *impl) { return impl && ((const gemm_layer *)impl)->borrowed; }

/* ---- linear ---- */

/* The M whose preferred weights layout is stored; other M first try the same layout. */
#define LINEAR_TYPICAL_M 4096

static void linear_key(const sdxl_linear *l, const gemm_layer *gl, int64_t M, int flags, prim_key *k) {
    memset(k, 0, sizeof *k);
    k->op = OP_LINEAR;
    k->prec = (int)l->prec;
    k->flags = flags & SDXL_OP_ACCUM;
    k->has_bias = l->bias != NULL;
    k->nthr = omp_get_max_threads();
    k->layout_id = gl ? gl->layout_id : -1;
    k->d[0] = M;
    k->d[1] = l->in;
    k->d[2] = l->out;
}

int sdxl_linear_init(sdxl_compute *c, sdxl_linear *l, int64_t in, int64_t out, const void *w, sdxl_dtype wdt,
                     const void *b, sdxl_dtype bdt, sdxl_err *e) {
    memset(l, 0, sizeof *l);
    if (in <= 0 || out <= 0 || in > INT32_MAX || out > INT32_MAX || in > INT64_MAX / out)
        return sdxl_seterr(e, SDXL_ERR_ARG, "linear: bad size in=%lld out=%lld", (long long)in, (long long)out);
    if (!w || !valid_dtype(wdt)) return sdxl_seterr(e, SDXL_ERR_ARG, "linear: weights missing or of unknown dtype");
    l->in = in;
    l->out = out;
    l->prec = c->prec;
    if (c->dev) return sdxl_dev_layer_init(c->dev, &l->impl, in, out, 1, 1, 1, 0, 0, 0, 0, w, wdt, b, bdt, e);
    int st = bias_init(b, bdt, out, &l->bias, e);
    if (!st) {
        /* torch [out, in] row-major is the {K=in, N=out} matrix in "ba" order. */
        dnnl_dims_t dims = {in, out};
        prim_key k;
        linear_key(l, NULL, LINEAR_TYPICAL_M, 0, &k);
        st = layer_weights(c, OP_LINEAR, w, wdt, 2, dims, dnnl_ba, &k, &l->impl, &l->w, e);
    }
    if (st) {
        sdxl_linear_free(l);
        return sdxl_err_prefix(e, "linear %lldx%lld", (long long)out, (long long)in);
    }
    return SDXL_OK;
}

void sdxl_linear_free(sdxl_linear *l) {
    if (!l) return;
    if (!l->w && l->impl) { /* a device layer: its weights live on the device */
        sdxl_dev_layer_free(l->impl);
        l->impl = NULL;
    }
    if (!borrowed(l->impl)) free(l->w);
    free(l->bias);
    free(l->impl);
    memset(l, 0, sizeof *l);
}

int sdxl_linear_fwd(sdxl_compute *c, const sdxl_linear *l, const float *x, int64_t M, float *y, int flags,
                    sdxl_err *e) {
    if (c->dev && l->impl && !l->w) {
        if (M < 0 || M > INT32_MAX) return sdxl_seterr(e, SDXL_ERR_ARG, "linear: bad row count %lld", (long long)M);
        return M ? sdxl_dev_linear_fwd(c->dev, l->impl, x, M, y, flags, e) : SDXL_OK;
    }
    const gemm_layer *gl = l->impl;
    if (!gl || !l->w) return sdxl_seterr(e, SDXL_ERR_ARG, "linear: not initialised");
    if (l->prec != c->prec)
        return sdxl_seterr(e, SDXL_ERR_ARG, "linear: weights built for another precision than the context's");
    if (M < 0 || M > INT32_MAX) return sdxl_seterr(e, SDXL_ERR_ARG, "linear: bad row count %lld", (long long)M);
    if (M == 0) return SDXL_OK;
    prim_key k;
    linear_key(l, gl, M, flags, &k);
    prim_entry *p;
    int st = find_or_create(c, &k, gl, &p, e);
    const void *src = x, *w;
    if (!st) st = weights_for(c, p, gl, l->w, &w, e);
    if (!st) st = src_bf16(c, x, M * l->in, flags, &src, e);
    if (!st) st = run_prim(c, p, src, w, l->bias, y, NULL, e);
    if (st) return sdxl_err_prefix(e, "linear %lldx%lld, M=%lld", (long long)l->out, (long long)l->in, (long long)M);
    return SDXL_OK;
}

/* The stored weights' descriptor cut to the first half of N, when N's blocks are outermost so
 * that each half is one contiguous run of the stored buffer (the second at *off bytes). */
static int half_n_desc(const dnnl_memory_desc_t *md, dnnl_memory_desc_t *half, size_t *off) {
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    if (md->format_kind != dnnl_blocked || md->extra.flags != 0 || md->ndims != 2 || md->offset0 != 0) return 0;
    int64_t nblk = 1;
    for (int i = 0; i < b->inner_nblks; i++)
        if (b->inner_idxs[i] == 1) nblk *= b->inner_blks[i];
    int64_t n = md->dims[1];
    if (n % 2 || md->padded_dims[1] != n || (n / 2) % nblk || b->strides[1] < b->strides[0]) return 0;
    *half = *md;
    half->dims[1] = half->padded_dims[1] = n / 2;
    size_t hb = dnnl_memory_desc_get_size(half), es = md->data_type == dnnl_bf16 ? 2 : 4;
    *off = (size_t)(n / 2 / nblk * b->strides[1]) * es;
    return hb * 2 == dnnl_memory_desc_get_size(md) && *off == hb;
}

int sdxl_linear_geglu_bf16(sdxl_compute *c, const sdxl_linear *l, const float *x, int64_t M, float *g, uint16_t *y,
                           int flags, sdxl_err *e) {
    const gemm_layer *gl = l->impl;
    if (c->dev || c->prec != SDXL_PREC_BF16 || !gl || !l->w || l->prec != c->prec)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "fused GEGLU: bf16 CPU layers only");
    if (M < 0 || M > INT32_MAX) return sdxl_seterr(e, SDXL_ERR_ARG, "linear: bad row count %lld", (long long)M);
    if (M == 0) return SDXL_OK;
    gemm_layer h = *gl;
    size_t off = 0;
    if (!half_n_desc(&gl->wmd, &h.wmd, &off) || (h.layout_id = layout_id(c, &h.wmd)) < 0)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "fused GEGLU: the weights' layout does not split in N");
    sdxl_linear half = *l;
    half.out = l->out / 2;
    prim_key kg, kh;
    linear_key(&half, &h, M, 0, &kg);
    kh = kg;
    kg.flags = KF_GELU;
    kh.flags = KF_MUL_BF16;
    prim_entry *pg, *ph;
    int st = find_or_create(c, &kg, &h, &pg, e);
    if (!st) st = find_or_create(c, &kh, &h, &ph, e);
    if (!st) st = find_or_create(c, &kg, &h, &pg, e); /* the second may have moved the cache */
    if (!st && (pg->own_weights || ph->own_weights))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "fused GEGLU: no fast kernel on the split weights");
    const void *src = x;
    const char *w = l->w;
    if (!st) st = src_bf16(c, x, M * l->in, flags, &src, e);
    if (!st) st = run_prim(c, pg, src, w + off, l->bias ? l->bias + half.out : NULL, g, NULL, e);
    if (!st) st = run_prim(c, ph, src, w, l->bias, y, g, e);
    if (st) return sdxl_err_prefix(e, "GEGLU linear %lldx%lld, M=%lld", (long long)l->out, (long long)l->in, (long long)M);
    return SDXL_OK;
}

/* ---- conv2d ---- */

/* The spatial size whose preferred weights layout is stored. */
#define CONV_TYPICAL_HW 64

static void conv_key(const sdxl_conv2d *cv, const gemm_layer *gl, int64_t n, int64_t h, int64_t w, int flags,
                     prim_key *k) {
    memset(k, 0, sizeof *k);
    k->op = OP_CONV;
    k->prec = (int)cv->prec;
    k->flags = flags & SDXL_OP_ACCUM;
    k->has_bias = cv->bias != NULL;
    k->nthr = omp_get_max_threads();
    k->layout_id = gl ? gl->layout_id : -1;
    int64_t d[10] = {n,          h,          w,          cv->cin,
                     cv->cout,   cv->kh,     cv->kw,     cv->stride,
                     (int64_t)cv->pad_t | ((int64_t)cv->pad_l << 16),
                     (int64_t)cv->pad_b | ((int64_t)cv->pad_r << 16)};
    memcpy(k->d, d, sizeof d);
}

void sdxl_conv2d_out_size(const sdxl_conv2d *cv, int64_t h, int64_t w, int64_t *oh, int64_t *ow) {
    int64_t eh = h + cv->pad_t + cv->pad_b - cv->kh, ew = w + cv->pad_l + cv->pad_r - cv->kw;
    *oh = eh < 0 ? 0 : eh / cv->stride + 1;
    *ow = ew < 0 ? 0 : ew / cv->stride + 1;
}

int sdxl_conv2d_init(sdxl_compute *c, sdxl_conv2d *cv, int64_t cin, int64_t cout, int kh, int kw, int stride,
                     int pad_t, int pad_l, int pad_b, int pad_r, const void *w, sdxl_dtype wdt, const void *b,
                     sdxl_dtype bdt, sdxl_err *e) {
    memset(cv, 0, sizeof *cv);
    if (cin <= 0 || cout <= 0 || cin > (1 << 20) || cout > (1 << 20) || kh <= 0 || kw <= 0 || kh > 64 || kw > 64)
        return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: bad size cin=%lld cout=%lld kernel=%dx%d", (long long)cin,
                           (long long)cout, kh, kw);
    if (stride <= 0 || stride > 64 || pad_t < 0 || pad_l < 0 || pad_b < 0 || pad_r < 0 || pad_t >= kh + stride ||
        pad_b >= kh + stride || pad_l >= kw + stride || pad_r >= kw + stride)
        return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: bad stride %d or pads (%d,%d,%d,%d) for kernel %dx%d", stride,
                           pad_t, pad_l, pad_b, pad_r, kh, kw);
    if (!w || !valid_dtype(wdt)) return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: weights missing or of unknown dtype");
    cv->cin = cin;
    cv->cout = cout;
    cv->kh = kh;
    cv->kw = kw;
    cv->stride = stride;
    cv->pad_t = pad_t;
    cv->pad_l = pad_l;
    cv->pad_b = pad_b;
    cv->pad_r = pad_r;
    cv->prec = c->prec;
    if (c->dev)
        return sdxl_dev_layer_init(c->dev, &cv->impl, cin, cout, kh, kw, stride, pad_t, pad_l, pad_b, pad_r, w, wdt, b,
                                   bdt, e);
    int st = bias_init(b, bdt, cout, &cv->bias, e);
    if (!st) {
        dnnl_dims_t dims = {cout, cin, kh, kw};
        int64_t hw = CONV_TYPICAL_HW * stride;
        if (hw < kh) hw = kh;
        if (hw < kw) hw = kw;
        prim_key k;
        conv_key(cv, NULL, 1, hw, hw, 0, &k);
        st = layer_weights(c, OP_CONV, w, wdt, 4, dims, dnnl_oihw, &k, &cv->impl, &cv->w, e);
    }
    if (st) {
        sdxl_conv2d_free(cv);
        return sdxl_err_prefix(e, "conv2d %lld->%lld %dx%d", (long long)cin, (long long)cout, kh, kw);
    }
    return SDXL_OK;
}

void sdxl_conv2d_free(sdxl_conv2d *cv) {
    if (!cv) return;
    if (!cv->w && cv->impl) {
        sdxl_dev_layer_free(cv->impl);
        cv->impl = NULL;
    }
    if (!borrowed(cv->impl)) free(cv->w);
    free(cv->bias);
    free(cv->impl);
    memset(cv, 0, sizeof *cv);
}

int sdxl_conv2d_fwd(sdxl_compute *c, const sdxl_conv2d *cv, const float *x, int64_t n, int64_t h, int64_t w,
                    float *y, int flags, sdxl_err *e) {
    if (c->dev && cv->impl && !cv->w) return sdxl_dev_conv2d_fwd(c->dev, cv->impl, x, n, h, w, y, flags, e);
    const gemm_layer *gl = cv->impl;
    if (!gl || !cv->w) return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: not initialised");
    if (cv->prec != c->prec)
        return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: weights built for another precision than the context's");
    int64_t oh, ow;
    sdxl_conv2d_out_size(cv, h, w, &oh, &ow);
    if (n < 0 || h <= 0 || w <= 0 || n > INT32_MAX || h > (1 << 20) || w > (1 << 20) || oh <= 0 || ow <= 0 ||
        h + cv->pad_t + cv->pad_b < cv->kh || w + cv->pad_l + cv->pad_r < cv->kw)
        return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: bad input size n=%lld h=%lld w=%lld for kernel %dx%d",
                           (long long)n, (long long)h, (long long)w, cv->kh, cv->kw);
    if (n == 0) return SDXL_OK;
    if (n * h > INT64_MAX / w || n * h * w > INT64_MAX / cv->cin)
        return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: input too large");
    prim_key k;
    conv_key(cv, gl, n, h, w, flags, &k);
    prim_entry *p;
    int st = find_or_create(c, &k, gl, &p, e);
    const void *src = x, *wt;
    if (!st) st = weights_for(c, p, gl, cv->w, &wt, e);
    if (!st) st = src_bf16(c, x, n * h * w * cv->cin, flags, &src, e);
    if (!st) st = run_prim(c, p, src, wt, cv->bias, y, NULL, e);
    if (st)
        return sdxl_err_prefix(e, "conv2d %lld->%lld %dx%d at %lldx%lldx%lld", (long long)cv->cin,
                               (long long)cv->cout, cv->kh, cv->kw, (long long)n, (long long)h, (long long)w);
    return SDXL_OK;
}

/* ---- weight replacement (LoRA merge and undo) ---- */

/* New f32 weights (torch order given by dims + tag) reordered into a layer's stored layout, and
 * into every private copy the context made of them: the same reorders a fresh init runs. */
static int replace_weights(sdxl_compute *c, const gemm_layer *gl, void *wstore, const float *w, int ndims,
                           const dnnl_dims_t dims, dnnl_format_tag_t tag, sdxl_err *e) {
    if (!wstore && gl)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "set weights: the layer's weights live on a device; rebuilding "
                           "layers (LoRA) needs the CPU context");
    if (!gl || !wstore) return sdxl_seterr(e, SDXL_ERR_ARG, "set weights: layer not initialised");
    int64_t nw = 1;
    for (int i = 0; i < ndims; i++) nw *= dims[i];
    int st = pack_into(c, ndims, dims, tag, w, SDXL_F32, nw, &gl->wmd, wstore, e);
    for (int i = 0; !st && i < c->n_wcopies; i++)
        if (c->wcopies[i].layer == gl->serial)
            st = reorder_into(c, &gl->wmd, wstore, &c->wcopies[i].entry->use_wmd, c->wcopies[i].data, e);
    return st;
}

int sdxl_linear_set_weights(sdxl_compute *c, sdxl_linear *l, const float *w, const float *b, sdxl_err *e) {
    if (l->prec != c->prec) return sdxl_seterr(e, SDXL_ERR_ARG, "linear: set weights in another precision");
    if (c->dev && l->impl && !l->w) return sdxl_dev_layer_set_weights(l->impl, w, b, e);
    dnnl_dims_t dims = {l->in, l->out};
    int st = replace_weights(c, l->impl, l->w, w, 2, dims, dnnl_ba, e);
    if (!st && b && l->bias) memcpy(l->bias, b, (size_t)l->out * sizeof(float));
    return st;
}

int sdxl_conv2d_set_weights(sdxl_compute *c, sdxl_conv2d *cv, const float *w, const float *b, sdxl_err *e) {
    if (cv->prec != c->prec) return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: set weights in another precision");
    if (c->dev && cv->impl && !cv->w) return sdxl_dev_layer_set_weights(cv->impl, w, b, e);
    dnnl_dims_t dims = {cv->cout, cv->cin, cv->kh, cv->kw};
    int st = replace_weights(c, cv->impl, cv->w, w, 4, dims, dnnl_oihw, e);
    if (!st && b && cv->bias) memcpy(cv->bias, b, (size_t)cv->cout * sizeof(float));
    return st;
}

size_t sdxl_linear_weight_bytes(const sdxl_linear *l) {
    const gemm_layer *gl = l->impl;
    return gl && l->w ? dnnl_memory_desc_get_size(&gl->wmd) : 0;
}

size_t sdxl_conv2d_weight_bytes(const sdxl_conv2d *cv) {
    const gemm_layer *gl = cv->impl;
    return gl && cv->w ? dnnl_memory_desc_get_size(&gl->wmd) : 0;
}

/* ---- packed layout (LoRA merge in place) ---- */

/* off[x] for every index x of md's dimension d: oneDNN's blocked offset, which is a sum of one
 * term per dimension (inner blocks peel the lowest digits, innermost first). */
static void dim_offsets(const dnnl_memory_desc_t *md, int d, int64_t add, int64_t *off) {
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    int64_t bstride[DNNL_MAX_NDIMS], s = 1;
    for (int k = b->inner_nblks - 1; k >= 0; k--) {
        bstride[k] = s;
        s *= b->inner_blks[k];
    }
    for (int64_t x = 0; x < md->dims[d]; x++) {
        int64_t pos = x, o = add;
        for (int k = b->inner_nblks - 1; k >= 0; k--)
            if (b->inner_idxs[k] == d) {
                o += pos % b->inner_blks[k] * bstride[k];
                pos /= b->inner_blks[k];
            }
        off[x] = o + pos * b->strides[d];
    }
}

void sdxl_wlayout_free(sdxl_wlayout *lay) {
    for (int i = 0; i < 4; i++) free(lay->off[i]);
    memset(lay, 0, sizeof *lay);
}

/* torch dim t of the weights is md dim map[t]. */
static int layout_of(const gemm_layer *gl, const void *w, const int *map, int nt, sdxl_wlayout *lay, sdxl_err *e) {
    memset(lay, 0, sizeof *lay);
    if (!gl || !w) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "weights layout: the layer has no CPU weights");
    const dnnl_memory_desc_t *md = &gl->wmd;
    if (md->format_kind != dnnl_blocked || md->extra.flags != 0 || md->ndims != nt)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "weights layout: not a plain blocked layout");
    lay->esize = md->data_type == dnnl_bf16 ? 2 : md->data_type == dnnl_f32 ? 4 : 0;
    if (!lay->esize) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "weights layout: dtype %d", (int)md->data_type);
    lay->bytes = dnnl_memory_desc_get_size(md);
    for (int t = 0; t < 4; t++) {
        lay->n[t] = t < nt ? md->dims[map[t]] : 1;
        lay->off[t] = calloc((size_t)lay->n[t], sizeof(int64_t));
        if (!lay->off[t]) {
            sdxl_wlayout_free(lay);
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "weights layout: out of memory");
        }
        if (t < nt) dim_offsets(md, map[t], t ? 0 : md->offset0, lay->off[t]);
    }
    return SDXL_OK;
}

int sdxl_linear_layout(const sdxl_linear *l, sdxl_wlayout *lay, sdxl_err *e) {
    static const int map[2] = {1, 0}; /* stored as {K = in, N = out} */
    return layout_of(l->impl, l->w, map, 2, lay, e);
}

int sdxl_conv2d_layout(const sdxl_conv2d *cv, sdxl_wlayout *lay, sdxl_err *e) {
    static const int map[4] = {0, 1, 2, 3};
    return layout_of(cv->impl, cv->w, map, 4, lay, e);
}

static int weights_moved(sdxl_compute *c, const gemm_layer *gl, const void *w, sdxl_err *e) {
    if (!gl || !w) return sdxl_seterr(e, SDXL_ERR_ARG, "weights moved: layer not initialised");
    for (int i = 0; i < c->n_wcopies; i++)
        if (c->wcopies[i].layer == gl->serial) {
            int st = reorder_into(c, &gl->wmd, w, &c->wcopies[i].entry->use_wmd, c->wcopies[i].data, e);
            if (st) return st;
        }
    return SDXL_OK;
}

int sdxl_linear_weights_moved(sdxl_compute *c, const sdxl_linear *l, sdxl_err *e) {
    return weights_moved(c, l->impl, l->w, e);
}

int sdxl_conv2d_weights_moved(sdxl_compute *c, const sdxl_conv2d *cv, sdxl_err *e) {
    return weights_moved(c, cv->impl, cv->w, e);
}
