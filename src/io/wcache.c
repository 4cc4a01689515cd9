/* Converted-weights cache files; see wcache.h.
 *
 * Layout (little-endian): a 4096-byte header, then each layer's packed weights at a 4096-byte
 * boundary in build order, then the entry table. The header holds the magic, version, file
 * size, key, entry count, table offset, the table's hash and its own hash. */
#include "io/wcache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct sdxl_wcache {
    char path[PATH_MAX], tmp[PATH_MAX], dir[PATH_MAX];
    uint64_t max_bytes;
    sdxl_wcache_key key;
    sdxl_wstore store;
    const sdxl_logger *log;
    /* hit */
    unsigned char *map;
    size_t map_len;
    const sdxl_wcache_entry *ent;
    size_t n_ent, next;
    int stale;
    /* miss */
    int fd;
    uint64_t end;
    sdxl_wcache_entry *rec;
    size_t n_rec, cap_rec;
    int failed;
};

static uint64_t align_page(uint64_t x) { return (x + SDXL_WCACHE_HDR - 1) & ~(uint64_t)(SDXL_WCACHE_HDR - 1); }

int sdxl_wcache_parse(const void *buf, size_t len, const sdxl_wcache_key *key, const sdxl_wcache_entry **entries,
                      size_t *n, sdxl_err *e) {
    *entries = NULL;
    *n = 0;
    const unsigned char *b = buf;
    sdxl_wcache_header h;
    if (len < SDXL_WCACHE_HDR) return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: %zu bytes, shorter than its header", len);
    memcpy(&h, b, sizeof h);
    if (memcmp(h.magic, SDXL_WCACHE_MAGIC, 8)) return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: bad magic");
    if (h.version != SDXL_WCACHE_VERSION)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: version %u, expected %u", h.version, SDXL_WCACHE_VERSION);
    if (h.hdr_bytes != SDXL_WCACHE_HDR) return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: header size %u", h.hdr_bytes);
    if (h.self_hash != sdxl_hash_bytes(b, offsetof(sdxl_wcache_header, self_hash)))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: header hash mismatch");
    if (h.file_bytes != len)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: file is %zu bytes, header says %llu", len,
                           (unsigned long long)h.file_bytes);
    if (memcmp(&h.key, key, sizeof h.key))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: made from another source file, network or build");
    if (h.n_entries == 0 || h.n_entries > SDXL_WCACHE_MAX_ENTRIES)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: %llu entries", (unsigned long long)h.n_entries);
    uint64_t tbytes = h.n_entries * sizeof(sdxl_wcache_entry);
    if (h.table_off < SDXL_WCACHE_HDR || h.table_off % 8 || h.table_off > len || len - h.table_off != tbytes)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: entry table at %llu does not end the file",
                           (unsigned long long)h.table_off);
    const sdxl_wcache_entry *ent = (const sdxl_wcache_entry *)(b + h.table_off);
    if (h.table_hash != sdxl_hash_bytes(ent, (size_t)tbytes))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: entry table hash mismatch");
    uint64_t prev_end = SDXL_WCACHE_HDR;
    for (uint64_t i = 0; i < h.n_entries; i++) {
        sdxl_wcache_entry x;
        memcpy(&x, &ent[i], sizeof x);
        int ok = (x.k.op == 1 || x.k.op == 2) && x.k.ndims >= 1 && x.k.ndims <= 4 && x.k.bytes > 0 &&
                 x.off % SDXL_WCACHE_HDR == 0 && x.off >= prev_end && x.off <= h.table_off &&
                 x.k.bytes <= h.table_off - x.off;
        for (int d = 0; ok && d < x.k.ndims; d++) ok = x.k.dims[d] > 0 && x.k.dims[d] <= ((int64_t)1 << 32);
        if (!ok)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: entry %llu (offset %llu, %llu bytes) is out of place",
                               (unsigned long long)i, (unsigned long long)x.off, (unsigned long long)x.k.bytes);
        prev_end = x.off + x.k.bytes;
    }
    *entries = ent;
    *n = (size_t)h.n_entries;
    return SDXL_OK;
}

