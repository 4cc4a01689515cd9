/* Fleet front end: /v1 over the Redis job queue, and the progress relay; see fleet.h.
 *
 * The relay keeps one PSUBSCRIBE P:progress:* connection and forwards the events of the jobs it
 * tracks (submitted here, or watched here) into the hub. Pub/sub forgets what it sent while a
 * subscriber was away, so after every (re)subscription and once a second it reads the state of
 * every tracked job: a finish missed during a Redis restart is still delivered, from the record. */
#include "serve/fleet.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fleet/queue.h"
#include "fleet/redis.h"
#include "serve/hub.h"
#include "service/engine.h"
#include "service/request.h"

#define POOL 4            /* handler connections */
#define RECONCILE_MS 1000 /* tracked jobs' states are re-read this often */
#define PING_MS 3000      /* the subscription is pinged this often ... */
#define DEAD_MS 10000     /* ... and given up (reconnected) after this long without a byte */

typedef struct track {
    char id[40];
    struct track *next;
} track;

struct srv_fleet {
    sdxl_serve *s;
    sdxl_redis_url url;
    char prefix[64];
    char stream[128];
    char out_root[1024];
    long max_queue;
    /* handler connections: each used by one thread at a time */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    sdxl_redis pool[POOL];
    int busy[POOL];
    /* jobs whose events go into the hub */
    pthread_mutex_t mu;
    track *tracked;
    /* relay */
    pthread_t th;
    int started;
    atomic_int stop;
};

static sdxl_redis *conn_get(srv_fleet *f) {
    pthread_mutex_lock(&f->pool_mu);
    for (;;) {
        for (int i = 0; i < POOL; i++)
            if (!f->busy[i]) {
                f->busy[i] = 1;
                pthread_mutex_unlock(&f->pool_mu);
                return &f->pool[i];
            }
        pthread_cond_wait(&f->pool_cv, &f->pool_mu);
    }
}

static void conn_put(srv_fleet *f, sdxl_redis *c) {
    pthread_mutex_lock(&f->pool_mu);
    f->busy[c - f->pool] = 0;
    pthread_cond_signal(&f->pool_cv);
    pthread_mutex_unlock(&f->pool_mu);
}

/* 1 when id was added, 0 when it was tracked already, -1 out of memory. */
static int track_add(srv_fleet *f, const char *id) {
    pthread_mutex_lock(&f->mu);
    for (track *t = f->tracked; t; t = t->next)
        if (!strcmp(t->id, id)) {
            pthread_mutex_unlock(&f->mu);
            return 0;
        }
    track *t = calloc(1, sizeof *t);
    if (t) {
        snprintf(t->id, sizeof t->id, "%s", id);
        t->next = f->tracked;
        f->tracked = t;
    }
    pthread_mutex_unlock(&f->mu);
    return t ? 1 : -1;
}

/* 1 when id was tracked (and now is not): the caller delivers its final event, once. */
static int track_remove(srv_fleet *f, const char *id) {
    pthread_mutex_lock(&f->mu);
    int found = 0;
    for (track **pt = &f->tracked; *pt; pt = &(*pt)->next)
        if (!strcmp((*pt)->id, id)) {
            track *t = *pt;
            *pt = t->next;
            free(t);
            found = 1;
            break;
        }
    pthread_mutex_unlock(&f->mu);
    return found;
}

static int tracked(srv_fleet *f, const char *id) {
    pthread_mutex_lock(&f->mu);
    int found = 0;
    for (track *t = f->tracked; t && !found; t = t->next) found = !strcmp(t->id, id);
    pthread_mutex_unlock(&f->mu);
    return found;
}

/* ---- job records ---------------------------------------------------------------------------- */

static const redisReply *field(const redisReply *h, const char *name) {
    if (!h || h->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && !strcmp(h->element[i]->str, name) &&
            h->element[i + 1]->type == REDIS_REPLY_STRING)
            return h->element[i + 1];
    return NULL;
}

