/* Golden component `vae`: the VAE decoder and encoder in f32 from both checkpoint layouts.
 * Any case with <case>/image and <case>/mean is an encode case (logvar, std, sample,
 * latents_scaled); any other case with <case>/latents_scaled and <case>/image is a decode case
 * (image NCHW float, optional image_uint8 NHWC). The encoder's noise is the one the golden implies,
 * (sample - mean) / std, so this component does not depend on the generator. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode/vae.h"
#include "golden.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"
#include "tensor/tensor.h"

/* Single components: max abs 1e-4 (README section 6; the reference's own fp32-vs-fp64 spread
 * is 2e-6 to 4e-6 for the VAE). */
#define TOL_ABS 1e-4
/* bf16 rounds both GEMM operands to 8 mantissa bits (relative RMS 2^-9/sqrt(3) = 1.1e-3 each,
 * so NMSE about 2.6e-6 per GEMM); some 35 GEMMs in series give about 1e-4. Measured: decode
 * 4.7e-5, encoder mean 1.5e-4 to 2.4e-4 (its 4 output channels are small differences). The
 * bound is 4x the expected accumulation. */
#define TOL_BF16_NMSE 1e-3

typedef struct model {
    const char *rel;
    const char *tag;
} model;

static const model MODELS[] = {
    {"tiny_sd_xl_base.safetensors", "single-file"},
    {"tiny-sdxl-base/vae", "diffusers"},
};

/* NCHW golden tensor -> NHWC copy; shape returned in s[4]. */
static float *read_nhwc(golden_ctx *g, golden_set *gs, const char *key, int64_t *s) {
    int nd = 0;
    size_t n = 0;
    float *x = golden_f32(g, gs, key, &nd, s, &n);
    if (!x) return NULL;
    if (nd != 4) {
        golden_fail(g, "vae", key, "expected 4 dimensions, got %d", nd);
        free(x);
        return NULL;
    }
    float *y = malloc(n * sizeof(float) + 1);
    if (y) sdxl_nchw_to_nhwc(x, y, s[0], s[1], s[2], s[3]);
    free(x);
    return y;
}

