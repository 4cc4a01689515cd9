#include "fleet/queue.h"

#include "io/strbuf.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int sdxl_fleet_check_name(const char *what, const char *s, sdxl_err *e) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64) return sdxl_seterr(e, SDXL_ERR_ARG, "%s: must be 1..64 characters", what);
    if (s[0] == '.') return sdxl_seterr(e, SDXL_ERR_ARG, "%s '%s': must not start with '.'", what, s);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return sdxl_seterr(e, SDXL_ERR_ARG, "%s '%s': only letters, digits, '.', '_' and '-' are allowed", what, s);
    }
    return 0;
}

void sdxl_fleet_stream_key(char *buf, size_t cap, const char *prefix, const char *model) {
    if (model && *model)
        snprintf(buf, cap, "%s:jobs:%s", prefix, model);
    else
        snprintf(buf, cap, "%s:jobs", prefix);
}

void sdxl_fleet_new_id(char *buf, size_t cap) {
    uint64_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &r, sizeof r) != (ssize_t)sizeof r) r = 0;
        close(fd);
    }
    r ^= (uint64_t)sdxl_now_ms() << 20 ^ (uint64_t)getpid();
    snprintf(buf, cap, "%016llx", (unsigned long long)r);
}

/* Runs EVAL script with keys and args (binary-safe lengths for args; lens NULL = strlen). */
static redisReply *eval(sdxl_redis *r, const char *script, int nkeys, const char *const *keys, int nargs,
                        const char *const *args, const size_t *arg_lens, sdxl_err *e) {
    const char *argv[32];
    size_t lens[32];
    char nk[16];
    if (3 + nkeys + nargs > 32) {
        sdxl_seterr(e, SDXL_ERR_INTERNAL, "too many script arguments");
        return NULL;
    }
    snprintf(nk, sizeof nk, "%d", nkeys);
    int c = 0;
    argv[c] = "EVAL", lens[c++] = 4;
    argv[c] = script, lens[c++] = strlen(script);
    argv[c] = nk, lens[c++] = strlen(nk);
    for (int i = 0; i < nkeys; i++) argv[c] = keys[i], lens[c++] = strlen(keys[i]);
    for (int i = 0; i < nargs; i++) {
        argv[c] = args[i] ? args[i] : "";
        lens[c] = arg_lens && args[i] ? arg_lens[i] : strlen(argv[c]);
        c++;
    }
    redisReply *rep = sdxl_redis_cmd(r, c, argv, lens, e);
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        sdxl_seterr(e, SDXL_ERR_IO, "redis: %s", rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

static int is_str(const redisReply *x) { return x && (x->type == REDIS_REPLY_STRING || x->type == REDIS_REPLY_STATUS); }

static int bad_reply(sdxl_err *e, const char *what) {
    return sdxl_seterr(e, SDXL_ERR_IO, "redis: unexpected reply to %s", what);
}

/* The group is created in every script that adds to a stream, so that it always exists before
 * the first entry (id 0: a group made later still sees every entry). */
static const char SUBMIT_LUA[] =
    "local n = redis.call('XLEN', KEYS[1])\n"
    "local h = redis.call('HGET', KEYS[2], 'request')\n"
    "if h then\n"
    "  if h == ARGV[2] then return {'exists', n} end\n"
    "  return {'conflict', n}\n"
    "end\n"
    "local lim = tonumber(ARGV[4])\n"
    "if lim > 0 and n >= lim then return {'busy', n} end\n"
    "pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[5], '0', 'MKSTREAM')\n"
    "local en = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1])\n"
    "redis.call('HSET', KEYS[2], 'id', ARGV[1], 'state', 'queued', 'request', ARGV[2], 'stream', KEYS[1],\n"
    "  'entry', en, 'submitted_ms', ARGV[3], 'deliveries', 0)\n"
    "redis.call('SADD', KEYS[4], KEYS[1])\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'event', 'submitted', 'id', ARGV[1], 'at', ARGV[3])\n"
    "return {'ok', n + 1}\n";

int sdxl_fleet_submit(sdxl_redis *r, const char *prefix, const char *stream, const char *id, const char *request,
                      size_t request_len, long max_queue, long *depth, sdxl_err *e) {
    char job[256], events[128], streams[128], now[32], lim[32];
    snprintf(job, sizeof job, "%s:job:%s", prefix, id);
    snprintf(events, sizeof events, "%s:events", prefix);
    snprintf(streams, sizeof streams, "%s:streams", prefix);
    snprintf(now, sizeof now, "%lld", (long long)sdxl_now_ms());
    snprintf(lim, sizeof lim, "%ld", max_queue > 0 ? max_queue : 0);
    const char *keys[] = {stream, job, events, streams};
    const char *args[] = {id, request, now, lim, SDXL_FLEET_GROUP};
    size_t lens[] = {strlen(id), request_len, strlen(now), strlen(lim), strlen(SDXL_FLEET_GROUP)};
    redisReply *rep = eval(r, SUBMIT_LUA, 4, keys, 5, args, lens, e);
    if (!rep) return -1;
    int st = -1;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 && is_str(rep->element[0])) {
        const char *s = rep->element[0]->str;
        if (depth) *depth = (long)rep->element[1]->integer;
        st = !strcmp(s, "ok")       ? SDXL_FLEET_SUBMITTED
             : !strcmp(s, "exists") ? SDXL_FLEET_EXISTS
             : !strcmp(s, "busy")   ? SDXL_FLEET_BUSY
                                    : SDXL_FLEET_CONFLICT;
    } else {
        bad_reply(e, "submit");
    }
    freeReplyObject(rep);
    return st;
}

int sdxl_fleet_ensure_group(sdxl_redis *r, const char *stream, sdxl_err *e) {
    const char *argv[] = {"XGROUP", "CREATE", stream, SDXL_FLEET_GROUP, "0", "MKSTREAM"};
    redisReply *rep = sdxl_redis_cmd(r, 6, argv, NULL, e);
    if (!rep) return -1;
    int rc = 0;
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "BUSYGROUP", 9))
        rc = sdxl_seterr(e, SDXL_ERR_IO, "redis: XGROUP CREATE %s: %s", stream, rep->str);
    freeReplyObject(rep);
    return rc ? -1 : 0;
}