void sdxl_wcache_dir(const char *dir, char *out, size_t n) {
    const char *v;
    out[0] = 0;
    if (dir && *dir) snprintf(out, n, "%s", dir);
    else if ((v = getenv("SDXL_WEIGHTS_CACHE_DIR")) && *v) snprintf(out, n, "%s", v);
    else if ((v = getenv("XDG_CACHE_HOME")) && *v) snprintf(out, n, "%s/sdxl", v);
    else if ((v = getenv("HOME")) && *v) snprintf(out, n, "%s/.cache/sdxl", v);
}

static const void *lookup(void *user, const sdxl_wkey *k) {
    sdxl_wcache *w = user;
    if (!w->map || w->stale) return NULL;
    if (w->next >= w->n_ent) {
        w->stale = 1;
        return NULL;
    }
    sdxl_wcache_entry x;
    memcpy(&x, &w->ent[w->next], sizeof x);
    const unsigned char *p = w->map + x.off;
    if (memcmp(&x.k, k, sizeof *k) || sdxl_hash_bytes(p, (size_t)x.k.bytes) != x.hash) {
        w->stale = 1;
        return NULL;
    }
    w->next++;
    return p;
}

static int write_all(int fd, const void *p, size_t n, uint64_t off) {
    const char *c = p;
    while (n) {
        ssize_t r = pwrite(fd, c, n, (off_t)off);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            return -1;
        }
        c += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static void record(void *user, const sdxl_wkey *k, const void *data) {
    sdxl_wcache *w = user;
    if (w->fd < 0 || w->failed) return;
    if (w->n_rec == w->cap_rec) {
        size_t cap = w->cap_rec ? 2 * w->cap_rec : 1024;
        sdxl_wcache_entry *r = cap <= SDXL_WCACHE_MAX_ENTRIES ? realloc(w->rec, cap * sizeof *r) : NULL;
        if (!r) {
            w->failed = 1;
            return;
        }
        w->rec = r;
        w->cap_rec = cap;
    }
    sdxl_wcache_entry x = {*k, w->end, sdxl_hash_bytes(data, (size_t)k->bytes)};
    if (w->end + k->bytes > w->max_bytes || write_all(w->fd, data, (size_t)k->bytes, w->end)) {
        w->failed = 1;
        return;
    }
    w->rec[w->n_rec++] = x;
    w->end = align_page(w->end + k->bytes);
}

static uint64_t hash_str(const char *s, uint64_t h) { return sdxl_hash_bytes(s, strlen(s)) ^ (h * 0x9e3779b97f4a7c15ull); }

/* Source identity: total size, latest mtime, hash of every file's safetensors header. */
static int source_key(const sdxl_ckpt *ck, const char *net, sdxl_prec prec, sdxl_wcache_key *k, sdxl_err *e) {
    memset(k, 0, sizeof *k);
    for (int p = 0; p < SDXL_PART_COUNT; p++) {
        const sdxl_st_file *f = sdxl_ckpt_file(ck, (sdxl_part)p);
        int dup = 0;
        for (int q = 0; q < p; q++) dup |= sdxl_ckpt_file(ck, (sdxl_part)q) == f;
        if (!f || dup) continue;
        const char *path = sdxl_st_path(f);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        unsigned char l8[8];
        if (fd < 0 || fstat(fd, &sb) || pread(fd, l8, 8, 0) != 8) {
            if (fd >= 0) close(fd);
            return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot read for the weights cache key", path);
        }
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = (hl << 8) | l8[i];
        unsigned char *hb = hl <= SDXL_ST_MAX_HEADER ? malloc(hl + 8) : NULL;
        int ok = hb && pread(fd, hb, hl + 8, 0) == (ssize_t)(hl + 8);
        close(fd);
        if (!ok) {
            free(hb);
            return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot read its header for the weights cache key", path);
        }
        k->src_hash = (k->src_hash * 0x100000001b3ull) ^ sdxl_hash_bytes(hb, hl + 8);
        free(hb);
        k->src_size += (uint64_t)sb.st_size;
        int64_t mt = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
        if (mt > k->src_mtime) k->src_mtime = mt;
    }
    k->env_hash = hash_str(net, sdxl_gemm_build_hash() ^ ((uint64_t)prec << 56) ^ SDXL_WCACHE_VERSION);
    return SDXL_OK;
}

static int mkdirs(const char *dir) {
    char b[PATH_MAX];
    snprintf(b, sizeof b, "%s", dir);
    for (char *s = b + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(b, 0755) && errno != EEXIST) return -1;
            *s = '/';
        }
    return mkdir(b, 0755) && errno != EEXIST ? -1 : 0;
}

