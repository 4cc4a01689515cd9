/*
 * sdxl.h - Stable Diffusion XL inference in C.
 *
 * The one public header. Conventions (SQLite / whisper.h style):
 *   - every call returns sdxl_status; the text of the last failure on a handle
 *     is kept on that handle and read with sdxl_errmsg();
 *   - params structs are filled with defaults by their *_init() function;
 *   - every object handed out has exactly one matching *_free().
 *
 * Usage:
 *
 *     sdxl_ctx_params p;
 *     sdxl_ctx_params_init(&p);
 *     p.n_threads = 2;
 *     sdxl_ctx *ctx;
 *     if (sdxl_ctx_new(&p, &ctx) != SDXL_OK) return 1;
 *
 *     sdxl_file *f;
 *     if (sdxl_file_open(ctx, "sd_xl_base_1.0.safetensors", &f) != SDXL_OK) {
 *         fprintf(stderr, "%s\n", sdxl_errmsg(ctx));
 *     } else {
 *         for (size_t i = 0; i < sdxl_file_n_tensors(f); i++) {
 *             sdxl_tensor_info t;
 *             sdxl_file_tensor(f, i, &t);
 *             printf("%s %s\n", t.name, t.dtype);
 *         }
 *         sdxl_file_free(f);
 *     }
 *     sdxl_ctx_free(ctx);
 *
 * Generation (see docs/generate.md):
 *
 *     sdxl_model_params mp;
 *     sdxl_model_params_init(&mp);
 *     mp.base = "sd_xl_base_1.0.safetensors";
 *     sdxl_model *m;
 *     if (sdxl_model_load(ctx, &mp, &m) != SDXL_OK) fprintf(stderr, "%s\n", sdxl_errmsg(ctx));
 *     sdxl_session *s;
 *     sdxl_session_new(ctx, m, &s);
 *     sdxl_gen_params g;
 *     sdxl_gen_params_init(&g);
 *     g.prompt = "a red fox in the snow";
 *     g.seed = 42;
 *     sdxl_result *r;
 *     if (sdxl_generate(s, &g, &r) != SDXL_OK) fprintf(stderr, "%s\n", sdxl_session_errmsg(s));
 *     else { const sdxl_image_out *im = sdxl_result_image(r, 0); ... sdxl_result_free(r); }
 *     sdxl_session_free(s);
 *     sdxl_model_free(m);
 */
#ifndef SDXL_H
#define SDXL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SDXL_VERSION_MAJOR 0
#define SDXL_VERSION_MINOR 1
#define SDXL_VERSION_PATCH 0

/* Status codes. Internal code uses the same values. */
typedef enum sdxl_status {
    SDXL_OK = 0,
    SDXL_ERR_ARG = 1,         /* a parameter is out of range or malformed */
    SDXL_ERR_IO = 2,          /* a file could not be opened, read or written */
    SDXL_ERR_FORMAT = 3,      /* bytes from outside failed validation */
    SDXL_ERR_NOMEM = 4,       /* an allocation failed */
    SDXL_ERR_UNSUPPORTED = 5, /* valid, but not something this build can do */
    SDXL_ERR_LIMIT = 6,       /* a configured limit was exceeded */
    SDXL_ERR_CANCELLED = 7,   /* the caller cancelled the request */
    SDXL_ERR_INTERNAL = 8     /* a bug: please report it */
} sdxl_status;

/* Static name of a status code, e.g. "SDXL_ERR_FORMAT". */
const char *sdxl_status_str(sdxl_status s);

/* "MAJOR.MINOR.PATCH". */
const char *sdxl_version(void);

typedef enum sdxl_log_level {
    SDXL_LOG_DEBUG = 0,
    SDXL_LOG_INFO = 1,
    SDXL_LOG_WARN = 2,
    SDXL_LOG_ERROR = 3,
    SDXL_LOG_NONE = 4
} sdxl_log_level;

/* Receives one complete message line (no trailing newline). May be called from any thread. */
typedef void (*sdxl_log_fn)(void *user, sdxl_log_level level, const char *msg);

