/* text/clip: the CLIP text transformer against a double-precision reference on a synthetic
 * model in both namings, the goldens' tiny encoders in f32 and bf16, and the loader's checks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"
#include "text/clip.h"

/* ---- synthetic tensor source ------------------------------------------------------------------ */

#define MAX_T 128

typedef struct synth {
    sdxl_st_tensor t[MAX_T];
    char names[MAX_T][96];
    float *data[MAX_T];
    int n;
    const char *drop;    /* name hidden from find() */
    const char *reshape; /* name reported with a wrong shape */
} synth;

static const sdxl_st_tensor *synth_find(void *u, const char *name) {
    synth *s = u;
    if (s->drop && !strcmp(name, s->drop)) return NULL;
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) return &s->t[i];
    return NULL;
}

static void synth_add(synth *s, const char *name, int nd, int64_t d0, int64_t d1, const float *v) {
    int i = s->n++;
    snprintf(s->names[i], sizeof s->names[i], "%s", name);
    int64_t n = nd == 1 ? d0 : d0 * d1;
    s->data[i] = malloc((size_t)n * sizeof(float));
    memcpy(s->data[i], v, (size_t)n * sizeof(float));
    sdxl_st_tensor *t = &s->t[i];
    memset(t, 0, sizeof *t);
    t->name = s->names[i];
    t->dtype = SDXL_ST_F32;
    t->ndim = nd;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = (uint64_t)n;
    t->nbytes = (uint64_t)n * 4;
    t->data = s->data[i];
}

static void synth_free(synth *s) {
    for (int i = 0; i < s->n; i++)
        free(s->data[i]);
    s->n = 0;
}

/* One random model, W 32, 2 layers, 2 heads, MLP 64, vocab 100, 8 positions, projection 16. */
enum { W = 32, NL = 2, NH = 2, F = 64, V = 100, P = 8, J = 16 };

typedef struct ref_model {
    float tok[V * W], pos[P * W], lnf_g[W], lnf_b[W], proj[W * J]; /* proj: P [W, J], x @ P */
    struct {
        float ln1_g[W], ln1_b[W], wq[W * W], wk[W * W], wv[W * W], bq[W], bk[W], bv[W], wo[W * W], bo[W];
        float ln2_g[W], ln2_b[W], w1[F * W], b1[F], w2[W * F], b2[W];
    } b[NL];
} ref_model;

static void ref_init(ref_model *m, uint64_t seed) {
    uint64_t st = seed;
    float *all = (float *)m;
    check_fill_uniform(all, (int64_t)(sizeof *m / sizeof(float)), -0.3f, 0.3f, &st);
    for (int i = 0; i < W; i++) {
        m->lnf_g[i] += 1.0f;
        for (int l = 0; l < NL; l++)
            m->b[l].ln1_g[i] += 1.0f, m->b[l].ln2_g[i] += 1.0f;
    }
}

