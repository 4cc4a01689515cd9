/* Native JSON-lines protocol and the orchestrator dialect over the job engine. See protocol.h. */
#include "service/protocol.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise/registry.h"
#include "denoise/sampler.h"
#include "io/json.h"
#include "io/strbuf.h"
#include "service/names.h"

#define PROTOCOL_VERSION 1

struct sdxl_proto {
    sdxl_engine *eng;
    sdxl_proto_opts o;
    sdxl_proto_write_fn write;
    void *user;
    int token;
    int hello_sent;
    pthread_mutex_t mu; /* hello_sent */
    /* orchestrator state (the reading thread only) */
    int device_index;
    char model_id[256];
    char model_path[1024];
    char vae[1024];
};

static const sdxl_proto_code CODES[] = {
    {"bad_json", "the line is not valid JSON (syntax, trailing bytes, duplicate keys, nesting deeper than 64)"},
    {"invalid_utf8", "the line is not valid UTF-8"},
    {"line_too_long", "the line is longer than --max-line bytes; it was skipped"},
    {"not_object", "the line is JSON but not an object"},
    {"unknown_op", "\"op\" (native) or \"action\"/\"message_type\" (orchestrator) names nothing this worker does"},
    {"missing_field", "a required field is absent or null"},
    {"wrong_type", "a field has the wrong JSON type (a string for a number, a fraction for an integer, ...)"},
    {"out_of_range", "a number is outside its allowed range"},
    {"bad_value", "a string value is not one of the allowed ones"},
    {"unknown_field", "a native request has a field the schema does not define"},
    {"unknown_scheduler", "the sampler / scheduler name means nothing in any dialect (suggestions follow)"},
    {"unsupported", "valid, but this build cannot do it (hires fix, an upscaler we do not have, ...)"},
    {"limit", "a configured limit was exceeded (size, steps, images, list length)"},
    {"path_refused", "a name or path leaves the configured folders (\"..\", absolute, symlink escape)"},
    {"model_not_found", "no model, VAE or LoRA of that name in the configured folders"},
    {"file_not_found", "an input image path names no file in the input folders"},
    {"not_found", "no job with that id"},
    {"busy", "the queue is full; retry later"},
    {"shutting_down", "the worker is draining and accepts no new jobs"},
    {"journal", "the job journal could not record the job"},
    {"nomem", "out of memory while handling the line"},
    {"model_load", "the model failed to load (its message names the file and tensor)"},
    {"cancelled", "the job was cancelled"},
    {"timeout", "the job ran past its timeout"},
    {"worker_crashed", "the worker died twice while running this job"},
    {"out_of_memory", "generation ran out of memory on every rung of the ladder"},
    {"io_error", "an output file could not be written"},
    {"invalid_request", "the pipeline refused a value (its message names the field)"},
    {"bad_file", "a model or image file failed validation"},
    {"internal", "a bug: please report it"},
};

const sdxl_proto_code *sdxl_proto_codes(int *n) {
    *n = (int)(sizeof CODES / sizeof CODES[0]);
    return CODES;
}

void sdxl_proto_opts_init(sdxl_proto_opts *o) {
    o->max_line = (size_t)32 << 20;
    o->hello_at_start = 0;
}

static void put(sdxl_proto *p, sdxl_strbuf *b) {
    if (b->oom) {
        static const char oom[] = "{\"event\":\"error\",\"code\":\"nomem\",\"field\":\"\",\"message\":\"out of memory\","
                                  "\"success\":false,\"error\":\"out of memory\",\"data\":null}";
        p->write(p->user, oom, sizeof oom - 1);
    } else {
        p->write(p->user, b->p, b->n);
    }
    sdxl_sb_free(b);
}

/* ---- native events ------------------------------------------------------------------------------ */

static void hello(sdxl_proto *p) {
    const sdxl_engine_config *c = sdxl_engine_get_config(p->eng);
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b,
                   "{\"event\":\"hello\",\"version\":\"%s\",\"protocol\":%d,\"schema_version\":%d,"
                   "\"limits\":{\"max_side\":%d,\"max_steps\":%d,\"max_images\":%d,\"queue_limit\":%d,"
                   "\"max_line\":%zu,\"timeout_s\":%g,\"max_merge\":%d},"
                   "\"capabilities\":{\"ops\":[\"submit\",\"cancel\",\"status\",\"jobs\",\"models\",\"schedulers\","
                   "\"memory\",\"metrics\",\"plan\",\"validate\",\"resume\",\"shutdown\"],\"events\":[\"accepted\",\"progress\","
                   "\"preview\",\"result\",\"error\"],\"dialects\":[\"native\",\"orchestrator\",\"orchestrator_csharp\","
                   "\"a1111_txt2img\",\"a1111_img2img\"],\"formats\":[\"png\",\"jpeg\",\"webp\"],\"journal\":%s,"
                   "\"batching\":%s,\"img2img\":true,\"inpaint\":true,\"refiner\":true,\"lora\":true,\"hires_fix\":true,"
                   "\"controlnet\":true,\"previews\":true}}",
                   sdxl_version(), PROTOCOL_VERSION, SDXL_SVC_SCHEMA_VERSION, c->max_side, c->max_steps, c->max_images,
                   c->queue_limit, p->o.max_line, c->default_timeout_s, c->max_merge, c->journal ? "true" : "false",
                   c->merge ? "true" : "false");
    put(p, &b);
}

static void ensure_hello(sdxl_proto *p) {
    pthread_mutex_lock(&p->mu);
    int send = !p->hello_sent;
    p->hello_sent = 1;
    if (send) hello(p);
    pthread_mutex_unlock(&p->mu);
}

