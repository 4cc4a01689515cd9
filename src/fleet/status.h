/* Read-only views of the fleet for `sdxl fleet status` / `result` and for front ends. */
#ifndef SDXL_FLEET_STATUS_H
#define SDXL_FLEET_STATUS_H

#include "fleet/redis.h"
#include "io/strbuf.h"

/* {"streams":[{"stream","length","pending","waiting","consumers"}...],"workers":[<heartbeat>...],
 *  "dead":N,"stats":{"done","failed","dead","claims","duplicate_finishes"}} */
int sdxl_fleet_status_json(sdxl_redis *r, const char *prefix, sdxl_strbuf *out, sdxl_err *e);

/* The job's record as one JSON object (outputs, seeds, stats and progress embedded as JSON);
 * returns 1 when found, 0 when there is no such job, -1 on a Redis failure. */
int sdxl_fleet_job_json(sdxl_redis *r, const char *prefix, const char *id, sdxl_strbuf *out, sdxl_err *e);

#endif
