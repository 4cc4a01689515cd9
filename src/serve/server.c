/* HTTP core on libmicrohttpd: listener, thread pool, routing, credentials, body limits, suspended
 * requests, server-sent event streams, access log. Handlers live in v1.c and a1111.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/threads.h"
#include "serve/b64.h"
#include "serve/fleet.h"
#include "serve/hub.h"
#include "serve/internal.h"

void sdxl_serve_limits_init(sdxl_serve_limits *l) {
    l->max_body = (size_t)64 << 20;
    l->max_json_depth = 32;
    l->max_image_bytes = (size_t)32 << 20;
    l->max_pixels = (uint64_t)4096 * 4096;
    l->max_prompt = (size_t)32 << 10;
    l->max_images = 16;
    l->max_connections = 512;
    l->max_per_ip = 0;
    l->idle_timeout_s = 30;
    l->body_timeout_s = 60;
}

void sdxl_serve_opts_init(sdxl_serve_opts *o) {
    memset(o, 0, sizeof *o);
    o->listen = "127.0.0.1:7860";
    o->access_log = 1;
    o->preview_every = 1;
    sdxl_serve_limits_init(&o->lim);
}

double sdxl_srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- responses ---- */

void srv_take_json(srv_req *r, int status, sdxl_strbuf *b) {
    sdxl_sb_free(&r->out);
    if (b->oom) {
        sdxl_sb_free(b);
        r->status = 503;
        sdxl_sb_str(&r->out, "{\"detail\":\"out of memory\"}");
    } else {
        r->out = *b;
        r->status = status;
        memset(b, 0, sizeof *b);
        if (!r->out.p) sdxl_sb_str(&r->out, "");
    }
    r->ctype = "application/json";
}

void srv_json(srv_req *r, int status, const char *json) {
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, json);
    srv_take_json(r, status, &b);
}

void srv_bytes(srv_req *r, int status, const char *ctype, const void *p, size_t n) {
    sdxl_sb_free(&r->out);
    sdxl_sb_put(&r->out, p, n);
    if (!r->out.p) sdxl_sb_str(&r->out, "");
    r->status = r->out.oom ? 503 : status;
    r->ctype = ctype;
}

void srv_header(srv_req *r, const char *name, const char *value) {
    if (r->n_hdr >= SRV_MAX_HEADERS) return;
    snprintf(r->hdr[r->n_hdr][0], sizeof r->hdr[0][0], "%s", name);
    snprintf(r->hdr[r->n_hdr][1], sizeof r->hdr[0][1], "%s", value);
    r->n_hdr++;
}

void srv_error(srv_req *r, int status, const char *code, const char *field, const char *fmt, ...) {
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sdxl_strbuf b = {0};
    if (r->a1111) {
        if (status == 422) {
            /* FastAPI's validation shape: a list of {loc, msg, type} */
            sdxl_sb_str(&b, "{\"detail\":[{\"loc\":[\"body\"");
            if (field) {
                sdxl_sb_str(&b, ",");
                sdxl_sb_json(&b, field);
            }
            sdxl_sb_str(&b, "],\"msg\":");
            sdxl_sb_json(&b, msg);
            sdxl_sb_str(&b, ",\"type\":");
            sdxl_sb_json(&b, code);
            sdxl_sb_str(&b, "}]}");
        } else {
            sdxl_sb_str(&b, "{\"detail\":");
            sdxl_sb_json(&b, msg);
            if (field) {
                sdxl_sb_str(&b, ",\"field\":");
                sdxl_sb_json(&b, field);
            }
            sdxl_sb_str(&b, "}");
        }
    } else {
        sdxl_sb_str(&b, "{\"error\":{\"code\":");
        sdxl_sb_json(&b, code);
        sdxl_sb_str(&b, ",\"message\":");
        sdxl_sb_json(&b, msg);
        if (field) {
            sdxl_sb_str(&b, ",\"field\":");
            sdxl_sb_json(&b, field);
        }
        sdxl_sb_str(&b, "}}");
    }
    srv_take_json(r, status, &b);
}

int srv_status_http(int st) {
    switch (st) {
    case SDXL_OK: return 200;
    case SDXL_ERR_ARG:
    case SDXL_ERR_FORMAT:
    case SDXL_ERR_UNSUPPORTED: return 422;
    case SDXL_ERR_LIMIT: return 413;
    case SDXL_ERR_NOMEM: return 503;
    case SDXL_ERR_CANCELLED: return 409;
    default: return 500;
    }
}

