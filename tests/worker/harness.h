/* Drives `sdxl worker` as a child process through pipes, the way the orchestrator does: one line
 * out, one line back. Shared by the worker tests. */
#ifndef SDXL_TESTS_WORKER_HARNESS_H
#define SDXL_TESTS_WORKER_HARNESS_H

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

#include "io/json.h"

typedef struct wk {
    pid_t pid;
    int in, out;   /* our ends: write requests to in, read lines from out */
    char *buf;
    size_t n, cap;
} wk;

/* Starts `bin worker args...` with cwd = dir (NULL: inherit); stderr goes to stderr_path (NULL: ours). */
int wk_start(wk *w, const char *bin, const char *dir, const char *stderr_path, const char *const *args);
/* Writes raw bytes (no line end added). */
int wk_write(wk *w, const char *s, size_t n);
int wk_send(wk *w, const char *line); /* line + "\n" */
/* Next line (without "\n"), malloc'd; NULL on EOF or after timeout_s. */
char *wk_read(wk *w, double timeout_s);
/* 1 when a line (or EOF) is ready within timeout_s. */
int wk_ready(wk *w, double timeout_s);
/* Closes stdin and waits; returns the exit status (128+sig when killed). */
int wk_finish(wk *w, double timeout_s);
void wk_kill9(wk *w);

/* Reads lines until one whose "event" is ev (and whose "job" is job when job != NULL); returns it
 * parsed (the caller frees), NULL on timeout. Lines seen are passed to on_line when non-NULL. */
sdxl_json *wk_until(wk *w, const char *ev, const char *job, double timeout_s, void (*on_line)(void *, const char *),
                    void *user);

/* Case-insensitive member lookup, as System.Text.Json binds without a naming policy. */
const sdxl_json *ci_get(const sdxl_json *o, const char *key);

/* Test model folder: tiny base under several names (copies, and symlinks inside the folder). */
int make_models_dir(const char *src_models, const char *dir);
int rm_rf(const char *path);
/* A test's start from its SDXL_BIN MODELS_SRC WORK_DIR arguments: WORK_DIR emptied, the real paths
 * in bin, src, work (PATH_MAX each) and the test model folder made at models = WORK_DIR/models
 * (PATH_MAX + 16). 0 on success. */
int wk_setup(const char *bin_arg, const char *src_arg, const char *work_arg, char *bin, char *src, char *work,
             char *models);
int read_file(const char *path, char **out, size_t *n);
double mono(void);
/* 1 when both files exist with the same bytes. */
int wk_file_eq(const char *a, const char *b);
int wk_copy_file(const char *src, const char *dst);
/* The files directly in dir/out, as "out/NAME" (dot files skipped), at most max into names
 * (PATH_MAX each); returns how many there are (-1 when the folder cannot be read). */
int wk_out_files(const char *dir, char (*names)[PATH_MAX], int max);

/* A test program's check: counts into its own static n_pass / n_fail, prints a failure. */
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

#endif
