/* LoRA / LyCORIS merging; see lora.h and docs/lora.md for every delta formula and its source. */
#include "adapters/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <immintrin.h>
#include <oneapi/dnnl/dnnl.h>

#include "base/cpu.h"
#include "base/mem.h"
#include "base/sha256.h"
#include "tensor/tensor.h"

#define MAX_RANK 65536
#define UNMATCHED_REFUSE_FRAC 0.10 /* refuse a file when more of its modules than this match nothing */

/* ---- files and modules ------------------------------------------------------------------------- */

/* Factor slots of a module, by key suffix. */
enum {
    F_DOWN, F_UP, F_MID, F_ALPHA, F_DORA, F_MAG,
    F_H1A, F_H1B, F_H2A, F_H2B, F_HT1, F_HT2,
    F_K1, F_K1A, F_K1B, F_K2, F_K2A, F_K2B, F_KT2,
    F_DIFF, F_DIFFB, F_WNORM, F_BNORM,
    F_COUNT
};

static const struct {
    const char *suffix;
    int slot;
} SUFFIXES[] = {
    {".lora_down.weight", F_DOWN}, {".lora_up.weight", F_UP}, {".lora_mid.weight", F_MID},
    {".lora_A.weight", F_DOWN}, {".lora_B.weight", F_UP}, {".lora.down.weight", F_DOWN}, {".lora.up.weight", F_UP},
    {".lora_linear_layer.down.weight", F_DOWN}, {".lora_linear_layer.up.weight", F_UP},
    {"_lora.down.weight", F_DOWN}, {"_lora.up.weight", F_UP}, /* diffusers attention processors */
    {".alpha", F_ALPHA}, {".dora_scale", F_DORA}, {".lora_magnitude_vector", F_MAG},
    {".hada_w1_a", F_H1A}, {".hada_w1_b", F_H1B}, {".hada_w2_a", F_H2A}, {".hada_w2_b", F_H2B},
    {".hada_t1", F_HT1}, {".hada_t2", F_HT2},
    {".lokr_w1", F_K1}, {".lokr_w1_a", F_K1A}, {".lokr_w1_b", F_K1B},
    {".lokr_w2", F_K2}, {".lokr_w2_a", F_K2A}, {".lokr_w2_b", F_K2B}, {".lokr_t2", F_KT2},
    {".diff", F_DIFF}, {".diff_b", F_DIFFB}, {".w_norm", F_WNORM}, {".b_norm", F_BNORM},
};
#define N_SUFFIXES (sizeof SUFFIXES / sizeof SUFFIXES[0])

static const char *const SLOT_NAME[F_COUNT] = {
    "lora_down", "lora_up", "lora_mid", "alpha", "dora_scale", "lora_magnitude_vector",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b", "w_norm", "b_norm"};

typedef struct lmod {
    char *key;       /* module key as in the file, e.g. "lora_unet_middle_block_1_proj_in" */
    int net;         /* sdxl_lora_net, or -1 */
    const char *name; /* into key: the name inside the network (underscored or dotted) */
    int underscored;
    sdxl_lora_kind kind;
    const sdxl_st_tensor *t[F_COUNT];
    double alpha; /* NAN when absent */
    int rank;     /* low-rank dimension (0: none) */
    int proc;     /* named as diffusers' attention processors ("attn1.processor.to_q_lora") */
} lmod;

struct sdxl_lora_file {
    char *path;
    sdxl_st_file *st;
    lmod *mods;
    int n_mods;
    int n_unknown_keys;
    char first_unknown[160];
    int sd1_te;   /* "lora_te_" keys: an SD 1.x/2.x text encoder */
    int kohya, peft, lyco;
    char hash[65];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

const char *sdxl_lora_kind_name(sdxl_lora_kind k) {
    static const char *const n[] = {"lora", "loha", "lokr", "full", "norm"};
    return (unsigned)k < SDXL_LORA_KINDS ? n[k] : "?";
}

const char *sdxl_lora_net_name(sdxl_lora_net n) {
    static const char *const s[] = {"unet", "te1", "te2"};
    return (unsigned)n < SDXL_LORA_NETS ? s[n] : "other";
}

const sdxl_st_file *sdxl_lora_st(const sdxl_lora_file *f) { return f->st; }
const char *sdxl_lora_path(const sdxl_lora_file *f) { return f->path; }

void sdxl_lora_close(sdxl_lora_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_mods; i++) free(f->mods[i].key);
    free(f->mods);
    sdxl_st_close(f->st);
    free(f->path);
    free(f);
}

static int is_float(sdxl_st_dtype d) {
    return d == SDXL_ST_F32 || d == SDXL_ST_F16 || d == SDXL_ST_BF16 || d == SDXL_ST_F64;
}

/* Whether any of the lanes (w bits each, in eight-byte words) of n bytes at p has every bit of
 * m set: a float whose exponent is all ones, non-finite. Four f16 or two f32 values per step. */
static int any_lane_masked(const uint8_t *p, uint64_t n, int w, uint64_t m) {
    const uint64_t one = w == 16 ? 0x0001000100010001u : w == 32 ? 0x0000000100000001u : 1u;
    const uint64_t M = m * one, hi = one << (w - 1);
    uint64_t acc = 0, i = 0, v, t;
    for (; i + 8 <= n; i += 8) {
        memcpy(&v, p + i, 8);
        t = (v & M) ^ M;            /* a lane is zero where the value is non-finite; bit w-1 is clear */
        acc |= (t - one) & ~t & hi; /* nonzero iff some lane is zero */
    }
    if (i < n) {
        v = 0;
        memcpy(&v, p + i, (size_t)(n - i)); /* whole lanes; the missing ones read as zero: finite */
        t = (v & M) ^ M;
        acc |= (t - one) & ~t & hi;
    }
    return acc != 0;
}

/* Whether any of n values of dtype d at p is non-finite (its exponent all ones). */
static int span_nonfinite(const uint8_t *p, uint64_t n, sdxl_st_dtype d) {
    switch (d) {
    case SDXL_ST_F16: return any_lane_masked(p, 2 * n, 16, 0x7c00);
    case SDXL_ST_BF16: return any_lane_masked(p, 2 * n, 16, 0x7f80);
    case SDXL_ST_F32: return any_lane_masked(p, 4 * n, 32, 0x7f800000u);
    case SDXL_ST_F64: return any_lane_masked(p, 8 * n, 64, 0x7ff0000000000000u);
    default: return 0;
    }
}

/* First non-finite element index, or -1 (float dtypes; -1 for any other). */
static int64_t first_nonfinite(const sdxl_st_tensor *t) {
    const uint8_t *p = t->data;
    const size_t es = sdxl_st_dtype_size(t->dtype);
    const uint64_t chunk = 4096;
    for (uint64_t i0 = 0; i0 < t->numel; i0 += chunk) {
        uint64_t n = t->numel - i0 < chunk ? t->numel - i0 : chunk;
        if (!span_nonfinite(p + i0 * es, n, t->dtype)) continue;
        for (uint64_t i = i0; i < i0 + n; i++)
            if (span_nonfinite(p + i * es, 1, t->dtype)) return (int64_t)i;
    }
    return -1;
}

/* Where the module's name inside a network starts, and which network (-1: none of SDXL's). */
static void classify(lmod *m, sdxl_lora_file *f) {
    const char *k = m->key;
    if (!strncmp(k, "base_model.model.", 17)) k += 17;
    static const struct {
        const char *pre;
        int net, us;
    } P[] = {
        {"lora_unet_", SDXL_LORA_UNET, 1}, {"lora_te1_", SDXL_LORA_TE1, 1}, {"lora_te2_", SDXL_LORA_TE2, 1},
        {"unet.", SDXL_LORA_UNET, 0},      {"text_encoder_2.", SDXL_LORA_TE2, 0}, {"text_encoder.", SDXL_LORA_TE1, 0},
    };
    m->net = -1;
    m->name = k;
    for (size_t i = 0; i < sizeof P / sizeof P[0]; i++) {
        size_t n = strlen(P[i].pre);
        if (!strncmp(k, P[i].pre, n)) {
            m->net = P[i].net;
            m->name = k + n;
            m->underscored = P[i].us;
            if (P[i].us) f->kohya = 1;
            else f->peft = 1;
            return;
        }
    }
    if (!strncmp(k, "lora_te_", 8)) f->sd1_te = 1;
}

static int64_t numel_of(const sdxl_st_tensor *t) { return t ? (int64_t)t->numel : 0; }

/* Model-independent checks of one module's factors; sets kind, rank, alpha. */
/* bad[slot]: the slot's first non-finite element, or -1 (first_nonfinite, computed beforehand). */
static int check_module(sdxl_lora_file *f, lmod *m, const int64_t *bad, sdxl_err *e) {
    const sdxl_st_tensor *const *t = m->t;
    const char *P = f->path, *K = m->key;
    int lora = t[F_DOWN] || t[F_UP] || t[F_MID], loha = 0, lokr = 0, full = t[F_DIFF] || t[F_DIFFB];
    int norm = t[F_WNORM] || t[F_BNORM];
    for (int s = F_H1A; s <= F_HT2; s++) loha |= t[s] != NULL;
    for (int s = F_K1; s <= F_KT2; s++) lokr |= t[s] != NULL;
    if (lora + loha + lokr + full + norm != 1)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s' %s", P, K,
                           lora + loha + lokr + full + norm ? "mixes factors of several network kinds"
                                                            : "has only an alpha or scale, no factors");
    m->kind = lora ? SDXL_LORA_KIND_LORA : loha ? SDXL_LORA_KIND_LOHA : lokr ? SDXL_LORA_KIND_LOKR
              : full ? SDXL_LORA_KIND_FULL : SDXL_LORA_KIND_NORM;
    for (int s = 0; s < F_COUNT; s++) {
        if (!t[s]) continue;
        if (!is_float(t[s]->dtype))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: tensor '%s' has dtype %s, expected a float type", P,
                               t[s]->name, sdxl_st_dtype_name(t[s]->dtype));
        if (bad[s] >= 0)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: tensor '%s' holds a non-finite value (NaN or Inf) at "
                               "element %lld", P, t[s]->name, (long long)bad[s]);
    }
    m->alpha = NAN;
    if (t[F_ALPHA]) {
        if (t[F_ALPHA]->numel != 1)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: '%s' must be a scalar", P, t[F_ALPHA]->name);
        float a;
        sdxl_err e2 = {0};
        sdxl_st_to_f32(f->st, t[F_ALPHA], &a, &e2);
        m->alpha = a;
    }
