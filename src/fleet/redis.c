#include "fleet/redis.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

int64_t sdxl_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sdxl_sleep_ms(int ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Copies src[0..n) into dst with %XX decoded; 0 on success. */
static int pct_decode(char *dst, size_t cap, const char *src, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)src[i];
        if (ch == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)src[i + 1]) || !isxdigit((unsigned char)src[i + 2])) return -1;
            char hx[3] = {src[i + 1], src[i + 2], 0};
            ch = (int)strtol(hx, NULL, 16);
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        dst[o++] = (char)ch;
    }
    dst[o] = 0;
    return 0;
}

static int parse_uint(const char *s, size_t n, long max, long *out) {
    if (n == 0 || n > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max) return -1;
    *out = v;
    return 0;
}

int sdxl_redis_url_parse(const char *url, sdxl_redis_url *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url || !*url) return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL: empty");
    const char *p = url;
    if (!strncmp(p, "redis://", 8))
        p += 8;
    else if (strstr(p, "://"))
        return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL '%s': scheme must be redis:// (TLS and unix sockets are not supported)",
                           url);
    const char *end = p + strlen(p);
    const char *slash = strchr(p, '/');
    const char *auth_end = NULL;
    for (const char *q = p; q < (slash ? slash : end); q++)
        if (*q == '@') auth_end = q;
    if (auth_end) {
        const char *colon = memchr(p, ':', (size_t)(auth_end - p));
        if (!colon)
            return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL '%s': credentials must be [user]:password@", url);
        if (pct_decode(out->user, sizeof out->user, p, (size_t)(colon - p)) ||
            pct_decode(out->password, sizeof out->password, colon + 1, (size_t)(auth_end - colon - 1)))
            return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL: bad percent-escape or too long user/password");
        p = auth_end + 1;
    }
    const char *host_end = slash ? slash : end;
    const char *port_at = NULL;
    const char *h0 = p, *h1;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(host_end - p));
        if (!rb) return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL '%s': unclosed '[' in host", url);
        h0 = p + 1;
        h1 = rb;
        if (rb + 1 < host_end) {
            if (rb[1] != ':') return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL '%s': junk after ']'", url);
            port_at = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(host_end - p));
        h1 = colon ? colon : host_end;
        if (colon) port_at = colon + 1;
    }
    if (h1 == h0) return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL '%s': missing host", url);
    if ((size_t)(h1 - h0) >= sizeof out->host) return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL: host too long");
    memcpy(out->host, h0, (size_t)(h1 - h0));
    out->host[h1 - h0] = 0;
    if (port_at) {
        long v;
        if (parse_uint(port_at, (size_t)(host_end - port_at), 65535, &v) || v == 0)
            return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL '%s': port must be 1..65535", url);
        out->port = (int)v;
    }
    if (slash && slash + 1 < end) {
        long v;
        if (parse_uint(slash + 1, (size_t)(end - slash - 1), 1000000, &v))
            return sdxl_seterr(e, SDXL_ERR_ARG, "redis URL '%s': database must be a number after '/'", url);
        out->db = (int)v;
    }
    return 0;
}

void sdxl_redis_init(sdxl_redis *r, const sdxl_redis_url *url) {
    memset(r, 0, sizeof *r);
    r->url = *url;
    r->timeout_ms = 5000;
    r->backoff_min_ms = 100;
    r->backoff_max_ms = 5000;
    r->retry_for_ms = -1;
}

void sdxl_redis_close(sdxl_redis *r) {
    if (r->c) redisFree(r->c);
    r->c = NULL;
}

static void set_timeout(redisContext *c, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    redisSetTimeout(c, tv);
}

/* One connect attempt with AUTH and SELECT; 0 on success, else last_error is set. */
static int connect_once(sdxl_redis *r) {
    sdxl_redis_close(r);
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(r->url.host, r->url.port, tv);
    if (!c) {
        snprintf(r->last_error, sizeof r->last_error, "out of memory");
        return -1;
    }
    if (c->err) {
        snprintf(r->last_error, sizeof r->last_error, "%s", c->errstr);
        redisFree(c);
        return -1;
    }
    set_timeout(c, r->timeout_ms);
    redisEnableKeepAlive(c);
    redisReply *rep = NULL;
    if (r->url.password[0]) {
        rep = r->url.user[0] ? redisCommand(c, "AUTH %s %s", r->url.user, r->url.password)
                             : redisCommand(c, "AUTH %s", r->url.password);
        if (!rep || rep->type == REDIS_REPLY_ERROR) goto fail;
        freeReplyObject(rep);
    }
    if (r->url.db) {
        rep = redisCommand(c, "SELECT %d", r->url.db);
        if (!rep || rep->type == REDIS_REPLY_ERROR) goto fail;
        freeReplyObject(rep);
    }
    r->c = c;
    return 0;
fail:
    snprintf(r->last_error, sizeof r->last_error, "%s", rep ? rep->str : c->errstr);
    if (rep) freeReplyObject(rep);
    redisFree(c);
    return -1;
}

