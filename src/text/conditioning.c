/* SDXL text conditioning: both encoders, windows, emphasis, clip_skip, zero uncond. */
#include "text/conditioning.h"

#include <stdlib.h>
#include <string.h>

int sdxl_cond_model_load(sdxl_compute *c, const sdxl_ckpt *ck, sdxl_cond_model *m, sdxl_err *e) {
    memset(m, 0, sizeof *m);
    int rc;
    if (sdxl_ckpt_naming(ck, SDXL_PART_TE1) != SDXL_NAMING_NONE) {
        if ((rc = sdxl_clip_load_ckpt(c, ck, SDXL_PART_TE1, NULL, &m->te1, e))) return rc;
    }
    if ((rc = sdxl_clip_load_ckpt(c, ck, SDXL_PART_TE2, NULL, &m->te2, e))) {
        sdxl_cond_model_free(m);
        return rc;
    }
    if (m->te1 && m->te1->cfg.n_pos < SDXL_COND_WINDOW) rc = SDXL_ERR_FORMAT;
    if (m->te2->cfg.n_pos < SDXL_COND_WINDOW) rc = SDXL_ERR_FORMAT;
    if (rc) {
        sdxl_cond_model_free(m);
        return sdxl_seterr(e, rc, "%s: text encoders need at least %d positions", sdxl_ckpt_path(ck), SDXL_COND_WINDOW);
    }
    /* diffusers: the base pipeline forces zeros, the refiner (img2img) pipeline does not. */
    m->force_zeros_for_empty_prompt = m->te1 != NULL;
    return SDXL_OK;
}

void sdxl_cond_model_free(sdxl_cond_model *m) {
    sdxl_clip_free(m->te1);
    sdxl_clip_free(m->te2);
    m->te1 = m->te2 = NULL;
}

int64_t sdxl_cond_width(const sdxl_cond_model *m) {
    return (m->te1 ? m->te1->cfg.width : 0) + (m->te2 ? m->te2->cfg.width : 0);
}

int64_t sdxl_cond_pooled_dim(const sdxl_cond_model *m) {
    return m->te2 ? (m->te2->cfg.proj ? m->te2->cfg.proj : m->te2->cfg.width) : 0;
}

int64_t sdxl_cond_layer(const sdxl_clip *te, int clip_skip) {
    if (clip_skip < 1) clip_skip = 1;
    return te->cfg.layers - clip_skip;
}

/* A1111 weighting; a window without emphasis is left bit-exact. */
static void apply_weights(float *z, const float *w, int64_t tokens, int64_t width) {
    for (int64_t t = 0; t < tokens; t++)
        if (w[t] != 1.0f) {
            sdxl_prompt_apply_weights(z, (int)tokens, (int)width, w);
            return;
        }
}

/* Runs one encoder on n prompts x K windows; writes its columns [off, off+W) of the context. */
static int encode_one(sdxl_compute *c, const sdxl_clip *te, int64_t n, int64_t K, const sdxl_cond_tokens *t,
                      int clip_skip, float *context, int64_t ctx_w, int64_t off, float *pooled, const char *which,
                      sdxl_err *e) {
    const int64_t L = SDXL_COND_WINDOW, W = te->cfg.width, B = n * K;
    const int64_t J = te->cfg.proj ? te->cfg.proj : W;
    int64_t layer = sdxl_cond_layer(te, clip_skip);
    if (layer < 0)
        return sdxl_seterr(e, SDXL_ERR_ARG, "clip_skip %d: %s has only %lld blocks", clip_skip, which,
                           (long long)te->cfg.layers);
    int32_t *ids = malloc((size_t)(B * L) * sizeof *ids);
    float *hid = malloc((size_t)(B * L * W) * sizeof(float));
    float *pool = pooled ? malloc((size_t)(B * J) * sizeof(float)) : NULL;
    if (!ids || !hid || (pooled && !pool)) {
        free(ids);
        free(hid);
        free(pool);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: %lld windows", which, (long long)B);
    }
    for (int64_t i = 0; i < n; i++)
        memcpy(ids + i * K * L, t[i].ids, (size_t)(K * L) * sizeof *ids);
    sdxl_clip_io io = {ids, B, L, layer, hid, pool, NULL, NULL};
    int rc = sdxl_clip_forward(c, te, &io, e);
    if (rc) sdxl_err_prefix(e, "%s", which);
    for (int64_t i = 0; !rc && i < n; i++) {
        for (int64_t k = 0; k < K; k++) {
            float *z = hid + (i * K + k) * L * W;
            if (t[i].weights) apply_weights(z, t[i].weights + k * L, L, W);
            for (int64_t tok = 0; tok < L; tok++)
                memcpy(context + ((i * K + k) * L + tok) * ctx_w + off, z + tok * W, (size_t)W * sizeof(float));
        }
        if (pooled) memcpy(pooled + i * J, pool + i * K * J, (size_t)J * sizeof(float));
    }
    free(ids);
    free(hid);
    free(pool);
    return rc;
}