#define NEED(slot)                                                                                              \
    if (!t[slot])                                                                                               \
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s' lacks '%s'", P, K, SLOT_NAME[slot]);
#define RANK_EQ(a, b, what)                                                                                     \
    if ((a) != (b))                                                                                             \
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s': mismatched rank, %s (%lld vs %lld)", P, K,  \
                           what, (long long)(a), (long long)(b));
    switch (m->kind) {
    case SDXL_LORA_KIND_LORA:
        NEED(F_DOWN);
        NEED(F_UP);
        if ((t[F_DOWN]->ndim != 2 && t[F_DOWN]->ndim != 4) || (t[F_UP]->ndim != 2 && t[F_UP]->ndim != 4))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s': lora_down and lora_up must be 2-D or 4-D",
                               P, K);
        m->rank = (int)t[F_DOWN]->shape[0];
        if (t[F_MID]) {
            if (t[F_MID]->ndim != 4)
                return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s': lora_mid must be 4-D", P, K);
            RANK_EQ(t[F_MID]->shape[1], t[F_DOWN]->shape[0], "lora_mid columns vs lora_down rows");
            RANK_EQ(t[F_UP]->shape[1], t[F_MID]->shape[0], "lora_up columns vs lora_mid rows");
        } else {
            RANK_EQ(t[F_UP]->shape[1], t[F_DOWN]->shape[0], "lora_up columns vs lora_down rows");
        }
        if (t[F_UP]->ndim == 4 && t[F_UP]->shape[2] * t[F_UP]->shape[3] != 1)
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s': lora_up must be 1x1", P, K);
        break;
    case SDXL_LORA_KIND_LOHA:
        NEED(F_H1A);
        NEED(F_H1B);
        NEED(F_H2A);
        NEED(F_H2B);
        for (int s = F_H1A; s <= F_H2B; s++)
            if (t[s]->ndim != 2)
                return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: '%s' must be 2-D", P, t[s]->name);
        if (!!t[F_HT1] != !!t[F_HT2])
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s' has one of hada_t1/hada_t2", P, K);
        m->rank = (int)t[F_H1B]->shape[0];
        if (t[F_HT1]) { /* Tucker: w_a [r, in], w_b [r, out], t [r, r, kh, kw] */
            RANK_EQ(t[F_H1A]->shape[0], t[F_HT1]->shape[1], "hada_w1_a rows vs hada_t1");
            RANK_EQ(t[F_H1B]->shape[0], t[F_HT1]->shape[0], "hada_w1_b rows vs hada_t1");
            RANK_EQ(t[F_H2A]->shape[0], t[F_HT2]->shape[1], "hada_w2_a rows vs hada_t2");
            RANK_EQ(t[F_H2B]->shape[0], t[F_HT2]->shape[0], "hada_w2_b rows vs hada_t2");
        } else {
            RANK_EQ(t[F_H1A]->shape[1], t[F_H1B]->shape[0], "hada_w1_a columns vs hada_w1_b rows");
            RANK_EQ(t[F_H2A]->shape[1], t[F_H2B]->shape[0], "hada_w2_a columns vs hada_w2_b rows");
        }
        break;
    case SDXL_LORA_KIND_LOKR:
        if (!t[F_K1] && !(t[F_K1A] && t[F_K1B]))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s' needs lokr_w1 or lokr_w1_a + lokr_w1_b", P, K);
        if (!t[F_K2] && !(t[F_K2A] && t[F_K2B]))
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s' needs lokr_w2 or lokr_w2_a + lokr_w2_b", P, K);
        if (!t[F_K1]) {
            RANK_EQ(t[F_K1A]->shape[1], t[F_K1B]->shape[0], "lokr_w1_a columns vs lokr_w1_b rows");
            m->rank = (int)t[F_K1B]->shape[0];
        }
        if (!t[F_K2]) {
            if (t[F_KT2]) {
                RANK_EQ(t[F_K2A]->shape[0], t[F_KT2]->shape[1], "lokr_w2_a rows vs lokr_t2");
                RANK_EQ(t[F_K2B]->shape[0], t[F_KT2]->shape[0], "lokr_w2_b rows vs lokr_t2");
            } else {
                RANK_EQ(t[F_K2A]->shape[1], t[F_K2B]->shape[0], "lokr_w2_a columns vs lokr_w2_b rows");
            }
            m->rank = (int)t[F_K2B]->shape[0];
        }
        break;
    default: break;
    }
    if (m->rank < 0 || m->rank > MAX_RANK)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s': rank %d out of range", P, K, m->rank);
    if (m->kind == SDXL_LORA_KIND_LORA && m->rank == 0)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s' has rank 0", P, K);
    return SDXL_OK;
#undef NEED
#undef RANK_EQ
}

static int cmp_mod(const void *a, const void *b) { return strcmp(((const lmod *)a)->key, ((const lmod *)b)->key); }

static int group_modules(sdxl_lora_file *f, sdxl_lora_file **out, sdxl_err *e);

/* diffusers' attention-processor keys (save_attn_procs; the old text-encoder form) renamed to
 * the modules they patch, as diffusers' loaders map them: "X.attn1.processor.to_q" (from
 * "to_q_lora") -> "unet.X.attn1.to_q", to_out -> to_out.0; in a text encoder "self_attn.to_q" ->
 * "self_attn.q_proj", to_out / to_o -> out_proj. Returns nonzero when out of memory. */
static int proc_key(lmod *m) {
    static const char *const UNET_ROOTS[] = {"down_blocks.", "mid_block.", "up_blocks."};
    char buf[512];
    const char *k = m->key;
    int te = strstr(k, "text_encoder") != NULL, root = 0;
    for (int i = 0; i < 3; i++) root |= !strncmp(k, UNET_ROOTS[i], strlen(UNET_ROOTS[i]));
    size_t n = (size_t)snprintf(buf, sizeof buf, "%s", root ? "unet." : "");
    for (const char *p = k; *p && n + 1 < sizeof buf;) {
        if (!strncmp(p, ".processor.", 11)) {
            p += 10; /* keep the second dot */
            continue;
        }
        buf[n++] = *p++;
    }
    buf[n < sizeof buf ? n : sizeof buf - 1] = 0;
    char *last = strrchr(buf, '.');
    const char *leaf = last ? last + 1 : buf;
    static const char *const TE_MAP[][2] = {{"to_q", "q_proj"}, {"to_k", "k_proj"}, {"to_v", "v_proj"},
                                            {"to_out", "out_proj"}, {"to_o", "out_proj"}};
    char out[600];
    size_t stem = (size_t)(leaf - buf);
    snprintf(out, sizeof out, "%.*s%s", (int)stem, buf, leaf);
    if (te) {
        for (size_t i = 0; i < sizeof TE_MAP / sizeof TE_MAP[0]; i++)
            if (!strcmp(leaf, TE_MAP[i][0])) snprintf(out, sizeof out, "%.*s%s", (int)stem, buf, TE_MAP[i][1]);
    } else if (!strcmp(leaf, "to_out")) {
        snprintf(out, sizeof out, "%s.0", buf);
    }
    char *nk = strdup(out);
    if (!nk) return 1;
    free(m->key);
    m->key = nk;
    return 0;
}

int sdxl_lora_open(const char *path, sdxl_lora_file **out, sdxl_err *e) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return sdxl_seterr(e, SDXL_ERR_IO, "LoRA %s: cannot stat the file", path);
    sdxl_lora_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA %s: out of memory", path);
    }
    f->dev = sb.st_dev;
    f->ino = sb.st_ino;
    f->size = sb.st_size;
    f->mtime = sb.st_mtim;
    int st = sdxl_st_open(path, &f->st, e);
    if (st) {
        sdxl_lora_close(f);
        return st;
    }
    return group_modules(f, out, e);
}

int sdxl_lora_open_memory(const void *buf, size_t len, const char *what, sdxl_lora_file **out, sdxl_err *e) {
    *out = NULL;
    sdxl_lora_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(what))) {
        free(f);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA %s: out of memory", what);
    }
    int st = sdxl_st_open_memory(buf, len, what, &f->st, e);
    if (st) {
        sdxl_lora_close(f);
        return st;
    }
    return group_modules(f, out, e);
}

/* Groups the tensors of an opened file into modules and checks each; frees f on error. */
static int group_modules(sdxl_lora_file *f, sdxl_lora_file **out, sdxl_err *e) {
    const char *path = f->path;
    int st;
    size_t n = sdxl_st_count(f->st);
    f->mods = calloc(n ? n : 1, sizeof *f->mods);
    if (!f->mods) {
        sdxl_lora_close(f);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA %s: out of memory", path);
    }
    /* group: module key = tensor name minus its suffix; sorted so lookups bisect */
    for (size_t i = 0; i < n; i++) {
        const sdxl_st_tensor *t = sdxl_st_at(f->st, i);
        size_t len = strlen(t->name);
        int slot = -1;
        size_t klen = 0;
        for (size_t s = 0; s < N_SUFFIXES; s++) {
            size_t sl = strlen(SUFFIXES[s].suffix);
            if (len > sl && !strcmp(t->name + len - sl, SUFFIXES[s].suffix) && len - sl > 0) {
                slot = SUFFIXES[s].slot;
                klen = len - sl;
                break;
            }
        }
        if (slot < 0) {
            if (!f->n_unknown_keys++) snprintf(f->first_unknown, sizeof f->first_unknown, "%s", t->name);
            continue;
        }
        lmod *m = NULL;
        for (int j = f->n_mods - 1; j >= 0 && j >= f->n_mods - 64; j--)
            if (strlen(f->mods[j].key) == klen && !strncmp(f->mods[j].key, t->name, klen)) m = &f->mods[j];
        if (!m) {
            for (int j = 0; j < f->n_mods - 64; j++)
                if (strlen(f->mods[j].key) == klen && !strncmp(f->mods[j].key, t->name, klen)) m = &f->mods[j];
        }
        if (!m) {
            m = &f->mods[f->n_mods];
            m->key = strndup(t->name, klen);
            if (!m->key) {
                sdxl_lora_close(f);
                return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA %s: out of memory", path);
            }
            f->n_mods++;
        }
        if (!strncmp(t->name + klen, "_lora.", 6)) m->proc = 1;
        if (m->t[slot]) {
            sdxl_lora_close(f);
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%.*s' has two '%s' tensors", path, (int)klen,
                               t->name, SLOT_NAME[slot]);
        }
        m->t[slot] = t;
    }
    if (f->n_mods == 0) {
        st = sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: no LoRA or LyCORIS tensor among %zu (first: '%s')", path, n,
                         f->first_unknown);
        sdxl_lora_close(f);
        return st;
    }
    for (int i = 0; i < f->n_mods; i++)
        if (f->mods[i].proc && proc_key(&f->mods[i])) {
            sdxl_lora_close(f);
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA %s: out of memory", path);
        }
    qsort(f->mods, (size_t)f->n_mods, sizeof *f->mods, cmp_mod);
    /* every factor read once for non-finite values, across the threads: each apply opens its
     * files, and the scan is most of an open */
    int64_t nslot = (int64_t)f->n_mods * F_COUNT, *bad = malloc((size_t)nslot * sizeof *bad);
    if (!bad) {
        sdxl_lora_close(f);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA %s: out of memory", path);
    }
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < nslot; i++) {
        const sdxl_st_tensor *t = f->mods[i / F_COUNT].t[i % F_COUNT];
        bad[i] = t && is_float(t->dtype) ? first_nonfinite(t) : -1;
    }
    for (int i = 0; i < f->n_mods; i++) {
        classify(&f->mods[i], f);
        if ((st = check_module(f, &f->mods[i], bad + (int64_t)i * F_COUNT, e))) {
            free(bad);
            sdxl_lora_close(f);
            return st;
        }
        if (f->mods[i].kind != SDXL_LORA_KIND_LORA) f->lyco = 1;
    }
    free(bad);
    *out = f;
    return SDXL_OK;
}

