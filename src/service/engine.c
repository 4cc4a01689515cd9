/* The job engine: queue, runner thread, journal, model cache, events. See engine.h. */
#include "service/engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/mem.h"
#include "base/threads.h"
#include "denoise/registry.h"
#include "io/image.h"
#include "io/resize.h"
#include "pipeline/condcache.h"
#include "pipeline/pipeline.h"
#include "service/batch.h"
#include "service/journal.h"
#include "service/names.h"

#define MAX_SUBS 16
#define MAX_ATTEMPTS 2
#define KEEP_FINISHED 1024 /* finished jobs kept in memory (the journal keeps all) */

typedef struct job {
    sdxl_job_info info;
    sdxl_svc_request req; /* valid while queued or running */
    int has_req;
    int events;
    int64_t seq;
    volatile int cancel;
    int timed_out;
    int stale;       /* re-queued by recovery: a killed run may have left its outputs in place */
    double t_accept; /* monotonic */
    double deadline; /* monotonic, 0 = none */
} job;

typedef struct sub {
    sdxl_event_fn fn;
    void *user;
    int token;
} sub;

typedef struct model_entry {
    char key[3200];
    char base[1024];
    sdxl_pl_model *m;
    uint64_t bytes;
    uint64_t last_use;
    int refs;
} model_entry;

#define MAX_MODELS 8

struct sdxl_engine {
    sdxl_engine_config cfg;
    sdxl_svc_roots roots;
    char *output_root;
    char *default_model;
    char *precision;
    sdxl_logger log;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    job **jobs;
    int n_jobs, cap_jobs;
    int64_t next_seq;
    int stop, paused, running;
    pthread_t runner;
    int have_runner;
    pthread_mutex_t sub_mu;
    sub subs[MAX_SUBS];
    int next_token;
    sdxl_journal *journal;
    uint64_t rng;
    /* model cache (cache_mu, held across loads) */
    pthread_mutex_t cache_mu;
    model_entry models[MAX_MODELS];
    uint64_t use_clock;
    /* metrics (mu) */
    double t_start;
    int64_t images, cache_hits, cache_misses, unet_batches, merged_batches;
    double *latencies;
    int n_lat, cap_lat;
    int alloc_count; /* large allocations seen by the fail_alloc hook (runner only) */
    sdxl_pl_condcache *cond_cache; /* text-encoder outputs of every cached model; NULL = off */
    uint64_t model_ids;            /* loads so far: each loaded model's id in cond_cache */
    char loaded[1024];
};

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static char *xstrdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

const char *sdxl_job_state_name(sdxl_job_state s) {
    static const char *const n[] = {"queued", "running", "done", "failed", "cancelled"};
    return (unsigned)s < 5 ? n[s] : "?";
}

const char *sdxl_event_kind_name(sdxl_event_kind k) {
    static const char *const n[] = {"accepted", "progress", "preview", "result", "error"};
    return (unsigned)k < 5 ? n[k] : "?";
}

void sdxl_engine_config_init(sdxl_engine_config *c) {
    memset(c, 0, sizeof *c);
    c->output_root = ".";
    c->precision = "auto";
    c->queue_limit = 64;
    c->default_timeout_s = 600;
    c->merge = 1;
    c->max_merge = 8;
    c->max_side = 2048;
    c->max_steps = 150;
    c->max_images = 16;
    c->cond_cache_bytes = (uint64_t)64 << 20;
    c->fail_alloc_count = 1;
    c->log_level = SDXL_LOG_WARN;
}

/* ---- job snapshots --------------------------------------------------------------------------- */

void sdxl_job_info_free(sdxl_job_info *j) {
    if (!j) return;
    for (int i = 0; j->paths && i < j->n_done; i++) free(j->paths[i]);
    free(j->paths);
    free(j->seeds);
    free(j->request_json);
    memset(j, 0, sizeof *j);
}

static int info_copy(const sdxl_job_info *src, sdxl_job_info *dst) {
    *dst = *src;
    dst->paths = NULL;
    dst->seeds = NULL;
    dst->request_json = NULL;
    dst->n_done = 0;
    if (src->n_done) {
        dst->paths = calloc((size_t)src->n_done, sizeof *dst->paths);
        if (!dst->paths) return SDXL_ERR_NOMEM;
        for (int i = 0; i < src->n_done; i++) {
            dst->paths[i] = xstrdup(src->paths[i]);
            if (!dst->paths[i]) {
                sdxl_job_info_free(dst);
                return SDXL_ERR_NOMEM;
            }
            dst->n_done = i + 1;
        }
    }
    if (src->n_images > 0 && src->seeds) {
        dst->seeds = malloc((size_t)src->n_images * sizeof *dst->seeds);
        if (!dst->seeds) {
            sdxl_job_info_free(dst);
            return SDXL_ERR_NOMEM;
        }
        memcpy(dst->seeds, src->seeds, (size_t)src->n_images * sizeof *dst->seeds);
    }
    if (src->request_json && !(dst->request_json = xstrdup(src->request_json))) {
        sdxl_job_info_free(dst);
        return SDXL_ERR_NOMEM;
    }
    return SDXL_OK;
}

static void metrics_json(const sdxl_job_metrics *m, sdxl_strbuf *b) {
    sdxl_sb_printf(b,
                   "{\"queue_s\":%.4f,\"load_s\":%.4f,\"text_s\":%.4f,\"encode_s\":%.4f,\"base_s\":%.4f,"
                   "\"refiner_s\":%.4f,\"decode_s\":%.4f,\"write_s\":%.4f,\"total_s\":%.4f,\"peak_rss\":%llu,"
                   "\"plan_bytes\":%llu,\"plan_available\":%llu,\"sub_batch\":%d,\"n_sub_batches\":%d,"
                   "\"merged_jobs\":%d,\"unet_calls\":%d,\"rung\":%d,\"attempts\":%d,\"images_per_s\":%.4f,"
                   "\"cond_cache_hits\":%d,\"model_cache_hit\":%s,\"ladder\":",
                   m->queue_s, m->load_s, m->text_s, m->encode_s, m->base_s, m->refiner_s, m->decode_s, m->write_s,
                   m->total_s, (unsigned long long)m->peak_rss, (unsigned long long)m->plan_bytes,
                   (unsigned long long)m->plan_available, m->sub_batch, m->n_sub_batches, m->merged_jobs,
                   m->unet_calls, m->rung, m->attempts, m->images_per_s, m->cond_cache_hits,
                   m->model_cache_hit ? "true" : "false");
    sdxl_sb_json(b, m->ladder);
    sdxl_sb_str(b, "}");
}

void sdxl_job_info_json(const sdxl_job_info *j, sdxl_strbuf *b) {
    sdxl_sb_str(b, "{\"id\":");
    sdxl_sb_json(b, j->id);
    if (j->client_id[0]) {
        sdxl_sb_str(b, ",\"client_id\":");
        sdxl_sb_json(b, j->client_id);
    }
    sdxl_sb_printf(b, ",\"state\":\"%s\",\"priority\":%d,\"created\":%.3f,\"n_images\":%d,\"width\":%d,\"height\":%d",
                   sdxl_job_state_name(j->state), j->priority, j->created, j->n_images, j->width, j->height);
    sdxl_sb_str(b, ",\"images\":[");
    for (int i = 0; i < j->n_done; i++) {
        sdxl_sb_str(b, i ? ",{\"path\":" : "{\"path\":");
        sdxl_sb_json(b, j->paths[i]);
        sdxl_sb_printf(b, ",\"seed\":%lld}", j->seeds ? (long long)j->seeds[i] : -1LL);
    }
    sdxl_sb_str(b, "],\"seeds\":[");
    for (int i = 0; j->seeds && i < j->n_images; i++) sdxl_sb_printf(b, "%s%lld", i ? "," : "", (long long)j->seeds[i]);
    sdxl_sb_str(b, "]");
    if (j->error_code[0]) {
        sdxl_sb_str(b, ",\"error\":{\"code\":");
        sdxl_sb_json(b, j->error_code);
        sdxl_sb_str(b, ",\"field\":");
        sdxl_sb_json(b, j->error_field);
        sdxl_sb_str(b, ",\"message\":");
        sdxl_sb_json(b, j->error);
        sdxl_sb_str(b, "}");
    }
    sdxl_sb_str(b, ",\"metrics\":");
    metrics_json(&j->m, b);
    sdxl_sb_str(b, "}");
}

/* ---- events ---------------------------------------------------------------------------------- */

static void emit(sdxl_engine *eng, const job *j, sdxl_event *ev) {
    if (!j->events) return;
    ev->job_id = j->info.id;
    ev->client_id = j->info.client_id;
    pthread_mutex_lock(&eng->sub_mu);
    for (int i = 0; i < MAX_SUBS; i++)
        if (eng->subs[i].fn) eng->subs[i].fn(eng->subs[i].user, ev);
    pthread_mutex_unlock(&eng->sub_mu);
}

int sdxl_engine_subscribe(sdxl_engine *eng, sdxl_event_fn fn, void *user) {
    int tok = 0;
    pthread_mutex_lock(&eng->sub_mu);
    for (int i = 0; i < MAX_SUBS; i++)
        if (!eng->subs[i].fn) {
            eng->subs[i].fn = fn;
            eng->subs[i].user = user;
            eng->subs[i].token = tok = ++eng->next_token;
            break;
        }
    pthread_mutex_unlock(&eng->sub_mu);
    return tok;
}

