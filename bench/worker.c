/* bench-worker: the job engine's throughput, 8 queued jobs (different prompts and seeds) run one by
 * one versus merged by the batch manager, in images per minute; and the time from kill -9 of a
 * journaled `sdxl worker` mid-step to the first step of the re-run after restart.
 *
 *   bench-worker [--model CKPT] [--sdxl build/sdxl] [--size 512] [--steps 4] [--jobs 8] [--prec bf16]
 *
 * Default model: /work/bigdata/sdxl_base_random.safetensors. Run heavy models under
 * flock /tmp/sdxl-heavy.lock. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "peak.h"
#include "service/engine.h"

#define DEFAULT_MODEL "/work/bigdata/sdxl_base_random.safetensors"

typedef struct opts {
    const char *model, *sdxl, *prec;
    int size, steps, jobs;
} opts;

static void submit_all(sdxl_engine *eng, const opts *o, char ids[][40]) {
    for (int k = 0; k < o->jobs; k++) {
        sdxl_svc_request r;
        sdxl_svc_request_init(&r);
        char prompt[96];
        snprintf(prompt, sizeof prompt, "picture %d of a lighthouse at dusk", k);
        r.g.prompt = prompt;
        r.g.width = r.g.height = o->size;
        r.g.steps = o->steps;
        r.g.cfg_scale = 7;
        r.g.seed = 1000 + k;
        r.g.sampler = "Euler";
        r.save_path = "bench_worker_out";
        sdxl_svc_issues is = {0};
        if (sdxl_engine_submit(eng, &r, 0, ids[k], &is)) fprintf(stderr, "submit: %s\n", is.items[0].message);
        sdxl_svc_request_free(&r);
    }
}

/* Seconds to run the queue; *calls = UNet calls summed over distinct batches. */
static double run(const opts *o, int merge, int *calls, int *batches) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", o->model);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    const char *dirs[] = {dir};
    sdxl_engine_config c;
    sdxl_engine_config_init(&c);
    c.models_dirs = dirs;
    c.n_models_dirs = 1;
    c.default_model = o->model;
    c.precision = o->prec;
    c.merge = merge;
    c.max_merge = o->jobs;
    c.max_images = o->jobs;
    c.start_paused = 1;
    c.default_timeout_s = 0;
    c.output_root = "/tmp";
    sdxl_engine *eng;
    char err[512];
    if (sdxl_engine_new(&c, &eng, err, sizeof err)) {
        fprintf(stderr, "bench-worker: %s\n", err);
        exit(1);
    }
    /* load outside the timed part */
    double ls;
    uint64_t bytes;
    char res[PATH_MAX];
    if (sdxl_engine_load(eng, o->model, NULL, NULL, &ls, &bytes, res, sizeof res, err, sizeof err)) {
        fprintf(stderr, "bench-worker: %s\n", err);
        exit(1);
    }
    char ids[64][40];
    submit_all(eng, o, ids);
    double t0 = bench_now();
    sdxl_engine_resume(eng);
    sdxl_engine_wait_idle(eng, 0);
    double t = bench_now() - t0;
    *calls = 0;
    *batches = 0;
    for (int k = 0; k < o->jobs; k++) {
        sdxl_job_info ji;
        if (sdxl_engine_get(eng, ids[k], &ji)) continue;
        if (ji.state != SDXL_JOB_DONE) fprintf(stderr, "job %d: %s\n", k, ji.error);
        /* merged jobs report their batch's calls: count each batch once */
        if (ji.m.merged_jobs > 0) {
            *calls += ji.m.unet_calls / 1;
            *batches += 1;
            k += ji.m.merged_jobs - 1 < o->jobs - k - 1 ? ji.m.merged_jobs - 1 : o->jobs - k - 1;
        }
        for (int i = 0; i < ji.n_done; i++) unlink(ji.paths[i]);
        sdxl_job_info_free(&ji);
    }
    sdxl_engine_free(eng);
    return t;
}

