/* A1111 infotext ("parameters") formatter and parser, and its JSON form. The parser follows
 * A1111's parse_generation_parameters: the parameter line is matched pair by pair with the
 * pattern  \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)  scanned left to right, skipping
 * a byte wherever no pair starts, exactly as Python's re.findall does. */
#include "io/genmeta.h"
#include "io/strbuf.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- growable string ---------------------------------------------------------------------- */

static int sb_finish(sdxl_strbuf *b, char **out, sdxl_err *e) {
    if (!b->oom && !b->p) sdxl_sb_put(b, "", 0);
    if (b->oom) {
        free(b->p);
        *out = NULL;
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
    }
    *out = b->p;
    return SDXL_OK;
}

/* Shortest decimal text that reads back as the same double (what Python's repr gives). */
static void fmt_double(char *buf, size_t cap, double v) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* ---- strings ------------------------------------------------------------------------------ */

static char *dupn(const char *s, size_t n) {
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
/* Python's \w on UTF-8 bytes: ASCII letters, digits, '_', and any non-ASCII byte. */
static int is_word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}
static int is_keych(unsigned char c) { return is_word(c) || c == ' ' || c == '-' || c == '/'; }

static void trim(const char **s, size_t *n) {
    while (*n && is_space((unsigned char)**s)) (*s)++, (*n)--;
    while (*n && is_space((unsigned char)(*s)[*n - 1])) (*n)--;
}

/* ---- the struct --------------------------------------------------------------------------- */

void sdxl_genmeta_init(sdxl_genmeta *m) {
    memset(m, 0, sizeof *m);
    m->cfg_scale = NAN;
    m->seed = -1;
    m->denoising_strength = NAN;
    m->refiner_switch = NAN;
}

void sdxl_genmeta_free(sdxl_genmeta *m) {
    if (!m) return;
    free(m->prompt);
    free(m->negative_prompt);
    free(m->sampler);
    free(m->schedule);
    free(m->model_hash);
    free(m->model);
    free(m->refiner);
    for (size_t i = 0; i < m->n_extra; i++) {
        free(m->extra[i].key);
        free(m->extra[i].value);
    }
    free(m->extra);
    sdxl_genmeta_init(m);
}

int sdxl_genmeta_set_str(char **field, const char *s, sdxl_err *e) {
    char *c = NULL;
    if (s && !(c = dupn(s, strlen(s)))) return sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
    free(*field);
    *field = c;
    return SDXL_OK;
}

/* Keys of the named fields, in the order A1111's create_infotext writes them. */
enum { K_STEPS, K_SAMPLER, K_SCHEDULE, K_CFG, K_SEED, K_SIZE, K_MODEL_HASH, K_MODEL, K_DENOISE, K_CLIP_SKIP,
       K_REFINER, K_REFINER_SWITCH, K_COUNT };
static const char *const KNOWN[K_COUNT] = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size",
                                           "Model hash", "Model", "Denoising strength", "Clip skip",
                                           "Refiner", "Refiner switch at"};

static int known_key(const char *k, size_t n) {
    for (int i = 0; i < K_COUNT; i++)
        if (strlen(KNOWN[i]) == n && !memcmp(KNOWN[i], k, n)) return i;
    return -1;
}

/* Characters (not bytes) in s[0..n): Python counts code points. */
static size_t n_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

static int valid_key(const char *k) {
    size_t n = strlen(k);
    if (n_chars(k, n) < 2 || !is_word((unsigned char)k[0])) return 0;
    for (size_t i = 1; i < n; i++)
        if (!is_keych((unsigned char)k[i])) return 0;
    return 1;
}

static int extra_put(sdxl_genmeta *m, const char *k, size_t kn, const char *v, size_t vn, sdxl_err *e) {
    for (size_t i = 0; i < m->n_extra; i++) {
        if (strlen(m->extra[i].key) == kn && !memcmp(m->extra[i].key, k, kn)) {
            char *nv = dupn(v, vn);
            if (!nv) return sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
            free(m->extra[i].value);
            m->extra[i].value = nv;
            return SDXL_OK;
        }
    }
    sdxl_genmeta_kv *x = realloc(m->extra, (m->n_extra + 1) * sizeof *x);
    if (!x) return sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
    m->extra = x;
    char *kc = dupn(k, kn), *vc = dupn(v, vn);
    if (!kc || !vc) {
        free(kc);
        free(vc);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
    }
    m->extra[m->n_extra].key = kc;
    m->extra[m->n_extra].value = vc;
    m->n_extra++;
    return SDXL_OK;
}