static void build_source(const ref_model *m, sdxl_clip_naming nm, synth *s) {
    char n[96];
    memset(s, 0, sizeof *s);
    if (nm == SDXL_CLIP_NAMING_HF) {
        synth_add(s, "text_model.embeddings.token_embedding.weight", 2, V, W, m->tok);
        synth_add(s, "text_model.embeddings.position_embedding.weight", 2, P, W, m->pos);
        for (int l = 0; l < NL; l++) {
#define ADD(suffix, nd, a, b, v)                                                                                       \
    snprintf(n, sizeof n, "text_model.encoder.layers.%d.%s", l, suffix);                                               \
    synth_add(s, n, nd, a, b, v)
            ADD("layer_norm1.weight", 1, W, 0, m->b[l].ln1_g);
            ADD("layer_norm1.bias", 1, W, 0, m->b[l].ln1_b);
            ADD("self_attn.q_proj.weight", 2, W, W, m->b[l].wq);
            ADD("self_attn.q_proj.bias", 1, W, 0, m->b[l].bq);
            ADD("self_attn.k_proj.weight", 2, W, W, m->b[l].wk);
            ADD("self_attn.k_proj.bias", 1, W, 0, m->b[l].bk);
            ADD("self_attn.v_proj.weight", 2, W, W, m->b[l].wv);
            ADD("self_attn.v_proj.bias", 1, W, 0, m->b[l].bv);
            ADD("self_attn.out_proj.weight", 2, W, W, m->b[l].wo);
            ADD("self_attn.out_proj.bias", 1, W, 0, m->b[l].bo);
            ADD("layer_norm2.weight", 1, W, 0, m->b[l].ln2_g);
            ADD("layer_norm2.bias", 1, W, 0, m->b[l].ln2_b);
            ADD("mlp.fc1.weight", 2, F, W, m->b[l].w1);
            ADD("mlp.fc1.bias", 1, F, 0, m->b[l].b1);
            ADD("mlp.fc2.weight", 2, W, F, m->b[l].w2);
            ADD("mlp.fc2.bias", 1, W, 0, m->b[l].b2);
#undef ADD
        }
        synth_add(s, "text_model.final_layer_norm.weight", 1, W, 0, m->lnf_g);
        synth_add(s, "text_model.final_layer_norm.bias", 1, W, 0, m->lnf_b);
        float pt[J * W];
        for (int i = 0; i < W; i++)
            for (int j = 0; j < J; j++)
                pt[j * W + i] = m->proj[i * J + j];
        synth_add(s, "text_projection.weight", 2, J, W, pt);
    } else {
        synth_add(s, "token_embedding.weight", 2, V, W, m->tok);
        synth_add(s, "positional_embedding", 2, P, W, m->pos);
        for (int l = 0; l < NL; l++) {
            float qkv[3 * W * W], bqkv[3 * W];
            memcpy(qkv, m->b[l].wq, sizeof m->b[l].wq);
            memcpy(qkv + W * W, m->b[l].wk, sizeof m->b[l].wk);
            memcpy(qkv + 2 * W * W, m->b[l].wv, sizeof m->b[l].wv);
            memcpy(bqkv, m->b[l].bq, sizeof m->b[l].bq);
            memcpy(bqkv + W, m->b[l].bk, sizeof m->b[l].bk);
            memcpy(bqkv + 2 * W, m->b[l].bv, sizeof m->b[l].bv);
#define ADD(suffix, nd, a, b, v)                                                                                       \
    snprintf(n, sizeof n, "transformer.resblocks.%d.%s", l, suffix);                                                   \
    synth_add(s, n, nd, a, b, v)
            ADD("ln_1.weight", 1, W, 0, m->b[l].ln1_g);
            ADD("ln_1.bias", 1, W, 0, m->b[l].ln1_b);
            ADD("attn.in_proj_weight", 2, 3 * W, W, qkv);
            ADD("attn.in_proj_bias", 1, 3 * W, 0, bqkv);
            ADD("attn.out_proj.weight", 2, W, W, m->b[l].wo);
            ADD("attn.out_proj.bias", 1, W, 0, m->b[l].bo);
            ADD("ln_2.weight", 1, W, 0, m->b[l].ln2_g);
            ADD("ln_2.bias", 1, W, 0, m->b[l].ln2_b);
            ADD("mlp.c_fc.weight", 2, F, W, m->b[l].w1);
            ADD("mlp.c_fc.bias", 1, F, 0, m->b[l].b1);
            ADD("mlp.c_proj.weight", 2, W, F, m->b[l].w2);
            ADD("mlp.c_proj.bias", 1, W, 0, m->b[l].b2);
#undef ADD
        }
        synth_add(s, "ln_final.weight", 1, W, 0, m->lnf_g);
        synth_add(s, "ln_final.bias", 1, W, 0, m->lnf_b);
        synth_add(s, "text_projection", 2, W, J, m->proj);
    }
}

/* ---- double-precision reference ---------------------------------------------------------------- */

static void ref_ln(const double *x, double *y, const float *g, const float *b) {
    double mu = 0, var = 0;
    for (int i = 0; i < W; i++)
        mu += x[i];
    mu /= W;
    for (int i = 0; i < W; i++)
        var += (x[i] - mu) * (x[i] - mu);
    var /= W;
    for (int i = 0; i < W; i++)
        y[i] = (x[i] - mu) / sqrt(var + 1e-5) * g[i] + b[i];
}