void sdxl_lora_get_info(const sdxl_lora_file *f, sdxl_lora_info *i) {
    memset(i, 0, sizeof *i);
    i->format = f->kohya && f->peft ? "mixed kohya/diffusers"
                : f->kohya          ? (f->lyco ? "kohya/LyCORIS" : "kohya")
                : f->peft           ? (f->lyco ? "diffusers/LyCORIS" : "diffusers/PEFT")
                : f->sd1_te         ? "kohya (SD 1.x/2.x naming)"
                                    : "unknown naming";
    i->n_modules = f->n_mods;
    i->alpha_min = i->alpha_max = NAN;
    for (int k = 0; k < f->n_mods; k++) {
        const lmod *m = &f->mods[k];
        if (m->net >= 0) i->per_net[m->net]++;
        else i->n_other++;
        i->per_kind[m->kind]++;
        if (m->rank > 0) {
            if (!i->rank_min || m->rank < i->rank_min) i->rank_min = m->rank;
            if (m->rank > i->rank_max) i->rank_max = m->rank;
        }
        if (!isnan(m->alpha)) {
            if (!i->n_alpha || m->alpha < i->alpha_min) i->alpha_min = m->alpha;
            if (!i->n_alpha || m->alpha > i->alpha_max) i->alpha_max = m->alpha;
            i->n_alpha++;
        }
        if (m->t[F_DORA] || m->t[F_MAG]) i->n_dora++;
    }
}

int sdxl_lora_hash_file(const char *path, char out[65]) {
    out[0] = 0;
    FILE *fp = fopen(path, "rb");
    uint8_t hdr[8];
    if (!fp) return SDXL_ERR_IO;
    int st = SDXL_ERR_FORMAT;
    uint64_t n = 0;
    uint8_t *buf = NULL;
    if (fread(hdr, 1, 8, fp) != 8) goto out;
    for (int i = 7; i >= 0; i--) n = n << 8 | hdr[i];
    if (n > (uint64_t)1 << 40 || fseeko(fp, (off_t)(8 + n), SEEK_SET) != 0) goto out;
    sdxl_sha256 s;
    sdxl_sha256_init(&s);
    static const size_t BLK = 1 << 20;
    if (!(buf = malloc(BLK))) {
        st = SDXL_ERR_NOMEM;
        goto out;
    }
    size_t k;
    while ((k = fread(buf, 1, BLK, fp)) > 0) sdxl_sha256_update(&s, buf, k);
    sdxl_sha256_hex(&s, out);
    st = SDXL_OK;
out:
    free(buf);
    fclose(fp);
    return st;
}

const char *sdxl_lora_hash(sdxl_lora_file *f) {
    if (!f->hash[0]) sdxl_lora_hash_file(f->path, f->hash);
    return f->hash;
}

/* ---- merge state ------------------------------------------------------------------------------- */

typedef struct contrib {
    sdxl_lora_file *f;
    int mod;
    float mult;
} contrib;

typedef struct layer {
    sdxl_lref r;
    int net;
    /* kept layers (linear, conv on the CPU, within keep_max): orig is the loaded weight buffer,
     * never written again; alt the merged copy; on_alt says which one the layer points at. */
    void *orig, *alt;
    float *orig_b; /* the loaded bias, or NULL */
    int on_alt;
    sdxl_wlayout lay;
    contrib *cur; /* merged now */
    int n_cur, cap_cur;
    contrib *nxt; /* being planned */
    int n_nxt, cap_nxt;
} layer;

typedef struct name_ent {
    char *key; /* "<net digit><name>" */
    int layer, part;
} name_ent;

typedef struct applied {
    sdxl_lora_file *f;
    int *bind; /* per module: layer * 4 + part, or -1 */
} applied;

struct sdxl_lora_state {
    sdxl_lora_nets nets;
    layer *layers;
    int n_layers, cap_layers;
    name_ent *map;
    size_t map_cap, map_n;
    applied *cur;
    int n_cur;
    float *w, *b, *t1, *t2, *t3; /* one layer's scratch */
    size_t w_cap, t_cap;
    float *lr_buf, *lr_up; /* packed merge: a layer's stacked factors, one up factor */
    size_t lr_cap, lr_up_cap;
    int64_t *offc; /* packed merge: a layer's column offsets */
    size_t offc_cap;
    size_t kept_bytes; /* alt buffers and bias copies of kept layers */
    int n_packed;      /* layers merged in the packed layout by the current apply */
    int broken;        /* in place: a merge failed part way, so the weights are no longer known */
};

