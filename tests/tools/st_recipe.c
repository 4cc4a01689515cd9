/* sdxl-st-recipe: rebuilds a safetensors file byte for byte from other files plus a recipe, so that
 * the test data keeps the single-file checkpoints without storing their tensors twice.
 *
 *   sdxl-st-recipe assemble RECIPE OUT          writes OUT, checks its size and SHA-256
 *   sdxl-st-recipe make FILE RECIPE SOURCE...   writes the recipe that rebuilds FILE from SOURCEs
 *
 * Recipe: text lines, then "end\n", then the bytes of every inline piece in order. Paths are
 * relative to the recipe's folder, in both modes.
 *   sdxl-st-recipe 1
 *   size <bytes>
 *   sha256 <64 hex digits>
 *   source <path> <bytes>                 numbered from 0 in order
 *   copy <source> <offset> <bytes> <name> bytes taken from a source file
 *   inline <bytes> <name>                 bytes taken from the blob after "end"
 *   end
 * The pieces, in order, make the whole file; <name> is the tensor they belong to (or "header"). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/sha256.h"
#include "io/safetensors.h"

#define MAX_SOURCES 64
#define MIN_COPY 32 /* shorter matches than this, unless they are a whole tensor, are stored inline */

typedef struct buf {
    unsigned char *p;
    size_t n;
} buf;

typedef struct piece {
    int src; /* -1: inline */
    uint64_t off, len;
} piece;

typedef struct recipe {
    uint64_t size;
    char sha[65];
    int nsrc;
    char *src_path[MAX_SOURCES];
    uint64_t src_size[MAX_SOURCES];
    piece *pc;
    size_t npc;
    const unsigned char *blob;
    size_t blob_len;
} recipe;

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("sdxl-st-recipe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static int read_all(const char *path, buf *b) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return fail("%s: %s", path, strerror(errno));
    int rc = 1;
    b->p = NULL;
    b->n = 0;
    if (fseeko(fp, 0, SEEK_END) != 0) goto out;
    off_t n = ftello(fp);
    if (n < 0 || fseeko(fp, 0, SEEK_SET) != 0) goto out;
    b->n = (size_t)n;
    b->p = malloc(b->n ? b->n : 1);
    if (!b->p) goto out;
    rc = fread(b->p, 1, b->n, fp) == b->n ? 0 : 1;
out:
    fclose(fp);
    if (rc) {
        free(b->p);
        b->p = NULL;
        return fail("%s: cannot read", path);
    }
    return 0;
}

/* dir/rel, or rel itself when it is absolute or dir is empty. Caller frees. */
static char *join(const char *dir, const char *rel) {
    size_t dn = rel[0] == '/' ? 0 : strlen(dir), rn = strlen(rel);
    char *s = malloc(dn + rn + 2);
    if (!s) return NULL;
    if (dn) {
        memcpy(s, dir, dn);
        s[dn] = '/';
        memcpy(s + dn + 1, rel, rn + 1);
    } else {
        memcpy(s, rel, rn + 1);
    }
    return s;
}

