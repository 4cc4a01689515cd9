/* Converted-weights cache: one network's GEMM weights as the compute context packed them
 * (precision and oneDNN layout), in a file that a later load maps and uses in place, with no
 * conversion. A cache file is untrusted input: its header, index and data are validated
 * in full (magic, version, sizes and offsets, checksums of the header, the index and each
 * entry's data) and it is keyed by the source files' size, mtime and header hash, the network,
 * the precision and the oneDNN build; each layer's entry must match the layer being built (op,
 * dims, layout hash, size, source hash).
 * Anything else makes the cache stale: the network is rebuilt from the checkpoint and the file
 * rewritten (written whole to a temporary name, then renamed). See docs/compute.md. */
#ifndef SDXL_IO_WCACHE_H
#define SDXL_IO_WCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/log.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"

#define SDXL_WCACHE_MAGIC "SDXLWCF\n"
#define SDXL_WCACHE_VERSION 2u /* 2: CRC32C-based checksums */
#define SDXL_WCACHE_HDR 4096u         /* header bytes; entries start at a page boundary */
#define SDXL_WCACHE_MAX_ENTRIES (1u << 16)
#define SDXL_WCACHE_DEFAULT_MAX ((uint64_t)32 << 30) /* folder size cap */

/* What a cache file must be made from. */
typedef struct sdxl_wcache_key {
    uint64_t src_size;  /* total bytes of the source files */
    int64_t src_mtime;  /* latest mtime (ns) of the source files */
    uint64_t src_hash;  /* hash of their safetensors headers */
    uint64_t env_hash;  /* network name, precision, oneDNN version, CPU features, format version */
} sdxl_wcache_key;

/* The file's first bytes (the rest of its 4096-byte header is zero). self_hash is the checksum
 * (sdxl_wcache_sum) of the bytes before it, table_hash that of the entry table. */
typedef struct sdxl_wcache_header {
    char magic[8];
    uint32_t version, hdr_bytes;
    uint64_t file_bytes;
    sdxl_wcache_key key;
    uint64_t n_entries, table_off, table_hash, self_hash;
} sdxl_wcache_header;

/* One layer's packed weights at off (page aligned) in the file; hash: their checksum. */
typedef struct sdxl_wcache_entry {
    sdxl_wkey k;
    uint64_t off, hash;
} sdxl_wcache_entry;

/* The format's checksum of n bytes: CRC32C (SSE4.2 where the CPU has it) of three lanes of each
 * 1 MiB piece, the pieces mixed by their index; computed across the threads, the same for any
 * count. */
uint64_t sdxl_wcache_sum(const void *p, size_t n);

/* Validates a cache image of len bytes against key, each entry's data included; on success
 * *entries points into buf. The fuzz entry point. */
int sdxl_wcache_parse(const void *buf, size_t len, const sdxl_wcache_key *key, const sdxl_wcache_entry **entries,
                      size_t *n, sdxl_err *e);

typedef struct sdxl_wcache sdxl_wcache;

/* The cache folder: dir when given, else $SDXL_WEIGHTS_CACHE_DIR, $XDG_CACHE_HOME/sdxl,
 * $HOME/.cache/sdxl; "" when none can be named. */
void sdxl_wcache_dir(const char *dir, char *out, size_t n);

/* Opens the cache of network `net` ("unet", "text", "vae", "refiner-unet"...) built from ck in
 * precision prec: maps a valid file (a hit: each entry's data is checked when its layer takes it)
 * or prepares a new one (a miss). A folder that cannot
 * be created or written turns the cache off for this network (logged), never fails the load. */
int sdxl_wcache_open(const char *dir, uint64_t max_bytes, const sdxl_ckpt *ck, const char *net, sdxl_prec prec,
                     const sdxl_logger *log, sdxl_wcache **out, sdxl_err *e);
/* The store to set on the compute context while the network's layers are built. */
const sdxl_wstore *sdxl_wcache_store(sdxl_wcache *w);
int sdxl_wcache_hit(const sdxl_wcache *w);
/* After the network's load (ok: it succeeded). Returns 1 when a hit turned out stale (an entry
 * did not match): the caller frees the network, reopens the cache (now a miss) and loads again.
 * A miss publishes its file when ok (and the folder's size cap allows). */
int sdxl_wcache_finish(sdxl_wcache *w, int ok);
/* Unmaps: call after the network using it is freed. */
void sdxl_wcache_free(sdxl_wcache *w);

#endif
