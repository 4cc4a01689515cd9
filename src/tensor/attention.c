/* Flash-style multi-head attention.
 *
 * Work is split into tasks (batch, head, tile of ATT_BQ queries) run in parallel. A thread packs
 * the keys and values of the head it works on once (keys transposed so a vector holds 16 keys;
 * in bf16, key and value pairs interleaved for vdpbf16ps), then walks the keys in blocks: scores
 * S = Q K^T for the tile, an online softmax (running max m and sum l per row, rescaling the
 * output accumulator when the max grows), and O += P V. Scores exist only for one tile x block,
 * so memory grows with lk, never lk^2. Exponentials are 2^x with the softmax scale folded into
 * log2(e). The f32 kernel passes scores and P through L1; the bf16 kernel keeps them in
 * registers (see "bf16 kernel" below), and with at most 80 keys does everything in one pass. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "tensor/ops.h"
#include "tensor/ops_internal.h"

#define ATT_BQ 64 /* queries per task */
#define ATT_BK 64 /* keys per softmax block */
#define ATT_KB 32 /* key granularity of the packed layout and the score kernel */
#define ATT_R 8   /* query rows per micro-kernel call */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

typedef struct att_shape {
    const float *q, *k, *v;
    float *out;
    uint16_t *outb; /* bf16 output instead of out (bf16 kernel only) */
    int64_t q_ld, kv_ld, out_ld, lq, lk;
    int heads, d;
    int dp;  /* d rounded up to even (bf16 pairs) */
    int dv;  /* d rounded up to 16 (output vectors) */
    int64_t lkp; /* lk rounded up to the key block of the packed layout */
    int kbw;     /* bf16: keys per packed K block (BF_BK, or all keys when they fit one short block) */
    float scale_log2; /* scale * log2(e) */
    int causal, bf16;
    int single;   /* bf16 with all keys in one short block (lk <= 16 * BF_NV) */
    int allheads; /* single, and K and V of every head packed at once (tasks run head-fastest) */
} att_shape;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Start of row qi of batch item b, head h in the output, f32 or bf16 (a->outb). */
static char *out_at(const att_shape *a, int64_t b, int64_t qi, int h) {
    int64_t i = (b * a->lq + qi) * a->out_ld + (int64_t)h * a->d;
    return a->outb ? (char *)(a->outb + i) : (char *)(a->out + i);
}

/* Per-thread scratch: packed K and V of one head, the tile's bf16 queries, scores,
 * probabilities, output accumulator, running max and sum. */
typedef struct att_tls {
    void *kp, *vp;
    uint16_t *qb;
    float *s, *o, *m, *l;
    void *p;
    void *stage; /* pack_bf16_64's staging rows */
} att_tls;

/* Packed K (or V) of one head, and of all the heads this thread keeps packed. */
static size_t kpack_bytes(const att_shape *a) { return (size_t)a->lkp * (size_t)a->dp * (a->bf16 ? 2 : 4); }
static size_t vpack_bytes(const att_shape *a) { return (size_t)a->lkp * (size_t)a->dv * (a->bf16 ? 2 : 4); }
static size_t npacked(const att_shape *a) { return a->allheads ? (size_t)a->heads : 1; }

/* Staging for pack_bf16_64: 16 bf16 rows of K (d-pairs padded to 16) and two rows of V. */
static size_t pack_stage_bytes(const att_shape *a) {
    return 16 * (size_t)((a->dp / 2 + 15) & ~15) * 4 + 2 * (size_t)a->dv * 2;
}

static size_t tls_bytes(const att_shape *a) {
    return align64(kpack_bytes(a) * npacked(a)) + align64(vpack_bytes(a) * npacked(a)) +
           align64((size_t)ATT_BQ * (size_t)a->dp * 2 * npacked(a)) + align64(ATT_BQ * ATT_BK * 4) +
           align64(ATT_BQ * ATT_BK * 4) + align64((size_t)ATT_BQ * (size_t)a->dv * 4) + align64(ATT_BQ * 4) +
           align64(ATT_BQ * 16 * 4) + (a->bf16 ? align64(pack_stage_bytes(a)) : 0);
}

static void tls_carve(const att_shape *a, char *base, att_tls *t) {
    t->kp = base;
    base += align64(kpack_bytes(a) * npacked(a));
    t->vp = base;
    base += align64(vpack_bytes(a) * npacked(a));
    t->qb = (uint16_t *)base;
    base += align64((size_t)ATT_BQ * (size_t)a->dp * 2 * npacked(a));
    t->s = (float *)base;
    base += align64(ATT_BQ * ATT_BK * 4);
    t->p = base;
    base += align64(ATT_BQ * ATT_BK * 4);
    t->o = (float *)base;
    base += align64((size_t)ATT_BQ * (size_t)a->dv * 4);
    t->m = (float *)base;
    base += align64(ATT_BQ * 4);
    t->l = (float *)base; /* [ATT_BQ][16]: per-row sums kept as 16 lanes until the end */
    base += align64(ATT_BQ * 16 * 4);
    t->stage = a->bf16 ? base : NULL;
}

/* ---- packing ----------------------------------------------------------------------------
 * f32:  K block kb: [d][ATT_KB] floats (transposed);  V: [lkp][dv] floats.
 * bf16: see pack_bf16_64.
 * Padding (keys >= lk, dims >= d) is zero, so it adds nothing and stays finite. */

static void pack_f32(const att_shape *a, const float *k, const float *v, float *kp, float *vp) {
    const int d = a->d, dv = a->dv;
    for (int64_t j = 0; j < a->lkp; j++) {
        int64_t kb = j / ATT_KB, jj = j % ATT_KB;
        float *kblk = kp + kb * (int64_t)d * ATT_KB;
        float *vrow = vp + j * dv;
        if (j < a->lk) {
            const float *kr = k + j * a->kv_ld, *vr = v + j * a->kv_ld;
            for (int x = 0; x < d; x++) kblk[x * ATT_KB + jj] = kr[x];
            memcpy(vrow, vr, (size_t)d * 4);
            memset(vrow + d, 0, (size_t)(dv - d) * 4);
        } else {
            for (int x = 0; x < d; x++) kblk[x * ATT_KB + jj] = 0;
            memset(vrow, 0, (size_t)dv * 4);
        }
    }
}

