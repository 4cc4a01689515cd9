/* `sdxl fleet`: many workers sharing one job queue on Redis Streams.
 *   submit  queue requests (JSON objects, one per line, or a file); prints one job id per line
 *   wait    wait for jobs to finish and print their records
 *   result  print one job's record
 *   status  workers, queue depth, pending and dead jobs
 *   events  the lifecycle log: one line per submitted/started/claimed/done/failed/dead event
 * Workers are `sdxl worker --redis URL` (cli/cmd_worker.c, src/fleet/engine_runner.c).
 * Exit codes: 0 ok, 1 failure, 2 usage, 3 busy (submit) / timeout (wait). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fleet/queue.h"
#include "fleet/status.h"
#include "io/json.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_BUSY 3

static int usage(FILE *out) {
    fprintf(out,
            "usage: sdxl fleet <submit|wait|result|status|events> --redis URL [options]\n"
            "\n"
            "common:\n"
            "      --redis URL            redis://[[user]:password@]host[:port][/db] (default redis://127.0.0.1:6379)\n"
            "      --prefix P             key prefix (default sdxl)\n"
            "      --retry-ms N           how long to retry an unreachable server (default 10000)\n"
            "submit [FILE|-]              requests: a JSON file, or JSON objects one per line on stdin\n"
            "      --model NAME           queue on the model's own stream P:jobs:NAME (default: P:jobs)\n"
            "      --id ID                job id of a single request (default: random)\n"
            "      --id-prefix P          ids P1, P2, ... for the requests in order\n"
            "      --max-queue N          refuse with \"busy\" (exit 3) when the stream holds N jobs (default 0: no limit)\n"
            "wait ID... | -               ids as arguments or one per line on stdin; prints each record as a JSON line\n"
            "      --timeout S            give up after S seconds (exit 3; default 0: wait forever)\n"
            "result ID                    the job's record as JSON (state, outputs, seeds, stats, error)\n"
            "status                       workers, queue depth, pending and dead jobs\n"
            "      --json                 as one JSON object\n"
            "events                       lifecycle log, one line each: AT_MS EVENT JOB WORKER FROM DELIVERY\n"
            "\nworkers: sdxl worker --redis URL -m MODEL --output-root DIR (see `sdxl worker --help`)\n");
    return out == stdout ? 0 : EXIT_USAGE;
}

typedef struct common {
    const char *url, *prefix;
    long retry_ms;
} common;

/* Parses a common option at argv[*i]; 1 if it was one, -1 on a bad value, 0 otherwise. */
static int common_opt(common *c, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (strcmp(a, "--redis") && strcmp(a, "--prefix") && strcmp(a, "--retry-ms")) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "sdxl fleet: %s needs a value\n", a);
        return -1;
    }
    const char *v = argv[++*i];
    if (!strcmp(a, "--redis")) c->url = v;
    if (!strcmp(a, "--prefix")) {
        sdxl_err e;
        if (sdxl_fleet_check_name("--prefix", v, &e)) {
            fprintf(stderr, "sdxl fleet: %s\n", e.msg);
            return -1;
        }
        c->prefix = v;
    }
    if (!strcmp(a, "--retry-ms")) c->retry_ms = atol(v);
    return 1;
}

static int num_arg(const char *name, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "sdxl fleet: %s: must be an integer in %ld..%ld\n", name, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int open_redis(const common *c, sdxl_redis *r) {
    sdxl_redis_url url;
    sdxl_err e;
    if (sdxl_redis_url_parse(c->url, &url, &e)) {
        fprintf(stderr, "sdxl fleet: --redis: %s\n", e.msg);
        return -1;
    }
    sdxl_redis_init(r, &url);
    r->retry_for_ms = c->retry_ms;
    if (sdxl_redis_connect(r, &e)) {
        fprintf(stderr, "sdxl fleet: %s\n", e.msg);
        return -1;
    }
    return 0;
}

/* Reads a whole stream into a NUL-terminated buffer. */
static char *slurp(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        if (n + 1 >= cap) {
            char *nb = cap > (SIZE_MAX >> 1) ? NULL : realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return NULL;
            }
            b = nb;
            cap *= 2;
        }
        size_t got = fread(b + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) break;
    }
    if (b) b[n] = 0;
    *len = n;
    return b;
}