void sdxl_engine_unsubscribe(sdxl_engine *eng, int token) {
    pthread_mutex_lock(&eng->sub_mu);
    for (int i = 0; i < MAX_SUBS; i++)
        if (eng->subs[i].token == token) memset(&eng->subs[i], 0, sizeof eng->subs[i]);
    pthread_mutex_unlock(&eng->sub_mu);
}

/* ---- job table (mu held) ------------------------------------------------------------------------ */

static job *find(sdxl_engine *eng, const char *id) {
    for (int i = 0; i < eng->n_jobs; i++)
        if (!strcmp(eng->jobs[i]->info.id, id)) return eng->jobs[i];
    return NULL;
}

static void job_free(job *j) {
    if (!j) return;
    sdxl_job_info_free(&j->info);
    if (j->has_req) sdxl_svc_request_free(&j->req);
    free(j);
}

/* Appends j; drops the oldest finished jobs beyond KEEP_FINISHED. */
static int table_add(sdxl_engine *eng, job *j) {
    int finished = 0;
    for (int i = 0; i < eng->n_jobs; i++) finished += eng->jobs[i]->info.state >= SDXL_JOB_DONE;
    if (finished > KEEP_FINISHED)
        for (int i = 0; i < eng->n_jobs; i++)
            if (eng->jobs[i]->info.state >= SDXL_JOB_DONE) {
                job_free(eng->jobs[i]);
                memmove(eng->jobs + i, eng->jobs + i + 1, (size_t)(eng->n_jobs - i - 1) * sizeof *eng->jobs);
                eng->n_jobs--;
                break;
            }
    if (eng->n_jobs == eng->cap_jobs) {
        int cap = eng->cap_jobs ? 2 * eng->cap_jobs : 64;
        job **nj = realloc(eng->jobs, (size_t)cap * sizeof *nj);
        if (!nj) return SDXL_ERR_NOMEM;
        eng->jobs = nj;
        eng->cap_jobs = cap;
    }
    eng->jobs[eng->n_jobs++] = j;
    return SDXL_OK;
}

static int count_state(sdxl_engine *eng, sdxl_job_state s) {
    int n = 0;
    for (int i = 0; i < eng->n_jobs; i++) n += eng->jobs[i]->info.state == s;
    return n;
}

/* Images a request makes: its output files are numbered 1..this. */
static int images_of(const sdxl_svc_request *r) {
    return r->g.batch_count * (r->g.batch_size > 0 ? r->g.batch_size : 1);
}

/* Fills the seeds and sizes of a job from its request (seed already fixed). */
static int job_fill(job *j) {
    const sdxl_gen_params *g = &j->req.g;
    int n = images_of(&j->req);
    j->info.n_images = n;
    j->info.width = g->width ? g->width : 1024;
    j->info.height = g->height ? g->height : 1024;
    j->info.priority = j->req.priority;
    snprintf(j->info.client_id, sizeof j->info.client_id, "%s", j->req.client_id ? j->req.client_id : "");
    free(j->info.seeds);
    j->info.seeds = malloc((size_t)(n > 0 ? n : 1) * sizeof *j->info.seeds);
    if (!j->info.seeds) return SDXL_ERR_NOMEM;
    for (int i = 0; i < n; i++) j->info.seeds[i] = g->seed + i;
    return SDXL_OK;
}

/* ---- names ---------------------------------------------------------------------------------- */

int sdxl_engine_resolve(sdxl_engine *eng, const char *kind, const char *name, char *out, size_t cap, char *err,
                        size_t err_cap) {
    return sdxl_svc_resolve(&eng->roots, kind, name, out, cap, err, err_cap);
}

int sdxl_engine_models(sdxl_engine *eng, sdxl_strbuf *b) { return sdxl_svc_list_models(&eng->roots, b); }

/* Resolves the model names of a request; issues name the field. */
static int resolve_models(sdxl_engine *eng, const sdxl_svc_request *r, char *base, char *refiner, char *vae,
                          size_t cap, sdxl_svc_issues *is) {
    char err[512];
    int bad = 0;
    char def[1024] = "";
    pthread_mutex_lock(&eng->mu);
    if (eng->default_model) snprintf(def, sizeof def, "%s", eng->default_model);
    pthread_mutex_unlock(&eng->mu);
    const char *bn = r->base ? r->base : def[0] ? def : NULL;
    base[0] = refiner[0] = vae[0] = 0;
    if (!bn) {
        sdxl_svc_issue_add(is, "missing_field", "model", "no model named and the worker has no default (--model)");
        bad = 1;
    } else if (sdxl_svc_resolve(&eng->roots, "model", bn, base, cap, err, sizeof err)) {
        /* the worker's own default may be any path the operator gave */
        if (!r->base && def[0] && strlen(def) < cap && access(def, R_OK) == 0) {
            snprintf(base, cap, "%s", def);
        } else {
            sdxl_svc_issue_add(is, strstr(err, "refused") ? "path_refused" : "model_not_found", "model", "%s", err);
            bad = 1;
        }
    }
    if (r->refiner && sdxl_svc_resolve(&eng->roots, "model", r->refiner, refiner, cap, err, sizeof err)) {
        sdxl_svc_issue_add(is, strstr(err, "refused") ? "path_refused" : "model_not_found", "refiner", "%s", err);
        bad = 1;
    }
    if (r->vae && sdxl_svc_resolve(&eng->roots, "vae", r->vae, vae, cap, err, sizeof err)) {
        sdxl_svc_issue_add(is, strstr(err, "refused") ? "path_refused" : "model_not_found", "vae", "%s", err);
        bad = 1;
    }
    return bad ? SDXL_ERR_ARG : SDXL_OK;
}

/* Checks a request against the engine's limits and roots (everything but running it). */
static int engine_check(sdxl_engine *eng, const sdxl_svc_request *r, sdxl_svc_issues *is) {
    int before = is->n;
    const sdxl_gen_params *g = &r->g;
    int w = g->width ? g->width : 1024, h = g->height ? g->height : 1024;
    if (w > eng->cfg.max_side)
        sdxl_svc_issue_add(is, "limit", "width", "at most %d on this worker, got %d", eng->cfg.max_side, w);
    if (h > eng->cfg.max_side)
        sdxl_svc_issue_add(is, "limit", "height", "at most %d on this worker, got %d", eng->cfg.max_side, h);
    if (g->steps > eng->cfg.max_steps)
        sdxl_svc_issue_add(is, "limit", "steps", "at most %d on this worker, got %d", eng->cfg.max_steps, g->steps);
    int n = g->batch_count * (g->batch_size > 0 ? g->batch_size : 1);
    if (n > eng->cfg.max_images)
        sdxl_svc_issue_add(is, "limit", "batch_count", "at most %d images per job on this worker, got %d",
                           eng->cfg.max_images, n);
    char a[1024], b[1024], c[1024], err[512];
    resolve_models(eng, r, a, b, c, sizeof a, is);
    for (int i = 0; i < r->n_loras; i++) {
        char f[48];
        snprintf(f, sizeof f, "loras[%d].name", i);
        if (r->loras[i].name && sdxl_svc_resolve(&eng->roots, "lora", r->loras[i].name, a, sizeof a, err, sizeof err))
            sdxl_svc_issue_add(is, strstr(err, "refused") ? "path_refused" : "model_not_found", f, "%s", err);
    }
    const char *imgs[2] = {r->init_image, r->mask};
    const char *names[2] = {"init_image", "mask"};
    for (int i = 0; i < 2; i++)
        if (imgs[i] && !sdxl_svc_is_base64(imgs[i]) &&
            sdxl_svc_resolve(&eng->roots, "input", imgs[i], a, sizeof a, err, sizeof err))
            sdxl_svc_issue_add(is, strstr(err, "refused") ? "path_refused" : "file_not_found", names[i], "%s", err);
    return is->n > before ? SDXL_ERR_ARG : SDXL_OK;
}

/* ---- submit / cancel / query ---------------------------------------------------------------------- */

int sdxl_engine_submit(sdxl_engine *eng, const sdxl_svc_request *req, int events, char *id_out, sdxl_svc_issues *is) {
    id_out[0] = 0;
    if (sdxl_svc_request_validate(req, is) || engine_check(eng, req, is)) return SDXL_ERR_ARG;
    job *j = calloc(1, sizeof *j);
    if (!j) {
        sdxl_svc_issue_add(is, "nomem", "", "out of memory");
        return SDXL_ERR_NOMEM;
    }
    if (sdxl_svc_request_copy(req, &j->req)) {
        free(j);
        sdxl_svc_issue_add(is, "nomem", "", "out of memory copying the request");
        return SDXL_ERR_NOMEM;
    }
    j->has_req = 1;
    j->events = events;
    pthread_mutex_lock(&eng->mu);
    if (eng->stop) {
        pthread_mutex_unlock(&eng->mu);
        job_free(j);
        sdxl_svc_issue_add(is, "shutting_down", "", "the worker is shutting down");
        return SDXL_ERR_LIMIT;
    }
    if (count_state(eng, SDXL_JOB_QUEUED) >= eng->cfg.queue_limit) {
        pthread_mutex_unlock(&eng->mu);
        job_free(j);
        sdxl_svc_issue_add(is, "busy", "", "the queue is full (%d jobs); retry later", eng->cfg.queue_limit);
        return SDXL_ERR_LIMIT;
    }
    /* a random seed is fixed now, so a re-run after a crash makes the same images; int32 range
     * because the orchestrator reads seeds as C# int */
    if (j->req.g.seed < 0) j->req.g.seed = (int64_t)(splitmix(&eng->rng) & 0x7fffffff);
    snprintf(j->info.id, sizeof j->info.id, "%016llx", (unsigned long long)splitmix(&eng->rng));
    j->seq = eng->next_seq++;
    j->info.created = now_wall();
    j->t_accept = now_mono();
    j->info.state = SDXL_JOB_QUEUED;
    int st = job_fill(j);
    sdxl_strbuf rb = {0};
    if (!st) {
        sdxl_svc_request_to_json(&j->req, &rb);
        if (rb.oom) st = SDXL_ERR_NOMEM;
        else j->info.request_json = xstrdup(rb.p);
    }
    char err[512] = "";
    if (!st && eng->journal)
        st = sdxl_journal_add(eng->journal, j->info.id, j->seq, j->req.priority, j->info.created, rb.p, err,
                              sizeof err);
    sdxl_sb_free(&rb);
    if (!st) st = table_add(eng, j);
    if (st) {
        pthread_mutex_unlock(&eng->mu);
        job_free(j);
        sdxl_svc_issue_add(is, st == SDXL_ERR_IO ? "journal" : "nomem", "", "%s", err[0] ? err : "out of memory");
        return st;
    }
    snprintf(id_out, 40, "%s", j->info.id);
    /* accepted is emitted before the runner can see the job, so it precedes the job's other events */
    sdxl_event ev = {.kind = SDXL_EVENT_ACCEPTED, .info = &j->info};
    emit(eng, j, &ev);
    pthread_cond_broadcast(&eng->work_cv);
    pthread_mutex_unlock(&eng->mu);
    return SDXL_OK;
}

