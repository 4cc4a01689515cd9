/* Our routes: /v1/jobs (submit, list, get, cancel, events, images), listings, schema, dry run,
 * /health, /ready, /metrics. Job bodies are the worker's request schema in any of its dialects. */
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"
#include "denoise/registry.h"
#include "serve/fleet.h"
#include "serve/hub.h"
#include "serve/internal.h"
#include "service/engine.h"

void h_health(srv_req *r) {
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"status\":\"ok\",\"uptime_s\":%.0f}", (double)time(NULL) - r->srv->started);
    srv_take_json(r, 200, &b);
}

void h_ready(srv_req *r) {
    if (r->srv->fleet) {
        srv_fleet_ready(r);
        return;
    }
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_engine_metrics m;
    sdxl_engine_metrics_get(eng, &m);
    srv_eng_done(r);
    int full = m.queue_limit > 0 && m.queued >= m.queue_limit;
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"ready\":%s,\"queued\":%d,\"running\":%d,\"queue_limit\":%d}", full ? "false" : "true",
                   m.queued, m.running, m.queue_limit);
    if (full) srv_header(r, "Retry-After", "5");
    srv_take_json(r, full ? 503 : 200, &b);
}

void h_metrics(srv_req *r) {
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_engine_metrics m;
    sdxl_engine_metrics_get(eng, &m);
    srv_eng_done(r);
    uint64_t counts[SRV_HUB_BUCKETS + 1];
    double sum;
    uint64_t n;
    srv_hub_latency(r->srv->hub, counts, &sum, &n);
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b,
                   "# HELP sdxl_queue_depth Jobs waiting to run.\n# TYPE sdxl_queue_depth gauge\nsdxl_queue_depth %d\n"
                   "# HELP sdxl_queue_limit Most jobs the queue accepts.\n# TYPE sdxl_queue_limit gauge\n"
                   "sdxl_queue_limit %d\n"
                   "# HELP sdxl_jobs Jobs by state since start.\n# TYPE sdxl_jobs gauge\n"
                   "sdxl_jobs{state=\"queued\"} %d\nsdxl_jobs{state=\"running\"} %d\nsdxl_jobs{state=\"done\"} %d\n"
                   "sdxl_jobs{state=\"failed\"} %d\nsdxl_jobs{state=\"cancelled\"} %d\n"
                   "# HELP sdxl_images_total Images written.\n# TYPE sdxl_images_total counter\n"
                   "sdxl_images_total %lld\n",
                   m.queued, m.queue_limit, m.queued, m.running, m.done, m.failed, m.cancelled, (long long)m.images);
    sdxl_sb_str(&b, "# HELP sdxl_job_latency_seconds Accepted to finished, per job.\n"
                    "# TYPE sdxl_job_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < SRV_HUB_BUCKETS; i++) {
        cum += counts[i];
        sdxl_sb_printf(&b, "sdxl_job_latency_seconds_bucket{le=\"%g\"} %llu\n", srv_hub_bucket_le[i],
                       (unsigned long long)cum);
    }
    cum += counts[SRV_HUB_BUCKETS];
    sdxl_sb_printf(&b, "sdxl_job_latency_seconds_bucket{le=\"+Inf\"} %llu\nsdxl_job_latency_seconds_sum %.6f\n"
                       "sdxl_job_latency_seconds_count %llu\n",
                   (unsigned long long)cum, sum, (unsigned long long)n);
    sdxl_sb_printf(&b,
                   "# HELP sdxl_resident_bytes Resident set size.\n# TYPE sdxl_resident_bytes gauge\n"
                   "sdxl_resident_bytes %llu\n"
                   "# HELP sdxl_peak_resident_bytes Peak resident set size.\n# TYPE sdxl_peak_resident_bytes gauge\n"
                   "sdxl_peak_resident_bytes %llu\n"
                   "# HELP sdxl_memory_available_bytes Memory the process may still take.\n"
                   "# TYPE sdxl_memory_available_bytes gauge\nsdxl_memory_available_bytes %llu\n"
                   "# HELP sdxl_cache_hits_total Cache hits.\n# TYPE sdxl_cache_hits_total counter\n"
                   "sdxl_cache_hits_total{cache=\"model\"} %lld\nsdxl_cache_hits_total{cache=\"conditioning\"} %lld\n"
                   "# HELP sdxl_cache_misses_total Cache misses.\n# TYPE sdxl_cache_misses_total counter\n"
                   "sdxl_cache_misses_total{cache=\"model\"} %lld\nsdxl_cache_misses_total{cache=\"conditioning\"} %lld\n"
                   "# HELP sdxl_unet_batches_total UNet batches run (merged: more than one job).\n"
                   "# TYPE sdxl_unet_batches_total counter\nsdxl_unet_batches_total %lld\n"
                   "sdxl_unet_batches_total{merged=\"true\"} %lld\n"
                   "# HELP sdxl_uptime_seconds Seconds since the engine started.\n# TYPE sdxl_uptime_seconds gauge\n"
                   "sdxl_uptime_seconds %.1f\n",
                   (unsigned long long)m.rss, (unsigned long long)m.peak_rss, (unsigned long long)m.mem_available,
                   (long long)m.model_cache_hits, (long long)m.cond_cache_hits, (long long)m.model_cache_misses,
                   (long long)m.cond_cache_misses, (long long)m.unet_batches, (long long)m.merged_batches, m.uptime_s);
    sdxl_sb_str(&b, "# HELP sdxl_http_responses_total HTTP responses by status class.\n"
                    "# TYPE sdxl_http_responses_total counter\n");
    for (int c = 1; c <= 5; c++)
        sdxl_sb_printf(&b, "sdxl_http_responses_total{code=\"%dxx\"} %lu\n", c,
                       (unsigned long)atomic_load(&r->srv->http_by_class[c]));
    if (b.oom) {
        sdxl_sb_free(&b);
        srv_error(r, 503, "nomem", NULL, "out of memory");
        return;
    }
    srv_bytes(r, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.n);
    sdxl_sb_free(&b);
}

