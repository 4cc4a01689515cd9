/* fp8-stored checkpoints: the tiny base model is rewritten here with its UNet (F8_E4M3) or every
 * float tensor (F8_E5M2) in fp8, next to a reference file holding the same values decoded by a
 * plain formula into F32. The gate's conversion must equal the reference bit for bit, and a UNet
 * loaded from the fp8 file must compute exactly what the one loaded from the reference computes
 * in f32 and in bf16: the weights it converted are the same bits.
 *
 *   test_denoise_fp8 [DIR]   DIR: keep the four files there (the CLI test runs info and generate on them) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "denoise/unet.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "tensor/tensor.h"

#define MODEL SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors"
#define UNET_PREFIX "model.diffusion_model."

typedef struct fmt {
    const char *name;
    sdxl_st_dtype dt;
    int exp_bits, man_bits, bias;
    int unet_only;
} fmt;

static const fmt FMTS[2] = {
    {"e4m3", SDXL_ST_F8_E4M3, 4, 3, 7, 1},
    {"e5m2", SDXL_ST_F8_E5M2, 5, 2, 15, 0},
};

/* Plain decode from the format definition (e4m3fn: S.1111.111 is NaN, no inf). */
static float decode(const fmt *f, unsigned char b) {
    int emax = (1 << f->exp_bits) - 1, mmax = (1 << f->man_bits) - 1;
    int e = (b >> f->man_bits) & emax, m = b & mmax;
    float v;
    if (f->dt == SDXL_ST_F8_E4M3 && e == emax && m == mmax) v = NAN;
    else if (f->dt == SDXL_ST_F8_E5M2 && e == emax) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexpf((float)m, 1 - f->bias - f->man_bits);
    else v = ldexpf((float)((1 << f->man_bits) + m), e - f->bias - f->man_bits);
    return b & 0x80 ? -v : v;
}

/* Magnitudes of the finite positive codes, ascending with the code. */
typedef struct codes {
    float v[128];
    unsigned n;
} codes;

static void codes_init(const fmt *f, codes *c) {
    c->n = 0;
    while (c->n < 128 && isfinite(decode(f, (unsigned char)c->n))) {
        c->v[c->n] = decode(f, (unsigned char)c->n);
        c->n++;
    }
}

/* Nearest code, ties to the even code, saturating at the largest finite value. */
static unsigned char encode(const codes *c, float x) {
    unsigned char sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (isnan(a)) return 0x7f;
    unsigned lo = 0, hi = c->n - 1; /* largest code with v <= a */
    if (a >= c->v[hi]) return (unsigned char)(sign | hi);
    while (lo < hi) {
        unsigned mid = (lo + hi + 1) / 2;
        if (c->v[mid] <= a) lo = mid;
        else hi = mid - 1;
    }
    float dl = a - c->v[lo], dh = c->v[lo + 1] - a;
    unsigned k = dh < dl || (dh == dl && (lo & 1)) ? lo + 1 : lo;
    return (unsigned char)(sign | k);
}

static int is_float(sdxl_st_dtype t) { return t == SDXL_ST_F32 || t == SDXL_ST_F16 || t == SDXL_ST_BF16; }

/* Writes DIR/tiny_fp8_<fmt>.safetensors and DIR/tiny_fp8_<fmt>_ref.safetensors. */
static int write_pair(const fmt *f, const sdxl_st_file *src, const char *p8, const char *pref) {
    sdxl_err e = {0};
    sdxl_st_writer *w8 = NULL, *wr = NULL;
    size_t n = sdxl_st_count(src);
    void **bufs = calloc(2 * n, sizeof *bufs);
    codes cd;
    codes_init(f, &cd);
    int rc = !bufs || sdxl_st_writer_new(&w8, &e) || sdxl_st_writer_new(&wr, &e);
    for (size_t i = 0; i < n && !rc; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(src, i);
        int conv = is_float(t->dtype) && (!f->unet_only || !strncmp(t->name, UNET_PREFIX, strlen(UNET_PREFIX)));
        if (!conv) {
            rc = sdxl_st_writer_add(w8, t->name, t->dtype, t->ndim, t->shape, t->data, &e) ||
                 sdxl_st_writer_add(wr, t->name, t->dtype, t->ndim, t->shape, t->data, &e);
            continue;
        }
        size_t k = (size_t)t->numel;
        float *x = malloc((k ? k : 1) * sizeof *x);
        unsigned char *q = malloc(k ? k : 1);
        bufs[2 * i] = q;
        bufs[2 * i + 1] = x;
        if (!x || !q || sdxl_st_to_f32(src, t, x, &e)) {
            rc = 1;
            break;
        }
        for (size_t j = 0; j < k; j++) {
            q[j] = encode(&cd, x[j]);
            x[j] = decode(f, q[j]);
        }
        rc = sdxl_st_writer_add(w8, t->name, f->dt, t->ndim, t->shape, q, &e) ||
             sdxl_st_writer_add(wr, t->name, SDXL_ST_F32, t->ndim, t->shape, x, &e);
    }
    if (!rc) rc = sdxl_st_writer_meta(w8, "format", "pt", &e) || sdxl_st_writer_finish(w8, p8, &e) ||
                  sdxl_st_writer_meta(wr, "format", "pt", &e) || sdxl_st_writer_finish(wr, pref, &e);
    if (rc) fprintf(stderr, "write %s: %s\n", p8, e.msg);
    sdxl_st_writer_free(w8);
    sdxl_st_writer_free(wr);
    for (size_t i = 0; bufs && i < 2 * n; i++) free(bufs[i]);
    free(bufs);
    return rc;
}