/* n floats to bf16 (round to nearest even), inline: the library call checks the CPU each time. */
AVX512BF16 static void row_bf16(const float *x, uint16_t *y, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
        _mm256_mask_storeu_epi16(y + i, m, (__m256i)b);
    }
}

/* ---- AVX-512 kernels ---------------------------------------------------------------------- */

/* 2^x for x <= 0 (clamped at -126, where the result is negligible). */
AVX512 static inline __m512 exp2_16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 t = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(0.6931471805599453f));
    /* e^t, |t| <= ln2/2: Taylor to degree 7, truncation error < 6e-9 relative */
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* 2^x for x <= 0, for bf16 probabilities, in the lanes of mk (0 elsewhere): degree-4 polynomial
 * in the fraction f, |f| <= 1/2, fitted for least maximum relative error (Lawson iterations):
 * error < 2.7e-6, a thousandth of the bf16 rounding the probabilities then take. No clamp: vscalefps
 * takes any exponent, so far below -126 the result goes through the subnormals to 0. */
AVX512 static inline __m512 exp2_16_bf(__mmask16 mk, __m512 x) {
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(9.570102207e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.591786280e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402474433e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931217909e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.999992847e-1f));
    return _mm512_maskz_scalef_ps(mk, p, n);
}

/* S[r][0..16*nv) = q_r . K_blk^T for 8 rows; qr[r] point at each row's head slice. */
AVX512 static void qk_f32_8x32(const float *const *qr, const float *kblk, int d, float *s, int s_ld, int nv) {
    __m512 acc[ATT_R][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATT_R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int x = 0; x < d; x++) {
        __m512 k0 = _mm512_load_ps(kblk + x * ATT_KB);
        __m512 k1 = nv > 1 ? _mm512_load_ps(kblk + x * ATT_KB + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int r = 0; r < ATT_R; r++) {
            __m512 qv = _mm512_set1_ps(qr[r][x]);
            acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ATT_R; r++) {
        _mm512_storeu_ps(s + r * s_ld, acc[r][0]);
        if (nv > 1) _mm512_storeu_ps(s + r * s_ld + 16, acc[r][1]);
    }
}

/* O[r][c..c+16*nv) += sum_j P[r][j] V[j][c..], 8 rows, nk keys (f32). */
AVX512 static void pv_f32_8(const float *p, int p_ld, const float *vp, int dv, int c, int nk, float *o, int nv) {
    __m512 acc[ATT_R][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATT_R; r++) {
        acc[r][0] = _mm512_load_ps(o + r * dv + c);
        acc[r][1] = nv > 1 ? _mm512_load_ps(o + r * dv + c + 16) : _mm512_setzero_ps();
    }
    for (int j = 0; j < nk; j++) {
        const float *vr = vp + (int64_t)j * dv + c;
        __m512 v0 = _mm512_load_ps(vr), v1 = nv > 1 ? _mm512_load_ps(vr + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int r = 0; r < ATT_R; r++) {
            __m512 pv = _mm512_set1_ps(p[r * p_ld + j]);
            acc[r][0] = _mm512_fmadd_ps(pv, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(pv, v1, acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < ATT_R; r++) {
        _mm512_store_ps(o + r * dv + c, acc[r][0]);
        if (nv > 1) _mm512_store_ps(o + r * dv + c + 16, acc[r][1]);
    }
}

/* Online-softmax update of one row: scores s[0..nkp) of which the first nvalid count; writes
 * probabilities (f32 or bf16) and adds them to the row's 16-lane sum l. The reference max m only
 * moves when a score exceeds it by more than ATT_SLACK (log2 units): probabilities then stay
 * below 2^ATT_SLACK, and the usual per-block horizontal max and output rescale are skipped. */
#define ATT_SLACK 8.0f

AVX512 static void softmax_row_avx512(const att_shape *a, float *s, int nkp, int nvalid, float *m, float *l,
                                      float *p, float *o) {
    const __m512 sc = _mm512_set1_ps(a->scale_log2);
    const __m512 lim = _mm512_set1_ps(*m + ATT_SLACK);
    __mmask16 over = 0;
    for (int j = 0; j < nkp; j += 16) {
        __mmask16 mk = nvalid - j >= 16 ? 0xffff : nvalid - j <= 0 ? 0 : (__mmask16)((1u << (nvalid - j)) - 1);
        __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + j), sc);
        _mm512_storeu_ps(s + j, x);
        over |= _mm512_mask_cmp_ps_mask(mk, x, lim, _CMP_GT_OQ);
    }
    __m512 vl = _mm512_load_ps(l);
    if (over) {
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < nkp; j += 16) {
            __mmask16 mk = nvalid - j >= 16 ? 0xffff : nvalid - j <= 0 ? 0 : (__mmask16)((1u << (nvalid - j)) - 1);
            mx = _mm512_mask_max_ps(mx, mk, mx, _mm512_loadu_ps(s + j));
        }
        float mnew = _mm512_reduce_max_ps(mx);
        if (*m != -INFINITY) {
            __m512 va = exp2_16(_mm512_set1_ps(*m - mnew));
            vl = _mm512_mul_ps(vl, va);
            for (int c = 0; c < a->dv; c += 16) _mm512_store_ps(o + c, _mm512_mul_ps(_mm512_load_ps(o + c), va));
        }
        *m = mnew;
    }
    __m512 vm = _mm512_set1_ps(*m);
    for (int j = 0; j < nkp; j += 16) {
        __mmask16 mk = nvalid - j >= 16 ? 0xffff : nvalid - j <= 0 ? 0 : (__mmask16)((1u << (nvalid - j)) - 1);
        __m512 e = _mm512_maskz_mov_ps(mk, exp2_16(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm)));
        vl = _mm512_add_ps(vl, e);
        _mm512_storeu_ps((float *)p + j, e);
    }
    _mm512_store_ps(l, vl);
}

