/* A1111 prompt syntax. parse_attention mirrors the token regex of A1111's parse_prompt_attention:
 * \( \) \[ \] \\ \ ( [ :<number>) ) ] <text> : tried in that order at each position. */
#include "text/prompt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unictype.h>

#include "text/unicode.h"

#define COMMA_ID 267 /* ",</w>" */

void sdxl_prompt_opts_init(sdxl_prompt_opts *o) {
    memset(o, 0, sizeof *o);
    o->pad_id = SDXL_TOK_PAD_TE1;
    o->emphasis = 1;
    o->comma_backtrack = 20;
}

/* Code point at s[i] of valid UTF-8 and its length. */
static uint32_t cp_at(const char *str, size_t n, size_t i, int *len) {
    const unsigned char *s = (const unsigned char *)str;
    uint32_t c = s[i];
    int k = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
    if (k) c &= (uint32_t)(0x3F >> k);
    for (int j = 1; j <= k && i + (size_t)j < n; j++) c = (c << 6) | (s[i + (size_t)j] & 0x3F);
    *len = k + 1;
    return c;
}

static size_t space_len(const char *s, size_t n, size_t i) {
    int len;
    if (i >= n) return 0;
    return sdxl_u32_is_space(cp_at(s, n, i, &len)) ? (size_t)len : 0;
}

/* Python's \w: letters, numbers, underscore. */
static int is_word(uint32_t c) {
    return c == '_' || uc_is_general_category(c, UC_CATEGORY_L) || uc_is_general_category(c, UC_CATEGORY_N);
}

static int word_before(const char *s, size_t i) {
    if (!i) return 0;
    size_t j = i - 1;
    while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
    int len;
    return is_word(cp_at(s, i, j, &len));
}

static int word_at(const char *s, size_t n, size_t i) {
    int len;
    return i < n && is_word(cp_at(s, n, i, &len));
}

static int span_push(sdxl_prompt_spans *o, const char *text, size_t len, double w, int brk, sdxl_err *e) {
    if (o->n == o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 16;
        sdxl_prompt_span *p = realloc(o->v, nc * sizeof *p);
        if (!p) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
        o->v = p;
        o->cap = nc;
    }
    char *t = malloc(len + 1);
    if (!t) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
    if (len) memcpy(t, text, len);
    t[len] = 0;
    o->v[o->n++] = (sdxl_prompt_span){t, len, w, brk};
    return SDXL_OK;
}

