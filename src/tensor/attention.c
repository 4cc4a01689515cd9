/* Flash-style multi-head attention.
 *
 * Work is split into tasks (batch, head, tile of ATT_BQ queries) run in parallel. A thread packs
 * the keys and values of the head it works on once (keys transposed so a vector holds 16 keys;
 * in bf16, key and value pairs interleaved for vdpbf16ps), then walks the keys in blocks of
 * ATT_BK: scores S = Q K^T for the tile, an online softmax (running max m and sum l per row,
 * rescaling the output accumulator when the max grows), and O += P V. Scores exist only for one
 * tile x block, so memory grows with lk, never lk^2. Exponentials are 2^x with the softmax
 * scale folded into log2(e), evaluated by a degree-7 polynomial accurate to ~1 ulp. */
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
    int64_t q_ld, kv_ld, out_ld, lq, lk;
    int heads, d;
    int dp;  /* d rounded up to even (bf16 pairs) */
    int dv;  /* d rounded up to 16 (output vectors) */
    int64_t lkp; /* lk rounded up to ATT_KB */
    float scale_log2; /* scale * log2(e) */
    int causal, bf16;
} att_shape;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Per-thread scratch: packed K and V of one head, the tile's bf16 queries, scores,
 * probabilities, output accumulator, running max and sum. */
typedef struct att_tls {
    void *kp, *vp;
    uint16_t *qb;
    float *s, *o, *m, *l;
    void *p;
} att_tls;

static size_t tls_bytes(const att_shape *a) {
    size_t el = a->bf16 ? 2 : 4;
    return align64((size_t)a->lkp * (size_t)a->dp * el) + align64((size_t)a->lkp * (size_t)a->dv * el) +
           align64((size_t)ATT_BQ * (size_t)a->dp * 2) + align64(ATT_BQ * ATT_BK * 4) +
           align64(ATT_BQ * ATT_BK * 4) + align64((size_t)ATT_BQ * (size_t)a->dv * 4) + align64(ATT_BQ * 4) +
           align64(ATT_BQ * 16 * 4);
}

static void tls_carve(const att_shape *a, char *base, att_tls *t) {
    size_t el = a->bf16 ? 2 : 4;
    t->kp = base;
    base += align64((size_t)a->lkp * (size_t)a->dp * el);
    t->vp = base;
    base += align64((size_t)a->lkp * (size_t)a->dv * el);
    t->qb = (uint16_t *)base;
    base += align64((size_t)ATT_BQ * (size_t)a->dp * 2);
    t->s = (float *)base;
    base += align64(ATT_BQ * ATT_BK * 4);
    t->p = base;
    base += align64(ATT_BQ * ATT_BK * 4);
    t->o = (float *)base;
    base += align64((size_t)ATT_BQ * (size_t)a->dv * 4);
    t->m = (float *)base;
    base += align64(ATT_BQ * 4);
    t->l = (float *)base; /* [ATT_BQ][16]: per-row sums kept as 16 lanes until the end */
}