static void finish_locked(sdxl_engine *eng, job *j, sdxl_job_state st, const char *code, const char *field,
                          const char *msg);

int sdxl_engine_cancel(sdxl_engine *eng, const char *id) {
    pthread_mutex_lock(&eng->mu);
    job *j = find(eng, id);
    if (!j) {
        pthread_mutex_unlock(&eng->mu);
        return SDXL_ERR_ARG;
    }
    if (j->info.state == SDXL_JOB_QUEUED) finish_locked(eng, j, SDXL_JOB_CANCELLED, "cancelled", "", "cancelled");
    else if (j->info.state == SDXL_JOB_RUNNING) j->cancel = 1;
    pthread_mutex_unlock(&eng->mu);
    return SDXL_OK;
}

int sdxl_engine_get(sdxl_engine *eng, const char *id, sdxl_job_info *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&eng->mu);
    job *j = find(eng, id);
    int st = j ? info_copy(&j->info, out) : SDXL_ERR_ARG;
    pthread_mutex_unlock(&eng->mu);
    return st;
}

int sdxl_engine_wait(sdxl_engine *eng, const char *id, double timeout_s, sdxl_job_info *out) {
    memset(out, 0, sizeof *out);
    double end = timeout_s > 0 ? now_mono() + timeout_s : 0;
    pthread_mutex_lock(&eng->mu);
    for (;;) {
        job *j = find(eng, id);
        if (!j) {
            pthread_mutex_unlock(&eng->mu);
            return SDXL_ERR_ARG;
        }
        if (j->info.state >= SDXL_JOB_DONE) {
            int st = info_copy(&j->info, out);
            pthread_mutex_unlock(&eng->mu);
            return st;
        }
        if (end && now_mono() >= end) {
            pthread_mutex_unlock(&eng->mu);
            return SDXL_ERR_LIMIT;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&eng->done_cv, &eng->mu, &ts);
    }
}

int sdxl_engine_list(sdxl_engine *eng, sdxl_job_info **out, int *n) {
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&eng->mu);
    sdxl_job_info *arr = calloc((size_t)(eng->n_jobs ? eng->n_jobs : 1), sizeof *arr);
    int st = arr ? SDXL_OK : SDXL_ERR_NOMEM;
    for (int i = 0; !st && i < eng->n_jobs; i++) {
        st = info_copy(&eng->jobs[i]->info, &arr[i]);
        if (!st) *n = i + 1;
    }
    pthread_mutex_unlock(&eng->mu);
    if (st) {
        for (int i = 0; i < *n; i++) sdxl_job_info_free(&arr[i]);
        free(arr);
        *n = 0;
        return st;
    }
    *out = arr;
    return SDXL_OK;
}

int sdxl_engine_wait_idle(sdxl_engine *eng, double timeout_s) {
    double end = timeout_s > 0 ? now_mono() + timeout_s : 0;
    pthread_mutex_lock(&eng->mu);
    for (;;) {
        int busy = count_state(eng, SDXL_JOB_QUEUED) + count_state(eng, SDXL_JOB_RUNNING);
        if (!busy || (end && now_mono() >= end)) {
            pthread_mutex_unlock(&eng->mu);
            return !busy;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&eng->done_cv, &eng->mu, &ts);
    }
}

void sdxl_engine_resume(sdxl_engine *eng) {
    pthread_mutex_lock(&eng->mu);
    eng->paused = 0;
    pthread_cond_broadcast(&eng->work_cv);
    pthread_mutex_unlock(&eng->mu);
}

/* ---- finishing --------------------------------------------------------------------------------- */

static void remove_outputs(sdxl_engine *eng, const sdxl_svc_request *r, const char *id, int finals);

static void finish_locked(sdxl_engine *eng, job *j, sdxl_job_state st, const char *code, const char *field,
                          const char *msg) {
    j->info.state = st;
    snprintf(j->info.error_code, sizeof j->info.error_code, "%s", code ? code : "");
    snprintf(j->info.error_field, sizeof j->info.error_field, "%s", field ? field : "");
    snprintf(j->info.error, sizeof j->info.error, "%s", msg ? msg : "");
    j->info.m.total_s = now_mono() - j->t_accept;
    /* a job ending without images first removes what a killed earlier run renamed into place (rare:
     * re-queued jobs only), before its state is durable; a kill in between leaves it to recovery */
    if (st != SDXL_JOB_DONE && j->stale && j->has_req) remove_outputs(eng, &j->req, j->info.id, 1);
    if (eng->journal) {
        sdxl_strbuf p = {0}, mj = {0};
        for (int i = 0; i < j->info.n_done; i++) {
            sdxl_sb_str(&p, j->info.paths[i]);
            sdxl_sb_str(&p, "\n");
        }
        metrics_json(&j->info.m, &mj);
        char err[512];
        if (sdxl_journal_finish(eng->journal, j->info.id, st, p.p ? p.p : "", mj.p ? mj.p : "", code, msg, err,
                                sizeof err))
            SDXL_ERROR(&eng->log, "%s", err);
        sdxl_sb_free(&p);
        sdxl_sb_free(&mj);
    }
    if (st == SDXL_JOB_DONE) {
        eng->images += j->info.n_done;
        if (eng->n_lat == eng->cap_lat) {
            int cap = eng->cap_lat ? 2 * eng->cap_lat : 256;
            double *nl = realloc(eng->latencies, (size_t)cap * sizeof *nl);
            if (nl) {
                eng->latencies = nl;
                eng->cap_lat = cap;
            }
        }
        if (eng->n_lat < eng->cap_lat) eng->latencies[eng->n_lat++] = j->info.m.total_s;
    }
    if (j->has_req) {
        sdxl_svc_request_free(&j->req);
        j->has_req = 0;
    }
    sdxl_event ev = {.kind = st == SDXL_JOB_DONE ? SDXL_EVENT_RESULT : SDXL_EVENT_ERROR, .info = &j->info,
                     .code = j->info.error_code, .field = j->info.error_field, .message = j->info.error};
    emit(eng, j, &ev);
    pthread_cond_broadcast(&eng->done_cv);
}

/* ---- model cache ---------------------------------------------------------------------------------- */

static uint64_t file_bytes(const char *path) {
    struct stat sb;
    if (!path || !*path || stat(path, &sb)) return 0;
    if (S_ISREG(sb.st_mode)) return (uint64_t)sb.st_size;
    return 0;
}

/* Returns a referenced entry (cache_mu held by the caller during the call). */
static model_entry *cache_get(sdxl_engine *eng, const char *base, const char *refiner, const char *vae, int *hit,
                              double *load_s, sdxl_err *e) {
    char key[3200];
    snprintf(key, sizeof key, "%s|%s|%s", base, refiner, vae);
    eng->use_clock++;
    for (int i = 0; i < MAX_MODELS; i++)
        if (eng->models[i].m && !strcmp(eng->models[i].key, key)) {
            eng->models[i].last_use = eng->use_clock;
            eng->models[i].refs++;
            *hit = 1;
            *load_s = 0;
            return &eng->models[i];
        }
    *hit = 0;
    uint64_t need = file_bytes(base) + file_bytes(refiner) + file_bytes(vae);
    /* evict least recently used sets until the budget holds the new one (0 budget: keep one set) */
    for (;;) {
        uint64_t used = 0;
        int n = 0, lru = -1;
        for (int i = 0; i < MAX_MODELS; i++)
            if (eng->models[i].m) {
                used += eng->models[i].bytes;
                n++;
                if (!eng->models[i].refs && (lru < 0 || eng->models[i].last_use < eng->models[lru].last_use)) lru = i;
            }
        int over = eng->cfg.cache_bytes ? used + need > eng->cfg.cache_bytes : n >= 1;
        if (n >= MAX_MODELS) over = 1;
        if (!over || lru < 0) break;
        sdxl_pl_condcache_drop(eng->cond_cache, eng->models[lru].m->cond_cache_id);
        sdxl_pl_model_free(eng->models[lru].m);
        memset(&eng->models[lru], 0, sizeof eng->models[lru]);
    }
    int slot = -1;
    for (int i = 0; i < MAX_MODELS && slot < 0; i++)
        if (!eng->models[i].m) slot = i;
    if (slot < 0) {
        sdxl_seterr(e, SDXL_ERR_LIMIT, "model cache: every slot is in use");
        return NULL;
    }
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = base;
    mp.refiner = refiner[0] ? refiner : NULL;
    mp.vae = vae[0] ? vae : NULL;
    mp.precision = eng->precision;
    mp.lora_reserve = eng->cfg.lora_reserve;
    double t0 = now_mono();
    sdxl_pl_model *m = NULL;
    if (sdxl_pl_model_load(&mp, &eng->log, &m, e)) return NULL;
    *load_s = now_mono() - t0;
    m->cond_cache = eng->cond_cache;
    m->cond_cache_id = ++eng->model_ids;
    model_entry *me = &eng->models[slot];
    snprintf(me->key, sizeof me->key, "%s", key);
    snprintf(me->base, sizeof me->base, "%s", base);
    me->m = m;
    me->bytes = need;
    me->last_use = eng->use_clock;
    me->refs = 1;
    return me;
}

