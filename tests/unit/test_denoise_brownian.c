/* denoise/brownian: numpy SeedSequence against numpy's own reference data (test_seed_sequence.py,
 * from the C++ seed_seq_fe reference), and the Brownian tree's contracts: the root increment is
 * randn(seed word 0) * sqrt(t1 - t0), values do not depend on the order of queries (the halfway
 * tree), increments add up over adjacent intervals, noise(a, b) = -noise(b, a), and the normalised
 * increments are standard normal. (Bit parity with torchsde itself is checked by the golden
 * `schedulers` component against diffusers' DPM++ SDE trajectory.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "check.h"
#include "denoise/brownian.h"

static void test_seedseq(void) {
    static const uint32_t in[10][4] = {
        {3735928559u, 195939070u, 229505742u, 305419896u},   {3668361503u, 4165561550u, 1661411377u, 3634257570u},
        {164546577u, 4166754639u, 1765190214u, 1303880213u},  {446610472u, 3941463886u, 522937693u, 1882353782u},
        {1864922766u, 1719732118u, 3882010307u, 1776744564u}, {4141682960u, 3310988675u, 553637289u, 902896340u},
        {1134851934u, 2352871630u, 3699409824u, 2648159817u}, {1240956131u, 3107113773u, 1283198141u, 1924506131u},
        {2669565031u, 579818610u, 3042504477u, 2774880435u},  {2766103236u, 2883057919u, 4029656435u, 862374500u},
    };
    static const uint32_t want[10][4] = {
        {3914649087u, 576849849u, 3593928901u, 2229911004u},  {2240804226u, 3691353228u, 1365957195u, 2654016646u},
        {3562296087u, 3191708229u, 1147942216u, 3726991905u}, {1403443605u, 3591372999u, 1291086759u, 441919183u},
        {1086200464u, 2191331643u, 560336446u, 3658716651u},  {3249937430u, 2346751812u, 847844327u, 2996632307u},
        {2584285912u, 4034195531u, 3523502488u, 169742686u},  {959045797u, 3875435559u, 1886309314u, 359682705u},
        {3978441347u, 432478529u, 3223635119u, 138903045u},   {296367413u, 4262059219u, 13109864u, 3283683422u},
    };
    for (int k = 0; k < 10; k++) {
        uint32_t out[4];
        sdxl_seedseq_state(in[k], 4, NULL, 0, 4, out, 4);
        CHECK(!memcmp(out, want[k], sizeof out), "SeedSequence reference %d: %u %u %u %u", k, out[0], out[1], out[2],
              out[3]);
    }
}

#define N 4096

static void test_tree(void) {
    const double t0 = 0.0291675, t1 = 14.614642;
    sdxl_err e = {0};
    sdxl_btree *a = NULL, *b = NULL;
    CHECK(sdxl_btree_new(t0, t1, 1234, N, 64, &a, &e) == SDXL_OK && sdxl_btree_new(t0, t1, 1234, N, 64, &b, &e) == SDXL_OK,
          "new: %s", e.msg);
    if (!a || !b) return;
    static float w[N], v[N], u[N], r[N];
    /* the root: SeedSequence(1234, pool 24) word 0 seeds torch.randn, times sqrt(t1 - t0) */
    uint32_t ent = 1234, st[3];
    sdxl_seedseq_state(&ent, 1, NULL, 0, 24, st, 3);
    sdxl_rng g;
    sdxl_rng_init(&g, SDXL_RNG_TORCH_CPU, st[0]);
    sdxl_rng_randn(&g, r, N);
    float sc = (float)sqrt(t1 - t0);
    sdxl_btree_increment(a, t0, t1, w, &e);
    int same = 1;
    for (int i = 0; i < N; i++) same &= w[i] == r[i] * sc;
    CHECK(same, "root increment = randn(seed word 0) * sqrt(t1 - t0)");
    /* order independence: a asks [1, 2] then [0.5, 1]; b the other way round */
    int rc = sdxl_btree_increment(a, 1.0, 2.0, w, &e) | sdxl_btree_increment(a, 0.5, 1.0, v, &e) |
             sdxl_btree_increment(b, 0.5, 1.0, u, &e) | sdxl_btree_increment(b, 1.0, 2.0, r, &e);
    CHECK(rc == SDXL_OK && !memcmp(w, r, sizeof w) && !memcmp(v, u, sizeof v), "values independent of the query order: %s",
          e.msg);
    /* additivity: W[0.5, 2] = W[0.5, 1] + W[1, 2] (float rounding of the sums only) */
    sdxl_btree_increment(a, 0.5, 2.0, u, &e);
    double worst = 0;
    for (int i = 0; i < N; i++) worst = fmax(worst, fabs(u[i] - (v[i] + w[i])));
    CHECK(worst < 1e-5, "additivity: %.3g", worst);
    /* the sampler's view: noise(s, s') = -noise(s', s), N(0, 1) */
    sdxl_btree_noise(a, v, N, 3.0, 2.5, &e);
    sdxl_btree_noise(a, w, N, 2.5, 3.0, &e);
    double m = 0, m2 = 0;
    same = 1;
    for (int i = 0; i < N; i++) same &= v[i] == -w[i], m += v[i], m2 += (double)v[i] * v[i];
    m /= N, m2 /= N;
    CHECK(same && fabs(m) < 5 / sqrt(N) && fabs(m2 - 1) < 5 * sqrt(2.0 / N), "noise: sign %d, mean %.3g, E[z^2] %.3g",
          same, m, m2);
    /* a different seed gives a different path */
    sdxl_btree *c = NULL;
    sdxl_btree_new(t0, t1, 1235, N, 8, &c, &e);
    if (c) {
        sdxl_btree_increment(c, 1.0, 2.0, v, &e);
        sdxl_btree_increment(b, 1.0, 2.0, w, &e);
        CHECK(memcmp(v, w, sizeof v), "seed changes the path");
        sdxl_btree_free(c);
    }
    CHECK(sdxl_btree_new(2, 1, 1, N, 8, &c, &e) == SDXL_ERR_ARG && strstr(e.msg, "t0 < t1"), "reversed range: %s", e.msg);
    sdxl_btree_free(a), sdxl_btree_free(b);
}

int main(void) {
    test_seedseq();
    test_tree();
    return check_done();
}
