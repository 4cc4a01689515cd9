/* bench-fleet: jobs per minute of 1, 2, 3... `sdxl worker --redis` processes sharing one Redis stream
 * on the tiny test model, and the queue's own cost per job: submit + XREADGROUP + start + finish
 * (the Lua scripts that record and XACK) with no work in between, and the gap a worker spends
 * between two jobs. Starts a private redis-server on a loopback port unless --redis is given.
 *
 *   bench-fleet [--redis URL] [--sdxl ./build/sdxl] [--model tests/data/golden/models/tiny_sd_xl_base.safetensors]
 *               [--jobs 30] [--workers 1,2,3] [--size 128] [--steps 8] [--threads 1] [--ops 2000]
 *
 * Throughput runs from the first job's start to the last job's finish (workers load the model
 * before they take jobs). On
 * a machine with fewer cores than workers x threads, more workers show the queue's overhead and
 * the CPU contention, not scaling. Run from the repository root. */
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fleet/queue.h"
#include "io/json.h"
#include "peak.h"

extern char **environ;

typedef struct job_rec {
    int64_t started, finished;
    double compute_s;
    char worker[64];
} job_rec;

/* Runs argv with stderr to /dev/null. */
static pid_t spawn(char *const argv[]) {
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    return rc ? -1 : pid;
}

static int hget(sdxl_redis *r, const char *key, const char *field, char *out, size_t cap) {
    sdxl_err e;
    const char *argv[] = {"HGET", key, field};
    redisReply *rep = sdxl_redis_cmd(r, 3, argv, NULL, &e);
    int ok = rep && rep->type == REDIS_REPLY_STRING;
    if (ok) snprintf(out, cap, "%s", rep->str);
    if (rep) freeReplyObject(rep);
    return ok ? 0 : -1;
}

/* The queue path alone, n times: ms per job for each step. */
static int queue_overhead(sdxl_redis *r, int n) {
    char prefix[64], stream[128];
    snprintf(prefix, sizeof prefix, "benchq%ld", (long)getpid());
    sdxl_fleet_stream_key(stream, sizeof stream, prefix, NULL);
    const char *streams[] = {stream};
    sdxl_err e;
    double t_sub = 0, t_read = 0, t_start = 0, t_fin = 0;
    const char *req = "{\"prompt\":\"a lighthouse at dusk\",\"width\":128,\"height\":128,\"steps\":8,\"seed\":1}";
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "q%d", i);
        double t0 = bench_now();
        long depth;
        if (sdxl_fleet_submit(r, prefix, stream, id, req, strlen(req), 0, &depth, &e) != SDXL_FLEET_SUBMITTED) goto fail;
        double t1 = bench_now();
        sdxl_fleet_entry en;
        if (sdxl_fleet_read(r, "bench", streams, 1, 0, &en, &e) != 1) goto fail;
        double t2 = bench_now();
        char *rq = NULL;
        int d;
        if (sdxl_fleet_start(r, prefix, "bench", &en, 3, &rq, &d, &e) != SDXL_FLEET_RUN) goto fail;
        free(rq);
        double t3 = bench_now();
        sdxl_fleet_result res = {.ok = 1, .outputs = "[\"q/0.png\"]", .seeds = "[1]", .stats = "{\"total_s\":0.1}"};
        if (sdxl_fleet_finish(r, prefix, "bench", &en, &res, 60, &e) != SDXL_FLEET_RECORDED) goto fail;
        double t4 = bench_now();
        t_sub += t1 - t0, t_read += t2 - t1, t_start += t3 - t2, t_fin += t4 - t3;
    }
    printf("queue overhead per job (%d jobs, no work): %.3f ms = submit %.3f + read %.3f + start %.3f + finish %.3f\n", n,
           1e3 * (t_sub + t_read + t_start + t_fin) / n, 1e3 * t_sub / n, 1e3 * t_read / n, 1e3 * t_start / n,
           1e3 * t_fin / n);
    return 0;
fail:
    fprintf(stderr, "bench-fleet: queue path: %s\n", e.msg);
    return -1;
}