/* Validates base64 images of a native request (data URLs, or strings too long to be a path). */
static int check_images(srv_req *r, const sdxl_svc_request *q) {
    const char *fields[2] = {"init_image", "mask"};
    const char *vals[2] = {q->init_image, q->mask};
    for (int i = 0; i < 2; i++)
        if (vals[i] && (!strncmp(vals[i], "data:", 5) || strlen(vals[i]) > 4096) && srv_check_image(r, fields[i], vals[i]))
            return -1;
    for (int i = 0; i < q->n_controls; i++) {
        const char *im = q->controls[i].image;
        char f[48];
        snprintf(f, sizeof f, "controlnets[%d].image", i);
        if (im && (!strncmp(im, "data:", 5) || strlen(im) > 4096) && srv_check_image(r, f, im)) return -1;
    }
    return 0;
}

static void job_links(sdxl_strbuf *b, const char *id) {
    sdxl_sb_printf(b, "\"links\":{\"self\":\"/v1/jobs/%s\",\"events\":\"/v1/jobs/%s/events\"}", id, id);
}

/* Submits q; answers 202, 422, 429 or 500. Returns 0 and the id when accepted. */
int srv_submit(srv_req *r, sdxl_engine *eng, const sdxl_svc_request *q, char id[64]) {
    if (r->srv->fleet) return srv_fleet_submit(r, q, id);
    sdxl_svc_issues is;
    memset(&is, 0, sizeof is);
    int st = sdxl_engine_submit(eng, q, 1, id, &is);
    if (st == SDXL_OK) {
        snprintf(r->job, sizeof r->job, "%s", id);
        return 0;
    }
    if (st == SDXL_ERR_LIMIT) {
        srv_header(r, "Retry-After", "10");
        const char *msg = is.n ? is.items[0].message : "the queue is full";
        srv_error(r, 429, "busy", NULL, "%s", msg);
    } else if (st == SDXL_ERR_ARG && is.n) {
        srv_issues(r, &is);
    } else {
        srv_error(r, srv_status_http(st) == 200 ? 500 : srv_status_http(st), "submit_failed", NULL, "%s",
                  is.n ? is.items[0].message : sdxl_status_str((sdxl_status)st));
    }
    return -1;
}