static void ref_lin(const double *x, const float *w, const float *b, int in, int out, double *y) {
    for (int o = 0; o < out; o++) {
        double s = b ? b[o] : 0;
        for (int i = 0; i < in; i++)
            s += x[i] * w[o * in + i];
        y[o] = s;
    }
}

/* hs: [NL+1][L][W] hidden states of one sequence; pooled [J]. */
static void ref_forward(const ref_model *m, const int32_t *ids, int L, int quick, double *hs, double *pooled) {
    double x[P][W], h[P][W], q[P][W], k[P][W], v[P][W], a[P][W], t[W], f[F];
    for (int i = 0; i < L; i++)
        for (int j = 0; j < W; j++)
            x[i][j] = (double)m->tok[ids[i] * W + j] + m->pos[i * W + j];
    memcpy(hs, x, sizeof(double) * L * W);
    const int hd = W / NH;
    for (int l = 0; l < NL; l++) {
        for (int i = 0; i < L; i++) {
            ref_ln(x[i], h[i], m->b[l].ln1_g, m->b[l].ln1_b);
            ref_lin(h[i], m->b[l].wq, m->b[l].bq, W, W, q[i]);
            ref_lin(h[i], m->b[l].wk, m->b[l].bk, W, W, k[i]);
            ref_lin(h[i], m->b[l].wv, m->b[l].bv, W, W, v[i]);
        }
        for (int hh = 0; hh < NH; hh++)
            for (int i = 0; i < L; i++) {
                double sc[P], mx = -1e300, z = 0;
                for (int j = 0; j <= i; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += q[i][hh * hd + d] * k[j][hh * hd + d];
                    sc[j] = s / sqrt((double)hd);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j <= i; j++)
                    z += (sc[j] = exp(sc[j] - mx));
                for (int d = 0; d < hd; d++) {
                    double s = 0;
                    for (int j = 0; j <= i; j++)
                        s += sc[j] / z * v[j][hh * hd + d];
                    a[i][hh * hd + d] = s;
                }
            }
        for (int i = 0; i < L; i++) {
            ref_lin(a[i], m->b[l].wo, m->b[l].bo, W, W, t);
            for (int j = 0; j < W; j++)
                x[i][j] += t[j];
            ref_ln(x[i], h[i], m->b[l].ln2_g, m->b[l].ln2_b);
            ref_lin(h[i], m->b[l].w1, m->b[l].b1, W, F, f);
            for (int j = 0; j < F; j++)
                f[j] = quick ? f[j] / (1 + exp(-1.702 * f[j])) : 0.5 * f[j] * (1 + erf(f[j] / sqrt(2.0)));
            ref_lin(f, m->b[l].w2, m->b[l].b2, F, W, t);
            for (int j = 0; j < W; j++)
                x[i][j] += t[j];
        }
        memcpy(hs + (size_t)(l + 1) * L * W, x, sizeof(double) * L * W);
    }
    int at = 0;
    for (int i = 1; i < L; i++)
        if (ids[i] > ids[at]) at = i;
    ref_ln(x[at], t, m->lnf_g, m->lnf_b);
    for (int j = 0; j < J; j++) {
        double s = 0;
        for (int i = 0; i < W; i++)
            s += t[i] * m->proj[i * J + j];
        pooled[j] = s;
    }
}

/* ---- tests ------------------------------------------------------------------------------------------ */

static sdxl_clip *load_synth(sdxl_compute *c, synth *s, sdxl_clip_naming nm, int act, sdxl_err *e, int *rc) {
    sdxl_clip_source src = {synth_find, s, nm, NULL, "synthetic"};
    sdxl_clip_opts o;
    sdxl_clip_opts_init(&o);
    o.heads = NH;
    o.act = act;
    sdxl_clip *m = NULL;
    *rc = sdxl_clip_load(c, &src, &o, &m, e);
    return m;
}

