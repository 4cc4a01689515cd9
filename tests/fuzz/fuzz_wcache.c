/* libFuzzer target: arbitrary bytes through the weights-cache parser, twice: as given (against a
 * fixed key and against the key it carries), and with its two hashes recomputed from its own
 * header, so that the entry and data checks behind them are reached. Every entry of a file that passes
 * must lie inside it, page aligned and in order. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/wcache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const uint8_t *buf, size_t size, const sdxl_wcache_key *key) {
    const sdxl_wcache_entry *ent;
    size_t n;
    sdxl_err e = {0};
    if (sdxl_wcache_parse(buf, size, key, &ent, &n, &e) != SDXL_OK) return;
    uint64_t end = SDXL_WCACHE_HDR;
    for (size_t i = 0; i < n; i++) {
        sdxl_wcache_entry x;
        memcpy(&x, (const char *)ent + i * sizeof x, sizeof x);
        if (x.off % SDXL_WCACHE_HDR || x.off < end || x.off + x.k.bytes > size) abort();
        end = x.off + x.k.bytes;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdxl_wcache_key fixed = {1, 2, 3, 4};
    check(data, size, &fixed);
    if (size < SDXL_WCACHE_HDR) return 0;
    uint8_t *b = malloc(size);
    if (!b) return 0;
    memcpy(b, data, size);
    sdxl_wcache_header h;
    memcpy(&h, b, sizeof h);
    check(b, size, &h.key);
    h.file_bytes = size;
    if (h.table_off <= size && h.n_entries <= SDXL_WCACHE_MAX_ENTRIES &&
        h.n_entries * sizeof(sdxl_wcache_entry) <= size - h.table_off)
        h.table_hash = sdxl_wcache_sum(b + h.table_off, (size_t)h.n_entries * sizeof(sdxl_wcache_entry));
    memcpy(b, &h, sizeof h);
    h.self_hash = sdxl_wcache_sum(b, offsetof(sdxl_wcache_header, self_hash));
    memcpy(b, &h, sizeof h);
    check(b, size, &h.key);
    free(b);
    return 0;
}