const char *srv_query(srv_req *r, const char *key) {
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *srv_header_in(srv_req *r, const char *key) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, key);
}

/* ---- async list ---- */

static void async_add(sdxl_serve *s, srv_req *r) {
    pthread_mutex_lock(&s->mu);
    r->prev = NULL;
    r->next = s->async_head;
    if (s->async_head) s->async_head->prev = r;
    s->async_head = r;
    s->n_async++;
    pthread_mutex_unlock(&s->mu);
}

static void async_remove(sdxl_serve *s, srv_req *r) {
    pthread_mutex_lock(&s->mu);
    if (r->prev || r->next || s->async_head == r) {
        if (r->prev) r->prev->next = r->next;
        else s->async_head = r->next;
        if (r->next) r->next->prev = r->prev;
        r->next = r->prev = NULL;
        s->n_async--;
    }
    pthread_mutex_unlock(&s->mu);
}

void srv_suspend(srv_req *r, void (*on_resume)(srv_req *r), void (*on_done)(srv_req *r), void *async) {
    r->on_resume = on_resume;
    r->on_done = on_done;
    r->async = async;
    async_add(r->srv, r);
    pthread_mutex_lock(&r->mu);
    r->state = SRV_SUSPENDED;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    if (atomic_load(&r->srv->stopping)) {
        pthread_mutex_lock(&r->mu);
        r->shutdown = 1;
        pthread_mutex_unlock(&r->mu);
        srv_resume(r);
    }
}

void srv_resume(srv_req *r) {
    pthread_mutex_lock(&r->mu);
    if (r->state == SRV_SUSPENDED) {
        r->state = SRV_READY;
        MHD_resume_connection(r->conn);
    }
    pthread_mutex_unlock(&r->mu);
}

/* ---- server-sent events ---- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_req *r = cls;
    pthread_mutex_lock(&r->mu);
    size_t avail = r->sse.n - r->sse_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->sse.p + r->sse_off, n);
        r->sse_off += n;
        if (r->sse_off == r->sse.n) r->sse_off = r->sse.n = 0;
        r->bytes += n;
        pthread_mutex_unlock(&r->mu);
        return (ssize_t)n;
    }
    if (r->sse_end || r->shutdown || r->sse.oom) {
        pthread_mutex_unlock(&r->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    r->state = SRV_SUSPENDED;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void sse_wake_locked(srv_req *r) {
    if (r->state == SRV_SUSPENDED) {
        r->state = SRV_IDLE;
        MHD_resume_connection(r->conn);
    }
}

void srv_stream(srv_req *r, void (*on_done)(srv_req *r), void *async) {
    r->streaming = 1;
    r->on_done = on_done;
    r->async = async;
    r->status = 200;
    async_add(r->srv, r);
}

void srv_sse_event(srv_req *r, unsigned long long id, const char *event, const char *data) {
    pthread_mutex_lock(&r->mu);
    if (!r->sse_end) {
        if (id) sdxl_sb_printf(&r->sse, "id: %llu\n", id);
        if (event) sdxl_sb_printf(&r->sse, "event: %s\n", event);
        /* data lines must not hold a newline: JSON from our writers never does */
        sdxl_sb_str(&r->sse, "data: ");
        sdxl_sb_str(&r->sse, data ? data : "");
        sdxl_sb_str(&r->sse, "\n\n");
        sse_wake_locked(r);
    }
    pthread_mutex_unlock(&r->mu);
}

void srv_sse_end(srv_req *r) {
    pthread_mutex_lock(&r->mu);
    r->sse_end = 1;
    sse_wake_locked(r);
    pthread_mutex_unlock(&r->mu);
}

/* Every 15 s each open event stream gets a comment line: proxies keep it open while a job waits
 * in the queue, and a client that went away is noticed (the write fails, the request ends). */
