/* Bump allocator with 64-byte alignment. A persistent arena holds weights and plans; a step
 * arena is reset after every denoising step. The first passes (warm-up) may grow it; a reset
 * then folds all chunks into one, so later steps of the same shape never call malloc. */
#ifndef SDXL_BASE_ARENA_H
#define SDXL_BASE_ARENA_H

#include <stddef.h>

typedef struct sdxl_arena_chunk sdxl_arena_chunk;

typedef struct sdxl_arena {
    sdxl_arena_chunk *head; /* current chunk; older ones follow */
    size_t used;            /* bytes handed out since the last reset, all chunks */
    size_t peak;            /* largest `used` seen */
    size_t n_grows;         /* chunk allocations so far (warm-up growth) */
    size_t min_chunk;
} sdxl_arena;

void sdxl_arena_init(sdxl_arena *a, size_t initial_bytes);
/* Zero-sized requests return a valid unique pointer. NULL only when malloc fails. */
void *sdxl_arena_alloc(sdxl_arena *a, size_t bytes);
/* Like alloc, but count*size is checked for overflow. */
void *sdxl_arena_alloc_array(sdxl_arena *a, size_t count, size_t size);
/* Frees everything handed out; keeps (and merges) the memory for reuse. */
void sdxl_arena_reset(sdxl_arena *a);
/* Bytes reserved from the system. */
size_t sdxl_arena_capacity(const sdxl_arena *a);
void sdxl_arena_free(sdxl_arena *a);

#endif
