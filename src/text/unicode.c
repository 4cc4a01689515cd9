/* Text clean-up in front of the CLIP tokenizer. The order of steps and each rule follow ftfy 6.3.1
 * (fix_text with its default TextFixerConfig), Python 3.11 html.unescape and openai CLIP's
 * simple_tokenizer; libunistring supplies NFC/NFKC, case mapping and character classes. */
#include "text/unicode.h"

#include <stdlib.h>
#include <string.h>
#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>

void sdxl_u32_free(sdxl_u32 *t) {
    free(t->s);
    t->s = NULL;
    t->n = t->cap = 0;
}

int sdxl_u32_reserve(sdxl_u32 *t, size_t cap, sdxl_err *e) {
    if (cap <= t->cap) return SDXL_OK;
    size_t nc = t->cap ? t->cap : 64;
    while (nc < cap) {
        if (nc > SIZE_MAX / 2 / sizeof(uint32_t)) return sdxl_seterr(e, SDXL_ERR_NOMEM, "text buffer: size overflow");
        nc *= 2;
    }
    uint32_t *p = realloc(t->s, nc * sizeof(uint32_t));
    if (!p) return sdxl_seterr(e, SDXL_ERR_NOMEM, "text buffer: out of memory (%zu code points)", nc);
    t->s = p;
    t->cap = nc;
    return SDXL_OK;
}

int sdxl_u32_push(sdxl_u32 *t, uint32_t c, sdxl_err *e) {
    if (t->n == t->cap) {
        int rc = sdxl_u32_reserve(t, t->n + 1, e);
        if (rc) return rc;
    }
    t->s[t->n++] = c;
    return SDXL_OK;
}

static int push_utf8(sdxl_u32 *t, const char *s, sdxl_err *e) {
    sdxl_u32 tmp = {0};
    int rc = sdxl_utf8_decode(s, strlen(s), "table", &tmp, e);
    for (size_t i = 0; rc == SDXL_OK && i < tmp.n; i++) rc = sdxl_u32_push(t, tmp.s[i], e);
    sdxl_u32_free(&tmp);
    return rc;
}

int sdxl_utf8_decode(const char *str, size_t len, const char *what, sdxl_u32 *out, sdxl_err *e) {
    const unsigned char *s = (const unsigned char *)str;
    out->n = 0;
    int rc = sdxl_u32_reserve(out, len + 1, e);
    if (rc) return rc;
    size_t i = 0;
    while (i < len) {
        uint32_t c = s[i];
        int k;
        uint32_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            out->s[out->n++] = c;
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
            c &= 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F; /* surrogates are not scalar values */
            c &= 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
            c &= 0x07;
        } else {
            return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: invalid UTF-8 at byte offset %zu (byte 0x%02X)", what, i, s[i]);
        }
        for (int j = 1; j <= k; j++) {
            if (i + (size_t)j >= len)
                return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: invalid UTF-8 at byte offset %zu (truncated sequence)",
                                   what, i);
            unsigned b = s[i + (size_t)j];
            if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF))
                return sdxl_seterr(e, SDXL_ERR_FORMAT, "%s: invalid UTF-8 at byte offset %zu (byte 0x%02X)", what,
                                   i + (size_t)j, b);
            c = (c << 6) | (b & 0x3F);
        }
        out->s[out->n++] = c;
        i += (size_t)k + 1;
    }
    return SDXL_OK;
}