static void *keepalive_main(void *arg) {
    sdxl_serve *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->ka_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 15;
        while (!s->ka_stop && pthread_cond_timedwait(&s->ka_cond, &s->mu, &ts) == 0) {
        }
        if (s->ka_stop) break;
        for (srv_req *r = s->async_head; r; r = r->next) {
            if (!r->streaming) continue;
            pthread_mutex_lock(&r->mu);
            if (!r->sse_end && r->sse.n == r->sse_off) {
                sdxl_sb_str(&r->sse, ": keep-alive\n\n");
                sse_wake_locked(r);
            }
            pthread_mutex_unlock(&r->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- routing and credentials ---- */

static int param_ok(const char *s, size_t n) {
    if (n == 0 || n >= 80) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* 1 when url matches pattern; captures {..} segments. A captured segment outside [A-Za-z0-9_-]{1,79}
 * does not match (so "../x" in an id is a 404, never a path). */
static int route_match(const char *pattern, const char *url, char params[2][80], int *n_params) {
    int np = 0;
    const char *p = pattern, *u = url;
    while (*p && *u) {
        if (*p != '/' || *u != '/') return 0;
        p++, u++;
        const char *pe = strchr(p, '/'), *ue = strchr(u, '/');
        size_t pl = pe ? (size_t)(pe - p) : strlen(p), ul = ue ? (size_t)(ue - u) : strlen(u);
        if (pl >= 2 && p[0] == '{') {
            if (np >= 2 || !param_ok(u, ul)) return 0;
            memcpy(params[np], u, ul);
            params[np][ul] = 0;
            np++;
        } else if (pl != ul || memcmp(p, u, pl)) {
            return 0;
        }
        p += pl, u += ul;
    }
    if (*p || *u) return 0;
    *n_params = np;
    return 1;
}

/* Constant time in the secret's content: every byte of both strings is looked at. */
static int ct_equal(const char *a, size_t an, const char *b, size_t bn) {
    size_t n = an > bn ? an : bn;
    unsigned diff = (unsigned)(an ^ bn);
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < an ? (unsigned char)a[i] : 0, y = i < bn ? (unsigned char)b[i] : 0;
        diff |= (unsigned)(x ^ y);
    }
    return diff == 0;
}

static int authorized(sdxl_serve *s, srv_req *r) {
    if (!s->api_key && !s->api_auth) return 1;
    const char *h = srv_header_in(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strlen(h) > 4096) return 0;
    int ok = 0;
    if (s->api_key && !strncasecmp(h, "Bearer ", 7)) {
        const char *k = h + 7;
        while (*k == ' ') k++;
        ok |= ct_equal(k, strlen(k), s->api_key, strlen(s->api_key));
    }
    if (s->api_auth && !strncasecmp(h, "Basic ", 6)) {
        uint8_t *dec = NULL;
        size_t n = 0;
        if (sdxl_b64_decode(h + 6, strlen(h + 6), 4096, "authorization", &dec, &n, NULL) == SDXL_OK) {
            /* every configured "user:pass" is compared, so timing does not say which one matched */
            const char *c = s->api_auth;
            while (*c) {
                const char *comma = strchr(c, ',');
                size_t cl = comma ? (size_t)(comma - c) : strlen(c);
                ok |= ct_equal((const char *)dec, n, c, cl);
                c += cl + (comma ? 1 : 0);
            }
            free(dec);
        }
    }
    return ok;
}

/* ---- MHD callbacks ---- */

static void client_ip(srv_req *r, char *buf, size_t cap) {
    buf[0] = 0;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)cap);
}

static enum MHD_Result queue(srv_req *r) {
    struct MHD_Response *resp;
    if (r->streaming) {
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, r, NULL);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    } else {
        if (!r->status) srv_error(r, 500, "internal", NULL, "the handler gave no response");
        size_t n = r->out.n;
        char *p = r->out.p;
        memset(&r->out, 0, sizeof r->out);
        resp = MHD_create_response_from_buffer(n, p ? p : (char *)"", p ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
        if (!resp) {
            free(p);
            return MHD_NO;
        }
        r->bytes = n;
        if (r->ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype);
    }
    MHD_add_response_header(resp, "X-Request-Id", r->rid);
    for (int i = 0; i < r->n_hdr; i++) MHD_add_response_header(resp, r->hdr[i][0], r->hdr[i][1]);
    r->answered = 1;
    if (r->status >= 100 && r->status < 600) atomic_fetch_add(&r->srv->http_by_class[r->status / 100], 1);
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static void dispatch(sdxl_serve *s, srv_req *r) {
    if (r->route->flags & SRV_JSON) {
        if (!r->body.n) {
            srv_error(r, r->a1111 ? 422 : 400, "missing_body", "body", "a JSON object body is required");
            return;
        }
        sdxl_json_opts jo;
        sdxl_json_opts_init(&jo);
        jo.max_depth = s->o.lim.max_json_depth;
        jo.reject_dup_keys = 0; /* Python's json module keeps the last duplicate; so does our parser then */
        sdxl_err e = {0};
        if (sdxl_json_parse(r->body.p, r->body.n, &jo, "request body", &r->json, &e) != SDXL_OK) {
            srv_error(r, r->a1111 ? 422 : 400, "invalid_json", "body", "%s", e.msg);
            return;
        }
        if (r->json->type != SDXL_JSON_OBJECT) {
            srv_error(r, 422, "type_error.dict", "body", "the body must be a JSON object");
            return;
        }
    }
    r->route->fn(r);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    sdxl_serve *s = cls;
    srv_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *con_cls = r;
        r->srv = s;
        r->conn = c;
        r->t0 = sdxl_srv_now();
        pthread_mutex_init(&r->mu, NULL);
        snprintf(r->rid, sizeof r->rid, "%08lx-%06lx", (unsigned long)s->started & 0xffffffffUL,
                 atomic_fetch_add(&s->next_rid, 1) + 1);
        snprintf(r->method, sizeof r->method, "%s", method);
        r->url = strdup(url);
        if (!r->url) return MHD_NO;
        r->a1111 = !strncmp(url, "/sdapi/", 7);
        int path_hit = 0;
        const char *want = !strcmp(method, "HEAD") ? "GET" : method;
        char allow[64] = "";
        for (size_t i = 0; i < sdxl_srv_n_routes; i++) {
            const srv_route *rt = &sdxl_srv_routes[i];
            char params[2][80];
            int np = 0;
            if (!route_match(rt->pattern, url, params, &np)) continue;
            path_hit = 1;
            if (strlen(allow) + strlen(rt->method) + 3 < sizeof allow)
                snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s", allow[0] ? ", " : "", rt->method);
            if (strcmp(rt->method, want)) continue;
            r->route = rt;
            memcpy(r->params, params, sizeof params);
            r->n_params = np;
            break;
        }
        if (r->route) r->a1111 = (r->route->flags & SRV_A1111) != 0;
        if (atomic_load(&s->stopping)) {
            srv_header(r, "Connection", "close");
            srv_header(r, "Retry-After", "5");
            srv_error(r, 503, "shutting_down", NULL, "the server is shutting down");
            return queue(r);
        }
        if (!r->route) {
            if (path_hit) {
                srv_header(r, "Allow", allow);
                srv_error(r, 405, "method_not_allowed", NULL, "Method Not Allowed");
            } else {
                srv_error(r, 404, "not_found", NULL, "Not Found");
            }
            return queue(r);
        }
        if (!(r->route->flags & SRV_PUBLIC) && !authorized(s, r)) {
            srv_header(r, "WWW-Authenticate", s->api_key ? "Bearer" : "Basic realm=\"sdxl\"");
            srv_error(r, 401, "unauthorized", NULL, "Unauthorized");
            return queue(r);
        }
        const char *cl = srv_header_in(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || *end || v > s->o.lim.max_body) {
                srv_header(r, "Connection", "close");
                srv_error(r, 413, "body_too_large", "body", "the request body exceeds %zu bytes", s->o.lim.max_body);
                return queue(r);
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->answered || r->body_over) return MHD_YES;
        if (sdxl_srv_now() - r->t0 > s->o.lim.body_timeout_s) {
            /* a trickled body (slow-loris): libmicrohttpd cannot answer before the upload ends, so the
             * connection is closed; the access log records it as 408 */
            r->status = 408;
            return MHD_NO;
        }
        if (r->body.n + n > s->o.lim.max_body) {
            /* chunked bodies have no Content-Length: stop buffering, answer 413 once read */
            sdxl_sb_free(&r->body);
            srv_header(r, "Connection", "close");
            srv_error(r, 413, "body_too_large", "body", "the request body exceeds %zu bytes", s->o.lim.max_body);
            r->body_over = 1;
            return MHD_YES;
        }
        sdxl_sb_put(&r->body, upload, n);
        if (r->body.oom) return MHD_NO;
        return MHD_YES;
    }
    if (r->answered) return MHD_YES;
    if (r->body_over) return queue(r);
    if (r->state == SRV_READY) {
        r->state = SRV_IDLE;
        async_remove(s, r);
        if (r->shutdown) {
            srv_header(r, "Retry-After", "5");
            srv_error(r, 503, "shutting_down", NULL, "the server is shutting down");
        } else {
            r->on_resume(r);
        }
        return queue(r);
    }
    if (r->state == SRV_SUSPENDED) return MHD_YES;
    dispatch(s, r);
    if (r->state == SRV_SUSPENDED || r->state == SRV_READY) return MHD_YES;
    return queue(r);
}

static void access_log(sdxl_serve *s, srv_req *r, enum MHD_RequestTerminationCode toe) {
    if (!s->o.access_log) return;
    char ip[64];
    client_ip(r, ip, sizeof ip);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"ts\":\"%s\",\"rid\":\"%s\",\"ip\":\"%s\",\"method\":", ts, r->rid, ip);
    sdxl_sb_json(&b, r->method);
    sdxl_sb_str(&b, ",\"path\":");
    sdxl_sb_json(&b, r->url ? r->url : "");
    sdxl_sb_str(&b, ",\"route\":");
    sdxl_sb_json(&b, r->route ? r->route->pattern : "");
    sdxl_sb_printf(&b, ",\"status\":%d,\"bytes\":%zu,\"ms\":%.1f", r->answered || r->status == 408 ? r->status : 0, r->bytes,
                   (sdxl_srv_now() - r->t0) * 1e3);
    if (r->job[0]) {
        sdxl_sb_str(&b, ",\"job\":");
        sdxl_sb_json(&b, r->job);
    }
    static const char *const why[] = {"ok", "error", "timeout", "shutdown", "read_error", "client_abort"};
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && (unsigned)toe < 6)
        sdxl_sb_printf(&b, ",\"end\":\"%s\"", why[toe]);
    sdxl_sb_str(&b, "}\n");
    if (!b.oom) {
        pthread_mutex_lock(&s->mu);
        fwrite(b.p, 1, b.n, stderr);
        pthread_mutex_unlock(&s->mu);
    }
    sdxl_sb_free(&b);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    sdxl_serve *s = cls;
    srv_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    async_remove(s, r);
    if (r->on_done) r->on_done(r);
    access_log(s, r, toe);
    sdxl_json_free(r->json);
    sdxl_sb_free(&r->body);
    sdxl_sb_free(&r->out);
    sdxl_sb_free(&r->sse);
    pthread_mutex_destroy(&r->mu);
    free(r->url);
    free(r);
}

