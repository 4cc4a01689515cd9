#include "pipeline/condsched.h"

#include <stdlib.h>
#include <string.h>

/* One text encoded alone (its cond row; the uncond row is skipped through force_zeros). */
typedef struct enc {
    char *text;
    sdxl_cond cd;
} enc;

typedef struct table {
    enc *v;
    int n, cap;
} table;

static int lookup(table *t, const char *text) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->v[i].text, text)) return i;
    return -1;
}

static int encode_text(sdxl_compute *c, const sdxl_cond_model *m, sdxl_tokenizer *tok, const sdxl_cond_params *base,
                       const char *text, table *t, int *idx, sdxl_err *e) {
    if ((*idx = lookup(t, text)) >= 0) return SDXL_OK;
    if (t->n == t->cap) {
        int nc = t->cap ? 2 * t->cap : 8;
        enc *nv = realloc(t->v, (size_t)nc * sizeof *nv);
        if (!nv) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
        t->v = nv, t->cap = nc;
    }
    enc *x = &t->v[t->n];
    memset(x, 0, sizeof *x);
    if (!(x->text = strdup(text))) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
    sdxl_cond_params p = *base;
    p.prompt = text;
    p.prompt_len = strlen(text);
    p.negative = NULL;
    p.negative_2 = NULL;
    p.force_zeros = 1;
    int st = sdxl_cond_encode(c, m, tok, &p, &x->cd, e);
    if (st) {
        free(x->text);
        return st;
    }
    *idx = t->n++;
    return SDXL_OK;
}

void sdxl_pl_condsched_free(sdxl_pl_condsched *s) {
    if (!s) return;
    free(s->ctx);
    free(s->pooled);
    free(s->weight);
    for (int k = 0; s->cond && k < s->n_parts; k++) {
        sdxl_prompt_sched_free(&s->cond[k]);
        free(s->cond_entry ? s->cond_entry[k] : NULL);
    }
    free(s->cond);
    free(s->cond_entry);
    sdxl_prompt_sched_free(&s->uncond);
    free(s->uncond_entry);
    memset(s, 0, sizeof *s);
}

int sdxl_pl_condsched_entry(const sdxl_pl_condsched *s, int part, int step) {
    if (part < 0) return s->uncond_entry ? s->uncond_entry[sdxl_prompt_sched_at(&s->uncond, step)] : -1;
    return s->cond_entry[part][sdxl_prompt_sched_at(&s->cond[part], step)];
}

int sdxl_pl_condsched_build(sdxl_compute *c, const sdxl_cond_model *m, sdxl_tokenizer *tok,
                            const sdxl_cond_params *base, int steps, int hr_first_steps, sdxl_pl_condsched *out,
                            sdxl_err *e) {
    sdxl_sched_opts so = {steps, 0};
    const sdxl_sched_opts *sop = hr_first_steps > 0 ? &so : NULL;
    if (hr_first_steps > 0) steps = hr_first_steps;
    memset(out, 0, sizeof *out);
    sdxl_and_part *parts = NULL;
    int np = 0, st = sdxl_prompt_and_split(base->prompt, &parts, &np, e);
    if (st) return st;
    const int zero_uncond = !base->negative && (base->force_zeros < 0 ? m->force_zeros_for_empty_prompt : base->force_zeros);
    out->n_parts = np;
    out->weight = calloc((size_t)np, sizeof(double));
    out->cond = calloc((size_t)np, sizeof *out->cond);
    out->cond_entry = calloc((size_t)np, sizeof(int *));
    if (!out->weight || !out->cond || !out->cond_entry) {
        st = sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
        goto fail;
    }
    int active = np > 1;
    for (int k = 0; k < np && !st; k++) {
        out->weight[k] = parts[k].weight;
        st = sdxl_prompt_schedule(parts[k].text, steps, sop, &out->cond[k], e);
        if (!st)
            active |= parts[k].weight != 1.0 || out->cond[k].n > 1 || strcmp(out->cond[k].seg[0].text, base->prompt);
    }
    if (!st && !zero_uncond) {
        st = sdxl_prompt_schedule(base->negative ? base->negative : "", steps, sop, &out->uncond, e);
        if (!st) active |= out->uncond.n > 1 || strcmp(out->uncond.seg[0].text, base->negative ? base->negative : "");
    }
    if (st || !active) goto fail; /* nothing scheduled: the plain path (active stays 0) */
    /* encode every distinct text once */
    table t = {0};
    for (int k = 0; k < np && !st; k++) {
        out->cond_entry[k] = calloc((size_t)out->cond[k].n, sizeof(int));
        if (!out->cond_entry[k]) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
        for (int i = 0; !st && i < out->cond[k].n; i++)
            st = encode_text(c, m, tok, base, out->cond[k].seg[i].text, &t, &out->cond_entry[k][i], e);
    }
    if (!st && !zero_uncond) {
        out->uncond_entry = calloc((size_t)out->uncond.n, sizeof(int));
        if (!out->uncond_entry) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
        for (int i = 0; !st && i < out->uncond.n; i++)
            st = encode_text(c, m, tok, base, out->uncond.seg[i].text, &t, &out->uncond_entry[i], e);
    }
    /* pad every entry to the longest with windows of the empty prompt (A1111 pad_cond) */
    int pad = -1;
    int64_t T = 0;
    for (int i = 0; !st && i < t.n; i++)
        if (t.v[i].cd.n_tokens > T) T = t.v[i].cd.n_tokens;
    for (int i = 0; !st && i < t.n && pad < 0; i++)
        if (t.v[i].cd.n_tokens < T) st = encode_text(c, m, tok, base, "", &t, &pad, e);
    if (!st) {
        out->T = T;
        out->W = t.v[0].cd.width;
        out->P = t.v[0].cd.pooled_dim;
        out->n_entries = t.n;
        out->ctx = malloc((size_t)t.n * (size_t)(T * out->W) * sizeof(float));
        out->pooled = malloc((size_t)t.n * (size_t)out->P * sizeof(float));
        if (!out->ctx || !out->pooled) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
    }
    for (int i = 0; !st && i < t.n; i++) {
        const sdxl_cond *cd = &t.v[i].cd;
        size_t W = (size_t)out->W, Ti = (size_t)cd->n_tokens;
        float *dst = out->ctx + (size_t)i * (size_t)T * W;
        memcpy(dst, cd->context + Ti * W, Ti * W * sizeof(float)); /* the cond row */
        const sdxl_cond *pc = pad >= 0 ? &t.v[pad].cd : NULL;
        for (size_t k = Ti; k < (size_t)T; k += (size_t)SDXL_COND_WINDOW)
            memcpy(dst + k * W, pc->context + (size_t)pc->n_tokens * W, (size_t)SDXL_COND_WINDOW * W * sizeof(float));
        memcpy(out->pooled + (size_t)i * (size_t)out->P, cd->pooled + out->P, (size_t)out->P * sizeof(float));
    }
    for (int i = 0; i < t.n; i++) {
        free(t.v[i].text);
        sdxl_cond_free(&t.v[i].cd);
    }
    free(t.v);
    if (st) goto fail;
    sdxl_prompt_and_free(parts, np);
    out->active = 1;
    return SDXL_OK;
fail:
    sdxl_prompt_and_free(parts, np);
    sdxl_pl_condsched_free(out);
    return st;
}
