#include "fleet/engine_runner.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


#define TMP_DIR ".fleet-tmp"

typedef struct eng_runner {
    sdxl_engine *eng;
    const char *root;
    pthread_mutex_t mu;
    char current[40];       /* engine id of the running job */
    sdxl_fleet_sink *sink;  /* of the running job */
    char model[128];
} eng_runner;

/* The seed of a job without one: 31 bits of FNV-1a of its id (fits the orchestrator's int32). */
static int64_t job_seed(const char *id) {
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *c = (const unsigned char *)id; *c; c++) h = (h ^ *c) * 1099511628211ULL;
    return (int64_t)(h & 0x7fffffff);
}

static void on_event(void *user, const sdxl_event *ev) {
    eng_runner *er = user;
    if (ev->kind != SDXL_EVENT_PROGRESS) return;
    pthread_mutex_lock(&er->mu);
    if (er->sink && !strcmp(ev->job_id, er->current)) {
        sdxl_fleet_progress p = {.phase = ev->phase, .step = ev->step, .total = ev->steps, .image = ev->image,
                                 .n_images = ev->n_images, .eta_s = ev->eta_s};
        sdxl_fleet_report(er->sink, &p);
    }
    pthread_mutex_unlock(&er->mu);
}

static int fail(sdxl_fleet_job_out *out, const char *code, const char *msg) {
    snprintf(out->error_code, sizeof out->error_code, "%s", code);
    snprintf(out->error, sizeof out->error, "%s", msg);
    return -1;
}

static int eng_run(void *user, const char *id, const char *request, const char *dir, const char *rel_dir,
                   sdxl_fleet_sink *sink, sdxl_fleet_job_out *out) {
    eng_runner *er = user;
    sdxl_json_opts jo;
    sdxl_json_opts_init(&jo);
    sdxl_json *root = NULL;
    sdxl_err e;
    if (sdxl_json_parse(request, strlen(request), &jo, "request", &root, &e)) return fail(out, "invalid_request", e.msg);
    sdxl_svc_request rq;
    sdxl_svc_issues is;
    memset(&is, 0, sizeof is);
    int st = sdxl_svc_request_parse(root, SDXL_DIALECT_AUTO, &rq, &is);
    sdxl_json_free(root);
    if (st != SDXL_OK) {
        char msg[1024];
        sdxl_svc_issues_join(&is, msg, sizeof msg);
        sdxl_svc_request_free(&rq);
        return fail(out, "invalid_request", msg);
    }
    /* the same names and seeds on every delivery of this job */
    if (rq.g.seed < 0) rq.g.seed = job_seed(id);
    rq.save_path = TMP_DIR;
    rq.file_prefix = sdxl_svc_request_strdup(&rq, id);
    char eid[40] = "";
    memset(&is, 0, sizeof is);
    pthread_mutex_lock(&er->mu);
    er->sink = sink;
    er->current[0] = 0;
    pthread_mutex_unlock(&er->mu);
    st = rq.file_prefix ? sdxl_engine_submit(er->eng, &rq, 1, eid, &is) : SDXL_ERR_NOMEM;
    sdxl_svc_request_free(&rq);
    if (st != SDXL_OK) {
        char msg[1024];
        sdxl_svc_issues_join(&is, msg, sizeof msg);
        pthread_mutex_lock(&er->mu);
        er->sink = NULL;
        pthread_mutex_unlock(&er->mu);
        return fail(out, st == SDXL_ERR_ARG ? "invalid_request" : st == SDXL_ERR_LIMIT ? "busy" : "runtime", msg);
    }
    pthread_mutex_lock(&er->mu);
    snprintf(er->current, sizeof er->current, "%s", eid);
    pthread_mutex_unlock(&er->mu);
    sdxl_job_info info;
    memset(&info, 0, sizeof info);
    st = sdxl_engine_wait(er->eng, eid, 0, &info);
    pthread_mutex_lock(&er->mu);
    er->sink = NULL;
    er->current[0] = 0;
    pthread_mutex_unlock(&er->mu);
    if (st != SDXL_OK) return fail(out, "runtime", "the engine lost the job");
    int rc = 0;
    if (info.state != SDXL_JOB_DONE) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s%s%s", info.error_field, info.error_field[0] ? ": " : "", info.error);
        rc = fail(out, info.error_code[0] ? info.error_code : "runtime", msg);
    } else {
        sdxl_sb_str(&out->outputs, "[");
        sdxl_sb_str(&out->seeds, "[");
        for (int i = 0; i < info.n_done && !rc; i++) {
            const char *src = info.paths[i];
            const char *dot = strrchr(src, '.');
            char dst[4096], rel[512];
            snprintf(dst, sizeof dst, "%s/%d%s", dir, i, dot ? dot : "");
            snprintf(rel, sizeof rel, "%s/%d%s", rel_dir, i, dot ? dot : "");
            if (rename(src, dst) != 0) {
                char msg[1024];
                snprintf(msg, sizeof msg, "%s -> %s: %s", src, dst, strerror(errno));
                rc = fail(out, "output", msg);
                break;
            }
            sdxl_sb_str(&out->outputs, i ? "," : "");
            sdxl_sb_json(&out->outputs, rel);
        }
        for (int i = 0; i < info.n_images; i++) sdxl_sb_printf(&out->seeds, "%s%lld", i ? "," : "", (long long)info.seeds[i]);
        sdxl_sb_str(&out->outputs, "]");
        sdxl_sb_str(&out->seeds, "]");
        const sdxl_job_metrics *m = &info.m;
        sdxl_sb_printf(&out->stats,
                       "{\"images\":%d,\"load_s\":%.3f,\"text_s\":%.3f,\"encode_s\":%.3f,\"base_s\":%.3f,"
                       "\"refiner_s\":%.3f,\"decode_s\":%.3f,\"write_s\":%.3f,\"total_s\":%.3f,\"peak_rss\":%llu,"
                       "\"unet_calls\":%d,\"rung\":%d,\"model_cache_hit\":%d}",
                       info.n_images, m->load_s, m->text_s, m->encode_s, m->base_s, m->refiner_s, m->decode_s,
                       m->write_s, m->total_s, (unsigned long long)m->peak_rss, m->unet_calls, m->rung,
                       m->model_cache_hit);
    }
    sdxl_job_info_free(&info);
    return rc;
}

