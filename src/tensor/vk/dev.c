/* Device side of sdxl_compute: shadow ranges, host operands, one call per op of ops.h. */
#include "tensor/vk/dev.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define KONST_MAX_BYTES ((uint64_t)4 << 20)
#define KONST_MAX 4096
#define KONST_MAX_TOTAL ((uint64_t)256 << 20) /* host copies kept, all entries together */
#define TMP_MAX 8
#define FREQS_MAX 8

typedef struct shadow {
    char *base;
    uint64_t size, mapped;
    sdxl_vk_buf buf;
} shadow;

typedef struct konst {
    const void *host;
    uint64_t bytes;
    void *copy;
    sdxl_vk_buf buf;
} konst;

typedef struct freqs {
    int dim;
    float shift, max_period;
    sdxl_vk_buf buf;
} freqs;

typedef struct readback {
    void *host;
    uint64_t bytes;
    int tmp;
} readback;

struct sdxl_dev {
    sdxl_vk *vk;
    sdxl_prec prec;
    shadow *sh;
    int nsh, capsh;
    konst *k;
    int nk, capk;
    uint64_t kbytes;
    sdxl_vk_buf tmp[TMP_MAX]; /* kept between ops and grown, so a warm step loop allocates nothing */
    int ntmp;
    freqs fq[FREQS_MAX];      /* timestep-embedding frequencies per (dim, shift, max_period) */
    int nfq;
    readback rb[2];
    int nrb;
};

int sdxl_dev_new(const char *device, sdxl_prec prec, sdxl_dev **out, sdxl_err *e) {
    *out = NULL;
    int index;
    int st = sdxl_vk_parse_device(device, &index, e);
    if (st) return st;
    sdxl_dev *d = calloc(1, sizeof *d);
    if (!d) return sdxl_seterr(e, SDXL_ERR_NOMEM, "device: out of memory");
    d->prec = prec;
    if ((st = sdxl_vk_new(index, &d->vk, e))) {
        free(d);
        return st;
    }
    *out = d;
    return SDXL_OK;
}

static void konst_drop_all(sdxl_dev *d) {
    for (int i = 0; i < d->nk; i++) {
        sdxl_vk_release(d->vk, &d->k[i].buf);
        free(d->k[i].copy);
    }
    d->nk = 0;
    d->kbytes = 0;
}

static void tmp_drop_all(sdxl_dev *d) {
    for (int i = 0; i < TMP_MAX; i++) sdxl_vk_release(d->vk, &d->tmp[i]);
    for (int i = 0; i < d->nfq; i++) sdxl_vk_release(d->vk, &d->fq[i].buf);
    d->nfq = 0;
}

void sdxl_dev_trim(sdxl_dev *d) {
    if (!d) return;
    konst_drop_all(d);
    tmp_drop_all(d);
}

void sdxl_dev_free(sdxl_dev *d) {
    if (!d) return;
    konst_drop_all(d);
    tmp_drop_all(d);
    free(d->k);
    for (int i = 0; i < d->nsh; i++) {
        sdxl_vk_release(d->vk, &d->sh[i].buf);
        munmap(d->sh[i].base, d->sh[i].mapped);
    }
    free(d->sh);
    sdxl_vk_free(d->vk);
    free(d);
}

sdxl_vk *sdxl_dev_vk(sdxl_dev *d) { return d->vk; }

void *sdxl_dev_alloc(sdxl_dev *d, size_t bytes, sdxl_err *e) {
    if (!bytes) bytes = 4;
    if (d->nsh == d->capsh) {
        int cap = d->capsh ? 2 * d->capsh : 16;
        shadow *p = realloc(d->sh, (size_t)cap * sizeof *p);
        if (!p) return sdxl_seterr(e, SDXL_ERR_NOMEM, "device: out of memory"), NULL;
        d->sh = p;
        d->capsh = cap;
    }
    shadow s = {.size = bytes, .mapped = (bytes + 4095) / 4096 * 4096};
    s.base = mmap(NULL, s.mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s.base == MAP_FAILED) return sdxl_seterr(e, SDXL_ERR_NOMEM, "device: cannot reserve address space"), NULL;
    if (sdxl_vk_alloc(d->vk, bytes, &s.buf, e)) {
        munmap(s.base, s.mapped);
        return NULL;
    }
    d->sh[d->nsh++] = s;
    return s.base;
}