static uint64_t fnv(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int map_put(sdxl_lora_state *s, int net, const char *name, int layer, int part) {
    if (!*name) return SDXL_OK;
    char key[SDXL_LREF_NAME + 2];
    snprintf(key, sizeof key, "%d%s", net, name);
    if (2 * (s->map_n + 1) > s->map_cap) {
        size_t nc = s->map_cap ? 2 * s->map_cap : 8192;
        name_ent *nm = calloc(nc, sizeof *nm);
        if (!nm) return SDXL_ERR_NOMEM;
        for (size_t i = 0; i < s->map_cap; i++) {
            if (!s->map[i].key) continue;
            size_t h = fnv(s->map[i].key) & (nc - 1);
            while (nm[h].key) h = (h + 1) & (nc - 1);
            nm[h] = s->map[i];
        }
        free(s->map);
        s->map = nm;
        s->map_cap = nc;
    }
    size_t h = fnv(key) & (s->map_cap - 1);
    while (s->map[h].key) {
        if (!strcmp(s->map[h].key, key)) return SDXL_OK;
        h = (h + 1) & (s->map_cap - 1);
    }
    if (!(s->map[h].key = strdup(key))) return SDXL_ERR_NOMEM;
    s->map[h].layer = layer;
    s->map[h].part = part;
    s->map_n++;
    return SDXL_OK;
}

static const name_ent *map_get(const sdxl_lora_state *s, int net, const char *name) {
    char key[SDXL_LREF_NAME + 64];
    if (snprintf(key, sizeof key, "%d%s", net, name) >= (int)sizeof key || !s->map_cap) return NULL;
    size_t h = fnv(key) & (s->map_cap - 1);
    while (s->map[h].key) {
        if (!strcmp(s->map[h].key, key)) return &s->map[h];
        h = (h + 1) & (s->map_cap - 1);
    }
    return NULL;
}

typedef struct collect {
    sdxl_lora_state *s;
    int net;
} collect;

static int on_layer(void *user, const sdxl_lref *r, sdxl_err *e) {
    collect *c = user;
    sdxl_lora_state *s = c->s;
    if (s->n_layers == s->cap_layers) {
        int nc = s->cap_layers ? 2 * s->cap_layers : 1024;
        layer *nl = realloc(s->layers, (size_t)nc * sizeof *nl);
        if (!nl) return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory listing layers");
        s->layers = nl;
        s->cap_layers = nc;
    }
    layer *L = &s->layers[s->n_layers];
    memset(L, 0, sizeof *L);
    L->r = *r;
    L->net = c->net;
    for (int p = 0; p < r->nparts; p++) {
        const char *nm[2] = {r->part[p].name, r->part[p].alt};
        for (int k = 0; k < 2; k++) {
            char us[SDXL_LREF_NAME];
            snprintf(us, sizeof us, "%s", nm[k]);
            for (char *q = us; *q; q++)
                if (*q == '.') *q = '_';
            if (map_put(s, c->net, nm[k], s->n_layers, p) || map_put(s, c->net, us, s->n_layers, p))
                return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory indexing layer names");
        }
    }
    s->n_layers++;
    return SDXL_OK;
}

static void applied_free(applied *a) {
    sdxl_lora_close(a->f);
    free(a->bind);
}

void sdxl_lora_state_free(sdxl_lora_state *s) {
    if (!s) return;
    for (int i = 0; i < s->n_layers; i++) {
        layer *L = &s->layers[i];
        free(L->cur);
        free(L->nxt);
        if (!s->nets.in_place) free(L->on_alt ? L->orig : L->alt); /* the network keeps the one it points at */
        free(L->orig_b);
        sdxl_wlayout_free(&L->lay);
    }
    free(s->layers);
    for (size_t i = 0; i < s->map_cap; i++) free(s->map[i].key);
    free(s->map);
    for (int i = 0; i < s->n_cur; i++) applied_free(&s->cur[i]);
    free(s->cur);
    free(s->w);
    free(s->b);
    free(s->t1);
    free(s->t2);
    free(s->t3);
    free(s->lr_buf);
    free(s->lr_up);
    free(s->offc);
    free(s);
}

int sdxl_lora_state_new(const sdxl_lora_nets *n, sdxl_lora_state **out, sdxl_err *e) {
    *out = NULL;
    sdxl_lora_state *s = calloc(1, sizeof *s);
    if (!s) return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory");
    s->nets = *n;
    int st = SDXL_OK;
    collect c = {s, SDXL_LORA_UNET};
    if (n->unet) st = sdxl_unet_layers(n->unet, n->unet_ck, on_layer, &c, e);
    for (int k = 0; k < 2 && !st; k++) {
        if (!n->te[k]) continue;
        c.net = SDXL_LORA_TE1 + k;
        st = sdxl_clip_layers_ckpt(n->te[k], n->te_ck, k ? SDXL_PART_TE2 : SDXL_PART_TE1, on_layer, &c, e);
    }
    if (st) {
        sdxl_lora_state_free(s);
        return st;
    }
    *out = s;
    return SDXL_OK;
}

int sdxl_lora_applied(const sdxl_lora_state *s) { return s->n_cur; }
sdxl_lora_file *sdxl_lora_applied_at(const sdxl_lora_state *s, int i) {
    return i >= 0 && i < s->n_cur ? s->cur[i].f : NULL;
}

/* ---- binding: a module to its layer part, shapes checked --------------------------------------- */

static void fmt_shape(char *b, size_t n, const sdxl_st_tensor *t) {
    size_t k = (size_t)snprintf(b, n, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(b + k, n - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (k < n) snprintf(b + k, n - k, "]");
}

static int shape_err(const sdxl_lora_file *f, const lmod *m, int slot, const layer *L, const char *rule, sdxl_err *e) {
    char sh[96];
    fmt_shape(sh, sizeof sh, m->t[slot]);
    return sdxl_seterr(e, SDXL_ERR_FORMAT,
                       "LoRA %s: module '%s': %s is %s but layer '%s' is [%lld, %lld, %d, %d] (%s)", f->path, m->key,
                       SLOT_NAME[slot], sh, L->r.part[0].name, (long long)L->r.out_each, (long long)L->r.in, L->r.kh,
                       L->r.kw, rule);
}

/* The delta's shape against the layer part: [out_each, in, kh, kw] (norm: [out_each]). */
static int check_bind(const sdxl_lora_file *f, const lmod *m, const layer *L, sdxl_err *e) {
    const sdxl_lref *r = &L->r;
    const sdxl_st_tensor *const *t = m->t;
    int64_t cols = r->kind == SDXL_LREF_NORM ? 1 : r->in * r->kh * r->kw, rows = r->out_each;
    int is_norm = r->kind == SDXL_LREF_NORM;
    if (is_norm != (m->kind == SDXL_LORA_KIND_NORM) && m->kind != SDXL_LORA_KIND_FULL)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "LoRA %s: module '%s' is a %s module but layer '%s' is a %s", f->path,
                           m->key, sdxl_lora_kind_name(m->kind), r->part[0].name, is_norm ? "norm" : "linear/conv");
    switch (m->kind) {
    case SDXL_LORA_KIND_LORA: {
        if (t[F_UP]->shape[0] != rows) return shape_err(f, m, F_UP, L, "output rows differ", e);
        int64_t dk = t[F_MID] ? t[F_MID]->shape[2] * t[F_MID]->shape[3] : 1;
        if (numel_of(t[F_DOWN]) / t[F_DOWN]->shape[0] * dk != cols)
            return shape_err(f, m, F_DOWN, L, "input size differs", e);
        if (t[F_DOWN]->ndim == 4 && !t[F_MID] && r->kind == SDXL_LREF_CONV &&
            (t[F_DOWN]->shape[1] != r->in || t[F_DOWN]->shape[2] != r->kh || t[F_DOWN]->shape[3] != r->kw))
            return shape_err(f, m, F_DOWN, L, "kernel differs", e);
        if (t[F_MID] && (t[F_MID]->shape[2] != r->kh || t[F_MID]->shape[3] != r->kw))
            return shape_err(f, m, F_MID, L, "kernel differs", e);
        break;
    }
    case SDXL_LORA_KIND_LOHA:
        if (t[F_HT1]) {
            if (t[F_H1B]->shape[1] != rows || t[F_H2B]->shape[1] != rows)
                return shape_err(f, m, F_H1B, L, "output rows differ", e);
            if (t[F_H1A]->shape[1] != r->in || t[F_H2A]->shape[1] != r->in || t[F_HT1]->shape[2] != r->kh ||
                t[F_HT1]->shape[3] != r->kw || t[F_HT2]->shape[2] != r->kh || t[F_HT2]->shape[3] != r->kw)
                return shape_err(f, m, F_H1A, L, "input size or kernel differs", e);
        } else {
            if (t[F_H1A]->shape[0] != rows || t[F_H2A]->shape[0] != rows)
                return shape_err(f, m, F_H1A, L, "output rows differ", e);
            if (t[F_H1B]->shape[1] != cols || t[F_H2B]->shape[1] != cols)
                return shape_err(f, m, F_H1B, L, "input size differs", e);
        }
        break;
    case SDXL_LORA_KIND_LOKR: {
        int64_t a = t[F_K1] ? t[F_K1]->shape[0] : t[F_K1A]->shape[0];
        int64_t b = t[F_K1] ? t[F_K1]->shape[1] : t[F_K1B]->shape[1];
        int64_t c, d;
        if (t[F_K2]) {
            c = t[F_K2]->shape[0];
            d = numel_of(t[F_K2]) / c;
        } else if (t[F_KT2]) {
            c = t[F_K2B]->shape[1];
            d = t[F_K2A]->shape[1] * t[F_KT2]->shape[2] * t[F_KT2]->shape[3];
        } else {
            c = t[F_K2A]->shape[0];
            d = t[F_K2B]->shape[1];
        }
        if ((t[F_K1] && t[F_K1]->ndim != 2) || a * c != rows || b * d != cols)
            return shape_err(f, m, t[F_K1] ? F_K1 : F_K1A, L, "Kronecker factors do not tile the layer", e);
        break;
    }
    case SDXL_LORA_KIND_FULL:
        if (t[F_DIFF] && numel_of(t[F_DIFF]) != rows * cols) return shape_err(f, m, F_DIFF, L, "size differs", e);
        if (t[F_DIFFB] && (numel_of(t[F_DIFFB]) != rows || !r->part[0].b))
            return shape_err(f, m, F_DIFFB, L, "the layer has no bias of that size", e);
        break;
    case SDXL_LORA_KIND_NORM:
        if (t[F_WNORM] && numel_of(t[F_WNORM]) != rows) return shape_err(f, m, F_WNORM, L, "size differs", e);
        if (t[F_BNORM] && (numel_of(t[F_BNORM]) != rows || !r->part[0].b))
            return shape_err(f, m, F_BNORM, L, "size differs", e);
        break;
    default: break;
    }
    if (t[F_DORA]) {
        int64_t nd = numel_of(t[F_DORA]);
        if (nd != r->in && nd != rows) return shape_err(f, m, F_DORA, L, "must have in or out values", e);
    }
    if (t[F_MAG] && numel_of(t[F_MAG]) != rows) return shape_err(f, m, F_MAG, L, "must have out values", e);
    return SDXL_OK;
}

/* Matches every module of f to a layer part; lists unmatched ones and refuses files that are
 * not for SDXL. */
static int bind_file(sdxl_lora_state *s, sdxl_lora_file *f, int **out, sdxl_lora_stats *stt, sdxl_err *e) {
    int *bind = malloc((size_t)f->n_mods * sizeof *bind);
    if (!bind) return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory");
    int unmatched = 0, matched = 0;
    char first[3][160] = {{0}};
    for (int i = 0; i < f->n_mods; i++) {
        lmod *m = &f->mods[i];
        bind[i] = -1;
        const name_ent *ne = m->net >= 0 ? map_get(s, m->net, m->name) : NULL;
        if (!ne) {
            if (unmatched < 3) snprintf(first[unmatched], sizeof first[0], "%s", m->key);
            unmatched++;
            continue;
        }
        int st = check_bind(f, m, &s->layers[ne->layer], e);
        if (st) {
            free(bind);
            return st;
        }
        bind[i] = ne->layer * 4 + ne->part;
        matched++;
    }
    if (unmatched > f->n_mods * UNMATCHED_REFUSE_FRAC || matched == 0) {
        free(bind);
        const char *why = f->sd1_te ? " ('lora_te_' keys: a LoRA for SD 1.x/2.x, not SDXL)"
                          : matched == 0 ? " (not a LoRA for this SDXL model: SD 1.x/2.x, SD3 or Flux?)"
                                         : "";
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED,
                           "LoRA %s: %d of %d modules match no layer of this SDXL model%s; first: %s%s%s%s%s", f->path,
                           unmatched, f->n_mods, why, first[0], first[1][0] ? ", " : "", first[1],
                           first[2][0] ? ", " : "", first[2]);
    }
    if (unmatched && !stt->modules_unmatched)
        snprintf(stt->unmatched, sizeof stt->unmatched, "%s: %s%s%s%s%s (%d modules)", f->path, first[0],
                 first[1][0] ? ", " : "", first[1], first[2][0] ? ", " : "", first[2], unmatched);
    stt->modules_unmatched += unmatched;
    *out = bind;
    return SDXL_OK;
}

/* ---- deltas ----------------------------------------------------------------------------------- */

/* Grows *p to n elements of es bytes (contents not kept). */
static int grow(void **p, size_t *cap, size_t n, size_t es) {
    if (n <= *cap) return 0;
    if (n > SIZE_MAX / es) return 1;
    void *q = malloc(n * es);
    if (!q) return 1;
    free(*p);
    *p = q;
    *cap = n;
    return 0;
}

static int reserve(float **p, size_t *cap, size_t n) {
    void *q = *p;
    int r = grow(&q, cap, n, sizeof **p);
    *p = q;
    return r;
}

static int reserve_i64(int64_t **p, size_t *cap, size_t n) {
    void *q = *p;
    int r = grow(&q, cap, n, sizeof **p);
    *p = q;
    return r;
}

static float *factor(const sdxl_lora_file *f, const sdxl_st_tensor *t, sdxl_err *e) {
    float *v = malloc((size_t)t->numel * sizeof *v + 4);
    if (!v) {
        sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory for '%s'", t->name);
        return NULL;
    }
    if (sdxl_st_to_f32(f->st, t, v, e)) {
        free(v);
        return NULL;
    }
    return v;
}

/* d[rows, cols] = alpha a[rows, k] @ b[k, cols] + beta d (a_t: a given as [k, rows]); row-major,
 * through oneDNN's f32 GEMM. */
static void gemm(const float *a, int a_t, const float *b, float *d, int64_t rows, int64_t k, int64_t cols, float alpha,
                 float beta) {
    dnnl_sgemm(a_t ? 'T' : 'N', 'N', rows, cols, k, alpha, a, a_t ? rows : k, b, cols, beta, d, cols);
}

static void matmul(const float *a, int a_t, const float *b, float *d, int64_t rows, int64_t k, int64_t cols) {
    gemm(a, a_t, b, d, rows, k, cols, 1.0f, 0.0f);
}

/* Tucker / CP rebuild: d[p, q, k, l] = sum_ij mid[i, j, k, l] down[j, q] up[p, i], with up given as
 * [p, i] (up_t = 0) or [i, p] (up_t = 1). tmp holds r1 * in * kk. */
static void cp_rebuild(const float *mid, int64_t r1, int64_t r2, int64_t kk, const float *down, int64_t in,
                       const float *up, int up_t, int64_t out, float *tmp, float *d) {
    /* tmp[i, q, kl] = sum_j mid[i, j, kl] down[j, q] */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < r1; i++)
        for (int64_t q = 0; q < in; q++)
            for (int64_t kl = 0; kl < kk; kl++) {
                float s = 0;
                for (int64_t j = 0; j < r2; j++) s += mid[(i * r2 + j) * kk + kl] * down[j * in + q];
                tmp[(i * in + q) * kk + kl] = s;
            }
    matmul(up, up_t, tmp, d, out, r1, in * kk);
}

