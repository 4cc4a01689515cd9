/* The batch manager, the out-of-memory ladder and the conditioning cache, through `sdxl worker`:
 * - 8 compatible queued jobs (different prompts and seeds) run as one UNet batch, with fewer UNet
 *   calls than 8 separate jobs and byte-identical images;
 * - the injected allocation failure (--fail-alloc-at K [--fail-alloc-count N]) takes each rung of
 *   the ladder in turn, recorded in the job's metrics: the merged batch halves ("batch 8->4",
 *   byte-identical); a lone image tiles its VAE decode ("vae_tiled": tiled decoding is not
 *   byte-identical by nature, so the check is PSNR >= 40 dB against the untiled image); then the
 *   UNet runs one CFG row per call ("unet_rows 1", byte-identical to the vae_tiled image); past
 *   the last rung the job fails with out_of_memory naming the rungs and the plan;
 * - repeated prompts reuse the text encoders' output (cond_cache_hits in the job and the totals),
 *   a LoRA with a text-encoder weight misses, and every image equals the run without the cache.
 * usage: test_batch SDXL_BIN MODELS_SRC WORK_DIR */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "io/image.h"

static int n_pass, n_fail;

#define N 8
#define STEPS 3
#define MAX_JOBS 16

typedef struct job_out {
    char path[PATH_MAX];
    int merged, calls, rung, cond_hits;
    char ladder[128], code[32], message[1024];
} job_out;

typedef struct run {
    job_out j[MAX_JOBS];
    long long cond_hits, cond_misses; /* the worker's totals after the jobs */
} run;

/* Runs the jobs (lines[k] is the body of a submit with id "bK") queued first, then released at
 * once, in a fresh worker with the extra options. 0 when every job ended (result or error). */
static int run_jobs(const char *bin, const char *dir, const char *models, const char *extra, char lines[][768],
                    int n, run *out) {
    memset(out, 0, sizeof *out);
    mkdir(dir, 0755);
    char errlog[PATH_MAX + 16];
    snprintf(errlog, sizeof errlog, "%s/stderr.log", dir);
    const char *args[24] = {"--models-dir", models, "-m", "sdxl_base", "--precision", "f32", "-t", "2", "--paused"};
    int na = 9;
    char *x = NULL;
    if (extra) {
        char *save = NULL;
        x = strdup(extra);
        for (char *t = strtok_r(x, " ", &save); t && na < 23; t = strtok_r(NULL, " ", &save)) args[na++] = t;
    }
    args[na] = NULL;
    wk w;
    if (wk_start(&w, bin, dir, errlog, args)) {
        free(x);
        return -1;
    }
    for (int k = 0; k < n; k++) {
        char line[1024];
        snprintf(line, sizeof line, "{\"op\":\"submit\",\"id\":\"b%d\",%s}", k, lines[k]);
        wk_send(&w, line);
        sdxl_json *v = wk_until(&w, "accepted", NULL, 60, NULL, NULL);
        if (!v) {
            wk_finish(&w, 10);
            free(x);
            return -1;
        }
        sdxl_json_free(v);
    }
    wk_send(&w, "{\"op\":\"resume\"}");
    int got = 0;
    while (got < n) {
        char *line = wk_read(&w, 600);
        if (!line) break;
        sdxl_json *v = NULL;
        sdxl_err e;
        if (sdxl_json_parse(line, strlen(line), NULL, "line", &v, &e)) {
            free(line);
            continue;
        }
        free(line);
        const char *ev = sdxl_json_str(v, "event", "");
        int k = atoi(sdxl_json_str(v, "id", "b-1") + 1);
        if ((strcmp(ev, "result") && strcmp(ev, "error")) || k < 0 || k >= n || !sdxl_json_get(v, "job")) {
            sdxl_json_free(v);
            continue;
        }
        job_out *o = &out->j[k];
        if (!strcmp(ev, "error")) {
            snprintf(o->code, sizeof o->code, "%s", sdxl_json_str(v, "code", ""));
            snprintf(o->message, sizeof o->message, "%s", sdxl_json_str(v, "message", ""));
        }
        const sdxl_json *im = sdxl_json_get(v, "images");
        const sdxl_json *m = sdxl_json_get(sdxl_json_get(v, "info"), "metrics");
        if (im && im->len == 1) snprintf(o->path, PATH_MAX, "%s/%s", dir, sdxl_json_str(&im->items[0], "path", ""));
        o->merged = (int)sdxl_json_i64(m, "merged_jobs", 0);
        o->calls = (int)sdxl_json_i64(m, "unet_calls", 0);
        o->rung = (int)sdxl_json_i64(m, "rung", -1);
        o->cond_hits = (int)sdxl_json_i64(m, "cond_cache_hits", -1);
        snprintf(o->ladder, sizeof o->ladder, "%s", sdxl_json_str(m, "ladder", ""));
        got++;
        sdxl_json_free(v);
    }
    wk_send(&w, "{\"op\":\"metrics\"}");
    sdxl_json *mv = wk_until(&w, "metrics", NULL, 60, NULL, NULL);
    const sdxl_json *mm = sdxl_json_get(mv, "metrics");
    out->cond_hits = sdxl_json_i64(mm, "cond_cache_hits", -1);
    out->cond_misses = sdxl_json_i64(mm, "cond_cache_misses", -1);
    sdxl_json_free(mv);
    wk_finish(&w, 60);
    free(x);
    return got == n ? 0 : -1;
}

