/*
 * sdxl.h - Stable Diffusion XL inference in C.
 *
 * The one public header. Conventions (SQLite / whisper.h style):
 *   - every call returns sdxl_status; the text of the last failure on a handle
 *     is kept on that handle and read with sdxl_errmsg();
 *   - params structs are filled with defaults by their *_init() function;
 *   - every object handed out has exactly one matching *_free().
 *
 * Usage:
 *
 *     sdxl_ctx_params p;
 *     sdxl_ctx_params_init(&p);
 *     p.n_threads = 2;
 *     sdxl_ctx *ctx;
 *     if (sdxl_ctx_new(&p, &ctx) != SDXL_OK) return 1;
 *
 *     sdxl_file *f;
 *     if (sdxl_file_open(ctx, "sd_xl_base_1.0.safetensors", &f) != SDXL_OK) {
 *         fprintf(stderr, "%s\n", sdxl_errmsg(ctx));
 *     } else {
 *         for (size_t i = 0; i < sdxl_file_n_tensors(f); i++) {
 *             sdxl_tensor_info t;
 *             sdxl_file_tensor(f, i, &t);
 *             printf("%s %s\n", t.name, t.dtype);
 *         }
 *         sdxl_file_free(f);
 *     }
 *     sdxl_ctx_free(ctx);
 */
#ifndef SDXL_H
#define SDXL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SDXL_VERSION_MAJOR 0
#define SDXL_VERSION_MINOR 1
#define SDXL_VERSION_PATCH 0

/* Status codes. Internal code uses the same values. */
typedef enum sdxl_status {
    SDXL_OK = 0,
    SDXL_ERR_ARG = 1,         /* a parameter is out of range or malformed */
    SDXL_ERR_IO = 2,          /* a file could not be opened, read or written */
    SDXL_ERR_FORMAT = 3,      /* bytes from outside failed validation */
    SDXL_ERR_NOMEM = 4,       /* an allocation failed */
    SDXL_ERR_UNSUPPORTED = 5, /* valid, but not something this build can do */
    SDXL_ERR_LIMIT = 6,       /* a configured limit was exceeded */
    SDXL_ERR_CANCELLED = 7,   /* the caller cancelled the request */
    SDXL_ERR_INTERNAL = 8     /* a bug: please report it */
} sdxl_status;

/* Static name of a status code, e.g. "SDXL_ERR_FORMAT". */
const char *sdxl_status_str(sdxl_status s);

/* "MAJOR.MINOR.PATCH". */
const char *sdxl_version(void);

typedef enum sdxl_log_level {
    SDXL_LOG_DEBUG = 0,
    SDXL_LOG_INFO = 1,
    SDXL_LOG_WARN = 2,
    SDXL_LOG_ERROR = 3,
    SDXL_LOG_NONE = 4
} sdxl_log_level;

/* Receives one complete message line (no trailing newline). May be called from any thread. */
typedef void (*sdxl_log_fn)(void *user, sdxl_log_level level, const char *msg);

/* A library context: logging, threads, and the error text of calls made through it. */
typedef struct sdxl_ctx sdxl_ctx;

typedef struct sdxl_ctx_params {
    int n_threads;            /* compute threads; 0 = one per online CPU */
    sdxl_log_level log_level; /* messages below this level are dropped */
    sdxl_log_fn log_fn;       /* NULL = write to stderr */
    void *log_user;
} sdxl_ctx_params;

void sdxl_ctx_params_init(sdxl_ctx_params *p);
sdxl_status sdxl_ctx_new(const sdxl_ctx_params *p, sdxl_ctx **out);
void sdxl_ctx_free(sdxl_ctx *ctx);

/* Text of the last failed call made with this handle; "" after a success. Never NULL. */
const char *sdxl_errmsg(const sdxl_ctx *ctx);

/* CPU features as seen at run time, e.g. "avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni". */
const char *sdxl_cpu_features(void);

/* ---- Model files: validated safetensors ------------------------------------------------- */

typedef struct sdxl_file sdxl_file;

typedef struct sdxl_tensor_info {
    const char *name;  /* valid while the file is open */
    const char *dtype; /* "F16", "F32", "BF16", ... */
    int ndim;
    int64_t shape[8];
    uint64_t nbytes;
} sdxl_tensor_info;

/* Maps and validates a .safetensors file. On failure the context's errmsg names the file,
 * the tensor (if any) and the rule that failed. */
sdxl_status sdxl_file_open(sdxl_ctx *ctx, const char *path, sdxl_file **out);
void sdxl_file_free(sdxl_file *f);
size_t sdxl_file_n_tensors(const sdxl_file *f);
sdxl_status sdxl_file_tensor(const sdxl_file *f, size_t i, sdxl_tensor_info *out);
size_t sdxl_file_n_metadata(const sdxl_file *f);
sdxl_status sdxl_file_metadata(const sdxl_file *f, size_t i, const char **key, const char **value);

#ifdef __cplusplus
}
#endif

#endif /* SDXL_H */