/* ---- start / stop ---- */

static int parse_listen(const char *spec, struct sockaddr_storage *ss, int *loopback, sdxl_err *e) {
    memset(ss, 0, sizeof *ss);
    char host[128];
    const char *colon;
    if (spec[0] == '[') {
        const char *rb = strchr(spec, ']');
        if (!rb || rb[1] != ':') return sdxl_seterr(e, SDXL_ERR_ARG, "--listen: expected [IPV6]:PORT, got '%s'", spec);
        size_t hl = (size_t)(rb - spec - 1);
        if (hl >= sizeof host) return sdxl_seterr(e, SDXL_ERR_ARG, "--listen: address too long");
        memcpy(host, spec + 1, hl);
        host[hl] = 0;
        colon = rb + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon) return sdxl_seterr(e, SDXL_ERR_ARG, "--listen: expected ADDR:PORT, got '%s'", spec);
        size_t hl = (size_t)(colon - spec);
        if (hl >= sizeof host) return sdxl_seterr(e, SDXL_ERR_ARG, "--listen: address too long");
        memcpy(host, spec, hl);
        host[hl] = 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return sdxl_seterr(e, SDXL_ERR_ARG, "--listen: bad port in '%s'", spec);
    if (!host[0]) strcpy(host, "0.0.0.0");
    if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
    } else {
        return sdxl_seterr(e, SDXL_ERR_ARG, "--listen: '%s' is not a numeric IPv4/IPv6 address", host);
    }
    return SDXL_OK;
}

