/* The stdio worker's two wire protocols over one engine, independent of the transport:
 *   - native JSON lines: requests {"op": ...}, events {"event": ...} (docs/worker.md);
 *   - the C# orchestrator's dialect: lines with "action" or "message_type", each answered with
 *     exactly one {"success", "error", "data"} line (../shared/protocol/orchestrator.md).
 * The front end hands over complete lines (without the line end) and writes what comes back
 * through write_fn, one line per call; write_fn may be called from the engine's runner thread. */
#ifndef SDXL_SERVICE_PROTOCOL_H
#define SDXL_SERVICE_PROTOCOL_H

#include <stddef.h>

#include "service/engine.h"

typedef void (*sdxl_proto_write_fn)(void *user, const char *line, size_t len);

typedef struct sdxl_proto sdxl_proto;

typedef struct sdxl_proto_opts {
    size_t max_line;   /* longest accepted line in bytes (default 32 MiB) */
    int hello_at_start;/* 1: write hello now; 0: before the reply to the first native line */
} sdxl_proto_opts;

void sdxl_proto_opts_init(sdxl_proto_opts *o);

int sdxl_proto_new(sdxl_engine *eng, const sdxl_proto_opts *o, sdxl_proto_write_fn fn, void *user, sdxl_proto **out);
void sdxl_proto_free(sdxl_proto *p);

/* Handles one line. Returns 1 when it asked the worker to shut down, else 0. */
int sdxl_proto_line(sdxl_proto *p, const char *line, size_t len);
/* A line longer than max_line was skipped (len bytes seen). */
void sdxl_proto_too_long(sdxl_proto *p, size_t len);

/* Error codes a malformed line can get, with their one-line meaning (docs and tests). */
typedef struct sdxl_proto_code {
    const char *code;
    const char *meaning;
} sdxl_proto_code;
const sdxl_proto_code *sdxl_proto_codes(int *n);

#endif
