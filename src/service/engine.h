/* The job engine: the one place jobs live, driven by every front end (stdio worker, HTTP server,
 * fleet consumer). Thread-safe: any thread may submit, cancel, query and subscribe while one
 * runner thread generates.
 *
 * A job: accepted (validated, seed fixed, written to the journal) -> queued (by priority, then
 * arrival) -> running -> done | failed | cancelled. Compatible queued jobs (same models, size,
 * sampler, schedule, steps, CFG, no adapters) are merged into one UNet batch by the batch
 * manager; every image still equals its lone run. Events go to every subscriber, from the thread
 * that caused them (submitter for accepted, runner for the rest); callbacks must not call back
 * into the engine except sdxl_engine_cancel.
 *
 * With a journal (SQLite), a job accepted is never lost: after a crash the next engine re-queues
 * what was running, and a job that was running at two crashes fails with "worker_crashed". The
 * output folder holds only images of done jobs: one that ends otherwise has what its killed runs
 * wrote removed before its final state is journaled. */
#ifndef SDXL_SERVICE_ENGINE_H
#define SDXL_SERVICE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "service/request.h"
#include "sdxl.h"

typedef struct sdxl_engine sdxl_engine;

typedef struct sdxl_engine_config {
    const char *const *models_dirs; /* roots model names resolve in (repeatable --models-dir) */
    int n_models_dirs;
    const char *const *lora_dirs;   /* extra per-kind roots; models_dirs are searched too */
    int n_lora_dirs;
    const char *const *vae_dirs;
    int n_vae_dirs;
    const char *const *control_dirs;
    int n_control_dirs;
    const char *const *input_dirs;  /* where init/mask/control image paths may point; none = refused */
    int n_input_dirs;
    const char *default_model;      /* base used when a request names none (a path or a name); an
                                       existing file outside the roots is allowed for itself alone */
    const char *output_root;        /* images go to output_root/save_path; default "." */
    const char *journal;            /* SQLite file; NULL = no journal (jobs live in memory only) */
    const char *precision;          /* "auto" (default), "f32", "bf16" */
    int n_threads;                  /* 0 = one per CPU */
    int queue_limit;                /* queued jobs accepted at most; default 64 */
    double default_timeout_s;       /* per job, from when it starts; default 600; 0 = none */
    int merge;                      /* batch manager: merge compatible jobs (default 1) */
    int max_merge;                  /* images per merged UNet batch at most (default 8) */
    uint64_t cache_bytes;           /* model LRU budget; default 0 = keep one model set */
    int max_side;                   /* width/height limit; default 2048 */
    int max_steps;                  /* default 150 */
    int max_images;                 /* per job; default 16 */
    int start_paused;               /* 1: jobs queue but nothing runs until sdxl_engine_resume */
    uint64_t cond_cache_bytes;      /* text-encoder output cache budget; default 64 MiB; 0 = off */
    int lora_reserve;               /* models map their LoRA merge buffers at load (sdxl_model_params) */
    int fail_alloc_at;              /* test hook: the k-th large allocation (UNet batch, VAE decode) fails; 0 off */
    int fail_alloc_count;           /* with fail_alloc_at: this many allocations in a row fail (default 1) */
    sdxl_log_level log_level;
    sdxl_log_fn log_fn;             /* NULL = stderr */
    void *log_user;
} sdxl_engine_config;

void sdxl_engine_config_init(sdxl_engine_config *c);

/* Opens the journal (re-queueing what a previous run left), starts the runner thread. On failure
 * err (may be NULL) holds the reason. */
int sdxl_engine_new(const sdxl_engine_config *c, sdxl_engine **out, char *err, size_t err_cap);
/* sdxl_engine_shutdown, then frees everything. */
void sdxl_engine_free(sdxl_engine *eng);
/* Stops accepting and lets the running job (or merged batch) finish; queued jobs stay queued in
 * the journal (without a journal they end "cancelled" with their events). Events stop after this
 * returns; sdxl_engine_free calls it when the caller did not. */
void sdxl_engine_shutdown(sdxl_engine *eng);
/* Lets the runner start jobs (after start_paused). */
void sdxl_engine_resume(sdxl_engine *eng);
/* Blocks until no job is queued or running (or timeout_s > 0 passes); returns 1 when idle. */
int sdxl_engine_wait_idle(sdxl_engine *eng, double timeout_s);