static const char *fstr(const redisReply *h, const char *name) {
    const redisReply *v = field(h, name);
    return v ? v->str : "";
}

static sdxl_json *parse_text(const char *s) {
    if (!s || !*s) return NULL;
    sdxl_json_opts jo;
    sdxl_json_opts_init(&jo);
    sdxl_json *v = NULL;
    sdxl_err e;
    if (sdxl_json_parse(s, strlen(s), &jo, "job record", &v, &e)) return NULL;
    return v;
}

/* A job snapshot, as the engine would give it, from the fields of a P:job:<id> hash (HGETALL).
 * Image paths are the outputs under the shared output root. -1 on allocation failure. */
static int record_info(const srv_fleet *f, const char *id, const redisReply *h, sdxl_job_info *j) {
    memset(j, 0, sizeof *j);
    snprintf(j->id, sizeof j->id, "%s", id);
    const char *st = fstr(h, "state");
    snprintf(j->error_code, sizeof j->error_code, "%s", fstr(h, "error_code"));
    snprintf(j->error, sizeof j->error, "%s", fstr(h, "error"));
    j->state = !strcmp(st, "running")  ? SDXL_JOB_RUNNING
               : !strcmp(st, "done")   ? SDXL_JOB_DONE
               : !strcmp(st, "failed") ? (!strcmp(j->error_code, "cancelled") ? SDXL_JOB_CANCELLED : SDXL_JOB_FAILED)
                                       : SDXL_JOB_QUEUED;
    double submitted = (double)strtoll(fstr(h, "submitted_ms"), NULL, 10) / 1000;
    double started = (double)strtoll(fstr(h, "started_ms"), NULL, 10) / 1000;
    j->created = submitted;
    if (started > 0 && submitted > 0) j->m.queue_s = started - submitted;
    /* size, images, priority and client id are the request's */
    sdxl_json *req = parse_text(fstr(h, "request"));
    if (req) {
        sdxl_svc_request q;
        sdxl_svc_issues is;
        memset(&is, 0, sizeof is);
        sdxl_svc_request_parse(req, SDXL_DIALECT_AUTO, &q, &is);
        j->width = q.g.width;
        j->height = q.g.height;
        j->n_images = (q.g.batch_count > 0 ? q.g.batch_count : 1) * (q.g.batch_size > 1 ? q.g.batch_size : 1);
        j->priority = q.priority;
        if (q.client_id) snprintf(j->client_id, sizeof j->client_id, "%s", q.client_id);
        sdxl_svc_request_free(&q);
        sdxl_json_free(req);
    }
    sdxl_json *outs = parse_text(fstr(h, "outputs"));
    sdxl_json *seeds = parse_text(fstr(h, "seeds"));
    sdxl_json *stats = parse_text(fstr(h, "stats"));
    int rc = 0;
    if (outs && outs->type == SDXL_JSON_ARRAY && outs->len > 0) {
        j->paths = calloc(outs->len, sizeof *j->paths);
        if (!j->paths) rc = -1;
        for (size_t i = 0; !rc && i < outs->len; i++) {
            const sdxl_json *o = sdxl_json_at(outs, i);
            if (!o || o->type != SDXL_JSON_STRING) continue;
            size_t n = strlen(f->out_root) + o->len + 2;
            char *p = malloc(n);
            if (!p) {
                rc = -1;
                break;
            }
            snprintf(p, n, "%s/%s", f->out_root, o->str);
            j->paths[j->n_done++] = p;
        }
    }
    if (!rc && seeds && seeds->type == SDXL_JSON_ARRAY && seeds->len > 0) {
        if ((int)seeds->len > j->n_images) j->n_images = (int)seeds->len;
        j->seeds = calloc((size_t)j->n_images, sizeof *j->seeds);
        if (!j->seeds) rc = -1;
        for (size_t i = 0; !rc && i < seeds->len; i++) {
            const sdxl_json *s = sdxl_json_at(seeds, i);
            j->seeds[i] = s && s->type == SDXL_JSON_NUMBER ? (int64_t)s->number : 0;
        }
    }
    if (stats && stats->type == SDXL_JSON_OBJECT) {
        sdxl_job_metrics *m = &j->m;
        m->load_s = sdxl_json_num(stats, "load_s", 0);
        m->text_s = sdxl_json_num(stats, "text_s", 0);
        m->encode_s = sdxl_json_num(stats, "encode_s", 0);
        m->base_s = sdxl_json_num(stats, "base_s", 0);
        m->refiner_s = sdxl_json_num(stats, "refiner_s", 0);
        m->decode_s = sdxl_json_num(stats, "decode_s", 0);
        m->write_s = sdxl_json_num(stats, "write_s", 0);
        m->total_s = sdxl_json_num(stats, "total_s", 0);
        m->peak_rss = (uint64_t)sdxl_json_i64(stats, "peak_rss", 0);
        m->unet_calls = (int)sdxl_json_i64(stats, "unet_calls", 0);
        m->rung = (int)sdxl_json_i64(stats, "rung", 0);
        m->model_cache_hit = (int)sdxl_json_i64(stats, "model_cache_hit", 0);
        m->attempts = (int)strtol(fstr(h, "deliveries"), NULL, 10);
        if (m->total_s > 0) m->images_per_s = j->n_done / m->total_s;
        m->merged_jobs = 1;
    }
    sdxl_json_free(outs);
    sdxl_json_free(seeds);
    sdxl_json_free(stats);
    if (rc) {
        sdxl_job_info_free(j);
        memset(j, 0, sizeof *j);
    }
    return rc;
}