void h_jobs_submit(srv_req *r) {
    sdxl_svc_request q;
    sdxl_svc_issues is;
    memset(&is, 0, sizeof is);
    if (sdxl_svc_request_parse(r->json, SDXL_DIALECT_AUTO, &q, &is) != SDXL_OK) {
        srv_issues(r, &is);
        sdxl_svc_request_free(&q);
        return;
    }
    if (srv_check_request(r, &q) || check_images(r, &q)) {
        sdxl_svc_request_free(&q);
        return;
    }
    sdxl_engine *eng = srv_eng(r);
    if (!eng) {
        sdxl_svc_request_free(&q);
        return;
    }
    char id[64];
    int ok = srv_submit(r, eng, &q, id) == 0;
    srv_eng_done(r);
    sdxl_svc_request_free(&q);
    if (!ok) return;
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"id\":");
    sdxl_sb_json(&b, id);
    sdxl_sb_str(&b, ",\"state\":\"queued\",");
    job_links(&b, id);
    sdxl_sb_str(&b, "}");
    char loc[128];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", id);
    srv_header(r, "Location", loc);
    srv_take_json(r, 202, &b);
}

/* A job as the /v1 routes show it: the engine's record, image URLs and links. */
void srv_job_json(const sdxl_job_info *j, sdxl_strbuf *b) {
    sdxl_sb_str(b, "{\"job\":");
    sdxl_job_info_json(j, b);
    sdxl_sb_str(b, ",\"images\":[");
    for (int i = 0; i < j->n_done; i++) sdxl_sb_printf(b, "%s\"/v1/jobs/%s/images/%d\"", i ? "," : "", j->id, i);
    sdxl_sb_str(b, "],");
    job_links(b, j->id);
    sdxl_sb_str(b, "}");
}

void h_jobs_list(srv_req *r) {
    if (r->srv->fleet) {
        srv_fleet_jobs_list(r);
        return;
    }
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_job_info *list = NULL;
    int n = 0;
    int st = sdxl_engine_list(eng, &list, &n);
    srv_eng_done(r);
    if (st) {
        srv_error(r, 500, "list_failed", NULL, "cannot list jobs: %s", sdxl_status_str((sdxl_status)st));
        return;
    }
    const char *state = srv_query(r, "state");
    const char *lim = srv_query(r, "limit");
    const char *off = srv_query(r, "offset");
    int limit = lim ? atoi(lim) : 100;
    if (limit <= 0 || limit > 10000) limit = 100;
    long offset = off ? strtol(off, NULL, 10) : 0; /* pages: the first `offset` matching jobs are skipped */
    if (offset < 0) offset = 0;
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"jobs\":[");
    int shown = 0, matched = 0;
    for (int i = n - 1; i >= 0; i--) {
        if (state && strcmp(state, sdxl_job_state_name(list[i].state))) continue;
        if (matched++ < offset || shown >= limit) continue;
        if (shown++) sdxl_sb_str(&b, ",");
        sdxl_job_info_json(&list[i], &b);
    }
    sdxl_sb_printf(&b, "],\"total\":%d,\"matched\":%d}", n, matched);
    for (int i = 0; i < n; i++) sdxl_job_info_free(&list[i]);
    free(list);
    srv_take_json(r, 200, &b);
}

/* The local job named by the route's first parameter, or a reply (engine gone, 404): returns 0
 * when j holds the job (free it with sdxl_job_info_free). */
static int job_of_route(srv_req *r, sdxl_job_info *j) {
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return -1;
    memset(j, 0, sizeof *j);
    int st = sdxl_engine_get(eng, r->params[0], j);
    srv_eng_done(r);
    if (st) {
        srv_error(r, 404, "unknown_job", "id", "no job '%s'", r->params[0]);
        return -1;
    }
    snprintf(r->job, sizeof r->job, "%s", j->id);
    return 0;
}

void h_job_get(srv_req *r) {
    if (r->srv->fleet) {
        srv_fleet_job_get(r);
        return;
    }
    sdxl_job_info j;
    if (job_of_route(r, &j)) return;
    sdxl_strbuf b = {0};
    srv_job_json(&j, &b);
    sdxl_job_info_free(&j);
    srv_take_json(r, 200, &b);
}