/* A library context: logging, threads, and the error text of calls made through it. */
typedef struct sdxl_ctx sdxl_ctx;

typedef struct sdxl_ctx_params {
    int n_threads;            /* compute threads; 0 = one per online CPU */
    sdxl_log_level log_level; /* messages below this level are dropped */
    sdxl_log_fn log_fn;       /* NULL = write to stderr */
    void *log_user;
} sdxl_ctx_params;

void sdxl_ctx_params_init(sdxl_ctx_params *p);
sdxl_status sdxl_ctx_new(const sdxl_ctx_params *p, sdxl_ctx **out);
void sdxl_ctx_free(sdxl_ctx *ctx);

/* Text of the last failed call made with this handle; "" after a success. Never NULL. */
const char *sdxl_errmsg(const sdxl_ctx *ctx);

/* CPU features as seen at run time, e.g. "avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni". */
const char *sdxl_cpu_features(void);

/* ---- Model files: validated safetensors ------------------------------------------------- */

typedef struct sdxl_file sdxl_file;

typedef struct sdxl_tensor_info {
    const char *name;  /* valid while the file is open */
    const char *dtype; /* "F16", "F32", "BF16", ... */
    int ndim;
    int64_t shape[8];
    uint64_t nbytes;
} sdxl_tensor_info;

/* Maps and validates a .safetensors file. On failure the context's errmsg names the file,
 * the tensor (if any) and the rule that failed. */
sdxl_status sdxl_file_open(sdxl_ctx *ctx, const char *path, sdxl_file **out);
void sdxl_file_free(sdxl_file *f);
size_t sdxl_file_n_tensors(const sdxl_file *f);
sdxl_status sdxl_file_tensor(const sdxl_file *f, size_t i, sdxl_tensor_info *out);
size_t sdxl_file_n_metadata(const sdxl_file *f);
sdxl_status sdxl_file_metadata(const sdxl_file *f, size_t i, const char **key, const char **value);

/* ---- Generation ------------------------------------------------------------------------- */

/* Frees a buffer the library returned (sdxl_gen_params_from_json's string storage...). */
void sdxl_free(void *p);

/* Loaded networks: base (text encoders, UNet, VAE), optional refiner, optional custom VAE.
 * Immutable after load and shared by any number of sessions; the networks' forward state is
 * not reentrant, so network calls of concurrent sessions take turns on a mutex in the model. */
typedef struct sdxl_model sdxl_model;

typedef struct sdxl_model_params {
    const char *base;      /* single-file checkpoint or diffusers folder (required) */
    const char *refiner;   /* refiner checkpoint or folder, or NULL */
    const char *vae;       /* standalone VAE file replacing the base's, or NULL */
    const char *precision; /* "f32", "bf16" or NULL/"auto" (bf16 where the CPU has avx512_bf16) */
    const char *vae_precision; /* "f32", "bf16" or NULL/"auto" (= precision). bf16 has f32's range,
                                  so SDXL's fp16 overflow (force_upcast) does not occur in it */
    int head_dim;          /* > 0 forces the UNet head width; 0 = config.json / yaml / 64 */
    const char *device;    /* NULL/"cpu", "vulkan", "vulkan:N" (`sdxl devices`), or "auto" (a GPU if any) */
    int one_shot;          /* 1: the model serves one request in the least memory: the UNets are
                              converted once the prompt is encoded, the text encoders freed after
                              encoding, the UNets before the last decode; a second request fails */
    int lora_in_place;     /* 1: LoRAs merge into the loaded weights themselves, with no second copy
                              of the touched layers, for a model that serves one LoRA list (sdxl
                              generate sets it): a request with another list fails */
    int lora_reserve;      /* 1: a resident model maps the buffers LoRA merges write (about the size
                              of the UNet's and text encoders' weights) at load, so that its first
                              LoRA request costs what later ones do; ignored with one_shot and
                              lora_in_place */
    const char *weights_cache; /* converted-weights cache folder (docs/compute.md): NULL = the
                                  SDXL_WEIGHTS_CACHE variable decides; "" / "off" / "0": off; "on" /
                                  "1": the default folder ($XDG_CACHE_HOME/sdxl); else the folder */
    uint64_t weights_cache_max; /* bytes the folder's cache files may take; 0 = 32 GiB */
} sdxl_model_params;

