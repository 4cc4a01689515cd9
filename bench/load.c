/* bench-load: cold start, from process start to the first UNet step, as `sdxl generate` does it
 * (one-shot model: text encoders and VAE converted at load, prompt encoded, text encoders freed,
 * UNet converted, first step). The generation is 64x64 with one step, so the step itself costs
 * little; the end of that step is reported as the time to the first UNet step. Prints the file's
 * read rate from the page cache, each phase, and the peak RSS.
 *
 *   bench-load [--model CKPT] [--prec bf16|f32] [--threads 2] [--cold]
 *
 * --cold first asks the kernel to drop the file's pages (posix_fadvise DONTNEED; pages another
 * process maps stay) and reads nothing ahead, then reports the load against the disk read rate
 * measured right after. Default model: bench/models/sdxl_base_random.safetensors. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

static void drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

int main(int argc, char **argv) {
    double t_start = bench_now();
    const char *model = DEFAULT_MODEL, *prec = "bf16";
    int threads = 2, cold = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--prec") && i + 1 < argc) prec = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cold")) cold = 1;
        else {
            fprintf(stderr, "usage: bench-load [--model CKPT] [--prec bf16|f32] [--threads N] [--cold]\n");
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
    if (cold) drop_cache(model);
    else rate = read_rate(model, &rs); /* also puts the file in the page cache */
    marks mk = {.t0 = t_start};
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = model;
    mp.precision = prec;
    mp.one_shot = 1;
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
    if (cold) { /* the disk's rate, measured after: drop again and read it all */
        drop_cache(model);
        rate = read_rate(model, &rs);
    }
    printf("model %s (%.2f GB), %s, %d threads, %s\n", model, (double)sb.st_size / 1e9, prec, threads,
           cold ? "cold (pages dropped first)" : "from the page cache");
    printf("  file read with read(2): %.2f s = %.2f GB/s%s\n", rs, rate, cold ? " (disk, measured after)" : "");
    printf("  model load (text encoders + VAE converted, UNet validated): %.2f s\n", load_s);
    printf("  request until the text phase starts: %.2f s; UNet conversion + text + 64x64 step: %.2f s\n",
           mk.text - (tg - t_start), gen_s);
    printf("  process start to the end of the first UNet step: %.2f s (%.1fx the file's read time)\n", mk.first_step,
           rs > 0 ? mk.first_step / rs : 0.0);
    printf("  peak RSS %.2f GB\n", (double)ms.peak_rss / 1e9);
    sdxl_pl_result_free(&res);
    sdxl_pl_model_free(m);
    return 0;
}