/* kill -9 mid-step, restart, time until the first step event of the re-run. */
static double kill_to_rerun(const opts *o, double *load_s) {
    char jdir[] = "/tmp/bench_worker_XXXXXX";
    if (!mkdtemp(jdir)) return -1;
    char journal[PATH_MAX], mdir[PATH_MAX];
    snprintf(journal, sizeof journal, "%s/jobs.db", jdir);
    snprintf(mdir, sizeof mdir, "%s", o->model);
    char *slash = strrchr(mdir, '/');
    if (slash) *slash = 0;
    double result = -1;
    for (int round = 0; round < 2; round++) {
        int pin[2], pout[2];
        if (pipe(pin) || pipe(pout)) return -1;
        double t_spawn = bench_now();
        pid_t pid = fork();
        if (pid == 0) {
            dup2(pin[0], 0);
            dup2(pout[1], 1);
            close(pin[1]);
            close(pout[0]);
            char size[16], steps[16];
            snprintf(size, sizeof size, "%d", o->size);
            snprintf(steps, sizeof steps, "%d", o->steps);
            execl(o->sdxl, o->sdxl, "worker", "--models-dir", mdir, "-m", o->model, "--journal", journal,
                  "--output-root", jdir, "--precision", o->prec, (char *)NULL);
            _exit(127);
        }
        close(pin[0]);
        close(pout[1]);
        if (round == 0) {
            char line[256];
            int n = snprintf(line, sizeof line,
                             "{\"op\":\"submit\",\"prompt\":\"a boat\",\"width\":%d,\"height\":%d,\"steps\":%d,"
                             "\"seed\":5}\n",
                             o->size, o->size, o->steps < 3 ? 3 : o->steps);
            if (write(pin[1], line, (size_t)n) != n) return -1;
        }
        /* wait for the first base step */
        FILE *f = fdopen(pout[0], "r");
        char *l = NULL;
        size_t cap = 0;
        double t_step = -1;
        while (getline(&l, &cap, f) > 0) {
            if (strstr(l, "\"phase\":\"text\"") && round == 1 && load_s) *load_s = bench_now() - result;
            if (strstr(l, "\"phase\":\"base\"")) {
                t_step = bench_now();
                break;
            }
        }
        free(l);
        if (round == 0) {
            kill(pid, SIGKILL);
            t_spawn = bench_now();
            result = t_spawn;
        } else {
            result = t_step > 0 ? t_step - result : -1;
            close(pin[1]);
            kill(pid, SIGKILL);
        }
        waitpid(pid, NULL, 0);
        fclose(f);
        if (round == 0) close(pin[1]);
    }
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", jdir);
    if (system(cmd)) fprintf(stderr, "bench-worker: cannot remove %s\n", jdir);
    return result;
}

int main(int argc, char **argv) {
    opts o = {DEFAULT_MODEL, "build/sdxl", "bf16", 512, 4, 8};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) o.model = argv[++i];
        else if (!strcmp(argv[i], "--sdxl") && i + 1 < argc) o.sdxl = argv[++i];
        else if (!strcmp(argv[i], "--prec") && i + 1 < argc) o.prec = argv[++i];
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) o.size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) o.steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--jobs") && i + 1 < argc) o.jobs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-worker [--model CKPT] [--sdxl BIN] [--prec bf16|f32] [--size N] [--steps N] "
                            "[--jobs N]\n");
            return 2;
        }
    }
    if (o.jobs < 1 || o.jobs > 64) return 2;
    printf("model %s, %d jobs of %dx%d, %d Euler steps, CFG 7, %s\n", o.model, o.jobs, o.size, o.size, o.steps,
           o.prec);
    int c1, b1, c2, b2;
    double t1 = run(&o, 0, &c1, &b1);
    double t2 = run(&o, 1, &c2, &b2);
    printf("one by one : %7.1f s  %6.2f images/min  (%d UNet calls in %d runs)\n", t1, 60.0 * o.jobs / t1, c1, b1);
    printf("batched    : %7.1f s  %6.2f images/min  (%d UNet calls in %d runs)  speed-up %.2fx\n", t2,
           60.0 * o.jobs / t2, c2, b2, t1 / t2);
    double load_s = -1;
    double k = kill_to_rerun(&o, &load_s);
    printf("kill -9 mid-step -> first re-run step: %.1f s (of which restart + model load %.1f s)\n", k,
           load_s);
    return 0;
}