void sdxl_prompt_spans_free(sdxl_prompt_spans *s) {
    for (size_t i = 0; i < s->n; i++) free(s->v[i].text);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* Plain text, split on `\s*\bBREAK\b\s*` with a BREAK marker between the parts. */
static int push_plain(sdxl_prompt_spans *o, const char *s, size_t n, sdxl_err *e) {
    size_t start = 0;
    int rc;
    for (size_t p = 0; p + 5 <= n; p++) {
        if (memcmp(s + p, "BREAK", 5) || word_before(s, p) || word_at(s, n, p + 5)) continue;
        size_t q = p;
        while (q > start) { /* extend left over whitespace */
            size_t r = q - 1;
            while (r > start && ((unsigned char)s[r] & 0xC0) == 0x80) r--;
            if (!space_len(s, n, r)) break;
            q = r;
        }
        size_t end = p + 5, sl;
        while ((sl = space_len(s, n, end))) end += sl;
        if ((rc = span_push(o, s + start, q - start, 1.0, 0, e)) || (rc = span_push(o, "BREAK", 5, -1.0, 1, e)))
            return rc;
        start = end;
        p = end - 1;
    }
    return span_push(o, s + start, n - start, 1.0, 0, e);
}

/* `:\s*([+-]?[.\d]+)\s*\)` at s[i] == ':'; returns the match length (0 if none or not a number). */
static size_t weight_suffix(const char *s, size_t n, size_t i, double *w) {
    size_t j = i + 1, sl;
    while ((sl = space_len(s, n, j))) j += sl;
    size_t k = j;
    if (j < n && (s[j] == '+' || s[j] == '-')) j++;
    size_t d = j;
    while (j < n && (s[j] == '.' || (s[j] >= '0' && s[j] <= '9'))) j++;
    if (j == d) return 0;
    size_t m = j;
    while ((sl = space_len(s, n, j))) j += sl;
    if (j >= n || s[j] != ')') return 0;
    char buf[64];
    if (m - k >= sizeof buf) return 0;
    memcpy(buf, s + k, m - k);
    buf[m - k] = 0;
    char *endp;
    int dots = 0;
    for (size_t q = 0; buf[q]; q++) dots += buf[q] == '.';
    if (dots > 1 || (m - d == 1 && s[d] == '.')) return 0; /* python float() rejects these */
    *w = strtod(buf, &endp);
    if (*endp || !isfinite(*w)) return 0;
    return j + 1 - i;
}

int sdxl_prompt_parse_attention(const char *s, size_t n, sdxl_prompt_spans *out, sdxl_err *e) {
    sdxl_u32 check = {0};
    int rc = sdxl_utf8_decode(s, n, "prompt", &check, e);
    sdxl_u32_free(&check);
    if (rc) return rc;
    size_t *round = malloc((n + 1) * sizeof(size_t)), *square = malloc((n + 1) * sizeof(size_t));
    size_t nr = 0, ns = 0;
    if (!round || !square) {
        free(round);
        free(square);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
    }
    size_t i = 0;
    while (i < n && !rc) {
        char c = s[i];
        double w;
        size_t len;
        if (c == '\\') {
            char d = i + 1 < n ? s[i + 1] : 0;
            if (d == '(' || d == ')' || d == '[' || d == ']' || d == '\\') {
                rc = span_push(out, s + i + 1, 1, 1.0, 0, e);
                i += 2;
            } else {
                rc = span_push(out, "", 0, 1.0, 0, e);
                i += 1;
            }
        } else if (c == '(') {
            round[nr++] = out->n;
            i++;
        } else if (c == '[') {
            square[ns++] = out->n;
            i++;
        } else if (c == ':' && (len = weight_suffix(s, n, i, &w)) && nr) {
            for (size_t p = round[--nr]; p < out->n; p++) out->v[p].weight *= w;
            i += len;
        } else if (c == ')' && nr) {
            for (size_t p = round[--nr]; p < out->n; p++) out->v[p].weight *= 1.1;
            i++;
        } else if (c == ']' && ns) {
            for (size_t p = square[--ns]; p < out->n; p++) out->v[p].weight *= 1 / 1.1;
            i++;
        } else {
            size_t j = i;
            if (c == ':' && (len = weight_suffix(s, n, i, &w)))
                j = i + len; /* a weight with no open '(' is text */
            else if (c == ':' || c == ')' || c == ']')
                j = i + 1;
            else
                while (j < n && s[j] != '\\' && s[j] != '(' && s[j] != ')' && s[j] != '[' && s[j] != ']' &&
                       s[j] != ':')
                    j++;
            rc = push_plain(out, s + i, j - i, e);
            i = j;
        }
    }
    for (size_t k = 0; k < nr && !rc; k++)
        for (size_t p = round[k]; p < out->n; p++) out->v[p].weight *= 1.1;
    for (size_t k = 0; k < ns && !rc; k++)
        for (size_t p = square[k]; p < out->n; p++) out->v[p].weight *= 1 / 1.1;
    free(round);
    free(square);
    if (!rc && out->n == 0) rc = span_push(out, "", 0, 1.0, 0, e);
    /* merge neighbours of identical weight */
    size_t k = 0;
    for (size_t q = 1; q < out->n && !rc; q++) {
        sdxl_prompt_span *a = &out->v[k], *b = &out->v[q];
        if (a->weight == b->weight) {
            char *t = realloc(a->text, a->len + b->len + 1);
            if (!t) {
                rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
                break;
            }
            memcpy(t + a->len, b->text, b->len + 1);
            a->text = t;
            a->len += b->len;
            free(b->text);
            b->text = NULL;
        } else {
            out->v[++k] = *b;
        }
    }
    if (!rc && out->n) out->n = k + 1;
    for (size_t q = 0; q < out->n; q++)
        out->v[q].is_break = out->v[q].weight == -1.0 && !strcmp(out->v[q].text ? out->v[q].text : "", "BREAK");
    return rc;
}

/* ---- extra-network tags ---- */

void sdxl_prompt_loras_free(sdxl_prompt_lora *loras, int n) {
    for (int i = 0; i < n; i++) free(loras[i].name);
    free(loras);
}

static int parse_weight(const char *s, size_t n, const char *tag, float *w, sdxl_err *e) {
    char buf[64];
    while (n && (*s == ' ' || *s == '\t')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (!n || n >= sizeof buf) return sdxl_seterr(e, SDXL_ERR_ARG, "prompt: tag <%s>: weight is not a number", tag);
    memcpy(buf, s, n);
    buf[n] = 0;
    char *end;
    double v = strtod(buf, &end);
    if (*end || !isfinite(v) || fabs(v) > 1e6)
        return sdxl_seterr(e, SDXL_ERR_ARG, "prompt: tag <%s>: weight must be a finite number, got \"%s\"", tag, buf);
    *w = (float)v;
    return SDXL_OK;
}

/* args "name[:te[:unet]]" with optional te=/unet= items, as A1111's Lora extension reads them. */
static int lora_from_tag(const char *kind, size_t kind_len, const char *args, size_t n, sdxl_prompt_lora *l,
                         sdxl_err *e) {
    char tag[160];
    snprintf(tag, sizeof tag, "%.*s:%.*s", (int)(kind_len < 15 ? kind_len : 15), kind, (int)(n < 128 ? n : 128), args);
    memset(l, 0, sizeof *l);
    memcpy(l->kind, kind, kind_len);
    int npos = 0, have_unet = 0, rc;
    float te = 1.0f, unet = 1.0f, te_named = 0, unet_named = 0;
    int has_te_named = 0, has_unet_named = 0;
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && args[j] != ':') j++;
        const char *item = args + i;
        size_t len = j - i;
        const char *eq = memchr(item, '=', len);
        if (eq) {
            size_t kl = (size_t)(eq - item);
            if (kl == 2 && !memcmp(item, "te", 2)) {
                if ((rc = parse_weight(eq + 1, len - kl - 1, tag, &te_named, e))) return rc;
                has_te_named = 1;
            } else if (kl == 4 && !memcmp(item, "unet", 4)) {
                if ((rc = parse_weight(eq + 1, len - kl - 1, tag, &unet_named, e))) return rc;
                has_unet_named = 1;
            }
        } else {
            if (npos == 0) {
                l->name = malloc(len + 1);
                if (!l->name) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
                memcpy(l->name, item, len);
                l->name[len] = 0;
            } else if (npos == 1) {
                if ((rc = parse_weight(item, len, tag, &te, e))) return rc;
            } else if (npos == 2) {
                if ((rc = parse_weight(item, len, tag, &unet, e))) return rc;
                have_unet = 1;
            }
            npos++;
        }
        i = j + 1;
    }
    if (!l->name || !l->name[0]) {
        free(l->name);
        l->name = NULL;
        return sdxl_seterr(e, SDXL_ERR_ARG, "prompt: tag <%s>: no network name", tag);
    }
    if (has_te_named) te = te_named;
    if (!have_unet) unet = te;
    if (has_unet_named) unet = unet_named;
    l->te_weight = te;
    l->unet_weight = unet;
    return SDXL_OK;
}