static void eng_cancel(void *user) {
    eng_runner *er = user;
    char id[40];
    pthread_mutex_lock(&er->mu);
    snprintf(id, sizeof id, "%s", er->current);
    pthread_mutex_unlock(&er->mu);
    if (id[0]) sdxl_engine_cancel(er->eng, id);
}

/* Engine outputs of workers killed before the rename: removed once they are an hour old. */
static void sweep_tmp(const char *root) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, TMP_DIR);
    DIR *d = opendir(dir);
    if (!d) return;
    time_t now = time(NULL);
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.') continue;
        char path[4096 + 256];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && now - sb.st_mtime > 3600) unlink(path);
    }
    closedir(d);
}

static void log_line(void *user, sdxl_log_level level, const char *msg) {
    (void)user;
    (void)level;
    fprintf(stderr, "sdxl worker: %s\n", msg);
}

int sdxl_fleet_engine_run(sdxl_engine *eng, sdxl_fleet_worker_params *p, const char *output_root,
                          const char *default_model, const atomic_int *stop) {
    eng_runner er;
    memset(&er, 0, sizeof er);
    er.eng = eng;
    er.root = output_root && *output_root ? output_root : ".";
    pthread_mutex_init(&er.mu, NULL);
    /* the model's stem names its stream */
    const char *base = default_model ? strrchr(default_model, '/') : NULL;
    base = base && base[1] ? base + 1 : default_model ? default_model : "";
    snprintf(er.model, sizeof er.model, "%s", base);
    char *dot = strstr(er.model, ".safetensors");
    if (dot) *dot = 0;
    for (char *c = er.model; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
              *c == '_' || *c == '-'))
            *c = '_';
    const char *models[1] = {er.model};
    if (p->n_models == 0 && er.model[0] && er.model[0] != '.') {
        p->models = models;
        p->n_models = 1;
    }
    p->output_dir = er.root;
    p->stop = stop;
    sdxl_logger lg = {.fn = log_line, .level = SDXL_LOG_INFO};
    if (!p->log) p->log = &lg;
    sweep_tmp(er.root);
    /* take jobs only once the default model is loaded: a job is never held through a cold load */
    if (default_model && *default_model) {
        double load_s = 0;
        uint64_t bytes = 0;
        char resolved[1024], err[512];
        if (sdxl_engine_load(eng, default_model, NULL, NULL, &load_s, &bytes, resolved, sizeof resolved, err,
                             sizeof err))
            SDXL_WARN(p->log, "model not preloaded (the first job loads it): %s", err);
        else
            SDXL_INFO(p->log, "%s loaded in %.2f s", resolved, load_s);
    }
    sdxl_fleet_runner rn = {.user = &er, .run = eng_run, .cancel = eng_cancel, .model = er.model};
    int tok = sdxl_engine_subscribe(eng, on_event, &er);
    sdxl_err e;
    int rc = sdxl_fleet_worker_run(p, &rn, &e);
    if (tok) sdxl_engine_unsubscribe(eng, tok);
    pthread_mutex_destroy(&er.mu);
    if (rc) fprintf(stderr, "sdxl worker: %s\n", e.msg);
    return rc ? 1 : 0;
}

