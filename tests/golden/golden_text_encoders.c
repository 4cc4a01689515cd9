/* Golden component text_encoders: both SDXL text encoders from token ids, from both checkpoint
 * layouts, in f32. Every case of text_encoders.json is run; its tensors are "<case>/<name>", or
 * bare "<name>" when the file holds one case. Threshold: max-abs 1e-4, the README's figure for
 * single components (fp32 vs fp64 of the reference is 1.4e-6 to 2.4e-6 on outputs of std ~1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "golden.h"
#include "io/checkpoint.h"
#include "tensor/ops.h"
#include "text/clip.h"
#include "text/conditioning.h"
#include "text/tokenizer.h"

#define TE_MAX_ABS 1e-4

static const char *COMP = "text_encoders";

typedef struct te_case {
    golden_ctx *g;
    golden_set *s;
    const char *prefix; /* "<case>/" or "" */
    char label[256];    /* "<case>/<layout>" */
} te_case;

static const sdxl_st_tensor *find_t(te_case *tc, const char *name) {
    char key[512];
    snprintf(key, sizeof key, "%s%s", tc->prefix, name);
    return golden_find(tc->s, key);
}

static float *load_t(te_case *tc, const char *name, size_t *numel) {
    char key[512];
    snprintf(key, sizeof key, "%s%s", tc->prefix, name);
    return golden_f32(tc->g, tc->s, key, NULL, NULL, numel);
}

/* Compares `got` with tensor `name` when the case has it. */
static void cmp(te_case *tc, const char *name, const float *got, size_t n) {
    if (!find_t(tc, name)) return;
    size_t m = 0;
    float *ref = load_t(tc, name, &m);
    char what[512];
    snprintf(what, sizeof what, "%s/%s", tc->label, name);
    if (!ref) return;
    if (m != n)
        golden_fail(tc->g, COMP, what, "golden has %zu values, we produced %zu", m, n);
    else
        golden_check(tc->g, COMP, what, "max_abs", golden_max_abs(got, ref, n), TE_MAX_ABS);
    free(ref);
}

/* ids tensor [B, L] -> int32. */
static int32_t *load_ids(te_case *tc, const char *name, int64_t *B, int64_t *L) {
    const sdxl_st_tensor *t = find_t(tc, name);
    if (!t || t->ndim != 2) {
        golden_fail(tc->g, COMP, tc->label, "%s%s: missing or not [batch, 77]", tc->prefix, name);
        return NULL;
    }
    size_t n = 0;
    float *f = load_t(tc, name, &n);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!f || !ids) {
        free(f);
        free(ids);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)f[i];
    free(f);
    *B = t->shape[0];
    *L = t->shape[1];
    return ids;
}

static void run_encoder(te_case *tc, sdxl_compute *c, const sdxl_clip *te, const int32_t *ids, int64_t B, int64_t L,
                        const char *tag, float **pen_out) {
    const int64_t W = te->cfg.width, nl = te->cfg.layers, J = te->cfg.proj ? te->cfg.proj : W;
    const size_t hs = (size_t)(B * L * W);
    float **all = calloc((size_t)nl + 1, sizeof *all);
    float *normed = malloc(hs * sizeof(float)), *pooled = malloc((size_t)(B * J) * sizeof(float));
    int ok = all && normed && pooled;
    for (int64_t i = 0; ok && i <= nl; i++)
        ok = (all[i] = malloc(hs * sizeof(float))) != NULL;
    sdxl_err e = {0};
    sdxl_clip_io io = {ids, B, L, 0, NULL, pooled, normed, all};
    if (ok && sdxl_clip_forward(c, te, &io, &e) == SDXL_OK) {
        char name[128];
        for (int64_t i = 0; i <= nl; i++) {
            snprintf(name, sizeof name, "%s_hidden_states/%lld", tag, (long long)i);
            cmp(tc, name, all[i], hs);
        }
        snprintf(name, sizeof name, "%s_penultimate", tag);
        cmp(tc, name, all[nl - 1], hs);
        snprintf(name, sizeof name, "%s_last_prenorm", tag);
        cmp(tc, name, all[nl], hs);
        snprintf(name, sizeof name, "%s_last_hidden_state", tag);
        cmp(tc, name, normed, hs);
        snprintf(name, sizeof name, "%s_pooled", tag);
        if (te->cfg.proj) cmp(tc, name, pooled, (size_t)(B * J));
        *pen_out = all[nl - 1];
        all[nl - 1] = NULL;
    } else {
        golden_fail(tc->g, COMP, tc->label, "%s forward: %s", tag, ok ? e.msg : "out of memory");
    }
    if (all)
        for (int64_t i = 0; i <= nl; i++)
            free(all[i]);
    free(all);
    free(normed);
    free(pooled);
}