int sdxl_prompt_extract_loras(const char *s, size_t n, char **out, size_t *out_len, sdxl_prompt_lora **loras,
                              int *n_loras, sdxl_err *e) {
    *out = NULL;
    char *buf = malloc(n + 1);
    if (!buf) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
    size_t k = 0, i = 0;
    int rc = SDXL_OK;
    while (i < n && !rc) {
        if (s[i] == '<') { /* <(\w+):([^>]+)> */
            size_t j = i + 1;
            int len;
            while (j < n && is_word(cp_at(s, n, j, &len))) j += (size_t)len;
            const char *gt = j > i + 1 && j + 1 < n && s[j] == ':' ? memchr(s + j + 1, '>', n - j - 1) : NULL;
            if (gt && gt > s + j + 1) {
                size_t kind_len = j - i - 1, end = (size_t)(gt - s);
                if ((kind_len == 4 && !memcmp(s + i + 1, "lora", 4)) || (kind_len == 4 && !memcmp(s + i + 1, "lyco", 4))) {
                    sdxl_prompt_lora *p = realloc(*loras, ((size_t)*n_loras + 1) * sizeof *p);
                    if (!p) {
                        rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
                        break;
                    }
                    *loras = p;
                    rc = lora_from_tag(s + i + 1, kind_len, s + j + 1, end - j - 1, &p[*n_loras], e);
                    if (rc)
                        free(p[*n_loras].name);
                    else
                        (*n_loras)++;
                }
                i = end + 1;
                continue;
            }
        }
        buf[k++] = s[i++];
    }
    if (rc) {
        free(buf);
        return rc;
    }
    buf[k] = 0;
    *out = buf;
    if (out_len) *out_len = k;
    return SDXL_OK;
}

