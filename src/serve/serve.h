/* `sdxl serve`: the HTTP front end (libmicrohttpd) over the job engine. Our /v1 routes with
 * server-sent events, and A1111's /sdapi/v1 routes with its field names and response shapes. */
#ifndef SDXL_SERVE_SERVE_H
#define SDXL_SERVE_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct sdxl_serve_limits {
    size_t max_body;       /* request body bytes; default 64 MiB */
    int max_json_depth;    /* nesting of a JSON body; default 32 */
    size_t max_image_bytes; /* one decoded base64 image; default 32 MiB */
    uint64_t max_pixels;   /* one decoded image, width * height; default 4096 * 4096 */
    size_t max_prompt;     /* prompt / negative prompt bytes; default 32 KiB */
    int max_images;        /* images one request asks for (batch_size * n_iter); default 16 */
    int max_connections;   /* open connections; default 512 */
    int max_per_ip;        /* open connections from one address; default 0 = max_connections */
    int idle_timeout_s;    /* a connection idle this long is closed (slow-loris); default 30 */
    int body_timeout_s;    /* a request body must arrive within this; default 60 */
} sdxl_serve_limits;

void sdxl_serve_limits_init(sdxl_serve_limits *l);

struct sdxl_engine;

typedef struct sdxl_serve_opts {
    const char *listen;   /* "ADDR:PORT", "[v6]:PORT" or ":PORT"; default "127.0.0.1:7860" */
    const char *api_key;  /* Bearer key; NULL = none */
    const char *api_auth; /* A1111 "user:pass[,user2:pass2]" HTTP basic credentials; NULL = none */
    int insecure;         /* allow a non-loopback address without credentials */
    int threads;          /* HTTP worker threads; <= 0: one per CPU (2..16) */
    int access_log;       /* one JSON line per request on stderr; default 1 */
    int paused;           /* the engine was started paused (POST /v1/resume starts it) */
    int preview_every;    /* previews for A1111 jobs (progress current_image) every N steps; 0 none */
    const char *redis_url;    /* fleet front end (docs/fleet.md): jobs go to this Redis; NULL = local engine */
    const char *fleet_prefix; /* fleet key prefix; NULL = "sdxl" */
    sdxl_serve_limits lim;
} sdxl_serve_opts;

void sdxl_serve_opts_init(sdxl_serve_opts *o);

typedef struct sdxl_serve sdxl_serve;

/* Checks the address and credentials (a non-loopback address needs a key or insecure). */
int sdxl_serve_opts_check(const sdxl_serve_opts *o, sdxl_err *e);

/* Binds and starts serving on the engine, which it takes over (also on failure): sdxl_serve_free
 * frees it. ecfg (kept by the caller while the server runs) names the model roots for listings. */
struct sdxl_engine_config;
int sdxl_serve_start(const sdxl_serve_opts *o, struct sdxl_engine *eng, const struct sdxl_engine_config *ecfg,
                     sdxl_serve **out, sdxl_err *e);
/* The bound port (useful with port 0). */
int sdxl_serve_port(const sdxl_serve *s);
/* Stops accepting connections; requests in flight and open event streams are still answered. */
void sdxl_serve_quiesce(sdxl_serve *s);
/* Graceful stop: refuses new requests, lets the engine finish the running job (queued jobs stay
 * in the journal), answers every waiting request and stream, closes the listener, frees s. */
void sdxl_serve_free(sdxl_serve *s);

#endif