static int submit_one(sdxl_redis *r, const common *c, const char *stream, const char *id, const char *req,
                      size_t len, long max_queue, int lineno) {
    sdxl_json_opts jo;
    sdxl_json_opts_init(&jo);
    sdxl_json *v = NULL;
    sdxl_err e;
    char what[64];
    snprintf(what, sizeof what, lineno ? "request line %d" : "request", lineno);
    if (sdxl_json_parse(req, len, &jo, what, &v, &e)) {
        fprintf(stderr, "sdxl fleet submit: %s\n", e.msg);
        return EXIT_USAGE;
    }
    int obj = v->type == SDXL_JSON_OBJECT;
    sdxl_json_free(v);
    if (!obj) {
        fprintf(stderr, "sdxl fleet submit: %s: must be a JSON object\n", what);
        return EXIT_USAGE;
    }
    long depth = 0;
    int st = sdxl_fleet_submit(r, c->prefix, stream, id, req, len, max_queue, &depth, &e);
    if (st < 0) {
        fprintf(stderr, "sdxl fleet submit: %s\n", e.msg);
        return EXIT_FAIL;
    }
    if (st == SDXL_FLEET_BUSY) {
        fprintf(stderr, "sdxl fleet submit: busy: %s holds %ld jobs (limit %ld); try again later\n", stream, depth,
                max_queue);
        return EXIT_BUSY;
    }
    if (st == SDXL_FLEET_CONFLICT) {
        fprintf(stderr, "sdxl fleet submit: job id '%s' is taken by another request\n", id);
        return EXIT_USAGE;
    }
    printf("%s\n", id);
    fflush(stdout);
    return 0;
}

static int cmd_submit(int argc, char **argv, common *c) {
    const char *model = NULL, *id = NULL, *id_prefix = NULL, *file = NULL;
    long max_queue = 0;
    for (int i = 1; i < argc; i++) {
        int k = common_opt(c, argc, argv, &i);
        if (k < 0) return EXIT_USAGE;
        if (k) continue;
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--model") && has) model = argv[++i];
        else if (!strcmp(a, "--id") && has) id = argv[++i];
        else if (!strcmp(a, "--id-prefix") && has) id_prefix = argv[++i];
        else if (!strcmp(a, "--max-queue") && has) {
            if (num_arg("--max-queue", argv[++i], 0, 1L << 40, &max_queue)) return EXIT_USAGE;
        } else if ((a[0] != '-' || !strcmp(a, "-")) && !file) file = a;
        else {
            fprintf(stderr, "sdxl fleet submit: unknown option or missing value: %s\n", a);
            return EXIT_USAGE;
        }
    }
    sdxl_err e;
    if (model && sdxl_fleet_check_name("--model", model, &e)) return fprintf(stderr, "sdxl fleet submit: %s\n", e.msg), EXIT_USAGE;
    if (id && sdxl_fleet_check_name("--id", id, &e)) return fprintf(stderr, "sdxl fleet submit: %s\n", e.msg), EXIT_USAGE;
    if (id_prefix && strlen(id_prefix) > 48) return fprintf(stderr, "sdxl fleet submit: --id-prefix: too long\n"), EXIT_USAGE;
    char stream[256];
    sdxl_fleet_stream_key(stream, sizeof stream, c->prefix, model);
    size_t len = 0;
    char *text;
    int whole = 0;
    if (file && strcmp(file, "-")) {
        FILE *f = fopen(file, "rb");
        if (!f) return fprintf(stderr, "sdxl fleet submit: %s: %s\n", file, strerror(errno)), EXIT_FAIL;
        text = slurp(f, &len);
        fclose(f);
        whole = 1;
    } else {
        text = slurp(stdin, &len);
    }
    if (!text) return fprintf(stderr, "sdxl fleet submit: out of memory\n"), EXIT_FAIL;
    sdxl_redis r;
    if (open_redis(c, &r)) {
        free(text);
        return EXIT_FAIL;
    }
    int rc = 0, n = 0;
    char *p = text, *end = text + len;
    while (p < end && !rc) {
        char *nl = whole ? end : memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        char *q = p;
        while (q < nl && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < nl) {
            n++;
            if (n > 1 && id) {
                fprintf(stderr, "sdxl fleet submit: --id names one request; use --id-prefix for several\n");
                rc = EXIT_USAGE;
                break;
            }
            char gen[SDXL_FLEET_NAME_MAX];
            if (id)
                snprintf(gen, sizeof gen, "%s", id);
            else if (id_prefix)
                snprintf(gen, sizeof gen, "%s%d", id_prefix, n);
            else
                sdxl_fleet_new_id(gen, sizeof gen);
            if (sdxl_fleet_check_name("job id", gen, &e)) {
                fprintf(stderr, "sdxl fleet submit: %s\n", e.msg);
                rc = EXIT_USAGE;
                break;
            }
            rc = submit_one(&r, c, stream, gen, q, (size_t)(nl - q), max_queue, whole ? 0 : n);
        }
        p = nl + 1;
    }
    if (!rc && n == 0) {
        fprintf(stderr, "sdxl fleet submit: no request given\n");
        rc = EXIT_USAGE;
    }
    sdxl_redis_close(&r);
    free(text);
    return rc;
}