/* te2 with the pad run after the last EOS set to 49407: the JSON's "what if" tensor. */
static void run_pad_variant(te_case *tc, sdxl_compute *c, const sdxl_clip *te, const int32_t *ids, int64_t B,
                            int64_t L) {
    const char *name = "te2_penultimate_if_padded_with_49407";
    if (!find_t(tc, name)) return;
    int32_t *v = malloc((size_t)(B * L) * sizeof *v);
    float *h = malloc((size_t)(B * L * te->cfg.width) * sizeof(float));
    sdxl_err e = {0};
    if (v && h) {
        memcpy(v, ids, (size_t)(B * L) * sizeof *v);
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = L - 1; t > 0 && v[b * L + t] == 0; t--)
                v[b * L + t] = 49407;
        sdxl_clip_io io = {v, B, L, te->cfg.layers - 1, h, NULL, NULL, NULL};
        if (sdxl_clip_forward(c, te, &io, &e) == SDXL_OK)
            cmp(tc, name, h, (size_t)(B * L * te->cfg.width));
        else
            golden_fail(tc->g, COMP, tc->label, "pad variant: %s", e.msg);
    }
    free(v);
    free(h);
}

/* From text: each prompt of the case's "prompts" list through tokenizer, prompt parser and
 * conditioning must give its row of context_base and te2_pooled. Prompts over 75 tokens are
 * skipped: the reference truncates them where we encode further windows. */
static void run_text(te_case *tc, sdxl_compute *c, const sdxl_cond_model *m, const sdxl_json *jcase) {
    const sdxl_json *prompts = sdxl_json_get(jcase, "prompts");
    if (!prompts || prompts->type != SDXL_JSON_ARRAY || !find_t(tc, "context_base") || !find_t(tc, "te2_pooled"))
        return;
    size_t nc = 0, np = 0;
    float *ctx = load_t(tc, "context_base", &nc), *pooled = load_t(tc, "te2_pooled", &np);
    const int64_t Wc = sdxl_cond_width(m), J = sdxl_cond_pooled_dim(m), row = SDXL_COND_WINDOW * Wc;
    sdxl_tokenizer *tok = NULL;
    sdxl_err e = {0};
    if (!ctx || !pooled || nc != prompts->len * (size_t)row || np != prompts->len * (size_t)J ||
        sdxl_tokenizer_new(&tok, &e)) {
        golden_fail(tc->g, COMP, tc->label, "text: context_base/te2_pooled do not match the prompt list %s", e.msg);
        goto done;
    }
    for (size_t i = 0; i < prompts->len; i++) {
        const sdxl_json *pj = &prompts->items[i];
        if (pj->type != SDXL_JSON_STRING) continue;
        sdxl_cond_params p;
        sdxl_cond_params_init(&p);
        p.prompt = pj->str;
        p.prompt_len = pj->len;
        p.emphasis = 0;
        sdxl_cond cd;
        char what[400];
        snprintf(what, sizeof what, "%s/text/%zu", tc->label, i);
        if (sdxl_cond_encode(c, m, tok, &p, &cd, &e)) {
            golden_fail(tc->g, COMP, what, "%s", e.msg);
            continue;
        }
        if (cd.n_tokens == SDXL_COND_WINDOW && cd.uncond_zero && cd.n_tokens_prompt <= SDXL_TOK_CHUNK) {
            double d = golden_max_abs(cd.context + row, ctx + i * (size_t)row, (size_t)row);
            double dp = golden_max_abs(cd.pooled + J, pooled + i * (size_t)J, (size_t)J);
            golden_check(tc->g, COMP, what, "max_abs", d > dp ? d : dp, TE_MAX_ABS);
        }
        sdxl_cond_free(&cd);
    }
done:
    sdxl_tokenizer_free(tok);
    free(ctx);
    free(pooled);
}

