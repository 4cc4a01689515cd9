/* The service request: one struct for every front end (stdio worker, HTTP, fleet), filled from any
 * dialect by one validating parser. Dialects: our canonical snake_case (also camelCase and
 * PascalCase: keys match ignoring case and underscores), the orchestrator's nested inference
 * payload, its PascalCase C# object, and A1111's txt2img / img2img bodies. docs/worker.md has the
 * mapping table; docs/worker.schema.json the JSON Schema of the canonical form.
 *
 * Parsing never stops at the first problem: every bad field is reported with its path
 * ("loras[1].weight") and an error code from the documented list (docs/worker.md). */
#ifndef SDXL_SERVICE_REQUEST_H
#define SDXL_SERVICE_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "io/json.h"
#include "io/strbuf.h"
#include "sdxl.h"

#define SDXL_SVC_SCHEMA_VERSION 1

typedef enum sdxl_svc_dialect {
    SDXL_DIALECT_AUTO = 0,
    SDXL_DIALECT_NATIVE,       /* canonical keys, any case style */
    SDXL_DIALECT_ORCH_PAYLOAD, /* `data` of {"message_type":"inference_request"} */
    SDXL_DIALECT_ORCH_BASIC,   /* `parameters` of {"action":"generate_image"} */
    SDXL_DIALECT_ORCH_CSHARP,  /* `request` of {"action":"generate_sdxl_enhanced"} (PascalCase object) */
    SDXL_DIALECT_A1111_TXT2IMG,
    SDXL_DIALECT_A1111_IMG2IMG
} sdxl_svc_dialect;

const char *sdxl_svc_dialect_name(sdxl_svc_dialect d);

/* One problem found in a request. code is one of the documented codes ("wrong_type",
 * "out_of_range", "missing_field", "unknown_scheduler", ...); field is a path or "". */
typedef struct sdxl_svc_issue {
    char code[32];
    char field[96];
    char message[320];
} sdxl_svc_issue;

#define SDXL_SVC_MAX_ISSUES 24

typedef struct sdxl_svc_issues {
    int n;          /* recorded issues */
    int dropped;    /* further issues not recorded */
    int n_warnings; /* warnings: accepted but ignored or adjusted values */
    sdxl_svc_issue items[SDXL_SVC_MAX_ISSUES];
    char warnings[8][160];
} sdxl_svc_issues;

void sdxl_svc_issue_add(sdxl_svc_issues *is, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void sdxl_svc_warn(sdxl_svc_issues *is, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "field: message; field: message" of every issue (the one-line error of the orchestrator dialect). */
void sdxl_svc_issues_join(const sdxl_svc_issues *is, char *buf, size_t cap);

typedef struct sdxl_svc_lora {
    const char *name;  /* file stem or org/name, resolved inside the LoRA roots */
    float weight;      /* UNet multiplier, -2..2 */
    float te_weight;   /* text-encoder multiplier, -2..2 (default = weight) */
} sdxl_svc_lora;

typedef struct sdxl_svc_control {
    const char *model;      /* ControlNet name (or the orchestrator's type: canny, depth, ...) */
    const char *type;       /* canny | depth | pose | scribble | seg | normal | mlsd | lineart, or NULL */
    const char *image;      /* control image: a path inside the input roots, or base64 */
    float scale;            /* 0..2, default 1 */
    float guidance_start;   /* 0..1, default 0 */
    float guidance_end;     /* 0..1, default 1 */
    const char *preprocess; /* NULL = none */
    int resolution;         /* preprocessor resolution, 0 = output size */
} sdxl_svc_control;

typedef enum sdxl_svc_priority {
    SDXL_PRIO_LOW = 0,
    SDXL_PRIO_NORMAL = 1,
    SDXL_PRIO_HIGH = 2,
    SDXL_PRIO_URGENT = 3
} sdxl_svc_priority;

typedef struct sdxl_svc_request {
    sdxl_gen_params g;        /* strings point into the request's own storage; g.loras/g.controls stay
                                 empty here: the engine fills them from the resolved lists below */
    const char *base;         /* model names, NULL = the worker's default (its loaded or only model) */
    const char *refiner;
    const char *vae;
    const char *init_image;   /* img2img / inpaint source: path inside the input roots, or base64 */
    const char *mask;
    sdxl_svc_lora *loras;
    int n_loras;
    sdxl_svc_control *controls;
    int n_controls;
    const char *format;       /* "png" (default), "jpeg", "webp" */
    int quality;              /* 1..100, default 95 */
    const char *save_path;    /* folder relative to the output root, default "" */
    const char *file_prefix;  /* default "sdxl" */
    int upscale_factor;       /* 0/1 = none */
    const char *upscale_method;
    int priority;             /* sdxl_svc_priority */
    double timeout_s;         /* 0 = the worker's default */
    const char *client_id;    /* the caller's request id (orchestrator request_id, ...) or NULL */
    int preview_every;        /* 0 = no previews; else a preview every N steps */
    sdxl_svc_dialect dialect; /* what the parser read */
    void *storage;            /* owned strings and arrays */
} sdxl_svc_request;

void sdxl_svc_request_init(sdxl_svc_request *r);
void sdxl_svc_request_free(sdxl_svc_request *r);

/* Reads a request object of dialect d (AUTO: detected from its keys) into r (initialised first)
 * and validates every field. Returns SDXL_OK, or SDXL_ERR_ARG with all problems in is. r holds
 * whatever parsed either way and must be freed. */
int sdxl_svc_request_parse(const sdxl_json *obj, sdxl_svc_dialect d, sdxl_svc_request *r, sdxl_svc_issues *is);

/* Field checks on a filled struct (ranges, names, combinations); appends to is. */
int sdxl_svc_request_validate(const sdxl_svc_request *r, sdxl_svc_issues *is);

/* Canonical snake_case JSON of r (what the journal stores and sdxl_svc_request_parse reads back
 * to an equal struct). */
void sdxl_svc_request_to_json(const sdxl_svc_request *r, sdxl_strbuf *b);

/* Copies a string into r's storage (NULL stays NULL); NULL on allocation failure. */
const char *sdxl_svc_request_strdup(sdxl_svc_request *r, const char *s);

/* Deep copy (own storage). */
int sdxl_svc_request_copy(const sdxl_svc_request *src, sdxl_svc_request *dst);

/* The JSON Schema of the canonical request (docs/worker.schema.json is this text). */
const char *sdxl_svc_request_schema(void);

/* Scheduler name from any dialect (orchestrator class or short names, A1111, ComfyUI, k-diffusion,
 * diffusers) -> a name the scheduler registry resolves; NULL when it means nothing. */
const char *sdxl_svc_scheduler_alias(const char *name);

/* Object member lookup ignoring case and underscores ("guidance_scale" finds "GuidanceScale"). */
const sdxl_json *sdxl_svc_get(const sdxl_json *obj, const char *key);

#endif
