#include "fleet/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/mem.h"
#include "io/json.h"

#define MAX_STREAMS 12
#define MAX_HELD MAX_STREAMS
#define MAX_WAITING 4 /* claimed entries a busy worker holds for after its current job */

#define SINK_RING 128 /* progress events waiting for the side thread; one per step, in order */
#define SINK_EVENT 512

struct sdxl_fleet_sink {
    pthread_mutex_t mu;
    char job[SDXL_FLEET_NAME_MAX];
    char ring[SINK_RING][SINK_EVENT]; /* progress events of job not yet published */
    unsigned head, tail;              /* ring[tail % SINK_RING] is the oldest; full: the newest replaces the last */
};

void sdxl_fleet_report(sdxl_fleet_sink *s, const sdxl_fleet_progress *p) {
    if (!s || !p) return;
    pthread_mutex_lock(&s->mu);
    if (s->job[0]) {
        if (s->head - s->tail == SINK_RING) s->head--;
        char *b = s->ring[s->head % SINK_RING];
        char job[2 * SDXL_FLEET_NAME_MAX], phase[64];
        sdxl_json_escape(job, sizeof job, s->job, strlen(s->job));
        sdxl_json_escape(phase, sizeof phase, p->phase ? p->phase : "", p->phase ? strlen(p->phase) : 0);
        int n = snprintf(b, SINK_EVENT,
                         "{\"job\":%s,\"event\":\"progress\",\"phase\":%s,\"step\":%d,\"steps\":%d,\"image\":%d,"
                         "\"images\":%d",
                         job, phase, p->step, p->total, p->image, p->n_images);
        if (n > 0 && n < SINK_EVENT && p->eta_s >= 0) n += snprintf(b + n, SINK_EVENT - (size_t)n, ",\"eta_s\":%.2f", p->eta_s);
        if (n > 0 && n + 2 < SINK_EVENT) {
            b[n] = '}', b[n + 1] = 0;
            s->head++;
        }
    }
    pthread_mutex_unlock(&s->mu);
}

typedef struct worker {
    const sdxl_fleet_worker_params *p;
    const sdxl_fleet_runner *rn;
    char id[SDXL_FLEET_NAME_MAX + 64];
    char prefix[64];
    char streams[MAX_STREAMS][SDXL_FLEET_NAME_MAX + 64];
    const char *stream_ptrs[MAX_STREAMS];
    int n_streams;
    int64_t started_ms;
    sdxl_fleet_sink sink;

    /* shared with the side thread, under mu */
    pthread_mutex_t mu;
    sdxl_fleet_entry held[MAX_HELD]; /* entries read or claimed and not yet finished */
    int n_held;
    char current[SDXL_FLEET_NAME_MAX]; /* job running now, "" when idle */
    long jobs_done, jobs_failed, claims;
    atomic_int side_stop;
} worker;

static void held_remove(worker *w, const sdxl_fleet_entry *en) {
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < w->n_held; i++)
        if (!strcmp(w->held[i].entry, en->entry) && !strcmp(w->held[i].stream, en->stream)) {
            memmove(&w->held[i], &w->held[i + 1], (size_t)(w->n_held - i - 1) * sizeof w->held[0]);
            w->n_held--;
            break;
        }
    pthread_mutex_unlock(&w->mu);
}

static void heartbeat(worker *w, sdxl_redis *r, int ttl_s) {
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    char host[128] = "";
    gethostname(host, sizeof host - 1);
    sdxl_strbuf b = {0};
    pthread_mutex_lock(&w->mu);
    sdxl_sb_str(&b, "{\"id\":");
    sdxl_sb_json(&b, w->id);
    sdxl_sb_str(&b, ",\"host\":");
    sdxl_sb_json(&b, host);
    sdxl_sb_printf(&b, ",\"pid\":%ld,\"model\":", (long)getpid());
    sdxl_sb_json(&b, w->rn->model ? w->rn->model : "");
    sdxl_sb_str(&b, ",\"streams\":[");
    for (int i = 0; i < w->n_streams; i++) {
        if (i) sdxl_sb_str(&b, ",");
        sdxl_sb_json(&b, w->streams[i]);
    }
    sdxl_sb_printf(&b, "],\"state\":\"%s\",\"job\":", w->current[0] ? "running" : "idle");
    sdxl_sb_json(&b, w->current);
    sdxl_sb_printf(&b,
                   ",\"jobs_done\":%ld,\"jobs_failed\":%ld,\"claims\":%ld,\"rss\":%llu,\"peak_rss\":%llu,"
                   "\"mem_available\":%llu,\"started_ms\":%lld,\"at_ms\":%lld}",
                   w->jobs_done, w->jobs_failed, w->claims, (unsigned long long)ms.rss,
                   (unsigned long long)ms.peak_rss, (unsigned long long)ms.available, (long long)w->started_ms,
                   (long long)sdxl_now_ms());
    pthread_mutex_unlock(&w->mu);
    if (!b.oom) {
        char key[256], ttl[16];
        snprintf(key, sizeof key, "%s:worker:%s", w->prefix, w->id);
        snprintf(ttl, sizeof ttl, "%d", ttl_s);
        const char *argv[] = {"SET", key, b.p, "EX", ttl};
        sdxl_err e;
        redisReply *rep = sdxl_redis_cmd(r, 5, argv, NULL, &e);
        if (rep) freeReplyObject(rep);
    }
    sdxl_sb_free(&b);
}