int sdxl_cond_encode_tokens(sdxl_compute *c, const sdxl_cond_model *m, int64_t n, const sdxl_cond_tokens *t1,
                            const sdxl_cond_tokens *t2, int clip_skip, float *context, float *pooled, sdxl_err *e) {
    if (!m->te2) return sdxl_seterr(e, SDXL_ERR_ARG, "conditioning: no text encoder loaded");
    if (n < 1 || n > 4096) return sdxl_seterr(e, SDXL_ERR_ARG, "conditioning: %lld prompts (1..4096)", (long long)n);
    if (!t2 || (m->te1 && !t1)) return sdxl_seterr(e, SDXL_ERR_ARG, "conditioning: token windows missing");
    const int64_t K = t2[0].n_chunks;
    for (int64_t i = 0; i < n; i++) {
        if (!t2[i].ids || (m->te1 && !t1[i].ids))
            return sdxl_seterr(e, SDXL_ERR_ARG, "conditioning: prompt %lld has no token ids", (long long)i);
        if (t2[i].n_chunks != K || (m->te1 && t1[i].n_chunks != K))
            return sdxl_seterr(e, SDXL_ERR_ARG,
                               "conditioning: prompt %lld has %lld windows, prompt 0 has %lld (pad them equal)",
                               (long long)i, (long long)t2[i].n_chunks, (long long)K);
    }
    if (K < 1 || K > 1024 || n * K > 4096)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "conditioning: %lld prompts x %lld windows (at most 4096 windows)",
                           (long long)n, (long long)K);
    const int64_t ctx_w = sdxl_cond_width(m);
    int rc = SDXL_OK;
    if (m->te1) rc = encode_one(c, m->te1, n, K, t1, clip_skip, context, ctx_w, 0, NULL, "text_encoder", e);
    if (!rc)
        rc = encode_one(c, m->te2, n, K, t2, clip_skip, context, ctx_w, m->te1 ? m->te1->cfg.width : 0, pooled,
                        "text_encoder_2", e);
    return rc;
}

void sdxl_cond_params_init(sdxl_cond_params *p) {
    memset(p, 0, sizeof *p);
    p->prompt = "";
    p->clip_skip = 1;
    p->emphasis = 1;
    p->max_chunks = SDXL_COND_MAX_CHUNKS;
    p->force_zeros = -1;
}

void sdxl_cond_free(sdxl_cond *cd) {
    free(cd->context);
    free(cd->pooled);
    sdxl_prompt_loras_free(cd->loras, cd->n_loras);
    memset(cd, 0, sizeof *cd);
}

static int build(sdxl_tokenizer *tok, const char *text, size_t len, int32_t pad, int flags, const sdxl_cond_params *p,
                 sdxl_prompt *out, const char *what, sdxl_err *e) {
    sdxl_prompt_opts o;
    sdxl_prompt_opts_init(&o);
    o.pad_id = pad;
    o.flags = flags;
    o.emphasis = p->emphasis;
    o.max_chunks = p->max_chunks;
    int rc = sdxl_prompt_build(tok, text, len ? len : strlen(text), &o, out, e);
    if (rc && e) {
        /* The parser says "prompt: ..."; name which of the four texts it was. */
        if (!strncmp(e->msg, "prompt: ", 8)) memmove(e->msg, e->msg + 8, strlen(e->msg + 8) + 1);
        sdxl_err_prefix(e, "%s", what);
    }
    return rc;
}