void sdxl_model_params_init(sdxl_model_params *p);
sdxl_status sdxl_model_load(sdxl_ctx *ctx, const sdxl_model_params *p, sdxl_model **out);
void sdxl_model_free(sdxl_model *m);
/* "f32" or "bf16": the precision the networks were converted to. */
const char *sdxl_model_precision(const sdxl_model *m);
int sdxl_model_has_refiner(const sdxl_model *m);

/* A request's working state: error text, cancellation flag. One request at a time per session. */
typedef struct sdxl_session sdxl_session;

sdxl_status sdxl_session_new(sdxl_ctx *ctx, sdxl_model *m, sdxl_session **out);
void sdxl_session_free(sdxl_session *s);
const char *sdxl_session_errmsg(const sdxl_session *s);
/* Safe from any thread: the running sdxl_generate returns SDXL_ERR_CANCELLED before its next
 * network call (within one UNet step). The flag is cleared when the next request starts. */
void sdxl_session_cancel(sdxl_session *s);

typedef enum sdxl_phase {
    SDXL_PHASE_TEXT = 0,   /* text encoders */
    SDXL_PHASE_ENCODE,     /* VAE encode of the init image */
    SDXL_PHASE_BASE,       /* base UNet steps */
    SDXL_PHASE_REFINER,    /* refiner UNet steps */
    SDXL_PHASE_DECODE      /* VAE decode, one unit per image */
} sdxl_phase;

const char *sdxl_phase_name(sdxl_phase p); /* "text", "encode", "base", "refiner", "decode" */

typedef struct sdxl_progress {
    sdxl_phase phase;
    int step, total;     /* steps done / to do in this phase for the current sub-batch */
    int image, n_images; /* first image of the current sub-batch, images in the request */
    double elapsed;      /* seconds since the request started */
    double eta;          /* estimated seconds left for the whole request; < 0 unknown */
} sdxl_progress;

/* Called from the generating thread; returning nonzero cancels the request. */
typedef int (*sdxl_progress_fn)(void *user, const sdxl_progress *p);

/* One LoRA of a request. path is a file, or a name/stem resolved only inside lora_dirs. */
typedef struct sdxl_lora_spec {
    const char *path;
    float unet_weight;             /* multiplier on the UNet's deltas (negative allowed) */
    float te_weight;               /* multiplier on the text encoders' deltas */
    const char *hash;              /* NULL, or A1111's short hash: finds the file in lora_dirs when path does not */
} sdxl_lora_spec;

/* How a control image of another size is fitted to the output (A1111's resize modes). */
typedef enum sdxl_resize_mode {
    SDXL_RESIZE_JUST = 0,          /* stretch to the output size */
    SDXL_RESIZE_CROP = 1,          /* scale to cover, centre crop */
    SDXL_RESIZE_FILL = 2           /* scale to fit, pad the borders */
} sdxl_resize_mode;

/* One ControlNet unit of a request (diffusers controlnet_conditioning_scale, control_guidance_start/end). */
typedef struct sdxl_control_spec {
    const char *model;             /* ControlNet file/folder, or a name resolved inside control_dirs */
    const uint8_t *image;          /* RGB, rows packed, image_width x image_height */
    int image_width, image_height;
    float scale;                   /* conditioning scale, default 1 */
    float guidance_start;          /* fraction of the schedule where control starts, default 0 */
    float guidance_end;            /* fraction where it ends, default 1 */
    const char *preprocess;        /* NULL/"none", "canny:LOW:HIGH", "invert", ... (docs/controlnet.md) */
    sdxl_resize_mode resize;
    int guess_mode;                /* control only the conditional half of the CFG batch */
} sdxl_control_spec;