typedef enum sdxl_job_state {
    SDXL_JOB_QUEUED = 0,
    SDXL_JOB_RUNNING,
    SDXL_JOB_DONE,
    SDXL_JOB_FAILED,
    SDXL_JOB_CANCELLED
} sdxl_job_state;

const char *sdxl_job_state_name(sdxl_job_state s); /* "queued", "running", ... */

typedef struct sdxl_job_metrics {
    double queue_s;               /* accepted -> started */
    double load_s, text_s, encode_s, base_s, refiner_s, decode_s, write_s, total_s;
    uint64_t peak_rss;
    uint64_t plan_bytes, plan_available;
    int sub_batch, n_sub_batches;
    int merged_jobs;              /* jobs in the UNet batch this job ran in (1 = alone) */
    int unet_calls;               /* UNet forwards of the batch this job ran in */
    int rung;                     /* out-of-memory ladder rungs taken (0 none), each named in ladder */
    char ladder[128];             /* the rungs in order: "batch 8->4", "vae_tiled", "unet_rows 1"; "" none */
    int attempts;                 /* runs started (2 after one crash) */
    double images_per_s;
    int cond_cache_hits;          /* text encodings of the run this job was in served from the cache */
    int model_cache_hit;
} sdxl_job_metrics;

/* A snapshot of one job; free with sdxl_job_info_free. */
typedef struct sdxl_job_info {
    char id[40];
    char client_id[80];
    sdxl_job_state state;
    int priority;
    double created;               /* unix seconds */
    int n_images;
    int n_done;                   /* images written */
    char **paths;                 /* n_done output files */
    int64_t *seeds;               /* n_images seeds (fixed at acceptance) */
    int width, height;
    char error_code[32];          /* failed/cancelled: "cancelled", "timeout", "worker_crashed", ... */
    char error_field[96];
    char error[512];
    sdxl_job_metrics m;
    char *request_json;           /* canonical request */
} sdxl_job_info;

void sdxl_job_info_free(sdxl_job_info *j);
/* JSON object of a job snapshot (snake_case keys, as the native protocol writes it). */
void sdxl_job_info_json(const sdxl_job_info *j, sdxl_strbuf *b);

typedef enum sdxl_event_kind {
    SDXL_EVENT_ACCEPTED = 0,
    SDXL_EVENT_PROGRESS,
    SDXL_EVENT_PREVIEW,
    SDXL_EVENT_RESULT,
    SDXL_EVENT_ERROR
} sdxl_event_kind;

const char *sdxl_event_kind_name(sdxl_event_kind k);

typedef struct sdxl_event {
    sdxl_event_kind kind;
    const char *job_id;
    const char *client_id;           /* "" when none */
    /* PROGRESS */
    const char *phase;               /* "load", "text", "encode", "base", "refiner", "decode", "write" */
    int step, steps, image, n_images;
    double eta_s;                    /* < 0 unknown */
    /* PREVIEW: a small PNG of the current latents */
    const uint8_t *png;
    size_t png_len;
    /* RESULT (done) and ERROR (failed / cancelled): the job's snapshot */
    const sdxl_job_info *info;
    /* ERROR */
    const char *code, *field, *message;
} sdxl_event;

typedef void (*sdxl_event_fn)(void *user, const sdxl_event *ev);

/* Registers a subscriber; returns a token > 0 (0 when the table is full). */
int sdxl_engine_subscribe(sdxl_engine *eng, sdxl_event_fn fn, void *user);
void sdxl_engine_unsubscribe(sdxl_engine *eng, int token);

/* Validates (names resolved, limits checked), fixes a random seed, journals and queues a copy of
 * req. Returns SDXL_OK with the new id in id_out (>= 40 bytes); SDXL_ERR_ARG with is filled on a
 * bad request; SDXL_ERR_LIMIT with code "busy" when the queue is full; SDXL_ERR_IO when the journal
 * cannot record it. events (may be 0) = 0 keeps this job's events from subscribers (the
 * orchestrator dialect's lock-step: it waits with sdxl_engine_wait instead). */