static void on_event(void *user, const sdxl_event *ev) {
    sdxl_proto *p = user;
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"event\":\"%s\",\"job\":", sdxl_event_kind_name(ev->kind));
    sdxl_sb_json(&b, ev->job_id);
    if (ev->client_id && *ev->client_id) {
        sdxl_sb_str(&b, ",\"id\":");
        sdxl_sb_json(&b, ev->client_id);
    }
    switch (ev->kind) {
    case SDXL_EVENT_ACCEPTED:
        sdxl_sb_printf(&b, ",\"n_images\":%d,\"seeds\":[", ev->info->n_images);
        for (int i = 0; i < ev->info->n_images; i++)
            sdxl_sb_printf(&b, "%s%lld", i ? "," : "", (long long)ev->info->seeds[i]);
        sdxl_sb_str(&b, "]");
        break;
    case SDXL_EVENT_PROGRESS:
        sdxl_sb_printf(&b, ",\"phase\":\"%s\",\"step\":%d,\"steps\":%d,\"image\":%d,\"n_images\":%d,\"eta_s\":",
                       ev->phase, ev->step, ev->steps, ev->image, ev->n_images);
        if (ev->eta_s >= 0 && isfinite(ev->eta_s)) sdxl_sb_printf(&b, "%.3f", ev->eta_s);
        else sdxl_sb_str(&b, "null");
        break;
    case SDXL_EVENT_PREVIEW:
        sdxl_sb_printf(&b, ",\"step\":%d,\"png\":\"", ev->step);
        sdxl_svc_base64_encode(ev->png, ev->png_len, &b);
        sdxl_sb_str(&b, "\"");
        break;
    case SDXL_EVENT_RESULT:
        sdxl_sb_str(&b, ",\"images\":[");
        for (int i = 0; i < ev->info->n_done; i++) {
            sdxl_sb_str(&b, i ? ",{\"path\":" : "{\"path\":");
            sdxl_sb_json(&b, ev->info->paths[i]);
            sdxl_sb_printf(&b, ",\"seed\":%lld}", (long long)ev->info->seeds[i]);
        }
        sdxl_sb_printf(&b, "],\"width\":%d,\"height\":%d,\"info\":", ev->info->width, ev->info->height);
        sdxl_job_info_json(ev->info, &b);
        break;
    case SDXL_EVENT_ERROR:
        sdxl_sb_str(&b, ",\"code\":");
        sdxl_sb_json(&b, ev->code);
        sdxl_sb_str(&b, ",\"field\":");
        sdxl_sb_json(&b, ev->field ? ev->field : "");
        sdxl_sb_str(&b, ",\"message\":");
        sdxl_sb_json(&b, ev->message);
        break;
    }
    sdxl_sb_str(&b, "}");
    put(p, &b);
}

/* An error line that both protocols read: native {event:error,...} and the orchestrator's envelope. */
static void error_line(sdxl_proto *p, const char *job, const char *reqid, const sdxl_svc_issues *is, const char *code,
                       const char *field, const char *msg) {
    sdxl_strbuf b = {0};
    char joined[2048];
    if (is && is->n) {
        sdxl_svc_issues_join(is, joined, sizeof joined);
        code = is->items[0].code;
        field = is->items[0].field;
        msg = joined;
    }
    sdxl_sb_str(&b, "{\"event\":\"error\",\"job\":");
    if (job) sdxl_sb_json(&b, job);
    else sdxl_sb_str(&b, "null");
    if (reqid) {
        sdxl_sb_str(&b, ",\"id\":");
        sdxl_sb_json(&b, reqid);
    }
    sdxl_sb_str(&b, ",\"code\":");
    sdxl_sb_json(&b, code);
    sdxl_sb_str(&b, ",\"field\":");
    sdxl_sb_json(&b, field ? field : "");
    sdxl_sb_str(&b, ",\"message\":");
    sdxl_sb_json(&b, msg);
    if (is && is->n) {
        sdxl_sb_str(&b, ",\"errors\":[");
        for (int i = 0; i < is->n; i++) {
            sdxl_sb_str(&b, i ? ",{\"code\":" : "{\"code\":");
            sdxl_sb_json(&b, is->items[i].code);
            sdxl_sb_str(&b, ",\"field\":");
            sdxl_sb_json(&b, is->items[i].field);
            sdxl_sb_str(&b, ",\"message\":");
            sdxl_sb_json(&b, is->items[i].message);
            sdxl_sb_str(&b, "}");
        }
        sdxl_sb_str(&b, "]");
    }
    char one[600];
    snprintf(one, sizeof one, "%s%s%s", field && *field && !(is && is->n) ? field : "",
             field && *field && !(is && is->n) ? ": " : "", msg);
    sdxl_sb_str(&b, ",\"success\":false,\"error\":");
    sdxl_sb_json(&b, one);
    sdxl_sb_str(&b, ",\"data\":null}");
    put(p, &b);
}

/* ---- native requests -------------------------------------------------------------------------------- */

static const char *str_field(const sdxl_json *o, const char *k) {
    const sdxl_json *v = sdxl_json_get(o, k);
    return v && v->type == SDXL_JSON_STRING && strlen(v->str) == v->len ? v->str : NULL;
}