/* f32 forward vs the double reference, HF and open_clip namings, both activations. Bound: NMSE
 * 1e-10; f32 rounding (2^-24 relative per op over a few dozen ops) gives ~1e-13. */
static void test_reference(sdxl_compute *c) {
    static ref_model rm;
    ref_init(&rm, 7);
    const int B = 2, L = P;
    int32_t ids[2 * P] = {49 % V, 5, 17, 99, 3, 99, 0, 0, 98, 1, 2, 3, 4, 5, 6, 7};
    static double hs[2][(NL + 1) * P * W], pooled[2][J];
    for (int nm = 0; nm < 2; nm++)
        for (int quick = 0; quick < 2; quick++) {
            for (int b = 0; b < B; b++)
                ref_forward(&rm, ids + b * L, L, quick, hs[b], pooled[b]);
            synth s;
            build_source(&rm, (sdxl_clip_naming)nm, &s);
            sdxl_err e = {0};
            int rc;
            sdxl_clip *m =
                load_synth(c, &s, (sdxl_clip_naming)nm, quick ? SDXL_CLIP_QUICK_GELU : SDXL_CLIP_GELU, &e, &rc);
            CHECK(rc == SDXL_OK && m, "load naming %d: %s", nm, e.msg);
            if (!m) {
                synth_free(&s);
                continue;
            }
            CHECK(m->cfg.width == W && m->cfg.layers == NL && m->cfg.mlp == F && m->cfg.vocab == V &&
                      m->cfg.n_pos == P && m->cfg.proj == J && m->cfg.heads == NH,
                  "config from shapes (naming %d)", nm);
            static float all_buf[NL + 1][2 * P * W], hidden[2 * P * W], pool[2 * J];
            float *all[NL + 1];
            for (int i = 0; i <= NL; i++)
                all[i] = all_buf[i];
            sdxl_clip_io io = {ids, B, L, 1, hidden, pool, NULL, all};
            rc = sdxl_clip_forward(c, m, &io, &e);
            CHECK(rc == SDXL_OK, "forward: %s", e.msg);
            for (int l = 0; l <= NL; l++) {
                double ref[2 * P * W];
                for (int b = 0; b < B; b++)
                    memcpy(ref + b * P * W, hs[b] + (size_t)l * P * W, sizeof(double) * P * W);
                double err = check_nmse(all[l], ref, B * P * W);
                CHECK(err < 1e-10, "naming %d act %d hidden state %d nmse %.3g", nm, quick, l, err);
            }
            CHECK(!memcmp(hidden, all[1], sizeof hidden), "io.hidden is hidden state io.layer");
            double pref[2 * J];
            memcpy(pref, pooled[0], sizeof pooled[0]);
            memcpy(pref + J, pooled[1], sizeof pooled[1]);
            double err = check_nmse(pool, pref, 2 * J);
            CHECK(err < 1e-10, "naming %d act %d pooled nmse %.3g", nm, quick, err);
            sdxl_clip_free(m);
            synth_free(&s);
        }
}

