/* decode/vae: loading (real key tables in validation-only mode, bad files), slicing, tiling,
 * the memory estimate against the allocation and RSS, bf16 against f32, uint8 rounding, bad
 * arguments. The golden component `vae` checks the numbers against the reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/mem.h"
#include "check.h"
#include "decode/vae.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "tensor/ops.h"

#define MODELS SDXL_TEST_DATA "/golden/models"

static double max_abs(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* ---- the real key tables, as sparse files, validate ----------------------------------------- */

static sdxl_st_dtype dtype_of(const char *s) {
    if (!strcmp(s, "F16")) return SDXL_ST_F16;
    if (!strcmp(s, "F32")) return SDXL_ST_F32;
    if (!strcmp(s, "BF16")) return SDXL_ST_BF16;
    if (!strcmp(s, "I64")) return SDXL_ST_I64;
    return SDXL_ST_F64;
}

/* Writes every tensor of a key table (name, dtype, [shape]) as a hole; returns first_stage params. */
static int64_t write_sparse(const char *tsv, const char *out) {
    FILE *f = fopen(tsv, "r");
    CHECK(f != NULL, "open %s", tsv);
    if (!f) return -1;
    sdxl_err e = {0};
    sdxl_st_writer *w = NULL;
    sdxl_st_writer_new(&w, &e);
    char line[1024];
    int64_t vae_params = 0;
    int ok = 1;
    while (fgets(line, sizeof line, f)) {
        char name[512], dt[16], shp[256];
        if (sscanf(line, "%511s %15s %255s", name, dt, shp) != 3 || shp[0] != '[') continue;
        int64_t shape[8];
        int nd = 0;
        for (char *p = shp + 1; *p && *p != ']' && nd < 8;) {
            shape[nd++] = strtoll(p, &p, 10);
            if (*p == ',') p++;
        }
        int64_t numel = 1;
        for (int i = 0; i < nd; i++)
            numel *= shape[i];
        if (!strncmp(name, "first_stage_model.", 18)) vae_params += numel;
        if (sdxl_st_writer_add(w, name, dtype_of(dt), nd, shape, NULL, &e)) {
            ok = 0;
            break;
        }
    }
    fclose(f);
    if (ok && sdxl_st_writer_finish(w, out, &e)) ok = 0;
    CHECK(ok, "sparse file from %s: %s", tsv, e.msg);
    sdxl_st_writer_free(w);
    return ok ? vae_params : -1;
}

static void test_key_tables(void) {
    const char *tables[] = {SDXL_TEST_DATA "/golden/keys/sdxl_base_keys.tsv",
                            SDXL_TEST_DATA "/golden/keys/sdxl_refiner_keys.tsv"};
    for (int t = 0; t < 2; t++) {
        const char *path = "test_decode_vae_keys.safetensors";
        int64_t want = write_sparse(tables[t], path);
        if (want < 0) continue;
        sdxl_err e = {0};
        sdxl_ckpt *ck = NULL;
        sdxl_vae_config cfg;
        int rc = sdxl_ckpt_open(path, &ck, &e);
        CHECK(rc == SDXL_OK, "open sparse %s: %s", tables[t], e.msg);
        if (!rc) {
            rc = sdxl_vae_validate(ck, &cfg, &e);
            CHECK(rc == SDXL_OK, "validate %s: %s", tables[t], e.msg);
            if (!rc) {
                CHECK(cfg.n_levels == 4 && cfg.ch[0] == 128 && cfg.ch[1] == 256 && cfg.ch[2] == 512 && cfg.ch[3] == 512,
                      "levels %d channels %d %d %d %d", cfg.n_levels, cfg.ch[0], cfg.ch[1], cfg.ch[2], cfg.ch[3]);
                CHECK(cfg.latent_channels == 4 && cfg.in_channels == 3 && cfg.out_channels == 3, "io channels");
                CHECK(cfg.enc_resnets == 2 && cfg.dec_resnets == 3, "resnets %d/%d", cfg.enc_resnets, cfg.dec_resnets);
                CHECK(cfg.naming == SDXL_NAMING_ORIGINAL, "naming %d", (int)cfg.naming);
                CHECK(cfg.scaling_factor == 0.13025f, "scaling factor %g", cfg.scaling_factor);
                CHECK(cfg.n_params == want, "params %lld, table %lld", (long long)cfg.n_params, (long long)want);
            }
            sdxl_ckpt_close(ck);
        }
        unlink(path);
    }
}

