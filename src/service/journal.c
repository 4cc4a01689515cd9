/* SQLite job journal; see journal.h. */
#include "service/journal.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sdxl_journal {
    sqlite3 *db;
};

static int fail(sqlite3 *db, const char *what, char *err, size_t cap) {
    if (err && cap) snprintf(err, cap, "journal: %s: %s", what, db ? sqlite3_errmsg(db) : "cannot open");
    return 2; /* SDXL_ERR_IO */
}

static int exec(sdxl_journal *j, const char *sql, char *err, size_t cap) {
    char *m = NULL;
    if (sqlite3_exec(j->db, sql, NULL, NULL, &m) != SQLITE_OK) {
        if (err && cap) snprintf(err, cap, "journal: %s", m ? m : "error");
        sqlite3_free(m);
        return 2;
    }
    return 0;
}

int sdxl_journal_open(const char *path, sdxl_journal **out, char *err, size_t cap) {
    *out = NULL;
    sdxl_journal *j = calloc(1, sizeof *j);
    if (!j) return 4;
    if (sqlite3_open_v2(path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL) !=
        SQLITE_OK) {
        int st = fail(j->db, path, err, cap);
        sqlite3_close(j->db);
        free(j);
        return st;
    }
    sqlite3_busy_timeout(j->db, 5000);
    int st = exec(j,
                  "PRAGMA journal_mode=WAL;"
                  "PRAGMA synchronous=FULL;"
                  "CREATE TABLE IF NOT EXISTS jobs ("
                  " id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state INTEGER NOT NULL, priority INTEGER NOT NULL,"
                  " created REAL NOT NULL, started REAL, finished REAL, attempts INTEGER NOT NULL DEFAULT 0,"
                  " request TEXT NOT NULL, paths TEXT NOT NULL DEFAULT '', metrics TEXT NOT NULL DEFAULT '',"
                  " error_code TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '');",
                  err, cap);
    if (st) {
        sqlite3_close(j->db);
        free(j);
        return st;
    }
    *out = j;
    return 0;
}

void sdxl_journal_close(sdxl_journal *j) {
    if (!j) return;
    sqlite3_close(j->db);
    free(j);
}

void sdxl_journal_rows_free(sdxl_journal_row *rows, int n) {
    for (int i = 0; rows && i < n; i++) {
        free(rows[i].request);
        free(rows[i].paths);
        free(rows[i].metrics);
        free(rows[i].error);
    }
    free(rows);
}

static char *dup_col(sqlite3_stmt *s, int c) {
    const unsigned char *t = sqlite3_column_text(s, c);
    int n = sqlite3_column_bytes(s, c);
    char *p = malloc((size_t)n + 1);
    if (!p) return NULL;
    if (t) memcpy(p, t, (size_t)n);
    p[n] = 0;
    return p;
}

