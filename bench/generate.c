/* bench-generate: whole generations on the full-size random SDXL checkpoint (made by
 * bench-make_checkpoint): text encoders, CFG UNet steps, VAE decode. Prints each stage's
 * seconds, the UNet's GFLOP/s and its share of this run's machine peak, and the peak RSS.
 * Then, in the same process, a bare UNet forward and a bare decode on the generation's shapes,
 * and the pipeline-vs-bare ratios: the steady steps (all but the first) against the best bare
 * forward, the generation's decode against a bare decode that starts with its workspace freed
 * (as the pipeline's does) and one that reuses it. Minor page faults are counted alongside.
 *
 *   bench-generate [--model CKPT] [--prec bf16|f32] [--vae-prec auto|bf16|f32] [--threads 2]
 *                  [--runs 512x4,1024x2] [--cfg 7]
 *
 * Default model: bench/models/sdxl_base_random.safetensors (run from the repository root). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "base/mem.h"
#include "base/threads.h"
#include "peak.h"
#include "pipeline/pipeline.h"

#define DEFAULT_MODEL "bench/models/sdxl_base_random.safetensors"

#define MAX_STEPS 256

static long minflt(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

/* Process CPU seconds and involuntary context switches: CPU time per wall second below the
 * thread count, with switches, means the threads waited for a CPU (another tenant). */
static void cpu_use(double *cpu, long *nivcsw) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
    *nivcsw = ru.ru_nivcsw;
}

static double loadavg1(void) {
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1;
        fclose(f);
    }
    return l;
}

/* Wall time and page faults at each base step's end, and around the decode. */
typedef struct trace {
    double t[MAX_STEPS + 1], cpu[MAX_STEPS + 1];
    long flt[MAX_STEPS + 1], csw[MAX_STEPS + 1];
    int n;
    double dec_t0, dec_t1;
    long dec_f0, dec_f1;
} trace;

static int on_progress(void *user, const sdxl_progress *p) {
    trace *tr = user;
    double now = bench_now();
    if (p->phase == SDXL_PHASE_BASE && tr->n <= MAX_STEPS) {
        tr->t[tr->n] = now;
        cpu_use(&tr->cpu[tr->n], &tr->csw[tr->n]);
        tr->flt[tr->n++] = minflt();
    } else if (p->phase == SDXL_PHASE_DECODE) {
        if (p->step == 0) {
            tr->dec_t0 = now;
            tr->dec_f0 = minflt();
        } else {
            tr->dec_t1 = now;
            tr->dec_f1 = minflt();
        }
    }
    fprintf(stderr, "  %-7s %d/%d  %.1fs\n", sdxl_phase_name(p->phase), p->step, p->total, p->elapsed);
    return 0;
}