int sdxl_utf8_put(uint32_t c, unsigned char b[4]) {
    if (c < 0x80) {
        b[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        b[0] = (unsigned char)(0xC0 | (c >> 6));
        b[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (c >> 12));
        b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    b[0] = (unsigned char)(0xF0 | (c >> 18));
    b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    b[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

int sdxl_utf8_encode(const uint32_t *s, size_t n, char **out, size_t *out_len, sdxl_err *e) {
    if (n > (SIZE_MAX - 1) / 4) return sdxl_seterr(e, SDXL_ERR_NOMEM, "text: too long to encode");
    char *buf = malloc(n * 4 + 1);
    if (!buf) return sdxl_seterr(e, SDXL_ERR_NOMEM, "text: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)sdxl_utf8_put(s[i], (unsigned char *)buf + k);
    buf[k] = 0;
    *out = buf;
    if (out_len) *out_len = k;
    return SDXL_OK;
}

int sdxl_u32_is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- single-byte codecs ---- */

/* windows-1252 bytes 0x80..0x9F; the five bytes it leaves undefined decode to the same C1 code point
 * (ftfy's "sloppy-windows-1252"). */
static const uint16_t CP1252_HIGH[32] = {
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
};

/* Byte of c in sloppy windows-1252, or -1. */
static int cp1252_byte(uint32_t c) {
    if (c < 0x80 || (c >= 0xA0 && c <= 0xFF)) return (int)c;
    for (int i = 0; i < 32; i++)
        if (CP1252_HIGH[i] == c) return 0x80 + i;
    return -1;
}

/* Length of a valid UTF-8 sequence in bytes b[0..n), or 0. */
static int utf8_seq(const int *b, size_t n, uint32_t *cp) {
    if (n < 1 || b[0] < 0xC2 || b[0] > 0xF4) return 0;
    int k = b[0] <= 0xDF ? 1 : b[0] <= 0xEF ? 2 : 3;
    if ((size_t)k >= n) return 0;
    uint32_t c = (uint32_t)b[0] & (k == 1 ? 0x1F : k == 2 ? 0x0F : 0x07);
    for (int j = 1; j <= k; j++) {
        int lo = 0x80, hi = 0xBF;
        if (j == 1 && b[0] == 0xE0) lo = 0xA0;
        if (j == 1 && b[0] == 0xED) hi = 0x9F;
        if (j == 1 && b[0] == 0xF0) lo = 0x90;
        if (j == 1 && b[0] == 0xF4) hi = 0x8F;
        if (b[j] < lo || b[j] > hi) return 0;
        c = (c << 6) | ((uint32_t)b[j] & 0x3F);
    }
    *cp = c;
    return k + 1;
}

/* Re-decodes the whole text as UTF-8 after encoding it with latin-1 (latin1 = 1) or sloppy
 * windows-1252. Returns 1 and fills out when every byte lands in a valid UTF-8 text. */
static int whole_text_utf8(const sdxl_u32 *t, int latin1, int *bytes, sdxl_u32 *out, sdxl_err *e, int *rc) {
    *rc = SDXL_OK;
    for (size_t i = 0; i < t->n; i++) {
        int b = latin1 ? (t->s[i] <= 0xFF ? (int)t->s[i] : -1) : cp1252_byte(t->s[i]);
        if (b < 0) return 0;
        bytes[i] = b;
    }
    out->n = 0;
    if ((*rc = sdxl_u32_reserve(out, t->n + 1, e))) return 0;
    for (size_t i = 0; i < t->n;) {
        uint32_t cp;
        if (bytes[i] < 0x80) {
            out->s[out->n++] = (uint32_t)bytes[i++];
            continue;
        }
        int k = utf8_seq(bytes + i, t->n - i, &cp);
        if (!k) return 0;
        out->s[out->n++] = cp;
        i += (size_t)k;
    }
    return 1;
}

/* A mojibake sequence at t[i]: characters whose windows-1252 bytes form one multi-byte UTF-8 sequence. */
static int mojibake_at(const sdxl_u32 *t, size_t i, uint32_t *cp) {
    int b[4];
    size_t n = 0;
    while (n < 4 && i + n < t->n) {
        int x = cp1252_byte(t->s[i + n]);
        if (x < 0 || (n > 0 && (x < 0x80 || x > 0xBF))) break;
        b[n++] = x;
    }
    return utf8_seq(b, n, cp);
}

/* One step of ftfy's fix_encoding: whole-text latin-1 / windows-1252 re-decoding, else fixing each
 * run of embedded UTF-8 mojibake (decode_inconsistent_utf8), else latin-1 C1 controls as 1252. */
static int fix_encoding_step(const sdxl_u32 *t, sdxl_u32 *out, int *changed, sdxl_err *e) {
    *changed = 0;
    int ascii = 1, bad = 0;
    uint32_t cp;
    for (size_t i = 0; i < t->n; i++) {
        if (t->s[i] >= 0x80) ascii = 0;
        if (!bad && t->s[i] >= 0x80 && mojibake_at(t, i, &cp)) bad = 1;
    }
    if (ascii || !bad) return SDXL_OK;
    int *bytes = malloc((t->n ? t->n : 1) * sizeof(int));
    if (!bytes) return sdxl_seterr(e, SDXL_ERR_NOMEM, "ftfy: out of memory");
    int rc;
    for (int latin1 = 1; latin1 >= 0; latin1--) {
        if (whole_text_utf8(t, latin1, bytes, out, e, &rc)) {
            free(bytes);
            *changed = 1;
            return SDXL_OK;
        }
        if (rc) {
            free(bytes);
            return rc;
        }
    }
    free(bytes);
    out->n = 0;
    for (size_t i = 0; i < t->n;) {
        int k = t->s[i] >= 0x80 ? mojibake_at(t, i, &cp) : 0;
        if ((rc = sdxl_u32_push(out, k ? cp : t->s[i], e))) return rc;
        i += k ? (size_t)k : 1;
    }
    *changed = 1;
    return SDXL_OK;
}

/* ---- HTML entities ---- */

/* Entity whose name equals s[0..n) (ASCII compare against UTF-32), or NULL. */
static const char *entity_find(const sdxl_html_entity *tab, size_t tab_n, const uint32_t *s, size_t n) {
    size_t lo = 0, hi = tab_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const unsigned char *name = (const unsigned char *)tab[mid].name;
        int cmp = 0;
        size_t i = 0;
        for (; i < n; i++) {
            if (!name[i]) {
                cmp = 1;
                break;
            }
            if (s[i] != name[i]) {
                cmp = s[i] < name[i] ? -1 : 1;
                break;
            }
        }
        if (!cmp && i == n && name[n]) cmp = -1;
        if (!cmp) return tab[mid].value;
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static int is_ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int is_ascii_alnum(uint32_t c) { return is_ascii_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'); }
static int hexval(uint32_t c) { return is_ascii_digit(c) ? (int)(c - '0') : (int)((c | 0x20) - 'a' + 10); }

/* Python html._replace_charref for a numeric reference value. Returns the code point or 0 for "" */
static uint32_t charref_value(uint64_t num) {
    if (num == 0x00) return 0xFFFD;
    if (num == 0x0D) return '\r';
    if (num >= 0x80 && num <= 0x9F) return CP1252_HIGH[num - 0x80];
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return 0xFFFD;
    if ((num >= 0x1 && num <= 0x8) || (num >= 0xE && num <= 0x1F) || (num >= 0x7F && num <= 0x9F) ||
        (num >= 0xFDD0 && num <= 0xFDEF) || num == 0xB || (num & 0xFFFE) == 0xFFFE)
        return 0;
    return (uint32_t)num;
}

/* Parses a numeric reference body at s[i] (just after "&#"); returns chars consumed (incl. ';'), 0 if none. */
static size_t numeric_ref(const uint32_t *s, size_t n, size_t i, uint64_t *num) {
    size_t j = i;
    int hex = 0;
    if (j < n && (s[j] == 'x' || s[j] == 'X')) {
        size_t k = j + 1;
        while (k < n && (is_ascii_digit(s[k]) || ((s[k] | 0x20) >= 'a' && (s[k] | 0x20) <= 'f'))) k++;
        if (k > j + 1) {
            hex = 1;
            j++;
        }
    }
    uint64_t v = 0;
    size_t start = j;
    while (j < n && (hex ? (is_ascii_digit(s[j]) || ((s[j] | 0x20) >= 'a' && (s[j] | 0x20) <= 'f'))
                         : is_ascii_digit(s[j]))) {
        if (v <= 0x10FFFFu) v = v * (hex ? 16 : 10) + (uint64_t)hexval(s[j]);
        j++;
    }
    if (j == start) return 0;
    if (j < n && s[j] == ';') j++;
    *num = v;
    return j - i;
}

int sdxl_html_unescape(sdxl_u32 *t, sdxl_err *e) {
    size_t amp = 0;
    while (amp < t->n && t->s[amp] != '&') amp++;
    if (amp == t->n) return SDXL_OK;
    sdxl_u32 out = {0};
    int rc = sdxl_u32_reserve(&out, t->n, e);
    const uint32_t *s = t->s;
    size_t n = t->n, i = 0;
    while (!rc && i < n) {
        if (s[i] != '&') {
            rc = sdxl_u32_push(&out, s[i++], e);
            continue;
        }
        if (i + 1 < n && s[i + 1] == '#') {
            uint64_t num;
            size_t used = numeric_ref(s, n, i + 2, &num);
            if (used) {
                uint32_t c = charref_value(num);
                if (c) rc = sdxl_u32_push(&out, c, e);
                i += 2 + used;
            } else {
                rc = sdxl_u32_push(&out, s[i++], e);
            }
            continue;
        }
        size_t j = i + 1;
        while (j < n && j - i - 1 < 32 && s[j] != '\t' && s[j] != '\n' && s[j] != '\f' && s[j] != ' ' &&
               s[j] != '<' && s[j] != '&' && s[j] != '#' && s[j] != ';')
            j++;
        if (j == i + 1) {
            rc = sdxl_u32_push(&out, s[i++], e);
            continue;
        }
        if (j < n && s[j] == ';') j++;
        const uint32_t *name = s + i + 1;
        size_t len = j - i - 1;
        const char *val = entity_find(sdxl_html_entities, sdxl_html_entities_n, name, len);
        size_t used = len;
        for (size_t x = len - 1; !val && x >= 2; x--) {
            val = entity_find(sdxl_html_entities, sdxl_html_entities_n, name, x);
            used = x;
        }
        if (!val) {
            for (size_t k = i; !rc && k < j; k++) rc = sdxl_u32_push(&out, s[k], e);
        } else {
            rc = push_utf8(&out, val, e);
            for (size_t k = i + 1 + used; !rc && k < j; k++) rc = sdxl_u32_push(&out, s[k], e);
        }
        i = j;
    }
    if (rc) {
        sdxl_u32_free(&out);
        return rc;
    }
    sdxl_u32_free(t);
    *t = out;
    return SDXL_OK;
}

/* ftfy's unescape_html: only complete "&name;" / "&#..;" references (regex &#?[0-9A-Za-z]{1,24};),
 * named ones from the HTML5 table plus the upper-case aliases. */
static int ftfy_unescape(const sdxl_u32 *t, sdxl_u32 *out, sdxl_err *e) {
    out->n = 0;
    int rc = SDXL_OK;
    const uint32_t *s = t->s;
    size_t n = t->n, i = 0;
    while (!rc && i < n) {
        size_t j = i + 1;
        if (s[i] == '&') {
            if (j < n && s[j] == '#') j++;
            size_t k = j;
            while (k < n && k - j < 25 && is_ascii_alnum(s[k])) k++;
            if (k > j && k - j <= 24 && k < n && s[k] == ';') {
                const char *val = NULL;
                if (s[i + 1] != '#') {
                    val = entity_find(sdxl_html_entities, sdxl_html_entities_n, s + i + 1, k + 1 - (i + 1));
                    if (!val)
                        val = entity_find(sdxl_html_entities_upper, sdxl_html_entities_upper_n, s + i + 1,
                                          k + 1 - (i + 1));
                    if (val) {
                        rc = push_utf8(out, val, e);
                        i = k + 1;
                        continue;
                    }
                } else {
                    uint64_t num;
                    size_t used = numeric_ref(s, k + 1, i + 2, &num);
                    if (used == k + 1 - (i + 2)) {
                        uint32_t c = charref_value(num);
                        if (c) rc = sdxl_u32_push(out, c, e);
                        i = k + 1;
                        continue;
                    }
                }
            }
        }
        rc = sdxl_u32_push(out, s[i++], e);
    }
    return rc;
}

/* ---- the remaining per-character fixes ---- */

static const uint32_t LIGATURE_FROM[] = {0x0132, 0x0133, 0x0149, 0x01F1, 0x01F2, 0x01F3, 0x01C4, 0x01C5,
                                         0x01C6, 0x01C7, 0x01C8, 0x01C9, 0x01CA, 0x01CB, 0x01CC, 0xFB00,
                                         0xFB01, 0xFB02, 0xFB03, 0xFB04, 0xFB05, 0xFB06};
static const char *const LIGATURE_TO[] = {"IJ", "ij", "\xca\xbcn", "DZ", "Dz", "dz", "D\xc5\xbd", "D\xc5\xbe",
                                          "d\xc5\xbe", "LJ", "Lj", "lj", "NJ", "Nj", "nj", "ff",
                                          "fi", "fl", "ffi", "ffl", "\xc5\xbft", "st"};

static int nfkc_char(uint32_t c, sdxl_u32 *out, sdxl_err *e) {
    size_t len = 0;
    uint32_t *r = u32_normalize(UNINORM_NFKC, &c, 1, NULL, &len);
    if (!r) return sdxl_seterr(e, SDXL_ERR_NOMEM, "ftfy: NFKC failed");
    int rc = SDXL_OK;
    for (size_t i = 0; !rc && i < len; i++) rc = sdxl_u32_push(out, r[i], e);
    free(r);
    return rc;
}

/* fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
 * remove_terminal_escapes and remove_control_chars, in ftfy's order, in one pass each. */
static int char_fixes(sdxl_u32 *a, sdxl_u32 *b, sdxl_err *e) {
    int rc = SDXL_OK;
    for (int pass = 0; pass < 7 && !rc; pass++) {
        b->n = 0;
        const uint32_t *s = a->s;
        size_t n = a->n;
        for (size_t i = 0; i < n && !rc; i++) {
            uint32_t c = s[i];
            switch (pass) {
            case 0: /* C1 controls were meant as windows-1252 */
                rc = sdxl_u32_push(b, (c >= 0x80 && c <= 0x9F) ? CP1252_HIGH[c - 0x80] : c, e);
                break;
            case 1: {
                size_t k = 0;
                while (k < sizeof LIGATURE_FROM / sizeof LIGATURE_FROM[0] && LIGATURE_FROM[k] != c) k++;
                rc = k < sizeof LIGATURE_FROM / sizeof LIGATURE_FROM[0] ? push_utf8(b, LIGATURE_TO[k], e)
                                                                      : sdxl_u32_push(b, c, e);
                break;
            }
            case 2: /* fullwidth/halfwidth forms -> NFKC; U+3000 -> space */
                if (c == 0x3000)
                    rc = sdxl_u32_push(b, ' ', e);
                else if (c >= 0xFF01 && c <= 0xFFEF)
                    rc = nfkc_char(c, b, e);
                else
                    rc = sdxl_u32_push(b, c, e);
                break;
            case 3:
                if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
                if (c >= 0x201C && c <= 0x201F) c = '"';
                rc = sdxl_u32_push(b, c, e);
                break;
            case 4:
                if (c == '\r' && i + 1 < n && s[i + 1] == '\n') break;
                if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
                rc = sdxl_u32_push(b, c, e);
                break;
            case 5: /* ANSI escapes: ESC [ (digit|;)* letter */
                if (c == 0x1B && i + 1 < n && s[i + 1] == '[') {
                    size_t j = i + 2;
                    while (j < n && (uc_is_general_category(s[j], UC_DECIMAL_DIGIT_NUMBER) || s[j] == ';')) j++;
                    if (j < n && is_ascii_alnum(s[j]) && !is_ascii_digit(s[j])) {
                        i = j;
                        break;
                    }
                }
                rc = sdxl_u32_push(b, c, e);
                break;
            default:
                if (c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
                    c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC))
                    break;
                rc = sdxl_u32_push(b, c, e);
                break;
            }
        }
        sdxl_u32 tmp = *a;
        *a = *b;
        *b = tmp;
    }
    return rc;
}

static int equal(const sdxl_u32 *a, const sdxl_u32 *b) {
    return a->n == b->n && (a->n == 0 || !memcmp(a->s, b->s, a->n * sizeof(uint32_t)));
}

static int copy_into(sdxl_u32 *dst, const uint32_t *s, size_t n, sdxl_err *e) {
    dst->n = 0;
    int rc = sdxl_u32_reserve(dst, n + 1, e);
    if (rc) return rc;
    if (n) memcpy(dst->s, s, n * sizeof(uint32_t));
    dst->n = n;
    return SDXL_OK;
}

/* ftfy fix_and_explain on one segment: all fixes repeated until the text stops changing. */
static int fix_segment(sdxl_u32 *seg, int unescape, sdxl_err *e) {
    sdxl_u32 orig = {0}, tmp = {0};
    int rc = SDXL_OK;
    for (int iter = 0; iter < 16 && !rc; iter++) {
        if ((rc = copy_into(&orig, seg->s, seg->n, e))) break;
        if (unescape) {
            if ((rc = ftfy_unescape(seg, &tmp, e))) break;
            sdxl_u32 x = *seg;
            *seg = tmp;
            tmp = x;
        }
        for (int step = 0; step < 16; step++) {
            int changed;
            if ((rc = fix_encoding_step(seg, &tmp, &changed, e)) || !changed) break;
            sdxl_u32 x = *seg;
            *seg = tmp;
            tmp = x;
        }
        if (rc || (rc = char_fixes(seg, &tmp, e))) break;
        size_t len = 0;
        uint32_t *nfc = seg->n ? u32_normalize(UNINORM_NFC, seg->s, seg->n, NULL, &len) : NULL;
        if (seg->n && !nfc) {
            rc = sdxl_seterr(e, SDXL_ERR_NOMEM, "ftfy: NFC normalisation failed");
            break;
        }
        if (nfc) {
            rc = copy_into(seg, nfc, len, e);
            free(nfc);
            if (rc) break;
        }
        if (equal(seg, &orig)) break;
    }
    sdxl_u32_free(&orig);
    sdxl_u32_free(&tmp);
    return rc;
}

/* ftfy.fix_text: lines (each with its '\n', at most 10^6 code points) are fixed one by one; HTML
 * unescaping ("auto") stops for good at the first segment that contains '<'. */
int sdxl_ftfy_fix_text(sdxl_u32 *t, sdxl_err *e) {
    sdxl_u32 out = {0}, seg = {0};
    int rc = sdxl_u32_reserve(&out, t->n + 1, e);
    int unescape = 1;
    size_t pos = 0;
    while (!rc && pos < t->n) {
        size_t end = pos;
        while (end < t->n && t->s[end] != '\n') end++;
        end = end < t->n ? end + 1 : end;
        if (end - pos > 1000000) end = pos + 1000000;
        if ((rc = copy_into(&seg, t->s + pos, end - pos, e))) break;
        for (size_t i = 0; i < seg.n; i++)
            if (seg.s[i] == '<') unescape = 0;
        if ((rc = fix_segment(&seg, unescape, e))) break;
        for (size_t i = 0; !rc && i < seg.n; i++) rc = sdxl_u32_push(&out, seg.s[i], e);
        pos = end;
    }
    sdxl_u32_free(&seg);
    if (rc) {
        sdxl_u32_free(&out);
        return rc;
    }
    sdxl_u32_free(t);
    *t = out;
    return SDXL_OK;
}

int sdxl_clip_clean(sdxl_u32 *t, sdxl_err *e) {
    int rc;
    if ((rc = sdxl_ftfy_fix_text(t, e)) || (rc = sdxl_html_unescape(t, e)) || (rc = sdxl_html_unescape(t, e)))
        return rc;
    /* strip, collapse every whitespace run to one space, strip again */
    size_t k = 0;
    int in_space = 1;
    for (size_t i = 0; i < t->n; i++) {
        if (sdxl_u32_is_space(t->s[i])) {
            if (!in_space) t->s[k++] = ' ';
            in_space = 1;
        } else {
            t->s[k++] = t->s[i];
            in_space = 0;
        }
    }
    if (k && t->s[k - 1] == ' ') k--;
    t->n = k;
    if (!k) return SDXL_OK;
    size_t len = 0;
    uint32_t *low = u32_tolower(t->s, t->n, NULL, NULL, NULL, &len);
    if (!low) return sdxl_seterr(e, SDXL_ERR_NOMEM, "lower-case mapping failed");
    rc = copy_into(t, low, len, e);
    free(low);
    return rc;
}