static void extra_del(sdxl_genmeta *m, const char *k, size_t kn) {
    for (size_t i = 0; i < m->n_extra; i++) {
        if (strlen(m->extra[i].key) == kn && !memcmp(m->extra[i].key, k, kn)) {
            free(m->extra[i].key);
            free(m->extra[i].value);
            memmove(m->extra + i, m->extra + i + 1, (m->n_extra - i - 1) * sizeof *m->extra);
            m->n_extra--;
            return;
        }
    }
}

int sdxl_genmeta_extra_set(sdxl_genmeta *m, const char *key, const char *value, sdxl_err *e) {
    if (!key || !value) return sdxl_seterr(e, SDXL_ERR_ARG, "generation metadata: extra key and value must be set");
    if (!valid_key(key))
        return sdxl_seterr(e, SDXL_ERR_ARG,
                           "generation metadata: extra key \"%s\" is not an A1111 key (letters, digits, '_', "
                           "' ', '-', '/'; at least 2 bytes; no ':' or ',')", key);
    if (known_key(key, strlen(key)) >= 0)
        return sdxl_seterr(e, SDXL_ERR_ARG, "generation metadata: extra key \"%s\" is a named field; set the field",
                           key);
    return extra_put(m, key, strlen(key), value, strlen(value), e);
}

const char *sdxl_genmeta_extra_get(const sdxl_genmeta *m, const char *key) {
    for (size_t i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].key, key)) return m->extra[i].value;
    return NULL;
}

int sdxl_genmeta_copy(sdxl_genmeta *dst, const sdxl_genmeta *src, sdxl_err *e) {
    sdxl_genmeta_init(dst);
    int st = SDXL_OK;
    dst->steps = src->steps;
    dst->cfg_scale = src->cfg_scale;
    dst->seed = src->seed;
    dst->width = src->width;
    dst->height = src->height;
    dst->denoising_strength = src->denoising_strength;
    dst->clip_skip = src->clip_skip;
    dst->refiner_switch = src->refiner_switch;
    if ((st = sdxl_genmeta_set_str(&dst->prompt, src->prompt, e)) ||
        (st = sdxl_genmeta_set_str(&dst->negative_prompt, src->negative_prompt, e)) ||
        (st = sdxl_genmeta_set_str(&dst->sampler, src->sampler, e)) ||
        (st = sdxl_genmeta_set_str(&dst->schedule, src->schedule, e)) ||
        (st = sdxl_genmeta_set_str(&dst->model_hash, src->model_hash, e)) ||
        (st = sdxl_genmeta_set_str(&dst->model, src->model, e)) ||
        (st = sdxl_genmeta_set_str(&dst->refiner, src->refiner, e)))
        goto fail;
    for (size_t i = 0; i < src->n_extra; i++) {
        const sdxl_genmeta_kv *kv = &src->extra[i];
        if ((st = extra_put(dst, kv->key, strlen(kv->key), kv->value, strlen(kv->value), e))) goto fail;
    }
    return SDXL_OK;
fail:
    sdxl_genmeta_free(dst);
    return st;
}

/* ---- formatting --------------------------------------------------------------------------- */

/* A named key may sit in extra (holding a value its type rejected) only while its field is absent. */
static int field_present(const sdxl_genmeta *m, int id) {
    switch (id) {
    case K_STEPS: return m->steps > 0;
    case K_SAMPLER: return m->sampler != NULL;
    case K_SCHEDULE: return m->schedule != NULL;
    case K_CFG: return isfinite(m->cfg_scale);
    case K_SEED: return m->seed >= 0;
    case K_SIZE: return m->width > 0 && m->height > 0;
    case K_MODEL_HASH: return m->model_hash != NULL;
    case K_MODEL: return m->model != NULL;
    case K_DENOISE: return isfinite(m->denoising_strength);
    case K_CLIP_SKIP: return m->clip_skip > 0;
    case K_REFINER: return m->refiner != NULL;
    case K_REFINER_SWITCH: return isfinite(m->refiner_switch);
    default: return 0;
    }
}

