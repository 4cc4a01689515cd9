/* LoRA merge formulas: LoHa (plain and Tucker), LoKr (full, factored, Tucker), LoCon (3x3 down,
 * Tucker mid), full diff with bias, norm deltas and DoRA (per input column and per output row),
 * built in the test on the tiny model's layers and checked against a plain double-precision
 * merge of each formula; apply + remove restores byte-identical weights in f32 and bf16. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/lora.h"
#include "check.h"
#include "tensor/tensor.h"
#include "text/conditioning.h"

#define BASE SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors"

typedef struct net {
    sdxl_compute *c;
    sdxl_ckpt *ck;
    sdxl_unet *u;
    sdxl_cond_model cm;
    sdxl_lora_state *s;
} net;

static int net_load_mode(net *n, sdxl_prec prec, size_t keep_max, int in_place) {
    memset(n, 0, sizeof *n);
    sdxl_err e = {0};
    sdxl_unet_opts o;
    sdxl_unet_opts_init(&o);
    if (sdxl_compute_new(prec, &n->c, &e) || sdxl_ckpt_open(BASE, &n->ck, &e) ||
        sdxl_cond_model_load(n->c, n->ck, &n->cm, &e) || sdxl_unet_load(n->c, n->ck, &o, &n->u, &e)) {
        fprintf(stderr, "load: %s\n", e.msg);
        return 1;
    }
    sdxl_lora_nets ln = {n->c, n->u, n->ck, {n->cm.te1, n->cm.te2}, n->ck, keep_max, in_place};
    if (sdxl_lora_state_new(&ln, &n->s, &e)) {
        fprintf(stderr, "state: %s\n", e.msg);
        return 1;
    }
    return 0;
}

static int net_load_keep(net *n, sdxl_prec prec, size_t keep_max) { return net_load_mode(n, prec, keep_max, 0); }
static int net_load(net *n, sdxl_prec prec) { return net_load_keep(n, prec, 0); }

static void net_free(net *n) {
    sdxl_lora_state_free(n->s);
    sdxl_unet_free(n->u);
    sdxl_cond_model_free(&n->cm);
    sdxl_ckpt_close(n->ck);
    sdxl_compute_free(n->c);
}

/* ---- building a file ---- */

typedef struct fb {
    sdxl_st_writer *w;
    float *pool[256];
    int n;
    uint64_t rng;
} fb;

static float *fb_add(fb *b, const char *name, int ndim, const int64_t *shape, float lo, float hi) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *d = malloc((size_t)n * sizeof *d);
    check_fill_uniform(d, n, lo, hi, &b->rng);
    b->pool[b->n++] = d;
    sdxl_err e = {0};
    sdxl_st_writer_add(b->w, name, SDXL_ST_F32, ndim, shape, d, &e);
    return d;
}

static void fb_scalar(fb *b, const char *name, float v) {
    float *d = malloc(sizeof *d);
    *d = v;
    b->pool[b->n++] = d;
    sdxl_err e = {0};
    int64_t one = 1;
    sdxl_st_writer_add(b->w, name, SDXL_ST_F32, 0, &one, d, &e);
}

static void fb_finish(fb *b, const char *path) {
    sdxl_err e = {0};
    if (sdxl_st_writer_finish(b->w, path, &e)) fprintf(stderr, "write: %s\n", e.msg);
    sdxl_st_writer_free(b->w);
}

static void fb_free(fb *b) {
    for (int i = 0; i < b->n; i++) free(b->pool[i]);
}

/* ---- double-precision references ---- */

/* d[p, q, kl] = sum_ij t[i, j, kl] wa[j, q] wb[i, p] (LyCORIS make_weight_cp / rebuild_cp) */
static void ref_cp(const float *t, int r1, int r2, int kk, const float *wa, int in, const float *wb_ip, int out,
                   int wb_is_ip, double *d) {
    for (int p = 0; p < out; p++)
        for (int q = 0; q < in; q++)
            for (int kl = 0; kl < kk; kl++) {
                double s = 0;
                for (int i = 0; i < r1; i++)
                    for (int j = 0; j < r2; j++) {
                        double wb = wb_is_ip ? wb_ip[i * out + p] : wb_ip[p * r1 + i];
                        s += (double)t[(i * r2 + j) * kk + kl] * wa[j * in + q] * wb;
                    }
                d[(p * in + q) * kk + kl] = s;
            }
}

static void ref_mm(const float *a, const float *b, int rows, int k, int cols, double *d) {
    for (int o = 0; o < rows; o++)
        for (int j = 0; j < cols; j++) {
            double s = 0;
            for (int r = 0; r < k; r++) s += (double)a[o * k + r] * b[r * cols + j];
            d[o * cols + j] = s;
        }
}

/* Compares the merged weights of `module` with orig + ref (both [n]): NMSE of the delta. */
static void check_delta(net *n, sdxl_lora_net which, const char *module, const float *orig, const double *refd,
                        int64_t cnt, const char *what) {
    float *w = malloc((size_t)cnt * sizeof *w);
    float *got = malloc((size_t)cnt * sizeof *got);
    sdxl_err e = {0};
    int st = sdxl_lora_merged_weight(n->s, which, module, w, (size_t)cnt, &e);
    CHECK(st == SDXL_OK, "%s: merged weight (%s)", what, e.msg);
    for (int64_t i = 0; i < cnt; i++) got[i] = w[i] - orig[i];
    double nm = check_nmse(got, refd, cnt);
    CHECK(nm <= 1e-10, "%s: delta NMSE %.3g <= 1e-10", what, nm);
    free(w);
    free(got);
}

static float *orig_of(net *n, sdxl_lora_net which, const char *module, int64_t cnt) {
    float *w = malloc((size_t)cnt * sizeof *w);
    sdxl_err e = {0};
    if (sdxl_lora_merged_weight(n->s, which, module, w, (size_t)cnt, &e)) fprintf(stderr, "%s\n", e.msg);
    return w;
}

