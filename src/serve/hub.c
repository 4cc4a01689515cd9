/* Event hub: numbered per-job event history, waiters, latest progress; see hub.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/b64.h"
#include "serve/hub.h"

#define HUB_MAX_JOBS 256       /* jobs with history kept; the oldest finished ones go first */
#define HUB_MAX_EVENTS 4096    /* events kept per job (progress: one per step); later ones stream live only */

const double srv_hub_bucket_le[SRV_HUB_BUCKETS] = {1, 2, 5, 10, 30, 60, 120, 300, 600, 1800};

typedef struct hub_event {
    unsigned long long seq;
    const char *kind; /* static name */
    char *data;
} hub_event;

typedef struct hub_watch {
    srv_req *r;
    int stream; /* 1 stream, 0 waiter */
    struct hub_watch *next;
} hub_watch;

typedef struct hub_job {
    char id[40];
    hub_event *ev;
    size_t n_ev, cap_ev;
    unsigned long long seq;
    int final;
    sdxl_job_info info; /* valid when final */
    hub_watch *watch;
    struct hub_job *next; /* arrival order */
} hub_job;

struct srv_hub {
    pthread_mutex_t mu;
    int token;
    hub_job *head, *tail;
    int n_jobs;
    srv_hub_progress prog;
    uint64_t lat_counts[SRV_HUB_BUCKETS + 1];
    double lat_sum;
    uint64_t lat_n;
};

int srv_job_info_copy(const sdxl_job_info *src, sdxl_job_info *out) {
    *out = *src;
    out->paths = NULL;
    out->seeds = NULL;
    out->request_json = NULL;
    if (src->n_done > 0 && src->paths) {
        out->paths = calloc((size_t)src->n_done, sizeof *out->paths);
        if (!out->paths) goto oom;
        for (int i = 0; i < src->n_done; i++)
            if (src->paths[i] && !(out->paths[i] = strdup(src->paths[i]))) goto oom;
    }
    if (src->n_images > 0 && src->seeds) {
        out->seeds = malloc((size_t)src->n_images * sizeof *out->seeds);
        if (!out->seeds) goto oom;
        memcpy(out->seeds, src->seeds, (size_t)src->n_images * sizeof *out->seeds);
    }
    if (src->request_json && !(out->request_json = strdup(src->request_json))) goto oom;
    return 0;
oom:
    sdxl_job_info_free(out);
    memset(out, 0, sizeof *out);
    return -1;
}

static void job_free(hub_job *j) {
    for (size_t i = 0; i < j->n_ev; i++) free(j->ev[i].data);
    free(j->ev);
    if (j->final) sdxl_job_info_free(&j->info);
    hub_watch *w = j->watch;
    while (w) {
        hub_watch *n = w->next;
        free(w);
        w = n;
    }
    free(j);
}

static hub_job *find(srv_hub *h, const char *id) {
    for (hub_job *j = h->head; j; j = j->next)
        if (!strcmp(j->id, id)) return j;
    return NULL;
}

/* Evicts the oldest finished job nobody watches. */
static void evict(srv_hub *h) {
    hub_job *prev = NULL;
    for (hub_job *j = h->head; j; prev = j, j = j->next) {
        if (!j->final || j->watch) continue;
        if (prev) prev->next = j->next;
        else h->head = j->next;
        if (h->tail == j) h->tail = prev;
        h->n_jobs--;
        job_free(j);
        return;
    }
}

static hub_job *find_or_add(srv_hub *h, const char *id) {
    hub_job *j = find(h, id);
    if (j) return j;
    if (h->n_jobs >= HUB_MAX_JOBS) evict(h);
    j = calloc(1, sizeof *j);
    if (!j) return NULL;
    snprintf(j->id, sizeof j->id, "%s", id);
    if (h->tail) h->tail->next = j;
    else h->head = j;
    h->tail = j;
    h->n_jobs++;
    return j;
}

static void deliver(hub_job *j, unsigned long long seq, const char *kind, const char *data, int end) {
    for (hub_watch *w = j->watch; w; w = w->next) {
        if (w->stream) {
            srv_sse_event(w->r, seq, kind, data);
            if (end) srv_sse_end(w->r);
        } else if (end) {
            srv_resume(w->r);
        }
    }
}

