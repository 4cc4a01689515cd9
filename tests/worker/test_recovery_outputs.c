/* The kill -9 window between an image renamed into place and the journal recording its job, made
 * exact: the journal of a finished run is put back to "running, no paths" (what a kill in that
 * window leaves), with a temporary sibling beside an image, and the worker restarted. A job at its
 * second death fails worker_crashed and its images go; a re-queued job cancelled before it runs
 * leaves no image; a re-queued job that runs again writes the same bytes under the same names.
 * Each time the output folder holds exactly the done jobs' images.
 * usage: test_recovery_outputs SDXL_BIN MODELS_SRC WORK_DIR */
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static int n_pass, n_fail;

#define N_JOBS 3

typedef struct row {
    char id[40];
    int state, attempts;
    char error_code[32];
    char paths[2][PATH_MAX];
    int n;
} row;

/* The journal's row of each job, by client id j0..j2; 0 when every job has one. */
static int read_rows(const char *journal, row *rows) {
    memset(rows, 0, N_JOBS * sizeof *rows);
    sqlite3 *db;
    if (sqlite3_open(journal, &db) != SQLITE_OK) return -1;
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db, "SELECT id, state, attempts, error_code, paths, request FROM jobs", -1, &q, NULL);
    int seen = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *cid = strstr((const char *)sqlite3_column_text(q, 5), "\"client_id\":\"j");
        int k = cid ? atoi(cid + 14) : -1;
        if (k < 0 || k >= N_JOBS) continue;
        row *r = &rows[k];
        snprintf(r->id, sizeof r->id, "%s", (const char *)sqlite3_column_text(q, 0));
        r->state = sqlite3_column_int(q, 1);
        r->attempts = sqlite3_column_int(q, 2);
        snprintf(r->error_code, sizeof r->error_code, "%s", (const char *)sqlite3_column_text(q, 3));
        const char *p = (const char *)sqlite3_column_text(q, 4);
        while (*p && r->n < 2) {
            size_t n = strcspn(p, "\n");
            snprintf(r->paths[r->n++], PATH_MAX, "%.*s", (int)n, p);
            p += n + (p[n] == '\n');
        }
        seen++;
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return seen == N_JOBS ? 0 : -1;
}