/* The side thread: renews holds, publishes progress, beats the heartbeat. Never touches the
 * runner, so a slow network cannot stall the compute. */
static void *side_main(void *arg) {
    worker *w = arg;
    const sdxl_fleet_worker_params *p = w->p;
    sdxl_redis_url url;
    sdxl_err e;
    if (sdxl_redis_url_parse(p->url, &url, &e)) return NULL;
    sdxl_redis r;
    sdxl_redis_init(&r, &url);
    r.stop = &w->side_stop;
    int64_t renew_every = p->visibility_ms / 4 > 0 ? p->visibility_ms / 4 : 1;
    int64_t scan_every = p->visibility_ms / 8 > 0 ? p->visibility_ms / 8 : 1;
    /* idle workers get the first chance (their threshold is V/2) */
    int64_t busy_idle = p->visibility_ms / 2 + scan_every;
    int ttl_s = (5 * p->heartbeat_ms + 999) / 1000;
    int64_t last_renew = 0, last_hb = 0, last_claim = sdxl_now_ms();
    int64_t last_cancel_check = 0;
    char cancelled[SDXL_FLEET_NAME_MAX] = "";
    while (!atomic_load(&w->side_stop)) {
        int64_t now = sdxl_now_ms();
        /* every progress event in order: one per step reaches the subscribers */
        for (int k = 0; k < SINK_RING; k++) {
            char job[SDXL_FLEET_NAME_MAX], ev[SINK_EVENT];
            pthread_mutex_lock(&w->sink.mu);
            int have = w->sink.tail != w->sink.head;
            if (have) {
                memcpy(ev, w->sink.ring[w->sink.tail % SINK_RING], SINK_EVENT);
                snprintf(job, sizeof job, "%s", w->sink.job);
                w->sink.tail++;
            }
            pthread_mutex_unlock(&w->sink.mu);
            if (!have) break;
            sdxl_fleet_publish_progress(&r, w->prefix, job, ev, &e);
        }
        /* a cancel asked through the job's record (DELETE on `sdxl serve --redis`) */
        pthread_mutex_lock(&w->mu);
        char cur[SDXL_FLEET_NAME_MAX];
        snprintf(cur, sizeof cur, "%s", w->current);
        pthread_mutex_unlock(&w->mu);
        if (cur[0] && now - last_cancel_check >= 200) {
            char key[256];
            snprintf(key, sizeof key, "%s:job:%s", w->prefix, cur);
            redisReply *rep = sdxl_redis_cmdf(&r, &e, "HGET %s cancel", key);
            /* asked again on every check: the runner may not have started the job the first time */
            if (rep && rep->type == REDIS_REPLY_STRING && !strcmp(rep->str, "1") && w->rn->cancel) {
                if (strcmp(cur, cancelled))
                    SDXL_INFO(p->log, "fleet worker %s: job %s cancelled through its record", w->id, cur);
                w->rn->cancel(w->rn->user);
                snprintf(cancelled, sizeof cancelled, "%s", cur);
            }
            if (rep) freeReplyObject(rep);
            last_cancel_check = now;
        }
        if (now - last_renew >= renew_every) {
            sdxl_fleet_entry held[MAX_HELD];
            pthread_mutex_lock(&w->mu);
            int n = w->n_held;
            memcpy(held, w->held, (size_t)n * sizeof held[0]);
            pthread_mutex_unlock(&w->mu);
            for (int i = 0; i < n; i++) {
                if (sdxl_fleet_renew(&r, w->id, &held[i], &e) != 0) continue;
                /* not pending for us: finished meanwhile, or claimed by another worker */
                pthread_mutex_lock(&w->mu);
                int still = 0;
                for (int k = 0; k < w->n_held; k++) still |= !strcmp(w->held[k].entry, held[i].entry);
                pthread_mutex_unlock(&w->mu);
                if (still)
                    SDXL_WARN(p->log, "fleet worker %s: job %s was claimed by another worker; finishing it anyway",
                              w->id, held[i].id);
            }
            last_renew = now;
        }
        /* a busy worker takes over one stopped worker's job, so that a claim never waits for a
         * free worker; it runs after the current job */
        if (now - last_claim >= scan_every) {
            pthread_mutex_lock(&w->mu);
            int busy = w->current[0] != 0 && w->n_held <= MAX_WAITING;
            pthread_mutex_unlock(&w->mu);
            for (int i = 0; busy && i < w->n_streams; i++) {
                sdxl_fleet_entry en;
                if (sdxl_fleet_claim(&r, w->id, w->streams[i], busy_idle, &en, &e) != 1) continue;
                sdxl_fleet_note_claim(&r, w->prefix, w->id, &en, &e);
                pthread_mutex_lock(&w->mu);
                if (w->n_held < MAX_HELD) w->held[w->n_held++] = en;
                pthread_mutex_unlock(&w->mu);
                SDXL_INFO(p->log, "fleet worker %s: claimed job %s of a stopped worker; runs after the current job",
                          w->id, en.id);
                break;
            }
            last_claim = now;
        }
        if (now - last_hb >= p->heartbeat_ms) {
            heartbeat(w, &r, ttl_s);
            last_hb = now;
        }
        sdxl_sleep_ms(50);
    }
    char key[256];
    snprintf(key, sizeof key, "%s:worker:%s", w->prefix, w->id);
    atomic_store(&w->side_stop, 0); /* one last, non-retried DEL */
    r.retry_for_ms = 0;
    redisReply *rep = sdxl_redis_cmdf(&r, &e, "DEL %s", key);
    if (rep) freeReplyObject(rep);
    sdxl_redis_close(&r);
    return NULL;
}

