/* bench-make_checkpoint: writes a full-size SDXL single-file checkpoint with random weights, for
 * benchmarks (real shapes and names, no real model needed). Never commit its output.
 *
 *   bench-make_checkpoint                      base: bench/models/sdxl_base_random.safetensors (6.9 GB)
 *   bench-make_checkpoint --refiner            refiner: bench/models/sdxl_refiner_random.safetensors (6.1 GB)
 *   bench-make_checkpoint --only conditioner.  only tensors whose name starts so (repeatable)
 *   bench-make_checkpoint --keys K.tsv -o OUT --seed N
 *
 * The key table (name, dtype, shape; tests/data/golden/keys/sdxl_*_keys.tsv) gives every tensor.
 * Values: matrices and convs uniform with std 1/sqrt(fan_in) (fan_in = product of all dims but the
 * first), so activations stay O(1); norm scales 1 and norm shifts 0; other biases and the
 * embeddings std 0.02; logit_scale ln(100); position_ids 0..n-1. Stored as the table's dtype (F16).
 * Tensors are generated and written one chunk at a time: memory stays at a few MB whatever the
 * file size. The file appears under its name only when complete (written as OUT.part, renamed). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "peak.h"
#include "tensor/tensor.h"

#define MAX_NDIM 8
#define CHUNK (1 << 20)

typedef struct key {
    char *name;
    char dtype[8];
    int ndim;
    int64_t shape[MAX_NDIM];
    uint64_t numel, nbytes;
} key;

typedef struct table {
    key *k;
    size_t n, cap;
} table;

static size_t dtype_size(const char *dt) {
    if (!strcmp(dt, "F16") || !strcmp(dt, "BF16")) return 2;
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32")) return 4;
    if (!strcmp(dt, "I64") || !strcmp(dt, "F64")) return 8;
    return 0;
}

/* "[a,b,c]" -> shape; returns 0 on a malformed or overflowing shape. */
static int parse_shape(const char *s, key *k) {
    k->ndim = 0;
    k->numel = 1;
    if (*s++ != '[') return 0;
    while (*s && *s != ']') {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || errno || v < 0 || k->ndim == MAX_NDIM) return 0;
        if (v && k->numel > UINT64_MAX / 2 / (uint64_t)v) return 0;
        k->shape[k->ndim++] = v;
        k->numel *= (uint64_t)v;
        s = end;
        if (*s == ',') s++;
    }
    return *s == ']';
}

static int load_keys(const char *path, table *t) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open key table %s: %s\n", path, strerror(errno));
        return 0;
    }
    char line[4096];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = 0;
        if (lineno == 1 && !strncmp(line, "name\t", 5)) continue;
        if (!line[0]) continue;
        char *tab1 = strchr(line, '\t'), *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        if (!tab2) goto bad;
        *tab1 = *tab2 = 0;
        if (t->n == t->cap) {
            t->cap = t->cap ? 2 * t->cap : 1024;
            key *nk = realloc(t->k, t->cap * sizeof *nk);
            if (!nk) goto bad;
            t->k = nk;
        }
        key *k = &t->k[t->n];
        memset(k, 0, sizeof *k);
        snprintf(k->dtype, sizeof k->dtype, "%s", tab1 + 1);
        size_t es = dtype_size(k->dtype);
        if (!es || !parse_shape(tab2 + 1, k) || !(k->name = strdup(line))) goto bad;
        k->nbytes = k->numel * es;
        t->n++;
    }
    fclose(f);
    return 1;
bad:
    fprintf(stderr, "%s:%d: expected \"name<TAB>dtype<TAB>[shape]\" with dtype F16/BF16/F32/F64/I32/I64\n", path,
            lineno);
    fclose(f);
    return 0;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static const key *find_key(const table *t, const char *name) {
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->k[i].name, name)) return &t->k[i];
    return NULL;
}

/* Value rule of one tensor: constant `c` when std == 0, else uniform with that std. */
static void init_rule(const table *t, const key *k, float *std, float *c) {
    *std = 0;
    *c = 0;
    if (k->ndim == 0) {
        *c = ends_with(k->name, "logit_scale") ? logf(100.0f) : 0.0f;
    } else if (k->ndim == 1 && ends_with(k->name, ".weight")) {
        *c = 1.0f; /* norm scale */
    } else if (k->ndim == 1 && ends_with(k->name, ".bias")) {
        char sib[1024];
        snprintf(sib, sizeof sib, "%.*s.weight", (int)(strlen(k->name) - 5), k->name);
        const key *w = find_key(t, sib);
        *std = w && w->ndim == 1 ? 0.0f : 0.02f; /* norm shift 0, other biases small */
    } else if (strstr(k->name, "embedding")) {
        *std = 0.02f;
    } else if (k->ndim >= 2) {
        double fan_in = 1;
        for (int i = 1; i < k->ndim; i++)
            fan_in *= (double)k->shape[i];
        *std = (float)(1.0 / sqrt(fan_in > 0 ? fan_in : 1));
    } else {
        *std = 0.02f;
    }
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Elements [i0, i0+n) of tensor k into out (its dtype). Counter-based, so chunks are independent. */
static void fill_chunk(const table *t, const key *k, uint64_t seed, uint64_t i0, size_t n, float *f, void *out) {
    if (!strcmp(k->dtype, "I64") || !strcmp(k->dtype, "I32")) {
        int64_t last = k->ndim ? k->shape[k->ndim - 1] : 1;
        int pos = ends_with(k->name, "position_ids");
        for (size_t i = 0; i < n; i++) {
            int64_t v = pos && last ? (int64_t)((i0 + i) % (uint64_t)last) : 0;
            if (k->dtype[1] == '6')
                ((int64_t *)out)[i] = v;
            else
                ((int32_t *)out)[i] = (int32_t)v;
        }
        return;
    }
    float std, c;
    init_rule(t, k, &std, &c);
    uint64_t s = mix64(seed ^ name_hash(k->name));
    const float a = std * 1.7320508f; /* uniform on [-a, a] has std a / sqrt 3 */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        if (std == 0) {
            f[i] = c;
        } else {
            uint64_t r = mix64(s + (i0 + i) * 0x9e3779b97f4a7c15ull);
            f[i] = a * ((float)(r >> 40) * (2.0f / 16777216.0f) - 1.0f);
        }
    }
    if (!strcmp(k->dtype, "F16"))
        sdxl_f32_to_f16(f, out, n);
    else if (!strcmp(k->dtype, "BF16"))
        sdxl_f32_to_bf16(f, out, n);
    else if (!strcmp(k->dtype, "F32"))
        memcpy(out, f, n * sizeof(float));
    else
        for (size_t i = 0; i < n; i++)
            ((double *)out)[i] = f[i];
}