/* One request. Strings are borrowed for the duration of sdxl_generate. 0 / NULL = default. */
typedef struct sdxl_gen_params {
    const char *prompt;            /* A1111 syntax: (emphasis:1.2), [less], BREAK */
    const char *negative_prompt;   /* NULL = none: zero uncond on the base (force_zeros_for_empty_prompt) */
    const char *prompt_2;          /* second (OpenCLIP) encoder's text; NULL = prompt */
    const char *negative_prompt_2; /* NULL = negative_prompt */
    int width, height;             /* multiples of 8; 0 = init image size, else 1024 */
    int steps;                     /* default 30 */
    float cfg_scale;               /* default 7; <= 1 disables classifier-free guidance */
    float guidance_rescale;        /* 0..1, default 0 (diffusers rescale_noise_cfg) */
    const char *sampler;           /* any dialect ("Euler", "DPM++ 2M Karras", "dpmpp_2m"...); default "Euler" */
    const char *schedule;          /* "Automatic" (default), "Karras", "sgm_uniform"... */
    int64_t seed;                  /* -1 (default) = random; image i uses seed + i */
    const char *rng;               /* "torch" (default, CPU torch.randn), "philox" (A1111 NV), "fast" */
    int batch_count;               /* default 1: images = batch_count * max(batch_size, 1) */
    int batch_size;                /* 0 (default) = auto: planner picks the sub-batch; > 0: cap */
    int original_width, original_height;       /* micro-conditioning; 0 = width/height */
    int crop_left, crop_top;                   /* default 0 */
    int target_width, target_height;           /* 0 = width/height */
    int negative_original_width, negative_original_height; /* 0 = the positive values */
    int negative_crop_left, negative_crop_top;             /* -1 = the positive values */
    int negative_target_width, negative_target_height;     /* 0 = the positive values */
    float refiner_switch;          /* fraction of the schedule run by the base when the model has a
                                      refiner (diffusers denoising_end); default 0.8; 1 = no refiner */
    float aesthetic_score;         /* refiner conditioning, default 6.0 */
    float negative_aesthetic_score;/* default 2.5 */
    const uint8_t *init_image;     /* RGB, rows packed, init_width x init_height; NULL = txt2img */
    int init_width, init_height;
    float strength;                /* img2img: 0 < strength <= 1, default 0.75 */
    const uint8_t *mask;           /* one channel, init image size, 255 = repaint; NULL = no inpaint */
    int mask_blur;                 /* Gaussian blur radius in pixels applied to the mask; default 4 */
    int clip_skip;                 /* A1111 numbering: 0/1 = penultimate layer (SDXL default), k = k-th from the end */
    int n_threads;                 /* 0 = the context's */
    int max_batch;                 /* 0 = no limit; else an upper bound on UNet batch images */
    uint64_t max_memory;           /* 0 = no cap; else bytes of process RSS the request must stay
                                      under: the plan (batch, VAE tiling) fits it or the request
                                      fails before any step, naming the plan */
    const sdxl_lora_spec *loras;   /* LoRAs merged for this request only; also <lora:name:w> prompt tags */
    int n_loras;
    const char *const *lora_dirs;  /* folders LoRA names resolve in; NULL-free array of n_lora_dirs */
    int n_lora_dirs;
    const sdxl_control_spec *controls; /* ControlNet units, residuals summed */
    int n_controls;
    const char *const *control_dirs;
    int n_control_dirs;
    sdxl_progress_fn progress;
    void *progress_user;
    /* A1111 parity: model prediction overrides and hires fix (two-pass generation) */
    const char *prediction;        /* NULL/"auto" (default): the model's (v_pred marker, scheduler config); "eps" or "v" */
    int zero_terminal_snr;         /* -1 (default): the model's (ztsnr marker, rescale_betas_zero_snr); 0 or 1 */
    int enable_hr;                 /* 1: A1111 hires fix, an img2img second pass at the upscaled size */
    float hr_scale;                /* default 2; ignored when hr_resize_x/y are set */
    int hr_resize_x, hr_resize_y;  /* target size (multiples of 8); 0 = from hr_scale (one 0: keep the aspect) */
    int hr_second_pass_steps;      /* 0 (default) = steps */
    float hr_denoising_strength;   /* default 0.7 */
    const char *hr_upscaler;       /* "Latent" (default), "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic
                                      antialiased)", "Latent (nearest)", "Latent (nearest-exact)", "Lanczos", "Nearest" */
    const char *hr_sampler;        /* NULL = sampler */
    const char *hr_schedule;       /* NULL = schedule */
    const char *hr_prompt;         /* NULL = prompt */
    const char *hr_negative_prompt;/* NULL = negative_prompt */
    /* memory savers (the worker's out-of-memory ladder); neither changes the UNet's numbers */
    int vae_tiling;                /* 1: the VAE decodes in tiles even when the whole image fits; 0 (default) = auto */
    int unet_max_rows;             /* > 0: each UNet call runs at most this many CFG batch rows; 0 (default) = all */
    int eta_noise_seed_delta;      /* A1111 ENSD: after the initial noise, image i's generator is reseeded
                                      with seed + i + delta for the sampler's noise; 0 (default) = no reseed */
} sdxl_gen_params;