static void cache_put(sdxl_engine *eng, model_entry *me) {
    pthread_mutex_lock(&eng->cache_mu);
    me->refs--;
    pthread_mutex_unlock(&eng->cache_mu);
}

int sdxl_engine_load(sdxl_engine *eng, const char *base, const char *refiner, const char *vae, double *load_s,
                     uint64_t *bytes, char *resolved, size_t resolved_cap, char *err, size_t err_cap) {
    char b[1024], r[1024] = "", v[1024] = "";
    *load_s = 0;
    *bytes = 0;
    int st = sdxl_svc_resolve(&eng->roots, "model", base, b, sizeof b, err, err_cap);
    if (!st && refiner) st = sdxl_svc_resolve(&eng->roots, "model", refiner, r, sizeof r, err, err_cap);
    if (!st && vae) st = sdxl_svc_resolve(&eng->roots, "vae", vae, v, sizeof v, err, err_cap);
    if (st) return st;
    sdxl_threads_set(eng->cfg.n_threads); /* the load runs on the caller's thread */
    pthread_mutex_lock(&eng->cache_mu);
    int hit = 0;
    sdxl_err e = {0};
    model_entry *me = cache_get(eng, b, r, v, &hit, load_s, &e);
    if (me) {
        me->refs--;
        *bytes = me->bytes;
    }
    pthread_mutex_unlock(&eng->cache_mu);
    if (!me) {
        snprintf(err, err_cap, "%s", e.msg);
        return e.status ? e.status : SDXL_ERR_IO;
    }
    pthread_mutex_lock(&eng->mu);
    if (hit) eng->cache_hits++;
    else eng->cache_misses++;
    snprintf(eng->loaded, sizeof eng->loaded, "%s", b);
    pthread_mutex_unlock(&eng->mu);
    snprintf(resolved, resolved_cap, "%s", b);
    return SDXL_OK;
}

void sdxl_engine_unload(sdxl_engine *eng) {
    pthread_mutex_lock(&eng->cache_mu);
    for (int i = 0; i < MAX_MODELS; i++)
        if (eng->models[i].m && !eng->models[i].refs) {
            sdxl_pl_condcache_drop(eng->cond_cache, eng->models[i].m->cond_cache_id);
            sdxl_pl_model_free(eng->models[i].m);
            memset(&eng->models[i], 0, sizeof eng->models[i]);
        }
    pthread_mutex_unlock(&eng->cache_mu);
    pthread_mutex_lock(&eng->mu);
    eng->loaded[0] = 0;
    pthread_mutex_unlock(&eng->mu);
}

/* ---- running a group of jobs ------------------------------------------------------------------------ */

typedef struct run_ctx {
    sdxl_engine *eng;
    job **jobs;
    int n;
    double t0;
    int preview_every;
    volatile int cancel;
} run_ctx;

static int fail_alloc_hook(void *user, int batch) {
    run_ctx *rc = user;
    (void)batch;
    const sdxl_engine_config *c = &rc->eng->cfg;
    int k = ++rc->eng->alloc_count;
    return c->fail_alloc_at > 0 && k >= c->fail_alloc_at && k < c->fail_alloc_at + (c->fail_alloc_count > 0 ? c->fail_alloc_count : 1);
}

static void step_hook(void *user, int stage, int step, const float *x, size_t n) {
    run_ctx *rc = user;
    (void)stage;
    if (!rc->preview_every || (step + 1) % rc->preview_every) return;
    job *j = rc->jobs[0];
    uint8_t *png = NULL;
    size_t len = 0;
    if (sdxl_svc_preview_png(x, n, j->info.width / 8, j->info.height / 8, &png, &len) == SDXL_OK) {
        sdxl_event ev = {.kind = SDXL_EVENT_PREVIEW, .png = png, .png_len = len, .step = step + 1};
        for (int i = 0; i < rc->n; i++) emit(rc->eng, rc->jobs[i], &ev);
    }
    free(png);
}

static int progress_cb(void *user, const sdxl_progress *p) {
    run_ctx *rc = user;
    sdxl_engine *eng = rc->eng;
    double now = now_mono();
    int stop = 0;
    pthread_mutex_lock(&eng->mu);
    for (int i = 0; i < rc->n; i++) {
        job *j = rc->jobs[i];
        if (j->deadline > 0 && now > j->deadline) j->timed_out = 1;
        if (j->cancel || j->timed_out) stop = 1;
    }
    pthread_mutex_unlock(&eng->mu);
    if (stop) {
        rc->cancel = 1;
        return 1;
    }
    sdxl_event ev = {.kind = SDXL_EVENT_PROGRESS, .phase = sdxl_phase_name(p->phase), .step = p->step,
                     .steps = p->total, .image = p->image, .n_images = p->n_images, .eta_s = p->eta};
    for (int i = 0; i < rc->n; i++) emit(eng, rc->jobs[i], &ev);
    return 0;
}

static void progress_phase(run_ctx *rc, const char *phase, int step, int steps) {
    sdxl_event ev = {.kind = SDXL_EVENT_PROGRESS, .phase = phase, .step = step, .steps = steps, .eta_s = -1};
    for (int i = 0; i < rc->n; i++) {
        ev.n_images = rc->jobs[i]->info.n_images;
        emit(rc->eng, rc->jobs[i], &ev);
    }
}

static sdxl_image_format fmt_of(const char *f) {
    if (!f || !strcasecmp(f, "png")) return SDXL_IMAGE_PNG;
    if (!strcasecmp(f, "jpeg") || !strcasecmp(f, "jpg")) return SDXL_IMAGE_JPEG;
    return SDXL_IMAGE_WEBP;
}

static int mkdirs(const char *path) {
    char tmp[2048];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0777) && errno != EEXIST) return -1;
            *p = '/';
        }
    if (mkdir(tmp, 0777) && errno != EEXIST) return -1;
    return 0;
}

/* Output file of image i of job id: output_root/save_path/prefix_id_(i+1).ext */
static void out_path(sdxl_engine *eng, const sdxl_svc_request *r, const char *id, int i, char *buf, size_t cap,
                     char *dir, size_t dcap) {
    const char *sp = r->save_path ? r->save_path : "";
    const char *root = eng->output_root;
    if (!strcmp(root, ".")) snprintf(dir, dcap, "%s", *sp ? sp : ".");
    else snprintf(dir, dcap, "%s%s%s", root, *sp ? "/" : "", sp);
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dir[--dl] = 0;
    const char *ext = fmt_of(r->format) == SDXL_IMAGE_PNG ? "png" : fmt_of(r->format) == SDXL_IMAGE_JPEG ? "jpg" : "webp";
    const char *prefix = r->file_prefix ? r->file_prefix : "sdxl";
    if (!strcmp(dir, ".")) snprintf(buf, cap, "%s_%s_%d.%s", prefix, id, i + 1, ext);
    else snprintf(buf, cap, "%s/%s_%s_%d.%s", dir, prefix, id, i + 1, ext);
}

/* A run killed while writing may have left temporary siblings of a job's outputs
 * (name.PID.X.tmp), and one killed after a rename but before the journal recorded the job, its
 * outputs in place. Removes the temporaries, and with finals the outputs too: a job that ends
 * without images must leave no file that its journal row does not list. */
static void remove_outputs(sdxl_engine *eng, const sdxl_svc_request *r, const char *id, int finals) {
    char path[2048], dir[2048];
    for (int i = 0; finals && i < images_of(r); i++) {
        out_path(eng, r, id, i, path, sizeof path, dir, sizeof dir);
        if (unlink(path) == 0) SDXL_INFO(&eng->log, "job %s: removed %s, written by a killed run", id, path);
    }
    out_path(eng, r, id, 0, path, sizeof path, dir, sizeof dir);
    char pre[128];
    snprintf(pre, sizeof pre, "%s_%s_", r->file_prefix ? r->file_prefix : "sdxl", id);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (strncmp(de->d_name, pre, strlen(pre)) || n < 4 || strcmp(de->d_name + n - 4, ".tmp")) continue;
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", dir, de->d_name);
        unlink(full);
    }
    closedir(d);
}