const char *sdxl_fleet_worker_usage(void) {
    return "fleet (docs/fleet.md): take jobs from a Redis stream instead of stdin\n"
           "  --redis URL           redis://[[user]:password@]host[:port][/db]; images go to\n"
           "                        <output-root>/<job id>/<i>.<ext>\n"
           "  --fleet-prefix P      key prefix (default sdxl)\n"
           "  --worker-id ID        (default <host>-<pid>-<random>)\n"
           "  --stream-model NAME   read P:jobs:NAME before P:jobs (repeatable; default: -m's stem)\n"
           "  --visibility-ms N     a dead worker's job is claimed within this (default 30000)\n"
           "  --max-deliveries N    the next delivery fails the job as worker_crashed (default 3)\n"
           "  --heartbeat-ms N      (default 1000; the key lives 5 beats)\n"
           "  --result-ttl S        result records expire after S seconds (default 0: kept)\n"
           "  --idle-exit-ms N      stop after N ms without a job (default 0: never)\n";
}

static int num(const char *name, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "sdxl worker: %s: must be an integer in %ld..%ld\n", name, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int sdxl_fleet_worker_option(sdxl_fleet_worker_params *p, const char **models, int argc, char **argv, int *i) {
    static const char *const OPTS[] = {"--redis", "--fleet-prefix", "--worker-id", "--stream-model", "--visibility-ms",
                                       "--max-deliveries", "--heartbeat-ms", "--result-ttl", "--idle-exit-ms"};
    const char *a = argv[*i];
    size_t k = 0;
    while (k < sizeof OPTS / sizeof OPTS[0] && strcmp(a, OPTS[k])) k++;
    if (k == sizeof OPTS / sizeof OPTS[0]) return 0;
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    if (!v) {
        fprintf(stderr, "sdxl worker: %s needs a value\n", a);
        return -1;
    }
    ++*i;
    long x = 0;
    sdxl_err e;
    switch (k) {
    case 0: p->url = v; break;
    case 1:
        if (sdxl_fleet_check_name("--fleet-prefix", v, &e)) return fprintf(stderr, "sdxl worker: %s\n", e.msg), -1;
        p->prefix = v;
        break;
    case 2: p->id = v; break;
    case 3:
        if (p->n_models >= 11) return fprintf(stderr, "sdxl worker: at most 11 --stream-model\n"), -1;
        models[p->n_models++] = v;
        p->models = models;
        break;
    case 4: if (num(a, v, 100, 86400000, &x)) return -1; p->visibility_ms = (int)x; break;
    case 5: if (num(a, v, 1, 1000, &x)) return -1; p->max_deliveries = (int)x; break;
    case 6: if (num(a, v, 10, 3600000, &x)) return -1; p->heartbeat_ms = (int)x; break;
    case 7: if (num(a, v, 0, 1L << 31, &x)) return -1; p->result_ttl_s = x; break;
    case 8: if (num(a, v, 0, 1L << 30, &x)) return -1; p->idle_exit_ms = (int)x; break;
    }
    return 1;
}
