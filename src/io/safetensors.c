/* safetensors reader (validate everything, then expose a read-only mapping) and writer.
 * Format: u64 little-endian header length N, N bytes of JSON, then the data region. */
#include "io/safetensors.h"
#include "io/strbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/json.h"
#include "tensor/tensor.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

struct sdxl_st_file {
    char *path;                 /* name used in messages */
    const unsigned char *base;  /* whole file image */
    size_t size;
    int mapped;                 /* base is our mmap */
    const unsigned char *data;  /* data region */
    uint64_t data_len;
    sdxl_st_tensor *t;          /* sorted by offset */
    size_t n;
    uint32_t *ht;               /* name hash: index+1 into t, 0 = empty */
    size_t hcap;
    const char **mkeys, **mvals;
    size_t nmeta;
    char *strings;              /* names and metadata, one block */
};

static const struct {
    const char *name;
    size_t size;
} DTYPES[] = {
    [SDXL_ST_F64] = {"F64", 8}, [SDXL_ST_F32] = {"F32", 4}, [SDXL_ST_F16] = {"F16", 2},
    [SDXL_ST_BF16] = {"BF16", 2}, [SDXL_ST_I64] = {"I64", 8}, [SDXL_ST_I32] = {"I32", 4},
    [SDXL_ST_I16] = {"I16", 2}, [SDXL_ST_I8] = {"I8", 1}, [SDXL_ST_U8] = {"U8", 1}, [SDXL_ST_BOOL] = {"BOOL", 1},
    [SDXL_ST_F8_E4M3] = {"F8_E4M3", 1}, [SDXL_ST_F8_E5M2] = {"F8_E5M2", 1},
};
#define N_DTYPES (sizeof DTYPES / sizeof DTYPES[0])

const char *sdxl_st_dtype_name(sdxl_st_dtype t) { return (unsigned)t < N_DTYPES ? DTYPES[t].name : "?"; }
size_t sdxl_st_dtype_size(sdxl_st_dtype t) { return (unsigned)t < N_DTYPES ? DTYPES[t].size : 0; }