/* ---- bad files ----------------------------------------------------------------------------- */

enum { BAD_MISSING, BAD_SHAPE, BAD_DTYPE, BAD_EXTRA };

/* Copies the tiny diffusers VAE with one defect and returns the load error text. */
static int load_bad(int kind, const char *victim, char *msg, size_t cap) {
    sdxl_err e = {0};
    sdxl_st_file *src = NULL;
    if (sdxl_st_open(MODELS "/tiny-sdxl-base/vae/diffusion_pytorch_model.safetensors", &src, &e)) {
        CHECK(0, "open tiny vae: %s", e.msg);
        return -1;
    }
    sdxl_st_writer *w = NULL;
    sdxl_st_writer_new(&w, &e);
    static const int32_t zeros[4096];
    for (size_t i = 0; i < sdxl_st_count(src); i++) {
        const sdxl_st_tensor *t = sdxl_st_at(src, i);
        if (!strcmp(t->name, victim)) {
            if (kind == BAD_MISSING) continue;
            if (kind == BAD_SHAPE) {
                int64_t s[8];
                for (int d = 0; d < t->ndim; d++)
                    s[d] = t->shape[d];
                s[0] += 1;
                sdxl_st_writer_add(w, t->name, t->dtype, t->ndim, s, NULL, &e);
                continue;
            }
            if (kind == BAD_DTYPE) {
                sdxl_st_writer_add(w, t->name, SDXL_ST_I32, t->ndim, t->shape, zeros, &e);
                continue;
            }
        }
        sdxl_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, &e);
    }
    if (kind == BAD_EXTRA) {
        const int64_t s[1] = {4};
        sdxl_st_writer_add(w, victim, SDXL_ST_F16, 1, s, zeros, &e);
    }
    const char *path = "test_decode_vae_bad.safetensors";
    int rc = sdxl_st_writer_finish(w, path, &e);
    sdxl_st_writer_free(w);
    sdxl_st_close(src);
    CHECK(rc == SDXL_OK, "write bad file: %s", e.msg);
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_vae *v = NULL;
    sdxl_err_clear(&e);
    rc = sdxl_ckpt_open(path, &ck, &e);
    if (!rc) {
        sdxl_compute_new(SDXL_PREC_F32, &c, &e);
        rc = sdxl_vae_load(ck, c, &v, &e);
        sdxl_vae_free(v);
        sdxl_compute_free(c);
        sdxl_ckpt_close(ck);
    }
    unlink(path);
    snprintf(msg, cap, "%s", e.msg);
    return rc;
}