static int mkdir_p(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf) return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++)
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
            buf[i] = c;
        }
    return 0;
}

void sdxl_fleet_worker_params_init(sdxl_fleet_worker_params *p) {
    memset(p, 0, sizeof *p);
    p->prefix = "sdxl";
    p->visibility_ms = 30000;
    p->max_deliveries = 3;
    p->heartbeat_ms = 1000;
}

/* Runs one held entry from start to acknowledgement. -1 when Redis is gone for good. */
static int run_one(worker *w, sdxl_redis *r, const sdxl_fleet_entry *en, sdxl_err *e) {
    const sdxl_fleet_worker_params *p = w->p;
    char *request = NULL;
    int deliveries = 0;
    sdxl_err je;
    sdxl_err_clear(&je);
    int st;
    if (sdxl_fleet_check_name("job id", en->id, &je)) {
        /* not ours to run: fail it so that it leaves the stream */
        sdxl_fleet_result res = {.ok = 0, .error_code = "invalid_request", .error = je.msg};
        return sdxl_fleet_finish(r, w->prefix, w->id, en, &res, p->result_ttl_s, e) < 0 ? -1 : 0;
    }
    st = sdxl_fleet_start(r, w->prefix, w->id, en, p->max_deliveries, &request, &deliveries, e);
    if (st < 0) return -1;
    if (st == SDXL_FLEET_SKIP) return 0;
    if (st == SDXL_FLEET_DEAD) {
        SDXL_WARN(p->log, "fleet worker %s: job %s failed as worker_crashed after %d deliveries", w->id, en->id,
                  deliveries - 1);
        return 0;
    }
    pthread_mutex_lock(&w->mu);
    snprintf(w->current, sizeof w->current, "%s", en->id);
    if (en->claimed) w->claims++;
    pthread_mutex_unlock(&w->mu);
    pthread_mutex_lock(&w->sink.mu);
    snprintf(w->sink.job, sizeof w->sink.job, "%s", en->id);
    w->sink.head = w->sink.tail = 0;
    pthread_mutex_unlock(&w->sink.mu);
    SDXL_INFO(p->log, "fleet worker %s: job %s %s (delivery %d)", w->id, en->id, en->claimed ? "claimed" : "started",
              deliveries);

    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", p->output_dir, en->id);
    sdxl_fleet_job_out out;
    memset(&out, 0, sizeof out);
    int64_t t0 = sdxl_now_ms();
    int rc;
    if (mkdir_p(dir) != 0) {
        snprintf(out.error_code, sizeof out.error_code, "output");
        snprintf(out.error, sizeof out.error, "%s: cannot create: %s", dir, strerror(errno));
        rc = -1;
    } else {
        rc = w->rn->run(w->rn->user, en->id, request, dir, en->id, &w->sink, &out);
    }
    free(request);
    int oom = out.outputs.oom || out.seeds.oom || out.stats.oom;
    sdxl_fleet_result res = {
        .ok = rc == 0 && !oom,
        .outputs = out.outputs.p,
        .seeds = out.seeds.p,
        .stats = out.stats.p,
        .error_code = oom ? "runtime" : out.error_code[0] ? out.error_code : "runtime",
        .error = oom ? "out of memory" : out.error,
    };
    /* the last progress events go out before the final one (the side thread publishes every 50 ms) */
    for (int k = 0; k < 20; k++) {
        pthread_mutex_lock(&w->sink.mu);
        int left = w->sink.head != w->sink.tail;
        pthread_mutex_unlock(&w->sink.mu);
        if (!left) break;
        sdxl_sleep_ms(20);
    }
    st = sdxl_fleet_finish(r, w->prefix, w->id, en, &res, p->result_ttl_s, e);
    sdxl_sb_free(&out.outputs);
    sdxl_sb_free(&out.seeds);
    sdxl_sb_free(&out.stats);
    pthread_mutex_lock(&w->sink.mu);
    w->sink.job[0] = 0;
    w->sink.head = w->sink.tail = 0;
    pthread_mutex_unlock(&w->sink.mu);
    pthread_mutex_lock(&w->mu);
    w->current[0] = 0;
    if (st >= 0) res.ok ? w->jobs_done++ : w->jobs_failed++;
    pthread_mutex_unlock(&w->mu);
    if (st < 0) return -1;
    SDXL_INFO(p->log, "fleet worker %s: job %s %s in %.2f s%s%s", w->id, en->id, res.ok ? "done" : "failed",
              (double)(sdxl_now_ms() - t0) / 1000, res.ok ? "" : ": ", res.ok ? "" : res.error);
    if (st == SDXL_FLEET_DUPLICATE)
        SDXL_INFO(p->log, "fleet worker %s: job %s had already been finished by another worker", w->id, en->id);
    return 0;
}

