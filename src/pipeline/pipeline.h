/* Generation pipeline: txt2img, img2img, inpaint and base -> refiner, with diffusers 0.26.3
 * semantics (CFG batch [uncond; cond], force_zeros_for_empty_prompt, denoising_end/start hand-off,
 * img2img start step and noising). The public API in sdxl.h is a thin layer over this file.
 *
 * Batching never changes pixels: image i of a request is made from its own generator seeded with
 * seed + i, so it equals the same image generated alone; sub-batches only batch the UNet and VAE
 * calls (stochastic samplers run one image per sub-batch, see planner). */
#ifndef SDXL_PIPELINE_PIPELINE_H
#define SDXL_PIPELINE_PIPELINE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "adapters/lora.h"
#include "base/log.h"
#include "decode/vae.h"
#include "denoise/unet.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"
#include "text/conditioning.h"
#include "text/tokenizer.h"

/* One loaded model set. Immutable after load except for the networks' internal workspaces,
 * which is why every network call holds mu. */
/* Networks with a converted-weights cache each. */
enum { SDXL_PL_WC_TEXT = 0, SDXL_PL_WC_UNET, SDXL_PL_WC_VAE, SDXL_PL_WC_REF_TEXT, SDXL_PL_WC_REF_UNET, SDXL_PL_NWC };

typedef struct sdxl_pl_model {
    sdxl_prec prec, vae_prec;
    sdxl_compute *c;     /* text encoders and UNets, in prec */
    sdxl_compute *c_vae; /* the VAE, in vae_prec */
    sdxl_ckpt *base_ck, *ref_ck, *vae_ck;
    sdxl_cond_model base_cond, ref_cond;
    int has_ref;
    sdxl_unet *base_unet, *ref_unet;
    sdxl_vae *vae;
    sdxl_tokenizer *tok;
    int force_zeros;      /* base pipeline's force_zeros_for_empty_prompt (model_index.json, else 1) */
    int one_shot, used;   /* one_shot: UNets validated only until the request converts them */
    int lora_in_place;    /* LoRAs merge into the loaded weights (sdxl_lora_nets.in_place) */
    sdxl_unet_opts uo;
    int v_pred, ztsnr;    /* the base predicts v; zero-terminal-SNR schedule (io/prediction.h) */
    char base_name[256];  /* file stem, for the metadata "Model" */
    char ref_name[256];
    struct sdxl_pl_cn_cache *cn_cache; /* ControlNets loaded by requests, by path (control.c) */
    pthread_mutex_t mu;
    sdxl_lora_state *lora;  /* what is merged into the base networks (created on first use) */
    uint64_t lora_serial;   /* requests so far; lora_owner: the one whose LoRA list is merged */
    uint64_t lora_owner;
    /* text-encoder output cache (condcache.h) shared with other models, borrowed; NULL = none.
     * cond_cache_id names this model in it (the owner sets both, unique per load). */
    struct sdxl_pl_condcache *cond_cache;
    uint64_t cond_cache_id;
    struct sdxl_wcache *wc[SDXL_PL_NWC]; /* converted-weights caches, per network (io/wcache.h) */
    char wc_dir[4096];                   /* "" when the cache is off */
    uint64_t wc_max;
    sdxl_logger log_copy; /* the load's logger, for loads during a request (one_shot) */
    const sdxl_logger *log;
} sdxl_pl_model;

int sdxl_pl_model_load(const sdxl_model_params *p, const sdxl_logger *log, sdxl_pl_model **out, sdxl_err *e);
void sdxl_pl_model_free(sdxl_pl_model *m);

/* Merges exactly these LoRAs into the base UNet and text encoders (n = 0: the original weights);
 * only layers whose deltas change are rebuilt. Caller holds m->mu. */
int sdxl_pl_lora_set(sdxl_pl_model *m, const sdxl_lora_use *u, int n, sdxl_lora_stats *st, sdxl_err *e);

/* Observation hooks for the golden tests; every member may be NULL. stage: 0 base, 1 refiner. */
typedef struct sdxl_pl_trace {
    void *user;
    /* Conditioning of a stage: context [2, T, W] (uncond, cond), pooled [2, P], time_ids [2, k]. */
    void (*cond)(void *user, int stage, const sdxl_cond *cd, const float *time_ids, int n_time_ids);
    /* img2img: clean latents 0.13025 * posterior sample, the add_noise noise, the noised start (NCHW, one image). */
    void (*img2img)(void *user, int image, const float *clean, const float *noise, const float *noised, size_t n);
    /* Initial latents of image `image` as the sampler starts them (NCHW, one image). */
    void (*init)(void *user, int stage, int image, const float *x, size_t n);
    /* Every UNet call: CFG batch input and raw output [batch, 4, h, w]. */
    void (*unet)(void *user, int stage, int call, double t, const float *x_in, const float *out, int64_t batch,
                 size_t n_per);
    /* Latents of the sub-batch after step `step` (NCHW, n floats = images x 4 x h x w). */
    void (*step)(void *user, int stage, int step, const float *x, size_t n);
    /* Every base UNet call of a request with ControlNet units: the step, the units active there
     * (bit k = unit k) and the UNet input with the summed residuals (ctrl_down/ctrl_mid NULL when
     * none is active). */
    void (*control)(void *user, int call, int step, unsigned active, const sdxl_unet_in *in);
    /* Before each UNet batch allocation (batch > 0 images) and each VAE decode (batch < 0: -images):
     * nonzero makes it fail as out of memory (tests of the service's out-of-memory ladder). */
    int (*fail_alloc)(void *user, int batch);
} sdxl_pl_trace;