/* HGETALL of job id on c. 1 found (*h set), 0 no record, -1 Redis failure (e says why). */
static int record_get(srv_fleet *f, sdxl_redis *c, const char *id, redisReply **h, sdxl_err *e) {
    char key[256];
    snprintf(key, sizeof key, "%s:job:%s", f->prefix, id);
    const char *argv[] = {"HGETALL", key};
    redisReply *rep = sdxl_redis_cmd(c, 2, argv, NULL, e);
    *h = NULL;
    if (!rep) return -1;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0 || !field(rep, "state")) {
        int err = rep->type == REDIS_REPLY_ERROR;
        if (err) sdxl_seterr(e, SDXL_ERR_IO, "redis: %s", rep->str);
        freeReplyObject(rep);
        return err ? -1 : 0;
    }
    *h = rep;
    return 1;
}

/* ---- events into the hub ---------------------------------------------------------------------- */

static void inject_final(srv_fleet *f, const sdxl_job_info *j) {
    sdxl_event ev;
    memset(&ev, 0, sizeof ev);
    ev.job_id = j->id;
    ev.client_id = j->client_id;
    ev.info = j;
    if (j->state == SDXL_JOB_DONE) {
        ev.kind = SDXL_EVENT_RESULT;
    } else {
        ev.kind = SDXL_EVENT_ERROR;
        ev.code = j->error_code[0] ? j->error_code : "runtime";
        ev.field = j->error_field;
        ev.message = j->error;
    }
    srv_hub_inject(f->s->hub, &ev);
}

/* Delivers job id's final event from its record once it has finished (and stops tracking it). */
static void finish_from_record(srv_fleet *f, sdxl_redis *c, const char *id) {
    redisReply *h = NULL;
    sdxl_err e;
    int got = record_get(f, c, id, &h, &e);
    if (got < 0) return; /* the next reconciliation tries again */
    if (got == 0) {
        if (!track_remove(f, id)) return;
        sdxl_event ev = {.kind = SDXL_EVENT_ERROR, .job_id = id, .client_id = "", .code = "unknown_job",
                         .field = "", .message = "the job's record is gone (expired or deleted)"};
        srv_hub_inject(f->s->hub, &ev);
        return;
    }
    const char *st = fstr(h, "state");
    if (strcmp(st, "done") && strcmp(st, "failed")) {
        freeReplyObject(h);
        return;
    }
    sdxl_job_info j;
    if (record_info(f, id, h, &j) == 0 && track_remove(f, id)) inject_final(f, &j);
    sdxl_job_info_free(&j);
    freeReplyObject(h);
}

