/* CLIP BPE tokenizer. Vocabulary order as openai CLIP builds it: the 256 byte symbols (bytes_to_unicode
 * order), the same with "</w>", one entry per merge line, then <|startoftext|> and <|endoftext|>.
 * BPE works on vocabulary ids: each merge (a, b) has a rank and a result id. */
#include "text/tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <unictype.h>
#include <zlib.h>

#include "text/unicode.h"
#include "text/vocab_blob.h"

#define N_MERGES (49152 - 256 - 2)
#define STR_SLOTS (1u << 17)
#define PAIR_SLOTS (1u << 17)
#define CACHE_SLOTS (1u << 14)
#define CACHE_MAX_TOKEN 64 /* longer words are rare; they are encoded every time */

typedef struct pair_slot {
    uint64_t key; /* (a << 32 | b) + 1, 0 = empty */
    int32_t rank;
} pair_slot;

typedef struct cache_slot {
    char *word; /* NULL = empty */
    size_t len;
    int32_t *ids;
    int n;
} cache_slot;

struct sdxl_tokenizer {
    char *strings;                  /* all vocabulary strings, NUL-separated */
    uint32_t offs[SDXL_TOK_VOCAB];  /* start of each id's string in strings */
    int32_t byte_id[256];           /* id of the byte symbol for each byte value */
    int32_t *str_slots;             /* string -> id hash (id + 1, 0 = empty), last duplicate wins */
    pair_slot *pairs;               /* (a, b) -> merge rank */
    int32_t merge_result[N_MERGES]; /* id of a+b for each rank */
    cache_slot *cache;
    size_t cache_used;
    size_t max_bytes;
};

void sdxl_tok_ids_free(sdxl_tok_ids *v) {
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

int sdxl_tok_ids_push(sdxl_tok_ids *v, int32_t id, sdxl_err *e) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 128;
        int32_t *p = nc < SIZE_MAX / sizeof(int32_t) ? realloc(v->ids, nc * sizeof(int32_t)) : NULL;
        if (!p) return sdxl_seterr(e, SDXL_ERR_NOMEM, "token ids: out of memory");
        v->ids = p;
        v->cap = nc;
    }
    v->ids[v->n++] = id;
    return SDXL_OK;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int32_t str_lookup(const sdxl_tokenizer *t, const char *s, size_t n) {
    for (uint64_t h = hash_bytes(s, n);; h++) {
        int32_t v = t->str_slots[h & (STR_SLOTS - 1)];
        if (!v) return -1;
        const char *w = t->strings + t->offs[v - 1];
        if (strlen(w) == n && !memcmp(w, s, n)) return v - 1;
    }
}

static void str_insert(sdxl_tokenizer *t, int32_t id) {
    const char *s = t->strings + t->offs[id];
    size_t n = strlen(s);
    for (uint64_t h = hash_bytes(s, n);; h++) {
        int32_t *slot = &t->str_slots[h & (STR_SLOTS - 1)];
        if (*slot) {
            const char *w = t->strings + t->offs[*slot - 1];
            if (strcmp(w, s)) continue;
        }
        *slot = id + 1;
        return;
    }
}

static int32_t pair_rank(const sdxl_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (uint64_t h = mix64(key);; h++) {
        const pair_slot *p = &t->pairs[h & (PAIR_SLOTS - 1)];
        if (!p->key) return -1;
        if (p->key == key) return p->rank;
    }
}

static void pair_insert(sdxl_tokenizer *t, int32_t a, int32_t b, int32_t rank) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (uint64_t h = mix64(key);; h++) {
        pair_slot *p = &t->pairs[h & (PAIR_SLOTS - 1)];
        if (p->key && p->key != key) continue;
        if (!p->key) { /* python's dict keeps the first rank of a repeated merge line */
            p->key = key;
            p->rank = rank;
        }
        return;
    }
}

