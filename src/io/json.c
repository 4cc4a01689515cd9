/* Strict RFC 8259 JSON. One pass over the bytes; values are built on a stack and copied into a
 * per-document chunk allocator when their container closes, so a document is a handful of
 * mallocs however many values it holds, and sdxl_json_free releases it in one walk. */
#include "io/json.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSON_DEPTH_CAP 1024 /* recursion bound whatever the caller asks: keeps stack use < ~200 KiB */
#define JSON_SMALL_OBJ 16   /* objects up to this many keys are checked for duplicates pairwise */

typedef struct jchunk {
    struct jchunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} jchunk;

/* The root value lives inside its document so that freeing the root frees everything. */
typedef struct jdoc {
    jchunk *chunks;
    sdxl_json root;
} jdoc;

typedef struct jkey {
    char *s;
    size_t len;
} jkey;

typedef struct jparser {
    const unsigned char *s;
    size_t n, pos;
    int max_depth, reject_dup, allow_nonfinite;
    size_t max_string;
    size_t max_values, n_values;
    const char *what;
    sdxl_err *e;
    jdoc *doc;
    sdxl_json *vs; /* value stack */
    size_t vtop, vcap;
    jkey *ks; /* key stack */
    size_t ktop, kcap;
    uint32_t *ht; /* duplicate-key hash table scratch */
    size_t hcap;
    locale_t cloc; /* "C" locale for strtod_l, made on first use */
} jparser;

void sdxl_json_opts_init(sdxl_json_opts *o) {
    o->max_depth = 64;
    o->reject_dup_keys = 1;
    o->max_string = (size_t)16 << 20;
    o->allow_nonfinite = 0;
    o->max_values = 0;
}

static void *jalloc(jparser *p, size_t bytes) {
    bytes = (bytes + 15) & ~(size_t)15;
    jchunk *c = p->doc->chunks;
    if (!c || c->cap - c->used < bytes) {
        size_t cap = c ? c->cap * 2 : 4096;
        if (cap > ((size_t)8 << 20)) cap = (size_t)8 << 20;
        if (cap < bytes) cap = bytes;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = p->doc->chunks;
        p->doc->chunks = c;
    }
    void *r = c->data + c->used;
    c->used += bytes;
    return r;
}

/* Describes the byte at pos for error messages: 'x', 0xNN or "end of input". */
static const char *found(const jparser *p, char *buf, size_t cap) {
    if (p->pos >= p->n) return "end of input";
    unsigned char c = p->s[p->pos];
    if (c >= 0x20 && c < 0x7f) snprintf(buf, cap, "'%c'", c);
    else snprintf(buf, cap, "byte 0x%02x", c);
    return buf;
}

static int fail(jparser *p, const char *msg) {
    char b[32];
    return sdxl_seterr(p->e, SDXL_ERR_FORMAT, "%s: byte %zu: %s (found %s)", p->what, p->pos, msg, found(p, b, sizeof b));
}

static int fail_at(jparser *p, size_t pos, int status, const char *msg) {
    return sdxl_seterr(p->e, status, "%s: byte %zu: %s", p->what, pos, msg);
}

static int nomem(jparser *p) { return fail_at(p, p->pos, SDXL_ERR_NOMEM, "out of memory"); }

static void skip_ws(jparser *p) {
    while (p->pos < p->n) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs, no surrogates, <= U+10FFFF),
 * or 0 when the bytes are not one. */
