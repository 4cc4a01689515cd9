/* bench-vae: VAE decode of a full-size SDXL VAE with random weights, at 512^2 and 1024^2, in
 * f32 and bf16. Prints seconds, GFLOP/s (conv/matmul/attention multiply-adds x 2, counted from
 * the config: 2,515 GFLOP at 512^2 and 10,470 at 1024^2) and the percentage of this run's
 * machine peak of the precision it runs in, the same for the multiply-adds actually executed
 * (the upsamplers run as 2x2 phase convs), the memory estimate and the RSS. When both precisions
 * run, the bf16 image is compared with the f32 one of the same latents (NMSE, max abs, uint8).
 *
 *   bench-vae [--model CKPT] [--keys TABLE.tsv] [--sizes 512,1024] [--prec f32,bf16]
 *             [--threads 2] [--reps 1] [--tile LATENT]
 *
 * Without --model it writes bench/models/sdxl_vae_random.safetensors (168 MB, F16, the
 * first_stage_model.* part of the key table with the prefix stripped: a standalone VAE) once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/mem.h"
#include "base/threads.h"
#include "decode/vae.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "peak.h"
#include "tensor/ops.h"

#define DEFAULT_KEYS "tests/data/golden/keys/sdxl_base_keys.tsv"
#define DEFAULT_MODEL "bench/models/sdxl_vae_random.safetensors"

static uint64_t rng_state = 0x5eed;

static float uniform(void) { /* splitmix64 -> [-1, 1) */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1ull << 23) - 1.0);
}

/* Random VAE from the key table: weights uniform with std 1/sqrt(fan_in), norm scales 1,
 * shifts 0, biases 0.02-ish. */
static int make_model(const char *keys, const char *out) {
    FILE *f = fopen(keys, "r");
    if (!f) {
        fprintf(stderr, "bench-vae: cannot open key table %s (run from the repository root or pass --keys)\n", keys);
        return 1;
    }
    mkdir("bench/models", 0755);
    sdxl_err e = {0};
    sdxl_st_writer *w = NULL;
    sdxl_st_writer_new(&w, &e);
    char line[1024];
    void **bufs = NULL;
    size_t nb = 0;
    int rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        char name[512], dt[16], shp[256];
        if (sscanf(line, "%511s %15s %255s", name, dt, shp) != 3 || strncmp(name, "first_stage_model.", 18)) continue;
        int64_t shape[8], numel = 1;
        int nd = 0;
        for (char *p = shp + 1; *p && *p != ']' && nd < 8;) {
            shape[nd] = strtoll(p, &p, 10);
            numel *= shape[nd++];
            if (*p == ',') p++;
        }
        float *x = malloc(sizeof(float) * (size_t)numel);
        uint16_t *h = malloc(2 * (size_t)numel);
        void **nbufs = realloc(bufs, sizeof(void *) * (nb + 1));
        if (!x || !h || !nbufs) {
            free(x);
            free(h);
            rc = 1;
            break;
        }
        bufs = nbufs;
        bufs[nb++] = h;
        int is_norm = strstr(name, "norm") != NULL;
        int is_bias = strstr(name, ".bias") != NULL;
        float sd = nd > 1 ? 1.0f / sqrtf((float)(numel / shape[0])) : 0.02f;
        for (int64_t i = 0; i < numel; i++)
            x[i] = is_norm ? (is_bias ? 0.0f : 1.0f) : (is_bias ? 0.02f : sd * 1.7320508f) * uniform();
        sdxl_f32_to_f16(x, h, (size_t)numel);
        free(x);
        rc = sdxl_st_writer_add(w, name + 18, SDXL_ST_F16, nd, shape, h, &e) != SDXL_OK;
    }
    fclose(f);
    if (!rc) rc = sdxl_st_writer_finish(w, out, &e) != SDXL_OK;
    if (rc) fprintf(stderr, "bench-vae: writing %s: %s\n", out, e.msg);
    sdxl_st_writer_free(w);
    for (size_t i = 0; i < nb; i++)
        free(bufs[i]);
    free(bufs);
    return rc;
}

/* Multiply-adds x 2 of one decode at a latent of h x w, counting each upsampler as a 3x3 conv on
 * the upsampled image (the work figure); *done gets what runs: the upsamplers as four
 * 2x2 phase convs on the small image (16/36 of their work). */