/* The request object of a submit/plan/validate line: "request" when given, else the line itself. */
static int native_request(sdxl_proto *p, const sdxl_json *o, const char *reqid, sdxl_svc_request *r,
                          sdxl_svc_issues *is) {
    (void)p;
    sdxl_svc_request_init(r);
    const sdxl_json *rq = sdxl_json_get(o, "request");
    sdxl_svc_dialect d = SDXL_DIALECT_NATIVE;
    const char *ds = str_field(o, "dialect");
    if (rq) {
        d = SDXL_DIALECT_AUTO;
        if (rq->type != SDXL_JSON_OBJECT) {
            sdxl_svc_issue_add(is, "wrong_type", "request", "must be an object");
            return SDXL_ERR_ARG;
        }
    } else {
        rq = o;
    }
    if (ds) {
        static const struct { const char *n; sdxl_svc_dialect d; } t[] = {
            {"native", SDXL_DIALECT_NATIVE}, {"orchestrator", SDXL_DIALECT_ORCH_PAYLOAD},
            {"orchestrator_csharp", SDXL_DIALECT_ORCH_CSHARP}, {"a1111_txt2img", SDXL_DIALECT_A1111_TXT2IMG},
            {"a1111_img2img", SDXL_DIALECT_A1111_IMG2IMG}, {"auto", SDXL_DIALECT_AUTO}};
        int found = 0;
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            if (!strcmp(ds, t[i].n)) {
                d = t[i].d;
                found = 1;
            }
        if (!found) {
            sdxl_svc_issue_add(is, "bad_value", "dialect",
                               "must be native, orchestrator, orchestrator_csharp, a1111_txt2img, a1111_img2img or auto");
            return SDXL_ERR_ARG;
        }
    }
    if (rq == o && d != SDXL_DIALECT_NATIVE && d != SDXL_DIALECT_AUTO) {
        sdxl_svc_issue_add(is, "missing_field", "request", "a non-native dialect travels in \"request\"");
        return SDXL_ERR_ARG;
    }
    int st = sdxl_svc_request_parse(rq, d, r, is);
    if (reqid && !r->client_id) r->client_id = sdxl_svc_request_strdup(r, reqid);
    return st;
}

static void native_reply(sdxl_proto *p, const char *event, const char *reqid, const char *body) {
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"event\":\"%s\"", event);
    if (reqid) {
        sdxl_sb_str(&b, ",\"id\":");
        sdxl_sb_json(&b, reqid);
    }
    if (body && *body) {
        sdxl_sb_str(&b, ",");
        sdxl_sb_str(&b, body);
    }
    sdxl_sb_str(&b, "}");
    put(p, &b);
}