static void fill(float *x, size_t n, float scale, unsigned *s) {
    for (size_t i = 0; i < n; i++) {
        *s = *s * 1664525u + 1013904223u;
        x[i] = scale * ((float)(*s >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
}

/* Bare UNet forwards (CFG batch) and decodes at the generation's size; prints the ratios. */
static int bare(sdxl_pl_model *m, int side, int cfg2, const trace *tr, sdxl_err *e) {
    const sdxl_unet_cfg *g = sdxl_unet_config(m->base_unet);
    int64_t s = side / 8, batch = cfg2 ? 2 : 1, lc = 77, nid = 6, pd = g->adm_in - 256 * nid;
    size_t nx = (size_t)(batch * g->in_ch * s * s);
    float *x = malloc(nx * sizeof(float)), *y = malloc(nx * sizeof(float));
    float *ctx = malloc((size_t)(batch * lc * g->context_dim) * sizeof(float));
    float *pooled = malloc((size_t)(batch * pd) * sizeof(float)), *ids = malloc((size_t)(batch * nid) * sizeof(float));
    float t[2] = {500.0f, 500.0f};
    float *img = malloc((size_t)side * side * 3 * sizeof(float));
    int rc = 1;
    if (!x || !y || !ctx || !pooled || !ids || !img) goto done;
    unsigned seed = 7;
    fill(x, nx, 1.0f, &seed);
    fill(ctx, (size_t)(batch * lc * g->context_dim), 1.0f, &seed);
    fill(pooled, (size_t)(batch * pd), 1.0f, &seed);
    for (int64_t i = 0; i < batch * nid; i++) ids[i] = (float)side;
    sdxl_unet_in in = {.batch = batch, .h = s, .w = s, .x = x, .t = t, .context = ctx, .ctx_len = lc,
                       .pooled = pooled, .pooled_dim = pd, .time_ids = ids, .n_time_ids = nid};
    double ub = 1e30, ucpu = 0;
    long uf = 0, ucsw = 0;
    for (int k = 0; k < 2; k++) {
        long f0 = minflt(), s0, s1;
        double t0 = bench_now(), c0, c1;
        cpu_use(&c0, &s0);
        if (sdxl_unet_forward(m->base_unet, &in, y, e)) goto done;
        double dt = bench_now() - t0;
        cpu_use(&c1, &s1);
        if (dt < ub) {
            ub = dt;
            uf = minflt() - f0;
            ucpu = c1 - c0;
            ucsw = s1 - s0;
        }
    }
    for (int i = 1; i < tr->n; i++)
        printf("  step %d: %.2f s wall, %.2f s CPU (%.2f threads busy), %ld faults, %ld involuntary switches\n", i + 1,
               tr->t[i] - tr->t[i - 1], tr->cpu[i] - tr->cpu[i - 1],
               (tr->cpu[i] - tr->cpu[i - 1]) / (tr->t[i] - tr->t[i - 1]), tr->flt[i] - tr->flt[i - 1],
               tr->csw[i] - tr->csw[i - 1]);
    printf("  bare UNet: %.2f s wall, %.2f s CPU (%.2f threads busy), %ld involuntary switches; load average %.2f\n", ub,
           ucpu, ucpu / ub, ucsw, loadavg1());
    double ps = 1e30;
    long pf = 0;
    for (int i = 2; i < tr->n; i++) { /* steady steps: the first carries the warm-up */
        double dt = tr->t[i] - tr->t[i - 1];
        if (dt < ps) {
            ps = dt;
            pf = tr->flt[i] - tr->flt[i - 1];
        }
    }
    /* decode: the pipeline trimmed the workspace after its decode, so the first bare one regrows it */
    for (int64_t i = 0; i < s * s * 4; i++) x[i] = 0.13025f * 1.7f * (x[i]);
    double db[2];
    long df[2];
    for (int k = 0; k < 2; k++) {
        long f0 = minflt();
        double t0 = bench_now();
        if (sdxl_vae_decode(m->vae, x, 1, s, s, img, NULL, e)) goto done;
        db[k] = bench_now() - t0;
        df[k] = minflt() - f0;
    }
    sdxl_vae_trim(m->vae);
    sdxl_compute_trim(m->c_vae);
    double pd_s = tr->dec_t1 - tr->dec_t0;
    if (tr->n >= 3)
        printf("  pipeline vs bare, UNet step: steady %.2f s (%ld faults) vs bare %.2f s (%ld faults): ratio %.3f\n", ps,
               pf, ub, uf, ps / ub);
    else
        printf("  pipeline vs bare, UNet step: needs >= 3 steps for a steady one; bare %.2f s\n", ub);
    printf("  pipeline vs bare, decode: %.2f s (%ld faults) vs bare %.2f s regrowing its workspace (%ld faults): "
           "ratio %.3f; bare reusing it %.2f s (%ld faults): ratio %.3f\n",
           pd_s, tr->dec_f1 - tr->dec_f0, db[0], df[0], pd_s / db[0], db[1], df[1], pd_s / db[1]);
    rc = 0;
done:
    free(x);
    free(y);
    free(ctx);
    free(pooled);
    free(ids);
    free(img);
    return rc;
}

int main(int argc, char **argv) {
    const char *model = DEFAULT_MODEL, *prec = "bf16", *vprec = "auto", *runs = "512x4,1024x2";
    int threads = 2;
    float cfg = 7.0f;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--prec") && i + 1 < argc) prec = argv[++i];
        else if (!strcmp(argv[i], "--vae-prec") && i + 1 < argc) vprec = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = argv[++i];
        else if (!strcmp(argv[i], "--cfg") && i + 1 < argc) cfg = (float)atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-generate [--model CKPT] [--prec bf16|f32] [--vae-prec auto|bf16|f32] [--threads N] "
                            "[--runs SIZExSTEPS,...] [--cfg X]\n");
            return 2;
        }
    }
    threads = sdxl_threads_set(threads);
    sdxl_model_params mp;
    sdxl_model_params_init(&mp);
    mp.base = model;
    mp.precision = prec;
    mp.vae_precision = vprec;
    sdxl_err e = {0};
    sdxl_pl_model *m = NULL;
    double t0 = bench_now();
    if (sdxl_pl_model_load(&mp, NULL, &m, &e)) {
        fprintf(stderr, "bench-generate: %s\n(make the checkpoint with bench-make_checkpoint)\n", e.msg);
        return 1;
    }
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    double peak = bench_peak_gflops(m->prec, threads);
    printf("model %s, %s (vae %s), %d threads: load %.1f s, RSS after load %.2f GiB; machine peak %.0f GFLOP/s\n",
           model, m->prec == SDXL_PREC_BF16 ? "bf16" : "f32", m->vae_prec == SDXL_PREC_BF16 ? "bf16" : "f32", threads, bench_now() - t0, (double)ms.rss / (1 << 30), peak);
    printf("%-10s %5s %7s %7s %8s %8s %8s %9s %7s %9s\n", "size", "steps", "text_s", "unet_s", "s/step", "decode_s",
           "total_s", "UNet GF/s", "%peak", "peakRSS");
    for (const char *r = runs; r && *r;) {
        int side = 0, steps = 0;
        if (sscanf(r, "%dx%d", &side, &steps) != 2) {
            fprintf(stderr, "bench-generate: --runs: expected SIZExSTEPS, got %s\n", r);
            break;
        }
        sdxl_gen_params p;
        sdxl_gen_params_init(&p);
        p.prompt = "a photo of a red fox in the snow, highly detailed";
        p.negative_prompt = "blurry, low quality";
        p.width = p.height = side;
        p.steps = steps;
        p.cfg_scale = cfg;
        p.seed = 1;
        trace tr;
        memset(&tr, 0, sizeof tr);
        p.progress = on_progress;
        p.progress_user = &tr;
        sdxl_pl_result res;
        if (sdxl_pl_generate(m, &p, NULL, NULL, NULL, &res, &e)) {
            fprintf(stderr, "bench-generate: %dx%d: %s\n", side, side, e.msg);
            break;
        }
        double flops = sdxl_unet_flops(m->base_unet, cfg > 1 ? 2 : 1, side / 8, side / 8, 77);
        double gfs = flops * res.st.unet_calls / res.st.base_s / 1e9;
        printf("%4dx%-5d %5d %7.2f %7.2f %8.2f %8.2f %8.2f %9.0f %6.1f%% %7.2fG\n", side, side, steps, res.st.text_s,
               res.st.base_s, res.st.base_s / steps, res.st.decode_s, res.st.total_s, gfs,
               peak > 0 ? 100 * gfs / peak : 0, (double)res.st.peak_rss / (1 << 30));
        fflush(stdout);
        sdxl_pl_result_free(&res);
        if (bare(m, side, cfg > 1, &tr, &e)) {
            fprintf(stderr, "bench-generate: bare %dx%d: %s\n", side, side, e.msg);
            break;
        }
        fflush(stdout);
        r = strchr(r, ',');
        if (r) r++;
    }
    sdxl_pl_model_free(m);
    return 0;
}
