/* Text-encoder output cache. See condcache.h. Entries are few (a budget of tens of MiB holds tens
 * of SDXL conditionings), so lookup is a scan over a hash-prefiltered array. */
#include "pipeline/condcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
typedef struct entry {
    uint64_t model, hash, last_use, bytes;
    void *key;
    size_t key_len;
    sdxl_cond cd; /* context and pooled owned; no prompt LoRA tags */
} entry;

struct sdxl_pl_condcache {
    pthread_mutex_t mu;
    uint64_t max_bytes, bytes, clock;
    entry *e;
    int n, cap;
    int64_t hits, misses;
};

static uint64_t fnv1a(uint64_t model, const void *key, size_t n) {
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ULL ^ model;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static uint64_t cond_bytes(const sdxl_cond *cd) {
    return (uint64_t)(2 * cd->n_tokens * cd->width + 2 * cd->pooled_dim) * sizeof(float);
}

/* Copies the arrays of src (not its prompt LoRA tags) into dst. */
static int cond_copy(const sdxl_cond *src, sdxl_cond *dst) {
    memset(dst, 0, sizeof *dst);
    size_t nc = (size_t)(2 * src->n_tokens * src->width), np = (size_t)(2 * src->pooled_dim);
    dst->context = malloc(nc * sizeof(float));
    dst->pooled = malloc((np ? np : 1) * sizeof(float));
    if (!dst->context || !dst->pooled) {
        free(dst->context);
        free(dst->pooled);
        memset(dst, 0, sizeof *dst);
        return -1;
    }
    memcpy(dst->context, src->context, nc * sizeof(float));
    memcpy(dst->pooled, src->pooled, np * sizeof(float));
    dst->n_tokens = src->n_tokens;
    dst->width = src->width;
    dst->pooled_dim = src->pooled_dim;
    dst->uncond_zero = src->uncond_zero;
    dst->n_tokens_prompt = src->n_tokens_prompt;
    return 0;
}

static void remove_at(sdxl_pl_condcache *c, int i) {
    c->bytes -= c->e[i].bytes;
    free(c->e[i].key);
    free(c->e[i].cd.context);
    free(c->e[i].cd.pooled);
    c->e[i] = c->e[--c->n];
}

int sdxl_pl_condcache_new(uint64_t max_bytes, sdxl_pl_condcache **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return SDXL_ERR_NOMEM;
    (*out)->max_bytes = max_bytes;
    pthread_mutex_init(&(*out)->mu, NULL);
    return SDXL_OK;
}

void sdxl_pl_condcache_free(sdxl_pl_condcache *c) {
    if (!c) return;
    while (c->n) remove_at(c, c->n - 1);
    free(c->e);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void sdxl_pl_condcache_drop(sdxl_pl_condcache *c, uint64_t model) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    for (int i = c->n - 1; i >= 0; i--)
        if (c->e[i].model == model) remove_at(c, i);
    pthread_mutex_unlock(&c->mu);
}

void sdxl_pl_condcache_stats_get(sdxl_pl_condcache *c, sdxl_pl_condcache_stats *out) {
    memset(out, 0, sizeof *out);
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    out->hits = c->hits;
    out->misses = c->misses;
    out->bytes = c->bytes;
    out->entries = c->n;
    pthread_mutex_unlock(&c->mu);
}

int sdxl_pl_condcache_get(sdxl_pl_condcache *c, uint64_t model, const void *key, size_t key_len, sdxl_cond *out) {
    uint64_t h = fnv1a(model, key, key_len);
    int hit = 0;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->n; i++) {
        entry *x = &c->e[i];
        if (x->hash != h || x->model != model || x->key_len != key_len || memcmp(x->key, key, key_len)) continue;
        if (cond_copy(&x->cd, out) == 0) {
            x->last_use = ++c->clock;
            hit = 1;
        }
        break;
    }
    if (hit) c->hits++;
    else c->misses++;
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void sdxl_pl_condcache_put(sdxl_pl_condcache *c, uint64_t model, const void *key, size_t key_len,
                           const sdxl_cond *cd) {
    uint64_t bytes = cond_bytes(cd) + key_len + sizeof(entry);
    if (bytes > c->max_bytes) return;
    entry x = {.model = model, .hash = fnv1a(model, key, key_len), .bytes = bytes, .key_len = key_len};
    x.key = malloc(key_len ? key_len : 1);
    if (!x.key || cond_copy(cd, &x.cd)) {
        free(x.key);
        return;
    }
    memcpy(x.key, key, key_len);
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->n; i++) /* another thread stored it meanwhile */
        if (c->e[i].hash == x.hash && c->e[i].model == model && c->e[i].key_len == key_len &&
            !memcmp(c->e[i].key, key, key_len)) {
            pthread_mutex_unlock(&c->mu);
            free(x.key);
            free(x.cd.context);
            free(x.cd.pooled);
            return;
        }
    while (c->n && c->bytes + bytes > c->max_bytes) { /* evict the least recently used */
        int lru = 0;
        for (int i = 1; i < c->n; i++)
            if (c->e[i].last_use < c->e[lru].last_use) lru = i;
        remove_at(c, lru);
    }
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        entry *ne = realloc(c->e, (size_t)cap * sizeof *ne);
        if (!ne) {
            pthread_mutex_unlock(&c->mu);
            free(x.key);
            free(x.cd.context);
            free(x.cd.pooled);
            return;
        }
        c->e = ne;
        c->cap = cap;
    }
    x.last_use = ++c->clock;
    c->e[c->n++] = x;
    c->bytes += bytes;
    pthread_mutex_unlock(&c->mu);
}
