/* torchsde BrownianTree (halfway tree, tol 1e-6, pool 24) over numpy SeedSequence seeds and
 * torch CPU randn; see brownian.h. */
#include "denoise/brownian.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "denoise/ksampler.h"
#include "denoise/sampler.h"

#define POOL 24
#define MAX_DEPTH 64

/* ---- numpy SeedSequence ------------------------------------------------------------------- */

static uint32_t hashmix(uint32_t v, uint32_t *h) {
    v ^= *h;
    *h *= 0x931e8875u;
    v *= *h;
    return v ^ (v >> 16);
}

static uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = 0xca01f9ddu * x - 0x4973f715u * y;
    return r ^ (r >> 16);
}

void sdxl_seedseq_state(const uint32_t *entropy, int n_entropy, const uint32_t *spawn, int n_spawn, int pool_size,
                        uint32_t *out, int n_out) {
    uint32_t ent[2 * 64 + 8], pool[64];
    int ne = 0;
    if (pool_size > 64) pool_size = 64;
    for (int i = 0; i < n_entropy && ne < 64; i++) ent[ne++] = entropy[i];
    /* numpy >= 1.19: with a spawn key, the run entropy is zero-padded to the pool size */
    if (n_spawn > 0)
        while (ne < pool_size) ent[ne++] = 0;
    for (int i = 0; i < n_spawn && ne < (int)(sizeof ent / sizeof ent[0]); i++) ent[ne++] = spawn[i];
    uint32_t h = 0x43b0d7e5u;
    for (int i = 0; i < pool_size; i++) pool[i] = hashmix(i < ne ? ent[i] : 0, &h);
    for (int s = 0; s < pool_size; s++)
        for (int d = 0; d < pool_size; d++)
            if (s != d) pool[d] = mix(pool[d], hashmix(pool[s], &h));
    for (int s = pool_size; s < ne; s++)
        for (int d = 0; d < pool_size; d++) pool[d] = mix(pool[d], hashmix(ent[s], &h));
    uint32_t hb = 0x8b51f9ddu;
    for (int i = 0; i < n_out; i++) {
        uint32_t v = pool[i % pool_size];
        v ^= hb;
        hb *= 0x58f38dedu;
        v *= hb;
        out[i] = v ^ (v >> 16);
    }
}

/* ---- the tree ------------------------------------------------------------------------------ */

typedef struct node {
    double start, end, mid; /* rounded to 6 decimals; mid valid when left >= 0 */
    int parent, left, right, is_left, depth;
    uint64_t key;     /* spawn key: 2 * parent's + (0 left, 1 right), root 0 */
    uint32_t w_seed;  /* seed of the noise that splits this node's increment between its children */
} node;

struct sdxl_btree {
    size_t n;
    uint32_t entropy[2];
    int n_entropy;
    node *nodes;
    int n_nodes, cap;
    float *root_w;            /* W(t1) - W(t0) */
    float *path_w;            /* [MAX_DEPTH][n]: increments along the last path computed */
    int path_node[MAX_DEPTH]; /* which node each level holds; -1 none */
    float *noise, *acc;
    int *found, n_found, found_cap;
    sdxl_rng rng;
};

/* Python round(x, 6): the correctly rounded 6-decimal value */
static double round6(double x) {
    char b[64];
    snprintf(b, sizeof b, "%.6f", x);
    return strtod(b, NULL);
}

static void randn_seed(sdxl_btree *b, uint32_t seed, float *out) {
    sdxl_rng_init(&b->rng, SDXL_RNG_TORCH_CPU, seed);
    sdxl_rng_randn(&b->rng, out, b->n);
}

static int add_node(sdxl_btree *b, double start, double end, int parent, int is_left) {
    if (b->n_nodes >= b->cap) return -1;
    node *d = &b->nodes[b->n_nodes];
    memset(d, 0, sizeof *d);
    d->start = round6(start), d->end = round6(end);
    d->parent = parent, d->is_left = is_left, d->left = d->right = -1;
    return b->n_nodes++;
}

/* _split_exact: the node's seed words and two children */
static int split_exact(sdxl_btree *b, int i, double midway) {
    node *d = &b->nodes[i];
    if (d->parent >= 0) {
        const node *p = &b->nodes[d->parent];
        d->key = 2 * p->key + (d->is_left ? 0 : 1);
        d->depth = p->depth + 1;
    }
    if (d->depth >= MAX_DEPTH - 1) return -1;
    d->mid = round6(midway);
    uint32_t spawn[4], ns = 0, st[4];
    for (uint64_t k = d->key;;) { /* numpy splits each int into uint32 words, lowest first; 0 -> [0] */
        spawn[ns++] = (uint32_t)k;
        k >>= 32;
        if (!k) break;
    }
    spawn[ns++] = (uint32_t)d->depth;
    sdxl_seedseq_state(b->entropy, b->n_entropy, spawn, (int)ns, POOL, st, 4);
    d->w_seed = st[0];
    double start = d->start, end = d->end;
    int l = add_node(b, start, midway, i, 1), r = l < 0 ? -1 : add_node(b, midway, end, i, 0);
    if (l < 0 || r < 0) return -1;
    b->nodes[i].left = l, b->nodes[i].right = r;
    return 0;
}