/* ---- chunking ---- */

typedef struct chunker {
    sdxl_prompt *p;
    int32_t pad_id;
    int max_chunks;
    int32_t tok[SDXL_TOK_CHUNK];
    float mult[SDXL_TOK_CHUNK];
    int n;
    int last_comma;
} chunker;

/* A1111 next_chunk: the current tokens become a [BOS] + 75 + [EOS] window. */
static int next_chunk(chunker *c, int is_last, sdxl_err *e) {
    sdxl_prompt *p = c->p;
    if (c->max_chunks && p->n_chunks >= c->max_chunks)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "prompt: more than %d chunks of 75 tokens", c->max_chunks);
    p->n_tokens += is_last ? (size_t)c->n : SDXL_TOK_CHUNK;
    size_t need = ((size_t)p->n_chunks + 1) * SDXL_TOK_CTX;
    int32_t *ids = realloc(p->ids, need * sizeof(int32_t));
    if (ids) p->ids = ids;
    float *w = ids ? realloc(p->weights, need * sizeof(float)) : NULL;
    if (!ids || !w) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
    p->weights = w;
    int32_t *oi = p->ids + (size_t)p->n_chunks * SDXL_TOK_CTX;
    float *ow = p->weights + (size_t)p->n_chunks * SDXL_TOK_CTX;
    sdxl_tokenizer_window(c->tok, (size_t)c->n, c->pad_id, oi);
    for (int i = 0; i < SDXL_TOK_CTX; i++) ow[i] = (i >= 1 && i <= c->n) ? c->mult[i - 1] : 1.0f;
    p->n_chunks++;
    c->n = 0;
    c->last_comma = -1;
    return SDXL_OK;
}

