/* The batch manager: 8 compatible queued jobs (different prompts and seeds) run as one UNet batch,
 * with fewer UNet calls than 8 separate jobs and byte-identical images; an injected allocation
 * failure of the merged batch is recovered by the out-of-memory ladder, recorded in each job's
 * metrics, and still gives the same images.
 * usage: test_batch SDXL_BIN MODELS_SRC WORK_DIR */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"

static int n_pass, n_fail;

#define CHECK(c, ...)                                                                                                  \
    do {                                                                                                               \
        if (c) n_pass++;                                                                                               \
        else {                                                                                                         \
            n_fail++;                                                                                                  \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                                \
            printf(__VA_ARGS__);                                                                                       \
            printf("\n");                                                                                              \
        }                                                                                                              \
    } while (0)

#define N 8
#define STEPS 3

typedef struct run {
    char paths[N][PATH_MAX];
    int merged[N], calls[N], rung[N];
} run;

/* Runs the 8 jobs in a fresh worker (queued first, then released at once). */
static int run_jobs(const char *bin, const char *dir, const char *models, const char *extra, run *out) {
    memset(out, 0, sizeof *out);
    mkdir(dir, 0755);
    char errlog[PATH_MAX + 16];
    snprintf(errlog, sizeof errlog, "%s/stderr.log", dir);
    const char *args[16] = {"--models-dir", models, "-m", "sdxl_base", "--precision", "f32", "-t", "2", "--paused"};
    int na = 9;
    char *x = NULL;
    if (extra) {
        char *save = NULL;
        x = strdup(extra);
        for (char *t = strtok_r(x, " ", &save); t && na < 15; t = strtok_r(NULL, " ", &save)) args[na++] = t;
    }
    args[na] = NULL;
    wk w;
    if (wk_start(&w, bin, dir, errlog, args)) {
        free(x);
        return -1;
    }
    for (int k = 0; k < N; k++) {
        char line[512];
        snprintf(line, sizeof line,
                 "{\"op\":\"submit\",\"id\":\"b%d\",\"prompt\":\"%s, picture %d\",\"negative_prompt\":\"blurry\","
                 "\"width\":64,\"height\":64,\"steps\":%d,\"cfg_scale\":6,\"seed\":%d,\"sampler\":\"DPM++ 2M Karras\"}",
                 k, k % 2 ? "a castle on a hill" : "a red fox in the snow", k, STEPS, 9000 + 17 * k);
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
    wk_send(&w, "{\"op\":\"shutdown\",\"wait\":true}");
    int got = 0;
    while (got < N) {
        sdxl_json *v = wk_until(&w, "result", NULL, 600, NULL, NULL);
        if (!v) break;
        int k = atoi(sdxl_json_str(v, "id", "b-1") + 1);
        const sdxl_json *im = sdxl_json_get(v, "images");
        const sdxl_json *m = sdxl_json_get(sdxl_json_get(v, "info"), "metrics");
        if (k >= 0 && k < N && im && im->len == 1) {
            snprintf(out->paths[k], PATH_MAX, "%s/%s", dir, sdxl_json_str(&im->items[0], "path", ""));
            out->merged[k] = (int)sdxl_json_i64(m, "merged_jobs", 0);
            out->calls[k] = (int)sdxl_json_i64(m, "unet_calls", 0);
            out->rung[k] = (int)sdxl_json_i64(m, "rung", -1);
            got++;
        }
        sdxl_json_free(v);
    }
    wk_finish(&w, 60);
    free(x);
    return got == N ? 0 : -1;
}

static int file_eq(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    if (read_file(a, &x, &nx)) return 0;
    if (read_file(b, &y, &ny)) {
        free(x);
        return 0;
    }
    int eq = nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return eq;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    char bin[PATH_MAX], src[PATH_MAX], work[PATH_MAX];
    rm_rf(argv[3]);
    mkdir(argv[3], 0755);
    if (!realpath(argv[1], bin) || !realpath(argv[2], src) || !realpath(argv[3], work)) return 2;
    char models[PATH_MAX + 16], d1[PATH_MAX + 16], d2[PATH_MAX + 16], d3[PATH_MAX + 16];
    snprintf(models, sizeof models, "%s/models", work);
    snprintf(d1, sizeof d1, "%s/alone", work);
    snprintf(d2, sizeof d2, "%s/merged", work);
    snprintf(d3, sizeof d3, "%s/ladder", work);
    if (make_models_dir(src, models)) return 1;
    run alone, merged, ladder;
    CHECK(run_jobs(bin, d1, models, "--no-merge", &alone) == 0, "8 jobs one by one");
    CHECK(run_jobs(bin, d2, models, "--max-merge 8", &merged) == 0, "8 jobs merged");
    CHECK(run_jobs(bin, d3, models, "--max-merge 8 --fail-alloc-at 1", &ladder) == 0, "8 jobs merged, allocation fails");
    int calls_alone = 0;
    for (int k = 0; k < N; k++) {
        calls_alone += alone.calls[k];
        CHECK(alone.merged[k] == 1, "job %d ran alone", k);
        CHECK(merged.merged[k] == N, "job %d ran in a batch of %d jobs (%d)", k, N, merged.merged[k]);
        CHECK(file_eq(alone.paths[k], merged.paths[k]), "job %d: merged image byte-identical to its lone run", k);
        CHECK(ladder.rung[k] >= 1, "job %d: the ladder's rung is recorded (%d)", k, ladder.rung[k]);
        CHECK(file_eq(alone.paths[k], ladder.paths[k]), "job %d: image after the ladder byte-identical", k);
    }
    /* the merged batch's UNet calls are shared: STEPS calls for all 8, against 8 x STEPS */
    printf("UNet calls: %d one by one, %d merged (one batch of %d images), %d after an injected allocation "
           "failure (rung %d)\n",
           calls_alone, merged.calls[0], N, ladder.calls[0], ladder.rung[0]);
    CHECK(merged.calls[0] < calls_alone, "merged batch makes fewer UNet calls (%d < %d)", merged.calls[0], calls_alone);
    CHECK(calls_alone == N * STEPS && merged.calls[0] == STEPS, "calls %d and %d", calls_alone, merged.calls[0]);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