static void decode_case(golden_ctx *g, golden_set *gs, sdxl_vae *v, sdxl_vae *vb, const char *tag, const char *cs) {
    char key[256], name[256];
    int64_t s[4], si[4];
    snprintf(name, sizeof name, "%s/%s", tag, cs);
    snprintf(key, sizeof key, "%s/latents_scaled", cs);
    float *lat = read_nhwc(g, gs, key, s);
    snprintf(key, sizeof key, "%s/image", cs);
    size_t ni = 0;
    float *want = golden_f32(g, gs, key, NULL, si, &ni);
    float *got = malloc(ni * sizeof(float) + 1), *nchw = malloc(ni * sizeof(float) + 1);
    sdxl_err e = {0};
    if (!lat || !want || !got || !nchw) goto done;
    const sdxl_vae_config *cfg = sdxl_vae_get_config(v);
    if (si[1] != cfg->out_channels || si[2] != s[2] * 8 || si[3] != s[3] * 8 || si[0] != s[0]) {
        golden_fail(g, "vae", name, "image shape does not match the latents");
        goto done;
    }
    if (sdxl_vae_decode(v, lat, s[0], s[2], s[3], got, NULL, &e)) {
        golden_fail(g, "vae", name, "decode: %s", e.msg);
        goto done;
    }
    sdxl_nhwc_to_nchw(got, nchw, si[0], si[2], si[3], si[1]);
    golden_check(g, "vae", name, "decode_maxabs", golden_max_abs(nchw, want, ni), TOL_ABS);

    /* decoder_input = latents / scaling_factor checks the factor that was read */
    snprintf(key, sizeof key, "%s/decoder_input", cs);
    if (golden_find(gs, key)) {
        int64_t sd[4];
        float *di = read_nhwc(g, gs, key, sd);
        if (di) {
            size_t nz = (size_t)(s[0] * s[1] * s[2] * s[3]);
            for (size_t i = 0; i < nz; i++)
                lat[i] /= cfg->scaling_factor;
            golden_check(g, "vae", name, "decoder_input_maxabs", golden_max_abs(lat, di, nz), 1e-6);
            for (size_t i = 0; i < nz; i++)
                lat[i] *= cfg->scaling_factor;
            free(di);
        }
    }
    /* uint8: at most +-1 LSB on < 1% of values (README section 6: float noise can flip a rounding) */
    snprintf(key, sizeof key, "%s/image_uint8", cs);
    if (golden_find(gs, key)) {
        size_t nu = 0;
        float *wu = golden_f32(g, gs, key, NULL, NULL, &nu);
        uint8_t *u = malloc(ni + 1);
        if (wu && u && nu == ni) {
            sdxl_vae_to_uint8(got, u, ni); /* both NHWC */
            double maxd = 0, off = 0;
            for (size_t i = 0; i < ni; i++) {
                double d = fabs((double)u[i] - wu[i]);
                if (d > maxd) maxd = d;
                off += d > 0;
            }
            golden_check(g, "vae", name, "uint8_maxdiff", maxd, 1);
            golden_check(g, "vae", name, "uint8_frac_off", off / (double)ni, 0.01);
        } else if (wu) {
            golden_fail(g, "vae", name, "image_uint8 has %zu values, image %zu", nu, ni);
        }
        free(wu);
        free(u);
    }
    if (vb) {
        if (sdxl_vae_decode(vb, lat, s[0], s[2], s[3], got, NULL, &e)) {
            golden_fail(g, "vae", name, "bf16 decode: %s", e.msg);
            goto done;
        }
        sdxl_nhwc_to_nchw(got, nchw, si[0], si[2], si[3], si[1]);
        golden_check(g, "vae", name, "bf16_decode_nmse", golden_nmse(nchw, want, ni), TOL_BF16_NMSE);
    }
done:
    free(lat);
    free(want);
    free(got);
    free(nchw);
}

static void encode_case(golden_ctx *g, golden_set *gs, sdxl_vae *v, sdxl_vae *vb, const char *tag, const char *cs) {
    char key[256], name[256];
    int64_t si[4], sm[4], tmp[4];
    snprintf(name, sizeof name, "%s/%s", tag, cs);
    float *img = NULL, *mean = NULL, *logvar = NULL, *std = NULL, *sample = NULL, *lat = NULL, *noise = NULL;
    float *gm = NULL, *gl = NULL, *gz = NULL;
    snprintf(key, sizeof key, "%s/image", cs);
    img = read_nhwc(g, gs, key, si);
    snprintf(key, sizeof key, "%s/mean", cs);
    mean = read_nhwc(g, gs, key, sm);
    snprintf(key, sizeof key, "%s/logvar", cs);
    logvar = read_nhwc(g, gs, key, tmp);
    snprintf(key, sizeof key, "%s/std", cs);
    std = read_nhwc(g, gs, key, tmp);
    snprintf(key, sizeof key, "%s/sample", cs);
    sample = read_nhwc(g, gs, key, tmp);
    snprintf(key, sizeof key, "%s/latents_scaled", cs);
    lat = read_nhwc(g, gs, key, tmp);
    if (!img || !mean || !logvar || !std || !sample || !lat) goto done;
    const size_t nz = (size_t)(sm[0] * sm[1] * sm[2] * sm[3]);
    int64_t h, w;
    sdxl_vae_latent_size(v, si[2], si[3], &h, &w);
    if (h != sm[2] || w != sm[3] || sm[0] != si[0]) {
        golden_fail(g, "vae", name, "latent size %lldx%lld, golden %lldx%lld", (long long)h, (long long)w,
                    (long long)sm[2], (long long)sm[3]);
        goto done;
    }
    noise = malloc(nz * sizeof(float));
    gm = malloc(nz * sizeof(float));
    gl = malloc(nz * sizeof(float));
    gz = malloc(nz * sizeof(float));
    if (!noise || !gm || !gl || !gz) goto done;
    for (size_t i = 0; i < nz; i++)
        noise[i] = (sample[i] - mean[i]) / std[i];
    sdxl_err e = {0};
    if (sdxl_vae_encode(v, img, si[0], si[2], si[3], noise, gz, gm, gl, NULL, &e)) {
        golden_fail(g, "vae", name, "encode: %s", e.msg);
        goto done;
    }
    golden_check(g, "vae", name, "mean_maxabs", golden_max_abs(gm, mean, nz), TOL_ABS);
    golden_check(g, "vae", name, "logvar_maxabs", golden_max_abs(gl, logvar, nz), TOL_ABS);
    golden_check(g, "vae", name, "latents_scaled_maxabs", golden_max_abs(gz, lat, nz), TOL_ABS);
    if (vb) {
        if (sdxl_vae_encode(vb, img, si[0], si[2], si[3], noise, gz, gm, gl, NULL, &e)) {
            golden_fail(g, "vae", name, "bf16 encode: %s", e.msg);
            goto done;
        }
        golden_check(g, "vae", name, "bf16_mean_nmse", golden_nmse(gm, mean, nz), TOL_BF16_NMSE);
    }
done:
    free(img);
    free(mean);
    free(logvar);
    free(std);
    free(sample);
    free(lat);
    free(noise);
    free(gm);
    free(gl);
    free(gz);
}