int sdxl_engine_submit(sdxl_engine *eng, const sdxl_svc_request *req, int events, char *id_out,
                       sdxl_svc_issues *is);
/* Cancels a queued job at once, a running one within one UNet step. SDXL_ERR_ARG when unknown,
 * SDXL_OK when it is (or already was) finished. */
int sdxl_engine_cancel(sdxl_engine *eng, const char *id);
/* Snapshot of a job (SDXL_ERR_ARG when unknown). */
int sdxl_engine_get(sdxl_engine *eng, const char *id, sdxl_job_info *out);
/* Blocks until the job is done/failed/cancelled (or timeout_s > 0 passes: SDXL_ERR_LIMIT), then
 * fills out. */
int sdxl_engine_wait(sdxl_engine *eng, const char *id, double timeout_s, sdxl_job_info *out);
/* Snapshots of every job known to this engine (journal included), newest last. Free each with
 * sdxl_job_info_free and the array with free(). */
int sdxl_engine_list(sdxl_engine *eng, sdxl_job_info **out, int *n);

/* The resolved plan of a request without running it (dry run). */
typedef struct sdxl_job_plan {
    char sampler[48], schedule[48]; /* canonical names */
    char base[1024], refiner[1024], vae[1024]; /* files the names resolved to ("" none) */
    char loras[8][512];
    int n_loras;
    int width, height, steps, n_images, sub_batch, n_sub_batches;
    int refiner_switch_step;        /* first refiner step, = steps when no refiner runs */
    int img2img_start_step;         /* first step run from an init image, 0 for txt2img */
    uint64_t memory_bytes;          /* estimated peak activation bytes of one sub-batch */
    uint64_t memory_available;
    int64_t seed;
} sdxl_job_plan;

int sdxl_engine_plan(sdxl_engine *eng, const sdxl_svc_request *req, sdxl_job_plan *out, sdxl_svc_issues *is);
void sdxl_job_plan_json(const sdxl_job_plan *p, sdxl_strbuf *b);

/* Totals since the engine started. */
typedef struct sdxl_engine_metrics {
    int queued, running, done, failed, cancelled;
    int64_t images;
    double mean_latency_s, p95_latency_s;     /* accepted -> finished, done jobs */
    int64_t model_cache_hits, model_cache_misses, cond_cache_hits, cond_cache_misses;
    uint64_t cond_cache_bytes;                /* held by the conditioning cache */
    int64_t unet_batches, merged_batches;
    double uptime_s;
    uint64_t rss, peak_rss, mem_available;
    int queue_limit;
    char loaded_model[1024];                  /* most recently used base file, "" none */
} sdxl_engine_metrics;

void sdxl_engine_metrics_get(sdxl_engine *eng, sdxl_engine_metrics *out);
void sdxl_engine_metrics_json(const sdxl_engine_metrics *m, sdxl_strbuf *b);

/* Loads (or finds in the cache) a model set by names, as a job naming it would; for the
 * orchestrator's load_model. load_s and bytes describe the set. */
int sdxl_engine_load(sdxl_engine *eng, const char *base, const char *refiner, const char *vae, double *load_s,
                     uint64_t *bytes, char *resolved, size_t resolved_cap, char *err, size_t err_cap);
/* Drops every cached model (the orchestrator's unload_model / cleanup_memory). */
void sdxl_engine_unload(sdxl_engine *eng);

/* The base used when a request names none (the orchestrator's load_model sets it); NULL clears. */
void sdxl_engine_set_default_model(sdxl_engine *eng, const char *name);
/* The configuration the engine runs with (limits for hello / capabilities). */
const sdxl_engine_config *sdxl_engine_get_config(const sdxl_engine *eng);

/* Model files found under the model roots: names as requests may write them. */
int sdxl_engine_models(sdxl_engine *eng, sdxl_strbuf *json_array);

/* Resolves a name of kind "model", "vae", "lora", "control" or "input" to a file inside the
 * configured roots. Refuses "..", absolute paths outside the roots and symlink escapes. */
int sdxl_engine_resolve(sdxl_engine *eng, const char *kind, const char *name, char *out, size_t cap, char *err,
                        size_t err_cap);

#endif