/* Fills out from one [entry-id, [field, value, ...]] element; 0 when it carries a job id. */
static int parse_entry(const redisReply *x, const char *stream, sdxl_fleet_entry *out) {
    if (!x || x->type != REDIS_REPLY_ARRAY || x->elements != 2 || !is_str(x->element[0])) return -1;
    const redisReply *f = x->element[1];
    memset(out, 0, sizeof *out);
    snprintf(out->stream, sizeof out->stream, "%s", stream);
    snprintf(out->entry, sizeof out->entry, "%s", x->element[0]->str);
    if (!f || f->type != REDIS_REPLY_ARRAY) return -1;
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (is_str(f->element[i]) && !strcmp(f->element[i]->str, "id") && is_str(f->element[i + 1]))
            snprintf(out->id, sizeof out->id, "%s", f->element[i + 1]->str);
    return out->id[0] ? 0 : -1;
}

int sdxl_fleet_read(sdxl_redis *r, const char *consumer, const char *const *streams, int n_streams, int block_ms,
                    sdxl_fleet_entry *out, sdxl_err *e) {
    const char *argv[10 + 2 * 12];
    char blk[32];
    if (n_streams < 1 || n_streams > 12) {
        sdxl_seterr(e, SDXL_ERR_ARG, "1..12 streams");
        return -1;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        int c = 0;
        argv[c++] = "XREADGROUP", argv[c++] = "GROUP", argv[c++] = SDXL_FLEET_GROUP, argv[c++] = consumer;
        argv[c++] = "COUNT", argv[c++] = "1";
        if (block_ms > 0) {
            snprintf(blk, sizeof blk, "%d", block_ms);
            argv[c++] = "BLOCK", argv[c++] = blk;
        }
        argv[c++] = "STREAMS";
        for (int i = 0; i < n_streams; i++) argv[c++] = streams[i];
        for (int i = 0; i < n_streams; i++) argv[c++] = ">";
        redisReply *rep = block_ms > 0 ? sdxl_redis_cmd_block(r, block_ms, c, argv, NULL, e)
                                       : sdxl_redis_cmd(r, c, argv, NULL, e);
        if (!rep) return -1;
        if (rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "NOGROUP", 7) && attempt == 0) {
            /* a server restarted without persistence, or a stream nobody submitted to yet */
            freeReplyObject(rep);
            for (int i = 0; i < n_streams; i++)
                if (sdxl_fleet_ensure_group(r, streams[i], e)) return -1;
            continue;
        }
        int n = 0;
        if (rep->type == REDIS_REPLY_ARRAY) {
            for (size_t s = 0; s < rep->elements; s++) {
                const redisReply *sr = rep->element[s];
                if (!sr || sr->type != REDIS_REPLY_ARRAY || sr->elements != 2 || !is_str(sr->element[0])) continue;
                const redisReply *ents = sr->element[1];
                for (size_t k = 0; ents && ents->type == REDIS_REPLY_ARRAY && k < ents->elements && n < n_streams; k++)
                    if (parse_entry(ents->element[k], sr->element[0]->str, &out[n]) == 0) n++;
            }
        } else if (rep->type == REDIS_REPLY_ERROR) {
            sdxl_seterr(e, SDXL_ERR_IO, "redis: XREADGROUP: %s", rep->str);
            n = -1;
        }
        freeReplyObject(rep);
        return n;
    }
    return 0;
}