/* ---- packing ----------------------------------------------------------------------------
 * f32:  K block kb: [d][ATT_KB] floats (transposed);  V: [lkp][dv] floats.
 * bf16: K block kb: [dp/2][ATT_KB][2];  V block of key pairs: [lkp/2][dv][2].
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

AVX512BF16 static void pack_bf16(const att_shape *a, const float *k, const float *v, uint16_t *kp, uint16_t *vp) {
    const int d = a->d, dp = a->dp, dv = a->dv;
    uint16_t row[2 * 2048 + 32];
    uint16_t *kr16 = row, *vr16 = row + dp;
    for (int64_t j = 0; j < a->lkp; j++) {
        int64_t kb = j / ATT_KB, jj = j % ATT_KB;
        uint16_t *kblk = kp + kb * (int64_t)dp * ATT_KB;
        memset(row, 0, (size_t)(dp + dv) * 2);
        if (j < a->lk) {
            row_bf16(k + j * a->kv_ld, kr16, d);
            row_bf16(v + j * a->kv_ld, vr16, d);
        }
        for (int x = 0; x < dp; x += 2) {
            kblk[(x / 2) * ATT_KB * 2 + jj * 2] = kr16[x];
            kblk[(x / 2) * ATT_KB * 2 + jj * 2 + 1] = kr16[x + 1];
        }
        uint16_t *vpair = vp + (j / 2) * (int64_t)dv * 2;
        for (int x = 0; x < dv; x++) vpair[x * 2 + (j & 1)] = vr16[x];
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

AVX512BF16 static void qk_bf16_8x32(const uint16_t *qb, int dp, const uint16_t *kblk, float *s, int s_ld, int nv) {
    __m512 acc[ATT_R][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATT_R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint32_t *q32 = (const uint32_t *)qb;
    for (int x = 0; x < dp / 2; x++) {
        __m512bh k0 = (__m512bh)_mm512_load_si512(kblk + x * ATT_KB * 2);
        __m512bh k1 = nv > 1 ? (__m512bh)_mm512_load_si512(kblk + x * ATT_KB * 2 + 32) : (__m512bh)_mm512_setzero_si512();
#pragma GCC unroll 8
        for (int r = 0; r < ATT_R; r++) {
            __m512bh qv = (__m512bh)_mm512_set1_epi32((int)q32[r * (dp / 2) + x]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], qv, k0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], qv, k1);
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

AVX512BF16 static void pv_bf16_8(const uint16_t *p, int p_ld, const uint16_t *vp, int dv, int c, int nk, float *o,
                                 int nv) {
    __m512 acc[ATT_R][2];
#pragma GCC unroll 8
    for (int r = 0; r < ATT_R; r++) {
        acc[r][0] = _mm512_load_ps(o + r * dv + c);
        acc[r][1] = nv > 1 ? _mm512_load_ps(o + r * dv + c + 16) : _mm512_setzero_ps();
    }
    for (int j = 0; j < nk / 2; j++) {
        const uint16_t *vr = vp + ((int64_t)j * dv + c) * 2;
        __m512bh v0 = (__m512bh)_mm512_load_si512(vr);
        __m512bh v1 = nv > 1 ? (__m512bh)_mm512_load_si512(vr + 32) : (__m512bh)_mm512_setzero_si512();
#pragma GCC unroll 8
        for (int r = 0; r < ATT_R; r++) {
            uint32_t pair;
            memcpy(&pair, p + r * p_ld + 2 * j, 4);
            __m512bh pv = (__m512bh)_mm512_set1_epi32((int)pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], pv, v0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], pv, v1);
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

AVX512BF16 static void softmax_row_avx512(const att_shape *a, float *s, int nkp, int nvalid, float *m, float *l,
                                          void *p, float *o) {
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
        if (a->bf16)
            _mm256_storeu_si256((__m256i *)((uint16_t *)p + j), (__m256i)_mm512_cvtneps_pbh(e));
        else
            _mm512_storeu_ps((float *)p + j, e);
    }
    _mm512_store_ps(l, vl);
}

/* One task: queries [q0, q0+nr) of (b, h), keys and values already packed in t. */
AVX512BF16 static void tile_avx512(const att_shape *a, int64_t b, int h, int64_t q0, int nr, att_tls *t) {
    const int d = a->d, dp = a->dp, dv = a->dv;
    const int ngr = (nr + ATT_R - 1) / ATT_R, rows = ngr * ATT_R;
    const float *qrow[ATT_BQ];
    for (int i = 0; i < rows; i++) {
        int ii = i < nr ? i : nr - 1;
        qrow[i] = a->q + (b * a->lq + q0 + ii) * a->q_ld + (int64_t)h * d;
    }
    if (a->bf16) {
        for (int i = 0; i < rows; i++) {
            uint16_t *qd = t->qb + (int64_t)i * dp;
            row_bf16(qrow[i], qd, d);
            if (dp > d) qd[d] = 0;
        }
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
                if (a->bf16)
                    qk_bf16_8x32(t->qb + (int64_t)g * ATT_R * dp, dp, (const uint16_t *)t->kp + blk * dp * ATT_KB, s,
                                 ATT_BK, nv);
                else
                    qk_f32_8x32(qrow + g * ATT_R, (const float *)t->kp + blk * d * ATT_KB, d, s, ATT_BK, nv);
            }
        }
        for (int i = 0; i < rows; i++) {
            int nvalid = nk;
            if (a->causal) {
                int64_t lim = q0 + (i < nr ? i : nr - 1) - k0 + 1;
                if (lim < nvalid) nvalid = (int)(lim < 0 ? 0 : lim);
            }
            void *prow = a->bf16 ? (void *)((uint16_t *)t->p + i * ATT_BK) : (void *)((float *)t->p + i * ATT_BK);
            softmax_row_avx512(a, t->s + i * ATT_BK, nkp, nvalid, t->m + i, t->l + (int64_t)i * 16, prow,
                               t->o + (int64_t)i * dv);
        }
        for (int g = 0; g < ngr; g++) {
            float *o = t->o + (int64_t)g * ATT_R * dv;
            for (int c = 0; c < dv; c += 32) {
                int nv = dv - c >= 32 ? 2 : 1;
                if (a->bf16)
                    pv_bf16_8((const uint16_t *)t->p + g * ATT_R * ATT_BK, ATT_BK,
                              (const uint16_t *)t->vp + k0 * dv, dv, c, nkp, o, nv);
                else
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

int sdxl_attention(sdxl_compute *c, const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld,
                   float *out, int64_t out_ld, int64_t batch, int64_t lq, int64_t lk, int heads, int head_dim,
                   float scale, int causal, sdxl_err *e) {
    if (batch < 0 || lq < 0 || lk < 0 || heads <= 0 || head_dim <= 0 || head_dim > 2048)
        return sdxl_seterr(e, SDXL_ERR_ARG, "attention: bad shape batch=%lld lq=%lld lk=%lld heads=%d head_dim=%d",
                           (long long)batch, (long long)lq, (long long)lk, heads, head_dim);
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
    att_shape a = {q, k, v, out, q_ld, kv_ld, out_ld, lq, lk, heads, head_dim, 0, 0, 0, 0, causal != 0, 0};
    a.dp = (head_dim + 1) & ~1;
    a.dv = (head_dim + 15) & ~15;
    a.lkp = (lk + ATT_KB - 1) / ATT_KB * ATT_KB;
    a.scale_log2 = scale * 1.4426950408889634f;
    a.bf16 = simd >= 2 && sdxl_compute_prec(c) == SDXL_PREC_BF16;

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
        /* Contiguous task ranges keep a thread on one head, so it packs K and V rarely. */
        int64_t t0 = ntask * tid / nt, t1 = ntask * (tid + 1) / nt, packed = -1;
        for (int64_t task = t0; task < t1; task++) {
            int64_t bh = task / ntile, tile = task % ntile, b = bh / heads;
            int h = (int)(bh % heads);
            int64_t q0 = tile * ATT_BQ;
            int nr = (int)(lq - q0 < ATT_BQ ? lq - q0 : ATT_BQ);
            if (!simd) {
                tile_c(&a, b, h, q0, nr, &t);
                continue;
            }
            if (packed != bh) {
                const float *kh = k + b * lk * kv_ld + (int64_t)h * head_dim;
                const float *vh = v + b * lk * kv_ld + (int64_t)h * head_dim;
                if (a.bf16) pack_bf16(&a, kh, vh, t.kp, t.vp);
                else pack_f32(&a, kh, vh, t.kp, t.vp);
                packed = bh;
            }
            tile_avx512(&a, b, h, q0, nr, &t);
        }
    }
    return SDXL_OK;
}