static int native(sdxl_proto *p, const sdxl_json *o) {
    ensure_hello(p);
    const sdxl_json *opv = sdxl_json_get(o, "op");
    const sdxl_json *idv = sdxl_json_get(o, "id");
    const char *reqid = idv && idv->type == SDXL_JSON_STRING ? idv->str : NULL;
    if (idv && idv->type != SDXL_JSON_STRING && idv->type != SDXL_JSON_NULL) {
        error_line(p, NULL, NULL, NULL, "wrong_type", "id", "must be a string");
        return 0;
    }
    if (!opv) {
        error_line(p, NULL, reqid, NULL, "missing_field", "op",
                   "a native request needs \"op\" (submit, cancel, status, jobs, models, schedulers, memory, metrics, "
                   "plan, validate, shutdown); orchestrator lines carry \"action\" or \"message_type\"");
        return 0;
    }
    if (opv->type != SDXL_JSON_STRING) {
        error_line(p, NULL, reqid, NULL, "wrong_type", "op", "must be a string");
        return 0;
    }
    const char *op = opv->str;
    sdxl_svc_issues is = {0};
    sdxl_strbuf b = {0};
    if (!strcmp(op, "submit") || !strcmp(op, "plan") || !strcmp(op, "validate")) {
        sdxl_svc_request r;
        int st = native_request(p, o, reqid, &r, &is);
        int dry = 0;
        const sdxl_json *dv = sdxl_json_get(o, "dry_run");
        if (dv && dv->type == SDXL_JSON_BOOL) dry = dv->boolean;
        if (!st && (!strcmp(op, "plan") || dry || !strcmp(op, "validate"))) {
            sdxl_job_plan plan;
            st = sdxl_engine_plan(p->eng, &r, &plan, &is);
            if (!st) {
                sdxl_sb_str(&b, "\"valid\":true,\"plan\":");
                sdxl_job_plan_json(&plan, &b);
                sdxl_sb_str(&b, ",\"warnings\":[");
                for (int i = 0; i < is.n_warnings; i++) {
                    if (i) sdxl_sb_str(&b, ",");
                    sdxl_sb_json(&b, is.warnings[i]);
                }
                sdxl_sb_str(&b, "]");
                native_reply(p, "plan", reqid, b.p);
            }
        } else if (!st) {
            char id[40];
            const sdxl_json *ev = sdxl_json_get(o, "events");
            st = sdxl_engine_submit(p->eng, &r, 1, id, &is);
            (void)ev;
        }
        if (st) error_line(p, NULL, reqid, &is, "invalid_request", "", "invalid request");
        sdxl_svc_request_free(&r);
    } else if (!strcmp(op, "cancel") || !strcmp(op, "status")) {
        const char *job = str_field(o, "job");
        if (!job) {
            error_line(p, NULL, reqid, NULL, sdxl_json_get(o, "job") ? "wrong_type" : "missing_field", "job",
                       "the job id (a string) is required");
        } else if (!strcmp(op, "cancel")) {
            if (sdxl_engine_cancel(p->eng, job)) error_line(p, job, reqid, NULL, "not_found", "job", "no such job");
            else {
                sdxl_sb_str(&b, "\"op\":\"cancel\",\"job\":");
                sdxl_sb_json(&b, job);
                native_reply(p, "ok", reqid, b.p);
            }
        } else {
            sdxl_job_info ji;
            if (sdxl_engine_get(p->eng, job, &ji)) error_line(p, job, reqid, NULL, "not_found", "job", "no such job");
            else {
                sdxl_sb_str(&b, "\"job\":");
                sdxl_job_info_json(&ji, &b);
                native_reply(p, "status", reqid, b.p);
                sdxl_job_info_free(&ji);
            }
        }
    } else if (!strcmp(op, "jobs")) {
        sdxl_job_info *all = NULL;
        int n = 0;
        if (sdxl_engine_list(p->eng, &all, &n)) error_line(p, NULL, reqid, NULL, "nomem", "", "out of memory");
        else {
            sdxl_sb_str(&b, "\"jobs\":[");
            for (int i = 0; i < n; i++) {
                if (i) sdxl_sb_str(&b, ",");
                sdxl_job_info_json(&all[i], &b);
                sdxl_job_info_free(&all[i]);
            }
            sdxl_sb_str(&b, "]");
            free(all);
            native_reply(p, "jobs", reqid, b.p);
        }
    } else if (!strcmp(op, "models")) {
        sdxl_sb_str(&b, "\"models\":");
        sdxl_engine_models(p->eng, &b);
        native_reply(p, "models", reqid, b.p);
    } else if (!strcmp(op, "schedulers")) {
        sdxl_sb_str(&b, "\"samplers\":[");
        int first = 1;
        for (int k = 0; k < SDXL_SAMPLER_COUNT; k++) {
            const sdxl_sampler_traits *t = sdxl_sampler_traits_get((sdxl_sampler_kind)k);
            if (!t || !t->implemented) continue;
            sdxl_sb_printf(&b, "%s{\"name\":\"%s\",\"a1111\":", first ? "" : ",", t->name);
            sdxl_sb_json(&b, t->a1111 ? t->a1111 : "");
            sdxl_sb_str(&b, ",\"diffusers\":");
            sdxl_sb_json(&b, t->diffusers ? t->diffusers : "");
            sdxl_sb_str(&b, "}");
            first = 0;
        }
        sdxl_sb_str(&b, "],\"aliases\":[");
        for (size_t i = 0; i < sdxl_sched_alias_count(); i++) {
            const sdxl_sched_alias *a = sdxl_sched_alias_at(i);
            if (i) sdxl_sb_str(&b, ",");
            sdxl_sb_json(&b, a->name);
        }
        sdxl_sb_str(&b, "]");
        native_reply(p, "schedulers", reqid, b.p);
    } else if (!strcmp(op, "memory") || !strcmp(op, "metrics")) {
        sdxl_engine_metrics m;
        sdxl_engine_metrics_get(p->eng, &m);
        sdxl_sb_str(&b, "\"metrics\":");
        sdxl_engine_metrics_json(&m, &b);
        native_reply(p, op, reqid, b.p);
    } else if (!strcmp(op, "shutdown")) {
        /* "wait": true runs every queued job first; else only the running one finishes */
        const sdxl_json *wv = sdxl_json_get(o, "wait");
        int wait = wv && wv->type == SDXL_JSON_BOOL && wv->boolean;
        if (wait) sdxl_engine_wait_idle(p->eng, 0);
        native_reply(p, "shutdown", reqid, wait ? "\"drained\":\"all\"" : "\"drained\":\"running\"");
        sdxl_sb_free(&b);
        return 1;
    } else if (!strcmp(op, "resume")) {
        sdxl_engine_resume(p->eng);
        native_reply(p, "ok", reqid, "\"op\":\"resume\"");
    } else if (!strcmp(op, "hello")) {
        hello(p);
    } else {
        char msg[160];
        snprintf(msg, sizeof msg, "unknown op \"%.40s\"", op);
        error_line(p, NULL, reqid, NULL, "unknown_op", "op", msg);
    }
    sdxl_sb_free(&b);
    return 0;
}

/* ---- orchestrator dialect -------------------------------------------------------------------------- */

/* A failure reply; "code" (one of the documented codes) is an extra key the C# side ignores. */
static void orch_fail(sdxl_proto *p, const char *code, const char *msg) {
    sdxl_strbuf b = {0};
    sdxl_sb_str(&b, "{\"success\":false,\"error\":");
    sdxl_sb_json(&b, msg);
    sdxl_sb_str(&b, ",\"data\":null,\"code\":");
    sdxl_sb_json(&b, code);
    sdxl_sb_str(&b, "}");
    put(p, &b);
}

static void orch_ok(sdxl_proto *p, const char *data) {
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b, "{\"success\":true,\"error\":null,\"data\":%s}", data);
    put(p, &b);
}

static const char *name_code(const char *err) {
    return strstr(err, "refused") ? "path_refused" : strstr(err, "not found") ? "model_not_found" : "bad_value";
}

static void gpu_id(sdxl_proto *p, char *buf, size_t cap) { snprintf(buf, cap, "gpu_%d", p->device_index); }

static void stem(const char *path, char *out, size_t cap) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(out, cap, "%s", b);
    char *dot = strrchr(out, '.');
    if (dot && (!strcmp(dot, ".safetensors") || !strcmp(dot, ".sft") || !strcmp(dot, ".ckpt"))) *dot = 0;
}

static double clamp_finite(double v) { return isfinite(v) ? v : 0; }