static void run_layout(golden_ctx *g, golden_set *s, const char *case_name, const sdxl_json *jcase, const char *prefix,
                       const char *model, const char *layout) {
    te_case tc = {g, s, prefix, {0}};
    snprintf(tc.label, sizeof tc.label, "%s/%s", case_name, layout);
    char path[4096];
    golden_path(path, sizeof path, g->models_dir, model);
    sdxl_err e = {0};
    sdxl_ckpt *ck = NULL;
    sdxl_compute *c = NULL;
    sdxl_cond_model m = {0};
    int64_t B1 = 0, L1 = 0, B2 = 0, L2 = 0;
    int32_t *ids1 = NULL, *ids2 = NULL;
    float *pen1 = NULL, *pen2 = NULL, *ctx = NULL, *pooled = NULL;
    if (sdxl_ckpt_open(path, &ck, &e) || sdxl_compute_new_device(SDXL_PREC_F32, g->device, &c, &e) ||
        sdxl_cond_model_load(c, ck, &m, &e)) {
        golden_fail(g, COMP, tc.label, "%s", e.msg);
        goto done;
    }
    if (!m.te1) {
        golden_fail(g, COMP, tc.label, "%s has no text_encoder", path);
        goto done;
    }
    ids1 = load_ids(&tc, "ids1", &B1, &L1);
    ids2 = load_ids(&tc, "ids2", &B2, &L2);
    if (!ids1 || !ids2) goto done;
    run_encoder(&tc, c, m.te1, ids1, B1, L1, "te1", &pen1);
    run_encoder(&tc, c, m.te2, ids2, B2, L2, "te2", &pen2);
    run_pad_variant(&tc, c, m.te2, ids2, B2, L2);
    run_text(&tc, c, &m, jcase);

    /* context_base and pooled through the conditioning path, one window per prompt. */
    if (find_t(&tc, "context_base") && B1 == B2 && L1 == SDXL_COND_WINDOW && L2 == SDXL_COND_WINDOW) {
        const int64_t Wc = sdxl_cond_width(&m), J = sdxl_cond_pooled_dim(&m);
        sdxl_cond_tokens *t1 = calloc((size_t)B1, sizeof *t1), *t2 = calloc((size_t)B1, sizeof *t2);
        ctx = malloc((size_t)(B1 * L1 * Wc) * sizeof(float));
        pooled = malloc((size_t)(B1 * J) * sizeof(float));
        if (t1 && t2 && ctx && pooled) {
            for (int64_t b = 0; b < B1; b++) {
                t1[b] = (sdxl_cond_tokens){ids1 + b * L1, NULL, 1};
                t2[b] = (sdxl_cond_tokens){ids2 + b * L2, NULL, 1};
            }
            if (sdxl_cond_encode_tokens(c, &m, B1, t1, t2, 1, ctx, pooled, &e) == SDXL_OK) {
                cmp(&tc, "context_base", ctx, (size_t)(B1 * L1 * Wc));
                char what[300];
                snprintf(what, sizeof what, "%s/conditioning", tc.label);
                snprintf(tc.label, sizeof tc.label, "%s", what);
                cmp(&tc, "te2_pooled", pooled, (size_t)(B1 * J));
            } else {
                golden_fail(g, COMP, tc.label, "conditioning: %s", e.msg);
            }
        }
        free(t1);
        free(t2);
    }
done:
    free(ids1);
    free(ids2);
    free(pen1);
    free(pen2);
    free(ctx);
    free(pooled);
    sdxl_cond_model_free(&m);
    sdxl_compute_free(c);
    sdxl_ckpt_close(ck);
}

