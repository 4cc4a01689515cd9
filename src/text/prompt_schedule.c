/* A1111's schedule grammar (modules/prompt_parser.py), read as a recursive descent:
 *
 *   start:     (prompt | /[][():]/+)*          literal brackets and colons only at the top level
 *   prompt:    (emphasized | scheduled | alternate | plain | WHITESPACE)*
 *   emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"   (kept as text)
 *   scheduled: "[" [prompt ":"] prompt ":" [WS] NUMBER [WS] "]"
 *   alternate: "[" prompt ("|" [prompt])+ "]"
 *   plain:     /([^\\\[\]():|]|\\.)+/
 *
 * Where lark's Earley parser could read a bracket either as structure or as a top-level literal,
 * A1111's results (its doctests) take the structure; a bracket whose structure fails to close is a
 * literal character. A '|' outside any alternation, or a backslash with nothing after it on its
 * line, matches no rule: the whole prompt is then one literal segment. */
#include "text/prompt_schedule.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/strbuf.h"

enum { N_TEXT, N_SEQ, N_SCHED, N_ALT };

typedef struct node {
    int kind;
    size_t a, b;        /* N_TEXT: source span [a, b) */
    int first, next;    /* N_SEQ/N_ALT: first child; siblings; -1 = none */
    int before, after;  /* N_SCHED: child seqs (before may be -1) */
    const char *num;    /* N_SCHED: NUMBER text */
    size_t num_len;
    int when;           /* N_SCHED: resolved step */
    int empty;          /* N_ALT child: an absent alternative */
} node;

typedef struct parser {
    const char *s;
    size_t n;
    node *v;
    int nv, cap;
    int oom, depth, too_deep;
    unsigned char *failed; /* [n]: a bracket at this position is known not to parse */
} parser;

#define MAX_DEPTH 256 /* deeper nesting is refused (the prompt is then taken literally) */

static int add(parser *p, int kind) {
    if (p->nv == p->cap) {
        int nc = p->cap ? 2 * p->cap : 64;
        node *nv = realloc(p->v, (size_t)nc * sizeof *nv);
        if (!nv) {
            p->oom = 1;
            return -1;
        }
        p->v = nv, p->cap = nc;
    }
    node *x = &p->v[p->nv];
    memset(x, 0, sizeof *x);
    x->kind = kind;
    x->first = x->next = x->before = x->after = -1;
    return p->nv++;
}

/* Appends child to seq (keeps a tail pointer in `b` of the seq node). */
static void append(parser *p, int seq, int child) {
    if (seq < 0 || child < 0) return;
    node *s = &p->v[seq];
    if (s->first < 0)
        s->first = child;
    else
        p->v[s->b].next = child;
    s->b = (size_t)child;
}

static int text_node(parser *p, size_t a, size_t b) {
    int t = add(p, N_TEXT);
    if (t >= 0) p->v[t].a = a, p->v[t].b = b;
    return t;
}

static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* lark common SIGNED_NUMBER at i; returns its end or 0 */
static size_t number(const char *s, size_t n, size_t i) {
    size_t j = i;
    if (j < n && (s[j] == '+' || s[j] == '-')) j++;
    size_t d0 = j;
    while (j < n && isdigit((unsigned char)s[j])) j++;
    int intd = j > d0, fracd = 0;
    if (j < n && s[j] == '.') {
        size_t k = j + 1;
        while (k < n && isdigit((unsigned char)s[k])) k++;
        fracd = k > j + 1;
        if (intd || fracd) j = k;
    }
    if (!intd && !fracd) return 0;
    if (j < n && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < n && (s[k] == '+' || s[k] == '-')) k++;
        size_t e0 = k;
        while (k < n && isdigit((unsigned char)s[k])) k++;
        if (k > e0) j = k;
    }
    return j;
}

static int parse_bracket(parser *p, size_t i, size_t *end, int *out);
static int parse_paren(parser *p, size_t i, size_t *end, int *out);

/* prompt: from i, stops before a delimiter or a bracket that does not parse; returns the seq. */
static int parse_prompt(parser *p, size_t i, size_t *end) {
    int seq = add(p, N_SEQ);
    while (i < p->n && !p->oom) {
        char c = p->s[i];
        if (c == '[' || c == '(') {
            size_t e;
            int sub = -1, r = -1;
            if (!p->failed[i]) {
                if (++p->depth > MAX_DEPTH) {
                    p->too_deep = 1;
                } else {
                    r = c == '[' ? parse_bracket(p, i, &e, &sub) : parse_paren(p, i, &e, &sub);
                }
                p->depth--;
                if (r) p->failed[i] = 1;
            }
            if (r) break;
            append(p, seq, sub);
            i = e;
            continue;
        }
        if (c == ']' || c == ')' || c == ':' || c == '|') break;
        size_t j = i;
        while (j < p->n) {
            char d = p->s[j];
            if (d == '\\') {
                if (j + 1 < p->n && p->s[j + 1] != '\n') {
                    j += 2;
                    continue;
                }
                break;
            }
            if (d == '[' || d == ']' || d == '(' || d == ')' || d == ':' || d == '|') break;
            j++;
        }
        if (j == i) break; /* an unmatched backslash */
        append(p, seq, text_node(p, i, j));
        i = j;
    }
    *end = i;
    return seq;
}