/* Submits r, waits for it, and writes the enhanced reply (or the basic one for generate_image). */
static void orch_generate(sdxl_proto *p, sdxl_svc_request *r, int basic) {
    char gid[32], id[40];
    gpu_id(p, gid, sizeof gid);
    if (!r->base && p->model_path[0]) r->base = sdxl_svc_request_strdup(r, p->model_path);
    if (!r->vae && p->vae[0]) r->vae = sdxl_svc_request_strdup(r, p->vae);
    if (!r->file_prefix) r->file_prefix = basic ? "sdxl" : "enhanced_sdxl";
    if (!r->save_path && !basic) r->save_path = "outputs/";
    sdxl_svc_issues is = {0};
    if (sdxl_engine_submit(p->eng, r, 0, id, &is)) {
        char msg[2048];
        sdxl_svc_issues_join(&is, msg, sizeof msg);
        orch_fail(p, is.items[0].code, msg);
        return;
    }
    sdxl_job_info ji;
    if (sdxl_engine_wait(p->eng, id, 0, &ji)) {
        orch_fail(p, "internal", "the job vanished (out of memory?)");
        return;
    }
    if (ji.state != SDXL_JOB_DONE) {
        char msg[700];
        snprintf(msg, sizeof msg, "%s%s%s", ji.error_field[0] ? ji.error_field : "", ji.error_field[0] ? ": " : "",
                 ji.error[0] ? ji.error : ji.error_code);
        orch_fail(p, ji.error_code[0] ? ji.error_code : "internal", msg);
        sdxl_job_info_free(&ji);
        return;
    }
    const sdxl_job_metrics *m = &ji.m;
    sdxl_strbuf b = {0};
    long long seed = ji.seeds && ji.n_images ? (long long)ji.seeds[0] : 0;
    if (basic) {
        sdxl_sb_str(&b, "{\"OutputPath\":");
        sdxl_sb_json(&b, ji.n_done ? ji.paths[0] : "");
        sdxl_sb_printf(&b, ",\"GenerationTimeSeconds\":%.4f,\"Seed\":%lld,\"Width\":%d,\"Height\":%d,\"GpuId\":\"%s\"}",
                       clamp_finite(m->total_s), seed, ji.width, ji.height, gid);
    } else {
        sdxl_sb_str(&b, "{\"Images\":[");
        for (int i = 0; i < ji.n_done; i++) {
            if (i) sdxl_sb_str(&b, ",");
            sdxl_sb_json(&b, ji.paths[i]);
        }
        double pre = m->load_s + m->text_s + m->encode_s;
        sdxl_sb_printf(&b,
                       "],\"GenerationTimeSeconds\":%.4f,\"PreprocessingTimeSeconds\":%.4f,"
                       "\"PostprocessingTimeSeconds\":%.4f,\"MemoryUsedMB\":%.1f,\"SeedUsed\":%lld,"
                       "\"FeaturesUsed\":{\"lora_support\":%s,\"controlnet_support\":%s,\"refiner_support\":%s,"
                       "\"img2img\":%s,\"inpainting\":%s,\"postprocessing\":%s,\"custom_scheduler\":%s},"
                       "\"GpuId\":\"%s\",\"RequestId\":",
                       clamp_finite(m->total_s), clamp_finite(pre), clamp_finite(m->write_s),
                       (double)m->peak_rss / (1024.0 * 1024.0), seed, r->n_loras ? "true" : "false",
                       r->n_controls ? "true" : "false", r->refiner ? "true" : "false",
                       r->init_image && !r->mask ? "true" : "false", r->mask ? "true" : "false",
                       r->upscale_factor > 1 ? "true" : "false", r->g.sampler ? "true" : "false", gid);
        sdxl_sb_json(&b, ji.client_id[0] ? ji.client_id : ji.id);
        sdxl_sb_str(&b, ",\"JobId\":");
        sdxl_sb_json(&b, ji.id);
        sdxl_sb_printf(&b, ",\"Seeds\":[");
        for (int i = 0; i < ji.n_images; i++) sdxl_sb_printf(&b, "%s%lld", i ? "," : "", (long long)ji.seeds[i]);
        sdxl_sb_str(&b, "]}");
    }
    sdxl_job_info_free(&ji);
    if (b.oom) orch_fail(p, "nomem", "out of memory");
    else orch_ok(p, b.p);
    sdxl_sb_free(&b);
}

/* Parses an orchestrator request of dialect d; replies with the error line on failure. */
static int orch_parse(sdxl_proto *p, const sdxl_json *obj, const char *what, sdxl_svc_dialect d, sdxl_svc_request *r,
                      sdxl_svc_issues *is) {
    if (!obj) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: required (an object)", what);
        sdxl_svc_request_init(r);
        orch_fail(p, "missing_field", msg);
        return SDXL_ERR_ARG;
    }
    if (obj->type != SDXL_JSON_OBJECT) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: must be an object", what);
        sdxl_svc_request_init(r);
        orch_fail(p, "wrong_type", msg);
        return SDXL_ERR_ARG;
    }
    int st = sdxl_svc_request_parse(obj, d, r, is);
    if (st) {
        char msg[2048];
        sdxl_svc_issues_join(is, msg, sizeof msg);
        orch_fail(p, is->items[0].code, msg);
    }
    return st;
}