/* ---- conditioning from the pipeline cases' prompts ------------------------------------------ */

typedef struct cond_models {
    const char *name;
    sdxl_ckpt *ck;
    sdxl_cond_model m;
} cond_models;

/* Compares one recorded run: "<prefix>{prompt,negative_prompt}_embeds" and the pooled pair. */
static void check_run(golden_ctx *g, golden_set *s, sdxl_compute *c, sdxl_tokenizer *tok, cond_models *models,
                      int n_models, const char *prefix, const sdxl_json *jc) {
    char key[512], what[600];
    snprintf(key, sizeof key, "%sprompt_embeds", prefix);
    const sdxl_st_tensor *pe = golden_find(s, key);
    const char *prompt = sdxl_json_str(jc, "prompt", NULL);
    const sdxl_json *neg = sdxl_json_get(jc, "negative_prompt");
    if (!pe || !prompt || pe->ndim != 3) return;
    for (int mi = 0; mi < n_models; mi++) {
        const sdxl_cond_model *m = &models[mi].m;
        if (!m->te2 || sdxl_cond_width(m) != pe->shape[2]) continue;
        snprintf(what, sizeof what, "%s%s/from_text", prefix, models[mi].name);
        sdxl_cond_params p;
        sdxl_cond_params_init(&p);
        p.prompt = prompt;
        p.negative = neg && neg->type == SDXL_JSON_STRING ? neg->str : NULL;
        p.emphasis = 0;
        sdxl_cond cd;
        sdxl_err e = {0};
        if (sdxl_cond_encode(c, m, tok, &p, &cd, &e)) {
            golden_fail(g, COMP, what, "%s", e.msg);
            continue;
        }
        static const char *const names[4] = {"negative_prompt_embeds", "prompt_embeds", "negative_pooled_prompt_embeds",
                                             "pooled_prompt_embeds"};
        const float *ours[4] = {cd.context, cd.context + cd.n_tokens * cd.width, cd.pooled, cd.pooled + cd.pooled_dim};
        const size_t n[4] = {(size_t)(cd.n_tokens * cd.width), (size_t)(cd.n_tokens * cd.width), (size_t)cd.pooled_dim,
                             (size_t)cd.pooled_dim};
        double worst = 0;
        int ok = 1;
        for (int k = 0; k < 4 && ok; k++) {
            snprintf(key, sizeof key, "%s%s", prefix, names[k]);
            size_t got = 0;
            float *ref = golden_find(s, key) ? golden_f32(g, s, key, NULL, NULL, &got) : NULL;
            if (!ref || got != n[k]) {
                golden_fail(g, COMP, what, "%s: missing or %zu values where we have %zu", key, got, n[k]);
                ok = 0;
            } else {
                double d = golden_max_abs(ours[k], ref, n[k]);
                if (d > worst) worst = d;
            }
            free(ref);
        }
        if (ok) golden_check(g, COMP, what, "max_abs", worst, TE_MAX_ABS);
        sdxl_cond_free(&cd);
    }
}

/* Every pipeline case without LoRA: its prompts through our conditioning must give the
 * embeddings the reference pipeline fed its UNet (zero uncond included), with the model whose
 * context width matches (base or refiner), from both layouts. */