/* The folder part of path ("" for a bare name). Caller frees. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (slash && n == 0) n = 1;
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

static void sha_of(const unsigned char *p, size_t n, char out[65]) {
    sdxl_sha256 s;
    sdxl_sha256_init(&s);
    sdxl_sha256_update(&s, p, n);
    sdxl_sha256_hex(&s, out);
}

static void recipe_free(recipe *r) {
    for (int i = 0; i < r->nsrc; i++)
        free(r->src_path[i]);
    free(r->pc);
}

static int add_piece(recipe *r, size_t *cap, piece p) {
    if (r->npc == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        piece *np = realloc(r->pc, nc * sizeof *np);
        if (!np) return fail("out of memory");
        r->pc = np;
        *cap = nc;
    }
    r->pc[r->npc++] = p;
    return 0;
}

/* Parses the recipe text in t (which must outlive r: the blob points into it). */
static int parse(const char *path, const buf *t, recipe *r) {
    memset(r, 0, sizeof *r);
    size_t cap = 0, pos = 0, inl = 0;
    int line_no = 0, have_size = 0, ended = 0;
    char line[4096];
    while (pos < t->n && !ended) {
        const unsigned char *nl = memchr(t->p + pos, '\n', t->n - pos);
        size_t len = nl ? (size_t)(nl - (t->p + pos)) : t->n - pos;
        line_no++;
        if (len >= sizeof line) return fail("%s:%d: line too long", path, line_no);
        memcpy(line, t->p + pos, len);
        line[len] = 0;
        pos += len + (nl ? 1 : 0);
        char s1[4096];
        uint64_t a, b;
        int src;
        if (line_no == 1) {
            if (strcmp(line, "sdxl-st-recipe 1") != 0) return fail("%s: not a version 1 recipe", path);
        } else if (sscanf(line, "size %" SCNu64, &a) == 1) {
            r->size = a;
            have_size = 1;
        } else if (strncmp(line, "sha256 ", 7) == 0) {
            if (sscanf(line + 7, "%64s", r->sha) != 1 || strlen(r->sha) != 64)
                return fail("%s:%d: a sha256 has 64 hex digits", path, line_no);
        } else if (sscanf(line, "source %4095s %" SCNu64, s1, &a) == 2) {
            if (r->nsrc == MAX_SOURCES) return fail("%s:%d: more than %d sources", path, line_no, MAX_SOURCES);
            if (!(r->src_path[r->nsrc] = strdup(s1))) return fail("out of memory");
            r->src_size[r->nsrc++] = a;
        } else if (sscanf(line, "copy %d %" SCNu64 " %" SCNu64, &src, &a, &b) == 3) {
            if (src < 0 || src >= r->nsrc || a > r->src_size[src] || b > r->src_size[src] - a)
                return fail("%s:%d: range outside source %d", path, line_no, src);
            if (add_piece(r, &cap, (piece){src, a, b})) return 1;
        } else if (sscanf(line, "inline %" SCNu64, &a) == 1) {
            if (a > t->n - inl) return fail("%s:%d: inline piece longer than the recipe", path, line_no);
            if (add_piece(r, &cap, (piece){-1, inl, a})) return 1;
            inl += a;
        } else if (strcmp(line, "end") == 0) {
            ended = 1;
        } else {
            return fail("%s:%d: cannot read \"%.60s\"", path, line_no, line);
        }
    }
    if (!ended || !have_size || !r->sha[0]) return fail("%s: no size, sha256 or end line", path);
    r->blob = t->p + pos;
    r->blob_len = t->n - pos;
    if (inl != r->blob_len)
        return fail("%s: inline pieces need %" PRIu64 " bytes, the blob has %zu", path, (uint64_t)inl, r->blob_len);
    uint64_t total = 0;
    for (size_t i = 0; i < r->npc && total <= r->size; i++)
        total = r->pc[i].len > r->size - total ? r->size + 1 : total + r->pc[i].len;
    if (total != r->size) return fail("%s: pieces make %" PRIu64 " bytes, size says %" PRIu64, path, total, r->size);
    return 0;
}

/* Builds the file into out (r->size bytes) from the loaded sources. */
static void build(const recipe *r, const buf *src, unsigned char *out) {
    uint64_t o = 0;
    for (size_t i = 0; i < r->npc; i++) {
        const piece *p = &r->pc[i];
        memcpy(out + o, p->src < 0 ? r->blob + p->off : src[p->src].p + p->off, p->len);
        o += p->len;
    }
}

static int load_sources(const recipe *r, const char *dir, buf *src) {
    for (int i = 0; i < r->nsrc; i++) {
        char *p = join(dir, r->src_path[i]);
        if (!p) return fail("out of memory");
        int rc = read_all(p, &src[i]);
        if (!rc && src[i].n != r->src_size[i])
            rc = fail("%s: %zu bytes, the recipe was made from %" PRIu64 " (remake the recipe: sdxl-st-recipe make)", p,
                      src[i].n, r->src_size[i]);
        free(p);
        if (rc) return 1;
    }
    return 0;
}