/* The scaled delta of module m for a part of rows x cols into d; *scale gets A1111's calc_scale. */
static int delta(const sdxl_lora_file *f, const lmod *m, int64_t rows, int64_t cols, int64_t in, int64_t kk, float *d,
                 float *tmp, float *tmp2, double *scale, sdxl_err *e) {
    const sdxl_st_tensor *const *t = m->t;
    float *fa[6] = {0};
    int st = SDXL_OK;
    int dim = 0; /* A1111's self.dim: the rank that alpha divides */
#define F(i, slot)                                                                                              \
    do {                                                                                                        \
        if (!(fa[i] = factor(f, t[slot], e))) {                                                                 \
            st = SDXL_ERR_NOMEM;                                                                                \
            goto out;                                                                                           \
        }                                                                                                       \
    } while (0)
    switch (m->kind) {
    case SDXL_LORA_KIND_LORA: {
        F(0, F_DOWN);
        F(1, F_UP);
        int64_t r = t[F_UP]->shape[1];
        dim = (int)t[F_DOWN]->shape[0];
        if (t[F_MID]) {
            F(2, F_MID);
            cp_rebuild(fa[2], t[F_MID]->shape[0], t[F_MID]->shape[1], kk, fa[0], in, fa[1], 0, rows, tmp, d);
        } else {
            matmul(fa[1], 0, fa[0], d, rows, r, cols);
        }
        break;
    }
    case SDXL_LORA_KIND_LOHA: {
        F(0, F_H1A);
        F(1, F_H1B);
        F(2, F_H2A);
        F(3, F_H2B);
        dim = (int)t[F_H1B]->shape[0];
        if (t[F_HT1]) {
            F(4, F_HT1);
            F(5, F_HT2);
            cp_rebuild(fa[4], t[F_HT1]->shape[0], t[F_HT1]->shape[1], kk, fa[0], in, fa[1], 1, rows, tmp, d);
            cp_rebuild(fa[5], t[F_HT2]->shape[0], t[F_HT2]->shape[1], kk, fa[2], in, fa[3], 1, rows, tmp, tmp2);
        } else {
            matmul(fa[0], 0, fa[1], d, rows, t[F_H1A]->shape[1], cols);
            matmul(fa[2], 0, fa[3], tmp2, rows, t[F_H2A]->shape[1], cols);
        }
        int64_t n = rows * cols;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) d[i] *= tmp2[i];
        break;
    }
    case SDXL_LORA_KIND_LOKR: {
        /* w1 [a, b] and w2 [c, dd] (dd includes the kernel): d[i1 c + i2, (j1 dd/kk + j2) kk + kl]. */
        int64_t a, b, c, dd;
        const float *w1, *w2;
        if (t[F_K1]) {
            F(0, F_K1);
            a = t[F_K1]->shape[0];
            b = t[F_K1]->shape[1];
        } else {
            F(1, F_K1A);
            F(2, F_K1B);
            a = t[F_K1A]->shape[0];
            b = t[F_K1B]->shape[1];
            dim = (int)t[F_K1B]->shape[0];
            if (!(fa[0] = malloc((size_t)(a * b) * sizeof(float)))) {
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory");
                goto out;
            }
            matmul(fa[1], 0, fa[2], fa[0], a, t[F_K1A]->shape[1], b);
        }
        w1 = fa[0];
        if (t[F_K2]) {
            F(3, F_K2);
            c = t[F_K2]->shape[0];
            dd = numel_of(t[F_K2]) / c;
        } else {
            F(4, F_K2A);
            F(5, F_K2B);
            dim = (int)t[F_K2B]->shape[0];
            if (t[F_KT2]) {
                float *t2 = factor(f, t[F_KT2], e);
                if (!t2) {
                    st = SDXL_ERR_NOMEM;
                    goto out;
                }
                c = t[F_K2B]->shape[1];
                int64_t in2 = t[F_K2A]->shape[1];
                dd = in2 * kk;
                fa[3] = malloc((size_t)(c * dd) * sizeof(float));
                float *tt = malloc((size_t)(t[F_KT2]->shape[0] * dd) * sizeof(float));
                if (fa[3] && tt)
                    cp_rebuild(t2, t[F_KT2]->shape[0], t[F_KT2]->shape[1], kk, fa[4], in2, fa[5], 1, c, tt, fa[3]);
                free(tt);
                free(t2);
            } else {
                c = t[F_K2A]->shape[0];
                dd = t[F_K2B]->shape[1];
                fa[3] = malloc((size_t)(c * dd) * sizeof(float));
                if (fa[3]) matmul(fa[4], 0, fa[5], fa[3], c, t[F_K2A]->shape[1], dd);
            }
            if (!fa[3]) {
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory");
                goto out;
            }
        }
        w2 = fa[3];
        /* torch.kron of [a, b(, 1, 1)] and [c, dd/kk(, kh, kw)] */
        int64_t d2 = dd / kk;
#pragma omp parallel for schedule(static)
        for (int64_t i1 = 0; i1 < a; i1++)
            for (int64_t i2 = 0; i2 < c; i2++)
                for (int64_t j1 = 0; j1 < b; j1++)
                    for (int64_t j2 = 0; j2 < d2; j2++)
                        for (int64_t kl = 0; kl < kk; kl++)
                            d[(i1 * c + i2) * cols + (j1 * d2 + j2) * kk + kl] =
                                w1[i1 * b + j1] * w2[(i2 * d2 + j2) * kk + kl];
        break;
    }
    case SDXL_LORA_KIND_FULL:
        if (t[F_DIFF]) {
            if (sdxl_st_to_f32(f->st, t[F_DIFF], d, e)) {
                st = SDXL_ERR_FORMAT;
                goto out;
            }
        } else {
            memset(d, 0, (size_t)(rows * cols) * sizeof *d);
        }
        break;
    case SDXL_LORA_KIND_NORM:
        if (t[F_WNORM]) {
            if (sdxl_st_to_f32(f->st, t[F_WNORM], d, e)) {
                st = SDXL_ERR_FORMAT;
                goto out;
            }
        } else {
            memset(d, 0, (size_t)rows * sizeof *d);
        }
        break;
    default: break;
    }
    *scale = dim > 0 && !isnan(m->alpha) ? m->alpha / dim : 1.0;
out:
    for (int i = 0; i < 6; i++) free(fa[i]);
    return st;
#undef F
}

/* Adds mult x (module's delta) to one part's weights w (original values in orig) and bias b. */
static int add_module(sdxl_lora_state *s, const sdxl_lora_file *f, const lmod *m, const layer *L, float mult,
                      const float *orig, float *w, float *b, sdxl_err *e) {
    const sdxl_lref *r = &L->r;
    int64_t rows = r->out_each, kk = (int64_t)r->kh * r->kw;
    int64_t in = r->kind == SDXL_LREF_NORM ? 1 : r->in, cols = r->kind == SDXL_LREF_NORM ? 1 : in * kk;
    int64_t n = rows * cols;
    int64_t r1 = 0;
    if (m->kind == SDXL_LORA_KIND_LORA && m->t[F_MID]) r1 = m->t[F_MID]->shape[0];
    if (m->kind == SDXL_LORA_KIND_LOHA && m->t[F_HT1]) r1 = m->t[F_HT1]->shape[0] > m->t[F_HT2]->shape[0]
                                                                ? m->t[F_HT1]->shape[0] : m->t[F_HT2]->shape[0];
    size_t need = (size_t)(n > r1 * in * kk ? n : r1 * in * kk);
    if (need > s->t_cap) {
        free(s->t1);
        free(s->t2);
        free(s->t3);
        s->t1 = malloc(need * sizeof(float));
        s->t2 = malloc(need * sizeof(float));
        s->t3 = malloc(need * sizeof(float));
        s->t_cap = need;
        if (!s->t1 || !s->t2 || !s->t3) {
            s->t_cap = 0;
            goto nomem;
        }
    }
    double scale = 1;
    if (m->kind == SDXL_LORA_KIND_LORA && !m->t[F_MID] && !m->t[F_DORA] && !m->t[F_MAG]) {
        /* plain LoRA: w += (m alpha / r) up @ down in one GEMM, no delta buffer */
        float *dn = factor(f, m->t[F_DOWN], e), *up = dn ? factor(f, m->t[F_UP], e) : NULL;
        if (!up) {
            free(dn);
            return SDXL_ERR_NOMEM;
        }
        int64_t r = m->t[F_DOWN]->shape[0];
        scale = isnan(m->alpha) ? 1.0 : m->alpha / (double)r;
        gemm(up, 0, dn, w, rows, r, cols, (float)(mult * scale), 1.0f);
        free(dn);
        free(up);
        return SDXL_OK;
    }
    int st = delta(f, m, rows, cols, in, kk, s->t1, s->t3, s->t2, &scale, e);
    if (st) return st;
    float *d = s->t1;
    if (m->t[F_DORA] || m->t[F_MAG]) {
        /* W_d = W + c D; W' = W_d * g / ||W_d|| (per input column for A1111's dora_scale [1, in, ...],
         * per output row for [out, 1, ...] and PEFT's magnitude); delta = mult (W' - W) for dora_scale,
         * W' - W with the multiplier inside c for PEFT. */
        int peft = m->t[F_MAG] != NULL;
        const sdxl_st_tensor *gt = peft ? m->t[F_MAG] : m->t[F_DORA];
        int per_out = peft || (gt->shape[0] == rows && numel_of(gt) == rows && !(gt->ndim > 1 && gt->shape[0] == 1));
        float *g = factor(f, gt, e);
        if (!g) return SDXL_ERR_NOMEM;
        double c = peft ? mult * scale : scale;
        float *wd = s->t2;
        for (int64_t i = 0; i < n; i++) wd[i] = orig[i] + (float)(c * d[i]);
        if (per_out) {
            for (int64_t o = 0; o < rows; o++) {
                double ss = 0;
                for (int64_t j = 0; j < cols; j++) ss += (double)wd[o * cols + j] * wd[o * cols + j];
                double k = g[o] / sqrt(ss > 0 ? ss : 1e-30);
                for (int64_t j = 0; j < cols; j++) wd[o * cols + j] = (float)(wd[o * cols + j] * k);
            }
        } else {
            for (int64_t q = 0; q < in; q++) {
                double ss = 0;
                for (int64_t o = 0; o < rows; o++)
                    for (int64_t kl = 0; kl < kk; kl++) {
                        double v = wd[o * cols + q * kk + kl];
                        ss += v * v;
                    }
                double k = g[q] / sqrt(ss > 0 ? ss : 1e-30);
                for (int64_t o = 0; o < rows; o++)
                    for (int64_t kl = 0; kl < kk; kl++) wd[o * cols + q * kk + kl] = (float)(wd[o * cols + q * kk + kl] * k);
            }
        }
        free(g);
        double mm = peft ? 1.0 : mult;
        for (int64_t i = 0; i < n; i++) w[i] += (float)(mm * (wd[i] - orig[i]));
    } else {
        float c = (float)(mult * scale);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) w[i] += c * d[i];
    }
    /* bias deltas (full diff_b, norm b_norm) take the multiplier only, as A1111's ex_bias */
    const sdxl_st_tensor *bt = m->kind == SDXL_LORA_KIND_FULL ? m->t[F_DIFFB] : m->kind == SDXL_LORA_KIND_NORM
                                                                                  ? m->t[F_BNORM] : NULL;
    if (bt && b) {
        float *bv = factor(f, bt, e);
        if (!bv) return SDXL_ERR_NOMEM;
        for (int64_t i = 0; i < rows; i++) b[i] += mult * bv[i];
        free(bv);
    }
    return SDXL_OK;
nomem:
    return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory for one layer's delta");
}

/* ---- kept layers: merging in the packed layout --------------------------------------------- */

#define TILE_R 16   /* delta tile: rows x columns of f32, computed and written while in cache */
#define TILE_C 1024

static void **layer_wptr(const layer *L) { return L->r.kind == SDXL_LREF_LINEAR ? &L->r.lin->w : &L->r.conv->w; }
static float *layer_bias(const layer *L) { return L->r.kind == SDXL_LREF_LINEAR ? L->r.lin->bias : L->r.conv->bias; }
static int64_t layer_rows(const layer *L) { return (int64_t)L->r.nparts * L->r.out_each; }