/* [WS] NUMBER [WS] "]" at i */
static int when_part(parser *p, size_t i, size_t *num_a, size_t *num_b, size_t *end) {
    while (i < p->n && is_ws((unsigned char)p->s[i])) i++;
    size_t k = number(p->s, p->n, i);
    if (!k) return -1;
    *num_a = i, *num_b = k;
    while (k < p->n && is_ws((unsigned char)p->s[k])) k++;
    if (k >= p->n || p->s[k] != ']') return -1;
    *end = k + 1;
    return 0;
}

static int wrap(parser *p, size_t a, size_t b, int inner, size_t c, size_t d, int inner2, size_t e, size_t f) {
    int seq = add(p, N_SEQ);
    append(p, seq, text_node(p, a, b));
    append(p, seq, inner);
    if (inner2 >= 0) {
        append(p, seq, text_node(p, c, d));
        append(p, seq, inner2);
    }
    append(p, seq, text_node(p, e, f));
    return seq;
}

static int parse_bracket(parser *p, size_t i, size_t *end, int *out) {
    size_t e1;
    int p1 = parse_prompt(p, i + 1, &e1);
    if (p->oom || e1 >= p->n) return -1;
    char c = p->s[e1];
    if (c == ']') {
        *out = wrap(p, i, i + 1, p1, 0, 0, -1, e1, e1 + 1);
        *end = e1 + 1;
        return 0;
    }
    if (c == '|') {
        int alt = add(p, N_ALT);
        append(p, alt, p1);
        size_t k = e1;
        while (k < p->n && p->s[k] == '|') {
            size_t ek;
            int pk = parse_prompt(p, k + 1, &ek);
            if (pk >= 0 && p->v[pk].first < 0) p->v[pk].empty = 1;
            append(p, alt, pk);
            k = ek;
        }
        if (k >= p->n || p->s[k] != ']') return -1;
        *out = alt;
        *end = k + 1;
        return 0;
    }
    if (c != ':') return -1;
    size_t na, nb, ee;
    if (!when_part(p, e1 + 1, &na, &nb, &ee)) { /* [to:when] */
        int sc = add(p, N_SCHED);
        if (sc < 0) return -1;
        p->v[sc].after = p1;
        p->v[sc].num = p->s + na, p->v[sc].num_len = nb - na;
        *out = sc;
        *end = ee;
        return 0;
    }
    size_t e2;
    int p2 = parse_prompt(p, e1 + 1, &e2);
    if (p->oom || e2 >= p->n || p->s[e2] != ':' || when_part(p, e2 + 1, &na, &nb, &ee)) return -1;
    int sc = add(p, N_SCHED);
    if (sc < 0) return -1;
    p->v[sc].before = p1;
    p->v[sc].after = p2;
    p->v[sc].num = p->s + na, p->v[sc].num_len = nb - na;
    *out = sc;
    *end = ee;
    return 0;
}

static int parse_paren(parser *p, size_t i, size_t *end, int *out) {
    size_t e1;
    int p1 = parse_prompt(p, i + 1, &e1);
    if (p->oom || e1 >= p->n) return -1;
    if (p->s[e1] == ')') {
        *out = wrap(p, i, i + 1, p1, 0, 0, -1, e1, e1 + 1);
        *end = e1 + 1;
        return 0;
    }
    if (p->s[e1] != ':') return -1;
    size_t e2;
    int p2 = parse_prompt(p, e1 + 1, &e2);
    if (p->oom || e2 >= p->n || p->s[e2] != ')') return -1;
    *out = wrap(p, i, i + 1, p1, e1, e1 + 1, p2, e2, e2 + 1);
    *end = e2 + 1;
    return 0;
}

/* start: the top-level sequence; -1 when a character matches no rule */
static int parse_start(parser *p) {
    int seq = add(p, N_SEQ);
    size_t i = 0;
    while (i < p->n && !p->oom && !p->too_deep) {
        size_t e;
        int sub = parse_prompt(p, i, &e);
        append(p, seq, sub);
        if (e > i) {
            i = e;
            continue;
        }
        char c = p->s[i];
        if (c == '[' || c == ']' || c == '(' || c == ')' || c == ':') {
            append(p, seq, text_node(p, i, i + 1));
            i++;
            continue;
        }
        return -1; /* '|' or a lone backslash */
    }
    return p->oom || p->too_deep ? -1 : seq;
}

