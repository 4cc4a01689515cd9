/* The fleet on the job engine: `sdxl worker --redis URL` takes jobs from the stream and runs them
 * through the engine (every request dialect, named models, LoRA/ControlNet, model cache), one at
 * a time, with the engine's journal off (Redis holds the jobs). Images are renamed from the
 * engine's output into <output root>/<job id>/<i>.<ext>, so a re-run writes the same names; a
 * request without a seed gets one derived from the job id, so a re-run makes the same bytes. */
#ifndef SDXL_FLEET_ENGINE_RUNNER_H
#define SDXL_FLEET_ENGINE_RUNNER_H

#include <stdatomic.h>

#include "fleet/worker.h"
#include "service/engine.h"

/* Parses a fleet option of `sdxl worker` at argv[*i] (--redis, --fleet-prefix, --worker-id,
 * --stream-model, --visibility-ms, --max-deliveries, --heartbeat-ms, --result-ttl, --idle-exit-ms):
 * 1 consumed (and *i advanced past its value), 0 not a fleet option, -1 bad value (message printed).
 * models receives --stream-model names (up to 11). */
int sdxl_fleet_worker_option(sdxl_fleet_worker_params *p, const char **models, int argc, char **argv, int *i);
/* Help lines of those options. */
const char *sdxl_fleet_worker_usage(void);

/* Runs the fleet worker on eng until *stop (nonzero). output_root is the engine's output root (the
 * shared output directory); default_model names the stream read first (its stem) unless p->models
 * is set. Returns 0 on a clean stop, 1 on failure (message printed). */
int sdxl_fleet_engine_run(sdxl_engine *eng, sdxl_fleet_worker_params *p, const char *output_root,
                          const char *default_model, const atomic_int *stop);

#endif