int sdxl_journal_recover(sdxl_journal *j, int max_attempts, sdxl_journal_crash_fn on_crash, void *user,
                         sdxl_journal_row **rows, int *n, int *n_requeued, int *n_crashed, char *err, size_t cap) {
    *rows = NULL;
    *n = 0;
    *n_requeued = *n_crashed = 0;
    /* states: 0 queued, 1 running, 2 done, 3 failed, 4 cancelled (sdxl_job_state); one transaction,
     * so the jobs handed to on_crash are the ones failed */
    int st = exec(j, "BEGIN IMMEDIATE;", err, cap);
    if (st) return st;
    sqlite3_stmt *q;
    int rc = SQLITE_ERROR, running = 0;
    if (sqlite3_prepare_v2(j->db, "SELECT id, request FROM jobs WHERE state=1 AND attempts>=?1 ORDER BY seq", -1, &q,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_int(q, 1, max_attempts);
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            if (on_crash) on_crash(user, (const char *)sqlite3_column_text(q, 0), (const char *)sqlite3_column_text(q, 1));
            (*n_crashed)++;
        }
        sqlite3_finalize(q);
    }
    if (rc != SQLITE_DONE ||
        sqlite3_prepare_v2(j->db, "SELECT count(*) FROM jobs WHERE state=1", -1, &q, NULL) != SQLITE_OK) {
        st = fail(j->db, "recover", err, cap);
        goto rollback;
    }
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) running = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    if (rc != SQLITE_ROW) {
        st = fail(j->db, "recover", err, cap);
        goto rollback;
    }
    char sql[512];
    snprintf(sql, sizeof sql,
             "UPDATE jobs SET state=3, error_code='worker_crashed', error='the worker died while running this job "
             "%d times', finished=strftime('%%s','now') WHERE state=1 AND attempts>=%d;"
             "UPDATE jobs SET state=0 WHERE state=1;"
             "COMMIT;",
             max_attempts, max_attempts);
    if ((st = exec(j, sql, err, cap))) goto rollback;
    *n_requeued = running - *n_crashed;
    if (sqlite3_prepare_v2(j->db,
                           "SELECT id, state, priority, seq, created, attempts, request, paths, metrics, error_code, "
                           "error FROM jobs ORDER BY seq",
                           -1, &q, NULL) != SQLITE_OK)
        return fail(j->db, "recover", err, cap);
    int capn = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        if (*n == capn) {
            capn = capn ? 2 * capn : 64;
            sdxl_journal_row *nr = realloc(*rows, (size_t)capn * sizeof *nr);
            if (!nr) {
                sqlite3_finalize(q);
                if (err && cap) snprintf(err, cap, "journal: out of memory");
                return 4;
            }
            *rows = nr;
        }
        sdxl_journal_row *r = &(*rows)[*n];
        memset(r, 0, sizeof *r);
        snprintf(r->id, sizeof r->id, "%s", (const char *)sqlite3_column_text(q, 0));
        r->state = sqlite3_column_int(q, 1);
        r->priority = sqlite3_column_int(q, 2);
        r->seq = sqlite3_column_int64(q, 3);
        r->created = sqlite3_column_double(q, 4);
        r->attempts = sqlite3_column_int(q, 5);
        r->request = dup_col(q, 6);
        r->paths = dup_col(q, 7);
        r->metrics = dup_col(q, 8);
        snprintf(r->error_code, sizeof r->error_code, "%s", (const char *)sqlite3_column_text(q, 9));
        r->error = dup_col(q, 10);
        (*n)++;
        if (!r->request || !r->paths || !r->metrics || !r->error) {
            sqlite3_finalize(q);
            if (err && cap) snprintf(err, cap, "journal: out of memory");
            return 4;
        }
    }
    sqlite3_finalize(q);
    return 0;
rollback:
    exec(j, "ROLLBACK;", NULL, 0);
    *n_crashed = 0;
    return st;
}

static int step_done(sdxl_journal *j, sqlite3_stmt *s, const char *what, char *err, size_t cap) {
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE) return fail(j->db, what, err, cap);
    return 0;
}

int sdxl_journal_add(sdxl_journal *j, const char *id, int64_t seq, int priority, double created, const char *request,
                     char *err, size_t cap) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(j->db, "INSERT INTO jobs (id, seq, state, priority, created, request) VALUES (?,?,0,?,?,?)",
                           -1, &s, NULL) != SQLITE_OK)
        return fail(j->db, "add", err, cap);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, seq);
    sqlite3_bind_int(s, 3, priority);
    sqlite3_bind_double(s, 4, created);
    sqlite3_bind_text(s, 5, request, -1, SQLITE_STATIC);
    return step_done(j, s, "add", err, cap);
}

int sdxl_journal_start(sdxl_journal *j, const char *id, char *err, size_t cap) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(j->db,
                           "UPDATE jobs SET state=1, attempts=attempts+1, started=strftime('%s','now') WHERE id=?", -1,
                           &s, NULL) != SQLITE_OK)
        return fail(j->db, "start", err, cap);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    return step_done(j, s, "start", err, cap);
}

int sdxl_journal_finish(sdxl_journal *j, const char *id, int state, const char *paths, const char *metrics,
                        const char *error_code, const char *error, char *err, size_t cap) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(j->db,
                           "UPDATE jobs SET state=?, paths=?, metrics=?, error_code=?, error=?, "
                           "finished=strftime('%s','now') WHERE id=?",
                           -1, &s, NULL) != SQLITE_OK)
        return fail(j->db, "finish", err, cap);
    sqlite3_bind_int(s, 1, state);
    sqlite3_bind_text(s, 2, paths ? paths : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, metrics ? metrics : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, error_code ? error_code : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, error ? error : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, id, -1, SQLITE_STATIC);
    return step_done(j, s, "finish", err, cap);
}

int sdxl_journal_requeue(sdxl_journal *j, const char *id, char *err, size_t cap) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(j->db, "UPDATE jobs SET state=0, attempts=max(attempts-1,0) WHERE id=? AND state=1", -1, &s,
                           NULL) != SQLITE_OK)
        return fail(j->db, "requeue", err, cap);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    return step_done(j, s, "requeue", err, cap);
}
