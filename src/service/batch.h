/* The batch manager's merge rules and the merged run: jobs that can share UNet calls (same models,
 * size, sampler, schedule, steps, CFG, rng; txt2img without adapters; a deterministic sampler)
 * run as one UNet batch, each image with its own prompt and seed, equal to its lone run. */
#ifndef SDXL_SERVICE_BATCH_H
#define SDXL_SERVICE_BATCH_H

#include "pipeline/pipeline.h"
#include "service/request.h"

/* The request may share a UNet batch with others at all. */
int sdxl_svc_batch_mergeable(const sdxl_svc_request *r);
/* a and b may share one UNet batch. */
int sdxl_svc_batch_compatible(const sdxl_svc_request *a, const sdxl_svc_request *b);

/* Runs n compatible requests as one batch; out holds every image, request by request. */
int sdxl_svc_batch_generate(sdxl_pl_model *m, const sdxl_gen_params *ps, int n, const volatile int *cancel,
                            const sdxl_pl_trace *tr, const sdxl_logger *log, sdxl_pl_result *out, sdxl_err *e);

#endif