/* A name made safe for one line of error text: quoted, control bytes escaped, long ones cut. */
static const char *qname(char *buf, size_t cap, const char *s, size_t len) {
    size_t o = 0, limit = cap > 16 ? cap - 12 : 0;
    buf[o++] = '"';
    size_t i = 0;
    for (; i < len && o < limit; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        else buf[o++] = (char)c;
    }
    if (i < len) {
        while (o > 1 && ((unsigned char)buf[o - 1] & 0xc0) == 0x80) o--; /* don't split a UTF-8 sequence */
        if (o > 1 && (unsigned char)buf[o - 1] >= 0xc0) o--;
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = 0;
    return buf;
}

static void shape_str(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Header entry under validation, before sorting. */
typedef struct pending {
    const sdxl_json *name_key;
    size_t name_len;
    const char *name;
    sdxl_st_dtype dtype;
    int ndim;
    int64_t shape[SDXL_ST_MAX_DIMS];
    uint64_t numel, nbytes, begin, end;
} pending;

static int cmp_pending(const void *a, const void *b) {
    const pending *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int is_uint(const sdxl_json *v) { return v && v->type == SDXL_JSON_NUMBER && v->is_int && v->integer >= 0; }

/* Checks one tensor entry; fills *p. `tn` is the quoted name for messages. */
static int check_entry(const char *what, const char *tn, const sdxl_json *v, uint64_t data_len, pending *p,
                       sdxl_err *e) {
    if (v->type != SDXL_JSON_OBJECT)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: entry must be an object with dtype, shape and data_offsets",
                           what, tn);
    const sdxl_json *dt = NULL, *sh = NULL, *off = NULL;
    for (size_t i = 0; i < v->len; i++) {
        const char *k = v->keys[i];
        size_t kl = v->key_lens[i];
        if (kl == 5 && !memcmp(k, "dtype", 5)) dt = &v->items[i];
        else if (kl == 5 && !memcmp(k, "shape", 5)) sh = &v->items[i];
        else if (kl == 12 && !memcmp(k, "data_offsets", 12)) off = &v->items[i];
        else {
            char kq[96];
            return sdxl_seterr(e, SDXL_ERR_FORMAT,
                               "%s: tensor %s: unexpected field %s (allowed: dtype, shape, data_offsets)", what, tn,
                               qname(kq, sizeof kq, k, kl));
        }
    }
    if (!dt) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: missing field \"dtype\"", what, tn);
    if (!sh) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: missing field \"shape\"", what, tn);
    if (!off) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: missing field \"data_offsets\"", what, tn);
    if (dt->type != SDXL_JSON_STRING) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: dtype must be a string", what, tn);
    size_t d = 0;
    for (; d < N_DTYPES; d++)
        if (dt->len == strlen(DTYPES[d].name) && !memcmp(dt->str, DTYPES[d].name, dt->len)) break;
    if (d == N_DTYPES) {
        char dq[64];
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: tensor %s: unknown dtype %s (allowed: F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U8 BOOL)", what, tn,
                           qname(dq, sizeof dq, dt->str, dt->len));
    }
    p->dtype = (sdxl_st_dtype)d;
    if (sh->type != SDXL_JSON_ARRAY)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: shape must be an array of non-negative integers", what, tn);
    if (sh->len > SDXL_ST_MAX_DIMS)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: tensor %s: shape has %zu dimensions, more than the limit of %d", what,
                           tn, sh->len, SDXL_ST_MAX_DIMS);
    p->ndim = (int)sh->len;
    for (int i = 0; i < p->ndim; i++) {
        if (!is_uint(&sh->items[i]))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: shape[%d] must be a non-negative integer", what, tn, i);
        p->shape[i] = sh->items[i].integer;
    }
    if (off->type != SDXL_JSON_ARRAY || off->len != 2 || !is_uint(&off->items[0]) || !is_uint(&off->items[1]))
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: tensor %s: data_offsets must be an array of 2 non-negative integers [begin, end]", what, tn);
    p->begin = (uint64_t)off->items[0].integer;
    p->end = (uint64_t)off->items[1].integer;
    if (p->begin > p->end)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: data_offsets [%llu,%llu] has begin after end", what, tn,
                           (unsigned long long)p->begin, (unsigned long long)p->end);
    char ss[192];
    shape_str(ss, sizeof ss, p->shape, p->ndim);
    uint64_t numel = 1;
    for (int i = 0; i < p->ndim; i++)
        if (__builtin_mul_overflow(numel, (uint64_t)p->shape[i], &numel))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: shape %s has more elements than 2^64", what, tn, ss);
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)DTYPES[d].size, &nbytes))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: shape %s x %s is more than 2^64 bytes", what, tn, ss,
                           DTYPES[d].name);
    if (nbytes != p->end - p->begin)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: shape %s x %s = %llu bytes but data_offsets span %llu",
                           what, tn, ss, DTYPES[d].name, (unsigned long long)nbytes,
                           (unsigned long long)(p->end - p->begin));
    if (p->end > data_len)
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: tensor %s: data_offsets [%llu,%llu] run past the end of the data region (%llu bytes)",
                           what, tn, (unsigned long long)p->begin, (unsigned long long)p->end,
                           (unsigned long long)data_len);
    p->numel = numel;
    p->nbytes = nbytes;
    return SDXL_OK;
}

/* Validates name rules shared by tensors and metadata keys. */
static int check_name(const char *what, const char *kind, const char *s, size_t len, sdxl_err *e) {
    char q[200];
    if (len == 0) return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: %s \"\": empty name", what, kind);
    if (len > SDXL_ST_MAX_NAME)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: %s %s: name of %zu bytes exceeds the limit of %d", what, kind,
                           qname(q, sizeof q, s, len), len, SDXL_ST_MAX_NAME);
    if (memchr(s, 0, len))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: %s %s: name contains a NUL byte", what, kind, qname(q, sizeof q, s, len));
    return SDXL_OK;
}