static int print_job(sdxl_redis *r, const common *c, const char *id, int *state_out) {
    sdxl_strbuf b = {0};
    sdxl_err e;
    int f = sdxl_fleet_job_json(r, c->prefix, id, &b, &e);
    if (f < 0) fprintf(stderr, "sdxl fleet: %s\n", e.msg);
    if (f == 0) fprintf(stderr, "sdxl fleet: no job '%s'\n", id);
    if (f > 0) {
        printf("%s\n", b.p);
        fflush(stdout);
        if (state_out) *state_out = strstr(b.p, "\"state\":\"done\"") ? 1 : 0;
    }
    sdxl_sb_free(&b);
    return f > 0 ? 0 : EXIT_FAIL;
}

static int cmd_result(int argc, char **argv, common *c) {
    const char *id = NULL;
    for (int i = 1; i < argc; i++) {
        int k = common_opt(c, argc, argv, &i);
        if (k < 0) return EXIT_USAGE;
        if (k) continue;
        if (argv[i][0] != '-' && !id) id = argv[i];
        else return fprintf(stderr, "sdxl fleet result: unknown option: %s\n", argv[i]), EXIT_USAGE;
    }
    if (!id) return fprintf(stderr, "sdxl fleet result: a job id is required\n"), EXIT_USAGE;
    sdxl_err e;
    if (sdxl_fleet_check_name("job id", id, &e)) return fprintf(stderr, "sdxl fleet result: %s\n", e.msg), EXIT_USAGE;
    sdxl_redis r;
    if (open_redis(c, &r)) return EXIT_FAIL;
    int rc = print_job(&r, c, id, NULL);
    sdxl_redis_close(&r);
    return rc;
}

