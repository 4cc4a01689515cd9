/* The fleet's job queue on Redis Streams. Every state change is one Lua script, so a result
 * record and the XACK of its stream entry happen together or not at all.
 *
 * Keys (prefix P, default "sdxl"):
 *   P:jobs, P:jobs:<model>  streams of jobs (entry field `id`); a consumer group "workers" reads them.
 *                           Finished entries are XACKed and XDELed, so XLEN = jobs not finished.
 *   P:job:<id>              hash: state (queued|running|done|failed), request, stream, entry, cancel,
 *                           submitted_ms, deliveries, worker, started_ms, claimed_ms, claimed_from, claimed_by,
 *                           finished_ms, finished_by, outputs, seeds, stats, error_code, error, progress
 *   P:dead                  dead-letter stream: jobs failed as worker_crashed after N deliveries
 *   P:events                capped stream of lifecycle events (submitted, started, claimed, done, failed, dead)
 *   P:stats                 hash of counters: done, failed, dead, cancelled, claims, duplicate_finishes
 *   P:streams               set of the job streams in use
 *   P:worker:<id>           heartbeat (JSON, with a TTL)
 *   P:progress:<id>         pub/sub channel of a job's progress events (JSON), ending with done/failed */
#ifndef SDXL_FLEET_QUEUE_H
#define SDXL_FLEET_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "fleet/redis.h"

#define SDXL_FLEET_GROUP "workers"
#define SDXL_FLEET_NAME_MAX 128

/* Job ids and model names become key parts and directory names: [A-Za-z0-9._-], 1..64 chars, not
 * starting with '.'. Returns 0 when valid. */
int sdxl_fleet_check_name(const char *what, const char *s, sdxl_err *e);

/* "P:jobs" or "P:jobs:<model>" into buf. */
void sdxl_fleet_stream_key(char *buf, size_t cap, const char *prefix, const char *model);

/* A fresh job id: 16 hex digits from the time and /dev/urandom. */
void sdxl_fleet_new_id(char *buf, size_t cap);

typedef enum sdxl_fleet_submit_status {
    SDXL_FLEET_SUBMITTED = 0, /* queued now */
    SDXL_FLEET_EXISTS,        /* the same id with the same request was already queued (a retried submit) */
    SDXL_FLEET_BUSY,          /* the stream holds max_queue jobs or more: nothing was queued */
    SDXL_FLEET_CONFLICT       /* the id is taken by another request */
} sdxl_fleet_submit_status;

/* Queues request (a JSON object) as job id on stream. max_queue <= 0 = no limit. *depth receives
 * the stream's length after the call. Returns -1 on a Redis failure (e says why). */
int sdxl_fleet_submit(sdxl_redis *r, const char *prefix, const char *stream, const char *id, const char *request,
                      size_t request_len, long max_queue, long *depth, sdxl_err *e);

/* Creates the consumer group on stream (and the stream) unless it exists. */
int sdxl_fleet_ensure_group(sdxl_redis *r, const char *stream, sdxl_err *e);

/* One stream entry handed to this worker. */
typedef struct sdxl_fleet_entry {
    char stream[SDXL_FLEET_NAME_MAX + 64];
    char entry[64];                  /* stream entry id */
    char id[SDXL_FLEET_NAME_MAX];    /* job id */
    int claimed;                     /* taken over from a worker that stopped renewing it */
    char from[SDXL_FLEET_NAME_MAX + 64]; /* claimed: the consumer that held it */
} sdxl_fleet_entry;

/* Reads at most one new entry per stream (XREADGROUP ... >), blocking up to block_ms (0 = no
 * wait). Returns the number of entries written to out (<= n_streams), or -1. */
int sdxl_fleet_read(sdxl_redis *r, const char *consumer, const char *const *streams, int n_streams, int block_ms,
                    sdxl_fleet_entry *out, sdxl_err *e);

/* Claims the oldest entry of stream idle for min_idle_ms or more, noting who held it.
 * 1 claimed, 0 none, -1 error. */
int sdxl_fleet_claim(sdxl_redis *r, const char *consumer, const char *stream, int64_t min_idle_ms,
                     sdxl_fleet_entry *out, sdxl_err *e);

/* Records a claim in the job's record (claimed_ms, claimed_from, claimed_by) and the event log. */
int sdxl_fleet_note_claim(sdxl_redis *r, const char *prefix, const char *worker, const sdxl_fleet_entry *en,
                          sdxl_err *e);

/* Renews this consumer's hold on an entry (resets its idle time) if it still owns it.
 * 1 renewed, 0 no longer ours, -1 error. */
int sdxl_fleet_renew(sdxl_redis *r, const char *consumer, const sdxl_fleet_entry *en, sdxl_err *e);

typedef enum sdxl_fleet_start_status {
    SDXL_FLEET_RUN = 0,   /* run it: *request and *deliveries are set */
    SDXL_FLEET_SKIP,      /* already finished (or its record is gone): the entry was acknowledged */
    SDXL_FLEET_DEAD       /* delivered more than max_deliveries times: failed as worker_crashed */
} sdxl_fleet_start_status;

/* Marks the job running on this worker and counts the delivery. *request is malloc'd. */
int sdxl_fleet_start(sdxl_redis *r, const char *prefix, const char *worker, const sdxl_fleet_entry *en,
                     int max_deliveries, char **request, int *deliveries, sdxl_err *e);

/* What a finished job recorded. JSON texts; NULL = "[]" / "{}" / "". */
typedef struct sdxl_fleet_result {
    int ok;                 /* 1 done, 0 failed */
    const char *outputs;    /* JSON array of image paths */
    const char *seeds;      /* JSON array of seeds */
    const char *stats;      /* JSON object */
    const char *error_code; /* failed: a short code ("invalid_request", "model", "runtime", ...) */
    const char *error;      /* failed: the message */
} sdxl_fleet_result;

typedef enum sdxl_fleet_finish_status {
    SDXL_FLEET_RECORDED = 0, /* this call wrote the result */
    SDXL_FLEET_DUPLICATE     /* another worker had already finished the job: nothing was changed */
} sdxl_fleet_finish_status;

/* Stores the result, acknowledges and deletes the entry, publishes the final progress event; all
 * atomically. ttl_s > 0 sets the result record's expiry. */
int sdxl_fleet_finish(sdxl_redis *r, const char *prefix, const char *worker, const sdxl_fleet_entry *en,
                      const sdxl_fleet_result *res, long ttl_s, sdxl_err *e);

typedef enum sdxl_fleet_cancel_status {
    SDXL_FLEET_CANCELLED = 0,    /* it was queued: failed as cancelled now, no worker will start it */
    SDXL_FLEET_CANCELLING,       /* it runs: its worker stops it within its poll (0.2 s) and one step */
    SDXL_FLEET_CANCEL_FINISHED,  /* already done or failed: nothing changed */
    SDXL_FLEET_CANCEL_UNKNOWN    /* no record */
} sdxl_fleet_cancel_status;

/* Cancels job id. Returns an sdxl_fleet_cancel_status, or -1 on a Redis failure. */
int sdxl_fleet_cancel(sdxl_redis *r, const char *prefix, const char *id, sdxl_err *e);

/* Publishes one progress event (JSON) of job id and keeps it in the job's record. */
int sdxl_fleet_publish_progress(sdxl_redis *r, const char *prefix, const char *id, const char *json, sdxl_err *e);

#endif