int sdxl_fleet_worker_run(const sdxl_fleet_worker_params *p, const sdxl_fleet_runner *rn, sdxl_err *e) {
    if (!p || !rn || !rn->run || !p->url || !p->output_dir)
        return sdxl_seterr(e, SDXL_ERR_ARG, "fleet worker: url, output_dir and a runner are required"), -1;
    if (p->visibility_ms < 100) return sdxl_seterr(e, SDXL_ERR_ARG, "visibility timeout: must be >= 100 ms"), -1;
    if (p->max_deliveries < 1) return sdxl_seterr(e, SDXL_ERR_ARG, "max deliveries: must be >= 1"), -1;
    if (p->heartbeat_ms < 10) return sdxl_seterr(e, SDXL_ERR_ARG, "heartbeat: must be >= 10 ms"), -1;
    if (p->n_models > MAX_STREAMS - 1) return sdxl_seterr(e, SDXL_ERR_ARG, "at most %d models", MAX_STREAMS - 1), -1;
    sdxl_redis_url url;
    if (sdxl_redis_url_parse(p->url, &url, e)) return -1;
    if (mkdir_p(p->output_dir) != 0)
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot create: %s", p->output_dir, strerror(errno)), -1;

    worker *w = calloc(1, sizeof *w);
    if (!w) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory"), -1;
    w->p = p;
    w->rn = rn;
    w->started_ms = sdxl_now_ms();
    snprintf(w->prefix, sizeof w->prefix, "%s", p->prefix ? p->prefix : "sdxl");
    if (p->id) {
        if (sdxl_fleet_check_name("worker id", p->id, e)) {
            free(w);
            return -1;
        }
        snprintf(w->id, sizeof w->id, "%s", p->id);
    } else {
        char host[64] = "host", rnd[32];
        gethostname(host, sizeof host - 1);
        for (char *c = host; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-')) *c = '-';
        sdxl_fleet_new_id(rnd, sizeof rnd);
        snprintf(w->id, sizeof w->id, "%s-%ld-%.6s", host, (long)getpid(), rnd);
    }
    for (int i = 0; i < p->n_models; i++) {
        if (sdxl_fleet_check_name("model", p->models[i], e)) {
            free(w);
            return -1;
        }
        sdxl_fleet_stream_key(w->streams[w->n_streams++], sizeof w->streams[0], w->prefix, p->models[i]);
    }
    sdxl_fleet_stream_key(w->streams[w->n_streams++], sizeof w->streams[0], w->prefix, NULL);
    for (int i = 0; i < w->n_streams; i++) w->stream_ptrs[i] = w->streams[i];
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->sink.mu, NULL);

    sdxl_redis r;
    sdxl_redis_init(&r, &url);
    r.stop = p->stop;
    int rc = 0;
    if (sdxl_redis_connect(&r, e)) rc = -1;
    for (int i = 0; !rc && i < w->n_streams; i++)
        if (sdxl_fleet_ensure_group(&r, w->streams[i], e)) rc = -1;
    pthread_t side;
    int have_side = 0;
    if (!rc) have_side = pthread_create(&side, NULL, side_main, w) == 0;
    if (!rc) SDXL_INFO(p->log, "fleet worker %s: reading %s (+%d more) on %s:%d", w->id, w->streams[0],
                       w->n_streams - 1, url.host, url.port);

    int64_t eighth = p->visibility_ms / 8 > 0 ? p->visibility_ms / 8 : 1;
    int64_t last_scan = 0, last_job = sdxl_now_ms();
    long jobs = 0;
    int reconnects = 0;
    while (!rc && !(p->stop && atomic_load(p->stop))) {
        if (p->max_jobs > 0 && jobs >= p->max_jobs) break;
        if (p->idle_exit_ms > 0 && sdxl_now_ms() - last_job >= p->idle_exit_ms) break;
        if (r.reconnects != reconnects) {
            reconnects = r.reconnects;
            SDXL_INFO(p->log, "fleet worker %s: reconnected to redis (%d)", w->id, reconnects);
        }
        sdxl_fleet_entry got[MAX_STREAMS];
        int n = 0;
        /* jobs of stopped workers first: they are the oldest */
        if (sdxl_now_ms() - last_scan >= eighth) {
            for (int i = 0; i < w->n_streams && !n; i++) {
                int c = sdxl_fleet_claim(&r, w->id, w->streams[i], p->visibility_ms / 2, &got[0], e);
                if (c < 0 || (c == 1 && sdxl_fleet_note_claim(&r, w->prefix, w->id, &got[0], e))) {
                    rc = -1;
                    break;
                }
                n = c;
            }
            last_scan = sdxl_now_ms();
        }
        if (rc) break;
        if (!n) {
            int block = (int)(eighth < 2000 ? eighth : 2000);
            n = sdxl_fleet_read(&r, w->id, w->stream_ptrs, w->n_streams, block, got, e);
            if (n < 0) {
                rc = -1;
                break;
            }
        }
        /* the model's own streams first; entries the side thread claimed are already held */
        pthread_mutex_lock(&w->mu);
        for (int s = 0; s < w->n_streams; s++)
            for (int i = 0; i < n; i++)
                if (!strcmp(got[i].stream, w->streams[s]) && w->n_held < MAX_HELD) w->held[w->n_held++] = got[i];
        pthread_mutex_unlock(&w->mu);
        for (;;) {
            pthread_mutex_lock(&w->mu);
            int have = w->n_held > 0;
            sdxl_fleet_entry en;
            if (have) en = w->held[0];
            pthread_mutex_unlock(&w->mu);
            if (!have) break;
            if (run_one(w, &r, &en, e)) {
                rc = -1;
                break;
            }
            held_remove(w, &en);
            jobs++;
            last_job = sdxl_now_ms();
        }
    }
    if (rc && p->stop && atomic_load(p->stop)) {
        /* stopped while Redis was away: whatever is held stays pending and is claimed by others */
        rc = 0;
    }
    if (have_side) {
        atomic_store(&w->side_stop, 1);
        pthread_join(side, NULL);
    }
    sdxl_redis_close(&r);
    SDXL_INFO(p->log, "fleet worker %s: stopped after %ld jobs", w->id, jobs);
    pthread_mutex_destroy(&w->mu);
    pthread_mutex_destroy(&w->sink.mu);
    free(w);
    return rc;
}