/* One task in f32: queries [q0, q0+nr) of (b, h), keys and values already packed in t. */
AVX512 static void tile_avx512(const att_shape *a, int64_t b, int h, int64_t q0, int nr, att_tls *t) {
    const int d = a->d, dv = a->dv;
    const int ngr = (nr + ATT_R - 1) / ATT_R, rows = ngr * ATT_R;
    const float *qrow[ATT_BQ];
    for (int i = 0; i < rows; i++) {
        int ii = i < nr ? i : nr - 1;
        qrow[i] = a->q + (b * a->lq + q0 + ii) * a->q_ld + (int64_t)h * d;
    }
    for (int i = 0; i < rows; i++) t->m[i] = -INFINITY;
    memset(t->l, 0, (size_t)rows * 16 * 4);
    memset(t->o, 0, (size_t)rows * dv * 4);
    int64_t kend = a->lk;
    if (a->causal && q0 + nr < kend) kend = q0 + nr;
    for (int64_t k0 = 0; k0 < kend; k0 += ATT_BK) {
        int nk = (int)(kend - k0 < ATT_BK ? kend - k0 : ATT_BK);
        int nkp = (nk + 15) & ~15;
        for (int g = 0; g < ngr; g++) {
            for (int kb = 0; kb < nkp; kb += ATT_KB) {
                int64_t blk = (k0 + kb) / ATT_KB;
                float *s = t->s + g * ATT_R * ATT_BK + kb;
                int nv = nkp - kb >= 32 ? 2 : 1;
                qk_f32_8x32(qrow + g * ATT_R, (const float *)t->kp + blk * d * ATT_KB, d, s, ATT_BK, nv);
            }
        }
        for (int i = 0; i < rows; i++) {
            int nvalid = nk;
            if (a->causal) {
                int64_t lim = q0 + (i < nr ? i : nr - 1) - k0 + 1;
                if (lim < nvalid) nvalid = (int)(lim < 0 ? 0 : lim);
            }
            float *prow = (float *)t->p + i * ATT_BK;
            softmax_row_avx512(a, t->s + i * ATT_BK, nkp, nvalid, t->m + i, t->l + (int64_t)i * 16, prow,
                               t->o + (int64_t)i * dv);
        }
        for (int g = 0; g < ngr; g++) {
            float *o = t->o + (int64_t)g * ATT_R * dv;
            for (int c = 0; c < dv; c += 32) {
                int nv = dv - c >= 32 ? 2 : 1;
                pv_f32_8((const float *)t->p + g * ATT_R * ATT_BK, ATT_BK, (const float *)t->vp + k0 * dv, dv, c,
                             nkp, o, nv);
            }
        }
    }
    for (int i = 0; i < nr; i++) {
        float inv = 1.0f / _mm512_reduce_add_ps(_mm512_load_ps(t->l + (int64_t)i * 16));
        float *dst = a->out + (b * a->lq + q0 + i) * a->out_ld + (int64_t)h * d;
        const float *o = t->o + (int64_t)i * dv;
        for (int x = 0; x < d; x++) dst[x] = o[x] * inv;
    }
}

/* ---- bf16 kernel: scores, softmax and P in registers --------------------------------------
 * Keys are walked in blocks of BF_BK; for each block, every group of BF_R query rows computes
 * its scores into registers (BF_R rows x up to 4 vectors of 16 keys), runs the online softmax
 * there, writes the bf16 probabilities to a 512-byte L1 buffer and adds P V into the tile's
 * output rows. A block of packed K and V (16 KB at d = 64) stays in L1 while every row group of
 * the tile uses it. The queries are pre-scaled by scale * log2(e) before their bf16 rounding, so
 * the scores come out in log2 units. Up to 80 keys (77 text tokens) form a single block: the
 * softmax is exact in one pass and P V goes straight to the output (bf_group_single). */
#define BF_BK 64     /* keys per block */
#define BF_R 4       /* query rows per register group */
#define BF_NV 5      /* most score vectors a group holds: one block of up to 80 keys */
#define BF_PB 96     /* row stride of the probability buffer (bf16) */
#define INLINE __attribute__((always_inline)) inline