static void run_pipeline_prompts(golden_ctx *g) {
    char path[4096];
    golden_path(path, sizeof path, g->golden_dir, "pipelines.json");
    if (access(path, R_OK)) return;
    golden_set s;
    if (golden_open(g, "pipelines", &s)) return;
    cond_models models[4] = {
        {"single-file", NULL, {0}}, {"diffusers", NULL, {0}}, {"single-file", NULL, {0}}, {"diffusers", NULL, {0}}};
    static const char *const files[4] = {"tiny_sd_xl_base.safetensors", "tiny-sdxl-base",
                                         "tiny_sd_xl_refiner.safetensors", "tiny-sdxl-refiner"};
    sdxl_compute *c = NULL;
    sdxl_tokenizer *tok = NULL;
    sdxl_err e = {0};
    const sdxl_json *cases = sdxl_json_get(s.json, "cases");
    if (sdxl_compute_new_device(SDXL_PREC_F32, g->device, &c, &e) || sdxl_tokenizer_new(&tok, &e)) {
        golden_fail(g, COMP, "pipelines", "%s", e.msg);
        goto done;
    }
    for (int i = 0; i < 4; i++) {
        golden_path(path, sizeof path, g->models_dir, files[i]);
        if (sdxl_ckpt_open(path, &models[i].ck, &e) || sdxl_cond_model_load(c, models[i].ck, &models[i].m, &e))
            golden_fail(g, COMP, files[i], "%s", e.msg);
    }
    for (size_t ci = 0; cases && cases->type == SDXL_JSON_OBJECT && ci < cases->len; ci++) {
        const sdxl_json *jc = &cases->items[ci];
        const sdxl_json *lora = sdxl_json_get(jc, "lora");
        if (lora && lora->type != SDXL_JSON_NULL) continue; /* text encoders merged with a LoRA */
        /* Runs are "<case>/" or "<case>/<run>/" prefixes of a prompt_embeds tensor. */
        size_t cl = strlen(cases->keys[ci]);
        for (size_t t = 0; t < sdxl_st_count(s.st); t++) {
            const char *name = sdxl_st_at(s.st, t)->name;
            size_t nl = strlen(name), sl = strlen("/prompt_embeds");
            if (nl < cl + sl || strncmp(name, cases->keys[ci], cl) || name[cl] != '/' ||
                strcmp(name + nl - sl, "/prompt_embeds") || strstr(name, "negative_"))
                continue;
            char prefix[512];
            snprintf(prefix, sizeof prefix, "%.*s", (int)(nl - sl + 1), name);
            check_run(g, &s, c, tok, models, 4, prefix, jc);
        }
    }
done:
    for (int i = 0; i < 4; i++) {
        sdxl_cond_model_free(&models[i].m);
        sdxl_ckpt_close(models[i].ck);
    }
    sdxl_tokenizer_free(tok);
    sdxl_compute_free(c);
    golden_close(&s);
}

int golden_text_encoders(golden_ctx *g) {
    golden_set s;
    if (golden_open(g, COMP, &s)) return 0;
    const sdxl_json *cases = sdxl_json_get(s.json, "cases");
    if (!cases || cases->type != SDXL_JSON_OBJECT || cases->len == 0) {
        golden_fail(g, COMP, "cases", "text_encoders.json has no \"cases\" object");
        golden_close(&s);
        return 0;
    }
    for (size_t i = 0; i < cases->len; i++) {
        const char *name = cases->keys[i];
        char key[512];
        snprintf(key, sizeof key, "%s/ids1", name);
        const char *prefix = "";
        char pre[300];
        if (golden_find(&s, key)) {
            snprintf(pre, sizeof pre, "%s/", name);
            prefix = pre;
        }
        run_layout(g, &s, name, &cases->items[i], prefix, "tiny_sd_xl_base.safetensors", "single-file");
        run_layout(g, &s, name, &cases->items[i], prefix, "tiny-sdxl-base", "diffusers");
    }
    golden_close(&s);
    run_pipeline_prompts(g);
    return 0;
}