/* One published event: {"job","event":"progress",...} or {"event":"done"|"failed",...}. */
static void on_message(srv_fleet *f, sdxl_redis *c, const char *channel, const char *payload, size_t len) {
    size_t pl = strlen(f->prefix);
    if (strncmp(channel, f->prefix, pl) || strncmp(channel + pl, ":progress:", 10)) return;
    const char *id = channel + pl + 10;
    if (strlen(id) >= 40 || !tracked(f, id)) return;
    sdxl_json_opts jo;
    sdxl_json_opts_init(&jo);
    sdxl_json *v = NULL;
    sdxl_err e;
    if (sdxl_json_parse(payload, len, &jo, "progress event", &v, &e)) return;
    const char *kind = sdxl_json_str(v, "event", "");
    if (!strcmp(kind, "progress")) {
        sdxl_event ev;
        memset(&ev, 0, sizeof ev);
        ev.kind = SDXL_EVENT_PROGRESS;
        ev.job_id = id;
        ev.client_id = "";
        ev.phase = sdxl_json_str(v, "phase", "");
        ev.step = (int)sdxl_json_i64(v, "step", 0);
        ev.steps = (int)sdxl_json_i64(v, "steps", 0);
        ev.image = (int)sdxl_json_i64(v, "image", 0);
        ev.n_images = (int)sdxl_json_i64(v, "images", 0);
        ev.eta_s = sdxl_json_num(v, "eta_s", -1);
        srv_hub_inject(f->s->hub, &ev);
    } else if (!strcmp(kind, "done") || !strcmp(kind, "failed")) {
        finish_from_record(f, c, id);
    }
    sdxl_json_free(v);
}

/* Re-reads the state of every tracked job; delivers the finishes pub/sub did not. */
static void reconcile(srv_fleet *f, sdxl_redis *c) {
    char (*ids)[40] = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&f->mu);
    for (track *t = f->tracked; t; t = t->next) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            char (*ni)[40] = realloc(ids, nc * sizeof *ids);
            if (!ni) break;
            ids = ni;
            cap = nc;
        }
        memcpy(ids[n++], t->id, 40);
    }
    pthread_mutex_unlock(&f->mu);
    for (size_t i = 0; i < n && !atomic_load(&f->stop); i++) {
        char key[256];
        snprintf(key, sizeof key, "%s:job:%s", f->prefix, ids[i]);
        const char *argv[] = {"HGET", key, "state"};
        sdxl_err e;
        redisReply *rep = sdxl_redis_cmd(c, 3, argv, NULL, &e);
        if (!rep) break;
        int fin = rep->type == REDIS_REPLY_NIL ||
                  (rep->type == REDIS_REPLY_STRING && (!strcmp(rep->str, "done") || !strcmp(rep->str, "failed")));
        freeReplyObject(rep);
        if (fin) finish_from_record(f, c, ids[i]);
    }
    free(ids);
}

static int flush_out(redisContext *ctx) {
    int done = 0;
    while (!done)
        if (redisBufferWrite(ctx, &done) != REDIS_OK) return -1;
    return 0;
}