/* Transposes a 16x16 matrix of 32-bit elements held in r[0..16) (rows) into columns. */
AVX512 static INLINE void tr16x16(__m512i r[16]) {
    __m512i t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* u[4i + c], lane L: rows 4i..4i+3 of column c + 4L */
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512i v0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xee);
        __m512i v2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44), v3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xee);
        t[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        t[c + 4] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
        t[c + 8] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        t[c + 12] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* K: blocks of kbw keys, [dp/2][kbw][2] each; V: key pairs, [lkp/2][dv][2]. Zero padded.
 * Sixteen keys at a time: their bf16 rows are transposed as 16 x 16 blocks of d-pairs. Rows of k
 * and v are often more than a page apart (fused projections), where the hardware prefetcher
 * stops: the rows a few keys ahead are fetched by hand. */
#define PACK_AHEAD 12
AVX512BF16 static void pack_bf16_64(const att_shape *a, const float *k, const float *v, uint16_t *kp, uint16_t *vp,
                                    void *stage) {
    const int d = a->d, dp = a->dp, dv = a->dv, np = dp / 2, np16 = (np + 15) & ~15;
    uint32_t *kr = stage;
    uint16_t *v0 = (uint16_t *)(kr + 16 * np16), *v1 = v0 + dv;
    __m512i lo_idx, hi_idx; /* element-wise interleave of two rows: 0,32,1,33,... and 16,48,... */
    {
        uint16_t idx[32];
        for (int i = 0; i < 32; i++) idx[i] = (uint16_t)((i & 1 ? 32 : 0) + i / 2);
        lo_idx = _mm512_loadu_si512(idx);
        hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
    }
    for (int64_t j0 = 0; j0 < a->lkp; j0 += 16) {
        for (int jj = 0; jj < 16; jj++) {
            int64_t j = j0 + jj, ja = j + PACK_AHEAD;
            if (ja < a->lk)
                for (int x = 0; x < d; x += 16) {
                    __builtin_prefetch(k + ja * a->kv_ld + x, 0, 3);
                    __builtin_prefetch(v + ja * a->kv_ld + x, 0, 3);
                }
            uint32_t *krow = kr + jj * np16;
            uint16_t *vr = jj & 1 ? v1 : v0;
            memset(krow, 0, (size_t)np16 * 4);
            memset(vr, 0, (size_t)dv * 2);
            if (j < a->lk) {
                row_bf16(k + j * a->kv_ld, (uint16_t *)krow, d);
                row_bf16(v + j * a->kv_ld, vr, d);
            }
            if (!(jj & 1)) continue;
            uint16_t *vpair = vp + (j / 2) * (int64_t)dv * 2;
            for (int x = 0; x < dv; x += 32) {
                if (dv - x >= 32) {
                    __m512i r0 = _mm512_loadu_si512(v0 + x), r1 = _mm512_loadu_si512(v1 + x);
                    _mm512_storeu_si512(vpair + 2 * x, _mm512_permutex2var_epi16(r0, lo_idx, r1));
                    _mm512_storeu_si512(vpair + 2 * x + 32, _mm512_permutex2var_epi16(r0, hi_idx, r1));
                } else {
                    for (int y = x; y < dv; y++) {
                        vpair[2 * y] = v0[y];
                        vpair[2 * y + 1] = v1[y];
                    }
                }
            }
        }
        uint32_t *kblk = (uint32_t *)(kp + j0 / a->kbw * (int64_t)dp * a->kbw) + j0 % a->kbw;
        for (int x0 = 0; x0 < np; x0 += 16) {
            __m512i r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) r[i] = _mm512_load_si512(kr + i * np16 + x0);
            tr16x16(r);
            for (int i = 0; i < 16 && x0 + i < np; i++) _mm512_store_si512(kblk + (int64_t)(x0 + i) * a->kbw, r[i]);
        }
    }
}

/* s[r][0..nvk) = scores of BF_R rows against the block's first 16 * nvk keys. */
AVX512BF16 static INLINE void bf_qk(const uint32_t *q32, int dp2, const uint16_t *kblk, int kbw, int nvk,
                                    __m512 s[BF_R][BF_NV]) {
    #pragma GCC unroll 5
    for (int r = 0; r < BF_R; r++)
        #pragma GCC unroll 5
        for (int v = 0; v < BF_NV; v++) s[r][v] = _mm512_setzero_ps();
    for (int x = 0; x < dp2; x++) {
        const uint16_t *kx = kblk + x * kbw * 2;
        __m512bh kv[BF_NV];
        #pragma GCC unroll 5
        for (int v = 0; v < nvk; v++) kv[v] = (__m512bh)_mm512_load_si512(kx + v * 32);
        #pragma GCC unroll 5
        for (int r = 0; r < BF_R; r++) {
            __m512bh qv = (__m512bh)_mm512_set1_epi32((int)q32[r * dp2 + x]);
            #pragma GCC unroll 5
            for (int v = 0; v < nvk; v++) s[r][v] = _mm512_dpbf16_ps(s[r][v], qv, kv[v]);
        }
    }
}

/* Online softmax of BF_R rows held in s (log2 units); nvalid[r] keys count in row r. Writes the
 * bf16 probabilities to pb [BF_R][BF_PB], adds them to the 16-lane sums l [BF_R][16] and, when a
 * row's reference max moves, rescales that row's sum and output (o, rows of dv floats). */
AVX512BF16 static INLINE void bf_softmax(__m512 s[BF_R][BF_NV], int nvk, const int *nvalid, float *m, float *l,
                                         uint16_t *pb, float *o, int dv) {
    #pragma GCC unroll 5
    for (int r = 0; r < BF_R; r++) {
        __mmask16 mk[BF_NV];
        #pragma GCC unroll 5
        for (int v = 0; v < nvk; v++) {
            int n = nvalid[r] - 16 * v;
            mk[v] = n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
        }
        const __m512 lim = _mm512_set1_ps(m[r] + ATT_SLACK);
        __mmask16 over = 0;
        #pragma GCC unroll 5
        for (int v = 0; v < nvk; v++) over |= _mm512_mask_cmp_ps_mask(mk[v], s[r][v], lim, _CMP_GT_OQ);
        __m512 vl = _mm512_load_ps(l + r * 16);
        if (over) {
            __m512 mx = _mm512_set1_ps(-INFINITY);
            #pragma GCC unroll 5
            for (int v = 0; v < nvk; v++) mx = _mm512_mask_max_ps(mx, mk[v], mx, s[r][v]);
            float mnew = _mm512_reduce_max_ps(mx);
            if (m[r] != -INFINITY) {
                __m512 va = exp2_16_bf(0xffff, _mm512_set1_ps(m[r] - mnew));
                vl = _mm512_mul_ps(vl, va);
                float *orow = o + (int64_t)r * dv;
                for (int c = 0; c < dv; c += 16) _mm512_store_ps(orow + c, _mm512_mul_ps(_mm512_load_ps(orow + c), va));
            }
            m[r] = mnew;
        }
        const __m512 vm = _mm512_set1_ps(m[r]);
        __m512 e[BF_NV];
        #pragma GCC unroll 5
        for (int v = 0; v < nvk; v++) {
            e[v] = exp2_16_bf(mk[v], _mm512_sub_ps(s[r][v], vm));
            vl = _mm512_add_ps(vl, e[v]);
        }
        _mm512_store_ps(l + r * 16, vl);
        uint16_t *prow = pb + r * BF_PB;
        #pragma GCC unroll 5
        for (int v = 0; v + 1 < nvk; v += 2) _mm512_store_si512(prow + v * 16, (__m512i)_mm512_cvtne2ps_pbh(e[v + 1], e[v]));
        if (nvk & 1) _mm256_store_si256((__m256i *)(prow + (nvk - 1) * 16), (__m256i)_mm512_cvtneps_pbh(e[nvk - 1]));
    }
}