static int check_opts(const sdxl_serve_opts *o, struct sockaddr_storage *ss, sdxl_err *e) {
    int loopback = 0;
    int st = parse_listen(o->listen ? o->listen : "127.0.0.1:7860", ss, &loopback, e);
    if (!st && !loopback && !o->api_key && !o->api_auth && !o->insecure)
        st = sdxl_seterr(e, SDXL_ERR_ARG,
                         "--listen %s is not a loopback address: set --api-key (or --api-auth), or pass --insecure",
                         o->listen);
    if (!st && o->api_key && !o->api_key[0]) st = sdxl_seterr(e, SDXL_ERR_ARG, "--api-key: empty key");
    if (!st && o->api_auth && !strchr(o->api_auth, ':'))
        st = sdxl_seterr(e, SDXL_ERR_ARG, "--api-auth: expected user:password[,user2:password2]");
    return st;
}

int sdxl_serve_opts_check(const sdxl_serve_opts *o, sdxl_err *e) {
    struct sockaddr_storage ss;
    return check_opts(o, &ss, e);
}

int sdxl_serve_start(const sdxl_serve_opts *o, struct sdxl_engine *eng, const struct sdxl_engine_config *ecfg,
                     sdxl_serve **out, sdxl_err *e) {
    *out = NULL;
    struct sockaddr_storage ss;
    int st = check_opts(o, &ss, e);
    sdxl_serve *s = st ? NULL : calloc(1, sizeof *s);
    if (!s) {
        sdxl_engine_free(eng);
        return st ? st : sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    }
    s->o = *o;
    s->eng = eng;
    s->ecfg = ecfg;
    s->clip_stop = 1;
    pthread_rwlock_init(&s->eng_lock, NULL);
    if (srv_hub_new(eng, &s->hub)) {
        sdxl_serve_free(s);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "cannot subscribe to the engine's events");
    }
    s->started = (double)time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->a1111_mu, NULL);
    pthread_cond_init(&s->ka_cond, NULL);
    s->api_key = o->api_key ? strdup(o->api_key) : NULL;
    s->api_auth = o->api_auth ? strdup(o->api_auth) : NULL;
    s->listen_copy = strdup(o->listen ? o->listen : "127.0.0.1:7860");
    if (o->redis_url && (st = srv_fleet_new(s, o->redis_url, o->fleet_prefix, &s->fleet, e)) != SDXL_OK) {
        sdxl_serve_free(s);
        return st;
    }
    s->o.listen = s->listen_copy;
    int threads = o->threads > 0 ? o->threads : sdxl_cpu_count();
    if (threads < 2) threads = 2;
    if (threads > 16) threads = 16;
    s->o.threads = threads;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    int per_ip = o->lim.max_per_ip > 0 ? o->lim.max_per_ip : o->lim.max_connections;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_access, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)o->lim.idle_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)o->lim.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)per_ip,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)128 << 10, MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, s, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_END);
    if (!s->d) {
        int err = errno;
        sdxl_serve_free(s);
        return sdxl_seterr(e, SDXL_ERR_IO, "cannot listen on %s: %s", o->listen ? o->listen : "127.0.0.1:7860",
                           err ? strerror(err) : "libmicrohttpd refused the options");
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : 0;
    s->ka_started = pthread_create(&s->ka_thread, NULL, keepalive_main, s) == 0;
    *out = s;
    return SDXL_OK;
}