/* PSNR in dB of two RGB images of one size; -1 when they cannot be read or differ in size. */
static double psnr(const char *a, const char *b) {
    sdxl_image x = {0}, y = {0};
    sdxl_err e;
    double r = -1;
    if (!sdxl_image_read(a, NULL, 3, &x, NULL, &e) && !sdxl_image_read(b, NULL, 3, &y, NULL, &e) &&
        x.width == y.width && x.height == y.height) {
        size_t n = (size_t)x.width * (size_t)x.height * 3;
        double se = 0;
        for (size_t i = 0; i < n; i++) se += ((double)x.data[i] - y.data[i]) * ((double)x.data[i] - y.data[i]);
        r = se == 0 ? INFINITY : 10 * log10(255.0 * 255.0 / (se / (double)n));
    }
    sdxl_image_free(&x);
    sdxl_image_free(&y);
    return r;
}

static void batch_and_ladder(const char *bin, const char *work, const char *models) {
    static char lines[N][768];
    for (int k = 0; k < N; k++)
        snprintf(lines[k], sizeof lines[k],
                 "\"prompt\":\"%s, picture %d\",\"negative_prompt\":\"blurry\",\"width\":64,\"height\":64,"
                 "\"steps\":%d,\"cfg_scale\":6,\"seed\":%d,\"sampler\":\"DPM++ 2M Karras\"",
                 k % 2 ? "a castle on a hill" : "a red fox in the snow", k, STEPS, 9000 + 17 * k);
    char d1[PATH_MAX + 16], d2[PATH_MAX + 16], d3[PATH_MAX + 16];
    snprintf(d1, sizeof d1, "%s/alone", work);
    snprintf(d2, sizeof d2, "%s/merged", work);
    snprintf(d3, sizeof d3, "%s/ladder", work);
    static run alone, merged, ladder;
    CHECK(run_jobs(bin, d1, models, "--no-merge", lines, N, &alone) == 0, "8 jobs one by one");
    CHECK(run_jobs(bin, d2, models, "--max-merge 8", lines, N, &merged) == 0, "8 jobs merged");
    CHECK(run_jobs(bin, d3, models, "--max-merge 8 --fail-alloc-at 1", lines, N, &ladder) == 0,
          "8 jobs merged, allocation fails");
    int calls_alone = 0;
    for (int k = 0; k < N; k++) {
        calls_alone += alone.j[k].calls;
        CHECK(alone.j[k].merged == 1, "job %d ran alone", k);
        CHECK(merged.j[k].merged == N, "job %d ran in a batch of %d jobs (%d)", k, N, merged.j[k].merged);
        CHECK(wk_file_eq(alone.j[k].path, merged.j[k].path), "job %d: merged image byte-identical to its lone run", k);
        CHECK(ladder.j[k].rung == 1 && !strcmp(ladder.j[k].ladder, "batch 8->4"),
              "job %d: the ladder's rung is recorded (%d, \"%s\")", k, ladder.j[k].rung, ladder.j[k].ladder);
        CHECK(wk_file_eq(alone.j[k].path, ladder.j[k].path), "job %d: image after the ladder byte-identical", k);
    }
    /* the merged batch's UNet calls are shared: STEPS calls for all 8, against 8 x STEPS */
    printf("UNet calls: %d one by one, %d merged (one batch of %d images), %d after an injected allocation "
           "failure (rung %d: %s)\n",
           calls_alone, merged.j[0].calls, N, ladder.j[0].calls, ladder.j[0].rung, ladder.j[0].ladder);
    CHECK(merged.j[0].calls < calls_alone, "merged batch makes fewer UNet calls (%d < %d)", merged.j[0].calls,
          calls_alone);
    CHECK(calls_alone == N * STEPS && merged.j[0].calls == STEPS, "calls %d and %d", calls_alone, merged.j[0].calls);

    /* one image: no batch to halve, so the rungs after it */
    static char one[1][768];
    snprintf(one[0], sizeof one[0], "%s", lines[0]);
    static run r0, r1, r2, r3;
    char d[4][PATH_MAX + 16];
    const char *name[4] = {"rung_none", "rung_vae", "rung_rows", "rung_fail"};
    const char *opt[4] = {"--no-merge", "--no-merge --fail-alloc-at 1", "--no-merge --fail-alloc-at 1 --fail-alloc-count 2",
                          "--no-merge --fail-alloc-at 1 --fail-alloc-count 1000"};
    run *rr[4] = {&r0, &r1, &r2, &r3};
    for (int i = 0; i < 4; i++) {
        snprintf(d[i], sizeof d[i], "%s/%s", work, name[i]);
        CHECK(run_jobs(bin, d[i], models, opt[i], one, 1, rr[i]) == 0, "%s: the job ended", name[i]);
    }
    CHECK(r0.j[0].rung == 0 && !r0.j[0].ladder[0], "no failure, no rung (%d)", r0.j[0].rung);
    CHECK(r1.j[0].rung == 1 && !strcmp(r1.j[0].ladder, "vae_tiled"), "rung vae_tiled taken (%d, \"%s\")",
          r1.j[0].rung, r1.j[0].ladder);
    double p1 = psnr(r0.j[0].path, r1.j[0].path);
    printf("vae_tiled rung: PSNR %.2f dB against the untiled image (%s)\n", p1,
           wk_file_eq(r0.j[0].path, r1.j[0].path) ? "byte-identical" : "differs");
    CHECK(p1 >= 40, "vae_tiled image within 40 dB PSNR of the untiled one (%.2f)", p1);
    CHECK(r2.j[0].rung == 2 && !strcmp(r2.j[0].ladder, "vae_tiled, unet_rows 1"),
          "rungs vae_tiled then unet_rows taken (%d, \"%s\")", r2.j[0].rung, r2.j[0].ladder);
    CHECK(r2.j[0].calls == 2 * STEPS, "unet_rows 1: one UNet forward per CFG row (%d forwards)", r2.j[0].calls);
    CHECK(wk_file_eq(r1.j[0].path, r2.j[0].path), "unet_rows image byte-identical to the vae_tiled one");
    CHECK(!strcmp(r3.j[0].code, "out_of_memory"), "every rung failing ends the job out_of_memory (%s)", r3.j[0].code);
    CHECK(strstr(r3.j[0].message, "vae_tiled, unet_rows 1") && strstr(r3.j[0].message, "plan:"),
          "the failure names the rungs and the plan: %s", r3.j[0].message);
    printf("ladder exhausted: %s\n", r3.j[0].message);
}