/* A value is written bare unless the parser would read it back differently. */
static int needs_quote(const char *v) {
    size_t n = strlen(v);
    if (!n) return 0;
    if (v[0] == '"' || is_space((unsigned char)v[0]) || is_space((unsigned char)v[n - 1])) return 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == ',' || c == ':' || c < 0x20 || c == 0x7f) return 1;
    }
    return 0;
}

static void put_pair(sdxl_strbuf *b, int *first, const char *key, const char *value) {
    if (!*first) sdxl_sb_str(b, ", ");
    *first = 0;
    sdxl_sb_str(b, key);
    sdxl_sb_str(b, ": ");
    if (needs_quote(value))
        sdxl_sb_json(b, value);
    else
        sdxl_sb_str(b, value);
}

int sdxl_genmeta_format(const sdxl_genmeta *m, char **out, sdxl_err *e) {
    *out = NULL;
    for (size_t i = 0; i < m->n_extra; i++) {
        int id = known_key(m->extra[i].key, strlen(m->extra[i].key));
        if (!valid_key(m->extra[i].key) || (id >= 0 && field_present(m, id)))
            return sdxl_seterr(e, SDXL_ERR_ARG, "generation metadata: extra[%zu] key \"%s\" cannot be written", i,
                               m->extra[i].key);
    }
    sdxl_strbuf b = {0};
    if (m->prompt) sdxl_sb_str(&b, m->prompt);
    if (m->negative_prompt && m->negative_prompt[0]) {
        sdxl_sb_str(&b, "\nNegative prompt: ");
        sdxl_sb_str(&b, m->negative_prompt);
    }
    sdxl_strbuf p = {0};
    int first = 1;
    char num[64];
    if (m->steps > 0) snprintf(num, sizeof num, "%d", m->steps), put_pair(&p, &first, KNOWN[K_STEPS], num);
    if (m->sampler) put_pair(&p, &first, KNOWN[K_SAMPLER], m->sampler);
    if (m->schedule) put_pair(&p, &first, KNOWN[K_SCHEDULE], m->schedule);
    if (isfinite(m->cfg_scale)) fmt_double(num, sizeof num, m->cfg_scale), put_pair(&p, &first, KNOWN[K_CFG], num);
    if (m->seed >= 0) snprintf(num, sizeof num, "%lld", (long long)m->seed), put_pair(&p, &first, KNOWN[K_SEED], num);
    if (m->width > 0 && m->height > 0)
        snprintf(num, sizeof num, "%dx%d", m->width, m->height), put_pair(&p, &first, KNOWN[K_SIZE], num);
    if (m->model_hash) put_pair(&p, &first, KNOWN[K_MODEL_HASH], m->model_hash);
    if (m->model) put_pair(&p, &first, KNOWN[K_MODEL], m->model);
    if (isfinite(m->denoising_strength))
        fmt_double(num, sizeof num, m->denoising_strength), put_pair(&p, &first, KNOWN[K_DENOISE], num);
    if (m->clip_skip > 0) snprintf(num, sizeof num, "%d", m->clip_skip), put_pair(&p, &first, KNOWN[K_CLIP_SKIP], num);
    if (m->refiner) put_pair(&p, &first, KNOWN[K_REFINER], m->refiner);
    if (isfinite(m->refiner_switch))
        fmt_double(num, sizeof num, m->refiner_switch), put_pair(&p, &first, KNOWN[K_REFINER_SWITCH], num);
    for (size_t i = 0; i < m->n_extra; i++) put_pair(&p, &first, m->extra[i].key, m->extra[i].value);
    if (p.oom) b.oom = 1;
    if (p.n) {
        sdxl_sb_str(&b, "\n");
        sdxl_sb_put(&b, p.p, p.n);
    }
    free(p.p);
    /* A1111 strips the whole text: an empty prompt does not leave a leading newline. */
    if (!b.oom && b.p) {
        const char *s = b.p;
        size_t n = b.n;
        trim(&s, &n);
        memmove(b.p, s, n);
        b.p[n] = 0;
        b.n = n;
    }
    return sb_finish(&b, out, e);
}

