/* A fleet runner on the public library: one loaded model, one session, requests in the canonical
 * JSON of sdxl_gen_params_from_json plus "format" ("png" default, "jpg", "webp"). A request without
 * a seed gets one derived from its job id, so a re-run after a crash makes the same images. */
#ifndef SDXL_FLEET_RUNNER_H
#define SDXL_FLEET_RUNNER_H

#include "fleet/worker.h"
#include "sdxl.h"

typedef struct sdxl_fleet_lib_runner {
    sdxl_ctx *ctx;
    sdxl_model *model;
    sdxl_session *session;
    sdxl_fleet_sink *sink; /* of the running job */
    char model_name[128];
} sdxl_fleet_lib_runner;

/* Binds ctx and a loaded model (both stay the caller's) and fills rn to drive it. */
int sdxl_fleet_lib_runner_init(sdxl_fleet_lib_runner *lr, sdxl_ctx *ctx, sdxl_model *model, const char *model_name,
                               sdxl_fleet_runner *rn, sdxl_err *e);
void sdxl_fleet_lib_runner_free(sdxl_fleet_lib_runner *lr);

/* The seed a job without one gets: 31 bits of FNV-1a of its id (fits the orchestrator's int32). */
int64_t sdxl_fleet_job_seed(const char *id);

#endif