static void cond_cache(const char *bin, const char *work, const char *models) {
    /* A, B, A again, A with a LoRA on the text encoders (miss), again (hit), A with a UNet-only LoRA
     * (the text encoders are unchanged: hit) */
    static char lines[6][768];
    const char *lora[6] = {"", "", "", ",\"loras\":[{\"name\":\"tiny_lora\",\"weight\":0.8,\"te_weight\":1}]",
                           ",\"loras\":[{\"name\":\"tiny_lora\",\"weight\":0.8,\"te_weight\":1}]",
                           ",\"loras\":[{\"name\":\"tiny_lora\",\"weight\":0.8,\"te_weight\":0}]"};
    const int hit[6] = {0, 0, 1, 0, 1, 1};
    for (int k = 0; k < 6; k++)
        snprintf(lines[k], sizeof lines[k],
                 "\"prompt\":\"%s\",\"negative_prompt\":\"blurry\",\"width\":64,\"height\":64,\"steps\":2,"
                 "\"cfg_scale\":5,\"seed\":%d%s",
                 k == 1 ? "a castle on a hill" : "a (red:1.2) fox in the snow", 300 + k, lora[k]);
    char d1[PATH_MAX + 16], d2[PATH_MAX + 16];
    snprintf(d1, sizeof d1, "%s/cond_cache", work);
    snprintf(d2, sizeof d2, "%s/cond_nocache", work);
    static run on, off;
    CHECK(run_jobs(bin, d1, models, "--no-merge", lines, 6, &on) == 0, "6 jobs with the conditioning cache");
    CHECK(run_jobs(bin, d2, models, "--no-merge --cond-cache-bytes 0", lines, 6, &off) == 0, "6 jobs without it");
    for (int k = 0; k < 6; k++) {
        CHECK(on.j[k].path[0] && wk_file_eq(on.j[k].path, off.j[k].path),
              "job %d: image byte-identical with and without the cache (%s)", k, on.j[k].code);
        CHECK(on.j[k].cond_hits == hit[k], "job %d: %d cache hits, expected %d", k, on.j[k].cond_hits, hit[k]);
        CHECK(off.j[k].cond_hits == 0, "job %d without the cache: no hit (%d)", k, off.j[k].cond_hits);
    }
    /* --lora-reserve maps the merge buffers at load: the same images */
    char d3[PATH_MAX + 16];
    snprintf(d3, sizeof d3, "%s/lora_reserve", work);
    static run rs;
    CHECK(run_jobs(bin, d3, models, "--no-merge --lora-reserve", lines, 6, &rs) == 0, "6 jobs with --lora-reserve");
    for (int k = 0; k < 6; k++)
        CHECK(rs.j[k].path[0] && wk_file_eq(rs.j[k].path, on.j[k].path),
              "job %d: image byte-identical with --lora-reserve (%s)", k, rs.j[k].code);
    printf("conditioning cache: %lld hits, %lld misses over 6 jobs (without it: %lld hits)\n", on.cond_hits,
           on.cond_misses, off.cond_hits);
    CHECK(on.cond_hits == 3 && on.cond_misses == 3, "totals: 3 hits, 3 misses (%lld, %lld)", on.cond_hits,
          on.cond_misses);
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    char bin[PATH_MAX], src[PATH_MAX], work[PATH_MAX], models[PATH_MAX + 16];
    if (wk_setup(argv[1], argv[2], argv[3], bin, src, work, models)) return 2;
    char a[PATH_MAX + 64], b[PATH_MAX + 64];
    snprintf(a, sizeof a, "%s/tiny_sdxl_lora_kohya.safetensors", src);
    snprintf(b, sizeof b, "%s/tiny_lora.safetensors", models);
    if (wk_copy_file(a, b)) return 1;
    batch_and_ladder(bin, work, models);
    cond_cache(bin, work, models);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