static int write_atomic(const char *path, const unsigned char *p, size_t n) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 32);
    if (!tmp) return fail("out of memory");
    snprintf(tmp, pl + 32, "%s.tmp%ld", path, (long)getpid());
    FILE *fp = fopen(tmp, "wb");
    int rc = !fp || fwrite(p, 1, n, fp) != n;
    if (fp && fclose(fp) != 0) rc = 1;
    if (!rc && rename(tmp, path) != 0) rc = 1;
    if (rc) {
        fail("%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

static int assemble(const char *rpath, const char *opath) {
    buf t = {0}, src[MAX_SOURCES] = {{0}};
    recipe r;
    unsigned char *out = NULL;
    char *dir = dir_of(rpath);
    int rc = 1;
    if (!dir || read_all(rpath, &t)) goto done;
    if (parse(rpath, &t, &r)) goto free_r;
    if (load_sources(&r, dir, src)) goto free_r;
    if (!(out = malloc(r.size ? r.size : 1))) {
        fail("out of memory");
        goto free_r;
    }
    build(&r, src, out);
    char got[65];
    sha_of(out, r.size, got);
    if (strcmp(got, r.sha) != 0) {
        fail("%s: sha256 of the result is %s, the recipe says %s: a source changed (remake the recipe: "
             "sdxl-st-recipe make); nothing written",
             rpath, got, r.sha);
        goto free_r;
    }
    rc = write_atomic(opath, out, r.size);
free_r:
    recipe_free(&r);
done:
    for (int i = 0; i < MAX_SOURCES; i++)
        free(src[i].p);
    free(out);
    free(t.p);
    free(dir);
    return rc;
}

/* ---- make ---------------------------------------------------------------------------------- */

typedef struct anchor {
    int src;
    uint64_t off; /* a tensor's first byte in its source file */
} anchor;

typedef struct text {
    char *p;
    size_t n, cap;
} text;

static int tprintf(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int tprintf(text *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->p ? t->p + t->n : NULL, t->p ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return fail("format error");
        if (t->p && (size_t)k < t->cap - t->n) {
            t->n += (size_t)k;
            return 0;
        }
        size_t nc = (t->cap ? t->cap * 2 : 1 << 16) + (size_t)k;
        char *np = realloc(t->p, nc);
        if (!np) return fail("out of memory");
        t->p = np;
        t->cap = nc;
    }
}

static int tappend(text *t, const void *p, size_t n) {
    if (t->n + n > t->cap) {
        size_t nc = (t->n + n) * 2;
        char *np = realloc(t->p, nc);
        if (!np) return fail("out of memory");
        t->p = np;
        t->cap = nc;
    }
    memcpy(t->p + t->n, p, n);
    t->n += n;
    return 0;
}

static uint64_t header_bytes(const buf *b) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | b->p[i];
    return 8 + n;
}

static uint64_t common_prefix(const unsigned char *a, const unsigned char *b, uint64_t n) {
    uint64_t k = 0;
    while (k + 8 <= n && memcmp(a + k, b + k, 8) == 0)
        k += 8;
    while (k < n && a[k] == b[k])
        k++;
    return k;
}

/* Appends the pieces that make file bytes [s, e) of tensor `name`: the longest match at each
 * position among the tensors of the sources (running on past their end while bytes agree), else
 * inline bytes up to the next position where a match starts. */
static int cover(const buf *f, uint64_t s, uint64_t e, const char *name, const buf *src, const anchor *an, size_t nan,
                 text *lines, text *blob) {
    uint64_t p = s, lit = s;
    while (p < e) {
        uint64_t best = 0;
        size_t bi = 0;
        for (size_t i = 0; i < nan; i++) {
            const buf *b = &src[an[i].src];
            if (b->p[an[i].off] != f->p[p]) continue;
            uint64_t room = e - p < b->n - an[i].off ? e - p : b->n - an[i].off;
            uint64_t k = common_prefix(f->p + p, b->p + an[i].off, room);
            if (k > best) {
                best = k;
                bi = i;
            }
        }
        if (best < MIN_COPY && !(p == s && best == e - s)) {
            p++;
            continue;
        }
        if (lit < p) {
            if (tprintf(lines, "inline %" PRIu64 " %s\n", p - lit, name) || tappend(blob, f->p + lit, p - lit))
                return 1;
        }
        if (tprintf(lines, "copy %d %" PRIu64 " %" PRIu64 " %s\n", an[bi].src, an[bi].off, best, name)) return 1;
        p += best;
        lit = p;
    }
    if (lit < e && (tprintf(lines, "inline %" PRIu64 " %s\n", e - lit, name) || tappend(blob, f->p + lit, e - lit)))
        return 1;
    return 0;
}

static int make(const char *fpath, const char *rpath, int nsrc, char **srcs) {
    buf f = {0}, src[MAX_SOURCES] = {{0}};
    text lines = {0}, blob = {0};
    anchor *an = NULL;
    size_t nan = 0;
    sdxl_st_file *st = NULL;
    sdxl_err e = {0};
    char *dir = dir_of(rpath);
    int rc = 1;
    if (nsrc > MAX_SOURCES) {
        fail("more than %d sources", MAX_SOURCES);
        goto done;
    }
    if (!dir || read_all(fpath, &f)) goto done;
    char sha[65];
    sha_of(f.p, f.n, sha);
    if (tprintf(&lines, "sdxl-st-recipe 1\nsize %zu\nsha256 %s\n", f.n, sha)) goto done;
    for (int i = 0; i < nsrc; i++) {
        char *p = join(dir, srcs[i]);
        if (!p || strpbrk(srcs[i], " \t\n")) {
            fail("%s: no blanks allowed in a source path", srcs[i]);
            free(p);
            goto done;
        }
        int r = read_all(p, &src[i]);
        sdxl_st_file *s = NULL;
        if (!r && sdxl_st_open_memory(src[i].p, src[i].n, p, &s, &e) != 0) r = fail("%s", e.msg);
        free(p);
        if (r) goto done;
        uint64_t data = header_bytes(&src[i]);
        anchor *na = realloc(an, (nan + sdxl_st_count(s)) * sizeof *na);
        if (!na) {
            sdxl_st_close(s);
            fail("out of memory");
            goto done;
        }
        an = na;
        for (size_t k = 0; k < sdxl_st_count(s); k++) {
            const sdxl_st_tensor *t = sdxl_st_at(s, k);
            if (t->nbytes) an[nan++] = (anchor){i, data + t->offset};
        }
        sdxl_st_close(s);
        if (tprintf(&lines, "source %s %zu\n", srcs[i], src[i].n)) goto done;
    }
    if (sdxl_st_open_memory(f.p, f.n, fpath, &st, &e) != 0) {
        fail("%s", e.msg);
        goto done;
    }
    uint64_t data = header_bytes(&f), at = data;
    if (tprintf(&lines, "inline %" PRIu64 " header\n", data) || tappend(&blob, f.p, data)) goto done;
    for (size_t k = 0; k < sdxl_st_count(st); k++) {
        const sdxl_st_tensor *t = sdxl_st_at(st, k);
        if (data + t->offset != at) {
            fail("%s: tensor %s does not follow the previous one", fpath, t->name);
            goto done;
        }
        if (cover(&f, at, at + t->nbytes, t->name, src, an, nan, &lines, &blob)) goto done;
        at += t->nbytes;
    }
    if (at != f.n && cover(&f, at, f.n, "trailer", src, an, nan, &lines, &blob)) goto done;
    if (tprintf(&lines, "end\n") || tappend(&lines, blob.p, blob.n)) goto done;

    /* The recipe must rebuild the file it was made from before it replaces the old one. */
    buf t = {(unsigned char *)lines.p, lines.n};
    recipe r;
    if (parse(rpath, &t, &r) == 0) {
        unsigned char *out = malloc(r.size ? r.size : 1);
        if (out) {
            build(&r, src, out);
            rc = r.size == f.n && memcmp(out, f.p, f.n) == 0 ? 0 : fail("%s: the recipe does not rebuild it", fpath);
        }
        free(out);
    }
    recipe_free(&r);
    if (!rc) rc = write_atomic(rpath, (const unsigned char *)lines.p, lines.n);
done:
    sdxl_st_close(st);
    for (int i = 0; i < MAX_SOURCES; i++)
        free(src[i].p);
    free(an);
    free(lines.p);
    free(blob.p);
    free(f.p);
    free(dir);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "assemble") == 0) return assemble(argv[2], argv[3]);
    if (argc >= 5 && strcmp(argv[1], "make") == 0) return make(argv[2], argv[3], argc - 4, argv + 4);
    fprintf(stderr, "usage: sdxl-st-recipe assemble RECIPE OUT\n"
                    "       sdxl-st-recipe make FILE RECIPE SOURCE...   (SOURCE paths relative to RECIPE's folder)\n");
    return 2;
}