void sdxl_dev_release(sdxl_dev *d, void *p) {
    if (!d || !p) return;
    for (int i = 0; i < d->nsh; i++)
        if (d->sh[i].base == p) {
            sdxl_vk_release(d->vk, &d->sh[i].buf);
            munmap(d->sh[i].base, d->sh[i].mapped);
            d->sh[i] = d->sh[--d->nsh];
            return;
        }
}

static shadow *find_shadow(sdxl_dev *d, const void *p) {
    const char *c = p;
    for (int i = 0; i < d->nsh; i++)
        if (c >= d->sh[i].base && c < d->sh[i].base + d->sh[i].size) return &d->sh[i];
    return NULL;
}

/* The next temporary of this op: the slot's buffer when it is large enough, else a larger one.
 * Recorded work that still reads a slot runs before anything rewrites it (uploads are recorded
 * after it, behind a barrier). */
static int tmp_new(sdxl_dev *d, uint64_t bytes, int *at, sdxl_err *e) {
    if (d->ntmp == TMP_MAX) return sdxl_seterr(e, SDXL_ERR_INTERNAL, "device: too many host operands in one op");
    sdxl_vk_buf *t = &d->tmp[d->ntmp];
    if (!t->buffer || t->size < bytes) {
        sdxl_vk_release(d->vk, t);
        int st = sdxl_vk_alloc(d->vk, bytes, t, e);
        if (st) return st;
    }
    *at = d->ntmp++;
    return SDXL_OK;
}

/* Device view of an input operand of `bytes` bytes at p. */
static int in_(sdxl_dev *d, const void *p, uint64_t bytes, sdxl_vk_buf *v, sdxl_err *e) {
    if (!p) return sdxl_seterr(e, SDXL_ERR_ARG, "device: missing operand");
    shadow *s = find_shadow(d, p);
    if (s) {
        uint64_t off = (uint64_t)((const char *)p - s->base);
        if (bytes > s->size - off)
            return sdxl_seterr(e, SDXL_ERR_ARG, "device: an operand of %llu bytes runs past its allocation",
                               (unsigned long long)bytes);
        *v = sdxl_vk_view(&s->buf, off, bytes);
        return SDXL_OK;
    }
    int st;
    if (bytes > KONST_MAX_BYTES) { /* a large host input: uploaded for this op only */
        int t = 0;
        if ((st = tmp_new(d, bytes, &t, e)) || (st = sdxl_vk_upload(d->vk, &d->tmp[t], 0, p, bytes, e))) return st;
        *v = sdxl_vk_view(&d->tmp[t], 0, bytes);
        return SDXL_OK;
    }
    for (int i = 0; i < d->nk; i++) {
        konst *k = &d->k[i];
        if (k->host != p || k->bytes != bytes) continue;
        if (memcmp(k->copy, p, bytes)) {
            if ((st = sdxl_vk_upload(d->vk, &k->buf, 0, p, bytes, e))) return st;
            memcpy(k->copy, p, bytes);
        }
        *v = sdxl_vk_view(&k->buf, 0, bytes);
        return SDXL_OK;
    }
    if (d->nk == d->capk) {
        int cap = d->capk ? 2 * d->capk : 64;
        konst *q = realloc(d->k, (size_t)cap * sizeof *q);
        if (!q) return sdxl_seterr(e, SDXL_ERR_NOMEM, "device: out of memory");
        d->k = q;
        d->capk = cap;
    }
    konst k = {.host = p, .bytes = bytes, .copy = malloc(bytes)};
    if (!k.copy) return sdxl_seterr(e, SDXL_ERR_NOMEM, "device: out of memory");
    memcpy(k.copy, p, bytes);
    if ((st = sdxl_vk_alloc(d->vk, bytes, &k.buf, e)) || (st = sdxl_vk_upload(d->vk, &k.buf, 0, p, bytes, e))) {
        if (k.buf.buffer) sdxl_vk_release(d->vk, &k.buf);
        free(k.copy);
        return st;
    }
    d->k[d->nk++] = k;
    d->kbytes += bytes;
    *v = sdxl_vk_view(&k.buf, 0, bytes);
    return SDXL_OK;
}

/* Device view of an output operand; a host output gets a temporary holding its current
 * contents (for accumulation and in-place ops) and is read back when the op ends. */
