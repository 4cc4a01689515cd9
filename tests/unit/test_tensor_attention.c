/* Flash attention against the naive softmax(Q K^T * scale) V in double: self and cross (lk=77),
 * causal, odd sizes and head dims, strided heads inside fused rows, bf16 and f32, AVX-512 and
 * portable; and a check that memory does not grow with lq * lk.
 *
 * Thresholds (NMSE against the double reference):
 *  - f32 1e-10: scores are d-term f32 dot products (NMSE ~ d eps^2 ~ 1e-13), the exponential
 *    is accurate to ~1 ulp and the weighted sum of values adds ~lk eps^2; all far below 1e-10.
 *  - bf16 1e-4: q, k, v and the probabilities are rounded to bf16 (2.3e-3 relative RMS each).
 *    Score errors (~2.3e-3 * |s|, |s| up to a few units here) perturb the weights by about that
 *    much again, so NMSE of the output is ~1e-5 to 3e-5; 1e-4 bounds it with margin, while a
 *    wrong mask, a lost block or a bad rescale gives > 1e-2. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/mem.h"
#include "base/threads.h"
#include "check.h"
#include "tensor/ops.h"

#define NMSE_F32 1e-10
#define NMSE_BF16 1e-4

static uint64_t rng = 99;
static const char *path_name = "avx512";
/* Inputs are uniform in [-amp, amp]: 1.5 keeps scores within a few units; 4 spreads them over
 * +-100 (log2 units), so a row's running max moves many times and the rescaling runs. */
static float amp = 1.5f;

static float *rnd(int64_t n, float lo, float hi) {
    float *x = malloc((size_t)n * 4);
    check_fill_uniform(x, n, lo, hi, &rng);
    return x;
}

/* Rows [r0, r1) of the reference, for all batches and heads. */
static void naive(const float *q, int64_t q_ld, const float *k, const float *v, int64_t kv_ld, int64_t batch,
                  int64_t lq, int64_t lk, int heads, int d, double scale, int causal, int64_t r0, int64_t r1,
                  double *ref, int64_t ref_ld) {
    double *s = malloc((size_t)lk * 8);
    for (int64_t b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = r0; i < r1; i++) {
                const float *qi = q + (b * lq + i) * q_ld + h * d;
                double mx = -INFINITY, sum = 0;
                int64_t n = causal && i + 1 < lk ? i + 1 : lk;
                for (int64_t j = 0; j < n; j++) {
                    const float *kj = k + (b * lk + j) * kv_ld + h * d;
                    double acc = 0;
                    for (int x = 0; x < d; x++) acc += (double)qi[x] * kj[x];
                    s[j] = acc * scale;
                    mx = fmax(mx, s[j]);
                }
                for (int64_t j = 0; j < n; j++) sum += (s[j] = exp(s[j] - mx));
                double *o = ref + (b * (r1 - r0) + (i - r0)) * ref_ld + h * d;
                for (int x = 0; x < d; x++) o[x] = 0;
                for (int64_t j = 0; j < n; j++) {
                    const float *vj = v + (b * lk + j) * kv_ld + h * d;
                    for (int x = 0; x < d; x++) o[x] += s[j] / sum * vj[x];
                }
            }
    free(s);
}

