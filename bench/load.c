/* bench-load: cold start, from process start to the first UNet step, as `sdxl generate` does it
 * (one-shot model: text encoders and VAE built at load, prompt encoded, text encoders freed,
 * UNet built, first step). The generation is 64x64 with one step, so the step itself costs
 * little; the end of that step is reported as the time to the first UNet step. Each case runs
 * in a fresh child process (forked before anything is loaded), timed from the fork:
 *
 *   no cache     the networks converted from the checkpoint;
 *   cache miss   the same, with the converted-weights cache on and empty: it writes the cache;
 *   cache hit    the cache file mapped and used in place.
 *
 *   bench-load [--model CKPT] [--prec bf16|f32] [--threads 2] [--cache DIR] [--cold] [--only CASE]
 *
 * --cache DIR turns on the two cache cases (DIR's *.sdxlw files are removed first). --only
 * none|miss|hit runs one case alone (hit keeps DIR's files: a miss must have written them). The
 * cache files are flushed to disk before the hit case. --cold asks
 * the kernel to drop the checkpoint's and the cache file's pages before each case
 * (posix_fadvise DONTNEED: pages another process maps stay, so it is best effort) and reports
 * the disk's read rate measured after. Default model: bench/models/sdxl_base_random.safetensors. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/mem.h"
#include "base/threads.h"
#include "peak.h"
#include "pipeline/pipeline.h"

#define DEFAULT_MODEL "bench/models/sdxl_base_random.safetensors"

typedef struct marks {
    double t0, text, first_step;
} marks;

static int on_progress(void *user, const sdxl_progress *p) {
    marks *m = user;
    double now = bench_now() - m->t0;
    if (p->phase == SDXL_PHASE_TEXT && !m->text) m->text = now;
    if (p->phase == SDXL_PHASE_BASE && p->step >= 1 && !m->first_step) m->first_step = now;
    return 0;
}

/* Reads the whole file with read(2); returns GB/s, or 0 on error. */
static double read_rate(const char *path, double *secs) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    size_t cap = (size_t)16 << 20;
    char *buf = malloc(cap);
    double t0 = bench_now();
    uint64_t n = 0;
    ssize_t r;
    while (buf && (r = read(fd, buf, cap)) > 0) n += (uint64_t)r;
    *secs = bench_now() - t0;
    free(buf);
    close(fd);
    return *secs > 0 ? (double)n / *secs / 1e9 : 0;
}

static void drop_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* Applies f to every *.sdxlw file of dir. */
static void each_cache_file(const char *dir, void (*f)(const char *path, void *u), void *u) {
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 7 || strcmp(de->d_name + l - 6, ".sdxlw")) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        f(p, u);
    }
    closedir(d);
}

static void rm_file(const char *path, void *u) {
    (void)u;
    unlink(path);
}

static void add_size(const char *path, void *u) {
    struct stat sb;
    if (!stat(path, &sb)) *(uint64_t *)u += (uint64_t)sb.st_size;
}

static void sync_cb(const char *path, void *u) {
    (void)u;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    close(fd);
}

static void drop_cb(const char *path, void *u) {
    (void)u;
    drop_file(path);
}