static int out_(sdxl_dev *d, void *p, uint64_t bytes, sdxl_vk_buf *v, sdxl_err *e) {
    if (!p) return sdxl_seterr(e, SDXL_ERR_ARG, "device: missing output");
    if (find_shadow(d, p)) return in_(d, p, bytes, v, e);
    int t = 0, st;
    if (d->nrb == 2) return sdxl_seterr(e, SDXL_ERR_INTERNAL, "device: too many host outputs in one op");
    if ((st = tmp_new(d, bytes, &t, e)) || (st = sdxl_vk_upload(d->vk, &d->tmp[t], 0, p, bytes, e))) return st;
    d->rb[d->nrb++] = (readback){p, bytes, t};
    *v = sdxl_vk_view(&d->tmp[t], 0, bytes);
    return SDXL_OK;
}

/* Ends an op: reads host outputs back; the temporaries stay for the next op. */
static int done(sdxl_dev *d, int st, sdxl_err *e) {
    for (int i = 0; i < d->nrb; i++)
        if (!st) st = sdxl_vk_download(d->vk, &d->tmp[d->rb[i].tmp], 0, d->rb[i].host, d->rb[i].bytes, e);
    d->ntmp = d->nrb = 0;
    /* The cache is bounded between ops, never inside one (its views are in use there). */
    if (d->nk >= KONST_MAX || d->kbytes > KONST_MAX_TOTAL) konst_drop_all(d);
    return st;
}

int sdxl_dev_sync(sdxl_dev *d, sdxl_err *e) { return sdxl_vk_flush(d->vk, e); }

static uint64_t fb(int64_t n) { return n < 0 ? 0 : (uint64_t)n * 4; }

int sdxl_dev_copy(sdxl_dev *d, void *dst, const void *src, size_t bytes, sdxl_err *e) {
    shadow *sd = find_shadow(d, dst), *ss = find_shadow(d, src);
    if (!bytes) return SDXL_OK;
    if (!sd && !ss) {
        memmove(dst, src, bytes);
        return SDXL_OK;
    }
    if (sd && !ss) {
        uint64_t off = (uint64_t)((char *)dst - sd->base);
        if (bytes > sd->size - off) return sdxl_seterr(e, SDXL_ERR_ARG, "device: copy past the end of an allocation");
        return sdxl_vk_upload(d->vk, &sd->buf, off, src, bytes, e);
    }
    if (!sd && ss) {
        uint64_t off = (uint64_t)((const char *)src - ss->base);
        if (bytes > ss->size - off) return sdxl_seterr(e, SDXL_ERR_ARG, "device: copy past the end of an allocation");
        return sdxl_vk_download(d->vk, &ss->buf, off, dst, bytes, e);
    }
    if (bytes % 4) return sdxl_seterr(e, SDXL_ERR_ARG, "device: device copies move whole floats");
    sdxl_vk_buf a, b;
    int st = in_(d, src, bytes, &a, e);
    if (!st) st = in_(d, dst, bytes, &b, e);
    if (st) return st;
    const char *s0 = src, *d0 = dst;
    if (s0 < d0 + bytes && d0 < s0 + bytes) { /* overlapping: through a temporary, threads run in any order */
        int t = 0;
        if ((st = tmp_new(d, bytes, &t, e))) return st;
        sdxl_vk_buf tb = sdxl_vk_view(&d->tmp[t], 0, bytes);
        st = sdxl_vk_copy(d->vk, &a, &tb, (int64_t)(bytes / 4), e);
        if (!st) st = sdxl_vk_copy(d->vk, &tb, &b, (int64_t)(bytes / 4), e);
        return done(d, st, e);
    }
    return sdxl_vk_copy(d->vk, &a, &b, (int64_t)(bytes / 4), e);
}

int sdxl_dev_div(sdxl_dev *d, float *x, float s, int64_t n, sdxl_err *e) {
    sdxl_vk_buf bx;
    if (n <= 0) return SDXL_OK;
    int st = out_(d, x, fb(n), &bx, e);
    if (!st) st = sdxl_vk_div(d->vk, &bx, s, n, e);
    return done(d, st, e);
}

int sdxl_dev_place_phase(sdxl_dev *d, const float *p, float *y, int64_t n, int64_t h, int64_t w, int64_t c, int a,
                         int q, sdxl_err *e) {
    sdxl_vk_buf bp, by;
    int st = in_(d, p, fb(n * h * w * c), &bp, e);
    if (!st) st = out_(d, y, fb(4 * n * h * w * c), &by, e);
    if (!st) st = sdxl_vk_place_phase(d->vk, &bp, &by, n, h, w, c, a, q, e);
    return done(d, st, e);
}

