/* Converted-weights cache files; see wcache.h.
 *
 * Layout (little-endian): a 4096-byte header, then each layer's packed weights at a 4096-byte
 * boundary in build order, then the entry table. The header holds the magic, version, file
 * size, key, entry count, table offset, the table's checksum and its own. */
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

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels refuse it, which only costs faults */
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define WC_X86 1
#endif

/* ---- checksum: CRC32C over three lanes of each 1 MiB piece, pieces mixed by index ---------- */

#define WC_PIECE ((size_t)1 << 20)

static const uint32_t CRC32C_TAB[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu,
    0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu,
    0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu,
    0xf165b798u, 0x030e349bu, 0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u,
    0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
    0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u, 0x33ed7d2au,
    0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau,
    0x30e349b1u, 0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu,
    0x1642ae59u, 0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
    0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu,
    0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u, 0x67dafa54u, 0x95b17957u,
    0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu,
    0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
    0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u,
    0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu,
    0x4767748au, 0xb50cf789u, 0xeb1fcbadu, 0x197448aeu, 0x0a24bb5au, 0xf84f3859u,
    0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu,
    0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
    0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu,
    0x456cac67u, 0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u,
    0xe9141340u, 0x1b7f9043u, 0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu,
    0x92a8fc17u, 0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
    0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu, 0x0b21572cu,
    0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u, 0x502036a5u,
    0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u,
    0x0e330a81u, 0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
    0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u,
    0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu,
    0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u,
    0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu,
    0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u,
    0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u,
    0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu,
    0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u,
    0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
    0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au, 0xc69f7b69u,
    0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u
};

static uint32_t crc32c_sw(uint32_t c, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) c = CRC32C_TAB[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c;
}

/* Three CRC32C streams over [p, p+t), [p+t, p+2t), [p+2t, p+n) with t = n/24*8. */
static void crc3_sw(const unsigned char *p, size_t n, size_t t, uint32_t c[3]) {
    c[0] = crc32c_sw(c[0], p, t);
    c[1] = crc32c_sw(c[1], p + t, t);
    c[2] = crc32c_sw(c[2], p + 2 * t, n - 2 * t);
}

#ifdef WC_X86
/* The same with the SSE4.2 instruction, the three streams interleaved to hide its latency. */
__attribute__((target("sse4.2"))) static void crc3_hw(const unsigned char *p, size_t n, size_t t, uint32_t c[3]) {
    uint64_t a = c[0], b = c[1], d = c[2];
    const unsigned char *q = p + t, *r = p + 2 * t;
    for (size_t i = 0; i < t; i += 8) {
        uint64_t x, y, z;
        memcpy(&x, p + i, 8);
        memcpy(&y, q + i, 8);
        memcpy(&z, r + i, 8);
        a = _mm_crc32_u64(a, x);
        b = _mm_crc32_u64(b, y);
        d = _mm_crc32_u64(d, z);
    }
    uint32_t e = (uint32_t)d;
    for (size_t i = 3 * t; i < n; i++) e = _mm_crc32_u8(e, p[i]);
    c[0] = (uint32_t)a;
    c[1] = (uint32_t)b;
    c[2] = e;
}
#endif

/* One piece's term: its three CRCs, length and index, mixed. */
static uint64_t piece_sum(const unsigned char *p, size_t n, uint64_t i) {
    uint32_t c[3] = {0xffffffffu, 0xffffffffu, 0xffffffffu};
    size_t t = n / 24 * 8;
#ifdef WC_X86
    if (__builtin_cpu_supports("sse4.2")) crc3_hw(p, n, t, c);
    else crc3_sw(p, n, t, c);
#else
    crc3_sw(p, n, t, c);
#endif
    uint64_t h = sdxl_mix64(((uint64_t)c[0] << 32 | c[1]) ^ (i * 0x9e3779b97f4a7c15ull));
    return sdxl_mix64(h ^ ((uint64_t)c[2] << 32) ^ (uint64_t)n);
}

static uint64_t sum_start(uint64_t n) { return sdxl_mix64(n ^ 0x5344584c57434632ull); }

uint64_t sdxl_wcache_sum(const void *p, size_t n) {
    const unsigned char *b = p;
    int64_t np = (int64_t)((n + WC_PIECE - 1) / WC_PIECE);
    uint64_t h = 0;
#pragma omp parallel for schedule(static) reduction(^ : h) if (np > 1)
    for (int64_t i = 0; i < np; i++) {
        size_t o = (size_t)i * WC_PIECE;
        h ^= piece_sum(b + o, n - o < WC_PIECE ? n - o : WC_PIECE, (uint64_t)i);
    }
    return sum_start(n) ^ h;
}

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