static void test_formulas(void) {
    net n;
    if (net_load(&n, SDXL_PREC_F32)) {
        CHECK(0, "tiny model loads");
        return;
    }
    char path[] = "/tmp/sdxl_lyco_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    /* originals, read through the state with nothing applied */
    const char *M_K = "input_blocks.4.1.transformer_blocks.0.attn1.to_k";      /* [32, 32], part 1 of q|k|v */
    const char *M_V = "input_blocks.4.1.transformer_blocks.0.attn1.to_v";      /* part 2 */
    const char *M_C1 = "input_blocks.5.0.in_layers.2";                         /* conv [32, 32, 3, 3] */
    const char *M_C2 = "input_blocks.4.0.out_layers.3";                        /* conv [32, 32, 3, 3] */
    const char *M_OP = "input_blocks.3.0.op";                                  /* stride-2 conv [32, 32, 3, 3] */
    const char *M_MID = "output_blocks.0.0.in_layers.2";                       /* conv [64, 128, 3, 3] */
    const char *M_PROJ = "input_blocks.4.1.proj_in";                             /* linear [32, 32] + bias */
    const char *M_N = "input_blocks.4.0.in_layers.0";                          /* GroupNorm [32] */
    const char *M_FC1 = "text_model.encoder.layers.0.mlp.fc1";                 /* te1 [128, 32] */
    const char *M_OUT = "text_model.encoder.layers.1.self_attn.out_proj";      /* te2 [64, 64] */
    float *o_k = orig_of(&n, SDXL_LORA_UNET, M_K, 1024), *o_v = orig_of(&n, SDXL_LORA_UNET, M_V, 1024);
    float *o_c1 = orig_of(&n, SDXL_LORA_UNET, M_C1, 9216), *o_c2 = orig_of(&n, SDXL_LORA_UNET, M_C2, 9216);
    float *o_op = orig_of(&n, SDXL_LORA_UNET, M_OP, 9216), *o_mid = orig_of(&n, SDXL_LORA_UNET, M_MID, 64 * 128 * 9);
    float *o_pi = orig_of(&n, SDXL_LORA_UNET, M_PROJ, 1024), *o_n = orig_of(&n, SDXL_LORA_UNET, M_N, 32);
    float *o_fc1 = orig_of(&n, SDXL_LORA_TE1, M_FC1, 4096), *o_out = orig_of(&n, SDXL_LORA_TE2, M_OUT, 4096);

    fb b = {.rng = 7};
    sdxl_err e = {0};
    sdxl_st_writer_new(&b.w, &e);
    const float mu = 0.7f, mt = -0.5f; /* unet and te multipliers */
    /* LoHa, plain, on to_k: alpha 2, dim 4 */
    int64_t s_or[2] = {32, 4}, s_ro[2] = {4, 32};
    float *h1a = fb_add(&b, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.hada_w1_a", 2, s_or, -.5f, .5f);
    float *h1b = fb_add(&b, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.hada_w1_b", 2, s_ro, -.5f, .5f);
    float *h2a = fb_add(&b, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.hada_w2_a", 2, s_or, -.5f, .5f);
    float *h2b = fb_add(&b, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.hada_w2_b", 2, s_ro, -.5f, .5f);
    fb_scalar(&b, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.alpha", 2.0f);
    /* LoHa, Tucker, on a 3x3 conv: w_a [r, in], w_b [r, out], t [r, r, 3, 3] */
    int64_t s_t[4] = {4, 4, 3, 3}, s_r32[2] = {4, 32};
    float *t1 = fb_add(&b, "lora_unet_input_blocks_5_0_in_layers_2.hada_t1", 4, s_t, -.5f, .5f);
    float *t1a = fb_add(&b, "lora_unet_input_blocks_5_0_in_layers_2.hada_w1_a", 2, s_r32, -.5f, .5f);
    float *t1b = fb_add(&b, "lora_unet_input_blocks_5_0_in_layers_2.hada_w1_b", 2, s_r32, -.5f, .5f);
    float *t2 = fb_add(&b, "lora_unet_input_blocks_5_0_in_layers_2.hada_t2", 4, s_t, -.5f, .5f);
    float *t2a = fb_add(&b, "lora_unet_input_blocks_5_0_in_layers_2.hada_w2_a", 2, s_r32, -.5f, .5f);
    float *t2b = fb_add(&b, "lora_unet_input_blocks_5_0_in_layers_2.hada_w2_b", 2, s_r32, -.5f, .5f);
    /* LoKr on to_v (diffusers naming): w1 [4, 4] full, w2 = w2_a [8, 2] @ w2_b [2, 8]; alpha 1, dim 2 */
    int64_t s44[2] = {4, 4}, s82[2] = {8, 2}, s28[2] = {2, 8};
    float *k1 = fb_add(&b, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v.lokr_w1", 2, s44, -1, 1);
    float *k2a = fb_add(&b, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v.lokr_w2_a", 2, s82, -1, 1);
    float *k2b = fb_add(&b, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v.lokr_w2_b", 2, s28, -1, 1);
    fb_scalar(&b, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v.alpha", 1.0f);
    /* LoKr on a 3x3 conv: w1 = w1_a [4, 2] @ w1_b [2, 4], w2 = Tucker(t2 [2, 2, 3, 3], w2_a [2, 8], w2_b [2, 8]) */
    int64_t s42[2] = {4, 2}, s24[2] = {2, 4}, s_t2[4] = {2, 2, 3, 3};
    float *l1a = fb_add(&b, "lora_unet_input_blocks_4_0_out_layers_3.lokr_w1_a", 2, s42, -1, 1);
    float *l1b = fb_add(&b, "lora_unet_input_blocks_4_0_out_layers_3.lokr_w1_b", 2, s24, -1, 1);
    float *lt2 = fb_add(&b, "lora_unet_input_blocks_4_0_out_layers_3.lokr_t2", 4, s_t2, -1, 1);
    float *l2a = fb_add(&b, "lora_unet_input_blocks_4_0_out_layers_3.lokr_w2_a", 2, s28, -1, 1);
    float *l2b = fb_add(&b, "lora_unet_input_blocks_4_0_out_layers_3.lokr_w2_b", 2, s28, -1, 1);
    fb_scalar(&b, "lora_unet_input_blocks_4_0_out_layers_3.alpha", 3.0f);
    /* LoCon: 3x3 down [4, 32, 3, 3], 1x1 up [32, 4, 1, 1], alpha 4 */
    int64_t s_dn[4] = {4, 32, 3, 3}, s_up[4] = {32, 4, 1, 1};
    float *cd = fb_add(&b, "lora_unet_input_blocks_3_0_op.lora_down.weight", 4, s_dn, -.3f, .3f);
    float *cu = fb_add(&b, "lora_unet_input_blocks_3_0_op.lora_up.weight", 4, s_up, -.3f, .3f);
    fb_scalar(&b, "lora_unet_input_blocks_3_0_op.alpha", 4.0f);
    /* LoCon with a Tucker mid: down [4, 128, 1, 1], mid [4, 4, 3, 3], up [64, 4, 1, 1], no alpha */
    int64_t s_md[4] = {4, 128, 1, 1}, s_mm[4] = {4, 4, 3, 3}, s_mu[4] = {64, 4, 1, 1};
    float *md = fb_add(&b, "lora_unet_output_blocks_0_0_in_layers_2.lora_down.weight", 4, s_md, -.3f, .3f);
    float *mm = fb_add(&b, "lora_unet_output_blocks_0_0_in_layers_2.lora_mid.weight", 4, s_mm, -.3f, .3f);
    float *mup = fb_add(&b, "lora_unet_output_blocks_0_0_in_layers_2.lora_up.weight", 4, s_mu, -.3f, .3f);
    /* full diff + diff_b on proj_in */
    int64_t s32x32[2] = {32, 32}, s32[1] = {32};
    float *df = fb_add(&b, "lora_unet_input_blocks_4_1_proj_in.diff", 2, s32x32, -.1f, .1f);
    fb_add(&b, "lora_unet_input_blocks_4_1_proj_in.diff_b", 1, s32, -.1f, .1f);
    /* norm deltas */
    float *wn = fb_add(&b, "lora_unet_input_blocks_4_0_in_layers_0.w_norm", 1, s32, -.1f, .1f);
    fb_add(&b, "lora_unet_input_blocks_4_0_in_layers_0.b_norm", 1, s32, -.1f, .1f);
    /* DoRA per input column on te1 fc1 [128, 32]: dora_scale [1, 32] */
    int64_t s_fd[2] = {4, 32}, s_fu[2] = {128, 4}, s_ds[2] = {1, 32};
    float *dd = fb_add(&b, "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", 2, s_fd, -.5f, .5f);
    float *du = fb_add(&b, "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", 2, s_fu, -.5f, .5f);
    float *ds = fb_add(&b, "lora_te1_text_model_encoder_layers_0_mlp_fc1.dora_scale", 2, s_ds, 0.5f, 2.0f);
    fb_scalar(&b, "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha", 8.0f);
    /* DoRA per output row on te2 out_proj [64, 64] (PEFT naming, magnitude vector [64]) */
    int64_t s_pa[2] = {4, 64}, s_pb[2] = {64, 4}, s_pm[1] = {64};
    float *pa = fb_add(&b, "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_A.weight", 2, s_pa, -.5f, .5f);
    float *pb = fb_add(&b, "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_B.weight", 2, s_pb, -.5f, .5f);
    float *pm = fb_add(&b, "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_magnitude_vector", 1, s_pm, 0.5f, 2.0f);
    fb_finish(&b, path);

    sdxl_lora_use u = {path, mu, mt};
    sdxl_lora_stats st;
    int rc = sdxl_lora_apply(n.s, &u, 1, &st, &e);
    CHECK(rc == SDXL_OK, "LyCORIS file applies (%s)", e.msg);
    CHECK(st.modules_bound == 10, "10 modules bound, got %d", st.modules_bound);
    sdxl_lora_info li;
    sdxl_lora_get_info(sdxl_lora_applied_at(n.s, 0), &li);
    CHECK(li.per_kind[SDXL_LORA_KIND_LOHA] == 2 && li.per_kind[SDXL_LORA_KIND_LOKR] == 2 &&
              li.per_kind[SDXL_LORA_KIND_LORA] == 4 && li.per_kind[SDXL_LORA_KIND_FULL] == 1 &&
              li.per_kind[SDXL_LORA_KIND_NORM] == 1 && li.n_dora == 2,
          "kinds counted");

    double *r = calloc(64 * 128 * 9, sizeof *r), *r2 = calloc(64 * 128 * 9, sizeof *r2);
    /* LoHa: (w1a w1b) * (w2a w2b) * alpha / dim */
    ref_mm(h1a, h1b, 32, 4, 32, r);
    ref_mm(h2a, h2b, 32, 4, 32, r2);
    for (int i = 0; i < 1024; i++) r[i] *= r2[i] * mu * 2.0 / 4;
    check_delta(&n, SDXL_LORA_UNET, M_K, o_k, r, 1024, "LoHa");
    ref_cp(t1, 4, 4, 9, t1a, 32, t1b, 32, 1, r);
    ref_cp(t2, 4, 4, 9, t2a, 32, t2b, 32, 1, r2);
    for (int i = 0; i < 9216; i++) r[i] *= r2[i] * mu; /* no alpha: scale 1 */
    check_delta(&n, SDXL_LORA_UNET, M_C1, o_c1, r, 9216, "LoHa Tucker conv");
    /* LoKr: kron(w1, w2a w2b) * alpha / dim(w2_b) */
    ref_mm(k2a, k2b, 8, 2, 8, r2);
    for (int i1 = 0; i1 < 4; i1++)
        for (int i2 = 0; i2 < 8; i2++)
            for (int j1 = 0; j1 < 4; j1++)
                for (int j2 = 0; j2 < 8; j2++)
                    r[(i1 * 8 + i2) * 32 + j1 * 8 + j2] = k1[i1 * 4 + j1] * r2[i2 * 8 + j2] * mu * 1.0 / 2;
    check_delta(&n, SDXL_LORA_UNET, M_V, o_v, r, 1024, "LoKr");
    {
        double w1[16], w2[8 * 8 * 9];
        ref_mm(l1a, l1b, 4, 2, 4, w1);
        ref_cp(lt2, 2, 2, 9, l2a, 8, l2b, 8, 1, w2);
        for (int i1 = 0; i1 < 4; i1++)
            for (int i2 = 0; i2 < 8; i2++)
                for (int j1 = 0; j1 < 4; j1++)
                    for (int j2 = 0; j2 < 8; j2++)
                        for (int kl = 0; kl < 9; kl++)
                            r[((i1 * 8 + i2) * 32 + j1 * 8 + j2) * 9 + kl] =
                                w1[i1 * 4 + j1] * w2[(i2 * 8 + j2) * 9 + kl] * mu * 3.0 / 2;
        check_delta(&n, SDXL_LORA_UNET, M_C2, o_c2, r, 9216, "LoKr Tucker conv");
    }
    ref_mm(cu, cd, 32, 4, 288, r);
    for (int i = 0; i < 9216; i++) r[i] *= mu * 4.0 / 4;
    check_delta(&n, SDXL_LORA_UNET, M_OP, o_op, r, 9216, "LoCon 3x3");
    ref_cp(mm, 4, 4, 9, md, 128, mup, 64, 0, r);
    for (int i = 0; i < 64 * 128 * 9; i++) r[i] *= mu;
    check_delta(&n, SDXL_LORA_UNET, M_MID, o_mid, r, 64 * 128 * 9, "LoCon Tucker mid");
    for (int i = 0; i < 1024; i++) r[i] = (double)df[i] * mu;
    check_delta(&n, SDXL_LORA_UNET, M_PROJ, o_pi, r, 1024, "full diff");
    for (int i = 0; i < 32; i++) r[i] = (double)wn[i] * mu;
    check_delta(&n, SDXL_LORA_UNET, M_N, o_n, r, 32, "norm w_norm");
    /* DoRA (A1111): W_d = W + s D; W' = W_d * g[col] / ||W_d[:, col]||; delta = m (W' - W) */
    ref_mm(du, dd, 128, 4, 32, r);
    for (int i = 0; i < 4096; i++) r[i] = o_fc1[i] + r[i] * 8.0 / 4;
    for (int q = 0; q < 32; q++) {
        double ss = 0;
        for (int o = 0; o < 128; o++) ss += r[o * 32 + q] * r[o * 32 + q];
        for (int o = 0; o < 128; o++) r[o * 32 + q] = mt * (r[o * 32 + q] * ds[q] / sqrt(ss) - o_fc1[o * 32 + q]);
    }
    check_delta(&n, SDXL_LORA_TE1, M_FC1, o_fc1, r, 4096, "DoRA per input column");
    /* PEFT DoRA: W_d = W + m s D (alpha = rank); W' = g[row] W_d / ||W_d[row]||; delta = W' - W */
    ref_mm(pb, pa, 64, 4, 64, r);
    for (int i = 0; i < 4096; i++) r[i] = o_out[i] + r[i] * mt;
    for (int o = 0; o < 64; o++) {
        double ss = 0;
        for (int q = 0; q < 64; q++) ss += r[o * 64 + q] * r[o * 64 + q];
        for (int q = 0; q < 64; q++) r[o * 64 + q] = r[o * 64 + q] * pm[o] / sqrt(ss) - o_out[o * 64 + q];
    }
    check_delta(&n, SDXL_LORA_TE2, M_OUT, o_out, r, 4096, "DoRA per output row (PEFT)");
    free(r);
    free(r2);
    float *all[] = {o_k, o_v, o_c1, o_c2, o_op, o_mid, o_pi, o_n, o_fc1, o_out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    fb_free(&b);
    unlink(path);
    net_free(&n);
}

/* ---- byte-identical undo ---- */

typedef struct snap {
    uint8_t *bytes;
    size_t n, cap;
} snap;

static int snap_layer(void *user, const sdxl_lref *r, sdxl_err *e) {
    (void)e;
    snap *s = user;
    const void *p = NULL;
    size_t n = 0;
    if (r->kind == SDXL_LREF_LINEAR) p = r->lin->w, n = sdxl_linear_weight_bytes(r->lin);
    else if (r->kind == SDXL_LREF_CONV) p = r->conv->w, n = sdxl_conv2d_weight_bytes(r->conv);
    else p = r->norm_g, n = (size_t)r->out_each * 4;
    const float *bias = r->kind == SDXL_LREF_LINEAR ? r->lin->bias : r->kind == SDXL_LREF_CONV ? r->conv->bias
                                                                                                : r->norm_b;
    size_t nb = bias ? (size_t)r->out_each * (size_t)r->nparts * 4 : 0;
    if (r->kind == SDXL_LREF_NORM && bias) nb = (size_t)r->out_each * 4;
    if (s->n + n + nb > s->cap) {
        s->cap = 2 * (s->n + n + nb);
        s->bytes = realloc(s->bytes, s->cap);
    }
    memcpy(s->bytes + s->n, p, n);
    if (nb) memcpy(s->bytes + s->n + n, bias, nb);
    s->n += n + nb;
    return SDXL_OK;
}

static void take(net *n, snap *s) {
    sdxl_err e = {0};
    memset(s, 0, sizeof *s);
    sdxl_unet_layers(n->u, n->ck, snap_layer, s, &e);
    sdxl_clip_layers_ckpt(n->cm.te1, n->ck, SDXL_PART_TE1, snap_layer, s, &e);
    sdxl_clip_layers_ckpt(n->cm.te2, n->ck, SDXL_PART_TE2, snap_layer, s, &e);
}

/* keep_max = 1 byte: no layer is kept, every rebuild reads the checkpoint (the same checks). */
static void test_roundtrip(sdxl_prec prec, size_t keep_max) {
    const char *pn = prec == SDXL_PREC_BF16 ? (keep_max ? "bf16, nothing kept" : "bf16")
                                            : (keep_max ? "f32, nothing kept" : "f32");
    net a, fresh;
    if (net_load_keep(&a, prec, keep_max) || net_load(&fresh, prec)) {
        CHECK(0, "%s: models load", pn);
        return;
    }
    snap s0, s1, s2;
    take(&fresh, &s0);
    sdxl_lora_use u[2] = {{SDXL_TEST_DATA "/golden/models/tiny_sdxl_lora_kohya.safetensors", 0.8f, -0.6f},
                          {SDXL_TEST_DATA "/golden/models/tiny_sdxl_lora_peft.safetensors", -0.3f, 0.5f}};
    sdxl_err e = {0};
    sdxl_lora_stats st;
    CHECK(sdxl_lora_apply(a.s, u, 2, &st, &e) == SDXL_OK, "%s: two LoRAs apply (%s)", pn, e.msg);
    CHECK(keep_max ? st.kept_bytes == 0 && st.layers_packed == 0 : st.kept_bytes > 0 && st.layers_packed > 0,
          "%s: %zu bytes kept, %d layers merged packed", pn, st.kept_bytes, st.layers_packed);
    take(&a, &s1);
    CHECK(s1.n == s0.n && memcmp(s1.bytes, s0.bytes, s0.n) != 0, "%s: merged weights differ", pn);
    /* switching only the second LoRA's te weight touches text layers only */
    u[1].te_weight = 0.25f;
    CHECK(sdxl_lora_apply(a.s, u, 2, &st, &e) == SDXL_OK, "%s: switch", pn);
    CHECK(st.layers_rebuilt == 24, "%s: switching a te weight rebuilds the 24 text layers (q|k|v fused), got %d", pn,
          st.layers_rebuilt);
    CHECK(sdxl_lora_apply(a.s, NULL, 0, &st, &e) == SDXL_OK, "%s: remove", pn);
    take(&a, &s2);
    CHECK(s2.n == s0.n && memcmp(s2.bytes, s0.bytes, s0.n) == 0, "%s: apply + remove is byte-identical to a fresh "
          "load (%zu bytes)", pn, s0.n);
    free(s0.bytes);
    free(s1.bytes);
    free(s2.bytes);
    net_free(&a);
    net_free(&fresh);
}

/* Two DoRA networks on one layer merge one after the other, the second normalising the weights
 * the first produced (A1111's and PEFT's sequential merge): PEFT form on te2 out_proj [64, 64]. */
static void test_dora_sequential(void) {
    net n;
    if (net_load(&n, SDXL_PREC_F32)) {
        CHECK(0, "tiny model loads");
        return;
    }
    const char *mod = "text_model.encoder.layers.1.self_attn.out_proj";
    float *o = orig_of(&n, SDXL_LORA_TE2, mod, 4096);
    char p1[] = "/tmp/sdxl_dora1_XXXXXX", p2[] = "/tmp/sdxl_dora2_XXXXXX";
    close(mkstemp(p1));
    close(mkstemp(p2));
    char *paths[2] = {p1, p2};
    float *fa[2], *fbm[2], *fm[2];
    fb b[2] = {{.rng = 21}, {.rng = 22}};
    sdxl_err e = {0};
    int64_t s_pa[2] = {4, 64}, s_pb[2] = {64, 4}, s_pm[1] = {64};
    for (int k = 0; k < 2; k++) {
        sdxl_st_writer_new(&b[k].w, &e);
        fa[k] = fb_add(&b[k], "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_A.weight", 2, s_pa,
                       -.5f, .5f);
        fbm[k] = fb_add(&b[k], "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_B.weight", 2, s_pb,
                        -.5f, .5f);
        fm[k] = fb_add(&b[k], "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_magnitude_vector", 1,
                       s_pm, 0.5f, 2.0f);
        fb_finish(&b[k], paths[k]);
    }
    const float mt[2] = {0.6f, -0.4f};
    sdxl_lora_use u[2] = {{p1, 1, mt[0]}, {p2, 1, mt[1]}};
    sdxl_lora_stats st;
    CHECK(sdxl_lora_apply(n.s, u, 2, &st, &e) == SDXL_OK, "two DoRA apply (%s)", e.msg);
    double *w = malloc(4096 * sizeof *w), *d = malloc(4096 * sizeof *d);
    for (int i = 0; i < 4096; i++) w[i] = o[i];
    for (int k = 0; k < 2; k++) {
        ref_mm(fbm[k], fa[k], 64, 4, 64, d);
        for (int i = 0; i < 4096; i++) d[i] = w[i] + d[i] * mt[k];
        for (int r = 0; r < 64; r++) {
            double ss = 0;
            for (int q = 0; q < 64; q++) ss += d[r * 64 + q] * d[r * 64 + q];
            for (int q = 0; q < 64; q++) w[r * 64 + q] = d[r * 64 + q] * fm[k][r] / sqrt(ss);
        }
    }
    for (int i = 0; i < 4096; i++) w[i] -= o[i];
    check_delta(&n, SDXL_LORA_TE2, mod, o, w, 4096, "two DoRA networks, sequential");
    free(w);
    free(d);
    free(o);
    for (int k = 0; k < 2; k++) {
        fb_free(&b[k]);
        unlink(paths[k]);
    }
    net_free(&n);
}

/* ---- merging in the packed layout ---- */

typedef struct find {
    const char *name;
    float *w; /* the layer's compute weights, unpacked to torch order, all parts */
    int64_t n, part_rows, part;
} find;

static int find_layer(void *user, const sdxl_lref *r, sdxl_err *e) {
    find *f = user;
    int p = -1;
    for (int i = 0; i < r->nparts; i++)
        if (!strcmp(r->part[i].name, f->name) || !strcmp(r->part[i].alt, f->name)) p = i;
    if (p < 0 || r->kind == SDXL_LREF_NORM) return SDXL_OK;
    sdxl_wlayout lay;
    const void *w = r->kind == SDXL_LREF_LINEAR ? r->lin->w : r->conv->w;
    if (r->kind == SDXL_LREF_LINEAR ? sdxl_linear_layout(r->lin, &lay, e) : sdxl_conv2d_layout(r->conv, &lay, e))
        return SDXL_OK;
    int64_t rows = lay.n[0], cols = lay.n[1] * lay.n[2] * lay.n[3];
    f->w = malloc((size_t)(rows * cols) * sizeof *f->w);
    f->n = rows * cols;
    f->part_rows = r->out_each;
    f->part = p;
    for (int64_t o = 0; o < rows; o++)
        for (int64_t i = 0; i < lay.n[1]; i++)
            for (int64_t a = 0; a < lay.n[2]; a++)
                for (int64_t b = 0; b < lay.n[3]; b++) {
                    int64_t q = lay.off[0][o] + lay.off[1][i] + lay.off[2][a] + lay.off[3][b];
                    float v;
                    if (lay.esize == 2) {
                        uint32_t u = (uint32_t)((const uint16_t *)w)[q] << 16;
                        memcpy(&v, &u, 4);
                    } else {
                        v = ((const float *)w)[q];
                    }
                    f->w[o * cols + (i * lay.n[2] + a) * lay.n[3] + b] = v;
                }
    sdxl_wlayout_free(&lay);
    return SDXL_OK;
}

/* The compute weights of one module (its part's rows), unpacked; NULL when not found. */
static float *compute_weights(net *n, sdxl_lora_net which, const char *module, int64_t cnt) {
    find f = {.name = module};
    sdxl_err e = {0};
    if (which == SDXL_LORA_UNET) sdxl_unet_layers(n->u, n->ck, find_layer, &f, &e);
    else sdxl_clip_layers_ckpt(which == SDXL_LORA_TE1 ? n->cm.te1 : n->cm.te2, n->ck,
                               which == SDXL_LORA_TE1 ? SDXL_PART_TE1 : SDXL_PART_TE2, find_layer, &f, &e);
    if (!f.w || (f.part + 1) * cnt > f.n) {
        free(f.w);
        return NULL;
    }
    float *w = malloc((size_t)cnt * sizeof *w);
    memcpy(w, f.w + f.part * cnt, (size_t)cnt * sizeof *w);
    free(f.w);
    return w;
}

static float bf16_round(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&v, &u, 4);
    return v;
}

/* Plain LoRAs merge into a copy of the packed weights: the compute weights of a fused q|k|v part,
 * a 3x3 LoCon conv and a text linear equal the f32 merge (f32: delta NMSE <= 1e-10) or its
 * bf16 rounding of (bf16 weights + f32 delta), to one bf16 step where the two f32 deltas round
 * apart; diffusers attention-processor keys merge as the same modules in kohya naming. */
static void test_packed(sdxl_prec prec) {
    const char *pn = prec == SDXL_PREC_BF16 ? "bf16" : "f32";
    net n;
    if (net_load(&n, prec)) {
        CHECK(0, "%s: tiny model loads", pn);
        return;
    }
    char pk[] = "/tmp/sdxl_lpk_XXXXXX", pp[] = "/tmp/sdxl_lpp_XXXXXX";
    close(mkstemp(pk));
    close(mkstemp(pp));
    const struct {
        sdxl_lora_net net;
        const char *mod, *kohya, *proc;
        int64_t out, in, k;
    } M[] = {
        {SDXL_LORA_UNET, "input_blocks.4.1.transformer_blocks.0.attn1.to_k",
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k",
         "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_k_lora", 32, 32, 1},
        {SDXL_LORA_UNET, "input_blocks.4.1.transformer_blocks.0.attn1.to_out.0",
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0",
         "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora", 32, 32, 1},
        {SDXL_LORA_UNET, "input_blocks.3.0.op", "lora_unet_input_blocks_3_0_op", NULL, 32, 32, 9},
        {SDXL_LORA_TE1, "text_model.encoder.layers.0.self_attn.q_proj",
         "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
         "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora", 32, 32, 1},
    };
    const int NM = (int)(sizeof M / sizeof M[0]);
    float *orig[8];
    for (int i = 0; i < NM; i++) orig[i] = orig_of(&n, M[i].net, M[i].mod, M[i].out * M[i].in * M[i].k);
    fb bk = {.rng = 11}, bp = {.rng = 11};
    sdxl_err e = {0};
    sdxl_st_writer_new(&bk.w, &e);
    sdxl_st_writer_new(&bp.w, &e);
    for (int i = 0; i < NM; i++) {
        char key[256];
        int64_t sd[4] = {4, M[i].in, 3, 3}, su[4] = {M[i].out, 4, 1, 1};
        snprintf(key, sizeof key, "%s.lora_down.weight", M[i].kohya);
        float *d = fb_add(&bk, key, M[i].k > 1 ? 4 : 2, sd, -.4f, .4f);
        snprintf(key, sizeof key, "%s.lora_up.weight", M[i].kohya);
        float *u = fb_add(&bk, key, M[i].k > 1 ? 4 : 2, su, -.4f, .4f);
        if (!M[i].proc) continue;
        snprintf(key, sizeof key, "%s.down.weight", M[i].proc);
        sdxl_st_writer_add(bp.w, key, SDXL_ST_F32, 2, sd, d, &e);
        snprintf(key, sizeof key, "%s.up.weight", M[i].proc);
        sdxl_st_writer_add(bp.w, key, SDXL_ST_F32, 2, su, u, &e);
    }
    fb_finish(&bp, pp);
    fb_finish(&bk, pk);
    sdxl_lora_use u = {pk, 0.9f, -0.7f};
    sdxl_lora_stats st;
    CHECK(sdxl_lora_apply(n.s, &u, 1, &st, &e) == SDXL_OK, "%s: packed apply (%s)", pn, e.msg);
    CHECK(st.layers_packed == NM && st.kept_bytes > 0, "%s: %d layers merged packed, %zu bytes kept", pn,
          st.layers_packed, st.kept_bytes);
    float *ref[8];
    for (int i = 0; i < NM; i++) {
        int64_t cnt = M[i].out * M[i].in * M[i].k;
        ref[i] = orig_of(&n, M[i].net, M[i].mod, cnt);
        float *got = compute_weights(&n, M[i].net, M[i].mod, cnt);
        CHECK(got != NULL, "%s: %s found", pn, M[i].mod);
        if (!got) continue;
        if (prec == SDXL_PREC_F32) {
            float *dg = malloc((size_t)cnt * sizeof *dg);
            double *dr = malloc((size_t)cnt * sizeof *dr);
            for (int64_t k = 0; k < cnt; k++) {
                dg[k] = got[k] - orig[i][k];
                dr[k] = (double)ref[i][k] - orig[i][k];
            }
            double nm = check_nmse(dg, dr, cnt);
            CHECK(nm <= 1e-10, "%s: %s packed delta NMSE %.3g <= 1e-10", pn, M[i].mod, nm);
            free(dg);
            free(dr);
        } else {
            int64_t bad = 0;
            for (int64_t k = 0; k < cnt; k++) {
                float w = bf16_round(orig[i][k]), want = bf16_round(w + (ref[i][k] - orig[i][k]));
                float ulp = fabsf(want) / 128.0f;
                if (fabsf(got[k] - want) > ulp) bad++;
            }
            CHECK(bad == 0, "%s: %s packed merge within one bf16 step of round(bf16(W) + delta): %lld off", pn,
                  M[i].mod, (long long)bad);
        }
        free(got);
    }
    /* in place (one-request models): the same merged bytes with no copies; then only that list */
    net ni;
    if (net_load_mode(&ni, prec, 0, 1) == 0) {
        sdxl_lora_stats si;
        CHECK(sdxl_lora_apply(ni.s, &u, 1, &si, &e) == SDXL_OK, "%s: in-place apply (%s)", pn, e.msg);
        CHECK(si.layers_packed == NM && si.kept_bytes * 4 < st.kept_bytes,
              "%s: in place: %d layers packed, %zu bytes kept (bias copies) against %zu with weight copies", pn,
              si.layers_packed, si.kept_bytes, st.kept_bytes);
        for (int i = 0; i < NM; i++) {
            int64_t cnt = M[i].out * M[i].in * M[i].k;
            float *a = compute_weights(&n, M[i].net, M[i].mod, cnt), *b = compute_weights(&ni, M[i].net, M[i].mod, cnt);
            CHECK(a && b && !memcmp(a, b, (size_t)cnt * sizeof *a), "%s: %s in place equals the copy's merge", pn,
                  M[i].mod);
            free(a);
            free(b);
        }
        CHECK(sdxl_lora_apply(ni.s, &u, 1, &si, &e) == SDXL_OK && si.layers_rebuilt == 0,
              "%s: in place: the same list again changes nothing", pn);
        sdxl_lora_use u2 = {pk, 0.5f, -0.7f};
        int rc = sdxl_lora_apply(ni.s, &u2, 1, &si, &e);
        CHECK(rc == SDXL_ERR_UNSUPPORTED && strstr(e.msg, "lora_in_place"), "%s: in place: another list refused (%s)",
              pn, e.msg);
        CHECK(sdxl_lora_apply(ni.s, NULL, 0, &si, &e) == SDXL_ERR_UNSUPPORTED, "%s: in place: no removal", pn);
        net_free(&ni);
    } else {
        CHECK(0, "%s: tiny model loads for in place", pn);
    }
    /* reserved copies (--lora-reserve): mapped before the first apply, which then maps nothing new
     * and merges the same bytes; removal gives back the loaded weights */
    net nr;
    if (net_load_mode(&nr, prec, 0, 0) == 0) {
        sdxl_lora_stats sv, sa;
        float *before[8];
        for (int i = 0; i < NM; i++) before[i] = compute_weights(&nr, M[i].net, M[i].mod, M[i].out * M[i].in * M[i].k);
        CHECK(sdxl_lora_reserve(nr.s, &sv, &e) == SDXL_OK && sv.kept_bytes > st.kept_bytes,
              "%s: reserve maps every layer's copy: %zu bytes against %zu for this LoRA's layers", pn, sv.kept_bytes,
              st.kept_bytes);
        CHECK(sdxl_lora_apply(nr.s, &u, 1, &sa, &e) == SDXL_OK && sa.kept_bytes == sv.kept_bytes &&
                  sa.layers_packed == NM,
              "%s: apply after reserve: %d layers packed, %zu bytes kept (reserved %zu)", pn, sa.layers_packed,
              sa.kept_bytes, sv.kept_bytes);
        for (int i = 0; i < NM; i++) {
            int64_t cnt = M[i].out * M[i].in * M[i].k;
            float *a = compute_weights(&n, M[i].net, M[i].mod, cnt), *b = compute_weights(&nr, M[i].net, M[i].mod, cnt);
            CHECK(a && b && !memcmp(a, b, (size_t)cnt * sizeof *a), "%s: %s after reserve equals the lazy copy's merge",
                  pn, M[i].mod);
            free(a);
            free(b);
        }
        CHECK(sdxl_lora_apply(nr.s, NULL, 0, &sa, &e) == SDXL_OK, "%s: reserve: remove", pn);
        for (int i = 0; i < NM; i++) {
            int64_t cnt = M[i].out * M[i].in * M[i].k;
            float *a = compute_weights(&nr, M[i].net, M[i].mod, cnt);
            CHECK(a && before[i] && !memcmp(a, before[i], (size_t)cnt * sizeof *a),
                  "%s: %s after reserve + apply + remove equals the loaded weights", pn, M[i].mod);
            free(a);
            free(before[i]);
        }
        net_free(&nr);
    } else {
        CHECK(0, "%s: tiny model loads for the reserve", pn);
    }
    /* the processor-named file gives the same merged modules */
    sdxl_lora_use up = {pp, 0.9f, -0.7f};
    CHECK(sdxl_lora_apply(n.s, &up, 1, &st, &e) == SDXL_OK, "%s: processor keys apply (%s)", pn, e.msg);
    CHECK(st.modules_bound == 3 && st.modules_unmatched == 0, "%s: processor keys: %d bound, %d unmatched (%s)", pn,
          st.modules_bound, st.modules_unmatched, st.unmatched);
    for (int i = 0; i < NM; i++) {
        if (!M[i].proc) continue;
        int64_t cnt = M[i].out * M[i].in * M[i].k;
        float *w = orig_of(&n, M[i].net, M[i].mod, cnt);
        CHECK(!memcmp(w, ref[i], (size_t)cnt * sizeof *w), "%s: %s from processor keys equals kohya", pn, M[i].mod);
        free(w);
    }
    CHECK(sdxl_lora_apply(n.s, NULL, 0, &st, &e) == SDXL_OK, "%s: remove", pn);
    for (int i = 0; i < NM; i++) {
        free(orig[i]);
        free(ref[i]);
    }
    fb_free(&bk);
    unlink(pk);
    unlink(pp);
    net_free(&n);
}

static void test_tags(void) {
    sdxl_lora_tag t[8];
    int n = 0;
    char out[256];
    sdxl_err e = {0};
    CHECK(sdxl_lora_tags_extract("a cat <lora:style:0.5>, <lora:b:0.25:0.75> red <lora:c>", out, t, 8, &n, &e) ==
              SDXL_OK, "tags parse");
    CHECK(n == 3 && !strcmp(out, "a cat ,  red ") && !strcmp(t[0].name, "style") && t[0].unet_weight == 0.5f &&
              t[0].te_weight == 0.5f && t[1].te_weight == 0.25f && t[1].unet_weight == 0.75f &&
              t[2].unet_weight == 1.0f,
          "tags: '%s', %d", out, n);
    CHECK(sdxl_lora_tags_extract("<lora:x:te=0.1:unet=0.2>", out, t, 8, &n, &e) == SDXL_OK && n == 1 &&
              t[0].te_weight == 0.1f && t[0].unet_weight == 0.2f, "named te= / unet=");
    CHECK(sdxl_lora_tags_extract("<lora:x:abc>", out, t, 8, &n, &e) == SDXL_ERR_ARG, "bad weight refused");
    CHECK(sdxl_lora_tags_extract("<lora:x:1", out, t, 8, &n, &e) == SDXL_ERR_ARG, "unterminated tag refused");
    /* names stay inside the folders */
    char dir[] = "/tmp/sdxl_loradir_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char p[512], res[4096];
    snprintf(p, sizeof p, "%s/good.safetensors", dir);
    FILE *f = fopen(p, "w");
    fputs("x", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/escape.safetensors", dir);
    CHECK(symlink("/etc/passwd", p) == 0, "symlink");
    const char *dirs[1] = {dir};
    CHECK(sdxl_lora_resolve("good", dirs, 1, 0, res, sizeof res, &e) == SDXL_OK, "name resolves in its folder");
    CHECK(sdxl_lora_resolve("../../etc/passwd", dirs, 1, 0, res, sizeof res, &e) == SDXL_ERR_ARG &&
              strstr(e.msg, ".."), "'..' refused: %s", e.msg);
    CHECK(sdxl_lora_resolve("/etc/passwd", dirs, 1, 0, res, sizeof res, &e) == SDXL_ERR_ARG, "absolute refused");
    CHECK(sdxl_lora_resolve("escape", dirs, 1, 0, res, sizeof res, &e) != SDXL_OK, "symlink escape refused");
    unlink(p);
    snprintf(p, sizeof p, "%s/good.safetensors", dir);
    unlink(p);
    rmdir(dir);
}

/* The factors' finiteness check, in every float dtype, at every lane of the scan's eight-byte
 * words and in the tail past them: a file with one NaN or Inf is refused, naming its element. */
static void test_nonfinite(void) {
    const sdxl_st_dtype dts[] = {SDXL_ST_F16, SDXL_ST_BF16, SDXL_ST_F32, SDXL_ST_F64};
    const char *dn[] = {"F16", "BF16", "F32", "F64"};
    enum { IN = 9, R = 3, NUM = R * IN }; /* 27 values: not a whole number of words in any dtype */
    char path[] = "/tmp/sdxl_lnan_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    for (int k = 0; k < 4; k++) {
        for (int at = -1; at < NUM; at++) {
            for (int inf = 0; inf < 2; inf++) {
                if (at < 0 && inf) continue;
                unsigned char down[NUM * 8], up[4 * R * 8];
                memset(up, 0, sizeof up);
                for (int i = 0; i < NUM; i++) {
                    float f = 0.25f * (float)(i % 7) - 0.75f, v = i == at ? (inf ? -INFINITY : NAN) : f;
                    double dv = v;
                    uint32_t u;
                    memcpy(&u, &v, 4);
                    uint16_t h = (uint16_t)(u >> 16);
                    if (dts[k] == SDXL_ST_F16) sdxl_f32_to_f16(&v, &h, 1);
                    if (dts[k] == SDXL_ST_F64) memcpy(down + 8 * i, &dv, 8);
                    else if (dts[k] == SDXL_ST_F32) memcpy(down + 4 * i, &v, 4);
                    else memcpy(down + 2 * i, &h, 2);
                }
                sdxl_st_writer *w = NULL;
                sdxl_err e = {0};
                int64_t sd[2] = {R, IN}, su[2] = {4, R};
                sdxl_st_writer_new(&w, &e);
                sdxl_st_writer_add(w, "lora_unet_m.lora_down.weight", dts[k], 2, sd, down, &e);
                sdxl_st_writer_add(w, "lora_unet_m.lora_up.weight", dts[k], 2, su, up, &e);
                if (sdxl_st_writer_finish(w, path, &e)) fprintf(stderr, "write: %s\n", e.msg);
                sdxl_st_writer_free(w);
                sdxl_lora_file *f = NULL;
                int st = sdxl_lora_open(path, &f, &e);
                char want[64];
                snprintf(want, sizeof want, "at element %d", at);
                if (at < 0) CHECK(st == SDXL_OK, "%s: a finite file opens (%s)", dn[k], e.msg);
                else
                    CHECK(st == SDXL_ERR_FORMAT && strstr(e.msg, "non-finite") && strstr(e.msg, want),
                          "%s: %s at element %d is found: %s", dn[k], inf ? "-Inf" : "NaN", at, e.msg);
                if (f) sdxl_lora_close(f);
            }
        }
    }
    unlink(path);
}

int main(void) {
    test_tags();
    test_nonfinite();
    test_formulas();
    test_roundtrip(SDXL_PREC_F32, 0);
    test_roundtrip(SDXL_PREC_BF16, 0);
    test_roundtrip(SDXL_PREC_F32, 1);
    test_roundtrip(SDXL_PREC_BF16, 1);
    test_dora_sequential();
    test_packed(SDXL_PREC_F32);
    test_packed(SDXL_PREC_BF16);
    return check_done();
}