static size_t utf8_seq(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xc2) return 0;
    if (c < 0xe0) return avail >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c < 0xf0) {
        if (avail < 3) return 0;
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 ? 3 : 0;
    }
    if (c < 0xf5) {
        if (avail < 4) return 0;
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        return s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80 ? 4 : 0;
    }
    return 0;
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits after "\u" at pos (pointing at 'u'); -1 if malformed. */
static long hex4(const jparser *p, size_t pos) {
    if (p->n - pos < 5) return -1;
    long v = 0;
    for (int i = 1; i <= 4; i++) {
        int h = hexval(p->s[pos + i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

static size_t put_utf8(unsigned char *d, unsigned long cp) {
    if (cp < 0x80) {
        d[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (unsigned char)(0xc0 | (cp >> 6));
        d[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (unsigned char)(0xe0 | (cp >> 12));
        d[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        d[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    d[0] = (unsigned char)(0xf0 | (cp >> 18));
    d[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    d[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    d[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses the string whose opening quote is at pos into arena memory. First pass validates the
 * raw bytes and finds the closing quote; the second decodes escapes (decoded <= raw length). */
static int parse_string(jparser *p, char **out, size_t *out_len) {
    size_t start = ++p->pos, i = start;
    int escapes = 0;
    for (;;) {
        while (i < p->n) {
            unsigned char c = p->s[i];
            if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') break;
            i++;
        }
        if (i >= p->n) {
            p->pos = i;
            return fail(p, "unterminated string");
        }
        unsigned char c = p->s[i];
        if (c == '"') break;
        if (c < 0x20) {
            p->pos = i;
            return fail(p, "control character in string (must be escaped)");
        }
        if (c == '\\') {
            escapes = 1;
            i = p->n - i < 2 ? p->n : i + 2;
            continue;
        }
        size_t k = utf8_seq(p->s + i, p->n - i);
        if (!k) {
            p->pos = i;
            return fail(p, "invalid UTF-8 in string (bad lead, continuation, overlong form or surrogate)");
        }
        i += k;
    }
    size_t raw = i - start;
    unsigned char *d = jalloc(p, raw + 1);
    if (!d) return nomem(p);
    size_t len = 0;
    if (!escapes) {
        memcpy(d, p->s + start, raw);
        len = raw;
    } else {
        size_t j = start;
        while (j < i) {
            unsigned char c = p->s[j];
            if (c != '\\') {
                d[len++] = c;
                j++;
                continue;
            }
            unsigned char x = p->s[j + 1];
            j += 2;
            switch (x) {
            case '"': d[len++] = '"'; break;
            case '\\': d[len++] = '\\'; break;
            case '/': d[len++] = '/'; break;
            case 'b': d[len++] = '\b'; break;
            case 'f': d[len++] = '\f'; break;
            case 'n': d[len++] = '\n'; break;
            case 'r': d[len++] = '\r'; break;
            case 't': d[len++] = '\t'; break;
            case 'u': {
                long cp = hex4(p, j - 1);
                if (cp < 0 || j + 4 > i) {
                    p->pos = j - 2;
                    return fail(p, "\\u must be followed by 4 hex digits");
                }
                j += 4;
                if (cp >= 0xdc00 && cp <= 0xdfff) {
                    p->pos = j - 6;
                    return fail(p, "\\u escape is a lone low surrogate");
                }
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    long lo = (j + 6 <= i && p->s[j] == '\\' && p->s[j + 1] == 'u') ? hex4(p, j + 1) : -1;
                    if (lo < 0xdc00 || lo > 0xdfff) {
                        p->pos = j - 6;
                        return fail(p, "\\u escape is a high surrogate not followed by a \\u low surrogate");
                    }
                    j += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                len += put_utf8(d + len, (unsigned long)cp);
                break;
            }
            default:
                p->pos = j - 2;
                return fail(p, "invalid escape in string (allowed: \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
            }
        }
    }
    d[len] = 0;
    if (len > p->max_string) {
        char msg[96];
        snprintf(msg, sizeof msg, "string of %zu bytes exceeds the limit of %zu", len, p->max_string);
        return fail_at(p, start - 1, SDXL_ERR_LIMIT, msg);
    }
    p->pos = i + 1;
    *out = (char *)d;
    *out_len = len;
    return SDXL_OK;
}

static int parse_number(jparser *p, sdxl_json *v) {
    size_t start = p->pos, i = start;
    int neg = 0, frac = 0;
    if (i < p->n && p->s[i] == '-') {
        neg = 1;
        i++;
    }
    if (i >= p->n || p->s[i] < '0' || p->s[i] > '9') {
        p->pos = i;
        return fail(p, "expected a digit in number");
    }
    uint64_t mag = 0;
    int overflow = 0;
    if (p->s[i] == '0') {
        i++;
        if (i < p->n && p->s[i] >= '0' && p->s[i] <= '9') {
            p->pos = i;
            return fail(p, "leading zero in number");
        }
    } else {
        while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9') {
            unsigned dgt = (unsigned)(p->s[i] - '0');
            if (mag > (UINT64_MAX - dgt) / 10) overflow = 1;
            else mag = mag * 10 + dgt;
            i++;
        }
    }
    if (i < p->n && p->s[i] == '.') {
        frac = 1;
        i++;
        if (i >= p->n || p->s[i] < '0' || p->s[i] > '9') {
            p->pos = i;
            return fail(p, "expected a digit after the decimal point");
        }
        while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9') i++;
    }
    if (i < p->n && (p->s[i] == 'e' || p->s[i] == 'E')) {
        frac = 1;
        i++;
        if (i < p->n && (p->s[i] == '+' || p->s[i] == '-')) i++;
        if (i >= p->n || p->s[i] < '0' || p->s[i] > '9') {
            p->pos = i;
            return fail(p, "expected a digit in the exponent");
        }
        while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9') i++;
    }
    v->type = SDXL_JSON_NUMBER;
    if (!frac && !overflow && (neg ? mag <= (uint64_t)INT64_MAX + 1 : mag <= (uint64_t)INT64_MAX)) {
        v->is_int = 1;
        v->integer = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
    }
    if (v->is_int && mag <= ((uint64_t)1 << 53)) {
        v->number = (double)v->integer; /* exact: no need for strtod */
    } else {
        size_t len = i - start;
        char small[64], *buf = len < sizeof small ? small : malloc(len + 1);
        if (!buf) return nomem(p);
        memcpy(buf, p->s + start, len);
        buf[len] = 0;
        if (!p->cloc) p->cloc = newlocale(LC_ALL_MASK, "C", (locale_t)0);
        if (!p->cloc) {
            if (buf != small) free(buf);
            return nomem(p);
        }
        v->number = strtod_l(buf, NULL, p->cloc);
        if (buf != small) free(buf);
        if (!isfinite(v->number)) {
            p->pos = start;
            return fail(p, "number is out of the range of a double");
        }
    }
    p->pos = i;
    return SDXL_OK;
}

static int push(jparser *p, const sdxl_json *v) {
    if (p->max_values && ++p->n_values > p->max_values) {
        char msg[96];
        snprintf(msg, sizeof msg, "more than %zu values (limit)", p->max_values);
        return fail_at(p, p->pos, SDXL_ERR_LIMIT, msg);
    }
    if (p->vtop == p->vcap) {
        size_t cap = p->vcap ? p->vcap * 2 : 256;
        sdxl_json *n = realloc(p->vs, cap * sizeof *n);
        if (!n) return nomem(p);
        p->vs = n;
        p->vcap = cap;
    }
    p->vs[p->vtop++] = *v;
    return SDXL_OK;
}

static int push_key(jparser *p, char *s, size_t len) {
    if (p->ktop == p->kcap) {
        size_t cap = p->kcap ? p->kcap * 2 : 64;
        jkey *n = realloc(p->ks, cap * sizeof *n);
        if (!n) return nomem(p);
        p->ks = n;
        p->kcap = cap;
    }
    p->ks[p->ktop].s = s;
    p->ks[p->ktop].len = len;
    p->ktop++;
    return SDXL_OK;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* Index of a key equal to an earlier one among ks[0..n), or (size_t)-1. */
static size_t find_dup(jparser *p, const jkey *ks, size_t n) {
    if (n <= JSON_SMALL_OBJ) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (ks[i].len == ks[j].len && !memcmp(ks[i].s, ks[j].s, ks[i].len)) return i;
        return (size_t)-1;
    }
    size_t cap = 64;
    while (cap < 2 * n) cap *= 2;
    if (cap > p->hcap) {
        uint32_t *t = realloc(p->ht, cap * sizeof *t);
        if (!t) return (size_t)-2;
        p->ht = t;
        p->hcap = cap;
    }
    memset(p->ht, 0, cap * sizeof *p->ht);
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)hash_bytes(ks[i].s, ks[i].len) & (cap - 1);
        while (p->ht[h]) {
            const jkey *o = &ks[p->ht[h] - 1];
            if (o->len == ks[i].len && !memcmp(o->s, ks[i].s, o->len)) return i;
            h = (h + 1) & (cap - 1);
        }
        p->ht[h] = (uint32_t)(i + 1);
    }
    return (size_t)-1;
}

static int parse_value(jparser *p, int depth);

static int parse_array(jparser *p, int depth) {
    size_t base = p->vtop;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == ']') {
        p->pos++;
    } else {
        for (;;) {
            int st = parse_value(p, depth);
            if (st) return st;
            skip_ws(p);
            if (p->pos < p->n && p->s[p->pos] == ',') {
                p->pos++;
                skip_ws(p);
                continue;
            }
            if (p->pos < p->n && p->s[p->pos] == ']') {
                p->pos++;
                break;
            }
            return fail(p, "expected ',' or ']' in array");
        }
    }
    sdxl_json a = {.type = SDXL_JSON_ARRAY};
    a.len = p->vtop - base;
    if (a.len) {
        a.items = jalloc(p, a.len * sizeof *a.items);
        if (!a.items) return nomem(p);
        memcpy(a.items, p->vs + base, a.len * sizeof *a.items);
    }
    p->vtop = base;
    return push(p, &a);
}

static int parse_object(jparser *p, int depth) {
    size_t vbase = p->vtop, kbase = p->ktop, open = p->pos;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == '}') {
        p->pos++;
    } else {
        for (;;) {
            if (p->pos >= p->n || p->s[p->pos] != '"') return fail(p, "expected a string key in object");
            char *k;
            size_t klen;
            int st = parse_string(p, &k, &klen);
            if (st) return st;
            if ((st = push_key(p, k, klen))) return st;
            skip_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != ':') return fail(p, "expected ':' after object key");
            p->pos++;
            skip_ws(p);
            if ((st = parse_value(p, depth))) return st;
            skip_ws(p);
            if (p->pos < p->n && p->s[p->pos] == ',') {
                p->pos++;
                skip_ws(p);
                continue;
            }
            if (p->pos < p->n && p->s[p->pos] == '}') {
                p->pos++;
                break;
            }
            return fail(p, "expected ',' or '}' in object");
        }
    }
    sdxl_json o = {.type = SDXL_JSON_OBJECT};
    o.len = p->vtop - vbase;
    if (o.len) {
        if (o.len > UINT32_MAX) return fail_at(p, open, SDXL_ERR_LIMIT, "object has more than 2^32 members");
        if (p->reject_dup) {
            size_t d = find_dup(p, p->ks + kbase, o.len);
            if (d == (size_t)-2) return nomem(p);
            if (d != (size_t)-1) {
                char msg[160];
                snprintf(msg, sizeof msg, "duplicate key \"%.100s\" in the object opened here", p->ks[kbase + d].s);
                return fail_at(p, open, SDXL_ERR_FORMAT, msg);
            }
        }
        o.items = jalloc(p, o.len * sizeof *o.items);
        o.keys = jalloc(p, o.len * sizeof *o.keys);
        o.key_lens = jalloc(p, o.len * sizeof *o.key_lens);
        if (!o.items || !o.keys || !o.key_lens) return nomem(p);
        memcpy(o.items, p->vs + vbase, o.len * sizeof *o.items);
        for (size_t i = 0; i < o.len; i++) {
            o.keys[i] = p->ks[kbase + i].s;
            o.key_lens[i] = p->ks[kbase + i].len;
        }
    }
    p->vtop = vbase;
    p->ktop = kbase;
    return push(p, &o);
}

static int parse_literal(jparser *p, const char *word, sdxl_json *v) {
    size_t l = strlen(word);
    if (p->n - p->pos < l || memcmp(p->s + p->pos, word, l)) return fail(p, "invalid literal (expected true, false or null)");
    p->pos += l;
    return push(p, v);
}

static int parse_value(jparser *p, int depth) {
    if (p->pos >= p->n) return fail(p, "expected a value");
    unsigned char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (depth >= p->max_depth) {
            char msg[64];
            snprintf(msg, sizeof msg, "nesting deeper than %d levels", p->max_depth);
            return fail_at(p, p->pos, SDXL_ERR_LIMIT, msg);
        }
        return c == '{' ? parse_object(p, depth + 1) : parse_array(p, depth + 1);
    }
    if (c == '"') {
        sdxl_json v = {.type = SDXL_JSON_STRING};
        int st = parse_string(p, &v.str, &v.len);
        return st ? st : push(p, &v);
    }
    if (p->allow_nonfinite) {
        /* Python's json module writes these for non-finite floats. */
        static const struct { const char *word; double value; } nf[] = {
            {"NaN", NAN}, {"Infinity", INFINITY}, {"-Infinity", -INFINITY}};
        for (size_t i = 0; i < sizeof nf / sizeof nf[0]; i++) {
            size_t l = strlen(nf[i].word);
            if (p->n - p->pos >= l && memcmp(p->s + p->pos, nf[i].word, l) == 0)
                return parse_literal(p, nf[i].word, &(sdxl_json){.type = SDXL_JSON_NUMBER, .number = nf[i].value});
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        sdxl_json v = {.type = SDXL_JSON_NUMBER};
        int st = parse_number(p, &v);
        return st ? st : push(p, &v);
    }
    if (c == 't') return parse_literal(p, "true", &(sdxl_json){.type = SDXL_JSON_BOOL, .boolean = 1});
    if (c == 'f') return parse_literal(p, "false", &(sdxl_json){.type = SDXL_JSON_BOOL, .boolean = 0});
    if (c == 'n') return parse_literal(p, "null", &(sdxl_json){.type = SDXL_JSON_NULL});
    return fail(p, "expected a value");
}

static void doc_free(jdoc *d) {
    if (!d) return;
    jchunk *c = d->chunks;
    while (c) {
        jchunk *n = c->next;
        free(c);
        c = n;
    }
    free(d);
}

int sdxl_json_parse(const char *text, size_t len, const sdxl_json_opts *opts, const char *what, sdxl_json **out,
                    sdxl_err *e) {
    if (!out) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_json_parse: out is required");
    *out = NULL;
    if (!text && len) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_json_parse: text is NULL");
    sdxl_json_opts d;
    if (!opts) {
        sdxl_json_opts_init(&d);
        opts = &d;
    }
    jparser p = {.s = (const unsigned char *)text, .n = len, .what = what ? what : "JSON", .e = e};
    p.max_depth = opts->max_depth < 1 ? 1 : opts->max_depth > JSON_DEPTH_CAP ? JSON_DEPTH_CAP : opts->max_depth;
    p.reject_dup = opts->reject_dup_keys;
    p.allow_nonfinite = opts->allow_nonfinite;
    p.max_string = opts->max_string;
    p.max_values = opts->max_values;
    p.doc = calloc(1, sizeof *p.doc);
    if (!p.doc) return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory", p.what);
    int st;
    if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3)) {
        st = fail(&p, "byte order mark is not allowed");
    } else {
        skip_ws(&p);
        st = parse_value(&p, 0);
        if (!st) {
            skip_ws(&p);
            if (p.pos != p.n) st = fail(&p, "unexpected data after the JSON value");
        }
    }
    if (!st) p.doc->root = p.vs[0];
    free(p.vs);
    free(p.ks);
    free(p.ht);
    if (p.cloc) freelocale(p.cloc);
    if (st) {
        doc_free(p.doc);
        return st;
    }
    *out = &p.doc->root;
    return SDXL_OK;
}

void sdxl_json_free(sdxl_json *v) {
    if (!v) return;
    doc_free((jdoc *)((char *)v - offsetof(jdoc, root)));
}

const sdxl_json *sdxl_json_get(const sdxl_json *obj, const char *key) {
    if (!obj || obj->type != SDXL_JSON_OBJECT || !key) return NULL;
    size_t kl = strlen(key);
    for (size_t i = obj->len; i-- > 0;) /* last wins when duplicates were allowed */
        if (obj->key_lens[i] == kl && !memcmp(obj->keys[i], key, kl)) return &obj->items[i];
    return NULL;
}

const sdxl_json *sdxl_json_at(const sdxl_json *arr, size_t i) {
    if (!arr || arr->type != SDXL_JSON_ARRAY || i >= arr->len) return NULL;
    return &arr->items[i];
}

double sdxl_json_num(const sdxl_json *obj, const char *key, double def) {
    const sdxl_json *v = sdxl_json_get(obj, key);
    return v && v->type == SDXL_JSON_NUMBER ? v->number : def;
}

int64_t sdxl_json_i64(const sdxl_json *obj, const char *key, int64_t def) {
    const sdxl_json *v = sdxl_json_get(obj, key);
    return v && v->type == SDXL_JSON_NUMBER && v->is_int ? v->integer : def;
}

const char *sdxl_json_str(const sdxl_json *obj, const char *key, const char *def) {
    const sdxl_json *v = sdxl_json_get(obj, key);
    return v && v->type == SDXL_JSON_STRING ? v->str : def;
}

int sdxl_json_bool(const sdxl_json *obj, const char *key, int def) {
    const sdxl_json *v = sdxl_json_get(obj, key);
    return v && v->type == SDXL_JSON_BOOL ? v->boolean : def;
}

int sdxl_json_parse_file(const char *path, size_t max_bytes, const sdxl_json_opts *opts, sdxl_json **out,
                         sdxl_err *e) {
    if (!out) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_json_parse_file: out is required");
    *out = NULL;
    if (!path) return sdxl_seterr(e, SDXL_ERR_ARG, "sdxl_json_parse_file: path is required");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: cannot stat: %s", path, strerror(err));
    }
    if (S_ISDIR(sb.st_mode)) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_IO, "%s: is a directory, not a JSON file", path);
    }
    if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size > max_bytes) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: file is %lld bytes, over the limit of %zu", path,
                           (long long)sb.st_size, max_bytes);
    }
    /* Read until EOF, never past max_bytes (the size can change under us, or not be known). */
    size_t cap = S_ISREG(sb.st_mode) ? (size_t)sb.st_size + 1 : 65536, len = 0;
    if (cap > max_bytes + 1 || cap == 0) cap = max_bytes + 1;
    char *buf = malloc(cap ? cap : 1);
    if (!buf) {
        close(fd);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, cap);
    }
    for (;;) {
        if (len == cap) {
            if (cap > max_bytes) break;
            size_t ncap = cap * 2 > max_bytes + 1 ? max_bytes + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                close(fd);
                return sdxl_seterr(e, SDXL_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, ncap);
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR) continue;
            int err = errno;
            free(buf);
            close(fd);
            return sdxl_seterr(e, SDXL_ERR_IO, "%s: read failed: %s", path, strerror(err));
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (len > max_bytes) {
        free(buf);
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "%s: file is over the limit of %zu bytes", path, max_bytes);
    }
    int st = sdxl_json_parse(buf, len, opts, path, out, e);
    free(buf);
    return st;
}

size_t sdxl_json_escape(char *buf, size_t cap, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
#define EMIT(c)                                                                                                        \
    do {                                                                                                               \
        if (o + 1 < cap) buf[o] = (char)(c);                                                                          \
        o++;                                                                                                           \
    } while (0)
    const unsigned char *u = (const unsigned char *)s;
    EMIT('"');
    for (size_t i = 0; i < len;) {
        unsigned char c = u[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default: break;
        }
        if (esc) {
            for (; *esc; esc++) EMIT(*esc);
            i++;
        } else if (c < 0x20) {
            char u6[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
            for (int j = 0; j < 6; j++) EMIT(u6[j]);
            i++;
        } else {
            size_t k = utf8_seq(u + i, len - i);
            if (!k) { /* invalid UTF-8 becomes U+FFFD so the output is always valid JSON */
                for (const char *r = "\\ufffd"; *r; r++) EMIT(*r);
                i++;
            } else {
                for (size_t j = 0; j < k; j++) EMIT(u[i + j]);
                i += k;
            }
        }
    }
    EMIT('"');
#undef EMIT
    if (cap) buf[o < cap ? o : cap - 1] = 0;
    return o;
}