static int cmd_wait(int argc, char **argv, common *c) {
    long timeout = 0;
    char **ids = calloc((size_t)argc + 1, sizeof *ids);
    int n = 0, from_stdin = 0;
    char *text = NULL;
    if (!ids) return EXIT_FAIL;
    for (int i = 1; i < argc; i++) {
        int k = common_opt(c, argc, argv, &i);
        if (k < 0) return free(ids), EXIT_USAGE;
        if (k) continue;
        if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            if (num_arg("--timeout", argv[++i], 0, 1L << 30, &timeout)) return free(ids), EXIT_USAGE;
        } else if (!strcmp(argv[i], "-")) from_stdin = 1;
        else if (argv[i][0] != '-') ids[n++] = argv[i];
        else return free(ids), fprintf(stderr, "sdxl fleet wait: unknown option: %s\n", argv[i]), EXIT_USAGE;
    }
    if (from_stdin) {
        size_t len;
        text = slurp(stdin, &len);
        size_t cnt = 0;
        for (size_t i = 0; text && i < len; i++) cnt += text[i] == '\n';
        char **more = text ? realloc(ids, ((size_t)n + cnt + 2) * sizeof *ids) : NULL;
        if (!more) return free(text), free(ids), EXIT_FAIL;
        ids = more;
        for (char *tok = strtok(text, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) ids[n++] = tok;
    }
    if (!n) return free(text), free(ids), fprintf(stderr, "sdxl fleet wait: no job id given\n"), EXIT_USAGE;
    for (int i = 0; i < n; i++) {
        sdxl_err ne;
        if (sdxl_fleet_check_name("job id", ids[i], &ne)) {
            fprintf(stderr, "sdxl fleet wait: %s\n", ne.msg);
            free(text);
            free(ids);
            return EXIT_USAGE;
        }
    }
    sdxl_redis r;
    if (open_redis(c, &r)) return free(text), free(ids), EXIT_FAIL;
    int64_t t0 = sdxl_now_ms();
    int rc = 0, failed = 0;
    sdxl_err e;
    for (int i = 0; i < n && !rc; i++) {
        char key[256];
        snprintf(key, sizeof key, "%s:job:%s", c->prefix, ids[i]);
        for (;;) {
            redisReply *st = sdxl_redis_cmdf(&r, &e, "HGET %s state", key);
            if (!st) {
                fprintf(stderr, "sdxl fleet wait: %s\n", e.msg);
                rc = EXIT_FAIL;
                break;
            }
            int fin = st->type == REDIS_REPLY_STRING && (!strcmp(st->str, "done") || !strcmp(st->str, "failed"));
            int none = st->type == REDIS_REPLY_NIL;
            freeReplyObject(st);
            if (none) {
                fprintf(stderr, "sdxl fleet wait: no job '%s'\n", ids[i]);
                rc = EXIT_FAIL;
                break;
            }
            if (fin) {
                int ok = 0;
                rc = print_job(&r, c, ids[i], &ok);
                failed += !ok;
                break;
            }
            if (timeout > 0 && sdxl_now_ms() - t0 >= timeout * 1000) {
                fprintf(stderr, "sdxl fleet wait: timed out after %ld s waiting for '%s'\n", timeout, ids[i]);
                rc = EXIT_BUSY;
                break;
            }
            sdxl_sleep_ms(50);
        }
    }
    sdxl_redis_close(&r);
    free(text);
    free(ids);
    return rc ? rc : failed ? EXIT_FAIL : 0;
}

static int cmd_status(int argc, char **argv, common *c) {
    int json = 0;
    for (int i = 1; i < argc; i++) {
        int k = common_opt(c, argc, argv, &i);
        if (k < 0) return EXIT_USAGE;
        if (k) continue;
        if (!strcmp(argv[i], "--json")) json = 1;
        else return fprintf(stderr, "sdxl fleet status: unknown option: %s\n", argv[i]), EXIT_USAGE;
    }
    sdxl_redis r;
    if (open_redis(c, &r)) return EXIT_FAIL;
    sdxl_strbuf b = {0};
    sdxl_err e;
    int rc = sdxl_fleet_status_json(&r, c->prefix, &b, &e);
    sdxl_redis_close(&r);
    if (rc) {
        fprintf(stderr, "sdxl fleet status: %s\n", e.msg);
        sdxl_sb_free(&b);
        return EXIT_FAIL;
    }
    if (json) {
        printf("%s\n", b.p);
        sdxl_sb_free(&b);
        return 0;
    }
    sdxl_json *v = NULL;
    if (sdxl_json_parse(b.p, b.n, NULL, "status", &v, &e)) {
        fprintf(stderr, "sdxl fleet status: %s\n", e.msg);
        sdxl_sb_free(&b);
        return EXIT_FAIL;
    }
    const sdxl_json *streams = sdxl_json_get(v, "streams"), *workers = sdxl_json_get(v, "workers");
    printf("%-28s %8s %8s %8s\n", "stream", "waiting", "pending", "total");
    for (size_t i = 0; streams && i < streams->len; i++) {
        const sdxl_json *s = sdxl_json_at(streams, i);
        printf("%-28s %8lld %8lld %8lld\n", sdxl_json_str(s, "stream", "?"), (long long)sdxl_json_i64(s, "waiting", 0),
               (long long)sdxl_json_i64(s, "pending", 0), (long long)sdxl_json_i64(s, "length", 0));
    }
    const sdxl_json *st = sdxl_json_get(v, "stats");
    printf("\ndone %lld, failed %lld, dead %lld (dead-letter stream: %lld), claimed after a worker stopped %lld, "
           "duplicate finishes %lld, cancelled without a run %lld\n",
           (long long)sdxl_json_i64(st, "done", 0), (long long)sdxl_json_i64(st, "failed", 0),
           (long long)sdxl_json_i64(st, "dead", 0), (long long)sdxl_json_i64(v, "dead", 0),
           (long long)sdxl_json_i64(st, "claims", 0), (long long)sdxl_json_i64(st, "duplicate_finishes", 0),
           (long long)sdxl_json_i64(st, "cancelled", 0));
    printf("\n%zu worker(s)\n", workers ? workers->len : 0);
    for (size_t i = 0; workers && i < workers->len; i++) {
        const sdxl_json *w = sdxl_json_at(workers, i);
        printf("  %-32s %-8s job %-18s model %-20s done %lld failed %lld rss %.0f MiB avail %.0f MiB\n",
               sdxl_json_str(w, "id", "?"), sdxl_json_str(w, "state", "?"),
               *sdxl_json_str(w, "job", "") ? sdxl_json_str(w, "job", "") : "-", sdxl_json_str(w, "model", "?"),
               (long long)sdxl_json_i64(w, "jobs_done", 0), (long long)sdxl_json_i64(w, "jobs_failed", 0),
               sdxl_json_num(w, "rss", 0) / 1048576.0, sdxl_json_num(w, "mem_available", 0) / 1048576.0);
    }
    sdxl_json_free(v);
    sdxl_sb_free(&b);
    return 0;
}