static void record(hub_job *j, const char *kind, char *data, int keep, int end) {
    unsigned long long seq = ++j->seq;
    deliver(j, seq, kind, data, end);
    if ((keep && j->n_ev < HUB_MAX_EVENTS) || end) {
        if (j->n_ev == j->cap_ev) {
            size_t nc = j->cap_ev ? j->cap_ev * 2 : 32;
            hub_event *ne = realloc(j->ev, nc * sizeof *ne);
            if (!ne) {
                free(data);
                return;
            }
            j->ev = ne;
            j->cap_ev = nc;
        }
        j->ev[j->n_ev++] = (hub_event){seq, kind, data};
        return;
    }
    free(data);
}

static void final_json(const sdxl_job_info *info, sdxl_strbuf *b) {
    sdxl_sb_str(b, "{\"job\":");
    sdxl_job_info_json(info, b);
    sdxl_sb_str(b, ",\"images\":[");
    for (int i = 0; i < info->n_done; i++) sdxl_sb_printf(b, "%s\"/v1/jobs/%s/images/%d\"", i ? "," : "", info->id, i);
    sdxl_sb_str(b, "]}");
}

static void on_event(void *user, const sdxl_event *ev) {
    srv_hub *h = user;
    if (!ev->job_id || !ev->job_id[0]) return;
    sdxl_strbuf b = {0};
    int end = 0, keep = 1;
    switch (ev->kind) {
    case SDXL_EVENT_ACCEPTED:
        sdxl_sb_str(&b, "{\"job_id\":");
        sdxl_sb_json(&b, ev->job_id);
        sdxl_sb_str(&b, ",\"state\":\"queued\"}");
        break;
    case SDXL_EVENT_PROGRESS:
        sdxl_sb_str(&b, "{\"job_id\":");
        sdxl_sb_json(&b, ev->job_id);
        sdxl_sb_str(&b, ",\"phase\":");
        sdxl_sb_json(&b, ev->phase ? ev->phase : "");
        sdxl_sb_printf(&b, ",\"step\":%d,\"steps\":%d,\"image\":%d,\"n_images\":%d", ev->step, ev->steps, ev->image,
                       ev->n_images);
        if (ev->eta_s >= 0) sdxl_sb_printf(&b, ",\"eta_s\":%.3f", ev->eta_s);
        sdxl_sb_str(&b, "}");
        break;
    case SDXL_EVENT_PREVIEW: {
        keep = 0; /* only the latest is kept, below */
        size_t n = sdxl_b64_encoded_len(ev->png_len);
        char *enc = n != SIZE_MAX ? malloc(n + 1) : NULL;
        if (!enc) return;
        sdxl_b64_encode(ev->png, ev->png_len, enc);
        sdxl_sb_str(&b, "{\"job_id\":");
        sdxl_sb_json(&b, ev->job_id);
        sdxl_sb_printf(&b, ",\"step\":%d,\"image\":%d,\"png\":\"%s\"}", ev->step, ev->image, enc);
        free(enc);
        break;
    }
    case SDXL_EVENT_RESULT:
    case SDXL_EVENT_ERROR:
        end = 1;
        if (ev->info) {
            final_json(ev->info, &b);
            if (ev->kind == SDXL_EVENT_ERROR) {
                b.n--; /* reopen the object for the error fields */
                b.p[b.n] = 0;
                sdxl_sb_str(&b, ",\"code\":");
                sdxl_sb_json(&b, ev->code ? ev->code : "");
                sdxl_sb_str(&b, ",\"field\":");
                sdxl_sb_json(&b, ev->field ? ev->field : "");
                sdxl_sb_str(&b, ",\"message\":");
                sdxl_sb_json(&b, ev->message ? ev->message : "");
                sdxl_sb_str(&b, "}");
            }
        } else {
            sdxl_sb_str(&b, "{\"job_id\":");
            sdxl_sb_json(&b, ev->job_id);
            sdxl_sb_str(&b, ",\"code\":");
            sdxl_sb_json(&b, ev->code ? ev->code : "");
            sdxl_sb_str(&b, ",\"message\":");
            sdxl_sb_json(&b, ev->message ? ev->message : "");
            sdxl_sb_str(&b, "}");
        }
        break;
    default:
        return;
    }
    if (b.oom) {
        sdxl_sb_free(&b);
        return;
    }
    pthread_mutex_lock(&h->mu);
    hub_job *j = find_or_add(h, ev->job_id);
    if (!j || j->final) {
        pthread_mutex_unlock(&h->mu);
        sdxl_sb_free(&b);
        return;
    }
    if (ev->kind == SDXL_EVENT_PROGRESS || ev->kind == SDXL_EVENT_PREVIEW) {
        srv_hub_progress *p = &h->prog;
        if (strcmp(p->job, ev->job_id)) {
            free(p->png);
            memset(p, 0, sizeof *p);
            snprintf(p->job, sizeof p->job, "%s", ev->job_id);
            p->started = sdxl_srv_now();
            p->eta_s = -1;
        }
        p->active = 1;
        if (ev->kind == SDXL_EVENT_PROGRESS) {
            snprintf(p->phase, sizeof p->phase, "%s", ev->phase ? ev->phase : "");
            p->step = ev->step;
            p->steps = ev->steps;
            p->image = ev->image;
            p->n_images = ev->n_images;
            p->eta_s = ev->eta_s;
        } else if (ev->png && ev->png_len) {
            unsigned char *c = malloc(ev->png_len);
            if (c) {
                memcpy(c, ev->png, ev->png_len);
                free(p->png);
                p->png = c;
                p->png_len = ev->png_len;
            }
        }
    }
    if (end) {
        if (ev->info && srv_job_info_copy(ev->info, &j->info) == 0) {
            double lat = j->info.m.queue_s + j->info.m.total_s;
            int k = 0;
            while (k < SRV_HUB_BUCKETS && lat > srv_hub_bucket_le[k]) k++;
            h->lat_counts[k]++;
            h->lat_sum += lat;
            h->lat_n++;
            j->final = 1;
        } else {
            /* keep the stream's promise (it ends) even without a snapshot */
            j->final = 1;
            memset(&j->info, 0, sizeof j->info);
            snprintf(j->info.id, sizeof j->info.id, "%s", ev->job_id);
            j->info.state = ev->kind == SDXL_EVENT_RESULT ? SDXL_JOB_DONE : SDXL_JOB_FAILED;
        }
        if (!strcmp(h->prog.job, ev->job_id)) h->prog.active = 0;
    }
    char *data = b.p;
    record(j, sdxl_event_kind_name(ev->kind), data, keep, end);
    pthread_mutex_unlock(&h->mu);
}