void sdxl_gen_params_init(sdxl_gen_params *p);

/* Checks every field (names the field and the rule) without running anything; m may be NULL
 * (then model-dependent checks are skipped). Also run by sdxl_generate before any work. */
sdxl_status sdxl_gen_params_check(sdxl_ctx *ctx, const sdxl_model *m, const sdxl_gen_params *p);

/* Fills p (initialised first) from a request JSON object as written in sdxl_result_request_json
 * (keys = the field names above). *storage receives the strings p points to: sdxl_free it after use.
 * Images are not part of the JSON. */
sdxl_status sdxl_gen_params_from_json(sdxl_ctx *ctx, const char *json, size_t len, sdxl_gen_params *p,
                                      void **storage);

typedef struct sdxl_image_out {
    int width, height, channels; /* channels = 3 (RGB) */
    const uint8_t *data;         /* rows packed; valid until sdxl_result_free */
    int64_t seed;                /* the seed this image was made from */
} sdxl_image_out;

typedef struct sdxl_gen_stats {
    double text_s, encode_s, base_s, refiner_s, decode_s, total_s; /* wall seconds per stage */
    uint64_t peak_rss;           /* VmHWM after the request, bytes */
    int n_images, sub_batch, n_sub_batches; /* the batch plan */
    uint64_t plan_bytes;         /* estimated peak activation bytes of one sub-batch */
    uint64_t plan_available;     /* memory the planner saw available */
    int unet_calls;              /* UNet forwards made */
} sdxl_gen_stats;

typedef struct sdxl_result sdxl_result;

int sdxl_result_count(const sdxl_result *r);
const sdxl_image_out *sdxl_result_image(const sdxl_result *r, int i);
/* A1111 "parameters" infotext and our JSON request of image i (NUL-terminated, owned by r). */
const char *sdxl_result_infotext(const sdxl_result *r, int i);
const char *sdxl_result_request_json(const sdxl_result *r, int i);
const sdxl_gen_stats *sdxl_result_stats(const sdxl_result *r);
/* The plan as one log line: "4 images: 2 sub-batches of 2 (UNet batch 4 with CFG), est 1.2 GiB of 10.0 GiB". */
const char *sdxl_result_plan(const sdxl_result *r);
void sdxl_result_free(sdxl_result *r);

/* Validates, plans, then runs the request. On failure nothing is returned (*out NULL) and
 * sdxl_session_errmsg names the field or file at fault. */
sdxl_status sdxl_generate(sdxl_session *s, const sdxl_gen_params *p, sdxl_result **out);

#ifdef __cplusplus
}
#endif

#endif /* SDXL_H */