/* Loads init image / mask from a path inside the input roots or from base64. */
static int load_image(sdxl_engine *eng, const char *ref, int channels, const char *what, sdxl_image *out,
                      sdxl_err *e) {
    if (sdxl_svc_is_base64(ref)) {
        uint8_t *buf = NULL;
        size_t n = 0;
        if (sdxl_svc_base64_decode(ref, &buf, &n))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: not valid base64", what);
        int st = sdxl_image_decode(buf, n, what, NULL, channels, out, NULL, e);
        free(buf);
        return st;
    }
    char path[1024], err[512];
    if (sdxl_svc_resolve(&eng->roots, "input", ref, path, sizeof path, err, sizeof err))
        return sdxl_seterr(e, SDXL_ERR_ARG, "%s: %s", what, err);
    return sdxl_image_read(path, NULL, channels, out, NULL, e);
}

/* Error code of a failed generation. */
static const char *code_of(int st) {
    switch (st) {
    case SDXL_ERR_ARG: return "invalid_request";
    case SDXL_ERR_IO: return "io_error";
    case SDXL_ERR_FORMAT: return "bad_file";
    case SDXL_ERR_NOMEM: return "out_of_memory";
    case SDXL_ERR_UNSUPPORTED: return "unsupported";
    case SDXL_ERR_LIMIT: return "limit";
    case SDXL_ERR_CANCELLED: return "cancelled";
    default: return "internal";
    }
}

/* The field a pipeline message starts with ("width: must be ..." -> "width"), else "". */
static void field_of(const char *msg, char *out, size_t cap) {
    size_t n = strcspn(msg, ": ");
    out[0] = 0;
    if (n == 0 || n >= cap || strncmp(msg + n, ": ", 2)) return;
    for (size_t i = 0; i < n; i++)
        if (!(msg[i] == '_' || msg[i] == '.' || msg[i] == '[' || msg[i] == ']' || (msg[i] >= 'a' && msg[i] <= 'z') ||
              (msg[i] >= '0' && msg[i] <= '9')))
            return;
    memcpy(out, msg, n);
    out[n] = 0;
}

/* Runs the group (jobs sharing model, size, sampler, steps and CFG; one job when nothing merges).
 * The jobs are RUNNING; each ends done/failed/cancelled here. */