void h_job_cancel(srv_req *r) {
    if (r->srv->fleet) {
        srv_fleet_job_cancel(r);
        return;
    }
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    snprintf(r->job, sizeof r->job, "%s", r->params[0]);
    int st = sdxl_engine_cancel(eng, r->params[0]);
    sdxl_job_info j;
    memset(&j, 0, sizeof j);
    int gst = st ? st : sdxl_engine_get(eng, r->params[0], &j);
    srv_eng_done(r);
    if (gst) {
        srv_error(r, 404, "unknown_job", "id", "no job '%s'", r->params[0]);
        return;
    }
    sdxl_strbuf b = {0};
    srv_job_json(&j, &b);
    sdxl_job_info_free(&j);
    srv_take_json(r, 202, &b);
}

static void events_done(srv_req *r) { srv_hub_forget(r->srv->hub, r); }

void h_job_events(srv_req *r) {
    unsigned long long after = 0;
    const char *last = srv_header_in(r, "Last-Event-ID");
    if (!last) last = srv_query(r, "last_event_id");
    if (last) {
        char *end = (char *)last;
        if (*last >= '0' && *last <= '9') after = strtoull(last, &end, 10);
        if (*end || end == last || strlen(last) > 19) {
            srv_error(r, 400, "bad_last_event_id", "Last-Event-ID", "expected a decimal event id");
            return;
        }
    }
    if (r->srv->fleet) {
        srv_fleet_job_events(r, after);
        return;
    }
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_job_info j;
    memset(&j, 0, sizeof j);
    int known = sdxl_engine_get(eng, r->params[0], &j) == SDXL_OK;
    srv_eng_done(r);
    if (!known) {
        srv_error(r, 404, "unknown_job", "id", "no job '%s'", r->params[0]);
        return;
    }
    snprintf(r->job, sizeof r->job, "%s", r->params[0]);
    srv_stream(r, events_done, NULL);
    srv_hub_stream(r->srv->hub, r->params[0], after, &j, r);
    sdxl_job_info_free(&j);
}

static const char *image_ctype(const char *path) {
    size_t n = strlen(path);
    if (n > 4 && !strcasecmp(path + n - 4, ".jpg")) return "image/jpeg";
    if (n > 5 && !strcasecmp(path + n - 5, ".jpeg")) return "image/jpeg";
    if (n > 5 && !strcasecmp(path + n - 5, ".webp")) return "image/webp";
    return "image/png";
}

/* Sends image k of a job (local or fleet) with its content type; 404 past the written ones. */
void srv_job_image_reply(srv_req *r, const sdxl_job_info *j, int k) {
    if (k >= j->n_done || !j->paths || !j->paths[k]) {
        srv_error(r, 404, "unknown_image", "n", "job '%s' has %d image(s) written", j->id, j->n_done);
        return;
    }
    uint8_t *p = NULL;
    size_t n = 0;
    if (srv_read_file(j->paths[k], (size_t)1 << 30, &p, &n)) {
        srv_error(r, 410, "image_gone", "n", "the image file of job '%s' is no longer readable", j->id);
        return;
    }
    srv_bytes(r, 200, image_ctype(j->paths[k]), p, n);
    free(p);
}

void h_job_image(srv_req *r) {
    const char *ns = r->params[1];
    if (strspn(ns, "0123456789") != strlen(ns) || strlen(ns) > 6) {
        srv_error(r, 404, "unknown_image", "n", "image index must be a small non-negative integer");
        return;
    }
    int k = atoi(ns);
    if (r->srv->fleet) {
        srv_fleet_job_image(r, k);
        return;
    }
    sdxl_job_info j;
    if (job_of_route(r, &j)) return;
    srv_job_image_reply(r, &j, k);
    sdxl_job_info_free(&j);
}

void h_models(srv_req *r) {
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_strbuf arr = {0};
    int st = sdxl_engine_models(eng, &arr);
    srv_eng_done(r);
    if (st) {
        sdxl_sb_free(&arr);
        srv_error(r, 500, "list_failed", NULL, "cannot list models");
        return;
    }
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"models\":");
    sdxl_sb_put(&b, arr.p ? arr.p : "[]", arr.p ? arr.n : 2);
    sdxl_sb_str(&b, ",\"vaes\":");
    const sdxl_engine_config *c = r->srv->ecfg;
    static const char *const vae_sub[] = {"VAE", "vae", NULL};
    srv_list_files(c->vae_dirs, c->n_vae_dirs, NULL, &b);
    sdxl_sb_str(&b, ",\"vaes_in_model_roots\":");
    srv_list_files(c->models_dirs, c->n_models_dirs, vae_sub, &b);
    sdxl_sb_str(&b, "}");
    sdxl_sb_free(&arr);
    srv_take_json(r, 200, &b);
}