/* ---- steps and rendering -------------------------------------------------------------------- */

typedef struct ctx {
    parser *p;
    int steps, int_off;
    double flt_off;
    int old;
    int *marks; /* [steps + 1]: 1 where a segment ends */
} ctx;

static void collect(ctx *c, int id) {
    for (; id >= 0; id = c->p->v[id].next) {
        node *x = &c->p->v[id];
        if (x->kind == N_SCHED) {
            char buf[64];
            size_t l = x->num_len < sizeof buf - 1 ? x->num_len : sizeof buf - 1;
            memcpy(buf, x->num, l);
            buf[l] = 0;
            double v = strtod(buf, NULL);
            if (c->old)
                v = v < 1 ? v * c->steps : v;
            else if (memchr(buf, '.', l))
                v = (v - c->flt_off) * c->steps;
            else
                v = v - c->int_off;
            /* int() truncates toward zero; out-of-range values saturate before min(steps, .) */
            double tv = trunc(v);
            int w = tv >= c->steps ? c->steps : (tv < -1e9 ? -1000000000 : (int)tv);
            x->when = w;
            if (w >= 1) c->marks[w] = 1;
            collect(c, x->before);
            collect(c, x->after);
        } else if (x->kind == N_ALT) {
            for (int s = 1; s <= c->steps; s++) c->marks[s] = 1;
            collect(c, x->first);
        } else if (x->kind == N_SEQ) {
            collect(c, x->first);
        }
    }
}

static int count_children(const parser *p, int id) {
    int k = 0;
    for (int c = p->v[id].first; c >= 0; c = p->v[c].next) k++;
    return k;
}

static void render(const parser *p, int id, int step, sdxl_strbuf *b);

static void render_one(const parser *p, int id, int step, sdxl_strbuf *b) {
    const node *x = &p->v[id];
    switch (x->kind) {
    case N_TEXT: sdxl_sb_put(b, p->s + x->a, x->b - x->a); break;
    case N_SEQ: render(p, x->first, step, b); break;
    case N_SCHED:
        if (step <= x->when) {
            if (x->before >= 0) render_one(p, x->before, step, b);
        } else {
            render_one(p, x->after, step, b);
        }
        break;
    case N_ALT: {
        int k = count_children(p, id), want = ((step - 1) % k + k) % k, c = x->first;
        for (int j = 0; j < want; j++) c = p->v[c].next;
        if (!p->v[c].empty) render_one(p, c, step, b);
        break;
    }
    }
}

static void render(const parser *p, int id, int step, sdxl_strbuf *b) {
    for (; id >= 0; id = p->v[id].next) render_one(p, id, step, b);
}

void sdxl_prompt_sched_free(sdxl_prompt_sched *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) free(s->seg[i].text);
    free(s->seg);
    s->seg = NULL;
    s->n = 0;
}

static int one_segment(const char *prompt, int steps, sdxl_prompt_sched *out, sdxl_err *e) {
    out->seg = calloc(1, sizeof *out->seg);
    if (!out->seg || !(out->seg[0].text = strdup(prompt))) {
        free(out->seg);
        out->seg = NULL;
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
    }
    out->n = 1;
    out->seg[0].end_step = steps;
    return SDXL_OK;
}

int sdxl_prompt_schedule(const char *prompt, int steps, const sdxl_sched_opts *opts, sdxl_prompt_sched *out,
                         sdxl_err *e) {
    memset(out, 0, sizeof *out);
    if (!prompt) prompt = "";
    if (steps < 1 || steps > 100000) return sdxl_seterr(e, SDXL_ERR_ARG, "steps: must be 1..100000, got %d", steps);
    int base = steps, hires = opts ? opts->hires_steps : 0, old = opts ? opts->old_scheduling : 0;
    parser p = {prompt, strlen(prompt), NULL, 0, 0, 0, 0, 0, NULL};
    p.failed = calloc(p.n + 1, 1);
    int root = p.failed ? parse_start(&p) : -1;
    if (!p.failed) p.oom = 1;
    free(p.failed);
    if (p.oom) {
        free(p.v);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
    }
    ctx c = {&p, hires > 0 && !old ? hires : base, hires > 0 && !old ? base : 0, hires > 0 && !old ? 1.0 : 0.0, old,
             NULL};
    if (root < 0) {
        free(p.v);
        return one_segment(prompt, c.steps, out, e);
    }
    c.marks = calloc((size_t)c.steps + 1, sizeof(int));
    if (!c.marks) {
        free(p.v);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
    }
    c.marks[c.steps] = 1;
    collect(&c, root);
    int n = 0;
    for (int s = 1; s <= c.steps; s++) n += c.marks[s];
    out->seg = calloc((size_t)n, sizeof *out->seg);
    int st = SDXL_OK;
    for (int s = 1, k = 0; out->seg && s <= c.steps; s++) {
        if (!c.marks[s]) continue;
        sdxl_strbuf b = {0};
        render(&p, root, s, &b);
        sdxl_sb_put(&b, "", 0);
        out->seg[k].end_step = s;
        out->seg[k].text = b.oom ? NULL : (b.p ? b.p : strdup(""));
        if (!out->seg[k].text) {
            free(b.p);
            st = SDXL_ERR_NOMEM;
        }
        out->n = ++k;
    }
    free(c.marks);
    free(p.v);
    if (!out->seg || st) {
        sdxl_prompt_sched_free(out);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt schedule: out of memory");
    }
    return SDXL_OK;
}