/* o[r][c .. c + 16 nvd) += P[r] V for BF_R rows over npair key pairs; vblk points at the block's
 * first key pair, at column c. */
AVX512BF16 static INLINE void bf_pv(const uint16_t *pb, const uint16_t *vblk, int dv, int npair, float *o, int nvd) {
    __m512 acc[BF_R][4];
    #pragma GCC unroll 5
    for (int r = 0; r < BF_R; r++)
        #pragma GCC unroll 5
        for (int v = 0; v < nvd; v++) acc[r][v] = _mm512_load_ps(o + (int64_t)r * dv + v * 16);
    const uint32_t *p32 = (const uint32_t *)pb;
    for (int j = 0; j < npair; j++) {
        const uint16_t *vr = vblk + (int64_t)j * dv * 2;
        __m512bh vv[4];
        #pragma GCC unroll 5
        for (int v = 0; v < nvd; v++) vv[v] = (__m512bh)_mm512_load_si512(vr + v * 32);
        #pragma GCC unroll 5
        for (int r = 0; r < BF_R; r++) {
            __m512bh pv = (__m512bh)_mm512_set1_epi32((int)p32[r * (BF_PB / 2) + j]);
            #pragma GCC unroll 5
            for (int v = 0; v < nvd; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], pv, vv[v]);
        }
    }
    #pragma GCC unroll 5
    for (int r = 0; r < BF_R; r++)
        #pragma GCC unroll 5
        for (int v = 0; v < nvd; v++) _mm512_store_ps(o + (int64_t)r * dv + v * 16, acc[r][v]);
}

/* One row group against one key block: the three steps with nvk (1..4) known to the compiler. */
AVX512BF16 static INLINE void bf_group(const att_shape *a, const uint32_t *q32, const uint16_t *kblk,
                                       const uint16_t *vblk, int nvk, const int *nvalid, float *m, float *l,
                                       uint16_t *pb, float *o) {
    const int dv = a->dv;
    __m512 s[BF_R][BF_NV];
    bf_qk(q32, a->dp / 2, kblk, a->kbw, nvk, s);
    bf_softmax(s, nvk, nvalid, m, l, pb, o, dv);
    const int npair = nvk * 8;
    int c = 0;
    for (; c + 64 <= dv; c += 64) bf_pv(pb, vblk + c * 2, dv, npair, o + c, 4);
    switch ((dv - c) / 16) {
    case 3: bf_pv(pb, vblk + c * 2, dv, npair, o + c, 3); break;
    case 2: bf_pv(pb, vblk + c * 2, dv, npair, o + c, 2); break;
    case 1: bf_pv(pb, vblk + c * 2, dv, npair, o + c, 1); break;
    default: break;
    }
}

AVX512BF16 static void bf_group_n(const att_shape *a, const uint32_t *q32, const uint16_t *kblk, const uint16_t *vblk,
                                  int nvk, const int *nvalid, float *m, float *l, uint16_t *pb, float *o) {
    switch (nvk) {
    case 4: bf_group(a, q32, kblk, vblk, 4, nvalid, m, l, pb, o); break;
    case 3: bf_group(a, q32, kblk, vblk, 3, nvalid, m, l, pb, o); break;
    case 2: bf_group(a, q32, kblk, vblk, 2, nvalid, m, l, pb, o); break;
    default: bf_group(a, q32, kblk, vblk, 1, nvalid, m, l, pb, o); break;
    }
}

/* o = P V over npair key pairs from zero, then row r scaled by inv[r] and stored to dst[r]
 * (columns [c, c + 16 nvd) of which the first ncol are kept). */
AVX512BF16 static INLINE void bf_pv_out(const uint16_t *pb, const uint16_t *vp, int dv, int npair, int nvd, int ncol,
                                        const float *inv, char *const *dst, int obf, int nrows) {
    __m512 acc[BF_R][4];
#pragma GCC unroll 5
    for (int r = 0; r < BF_R; r++)
#pragma GCC unroll 5
        for (int v = 0; v < nvd; v++) acc[r][v] = _mm512_setzero_ps();
    const uint32_t *p32 = (const uint32_t *)pb;
    for (int j = 0; j < npair; j++) {
        const uint16_t *vr = vp + (int64_t)j * dv * 2;
        __m512bh vv[4];
#pragma GCC unroll 5
        for (int v = 0; v < nvd; v++) vv[v] = (__m512bh)_mm512_load_si512(vr + v * 32);
#pragma GCC unroll 5
        for (int r = 0; r < BF_R; r++) {
            __m512bh pv = (__m512bh)_mm512_set1_epi32((int)p32[r * (BF_PB / 2) + j]);
#pragma GCC unroll 5
            for (int v = 0; v < nvd; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], pv, vv[v]);
        }
    }
#pragma GCC unroll 5
    for (int r = 0; r < BF_R; r++) {
        if (r >= nrows) break;
        __m512 vi = _mm512_set1_ps(inv[r]);
#pragma GCC unroll 5
        for (int v = 0; v < nvd; v++) {
            int n = ncol - 16 * v;
            __mmask16 mk = n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
            __m512 y = _mm512_mul_ps(acc[r][v], vi);
            if (obf) _mm256_mask_storeu_epi16((uint16_t *)(void *)dst[r] + v * 16, mk, (__m256i)_mm512_cvtneps_pbh(y));
            else _mm512_mask_storeu_ps((float *)(void *)dst[r] + v * 16, mk, y);
        }
    }
}

/* All keys in one block (lk <= 16 * BF_NV): the softmax is exact in one pass, and P V goes
 * straight to the output rows, normalised, without an accumulator tile. */