/* Loader checks: the first missing or misshapen tensor is named; nothing crashes. */
static void test_validation(sdxl_compute *c) {
    static ref_model rm;
    ref_init(&rm, 3);
    synth s;
    build_source(&rm, SDXL_CLIP_NAMING_OPENCLIP, &s);
    sdxl_err e = {0};
    int rc;
    s.drop = "transformer.resblocks.1.mlp.c_proj.bias";
    sdxl_clip *m = load_synth(c, &s, SDXL_CLIP_NAMING_OPENCLIP, -1, &e, &rc);
    CHECK(rc == SDXL_ERR_FORMAT && !m && strstr(e.msg, "transformer.resblocks.1.mlp.c_proj.bias"), "missing named: %s",
          e.msg);
    s.drop = NULL;
    for (int i = 0; i < s.n; i++)
        if (!strcmp(s.names[i], "transformer.resblocks.0.attn.in_proj_weight")) s.t[i].shape[0] = W;
    m = load_synth(c, &s, SDXL_CLIP_NAMING_OPENCLIP, -1, &e, &rc);
    CHECK(rc == SDXL_ERR_FORMAT && !m && strstr(e.msg, "in_proj_weight") && strstr(e.msg, "[96, 32]"),
          "shape named: %s", e.msg);
    for (int i = 0; i < s.n; i++)
        if (!strcmp(s.names[i], "transformer.resblocks.0.attn.in_proj_weight")) s.t[i].shape[0] = 3 * W;
    for (int i = 0; i < s.n; i++)
        if (!strcmp(s.names[i], "ln_final.weight")) s.t[i].dtype = SDXL_ST_I64;
    m = load_synth(c, &s, SDXL_CLIP_NAMING_OPENCLIP, -1, &e, &rc);
    CHECK(rc == SDXL_ERR_FORMAT && !m && strstr(e.msg, "ln_final.weight") && strstr(e.msg, "dtype"), "dtype named: %s",
          e.msg);
    synth_free(&s);

    build_source(&rm, SDXL_CLIP_NAMING_HF, &s);
    s.drop = "text_model.embeddings.token_embedding.weight";
    m = load_synth(c, &s, SDXL_CLIP_NAMING_HF, -1, &e, &rc);
    CHECK(rc == SDXL_ERR_FORMAT && !m && strstr(e.msg, "token_embedding"), "no embedding: %s", e.msg);
    s.drop = NULL;
    m = load_synth(c, &s, SDXL_CLIP_NAMING_HF, -1, &e, &rc);
    CHECK(rc == SDXL_OK && m, "loads: %s", e.msg);
    if (m) {
        int32_t ids[P] = {1, 2, 3, V, 0, 0, 0, 0};
        float out[P * W];
        sdxl_clip_io io = {ids, 1, P, 1, out, NULL, NULL, NULL};
        CHECK(sdxl_clip_forward(c, m, &io, &e) == SDXL_ERR_ARG && strstr(e.msg, "[0, 3]"), "id >= vocab: %s", e.msg);
        ids[3] = -5;
        CHECK(sdxl_clip_forward(c, m, &io, &e) == SDXL_ERR_ARG, "negative id: %s", e.msg);
        ids[3] = 4;
        io.len = P + 1;
        CHECK(sdxl_clip_forward(c, m, &io, &e) == SDXL_ERR_ARG, "too long: %s", e.msg);
        io.len = P;
        io.layer = NL + 1;
        CHECK(sdxl_clip_forward(c, m, &io, &e) == SDXL_ERR_ARG, "layer out of range: %s", e.msg);
        io.layer = 0;
        CHECK(sdxl_clip_forward(c, m, &io, &e) == SDXL_OK, "layer 0 = embeddings");
        CHECK(fabsf(out[W + 2] - (rm.tok[2 * W + 2] + rm.pos[W + 2])) < 1e-6f, "embedding row");
        sdxl_clip_free(m);
    }
    synth_free(&s);
    CHECK(sdxl_clip_default_heads(768) == 12 && sdxl_clip_default_heads(1280) == 20 &&
              sdxl_clip_default_heads(1024) == 16,
          "real head counts");
    CHECK(sdxl_clip_default_heads(32) == 2 && sdxl_clip_default_heads(64) == 4, "tiny head counts");
}

/* The goldens' tiny encoders: both layouts load to the same configuration, and bf16 stays close
 * to f32. Bound: NMSE 1e-3 on the penultimate states and pooled; bf16 inputs carry a relative
 * rounding of 2^-9, ~1e-6 NMSE per GEMM, which compounds over 3 blocks to ~1e-5. */
