/* Text-encoder output cache shared by the models of one service: a request whose prompts, clip
 * skip, model and LoRA text-encoder deltas equal an earlier one's reuses its conditioning instead
 * of running the encoders again. LRU under a byte budget; thread-safe. A hit returns the stored
 * floats, so images are byte-identical with and without the cache. */
#ifndef SDXL_PIPELINE_CONDCACHE_H
#define SDXL_PIPELINE_CONDCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "text/conditioning.h"

typedef struct sdxl_pl_condcache sdxl_pl_condcache;

typedef struct sdxl_pl_condcache_stats {
    int64_t hits, misses;
    uint64_t bytes;   /* held by the entries */
    int entries;
} sdxl_pl_condcache_stats;

/* max_bytes: the budget (an entry larger than it is never stored). */
int sdxl_pl_condcache_new(uint64_t max_bytes, sdxl_pl_condcache **out);
void sdxl_pl_condcache_free(sdxl_pl_condcache *c);
/* Drops the entries of one model (its id as set in sdxl_pl_model.cond_cache_id): the model was
 * unloaded, so an id reused later cannot see them. */
void sdxl_pl_condcache_drop(sdxl_pl_condcache *c, uint64_t model);
void sdxl_pl_condcache_stats_get(sdxl_pl_condcache *c, sdxl_pl_condcache_stats *out);

/* key: opaque bytes naming everything the encoders' output depends on besides the model.
 * get: 1 and out filled (a copy the caller frees with sdxl_cond_free) on a hit; 0 on a miss or
 * when out of memory. put stores a copy of cd (prompt LoRA tags are not kept). */
int sdxl_pl_condcache_get(sdxl_pl_condcache *c, uint64_t model, const void *key, size_t key_len, sdxl_cond *out);
void sdxl_pl_condcache_put(sdxl_pl_condcache *c, uint64_t model, const void *key, size_t key_len,
                           const sdxl_cond *cd);

#endif