/* Every converted tensor of the fp8 file, through the gate, equals the reference's F32 bits. */
static void check_gate(const fmt *f, const char *p8, const char *pref) {
    sdxl_err e = {0};
    sdxl_st_file *a = NULL, *b = NULL;
    CHECK(sdxl_st_open(p8, &a, &e) == SDXL_OK, "%s: %s", p8, e.msg);
    CHECK(sdxl_st_open(pref, &b, &e) == SDXL_OK, "%s: %s", pref, e.msg);
    if (!a || !b) goto done;
    size_t n8 = 0, diff = 0, bytes8 = 0;
    for (size_t i = 0; i < sdxl_st_count(a); i++) {
        const sdxl_st_tensor *t = sdxl_st_at(a, i), *r = sdxl_st_find(b, t->name);
        if (t->dtype != f->dt || !r) continue;
        n8++;
        bytes8 += t->nbytes;
        float *x = malloc((size_t)t->numel * sizeof *x);
        if (x && sdxl_st_to_f32(a, t, x, &e) == SDXL_OK) diff += memcmp(x, r->data, (size_t)r->nbytes) != 0;
        else diff++;
        free(x);
    }
    printf("%s: %zu fp8 tensors (%zu bytes), %zu differ from the reference decode\n", f->name, n8, bytes8, diff);
    CHECK(n8 > 800 && diff == 0, "%s: gate conversion equals the reference bit for bit", f->name);
done:
    sdxl_st_close(a);
    sdxl_st_close(b);
}

static float *unet_out(sdxl_prec prec, const char *path, const sdxl_unet_in *in, size_t nout, sdxl_err *e) {
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_unet *u = NULL;
    float *y = malloc(nout * sizeof *y);
    sdxl_unet_opts o;
    sdxl_unet_opts_init(&o);
    o.head_dim = 16; /* the tiny model's (its yaml says so; single files carry no config) */
    int rc = !y || sdxl_ckpt_open(path, &ck, e) || sdxl_compute_new(prec, &c, e) || sdxl_unet_load(c, ck, &o, &u, e) ||
             sdxl_unet_forward(u, in, y, e);
    sdxl_unet_free(u);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
    if (rc) {
        free(y);
        return NULL;
    }
    return y;
}

/* The UNet loaded from fp8 computes bit for bit what the one from the reference computes. */
static void check_unet(const fmt *f, const char *p8, const char *pref) {
    enum { B = 1, H = 8, W = 8, L = 77, CTX = 96, POOLED = 64, NT = 6 };
    static float x[B * 4 * H * W], ctx[B * L * CTX], pooled[B * POOLED], tids[B * NT];
    float t = 500.0f;
    uint64_t s = 12345;
    float *all[3] = {x, ctx, pooled};
    size_t lens[3] = {sizeof x / 4, sizeof ctx / 4, sizeof pooled / 4};
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < lens[a]; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            all[a][i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2 - 1);
        }
    for (int i = 0; i < NT; i++) tids[i] = (float)(64 * (i % 3));
    sdxl_unet_in in = {.batch = B, .h = H, .w = W, .x = x, .t = &t, .context = ctx, .ctx_len = L, .pooled = pooled,
                       .pooled_dim = POOLED, .time_ids = tids, .n_time_ids = NT};
    size_t nout = sizeof x / 4;
    for (int p = 0; p < 2; p++) {
        sdxl_prec prec = p ? SDXL_PREC_BF16 : SDXL_PREC_F32;
        sdxl_err e = {0};
        float *a = unet_out(prec, p8, &in, nout, &e);
        CHECK(a != NULL, "%s: UNet from the fp8 file (%s): %s", f->name, p ? "bf16" : "f32", e.msg);
        float *b = unet_out(prec, pref, &in, nout, &e);
        CHECK(b != NULL, "%s: UNet from the reference file: %s", f->name, e.msg);
        if (a && b) {
            int finite = 1;
            for (size_t i = 0; i < nout; i++) finite &= isfinite(a[i]);
            CHECK(finite && !memcmp(a, b, nout * sizeof *a), "%s: %s UNet output from fp8 equals the reference's bit for bit",
                  f->name, p ? "bf16" : "f32");
        }
        free(a);
        free(b);
    }
}

int main(int argc, char **argv) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", argc > 1 ? argv[1] : ".");
    sdxl_err e = {0};
    sdxl_st_file *src = NULL;
    CHECK(sdxl_st_open(MODEL, &src, &e) == SDXL_OK, "%s: %s", MODEL, e.msg);
    if (!src) return check_done();
    for (int i = 0; i < 2; i++) {
        const fmt *f = &FMTS[i];
        char p8[600], pref[600];
        snprintf(p8, sizeof p8, "%s/tiny_fp8_%s.safetensors", dir, f->name);
        snprintf(pref, sizeof pref, "%s/tiny_fp8_%s_ref.safetensors", dir, f->name);
        CHECK(write_pair(f, src, p8, pref) == 0, "%s: files written", f->name);
        check_gate(f, p8, pref);
        check_unet(f, p8, pref);
        if (argc < 2) {
            unlink(p8);
            unlink(pref);
        }
    }
    sdxl_st_close(src);
    return check_done();
}