static int sql(const char *journal, const char *stmt) {
    sqlite3 *db;
    if (sqlite3_open(journal, &db) != SQLITE_OK) return -1;
    int rc = sqlite3_exec(db, stmt, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

/* The journal as a kill after job k's renames and before its row was updated leaves it. */
static int as_killed_after_rename(const char *journal, const row *r, int attempts) {
    char s[256];
    snprintf(s, sizeof s, "UPDATE jobs SET state=1, attempts=%d, paths='', metrics='' WHERE id='%s'", attempts, r->id);
    return sql(journal, s);
}

/* A temporary sibling of a job's image, as a kill during sdxl_image_write leaves it. */
static void make_tmp(const char *dir, const char *path, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s.4242.1f.tmp", dir, path);
    FILE *f = fopen(out, "wb");
    if (f) {
        fputs("partial", f);
        fclose(f);
    }
}

static int exists(const char *dir, const char *rel) {
    char p[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    return access(p, F_OK) == 0;
}

/* Every file of the output folder is an image of a done job, and each of those is there. */
static void check_folder(const char *dir, const row *rows, const char *when) {
    static char names[64][PATH_MAX];
    int files = wk_out_files(dir, names, 64), images = 0;
    if (files < 0) files = 0;
    for (int f = 0; f < files && f < 64; f++) {
        int known = 0;
        for (int k = 0; k < N_JOBS; k++)
            for (int i = 0; rows[k].state == 2 && i < rows[k].n; i++) known |= !strcmp(rows[k].paths[i], names[f]);
        CHECK(known, "%s: stray file %s", when, names[f]);
    }
    for (int k = 0; k < N_JOBS; k++)
        for (int i = 0; rows[k].state == 2 && i < rows[k].n; i++) {
            images++;
            CHECK(exists(dir, rows[k].paths[i]), "%s: job %d's image %s is there", when, k, rows[k].paths[i]);
        }
    CHECK(files == images, "%s: %d files for %d done images", when, files, images);
}

static int run_until_shutdown(wk *w) {
    wk_send(w, "{\"op\":\"shutdown\",\"wait\":true}");
    sdxl_json *v = wk_until(w, "shutdown", NULL, 300, NULL, NULL);
    int ok = v != NULL;
    sdxl_json_free(v);
    return ok && wk_finish(w, 60) == 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: test_recovery_outputs SDXL_BIN MODELS_SRC WORK_DIR\n");
        return 2;
    }
    char bin[PATH_MAX], src[PATH_MAX], work[PATH_MAX], models[PATH_MAX + 16];
    if (wk_setup(argv[1], argv[2], argv[3], bin, src, work, models)) return 2;
    char dir[PATH_MAX + 16], journal[PATH_MAX + 32], errlog[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/run", work);
    snprintf(journal, sizeof journal, "%s/run/jobs.db", work);
    snprintf(errlog, sizeof errlog, "%s/stderr.log", work);
    mkdir(dir, 0755);
    const char *args[] = {"--models-dir", models, "-m", "sdxl_base", "--precision", "f32", "-t", "2",
                          "--journal", journal, NULL};
    const char *paused[] = {"--models-dir", models, "-m", "sdxl_base", "--precision", "f32", "-t", "2",
                            "--journal", journal, "--paused", NULL};

    /* 1. three jobs run to the end: j0 makes two images, j1 and j2 one each */
    wk w;
    if (wk_start(&w, bin, dir, errlog, args)) return 1;
    for (int k = 0; k < N_JOBS; k++) {
        char line[512];
        snprintf(line, sizeof line,
                 "{\"op\":\"submit\",\"id\":\"j%d\",\"prompt\":\"job %d, a lighthouse\",\"width\":64,\"height\":64,"
                 "\"steps\":2,\"seed\":%d,\"sampler\":\"Euler\",\"batch_count\":%d,\"save_path\":\"out\"}",
                 k, k, 700 + k, k == 0 ? 2 : 1);
        wk_send(&w, line);
    }
    CHECK(run_until_shutdown(&w), "first run drains its jobs and exits 0");
    row rows[N_JOBS], first[N_JOBS];
    CHECK(read_rows(journal, first) == 0, "first run: every job has a journal row");
    for (int k = 0; k < N_JOBS; k++)
        CHECK(first[k].state == 2 && first[k].n == (k == 0 ? 2 : 1), "first run: job %d done with its images", k);
    check_folder(dir, first, "first run");
    char ref[PATH_MAX * 2], img[PATH_MAX * 2];
    snprintf(ref, sizeof ref, "%s/j2.png", work);
    snprintf(img, sizeof img, "%s/%s", dir, first[2].paths[0]);
    CHECK(wk_copy_file(img, ref) == 0, "job 2's image kept for comparison");

    /* 2. killed after the renames: j0 at its second start, j1 and j2 at their first; then a paused
     * restart that cancels j1 before it can run */
    char tmp0[PATH_MAX * 3], tmp2[PATH_MAX * 3];
    CHECK(as_killed_after_rename(journal, &first[0], 2) == 0, "journal: job 0 running at its second start");
    CHECK(as_killed_after_rename(journal, &first[1], 1) == 0, "journal: job 1 running at its first start");
    CHECK(as_killed_after_rename(journal, &first[2], 1) == 0, "journal: job 2 running at its first start");
    make_tmp(dir, first[0].paths[1], tmp0, sizeof tmp0);
    make_tmp(dir, first[2].paths[0], tmp2, sizeof tmp2);
    if (wk_start(&w, bin, dir, errlog, paused)) return 1;
    char line[256];
    snprintf(line, sizeof line, "{\"op\":\"cancel\",\"job\":\"%s\"}", first[1].id);
    wk_send(&w, line);
    sdxl_json *v = wk_until(&w, "error", first[1].id, 60, NULL, NULL);
    CHECK(v && !strcmp(sdxl_json_str(v, "code", ""), "cancelled"), "re-queued job 1 is cancelled");
    sdxl_json_free(v);
    CHECK(wk_finish(&w, 60) == 0, "paused restart exits 0");
    CHECK(read_rows(journal, rows) == 0, "restart: every job has a journal row");
    CHECK(rows[0].state == 3 && !strcmp(rows[0].error_code, "worker_crashed") && rows[0].attempts == 2,
          "job 0 failed worker_crashed (state %d, %s)", rows[0].state, rows[0].error_code);
    CHECK(!exists(dir, first[0].paths[0]) && !exists(dir, first[0].paths[1]), "job 0's images are gone");
    CHECK(access(tmp0, F_OK) != 0, "job 0's temporary file is gone");
    CHECK(rows[1].state == 4, "job 1 cancelled (state %d)", rows[1].state);
    CHECK(!exists(dir, first[1].paths[0]), "job 1's image is gone");
    CHECK(rows[2].state == 0 && rows[2].attempts == 1, "job 2 re-queued (state %d, %d attempts)", rows[2].state,
          rows[2].attempts);

    /* 3. a restart runs j2 again: the same name, the same bytes, its temporary file gone */
    if (wk_start(&w, bin, dir, errlog, args)) return 1;
    CHECK(run_until_shutdown(&w), "restart drains job 2 and exits 0");
    CHECK(read_rows(journal, rows) == 0, "rerun: every job has a journal row");
    CHECK(rows[2].state == 2 && rows[2].attempts == 2 && rows[2].n == 1 && !strcmp(rows[2].paths[0], first[2].paths[0]),
          "job 2 done again under its name (state %d, %d attempts)", rows[2].state, rows[2].attempts);
    CHECK(wk_file_eq(img, ref), "job 2's image is byte-identical to its first run");
    CHECK(access(tmp2, F_OK) != 0, "job 2's temporary file is gone");
    check_folder(dir, rows, "after recovery");
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