/* q, k, v interleaved in one [batch, l, 3 * heads * d + pad] buffer when fused (strided heads). */
static void test_case(sdxl_compute *c, int64_t batch, int64_t lq, int64_t lk, int heads, int d, int causal,
                      int fused) {
    int64_t hd = (int64_t)heads * d, ld = fused ? 3 * hd + 5 : hd;
    float *qkv = NULL, *q, *k, *v, *kvbuf = NULL;
    if (fused) { /* self-attention on one fused projection: lk == lq */
        lk = lq;
        qkv = rnd(batch * lq * ld, -amp, amp);
        q = qkv, k = qkv + hd, v = qkv + 2 * hd;
    } else {
        qkv = rnd(batch * lq * hd, -amp, amp);
        kvbuf = rnd(batch * lk * 2 * hd, -amp, amp);
        q = qkv, k = kvbuf, v = kvbuf + hd;
        ld = 2 * hd;
    }
    int64_t q_ld = fused ? ld : hd, out_ld = hd + 3;
    float *out = malloc((size_t)(batch * lq * out_ld) * 4);
    double *ref = malloc((size_t)(batch * lq * out_ld) * 8);
    float *outc = malloc((size_t)(batch * lq * hd) * 4);
    double *refc = malloc((size_t)(batch * lq * hd) * 8);
    float scale = 1.0f / sqrtf((float)d);
    naive(q, q_ld, k, v, ld, batch, lq, lk, heads, d, scale, causal, 0, lq, ref, out_ld);
    sdxl_err e = {0};
    int st = sdxl_attention(c, q, q_ld, k, v, ld, out, out_ld, batch, lq, lk, heads, d, scale, causal, &e);
    CHECK(st == SDXL_OK, "attention: %s", e.msg);
    for (int64_t r = 0; r < batch * lq; r++) {
        memcpy(outc + r * hd, out + r * out_ld, (size_t)hd * 4);
        for (int64_t x = 0; x < hd; x++) refc[r * hd + x] = ref[r * out_ld + x];
    }
    int bf16 = sdxl_compute_prec(c) == SDXL_PREC_BF16;
    double nm = check_nmse(outc, refc, batch * lq * hd), thr = bf16 ? NMSE_BF16 : NMSE_F32;
    CHECK(nm <= thr, "[%s] attention %s batch=%lld lq=%lld lk=%lld heads=%d d=%d causal=%d fused=%d: nmse %.3g > %.3g",
          path_name, bf16 ? "bf16" : "f32", (long long)batch, (long long)lq, (long long)lk, heads, d, causal, fused,
          nm, thr);
    /* bf16 output: the f32 output's bits rounded as a GEMM's input conversion rounds them (the
     * bf16 kernel only; refused elsewhere), with the same row stride */
    uint16_t *ob = malloc((size_t)(batch * lq * out_ld) * 2), *rb = malloc((size_t)hd * 2);
    st = sdxl_attention_bf16(c, q, q_ld, k, v, ld, ob, out_ld, batch, lq, lk, heads, d, scale, causal, &e);
    if (bf16 && strcmp(path_name, "portable") && __builtin_cpu_supports("avx512bf16")) {
        int same = st == SDXL_OK;
        for (int64_t r = 0; same && r < batch * lq; r++) {
            sdxl_f32_to_bf16(out + r * out_ld, rb, (size_t)hd);
            same = !memcmp(rb, ob + r * out_ld, (size_t)hd * 2);
        }
        CHECK(same, "[%s] attention to bf16 lq=%lld lk=%lld heads=%d d=%d: the rounded f32 output (%s)", path_name,
              (long long)lq, (long long)lk, heads, d, st ? e.msg : "values differ");
    } else {
        CHECK(st == SDXL_ERR_UNSUPPORTED, "[%s] attention to bf16 refused without the bf16 kernel", path_name);
    }
    free(ob), free(rb);
    free(qkv), free(kvbuf), free(out), free(ref), free(outc), free(refc);
}

/* lq = lk = 8192: a score matrix would be 256 MiB. Peak RSS may grow by the packed keys and
 * values and the tiles (a few MiB), never by anything near lq * lk * 4 bytes. */
static void test_memory(sdxl_compute *c) {
    int64_t l = 8192;
    int d = 64;
    float *q = rnd(l * d, -1, 1), *k = rnd(l * d, -1, 1), *v = rnd(l * d, -1, 1), *out = malloc((size_t)(l * d) * 4);
    memset(out, 0, (size_t)(l * d) * 4);
    sdxl_mem_stats m0, m1;
    sdxl_mem_query(&m0);
    sdxl_err e = {0};
    int st = sdxl_attention(c, q, d, k, v, d, out, d, 1, l, l, 1, d, 0.125f, 0, &e);
    sdxl_mem_query(&m1);
    CHECK(st == SDXL_OK, "attention 8192: %s", e.msg);
    uint64_t grow = m1.peak_rss > m0.peak_rss ? m1.peak_rss - m0.peak_rss : 0, scores = (uint64_t)(l * l * 4);
    CHECK(m0.peak_rss > 0, "peak RSS readable");
    CHECK(grow < scores / 8, "[%s] attention lq=lk=%lld grew peak RSS by %llu bytes (score matrix: %llu)", path_name,
          (long long)l, (unsigned long long)grow, (unsigned long long)scores);
    /* spot-check rows against the reference */
    int64_t rows[] = {0, 1, 4095, 8191};
    int bf16 = sdxl_compute_prec(c) == SDXL_PREC_BF16;
    for (size_t i = 0; i < 4; i++) {
        double ref[64];
        naive(q, d, k, v, d, 1, l, l, 1, d, 0.125, 0, rows[i], rows[i] + 1, ref, d);
        double nm = check_nmse(out + rows[i] * d, ref, d);
        CHECK(nm <= (bf16 ? NMSE_BF16 : NMSE_F32), "[%s] attention 8192 row %lld nmse %.3g", path_name,
              (long long)rows[i], nm);
    }
    free(q), free(k), free(v), free(out);
}