/* The oldest entry idle for ARGV[3] ms, with the consumer that held it. KEYS: stream.
 * ARGV: group, consumer, min_idle. Returns {} or {entry, previous owner, job id}. */
static const char CLAIM_LUA[] =
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', 1)\n"
    "if #p == 0 then return {} end\n"
    "local eid, owner = p[1][1], p[1][2]\n"
    "local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], eid)\n"
    "if #c == 0 or not c[1] then\n"
    "  redis.call('XACK', KEYS[1], ARGV[1], eid)\n"
    "  return {}\n"
    "end\n"
    "local f = c[1][2]\n"
    "for i = 1, #f, 2 do if f[i] == 'id' then return {eid, owner, f[i + 1]} end end\n"
    "return {eid, owner, ''}\n";

int sdxl_fleet_claim(sdxl_redis *r, const char *consumer, const char *stream, int64_t min_idle_ms,
                     sdxl_fleet_entry *out, sdxl_err *e) {
    char idle[32];
    snprintf(idle, sizeof idle, "%lld", (long long)min_idle_ms);
    const char *keys[] = {stream};
    const char *args[] = {SDXL_FLEET_GROUP, consumer, idle};
    redisReply *rep = eval(r, CLAIM_LUA, 1, keys, 3, args, NULL, e);
    if (!rep) {
        /* a stream nobody created yet has no group: nothing to claim */
        return strstr(e->msg, "NOGROUP") ? 0 : -1;
    }
    int n = 0;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 && is_str(rep->element[0]) && is_str(rep->element[1]) &&
        is_str(rep->element[2])) {
        memset(out, 0, sizeof *out);
        snprintf(out->stream, sizeof out->stream, "%s", stream);
        snprintf(out->entry, sizeof out->entry, "%s", rep->element[0]->str);
        snprintf(out->from, sizeof out->from, "%s", rep->element[1]->str);
        snprintf(out->id, sizeof out->id, "%s", rep->element[2]->str);
        out->claimed = 1;
        n = 1;
    }
    freeReplyObject(rep);
    return n;
}

static const char RENEW_LUA[] =
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])\n"
    "if #p == 0 then return 0 end\n"
    "redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')\n"
    "return 1\n";

int sdxl_fleet_renew(sdxl_redis *r, const char *consumer, const sdxl_fleet_entry *en, sdxl_err *e) {
    const char *keys[] = {en->stream};
    const char *args[] = {SDXL_FLEET_GROUP, consumer, en->entry};
    redisReply *rep = eval(r, RENEW_LUA, 1, keys, 3, args, NULL, e);
    if (!rep) return -1;
    int n = rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : -1;
    if (n < 0) bad_reply(e, "renew");
    freeReplyObject(rep);
    return n;
}

/* KEYS: job, stream, dead, events, stats, channel.
 * ARGV: group, entry, worker, now, max_deliveries, unused, id */
