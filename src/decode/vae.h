/* SDXL VAE (AutoencoderKL): encoder image -> posterior moments -> scaled latents, decoder
 * scaled latents -> image in [-1, 1]. One code path for the original (sgm `first_stage_model.*`)
 * and diffusers (`vae/`) namings; the network config is read from the tensor shapes.
 * Activations are f32 NHWC; the VAE runs in f32 unless the compute context asks for bf16. */
#ifndef SDXL_DECODE_VAE_H
#define SDXL_DECODE_VAE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"

#define SDXL_VAE_MAX_LEVELS 8
#define SDXL_VAE_MAX_RES 8
#define SDXL_VAE_SCALING_DEFAULT 0.13025f /* SDXL; single files carry no config */

typedef struct sdxl_vae_config {
    int in_channels;             /* image channels seen by the encoder (3) */
    int out_channels;            /* image channels made by the decoder (3) */
    int latent_channels;         /* 4 */
    int n_levels;                /* 4; image = latent * 2^(n_levels-1) */
    int ch[SDXL_VAE_MAX_LEVELS]; /* channels per level, finest first (128, 256, 512, 512) */
    int enc_resnets;             /* resnets per encoder level (2) */
    int dec_resnets;             /* resnets per decoder level (3) */
    int groups;                  /* GroupNorm groups (32; config norm_num_groups) */
    float eps;                   /* GroupNorm eps: 1e-6 everywhere in the VAE */
    float scaling_factor;        /* config scaling_factor, else 0.13025 */
    int force_upcast;            /* config force_upcast (informational: we run f32 by default) */
    int has_encoder;             /* 0 for a decoder-only file: encode returns UNSUPPORTED */
    sdxl_naming naming;
    int64_t n_params;
} sdxl_vae_config;

typedef struct sdxl_vae sdxl_vae;

/* Reads the config from the shapes and checks every expected tensor (name, shape, float dtype)
 * and that no unknown tensor sits under encoder./decoder.; reads no tensor data, so sparse
 * files made from the real key tables validate without disk or memory. */
int sdxl_vae_validate(const sdxl_ckpt *ck, sdxl_vae_config *cfg, sdxl_err *e);

/* Validates, then converts every weight once into the compute context's precision and oneDNN
 * layout. The context is borrowed and must outlive the VAE. */
int sdxl_vae_load(const sdxl_ckpt *ck, sdxl_compute *c, sdxl_vae **out, sdxl_err *e);
void sdxl_vae_free(sdxl_vae *v);
const sdxl_vae_config *sdxl_vae_get_config(const sdxl_vae *v);
/* Bytes held by converted weights. */
size_t sdxl_vae_weight_bytes(const sdxl_vae *v);
/* Releases the activation workspace (it is regrown on the next call). */
void sdxl_vae_trim(sdxl_vae *v);

typedef enum sdxl_vae_tiling { SDXL_VAE_TILE_AUTO = 0, SDXL_VAE_TILE_OFF, SDXL_VAE_TILE_ON } sdxl_vae_tiling;

/* How a call runs. Tiles are square, tile_latent latent pixels a side (x8 in the image), and
 * neighbours share tile_overlap latent pixels, blended with linear ramps (docs/vae.md). */
typedef struct sdxl_vae_run {
    int slice;            /* 1 (default): batch items one at a time, workspace sized for one */
    sdxl_vae_tiling tile; /* AUTO (default): tile only when the untiled estimate exceeds max_bytes */
    int tile_latent;      /* default 64 (512 px) */
    int tile_overlap;     /* default 16 (128 px); must be < tile_latent */
    uint64_t max_bytes;   /* AUTO budget; 0 (default) = half of the memory available now */
} sdxl_vae_run;

void sdxl_vae_run_init(sdxl_vae_run *r);

/* latents [n, h, w, latent_channels] scaled (as the sampler leaves them); decodes
 * latents / scaling_factor into image [n, 8h, 8w, out_channels], float, about [-1, 1].
 * run may be NULL (defaults). */
int sdxl_vae_decode(sdxl_vae *v, const float *latents, int64_t n, int64_t h, int64_t w, float *image,
                    const sdxl_vae_run *run, sdxl_err *e);

/* Latent size for an image of H x W (the encoder's stride-2 convs round down). */
void sdxl_vae_latent_size(const sdxl_vae *v, int64_t H, int64_t W, int64_t *h, int64_t *w);

/* image [n, H, W, in_channels] in [-1, 1] -> posterior. mean/logvar (each [n, h, w, lc], may be
 * NULL) receive the moments, logvar clamped to [-30, 20]. latents (may be NULL) receive
 * scaling_factor * (mean + exp(0.5 logvar) * noise); noise [n, h, w, lc] is the caller's
 * (the pipeline generator's) standard normal draw, or NULL for the mode (scaling_factor * mean). */
int sdxl_vae_encode(sdxl_vae *v, const float *image, int64_t n, int64_t H, int64_t W, const float *noise,
                    float *latents, float *mean, float *logvar, const sdxl_vae_run *run, sdxl_err *e);

/* Peak activation bytes a call with these arguments will allocate (workspace, tile buffers),
 * computed before running. prec adds the estimate of the bf16 GEMM-input conversion. */
uint64_t sdxl_vae_decode_bytes(const sdxl_vae_config *cfg, int64_t n, int64_t h, int64_t w, sdxl_prec prec,
                               const sdxl_vae_run *run);
uint64_t sdxl_vae_encode_bytes(const sdxl_vae_config *cfg, int64_t n, int64_t H, int64_t W, sdxl_prec prec,
                               const sdxl_vae_run *run);
/* Workspace and tile-buffer bytes the last call needed and held (the measured side of the
 * estimate; buffers grown by an earlier, larger call stay allocated until sdxl_vae_trim). */
uint64_t sdxl_vae_last_bytes(const sdxl_vae *v);

/* Image float -> uint8 as diffusers: round_half_even(clamp(x/2 + 0.5, 0, 1) * 255), in f32. */
void sdxl_vae_to_uint8(const float *x, uint8_t *out, size_t n);

#endif