typedef struct sdxl_pl_image {
    int width, height;
    uint8_t *rgb;
    int64_t seed;
    char *infotext; /* A1111 parameters */
    char *request;  /* JSON request (sdxl_gen_params_from_json reads it back) */
} sdxl_pl_image;

typedef struct sdxl_pl_result {
    int n;
    sdxl_pl_image *img;
    sdxl_gen_stats st;
    char plan[256];
} sdxl_pl_result;

void sdxl_pl_result_free(sdxl_pl_result *r);

/* Field-named validation; m may be NULL (model-dependent rules skipped). */
int sdxl_pl_check(const sdxl_pl_model *m, const sdxl_gen_params *p, sdxl_err *e);

/* Runs a request. cancel (may be NULL) is polled before every network call. */
int sdxl_pl_generate(sdxl_pl_model *m, const sdxl_gen_params *p, const volatile int *cancel, const sdxl_pl_trace *tr,
                     const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e);

/* sdxl_pl_generate with latents in or out: init_lat ([n_images, 4, h, w], NCHW) replaces the init
 * image (img2img from these clean latents, noised by each generator's first draw); lat_out receives
 * the final latents instead of decoding (out then holds n images without pixels). hr_first_steps > 0
 * marks a hires second pass (prompt-edit steps count on from that many first-pass steps). */
int sdxl_pl_generate_lat(sdxl_pl_model *m, const sdxl_gen_params *p, const float *init_lat, float *lat_out,
                         int hr_first_steps, const volatile int *cancel, const sdxl_pl_trace *tr,
                         const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e);

/* ---- hires fix (hires.c) ------------------------------------------------------------------- */

/* A1111's enable_hr: a first pass at width x height, an upscale (latent or pixel), an img2img
 * second pass at the target size. The images carry the whole request's metadata. */
int sdxl_pl_hires(sdxl_pl_model *m, const sdxl_gen_params *p, const volatile int *cancel, const sdxl_pl_trace *tr,
                  const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e);
/* Field-named validation of the hires fields for a first pass of w x h. */
int sdxl_pl_hires_check(const sdxl_gen_params *p, int w, int h, sdxl_err *e);
/* Target size of a hires request (A1111: width x scale, or hr_resize_x/y; multiples of 8). */
int sdxl_pl_hires_size(const sdxl_gen_params *p, int w, int h, int *tw, int *th, sdxl_err *e);
/* Runs n_req requests as one batch of UNet calls (the service's batch manager): txt2img with a
 * deterministic sampler and equal size, steps, CFG, sampler, rng and refiner switch; prompts,
 * seeds and micro-conditioning may differ. Image k of request i equals its lone run. out holds the
 * images request by request. SDXL_ERR_UNSUPPORTED when the requests cannot share a batch
 * (then run them one by one). Progress goes to ps[0].progress. */
int sdxl_pl_generate_multi(sdxl_pl_model *m, const sdxl_gen_params *ps, int n_req, const volatile int *cancel,
                           const sdxl_pl_trace *tr, const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e);

/* ---- batch planner (planner.c) ----------------------------------------------------------- */

typedef struct sdxl_pl_plan {
    int n_images;
    int sub_batch;        /* images per UNet/VAE call group */
    int n_sub;            /* ceil(n_images / sub_batch) */
    uint64_t bytes;       /* estimated peak activation bytes at sub_batch */
    uint64_t available;   /* budget the plan was made against */
    int memory_bound;     /* 1 when memory, not the cap, limited sub_batch */
} sdxl_pl_plan;

/* Estimated peak bytes of one sub-batch of b images. */
typedef int (*sdxl_pl_estimate_fn)(void *user, int b, uint64_t *bytes, sdxl_err *e);

/* Largest sub-batch b <= cap (cap <= 0: n_images) whose estimate fits available; at least 1
 * (a single image is attempted even when its estimate does not fit; the caller logs that). */
int sdxl_pl_plan_make(int n_images, int cap, uint64_t available, sdxl_pl_estimate_fn est, void *user,
                      sdxl_pl_plan *out, sdxl_err *e);
void sdxl_pl_plan_describe(const sdxl_pl_plan *p, int cfg, char *buf, size_t cap);
/* UNet rows one model call of b images runs: b, 2b with CFG, or (1 + and_parts) b when a
 * composable (AND) prompt is scheduled: the uncond and one conditional row per part. */
int sdxl_pl_unet_rows(int b, int cfg, int and_parts);

/* ---- metadata (meta.c) --------------------------------------------------------------------- */

/* A1111 infotext and JSON request of one image of a resolved request. */
int sdxl_pl_infotext(const sdxl_pl_model *m, const sdxl_gen_params *p, int width, int height, int64_t seed,
                     char **out, sdxl_err *e);
int sdxl_pl_request_json(const sdxl_pl_model *m, const sdxl_gen_params *p, int width, int height, int64_t seed,
                         char **out, sdxl_err *e);
/* Reads a request JSON object into p (initialised first); strings go to one malloc'd block *storage. */
int sdxl_pl_params_from_json(const char *json, size_t len, sdxl_gen_params *p, void **storage, sdxl_err *e);

/* Reads an A1111/Forge infotext (the "parameters" text alone) into p (initialised first) like
 * sdxl_pl_params_from_json. warn receives the keys it cannot honour, comma-separated ("" if none),
 * including a Model that differs from model_name (may be NULL). */
int sdxl_pl_params_from_infotext(const char *text, size_t len, const char *model_name, sdxl_gen_params *p,
                                 void **storage, char *warn, size_t warn_cap, sdxl_err *e);

#endif