static int cmd_events(int argc, char **argv, common *c) {
    for (int i = 1; i < argc; i++) {
        int k = common_opt(c, argc, argv, &i);
        if (k < 0) return EXIT_USAGE;
        if (!k) return fprintf(stderr, "sdxl fleet events: unknown option: %s\n", argv[i]), EXIT_USAGE;
    }
    sdxl_redis r;
    if (open_redis(c, &r)) return EXIT_FAIL;
    sdxl_err e;
    char start[64] = "-";
    int rc = 0;
    for (;;) {
        redisReply *rep = sdxl_redis_cmdf(&r, &e, "XRANGE %s:events %s + COUNT 1000", c->prefix, start);
        if (!rep || rep->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "sdxl fleet events: %s\n", rep && rep->type == REDIS_REPLY_ERROR ? rep->str : e.msg);
            if (rep) freeReplyObject(rep);
            rc = EXIT_FAIL;
            break;
        }
        for (size_t i = 0; i < rep->elements; i++) {
            const redisReply *en = rep->element[i];
            if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 || en->element[1]->type != REDIS_REPLY_ARRAY) continue;
            const char *f[6] = {"-", "-", "-", "-", "-", "-"};
            static const char *const NAMES[6] = {"at", "event", "id", "worker", "from", "delivery"};
            const redisReply *kv = en->element[1];
            for (size_t k = 0; k + 1 < kv->elements; k += 2)
                for (int j = 0; j < 6; j++)
                    if (!strcmp(kv->element[k]->str, NAMES[j]) && kv->element[k + 1]->len) f[j] = kv->element[k + 1]->str;
            printf("%s %s %s %s %s %s\n", f[0], f[1], f[2], f[3], f[4], f[5]);
            snprintf(start, sizeof start, "(%s", en->element[0]->str);
        }
        int more = rep->elements == 1000;
        freeReplyObject(rep);
        if (!more) break;
    }
    sdxl_redis_close(&r);
    return rc;
}

int cmd_fleet(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) return usage(argc < 2 ? stderr : stdout);
    common c = {.url = "redis://127.0.0.1:6379", .prefix = "sdxl", .retry_ms = 10000};
    const char *sub = argv[1];
    if (!strcmp(sub, "submit")) return cmd_submit(argc - 1, argv + 1, &c);
    if (!strcmp(sub, "wait")) return cmd_wait(argc - 1, argv + 1, &c);
    if (!strcmp(sub, "result")) return cmd_result(argc - 1, argv + 1, &c);
    if (!strcmp(sub, "status")) return cmd_status(argc - 1, argv + 1, &c);
    if (!strcmp(sub, "events")) return cmd_events(argc - 1, argv + 1, &c);
    fprintf(stderr, "sdxl fleet: unknown subcommand '%s'\n", sub);
    return usage(stderr);
}