static int stopped(const sdxl_redis *r) { return r->stop && atomic_load(r->stop); }

/* Connects with exponential backoff per the policy. */
static int ensure(sdxl_redis *r, sdxl_err *e) {
    if (r->c) return 0;
    int64_t t0 = sdxl_now_ms();
    int delay = r->backoff_min_ms > 0 ? r->backoff_min_ms : 1;
    for (;;) {
        if (connect_once(r) == 0) {
            if (r->ever_connected) r->reconnects++;
            r->ever_connected = 1;
            return 0;
        }
        if (stopped(r)) break;
        if (r->retry_for_ms >= 0 && sdxl_now_ms() - t0 >= r->retry_for_ms) break;
        /* sleep in slices so that a stop request is seen promptly */
        for (int slept = 0; slept < delay && !stopped(r); slept += 50) sdxl_sleep_ms(delay - slept < 50 ? delay - slept : 50);
        delay = delay * 2 > r->backoff_max_ms ? r->backoff_max_ms : delay * 2;
    }
    return sdxl_seterr(e, SDXL_ERR_IO, "redis %s:%d: %s", r->url.host, r->url.port,
                       stopped(r) ? "stopped while reconnecting" : r->last_error);
}

int sdxl_redis_connect(sdxl_redis *r, sdxl_err *e) { return ensure(r, e); }

static redisReply *run(sdxl_redis *r, int block_ms, int argc, const char **argv, const size_t *lens, sdxl_err *e) {
    int64_t t0 = sdxl_now_ms();
    for (;;) {
        if (ensure(r, e)) return NULL;
        if (block_ms > 0) set_timeout(r->c, block_ms + r->timeout_ms);
        redisReply *rep = redisCommandArgv(r->c, argc, argv, lens);
        if (block_ms > 0 && rep) set_timeout(r->c, r->timeout_ms);
        if (rep) {
            /* a server that is loading its data set answers LOADING: wait like for a lost connection */
            if (rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "LOADING", 7)) {
                freeReplyObject(rep);
                sdxl_sleep_ms(r->backoff_min_ms);
                continue;
            }
            return rep;
        }
        snprintf(r->last_error, sizeof r->last_error, "%s", r->c->errstr);
        sdxl_redis_close(r);
        if (stopped(r) || (r->retry_for_ms >= 0 && sdxl_now_ms() - t0 >= r->retry_for_ms)) {
            sdxl_seterr(e, SDXL_ERR_IO, "redis %s:%d: %s", r->url.host, r->url.port, r->last_error);
            return NULL;
        }
    }
}

redisReply *sdxl_redis_cmd(sdxl_redis *r, int argc, const char **argv, const size_t *lens, sdxl_err *e) {
    return run(r, 0, argc, argv, lens, e);
}

redisReply *sdxl_redis_cmd_block(sdxl_redis *r, int block_ms, int argc, const char **argv, const size_t *lens,
                                 sdxl_err *e) {
    return run(r, block_ms, argc, argv, lens, e);
}

/* Splits a format without binary arguments into argv (%s and %d/%lld only, space-separated). */
redisReply *sdxl_redis_cmdf(sdxl_redis *r, sdxl_err *e, const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) {
        sdxl_seterr(e, SDXL_ERR_LIMIT, "redis command too long");
        return NULL;
    }
    const char *argv[64];
    size_t lens[64];
    int argc = 0;
    for (char *p = buf; *p && argc < 64;) {
        while (*p == ' ') *p++ = 0;
        if (!*p) break;
        argv[argc] = p;
        while (*p && *p != ' ') p++;
        lens[argc] = (size_t)(p - argv[argc]);
        argc++;
    }
    return run(r, 0, argc, argv, lens, e);
}