static void *relay_main(void *arg) {
    srv_fleet *f = arg;
    sdxl_redis cmd, ps;
    sdxl_redis_init(&cmd, &f->url);
    sdxl_redis_init(&ps, &f->url);
    cmd.stop = ps.stop = &f->stop;
    char pattern[128];
    snprintf(pattern, sizeof pattern, "%s:progress:*", f->prefix);
    while (!atomic_load(&f->stop)) {
        sdxl_err e;
        if (sdxl_redis_connect(&ps, &e)) break; /* only when stopping */
        redisContext *ctx = ps.c;
        const char *argv[] = {"PSUBSCRIBE", pattern};
        if (redisAppendCommandArgv(ctx, 2, argv, NULL) != REDIS_OK || flush_out(ctx)) {
            sdxl_redis_close(&ps);
            continue;
        }
        int64_t last_rx = sdxl_now_ms(), last_ping = last_rx, last_reconcile = 0;
        int subscribed = 0;
        while (!atomic_load(&f->stop)) {
            void *rp = NULL;
            int bad = 0;
            while (!bad && redisGetReplyFromReader(ctx, &rp) == REDIS_OK && rp) {
                redisReply *rep = rp;
                last_rx = sdxl_now_ms();
                if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 4 && rep->element[0]->type == REDIS_REPLY_STRING &&
                    !strcmp(rep->element[0]->str, "pmessage") && rep->element[2]->type == REDIS_REPLY_STRING &&
                    rep->element[3]->type == REDIS_REPLY_STRING)
                    on_message(f, &cmd, rep->element[2]->str, rep->element[3]->str, rep->element[3]->len);
                else if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
                         rep->element[0]->type == REDIS_REPLY_STRING && !strcmp(rep->element[0]->str, "psubscribe"))
                    subscribed = 1, last_reconcile = 0; /* what happened before this is read from the records */
                else if (rep->type == REDIS_REPLY_ERROR)
                    bad = 1;
                freeReplyObject(rep);
                rp = NULL;
            }
            if (bad || ctx->err) break;
            int64_t now = sdxl_now_ms();
            if (subscribed && now - last_reconcile >= RECONCILE_MS) {
                reconcile(f, &cmd);
                last_reconcile = sdxl_now_ms();
            }
            if (now - last_ping >= PING_MS) {
                const char *pv[] = {"PING"};
                if (redisAppendCommandArgv(ctx, 1, pv, NULL) != REDIS_OK || flush_out(ctx)) break;
                last_ping = now;
            }
            if (now - last_rx >= DEAD_MS) break;
            struct pollfd pfd = {.fd = ctx->fd, .events = POLLIN};
            int pr = poll(&pfd, 1, 200);
            if (pr > 0 && redisBufferRead(ctx) != REDIS_OK) break;
        }
        sdxl_redis_close(&ps);
    }
    sdxl_redis_close(&ps);
    sdxl_redis_close(&cmd);
    return NULL;
}

/* ---- setup ------------------------------------------------------------------------------------ */

int srv_fleet_new(sdxl_serve *s, const char *url, const char *prefix, srv_fleet **out, sdxl_err *e) {
    *out = NULL;
    srv_fleet *f = calloc(1, sizeof *f);
    if (!f) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    f->s = s;
    if (sdxl_redis_url_parse(url, &f->url, e)) {
        free(f);
        return e->status;
    }
    if (!prefix) prefix = "sdxl";
    if (sdxl_fleet_check_name("--fleet-prefix", prefix, e)) {
        free(f);
        return e->status;
    }
    snprintf(f->prefix, sizeof f->prefix, "%s", prefix);
    sdxl_fleet_stream_key(f->stream, sizeof f->stream, f->prefix, NULL);
    const char *root = s->ecfg && s->ecfg->output_root ? s->ecfg->output_root : ".";
    snprintf(f->out_root, sizeof f->out_root, "%s", root);
    f->max_queue = s->ecfg ? s->ecfg->queue_limit : 0;
    pthread_mutex_init(&f->pool_mu, NULL);
    pthread_cond_init(&f->pool_cv, NULL);
    pthread_mutex_init(&f->mu, NULL);
    for (int i = 0; i < POOL; i++) {
        sdxl_redis_init(&f->pool[i], &f->url);
        /* a request never waits long for a Redis that is away: it gets 503 */
        f->pool[i].retry_for_ms = 2000;
        f->pool[i].timeout_ms = 3000;
        f->pool[i].stop = &f->stop;
    }
    /* fail at start, with the reason, when Redis is not there */
    f->pool[0].retry_for_ms = 5000;
    int st = sdxl_redis_connect(&f->pool[0], e) || sdxl_fleet_ensure_group(&f->pool[0], f->stream, e);
    f->pool[0].retry_for_ms = 2000;
    if (st) {
        srv_fleet_free(f);
        return e->status ? e->status : SDXL_ERR_IO;
    }
    f->started = pthread_create(&f->th, NULL, relay_main, f) == 0;
    if (!f->started) {
        srv_fleet_free(f);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "cannot start the progress relay thread");
    }
    *out = f;
    return SDXL_OK;
}