static int validate(sdxl_st_file *f, sdxl_err *e) {
    const char *what = f->path;
    if (f->size < 8)
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: file is %zu bytes, too short for the 8-byte header length of a safetensors file", what,
                           f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->base[i];
    if (hlen > SDXL_ST_MAX_HEADER)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes (not a safetensors file?)",
                           what, (unsigned long long)hlen, SDXL_ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: header length %llu runs past the end of the file (%zu bytes; truncated?)", what,
                           (unsigned long long)hlen, f->size);
    const char *h = (const char *)f->base + 8;
    if (hlen == 0 || h[0] != '{')
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: header must be a JSON object starting with '{'", what);
    f->data = f->base + 8 + hlen;
    f->data_len = f->size - 8 - hlen;

    char hwhat[512];
    snprintf(hwhat, sizeof hwhat, "%s: header", what);
    sdxl_json_opts o;
    sdxl_json_opts_init(&o);
    o.max_depth = 4; /* object > entry > shape array, one spare so nesting errors name the tensor */
    o.reject_dup_keys = 1;
    o.max_string = SDXL_ST_MAX_HEADER;
    o.max_values = SDXL_ST_MAX_VALUES; /* the parser keeps about 72 bytes per value */
    sdxl_json *root;
    int st = sdxl_json_parse(h, (size_t)hlen, &o, hwhat, &root, e);
    if (st) return st;

    pending *pe = NULL;
    size_t np = 0, strbytes = 0;
    const sdxl_json *meta = NULL;
    char tn[200];
    if (root->len) {
        pe = calloc(root->len, sizeof *pe);
        if (!pe) {
            st = sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory for %zu header entries", what, root->len);
            goto done;
        }
    }
    for (size_t i = 0; i < root->len; i++) {
        const char *k = root->keys[i];
        size_t kl = root->key_lens[i];
        if (kl == 12 && !memcmp(k, "__metadata__", 12)) {
            meta = &root->items[i];
            continue;
        }
        if ((st = check_name(what, "tensor", k, kl, e))) goto done;
        qname(tn, sizeof tn, k, kl);
        pending *p = &pe[np];
        if ((st = check_entry(what, tn, &root->items[i], f->data_len, p, e))) goto done;
        p->name = k;
        p->name_len = kl;
        strbytes += kl + 1;
        np++;
    }
    if (meta) {
        if (meta->type != SDXL_JSON_OBJECT) {
            st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: __metadata__ must be an object mapping strings to strings", what);
            goto done;
        }
        for (size_t i = 0; i < meta->len; i++) {
            const sdxl_json *v = &meta->items[i];
            qname(tn, sizeof tn, meta->keys[i], meta->key_lens[i]);
            if (memchr(meta->keys[i], 0, meta->key_lens[i])) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: __metadata__ key %s: key contains a NUL byte", what, tn);
                goto done;
            }
            if (v->type != SDXL_JSON_STRING) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: __metadata__ key %s: value must be a string", what, tn);
                goto done;
            }
            if (memchr(v->str, 0, v->len)) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: __metadata__ key %s: value contains a NUL byte", what, tn);
                goto done;
            }
            strbytes += meta->key_lens[i] + 1 + v->len + 1;
        }
    }
    if (np) qsort(pe, np, sizeof *pe, cmp_pending);
    uint64_t at = 0;
    for (size_t i = 0; i < np; i++) {
        pending *p = &pe[i];
        if (p->begin != at) {
            qname(tn, sizeof tn, p->name, p->name_len);
            if (p->begin < at) {
                char pq[200];
                const pending *q = &pe[i - 1];
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: tensor %s: data_offsets [%llu,%llu] overlap tensor %s [%llu,%llu]",
                                 what, tn, (unsigned long long)p->begin, (unsigned long long)p->end,
                                 qname(pq, sizeof pq, q->name, q->name_len), (unsigned long long)q->begin,
                                 (unsigned long long)q->end);
            } else {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT,
                                 "%s: tensor %s: gap of %llu bytes before data_offsets [%llu,%llu] (tensors must be contiguous)",
                                 what, tn, (unsigned long long)(p->begin - at), (unsigned long long)p->begin,
                                 (unsigned long long)p->end);
            }
            goto done;
        }
        at = p->end;
    }
    if (at != f->data_len) {
        st = sdxl_seterr(e, SDXL_ERR_FORMAT,
                         "%s: data region has %llu bytes but the tensors cover %llu (trailing bytes belong to no tensor)",
                         what, (unsigned long long)f->data_len, (unsigned long long)at);
        goto done;
    }

    /* Valid: copy what we keep out of the JSON tree, then drop the tree. */
    size_t nm = meta ? meta->len : 0;
    f->strings = malloc(strbytes ? strbytes : 1);
    f->t = calloc(np ? np : 1, sizeof *f->t);
    f->mkeys = calloc(nm ? nm : 1, sizeof *f->mkeys);
    f->mvals = calloc(nm ? nm : 1, sizeof *f->mvals);
    f->hcap = 16;
    while (f->hcap < 2 * np) f->hcap *= 2;
    f->ht = calloc(f->hcap, sizeof *f->ht);
    if (!f->strings || !f->t || !f->mkeys || !f->mvals || !f->ht) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory for the tensor table", what);
        goto done;
    }
    char *s = f->strings;
    for (size_t i = 0; i < np; i++) {
        sdxl_st_tensor *t = &f->t[i];
        memcpy(s, pe[i].name, pe[i].name_len + 1);
        t->name = s;
        s += pe[i].name_len + 1;
        t->dtype = pe[i].dtype;
        t->ndim = pe[i].ndim;
        memcpy(t->shape, pe[i].shape, sizeof t->shape);
        t->numel = pe[i].numel;
        t->nbytes = pe[i].nbytes;
        t->offset = pe[i].begin;
        t->data = f->data + pe[i].begin;
        size_t hh = (size_t)hash_name(t->name) & (f->hcap - 1);
        while (f->ht[hh]) hh = (hh + 1) & (f->hcap - 1);
        f->ht[hh] = (uint32_t)(i + 1);
    }
    for (size_t i = 0; i < nm; i++) {
        memcpy(s, meta->keys[i], meta->key_lens[i] + 1);
        f->mkeys[i] = s;
        s += meta->key_lens[i] + 1;
        memcpy(s, meta->items[i].str, meta->items[i].len + 1);
        f->mvals[i] = s;
        s += meta->items[i].len + 1;
    }
    f->n = np;
    f->nmeta = nm;