/* gunzips the embedded merges file. */
static int inflate_vocab(char **out, size_t *out_len, sdxl_err *e) {
    size_t cap = 2u << 20, len = 0;
    char *buf = malloc(cap);
    if (!buf) return sdxl_seterr(e, SDXL_ERR_NOMEM, "tokenizer vocabulary: out of memory");
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
        free(buf);
        return sdxl_seterr(e, SDXL_ERR_INTERNAL, "tokenizer vocabulary: zlib init failed");
    }
    z.next_in = (unsigned char *)sdxl_vocab_gz;
    z.avail_in = (uInt)sdxl_vocab_gz_size();
    int zr;
    do {
        if (len == cap) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                inflateEnd(&z);
                free(buf);
                return sdxl_seterr(e, SDXL_ERR_NOMEM, "tokenizer vocabulary: out of memory");
            }
            buf = p;
            cap *= 2;
        }
        z.next_out = (unsigned char *)buf + len;
        z.avail_out = (uInt)(cap - len);
        zr = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
    } while (zr == Z_OK);
    inflateEnd(&z);
    if (zr != Z_STREAM_END) {
        free(buf);
        return sdxl_seterr(e, SDXL_ERR_FORMAT, "tokenizer vocabulary: corrupt gzip data (zlib %d)", zr);
    }
    *out = buf;
    *out_len = len;
    return SDXL_OK;
}

/* openai CLIP bytes_to_unicode: printable Latin-1 bytes map to themselves, the others to U+0100+n. */
static void bytes_to_unicode(uint32_t bs[256], uint32_t cs[256]) {
    int n = 0, k = 0;
    for (uint32_t b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
            bs[k] = b;
            cs[k++] = b;
        }
    for (uint32_t b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
            bs[k] = b;
            cs[k++] = 256 + (uint32_t)n++;
        }
}

int sdxl_tokenizer_new(sdxl_tokenizer **out, sdxl_err *e) {
    *out = NULL;
    sdxl_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return sdxl_seterr(e, SDXL_ERR_NOMEM, "tokenizer: out of memory");
    t->max_bytes = SDXL_TOK_MAX_BYTES_DEFAULT;
    char *text = NULL;
    size_t text_len = 0;
    int rc = inflate_vocab(&text, &text_len, e);
    if (rc) {
        free(t);
        return rc;
    }
    /* strings: 512 byte symbols (<= 2+4 bytes each), merges (<= line length each), 2 specials */
    size_t cap = 512 * 8 + text_len + 64, used = 0;
    t->strings = malloc(cap);
    t->str_slots = calloc(STR_SLOTS, sizeof(int32_t));
    t->pairs = calloc(PAIR_SLOTS, sizeof(pair_slot));
    t->cache = calloc(CACHE_SLOTS, sizeof(cache_slot));
    if (!t->strings || !t->str_slots || !t->pairs || !t->cache) {
        free(text);
        sdxl_tokenizer_free(t);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "tokenizer: out of memory");
    }
    uint32_t bs[256], cs[256];
    bytes_to_unicode(bs, cs);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 256; i++) {
            int id = w * 256 + i;
            t->offs[id] = (uint32_t)used;
            used += (size_t)sdxl_utf8_put(cs[i], (unsigned char *)t->strings + used);
            if (w) {
                memcpy(t->strings + used, "</w>", 4);
                used += 4;
            } else {
                t->byte_id[bs[i]] = id;
            }
            t->strings[used++] = 0;
        }
    for (int id = 0; id < 512; id++) str_insert(t, id);

    /* merges: lines 1 .. N_MERGES of the file (line 0 is the "#version" header) */
    char *p = text, *end = text + text_len;
    char *nl = memchr(p, '\n', (size_t)(end - p));
    p = nl ? nl + 1 : end;
    for (int r = 0; r < N_MERGES; r++) {
        nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
        char *le = nl ? nl : end;
        char *sp = p < le ? memchr(p, ' ', (size_t)(le - p)) : NULL;
        if (!sp || sp == p || sp + 1 >= le || memchr(sp + 1, ' ', (size_t)(le - sp - 1))) {
            free(text);
            sdxl_tokenizer_free(t);
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "tokenizer vocabulary: merge line %d is not \"a b\"", r + 1);
        }
        int32_t a = str_lookup(t, p, (size_t)(sp - p));
        int32_t b = str_lookup(t, sp + 1, (size_t)(le - sp - 1));
        if (a < 0 || b < 0) {
            free(text);
            sdxl_tokenizer_free(t);
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "tokenizer vocabulary: merge line %d uses an unknown symbol", r + 1);
        }
        int32_t id = 512 + r;
        t->offs[id] = (uint32_t)used;
        memcpy(t->strings + used, p, (size_t)(sp - p));
        used += (size_t)(sp - p);
        memcpy(t->strings + used, sp + 1, (size_t)(le - sp - 1));
        used += (size_t)(le - sp - 1);
        t->strings[used++] = 0;
        str_insert(t, id);
        pair_insert(t, a, b, r);
        p = nl ? nl + 1 : end;
    }
    free(text);
    const char *specials[2] = {"<|startoftext|>", "<|endoftext|>"};
    for (int k = 0; k < 2; k++) {
        t->offs[SDXL_TOK_BOS + k] = (uint32_t)used;
        memcpy(t->strings + used, specials[k], strlen(specials[k]) + 1);
        used += strlen(specials[k]) + 1;
        str_insert(t, SDXL_TOK_BOS + k);
    }
    /* a merge's result is the id its string maps to (the last entry when a string repeats) */
    for (int r = 0; r < N_MERGES; r++) {
        const char *s = t->strings + t->offs[512 + r];
        t->merge_result[r] = str_lookup(t, s, strlen(s));
    }
    *out = t;
    return SDXL_OK;
}