AVX512BF16 static INLINE void bf_group_single(const att_shape *a, const uint32_t *q32, const uint16_t *kp,
                                              const uint16_t *vp, int nvk, const int *nvalid, float *l, uint16_t *pb,
                                              char *const *dst, int nrows) {
    const int dv = a->dv, d = a->d, obf = a->outb != NULL, es = obf ? 2 : 4;
    __m512 s[BF_R][BF_NV];
    float m[BF_R] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, inv[BF_R];
    memset(l, 0, BF_R * 16 * 4);
    bf_qk(q32, a->dp / 2, kp, a->kbw, nvk, s);
    bf_softmax(s, nvk, nvalid, m, l, pb, NULL, dv);
    for (int r = 0; r < BF_R; r++) inv[r] = 1.0f / _mm512_reduce_add_ps(_mm512_load_ps(l + r * 16));
    const int npair = nvk * 8;
    char *drow[BF_R];
    int c = 0;
    for (; c + 64 <= dv; c += 64) {
        for (int r = 0; r < BF_R; r++) drow[r] = dst[r] + c * es;
        bf_pv_out(pb, vp + c * 2, dv, npair, 4, d - c, inv, drow, obf, nrows);
    }
    for (int r = 0; r < BF_R; r++) drow[r] = dst[r] + c * es;
    switch ((dv - c) / 16) {
    case 3: bf_pv_out(pb, vp + c * 2, dv, npair, 3, d - c, inv, drow, obf, nrows); break;
    case 2: bf_pv_out(pb, vp + c * 2, dv, npair, 2, d - c, inv, drow, obf, nrows); break;
    case 1: bf_pv_out(pb, vp + c * 2, dv, npair, 1, d - c, inv, drow, obf, nrows); break;
    default: break;
    }
}

AVX512BF16 static void bf_group_single_n(const att_shape *a, const uint32_t *q32, const uint16_t *kp,
                                         const uint16_t *vp, int nvk, const int *nvalid, float *l, uint16_t *pb,
                                         char *const *dst, int nrows) {
    switch (nvk) {
    case 5: bf_group_single(a, q32, kp, vp, 5, nvalid, l, pb, dst, nrows); break;
    case 4: bf_group_single(a, q32, kp, vp, 4, nvalid, l, pb, dst, nrows); break;
    case 3: bf_group_single(a, q32, kp, vp, 3, nvalid, l, pb, dst, nrows); break;
    case 2: bf_group_single(a, q32, kp, vp, 2, nvalid, l, pb, dst, nrows); break;
    default: bf_group_single(a, q32, kp, vp, 1, nvalid, l, pb, dst, nrows); break;
    }
}

/* One task in bf16: queries [q0, q0+nr) of (b, h); K and V packed by pack_bf16_64. */
/* Pre-scaled bf16 queries of heads [h0, h0 + nh) for rows [q0, q0 + rows) into qb [nh][rows][dp];
 * rows past nr repeat the last one (computed, never stored). Each row is read front to back. */
AVX512BF16 static void bf_load_q(const att_shape *a, int64_t b, int h0, int nh, int64_t q0, int nr, int rows,
                                 uint16_t *qb) {
    const int d = a->d, dp = a->dp;
    const __m512 sc = _mm512_set1_ps(a->scale_log2);
    for (int i = 0; i < rows; i++) {
        int ii = i < nr ? i : nr - 1;
        for (int h = h0; h < h0 + nh; h++) {
            const float *src = a->q + (b * a->lq + q0 + ii) * a->q_ld + (int64_t)h * d;
            uint16_t *qd = qb + ((int64_t)(h - h0) * rows + i) * dp;
            for (int x = 0; x < d; x += 16) {
                __mmask16 mk = d - x >= 16 ? 0xffff : (__mmask16)((1u << (d - x)) - 1);
                __m256bh bq = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, src + x), sc));
                _mm256_mask_storeu_epi16(qd + x, mk, (__m256i)bq);
            }
            if (dp > d) qd[d] = 0;
        }
    }
}

/* One task in bf16: queries [q0, q0+nr) of (b, h), already in qb (bf_load_q); K and V packed by
 * pack_bf16_64. */