static const char *const LORA_SUB[] = {"Lora", "lora", "loras", "LoRA", NULL};
static const char *const CONTROL_SUB[] = {"ControlNet", "controlnet", "controlnets", NULL};

void srv_list_kind(srv_req *r, int lora, sdxl_strbuf *b) {
    const sdxl_engine_config *c = r->srv->ecfg;
    sdxl_strbuf own = {0}, sub = {0};
    if (lora) srv_list_files(c->lora_dirs, c->n_lora_dirs, NULL, &own);
    else srv_list_files(c->control_dirs, c->n_control_dirs, NULL, &own);
    srv_list_files(c->models_dirs, c->n_models_dirs, lora ? LORA_SUB : CONTROL_SUB, &sub);
    /* two arrays joined: "[a]" + "[b]" -> "[a,b]" */
    sdxl_sb_put(b, own.p, own.n - 1);
    if (own.n > 2 && sub.n > 2) sdxl_sb_str(b, ",");
    sdxl_sb_put(b, sub.p + 1, sub.n - 1);
    sdxl_sb_free(&own);
    sdxl_sb_free(&sub);
}

void h_loras(srv_req *r) {
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"loras\":");
    srv_list_kind(r, 1, &b);
    sdxl_sb_str(&b, "}");
    srv_take_json(r, 200, &b);
}

void h_controlnets(srv_req *r) {
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"controlnets\":");
    srv_list_kind(r, 0, &b);
    sdxl_sb_str(&b, "}");
    srv_take_json(r, 200, &b);
}

void h_schedulers(srv_req *r) {
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"samplers\":[");
    for (int k = 0; k < SDXL_SAMPLER_COUNT; k++) {
        const sdxl_sampler_traits *t = sdxl_sampler_traits_get((sdxl_sampler_kind)k);
        const char *fam = t->family == SDXL_FAMILY_DETERMINISTIC ? "deterministic"
                          : t->family == SDXL_FAMILY_ANCESTRAL   ? "ancestral"
                                                                 : "sde";
        sdxl_sb_str(&b, k ? ",{\"name\":" : "{\"name\":");
        sdxl_sb_json(&b, t->name);
        sdxl_sb_str(&b, ",\"a1111\":");
        sdxl_sb_json(&b, t->a1111);
        sdxl_sb_str(&b, ",\"comfyui\":");
        sdxl_sb_json(&b, t->comfy);
        sdxl_sb_str(&b, ",\"diffusers\":");
        sdxl_sb_json(&b, t->diffusers);
        sdxl_sb_printf(&b,
                       ",\"traits\":{\"evals_per_step\":%d,\"order\":%d,\"kind\":\"%s\",\"default_schedule\":\"%s\","
                       "\"steps\":{\"base\":%d,\"refiner\":%d,\"turbo\":%d,\"lcm\":%d},"
                       "\"cfg\":{\"base\":%g,\"turbo\":%g},\"img2img\":%s,\"implemented\":%s,\"note\":",
                       t->evals_per_step, t->order, fam, sdxl_schedule_name(t->default_schedule), t->steps_base,
                       t->steps_refiner, t->steps_turbo, t->steps_lcm, t->cfg_base, t->cfg_turbo,
                       t->img2img_ok ? "true" : "false", t->implemented ? "true" : "false");
        sdxl_sb_json(&b, t->note ? t->note : "");
        sdxl_sb_str(&b, "}}");
    }
    sdxl_sb_str(&b, "],\"schedules\":[");
    for (int k = 1; k < SDXL_SCHEDULE_COUNT; k++)
        sdxl_sb_printf(&b, "%s\"%s\"", k > 1 ? "," : "", sdxl_schedule_name((sdxl_schedule_kind)k));
    sdxl_sb_str(&b, "],\"aliases\":[");
    for (size_t i = 0; i < sdxl_sched_alias_count(); i++) {
        const sdxl_sched_alias *a = sdxl_sched_alias_at(i);
        sdxl_sb_str(&b, i ? ",{\"dialect\":" : "{\"dialect\":");
        sdxl_sb_json(&b, a->dialect);
        sdxl_sb_str(&b, ",\"name\":");
        sdxl_sb_json(&b, a->name);
        sdxl_sb_printf(&b, ",\"sampler\":\"%s\",\"schedule\":\"%s\"}", sdxl_sampler_name(a->sampler),
                       a->schedule == SDXL_SCHEDULE_DEFAULT ? "" : sdxl_schedule_name(a->schedule));
    }
    sdxl_sb_str(&b, "]}");
    srv_take_json(r, 200, &b);
}