int sdxl_prompt_sched_at(const sdxl_prompt_sched *s, int step) {
    for (int i = 0; i < s->n; i++)
        if (step <= s->seg[i].end_step) return i;
    return 0;
}

/* ---- AND ------------------------------------------------------------------------------------ */

/* \w of Python's re for str patterns, approximated on UTF-8 bytes: every non-ASCII byte counts
 * as part of a word (letters of other scripts are word characters there). */
static int is_word(unsigned char c) { return isalnum(c) || c == '_' || c >= 0x80; }

/* re_weight: ^(\s*.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$ ; returns text length and
 * weight, or -1 when the regex does not match */
static long weight_split(const char *s, size_t n, double *w) {
    size_t lead = 0;
    while (lead < n && is_ws((unsigned char)s[lead])) lead++;
    for (size_t p = lead; p <= n; p++) {
        /* with the weight */
        size_t k = p;
        while (k < n && is_ws((unsigned char)s[k])) k++;
        if (k < n && s[k] == ':') {
            k++;
            while (k < n && is_ws((unsigned char)s[k])) k++;
            size_t a = k;
            if (k < n && (s[k] == '+' || s[k] == '-')) k++;
            size_t d = k;
            while (k < n && isdigit((unsigned char)s[k])) k++;
            int ok = k > d;
            if (k < n && s[k] == '.') {
                size_t f = k + 1;
                while (f < n && isdigit((unsigned char)s[f])) f++;
                if (ok || f > k + 1) k = f, ok = 1;
            }
            size_t z = k;
            while (z < n && is_ws((unsigned char)s[z])) z++;
            if (ok && (z == n || (z == n - 1 && s[z] == '\n'))) {
                char buf[64];
                size_t l = k - a < sizeof buf - 1 ? k - a : sizeof buf - 1;
                memcpy(buf, s + a, l);
                buf[l] = 0;
                *w = strtod(buf, NULL);
                return (long)p;
            }
        }
        /* without */
        k = p;
        while (k < n && is_ws((unsigned char)s[k])) k++;
        if (k == n) {
            *w = 1.0;
            return (long)p;
        }
        if (p < n && s[p] == '\n') break; /* '.' does not cross a newline */
    }
    return -1;
}

void sdxl_prompt_and_free(sdxl_and_part *parts, int n) {
    for (int i = 0; parts && i < n; i++) free(parts[i].text);
    free(parts);
}

int sdxl_prompt_and_split(const char *prompt, sdxl_and_part **parts, int *n, sdxl_err *e) {
    *parts = NULL;
    *n = 0;
    if (!prompt) prompt = "";
    size_t len = strlen(prompt), cap = 1;
    for (size_t i = 0; i + 3 <= len; i++)
        if (!memcmp(prompt + i, "AND", 3)) cap++;
    sdxl_and_part *v = calloc(cap, sizeof *v);
    if (!v) return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        int cut = i == len;
        if (!cut && i + 3 <= len && !memcmp(prompt + i, "AND", 3) && (i == 0 || !is_word((unsigned char)prompt[i - 1])) &&
            (i + 3 == len || !is_word((unsigned char)prompt[i + 3])))
            cut = 1;
        if (!cut) continue;
        const char *s = prompt + start;
        size_t sn = i - start;
        double w = 1.0;
        long tl = weight_split(s, sn, &w);
        if (tl < 0) tl = (long)sn, w = 1.0;
        v[k].text = malloc((size_t)tl + 1);
        if (!v[k].text) {
            sdxl_prompt_and_free(v, k);
            return sdxl_seterr(e, SDXL_ERR_NOMEM, "prompt: out of memory");
        }
        memcpy(v[k].text, s, (size_t)tl);
        v[k].text[tl] = 0;
        v[k].weight = w;
        k++;
        start = i + 3;
        i += 2;
    }
    *parts = v;
    *n = k;
    return SDXL_OK;
}