int sdxl_cond_encode(sdxl_compute *c, const sdxl_cond_model *m, sdxl_tokenizer *tok, const sdxl_cond_params *p,
                     sdxl_cond *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    if (!m->te2) return sdxl_seterr(e, SDXL_ERR_ARG, "conditioning: no text encoder loaded");
    if (!p->prompt) return sdxl_seterr(e, SDXL_ERR_ARG, "prompt: must not be NULL");
    if (p->max_chunks < 1 || p->max_chunks > 1024)
        return sdxl_seterr(e, SDXL_ERR_ARG, "max_chunks: must be 1..1024, got %d", p->max_chunks);
    const sdxl_clip *deepest = m->te1 && m->te1->cfg.layers < m->te2->cfg.layers ? m->te1 : m->te2;
    if (p->clip_skip < 0 || sdxl_cond_layer(deepest, p->clip_skip) < 0)
        return sdxl_seterr(e, SDXL_ERR_ARG, "clip_skip: must be 0..%lld, got %d", (long long)deepest->cfg.layers,
                           p->clip_skip);
    const int zero_uncond = !p->negative && (p->force_zeros < 0 ? m->force_zeros_for_empty_prompt : p->force_zeros);
    const char *neg = p->negative ? p->negative : "";
    size_t neg_len = p->negative ? p->negative_len : 0;
    const char *text[2][2] = {{neg, p->negative_2 ? p->negative_2 : neg},
                              {p->prompt, p->prompt_2 ? p->prompt_2 : p->prompt}};
    size_t len[2][2] = {{neg_len, p->negative_2 ? p->negative_2_len : neg_len},
                        {p->prompt_len, p->prompt_2 ? p->prompt_2_len : p->prompt_len}};
    static const char *const what[2][2] = {{"negative_prompt", "negative_prompt_2"}, {"prompt", "prompt_2"}};
    static const int32_t pad[2] = {SDXL_TOK_PAD_TE1, SDXL_TOK_PAD_TE2};
    const int flags[2] = {0, p->te2_literal_special ? SDXL_TOK_LITERAL_SPECIAL : 0};

    /* [uncond, cond] x [te1, te2] */
    sdxl_prompt pr[2][2];
    memset(pr, 0, sizeof pr);
    int rc = SDXL_OK, K = 1;
    for (int row = zero_uncond ? 1 : 0; row < 2 && !rc; row++)
        for (int te = m->te1 ? 0 : 1; te < 2 && !rc; te++) {
            rc = build(tok, text[row][te], len[row][te], pad[te], flags[te], p, &pr[row][te], what[row][te], e);
            if (!rc && pr[row][te].n_chunks > K) K = pr[row][te].n_chunks;
        }
    /* Every window count equal, as A1111 pads cond and uncond with empty windows. */
    for (int row = zero_uncond ? 1 : 0; row < 2 && !rc; row++)
        for (int te = m->te1 ? 0 : 1; te < 2 && !rc; te++)
            rc = sdxl_prompt_pad_to(&pr[row][te], K, pad[te], e);

    const int64_t Wc = sdxl_cond_width(m), J = sdxl_cond_pooled_dim(m), T = (int64_t)K * SDXL_COND_WINDOW;
    if (!rc) {
        out->n_tokens = T;
        out->width = Wc;
        out->pooled_dim = J;
        out->uncond_zero = zero_uncond;
        out->context = calloc((size_t)(2 * T * Wc), sizeof(float));
        out->pooled = calloc((size_t)(2 * J), sizeof(float));
        if (!out->context || !out->pooled)
            rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "conditioning: context of %lld tokens", (long long)T);
    }
    if (!rc) {
        sdxl_cond_tokens t[2][2];
        const int r0 = zero_uncond ? 1 : 0;
        for (int row = r0; row < 2; row++)
            for (int te = 0; te < 2; te++)
                t[te][row - r0] = (sdxl_cond_tokens){pr[row][te].ids, pr[row][te].weights, pr[row][te].n_chunks};
        rc = sdxl_cond_encode_tokens(c, m, 2 - r0, t[0], t[1], p->clip_skip, out->context + r0 * T * Wc,
                                     out->pooled + r0 * J, e);
    }
    if (!rc) {
        sdxl_prompt *pos = &pr[1][m->te1 ? 0 : 1];
        out->n_tokens_prompt = pos->n_tokens;
        out->loras = pos->loras;
        out->n_loras = pos->n_loras;
        pos->loras = NULL;
        pos->n_loras = 0;
    }
    for (int row = 0; row < 2; row++)
        for (int te = 0; te < 2; te++)
            sdxl_prompt_free(&pr[row][te]);
    if (rc) sdxl_cond_free(out);
    return rc;
}