/* One cold start in this (child) process, timed from t0. */
static int one_start(double t0, const char *model, const char *prec, const char *cache, const char *label) {
    marks mk = {.t0 = t0};
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = model;
    mp.precision = prec;
    mp.one_shot = 1;
    mp.weights_cache = cache ? cache : "off";
    sdxl_err e = {0};
    sdxl_pl_model *m = NULL;
    double tl = bench_now();
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
        fprintf(stderr, "bench-load: %s\n", e.msg);
        return 1;
    }
    double load_s = bench_now() - tl;
    sdxl_gen_params p;
    sdxl_gen_params_init(&p);
    p.prompt = "a photo of a red fox in the snow";
    p.width = p.height = 64;
    p.steps = 1;
    p.seed = 1;
    p.progress = on_progress;
    p.progress_user = &mk;
    sdxl_pl_result res;
    double tg = bench_now();
    if (sdxl_pl_generate(m, &p, NULL, NULL, NULL, &res, &e)) {
        fprintf(stderr, "bench-load: %s\n", e.msg);
        return 1;
    }
    double gen_s = bench_now() - tg;
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
                 1e-6 * (double)ru.ru_stime.tv_usec;
    printf("  %-11s process start to the end of the first UNet step: %6.2f s  (load %.2f s: text encoders + VAE; "
           "text + UNet + step %.2f s; text phase at %.2f s); CPU %.2f s (%.2f s system); peak RSS %.2f GB, major "
           "faults %ld, minor %ld\n",
           label, mk.first_step, load_s, gen_s, mk.text, cpu,
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec, (double)ms.peak_rss / 1e9, ru.ru_majflt,
           ru.ru_minflt);
    fflush(stdout);
    sdxl_pl_result_free(&res);
    sdxl_pl_model_free(m);
    return 0;
}

static int run_case(const char *model, const char *prec, const char *cache, int cold, const char *label) {
    if (cold) {
        drop_file(model);
        each_cache_file(cache, drop_cb, NULL);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        double t0 = bench_now();
        _exit(one_start(t0, model, prec, cache, label));
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 1;
}

int main(int argc, char **argv) {
    const char *model = DEFAULT_MODEL, *prec = "bf16", *cache = NULL, *only = NULL;
    int threads = 2, cold = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--prec") && i + 1 < argc) prec = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cache") && i + 1 < argc) cache = argv[++i];
        else if (!strcmp(argv[i], "--cold")) cold = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: bench-load [--model CKPT] [--prec bf16|f32] [--threads N] [--cache DIR] [--cold] "
                            "[--only none|miss|hit]\n");
            return 2;
        }
    }
    threads = sdxl_threads_set(threads);
    struct stat sb;
    if (stat(model, &sb) != 0) {
        fprintf(stderr, "bench-load: %s: not found (make it with bench-make_checkpoint)\n", model);
        return 1;
    }
    double rs = 0, rate = 0;
    if (!cold) rate = read_rate(model, &rs); /* also puts the file in the page cache */
    printf("model %s (%.2f GB), %s, %d threads, %s\n", model, (double)sb.st_size / 1e9, prec, threads,
           cold ? "cold: pages dropped before each case (best effort)" : "checkpoint in the page cache");
    if (!cold) printf("  file read with read(2): %.2f s = %.2f GB/s\n", rs, rate);
    int all = !only, rc = 0;
    if ((only && strcmp(only, "none") && strcmp(only, "miss") && strcmp(only, "hit")) || (only && !cache && strcmp(only, "none"))) {
        fprintf(stderr, "bench-load: --only none|miss|hit (miss and hit need --cache DIR)\n");
        return 2;
    }
    if (all || !strcmp(only, "none")) rc = run_case(model, prec, NULL, cold, "no cache");
    if (!rc && cache && (all || strcmp(only, "none"))) {
        mkdir(cache, 0755);
        if (all || !strcmp(only, "miss")) {
            each_cache_file(cache, rm_file, NULL);
            rc = run_case(model, prec, cache, cold, "cache miss");
        }
        uint64_t bytes = 0;
        each_cache_file(cache, add_size, &bytes);
        each_cache_file(cache, sync_cb, NULL); /* the hit does not wait on the miss's writeback */
        if (!rc && (all || !strcmp(only, "hit"))) rc = run_case(model, prec, cache, cold, "cache hit");
        printf("  cache files in %s: %.2f GB\n", cache, (double)bytes / 1e9);
    }
    if (cold) {
        drop_file(model);
        rate = read_rate(model, &rs);
        printf("  disk read rate (read(2) after dropping the pages): %.2f s = %.2f GB/s\n", rs, rate);
    }
    return rc;
}
