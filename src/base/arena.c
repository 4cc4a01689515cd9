#include "base/arena.h"

#include <stdint.h>
#include <stdlib.h>

#define ARENA_ALIGN 64

struct sdxl_arena_chunk {
    sdxl_arena_chunk *next;
    size_t cap, off;
    unsigned char *mem;
};

static sdxl_arena_chunk *chunk_new(size_t cap) {
    sdxl_arena_chunk *c = malloc(sizeof *c);
    if (!c) return NULL;
    c->mem = aligned_alloc(ARENA_ALIGN, cap);
    if (!c->mem) {
        free(c);
        return NULL;
    }
    c->cap = cap;
    c->off = 0;
    c->next = NULL;
    return c;
}

void sdxl_arena_init(sdxl_arena *a, size_t initial_bytes) {
    a->head = NULL;
    a->used = a->peak = a->n_grows = 0;
    a->min_chunk = initial_bytes < (1u << 20) ? (1u << 20) : initial_bytes;
}

void *sdxl_arena_alloc(sdxl_arena *a, size_t bytes) {
    if (bytes > SIZE_MAX - 2 * ARENA_ALIGN) return NULL;
    size_t need = (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need == 0) need = ARENA_ALIGN;
    sdxl_arena_chunk *c = a->head;
    if (!c || c->cap - c->off < need) {
        size_t cap = a->min_chunk;
        if (c && c->cap <= SIZE_MAX / 2 && c->cap * 2 > cap) cap = c->cap * 2;
        if (cap < need) cap = need;
        sdxl_arena_chunk *n = chunk_new(cap);
        if (!n) return NULL;
        n->next = c;
        a->head = c = n;
        a->n_grows++;
    }
    void *p = c->mem + c->off;
    c->off += need;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void *sdxl_arena_alloc_array(sdxl_arena *a, size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    return sdxl_arena_alloc(a, count * size);
}

size_t sdxl_arena_capacity(const sdxl_arena *a) {
    size_t s = 0;
    for (const sdxl_arena_chunk *c = a->head; c; c = c->next) s += c->cap;
    return s;
}

void sdxl_arena_reset(sdxl_arena *a) {
    if (a->head && a->head->next) {
        /* Several chunks: replace them by one that fits the peak, so the next pass needs no growth. */
        size_t cap = sdxl_arena_capacity(a);
        if (cap < a->peak) cap = a->peak;
        for (sdxl_arena_chunk *c = a->head, *n; c; c = n) {
            n = c->next;
            free(c->mem);
            free(c);
        }
        a->head = chunk_new(cap);
        if (a->head) a->n_grows++;
    }
    if (a->head) a->head->off = 0;
    a->used = 0;
}

void sdxl_arena_free(sdxl_arena *a) {
    for (sdxl_arena_chunk *c = a->head, *n; c; c = n) {
        n = c->next;
        free(c->mem);
        free(c);
    }
    a->head = NULL;
    a->used = 0;
}