static void capabilities(sdxl_proto *p) {
    const sdxl_engine_config *c = sdxl_engine_get_config(p->eng);
    sdxl_strbuf b = {0};
    sdxl_sb_printf(&b,
                   "{\"Features\":{\"lora_support\":true,\"controlnet_support\":true,\"refiner_support\":true,"
                   "\"img2img\":true,\"inpainting\":true,\"postprocessing\":true,\"custom_scheduler\":true,"
                   "\"batch_generation\":true,\"job_journal\":%s},"
                   "\"SupportedSchedulers\":[\"DPMSolverMultistepScheduler\",\"DDIMScheduler\",\"EulerDiscreteScheduler\","
                   "\"EulerAncestralDiscreteScheduler\",\"DPMSolverSinglestepScheduler\",\"KDPM2DiscreteScheduler\","
                   "\"KDPM2AncestralDiscreteScheduler\",\"HeunDiscreteScheduler\",\"LMSDiscreteScheduler\","
                   "\"UniPCMultistepScheduler\",\"DDIM\",\"PNDM\",\"LMS\",\"EulerA\",\"EulerC\",\"Heun\",\"DPM++\","
                   "\"DPMSolverMultistep\",\"DPMSolverSinglestep\",\"Euler\",\"EulerAncestral\",\"KDPM2\","
                   "\"KDPM2Ancestral\",\"UniPC\"],"
                   "\"SupportedFormats\":[\"png\",\"jpeg\",\"jpg\",\"webp\"],\"MaxResolution\":%d,\"MaxBatchSize\":%d,"
                   "\"MemoryOptimizations\":[\"attention_slicing\",\"vae_slicing\",\"vae_tiling\",\"memory_planned_batches\","
                   "\"out_of_memory_ladder\"],\"PostprocessingOptions\":[\"upscale:lanczos\"]}",
                   c->journal ? "true" : "false", c->max_side, c->max_images);
    orch_ok(p, b.p ? b.p : "{}");
    sdxl_sb_free(&b);
}

static void status(sdxl_proto *p, int model_info) {
    sdxl_engine_metrics m;
    sdxl_engine_metrics_get(p->eng, &m);
    char gid[32];
    gpu_id(p, gid, sizeof gid);
    sdxl_strbuf b = {0};
    if (model_info) {
        sdxl_sb_str(&b, "{\"ModelId\":");
        sdxl_sb_json(&b, p->model_id);
        sdxl_sb_str(&b, ",\"ModelPath\":");
        sdxl_sb_json(&b, p->model_path);
        sdxl_sb_printf(&b, ",\"Loaded\":%s,\"GpuId\":\"%s\",\"Precision\":", m.loaded_model[0] ? "true" : "false", gid);
        const sdxl_engine_config *c = sdxl_engine_get_config(p->eng);
        sdxl_sb_json(&b, c->precision ? c->precision : "auto");
        sdxl_sb_str(&b, "}");
    } else {
        sdxl_sb_printf(&b,
                       "{\"Status\":\"%s\",\"GpuId\":\"%s\",\"QueueLength\":%d,\"ActiveJobs\":%d,\"CompletedJobs\":%d,"
                       "\"FailedJobs\":%d,\"MemoryUsedMB\":%.1f,\"MemoryAvailableMB\":%.1f,\"UptimeSeconds\":%.1f,"
                       "\"ModelLoaded\":%s,\"Metrics\":",
                       m.running ? "busy" : "ready", gid, m.queued, m.running, m.done, m.failed,
                       (double)m.rss / 1048576.0, (double)m.mem_available / 1048576.0, m.uptime_s,
                       m.loaded_model[0] ? "true" : "false");
        sdxl_engine_metrics_json(&m, &b);
        sdxl_sb_str(&b, "}");
    }
    orch_ok(p, b.p ? b.p : "{}");
    sdxl_sb_free(&b);
}