void srv_hub_inject(srv_hub *h, const sdxl_event *ev) { on_event(h, ev); }

int srv_hub_new(sdxl_engine *eng, srv_hub **out) {
    srv_hub *h = calloc(1, sizeof *h);
    if (!h) return -1;
    pthread_mutex_init(&h->mu, NULL);
    h->prog.eta_s = -1;
    h->token = sdxl_engine_subscribe(eng, on_event, h);
    if (h->token <= 0) {
        pthread_mutex_destroy(&h->mu);
        free(h);
        return -1;
    }
    *out = h;
    return 0;
}

void srv_hub_detach_engine(srv_hub *h, sdxl_engine *eng) {
    if (h && eng && h->token > 0) sdxl_engine_unsubscribe(eng, h->token);
    if (h) h->token = 0;
}

void srv_hub_free(srv_hub *h, sdxl_engine *eng) {
    if (!h) return;
    srv_hub_detach_engine(h, eng);
    hub_job *j = h->head;
    while (j) {
        hub_job *n = j->next;
        job_free(j);
        j = n;
    }
    free(h->prog.png);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

static int add_watch(hub_job *j, srv_req *r, int stream) {
    hub_watch *w = calloc(1, sizeof *w);
    if (!w) return -1;
    w->r = r;
    w->stream = stream;
    w->next = j->watch;
    j->watch = w;
    return 0;
}

int srv_hub_stream(srv_hub *h, const char *id, unsigned long long after, const sdxl_job_info *snap, srv_req *r) {
    if (snap && snap->state >= SDXL_JOB_DONE) {
        /* the record has finished but the hub's history may not have (a relayed final event can
         * arrive after the record is read, or never): the record's final event ends it */
        pthread_mutex_lock(&h->mu);
        hub_job *k = find(h, id);
        int open = k && !k->final;
        pthread_mutex_unlock(&h->mu);
        if (open) {
            sdxl_event ev;
            memset(&ev, 0, sizeof ev);
            ev.kind = snap->state == SDXL_JOB_DONE ? SDXL_EVENT_RESULT : SDXL_EVENT_ERROR;
            ev.job_id = id;
            ev.client_id = snap->client_id;
            ev.info = snap;
            ev.code = snap->error_code[0] ? snap->error_code : "runtime";
            ev.field = snap->error_field;
            ev.message = snap->error;
            on_event(h, &ev);
        }
    }
    pthread_mutex_lock(&h->mu);
    hub_job *j = find(h, id);
    if (!j && !snap) {
        pthread_mutex_unlock(&h->mu);
        return -1;
    }
    if (!j) {
        j = find_or_add(h, id);
        if (!j) {
            pthread_mutex_unlock(&h->mu);
            return -1;
        }
        /* no history (restart or eviction): start from the job's state now */
        sdxl_strbuf b = {0};
        final_json(snap, &b);
        if (!b.oom) record(j, "state", b.p, 1, 0);
        else sdxl_sb_free(&b);
        if (snap->state >= SDXL_JOB_DONE && srv_job_info_copy(snap, &j->info) == 0) {
            j->final = 1;
            sdxl_strbuf f = {0};
            final_json(snap, &f);
            if (!f.oom) record(j, snap->state == SDXL_JOB_DONE ? "result" : "error", f.p, 1, 0);
            else sdxl_sb_free(&f);
        }
    }
    for (size_t i = 0; i < j->n_ev; i++)
        if (j->ev[i].seq > after) srv_sse_event(r, j->ev[i].seq, j->ev[i].kind, j->ev[i].data);
    if (j->final) srv_sse_end(r);
    else add_watch(j, r, 1);
    pthread_mutex_unlock(&h->mu);
    return 0;
}

void srv_hub_wait(srv_hub *h, const char *id, srv_req *r) {
    pthread_mutex_lock(&h->mu);
    hub_job *j = find_or_add(h, id);
    if (!j || j->final || add_watch(j, r, 0)) srv_resume(r);
    pthread_mutex_unlock(&h->mu);
}

void srv_hub_forget(srv_hub *h, srv_req *r) {
    pthread_mutex_lock(&h->mu);
    for (hub_job *j = h->head; j; j = j->next) {
        hub_watch **pw = &j->watch;
        while (*pw) {
            if ((*pw)->r == r) {
                hub_watch *w = *pw;
                *pw = w->next;
                free(w);
            } else {
                pw = &(*pw)->next;
            }
        }
    }
    pthread_mutex_unlock(&h->mu);
}

int srv_hub_final(srv_hub *h, const char *id, sdxl_job_info *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&h->mu);
    hub_job *j = find(h, id);
    int ok = j && j->final && srv_job_info_copy(&j->info, out) == 0;
    pthread_mutex_unlock(&h->mu);
    return ok;
}

void srv_hub_progress_get(srv_hub *h, srv_hub_progress *out, int want_png) {
    pthread_mutex_lock(&h->mu);
    *out = h->prog;
    out->png = NULL;
    out->png_len = 0;
    if (want_png && h->prog.png) {
        out->png = malloc(h->prog.png_len);
        if (out->png) {
            memcpy(out->png, h->prog.png, h->prog.png_len);
            out->png_len = h->prog.png_len;
        }
    }
    pthread_mutex_unlock(&h->mu);
}

void srv_hub_latency(srv_hub *h, uint64_t counts[SRV_HUB_BUCKETS + 1], double *sum, uint64_t *n) {
    pthread_mutex_lock(&h->mu);
    memcpy(counts, h->lat_counts, sizeof h->lat_counts);
    *sum = h->lat_sum;
    *n = h->lat_n;
    pthread_mutex_unlock(&h->mu);
}
