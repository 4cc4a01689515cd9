/* `sdxl serve --redis URL`: the HTTP server as a fleet front end. /v1 jobs (and A1111's blocking
 * calls) go onto the fleet's Redis stream instead of the local engine; job records are read from
 * the P:job:<id> hashes; a relay thread subscribes to P:progress:* and feeds the jobs this server
 * watches into the event hub, so event streams look exactly like local ones. */
#ifndef SDXL_SERVE_FLEET_H
#define SDXL_SERVE_FLEET_H

#include "serve/internal.h"

struct sdxl_svc_request;
typedef struct srv_fleet srv_fleet;

/* Connects (a few seconds of retries: a clear error when Redis is not there) and starts the
 * relay. prefix NULL = "sdxl". Images are read from ecfg->output_root (the workers' shared
 * output root); the stream limit is ecfg->queue_limit. */
int srv_fleet_new(sdxl_serve *s, const char *url, const char *prefix, srv_fleet **out, sdxl_err *e);
/* Stops the relay (no more hub events), closes the connections. */
void srv_fleet_free(srv_fleet *f);

/* Queues q as a fleet job; answers 429 (busy), 503 (Redis away) or 500 itself and returns -1. */
int srv_fleet_submit(srv_req *r, const struct sdxl_svc_request *q, char id[64]);

/* The /v1 routes in fleet mode. */
void srv_fleet_ready(srv_req *r);
void srv_fleet_jobs_list(srv_req *r);
void srv_fleet_job_get(srv_req *r);
void srv_fleet_job_cancel(srv_req *r);
void srv_fleet_job_events(srv_req *r, unsigned long long after);
void srv_fleet_job_image(srv_req *r, int n);

#endif