/* _split with halfway_tree: split at the rounded midpoint, then again until `midway` is an edge */
static int split(sdxl_btree *b, int i, double midway) {
    for (;;) {
        const node *d = &b->nodes[i];
        if (split_exact(b, i, 0.5 * (d->end + d->start))) return -1;
        d = &b->nodes[i];
        if (midway > d->mid)
            i = d->right;
        else if (midway < d->mid)
            i = d->left;
        else
            return 0;
    }
}

static int push_found(sdxl_btree *b, int i) {
    if (b->n_found >= b->found_cap) return -1;
    b->found[b->n_found++] = i;
    return 0;
}

/* _loc_inner: the nodes covering [ta, tb] in order, splitting where needed */
static int loc(sdxl_btree *b, int i, double ta, double tb) {
    for (;;) {
        node *d = &b->nodes[i];
        if (ta < d->start || tb > d->end) { /* not ours: the parent is strictly larger */
            if (d->parent < 0) return -1;
            i = d->parent;
            continue;
        }
        if (ta == d->start && tb == d->end) return push_found(b, i);
        if (d->left < 0) {
            if (ta == d->start) {
                if (split(b, i, tb)) return -1;
                i = b->nodes[i].left;
            } else {
                if (split(b, i, ta)) return -1;
                i = b->nodes[i].right;
            }
            continue;
        }
        if (tb <= d->mid) {
            i = d->left;
        } else if (ta >= d->mid) {
            i = d->right;
        } else {
            double mid = d->mid;
            int r = d->right;
            if (loc(b, d->left, ta, mid)) return -1;
            i = r, ta = mid;
        }
    }
}

/* The increment of node i (computed down its path from the root, reusing the last path). */
static const float *increment(sdxl_btree *b, int i) {
    int path[MAX_DEPTH], k = 0;
    for (int j = i; j >= 0 && k < MAX_DEPTH; j = b->nodes[j].parent) path[k++] = j;
    /* path[k - 1] is the root: level 0 */
    int lv = 1;
    while (lv < k && b->path_node[lv] == path[k - 1 - lv]) lv++;
    for (; lv < k; lv++) {
        int c = path[k - 1 - lv];
        const node *p = &b->nodes[b->nodes[c].parent];
        const float *w = lv == 1 ? b->root_w : b->path_w + (size_t)(lv - 1) * b->n;
        float *out = b->path_w + (size_t)lv * b->n;
        double hr = 1 / (p->end - p->start), ld = p->mid - p->start, rd = p->end - p->mid;
        float fl = (float)ld, fh = (float)hr, sv = (float)sqrt(ld * rd * hr);
        randn_seed(b, p->w_seed, b->noise);
        int left = b->nodes[c].is_left;
        for (size_t q = 0; q < b->n; q++) {
            float lw = w[q] * fl * fh + sv * b->noise[q];
            out[q] = left ? lw : w[q] - lw;
        }
        b->path_node[lv] = c;
        for (int z = lv + 1; z < MAX_DEPTH; z++) b->path_node[z] = -1;
    }
    return k == 1 ? b->root_w : b->path_w + (size_t)(k - 1) * b->n;
}

