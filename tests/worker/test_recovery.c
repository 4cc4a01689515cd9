/* kill -9 at random moments while the worker runs a queue of journaled jobs (queued, loading,
 * mid-step, mid-decode, mid-write), restarting it each time. Afterwards every accepted job ended
 * exactly once in the journal (done, or failed "worker_crashed" after two deaths), done jobs'
 * images are byte-identical to an undisturbed run, and no partial or stray file exists.
 * usage: test_recovery SDXL_BIN MODELS_SRC WORK_DIR [N_JOBS [N_KILLS [SEED]]] */
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static int n_pass, n_fail;

#define MAX_JOBS 64

static void job_line(int k, char *b, size_t cap) {
    static const char *const samplers[] = {"Euler", "DPM++ 2M", "Euler a", "DDIM"};
    snprintf(b, cap,
             "{\"op\":\"submit\",\"id\":\"j%02d\",\"prompt\":\"job %d, a lighthouse\",\"width\":64,\"height\":64,"
             "\"steps\":%d,\"cfg_scale\":5,\"seed\":%d,\"sampler\":\"%s\",\"batch_count\":%d,\"save_path\":\"out\"}",
             k, k, 3 + k % 3, 500 + k, samplers[k % 4], 1 + (k % 5 == 0));
}

typedef struct phase_log {
    char last[16];
    int progress;
} phase_log;

static void on_line(void *user, const char *line) {
    phase_log *pl = user;
    const char *p = strstr(line, "\"phase\":\"");
    if (strstr(line, "\"event\":\"progress\"") && p) {
        p += 9;
        size_t n = strcspn(p, "\"");
        if (n >= sizeof pl->last) n = sizeof pl->last - 1;
        memcpy(pl->last, p, n);
        pl->last[n] = 0;
        pl->progress++;
    }
}

