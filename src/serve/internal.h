/* Inside the HTTP front end: one request's state, the route table, response helpers. Handlers run
 * on libmicrohttpd's pool threads; a handler that waits for the engine suspends its connection and
 * is resumed from the engine's thread, never blocking a pool thread. */
#ifndef SDXL_SERVE_INTERNAL_H
#define SDXL_SERVE_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "io/json.h"
#include "io/strbuf.h"
#include "serve/serve.h"
#include "service/engine.h"

typedef struct srv_req srv_req;
typedef void (*srv_handler)(srv_req *r);

enum {
    SRV_A1111 = 1,  /* errors in FastAPI's shape: {"detail": ...} */
    SRV_PUBLIC = 2, /* no credentials needed (/health, /ready) */
    SRV_JSON = 4,   /* the body must be a JSON object; parsed into r->json before the handler */
};

typedef struct srv_route {
    const char *method;  /* "GET", "POST", "DELETE" */
    const char *pattern; /* "/v1/jobs/{id}/images/{n}": {..} segments are captured into params */
    srv_handler fn;
    int flags;
} srv_route;

extern const srv_route sdxl_srv_routes[];
extern const size_t sdxl_srv_n_routes;

enum { SRV_IDLE, SRV_SUSPENDED, SRV_READY };

#define SRV_MAX_HEADERS 8

struct srv_req {
    sdxl_serve *srv;
    struct MHD_Connection *conn;
    char rid[24];
    char method[12];
    char *url;
    const srv_route *route;
    int a1111; /* error shape of the route, or of its prefix when no route matched */
    char params[2][80];
    int n_params;
    double t0;
    /* body */
    sdxl_strbuf body;
    int body_over;  /* body exceeded the limit: drained and dropped */
    int answered;   /* a response is queued */
    sdxl_json *json;
    /* response */
    int status;
    sdxl_strbuf out;
    const char *ctype;
    char hdr[SRV_MAX_HEADERS][2][320]; /* name, value (a Content-Security-Policy is long) */
    int n_hdr;
    char job[72]; /* job id for the access log */
    size_t bytes;
    /* suspended work: set by the handler, run on the pool thread after resume */
    pthread_mutex_t mu;
    int state;
    int shutdown;                  /* resumed because the server is stopping */
    void (*on_resume)(srv_req *r); /* builds the response */
    void (*on_done)(srv_req *r);   /* releases async state (engine subscription) before r is freed */
    void *async;
    /* streaming (server-sent events): bytes queued by producers, read by MHD */
    int streaming;
    sdxl_strbuf sse;
    size_t sse_off;
    int sse_end;
    srv_req *next, *prev; /* in the server's list of suspended or streaming requests */
};

struct sdxl_engine;
struct srv_hub;

struct sdxl_serve {
    sdxl_serve_opts o;
    char *listen_copy, *api_key, *api_auth;
    struct MHD_Daemon *d;
    struct sdxl_engine *eng;    /* owned; NULL once freed at shutdown */
    struct srv_hub *hub;
    struct srv_fleet *fleet;    /* --redis: /v1 jobs go to the fleet's queue (fleet.c); NULL = local engine */
    const struct sdxl_engine_config *ecfg;
    pthread_rwlock_t eng_lock;  /* handlers hold it shared while they use eng */
    int port;
    atomic_ulong next_rid;
    atomic_int stopping;
    pthread_mutex_t mu; /* async list, access log */
    srv_req *async_head;
    int n_async;
    double started;
    atomic_ulong http_by_class[6]; /* responses by status class 1xx..5xx */
    pthread_t ka_thread;           /* writes a comment line into idle event streams */
    int ka_started, ka_stop;
    pthread_cond_t ka_cond;        /* with mu */
    /* A1111 front-end state */
    pthread_mutex_t a1111_mu;
    char checkpoint[512]; /* sd_model_checkpoint set through /sdapi/v1/options ("" = engine default) */
    char vae[512];        /* sd_vae ("" = Automatic) */
    int clip_stop;        /* CLIP_stop_at_last_layers, 1 = last layer */
};

double sdxl_srv_now(void);

/* Responses. Each sets status and body; the core queues it when the handler returns. */
void srv_json(srv_req *r, int status, const char *json);
void srv_take_json(srv_req *r, int status, sdxl_strbuf *b); /* takes b's buffer */
void srv_bytes(srv_req *r, int status, const char *ctype, const void *p, size_t n);
void srv_header(srv_req *r, const char *name, const char *value);
/* Error in the route's shape: A1111 {"detail": msg} (422: [{"loc":["body",field],"msg","type"}]);
 * ours {"error":{"code","message","field"}}. field may be NULL. */
void srv_error(srv_req *r, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Maps an sdxl status to HTTP: ARG/FORMAT 422, LIMIT 413, NOMEM 503, UNSUPPORTED 422, others 500. */
int srv_status_http(int st);

/* Suspends r until srv_resume; on_resume then runs on a pool thread to build the response. */
void srv_suspend(srv_req *r, void (*on_resume)(srv_req *r), void (*on_done)(srv_req *r), void *async);
/* From any thread: wakes a suspended request (no effect if it is not suspended). */
void srv_resume(srv_req *r);

/* Streams: starts a text/event-stream response; producers append with srv_sse_* from any thread. */
void srv_stream(srv_req *r, void (*on_done)(srv_req *r), void *async);
void srv_sse_event(srv_req *r, unsigned long long id, const char *event, const char *data);
void srv_sse_end(srv_req *r);

/* Reads a whole file (at most max bytes) into a malloc'd buffer; -1 on failure. */
int srv_read_file(const char *path, size_t max, uint8_t **out, size_t *n);
/* Sends image k of a job with its content type; 404 unknown_image, 410 image_gone. */
void srv_job_image_reply(srv_req *r, const sdxl_job_info *j, int k);
/* A job as the /v1 routes show it (local and fleet alike): record, image URLs, links. */
void srv_job_json(const sdxl_job_info *j, sdxl_strbuf *b);

/* The engine for the length of a handler: NULL (and a 503 answered) once it is shut down. */
struct sdxl_engine *srv_eng(srv_req *r);
void srv_eng_done(srv_req *r);

struct sdxl_svc_request;
struct sdxl_svc_issues;
/* Server limits on a parsed request: prompt bytes, images per request. Answers 422 and returns -1
 * on the first excess. */
int srv_check_request(srv_req *r, const struct sdxl_svc_request *q);
/* Validates one base64 image field (data URL allowed) through the image decoder with the server's
 * byte and pixel limits. Answers 413 / 422 naming field and returns -1 when it fails. */
int srv_check_image(srv_req *r, const char *field, const char *b64);
/* Answers 422 with every issue: A1111 {"detail":[{"loc","msg","type"}]}, ours {"error":{...,"issues"}}. */
void srv_issues(srv_req *r, const struct sdxl_svc_issues *is);
/* Model-like files (*.safetensors) under roots, as a JSON array of {"name","path"} (names are the
 * relative path without extension). depth bounds the walk. */
void srv_list_files(const char *const *roots, int n_roots, const char *const *subdirs, sdxl_strbuf *b);

/* Route handlers (v1.c, a1111.c, openapi.c). */
#define SRV_HANDLER(name) void name(srv_req *r);
#include "serve/handlers.def"
#undef SRV_HANDLER

/* Query parameter or header value, or NULL. */
const char *srv_query(srv_req *r, const char *key);
const char *srv_header_in(srv_req *r, const char *key);

#endif