int sdxl_prompt_build(sdxl_tokenizer *t, const char *text, size_t len, const sdxl_prompt_opts *opts,
                      sdxl_prompt *out, sdxl_err *e) {
    sdxl_prompt_opts o;
    if (opts)
        o = *opts;
    else
        sdxl_prompt_opts_init(&o);
    memset(out, 0, sizeof *out);
    if (len > sdxl_tokenizer_max_bytes(t))
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "prompt: %zu bytes is over the limit of %zu bytes", len,
                           sdxl_tokenizer_max_bytes(t));
    sdxl_u32 check = {0};
    int rc = sdxl_utf8_decode(text, len, "prompt", &check, e);
    sdxl_u32_free(&check);
    if (rc) return rc;
    char *rest = NULL;
    size_t rest_len = 0;
    sdxl_prompt_spans spans = {0};
    sdxl_tok_ids ids = {0};
    chunker c = {.p = out, .pad_id = o.pad_id, .max_chunks = o.max_chunks, .last_comma = -1};
    if ((rc = sdxl_prompt_extract_loras(text, len, &rest, &rest_len, &out->loras, &out->n_loras, e))) goto done;
    if (o.emphasis)
        rc = sdxl_prompt_parse_attention(rest, rest_len, &spans, e);
    else
        rc = span_push(&spans, rest, rest_len, 1.0, 0, e);
    if (rc) goto done;
    for (size_t s = 0; s < spans.n && !rc; s++) {
        const sdxl_prompt_span *sp = &spans.v[s];
        if (sp->is_break) {
            rc = next_chunk(&c, 0, e);
            continue;
        }
        ids.n = 0;
        if ((rc = sdxl_tokenizer_encode(t, sp->text, sp->len, o.flags, &ids, e))) break;
        for (size_t q = 0; q < ids.n && !rc; q++) {
            int32_t tok = ids.ids[q];
            if (tok == COMMA_ID) {
                c.last_comma = c.n;
            } else if (o.comma_backtrack && c.n == SDXL_TOK_CHUNK && c.last_comma != -1 &&
                       c.n - c.last_comma <= o.comma_backtrack) {
                int at = c.last_comma + 1, nrel = c.n - at;
                int32_t rt[SDXL_TOK_CHUNK];
                float rm[SDXL_TOK_CHUNK];
                memcpy(rt, c.tok + at, (size_t)nrel * sizeof(int32_t));
                memcpy(rm, c.mult + at, (size_t)nrel * sizeof(float));
                c.n = at;
                if ((rc = next_chunk(&c, 0, e))) break;
                memcpy(c.tok, rt, (size_t)nrel * sizeof(int32_t));
                memcpy(c.mult, rm, (size_t)nrel * sizeof(float));
                c.n = nrel;
            }
            if (c.n == SDXL_TOK_CHUNK && (rc = next_chunk(&c, 0, e))) break;
            c.tok[c.n] = tok;
            c.mult[c.n++] = (float)sp->weight;
        }
    }
    if (!rc && (c.n || !out->n_chunks)) rc = next_chunk(&c, 1, e);
done:
    free(rest);
    sdxl_prompt_spans_free(&spans);
    sdxl_tok_ids_free(&ids);
    if (rc) sdxl_prompt_free(out);
    return rc;
}

void sdxl_prompt_free(sdxl_prompt *p) {
    free(p->ids);
    free(p->weights);
    sdxl_prompt_loras_free(p->loras, p->n_loras);
    memset(p, 0, sizeof *p);
}

int sdxl_prompt_pad_to(sdxl_prompt *p, int n_chunks, int32_t pad_id, sdxl_err *e) {
    if (n_chunks <= p->n_chunks) return SDXL_OK;
    size_t need = (size_t)n_chunks * SDXL_TOK_CTX;
    int32_t *ids = realloc(p->ids, need * sizeof(int32_t));
    if (ids) p->ids = ids;
    float *w = ids ? realloc(p->weights, need * sizeof(float)) : NULL;
    if (!ids || !w) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
    p->weights = w;
    for (int k = p->n_chunks; k < n_chunks; k++) {
        sdxl_tokenizer_window(NULL, 0, pad_id, p->ids + (size_t)k * SDXL_TOK_CTX);
        for (int i = 0; i < SDXL_TOK_CTX; i++) p->weights[(size_t)k * SDXL_TOK_CTX + (size_t)i] = 1.0f;
    }
    p->n_chunks = n_chunks;
    return SDXL_OK;
}

int sdxl_prompt_pad_pair(sdxl_prompt *a, int32_t pad_a, sdxl_prompt *b, int32_t pad_b, sdxl_err *e) {
    int n = a->n_chunks > b->n_chunks ? a->n_chunks : b->n_chunks;
    int rc = sdxl_prompt_pad_to(a, n, pad_a, e);
    return rc ? rc : sdxl_prompt_pad_to(b, n, pad_b, e);
}

void sdxl_prompt_apply_weights(float *z, int n_tok, int channels, const float *w) {
    size_t total = (size_t)n_tok * (size_t)channels;
    if (!total) return;
    double before = 0, after = 0;
    for (size_t i = 0; i < total; i++) before += z[i];
    for (int t = 0; t < n_tok; t++) {
        float *row = z + (size_t)t * (size_t)channels;
        for (int c = 0; c < channels; c++) {
            row[c] *= w[t];
            after += row[c];
        }
    }
    if (after == 0) return;
    float scale = (float)((before / (double)total) / (after / (double)total));
    for (size_t i = 0; i < total; i++) z[i] *= scale;
}