done:
    free(pe);
    sdxl_json_free(root);
    return st;
}

static int st_new(const char *what, sdxl_st_file **out, sdxl_err *e) {
    *out = calloc(1, sizeof **out);
    if (*out) (*out)->path = strdup(what ? what : "safetensors");
    if (!*out || !(*out)->path) {
        free(*out);
        *out = NULL;
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    }
    return SDXL_OK;
}

int sdxl_st_open_memory(const void *buf, size_t len, const char *what, sdxl_st_file **out, sdxl_err *e) {
    if (!out) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_open_memory: out is required");
    *out = NULL;
    if (!buf && len) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_open_memory: buf is NULL");
    sdxl_st_file *f;
    int st = st_new(what, &f, e);
    if (st) return st;
    f->base = buf ? buf : (const unsigned char *)"";
    f->size = len;
    if ((st = validate(f, e))) {
        sdxl_st_close(f);
        return st;
    }
    *out = f;
    return SDXL_OK;
}

int sdxl_st_open(const char *path, sdxl_st_file **out, sdxl_err *e) {
    if (!out) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_open: out is required");
    *out = NULL;
    if (!path) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_open: path is required");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_FORMAT,
                           "%s: file is %lld bytes, too short for the 8-byte header length of a safetensors file", path,
                           (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: file too large to map", path);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (m == MAP_FAILED) return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot map: %s", path, strerror(err));
    sdxl_st_file *f;
    int st = st_new(path, &f, e);
    if (st) {
        munmap(m, (size_t)sb.st_size);
        return st;
    }
    f->base = m;
    f->size = (size_t)sb.st_size;
    f->mapped = 1;
    if ((st = validate(f, e))) {
        sdxl_st_close(f);
        return st;
    }
    *out = f;
    return SDXL_OK;
}