void srv_fleet_free(srv_fleet *f) {
    if (!f) return;
    atomic_store(&f->stop, 1);
    if (f->started) pthread_join(f->th, NULL);
    for (int i = 0; i < POOL; i++) sdxl_redis_close(&f->pool[i]);
    while (f->tracked) {
        track *t = f->tracked;
        f->tracked = t->next;
        free(t);
    }
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->pool_cv);
    pthread_mutex_destroy(&f->pool_mu);
    free(f);
}

/* ---- routes ----------------------------------------------------------------------------------- */

static void redis_down(srv_req *r, const sdxl_err *e) {
    srv_header(r, "Retry-After", "5");
    srv_error(r, 503, "redis_unavailable", NULL, "the fleet's Redis does not answer: %s", e->msg);
}

int srv_fleet_submit(srv_req *r, const sdxl_svc_request *q, char id[64]) {
    srv_fleet *f = r->srv->fleet;
    sdxl_strbuf b = {0};
    sdxl_svc_request_to_json(q, &b);
    if (b.oom) {
        sdxl_sb_free(&b);
        srv_error(r, 503, "nomem", NULL, "out of memory");
        return -1;
    }
    sdxl_fleet_new_id(id, 64);
    /* tracked and accepted before it is queued: no event of it can come first */
    if (track_add(f, id) < 0) {
        sdxl_sb_free(&b);
        srv_error(r, 503, "nomem", NULL, "out of memory");
        return -1;
    }
    sdxl_event ev = {.kind = SDXL_EVENT_ACCEPTED, .job_id = id, .client_id = q->client_id ? q->client_id : ""};
    srv_hub_inject(r->srv->hub, &ev);
    sdxl_redis *c = conn_get(f);
    long depth = 0;
    sdxl_err e;
    int st = sdxl_fleet_submit(c, f->prefix, f->stream, id, b.p, b.n, f->max_queue, &depth, &e);
    conn_put(f, c);
    sdxl_sb_free(&b);
    if (st == SDXL_FLEET_SUBMITTED) {
        snprintf(r->job, sizeof r->job, "%s", id);
        return 0;
    }
    /* not queued: its hub entry ends (nobody has seen its id) */
    track_remove(f, id);
    sdxl_event end = {.kind = SDXL_EVENT_ERROR, .job_id = id, .client_id = "", .code = "not_queued", .field = "",
                      .message = "not queued"};
    srv_hub_inject(r->srv->hub, &end);
    if (st == SDXL_FLEET_BUSY) {
        srv_header(r, "Retry-After", "10");
        srv_error(r, 429, "busy", NULL, "the fleet queue %s holds %ld jobs (limit %ld); try again later", f->stream,
                  depth, f->max_queue);
    } else if (st < 0) {
        redis_down(r, &e);
    } else {
        srv_error(r, 500, "submit_failed", NULL, "job id %s is already taken", id);
    }
    return -1;
}