AVX512BF16 static void tile_bf16(const att_shape *a, int64_t b, int h, int64_t q0, int nr, const uint16_t *qb,
                                 att_tls *t) {
    const uint16_t *kp = (const uint16_t *)t->kp, *vp = (const uint16_t *)t->vp;
    if (a->allheads) {
        kp += (size_t)h * kpack_bytes(a) / 2;
        vp += (size_t)h * vpack_bytes(a) / 2;
    }
    const int d = a->d, dp = a->dp, dv = a->dv;
    const int ngr = (nr + BF_R - 1) / BF_R, rows = ngr * BF_R;
    int64_t kend = a->lk;
    if (a->causal && q0 + nr < kend) kend = q0 + nr;
    uint16_t *pb = (uint16_t *)t->p;
    if (a->single) {
        const int nvk = (int)((kend + 15) / 16), hn = h + 1 < a->heads ? h + 1 : 0;
        for (int g = 0; g < ngr; g++) {
            int nvalid[BF_R];
            char *dst[BF_R];
            for (int r = 0; r < BF_R; r++) {
                int i = g * BF_R + r, ii = i < nr ? i : nr - 1;
                int64_t lim = a->causal ? q0 + ii + 1 : kend;
                nvalid[r] = (int)(lim < kend ? lim : kend);
                dst[r] = out_at(a, b, q0 + ii, h);
            }
            int nrows = nr - g * BF_R < BF_R ? nr - g * BF_R : BF_R;
            /* With few keys a task is short: fetch the output rows of the next task (the next
             * head of the same rows) for writing, which the hardware prefetcher does not foresee. */
            for (int r = 0; a->allheads && r < BF_R; r++) {
                int64_t qi = q0 + g * BF_R + r + (hn ? 0 : ATT_BQ);
                if (qi >= a->lq) break;
                char *on = out_at(a, b, qi, hn);
                for (int x = 0; x < d * (a->outb ? 2 : 4); x += 64) __builtin_prefetch(on + x, 1, 3);
            }
            bf_group_single_n(a, (const uint32_t *)(qb + (int64_t)g * BF_R * dp), kp, vp, nvk, nvalid, t->l, pb,
                              dst, nrows);
        }
        return;
    }
    for (int i = 0; i < rows; i++) t->m[i] = -INFINITY;
    memset(t->l, 0, (size_t)rows * 16 * 4);
    memset(t->o, 0, (size_t)rows * dv * 4);
    for (int64_t k0 = 0; k0 < kend; k0 += BF_BK) {
        int nk = (int)(kend - k0 < BF_BK ? kend - k0 : BF_BK);
        int nvk = (nk + 15) / 16;
        const uint16_t *kblk = kp + (k0 / BF_BK) * (int64_t)dp * BF_BK; /* kbw == BF_BK here */
        const uint16_t *vblk = vp + k0 * (int64_t)dv;
        for (int g = 0; g < ngr; g++) {
            int nvalid[BF_R];
            for (int r = 0; r < BF_R; r++) {
                nvalid[r] = nk;
                if (a->causal) {
                    int i = g * BF_R + r;
                    int64_t lim = q0 + (i < nr ? i : nr - 1) - k0 + 1;
                    if (lim < nvalid[r]) nvalid[r] = (int)(lim < 0 ? 0 : lim);
                }
            }
            bf_group_n(a, (const uint32_t *)(qb + (int64_t)g * BF_R * dp), kblk, vblk, nvk, nvalid,
                       t->m + g * BF_R, t->l + (int64_t)g * BF_R * 16, pb, t->o + (int64_t)g * BF_R * dv);
        }
    }
    for (int i = 0; i < nr; i++) {
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_load_ps(t->l + (int64_t)i * 16)));
        char *dst = out_at(a, b, q0 + i, h);
        const float *o = t->o + (int64_t)i * dv;
        for (int x = 0; x < d; x += 16) {
            __mmask16 mk = d - x >= 16 ? 0xffff : (__mmask16)((1u << (d - x)) - 1);
            __m512 y = _mm512_mul_ps(_mm512_load_ps(o + x), inv);
            if (a->outb) _mm256_mask_storeu_epi16((uint16_t *)(void *)dst + x, mk, (__m256i)_mm512_cvtneps_pbh(y));
            else _mm512_mask_storeu_ps((float *)(void *)dst + x, mk, y);
        }
    }
}

/* ---- portable path: the same algorithm, one query row at a time ----------------------------- */

static void tile_c(const att_shape *a, int64_t b, int h, int64_t q0, int nr, att_tls *t) {
    const int d = a->d;
    const float scale = a->scale_log2;
    for (int i = 0; i < nr; i++) {
        int64_t qi = q0 + i;
        const float *q = a->q + (b * a->lq + qi) * a->q_ld + (int64_t)h * d;
        float m = -INFINITY, l = 0, *o = t->o, *s = t->s;
        memset(o, 0, (size_t)d * 4);
        int64_t kend = a->causal && qi + 1 < a->lk ? qi + 1 : a->lk;
        for (int64_t k0 = 0; k0 < kend; k0 += ATT_BK) {
            int nk = (int)(kend - k0 < ATT_BK ? kend - k0 : ATT_BK);
            float mx = m;
            for (int j = 0; j < nk; j++) {
                const float *k = a->k + (b * a->lk + k0 + j) * a->kv_ld + (int64_t)h * d;
                float acc = 0;
                for (int x = 0; x < d; x++) acc += q[x] * k[x];
                s[j] = acc * scale;
                if (s[j] > mx) mx = s[j];
            }
            float alpha = m == -INFINITY ? 0.0f : exp2f(m - mx);
            l *= alpha;
            for (int x = 0; x < d; x++) o[x] *= alpha;
            for (int j = 0; j < nk; j++) {
                const float *v = a->v + (b * a->lk + k0 + j) * a->kv_ld + (int64_t)h * d;
                float p = exp2f(s[j] - mx);
                l += p;
                for (int x = 0; x < d; x++) o[x] += p * v[x];
            }
            m = mx;
        }
        float *dst = a->out + (b * a->lq + qi) * a->out_ld + (int64_t)h * d;
        for (int x = 0; x < d; x++) dst[x] = o[x] / l;
    }
}

/* ---- entry ---------------------------------------------------------------------------------- */