static int run_fleet(sdxl_redis *r, const char *url, const char *sdxl, const char *model, int jobs, int workers,
                     int size, int steps, const char *threads, const char *outdir) {
    char prefix[64], stream[128];
    snprintf(prefix, sizeof prefix, "bench%ld-%d", (long)getpid(), workers);
    sdxl_fleet_stream_key(stream, sizeof stream, prefix, NULL);
    sdxl_err e;
    for (int i = 0; i < jobs; i++) {
        char id[32], req[256];
        snprintf(id, sizeof id, "j%d", i + 1);
        snprintf(req, sizeof req,
                 "{\"prompt\":\"a lighthouse at dusk, number %d\",\"width\":%d,\"height\":%d,\"steps\":%d,\"seed\":%d}",
                 i + 1, size, size, steps, i + 1);
        long depth;
        if (sdxl_fleet_submit(r, prefix, stream, id, req, strlen(req), 0, &depth, &e) != SDXL_FLEET_SUBMITTED) {
            fprintf(stderr, "bench-fleet: submit: %s\n", e.msg);
            return -1;
        }
    }
    pid_t pids[64];
    int n = 0;
    for (int w = 0; w < workers && w < 64; w++) {
        char wid[32];
        snprintf(wid, sizeof wid, "b%d", w + 1);
        char *argv[] = {(char *)sdxl, "worker", "--redis", (char *)url, "--fleet-prefix", prefix, "-m", (char *)model,
                        "--output-root", (char *)outdir, "-t", (char *)threads, "--worker-id", wid, "--idle-exit-ms",
                        "1500", NULL};
        pids[n] = spawn(argv);
        if (pids[n] < 0) {
            fprintf(stderr, "bench-fleet: cannot run %s\n", sdxl);
            return -1;
        }
        n++;
    }
    job_rec *rec = calloc((size_t)jobs, sizeof *rec);
    if (!rec) return -1;
    int rc = 0;
    for (int i = 0; i < jobs && !rc; i++) {
        char key[128], v[4096];
        snprintf(key, sizeof key, "%s:job:j%d", prefix, i + 1);
        for (int tries = 0;; tries++) {
            if (hget(r, key, "state", v, sizeof v) == 0 && (!strcmp(v, "done") || !strcmp(v, "failed"))) break;
            if (tries > 20 * 600) {
                fprintf(stderr, "bench-fleet: job j%d did not finish in 10 minutes\n", i + 1);
                rc = -1;
                break;
            }
            sdxl_sleep_ms(50);
        }
        if (rc) break;
        if (strcmp(v, "done")) {
            hget(r, key, "error", v, sizeof v);
            fprintf(stderr, "bench-fleet: job j%d failed: %s\n", i + 1, v);
            rc = -1;
            break;
        }
        hget(r, key, "started_ms", v, sizeof v);
        rec[i].started = strtoll(v, NULL, 10);
        hget(r, key, "finished_ms", v, sizeof v);
        rec[i].finished = strtoll(v, NULL, 10);
        hget(r, key, "finished_by", rec[i].worker, sizeof rec[i].worker);
        if (hget(r, key, "stats", v, sizeof v) == 0) {
            sdxl_json *j = NULL;
            if (sdxl_json_parse(v, strlen(v), NULL, "stats", &j, &e) == 0) rec[i].compute_s = sdxl_json_num(j, "total_s", 0);
            sdxl_json_free(j);
        }
    }
    for (int i = 0; i < n; i++) {
        if (rc) kill(pids[i], SIGTERM);
        waitpid(pids[i], NULL, 0);
    }
    if (!rc) {
        int64_t t0 = rec[0].started, t1 = rec[0].finished;
        double compute = 0, in_job = 0, gap = 0;
        int n_gap = 0;
        for (int i = 0; i < jobs; i++) {
            if (rec[i].started < t0) t0 = rec[i].started;
            if (rec[i].finished > t1) t1 = rec[i].finished;
            compute += rec[i].compute_s;
            in_job += (double)(rec[i].finished - rec[i].started) / 1e3;
            /* this worker's next job: the smallest start at or after this finish */
            int64_t next = -1;
            for (int k = 0; k < jobs; k++)
                if (k != i && !strcmp(rec[k].worker, rec[i].worker) && rec[k].started >= rec[i].finished &&
                    (next < 0 || rec[k].started < next))
                    next = rec[k].started;
            if (next >= 0) gap += (double)(next - rec[i].finished), n_gap++;
        }
        double span = (double)(t1 - t0) / 1e3;
        printf("%7d %8d %9.1f %9.2f %12.3f %12.3f %13.2f\n", workers, jobs, span > 0 ? jobs * 60.0 / span : 0, span,
               compute / jobs, in_job / jobs, n_gap ? gap / n_gap : 0);
    }
    free(rec);
    return rc;
}