static void orchestrator(sdxl_proto *p, const sdxl_json *o) {
    const sdxl_json *mt = sdxl_json_get(o, "message_type");
    const sdxl_json *ac = sdxl_json_get(o, "action");
    const sdxl_json *disp = mt && mt->type != SDXL_JSON_NULL ? mt : ac;
    if (!disp || disp->type != SDXL_JSON_STRING) {
        orch_fail(p, "wrong_type", disp == mt ? "message_type: must be a string" : "action: must be a string");
        return;
    }
    const char *a = disp->str;
    char gid[32];
    gpu_id(p, gid, sizeof gid);
    sdxl_svc_issues is = {0};
    sdxl_svc_request r;
    sdxl_svc_request_init(&r);
    if (!strcmp(a, "initialize")) {
        const sdxl_json *di = sdxl_json_get(o, "device_index");
        if (di && di->type != SDXL_JSON_NULL) {
            if (di->type != SDXL_JSON_NUMBER || !di->is_int || di->integer < 0 || di->integer > 1024) {
                orch_fail(p, di->type != SDXL_JSON_NUMBER ? "wrong_type" : "out_of_range", "device_index: must be an integer 0..1024");
                return;
            }
            p->device_index = (int)di->integer;
        }
        gpu_id(p, gid, sizeof gid);
        char data[256];
        snprintf(data, sizeof data, "{\"GpuId\":\"%s\",\"Version\":\"%s\",\"Ready\":true,\"Device\":\"cpu\"}", gid,
                 sdxl_version());
        orch_ok(p, data);
    } else if (!strcmp(a, "load_model")) {
        const char *path = str_field(o, "model_path");
        const sdxl_json *mp = sdxl_json_get(o, "model_path");
        if (!path) {
            orch_fail(p, mp && mp->type != SDXL_JSON_NULL ? "wrong_type" : "missing_field",
                      mp && mp->type != SDXL_JSON_NULL ? "model_path: must be a string" : "model_path: required");
            return;
        }
        const sdxl_json *mtv = sdxl_json_get(o, "model_type");
        const char *type = mtv && mtv->type == SDXL_JSON_STRING ? mtv->str : "SDXL";
        if (mtv && mtv->type != SDXL_JSON_STRING && mtv->type != SDXL_JSON_NULL) {
            orch_fail(p, "wrong_type", "model_type: must be a string");
            return;
        }
        const char *mid = str_field(o, "model_id");
        double load_s = 0;
        uint64_t bytes = 0;
        char resolved[1024], err[768];
        char id[256];
        if (!strcasecmp(type, "VAE")) {
            if (sdxl_engine_resolve(p->eng, "vae", path, resolved, sizeof resolved, err, sizeof err)) {
                orch_fail(p, name_code(err), err);
                return;
            }
            snprintf(p->vae, sizeof p->vae, "%s", resolved);
            FILE *f = fopen(resolved, "rb");
            if (f) {
                fseek(f, 0, SEEK_END);
                bytes = (uint64_t)ftell(f);
                fclose(f);
            }
        } else if (!strcasecmp(type, "LoRA") || !strcasecmp(type, "ControlNet")) {
            if (sdxl_engine_resolve(p->eng, !strcasecmp(type, "LoRA") ? "lora" : "control", path, resolved,
                                    sizeof resolved, err, sizeof err)) {
                orch_fail(p, name_code(err), err);
                return;
            }
        } else {
            if (sdxl_engine_load(p->eng, path, NULL, p->vae[0] ? p->vae : NULL, &load_s, &bytes, resolved,
                                 sizeof resolved, err, sizeof err)) {
                orch_fail(p, strstr(err, "refused") || strstr(err, "not found") ? name_code(err) : "model_load", err);
                return;
            }
            snprintf(p->model_path, sizeof p->model_path, "%s", resolved);
            sdxl_engine_set_default_model(p->eng, resolved);
        }
        if (mid && *mid) snprintf(id, sizeof id, "%s", mid);
        else stem(path, id, sizeof id);
        if (strcasecmp(type, "VAE") && strcasecmp(type, "LoRA") && strcasecmp(type, "ControlNet"))
            snprintf(p->model_id, sizeof p->model_id, "%s", id);
        sdxl_strbuf b = {0};
        sdxl_sb_str(&b, "{\"ModelId\":");
        sdxl_sb_json(&b, id);
        sdxl_sb_printf(&b, ",\"LoadTimeSeconds\":%.4f,\"ModelSizeBytes\":%llu,\"GpuId\":\"%s\",\"ModelPath\":",
                       clamp_finite(load_s), (unsigned long long)bytes, gid);
        sdxl_sb_json(&b, resolved);
        sdxl_sb_str(&b, "}");
        orch_ok(p, b.p ? b.p : "{}");
        sdxl_sb_free(&b);
    } else if (!strcmp(a, "unload_model") || !strcmp(a, "cleanup_memory")) {
        sdxl_engine_metrics m0, m1;
        sdxl_engine_metrics_get(p->eng, &m0);
        sdxl_engine_unload(p->eng);
        sdxl_engine_metrics_get(p->eng, &m1);
        if (!strcmp(a, "unload_model")) {
            p->model_id[0] = p->model_path[0] = 0;
            sdxl_engine_set_default_model(p->eng, NULL);
        }
        char data[256];
        double freed = m0.rss > m1.rss ? (double)(m0.rss - m1.rss) / 1048576.0 : 0;
        snprintf(data, sizeof data, "{\"Unloaded\":true,\"MemoryFreedMB\":%.1f,\"GpuId\":\"%s\"}", freed, gid);
        orch_ok(p, data);
    } else if (!strcmp(a, "generate_image")) {
        if (orch_parse(p, sdxl_json_get(o, "parameters"), "parameters", SDXL_DIALECT_ORCH_BASIC, &r, &is) == SDXL_OK)
            orch_generate(p, &r, 1);
        sdxl_svc_request_free(&r);
    } else if (!strcmp(a, "inference_request")) {
        const sdxl_json *d = sdxl_json_get(o, "data");
        if (orch_parse(p, d, "data", SDXL_DIALECT_ORCH_PAYLOAD, &r, &is) == SDXL_OK) {
            const char *rid = str_field(o, "request_id");
            if (rid && !r.client_id) r.client_id = sdxl_svc_request_strdup(&r, rid);
            orch_generate(p, &r, 0);
        }
        sdxl_svc_request_free(&r);
    } else if (!strcmp(a, "generate_sdxl_enhanced") || !strcmp(a, "validate_request")) {
        const sdxl_json *rq = sdxl_json_get(o, "request");
        if (!rq || rq->type == SDXL_JSON_NULL) rq = sdxl_json_get(o, "request_data");
        int validate = !strcmp(a, "validate_request");
        if (validate) {
            /* validation never fails the call: the verdict is in Valid / Error */
            int st = SDXL_ERR_ARG;
            sdxl_svc_request_init(&r);
            if (!rq || rq->type != SDXL_JSON_OBJECT)
                sdxl_svc_issue_add(&is, rq ? "wrong_type" : "missing_field", "request", "an object is required");
            else if (!(st = sdxl_svc_request_parse(rq, SDXL_DIALECT_ORCH_CSHARP, &r, &is))) {
                if (!r.base && p->model_path[0]) r.base = sdxl_svc_request_strdup(&r, p->model_path);
            }
            sdxl_job_plan plan;
            if (!st) st = sdxl_engine_plan(p->eng, &r, &plan, &is);
            sdxl_strbuf b = {0};
            char msg[2048] = "";
            if (st) sdxl_svc_issues_join(&is, msg, sizeof msg);
            sdxl_sb_printf(&b, "{\"Valid\":%s,\"Error\":", st ? "false" : "true");
            sdxl_sb_json(&b, msg);
            sdxl_sb_str(&b, ",\"Warnings\":[");
            for (int i = 0; i < is.n_warnings; i++) {
                if (i) sdxl_sb_str(&b, ",");
                sdxl_sb_json(&b, is.warnings[i]);
            }
            sdxl_sb_str(&b, "],\"ValidationDetails\":{\"Errors\":[");
            for (int i = 0; i < is.n; i++) {
                sdxl_sb_str(&b, i ? ",{\"Code\":" : "{\"Code\":");
                sdxl_sb_json(&b, is.items[i].code);
                sdxl_sb_str(&b, ",\"Field\":");
                sdxl_sb_json(&b, is.items[i].field);
                sdxl_sb_str(&b, ",\"Message\":");
                sdxl_sb_json(&b, is.items[i].message);
                sdxl_sb_str(&b, "}");
            }
            sdxl_sb_str(&b, "],\"Plan\":");
            if (!st) sdxl_job_plan_json(&plan, &b);
            else sdxl_sb_str(&b, "null");
            sdxl_sb_str(&b, "}}");
            if (b.oom) orch_fail(p, "nomem", "out of memory");
            else orch_ok(p, b.p);
            sdxl_sb_free(&b);
        } else if (orch_parse(p, rq && rq->type != SDXL_JSON_NULL ? rq : NULL, "request", SDXL_DIALECT_ORCH_CSHARP, &r,
                              &is) == SDXL_OK) {
            const char *sid = str_field(o, "session_id");
            if (sid && !r.client_id) r.client_id = sdxl_svc_request_strdup(&r, sid);
            orch_generate(p, &r, 0);
        }
        sdxl_svc_request_free(&r);
    } else if (!strcmp(a, "get_capabilities")) {
        capabilities(p);
    } else if (!strcmp(a, "get_status")) {
        status(p, 0);
    } else if (!strcmp(a, "get_model_info")) {
        status(p, 1);
    } else {
        char msg[160];
        snprintf(msg, sizeof msg, "unknown %s \"%.60s\"", disp == mt ? "message_type" : "action", a);
        orch_fail(p, "unknown_op", msg);
    }
}