static int attention(sdxl_compute *c, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                     float *out, uint16_t *outb, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads,
                     int head_dim, float scale, int causal, sdxl_err *e) {
    if (batch < 0 || lq < 0 || lk < 0 || heads <= 0 || head_dim <= 0 || head_dim > 2048)
        return sdxl_seterr(e, SDXL_ERR_ARG, "attention: bad shape batch=%lld lq=%lld lk=%lld heads=%d head_dim=%d",
                           (long long)batch, (long long)lq, (long long)lk, heads, head_dim);
    if (outb && (sdxl_compute_dev(c) || sdxl_simd_level() < 2 || sdxl_compute_prec(c) != SDXL_PREC_BF16))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "attention: bf16 output needs the bf16 CPU kernel");
    if (sdxl_compute_dev(c))
        return sdxl_dev_attention(sdxl_compute_dev(c), q, q_ld, k, v, kv_ld, out, out_ld, batch, lq, lk, heads, head_dim,
                                  scale, causal, e);
    if (batch == 0 || lq == 0) return SDXL_OK;
    if (lk == 0) return sdxl_seterr(e, SDXL_ERR_ARG, "attention: no keys (lk=0)");
    int64_t hd = (int64_t)heads * head_dim;
    if (q_ld < hd || kv_ld < hd || out_ld < hd)
        return sdxl_seterr(e, SDXL_ERR_ARG, "attention: row strides q=%lld kv=%lld out=%lld below heads*head_dim=%lld",
                           (long long)q_ld, (long long)kv_ld, (long long)out_ld, (long long)hd);
    if (lk > (INT64_C(1) << 31) || lq > (INT64_C(1) << 40) / (batch > 0 ? batch : 1))
        return sdxl_seterr(e, SDXL_ERR_ARG, "attention: too many tokens");
    if (!(scale == scale)) return sdxl_seterr(e, SDXL_ERR_ARG, "attention: scale is NaN");

    const int simd = sdxl_simd_level();
    att_shape a = {.q = q, .k = k, .v = v, .out = out, .outb = outb, .q_ld = q_ld, .kv_ld = kv_ld, .out_ld = out_ld,
                   .lq = lq, .lk = lk, .heads = heads, .d = head_dim, .causal = causal != 0};
    a.dp = (head_dim + 1) & ~1;
    a.dv = (head_dim + 15) & ~15;
    a.scale_log2 = scale * 1.4426950408889634f;
    a.bf16 = simd >= 2 && sdxl_compute_prec(c) == SDXL_PREC_BF16;
    if (a.bf16) {
        a.kbw = lk <= 16 * BF_NV ? (int)((lk + 15) & ~15) : BF_BK;
        a.lkp = (lk + a.kbw - 1) / a.kbw * a.kbw;
        a.single = a.kbw >= a.lkp;
        /* every head at once while that stays small (SDXL: 10 or 20 heads, 0.3 to 0.6 MB) */
        a.allheads = a.single && (size_t)heads * (kpack_bytes(&a) + vpack_bytes(&a)) <= ((size_t)8 << 20);
    } else {
        a.lkp = (lk + ATT_KB - 1) / ATT_KB * ATT_KB;
    }

    int nthr = omp_get_max_threads();
    size_t per = simd ? tls_bytes(&a) : align64(ATT_BK * 4) + align64((size_t)head_dim * 4);
    if (per > SIZE_MAX / (size_t)nthr) return sdxl_seterr(e, SDXL_ERR_NOMEM, "attention: scratch too large");
    sdxl_buf *buf = sdxl_compute_attn_buf(c);
    if (sdxl_buf_reserve(buf, per * (size_t)nthr))
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "attention: cannot allocate %zu bytes of tiles", per * (size_t)nthr);

    const int64_t ntile = (lq + ATT_BQ - 1) / ATT_BQ, ntask = batch * heads * ntile;
#pragma omp parallel num_threads(nthr)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        att_tls t;
        char *base = (char *)buf->p + per * (size_t)tid;
        if (simd) {
            tls_carve(&a, base, &t);
        } else {
            memset(&t, 0, sizeof t);
            t.s = (float *)base;
            t.o = (float *)(base + align64(ATT_BK * 4));
        }
        /* Contiguous task ranges keep a thread on one head, so it packs K and V rarely. With
         * one short key block, tasks run head-fastest instead: a tile's query and output rows
         * are then read and written whole, and every head's K and V are packed together. */
        int64_t t0 = ntask * tid / nt, t1 = ntask * (tid + 1) / nt, packed = -1, qtile = -1;
        for (int64_t task = t0; task < t1; task++) {
            int64_t bh, tile, b;
            int h;
            if (a.allheads) {
                b = task / (ntile * heads);
                tile = task / heads % ntile;
                h = (int)(task % heads);
                bh = b * heads + h;
                if (packed != b) {
                    for (int hh = 0; hh < heads; hh++)
                        pack_bf16_64(&a, k + b * lk * kv_ld + (int64_t)hh * head_dim,
                                     v + b * lk * kv_ld + (int64_t)hh * head_dim,
                                     (uint16_t *)t.kp + (size_t)hh * kpack_bytes(&a) / 2,
                                     (uint16_t *)t.vp + (size_t)hh * vpack_bytes(&a) / 2, t.stage);
                    packed = b;
                }
            } else {
                bh = task / ntile, tile = task % ntile, b = bh / heads;
                h = (int)(bh % heads);
            }
            int64_t q0 = tile * ATT_BQ;
            int nr = (int)(lq - q0 < ATT_BQ ? lq - q0 : ATT_BQ);
            if (!simd) {
                tile_c(&a, b, h, q0, nr, &t);
                continue;
            }
            if (!a.allheads && packed != bh) {
                const float *kh = k + b * lk * kv_ld + (int64_t)h * head_dim;
                const float *vh = v + b * lk * kv_ld + (int64_t)h * head_dim;
                if (a.bf16) pack_bf16_64(&a, kh, vh, t.kp, t.vp, t.stage);
                else pack_f32(&a, kh, vh, t.kp, t.vp);
                packed = bh;
            }
            if (a.bf16) {
                int rows = (nr + BF_R - 1) / BF_R * BF_R;
                if (!a.allheads) {
                    bf_load_q(&a, b, h, 1, q0, nr, rows, t.qb);
                } else if (qtile != b * ntile + tile) {
                    bf_load_q(&a, b, 0, heads, q0, nr, rows, t.qb);
                    qtile = b * ntile + tile;
                }
                tile_bf16(&a, b, h, q0, nr, t.qb + (a.allheads ? (int64_t)h * rows * a.dp : 0), &t);
            }
            else tile_avx512(&a, b, h, q0, nr, &t);
        }
    }
    return SDXL_OK;
}

int sdxl_attention(sdxl_compute *c, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                   float *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads, int head_dim,
                   float scale, int causal, sdxl_err *e) {
    return attention(c, q, q_ld, k, v, kv_ld, out, NULL, out_ld, batch, lq, lk, heads, head_dim, scale, causal, e);
}

int sdxl_attention_bf16(sdxl_compute *c, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                        uint16_t *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads, int head_dim,
                        float scale, int causal, sdxl_err *e) {
    return attention(c, q, q_ld, k, v, kv_ld, NULL, out, out_ld, batch, lq, lk, heads, head_dim, scale, causal, e);
}
