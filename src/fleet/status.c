#include "fleet/status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet/queue.h"

static int is_str(const redisReply *x) { return x && (x->type == REDIS_REPLY_STRING || x->type == REDIS_REPLY_STATUS); }

static long long int_of(const redisReply *x) {
    if (!x) return 0;
    if (x->type == REDIS_REPLY_INTEGER) return x->integer;
    if (is_str(x)) return strtoll(x->str, NULL, 10);
    return 0;
}

static int io_fail(redisReply *rep, sdxl_err *e, const char *what) {
    if (rep && rep->type == REDIS_REPLY_ERROR) sdxl_seterr(e, SDXL_ERR_IO, "redis: %s: %s", what, rep->str);
    if (rep) freeReplyObject(rep);
    return -1;
}

/* Appends stream's length and group figures. */
static int stream_json(sdxl_redis *r, const char *stream, sdxl_strbuf *out, sdxl_err *e) {
    redisReply *len = sdxl_redis_cmdf(r, e, "XLEN %s", stream);
    if (!len || len->type != REDIS_REPLY_INTEGER) return io_fail(len, e, "XLEN");
    long long n = len->integer, pending = 0, consumers = 0;
    freeReplyObject(len);
    redisReply *g = sdxl_redis_cmdf(r, e, "XINFO GROUPS %s", stream);
    if (!g) return -1;
    if (g->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < g->elements; i++) {
            const redisReply *m = g->element[i];
            int ours = 0;
            long long pe = 0, co = 0;
            for (size_t k = 0; m && m->type == REDIS_REPLY_ARRAY && k + 1 < m->elements; k += 2) {
                if (!is_str(m->element[k])) continue;
                const char *f = m->element[k]->str;
                if (!strcmp(f, "name")) ours = is_str(m->element[k + 1]) && !strcmp(m->element[k + 1]->str, SDXL_FLEET_GROUP);
                if (!strcmp(f, "pending")) pe = int_of(m->element[k + 1]);
                if (!strcmp(f, "consumers")) co = int_of(m->element[k + 1]);
            }
            if (ours) pending = pe, consumers = co;
        }
    freeReplyObject(g);
    sdxl_sb_str(out, "{\"stream\":");
    sdxl_sb_json(out, stream);
    sdxl_sb_printf(out, ",\"length\":%lld,\"pending\":%lld,\"waiting\":%lld,\"consumers\":%lld}", n, pending,
                   n - pending > 0 ? n - pending : 0, consumers);
    return 0;
}

int sdxl_fleet_status_json(sdxl_redis *r, const char *prefix, sdxl_strbuf *out, sdxl_err *e) {
    char key[256];
    sdxl_sb_str(out, "{\"streams\":[");
    char def[192];
    sdxl_fleet_stream_key(def, sizeof def, prefix, NULL);
    if (stream_json(r, def, out, e)) return -1;
    redisReply *sm = sdxl_redis_cmdf(r, e, "SMEMBERS %s:streams", prefix);
    if (!sm || sm->type != REDIS_REPLY_ARRAY) return io_fail(sm, e, "SMEMBERS");
    for (size_t i = 0; i < sm->elements; i++) {
        if (!is_str(sm->element[i]) || !strcmp(sm->element[i]->str, def)) continue;
        sdxl_sb_str(out, ",");
        if (stream_json(r, sm->element[i]->str, out, e)) {
            freeReplyObject(sm);
            return -1;
        }
    }
    freeReplyObject(sm);
    sdxl_sb_str(out, "],\"workers\":[");
    char cursor[32] = "0";
    int first = 1;
    snprintf(key, sizeof key, "%s:worker:*", prefix);
    do {
        redisReply *sc = sdxl_redis_cmdf(r, e, "SCAN %s MATCH %s COUNT 1000", cursor, key);
        if (!sc || sc->type != REDIS_REPLY_ARRAY || sc->elements != 2 || !is_str(sc->element[0]))
            return io_fail(sc, e, "SCAN");
        snprintf(cursor, sizeof cursor, "%s", sc->element[0]->str);
        const redisReply *keys = sc->element[1];
        for (size_t i = 0; keys->type == REDIS_REPLY_ARRAY && i < keys->elements; i++) {
            if (!is_str(keys->element[i])) continue;
            const char *argv[] = {"GET", keys->element[i]->str};
            redisReply *v = sdxl_redis_cmd(r, 2, argv, NULL, e);
            if (v && is_str(v) && v->str[0] == '{') {
                if (!first) sdxl_sb_str(out, ",");
                sdxl_sb_put(out, v->str, v->len);
                first = 0;
            }
            if (v) freeReplyObject(v);
        }
        freeReplyObject(sc);
    } while (strcmp(cursor, "0"));
    redisReply *dl = sdxl_redis_cmdf(r, e, "XLEN %s:dead", prefix);
    if (!dl || dl->type != REDIS_REPLY_INTEGER) return io_fail(dl, e, "XLEN");
    sdxl_sb_printf(out, "],\"dead\":%lld,\"stats\":{", dl->integer);
    freeReplyObject(dl);
    static const char *const FIELDS[] = {"done", "failed", "dead", "claims", "duplicate_finishes", "cancelled"};
    for (size_t i = 0; i < sizeof FIELDS / sizeof FIELDS[0]; i++) {
        redisReply *v = sdxl_redis_cmdf(r, e, "HGET %s:stats %s", prefix, FIELDS[i]);
        if (!v) return -1;
        sdxl_sb_printf(out, "%s\"%s\":%lld", i ? "," : "", FIELDS[i], int_of(v));
        freeReplyObject(v);
    }
    sdxl_sb_str(out, "}}");
    return out->oom ? (sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory"), -1) : 0;
}

int sdxl_fleet_job_json(sdxl_redis *r, const char *prefix, const char *id, sdxl_strbuf *out, sdxl_err *e) {
    char key[256];
    snprintf(key, sizeof key, "%s:job:%s", prefix, id);
    const char *argv[] = {"HGETALL", key};
    redisReply *h = sdxl_redis_cmd(r, 2, argv, NULL, e);
    if (!h || h->type != REDIS_REPLY_ARRAY) return io_fail(h, e, "HGETALL");
    if (h->elements == 0) {
        freeReplyObject(h);
        return 0;
    }
    static const char *const RAW[] = {"outputs", "seeds", "stats", "progress"};
    static const char *const NUM[] = {"submitted_ms", "started_ms", "claimed_ms", "finished_ms", "deliveries"};
    sdxl_sb_str(out, "{");
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (!is_str(k) || !is_str(v)) continue;
        if (i) sdxl_sb_str(out, ",");
        sdxl_sb_json(out, k->str);
        sdxl_sb_str(out, ":");
        int raw = 0, num = 0;
        for (size_t j = 0; j < sizeof RAW / sizeof RAW[0]; j++) raw |= !strcmp(k->str, RAW[j]);
        for (size_t j = 0; j < sizeof NUM / sizeof NUM[0]; j++) num |= !strcmp(k->str, NUM[j]);
        if (raw && v->len && (v->str[0] == '[' || v->str[0] == '{'))
            sdxl_sb_put(out, v->str, v->len);
        else if (num && v->len)
            sdxl_sb_printf(out, "%lld", strtoll(v->str, NULL, 10));
        else
            sdxl_sb_json(out, v->str);
    }
    sdxl_sb_str(out, "}");
    freeReplyObject(h);
    return out->oom ? (sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory"), -1) : 1;
}