/* The header page of a file of len bytes: magic, version, sizes, its own checksum, the key. */
static int check_header(const unsigned char *b, uint64_t len, const sdxl_wcache_key *key, sdxl_wcache_header *out,
                        sdxl_err *e) {
    sdxl_wcache_header h;
    memcpy(&h, b, sizeof h);
    if (memcmp(h.magic, SDXL_WCACHE_MAGIC, 8)) return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: bad magic");
    if (h.version != SDXL_WCACHE_VERSION)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: version %u, expected %u", h.version, SDXL_WCACHE_VERSION);
    if (h.hdr_bytes != SDXL_WCACHE_HDR) return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: header size %u", h.hdr_bytes);
    if (h.self_hash != sdxl_wcache_sum(b, offsetof(sdxl_wcache_header, self_hash)))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: header checksum mismatch");
    if (h.file_bytes != len)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: file is %llu bytes, header says %llu",
                           (unsigned long long)len, (unsigned long long)h.file_bytes);
    if (memcmp(&h.key, key, sizeof h.key))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: made from another source file, network or build");
    if (h.n_entries == 0 || h.n_entries > SDXL_WCACHE_MAX_ENTRIES)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: %llu entries", (unsigned long long)h.n_entries);
    uint64_t tbytes = h.n_entries * sizeof(sdxl_wcache_entry);
    if (h.table_off < SDXL_WCACHE_HDR || h.table_off % 8 || h.table_off > len || len - h.table_off != tbytes)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: entry table at %llu does not end the file",
                           (unsigned long long)h.table_off);
    *out = h;
    return SDXL_OK;
}

/* The entry table: its checksum, then each entry's op, dims and place in the data region. */
static int check_table(const sdxl_wcache_header *h, const sdxl_wcache_entry *ent, sdxl_err *e) {
    if (h->table_hash != sdxl_wcache_sum(ent, (size_t)h->n_entries * sizeof *ent))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: entry table checksum mismatch");
    uint64_t prev_end = SDXL_WCACHE_HDR;
    for (uint64_t i = 0; i < h->n_entries; i++) {
        sdxl_wcache_entry x;
        memcpy(&x, &ent[i], sizeof x);
        int ok = (x.k.op == 1 || x.k.op == 2) && x.k.ndims >= 1 && x.k.ndims <= 4 && x.k.bytes > 0 &&
                 x.off % SDXL_WCACHE_HDR == 0 && x.off >= prev_end && x.off <= h->table_off &&
                 x.k.bytes <= h->table_off - x.off;
        for (int d = 0; ok && d < x.k.ndims; d++) ok = x.k.dims[d] > 0 && x.k.dims[d] <= ((int64_t)1 << 32);
        if (!ok)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: entry %llu (offset %llu, %llu bytes) is out of place",
                               (unsigned long long)i, (unsigned long long)x.off, (unsigned long long)x.k.bytes);
        prev_end = x.off + x.k.bytes;
    }
    return SDXL_OK;
}

int sdxl_wcache_parse(const void *buf, size_t len, const sdxl_wcache_key *key, const sdxl_wcache_entry **entries,
                      size_t *n, sdxl_err *e) {
    *entries = NULL;
    *n = 0;
    const unsigned char *b = buf;
    sdxl_wcache_header h;
    if (len < SDXL_WCACHE_HDR) return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: %zu bytes, shorter than its header", len);
    int st = check_header(b, len, key, &h, e);
    if (st) return st;
    const sdxl_wcache_entry *ent = (const sdxl_wcache_entry *)(b + h.table_off);
    if ((st = check_table(&h, ent, e))) return st;
    for (uint64_t i = 0; i < h.n_entries; i++) {
        sdxl_wcache_entry x;
        memcpy(&x, &ent[i], sizeof x);
        if (sdxl_wcache_sum(b + x.off, (size_t)x.k.bytes) != x.hash)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "weights cache: entry %llu: data checksum mismatch", (unsigned long long)i);
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
    unsigned char *p = w->map + x.off;
    if (memcmp(&x.k, k, sizeof *k)) {
        w->stale = 1;
        return NULL;
    }
    /* map the entry's pages in one call rather than a fault per 64 KiB, then check them */
    madvise(p, (size_t)x.k.bytes, MADV_POPULATE_READ);
    if (sdxl_wcache_sum(p, (size_t)x.k.bytes) != x.hash) {
        SDXL_INFO(w->log, "weights cache: %s: entry %zu: data checksum mismatch", w->path, w->next);
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
    sdxl_wcache_entry x = {*k, w->end, sdxl_wcache_sum(data, (size_t)k->bytes)};
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

static int try_map(sdxl_wcache *w) {
    int fd = open(w->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat sb;
    int ok = !fstat(fd, &sb) && S_ISREG(sb.st_mode) && sb.st_size >= (off_t)SDXL_WCACHE_HDR;
    void *m = ok ? mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED) return 0;
    sdxl_wcache_header h;
    sdxl_err pe = {0};
    if (check_header(m, (uint64_t)sb.st_size, &w->key, &h, &pe) ||
        check_table(&h, (const sdxl_wcache_entry *)((unsigned char *)m + h.table_off), &pe)) {
        SDXL_INFO(w->log, "%s: %s; rebuilding it", w->path, pe.msg);
        munmap(m, (size_t)sb.st_size);
        return 0;
    }
    madvise(m, (size_t)sb.st_size, MADV_WILLNEED); /* read ahead from disk while layers are built */
    w->map = m;
    w->map_len = (size_t)sb.st_size;
    w->ent = (const sdxl_wcache_entry *)(w->map + h.table_off);
    w->n_ent = (size_t)h.n_entries;
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
    if (try_map(w)) {
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
    h.table_hash = w->n_rec ? sdxl_wcache_sum(w->rec, (size_t)tbytes) : 0;
    int good = ok && !w->failed && w->n_rec && make_room(w, h.file_bytes) == 0;
    if (good) {
        unsigned char page[SDXL_WCACHE_HDR];
        memset(page, 0, sizeof page);
        memcpy(page, &h, sizeof h);
        h.self_hash = sdxl_wcache_sum(page, offsetof(sdxl_wcache_header, self_hash));
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