int sdxl_serve_port(const sdxl_serve *s) { return s->port; }

void sdxl_serve_quiesce(sdxl_serve *s) {
    if (atomic_exchange(&s->stopping, 1)) return;
    if (s->d) {
        MHD_socket fd = MHD_quiesce_daemon(s->d);
        if (fd != MHD_INVALID_SOCKET) close(fd);
    }
}

void sdxl_serve_free(sdxl_serve *s) {
    if (!s) return;
    sdxl_serve_quiesce(s);
    if (s->ka_started) {
        pthread_mutex_lock(&s->mu);
        s->ka_stop = 1;
        pthread_cond_signal(&s->ka_cond);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->ka_thread, NULL);
    }
    /* the running job finishes while streams and waiting A1111 calls still receive its events */
    pthread_rwlock_wrlock(&s->eng_lock);
    sdxl_engine *eng = s->eng;
    s->eng = NULL;
    pthread_rwlock_unlock(&s->eng_lock);
    sdxl_engine_free(eng);
    if (s->d) {
        /* wake every waiting request and stream; wait (bounded) for them to be answered */
        for (int tries = 0; tries < 300; tries++) {
            pthread_mutex_lock(&s->mu);
            int n = s->n_async;
            for (srv_req *r = s->async_head; r; r = r->next) {
                pthread_mutex_lock(&r->mu);
                r->shutdown = 1;
                if (r->streaming) r->sse_end = 1;
                if (r->state == SRV_SUSPENDED) {
                    r->state = r->streaming ? SRV_IDLE : SRV_READY;
                    MHD_resume_connection(r->conn);
                }
                pthread_mutex_unlock(&r->mu);
            }
            pthread_mutex_unlock(&s->mu);
            if (!n) break;
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        MHD_stop_daemon(s->d);
    }
    pthread_cond_destroy(&s->ka_cond);
    srv_fleet_free(s->fleet);
    srv_hub_free(s->hub, NULL);
    pthread_rwlock_destroy(&s->eng_lock);
    free(s->api_key);
    free(s->api_auth);
    free(s->listen_copy);
    pthread_mutex_destroy(&s->a1111_mu);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
