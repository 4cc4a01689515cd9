/* A Redis connection that survives server restarts: redis:// URLs, AUTH/SELECT on every
 * (re)connect, and commands retried with exponential backoff while the server is away.
 * One connection per thread (hiredis contexts are not thread-safe). */
#ifndef SDXL_FLEET_REDIS_H
#define SDXL_FLEET_REDIS_H

#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct sdxl_redis_url {
    char host[256];
    int port;      /* default 6379 */
    int db;        /* default 0 */
    char user[128];     /* empty = AUTH with the password only */
    char password[256]; /* empty = no AUTH */
} sdxl_redis_url;

/* Parses redis://[[user]:password@]host[:port][/db]; "host:port" alone is accepted too.
 * Errors name the part at fault. */
int sdxl_redis_url_parse(const char *url, sdxl_redis_url *out, sdxl_err *e);

typedef struct sdxl_redis {
    redisContext *c;         /* NULL while disconnected */
    sdxl_redis_url url;
    int timeout_ms;          /* connect and per-command timeout (default 5000) */
    int backoff_min_ms;      /* first retry delay (default 100), doubled up to backoff_max_ms */
    int backoff_max_ms;      /* default 5000 */
    int64_t retry_for_ms;    /* give up after this long without a server; < 0 = until *stop */
    const atomic_int *stop;  /* may be NULL; a nonzero value ends the retries */
    int reconnects;          /* successful reconnects after the first connect */
    int ever_connected;
    char last_error[256];    /* what the last failed attempt said */
} sdxl_redis;

/* Fills r with defaults for url; connects lazily on the first command. */
void sdxl_redis_init(sdxl_redis *r, const sdxl_redis_url *url);
void sdxl_redis_close(sdxl_redis *r);
/* Connects now (with the retry policy). */
int sdxl_redis_connect(sdxl_redis *r, sdxl_err *e);

/* Runs one command given as argv (binary-safe), reconnecting and retrying on I/O errors per the
 * policy. Returns the reply (freeReplyObject it), which may be a Redis error reply; NULL only when
 * the retries ran out or *stop was set (then e says why). Only idempotent commands, or scripts
 * written to be re-run, may go through here. */
redisReply *sdxl_redis_cmd(sdxl_redis *r, int argc, const char **argv, const size_t *lens, sdxl_err *e);
/* printf-style convenience for commands without binary arguments. */
redisReply *sdxl_redis_cmdf(sdxl_redis *r, sdxl_err *e, const char *fmt, ...);
/* Blocking-read variant: the socket timeout is raised to block_ms + timeout_ms for this call. */
redisReply *sdxl_redis_cmd_block(sdxl_redis *r, int block_ms, int argc, const char **argv, const size_t *lens,
                                 sdxl_err *e);

int64_t sdxl_now_ms(void);     /* wall clock, ms since the epoch (comparable across processes) */
void sdxl_sleep_ms(int ms);

#endif