static int layer_moved(sdxl_lora_state *s, const layer *L, sdxl_err *e) {
    return L->r.kind == SDXL_LREF_LINEAR ? sdxl_linear_weights_moved(s->nets.c, L->r.lin, e)
                                         : sdxl_conv2d_weights_moved(s->nets.c, L->r.conv, e);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Starts keeping L (its weights are the loaded ones: nothing merged): its buffer becomes orig and
 * a new buffer alt, mapped by map_copy. Returns 0 (the layer stays on the rebuild-from-checkpoint
 * path) when it has no CPU weights, an unknown layout, or keep_max or memory does not allow. */
static int keep_layer(sdxl_lora_state *s, layer *L) {
    if (L->r.kind == SDXL_LREF_NORM || !*layer_wptr(L)) return 0;
    sdxl_wlayout lay;
    sdxl_err e2 = {0};
    int st = L->r.kind == SDXL_LREF_LINEAR ? sdxl_linear_layout(L->r.lin, &lay, &e2)
                                            : sdxl_conv2d_layout(L->r.conv, &lay, &e2);
    if (st) return 0;
    const float *bias = layer_bias(L);
    int64_t rows = layer_rows(L);
    size_t extra = lay.bytes + (bias ? (size_t)rows * sizeof(float) : 0);
    void *alt = NULL;
    float *ob = NULL;
    if (s->nets.in_place) extra -= lay.bytes;
    if (lay.n[0] != rows || lay.n[1] != L->r.in || lay.n[2] != L->r.kh || lay.n[3] != L->r.kw ||
        (s->nets.keep_max && s->kept_bytes + extra > s->nets.keep_max) ||
        !(alt = s->nets.in_place ? *layer_wptr(L) : sdxl_alloc_big(lay.bytes)) ||
        (bias && !(ob = malloc((size_t)rows * sizeof *ob)))) {
        if (s->nets.in_place) alt = NULL;
        free(alt);
        sdxl_wlayout_free(&lay);
        return 0;
    }
    if (ob) memcpy(ob, bias, (size_t)rows * sizeof *ob);
    L->orig = *layer_wptr(L);
    L->alt = alt;
    L->orig_b = ob;
    L->lay = lay;
    L->on_alt = 0;
    s->kept_bytes += extra;
    return 1;
}

/* Maps a new copy's pages in one call (no fault per page) and copies the pad bytes of a padded
 * layout: every merge writes each weight, so nothing else needs copying. fill (a reserve, whose
 * copies wait for a first merge): copies all of orig. A virtual machine's host may fold pages
 * left zero into shared ones meanwhile, and the first merge then pays to split them again
 * (measured: a first apply 2.6-2.9 s after 20-40 s, against 1.3-1.8 s with the copies filled). */
static void map_copy(const layer *L, int fill) {
    sdxl_mem_populate(L->alt, L->lay.bytes);
    if (fill || (int64_t)L->lay.bytes != layer_rows(L) * L->r.in * L->r.kh * L->r.kw * L->lay.esize)
        memcpy(L->alt, L->orig, L->lay.bytes);
}

/* Starts keeping every layer not kept yet that is unmerged and (unless all) about to get a delta,
 * then maps the new copies across the threads: a virtual machine's host may back never-used pages
 * slowly (0.5-1 GB/s a thread here), and threads fault them in parallel. */
static void keep_many(sdxl_lora_state *s, int all) {
    if (s->nets.in_place || !s->n_layers) return;
    layer **v = malloc((size_t)s->n_layers * sizeof *v);
    if (!v) return;
    int n = 0;
    for (int i = 0; i < s->n_layers; i++) {
        layer *L = &s->layers[i];
        if (L->orig || L->n_cur || (!all && !L->n_nxt)) continue;
        if (keep_layer(s, L)) v[n++] = L;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) map_copy(v[i], all);
    free(v);
}

int sdxl_lora_reserve(sdxl_lora_state *s, sdxl_lora_stats *st, sdxl_err *e) {
    (void)e;
    double t0 = now_s();
    keep_many(s, 1);
    if (st) {
        memset(st, 0, sizeof *st);
        st->seconds = now_s() - t0;
        st->kept_bytes = s->kept_bytes;
    }
    return SDXL_OK;
}

/* The kept original weights in torch order [rows, in * kh * kw], f32. */
static void unpack_kept(const layer *L, float *w) {
    const sdxl_wlayout *y = &L->lay;
    int64_t rows = layer_rows(L), kh = L->r.kh, kw = L->r.kw, cols = L->r.in * kh * kw;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < rows; o++)
        for (int64_t i = 0; i < L->r.in; i++)
            for (int64_t a = 0; a < kh; a++)
                for (int64_t b = 0; b < kw; b++) {
                    int64_t q = y->off[0][o] + y->off[1][i] + y->off[2][a] + y->off[3][b];
                    float v;
                    if (y->esize == 2) {
                        uint32_t u = (uint32_t)((const uint16_t *)L->orig)[q] << 16;
                        memcpy(&v, &u, 4);
                    } else {
                        v = ((const float *)L->orig)[q];
                    }
                    w[o * cols + (i * kh + a) * kw + b] = v;
                }
}

static int plain_lora(const lmod *m) {
    return m->kind == SDXL_LORA_KIND_LORA && !m->t[F_MID] && !m->t[F_DORA] && !m->t[F_MAG];
}

/* f32 to bf16, rounding to nearest even as oneDNN's reorders do (values are finite). */
static uint16_t bf16_rne(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Per part: UT [R, rows] holding (m * scale * up)^T for every plain LoRA of the part, D [R, cols]
 * their downs stacked, so the part's delta is UT^T @ D. Both live in the state's scratch. */
#define MJ 12 /* columns per register tile: with 32 rows, 24 accumulators of the 32 registers */

typedef struct lowrank {
    float *ut, *d;
    int64_t r;
} lowrank;

static int64_t part_rank(const contrib *list, int n, const int *parts, int p) {
    int64_t R = 0;
    for (int c = 0; c < n; c++)
        if (parts[c] == p) R += list[c].f->mods[list[c].mod].t[F_DOWN]->shape[0];
    return R;
}

/* sdxl_st_to_f32 of a float tensor in spans across the threads (a span is the tensor's own
 * dtype over a range of its elements). */
static int to_f32_par(const sdxl_st_file *st, const sdxl_st_tensor *t, float *dst, sdxl_err *e) {
    const uint64_t span = (uint64_t)1 << 15;
    if (t->numel <= span) return sdxl_st_to_f32(st, t, dst, e);
    const size_t es = sdxl_st_dtype_size(t->dtype);
    const int64_t ns = (int64_t)((t->numel + span - 1) / span);
    int fail = 0;
#pragma omp parallel for schedule(static) reduction(| : fail)
    for (int64_t i = 0; i < ns; i++) {
        sdxl_st_tensor part = *t;
        uint64_t i0 = (uint64_t)i * span;
        part.numel = t->numel - i0 < span ? t->numel - i0 : span;
        part.nbytes = part.numel * es;
        part.data = (const uint8_t *)t->data + i0 * es;
        sdxl_err e2 = {0};
        fail |= sdxl_st_to_f32(st, &part, dst + i0, &e2) != SDXL_OK;
    }
    return fail ? sdxl_st_to_f32(st, t, dst, e) : SDXL_OK; /* a failure reports from the whole tensor */
}

/* Fills lr for part p. ut: blocks of TR rows, each [R][TR] (TR = rows: plain [R, rows]);
 * d: with a column order perm, panels of MJ of its columns, each [R][MJ] and zero-padded; else
 * plain [R, cols]. Up and down factors pass through the scratch s->lr_up. */
static int lowrank_build(sdxl_lora_state *s, const layer *L, const contrib *list, int n, const int *parts, int p,
                         lowrank *lr, int64_t TR, const int64_t *perm, sdxl_err *e) {
    int64_t rows = L->r.out_each, cols = L->r.in * L->r.kh * L->r.kw, R = lr->r, r0 = 0;
    if (perm) memset(lr->d, 0, (size_t)(R * ((cols + MJ - 1) / MJ * MJ)) * sizeof(float));
    for (int c = 0; c < n && R; c++) {
        if (parts[c] != p) continue;
        const sdxl_lora_file *f = list[c].f;
        const lmod *m = &f->mods[list[c].mod];
        int64_t rc = m->t[F_DOWN]->shape[0];
        size_t big = (size_t)((rows > cols ? rows : cols) * rc) + 4;
        if (reserve(&s->lr_up, &s->lr_up_cap, big))
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory for a layer's factors");
        const float *f32 = s->lr_up;
        int st = to_f32_par(f->st, m->t[F_DOWN], s->lr_up, e);
        if (st) return st;
        /* Both factors are converted and laid out across the threads: between two layers' merges
         * this is the apply's serial part otherwise. */
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < rc; k++) {
            const float *dn = f32 + k * cols;
            if (!perm) {
                memcpy(lr->d + (r0 + k) * cols, dn, (size_t)cols * sizeof *dn);
                continue;
            }
            for (int64_t c0 = 0; c0 < cols; c0 += MJ) {
                float *q = lr->d + c0 * R + (r0 + k) * MJ;
                for (int64_t j = c0; j < cols && j < c0 + MJ; j++) q[j - c0] = dn[perm[j]];
            }
        }
        if ((st = to_f32_par(f->st, m->t[F_UP], s->lr_up, e))) return st;
        float sc = (float)((double)list[c].mult * (isnan(m->alpha) ? 1.0 : m->alpha / (double)rc));
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < rows; o++) {
            float *q = lr->ut + (o - o % TR) * R + (r0 * TR) + o % TR;
            for (int64_t k = 0; k < rc; k++) q[k * TR] = sc * f32[o * rc + k];
        }
        r0 += rc;
    }
    return SDXL_OK;
}

/* Orders a layer's columns by packed offset (an index sort). */
typedef struct colpos {
    int64_t off, j;
} colpos;

static int cmp_colpos(const void *a, const void *b) {
    int64_t x = ((const colpos *)a)->off, y = ((const colpos *)b)->off;
    return x < y ? -1 : x > y;
}

/* The output rows' block when the layout keeps them in runs: row o at off[0][o - o % B] + s (o % B)
 * with s = 1 (f32) or 2 (bf16, whose columns sit in pairs side by side, as oneDNN's VNNI layouts
 * keep them: so, the column offsets in increasing order, pairs up as so[2t + 1] = so[2t] + 1);
 * 0 otherwise. Every part's rows start a block. */
static int64_t out_block(const sdxl_wlayout *y, int64_t rows, int64_t out_each, const int64_t *so, int64_t cols) {
    int64_t st = y->esize == 2 ? 2 : 1, B = 1;
    if (y->esize == 2) {
        if (cols % 2) return 0;
        for (int64_t j = 0; j < cols; j += 2)
            if (so[j + 1] != so[j] + 1) return 0;
    }
    while (B < rows && y->off[0][B] == y->off[0][0] + st * B) B++;
    if (B % 16 || out_each % B) return 0;
    for (int64_t o = 0; o < rows; o++)
        if (y->off[0][o] != y->off[0][o - o % B] + st * (o % B)) return 0;
    return B;
}

/* One register tile of the merge: for 16 V rows and J columns (J even for bf16),
 * acc[c][v] = sum_k ut[k][16 v ..] d[k][c] in f32 FMAs, then dst = round(src + acc) at the
 * packed offsets base + oc[c] (bf16: a column pair's 16 V rows interleaved, 32 V values). */
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) static inline void
tile_regs(const float *ut, int64_t ldu, const float *d, int64_t ldd, int64_t R, const int V, const int J, const int bf,
          const void *src, void *dst, int64_t base, const int64_t *oc) {
    __m512 acc[MJ][2];
#pragma GCC unroll 12
    for (int c = 0; c < MJ; c++) acc[c][0] = acc[c][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < R; k++) {
        const float *uk = ut + k * ldu, *dk = d + k * ldd;
        __m512 u0 = _mm512_loadu_ps(uk), u1 = V > 1 ? _mm512_loadu_ps(uk + 16) : u0;
#pragma GCC unroll 12
        for (int c = 0; c < J; c++) {
            __m512 b = _mm512_set1_ps(dk[c]);
            acc[c][0] = _mm512_fmadd_ps(u0, b, acc[c][0]);
            if (V > 1) acc[c][1] = _mm512_fmadd_ps(u1, b, acc[c][1]);
        }
    }
    if (bf) {
        const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
#pragma GCC unroll 6
        for (int c = 0; c < J; c += 2)
#pragma GCC unroll 2
            for (int v = 0; v < V; v++) {
                const uint16_t *sp = (const uint16_t *)src + base + oc[c] + 32 * v;
                uint16_t *dp = (uint16_t *)dst + base + oc[c] + 32 * v;
                __m512 d0 = _mm512_permutex2var_ps(acc[c][v], lo, acc[c + 1][v]);
                __m512 d1 = _mm512_permutex2var_ps(acc[c][v], hi, acc[c + 1][v]);
                __m512i sv = _mm512_loadu_si512(sp);
                __m512 w0 =
                    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(sv)), 16));
                __m512 w1 =
                    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(sv, 1)), 16));
                __m512bh r = _mm512_cvtne2ps_pbh(_mm512_add_ps(w1, d1), _mm512_add_ps(w0, d0));
                _mm512_storeu_si512(dp, (__m512i)r);
            }
    } else {
#pragma GCC unroll 12
        for (int c = 0; c < J; c++)
#pragma GCC unroll 2
            for (int v = 0; v < V; v++) {
                const float *sp = (const float *)src + base + oc[c] + 16 * v;
                _mm512_storeu_ps((float *)dst + base + oc[c] + 16 * v, _mm512_add_ps(_mm512_loadu_ps(sp), acc[c][v]));
            }
    }
}