int sdxl_dev_transpose(sdxl_dev *d, const float *x, float *y, int64_t n, int64_t rows, int64_t cols, sdxl_err *e) {
    sdxl_vk_buf bx, by;
    if (n <= 0 || rows <= 0 || cols <= 0) return SDXL_OK;
    int st = in_(d, x, fb(n * rows * cols), &bx, e);
    if (!st) st = out_(d, y, fb(n * rows * cols), &by, e);
    if (!st) st = sdxl_vk_transpose(d->vk, &bx, &by, n, rows, cols, e);
    return done(d, st, e);
}

/* ---- GEMM layers ------------------------------------------------------------------------------ */

typedef struct dev_layer {
    sdxl_dev *d;
    sdxl_vk_gemm_layer g;
} dev_layer;

int sdxl_dev_layer_init(sdxl_dev *d, void **impl, int64_t cin, int64_t cout, int kh, int kw, int stride, int pad_t,
                        int pad_l, int pad_b, int pad_r, const void *w, sdxl_dtype wdt, const void *b,
                        sdxl_dtype bdt, sdxl_err *e) {
    dev_layer *l = calloc(1, sizeof *l);
    if (!l) return sdxl_seterr(e, SDXL_ERR_NOMEM, "device: out of memory");
    l->d = d;
    /* bf16 precision: f16 where the matrix units take it (VK_NV_cooperative_matrix has no bf16) */
    sdxl_dtype store = d->prec != SDXL_PREC_BF16 ? SDXL_F32 : sdxl_vk_info(d->vk)->mma ? SDXL_F16 : SDXL_BF16;
    int st = sdxl_vk_conv2d_init(d->vk, &l->g, cin, cout, kh, kw, stride, pad_t, pad_l, pad_b, pad_r, w, wdt, b, bdt,
                                 store, e);
    if (st) {
        free(l);
        return st;
    }
    *impl = l;
    return SDXL_OK;
}

int sdxl_dev_layer_set_weights(void *impl, const float *w, const float *b, sdxl_err *e) {
    dev_layer *l = impl;
    return sdxl_vk_layer_set(l->d->vk, &l->g, w, b, e);
}

void sdxl_dev_layer_free(void *impl) {
    dev_layer *l = impl;
    if (!l) return;
    sdxl_vk_layer_free(l->d->vk, &l->g);
    free(l);
}

int sdxl_dev_linear_fwd(sdxl_dev *d, const void *impl, const float *x, int64_t M, float *y, int flags, sdxl_err *e) {
    const dev_layer *l = impl;
    sdxl_vk_buf bx, by;
    int st = in_(d, x, fb(M * l->g.in), &bx, e);
    if (!st) st = out_(d, y, fb(M * l->g.out), &by, e);
    if (!st) st = sdxl_vk_linear_fwd(d->vk, &l->g, &bx, M, &by, flags, e);
    return done(d, st, e);
}

int sdxl_dev_conv2d_fwd(sdxl_dev *d, const void *impl, const float *x, int64_t n, int64_t h, int64_t w, float *y,
                        int flags, sdxl_err *e) {
    const dev_layer *l = impl;
    const sdxl_vk_gemm_layer *g = &l->g;
    int64_t oh = (h + g->pad_t + g->pad_b - g->kh) / g->stride + 1, ow = (w + g->pad_l + g->pad_r - g->kw) / g->stride + 1;
    if (n <= 0 || h <= 0 || w <= 0 || oh <= 0 || ow <= 0)
        return sdxl_seterr(e, SDXL_ERR_ARG, "conv2d: bad input size %lldx%lldx%lld", (long long)n, (long long)h,
                           (long long)w);
    sdxl_vk_buf bx, by;
    int st = in_(d, x, fb(n * h * w * g->in), &bx, e);
    if (!st) st = out_(d, y, fb(n * oh * ow * g->out), &by, e);
    if (!st) st = sdxl_vk_conv2d_fwd(d->vk, g, &bx, n, h, w, &by, flags, e);
    return done(d, st, e);
}