void sdxl_st_close(sdxl_st_file *f) {
    if (!f) return;
    if (f->mapped) munmap((void *)f->base, f->size);
    free(f->path);
    free(f->t);
    free(f->ht);
    free(f->mkeys);
    free(f->mvals);
    free(f->strings);
    free(f);
}

const char *sdxl_st_path(const sdxl_st_file *f) { return f ? f->path : NULL; }
size_t sdxl_st_count(const sdxl_st_file *f) { return f ? f->n : 0; }
const sdxl_st_tensor *sdxl_st_at(const sdxl_st_file *f, size_t i) { return f && i < f->n ? &f->t[i] : NULL; }

const sdxl_st_tensor *sdxl_st_find(const sdxl_st_file *f, const char *name) {
    if (!f || !name || !f->n) return NULL;
    size_t h = (size_t)hash_name(name) & (f->hcap - 1);
    while (f->ht[h]) {
        const sdxl_st_tensor *t = &f->t[f->ht[h] - 1];
        if (!strcmp(t->name, name)) return t;
        h = (h + 1) & (f->hcap - 1);
    }
    return NULL;
}

size_t sdxl_st_meta_count(const sdxl_st_file *f) { return f ? f->nmeta : 0; }

void sdxl_st_meta_at(const sdxl_st_file *f, size_t i, const char **key, const char **value) {
    int ok = f && i < f->nmeta;
    if (key) *key = ok ? f->mkeys[i] : NULL;
    if (value) *value = ok ? f->mvals[i] : NULL;
}

const char *sdxl_st_meta_get(const sdxl_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->nmeta; i++)
        if (!strcmp(f->mkeys[i], key)) return f->mvals[i];
    return NULL;
}

/* f16/bf16 through an aligned bounce buffer when the tensor sits at an odd address. */
static void half_to_f32(const unsigned char *src, float *dst, size_t n, int bf16) {
    void (*cv)(const uint16_t *, float *, size_t) = bf16 ? sdxl_bf16_to_f32 : sdxl_f16_to_f32;
    if (((uintptr_t)src & 1) == 0) {
        cv((const uint16_t *)(const void *)src, dst, n);
        return;
    }
    uint16_t tmp[1024];
    for (size_t i = 0; i < n; i += 1024) {
        size_t k = n - i < 1024 ? n - i : 1024;
        memcpy(tmp, src + 2 * i, 2 * k);
        cv(tmp, dst + i, k);
    }
}

int sdxl_st_to_f32(const sdxl_st_file *f, const sdxl_st_tensor *t, float *dst, sdxl_err *e) {
    if (!f || !t || (!dst && t->numel)) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_to_f32: file, tensor and dst are required");
    if (t->numel > SIZE_MAX / sizeof(double))
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: tensor \"%s\": too many elements", f->path, t->name);
    size_t n = (size_t)t->numel;
    const unsigned char *s = t->data;
    switch (t->dtype) {
    case SDXL_ST_F32: memcpy(dst, s, n * 4); break;
    case SDXL_ST_F16: half_to_f32(s, dst, n, 0); break;
    case SDXL_ST_BF16: half_to_f32(s, dst, n, 1); break;
    case SDXL_ST_F8_E4M3: sdxl_f8e4m3_to_f32(s, dst, n); break;
    case SDXL_ST_F8_E5M2: sdxl_f8e5m2_to_f32(s, dst, n); break;
    case SDXL_ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + 8 * i, 8);
            /* out-of-range doubles saturate to inf explicitly (the plain cast is undefined) */
            dst[i] = isnan(d) ? (float)d : d > FLT_MAX ? INFINITY : d < -FLT_MAX ? -INFINITY : (float)d;
        }
        break;
    case SDXL_ST_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, s + 8 * i, 8);
            dst[i] = (float)v;
        }
        break;
    case SDXL_ST_I32:
        for (size_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, s + 4 * i, 4);
            dst[i] = (float)v;
        }
        break;
    case SDXL_ST_I16:
        for (size_t i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, s + 2 * i, 2);
            dst[i] = (float)v;
        }
        break;
    case SDXL_ST_I8:
        for (size_t i = 0; i < n; i++) dst[i] = (float)(int8_t)s[i];
        break;
    case SDXL_ST_U8:
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    case SDXL_ST_BOOL:
        for (size_t i = 0; i < n; i++) dst[i] = s[i] ? 1.0f : 0.0f;
        break;
    default: return sdxl_seterr(e, SDXL_ERR_INTERNAL, "%s: tensor \"%s\": bad dtype", f->path, t->name);
    }
    return SDXL_OK;
}

