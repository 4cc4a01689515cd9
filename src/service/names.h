/* Where request names may point: model, VAE, LoRA, ControlNet and input-image names resolve only
 * inside configured roots. "org/name", file stems and relative paths work; "..", absolute paths
 * outside the roots and symlinks that leave a root are refused. Also base64 image payloads and
 * the latent preview. */
#ifndef SDXL_SERVICE_NAMES_H
#define SDXL_SERVICE_NAMES_H

#include <stddef.h>
#include <stdint.h>

#include "io/strbuf.h"
#include "service/engine.h"

typedef struct sdxl_svc_roots {
    char **dirs[5]; /* real paths, by kind: model, vae, lora, control, input */
    int n[5];
    char *pinned;   /* real path of the operator's default model when no model root holds it: that
                       file alone resolves (by path, file name or stem), not its folder; else NULL */
} sdxl_svc_roots;

int sdxl_svc_roots_init(sdxl_svc_roots *r, const sdxl_engine_config *c, char *err, size_t cap);
void sdxl_svc_roots_free(sdxl_svc_roots *r);

/* kind: "model", "vae", "lora", "control", "input". Model-like kinds also search the model roots.
 * out receives the real path of the file (or diffusers folder). */
int sdxl_svc_resolve(const sdxl_svc_roots *r, const char *kind, const char *name, char *out, size_t cap, char *err,
                     size_t err_cap);

/* JSON array of {"name", "path", "bytes"} for every model file under the model roots. */
int sdxl_svc_list_models(const sdxl_svc_roots *r, sdxl_strbuf *b);

/* A data: URL or a long run of base64 characters (not a file name). */
int sdxl_svc_is_base64(const char *s);
/* Decodes base64 (a data: URL prefix is skipped; whitespace ignored). */
int sdxl_svc_base64_decode(const char *s, uint8_t **out, size_t *n);
void sdxl_svc_base64_encode(const uint8_t *p, size_t n, sdxl_strbuf *b);

/* PNG of the first image of NCHW latents [B, 4, h, w] through SDXL's latent->RGB linear projection
 * (no extra model). */
int sdxl_svc_preview_png(const float *x, size_t n, int w, int h, uint8_t **png, size_t *len);

#endif