void h_memory(srv_req *r) {
    sdxl_mem_stats m;
    sdxl_mem_query(&m);
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_engine_metrics em;
    sdxl_engine_metrics_get(eng, &em);
    srv_eng_done(r);
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b,
                   "{\"rss\":%llu,\"peak_rss\":%llu,\"mem_total\":%llu,\"mem_available\":%llu,\"available\":%llu,"
                   "\"cgroup_limit\":",
                   (unsigned long long)m.rss, (unsigned long long)m.peak_rss, (unsigned long long)m.mem_total,
                   (unsigned long long)m.mem_available, (unsigned long long)m.available);
    if (m.cgroup_limit == UINT64_MAX) sdxl_sb_str(&b, "null");
    else sdxl_sb_printf(&b, "%llu", (unsigned long long)m.cgroup_limit);
    sdxl_sb_printf(&b, ",\"cgroup_usage\":%llu,\"loaded_model\":", (unsigned long long)m.cgroup_usage);
    sdxl_sb_json(&b, em.loaded_model);
    sdxl_sb_str(&b, "}");
    srv_take_json(r, 200, &b);
}

void h_schema(srv_req *r) {
    const char *s = sdxl_svc_request_schema();
    srv_bytes(r, 200, "application/schema+json", s, strlen(s));
}

void h_validate(srv_req *r) {
    sdxl_svc_request q;
    sdxl_svc_issues is;
    memset(&is, 0, sizeof is);
    int st = sdxl_svc_request_parse(r->json, SDXL_DIALECT_AUTO, &q, &is);
    sdxl_job_plan plan;
    memset(&plan, 0, sizeof plan);
    int planned = 0;
    if (st == SDXL_OK) {
        sdxl_engine *eng = srv_eng(r);
        if (!eng) {
            sdxl_svc_request_free(&q);
            return;
        }
        planned = sdxl_engine_plan(eng, &q, &plan, &is) == SDXL_OK;
        srv_eng_done(r);
    }
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"valid\":%s,\"dialect\":\"%s\",\"issues\":[", planned ? "true" : "false",
                   sdxl_svc_dialect_name(q.dialect));
    for (int i = 0; i < is.n; i++) {
        sdxl_sb_str(&b, i ? ",{\"code\":" : "{\"code\":");
        sdxl_sb_json(&b, is.items[i].code);
        sdxl_sb_str(&b, ",\"field\":");
        sdxl_sb_json(&b, is.items[i].field);
        sdxl_sb_str(&b, ",\"message\":");
        sdxl_sb_json(&b, is.items[i].message);
        sdxl_sb_str(&b, "}");
    }
    sdxl_sb_str(&b, "],\"warnings\":[");
    for (int i = 0; i < is.n_warnings && i < 8; i++) {
        if (i) sdxl_sb_str(&b, ",");
        sdxl_sb_json(&b, is.warnings[i]);
    }
    sdxl_sb_str(&b, "]");
    if (planned) {
        sdxl_sb_str(&b, ",\"plan\":");
        sdxl_job_plan_json(&plan, &b);
    }
    sdxl_sb_str(&b, "}");
    sdxl_svc_request_free(&q);
    srv_take_json(r, 200, &b);
}

void h_resume(srv_req *r) {
    sdxl_engine *eng = srv_eng(r);
    if (!eng) return;
    sdxl_engine_resume(eng);
    srv_eng_done(r);
    srv_json(r, 200, "{\"running\":true}");
}