/* ---- parsing ------------------------------------------------------------------------------ */

typedef struct pair {
    const char *k, *v;
    size_t kn, vn;
    size_t next;
} pair;

/* Tries the A1111 pair pattern at s[pos]; on success fills *p (value raw, quotes included). */
static int match_pair(const char *s, size_t n, size_t pos, pair *p) {
    size_t i = pos;
    while (i < n && is_space((unsigned char)s[i])) i++;
    if (i >= n || !is_word((unsigned char)s[i])) return 0;
    size_t k0 = i++;
    while (i < n && is_keych((unsigned char)s[i])) i++;
    if (n_chars(s + k0, i - k0) < 2 || i >= n || s[i] != ':') return 0;
    p->k = s + k0;
    p->kn = i - k0;
    i++;
    while (i < n && is_space((unsigned char)s[i])) i++;
    if (i < n && s[i] == '"') {
        size_t j = i + 1, body = 0;
        int ok = 0;
        while (j < n) {
            if (s[j] == '\\') {
                if (j + 1 >= n || s[j + 1] == '\n') break;
                j += 2, body++;
            } else if (s[j] == '"') {
                ok = body > 0;
                break;
            } else {
                j++, body++;
            }
        }
        if (ok && (j + 1 == n || s[j + 1] == ',')) {
            p->v = s + i;
            p->vn = j + 1 - i;
            p->next = j + 1 < n ? j + 2 : n;
            return 1;
        }
    }
    size_t j = i;
    while (j < n && s[j] != ',') j++;
    p->v = s + i;
    p->vn = j - i;
    p->next = j < n ? j + 1 : n;
    return 1;
}

static size_t count_pairs(const char *s, size_t n) {
    size_t c = 0, pos = 0;
    pair p;
    while (pos < n) {
        if (match_pair(s, n, pos, &p)) {
            c++;
            pos = p.next;
        } else {
            pos++;
        }
    }
    return c;
}

/* Value after A1111's unquote(): a "..." value is decoded as a JSON string when it is one. */
static char *unquote(const char *v, size_t vn) {
    if (vn >= 2 && v[0] == '"' && v[vn - 1] == '"') {
        sdxl_json *j = NULL;
        if (sdxl_json_parse(v, vn, NULL, "value", &j, NULL) == SDXL_OK && j->type == SDXL_JSON_STRING &&
            strlen(j->str) == j->len) {
            char *r = dupn(j->str, j->len);
            sdxl_json_free(j);
            return r;
        }
        sdxl_json_free(j);
        return dupn(v, vn);
    }
    while (vn && is_space((unsigned char)v[vn - 1])) vn--;
    return dupn(v, vn);
}