static double decode_flops(const sdxl_vae_config *c, double h, double w, double *done) {
    const int nl = c->n_levels;
    const double cl = c->ch[nl - 1], lc = c->latent_channels;
    double hw = h * w, f = 2 * hw * lc * lc + 2 * hw * cl * lc * 9;
#define RES(ci, co) (2 * hw * ((ci) * (co)*9 + (co) * (co)*9 + ((ci) != (co) ? (ci) * (co) : 0)))
    f += 2 * RES(cl, cl) + 2 * hw * cl * 3 * cl + 4 * hw * hw * cl + 2 * hw * cl * cl;
    double cin = cl, up = 0;
    for (int i = nl - 1; i >= 0; i--) {
        for (int j = 0; j < c->dec_resnets; j++) {
            f += RES(cin, (double)c->ch[i]);
            cin = c->ch[i];
        }
        if (i > 0) {
            hw *= 4;
            up += 2 * hw * cin * cin * 9;
        }
    }
#undef RES
    f += 2 * hw * c->out_channels * c->ch[0] * 9;
    *done = f + up * 16 / 36;
    return f + up;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int has(const char *list, const char *item) {
    size_t n = strlen(item);
    for (const char *p = list; (p = strstr(p, item)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return 1;
    return 0;
}

/* The CPU's measured peak, or on a device the peak given with --peak (a GPU's is not measured here). */
static double peak_for(const char *device, double given, sdxl_prec prec, int threads) {
    if (given > 0) return given;
    return device && strcmp(device, "cpu") ? 1e-9 : bench_peak_gflops(prec, threads);
}

int main(int argc, char **argv) {
    const char *device = NULL;
    double given_peak = 0;
    const char *model = NULL, *keys = DEFAULT_KEYS, *sizes = "512,1024", *precs = "f32,bf16";
    int threads = 2, reps = 1, tile = 0;
    for (int i = 1; i < argc; i++) {
        int more = i + 1 < argc;
        if (!strcmp(argv[i], "--model") && more)
            model = argv[++i];
        else if (!strcmp(argv[i], "--keys") && more)
            keys = argv[++i];
        else if (!strcmp(argv[i], "--sizes") && more)
            sizes = argv[++i];
        else if (!strcmp(argv[i], "--prec") && more)
            precs = argv[++i];
        else if (!strcmp(argv[i], "--threads") && more)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && more)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tile") && more)
            tile = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device") && more)
            device = argv[++i];
        else if (!strcmp(argv[i], "--peak") && more)
            given_peak = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: bench-vae [--model CKPT] [--keys TABLE.tsv] [--sizes 512,1024] [--prec f32,bf16] "
                            "[--threads N] [--reps N] [--tile LATENT] [--device cpu|vulkan[:N]] [--peak GFLOPS]\n");
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    sdxl_threads_set(threads);
    struct stat st;
    if (!model) {
        model = DEFAULT_MODEL;
        if (stat(model, &st) != 0) {
            double t0 = bench_now();
            if (make_model(keys, model)) return 1;
            printf("wrote %s in %.1f s\n", model, bench_now() - t0);
        }
    }
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    if (sdxl_ckpt_open(model, &ck, &e)) {
        fprintf(stderr, "bench-vae: %s\n", e.msg);
        return 1;
    }
    printf("threads %d, model %s\n", sdxl_threads_get(), model);
    const char *pnames[2] = {"f32", "bf16"};
    enum { MAX_SIZES = 8 };
    float *ref[MAX_SIZES] = {0}; /* f32 images, to compare bf16 with */
    for (int pi = 0; pi < 2; pi++) {
        if (!has(precs, pnames[pi])) continue;
        sdxl_prec prec = pi ? SDXL_PREC_BF16 : SDXL_PREC_F32;
        double peak = peak_for(device, given_peak, prec, threads);
        if (peak <= 0) {
            printf("%s: no peak on this CPU, skipped\n", pnames[pi]);
            continue;
        }
        sdxl_compute *c = NULL;
        sdxl_vae *v = NULL;
        double t0 = bench_now();
        if (sdxl_compute_new_device(prec, device, &c, &e) || sdxl_vae_load(ck, c, &v, &e)) {
            fprintf(stderr, "bench-vae: %s\n", e.msg);
            return 1;
        }
        const sdxl_vae_config *cfg = sdxl_vae_get_config(v);
        printf("device: %s\n", sdxl_compute_device_name(c));
        printf("%s: peak %.0f GFLOP/s; load %.2f s, weights %.1f MB, %lld params\n", pnames[pi], peak, bench_now() - t0,
               sdxl_vae_weight_bytes(v) / 1e6, (long long)cfg->n_params);
        rng_state = 0x5eed; /* both precisions decode the same latents */
        int si = 0;
        for (const char *p = sizes; *p; si++) {
            int px = atoi(p);
            const char *q = strchr(p, ',');
            p = q ? q + 1 : p + strlen(p);
            int64_t h = px / 8, w = px / 8, nz = h * w * cfg->latent_channels,
                    ni = (int64_t)px * px * cfg->out_channels;
            if (px < 8) continue;
            float *z = malloc(sizeof(float) * (size_t)nz), *img = malloc(sizeof(float) * (size_t)ni);
            if (!z || !img) return 1;
            for (int64_t i = 0; i < nz; i++)
                z[i] = uniform() * 0.13025f * 1.7f;
            sdxl_vae_run run;
            sdxl_vae_run_init(&run);
            run.tile = tile ? SDXL_VAE_TILE_ON : SDXL_VAE_TILE_OFF;
            if (tile) run.tile_latent = tile;
            uint64_t est = sdxl_vae_decode_bytes(cfg, 1, h, w, prec, &run);
            double best = 1e30, best_cpu = 1e30, pk0 = peak_for(device, given_peak, prec, threads);
            if (pk0 > peak) peak = pk0;
            sdxl_compute_profile_reset(c);
            for (int r = 0; r < reps; r++) {
                double t1 = bench_now(), c1 = cpu_now();
                if (sdxl_vae_decode(v, z, 1, h, w, img, &run, &e)) {
                    fprintf(stderr, "bench-vae: %s\n", e.msg);
                    return 1;
                }
                double dt = bench_now() - t1, dc = cpu_now() - c1;
                if (dt < best) best = dt;
                if (dc < best_cpu) best_cpu = dc;
            }
            /* The peak is sampled before and after every decode and the best sample of the run is
             * used: a low sample is interference, the machine never runs faster than its peak. The
             * CPU-time rate, work / (CPU seconds / threads), counts only the time the threads ran. */
            double pk1 = peak_for(device, given_peak, prec, threads);
            if (pk1 > peak) peak = pk1;
            double pk = peak;
            double done, gf = decode_flops(cfg, (double)h, (double)w, &done) / 1e9;
            done /= 1e9;
            sdxl_mem_stats m;
            sdxl_mem_query(&m);
            printf("%s decode %dx%d%s: %.2f s, work %.0f GFLOP: %.0f GFLOP/s = %.1f%% of peak %.0f (executed %.0f "
                   "GFLOP: %.1f%%); CPU %.2f s: CPU-time rate %.0f GFLOP/s; estimate %.0f MB, RSS %.0f MB, peak RSS "
                   "%.0f MB\n",
                   pnames[pi], px, px, tile ? " (tiled)" : "", best, gf, gf / best, 100.0 * gf / best / pk, pk, done,
                   100.0 * done / best / pk, best_cpu, gf / (best_cpu / threads), est / 1e6, m.rss / 1e6,
                   m.peak_rss / 1e6);
            if (si < MAX_SIZES && !pi) {
                free(ref[si]);
                ref[si] = img;
                img = NULL;
            } else if (si < MAX_SIZES && ref[si]) {
                double se = 0, ss = 0, mx = 0;
                int64_t ndiff = 0, mxu = 0;
                for (int64_t i = 0; i < ni; i++) {
                    double d = (double)img[i] - ref[si][i];
                    se += d * d;
                    ss += (double)ref[si][i] * ref[si][i];
                    if (fabs(d) > mx) mx = fabs(d);
                    uint8_t a, b;
                    sdxl_vae_to_uint8(img + i, &a, 1);
                    sdxl_vae_to_uint8(ref[si] + i, &b, 1);
                    int64_t du = a > b ? a - b : b - a;
                    ndiff += du != 0;
                    if (du > mxu) mxu = du;
                }
                printf("bf16 vs f32 decode %dx%d: NMSE %.2e, max abs %.3g; uint8: %.2f%% of values differ, max by %lld\n", px,
                       px, ss > 0 ? se / ss : 0.0, mx, 100.0 * (double)ndiff / (double)ni, (long long)mxu);
            }
            fflush(stdout);
            free(z);
            free(img);
        }
        sdxl_vae_free(v);
        sdxl_compute_free(c);
    }
    for (int k = 0; k < MAX_SIZES; k++) free(ref[k]);
    sdxl_ckpt_close(ck);
    return 0;
}