/* Register tiles ahead whose lines tile_merge prefetches: a tile's columns lie scattered over
 * the packed layout, where the hardware prefetchers do not follow (measured: 4-5% of an apply). */
#define PF_AHEAD 4

/* Prefetches the source and destination lines of the register tile at column j (of nc). */
static inline void tile_prefetch(const void *src, void *dst, int64_t base, const int64_t *oc, int64_t j, int64_t nc,
                                 int V, int bf) {
    int64_t end = j + MJ < nc ? j + MJ : nc;
    size_t es = bf ? 2 : 4;
    for (int64_t c = j; c < end; c += bf ? 2 : 1)
        for (int v = 0; v < V; v++) {
            size_t o = (size_t)(base + oc[c] + (bf ? 32 : 16) * v) * es;
            if (src != dst) __builtin_prefetch((const char *)src + o, 0, 3);
            __builtin_prefetch((char *)dst + o, 1, 3);
        }
}

/* A TR x TC tile (TR = 16 V) of the merge: ut [R][TR], d panels [R][MJ] from the tile's first
 * column; MJ columns at a time, the last ones in twos (bf16 pairs) or ones. */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void tile_merge(const float *ut, const float *d,
                                                                             int64_t R, int V, int bf, int64_t nc,
                                                                             const void *src, void *dst,
                                                                             int64_t base, const int64_t *oc) {
    int64_t j = 0, ldu = 16 * V, pan = R * MJ;
    for (int64_t q = 0; q < PF_AHEAD * MJ && q < nc; q += MJ) tile_prefetch(src, dst, base, oc, q, nc, V, bf);
    if (V == 2) {
        for (; j + MJ <= nc; j += MJ) {
            tile_prefetch(src, dst, base, oc, j + PF_AHEAD * MJ, nc, V, bf);
            tile_regs(ut, ldu, d + j / MJ * pan, MJ, R, 2, MJ, bf, src, dst, base, oc + j);
        }
        for (; j < nc; j += bf ? 2 : 1)
            tile_regs(ut, ldu, d + j / MJ * pan + j % MJ, MJ, R, 2, bf ? 2 : 1, bf, src, dst, base, oc + j);
    } else {
        for (; j + MJ <= nc; j += MJ) {
            tile_prefetch(src, dst, base, oc, j + PF_AHEAD * MJ, nc, V, bf);
            tile_regs(ut, ldu, d + j / MJ * pan, MJ, R, 1, MJ, bf, src, dst, base, oc + j);
        }
        for (; j < nc; j += bf ? 2 : 1)
            tile_regs(ut, ldu, d + j / MJ * pan + j % MJ, MJ, R, 1, bf ? 2 : 1, bf, src, dst, base, oc + j);
    }
}

/* merge_packed for layouts out_block accepts, with AVX-512 (+BF16 for bf16): each register tile
 * holds a block of the delta transposed (rows in the vector lanes), which is how the packed
 * weights keep a column's run of rows (bf16: a column pair's rows interleaved). */
static void merge_runs(layer *L, const lowrank *lr, const int64_t *so, int64_t TR) {
    const sdxl_wlayout *y = &L->lay;
    int64_t rows = L->r.out_each, cols = L->r.in * L->r.kh * L->r.kw;
    const int64_t TC = 20 * MJ;
    int64_t ntr = rows / TR, ntc = (cols + TC - 1) / TC, nt = L->r.nparts * ntr * ntc;
    int bf = y->esize == 2;
    static const float zero[1] = {0};
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t t = 0; t < nt; t++) {
        int p = (int)(t / (ntr * ntc));
        int64_t ob = t % (ntr * ntc) / ntc, c0 = t % ntc * TC, nc = cols - c0 < TC ? cols - c0 : TC, R = lr[p].r;
        const float *ut = R ? lr[p].ut + ob * R * TR : zero, *d = R ? lr[p].d + c0 / MJ * R * MJ : zero;
        tile_merge(ut, d, R, (int)(TR / 16), bf, nc, L->orig, L->alt, y->off[0][p * rows + ob * TR], so + c0);
    }
}

/* alt = round(orig + U @ D) for every part, tile by tile: a TILE_R x TILE_C block of the delta is
 * one small f32 GEMM, then added to the originals at their packed offsets and rounded to the
 * stored dtype. Tiles run in parallel on the compute threads. */
static int merge_packed(sdxl_lora_state *s, layer *L, const contrib *list, int n, const int *parts, sdxl_err *e) {
    const sdxl_wlayout *y = &L->lay;
    int64_t rows = L->r.out_each, kh = L->r.kh, kw = L->r.kw, cols = L->r.in * kh * kw;
    lowrank lr[3] = {{0}};
    if (reserve_i64(&s->offc, &s->offc_cap, (size_t)(3 * cols)))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory for a layer's factors");
    int64_t *offc = s->offc, *perm = offc + cols, *so = perm + cols;
    colpos *cp;
    if (reserve(&s->lr_up, &s->lr_up_cap, (size_t)cols * sizeof *cp / sizeof(float)))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory for a layer's factors");
    cp = (colpos *)s->lr_up;
    for (int64_t i = 0; i < L->r.in; i++)
        for (int64_t a = 0; a < kh; a++)
            for (int64_t b = 0; b < kw; b++) {
                int64_t j = (i * kh + a) * kw + b;
                offc[j] = y->off[1][i] + y->off[2][a] + y->off[3][b];
                cp[j] = (colpos){offc[j], j};
            }
    qsort(cp, (size_t)cols, sizeof *cp, cmp_colpos);
    for (int64_t j = 0; j < cols; j++) {
        perm[j] = cp[j].j;
        so[j] = cp[j].off;
    }
    sdxl_cpu cpu;
    sdxl_cpu_detect(&cpu);
    int64_t B = sdxl_cpu_has_avx512(&cpu) && (y->esize == 4 || cpu.avx512_bf16)
                    ? out_block(y, layer_rows(L), rows, so, cols) : 0;
    int64_t TR = B ? (B % 32 == 0 ? 32 : 16) : rows, dcols = B ? (cols + MJ - 1) / MJ * MJ : cols;
    size_t need = 0;
    for (int p = 0; p < L->r.nparts; p++) need += (size_t)(part_rank(list, n, parts, p) * (rows + dcols));
    if (reserve(&s->lr_buf, &s->lr_cap, need + 1))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory for a layer's factors");
    float *at = s->lr_buf;
    int st = SDXL_OK;
    for (int p = 0; p < L->r.nparts && !st; p++) {
        lr[p].r = part_rank(list, n, parts, p);
        lr[p].ut = at;
        lr[p].d = at + lr[p].r * rows;
        at += lr[p].r * (rows + dcols);
        st = lowrank_build(s, L, list, n, parts, p, &lr[p], TR, B ? perm : NULL, e);
    }
    if (st) return st;
    if (B) {
        merge_runs(L, lr, so, TR);
        return SDXL_OK;
    }
    int64_t ntr = (rows + TILE_R - 1) / TILE_R, ntc = (cols + TILE_C - 1) / TILE_C, nt = L->r.nparts * ntr * ntc;
    int bf = y->esize == 2;
#pragma omp parallel
    {
        float *tile = malloc((size_t)TILE_R * TILE_C * sizeof *tile);
#pragma omp for schedule(dynamic, 2)
        for (int64_t t = 0; t < nt; t++) {
            if (!tile) continue;
            int p = (int)(t / (ntr * ntc));
            int64_t o0 = t % (ntr * ntc) / ntc * TILE_R, c0 = t % ntc * TILE_C;
            int64_t no = rows - o0 < TILE_R ? rows - o0 : TILE_R, nc = cols - c0 < TILE_C ? cols - c0 : TILE_C;
            if (lr[p].r)
                dnnl_sgemm('T', 'N', no, nc, lr[p].r, 1.0f, lr[p].ut + o0, rows, lr[p].d + c0, cols, 0.0f, tile,
                           TILE_C);
            else
                for (int64_t k = 0; k < no * TILE_C; k++) tile[k] = 0;
            const int64_t *offr = y->off[0] + p * rows + o0, *oc = offc + c0;
            for (int64_t o = 0; o < no; o++) {
                const float *d = tile + o * TILE_C;
                int64_t base = offr[o];
                if (bf) {
                    const uint16_t *src = L->orig;
                    uint16_t *dst = L->alt;
                    for (int64_t j = 0; j < nc; j++) {
                        int64_t q = base + oc[j];
                        uint32_t u = (uint32_t)src[q] << 16;
                        float v;
                        memcpy(&v, &u, 4);
                        dst[q] = bf16_rne(v + d[j]);
                    }
                } else {
                    const float *src = L->orig;
                    float *dst = L->alt;
                    for (int64_t j = 0; j < nc; j++) {
                        int64_t q = base + oc[j];
                        dst[q] = src[q] + d[j];
                    }
                }
            }
        }
        if (!tile) {
#pragma omp atomic write
            st = SDXL_ERR_NOMEM;
        }
        free(tile);
    }
    if (st == SDXL_ERR_NOMEM) sdxl_seterr(e, st, "LoRA: out of memory for a delta tile");
    return st;
}

static int build_layer(sdxl_lora_state *s, const layer *L, const contrib *list, int n, int *bindpart, int kept,
                       sdxl_err *e);

/* Rebuilds a kept layer: no list points it back at its loaded buffer; plain LoRAs merge in the
 * packed layout; other kinds (DoRA, LoHa, ..., bias deltas) build f32 weights from the unpacked
 * originals and reorder them into alt. */
static int rebuild_kept(sdxl_lora_state *s, layer *L, const contrib *list, int n, const int *parts, sdxl_err *e) {
    float *bias = layer_bias(L);
    int64_t rows = layer_rows(L);
    if (n == 0) {
        *layer_wptr(L) = L->orig;
        L->on_alt = 0;
        if (bias && L->orig_b) memcpy(bias, L->orig_b, (size_t)rows * sizeof *bias);
        return layer_moved(s, L, e);
    }
    int packed = 1;
    for (int i = 0; i < n; i++) packed &= plain_lora(&list[i].f->mods[list[i].mod]);
    if (packed) {
        int st = merge_packed(s, L, list, n, parts, e);
        if (st) return st;
        *layer_wptr(L) = L->alt;
        L->on_alt = 1;
        if (bias && L->orig_b) memcpy(bias, L->orig_b, (size_t)rows * sizeof *bias);
        s->n_packed++;
        return layer_moved(s, L, e);
    }
    int st = build_layer(s, L, list, n, (int *)parts, 1, e);
    if (st) return st;
    *layer_wptr(L) = L->alt;
    L->on_alt = 1;
    return sdxl_lref_set(s->nets.c, &L->r, s->w, sdxl_lref_bias_numel(&L->r) ? s->w + 2 * sdxl_lref_numel(&L->r)
                                                                               : NULL, e);
}