/* client id -> reference image paths, from the undisturbed run's result events */
typedef struct ref {
    char id[8];
    char paths[2][PATH_MAX];
    int n;
} ref;

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_recovery SDXL_BIN MODELS_SRC WORK_DIR [N_JOBS [N_KILLS [SEED]]]\n");
        return 2;
    }
    int n_jobs = argc > 4 ? atoi(argv[4]) : 24, n_kills = argc > 5 ? atoi(argv[5]) : 12;
    unsigned seed = argc > 6 ? (unsigned)atoi(argv[6]) : (unsigned)time(NULL);
    if (n_jobs < 1 || n_jobs > MAX_JOBS) return 2;
    srand(seed);
    printf("jobs %d, kills %d, random seed %u\n", n_jobs, n_kills, seed);
    char bin[PATH_MAX], src[PATH_MAX], work[PATH_MAX], models[PATH_MAX + 16];
    if (wk_setup(argv[1], argv[2], argv[3], bin, src, work, models)) return 2;
    char refdir[PATH_MAX + 16], killdir[PATH_MAX + 16], journal[PATH_MAX + 32], errlog[PATH_MAX + 16];
    snprintf(refdir, sizeof refdir, "%s/ref", work);
    snprintf(killdir, sizeof killdir, "%s/kill", work);
    snprintf(journal, sizeof journal, "%s/kill/jobs.db", work);
    snprintf(errlog, sizeof errlog, "%s/stderr.log", work);
    mkdir(refdir, 0755);
    mkdir(killdir, 0755);
    char line[1024];

    /* 1. the undisturbed run */
    ref refs[MAX_JOBS];
    memset(refs, 0, sizeof refs);
    const char *rargs[] = {"--models-dir", models, "-m", "sdxl_base", "--precision", "f32", "-t", "2",
                           "--max-merge", "2", NULL};
    wk w;
    if (wk_start(&w, bin, refdir, errlog, rargs)) return 1;
    for (int k = 0; k < n_jobs; k++) {
        job_line(k, line, sizeof line);
        wk_send(&w, line);
    }
    wk_send(&w, "{\"op\":\"shutdown\",\"wait\":true}");
    for (;;) {
        char *l = wk_read(&w, 600);
        if (!l) break;
        sdxl_json *v = NULL;
        if (!sdxl_json_parse(l, strlen(l), NULL, "l", &v, NULL)) {
            const char *ev = sdxl_json_str(v, "event", "");
            if (!strcmp(ev, "result")) {
                int k = atoi(sdxl_json_str(v, "id", "j-1") + 1);
                const sdxl_json *im = sdxl_json_get(v, "images");
                if (k >= 0 && k < n_jobs && im)
                    for (size_t i = 0; i < im->len && i < 2; i++)
                        snprintf(refs[k].paths[refs[k].n++], PATH_MAX, "%s/%s", refdir,
                                 sdxl_json_str(&im->items[i], "path", ""));
            } else if (!strcmp(ev, "error")) {
                CHECK(0, "undisturbed run: %s", l);
            }
            int stop = !strcmp(ev, "shutdown");
            sdxl_json_free(v);
            if (stop) {
                free(l);
                break;
            }
        }
        free(l);
    }
    CHECK(wk_finish(&w, 60) == 0, "undisturbed run exits 0");
    for (int k = 0; k < n_jobs; k++) CHECK(refs[k].n == 1 + (k % 5 == 0), "reference job %d has its images", k);

    /* 2. the same jobs, journaled, with kill -9 at random moments */
    const char *kargs[] = {"--models-dir", models, "-m", "sdxl_base", "--precision", "f32", "-t", "2",
                           "--max-merge", "2", "--journal", journal, NULL};
    if (wk_start(&w, bin, killdir, errlog, kargs)) return 1;
    for (int k = 0; k < n_jobs; k++) {
        job_line(k, line, sizeof line);
        wk_send(&w, line);
        sdxl_json *v = wk_until(&w, "accepted", NULL, 60, NULL, NULL);
        CHECK(v != NULL, "job %d accepted", k);
        sdxl_json_free(v);
    }
    int at[8] = {0}; /* kills by moment: 0 loading/queued, 1 text, 2 base, 3 decode, 4 write, 5 other */
    for (int r = 0; r < n_kills; r++) {
        phase_log pl = {"", 0};
        if (r % 4 != 1) {
            /* a random number of progress events in: mid-step, mid-decode, mid-write */
            int want = 1 + rand() % 24;
            double end = mono() + 20;
            while (pl.progress < want && mono() < end) {
                char *l = wk_read(&w, end - mono());
                if (!l) break;
                on_line(&pl, l);
                free(l);
            }
            usleep((useconds_t)(rand() % 40000));
            if (pl.progress == 0) break; /* the queue ran dry: nothing left to interrupt */
        } else {
            usleep((useconds_t)(rand() % 300000)); /* while loading: every job still queued or re-queued */
        }
        const char *ph = pl.last;
        at[!*ph ? 0 : !strcmp(ph, "text") ? 1 : !strcmp(ph, "base") ? 2 : !strcmp(ph, "decode") ? 3
                   : !strcmp(ph, "write") ? 4 : 5]++;
        wk_kill9(&w);
        if (wk_start(&w, bin, killdir, errlog, kargs)) return 1;
    }
    wk_send(&w, "{\"op\":\"shutdown\",\"wait\":true}");
    sdxl_json *v = wk_until(&w, "shutdown", NULL, 900, NULL, NULL);
    CHECK(v != NULL, "final run drains the queue");
    sdxl_json_free(v);
    CHECK(wk_finish(&w, 60) == 0, "final run exits 0");
    printf("kills: %d while loading/queued, %d in text, %d mid-step, %d mid-decode, %d mid-write, %d other\n", at[0],
           at[1], at[2], at[3], at[4], at[5]);

    /* 3. the journal: every job exactly once, in a final state */
    sqlite3 *db;
    CHECK(sqlite3_open(journal, &db) == SQLITE_OK, "journal opens");
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db, "SELECT id, state, attempts, request, paths, error_code FROM jobs", -1, &q, NULL);
    int seen[MAX_JOBS] = {0}, done = 0, crashed = 0, images = 0;
    char done_paths[MAX_JOBS * 2][PATH_MAX];
    int n_done_paths = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *req = (const char *)sqlite3_column_text(q, 3);
        const char *cid = strstr(req, "\"client_id\":\"j");
        int k = cid ? atoi(cid + 14) : -1;
        int state = sqlite3_column_int(q, 1);
        const char *ec = (const char *)sqlite3_column_text(q, 5);
        CHECK(k >= 0 && k < n_jobs, "journal row names its job");
        if (k < 0 || k >= n_jobs) continue;
        seen[k]++;
        if (state == 2) {
            done++;
            const char *p = (const char *)sqlite3_column_text(q, 4);
            int i = 0;
            while (*p) {
                size_t n = strcspn(p, "\n");
                char path[PATH_MAX * 2];
                snprintf(path, sizeof path, "%s/%.*s", killdir, (int)n, p);
                CHECK(i < refs[k].n && wk_file_eq(path, refs[k].paths[i]),
                      "job %d image %d is byte-identical to the undisturbed run", k, i);
                if (n_done_paths < MAX_JOBS * 2) snprintf(done_paths[n_done_paths++], PATH_MAX, "%.*s", (int)n, p);
                images++;
                i++;
                p += n + (p[n] == '\n');
            }
            CHECK(i == refs[k].n, "job %d: %d images, wanted %d", k, i, refs[k].n);
        } else {
            CHECK(state == 3 && !strcmp(ec, "worker_crashed") && sqlite3_column_int(q, 2) >= 2,
                  "job %d ended %d (%s) after %d attempts: only worker_crashed after two deaths is allowed", k, state,
                  ec, sqlite3_column_int(q, 2));
            crashed++;
        }
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    for (int k = 0; k < n_jobs; k++) CHECK(seen[k] == 1, "job %d appears exactly once (%d)", k, seen[k]);
    printf("%d jobs done (%d images byte-identical), %d failed as worker_crashed\n", done, images, crashed);

    /* 4. no partial or stray file: the output folder holds exactly the done jobs' images */
    static char names[1024][PATH_MAX];
    int files = wk_out_files(killdir, names, 1024);
    if (files < 0) files = 0;
    for (int f = 0; f < files && f < 1024; f++) {
        int known = 0;
        for (int i = 0; i < n_done_paths; i++) known |= !strcmp(done_paths[i], names[f]);
        CHECK(known, "stray or partial file %s", names[f]);
    }
    CHECK(files == images, "%d files for %d done images", files, images);
    CHECK(done >= n_jobs / 2, "most jobs finish (%d of %d)", done, n_jobs);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