static void run_group(sdxl_engine *eng, job **jobs, int n) {
    run_ctx rc = {.eng = eng, .jobs = jobs, .n = n, .t0 = now_mono()};
    char base[1024], refiner[1024], vae[1024];
    sdxl_svc_issues is = {0};
    sdxl_err e = {0};
    job *j0 = jobs[0];
    rc.preview_every = j0->req.preview_every;
    int st = resolve_models(eng, &j0->req, base, refiner, vae, sizeof base, &is);
    if (st) {
        char msg[512];
        sdxl_svc_issues_join(&is, msg, sizeof msg);
        pthread_mutex_lock(&eng->mu);
        for (int i = 0; i < n; i++) finish_locked(eng, jobs[i], SDXL_JOB_FAILED, is.items[0].code, is.items[0].field, msg);
        pthread_mutex_unlock(&eng->mu);
        return;
    }
    for (int i = 0; i < n; i++) remove_outputs(eng, &jobs[i]->req, jobs[i]->info.id, 0);
    progress_phase(&rc, "load", 0, 1);
    pthread_mutex_lock(&eng->cache_mu);
    int hit = 0;
    double load_s = 0;
    model_entry *me = cache_get(eng, base, refiner, vae, &hit, &load_s, &e);
    pthread_mutex_unlock(&eng->cache_mu);
    pthread_mutex_lock(&eng->mu);
    if (me) {
        if (hit) eng->cache_hits++;
        else eng->cache_misses++;
        snprintf(eng->loaded, sizeof eng->loaded, "%s", base);
    }
    pthread_mutex_unlock(&eng->mu);
    if (!me) {
        pthread_mutex_lock(&eng->mu);
        for (int i = 0; i < n; i++) finish_locked(eng, jobs[i], SDXL_JOB_FAILED, "model_load", "model", e.msg);
        pthread_mutex_unlock(&eng->mu);
        return;
    }
    /* the batch: one request per job (the batch manager checked they are compatible) */
    sdxl_gen_params *gp = calloc((size_t)n, sizeof *gp);
    sdxl_image *init = calloc((size_t)n, sizeof *init), *mask = calloc((size_t)n, sizeof *mask);
    sdxl_lora_spec *loras = NULL;
    sdxl_control_spec *ctls = NULL;
    sdxl_image *cimg = NULL;
    int n_cimg = 0;
    sdxl_pl_result res = {0};
    int rung = 0;
    if (!gp || !init || !mask) {
        st = sdxl_seterr(&e, SDXL_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n && !st; i++) {
        job *j = jobs[i];
        gp[i] = j->req.g;
        gp[i].progress = progress_cb;
        gp[i].progress_user = &rc;
        if (eng->cfg.n_threads > 0) gp[i].n_threads = eng->cfg.n_threads;
        if (j->req.g.sampler) gp[i].sampler = sdxl_svc_scheduler_alias(j->req.g.sampler);
        if (j->req.init_image) {
            if ((st = load_image(eng, j->req.init_image, 3, "init_image", &init[i], &e))) break;
            gp[i].init_image = init[i].data;
            gp[i].init_width = init[i].width;
            gp[i].init_height = init[i].height;
            if (j->req.mask) {
                if ((st = load_image(eng, j->req.mask, 1, "mask", &mask[i], &e))) break;
                if (mask[i].width != init[i].width || mask[i].height != init[i].height) {
                    st = sdxl_seterr(&e, SDXL_ERR_ARG, "mask: %dx%d, the init image is %dx%d", mask[i].width,
                                     mask[i].height, init[i].width, init[i].height);
                    break;
                }
                gp[i].mask = mask[i].data;
            }
        }
        if (j->req.n_loras) {
            /* passed through: the pipeline merges them once LoRA support is in the build */
            loras = calloc((size_t)j->req.n_loras, sizeof *loras);
            if (!loras) {
                st = sdxl_seterr(&e, SDXL_ERR_NOMEM, "out of memory");
                break;
            }
            for (int k = 0; k < j->req.n_loras; k++) {
                char p[1024], err[512];
                if (sdxl_svc_resolve(&eng->roots, "lora", j->req.loras[k].name, p, sizeof p, err, sizeof err)) {
                    st = sdxl_seterr(&e, SDXL_ERR_ARG, "loras[%d].name: %s", k, err);
                    break;
                }
                loras[k].path = sdxl_svc_request_strdup(&j->req, p);
                loras[k].unet_weight = j->req.loras[k].weight;
                loras[k].te_weight = j->req.loras[k].te_weight;
            }
            gp[i].loras = loras;
            gp[i].n_loras = j->req.n_loras;
        }
        if (j->req.n_controls) {
            /* the batch manager runs control requests alone: one set of units per batch */
            if (ctls) {
                st = sdxl_seterr(&e, SDXL_ERR_ARG, "controls: a request with ControlNet units runs alone");
                break;
            }
            ctls = calloc((size_t)j->req.n_controls, sizeof *ctls);
            cimg = calloc((size_t)j->req.n_controls, sizeof *cimg);
            n_cimg = j->req.n_controls;
            if (!ctls || !cimg) {
                st = sdxl_seterr(&e, SDXL_ERR_NOMEM, "out of memory");
                break;
            }
            for (int k = 0; k < j->req.n_controls && !st; k++) {
                const sdxl_svc_control *c = &j->req.controls[k];
                const char *name = c->model ? c->model : c->type;
                char p[1024], err[512], what[48];
                if (sdxl_svc_resolve(&eng->roots, "control", name, p, sizeof p, err, sizeof err)) {
                    st = sdxl_seterr(&e, SDXL_ERR_ARG, "controls[%d].model: %s", k, err);
                    break;
                }
                if (!c->image) {
                    st = sdxl_seterr(&e, SDXL_ERR_ARG, "controls[%d].image: required", k);
                    break;
                }
                snprintf(what, sizeof what, "controls[%d].image", k);
                if ((st = load_image(eng, c->image, 3, what, &cimg[k], &e))) break;
                ctls[k].model = sdxl_svc_request_strdup(&j->req, p);
                ctls[k].image = cimg[k].data;
                ctls[k].image_width = cimg[k].width;
                ctls[k].image_height = cimg[k].height;
                ctls[k].scale = c->scale;
                ctls[k].guidance_start = c->guidance_start;
                ctls[k].guidance_end = c->guidance_end;
                ctls[k].preprocess = c->preprocess;
            }
            if (st) break;
            gp[i].controls = ctls;
            gp[i].n_controls = j->req.n_controls;
        }
    }
    sdxl_pl_trace tr = {.user = &rc, .fail_alloc = fail_alloc_hook, .step = step_hook};
    sdxl_pl_condcache_stats cc0, cc1;
    sdxl_pl_condcache_stats_get(eng->cond_cache, &cc0);
    double t_gen = now_mono();
    int total = 0;
    for (int i = 0; i < n; i++) total += jobs[i]->info.n_images;
    int cap = 0, vae_tiled = 0, unet_rows = 0; /* the ladder's settings: 0 = the planner's choice */
    char ladder[128] = "";
    while (!st) {
        for (int i = 0; i < n; i++) {
            gp[i].max_batch = cap;
            gp[i].vae_tiling = vae_tiled;
            gp[i].unet_max_rows = unet_rows;
        }
        if (n == 1) st = sdxl_pl_generate(me->m, &gp[0], &rc.cancel, &tr, &eng->log, &res, &e);
        else st = sdxl_svc_batch_generate(me->m, gp, n, &rc.cancel, &tr, &eng->log, &res, &e);
        if (st != SDXL_ERR_NOMEM || rc.cancel) break;
        /* out-of-memory ladder: halve the UNet batch down to one image, then tile the VAE decode,
         * then run the UNet's CFG rows one at a time; past the last rung the job fails with the plan */
        int was = cap > 0 ? cap : total;
        size_t at = strlen(ladder);
        char *lp = ladder + at;
        size_t lcap = sizeof ladder - at;
        const char *sep = at ? ", " : "";
        if (was > 1) {
            cap = was / 2;
            snprintf(lp, lcap, "%sbatch %d->%d", sep, was, cap);
        } else if (!vae_tiled) {
            vae_tiled = 1;
            snprintf(lp, lcap, "%svae_tiled", sep);
        } else if (!unet_rows) {
            unet_rows = 1;
            snprintf(lp, lcap, "%sunet_rows 1", sep);
        } else {
            sdxl_job_plan pl;
            sdxl_svc_issues pis = {0};
            char msg[SDXL_ERR_MSG_MAX];
            snprintf(msg, sizeof msg, "%s", e.msg);
            if (sdxl_engine_plan(eng, &j0->req, &pl, &pis) == SDXL_OK)
                sdxl_seterr(&e, SDXL_ERR_NOMEM,
                            "%s; every rung of the out-of-memory ladder was taken (%s); plan: %d images, sub-batch "
                            "%d, about %.2f GiB of activations, %.2f GiB available",
                            msg, ladder, total, pl.sub_batch, (double)pl.memory_bytes / (1 << 30),
                            (double)pl.memory_available / (1 << 30));
            else
                sdxl_seterr(&e, SDXL_ERR_NOMEM, "%s; every rung of the out-of-memory ladder was taken (%s)", msg,
                            ladder);
            break;
        }
        rung++;
        SDXL_WARN(&eng->log, "job %s: %s; out-of-memory ladder rung %d: %s", j0->info.id, e.msg, rung, lp + strlen(sep));
        sdxl_err_clear(&e);
        st = SDXL_OK;
    }
    sdxl_pl_condcache_stats_get(eng->cond_cache, &cc1);
    double gen_s = now_mono() - t_gen;
    pthread_mutex_lock(&eng->mu);
    eng->unet_batches++;
    if (n > 1) eng->merged_batches++;
    pthread_mutex_unlock(&eng->mu);
    /* write each job's images: temporary name + rename, so no partial file ever appears */
    int img0 = 0;
    for (int i = 0; i < n; i++) {
        job *j = jobs[i];
        int ni = j->info.n_images;
        const char *code = NULL, *field = "";
        char msg[SDXL_ERR_MSG_MAX] = "", fbuf[96] = "";
        int jst = SDXL_JOB_DONE;
        sdxl_job_metrics *m = &j->info.m;
        m->load_s = load_s;
        m->model_cache_hit = hit;
        m->text_s = res.st.text_s;
        m->encode_s = res.st.encode_s;
        m->base_s = res.st.base_s;
        m->refiner_s = res.st.refiner_s;
        m->decode_s = res.st.decode_s;
        m->peak_rss = res.st.peak_rss;
        m->plan_bytes = res.st.plan_bytes;
        m->plan_available = res.st.plan_available;
        m->sub_batch = res.st.sub_batch;
        m->n_sub_batches = res.st.n_sub_batches;
        m->unet_calls = res.st.unet_calls;
        m->merged_jobs = n;
        m->rung = rung;
        snprintf(m->ladder, sizeof m->ladder, "%s", ladder);
        m->cond_cache_hits = (int)(cc1.hits - cc0.hits);
        if (st) {
            int cancelled = st == SDXL_ERR_CANCELLED || rc.cancel;
            jst = cancelled ? SDXL_JOB_CANCELLED : SDXL_JOB_FAILED;
            code = j->timed_out ? "timeout" : cancelled ? "cancelled" : code_of(st);
            if (j->timed_out) {
                jst = SDXL_JOB_FAILED;
                snprintf(msg, sizeof msg, "timed out after %.0f s", j->req.timeout_s > 0 ? j->req.timeout_s : eng->cfg.default_timeout_s);
            } else if (cancelled && !j->cancel && !eng->stop) {
                /* another job of its merged batch was cancelled or timed out: this one runs again */
                pthread_mutex_lock(&eng->mu);
                j->info.state = SDXL_JOB_QUEUED;
                char jerr[256];
                if (eng->journal && sdxl_journal_requeue(eng->journal, j->info.id, jerr, sizeof jerr))
                    SDXL_ERROR(&eng->log, "%s", jerr);
                pthread_cond_broadcast(&eng->work_cv);
                pthread_mutex_unlock(&eng->mu);
                img0 += ni;
                continue;
            } else {
                snprintf(msg, sizeof msg, "%s", e.msg);
            }
            if (!cancelled && !j->timed_out) field_of(e.msg, fbuf, sizeof fbuf);
            field = fbuf;
        } else {
            double tw = now_mono();
            sdxl_event wev = {.kind = SDXL_EVENT_PROGRESS, .phase = "write", .steps = ni, .n_images = ni, .eta_s = -1};
            emit(eng, j, &wev);
            j->info.paths = calloc((size_t)ni, sizeof *j->info.paths);
            char path[2048], dir[2048];
            out_path(eng, &j->req, j->info.id, 0, path, sizeof path, dir, sizeof dir);
            if (!j->info.paths || mkdirs(dir)) {
                jst = SDXL_JOB_FAILED;
                code = "io_error";
                snprintf(msg, sizeof msg, "cannot create the output folder %s", dir);
            }
            sdxl_image_write_opts wo;
            sdxl_image_write_opts_init(&wo);
            wo.quality = j->req.quality;
            for (int k = 0; jst == SDXL_JOB_DONE && k < ni; k++) {
                const sdxl_pl_image *im = &res.img[img0 + k];
                out_path(eng, &j->req, j->info.id, k, path, sizeof path, dir, sizeof dir);
                sdxl_image img = {.width = im->width, .height = im->height, .channels = 3, .data = im->rgb};
                uint8_t *up = NULL;
                if (j->req.upscale_factor > 1) {
                    int f = j->req.upscale_factor;
                    up = malloc((size_t)im->width * f * (size_t)im->height * f * 3);
                    sdxl_err re = {0};
                    if (!up || sdxl_resize_u8(im->rgb, im->width, im->height, 3, up, im->width * f, im->height * f,
                                              "upscale", &re)) {
                        free(up);
                        jst = SDXL_JOB_FAILED;
                        code = "out_of_memory";
                        snprintf(msg, sizeof msg, "upscale: %s", re.msg[0] ? re.msg : "out of memory");
                        break;
                    }
                    img.width *= f;
                    img.height *= f;
                    img.data = up;
                }
                sdxl_err we = {0};
                int ws = sdxl_image_write(path, fmt_of(j->req.format), &img, &wo, im->infotext, im->request, &we);
                free(up);
                if (ws) {
                    jst = SDXL_JOB_FAILED;
                    code = "io_error";
                    snprintf(msg, sizeof msg, "%s", we.msg);
                    break;
                }
                j->info.paths[k] = xstrdup(path);
                if (j->info.paths[k]) j->info.n_done = k + 1;
            }
            if (jst != SDXL_JOB_DONE) {
                for (int k = 0; k < j->info.n_done; k++) unlink(j->info.paths[k]);
                for (int k = 0; k < j->info.n_done; k++) free(j->info.paths[k]);
                j->info.n_done = 0;
            }
            m->write_s = now_mono() - tw;
            m->images_per_s = gen_s > 0 ? (double)ni / gen_s : 0;
        }
        img0 += ni;
        pthread_mutex_lock(&eng->mu);
        finish_locked(eng, j, jst, code ? code : "", field, msg);
        pthread_mutex_unlock(&eng->mu);
    }
out:
    sdxl_pl_result_free(&res);
    for (int i = 0; gp && i < n; i++) {
        sdxl_image_free(&init[i]);
        sdxl_image_free(&mask[i]);
    }
    free(loras);
    for (int k = 0; cimg && k < n_cimg; k++) sdxl_image_free(&cimg[k]);
    free(cimg);
    free(ctls);
    free(gp);
    free(init);
    free(mask);
    if (st && !res.n) {
        /* failures before generation started finish the jobs here */
        pthread_mutex_lock(&eng->mu);
        for (int i = 0; i < n; i++)
            if (jobs[i]->info.state == SDXL_JOB_RUNNING)
                finish_locked(eng, jobs[i], SDXL_JOB_FAILED, code_of(st), "", e.msg);
        pthread_mutex_unlock(&eng->mu);
    }
    cache_put(eng, me);
}

/* Picks the next job and, with merging on, the queued jobs compatible with it (mu held). */
static int pick_group(sdxl_engine *eng, job **group, int cap) {
    job *best = NULL;
    for (int i = 0; i < eng->n_jobs; i++) {
        job *j = eng->jobs[i];
        if (j->info.state != SDXL_JOB_QUEUED) continue;
        if (!best || j->req.priority > best->req.priority ||
            (j->req.priority == best->req.priority && j->seq < best->seq))
            best = j;
    }
    if (!best) return 0;
    int n = 0;
    group[n++] = best;
    int images = best->info.n_images;
    if (eng->cfg.merge && sdxl_svc_batch_mergeable(&best->req))
        for (int i = 0; i < eng->n_jobs && n < cap; i++) {
            job *j = eng->jobs[i];
            if (j == best || j->info.state != SDXL_JOB_QUEUED || j->req.priority != best->req.priority) continue;
            if (images + j->info.n_images > eng->cfg.max_merge) continue;
            if (!sdxl_svc_batch_compatible(&best->req, &j->req)) continue;
            group[n++] = j;
            images += j->info.n_images;
        }
    return n;
}

static void *runner(void *arg) {
    sdxl_engine *eng = arg;
    job *group[64];
    /* OpenMP (and oneDNN on it) keeps the thread count per calling thread: this thread loads the
     * models and runs every job, so -t governs all of their kernels */
    sdxl_threads_set(eng->cfg.n_threads);
    pthread_mutex_lock(&eng->mu);
    for (;;) {
        int n = 0;
        while (!eng->stop && (eng->paused || !(n = pick_group(eng, group, 64))))
            pthread_cond_wait(&eng->work_cv, &eng->mu);
        if (eng->stop) break;
        double now = now_mono();
        for (int i = 0; i < n; i++) {
            job *j = group[i];
            j->info.state = SDXL_JOB_RUNNING;
            j->info.m.queue_s = now - j->t_accept;
            j->info.m.attempts++;
            double to = j->req.timeout_s > 0 ? j->req.timeout_s : eng->cfg.default_timeout_s;
            j->deadline = to > 0 ? now + to : 0;
            char err[512];
            if (eng->journal && sdxl_journal_start(eng->journal, j->info.id, err, sizeof err))
                SDXL_ERROR(&eng->log, "%s", err);
        }
        eng->running = n;
        pthread_mutex_unlock(&eng->mu);
        run_group(eng, group, n);
        pthread_mutex_lock(&eng->mu);
        eng->running = 0;
        pthread_cond_broadcast(&eng->done_cv);
    }
    pthread_mutex_unlock(&eng->mu);
    return NULL;
}

/* ---- plan (dry run) ------------------------------------------------------------------------------ */

int sdxl_engine_plan(sdxl_engine *eng, const sdxl_svc_request *req, sdxl_job_plan *out, sdxl_svc_issues *is) {
    memset(out, 0, sizeof *out);
    if (sdxl_svc_request_validate(req, is) || engine_check(eng, req, is)) return SDXL_ERR_ARG;
    const sdxl_gen_params *g = &req->g;
    resolve_models(eng, req, out->base, out->refiner, out->vae, sizeof out->base, is);
    for (int i = 0; i < req->n_loras && i < 8; i++) {
        char err[256];
        sdxl_svc_resolve(&eng->roots, "lora", req->loras[i].name, out->loras[i], sizeof out->loras[i], err, sizeof err);
        out->n_loras = i + 1;
    }
    sdxl_sched_choice ch;
    sdxl_err e = {0};
    const char *sn = g->sampler ? sdxl_svc_scheduler_alias(g->sampler) : "Euler";
    if (sdxl_sched_resolve(sn ? sn : "Euler", g->schedule, &ch, &e)) {
        sdxl_svc_issue_add(is, "unknown_scheduler", "sampler", "%s", e.msg);
        return SDXL_ERR_ARG;
    }
    snprintf(out->sampler, sizeof out->sampler, "%s", sdxl_sampler_name(ch.sampler));
    snprintf(out->schedule, sizeof out->schedule, "%s", sdxl_sched_canonical_schedule(&ch));
    out->width = g->width ? g->width : 1024;
    out->height = g->height ? g->height : 1024;
    out->steps = g->steps;
    out->n_images = g->batch_count * (g->batch_size > 0 ? g->batch_size : 1);
    out->seed = g->seed;
    sdxl_sampler_config sc;
    sdxl_sampler_config_init(&sc);
    sc.sampler = ch.sampler;
    sc.schedule = ch.schedule;
    sc.diffusers_karras = ch.diffusers_karras;
    sc.steps = g->steps;
    sdxl_sampler *probe = NULL;
    out->refiner_switch_step = g->steps;
    if (sdxl_sampler_new(&sc, 1, &probe, &e) == SDXL_OK) {
        if (req->init_image) out->img2img_start_step = sdxl_sampler_start_for_strength(probe, g->strength);
        if (out->refiner[0] && g->refiner_switch < 1)
            out->refiner_switch_step = sdxl_sampler_start_for_fraction(probe, g->refiner_switch);
        sdxl_sampler_free(probe);
    }
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    out->memory_available = ms.available;
    /* SDXL base at this size: the UNet's activations dominate; a loaded model gives the exact
     * figure through the pipeline's planner when the job runs */
    uint64_t lat = (uint64_t)(out->width / 8) * (uint64_t)(out->height / 8);
    uint64_t per_image = lat * 4 * 1100 + (uint64_t)out->width * out->height * 3 * 5;
    int rows = g->cfg_scale > 1 ? 2 : 1;
    int sb = out->n_images;
    while (sb > 1 && per_image * rows * (uint64_t)sb > ms.available - ms.available / 10) sb--;
    out->sub_batch = sb;
    out->n_sub_batches = (out->n_images + sb - 1) / sb;
    out->memory_bytes = per_image * rows * (uint64_t)sb;
    return SDXL_OK;
}

void sdxl_job_plan_json(const sdxl_job_plan *p, sdxl_strbuf *b) {
    sdxl_sb_printf(b, "{\"sampler\":\"%s\",\"schedule\":\"%s\",\"base\":", p->sampler, p->schedule);
    sdxl_sb_json(b, p->base);
    sdxl_sb_str(b, ",\"refiner\":");
    if (p->refiner[0]) sdxl_sb_json(b, p->refiner);
    else sdxl_sb_str(b, "null");
    sdxl_sb_str(b, ",\"vae\":");
    if (p->vae[0]) sdxl_sb_json(b, p->vae);
    else sdxl_sb_str(b, "null");
    sdxl_sb_str(b, ",\"loras\":[");
    for (int i = 0; i < p->n_loras; i++) {
        if (i) sdxl_sb_str(b, ",");
        sdxl_sb_json(b, p->loras[i]);
    }
    sdxl_sb_printf(b,
                   "],\"width\":%d,\"height\":%d,\"steps\":%d,\"n_images\":%d,\"sub_batch\":%d,\"n_sub_batches\":%d,"
                   "\"refiner_switch_step\":%d,\"img2img_start_step\":%d,\"memory_bytes\":%llu,"
                   "\"memory_available\":%llu,\"seed\":%lld}",
                   p->width, p->height, p->steps, p->n_images, p->sub_batch, p->n_sub_batches, p->refiner_switch_step,
                   p->img2img_start_step, (unsigned long long)p->memory_bytes,
                   (unsigned long long)p->memory_available, (long long)p->seed);
}

/* ---- metrics ------------------------------------------------------------------------------------ */

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void sdxl_engine_metrics_get(sdxl_engine *eng, sdxl_engine_metrics *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&eng->mu);
    out->queued = count_state(eng, SDXL_JOB_QUEUED);
    out->running = count_state(eng, SDXL_JOB_RUNNING);
    out->done = count_state(eng, SDXL_JOB_DONE);
    out->failed = count_state(eng, SDXL_JOB_FAILED);
    out->cancelled = count_state(eng, SDXL_JOB_CANCELLED);
    out->images = eng->images;
    out->model_cache_hits = eng->cache_hits;
    out->model_cache_misses = eng->cache_misses;
    out->unet_batches = eng->unet_batches;
    out->merged_batches = eng->merged_batches;
    out->uptime_s = now_mono() - eng->t_start;
    out->queue_limit = eng->cfg.queue_limit;
    snprintf(out->loaded_model, sizeof out->loaded_model, "%s", eng->loaded);
    if (eng->n_lat) {
        double *tmp = malloc((size_t)eng->n_lat * sizeof *tmp);
        double sum = 0;
        for (int i = 0; i < eng->n_lat; i++) sum += eng->latencies[i];
        out->mean_latency_s = sum / eng->n_lat;
        if (tmp) {
            memcpy(tmp, eng->latencies, (size_t)eng->n_lat * sizeof *tmp);
            qsort(tmp, (size_t)eng->n_lat, sizeof *tmp, cmp_d);
            int k = (int)ceil(0.95 * eng->n_lat) - 1;
            out->p95_latency_s = tmp[k < 0 ? 0 : k];
            free(tmp);
        }
    }
    pthread_mutex_unlock(&eng->mu);
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    out->rss = ms.rss;
    out->peak_rss = ms.peak_rss;
    out->mem_available = ms.available;
    sdxl_pl_condcache_stats cs;
    sdxl_pl_condcache_stats_get(eng->cond_cache, &cs);
    out->cond_cache_hits = cs.hits;
    out->cond_cache_misses = cs.misses;
    out->cond_cache_bytes = cs.bytes;
}