static void cache_clear(sdxl_tokenizer *t) {
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        free(t->cache[i].word);
        free(t->cache[i].ids);
    }
    memset(t->cache, 0, CACHE_SLOTS * sizeof(cache_slot));
    t->cache_used = 0;
}

void sdxl_tokenizer_free(sdxl_tokenizer *t) {
    if (!t) return;
    if (t->cache) cache_clear(t);
    free(t->cache);
    free(t->strings);
    free(t->str_slots);
    free(t->pairs);
    free(t);
}

void sdxl_tokenizer_set_max_bytes(sdxl_tokenizer *t, size_t max_bytes) {
    t->max_bytes = max_bytes ? max_bytes : SDXL_TOK_MAX_BYTES_DEFAULT;
}

size_t sdxl_tokenizer_max_bytes(const sdxl_tokenizer *t) { return t->max_bytes; }

const char *sdxl_tokenizer_piece(const sdxl_tokenizer *t, int32_t id) {
    if (id < 0 || id >= SDXL_TOK_VOCAB) return NULL;
    return t->strings + t->offs[id];
}

int sdxl_tokenizer_piece_text(const sdxl_tokenizer *t, int32_t id, char *buf, size_t cap) {
    const char *s = sdxl_tokenizer_piece(t, id);
    if (!s) return -1;
    if (id >= SDXL_TOK_BOS) {
        int n = (int)strlen(s);
        if (cap) {
            size_t k = (size_t)n < cap - 1 ? (size_t)n : cap - 1;
            memcpy(buf, s, k);
            buf[k] = 0;
        }
        return n;
    }
    sdxl_u32 u = {0};
    size_t len = strlen(s);
    if (len >= 4 && !memcmp(s + len - 4, "</w>", 4)) len -= 4;
    if (sdxl_utf8_decode(s, len, "piece", &u, NULL)) return -1;
    uint32_t bs[256], cs[256];
    bytes_to_unicode(bs, cs);
    int n = 0;
    for (size_t i = 0; i < u.n; i++) {
        int b = -1;
        for (int k = 0; k < 256; k++)
            if (cs[k] == u.s[i]) b = (int)bs[k];
        if (b < 0) continue;
        if ((size_t)n + 1 < cap) buf[n] = (char)b;
        n++;
    }
    if (cap) buf[(size_t)n < cap ? (size_t)n : cap - 1] = 0;
    sdxl_u32_free(&u);
    return n;
}

/* ---- BPE ---- */

typedef struct heap_item {
    int32_t rank;
    int32_t pos; /* index of the left symbol */
} heap_item;