static int try_map(sdxl_wcache *w, sdxl_err *e) {
    int fd = open(w->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat sb;
    int ok = !fstat(fd, &sb) && S_ISREG(sb.st_mode) && sb.st_size >= (off_t)SDXL_WCACHE_HDR;
    void *m = ok ? mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED) return 0;
    sdxl_err pe = {0};
    if (sdxl_wcache_parse(m, (size_t)sb.st_size, &w->key, &w->ent, &w->n_ent, &pe)) {
        SDXL_INFO(w->log, "%s: %s; rebuilding it", w->path, pe.msg);
        munmap(m, (size_t)sb.st_size);
        return 0;
    }
    (void)e;
    madvise(m, (size_t)sb.st_size, MADV_WILLNEED); /* read ahead from disk while layers are built */
    w->map = m;
    w->map_len = (size_t)sb.st_size;
    return 1;
}

int sdxl_wcache_open(const char *dir, uint64_t max_bytes, const sdxl_ckpt *ck, const char *net, sdxl_prec prec,
                     const sdxl_logger *log, sdxl_wcache **out, sdxl_err *e) {
    *out = NULL;
    sdxl_wcache *w = calloc(1, sizeof *w);
    if (!w) return sdxl_seterr(e, SDXL_ERR_NOMEM, "weights cache: out of memory");
    w->fd = -1;
    w->log = log;
    w->max_bytes = max_bytes ? max_bytes : SDXL_WCACHE_DEFAULT_MAX;
    sdxl_wcache_dir(dir, w->dir, sizeof w->dir);
    int st = source_key(ck, net, prec, &w->key, e);
    if (st) {
        free(w);
        return st;
    }
    char real[PATH_MAX];
    const char *src = realpath(sdxl_ckpt_path(ck), real) ? real : sdxl_ckpt_path(ck);
    uint64_t id = hash_str(src, 1);
    const char *base = strrchr(src, '/') ? strrchr(src, '/') + 1 : src;
    char stem[64];
    snprintf(stem, sizeof stem, "%.40s", base);
    for (char *s = stem; *s; s++)
        if (*s == '.' || *s == ' ') *s = '_';
    if (!w->dir[0] || (size_t)snprintf(w->path, sizeof w->path, "%s/%s-%s-%s-%016llx.sdxlw", w->dir, stem, net,
                                       prec == SDXL_PREC_BF16 ? "bf16" : "f32", (unsigned long long)id) >= sizeof w->path) {
        SDXL_WARN(log, "weights cache: no folder to use (set SDXL_WEIGHTS_CACHE_DIR); loading without it");
        *out = w;
        return SDXL_OK;
    }
    w->store.user = w;
    w->store.lookup = lookup;
    if (try_map(w, e)) {
        *out = w;
        return SDXL_OK;
    }
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", w->path, (long)getpid());
    if (mkdirs(w->dir) || (w->fd = open(w->tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        SDXL_WARN(log, "weights cache: cannot write in %s (%s); loading without it", w->dir, strerror(errno));
        w->store.lookup = NULL;
        *out = w;
        return SDXL_OK;
    }
    w->store.record = record;
    w->end = SDXL_WCACHE_HDR;
    *out = w;
    return SDXL_OK;
}

const sdxl_wstore *sdxl_wcache_store(sdxl_wcache *w) {
    return w && (w->store.lookup || w->store.record) ? &w->store : NULL;
}

int sdxl_wcache_hit(const sdxl_wcache *w) { return w && w->map && !w->stale; }

/* Other cache files in the folder, oldest first, are removed until `need` more bytes fit the cap. */
static int make_room(sdxl_wcache *w, uint64_t need) {
    DIR *d = opendir(w->dir);
    if (!d) return -1;
    struct { char name[256]; uint64_t size; int64_t mtime; } f[256];
    int n = 0;
    uint64_t total = 0;
    struct dirent *de;
    const char *self = strrchr(w->path, '/') + 1;
    while ((de = readdir(d)) && n < 256) {
        size_t l = strlen(de->d_name);
        if (l < 7 || l >= 256 || strcmp(de->d_name + l - 6, ".sdxlw") || !strcmp(de->d_name, self)) continue;
        char p[PATH_MAX];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", w->dir, de->d_name);
        if (stat(p, &sb)) continue;
        memcpy(f[n].name, de->d_name, l + 1);
        f[n].size = (uint64_t)sb.st_size;
        f[n].mtime = (int64_t)sb.st_mtime;
        total += f[n++].size;
    }
    closedir(d);
    while (total + need > w->max_bytes) {
        int old = -1;
        for (int i = 0; i < n; i++)
            if (f[i].size && (old < 0 || f[i].mtime < f[old].mtime)) old = i;
        if (old < 0) return -1;
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", w->dir, f[old].name);
        if (!unlink(p)) SDXL_INFO(w->log, "weights cache: removed %s to stay under the size cap", p);
        total -= f[old].size;
        f[old].size = 0;
    }
    return 0;
}

int sdxl_wcache_finish(sdxl_wcache *w, int ok) {
    if (!w) return 0;
    if (w->map) {
        if (ok && !w->stale && w->next == w->n_ent) {
            SDXL_INFO(w->log, "weights cache: %zu layers used in place from %s", w->n_ent, w->path);
            return 0;
        }
        if (!ok) return 0;
        SDXL_INFO(w->log, "weights cache: %s does not match this network (layer %zu); rebuilding it", w->path, w->next);
        unlink(w->path);
        return 1;
    }
    if (w->fd < 0) return 0;
    uint64_t tbytes = (uint64_t)w->n_rec * sizeof *w->rec;
    sdxl_wcache_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, SDXL_WCACHE_MAGIC, 8);
    h.version = SDXL_WCACHE_VERSION;
    h.hdr_bytes = SDXL_WCACHE_HDR;
    h.table_off = w->end;
    h.file_bytes = w->end + tbytes;
    h.key = w->key;
    h.n_entries = w->n_rec;
    h.table_hash = w->n_rec ? sdxl_hash_bytes(w->rec, (size_t)tbytes) : 0;
    int good = ok && !w->failed && w->n_rec && make_room(w, h.file_bytes) == 0;
    if (good) {
        unsigned char page[SDXL_WCACHE_HDR];
        memset(page, 0, sizeof page);
        memcpy(page, &h, sizeof h);
        h.self_hash = sdxl_hash_bytes(page, offsetof(sdxl_wcache_header, self_hash));
        memcpy(page, &h, sizeof h);
        good = !write_all(w->fd, w->rec, (size_t)tbytes, w->end) && !write_all(w->fd, page, sizeof page, 0) &&
               !ftruncate(w->fd, (off_t)h.file_bytes);
    }
    close(w->fd);
    w->fd = -1;
    if (good && !rename(w->tmp, w->path)) {
        SDXL_INFO(w->log, "weights cache: wrote %s (%zu layers, %.2f GB)", w->path, w->n_rec, (double)h.file_bytes / 1e9);
    } else {
        if (ok) SDXL_WARN(w->log, "weights cache: %s not written (folder cap %.1f GB, or a write failed)", w->path,
                          (double)w->max_bytes / 1e9);
        unlink(w->tmp);
    }
    return 0;
}

void sdxl_wcache_free(sdxl_wcache *w) {
    if (!w) return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    if (w->map) munmap(w->map, w->map_len);
    free(w->rec);
    free(w);
}