static void test_tiny_models(void) {
    const char *paths[2] = {SDXL_TEST_DATA "/golden/models/tiny_sd_xl_base.safetensors",
                            SDXL_TEST_DATA "/golden/models/tiny-sdxl-base"};
    sdxl_clip_config cfgs[2][2];
    memset(cfgs, 0, sizeof cfgs);
    for (int p = 0; p < 2; p++) {
        sdxl_err e = {0};
        sdxl_ckpt *ck = NULL;
        if (sdxl_ckpt_open(paths[p], &ck, &e)) {
            CHECK(0, "open %s: %s", paths[p], e.msg);
            continue;
        }
        for (int part = 0; part < 2; part++) {
            sdxl_part pt = part ? SDXL_PART_TE2 : SDXL_PART_TE1;
            sdxl_compute *c32 = NULL, *c16 = NULL;
            sdxl_clip *m32 = NULL, *m16 = NULL;
            int rc = sdxl_compute_new(SDXL_PREC_F32, &c32, &e);
            if (!rc) rc = sdxl_compute_new(SDXL_PREC_BF16, &c16, &e);
            if (!rc) rc = sdxl_clip_load_ckpt(c32, ck, pt, NULL, &m32, &e);
            if (!rc) rc = sdxl_clip_load_ckpt(c16, ck, pt, NULL, &m16, &e);
            CHECK(rc == SDXL_OK, "%s part %d: %s", paths[p], part, e.msg);
            if (!rc) {
                cfgs[p][part] = m32->cfg;
                const int64_t Wd = m32->cfg.width, L = 77, Jd = m32->cfg.proj ? m32->cfg.proj : Wd;
                int32_t ids[2 * 77];
                for (int i = 0; i < 2 * 77; i++)
                    ids[i] = part ? 0 : 49407;
                int32_t text[] = {49406, 320, 1125, 539, 320, 2368, 49407};
                memcpy(ids, text, sizeof text);
                for (int i = 0; i < 40; i++)
                    ids[77 + i] = (int32_t)(49406 - 997 * i);
                ids[77] = 49406;
                ids[77 + 40] = 49407;
                float *h32 = malloc((size_t)(2 * L * Wd) * 4), *h16 = malloc((size_t)(2 * L * Wd) * 4);
                float p32[2 * 1280], p16[2 * 1280];
                sdxl_clip_io a = {ids, 2, L, m32->cfg.layers - 1, h32, p32, NULL, NULL};
                sdxl_clip_io b = {ids, 2, L, m16->cfg.layers - 1, h16, p16, NULL, NULL};
                rc = sdxl_clip_forward(c32, m32, &a, &e);
                if (!rc) rc = sdxl_clip_forward(c16, m16, &b, &e);
                CHECK(rc == SDXL_OK, "forward: %s", e.msg);
                double n1 = check_nmse_f(h16, h32, 2 * L * Wd), n2 = check_nmse_f(p16, p32, 2 * Jd);
                CHECK(n1 < 1e-3 && n2 < 1e-3, "%s part %d bf16 vs f32 nmse hidden %.3g pooled %.3g", paths[p], part, n1,
                      n2);
                printf("bf16 vs f32, %s part %d: nmse hidden %.3g pooled %.3g\n", p ? "diffusers" : "single-file", part,
                       n1, n2);
                free(h32);
                free(h16);
            }
            sdxl_clip_free(m32);
            sdxl_clip_free(m16);
            sdxl_compute_free(c32);
            sdxl_compute_free(c16);
        }
        sdxl_ckpt_close(ck);
    }
    CHECK(!memcmp(&cfgs[0][0], &cfgs[1][0], sizeof cfgs[0][0]) && !memcmp(&cfgs[0][1], &cfgs[1][1], sizeof cfgs[0][1]),
          "both layouts give the same configuration");
    CHECK(cfgs[0][0].act == SDXL_CLIP_QUICK_GELU && cfgs[0][1].act == SDXL_CLIP_GELU && cfgs[0][0].heads == 2 &&
              cfgs[0][1].heads == 4 && cfgs[0][1].proj == 64 && cfgs[0][0].proj == 0,
          "tiny TE1 quick_gelu 2 heads, TE2 gelu 4 heads projection 64");
}

int main(void) {
    sdxl_compute *c = NULL;
    sdxl_err e = {0};
    if (sdxl_compute_new(SDXL_PREC_F32, &c, &e)) {
        CHECK(0, "compute: %s", e.msg);
        return check_done();
    }
    test_reference(c);
    test_validation(c);
    sdxl_compute_free(c);
    test_tiny_models();
    return check_done();
}