static const char START_LUA[] =
    "local function ack() redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]); redis.call('XDEL', KEYS[2], ARGV[2]) end\n"
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then ack(); return {'skip', 0} end\n"
    "if st == 'done' or st == 'failed' then ack(); return {'skip', 0} end\n"
    "if redis.call('HGET', KEYS[1], 'cancel') == '1' then\n"
    "  local msg = 'cancelled before it finished'\n"
    "  redis.call('HSET', KEYS[1], 'state', 'failed', 'error_code', 'cancelled', 'error', msg, 'finished_ms', ARGV[4],\n"
    "    'finished_by', ARGV[3])\n"
    "  ack()\n"
    "  redis.call('HINCRBY', KEYS[5], 'cancelled', 1)\n"
    "  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'event', 'cancelled', 'id', ARGV[7], 'at', ARGV[4])\n"
    "  redis.call('PUBLISH', KEYS[6], cjson.encode({job = ARGV[7], event = 'failed', error_code = 'cancelled',\n"
    "    error = msg}))\n"
    "  return {'skip', 0}\n"
    "end\n"
    "local prev = redis.call('HGET', KEYS[1], 'worker') or ''\n"
    "if st == 'running' and prev == ARGV[3] and redis.call('HGET', KEYS[1], 'run_entry') == ARGV[2] then\n"
    "  return {'run', tonumber(redis.call('HGET', KEYS[1], 'deliveries')), redis.call('HGET', KEYS[1], 'request')}\n"
    "end\n"
    "local d = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)\n"
    "if d > tonumber(ARGV[5]) then\n"
    "  local msg = 'its worker stopped during each of its ' .. (d - 1) .. ' deliveries (last: ' .. prev .. ')'\n"
    "  redis.call('HSET', KEYS[1], 'state', 'failed', 'error_code', 'worker_crashed', 'error', msg,\n"
    "    'finished_ms', ARGV[4], 'finished_by', ARGV[3])\n"
    "  redis.call('XADD', KEYS[3], '*', 'id', ARGV[7], 'reason', 'worker_crashed', 'deliveries', d,\n"
    "    'last_worker', prev, 'at', ARGV[4])\n"
    "  ack()\n"
    "  redis.call('HINCRBY', KEYS[5], 'dead', 1)\n"
    "  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'event', 'dead', 'id', ARGV[7], 'at', ARGV[4],\n"
    "    'worker', ARGV[3])\n"
    "  redis.call('PUBLISH', KEYS[6], cjson.encode({job = ARGV[7], event = 'failed', error_code = 'worker_crashed',\n"
    "    error = msg}))\n"
    "  return {'dead', d}\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[3], 'started_ms', ARGV[4], 'run_entry', ARGV[2])\n"
    "redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'event', 'started', 'id', ARGV[7], 'at', ARGV[4],\n"
    "  'worker', ARGV[3], 'from', prev, 'delivery', d)\n"
    "return {'run', d, redis.call('HGET', KEYS[1], 'request')}\n";

/* KEYS: job, events, stats. ARGV: worker, now, id, previous owner */
static const char CLAIMED_LUA[] =
    "local prev = ARGV[4]\n"
    "redis.call('HSET', KEYS[1], 'claimed_ms', ARGV[2], 'claimed_from', prev, 'claimed_by', ARGV[1])\n"
    "redis.call('HINCRBY', KEYS[3], 'claims', 1)\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'event', 'claimed', 'id', ARGV[3], 'at', ARGV[2],\n"
    "  'worker', ARGV[1], 'from', prev)\n"
    "return 1\n";

int sdxl_fleet_note_claim(sdxl_redis *r, const char *prefix, const char *worker, const sdxl_fleet_entry *en,
                          sdxl_err *e) {
    char job[256], events[128], stats[128], now[32];
    snprintf(job, sizeof job, "%s:job:%s", prefix, en->id);
    snprintf(events, sizeof events, "%s:events", prefix);
    snprintf(stats, sizeof stats, "%s:stats", prefix);
    snprintf(now, sizeof now, "%lld", (long long)sdxl_now_ms());
    const char *keys[] = {job, events, stats};
    const char *args[] = {worker, now, en->id, en->from};
    redisReply *rep = eval(r, CLAIMED_LUA, 3, keys, 4, args, NULL, e);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

static void job_keys(const char *prefix, const char *id, char *job, size_t jc, char *chan, size_t cc) {
    snprintf(job, jc, "%s:job:%s", prefix, id);
    snprintf(chan, cc, "%s:progress:%s", prefix, id);
}

int sdxl_fleet_start(sdxl_redis *r, const char *prefix, const char *worker, const sdxl_fleet_entry *en,
                     int max_deliveries, char **request, int *deliveries, sdxl_err *e) {
    char job[256], chan[256], dead[128], events[128], stats[128], now[32], maxd[16];
    job_keys(prefix, en->id, job, sizeof job, chan, sizeof chan);
    snprintf(dead, sizeof dead, "%s:dead", prefix);
    snprintf(events, sizeof events, "%s:events", prefix);
    snprintf(stats, sizeof stats, "%s:stats", prefix);
    snprintf(now, sizeof now, "%lld", (long long)sdxl_now_ms());
    snprintf(maxd, sizeof maxd, "%d", max_deliveries);
    const char *keys[] = {job, en->stream, dead, events, stats, chan};
    const char *args[] = {SDXL_FLEET_GROUP, en->entry, worker, now, maxd, "0", en->id};
    *request = NULL;
    *deliveries = 0;
    redisReply *rep = eval(r, START_LUA, 6, keys, 7, args, NULL, e);
    if (!rep) return -1;
    int st = -1;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 && is_str(rep->element[0])) {
        const char *s = rep->element[0]->str;
        *deliveries = (int)rep->element[1]->integer;
        if (!strcmp(s, "run") && rep->elements == 3 && is_str(rep->element[2])) {
            *request = malloc(rep->element[2]->len + 1);
            if (*request) {
                memcpy(*request, rep->element[2]->str, rep->element[2]->len);
                (*request)[rep->element[2]->len] = 0;
                st = SDXL_FLEET_RUN;
            } else {
                sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
            }
        } else if (!strcmp(s, "skip")) {
            st = SDXL_FLEET_SKIP;
        } else if (!strcmp(s, "dead")) {
            st = SDXL_FLEET_DEAD;
        } else {
            bad_reply(e, "start");
        }
    } else {
        bad_reply(e, "start");
    }
    freeReplyObject(rep);
    return st;
}