void srv_fleet_ready(srv_req *r) {
    srv_fleet *f = r->srv->fleet;
    sdxl_redis *c = conn_get(f);
    sdxl_err e;
    const char *a1[] = {"XLEN", f->stream};
    const char *a2[] = {"XPENDING", f->stream, SDXL_FLEET_GROUP};
    redisReply *len = sdxl_redis_cmd(c, 2, a1, NULL, &e);
    redisReply *pend = len ? sdxl_redis_cmd(c, 3, a2, NULL, &e) : NULL;
    conn_put(f, c);
    if (!len || !pend) {
        if (len) freeReplyObject(len);
        redis_down(r, &e);
        return;
    }
    long queued = len->type == REDIS_REPLY_INTEGER ? (long)len->integer : 0;
    long running = pend->type == REDIS_REPLY_ARRAY && pend->elements > 0 && pend->element[0]->type == REDIS_REPLY_INTEGER
                       ? (long)pend->element[0]->integer
                       : 0;
    freeReplyObject(len);
    freeReplyObject(pend);
    /* XLEN counts unfinished entries, delivered ones too */
    int full = f->max_queue > 0 && queued >= f->max_queue;
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"ready\":%s,\"queued\":%ld,\"running\":%ld,\"queue_limit\":%ld,\"fleet\":",
                   full ? "false" : "true", queued - running > 0 ? queued - running : 0, running, f->max_queue);
    sdxl_sb_json(&b, f->stream);
    sdxl_sb_str(&b, "}");
    if (full) srv_header(r, "Retry-After", "5");
    srv_take_json(r, full ? 503 : 200, &b);
}

/* The job of the route's {id}: 1 with *j filled, else the response is answered. */
static int load_job(srv_req *r, sdxl_job_info *j) {
    srv_fleet *f = r->srv->fleet;
    sdxl_redis *c = conn_get(f);
    redisReply *h = NULL;
    sdxl_err e;
    int got = record_get(f, c, r->params[0], &h, &e);
    conn_put(f, c);
    if (got < 0) {
        redis_down(r, &e);
        return 0;
    }
    if (got == 0) {
        srv_error(r, 404, "unknown_job", "id", "no job '%s'", r->params[0]);
        return 0;
    }
    int rc = record_info(f, r->params[0], h, j);
    freeReplyObject(h);
    if (rc) {
        srv_error(r, 503, "nomem", NULL, "out of memory");
        return 0;
    }
    snprintf(r->job, sizeof r->job, "%s", j->id);
    return 1;
}

void srv_fleet_job_get(srv_req *r) {
    sdxl_job_info j;
    if (!load_job(r, &j)) return;
    sdxl_strbuf b = {0};
    srv_job_json(&j, &b);
    sdxl_job_info_free(&j);
    srv_take_json(r, 200, &b);
}

void srv_fleet_job_cancel(srv_req *r) {
    srv_fleet *f = r->srv->fleet;
    sdxl_redis *c = conn_get(f);
    sdxl_err e;
    int st = sdxl_fleet_cancel(c, f->prefix, r->params[0], &e);
    conn_put(f, c);
    snprintf(r->job, sizeof r->job, "%s", r->params[0]);
    if (st < 0) {
        redis_down(r, &e);
        return;
    }
    if (st == SDXL_FLEET_CANCEL_UNKNOWN) {
        srv_error(r, 404, "unknown_job", "id", "no job '%s'", r->params[0]);
        return;
    }
    sdxl_job_info j;
    if (!load_job(r, &j)) return;
    sdxl_strbuf b = {0};
    srv_job_json(&j, &b);
    sdxl_job_info_free(&j);
    srv_take_json(r, 202, &b);
}

/* The newest jobs of the fleet (from the event log), each with its record. KEYS: events.
 * ARGV: job key prefix, limit, events to scan. */