void sdxl_engine_metrics_json(const sdxl_engine_metrics *m, sdxl_strbuf *b) {
    sdxl_sb_printf(b,
                   "{\"jobs\":{\"queued\":%d,\"running\":%d,\"done\":%d,\"failed\":%d,\"cancelled\":%d},"
                   "\"images\":%lld,\"mean_latency_s\":%.4f,\"p95_latency_s\":%.4f,\"model_cache_hits\":%lld,"
                   "\"model_cache_misses\":%lld,\"cond_cache_hits\":%lld,\"cond_cache_misses\":%lld,\"cond_cache_bytes\":%llu,"
                   "\"unet_batches\":%lld,\"merged_batches\":%lld,\"uptime_s\":%.3f,\"rss\":%llu,\"peak_rss\":%llu,"
                   "\"mem_available\":%llu,\"queue_limit\":%d,\"loaded_model\":",
                   m->queued, m->running, m->done, m->failed, m->cancelled, (long long)m->images, m->mean_latency_s,
                   m->p95_latency_s, (long long)m->model_cache_hits, (long long)m->model_cache_misses,
                   (long long)m->cond_cache_hits, (long long)m->cond_cache_misses,
                   (unsigned long long)m->cond_cache_bytes, (long long)m->unet_batches,
                   (long long)m->merged_batches, m->uptime_s, (unsigned long long)m->rss,
                   (unsigned long long)m->peak_rss, (unsigned long long)m->mem_available, m->queue_limit);
    if (m->loaded_model[0]) sdxl_sb_json(b, m->loaded_model);
    else sdxl_sb_str(b, "null");
    sdxl_sb_str(b, "}");
}