static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    size_t n = strlen(s);
    trim(&s, &n);
    if (!n || n > 30) return 0;
    char tmp[32];
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(tmp, &end, 10);
    if (errno || *end || end == tmp || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static int parse_f64(const char *s, double *out) {
    size_t n = strlen(s);
    trim(&s, &n);
    if (!n || n > 60) return 0;
    char tmp[64];
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    double v = strtod(tmp, &end);
    if (*end || end == tmp || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

static int parse_size(const char *s, int *w, int *h) {
    const char *x = strchr(s, 'x');
    if (!x || x == s || !x[1]) return 0;
    for (const char *c = s; *c; c++)
        if (c != x && !(*c >= '0' && *c <= '9')) return 0;
    int64_t a, b;
    char tmp[32];
    size_t an = (size_t)(x - s);
    if (an >= sizeof tmp) return 0;
    memcpy(tmp, s, an);
    tmp[an] = 0;
    if (!parse_i64(tmp, 1, INT_MAX, &a) || !parse_i64(x + 1, 1, INT_MAX, &b)) return 0;
    *w = (int)a;
    *h = (int)b;
    return 1;
}

/* Stores one pair; a known key whose value does not fit its type is kept in extra instead. */
static int assign(sdxl_genmeta *m, const char *k, size_t kn, char *v, sdxl_err *e) {
    int id = known_key(k, kn);
    int64_t i;
    double d;
    int ok = 1;
    char **sf = NULL;
    switch (id) {
    case K_STEPS: (ok = parse_i64(v, 1, INT_MAX, &i)) ? (m->steps = (int)i) : (m->steps = 0); break;
    case K_SEED: (ok = parse_i64(v, 0, INT64_MAX, &i)) ? (m->seed = i) : (m->seed = -1); break;
    case K_CLIP_SKIP: (ok = parse_i64(v, 1, INT_MAX, &i)) ? (m->clip_skip = (int)i) : (m->clip_skip = 0); break;
    case K_CFG: m->cfg_scale = (ok = parse_f64(v, &d)) ? d : NAN; break;
    case K_DENOISE: m->denoising_strength = (ok = parse_f64(v, &d)) ? d : NAN; break;
    case K_REFINER_SWITCH: m->refiner_switch = (ok = parse_f64(v, &d)) ? d : NAN; break;
    case K_SIZE:
        if (!(ok = parse_size(v, &m->width, &m->height))) m->width = m->height = 0;
        break;
    case K_SAMPLER: sf = &m->sampler; break;
    case K_SCHEDULE: sf = &m->schedule; break;
    case K_MODEL_HASH: sf = &m->model_hash; break;
    case K_MODEL: sf = &m->model; break;
    case K_REFINER: sf = &m->refiner; break;
    default: ok = 0; break;
    }
    if (sf) {
        free(*sf);
        *sf = v;
        extra_del(m, k, kn);
        return SDXL_OK;
    }
    int st = SDXL_OK;
    if (ok)
        extra_del(m, k, kn);
    else
        st = extra_put(m, k, kn, v, strlen(v), e);
    free(v);
    return st;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when malformed. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t k = c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c < 0xf5 ? 4 : 0;
    if (!k || avail < k) return 0;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < k; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return k;
}

/* Copy of s with malformed UTF-8 replaced by U+FFFD, or NULL when s is valid (or on OOM: *oom). */
static char *utf8_sanitize(const char *s, size_t n, size_t *out_n, int *oom) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n && utf8_len(u + i, n - i)) i += utf8_len(u + i, n - i);
    if (i == n) return NULL;
    sdxl_strbuf b = {0};
    sdxl_sb_put(&b, s, i);
    while (i < n) {
        size_t k = utf8_len(u + i, n - i);
        if (k) sdxl_sb_put(&b, s + i, k), i += k;
        else sdxl_sb_put(&b, "\xef\xbf\xbd", 3), i++;
    }
    if (b.oom) {
        free(b.p);
        *oom = 1;
        return NULL;
    }
    *out_n = b.n;
    return b.p;
}

/* Appends one trimmed prompt line the way A1111 joins them. */
static void join_line(sdxl_strbuf *b, const char *s, size_t n) {
    if (b->n) sdxl_sb_put(b, "\n", 1);
    sdxl_sb_put(b, s, n);
}

int sdxl_genmeta_parse(const char *text, size_t len, sdxl_genmeta *out, sdxl_err *e) {
    sdxl_genmeta_free(out);
    if (len > SDXL_GENMETA_MAX_TEXT)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "generation metadata: text is %zu bytes, limit %zu", len,
                           SDXL_GENMETA_MAX_TEXT);
    if (!text) len = 0;
    const char *s = text ? text : "";
    size_t n = len;
    int oom = 0;
    char *clean = utf8_sanitize(s, n, &n, &oom);
    if (oom) return sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
    if (clean) s = clean;
    trim(&s, &n);
    /* the last line is the parameter line when it holds at least 3 pairs */
    const char *last = s;
    size_t lastn = n;
    for (size_t i = n; i > 0; i--) {
        if (s[i - 1] == '\n') {
            last = s + i;
            lastn = n - i;
            break;
        }
    }
    size_t body = n;
    if (count_pairs(last, lastn) >= 3)
        body = (size_t)(last - s);
    else
        last = NULL;
    sdxl_strbuf pb = {0}, nb = {0};
    int neg = 0;
    size_t pos = 0;
    while (pos < body) {
        size_t eol = pos;
        while (eol < body && s[eol] != '\n') eol++;
        const char *ln = s + pos;
        size_t lnn = eol - pos;
        trim(&ln, &lnn);
        static const char NEG[] = "Negative prompt:";
        if (lnn >= sizeof NEG - 1 && !memcmp(ln, NEG, sizeof NEG - 1)) {
            neg = 1;
            ln += sizeof NEG - 1;
            lnn -= sizeof NEG - 1;
            trim(&ln, &lnn);
        }
        join_line(neg ? &nb : &pb, ln, lnn);
        pos = eol + 1;
    }
    int st = SDXL_OK;
    if (pb.oom || nb.oom) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
    if (!st) st = sb_finish(&pb, &out->prompt, e);
    else free(pb.p);
    if (!st) st = sb_finish(&nb, &out->negative_prompt, e);
    else free(nb.p);
    for (size_t p0 = 0; !st && last && p0 < lastn;) {
        pair p;
        if (!match_pair(last, lastn, p0, &p)) {
            p0++;
            continue;
        }
        p0 = p.next;
        char *v = unquote(p.v, p.vn);
        if (!v) st = sdxl_seterr(e, SDXL_ERR_NOMEM, "generation metadata: out of memory");
        else st = assign(out, p.k, p.kn, v, e);
    }
    free(clean);
    if (st) sdxl_genmeta_free(out);
    return st;
}