static const char LIST_LUA[] =
    "local out, seen = {}, {}\n"
    "local ev = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])\n"
    "for _, e in ipairs(ev) do\n"
    "  local f, kind, id = e[2], nil, nil\n"
    "  for i = 1, #f, 2 do\n"
    "    if f[i] == 'event' then kind = f[i + 1] elseif f[i] == 'id' then id = f[i + 1] end\n"
    "  end\n"
    "  if kind == 'submitted' and id and not seen[id] then\n"
    "    seen[id] = true\n"
    "    local h = redis.call('HGETALL', ARGV[1] .. id)\n"
    "    if #h > 0 then out[#out + 1] = {id, h} end\n"
    "    if #out >= tonumber(ARGV[2]) then break end\n"
    "  end\n"
    "end\n"
    "return out\n";

void srv_fleet_jobs_list(srv_req *r) {
    srv_fleet *f = r->srv->fleet;
    const char *state = srv_query(r, "state");
    const char *lim = srv_query(r, "limit");
    int limit = lim ? atoi(lim) : 100;
    if (limit <= 0 || limit > 10000) limit = 100;
    char events[128], jp[128], nl[16], scan[16];
    snprintf(events, sizeof events, "%s:events", f->prefix);
    snprintf(jp, sizeof jp, "%s:job:", f->prefix);
    snprintf(nl, sizeof nl, "%d", state ? 10000 : limit);
    snprintf(scan, sizeof scan, "%d", 20000);
    const char *argv[] = {"EVAL", LIST_LUA, "1", events, jp, nl, scan};
    sdxl_redis *c = conn_get(f);
    sdxl_err e;
    redisReply *rep = sdxl_redis_cmd(c, 7, argv, NULL, &e);
    conn_put(f, c);
    if (!rep || rep->type != REDIS_REPLY_ARRAY) {
        if (rep && rep->type == REDIS_REPLY_ERROR) sdxl_seterr(&e, SDXL_ERR_IO, "redis: %s", rep->str);
        if (rep) freeReplyObject(rep);
        redis_down(r, &e);
        return;
    }
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"jobs\":[");
    int shown = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *x = rep->element[i];
        if (x->type != REDIS_REPLY_ARRAY || x->elements != 2 || x->element[0]->type != REDIS_REPLY_STRING) continue;
        sdxl_job_info j;
        if (record_info(f, x->element[0]->str, x->element[1], &j)) continue;
        if ((!state || !strcmp(state, sdxl_job_state_name(j.state))) && shown < limit) {
            if (shown++) sdxl_sb_str(&b, ",");
            sdxl_job_info_json(&j, &b);
        }
        sdxl_job_info_free(&j);
    }
    sdxl_sb_printf(&b, "],\"total\":%zu}", rep->elements);
    freeReplyObject(rep);
    srv_take_json(r, 200, &b);
}

static void events_done(srv_req *r) { srv_hub_forget(r->srv->hub, r); }

void srv_fleet_job_events(srv_req *r, unsigned long long after) {
    srv_fleet *f = r->srv->fleet;
    const char *id = r->params[0];
    if (strlen(id) >= 40) {
        srv_error(r, 404, "unknown_job", "id", "no job '%s'", id);
        return;
    }
    /* tracked before the record is read: a finish after the read still reaches the hub */
    int added = track_add(f, id);
    if (added < 0) {
        srv_error(r, 503, "nomem", NULL, "out of memory");
        return;
    }
    sdxl_job_info j;
    if (!load_job(r, &j)) {
        if (added) track_remove(f, id);
        return;
    }
    if (j.state >= SDXL_JOB_DONE) track_remove(f, id);
    srv_stream(r, events_done, NULL);
    srv_hub_stream(r->srv->hub, id, after, &j, r);
    sdxl_job_info_free(&j);
}

void srv_fleet_job_image(srv_req *r, int k) {
    sdxl_job_info j;
    if (!load_job(r, &j)) return;
    srv_job_image_reply(r, &j, k);
    sdxl_job_info_free(&j);
}
