/* Checkpoint layouts. One handle over a single-file SDXL checkpoint, a diffusers folder, or a
 * standalone UNet / VAE / text-encoder file, exposing each network ("part") by the names of
 * that part with the layout's prefix stripped. Networks map names to fields themselves, for
 * both namings (see each network's name table). */
#ifndef SDXL_IO_CHECKPOINT_H
#define SDXL_IO_CHECKPOINT_H

#include "base/err.h"
#include "io/json.h"
#include "io/safetensors.h"

typedef enum sdxl_part { SDXL_PART_UNET = 0, SDXL_PART_VAE, SDXL_PART_TE1, SDXL_PART_TE2, SDXL_PART_COUNT } sdxl_part;

/* How a part's tensors are named. */
typedef enum sdxl_naming {
    SDXL_NAMING_NONE = 0,  /* part absent */
    SDXL_NAMING_ORIGINAL,  /* sgm UNet/VAE names; TE1 HF CLIP names; TE2 open_clip names */
    SDXL_NAMING_DIFFUSERS  /* diffusers UNet/VAE names; TE1/TE2 HF CLIP names */
} sdxl_naming;

typedef enum sdxl_layout {
    SDXL_LAYOUT_SINGLE_FILE = 0, /* model.diffusion_model.*, first_stage_model.*, conditioner.* */
    SDXL_LAYOUT_DIFFUSERS,       /* folder with model_index.json, unet/, vae/, text_encoder(_2)/ */
    SDXL_LAYOUT_STANDALONE       /* one part alone in a file (a custom VAE, a bare UNet) */
} sdxl_layout;

typedef struct sdxl_ckpt sdxl_ckpt;

/* path: a .safetensors file or a diffusers folder. Every file is validated by sdxl_st_open. */
int sdxl_ckpt_open(const char *path, sdxl_ckpt **out, sdxl_err *e);
void sdxl_ckpt_close(sdxl_ckpt *c);

sdxl_layout sdxl_ckpt_layout(const sdxl_ckpt *c);
const char *sdxl_ckpt_layout_name(sdxl_layout l); /* "single-file", "diffusers", "standalone" */
const char *sdxl_part_name(sdxl_part p);          /* "unet", "vae", "text_encoder", "text_encoder_2" */
sdxl_naming sdxl_ckpt_naming(const sdxl_ckpt *c, sdxl_part p);

/* Tensor of a part by its name inside the part (prefix stripped); NULL when absent. */
const sdxl_st_tensor *sdxl_ckpt_find(const sdxl_ckpt *c, sdxl_part p, const char *name);
/* The file holding the part (for sdxl_st_to_f32); NULL when absent. */
const sdxl_st_file *sdxl_ckpt_file(const sdxl_ckpt *c, sdxl_part p);
/* Number of tensors of a part and the i-th one's stripped name (for "unexpected tensor" checks). */
size_t sdxl_ckpt_count(const sdxl_ckpt *c, sdxl_part p);
const char *sdxl_ckpt_name_at(const sdxl_ckpt *c, sdxl_part p, size_t i, const sdxl_st_tensor **t);
/* Parsed config.json of a diffusers part, or NULL (single files carry no config). */
const sdxl_json *sdxl_ckpt_config(const sdxl_ckpt *c, sdxl_part p);
/* Parsed model_index.json of a diffusers folder, or NULL. */
const sdxl_json *sdxl_ckpt_model_index(const sdxl_ckpt *c);
/* Path given to open. */
const char *sdxl_ckpt_path(const sdxl_ckpt *c);

/* "none", "original", "diffusers". */
const char *sdxl_naming_name(sdxl_naming n);
/* Key prefix stripped from the part's names in its file ("" when none), or NULL when absent. */
const char *sdxl_ckpt_prefix(const sdxl_ckpt *c, sdxl_part p);
/* Tensors of a single file that belong to no part (e.g. "denoiser.sigmas"); they are ignored. */
size_t sdxl_ckpt_other_count(const sdxl_ckpt *c);
const sdxl_st_tensor *sdxl_ckpt_other_at(const sdxl_ckpt *c, size_t i);
/* Parameter count (sum of numel) of a part; 0 when absent. */
uint64_t sdxl_ckpt_params(const sdxl_ckpt *c, sdxl_part p);

/* A network held inside a file of another kind (a ControlNet's UNet trunk): f's tensors under
 * prefix ("" = all) become part p, config (may be NULL) its config.json, label the path in
 * messages. The handle owns f and config from the call on, also when it fails. */
int sdxl_ckpt_wrap(sdxl_st_file *f, sdxl_part p, const char *prefix, sdxl_json *config, const char *label,
                   sdxl_ckpt **out, sdxl_err *e);

/* Drops every file's mapped pages from the resident set once the networks are converted. */
void sdxl_ckpt_release_pages(const sdxl_ckpt *c);

/* Reads a part's tensor into f32 after checking its shape; errors name the part and tensor. */
int sdxl_ckpt_read_f32(const sdxl_ckpt *c, sdxl_part p, const char *name, int ndim, const int64_t *shape,
                       float *dst, sdxl_err *e);

#endif