int main(int argc, char **argv) {
    const char *url = NULL, *sdxl = "./build/sdxl", *model = "tests/data/golden/models/tiny_sd_xl_base.safetensors";
    const char *workers = "1,2,3", *threads = "1";
    int jobs = 30, size = 128, steps = 8, ops = 2000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--redis") && i + 1 < argc) url = argv[++i];
        else if (!strcmp(argv[i], "--sdxl") && i + 1 < argc) sdxl = argv[++i];
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--jobs") && i + 1 < argc) jobs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--workers") && i + 1 < argc) workers = argv[++i];
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = argv[++i];
        else if (!strcmp(argv[i], "--ops") && i + 1 < argc) ops = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-fleet [--redis URL] [--sdxl PATH] [--model CKPT] [--jobs N] [--workers 1,2,3] "
                            "[--size PX] [--steps N] [--threads N] [--ops N]\n");
            return 2;
        }
    }
    if (jobs < 1 || size < 8 || steps < 1 || ops < 1) return fprintf(stderr, "bench-fleet: bad numbers\n"), 2;
    char dir[] = "/tmp/bench-fleet-XXXXXX";
    if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
    char own_url[64], outdir[128];
    snprintf(outdir, sizeof outdir, "%s/out", dir);
    pid_t redis = -1;
    if (!url) {
        int port = 20000 + (int)(getpid() % 20000);
        char ps[16], logf[160];
        snprintf(ps, sizeof ps, "%d", port);
        snprintf(logf, sizeof logf, "%s/redis.log", dir);
        char *rargv[] = {"/usr/bin/redis-server", "--port", ps, "--bind", "127.0.0.1", "--dir", dir, "--save", "",
                         "--appendonly", "no", "--maxmemory-policy", "noeviction", "--logfile", logf, NULL};
        redis = spawn(rargv);
        if (redis < 0) return fprintf(stderr, "bench-fleet: cannot start /usr/bin/redis-server (or pass --redis)\n"), 1;
        snprintf(own_url, sizeof own_url, "redis://127.0.0.1:%d", port);
        url = own_url;
    }
    sdxl_redis_url u;
    sdxl_err e;
    sdxl_redis r;
    int rc = 1;
    if (sdxl_redis_url_parse(url, &u, &e)) {
        fprintf(stderr, "bench-fleet: %s\n", e.msg);
        goto out;
    }
    sdxl_redis_init(&r, &u);
    r.retry_for_ms = 5000;
    if (sdxl_redis_connect(&r, &e)) {
        fprintf(stderr, "bench-fleet: %s\n", e.msg);
        goto out;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    printf("fleet on %s: %d jobs of %dx%d, %d steps, tiny model, %s thread(s) per worker, %ld CPUs\n", url, jobs, size,
           size, steps, threads, ncpu);
    if (queue_overhead(&r, ops)) goto out;
    printf("%7s %8s %9s %9s %12s %12s %13s\n", "workers", "jobs", "jobs/min", "span_s", "compute_s/j", "in-job_s/j",
           "gap_ms/job");
    rc = 0;
    for (const char *w = workers; *w && !rc;) {
        int k = atoi(w);
        if (k > 0) rc = run_fleet(&r, url, sdxl, model, jobs, k, size, steps, threads, outdir) ? 1 : 0;
        w = strchr(w, ',');
        if (!w) break;
        w++;
    }
    printf("compute_s/j: the pipeline's own time; in-job_s/j: start to recorded result (adds the PNG write and the\n"
           "result script); gap_ms/job: a worker's time from recording one result to starting its next job.\n");
    sdxl_redis_close(&r);
out:
    if (redis > 0) {
        kill(redis, SIGTERM);
        waitpid(redis, NULL, 0);
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench-fleet: could not remove %s\n", dir);
    return rc;
}