static int selected(const char *name, char **only, int n_only) {
    if (!n_only) return 1;
    for (int i = 0; i < n_only; i++)
        if (!strncmp(name, only[i], strlen(only[i]))) return 1;
    return 0;
}

/* Source tree root from this file's path (CMake compiles with absolute paths). */
static void source_root(char *buf, size_t cap) {
    const char *f = __FILE__, *p = strstr(f, "/bench/make_checkpoint.c");
    if (f[0] == '/' && p)
        snprintf(buf, cap, "%.*s", (int)(p - f), f);
    else
        snprintf(buf, cap, ".");
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench-make_checkpoint [--refiner] [--keys TABLE.tsv] [--only PREFIX]... [--seed N] [-o OUT]\n"
            "Writes a full-size SDXL checkpoint with random weights (see the top of bench/make_checkpoint.c).\n");
}

int main(int argc, char **argv) {
    char root[4096], keys_path[4200] = "", out_path[4200] = "";
    char *only[16];
    int n_only = 0, refiner = 0;
    uint64_t seed = 1;
    source_root(root, sizeof root);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--refiner"))
            refiner = 1;
        else if (!strcmp(a, "--keys") && has)
            snprintf(keys_path, sizeof keys_path, "%s", argv[++i]);
        else if (!strcmp(a, "-o") && has)
            snprintf(out_path, sizeof out_path, "%s", argv[++i]);
        else if (!strcmp(a, "--seed") && has)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--only") && has && n_only < 16)
            only[n_only++] = argv[++i];
        else {
            usage();
            return 2;
        }
    }
    const char *which = refiner ? "refiner" : "base";
    if (!keys_path[0]) snprintf(keys_path, sizeof keys_path, "%s/tests/data/golden/keys/sdxl_%s_keys.tsv", root, which);
    if (!out_path[0]) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/bench/models", root);
        mkdir(dir, 0755);
        snprintf(out_path, sizeof out_path, "%s/sdxl_%s_random%s.safetensors", dir, which, n_only ? "_part" : "");
    }

    table t = {0};
    if (!load_keys(keys_path, &t)) return 1;

    /* Header: JSON with data_offsets in table order, padded with spaces to 8 bytes. */
    size_t hcap = 1 << 20, hlen = 0;
    char *hdr = malloc(hcap);
    uint64_t off = 0, n_sel = 0;
    if (!hdr) return 1;
    hlen += (size_t)snprintf(
        hdr, hcap, "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"random weights for benchmarks; not a model\"}");
    for (size_t i = 0; i < t.n; i++) {
        const key *k = &t.k[i];
        if (!selected(k->name, only, n_only)) continue;
        if (hcap - hlen < strlen(k->name) + 256) {
            hcap *= 2;
            char *nh = realloc(hdr, hcap);
            if (!nh) return 1;
            hdr = nh;
        }
        hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", k->name, k->dtype);
        for (int d = 0; d < k->ndim; d++)
            hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "%s%" PRId64, d ? "," : "", k->shape[d]);
        hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off,
                                 off + k->nbytes);
        off += k->nbytes;
        n_sel++;
    }
    hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "}");
    while (hlen % 8)
        hdr[hlen++] = ' ';

    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.part", out_path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "cannot create %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    setvbuf(f, NULL, _IOFBF, 8 << 20);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hlen, f) == hlen;

    float *fbuf = malloc(CHUNK * sizeof(float));
    void *obuf = malloc(CHUNK * 8);
    double t0 = bench_now();
    for (size_t i = 0; i < t.n && ok && fbuf && obuf; i++) {
        const key *k = &t.k[i];
        if (!selected(k->name, only, n_only)) continue;
        size_t es = dtype_size(k->dtype);
        for (uint64_t j = 0; j < k->numel && ok; j += CHUNK) {
            size_t n = (size_t)(k->numel - j < CHUNK ? k->numel - j : CHUNK);
            fill_chunk(&t, k, seed, j, n, fbuf, obuf);
            ok = fwrite(obuf, es, n, f) == n;
        }
    }
    int closed = fclose(f) == 0;
    ok = ok && fbuf && obuf && closed;
    if (!ok || rename(tmp, out_path) != 0) {
        fprintf(stderr, "writing %s failed: %s\n", tmp, strerror(errno));
        remove(tmp);
        return 1;
    }
    printf("wrote %s: %" PRIu64 " tensors, %.2f GB in %.1f s (keys %s, seed %" PRIu64 ")\n", out_path, n_sel,
           (double)(off + hlen + 8) / 1e9, bench_now() - t0, keys_path, seed);
    for (size_t i = 0; i < t.n; i++)
        free(t.k[i].name);
    free(t.k);
    free(hdr);
    free(fbuf);
    free(obuf);
    return 0;
}