int sdxl_dev_attention(sdxl_dev *d, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                       float *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads, int head_dim,
                       float scale, int causal, sdxl_err *e) {
    if (batch <= 0 || lq <= 0 || lk <= 0) return SDXL_OK;
    int64_t hd = (int64_t)heads * head_dim;
    sdxl_vk_buf bq, bk, bv, bo;
    int st = in_(d, q, fb((batch * lq - 1) * q_ld + hd), &bq, e);
    if (!st) st = in_(d, k, fb((batch * lk - 1) * kv_ld + hd), &bk, e);
    if (!st) st = in_(d, v, fb((batch * lk - 1) * kv_ld + hd), &bv, e);
    if (!st) st = out_(d, out, fb((batch * lq - 1) * out_ld + hd), &bo, e);
    if (!st)
        st = sdxl_vk_attention(d->vk, &bq, q_ld, &bk, &bv, kv_ld, &bo, out_ld, batch, lq, lk, heads, head_dim, scale,
                               causal, d->prec == SDXL_PREC_BF16 ? SDXL_BF16 : SDXL_F32, e);
    return done(d, st, e);
}

/* ---- the rest ----------------------------------------------------------------------------------- */

int sdxl_dev_group_norm(sdxl_dev *d, const float *x, float *y, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                        const float *gamma, const float *beta, int silu, sdxl_err *e) {
    sdxl_vk_buf bx, by, bg, bb;
    int st = in_(d, x, fb(n * hw * c), &bx, e);
    if (!st) st = out_(d, y, fb(n * hw * c), &by, e);
    if (!st) st = in_(d, gamma, fb(c), &bg, e);
    if (!st) st = in_(d, beta, fb(c), &bb, e);
    if (!st) st = sdxl_vk_group_norm(d->vk, &bx, &by, n, hw, c, groups, eps, &bg, &bb, silu, e);
    return done(d, st, e);
}

int sdxl_dev_layer_norm(sdxl_dev *d, const float *x, float *y, int64_t rows, int64_t c, float eps, const float *gamma,
                        const float *beta, sdxl_err *e) {
    sdxl_vk_buf bx, by, bg, bb;
    int st = in_(d, x, fb(rows * c), &bx, e);
    if (!st) st = out_(d, y, fb(rows * c), &by, e);
    if (!st) st = in_(d, gamma, fb(c), &bg, e);
    if (!st) st = in_(d, beta, fb(c), &bb, e);
    if (!st) st = sdxl_vk_layer_norm(d->vk, &bx, &by, rows, c, eps, &bg, &bb, e);
    return done(d, st, e);
}

int sdxl_dev_softmax_rows(sdxl_dev *d, float *x, int64_t rows, int64_t n, sdxl_err *e) {
    sdxl_vk_buf bx;
    int st = out_(d, x, fb(rows * n), &bx, e);
    if (!st) st = sdxl_vk_softmax_rows(d->vk, &bx, rows, n, e);
    return done(d, st, e);
}

int sdxl_dev_activation(sdxl_dev *d, sdxl_vk_act act, float *x, int64_t n, sdxl_err *e) {
    sdxl_vk_buf bx;
    if (n <= 0) return SDXL_OK;
    int st = out_(d, x, fb(n), &bx, e);
    if (!st) st = sdxl_vk_activation(d->vk, act, &bx, &bx, n, e);
    return done(d, st, e);
}

int sdxl_dev_geglu(sdxl_dev *d, const float *x, float *y, int64_t rows, int64_t f, sdxl_err *e) {
    sdxl_vk_buf bx, by;
    int st = in_(d, x, fb(rows * 2 * f), &bx, e);
    if (!st) st = out_(d, y, fb(rows * f), &by, e);
    if (!st) st = sdxl_vk_geglu(d->vk, &bx, &by, rows, f, e);
    return done(d, st, e);
}

int sdxl_dev_resize_nearest(sdxl_dev *d, const float *x, float *y, int64_t n, int64_t h, int64_t w, int64_t c,
                            int64_t oh, int64_t ow, sdxl_err *e) {
    sdxl_vk_buf bx, by;
    int st = in_(d, x, fb(n * h * w * c), &bx, e);
    if (!st) st = out_(d, y, fb(n * oh * ow * c), &by, e);
    if (!st) st = sdxl_vk_resize_nearest(d->vk, &bx, &by, n, h, w, c, oh, ow, e);
    return done(d, st, e);
}

int sdxl_dev_concat_channels(sdxl_dev *d, const float *a, int64_t ca, const float *b, int64_t cb, float *y,
                             int64_t rows, sdxl_err *e) {
    sdxl_vk_buf ba, bb, by;
    int st = in_(d, a, fb(rows * ca), &ba, e);
    if (!st) st = in_(d, b, fb(rows * cb), &bb, e);
    if (!st) st = out_(d, y, fb(rows * (ca + cb)), &by, e);
    if (!st) st = sdxl_vk_concat_channels(d->vk, &ba, ca, &bb, cb, &by, rows, e);
    return done(d, st, e);
}