/* ---- JSON --------------------------------------------------------------------------------- */

static void json_key(sdxl_strbuf *b, int *first, const char *k) {
    sdxl_sb_str(b, *first ? "{" : ",");
    *first = 0;
    sdxl_sb_json(b, k);
    sdxl_sb_str(b, ":");
}

static void json_strf(sdxl_strbuf *b, int *first, const char *k, const char *v) {
    if (!v) return;
    json_key(b, first, k);
    sdxl_sb_json(b, v);
}

static void json_num(sdxl_strbuf *b, int *first, const char *k, double v) {
    if (!isfinite(v)) return;
    char num[64];
    fmt_double(num, sizeof num, v);
    json_key(b, first, k);
    sdxl_sb_str(b, num);
}

int sdxl_genmeta_to_json(const sdxl_genmeta *m, char **out, sdxl_err *e) {
    sdxl_strbuf b = {0};
    int first = 1;
    json_strf(&b, &first, "prompt", m->prompt);
    json_strf(&b, &first, "negative_prompt", m->negative_prompt);
    if (m->steps > 0) json_key(&b, &first, "steps"), sdxl_sb_printf(&b, "%d", m->steps);
    json_strf(&b, &first, "sampler", m->sampler);
    json_strf(&b, &first, "schedule", m->schedule);
    json_num(&b, &first, "cfg_scale", m->cfg_scale);
    if (m->seed >= 0) json_key(&b, &first, "seed"), sdxl_sb_printf(&b, "%lld", (long long)m->seed);
    if (m->width > 0 && m->height > 0) {
        json_key(&b, &first, "width"), sdxl_sb_printf(&b, "%d", m->width);
        json_key(&b, &first, "height"), sdxl_sb_printf(&b, "%d", m->height);
    }
    json_strf(&b, &first, "model", m->model);
    json_strf(&b, &first, "model_hash", m->model_hash);
    json_num(&b, &first, "denoising_strength", m->denoising_strength);
    if (m->clip_skip > 0) json_key(&b, &first, "clip_skip"), sdxl_sb_printf(&b, "%d", m->clip_skip);
    json_strf(&b, &first, "refiner", m->refiner);
    json_num(&b, &first, "refiner_switch", m->refiner_switch);
    if (m->n_extra) {
        json_key(&b, &first, "extra");
        int f2 = 1;
        for (size_t i = 0; i < m->n_extra; i++) json_strf(&b, &f2, m->extra[i].key, m->extra[i].value);
        sdxl_sb_str(&b, "}");
    }
    sdxl_sb_str(&b, first ? "{}" : "}");
    return sb_finish(&b, out, e);
}

