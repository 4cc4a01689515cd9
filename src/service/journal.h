/* The job journal: an SQLite database (WAL, synchronous=FULL) holding every accepted job, its
 * state, request, result and error, so that no accepted job is lost to a crash. Each state
 * change is one transaction, durable before the call returns. Not thread-safe: the engine
 * serialises calls. */
#ifndef SDXL_SERVICE_JOURNAL_H
#define SDXL_SERVICE_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct sdxl_journal sdxl_journal;

typedef struct sdxl_journal_row {
    char id[40];
    int state;          /* sdxl_job_state */
    int priority;
    int64_t seq;
    double created;
    int attempts;       /* runs started */
    char *request;      /* canonical request JSON */
    char *paths;        /* output files, one per line ("" none) */
    char *metrics;      /* JSON object or "" */
    char error_code[32];
    char *error;
} sdxl_journal_row;

void sdxl_journal_rows_free(sdxl_journal_row *rows, int n);

int sdxl_journal_open(const char *path, sdxl_journal **out, char *err, size_t cap);
void sdxl_journal_close(sdxl_journal *j);

/* Called for each job recovery is about to fail as "worker_crashed", before that state is
 * committed: the caller removes what the killed runs wrote, so a kill in between repeats it. */
typedef void (*sdxl_journal_crash_fn)(void *user, const char *id, const char *request);

/* Crash recovery, once after open: jobs left running are re-queued, or failed with
 * "worker_crashed" (after on_crash, when not NULL) when they had already been started max_attempts
 * times. Then every row, by seq. *n_requeued / *n_crashed count what recovery changed. */
int sdxl_journal_recover(sdxl_journal *j, int max_attempts, sdxl_journal_crash_fn on_crash, void *user,
                         sdxl_journal_row **rows, int *n, int *n_requeued, int *n_crashed, char *err, size_t cap);

int sdxl_journal_add(sdxl_journal *j, const char *id, int64_t seq, int priority, double created, const char *request,
                     char *err, size_t cap);
/* queued -> running; attempts + 1. */
int sdxl_journal_start(sdxl_journal *j, const char *id, char *err, size_t cap);
/* running|queued -> done/failed/cancelled with the result or error. */
int sdxl_journal_finish(sdxl_journal *j, const char *id, int state, const char *paths, const char *metrics,
                        const char *error_code, const char *error, char *err, size_t cap);
/* running -> queued (a drained shutdown that did not run a job). */
int sdxl_journal_requeue(sdxl_journal *j, const char *id, char *err, size_t cap);

#endif