/* Builds layer L's weights for a contribution list into s->w / s->b (originals when n = 0). */
static int build_layer(sdxl_lora_state *s, const layer *L, const contrib *list, int n, int *bindpart, int kept,
                       sdxl_err *e) {
    const sdxl_lref *r = &L->r;
    int64_t nw = sdxl_lref_numel(r), nb = sdxl_lref_bias_numel(r), pn = sdxl_lref_part_numel(r);
    size_t need = (size_t)(2 * nw + nb + 1);
    if (reserve(&s->w, &s->w_cap, need)) return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory for a layer");
    float *w = s->w, *orig = s->w + nw, *b = nb ? s->w + 2 * nw : NULL;
    if (kept) {
        unpack_kept(L, w);
        if (b && L->orig_b) memcpy(b, L->orig_b, (size_t)nb * sizeof *b);
    } else {
        sdxl_lref_original(r, w, b);
    }
    for (int i = 0; i < n; i++) {
        int part = bindpart[i];
        const lmod *m = &list[i].f->mods[list[i].mod];
        /* DoRA normalises the weights as merged so far (A1111 and PEFT merge one network after
         * the other, each reading the layer's current weight) */
        if (m->t[F_DORA] || m->t[F_MAG]) memcpy(orig + part * pn, w + part * pn, (size_t)pn * sizeof *w);
        int st = add_module(s, list[i].f, &list[i].f->mods[list[i].mod], L, list[i].mult, orig + part * pn,
                            w + part * pn, b ? b + part * r->out_each : NULL, e);
        if (st) return st;
    }
    return SDXL_OK;
}

static int same_list(const contrib *a, int na, const contrib *b, int nb) {
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i].f != b[i].f || a[i].mod != b[i].mod || a[i].mult != b[i].mult) return 0;
    return 1;
}

static int find_applied(const sdxl_lora_state *s, const sdxl_lora_file *f) {
    for (int i = 0; i < s->n_cur; i++)
        if (s->cur[i].f == f) return i;
    return -1;
}

/* Part index of each contribution of a list (bindings live with the applied files). */
static void list_parts(const applied *set, int nset, const contrib *list, int n, int *parts) {
    for (int i = 0; i < n; i++) {
        parts[i] = 0;
        for (int k = 0; k < nset; k++)
            if (set[k].f == list[i].f) parts[i] = set[k].bind[list[i].mod] & 3;
    }
}

static int rebuild(sdxl_lora_state *s, layer *L, const applied *set, int nset, const contrib *list, int n,
                   sdxl_err *e) {
    int parts[64];
    int *pp = n <= 64 ? parts : malloc((size_t)n * sizeof *pp);
    if (!pp) return sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory");
    list_parts(set, nset, list, n, pp);
    if (!L->orig && L->n_cur == 0 && n > 0 && keep_layer(s, L) && !s->nets.in_place) map_copy(L, 0);
    if (L->orig) {
        int st = rebuild_kept(s, L, list, n, pp, e);
        if (pp != parts) free(pp);
        return st;
    }
    int st = build_layer(s, L, list, n, pp, 0, e);
    if (pp != parts) free(pp);
    if (!st) st = sdxl_lref_set(s->nets.c, &L->r, s->w, sdxl_lref_bias_numel(&L->r) ? s->w + 2 * sdxl_lref_numel(&L->r)
                                                                                       : NULL, e);
    const sdxl_ckpt *ck = L->net == SDXL_LORA_UNET ? s->nets.unet_ck : s->nets.te_ck;
    sdxl_part part = L->net == SDXL_LORA_UNET ? SDXL_PART_UNET : L->net == SDXL_LORA_TE1 ? SDXL_PART_TE1 : SDXL_PART_TE2;
    if (ck) sdxl_lref_release(&L->r, sdxl_ckpt_file(ck, part));
    return st;
}

static int push_nxt(layer *L, sdxl_lora_file *f, int mod, float mult) {
    if (L->n_nxt == L->cap_nxt) {
        int nc = L->cap_nxt ? 2 * L->cap_nxt : 2;
        contrib *n = realloc(L->nxt, (size_t)nc * sizeof *n);
        if (!n) return 1;
        L->nxt = n;
        L->cap_nxt = nc;
    }
    L->nxt[L->n_nxt++] = (contrib){f, mod, mult};
    return 0;
}


int sdxl_lora_apply(sdxl_lora_state *s, const sdxl_lora_use *uses, int n, sdxl_lora_stats *stp, sdxl_err *e) {
    sdxl_lora_stats st0;
    sdxl_lora_stats *stt = stp ? stp : &st0;
    memset(stt, 0, sizeof *stt);
    double t0 = now_s();
    if (n < 0 || (n && !uses)) return sdxl_seterr(e, SDXL_ERR_ARG, "loras: %d entries without a list", n);
    applied *set = calloc((size_t)(n ? n : 1), sizeof *set);
    int *reused = calloc((size_t)(s->n_cur ? s->n_cur : 1), sizeof *reused);
    int st = SDXL_OK, nset = 0;
    if (!set || !reused) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory");
        goto fail;
    }
    /* 1. open (or keep) and bind every file; nothing changes in the model yet */
    for (int i = 0; i < n; i++) {
        if (!uses[i].path) {
            st = sdxl_seterr(e, SDXL_ERR_ARG, "loras[%d].path: required", i);
            goto fail;
        }
        if (!isfinite(uses[i].unet_weight) || !isfinite(uses[i].te_weight) || fabsf(uses[i].unet_weight) > 100 ||
            fabsf(uses[i].te_weight) > 100) {
            st = sdxl_seterr(e, SDXL_ERR_ARG, "loras[%d]: weights must be finite and within +-100 (got %g, %g)", i,
                             uses[i].unet_weight, uses[i].te_weight);
            goto fail;
        }
        struct stat sb;
        if (stat(uses[i].path, &sb) != 0) {
            st = sdxl_seterr(e, SDXL_ERR_IO, "LoRA %s: no such file", uses[i].path);
            goto fail;
        }
        int k = -1;
        for (int j = 0; j < s->n_cur && k < 0; j++) {
            sdxl_lora_file *f = s->cur[j].f;
            if (!reused[j] && f->dev == sb.st_dev && f->ino == sb.st_ino && f->size == sb.st_size &&
                f->mtime.tv_sec == sb.st_mtim.tv_sec && f->mtime.tv_nsec == sb.st_mtim.tv_nsec)
                k = j;
        }
        if (k >= 0) {
            reused[k] = 1;
            set[nset++] = s->cur[k];
            continue;
        }
        sdxl_lora_file *f = NULL;
        if ((st = sdxl_lora_open(uses[i].path, &f, e))) goto fail;
        set[nset].f = f;
        nset++;
        if ((st = bind_file(s, f, &set[nset - 1].bind, stt, e))) goto fail;
    }
    /* 2. plan each layer's contribution list */
    for (int i = 0; i < s->n_layers; i++) s->layers[i].n_nxt = 0;
    for (int k = 0; k < nset; k++) {
        sdxl_lora_file *f = set[k].f;
        for (int j = 0; j < f->n_mods; j++) {
            if (set[k].bind[j] < 0) continue;
            layer *L = &s->layers[set[k].bind[j] >> 2];
            float mult = L->net == SDXL_LORA_UNET ? uses[k].unet_weight : uses[k].te_weight;
            stt->modules_bound++;
            if (mult == 0) continue;
            if (push_nxt(L, f, j, mult)) {
                st = sdxl_seterr(e, SDXL_ERR_NOMEM, "LoRA: out of memory");
                goto fail;
            }
        }
    }
    /* in place, merged weights have no original left to return to */
    if (s->nets.in_place && s->broken) {
        st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "loras: an earlier merge into this model's weights failed part way; "
                                            "load it again");
        goto fail;
    }
    for (int i = 0; i < s->n_layers && s->nets.in_place; i++) {
        layer *L = &s->layers[i];
        if (L->n_cur && !same_list(L->cur, L->n_cur, L->nxt, L->n_nxt)) {
            st = sdxl_seterr(e, SDXL_ERR_UNSUPPORTED,
                             "loras: this model merged its LoRAs into its weights (lora_in_place) and serves only "
                             "that list; load it again for another");
            goto fail;
        }
    }
    /* 3. rebuild the layers whose list changed */
    keep_many(s, 0);
    s->n_packed = 0;
    for (int i = 0; i < s->n_layers; i++) {
        layer *L = &s->layers[i];
        if (same_list(L->cur, L->n_cur, L->nxt, L->n_nxt)) continue;
        if ((st = rebuild(s, L, set, nset, L->nxt, L->n_nxt, e))) {
            if (s->nets.in_place) { /* nothing to put back: no further merge is allowed */
                s->broken = 1;
                goto fail;
            }
            /* put back what was merged before in the layers already rebuilt, then this one */
            sdxl_err e2 = {0};
            for (int j = 0; j <= i; j++) {
                layer *Lj = &s->layers[j];
                if (!same_list(Lj->cur, Lj->n_cur, Lj->nxt, Lj->n_nxt))
                    rebuild(s, Lj, s->cur, s->n_cur, Lj->cur, Lj->n_cur, &e2);
            }
            goto fail;
        }
        stt->layers_rebuilt++;
    }
    /* 4. commit */
    for (int i = 0; i < s->n_layers; i++) {
        layer *L = &s->layers[i];
        contrib *t = L->cur;
        int tc = L->cap_cur;
        L->cur = L->nxt;
        L->n_cur = L->n_nxt;
        L->cap_cur = L->cap_nxt;
        L->nxt = t;
        L->cap_nxt = tc;
        L->n_nxt = 0;
        if (L->n_cur) stt->layers_merged++;
    }
    for (int j = 0; j < s->n_cur; j++)
        if (!reused[j]) applied_free(&s->cur[j]);
    free(s->cur);
    s->cur = set;
    s->n_cur = nset;
    free(reused);
    stt->seconds = now_s() - t0;
    stt->kept_bytes = s->kept_bytes;
    stt->layers_packed = s->n_packed;
    return SDXL_OK;
fail:
    for (int k = 0; k < nset; k++)
        if (set && find_applied(s, set[k].f) < 0) applied_free(&set[k]);
    free(set);
    free(reused);
    return st;
}

int sdxl_lora_merged_weight(sdxl_lora_state *s, sdxl_lora_net net, const char *module, float *w, size_t n_w,
                            sdxl_err *e) {
    const name_ent *ne = map_get(s, net, module);
    if (!ne) return sdxl_seterr(e, SDXL_ERR_ARG, "LoRA: no layer '%s' in %s", module, sdxl_lora_net_name(net));
    const layer *L = &s->layers[ne->layer];
    int64_t pn = sdxl_lref_part_numel(&L->r);
    if (n_w != (size_t)pn)
        return sdxl_seterr(e, SDXL_ERR_ARG, "LoRA: '%s' has %lld values, buffer %zu", module, (long long)pn, n_w);
    int parts[64];
    int n = L->n_cur <= 64 ? L->n_cur : 64;
    list_parts(s->cur, s->n_cur, L->cur, n, parts);
    int st = build_layer(s, L, L->cur, n, parts, 0, e);
    if (st) return st;
    memcpy(w, s->w + ne->part * pn, (size_t)pn * sizeof *w);
    return SDXL_OK;
}