static void run_model(golden_ctx *g, golden_set *gs, const model *m, int with_bf16) {
    char path[4096];
    golden_path(path, sizeof path, g->models_dir, m->rel);
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c32 = NULL, *c16 = NULL;
    sdxl_vae *v = NULL, *vb = NULL;
    if (sdxl_ckpt_open(path, &ck, &e) || sdxl_compute_new_device(SDXL_PREC_F32, g->device, &c32, &e) || sdxl_vae_load(ck, c32, &v, &e)) {
        golden_fail(g, "vae", m->tag, "load %s: %s", path, e.msg);
        goto done;
    }
    if (with_bf16 && sdxl_compute_new_device(SDXL_PREC_BF16, g->device, &c16, &e) != SDXL_OK) {
        printf("SKIP vae/%s bf16 (%s)\n", m->tag, e.msg);
        c16 = NULL;
    } else if (with_bf16 && sdxl_vae_load(ck, c16, &vb, &e)) {
        golden_fail(g, "vae", m->tag, "bf16 load %s: %s", path, e.msg);
        goto done;
    }
    const sdxl_json *cases = sdxl_json_get(gs->json, "cases");
    if (!cases || cases->type != SDXL_JSON_OBJECT || cases->len == 0) {
        golden_fail(g, "vae", m->tag, "no \"cases\" object in vae.json");
        goto done;
    }
    for (size_t k = 0; k < cases->len; k++) {
        const char *cs = cases->keys[k];
        char a[256], b[256], d[256];
        snprintf(a, sizeof a, "%s/latents_scaled", cs);
        snprintf(b, sizeof b, "%s/image", cs);
        snprintf(d, sizeof d, "%s/mean", cs);
        if (golden_find(gs, b) && golden_find(gs, d))
            encode_case(g, gs, v, vb, m->tag, cs);
        else if (golden_find(gs, a) && golden_find(gs, b))
            decode_case(g, gs, v, vb, m->tag, cs);
        else
            golden_fail(g, "vae", cs, "case has neither latents_scaled+image nor image+mean tensors");
    }
done:
    sdxl_vae_free(v);
    sdxl_vae_free(vb);
    if (c32) sdxl_compute_free(c32);
    if (c16) sdxl_compute_free(c16);
    if (ck) sdxl_ckpt_close(ck);
}

int golden_vae(golden_ctx *g) {
    golden_set gs;
    if (golden_open(g, "vae", &gs) != 0) return 1;
    for (size_t i = 0; i < sizeof MODELS / sizeof MODELS[0]; i++)
        run_model(g, &gs, &MODELS[i], i == 0);
    golden_close(&gs);
    return 0;
}