void sdxl_engine_set_default_model(sdxl_engine *eng, const char *name) {
    char *n = xstrdup(name);
    pthread_mutex_lock(&eng->mu);
    free(eng->default_model);
    eng->default_model = n;
    pthread_mutex_unlock(&eng->mu);
}

const sdxl_engine_config *sdxl_engine_get_config(const sdxl_engine *eng) { return &eng->cfg; }

/* ---- life cycle ---------------------------------------------------------------------------------- */

/* Recovery fails the job as worker_crashed, without images: what its killed runs wrote goes first. */
static void remove_crashed_outputs(void *user, const char *id, const char *request) {
    sdxl_engine *eng = user;
    sdxl_json *v = NULL;
    sdxl_svc_request r;
    sdxl_svc_request_init(&r);
    sdxl_svc_issues is = {0};
    sdxl_err e;
    if (request && !sdxl_json_parse(request, strlen(request), NULL, "journal request", &v, &e) &&
        !sdxl_svc_request_parse(v, SDXL_DIALECT_NATIVE, &r, &is))
        remove_outputs(eng, &r, id, 1);
    else
        SDXL_WARN(&eng->log, "journal: job %s: the request no longer parses; files a killed run wrote may stay", id);
    sdxl_svc_request_free(&r);
    sdxl_json_free(v);
}

static int recover(sdxl_engine *eng, char *err, size_t cap) {
    sdxl_journal_row *rows = NULL;
    int n = 0, nq = 0, nc = 0;
    int st = sdxl_journal_recover(eng->journal, MAX_ATTEMPTS, remove_crashed_outputs, eng, &rows, &n, &nq, &nc, err,
                                  cap);
    if (st) return st;
    if (nq || nc) SDXL_WARN(&eng->log, "journal: %d interrupted job(s) re-queued, %d failed as worker_crashed", nq, nc);
    for (int i = 0; i < n && !st; i++) {
        sdxl_journal_row *r = &rows[i];
        job *j = calloc(1, sizeof *j);
        if (!j) {
            st = SDXL_ERR_NOMEM;
            break;
        }
        snprintf(j->info.id, sizeof j->info.id, "%s", r->id);
        j->info.state = (sdxl_job_state)r->state;
        j->info.created = r->created;
        j->info.m.attempts = r->attempts;
        j->seq = r->seq;
        j->t_accept = now_mono();
        j->events = 1;
        if (r->seq >= eng->next_seq) eng->next_seq = r->seq + 1;
        j->info.request_json = r->request;
        r->request = NULL;
        snprintf(j->info.error_code, sizeof j->info.error_code, "%s", r->error_code);
        snprintf(j->info.error, sizeof j->info.error, "%s", r->error);
        sdxl_json *v = NULL;
        sdxl_svc_issues is = {0};
        sdxl_err e;
        if (sdxl_json_parse(j->info.request_json, strlen(j->info.request_json), NULL, "journal request", &v, &e) ||
            sdxl_svc_request_parse(v, SDXL_DIALECT_NATIVE, &j->req, &is)) {
            sdxl_svc_request_free(&j->req);
            if (j->info.state <= SDXL_JOB_RUNNING) {
                j->info.state = SDXL_JOB_FAILED;
                snprintf(j->info.error_code, sizeof j->info.error_code, "journal");
                snprintf(j->info.error, sizeof j->info.error, "the journaled request no longer parses");
                sdxl_journal_finish(eng->journal, j->info.id, SDXL_JOB_FAILED, "", "", "journal", j->info.error, NULL,
                                    0);
            }
        } else {
            j->has_req = 1;
            j->stale = j->info.state == SDXL_JOB_QUEUED && r->attempts > 0;
            job_fill(j);
        }
        sdxl_json_free(v);
        /* finished jobs: the paths written */
        if (r->paths[0]) {
            int np = 0;
            for (const char *p = r->paths; *p; p++) np += *p == '\n';
            j->info.paths = calloc((size_t)np + 1, sizeof *j->info.paths);
            const char *p = r->paths;
            while (j->info.paths && *p) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                char *s = malloc(len + 1);
                if (!s) break;
                memcpy(s, p, len);
                s[len] = 0;
                j->info.paths[j->info.n_done++] = s;
                p += len + (nl ? 1 : 0);
            }
        }
        if (j->has_req && j->info.state >= SDXL_JOB_DONE) {
            sdxl_svc_request_free(&j->req);
            j->has_req = 0;
        }
        st = table_add(eng, j);
        if (st) job_free(j);
    }
    sdxl_journal_rows_free(rows, n);
    return st;
}

int sdxl_engine_new(const sdxl_engine_config *c, sdxl_engine **out, char *err, size_t err_cap) {
    *out = NULL;
    if (err && err_cap) err[0] = 0;
    sdxl_engine *eng = calloc(1, sizeof *eng);
    if (!eng) return SDXL_ERR_NOMEM;
    eng->cfg = *c;
    if (eng->cfg.queue_limit <= 0) eng->cfg.queue_limit = 64;
    if (eng->cfg.max_merge <= 0) eng->cfg.max_merge = 1;
    if (eng->cfg.max_side <= 0) eng->cfg.max_side = 2048;
    if (eng->cfg.max_steps <= 0) eng->cfg.max_steps = 150;
    if (eng->cfg.max_images <= 0) eng->cfg.max_images = 16;
    eng->log.fn = c->log_fn;
    eng->log.user = c->log_user;
    eng->log.level = c->log_level;
    eng->output_root = xstrdup(c->output_root && *c->output_root ? c->output_root : ".");
    eng->default_model = xstrdup(c->default_model);
    eng->precision = xstrdup(c->precision ? c->precision : "auto");
    pthread_mutex_init(&eng->mu, NULL);
    pthread_mutex_init(&eng->sub_mu, NULL);
    pthread_mutex_init(&eng->cache_mu, NULL);
    pthread_cond_init(&eng->work_cv, NULL);
    pthread_cond_init(&eng->done_cv, NULL);
    eng->t_start = now_mono();
    eng->paused = c->start_paused;
    uint64_t seed = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        if (read(fd, &seed, sizeof seed) != (ssize_t)sizeof seed) seed = 0;
        close(fd);
    }
    eng->rng = seed ^ (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    int st = sdxl_svc_roots_init(&eng->roots, c, err, err_cap);
    if (!st && (!eng->output_root || !eng->precision)) st = SDXL_ERR_NOMEM;
    if (!st && c->cond_cache_bytes) st = sdxl_pl_condcache_new(c->cond_cache_bytes, &eng->cond_cache);
    if (!st && c->journal) {
        st = sdxl_journal_open(c->journal, &eng->journal, err, err_cap);
        if (!st) st = recover(eng, err, err_cap);
    }
    if (!st) {
        if (pthread_create(&eng->runner, NULL, runner, eng)) {
            st = SDXL_ERR_INTERNAL;
            if (err) snprintf(err, err_cap, "cannot start the runner thread");
        } else {
            eng->have_runner = 1;
        }
    }
    if (st) {
        sdxl_engine_free(eng);
        return st;
    }
    *out = eng;
    return SDXL_OK;
}

void sdxl_engine_shutdown(sdxl_engine *eng) {
    pthread_mutex_lock(&eng->mu);
    eng->stop = 1;
    pthread_cond_broadcast(&eng->work_cv);
    pthread_mutex_unlock(&eng->mu);
    if (eng->have_runner) pthread_join(eng->runner, NULL);
    eng->have_runner = 0;
    /* without a journal, queued jobs cannot survive: they end cancelled (with their events) */
    pthread_mutex_lock(&eng->mu);
    if (!eng->journal)
        for (int i = 0; i < eng->n_jobs; i++)
            if (eng->jobs[i]->info.state == SDXL_JOB_QUEUED)
                finish_locked(eng, eng->jobs[i], SDXL_JOB_CANCELLED, "shutting_down", "",
                              "the worker shut down before this job ran");
    pthread_mutex_unlock(&eng->mu);
    pthread_mutex_lock(&eng->sub_mu);
    memset(eng->subs, 0, sizeof eng->subs);
    pthread_mutex_unlock(&eng->sub_mu);
}

void sdxl_engine_free(sdxl_engine *eng) {
    if (!eng) return;
    sdxl_engine_shutdown(eng);
    for (int i = 0; i < eng->n_jobs; i++) job_free(eng->jobs[i]);
    free(eng->jobs);
    for (int i = 0; i < MAX_MODELS; i++) sdxl_pl_model_free(eng->models[i].m);
    sdxl_pl_condcache_free(eng->cond_cache);
    sdxl_journal_close(eng->journal);
    sdxl_svc_roots_free(&eng->roots);
    free(eng->latencies);
    free(eng->output_root);
    free(eng->default_model);
    free(eng->precision);
    pthread_mutex_destroy(&eng->mu);
    pthread_mutex_destroy(&eng->sub_mu);
    pthread_mutex_destroy(&eng->cache_mu);
    pthread_cond_destroy(&eng->work_cv);
    pthread_cond_destroy(&eng->done_cv);
    free(eng);
}