/* ---- lines ------------------------------------------------------------------------------------------ */

static size_t utf8_bad(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return i + 1;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return i + 1;
        if (k == 2 && c < 0xc2) return i + 1;
        if (k == 3) {
            unsigned v = ((c & 0xf) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            if (v < 0x800 || (v >= 0xd800 && v <= 0xdfff)) return i + 1;
        }
        if (k == 4) {
            unsigned v = ((c & 7) << 18) | ((s[i + 1] & 0x3fu) << 12) | ((s[i + 2] & 0x3fu) << 6) | (s[i + 3] & 0x3fu);
            if (v < 0x10000 || v > 0x10ffff) return i + 1;
        }
        i += k;
    }
    return 0;
}

int sdxl_proto_line(sdxl_proto *p, const char *line, size_t len) {
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n')) len--;
    size_t lead = 0;
    while (lead < len && (line[lead] == ' ' || line[lead] == '\t')) lead++;
    if (lead == len) return 0; /* blank lines are skipped */
    size_t bad = utf8_bad((const unsigned char *)line, len);
    if (bad) {
        char msg[128];
        snprintf(msg, sizeof msg, "invalid UTF-8 at byte %zu", bad - 1);
        error_line(p, NULL, NULL, NULL, "invalid_utf8", "", msg);
        return 0;
    }
    sdxl_json *v = NULL;
    sdxl_err e = {0};
    if (sdxl_json_parse(line, len, NULL, "line", &v, &e)) {
        error_line(p, NULL, NULL, NULL, "bad_json", "", e.msg);
        return 0;
    }
    int ret = 0;
    if (v->type != SDXL_JSON_OBJECT) {
        error_line(p, NULL, NULL, NULL, "not_object", "", "a request line must be a JSON object");
    } else if (sdxl_json_get(v, "message_type") || sdxl_json_get(v, "action")) {
        orchestrator(p, v);
    } else {
        ret = native(p, v);
    }
    sdxl_json_free(v);
    return ret;
}

void sdxl_proto_too_long(sdxl_proto *p, size_t len) {
    char msg[160];
    snprintf(msg, sizeof msg, "line of %zu bytes or more is over the %zu-byte limit; skipped", len, p->o.max_line);
    error_line(p, NULL, NULL, NULL, "line_too_long", "", msg);
}

int sdxl_proto_new(sdxl_engine *eng, const sdxl_proto_opts *o, sdxl_proto_write_fn fn, void *user, sdxl_proto **out) {
    *out = NULL;
    sdxl_proto *p = calloc(1, sizeof *p);
    if (!p) return SDXL_ERR_NOMEM;
    p->eng = eng;
    if (o) p->o = *o;
    else sdxl_proto_opts_init(&p->o);
    p->write = fn;
    p->user = user;
    pthread_mutex_init(&p->mu, NULL);
    if (p->o.hello_at_start) ensure_hello(p);
    p->token = sdxl_engine_subscribe(eng, on_event, p);
    if (!p->token) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return SDXL_ERR_LIMIT;
    }
    *out = p;
    return SDXL_OK;
}

void sdxl_proto_free(sdxl_proto *p) {
    if (!p) return;
    sdxl_engine_unsubscribe(p->eng, p->token);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
