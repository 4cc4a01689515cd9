/* A fleet worker: takes jobs from the Redis streams through the consumer group, runs each through
 * a runner (the job engine), stores the images and the result record, and only then acknowledges
 * the entry. A side thread with its own connection renews the hold on the running job, publishes
 * progress and keeps the heartbeat key alive, so a worker that dies loses its hold within the
 * visibility timeout and a live worker claims the job.
 *
 * Visibility timeout V: holds are renewed every V/4. Every V/8, idle workers claim entries idle
 * for V/2 or more, and busy workers (from the side thread, up to 4 waiting, run after the current
 * job) entries idle for 5V/8. So a stopped worker's job is claimed within 5V/8 of its death when a
 * worker is idle, within 3V/4 when all are busy, provided some worker has room to take it. */
#ifndef SDXL_FLEET_WORKER_H
#define SDXL_FLEET_WORKER_H

#include <stdatomic.h>
#include <stddef.h>

#include "base/log.h"
#include "fleet/queue.h"
#include "io/strbuf.h"

typedef struct sdxl_fleet_progress {
    const char *phase; /* "load", "text", "base", "refiner", "decode", "write" */
    int step, total;   /* in this phase */
    int image, n_images;
    double eta_s;      /* < 0 unknown */
} sdxl_fleet_progress;

/* Progress sink handed to the runner; safe to call from any thread, never blocks on the network. */
typedef struct sdxl_fleet_sink sdxl_fleet_sink;
void sdxl_fleet_report(sdxl_fleet_sink *s, const sdxl_fleet_progress *p);

/* What a runner fills for one job. JSON texts: outputs = array of paths relative to the output
 * directory, seeds = array of integers, stats = object. */
typedef struct sdxl_fleet_job_out {
    sdxl_strbuf outputs, seeds, stats;
    char error_code[64]; /* failed: "invalid_request", "model", "runtime", "cancelled", ... */
    char error[1024];
} sdxl_fleet_job_out;

typedef struct sdxl_fleet_runner {
    void *user;
    /* Runs job `id`'s request. Images go into dir (created; it may hold files of an earlier,
     * interrupted run of the same job), under names that depend only on the request, each written
     * to a temporary name and renamed; the same request makes the same bytes. Returns 0 when done,
     * else the job failed and out->error_code / error say why. */
    int (*run)(void *user, const char *id, const char *request, const char *dir, const char *rel_dir,
               sdxl_fleet_sink *sink, sdxl_fleet_job_out *out);
    /* Asks the running job to stop soon; any thread. May be NULL. */
    void (*cancel)(void *user);
    const char *model; /* what heartbeats report as loaded */
} sdxl_fleet_runner;

typedef struct sdxl_fleet_worker_params {
    const char *url;            /* redis://... (required) */
    const char *prefix;         /* key prefix, default "sdxl" */
    const char *const *models;  /* names of per-model streams read before the shared one */
    int n_models;
    const char *output_dir;     /* shared output directory (required); images go to <dir>/<job id>/ */
    const char *id;             /* worker id; NULL = <host>-<pid>-<random> */
    int visibility_ms;          /* default 30000 */
    int max_deliveries;         /* default 3: the next delivery fails the job as worker_crashed */
    int heartbeat_ms;           /* default 1000; the key's TTL is 5 beats */
    long result_ttl_s;          /* result records expire after this; 0 (default) = kept */
    int max_jobs;               /* stop after this many jobs; 0 = no limit */
    int idle_exit_ms;           /* stop after this long without a job; 0 = never */
    const atomic_int *stop;     /* nonzero: finish the current job, then return */
    const sdxl_logger *log;
} sdxl_fleet_worker_params;

void sdxl_fleet_worker_params_init(sdxl_fleet_worker_params *p);

/* Runs until *stop, max_jobs or idle_exit_ms. 0 on a clean stop; -1 when Redis could not be
 * reached (or the setup failed), with e saying why. */
int sdxl_fleet_worker_run(const sdxl_fleet_worker_params *p, const sdxl_fleet_runner *rn, sdxl_err *e);

#endif
