/* Event hub: the server's one engine subscription. It keeps each job's events numbered (the SSE
 * ids that Last-Event-ID resumes from), the latest progress and preview, a copy of each finished
 * job's snapshot, and wakes the requests that wait on a job: event streams and A1111's blocking
 * txt2img/img2img. Callbacks arrive on engine threads and only append and wake. */
#ifndef SDXL_SERVE_HUB_H
#define SDXL_SERVE_HUB_H

#include "serve/internal.h"
#include "service/engine.h"

typedef struct srv_hub srv_hub;

int srv_hub_new(sdxl_engine *eng, srv_hub **out);
/* Call after the engine is freed (no more callbacks). */
void srv_hub_free(srv_hub *h, sdxl_engine *eng);
/* Unsubscribes (before the engine is freed, when it is freed by its owner later). */
void srv_hub_detach_engine(srv_hub *h, sdxl_engine *eng);

/* Streams job id's events with ids > after into r (an srv_stream request), then follows it live,
 * and ends the stream after the result or error. A job the hub has no history of (evicted, or from
 * before a restart) starts with a "state" event from snap; snap NULL and no history: -1. A finished
 * snap ends a history that has not finished (its final event came from the record). */
int srv_hub_stream(srv_hub *h, const char *id, unsigned long long after, const sdxl_job_info *snap, srv_req *r);
/* Resumes r (already suspended) once job id has finished; at once when it has. */
void srv_hub_wait(srv_hub *h, const char *id, srv_req *r);
/* Feeds one event as if the engine had sent it (the fleet relay's events). */
void srv_hub_inject(srv_hub *h, const sdxl_event *ev);
/* Forgets r (its request is over). */
void srv_hub_forget(srv_hub *h, srv_req *r);

/* Deep copy of job id's final snapshot; 0 when the hub holds none. */
int srv_hub_final(srv_hub *h, const char *id, sdxl_job_info *out);

typedef struct srv_hub_progress {
    char job[40];
    int active;        /* a job is running */
    char phase[16];
    int step, steps, image, n_images;
    double eta_s;      /* < 0 unknown */
    double started;    /* monotonic seconds of the job's first progress event */
    unsigned char *png; /* latest preview (malloc'd copy) or NULL */
    size_t png_len;
} srv_hub_progress;

/* The running job's latest progress (the most recent job with progress when none runs). */
void srv_hub_progress_get(srv_hub *h, srv_hub_progress *out, int want_png);

/* Prometheus histogram of job latency (accepted -> finished), seconds. */
#define SRV_HUB_BUCKETS 10
extern const double srv_hub_bucket_le[SRV_HUB_BUCKETS];
void srv_hub_latency(srv_hub *h, uint64_t counts[SRV_HUB_BUCKETS + 1], double *sum, uint64_t *n);

/* Deep copy of a job snapshot (out zeroed first); -1 on allocation failure. */
int srv_job_info_copy(const sdxl_job_info *src, sdxl_job_info *out);

#endif