static void test_errors(sdxl_compute *c) {
    float x[64] = {0};
    sdxl_err e = {0};
    CHECK(sdxl_attention(c, x, 8, x, x, 8, x, 8, 1, 2, 2, 2, 8, 1, 0, &e) == SDXL_ERR_ARG, "stride < heads*d rejected");
    CHECK(strstr(e.msg, "attention") != NULL, "message names attention: %s", e.msg);
    CHECK(sdxl_attention(c, x, 8, x, x, 8, x, 8, 1, 2, 0, 1, 8, 1, 0, &e) == SDXL_ERR_ARG, "lk=0 rejected");
    CHECK(sdxl_attention(c, x, 8, x, x, 8, x, 8, 1, 2, 2, 0, 8, 1, 0, &e) == SDXL_ERR_ARG, "heads=0 rejected");
    CHECK(sdxl_attention(c, x, 8, x, x, 8, x, 8, 1, 0, 2, 1, 8, 1, 0, &e) == SDXL_OK, "lq=0 is a no-op");
}

static void run_prec(sdxl_prec prec, int big) {
    sdxl_compute *c;
    sdxl_err e = {0};
    if (sdxl_compute_new(prec, &c, &e) != SDXL_OK) {
        CHECK(0, "compute_new: %s", e.msg);
        return;
    }
    test_case(c, 1, 64, 64, 1, 64, 0, 0);
    test_case(c, 2, 100, 77, 3, 64, 0, 0); /* cross-attention to 77 text tokens */
    test_case(c, 1, 77, 77, 2, 16, 1, 1);  /* CLIP: causal, fused qkv */
    test_case(c, 2, 35, 35, 2, 16, 0, 1);  /* 5x7 latent */
    test_case(c, 1, 130, 131, 1, 40, 1, 0);
    test_case(c, 1, 3, 200, 2, 7, 0, 0); /* odd head dim */
    test_case(c, 1, 70, 70, 1, 80, 0, 1);
    test_case(c, 1, 96, 96, 1, 512, 0, 0); /* VAE mid-attention: one head of 512 */
    /* bf16 keeps up to 80 keys in one block (all heads packed at once, output written
     * directly); more keys go in blocks of 64 with a partial last block. */
    test_case(c, 1, 50, 50, 2, 40, 0, 0);
    test_case(c, 2, 33, 77, 1, 512, 0, 0);
    test_case(c, 1, 9, 80, 3, 64, 0, 0);
    test_case(c, 1, 9, 81, 3, 64, 0, 0);
    test_case(c, 1, 200, 300, 2, 64, 1, 0); /* causal with lk > lq */
    test_case(c, 1, 5, 1, 2, 64, 0, 0);     /* a single key */
    test_case(c, 1, 9, 77, 420, 64, 0, 0);  /* too many heads to pack at once: one head per task */
    amp = 4.0f;
    test_case(c, 1, 70, 333, 2, 64, 0, 0);
    test_case(c, 1, 70, 77, 2, 64, 0, 0);
    test_case(c, 1, 130, 131, 1, 40, 1, 0);
    amp = 1.5f;
    if (big) test_case(c, 1, 1024, 1024, 2, 64, 0, 1);
    test_errors(c);
    if (big) test_memory(c);
    sdxl_compute_free(c);
}

int main(void) {
    sdxl_threads_set(2);
    run_prec(SDXL_PREC_F32, 1);
    run_prec(SDXL_PREC_BF16, 1);
    setenv("SDXL_NO_AVX512", "1", 1);
    path_name = "portable";
    run_prec(SDXL_PREC_F32, 0);
    return check_done();
}