/* KEYS: job, stream, events, stats, channel.
 * ARGV: group, entry, worker, now, state, outputs, seeds, stats, error_code, error, id, ttl, final_event */
static const char FINISH_LUA[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])\n"
    "redis.call('XDEL', KEYS[2], ARGV[2])\n"
    "if st == 'done' or st == 'failed' then\n"
    "  if redis.call('HGET', KEYS[1], 'finished_by') == ARGV[3] then return 'recorded' end\n"
    "  redis.call('HINCRBY', KEYS[4], 'duplicate_finishes', 1)\n"
    "  return 'duplicate'\n"
    "end\n"
    "redis.call('HDEL', KEYS[1], 'progress')\n"
    "redis.call('HSET', KEYS[1], 'state', ARGV[5], 'finished_ms', ARGV[4], 'finished_by', ARGV[3],\n"
    "  'outputs', ARGV[6], 'seeds', ARGV[7], 'stats', ARGV[8], 'error_code', ARGV[9], 'error', ARGV[10])\n"
    "redis.call('HINCRBY', KEYS[4], ARGV[5], 1)\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'event', ARGV[5], 'id', ARGV[11], 'at', ARGV[4],\n"
    "  'worker', ARGV[3])\n"
    "redis.call('PUBLISH', KEYS[5], ARGV[13])\n"
    "if tonumber(ARGV[12]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[12]) end\n"
    "return 'recorded'\n";

int sdxl_fleet_finish(sdxl_redis *r, const char *prefix, const char *worker, const sdxl_fleet_entry *en,
                      const sdxl_fleet_result *res, long ttl_s, sdxl_err *e) {
    char job[256], chan[256], events[128], stats[128], now[32], ttl[32];
    job_keys(prefix, en->id, job, sizeof job, chan, sizeof chan);
    snprintf(events, sizeof events, "%s:events", prefix);
    snprintf(stats, sizeof stats, "%s:stats", prefix);
    snprintf(now, sizeof now, "%lld", (long long)sdxl_now_ms());
    snprintf(ttl, sizeof ttl, "%ld", ttl_s > 0 ? ttl_s : 0);
    const char *outputs = res->outputs ? res->outputs : "[]";
    const char *seeds = res->seeds ? res->seeds : "[]";
    const char *stj = res->stats ? res->stats : "{}";
    sdxl_strbuf fin = {0};
    sdxl_sb_str(&fin, "{\"job\":");
    sdxl_sb_json(&fin, en->id);
    sdxl_sb_printf(&fin, ",\"event\":\"%s\"", res->ok ? "done" : "failed");
    if (res->ok) {
        sdxl_sb_printf(&fin, ",\"outputs\":%s,\"seeds\":%s,\"stats\":%s", outputs, seeds, stj);
    } else {
        sdxl_sb_str(&fin, ",\"error_code\":");
        sdxl_sb_json(&fin, res->error_code ? res->error_code : "runtime");
        sdxl_sb_str(&fin, ",\"error\":");
        sdxl_sb_json(&fin, res->error ? res->error : "");
    }
    sdxl_sb_str(&fin, "}");
    if (fin.oom) {
        sdxl_sb_free(&fin);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory"), -1;
    }
    const char *keys[] = {job, en->stream, events, stats, chan};
    const char *args[] = {SDXL_FLEET_GROUP,
                          en->entry,
                          worker,
                          now,
                          res->ok ? "done" : "failed",
                          outputs,
                          seeds,
                          stj,
                          res->ok ? "" : (res->error_code ? res->error_code : "runtime"),
                          res->ok ? "" : (res->error ? res->error : ""),
                          en->id,
                          ttl,
                          fin.p};
    redisReply *rep = eval(r, FINISH_LUA, 5, keys, 13, args, NULL, e);
    sdxl_sb_free(&fin);
    if (!rep) return -1;
    int st = -1;
    if (is_str(rep))
        st = !strcmp(rep->str, "duplicate") ? SDXL_FLEET_DUPLICATE : SDXL_FLEET_RECORDED;
    else
        bad_reply(e, "finish");
    freeReplyObject(rep);
    return st;
}