/* ---- writer ---- */

typedef struct wentry {
    char *name;
    sdxl_st_dtype dtype;
    int ndim;
    int64_t shape[SDXL_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
} wentry;

struct sdxl_st_writer {
    wentry *t;
    size_t n, cap;
    char **mk, **mv;
    size_t nm, mcap;
};

int sdxl_st_writer_new(sdxl_st_writer **out, sdxl_err *e) {
    if (!out) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_writer_new: out is required");
    *out = calloc(1, sizeof **out);
    return *out ? SDXL_OK : sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
}

void sdxl_st_writer_free(sdxl_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    for (size_t i = 0; i < w->nm; i++) {
        free(w->mk[i]);
        free(w->mv[i]);
    }
    free(w->t);
    free(w->mk);
    free(w->mv);
    free(w);
}

int sdxl_st_writer_add(sdxl_st_writer *w, const char *name, sdxl_st_dtype dtype, int ndim, const int64_t *shape,
                       const void *data, sdxl_err *e) {
    if (!w || !name || (ndim > 0 && !shape)) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_writer_add: writer, name and shape are required");
    size_t nl = strlen(name);
    if (nl == 0 || nl > SDXL_ST_MAX_NAME || !strcmp(name, "__metadata__"))
        return sdxl_seterr(e, SDXL_ERR_ARG, "safetensors writer: tensor \"%.200s\": name must be 1..%d bytes and not __metadata__",
                           name, SDXL_ST_MAX_NAME);
    if ((unsigned)dtype >= N_DTYPES)
        return sdxl_seterr(e, SDXL_ERR_ARG, "safetensors writer: tensor \"%.200s\": unknown dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > SDXL_ST_MAX_DIMS)
        return sdxl_seterr(e, SDXL_ERR_ARG, "safetensors writer: tensor \"%.200s\": ndim %d outside 0..%d", name, ndim,
                           SDXL_ST_MAX_DIMS);
    uint64_t nb = DTYPES[dtype].size;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(nb, (uint64_t)shape[i], &nb))
            return sdxl_seterr(e, SDXL_ERR_ARG, "safetensors writer: tensor \"%.200s\": shape[%d] negative or size overflows",
                               name, i);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        wentry *t = realloc(w->t, cap * sizeof *t);
        if (!t) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    wentry *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = nb;
    t->data = data;
    w->n++;
    return SDXL_OK;
}

int sdxl_st_writer_meta(sdxl_st_writer *w, const char *key, const char *value, sdxl_err *e) {
    if (!w || !key || !value || !*key) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_writer_meta: writer, key and value are required");
    for (size_t i = 0; i < w->nm; i++)
        if (!strcmp(w->mk[i], key)) {
            char *v = strdup(value);
            if (!v) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
            free(w->mv[i]);
            w->mv[i] = v;
            return SDXL_OK;
        }
    if (w->nm == w->mcap) {
        size_t cap = w->mcap ? w->mcap * 2 : 8;
        char **k = realloc(w->mk, cap * sizeof *k);
        if (!k) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        w->mk = k;
        char **v = realloc(w->mv, cap * sizeof *v);
        if (!v) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        w->mv = v;
        w->mcap = cap;
    }
    w->mk[w->nm] = strdup(key);
    w->mv[w->nm] = strdup(value);
    if (!w->mk[w->nm] || !w->mv[w->nm]) {
        free(w->mk[w->nm]);
        free(w->mv[w->nm]);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
    }
    w->nm++;
    return SDXL_OK;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int write_all(int fd, const void *buf, uint64_t n) {
    const char *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n > (1u << 30) ? (1u << 30) : (size_t)n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += r;
        n -= (uint64_t)r;
    }
    return 0;
}

int sdxl_st_writer_finish(sdxl_st_writer *w, const char *path, sdxl_err *e) {
    if (!w || !path) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_st_writer_finish: writer and path are required");
    if (w->n) { /* duplicate names would make an invalid file */
        char **names = malloc(w->n * sizeof *names);
        if (!names) return sdxl_seterr(e, SDXL_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < w->n; i++) names[i] = w->t[i].name;
        qsort(names, w->n, sizeof *names, cmp_str_ptr);
        for (size_t i = 1; i < w->n; i++)
            if (!strcmp(names[i - 1], names[i])) {
                int st = sdxl_seterr(e, SDXL_ERR_ARG, "%s: tensor \"%.200s\" added twice", path, names[i]);
                free(names);
                return st;
            }
        free(names);
    }
    sdxl_strbuf b = {0};
    char num[160];
    sdxl_sb_str(&b, "{");
    if (w->nm) {
        sdxl_sb_str(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->nm; i++) {
            if (i) sdxl_sb_str(&b, ",");
            sdxl_sb_json(&b, w->mk[i]);
            sdxl_sb_str(&b, ":");
            sdxl_sb_json(&b, w->mv[i]);
        }
        sdxl_sb_str(&b, "}");
    }
    uint64_t at = 0;
    for (size_t i = 0; i < w->n; i++) {
        const wentry *t = &w->t[i];
        if (i || w->nm) sdxl_sb_str(&b, ",");
        sdxl_sb_json(&b, t->name);
        sdxl_sb_str(&b, ":{\"dtype\":\"");
        sdxl_sb_str(&b, DTYPES[t->dtype].name);
        sdxl_sb_str(&b, "\",\"shape\":");
        shape_str(num, sizeof num, t->shape, t->ndim);
        sdxl_sb_str(&b, num);
        snprintf(num, sizeof num, ",\"data_offsets\":[%llu,%llu]}", (unsigned long long)at,
                 (unsigned long long)(at + t->nbytes));
        sdxl_sb_str(&b, num);
        at += t->nbytes;
    }
    sdxl_sb_str(&b, "}");
    while (!b.oom && (8 + b.n) % 8) sdxl_sb_str(&b, " "); /* data starts 8-byte aligned, as the reference writes */
    if (b.oom) {
        free(b.p);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory building the header", path);
    }
    if (b.n > SDXL_ST_MAX_HEADER) {
        free(b.p);
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: header of %zu bytes exceeds the limit of %u", path, b.n,
                           SDXL_ST_MAX_HEADER);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(b.p);
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
    int bad = write_all(fd, len8, 8) || write_all(fd, b.p, b.n);
    free(b.p);
    uint64_t total = 8 + (uint64_t)b.n;
    for (size_t i = 0; i < w->n && !bad; i++) {
        const wentry *t = &w->t[i];
        if (t->data) bad = write_all(fd, t->data, t->nbytes);
        else bad = lseek(fd, (off_t)t->nbytes, SEEK_CUR) < 0; /* a hole: no disk blocks */
        total += t->nbytes;
    }
    if (!bad) bad = ftruncate(fd, (off_t)total) != 0; /* materialises a trailing hole */
    int err = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        err = errno;
    }
    if (bad) {
        unlink(path);
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    return SDXL_OK;
}

/* MADV_DONTNEED unmaps the pages from this process without changing what a later read sees
 * (file-backed, private, never written) and leaves them in the page cache: MADV_PAGEOUT would
 * also evict them, so the next load of the same file would read it from disk again. */
static void release_range(const sdxl_st_file *f, const void *p, uint64_t n) {
    long pg = sysconf(_SC_PAGESIZE);
    if (!f->mapped || pg <= 0 || !p || n == 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t b = ((uintptr_t)p + (uintptr_t)n) & ~((uintptr_t)pg - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

void sdxl_st_release_tensor(const sdxl_st_file *f, const sdxl_st_tensor *t) {
    if (f && t) release_range(f, t->data, t->nbytes);
}

void sdxl_st_release_all(const sdxl_st_file *f) {
    if (f) release_range(f, f->data, f->data_len);
}