int sdxl_dev_add(sdxl_dev *d, const float *a, const float *b, float *y, int64_t n, sdxl_err *e) {
    sdxl_vk_buf ba, bb, by;
    if (n <= 0) return SDXL_OK;
    int st = in_(d, a, fb(n), &ba, e);
    if (!st) st = in_(d, b, fb(n), &bb, e);
    if (!st) st = out_(d, y, fb(n), &by, e);
    if (!st) st = sdxl_vk_add(d->vk, &ba, &bb, &by, n, e);
    return done(d, st, e);
}

int sdxl_dev_axpy(sdxl_dev *d, float s, const float *x, float *y, int64_t n, sdxl_err *e) {
    sdxl_vk_buf bx, by;
    if (n <= 0) return SDXL_OK;
    int st = in_(d, x, fb(n), &bx, e);
    if (!st) st = out_(d, y, fb(n), &by, e);
    if (!st) st = sdxl_vk_axpy(d->vk, s, &bx, &by, n, e);
    return done(d, st, e);
}

int sdxl_dev_scale(sdxl_dev *d, float *x, float s, int64_t n, sdxl_err *e) {
    sdxl_vk_buf bx;
    if (n <= 0) return SDXL_OK;
    int st = out_(d, x, fb(n), &bx, e);
    if (!st) st = sdxl_vk_scale(d->vk, &bx, s, n, e);
    return done(d, st, e);
}

int sdxl_dev_fill(sdxl_dev *d, float *x, float v, int64_t n, sdxl_err *e) {
    sdxl_vk_buf bx;
    if (n <= 0) return SDXL_OK;
    int st = out_(d, x, fb(n), &bx, e);
    if (!st) st = sdxl_vk_fill(d->vk, &bx, v, n, e);
    return done(d, st, e);
}

int sdxl_dev_add_bias(sdxl_dev *d, float *x, const float *bias, int64_t rows, int64_t c, sdxl_err *e) {
    sdxl_vk_buf bx, bb;
    if (rows <= 0) return SDXL_OK;
    int st = out_(d, x, fb(rows * c), &bx, e);
    if (!st) st = in_(d, bias, fb(c), &bb, e);
    if (!st) st = sdxl_vk_add_bias(d->vk, &bx, &bb, rows, c, e);
    return done(d, st, e);
}

int sdxl_dev_timestep_embedding(sdxl_dev *d, const float *t, int64_t n, int dim, int flip_sin_to_cos,
                                float downscale_freq_shift, float max_period, float *out, sdxl_err *e) {
    if (n <= 0 || dim <= 0) return SDXL_OK;
    if (dim == 1) { /* no frequency: the CPU writes the odd tail's zero */
        float z[1] = {0};
        for (int64_t i = 0; i < n; i++) {
            int st = sdxl_dev_copy(d, out + i, z, 4, e);
            if (st) return st;
        }
        return SDXL_OK;
    }
    freqs *fq = NULL;
    for (int i = 0; i < d->nfq && !fq; i++)
        if (d->fq[i].dim == dim && d->fq[i].shift == downscale_freq_shift && d->fq[i].max_period == max_period)
            fq = &d->fq[i];
    int st;
    if (!fq) { /* made once per (dim, shift, max_period), as sdxl_timestep_embedding computes them */
        if (d->nfq == FREQS_MAX) {
            sdxl_vk_release(d->vk, &d->fq[0].buf);
            memmove(d->fq, d->fq + 1, sizeof *d->fq * (FREQS_MAX - 1));
            d->nfq--;
        }
        fq = &d->fq[d->nfq];
        *fq = (freqs){.dim = dim, .shift = downscale_freq_shift, .max_period = max_period};
        if ((st = sdxl_vk_timestep_freqs(d->vk, dim, downscale_freq_shift, max_period, &fq->buf, e))) return st;
        d->nfq++;
    }
    sdxl_vk_buf bt, bo;
    st = in_(d, t, fb(n), &bt, e);
    if (!st) st = out_(d, out, fb(n * dim), &bo, e);
    if (!st) st = sdxl_vk_timestep_embedding(d->vk, &bt, n, dim, flip_sin_to_cos, &fq->buf, &bo, e);
    return done(d, st, e);
}