static int item_less(heap_item a, heap_item b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(heap_item *h, size_t *n, heap_item x) {
    size_t i = (*n)++;
    while (i && item_less(x, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

static heap_item heap_pop(heap_item *h, size_t *n) {
    heap_item top = h[0], x = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && item_less(h[c + 1], h[c])) c++;
        if (!item_less(h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = x;
    return top;
}

/* CLIP's bpe(): repeatedly merge every occurrence, left to right, of the lowest-ranked adjacent pair.
 * A heap keyed (rank, position) with a linked list of symbols gives the same result in O(n log n);
 * all entries of one rank are applied as one pass, as the reference does. */
static int bpe_word(const sdxl_tokenizer *t, const unsigned char *w, size_t n, sdxl_tok_ids *out, sdxl_err *e) {
    if (n == 1) return sdxl_tok_ids_push(out, t->byte_id[w[0]] + 256, e);
    int32_t *sym = malloc(n * sizeof(int32_t));
    int32_t *next = malloc(n * sizeof(int32_t));
    int32_t *prev = malloc(n * sizeof(int32_t));
    heap_item *heap = malloc(4 * n * sizeof(heap_item));
    heap_item *batch = malloc(4 * n * sizeof(heap_item));
    int rc = SDXL_OK;
    if (!sym || !next || !prev || !heap || !batch) {
        rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "bpe: out of memory (word of %zu bytes)", n);
        goto done;
    }
    size_t hn = 0, hcap = 4 * n;
    for (size_t i = 0; i < n; i++) {
        sym[i] = t->byte_id[w[i]] + (i == n - 1 ? 256 : 0);
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t r = pair_rank(t, sym[i], sym[i + 1]);
        if (r >= 0) heap_push(heap, &hn, (heap_item){r, (int32_t)i});
    }
    while (hn) {
        int32_t rank = heap[0].rank;
        size_t bn = 0;
        while (hn && heap[0].rank == rank) batch[bn++] = heap_pop(heap, &hn);
        for (size_t k = 0; k < bn; k++) {
            int32_t i = batch[k].pos, j = sym[i] >= 0 ? next[i] : -1;
            if (j < 0 || pair_rank(t, sym[i], sym[j]) != rank) continue; /* stale entry */
            sym[i] = t->merge_result[rank];
            sym[j] = -1;
            next[i] = next[j];
            if (next[j] >= 0) prev[next[j]] = i;
            if (hn + 2 > hcap) { /* each merge adds at most 2 entries; n-1 merges at most */
                rc = sdxl_seterr(e, SDXL_ERR_INTERNAL, "bpe: heap overflow");
                goto done;
            }
            int32_t r;
            if (prev[i] >= 0 && (r = pair_rank(t, sym[prev[i]], sym[i])) >= 0)
                heap_push(heap, &hn, (heap_item){r, prev[i]});
            if (next[i] >= 0 && (r = pair_rank(t, sym[i], sym[next[i]])) >= 0)
                heap_push(heap, &hn, (heap_item){r, i});
        }
    }
    for (int32_t i = 0; i >= 0 && !rc; i = next[i]) rc = sdxl_tok_ids_push(out, sym[i], e);
done:
    free(sym);
    free(next);
    free(prev);
    free(heap);
    free(batch);
    return rc;
}

static int bpe_cached(sdxl_tokenizer *t, const unsigned char *w, size_t n, sdxl_tok_ids *out, sdxl_err *e) {
    if (n > CACHE_MAX_TOKEN) return bpe_word(t, w, n, out, e);
    uint64_t h = hash_bytes((const char *)w, n);
    cache_slot *slot = NULL;
    for (size_t k = 0;; k++) {
        cache_slot *c = &t->cache[(h + k) & (CACHE_SLOTS - 1)];
        if (!c->word) {
            slot = c;
            break;
        }
        if (c->len == n && !memcmp(c->word, w, n)) {
            for (int i = 0; i < c->n; i++) {
                int rc = sdxl_tok_ids_push(out, c->ids[i], e);
                if (rc) return rc;
            }
            return SDXL_OK;
        }
    }
    size_t start = out->n;
    int rc = bpe_word(t, w, n, out, e);
    if (rc) return rc;
    if (t->cache_used >= CACHE_SLOTS / 2) { /* keep probes short: start over when half full */
        cache_clear(t);
        for (size_t k = 0;; k++) {
            slot = &t->cache[(h + k) & (CACHE_SLOTS - 1)];
            if (!slot->word) break;
        }
    }
    size_t cnt = out->n - start;
    slot->word = malloc(n);
    slot->ids = malloc(cnt * sizeof(int32_t));
    if (!slot->word || !slot->ids) { /* the cache is an optimisation: drop the entry */
        free(slot->word);
        free(slot->ids);
        slot->word = NULL;
        slot->ids = NULL;
        return SDXL_OK;
    }
    memcpy(slot->word, w, n);
    memcpy(slot->ids, out->ids + start, cnt * sizeof(int32_t));
    slot->len = n;
    slot->n = (int)cnt;
    t->cache_used++;
    return SDXL_OK;
}

/* ---- pre-tokenisation: the reference regex ---- */

static int is_letter(uint32_t c) { return uc_is_general_category(c, UC_CATEGORY_L); }
static int is_number(uint32_t c) { return uc_is_general_category(c, UC_CATEGORY_N); }

static int match_ascii(const uint32_t *s, size_t n, size_t i, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= n || s[i + k] != (unsigned char)lit[k]) return 0;
    return (int)k;
}

/* Splits clean text like `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|
 * [^\s\p{L}\p{N}]+` and BPE-encodes each piece. */
static int encode_clean(sdxl_tokenizer *t, const sdxl_u32 *u, int flags, sdxl_tok_ids *out, sdxl_err *e) {
    static const char *const CONTRACTIONS[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    const uint32_t *s = u->s;
    size_t n = u->n, i = 0;
    unsigned char *buf = malloc(n * 4 + 1);
    if (!buf) return sdxl_seterr(e, SDXL_ERR_NOMEM, "tokenizer: out of memory");
    int rc = SDXL_OK;
    while (i < n && !rc) {
        size_t j = i;
        int k;
        if (sdxl_u32_is_space(s[i])) {
            i++;
            continue;
        }
        if (!(flags & SDXL_TOK_LITERAL_SPECIAL) && (k = match_ascii(s, n, i, "<|startoftext|>"))) {
            rc = sdxl_tok_ids_push(out, SDXL_TOK_BOS, e);
            i += (size_t)k;
            continue;
        }
        if (!(flags & SDXL_TOK_LITERAL_SPECIAL) && (k = match_ascii(s, n, i, "<|endoftext|>"))) {
            rc = sdxl_tok_ids_push(out, SDXL_TOK_EOS, e);
            i += (size_t)k;
            continue;
        }
        k = 0;
        if (s[i] == '\'')
            for (size_t c = 0; c < sizeof CONTRACTIONS / sizeof CONTRACTIONS[0] && !k; c++)
                k = match_ascii(s, n, i, CONTRACTIONS[c]);
        if (k)
            j = i + (size_t)k;
        else if (is_letter(s[i]))
            while (j < n && is_letter(s[j])) j++;
        else if (is_number(s[i]))
            j = i + 1;
        else
            while (j < n && !sdxl_u32_is_space(s[j]) && !is_letter(s[j]) && !is_number(s[j])) j++;
        size_t len = 0;
        for (size_t q = i; q < j; q++) len += (size_t)sdxl_utf8_put(s[q], buf + len);
        rc = bpe_cached(t, buf, len, out, e);
        i = j;
    }
    free(buf);
    return rc;
}

int sdxl_tokenizer_normalize(const sdxl_tokenizer *t, const char *text, size_t len, char **out, size_t *out_len,
                             sdxl_err *e) {
    if (len > t->max_bytes)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "prompt: %zu bytes is over the limit of %zu bytes", len, t->max_bytes);
    sdxl_u32 u = {0};
    int rc = sdxl_utf8_decode(text, len, "prompt", &u, e);
    if (!rc) rc = sdxl_clip_clean(&u, e);
    if (!rc) rc = sdxl_utf8_encode(u.s, u.n, out, out_len, e);
    sdxl_u32_free(&u);
    return rc;
}

int sdxl_tokenizer_encode(sdxl_tokenizer *t, const char *text, size_t len, int flags, sdxl_tok_ids *out,
                          sdxl_err *e) {
    if (len > t->max_bytes)
        return sdxl_seterr(e, SDXL_ERR_LIMIT, "prompt: %zu bytes is over the limit of %zu bytes", len, t->max_bytes);
    sdxl_u32 u = {0};
    int rc = sdxl_utf8_decode(text, len, "prompt", &u, e);
    if (!rc) rc = sdxl_clip_clean(&u, e);
    if (!rc) rc = encode_clean(t, &u, flags, out, e);
    sdxl_u32_free(&u);
    return rc;
}

void sdxl_tokenizer_window(const int32_t *ids, size_t n, int32_t pad_id, int32_t out[SDXL_TOK_CTX]) {
    size_t k = n < SDXL_TOK_CHUNK ? n : SDXL_TOK_CHUNK;
    out[0] = SDXL_TOK_BOS;
    for (size_t i = 0; i < k; i++) out[1 + i] = ids[i];
    out[1 + k] = SDXL_TOK_EOS;
    for (size_t i = k + 2; i < SDXL_TOK_CTX; i++) out[i] = pad_id;
}

int sdxl_tokenizer_encode77(sdxl_tokenizer *t, const char *text, size_t len, int flags, int32_t pad_id,
                            int32_t out[SDXL_TOK_CTX], size_t *n_tokens, sdxl_err *e) {
    sdxl_tok_ids ids = {0};
    int rc = sdxl_tokenizer_encode(t, text, len, flags, &ids, e);
    if (!rc) {
        sdxl_tokenizer_window(ids.ids, ids.n, pad_id, out);
        if (n_tokens) *n_tokens = ids.n;
    }
    sdxl_tok_ids_free(&ids);
    return rc;
}