int sdxl_fleet_publish_progress(sdxl_redis *r, const char *prefix, const char *id, const char *json, sdxl_err *e) {
    char job[256], chan[256];
    job_keys(prefix, id, job, sizeof job, chan, sizeof chan);
    const char *keys[] = {job, chan};
    const char *args[] = {json};
    static const char LUA[] =
        "if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end\n"
        "redis.call('HSET', KEYS[1], 'progress', ARGV[1])\n"
        "return redis.call('PUBLISH', KEYS[2], ARGV[1])\n";
    redisReply *rep = eval(r, LUA, 2, keys, 1, args, NULL, e);
    if (!rep) return -1;
    freeReplyObject(rep);
    return 0;
}

/* KEYS: job, events, stats, channel. ARGV: now, id, group. A queued job fails as cancelled at once
 * (its entry is acknowledged and deleted, so no worker starts it); a running one gets cancel=1,
 * which its worker polls, and which fails it at its next start if that worker dies meanwhile. */
static const char CANCEL_LUA[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return 'unknown' end\n"
    "if st == 'done' or st == 'failed' then return st end\n"
    "if st == 'queued' then\n"
    "  local s, en = redis.call('HGET', KEYS[1], 'stream'), redis.call('HGET', KEYS[1], 'entry')\n"
    "  if s and en then redis.call('XACK', s, ARGV[3], en); redis.call('XDEL', s, en) end\n"
    "  local msg = 'cancelled while queued'\n"
    "  redis.call('HSET', KEYS[1], 'state', 'failed', 'error_code', 'cancelled', 'error', msg, 'finished_ms', ARGV[1],\n"
    "    'finished_by', '')\n"
    "  redis.call('HINCRBY', KEYS[3], 'cancelled', 1)\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'event', 'cancelled', 'id', ARGV[2], 'at', ARGV[1])\n"
    "  redis.call('PUBLISH', KEYS[4], cjson.encode({job = ARGV[2], event = 'failed', error_code = 'cancelled',\n"
    "    error = msg}))\n"
    "  return 'cancelled'\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'cancel', '1')\n"
    "return 'cancelling'\n";

int sdxl_fleet_cancel(sdxl_redis *r, const char *prefix, const char *id, sdxl_err *e) {
    char job[256], chan[256], events[128], stats[128], now[32];
    job_keys(prefix, id, job, sizeof job, chan, sizeof chan);
    snprintf(events, sizeof events, "%s:events", prefix);
    snprintf(stats, sizeof stats, "%s:stats", prefix);
    snprintf(now, sizeof now, "%lld", (long long)sdxl_now_ms());
    const char *keys[] = {job, events, stats, chan};
    const char *args[] = {now, id, SDXL_FLEET_GROUP};
    redisReply *rep = eval(r, CANCEL_LUA, 4, keys, 3, args, NULL, e);
    if (!rep) return -1;
    int st = -1;
    if (is_str(rep)) {
        st = !strcmp(rep->str, "unknown")      ? SDXL_FLEET_CANCEL_UNKNOWN
             : !strcmp(rep->str, "cancelled")  ? SDXL_FLEET_CANCELLED
             : !strcmp(rep->str, "cancelling") ? SDXL_FLEET_CANCELLING
                                               : SDXL_FLEET_CANCEL_FINISHED;
    } else {
        bad_reply(e, "cancel");
    }
    freeReplyObject(rep);
    return st;
}