static int jstr(const sdxl_json *obj, const char *key, char **field, sdxl_err *e) {
    const sdxl_json *v = sdxl_json_get(obj, key);
    if (!v || v->type == SDXL_JSON_NULL) return SDXL_OK;
    if (v->type != SDXL_JSON_STRING || strlen(v->str) != v->len)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "generation metadata: \"%s\" must be a string without NUL bytes", key);
    return sdxl_genmeta_set_str(field, v->str, e);
}

static int jint(const sdxl_json *obj, const char *key, int64_t lo, int64_t hi, int64_t *out, sdxl_err *e) {
    const sdxl_json *v = sdxl_json_get(obj, key);
    if (!v || v->type == SDXL_JSON_NULL) return SDXL_OK;
    if (v->type != SDXL_JSON_NUMBER || !v->is_int || v->integer < lo || v->integer > hi)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "generation metadata: \"%s\" must be an integer in [%lld, %lld]", key,
                           (long long)lo, (long long)hi);
    *out = v->integer;
    return SDXL_OK;
}

static int jnum(const sdxl_json *obj, const char *key, double *out, sdxl_err *e) {
    const sdxl_json *v = sdxl_json_get(obj, key);
    if (!v || v->type == SDXL_JSON_NULL) return SDXL_OK;
    if (v->type != SDXL_JSON_NUMBER || !isfinite(v->number))
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "generation metadata: \"%s\" must be a finite number", key);
    *out = v->number;
    return SDXL_OK;
}

int sdxl_genmeta_from_json(const sdxl_json *obj, sdxl_genmeta *out, sdxl_err *e) {
    sdxl_genmeta_free(out);
    if (!obj || obj->type != SDXL_JSON_OBJECT)
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "generation metadata: JSON must be an object");
    int64_t steps = 0, seed = -1, w = 0, h = 0, cs = 0;
    int st;
    if ((st = jstr(obj, "prompt", &out->prompt, e)) || (st = jstr(obj, "negative_prompt", &out->negative_prompt, e)) ||
        (st = jstr(obj, "sampler", &out->sampler, e)) || (st = jstr(obj, "schedule", &out->schedule, e)) ||
        (st = jstr(obj, "model", &out->model, e)) || (st = jstr(obj, "model_hash", &out->model_hash, e)) ||
        (st = jstr(obj, "refiner", &out->refiner, e)) || (st = jint(obj, "steps", 1, INT_MAX, &steps, e)) ||
        (st = jint(obj, "seed", 0, INT64_MAX, &seed, e)) || (st = jint(obj, "width", 1, INT_MAX, &w, e)) ||
        (st = jint(obj, "height", 1, INT_MAX, &h, e)) || (st = jint(obj, "clip_skip", 1, INT_MAX, &cs, e)) ||
        (st = jnum(obj, "cfg_scale", &out->cfg_scale, e)) ||
        (st = jnum(obj, "denoising_strength", &out->denoising_strength, e)) ||
        (st = jnum(obj, "refiner_switch", &out->refiner_switch, e)))
        goto fail;
    out->steps = (int)steps;
    out->seed = seed;
    out->width = (int)w;
    out->height = (int)h;
    out->clip_skip = (int)cs;
    const sdxl_json *x = sdxl_json_get(obj, "extra");
    if (x && x->type != SDXL_JSON_NULL) {
        if (x->type != SDXL_JSON_OBJECT) {
            st = sdxl_seterr(e, SDXL_ERR_FORMAT, "generation metadata: \"extra\" must be an object");
            goto fail;
        }
        for (size_t i = 0; i < x->len; i++) {
            const sdxl_json *v = &x->items[i];
            if (v->type != SDXL_JSON_STRING || strlen(v->str) != v->len) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "generation metadata: extra.\"%s\" must be a string", x->keys[i]);
                goto fail;
            }
            if (!valid_key(x->keys[i]) || strlen(x->keys[i]) != x->key_lens[i]) {
                st = sdxl_seterr(e, SDXL_ERR_FORMAT, "generation metadata: extra key \"%s\" is not an A1111 key",
                                 x->keys[i]);
                goto fail;
            }
            if ((st = extra_put(out, x->keys[i], x->key_lens[i], v->str, v->len, e))) goto fail;
        }
    }
    return SDXL_OK;
fail:
    sdxl_genmeta_free(out);
    return st;
}
