/* bench-lora: LoRA apply, switch and remove on a full-size checkpoint. Two random kohya-named
 * LoRAs (rank R, every UNet linear and conv and every text-encoder linear) are written first;
 * then: time to merge A, to switch to B, to remove, and to merge A in place (as a model serving
 * one request does), next to one UNet CFG step (batch 2) at the given latent size, in the chosen
 * precision and thread count.
 *
 *   bench-lora [--model PATH] [--threads 2] [--prec bf16|f32] [--rank 32] [--size 128] [--no-step]
 *              [--tmp DIR]
 *
 * PATH defaults to /work/bigdata/sdxl_base_random.safetensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "base/mem.h"
#include "base/threads.h"
#include "peak.h"
#include "tensor/tensor.h"
#include "text/conditioning.h"

/* Page faults of the process so far: a first touch shows up here, not in the merge. */
static long faults(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt + ru.ru_majflt;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct writer {
    sdxl_st_writer *w;
    int rank;
    unsigned seed;
    const char *prefix;
    void **bufs;
    int n, cap;
    int64_t params;
    int err;
} writer;

static uint16_t *rand_f16(writer *wr, int64_t n, float scale) {
    float *f = malloc((size_t)n * sizeof *f);
    uint16_t *h = malloc((size_t)n * sizeof *h);
    if (!f || !h) {
        free(f);
        free(h);
        wr->err = 1;
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        wr->seed = wr->seed * 1664525u + 1013904223u;
        f[i] = scale * ((float)(wr->seed >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
    sdxl_f32_to_f16(f, h, (size_t)n);
    free(f);
    if (wr->n == wr->cap) {
        wr->cap = wr->cap ? 2 * wr->cap : 4096;
        wr->bufs = realloc(wr->bufs, (size_t)wr->cap * sizeof *wr->bufs);
    }
    wr->bufs[wr->n++] = h;
    return h;
}

static int add_layer(void *user, const sdxl_lref *r, sdxl_err *e) {
    writer *wr = user;
    if (r->kind == SDXL_LREF_NORM || wr->err) return SDXL_OK;
    for (int p = 0; p < r->nparts; p++) {
        char base[256], key[300];
        snprintf(base, sizeof base, "%s%s", wr->prefix, r->part[p].name);
        for (char *c = base; *c; c++)
            if (*c == '.') *c = '_';
        int64_t R = wr->rank, kk = (int64_t)r->kh * r->kw;
        int conv = r->kind == SDXL_LREF_CONV;
        int64_t sd[4] = {R, r->in, r->kh, r->kw}, su[4] = {r->out_each, R, 1, 1}, one = 1;
        uint16_t *dn = rand_f16(wr, R * r->in * kk, 1.0f / sqrtf((float)(r->in * kk)));
        uint16_t *up = rand_f16(wr, r->out_each * R, 0.05f);
        uint16_t *al = rand_f16(wr, 1, 0);
        if (wr->err) return sdxl_seterr(e, SDXL_ERR_NOMEM, "bench-lora: out of memory");
        sdxl_f32_to_f16(&(float){(float)R / 2}, al, 1);
        snprintf(key, sizeof key, "%s.lora_down.weight", base);
        sdxl_st_writer_add(wr->w, key, SDXL_ST_F16, conv ? 4 : 2, sd, dn, e);
        snprintf(key, sizeof key, "%s.lora_up.weight", base);
        sdxl_st_writer_add(wr->w, key, SDXL_ST_F16, conv ? 4 : 2, su, up, e);
        snprintf(key, sizeof key, "%s.alpha", base);
        sdxl_st_writer_add(wr->w, key, SDXL_ST_F16, 0, &one, al, e);
        wr->params += R * (r->in * kk + r->out_each);
    }
    return SDXL_OK;
}

static int write_lora(const char *path, int rank, unsigned seed, sdxl_ckpt *ck, sdxl_unet *u, sdxl_cond_model *cm,
                      int64_t *params, sdxl_err *e) {
    writer wr = {.rank = rank, .seed = seed};
    int st = sdxl_st_writer_new(&wr.w, e);
    wr.prefix = "lora_unet_";
    if (!st) st = sdxl_unet_layers(u, ck, add_layer, &wr, e);
    wr.prefix = "lora_te1_";
    if (!st && cm->te1) st = sdxl_clip_layers_ckpt(cm->te1, ck, SDXL_PART_TE1, add_layer, &wr, e);
    wr.prefix = "lora_te2_";
    if (!st) st = sdxl_clip_layers_ckpt(cm->te2, ck, SDXL_PART_TE2, add_layer, &wr, e);
    if (!st) st = sdxl_st_writer_meta(wr.w, "ss_network_dim", "32", e);
    if (!st) st = sdxl_st_writer_finish(wr.w, path, e);
    sdxl_st_writer_free(wr.w);
    for (int i = 0; i < wr.n; i++) free(wr.bufs[i]);
    free(wr.bufs);
    *params = wr.params;
    return st;
}

int main(int argc, char **argv) {
    const char *model = "/work/bigdata/sdxl_base_random.safetensors", *tmp = "/tmp";
    int threads = 2, rank = 32, size = 128, step = 1, reserve = 0;
    sdxl_prec prec = SDXL_PREC_BF16;
    for (int i = 1; i < argc; i++) {
        int has = i + 1 < argc;
        if (!strcmp(argv[i], "--model") && has) model = argv[++i];
        else if (!strcmp(argv[i], "--threads") && has) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prec") && has) prec = !strcmp(argv[++i], "f32") ? SDXL_PREC_F32 : SDXL_PREC_BF16;
        else if (!strcmp(argv[i], "--rank") && has) rank = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--size") && has) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tmp") && has) tmp = argv[++i];
        else if (!strcmp(argv[i], "--no-step")) step = 0;
        else if (!strcmp(argv[i], "--reserve")) reserve = 1;
        else {
            fprintf(stderr, "usage: bench-lora [--model PATH] [--threads 2] [--prec bf16|f32] [--rank 32] [--size 128] "
                            "[--no-step] [--reserve] [--tmp DIR]\n");
            return 2;
        }
    }
    if (rank < 1 || size < 8 || threads < 1) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    sdxl_threads_set(threads);
    const char *pname = prec == SDXL_PREC_BF16 ? "bf16" : "f32";
    double peak = bench_peak_gflops(prec, threads);
    printf("machine peak (%s, %d threads): %.0f GFLOP/s\n", pname, threads, peak);

    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_unet *u = NULL;
    sdxl_cond_model cm = {0};
    double t0 = now_s();
    if (sdxl_ckpt_open(model, &ck, &e) || sdxl_compute_new(prec, &c, &e) || sdxl_cond_model_load(c, ck, &cm, &e)) {
        fprintf(stderr, "bench-lora: %s\n", e.msg);
        return 1;
    }
    sdxl_ckpt_release_pages(ck);
    if (sdxl_unet_load(c, ck, NULL, &u, &e)) {
        fprintf(stderr, "bench-lora: %s\n", e.msg);
        return 1;
    }
    sdxl_ckpt_release_pages(ck);
    printf("model loaded in %.1f s\n", now_s() - t0);
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/bench_lora_%d_%d_a.safetensors", tmp, rank, (int)getpid());
    snprintf(pb, sizeof pb, "%s/bench_lora_%d_%d_b.safetensors", tmp, rank, (int)getpid());
    int64_t params = 0;
    t0 = now_s();
    if (write_lora(pa, rank, 1, ck, u, &cm, &params, &e) || write_lora(pb, rank, 2, ck, u, &cm, &params, &e)) {
        fprintf(stderr, "bench-lora: writing the LoRAs: %s\n", e.msg);
        return 1;
    }
    printf("two random LoRAs, rank %d, %.1f M parameters each (%.0f MB f16), written in %.1f s\n", rank,
           (double)params / 1e6, (double)params * 2 / 1e6, now_s() - t0);

    sdxl_lora_nets nets = {c, u, ck, {cm.te1, cm.te2}, ck, 0, 0};
    sdxl_lora_state *s = NULL;
    if (sdxl_lora_state_new(&nets, &s, &e)) {
        fprintf(stderr, "bench-lora: %s\n", e.msg);
        return 1;
    }
    /* --reserve: the copies are mapped first, as a worker or server with --lora-reserve does at load */
    sdxl_lora_stats sv;
    if (reserve) {
        if (sdxl_lora_reserve(s, &sv, &e)) {
            fprintf(stderr, "bench-lora: %s\n", e.msg);
            return 1;
        }
        printf("reserve (at load, --lora-reserve): %.2f s for %.2f GB of new copies = %.2f GB/s\n", sv.seconds,
               (double)sv.kept_bytes / 1e9, (double)sv.kept_bytes / 1e9 / (sv.seconds > 0 ? sv.seconds : 1e-9));
    }
    sdxl_lora_use ua = {pa, 0.8f, 0.8f}, ub = {pb, 0.6f, 0.6f};
    sdxl_lora_stats sa, sb, sr, sa2;
    long fl[5];
    fl[0] = faults();
    int st = sdxl_lora_apply(s, &ua, 1, &sa, &e);
    fl[1] = faults();
    if (!st) st = sdxl_lora_apply(s, &ub, 1, &sb, &e);
    fl[2] = faults();
    if (!st) st = sdxl_lora_apply(s, NULL, 0, &sr, &e);
    fl[3] = faults();
    if (!st) st = sdxl_lora_apply(s, &ua, 1, &sa2, &e);
    fl[4] = faults();
    if (!st) st = sdxl_lora_apply(s, NULL, 0, &sr, &e);
    if (st) {
        fprintf(stderr, "bench-lora: %s\n", e.msg);
        return 1;
    }
    printf("apply A:   %6.2f s (%d layers, %d in the packed layout, %d modules, %ld page faults; first apply: %s)\n",
           sa.seconds, sa.layers_rebuilt, sa.layers_packed, sa.modules_bound, fl[1] - fl[0],
           reserve ? "the copies were mapped by the reserve" : "allocates the merged copies");
    printf("switch B:  %6.2f s (%d layers, %ld page faults)\n", sb.seconds, sb.layers_rebuilt, fl[2] - fl[1]);
    printf("re-apply A:%6.2f s (%d layers, %ld page faults)\n", sa2.seconds, sa2.layers_rebuilt, fl[4] - fl[3]);
    printf("remove:    %6.2f s (%d layers, %ld page faults)\n", sr.seconds, sr.layers_rebuilt, fl[3] - fl[2]);
    printf("merged copies kept: %.2f GB\n", (double)sr.kept_bytes / 1e9);
    /* the first apply's extra time is the copies' new memory; its rate shows what the machine
     * gives (some virtual machines back fresh pages at 1-2 GB/s, reused ones at 20+) */
    if (!reserve && sa.seconds > sa2.seconds)
        printf("first apply - re-apply: %.2f s for %.2f GB of new copies = %.2f GB/s\n", sa.seconds - sa2.seconds,
               (double)sr.kept_bytes / 1e9, (double)sr.kept_bytes / 1e9 / (sa.seconds - sa2.seconds));
    /* a model that serves one request (sdxl generate) merges into its weights: no copies */
    sdxl_lora_state_free(s);
    nets.in_place = 1;
    sdxl_lora_stats si;
    if (sdxl_lora_state_new(&nets, &s, &e) || sdxl_lora_apply(s, &ua, 1, &si, &e)) {
        fprintf(stderr, "bench-lora: in place: %s\n", e.msg);
        return 1;
    }
    printf("apply A in place (one-request model, as sdxl generate): %6.2f s (%d layers, %.3f GB kept)\n", si.seconds,
           si.layers_rebuilt, (double)si.kept_bytes / 1e9);
    double la[3];
    if (getloadavg(la, 3) == 3) printf("load average: %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    unlink(pa);
    unlink(pb);
    if (step) {
        int64_t B = 2, h = size, w = size, T = 77;
        const sdxl_unet_cfg *g = sdxl_unet_config(u);
        size_t nx = (size_t)(B * g->in_ch * h * w);
        float *x = calloc(nx, sizeof *x), *out = calloc((size_t)(B * g->out_ch * h * w), sizeof *out);
        float *ctx = calloc((size_t)(B * T * g->context_dim), sizeof *ctx), tt[2] = {500, 500};
        int64_t pooled = g->adm_in - 6 * 256;
        float *pl = calloc((size_t)(B * pooled), sizeof *pl), tid[12] = {1024, 1024, 0, 0, 1024, 1024,
                                                                          1024, 1024, 0, 0, 1024, 1024};
        for (size_t i = 0; i < nx; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
        sdxl_unet_in in = {.batch = B, .h = h, .w = w, .x = x, .t = tt, .context = ctx, .ctx_len = T, .pooled = pl,
                           .pooled_dim = pooled, .time_ids = tid, .n_time_ids = 6};
        t0 = now_s();
        if (sdxl_unet_forward(u, &in, out, &e)) fprintf(stderr, "bench-lora: step: %s\n", e.msg);
        else printf("UNet CFG step (batch 2, %lldx%lld latent = %lldx%lld px): %.2f s\n", (long long)h, (long long)w,
                    (long long)h * 8, (long long)w * 8, now_s() - t0);
        free(x);
        free(out);
        free(ctx);
        free(pl);
    }
    sdxl_mem_stats ms;
    sdxl_mem_query(&ms);
    printf("peak RSS %.2f GB\n", (double)ms.peak_rss / 1e9);
    sdxl_lora_state_free(s);
    sdxl_unet_free(u);
    sdxl_cond_model_free(&cm);
    sdxl_ckpt_close(ck);
    sdxl_compute_free(c);
    return 0;
}