int sdxl_btree_new(double t0, double t1, uint64_t seed, size_t n, int max_queries, sdxl_btree **out, sdxl_err *e) {
    *out = NULL;
    if (!(t0 < t1) || !isfinite(t0) || !isfinite(t1))
        return sdxl_seterr(e, SDXL_ERR_ARG, "brownian tree: need t0 < t1, got %g, %g", t0, t1);
    if (n == 0 || n > ((size_t)1 << 30) / MAX_DEPTH)
        return sdxl_seterr(e, SDXL_ERR_ARG, "brownian tree: sample size %zu out of range", n);
    if (max_queries < 1 || max_queries > 100000)
        return sdxl_seterr(e, SDXL_ERR_ARG, "brownian tree: max_queries %d out of range", max_queries);
    sdxl_btree *b = calloc(1, sizeof *b);
    if (!b) return sdxl_seterr(e, SDXL_ERR_NOMEM, "brownian tree: out of memory");
    b->n = n;
    b->entropy[0] = (uint32_t)seed, b->entropy[1] = (uint32_t)(seed >> 32);
    b->n_entropy = seed >> 32 ? 2 : 1;
    b->cap = 1 + 4 * MAX_DEPTH * max_queries;
    b->found_cap = 4 * MAX_DEPTH;
    b->nodes = malloc((size_t)b->cap * sizeof *b->nodes);
    b->found = malloc((size_t)b->found_cap * sizeof *b->found);
    b->root_w = malloc(n * sizeof(float));
    b->path_w = malloc((size_t)MAX_DEPTH * n * sizeof(float));
    b->noise = malloc(n * sizeof(float));
    b->acc = malloc(n * sizeof(float));
    if (!b->nodes || !b->found || !b->root_w || !b->path_w || !b->noise || !b->acc) {
        sdxl_btree_free(b);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "brownian tree: cannot allocate %d nodes and %d x %zu floats", b->cap,
                           MAX_DEPTH + 3, n);
    }
    for (int i = 0; i < MAX_DEPTH; i++) b->path_node[i] = -1;
    add_node(b, t0, t1, -1, 0);
    /* the root: SeedSequence(entropy, pool 24).generate_state(3) = W seed, H seed, Levy-area seed */
    uint32_t st[3];
    sdxl_seedseq_state(b->entropy, b->n_entropy, NULL, 0, POOL, st, 3);
    randn_seed(b, st[0], b->root_w);
    float sc = (float)sqrt(t1 - t0);
    for (size_t q = 0; q < n; q++) b->root_w[q] = b->root_w[q] * sc;
    *out = b;
    return SDXL_OK;
}

void sdxl_btree_free(sdxl_btree *b) {
    if (!b) return;
    free(b->nodes), free(b->found), free(b->root_w), free(b->path_w), free(b->noise), free(b->acc);
    free(b);
}

int sdxl_btree_increment(sdxl_btree *b, double ta, double tb, float *out, sdxl_err *e) {
    const node *root = &b->nodes[0];
    if (ta < root->start) ta = root->start;
    if (tb < root->start) tb = root->start;
    if (ta > root->end) ta = root->end;
    if (tb > root->end) tb = root->end;
    if (ta > tb) return sdxl_seterr(e, SDXL_ERR_ARG, "brownian tree: query [%g, %g] is reversed", ta, tb);
    ta = round6(ta), tb = round6(tb);
    if (ta == tb) {
        memset(out, 0, b->n * sizeof(float));
        return SDXL_OK;
    }
    b->n_found = 0;
    if (loc(b, 0, ta, tb))
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "brownian tree: node storage or depth exhausted at [%g, %g]", ta, tb);
    for (int f = 0; f < b->n_found; f++) {
        const float *w = increment(b, b->found[f]);
        if (f == 0)
            memcpy(out, w, b->n * sizeof(float));
        else
            for (size_t q = 0; q < b->n; q++) out[q] = out[q] + w[q];
    }
    return SDXL_OK;
}

int sdxl_btree_noise(void *tree, float *out, size_t n, double sigma, double sigma_next, sdxl_err *e) {
    sdxl_btree *b = tree;
    if (n != b->n) return sdxl_seterr(e, SDXL_ERR_ARG, "brownian tree: asked for %zu values, built for %zu", n, b->n);
    float a = (float)sigma, c = (float)sigma_next, lo = a < c ? a : c, hi = a < c ? c : a;
    int r = sdxl_btree_increment(b, lo, hi, out, e);
    if (r) return r;
    float sign = a < c ? 1.0f : -1.0f, d = sqrtf(fabsf(c - a));
    for (size_t q = 0; q < n; q++) out[q] = out[q] * sign / d;
    return SDXL_OK;
}

int sdxl_btree_for_run(const sdxl_sampler *s, uint64_t seed, size_t n, sdxl_btree **out, sdxl_err *e) {
    *out = NULL;
    const sdxl_ksampler *k = sdxl_sampler_ksampler(s);
    if (!k) return SDXL_OK;
    const sdxl_sampler_config *c = sdxl_ksampler_config(k);
    int sde = c->sampler == SDXL_SAMPLER_DPMPP_SDE || c->sampler == SDXL_SAMPLER_DPMPP_2M_SDE ||
              c->sampler == SDXL_SAMPLER_DPMPP_2M_SDE_HEUN || c->sampler == SDXL_SAMPLER_DPMPP_3M_SDE;
    if (!sde || !sdxl_sampler_config_draws_noise(c)) return SDXL_OK;
    int n_sig = 0;
    const float *sg = sdxl_ksampler_sigmas(k, &n_sig);
    float lo = 0, hi = 0;
    for (int i = 0; i < n_sig; i++) {
        if (sg[i] > 0 && (lo == 0 || sg[i] < lo)) lo = sg[i];
        if (sg[i] > hi) hi = sg[i];
    }
    if (!(lo > 0) || !(hi > lo)) return SDXL_OK;
    return sdxl_btree_new(lo, hi, seed, n, 2 * n_sig + 4, out, e);
}