static void test_bad_files(void) {
    char msg[SDXL_ERR_MSG_MAX];
    struct {
        int kind;
        const char *victim;
    } cases[] = {
        {BAD_MISSING, "decoder.mid_block.attentions.0.to_q.weight"},
        {BAD_MISSING, "encoder.down_blocks.1.downsamplers.0.conv.bias"},
        {BAD_SHAPE, "decoder.up_blocks.2.resnets.0.conv1.weight"},
        {BAD_SHAPE, "encoder.conv_norm_out.weight"},
        {BAD_DTYPE, "decoder.conv_in.bias"},
        {BAD_EXTRA, "decoder.up_blocks.1.resnets.0.conv_shortcut.bias"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = load_bad(cases[i].kind, cases[i].victim, msg, sizeof msg);
        CHECK(rc != SDXL_OK, "defect %d in %s is rejected", cases[i].kind, cases[i].victim);
        CHECK(strstr(msg, cases[i].victim) != NULL, "error names \"%s\": %s", cases[i].victim, msg);
    }
}

/* ---- modes: slicing, tiling, estimate ----------------------------------------------------- */

static void test_modes(sdxl_vae *v, sdxl_compute *c) {
    const sdxl_vae_config *cfg = sdxl_vae_get_config(v);
    const int64_t n = 2, h = 24, w = 40, lc = cfg->latent_channels, oc = cfg->out_channels;
    const int64_t nz = n * h * w * lc, ni = n * h * 8 * w * 8 * oc;
    float *z = malloc(nz * 4), *a = malloc(ni * 4), *b = malloc(ni * 4);
    uint64_t seed = 7;
    check_fill_uniform(z, nz, -0.4f, 0.4f, &seed); /* scaled latents: about N(0, 1) * 0.13 / 0.13 */
    sdxl_err e = {0};
    sdxl_vae_run r;
    sdxl_vae_run_init(&r);
    r.tile = SDXL_VAE_TILE_OFF;
    int rc = sdxl_vae_decode(v, z, n, h, w, a, &r, &e);
    CHECK(rc == SDXL_OK, "decode sliced: %s", e.msg);
    uint64_t est = sdxl_vae_decode_bytes(cfg, n, h, w, sdxl_compute_prec(c), &r);
    CHECK(est == sdxl_vae_last_bytes(v), "estimate %llu == allocated %llu (sliced)", (unsigned long long)est,
          (unsigned long long)sdxl_vae_last_bytes(v));
    r.slice = 0;
    rc = sdxl_vae_decode(v, z, n, h, w, b, &r, &e);
    CHECK(rc == SDXL_OK, "decode batched: %s", e.msg);
    est = sdxl_vae_decode_bytes(cfg, n, h, w, sdxl_compute_prec(c), &r);
    CHECK(est == sdxl_vae_last_bytes(v), "estimate == allocated (batched)");
    /* the same arithmetic per image; oneDNN may block a batch differently: f32 rounding only */
    double d = max_abs(b, a, ni);
    CHECK(d <= 1e-5, "batched vs sliced max abs %g <= 1e-5", d);

    r.slice = 1;
    r.tile = SDXL_VAE_TILE_ON;
    r.tile_latent = 64; /* one tile covers the latent: exactly the untiled decode */
    rc = sdxl_vae_decode(v, z, n, h, w, b, &r, &e);
    CHECK(rc == SDXL_OK && memcmp(a, b, ni * 4) == 0, "a single tile is the untiled decode");
    r.tile_latent = 16;
    r.tile_overlap = 8;
    rc = sdxl_vae_decode(v, z, n, h, w, b, &r, &e);
    CHECK(rc == SDXL_OK, "decode tiled: %s", e.msg);
    est = sdxl_vae_decode_bytes(cfg, n, h, w, sdxl_compute_prec(c), &r);
    CHECK(est == sdxl_vae_last_bytes(v), "estimate == allocated (tiled)");
    double nm16 = check_nmse_f(b, a, ni);
    r.tile_latent = 20;
    r.tile_overlap = 12;
    rc = sdxl_vae_decode(v, z, n, h, w, b, &r, &e);
    CHECK(rc == SDXL_OK, "decode tiled: %s", e.msg);
    double nm = check_nmse_f(b, a, ni);
    d = max_abs(b, a, ni);
    printf("tiled decode of a 24x40 latent vs untiled: tiles 16/overlap 8 NMSE %.3g; tiles 20/overlap 12 NMSE %.3g "
           "(max abs %.3g)\n",
           nm16, nm, d);
    /* Tiles differ from the whole image where a tile's zero padding and its own GroupNorm
     * statistics reach in: the decoder's receptive field is about 16 latent pixels, larger than
     * these tiles. On this random VAE bigger tiles converge (64x96 latent: NMSE 5e-3 at tile 32,
     * 1.3e-3 at 48, 3.5e-4 at 64, docs/vae.md); a misplaced tile or a blend that is not a
     * partition of unity gives NMSE above 0.1. */
    CHECK(nm16 <= 5e-2 && nm <= 2.5e-2, "tiled vs untiled NMSE %g (tile 16), %g (tile 20)", nm16, nm);
    CHECK(nm < nm16, "bigger tiles and overlap are closer to the untiled decode");

    /* tiled vs untiled encode of the decoded image */
    const int64_t H = h * 8, W = w * 8;
    float *m0 = malloc(nz * 4), *m1 = malloc(nz * 4), *l0 = malloc(nz * 4), *l1 = malloc(nz * 4);
    r.tile = SDXL_VAE_TILE_OFF;
    rc = sdxl_vae_encode(v, a, n, H, W, NULL, NULL, m0, l0, &r, &e);
    CHECK(rc == SDXL_OK, "encode: %s", e.msg);
    est = sdxl_vae_encode_bytes(cfg, n, H, W, sdxl_compute_prec(c), &r);
    CHECK(est == sdxl_vae_last_bytes(v), "encode estimate == allocated");
    r.tile = SDXL_VAE_TILE_ON;
    rc = sdxl_vae_encode(v, a, n, H, W, NULL, NULL, m1, l1, &r, &e);
    CHECK(rc == SDXL_OK, "tiled encode: %s", e.msg);
    est = sdxl_vae_encode_bytes(cfg, n, H, W, sdxl_compute_prec(c), &r);
    CHECK(est == sdxl_vae_last_bytes(v), "tiled encode estimate == allocated");
    nm = check_nmse_f(m1, m0, nz);
    printf("tiled encode (tiles 20, overlap 12) vs untiled: mean NMSE %.3g\n", nm);
    /* the encoder sees the same tile-edge effect as the decoder (see above) */
    CHECK(nm <= 5e-2, "tiled vs untiled encode NMSE %g <= 5e-2", nm);
    /* mode: latents = scaling_factor * mean */
    rc = sdxl_vae_encode(v, a, 1, H, W, NULL, l1, NULL, NULL, NULL, &e);
    CHECK(rc == SDXL_OK, "encode mode: %s", e.msg);
    int ok = 1;
    for (int64_t i = 0; i < nz / 2; i++)
        ok &= l1[i] == m0[i] * cfg->scaling_factor;
    CHECK(ok, "latents without noise are scaling_factor * mean");
    free(m0);
    free(m1);
    free(l0);
    free(l1);
    free(z);
    free(a);
    free(b);
}

/* ---- the estimate against RSS growth -------------------------------------------------------- */

static void test_rss(const sdxl_ckpt *ck) {
    sdxl_err e = {0};
    sdxl_compute *c = NULL;
    sdxl_vae *v = NULL;
    if (sdxl_compute_new(SDXL_PREC_F32, &c, &e) || sdxl_vae_load(ck, c, &v, &e)) {
        CHECK(0, "load: %s", e.msg);
        return;
    }
    const sdxl_vae_config *cfg = sdxl_vae_get_config(v);
    const int64_t h = 64, w = 64, nz = h * w * cfg->latent_channels, ni = nz / cfg->latent_channels * 64 * 3;
    float *z = malloc(nz * 4), *img = malloc(ni * 4);
    uint64_t seed = 3;
    check_fill_uniform(z, nz, -0.4f, 0.4f, &seed);
    memset(img, 0, ni * 4);
    /* warm the primitives on a small shape so their creation is not counted */
    sdxl_vae_decode(v, z, 1, 8, 8, img, NULL, &e);
    sdxl_vae_trim(v);
    sdxl_mem_stats m0, m1;
    sdxl_mem_query(&m0);
    int rc = sdxl_vae_decode(v, z, 1, h, w, img, NULL, &e);
    sdxl_mem_query(&m1);
    CHECK(rc == SDXL_OK, "decode 512x512: %s", e.msg);
    uint64_t est = sdxl_vae_decode_bytes(cfg, 1, h, w, SDXL_PREC_F32, NULL);
    double grow = (double)m1.rss - (double)m0.rss;
    printf("512x512 decode (tiny VAE): estimate %.1f MB, RSS growth %.1f MB\n", est / 1e6, grow / 1e6);
    /* The workspace is all written, so RSS grows by it; oneDNN's scratch and new primitives for
     * the large shapes come on top (allow 25% + 16 MB). */
    CHECK(grow >= 0.9 * est && grow <= 1.25 * est + 16e6, "RSS growth %.0f vs estimate %llu", grow,
          (unsigned long long)est);
    free(z);
    free(img);
    sdxl_vae_free(v);
    sdxl_compute_free(c);
}

/* ---- bf16 ---------------------------------------------------------------------------------- */

static void test_bf16(const sdxl_ckpt *ck, sdxl_vae *v32) {
    sdxl_err e = {0};
    sdxl_compute *c = NULL;
    sdxl_vae *v = NULL;
    if (sdxl_compute_new(SDXL_PREC_BF16, &c, &e) || sdxl_vae_load(ck, c, &v, &e)) {
        printf("SKIP bf16: %s\n", e.msg);
        if (c) sdxl_compute_free(c);
        return;
    }
    const int64_t h = 16, w = 12, nz = h * w * 4, ni = h * w * 64 * 3;
    float *z = malloc(nz * 4), *a = malloc(ni * 4), *b = malloc(ni * 4);
    uint64_t seed = 11;
    check_fill_uniform(z, nz, -0.4f, 0.4f, &seed);
    int rc = sdxl_vae_decode(v32, z, 1, h, w, a, NULL, &e);
    rc |= sdxl_vae_decode(v, z, 1, h, w, b, NULL, &e);
    CHECK(rc == SDXL_OK, "decode: %s", e.msg);
    double nm = check_nmse_f(b, a, ni);
    printf("bf16 vs f32 decode NMSE %.3g\n", nm);
    /* bf16 GEMM operands round to 8 mantissa bits: about 2.6e-6 NMSE per GEMM, some 35 in
     * series (docs/vae.md); the bound is 4x that accumulation. nm > 0 proves bf16 ran. */
    CHECK(nm > 0 && nm <= 1e-3, "bf16 vs f32 NMSE %g in (0, 1e-3]", nm);
    free(z);
    free(a);
    free(b);
    sdxl_vae_free(v);
    sdxl_compute_free(c);
}

/* ---- uint8 and bad arguments ---------------------------------------------------------------- */

static void test_uint8(void) {
    const float x[] = {-1.0f, 1.0f, 0.0f, -3.0f, 3.0f, NAN, 1.0f / 255.0f - 1.0f, -1.0f + 3.0f / 255.0f};
    uint8_t u[8];
    sdxl_vae_to_uint8(x, u, 8);
    CHECK(u[0] == 0 && u[1] == 255, "ends %d %d", u[0], u[1]);
    CHECK(u[2] == 128, "0 -> 127.5 rounds half to even: %d", u[2]);
    CHECK(u[3] == 0 && u[4] == 255 && u[5] == 0, "clamp and NaN: %d %d %d", u[3], u[4], u[5]);
    /* x/2+0.5 = 0.5/255 -> 0.5 -> 0 (half to even); 1.5/255 -> 2 */
    float y6 = (x[6] / 2.0f + 0.5f) * 255.0f, y7 = (x[7] / 2.0f + 0.5f) * 255.0f;
    CHECK(u[6] == (uint8_t)nearbyintf(y6) && u[7] == (uint8_t)nearbyintf(y7), "f32 order of operations");
}

static void test_bad_args(sdxl_vae *v) {
    sdxl_err e = {0};
    float z[64] = {0}, img[4096];
    CHECK(sdxl_vae_decode(v, z, 0, 2, 2, img, NULL, &e) == SDXL_ERR_ARG, "batch 0");
    CHECK(sdxl_vae_decode(v, z, 1, 0, 2, img, NULL, &e) == SDXL_ERR_ARG, "height 0");
    CHECK(sdxl_vae_decode(v, z, 1, (int64_t)1 << 40, 2, img, NULL, &e) == SDXL_ERR_ARG, "huge height");
    CHECK(sdxl_vae_encode(v, img, 1, 4, 4, NULL, z, NULL, NULL, NULL, &e) == SDXL_ERR_ARG, "image below one latent");
    sdxl_vae_run big;
    sdxl_vae_run_init(&big);
    big.slice = 0;
    big.tile = SDXL_VAE_TILE_OFF;
    CHECK(sdxl_vae_decode(v, z, 4096, 16384, 16384, img, &big, &e) == SDXL_ERR_LIMIT, "4096 huge images: %s", e.msg);
    CHECK(sdxl_vae_decode_bytes(sdxl_vae_get_config(v), 4096, 16384, 16384, SDXL_PREC_F32, &big) == 0,
          "no estimate for an impossible size");
    sdxl_vae_run r;
    sdxl_vae_run_init(&r);
    r.tile = SDXL_VAE_TILE_ON;
    r.tile_latent = 4;
    r.tile_overlap = 4;
    float zz[4 * 12 * 12] = {0};
    float *out = malloc(sizeof(float) * 96 * 96 * 3);
    CHECK(sdxl_vae_decode(v, zz, 1, 12, 12, out, &r, &e) == SDXL_ERR_ARG, "overlap >= tile: %s", e.msg);
    free(out);
    CHECK(sdxl_vae_decode_bytes(sdxl_vae_get_config(v), 1, -1, 2, SDXL_PREC_F32, NULL) == 0, "estimate of a bad size");
}

int main(void) {
    test_uint8();
    test_key_tables();
    test_bad_files();
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_vae *v = NULL;
    if (sdxl_ckpt_open(MODELS "/tiny_sd_xl_base.safetensors", &ck, &e) || sdxl_compute_new(SDXL_PREC_F32, &c, &e) ||
        sdxl_vae_load(ck, c, &v, &e)) {
        CHECK(0, "load tiny VAE: %s", e.msg);
        return check_done();
    }
    const sdxl_vae_config *cfg = sdxl_vae_get_config(v);
    CHECK(cfg->n_levels == 4 && cfg->ch[0] == 32 && cfg->ch[3] == 64 && cfg->latent_channels == 4,
          "tiny config from shapes");
    test_bad_args(v);
    test_modes(v, c);
    test_bf16(ck, v);
    test_rss(ck);
    sdxl_vae_free(v);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
    return check_done();
}
