/* Scheduler registry: every dialect's sampler/scheduler names resolved to one canonical
 * (sampler, schedule) pair, per-sampler traits, use-case recommendations, and a sigma cache.
 *
 * Dialects: A1111 >= 1.9 (sampler "DPM++ 2M" + schedule "Karras"), A1111 legacy combined names
 * ("DPM++ 2M SDE Karras", "Euler a"), k-diffusion k_* aliases, ComfyUI sampler + scheduler
 * names, diffusers class names (+ config keys), stable-diffusion.cpp names. Matching ignores
 * case, spaces and punctuation ("DPM++ 2M" == "dpmpp_2m" only through the alias table, but
 * "Euler A" == "euler_a" == "euler-a"). */
#ifndef SDXL_DENOISE_REGISTRY_H
#define SDXL_DENOISE_REGISTRY_H

#include "base/err.h"
#include "denoise/sampler.h"
#include "denoise/schedule.h"
#include "io/json.h"

/* What a name resolved to. schedule is DEFAULT when the name carries none. */
typedef struct sdxl_sched_choice {
    sdxl_sampler_kind sampler;
    sdxl_schedule_kind schedule;
    int diffusers_karras; /* the schedule came from diffusers' use_karras_sigmas */
    double eta;           /* -1 when the name does not set it */
    int kdiffusion;       /* an A1111/ComfyUI/k-diffusion name: k-diffusion's loops on A1111's sigmas */
} sdxl_sched_choice;

/* Resolves a sampler name, optionally with a separate schedule name (NULL or "" for none;
 * "Automatic" means the sampler's default). A combined legacy name ("DPM++ 2M Karras") sets
 * both; a separate schedule overrides the one in the name. Unknown names fail with
 * SDXL_ERR_ARG and a message listing the closest valid names. */
int sdxl_sched_resolve(const char *sampler, const char *schedule, sdxl_sched_choice *out, sdxl_err *e);
/* Canonical names of a choice, as `sdxl schedulers resolve` prints them. */
const char *sdxl_sched_canonical_schedule(const sdxl_sched_choice *c);

/* diffusers scheduler class + its config JSON (scheduler_config.json) -> sampler config. */
int sdxl_sched_from_diffusers(const char *class_name, const sdxl_json *config, sdxl_sampler_config *out, sdxl_err *e);

typedef enum sdxl_sampler_family { SDXL_FAMILY_DETERMINISTIC, SDXL_FAMILY_ANCESTRAL, SDXL_FAMILY_SDE } sdxl_sampler_family;

typedef struct sdxl_sampler_traits {
    sdxl_sampler_kind kind;
    const char *name;         /* canonical */
    const char *a1111;        /* A1111 display name */
    const char *comfy;        /* ComfyUI sampler_name */
    const char *diffusers;    /* diffusers class */
    int evals_per_step;       /* model evaluations per step (2nd-order: 2, last step 1) */
    int order;
    sdxl_sampler_family family;
    sdxl_schedule_kind default_schedule; /* what A1111 "Automatic" picks */
    int steps_base, steps_refiner, steps_turbo, steps_lcm; /* recommended; 0 = not suited */
    double cfg_base, cfg_turbo;
    int img2img_ok;           /* converges from a partially noised start */
    int implemented;          /* step math available in this build */
    const char *note;
} sdxl_sampler_traits;

const sdxl_sampler_traits *sdxl_sampler_traits_get(sdxl_sampler_kind k);

typedef enum sdxl_use_case {
    SDXL_USE_PREVIEW = 0, /* fastest preview */
    SDXL_USE_BALANCED,
    SDXL_USE_QUALITY,
    SDXL_USE_FEW_STEPS,   /* turbo / LCM-distilled models */
    SDXL_USE_IMG2IMG,
    SDXL_USE_REPRODUCIBLE,
    SDXL_USE_COUNT
} sdxl_use_case;

typedef struct sdxl_recommendation {
    sdxl_sched_choice choice;
    int steps;
    double cfg;
    const char *why; /* one or two sentences */
} sdxl_recommendation;

/* "preview", "balanced", "quality", "few_steps" (or "turbo"/"lcm"), "img2img", "reproducible". */
int sdxl_use_case_parse(const char *name, sdxl_use_case *out, sdxl_err *e);
const char *sdxl_use_case_name(sdxl_use_case u);
void sdxl_recommend(sdxl_use_case u, sdxl_recommendation *out);

/* Every accepted name, for tables and tests: dialect, name, what it resolves to. */
typedef struct sdxl_sched_alias {
    const char *dialect;
    const char *name;
    sdxl_sampler_kind sampler;
    sdxl_schedule_kind schedule;
} sdxl_sched_alias;
size_t sdxl_sched_alias_count(void);
const sdxl_sched_alias *sdxl_sched_alias_at(size_t i);
/* Schedule aliases across dialects ("Karras", "karras", "Uniform", "sgm_uniform", "AYS"...). */
int sdxl_schedule_parse(const char *name, sdxl_schedule_kind *out, sdxl_err *e);

/* Sigma cache: computed samplers' schedules keyed by (config, steps), owned by the caller. */
typedef struct sdxl_sigma_cache sdxl_sigma_cache;
int sdxl_sigma_cache_new(int capacity, sdxl_sigma_cache **out, sdxl_err *e);
void sdxl_sigma_cache_free(sdxl_sigma_cache *c);
/* The schedule's sigmas/timesteps for cfg, computed once; pointers stay valid until the entry is
 * evicted (least recently used) or the cache is freed. */
int sdxl_sigma_cache_get(sdxl_sigma_cache *c, const sdxl_sampler_config *cfg, const float **sigmas, int *n_sigmas,
                         const float **timesteps, int *n_timesteps, sdxl_err *e);
void sdxl_sigma_cache_stats(const sdxl_sigma_cache *c, int *hits, int *misses);

#endif
